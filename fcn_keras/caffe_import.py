"""Caffe ``.caffemodel`` files → fcn-keras models: the authors' trained FCNs and Caffe's VGG16.

The authors published their trained nets as Caffe weights (``fcn8s-heavy-pascal.caffemodel`` and
the others listed in docs/model.md), and initialised them from ``VGG_ILSVRC_16_layers.caffemodel``
(VGG16 with its fc6/fc7, the paper's initialisation). This module reads such a file without Caffe
and copies it, layer by name, into a ``build_fcn`` model of the authors' geometry::

    python -m fcn_keras.caffe_import --caffemodel=fcn8s-heavy-pascal.caffemodel --output=fcn8s-heavy.keras

- An FCN file gives the whole net: the variant is read off its layers (``score_pool3``: FCN-8s,
  ``score_pool4``: FCN-16s, ``score_fr``: FCN-32s; ``scale_pool4``: at once), the number of
  classes off ``score_fr``, and the input normalisation is the authors' (``caffe_fcn``).
- A VGG16 file (no ``score_fr``) gives the backbone with fc6/fc7; the score layers start at zero
  as in ``build_fcn``, ready for ``python -m fcn_keras.train --init_from=<the .keras>``.

Layouts: Caffe stores a convolution as ``[out, in, kh, kw]`` and a deconvolution as
``[in, out, kh, kw]``; Keras wants ``[kh, kw, in, out]`` and ``[kh, kw, out, in]``, so both
move by the same transpose ``(2, 3, 1, 0)`` (both frameworks correlate, and both
deconvolutions are the transpose of that correlation: no kernel flip). An ``InnerProduct``
``[out, C*kh*kw]`` flattens its input ``[C, H, W]`` in row-major order, so it reshapes to
``[out, C, kh, kw]`` before that transpose. Every shape is checked before any weight is copied.

The file is read with a minimal protobuf wire-format reader (field numbers from Caffe's
``caffe.proto``: ``NetParameter.layer = 100`` and the V1 ``layers = 2``, ``LayerParameter``
name 1 / type 2 / blobs 7, ``V1LayerParameter`` name 4 / type 5 / blobs 6, ``BlobProto``
shape 7 / data 5 / double_data 8 / num, channels, height, width 1-4, ``BlobShape.dim = 1``):
weight arrays are views of the file's bytes (a 538 MB FCN-8s file read in 0.3 s on 2 cores).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
from absl import flags

from fcn_keras.architecture import AT_ONCE_SCALES, FC6_KERNEL, VGG16_BLOCKS, scale_name, variant_of
from fcn_keras.console import run_cli, usage_error
from fcn_keras.constants import NUM_CLASSES, VARIANTS
from fcn_keras.files import atomic_path
from fcn_keras.model import build_fcn
from fcn_keras.surgery import Copy, assign_all

# --- Reading a .caffemodel ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaffeLayer:
    """One layer of a Caffe net that holds weights.

    Attributes:
        name: the layer's name, e.g. ``"conv1_1"`` or ``"score_fr"``.
        type: its Caffe type, e.g. ``"Convolution"`` (V1 files' enum values are named too).
        blobs: its parameter arrays in Caffe's shapes (float32), e.g. ``[W [64, 3, 3, 3], b [64]]``;
            an InnerProduct's weight is always ``[..., out, in]`` (one saved with ``transpose:
            true``, i.e. ``[in, out]``, is transposed on reading).
    """

    name: str
    type: str
    blobs: tuple[np.ndarray, ...]


# V1LayerParameter.LayerType values of the layers that hold weights in these nets.
_V1_TYPES = {4: "Convolution", 39: "Deconvolution", 14: "InnerProduct"}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class _Malformed(ValueError):
    """The bytes are not the protobuf message expected."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` of each field of one message: an int for varints,
    the bytes (a view) otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (_FIXED64, _FIXED32, _BYTES):
            if wire == _BYTES:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == _FIXED64 else 4
            if pos + size > len(buf):
                raise _Malformed(f"field {number} runs past the end of its message")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise _Malformed(f"field {number} has wire type {wire} (groups are not used by caffe.proto)")
        if number == 0:
            raise _Malformed("field number 0")
        yield number, wire, value


