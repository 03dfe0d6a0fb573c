"""The upsampling benchmark end to end on the CPU: every FCN upsampling layer gets a row."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backend,precision", [
    ("tensorflow", "float32"),
    pytest.param("jax", "bf16", marks=pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="no jax")),
])
def test_deconvolution_benchmark_measures_every_fcn_upsampling_layer(tmp_path, backend, precision):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    output = tmp_path / "deconvolution.md"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "deconvolution.py"), "--size=64", "--batch_size=1",
         "--steps=1", "--warmup=1", f"--precision={precision}", f"--output={output}"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.read_text() in result.stdout
    assert f"precision {precision}" in output.read_text() and f"- Software: {backend} " in output.read_text()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in output.read_text().splitlines()
            if re.match(r"\| fcn", line)]
    # 'same' geometry at 64x64: score_fr is 2x2, pool4 4x4, pool3 8x8.
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("fcn16s/upscore2, fcn8s/upscore2", "2x2x21", "4 / 2"),
        ("fcn8s/upscore_pool4", "4x4x21", "4 / 2"),
        ("fcn8s/upscore8", "8x8x21", "16 / 8"),
        ("fcn16s/upscore16", "4x4x21", "32 / 16"),
        ("fcn32s/upscore", "2x2x21", "64 / 32"),
    ]
    for row in rows:
        s, useful, dilated = int(row[2].split(" / ")[1]), float(row[3]), float(row[4])
        assert abs(dilated / useful - s * s) < 0.01 * s * s  # 'same': s*s times as many positions
        assert all(float(ms) > 0 for ms in (row[5], row[6], row[8], row[9]))


def test_bad_flag_is_reported_in_one_line():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "deconvolution.py"), "--steps=0"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300,
    )
    assert result.returncode == 2 and "deconvolution.py: error: --steps must be >= 1. Received: --steps=0" in result.stderr


def test_the_timed_backward_computes_the_kernel_gradient_too():
    """Found by review: under TensorFlow the compiled backward returned only the input's gradient,
    and XLA pruned the kernel's (2 convolutions, not training's 3)."""
    import keras
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import deconvolution
    from fcn_keras.layers import Deconvolution

    if keras.backend.backend() != "tensorflow":
        pytest.skip("inspects TensorFlow's compiled program")
    x = tf.random.normal((1, 4, 4, 3), seed=0)
    for cls in (keras.layers.Conv2DTranspose, Deconvolution):
        layer = cls(3, 4, strides=2, use_bias=False)
        layer.build((None, None, None, 3))
        _, backward = deconvolution.compiled_functions(layer)
        hlo = backward.experimental_get_compiler_ir(x)(stage="optimized_hlo")
        assert len(re.findall(r"= \S+ convolution\(", hlo)) == 3, (cls.__name__, hlo)
        gk, gx = backward(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        expected = tape.gradient(loss, [layer.kernel, x])
        np.testing.assert_allclose(gk, expected[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(gx, expected[1], rtol=1e-4, atol=1e-5)
