"""Label maps computed on the device.

A segmentation net's logits are ``num_classes`` floats per pixel (21 x 4 bytes for VOC); moving
them to the host to take the argmax there costs 84x the bytes of the uint8 label map and the
host's time. ``labels_model`` appends the argmax to the graph, so ``predict`` (compiled by
Keras under every backend) returns only the labels.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="fcn_keras")
class ArgmaxLabels(keras.layers.Layer):
    """Per-pixel argmax over the class axis.

    Call args:
        logits: ``[B, H, W, C]`` float, ``C <= 256``.

    Returns:
        uint8 ``[B, H, W]`` class indices.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.autocast = False

    def call(self, logits):
        return ops.cast(ops.argmax(logits, axis=-1), "uint8")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def compute_output_spec(self, logits):
        return keras.KerasTensor(tuple(logits.shape[:-1]), dtype="uint8")


def labels_model(model: keras.Model) -> keras.Model:
    """Wraps an FCN so that it outputs label maps instead of logits.

    Args:
        model: a model mapping images ``[B, H, W, 3]`` to logits ``[B, H, W, C]``.

    Returns:
        A ``keras.Model`` sharing ``model``'s layers and weights, mapping the same images to
        uint8 labels ``[B, H, W]``.
    """
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 4:
        raise ValueError(
            f"model must have one output of shape [B, H, W, classes]. Received: model "
            f"{model.name!r} with outputs {[tuple(o.shape) for o in model.outputs]}"
        )
    if model.outputs[0].shape[-1] > 256:
        raise ValueError(f"uint8 labels hold at most 256 classes; {model.name!r} has more")
    return keras.Model(model.inputs, ArgmaxLabels(name="labels")(model.outputs[0]), name=f"{model.name}_labels")


#: The attribute of an FCN where ``predict_labels`` keeps its ``labels_model`` (set with
#: ``object.__setattr__``, so Keras does not track the wrapper as a sub-layer of the FCN).
_LABELS_ATTRIBUTE = "_fcn_keras_labels_model"


def predict_labels(model: keras.Model, images: np.ndarray, batch_size: int = 1) -> np.ndarray:
    """Label maps for a batch of same-size images, the argmax taken on the device.

    The ``labels_model`` wrapping an FCN is made once and kept with it, so calls after the
    first reuse its compiled predict function instead of tracing or compiling the network again.

    Args:
        model: an FCN (logits output) or a ``labels_model``.
        images: uint8 or float ``[N, H, W, 3]`` RGB in 0..255.
        batch_size: images per device call.

    Returns:
        uint8 ``[N, H, W]``.

    Raises:
        ValueError: ``images`` is not ``[N, H, W, 3]`` (checked before the model is called: under
            JAX, Keras leaves a model unusable after a call with the wrong rank).
    """
    shape = np.shape(images)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"images must be a batch [N, H, W, 3]. Received: shape {shape}"
                         + (" (one image: add a batch axis, images[None])" if len(shape) == 3 else ""))
    if model.outputs[0].dtype != "uint8":
        labeler = getattr(model, _LABELS_ATTRIBUTE, None)
        if labeler is None:
            labeler = labels_model(model)
            object.__setattr__(model, _LABELS_ATTRIBUTE, labeler)
        model = labeler
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0))
