"""Files in and out: trained FCNs, RGB images, VOC-style palette label PNGs, atomic writes;
image sizes written on command lines.

``load_fcn`` loads a ``.keras`` file, or a training run folder (its ``best.keras``, else its
``last.keras``: ``resolve_model_file``), without compiling it, and checks that it is an FCN
(one RGB image input, one ``[B, H, W, classes]`` output), with errors that name the file; the
``Conv2DTranspose`` upsampling layers of files saved by earlier versions become ``Deconvolution``
layers (``upgrade_upsampling``: the same weights and outputs, computed faster).

``read_image`` decodes JPEGs with TensorFlow's decoder and its default settings
(``tf.io.decode_jpeg(channels=3)``, ``dct_method=""``, which TensorFlow maps to libjpeg's
``JDCT_IFAST``), exactly as the training and evaluation pipelines (``fcn_keras.data``) and the
SavedModel's bytes signature (``tf.io.decode_image``) do, so the predict CLI, training and a
served model see the same pixels. PIL's JPEG decoder (libjpeg's default ``JDCT_ISLOW``, what
TensorFlow calls ``INTEGER_ACCURATE``) gives different pixels: up to 20 levels apart on real
VOC photos. BMPs and GIFs are decoded by the SavedModel's own ops (``decode_image_tensor``:
TensorFlow and PIL differ on 8-bit BMP palettes and GIF transparency). Other formats are read
with PIL (PNG is lossless: PIL and TensorFlow give the same pixels), following what
TensorFlow's decoders do with ``channels=3``: grayscale and palette images become RGB, an
alpha channel is dropped. EXIF orientation is not applied. Images that are not 8-bit per
channel (16-bit or float TIFF/PNG) are rejected.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, PngImagePlugin

import fcn_keras.inference  # noqa: F401  (registers ArgmaxLabels, so labels models load too)
from fcn_keras.layers import Deconvolution  # (importing fcn_keras.layers registers the FCN layers for loading)
from fcn_keras.caffe_import import fcn_from_caffemodel
from fcn_keras.console import op_error_reason
from fcn_keras.constants import JPEG_SIGNATURE, VOC_PALETTE, check_palette, png_bit_depth
from fcn_keras.files import atomic_path

logger = logging.getLogger(__name__)

# --- Models ------------------------------------------------------------------------------------


def check_fcn(model: keras.Model, source: str) -> keras.Model:
    """Checks that ``model`` maps RGB images to per-pixel class scores.

    Args:
        model: the model to check.
        source: what to name in the error (a file path).

    Returns:
        ``model``.

    Raises:
        ValueError: the model has not one input ``[B, H, W, 3]`` and one output
            ``[B, H, W, C]`` with ``2 <= C <= 256``, or its output, inferred for a 64x96 image
            (its own size if its input has one), has not the image's size.
    """
    inputs = [tuple(tensor.shape) for tensor in model.inputs]
    outputs = [tuple(tensor.shape) for tensor in model.outputs]
    if len(inputs) != 1 or len(inputs[0]) != 4 or inputs[0][-1] != 3:
        raise ValueError(
            f"{source} is not an FCN: expected one input of shape [B, H, W, 3] (RGB images), "
            f"found inputs {inputs}"
        )
    if len(outputs) != 1 or len(outputs[0]) != 4 or outputs[0][-1] is None or not 2 <= outputs[0][-1] <= 256:
        raise ValueError(
            f"{source} is not an FCN: expected one output of shape [B, H, W, classes] with "
            f"2..256 classes (logits), found outputs {outputs}"
        )
    # Pixel alignment, from Keras' shape inference (no computation): a probe size on the
    # 32-pixel grid, which models that need multiples of their stride accept too. Where Keras
    # cannot infer it (a layer without shape inference, or one that refuses the probe), the
    # model computes it, once, on a black image.
    probe = (1, inputs[0][1] or _PROBE_SIZE[0], inputs[0][2] or _PROBE_SIZE[1], 3)
    try:
        scores = tuple(model.compute_output_shape(probe))
    except Exception:
        try:
            scores = tuple(model(np.zeros(probe, np.uint8), training=False).shape)
        except Exception as error:
            raise ValueError(
                f"{source} is not an FCN: it fails on a {probe[1]}x{probe[2]} image ({type(error).__name__}: "
                f"{_first_reason(error)})"
            ) from error
    if scores[1:3] != probe[1:3]:
        raise ValueError(
            f"{source} is not an FCN: its scores are not pixel-aligned with its input (a {probe[1]}x{probe[2]} "
            f"image gives {scores[1]}x{scores[2]} scores)"
        )
    return model


def _first_reason(error: Exception) -> str:
    """The line of an error that says what is wrong: Keras wraps a layer's error in "Exception
    encountered when calling ...", with the reason in bold on a later line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    return next((line for line in lines if line and not line.startswith("Exception encountered")), "")


