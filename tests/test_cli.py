"""python -m realalloc: the tour and the size-class table."""

import subprocess
import sys

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


def test_tour_runs_as_a_module_and_reports_rss():
    out = subprocess.run(
        [sys.executable, "-m", "realalloc", "tour"], capture_output=True, text=True, check=True
    ).stdout
    assert "process RSS at start" in out
    assert "hold their patterns: yes" in out
    assert "every invariant holds" in out
