"""``realalloc compare`` (realalloc/tools/compare.py): end to end at a tiny scale, and
every usage error caught before any run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from realalloc.tools.compare import ALLOCATORS, add_arguments, compare_main, format_table
from realalloc.tools.workloads import WORKLOADS
from realalloc.tools.workloads import load as load_workload
from realalloc.tools.workloads.common import Allocator, Memory

TINY = ["--scale", "0.001", "--cpu", "-1"]


def parser() -> argparse.ArgumentParser:
    """What cli.py will build: a parser with compare's options."""
    p = argparse.ArgumentParser(prog="realalloc compare")
    add_arguments(p)
    return p


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = compare_main(parser().parse_args(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
def test_every_allocator_runs_the_workloads_in_its_own_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "c.json", tmp_path / "c.png"
    workloads = ["xmalloc-test", "fragmentation"]
    status, out, _ = run(
        [*TINY, "--workloads", ",".join(workloads), "--json", str(out_json), "--png", str(out_png)],
        capsys,
    )
    assert status == 0, out
    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["workload"], r["allocator"]) for r in rows] == [
        (w, a) for w in workloads for a in ALLOCATORS
    ]
    for r in rows:
        assert "error" not in r, r
        assert r["mallocs"] == r["frees"] > 0 and r["checked"] > 0 and r["left_live"] == 0
        assert r["seconds"] > 0 and r["alloc_seconds"] > 0
        assert r["peak_live"] > 0 and r["peak_rss"] >= r["final_rss"]
        if r["allocator"] != "glibc":  # glibc's figures are net of the interpreter's mallocs
            assert r["fragmentation"] >= r["usable_ratio"] >= 1
            assert r["metadata"] > 0
        else:
            assert r["metadata"] is None and r["detail"] == {}
        if r["allocator"] in ("freelist", "segregated", "tcmalloc"):
            assert r["detail"]  # the design's own counters, e.g. search steps, lock trips
    # The same plan for everyone: the same requests.
    frag = [r for r in rows if r["workload"] == "fragmentation"]
    assert len({(r["mallocs"], r["peak_live"]) for r in frag}) == 1
    # One table, a line per pair, the figures of the JSON.
    assert out.count("fragmentation") == 1 and "FAILED" not in out
    for r in rows:
        assert f"{r['seconds']:.3f}" in out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--designs", "freelist,jemalloc"], "unknown design 'jemalloc'"),
        (["--designs", ","], "no designs given"),
        (["--designs", "go,go"], "listed twice"),
        (["--workloads", "larson,cfrac"], "unknown workload 'cfrac'"),
        (["--scale", "0"], "--scale must be in"),
        (["--scale", "-1"], "--scale must be in"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--cpu", "100000"], "not a CPU"),
        (["--json", "/nonexistent-dir/x.json"], "cannot be written"),
        (["--json", "/"], "is a directory"),
        (["--png", "/proc/version"], "cannot be written"),
    ],
)
def test_usage_errors_stop_before_any_run(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "never.json"
    status, out, err = run(
        [*argv, "--json", str(out_json)] if "--json" not in argv else argv, capsys
    )
    assert status == 2
    assert message in err and err.startswith("usage: realalloc compare")
    assert out == ""  # not even the header line: nothing ran
    assert not out_json.exists()


def test_png_without_matplotlib_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    status, out, err = run(["--png", str(tmp_path / "x.png")], capsys)
    assert status == 2 and "realalloc[plot]" in err and out == ""
    assert not (tmp_path / "x.png").exists()


def test_a_failed_run_is_reported_and_sets_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        [*TINY, "--designs", "go", "--workloads", "large", "--timeout", "0.01"], capsys
    )
    assert status == 1
    assert "FAILED: timeout (0.01 s)" in out


def test_format_table_marks_what_was_not_measured() -> None:
    row = {
        "workload": "larson",
        "allocator": "glibc",
        "seconds": 1.0,
        "alloc_seconds": 0.5,
        "peak_rss": 3 << 20,
        "final_rss": 1 << 20,
        "peak_live": 2 << 20,
        "peak_held": 3 << 20,
        "fragmentation": 1.5,
        "usable_ratio": 1.25,
        "metadata": None,
    }
    line = format_table([row]).splitlines()[2].split()
    assert line == [
        "larson",
        "glibc",
        "1.000",
        "0.500",
        "3.00",
        "1.00",
        "2.00",
        "3.00",
        "1.25",
        "1.50",
        "-",
    ]


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_workload_runs_on_a_design_in_process(name: str) -> None:
    from realalloc.designs import make

    mod = load_workload(name)
    plan = mod.prepare(0.0001, 7)
    with make("tcmalloc") as heap:
        counts = mod.execute(Allocator("tcmalloc", heap.malloc, heap.free), Memory(), plan)
        assert counts["mallocs"] == counts["frees"] > 0
        assert heap.stats().objects_live == 0
        heap.check()
