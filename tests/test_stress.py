"""``python -m realalloc stress``: short real runs over every size distribution, the
text and JSON reports and their consistency, injected OS faults, a run that really
finds corrupted bytes (and exits 1 saying where), and bad options (exit 2).

The stress command drives a real Heap from many threads; nothing here is mocked.
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import queue
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import realalloc
from realalloc.core.sizeclasses import CLASS_TO_SIZE, MAX_SMALL_SIZE, size_to_class
from realalloc.tools import stress
from realalloc.tools.cli import main

MIB = 1 << 20
FAULT_OPS = ("reserve", "commit", "release")
NO_FAULTS = dict.fromkeys(FAULT_OPS, 0)

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


def run_cli(
    *args: str, exe: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    cmd = [exe] if exe else [sys.executable, "-m", "realalloc"]
    return subprocess.run(
        [*cmd, "stress", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def num(text: str) -> int:
    return int(text.replace(",", ""))


def parse_text(out: str) -> dict:
    """The figures of the text report (it must have every line)."""
    lines = out.splitlines()
    assert lines[0] in ("realalloc stress: OK", "realalloc stress: FAILED"), out
    found: dict = {"ok": lines[0].endswith("OK")}
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
        assert d["mallocs"] <= threads * ops
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
        assert 1 <= r["class"] < len(CLASS_TO_SIZE)
        assert r["size"] == CLASS_TO_SIZE[r["class"]]
        assert r["mallocs"] == r["frees"] > 0, r
    assert sum(r["mallocs"] for r in rows) <= d["mallocs"]


def check_text_matches_json(out: str, d: dict) -> None:
    t = parse_text(out)
    assert t["ok"] is d["ok"]
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


# --- clean runs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "extra"),
    [
        ("uniform", ["--live", "60"]),
        ("lognormal", ["--live", "60", "--scan-ratio", "0.5"]),
        ("large", ["--live", "6", "--cross-free", "0.5"]),
        ("replay", ["--live", "40"]),
    ],
)
def test_each_distribution_runs_clean_with_text_and_json_reports(tmp_path, distribution, extra):
    threads, ops = 8, 120
    args = ["--threads", str(threads), "--ops", str(ops), "--quiet", *extra]
    if distribution == "replay":
        replay = tmp_path / "sizes.txt"
        replay.write_text(REPLAY)
        args += ["--replay", str(replay)]
    else:
        args += ["--distribution", distribution]
    report = tmp_path / "report.json"
    proc = run_cli(*args, "--json", str(report))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""  # --quiet: no progress line
    d = json.loads(report.read_text())
    check_report(d, threads=threads, distribution=distribution, ops=ops)
    assert d["failed_mallocs"] == 0
    assert d["faults_injected"] == NO_FAULTS
    check_text_matches_json(proc.stdout, d)
    small = sum(r["mallocs"] for r in d["by_class"])
    if distribution == "large":
        # half of the objects are large (> 32 KiB): not in the per-class table
        assert small < d["mallocs"]
        assert d["bytes_allocated"] > d["mallocs"] * MAX_SMALL_SIZE // 4
        assert d["scavenged"] > 0
    if distribution == "replay":
        by_class = {size_to_class(s): s for s in REPLAY_SIZES if s <= MAX_SMALL_SIZE}
        assert len(by_class) == len(REPLAY_SIZES) - 1  # one size per class
        assert {r["class"] for r in d["by_class"]} <= set(by_class)
        nlarge = d["mallocs"] - small
        assert nlarge > 0  # the 40000-byte entry
        exact = sum(r["mallocs"] * by_class[r["class"]] for r in d["by_class"]) + nlarge * 40000
        assert d["bytes_allocated"] == exact


def test_duration_run_of_the_console_script(tmp_path):
    exe = shutil.which("realalloc")
    if exe is None:
        pytest.skip("the realalloc console script is not installed")
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


def test_progress_line_without_quiet():
    proc = run_cli("--threads", "2", "--duration", "1.2", "--live", "20")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\[#*\s*\]\s+\d+%\s+[\d,]+ ops/s\s+live", proc.stderr), proc.stderr
    assert "realalloc stress: OK" in proc.stdout


def test_fault_every_counts_injected_faults_and_failed_mallocs(tmp_path):
    """Large objects grow the heap by whole arenas several times; failing every second
    reserve and commit makes some of those mallocs raise (counted, not fatal)."""
    report = tmp_path / "faults.json"
    proc = run_cli(
        "--distribution", "large", "--threads", "4", "--ops", "150", "--live", "30",
        "--fault-every", "2", "--quiet", "--json", str(report),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    d = json.loads(report.read_text())
    check_report(d, threads=4, distribution="large", ops=150)
    assert d["config"]["fault_every"] == 2
    faults = d["faults_injected"]
    assert faults["reserve"] + faults["commit"] > 0, faults
    # each refused reserve or commit fails exactly the malloc that was growing the heap
    assert d["failed_mallocs"] == faults["reserve"] + faults["commit"]
    check_text_matches_json(proc.stdout, d)


def test_run_stress_in_process_restores_fault_injection():
    before = {op: realalloc.fault_hits(op) for op in FAULT_OPS}
    cfg = stress.StressConfig(
        threads=3, ops=60, distribution="large", live=4, fault_every=1, progress=False
    )
    report = stress.run_stress(cfg)
    assert report.ok, report.format()
    # every reserve fails: nothing large could ever be allocated, and that is counted
    assert report.failed_mallocs > 0
    assert report.faults_injected["reserve"] >= report.failed_mallocs
    assert report.mallocs == report.frees
    # fault injection is off again: a fresh heap grows normally
    hits = {op: realalloc.fault_hits(op) for op in FAULT_OPS}
    with realalloc.Heap(background_scavenger=False) as h:
        h.free(h.malloc(10 * MIB))
        h.scavenge()
        h.check()
    assert {op: realalloc.fault_hits(op) for op in FAULT_OPS} == hits
    assert all(hits[op] >= before[op] for op in FAULT_OPS)


# --- a run that finds corrupted memory ----------------------------------------------


class Scribbler:
    """The progress stream of a stress run, which corrupts the run's heap.

    run_stress hands its progress stream to the monitor thread, which writes a line
    every 0.5 s while the workers run and is joined before the heap is checked and
    closed, so while ``write`` runs the heap is open and its memory mapped.  On the
    first line, ``write`` takes the heap from the monitor's frame, walks its spans
    and flips one byte of every live object it finds (``usable_size`` succeeds only
    for a live object), recording the address of each flipped byte.  The workers
    verify every object against its pattern before they free it, so each object
    that was still live when it was scribbled on must be reported.
    """

    def __init__(self, limit: int = 400) -> None:
        self.limit = limit
        self.flipped: set[int] = set()
        self.lines = 0

    def write(self, text: str) -> None:
        self.lines += 1
        if self.lines != 1:
            return
        heap = sys._getframe(1).f_locals["heap"]
        assert isinstance(heap, realalloc.Heap)
        for info in heap.spans():
            if info.state != realalloc.SpanState.IN_USE:
                continue
            for slot in range(info.nelems):
                addr = info.base + slot * info.elemsize
                try:
                    usable = heap.usable_size(addr)
                except realalloc.InvalidPointerError:
                    continue  # free slot
                victim = addr + (1 if usable >= 16 else 0)  # inside the smallest object
                byte = ctypes.string_at(victim, 1)[0]
                ctypes.memset(victim, byte ^ 0xA5, 1)
                self.flipped.add(victim)
                if len(self.flipped) >= self.limit:
                    return

    def flush(self) -> None:
        pass


def test_stress_main_returns_1_and_names_each_corrupted_object(tmp_path, monkeypatch):
    """A real corruption, found by the real verification (see Scribbler): the
    ``stress`` subcommand returns 1, the text report says FAILED with each object's
    address and the byte offset that differs, the JSON report lists them, and every
    one is a byte that was really flipped."""
    parser = argparse.ArgumentParser()
    stress.add_arguments(parser)
    args = parser.parse_args(
        ["--threads", "4", "--duration", "1.2", "--live", "150", "--verify-rate", "0.2",
         "--json", str(tmp_path / "bad.json")]
    )  # fmt: skip
    assert not args.quiet
    scribbler = Scribbler()
    monkeypatch.setattr(sys, "stderr", scribbler)  # where the progress line goes
    buf = io.StringIO()
    rc = stress.stress_main(args, out=buf)
    out = buf.getvalue()
    report = tmp_path / "bad.json"
    assert scribbler.lines >= 2
    assert scribbler.flipped, "found no live object to corrupt"
    assert rc == 1, out
    d = json.loads(report.read_text())
    assert d["ok"] is False
    assert d["check"] == "ok"  # the allocator's own structures are intact
    assert d["errors"] == []
    assert d["mallocs"] == d["frees"]
    found = d["corruptions"]
    assert found
    # an object may be reported twice (a random verify, then its free)
    assert len({(c["address"], c["seq"]) for c in found}) <= len(scribbler.flipped)
    for c in found:
        assert c["address"] + c["offset"] in scribbler.flipped, c
        assert 0 <= c["offset"] < c["size"]
        assert c["when"] in ("verify", "free", "final")
        assert re.fullmatch(r"w\d", c["thread"])
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
        handoff: queue.SimpleQueue = queue.SimpleQueue()
        handoff.put((addr, size, seq, "w5"))
        stress._worker(heap, cfg, 0, handoff, stress._Totals(), report, time.monotonic() + 10)
        assert [
            (c.address, c.offset, c.size, c.seq, c.when, c.thread) for c in report.corruptions
        ] == [(addr, 37, size, seq, "free", "w5")]
        report.check = "ok"
        assert not report.ok
        text = report.format()
        assert text.startswith("realalloc stress: FAILED")
        assert f"free: object at {addr:#x} (100 B, seq 12345, thread w5) differs at byte 37" in text
        with pytest.raises(realalloc.DoubleFreeError):  # the worker freed it
            heap.free(addr)
        assert heap.stats().heap_objects == 0
        heap.check()
    finally:
        heap.close()


def test_report_of_a_failed_check_or_worker_error_is_not_ok():
    report = stress.StressReport(config={"threads": 1, "distribution": "uniform", "seed": 1})
    report.check = "ok"
    assert report.ok
    report.check = "HeapCorruption: HEAP-1: page 0x1000 does not map"
    assert not report.ok
    assert "heap.check() HeapCorruption: HEAP-1: page 0x1000" in report.format()
    report.check = "ok"
    report.errors.append("worker 3: KeyError: 7")
    assert not report.ok
    assert "error: worker 3: KeyError: 7" in report.format()
    assert report.to_dict()["ok"] is False


# --- bad options ---------------------------------------------------------------------


def write_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_OPTIONS = {
    "threads-0": (["--threads", "0"], r"threads must be >= 1, got 0"),
    "threads-huge": (["--threads", "5000"], r"threads must be <= 0x400, got 0x1388"),
    "threads-not-int": (["--threads", "two"], r"argument --threads: invalid int value: 'two'"),
    "ops-negative": (["--ops=-5"], r"ops must be >= 1, got -5"),
    "ops-zero": (["--ops", "0"], r"ops must be >= 1, got 0"),
    "ops-and-duration": (["--ops", "5", "--duration", "1"], r"not allowed with argument"),
    "duration-0": (["--duration", "0"], r"duration must be in \(0, 86400\] seconds, got 0\.0"),
    "duration-nan": (["--duration", "nan"], r"duration must be .*got nan"),
    "scan-ratio": (["--scan-ratio", "1.5"], r"scan_ratio must be between 0 and 1, got 1\.5"),
    "cross-free": (["--cross-free=-0.1"], r"cross_free must be between 0 and 1, got -0\.1"),
    "verify-rate": (["--verify-rate", "2"], r"verify_rate must be between 0 and 1, got 2\.0"),
    "live-0": (["--live", "0"], r"live must be >= 1, got 0"),
    "seed-negative": (["--seed=-1"], r"seed must be >= 0, got -1"),
    "fault-every-negative": (["--fault-every=-2"], r"fault_every must be >= 0, got -2"),
    "distribution": (
        ["--distribution", "zipf"],
        r"argument --distribution: invalid choice: 'zipf'",
    ),
    "distribution-replay-without-file": (
        ["--distribution", "replay"],
        r"argument --distribution: invalid choice: 'replay'",
    ),
    "replay-malformed": (
        ["--replay", "{tmp}/bad.txt"],
        r"bad\.txt:3: size '12k' is not an integer",
    ),
    "replay-bad-flag": (
        ["--replay", "{tmp}/flag.txt"],
        r"flag\.txt:2: expected 'SIZE \[scan\|noscan\]'",
    ),
    "replay-out-of-range": (["--replay", "{tmp}/neg.txt"], r"neg\.txt:1: size -8 out of range"),
    "replay-empty": (["--replay", "{tmp}/empty.txt"], r"empty\.txt: no sizes"),
    "replay-missing": (
        ["--replay", "{tmp}/nowhere.txt"],
        r"cannot read replay file .*nowhere\.txt: .*No such file",
    ),
    "replay-not-utf8": (["--replay", "{tmp}/binary.txt"], r"cannot read replay file .*binary\.txt"),
    "replay-directory": (["--replay", "{tmp}"], r"cannot read replay file .*Is a directory"),
}


def replay_files(tmp_path: Path) -> None:
    write_file(tmp_path, "bad.txt", "# sizes\n64\n12k scan\n")
    write_file(tmp_path, "flag.txt", "64\n64 pointers\n")
    write_file(tmp_path, "neg.txt", "-8\n")
    write_file(tmp_path, "empty.txt", "# only a comment\n\n")
    (tmp_path / "binary.txt").write_bytes(b"64\n\xff\xfe 12\n")


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_exits_2_with_a_clear_message(tmp_path, capsys, case):
    args, message = BAD_OPTIONS[case]
    replay_files(tmp_path)
    argv = ["stress", "--quiet", *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    if not any(a.startswith(("--ops", "--duration")) for a in args):
        argv += ["--ops", "10"]  # were the option accepted, the run would be short
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.search(r"^usage: realalloc", captured.err, re.MULTILINE)
    assert re.search(r"realalloc( stress)?: error: .*" + message, captured.err), captured.err


def test_bad_options_exit_2_from_a_real_process(tmp_path):
    empty = write_file(tmp_path, "empty.txt", "\n")
    for args, message in (
        (["--threads", "0"], "threads must be >= 1, got 0"),
        (["--replay", empty], f"{empty}: no sizes"),
    ):
        proc = run_cli("--ops", "5", "--quiet", *args)
        assert proc.returncode == 2, proc.stderr
        assert re.search(r"realalloc: error: .*" + re.escape(message), proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""