#: Height and width of the image whose output shape ``check_fcn`` infers.
_PROBE_SIZE: tuple[int, int] = (64, 96)


#: The checkpoints of a training run folder that a model path may name, in order of preference
#: (``fcn_keras.train`` writes both: the best validation mean IU, and the last epoch's).
RUN_CHECKPOINTS: tuple[str, ...] = ("best.keras", "last.keras")


def resolve_model_file(path: str | os.PathLike) -> Path:
    """The ``.keras`` file that a model path names: the file itself, or a training run folder's
    ``best.keras``, else its ``last.keras`` (``RUN_CHECKPOINTS``).

    Args:
        path: a ``.keras`` file, or a run folder written by ``fcn_keras.train``.

    Returns:
        The file (not checked further: ``load_fcn`` does that).

    Raises:
        FileNotFoundError: ``path`` does not exist, or is a folder holding none of
            ``RUN_CHECKPOINTS`` (the message lists the files looked for).
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / name for name in RUN_CHECKPOINTS]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        if (path / "saved_model.pb").is_file():
            raise FileNotFoundError(
                f"model folder {path} is a SavedModel (fcn_keras.export's), not a Keras model: give its .keras file "
                "or run folder; fcn_keras.predict --model also runs a SavedModel, and evaluate --predictions scores "
                "the label maps it writes"
            )
        raise FileNotFoundError(
            f"model folder {path} holds no trained model: looked for "
            f"{' and '.join(str(c) for c in candidates)}; give a .keras file or a run folder of fcn_keras.train"
        )
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def run_class_names(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names that the training run of a model path recorded (``config.json``'s
    ``class_names`` beside its ``.keras`` file), or ``None`` (another file, or an older run).

    Args:
        path: a ``.keras`` file or a run folder of ``fcn_keras.train``.
    """
    path = Path(path)
    record = (path if path.is_dir() else path.parent) / "config.json"
    try:
        names = json.loads(record.read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return tuple(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) and names else None


def load_fcn(path: str | os.PathLike) -> keras.Model:
    """Loads a ``.keras`` file saved from ``build_fcn`` (under any backend), or converts one of the
    authors' Caffe ``.caffemodel`` files (``fcn_keras.caffe_import``), and checks it.

    The model is loaded with ``compile=False``: the file's training configuration (loss,
    optimizer without its variables) is not needed to predict, and compiling it would only
    make Keras warn that the optimizer's variables are not in the file.

    Args:
        path: a ``.keras`` file, a training run folder (its ``best.keras``, else its
            ``last.keras``; see ``resolve_model_file``), or a ``.caffemodel`` FCN (converted
            on every call, ~13 s for VGG16 sizes: ``python -m fcn_keras.caffe_import`` once
            for repeated use).

    Returns:
        The model (not compiled), mapping RGB ``[B, H, W, 3]`` to logits ``[B, H, W, C]``.

    Raises:
        FileNotFoundError: ``path`` does not exist, or is a folder without those files.
        ValueError: ``path`` is not a ``.keras`` or ``.caffemodel`` file, cannot be loaded, or
            is not an FCN.
    """
    path = resolve_model_file(path)
    if path.suffix == ".caffemodel":
        model, report = fcn_from_caffemodel(path)
        if report["source"] != "FCN":
            raise ValueError(f"{path} holds a VGG16, not a trained FCN: its score layers would be zero")
        return check_fcn(model, str(path))
    if path.suffix != ".keras":
        raise ValueError(f"model must be a .keras file (or an FCN .caffemodel). Received: {path}")
    if not zipfile.is_zipfile(path):  # Keras would call it "File not found".
        raise ValueError(f"cannot load {path} as a Keras model: it is not a .keras archive (not a zip file)")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a corrupt or foreign file.
        raise ValueError(f"cannot load {path} as a Keras model: {type(error).__name__}: {error}") from error
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} is not an FCN: it holds a {type(model).__name__}, not a keras.Model")
    return upgrade_upsampling(check_fcn(model, str(path)), str(path))


