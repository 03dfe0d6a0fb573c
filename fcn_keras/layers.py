"""The custom layers of the FCN graph.

- ``Preprocess``: turns plain RGB in 0..255 into what the backbone weights expect, so that every
  caller (``model.predict``, the training pipeline, an exported SavedModel) passes raw images.
- ``CropToReference``: the Caffe ``Crop`` layer for inputs whose spatial size is only known at
  run time (``Cropping2D`` needs static crop amounts, so it is used only for static shapes).
- ``Deconvolution``: the Caffe ``Deconvolution`` layer, a ``Conv2DTranspose`` with the same
  weights computed as a small convolution plus depth-to-space, so that no backend multiplies the
  zeros of a dilated input (a 1024-fold waste for FCN-32s's stride-32 upsampling).
- ``Im2colConv2D``: a stride-1 ``Conv2D`` with the same weights computed as one matrix product of
  the shifted input windows with the flattened kernel (fc6's 7x7 convolution, optionally).
- ``ReshapeMaxPooling2D``: VGG's 2x2 stride-2 max pooling as a reshape and a max, whose gradient
  is an elementwise mask rather than XLA's select-and-scatter (optionally).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from fcn_keras.checks import check_choice
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
        check_choice("mode", mode, PREPROCESSING_MODES)
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
        self._check_fits(ops.shape(x), ref_shape)
        o = self.offset
        return x[:, o : o + height, o : o + width, :]

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        self._check_fits(x_shape, ref_shape)
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def _check_fits(self, x_shape, ref_shape) -> None:
        """Where both sizes are known (always under JAX; not for TF's dynamic sizes), a crop that
        does not fit is an error, not a smaller output (slicing would just stop at the edge)."""
        for axis, side in ((1, "height"), (2, "width")):
            size, wanted = x_shape[axis], ref_shape[axis]
            if isinstance(size, int) and isinstance(wanted, int) and self.offset + wanted > size:
                raise ValueError(
                    f"layer {self.name!r} cannot crop a {side} of {wanted} at offset {self.offset} from a {side} "
                    f"of {size}: the input is {self.offset + wanted - size} pixels too small"
                )

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


@keras.saving.register_keras_serializable(package="fcn_keras")
class Deconvolution(keras.layers.Conv2DTranspose):
    """Caffe's ``Deconvolution``: a ``Conv2DTranspose`` that never multiplies inserted zeros.

    XLA (Keras on JAX, and TensorFlow with ``jit_compile``) computes a stride-``s`` transposed
    convolution as a convolution of the ``k x k`` kernel over the input dilated with ``s - 1``
    zeros between pixels: ``s * s`` times the useful multiply-adds. For FCN-32s's final
    upsampling (``k = 64``, ``s = 32``) that is 1024 times, about 0.5 TMAC per 512x512 image
    for 0.5 GMAC of work; measured on an H200 it made FCN-32s 3.5x slower than FCN-8s at
    inference. This layer holds the same kernel ``[k, k, filters, channels]`` (weights, config,
    output shape and values are those of ``Conv2DTranspose``) and computes

    1. a ``T x T`` convolution, ``T = ceil(k / s)``, over the input zero-padded by ``T - 1`` on
       every side, to ``s * s * filters`` channels: output phase ``(r_y, r_x)`` at position
       ``q`` sums input pixels ``q - t`` with kernel taps ``t * s + r`` (``t < T``), which are
       exactly the taps of the transposed convolution that land on output pixel ``q * s + r``;
    2. depth-to-space (each position's ``s x s`` phases become an ``s x s`` block of pixels);
    3. the crop of ``Conv2DTranspose``'s padding: ``"valid"`` keeps ``(H - 1) * s + k`` rows
       from the top (``H * s`` if ``k < s``), ``"same"`` keeps ``H * s`` rows from row ``(k - s) // 2``.

    The multiply-adds are those of the transposed convolution itself (up to the ``T - 1``
    border rows of phases), as one dense convolution with many output channels.

    Args:
        Those of ``keras.layers.Conv2DTranspose``, restricted to channels-last data, no
        dilation, no ``output_padding``, and with ``padding="same"`` an even ``k - s`` (where
        the backends agree on where the crop starts).
    """

    def __init__(self, filters: int, kernel_size, strides=(1, 1), padding: str = "valid", **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)
        unsupported = []
        if self.data_format != "channels_last":
            unsupported.append(f"data_format={self.data_format!r}")
        if tuple(self.dilation_rate) != (1, 1):
            unsupported.append(f"dilation_rate={self.dilation_rate!r}")
        if self.output_padding is not None:
            unsupported.append(f"output_padding={self.output_padding!r}")
        if self.padding == "same" and any((k - s) % 2 for k, s in zip(self.kernel_size, self.strides)):
            unsupported.append(
                f"padding='same' with an odd kernel_size - strides ({self.kernel_size} - {self.strides})"
            )
        if unsupported:
            raise ValueError(
                "Deconvolution supports channels-last data, no dilation, no output_padding and, with "
                f"padding='same', an even kernel_size - strides. Received: {', '.join(unsupported)}"
            )

    def call(self, inputs):
        (k_h, k_w), (s_h, s_w) = self.kernel_size, self.strides
        t_h, t_w = -(-k_h // s_h), -(-k_w // s_w)  # taps of each output phase per axis
        channels = self.kernel.shape[-1]
        # --- The [T, T, channels, s*s*filters] kernel of the phases ----------------------------
        kernel = ops.pad(self.kernel, [[0, t_h * s_h - k_h], [0, t_w * s_w - k_w], [0, 0], [0, 0]])
        kernel = ops.reshape(kernel, (t_h, s_h, t_w, s_w, self.filters, channels))
        kernel = ops.flip(kernel, axis=(0, 2))  # transposed tap t is convolution tap T - 1 - t
        kernel = ops.transpose(kernel, (0, 2, 5, 1, 3, 4))
        kernel = ops.reshape(kernel, (t_h, t_w, channels, s_h * s_w * self.filters))
        # --- Convolution, then each position's phases to an s x s block of pixels ------------
        x = ops.pad(inputs, [[0, 0], [t_h - 1, t_h - 1], [t_w - 1, t_w - 1], [0, 0]])
        phases = ops.conv(x, kernel, strides=1, padding="valid", data_format="channels_last")
        shape = ops.shape(phases)
        batch, rows, cols = shape[0], shape[1], shape[2]
        outputs = ops.reshape(phases, (batch, rows, cols, s_h, s_w, self.filters))
        outputs = ops.transpose(outputs, (0, 1, 3, 2, 4, 5))
        outputs = ops.reshape(outputs, (batch, rows * s_h, cols * s_w, self.filters))
        # --- Conv2DTranspose's output window ---------------------------------------------------
        in_shape = ops.shape(inputs)
        if self.padding == "valid":
            top, left = 0, 0
            # Keras' "valid" length: (H - 1) * s + k, but at least H * s (zeros where k < s).
            height = (in_shape[1] - 1) * s_h + max(k_h, s_h)
            width = (in_shape[2] - 1) * s_w + max(k_w, s_w)
        else:
            # Keras' "same" output H * s, centred on the full one: (k - s) / 2 cropped before it
            # where k > s; where k < s the phases already give H * s rows, nothing to crop.
            top, left = max(k_h - s_h, 0) // 2, max(k_w - s_w, 0) // 2
            height, width = in_shape[1] * s_h, in_shape[2] * s_w
        outputs = outputs[:, top : top + height, left : left + width, :]
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def im2col_conv(inputs, kernel, padding: str = "valid"):
    """A stride-1 convolution as one matmul: shifted windows (im2col) times the flattened kernel.

    The ``k_h * k_w`` windows of ``inputs`` are concatenated on the channel axis in the kernel's
    (row, column, channel) order, so the patch matrix ``[B, H', W', k_h k_w C]`` times the kernel
    reshaped to ``[k_h k_w C, F]`` is ``ops.conv(inputs, kernel, padding=padding)``.

    Args:
        inputs: ``[B, H, W, C]``, channels last (static or dynamic sides).
        kernel: ``[k_h, k_w, C, F]``.
        padding: ``"valid"`` or ``"same"`` (Keras' zero padding: ``(k - 1) // 2`` before,
            ``k // 2`` after).

    Returns:
        ``[B, H', W', F]`` in the inputs' dtype; ``H' = H`` for ``"same"``, ``H - k_h + 1`` for
        ``"valid"``.
    """
    k_h, k_w, channels, filters = kernel.shape
    windows = shifted_windows(inputs, k_h, k_w, padding)
    patches = windows[0] if len(windows) == 1 else ops.concatenate(windows, axis=-1)
    return ops.matmul(patches, ops.reshape(kernel, (k_h * k_w * channels, filters)))


def shifted_windows(inputs, k_h: int, k_w: int, padding: str = "valid") -> list:
    """The ``k_h * k_w`` windows a stride-1 ``k_h x k_w`` convolution reads, in (row, column) order.

    Args:
        inputs: ``[B, H, W, C]``, channels last (static or dynamic sides).
        k_h, k_w: the kernel's size.
        padding: ``"valid"`` or ``"same"`` (Keras' zero padding: ``(k - 1) // 2`` before,
            ``k // 2`` after).

    Returns:
        A list of ``[B, H', W', C]``; window ``(i, j)`` is the input the kernel tap ``(i, j)``
        multiplies at every output position.
    """
    if padding == "same":
        inputs = ops.pad(inputs, [[0, 0], [(k_h - 1) // 2, k_h // 2], [(k_w - 1) // 2, k_w // 2], [0, 0]])
    else:
        check_choice("padding", padding, ("valid", "same"))
    # Window (i, j) drops i rows at the top and k_h - 1 - i at the bottom (stop None for the last).
    return [
        inputs[:, i : (i - k_h + 1) or None, j : (j - k_w + 1) or None, :] for i in range(k_h) for j in range(k_w)
    ]


@keras.saving.register_keras_serializable(package="fcn_keras")
class Im2colConv2D(keras.layers.Conv2D):
    """A ``Conv2D`` (stride 1) computed by ``im2col_conv``: one large matrix product.

    fc6 is a 7x7 convolution from 512 to 4,096 channels on the small pool5 map; as a matrix
    product it is ``B H' W' x 25,088 x 4,096``. On an H200 the convolution algorithms XLA picks
    for that shape reach about 22 % of the bf16 peak (benchmarks/results/h200_conv.md, block profile);
    ``benchmarks/fc6.py`` measures the two side by side. The layer holds the same variables and
    config as ``Conv2D``: ``set_weights`` and ``fcn_keras.surgery.transfer_weights`` (by layer
    name) move weights between the two, but ``load_weights`` of a ``.weights.h5`` or ``.keras``
    file does not, since Keras keys its layers by class name (``keras.saving.load_model`` keeps
    a file's own class). The patch matrix
    costs ``k_h k_w`` times the input's memory (49 x for fc6: 100 MB for a batch of 8 at 512x512
    in bf16).

    Args:
        Those of ``keras.layers.Conv2D``, restricted to channels-last data, stride 1, no
        dilation and one group.
    """

    def __init__(self, filters: int, kernel_size, **kwargs: Any) -> None:
        super().__init__(filters, kernel_size, **kwargs)
        unsupported = [
            f"{name}={value!r}"
            for name, value, fine in (
                ("data_format", self.data_format, self.data_format == "channels_last"),
                ("strides", self.strides, tuple(self.strides) == (1, 1)),
                ("dilation_rate", self.dilation_rate, tuple(self.dilation_rate) == (1, 1)),
                ("groups", self.groups, self.groups == 1),
            )
            if not fine
        ]
        if unsupported:
            raise ValueError(
                "Im2colConv2D supports channels-last data, strides 1, no dilation and one group. "
                f"Received: {', '.join(unsupported)}"
            )

    def convolution_op(self, inputs, kernel):
        return im2col_conv(inputs, kernel, self.padding)


@keras.saving.register_keras_serializable(package="fcn_keras")
class ReshapeMaxPooling2D(keras.layers.MaxPooling2D):
    """A ``MaxPooling2D`` with non-overlapping windows (``pool_size == strides``) computed as a
    reshape into windows and a max over them.

    The forward values are ``MaxPooling2D``'s (with ``padding="same"``, Caffe's ceil mode: the
    partial windows are padded with -inf as ``"same"`` pads, half the padding before; for 2x2
    windows the partial last one). The gradient differs in how it is
    computed: backends differentiate a pooling op with a select-and-scatter (on XLA GPU a scatter
    over every window), a max reduction with an elementwise mask. Where a window holds several
    equal maxima, the reduction's gradient is shared among them (``MaxPooling2D`` gives it to
    one); both are subgradients, and after a ReLU the common tie, all zeros, gets no gradient
    either way.

    Args:
        Those of ``keras.layers.MaxPooling2D``, restricted to channels-last data and
        ``strides == pool_size`` (VGG's 2x2 stride 2).
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding: str = "valid", **kwargs: Any) -> None:
        super().__init__(pool_size, strides=strides, padding=padding, **kwargs)
        unsupported = []
        if self.data_format != "channels_last":
            unsupported.append(f"data_format={self.data_format!r}")
        if tuple(self.strides) != tuple(self.pool_size):
            unsupported.append(f"strides={self.strides!r} with pool_size={self.pool_size!r}")
        if unsupported:
            raise ValueError(
                "ReshapeMaxPooling2D supports channels-last data and strides equal to pool_size. "
                f"Received: {', '.join(unsupported)}"
            )

    def call(self, inputs):
        (p_h, p_w), shape = self.pool_size, ops.shape(inputs)
        height, width = shape[1], shape[2]
        if self.padding == "same":  # ceil mode: pad the partial windows with -inf
            # As MaxPooling2D's "same": half of the padding (rounded down) before, the rest after;
            # for 2x2 windows (VGG's) the one padded row or column comes after.
            pad_h, pad_w = (-height) % p_h, (-width) % p_w
            inputs = ops.pad(
                inputs, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]],
                constant_values=float("-inf"),
            )
            rows, cols = (height + p_h - 1) // p_h, (width + p_w - 1) // p_w
        else:  # floor mode: drop the partial last window
            rows, cols = height // p_h, width // p_w
            inputs = inputs[:, : rows * p_h, : cols * p_w, :]
        windows = ops.reshape(inputs, (shape[0], rows, p_h, cols, p_w, inputs.shape[-1]))
        return ops.max(windows, axis=(2, 4))
