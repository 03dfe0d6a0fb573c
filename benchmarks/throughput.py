r"""Throughput of the FCN-VGG16 family: training, inference (label maps), latency, TFLOP/s.

    python benchmarks/throughput.py                                 # 32s/16s/8s x 500, 512 x 1, 8
    KERAS_BACKEND=jax python benchmarks/throughput.py --variants=8s --sizes=512 --batch_sizes=8 \
        --geometry=same --precision=bf16 --output=benchmarks/results/h100.md
    python benchmarks/throughput.py --sizes=32 --batch_sizes=1 --steps=1 --warmup=1 \
        --fc_units=8 --precision=float32 --peak_size=128       # CPU smoke test

For each variant x size x batch size, on synthetic data, it measures:

- training images/s: ``model.fit`` (``jit_compile=True``, SGD momentum 0.99, the project's
  ``SegmentationCrossEntropy``) from a tf.data dataset repeating one random batch; one warm-up
  ``fit`` call of ``--warmup`` steps (compilation), then the wall time of one ``fit`` call of
  ``--steps`` steps, blocked until the last update is done;
- with ``--input_pipeline=tfrecord``, the same from ``fcn_keras.data.pipeline.train_dataset`` on
  TFRecords (random scale, crop to the size, flip), and its ratio to the synthetic figure;
- inference images/s returning uint8 label maps (``fcn_keras.inference.labels_model``: the argmax
  runs on the device), ``predict`` over ``--steps`` batches after a warm-up call;
- batch-1 latency: median over ``--latency_runs`` calls of ``predict_on_batch`` on one image
  (host image in, host label map out);
- achieved TFLOP/s from the model's own FLOP count (``fcn_keras.flops``: 2 x MACs of every
  convolution and deconvolution from the layer shapes of the chosen geometry, the reference
  geometry's 100-pixel padding included; training = 3 x forward), and its share of a measured
  bf16 matmul peak (a jitted ``keras.ops.matmul`` of two n x n bf16 matrices on the same device).

With ``--profile`` it also times the forward pass block by block, to say which layers dominate:
prefixes of the network ending after each VGG block, after fc7 and at the label map are each
jitted and timed (best of 3 timings of ``--steps`` back-to-back calls on a batch already on the
device); a block's time is the difference between consecutive prefixes, set beside its FLOPs.
On JAX the label-map forward is also traced (``--profile_calls`` calls) for a kernel profile
(``kernel_profile.py``): device time by layer and by kind of kernel.

Results are appended to ``<output>.jsonl`` (or ``--records``) as each configuration finishes,
each with the peak and the call (command, commit, date, software, settings) that measured it,
and the markdown table is rewritten (atomically) after each: an interrupted run resumes where it
stopped when the same command is run again (``--resume``, default on). A call with nothing left
to measure measures no peak and leaves the table as it is. The table's header states the
effective value of every flag that shapes the rows and lists each call that measured some of
them; a row's % peak is against its own call's peak. ``--report_only`` renders a table from the
records alone, measuring nothing:

    python benchmarks/throughput.py --report_only --records=benchmarks/results/h200.jsonl \
        --calls_log=benchmarks/results/h200.log --geometry=same --input_pipeline=tfrecord \
        --fc6_implementation=conv --output=benchmarks/results/h200_conv.md
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # the fcn_keras package, and kernel_profile.py
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import keras  # noqa: E402
import kernel_profile  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from fcn_keras import train as train_lib  # noqa: E402
from fcn_keras.architecture import check_variant  # noqa: E402
from fcn_keras.console import run_cli, usage_error  # noqa: E402
from fcn_keras.constants import IGNORE_LABEL, NUM_CLASSES, VARIANTS  # noqa: E402
from fcn_keras.distribute import releasing_train_graphs  # noqa: E402
from fcn_keras.files import write_text_atomic  # noqa: E402
from fcn_keras.flops import TRAIN_FLOPS_FACTOR, forward_flops, model_flops  # noqa: E402
from fcn_keras.inference import labels_model  # noqa: E402
from fcn_keras.checks import parse_size  # noqa: E402
from fcn_keras.losses import SegmentationCrossEntropy  # noqa: E402
from fcn_keras.model import FC6_IMPLEMENTATIONS, POOL_IMPLEMENTATIONS, build_fcn  # noqa: E402

# --- Flags -------------------------------------------------------------------------------------

PRECISIONS: dict[str, str] = {"float32": "float32", "bf16": "mixed_bfloat16"}
PIPELINES: tuple[str, ...] = ("synthetic", "tfrecord")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a script: importing the module defines none)."""
    flags.DEFINE_list("variants", list(VARIANTS), "FCN variants to measure (32s, 16s, 8s).")
    flags.DEFINE_list("sizes", ["500", "512"], "Image sizes: N (square) or HxW, e.g. 500,512,375x500.")
    flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes for training and inference throughput.")
    flags.DEFINE_enum("geometry", "reference", ["reference", "same"],
                      "Network geometry: the authors' (100-px padding) or size-preserving 'same'.")
    flags.DEFINE_enum("precision", "bf16", list(PRECISIONS),
                      "float32, or bf16 mixed precision (bf16 compute, float32 variables and logits).")
    flags.DEFINE_integer("steps", 20, "Timed steps (batches) per measurement, >= 1.")
    flags.DEFINE_integer("warmup", 3, "Warm-up steps (compilation) before each timing, >= 1.")
    flags.DEFINE_integer("latency_runs", 50, "Batch-1 predict calls whose median is the latency, >= 1.")
    flags.DEFINE_integer("fc_units", 4096, "Channels of fc6/fc7 (4096 in VGG16; small for smoke tests).")
    flags.DEFINE_enum("fc6_implementation", "im2col", list(FC6_IMPLEMENTATIONS),
                      "How fc6 is computed (build_fcn's fc6_implementation: Conv2D or one im2col matmul).")
    flags.DEFINE_enum("pool_implementation", "pool", list(POOL_IMPLEMENTATIONS),
                      "How the max poolings are computed (build_fcn's pool_implementation).")
    flags.DEFINE_integer("num_classes", NUM_CLASSES, "Number of classes.")
    flags.DEFINE_enum("input_pipeline", "synthetic", list(PIPELINES),
                      "synthetic: random tensors only. tfrecord: also model.fit from the tf.data "
                      "pipeline on TFRecords (fcn_keras.data), reported beside the synthetic figure.")
    flags.DEFINE_string("data", None, "With --input_pipeline=tfrecord: a TFRecord glob or a VOCdevkit "
                        "root (converted under --cache_dir). Default: a synthetic VOC set made in a temp dir.")
    flags.DEFINE_string("cache_dir", None, "Where a VOCdevkit --data is converted, into <cache_dir>/records-<hash> as "
                        "fcn_keras.train does (default: a temp dir).")
    flags.DEFINE_integer("peak_size", 0, "n of the n x n x n bf16 matmul measuring the peak; "
                         "0: 8192 on an accelerator, 1024 on CPU.")
    flags.DEFINE_integer("peak_runs", 10, "Back-to-back matmuls per peak timing (best of 3 timings).")
    flags.DEFINE_string("output", None, "Write the markdown table here (atomically) and the raw "
                        "records to the same name with .jsonl; default: print only.")
    flags.DEFINE_string("records", None, "The JSON-lines records of the measurements (each with its call and "
                        "its peak), read to resume or to report and appended to; default: <output>.jsonl.")
    flags.DEFINE_boolean("resume", True, "Skip configurations already in the records for the same setup; "
                         "--noresume: remove that setup's records (other setups' stay) and measure anew.")
    flags.DEFINE_boolean("report_only", False, "Measure nothing: render the records of this setup (the flags "
                         "that name it: precision, geometry, fc_units, num_classes, input_pipeline, "
                         "fc6_implementation, pool_implementation) as markdown, to --output if given.")
    flags.DEFINE_string("calls_log", None, "The printed output of earlier calls (e.g. benchmarks/results/h200.log): "
                        "records written before calls were recorded take their command, date and software "
                        "from the call in it that printed their peak and wrote to their records file.")
    flags.DEFINE_integer("seed", 0, "Seed of the synthetic data and weights.")
    flags.DEFINE_boolean("profile", False, "Also time the forward pass block by block (VGG blocks, fc6+fc7, "
                         "the head) for each variant and size at the first --batch_sizes entry.")
    flags.DEFINE_integer("profile_calls", 5, "With --profile on JAX: calls of the inference forward traced with "
                         "jax.profiler for a kernel profile (kernel_profile.py; 0: none).")