def upgrade_upsampling(model: keras.Model, source: str = "the model") -> keras.Model:
    """The same model with its Keras ``Conv2DTranspose`` layers (models saved before
    ``fcn_keras.layers.Deconvolution`` existed) as ``Deconvolution`` layers: the same weights and
    outputs, without the zero-dilated input that makes XLA do s^2 times the work.

    Args:
        model: a functional model; others are returned as they are.
        source: what to name in the log line (a file path).

    Returns:
        ``model`` itself when it has no such layer, else a new model of the same config and
        weights (each layer ``Deconvolution`` cannot compute, e.g. a dilated one, is kept).
    """
    try:
        config = model.get_config()
    except NotImplementedError:  # A subclassed model: nothing to rewrite.
        return model
    swapped = []
    for layer in config.get("layers", []):
        if (layer.get("module"), layer.get("class_name")) != ("keras.layers", "Conv2DTranspose"):
            continue
        try:
            Deconvolution.from_config(layer["config"])
        except ValueError:  # A configuration Deconvolution refuses: keep Conv2DTranspose.
            continue
        layer.update(module="fcn_keras.layers", class_name="Deconvolution", registered_name="fcn_keras>Deconvolution")
        swapped.append(layer["config"]["name"])
    if not swapped:
        return model
    upgraded = model.__class__.from_config(config)
    upgraded.set_weights(model.get_weights())
    logger.info("%s: upsampling layers %s computed as Deconvolution (same weights and outputs)", source, swapped)
    return upgraded


# --- Reading images ----------------------------------------------------------------------------

