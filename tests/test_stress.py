"""``python -m realalloc stress``: short real runs over every size distribution, the
text and JSON reports and their consistency, progress on a terminal and off one,
every exit code (0 ok, 1 a real corruption found and located, 2 bad usage caught
before anything runs, 3 nothing could be allocated), and the exit-code table in
``--help``.

The stress command drives a real Heap from many threads; nothing here is mocked.
Most runs go through ``realalloc.tools.cli.main`` in this process; a few start a
real process to see what a shell sees.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

import realalloc
from realalloc.designs import DESIGNS, make
from realalloc.tools import cli, stress
from realalloc.tools.cli import main

MIB = 1 << 20
FAULT_OPS = ("reserve", "commit", "release")
NO_FAULTS = dict.fromkeys(FAULT_OPS, 0)

with realalloc.Heap(background_scavenger=False) as _heap:
    CLASS_SIZES = tuple(c.size for c in _heap.stats().by_size)
    """Go's size classes, class 0 (size 0) first, as the public API reports them."""
MAX_SMALL_SIZE = CLASS_SIZES[-1]

# A replay file: comments, blank lines, scan and noscan entries, a large object.
# Every small size is alone in its size class, so the per-class table tells exactly
# how many objects of each size were allocated.
REPLAY = """\
# size [scan|noscan]
24 scan
100

300 noscan
   # indented comment
700 scan
4000 scan
40000
"""
REPLAY_SIZES = (24, 100, 300, 700, 4000, 40000)

PLAIN_LINE = (
    r"stress +(\d+\.\d) s +(\d+)% +[\d,]+ ops/s  live +\d+ MiB  inuse +\d+ MiB  RSS +\d+ MiB"
)
TTY_LINE = r"\[#*\s*\]\s+\d+%\s+[\d,]+ ops/s  live +\d+ MiB  inuse +\d+ MiB  RSS +\d+ MiB "


