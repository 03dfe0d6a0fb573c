"""Tiled inference of a large image: time, memory and agreement with the whole image.

    python benchmarks/tiling.py --size=2000x3000 --tile_sizes=whole,2048,1024

Each row segments the same random image of ``--size`` with an FCN-VGG16 of seeded random
weights (the work and the memory do not depend on the weights), whole or in tiles of at most
``N`` pixels a side (``fcn_keras.inference.predict_labels_tiled``), in a fresh process of its own so
that its peak memory is its own:

- ``tiles``: device calls; ``work``: pixels the net computed on (tiles overlap) over the image's;
- ``seconds``: wall time of the call (tracing of each new tile shape included, as a user's first
  image pays it); best of ``--repeats``;
- ``peak RSS``: the process' peak resident memory (host), and ``+ inference``: its growth during
  the call over the memory after building the model; ``device peak``: the accelerator's peak
  bytes in use (JAX on a GPU only);
- ``same labels``: the fraction of pixels whose label equals the whole image's (the ``whole`` row
  runs first); labels differ only where two classes tie to within the rounding of other shapes;
  ``classes``: how many classes the row's labels hold (random weights still give varied labels,
  so the agreement means something).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from random_fcn import define_model_flags, model_description, model_flags, random_fcn  # First: sets up the imports.

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from fcn_keras.console import run_cli  # noqa: E402

FLAGS = flags.FLAGS
define_model_flags()
flags.DEFINE_string("size", "2000x3000", "Image size, N or HxW.")
flags.DEFINE_list("tile_sizes", ["whole", "2048", "1024"], "Rows: 'whole' or a tile size N or HxW (>= 480).")
flags.DEFINE_integer("repeats", 1, "Calls per row; the best time is reported.", lower_bound=1)
flags.DEFINE_string("row", None, "Internal: run one row in this process and print its result as JSON.")
flags.DEFINE_string("labels_file", None, "Internal: where the row saves its labels (.npy).")

_MIB = 2**20


def _rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _device_peak_bytes() -> int | None:
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def run_row(row: str, size: tuple[int, int], labels_file: str) -> dict:
    """One row, in this process: builds the net, segments the image, saves the labels."""
    from fcn_keras.inference import predict_labels, predict_labels_tiled, tile_spans
    from fcn_keras.checks import parse_size

    model = random_fcn()
    image = np.random.default_rng(1).integers(0, 256, (*size, 3)).astype("uint8")
    if row == "whole":
        tiles, work = 1, size[0] * size[1]
    else:
        tile = parse_size(row, "--tile_sizes")
        rows, columns = (tile_spans(length, side) for length, side in zip(size, tile))
        tiles = len(rows) * len(columns)
        work = sum(r.stop - r.start for r in rows) * sum(c.stop - c.start for c in columns)
    before = _current_rss_bytes()
    times = []
    for _ in range(FLAGS.repeats):  # Only the segmentation is timed.
        start = time.perf_counter()
        labels = predict_labels(model, image[np.newaxis])[0] if row == "whole" else predict_labels_tiled(model, image, tile)
        times.append(time.perf_counter() - start)
    np.save(labels_file, labels)
    return {"classes": len(np.unique(labels)), "tiles": tiles, "work": work / (size[0] * size[1]), "seconds": min(times),
            "peak_rss": _rss_bytes(), "inference_rss": _rss_bytes() - before, "device_peak": _device_peak_bytes()}


def check_rows() -> tuple[tuple[int, int], list[str]]:
    """The image size and the rows the flags ask for, checked before any row's process starts;
    a ValueError names a bad flag."""
    from fcn_keras.inference import check_tile_size
    from fcn_keras.checks import parse_size

    size = parse_size(FLAGS.size, "--size")
    rows = list(FLAGS.tile_sizes)
    if not rows:
        raise ValueError("--tile_sizes must name at least one row: 'whole' or a tile size. Received: --tile_sizes=")
    for row in rows:
        if row != "whole":
            check_tile_size(parse_size(row, "--tile_sizes entries"), "--tile_sizes entries")
    return size, rows


def run(argv: list[str]) -> None:
    """Checks the flags, then runs each row in a process of its own and prints the table."""
    size, rows = check_rows()
    if "whole" in rows:
        rows.remove("whole")
        rows.insert(0, "whole")
    import keras

    print(f"{model_description()}, image {size[0]}x{size[1]}, "
          f"backend {keras.backend.backend()}, {len(os.sched_getaffinity(0))} cores, float32")
    print("\n| tiles of | tiles | work | seconds | peak RSS (MiB) | + inference (MiB) | device peak (MiB) | same labels | classes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        whole = None
        for row in rows:
            labels_file = str(Path(tmp) / f"{row}.npy")
            flags_passed = [*model_flags(), f"--size={FLAGS.size}", f"--repeats={FLAGS.repeats}", f"--row={row}",
                            f"--labels_file={labels_file}"]
            child = subprocess.run([sys.executable, __file__, *flags_passed], capture_output=True, text=True)
            if child.returncode != 0:
                raise SystemExit(f"row {row!r} failed (status {child.returncode}):\n{child.stderr[-3000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            labels = np.load(labels_file)
            if row == "whole":
                whole = labels
            same = "-" if whole is None else f"{np.mean(labels == whole):.6f}"
            device = "-" if result["device_peak"] is None else f"{result['device_peak'] / _MIB:,.0f}"
            print(f"| {row} | {result['tiles']} | {result['work']:.2f}x | {result['seconds']:.1f} | "
                  f"{result['peak_rss'] / _MIB:,.0f} | {result['inference_rss'] / _MIB:,.0f} | {device} | {same} | {result['classes']} |",
                  flush=True)


def main(argv: list[str]) -> int | None:
    if FLAGS.row is not None:  # a row's own process, started by run() with checked flags
        from fcn_keras.checks import parse_size

        print(json.dumps(run_row(FLAGS.row, parse_size(FLAGS.size, "--size"), FLAGS.labels_file)))
        return None
    from throughput import benchmark_main  # this folder is on sys.path

    return benchmark_main("benchmarks/tiling.py", run, argv)


if __name__ == "__main__":
    run_cli(main)