# --- Small helpers -----------------------------------------------------------------------------


def _positive_ints(values: list[str], name: str) -> list[int]:
    try:
        ints = [int(v) for v in values]
    except ValueError:
        ints = []
    if not ints or min(ints) < 1:
        raise ValueError(f"--{name} must be a list of positive integers. Received: --{name}={','.join(values)}")
    return ints


def check_flags_at_least(minimum: int, *names: str) -> None:
    """Each integer flag of ``names`` is >= ``minimum``, else a ValueError naming the flag (the
    benchmarks' counts and sizes)."""
    for name in names:
        if getattr(FLAGS, name) < minimum:
            raise ValueError(f"--{name} must be >= {minimum}. Received: --{name}={getattr(FLAGS, name)}")


def _sync(tensor) -> None:
    """Blocks until ``tensor`` (any backend) is computed, moving only one element to the host."""
    keras.ops.convert_to_numpy(keras.ops.reshape(tensor, (-1,))[:1])


# --- Device and peak ---------------------------------------------------------------------------


def device_description() -> tuple[str, bool]:
    """What the model runs on, and whether it is an accelerator.

    Returns:
        ``(description, is_accelerator)``, e.g. ``("gpu: NVIDIA H100 80GB HBM3 (x1)", True)``.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return f"{device.platform}: {device.device_kind} (x{jax.device_count()})", True
    elif backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
            return f"gpu: {name} (x{len(gpus)})", True
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"cpu: {cpu} ({os.cpu_count()} cores)", False


def _jit(fn):
    """``fn`` compiled by the backend's XLA (JAX, TensorFlow); other backends run it as is."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    return fn


def command_line(argv: list[str]) -> str:
    """The command as a user would type it again, with the backend, in backquotes."""
    return "`" + " ".join(shlex.quote(a) for a in [f"KERAS_BACKEND={keras.backend.backend()}", "python", *argv]) + "`"


def software() -> str:
    """The backend's, Keras' and Python's versions, e.g. ``"jax 0.11.2, Keras 3.15.1, Python 3.12.3"``."""
    backend = keras.backend.backend()
    version = __import__(backend).__version__ if backend in ("jax", "tensorflow", "torch") else "?"
    return f"{backend} {version}, Keras {keras.__version__}, Python {platform.python_version()}"


def git_commit() -> str | None:
    """The commit a report names: short, and untracked files (the report being written) do not
    make it ``-dirty`` (``fcn_keras.train.git_commit``)."""
    return train_lib.git_commit(short=True, untracked=False)


def utc_now(seconds: bool = False) -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime(f"%Y-%m-%d %H:%M{':%S' if seconds else ''} UTC")


