"""The canvas benchmark end to end on the CPU: one process per row, its table parses, and the
canvas rows trace the predict function once where the images' own sizes trace it per size."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_canvas_benchmark_prints_a_row_per_setting_with_its_traces():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "canvas.py"), "--fc_units=8", "--canvas=48x64",
         "--random_sizes=40x50,48x30,40x50,17x64,30x30", "--batch_sizes=2"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 random images, backend tensorflow" in result.stdout
    rows = {cells[0]: cells[1:] for cells in (
        [cell.strip() for cell in line.strip("|").split("|")] for line in result.stdout.splitlines()
        if re.match(r"\| (own sizes|48x64 canvas, batch 2) \|", line)
    )}
    assert list(rows) == ["own sizes", "48x64 canvas, batch 2"]
    images, sizes, traces, compile_s, work, first, second, rate = rows["48x64 canvas, batch 2"]
    assert (images, sizes, traces, compile_s) == ("5", "4", "1", "-")  # One shape; compile time is JAX's only.
    pixels = 40 * 50 * 2 + 48 * 30 + 17 * 64 + 30 * 30
    assert work == f"{3 * 2 * 48 * 64 / pixels:.2f}x"  # 3 calls of 2 canvases, the last filled up.
    assert float(first) > 0 and float(second) > 0 and float(rate) > 0
    # TensorFlow retraces for the first new shapes, then traces a shape-generic function.
    assert rows["own sizes"][:2] == ["5", "4"] and int(rows["own sizes"][2]) > 1 and rows["own sizes"][4] == "1.00x"


@pytest.mark.parametrize("args,message", [
    (["--canvas=abc"], "canvas.py: error: --canvas must be N or HxW with positive integers. Received: 'abc'"),
    (["--images=/nonexistent"], "canvas.py: error: --images must be a folder of images. Received: "
                                "--images=/nonexistent (no such folder)"),
    (["--images={tests}"], "canvas.py: error: --images={tests} holds no image files"),
    (["--batch_sizes=1,0"], "canvas.py: error: --batch_sizes must be a list of positive integers. "
                            "Received: --batch_sizes=1,0"),
    (["--random_sizes=40x48,60x30", "--canvas=48x48"], "canvas.py: error: a --random_sizes entry (60x30) does not "
                                                        "fit the --canvas 48x48 (height x width)"),
    (["500"], "benchmarks/canvas.py: error: unexpected arguments: ['500']"),
])
def test_bad_input_is_one_line_before_any_row_runs(args, message):
    tests = str(REPO_ROOT / "tests")  # a folder without images
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "canvas.py"), "--fc_units=8",
                             *(arg.format(tests=tests) for arg in args)],
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(message.format(tests=tests)), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "| images at |" not in result.stdout  # no row was started
