"""Files in and out: trained FCNs, RGB images, VOC-style palette label PNGs, atomic writes;
image sizes written on command lines.

``load_fcn`` loads a ``.keras`` file, or a training run folder (its ``best.keras``, else its
``last.keras``: ``resolve_model_file``), without compiling it, and checks that it is an FCN
(one RGB image input, one ``[B, H, W, classes]`` output), with errors that name the file.

``read_image`` decodes JPEGs with TensorFlow's decoder and its default settings
(``tf.io.decode_jpeg(channels=3)``, ``dct_method=""``, which TensorFlow maps to libjpeg's
``JDCT_IFAST``), exactly as the training and evaluation pipelines (``fcn_keras.data``) and the
SavedModel's bytes signature (``tf.io.decode_image``) do, so the predict CLI, training and a
served model see the same pixels. PIL's JPEG decoder (libjpeg's default ``JDCT_ISLOW``, what
TensorFlow calls ``INTEGER_ACCURATE``) gives different pixels: up to 20 levels apart on real
VOC photos. Other formats are read with PIL (PNG, BMP and GIF are lossless: PIL and
TensorFlow give the same pixels), following what TensorFlow's decoders do with
``channels=3``: grayscale and palette images become RGB, an alpha channel is dropped. EXIF
orientation is not applied. Images that are not 8-bit per channel (16-bit or float TIFF/PNG)
are rejected.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

import fcn_keras.inference  # noqa: F401  (registers ArgmaxLabels, so labels models load too)
import fcn_keras.layers  # noqa: F401  (registers the FCN layers for loading)
from fcn_keras.constants import VOC_PALETTE
from fcn_keras.files import atomic_path

# --- Sizes -------------------------------------------------------------------------------------


def parse_size(text: str, name: str = "size") -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"375x500"`` -> (375, 500) (height x width).

    Args:
        text: the size as written on a command line.
        name: what to name in the error (e.g. ``"--canvas"``).

    Returns:
        ``(height, width)``, ints >= 1.

    Raises:
        ValueError: ``text`` is not N or HxW with positive integers.
    """
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise ValueError(f"{name} must be N or HxW with positive integers. Received: {text!r}")
    return dims


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
            ``[B, H, W, C]`` with ``2 <= C <= 256``.
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
    return model


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
        raise FileNotFoundError(
            f"model folder {path} holds no trained model: looked for "
            f"{' and '.join(str(c) for c in candidates)}; give a .keras file or a run folder of fcn_keras.train"
        )
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def load_fcn(path: str | os.PathLike) -> keras.Model:
    """Loads a ``.keras`` file saved from ``build_fcn`` (under any backend) and checks it.

    The model is loaded with ``compile=False``: the file's training configuration (loss,
    optimizer without its variables) is not needed to predict, and compiling it would only
    make Keras warn that the optimizer's variables are not in the file.

    Args:
        path: a ``.keras`` file, or a training run folder (its ``best.keras``, else its
            ``last.keras``; see ``resolve_model_file``).

    Returns:
        The model (not compiled), mapping RGB ``[B, H, W, 3]`` to logits ``[B, H, W, C]``.

    Raises:
        FileNotFoundError: ``path`` does not exist, or is a folder without those files.
        ValueError: ``path`` is not a ``.keras`` file, cannot be loaded, or is not an FCN.
    """
    path = resolve_model_file(path)
    if path.suffix != ".keras":
        raise ValueError(f"model must be a .keras file. Received: {path}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a corrupt or foreign file.
        raise ValueError(f"cannot load {path} as a Keras model: {type(error).__name__}: {error}") from error
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path} is not an FCN: it holds a {type(model).__name__}, not a keras.Model")
    return check_fcn(model, str(path))


# --- Reading images ----------------------------------------------------------------------------

#: File name endings that a folder given to the predict CLI is searched for (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

#: 8-bit PIL modes converted to RGB: gray, palette, bilevel, with or without alpha, CMYK, YCbCr.
_CONVERTIBLE_MODES: frozenset[str] = frozenset(
    {"RGB", "RGBA", "RGBa", "RGBX", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr"}
)


#: The first bytes of every JPEG file (SOI marker, then a marker's 0xFF): how ``read_image`` and
#: ``tf.io.decode_image`` recognise a JPEG, whatever the file's name.
JPEG_SIGNATURE: bytes = b"\xff\xd8\xff"


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
        # "{{function_node ...}} jpeg::Uncompress failed. Invalid JPEG data ... [Op:DecodeJpeg]"
        reason = error.message.rsplit("}}", 1)[-1].split(" [Op:", 1)[0].strip()
        raise ValueError(f"cannot read image {source}: TensorFlow's JPEG decoder failed: {reason}") from error


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as RGB, JPEGs exactly as training and serving decode them.

    Args:
        path: a JPEG, PNG, BMP, GIF (first frame), WebP or TIFF file, 8 bits per channel.

    Returns:
        uint8 ``[H, W, 3]``. JPEGs (recognised by their first bytes, not their name) are
        decoded by ``decode_jpeg`` (TensorFlow, as ``fcn_keras.data`` and the SavedModel).
        Other formats are read with PIL: grayscale is replicated into the three channels,
        palette images are expanded, alpha is dropped (not composited), CMYK/YCbCr are
        converted.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be decoded as an image, or is not 8 bits per channel
            (the message names the file and its PIL mode).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with open(path, "rb") as file:
        is_jpeg = file.read(len(JPEG_SIGNATURE)) == JPEG_SIGNATURE
    if is_jpeg:
        return decode_jpeg(path.read_bytes(), path)
    try:
        with Image.open(path) as image:
            image.load()  # Decode now: a truncated file fails here, not later.
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


def write_label_png(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes a label map as a palette (mode ``P``) PNG with the VOC colours, like VOC's
    ``SegmentationClass`` files: pixel values are the class indices, viewers show colours.

    Args:
        labels: uint8 ``[H, W]`` class indices (255 = void).
        path: the ``.png`` file to write (atomically).

    Returns:
        ``path`` as a ``Path``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(
            f"labels must be a uint8 [H, W] label map. Received: shape {labels.shape}, dtype {labels.dtype}"
        )
    png = Image.fromarray(labels, mode="P")
    png.putpalette(VOC_PALETTE.reshape(-1).tolist())
    return _atomic_save(png, Path(path), "PNG")


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
    options = {"quality": quality} if formats[path.suffix.lower()] == "JPEG" else {}
    return _atomic_save(Image.fromarray(image, mode="RGB"), path, formats[path.suffix.lower()], **options)


def _atomic_save(image: Image.Image, path: Path, image_format: str, **options) -> Path:
    """Saves to a temporary file beside ``path``, then renames it (no half-written files)."""
    with atomic_path(path) as temp, open(temp, "xb") as file:
        image.save(file, format=image_format, **options)
    return path