def report_header(argv: list[str], device: str, setup: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The lines every benchmark report starts with: the command (with the backend), the commit,
    device, software versions, ``setup`` (the effective value of every flag that shapes the rows),
    the ``extra`` lines, and the date (UTC). For the reports whose rows all come from this call."""
    return {
        "Command": command_line(argv),
        "Commit": git_commit() or "unknown",
        "Device": device,
        "Software": software(),
        "Setup": setup,
        **(extra or {}),
        "Date": utc_now(),
    }


def peak_side(flag: int, accelerator: bool) -> int:
    """The side n of the peak's n x n matmul: ``flag``, or for 0 8192 on an accelerator and 1024
    on a CPU (8192 would take minutes there)."""
    return flag or (8192 if accelerator else 1024)


def matmul_peak(n: int, runs: int, dtype: str = "bfloat16") -> float:
    """Measured matmul throughput in TFLOP/s: best of 3 timings of ``runs`` back-to-back jitted
    ``keras.ops.matmul`` calls on two ``[n, n]`` random matrices of ``dtype``, 2 n^3 FLOPs each.

    Args:
        n: matrix side.
        runs: calls per timing (launched without waiting; synchronised at the end).
        dtype: the matrices' dtype.

    Returns:
        float: TFLOP/s.
    """
    a = keras.random.normal((n, n), dtype=dtype, seed=1)
    b = keras.random.normal((n, n), dtype=dtype, seed=2)
    matmul = _jit(keras.ops.matmul)
    _sync(matmul(a, b))  # compile
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(runs):
            out = matmul(a, b)
        _sync(out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * runs / best / 1e12


# --- Data --------------------------------------------------------------------------------------


def synthetic_batch(batch: int, height: int, width: int, num_classes: int, seed: int):
    """A random batch: uint8 images ``[B, H, W, 3]`` and uint8 labels ``[B, H, W]`` in
    ``[0, num_classes)`` with about 5 % void (255) pixels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, (batch, height, width), dtype=np.uint8)
    labels[rng.random(labels.shape) < 0.05] = IGNORE_LABEL
    return images, labels


def tfrecord_glob(data: str | None, cache_dir: str | None) -> str:
    """The TFRecord glob of the training split that ``--data`` names (a synthetic VOC set made
    in a temporary folder when ``data`` is None), converted if needed.

    Returns:
        str: a glob of training TFRecords.
    """
    from fcn_keras.data.pipeline import conversion_dir, resolve_data
    from fcn_keras.data.synthetic import make_synthetic_voc

    cache = cache_dir or tempfile.mkdtemp(prefix="fcn_bench_records_")
    if data is None:
        data = str(make_synthetic_voc(Path(cache) / "voc", num_train=16, num_val=1))
        print(f"--data not given: using a synthetic VOC set in {data}", flush=True)
    return resolve_data(data, conversion_dir(data, cache))["train"]


def tfrecord_dataset(glob: str, batch: int, height: int, width: int, seed: int):
    """The project's training pipeline cropping to ``height`` (square sizes only)."""
    from fcn_keras.data.pipeline import train_dataset

    if height != width:
        raise ValueError(f"--input_pipeline=tfrecord crops squares: --sizes must be N, not {height}x{width}")
    return train_dataset(glob, batch_size=batch, crop_size=height, seed=seed, repeat=True)


# --- Measurements ------------------------------------------------------------------------------


def compile_for_training(model: keras.Model) -> None:
    """The training set-up being measured: the paper's SGD, the project's loss, XLA."""
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1e-4, momentum=0.99, weight_decay=5e-4),
        loss=SegmentationCrossEntropy(),
        jit_compile=True,
    )


def train_images_per_second(model: keras.Model, dataset, batch: int, steps: int, warmup: int) -> float:
    """Images/s of ``model.fit(dataset)`` over ``steps`` steps after a ``warmup``-step fit call."""
    model.fit(dataset, epochs=1, steps_per_epoch=warmup, shuffle=False, verbose=0)
    _sync(model.trainable_variables[-1])
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    _sync(model.trainable_variables[-1])  # the last update has been applied
    return steps * batch / (time.perf_counter() - start)


def steady_train_images_per_second(
    model: keras.Model, dataset, batch: int, steps: int, short_img_s: float
) -> float | None:
    """Images/s of ``model.fit(dataset)`` once its input pipeline runs: each fit call starts a new
    iterator (an empty pipeline: shuffle buffer, decoding, AUTOTUNE ramp-up), so the difference
    between a fit of ``4 * steps`` steps and one of ``steps`` steps leaves that start-up out.

    Args:
        short_img_s: ``train_images_per_second`` of the same model and dataset with the same
            ``steps`` and ``batch``: the fit of ``steps`` steps, start-up included.

    Returns:
        The images of the 3 x ``steps`` extra steps over the extra time, or None when the longer
        fit was not slower (start-up noise larger than the steps: too few steps to tell).
    """
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=4 * steps, shuffle=False, verbose=0)
    _sync(model.trainable_variables[-1])
    extra = time.perf_counter() - start - steps * batch / short_img_s
    return 3 * steps * batch / extra if extra > 0 else None


def infer_images_per_second(labeler: keras.Model, dataset, batch: int, steps: int, warmup: int) -> float:
    """Images/s of ``labeler.predict`` (uint8 label maps to the host) over ``steps`` batches."""
    labeler.predict(dataset, steps=warmup, verbose=0)
    start = time.perf_counter()
    labels = labeler.predict(dataset, steps=steps, verbose=0)
    elapsed = time.perf_counter() - start
    if labels.dtype != np.uint8 or labels.shape[0] != steps * batch:
        raise AssertionError(f"predict returned {labels.dtype} {labels.shape}, not {steps * batch} label maps")
    return steps * batch / elapsed


def latency_ms(labeler: keras.Model, image: np.ndarray, runs: int, warmup: int) -> float:
    """Median wall time in ms of ``predict_on_batch`` on one image ``[1, H, W, 3]``."""
    for _ in range(warmup):
        labeler.predict_on_batch(image)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        labeler.predict_on_batch(image)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


#: Where the forward pass is cut for ``--profile``: (block name, last layer of the block); the
#: last block (score layers, skips, upsampling and the argmax) ends at the label map.
PROFILE_CUTS: tuple[tuple[str, str], ...] = (
    ("block1 (conv1_x, pool1; input padding)", "block1_pool"),
    ("block2", "block2_pool"),
    ("block3", "block3_pool"),
    ("block4", "block4_pool"),
    ("block5", "block5_pool"),
    ("fc6 + fc7", "drop7"),
)
PROFILE_HEAD = "head (score_fr, skips, upsampling, argmax)"


def forward_fn(model: keras.Model, x):
    """``x -> model(x, training=False)``, compiled by the backend's XLA for ``x``'s shape, weights
    passed as arguments (not baked in as constants); the output stays on the device.

    Returns:
        ``(fn, program)``: ``fn(x)``, and on JAX the program compiled ahead of time with its
        arguments, ``(compiled, (trainable, non_trainable, x))``, for ``kernel_profile`` (else ``None``).
    """
    if keras.backend.backend() == "jax":
        import jax

        weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
        jitted = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
        compiled = jitted.lower(*weights, x).compile()
        return (lambda x: compiled(*weights, x)), (compiled, (*weights, x))
    return _jit(lambda x: model(x, training=False)), None


