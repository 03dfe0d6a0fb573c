"""fcn_keras.train: the run's artefacts (TensorBoard scalars against log.csv), the poly schedule
across a budget stop, what reaches the training pipeline, --val_steps, staged training, bad input,
NaN loss (and the CLI's status 3), the CLI's flags.

Tiny runs: FCN-32s/16s with fc_units=8, 'same' geometry, 32 px crops, 2 steps per epoch, on a
synthetic VOC-layout dataset of a few 40x48 images.
"""

import csv
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from absl import flags

from fcn_keras import build_fcn
from fcn_keras import callbacks as cb
from fcn_keras.constants import TRAIN_SCALE_RANGE, VOC_CLASSES
from fcn_keras.data import convert as convert_lib
from fcn_keras.data.convert import convert
from fcn_keras.data.synthetic import make_synthetic_folder_dataset, make_synthetic_voc
from fcn_keras.losses import median_frequency_weights
from fcn_keras.files import write_json_atomic
from fcn_keras.optimizers import batches_applied
from fcn_keras.train import (
    TrainConfig, TrainingDiverged, _read_csv, _truncate_csv, build_model, class_weights_of, define_flags, main,
    recorded_config, resolve_config, resolve_run_data, train,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY = dict(
    variant="32s",
    fc_units=8,
    geometry="same",
    crop_size=32,
    batch_size=2,
    steps_per_epoch=2,
    epochs=2,
    backup_freq=1,
    verbose=0,
    optimizer="adam",
    learning_rate=1e-3,
    weights="none",
)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    """A VOCdevkit root with 4 train and 2 val images (converted on the fly by train)."""
    return make_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=4, num_val=2, size=(40, 48), seed=1)


@pytest.fixture(scope="module")
def run32(voc_root, tmp_path_factory) -> tuple[Path, dict]:
    """A finished tiny FCN-32s run (shared by several tests)."""
    out = tmp_path_factory.mktemp("run32")
    config = TrainConfig(data=str(voc_root), output_dir=str(out), cache_dir=str(out.parent / "cache32"), **TINY)
    return out, train(config)


def _weights(path: Path) -> list[np.ndarray]:
    return keras.saving.load_model(path, compile=False).get_weights()


# --- Artefacts --------------------------------------------------------------------------------


