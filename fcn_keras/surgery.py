"""Net surgery: bilinear kernels and moving weights between networks by layer name.

In the spirit of the authors' ``surgery.py``: each function does one transplant and returns
what it copied, and a name or shape that does not match is an error, never a silent skip.
"""

from __future__ import annotations

import logging

import keras
import numpy as np

from fcn_keras.architecture import AT_ONCE_SCALES, FC6_KERNEL, VGG16_BLOCKS, geometry_of, scale_name, score_name

logger = logging.getLogger(__name__)

# --- Bilinear upsampling kernels -------------------------------------------------------------


def bilinear_filter(size: int) -> np.ndarray:
    """The 2-D bilinear interpolation filter of a ``size`` x ``size`` deconvolution.

    With ``f = ceil(size / 2)`` (the stride) and ``c = (size - 1) / 2`` the kernel's centre, entry ``(i, j)`` is ``(1 - |i - c| / f) * (1 - |j - c| / f)``: the weights
    of linear interpolation between samples ``f`` pixels apart (Caffe's ``upsample_filt``).

    Returns:
        float32 ``[size, size]``.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1. Received: size={size}")
    factor = (size + 1) // 2
    ramp = 1.0 - np.abs(np.arange(size, dtype=np.float64) - (size - 1) / 2) / factor
    return np.outer(ramp, ramp).astype(np.float32)


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """A ``Conv2DTranspose`` kernel that upsamples each channel on its own, bilinearly.

    Args:
        size: kernel size (twice the stride for FCN's deconvolutions).
        channels: number of input (= output) channels.

    Returns:
        float32 ``[size, size, channels, channels]`` (Keras' ``[kh, kw, out, in]`` layout), the
        bilinear filter on the channel diagonal and zeros elsewhere.
    """
    kernel = np.zeros((size, size, channels, channels), dtype=np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = bilinear_filter(size)[..., None]
    return kernel


# --- VGG16 → FCN ------------------------------------------------------------------------------


def _vgg16_conv_names() -> list[str]:
    return [
        f"block{block}_conv{conv}"
        for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1)
        for conv in range(1, convs + 1)
    ]


#: One copy: (target layer, its new weights, what they come from, for the error message).
Copy = tuple[keras.layers.Layer, list[np.ndarray], str]


def assign_all(copies: list[Copy]) -> None:
    """Checks every copy's shapes, then sets the weights: a mismatch (named with its source)
    leaves every target layer as it was, not half overwritten."""
    for layer, weights, source in copies:
        expected = [tuple(w.shape) for w in layer.get_weights()]
        received = [tuple(w.shape) for w in weights]
        if expected != received:
            raise ValueError(
                f"cannot copy {source} into layer {layer.name!r}: expected weight shapes "
                f"{expected}, received {received}; no layer was changed"
            )
    for layer, weights, _ in copies:
        layer.set_weights(weights)


def transplant_vgg16(fcn: keras.Model, vgg: keras.Model) -> list[str]:
    """Copies a ``keras.applications.VGG16``'s weights into an FCN, convolutionalizing fc1/fc2.

    The 13 convolutions are copied by name (``block1_conv1`` ... ``block5_conv3``). If ``vgg``
    has its top, ``fc1`` (25088 x 4096) becomes ``fc6`` (7 x 7 x 512 x 4096) and ``fc2``
    (4096 x 4096) becomes ``fc7`` (1 x 1 x 4096 x 4096), biases included. Keras' ``Flatten``
    flattens channels-last ``[7, 7, 512]`` in row-major order, so a plain reshape of the Dense
    kernel is exactly the convolution kernel. The 1000-class ``predictions`` layer is not used.

    Args:
        fcn: a model from ``build_fcn``.
        vgg: a VGG16 with or without top.

    Returns:
        Names of the FCN layers that received weights.

    Raises:
        ValueError: ``vgg``'s convolutions are not VGG16's 13, it has only one of fc1/fc2, or a
            layer's weight shapes differ (named); then no layer was changed.
    """
    convs = _vgg16_conv_names()
    vgg_convs = sorted(layer.name for layer in vgg.layers if layer.weights and layer.name.startswith("block"))
    if vgg_convs != sorted(convs):
        raise ValueError(
            f"{vgg.name!r} is not a VGG16: expected the convolutions {convs}, found {vgg_convs} "
            "(a VGG19, say, has block3_conv4 ... block5_conv4); no layer was changed"
        )
    copies: list[Copy] = [(fcn.get_layer(name), vgg.get_layer(name).get_weights(), f"VGG16 {name}") for name in convs]
    vgg_names = {layer.name for layer in vgg.layers}
    if len({"fc1", "fc2"} & vgg_names) == 1:
        raise ValueError(
            f"{vgg.name!r} has {' but not '.join(sorted({'fc1', 'fc2'} & vgg_names) + sorted({'fc1', 'fc2'} - vgg_names))}: "
            "a VGG16 has both fully connected layers (its top) or neither; no layer was changed"
        )
    if {"fc1", "fc2"} <= vgg_names:
        for dense_name, conv_name in (("fc1", "fc6"), ("fc2", "fc7")):
            kernel, bias = vgg.get_layer(dense_name).get_weights()
            conv = fcn.get_layer(conv_name)
            size = FC6_KERNEL if conv_name == "fc6" else 1
            channels_in = kernel.shape[0] // (size * size)
            copies.append(
                (conv, [kernel.reshape(size, size, channels_in, kernel.shape[1]), bias], f"VGG16 {dense_name} {kernel.shape}")
            )
    assign_all(copies)
    copied = [layer.name for layer, _, _ in copies]
    logger.info("transplanted VGG16 weights into %s: %s", fcn.name, ", ".join(copied))
    return copied


# --- FCN → FCN (staged training: 32s → 16s → 8s) ---------------------------------------------


def transfer_weights(source: keras.Model, target: keras.Model) -> dict[str, list[str]]:
    """Copies every weighted layer of ``source`` into the layer of the same name in ``target``.

    Layers only ``target`` has (e.g. ``score_pool4`` when going from FCN-32s to FCN-16s) keep
    their initialisation: zero for score layers, bilinear for upsampling, so the new net starts
    out predicting nearly what ``source`` predicts (``score_fr`` is upsampled in 2x steps and a
    final 16x or 8x, not one 32x: the logits differ slightly). Only those may be new: every VGG16 convolution and
    fc6/fc7 of ``target`` must come from ``source``. What holds no weights but changes what the
    weights compute must match too (``structure_differences``): the input normalisation, the
    geometry, and the at-once scaling of each copied ``score_pool<N>``'s input.

    Args:
        source: a trained FCN.
        target: a freshly built FCN.

    Returns:
        ``{"copied": [...], "kept": [...], "unused": [...]}``: target layers that received
        weights, target layers left as initialised, and source layers without a twin.

    Raises:
        ValueError: a layer of the same name has other weight shapes (e.g. another number of
            classes), the two nets share no weighted layer at all, a trunk layer of ``target``
            has no twin in ``source``, or their structures differ; then no layer was changed.
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    report: dict[str, list[str]] = {"copied": [], "kept": [], "unused": []}
    copies: list[Copy] = []
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name in source_layers:
            copies.append((layer, source_layers.pop(layer.name).get_weights(), f"{source.name}/{layer.name}"))
            report["copied"].append(layer.name)
        else:
            report["kept"].append(layer.name)
    report["unused"] = sorted(source_layers)
    if not copies:
        raise ValueError(
            f"{source.name!r} and {target.name!r} share no weighted layer: is the source an FCN?"
        )
    trunk = set(_vgg16_conv_names()) | {"fc6", "fc7"}
    missing = [name for name in report["kept"] if name in trunk]
    if missing:
        raise ValueError(
            f"{source.name!r} has no {', '.join(missing)}: only score and upsampling layers may be new in "
            f"{target.name!r} (is the source an FCN?); no layer was changed"
        )
    differences = structure_differences(source, target, copied=report["copied"])
    if differences:
        raise ValueError(
            f"{source.name!r}'s weights do not fit {target.name!r}: {'; '.join(differences)}; no layer was changed"
        )
    assign_all(copies)
    logger.info(
        "transferred %d layers %s -> %s; kept initialisation of %s",
        len(report["copied"]),
        source.name,
        target.name,
        report["kept"] or "none",
    )
    return report


def structure_differences(source: keras.Model, target: keras.Model, copied: list[str] | None = None) -> list[str]:
    """What differs between two FCNs of ``build_fcn`` that holds no weights but changes what the
    weights compute: the input normalisation (``preprocess``), the geometry (100-pixel input
    padding or not) and, for each ``score_pool<N>`` in ``copied``, the at-once scaling of its input
    (``scale_pool<N>``; 1 without it).

    Args:
        source: an FCN whose weights would be copied.
        target: the FCN that would receive them.
        copied: the layers that would be copied (default: the weighted layers both have).

    Returns:
        One sentence per difference (empty when the weights fit).
    """
    if copied is None:
        source_names = {layer.name for layer in source.layers if layer.weights}
        copied = [layer.name for layer in target.layers if layer.weights and layer.name in source_names]
    differences = []
    modes = [_preprocessing_of(model) for model in (source, target)]
    if modes[0] != modes[1]:
        differences.append(f"the source normalises its input as {modes[0]!r}, the target as {modes[1]!r}")
    geometries = [geometry_of(layer.name for layer in model.layers) for model in (source, target)]
    if geometries[0] != geometries[1]:
        differences.append(f"the source's geometry is {geometries[0]!r}, the target's {geometries[1]!r}")
    for block in AT_ONCE_SCALES:
        if score_name(block) in copied:
            scales = [_pool_scale(model, block) for model in (source, target)]
            if scales[0] != scales[1]:
                differences.append(
                    f"{score_name(block)} scores pool{block} x {scales[0]:g} in the source (trained "
                    f"{'at once' if scales[0] != 1 else 'in stages'}) but pool{block} x {scales[1]:g} in the target "
                    "(at_once must match)"
                )
    return differences


def _preprocessing_of(model: keras.Model) -> str | None:
    names = {layer.name for layer in model.layers}
    return model.get_layer("preprocess").mode if "preprocess" in names else None


def _pool_scale(model: keras.Model, block: int) -> float:
    names = {layer.name for layer in model.layers}
    return float(model.get_layer(scale_name(block)).scale) if scale_name(block) in names else 1.0
