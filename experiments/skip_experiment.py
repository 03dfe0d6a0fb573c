r"""The skip-architecture experiment (paper §4.2, Table 2, Fig. 4): FCN-32s -> 16s -> 8s.

    python -m experiments.skip_experiment --smoke --output_dir=/tmp/skip_smoke   # CI, < 1 min
    KERAS_BACKEND=jax python -m experiments.skip_experiment --data=../shared/voc2012/VOCdevkit \
        --weights=../shared/weights/vgg16_imagenet_notop_torchvision.weights.h5 \
        --output_dir=experiments/results/voc2012-h100 --at_once --mixed_precision=bf16 ...

The paper's staged protocol, each stage a ``fcn_keras.train.train`` run:

1. FCN-32s from the VGG16 backbone weights (``--weights``);
2. FCN-16s initialised from the trained FCN-32s (its ``last.keras``: no model selection on the
   evaluation split);
3. FCN-8s initialised from the trained FCN-16s;
4. with ``--at_once``: the TPAMI "at-once" FCN-8s from the backbone, trained as long as the three
   stages together.

Every model's ``last.keras`` is then evaluated on the same held-out split at full image size
(``fcn_keras.evaluate.evaluate_model``). Written to ``--output_dir``: ``results.md`` (Table 2's
layout beside the paper's numbers, per-class IU, training time and throughput, the exact command,
commit, backend, device and data counts), ``results.json``, ``comparison.png`` (Fig. 4 on a fixed
set of validation images: the first ``--figure_images`` of the split) and
``training_curves.png``; each stage's run folder (``fcn32s/``, ...) and its ``eval/``.

Resumable stage by stage: a stage whose ``summary.json`` says "finished" is not retrained, an
interrupted one resumes from its backup (``train()``); either way its recorded settings must match
the flags, else an error. An evaluation is redone when its model is newer than its ``metrics.json``
or ``figure_labels.npz``, or when the evaluation flags (``--eval_max_images``,
``--eval_batch_size``, ``--eval_canvas``, ``--eval_split``, ``--figure_images``) differ from those it
used; the table refuses models evaluated on different images or in different ways. Run the same command
again after a kill (e.g. the GPU's 10-minute command limit) and it continues.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from absl import flags

from benchmarks.throughput import device_description
from fcn_keras import viz
from fcn_keras.checks import check_folder, parse_size
from fcn_keras.console import run_cli, usage_error
from fcn_keras.data.pipeline import eval_dataset, oversized_images, resolve_data
from fcn_keras.evaluate import PAPER_METRICS, evaluate_model, evaluation_mode
from fcn_keras.files import atomic_path, write_text_atomic
from fcn_keras.train import TrainConfig, WeightsDownloadError, environment, recorded_config, resolve_config, train

# --- The protocol ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One training run of the protocol."""

    name: str  # run folder, e.g. "fcn16s"
    title: str  # table row, e.g. "FCN-16s"
    variant: str
    at_once: bool = False
    init_from: str | None = None  # the stage whose last.keras initialises this one
    mirrors: str | None = None  # a control: trained exactly as this staged model, without its skips


STAGES: tuple[Stage, ...] = (
    Stage("fcn32s", "FCN-32s", "32s"),
    Stage("fcn16s", "FCN-16s", "16s", init_from="fcn32s"),
    Stage("fcn8s", "FCN-8s", "8s", init_from="fcn16s"),
)
STAGE_INDEX: dict[str, int] = {stage.name: index for index, stage in enumerate(STAGES)}
AT_ONCE_STAGE = Stage("fcn8s_at_once", "FCN-8s at-once", "8s", at_once=True)
#: Controls (``--controls``): FCN-32s continued with FCN-16s's and then FCN-8s's learning rate and
#: epochs. Each differs from its staged model only by the skips, which separates what the skips
#: buy from what the extra training of the later stages buys when no stage has converged.
CONTROL_STAGES: tuple[Stage, ...] = (
    Stage("fcn32s_as16s", "FCN-32s trained as FCN-16s", "32s", init_from="fcn32s", mirrors="fcn16s"),
    Stage("fcn32s_as8s", "FCN-32s trained as FCN-8s", "32s", init_from="fcn32s_as16s", mirrors="fcn8s"),
)

#: Long, Shelhamer & Darrell (CVPR 2015), Table 2: skip FCNs on a subset of PASCAL VOC 2011 val
#: (seg11valid, 736 images), trained on SBD train (8,498 images) with ImageNet VGG16 fc6/fc7.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "FCN-32s": {"pixel_accuracy": 89.1, "mean_accuracy": 73.3, "mean_iu": 59.4, "fw_iu": 81.4},
    "FCN-16s": {"pixel_accuracy": 90.0, "mean_accuracy": 75.7, "mean_iu": 62.4, "fw_iu": 83.0},
    "FCN-8s": {"pixel_accuracy": 90.3, "mean_accuracy": 75.9, "mean_iu": 62.7, "fw_iu": 83.2},
}

#: Settings of ``--smoke``: the whole protocol on a tiny synthetic VOC set in well under a minute.
SMOKE_SETTINGS: dict[str, Any] = {
    "epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 32, "optimizer": "adam",
    "learning_rates": [1e-3, 1e-4, 1e-5], "at_once_learning_rate": 1e-3, "fc_units": 8, "geometry": "same",
    "val_steps": 0, "backup_freq": 0, "jit_compile": "false", "weights": "none", "mixed_precision": "none",
    "eval_batch_size": 2, "eval_canvas": "48x56",  # the GPU run's evaluation mode (images are <= 45x54)
}
SMOKE_DATA: dict[str, Any] = {"num_train": 6, "num_val": 3, "size": (40, 48), "seed": 0}

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
COMPARISON_PNG = "comparison.png"
CURVES_PNG = "training_curves.png"