def seconds_per_call(fn, x, runs: int, warmup: int) -> float:
    """Best of 3 timings of ``runs`` back-to-back calls ``fn(x)`` (synchronised at the end), per call."""
    for _ in range(warmup):
        _sync(fn(x))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(runs):
            out = fn(x)
        _sync(out)
        best = min(best, time.perf_counter() - start)
    return best / runs


def profile_blocks(model: keras.Model, labeler: keras.Model, images: np.ndarray, runs: int, warmup: int,
                   profile_calls: int = 0) -> tuple[list[dict], list[str]]:
    """Forward time and FLOPs of each block of ``model`` on ``images`` (already on the device),
    and the kernel profile of the label-map forward.

    Each prefix of the network (input to the end of a block; the last one is ``labeler``, input to
    label map) is compiled and timed on its own; a block's time is its prefix's time minus the
    previous prefix's. A prefix writes its output to memory where the whole net may fuse on, and
    two timings carry noise: small blocks can come out slightly negative. On JAX, ``profile_calls``
    calls of the labeler's compiled program are then traced (``kernel_profile``).

    Returns:
        ``[{"block", "gflop_per_image", "prefix_ms", "ms"}]`` in network order, ``ms`` per batch,
        and the kernel profile's markdown lines (``[]`` for 0 calls or another backend).
    """
    flops = model_flops(model)
    order = [layer.name for layer in model.layers]
    x = keras.ops.convert_to_tensor(images)
    blocks, start, previous_ms = [], 0, 0.0
    for name, last in (*PROFILE_CUTS, (PROFILE_HEAD, None)):
        end = len(order) if last is None else order.index(last) + 1
        prefix = labeler if last is None else keras.Model(model.inputs, model.get_layer(last).output)
        fn, program = forward_fn(prefix, x)
        prefix_ms = 1e3 * seconds_per_call(fn, x, runs, warmup)
        blocks.append({
            "block": name,
            "gflop_per_image": sum(flops.get(layer, 0) for layer in order[start:end]) / 1e9,
            "prefix_ms": prefix_ms,
            "ms": prefix_ms - previous_ms,
        })
        start, previous_ms = end, prefix_ms
    # ``program`` is the labeler's (the last prefix), already compiled and warm.
    kernels = kernel_profile.profile_lines(*program, profile_calls, tuple(layer.name for layer in labeler.layers)) \
        if program else []
    return blocks, kernels


def measure_config(model, labeler, variant, size, batch, setup, steps, warmup, latency, tf_glob, seed) -> dict:
    """Every measurement of one (variant, size, batch); ``latency`` is given (per size)."""
    import tensorflow as tf  # tf.data on the host, whatever the Keras backend

    height, width = size
    images, labels = synthetic_batch(batch, height, width, setup["num_classes"], seed)
    synthetic = tf.data.Dataset.from_tensors((images, labels)).repeat()
    record = {
        "kind": "config",
        "setup": setup,
        "variant": variant,
        "size": f"{height}x{width}",
        "batch": batch,
        "forward_gflop_per_image": forward_flops(model) / 1e9,
        "train_img_s": train_images_per_second(model, synthetic, batch, steps, warmup),
        "infer_img_s": infer_images_per_second(
            labeler, tf.data.Dataset.from_tensors(images).repeat(), batch, steps, warmup
        ),
        "latency_ms": latency,
        "steps": steps,
    }
    if tf_glob is not None:
        dataset = tfrecord_dataset(tf_glob, batch, height, width, seed)
        record["tfrecord_train_img_s"] = train_images_per_second(model, dataset, batch, steps, warmup)
        record["tfrecord_steady_train_img_s"] = steady_train_images_per_second(
            model, dataset, batch, steps, record["tfrecord_train_img_s"])
    return record


# --- Records and the table ---------------------------------------------------------------------

#: The flags that name a setup besides the machine (backend, device): the rows of one table share them.
SETUP_FLAGS: tuple[str, ...] = ("precision", "geometry", "fc_units", "num_classes", "input_pipeline",
                                "fc6_implementation", "pool_implementation")
#: How records written before fc6 and the poolings had a choice of implementation computed them.
LEGACY_SETUP: dict[str, str] = {"fc6_implementation": "conv", "pool_implementation": "pool"}
LEGACY_MEANING: dict[str, str] = {"fc6_implementation": "fc6 a `Conv2D`", "pool_implementation": "`MaxPooling2D` poolings"}
#: The line a call prints once it has measured its peak (and before measuring anything else).
PEAK_LINE = re.compile(r"device: (?P<device>.*); bf16 matmul peak (?P<tflops>[\d.]+) TFLOP/s \(n=(?P<n>\d+)\)$")


def full_setup(record: dict) -> dict:
    """A record's setup, with ``LEGACY_SETUP`` for the keys records of earlier versions lack."""
    return {**LEGACY_SETUP, **record["setup"]}


def same_setup(record: dict, setup: dict) -> bool:
    """Whether a saved record was measured in ``setup`` (records written before fc6 and the
    poolings had a choice of implementation computed them as ``Conv2D`` and ``MaxPooling2D``)."""
    return full_setup(record) == setup


def read_records(path: Path | None) -> list[dict]:
    """The JSON-lines records in ``path`` (none if absent); a torn last line is reported and left out."""
    if path is None or not path.is_file():
        return []
    records, bad = [], 0
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad:
        print(f"{path}: {bad} unreadable line(s) left out (an interrupted write)", flush=True)
    return records


