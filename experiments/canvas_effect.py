r"""What evaluating on a fixed canvas costs in accuracy: exact full-size evaluation against padded.

    python -m experiments.canvas_effect --model=runs/fcn8s/last.keras \
        --data=../shared/voc2012/VOCdevkit --split=val --canvas=500 --batch_size=16 \
        --output_dir=experiments/results/<run name>

Under JAX every image size compiles the network once, so the GPU run evaluates with
``--eval_canvas=500`` (every image padded at the bottom and right with the mean colour, labels
void): one compilation instead of 74 on the 221 VOC 2012 val images. The padding is not what the
paper evaluated: the receptive field of a pixel near the bottom or right edge reaches into it.
This script measures the difference on a trained model: it evaluates the same images both ways
(``fcn_keras.evaluate.evaluate_model``: one image at a time at its own size, and batches on the
canvas), and reports the paper's four metrics each way, how many predicted labels changed, and
how far from the padding the changed pixels lie (distance to the first padded row or column).

Writes ``canvas_effect.md`` and ``canvas_effect.json`` to ``--output_dir`` (atomically) and
prints the markdown.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import flags

from experiments.skip_experiment import command_line, environment_of_run
from fcn_keras.console import run_cli, usage_error
from fcn_keras.evaluate import PAPER_METRICS, evaluate_model, evaluation_mode
from fcn_keras.files import write_json_atomic, write_text_atomic
from fcn_keras.checks import check_writable_folder, parse_size
from fcn_keras.io import load_fcn

EFFECT_MD = "canvas_effect.md"
EFFECT_JSON = "canvas_effect.json"

#: Upper ends (inclusive) of the distance bands, in pixels from the first padded row or column.
DISTANCE_BANDS: tuple[int, ...] = (8, 32, 64, 128, 256)

# --- Geometry of the padding -------------------------------------------------------------------


def padding_distance(height: int, width: int, canvas: tuple[int, int]) -> np.ndarray:
    """Each pixel's distance to the canvas padding of an image placed at the canvas' top left.

    Args:
        height, width: the image size (at most the canvas).
        canvas: ``(height, width)`` of the canvas.

    Returns:
        int64 ``[height, width]``: ``height - y`` for a pixel in row ``y`` when the canvas is
        taller (the last row is 1 away from the first padded row), ``width - x`` likewise for
        the columns, the smaller of the two when both are padded; 0 for every pixel of an image
        that fills the canvas (no padding).
    """
    if height > canvas[0] or width > canvas[1]:
        raise ValueError(f"an image of {height}x{width} does not fit the canvas {canvas[0]}x{canvas[1]}")
    big = np.iinfo(np.int64).max
    rows = np.arange(height, 0, -1) if height < canvas[0] else np.full(height, big)
    cols = np.arange(width, 0, -1) if width < canvas[1] else np.full(width, big)
    distance = np.minimum(rows[:, None], cols[None, :])
    distance[distance == big] = 0
    return distance


def band_names(bands: Sequence[int] = DISTANCE_BANDS) -> list[str]:
    """Row names of the distance bands, e.g. ``["1-8", "9-32", ..., "> 256", "no padding"]``."""
    lows = [1, *(b + 1 for b in bands[:-1])]
    return [f"{low}-{high}" for low, high in zip(lows, bands)] + [f"> {bands[-1]}", "no padding"]


def changes_by_distance(
    exact: Sequence[np.ndarray], padded: Sequence[np.ndarray], canvas: tuple[int, int],
    bands: Sequence[int] = DISTANCE_BANDS,
) -> dict[str, dict[str, int]]:
    """Counts pixels, and pixels whose predicted label differs, per distance band.

    Args:
        exact: uint8 label maps ``[h, w]`` predicted at each image's own size.
        padded: the same images' label maps predicted on the canvas (cropped to ``[h, w]``).
        canvas: the canvas ``(height, width)``.
        bands: upper ends of the bands (``DISTANCE_BANDS``).

    Returns:
        ``{band name: {"pixels": n, "changed": n}}`` in ``band_names(bands)`` order.
    """
    if len(exact) != len(padded):
        raise ValueError(f"{len(exact)} exact label maps but {len(padded)} padded ones")
    edges = np.asarray([0, *bands, np.iinfo(np.int64).max])
    pixels = np.zeros(len(edges), np.int64)  # the bands, then "no padding" (distance 0) last
    changed = np.zeros(len(edges), np.int64)
    for index, (a, b) in enumerate(zip(exact, padded)):
        if a.shape != b.shape:
            raise ValueError(f"image {index}: exact label map {a.shape} but padded one {b.shape}")
        distance = padding_distance(*a.shape, canvas)
        band = np.where(distance == 0, len(edges) - 1, np.searchsorted(edges, distance, side="left") - 1)
        pixels += np.bincount(band.ravel(), minlength=len(edges))
        changed += np.bincount(band[a != b], minlength=len(edges))
    return {name: {"pixels": int(p), "changed": int(c)} for name, p, c in zip(band_names(bands), pixels, changed)}


# --- The measurement ---------------------------------------------------------------------------


def canvas_effect(
    model: keras.Model | str | os.PathLike,
    data: str | os.PathLike,
    *,
    canvas: tuple[int, int],
    split: str = "val",
    batch_size: int = 16,
    max_images: int | None = None,
    cache_dir: str | os.PathLike = "cache",
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluates one model exactly and on a canvas, on the same images, and compares.

    Args:
        model: an FCN or the path of its ``.keras`` file.
        data: a TFRecord glob, a converted folder or a VOCdevkit root (see ``evaluate_model``).
        canvas: ``(height, width)`` every image is padded to in the second evaluation.
        split: the split of a folder.
        batch_size: images per call on the canvas (exact evaluation is one image at a time).
        max_images: only the first N images of the split (all when ``None``).
        cache_dir: where a VOCdevkit root is converted (see ``evaluate_model``).
        verbose: progress bars.

    Returns:
        ``{"exact": metrics, "canvas": metrics, "difference": {metric: canvas - exact},
        "changed_pixels", "num_pixels", "by_distance": changes_by_distance(...)}``; each
        metrics dict is ``evaluate_model``'s without the confusion matrix and predictions.
    """
    if isinstance(model, keras.Model):
        source = model.name
    else:
        source, model = str(model), load_fcn(model)
    runs = {}
    # The canvas first: it checks that every image fits before evaluating any (the exact pass
    # takes minutes on VOC's 1,449 images).
    for name, options in (("canvas", {"batch_size": batch_size, "canvas": canvas}), ("exact", {"batch_size": 1})):
        runs[name] = evaluate_model(model, data, split=split, max_images=max_images, cache_dir=cache_dir,
                                    keep_predictions=max_images or sys.maxsize, verbose=verbose, **options)
    exact, padded = runs["exact"].pop("predictions"), runs["canvas"].pop("predictions")
    by_distance = changes_by_distance(exact, padded, canvas)
    for run in runs.values():
        run.pop("confusion")
    return {
        "model": source,
        "exact": runs["exact"],
        "canvas": runs["canvas"],
        "difference": {key: runs["canvas"][key] - runs["exact"][key] for key, _ in PAPER_METRICS},
        "changed_pixels": sum(band["changed"] for band in by_distance.values()),
        "num_pixels": sum(band["pixels"] for band in by_distance.values()),
        "by_distance": by_distance,
    }


