"""The FCN-VGG16 family as data, and the geometry that follows from it.

One table describes the whole family (which pooling layers feed skips); the builder in
``fcn_keras.model`` walks it, and this module derives every crop offset and every blob size
from the layers' kernels, strides and paddings, exactly as Caffe's ``coord_map`` does for the
authors' reference nets. Nothing here is a hand-typed offset.

Two geometries:

- ``"reference"`` (default), the authors' Caffe nets (``voc-fcn*s/net.py``): the input is
  zero-padded by 100 pixels and conv1_1 is a *valid* 3x3 convolution; 2x2 max pooling is
  ceil-mode; fc6 is a valid 7x7 convolution; deconvolutions have no padding and the crops take
  offsets 19; 5, 27; 5, 9, 31. The padding lets every input of >= 1 pixel reach fc6, at the price
  of computing on a (H + 198) x (W + 198) map, and it puts the pool5 grid 99 pixels (about 3.09
  cells) off the image's.
- ``"same"``: the layout of keras.applications' VGG16 and most ports: no input padding, every
  convolution (fc6 too) keeps the size, deconvolutions use Keras' "same" padding, all crops start
  at 0. 0.6x the compute at 500x500 (216.6 against 363.1 GFLOP for FCN-8s), and on a 224x224 input the centre of fc7 is exactly
  VGG16's fc2. Not the paper's nets: weights trained in one geometry are not exact in the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

from fcn_keras.checks import check_choice
from fcn_keras.constants import VARIANTS

# --- The family as data -----------------------------------------------------------------------

#: VGG16's five blocks: (filters, number of 3x3 convolutions). Block b ends in 2x2 pooling, so
#: the output of ``block{b}_pool`` has stride 2**b: 2, 4, 8, 16, 32.
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

#: fc6 is VGG16's fc1 (25088 = 7*7*512 inputs) as a valid 7x7 convolution; fc7 is fc2 as 1x1.
FC6_KERNEL = 7
FC_UNITS = 4096

#: Which pooling outputs each variant fuses, coarse to fine. The paper's pool4 and pool3 are
#: keras.applications' ``block4_pool`` (stride 16) and ``block3_pool`` (stride 8).
SKIPS: dict[str, tuple[int, ...]] = {"32s": (), "16s": (4,), "8s": (4, 3)}

#: The TPAMI "at-once" FCN-8s scales the pool features before scoring them (fixed, not learned).
AT_ONCE_SCALES: dict[int, float] = {4: 0.01, 3: 0.0001}

#: Every skip fusion upsamples 2x with a 4x4 stride-2 deconvolution ("upscore2", ...).
SKIP_UPSAMPLE_KERNEL = 4
SKIP_UPSAMPLE_STRIDE = 2


@dataclass(frozen=True)
class Geometry:
    """Where the paddings go. Caffe paddings: pixels added on each side of a layer's input."""

    name: str
    input_padding: int  # zeros around the image (a ZeroPadding2D in front of conv1_1)
    conv1_1_pad: int  # conv1_1's own padding: 0 ("valid") or 1 ("same")
    fc6_pad: int  # 0 ("valid") or 3 ("same")
    same_deconv: bool  # deconvolutions pad stride/2 on each side (Keras "same"), else 0

    def deconv_pad(self, stride: int) -> int:
        return stride // 2 if self.same_deconv else 0


GEOMETRIES: dict[str, Geometry] = {
    "reference": Geometry("reference", input_padding=100, conv1_1_pad=0, fc6_pad=0, same_deconv=False),
    "same": Geometry("same", input_padding=0, conv1_1_pad=1, fc6_pad=3, same_deconv=True),
}


def get_geometry(geometry: str) -> Geometry:
    """The ``Geometry`` named ``geometry``, else a ``ValueError`` naming the choices."""
    return GEOMETRIES[check_choice("geometry", geometry, GEOMETRIES)]


def check_variant(variant: str) -> str:
    """Returns ``variant`` if it names an FCN variant, else raises a ``ValueError``."""
    return check_choice("variant", variant, VARIANTS)


def output_stride(variant: str) -> int:
    """The stride of the finest feature map a variant fuses: 32, 16 or 8."""
    return 32 // SKIP_UPSAMPLE_STRIDE ** len(SKIPS[check_variant(variant)])


def final_upsample_kernel(variant: str) -> int:
    """Kernel size of the last deconvolution: twice its stride (64, 32, 16), as in Caffe."""
    return 2 * output_stride(variant)


