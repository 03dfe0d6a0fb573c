"""What the inference benchmarks (``tiling.py``, ``canvas.py``) share: the model's flags and an
FCN-VGG16 of seeded random weights (time and memory do not depend on the weights; random score
layers, unlike the zero ones of a fresh net, give varied labels).

Imported first by those scripts (their folder is on ``sys.path`` when they run): it makes the
repository's ``fcn_keras`` importable and quiets TensorFlow's C++ logging before it loads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402


def define_model_flags() -> None:
    """``--variant``, ``--geometry`` and ``--fc_units``."""
    flags.DEFINE_enum("variant", "8s", ["32s", "16s", "8s"], "FCN variant.")
    flags.DEFINE_enum("geometry", "reference", ["reference", "same"], "Net geometry (fcn_keras.architecture).")
    flags.DEFINE_integer("fc_units", 4096, "Channels of fc6/fc7 (4096 in VGG16; smaller for a smoke test).", lower_bound=1)


def model_flags() -> list[str]:
    """The model's flags as given, to pass on to a row's own process."""
    values = flags.FLAGS
    return [f"--variant={values.variant}", f"--geometry={values.geometry}", f"--fc_units={values.fc_units}"]


def model_description() -> str:
    """E.g. ``"FCN-8s (reference geometry, fc 4096)"``."""
    values = flags.FLAGS
    return f"FCN-{values.variant} ({values.geometry} geometry, fc {values.fc_units})"


def random_fcn():
    """The flags' FCN with every weight drawn from N(0, 0.02), seeded (the same net in every row)."""
    import keras

    from fcn_keras.model import build_fcn

    keras.utils.set_random_seed(0)
    values = flags.FLAGS
    model = build_fcn(values.variant, fc_units=values.fc_units, geometry=values.geometry)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.02, w.shape).astype("float32") for w in layer.get_weights()])
    return model
