"""The TFRecord schema of fcn-keras, encoded and parsed in one place.

Each record is a ``tf.train.Example`` with these features:

================  ========  ============================================================
key               type      value
================  ========  ============================================================
``image/id``      bytes     the dataset id, e.g. ``b"2007_000032"``
``image/encoded`` bytes     the source image file's bytes, as-is (never re-encoded)
``image/format``  bytes     ``b"jpeg"`` or ``b"png"`` (8-bit PNG images of a dataset of your own)
``image/height``  int64     image height in pixels
``image/width``   int64     image width in pixels
``label/encoded`` bytes     a single-channel 8-bit PNG of class indices (0..C-1, 255 = void)
``label/format``  bytes     ``b"png"``
================  ========  ============================================================
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from fcn_keras.checks import check_choice

#: Version of the record schema, written to every manifest.
SCHEMA_VERSION: int = 1

#: The values of ``image/format``.
IMAGE_FORMATS: tuple[str, ...] = ("jpeg", "png")

FEATURES: dict[str, tf.io.FixedLenFeature] = {
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value=b"jpeg"),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "label/encoded": tf.io.FixedLenFeature([], tf.string),
    "label/format": tf.io.FixedLenFeature([], tf.string, default_value=b"png"),
}


# --- Encoding ---------------------------------------------------------------------------------


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_label_png(label: np.ndarray) -> bytes:
    """Encodes a label map as a single-channel (grayscale, mode ``L``) PNG.

    Args:
        label: uint8 ``[H, W]`` class indices (255 = void).

    Returns:
        The PNG file's bytes; decoding them gives back ``label`` exactly.
    """
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label must be a uint8 [H, W] array. Received: dtype={label.dtype}, shape={label.shape}")
    buffer = io.BytesIO()
    Image.fromarray(label, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_example(
    image_id: str, image_bytes: bytes, label_png: bytes, height: int, width: int, image_format: str = "jpeg"
) -> bytes:
    """Serializes one image/label pair as a ``tf.train.Example``.

    Args:
        image_id: the dataset id of the pair.
        image_bytes: the image file's bytes, stored as-is.
        label_png: a single-channel PNG of class indices (see ``encode_label_png``).
        height: image height in pixels (the label has the same size).
        width: image width in pixels.
        image_format: ``"jpeg"`` or ``"png"``, the format of ``image_bytes``.

    Returns:
        The serialized ``tf.train.Example``, the same bytes in every process: protobuf writes a
        map (``features.feature``) in an order that changes from process to process unless asked
        for its deterministic (key-sorted) serialization, and shard sha256s must be reproducible.
    """
    check_choice("image_format", image_format, IMAGE_FORMATS)
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/id": _bytes_feature(image_id.encode("utf-8")),
                "image/encoded": _bytes_feature(image_bytes),
                "image/format": _bytes_feature(image_format.encode()),
                "image/height": _int_feature(height),
                "image/width": _int_feature(width),
                "label/encoded": _bytes_feature(label_png),
                "label/format": _bytes_feature(b"png"),
            }
        )
    )
    return example.SerializeToString(deterministic=True)


# --- Parsing (tf ops, usable inside tf.data) --------------------------------------------------


def parse_features(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses a serialized record into its raw features, nothing decoded.

    Args:
        serialized: a scalar ``tf.string``.

    Returns:
        The ``FEATURES`` dict of scalar tensors.
    """
    return tf.io.parse_single_example(serialized, FEATURES)


def decode_image(encoded: tf.Tensor, dct_method: str = "", image_format: tf.Tensor | str | None = None) -> tf.Tensor:
    """Decodes a record's image to RGB.

    Args:
        encoded: scalar ``tf.string``, the image file's bytes.
        dct_method: ``""`` (TensorFlow's default, libjpeg's fast integer IDCT ``JDCT_IFAST``:
            identical to ``"INTEGER_FAST"`` and to what ``tf.io.decode_image`` and
            ``fcn_keras.io.read_image`` decode) or ``"INTEGER_ACCURATE"`` (libjpeg's accurate
            ``JDCT_ISLOW``, what PIL decodes; up to 20 levels apart on VOC photos). JPEGs only.
        image_format: the record's ``image/format`` (scalar ``tf.string``); ``None``: JPEG.

    Returns:
        uint8 ``[H, W, 3]``.
    """

    def jpeg() -> tf.Tensor:
        return tf.io.decode_jpeg(encoded, channels=3, dct_method=dct_method)

    if image_format is None:
        image = jpeg()
    else:
        image = tf.cond(tf.equal(image_format, b"png"), lambda: tf.io.decode_png(encoded, channels=3), jpeg)
    image.set_shape([None, None, 3])
    return image


def decode_label(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes a record's label PNG.

    Args:
        encoded: scalar ``tf.string``, single-channel PNG bytes.

    Returns:
        uint8 ``[H, W]`` class indices.
    """
    label = tf.io.decode_png(encoded, channels=1, dtype=tf.uint8)
    label = tf.squeeze(label, axis=-1)
    label.set_shape([None, None])
    return label


def parse_example(serialized: tf.Tensor, dct_method: str = "") -> dict[str, tf.Tensor]:
    """Parses and decodes one record.

    Args:
        serialized: a scalar ``tf.string`` (one ``tf.train.Example``).
        dct_method: JPEG decoding method, see ``decode_image``.

    Returns:
        ``dict(image=uint8 [H, W, 3], label=uint8 [H, W], image_id=tf.string scalar,
        height=int64 scalar, width=int64 scalar)``.
    """
    features = parse_features(serialized)
    return {
        "image": decode_image(features["image/encoded"], dct_method, features["image/format"]),
        "label": decode_label(features["label/encoded"]),
        "image_id": features["image/id"],
        "height": features["image/height"],
        "width": features["image/width"],
    }
