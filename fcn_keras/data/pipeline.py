"""tf.data input pipelines: training (the paper's and the modern setup) and evaluation.

Both read the TFRecords of ``fcn_keras.data.convert`` (schema in ``fcn_keras.data.records``)
and yield ``(image uint8 [B, H, W, 3], label uint8 [B, H, W])``, ready for ``model.fit`` under
the TensorFlow and JAX backends (models take raw RGB; preprocessing is inside the model).

Training modes of ``train_dataset``:

- ``crop_size=None``, the paper's: whole images of their own size, ``batch_size=1``.
- ``crop_size=S``, the modern one: a random scale from ``scale_range``, a random ``S x S``
  window (image padded with the mean colour ``PAD_RGB``, label with 255 where the window leaves
  the scaled image) and a random horizontal flip, batched to fixed ``[B, S, S]``.

Evaluation (``eval_dataset``) yields whole images, padded the same way when batched: to the
batch's largest image, or to a fixed ``canvas`` so that every batch has one shape (one XLA
compilation under JAX instead of one per image size).

Only the JPEG region a window needs is decoded (``tf.io.decode_and_crop_jpeg``; PNG images of
a dataset of your own are decoded whole, then cut) and resized
(bilinear for the image, nearest neighbour only for the label), so the cost follows the crop.
Randomness comes from stateless ops seeded by ``(seed, element index)``: with
``deterministic=True`` the stream is the same on every run, whatever the parallelism.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import random
from pathlib import Path

import tensorflow as tf

from fcn_keras.checks import check_int
from fcn_keras.constants import DEFAULT_SHUFFLE_BUFFER, IGNORE_LABEL, PAD_RGB, TRAIN_SCALE_RANGE, VOC_IMAGES_DIR
from fcn_keras.data import records
from fcn_keras.data import voc as voc_lib

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


# --- Files ------------------------------------------------------------------------------------


def glob_files(pattern: str) -> list[str]:
    """The files matching ``pattern`` (``tf.io.gfile.glob``: any file system), without folders
    and, unless the pattern's own name starts with ``.``, without hidden files (names starting
    with ``.``, as Python's glob does and TensorFlow's does not): the ``.tmp-*`` shard a killed
    conversion leaves would match ``dir/*train-*``. Hidden files left out are logged, counted."""
    files = [path for path in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(path)]
    if os.path.basename(pattern).startswith("."):
        return files
    hidden = [path for path in files if os.path.basename(path).startswith(".")]
    if hidden:
        logger.warning("%s: left out %d hidden file(s) (names starting with '.', e.g. a stopped conversion's "
                       "temporary files): %s", pattern, len(hidden), ", ".join(sorted(hidden)))
    return [path for path in files if not os.path.basename(path).startswith(".")]


def list_files(file_pattern: str | os.PathLike | list[str]) -> list[str]:
    """The sorted files matching a glob (or a list of globs), as ``glob_files`` finds them.

    Raises:
        ValueError: naming the pattern when nothing matches.
    """
    patterns = [str(file_pattern)] if isinstance(file_pattern, (str, os.PathLike)) else [str(p) for p in file_pattern]
    files = sorted({path for pattern in patterns for path in glob_files(pattern)})
    if not files:
        raise ValueError(f"file_pattern matches no TFRecord file. Received: file_pattern={file_pattern!r}")
    return files


# --- Augmentation -----------------------------------------------------------------------------


def _uniform(seed: tf.Tensor, low, high, dtype=tf.float32) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed=seed, minval=low, maxval=high, dtype=dtype)


def _scaled_size(size: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """``round(size * scale)``, at least 1 (int32)."""
    return tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)


def _random_offset(seed: tf.Tensor, scaled: tf.Tensor, crop: int) -> tf.Tensor:
    """A uniform window offset in ``[min(0, scaled - crop), max(0, scaled - crop)]`` (int32):
    inside the scaled image when it is larger than the crop, else placing it inside the crop."""
    slack = scaled - crop
    return _uniform(seed, tf.minimum(slack, 0), tf.maximum(slack, 0) + 1, tf.int32)


def _axis_plan(size: tf.Tensor, scale: tf.Tensor, out: tf.Tensor, offset: tf.Tensor) -> dict[str, tf.Tensor]:
    """Along one axis: which source pixels a window of ``out`` pixels at ``offset`` of the image
    scaled by ``scale`` needs, and how to place them (all int32 scalars).

    Returns:
        ``src_start, src_len``: the source pixels to decode; ``resized``: their length once
        scaled; ``take_start, take_len``: the part of the scaled pixels inside the window;
        ``pad_before, pad_after``: the padding that completes the window.
    """
    scaled = _scaled_size(size, scale)
    visible_start = tf.maximum(offset, 0)
    visible_end = tf.minimum(offset + out, scaled)
    src_start = tf.clip_by_value(tf.cast(tf.floor(tf.cast(visible_start, tf.float32) / scale), tf.int32), 0, size - 1)
    src_end = tf.clip_by_value(tf.cast(tf.math.ceil(tf.cast(visible_end, tf.float32) / scale), tf.int32), src_start + 1, size)
    # A window reaching the end of the scaled image takes the source to its end: round() may
    # have scaled the size down (round(61 * 0.368) = 22 < 61 * 0.368), and ceil(22 / 0.368) = 60
    # would drop the last source pixel and resample the rest 60 -> 22 instead of 61 -> 22.
    src_end = tf.where(visible_end >= scaled, size, src_end)
    take_start = tf.maximum(tf.cast(tf.round(tf.cast(visible_start, tf.float32) - tf.cast(src_start, tf.float32) * scale), tf.int32), 0)
    take_len = visible_end - visible_start
    resized = tf.maximum(_scaled_size(src_end - src_start, scale), take_start + take_len)
    pad_before = visible_start - offset
    return {
        "src_start": src_start,
        "src_len": src_end - src_start,
        "resized": resized,
        "take_start": take_start,
        "take_len": take_len,
        "pad_before": pad_before,
        "pad_after": out - pad_before - take_len,
    }


def _pad_pixels(pixels: tf.Tensor, paddings, fill: int | tuple[int, ...]) -> tf.Tensor:
    """Pads uint8 ``pixels [..., C]`` with a per-channel ``fill`` (or one value for all).

    Args:
        pixels: uint8 tensor whose last axis holds the channels.
        paddings: ``tf.pad`` paddings, one ``[before, after]`` per axis of ``pixels``.
        fill: ``PAD_RGB`` for images, ``IGNORE_LABEL`` for labels.

    Returns:
        The padded uint8 tensor.
    """
    fill = tf.constant(fill, tf.int32)
    return tf.cast(tf.pad(tf.cast(pixels, tf.int32) - fill, paddings) + fill, pixels.dtype)


def _place(pixels: tf.Tensor, ys: dict, xs: dict, method: str, fill: int | tuple[int, ...]) -> tf.Tensor:
    """Resizes decoded source pixels ``[h, w, C]`` to their scaled size, keeps the window's part
    and pads it to the window with ``fill``, in ``pixels``' dtype (uint8)."""
    if method == "bilinear":
        resized = tf.image.resize(pixels, tf.stack([ys["resized"], xs["resized"]]), method="bilinear", antialias=False)
        resized = tf.cast(resized + 0.5, pixels.dtype)  # round; bilinear stays within 0..255
    else:
        resized = tf.image.resize(pixels, tf.stack([ys["resized"], xs["resized"]]), method="nearest")
    window = resized[ys["take_start"] : ys["take_start"] + ys["take_len"], xs["take_start"] : xs["take_start"] + xs["take_len"]]
    paddings = [[ys["pad_before"], ys["pad_after"]], [xs["pad_before"], xs["pad_after"]], [0, 0]]
    return _pad_pixels(window, paddings, fill)


def augment(
    features: dict[str, tf.Tensor],
    seed: tf.Tensor,
    *,
    crop_size: int | None,
    scale_range: tuple[float, float] | None,
    flip: bool,
    dct_method: str = "",
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes one record with a random scale, window (with padding) and horizontal flip.

    Only the source pixels the window needs are decoded (``tf.io.decode_and_crop_jpeg``) and
    resized (bilinear, no antialiasing, for the image; nearest neighbour for the label), so the
    cost follows the crop size, not the scaled image size.

    Args:
        features: the raw features of one record (``records.parse_features``).
        seed: int32 ``[2]`` stateless seed of this element.
        crop_size: side of the square window; ``None``: the whole scaled image.
        scale_range: ``(low, high)`` of the uniform scale factor; ``None``: no scaling.
        flip: mirror left-right with probability 1/2.
        dct_method: JPEG decoding, see ``records.decode_image``.

    Returns:
        ``(image uint8 [h, w, 3], label uint8 [h, w])``; ``h = w = crop_size`` when given.
        Padding is ``PAD_RGB`` in the image and 255 (void) in the label.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    height = tf.cast(features["image/height"], tf.int32)
    width = tf.cast(features["image/width"], tf.int32)
    if scale_range is None and crop_size is None:
        image = records.decode_image(features["image/encoded"], dct_method, features["image/format"])
        label = records.decode_label(features["label/encoded"])
    else:
        scale = tf.constant(1.0) if scale_range is None else _uniform(seeds[0], float(scale_range[0]), float(scale_range[1]))
        scaled_h, scaled_w = _scaled_size(height, scale), _scaled_size(width, scale)
        if crop_size is None:
            out_h, out_w = scaled_h, scaled_w
            offset_y = offset_x = tf.constant(0)
        else:
            out_h = out_w = tf.constant(crop_size)
            offset_y = _random_offset(seeds[1], scaled_h, crop_size)
            offset_x = _random_offset(seeds[2], scaled_w, crop_size)
        ys = _axis_plan(height, scale, out_h, offset_y)
        xs = _axis_plan(width, scale, out_w, offset_x)
        crop_window = tf.stack([ys["src_start"], xs["src_start"], ys["src_len"], xs["src_len"]])
        rows = slice(ys["src_start"], ys["src_start"] + ys["src_len"])
        cols = slice(xs["src_start"], xs["src_start"] + xs["src_len"])
        image = tf.cond(
            tf.equal(features["image/format"], b"png"),  # A PNG is decoded whole, then cut.
            lambda: tf.io.decode_png(features["image/encoded"], channels=3)[rows, cols],
            lambda: tf.io.decode_and_crop_jpeg(features["image/encoded"], crop_window, channels=3, dct_method=dct_method),
        )
        label = records.decode_label(features["label/encoded"])[rows, cols, None]
        image = _place(image, ys, xs, "bilinear", PAD_RGB)
        label = _place(label, ys, xs, "nearest", IGNORE_LABEL)[:, :, 0]
    if flip:
        mirror = _uniform(seeds[3], 0.0, 1.0) < 0.5
        image = tf.cond(mirror, lambda: tf.reverse(image, [1]), lambda: image)
        label = tf.cond(mirror, lambda: tf.reverse(label, [1]), lambda: label)
    image.set_shape([crop_size, crop_size, 3])
    label.set_shape([crop_size, crop_size])
    return image, label


# --- Datasets ---------------------------------------------------------------------------------


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    return options


def train_dataset(
    file_pattern: str | os.PathLike | list[str],
    *,
    batch_size: int = 1,
    crop_size: int | None = None,
    scale_range: tuple[float, float] | None = TRAIN_SCALE_RANGE,
    flip: bool = True,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    seed: int | None = None,
    deterministic: bool = False,
    repeat: bool = True,
    dct_method: str = "",
) -> tf.data.Dataset:
    """The training input pipeline.

    Shards are read interleaved (order shuffled), records shuffled, then decoded and augmented
    in parallel (AUTOTUNE) and prefetched.

    Args:
        file_pattern: a glob (or list of globs) of TFRecord shards.
        batch_size: images per batch; must be 1 when ``crop_size`` is None.
        crop_size: ``None`` for the paper's whole images (batch 1, sizes vary); an int ``S``
            for random ``S x S`` windows batched to fixed shapes (remainder dropped).
        scale_range: ``(low, high)`` random scale factor, or ``None`` for none. Applies in
            both modes (the paper used no scaling and no flip: pass ``None`` and ``False``).
        flip: random horizontal mirroring.
        shuffle_buffer: records in the shuffle buffer (0 or 1: no shuffling of records; the
            shards' order is still shuffled).
        seed: seed of shuffling and augmentation; ``None``: a random seed (0 when
            ``deterministic``).
        deterministic: the same order and augmentations on every run with the same seed.
        repeat: repeat forever (for ``model.fit`` with ``steps_per_epoch``).
        dct_method: JPEG decoding, ``""`` (TensorFlow's default, the pixels of the SavedModel and
            the predict CLI) or ``"INTEGER_ACCURATE"`` (PIL's pixels), see ``records.decode_image``.

    Returns:
        A ``tf.data.Dataset`` of ``(image uint8 [B, h, w, 3], label uint8 [B, h, w])``.

    Raises:
        ValueError: no file matches, or bad ``batch_size``, ``shuffle_buffer``, ``crop_size`` or
            ``scale_range``.
    """
    # --- Arguments ---------------------------------------------------------------------------
    batch_size = check_int("batch_size", batch_size, 1)
    shuffle_buffer = check_int("shuffle_buffer", shuffle_buffer, 0, "records; 0 or 1: none")
    if crop_size is None and batch_size != 1:
        raise ValueError(
            "batch_size must be 1 with whole images (crop_size=None, the paper's setup); pass crop_size for "
            f"batches. Received: batch_size={batch_size}, crop_size=None"
        )
    if crop_size is not None and (not isinstance(crop_size, int) or crop_size < 1):
        raise ValueError(f"crop_size must be None or an integer >= 1. Received: crop_size={crop_size!r}")
    if scale_range is not None and (len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]):
        raise ValueError(f"scale_range must be None or (low, high) with 0 < low <= high. Received: scale_range={scale_range!r}")
    files = list_files(file_pattern)
    if seed is None:
        seed = 0 if deterministic else random.SystemRandom().randrange(2**31)

    # --- Records -----------------------------------------------------------------------------
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if len(files) > 1:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    if shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    # --- Decode and augment ------------------------------------------------------------------
    def prepare(index, serialized):
        element_seed = tf.cast(tf.stack([tf.constant(seed, tf.int64), index]) % (2**31 - 1), tf.int32)
        return augment(
            records.parse_features(serialized),
            element_seed,
            crop_size=crop_size,
            scale_range=scale_range,
            flip=flip,
            dct_method=dct_method,
        )

    dataset = dataset.enumerate().map(prepare, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=crop_size is not None, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return dataset.prefetch(AUTOTUNE).with_options(_options(deterministic))


def eval_dataset(
    file_pattern: str | os.PathLike | list[str],
    *,
    batch_size: int = 1,
    canvas: tuple[int, int] | None = None,
    with_sizes: bool = False,
    with_ids: bool = False,
    dct_method: str = "",
    fill_last_batch: bool = False,
) -> tf.data.Dataset:
    """The evaluation input pipeline: every record once, in file order, whole images.

    Args:
        file_pattern: a glob (or list of globs) of TFRecord shards.
        batch_size: images per batch; above 1 (or with ``canvas``), images are padded at the
            bottom and right to the batch's largest size, with ``PAD_RGB`` in images and 255
            (void, ignored) in labels.
        canvas: ``(height, width)``: pad every image to this size instead (a fixed shape for
            every batch; the last batch may hold fewer images). An image larger than the canvas
            stops the iteration with ``tf.errors.InvalidArgumentError`` naming both sizes.
        with_sizes: also yield each image's own ``(height, width)``.
        with_ids: also yield each image's dataset id (``image/id`` of its record).
        dct_method: JPEG decoding, see ``fcn_keras.data.records.decode_image``.
        fill_last_batch: with ``canvas``, fill the last batch up to ``batch_size`` with blank
            images (``PAD_RGB``, labels all void, size ``(0, 0)``, id ``""``), so that every
            batch has one shape (one XLA compilation); they count in no metric.

    Returns:
        A ``tf.data.Dataset`` of ``(image uint8 [B, H, W, 3], label uint8 [B, H, W])``, plus
        ``sizes int32 [B, 2]`` with ``with_sizes``, then ``ids string [B]`` with ``with_ids``.

    Raises:
        ValueError: no file matches, bad ``batch_size`` or ``canvas``, or ``fill_last_batch``
            without ``canvas``.
    """
    if fill_last_batch and canvas is None:
        raise ValueError("fill_last_batch needs a canvas: without one the batches have varying shapes anyway")
    batch_size = check_int("batch_size", batch_size, 1)
    if canvas is not None and (len(canvas) != 2 or not all(isinstance(d, int) and d >= 1 for d in canvas)):
        raise ValueError(f"canvas must be None or (height, width) with integers >= 1. Received: canvas={canvas!r}")
    dataset = tf.data.TFRecordDataset(list_files(file_pattern))

    def prepare(serialized):
        example = records.parse_example(serialized, dct_method)
        size = tf.shape(example["label"])
        if canvas is not None:
            tf.debugging.assert_less_equal(
                size, tf.constant(canvas), message=f"an image (height, width) is larger than the canvas {canvas}"
            )
        return example["image"], example["label"], size, example["image_id"]

    def fill_padding(images, labels, sizes, ids):
        """``padded_batch`` pads images with 0 (one value only): make their padding ``PAD_RGB``."""
        if fill_last_batch:  # Blank images of size (0, 0): all padding.
            missing = batch_size - tf.shape(labels)[0]
            images = tf.pad(images, [[0, missing], [0, 0], [0, 0], [0, 0]])
            labels = tf.pad(labels, [[0, missing], [0, 0], [0, 0]], constant_values=IGNORE_LABEL)
            sizes, ids = tf.pad(sizes, [[0, missing], [0, 0]]), tf.pad(ids, [[0, missing]])
        shape = tf.shape(labels)
        rows = tf.range(shape[1])[None, :, None] < sizes[:, 0, None, None]
        cols = tf.range(shape[2])[None, None, :] < sizes[:, 1, None, None]
        inside = (rows & cols)[..., None]
        return tf.where(inside, images, tf.constant(PAD_RGB, tf.uint8)), labels, sizes, ids

    dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    if batch_size == 1 and canvas is None:
        dataset = dataset.batch(1)
    else:  # to the canvas, or to the batch's largest image
        shape = [None, None] if canvas is None else list(canvas)
        dataset = dataset.padded_batch(
            batch_size,
            padded_shapes=([*shape, 3], shape, [2], []),
            padding_values=(tf.constant(0, tf.uint8), tf.constant(IGNORE_LABEL, tf.uint8), tf.constant(0, tf.int32),
                            tf.constant("", tf.string)),
        )
        dataset = dataset.map(fill_padding, num_parallel_calls=AUTOTUNE, deterministic=True)
    if not (with_sizes and with_ids):
        dataset = dataset.map(lambda images, labels, sizes, ids: (images, labels) + ((sizes,) if with_sizes else ())
                              + ((ids,) if with_ids else ()))
    return dataset.prefetch(AUTOTUNE)


def oversized_images(
    file_pattern: str | os.PathLike | list[str], canvas: tuple[int, int], limit: int | None = None
) -> list[tuple[str, int, int]]:
    """The records whose image does not fit in ``canvas``, read from their size fields (nothing
    is decoded), so that a canvas too small is refused before ``eval_dataset`` stops on it.

    Args:
        file_pattern: a glob (or list of globs) of TFRecord shards.
        canvas: ``(height, width)``.
        limit: look at the first ``limit`` records only (those an evaluation will read).

    Returns:
        ``(image_id, height, width)`` of each record larger than ``canvas``, in file order.
    """
    too_large = _record_features(file_pattern, limit).filter(
        lambda features: (features["image/height"] > canvas[0]) | (features["image/width"] > canvas[1]))
    return [(features["image/id"].decode(), int(features["image/height"]), int(features["image/width"]))
            for features in too_large.as_numpy_iterator()]


def label_dataset(file_pattern: str | os.PathLike | list[str]) -> tf.data.Dataset:
    """Every record's id and label map, in file order, the image not decoded (to score label maps
    computed elsewhere).

    Args:
        file_pattern: a glob (or list of globs) of TFRecord shards.

    Returns:
        A ``tf.data.Dataset`` of ``(image_id tf.string scalar, label uint8 [H, W])``.
    """
    def prepare(serialized):
        features = records.parse_features(serialized)
        return features["image/id"], records.decode_label(features["label/encoded"])

    return tf.data.TFRecordDataset(list_files(file_pattern)).map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)


def record_ids(file_pattern: str | os.PathLike | list[str], limit: int | None = None) -> list[str]:
    """The ids of the records (of the first ``limit``), in file order; nothing is decoded."""
    return [features["image/id"].decode() for features in _record_features(file_pattern, limit).as_numpy_iterator()]


def _record_features(file_pattern: str | os.PathLike | list[str], limit: int | None) -> tf.data.Dataset:
    """The raw features of the records (of the first ``limit``), in file order, nothing decoded."""
    dataset = tf.data.TFRecordDataset(list_files(file_pattern))
    if limit is not None:
        dataset = dataset.take(limit)
    return dataset.map(records.parse_features, num_parallel_calls=AUTOTUNE, deterministic=True)


# --- Data resolution --------------------------------------------------------------------------


def conversion_dir(data: str | os.PathLike, cache_dir: str | os.PathLike = "cache") -> Path:
    """Where a VOCdevkit ``--data`` is converted: ``<cache_dir>/records-<hash of its absolute
    path>``. Training and evaluation use the same folder, so a root is converted once."""
    key = hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:10]
    return Path(cache_dir) / f"records-{key}"


def resolve_data(
    data: str | os.PathLike, cache_dir: str | os.PathLike, splits: tuple[str, ...] = ("train", "val")
) -> dict[str, str]:
    """Turns a ``--data`` value into TFRecord globs per split.

    Args:
        data: a TFRecord glob (→ ``{"train": data}``), a folder written by the converter
            (holding ``manifest.json``: a glob per split in it), or a VOCdevkit root (holding
            ``VOC2012/``), converted into ``cache_dir`` (idempotent: a second call reuses the
            shards) for each of ``splits`` that has a list.
        cache_dir: where a VOCdevkit root is converted.
        splits: the splits of a VOCdevkit root to convert (evaluation needs only its own).

    Returns:
        ``{split: glob}``, e.g. ``{"train": ".../train-[0-9][0-9][0-9][0-9][0-9]-of-...tfrecord", "val": ...}``.

    Raises:
        ValueError: naming ``data`` when it is none of the above, nothing matches, the first
            file of a split is not a TFRecord file of ``fcn_keras.data.records``, or one of
            ``splits`` of a converted folder is incomplete (a stopped conversion) or empty.
    """
    # Imported here: the converter pulls in absl flags and keras, which the pipeline needs not.
    from fcn_keras.data import convert as convert_lib

    path = Path(data)
    if path.is_dir() and (path / convert_lib.MANIFEST_NAME).is_file():
        manifest = convert_lib.read_manifest(path)
        if manifest is None:
            raise ValueError(f"data holds an unreadable or foreign manifest.json. Received: data={str(data)!r}")
        # Manifests written before the "complete" key held complete splits only.
        globs = {split: str(path / entry["glob"]) for split, entry in manifest["splits"].items()
                 if entry.get("complete", True) or split in splits}
        for split in splits:
            entry = manifest["splits"].get(split)
            if entry is not None and not entry.get("complete", True):
                raise ValueError(
                    f"data's split {split!r} is incomplete: its conversion stopped after {len(entry['shards'])} of "
                    f"{entry['num_shards']} shards; run the same fcn_keras.data.convert command again to finish it. "
                    f"Received: data={str(data)!r}"
                )
            if entry is not None and not entry["num_examples"]:
                raise ValueError(f"data's split {split!r} holds no image ({entry['num_skipped']} skipped as invalid, "
                                 f"list {entry['list']}). Received: data={str(data)!r}")
            if entry is not None:
                _check_shards(path, split, entry, data)
    elif voc_lib.is_voc_root(path):
        lists = voc_lib.voc_lists_dir(path)
        found = [s for s in splits if (lists / f"{s}.txt").is_file()]
        if not found:
            raise ValueError(f"data has no split {' or '.join(map(repr, splits))}: a VOCdevkit root without "
                             f"{' or '.join(f'{s}.txt' for s in splits)} in {lists}. Received: data={str(data)!r}")
        convert_lib.convert(path, cache_dir, splits=found)
        globs = {split: convert_lib.split_glob(cache_dir, split) for split in found}
    elif path.is_dir():
        hint = " (this looks like the VOC2012 folder itself: pass the VOCdevkit folder above it)" if (path / VOC_IMAGES_DIR).is_dir() else ""
        raise ValueError(
            "data must be a TFRecord glob, a converted folder (manifest.json) or a VOCdevkit root (holding VOC2012/); "
            f"this folder is none of them{hint}. Received: data={str(data)!r}"
        )
    else:
        globs = {"train": str(data)}
    for split, pattern in globs.items():
        files = glob_files(pattern)
        if not files:
            if path.is_dir():
                what = f"nothing matches for split {split!r}"
            else:
                what = "nothing matches" if any(c in pattern for c in "*?[") else "no such file"
            raise ValueError(
                "data must be a TFRecord glob, a converted folder (manifest.json) or a VOCdevkit root (holding VOC2012/); "
                f"{what} ({pattern}). Received: data={str(data)!r}"
            )
        if not path.is_dir():
            _check_glob_complete(files, data)
        _check_record_file(sorted(files)[0], data)
    return globs


def _check_glob_complete(files: list[str], data: str | os.PathLike) -> None:
    """Refuses a glob matching shards of a split whose conversion stopped (the manifest beside
    them says ``"complete": false``), as a converted folder's split is refused: not part of it.

    Raises:
        ValueError: naming the split, how many of its shards exist, and what to run.
    """
    from fcn_keras.data import convert as convert_lib  # See resolve_data.

    for folder in sorted({os.path.dirname(name) for name in files}):
        manifest = convert_lib.read_manifest(folder) or {}
        names = [os.path.basename(name) for name in files if os.path.dirname(name) == folder]
        for split, entry in manifest.get("splits", {}).items():
            if not entry.get("complete", True) and any(fnmatch.fnmatchcase(name, entry["glob"]) for name in names):
                raise ValueError(
                    f"data matches shards of split {split!r} of {os.path.join(folder, convert_lib.MANIFEST_NAME)}, whose "
                    f"conversion stopped after {len(entry['shards'])} of {entry['num_shards']} shards: it would be "
                    f"read in part. Run the same fcn_keras.data.convert command again to finish it. Received: "
                    f"data={str(data)!r}"
                )


def data_class_names(data: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names of a ``--data`` value, without converting anything.

    Args:
        data: a converted folder (its ``manifest.json`` records them), a TFRecord glob (the
            manifest of the folder its files are in, if any), or a VOCdevkit root (VOC's 21).

    Returns:
        The names in index order, or ``None`` when ``data`` says nothing of its classes (a glob
        of records without a manifest beside them, or a path that does not exist).
    """
    from fcn_keras.constants import VOC_CLASSES
    from fcn_keras.data import convert as convert_lib

    path = Path(data)
    if voc_lib.is_voc_root(path) and not (path / convert_lib.MANIFEST_NAME).is_file():
        return VOC_CLASSES
    folder = path if path.is_dir() else path.parent
    manifest = convert_lib.read_manifest(folder)
    return None if manifest is None else convert_lib.manifest_class_names(manifest)


def _check_shards(folder: Path, split: str, entry: dict, data: str | os.PathLike) -> None:
    """Checks that the shard files of a converted folder's ``split`` are those its manifest
    entry names, each of its recorded size (``num_bytes``; manifests written before sizes were
    recorded: names and count only), so that an incomplete copy (a shard missing, truncated or
    from another conversion) is refused now, not after an epoch. Cheap: nothing is read.

    Raises:
        ValueError: naming the folder, the split and each shard that differs, with what was expected.
    """
    from fcn_keras.data.convert import MANIFEST_NAME  # See resolve_data.

    expected = {shard["name"]: shard.get("num_bytes") for shard in entry["shards"]}
    present = {os.path.basename(name) for name in glob_files(str(folder / entry["glob"]))}
    sizes = {name: (folder / name).stat().st_size for name in present}
    problems = [f"{name} is missing" for name in expected if name not in present]
    problems += [f"{name} holds {sizes[name]} bytes, not {size}" for name, size in expected.items()
                 if name in present and size is not None and sizes[name] != size]
    problems += [f"{name} matches the split's glob but is not in the manifest" for name in sorted(present) if name not in expected]
    if len(expected) != entry["num_shards"]:
        problems.insert(0, f"the manifest names {len(expected)} shard(s) of num_shards={entry['num_shards']}")
    if problems:
        raise ValueError(
            f"data's split {split!r} does not match its manifest {folder / MANIFEST_NAME} ({len(expected)} shard(s)): "
            f"{'; '.join(problems)}. An incomplete copy? Copy the folder again, or rerun the fcn_keras.data.convert "
            f"command that wrote it. Received: data={str(data)!r}"
        )


def _check_record_file(path: str, data: str | os.PathLike) -> None:
    """Reads the first record of ``path``: a clear error now, not a ``DataLossError`` mid-run."""
    try:
        for serialized in tf.data.TFRecordDataset(path).take(1):
            records.parse_features(serialized)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
        reason = error.message.splitlines()[0] if error.message else type(error).__name__
        raise ValueError(
            f"{path} is not a TFRecord file of fcn_keras.data.convert ({reason}). Received: data={str(data)!r}"
        ) from error