def _band_start(name: str) -> float:
    """Where a band of ``band_names`` starts, to order the rows: a result read back from
    ``canvas_effect.json`` has its bands in key order ("129-256" before "9-32")."""
    if name == "no padding":
        return math.inf
    return int(name[2:]) + 1 if name.startswith("> ") else int(name.split("-")[0])


def effect_markdown(result: dict[str, Any], run: dict[str, Any] | None = None, command: str = "") -> str:
    """The report: metrics both ways, the difference, and the changed labels by distance."""
    exact, padded = result["exact"], result["canvas"]
    headings = " | ".join(heading for _, heading in PAPER_METRICS)
    lines = [
        f"# Canvas against exact evaluation: `{result['model']}`",
        "",
        f"Data `{exact['data']}`" + (f", split `{exact['split']}`" if exact.get("split") else "")
        + f": the same {exact['num_images']} images evaluated twice; metrics in %.",
        "",
        f"| evaluation | {headings} | images/s |",
        "|---|" + "---:|" * (len(PAPER_METRICS) + 1),
    ]
    for label, metrics in ((evaluation_mode(exact), exact), (evaluation_mode(padded), padded)):
        values = " | ".join(f"{100 * metrics[key]:.2f}" for key, _ in PAPER_METRICS)
        lines.append(f"| {label} | {values} | {metrics['images_per_second']:.2f} |")
    difference = " | ".join(f"{100 * result['difference'][key]:+.2f}" for key, _ in PAPER_METRICS)
    lines += [
        f"| canvas - exact (points) | {difference} | |",
        "",
        f"Predicted labels that differ: {result['changed_pixels']:,} of {result['num_pixels']:,} pixels "
        f"({100 * result['changed_pixels'] / result['num_pixels']:.3f}%), void pixels included.",
        "",
        "| distance to the padding (px) | pixels | changed | changed (%) |",
        "|---|---:|---:|---:|",
    ]
    for name, band in sorted(result["by_distance"].items(), key=lambda item: _band_start(item[0])):
        share = f"{100 * band['changed'] / band['pixels']:.3f}" if band["pixels"] else "-"
        lines.append(f"| {name} | {band['pixels']:,} | {band['changed']:,} | {share} |")
    lines += [
        "",
        "Distance: from a pixel to the first padded row below it or column right of it (the last row of an "
        "image padded below is 1 away); \"no padding\": images that fill the canvas. images/s includes "
        "loading and compilation (one per image size under JAX).",
    ]
    if run:
        lines += ["", f"Backend {run['backend']}, device {run['device']}, commit `{run['git_commit']}`, {run['date']}."]
    if command:
        lines += ["", "```bash", command, "```"]
    return "\n".join(lines) + "\n"