# --- Layer names (the paper's, and keras.applications.VGG16's for the trunk) ----------------


def pool_name(block: int) -> str:
    return f"block{block}_pool"


def score_name(block: int) -> str:
    return f"score_pool{block}"


def crop_name(block: int) -> str:
    return f"score_pool{block}c"


def fuse_name(block: int) -> str:
    return f"fuse_pool{block}"


def skip_upsample_name(variant: str, index: int) -> str:
    """The 2x upsampling before the ``index``-th fusion: "upscore2", then "upscore_pool4"."""
    return "upscore2" if index == 0 else f"upscore_pool{SKIPS[variant][index - 1]}"


def variant_of(layer_names: Iterable[str]) -> str | None:
    """The variant whose score layers a net has, from its layer names (Keras' or Caffe's).

    Args:
        layer_names: the net's layer names.

    Returns:
        The finest variant all of whose ``score_pool<N>`` layers are present (``"8s"``,
        ``"16s"``, ``"32s"``), or None without ``score_fr`` (no FCN head).
    """
    names = set(layer_names)
    if "score_fr" not in names:
        return None
    return next(v for v in sorted(VARIANTS, key=output_stride) if all(score_name(b) in names for b in SKIPS[v]))


def geometry_of(layer_names: Iterable[str]) -> str:
    """The geometry of a net of ``build_fcn`` from its layer names: ``"reference"`` when it pads
    its input (the ``input_padding`` layer), else ``"same"``."""
    return "reference" if "input_padding" in set(layer_names) else "same"


def scale_name(block: int) -> str:
    """"scale_pool4", "scale_pool3": the at-once net's scaling of a pool before its score layer."""
    return f"scale_pool{block}"


def final_upsample_name(variant: str) -> str:
    """"upscore" for FCN-32s, "upscore16" / "upscore8" for the skip nets (Caffe's names)."""
    return "upscore" if variant == "32s" else f"upscore{output_stride(variant)}"


# --- Coordinate maps ---------------------------------------------------------------------------
# A blob's position x corresponds to input pixel ``scale * x + shift`` (the centre of its
# receptive field). A Caffe convolution/pooling with kernel k, stride s and padding p maps its
# output position x to input position ``s * x + (k - 1) / 2 - p``; a deconvolution is the inverse
# of the same expression. Composing these gives every crop offset.


@dataclass(frozen=True)
class CoordMap:
    """``input_position = scale * position + shift``, in exact rational arithmetic."""

    scale: Fraction
    shift: Fraction

    def through_conv(self, kernel: int, stride: int = 1, pad: int = 0) -> "CoordMap":
        """The map of a convolution's (or pooling's) output, given this map of its input."""
        local_shift = Fraction(kernel - 1, 2) - pad
        return CoordMap(self.scale * stride, self.scale * local_shift + self.shift)

    def through_deconv(self, kernel: int, stride: int, pad: int = 0) -> "CoordMap":
        """The map of a deconvolution's output, given this map of its input."""
        local_shift = Fraction(kernel - 1, 2) - pad
        return CoordMap(self.scale / stride, self.shift - self.scale * local_shift / stride)


def _pool_maps(geo: Geometry) -> dict[int, CoordMap]:
    """Coordinate maps of ``block{b}_pool`` for b = 1..5 (stride 2**b)."""
    cmap = CoordMap(Fraction(1), Fraction(0)).through_conv(3, pad=geo.input_padding + geo.conv1_1_pad)
    maps = {}
    for block, _ in enumerate(VGG16_BLOCKS, start=1):
        # The other 3x3 convolutions of the block have pad 1: they leave the map unchanged.
        cmap = cmap.through_conv(2, stride=2)
        maps[block] = cmap
    return maps


def _crop_offset(larger: CoordMap, reference: CoordMap) -> int:
    """Offset (in ``larger``'s positions) of the crop that aligns ``larger`` to ``reference``."""
    if larger.scale != reference.scale:
        raise AssertionError(f"cannot align maps of scales {larger.scale} and {reference.scale}")
    offset = (reference.shift - larger.shift) / larger.scale
    if offset.denominator != 1 or offset < 0:
        raise AssertionError(f"crop offset {offset} is not a non-negative integer")
    return int(offset)


def crops_pool_score(geometry: str = "reference") -> bool:
    """Whether skips crop the pool's score to the upsampled map (reference) or the reverse."""
    return not get_geometry(geometry).same_deconv


