"""Training CLI and API: ``python -m fcn_keras.train --variant=8s ...`` / ``train(TrainConfig(...))``.

The paper's recipe by default on real data (SGD, momentum 0.99, weight decay 5e-4 on the
kernels, biases at twice the learning rate, whole images in batches of 1, staged 32s → 16s →
8s with ``--init_from``), the modern one with ``--crop_size`` and ``--batch_size``. Without
``--data`` it trains on a small synthetic dataset in the VOC layout that it generates itself (the
README's quick start, a few minutes on 2 CPU cores).

Per run, in ``--output_dir``: ``best.keras`` (best validation mean IU, or training mean IU
without validation data), ``last.keras``, ``backup/`` (complete state every ``--backup_freq``
steps and at each epoch end, or every ``--checkpoint_freq`` epochs with the checkpoints: the
same command resumes after a kill, see
``fcn_keras.callbacks``), ``log.csv``, ``tensorboard/``, ``config.json`` and, at the end,
``summary.json``. See docs/training.md.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np

from fcn_keras import architecture as arch
from fcn_keras import callbacks as cb
from fcn_keras.backbone import resolve_preprocessing
from fcn_keras.checks import check_choice, check_int, check_writable_folder, parse_size
from fcn_keras.console import counted, progress_verbosity, run_cli, usage_error
from fcn_keras.constants import (
    DEFAULT_SHUFFLE_BUFFER, IGNORE_LABEL, NUM_CLASSES, PREPROCESSING_MODES, TRAIN_SCALE_RANGE, VARIANTS, VOC_CLASSES,
)
from fcn_keras.files import atomic_path, remove_orphaned_temporaries, write_json_atomic
from fcn_keras.model import FC6_IMPLEMENTATIONS
from fcn_keras.optimizers import CaffeSGD
from fcn_keras.distribute import (
    DISTRIBUTE_MODES,
    Distribution,
    adapt_model,
    prepare_dataset,
    releasing_train_graphs,
    setup_distribution,
)

logger = logging.getLogger("fcn_keras.train")

REPO_ROOT = Path(__file__).resolve().parents[1]

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
LR_SCHEDULES: tuple[str, ...] = ("constant", "poly")
MIXED_PRECISION: dict[str, str] = {"none": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
JIT_COMPILE: dict[str, Any] = {"auto": "auto", "true": True, "false": False}

# --- Defaults ---------------------------------------------------------------------------------
# Fields left at None ("auto") take their value from one of two profiles: the paper's setup on
# real data, or the quick synthetic demo when --data is empty. config.json records both what
# was asked and what was used.

#: Mean number of non-void pixels per training image of PASCAL VOC 2012: 169,756, measured on
#: the 311 official-train masks in ../shared/voc2012 (179,056 pixels per image with void). The
#: paper sums the per-pixel losses; our loss is their mean, so the same update needs a learning
#: rate larger by this factor (docs/training.md, docs/evaluation.md).
VOC_VALID_PIXELS_PER_IMAGE = 1.70e5

#: The reference solvers' learning rates for the unnormalised loss (voc-fcn*/solver.prototxt).
PAPER_LEARNING_RATES: dict[str, float] = {"32s": 1e-10, "16s": 1e-12, "8s": 1e-14, "8s_at_once": 1e-10}

PAPER_PROFILE: dict[str, Any] = {
    "epochs": 25,  # the reference solve.py: 25 rounds of 4,000 iterations (100k at batch 1)
    "steps_per_epoch": 4000,
    "batch_size": 1,
    "crop_size": 0,  # whole images
    "fc_units": arch.FC_UNITS,
    "geometry": "reference",
    "optimizer": "sgd",
}

DEMO_PROFILE: dict[str, Any] = {
    "epochs": 10,
    "steps_per_epoch": 60,
    "batch_size": 4,
    "crop_size": 64,
    "fc_units": 256,
    "geometry": "same",
    "optimizer": "adam",
    "learning_rate": 3e-4,
}

#: The synthetic dataset of the demo (fcn_keras.data.synthetic.make_synthetic_voc arguments).
DEMO_DATA: dict[str, Any] = {"num_train": 48, "num_val": 12, "size": (64, 80), "seed": 0}


@dataclass
class TrainConfig:
    """One training run; one field per CLI flag, with the same names and defaults.

    ``None`` means "auto": the paper's setting on real data, the demo's without ``data`` (see
    ``PAPER_PROFILE`` / ``DEMO_PROFILE`` and ``resolve_config``).
    """

    variant: str = "8s"
    data: str = ""
    train_split: str = "train"
    val_split: str = "val"
    init_from: str = ""
    weights: str = "auto"
    preprocessing: str = "auto"
    num_classes: int | None = None
    class_weights: str = "none"
    epochs: int | None = None
    steps_per_epoch: int | None = None
    max_train_seconds: float = 0.0
    batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    crop_size: int | None = None
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    optimizer: str | None = None
    learning_rate: float | None = None
    lr_schedule: str = "constant"
    momentum: float = 0.99
    weight_decay: float = 5e-4
    mixed_precision: str = "none"
    jit_compile: str = "auto"
    output_dir: str = ""
    cache_dir: str = "cache"
    seed: int = 0
    distribute: str = "none"
    at_once: bool = False
    learn_skip_upsampling: bool = True
    geometry: str | None = None
    fc_units: int | None = None
    fc6_implementation: str = "im2col"
    val_steps: int | None = None
    val_canvas: str = ""
    val_batch_size: int | None = None
    backup_freq: int = 100
    checkpoint_freq: int = 1
    deterministic: bool = True
    verbose: int = 1


class TrainingDiverged(RuntimeError):
    """The loss (or, at an epoch end, a weight) became NaN/inf; training stopped and the last
    good checkpoints were kept."""


class WeightsDownloadError(RuntimeError):
    """``weights='imagenet'``: keras.applications' VGG16 could not be downloaded (a failure
    while running, exit status 1, not bad input); the message says what to do offline."""


# --- Configuration ----------------------------------------------------------------------------


def paper_learning_rate(variant: str, at_once: bool = False) -> float:
    """The paper's learning rate for our per-pixel-mean loss: ``lr_caffe * pixels per image``."""
    key = "8s_at_once" if at_once else variant
    return PAPER_LEARNING_RATES[key] * VOC_VALID_PIXELS_PER_IMAGE


def _num_classes(config: TrainConfig) -> int:
    """``num_classes``, or the data's class count when it is ``None`` (auto).

    Raises:
        ValueError: ``num_classes`` differs from the count the data records (its manifest): the
            classes beyond it would be trained as void without a word, or the score layers
            would have outputs no label ever asks for.
    """
    from fcn_keras.data import voc

    names = _class_names(config)
    if config.num_classes is None:
        return NUM_CLASSES if names is None else len(names)
    if names is not None and config.num_classes != len(names):
        raise ValueError(
            f"num_classes must match the data, which has {len(names)} classes ({voc.abbreviate(names)}); leave it "
            "unset to take them from the data. "
            f"Received: num_classes={config.num_classes!r}, data={config.data or '(the synthetic demo)'!r}"
        )
    return config.num_classes