def write_effect(result: dict[str, Any], output_dir: str | os.PathLike, run: dict[str, Any], command: str) -> Path:
    """Writes ``canvas_effect.md`` and ``canvas_effect.json`` (atomically); returns the markdown path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / EFFECT_JSON, {**result, "run": {**run, "command": command}})
    return write_text_atomic(output_dir / EFFECT_MD, effect_markdown(result, run, command))


# --- CLI ---------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags of ``python -m experiments.canvas_effect`` (defined only when run)."""
    flags.DEFINE_string("model", None, "A trained FCN's .keras file.", required=True)
    flags.DEFINE_string("data", None, "A VOCdevkit root, a converted folder or a TFRecord glob.", required=True)
    flags.DEFINE_string("split", "val", "The split of a folder to evaluate.")
    flags.DEFINE_string("canvas", "500", "N or HxW: the canvas of the padded evaluation (VOC images are at most 500x500).")
    flags.DEFINE_integer("batch_size", 16, "Images per call on the canvas.", lower_bound=1)
    flags.DEFINE_integer("max_images", None, "Only the first N images of the split (default: all).", lower_bound=1)
    flags.DEFINE_string("cache_dir", "cache", "Where a VOCdevkit root is converted, into <cache_dir>/records-<hash> "
                        "(as fcn_keras.train and fcn_keras.evaluate do).")
    flags.DEFINE_string("output_dir", None, "Where canvas_effect.md and .json go (default: print only).")


def main(argv: list[str]) -> int | None:
    if len(argv) > 1:
        return usage_error("experiments.canvas_effect", f"unexpected arguments: {argv[1:]}")
    command = command_line("experiments.canvas_effect")
    try:
        canvas = parse_size(FLAGS.canvas, "--canvas")
        if FLAGS.output_dir:  # Before the evaluations, not after.
            check_writable_folder("output_dir", FLAGS.output_dir)
        result = canvas_effect(FLAGS.model, FLAGS.data, canvas=canvas, split=FLAGS.split, batch_size=FLAGS.batch_size,
                               max_images=FLAGS.max_images, cache_dir=FLAGS.cache_dir)
    except (FileNotFoundError, ValueError) as error:  # Bad input: the message names it.
        print(f"experiments.canvas_effect: error: {error}", file=sys.stderr)
        sys.exit(2)
    run = environment_of_run()
    if FLAGS.output_dir:
        path = write_effect(result, FLAGS.output_dir, run, command)
        print(f"wrote {path} and {EFFECT_JSON}")
    print(effect_markdown(result, run, command))


if __name__ == "__main__":
    define_flags()
    run_cli(main)