#: File name endings that a folder given to the predict CLI is searched for (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: 8-bit PIL modes converted to RGB: gray, palette, bilevel, with or without alpha, CMYK, YCbCr.
_CONVERTIBLE_MODES: frozenset[str] = frozenset(
    {"RGB", "RGBA", "RGBa", "RGBX", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr"}
)


#: The first bytes of the files that ``read_image`` decodes with TensorFlow like the SavedModel
#: (``decode_image_tensor``): BMP and GIF, whose TensorFlow decoding differs from PIL's.
TF_DECODED_SIGNATURES: tuple[bytes, ...] = (b"BM", b"GIF8")


def _little_endian(header: tf.Tensor, start: int, size: int) -> tf.Tensor:
    """The unsigned little-endian integer in ``header[start:start + size]`` (uint8), as int32."""
    weights = tf.constant([256**i for i in range(size)], tf.int32)
    return tf.reduce_sum(tf.cast(header[start : start + size], tf.int32) * weights)


def decode_image_tensor(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes one encoded image (JPEG, PNG, BMP, GIF's first frame, WebP) to RGB in TensorFlow
    ops: what the SavedModel's ``predict_image_bytes`` signature and, for BMP and GIF,
    ``read_image`` use, so both give the same pixels.

    ``tf.io.decode_image`` in the file's own channels, then gray replicated and alpha dropped
    (not composited; asking TensorFlow for 3 channels fails on a WebP with alpha), JPEGs with
    the default ``dct_method``, a GIF's transparent pixels black; with one correction: for an
    8-bit BMP TensorFlow returns the palette indices as gray; here they are looked up in the
    file's colour table (BITMAPINFOHEADER or later). 1- and 4-bit BMPs fail in TensorFlow's decoder.

    Args:
        encoded: string scalar, the file's bytes.

    Returns:
        uint8 ``[H, W, 3]``.
    """
    decoded = tf.io.decode_image(encoded, expand_animations=False)  # [H, W, 1 to 4]
    image = tf.cond(tf.shape(decoded)[-1] < 3, lambda: tf.tile(decoded[..., :1], [1, 1, 3]), lambda: decoded[..., :3])
    image.set_shape([None, None, 3])
    # BMP layout: 14-byte file header, then the DIB header (its size in its first 4 bytes, bits
    # per pixel at byte 28, colours used at byte 46), then the table of (blue, green, red, 0).
    padded = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, 54), b"\0" * 54]), 0, 54)
    header = tf.io.decode_raw(padded, tf.uint8)
    dib_size = _little_endian(header, 14, 4)
    paletted = (
        tf.equal(tf.strings.substr(encoded, 0, 2), b"BM")
        & tf.equal(_little_endian(header, 28, 2), 8)
        & tf.greater_equal(dib_size, 40)
    )

    def apply_palette() -> tf.Tensor:
        colours = _little_endian(header, 46, 4)
        colours = tf.where(tf.equal(colours, 0), 256, colours)
        table = tf.io.decode_raw(tf.strings.substr(encoded, 14 + dib_size, 4 * colours), tf.uint8)
        table = tf.reshape(table, [-1, 4])[:, 2::-1]  # BGR0 -> RGB
        indices = tf.minimum(tf.cast(image[..., 0], tf.int32), tf.shape(table)[0] - 1)
        return tf.gather(table, indices)

    return tf.cond(paletted, apply_palette, lambda: image)


def decode_jpeg(encoded: bytes, source: str | os.PathLike = "JPEG data") -> np.ndarray:
    """Decodes JPEG bytes to RGB exactly as the training pipeline and the SavedModel do.

    ``tf.io.decode_jpeg(encoded, channels=3)`` with its default ``dct_method=""``, which
    TensorFlow maps to libjpeg's fast integer IDCT (``JDCT_IFAST``, the same as
    ``"INTEGER_FAST"``); ``tf.io.decode_image`` and ``tf.io.decode_and_crop_jpeg`` decode the
    same pixels. Grayscale and CMYK JPEGs become RGB.

    Args:
        encoded: the JPEG file's bytes.
        source: what to name in the error (the file).

    Returns:
        uint8 ``[H, W, 3]``.

    Raises:
        ValueError: TensorFlow cannot decode the bytes (corrupt or truncated JPEG).
    """
    try:
        return tf.io.decode_jpeg(encoded, channels=3).numpy()
    except tf.errors.OpError as error:
        raise ValueError(f"cannot read image {source}: TensorFlow's JPEG decoder failed: "
                         f"{op_error_reason(error.message)}") from error


#: The TIFF tag of the bits per sample (one value, or one per channel).
_TIFF_BITS_PER_SAMPLE = 258


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB, with the pixels that training and serving decode.

    Args:
        path: a JPEG, PNG, BMP, GIF (first frame), WebP or TIFF file, 8 bits per channel.

    Returns:
        uint8 ``[H, W, 3]``. The format is recognised by the first bytes, not the name. JPEGs
        are decoded by ``decode_jpeg`` (TensorFlow, as ``fcn_keras.data`` and the SavedModel),
        BMPs and GIFs by ``decode_image_tensor`` (TensorFlow, as the SavedModel). Other formats
        are read with PIL (the same pixels as TensorFlow's decoders where it has one): grayscale
        is replicated into the three channels, palette images are expanded, alpha is dropped
        (not composited), CMYK/YCbCr are converted.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded as an image (naming the decoder's reason), or
            is not 8 bits per channel (naming the PIL mode, or the bit depth of a PNG or TIFF).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with open(path, "rb") as file:
        head = file.read(25)  # Enough for the signatures and a PNG's bit depth.
    if head.startswith(JPEG_SIGNATURE):
        return decode_jpeg(path.read_bytes(), path)
    if head.startswith(TF_DECODED_SIGNATURES):
        try:
            return decode_image_tensor(tf.constant(path.read_bytes())).numpy()
        except tf.errors.OpError as error:
            raise ValueError(f"cannot read image {path}: TensorFlow's decoder failed (as the SavedModel's "
                             f"would): {op_error_reason(error.message)}") from error
    depth = png_bit_depth(head)
    if depth is not None and depth > 8:  # PIL reads 16-bit RGB(A) PNGs as 8-bit modes, keeping the high byte.
        raise ValueError(f"cannot use image {path}: expected 8 bits per channel, found a {depth}-bit PNG")
    try:
        with Image.open(path) as image:
            image.load()  # Decode now: a truncated file fails here, not later.
            bits = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE, 8) if image.format == "TIFF" else 8
            if max(bits if isinstance(bits, tuple) else (bits,)) > 8:  # PIL keeps the high byte of 16-bit RGB(A).
                raise ValueError(f"cannot use image {path}: expected 8 bits per channel, found a TIFF of {bits} bits "
                                 "per sample")
            if image.mode not in _CONVERTIBLE_MODES:
                raise ValueError(
                    f"cannot use image {path}: expected 8 bits per channel (gray, RGB, RGBA or "
                    f"palette), found PIL mode {image.mode!r}"
                )
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError.
        raise ValueError(f"cannot read image {path}: {error}") from error
    return array


# --- Writing -----------------------------------------------------------------------------------


def write_label_png(labels: np.ndarray, path: str | os.PathLike, palette: np.ndarray = VOC_PALETTE) -> Path:
    """Writes a label map as a palette (mode ``P``) PNG, by default with the VOC colours like
    VOC's ``SegmentationClass`` files: pixel values are the class indices, viewers show colours.

    Args:
        labels: uint8 ``[H, W]`` class indices (255 = void).
        path: the ``.png`` file to write (atomically).
        palette: uint8 ``[256, 3]``, the colour of each label value (a dataset's own:
            ``fcn_keras.data.voc.LabelColours.palette``).

    Returns:
        ``path`` as a ``Path``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(
            f"labels must be a uint8 [H, W] label map. Received: shape {labels.shape}, dtype {labels.dtype}"
        )
    png = Image.fromarray(labels, mode="P")
    png.putpalette(check_palette(palette).reshape(-1).tolist())
    return _atomic_save(png, Path(path), "PNG")


#: The longest side a JPEG can hold (libjpeg's JPEG_MAX_DIMENSION).
_JPEG_MAX_SIDE = 65500


def write_image(image: np.ndarray, path: str | os.PathLike, quality: int = 90) -> Path:
    """Writes an RGB image as JPEG or PNG, chosen by the file's extension (atomically).

    Args:
        image: uint8 ``[H, W, 3]``.
        path: a ``.jpg``/``.jpeg`` or ``.png`` file.
        quality: JPEG quality (1..95), unused for PNG.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
    if path.suffix.lower() not in formats:
        raise ValueError(f"path must end in .jpg, .jpeg or .png. Received: path={str(path)!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 [H, W, 3]. Received: shape {image.shape}, dtype {image.dtype}"
        )
    if formats[path.suffix.lower()] == "JPEG" and max(image.shape[:2]) > _JPEG_MAX_SIDE:  # libjpeg's limit
        raise ValueError(f"cannot write {path}: a JPEG holds at most {_JPEG_MAX_SIDE} pixels a side, this image is "
                         f"{image.shape[0]}x{image.shape[1]}; write a PNG (e.g. --overlay_format=png)")
    options = {"quality": quality} if formats[path.suffix.lower()] == "JPEG" else {}
    return _atomic_save(Image.fromarray(image, mode="RGB"), path, formats[path.suffix.lower()], **options)


#: The mark ``write_label_png`` and ``write_image`` leave in their files (a PNG ``Software`` text
#: chunk, a JPEG comment), so a later run can tell its own outputs from other files.
WRITER_MARK: str = "fcn-keras"


def _atomic_save(image: Image.Image, path: Path, image_format: str, **options) -> Path:
    """Saves to a temporary file beside ``path``, then renames it (no half-written files); marks
    the file with ``WRITER_MARK``."""
    if image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", WRITER_MARK)
        options["pnginfo"] = info
    else:
        options["comment"] = WRITER_MARK.encode()
    with atomic_path(path) as temp, open(temp, "xb") as file:
        image.save(file, format=image_format, **options)
    return path


def written_here(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an image that ``write_label_png`` or ``write_image`` wrote (it holds
    ``WRITER_MARK``). False for other images, other files and missing paths."""
    try:
        with Image.open(path) as image:
            mark = image.info.get("Software") if image.format == "PNG" else image.info.get("comment")
    except (OSError, Image.DecompressionBombError):
        return False
    return mark in (WRITER_MARK, WRITER_MARK.encode())