def append_record(path: Path | None, record: dict) -> None:
    """Appends ``record`` as one JSON line; after a torn last line (a write a kill cut short)
    on a line of its own, so that the torn line alone is lost."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab+") as file:  # Appending: writes go to the end wherever it was read.
            torn = False
            if file.seek(0, os.SEEK_END):
                file.seek(-1, os.SEEK_END)
                torn = file.read(1) != b"\n"
            file.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())


def drop_records_of(path: Path | None, setup: dict) -> None:
    """``--noresume``: removes the records of ``setup`` from ``path`` (rewritten atomically),
    keeping those of other setups (another device, precision, implementation)."""
    if path is None or not path.exists():
        return
    records = read_records(path)
    kept = [record for record in records if not same_setup(record, setup)]
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))
    print(f"{path}: --noresume: {len(records) - len(kept)} record(s) of this setup removed, {len(kept)} of other "
          "setups kept", flush=True)


def records_file_of(command: str) -> str | None:
    """The name of the records file a printed throughput.py ``command`` wrote to (its
    ``--records``, else its ``--output`` with ``.jsonl``), or None."""
    try:
        args = shlex.split(command.strip().strip("`"))
    except ValueError:
        return None
    values = {}
    for index, arg in enumerate(args):
        for name in ("records", "output"):
            if arg.startswith(f"--{name}="):
                values[name] = arg.split("=", 1)[1]
            elif arg == f"--{name}" and index + 1 < len(args):
                values[name] = args[index + 1]
    if values.get("records"):
        return Path(values["records"]).name
    return Path(values["output"]).with_suffix(".jsonl").name if values.get("output") else None


def parse_calls_log(path: Path) -> list[dict]:
    """The calls of this script in ``path``, a log of their printed output: each call's peak line
    (printed before it measures anything) and the header of the table it printed at its end.

    Returns:
        ``[{"tflops": "749.30", "n": 8192, "records_file": "h200.jsonl", "call": {"command", "date",
        "software", "host", "settings", "tfrecords"}}]``, in the log's order; a call that printed no
        table before the next call's peak line has no ``"call"``.
    """
    lines = path.read_text(errors="replace").splitlines()
    starts = [index for index, line in enumerate(lines) if PEAK_LINE.match(line.strip())]
    calls = []
    for start, end in zip(starts, [*starts[1:], len(lines)]):
        peak = PEAK_LINE.match(lines[start].strip())
        entry = {"tflops": peak["tflops"], "n": int(peak["n"])}
        heading = next((i for i in range(start + 1, end) if lines[i].strip() == "# FCN-VGG16 throughput"), None)
        if heading is not None:
            header = {}
            for line in lines[heading + 1:end]:
                if line.strip() and not line.startswith("- "):
                    break
                if ": " in line:
                    label, value = line[2:].split(": ", 1)
                    header.setdefault(label, value.strip())
            settings = re.search(r"\d+ timed steps after \d+ warm-up, latency median of \d+", header.get("Setup", ""))
            entry["records_file"] = records_file_of(header.get("Command", ""))
            entry["call"] = {
                "command": header.get("Command"), "commit": None, "date": header.get("Date"),
                "software": header.get("Software"),
                "host": header["Device"].split("host: ", 1)[1] if "host: " in header.get("Device", "") else None,
                "settings": settings.group(0) if settings else None, "tfrecords": header.get("TFRecords"),
                "from_log": str(path),
            }
        calls.append(entry)
    return calls


def attach_calls(records: list[dict], records_path: Path | None, log_calls: list[dict] | None = None) -> list[dict]:
    """The measurements (``"config"`` and ``"profile"`` records) of ``records``, in file order,
    each with the ``"peak"`` and the ``"call"`` that measured it.

    Records of this version carry both. Records written before take them here: the peak is that of
    the latest ``"peak"`` record of the same setup before them in the file (a call recorded its peak
    at its start, then its measurements); the call, that of the one call of ``log_calls`` that
    printed this peak (two decimals, same n) and wrote to a records file of ``records_path``'s
    name, else one with no command (not recorded).
    """
    measurements, session_peaks = [], {}
    for index, record in enumerate(records):
        kind = record.get("kind")
        key = json.dumps(full_setup(record), sort_keys=True) if "setup" in record else None
        if kind == "peak":
            session_peaks[key] = (index, record)
            continue
        if kind not in ("config", "profile"):
            continue
        record = dict(record)
        if "peak" not in record or "call" not in record:
            session, peak_record = session_peaks.get(key, (None, None))
            peak = None if peak_record is None else {"tflops": peak_record["tflops"], "n": peak_record["n"]}
            record.setdefault("peak", peak)
            if "call" not in record:
                matches = [] if peak is None or records_path is None else [
                    entry["call"] for entry in log_calls or []
                    if "call" in entry and entry["tflops"] == f"{peak['tflops']:.2f}" and entry["n"] == peak["n"]
                    and entry["records_file"] == records_path.name]
                record["call"] = {**(matches[0] if len(matches) == 1 else {"command": None}), "session": session}
        measurements.append(record)
    return measurements


def _fmt(value: float) -> str:
    """A table cell: one decimal from 100 up, else 3 significant digits (CPU figures are tiny)."""
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def _percent_of_peak(tflops: float, record: dict) -> str:
    """``tflops`` as % of the peak measured by the record's call ("-" if none was recorded)."""
    peak = record.get("peak")
    return "-" if not peak else _fmt(100 * tflops / peak["tflops"])


def describe_setup(setup: dict) -> str:
    """The effective value of every flag that shapes the rows of ``setup``."""
    precision = setup["precision"]
    return (f"backend {setup['backend']}, device {setup['device']}; precision {precision} "
            f"({PRECISIONS.get(precision, '?')}), geometry {setup['geometry']}, fc_units {setup['fc_units']}, "
            f"{setup['num_classes']} classes, fc6_implementation {setup['fc6_implementation']}, "
            f"pool_implementation {setup['pool_implementation']}, input_pipeline {setup['input_pipeline']}, jit_compile")


def format_tflops(tflops: float) -> str:
    """A peak for the reader: two decimals from 1 TFLOP/s up (an accelerator's 774.02), three
    significant digits below (a CPU's 0.00381, which two decimals would show as 0.00)."""
    if tflops >= 1:
        return f"{tflops:.2f}"
    return np.format_float_positional(tflops, precision=3, unique=False, fractional=False, trim="k")


