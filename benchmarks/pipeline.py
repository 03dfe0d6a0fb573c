"""Train-pipeline throughput on real VOC JPEGs: images/s, per core and per CPU-second.

    python benchmarks/pipeline.py --crop_size=512 --batch_size=8 --seconds=20

Without ``--data``, converts the real VOC 2012 pairs of ``../shared/voc2012`` (the ``train``
list) into a temporary TFRecord folder first. Each row of the table runs one variant of the
pipeline for ``--seconds`` after a warm-up and counts the images it yields:

- ``read+parse``: TFRecord reading and ``tf.train.Example`` parsing only;
- ``+decode``: plus JPEG and PNG decoding (whole images);
- ``modern``: the full training pipeline of ``train_dataset`` (random scale 0.5..2, 512 crop,
  flip, batches), JPEG decoded exactly;
- ``modern fast-dct``: the same with ``dct_method="INTEGER_FAST"``.

"per core" divides images/s by the cores the process may use; "per CPU-s" divides the images by
the CPU time the process consumed (all threads), which is less sensitive to other load.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from fcn_keras.console import run_cli  # noqa: E402
from fcn_keras.data import pipeline, records, voc  # noqa: E402
from fcn_keras.data.convert import convert, split_glob  # noqa: E402
from throughput import benchmark_main, git_commit, utc_now  # noqa: E402  (this folder is on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "TFRecord glob to read (default: convert ../shared/voc2012 train into a temp folder).")
flags.DEFINE_string("voc_root", str(REPO_ROOT.parent / "shared" / "voc2012" / "VOCdevkit"), "VOCdevkit converted when --data is not given.")
flags.DEFINE_integer("crop_size", 512, "Square crop of the modern pipeline.", lower_bound=1)
flags.DEFINE_integer("batch_size", 8, "Images per batch.", lower_bound=1)
flags.DEFINE_float("seconds", 20.0, "Measured seconds per row (after the warm-up).", lower_bound=0.1)
flags.DEFINE_float("warmup_seconds", 3.0, "Seconds run before measuring each row.", lower_bound=0.0)
ROWS: tuple[str, ...] = ("read+parse", "+decode", "modern", "modern fast-dct")
flags.DEFINE_list("rows", list(ROWS), "Rows to run, among the four in the module docstring.")


# --- Pipelines measured -----------------------------------------------------------------------


def _raw(pattern: str, decode: bool) -> tf.data.Dataset:
    """Records read (interleaved, repeated) and parsed, optionally decoded, batched."""
    files = pipeline.list_files(pattern)
    dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False
    )

    def parse(serialized):
        if decode:
            example = records.parse_example(serialized)
            return example["image"], example["label"]
        features = records.parse_features(serialized)
        return features["image/encoded"], features["label/encoded"]

    dataset = dataset.repeat().map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    if decode:
        return dataset.batch(1).prefetch(tf.data.AUTOTUNE)
    return dataset.batch(FLAGS.batch_size).prefetch(tf.data.AUTOTUNE)


def _dataset(row: str, pattern: str) -> tf.data.Dataset:
    if row == "read+parse":
        return _raw(pattern, decode=False)
    if row == "+decode":
        return _raw(pattern, decode=True)
    if row in ("modern", "modern fast-dct"):
        return pipeline.train_dataset(
            pattern,
            batch_size=FLAGS.batch_size,
            crop_size=FLAGS.crop_size,
            seed=0,
            dct_method="INTEGER_FAST" if row == "modern fast-dct" else "",
        )
    raise ValueError(f"--rows must be among {', '.join(ROWS)}. Received: {row!r}")


def _measure(dataset: tf.data.Dataset) -> tuple[int, float, float]:
    """Runs ``dataset`` for the warm-up, then counts images for ``--seconds``.

    Returns:
        ``(images, wall_seconds, cpu_seconds)`` of the measured part.
    """
    iterator = iter(dataset)
    start = time.perf_counter()
    while time.perf_counter() - start < FLAGS.warmup_seconds:
        next(iterator)
    images, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < FLAGS.seconds:
        batch = next(iterator)
        images += int(batch[0].shape[0])
    return images, time.perf_counter() - wall0, time.process_time() - cpu0


# --- Main -------------------------------------------------------------------------------------


def run(argv: list[str]) -> None:
    """Measures the rows the flags name; prints the command, then the table."""
    unknown = [row for row in FLAGS.rows if row not in ROWS]
    if unknown or not FLAGS.rows:
        raise ValueError(f"--rows must be among {', '.join(ROWS)}. Received: --rows={','.join(FLAGS.rows)}")
    if FLAGS.data is None and not voc.is_voc_root(FLAGS.voc_root):
        raise FileNotFoundError(f"--voc_root must hold VOC2012/ when --data is not given. Received: --voc_root={FLAGS.voc_root}")
    if FLAGS.data is not None and not tf.io.gfile.glob(FLAGS.data):  # Before the table, not in its first row.
        raise FileNotFoundError(f"--data matches no file. Received: --data={FLAGS.data}")
    print(f"command: `python {shlex.join(argv)}` ({utc_now()}, commit {git_commit() or 'unknown'}, "
          f"tensorflow {tf.__version__})", flush=True)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        pattern = FLAGS.data
        if pattern is None:
            manifest = convert(FLAGS.voc_root, tmp, splits=("train",), shard_size=64, verbose=False)
            pattern = split_glob(tmp, "train")
            print(f"converted {manifest['splits']['train']['num_examples']} real VOC pairs from {FLAGS.voc_root}")
        print(f"data: {pattern}; crop {FLAGS.crop_size}, batch {FLAGS.batch_size}, {FLAGS.seconds:g} s per row; "
              f"{cores} cores; load average {os.getloadavg()[0]:.2f} at start")
        print(f"\n| pipeline | images/s | images/s per core ({cores}) | images per CPU-s |")
        print("|---|---:|---:|---:|")
        for row in FLAGS.rows:
            images, wall, cpu = _measure(_dataset(row, pattern))
            rate = images / wall
            print(f"| {row} | {rate:,.1f} | {rate / cores:,.1f} | {images / max(cpu, 1e-9):,.1f} |", flush=True)
        print(f"\nload average {os.getloadavg()[0]:.2f} at end")


def main(argv: list[str]) -> int | None:
    return benchmark_main("benchmarks/pipeline.py", run, argv)


if __name__ == "__main__":
    run_cli(main)