#: TrainConfig fields that may differ between a finished stage and a rerun without retraining.
_IGNORED_ON_RERUN = ("verbose", "backup_freq", "checkpoint_freq", "cache_dir")


# --- Settings -> TrainConfig -------------------------------------------------------------------


@dataclass
class ExperimentSettings:
    """What the driver's flags set; ``None`` leaves ``fcn_keras.train``'s default ("auto")."""

    data: str
    output_dir: str
    weights: str = "auto"
    at_once: bool = False
    controls: bool = False
    epochs: int | None = None
    steps_per_epoch: int | None = None
    stage_seconds: float = 0.0  # > 0: FCN-32s stops within this time budget; later stages get its epochs
    at_once_epochs: int | None = None  # default: the three stages' epochs together
    batch_size: int | None = None
    crop_size: int | None = None
    optimizer: str | None = None
    learning_rates: list[float] | None = None  # per stage 32s, 16s, 8s (train's per-variant default)
    at_once_learning_rate: float | None = None
    lr_schedule: str = "constant"
    mixed_precision: str = "none"
    jit_compile: str = "auto"
    geometry: str | None = None
    fc_units: int | None = None
    val_steps: int | None = None
    backup_freq: int = 100
    checkpoint_freq: int = 1  # epochs between the checkpoint and backup writes
    seed: int = 0
    train_split: str = "train"
    eval_split: str = "val"
    eval_max_images: int | None = None
    eval_batch_size: int = 1
    eval_canvas: str = ""  # "N" or "HxW": evaluate on a fixed canvas (one compilation per model)
    figure_images: int = 4
    verbose: int = 1


def stages_of(settings: ExperimentSettings) -> tuple[Stage, ...]:
    """The stages to run: 32s, 16s, 8s, the controls with ``settings.controls``, and the at-once
    8s with ``settings.at_once``."""
    return STAGES + (CONTROL_STAGES if settings.controls else ()) + ((AT_ONCE_STAGE,) if settings.at_once else ())


def stage_config(stage: Stage, settings: ExperimentSettings, data: str) -> TrainConfig:
    """The ``TrainConfig`` of one stage.

    Args:
        stage: the stage.
        settings: the experiment's settings.
        data: the converted dataset folder (``manifest.json`` with ``train_split`` and ``eval_split``).

    Returns:
        A ``TrainConfig``: same data, budget and schedule for every staged model; the at-once
        model gets ``at_once_epochs`` (default the staged epochs together).
    """
    output_dir = Path(settings.output_dir)
    epochs = settings.epochs
    learning_rate = None
    if stage.at_once:
        learning_rate = settings.at_once_learning_rate
        epochs = settings.at_once_epochs
        if epochs is None:  # as long as the staged models together (train's default epochs if unset)
            epochs = resolve_config(stage_config(STAGES[0], settings, data)).epochs * len(STAGES)
    elif settings.learning_rates:
        learning_rate = settings.learning_rates[STAGE_INDEX[stage.mirrors or stage.name]]
    elif stage.mirrors:  # train's default rate of the mirrored variant
        learning_rate = resolve_config(stage_config(STAGES[STAGE_INDEX[stage.mirrors]], settings, data)).learning_rate
    init_from = str(output_dir / stage.init_from / "last.keras") if stage.init_from else ""
    return TrainConfig(
        variant=stage.variant,
        data=data,
        train_split=settings.train_split,
        val_split=settings.eval_split,
        init_from=init_from,
        weights="none" if init_from else settings.weights,
        epochs=epochs,
        steps_per_epoch=settings.steps_per_epoch,
        max_train_seconds=settings.stage_seconds if stage == STAGES[0] else 0.0,
        batch_size=settings.batch_size,
        crop_size=settings.crop_size,
        optimizer=settings.optimizer,
        learning_rate=learning_rate,
        lr_schedule=settings.lr_schedule,
        mixed_precision=settings.mixed_precision,
        jit_compile=settings.jit_compile,
        output_dir=str(output_dir / stage.name),
        cache_dir=str(output_dir / "cache"),
        seed=settings.seed,
        at_once=stage.at_once,
        geometry=settings.geometry,
        fc_units=settings.fc_units,
        val_steps=settings.val_steps,
        backup_freq=settings.backup_freq,
        checkpoint_freq=settings.checkpoint_freq,
        verbose=settings.verbose,
    )


# --- Data --------------------------------------------------------------------------------------