def describe_peak(peak: dict | None) -> str:
    if not peak:
        return "no peak recorded"
    runs = f", best of 3 timings of {peak['runs']} calls" if peak.get("runs") else ""
    return f"bf16 matmul peak {format_tflops(peak['tflops'])} TFLOP/s (n={peak['n']}{runs})"


def describe_rows(rows: list[dict]) -> str:
    """E.g. ``"FCN-8s 512x512 batch 8, 16; block profile FCN-8s 512x512 batch 8"``."""
    configs: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r["kind"] == "config":
            configs.setdefault((r["variant"], r["size"]), []).append(str(r["batch"]))
    parts = [f"FCN-{variant} {size} batch {', '.join(batches)}" for (variant, size), batches in configs.items()]
    parts += [f"block profile FCN-{r['variant']} {r['size']} batch {r['batch']}" for r in rows if r["kind"] == "profile"]
    return "; ".join(parts)


def describe_call(call: dict, peak: dict | None, rows: list[dict]) -> str:
    """One call that measured rows: its command, date, commit, software, settings, peak, and its rows."""
    if call.get("command"):
        details = [call.get("date") or "date not recorded", f"commit {call.get('commit') or 'not recorded'}",
                   *(value for value in (call.get("software"), call.get("host") and f"host: {call['host']}",
                                         call.get("settings")) if value)]
        if call.get("tfrecords"):
            details.append(f"TFRecords {call['tfrecords']}")
        text = f"{call['command']} ({'; '.join([*details, describe_peak(peak)])}): {describe_rows(rows)}"
        if call.get("from_log"):
            text += (f". Command, date, software, host and settings from {call['from_log']}: the call there that "
                     f"printed this peak and wrote to this records file (its records predate recorded calls)")
        return text
    return (f"command, date and software not recorded (records written before calls were recorded; "
            f"{describe_peak(peak)}): {describe_rows(rows)}")


def group_by_call(records: list[dict]) -> list[tuple[dict, dict | None, list[dict]]]:
    """``[(call, peak, records)]`` in the order the calls first appear."""
    groups: dict[str, tuple[dict, dict | None, list[dict]]] = {}
    for r in records:
        key = json.dumps([r.get("call"), r.get("peak")], sort_keys=True)
        groups.setdefault(key, (r.get("call") or {}, r.get("peak"), []))[2].append(r)
    return list(groups.values())


TABLE_COLUMNS: tuple[str, ...] = (
    "size", "batch", "fwd GFLOP/img", "train img/s", "train TFLOP/s", "train % peak",
    "infer img/s", "infer TFLOP/s", "infer % peak", "batch-1 latency ms",
)
TFRECORD_COLUMNS: tuple[str, ...] = ("train img/s (TFRecords)", "TFRecords / synthetic %",
                                     "steady train img/s (TFRecords)", "steady TFRecords / synthetic %")


def render_markdown(records: list[dict], setup: dict, rendered_by: str | None = None) -> str:
    """The results as markdown: a header, one table per variant, the block profiles, how it was counted.

    Args:
        records: ``"config"`` and ``"profile"`` records of this ``setup``, each with the ``"peak"``
            and ``"call"`` that measured it (``attach_calls``); a row's % peak is against its own
            call's peak.
        setup: the rows' setup (backend, device and ``SETUP_FLAGS``).
        rendered_by: for a report rendered from records alone, the command that rendered it.

    Returns:
        str: the markdown document.
    """
    lines = ["# FCN-VGG16 throughput", "", f"- Setup of every row: {describe_setup(setup)}"]
    for flag, meaning in LEGACY_MEANING.items():
        legacy = sum(1 for r in records if flag not in r["setup"])
        if legacy:
            lines.append(f"- {legacy} of the {len(records)} records predate the {flag} flag: measured with {meaning}, "
                         "then the only implementation")
    calls = group_by_call(records)
    lines.append(f"- Measured by {len(calls)} call{'s' if len(calls) != 1 else ''} (a row's % peak is against the "
                 "bf16 matmul peak its own call measured):")
    lines += [f"  {number}. {describe_call(*call)}" for number, call in enumerate(calls, start=1)]
    if rendered_by:
        lines.append(f"- Rendered from the records (nothing measured) by {rendered_by}")
    with_tfrecord = setup["input_pipeline"] == "tfrecord"
    columns = TABLE_COLUMNS + (TFRECORD_COLUMNS if with_tfrecord else ())
    for variant in VARIANTS:
        rows = [r for r in records if r["kind"] == "config" and r["variant"] == variant]
        if not rows:
            continue
        lines += ["", f"## FCN-{variant}", "", "| " + " | ".join(columns) + " |",
                  "|" + "---|" * len(columns)]
        for r in sorted(rows, key=lambda r: (r["size"], r["batch"])):
            gflop = r["forward_gflop_per_image"]
            train_tflops = r["train_img_s"] * gflop * TRAIN_FLOPS_FACTOR / 1e3
            infer_tflops = r["infer_img_s"] * gflop / 1e3
            cells = [r["size"], str(r["batch"]), _fmt(gflop), _fmt(r["train_img_s"]), _fmt(train_tflops),
                     _percent_of_peak(train_tflops, r), _fmt(r["infer_img_s"]), _fmt(infer_tflops),
                     _percent_of_peak(infer_tflops, r), _fmt(r["latency_ms"])]
            if with_tfrecord:
                steady = r.get("tfrecord_steady_train_img_s")  # not in records of earlier versions
                cells += [_fmt(r["tfrecord_train_img_s"]), _fmt(100 * r["tfrecord_train_img_s"] / r["train_img_s"]),
                          "-" if steady is None else _fmt(steady),
                          "-" if steady is None else _fmt(100 * steady / r["train_img_s"])]
            lines.append("| " + " | ".join(cells) + " |")
    for profile in (r for r in records if r["kind"] == "profile"):
        lines += render_profile(profile)
    lines += [
        "",
        "How it is measured. FLOPs = 2 x multiply-accumulates of every convolution and "
        "deconvolution, from the layer shapes of this geometry "
        f"({setup['geometry']}{': the 100-pixel input padding is computed, so it is counted' if setup['geometry'] == 'reference' else ''}); "
        f"training = {TRAIN_FLOPS_FACTOR} x forward (forward + backward); ReLU, pooling, adds and "
        "the argmax are not counted. % peak = achieved TFLOP/s / the bf16 matmul peak measured by the call "
        "that measured the row (a jitted keras.ops.matmul of two n x n bf16 matrices on the same device). "
        "Training: one warm-up model.fit call, then the wall time of one fit call of the timed steps "
        "(SGD momentum 0.99, SegmentationCrossEntropy, jit_compile=True), synthetic data repeated from "
        "a tf.data dataset" + (" or the TFRecord pipeline (random scale, crop, flip); each fit call starts the "
                               "pipeline anew, and the steady columns leave that start-up out: the images of a fit "
                               "of 4 x the timed steps minus the fit of the timed steps, over the difference of their "
                               "times ('-': not measured, or start-up noise larger than the steps)"
                               if with_tfrecord else "")
        + ". Inference: labels_model.predict (argmax on the device, uint8 label maps to the host). "
        "Latency: median of predict_on_batch on one image, host to host.",
        "",
    ]
    return "\n".join(lines)


