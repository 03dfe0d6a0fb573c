"""The tf.data pipelines: exact whole images for eval (padding PAD_RGB / 255 when batched or on a
canvas), the
paper's and the modern training setups (window, padding, nearest-neighbour labels, alignment,
flip), determinism by seed, resolve_data, and model.fit under TensorFlow and JAX."""

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf
from PIL import Image

from fcn_keras.constants import IGNORE_LABEL, PAD_RGB
from fcn_keras.data import pipeline, records
from fcn_keras.data.convert import convert
from fcn_keras.data.synthetic import make_synthetic_voc
from fcn_keras.model import build_fcn

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A converted synthetic VOC (train 6, val 4, 2 shards each) and its source pairs by id."""
    root = make_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=6, num_val=4, size=(40, 48), seed=5)
    out = tmp_path_factory.mktemp("records")
    convert(root, out, shard_size=3, verbose=False)
    sources = {}
    for jpeg in sorted((root / "VOC2012/JPEGImages").glob("*.jpg")):
        image = tf.io.decode_jpeg(jpeg.read_bytes(), channels=3).numpy()
        label = np.array(Image.open(root / "VOC2012/SegmentationClass" / f"{jpeg.stem}.png"))
        sources[jpeg.stem] = (image, label)
    return {"root": root, "out": out, "train": str(out / "train-*"), "val": str(out / "val-*"), "sources": sources}


def _single_pair_records(tmp_path: Path, image: np.ndarray, label: np.ndarray) -> str:
    """One record holding ``image`` (JPEG quality 100) and ``label``; returns its path."""
    jpeg = tmp_path / "pair.jpg"
    Image.fromarray(image).save(jpeg, format="JPEG", quality=100)
    path = tmp_path / "pair.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(records.encode_example("pair", jpeg.read_bytes(), records.encode_label_png(label), *label.shape))
    return str(path)


def _find_offset(window: np.ndarray, label: np.ndarray) -> tuple[int, int]:
    """Where the whole of ``label`` sits inside ``window`` (exactly), asserting exactly one place."""
    h, w = label.shape
    places = [
        (y, x)
        for y in range(window.shape[0] - h + 1)
        for x in range(window.shape[1] - w + 1)
        if np.array_equal(window[y : y + h, x : x + w], label)
    ]
    assert len(places) == 1, places
    return places[0]


# --- Evaluation -------------------------------------------------------------------------------


def test_eval_yields_every_whole_image_exactly_in_order(data):
    val_ids = (data["root"] / "VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    batches = list(pipeline.eval_dataset(data["val"]))
    assert len(batches) == len(val_ids)
    for (image, label), image_id in zip(batches, val_ids):
        assert image.dtype == tf.uint8 and label.dtype == tf.uint8
        np.testing.assert_array_equal(image.numpy()[0], data["sources"][image_id][0])
        np.testing.assert_array_equal(label.numpy()[0], data["sources"][image_id][1])


def test_eval_batches_pad_labels_with_void_and_images_with_the_mean_colour(data):
    val_ids = (data["root"] / "VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    batches = list(pipeline.eval_dataset(data["val"], batch_size=3))
    assert [int(b[0].shape[0]) for b in batches] == [3, 1]
    images = [im for b in batches for im in b[0].numpy()]
    labels = [lb for b in batches for lb in b[1].numpy()]
    padded = 0
    for image, label, image_id in zip(images, labels, val_ids):
        source_image, source_label = data["sources"][image_id]
        h, w = source_label.shape
        np.testing.assert_array_equal(image[:h, :w], source_image)
        np.testing.assert_array_equal(label[:h, :w], source_label)
        assert (label[h:] == IGNORE_LABEL).all() and (label[:, w:] == IGNORE_LABEL).all()
        assert (image[h:] == PAD_RGB).all() and (image[:, w:] == PAD_RGB).all()
        padded += label.size - h * w
    assert padded > 0  # sizes differ, so some padding happened
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1. Received: batch_size=0"):
        pipeline.eval_dataset(data["val"], batch_size=0)


def test_eval_canvas_gives_one_shape_and_the_sizes_of_the_images(data):
    val_ids = (data["root"] / "VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    batches = list(pipeline.eval_dataset(data["val"], batch_size=3, canvas=(50, 60), with_sizes=True))
    assert [tuple(b[0].shape) for b in batches] == [(3, 50, 60, 3), (1, 50, 60, 3)]
    assert [tuple(b[1].shape) for b in batches] == [(3, 50, 60), (1, 50, 60)]
    items = [(im, lb, sz) for b in batches for im, lb, sz in zip(*(t.numpy() for t in b))]
    for (image, label, size), image_id in zip(items, val_ids):
        source_image, source_label = data["sources"][image_id]
        h, w = source_label.shape
        assert tuple(size) == (h, w)
        np.testing.assert_array_equal(image[:h, :w], source_image)
        np.testing.assert_array_equal(label[:h, :w], source_label)
        assert (label[h:] == IGNORE_LABEL).all() and (label[:, w:] == IGNORE_LABEL).all()
        assert (image[h:] == PAD_RGB).all() and (image[:, w:] == PAD_RGB).all()
    # Batch 1 on a canvas is padded too; without a canvas sizes come with exact images.
    image, label, size = next(iter(pipeline.eval_dataset(data["val"], canvas=(50, 60), with_sizes=True)))
    assert image.shape == (1, 50, 60, 3) and tuple(size.numpy()[0]) == data["sources"][val_ids[0]][1].shape
    # fill_last_batch: the last batch is filled up with blank images, all padding and void.
    filled = list(pipeline.eval_dataset(data["val"], batch_size=3, canvas=(50, 60), with_sizes=True, with_ids=True,
                                        fill_last_batch=True))
    assert [tuple(b[0].shape) for b in filled] == [(3, 50, 60, 3), (3, 50, 60, 3)]
    assert [tuple(b[1].shape) for b in filled] == [(3, 50, 60), (3, 50, 60)]
    image, label, size, ids = (t.numpy() for t in filled[1])
    np.testing.assert_array_equal(image[0], batches[1][0].numpy()[0])
    assert ids.tolist() == [val_ids[3].encode(), b"", b""] and size[1:].tolist() == [[0, 0], [0, 0]]
    assert (image[1:] == PAD_RGB).all() and (label[1:] == IGNORE_LABEL).all()
    with pytest.raises(ValueError, match=r"fill_last_batch needs a canvas"):
        pipeline.eval_dataset(data["val"], batch_size=3, fill_last_batch=True)


def test_eval_canvas_smaller_than_an_image_is_a_clear_error(data):
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape("larger than the canvas (20, 20)")):
        list(pipeline.eval_dataset(data["val"], canvas=(20, 20)))
    for bad in [(0, 10), (10,), (10.5, 10)]:
        with pytest.raises(ValueError, match=re.escape(f"canvas must be None or (height, width) with integers >= 1. Received: canvas={bad!r}")):
            pipeline.eval_dataset(data["val"], canvas=bad)


def test_oversized_images_are_found_from_the_size_fields_in_file_order(data):
    val_ids = (data["root"] / "VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    sizes = [data["sources"][image_id][1].shape for image_id in val_ids]
    height, width = sorted(sizes)[1]  # A canvas that the smallest two heights fit (and the widths all fit).
    canvas = (height, max(w for _, w in sizes))
    expected = [(image_id, h, w) for image_id, (h, w) in zip(val_ids, sizes) if h > canvas[0]]
    assert expected and len(expected) < len(val_ids)
    assert pipeline.oversized_images(data["val"], canvas) == expected
    assert pipeline.oversized_images(data["val"], canvas, limit=2) == [item for item in expected if item[0] in val_ids[:2]]
    assert pipeline.oversized_images(data["val"], (canvas[0], min(w for _, w in sizes) - 1)) == [
        (image_id, h, w) for image_id, (h, w) in zip(val_ids, sizes)]  # Too narrow for all.


def test_no_matching_files_is_a_clear_error(tmp_path):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(ValueError, match=re.escape(f"file_pattern matches no TFRecord file. Received: file_pattern='{pattern}'")):
        pipeline.train_dataset(pattern)
    with pytest.raises(ValueError, match="matches no TFRecord file"):
        pipeline.eval_dataset(pattern)


# --- Training: the paper's setup --------------------------------------------------------------


def test_paper_mode_whole_images_batch_one(data):
    dataset = pipeline.train_dataset(data["train"], scale_range=None, flip=False, seed=0, repeat=False)
    seen = []
    for image, label in dataset:
        assert image.shape[0] == 1 and image.shape[1:3] == label.shape[1:3]
        match = [i for i, (im, lb) in data["sources"].items() if np.array_equal(lb, label.numpy()[0]) and np.array_equal(im, image.numpy()[0])]
        seen += match
    train_ids = (data["root"] / "VOC2012/ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(seen) == train_ids  # each training image once per epoch, untouched
    with pytest.raises(ValueError, match=r"batch_size must be 1 with whole images \(crop_size=None, the paper's setup\)"):
        pipeline.train_dataset(data["train"], batch_size=2)


def test_paper_mode_scaling_keeps_labels_nearest(tmp_path):
    label = np.zeros((30, 40), np.uint8)
    label[:, 20:] = 7
    label[10:20, 5:15] = IGNORE_LABEL
    image = np.stack([label * 20] * 3, axis=-1).astype(np.uint8)
    dataset = pipeline.train_dataset(_single_pair_records(tmp_path, image, label), scale_range=(0.5, 2.0), flip=False, seed=3)
    sizes = set()
    for image_out, label_out in dataset.take(24):
        h, w = label_out.shape[1:]
        assert abs(h / 30 - w / 40) < 0.05  # one scale factor for both sides
        assert set(np.unique(label_out.numpy()).tolist()) <= {0, 7, IGNORE_LABEL}
        sizes.add((h, w))
    assert len(sizes) > 3
    # The factors stay within scale_range (30 * 0.5 = 15 to 30 * 2 = 60 rows) and spread over it.
    heights = sorted(h for h, _ in sizes)
    assert 15 <= heights[0] < 24 and 45 < heights[-1] <= 60, heights


def test_paper_mode_scaling_equals_a_nearest_resize_of_the_whole_label(tmp_path):
    """Whole scaled images sample the label exactly as one nearest resize to their size would,
    also where round(size * scale) rounds down (61 * 0.368 -> 22): no source row or column dropped."""
    label = np.random.default_rng(0).integers(0, 21, size=(61, 83)).astype(np.uint8)
    image = np.random.default_rng(1).integers(0, 256, size=(61, 83, 3)).astype(np.uint8)
    path = _single_pair_records(tmp_path, image, label)
    source = tf.io.decode_jpeg((tmp_path / "pair.jpg").read_bytes(), channels=3)
    dataset = pipeline.train_dataset(path, scale_range=(0.3, 0.45), flip=False, seed=1)
    for image_out, label_out in dataset.take(16):
        expected = tf.image.resize(label[..., None], label_out.shape[1:], method="nearest")[..., 0]
        np.testing.assert_array_equal(label_out[0], expected)
        # The image: bilinear without antialiasing (as Caffe's and the evaluation's), rounded.
        resized = tf.image.resize(source, label_out.shape[1:], method="bilinear", antialias=False)
        np.testing.assert_array_equal(image_out[0], tf.cast(resized + 0.5, tf.uint8))
    # The scaled size is rounded, not truncated: 61 x 83 at 0.37 is 22.57 x 30.71 -> 23 x 31.
    fixed = pipeline.train_dataset(path, scale_range=(0.37, 0.37), flip=False, seed=1)
    assert [tuple(label.shape[1:]) for _, label in fixed.take(2)] == [(23, 31)] * 2


# --- Training: the modern setup ---------------------------------------------------------------


def test_modern_mode_fixed_batches_and_valid_labels(data):
    dataset = pipeline.train_dataset(data["train"], batch_size=4, crop_size=32, seed=1)
    valid = set(range(21)) | {IGNORE_LABEL}
    for image, label in dataset.take(3):
        assert image.shape == (4, 32, 32, 3) and label.shape == (4, 32, 32)
        assert image.dtype == tf.uint8 and label.dtype == tf.uint8
        assert set(np.unique(label.numpy()).tolist()) <= valid
    # A finite dataset drops the last incomplete batch: 6 images give one batch of 4.
    assert [int(b[0].shape[0]) for b in pipeline.train_dataset(data["train"], batch_size=4, crop_size=32, repeat=False)] == [4]


def test_crop_larger_than_image_pads_image_mean_colour_label_void(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([1, 2, 3], np.uint8), (20, 24))
    image = (rng.integers(30, 220, (20, 24, 3))).astype(np.uint8)
    path = _single_pair_records(tmp_path, image, label)
    source = tf.io.decode_jpeg(Path(tmp_path / "pair.jpg").read_bytes(), channels=3).numpy()
    offsets = set()
    for image_out, label_out in pipeline.train_dataset(path, crop_size=32, batch_size=1, scale_range=None, flip=False, seed=4).take(6):
        image_out, label_out = image_out.numpy()[0], label_out.numpy()[0]
        y, x = _find_offset(label_out, label)
        offsets.add((y, x))
        # At scale 1 the window samples integer pixels: the image is copied exactly.
        np.testing.assert_array_equal(image_out[y : y + 20, x : x + 24], source)
        outside = np.ones((32, 32), bool)
        outside[y : y + 20, x : x + 24] = False
        assert (label_out[outside] == IGNORE_LABEL).all() and (image_out[outside] == PAD_RGB).all()
    assert len(offsets) > 1  # the image lands at random places in the window


def test_scaled_crops_keep_labels_nearest_and_aligned(tmp_path):
    # Flat regions: class c is painted grey 20*c, so each label tells the colour expected under it.
    label = np.zeros((48, 64), np.uint8)
    label[8:40, 8:30] = 3
    label[8:40, 34:60] = 9
    label[:, :2] = IGNORE_LABEL
    image = np.stack([np.where(label == IGNORE_LABEL, 250, label * 20)] * 3, axis=-1).astype(np.uint8)
    path = _single_pair_records(tmp_path, image, label)
    checked = 0
    for image_out, label_out in pipeline.train_dataset(path, crop_size=40, batch_size=2, scale_range=(0.5, 2.0), seed=7).take(8):
        image_out, label_out = image_out.numpy().astype(int), label_out.numpy()
        assert set(np.unique(label_out).tolist()) <= {0, 3, 9, IGNORE_LABEL}  # no interpolated classes
        for cls in (0, 3, 9):
            # Away from edges (2 px), the image under class c has c's grey: image and label aligned.
            inner = scipy.ndimage.minimum_filter(label_out == cls, size=(1, 5, 5), mode="constant", cval=False)
            if inner.any():
                assert np.abs(image_out[inner] - 20 * cls).max() <= 16, cls  # JPEG ringing; greys are 60+ apart
                checked += 1
    assert checked >= 10


def test_flip_mirrors_image_and_label_together(tmp_path):
    label = np.zeros((16, 20), np.uint8)
    label[:, :10] = 5
    image = np.stack([label * 40] * 3, axis=-1).astype(np.uint8)
    path = _single_pair_records(tmp_path, image, label)
    flipped = 0
    for image_out, label_out in pipeline.train_dataset(path, scale_range=None, flip=True, seed=2).take(16):
        label_out, image_out = label_out.numpy()[0], image_out.numpy()[0].astype(int)
        mirrored = label_out[0, -1] == 5
        np.testing.assert_array_equal(label_out, label[:, ::-1] if mirrored else label)
        assert (image_out[:, 0] > 100).all() != mirrored  # the bright half moves with the label
        flipped += mirrored
    assert 0 < flipped < 16


def test_deterministic_mode_repeats_exactly_and_seeds_differ(data):
    def first_batches(seed):
        dataset = pipeline.train_dataset(data["train"], batch_size=2, crop_size=24, seed=seed, deterministic=True)
        return [np.concatenate([x.numpy().ravel(), y.numpy().ravel()]) for x, y in dataset.take(4)]

    run_a, run_b, other = first_batches(11), first_batches(11), first_batches(12)
    for a, b in zip(run_a, run_b):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(run_a, other))
    # Across epochs the order and augmentation change.
    epochs = list(pipeline.train_dataset(data["train"], batch_size=2, crop_size=24, seed=11, deterministic=True).take(6))
    assert not np.array_equal(epochs[0][1].numpy(), epochs[3][1].numpy())


def test_shards_are_read_in_a_seeded_order_several_at_a_time(tmp_path):
    """Without the record buffer (shuffle_buffer=0): the shards' order is shuffled by the seed
    and their records interleaved, a record of each shard in turn (found by review: neither
    was tested, the 2,048-record buffer hid both)."""
    label = records.encode_label_png(np.zeros((2, 2), np.uint8))
    for shard in range(4):
        with tf.io.TFRecordWriter(str(tmp_path / f"train-{shard:05d}-of-00004.tfrecord")) as writer:
            for i in range(3):
                image = io.BytesIO()
                Image.fromarray(np.full((2, 2, 3), [shard, i, 0], np.uint8)).save(image, "PNG")
                writer.write(records.encode_example(f"{shard}_{i}", image.getvalue(), label, 2, 2, "png"))
    orders = set()
    for seed in range(6):
        dataset = pipeline.train_dataset(str(tmp_path / "train-*"), crop_size=1, scale_range=None, flip=False, seed=seed,
                                         shuffle_buffer=0, deterministic=True, repeat=False)
        read = [(int(image[0, 0, 0, 0]), int(image[0, 0, 0, 1])) for image, _ in dataset]
        shards = [shard for shard, _ in read[:4]]
        assert sorted(shards) == [0, 1, 2, 3], read  # One record of each shard first: 4 read at a time.
        assert read == [(shard, i) for i in range(3) for shard in shards], read
        orders.add(tuple(shards))
    assert len(orders) > 1  # The seed shuffles the shards.


def test_an_epoch_of_shards_in_list_order_comes_out_shuffled(tmp_path):
    """The converter writes a list in order into shards of 1,000: a shard of 1,000 and one of 200
    here, each record's id its place in the list. With the default buffer, an epoch's order owes
    nothing to the list's, and the small shard is spread over the whole epoch; with none
    (shuffle_buffer=0), each shard's records come in its order."""
    label = records.encode_label_png(np.zeros((2, 2), np.uint8))
    for shard, ids in enumerate((range(1000), range(1000, 1200))):
        with tf.io.TFRecordWriter(str(tmp_path / f"train-{shard:05d}-of-00002.tfrecord")) as writer:
            for i in ids:
                image = io.BytesIO()
                Image.fromarray(np.full((2, 2, 3), [i // 256, i % 256, 0], np.uint8)).save(image, "PNG")
                writer.write(records.encode_example(str(i), image.getvalue(), label, 2, 2, "png"))
    dataset = pipeline.train_dataset(str(tmp_path / "train-*"), crop_size=1, scale_range=None, flip=False, seed=3,
                                     deterministic=True, repeat=False)
    order = np.array([int(image[0, 0, 0, 0]) * 256 + int(image[0, 0, 0, 1]) for image, _ in dataset])
    assert sorted(order) == list(range(1200))
    in_shard = np.where(order < 1000, order / 1000, (order - 1000) / 200)  # A record's place in its shard, [0, 1)
    assert abs(np.corrcoef(np.arange(1200), in_shard)[0, 1]) < 0.2
    small_share = [float((order[start : start + 400] >= 1000).mean()) for start in (0, 400, 800)]
    assert all(0.08 < share < 0.28 for share in small_share), small_share  # 1/6 each, in expectation
    unshuffled = pipeline.train_dataset(str(tmp_path / "train-*"), crop_size=1, scale_range=None, flip=False, seed=3,
                                        shuffle_buffer=0, deterministic=True, repeat=False)
    order = np.array([int(image[0, 0, 0, 0]) * 256 + int(image[0, 0, 0, 1]) for image, _ in unshuffled])
    assert sorted(order) == list(range(1200))
    assert list(order[order < 1000]) == list(range(1000)) and list(order[order >= 1000]) == list(range(1000, 1200))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"crop_size": 0}, "crop_size must be None or an integer >= 1. Received: crop_size=0"),
        ({"crop_size": 8, "scale_range": (2.0, 1.0)}, r"scale_range must be None or \(low, high\) with 0 < low <= high. Received: scale_range=\(2.0, 1.0\)"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1. Received: batch_size=0"),
        ({"shuffle_buffer": -1}, r"shuffle_buffer must be an integer >= 0 \(records; 0 or 1: none\). Received: shuffle_buffer=-1"),
    ],
)
def test_bad_train_arguments(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipeline.train_dataset(data["train"], **kwargs)


# --- resolve_data -----------------------------------------------------------------------------


def test_resolve_data_glob_converted_folder_and_voc_root(data, tmp_path):
    assert pipeline.resolve_data(data["train"], tmp_path) == {"train": data["train"]}
    from_manifest = pipeline.resolve_data(data["out"], tmp_path)
    assert set(from_manifest) == {"train", "val"}
    assert len(tf.io.gfile.glob(from_manifest["val"])) == 2
    cache = tmp_path / "cache"
    converted = pipeline.resolve_data(data["root"], cache)
    assert set(converted) == {"train", "val"}
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_examples"] == 6 and manifest["splits"]["val"]["num_examples"] == 4
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.tfrecord")}
    assert pipeline.resolve_data(str(data["root"]), cache) == converted  # idempotent: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.tfrecord")} == stamps
    assert set(pipeline.resolve_data(data["root"], tmp_path / "val-only", splits=("val",))) == {"val"}
    assert not list((tmp_path / "val-only").glob("train-*"))  # evaluation converts only its split


def test_resolve_data_errors_say_what_is_wrong(data, tmp_path):
    missing = str(tmp_path / "nope-*.tfrecord")
    with pytest.raises(ValueError, match=rf"nothing matches \(.*\)\. Received: data='{re.escape(missing)}'"):
        pipeline.resolve_data(missing, tmp_path)
    with pytest.raises(ValueError, match=r"no such file \(.*records\.tfrecord\)"):
        pipeline.resolve_data(str(tmp_path / "records.tfrecord"), tmp_path)
    with pytest.raises(ValueError, match=r"this folder is none of them\. Received"):
        pipeline.resolve_data(str(tmp_path), tmp_path)
    with pytest.raises(ValueError, match=r"looks like the VOC2012 folder itself: pass the VOCdevkit folder above it"):
        pipeline.resolve_data(data["root"] / "VOC2012", tmp_path)
    manifest = data["out"] / "manifest.json"
    with pytest.raises(ValueError, match=rf"{re.escape(str(manifest))} is not a TFRecord file of fcn_keras.data.convert"):
        pipeline.resolve_data(manifest, tmp_path)
    foreign = tmp_path / "foreign.tfrecord"
    with tf.io.TFRecordWriter(str(foreign)) as writer:
        writer.write(tf.train.Example().SerializeToString())
    with pytest.raises(ValueError, match=r"foreign.tfrecord is not a TFRecord file of fcn_keras.data.convert"):
        pipeline.resolve_data(foreign, tmp_path)


def _damaged_copy(data, folder: Path, damage) -> Path:
    """A copy of the converted folder, damaged by ``damage(folder)``."""
    shutil.copytree(data["out"], folder)
    damage(folder)
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resolve_data_refuses_a_folder_whose_shards_do_not_match_its_manifest(data, tmp_path):
    """An incomplete copy of a converted folder is named at once, not after an epoch (or with a
    DataLossError naming no file): a shard missing, truncated, or one the manifest does not name."""
    def refused(folder: Path, match: str) -> None:
        with pytest.raises(ValueError, match=rf"data's split '(train|val)' does not match its manifest "
                                             rf"{re.escape(str(folder / 'manifest.json'))} \(2 shard\(s\)\): {match}\. "
                                             rf"An incomplete copy\? .*Received: data='{re.escape(str(folder))}'"):
            pipeline.resolve_data(folder, tmp_path)

    manifest = json.loads((data["out"] / "manifest.json").read_text())
    train_sizes = [shard["num_bytes"] for shard in manifest["splits"]["train"]["shards"]]
    assert train_sizes == [(data["out"] / f"train-0000{i}-of-00002.tfrecord").stat().st_size for i in range(2)]
    refused(_damaged_copy(data, tmp_path / "missing", lambda f: (f / "val-00001-of-00002.tfrecord").unlink()),
            "val-00001-of-00002.tfrecord is missing")
    refused(_damaged_copy(data, tmp_path / "short", lambda f: _truncate(f / "train-00001-of-00002.tfrecord")),
            rf"train-00001-of-00002.tfrecord holds {train_sizes[1] // 2} bytes, not {train_sizes[1]}")
    refused(_damaged_copy(data, tmp_path / "extra", lambda f: shutil.copy(f / "val-00000-of-00002.tfrecord",
                                                                          f / "val-00002-of-00003.tfrecord")),
            "val-00002-of-00003.tfrecord matches the split's glob but is not in the manifest")
    # A manifest written before the sizes were recorded: the names and their count are still checked.
    def forget_sizes(folder: Path) -> None:
        old = json.loads((folder / "manifest.json").read_text())
        for entry in old["splits"].values():
            entry["shards"] = [{k: v for k, v in shard.items() if k != "num_bytes"} for shard in entry["shards"]]
        (folder / "manifest.json").write_text(json.dumps(old))

    unsized = _damaged_copy(data, tmp_path / "unsized", forget_sizes)
    assert set(pipeline.resolve_data(unsized, tmp_path)) == {"train", "val"}
    (unsized / "train-00000-of-00002.tfrecord").unlink()
    refused(unsized, "train-00000-of-00002.tfrecord is missing")

    def drop_a_shard(folder: Path) -> None:  # A manifest edited (or cut short) to name fewer shards than it counts.
        old = json.loads((folder / "manifest.json").read_text())
        old["splits"]["train"]["shards"] = old["splits"]["train"]["shards"][:1]
        (folder / "manifest.json").write_text(json.dumps(old))
        (folder / "train-00001-of-00002.tfrecord").unlink()

    fewer = _damaged_copy(data, tmp_path / "fewer", drop_a_shard)
    with pytest.raises(ValueError, match=r"does not match its manifest .* \(1 shard\(s\)\): the manifest names 1 shard\(s\) "
                                         r"of num_shards=2\."):
        pipeline.resolve_data(fewer, tmp_path)


def test_overlapping_globs_read_each_shard_once_in_name_order(data):
    folder = data["out"]
    files = pipeline.list_files([str(folder / "train-*"), str(folder / "*-00001-of-00002.tfrecord"), str(folder / "val-*")])
    assert files == sorted(str(path) for path in folder.glob("*.tfrecord")) and len(files) == 4


def test_hidden_files_such_as_a_killed_conversions_temporaries_are_not_read(data, tmp_path, caplog):
    """TensorFlow's glob matches names starting with '.': the partial ``.tmp-*`` shard a killed
    conversion leaves would sort first and be read. They are left out, and counted."""
    folder = _damaged_copy(data, tmp_path / "killed", lambda f: None)
    partial = folder / ".tmp-4242-0a1b2c3d-train-00001-of-00002.tfrecord"
    partial.write_bytes((folder / "train-00001-of-00002.tfrecord").read_bytes()[:100])
    pattern = str(folder / "*train-*")
    assert partial.name in [os.path.basename(p) for p in tf.io.gfile.glob(pattern)]
    with caplog.at_level("WARNING", logger="fcn_keras.data.pipeline"):
        assert pipeline.list_files(pattern) == [str(folder / f"train-0000{i}-of-00002.tfrecord") for i in range(2)]
    assert "left out 1 hidden file(s) (names starting with '.'" in caplog.text and partial.name in caplog.text
    assert pipeline.resolve_data(pattern, tmp_path) == {"train": pattern}
    assert pipeline.record_ids(pattern) == [f"synth_{i:06d}" for i in range(6)]
    assert pipeline.list_files(str(folder / ".tmp-*")) == [str(partial)]  # Asked for by name: found.


# --- model.fit --------------------------------------------------------------------------------

FIT_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    from fcn_keras.data import pipeline
    from fcn_keras.model import build_fcn

    pattern, backend = sys.argv[1:3]
    assert keras.backend.backend() == backend, keras.backend.backend()
    keras.utils.set_random_seed(0)
    model = build_fcn("32s", fc_units=8, geometry="same")
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
    )
    train = pipeline.train_dataset(pattern, batch_size=2, crop_size=32, seed=0)
    history = model.fit(train, epochs=1, steps_per_epoch=2, verbose=0)
    loss = history.history["loss"][-1]
    assert np.isfinite(loss) and loss > 0, loss
    print("fit ok", backend, loss)
    """
)


def test_model_fit_tensorflow(data):
    model = build_fcn("32s", fc_units=8, geometry="same")
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE_LABEL))
    train = pipeline.train_dataset(data["train"], batch_size=2, crop_size=32, seed=0)
    history = model.fit(train, epochs=1, steps_per_epoch=2, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    paper = pipeline.train_dataset(data["train"], seed=0)  # whole images of varying size, batch 1
    assert np.isfinite(model.fit(paper, epochs=1, steps_per_epoch=2, verbose=0).history["loss"][-1])


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_model_fit_jax(data, tmp_path):
    script = tmp_path / "fit_jax.py"
    script.write_text(FIT_SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(script), data["train"], "jax"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "fit ok jax" in result.stdout


def test_tiny_images_survive_downscaling(tmp_path):
    label = np.full((1, 2), 4, np.uint8)
    path = _single_pair_records(tmp_path, np.full((1, 2, 3), 80, np.uint8), label)
    for crop_size in (None, 8):
        dataset = pipeline.train_dataset(path, crop_size=crop_size, scale_range=(0.3, 0.4), seed=0)
        for _, label_out in dataset.take(3):
            assert label_out.shape[1] >= 1 and label_out.shape[2] >= 1
            assert 4 in label_out.numpy() and set(np.unique(label_out.numpy()).tolist()) <= {4, IGNORE_LABEL}


def test_png_images_give_what_a_jpeg_of_the_same_pixels_gives(tmp_path):
    """A dataset of your own may hold PNG images: decoded whole, then cut, they must feed the
    same windows (scale, crop, flip, padding) as the JPEG path's decode_and_crop_jpeg does."""
    rng = np.random.default_rng(5)
    label = rng.choice(np.array([0, 1, 2, IGNORE_LABEL], np.uint8), (45, 61))
    # No chroma subsampling: then decode_and_crop_jpeg gives exactly the pixels of the whole decode.
    jpeg, png = tmp_path / "pair.jpg", tmp_path / "pair.png"
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(jpeg, quality=90, subsampling=0)
    pixels = tf.io.decode_jpeg(jpeg.read_bytes(), channels=3).numpy()
    Image.fromarray(pixels).save(png)
    paths = {"jpeg": str(tmp_path / "jpeg.tfrecord"), "png": str(tmp_path / "png.tfrecord")}
    for image_format, file in (("jpeg", jpeg), ("png", png)):
        with tf.io.TFRecordWriter(paths[image_format]) as writer:
            writer.write(records.encode_example("pair", file.read_bytes(), records.encode_label_png(label), 45, 61, image_format))
    settings = [dict(crop_size=32, scale_range=(0.5, 2.0), flip=True), dict(crop_size=64, scale_range=None, flip=False),
                dict(crop_size=None, scale_range=(0.7, 1.3), flip=True), dict(crop_size=None, scale_range=None, flip=False)]
    for kwargs in settings:
        got = [[t.numpy() for t in batch] for path in paths.values()
               for batch in pipeline.train_dataset(path, batch_size=1, seed=3, deterministic=True, **kwargs).take(4)]
        for (image_jpeg, label_jpeg), (image_png, label_png) in zip(got[:4], got[4:]):
            np.testing.assert_array_equal(label_png, label_jpeg)
            np.testing.assert_array_equal(image_png, image_jpeg)
    (image, label_out), = [[t.numpy() for t in batch] for batch in pipeline.eval_dataset(paths["png"])]
    np.testing.assert_array_equal(image[0], pixels)
    np.testing.assert_array_equal(label_out[0], label)
    with pytest.raises(ValueError, match=r"image_format must be one of \('jpeg', 'png'\)\. Received: image_format='gif'"):
        records.encode_example("pair", png.read_bytes(), records.encode_label_png(label), 45, 61, "gif")


