"""The record schema: encode/parse round trips exactly, and real VOC pairs survive conversion
pixel for pixel (JPEG decoded as the pipeline does, palette PNGs read as indices)."""

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn_keras.constants import VOC_CLASSES
from fcn_keras.data import records
from fcn_keras.data.convert import convert


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_encode_parse_round_trip_is_exact():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (23, 41, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 1, 7, 20, 255], np.uint8), (23, 41))
    jpeg = _jpeg_bytes(image)
    serialized = records.encode_example("2007_000032", jpeg, records.encode_label_png(label), 23, 41)
    parsed = records.parse_example(tf.constant(serialized))
    assert parsed["image"].dtype == tf.uint8 and parsed["label"].dtype == tf.uint8
    # The JPEG is stored as-is: parsing decodes exactly what decoding the file gives.
    np.testing.assert_array_equal(parsed["image"].numpy(), tf.io.decode_jpeg(jpeg, channels=3).numpy())
    np.testing.assert_array_equal(parsed["label"].numpy(), label)
    assert parsed["image_id"].numpy() == b"2007_000032"
    assert (int(parsed["height"]), int(parsed["width"])) == (23, 41)
    raw = records.parse_features(tf.constant(serialized))
    assert raw["image/encoded"].numpy() == jpeg
    assert raw["image/format"].numpy() == b"jpeg" and raw["label/format"].numpy() == b"png"
    # A record written before image/format existed (JPEG only, then) is decoded as a JPEG, by
    # the method asked for (TensorFlow's PNG decoder would read the JPEG too, by its default one).
    example = tf.train.Example.FromString(serialized)
    del example.features.feature["image/format"]
    del example.features.feature["label/format"]
    raw = records.parse_features(tf.constant(example.SerializeToString()))
    assert raw["image/format"].numpy() == b"jpeg" and raw["label/format"].numpy() == b"png"
    older = records.parse_example(tf.constant(example.SerializeToString()), dct_method="INTEGER_ACCURATE")
    accurate = tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    assert (accurate != parsed["image"].numpy()).any()
    np.testing.assert_array_equal(older["image"].numpy(), accurate)


_ENCODE_IN_A_PROCESS = """
import hashlib
from fcn_keras.data import records
print(hashlib.sha256(records.encode_example("2007_000032", b"jpeg", b"png", 3, 4, "png")).hexdigest())
"""


