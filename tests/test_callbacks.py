"""The training callbacks called directly with hand-made logs on tiny models (no ``train``): the
backup's step counting, its files and their clean-up, divergence handling, the metric and RNG
restore, TensorBoard scalars and their truncation, the time budget and the epoch summary."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest

from fcn_keras import callbacks as cb
from fcn_keras.files import write_json_atomic


def _model(dropout: bool = False) -> keras.Model:
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Dropout(0.5)(inputs) if dropout else inputs
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="score")(x))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # lr 0: fit leaves the weights as they are
    return model


def _backup(tmp_path: Path, model: keras.Model, **kwargs) -> cb.ResumableBackup:
    backup = cb.ResumableBackup(tmp_path / "backup", **{"save_freq": 2, "steps_per_epoch": 4, "batch_size": 3, **kwargs})
    backup.set_model(model)
    return backup


def _spy_saves(backup: cb.ResumableBackup, monkeypatch) -> list[tuple[int, int]]:
    saves: list[tuple[int, int]] = []
    monkeypatch.setattr(backup, "save", lambda epoch, step: saves.append((epoch, step)))
    return saves


# --- ResumableBackup: when it saves ---------------------------------------------------------------


def test_mid_epoch_backups_count_steps_within_the_epoch_across_a_partial_epoch(tmp_path, monkeypatch):
    """save_freq 2, 4 steps an epoch: step 2 mid-epoch (step 4 is the epoch end's, saved as the
    next epoch's step 0); a resumed epoch continues at its offset, the next starts at step 0."""
    start = {"epoch": 1, "step": 1, "images": 12, "elapsed_s": 7.0}
    backup = _backup(tmp_path, _model(), start=start, restore_metrics=False)
    saves = _spy_saves(backup, monkeypatch)
    seen = []
    backup.begin_partial_epoch(1)  # epoch 1 (0-based) resumed after its step 1: 3 steps left
    for epoch, batches in ((1, 3), (2, 4)):
        backup.on_epoch_begin(epoch)
        for batch in range(batches):
            backup.on_train_batch_end(batch, {"loss": 0.5})
            seen.append((epoch, batch, saves[-1] if saves else None))
            saves.clear()
        backup.on_epoch_end(epoch, {"loss": 0.5})
        seen.append((epoch, "end", saves[-1] if saves else None))
        saves.clear()
    assert seen == [(1, 0, (1, 2)), (1, 1, None), (1, 2, None), (1, "end", (2, 0)),
                    (2, 0, None), (2, 1, (2, 2)), (2, 2, None), (2, 3, None), (2, "end", (3, 0))]
    assert backup.images_this_process == 7 * 3 and backup.images == 12 + 7 * 3
    assert backup.elapsed_s >= 7.0 and not backup.diverged


def test_a_non_finite_loss_stops_the_backups_for_good(tmp_path, monkeypatch):
    """The batch whose loss is NaN is not saved although its step is due, and neither is the
    epoch end, even with a finite loss in its logs."""
    backup = _backup(tmp_path, _model())
    saves = _spy_saves(backup, monkeypatch)
    backup.on_epoch_begin(0)
    backup.on_train_batch_end(0, {"loss": 1.0})
    backup.on_train_batch_end(1, {"loss": float("nan")})  # step 2: due
    backup.on_epoch_end(0, {"loss": 1.0})
    assert saves == [] and backup.diverged and backup.divergence == "the loss"


def test_non_finite_weights_at_an_epoch_end_stop_the_run_without_a_backup(tmp_path, monkeypatch, caplog):
    """One NaN element is enough. The checkpoint's check is reused only when it checked this
    epoch: a stale one (an earlier epoch's, all finite) is not trusted."""
    model = _model()
    tracker = cb.BestAndLastCheckpoint(tmp_path, "mean_iu", enabled=False)
    tracker.weights_checked_epoch, tracker.nonfinite = 0, []  # epoch 1 (0-based) not checked by it
    backup = _backup(tmp_path, model, best_tracker=tracker)
    saves = _spy_saves(backup, monkeypatch)
    kernel = model.get_layer("score").kernel
    kernel.assign(np.where(np.arange(6).reshape(1, 1, 3, 2) == 4, np.nan, 1.0).astype("float32"))
    with caplog.at_level(logging.ERROR, logger="fcn_keras.callbacks"):
        backup.on_epoch_end(1, {"loss": 1.0})
    assert saves == [] and backup.diverged and model.stop_training
    assert backup.divergence == "the weights (score/kernel)"
    assert "not backing up epoch 2: the weights (score/kernel) are not finite" in caplog.text


def test_describe_names_five_then_counts_the_rest():
    assert cb._describe([f"w{i}" for i in range(5)]) == "w0, w1, w2, w3, w4"
    assert cb._describe([f"w{i}" for i in range(7)]) == "w0, w1, w2, w3, w4 and 2 more"


# --- ResumableBackup: its files ---------------------------------------------------------------


def test_states_name_their_files_keep_the_epoch_end_and_remove_the_rest(tmp_path):
    model = _model()
    backup = _backup(tmp_path, model)
    folder = backup.backup_dir
    backup.save(1, 0)  # the end of epoch 1 (4 steps): global step 4
    backup.save(1, 2)
    state, epoch_state = cb.read_backup(folder), cb.read_backup(folder, cb.EPOCH_STATE_FILE)
    assert (state["epoch"], state["step"], state["global_step"], state["weights"], state["arrays"]) == (
        1, 2, 6, "state-000000006.weights.h5", "state-000000006.npz")
    assert (epoch_state["epoch"], epoch_state["step"], epoch_state["global_step"]) == (1, 0, 4)
    backup.save(1, 3)  # step 2's files are named by neither file any more: removed
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch.json", "state-000000004.npz", "state-000000004.weights.h5", "state-000000007.npz",
        "state-000000007.weights.h5", "state.json"]
    # After a divergence the epoch-end state is the one to resume from; the mid-epoch files go.
    assert backup.roll_back_to_epoch_end()["global_step"] == 4
    assert cb.read_backup(folder)["global_step"] == 4
    assert sorted(p.name for p in folder.iterdir()) == [
        "epoch.json", "state-000000004.npz", "state-000000004.weights.h5", "state.json"]


