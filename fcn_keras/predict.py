"""Predict CLI: label maps in the VOC palette and overlays for image files and folders.

    python -m fcn_keras.predict --model=runs/fcn8s/best.keras --output_dir=out photo.jpg images/
    python -m fcn_keras.predict --model=serving/fcn8s/1 --output_dir=out images/
    python -m fcn_keras.predict --model=runs/mine --label_colours=mine/colours.csv --output_dir=out images/

For every input image ``<stem>.<ext>`` it writes ``<output_dir>/<stem>.png`` (a palette PNG of
class indices in VOC's colours, like VOC's ``SegmentationClass`` files, or in a dataset's own
colours with ``--label_colours``, the colour map its masks were converted with) and
``<output_dir>/<stem>_overlay.jpg`` (or ``.png``). The model is a ``.keras`` file or a
training run folder (its ``best.keras``, else ``last.keras``; the argmax is appended to the
graph with ``fcn_keras.inference.labels_model``) or a SavedModel from ``fcn_keras.export`` (its
``serving_default`` ``labels`` output): either way only the uint8 label map leaves the device.

Large images can be segmented in tiles (``--tile_size=2048``), which bounds the memory of a
device call by the tile's size and gives the same label maps as the whole image
(``fcn_keras.inference.segment_in_tiles``). Folders of photos of many sizes can be segmented on a
fixed canvas (``--canvas=500 --batch_size=8``): each image padded to it, several a device call, so
a compiled (XLA) predict function is compiled once instead of once per image size
(``fcn_keras.inference.segment_on_canvas``; labels within the net's reach of the padding can
differ slightly from the whole image's). Photos much larger than the training images can be
segmented downscaled (``--max_size=500``: the longer side shrunk to 500 px, the labels resized
back to the photo's size by nearest neighbour); with ``--canvas=500`` every image then fits the
canvas.

Inputs: files, or folders whose files ending in one of ``fcn_keras.io.IMAGE_EXTENSIONS`` are
taken (others and hidden files are counted and reported); with ``--recursive`` their subfolders'
too, each output at the image's path below the folder. Files in ``output_dir`` itself are not
taken from a folder (they may be an earlier run's outputs; they are counted and reported).
Nothing is written if an output would replace an input file, or, without ``--overwrite``, a
file that fcn_keras did not write. JPEGs are decoded as training and the SavedModel decode them (``fcn_keras.io.read_image``).
Grayscale, palette and RGBA images are converted to RGB (alpha dropped); images that are not
8 bits per channel are rejected. A file that cannot be used is reported with the reason and the
others are still processed; the exit status is then 1.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from fcn_keras.checks import check_int, check_writable_folder, parse_size
from fcn_keras.console import counted, progress_verbosity, run_cli, usage_error
from fcn_keras.constants import VOC_PALETTE
from fcn_keras.data import voc
from fcn_keras.export import CLASS_NAMES_FILE, SERVING_SIGNATURE, TILE_CONTEXT_FILE
from fcn_keras.inference import (
    TILE_CONTEXT, check_canvas, check_max_size, check_tile_size, check_tileable, downscale, fits_canvas, labels_model,
    min_tile_size, resize_labels, segment_in_tiles, segment_on_canvas,
)
from fcn_keras.io import (
    IMAGE_EXTENSIONS, RUN_CHECKPOINTS, load_fcn, read_image, run_class_names, write_image, write_label_png,
    written_here,
)
from fcn_keras.viz import overlay

#: Maps one RGB image uint8 [H, W, 3] to its label map uint8 [H, W].
Predictor = Callable[[np.ndarray], np.ndarray]

#: Maps a batch of same-size RGB images uint8 [N, H, W, 3] to label maps uint8 [N, H, W].
BatchPredictor = Callable[[np.ndarray], np.ndarray]

# --- Models ------------------------------------------------------------------------------------


def _savedmodel_dir(path: Path) -> Path | None:
    """``path`` if it holds a SavedModel; its highest numbered version if it is a TF Serving
    model base folder; else None."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = [child for child in path.iterdir() if child.name.isdigit() and (child / "saved_model.pb").is_file()]
    return max(versions, key=lambda child: int(child.name)) if versions else None