PROFILE_COLUMNS: tuple[str, ...] = ("block", "GFLOP/img", "ms/batch", "% of forward", "TFLOP/s", "% peak")


def render_profile(record: dict) -> list[str]:
    """The markdown lines of one ``--profile`` record: a table of the blocks and a total row (%
    peak against the peak its call measured)."""
    batch, blocks = record["batch"], record["blocks"]
    total_ms = blocks[-1]["prefix_ms"]
    lines = ["", f"## Forward time by block: FCN-{record['variant']}, {record['size']}, batch {batch}", "",
             "| " + " | ".join(PROFILE_COLUMNS) + " |", "|" + "---|" * len(PROFILE_COLUMNS)]
    for block in [*blocks, {"block": "**whole forward**", "gflop_per_image": sum(b["gflop_per_image"] for b in blocks),
                            "ms": total_ms}]:
        tflops = block["gflop_per_image"] * batch / block["ms"] if block["ms"] > 0 else float("nan")
        lines.append("| " + " | ".join([block["block"], _fmt(block["gflop_per_image"]), _fmt(block["ms"]),
                                        _fmt(100 * block["ms"] / total_ms), _fmt(tflops),
                                        _percent_of_peak(tflops, record)]) + " |")
    lines += ["", "Each block's time is the difference between two jitted prefixes of the network (input to "
              "the end of the block), each timed on its own; a prefix writes its output to memory, where the "
              "whole net may fuse on. TFLOP/s = the block's FLOPs / its time."]
    if record.get("kernels"):  # not in records of earlier versions
        lines += ["", f"### Kernel profile of the inference forward (label maps): FCN-{record['variant']}, "
                  f"{record['size']}, batch {batch}", "", *record["kernels"]]
    return lines


# --- Main --------------------------------------------------------------------------------------


def flag_setup() -> dict:
    """``SETUP_FLAGS``' values."""
    return {name: getattr(FLAGS, name) for name in SETUP_FLAGS}


def report(argv: list[str], records_path: Path | None, log_calls: list[dict]) -> str:
    """``--report_only``: the records of the flags' setup rendered as markdown, measuring nothing."""
    if records_path is None:
        raise ValueError("--report_only renders records: give --records or --output (its .jsonl is read)")
    if not records_path.is_file():
        raise FileNotFoundError(f"--report_only: no records file {records_path}")
    wanted = flag_setup()
    measurements = attach_calls(read_records(records_path), records_path, log_calls)
    records = [r for r in measurements if {name: full_setup(r).get(name) for name in SETUP_FLAGS} == wanted]
    if not records:
        present = sorted({", ".join(f"{name} {full_setup(r).get(name)}" for name in SETUP_FLAGS) for r in measurements})
        raise ValueError(f"{records_path} holds no measurement of this setup "
                         f"({', '.join(f'{name} {value}' for name, value in wanted.items())}); "
                         f"it holds: {'; '.join(present) or 'none'}")
    machines = sorted({(full_setup(r)["backend"], full_setup(r)["device"]) for r in records})
    if len(machines) > 1:
        raise ValueError(f"{records_path} holds this setup's measurements from {len(machines)} backends or devices "
                         f"({machines}): one table each cannot be told apart by these flags")
    setup = {"backend": machines[0][0], "device": machines[0][1], **wanted}
    rendered_by = f"{command_line(argv)} ({utc_now()}, commit {git_commit() or 'unknown'})"
    return write_report(render_markdown(records, setup, rendered_by), FLAGS.output)