def test_run_writes_every_artefact(run32):
    out, summary = run32
    for name in ("best.keras", "last.keras", "log.csv", "config.json", "summary.json", "backup/state.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((out / "tensorboard" / "validation").glob("events.out.tfevents.*"))

    config = json.loads((out / "config.json").read_text())
    assert set(config["config"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert config["config"]["variant"] == "32s" and config["config"]["weights"] == "none"
    assert set(config["versions"]) >= {"fcn_keras", "python", "tensorflow", "keras", "jax", "numpy"}
    assert config["backend"] == keras.backend.backend()
    assert config["distribution"]["devices"] and "git_commit" in config
    assert config["monitor"] == "val_mean_iu" and config["data"]["num_train_examples"] == 4
    assert config["config"]["num_classes"] == 21 and config["class_names"] == list(VOC_CLASSES)  # auto: VOC's

    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    assert summary["global_step"] == 2 * 2
    assert summary["images_seen"] == 2 * 2 * 2 and summary["images_per_s"] > 0
    assert summary["best"]["monitor"] == "val_mean_iu" and 1 <= summary["best"]["epoch"] <= 2
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    for row in summary["history"]:  # the first step (compilation in epoch 1) is timed apart
        assert 0 < row["first_step_s"] <= row["seconds"] and row["steady_images_per_s"] > 0
    assert {"loss", "mean_iu", "val_loss", "val_mean_iu"} <= set(summary["final_metrics"])
    assert summary["final_metrics"]["epoch"] == 2  # Epochs counted from 1, as everywhere in the summary.

    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["epoch", "loss", "mean_iu"] and len(rows) == 3

    # best.keras holds the best epoch's weights, last.keras the final ones; both are FCN-32s.
    model = keras.saving.load_model(out / "last.keras", compile=False)
    assert model.name == "fcn32s" and model.get_layer("fc7").filters == 8
    state = json.loads((out / "backup" / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 0 and state["global_step"] == 4
    assert state["best"] == pytest.approx(summary["best"]["value"])


def test_tensorboard_scalars_equal_the_rows_of_log_csv(run32):
    """tensorboard/train and tensorboard/validation hold one scalar per log.csv column and epoch:
    tag epoch_<metric>, step = the epoch (1-based), the same value (float32)."""
    assert_tensorboard_equals_log_csv(run32[0], epochs=2)


def test_an_epoch_redone_after_a_divergence_is_in_tensorboard_once(voc_root, tmp_path):
    """Epoch 2 diverges (its NaN row is written), the rerun redoes it: log.csv and TensorBoard both
    keep only the redone epoch's values."""
    common = dict(data=str(voc_root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    train(TrainConfig(**{**TINY, "epochs": 1}, **common))
    with pytest.raises(TrainingDiverged):
        train(TrainConfig(**{**TINY, "epochs": 2, "learning_rate": 1e30}, **common))
    train(TrainConfig(**{**TINY, "epochs": 2}, **common))
    assert_tensorboard_equals_log_csv(tmp_path / "run", epochs=2)
    # The replaced files are gone, and TensorBoard's name order reads the kept events first.
    names = sorted(p.name for p in (tmp_path / "run" / "tensorboard" / "train").iterdir())
    assert len(names) == 2 and names[0].endswith(".truncated"), names


def test_tensorboard_files_cut_short_or_left_by_a_kill_do_not_stop_a_resume(run32, tmp_path):
    """A kill in mid-write leaves an event file cut short: its whole events are kept, not a
    DataLossError at every resume. A kill between writing the .truncated file and removing the
    files it replaces: they are not read twice."""
    import tensorflow as tf

    def scalars(folder):
        return sorted((event.step, value.tag) for path in sorted(folder.glob("events.out.tfevents.*"))
                      for event in tf.compat.v1.train.summary_iterator(str(path)) for value in event.summary.value)

    train_dir = tmp_path / "tensorboard" / "train"
    shutil.copytree(run32[0] / "tensorboard" / "train", train_dir)
    whole = scalars(train_dir)
    assert [step for step, _ in whole] == [1, 1, 2, 2]  # loss and mean_iu of 2 epochs
    (path,) = train_dir.glob("events.out.tfevents.*")
    path.write_bytes(path.read_bytes()[:-7])  # the last record cut short
    assert cb.truncate_tensorboard(tmp_path / "tensorboard", epochs_done=2) == 0
    assert scalars(train_dir) == whole[:-1]
    # A crash after the .truncated file was written, before the older file was removed.
    (kept,) = train_dir.glob("*.truncated")
    shutil.copy(run32[0] / "tensorboard" / "train" / path.name, path)
    assert sorted(train_dir.iterdir()) == [path, kept]
    assert cb.truncate_tensorboard(tmp_path / "tensorboard", epochs_done=1) == 1  # epoch 2's remaining scalar
    assert scalars(train_dir) == whole[:2]


def assert_tensorboard_equals_log_csv(out: Path, epochs: int) -> None:
    import tensorflow as tf

    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == [str(e) for e in range(epochs)]  # CSVLogger's epochs count from 0
    logged = {}
    for row in rows:
        for key, value in row.items():
            if key != "epoch":
                run, tag = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
                logged[(run, f"epoch_{tag}", int(row["epoch"]) + 1)] = float(value)
    written = {}
    for run in ("train", "validation"):
        for path in sorted((out / "tensorboard" / run).glob("events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    assert value.metadata.plugin_data.plugin_name == "scalars", value.tag
                    assert (run, value.tag, event.step) not in written, (run, value.tag, event.step)  # Written once.
                    written[(run, value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    assert sorted(written) == sorted(logged) == sorted(
        (run, f"epoch_{tag}", step) for run in ("train", "validation") for step in range(1, epochs + 1)
        for tag in ("loss", "mean_iu"))
    for key, value in logged.items():
        assert written[key] == pytest.approx(value, rel=1e-6), key


def test_log_lines_show_slow_rates_instead_of_zero():
    assert [cb.format_rate(r) for r in (0.04123, 2.349, 15.06, 1064.3, None)] == ["0.0412", "2.35", "15.1", "1064.3", "-"]


def test_saved_runs_load_compiled_after_import_fcn_keras(run32, voc_root, tmp_path):
    """A fresh interpreter: ``import fcn_keras`` registers the loss, metric and optimizer, so
    ``keras.saving.load_model`` with its default ``compile=True`` gives a model ready to evaluate
    (Adam: run32; Caffe's SGD: a run trained here)."""
    sgd = tmp_path / "sgd"
    train(TrainConfig(**{**TINY, "epochs": 1, "optimizer": "sgd", "learning_rate": 1e-4, "val_steps": 0}, data=str(voc_root),
                      output_dir=str(sgd), cache_dir=str(tmp_path / "cache")))
    script = """
import sys, warnings
import keras, numpy as np
import fcn_keras
for path in sys.argv[1:]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file holds no optimizer state (docs/training.md)
        model = keras.saving.load_model(path)
    logs = model.evaluate(np.zeros((1, 32, 32, 3), "uint8"), np.zeros((1, 32, 32), "int32"), verbose=0, return_dict=True)
    print(type(model.optimizer).__name__, type(model.loss).__name__, sorted(logs))
"""
    result = subprocess.run([sys.executable, "-c", script, str(run32[0] / "best.keras"), str(sgd / "best.keras")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-2:] == [
        "Adam SegmentationCrossEntropy ['loss', 'mean_iu']",
        "CaffeSGD SegmentationCrossEntropy ['loss', 'mean_iu']",
    ]


def test_finished_run_is_not_retrained(run32, monkeypatch):
    out, summary = run32
    before = (out / "last.keras").stat().st_mtime_ns
    config = json.loads((out / "config.json").read_text())["config"]
    assert train(TrainConfig(**config)) == summary
    # The same data named by a relative path with a trailing slash is the same run.
    data = Path(config["data"])
    monkeypatch.chdir(data.parent)
    assert train(TrainConfig(**{**config, "data": f"./{data.name}/"})) == summary
    assert (out / "last.keras").stat().st_mtime_ns == before


def test_a_killed_write_leaves_no_temporary_file_for_good(run32, tmp_path, caplog):
    """A kill in mid-write leaves atomic_path's temporary file (a backup: 1.6 GB for FCN-VGG16
    with Adam); the next run of the same command removes those whose writer is gone, and only
    those."""
    out, summary = run32
    run = tmp_path / "run"
    shutil.copytree(out, run)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphans = [run / f".tmp-{gone}-0a1b2c3d-last.keras", run / "backup" / f".tmp-{gone}-0a1b2c3d-state-000000009.weights.h5"]
    live = run / "backup" / f".tmp-{os.getpid()}-0a1b2c3d-state-000000010.weights.h5"  # a writer still running
    for path in (*orphans, live):
        path.write_bytes(b"half")
    config = json.loads((out / "config.json").read_text())["config"]
    with caplog.at_level(logging.WARNING, logger="fcn_keras.train"):
        assert train(TrainConfig(**{**config, "output_dir": str(run)}))["status"] == summary["status"]
    assert not any(path.exists() for path in orphans) and live.exists()
    assert f"removed 1 temporary file(s) that a stopped process left in {run / 'backup'}" in caplog.text


def test_the_released_nets_fixed_skip_upsamplings_stay_bilinear(voc_root, tmp_path):
    """--nolearn_skip_upsampling: upscore2 leaves training as the bilinear kernel it started as
    (the default learns it, and it moves); a resume may not change it."""
    kernels = {}
    for learn in (True, False):
        config = TrainConfig(**{**TINY, "variant": "16s", "epochs": 1, "learn_skip_upsampling": learn},
                             data=str(voc_root), output_dir=str(tmp_path / str(learn)), cache_dir=str(tmp_path / "cache"))
        train(config)
        kernels[learn] = keras.saving.load_model(tmp_path / str(learn) / "last.keras", compile=False).get_layer(
            "upscore2").get_weights()[0]
    bilinear = build_fcn("16s", fc_units=8, geometry="same").get_layer("upscore2").get_weights()[0]
    np.testing.assert_array_equal(kernels[False], bilinear)
    assert np.abs(kernels[True] - bilinear).max() > 0
    with pytest.raises(ValueError, match=r"different run \(learn_skip_upsampling: False -> True\)"):
        train(dataclasses.replace(config, epochs=2, learn_skip_upsampling=True))


def test_a_backup_file_cut_short_is_named_not_a_traceback(run32, tmp_path):
    out, _ = run32
    config = json.loads((out / "config.json").read_text())["config"]
    damaged = tmp_path / "damaged"  # Its state.json emptied (a disk that filled up, an editor).
    shutil.copytree(out, damaged)
    (damaged / "backup" / "state.json").write_text("")
    with pytest.raises(ValueError, match=rf"backup state {re.escape(str(damaged / 'backup' / 'state.json'))} is damaged "
                                         rf"\(.*\); delete {re.escape(str(damaged / 'backup'))} to start the run afresh"):
        train(TrainConfig(**{**config, "output_dir": str(damaged), "epochs": 3}))
    run = tmp_path / "run"
    shutil.copytree(out, run)
    state = cb.read_backup(run / "backup")
    weights = run / "backup" / state["weights"]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"backup '{re.escape(str(weights))}' cannot be read \(.*\): the run cannot "
                                         r"resume from it"):
        train(TrainConfig(**{**config, "output_dir": str(run), "epochs": 3}))


def test_a_damaged_log_row_is_dropped_on_resume_and_left_out_of_the_summary(run32, tmp_path, caplog):
    """log.csv rows a kill cut short, or garbled, were kept by the resume (an epoch below those
    done) and made the summary fail with float(None) after the training; both are dropped,
    counted and named, and the summary's last row is the epoch just trained."""
    out, _ = run32
    config = json.loads((out / "config.json").read_text())["config"]
    run = tmp_path / "run"
    shutil.copytree(out, run)
    log = run / "log.csv"
    header, *rows = log.read_text().splitlines()
    assert len(rows) == 2 and header.startswith("epoch,")
    log.write_text("\n".join([header, rows[0], "1,0.5", "x" + rows[1], rows[1]]) + "\n")  # lines 3 and 4 damaged
    with caplog.at_level(logging.WARNING, logger="fcn_keras.train"):
        summary = train(TrainConfig(**{**config, "output_dir": str(run), "epochs": 3}))
    assert f"{log}: dropped 2 damaged rows cut short, run together or garbled (line 3, 4)" in caplog.text
    with open(log, newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    assert summary["final_metrics"]["epoch"] == 3 and np.isfinite(summary["final_metrics"]["loss"])

    # The summary's reader leaves a damaged row out too (the log is the user's to edit).
    lines = log.read_text().splitlines()
    log.write_text("\n".join([*lines[:2], lines[2].replace(",", ",oops", 1), "2,0.5", *lines[3:]]) + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fcn_keras.train"):
        read = _read_csv(log)
    assert [row["epoch"] for row in read] == [0, 2]
    assert f"{log} line 3 left out of the summary" in caplog.text and f"{log} line 4 left out" in caplog.text


def _worker_states(folder: Path, step: int | None, epoch_step: int | None) -> Path:
    for name, value in ((cb.STATE_FILE, step), (cb.EPOCH_STATE_FILE, epoch_step)):
        if value is not None:
            write_json_atomic(folder / name, {"epoch": value // 2, "step": value % 2, "global_step": value,
                                              "weights": f"state-{value:09d}.weights.h5",
                                              "arrays": f"state-{value:09d}.npz"})
    return folder


def test_workers_resume_from_a_state_they_all_hold(tmp_path):
    """Each worker of a multi-worker run writes its own backup, so a kill can land between their
    writes. The workers then resume from the last epoch-end state if they agree on it, else the
    run is refused with what to do; agreeing workers resume from their latest state."""
    chief = _worker_states(tmp_path / "backup", 6, 4)
    worker = _worker_states(tmp_path / "workers" / "1" / "backup", 6, 4)
    assert cb.agreed_backup([chief, worker], worker)["global_step"] == 6
    _worker_states(chief, 8, None)  # the chief wrote step 8, the worker was killed first
    assert cb.agreed_backup([chief, worker], worker)["global_step"] == 4
    assert cb.agreed_backup([chief, worker], chief)["weights"] == "state-000000004.weights.h5"
    _worker_states(chief, None, 8)  # an epoch end: the chief's epoch state moved on too
    with pytest.raises(ValueError, match=r"backups are at different steps \(.*backup: 8, .*workers/1/backup: 6\) and "
                                         r"share no epoch-end state.*Delete the backup folders"):
        cb.agreed_backup([chief, worker], worker)
    assert cb.agreed_backup([tmp_path / "none1", tmp_path / "none2"], tmp_path / "none1") is None
    # train's choice of folders: every worker's where all are visible (a shared output_dir).
    from fcn_keras.distribute import Distribution
    from fcn_keras.train import _workers_backup

    two = Distribution(mode="multi_worker", backend="jax", worker_index=1, num_workers=2, is_chief=False)
    with pytest.raises(ValueError, match="share no epoch-end state"):
        _workers_backup(tmp_path, two, worker)
    three = dataclasses.replace(two, num_workers=3)  # a worker's folder not visible here: its own state
    assert _workers_backup(tmp_path, three, worker)["global_step"] == 6


def test_resume_with_other_flags_is_refused(run32):
    out, _ = run32
    config = json.loads((out / "config.json").read_text())["config"]
    config["variant"] = "16s"
    with pytest.raises(ValueError, match=r"holds the backup of a different run \(variant: '32s' -> '16s'\)"):
        train(TrainConfig(**config))
    # The resumed input stream is the original one only when it is deterministic on both sides.
    config.update(variant="32s", deterministic=not config["deterministic"])
    with pytest.raises(ValueError, match=r"different run \(deterministic: True -> False\)"):
        train(TrainConfig(**config))
    # Another buffer is another stream of records: the resumed batches would not be the skipped ones.
    config.update(deterministic=True, shuffle_buffer=config["shuffle_buffer"] // 2)
    with pytest.raises(ValueError, match=r"different run \(shuffle_buffer: 2048 -> 1024\)"):
        train(TrainConfig(**config))


def test_sgd_momentum_may_change_on_resume_but_not_to_or_from_zero(voc_root, tmp_path):
    """Keras' SGD has momentum variables only for a non-zero momentum: 0.9 -> 0 would load no
    optimizer state at all (Keras skips it with a warning: iterations, schedule and momenta lost).
    Refused before anything is built; and restore_backup itself refuses a state that does not fit."""
    out = tmp_path / "sgd"
    config = TrainConfig(**{**TINY, "epochs": 1, "optimizer": "sgd", "momentum": 0.9}, data=str(voc_root),
                         output_dir=str(out), cache_dir=str(tmp_path / "cache"))
    train(config)
    with pytest.raises(ValueError, match=r"holds an SGD run with momentum 0\.9: --momentum may change on resume, but "
                                         r"not to or from 0 .* Received: --momentum=0\.0$"):
        train(dataclasses.replace(config, epochs=2, momentum=0.0))
    state = cb.read_backup(out / "backup")
    model = build_fcn("32s", fc_units=8, geometry="same", weights=None)
    model.compile(optimizer=keras.optimizers.SGD(momentum=0.0), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"backup '.*state-000000002\.weights\.h5' holds an optimizer state that does "
                                         r"not fit this run's optimizer \(Skipping variable loading for optimizer"):
        cb.restore_backup(model, out / "backup", state)
    resumed = train(dataclasses.replace(config, epochs=2, momentum=0.5))  # another non-zero momentum: resumed
    assert resumed["epochs_done"] == 2 and resumed["optimizer_updates"] == 4


def test_run_recorded_before_fc6_had_a_choice_resumes_only_as_conv2d(run32, tmp_path):
    """Such a run's fc6 was a Conv2D, and its backup's weights file is keyed by that class: a
    resume with today's default (im2col) is refused with the flag to pass."""
    out, _ = run32
    old = tmp_path / "old_run"
    shutil.copytree(out, old)
    record = json.loads((old / "config.json").read_text())
    assert record["config"].pop("fc6_implementation") == "im2col"  # this run's, written by today's code
    (old / "config.json").write_text(json.dumps(record))
    assert recorded_config(old)["fc6_implementation"] == "conv"
    config = {**record["config"], "output_dir": str(old)}
    with pytest.raises(ValueError, match=r"different run \(fc6_implementation: 'conv' -> 'im2col'\)"):
        train(TrainConfig(**config))
    with pytest.raises(ValueError, match=r"fc6_implementation must be one of \('conv', 'im2col'\)\. Received: "
                                         r"fc6_implementation='fft'"):
        train(TrainConfig(**{**config, "fc6_implementation": "fft"}))


def test_weights_file_of_unknown_origin_needs_preprocessing(run32, tmp_path):
    """A VGG16 file that is none of the known ones (here: random, as a fine-tuned one would be)
    loads once --preprocessing says how its inputs were normalised; --init_from keeps its own."""
    path = tmp_path / "vgg16_finetuned.weights.h5"
    vgg = keras.applications.VGG16(include_top=False, weights=None)
    vgg.save_weights(path)
    config = resolve_config(TrainConfig(**{**TINY, "weights": str(path)}, data="records", output_dir=str(tmp_path / "run")))
    with pytest.raises(ValueError, match=r"cannot tell which input normalisation.*--preprocessing=caffe"):
        build_model(config)
    model, report = build_model(dataclasses.replace(config, preprocessing="torch"))
    assert model.get_layer("preprocess").mode == "torch" and report == {"weights": str(path)}
    for ours, saved in zip(model.get_layer("block1_conv1").get_weights(), vgg.get_layer("block1_conv1").get_weights()):
        np.testing.assert_array_equal(ours, saved)
    staged = resolve_config(TrainConfig(**{**TINY, "variant": "16s", "preprocessing": "torch"}, data="records",
                                        init_from=str(run32[0]), output_dir=str(tmp_path / "run16")))
    with pytest.raises(ValueError, match=r"normalises its input as 'caffe', not preprocessing='torch'"):
        build_model(staged)


def test_time_budget_stops_at_an_epoch_end_and_a_rerun_keeps_it(voc_root, tmp_path):
    out = tmp_path / "budget"
    config = TrainConfig(**{**TINY, "epochs": 3, "max_train_seconds": 1e-3}, data=str(voc_root), output_dir=str(out),
                         cache_dir=str(tmp_path / "cache"))
    summary = train(config)
    assert summary["status"] == "finished" and summary["stopped_by_time_budget"] is True
    assert summary["epochs_done"] == 1 and summary["global_step"] == TINY["steps_per_epoch"]
    assert len((out / "log.csv").read_text().splitlines()) == 2  # header + epoch 1
    assert (out / "last.keras").is_file() and (out / "best.keras").is_file()
    # The same budget again: nothing to do.
    before = (out / "last.keras").stat().st_mtime_ns
    assert train(config) == summary and (out / "last.keras").stat().st_mtime_ns == before
    # No limit: the run continues from epoch 1 to the 3 epochs asked for.
    longer = train(dataclasses.replace(config, max_train_seconds=0.0))
    assert longer["epochs_done"] == 3 and longer["stopped_by_time_budget"] is False
    assert longer["global_step"] == 3 * TINY["steps_per_epoch"]


def test_poly_schedule_is_laid_out_over_all_epochs_across_a_budget_stop_and_resume(voc_root, tmp_path, monkeypatch):
    """--lr_schedule=poly --epochs=3 stopped by its time budget after epoch 1 and continued: the
    rate after batch k is lr (1 - k/T)^0.9 with T = 3 epochs x 2 steps in both processes, ending at
    0 (docs/training.md, "Time budget")."""
    rates = []
    real_batch_end = cb.EpochSummary.on_train_batch_end

    def record_rate(self, batch, logs=None):
        real_batch_end(self, batch, logs)
        optimizer = self.model.optimizer
        rates.append((batches_applied(optimizer), float(keras.ops.convert_to_numpy(optimizer.learning_rate))))

    monkeypatch.setattr(cb.EpochSummary, "on_train_batch_end", record_rate)
    config = TrainConfig(**{**TINY, "epochs": 3, "val_steps": 0, "lr_schedule": "poly", "max_train_seconds": 1e-3},
                         data=str(voc_root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    assert train(config)["epochs_done"] == 1
    assert train(dataclasses.replace(config, max_train_seconds=0.0))["epochs_done"] == 3
    total = 3 * TINY["steps_per_epoch"]
    assert [step for step, _ in rates] == list(range(1, total + 1))
    expected = [TINY["learning_rate"] * (1 - step / total) ** 0.9 for step in range(1, total + 1)]
    assert [rate for _, rate in rates] == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert rates[-1][1] == 0.0


@pytest.mark.parametrize(
    "crop_size, batch_size, augmentation",
    [
        (32, 2, {"crop_size": 32, "scale_range": TRAIN_SCALE_RANGE, "flip": True}),
        (0, 1, {"crop_size": None, "scale_range": None, "flip": False}),  # Whole images, as they are.
    ],
    ids=["crops", "whole_images"],
)
def test_crops_train_with_random_scale_and_flip_and_whole_images_without(crop_size, batch_size, augmentation, voc_root,
                                                                         tmp_path, monkeypatch):
    """--crop_size>0: the training pipeline scales at random in TRAIN_SCALE_RANGE (0.5-2, the
    documented range), crops and flips; --crop_size=0: none of them. --shuffle_buffer reaches the
    pipeline. Checked on the arguments train passes to pipeline.train_dataset (stopped there: no
    training needed)."""
    from fcn_keras.data import pipeline

    assert TRAIN_SCALE_RANGE == (0.5, 2.0)  # docs/training.md: "random scale 0.5-2"
    calls = []

    class Built(Exception):
        pass

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        raise Built

    monkeypatch.setattr(pipeline, "train_dataset", spy)
    config = TrainConfig(**{**TINY, "crop_size": crop_size, "batch_size": batch_size, "val_steps": 0, "seed": 3,
                            "shuffle_buffer": 64},
                         data=str(voc_root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(Built):
        train(config)
    assert calls and calls[0] == ((resolve_run_data(config)["train"],),
                                  {"batch_size": batch_size, **augmentation, "shuffle_buffer": 64, "seed": 3,
                                   "deterministic": True})


def test_val_steps_validates_on_exactly_that_many_images(voc_root, tmp_path):
    """--val_steps=1 of the 2 validation images: the epoch's val_mean_iu is evaluate's mean IU of
    the same weights on the first image alone, not on both."""
    from fcn_keras.evaluate import evaluate_model

    cache = str(tmp_path / "cache")
    out = tmp_path / "run"
    summary = train(TrainConfig(**{**TINY, "epochs": 1, "val_steps": 1}, data=str(voc_root), output_dir=str(out),
                                cache_dir=cache))
    first = evaluate_model(out / "last.keras", str(voc_root), split="val", max_images=1, cache_dir=cache, verbose=False)
    both = evaluate_model(out / "last.keras", str(voc_root), split="val", cache_dir=cache, verbose=False)
    assert (first["num_images"], both["num_images"]) == (1, 2)
    assert first["mean_iu"] != pytest.approx(both["mean_iu"], abs=1e-3)  # The two tell 1 image from 2 apart.
    assert summary["final_metrics"]["val_mean_iu"] == pytest.approx(first["mean_iu"], abs=1e-6)


def test_checkpoint_freq_writes_every_nth_epoch_the_last_and_at_a_budget_stop(voc_root, tmp_path, monkeypatch):
    steps = TINY["steps_per_epoch"]
    saved, backed_up = [], []
    real_save, real_backup = cb.save_model_atomic, cb.ResumableBackup.save

    def spy_save(model, path):
        saved.append((Path(path).name, int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // steps))
        real_save(model, path)

    def spy_backup(self, epoch, step):
        backed_up.append((epoch, step))
        real_backup(self, epoch, step)

    monkeypatch.setattr(cb, "save_model_atomic", spy_save)
    monkeypatch.setattr(cb.ResumableBackup, "save", spy_backup)
    common = dict(data=str(voc_root), cache_dir=str(tmp_path / "cache"))
    summary = train(TrainConfig(**{**TINY, "epochs": 5, "checkpoint_freq": 2, "backup_freq": 0}, output_dir=str(tmp_path / "a"),
                                **common))
    assert saved == [("last.keras", 2), ("last.keras", 4), ("last.keras", 5)]
    assert backed_up == [(2, 0), (4, 0), (5, 0)]
    assert summary["epochs_done"] == 5 and summary["last_good_epoch"] == 5
    assert summary["best"]["epoch"] in (2, 4, 5)  # judged at the checkpointed epochs only
    assert len((tmp_path / "a" / "log.csv").read_text().splitlines()) == 6  # every epoch is logged

    # A time budget stops after epoch 1, which is not a multiple of 3: it is checkpointed all the same.
    saved.clear(), backed_up.clear()
    summary = train(TrainConfig(**{**TINY, "epochs": 4, "checkpoint_freq": 3, "max_train_seconds": 1e-3, "backup_freq": 0},
                                output_dir=str(tmp_path / "b"), **common))
    assert summary["stopped_by_time_budget"] and summary["epochs_done"] == 1
    assert saved == [("last.keras", 1)] and backed_up == [(1, 0)]


def test_resume_between_checkpoints_knows_which_epoch_last_keras_holds(voc_root, tmp_path, monkeypatch):
    """A run with checkpoints every 3 epochs killed in epoch 5, after its mid-epoch backup: the
    state to resume is mid-epoch 5 but last.keras is from epoch 3. A divergence after the resume
    keeps epoch 3's weights and says so."""
    out = tmp_path / "run"
    base = dict(TINY, epochs=6, checkpoint_freq=3, backup_freq=1, val_steps=0)
    common = dict(data=str(voc_root), output_dir=str(out), cache_dir=str(tmp_path / "cache"))
    real_batch_end = cb.EpochSummary.on_train_batch_end

    def killed_at_step_10(self, batch, logs=None):
        real_batch_end(self, batch, logs)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == 10:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(cb.EpochSummary, "on_train_batch_end", killed_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, **common))
    monkeypatch.undo()
    state = json.loads((out / "backup" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (4, 1)  # epoch 4 ended without a checkpoint
    assert json.loads((out / "backup" / "epoch.json").read_text())["epoch"] == 3
    epoch3 = _weights(out / "last.keras")

    with pytest.raises(TrainingDiverged, match=r"last good weights \(epoch 3\)"):
        train(TrainConfig(**{**base, "learning_rate": 1e30}, **common))
    assert json.loads((out / "summary.json").read_text())["last_good_epoch"] == 3
    for a, b in zip(epoch3, _weights(out / "last.keras")):
        np.testing.assert_array_equal(a, b)
    assert json.loads((out / "backup" / "state.json").read_text())["epoch"] == 3  # rolled back to epoch 3's state


def _kill_after(monkeypatch, updates: int) -> None:
    """Makes training raise KeyboardInterrupt (as Ctrl-C / a kill would end it) after that many updates."""
    real_batch_end = cb.EpochSummary.on_train_batch_end

    def killed(self, batch, logs=None):
        real_batch_end(self, batch, logs)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == updates:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(cb.EpochSummary, "on_train_batch_end", killed)


def test_epochs_below_an_interrupted_epoch_are_refused(voc_root, tmp_path, monkeypatch):
    """Killed in epoch 3 (step 1): --epochs=2 would finish epoch 3 and report 3 epochs of 2."""
    common = dict(data=str(voc_root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    _kill_after(monkeypatch, 6)  # The backup of update 5 (epoch 3, step 1) is the last written.
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**{**TINY, "epochs": 4, "val_steps": 0}, **common))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"holds a run interrupted in epoch 3 \(step 1/2\): --epochs must be at least 3 "
                                         r"to resume it\. Received: --epochs=2$"):
        train(TrainConfig(**{**TINY, "epochs": 2, "val_steps": 0}, **common))
    summary = train(TrainConfig(**{**TINY, "epochs": 3, "val_steps": 0}, **common))
    assert summary["epochs_done"] == 3 and summary["global_step"] == 6


def test_epochs_below_those_done_are_refused_after_a_kill_at_an_epoch_end(voc_root, tmp_path, monkeypatch):
    """Killed once epoch 2's backup was written, before the summary (found by review: --epochs=1
    then "finished" a run of 2 epochs, summary "epochs_requested 1, epochs_done 2")."""
    common = dict(data=str(voc_root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    _kill_after(monkeypatch, 5)  # The backup of update 4 (epoch 2's end) is the last written.
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**{**TINY, "epochs": 3, "val_steps": 0, "backup_freq": 0}, **common))
    monkeypatch.undo()
    assert cb.read_backup(tmp_path / "run" / "backup")["epoch"] == 2
    config = (tmp_path / "run" / "config.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds a run stopped after epoch 2: --epochs must be at least 2 to resume it\. "
                                         r"Received: --epochs=1$"):
        train(TrainConfig(**{**TINY, "epochs": 1, "val_steps": 0, "backup_freq": 0}, **common))
    assert (tmp_path / "run" / "config.json").read_bytes() == config  # Refused before anything is written.
    summary = train(TrainConfig(**{**TINY, "epochs": 2, "val_steps": 0, "backup_freq": 0}, **common))
    assert summary["epochs_done"] == 2 and summary["epochs_requested"] == 2


def test_a_resumed_process_that_dies_leaves_no_earlier_summary_to_pass_for_its_own(voc_root, tmp_path, monkeypatch):
    """A finished 1-epoch run continued to 3 epochs and killed in epoch 2: its summary.json (1
    epoch, finished) must not remain, or a rerun after the last backup would return it as final."""
    common = dict(data=str(voc_root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    train(TrainConfig(**{**TINY, "epochs": 1, "val_steps": 0}, **common))
    _kill_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**{**TINY, "epochs": 3, "val_steps": 0}, **common))
    monkeypatch.undo()
    assert not (tmp_path / "run" / "summary.json").exists()
    summary = train(TrainConfig(**{**TINY, "epochs": 3, "val_steps": 0}, **common))
    assert summary["epochs_done"] == 3 and json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_done"] == 3


def test_a_fresh_run_in_an_old_folder_removes_the_old_checkpoints(voc_root, tmp_path):
    """Without backup/ the same command starts anew: the old best.keras/last.keras must not pass
    for the new run's (here it diverges at once and writes none)."""
    common = dict(data=str(voc_root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    train(TrainConfig(**{**TINY, "epochs": 1, "val_steps": 0}, **common))
    assert (tmp_path / "run" / "best.keras").exists() and (tmp_path / "run" / "last.keras").exists()
    shutil.rmtree(tmp_path / "run" / "backup")
    with pytest.raises(TrainingDiverged, match=r"no checkpoint had been written and the backup held no epoch end"):
        train(TrainConfig(**{**TINY, "epochs": 1, "val_steps": 0, "learning_rate": 1e30}, **common))
    assert not (tmp_path / "run" / "best.keras").exists() and not (tmp_path / "run" / "last.keras").exists()


def test_divergence_before_the_first_checkpoint_says_when_it_was_due(voc_root, tmp_path, monkeypatch):
    """checkpoint_freq=2, NaN weights in epoch 1's last step: epoch 1 had no checkpoint, so nothing is kept."""
    real_batch_end = cb.EpochSummary.on_train_batch_end

    def nan_after_step_2(self, batch, logs=None):
        real_batch_end(self, batch, logs)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == 3:
            kernel = self.model.get_layer("score_fr").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    monkeypatch.setattr(cb.EpochSummary, "on_train_batch_end", nan_after_step_2)
    with pytest.raises(TrainingDiverged, match=r"no checkpoint had been written \(with --checkpoint_freq=2 the first is "
                                               r"due at epoch 2\) and the backup held no epoch end to go back to, so it "
                                               r"was removed: rerun"):
        train(TrainConfig(**{**TINY, "epochs": 4, "checkpoint_freq": 2, "val_steps": 0}, data=str(voc_root),
                          output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "run" / "backup").exists() and not (tmp_path / "run" / "last.keras").exists()


def test_best_starts_anew_when_a_resume_validates_on_another_set(voc_root, tmp_path, caplog):
    """Epochs 1-2 judged on val, epoch 3 without validation (the training mean IU), epoch 4 on val
    again: each change of basis restarts the best, so best.keras is never a training value
    reported as a validation one."""
    common = dict(data=str(voc_root), output_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    train(TrainConfig(**{**TINY, "epochs": 2}, **common))
    caplog.set_level(logging.INFO, logger="fcn_keras.train")
    summary = train(TrainConfig(**{**TINY, "epochs": 3, "val_steps": 0}, **common))
    assert summary["best"]["monitor"] == "mean_iu" and summary["best"]["epoch"] == 3
    assert "this run judges on {'monitor': 'mean_iu', 'val_split': None, 'val_steps': None}: the best starts anew" in caplog.text
    summary = train(TrainConfig(**{**TINY, "epochs": 4}, **common))
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert summary["best"] == {"monitor": "val_mean_iu", "value": pytest.approx(float(rows[3]["val_mean_iu"])), "epoch": 4}


def test_a_resume_with_another_weights_file_keeps_the_runs_normalisation(run32, tmp_path, shared_dir):
    """--weights may change on resume (the backup replaces the weights), but a file of another
    origin must not change the input normalisation the run was trained with."""
    path = shared_dir / "weights" / "vgg16_imagenet_notop_torchvision.weights.h5"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    out = tmp_path / "run"
    shutil.copytree(run32[0], out)
    config = json.loads((out / "config.json").read_text())["config"]
    summary = train(TrainConfig(**{**config, "epochs": 3, "weights": str(path), "output_dir": str(out)}))
    assert summary["epochs_done"] == 3
    assert keras.saving.load_model(out / "last.keras", compile=False).get_layer("preprocess").mode == "caffe"
    assert json.loads((out / "config.json").read_text())["preprocessing_mode"] == "caffe"


def test_accumulated_gradients_resume_exactly_from_a_backup_between_updates(voc_root, tmp_path, monkeypatch):
    """--gradient_accumulation_steps=2: a run killed after batch 3 (its backup holds one batch's
    gradient, not yet applied) and run again ends with the weights of the uninterrupted run."""
    base = dict(TINY, gradient_accumulation_steps=2, backup_freq=1, val_steps=0)
    common = dict(data=str(voc_root), cache_dir=str(tmp_path / "cache"))
    uninterrupted = train(TrainConfig(**base, **common, output_dir=str(tmp_path / "whole")))
    assert (uninterrupted["global_step"], uninterrupted["optimizer_updates"]) == (4, 2)

    out = tmp_path / "killed"
    real_batch_end = cb.EpochSummary.on_train_batch_end

    def killed_after_batch_4(self, batch, logs=None):  # before batch 4's backup: the last is batch 3's
        real_batch_end(self, batch, logs)
        if batches_applied(self.model.optimizer) == 4:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(cb.EpochSummary, "on_train_batch_end", killed_after_batch_4)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, **common, output_dir=str(out)))
    monkeypatch.undo()
    state = json.loads((out / "backup" / "state.json").read_text())
    assert (state["epoch"], state["step"], state["global_step"]) == (1, 1, 3)
    resumed = train(TrainConfig(**base, **common, output_dir=str(out)))
    assert resumed["resumed_from"] == {"epoch": 1, "step": 1, "global_step": 3}
    assert (resumed["global_step"], resumed["optimizer_updates"]) == (4, 2)
    for a, b in zip(_weights(out / "last.keras"), _weights(tmp_path / "whole" / "last.keras")):
        np.testing.assert_array_equal(a, b)


# --- Staged training --------------------------------------------------------------------------


def test_staged_16s_from_trained_32s(run32, voc_root, tmp_path):
    out32, _ = run32
    out = tmp_path / "run16"
    # Also bf16 mixed precision and the poly schedule. 96 px crops: pool5 is 3x3, for TensorFlow's
    # CPU (oneDNN) bf16 gradient of fc6's 7x7 kernel is wrong on a pool5 of 1 or 2 pixels.
    config = TrainConfig(**{**TINY, "variant": "16s", "epochs": 1, "val_steps": 0, "crop_size": 96}, data=str(voc_root),
                         init_from=str(out32), output_dir=str(out), cache_dir=str(tmp_path / "cache"),
                         mixed_precision="bf16", lr_schedule="poly")
    summary = train(config)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    init = json.loads((out / "config.json").read_text())["init"]
    assert init["init_from"] == str(out32 / "best.keras") and init["source_variant"] == "32s"
    assert {"block1_conv1", "fc6", "fc7", "score_fr"} <= set(init["copied"])
    assert {"upscore2", "score_pool4"} <= set(init["kept"])
    assert summary["best"]["monitor"] == "mean_iu"  # val_steps=0: best by training mean IU
    model = keras.saving.load_model(out / "best.keras", compile=False)
    assert model.name == "fcn16s" and model.get_layer("fc7").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("fc7").kernel.dtype == "float32" and np.isfinite(summary["final_metrics"]["loss"])


def _save(model: keras.Model, path: Path) -> str:
    model.save(path)
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: build_fcn("8s", fc_units=8, geometry="same"), r"FCN-8s, finer than the FCN-32s"),
        (lambda: build_fcn("32s", 5, fc_units=8, geometry="same"), r"5 classes, not num_classes=21"),
        (lambda: build_fcn("32s", fc_units=8, geometry="reference"), r"geometry is 'reference', not geometry='same'"),
        (lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), r"init_from must be a trained FCN"),
    ],
    ids=["finer_variant", "num_classes", "geometry", "not_an_fcn"],
)
def test_incompatible_init_from_is_refused(make, message, voc_root, tmp_path):
    path = _save(make(), tmp_path / "source.keras")
    config = TrainConfig(**TINY, data=str(voc_root), init_from=path, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=message) as error:
        train(config)
    assert "init_from" in str(error.value) and not (tmp_path / "out").exists()
    assert str(error.value).count("Received") <= 1  # The file is named once.


# --- Mixed precision (bf16: test_staged_16s_from_trained_32s) ---------------------------------


def test_fp16_trains_with_loss_scaling_and_resumes(voc_root, tmp_path):
    import h5py

    out = tmp_path / "fp16"
    config = TrainConfig(**{**TINY, "epochs": 1, "val_steps": 0, "learning_rate": 1e-2}, data=str(voc_root),
                         output_dir=str(out), cache_dir=str(tmp_path / "cache"), mixed_precision="fp16")
    first = train(config)
    assert first["status"] == "finished" and np.isfinite(first["final_metrics"]["loss"])
    state = json.loads((out / "backup" / "state.json").read_text())
    with h5py.File(out / "backup" / state["weights"]) as weights:  # Keras wrapped the optimizer for loss scaling
        assert "inner_optimizer" in weights["optimizer"]
    resumed = train(dataclasses.replace(config, epochs=2))
    assert resumed["epochs_done"] == 2 and resumed["global_step"] == 2 * TINY["steps_per_epoch"]
    # Backups are named by the batch's position: loss scaling skips updates (overflowing
    # gradients), so the optimizer's count would give two states one name.
    state = json.loads((out / "backup" / "state.json").read_text())
    assert (state["global_step"], state["weights"]) == (4, "state-000000004.weights.h5")
    assert resumed["optimizer_updates"] < 4  # Updates were skipped here (seeded): the case is exercised.
    model = keras.saving.load_model(out / "last.keras", compile=False)
    assert model.get_layer("fc6").dtype_policy.name == "mixed_float16" and model.get_layer("fc6").kernel.dtype == "float32"
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert keras.config.dtype_policy().name == "float32"


# --- Bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"variant": "4s"}, r"variant must be one of \('32s', '16s', '8s'\). Received: variant='4s'"),
        ({"crop_size": 16}, r"crop_size must be 0 \(whole images\) or a multiple of the network stride 32.*Received: crop_size=16"),
        ({"variant": "8s", "crop_size": 36}, r"network stride 8 of FCN-8s.*Received: crop_size=36"),
        ({"crop_size": 0, "batch_size": 2}, r"batch_size must be 1 with whole images"),
        ({"optimizer": "rmsprop"}, r"optimizer must be one of \('sgd', 'adam'\). Received: optimizer='rmsprop'"),
        ({"distribute": "tpu"}, r"distribute must be one of"),
        ({"at_once": True}, r"at_once needs variant '16s' or '8s'"),
        ({"max_train_seconds": -1.0}, r"max_train_seconds must be >= 0 \(0: no limit\). Received: max_train_seconds=-1.0"),
        ({"checkpoint_freq": 0}, r"checkpoint_freq must be an integer >= 1 \(epochs\). Received: checkpoint_freq=0"),
        ({"shuffle_buffer": -1}, r"shuffle_buffer must be an integer >= 0 \(records; 0 or 1: none\). Received: "
                                 r"shuffle_buffer=-1"),
        ({"val_canvas": "500x"}, r"val_canvas must be N or HxW with positive integers. Received: '500x'"),
        ({"val_batch_size": 0}, r"val_batch_size must be an integer >= 1. Received: val_batch_size=0"),
        ({"gradient_accumulation_steps": 0}, r"gradient_accumulation_steps must be an integer >= 1 \(1: an update every "
                                              r"batch\). Received: gradient_accumulation_steps=0"),
        ({"gradient_accumulation_steps": 3}, r"steps_per_epoch must be a multiple of gradient_accumulation_steps, so that "
                                              r"every epoch ends on an update. Received: steps_per_epoch=2, "
                                              r"gradient_accumulation_steps=3"),
    ],
)
def test_bad_flags_raise_clear_errors(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**{**TINY, **overrides}, output_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("learning_rate", 0.0, r"learning_rate must be a positive number\. Received: learning_rate=0\.0$"),
        ("learning_rate", -1e-3, r"learning_rate must be a positive number\. Received: learning_rate=-0\.001$"),
        ("learning_rate", float("nan"), r"learning_rate must be a positive number\. Received: learning_rate=nan$"),
        ("learning_rate", float("inf"), r"learning_rate must be a positive number\. Received: learning_rate=inf$"),
        ("momentum", -0.1, r"momentum must be in \[0, 1\)\. Received: momentum=-0\.1$"),
        ("momentum", 1.0, r"momentum must be in \[0, 1\)\. Received: momentum=1\.0$"),
        ("momentum", float("nan"), r"momentum must be in \[0, 1\)\. Received: momentum=nan$"),
        ("weight_decay", -1e-4, r"weight_decay must be a number >= 0\. Received: weight_decay=-0\.0001$"),
        ("weight_decay", float("nan"), r"weight_decay must be a number >= 0\. Received: weight_decay=nan$"),
        ("weight_decay", float("inf"), r"weight_decay must be a number >= 0\. Received: weight_decay=inf$"),
        ("seed", -1, r"seed must be an integer >= 0\. Received: seed=-1$"),
        ("seed", 2**32, r"seed must be an integer in \[0, 4294967295\]\. Received: seed=4294967296$"),
        ("verbose", 3, r"verbose must be one of \(0, 1, 2\)\. Received: verbose=3$"),
        ("val_steps", -1, r"val_steps must be an integer >= 0 \(0: no validation\)\. Received: val_steps=-1$"),
        ("val_steps", 1.5, r"val_steps must be an integer >= 0 \(0: no validation\)\. Received: val_steps=1\.5$"),
        ("backup_freq", -1, r"backup_freq must be an integer >= 0 \(steps; 0: backups at epoch ends only\)\. Received: "
                            r"backup_freq=-1$"),
        ("backup_freq", "5", r"backup_freq must be an integer >= 0 \(steps; 0: backups at epoch ends only\)\. Received: "
                             r"backup_freq='5'$"),
        ("max_train_seconds", float("inf"), r"max_train_seconds must be >= 0 \(0: no limit\)\. Received: "
                                            r"max_train_seconds=inf$"),
        ("fc_units", 0, r"fc_units must be an integer >= 1\. Received: fc_units=0$"),
        ("epochs", 0, r"epochs must be an integer >= 1\. Received: epochs=0$"),
        ("jit_compile", "maybe", r"jit_compile must be one of \('auto', 'true', 'false'\)\. Received: jit_compile='maybe'$"),
        ("mixed_precision", "fp8", r"mixed_precision must be one of \('none', 'bf16', 'fp16'\)\. Received: "
                                   r"mixed_precision='fp8'$"),
        ("lr_schedule", "cosine", r"lr_schedule must be one of \('constant', 'poly'\)\. Received: lr_schedule='cosine'$"),
        ("preprocessing", "rgb", r"preprocessing must be one of \('auto', .*\)\. Received: preprocessing='rgb'$"),
        ("geometry", "valid", r"geometry must be one of \(.*\)\. Received: geometry='valid'$"),
        ("val_canvas", "0x500", r"val_canvas must be N or HxW with positive integers\. Received: '0x500'$"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_flag(field, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        resolve_config(TrainConfig(**{**TINY, field: value}, output_dir=str(tmp_path)))


def test_the_automatic_learning_rate_is_sgds_and_adam_needs_one():
    """Found by review: --optimizer=adam on real data got SGD's paper-equivalent rate (1.7e-9 for
    FCN-8s), far below a float32 weight's resolution for Adam's per-weight steps: no training."""
    assert resolve_config(TrainConfig(data="records", variant="8s")).learning_rate == pytest.approx(1e-14 * 1.7e5)
    with pytest.raises(ValueError, match=r"learning_rate has no automatic value for optimizer='adam': the paper-equivalent "
                                         r"rates \(1.7e-09 for FCN-8s\) are SGD's. Pass --learning_rate"):
        resolve_config(TrainConfig(data="records", variant="8s", optimizer="adam"))
    assert resolve_config(TrainConfig(data="records", optimizer="adam", learning_rate=1e-4)).learning_rate == 1e-4
    assert resolve_config(TrainConfig(optimizer="adam")).learning_rate == 3e-4  # The demo's own.


def test_the_edges_of_the_ranges_are_accepted(tmp_path):
    edges = dict(learning_rate=1e-12, momentum=0.0, weight_decay=0.0, val_steps=0, backup_freq=0, seed=2**32 - 1,
                 max_train_seconds=0.0)
    resolved = resolve_config(TrainConfig(**{**TINY, **edges}, output_dir=str(tmp_path)))
    assert {key: getattr(resolved, key) for key in edges} == edges
    assert resolve_config(TrainConfig(**{**TINY, "momentum": 0.999}, output_dir=str(tmp_path))).momentum == 0.999


def test_crops_must_be_whole_cells_of_the_variants_stride_and_hold_a_pool5_cell(tmp_path):
    """FCN-8s takes any multiple of 8 from 32 (40: 5 cells of pool3), not 24 (a multiple of 8, but
    under pool5's 32); FCN-16s multiples of 16 (48 yes, 40 no)."""
    def resolved(variant: str, crop_size: int) -> TrainConfig:
        return resolve_config(TrainConfig(**{**TINY, "variant": variant, "crop_size": crop_size}, output_dir=str(tmp_path)))

    assert resolved("8s", 40).crop_size == 40 and resolved("16s", 48).crop_size == 48
    for variant, crop_size, stride in (("8s", 24, 8), ("16s", 40, 16), ("8s", 16, 8)):
        with pytest.raises(ValueError, match=rf"multiple of the network stride {stride} of FCN-{variant} and at least 32 "
                                             rf"\(pool5\)\. Received: crop_size={crop_size}$"):
            resolved(variant, crop_size)


def test_num_classes_must_be_two_or_more_where_the_data_does_not_say(tmp_path, monkeypatch):
    """Records without a manifest take any count >= 2 (background and one class)."""
    monkeypatch.chdir(tmp_path)
    assert resolve_config(TrainConfig(**TINY, data="records", num_classes=2, output_dir="run")).num_classes == 2
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 2\. Received: num_classes=1$"):
        resolve_config(TrainConfig(**TINY, data="records", num_classes=1, output_dir="run"))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute only")
def test_gradient_accumulation_is_refused_under_tf_distribute_only(tmp_path):
    config = TrainConfig(**{**TINY, "gradient_accumulation_steps": 2}, output_dir=str(tmp_path))
    assert resolve_config(config).gradient_accumulation_steps == 2
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps > 1 cannot run under tf\.distribute .* Received: "
                                         r"gradient_accumulation_steps=2, distribute='mirrored'$"):
        resolve_config(dataclasses.replace(config, distribute="mirrored"))


def test_auto_values_are_the_papers_on_real_data_and_the_demos_without(tmp_path, monkeypatch):
    """docs/training.md: the reference solve.py (25 x 4,000 iterations of one whole image, SGD,
    FCN-VGG16's 4096-wide fc6/fc7, the authors' geometry, ImageNet weights) on real data; the quick
    start's small setup without --data; explicit values win over both."""
    monkeypatch.chdir(tmp_path)
    fields = ("epochs", "steps_per_epoch", "batch_size", "crop_size", "fc_units", "geometry", "optimizer", "weights",
              "num_classes", "output_dir")
    paper = resolve_config(TrainConfig(data="records"))
    assert {k: getattr(paper, k) for k in fields} == dict(
        epochs=25, steps_per_epoch=4000, batch_size=1, crop_size=0, fc_units=4096, geometry="reference", optimizer="sgd",
        weights="imagenet", num_classes=21, output_dir=str(Path("runs") / "fcn8s"))
    demo = resolve_config(TrainConfig())
    assert {k: getattr(demo, k) for k in fields} == dict(
        epochs=10, steps_per_epoch=60, batch_size=4, crop_size=64, fc_units=256, geometry="same", optimizer="adam",
        weights="none", num_classes=21, output_dir=str(Path("runs") / "fcn8s"))
    assert demo.learning_rate == 3e-4
    # The TPAMI at-once net: its own rate (1e-10 unnormalised, not FCN-8s' 1e-14) and its own folder.
    at_once = resolve_config(TrainConfig(data="records", at_once=True))
    assert at_once.learning_rate == pytest.approx(1e-10 * 1.7e5)
    assert at_once.output_dir == str(Path("runs") / "fcn8s_at_once")
    # A later stage starts from its init_from model: no backbone weights to load.
    staged = resolve_config(TrainConfig(data="records", variant="16s", init_from="runs/fcn32s"))
    assert (staged.weights, staged.learning_rate, staged.output_dir) == (
        "none", pytest.approx(1e-12 * 1.7e5), str(Path("runs") / "fcn16s"))
    explicit = resolve_config(TrainConfig(crop_size=0, batch_size=1, epochs=3, geometry="reference", fc_units=16))
    assert (explicit.crop_size, explicit.batch_size, explicit.epochs, explicit.geometry, explicit.fc_units) == (
        0, 1, 3, "reference", 16)


def test_init_from_the_output_dir_itself_or_below_it_is_refused(tmp_path, monkeypatch):
    """Found by review: --init_from naming the run folder itself (a run folder means its
    best.keras) was accepted with the same --output_dir, whose new run then deletes that
    best.keras; and a relative init_from is compared as the folder it names."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    for init_from in (str(run), str(run) + "/", "run", "./run/best.keras", "run/../run/sub/best.keras"):
        with pytest.raises(ValueError, match=re.escape(f"init_from must lie outside output_dir, which the run replaces the "
                                                       f"models of: give the next stage its own --output_dir. Received: "
                                                       f"init_from={init_from!r}, output_dir={str(run)!r}")):
            resolve_config(TrainConfig(**{**TINY, "variant": "16s"}, init_from=init_from, output_dir=str(run)))
    for init_from in ("run32", str(tmp_path / "runs" / "best.keras"), str(tmp_path)):  # beside it, or above it
        assert resolve_config(TrainConfig(**{**TINY, "variant": "16s"}, init_from=init_from,
                                          output_dir=str(run))).init_from == init_from


def test_the_demos_cache_dir_must_be_writable(tmp_path):
    """The synthetic demo is generated into --cache_dir: refused before anything is built."""
    with pytest.raises(ValueError, match=r"cache_dir '/proc/fcn-cache' cannot be written: "):
        resolve_config(TrainConfig(**TINY, output_dir=str(tmp_path / "run"), cache_dir="/proc/fcn-cache"))


def test_an_unexpected_argument_is_a_usage_error(capsys):
    assert main(["fcn_keras.train", "data/voc"]) == 2
    assert "fcn_keras.train: error: unexpected arguments: ['data/voc']" in capsys.readouterr().err


def _finished_run(folder: Path, **overrides) -> TrainConfig:
    """A run folder as a finished 2-epoch run leaves it, written without training: config.json
    (the resolved config), backup/state.json and summary.json. Returns the run's config."""
    config = resolve_config(TrainConfig(**{**TINY, "variant": "16s", **overrides}, output_dir=str(folder)))
    write_json_atomic(folder / "config.json", {"config": dataclasses.asdict(config)})
    write_json_atomic(folder / "backup" / cb.STATE_FILE, {"epoch": 2, "step": 0, "global_step": 4, "weights": "w.h5",
                                                          "arrays": "a.npz"})
    write_json_atomic(folder / "summary.json", {"status": "finished", "epochs_done": 2})
    return config


#: A changed value of every field a resume must keep (all of _RESUME_KEYS but distribute, whose
#: strategies are not built here): the backup's weights, optimizer state or input stream would not
#: be this run's.
RESUME_CHANGES = dict(
    variant="8s", data="other", train_split="sbd_train", init_from="stage1.keras", num_classes=5,
    class_weights="median_frequency", steps_per_epoch=4, batch_size=4, gradient_accumulation_steps=2, crop_size=64,
    shuffle_buffer=64, optimizer="sgd", lr_schedule="poly", mixed_precision="bf16", seed=1, at_once=True,
    geometry="reference", fc_units=16, deterministic=False, preprocessing="torch", fc6_implementation="conv",
    learn_skip_upsampling=False,
)


@pytest.mark.parametrize("field", sorted(RESUME_CHANGES))
def test_a_resume_refuses_each_setting_it_must_keep(field, tmp_path, monkeypatch):
    """Refused before anything is built, naming the field, the recorded value and the new one."""
    from fcn_keras.train import _RESUME_KEYS

    assert set(RESUME_CHANGES) == set(_RESUME_KEYS) - {"distribute"}
    monkeypatch.chdir(tmp_path)
    config = _finished_run(tmp_path / "run", data="records")
    changed = dataclasses.replace(config, **{field: RESUME_CHANGES[field]})
    with pytest.raises(ValueError, match=re.escape(f"holds the backup of a different run ({field}: "
                                                   f"{getattr(config, field)!r} -> {RESUME_CHANGES[field]!r})")):
        train(changed)


def test_a_resume_takes_the_settings_it_may_change(tmp_path, monkeypatch):
    """Rates, validation, checkpointing, logging, the cache and the backbone file may change (the
    finished run is returned as it is); the data and init_from compare as the paths they name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "records").mkdir()
    config = _finished_run(tmp_path / "run", data=str(tmp_path / "records"), variant="16s",
                           init_from=str(tmp_path / "stage1.keras"))
    summary = {"status": "finished", "epochs_done": 2}
    free = dict(learning_rate=0.5, momentum=0.5, weight_decay=0.0, val_split="seg11valid", val_steps=1, val_canvas="64",
                val_batch_size=2, backup_freq=7, checkpoint_freq=2, max_train_seconds=60.0, jit_compile="false",
                cache_dir="elsewhere", verbose=2)
    assert train(dataclasses.replace(config, **free)) == summary
    # Listed class weights compare as the numbers they list.
    weighted = _finished_run(tmp_path / "weighted", data="records", num_classes=3, class_weights="1,2,0.5")
    assert train(dataclasses.replace(weighted, class_weights="1.0, 2, .5")) == summary
    with pytest.raises(ValueError, match=re.escape("different run (class_weights: '1,2,0.5' -> '1,2,1')")):
        train(dataclasses.replace(weighted, class_weights="1,2,1"))
    for data, init_from in (("records/", "./stage1.keras"), ("./records", "~/stage1.keras"), ("~/records", "stage1.keras")):
        assert train(dataclasses.replace(config, data=data, init_from=init_from)) == summary, (data, init_from)


def test_a_run_recorded_before_a_field_existed_reads_as_it_ran(tmp_path):
    """recorded_config: a field absent from config.json has its default, or its legacy value
    (fc6 was a Conv2D); a recorded value wins over both."""
    record = {"config": {"variant": "16s", "seed": 3}}
    write_json_atomic(tmp_path / "old" / "config.json", record)
    old = recorded_config(tmp_path / "old")
    assert set(old) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert (old["variant"], old["seed"], old["fc6_implementation"]) == ("16s", 3, "conv")
    assert {k: v for k, v in old.items() if k not in ("variant", "seed", "fc6_implementation")} == {
        k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k not in ("variant", "seed", "fc6_implementation")}
    write_json_atomic(tmp_path / "new" / "config.json", {"config": {**record["config"], "fc6_implementation": "im2col"}})
    assert recorded_config(tmp_path / "new")["fc6_implementation"] == "im2col"


def test_class_weights_of_the_listed_and_median_frequency_kinds(tmp_path):
    """median_frequency: Eigen & Fergus' frequencies over the images holding each class, from the
    converter's manifest; refused, naming the records, where the manifest has no pixel counts."""
    own = make_synthetic_folder_dataset(tmp_path / "mine", num_train=4, num_val=1, seed=1)
    data = tmp_path / "records"
    convert(None, data, **own, splits=("train",), verbose=False)
    train_glob = convert_lib.split_glob(data, "train")
    config = resolve_config(TrainConfig(**TINY, data=str(data), output_dir=str(tmp_path / "run")))
    assert class_weights_of(config, train_glob) is None
    assert class_weights_of(dataclasses.replace(config, class_weights="1,0.5,2"), train_glob) == [1.0, 0.5, 2.0]
    median = dataclasses.replace(config, class_weights="median_frequency")
    entry = json.loads((data / "manifest.json").read_text())["splits"]["train"]
    expected = median_frequency_weights(entry["class_pixels"], entry["class_image_pixels"])
    assert class_weights_of(median, train_glob) == pytest.approx(expected)
    assert expected != pytest.approx(median_frequency_weights(entry["class_pixels"]))
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["splits"]["train"]["class_pixels"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=re.escape(f"class_weights=median_frequency needs the class pixel counts that "
                                                   f"fcn_keras.data.convert records in manifest.json, and the training "
                                                   f"records {train_glob} have none")):
        class_weights_of(median, train_glob)


def test_a_resumed_log_keeps_the_epochs_done_and_drops_damaged_rows(tmp_path, caplog):
    """_truncate_csv, called directly: epochs from 0 in log.csv; epoch 2's row (to be done again)
    and the damaged rows go, blank lines too; a missing or empty log is left alone."""
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_loss\n0,1.5,2.0\n1,1.2\n\n1,1.25,1.75\nx,1,1\n2,1.0,1.5\n")
    with caplog.at_level(logging.WARNING, logger="fcn_keras.train"):
        _truncate_csv(log, 2)
    assert log.read_text().splitlines() == ["epoch,loss,val_loss", "0,1.5,2.0", "1,1.25,1.75"]
    assert f"{log}: dropped 2 damaged rows cut short, run together or garbled (line 3, 6)" in caplog.text
    _truncate_csv(log, 0)
    assert log.read_text().splitlines() == ["epoch,loss,val_loss"]
    _truncate_csv(tmp_path / "missing.csv", 1)
    assert not (tmp_path / "missing.csv").exists()
    (tmp_path / "empty.csv").write_text("")
    _truncate_csv(tmp_path / "empty.csv", 1)
    assert (tmp_path / "empty.csv").read_text() == ""


def test_the_summarys_log_rows_are_numbers_without_the_missing_values(tmp_path, caplog):
    """_read_csv: epochs as ints, values as floats, NA and empty cells left out (an epoch without
    validation), rows of another width left out with a warning; no log: no rows."""
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,val_loss\n0,1.5,NA\n1,1.25,\n2,1.0,1.5,9\n3,0.5\n4,0.25,0.75\n")
    with caplog.at_level(logging.WARNING, logger="fcn_keras.train"):
        rows = _read_csv(log)
    assert rows == [{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": 1.25}, {"epoch": 4, "loss": 0.25, "val_loss": 0.75}]
    assert f"{log} line 4 left out of the summary: another number of fields" in caplog.text
    assert f"{log} line 5 left out of the summary: another number of fields" in caplog.text
    assert _read_csv(tmp_path / "missing.csv") == []


def test_validation_on_a_canvas_scores_as_evaluate_does_and_a_canvas_too_small_is_refused(voc_root, tmp_path,
                                                                                        monkeypatch):
    """--val_canvas=64 --val_batch_size=3: validation reads batches of 3 on a 64x64 canvas (the 2 val
    images and a blank one: one shape for every batch), and the epoch's val_mean_iu is evaluate's
    mean IU of the same weights on the same canvas (padding and blanks void, not counted); a canvas
    smaller than the images stops the run before anything is written, naming an image."""
    from fcn_keras.data import pipeline
    from fcn_keras.evaluate import evaluate_model

    calls = []
    eval_dataset = pipeline.eval_dataset
    monkeypatch.setattr(pipeline, "eval_dataset", lambda *args, **kwargs: calls.append(kwargs) or eval_dataset(*args, **kwargs))
    cache = str(tmp_path / "cache")
    out = tmp_path / "canvas"
    summary = train(TrainConfig(**{**TINY, "epochs": 1}, data=str(voc_root), output_dir=str(out), cache_dir=cache,
                                val_canvas="64", val_batch_size=3))
    assert calls == [{"batch_size": 3, "canvas": (64, 64), "fill_last_batch": True}]
    results = evaluate_model(out / "last.keras", str(voc_root), split="val", batch_size=3, canvas=(64, 64), cache_dir=cache)
    assert results["num_images"] == 2
    assert summary["final_metrics"]["val_mean_iu"] == pytest.approx(results["mean_iu"], abs=1e-6)
    with pytest.raises(ValueError, match=r"val_canvas must hold every validation image; 2 are larger than 40x40 "
                                         r"\(height x width\), e.g. 'synth_\d+' \(\d+x\d+\): pass a larger one"):
        train(TrainConfig(**TINY, data=str(voc_root), output_dir=str(tmp_path / "small"), cache_dir=cache, val_canvas="40"))
    assert not (tmp_path / "small").exists()


def test_the_splits_to_train_and_validate_on_are_chosen_by_name(tmp_path):
    """A folder converted with other split names (the paper's sbd_train / seg11valid): training
    names them with --train_split / --val_split, and without them says which splits there are."""
    own = make_synthetic_folder_dataset(tmp_path / "mine", num_train=2, num_val=1, seed=2)
    for split in ("sbd_train", "seg11valid"):
        source = "train" if split == "sbd_train" else "val"
        (own["lists_dir"] / f"{split}.txt").write_text((own["lists_dir"] / f"{source}.txt").read_text())
    data = tmp_path / "records"
    convert(None, data, **own, splits=("sbd_train", "seg11valid", "val"), verbose=False)
    with pytest.raises(ValueError, match=re.escape(f"--data {str(data)!r} has no split 'train' to train on; it has "
                                                   "['sbd_train', 'seg11valid', 'val']: pass --train_split")):
        resolve_run_data(TrainConfig(data=str(data)))
    with pytest.raises(ValueError, match=re.escape("has no split 'valid' to validate on; it has ['sbd_train', "
                                                   "'seg11valid', 'val']: pass --val_split")):
        resolve_run_data(TrainConfig(data=str(data), train_split="sbd_train", val_split="valid"))
    globs = resolve_run_data(TrainConfig(data=str(data), train_split="sbd_train", val_split="seg11valid"))
    assert globs == {"train": convert_lib.split_glob(data, "sbd_train"), "val": convert_lib.split_glob(data, "seg11valid")}
    # The default val split is optional: without one, no validation.
    (data / "val-00000-of-00001.tfrecord").unlink()
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["splits"]["val"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert resolve_run_data(TrainConfig(data=str(data), train_split="sbd_train")) == {
        "train": convert_lib.split_glob(data, "sbd_train")}


def test_a_split_a_voc_root_lacks_names_the_lists_it_has(voc_root, tmp_path):
    """Found by review: a VOCdevkit root named only the splits asked for and converted ("it has ['val']")."""
    with pytest.raises(ValueError, match=re.escape(f"--data {str(voc_root)!r} has no split 'nope' to train on; it has "
                                                   "['train', 'trainval', 'val']: pass --train_split")):
        resolve_run_data(TrainConfig(data=str(voc_root), train_split="nope", cache_dir=str(tmp_path / "cache")))


def test_folders_it_cannot_write_and_flags_it_would_ignore_or_destroy_are_refused_first(voc_root, tmp_path):
    """Before the data is converted and the model built (found by review: a traceback at the end)."""
    with pytest.raises(ValueError, match=r"output_dir '/proc/fcn-run' cannot be written: "):
        resolve_config(TrainConfig(**TINY, output_dir="/proc/fcn-run"))
    with pytest.raises(ValueError, match=r"cache_dir '/proc/fcn-cache' cannot be written: "):
        resolve_config(TrainConfig(**TINY, data=str(voc_root), output_dir=str(tmp_path / "a"), cache_dir="/proc/fcn-cache"))
    # Records need no cache.
    resolve_config(TrainConfig(**TINY, data=str(tmp_path / "x-*.tfrecord"), output_dir=str(tmp_path / "a"), cache_dir="/proc/c"))
    run = tmp_path / "run"  # A model inside the folder whose best.keras/last.keras a new run deletes.
    with pytest.raises(ValueError, match=re.escape(f"init_from must lie outside output_dir, which the run replaces the models "
                                                   f"of: give the next stage its own --output_dir. Received: init_from="
                                                   f"{str(run / 'best.keras')!r}, output_dir={str(run)!r}")):
        resolve_config(TrainConfig(**{**TINY, "variant": "16s"}, init_from=str(run / "best.keras"), output_dir=str(run)))
    with pytest.raises(ValueError, match=r"weights applies only without init_from, whose model gives every weight: leave "
                                         r"--weights out\. Received: weights='vgg16\.h5', init_from='best\.keras'"):
        resolve_config(TrainConfig(**{**TINY, "variant": "16s", "weights": "vgg16.h5"}, init_from="best.keras",
                                   output_dir=str(tmp_path / "b")))


def test_data_glob_matching_nothing(tmp_path):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(ValueError, match=r"--data: .*nothing matches.*" + "nothing-"):
        train(TrainConfig(**TINY, data=pattern, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c")))
    assert not (tmp_path / "out").exists()  # Bad input leaves no empty run folder behind.


def test_data_of_no_image_and_an_output_dir_that_is_a_file_are_refused(tmp_path):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(tmp_path / "empty-00000.tfrecord")):
        pass  # A valid TFRecord file of no record.
    pattern = str(tmp_path / "empty-*.tfrecord")
    with pytest.raises(ValueError, match=re.escape(f"--data: the training data {pattern} holds no image")):
        train(TrainConfig(**TINY, data=pattern, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c")))
    assert not (tmp_path / "out").exists()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"output_dir must be a folder. Received: output_dir='.*a_file', a file"):
        train(TrainConfig(**TINY, data=pattern, output_dir=str(tmp_path / "a_file")))


def test_num_classes_and_class_weights_come_from_the_data(voc_root, tmp_path, caplog):
    own = make_synthetic_folder_dataset(tmp_path / "mine", num_train=4, num_val=2, seed=1)
    data = tmp_path / "records"
    convert(None, data, **own, verbose=False)
    for value, expected in [(data, 3), (convert_lib.split_glob(data, "train"), 3), (voc_root, 21), ("", 21),
                            (tmp_path / "nothing-*.tfrecord", 21)]:  # records without a manifest: VOC's
        assert resolve_config(TrainConfig(data=str(value) if value else "")).num_classes == expected, value
    # A count other than the data's would train its other classes as void, without a word.
    for value, count in [(data, 21), (voc_root, 5), ("", 3)]:
        with pytest.raises(ValueError, match=rf"num_classes must match the data, which has {21 if count != 21 else 3} classes"):
            resolve_config(TrainConfig(data=str(value) if value else "", num_classes=count))
    for weights, match in [("1,2", r"class_weights must be one finite weight >= 0 per class \(3\), not all 0\. Received: class_weights=\[1\.0, 2\.0\]"), ("1,x,2", r"none, median_frequency or one number")]:
        with pytest.raises(ValueError, match=match):
            resolve_config(TrainConfig(data=str(data), class_weights=weights))
    with pytest.raises(ValueError, match=r"median_frequency needs the class pixel counts .* have none"):
        class_weights_of(resolve_config(TrainConfig(class_weights="median_frequency")), str(tmp_path / "bare-*.tfrecord"))
    out = tmp_path / "out"
    summary = train(TrainConfig(**{**TINY, "epochs": 1}, data=str(data), output_dir=str(out), cache_dir=str(tmp_path / "c"),
                                class_weights="median_frequency"))
    assert summary["status"] == "finished"
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["num_classes"] == 3 and record["class_names"] == ["background", "road", "car"]
    entry = json.loads((data / "manifest.json").read_text())["splits"]["train"]
    expected = median_frequency_weights(entry["class_pixels"], entry["class_image_pixels"])  # Eigen & Fergus'.
    assert record["class_weights"] == pytest.approx(expected) and len(set(record["class_weights"])) == 3
    assert expected != pytest.approx(median_frequency_weights(entry["class_pixels"]))  # Not the split-wide ones.
    # A manifest from before the per-image counts: the split-wide frequencies, with a warning.
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["splits"]["train"]["class_image_pixels"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        weights = class_weights_of(resolve_config(TrainConfig(data=str(data), class_weights="median_frequency")),
                                   convert_lib.split_glob(data, "train"))
    assert weights == pytest.approx(median_frequency_weights(entry["class_pixels"]))
    assert "predates the per-image class counts: median frequencies over the whole split" in caplog.text
    model = keras.saving.load_model(out / "last.keras")
    assert model.outputs[0].shape[-1] == 3 and model.loss.class_weights == pytest.approx(record["class_weights"])


def test_cli_reports_bad_data_and_exits_nonzero(tmp_path):
    pattern = str(tmp_path / "missing-*.tfrecord")
    result = subprocess.run(
        [sys.executable, "-m", "fcn_keras.train", f"--data={pattern}", f"--output_dir={tmp_path / 'out'}", "--variant=32s"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "error: --data:" in result.stderr and "missing-" in result.stderr


def test_a_failed_imagenet_download_is_a_failure_with_status_1(voc_root, tmp_path):
    """Found by review: the README says a failed download exits 1 (status 2 is bad input), but
    train's --weights=imagenet download failure came out as a ValueError, status 2. The download
    is made to fail here as offline keras.applications fails (no network is touched)."""
    runner = textwrap.dedent("""
        import sys, keras
        def offline(*args, **kwargs):
            raise Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/vgg16")
        keras.applications.VGG16 = offline
        from fcn_keras import train
        from fcn_keras.console import run_cli
        sys.argv = ["fcn_keras.train", *sys.argv[1:]]
        train.define_flags()
        run_cli(train.main)
    """)
    result = subprocess.run(
        [sys.executable, "-c", runner, f"--data={voc_root}", "--variant=32s", "--fc_units=4096", "--epochs=1",
         f"--output_dir={tmp_path / 'out'}", f"--cache_dir={tmp_path / 'cache'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: weights='imagenet' downloads keras.applications' VGG16 and failed (Exception: URL "
                           "fetch failure on https://storage.googleapis.com/"), line
    assert "Offline, pass --weights=PATH" in line and "Traceback" not in result.stderr


def test_a_value_error_inside_fit_is_a_failure_not_bad_input(voc_root, tmp_path, monkeypatch):
    """main turns ValueErrors into one 'error:' line with exit status 2 (bad flags); one raised
    while fit runs (here by a callback, as Keras does for a shape mismatch) is not the user's
    input: it comes out as a RuntimeError, whose traceback absl prints, and the event files
    are closed."""
    def broken(self, batch, logs=None):
        raise ValueError("Incompatible shapes: (2, 32, 32, 21) vs. (2, 30, 32, 21)")

    monkeypatch.setattr(cb.EpochSummary, "on_train_batch_end", broken)
    closed = []
    real_end = cb.ScalarTensorBoard.on_train_end
    monkeypatch.setattr(cb.ScalarTensorBoard, "on_train_end", lambda self, logs=None: (closed.append(1), real_end(self)))
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=rf"training {re.escape(str(out))} failed inside model.fit: Incompatible") as info:
        train(TrainConfig(**{**TINY, "val_steps": 0}, data=str(voc_root), output_dir=str(out), cache_dir=str(tmp_path / "c")))
    assert isinstance(info.value.__cause__, ValueError) and closed


# --- NaN loss ---------------------------------------------------------------------------------


def test_nan_loss_stops_and_keeps_last_good_checkpoint(voc_root, tmp_path):
    out = tmp_path / "nan"
    base = dict(TINY, epochs=1, steps_per_epoch=3, val_steps=0)
    common = dict(data=str(voc_root), output_dir=str(out), cache_dir=str(tmp_path / "c"))
    train(TrainConfig(**base, **common))  # one good epoch
    good = _weights(out / "last.keras")
    state_before = json.loads((out / "backup" / "state.json").read_text())

    # Resume for a second epoch with an absurd learning rate: the loss becomes NaN/inf.
    with pytest.raises(TrainingDiverged, match=r"loss became NaN/inf.*last good weights \(epoch 1\)"):
        train(TrainConfig(**{**base, "epochs": 2, "learning_rate": 1e30}, **common))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["last_good_epoch"] == 1
    after = _weights(out / "last.keras")
    assert all(np.isfinite(w).all() for w in after)
    for a, b in zip(good, after):
        np.testing.assert_array_equal(a, b)
    state = json.loads((out / "backup" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (state_before["epoch"], state_before["step"]) == (1, 0)
    resumes = json.loads((out / "config.json").read_text())["resumes"]
    assert resumes[-1]["from"]["epoch"] == 1 and resumes[-1]["changed"]["learning_rate"] == [1e-3, 1e30]
    rows = (out / "log.csv").read_text().splitlines()[1:]  # the log shows the diverged epoch
    assert len(rows) == 2 and math.isfinite(float(rows[0].split(",")[1])) and not math.isfinite(float(rows[1].split(",")[1]))


def test_cli_exits_with_status_3_and_one_error_line_naming_the_last_good_epoch(run32, tmp_path):
    """A finished 2-epoch run continued by the CLI to 3 epochs with an absurd learning rate
    diverges in epoch 3: status 3 (README, docs/training.md), one 'error:' line that names epoch 2
    as the last good one and says what to do, no traceback, no summary on stdout."""
    out = tmp_path / "run"
    shutil.copytree(run32[0], out)
    flag_values = {**TINY, "data": json.loads((out / "config.json").read_text())["config"]["data"], "output_dir": str(out),
                   "cache_dir": str(tmp_path / "cache"), "epochs": 3, "learning_rate": 1e30}
    result = subprocess.run([sys.executable, "-m", "fcn_keras.train", *(f"--{k}={v}" for k, v in flag_values.items())],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 3, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line.lower()]
    assert len(errors) == 1, result.stderr[-3000:]
    assert re.fullmatch(rf"error: training of {re.escape(str(out))} stopped: .+ became NaN/inf at epoch 3 "
                        r"\(learning_rate=1e\+30\); best\.keras/last\.keras hold the last good weights \(epoch 2\) and "
                        r"the backup was rolled back to the end of that epoch: rerun with a lower --learning_rate to "
                        r"continue from there\.", errors[0]), errors[0]
    assert "Traceback" not in result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("{")]  # The summary of a finished run.
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["last_good_epoch"], summary["resumed_from"]["epoch"]) == ("diverged", 2, 2)


def test_divergence_in_the_first_epoch_does_not_claim_checkpoints_it_has_not_written(voc_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        train(TrainConfig(**{**TINY, "epochs": 1, "val_steps": 0, "learning_rate": 1e30}, data=str(voc_root),
                          output_dir=str(out), cache_dir=str(tmp_path / "cache")))
    assert not (out / "last.keras").exists() and not (out / "best.keras").exists() and not (out / "backup").exists()
    assert json.loads((out / "summary.json").read_text())["last_good_epoch"] is None
    # Strict JSON (jq, JavaScript): the NaN loss is null, not Python's NaN token.
    text = (out / "summary.json").read_text()
    json.loads(text, parse_constant=lambda token: pytest.fail(f"summary.json holds {token}, which is not JSON"))
    assert json.loads(text)["status"] == "diverged"
    message = str(error.value)
    assert "None" not in message and "hold the last good weights" not in message, message
    assert "no checkpoint had been written and the backup held no epoch end to go back to, so it was removed: rerun " \
           "with a lower --learning_rate to start again" in message
    # What the message tells to do works: the same folder, a sane rate.
    summary = train(TrainConfig(**{**TINY, "epochs": 1, "val_steps": 0, "learning_rate": 1e-3}, data=str(voc_root),
                                output_dir=str(out), cache_dir=str(tmp_path / "cache")))
    assert summary["status"] != "diverged" and summary["epochs_done"] == 1 and (out / "last.keras").exists()


def test_run_files_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    """A diverged run's NaN/inf metrics are written as null: Python's NaN token is not JSON."""
    path = write_json_atomic(tmp_path / "summary.json", {"loss": float("nan"), "history": [{"loss": float("inf")}, {"loss": 1.5}],
                                                         "best": (float("-inf"), 2), "epochs": 3})
    text = path.read_text()
    data = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    assert data == {"loss": None, "history": [{"loss": None}, {"loss": 1.5}], "best": [None, 2], "epochs": 3}
    assert not list(tmp_path.glob(".tmp-*"))


def test_weights_made_non_finite_by_the_last_step_stop_the_run(voc_root, tmp_path, monkeypatch):
    """The last step of epoch 2 leaves a NaN in score_fr's kernel after a finite loss: no
    checkpoint or backup of epoch 2 is written, and the run stops naming the weight."""
    out = tmp_path / "run"
    steps = TINY["steps_per_epoch"]
    real_batch_end = cb.EpochSummary.on_train_batch_end

    def nan_after_step_4(self, batch, logs=None):
        real_batch_end(self, batch, logs)
        if int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) == 2 * steps:
            kernel = self.model.get_layer("score_fr").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    monkeypatch.setattr(cb.EpochSummary, "on_train_batch_end", nan_after_step_4)
    with pytest.raises(TrainingDiverged, match=r"the weights \(score_fr/kernel\) became NaN/inf at epoch 2.*\(epoch 1\)"):
        train(TrainConfig(**{**TINY, "epochs": 3, "val_steps": 0}, data=str(voc_root), output_dir=str(out),
                          cache_dir=str(tmp_path / "cache")))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["last_good_epoch"] == 1 and summary["epochs_done"] == 1
    assert all(np.isfinite(w).all() for w in _weights(out / "last.keras"))
    state = json.loads((out / "backup" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 0)
    assert len((out / "log.csv").read_text().splitlines()) == 3  # epochs 1 and 2 logged, not 3


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow CPU kernel")
def test_bf16_on_a_cpu_with_a_tiny_pool5_is_warned_about():
    from fcn_keras.train import cpu_bf16_warning

    cpu, gpu = ["/device:CPU:0"], ["/device:GPU:0"]
    bf16 = TrainConfig(mixed_precision="bf16", geometry="same", crop_size=64)
    assert "pool5 is 2x2" in cpu_bf16_warning(bf16, cpu) and "--crop_size=64" in cpu_bf16_warning(bf16, cpu)
    assert "pool5 is 1x1" in cpu_bf16_warning(dataclasses.replace(bf16, crop_size=32), cpu)
    for fine in (dataclasses.replace(bf16, crop_size=96), dataclasses.replace(bf16, crop_size=0),
                 dataclasses.replace(bf16, mixed_precision="none"), dataclasses.replace(bf16, geometry="reference")):
        assert cpu_bf16_warning(fine, cpu) is None, fine
    assert cpu_bf16_warning(bf16, gpu) is None


# --- Memory -----------------------------------------------------------------------------------


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the leak is TensorFlow's gradient registry")
def test_trained_models_are_freed_for_the_next_one(voc_root, tmp_path):
    """TensorFlow registers a gradient function per traced ``all_reduce`` that holds the train
    step's graph and, through it, the model's variables (tensorflow/tensorflow#97697); train
    drops what it registered, so the stages of an experiment don't pile up in memory."""
    import gc

    from tensorflow.python.framework import ops as tf_ops

    def custom_gradients() -> set[str]:
        return {n for n in tf_ops._gradient_registry._registry if n.startswith("CustomGradient-")}

    def step_graphs() -> int:
        return sum(type(o).__name__ == "FuncGraph" and o.name == "one_step_on_data" for o in gc.get_objects())

    gc.collect()
    registered, graphs = custom_gradients(), step_graphs()
    for run in ("a", "b"):
        train(TrainConfig(**{**TINY, "epochs": 1}, data=str(voc_root), output_dir=str(tmp_path / run),
                          cache_dir=str(tmp_path / "cache")))
    gc.collect()
    assert custom_gradients() == registered
    assert step_graphs() == graphs


# --- CLI flags --------------------------------------------------------------------------------


def test_every_config_field_is_a_documented_flag():
    values = flags.FlagValues()
    define_flags(values)
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = values[field.name]
        assert len(flag.help) > 20, field.name
        assert flag.default == getattr(defaults, field.name), field.name
    assert set(values) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_named_commit_wins_over_the_checkout(monkeypatch):
    """FCN_KERAS_COMMIT, when set, is what a run records, even inside a checkout: the GPU
    machine's copy of the tree carries the .git of the session's start (seen on 2026-12-04: a
    call at 8287d05 recorded 71138a8-dirty)."""
    from fcn_keras.train import REPO_ROOT, git_commit

    monkeypatch.delenv("FCN_KERAS_COMMIT", raising=False)
    if (REPO_ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        assert git_commit().split("-")[0] == head
    monkeypatch.setenv("FCN_KERAS_COMMIT", "8287d05")
    assert git_commit() == "8287d05"
