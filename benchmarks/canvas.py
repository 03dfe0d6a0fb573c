r"""Photos of many sizes: one compilation per size, or one canvas for all.

    KERAS_BACKEND=jax python benchmarks/canvas.py --images=../shared/voc2012/VOCdevkit/VOC2012/JPEGImages \
        --max_images=24 --canvas=500 --batch_sizes=1,4

Under XLA (JAX, or TensorFlow on a GPU) Keras compiles the predict function once per input
shape, so segmenting a folder of photos at their own sizes compiles once per distinct size (the
221 VOC 2012 val images of ``../shared`` have 74). On a canvas (``fcn_keras.inference.
predict_labels_on_canvas``, ``python -m fcn_keras.predict --canvas``) every call has one shape.
Each row runs in a fresh process (compilations are not shared between rows) with an FCN-VGG16 of
seeded random weights (time does not depend on the weights; how much the canvas changes the
labels of a trained net is measured by ``experiments/canvas_effect.py``):

- ``sizes``: distinct image sizes; ``traces``: how many times the predict function was traced
  (one per compilation), counted at the net's argmax layer; ``compile s``: XLA's compilation
  time (JAX only: its ``backend_compile`` events);
- ``work``: pixels the net computed on over the images' own pixels (canvas padding and the
  blank canvases that fill the last batch included);
- ``first pass s``: wall time of segmenting all the images once, compilations included (what a
  user's run pays); ``second pass s``: again, compiled; ``img/s``: images per second of the
  second pass.

The images are the JPEGs of ``--images`` (sorted by name, the first ``--max_images``), or, if
not given, random images of ``--random_sizes``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from random_fcn import define_model_flags, model_description, random_fcn  # First: sets up the imports.

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from fcn_keras.console import run_cli  # noqa: E402

FLAGS = flags.FLAGS
define_model_flags()
flags.DEFINE_string("images", None, "A folder of JPEG/PNG images; default: random images of --random_sizes.")
flags.DEFINE_integer("max_images", 24, "Images taken from --images (sorted by name).", lower_bound=1)
flags.DEFINE_list("random_sizes", ["375x500", "333x500", "500x375", "366x500", "500x333", "375x500"],
                  "Sizes (HxW) of the random images when no --images is given.")
flags.DEFINE_string("canvas", "500", "Canvas, N or HxW; every image must fit.")
flags.DEFINE_list("batch_sizes", ["1", "4"], "Canvas rows: images per device call.")
flags.DEFINE_string("row", None, "Internal: run one row ('own' or 'canvas:<batch>') in this process, print JSON.")


def image_files() -> list[Path]:
    """``--images``' image files, sorted by name, the first ``--max_images``; a FileNotFoundError
    or ValueError names the flag when there are none."""
    from fcn_keras.io import IMAGE_EXTENSIONS

    folder = Path(FLAGS.images)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images must be a folder of images. Received: --images={folder} "
                                f"({'a file' if folder.exists() else 'no such folder'})")
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)[:FLAGS.max_images]
    if not files:
        raise ValueError(f"--images={folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_images() -> list[np.ndarray]:
    """The benchmark's images: ``--images``' files, else random ones of ``--random_sizes``."""
    from fcn_keras.checks import parse_size
    from fcn_keras.io import read_image

    if FLAGS.images is None:
        rng = np.random.default_rng(1)
        return [rng.integers(0, 256, (*parse_size(size, "--random_sizes entries"), 3)).astype("uint8")
                for size in FLAGS.random_sizes]
    return [read_image(path) for path in image_files()]


def check_flags() -> tuple[tuple[int, int], list[int]]:
    """The canvas and the canvas rows' batch sizes, checked (with the images, which must exist and
    fit the canvas) before any row's process starts; a ValueError or FileNotFoundError names the flag."""
    from fcn_keras.checks import parse_size

    canvas = parse_size(FLAGS.canvas, "--canvas")
    try:
        batches = [int(batch) for batch in FLAGS.batch_sizes]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise ValueError(f"--batch_sizes must be a list of positive integers. Received: --batch_sizes={','.join(FLAGS.batch_sizes)}")
    if FLAGS.images is None:
        if not FLAGS.random_sizes:
            raise ValueError("--random_sizes must name at least one size when no --images is given")
        named = [("a --random_sizes entry", parse_size(text, "--random_sizes entries")) for text in FLAGS.random_sizes]
    else:
        from fcn_keras.io import read_image

        named = [(str(path), read_image(path).shape[:2]) for path in image_files()]
    for name, (height, width) in named:
        if height > canvas[0] or width > canvas[1]:
            raise ValueError(f"{name} ({height}x{width}) does not fit the --canvas {canvas[0]}x{canvas[1]} (height x width)")
    return canvas, batches