def skip_crop_name(variant: str, index: int, geometry: str = "reference") -> str:
    """The crop before the ``index``-th fusion: ``score_pool4c`` (reference) / ``upscore2c``."""
    if crops_pool_score(geometry):
        return crop_name(SKIPS[variant][index])
    return skip_upsample_name(variant, index) + "c"


def crop_offsets(variant: str, geometry: str = "reference") -> dict[str, int]:
    """Crop offsets of a variant's crop layers, derived from the layer geometry.

    Args:
        variant: one of ``VARIANTS``.
        geometry: ``"reference"`` or ``"same"`` (see the module docstring).

    Returns:
        ``{crop layer name: offset}``: one crop per skip and ``score``, the final crop to the
        input. For the reference geometry these are FCN-32s ``{score: 19}``, FCN-16s
        ``{score_pool4c: 5, score: 27}``, FCN-8s ``{score_pool4c: 5, score_pool3c: 9,
        score: 31}``, the values in the authors' Caffe nets; for "same" they are all 0.
    """
    check_variant(variant)
    geo = get_geometry(geometry)
    pools = _pool_maps(geo)
    # fc6; fc7 and score_fr are 1x1 and leave the map unchanged.
    cmap = pools[len(VGG16_BLOCKS)].through_conv(FC6_KERNEL, pad=geo.fc6_pad)
    offsets = {}
    for index, block in enumerate(SKIPS[variant]):
        stride = SKIP_UPSAMPLE_STRIDE
        cmap = cmap.through_deconv(SKIP_UPSAMPLE_KERNEL, stride, pad=geo.deconv_pad(stride))
        larger, reference = (pools[block], cmap) if crops_pool_score(geometry) else (cmap, pools[block])
        offsets[skip_crop_name(variant, index, geometry)] = _crop_offset(larger, reference)
        cmap = reference
    stride = output_stride(variant)
    cmap = cmap.through_deconv(final_upsample_kernel(variant), stride, pad=geo.deconv_pad(stride))
    offsets["score"] = _crop_offset(cmap, CoordMap(Fraction(1), Fraction(0)))
    return offsets


# --- Blob sizes --------------------------------------------------------------------------------


def blob_sizes(variant: str, size: int, geometry: str = "reference") -> dict[str, int]:
    """The spatial size (one axis) of each named blob for an input of ``size`` pixels.

    Args:
        variant: one of ``VARIANTS``.
        size: input height or width in pixels, >= 1.
        geometry: ``"reference"`` or ``"same"``.

    Returns:
        ``{layer name: size}`` for the pools, ``fc6``, each skip's upsampling and fused map, and
        the final ``score`` (always equal to ``size``). Raises ``ValueError`` if a crop would not
        fit, which neither geometry lets happen for ``size >= 1``.
    """
    check_variant(variant)
    geo = get_geometry(geometry)
    if size < 1:
        raise ValueError(f"size must be >= 1. Received: size={size}")
    n = size + 2 * (geo.input_padding + geo.conv1_1_pad) - 2  # conv1_1
    sizes = {}
    for block, _ in enumerate(VGG16_BLOCKS, start=1):
        n = math.ceil(n / 2)  # ceil-mode 2x2 pooling
        sizes[pool_name(block)] = n
    n = n + 2 * geo.fc6_pad - FC6_KERNEL + 1
    if n < 1:
        raise ValueError(f"an input of {size} pixels is too small for fc6's 7x7 window")
    sizes["fc6"] = n
    offsets = crop_offsets(variant, geometry)
    for index, block in enumerate(SKIPS[variant]):
        n = _deconv_size(n, SKIP_UPSAMPLE_KERNEL, SKIP_UPSAMPLE_STRIDE, geo)
        sizes[skip_upsample_name(variant, index)] = n
        name = skip_crop_name(variant, index, geometry)
        if crops_pool_score(geometry):
            _check_fits(name, offsets[name], n, sizes[pool_name(block)])
        else:
            _check_fits(name, offsets[name], sizes[pool_name(block)], n)
            n = sizes[pool_name(block)]
        sizes[fuse_name(block)] = n
    stride = output_stride(variant)
    upsampled = _deconv_size(n, final_upsample_kernel(variant), stride, geo)
    sizes[final_upsample_name(variant)] = upsampled
    _check_fits("score", offsets["score"], size, upsampled)
    sizes["score"] = size
    return sizes


def _deconv_size(n: int, kernel: int, stride: int, geo: Geometry) -> int:
    return (n - 1) * stride + kernel - 2 * geo.deconv_pad(stride)


