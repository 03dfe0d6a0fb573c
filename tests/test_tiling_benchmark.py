"""The tiled-inference benchmark end to end on the CPU: one process per row, its table parses."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_tiling_benchmark_prints_a_row_per_tile_size_with_the_whole_images_labels():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "tiling.py"), "--size=520x100", "--fc_units=8",
         "--tile_sizes=480,whole"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {cells[0]: cells[1:] for cells in (
        [cell.strip() for cell in line.strip("|").split("|")] for line in result.stdout.splitlines()
        if re.match(r"\| (whole|480) \|", line)
    )}
    assert list(rows) == ["whole", "480"]  # The whole image runs first: the others compare with it.
    tiles, work, seconds, peak, _, device, same, classes = rows["480"]
    assert tiles == "3" and work == f"{(480 + 480 + 456) / 520:.2f}x"  # tile_spans(520, 480)
    assert float(seconds) > 0 and int(peak.replace(",", "")) > 100 and device == "-"
    assert float(same) >= 0.999 and int(classes) > 1 and rows["whole"][:2] == ["1", "1.00x"]


@pytest.mark.parametrize("args,message", [
    (["--size=abc"], "tiling.py: error: --size must be N or HxW with positive integers. Received: 'abc'"),
    (["--tile_sizes=whole,abc"], "tiling.py: error: --tile_sizes entries must be N or HxW with positive integers. "
                                 "Received: 'abc'"),
    (["--tile_sizes=whole,300"], "tiling.py: error: --tile_sizes entries must be at least 480 pixels on each side"),
    (["--tile_sizes="], "tiling.py: error: --tile_sizes must name at least one row"),
    (["1024"], "benchmarks/tiling.py: error: unexpected arguments: ['1024']"),
])
def test_bad_input_is_one_line_before_any_row_runs(args, message):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "tiling.py"), "--fc_units=8", *args],
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "| tiles of |" not in result.stdout  # no row was started