def test_a_divergence_before_any_epoch_end_removes_the_backup(tmp_path):
    backup = _backup(tmp_path, _model())
    backup.save(0, 2)
    assert backup.roll_back_to_epoch_end() is None and not backup.backup_dir.exists()


def test_a_failed_weights_write_leaves_the_previous_state_whole(tmp_path, monkeypatch):
    """state.json is replaced last: a write that fails (a full disk, a kill) before it leaves
    the previous state, naming files that exist, and no file under a state's name."""
    model = _model()
    backup = _backup(tmp_path, model)
    backup.save(0, 2)
    before = cb.read_backup(backup.backup_dir)

    def full_disk(path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model, "save_weights", full_disk)
    with pytest.raises(OSError, match="No space left"):
        backup.save(1, 0)
    assert cb.read_backup(backup.backup_dir) == before
    assert sorted(p.name for p in backup.backup_dir.iterdir()) == [
        "state-000000002.npz", "state-000000002.weights.h5", "state.json"]


def test_read_backup_refuses_a_state_without_its_keys(tmp_path):
    write_json_atomic(tmp_path / cb.STATE_FILE, {"epoch": 1, "step": 0})
    with pytest.raises(ValueError, match=r"state\.json is damaged \(not a backup state\)"):
        cb.read_backup(tmp_path)


def test_workers_at_different_steps_without_epoch_ends_are_refused_not_restarted(tmp_path):
    """Found by mutation testing: no epoch.json anywhere must not read as an agreement to start
    afresh (which would discard every worker's backup)."""
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder, step in zip(folders, (3, 2)):
        write_json_atomic(folder / cb.STATE_FILE, {"epoch": 0, "step": step, "global_step": step,
                                                   "weights": "w.h5", "arrays": "a.npz"})
    with pytest.raises(ValueError, match="share no epoch-end state"):
        cb.agreed_backup(folders, folders[0])


# --- Resume: metric accumulators and RNG states -------------------------------------------------


def _one_step_fit(model: keras.Model, callbacks: list) -> float:
    x, y = np.ones((2, 4, 4, 3), "float32"), np.zeros((2, 4, 4, 2), "float32")
    return model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=callbacks, shuffle=False).history["loss"][0]


def test_a_resumed_epoch_adds_the_saved_metric_sums_to_its_own(tmp_path):
    model = _model()
    model.get_layer("score").set_weights([np.full((1, 1, 3, 2), 1.0, "float32"), np.zeros(2, "float32")])
    step_loss = _one_step_fit(model, [])  # 9.0: each output is 3, the target 0
    folder = tmp_path / "backup"
    folder.mkdir()
    # The loss mean's sums, per image: a step of 2 images at loss 3 before the interruption.
    np.savez(folder / "a.npz", **{"metric/loss/total": np.float32(6.0), "metric/loss/count": np.float32(2.0)})
    start = {"epoch": 0, "step": 1, "global_step": 1, "weights": "w.h5", "arrays": "a.npz"}
    resumed = _one_step_fit(model, [_backup(tmp_path, model, start=start)])
    assert step_loss == pytest.approx(9.0) and resumed == pytest.approx((6.0 + 2 * 9.0) / 4)
    # An epoch-end state holds a finished epoch's sums: a resume at step 0 adds nothing.
    assert _one_step_fit(model, [_backup(tmp_path, model, start={**start, "step": 0})]) == pytest.approx(9.0)
    np.savez(folder / "a.npz", **{"metric/loss/total": np.float32(6.0)})  # a backup of another model
    with pytest.raises(ValueError, match=r"has no metric state 'loss/count'"):
        _one_step_fit(model, [_backup(tmp_path, model, start=start)])