def _class_names(config: TrainConfig) -> list[str] | None:
    """The class names of the run's data (``None`` when its records say nothing of them)."""
    from fcn_keras.data.pipeline import data_class_names

    names = data_class_names(config.data) if config.data else VOC_CLASSES
    return None if names is None else list(names)


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Validates ``config`` and fills its ``None`` ("auto") fields.

    Returns:
        A new ``TrainConfig`` with no ``None`` left (``val_steps``: ``None`` = the whole val
        split) and ``output_dir`` set.

    Raises:
        ValueError: a field out of range, naming the flag and the value received.
    """
    arch.check_variant(config.variant)
    check_choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
    check_choice("mixed_precision", config.mixed_precision, MIXED_PRECISION)
    check_choice("jit_compile", config.jit_compile, JIT_COMPILE)
    check_choice("distribute", config.distribute, DISTRIBUTE_MODES)
    check_choice("preprocessing", config.preprocessing, ("auto",) + PREPROCESSING_MODES)
    check_choice("fc6_implementation", config.fc6_implementation, FC6_IMPLEMENTATIONS)
    if config.geometry is not None:
        arch.get_geometry(config.geometry)
    if config.at_once and config.variant == "32s":
        raise ValueError("at_once needs variant '16s' or '8s' (it scales the skip inputs). Received: variant='32s'")
    profile = DEMO_PROFILE if not config.data else PAPER_PROFILE
    values = dataclasses.asdict(config)
    for key, value in profile.items():
        if values.get(key) is None:
            values[key] = value
    check_choice("optimizer", values["optimizer"], OPTIMIZERS)  # A profile's or the flag's: the rate depends on it.
    if values["learning_rate"] is None:
        if values["optimizer"] != "sgd":
            # The paper's rates convert to a mean loss for SGD, whose step is linear in the
            # gradient; Adam's step is about learning_rate per weight whatever the loss's scale,
            # so 1.7e-9 (FCN-8s) would leave the weights as they are.
            raise ValueError(
                f"learning_rate has no automatic value for optimizer={values['optimizer']!r}: the paper-equivalent "
                f"rates ({paper_learning_rate(config.variant, config.at_once):.3g} for FCN-{config.variant}) are SGD's. "
                "Pass --learning_rate (e.g. 1e-4, docs/training.md), or use --optimizer=sgd"
            )
        values["learning_rate"] = paper_learning_rate(config.variant, config.at_once)
    values["num_classes"] = _num_classes(config)
    if values["weights"] == "auto":
        values["weights"] = "none" if (not config.data or config.init_from) else "imagenet"
    if not values["output_dir"]:
        values["output_dir"] = str(Path("runs") / f"fcn{config.variant}{'_at_once' if config.at_once else ''}")
    resolved = TrainConfig(**values)
    for name in ("epochs", "steps_per_epoch", "batch_size", "fc_units", "num_classes"):
        check_int(name, getattr(resolved, name), 2 if name == "num_classes" else 1)
    stride = arch.output_stride(resolved.variant)
    if not isinstance(resolved.crop_size, int) or resolved.crop_size < 0:
        raise ValueError(f"crop_size must be 0 (whole images) or a positive integer. Received: crop_size={resolved.crop_size!r}")
    if 0 < resolved.crop_size < 32 or (resolved.crop_size and resolved.crop_size % stride):
        # The trunk has stride 32 (pool5) whatever the variant; a crop must hold at least one
        # pool5 cell and a whole number of cells of the finest fused map.
        raise ValueError(
            f"crop_size must be 0 (whole images) or a multiple of the network stride {stride} of FCN-{resolved.variant} "
            f"and at least 32 (pool5). Received: crop_size={resolved.crop_size}"
        )
    accumulate = check_int("gradient_accumulation_steps", resolved.gradient_accumulation_steps, 1,
                           "1: an update every batch")
    if resolved.steps_per_epoch % accumulate:
        # Every epoch then ends on an update: its checkpoints, a time-budget stop and the next
        # stage's --init_from never hold or drop half-accumulated gradients.
        raise ValueError(
            f"steps_per_epoch must be a multiple of gradient_accumulation_steps, so that every epoch ends on an update. "
            f"Received: steps_per_epoch={resolved.steps_per_epoch}, gradient_accumulation_steps={accumulate}"
        )
    if accumulate > 1 and resolved.distribute != "none" and keras.backend.backend() == "tensorflow":
        raise ValueError(
            "gradient_accumulation_steps > 1 cannot run under tf.distribute (--distribute with the TensorFlow backend): "
            "Keras' accumulation branches on the step inside the replica function, which MirroredStrategy refuses "
            "(keras-team/keras#20582). Use KERAS_BACKEND=jax (keras.distribution), or a larger --batch_size. "
            f"Received: gradient_accumulation_steps={accumulate}, distribute={resolved.distribute!r}"
        )
    if resolved.crop_size == 0 and resolved.batch_size != 1:
        raise ValueError(
            "batch_size must be 1 with whole images (crop_size=0, the paper's setup); pass crop_size to "
            f"train on batches. Received: batch_size={resolved.batch_size}, crop_size=0"
        )
    if not resolved.learning_rate > 0 or not math.isfinite(resolved.learning_rate):
        raise ValueError(f"learning_rate must be a positive number. Received: learning_rate={resolved.learning_rate!r}")
    if resolved.class_weights not in ("none", "median_frequency"):
        from fcn_keras.losses import check_class_weights

        check_class_weights(_listed_weights(resolved.class_weights), resolved.num_classes)
    if not 0.0 <= resolved.momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1). Received: momentum={resolved.momentum!r}")
    if not resolved.weight_decay >= 0 or not math.isfinite(resolved.weight_decay):
        raise ValueError(f"weight_decay must be a number >= 0. Received: weight_decay={resolved.weight_decay!r}")
    if resolved.val_steps is not None:
        check_int("val_steps", resolved.val_steps, 0, "0: no validation")
    if resolved.val_canvas:
        parse_size(resolved.val_canvas, "val_canvas")
    if resolved.val_batch_size is not None:
        check_int("val_batch_size", resolved.val_batch_size, 1)
    if not resolved.max_train_seconds >= 0 or not math.isfinite(resolved.max_train_seconds):
        raise ValueError(f"max_train_seconds must be >= 0 (0: no limit). Received: max_train_seconds={resolved.max_train_seconds!r}")
    check_int("backup_freq", resolved.backup_freq, 0, "steps; 0: backups at epoch ends only")
    check_int("checkpoint_freq", resolved.checkpoint_freq, 1, "epochs")
    check_int("shuffle_buffer", resolved.shuffle_buffer, 0, "records; 0 or 1: none")
    if check_int("seed", resolved.seed, 0) > _MAX_SEED:  # numpy's limit (keras.utils.set_random_seed)
        raise ValueError(f"seed must be an integer in [0, {_MAX_SEED}]. Received: seed={resolved.seed!r}")
    check_choice("verbose", resolved.verbose, (0, 1, 2))
    if resolved.init_from and resolved.weights != "none":
        raise ValueError(f"weights applies only without init_from, whose model gives every weight: leave --weights out. "
                         f"Received: weights={resolved.weights!r}, init_from={resolved.init_from!r}")
    init_from = Path(resolved.init_from).resolve() if resolved.init_from else None
    if init_from is not None and Path(resolved.output_dir).resolve() in (init_from, *init_from.parents):
        # A new run clears best.keras/last.keras of its folder: the model it starts from would go first
        # (init_from may name the run folder itself: its best.keras).
        raise ValueError(f"init_from must lie outside output_dir, which the run replaces the models of: give the next "
                         f"stage its own --output_dir. Received: init_from={resolved.init_from!r}, "
                         f"output_dir={resolved.output_dir!r}")
    check_writable_folder("output_dir", resolved.output_dir)
    # Imported here, as every data module in this file: they import TensorFlow, which those who
    # import train without it (benchmarks/train_step.py on the GPU machine) do not have.
    from fcn_keras.data.voc import is_voc_root

    if not resolved.data or is_voc_root(resolved.data):  # Generated or converted into cache_dir.
        check_writable_folder("cache_dir", resolved.cache_dir)
    return resolved


#: The largest ``--seed``: numpy's seeds are 32-bit.
_MAX_SEED = 2**32 - 1


#: Fields that must not change when a run resumes from its backup.
_RESUME_KEYS = (
    "variant", "data", "train_split", "init_from", "num_classes", "class_weights", "steps_per_epoch", "batch_size",
    "gradient_accumulation_steps", "crop_size", "shuffle_buffer", "optimizer", "lr_schedule", "mixed_precision", "seed",
    "at_once", "geometry", "fc_units", "distribute", "deterministic", "preprocessing", "fc6_implementation",
    "learn_skip_upsampling",
)  # fmt: skip

#: What a run recorded before a field existed did, where that differs from today's default:
#: fc6 was a ``Conv2D`` (its backup's weights file is keyed by that class). Runs recorded before
#: ``shuffle_buffer`` compare as the default, 2,048 (the buffer since commit bf55f1b; earlier
#: ones had 256 and resume with 2,048 records in the buffer, as they did before the flag).
_LEGACY_VALUES = {"fc6_implementation": "conv"}


def _resume_value(key: str, value: Any) -> Any:
    """A config value as a resume compares it: paths (``data``, ``init_from``) made absolute
    from the current folder, so ``voc``, ``./voc/`` and ``/abs/voc`` name the same data; listed
    ``class_weights`` as the numbers they list (``1,2`` and ``1.0, 2`` are the same weights)."""
    if key in ("data", "init_from") and value:
        return os.path.abspath(os.path.expanduser(value))
    if key == "class_weights" and value not in (None, "none", "median_frequency"):
        try:
            return _listed_weights(value)
        except ValueError:
            return value
    return value


# --- The optimizer ------------------------------------------------------------------------------


def make_optimizer(config: TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """The optimizer and learning-rate schedule of a resolved config.

    ``sgd``: ``CaffeSGD`` (momentum, coupled L2 on kernels, biases x2). ``adam``: Adam with
    Keras' decoupled weight decay (AdamW) of ``weight_decay``. ``poly``: ``lr (1 - t/T)^0.9``,
    ``t`` and ``T = total_steps`` in batches. With ``gradient_accumulation_steps`` N > 1, the
    update every N batches applies the mean of their gradients (Caffe's ``iter_size``).
    """
    accumulate = config.gradient_accumulation_steps if config.gradient_accumulation_steps > 1 else None
    learning_rate: Any = config.learning_rate
    if config.lr_schedule == "poly":
        learning_rate = keras.optimizers.schedules.PolynomialDecay(
            config.learning_rate, decay_steps=max(total_steps, 1), end_learning_rate=0.0, power=0.9
        )
    if config.optimizer == "sgd":
        return CaffeSGD(learning_rate, momentum=config.momentum, l2=config.weight_decay,
                        gradient_accumulation_steps=accumulate)
    return keras.optimizers.Adam(learning_rate, weight_decay=config.weight_decay or None,
                                 gradient_accumulation_steps=accumulate)


# --- Data -------------------------------------------------------------------------------------


def _demo_data(cache_dir: Path) -> str:
    """Generates (once) the synthetic demo dataset and returns its VOCdevkit root."""
    from fcn_keras.data.synthetic import make_synthetic_voc
    from fcn_keras.data.voc import voc_lists_dir

    tag = hashlib.sha256(json.dumps(DEMO_DATA, sort_keys=True).encode()).hexdigest()[:10]
    root = cache_dir / f"synthetic-{tag}" / "VOCdevkit"
    if not (voc_lists_dir(root) / "val.txt").is_file():
        tmp = root.with_name(f".tmp-{os.getpid()}-VOCdevkit")
        shutil.rmtree(tmp, ignore_errors=True)
        make_synthetic_voc(tmp, **DEMO_DATA)
        if root.exists():  # Another process finished first: same content.
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, root)
        logger.info("wrote the synthetic demo dataset to %s (%s)", root, DEMO_DATA)
    return str(root)


def resolve_run_data(config: TrainConfig) -> dict[str, str]:
    """The TFRecord globs of the run's ``{"train": ..., "val": ...}`` for ``config.data`` (``""``:
    the synthetic demo dataset): its ``train_split`` and ``val_split`` (a TFRecord glob is all
    training data; no ``"val"`` when the data has no ``val_split``).

    Raises:
        ValueError: naming ``--data``: bad data, no ``train_split``, or no ``val_split`` when
            one other than ``"val"`` was asked for.
    """
    from fcn_keras.data.pipeline import conversion_dir, resolve_data
    from fcn_keras.data.voc import voc_lists_dir

    data = config.data or _demo_data(Path(config.cache_dir))
    try:
        globs = resolve_data(data, conversion_dir(data, config.cache_dir), splits=(config.train_split, config.val_split))
    except ValueError as error:
        raise ValueError(f"--data: {error}") from error
    if not Path(data).is_dir():
        return globs  # A glob: {"train": data}.
    wanted = {"train": config.train_split, **({"val": config.val_split} if config.val_split != "val" else {})}
    for role, split in wanted.items():
        if split not in globs:
            lists = voc_lists_dir(data)  # A VOCdevkit root: all its lists, not the converted.
            present = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else sorted(globs)
            raise ValueError(f"--data {data!r} has no split {split!r} to {'train on' if role == 'train' else 'validate on'}; "
                             f"it has {present}: pass --{role}_split")
    return {"train": globs[config.train_split], **({"val": globs[config.val_split]} if config.val_split in globs else {})}


def rebuilt_per_iterator(make_dataset: Callable[[], Any]) -> Any:
    """A ``tf.data.Dataset`` that runs ``make_dataset()`` anew for every iterator made from it.

    The training pipeline reshuffles (``shuffle(..., seed, reshuffle_each_iteration=True)``)
    from a seed generator owned by the dataset object, which advances at every new iterator
    and at every pass of ``repeat``: a second iterator of the same object yields another
    order, which also depends on how far the first one read ahead. Keras' JAX trainer (and
    the TensorFlow one under tf.distribute) pulls one batch from a first iterator to build the
    model before training on a second one, so its stream was neither the pipeline's stream
    nor that of a resumed run (which skipped into its first iterator). Built inside the
    ``flat_map`` function, each iterator gets its own seed generator: every iterator, and
    every backend, sees the same stream, and ``skip(n)`` continues it exactly.

    Args:
        make_dataset: builds the (infinite, batched) training dataset.

    Returns:
        A ``tf.data.Dataset`` with the elements and options of ``make_dataset()``.
    """
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert  # plain Python building a pipeline
    def build(_):
        return make_dataset()

    dataset = tf.data.Dataset.from_tensors(0).flat_map(build)
    # tf.data applies the options of the outermost dataset: those of an (unused) eager build.
    return dataset.with_options(make_dataset().options())


def _split_entry(pattern: str) -> dict[str, Any] | None:
    """The converter's manifest entry of the split whose glob ``pattern`` is, if any."""
    from fcn_keras.data import convert as convert_lib

    folder = Path(pattern).parent
    manifest = convert_lib.read_manifest(folder)
    if manifest is not None:
        for entry in manifest.get("splits", {}).values():
            if str(folder / entry.get("glob", "")) == pattern:
                return entry
    return None