def test_the_jpeg_decoding_method_asked_for_is_the_one_used(tmp_path):
    """dct_method reaches the decoder of training crops and of evaluation (found by review: no
    test looked, and dropping it changed nothing)."""
    image = np.random.default_rng(5).integers(0, 256, size=(40, 48, 3)).astype(np.uint8)
    path = _single_pair_records(tmp_path, image, np.zeros((40, 48), np.uint8))
    jpeg = (tmp_path / "pair.jpg").read_bytes()
    decoded = {method: tf.io.decode_jpeg(jpeg, channels=3, dct_method=method).numpy() for method in ("", "INTEGER_ACCURATE")}
    assert (decoded[""] != decoded["INTEGER_ACCURATE"]).any()  # The two methods differ on this image.
    for method, pixels in decoded.items():
        (evaluated, _), = pipeline.eval_dataset(path, dct_method=method).take(1)
        np.testing.assert_array_equal(evaluated[0], pixels)
        crops = pipeline.train_dataset(path, crop_size=48, batch_size=1, scale_range=None, flip=False, seed=0,
                                       dct_method=method)
        (cropped, label), = crops.take(1)
        y, x = _find_offset(label.numpy()[0], np.zeros((40, 48), np.uint8))
        np.testing.assert_array_equal(cropped[0, y : y + 40, x : x + 48], pixels)