def _check_fits(name: str, offset: int, reference: int, available: int) -> None:
    if offset + reference > available:
        raise ValueError(
            f"crop {name!r} needs {offset} + {reference} positions but only {available} exist"
        )


def static_crop(offset: int, size: int, reference: int) -> tuple[int, int]:
    """(before, after) amounts that crop ``size`` positions to ``reference`` from ``offset``."""
    return offset, size - offset - reference


# --- Dependency radius (how far context reaches) ---------------------------------------------
# Which input pixels an output pixel depends on: a convolution's (or pooling's) position x reads
# its input's positions s*x - p .. s*x - p + k - 1, a deconvolution's position u is written by
# its input's positions ceil((u + p - k + 1) / s) .. floor((u + p) / s), a crop by offset c reads
# position y + c, a fusion the union of its two inputs. A blob is kept as two functions, the
# first and the last input pixel each of its positions depends on (both non-decreasing).

#: The stride of the coarsest grid (pool5, fc6): shifting an image by a multiple of it shifts
#: every blob of the net by whole positions, so the net computes the same values there.
GRID_STRIDE = 2 ** len(VGG16_BLOCKS)


def tile_context(variant: str, geometry: str = "reference") -> int:
    """The context a tile needs around a kept part whose ends lie on the grid.

    Tiled inference (``fcn_keras.inference.predict_labels_tiled``) keeps, from each tile, the
    labels of a part that starts and ends at multiples of ``GRID_STRIDE``; a tile reading this
    many pixels beyond both ends gives exactly the whole image's labels there.

    Args:
        variant: one of ``VARIANTS``.
        geometry: ``"reference"`` or ``"same"``.

    Returns:
        Pixels: 221 for the reference geometry (the first kept pixel reads 221 pixels back, the
        last 215 forward), 218 for "same", whatever the variant (fc6 and the final upsampling
        reach farthest; the skips' finer paths reach less far). Any output pixel, off the grid's
        ends, reads at most 233 / 241 / 245 pixels away for FCN-32s / 16s / 8s.
    """
    first, last = dependency_span(variant, geometry)
    edge = 1000 * GRID_STRIDE  # Far from the borders; the pattern repeats every GRID_STRIDE.
    return max(edge - first(edge), last(edge - 1) - (edge - 1))


def dependency_span(variant: str, geometry: str = "reference") -> tuple[Callable[[int], int], Callable[[int], int]]:
    """``(first, last)``: functions giving, for an output pixel ``i`` away from the borders, the
    first and the last input pixel (same axis) that it depends on through the net's kernels."""
    check_variant(variant)
    geo = get_geometry(geometry)

    def conv(blob, kernel: int, stride: int = 1, pad: int = 0):
        first, last = blob
        return (lambda x: first(stride * x - pad), lambda x: last(stride * x - pad + kernel - 1))

    def deconv(blob, kernel: int, stride: int, pad: int):
        first, last = blob
        return (lambda u: first(-((kernel - 1 - u - pad) // stride)), lambda u: last((u + pad) // stride))

    def crop(blob, offset: int):
        first, last = blob
        return (lambda y: first(y + offset), lambda y: last(y + offset))

    def fuse(a, b):
        return (lambda x: min(a[0](x), b[0](x)), lambda x: max(a[1](x), b[1](x)))

    blob = conv((lambda x: x, lambda x: x), 3, pad=geo.input_padding + geo.conv1_1_pad)  # conv1_1
    pools = {}
    for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1):
        for _ in range(convs - 1 if block == 1 else convs):
            blob = conv(blob, 3, pad=1)
        blob = conv(blob, 2, stride=2)  # Ceil mode pads at the end only: no shift.
        pools[block] = blob
    blob = conv(blob, FC6_KERNEL, pad=geo.fc6_pad)  # fc7 and the score layers are 1x1.
    offsets = crop_offsets(variant, geometry)
    for index, block in enumerate(SKIPS[variant]):
        upscore = deconv(blob, SKIP_UPSAMPLE_KERNEL, SKIP_UPSAMPLE_STRIDE, geo.deconv_pad(SKIP_UPSAMPLE_STRIDE))
        offset = offsets[skip_crop_name(variant, index, geometry)]
        if crops_pool_score(geometry):
            blob = fuse(upscore, crop(pools[block], offset))
        else:
            blob = fuse(crop(upscore, offset), pools[block])
    stride = output_stride(variant)
    return crop(deconv(blob, final_upsample_kernel(variant), stride, geo.deconv_pad(stride)), offsets["score"])
