"""best.keras / last.keras: written once per epoch (best is a link to last when it improves),
each keeping its own epoch's weights when the other is replaced; copy_atomic's fallback."""

import os
import time

import keras
import numpy as np
import pytest

from fcn_keras import callbacks as cb
from fcn_keras import files
from fcn_keras.callbacks import BestAndLastCheckpoint


def _model() -> keras.Model:
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="score")(inputs))
    model.compile(optimizer="sgd", loss="mse")  # as in training (save_model_atomic drops the optimizer)
    return model


def _saved_kernel(path) -> np.ndarray:
    return keras.saving.load_model(path, compile=False).get_layer("score").get_weights()[0]


def test_best_is_linked_to_last_and_keeps_its_epoch(tmp_path):
    model = _model()
    checkpoint = BestAndLastCheckpoint(tmp_path, "mean_iu")
    checkpoint.set_model(model)
    best, last = tmp_path / "best.keras", tmp_path / "last.keras"
    kernels = []
    for epoch, mean_iu in enumerate([0.5, 0.4, 0.6]):
        model.get_layer("score").set_weights([np.full((1, 1, 3, 2), epoch + 1.0, "float32"), np.zeros(2, "float32")])
        kernels.append(model.get_layer("score").get_weights()[0])
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "mean_iu": mean_iu})
        np.testing.assert_array_equal(_saved_kernel(last), kernels[-1])
        if epoch == 0:  # improved: one file on disk under two names
            assert os.path.samefile(best, last)
        if epoch == 1:  # not improved: last.keras replaced, best.keras still epoch 1's
            assert not os.path.samefile(best, last)
            np.testing.assert_array_equal(_saved_kernel(best), kernels[0])
    assert os.path.samefile(best, last) and checkpoint.best_epoch == 3 and checkpoint.best == 0.6
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_non_finite_score_is_never_the_best(tmp_path):
    """Found by review: a NaN first score became the best, and no later score could beat it."""
    model = _model()
    checkpoint = BestAndLastCheckpoint(tmp_path, "val_mean_iu")
    checkpoint.set_model(model)
    for epoch, score in enumerate([float("nan"), 0.5, float("inf"), 0.9]):
        checkpoint.on_epoch_end(epoch, {"loss": 1.0, "val_mean_iu": score})
        assert (checkpoint.best, checkpoint.best_epoch) == ((None, None), (0.5, 2), (0.5, 2), (0.9, 4))[epoch]
        assert (tmp_path / "best.keras").exists() == (epoch > 0) and checkpoint.last_good_epoch == epoch + 1


def test_copy_atomic_falls_back_to_a_byte_copy(tmp_path, monkeypatch):
    source = tmp_path / "a.bin"
    source.write_bytes(b"weights")

    def no_links(*args):
        raise OSError("hard links not supported")

    monkeypatch.setattr(files.os, "link", no_links)
    target = files.copy_atomic(source, tmp_path / "b.bin")
    assert target.read_bytes() == b"weights" and not os.path.samefile(source, target)
    with pytest.raises(FileNotFoundError):
        files.copy_atomic(tmp_path / "missing.bin", tmp_path / "c.bin")
    assert not (tmp_path / "c.bin").exists() and not list(tmp_path.glob(".tmp-*"))


def test_slow_checkpoint_writes_are_logged_with_their_time(caplog):
    with caplog.at_level("INFO", logger="fcn_keras.callbacks"):
        cb._log_slow_write("epoch 3: wrote last.keras", time.perf_counter())  # a tiny model: silent
        assert caplog.text == ""
        cb._log_slow_write("epoch 3: wrote last.keras", time.perf_counter() - 4.5)
    assert "epoch 3: wrote last.keras in 4.5 s" in caplog.text


def test_durable_writes_reach_the_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    """atomic_path(durable=True) fsyncs the complete temporary file, then the folder holding the
    new name (write_json_atomic always; a backup's state files too); a plain atomic_path does not."""
    synced = []
    real_fsync = files.os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    target = tmp_path / "state.json"
    files.write_json_atomic(target, {"step": 1})
    assert len(synced) == 2 and os.path.basename(synced[0]).startswith(".tmp-") and synced[0].endswith("-state.json")
    assert synced[1] == str(tmp_path)
    synced.clear()
    files.write_text_atomic(tmp_path / "table.md", "| a |")
    assert synced == []


def test_failed_writes_name_the_file_asked_for_and_leave_it_as_it_was(tmp_path):
    """Found by review: a folder at the target, a full disk or a read-only folder named the hidden
    temporary file (".tmp-123-0a1b2c3d-c.png -> c.png") or no file at all."""
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match=rf"Is a directory: '{tmp_path / 'adir'}'$"):
        files.write_text_atomic(tmp_path / "adir", "x")
    target = tmp_path / "full.json"
    target.write_text("old")
    with pytest.raises(OSError, match=rf"\[Errno 28\] No space left on device: '{target}'$"):
        with files.atomic_path(target) as temporary:
            temporary.write_text("partial")
            raise OSError(28, "No space left on device")  # As a write to a full disk raises it.
    with pytest.raises(PermissionError, match=r"for another file: '/elsewhere'$"):  # Another file's error: as it was.
        with files.atomic_path(target):
            raise PermissionError(13, "for another file", "/elsewhere")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["adir", "full.json"]


