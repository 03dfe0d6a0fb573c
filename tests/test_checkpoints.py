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