def test_restore_backup_restores_weights_and_dropout_rng_states(tmp_path):
    model = _model(dropout=True)
    model.optimizer.build(model.trainable_variables)  # as after a step: the backup holds its state
    (seed,) = cb._seed_variables(model)
    saved_seed, saved_kernel = keras.ops.convert_to_numpy(seed.value), model.get_layer("score").get_weights()[0]
    backup = _backup(tmp_path, model)
    backup.save(0, 2)
    seed.assign(saved_seed + 5)
    model.get_layer("score").set_weights([saved_kernel + 1, np.zeros(2, "float32")])
    cb.restore_backup(model, backup.backup_dir, cb.read_backup(backup.backup_dir))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(seed.value), saved_seed)
    np.testing.assert_array_equal(model.get_layer("score").get_weights()[0], saved_kernel)


# --- TensorBoard --------------------------------------------------------------------------------


def _scalars(folder: Path) -> list[tuple[str, str, int, float]]:
    import tensorflow as tf

    return sorted((run.name, value.tag, event.step, round(float(tf.make_ndarray(value.tensor)), 4))
                  for run in sorted(p for p in folder.iterdir() if p.is_dir())
                  for path in sorted(run.glob("events.out.tfevents.*"))
                  for event in tf.compat.v1.train.summary_iterator(str(path)) for value in event.summary.value)


def test_tensorboard_scalars_are_at_the_one_based_epoch_and_truncated_after_epochs_done(tmp_path):
    board = cb.ScalarTensorBoard(tmp_path / "tb")
    for epoch in range(3):
        board.on_epoch_end(epoch, {"loss": 1.0 + epoch, "val_mean_iu": 0.5})
    board.on_train_end()
    assert _scalars(tmp_path / "tb") == [("train", "epoch_loss", 1, 1.0), ("train", "epoch_loss", 2, 2.0),
                                         ("train", "epoch_loss", 3, 3.0), ("validation", "epoch_mean_iu", 1, 0.5),
                                         ("validation", "epoch_mean_iu", 2, 0.5), ("validation", "epoch_mean_iu", 3, 0.5)]
    assert cb.truncate_tensorboard(tmp_path / "tb", epochs_done=2) == 2
    assert [(run, step) for run, _, step, _ in _scalars(tmp_path / "tb")] == [
        ("train", 1), ("train", 2), ("validation", 1), ("validation", 2)]
    assert cb.truncate_tensorboard(tmp_path / "tb", epochs_done=2) == 0
    disabled = cb.ScalarTensorBoard(tmp_path / "off", enabled=False)
    disabled.on_epoch_end(0, {"loss": 1.0})
    disabled.on_train_end()
    assert not (tmp_path / "off").exists()


# --- Time budget, progress, summary ------------------------------------------------------------


def test_time_budget_stops_at_the_epoch_end_that_reaches_it():
    spent = [4.9]
    budget = cb.TimeBudget(5.0, lambda: spent[0])
    budget.set_model(_model())
    budget.on_epoch_end(0)
    assert budget.stopped_after_epoch is None and not budget.model.stop_training
    spent[0] = 5.0
    budget.on_epoch_end(1)
    assert budget.stopped_after_epoch == 2 and budget.model.stop_training
    with pytest.raises(ValueError, match="seconds must be > 0"):
        cb.TimeBudget(float("nan"), lambda: 0.0)


def test_format_rate_has_one_decimal_from_ten_images_per_second():
    assert [cb.format_rate(r) for r in (9.87, 10.0, 10.04)] == ["9.87", "10.0", "10.0"]


def test_run_progbar_shows_the_runs_epoch_count():
    progbar = cb.RunProgbar(8)
    progbar.set_params({"epochs": 4, "steps": 2, "verbose": 1})  # a resumed epoch 4: fit(epochs=4)
    assert progbar.epochs == 8


def test_epoch_summary_times_the_first_step_apart_and_counts_each_epoch(monkeypatch, caplog):
    # perf_counter at each epoch's begin, its first step's end and its end: epoch 1 has 3 steps
    # in 5 s, the first taking 3 s; epoch 2 has 2 steps of 1 s.
    clock = iter([0.0, 3.0, 5.0, 10.0, 11.0, 12.0])
    monkeypatch.setattr(cb.time, "perf_counter", lambda: next(clock))
    summary = cb.EpochSummary(epochs=2, batch_size=4)
    with caplog.at_level(logging.INFO, logger="fcn_keras.callbacks"):
        summary.on_epoch_begin(0)
        for batch in range(3):
            summary.on_train_batch_end(batch)
        summary.on_epoch_end(0, {"loss": 0.25, "mean_iu": 0.5})
        summary.on_epoch_begin(1)
        for batch in range(2):
            summary.on_train_batch_end(batch)
        summary.on_epoch_end(1, {"loss": 0.125})
    first, second = summary.history
    assert (first["steps"], first["seconds"], first["images_per_s"], first["first_step_s"],
            first["steady_images_per_s"]) == (3, 5.0, 12 / 5, 3.0, 8 / 2)
    assert (second["steps"], second["seconds"], second["first_step_s"], second["steady_images_per_s"]) == (2, 2.0, 1.0, 4.0)
    assert ("epoch 1/2: loss 0.2500  mean_iu 0.5000  val_loss -  val_mean_iu -  5.0 s  2.4 img/s  "
            "(first step 3.0 s, then 4 img/s)") in caplog.text