def run_cli(
    *args: str, exe: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    cmd = [exe] if exe else [sys.executable, "-m", "realalloc"]
    return subprocess.run(
        [*cmd, "stress", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``realalloc stress ARGS`` in this process: exit code, stdout, stderr."""
    rc = main(["stress", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


class FakeStderr(io.StringIO):
    """stderr that says whether it is a terminal and notes when each write came."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty
        self.times: list[float] = []

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.times.append(time.monotonic())
        return super().write(text)


def num(text: str) -> int:
    return int(text.replace(",", ""))


def parse_text(out: str) -> dict:
    """The figures of the text report (it must have every line)."""
    lines = out.splitlines()
    statuses = ("OK", "FAILED", "NOT RUN (no malloc succeeded)")
    assert lines[0] in [f"realalloc stress: {s}" for s in statuses], out
    found: dict = {"status": lines[0].removeprefix("realalloc stress: ")}
    patterns = {
        "operations": r"^\s+operations\s+([\d,]+) in ([\d.]+) s \(([\d,]+) ops/s\)$",
        "mallocs": r"^\s+mallocs\s+([\d,]+)\s+frees ([\d,]+) \(cross-thread ([\d,]+)\)$",
        "verified": r"^\s+verified\s+([\d,]+) objects$",
        "failed": r"^\s+failed\s+([\d,]+) mallocs \(MemoryError\)$",
        "faults": r"^\s+faults\s+(\{.*\})$",
        "rss": r"^\s+RSS\s+baseline ([\d.]+) MiB, peak ([\d.]+) MiB, final ([\d.]+) MiB$",
        "scavenged": r"^\s+scavenged\s+([\d.,]+) MiB$",
        "check": r"^\s+heap\.check\(\) (.*)$",
        "corruptions": r"^\s+corruptions\s+(\d+)$",
        "header": r"^\s+class\s+size\s+mallocs\s+frees$",
    }
    for key, pat in patterns.items():
        m = re.search(pat, out, re.MULTILINE)
        assert m, f"the report has no {key} line:\n{out}"
        found[key] = m.groups()
    header = next(i for i, line in enumerate(lines) if re.fullmatch(patterns["header"], line))
    found["rows"] = [[num(x) for x in line.split()] for line in lines[header + 1 :]]
    return found


def check_report(d: dict, *, threads: int, distribution: str, ops: int | None) -> None:
    """Consistency of a JSON report of a clean run."""
    assert d["ok"] is True, d
    assert (d["status"], d["exit_code"]) == ("OK", 0)
    assert d["check"] == "ok"
    assert d["corruptions"] == []
    assert d["errors"] == []
    cfg = d["config"]
    assert cfg["threads"] == threads
    assert cfg["distribution"] == distribution
    assert cfg["ops"] == ops
    assert cfg["progress"] is False
    # every object allocated was freed, and verified when it was
    assert d["mallocs"] == d["frees"] > 0
    assert 0 < d["cross_thread_frees"] <= d["frees"]
    assert d["verifies"] >= d["frees"]
    if ops is not None:
        # each worker tries `ops` mallocs and frees; the frees of what is left
        # live at the end come on top
        tried = d["mallocs"] + d["failed_mallocs"]
        assert tried <= threads * ops <= tried + d["frees"]
    assert d["bytes_allocated"] >= d["mallocs"] - d["failed_mallocs"]
    assert d["seconds"] > 0
    assert d["ops_per_second"] == pytest.approx((d["mallocs"] + d["frees"]) / d["seconds"])
    assert 0 < d["baseline_rss"] <= d["peak_rss"]
    assert d["final_rss"] > 0
    assert d["scavenged"] >= 0
    assert set(d["faults_injected"]) == set(FAULT_OPS)
    rows = d["by_class"]
    assert rows, "no per-class rows"
    assert [r["class"] for r in rows] == sorted({r["class"] for r in rows})
    for r in rows:
        assert 1 <= r["class"] < len(CLASS_SIZES)
        assert r["size"] == CLASS_SIZES[r["class"]]
        assert r["mallocs"] == r["frees"] > 0, r
    assert sum(r["mallocs"] for r in rows) <= d["mallocs"]


def check_text_matches_json(out: str, d: dict) -> None:
    t = parse_text(out)
    assert t["status"] == d["status"]
    assert num(t["operations"][0]) == d["mallocs"] + d["frees"]
    assert float(t["operations"][1]) == pytest.approx(d["seconds"], abs=0.051)
    assert [num(x) for x in t["mallocs"]] == [d["mallocs"], d["frees"], d["cross_thread_frees"]]
    assert num(t["verified"][0]) == d["verifies"]
    assert num(t["failed"][0]) == d["failed_mallocs"]
    assert t["faults"][0] == str(d["faults_injected"])
    baseline, peak, final = (float(x) for x in t["rss"])
    assert baseline == pytest.approx(d["baseline_rss"] / MIB, abs=0.051)
    assert peak == pytest.approx(d["peak_rss"] / MIB, abs=0.051)
    assert final == pytest.approx(d["final_rss"] / MIB, abs=0.051)
    assert float(t["scavenged"][0].replace(",", "")) == pytest.approx(
        d["scavenged"] / MIB, abs=0.051
    )
    assert t["check"][0] == d["check"]
    assert int(t["corruptions"][0]) == len(d["corruptions"])
    assert t["rows"] == [[r["class"], r["size"], r["mallocs"], r["frees"]] for r in d["by_class"]]


# --- clean runs: exit 0 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "extra"),
    [
        ("uniform", ["--live", "60"]),
        ("lognormal", ["--live", "60", "--scan-ratio", "0.5"]),
        ("large", ["--live", "6", "--cross-free", "0.5"]),
        ("replay", ["--live", "40"]),
    ],
)
def test_each_distribution_runs_clean_with_text_and_json_reports(
    tmp_path, capsys, distribution, extra
):
    threads, ops = 8, 120
    args = ["--threads", str(threads), "--ops", str(ops), "--quiet", *extra]
    if distribution == "replay":
        replay = tmp_path / "sizes.txt"
        replay.write_text(REPLAY)
        args += ["--replay", str(replay)]
    else:
        args += ["--distribution", distribution]
    report = tmp_path / "report.json"
    rc, out, err = run_main(capsys, *args, "--json", str(report))
    assert rc == 0, out + err
    assert err == ""  # --quiet: no progress
    d = json.loads(report.read_text())
    check_report(d, threads=threads, distribution=distribution, ops=ops)
    assert d["failed_mallocs"] == 0
    assert d["faults_injected"] == NO_FAULTS
    check_text_matches_json(out, d)
    small = sum(r["mallocs"] for r in d["by_class"])
    if distribution == "large":
        # half of the objects are large (> 32 KiB): not in the per-class table
        assert small < d["mallocs"]
        assert d["bytes_allocated"] > d["mallocs"] * MAX_SMALL_SIZE // 4
        assert d["scavenged"] > 0
    if distribution == "replay":
        by_class = {realalloc.size_to_class(s): s for s in REPLAY_SIZES if s <= MAX_SMALL_SIZE}
        assert len(by_class) == len(REPLAY_SIZES) - 1  # one size per class
        assert {r["class"] for r in d["by_class"]} <= set(by_class)
        nlarge = d["mallocs"] - small
        assert nlarge > 0  # the 40000-byte entry
        exact = sum(r["mallocs"] * by_class[r["class"]] for r in d["by_class"]) + nlarge * 40000
        assert d["bytes_allocated"] == exact


@pytest.mark.slow
def test_duration_run_of_the_console_script(tmp_path):
    # the script installed with this interpreter, not whichever is first on PATH
    # (another checkout's install would test other code)
    exe = shutil.which("realalloc", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("the realalloc console script is not installed next to this Python")
    report = tmp_path / "r.json"
    start = time.monotonic()
    proc = run_cli(
        "--threads", "8", "--duration", "1", "--live", "50", "--quiet", "--json", str(report),
        exe=exe,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - start >= 1.0
    d = json.loads(report.read_text())
    check_report(d, threads=8, distribution="uniform", ops=None)
    assert d["config"]["duration"] == 1.0
    assert d["seconds"] >= 1.0
    check_text_matches_json(proc.stdout, d)


def test_fault_every_counts_injected_faults_and_failed_mallocs(tmp_path, capsys):
    """Large objects grow the heap by whole arenas several times; failing every second
    reserve and commit makes some of those mallocs raise: counted, and still exit 0
    (some mallocs failing on purpose is not a failure)."""
    report = tmp_path / "faults.json"
    rc, out, err = run_main(
        capsys,
        "--distribution", "large", "--threads", "4", "--ops", "150", "--live", "30",
        "--fault-every", "2", "--quiet", "--json", str(report),
    )  # fmt: skip
    assert rc == 0, out + err
    d = json.loads(report.read_text())
    check_report(d, threads=4, distribution="large", ops=150)
    assert d["config"]["fault_every"] == 2
    faults = d["faults_injected"]
    assert faults["reserve"] + faults["commit"] > 0, faults
    # each refused reserve or commit fails exactly the malloc that was growing the heap
    assert d["failed_mallocs"] == faults["reserve"] + faults["commit"] > 0
    check_text_matches_json(out, d)


def test_a_memory_limit_some_mallocs_fail_is_still_ok(tmp_path, capsys):
    """4 threads keeping up to 30 objects of up to 4 MiB each want far more than
    48 MiB: the limit refuses some mallocs, small ones still succeed, exit 0."""
    report = tmp_path / "limit.json"
    rc, out, err = run_main(
        capsys,
        "--distribution", "large", "--threads", "4", "--ops", "150", "--live", "30",
        "--memory-limit", "48M", "--quiet", "--json", str(report),
    )  # fmt: skip
    assert rc == 0, out + err
    d = json.loads(report.read_text())
    check_report(d, threads=4, distribution="large", ops=150)
    assert d["config"]["memory_limit"] == 48 * MIB
    assert d["failed_mallocs"] > 0
    assert d["faults_injected"] == NO_FAULTS
    check_text_matches_json(out, d)


def test_run_stress_on_a_callers_heap_leaves_it_open_and_empty():
    with realalloc.Heap(background_scavenger=False) as heap:
        before = heap.stats().released_total
        cfg = stress.StressConfig(threads=3, ops=200, live=20, progress=False)
        report = stress.run_stress(cfg, heap=heap)
        assert report.ok, report.format()
        st = heap.stats()
        assert st.heap_objects == 0
        assert st.mallocs == st.frees >= report.mallocs
        assert report.scavenged == st.released_total - before
        heap.check()
        heap.free(heap.malloc(100))  # still open


# --- progress ----------------------------------------------------------------------------


@pytest.mark.slow
def test_progress_on_a_terminal_rewrites_one_line(monkeypatch, capsys):
    fake = FakeStderr(tty=True)
    monkeypatch.setattr(sys, "stderr", fake)
    # --progress-every is for plain lines only: a terminal still gets two updates a second
    rc, out, _ = run_main(capsys, "--threads", "2", "--duration", "2", "--live", "20",
                          "--progress-every", "60")  # fmt: skip
    assert rc == 0, out
    text = fake.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1  # one line, ended once
    updates = text[:-1].split("\r")
    assert updates[0] == ""
    assert 2 <= len(updates[1:]) <= 5, updates
    for u in updates[1:]:
        assert re.fullmatch(TTY_LINE, u), u
    assert out.startswith("realalloc stress: OK")


def test_a_run_shorter_than_one_update_leaves_a_terminal_untouched(monkeypatch, capsys):
    fake = FakeStderr(tty=True)
    monkeypatch.setattr(sys, "stderr", fake)
    rc, out, _ = run_main(capsys, "--threads", "1", "--ops", "20", "--live", "5")
    assert rc == 0, out
    assert fake.getvalue() == ""  # not even the newline that ends a progress line


@pytest.mark.slow
def test_progress_off_a_terminal_is_a_plain_line_every_interval(monkeypatch, capsys):
    fake = FakeStderr(tty=False)
    monkeypatch.setattr(sys, "stderr", fake)
    rc, out, _ = run_main(capsys, "--threads", "2", "--duration", "1.4", "--live", "20",
                          "--progress-every", "0.25")  # fmt: skip
    assert rc == 0, out
    text = fake.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 3 <= len(lines) <= 6, lines
    elapsed = []
    for line in lines:
        m = re.fullmatch(PLAIN_LINE, line)
        assert m, line
        elapsed.append(float(m[1]))
    assert elapsed == sorted(elapsed)
    # one write per line (nothing else), at least one interval apart
    assert len(fake.times) == len(lines)
    gaps = [b - a for a, b in pairwise(fake.times)]
    assert min(gaps) >= 0.2, gaps


@pytest.mark.slow
def test_progress_off_a_terminal_defaults_to_a_line_every_5_seconds(monkeypatch, capsys):
    """A 1.5 s run off a terminal prints no progress at all by default (the first
    line would come at 5 s), where the terminal mode would have updated 3 times."""
    fake = FakeStderr(tty=False)
    monkeypatch.setattr(sys, "stderr", fake)
    rc, out, _ = run_main(capsys, "--threads", "2", "--duration", "1.5", "--live", "20")
    assert rc == 0, out
    assert fake.getvalue() == ""
    parser = argparse.ArgumentParser()
    stress.add_arguments(parser)
    assert parser.parse_args([]).progress_every == 5.0


@pytest.mark.slow
@pytest.mark.parametrize("tty", [True, False])
def test_quiet_means_no_progress_on_or_off_a_terminal(monkeypatch, capsys, tty):
    fake = FakeStderr(tty=tty)
    monkeypatch.setattr(sys, "stderr", fake)
    rc, out, _ = run_main(capsys, "--threads", "2", "--duration", "1.2", "--live", "20",
                          "--quiet", "--progress-every", "0.1")  # fmt: skip
    assert rc == 0, out
    assert fake.times == []


@pytest.mark.slow
def test_progress_of_a_real_process_writing_to_a_pipe_is_plain_lines():
    proc = run_cli("--threads", "2", "--duration", "1.3", "--live", "20",
                   "--progress-every", "0.3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert 2 <= len(lines) <= 5, lines
    assert all(re.fullmatch(PLAIN_LINE, line) for line in lines), lines
    assert proc.stdout.startswith("realalloc stress: OK")


# --- could not run: exit 3 -------------------------------------------------------------


def test_every_malloc_failing_exits_3(tmp_path, capsys):
    report = tmp_path / "r.json"
    rc, out, err = run_main(capsys, "--fault-every", "1", "--threads", "2", "--ops", "50",
                            "--quiet", "--json", str(report))  # fmt: skip
    assert rc == 3, out + err
    assert err == ""
    assert out.startswith("realalloc stress: NOT RUN (no malloc succeeded)")
    d = json.loads(report.read_text())
    assert (d["ok"], d["status"], d["exit_code"]) == (False, "NOT RUN (no malloc succeeded)", 3)
    assert d["mallocs"] == d["frees"] == 0
    # with nothing live, every operation is a malloc, and each one failed
    assert d["failed_mallocs"] == 2 * 50
    assert d["faults_injected"]["reserve"] >= d["failed_mallocs"]
    assert d["check"] == "ok" and d["corruptions"] == [] and d["errors"] == []
    check_text_matches_json(out, d)


def test_a_memory_limit_nothing_fits_in_exits_3(capsys):
    rc, out, err = run_main(capsys, "--memory-limit", "0", "--threads", "2", "--ops", "30",
                            "--quiet")  # fmt: skip
    assert rc == 3, out + err
    t = parse_text(out)
    assert t["status"] == "NOT RUN (no malloc succeeded)"
    assert num(t["failed"][0]) == 60
    assert t["faults"][0] == str(NO_FAULTS)


def test_no_heap_to_be_had_exits_3_without_a_report(capsys):
    heaps = []
    try:
        with pytest.raises(realalloc.OutOfMemoryError):
            while len(heaps) < 1000:
                heaps.append(realalloc.Heap(background_scavenger=False))
        rc, out, err = run_main(capsys, "--ops", "10", "--threads", "1", "--quiet")
    finally:
        for h in heaps:
            h.close()
    assert rc == 3
    assert out == ""
    assert re.fullmatch(r"realalloc stress: could not run: cannot create a heap: .*\n", err)


class DirRemover(FakeStderr):
    """stderr whose first progress line removes a directory: the --json path was
    writable when it was checked and is not by the time the report is written."""

    def __init__(self, victim: Path) -> None:
        super().__init__(tty=False)
        self.victim = victim

    def write(self, text: str) -> int:
        if text.startswith("stress ") and self.victim.exists():
            shutil.rmtree(self.victim)
        return super().write(text)


@pytest.mark.slow
def test_a_json_report_that_cannot_be_written_after_the_run_exits_3(tmp_path, monkeypatch, capsys):
    where = tmp_path / "out"
    where.mkdir()
    fake = DirRemover(where)
    monkeypatch.setattr(sys, "stderr", fake)
    rc, out, _ = run_main(capsys, "--threads", "2", "--duration", "0.8", "--live", "20",
                          "--progress-every", "0.2", "--json", str(where / "r.json"))  # fmt: skip
    assert not where.exists()
    assert out.startswith("realalloc stress: OK")  # the run itself was fine
    assert rc == 3
    assert re.search(
        r"^realalloc stress: cannot write the JSON report: .*No such file or directory.*r\.json",
        fake.getvalue(),
        re.MULTILINE,
    )


def test_run_stress_in_process_restores_fault_injection():
    before = {op: realalloc.fault_hits(op) for op in FAULT_OPS}
    cfg = stress.StressConfig(
        threads=3, ops=60, distribution="large", live=4, fault_every=1, progress=False
    )
    report = stress.run_stress(cfg)
    # every reserve fails: nothing could ever be allocated, and that is counted
    assert report.exit_code == stress.EXIT_NOT_RUN
    assert not report.ok and not report.failed
    assert report.failed_mallocs == 3 * 60
    assert report.faults_injected["reserve"] >= report.failed_mallocs
    # fault injection is off again: a fresh heap grows normally
    hits = {op: realalloc.fault_hits(op) for op in FAULT_OPS}
    with realalloc.Heap(background_scavenger=False) as h:
        h.free(h.malloc(10 * MIB))
        h.scavenge()
        h.check()
    assert {op: realalloc.fault_hits(op) for op in FAULT_OPS} == hits
    assert all(hits[op] >= before[op] for op in FAULT_OPS)


# --- a run that finds corrupted memory: exit 1 -------------------------------------------


class Scribbler(FakeStderr):
    """The stderr of a stress run, which corrupts the run's live objects.

    Progress lines are written by the monitor thread while the workers run.  On
    the first one, ``write`` finds every worker thread's ``_worker`` frame, and in
    it the worker's live list of (address, size, seq), and flips the middle byte
    of each of those objects.  It holds the GIL throughout (ctypes item access
    does not release it), so no worker changes its list meanwhile.  Every live
    object is verified against its pattern before it is freed, by its worker, by
    whichever worker it is handed to, or at the end, so each flipped byte must be
    reported, as belonging to that worker, and nothing else may be.
    """

    def __init__(self) -> None:
        super().__init__(tty=False)
        self.flipped: dict[int, str] = {}  # address of the flipped byte -> owner

    def write(self, text: str) -> int:
        if not self.flipped and text.startswith("stress "):
            self.scribble()
        return super().write(text)

    def scribble(self) -> None:
        for frame in sys._current_frames().values():
            while frame is not None and frame.f_code is not stress._worker.__code__:
                frame = frame.f_back
            if frame is None:
                continue
            owner = frame.f_locals["name"]
            for addr, size, _seq in frame.f_locals["live"]:
                victim = addr + size // 2
                cell = (ctypes.c_ubyte * 1).from_address(victim)
                cell[0] ^= 0xA5
                self.flipped[victim] = owner


@pytest.mark.slow
def test_corrupted_objects_exit_1_and_each_is_named(tmp_path, monkeypatch, capsys):
    """A real corruption, found by the real verification (see Scribbler): the command
    exits 1, the text report says FAILED with each object's address and the byte
    offset that differs, and the JSON report lists exactly the flipped bytes."""
    scribbler = Scribbler()
    monkeypatch.setattr(sys, "stderr", scribbler)
    report = tmp_path / "bad.json"
    rc, out, _ = run_main(capsys, "--threads", "4", "--duration", "1.2", "--live", "150",
                          "--verify-rate", "0.2", "--progress-every", "0.2",
                          "--json", str(report))  # fmt: skip
    assert scribbler.flipped, "found no live object to corrupt"
    assert rc == 1, out
    d = json.loads(report.read_text())
    assert (d["ok"], d["status"], d["exit_code"]) == (False, "FAILED", 1)
    assert d["check"] == "ok"  # the allocator's own structures are intact
    assert d["errors"] == []
    assert d["mallocs"] == d["frees"]
    found = d["corruptions"]
    # an object may be reported twice (a random verify, then its free)
    assert {c["address"] + c["offset"] for c in found} == set(scribbler.flipped)
    for c in found:
        assert c["thread"] == scribbler.flipped[c["address"] + c["offset"]], c
        assert c["offset"] == c["size"] // 2
        assert c["when"] in ("verify", "free", "final")
    assert out.startswith("realalloc stress: FAILED")
    assert re.search(rf"^\s+corruptions\s+{len(found)}$", out, re.MULTILINE)
    for c in found[:10]:
        line = (
            f"{c['when']}: object at {c['address']:#x} ({c['size']} B, seq {c['seq']}, "
            f"thread {c['thread']}) differs at byte {c['offset']}"
        )
        assert line in out


def test_worker_reports_a_corrupted_object_handed_to_it():
    """The verify path on one real object: allocate, write the stress pattern, flip
    byte 37, and hand it to a worker through the cross-thread queue as if thread w5
    had allocated it.  The worker must report it and still free it."""
    heap = realalloc.Heap(background_scavenger=False)
    try:
        size, seq = 100, 12345
        addr = heap.malloc(size)
        ctypes.memmove(addr, stress._pattern(addr, seq, size), size)
        ctypes.memset(addr + 37, ctypes.string_at(addr + 37, 1)[0] ^ 1, 1)
        cfg = stress.StressConfig(threads=1, ops=1, live=1, progress=False)
        report = stress.StressReport(config={"threads": 1, "distribution": "uniform", "seed": 1})
        run = stress._Run(heap, cfg, report, CLASS_SIZES, time.monotonic() + 10)
        run.handoff.put((addr, size, seq, "w5"))
        stress._worker(run, 0)
        assert [
            (c.address, c.offset, c.size, c.seq, c.when, c.thread) for c in report.corruptions
        ] == [(addr, 37, size, seq, "free", "w5")]
        assert run.totals.report_counts[:3] == [0, 1, 1]  # no malloc, one cross-thread free
        report.check = "ok"
        assert report.exit_code == 1
        text = report.format()
        assert text.startswith("realalloc stress: FAILED")
        assert f"free: object at {addr:#x} (100 B, seq 12345, thread w5) differs at byte 37" in text
        with pytest.raises(realalloc.DoubleFreeError):  # the worker freed it
            heap.free(addr)
        assert heap.stats().heap_objects == 0
        heap.check()
    finally:
        heap.close()


def test_exit_code_of_a_report_and_1_wins_over_3():
    report = stress.StressReport(config={"threads": 1, "distribution": "uniform", "seed": 1})
    report.check = "ok"
    assert (report.exit_code, report.status) == (3, "NOT RUN (no malloc succeeded)")
    report.mallocs = report.frees = 5
    assert (report.exit_code, report.status, report.ok) == (0, "OK", True)
    report.failed_mallocs = 100  # partial failure: still ok
    assert report.exit_code == 0
    report.check = "HeapCorruption: HEAP-1: page 0x1000 does not map"
    assert (report.exit_code, report.status, report.ok) == (1, "FAILED", False)
    assert "heap.check() HeapCorruption: HEAP-1: page 0x1000" in report.format()
    report.mallocs = report.frees = 0
    assert report.exit_code == 1  # a failed check with nothing allocated is still a failure
    report.check = "ok"
    report.errors.append("worker 3: KeyError: 7")
    assert report.exit_code == 1
    assert "error: worker 3: KeyError: 7" in report.format()
    d = report.to_dict()
    assert (d["ok"], d["status"], d["exit_code"]) == (False, "FAILED", 1)


# --- bad usage: exit 2, before anything runs -------------------------------------------


def write_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# case: (arguments, the option the message must name, what it must say about it)
BAD_OPTIONS = {
    "threads-0": (["--threads", "0"], "--threads", r"threads must be >= 1, got 0"),
    "threads-huge": (["--threads", "5000"], "--threads", r"threads must be <= 1024, got 5000"),
    "threads-not-int": (["--threads", "two"], "--threads", r"invalid int value: 'two'"),
    "ops-negative": (["--ops=-5"], "--ops", r"ops must be >= 1, got -5"),
    "ops-zero": (["--ops", "0"], "--ops", r"ops must be >= 1, got 0"),
    "ops-and-duration": (["--ops", "5", "--duration", "1"], "--duration",
                         r"not allowed with argument --ops"),
    "duration-0": (["--duration", "0"], "--duration",
                   r"duration must be in \(0, 86400\] seconds, got 0\.0"),
    "duration-nan": (["--duration", "nan"], "--duration", r"duration must be .*got nan"),
    "duration-inf": (["--duration", "inf"], "--duration", r"duration must be .*got inf"),
    "scan-ratio": (["--scan-ratio", "1.5"], "--scan-ratio",
                   r"scan_ratio must be between 0 and 1, got 1\.5"),
    "cross-free": (["--cross-free=-0.1"], "--cross-free",
                   r"cross_free must be between 0 and 1, got -0\.1"),
    "verify-rate": (["--verify-rate", "2"], "--verify-rate",
                    r"verify_rate must be between 0 and 1, got 2\.0"),
    "live-0": (["--live", "0"], "--live", r"live must be >= 1, got 0"),
    "seed-negative": (["--seed=-1"], "--seed", r"seed must be >= 0, got -1"),
    "seed-float": (["--seed", "1.5"], "--seed", r"invalid int value: '1\.5'"),
    "fault-every-negative": (["--fault-every=-2"], "--fault-every",
                             r"fault_every must be >= 0, got -2"),
    "fault-every-huge": (["--fault-every", str(1 << 63)], "--fault-every",
                         r"fault_every must be <= 9223372036854775807, got 9223372036854775808"),
    "memory-limit-unit": (["--memory-limit", "12x"], "--memory-limit",
                          r"invalid size value: '12x'"),
    "memory-limit-negative": (["--memory-limit=-1M"], "--memory-limit",
                              r"invalid size value: '-1M'"),
    "progress-every-0": (["--progress-every", "0"], "--progress-every",
                         r"progress_every must be in \(0, 3600\] seconds, got 0\.0"),
    "distribution": (["--distribution", "zipf"], "--distribution", r"invalid choice: 'zipf'"),
    "distribution-replay-without-file": (["--distribution", "replay"], "--distribution",
                                         r"invalid choice: 'replay'"),
    "distribution-and-replay": (["--distribution", "uniform", "--replay", "{tmp}/good.txt"],
                                "--replay", r"not allowed with argument --distribution"),
    "replay-and-distribution": (["--replay", "{tmp}/good.txt", "--distribution", "large"],
                                "--distribution", r"not allowed with argument --replay"),
    "replay-malformed": (["--replay", "{tmp}/bad.txt"], "--replay",
                         r".*bad\.txt:3: size '12k' is not an integer"),
    "replay-bad-flag": (["--replay", "{tmp}/flag.txt"], "--replay",
                        r".*flag\.txt:2: expected 'SIZE \[scan\|noscan\]'"),
    "replay-out-of-range": (["--replay", "{tmp}/neg.txt"], "--replay",
                            r".*neg\.txt:1: size -8 out of range"),
    "replay-empty": (["--replay", "{tmp}/empty.txt"], "--replay", r".*empty\.txt: no sizes"),
    "replay-missing": (["--replay", "{tmp}/nowhere.txt"], "--replay",
                       r"cannot read replay file .*nowhere\.txt: .*No such file"),
    "replay-not-utf8": (["--replay", "{tmp}/binary.txt"], "--replay",
                        r"cannot read replay file .*binary\.txt"),
    "replay-directory": (["--replay", "{tmp}"], "--replay",
                         r"cannot read replay file .*Is a directory"),
    "json-no-such-directory": (["--json", "{tmp}/nodir/r.json"], "--json",
                               r"cannot write the JSON report to .*/nodir/r\.json: "
                               r"No such file or directory"),
    "json-a-directory": (["--json", "{tmp}"], "--json", r"cannot write .*: Is a directory"),
    "json-under-a-file": (["--json", "{tmp}/good.txt/r.json"], "--json",
                          r"cannot write .*good\.txt/r\.json: Not a directory"),
}  # fmt: skip


def replay_files(tmp_path: Path) -> None:
    write_file(tmp_path, "good.txt", "64\n100 scan\n")
    write_file(tmp_path, "bad.txt", "# sizes\n64\n12k scan\n")
    write_file(tmp_path, "flag.txt", "64\n64 pointers\n")
    write_file(tmp_path, "neg.txt", "-8\n")
    write_file(tmp_path, "empty.txt", "# only a comment\n\n")
    (tmp_path / "binary.txt").write_bytes(b"64\n\xff\xfe 12\n")


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_exits_2_with_a_clear_message_before_anything_runs(tmp_path, capsys, case):
    args, option, message = BAD_OPTIONS[case]
    replay_files(tmp_path)
    argv = ["stress", *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    if not any(a.startswith(("--ops", "--duration")) for a in args):
        argv += ["--duration", "60"]  # were the options accepted, this would take a minute
    start = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert time.monotonic() - start < 5
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no report: nothing ran
    assert captured.err.startswith("usage: realalloc stress ")
    # the usage, then one line naming what was wrong
    last = captured.err.splitlines()[-1]
    assert re.fullmatch(rf"realalloc stress: error: argument {option}: {message}.*", last), (
        captured.err
    )


def test_checking_the_json_path_leaves_the_file_system_as_it_was(tmp_path, capsys):
    """--json is checked by opening the file; a refused command line must not leave
    a new file behind nor change an existing one."""
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    old.write_text("keep me\n")
    for path in (new, old):
        with pytest.raises(SystemExit) as e:
            main(["stress", "--json", str(path), "--threads", "0"])
        assert e.value.code == 2
        assert "threads must be >= 1" in capsys.readouterr().err
    assert not new.exists()
    assert old.read_text() == "keep me\n"
    assert sorted(os.listdir(tmp_path)) == ["old.json"]


@pytest.mark.slow
def test_bad_options_exit_2_from_a_real_process(tmp_path):
    empty = write_file(tmp_path, "empty.txt", "\n")
    good = write_file(tmp_path, "good.txt", "64\n")
    for args, message in (
        (["--threads", "0"], "threads must be >= 1, got 0"),
        (["--replay", empty], f"{empty}: no sizes"),
        (["--json", str(tmp_path / "no" / "r.json")], "cannot write the JSON report"),
        (["--replay", good, "--distribution", "uniform"], "not allowed with argument --replay"),
    ):
        proc = run_cli("--duration", "60", "--quiet", *args, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert re.search(r"realalloc stress: error: .*" + re.escape(message), proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""


def test_help_gives_the_exit_codes_and_the_docstring_points_at_them(capsys):
    with pytest.raises(SystemExit) as e:
        main(["stress", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert stress.EXIT_CODES in out
    assert "one progress line every SECONDS (default 5)" in " ".join(out.split())
    codes = re.findall(r"^  (\d)  (\w[\w ]*):", stress.EXIT_CODES, re.MULTILINE)
    assert codes == [("0", "ok"), ("1", "failed"), ("2", "bad usage"), ("3", "could not run")]
    assert (stress.EXIT_OK, stress.EXIT_FAILED, stress.EXIT_USAGE, stress.EXIT_NOT_RUN) == (
        0, 1, 2, 3,
    )  # fmt: skip
    # the docstring names the codes and points at the one table
    doc = " ".join((stress.__doc__ or "").split())
    assert "0 ok, 1 failed" in doc and "3 could not run" in doc and "``EXIT_CODES``" in doc


# --- samples and --plot ----------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG as matplotlib decodes it (so it must decode)."""
    image = pytest.importorskip("matplotlib.image").imread(str(path))
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image.shape[1], image.shape[0]


def check_samples(d: dict, *, threads: int, ops: int | None) -> None:
    """The time series of a JSON report: from the start to after the workers, in order."""
    samples = d["samples"]
    assert len(samples) >= 2
    first, last = samples[0], samples[-1]
    assert (first["seconds"], first["ops"], first["ops_per_second"]) == (0, 0, 0)
    assert first["rss"] == d["baseline_rss"]
    for a, b in pairwise(samples):
        assert a["seconds"] < b["seconds"] and a["ops"] <= b["ops"]
        assert b["ops_per_second"] == pytest.approx(
            (b["ops"] - a["ops"]) / (b["seconds"] - a["seconds"])
        )
    assert all(0 < s["rss"] <= d["peak_rss"] for s in samples)
    assert all(0 <= s["live"] <= s["inuse"] for s in samples)
    assert last["seconds"] >= d["seconds"] * 0.99
    assert last["live"] == 0  # the workers freed every object before the last sample
    if ops is not None:
        assert last["ops"] == threads * ops  # the workers' count, complete at the end


def test_plot_draws_the_samples_the_json_report_holds(tmp_path, capsys):
    js, png = tmp_path / "r.json", tmp_path / "run.png"
    rc, out, _ = run_main(
        capsys,
        *("--threads", "2", "--duration", "1.2", "--live", "200", "--quiet"),
        *("--json", str(js), "--plot", str(png)),
    )
    assert rc == 0, out
    d = json.loads(js.read_text())
    check_report(d, threads=2, distribution="uniform", ops=None)
    check_samples(d, threads=2, ops=None)
    # one every half second from 0, and one when the workers are done (which
    # replaces the one before when that came less than a quarter second earlier)
    assert len(d["samples"]) == pytest.approx(d["seconds"] / 0.5 + 1, abs=1)
    assert max(s["live"] for s in d["samples"]) > 0  # sampled while objects lived
    assert png_size(png) == stress.PLOT_SIZE == (1000, 600)


def test_the_samples_of_a_run_of_fixed_operations_count_every_one(tmp_path, capsys):
    js = tmp_path / "r.json"
    rc, _, _ = run_main(capsys, "--threads", "3", "--ops", "1003", "--live", "50", "--quiet",
                        "--json", str(js))  # fmt: skip
    assert rc == 0
    d = json.loads(js.read_text())
    check_samples(d, threads=3, ops=1003)


def test_samples_are_thinned_past_the_limit_and_keep_their_rates():
    """A day-long run keeps a few thousand samples: at 2000 every other one goes
    and the interval doubles; the rates kept are the ones measured."""
    sampler = stress._Sampler(started=100.0)
    t = 100.0
    for _ in range(5000):  # thinned at 2000, then each time 999 more came
        sampler.add(t, ops=round((t - 100.0) * 1000), memory=(1, 2), now_rss=3)
        last, t = t, t + sampler.every
    assert stress._MAX_SAMPLES // 2 < len(sampler.samples) < stress._MAX_SAMPLES
    assert sampler.every == 16 * stress._SAMPLE_EVERY  # four thinnings
    seconds = [s.seconds for s in sampler.samples]
    assert seconds == sorted(seconds)
    assert (seconds[0], seconds[-1]) == (0, last - 100.0)  # the first and the newest stay
    assert all(s.ops_per_second == pytest.approx(1000) for s in sampler.samples[1:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plot", "{tmp}/no/run.png"], "argument --plot: cannot write the plot to .*No such"),
        (["--plot", "{tmp}"], "argument --plot: cannot write the plot to .*Is a directory"),
        (["--design", "jemalloc"], "argument --design: invalid choice: 'jemalloc'"),
        (["--design", "tcmalloc", "--memory-limit", "64M"],
         r"memory_limit \(--memory-limit\) needs the go design: tcmalloc has none"),
    ],
)  # fmt: skip
def test_bad_plot_or_design_exits_2_before_anything_runs(
    tmp_path, capsys, monkeypatch, args, message
):
    def tripwire(*args: object, **kwargs: object) -> int:
        raise AssertionError("the run started although the options were bad")

    monkeypatch.setattr(cli, "stress_main", tripwire)
    with pytest.raises(SystemExit) as e:
        main(["stress", "--duration", "60", *(a.replace("{tmp}", str(tmp_path)) for a in args)])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.search(rf"realalloc stress: error: {message}", captured.err), captured.err
    assert sorted(os.listdir(tmp_path)) == []  # no file left behind


def test_plot_without_matplotlib_exits_2_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.setattr(cli, "stress_main", lambda *a, **k: pytest.fail("the run started"))
    with pytest.raises(SystemExit) as e:
        main(["stress", "--duration", "60", "--plot", str(tmp_path / "run.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --plot: drawing needs matplotlib: pip install 'realalloc[plot]'" in err
    assert not (tmp_path / "run.png").exists()


def test_unwritable_plot_from_a_real_process_exits_2(tmp_path):
    proc = run_cli("--duration", "60", "--plot", str(tmp_path / "no" / "run.png"), timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "realalloc stress: error: argument --plot: cannot write the plot to" in proc.stderr


# --- --design ---------------------------------------------------------------------------


@pytest.mark.parametrize("design", ["go", "tcmalloc", "segregated", "freelist"])
def test_each_design_runs_the_same_verified_stress_clean(tmp_path, capsys, design):
    js, png = tmp_path / "r.json", tmp_path / "run.png"
    rc, out, _ = run_main(
        capsys,
        *("--design", design, "--threads", "3", "--ops", "500", "--live", "40"),
        *("--cross-free", "0.5", "--verify-rate", "0.2", "--quiet"),
        *("--json", str(js), "--plot", str(png)),
    )
    assert rc == 0, out
    d = json.loads(js.read_text())
    assert d["design"] == d["config"]["design"] == design
    assert f"  design {design}, threads 3, distribution uniform, seed 1" in out.splitlines()
    assert (d["ok"], d["check"], d["corruptions"], d["errors"]) == (True, "ok", [], [])
    assert d["mallocs"] == d["frees"] > 0
    assert 0 < d["cross_thread_frees"] <= d["frees"]
    assert d["verifies"] >= d["frees"]
    tried = d["mallocs"] + d["failed_mallocs"]
    assert tried <= 3 * 500 <= tried + d["frees"]
    check_samples(d, threads=3, ops=500)
    assert png_size(png) == stress.PLOT_SIZE
    if design == "go":
        check_report(d, threads=3, distribution="uniform", ops=500)
        check_text_matches_json(out, d)
    else:
        assert d["scavenged"] is None and d["by_class"] == []
        assert f"scavenged               - (the {design} design has no scavenger)" in out


def test_a_design_finds_a_corrupted_object_as_go_does():
    """The verify path on a design's heap: a pattern with one byte flipped, handed
    to a worker, is reported, and the worker still frees the object."""
    design = make("segregated")
    try:
        size, seq = 300, 777
        addr = design.malloc(size)
        ctypes.memmove(addr, stress._pattern(addr, seq, size), size)
        ctypes.memset(addr + 5, ctypes.string_at(addr + 5, 1)[0] ^ 0x40, 1)
        cfg = stress.StressConfig(threads=1, ops=1, live=1, progress=False, design="segregated")
        report = stress.StressReport(config={"threads": 1, "distribution": "uniform", "seed": 1})
        run = stress._Run(design, cfg, report, CLASS_SIZES, time.monotonic() + 10)
        run.handoff.put((addr, size, seq, "w2"))
        stress._worker(run, 0)
        assert [(c.address, c.offset, c.when, c.thread) for c in report.corruptions] == [
            (addr, 5, "free", "w2")
        ]
        with pytest.raises(realalloc.DoubleFreeError):  # the worker freed it
            design.free(addr)
        assert design.stats().objects_live == 0
        design.check()
    finally:
        design.close()


def test_run_stress_refuses_a_heap_of_another_design():
    cfg = stress.StressConfig(threads=1, ops=10, progress=False, design="tcmalloc")
    with realalloc.Heap() as heap, pytest.raises(realalloc.InvalidArgumentError, match="go design"):
        stress.run_stress(cfg, heap=heap)
    with make("freelist") as design:
        report = stress.run_stress(
            stress.StressConfig(threads=2, ops=200, live=20, progress=False, design="freelist"),
            heap=design,
        )
        assert report.ok and report.design == "freelist"
        assert not design.closed  # a caller's heap stays open
        assert design.stats().objects_live == 0


def test_design_names_are_go_then_the_seeds_designs():
    assert ("go", *DESIGNS) == stress.DESIGN_NAMES
    assert set(stress.DESIGN_NAMES) == {"go", "tcmalloc", "segregated", "freelist"}


def test_a_plot_that_cannot_be_written_after_the_run_exits_3(tmp_path, capsys):
    """Checked writable before the run, a directory by the time it is drawn."""
    cfg = stress.StressConfig(threads=2, ops=100, live=10, progress=False)
    out, err = io.StringIO(), io.StringIO()
    assert stress.stress_main(cfg, plot_path=str(tmp_path), out=out, err=err) == 3
    assert out.getvalue().startswith("realalloc stress: OK")  # the run itself was fine
    assert err.getvalue().startswith("realalloc stress: cannot write the plot: ")
