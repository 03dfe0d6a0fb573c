"""Predict CLI: label maps in the VOC palette and overlays for image files and folders.

    python -m fcn_keras.predict --model=runs/fcn8s/best.keras --output_dir=out photo.jpg images/
    python -m fcn_keras.predict --model=serving/fcn8s/1 --output_dir=out images/

For every input image ``<stem>.<ext>`` it writes ``<output_dir>/<stem>.png`` (a palette PNG of
class indices in VOC's colours, like VOC's ``SegmentationClass`` files) and
``<output_dir>/<stem>_overlay.jpg`` (or ``.png``). The model is a ``.keras`` file (the argmax
is appended to the graph with ``fcn_keras.inference.labels_model``) or a SavedModel from
``fcn_keras.export`` (its ``serving_default`` ``labels`` output): either way only the uint8
label map leaves the device.

Inputs: files, or folders (not recursive) whose files ending in one of
``fcn_keras.io.IMAGE_EXTENSIONS`` are taken (others are counted and reported). Grayscale,
palette and RGBA images are converted to RGB (alpha dropped); images that are not 8 bits per
channel are rejected. A file that cannot be used is reported with the reason and the others
are still processed; the exit status is then 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from fcn_keras.export import SERVING_SIGNATURE
from fcn_keras.inference import labels_model
from fcn_keras.io import IMAGE_EXTENSIONS, load_fcn, read_image, write_image, write_label_png
from fcn_keras.viz import overlay

#: Maps one RGB image uint8 [H, W, 3] to its label map uint8 [H, W].
Predictor = Callable[[np.ndarray], np.ndarray]

# --- Models ------------------------------------------------------------------------------------


def _savedmodel_dir(path: Path) -> Path | None:
    """``path`` if it holds a SavedModel; its highest numbered version if it is a TF Serving
    model base folder; else None."""
    if (path / "saved_model.pb").is_file():
        return path
    versions = [child for child in path.iterdir() if child.name.isdigit() and (child / "saved_model.pb").is_file()]
    return max(versions, key=lambda child: int(child.name)) if versions else None


def load_predictor(path: str | os.PathLike) -> Predictor:
    """A label-map function from a ``.keras`` FCN or an exported SavedModel.

    Args:
        path: a ``.keras`` file, a SavedModel folder written by ``fcn_keras.export``
            (``<export_dir>/<name>/<version>``), or its model folder ``<export_dir>/<name>``
            (the highest version is used, as TF Serving does).

    Returns:
        A function mapping uint8 ``[H, W, 3]`` to uint8 ``[H, W]``, the argmax on the device.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an FCN (the message names it and says what was found).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if not path.is_dir():
        model = labels_model(load_fcn(path))
        return lambda image: np.asarray(model.predict_on_batch(image[np.newaxis]))[0]

    saved_dir = _savedmodel_dir(path)
    if saved_dir is None:
        raise ValueError(
            f"{path} is a folder without saved_model.pb (nor numbered version folders holding one): "
            "give a .keras file or a SavedModel from fcn_keras.export"
        )
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
    # Through ``loaded`` (not the bare signature), which keeps the variables alive.
    return lambda image: loaded.signatures[SERVING_SIGNATURE](images=tf.constant(image[np.newaxis]))["labels"].numpy()[0]


# --- Inputs ------------------------------------------------------------------------------------


def collect_images(sources: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]], int]:
    """Expands files and folders into the list of images to process.

    Args:
        sources: image files and folders (each folder's files with an image extension).

    Returns:
        ``(images, bad, ignored)``: the image paths in order (folders sorted by name), the
        sources that cannot be used with the reason (missing path, empty folder), and the
        number of folder entries skipped for not having an image extension.
    """
    images, bad, ignored = [], [], 0
    for source in map(Path, sources):
        if source.is_dir():
            entries = sorted(child for child in source.iterdir() if child.is_file())
            found = [child for child in entries if child.suffix.lower() in IMAGE_EXTENSIONS]
            ignored += len(entries) - len(found)
            if not found:
                bad.append((source, f"folder holds no file ending in {', '.join(IMAGE_EXTENSIONS)}"))
            images.extend(found)
        elif source.is_file():
            images.append(source)
        else:
            bad.append((source, "no such file or folder"))
    return images, bad, ignored


