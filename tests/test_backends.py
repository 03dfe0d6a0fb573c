"""The same model code under KERAS_BACKEND=jax (run in a subprocess: the backend is fixed at
import). Skips when jax is not installed."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import keras

from fcn_keras.model import build_fcn

REPO_ROOT = Path(__file__).resolve().parents[1]

JAX_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from fcn_keras.model import build_fcn

    model_path, data_path, out_path = sys.argv[1:4]
    data = np.load(data_path)
    # A model saved under TensorFlow gives the same logits under JAX.
    reloaded = keras.saving.load_model(model_path)
    results = {"logits": np.asarray(reloaded(data["images"], training=False))}
    # XLA compiles the predict function once per input shape: photos of 3 sizes trace it 3 times
    # at their own sizes, once on a canvas (two calls of 3 images).
    from fcn_keras import inference
    traces = []
    argmax_call = inference.ArgmaxLabels.call
    def counting_call(self, logits):
        traces.append(tuple(logits.shape))
        return argmax_call(self, logits)
    inference.ArgmaxLabels.call = counting_call
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (*size, 3)).astype("uint8") for size in ((30, 40), (41, 29), (50, 50), (30, 40))]
    exact = [inference.predict_labels(reloaded, photo[None])[0] for photo in photos]
    assert traces == [(1, 30, 40, 4), (1, 41, 29, 4), (1, 50, 50, 4)], traces
    del traces[:]
    on_canvas = inference.predict_labels_on_canvas(reloaded, photos, 64, batch_size=3)
    assert traces == [(3, 64, 64, 4)], traces
    assert [labels.shape for labels in on_canvas] == [labels.shape for labels in exact]
    inference.ArgmaxLabels.call = argmax_call
    # Deconvolution (no dilated input) computes what Keras' Conv2DTranspose computes under JAX.
    from fcn_keras.layers import Deconvolution
    x = rng.normal(size=(2, 3, 5, 4)).astype("float32")
    for kernel, stride, padding in ((4, 2, "same"), (64, 32, "valid"), (16, 8, "same"), (5, 2, "valid")):
        reference = keras.layers.Conv2DTranspose(4, kernel, strides=stride, padding=padding)
        layer = Deconvolution(4, kernel, strides=stride, padding=padding)
        reference.build(x.shape)
        layer.build(x.shape)
        layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()])
        reference.set_weights(layer.get_weights())
        expected = np.asarray(reference(x))
        np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-4 * np.abs(expected).max())
    # Fresh models of every variant and geometry return the input size, in float32 under bf16.
    keras.config.set_dtype_policy("mixed_bfloat16")
    for geometry in ("reference", "same"):
        for variant in ("32s", "16s", "8s"):
            model = build_fcn(variant, fc_units=8, geometry=geometry)
            for size in ((1, 1), (37, 91)):
                out = model(np.zeros((1, *size, 3), "uint8"), training=False)
                assert tuple(out.shape) == (1, *size, 21), (variant, geometry, out.shape)
                assert str(out.dtype) == "float32", out.dtype
    np.savez(out_path, **results)
    print("jax ok")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_builds_runs_and_matches_tensorflow(tmp_path):
    assert keras.backend.backend() == "tensorflow"
    model = build_fcn("8s", num_classes=4, fc_units=16)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.03, w.shape).astype("float32") for w in layer.get_weights()])
    images = rng.integers(0, 256, (2, 45, 67, 3)).astype("uint8")
    expected = np.asarray(model(images, training=False))
    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "data.npz", images=images)
    script = tmp_path / "check_jax.py"
    script.write_text(JAX_SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "model.keras"), str(tmp_path / "data.npz"), str(tmp_path / "out.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    logits = np.load(tmp_path / "out.npz")["logits"]
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
