"""benchmarks/fc6.py: its formulations of fc6/fc7 are the model's convolution, and the script
prints a row per layer and formulation on the CPU."""

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "fc6.py"


def _module():
    spec = importlib.util.spec_from_file_location("fc6_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("padding,kernel_size", [("same", 7), ("valid", 7), ("same", 3), ("valid", 1)])
def test_formulations_compute_the_convolution(padding, kernel_size):
    fc6 = _module()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 8, 5)).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, 5, 6)).astype("float32")
    # The convolution in numpy: cross-correlation, stride 1, 'same' padding (k - 1) / 2 each side.
    pad = (kernel_size - 1) // 2 if padding == "same" else 0
    padded = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    h, w = padded.shape[1] - kernel_size + 1, padded.shape[2] - kernel_size + 1
    expected = sum(np.einsum("bhwc,cf->bhwf", padded[:, i:i + h, j:j + w], kernel[i, j])
                   for i in range(kernel_size) for j in range(kernel_size))
    for name in ("conv", "im2col", "shifted"):
        got = keras.ops.convert_to_numpy(fc6.FC6_FORMS[name](kernel, x, padding))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=name)


def test_benchmark_prints_every_formulation(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    output = tmp_path / "fc6.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--size=64", "--batch_size=1", "--steps=1", "--warmup=1", "--precision=float32",
         "--fc_units=16", "--peak_size=128", f"--output={output}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text()
    assert text in result.stdout and "precision float32" in text
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if re.match(r"\| fc[67] ", line)]
    # 'same' geometry at 64x64: pool5 is 2x2x512.
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("fc6", "1x2x2x512 -> 7x7x512x16 (same)", "conv"),
        ("fc6", "1x2x2x512 -> 7x7x512x16 (same)", "im2col"),
        ("fc6", "1x2x2x512 -> 7x7x512x16 (same)", "shifted"),
        ("fc7", "1x2x2x16 -> 1x1x16x16", "conv"),
        ("fc7", "1x2x2x16 -> 1x1x16x16", "matmul"),
    ]
    assert float(rows[0][2]) == pytest.approx(2 * 2 * 2 * 49 * 512 * 16 / 1e9, rel=1e-2)
    for row in rows:
        assert float(row[4]) > 0 and float(row[7]) > 0
        assert float(row[10]) < 1e-4  # the same function as the convolution


def test_bad_flag_is_reported_in_one_line():
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps=0"], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert result.returncode == 2 and "fc6.py: error: --steps must be >= 1. Received: --steps=0" in result.stderr


@pytest.mark.parametrize("script", ["fc6.py", "conv_layers.py"])
def test_the_cpu_smoke_test_of_the_docstring_runs_with_a_small_peak_matmul(script):
    """The docstring's CPU smoke command, as written: without --peak_size the peak's matmul is
    1024 a side on a CPU (8192 would take minutes there)."""
    doc = ast.get_docstring(ast.parse((REPO_ROOT / "benchmarks" / script).read_text())).replace("\\\n", " ")
    (line,) = [line for line in doc.splitlines() if line.rstrip().endswith("# CPU smoke test")]
    args = shlex.split(line.split("#")[0])
    assert args[:2] == ["python", f"benchmarks/{script}"], args
    result = subprocess.run([sys.executable, *args[1:]], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"})
    assert not any(arg.startswith("--peak_size") for arg in result.args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"- Matmul peak: [\d.]+ TFLOP/s \(float32 1024x1024, throughput.matmul_peak\)", result.stdout)
    assert re.search(r"- Commit: \S+", result.stdout)