def _packed_varints(value: int | memoryview, wire: int) -> list[int]:
    if wire == _VARINT:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(item)
    return out


def _blob(buf: memoryview) -> np.ndarray:
    """A ``BlobProto`` as a float32 array of its shape: the legacy 4-D sizes where any is set
    (as Caffe's ``Blob::FromProto``), else ``shape`` (no dimensions: one value)."""
    dims: list[int] = []
    legacy: dict[int, int] = {}  # num, channels, height, width: fields 1-4
    chunks: list[np.ndarray] = []
    for number, wire, value in _fields(buf):
        if number == 7 and wire == _BYTES:  # shape: BlobShape
            for sub_number, sub_wire, sub_value in _fields(value):
                if sub_number == 1:
                    dims.extend(_packed_varints(sub_value, sub_wire))
        elif number in (1, 2, 3, 4) and wire == _VARINT:
            legacy[number] = value
        elif number in (5, 8):  # data: float, packed (or one fixed32 per value); double_data
            dtype = np.dtype("<f4" if number == 5 else "<f8")
            if wire == _VARINT or len(value) % dtype.itemsize:
                raise _Malformed(f"a blob's {'data' if number == 5 else 'double_data'} is not {dtype.itemsize}-byte "
                                 f"floats ({'a varint' if wire == _VARINT else f'{len(value)} bytes'})")
            chunks.append(np.frombuffer(value, dtype=dtype).astype(np.float32, copy=False))
    data = np.concatenate(chunks) if len(chunks) > 1 else chunks[0] if chunks else np.zeros(0, np.float32)
    shape = tuple(legacy.get(n, 0) for n in (1, 2, 3, 4)) if legacy else tuple(dims)
    if math.prod(shape) != data.size:  # Python integers: numpy's product wraps around at 2**64.
        raise _Malformed(f"a blob of shape {shape} holds {data.size} values")
    return data.astype(np.float32, copy=False).reshape(shape)


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """The layers with weights of a Caffe ``.caffemodel`` (a binary ``NetParameter``).

    Args:
        path: the file (V1 ``layers`` and current ``layer`` formats are both read).

    Returns:
        The layers holding at least one blob, in the file's order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is a folder or not a Caffe net with weights (names the file and what is
            wrong).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"caffemodel {str(path)!r} is a folder, not a .caffemodel file")
    if not path.is_file():
        raise FileNotFoundError(f"caffemodel {str(path)!r} does not exist")
    buf = memoryview(path.read_bytes())
    layers = []
    try:
        for number, wire, value in _fields(buf):
            if wire != _BYTES or number not in (100, 2):  # layer (V2) / layers (V1)
                continue
            # name, type, blobs, inner_product_param (InnerProductParameter.transpose = 6)
            name_field, type_field, blobs_field, inner_product_field = (1, 2, 7, 117) if number == 100 else (4, 5, 6, 17)
            name, kind, blobs, transpose = "", "", [], False
            for sub_number, sub_wire, sub_value in _fields(value):
                if sub_number == name_field and sub_wire == _BYTES:
                    name = bytes(sub_value).decode("utf-8")
                elif sub_number == type_field:
                    if sub_wire == _BYTES:
                        kind = bytes(sub_value).decode("utf-8")
                    else:
                        kind = _V1_TYPES.get(sub_value, f"V1 type {sub_value}")
                elif sub_number == blobs_field and sub_wire == _BYTES:
                    blobs.append(_blob(sub_value))
                elif sub_number == inner_product_field and sub_wire == _BYTES:
                    transpose = any(n == 6 and w == _VARINT and v for n, w, v in _fields(sub_value))
            if transpose and blobs:  # An InnerProduct stored [in, out]: to the usual [out, in].
                blobs[0] = np.swapaxes(blobs[0], -1, -2)
            if blobs:
                layers.append(CaffeLayer(name, kind, tuple(blobs)))
    except ValueError as error:  # _Malformed, UnicodeDecodeError, numpy's on impossible blobs
        raise ValueError(f"caffemodel {str(path)!r} is not a Caffe net (.caffemodel): {error}") from error
    if not layers:
        raise ValueError(f"caffemodel {str(path)!r} holds no layer with weights: is it a .caffemodel (not a .prototxt)?")
    return layers


# --- Caffe layers → build_fcn layers -------------------------------------------------------------


def keras_layer_name(caffe_name: str) -> str:
    """The ``build_fcn`` layer a Caffe layer maps to: ``conv{b}_{c}`` → ``block{b}_conv{c}``
    (keras.applications' VGG16 names), every other name unchanged (``fc6``, ``score_fr``, ...)."""
    if caffe_name.startswith("conv") and "_" in caffe_name:
        block, _, conv = caffe_name[4:].partition("_")
        if block.isdigit() and conv.isdigit():
            return f"block{block}_conv{conv}"
    return caffe_name


def describe_caffemodel(layers: list[CaffeLayer]) -> dict:
    """What a Caffe file holds, read off its layer names and shapes.

    Returns:
        ``{"variant": "8s" | "16s" | "32s" | None (a VGG16 without score layers), "at_once": bool,
        "num_classes": int | None, "fc_units": int}``.

    Raises:
        ValueError: no ``fc6`` or not VGG16's, or an at-once scale that is not the paper's.
    """
    by_name = {layer.name: layer for layer in layers}
    if "fc6" not in by_name:
        raise ValueError(f"no fc6 layer: not a VGG16 or FCN-VGG16 net (layers with weights: {sorted(by_name)})")
    variant = variant_of(by_name)
    at_once = False
    for block, scale in AT_ONCE_SCALES.items():
        layer = by_name.get(scale_name(block))
        if layer is not None:
            if not np.allclose(layer.blobs[0], scale, rtol=1e-6):
                raise ValueError(
                    f"{scale_name(block)} scales by {np.unique(layer.blobs[0])[:4]}, not the at-once net's {scale}"
                )
            at_once = True
    num_classes = _outputs(by_name["score_fr"]) if "score_fr" in by_name else None
    fc6, fc_units = by_name["fc6"], _outputs(by_name["fc6"])
    fc6_inputs = VGG16_BLOCKS[-1][0] * FC6_KERNEL**2  # pool5's 512 x 7 x 7 per unit
    if fc6.blobs[0].size != fc_units * fc6_inputs:  # Checked before a model of that width is built.
        raise ValueError(f"fc6's weights {fc6.blobs[0].shape} are not VGG16's fc6 ({fc6_inputs} = 512 x 7 x 7 inputs per unit)")
    return {"variant": variant, "at_once": at_once, "num_classes": num_classes, "fc_units": fc_units}


def _outputs(layer: CaffeLayer) -> int:
    """Output channels: a weight's first axis, an InnerProduct's [..., out, in] second last."""
    return int(layer.blobs[0].shape[-2 if layer.type == "InnerProduct" else 0])


def _keras_weights(layer: CaffeLayer, target_shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """A Caffe layer's blobs in the Keras layout of a layer whose weights have ``target_shapes``.

    Raises:
        ValueError: the blobs cannot be that layer's weights (names both shapes).
    """
    weight, rest = layer.blobs[0], layer.blobs[1:]
    transposed = layer.type == "Deconvolution"
    kh, kw, a, b = target_shapes[0]
    # Caffe's shape of this kernel: [out, in, kh, kw] (conv) / [in, out, kh, kw] (deconv).
    caffe_shape = (b, a, kh, kw)
    # An InnerProduct's [out, in] (V1 files: [1, 1, out, in]) over a [C, kh, kw] input.
    if weight.shape != caffe_shape and weight.ndim >= 2 and weight.shape[:-2] == (1,) * (weight.ndim - 2):
        if weight.shape[-2:] == (b, a * kh * kw):
            weight = weight.reshape(caffe_shape)
    if weight.shape != caffe_shape:
        what = "[in, out, kh, kw]" if transposed else "[out, in, kh, kw]"
        raise ValueError(
            f"Caffe layer {layer.name!r} ({layer.type}) has weights {weight.shape}; the FCN's "
            f"{keras_layer_name(layer.name)!r} needs {caffe_shape} ({what})"
        )
    weights = [np.ascontiguousarray(weight.transpose(2, 3, 1, 0))]
    if len(target_shapes) == 2:  # the bias
        if not rest or rest[0].size != target_shapes[1][0]:
            raise ValueError(
                f"Caffe layer {layer.name!r} has no bias of {target_shapes[1][0]} values "
                f"(blobs {[blob.shape for blob in layer.blobs]})"
            )
        weights.append(rest[0].reshape(-1))
    elif rest and np.any(rest[0]):
        raise ValueError(f"Caffe layer {layer.name!r} has a non-zero bias; the FCN's {layer.name!r} has none")
    return weights


def load_caffe_weights(model: keras.Model, layers: list[CaffeLayer]) -> dict[str, list[str]]:
    """Copies Caffe layers into the ``build_fcn`` model's layers of the same name.

    Every backbone layer (``block*_conv*``, ``fc6``, ``fc7``) must be in the file; score and
    upsampling layers that the file lacks keep their initialisation (zero, bilinear).

    Args:
        model: a ``build_fcn`` model.
        layers: from ``read_caffemodel``.

    Returns:
        ``{"copied": [...], "kept": [...], "unused": [...]}``: model layers that received
        weights, model layers left as initialised, Caffe layers with no twin (e.g. VGG's ``fc8``).

    Raises:
        ValueError: a backbone layer is missing or a shape does not fit; then no layer was changed.
    """
    caffe = {keras_layer_name(layer.name): layer for layer in layers}
    report: dict[str, list[str]] = {"copied": [], "kept": [], "unused": []}
    copies: list[Copy] = []
    for target in model.layers:
        if target.name.startswith("scale_pool"):  # A fixed Rescaling; describe_caffemodel checked the value.
            caffe.pop(target.name, None)
        if not target.weights:
            continue
        source = caffe.pop(target.name, None)
        if source is None:
            if target.name.startswith(("block", "fc")):
                raise ValueError(f"the caffemodel has no layer for {target.name!r} (VGG16's Caffe names: conv1_1 ... conv5_3, fc6, fc7)")
            report["kept"].append(target.name)
            continue
        weights = _keras_weights(source, [tuple(w.shape) for w in target.weights])
        copies.append((target, weights, f"Caffe {source.name} {[blob.shape for blob in source.blobs]}"))
        report["copied"].append(target.name)
    report["unused"] = [layer.name for layer in layers if keras_layer_name(layer.name) in caffe]
    assign_all(copies)
    return report


def fcn_from_caffemodel(
    path: str | os.PathLike,
    variant: str | None = None,
    num_classes: int | None = None,
) -> tuple[keras.Model, dict]:
    """A ``build_fcn`` model holding a Caffe file's weights.

    Args:
        path: an FCN-VGG16 ``.caffemodel`` (the authors' ``voc-fcn8s`` etc.) or a VGG16 one
            (``VGG_ILSVRC_16_layers.caffemodel``).
        variant: for a VGG16 file, the FCN to build (default ``"8s"``); for an FCN file, ``None``
            or the file's own variant.
        num_classes: for a VGG16 file, the classes of the new score layers (default 21); for an
            FCN file, ``None`` or the file's own number.

    Returns:
        ``(model, report)``: the model (the authors' geometry; ``caffe_fcn`` input normalisation
        for an FCN file, ``caffe`` for VGG16) and ``load_caffe_weights``' report plus
        ``describe_caffemodel``'s keys and ``"source"``: ``"FCN"`` or ``"VGG16"``.

    Raises:
        FileNotFoundError, ValueError: see ``read_caffemodel``, ``load_caffe_weights``; a
            ``variant`` or ``num_classes`` other than an FCN file's own; a layer with weights
            that the FCN has no place for (other than VGG16's ``fc8``), e.g. another naming.
    """
    layers = read_caffemodel(path)
    info = describe_caffemodel(layers)
    source = "VGG16" if info["variant"] is None else "FCN"
    if source == "FCN":
        for key, given in (("variant", variant), ("num_classes", num_classes)):
            if given is not None and given != info[key]:
                raise ValueError(
                    f"caffemodel {str(path)!r} holds an FCN-{info['variant']} of {info['num_classes']} classes; "
                    f"{key}={given!r} differs (leave it unset)"
                )
        variant, num_classes, preprocessing = info["variant"], info["num_classes"], "caffe_fcn"
    else:
        variant = variant or "8s"
        num_classes = NUM_CLASSES if num_classes is None else num_classes
        preprocessing = "caffe"
    model = build_fcn(
        variant,
        num_classes,
        preprocessing=preprocessing,
        at_once=info["at_once"],
        fc_units=info["fc_units"],
        geometry="reference",
    )
    report = load_caffe_weights(model, layers)
    unexpected = [name for name in report["unused"] if name != "fc8"]  # fc8: VGG16's ImageNet classifier
    if unexpected:
        raise ValueError(
            f"caffemodel {str(path)!r} has layers with weights that no layer of the FCN-{variant} takes: "
            f"{unexpected} (the names of fcn.berkeleyvision.org's nets are mapped: conv1_1 ... conv5_3, fc6, fc7, "
            "score_fr, upscore2, score_pool4, upscore_pool4, score_pool3, upscore8 / upscore16 / upscore)"
        )
    return model, {**info, "source": source, "variant": variant, "num_classes": num_classes, **report}


# --- Command line ------------------------------------------------------------------------------


FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a program, so the module imports side-effect free)."""
    flags.DEFINE_string("caffemodel", None, "The Caffe weights: an FCN-VGG16 (e.g. fcn8s-heavy-pascal.caffemodel) "
                        "or VGG16 (VGG_ILSVRC_16_layers.caffemodel) .caffemodel file.")
    flags.DEFINE_string("output", None, "The .keras file to write (written to a temporary file, then renamed).")
    flags.DEFINE_enum("variant", None, list(VARIANTS), "For a VGG16 file: the FCN to build (default 8s). "
                      "An FCN file's own variant is read from it.")
    flags.DEFINE_integer("num_classes", None, "For a VGG16 file: classes of the new score layers (default 21).",
                         lower_bound=2)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --output.")
    flags.mark_flags_as_required(["caffemodel", "output"])


def main(argv: list[str]) -> int:
    """Converts ``--caffemodel`` to ``--output``; returns the exit status."""
    program = "fcn_keras.caffe_import"
    if len(argv) > 1:
        return usage_error(program, f"unexpected arguments: {argv[1:]}")
    output = Path(FLAGS.output)
    if output.suffix != ".keras":
        return usage_error(program, f"--output must end with .keras. Received: --output={FLAGS.output!r}")
    if output.exists() and not FLAGS.overwrite:
        print(f"error: {output} exists: pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        model, report = fcn_from_caffemodel(FLAGS.caffemodel, FLAGS.variant, FLAGS.num_classes)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        with atomic_path(output) as temporary:
            model.save(temporary)
    except OSError as error:
        print(f"error: cannot write {output}: {error}", file=sys.stderr)
        return 1
    kind = f"FCN-{report['variant']}" + (" at once" if report["at_once"] else "")
    print(f"{FLAGS.caffemodel}: {report['source']} -> {kind}, {report['num_classes']} classes, fc6/fc7 {report['fc_units']} units, "
          f"{model.count_params():,} parameters")
    print(f"copied {len(report['copied'])} layers: {', '.join(report['copied'])}")
    if report["kept"]:
        print(f"kept as initialised (not in the file): {', '.join(report['kept'])}")
    if report["unused"]:
        print(f"not used (no such layer in the FCN): {', '.join(report['unused'])}")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