class CanvasPredictor:
    """A model's label maps, several images a call: those that fit the canvas are padded to it,
    ``batch_size`` a device call (``fcn_keras.inference.segment_on_canvas``), the others are
    segmented one at a time at their own size (``single``: whole, or in tiles).

    ``predictor(image)`` segments one image, ``predictor.many(images)`` a list of images.
    """

    def __init__(self, segment_batch: BatchPredictor, single: Predictor, canvas: tuple[int, int], batch_size: int) -> None:
        self.segment_batch = segment_batch
        self.single = single
        self.canvas = check_canvas(canvas)
        self.batch_size = batch_size
        #: How many images were larger than the canvas (segmented at their own size).
        self.outside = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.many([image])[0]

    def many(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 ``[H_i, W_i]`` label maps of uint8 ``[H_i, W_i, 3]`` images, in their order."""
        inside = [index for index, image in enumerate(images) if fits_canvas(image, self.canvas)]
        labels: list[np.ndarray | None] = [None] * len(images)
        for index, label_map in zip(inside, segment_on_canvas(
                self.segment_batch, [images[index] for index in inside], self.canvas, self.batch_size)):
            labels[index] = label_map
        for index, label_map in enumerate(labels):
            if label_map is None:  # Larger than the canvas: at its own size.
                labels[index] = self.single(images[index])
                self.outside += 1
        return labels


class DownscalingPredictor:
    """A predictor of images shrunk so that their longer side is at most ``max_size``
    (``fcn_keras.inference.downscale``), whose labels are resized back to each image's size by
    nearest neighbour (``resize_labels``). ``inner`` (a ``Predictor`` or ``CanvasPredictor``)
    segments the shrunk images; ``many`` and ``batch_size`` pass through to it.
    """

    def __init__(self, inner: Predictor, max_size: int) -> None:
        self.inner = inner
        self.max_size = check_max_size(max_size)
        self.batch_size = getattr(inner, "batch_size", 1)
        #: How many images were larger than ``max_size`` (segmented downscaled).
        self.downscaled = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.many([image])[0]

    def many(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 ``[H_i, W_i]`` label maps of uint8 ``[H_i, W_i, 3]`` images, in their order."""
        small = [downscale(image, self.max_size) for image in images]
        many = getattr(self.inner, "many", None)
        labels = many(small) if many is not None else [self.inner(image) for image in small]
        self.downscaled += sum(shrunk is not image for shrunk, image in zip(small, images))
        return [resize_labels(label_map, image.shape[:2]) for label_map, image in zip(labels, images)]


def load_predictor(
    path: str | os.PathLike,
    tile_size: int | tuple[int, int] | None = None,
    canvas: int | tuple[int, int] | None = None,
    batch_size: int = 1,
    max_size: int | None = None,
) -> Predictor:
    """A label-map function from a ``.keras`` FCN or an exported SavedModel.

    Args:
        path: a ``.keras`` file, a training run folder (its ``best.keras``, else
            ``last.keras``), a SavedModel folder written by ``fcn_keras.export``
            (``<export_dir>/<name>/<version>``), or its model folder ``<export_dir>/<name>``
            (the highest version is used, as TF Serving does).
        tile_size: ``N`` or ``(height, width)``, each >= ``min_tile_size()`` (480): images with a
            side larger than that are segmented in tiles (``fcn_keras.inference.segment_in_tiles``), with the
            same labels as whole. None: whole images. A ``.keras`` model must be an FCN-VGG16 of
            ``build_fcn``; a SavedModel must say how much context it needs (``fcn_keras.export``
            writes ``TILE_CONTEXT_FILE`` for those).
        canvas: ``N`` or ``(height, width)``: images that fit are padded to it (one input shape
            for every call; see ``CanvasPredictor``), larger ones are segmented at their own
            size (whole, or in tiles). None: every image at its own size.
        batch_size: images per device call on the canvas; above 1 it needs ``canvas``.
        max_size: images whose longer side exceeds it are segmented shrunk to it, their labels
            resized back (a ``DownscalingPredictor`` around the rest); tiles and canvas then
            apply to the shrunk images. None: full size.

    Returns:
        A function mapping uint8 ``[H, W, 3]`` to uint8 ``[H, W]``, the argmax on the device; with
        ``canvas``, a ``CanvasPredictor``, and with ``max_size`` a ``DownscalingPredictor``, which
        also segment lists of images (``many``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an FCN (the message names it and says what was found), a
            model to tile is not an FCN-VGG16 (or a SavedModel does not say so), ``tile_size``
            is too small (also for the context a SavedModel records), ``canvas`` is not a size,
            ``batch_size`` is not >= 1 (or above 1 without ``canvas``), or ``max_size`` is not >= 1.
    """
    if max_size is not None:
        max_size = check_max_size(max_size)
    if tile_size is not None:
        tile_size = check_tile_size(tile_size)
    if canvas is not None:
        canvas = check_canvas(canvas)
    batch_size = check_int("batch_size", batch_size, 1)
    if batch_size > 1 and canvas is None:
        raise ValueError(f"batch_size={batch_size} needs a canvas: images of different sizes are batched by padding "
                         "them to one canvas")
    segment_batch, context = _load_segment(Path(path), tiled=tile_size is not None)
    if tile_size is not None and min(tile_size) < min_tile_size(context):  # A SavedModel's net of larger reach.
        raise ValueError(
            f"tile_size must be at least {min_tile_size(context)} pixels on each side for {path}: its "
            f"{TILE_CONTEXT_FILE} says its net needs {context} pixels of context on each side. "
            f"Received: tile_size={tile_size[0]}x{tile_size[1]}"
        )

    def segment(image: np.ndarray) -> np.ndarray:
        return segment_batch(image[np.newaxis])[0]

    single = segment if tile_size is None else lambda image: segment_in_tiles(segment, image, tile_size, context)
    predictor = single if canvas is None else CanvasPredictor(segment_batch, single, canvas, batch_size)
    return predictor if max_size is None else DownscalingPredictor(predictor, max_size)


def model_class_names(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names recorded for a model: by its training run (a ``.keras`` file in a run
    folder, or the folder; ``fcn_keras.io.run_class_names``) or beside its SavedModel
    (``fcn_keras.export.CLASS_NAMES_FILE``, read like ``--class_names`` files: a malformed one is a
    ``ValueError`` naming it); ``None`` when neither recorded them."""
    path = Path(path)
    saved_dir = _savedmodel_dir(path) if path.is_dir() else None
    if saved_dir is None:
        return run_class_names(path)
    names_file = saved_dir / CLASS_NAMES_FILE
    return voc.read_class_names(names_file) if names_file.is_file() else None


def _load_segment(path: Path, tiled: bool) -> tuple[BatchPredictor, int | None]:
    """``load_predictor``'s function of whole images (a batch of one size), and the context tiles
    need if ``tiled`` (checked to be known for the model)."""
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    saved_dir = _savedmodel_dir(path) if path.is_dir() else None
    if saved_dir is None:
        if path.is_dir() and not any((path / name).is_file() for name in RUN_CHECKPOINTS):
            raise ValueError(
                f"{path} is a folder without saved_model.pb (nor numbered version folders holding one) "
                f"nor {' or '.join(RUN_CHECKPOINTS)}: give a .keras file, a run folder of "
                "fcn_keras.train or a SavedModel from fcn_keras.export"
            )
        fcn = load_fcn(path)  # A .keras file or a run folder's checkpoint.
        if tiled:
            check_tileable(fcn, str(path))
        model = labels_model(fcn)
        return lambda images: np.asarray(model.predict_on_batch(images)), TILE_CONTEXT

    try:
        loaded = tf.saved_model.load(str(saved_dir))
    except Exception as error:  # TF raises several types for a corrupt SavedModel.
        raise ValueError(f"cannot load SavedModel {saved_dir}: {type(error).__name__}: {error}") from error
    signature = loaded.signatures.get(SERVING_SIGNATURE)
    inputs = signature.structured_input_signature[1] if signature is not None else {}
    outputs = signature.structured_outputs if signature is not None else {}
    images = inputs.get("images")
    if (
        images is None
        or images.dtype != tf.uint8
        or images.shape.rank != 4
        or "labels" not in outputs
        or outputs["labels"].dtype != tf.uint8
    ):
        raise ValueError(
            f"{saved_dir} is not an FCN SavedModel from fcn_keras.export: expected a "
            f"{SERVING_SIGNATURE!r} signature images uint8 [N, H, W, 3] -> labels uint8 [N, H, W]; "
            f"found signatures {sorted(loaded.signatures)}"
            + (f", {SERVING_SIGNATURE} inputs {inputs} outputs {outputs}" if signature is not None else "")
        )
    context = None
    if tiled:
        context_file = saved_dir / TILE_CONTEXT_FILE
        if not context_file.is_file():
            raise ValueError(
                f"{saved_dir} does not say how much context its net needs ({TILE_CONTEXT_FILE}, written by "
                "fcn_keras.export for FCN-VGG16s of build_fcn): tiles would be wrong; export it again, or segment "
                "whole images (no --tile_size)"
            )
        text = context_file.read_text()
        try:
            context = int(text)
        except ValueError:
            context = -1
        if context < 0:  # A negative context would make tiles without overlap: wrong labels.
            raise ValueError(f"{context_file} must hold a whole number of pixels >= 0. Received: {text[:40]!r}")
    # Through ``loaded`` (not the bare signature), which keeps the variables alive.
    return lambda images: loaded.signatures[SERVING_SIGNATURE](images=tf.constant(images))["labels"].numpy(), context


# --- Inputs ------------------------------------------------------------------------------------


class Inputs(NamedTuple):
    """What ``collect_images`` found."""

    #: The image paths in order (folders sorted by name).
    images: list[Path]
    #: The sources that cannot be used, with the reason (missing path, empty folder).
    bad: list[tuple[Path, str]]
    #: Folder entries skipped for being hidden (``.name``, e.g. macOS' ``._photo.jpg``; with
    #: ``recursive``, a hidden folder counts once) or for not having an image extension.
    ignored: int
    #: Folder entries skipped for lying in ``output_dir`` itself (an earlier run's outputs).
    skipped: int
    #: Each image's outputs' name, relative to ``output_dir`` and without suffix: its stem, or
    #: with ``recursive`` its path below the folder given (``a/x`` for ``photos/a/x.jpg``).
    names: list[Path]
    #: Without ``recursive``: the subfolders of the folders given, not searched (not hidden ones).
    unsearched: int = 0
    #: Images named more than once under one output name (a folder and a file in it, or a file
    #: twice): taken once.
    repeated: int = 0


def _in_folder(path: Path, folder: Path | None) -> bool:
    """Whether ``path`` (resolved, following links) lies directly in ``folder`` (resolved), where
    the outputs are written (not in a folder below it: outputs never go there)."""
    return folder is not None and path.resolve().parent == folder


def collect_images(
    sources: Sequence[str | os.PathLike], output_dir: str | os.PathLike | None = None, recursive: bool = False
) -> Inputs:
    """Expands files and folders into the list of images to process.

    Args:
        sources: image files and folders (each folder's files with an image extension, not
            hidden ones; with ``recursive`` also those of its subfolders, not hidden ones, each
            folder once however many links lead to it).
        output_dir: where the outputs will go, or None. A folder's files that lie directly in
            it (after resolving links) are not taken: they may be an earlier run's label PNGs
            and overlays, which would otherwise be segmented as new images. Files named
            explicitly in ``sources`` are always taken (``check_outputs`` then refuses any that
            an output would replace). With ``recursive``, ``output_dir`` inside a folder is not
            searched (its image files are counted as skipped), and a folder that is
            ``output_dir`` itself is refused (its outputs would mix with its inputs).
        recursive: also take the images of subfolders; their outputs keep the path below the
            folder given (``Inputs.names``).

    Returns:
        ``Inputs(images, bad, ignored, skipped, names, unsearched, repeated)``: the image paths
        in order (folders sorted by name, a folder's files before its subfolders'; an image
        named twice at its first place), the sources that cannot be used with the reason
        (missing path, empty folder, a folder or subfolder that cannot be read), the number of
        folder entries skipped for being hidden or not having an image extension, the number of
        image files skipped for lying in ``output_dir``, each image's outputs' name, the number
        of subfolders not searched (without ``recursive``) and of images named more than once.
    """
    out = Path(output_dir).resolve() if output_dir is not None else None
    images, bad, names, ignored, skipped, unsearched = [], [], [], 0, 0, 0
    for source in map(Path, sources):
        if source.is_dir():
            if recursive and out is not None and source.resolve() == out:
                bad.append((source, f"with --recursive, --output_dir={output_dir} cannot be the folder searched: the "
                                    "outputs would mix with its images (and be taken as inputs by the next run); "
                                    "write them to another --output_dir"))
                continue
            found, hidden, outputs, subfolders, unreadable = _folder_images(source, out, recursive)
            ignored += hidden
            unsearched += subfolders
            bad.extend(unreadable)
            kept = [child for child in found if not _in_folder(child, out)]
            skipped += len(found) - len(kept) + outputs
            if not found and not outputs:
                if not unreadable:  # (A folder that could not be read has its reason.)
                    bad.append((source, f"folder holds no (not hidden) file ending in {', '.join(IMAGE_EXTENSIONS)}"
                                        + (" in it or its subfolders" if recursive else "")
                                        + (f"; it has {counted(subfolders, 'subfolder')}: --recursive searches them"
                                           if subfolders else "")))
            elif not kept:
                count = len(found) + outputs
                are, inputs, they = (("is", "input", "it may be an output") if count == 1
                                     else ("are", "inputs", "they may be outputs"))
                bad.append((source, f"the {counted(count, 'image file')} of {source} {are} in --output_dir={output_dir} and "
                                    f"{are} not taken as {inputs} ({they} of an earlier run): write the outputs to "
                                    "another --output_dir"))
            images.extend(kept)
            names.extend(child.relative_to(source).with_suffix("") if recursive else Path(child.stem) for child in kept)
        elif source.is_file():
            images.append(source)
            names.append(Path(source.stem))
        else:
            bad.append((source, "no such file or folder"))
    first = {}  # Each (image, output name) at its first place: a link of another name is another input.
    for index, (image, name) in enumerate(zip(images, names)):
        first.setdefault((image.resolve(), name), index)
    kept = sorted(first.values())
    return Inputs([images[i] for i in kept], bad, ignored, skipped, [names[i] for i in kept], unsearched,
                  len(images) - len(kept))


def _folder_images(
    folder: Path, out: Path | None, recursive: bool
) -> tuple[list[Path], int, int, int, list[tuple[Path, str]]]:
    """``(images, ignored, outputs, unsearched, unreadable)``: the image files of ``folder`` (not
    hidden; with ``recursive`` its subfolders' too, not hidden ones nor ``out``, each folder
    once) in order, the number of entries ignored (hidden, or files without an image
    extension), the number of image files in the pruned ``out``, without ``recursive`` the
    number of subfolders (not hidden) left unsearched, and the folders that could not be listed
    with the reason (the others are searched)."""
    images, ignored, outputs, seen, unreadable = [], 0, 0, {folder.resolve()}, []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            children = sorted(current.iterdir())
        except OSError as error:  # No permission, or gone meanwhile.
            unreadable.append((current, f"folder cannot be read: {error.strerror or error}"))
            continue
        files = [child for child in children if child.is_file()]
        found = [child for child in files if child.suffix.lower() in IMAGE_EXTENSIONS and not child.name.startswith(".")]
        images.extend(found)
        ignored += len(files) - len(found)
        if not recursive:
            unsearched = sum(1 for child in children if child.is_dir() and not child.name.startswith(".")
                             and child.resolve() not in {out, *seen})  # Those --recursive would search.
            return images, ignored, outputs, unsearched, unreadable
        subfolders = []
        for child in children:
            if not child.is_dir() or child.resolve() in seen:
                continue
            if child.name.startswith("."):
                ignored += 1
            elif out is not None and child.resolve() == out:
                outputs += sum(1 for path in out.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())
            else:
                subfolders.append(child)
                seen.add(child.resolve())
        pending.extend(reversed(subfolders))  # Depth first, in name order.
    return images, ignored, outputs, 0, unreadable


# --- Prediction --------------------------------------------------------------------------------


def output_paths(
    image: Path, output_dir: str | os.PathLike, overlay_format: str = "jpg", name: Path | None = None
) -> tuple[Path, Path]:
    """``(<output_dir>/<name>.png, <output_dir>/<name>_overlay.<overlay_format>)`` for ``image``;
    ``name`` is its stem unless given (``Inputs.names``: ``a/x`` below a folder)."""
    name = Path(image.stem) if name is None else Path(name)
    base = Path(output_dir) / name.parent
    return base / f"{name.name}.png", base / f"{name.name}_overlay.{overlay_format}"


def _file_id(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of an existing file (the same for every link to it), else None."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_outputs(
    images: Sequence[Path],
    output_dir: str | os.PathLike,
    overlay_format: str = "jpg",
    overwrite: bool = False,
    names: Sequence[Path] | None = None,
) -> None:
    """Refuses, before anything is written, a run that would destroy a file it did not write.

    Checks that ``output_dir`` is a folder (or does not exist yet); that no output would replace
    one of the input images (outputs and inputs compared as resolved paths and, for files that
    exist, as the same file on disk: links, case-insensitive file systems), even with
    ``overwrite``; and, unless ``overwrite``, that every file already at an output path is one
    that ``fcn_keras.io`` wrote (``written_here``: an earlier run's output, which the run replaces).

    Args:
        images: the input image files.
        output_dir: see ``predict_images``.
        overlay_format: ``"jpg"`` or ``"png"``.
        overwrite: also replace files at output paths that ``fcn_keras.io`` did not write.
        names: each image's outputs' name (``Inputs.names``); None: their stems.

    Raises:
        ValueError: naming ``output_dir`` if it is (or lies in) a file or cannot be written;
            else the first input or other file
            that would be overwritten, the output that would overwrite it and how many more
            would be, with what to do instead.
    """
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"--output_dir={output_dir} is a file, not a folder; nothing was written")
    check_writable_folder("--output_dir", output_dir)  # Not found unwritable image by image, after the work.
    by_path = {image.resolve(): image for image in images}
    by_id = {file_id: image for image in images if (file_id := _file_id(image)) is not None}
    names = names or [None] * len(images)
    outputs = list(dict.fromkeys(output for image, name in zip(images, names)
                                 for output in output_paths(image, output_dir, overlay_format, name)))
    clashes = []
    for output in outputs:
        victim = by_path.get(output.resolve()) or by_id.get(_file_id(output))
        if victim is not None:
            clashes.append((victim, output))
    if clashes:
        victim, output = clashes[0]
        resolved = Path(output_dir).resolve()
        raise ValueError(
            f"output {output} would overwrite the input image {victim}"
            + (f" ({len(clashes) - 1} more outputs would overwrite inputs)" if len(clashes) > 1 else "")
            + f"; nothing was written: choose another --output_dir, one that holds no input images "
            f"(e.g. --output_dir={resolved.parent / (resolved.name + '_predictions')})"
        )
    foreign = [] if overwrite else [output for output in outputs if output.exists() and not written_here(output)]
    if foreign:
        raise ValueError(
            f"output {foreign[0]} would replace a file that fcn_keras did not write"
            + (f" ({len(foreign) - 1} more outputs would replace such files)" if len(foreign) > 1 else "")
            + "; nothing was written: choose another --output_dir, or pass --overwrite to replace them"
        )


def predict_images(
    predictor: Predictor,
    images: Sequence[Path],
    output_dir: str | os.PathLike,
    *,
    overlay_format: str = "jpg",
    alpha: float = 0.5,
    overwrite: bool = False,
    verbose: bool = True,
    palette: np.ndarray = VOC_PALETTE,
    names: Sequence[Path] | None = None,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Writes the label PNG and the overlay of every image; a bad image does not stop the rest.

    Args:
        predictor: from ``load_predictor``; one with ``many`` (``CanvasPredictor``,
            ``DownscalingPredictor``) gets its ``batch_size`` images at a time (read, segmented in
            one call, written), any other function one.
        images: image files.
        output_dir: where ``<stem>.png`` and ``<stem>_overlay.<overlay_format>`` go.
        overlay_format: ``"jpg"`` or ``"png"``.
        alpha: weight of the label colours in the overlay (``fcn_keras.viz.overlay``).
        overwrite: also replace existing files that ``fcn_keras.io`` did not write (see
            ``check_outputs``).
        verbose: show a ``keras.utils.Progbar``.
        palette: uint8 ``[256, 3]``, the colours of the label PNGs and overlays (VOC's, or a
            dataset's own: ``fcn_keras.data.voc.LabelColours.palette``).
        names: each image's outputs' name below ``output_dir`` (``Inputs.names``: ``a/x`` for
            ``a/x.png``); None: their stems.

    Returns:
        ``(written, bad)``: the label PNGs written, and the images that failed with the reason
        (among them an image whose outputs would replace an earlier image's outputs: same
        stem, or ``b_overlay.png`` beside ``b.png`` with PNG overlays).

    Raises:
        ValueError: ``check_outputs`` refuses the run; nothing is written then.
    """
    names = list(names) if names is not None else [Path(image.stem) for image in images]
    check_outputs(images, output_dir, overlay_format, overwrite, names)
    segment_many = getattr(predictor, "many", None) or (lambda pictures: [predictor(picture) for picture in pictures])
    batch_size = getattr(predictor, "batch_size", 1)
    written, bad, claimed = [], [], {}
    progbar = keras.utils.Progbar(len(images), unit_name="image", verbose=progress_verbosity(1 if verbose else 0))
    for first in range(0, len(images), batch_size):
        ready = []  # (path, image, label_path, overlay_path) of the images read.
        for path, name in zip(images[first:first + batch_size], names[first:first + batch_size]):
            label_path, overlay_path = output_paths(path, output_dir, overlay_format, name)
            taken = next((output for output in (label_path, overlay_path) if output in claimed), None)
            if taken is not None:
                bad.append((path, f"its output {taken.name} would overwrite an output of {claimed[taken]}"))
                continue
            try:
                ready.append((path, read_image(path), label_path, overlay_path))
            except Exception as error:
                bad.append((path, _reason(error)))
                continue
            claimed.update({label_path: path, overlay_path: path})  # Only an image that is read claims them.
        try:
            label_maps = segment_many([image for _, image, _, _ in ready]) if ready else []
        except Exception as error:  # Prediction failed: report it for these images, go on with the rest.
            bad.extend((path, _reason(error)) for path, *_ in ready)
            label_maps = []
        for (path, image, label_path, overlay_path), labels in zip(ready, label_maps):
            label_written = False
            try:
                picture = overlay(image, labels, alpha, palette)  # First: labels of another size fail here,
                write_label_png(labels, label_path, palette)      # before anything of this image is written.
                label_written = True
                write_image(picture, overlay_path)
                written.append(label_path)
            except Exception as error:  # A failed image leaves no output (evaluate would score a label PNG).
                if label_written:
                    label_path.unlink(missing_ok=True)
                bad.append((path, _reason(error) + (f"; its label PNG {label_path.name} was removed" if label_written else "")))
        progbar.update(min(first + batch_size, len(images)))
    return written, bad


def _reason(error: Exception) -> str:
    """Why an image failed: the message of a ``ValueError`` or ``OSError`` (``read_image``'s name
    the file and the problem), else the exception's type and message."""
    return str(error) if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {error}"


# --- Command line ------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a program, so modules import side-effect free)."""
    flags.DEFINE_string("model", None, "A .keras FCN, a run folder of fcn_keras.train (its best.keras, else last.keras), "
                        "a SavedModel from fcn_keras.export (version folder or model folder), or the authors' .caffemodel.")
    flags.DEFINE_string("output_dir", None, "Folder for <stem>.png (VOC palette labels) and <stem>_overlay.<format>; "
                        "its files are not taken as inputs, and no output may replace an input file.")
    flags.DEFINE_boolean("overwrite", False, "Replace files at output paths that fcn_keras did not write (without it the "
                         "run stops before writing; earlier outputs of fcn_keras are always replaced, inputs never).")
    flags.DEFINE_enum("overlay_format", "jpg", ["jpg", "png"], "File format of the overlays.")
    flags.DEFINE_boolean("recursive", False, "Also segment the images of the folders' subfolders (not hidden ones, nor "
                         "--output_dir); their outputs keep the path below the folder given: photos/a/x.jpg -> "
                         "<output_dir>/a/x.png.")
    flags.DEFINE_string("tile_size", None, "Segment images larger than N or HxW pixels in tiles of at most that size "
                        f"(at least {min_tile_size()}): bounds the memory of a call, same labels as whole images. "
                        "Default: whole images.")
    flags.DEFINE_string("canvas", None, "N or HxW: pad every image that fits to this size (mean colour, at the bottom "
                        "and right) so that every device call has one shape: XLA (JAX, TensorFlow on a GPU) compiles "
                        "once instead of once per image size; labels near the padding can differ slightly. Larger "
                        "images are segmented at their own size. Default: every image at its own size, exact.")
    flags.DEFINE_integer("batch_size", 1, "Images per device call on --canvas (above 1 needs --canvas).", lower_bound=1)
    flags.DEFINE_integer("max_size", None, "Segment images whose longer side exceeds N pixels shrunk to N (antialiased) "
                         "and resize their labels back (nearest neighbour): a net trained on PASCAL VOC (sides up to "
                         "500) sees photos at the scale it learned, for a fraction of the work. With --canvas=N every "
                         "image fits the canvas. Default: full size.", lower_bound=1)
    flags.DEFINE_string("label_colours", None, "Paint labels in a dataset's own colours: the colour map its masks were "
                        "converted with (a file of '<label> R G B' lines, see fcn_keras.data.convert), or 'voc' (default).")
    flags.DEFINE_float("alpha", 0.5, "Weight of the label colours in the overlays (0 = image only, 1 = colours only).",
                       lower_bound=0.0, upper_bound=1.0)
    flags.mark_flags_as_required(["model", "output_dir"])


def run(
    model: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    overlay_format: str = "jpg",
    alpha: float = 0.5,
    overwrite: bool = False,
    tile_size: tuple[int, int] | None = None,
    canvas: tuple[int, int] | None = None,
    batch_size: int = 1,
    max_size: int | None = None,
    label_colours: str | os.PathLike | None = None,
    recursive: bool = False,
) -> int:
    """The CLI's work: segments ``sources`` (files or folders), reports failures on stderr.

    Args:
        model, tile_size, canvas, batch_size, max_size: see ``load_predictor``.
        sources: image files and folders.
        output_dir: see ``predict_images``.
        overlay_format: ``"jpg"`` or ``"png"``.
        alpha: weight of the label colours in the overlays.
        overwrite: see ``check_outputs``.
        label_colours: ``"voc"``, or a colour map file (``fcn_keras.data.voc.read_label_colours``;
            class names in it are those the model's training run or export recorded). ``None``:
            VOC's colours.
        recursive: also segment the images of the folders' subfolders (see ``collect_images``).

    Returns:
        The exit status: 0 when every input was processed; 2 if the model, the colour map or
        ``check_outputs`` is bad (then nothing is written); 1 if some inputs failed.
    """
    images, bad_sources, ignored, skipped, names, unsearched, repeated = collect_images(sources, output_dir, recursive)
    if skipped:
        print(f"skipped {counted(skipped, 'image file')} in --output_dir={output_dir}: outputs (of an earlier run, say) "
              "are not taken as inputs")
    try:
        check_outputs(images, output_dir, overlay_format, overwrite, names)
        predictor = load_predictor(model, tile_size, canvas, batch_size, max_size)
        palette = VOC_PALETTE if label_colours is None else voc.read_label_colours(label_colours, model_class_names(model)).palette
    except (FileNotFoundError, ValueError) as error:  # Bad model or output folder: nothing written.
        print(f"error: {error}", file=sys.stderr)
        return 2
    written, bad_images = predict_images(predictor, images, output_dir, overlay_format=overlay_format, alpha=alpha,
                                         overwrite=overwrite, palette=palette, names=names)
    bad = bad_sources + bad_images
    pair = "label map and overlay" if len(written) == 1 else "label maps and overlays"
    print(f"wrote {len(written)} {pair} to {output_dir} ({counted(len(images), 'image')} found"
          + (f"; {counted(ignored, 'folder entry', 'folder entries')} ignored: hidden, or without an image extension"
             if ignored else "")
          + (f"; {counted(skipped, 'image file')} in --output_dir skipped" if skipped else "")
          + (f"; {counted(repeated, 'image')} named twice, segmented once" if repeated else "")
          + (f"; {counted(unsearched, 'subfolder')} not searched: --recursive searches them" if unsearched else "")
          + ")")
    if isinstance(predictor, DownscalingPredictor) and predictor.downscaled:
        one = predictor.downscaled == 1
        print(f"{predictor.downscaled} image{'' if one else 's'} larger than {max_size} px {'was' if one else 'were'} "
              f"segmented at {max_size} px on the longer side (labels resized back, nearest neighbour)")
    on_canvas = predictor.inner if isinstance(predictor, DownscalingPredictor) else predictor
    if isinstance(on_canvas, CanvasPredictor) and on_canvas.outside:
        height, width = on_canvas.canvas
        one = on_canvas.outside == 1
        print(f"{on_canvas.outside} image{'' if one else 's'} larger than the {height}x{width} canvas "
              f"{'was' if one else 'were'} segmented at {'its' if one else 'their'} own size"
              + (" (one compilation per size under XLA)" if tile_size is None else " (whole or in tiles)"))
    if bad:
        print(f"{counted(len(bad), 'input')} failed:", file=sys.stderr)
        for path, reason in bad:  # Reasons from read_image already name the file (not as a folder: "<path>/out").
            names_it = re.search(re.escape(str(path)) + r"(?![\w/.-])", reason)
            print(f"  {reason}" if names_it else f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _keep_tensorflow_off_the_gpus(model: str | os.PathLike) -> None:
    """Under JAX, TensorFlow only decodes the JPEGs of a ``.keras`` model's inputs: hide the GPUs
    from it, so that it does not claim their memory, which the backend's model needs. (A
    SavedModel runs on TensorFlow, which keeps them then.)"""
    path = Path(model)
    if keras.backend.backend() == "tensorflow" or (path.is_dir() and _savedmodel_dir(path) is not None):
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices: too late, keep going.
        pass


def main(argv: list[str]) -> int:
    """Runs the CLI: positional arguments are image files or folders. Returns the exit status."""
    if len(argv) < 2:
        return usage_error("fcn_keras.predict", "give image files or folders to segment after the flags")
    _keep_tensorflow_off_the_gpus(FLAGS.model)
    tile_size = canvas = None
    try:
        if FLAGS.tile_size is not None:
            tile_size = check_tile_size(parse_size(FLAGS.tile_size, "--tile_size"), "--tile_size")
        if FLAGS.canvas is not None:
            canvas = parse_size(FLAGS.canvas, "--canvas")
        if FLAGS.batch_size > 1 and canvas is None:
            raise ValueError(f"--batch_size={FLAGS.batch_size} needs --canvas: images of different sizes are batched by "
                             "padding them to one canvas (e.g. --canvas=500 for PASCAL VOC)")
    except ValueError as error:
        return usage_error("fcn_keras.predict", str(error))
    return run(FLAGS.model, argv[1:], FLAGS.output_dir, overlay_format=FLAGS.overlay_format, alpha=FLAGS.alpha,
               overwrite=FLAGS.overwrite, tile_size=tile_size, canvas=canvas, batch_size=FLAGS.batch_size,
               max_size=FLAGS.max_size, label_colours=FLAGS.label_colours, recursive=FLAGS.recursive)


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