def count_examples(pattern: str) -> int:
    """Number of records matching a TFRecord glob: from the converter's manifest.json when the
    glob is one of its splits, else by reading the files."""
    import tensorflow as tf

    entry = _split_entry(pattern)
    if entry is not None:
        return int(entry["num_examples"])
    files = tf.io.gfile.glob(pattern)
    return int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1))


def _validation_batching(
    config: TrainConfig, distribution: Distribution, val_glob: str | None
) -> tuple[int, tuple[int, int] | None]:
    """The validation's global batch size (``val_batch_size``, else one image per replica) and
    canvas (``val_canvas`` as ``(height, width)``, else None).

    Raises:
        ValueError: the batch is not a multiple of the replicas, or an image that the validation
            reads is larger than the canvas (naming it: checked now, not when fit reaches it).
    """
    from fcn_keras.data.pipeline import oversized_images

    replicas = distribution.num_replicas
    batch = config.val_batch_size or replicas
    if batch % replicas:
        raise ValueError(f"val_batch_size must be a multiple of the {replicas} replicas (each validates an equal share). "
                         f"Received: val_batch_size={batch}")
    if not config.val_canvas:
        return batch, None
    canvas = parse_size(config.val_canvas, "val_canvas")
    oversized = oversized_images(val_glob, canvas, config.val_steps or None) if val_glob else []
    if oversized:
        image_id, height, width = oversized[0]
        raise ValueError(
            f"val_canvas must hold every validation image; {len(oversized)} are larger than {canvas[0]}x{canvas[1]} "
            f"(height x width), e.g. {image_id!r} ({height}x{width}): pass a larger one (500 holds every PASCAL VOC "
            f"image), or none. Received: val_canvas={config.val_canvas!r}"
        )
    return batch, canvas


