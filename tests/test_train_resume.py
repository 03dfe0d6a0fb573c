"""Resume after SIGKILL in the middle of an epoch: the same command continues exactly.

A CLI run is killed right after a mid-epoch backup of its second epoch; the same command is
run again. It must continue from that backup's epoch and step (not from the epoch's start), do
exactly the missing optimizer steps, keep one CSV row per epoch, and end with the weights and
the per-epoch log of a run of the same command that was never interrupted (same data stream,
dropout RNG, optimizer state, epoch metric accumulators): bit-identical weights, under the
TensorFlow backend and under JAX (the GPU route). Under JAX this holds because every iterator
of the training dataset yields the same stream (``fcn_keras.train.rebuilt_per_iterator``): the
JAX trainer takes a batch from a first iterator to build the model and trains on a second one.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from fcn_keras import build_fcn
from fcn_keras.data.convert import convert
from fcn_keras.data.synthetic import make_synthetic_voc

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS = 3, 4

FLAGS = dict(
    variant="32s", fc_units=8, geometry="same", crop_size=32, batch_size=1, epochs=EPOCHS,
    steps_per_epoch=STEPS, backup_freq=2, val_steps=0, optimizer="adam", learning_rate=1e-3,
    weights="none", verbose=2,
)  # fmt: skip


def _command(data: Path, out: Path) -> list[str]:
    flags = [f"--{k}={v}" for k, v in FLAGS.items()]
    return [sys.executable, "-m", "fcn_keras.train", f"--data={data}", f"--output_dir={out}", f"--cache_dir={out}-cache", *flags]


def _state(out: Path) -> dict | None:
    path = out / "backup" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _stop(process: subprocess.Popen) -> None:
    """Kills ``process`` if it still runs, and reaps it."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def _table(lines: list[str]) -> list[list[float]]:
    """log.csv rows as floats (CSVLogger writes NA for keys missing in an epoch's logs)."""
    return [[float("nan") if x == "NA" else float(x) for x in line.split(",")] for line in lines]


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_sigkill_mid_epoch_then_same_command_resumes_exactly(tmp_path, request, backend):
    voc = make_synthetic_voc(tmp_path / "voc", num_train=6, num_val=2, size=(40, 48), seed=2)
    data = tmp_path / "records"  # converted once: the concurrent runs only read it
    convert(voc, data, verbose=False)
    out, reference = tmp_path / "run", tmp_path / "reference"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": backend}

    # --- An uninterrupted run of the same command, alongside ---
    reference_log = tmp_path / "reference.stderr"
    with open(reference_log, "w") as stderr:  # a file, not a pipe: nothing blocks it meanwhile
        uninterrupted_run = subprocess.Popen(_command(data, reference), cwd=REPO_ROOT, env=env,
                                             stdout=subprocess.DEVNULL, stderr=stderr)
    request.addfinalizer(lambda: _stop(uninterrupted_run))

    # --- Start, wait for a mid-epoch backup after the first epoch, SIGKILL ---
    process = subprocess.Popen(_command(data, out), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline and process.poll() is None:
            state = _state(out)
            if state and state["epoch"] >= 1 and state["step"] > 0:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"no mid-epoch backup appeared (returncode {process.poll()}, state {_state(out)})")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        _stop(process)
    assert process.returncode == -signal.SIGKILL
    killed_at = _state(out)  # the state the rerun must continue from
    assert killed_at["step"] > 0 and killed_at["step"] % 2 == 0 and not (out / "summary.json").exists()
    assert killed_at["global_step"] == killed_at["epoch"] * STEPS + killed_at["step"]

    # --- The same command again ---
    result = subprocess.run(_command(data, out), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {out} from its backup: epoch {killed_at['epoch'] + 1}, step {killed_at['step']}/{STEPS}" in result.stderr
    # Keras' epoch headers count the run's epochs, also over the rest of the interrupted one
    # (fitted alone: Keras printed "Epoch 2/2" there).
    headers = re.findall(r"^Epoch (\d+)/(\d+)$", result.stdout, re.MULTILINE)
    assert headers == [(str(e + 1), str(EPOCHS)) for e in range(killed_at["epoch"], EPOCHS)], result.stdout[-2000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == {k: killed_at[k] for k in ("epoch", "step", "global_step")}
    assert summary["epochs_done"] == EPOCHS and summary["status"] == "finished"
    # Exactly EPOCHS * STEPS optimizer steps: the interrupted epoch was not restarted at step 0.
    assert summary["global_step"] == EPOCHS * STEPS
    first = summary["history"][0]
    assert first["epoch"] == killed_at["epoch"] + 1 and first["steps"] == STEPS - killed_at["step"]
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(EPOCHS))

    # --- Bit-identical weights to the run that was never interrupted ---
    assert uninterrupted_run.wait(timeout=300) == 0, reference_log.read_text()[-3000:]
    resumed = keras.saving.load_model(out / "last.keras", compile=False).get_weights()
    uninterrupted = keras.saving.load_model(reference / "last.keras", compile=False).get_weights()
    print(backend, "max |resumed - uninterrupted|:", max(float(np.abs(a - b).max()) for a, b in zip(resumed, uninterrupted)))
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(a, b)
    # The interrupted epoch's logged loss and mean IU cover all its steps (accumulators restored).
    expected = _table((reference / "log.csv").read_text().splitlines()[1:])
    np.testing.assert_allclose(_table(rows), expected, rtol=1e-6)
    # ... and training did move the weights away from the seeded initialisation.
    keras.utils.set_random_seed(0)
    initial = build_fcn("32s", fc_units=8, geometry="same").get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(resumed, initial))


def test_ctrl_c_says_how_to_resume(tmp_path):
    """SIGINT (Ctrl-C) ends the CLI with status 130 and one line naming the backup to resume
    from, not a traceback."""
    voc = make_synthetic_voc(tmp_path / "voc", num_train=4, num_val=2, size=(40, 48), seed=2)
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
    # A terminal's Ctrl-C reaches a process started with Python's default SIGINT handling; one
    # started from a shell's background job (`cmd &` without job control) inherits SIGINT
    # ignored, and Python keeps it ignored: the run would go on to the end, exit 0 (seen when
    # this suite ran in such a job).
    process = subprocess.Popen(_command(voc, out), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and process.poll() is None and not _state(out):
            time.sleep(0.02)
        assert _state(out), f"no backup appeared (returncode {process.poll()})"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        _stop(process)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted: run the same command again to resume from its backup (epoch " in stderr
    assert "Traceback" not in stderr