def run_row(row: str) -> dict:
    """One row, in this process: builds the net, segments every image twice."""
    import keras

    from fcn_keras import inference
    from fcn_keras.checks import parse_size

    compile_seconds = []
    if keras.backend.backend() == "jax":
        import jax

        jax.monitoring.register_event_duration_secs_listener(
            lambda event, seconds, **kwargs: compile_seconds.append(seconds)
            if event == "/jax/core/compile/backend_compile_duration" else None)
    traces = []
    argmax_call = inference.ArgmaxLabels.call

    def counting_call(layer, logits):  # Runs once per trace of the predict function.
        traces.append(tuple(logits.shape))
        return argmax_call(layer, logits)

    inference.ArgmaxLabels.call = counting_call
    labeler = inference.labels_model(random_fcn())
    images = load_images()
    canvas = parse_size(FLAGS.canvas, "--canvas")
    if row == "own":
        work = 1.0

        def segment_all() -> None:
            for image in images:
                np.asarray(labeler.predict_on_batch(image[np.newaxis]))
    else:
        batch = int(row.split(":")[1])
        calls = -(-len(images) // batch)
        work = calls * batch * canvas[0] * canvas[1] / sum(image.shape[0] * image.shape[1] for image in images)

        def segment_all() -> None:
            inference.predict_labels_on_canvas(labeler, images, canvas, batch)
    compile_before = len(compile_seconds)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        segment_all()
        seconds.append(time.perf_counter() - start)
    return {"images": len(images), "sizes": len({image.shape for image in images}), "traces": len(traces),
            "compile_seconds": sum(compile_seconds[compile_before:]) if keras.backend.backend() == "jax" else None,
            "work": work, "first": seconds[0], "second": seconds[1]}


def run(argv: list[str]) -> None:
    """Checks the flags, then runs each row in a process of its own and prints the table."""
    import keras

    canvas, batches = check_flags()
    rows = ["own"] + [f"canvas:{batch}" for batch in batches]
    source = FLAGS.images or f"{len(FLAGS.random_sizes)} random images"
    print(f"{model_description()}, {source}, backend "
          f"{keras.backend.backend()}, {len(os.sched_getaffinity(0))} cores, float32")
    print("\n| images at | images | sizes | traces | compile s | work | first pass s | second pass s | img/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    passed = [flag for flag in sys.argv[1:] if not flag.startswith("--row")]
    for row in rows:
        child = subprocess.run([sys.executable, __file__, *passed, f"--row={row}"], capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"row {row!r} failed (status {child.returncode}):\n{child.stderr[-3000:]}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        name = "own sizes" if row == "own" else f"{canvas[0]}x{canvas[1]} canvas, batch {row.split(':')[1]}"
        compile_s = "-" if result["compile_seconds"] is None else f"{result['compile_seconds']:.1f}"
        print(f"| {name} | {result['images']} | {result['sizes']} | {result['traces']} | {compile_s} | "
              f"{result['work']:.2f}x | {result['first']:.1f} | {result['second']:.1f} | "
              f"{result['images'] / result['second']:.2f} |", flush=True)


def main(argv: list[str]) -> int | None:
    if FLAGS.row is not None:  # a row's own process, started by run() with checked flags
        print(json.dumps(run_row(FLAGS.row)))
        return None
    from throughput import benchmark_main  # this folder is on sys.path

    return benchmark_main("benchmarks/canvas.py", run, argv)


if __name__ == "__main__":
    run_cli(main)