def class_weights_of(config: TrainConfig, train_glob: str) -> list[float] | None:
    """The loss's class weights for a resolved config's ``class_weights``.

    Returns:
        ``None`` for ``"none"``; the listed weights; or ``median_frequency_weights`` of the
        training split's class pixel counts (the converter's manifest: over the images holding
        each class, or over the whole split for a manifest from before those were counted).

    Raises:
        ValueError: ``median_frequency`` on records whose manifest has no pixel counts.
    """
    from fcn_keras.losses import median_frequency_weights

    if config.class_weights == "none":
        return None
    if config.class_weights != "median_frequency":
        return _listed_weights(config.class_weights)
    entry = _split_entry(train_glob)
    if entry is None or "class_pixels" not in entry:
        raise ValueError(
            "class_weights=median_frequency needs the class pixel counts that fcn_keras.data.convert records in "
            f"manifest.json, and the training records {train_glob} have none: convert the data (again) or list "
            "the weights"
        )
    if "class_image_pixels" not in entry:
        logger.warning("the manifest of %s predates the per-image class counts: median frequencies over the whole "
                       "split, not over the images holding each class (Eigen & Fergus); convert the data again for "
                       "those", train_glob)
    return median_frequency_weights(entry["class_pixels"], entry.get("class_image_pixels"))


def _listed_weights(value: str) -> list[float]:
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise ValueError(
            f"class_weights must be none, median_frequency or one number per class, comma-separated. Received: class_weights={value!r}"
        ) from None


# --- Model ------------------------------------------------------------------------------------


def _resume_build_config(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """The config to build a resumed run's model with: no initial weights (the backup's replace
    them) and the input normalisation recorded at the run's start (``preprocessing_mode`` in
    config.json; for runs recorded before it, resolved from the recorded weights), so that a
    changed ``--weights`` cannot change it. With ``init_from`` (which must not change) as asked."""
    if config.init_from:
        return config
    mode = json.loads((run_dir / "config.json").read_text()).get("preprocessing_mode")
    if mode is None:  # Recorded before preprocessing_mode: from the weights the run started with.
        first = recorded_config(run_dir)
        try:
            mode = resolve_preprocessing(None if first["weights"] == "none" else first["weights"], first["preprocessing"])
        except (OSError, ValueError):  # The recorded file is gone: the flags' mode, as before.
            return config
    return dataclasses.replace(config, weights="none", preprocessing=mode)


def load_init_model(init_from: str) -> tuple[keras.Model, Path]:
    """The trained FCN of ``--init_from``: a ``.keras`` file, or a run directory (its
    ``best.keras``, else ``last.keras``)."""
    from fcn_keras.io import load_fcn, resolve_model_file

    try:
        path = resolve_model_file(init_from)
        return load_fcn(path), path
    except (FileNotFoundError, ValueError) as error:
        # The reason names the file (or folder) already.
        raise ValueError(f"init_from must be a trained FCN (.keras file or run folder): {error}") from error


def build_model(config: TrainConfig) -> tuple[keras.Model, dict[str, Any]]:
    """Builds the FCN of a resolved config, initialised from ``init_from`` or ``weights``.

    Returns:
        ``(model, init_report)``; the report says where the weights came from.

    Raises:
        ValueError: ``init_from`` is not an FCN of a compatible variant (same or finer stride
            than the source), geometry, number of classes or fc width; bad ``weights``.
        WeightsDownloadError: ``weights='imagenet'`` and the download failed.
    """
    from fcn_keras import build_fcn, transfer_weights

    common = dict(at_once=config.at_once, fc_units=config.fc_units, geometry=config.geometry,
                  fc6_implementation=config.fc6_implementation, learn_skip_upsampling=config.learn_skip_upsampling)
    if config.init_from:
        source, path = load_init_model(config.init_from)
        names = {layer.name for layer in source.layers}
        source_variant = arch.variant_of(names)
        if source_variant is None:
            raise ValueError(f"init_from {str(path)!r} is not an FCN of fcn_keras.build_fcn: it has no score_fr layer")
        problems = []
        if arch.output_stride(source_variant) < arch.output_stride(config.variant):
            problems.append(f"it is an FCN-{source_variant}, finer than the FCN-{config.variant} to train (32s -> 16s -> 8s)")
        if source.outputs[0].shape[-1] != config.num_classes:
            problems.append(f"it has {source.outputs[0].shape[-1]} classes, not num_classes={config.num_classes}")
        source_geometry = arch.geometry_of(names)
        if source_geometry != config.geometry:
            problems.append(f"its geometry is {source_geometry!r}, not geometry={config.geometry!r}")
        scaled = [arch.scale_name(block) for block in arch.SKIPS[source_variant] if arch.scale_name(block) in names]
        if scaled and not config.at_once:
            problems.append(f"it was trained at once (its {', '.join(scaled)} scale the pools), not at_once=False")
        elif config.at_once and arch.SKIPS[source_variant] and not scaled:
            problems.append("it was trained in stages (its skips are not scaled), not at_once=True")
        if source.get_layer("fc7").filters != config.fc_units:
            problems.append(f"its fc6/fc7 have {source.get_layer('fc7').filters} units, not fc_units={config.fc_units}")
        mode = source.get_layer("preprocess").mode
        if config.preprocessing not in ("auto", mode):
            problems.append(f"it normalises its input as {mode!r}, not preprocessing={config.preprocessing!r}")
        if problems:
            raise ValueError(f"init_from {str(path)!r} is not compatible: {'; '.join(problems)}")
        model = build_fcn(config.variant, config.num_classes, preprocessing=mode, **common)
        report = transfer_weights(source, model)
        logger.info("initialised FCN-%s from FCN-%s %s (new layers: %s)", config.variant, source_variant, path, report["kept"] or "none")
        return model, {"init_from": str(path), "source_variant": source_variant, **report}
    weights = None if config.weights == "none" else config.weights
    try:
        model = build_fcn(config.variant, config.num_classes, weights=weights, preprocessing=config.preprocessing, **common)
    except Exception as error:
        if config.weights == "imagenet" and not isinstance(error, ValueError):
            raise WeightsDownloadError(
                "weights='imagenet' downloads keras.applications' VGG16 and failed "
                f"({type(error).__name__}: {error}). Offline, pass --weights=PATH to a Keras VGG16 weights "
                "file (e.g. ../shared/weights/vgg16_imagenet_notop_torchvision.weights.h5) or --weights=none"
            ) from error
        raise
    logger.info("FCN-%s backbone weights: %s", config.variant, config.weights)
    return model, {"weights": config.weights}


# --- Run metadata -----------------------------------------------------------------------------


def git_commit(short: bool = False, untracked: bool = True) -> str | None:
    """The ``FCN_KERAS_COMMIT`` environment variable if set (whoever runs a copy of the tree names
    its commit: the GPU machine's copy carries the ``.git`` of the session's start, which names an
    older commit once the session has committed), else the repository's commit (``-dirty`` with
    local changes), else None (an installed package: no ``.git``).

    Args:
        short: the abbreviated hash (``git rev-parse --short``).
        untracked: whether untracked files make the checkout ``-dirty`` (the benchmarks leave them
            out: their own result files are untracked while they run).
    """
    if os.environ.get("FCN_KERAS_COMMIT"):
        return os.environ["FCN_KERAS_COMMIT"]
    if not (REPO_ROOT / ".git").exists():  # Not a checkout: site-packages.
        return None
    try:
        out = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", *([] if untracked else ["--untracked-files=no"])],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(distribution: Distribution) -> dict[str, Any]:
    """Versions, backend, devices and git commit, for ``config.json``."""
    import tensorflow as tf

    from fcn_keras import __version__

    versions = {"fcn_keras": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
                "keras": keras.__version__, "numpy": np.__version__}
    try:
        import jax

        versions["jax"] = jax.__version__
    except ImportError:
        versions["jax"] = None
    return {
        "versions": versions,
        "backend": keras.backend.backend(),
        "distribution": distribution.describe(),
        "host": platform.node(),
        "argv": sys.argv,
        "git_commit": git_commit(),
    }


def _workers_backup(output_dir: Path, distribution: Distribution, own: Path) -> dict | None:
    """The state a worker of a multi-worker run resumes from: the one all workers agree on
    (``callbacks.agreed_backup``), where this process sees every worker's folder (a shared
    ``output_dir``); else its own."""
    workers = output_dir / "workers"
    others = sorted(p / "backup" for p in workers.iterdir() if p.is_dir()) if workers.is_dir() else []
    folders = [output_dir / "backup", *others]
    if len(folders) != distribution.num_workers or own not in folders:
        logger.debug("not every worker's backup is visible here (%d of %d): each worker resumes its own", len(folders),
                     distribution.num_workers)
        return cb.read_backup(own)
    return cb.agreed_backup(folders, own)


def recorded_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``TrainConfig`` fields a run recorded in its ``config.json``; a field newer than the
    run (absent from the file) has its default value, or what such runs did where the default
    has changed since (``_LEGACY_VALUES``), so old runs compare as they ran."""
    recorded = json.loads((Path(run_dir) / "config.json").read_text())["config"]
    return {**{field.name: field.default for field in dataclasses.fields(TrainConfig)}, **_LEGACY_VALUES, **recorded}


def cpu_bf16_warning(config: TrainConfig, devices: list[str]) -> str | None:
    """The warning for bf16 training on a CPU under TensorFlow where its oneDNN convolution
    gradient is wrong: fc6's 7x7 'same' kernel on a pool5 of 1-2 pixels (crops up to 64 px;
    ``benchmarks/bf16_conv_grad.py``, docs/training.md "Mixed precision on a CPU").

    Args:
        config: the resolved run configuration.
        devices: the distribution's device names (``Distribution.devices``).

    Returns:
        The warning text, or ``None`` when the run is not affected.
    """
    pool5 = math.ceil(config.crop_size / 32)
    affected = (keras.backend.backend() == "tensorflow" and config.mixed_precision == "bf16" and config.geometry == "same"
                and 0 < pool5 <= 2 and not any("GPU" in d.upper() for d in devices))
    if not affected:
        return None
    return (f"--mixed_precision=bf16 on a CPU with --crop_size={config.crop_size}: pool5 is {pool5}x{pool5}, where "
            "TensorFlow's oneDNN bf16 gradient of fc6's 7x7 kernel is wrong (36-72% error, sometimes NaN; see "
            "docs/training.md, 'Mixed precision on a CPU'); use float32 on a CPU, or crops of 96 px or more")


def _too_few_epochs(run_dir: Path, where: str, needed: int, epochs: int) -> ValueError:
    """The refusal of an ``--epochs`` below those a backed-up run in ``run_dir`` has done."""
    return ValueError(f"output_dir {str(run_dir)!r} holds a run {where}: --epochs must be at least {needed} to resume "
                      f"it. Received: --epochs={epochs}")


def _truncate_csv(path: Path, epochs_done: int) -> None:
    """Keeps the header and the rows of the first ``epochs_done`` epochs of a CSV log (rows
    written after the backup a run resumes from are done again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    # A row cut short by a kill, run into the next, or garbled (its epoch not a number) is dropped
    # with the rows to be done again, and counted.
    header, body = rows[0], list(enumerate(rows[1:], start=2))
    damaged = [line for line, row in body if row and (len(row) != len(header) or not row[0].isdigit())]
    kept = [header] + [row for line, row in body if row and line not in damaged and int(row[0]) < epochs_done]
    if damaged:
        logger.warning("%s: dropped %s cut short, run together or garbled (line %s)", path,
                       counted(len(damaged), "damaged row"), ", ".join(map(str, damaged)))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)


