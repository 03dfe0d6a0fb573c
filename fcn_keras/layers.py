"""The two custom layers of the FCN graph.

- ``Preprocess``: turns plain RGB in 0..255 into what the backbone weights expect, so that every
  caller (``model.predict``, the training pipeline, an exported SavedModel) passes raw images.
- ``CropToReference``: the Caffe ``Crop`` layer for inputs whose spatial size is only known at
  run time (``Cropping2D`` needs static crop amounts, so it is used only for static shapes).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from fcn_keras.surgery import bilinear_kernel
from fcn_keras.constants import (
    BGR_MEANS,
    PREPROCESSING_MODES,
    TORCH_RGB_MEAN,
    TORCH_RGB_STD,
)


@keras.saving.register_keras_serializable(package="fcn_keras")
class Preprocess(keras.layers.Layer):
    """Normalises RGB images in 0..255 for a VGG16 trunk.

    Args:
        mode: ``"caffe"`` for keras.applications / Caffe ImageNet weights (RGB→BGR, subtract
            ``CAFFE_BGR_MEAN``), ``"caffe_fcn"`` for the authors' trained FCNs (RGB→BGR, subtract
            ``FCN_CAFFE_BGR_MEAN``) or ``"torch"`` for torchvision-derived weights (scale to
            [0, 1], subtract ``TORCH_RGB_MEAN``, divide by ``TORCH_RGB_STD``).

    Call args:
        images: ``[B, H, W, 3]`` RGB, any real or integer dtype, values in 0..255.

    Returns:
        ``[B, H, W, 3]`` in the layer's compute dtype (float32 unless set otherwise).
    """

    def __init__(self, mode: str = "caffe", **kwargs: Any) -> None:
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"mode must be one of {PREPROCESSING_MODES}. Received: mode={mode!r}"
            )
        super().__init__(**kwargs)
        self.mode = mode
        # Integer images must not be auto-cast away from their values; we cast explicitly.
        self.autocast = False

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.mode in BGR_MEANS:
            x = ops.flip(x, axis=-1)  # RGB -> BGR
            return x - ops.convert_to_tensor(BGR_MEANS[self.mode], dtype=self.compute_dtype)
        mean = ops.convert_to_tensor(TORCH_RGB_MEAN, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(TORCH_RGB_STD, dtype=self.compute_dtype)
        return (x / 255.0 - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="fcn_keras")
class CropToReference(keras.layers.Layer):
    """Crops ``x`` to the spatial size of ``reference``, starting at ``offset`` (Caffe ``Crop``).

    Args:
        offset: the crop's top-left corner in ``x``, the same for rows and columns (FCN's
            offsets come from the network geometry, see ``fcn_keras.architecture.crop_offsets``).

    Call args:
        inputs: ``[x, reference]``; ``x`` is ``[B, Hx, Wx, C]``, ``reference`` is ``[B, H, W, *]``
            with ``offset + H <= Hx`` and ``offset + W <= Wx``.

    Returns:
        ``[B, H, W, C]``, ``x[:, offset:offset + H, offset:offset + W, :]``.
    """

    def __init__(self, offset: int, **kwargs: Any) -> None:
        if int(offset) != offset or offset < 0:
            raise ValueError(f"offset must be a non-negative integer. Received: offset={offset!r}")
        super().__init__(**kwargs)
        self.offset = int(offset)

    def call(self, inputs):
        x, reference = inputs
        ref_shape = ops.shape(reference)
        height, width = ref_shape[1], ref_shape[2]
        o = self.offset
        return x[:, o : o + height, o : o + width, :]

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "offset": self.offset}


@keras.saving.register_keras_serializable(package="fcn_keras")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialises a ``Conv2DTranspose`` kernel ``[k, k, C, C]`` to per-channel bilinear
    upsampling (see ``fcn_keras.surgery.bilinear_kernel``)."""

    def __call__(self, shape, dtype=None):
        size, size_w, channels_out, channels_in = shape
        if size != size_w or channels_out != channels_in:
            raise ValueError(
                "bilinear upsampling needs a square kernel with as many outputs as inputs. "
                f"Received: shape={tuple(shape)}"
            )
        return ops.convert_to_tensor(bilinear_kernel(size, channels_in), dtype=dtype)

    def get_config(self) -> dict[str, Any]:
        return {}