# --- Prediction --------------------------------------------------------------------------------


def predict_images(
    predictor: Predictor,
    images: Sequence[Path],
    output_dir: str | os.PathLike,
    *,
    overlay_format: str = "jpg",
    alpha: float = 0.5,
    verbose: bool = True,
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Writes the label PNG and the overlay of every image; a bad image does not stop the rest.

    Args:
        predictor: from ``load_predictor``.
        images: image files.
        output_dir: where ``<stem>.png`` and ``<stem>_overlay.<overlay_format>`` go.
        overlay_format: ``"jpg"`` or ``"png"``.
        alpha: weight of the label colours in the overlay (``fcn_keras.viz.overlay``).
        verbose: show a ``keras.utils.Progbar``.

    Returns:
        ``(written, bad)``: the label PNGs written, and the images that failed with the reason.
    """
    output_dir = Path(output_dir)
    written, bad, claimed = [], [], {}
    progbar = keras.utils.Progbar(len(images), unit_name="image", verbose=1 if verbose else 0)
    for index, path in enumerate(images):
        label_path = output_dir / f"{path.stem}.png"
        if label_path in claimed:
            bad.append((path, f"its outputs would overwrite those of {claimed[label_path]} (same file stem)"))
        else:
            claimed[label_path] = path
            try:
                image = read_image(path)
                labels = predictor(image)
                write_label_png(labels, label_path)
                write_image(overlay(image, labels, alpha), output_dir / f"{path.stem}_overlay.{overlay_format}")
                written.append(label_path)
            except (ValueError, OSError) as error:  # read_image's errors name the file and the problem.
                bad.append((path, str(error)))
            except Exception as error:  # Prediction or writing failed: report it, go on with the rest.
                bad.append((path, f"{type(error).__name__}: {error}"))
        progbar.update(index + 1)
    return written, bad


# --- Command line ------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a program, so modules import side-effect free)."""
    flags.DEFINE_string("model", None, "A .keras FCN, or a SavedModel from fcn_keras.export (version folder or model folder).")
    flags.DEFINE_string("output_dir", None, "Folder for <stem>.png (VOC palette labels) and <stem>_overlay.<format>.")
    flags.DEFINE_enum("overlay_format", "jpg", ["jpg", "png"], "File format of the overlays.")
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
) -> int:
    """The CLI's work: segments ``sources`` (files or folders), reports failures on stderr.

    Args:
        model: see ``load_predictor``.
        sources: image files and folders.
        output_dir: see ``predict_images``.
        overlay_format: ``"jpg"`` or ``"png"``.
        alpha: weight of the label colours in the overlays.

    Returns:
        The exit status: 0 when every input was processed, 1 otherwise or if the model is bad.
    """
    images, bad_sources, ignored = collect_images(sources)
    try:
        predictor = load_predictor(model)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    written, bad_images = predict_images(predictor, images, output_dir, overlay_format=overlay_format, alpha=alpha)
    bad = bad_sources + bad_images
    print(f"wrote {len(written)} label maps and overlays to {output_dir} ({len(images)} images found"
          + (f"; {ignored} files without an image extension ignored" if ignored else "") + ")")
    if bad:
        print(f"{len(bad)} inputs failed:", file=sys.stderr)
        for path, reason in bad:  # Reasons from read_image already name the file.
            print(f"  {reason}" if str(path) in reason else f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Runs the CLI: positional arguments are image files or folders. Returns the exit status."""
    if len(argv) < 2:
        raise app.UsageError("give image files or folders to segment after the flags")
    return run(FLAGS.model, argv[1:], FLAGS.output_dir, overlay_format=FLAGS.overlay_format, alpha=FLAGS.alpha)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
