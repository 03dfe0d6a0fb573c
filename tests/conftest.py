"""Shared test set-up: quiet TensorFlow, the location of ../shared, a fresh Keras session, and a
tiny evaluation workspace."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """``../shared`` beside the repository; tests that need it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent")
    return SHARED_DIR


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with the default dtype policy and clean layer-name counters."""
    keras.config.set_dtype_policy("float32")
    keras.utils.clear_session()
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def eval_workspace(tmp_path_factory) -> dict[str, Path]:
    """A synthetic VOCdevkit (5 val images of varied sizes), a ``cache`` folder and the folder the
    VOCdevkit is converted into under it (``records``, filled by the first evaluation), and a tiny
    'same' FCN-32s file with random weights, one per test module."""
    from fcn_keras.data.pipeline import conversion_dir
    from fcn_keras.data.synthetic import make_synthetic_voc
    from fcn_keras.model import build_fcn

    root = tmp_path_factory.mktemp("evaluate")
    voc = make_synthetic_voc(root / "VOCdevkit", num_train=1, num_val=5, size=(40, 52), seed=3)
    keras.utils.clear_session()
    model = build_fcn("32s", fc_units=8, geometry="same")
    rng = np.random.default_rng(0)
    for layer in model.layers:  # Random weights: varied predictions over many classes.
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])
    model.save(root / "model.keras")
    cache = root / "cache"
    return {"root": root, "voc": voc, "model": root / "model.keras", "cache": cache, "records": conversion_dir(voc, cache)}