# --- Training ---------------------------------------------------------------------------------


def train(config: TrainConfig) -> dict[str, Any]:
    """Trains an FCN and writes the run's artefacts into ``config.output_dir``.

    If ``output_dir/backup`` holds a state of the same run, training resumes from it (same
    epoch and step, optimizer state, dropout RNG, epoch metrics, input stream position;
    bit-exact under TensorFlow and JAX, see docs/training.md "Resume").

    Args:
        config: the run (``None`` fields are resolved by ``resolve_config``).

    Returns:
        The summary (also ``output_dir/summary.json``): ``status``, ``epochs_done``,
        ``global_step`` (batches), ``optimizer_updates``, ``best`` (monitor, value, epoch),
        ``final_metrics``, ``wall_time_s``, ``images_seen``, ``images_per_s``, ``history``,
        ``resumed_from``, ``num_replicas``.

    Raises:
        ValueError: bad configuration, data or ``init_from``, naming the flag.
        WeightsDownloadError: ``weights='imagenet'`` could not be downloaded (exit status 1).
        TrainingDiverged: the loss, or a weight at an epoch end, became NaN/inf
            (``summary.json`` says so; ``best.keras`` and ``last.keras`` hold the last good
            weights).
    """
    config = resolve_config(config)
    # Strategies must exist before TensorFlow / JAX run anything.
    distribution = setup_distribution(config.distribute)
    if config.batch_size % distribution.num_replicas:
        raise ValueError(
            f"batch_size must be a multiple of the {distribution.num_replicas} replicas of distribute={config.distribute!r}. "
            f"Received: batch_size={config.batch_size}"
        )
    run_dir = Path(config.output_dir)
    if not distribution.is_chief:  # Non-chief workers keep their files apart.
        run_dir = run_dir / "workers" / str(distribution.worker_index)
    backup_dir = run_dir / "backup"
    for folder in (run_dir, backup_dir):  # A killed write's temporary file (a backup: 1.6 GB) is no state.
        removed = remove_orphaned_temporaries(folder)
        if removed:
            logger.warning("removed %d temporary file(s) that a stopped process left in %s: %s", len(removed), folder,
                           ", ".join(path.name for path in removed))
    if distribution.num_workers > 1:
        state = _workers_backup(Path(config.output_dir), distribution, backup_dir)
    else:
        state = cb.read_backup(backup_dir)
    requested = dataclasses.asdict(config)
    if state is not None:
        previous = recorded_config(run_dir)
        changed = {k: (previous.get(k), requested[k]) for k in _RESUME_KEYS
                   if _resume_value(k, previous.get(k)) != _resume_value(k, requested[k])}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"output_dir {str(run_dir)!r} holds the backup of a different run ({details}); resume it with the same "
                "flags, or use another --output_dir"
            )
        if config.optimizer == "sgd" and (previous.get("momentum") == 0) != (config.momentum == 0):
            # Keras' SGD has momentum variables only for a non-zero momentum: the backup's
            # optimizer state would not fit (Keras skips it with a warning, iterations included).
            raise ValueError(
                f"output_dir {str(run_dir)!r} holds an SGD run with momentum {previous.get('momentum')!r}: --momentum "
                "may change on resume, but not to or from 0 (SGD keeps momentum variables only when it is not 0, so "
                f"the backup's optimizer state would not fit). Received: --momentum={config.momentum!r}"
            )
        if state["step"] and config.epochs <= state["epoch"]:
            raise _too_few_epochs(run_dir, f"interrupted in epoch {state['epoch'] + 1} (step {state['step']}/"
                                           f"{config.steps_per_epoch})", state["epoch"] + 1, config.epochs)
        unused = ", ".join(f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in requested.items()
                           if k not in _RESUME_KEYS and k != "output_dir" and previous.get(k) != v)
        unused = f" (not applied: {unused})" if unused else ""
        if state["epoch"] >= config.epochs and (run_dir / "summary.json").is_file():
            logger.info("%s already holds a finished run of %d epochs: nothing to do%s; raise --epochs to continue it",
                        run_dir, state["epoch"], unused)
            return json.loads((run_dir / "summary.json").read_text())
        spent = float(state.get("elapsed_s", 0.0))
        if config.max_train_seconds and spent >= config.max_train_seconds and not state["step"] and (run_dir / "summary.json").is_file():
            logger.info("%s already spent its time budget (%.1f s of %.1f s, %d epochs): nothing to do%s", run_dir, spent,
                        config.max_train_seconds, state["epoch"], unused)
            return json.loads((run_dir / "summary.json").read_text())
        if not state["step"] and config.epochs < state["epoch"]:  # Stopped at an epoch end, before its summary.
            raise _too_few_epochs(run_dir, f"stopped after epoch {state['epoch']}", state["epoch"], config.epochs)

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(MIXED_PRECISION[config.mixed_precision])
    try:
        with releasing_train_graphs():
            return _train(config, distribution, run_dir, state)
    finally:
        keras.config.set_dtype_policy(policy)


