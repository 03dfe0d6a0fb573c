"""Counting a model's floating-point operations from its layers' shapes.

The convention (the one behind published "GFLOPs" of CNNs, and the one ``benchmarks/
throughput.py`` and the experiment driver use for achieved TFLOP/s):

- FLOPs = 2 x multiply-accumulates (MACs) of the convolutions, transposed convolutions and dense
  layers; everything else (ReLU, pooling, bias adds, ``Add`` fusions, crops, preprocessing,
  argmax) is not counted: together it is well under 1 % of an FCN-VGG16's work.
- A convolution's MACs come from its output shape: ``output positions x filters x kernel
  positions x input channels per group``. A transposed convolution does the work of the
  convolution it transposes, counted from its *input* shape: ``input positions x input channels
  x kernel positions x filters`` (the positions a "same"/crop discards are counted too, since
  they are computed).
- The shapes are those of the given geometry, so the reference FCN's 100-pixel input padding
  is counted as the work it is: a 500x500 image is convolved as a 698x698 map.
- Training = 3 x forward (forward, plus a backward pass costing about twice the forward: the
  gradients with respect to the activations and to the weights). ``TRAIN_FLOPS_FACTOR``.

Counting needs static spatial shapes: build the model with ``input_shape=(H, W, 3)``.
"""

from __future__ import annotations

import math

import keras

from fcn_keras import architecture as arch
from fcn_keras.checks import check_int
from fcn_keras.constants import NUM_CLASSES
from fcn_keras.model import build_fcn

#: Training step FLOPs per forward FLOP (forward + backward with respect to activations and
#: weights), the usual approximation; the fixed final upsampling's kernel gradient and conv1_1's
#: input gradient, which a real backward pass skips, are counted as if computed (about 0.1 % and
#: 0.15 % of FCN-8s's training FLOPs at 500x500: 1.1 and 1.7 of 3 x 363 GFLOP).
TRAIN_FLOPS_FACTOR: int = 3

# Keras' base classes of the layers with MACs (public aliases do not export them).
_CONV = keras.src.layers.convolutional.base_conv.BaseConv
_CONV_TRANSPOSE = keras.src.layers.convolutional.base_conv_transpose.BaseConvTranspose


# --- Per layer ---------------------------------------------------------------------------------


def _static(shape: tuple, layer: keras.layers.Layer, which: str) -> tuple[int, ...]:
    """The non-batch dimensions of ``shape``, or a ``ValueError`` if any is unknown."""
    dims = tuple(shape[1:])
    if any(d is None for d in dims):
        raise ValueError(
            f"counting FLOPs needs static shapes, but layer {layer.name!r} has {which} shape "
            f"{tuple(shape)}: build the model with input_shape=(height, width, channels)"
        )
    return dims


def layer_flops(layer: keras.layers.Layer) -> int:
    """Forward FLOPs of one layer for one example (2 x MACs; 0 for layers without MACs).

    Args:
        layer: a built layer of a functional model with static input shapes, called once.

    Returns:
        int: FLOPs per example; nested models are summed over their layers.
    """
    if isinstance(layer, keras.Model):
        return sum(layer_flops(inner) for inner in layer.layers)
    if isinstance(layer, _CONV_TRANSPOSE):
        *in_positions, in_channels = _static(layer.input.shape, layer, "input")
        macs = math.prod(in_positions) * in_channels * math.prod(layer.kernel_size) * layer.filters
    elif isinstance(layer, _CONV):
        *out_positions, filters = _static(layer.output.shape, layer, "output")
        in_channels = _static(layer.input.shape, layer, "input")[-1]
        macs = math.prod(out_positions) * filters * math.prod(layer.kernel_size) * (in_channels // layer.groups)
    elif isinstance(layer, keras.layers.Dense):
        *positions, units = _static(layer.output.shape, layer, "output")
        macs = math.prod(positions) * units * _static(layer.input.shape, layer, "input")[-1]
    else:
        return 0
    return 2 * macs


# --- Per model ---------------------------------------------------------------------------------


def model_flops(model: keras.Model) -> dict[str, int]:
    """Forward FLOPs of each layer of ``model`` that has MACs, for one example.

    Args:
        model: a functional ``keras.Model`` with static spatial input shape.

    Returns:
        ``{layer name: FLOPs}`` in layer order, layers without MACs left out.
    """
    counts = {layer.name: layer_flops(layer) for layer in model.layers}
    return {name: flops for name, flops in counts.items() if flops}


def forward_flops(model: keras.Model) -> int:
    """Total forward FLOPs of ``model`` for one example (int). See ``model_flops``."""
    return sum(model_flops(model).values())


def fcn_flops(
    variant: str,
    height: int,
    width: int,
    *,
    geometry: str = "reference",
    fc_units: int = arch.FC_UNITS,
    num_classes: int = NUM_CLASSES,
) -> int:
    """Forward FLOPs of an FCN-VGG16 on one ``height`` x ``width`` image.

    Builds the model (random weights, static input shape) to read its shapes; cheap compared to
    running it, but it allocates the parameters (about 0.5 GB at ``fc_units=4096``).

    Args:
        variant: ``"32s"``, ``"16s"`` or ``"8s"``.
        height: image height in pixels.
        width: image width in pixels.
        geometry: ``"reference"`` (100-pixel padding, counted) or ``"same"``.
        fc_units: channels of fc6/fc7.
        num_classes: number of classes.

    Returns:
        int: forward FLOPs per image.

    Raises:
        ValueError: ``height`` or ``width`` is not an integer >= 1 (or another bad argument, as
            ``build_fcn`` says).
    """
    height, width = check_int("height", height, 1), check_int("width", width, 1)
    model = build_fcn(
        variant,
        num_classes,
        input_shape=(height, width, 3),
        geometry=geometry,
        fc_units=fc_units,
    )
    return forward_flops(model)
