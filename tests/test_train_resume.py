"""Resume after SIGKILL in the middle of an epoch: the same command continues exactly.

A CLI run is killed right after a mid-epoch backup of its second epoch; the same command is
run again. It must continue from that backup's epoch and step (not from the epoch's start), do
exactly the missing optimizer steps, keep one CSV row per epoch, and end with the weights and
the per-epoch log of a run that was never interrupted (same data stream, dropout RNG, optimizer
state, epoch metric accumulators).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from fcn_keras import build_fcn
from fcn_keras.data.synthetic import make_synthetic_voc
from fcn_keras.train import TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS = 3, 6

FLAGS = dict(
    variant="32s", fc_units=8, geometry="same", crop_size=32, batch_size=2, epochs=EPOCHS,
    steps_per_epoch=STEPS, backup_freq=2, val_steps=0, optimizer="adam", learning_rate=1e-3,
    weights="none", verbose=2,
)  # fmt: skip


def _command(data: Path, out: Path, cache: Path) -> list[str]:
    flags = [f"--{k}={v}" for k, v in FLAGS.items()]
    return [sys.executable, "-m", "fcn_keras.train", f"--data={data}", f"--output_dir={out}", f"--cache_dir={cache}", *flags]


def _state(out: Path) -> dict | None:
    path = out / "backup" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def test_sigkill_mid_epoch_then_same_command_resumes_exactly(tmp_path):
    data = make_synthetic_voc(tmp_path / "voc", num_train=6, num_val=2, size=(40, 48), seed=2)
    out, cache = tmp_path / "run", tmp_path / "cache"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    # --- Start, wait for a mid-epoch backup after the first epoch, SIGKILL ---
    process = subprocess.Popen(_command(data, out, cache), cwd=REPO_ROOT, env=env,
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
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    killed_at = _state(out)  # the state the rerun must continue from
    assert killed_at["step"] > 0 and killed_at["step"] % 2 == 0 and not (out / "summary.json").exists()
    assert killed_at["global_step"] == killed_at["epoch"] * STEPS + killed_at["step"]

    # --- The same command again ---
    result = subprocess.run(_command(data, out, cache), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {out} from its backup: epoch {killed_at['epoch'] + 1}, step {killed_at['step']}/{STEPS}" in result.stderr

    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == {k: killed_at[k] for k in ("epoch", "step", "global_step")}
    assert summary["epochs_done"] == EPOCHS and summary["status"] == "finished"
    # Exactly EPOCHS * STEPS optimizer steps: the interrupted epoch was not restarted at step 0.
    assert summary["global_step"] == EPOCHS * STEPS
    first = summary["history"][0]
    assert first["epoch"] == killed_at["epoch"] + 1 and first["steps"] == STEPS - killed_at["step"]
    rows = (out / "log.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(EPOCHS))

    # --- Same weights as a run that was never interrupted ---
    reference = tmp_path / "reference"
    train(TrainConfig(**FLAGS, data=str(data), output_dir=str(reference), cache_dir=str(cache)))
    resumed = keras.saving.load_model(out / "last.keras", compile=False).get_weights()
    uninterrupted = keras.saving.load_model(reference / "last.keras", compile=False).get_weights()
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("max |resumed - uninterrupted|:", max(float(np.abs(a - b).max()) for a, b in zip(resumed, uninterrupted)))
    # The interrupted epoch's logged loss and mean IU cover all its steps (accumulators restored).
    def table(lines):  # CSVLogger writes NA for keys missing in an epoch's logs
        return [[float("nan") if x == "NA" else float(x) for x in line.split(",")] for line in lines]

    expected = table((reference / "log.csv").read_text().splitlines()[1:])
    np.testing.assert_allclose(table(rows), expected, rtol=1e-5)
    # ... and training did move the weights away from the seeded initialisation.
    keras.utils.set_random_seed(0)
    initial = build_fcn("32s", fc_units=8, geometry="same").get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(resumed, initial))
