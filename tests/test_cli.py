"""python -m realalloc: the tour, the size-class table, and the stress exit codes as
a shell sees them."""

import subprocess
import sys

import pytest

from realalloc.core.sizeclasses import size_classes
from realalloc.tools.cli import main


def test_classes_prints_one_row_per_class_in_gos_column_order(capsys):
    assert main(["classes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0].split(), [line.split() for line in lines[1:]]
    assert header[:3] == ["class", "bytes/obj", "bytes/span"]
    assert len(rows) == 67
    for row, info in zip(rows, size_classes(), strict=True):
        assert [int(x) for x in row[:5]] == [
            info.size_class,
            info.bytes_per_obj,
            info.bytes_per_span,
            info.objects,
            info.tail_waste,
        ]
        assert row[5] == f"{info.max_waste:.2f}%"
        assert int(row[6]) == info.min_align


@pytest.mark.slow
def test_tour_runs_as_a_module_and_reports_rss():
    out = subprocess.run(
        [sys.executable, "-m", "realalloc", "tour"], capture_output=True, text=True, check=True
    ).stdout
    assert "process RSS at start" in out
    assert "hold their patterns: yes" in out
    assert "every invariant holds" in out


@pytest.mark.parametrize(
    ("args", "code", "first_line"),
    [
        (["--ops", "40", "--threads", "2", "--live", "10"], 0, "realalloc stress: OK"),
        (["--threads", "0"], 2, ""),
        (["--json", "/nonexistent-dir/r.json"], 2, ""),
        (
            ["--fault-every", "1", "--ops", "20", "--threads", "1"],
            3,
            "realalloc stress: NOT RUN (no malloc succeeded)",
        ),
    ],
    ids=["ok", "bad-option", "bad-json-path", "nothing-allocated"],
)
def test_stress_exit_code_reaches_the_shell(args, code, first_line):
    """python -m realalloc returns main()'s code as the process status (exit 1, a
    corruption, is produced in-process in test_stress.py)."""
    proc = subprocess.run(
        [sys.executable, "-m", "realalloc", "stress", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.partition("\n")[0] == first_line
    if code == 2:
        assert "realalloc stress: error: argument " in proc.stderr