def prepare_data(settings: ExperimentSettings, smoke: bool) -> tuple[str, dict[str, str]]:
    """The converted dataset folder the stages and the evaluation share, and its split globs.

    Args:
        settings: ``data`` is a VOCdevkit root (converted into ``<output_dir>/records``) or a
            folder written by ``fcn_keras.data.convert``; with ``smoke`` a synthetic VOC set is
            generated into ``<output_dir>/synthetic_voc`` first.
        smoke: use the embedded synthetic data.

    Returns:
        ``(folder, {split: glob})``.

    Raises:
        ValueError: naming ``--data`` when it has no ``train_split`` or no ``eval_split``.
    """
    from fcn_keras.data.convert import MANIFEST_NAME
    from fcn_keras.data.synthetic import make_synthetic_voc

    output_dir = Path(settings.output_dir)
    data = settings.data
    if smoke:
        data = str(make_synthetic_voc(output_dir / "synthetic_voc", **SMOKE_DATA))
    if not Path(data).is_dir():
        raise ValueError(
            f"--data must be a VOCdevkit root (holding VOC2012/) or a folder written by fcn_keras.data.convert, "
            f"with {settings.train_split} and {settings.eval_split} splits. Received: --data={data!r}"
        )
    folder = Path(data) if (Path(data) / MANIFEST_NAME).is_file() else output_dir / "records"
    globs = resolve_data(data, folder, splits=(settings.train_split, settings.eval_split))
    missing = [split for split in (settings.train_split, settings.eval_split) if split not in globs]
    if missing:
        raise ValueError(f"--data {data!r} has no {' or '.join(missing)} split; it has {sorted(globs)}")
    return str(folder), globs


# --- Stages ------------------------------------------------------------------------------------


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _IGNORED_ON_RERUN}


def run_stage(config: TrainConfig) -> tuple[dict[str, Any], bool]:
    """Trains one stage unless its folder holds the same finished run.

    Args:
        config: the stage's ``TrainConfig``.

    Returns:
        ``(summary, trained)``: ``train()``'s summary, and whether this call trained.

    Raises:
        ValueError: the folder holds a run (finished or interrupted) with other settings.
    """
    run_dir = Path(config.output_dir)
    summary_path = run_dir / "summary.json"
    if (run_dir / "config.json").is_file():
        # Finished or interrupted, a run continues only with its own settings: an interrupted one
        # resumed with others would have trained under both (train()'s resume does not compare
        # the learning rate, epochs or time budget).
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        finished = summary.get("status") == "finished"
        previous = recorded_config(run_dir)
        requested = dataclasses.asdict(resolve_config(config))
        changed = {k: (previous.get(k), v) for k, v in _comparable(requested).items() if previous.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{run_dir} holds {'a finished' if finished else 'an interrupted'} run with other settings ({details}); "
                "rerun with the same flags, or use another --output_dir"
                + ("" if finished else f" (or delete {run_dir} to train this stage afresh)")
            )
        if finished:
            print(f"{run_dir.name}: finished earlier ({summary['epochs_done']} epochs), not retrained", flush=True)
            return summary, False
    print(f"{run_dir.name}: training FCN-{config.variant}{' at-once' if config.at_once else ''}", flush=True)
    summary = train(config)
    keras.utils.clear_session()  # the stage's model and optimizer state leave the device
    return summary, True


FIGURE_LABELS = "figure_labels.npz"  # in <stage>/eval/: the figure images' label maps


def _load_figure_labels(path: Path) -> list[np.ndarray]:
    """The label maps ``evaluate_stage`` saved for the figure images, in image order."""
    with np.load(path) as saved:
        return [saved[f"image_{i}"] for i in range(len(saved.files))]


def evaluate_stage(
    stage: Stage, settings: ExperimentSettings, data: str
) -> tuple[dict[str, Any], list[np.ndarray] | None]:
    """Evaluates a stage's ``last.keras`` on the held-out split, keeping the label maps of the
    first ``figure_images`` images (the figure's) from the same pass.

    Reuses ``<stage>/eval/metrics.json`` and ``figure_labels.npz`` when they are newer than the
    model and were made with the current evaluation flags (``evaluation_changes``), else
    evaluates again and says why. A finished stage whose model file was not kept (the GPU run brings back results, not
    its 540 MB models) is reused from ``metrics.json`` alone: ``results["reused_without_model"]``
    is then true, and the label maps are ``None`` unless ``figure_labels.npz`` came back too.

    Returns:
        ``(evaluate_model results, [uint8 [H, W] label map per figure image] or None)``.

    Raises:
        FileNotFoundError: naming the stage's folder when it holds neither the model nor its evaluation.
        ValueError: the model is gone and its evaluation used other evaluation flags.
    """
    run_dir = Path(settings.output_dir) / stage.name
    model_path = run_dir / "last.keras"
    metrics_path = run_dir / "eval" / "metrics.json"
    figure_path = run_dir / "eval" / FIGURE_LABELS
    if not model_path.is_file():
        if not metrics_path.is_file():
            raise FileNotFoundError(f"{run_dir}: no last.keras to evaluate and no earlier evaluation (eval/metrics.json)")
        results = {**json.loads(metrics_path.read_text()), "reused_without_model": True}
        changed = evaluation_changes(results, settings, data)
        if changed:  # Nothing to evaluate again with: refused rather than mixed into the table.
            raise ValueError(
                f"{run_dir}: no last.keras to evaluate again, and its earlier evaluation (eval/metrics.json) used other "
                f"evaluation settings ({'; '.join(changed)}); rerun with that evaluation's flags"
            )
        labels = _load_figure_labels(figure_path) if figure_path.is_file() else None
        print(f"{stage.name}: model file not kept; its earlier evaluation is reused: mean IU "
              f"{100 * results['mean_iu']:.1f}", flush=True)
        return results, labels[: settings.figure_images] if labels is not None else None
    fresh = [p for p in (metrics_path, figure_path) if p.is_file() and p.stat().st_mtime >= model_path.stat().st_mtime]
    if len(fresh) == 2:
        results = json.loads(metrics_path.read_text())
        labels = _load_figure_labels(figure_path)
        changed = evaluation_changes(results, settings, data)
        if len(labels) < min(settings.figure_images, results["num_images"]):
            changed.append(f"--figure_images: {len(labels)} label maps kept -> {settings.figure_images}")
        if not changed:
            print(f"{stage.name}: evaluated earlier: mean IU {100 * results['mean_iu']:.1f}", flush=True)
            return results, labels[: settings.figure_images]
        print(f"{stage.name}: evaluated again: the earlier evaluation used other settings ({'; '.join(changed)})",
              flush=True)
    results = evaluate_model(
        model_path, data, split=settings.eval_split, output_dir=run_dir / "eval",
        max_images=settings.eval_max_images, batch_size=settings.eval_batch_size,
        canvas=eval_canvas(settings), keep_predictions=settings.figure_images, verbose=bool(settings.verbose),
    )
    labels = results.pop("predictions")
    with atomic_path(figure_path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **{f"image_{i}": label for i, label in enumerate(labels)})
    keras.utils.clear_session()
    print(f"{stage.name}: mean IU {100 * results['mean_iu']:.1f} on {results['num_images']} images", flush=True)
    return results, labels