def test_json_records_hold_numbers_for_numpy_values_and_null_for_nan(tmp_path):
    """Found by review: numpy values were written as strings ("nan", "[ 1. nan]")."""
    import json

    path = files.write_json_atomic(tmp_path / "r.json", {"a": np.float32("nan"), "b": np.int64(3),
                                                         "c": np.array([1.0, np.nan]), "d": [np.float64(0.5), float("inf")]})
    assert json.loads(path.read_text()) == {"a": None, "b": 3, "c": [1.0, None], "d": [0.5, None]}


def test_saved_models_leave_out_the_optimizer_which_the_model_keeps(tmp_path):
    """save_model_atomic writes the weights only (no optimizer group in the file) and gives the
    optimizer back to the model, which goes on training with it."""
    import io
    import zipfile

    import h5py

    model = _model()
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    cb.save_model_atomic(model, tmp_path / "m.keras")
    assert model.optimizer is optimizer
    with zipfile.ZipFile(tmp_path / "m.keras") as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as h5:
        assert "optimizer" not in h5 and "layers" in h5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_non_finite_weights_leave_best_and_last_as_they_were(tmp_path, caplog):
    """One NaN element in one kernel after a finite loss: nothing is written, the last good
    epoch stays, and the weight checked is recorded for the backup to reuse."""
    model = _model()
    checkpoint = BestAndLastCheckpoint(tmp_path, "mean_iu")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0, "mean_iu": 0.5})
    before = _saved_kernel(tmp_path / "last.keras")
    kernel = model.get_layer("score").kernel
    kernel.assign(np.where(np.arange(6).reshape(1, 1, 3, 2) == 4, np.inf, 0.0).astype("float32"))
    with caplog.at_level("ERROR", logger="fcn_keras.callbacks"):
        checkpoint.on_epoch_end(1, {"loss": 1.0, "mean_iu": 0.9})
    assert "epoch 2 ended with non-finite values (score/kernel)" in caplog.text and "last good epoch: 1" in caplog.text
    assert (checkpoint.weights_checked_epoch, checkpoint.nonfinite) == (1, ["score/kernel"])
    assert (checkpoint.best, checkpoint.best_epoch, checkpoint.last_good_epoch) == (0.5, 1, 1)
    np.testing.assert_array_equal(_saved_kernel(tmp_path / "last.keras"), before)
    np.testing.assert_array_equal(_saved_kernel(tmp_path / "best.keras"), before)


def test_a_tie_keeps_the_earlier_best_and_a_missing_monitor_is_an_error(tmp_path):
    model = _model()
    checkpoint = BestAndLastCheckpoint(tmp_path, "val_mean_iu", best=0.5, best_epoch=1)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(1, {"loss": 1.0, "val_mean_iu": 0.5})
    assert (checkpoint.best, checkpoint.best_epoch) == (0.5, 1) and not (tmp_path / "best.keras").exists()
    with pytest.raises(KeyError, match=r"checkpoint monitor 'val_mean_iu' is not in the logs \['loss', 'mean_iu'\]"):
        checkpoint.on_epoch_end(2, {"loss": 1.0, "mean_iu": 0.7})


def test_a_disabled_checkpoint_writes_nothing_but_tracks_the_best(tmp_path):
    """Non-chief workers: no file, the same best (recorded in their backups)."""
    checkpoint = BestAndLastCheckpoint(tmp_path, "mean_iu", enabled=False)
    checkpoint.set_model(_model())
    checkpoint.on_epoch_end(0, {"loss": 1.0, "mean_iu": 0.5})
    assert (checkpoint.best, checkpoint.best_epoch, checkpoint.last_good_epoch) == (0.5, 1, 1)
    assert list(tmp_path.iterdir()) == []


def test_the_schedule_checkpoints_every_nth_epoch_the_last_and_a_stop():
    model = _model()
    schedule = cb.CheckpointSchedule(every=3, epochs=5)
    assert [schedule.due(epoch, model) for epoch in range(6)] == [False, False, True, False, True, True]
    model.stop_training = True  # a time budget or a NaN loss stopped the run after this epoch
    assert schedule.due(0, model)
    with pytest.raises(ValueError):
        cb.CheckpointSchedule(every=0, epochs=5)


def test_json_records_are_key_sorted_strict_and_end_with_a_newline(tmp_path):
    """A tuple's NaN is null too; the folder is made; keys sorted, one line per value, a final newline."""
    path = files.write_json_atomic(tmp_path / "new" / "r.json", {"b": (1.0, float("nan")), "a": 1})
    assert path.read_text() == '{\n  "a": 1,\n  "b": [\n    1.0,\n    null\n  ]\n}\n'


def test_orphaned_temporaries_are_those_of_no_process_on_this_machine(tmp_path, monkeypatch):
    """Found by review: a temporary name whose number is beyond any process id made os.kill raise an
    OverflowError, and remove_orphaned_temporaries (run at the start of training) with it."""
    live = tmp_path / f".tmp-{os.getpid()}-0a1b2c3d-last.keras"
    dead = tmp_path / ".tmp-4194305-0a1b2c3d-best.keras"  # above Linux's largest pid_max
    beyond = tmp_path / ".tmp-99999999999-0a1b2c3d-state.json"  # beyond pid_t
    other = tmp_path / ".tmp-notes.txt"  # not atomic_path's
    for path in (live, dead, beyond, other):
        path.write_text("x")
    assert files.remove_orphaned_temporaries(tmp_path) == sorted([dead, beyond])
    assert sorted(tmp_path.iterdir()) == sorted([live, other])

    def another_users(pid, signal):  # os.kill of a live process of another user, when not root
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(files.os, "kill", another_users)
    dead.write_text("x")
    assert files.remove_orphaned_temporaries(tmp_path) == [] and dead.exists()
