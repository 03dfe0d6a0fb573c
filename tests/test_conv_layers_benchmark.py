"""benchmarks/conv_layers.py: one row per convolution of FCN-VGG16, with the model's shapes and FLOPs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "conv_layers.py"
NAMES = [f"block{b}_conv{c}" for b, convs in enumerate((2, 2, 3, 3, 3), start=1) for c in range(1, convs + 1)]


def test_benchmark_prints_every_layer(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    output = tmp_path / "layers.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--size=64", "--batch_size=2", "--steps=1", "--warmup=1", "--precision=float32",
         "--fc_units=16", "--peak_size=128", "--fc6_implementation=im2col", "--also_im2col=block1_conv1,fc6",
         f"--output={output}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text()
    assert text in result.stdout and "fc6 im2col, batch 2" in text
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if re.match(r"\| (block|fc|\*\*sum)", line)]
    # fc6 is im2col already: only block1_conv1 gets an extra row, after the model's rows and sums.
    assert [r[0] for r in rows] == [*NAMES, "fc6", "fc7", "**sum**", "block1_conv1 (im2col)"]
    extra = rows.pop()
    assert extra[1:4] == rows[0][1:4] and extra[9] == "-" and float(extra[6]) > 0
    by_name = {r[0]: r for r in rows}
    # 'same' geometry at 64x64: conv1_1 sees the image, fc6 the 2x2x512 pool5 map.
    assert by_name["block1_conv1"][1:3] == ["64x64x3", "3x3x3x64 (same)"]
    assert by_name["fc6"][1:3] == ["2x2x512", "7x7x512x16 (same)"]
    # GFLOP of the batch of 2: 2 x MACs of the layer's output positions.
    assert float(by_name["block1_conv2"][3]) == pytest.approx(2 * 2 * 64 * 64 * 9 * 64 * 64 / 1e9, rel=1e-2)
    assert float(by_name["fc6"][3]) == pytest.approx(2 * 2 * 2 * 2 * 49 * 512 * 16 / 1e9, rel=1e-2)
    for row in rows[:-1]:
        assert float(row[4]) > 0 and float(row[6]) > 0
    assert sum(float(r[9]) for r in rows[:-1]) == pytest.approx(100, abs=0.5)
    assert float(rows[-1][6]) == pytest.approx(sum(float(r[6]) for r in rows[:-1]), rel=1e-2)


def test_unknown_layer_is_refused():
    result = subprocess.run([sys.executable, str(SCRIPT), "--size=64", "--fc_units=16", "--also_im2col=conv1_1"],
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert result.returncode == 2
    assert "conv_layers.py: error: --also_im2col names no convolution of FCN-8s: ['conv1_1']. Known: ['block1_conv1'" in result.stderr


def test_bad_flag_is_reported_in_one_line():
    result = subprocess.run([sys.executable, str(SCRIPT), "--batch_size=0"], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert result.returncode == 2
    assert "conv_layers.py: error: --batch_size must be >= 1. Received: --batch_size=0" in result.stderr


# Its docstring's CPU smoke command: tests/test_fc6_benchmark.py (the two share the peak's flags).