def run(argv: list[str]) -> str:
    """Runs the benchmark described by the flags; returns the markdown it printed."""
    try:
        variants = [check_variant(v) for v in FLAGS.variants]
    except ValueError as error:
        raise ValueError(f"--variants: {error}") from None
    sizes = [parse_size(s, "--sizes entries") for s in FLAGS.sizes]
    batches = _positive_ints(FLAGS.batch_sizes, "batch_sizes")
    check_flags_at_least(1, "steps", "warmup", "latency_runs", "fc_units", "peak_runs")
    check_flags_at_least(2, "num_classes")  # Before the peak is measured, not after.
    if FLAGS.data and FLAGS.input_pipeline != "tfrecord":
        raise ValueError(f"--data is read only with --input_pipeline=tfrecord (the synthetic pipeline makes its own "
                         f"tensors). Received: --data={FLAGS.data!r}, --input_pipeline={FLAGS.input_pipeline}")
    check_flags_at_least(0, "peak_size", "profile_calls")
    if FLAGS.input_pipeline == "tfrecord":
        for height, width in sizes:
            if height != width:
                raise ValueError(f"--input_pipeline=tfrecord crops squares: --sizes must be N, not {height}x{width}")
    output = Path(FLAGS.output) if FLAGS.output else None
    records_path = Path(FLAGS.records) if FLAGS.records else output.with_suffix(".jsonl") if output else None
    if FLAGS.calls_log and not Path(FLAGS.calls_log).is_file():
        raise FileNotFoundError(f"--calls_log: no file {FLAGS.calls_log}")
    log_calls = parse_calls_log(Path(FLAGS.calls_log)) if FLAGS.calls_log else []
    if FLAGS.report_only:
        return report(argv, records_path, log_calls)

    import tensorflow as tf  # tf.data on the host (imported here: benchmarks/train_step.py runs without it)

    if keras.backend.backend() != "tensorflow":
        tf.config.set_visible_devices([], "GPU")  # tf.data only: the accelerator is the backend's
    keras.config.set_dtype_policy(PRECISIONS[FLAGS.precision])
    keras.utils.set_random_seed(FLAGS.seed)
    device, accelerator = device_description()
    setup = {"backend": keras.backend.backend(), "device": device, **flag_setup()}
    old = read_records(records_path) if FLAGS.resume else []
    if not FLAGS.resume:
        drop_records_of(records_path, setup)
    measurements = attach_calls(old, records_path, log_calls)
    done = [r for r in measurements if same_setup(r, setup)]
    if len(done) < len(measurements):
        print(f"{records_path}: records of other setups are kept there but not shown", flush=True)

    plan = []
    for variant in variants:
        for height, width in sizes:
            measured = {(r["kind"], r["batch"]) for r in done if r["variant"] == variant and r["size"] == f"{height}x{width}"}
            todo = [b for b in batches if ("config", b) not in measured]
            profile = FLAGS.profile and ("profile", batches[0]) not in measured
            if todo or profile:
                plan.append((variant, height, width, todo, profile))
            else:
                print(f"FCN-{variant} {height}x{width}: already measured, skipped (--resume)", flush=True)
    if not plan:
        print(f"nothing new to measure: no peak measured, {output or 'no table'} left as it is "
              "(--report_only renders the records)", flush=True)
        return ""

    tf_glob = tfrecord_glob(FLAGS.data, FLAGS.cache_dir) if FLAGS.input_pipeline == "tfrecord" else None
    peak_n = peak_side(FLAGS.peak_size, accelerator)
    peak = {"tflops": matmul_peak(peak_n, FLAGS.peak_runs), "n": peak_n, "runs": FLAGS.peak_runs}
    print(f"device: {device}; bf16 matmul peak {format_tflops(peak['tflops'])} TFLOP/s (n={peak_n})", flush=True)
    call = {"command": command_line(argv), "commit": git_commit(), "date": utc_now(seconds=True),
            "software": software(), "host": f"{os.cpu_count()} CPU cores",
            "settings": f"{FLAGS.steps} timed steps after {FLAGS.warmup} warm-up, latency median of "
                        f"{FLAGS.latency_runs}, seed {FLAGS.seed}",
            "tfrecords": tf_glob}
    records = list(done)

    def save(record: dict) -> None:
        """Keeps a measurement (with its call and peak) and rewrites the table."""
        record.update(peak=peak, call=call)
        append_record(records_path, record)
        records.append(record)
        if output is not None:
            write_text_atomic(output, render_markdown(records, setup))

    for variant, height, width, todo, profile in plan:
        with releasing_train_graphs():  # TensorFlow: free this model before the next one
            keras.utils.clear_session()
            model = build_fcn(variant, FLAGS.num_classes, input_shape=(height, width, 3),
                              geometry=FLAGS.geometry, fc_units=FLAGS.fc_units,
                              fc6_implementation=FLAGS.fc6_implementation,
                              pool_implementation=FLAGS.pool_implementation)
            compile_for_training(model)
            labeler = labels_model(model)
            labeler.compile(jit_compile=True)
            if todo:
                image = synthetic_batch(1, height, width, FLAGS.num_classes, FLAGS.seed)[0]
                latency = latency_ms(labeler, image, FLAGS.latency_runs, FLAGS.warmup)
            for batch in todo:
                record = measure_config(model, labeler, variant, (height, width), batch, setup,
                                        FLAGS.steps, FLAGS.warmup, latency, tf_glob, FLAGS.seed)
                save(record)
                print(f"FCN-{variant} {height}x{width} batch {batch}: train {record['train_img_s']:.2f} img/s, "
                      f"infer {record['infer_img_s']:.2f} img/s, latency {latency:.2f} ms", flush=True)
            if profile:
                images = synthetic_batch(batches[0], height, width, FLAGS.num_classes, FLAGS.seed)[0]
                blocks, kernels = profile_blocks(model, labeler, images, FLAGS.steps, FLAGS.warmup,
                                                 FLAGS.profile_calls)
                record = {"kind": "profile", "setup": setup, "variant": variant, "size": f"{height}x{width}",
                          "batch": batches[0], "blocks": blocks, "kernels": kernels}
                save(record)
                print(f"FCN-{variant} {height}x{width} batch {batches[0]}: profiled "
                      + ", ".join(f"{b['block'].split(' ')[0]} {b['ms']:.2f} ms" for b in record["blocks"]), flush=True)
    markdown = render_markdown(records, setup)
    print(markdown, flush=True)
    return markdown


def write_report(markdown: str, output: str | None, echo: bool = True) -> str:
    """Writes a benchmark's markdown to ``output`` (atomically; nothing when None) and, with
    ``echo``, prints it; returns it."""
    if output:
        write_text_atomic(Path(output), markdown)
    if echo:
        print(markdown, flush=True)
    return markdown


def benchmark_main(script: str, run_fn, argv: list[str]) -> int | None:
    """A benchmark script's absl ``main``: no positional arguments, and bad input (a
    ``FileNotFoundError`` or ``ValueError``, whose message names it) reported in one line, exit 2.

    Args:
        script: the script's path for the messages, e.g. ``"benchmarks/fc6.py"``.
        run_fn: the script's ``run(argv)``.
        argv: what absl passes to ``main``.
    """
    if len(argv) > 1:
        return usage_error(script, f"unexpected arguments: {argv[1:]}")
    try:
        run_fn(sys.argv)
    except (FileNotFoundError, ValueError) as error:
        print(f"{Path(script).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    return None


def main(argv: list[str]) -> int | None:
    return benchmark_main("benchmarks/throughput.py", run, argv)


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