def eval_canvas(settings: ExperimentSettings) -> tuple[int, int] | None:
    """``--eval_canvas`` as ``(height, width)``, or ``None`` when empty.

    Raises:
        ValueError: naming ``--eval_canvas`` when it is not N or HxW.
    """
    return parse_size(settings.eval_canvas, "--eval_canvas") if settings.eval_canvas else None


def evaluation_changes(recorded: dict[str, Any], settings: ExperimentSettings, data: str) -> list[str]:
    """How an earlier evaluation (its ``metrics.json``) differs from what the current flags ask for.

    ``evaluate_model`` records the split, batch size, canvas and image count it used; the image
    count asked for is ``--eval_max_images`` capped at the split's size (``manifest.json``).

    Args:
        recorded: the earlier evaluation's ``metrics.json``.
        settings: the experiment's settings.
        data: the converted dataset folder (its ``manifest.json`` gives the split's size).

    Returns:
        One ``"--flag: earlier -> now"`` per difference; empty when the evaluation can be reused.
    """
    changed = []
    split_size = None
    manifest = Path(data) / "manifest.json"
    if manifest.is_file():
        split_size = json.loads(manifest.read_text()).get("splits", {}).get(settings.eval_split, {}).get("num_examples")
    wanted_images = settings.eval_max_images
    if split_size is not None:
        wanted_images = split_size if wanted_images is None else min(wanted_images, split_size)
    canvas = eval_canvas(settings)
    asked = {
        "--eval_split": (recorded.get("split"), settings.eval_split),
        "--eval_batch_size": (recorded.get("batch_size", 1), settings.eval_batch_size),
        "--eval_canvas": (recorded.get("canvas"), None if canvas is None else list(canvas)),
        "--eval_max_images": (recorded.get("num_images"), wanted_images),
    }
    for flag, (earlier, now) in asked.items():
        if earlier != now and not (flag == "--eval_max_images" and now is None):  # None: the split's size unknown
            what = "images evaluated" if flag == "--eval_max_images" else "value"
            changed.append(f"{flag}: {what} {earlier!r} -> {now!r}")
    return changed


