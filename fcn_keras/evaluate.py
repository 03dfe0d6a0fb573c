"""Evaluates an FCN on full-size images with the paper's metrics.

    python -m fcn_keras.evaluate --model=runs/fcn8s/best.keras --data=/path/to/VOCdevkit \\
        --split=val --output_dir=runs/fcn8s/eval

Every image is evaluated whole (no crop, no resize): one at a time by default (exact), or in
batches padded to the batch's largest image or to a fixed ``--canvas`` (padding: the mean
colour in images, void in labels, not counted; under JAX a canvas means one XLA compilation
instead of one per image size, see docs/evaluation.md). Images larger than ``--tile_size`` are
segmented in tiles, with the same labels as whole (``fcn_keras.inference.segment_in_tiles``).
The argmax is taken on the device (``fcn_keras.inference.labels_model``): only uint8 label
maps reach the host, where a streaming int64 confusion matrix counts (truth, prediction) pairs,
void (255) excluded. Writes ``metrics.json`` (scores, confusion matrix, counts), ``metrics.md``
(the four metrics, the per-class IU table and the images of lowest mean IU), ``per_image.csv``
(each image's pixel accuracy and mean IU, to find where a model fails) and ``confusion.png``.

Label maps computed elsewhere are scored the same way (``--predictions=DIR`` instead of
``--model``, ``evaluate_predictions``): ``<image id>.png`` files of class indices, such as
``fcn_keras.predict`` writes or another implementation's outputs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import flags

from fcn_keras import viz
from fcn_keras.checks import check_int, check_writable_folder, is_integer, parse_size
from fcn_keras.console import progress_verbosity, run_cli, usage_error
from fcn_keras.constants import IGNORE_LABEL, PAD_RGB, VOC_CLASSES
from fcn_keras.data import convert as convert_lib
from fcn_keras.data import voc
from fcn_keras.data.pipeline import (
    conversion_dir, data_class_names, eval_dataset, label_dataset, oversized_images, record_ids, resolve_data,
)
from fcn_keras.files import write_text_atomic
from fcn_keras.inference import check_tile_size, check_tileable, labels_model, segment_in_tiles
from fcn_keras.io import check_fcn, load_fcn, resolve_model_file, run_class_names
from fcn_keras.metrics import confusion_matrix, scores

METRICS_JSON = "metrics.json"
METRICS_MD = "metrics.md"
PER_IMAGE_CSV = "per_image.csv"
CONFUSION_PNG = "confusion.png"
#: The columns of ``per_image.csv``, the keys of ``evaluate_model``'s ``per_image`` rows.
PER_IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "height", "width", "pixels", "pixel_accuracy", "mean_iu")
#: Images of lowest mean IU listed in ``metrics.md``.
HARDEST_SHOWN = 10

#: The four metrics of the paper, section 5, in its table order, with their table headings.
PAPER_METRICS: tuple[tuple[str, str], ...] = (
    ("pixel_accuracy", "pixel acc."),
    ("mean_accuracy", "mean acc."),
    ("mean_iu", "mean IU"),
    ("fw_iu", "f.w. IU"),
)

# --- Data --------------------------------------------------------------------------------------


def resolve_split(data: str | os.PathLike, split: str, cache_dir: str | os.PathLike = "cache") -> tuple[str, int | None]:
    """The TFRecord glob of ``split`` for a ``--data`` value, and its image count if known.

    Args:
        data: a TFRecord glob (evaluated whatever ``split`` is), a converted folder holding
            ``manifest.json``, or a VOCdevkit root (converted under ``cache_dir``).
        split: the split of a folder to evaluate, e.g. ``"val"``.
        cache_dir: where a VOCdevkit root is converted, into ``conversion_dir(data, cache_dir)``
            (``<cache_dir>/records-<hash of the root's path>``): the folder ``python -m
            fcn_keras.train`` converts the same root into with the same ``--cache_dir``, so it is
            converted once.

    Returns:
        ``(glob, num_images)``; ``num_images`` from the manifest, ``None`` for a plain glob.

    Raises:
        ValueError: nothing matches ``data``, or the folder has no ``split``.
    """
    is_folder = Path(data).is_dir()
    records = conversion_dir(data, cache_dir)
    globs = resolve_data(data, records, splits=(split,))
    if not is_folder:
        return globs["train"], None  # A glob: resolve_data names it "train"; it is what we evaluate.
    if split not in globs:
        raise ValueError(f"data {str(data)!r} has no split {split!r}; it has {sorted(globs)}. Check --split")
    return globs[split], _split_entry(data, split, cache_dir).get("num_examples")


def skipped_at_conversion(data: str | os.PathLike, split: str, cache_dir: str | os.PathLike = "cache") -> list[str]:
    """The ids of ``split``'s list that its conversion skipped as invalid (``--skip_invalid``).

    Args:
        data, split, cache_dir: as for ``resolve_split`` (which converts a VOCdevkit root).

    Returns:
        The ids in the manifest's ``skipped`` entries; empty for a plain glob (no manifest).
    """
    return [problem["image_id"] for problem in _split_entry(data, split, cache_dir).get("skipped", [])]


def _split_entry(data: str | os.PathLike, split: str, cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest's entry of ``split`` for a folder ``data`` (converted or a VOCdevkit root's
    conversion under ``cache_dir``); empty for a glob or a folder without manifest."""
    if not Path(data).is_dir():
        return {}
    manifest_dir = Path(data) if (Path(data) / convert_lib.MANIFEST_NAME).is_file() else conversion_dir(data, cache_dir)
    return (convert_lib.read_manifest(manifest_dir) or {}).get("splits", {}).get(split, {})


# --- Evaluation --------------------------------------------------------------------------------


def evaluate_model(
    model: keras.Model | str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "val",
    output_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 1,
    canvas: tuple[int, int] | None = None,
    tile_size: int | tuple[int, int] | None = None,
    keep_predictions: int = 0,
    cache_dir: str | os.PathLike = "cache",
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluates an FCN on whole images of a dataset split.

    Args:
        model: an FCN (logits ``[B, H, W, C]``) or the path of its ``.keras`` file.
        data: a TFRecord glob, a converted folder (``manifest.json``) or a VOCdevkit root.
        split: the split of a folder to evaluate (ignored for a plain glob).
        output_dir: where ``metrics.json``, ``metrics.md``, ``per_image.csv`` and
            ``confusion.png`` go; nothing is written when ``None``.
        max_images: evaluate only the first N images (all when ``None``).
        class_names: the ``C`` class names, for the table and figure. ``None``: the data's
            (``fcn_keras.data.pipeline.data_class_names``: recorded in its ``manifest.json``,
            VOC's for a VOCdevkit root); for records that record none, those the model's
            training run recorded (``config.json`` beside its ``.keras`` file), else VOC's 21
            names for a 21-class model, else ``class 0``, ``class 1``, ....
        batch_size: images per device call. 1 evaluates every image exactly at its size; above
            1 the pipeline pads images (``PAD_RGB``, the mean colour) and labels (255, not
            counted) to the batch's largest size, which can change predictions near the right
            and bottom borders.
        canvas: ``(height, width)``: pad every image to this size instead, and fill the last
            batch up to ``batch_size`` with blank images (not counted), so the model sees one
            input shape (one compilation under JAX/XLA). Images must fit in it.
        tile_size: ``N`` or ``(height, width)``, each >= 480: segment images with a side larger
            than that in tiles (``fcn_keras.inference.segment_in_tiles``: the same labels as
            whole, the memory of a tile). Only one image at a time (``batch_size=1``, no ``canvas``); the model must be
            an FCN-VGG16 of ``build_fcn``.
        keep_predictions: also return the label maps of the first N images, each cropped to
            its image's size, as ``predictions`` (not written to ``metrics.json``).
        cache_dir: where a VOCdevkit root is converted (see ``resolve_split``).
        verbose: show a ``keras.utils.Progbar``.

    Returns:
        ``scores(confusion)`` (``pixel_accuracy``, ``mean_accuracy``, ``mean_iu``, ``fw_iu``,
        ``per_class_iu``) plus ``confusion`` (int ``[C, C]`` as nested lists, rows = truth),
        ``num_images``, ``num_pixels`` (non-void pixels counted), ``void_pixels``,
        ``class_names``, ``model``, ``data``, ``split``, ``skipped_at_conversion`` (the ids of the
        split's list its conversion skipped as invalid, not scored), ``batch_size``, ``canvas``,
        ``tile_size``, ``backend``, ``seconds``, ``images_per_second`` and ``per_image``: a row per image in
        data order, ``{"image_id", "height", "width", "pixels", "pixel_accuracy", "mean_iu"}``
        (the image's own scores, void excluded; ``None`` for an image of void only); with
        ``keep_predictions``, ``predictions``: a list of uint8 ``[h, w]`` arrays.

    Raises:
        FileNotFoundError: the model file does not exist.
        ValueError: the model is not an FCN, its class count differs from ``len(class_names)``
            (or from the data's),
            the data matches nothing, a label lies outside ``[0, C)`` and is not 255, an image
            is larger than ``canvas``, no image was evaluated, or ``tile_size`` is too small, set
            with batches or a canvas, or set for a model outside the FCN-VGG16 family.
    """
    # --- Arguments ---------------------------------------------------------------------------
    max_images = _check_common(max_images, output_dir)
    keep_predictions = check_int("keep_predictions", keep_predictions, 0)
    if tile_size is not None:
        tile_size = check_tile_size(tile_size)
        if batch_size != 1 or canvas is not None:
            raise ValueError(f"tile_size segments one image at a time: it needs batch_size=1 and no canvas. Received: "
                             f"batch_size={batch_size}, canvas={canvas}")
    recorded = None  # The class names the model's training run recorded, if any.
    if isinstance(model, keras.Model):
        source = model.name
        check_fcn(model, f"model {model.name!r}")
    else:
        source = str(resolve_model_file(model))  # A run folder: record which checkpoint it was.
        model = load_fcn(source)
        recorded = run_class_names(source)
    num_classes = int(model.outputs[0].shape[-1])
    if tile_size is not None:
        check_tileable(model, f"model {source}")
    # The data's own names bound the class count whether or not names are given: a model of
    # other data scores its classes against labels that mean something else.
    data_names = data_class_names(data)
    if data_names is not None and len(data_names) != num_classes:
        raise ValueError(
            f"model {source} predicts {num_classes} classes but data {str(data)!r} has {len(data_names)} "
            f"({voc.abbreviate(data_names)}): it was trained on other data"
        )
    if class_names is None:
        class_names = data_names
        if class_names is None and recorded is not None and len(recorded) == num_classes:
            class_names = recorded
        if class_names is None:
            class_names = VOC_CLASSES if num_classes == len(VOC_CLASSES) else tuple(f"class {i}" for i in range(num_classes))
    if num_classes != len(class_names):
        raise ValueError(
            f"model {source} predicts {num_classes} classes but {len(class_names)} class names were "
            f"given ({voc.abbreviate(class_names)})"
        )
    pattern, count = resolve_split(data, split, cache_dir)
    target = min(count, max_images) if count is not None and max_images else (max_images or count)

    # --- Streaming confusion matrix ------------------------------------------------------------
    predictor = labels_model(model)

    def segment(image: np.ndarray) -> np.ndarray:
        """The label map of one image (or tile) ``[h, w, 3]``."""
        return np.asarray(predictor.predict_on_batch(image[np.newaxis]))[0]

    dataset = eval_dataset(pattern, batch_size=batch_size, canvas=canvas, with_sizes=True, with_ids=True)
    oversized = [] if canvas is None else oversized_images(pattern, canvas, max_images)  # Now, not midway.
    if oversized:
        image_id, height, width = oversized[0]
        raise ValueError(f"data {str(data)!r} holds {len(oversized)} images larger than canvas={canvas} (height, width), "
                         f"e.g. {image_id!r} ({height}x{width}): pass a larger canvas, or none")
    blank = None if canvas is None else np.broadcast_to(np.asarray(PAD_RGB, np.uint8), (batch_size, *canvas, 3))
    tally = _Tally(num_classes)
    num_images = 0
    predictions: list[np.ndarray] = []
    progbar = keras.utils.Progbar(target, unit_name="image", verbose=progress_verbosity(1)) if verbose else None
    start = time.perf_counter()
    for images, labels, sizes, ids in dataset:
        count = len(labels) if max_images is None else min(len(labels), max_images - num_images)
        images, labels, sizes, ids = images.numpy(), labels.numpy()[:count], sizes.numpy()[:count], ids.numpy()[:count]
        if blank is not None and len(images) < batch_size:  # the same shape for the last batch
            images = np.concatenate([images, blank[len(images) :]])
        if tile_size is None:
            predicted = np.asarray(predictor.predict_on_batch(images))[:count]
        else:  # One image, unpadded (batch 1, no canvas).
            predicted = segment_in_tiles(segment, images[0], tile_size)[np.newaxis]
        _check_labels(labels, num_classes, data, f"images {num_images}..{num_images + count - 1}", "model")
        for label, prediction, (height, width), image_id in zip(labels, predicted, sizes, ids):
            # Padding of batches is void: only each image's own pixels count.
            label, prediction = label[:height, :width], prediction[:height, :width]
            tally.add(image_id.decode("utf-8"), label, prediction)
            if len(predictions) < keep_predictions:
                predictions.append(prediction.copy())
        num_images += count
        if progbar is not None:
            progbar.update(num_images)
        if max_images is not None and num_images >= max_images:
            break
    if progbar is not None and num_images and num_images != target:
        # A glob's count was unknown, or max_images exceeds it: the bar ends at the count read
        # (Keras' one-line bar, when not on a terminal, is printed only on reaching its target).
        progbar.target = num_images
        progbar.update(num_images, finalize=True)
    seconds = time.perf_counter() - start
    if num_images == 0:
        raise ValueError(f"no image was evaluated: {pattern!r} holds no record")

    results = {
        **tally.results(class_names, seconds),
        "model": source,
        "data": str(data),
        "split": split if Path(data).is_dir() else None,
        "skipped_at_conversion": skipped_at_conversion(data, split, cache_dir),
        "batch_size": batch_size,
        "canvas": None if canvas is None else list(canvas),
        "tile_size": None if tile_size is None else list(tile_size),
        "backend": keras.backend.backend(),
    }
    if output_dir is not None:
        write_outputs(results, output_dir)
    if keep_predictions:
        results["predictions"] = predictions
    return results


#: Missing predictions named in ``evaluate_predictions``' error.
_MISSING_SHOWN = 3


def evaluate_predictions(
    predictions: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str = "val",
    output_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    class_names: Sequence[str] | None = None,
    label_colours: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = "cache",
    verbose: bool = True,
) -> dict[str, Any]:
    """Scores label maps computed elsewhere against a dataset split, as ``evaluate_model`` scores a
    model: ``fcn_keras.predict``'s label PNGs (on a canvas, in tiles, downscaled), the authors'
    Caffe outputs, another port's.

    Args:
        predictions: a folder of ``<image id>.png`` label maps, palette or grayscale PNGs of class
            indices (what ``fcn_keras.predict`` writes), one per image of the split at its size;
            directly in it or in its subfolders (``predict --recursive``'s outputs: each id's
            file found by name, which must then be unique).
        data, split, output_dir, max_images, cache_dir, verbose: as ``evaluate_model``.
        class_names: the ``C`` class names. ``None``: the data's, else VOC's.
        label_colours: for colour-coded predictions (RGB PNGs, as many ports save them):
            ``"voc"`` (VOC's colours) or a colour map file, read as the converter reads masks
            (``fcn_keras.data.voc.read_label_colours``); ``None``: PNGs of class indices.

    Returns:
        ``evaluate_model``'s results, with ``predictions_dir`` (the folder) instead of a model:
        ``model``, ``batch_size``, ``canvas``, ``tile_size`` and ``backend`` are ``None``.

    Raises:
        ValueError: ``predictions`` is not a folder; images of the split have no prediction, or
            several in its subfolders (counted and named, before anything is scored); a
            prediction is not a PNG of class indices (or of the colours of ``label_colours``),
            has another size than its image, or is no class at a counted pixel (naming the
            file); labels outside ``[0, C)`` and not void; or the data is bad (as
            ``evaluate_model``).
    """
    max_images = _check_common(max_images, output_dir)
    folder = Path(predictions)
    if not folder.is_dir():
        raise ValueError(f"predictions must be a folder of <image id>.png label maps (fcn_keras.predict's "
                         f"--output_dir). Received: predictions={str(predictions)!r}")
    recorded = data_class_names(data)
    if class_names is not None and recorded is not None and len(class_names) != len(recorded):
        raise ValueError(f"{len(class_names)} class names were given ({voc.abbreviate(class_names)}) but data "
                         f"{str(data)!r} has {len(recorded)} ({voc.abbreviate(recorded)})")
    names = tuple(class_names or recorded or VOC_CLASSES)
    colours = None if label_colours is None else voc.read_label_colours(label_colours, names)
    pattern, _ = resolve_split(data, split, cache_dir)
    ids = record_ids(pattern, max_images)
    if not ids:
        raise ValueError(f"no image was evaluated: {pattern!r} holds no record")
    paths = _prediction_paths(folder, ids)
    missing = [image_id for image_id in ids if image_id not in paths]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(ids)} images of data {str(data)!r} have no prediction in {folder}: expected "
            f"<image id>.png, e.g. {', '.join(str(folder / f'{i}.png') for i in missing[:_MISSING_SHOWN])}"
            + (" ..." if len(missing) > _MISSING_SHOWN else "")
        )
    tally = _Tally(len(names))
    progbar = keras.utils.Progbar(len(ids), unit_name="image", verbose=progress_verbosity(1)) if verbose else None
    start = time.perf_counter()
    for image_id, label in label_dataset(pattern).take(len(ids)).as_numpy_iterator():
        image_id = image_id.decode("utf-8")
        path = paths[image_id]
        _check_labels(label, len(names), data, f"image {image_id!r}", "prediction set")
        predicted = voc.read_label(path, colours)
        if predicted.shape != label.shape:
            raise ValueError(f"{path}: the prediction is {predicted.shape[0]}x{predicted.shape[1]} (HxW) but image "
                             f"{image_id!r} is {label.shape[0]}x{label.shape[1]}")
        try:
            tally.add(image_id, label, predicted)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        if progbar is not None:
            progbar.update(len(tally.per_image))
    results = {
        **tally.results(names, time.perf_counter() - start),
        "model": None,
        "predictions_dir": str(folder),
        "data": str(data),
        "split": split if Path(data).is_dir() else None,
        "skipped_at_conversion": skipped_at_conversion(data, split, cache_dir),
        "batch_size": None,
        "canvas": None,
        "tile_size": None,
        "backend": None,
    }
    if output_dir is not None:
        write_outputs(results, output_dir)
    return results


def _check_common(max_images: int | None, output_dir: str | os.PathLike | None) -> int | None:
    """Refuses, before any work, a ``max_images`` that is neither ``None`` nor an integer >= 1
    (a Python or numpy integer; not a bool, which would evaluate one image), and an
    ``output_dir`` that is (or lies in) a file or cannot be created: the outputs are written
    after the evaluation, which may take an hour. Returns ``max_images`` as an ``int`` (or ``None``)."""
    if max_images is not None and (not is_integer(max_images) or max_images < 1):
        raise ValueError(f"max_images must be None or an integer >= 1. Received: max_images={max_images!r}")
    if output_dir is not None:
        check_writable_folder("output_dir", output_dir)
    return None if max_images is None else int(max_images)


def _prediction_paths(folder: Path, ids: Sequence[str]) -> dict[str, Path]:
    """Each id's prediction: ``<folder>/<id>.png``, else the one ``<id>.png`` in its subfolders.

    Raises:
        ValueError: an id has several in the subfolders (naming two).
    """
    paths = {image_id: folder / f"{image_id}.png" for image_id in ids if (folder / f"{image_id}.png").is_file()}
    if len(paths) < len(ids):
        nested: dict[str, list[Path]] = {}
        for path in sorted(folder.rglob("*.png")):
            if path.parent != folder and path.is_file():
                nested.setdefault(path.stem, []).append(path)
        for image_id in ids:
            found = nested.get(image_id, [])
            if image_id not in paths and len(found) > 1:
                raise ValueError(f"image {image_id!r} has several predictions in {folder}: {found[0]} and {found[1]}"
                                 f"{f' and {len(found) - 2} more' if len(found) > 2 else ''}; keep one")
            if image_id not in paths and found:
                paths[image_id] = found[0]
    return paths


def _check_labels(labels: np.ndarray, num_classes: int, data: str | os.PathLike, where: str, predictor: str) -> None:
    """Refuses ground truth outside ``[0, num_classes)`` that is not void (it fits no such model)."""
    invalid = (labels >= num_classes) & (labels != IGNORE_LABEL)
    if invalid.any():
        raise ValueError(
            f"data {str(data)!r} holds labels {sorted(np.unique(labels[invalid]).tolist())} outside "
            f"[0, {num_classes}) and not {IGNORE_LABEL} (void), in {where}: they do not fit a {num_classes}-class {predictor}"
        )


class _Tally:
    """The streaming confusion matrix of an evaluation, with its per-image rows."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.void_pixels = 0
        self.per_image: list[dict[str, Any]] = []

    def add(self, image_id: str, label: np.ndarray, prediction: np.ndarray) -> None:
        """Counts one image: its ground truth and predicted label maps, uint8 ``[H, W]``."""
        own = confusion_matrix(label, prediction, self.num_classes)
        self.confusion += own
        self.void_pixels += int((label == IGNORE_LABEL).sum())
        rated = scores(own) if own.any() else {"pixel_accuracy": None, "mean_iu": None}
        self.per_image.append({"image_id": image_id, "height": int(label.shape[0]), "width": int(label.shape[1]),
                               "pixels": int(own.sum()), "pixel_accuracy": rated["pixel_accuracy"],
                               "mean_iu": rated["mean_iu"]})

    def results(self, class_names: Sequence[str], seconds: float) -> dict[str, Any]:
        """The scores and counts of ``evaluate_model``'s results."""
        return {
            **scores(self.confusion),
            "confusion": self.confusion.tolist(),
            "num_images": len(self.per_image),
            "num_pixels": int(self.confusion.sum()),
            "void_pixels": self.void_pixels,
            "class_names": list(class_names),
            "seconds": seconds,
            "images_per_second": len(self.per_image) / seconds,
            "per_image": self.per_image,
        }


# --- Outputs -----------------------------------------------------------------------------------


def evaluation_mode(results: dict[str, Any]) -> str:
    """How the images were fed, in words, e.g. "batches of 16 padded to a 500x500 canvas"."""
    batch, canvas, tile = results.get("batch_size", 1), results.get("canvas"), results.get("tile_size")
    if results.get("predictions_dir"):
        return "label maps read from files"
    if canvas:
        return f"batches of {batch} padded to a {canvas[0]}x{canvas[1]} canvas"
    if tile:
        return f"one at a time, exact, in tiles of at most {tile[0]}x{tile[1]}"
    return "one at a time, exact" if batch == 1 else f"batches of {batch} padded to the largest image"


def _skipped_lines(results: dict[str, Any]) -> list[str]:
    """A sentence on the images the conversion skipped, if any (none: no line)."""
    skipped = results.get("skipped_at_conversion") or []
    if not skipped:
        return []
    return ["", f"**{len(skipped)} image(s) of the split's list are not scored**: its conversion skipped them as "
            f"invalid (the conversion's skipped.json says why): {voc.abbreviate(skipped)}."]


def metrics_markdown(results: dict[str, Any]) -> str:
    """The markdown report: the paper's four metrics (in %) and the per-class IU table.

    Args:
        results: what ``evaluate_model`` returns.

    Returns:
        The markdown text.
    """
    lines = [
        f"# Evaluation of `{results['model'] or results.get('predictions_dir')}`",
        "",
        f"Data `{results['data']}`" + (f", split `{results['split']}`" if results.get("split") else "")
        + f": {results['num_images']} images at full size ({evaluation_mode(results)}), "
        f"{results['num_pixels']:,} non-void pixels; "
        + (f"backend {results['backend']}, " if results.get("backend") else "")
        + f"{results['images_per_second']:.2f} images/s.",
        *_skipped_lines(results),
        "",
        "| " + " | ".join(heading for _, heading in PAPER_METRICS) + " |",
        "|" + "---:|" * len(PAPER_METRICS),
        "| " + " | ".join(f"{100 * results[key]:.1f}" for key, _ in PAPER_METRICS) + " |",
        "",
        "## Per-class IU",
        "",
        "| class | IU (%) | pixels in ground truth |",
        "|---|---:|---:|",
    ]
    truth = np.asarray(results["confusion"]).sum(axis=1)
    for name, iu, pixels in zip(results["class_names"], results["per_class_iu"], truth):
        lines.append(f"| {name} | {'-' if iu is None else f'{100 * iu:.1f}'} | {int(pixels):,} |")
    lines += [
        "",
        "`-`: class absent from both ground truth and prediction (left out of the mean IU). "
        "Definitions: docs/evaluation.md.",
        "",
    ]
    rated = sorted((row for row in results.get("per_image", []) if row["mean_iu"] is not None),
                   key=lambda row: (row["mean_iu"], row["image_id"]))
    if rated:
        lines += [
            f"## Lowest mean IU ({min(HARDEST_SHOWN, len(rated))} of {len(rated)} images; all in {PER_IMAGE_CSV})",
            "",
            "| image | size (HxW) | pixel acc. (%) | mean IU (%) |",
            "|---|---:|---:|---:|",
            *(f"| {row['image_id']} | {row['height']}x{row['width']} | {100 * row['pixel_accuracy']:.1f} | "
              f"{100 * row['mean_iu']:.1f} |" for row in rated[:HARDEST_SHOWN]),
            "",
            "An image's mean IU averages over the classes in its own ground truth or prediction.",
            "",
        ]
    return "\n".join(lines)


def per_image_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``per_image.csv``'s text: a header of ``PER_IMAGE_COLUMNS`` and a row per image (empty
    scores for an image of void only)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, PER_IMAGE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if row[key] is None else row[key] for key in PER_IMAGE_COLUMNS} for row in rows)
    return text.getvalue()


def write_outputs(results: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes ``metrics.json`` (``results`` but ``per_image``), ``metrics.md``, ``per_image.csv``
    and ``confusion.png`` (each atomically).

    Args:
        results: what ``evaluate_model`` returns.
        output_dir: the folder (created).

    Returns:
        ``{"json": path, "markdown": path, "per_image": path, "confusion": path}``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": output_dir / METRICS_JSON,
        "markdown": output_dir / METRICS_MD,
        "per_image": output_dir / PER_IMAGE_CSV,
        "confusion": output_dir / CONFUSION_PNG,
    }
    summary = {key: value for key, value in results.items() if key != "per_image"}
    write_text_atomic(paths["json"], json.dumps(summary, indent=2) + "\n")
    write_text_atomic(paths["markdown"], metrics_markdown(results))
    write_text_atomic(paths["per_image"], per_image_csv(results["per_image"]))
    viz.plot_confusion_matrix(np.asarray(results["confusion"]), results["class_names"], paths["confusion"])
    return paths


# --- CLI ---------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags of ``python -m fcn_keras.evaluate``."""
    flags.DEFINE_string("model", None, "Trained FCN: a .keras file (from fcn_keras.train, any backend), a run folder of "
                        "fcn_keras.train (its best.keras, else last.keras), or the authors' .caffemodel. Or --predictions.")
    flags.DEFINE_string("predictions", None, "Instead of --model: a folder of <image id>.png label maps computed elsewhere "
                        "(fcn_keras.predict's --output_dir, another implementation's), scored the same way.")
    flags.DEFINE_string("label_colours", None, "With --predictions saved as colour (RGB) PNGs: 'voc' (VOC's colours) or a "
                        "file of '<label> R G B' lines, as fcn_keras.data.convert reads masks. Default: class indices.")
    flags.DEFINE_string(
        "data",
        None,
        "TFRecord glob (e.g. 'records/val-*.tfrecord'), a folder written by fcn_keras.data.convert "
        "(manifest.json), or a VOCdevkit root (holding VOC2012/), converted under --cache_dir.",
        required=True,
    )
    flags.DEFINE_string("split", "val", "Split of a folder --data to evaluate (ignored for a TFRecord glob).")
    flags.DEFINE_string("output_dir", None, "Folder for metrics.json, metrics.md, per_image.csv and confusion.png (none written if unset).")
    flags.DEFINE_integer("max_images", None, "Evaluate only the first N images (default: all).", lower_bound=1)
    flags.DEFINE_integer(
        "batch_size", 1, "Images per device call; 1 is exact full-size evaluation, more pads to the batch's largest image.",
        lower_bound=1,
    )
    flags.DEFINE_string(
        "canvas", None, "N or HxW: pad every image to this size (mean colour; labels void, not counted) and fill the "
        "last batch, so the model sees one input shape: one XLA compilation under JAX instead of one per image size. "
        "Default: exact sizes (batch 1) or the batch's largest image.",
    )
    flags.DEFINE_string(
        "tile_size", None, "N or HxW (>= 480): segment images larger than that in tiles (the same labels as whole, the "
        "memory of a tile), for datasets of large images. Needs --batch_size=1 and no --canvas. Default: whole images.",
    )
    flags.DEFINE_string("class_names", None, "Class names for metrics.md and the confusion matrix, a file with one per "
                        "line or a comma-separated list. Default: the data's (its manifest.json; VOC's for a VOCdevkit "
                        "root or records without a manifest).")
    flags.DEFINE_string("cache_dir", "cache", "Where a VOCdevkit --data is converted to TFRecords, into "
                        "<cache_dir>/records-<hash of its path>: as fcn_keras.train does, so a root it trained on "
                        "with the same --cache_dir is not converted again.")


def main(argv: list[str]) -> int:
    """Runs the evaluation and prints the four metrics; returns the exit status."""
    if len(argv) > 1:
        return usage_error("fcn_keras.evaluate", f"unexpected arguments: {argv[1:]}")
    if (FLAGS.model is None) == (FLAGS.predictions is None):
        return usage_error("fcn_keras.evaluate", "pass --model (a trained FCN to run) or --predictions (a folder of its "
                                                 "label maps), one of them")
    model_flags = [flag for flag, given in (("--batch_size", FLAGS.batch_size != 1), ("--canvas", bool(FLAGS.canvas)),
                                            ("--tile_size", bool(FLAGS.tile_size))) if given]
    if FLAGS.label_colours is not None and FLAGS.predictions is None:
        return usage_error("fcn_keras.evaluate", "--label_colours reads colour-coded --predictions; a --model's labels "
                                                 "are class indices: drop it")
    if FLAGS.predictions is not None and model_flags:
        return usage_error("fcn_keras.evaluate", f"{', '.join(model_flags)} tell{'s' if len(model_flags) == 1 else ''} how to run a --model; --predictions "
                                                 "are read as they are: drop them")
    try:
        class_names = None if FLAGS.class_names is None else voc.read_class_names(FLAGS.class_names)
        common = {"split": FLAGS.split, "output_dir": FLAGS.output_dir, "max_images": FLAGS.max_images,
                  "class_names": class_names, "cache_dir": FLAGS.cache_dir}
        if FLAGS.predictions is not None:
            results = evaluate_predictions(FLAGS.predictions, FLAGS.data, label_colours=FLAGS.label_colours, **common)
        else:
            canvas = parse_size(FLAGS.canvas, "--canvas") if FLAGS.canvas else None
            tile_size = None
            if FLAGS.tile_size:
                tile_size = check_tile_size(parse_size(FLAGS.tile_size, "--tile_size"), "--tile_size")
                if FLAGS.batch_size != 1 or canvas is not None:
                    raise ValueError(f"--tile_size segments one image at a time: it needs --batch_size=1 and no "
                                     f"--canvas. Received: --batch_size={FLAGS.batch_size}, --canvas={FLAGS.canvas}")
            results = evaluate_model(FLAGS.model, FLAGS.data, batch_size=FLAGS.batch_size, canvas=canvas,
                                     tile_size=tile_size, **common)
    except (FileNotFoundError, ValueError) as error:  # Bad input: the message names it.
        print(f"fcn_keras.evaluate: error: {error}", file=sys.stderr)
        return 2
    skipped = results["skipped_at_conversion"]
    print(
        " | ".join(f"{heading} {100 * results[key]:.2f}" for key, heading in PAPER_METRICS)
        + f" | {results['num_images']} images, {results['images_per_second']:.2f} images/s"
        + (f" | {len(skipped)} skipped at conversion, not scored" if skipped else "")
    )
    if FLAGS.output_dir:
        print(f"wrote {METRICS_JSON}, {METRICS_MD}, {PER_IMAGE_CSV}, {CONFUSION_PNG} in {FLAGS.output_dir}")
    return 0


if __name__ == "__main__":
    define_flags()
    run_cli(main)