def _train(config: TrainConfig, distribution: Distribution, run_dir: Path, state: dict[str, Any] | None) -> dict[str, Any]:
    from fcn_keras.data.pipeline import eval_dataset, train_dataset
    from fcn_keras.losses import SegmentationCrossEntropy
    from fcn_keras.metrics import ConfusionMatrix

    keras.utils.set_random_seed(config.seed)
    globs = resolve_run_data(config)
    val_glob = globs.get("val") if config.val_steps != 0 else None
    monitor = "val_mean_iu" if val_glob else "mean_iu"
    val_batch, val_canvas = _validation_batching(config, distribution, val_glob)
    num_train = count_examples(globs["train"])
    if not num_train:
        raise ValueError(f"--data: the training data {globs['train']} holds no image")
    class_weights = class_weights_of(config, globs["train"])

    # --- Model ---
    with distribution.scope():
        # On resume the backup replaces every weight: the model is built with the normalisation
        # the run was trained with, whatever --weights says now (another file could change it).
        model, init_report = build_model(config if state is None else _resume_build_config(config, run_dir))
        total_steps = config.epochs * config.steps_per_epoch
        model.compile(
            optimizer=make_optimizer(config, total_steps),
            loss=SegmentationCrossEntropy(ignore_label=IGNORE_LABEL, class_weights=class_weights),
            metrics=[ConfusionMatrix(config.num_classes, ignore_label=IGNORE_LABEL, name="mean_iu")],
            jit_compile=JIT_COMPILE[config.jit_compile],
        )
        adapt_model(model, distribution)
        epoch, step = 0, 0
        if state is not None:
            cb.restore_backup(model, run_dir / "backup", state)
            if config.lr_schedule == "constant":  # The backup holds the old rate: use this run's.
                model.optimizer.learning_rate = config.learning_rate
            epoch, step = int(state["epoch"]), int(state["step"])
            logger.info("resuming %s from its backup: epoch %d, step %d/%d (global step %d)",
                        run_dir, epoch + 1, step, config.steps_per_epoch, state["global_step"])

    # --- Artefacts: config.json (fresh runs), truncated log on resume ---
    run_dir.mkdir(parents=True, exist_ok=True)  # Only now: bad data, weights or init_from leave no folder.
    if state is None:  # A new run: nothing of an earlier run in this folder may pass for its own.
        for stale in ("log.csv", "summary.json", "best.keras", "last.keras"):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        write_json_atomic(
            run_dir / "config.json",
            {
                "config": dataclasses.asdict(config),
                "data": {**globs, "num_train_examples": num_train},
                "class_names": _class_names(config),
                "class_weights": class_weights,
                "monitor": monitor,
                "preprocessing_mode": model.get_layer("preprocess").mode,
                "init": init_report,
                "num_parameters": model.count_params(),
                "paper_learning_rate": paper_learning_rate(config.variant, config.at_once),
                **environment(distribution),
            },
        )
    else:
        _truncate_csv(run_dir / "log.csv", epoch)
        cb.truncate_tensorboard(run_dir / "tensorboard", epoch)
        # The summary of an earlier process's end (a budget stop, a divergence) is not this run's:
        # if this process dies before writing its own, a rerun must not take that one as final.
        (run_dir / "summary.json").unlink(missing_ok=True)
        # config.json describes the run as it continues now, and keeps a record of each resume.
        record = json.loads((run_dir / "config.json").read_text())
        changed = {k: [record["config"].get(k), v] for k, v in dataclasses.asdict(config).items() if record["config"].get(k) != v}
        record["config"] = dataclasses.asdict(config)
        record.setdefault("resumes", []).append(
            {"from": {k: state[k] for k in ("epoch", "step", "global_step")}, "changed": changed, "argv": sys.argv,
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        )
        write_json_atomic(run_dir / "config.json", record)
    logger.info("run %s: FCN-%s%s, %d training images, monitor %s, config %s", run_dir, config.variant,
                " at-once" if config.at_once else "", num_train, monitor, json.dumps(dataclasses.asdict(config)))
    if keras.backend.backend() == "jax" and config.crop_size == 0:
        logger.warning("whole images of varying sizes under JAX recompile the step for every new size; use --crop_size")
    warning = cpu_bf16_warning(config, distribution.devices)
    if warning:
        logger.warning(warning)

    # --- Input pipelines ---
    def training_data(skip_batches: int):
        def make_dataset():
            dataset = train_dataset(
                globs["train"],
                batch_size=config.batch_size,
                crop_size=config.crop_size or None,
                scale_range=TRAIN_SCALE_RANGE if config.crop_size else None,
                flip=bool(config.crop_size),
                shuffle_buffer=config.shuffle_buffer,
                seed=config.seed,
                deterministic=config.deterministic,
            )
            return dataset.skip(skip_batches) if skip_batches else dataset

        return prepare_dataset(rebuilt_per_iterator(make_dataset), distribution)

    validation = None
    if val_glob:
        import tensorflow as tf

        val_images = min(count_examples(val_glob), config.val_steps or math.inf)
        val_batches = math.ceil(val_images / val_batch)
        # On a canvas the last batch is filled with blank (void) images: one shape, one compilation.
        validation = eval_dataset(val_glob, batch_size=val_batch, canvas=val_canvas,
                                  fill_last_batch=val_canvas is not None).take(val_batches)
        # A known length: Keras then neither warns that the input "ran out of data" nor guesses.
        validation = prepare_dataset(validation.apply(tf.data.experimental.assert_cardinality(val_batches)), distribution)

    # --- Callbacks ---
    schedule = cb.CheckpointSchedule(config.checkpoint_freq, config.epochs)
    # best.keras is the best on one validation set: a resume that validates on another (another
    # --val_split or --val_steps, or none: the training mean IU) starts the best anew.
    basis = {"monitor": monitor, "val_split": config.val_split if val_glob else None,
             "val_steps": config.val_steps if val_glob else None}
    same_basis = state is not None and state.get("best_basis", basis) == basis  # Older backups: as before.
    if state is not None and not same_basis and state.get("best") is not None:
        logger.info("best.keras (%s %.4f, epoch %s) was judged on %s, this run judges on %s: the best starts anew",
                    state["best_basis"]["monitor"], state["best"], state.get("best_epoch"), state["best_basis"], basis)
    checkpoint = cb.BestAndLastCheckpoint(
        run_dir, monitor, best=state.get("best") if same_basis else None,
        best_epoch=state.get("best_epoch") if same_basis else None, schedule=schedule, basis=basis,
    )
    epoch_state = cb.read_backup(run_dir / "backup", cb.EPOCH_STATE_FILE) if state is not None else None
    if epoch_state is not None and epoch_state["epoch"] > 0:
        checkpoint.last_good_epoch = int(epoch_state["epoch"])  # last.keras is from that epoch's end
    backup = cb.ResumableBackup(
        run_dir / "backup",
        save_freq=config.backup_freq,
        steps_per_epoch=config.steps_per_epoch,
        batch_size=config.batch_size,
        start=state,
        best_tracker=checkpoint,
        restore_metrics=distribution.strategy is None,
        schedule=schedule,
    )
    summary_cb = cb.EpochSummary(config.epochs, config.batch_size)
    tensorboard = cb.ScalarTensorBoard(run_dir / "tensorboard")
    budget = cb.TimeBudget(config.max_train_seconds, lambda: backup.elapsed_s) if config.max_train_seconds else None
    # The progress bar first: its epoch line is finished before the one-line summary is logged.
    # The callbacks that stop training (NaN, budget) come before the checkpoint and the backup,
    # whose schedule then saves that epoch.
    verbose = progress_verbosity(config.verbose)  # The live bar only on a terminal: a line per epoch in a log.
    callbacks = [cb.RunProgbar(config.epochs)] if verbose else []
    callbacks += [
        keras.callbacks.TerminateOnNaN(),
        *([budget] if budget else []),
        summary_cb,
        checkpoint,
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
        tensorboard,
        backup,  # Last: a state says "epoch done" only once the epoch's files are written.
    ]

    # --- Fit: the rest of an interrupted epoch, then whole epochs ---
    start = time.perf_counter()
    global_step = epoch * config.steps_per_epoch + step
    try:
        if step:
            backup.begin_partial_epoch(step)
            model.fit(training_data(global_step), epochs=epoch + 1, initial_epoch=epoch,
                      steps_per_epoch=config.steps_per_epoch - step, validation_data=validation, callbacks=callbacks,
                      verbose=verbose, shuffle=False)
            epoch, global_step = epoch + 1, (epoch + 1) * config.steps_per_epoch
        if epoch < config.epochs and not backup.diverged and not model.stop_training:
            model.fit(training_data(global_step), epochs=config.epochs, initial_epoch=epoch,
                      steps_per_epoch=config.steps_per_epoch, validation_data=validation, callbacks=callbacks,
                      verbose=verbose, shuffle=False)
    except ValueError as error:
        # The flags, data and weights were checked above: a ValueError from inside fit (Keras'
        # own, e.g. a shape mismatch) is a failure while running, not bad input. As a
        # RuntimeError it reaches the user with its traceback (exit status 1), not as a one-line
        # "bad flag" error.
        raise RuntimeError(f"training {run_dir} failed inside model.fit: {error}") from error
    finally:
        tensorboard.on_train_end()  # Closes its event files also when fit raised (idempotent).
    seconds = time.perf_counter() - start

    # --- Summary ---
    diverged = backup.diverged
    final = (backup.roll_back_to_epoch_end() if diverged else cb.read_backup(run_dir / "backup")) or {}
    rows = _read_csv(run_dir / "log.csv")
    images_this_run = backup.images_this_process
    summary = {
        "status": "diverged" if diverged else "finished",
        "epochs_requested": config.epochs,
        "epochs_done": int(final.get("epoch", 0)),
        "stopped_by_time_budget": bool(budget and budget.stopped_after_epoch and budget.stopped_after_epoch < config.epochs),
        "global_step": backup.images // config.batch_size,  # batches trained (under fp16 some updates are skipped)
        "optimizer_updates": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        "best": {"monitor": monitor, "value": checkpoint.best, "epoch": checkpoint.best_epoch},
        "last_good_epoch": checkpoint.last_good_epoch,
        "final_metrics": {**rows[-1], "epoch": rows[-1]["epoch"] + 1} if rows else {},  # epochs from 1, as elsewhere
        "wall_time_s": backup.elapsed_s,
        "wall_time_this_process_s": seconds,
        "images_seen": backup.images,
        "images_per_s": images_this_run / seconds if seconds > 0 else None,
        "history": summary_cb.history,
        "resumed_from": None if state is None else {k: state[k] for k in ("epoch", "step", "global_step")},
        "num_replicas": distribution.num_replicas,
        "output_dir": str(run_dir),
    }
    write_json_atomic(run_dir / "summary.json", summary)
    if diverged:
        where = f"at epoch {summary_cb.history[-1]['epoch']}" if summary_cb.history else "in its first epoch"
        if summary["last_good_epoch"] is None:
            due = "" if config.checkpoint_freq == 1 else f" (with --checkpoint_freq={config.checkpoint_freq} the first is due at epoch {config.checkpoint_freq})"
            left = (f"no checkpoint had been written{due} and the backup held no epoch end to go back to, so it was "
                    "removed: rerun with a lower --learning_rate to start again.")
        else:
            left = (f"best.keras/last.keras hold the last good weights (epoch {summary['last_good_epoch']}) and the "
                    "backup was rolled back to the end of that epoch: rerun with a lower --learning_rate to continue "
                    "from there.")
        raise TrainingDiverged(
            f"training of {run_dir} stopped: {backup.divergence} became NaN/inf {where} "
            f"(learning_rate={config.learning_rate}); {left}"
        )
    logger.info("done: %s, best %s %.4f (epoch %s), %.1f s, %s img/s; artefacts in %s", counted(summary["epochs_done"], "epoch"), monitor,
                checkpoint.best if checkpoint.best is not None else float("nan"), checkpoint.best_epoch, summary["wall_time_s"],
                cb.format_rate(summary["images_per_s"]), run_dir)
    return summary


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``log.csv`` (epochs 0-based, values as floats, ``NA`` left out); a
    damaged row (another number of fields, a value not a number) is left out with a warning
    naming the file and line: the summary is written after the training it reports on."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            try:
                if None in row or None in row.values():
                    raise ValueError("another number of fields than the header")
                rows.append({k: (float(v) if k != "epoch" else int(v)) for k, v in row.items() if v not in ("", "NA")})
            except ValueError as error:
                logger.warning("%s line %d left out of the summary: %s", path, reader.line_num, error)
    return rows


# --- CLI --------------------------------------------------------------------------------------


def define_flags(flag_values=None) -> None:
    """Defines the CLI's absl flags, one per ``TrainConfig`` field, in ``flag_values``
    (default ``absl.flags.FLAGS``)."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    d = TrainConfig()

    def define(kind: str, *args) -> None:
        getattr(flags, f"DEFINE_{kind}")(*args, flag_values=flag_values)
    auto = "auto: {} on real data, {} for the synthetic demo"

    def both(key):
        return auto.format(PAPER_PROFILE.get(key, "the paper's"), DEMO_PROFILE.get(key))

    define("enum", "variant", d.variant, list(VARIANTS), "FCN variant: 32s, 16s or 8s (the stride of the finest skip).")
    define("string", "data", d.data, "Training data: a TFRecord glob (fcn_keras.data.convert shards), a converted folder "
                        "(manifest.json; its --train_split and --val_split), or a VOCdevkit root (converted once into "
                        "--cache_dir). Empty: generate and train on the embedded synthetic VOC-layout dataset (the quick start).")
    define("string", "train_split", d.train_split, "The split of a folder --data to train on (e.g. train_aug or sbd_train, "
                        "the paper's).")
    define("string", "val_split", d.val_split, "The split of a folder --data to validate on (e.g. seg11valid, the paper's); "
                        "none when the data has no 'val' split.")
    define("string", "init_from", d.init_from, "Staged training: a trained FCN (.keras file or run folder: its best.keras) of "
                        "the same or a coarser variant (16s from 32s, 8s from 16s), copied by layer name; new score layers "
                        "start at zero.")
    define("string", "weights", d.weights, "Backbone initialisation when not --init_from: imagenet (keras.applications "
                        "VGG16 with fc6/fc7, needs internet), none (random), or a Keras VGG16 weights file. auto: none for "
                        "the synthetic demo and with --init_from, imagenet on real data.")
    define("enum", "preprocessing", d.preprocessing, ["auto", *PREPROCESSING_MODES], "The input normalisation built into "
                      "the model, which must be the one the backbone weights were trained with: caffe (BGR, ImageNet mean "
                      "subtracted: keras.applications / the authors' Caffe VGG16) or torch (RGB / 255, mean/std: torchvision). "
                      "auto: caffe for imagenet and none, the known origin of a listed weights file (fcn_keras.backbone."
                      "KNOWN_WEIGHT_FILES), the source model's with --init_from; any other weights file needs it set.")
    define("integer", "num_classes", d.num_classes, "Number of classes. auto: the data's (the class names recorded by "
                      "fcn_keras.data.convert in manifest.json; 21 for PASCAL VOC and for records without a manifest).")
    define("string", "class_weights", d.class_weights, "Loss weight of each class's pixels: none (the paper's: all 1; it "
                     "found class balancing unnecessary on VOC), median_frequency (Eigen & Fergus' median frequency "
                     "balancing, from the training split's pixel counts in the converter's manifest.json; for "
                     "unbalanced data of your own), or one number per class, comma-separated. The loss is then the "
                     "weighted mean.")
    define("integer", "epochs", d.epochs, f"Epochs ({both('epochs')}).")
    define("integer", "steps_per_epoch", d.steps_per_epoch, f"Training steps (batches) per epoch ({both('steps_per_epoch')}).")
    define("float", "max_train_seconds", d.max_train_seconds, "Time budget: stop at the end of the first epoch by which this "
                       "many seconds of training (wall time, compilation and earlier resumed processes included) have passed; "
                       "the run then counts as finished with fewer epochs, and a rerun with the same budget does nothing. "
                       "0: no limit.")
    define("integer", "batch_size", d.batch_size, f"Global batch size, split over replicas ({both('batch_size')}).")
    define("integer", "gradient_accumulation_steps", d.gradient_accumulation_steps, "Update the weights every N batches "
                      "with the mean of their gradients (Caffe's iter_size): an N x batch_size minibatch in the memory of "
                      "one batch, e.g. the CVPR paper's 20 whole images a minibatch with --batch_size=1. --steps_per_epoch "
                      "counts batches and must be a multiple of N. 1: an update every batch.")
    define("integer", "crop_size", d.crop_size, "Square random crops (random scale "
                         f"{TRAIN_SCALE_RANGE[0]:g}-{TRAIN_SCALE_RANGE[1]:g} and flip; a multiple of the "
                         f"variant's stride, >= 32), or 0 for whole images with batch 1, the paper's setup ({both('crop_size')}).")
    define("integer", "shuffle_buffer", d.shuffle_buffer, "Training records in the input pipeline's shuffle buffer "
                      "(encoded images, ~91 KB each for VOC): lower it when host memory is short; 0 or 1: records in "
                      "shard order (the shards' order is still shuffled).")
    define("enum", "optimizer", d.optimizer, list(OPTIMIZERS), "sgd: the paper's SGD (momentum, L2 weight decay on kernels, "
                      f"biases at 2x lr); adam: Adam with decoupled weight decay ({both('optimizer')}).")
    define("float", "learning_rate", d.learning_rate, "Learning rate for the per-pixel mean loss. auto: the paper's unnormalised "
                       f"rate times {VOC_VALID_PIXELS_PER_IMAGE:.3g} valid pixels per VOC image (32s {paper_learning_rate('32s'):.3g}, "
                       f"16s {paper_learning_rate('16s'):.3g}, 8s {paper_learning_rate('8s'):.3g}, at-once "
                       f"{paper_learning_rate('8s', True):.3g}), for sgd only (adam needs a value); {DEMO_PROFILE['learning_rate']} for "
                       "the demo. See docs/training.md.")
    define("enum", "lr_schedule", d.lr_schedule, list(LR_SCHEDULES), "constant (the paper) or poly: lr (1 - step/total)^0.9.")
    define("float", "momentum", d.momentum, "SGD momentum (0.99 in the reference solvers).")
    define("float", "weight_decay", d.weight_decay, "Weight decay: L2 on kernels for sgd (5e-4 as in the paper), decoupled for adam.")
    define("enum", "mixed_precision", d.mixed_precision, list(MIXED_PRECISION), "none, bf16 (mixed_bfloat16) or fp16 "
                      "(mixed_float16, with loss scaling); variables and logits stay float32.")
    define("enum", "jit_compile", d.jit_compile, list(JIT_COMPILE), "XLA compilation of the train step: auto (Keras: on for JAX "
                      "and TF GPUs; off on TF CPU and under tf.distribute), true or false.")
    define("string", "output_dir", d.output_dir, "Run folder (default runs/fcn<variant>[_at_once]). A backup in it is resumed.")
    define("string", "cache_dir", d.cache_dir, "Where VOCdevkit roots are converted and the synthetic dataset is generated.")
    define("integer", "seed", d.seed, "Seed of initialisation, dropout and the input pipeline.")
    define("enum", "distribute", d.distribute, list(DISTRIBUTE_MODES), "none; mirrored: all local GPUs/devices "
                      "(tf.distribute.MirroredStrategy or keras.distribution.DataParallel under JAX); multi_worker: "
                      "MultiWorkerMirroredStrategy from TF_CONFIG (JAX: keras.distribution.initialize from KERAS_DISTRIBUTION_*).")
    define("boolean", "at_once", d.at_once, "The TPAMI at-once FCN-8s/16s (pool4 x0.01, pool3 x1e-4), trained in one stage.")
    define("boolean", "learn_skip_upsampling", d.learn_skip_upsampling, "Train the 2x skip upsamplings (upscore2, "
                         "upscore_pool4; bilinear at the start), as the paper's text says; the authors' released nets "
                         "fix them (lr_mult 0): --nolearn_skip_upsampling.")
    define("enum", "geometry", d.geometry, list(arch.GEOMETRIES), f"reference (the authors' nets) or same ({both('geometry')}).")
    define("integer", "fc_units", d.fc_units, f"Channels of fc6/fc7 (4096 = VGG16; smaller only for tests) ({both('fc_units')}).")
    define("enum", "fc6_implementation", d.fc6_implementation, list(FC6_IMPLEMENTATIONS), "fc6 as one im2col matmul "
           "(Im2colConv2D, faster to train) or as a Conv2D: the same function and weights (see build_fcn).")
    define("integer", "val_steps", d.val_steps, "Validation images per epoch (whole images, rounded up to whole validation "
                         "batches); default: all of the val split when the data has one; 0: no validation (best.keras by "
                         "training mean IU).")
    define("string", "val_canvas", d.val_canvas, "N or HxW: pad the validation images to this size (mean colour; labels void, "
                     "not counted) so that every validation batch has one shape: under XLA (JAX, TF GPUs) the test step "
                     "compiles once instead of once per image size; labels near the padding can differ slightly. Every "
                     "validation image must fit (checked at the start). Default: each image at its own size.")
    define("integer", "val_batch_size", d.val_batch_size, "Validation images per step, a multiple of the replicas; above "
                         "the replicas, images are padded to --val_canvas or to the batch's largest (default: one per replica).")
    define("integer", "backup_freq", d.backup_freq, "Steps between mid-epoch backups (also one at each epoch end; 0: epoch ends only).")
    define("integer", "checkpoint_freq", d.checkpoint_freq, "Epochs between the epoch-end writes of last.keras, best.keras and "
           "the backup (always at the last epoch and at a time-budget stop; best.keras is judged at those epochs). Raise it "
           "when epochs are short and the writes (2 GB for FCN-VGG16 with Adam) would take a large share of the time.")
    define("boolean", "deterministic", d.deterministic, "Deterministic input order and augmentation (needed for exact resume).")
    define("integer", "verbose", d.verbose, "Keras progress: 0 silent, 1 progress bar, 2 one line per epoch.")


def main(argv: list[str]) -> int:
    """``python -m fcn_keras.train``: builds a ``TrainConfig`` from the flags and trains."""
    from absl import flags

    if len(argv) > 1:
        return usage_error("fcn_keras.train", f"unexpected arguments: {argv[1:]}")
    values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(TrainConfig)}
    logging.getLogger("fcn_keras").setLevel(logging.INFO)
    try:
        summary = train(TrainConfig(**values))
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except WeightsDownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        state = cb.read_backup(Path(resolve_config(TrainConfig(**values)).output_dir) / "backup")
        then = f"resume from its backup (epoch {state['epoch'] + 1}, step {state['step']})" if state else "start over (no backup yet)"
        print(f"interrupted: run the same command again to {then}", file=sys.stderr)
        return 130
    print(json.dumps({k: summary[k] for k in ("status", "epochs_done", "best", "wall_time_s", "images_per_s")}, default=str))
    return 0


if __name__ == "__main__":
    define_flags()
    run_cli(main)