def load_figure_images(val_glob: str, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first ``count`` images of the evaluation split (file order) and their label maps."""
    images, labels = [], []
    for image, label in eval_dataset(val_glob, batch_size=1).take(count):
        images.append(image.numpy()[0])
        labels.append(label.numpy()[0])
    return images, labels


# --- Results -----------------------------------------------------------------------------------


def model_entry(stage: Stage, summary: dict[str, Any], evaluation: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """One model's line of ``results.json``: metrics (fractions), per-class IU, training."""
    resolved = resolve_config(config)
    history = summary.get("history") or [{}]
    return {
        "stage": stage.name,
        "variant": stage.variant,
        "at_once": stage.at_once,
        "init": f"{stage.init_from}/last.keras" if stage.init_from else f"backbone weights: {resolved.weights}",
        "metrics": {key: evaluation[key] for key, _ in PAPER_METRICS},
        "per_class_iu": evaluation["per_class_iu"],
        "eval_images": evaluation["num_images"],
        "eval_pixels": evaluation["num_pixels"],
        "eval_mode": evaluation_mode(evaluation),
        "eval_seconds": evaluation.get("seconds"),
        # Trained and evaluated by an earlier call whose model file did not come back (evaluate_stage).
        "reused_without_model": bool(evaluation.get("reused_without_model")),
        "git_commit": _recorded_commit(Path(config.output_dir)),
        "training": {
            "epochs": summary.get("epochs_done"),
            "steps": summary.get("global_step"),
            "images_seen": summary.get("images_seen"),
            "wall_time_s": summary.get("wall_time_s"),
            "images_per_s": summary.get("images_per_s"),
            # The first step of the process's first epoch holds the XLA compilation.
            "first_step_s": history[0].get("first_step_s"),
            "steady_images_per_s": history[-1].get("steady_images_per_s"),
            "learning_rate": resolved.learning_rate,
            "optimizer": resolved.optimizer,
            "batch_size": resolved.batch_size,
            "crop_size": resolved.crop_size,
        },
    }


def common_evaluation(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The image count and mode every model of the table was evaluated with (``num_eval``,
    ``eval_mode``).

    Raises:
        ValueError: naming each model's count and mode when they differ: one table must not
            compare models scored on different images or in different ways.
    """
    seen = {(entry["eval_images"], entry.get("eval_mode")) for entry in models.values()}
    if len(seen) > 1:
        listed = "; ".join(f"{title}: {entry['eval_images']} images, {entry.get('eval_mode') or 'mode not recorded'}"
                           for title, entry in models.items())
        raise ValueError(
            f"the models were evaluated on different image sets or in different ways ({listed}); evaluate them "
            "all with the same --eval_max_images, --eval_batch_size and --eval_canvas"
        )
    num_eval, eval_mode = seen.pop()
    return {"num_eval": num_eval, "eval_mode": eval_mode}


def _recorded_commit(run_dir: Path) -> str | None:
    """The git commit a stage was trained at, from its ``config.json``."""
    path = run_dir / "config.json"
    return json.loads(path.read_text()).get("git_commit") if path.is_file() else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: Table 2's layout for our models and the paper's, per-class IU, the run.

    Args:
        results: the ``results.json`` document (see ``write_results``).

    Returns:
        The markdown text.
    """
    models, run, data = results["models"], results["run"], results["data"]
    headings = [heading for _, heading in PAPER_METRICS]
    lines = [
        f"# Skip-architecture experiment: {results['name']}",
        "",
        *([] if results.get("complete", True) else [
            f"**Partial results**: {len(models)} of the {len(results['planned'])} planned models "
            f"({', '.join(results['planned'])}) trained and evaluated so far; the same command continues.", ""]),
        f"Data: {data['num_train']} training images (`{data.get('train_split', 'train')}` split), evaluated on "
        f"{data['num_eval']} images of the "
        f"`{data['eval_split']}` split at full size, {data.get('eval_mode', 'one at a time, exact')} ({data['source']}). "
        f"Every model trained on the same data and budget per stage; metrics in %.",
        "",
        *budget_lines(results.get("budget")),
        "| model | " + " | ".join(headings) + " | init | steps | train time (s) | train img/s |",
        "|---|" + "---:|" * len(headings) + "---|---:|---:|---:|",
    ]
    for title, entry in models.items():
        training = entry["training"]
        lines.append(
            f"| {title} | " + " | ".join(_pct(entry["metrics"][key]) for key, _ in PAPER_METRICS)
            + f" | {entry['init']} | {_num(training['steps'], 0)} | {_num(training['wall_time_s'])} | "
            f"{_num(training['images_per_s'])} |"
        )
    lines += ["", "train time and img/s: the stage's wall time and images seen over the time of its last process "
              "(train's summary: compilation and checkpoint writing included, not a kernel benchmark).",
              "", "The paper (Table 2, VOC 2011 val subset, trained on SBD with ImageNet fc6/fc7):", "",
              "| model | " + " | ".join(headings) + " |", "|---|" + "---:|" * len(headings)]
    for title, paper in results["paper"].items():
        lines.append(f"| {title} | " + " | ".join(f"{paper[key]:.1f}" for key, _ in PAPER_METRICS) + " |")
    lines += ["", "## Findings", ""] + [f"- {finding}" for finding in findings(models)]
    lines += ["", "## Time (s)", "", "| model | training | its first step | img/s after it | evaluation |",
              "|---|---:|---:|---:|---:|"]
    for title, entry in models.items():
        training = entry["training"]
        lines.append(f"| {title} | {_num(training['wall_time_s'])} | {_num(training.get('first_step_s'))} | "
                     f"{_num(training.get('steady_images_per_s'))} | {_num(entry.get('eval_seconds'))} |")
    lines += ["", "The first step of a process holds the compilation (XLA) of the train step; evaluation includes "
              "loading the model and compiling it for the evaluation shape."]
    lines += ["", "## Per-class IU (%)", "", "| class | " + " | ".join(models) + " |",
              "|---|" + "---:|" * len(models)]
    for index, name in enumerate(results["class_names"]):
        lines.append(f"| {name} | " + " | ".join(_pct(e["per_class_iu"][index]) for e in models.values()) + " |")
    lines += [
        "",
        "`-`: class absent from both the ground truth and the predictions of the evaluated images.",
        "",
        "## Figures",
        "",
        f"![Fig. 4 style comparison]({results['figures']['comparison']})",
        "",
        *([f"Models in the comparison: {', '.join(results['figures']['comparison_models'])}.", ""]
          if results["figures"].get("comparison_models") else []),
        f"![training curves]({results['figures']['training_curves']})",
        "",
        "## Run",
        "",
        f"- Command: `{run['command']}`",
        f"- Commit: {run['git_commit']}",
        *reuse_lines(models),
        f"- Backend: {run['backend']}; device: {run['device']}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in run['versions'].items())}",
        f"- Date: {run['date']}",
        f"- Data: `{data['folder']}` (train `{data['train_glob']}`, eval `{data['eval_glob']}`)",
        "",
    ]
    return "\n".join(lines)


def reuse_lines(models: dict[str, dict[str, Any]]) -> list[str]:
    """results.md's note on the models an earlier call trained and evaluated (none if all are this call's)."""
    reused = [(title, entry.get("git_commit")) for title, entry in models.items() if entry.get("reused_without_model")]
    if not reused:
        return []
    listed = ", ".join(f"{title} (commit {commit or 'unknown'})" for title, commit in reused)
    return [f"- Reused from an earlier call (their model files were not kept; metrics read from each stage's "
            f"`eval/metrics.json`, training from its `summary.json`): {listed}. The command above is this call's."]


def budget_lines(budget: dict[str, Any] | None) -> list[str]:
    """How ``--stage_seconds`` set the stages' budget, as results.md lines (none without it)."""
    if not budget:
        return []
    how = "stopped by" if budget["fcn32s_stopped_by_budget"] else "finished its --epochs within"
    return [f"Budget: FCN-32s {how} its time budget of {budget['stage_seconds']:g} s after "
            f"{budget['epochs_per_stage']} epoch(s); every later stage trained the same {budget['epochs_per_stage']} "
            "epoch(s), so all stages had the same number of steps.", ""]


def findings(models: dict[str, dict[str, Any]]) -> list[str]:
    """Plain statements computed from the numbers: does mean IU rise 32s -> 16s -> 8s, and how
    does the at-once FCN-8s compare with the staged one."""
    ious = {title: entry["metrics"]["mean_iu"] for title, entry in models.items()}
    staged = [title for title in ("FCN-32s", "FCN-16s", "FCN-8s") if title in ious]
    chain = " -> ".join(f"{title} {100 * ious[title]:.1f}" for title in staged)
    rising = all(ious[a] < ious[b] for a, b in zip(staged, staged[1:]))
    controlled = any(control.title in ious for control in CONTROL_STAGES)
    if len(staged) < 2:
        out = [f"Mean IU so far: {chain or 'no staged model'}."]
    else:
        out = [f"Mean IU {'rises' if rising else 'does not rise monotonically'} along the stages: {chain}."
               + ("" if controlled else " Each later stage also trained longer (it continues the one before), so "
                  "this includes the extra training, not only the skips: --controls separates the two.")]
    for control in CONTROL_STAGES:
        mirrored = STAGES[STAGE_INDEX[control.mirrors]].title
        if control.title in ious and mirrored in ious:
            diff = 100 * (ious[mirrored] - ious[control.title])
            out.append(f"{mirrored} against {control.title} (same steps and learning rates, no skips): "
                       f"{100 * ious[mirrored]:.1f} vs {100 * ious[control.title]:.1f} mean IU, {diff:+.1f} points "
                       "with the skips, from one seed (one training run each: the seed-to-seed spread is not "
                       "measured).")
    if "FCN-8s at-once" in ious and "FCN-8s" in ious:
        diff = 100 * (ious["FCN-8s at-once"] - ious["FCN-8s"])
        out.append(f"The at-once FCN-8s scores {100 * ious['FCN-8s at-once']:.1f} mean IU, {diff:+.1f} points "
                   "against the staged FCN-8s.")
    return out


def write_results(results: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes ``results.json`` and ``results.md`` (each atomically) into ``output_dir``.

    Args:
        results: ``{"name", "models": {title: model_entry(...)}, "paper", "data", "run",
            "figures", "class_names"}``.
        output_dir: the experiment folder.

    Returns:
        ``{"json": path, "markdown": path}``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": output_dir / RESULTS_JSON, "markdown": output_dir / RESULTS_MD}
    write_text_atomic(paths["json"], json.dumps(results, indent=2, default=str) + "\n")  # models in stage order
    write_text_atomic(paths["markdown"], results_markdown(results))
    return paths



# --- The experiment ----------------------------------------------------------------------------


def run_experiment(settings: ExperimentSettings, *, smoke: bool = False, command: str = "") -> dict[str, Any]:
    """Runs (or continues) the whole protocol and writes the results, after every stage (then
    ``complete`` is false until the last one).

    Args:
        settings: the experiment's settings (``--smoke`` overrides them with ``SMOKE_SETTINGS``).
        smoke: the embedded synthetic data with tiny sizes.
        command: the command line, recorded in the results.

    Returns:
        The ``results.json`` document.
    """
    if smoke:
        settings = dataclasses.replace(settings, **SMOKE_SETTINGS, figure_images=2)
    if settings.learning_rates is not None and len(settings.learning_rates) != len(STAGES):
        raise ValueError(
            f"--learning_rates needs one rate per stage (32s, 16s, 8s). Received: --learning_rates={settings.learning_rates}"
        )
    if settings.figure_images < 1:
        raise ValueError(f"--figure_images must be >= 1. Received: --figure_images={settings.figure_images}")
    # The evaluation flags are checked now, not after FCN-32s has trained.
    if settings.eval_max_images is not None and settings.figure_images > settings.eval_max_images:
        raise ValueError(
            f"--figure_images must not exceed --eval_max_images (the figure shows evaluated images). Received: "
            f"--figure_images={settings.figure_images}, --eval_max_images={settings.eval_max_images}"
        )
    canvas = eval_canvas(settings)
    check_folder("--output_dir", settings.output_dir)
    start = time.perf_counter()
    output_dir = Path(settings.output_dir)
    folder, globs = prepare_data(settings, smoke)  # checks --data before anything is written
    output_dir.mkdir(parents=True, exist_ok=True)
    stages = stages_of(settings)
    oversized = [] if canvas is None else oversized_images(globs[settings.eval_split], canvas, settings.eval_max_images)
    if oversized:
        image_id, height, width = oversized[0]
        raise ValueError(
            f"--eval_canvas must hold every evaluated image: {len(oversized)} images of the {settings.eval_split!r} "
            f"split are larger than {canvas[0]}x{canvas[1]} (height x width), e.g. {image_id!r} ({height}x{width}). "
            f"Received: --eval_canvas={settings.eval_canvas}"
        )

    # --- Stage by stage: train from the last stage, then evaluate at once and write the results
    # so far, so that a call stopped later (a time limit) still leaves every finished row ---
    images, truth = load_figure_images(globs[settings.eval_split], settings.figure_images)
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    env = environment_of_run()
    configs, summaries, models, predictions, budget, stage_settings = {}, {}, {}, {}, None, settings
    for stage in stages:
        configs[stage.name] = stage_config(stage, stage_settings, folder)
        summaries[stage.name] = run_stage(configs[stage.name])[0]
        if stage == STAGES[0] and settings.stage_seconds:
            # The same budget for every stage: the epochs FCN-32s did within its time budget.
            epochs = int(summaries[stage.name]["epochs_done"])
            budget = {"stage_seconds": settings.stage_seconds, "epochs_per_stage": epochs,
                      "fcn32s_stopped_by_budget": bool(summaries[stage.name].get("stopped_by_time_budget"))}
            stage_settings = dataclasses.replace(settings, epochs=epochs)
            print(f"{stage.name}: {epochs} epoch(s) within --stage_seconds={settings.stage_seconds:g}: every later "
                  f"stage trains {epochs} epoch(s)", flush=True)
        evaluation, labels = evaluate_stage(stage, settings, folder)
        models[stage.title] = model_entry(stage, summaries[stage.name], evaluation, configs[stage.name])
        if not stage.mirrors:  # the figure shows the paper's models
            predictions[stage.title] = labels
        class_names = evaluation["class_names"]

        # --- Figures and results (of the models so far) ---
        figure_models = comparison_figure(images, predictions, truth, output_dir, class_names)
        curves = {s.title: output_dir / s.name / "log.csv" for s in stages if s.title in models}
        viz.plot_training_curves(curves, output_dir / CURVES_PNG)
        results = {
            "name": output_dir.name,
            "complete": len(models) == len(stages),
            "planned": [s.title for s in stages],
            "models": models,
            "paper": PAPER_TABLE2,
            "class_names": list(class_names),
            "data": {
                "source": "synthetic VOC (--smoke)" if smoke else settings.data,
                "folder": folder,
                "train_glob": globs[settings.train_split],
                "train_split": settings.train_split,
                "eval_glob": globs[settings.eval_split],
                "eval_split": settings.eval_split,
                "num_train": manifest["splits"][settings.train_split]["num_examples"],
                "num_eval_split": manifest["splits"][settings.eval_split]["num_examples"],
                **common_evaluation(models),
                "figure_images": len(images),
            },
            "settings": dataclasses.asdict(settings),
            "budget": budget,
            "run": {**env, "command": command or " ".join(sys.argv),
                    "driver_seconds_this_call": time.perf_counter() - start},
            "figures": {"comparison": COMPARISON_PNG, "comparison_models": figure_models,
                        "training_curves": CURVES_PNG},
        }
        write_results(results, output_dir)
    print(f"wrote {RESULTS_MD}, {RESULTS_JSON}, {COMPARISON_PNG}, {CURVES_PNG} in {output_dir}", flush=True)
    return results


def comparison_figure(
    images: list[np.ndarray],
    predictions: dict[str, list[np.ndarray] | None],
    truth: list[np.ndarray],
    output_dir: Path,
    class_names: list[str],
) -> list[str]:
    """Draws ``comparison.png`` (Fig. 4) of the models so far, unless the label maps of a model
    reused without its model file are missing: then an existing figure (drawn by the call that
    had them) is kept, and only a missing one is drawn from the models that have label maps.

    Returns:
        The titles of the models the figure on disk shows.
    """
    path = output_dir / COMPARISON_PNG
    drawable = {title: labels for title, labels in predictions.items() if labels is not None}
    if len(drawable) < len(predictions) and path.is_file():
        earlier = output_dir / RESULTS_JSON
        record = json.loads(earlier.read_text()) if earlier.is_file() else {}
        controls = {stage.name for stage in CONTROL_STAGES}
        missing = [title for title in predictions if title not in drawable]
        # Results written before the figure's models were recorded: it showed the non-control models.
        kept = record.get("figures", {}).get("comparison_models") or [
            title for title, entry in record.get("models", {}).items() if entry.get("stage") not in controls]
        print(f"{COMPARISON_PNG} kept from the earlier call (it shows {', '.join(kept)}): the label maps of "
              f"{', '.join(missing)} did not come back with their results", flush=True)
        return kept
    viz.plot_comparison(images, drawable, truth, path, class_names=class_names)
    return list(drawable)


def environment_of_run() -> dict[str, Any]:
    """Backend, device, versions, git commit and date of this call."""
    from fcn_keras.distribute import setup_distribution

    env = environment(setup_distribution("none"))
    return {
        "backend": env["backend"],
        "device": device_description()[0],
        "versions": env["versions"],
        "git_commit": env["git_commit"],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --- CLI ---------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The flags of ``python -m experiments.skip_experiment`` (defined only when run)."""
    flags.DEFINE_string("data", None, "VOCdevkit root (holding VOC2012/) or a folder written by "
                        "fcn_keras.data.convert (VOC or a dataset of your own), with --train_split and --eval_split splits. "
                        "Not needed with --smoke.")
    flags.DEFINE_string("output_dir", None, "Experiment folder, e.g. experiments/results/<run name>.", required=True)
    flags.DEFINE_string("weights", "auto", "Backbone of FCN-32s (and the at-once FCN-8s): a Keras VGG16 "
                        "weights file, 'imagenet' (needs internet), 'none', or 'auto' (train's default).")
    flags.DEFINE_boolean("at_once", False, "Also train the TPAMI at-once FCN-8s from the backbone.")
    flags.DEFINE_boolean("controls", False, "Also train FCN-32s on as FCN-16s and then as FCN-8s (same learning rates "
                         "and epochs, no skips): what the skips buy apart from the later stages' extra training.")
    flags.DEFINE_boolean("smoke", False, "The whole protocol on a tiny synthetic VOC set (CI), ignoring the "
                         "training flags.")
    flags.DEFINE_integer("epochs", None, "Epochs per stage (default: train's).", lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: train's).", lower_bound=1)
    flags.DEFINE_float("stage_seconds", 0.0, "Time budget of FCN-32s (training wall time, compilation included): it "
                       "stops at the first epoch end past it, and FCN-16s/8s then train as many epochs as it did (the "
                       "same steps per stage; at-once: 3x). 0: every stage trains --epochs.", lower_bound=0.0)
    flags.DEFINE_integer("at_once_epochs", None, "Epochs of the at-once FCN-8s (default: the 3 stages' "
                         "epochs together).", lower_bound=1)
    flags.DEFINE_integer("batch_size", None, "Batch size (default: train's; 1 with whole images).", lower_bound=1)
    flags.DEFINE_integer("crop_size", None, "Random crops of this size (0: whole images, the paper's setup).",
                         lower_bound=0)
    flags.DEFINE_enum("optimizer", None, ["sgd", "adam"], "Optimizer (default: train's, SGD momentum 0.99).")
    flags.DEFINE_list("learning_rates", None, "Learning rate per stage: 32s,16s,8s (default: train's "
                      "per-variant rates from the paper).")
    flags.DEFINE_float("at_once_learning_rate", None, "Learning rate of the at-once FCN-8s (default: train's).")
    flags.DEFINE_enum("lr_schedule", "constant", ["constant", "poly"], "Learning-rate schedule within a stage.")
    flags.DEFINE_enum("mixed_precision", "none", ["none", "bf16", "fp16"], "Mixed precision of training.")
    flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA compilation of the train step.")
    flags.DEFINE_enum("geometry", None, ["reference", "same"], "Network geometry (default: train's, reference).")
    flags.DEFINE_integer("fc_units", None, "fc6/fc7 channels (default 4096).", lower_bound=1)
    flags.DEFINE_integer("val_steps", None, "Validation images per epoch during training (0: none; default: "
                         "the whole val split). Evaluation of the results always uses the whole split.",
                         lower_bound=0)
    flags.DEFINE_integer("backup_freq", 100, "Steps between mid-epoch backups (resume after a kill).", lower_bound=0)
    flags.DEFINE_integer("checkpoint_freq", 1, "Epochs between the writes of last.keras and the backup (always at a "
                         "stage's last epoch and at its time-budget stop): for short epochs.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Seed of every stage.")
    flags.DEFINE_string("train_split", "train", "The split every stage trains on (the paper's: sbd_train).")
    flags.DEFINE_string("eval_split", "val", "The held-out split every model is evaluated on (and validated on during "
                        "training; the paper's: seg11valid).")
    flags.DEFINE_integer("eval_max_images", None, "Evaluate only the first N images (default: all).", lower_bound=1)
    flags.DEFINE_integer("eval_batch_size", 1, "Images per evaluation call: 1 is exact full size; more pads to "
                         "the batch's largest image (fewer shapes to compile under JAX).", lower_bound=1)
    flags.DEFINE_string("eval_canvas", "", "N or HxW: pad every evaluation image to this canvas (mean colour, void "
                        "labels) and fill the last batch: one input shape, one XLA compilation per model under JAX "
                        "(VOC images are at most 500x500). Empty: exact sizes / the batch's largest image.")
    flags.DEFINE_integer("figure_images", 4, "Validation images in the comparison figure (the first N).",
                         lower_bound=1)
    flags.DEFINE_integer("verbose", 1, "Keras progress output (0, 1 or 2).")


def settings_from_flags() -> ExperimentSettings:
    """An ``ExperimentSettings`` from the parsed flags (``--data`` required unless ``--smoke``).

    Raises:
        ValueError: no ``--data`` without ``--smoke``, or ``--learning_rates`` not numbers.
    """
    if not FLAGS.smoke and not FLAGS.data:
        raise ValueError("--data is required (a VOCdevkit root or converted folder) unless --smoke")
    rates = None
    if FLAGS.learning_rates:
        try:
            rates = [float(r) for r in FLAGS.learning_rates]
        except ValueError:
            raise ValueError(f"--learning_rates must be numbers. Received: {','.join(FLAGS.learning_rates)}") from None
    fields = {f.name for f in dataclasses.fields(ExperimentSettings)} - {"data", "learning_rates"}
    return ExperimentSettings(data=FLAGS.data or "", learning_rates=rates, **{name: FLAGS[name].value for name in fields})


def command_line(module: str) -> str:
    """This process as a shell command for a results file: backend, ``python -m module`` and the flags."""
    return " ".join(shlex.quote(a) for a in [f"KERAS_BACKEND={keras.backend.backend()}", "python", "-m", module,
                                             *sys.argv[1:]])


def main(argv: list[str]) -> int | None:
    if len(argv) > 1:
        return usage_error("experiments.skip_experiment", f"unexpected arguments: {argv[1:]}")
    command = command_line("experiments.skip_experiment")
    try:
        run_experiment(settings_from_flags(), smoke=FLAGS.smoke, command=command)
    except (FileNotFoundError, ValueError) as error:  # Bad input: the message names it.
        print(f"experiments.skip_experiment: error: {error}", file=sys.stderr)
        sys.exit(2)
    except WeightsDownloadError as error:  # A failure while running: what to do offline.
        print(f"experiments.skip_experiment: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    run_cli(main)
