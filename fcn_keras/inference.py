"""Label maps computed on the device.

A segmentation net's logits are ``num_classes`` floats per pixel (21 x 4 bytes for VOC); moving
them to the host to take the argmax there costs 84x the bytes of the uint8 label map and the
host's time. ``labels_model`` appends the argmax to the graph, so ``predict`` (compiled by
Keras under every backend) returns only the labels.

Large images can be segmented tile by tile (``predict_labels_tiled``) to bound the memory a call
needs; the tiles overlap by the net's reach and start on its coarsest grid, so the labels are the
whole image's.

Photos far larger than the training images can be segmented downscaled (``downscale``, then
``resize_labels`` back to the photo's size, nearest neighbour): the net sees objects at the scale
it learned, for a fraction of the computation.

Images of many sizes can be segmented on one canvas (``predict_labels_on_canvas``): padded at the
bottom and right to a fixed size, in batches of a fixed count, so that a compiled predict
function (XLA, under JAX or TensorFlow on a GPU) serves them all instead of compiling once per
image size; the labels near the padding can differ slightly from the whole image's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops
from PIL import Image

from fcn_keras import architecture as arch
from fcn_keras.checks import check_int
from fcn_keras.constants import PAD_RGB


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


def _labeler(model: keras.Model) -> keras.Model:
    """``model`` if it outputs labels, else its ``labels_model``, made once and kept with it."""
    if model.outputs[0].dtype == "uint8":
        return model
    labeler = getattr(model, _LABELS_ATTRIBUTE, None)
    if labeler is None:
        labeler = labels_model(model)
        object.__setattr__(model, _LABELS_ATTRIBUTE, labeler)
    return labeler


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
    return np.asarray(_labeler(model).predict(images, batch_size=batch_size, verbose=0))


# --- Canvas ------------------------------------------------------------------------------------


def _integer_sides(value: Any) -> tuple[int, int] | None:
    """``(height, width)`` of a size given as an integer ``N`` or ``(height, width)`` of integers
    (not booleans); ``None`` for anything else."""
    sides = (value, value) if isinstance(value, (int, np.integer)) else tuple(np.atleast_1d(value))
    if len(sides) != 2 or not all(isinstance(side, (int, np.integer)) and not isinstance(side, bool) for side in sides):
        return None
    return int(sides[0]), int(sides[1])


def check_canvas(canvas: int | tuple[int, int], name: str = "canvas") -> tuple[int, int]:
    """``(height, width)`` of a canvas ``N`` or ``(height, width)`` of integers >= 1; else a
    ``ValueError`` naming ``name`` (a flag, say)."""
    sides = _integer_sides(canvas)
    if sides is None or min(sides) < 1:
        raise ValueError(f"{name} must be an integer N or (height, width) of integers >= 1. Received: {name}={canvas!r}")
    return sides


def fits_canvas(image: np.ndarray, canvas: tuple[int, int]) -> bool:
    """Whether ``image`` ``[H, W, 3]`` fits in ``canvas`` ``(height, width)``."""
    return image.shape[0] <= canvas[0] and image.shape[1] <= canvas[1]


def segment_on_canvas(
    segment_batch: Callable[[np.ndarray], np.ndarray],
    images: list[np.ndarray],
    canvas: int | tuple[int, int],
    batch_size: int = 1,
) -> list[np.ndarray]:
    """Applies a batch label function to images of any sizes with one input shape.

    Each image is placed at the top left of a ``canvas`` filled with the mean colour
    (``PAD_RGB``, what the training pipeline pads with), ``batch_size`` canvases a call (the last
    call is filled up with blank canvases), and each label map is cut back to its image's size.
    Every call so has the shape ``[batch_size, *canvas, 3]``: a compiled predict function is
    compiled once, not once per image size. The labels are those of the padded image: within the
    net's reach of the padding (right and bottom) they can differ slightly from the image's own
    (``experiments/canvas_effect.py`` measured 0.076 % of VOC val pixels changing, with a trained
    FCN-8s on a 500x500 canvas); elsewhere they are the whole image's.

    Args:
        segment_batch: maps ``[N, h, w, 3]`` images to uint8 ``[N, h, w]`` labels.
        images: uint8 (or float) ``[H_i, W_i, 3]`` images, each fitting in ``canvas``; the canvases
            have their common dtype.
        canvas: ``N`` or ``(height, width)``.
        batch_size: canvases per call, >= 1.

    Returns:
        uint8 ``[H_i, W_i]`` label maps, in the order of ``images``.

    Raises:
        ValueError: an image is not ``[H, W, 3]`` or is larger than ``canvas`` (naming its index
            and size), or ``batch_size`` < 1.
    """
    canvas = check_canvas(canvas)
    batch_size = check_int("batch_size", batch_size, 1)
    for index, image in enumerate(images):
        if np.ndim(image) != 3 or np.shape(image)[-1] != 3:
            raise ValueError(f"images[{index}] must be one RGB image [H, W, 3]. Received: shape {np.shape(image)}")
        if not fits_canvas(image, canvas):
            raise ValueError(f"images[{index}] ({image.shape[0]}x{image.shape[1]}) is larger than the canvas "
                             f"{canvas[0]}x{canvas[1]} (height x width)")
    dtype = np.result_type(*images) if images else np.uint8  # uint8 images stay uint8 on their way in.
    labels = []
    for first in range(0, len(images), batch_size):
        chunk = images[first:first + batch_size]
        batch = np.empty((batch_size, *canvas, 3), dtype)
        batch[...] = PAD_RGB
        for slot, image in enumerate(chunk):
            batch[slot, :image.shape[0], :image.shape[1]] = image
        maps = np.asarray(segment_batch(batch))
        labels.extend(maps[slot, :image.shape[0], :image.shape[1]] for slot, image in enumerate(chunk))
    return labels


def predict_labels_on_canvas(
    model: keras.Model, images: list[np.ndarray], canvas: int | tuple[int, int], batch_size: int = 1
) -> list[np.ndarray]:
    """Label maps of images of many sizes, padded to one ``canvas`` (see ``segment_on_canvas``).

    Under JAX, and TensorFlow on a GPU, Keras compiles the predict function with XLA for each
    input shape: a folder of photos with dozens of sizes compiles dozens of times. On a canvas
    every call has one shape, and ``batch_size`` images share a call.

    Args:
        model: an FCN (logits output) or a ``labels_model``.
        images: uint8 or float ``[H_i, W_i, 3]`` RGB in 0..255, each fitting in ``canvas``.
        canvas: ``N`` or ``(height, width)``, e.g. 500 for PASCAL VOC (no side above 500).
        batch_size: images per device call.

    Returns:
        uint8 ``[H_i, W_i]`` label maps, in the order of ``images``.

    Raises:
        ValueError: an image is not ``[H, W, 3]`` or is larger than ``canvas``.
    """
    return segment_on_canvas(_labeler(model).predict_on_batch, images, canvas, batch_size)


# --- Downscaled images ---------------------------------------------------------------------------


def check_max_size(max_size: int, name: str = "max_size") -> int:
    """``max_size`` if it is an integer >= 1; else a ``ValueError`` naming ``name`` (a flag, say)."""
    return check_int(name, max_size, 1, "pixels of an image's longer side")


def downscaled_size(height: int, width: int, max_size: int) -> tuple[int, int]:
    """``(height, width)`` shrunk so that the longer side is ``max_size`` (the aspect ratio kept,
    sides rounded, each >= 1); the size itself when no side exceeds ``max_size``."""
    longer = max(height, width)
    if longer <= max_size:
        return height, width
    return max(1, round(height * max_size / longer)), max(1, round(width * max_size / longer))


def downscale(image: np.ndarray, max_size: int) -> np.ndarray:
    """An image shrunk so that its longer side is at most ``max_size``.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        max_size: the longest side kept, pixels (>= 1).

    Returns:
        ``image`` itself when it fits; else uint8 ``[h, w, 3]`` of ``downscaled_size``, resampled
        bilinearly by PIL, whose filter widens with the reduction (antialiased: every source
        pixel counts, no aliasing of fine patterns).

    Raises:
        ValueError: ``image`` is not uint8 ``[H, W, 3]``, or a bad ``max_size``.
    """
    max_size = check_max_size(max_size)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3]. Received: {image.dtype} {image.shape}")
    height, width = downscaled_size(image.shape[0], image.shape[1], max_size)
    if (height, width) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map resized to ``size`` by nearest neighbour: each output pixel takes the label of
    the input pixel under its centre, ``labels[floor((i + 0.5) * h / H), floor((j + 0.5) * w / W)]``,
    so no label is invented (bilinear would blend class indices).

    Args:
        labels: ``[h, w]`` labels of any integer dtype.
        size: ``(H, W)``, each >= 1.

    Returns:
        ``[H, W]`` of ``labels``' dtype (``labels`` itself when ``size`` is its size).
    """
    height, width = size
    if (height, width) == labels.shape:
        return labels
    rows = np.minimum(((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64), labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]


# --- Tiles -------------------------------------------------------------------------------------

#: Context read around the kept part of every tile: the largest ``arch.tile_context`` of the
#: family (221 px, the reference geometry, any variant), so one value serves every FCN-VGG16 and
#: also a SavedModel, whose geometry cannot be read from it. On the grid: 224 px.
TILE_CONTEXT = max(arch.tile_context(v, g) for v in arch.VARIANTS for g in arch.GEOMETRIES)

#: The layers every net of the family has, checked before a Keras model is cut into tiles.
_FAMILY_LAYERS = ("block5_pool", "fc6", "score_fr")


class TileSpan(NamedTuple):
    """One tile along one axis, in image pixels (``start`` a multiple of ``arch.GRID_STRIDE``)."""

    start: int  # first pixel the tile reads
    stop: int  # one past the last pixel it reads
    keep_start: int  # first pixel whose label is taken from this tile
    keep_stop: int  # one past the last


def min_tile_size(context: int = TILE_CONTEXT) -> int:
    """The smallest tile side that keeps any pixels: the context rounded up to the grid on both
    sides, plus one grid cell (480 px for ``TILE_CONTEXT``)."""
    return 2 * _grid_ceil(context) + arch.GRID_STRIDE


def tile_spans(length: int, tile_size: int, context: int = TILE_CONTEXT) -> list[TileSpan]:
    """Cuts one image axis into overlapping tiles whose kept parts cover it exactly once.

    Every tile starts on the net's coarsest grid (a multiple of ``arch.GRID_STRIDE`` = 32), so
    the net computes the same values in it as in the whole image, and it reads at least
    ``context`` pixels beyond its kept part on each side (except at the image's borders, which
    the whole image has too): the kept labels are exactly the whole image's.

    Args:
        length: the axis' size in pixels, >= 1.
        tile_size: the largest tile side, >= ``min_tile_size(context)`` if the axis is longer.
        context: pixels of context needed on each side (``arch.tile_context``).

    Returns:
        The spans in order: one ``(0, length, 0, length)`` if ``length <= tile_size``; else tiles
        of at most ``tile_size`` pixels that keep parts a multiple of 32 wide: equal ones, but the
        first, which needs no context before it, keeps ``margin`` more, and the last, which reads
        to the image's end, keeps all that it reads beyond the previous part.

    Raises:
        ValueError: ``tile_size`` is too small to keep anything (the message gives the minimum).
    """
    if length <= tile_size:
        return [TileSpan(0, length, 0, length)]
    margin = _grid_ceil(context)
    keep = (tile_size - 2 * margin) // arch.GRID_STRIDE * arch.GRID_STRIDE
    if keep < arch.GRID_STRIDE:
        raise ValueError(
            f"tile_size must be at least {min_tile_size(context)} pixels: each tile needs {context} pixels of context "
            f"on each side ({margin} on the net's {arch.GRID_STRIDE}-pixel grid) and keeps a multiple of "
            f"{arch.GRID_STRIDE}. Received: tile_size={tile_size}"
        )
    first = (tile_size - margin) // arch.GRID_STRIDE * arch.GRID_STRIDE  # No context needed before it.
    spans = [TileSpan(0, first + margin, 0, first)]
    while spans[-1].stop < length:
        kept = spans[-1].keep_stop
        stop = min(length, kept + keep + margin)
        # A tile reaching the image's end keeps all it read beyond its part: no edge there.
        spans.append(TileSpan(max(0, kept - margin), stop, kept, length if stop == length else kept + keep))
    return spans


def check_tile_size(tile_size: int | tuple[int, int], name: str = "tile_size") -> tuple[int, int]:
    """``(height, width)`` of a tile size ``N`` or ``(height, width)`` of integers, each at
    least ``min_tile_size()``; else a ``ValueError`` naming ``name`` (a flag, say)."""
    sides = _integer_sides(tile_size)
    if sides is None:
        raise ValueError(f"{name} must be an integer N or (height, width) of integers. Received: {name}={tile_size!r}")
    if min(sides) < min_tile_size():
        raise ValueError(
            f"{name} must be at least {min_tile_size()} pixels on each side ({TILE_CONTEXT} pixels of context on each "
            f"side of the part a tile keeps, on the net's {arch.GRID_STRIDE}-pixel grid). "
            f"Received: {name}={sides[0]}x{sides[1]}"
        )
    return sides


def _grid_ceil(pixels: int) -> int:
    return math.ceil(pixels / arch.GRID_STRIDE) * arch.GRID_STRIDE


def segment_in_tiles(
    segment: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile_size: int | tuple[int, int],
    context: int = TILE_CONTEXT,
) -> np.ndarray:
    """Applies a whole-image label function tile by tile (see ``tile_spans``).

    Args:
        segment: maps uint8 ``[h, w, 3]`` to uint8 ``[h, w]`` labels with an FCN-VGG16 (a
            ``.keras`` model or an exported SavedModel: ``TILE_CONTEXT`` covers the family).
        image: uint8 or float ``[H, W, 3]``.
        tile_size: the largest tile, ``N`` or ``(height, width)``.
        context: pixels of context the net needs (``TILE_CONTEXT`` for the FCN-VGG16 family).

    Returns:
        uint8 ``[H, W]``, what ``segment(image)`` returns (up to the rounding of the device's
        convolution algorithms on other shapes), computed on at most ``tile_size`` pixels a call.
    """
    if np.ndim(image) != 3 or np.shape(image)[-1] != 3:
        raise ValueError(f"image must be one RGB image [H, W, 3]. Received: shape {np.shape(image)}")
    tile_height, tile_width = check_tile_size(tile_size)
    rows = tile_spans(image.shape[0], tile_height, context)
    columns = tile_spans(image.shape[1], tile_width, context)
    labels = np.empty(image.shape[:2], np.uint8)
    for row in rows:
        for column in columns:
            tile = segment(image[row.start:row.stop, column.start:column.stop])
            labels[row.keep_start:row.keep_stop, column.keep_start:column.keep_stop] = tile[
                row.keep_start - row.start:row.keep_stop - row.start,
                column.keep_start - column.start:column.keep_stop - column.start,
            ]
    return labels


def check_tileable(model: keras.Model, source: str | None = None) -> keras.Model:
    """Returns ``model`` if it is an FCN-VGG16 of ``build_fcn`` (whose reach ``TILE_CONTEXT``
    covers), else raises a ``ValueError`` naming ``source`` (default: the model's name)."""
    names = {layer.name for layer in model.layers}
    missing = [name for name in _FAMILY_LAYERS if name not in names]
    if missing:
        raise ValueError(
            f"tiled prediction needs an FCN-VGG16 of fcn_keras.model.build_fcn (its reach is known); "
            f"{source or f'model {model.name!r}'} has no layers {missing}"
        )
    return model


def predict_labels_tiled(model: keras.Model, image: np.ndarray, tile_size: int | tuple[int, int]) -> np.ndarray:
    """The label map of one large image computed tile by tile, bounding the memory of a call.

    The labels equal ``predict_labels(model, image[None])[0]`` (tested): tiles overlap by the
    net's reach (``TILE_CONTEXT``) and start on its 32-pixel grid. A tile of ``T x T`` costs
    about the memory of a ``T x T`` image; the overlap costs compute: a large image in tiles of
    2048 pixels keeps 1600 x 1600 of each, about 1.6x the whole image's work; in tiles of 1024,
    576 x 576, about 3.2x.

    Args:
        model: an FCN-VGG16 of ``fcn_keras.model.build_fcn`` (logits), or its ``labels_model``.
        image: uint8 or float ``[H, W, 3]`` RGB in 0..255.
        tile_size: the largest tile side ``N``, or ``(height, width)``; at least ``min_tile_size()``
            (480) on each side, checked whatever the image's size (as the CLIs check the flag
            before reading images). An image that fits in one tile is segmented whole.

    Returns:
        uint8 ``[H, W]``.

    Raises:
        ValueError: ``model`` is not an FCN-VGG16 (its reach is unknown), ``image`` is not
            ``[H, W, 3]``, or ``tile_size`` is too small.
    """
    check_tileable(model)
    return segment_in_tiles(lambda tile: predict_labels(model, tile[np.newaxis])[0], image, tile_size)
