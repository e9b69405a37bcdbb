"""``realalloc stress --gc``: workers link objects through scan objects and drop
them for the collector; every pattern verified, the heap empty after the
final collection."""

from __future__ import annotations

import io

import pytest

import realalloc
from realalloc.tools import cli, stress
from realalloc.tools.cli import main


@pytest.mark.parametrize("limit", [None, 96 << 20])
def test_stress_gc_runs_clean(limit: int | None) -> None:
    cfg = stress.StressConfig(
        threads=4, ops=2500, live=300, gc=True, memory_limit=limit, progress=False, seed=3
    )
    report = stress.run_stress(cfg)
    assert report.ok, report.format()
    assert report.cross_thread_frees > 0 and report.verifies > report.mallocs
    assert report.gc is not None and report.gc["num_gc"] > report.gc["num_forced_gc"] == 1
    assert "collections" in report.format()
    assert report.to_dict()["gc"]["pause_total_ns"] > 0


def test_stress_gc_from_the_command_line() -> None:
    out, err = io.StringIO(), io.StringIO()
    cfg = stress.StressConfig(threads=2, ops=800, live=100, gc=True, progress=False)
    assert stress.stress_main(cfg, out=out, err=err) == stress.EXIT_OK
    assert "realalloc stress: OK" in out.getvalue() and "collections" in out.getvalue()


def test_stress_gc_needs_the_go_design(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(realalloc.InvalidArgumentError, match=r"gc \(--gc\) needs the go design"):
        stress.StressConfig(gc=True, design="tcmalloc").check()
    monkeypatch.setattr(cli, "stress_main", lambda *a, **k: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as e:
        main(["stress", "--gc", "--design", "freelist"])
    assert e.value.code == 2
    assert "needs the go design: freelist has no garbage collector" in capsys.readouterr().err
    with (
        realalloc.Heap() as plain,
        pytest.raises(realalloc.InvalidArgumentError, match="no collector"),
    ):
        stress.run_stress(stress.StressConfig(gc=True, ops=10, progress=False), heap=plain)