def test_encoding_gives_the_same_bytes_in_every_process():
    """Protobuf's map order changes between processes: shard sha256s (the manifest's, the
    resume check's) must not."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    children = [subprocess.Popen([sys.executable, "-c", _ENCODE_IN_A_PROCESS], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True) for _ in range(3)]
    digests = {child.communicate(timeout=300)[0].strip() for child in children}
    here = hashlib.sha256(records.encode_example("2007_000032", b"jpeg", b"png", 3, 4, "png")).hexdigest()
    assert digests == {here}


def test_parse_example_works_inside_tf_data():
    label = np.full((5, 6), 255, np.uint8)
    serialized = records.encode_example("a", _jpeg_bytes(np.zeros((5, 6, 3), np.uint8)), records.encode_label_png(label), 5, 6)
    dataset = tf.data.Dataset.from_tensors(serialized).map(records.parse_example)
    element = next(iter(dataset))
    assert element["image"].shape == (5, 6, 3)
    np.testing.assert_array_equal(element["label"].numpy(), label)


def test_png_images_round_trip_and_other_formats_are_refused():
    """8-bit PNG images of a dataset of your own, RGB or grayscale, decode to RGB exactly."""
    rng = np.random.default_rng(1)
    rgb, gray = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8), rng.integers(0, 256, (7, 9), dtype=np.uint8)
    label_png = records.encode_label_png(np.zeros((7, 9), np.uint8))
    for image, expected in ((rgb, rgb), (gray, np.repeat(gray[..., None], 3, axis=-1))):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        serialized = tf.constant(records.encode_example("own_1", buffer.getvalue(), label_png, 7, 9, "png"))
        # Recorded as PNG (TensorFlow's JPEG decoder would read a PNG too: the feature must say it).
        assert records.parse_features(serialized)["image/format"].numpy() == b"png"
        np.testing.assert_array_equal(records.parse_example(serialized)["image"].numpy(), expected)
    with pytest.raises(ValueError, match=r"^image_format must be one of \('jpeg', 'png'\)\. Received: image_format='bmp'$"):
        records.encode_example("own_1", b"BM", label_png, 7, 9, "bmp")


def test_label_png_is_single_channel_and_checked():
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with Image.open(io.BytesIO(records.encode_label_png(label))) as png:
        assert png.mode == "L"
        np.testing.assert_array_equal(np.array(png), label)
    with pytest.raises(ValueError, match=r"label must be a uint8 \[H, W\] array. Received: dtype=int64"):
        records.encode_label_png(label.astype(np.int64))
    with pytest.raises(ValueError, match="shape=\\(3, 4, 1\\)"):
        records.encode_label_png(label[..., None])


# --- Real VOC 2012 (../shared) ----------------------------------------------------------------


def test_real_voc_records_decode_to_the_source_pixels_and_indices(shared_dir, tmp_path):
    voc_root = shared_dir / "voc2012" / "VOCdevkit"
    manifest = convert(voc_root, tmp_path, splits=("train", "val"), max_images=3, shard_size=2, verbose=False)
    assert [manifest["splits"][s]["num_examples"] for s in ("train", "val")] == [3, 3]
    checked = 0
    for split, entry in manifest["splits"].items():
        assert len(entry["shards"]) == 2
        listed = (voc_root / "VOC2012/ImageSets/Segmentation" / f"{split}.txt").read_text().split()[:3]
        ids = []
        for shard in entry["shards"]:
            assert hashlib.sha256((tmp_path / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
            for serialized in tf.data.TFRecordDataset(str(tmp_path / shard["name"])):
                parsed = records.parse_example(serialized)
                image_id = parsed["image_id"].numpy().decode()
                ids.append(image_id)
                jpeg = (voc_root / "VOC2012/JPEGImages" / f"{image_id}.jpg").read_bytes()
                np.testing.assert_array_equal(parsed["image"].numpy(), tf.io.decode_jpeg(jpeg, channels=3).numpy())
                with Image.open(voc_root / "VOC2012/SegmentationClass" / f"{image_id}.png") as png:
                    assert png.mode == "P"
                    indices = np.array(png)
                np.testing.assert_array_equal(parsed["label"].numpy(), indices)
                assert (int(parsed["height"]), int(parsed["width"])) == indices.shape
                checked += 1
        assert ids == listed
    assert checked == 6


def test_real_voc_as_a_dataset_of_your_own_gives_the_same_records(shared_dir, tmp_path):
    """VOC's folders passed as a dataset of your own (its 21 names): byte-identical shards, and
    the class pixel counts of the masks."""
    voc_dir = shared_dir / "voc2012" / "VOCdevkit" / "VOC2012"
    as_voc = convert(voc_dir.parent, tmp_path / "voc", splits=("val",), max_images=4, verbose=False)
    own = convert(None, tmp_path / "own", images_dir=voc_dir / "JPEGImages", labels_dir=voc_dir / "SegmentationClass",
                  lists_dir=voc_dir / "ImageSets/Segmentation", class_names=VOC_CLASSES, splits=("val",), max_images=4,
                  verbose=False)
    (shard,) = own["splits"]["val"]["shards"]
    assert (tmp_path / "own" / shard["name"]).read_bytes() == (tmp_path / "voc" / shard["name"]).read_bytes()
    counts = np.zeros(256, np.int64)
    for image_id in (voc_dir / "ImageSets/Segmentation/val.txt").read_text().split()[:4]:
        with Image.open(voc_dir / "SegmentationClass" / f"{image_id}.png") as png:
            counts += np.bincount(np.array(png).ravel(), minlength=256)
    for manifest in (as_voc, own):
        assert manifest["splits"]["val"]["class_pixels"] == counts[:21].tolist()
        assert manifest["splits"]["val"]["void_pixels"] == counts[255] > 0
