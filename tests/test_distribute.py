"""--distribute: MirroredStrategy on 2 logical CPUs, two MultiWorkerMirroredStrategy workers on
localhost, and keras.distribution.DataParallel under JAX with 2 host devices and with two
processes on localhost.

Each runs in subprocesses (devices and collectives are fixed when TensorFlow / JAX start).
Tiny FCN-32s (fc_units=8, 'same' geometry, 32 px crops, global batch 2, 2 steps).
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from fcn_keras import build_fcn
from fcn_keras.data.convert import convert
from fcn_keras.data.synthetic import make_synthetic_voc
from fcn_keras.train import TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parents[1]

FLAGS = dict(
    variant="32s", fc_units=8, geometry="same", crop_size=32, batch_size=2, epochs=1,
    steps_per_epoch=2, optimizer="sgd", learning_rate=1e-3, momentum=0.9, weights="none", verbose=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """A converted folder (manifest.json; 4 train, 2 val images), so no worker converts."""
    root = tmp_path_factory.mktemp("dist")
    voc = make_synthetic_voc(root / "voc", num_train=4, num_val=2, size=(40, 48), seed=3)
    convert(voc, root / "records")
    return root / "records"


def _cli(records: Path, out: Path, **extra) -> list[str]:
    flags = [f"--{k}={v}" for k, v in {**FLAGS, **extra}.items()]
    return [sys.executable, "-m", "fcn_keras.train", f"--data={records}", f"--output_dir={out}", *flags]


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "KERAS_BACKEND", "XLA_FLAGS")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _weights(path: Path) -> list[np.ndarray]:
    return keras.saving.load_model(path, compile=False).get_weights()


def _assert_trained(weights: list[np.ndarray]) -> None:
    """The weights differ from the seeded initialisation (seed 0) of the tiny FCN-32s."""
    keras.utils.set_random_seed(0)
    initial = build_fcn("32s", fc_units=8, geometry="same").get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(weights, initial))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_mirrored_on_two_logical_cpus(records, tmp_path):
    out = tmp_path / "mirrored"
    script = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from fcn_keras.train import TrainConfig, train
        summary = train(TrainConfig(data={str(records)!r}, output_dir={str(out)!r}, distribute="mirrored", val_steps=1, **{FLAGS!r}))
        print("SUMMARY", json.dumps(summary))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.split("SUMMARY ", 1)[1])
    assert summary["num_replicas"] == 2 and summary["status"] == "finished" and summary["global_step"] == 2
    assert np.isfinite(summary["final_metrics"]["loss"]) and "val_mean_iu" in summary["final_metrics"]
    devices = json.loads((out / "config.json").read_text())["distribution"]["devices"]
    assert [d.rsplit("/", 1)[-1] for d in devices] == ["device:CPU:0", "device:CPU:1"]
    _assert_trained(_weights(out / "last.keras"))


def test_mirrored_loss_and_update_equal_one_device_when_void_pixels_fall_unevenly():
    """Replica 0 holds 1 valid pixel, replica 1 holds 16: one SGD step on 2 logical CPUs gives
    the one-device loss and weights (a mean per replica, averaged, would weight the lone pixel
    as much as the other 16: measured 1.50 against one device's 1.35 before the fix)."""
    script = textwrap.dedent("""
        import json, numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from fcn_keras.losses import SegmentationCrossEntropy
        rng = np.random.default_rng(0)
        x = rng.normal(size=(2, 4, 4, 3)).astype("float32")
        y = rng.integers(0, 3, size=(2, 4, 4)).astype("uint8")
        y[0] = 255
        y[0, 0, 0] = 1
        def fit(strategy):
            with strategy.scope():
                keras.utils.set_random_seed(1)
                model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(3, 1)])
                model.compile(optimizer=keras.optimizers.SGD(1.0), loss=SegmentationCrossEntropy())
            loss = model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0).history["loss"][0]
            return loss, model.get_weights()
        one_loss, one_weights = fit(tf.distribute.get_strategy())
        mirrored_loss, mirrored_weights = fit(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
        difference = max(float(np.abs(a - b).max()) for a, b in zip(one_weights, mirrored_weights))
        print("RESULT", json.dumps([one_loss, mirrored_loss, difference]))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    one_loss, mirrored_loss, weight_difference = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert mirrored_loss == pytest.approx(one_loss, rel=1e-6)
    assert weight_difference < 1e-6


def _run_workers(command: list[str], envs: list[dict[str, str]]) -> None:
    """Runs ``command`` once per environment, all at the same time, and checks they succeed."""
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for env in envs]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]


def test_two_workers_on_localhost_end_with_identical_weights(records, tmp_path):
    out = tmp_path / "multi"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    configs = [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}) for index in range(2)]
    _run_workers(_cli(records, out, distribute="multi_worker"), [_env(TF_CONFIG=config) for config in configs])

    chief, worker = out, out / "workers" / "1"  # worker 0 is the chief; others keep their files apart
    summaries = [json.loads((d / "summary.json").read_text()) for d in (chief, worker)]
    assert [s["num_replicas"] for s in summaries] == [2, 2]
    assert [s["global_step"] for s in summaries] == [2, 2]
    config = json.loads((chief / "config.json").read_text())["distribution"]
    assert config["mode"] == "multi_worker" and config["num_workers"] == 2 and config["is_chief"]
    chief_weights, worker_weights = _weights(chief / "last.keras"), _weights(worker / "last.keras")
    for a, b in zip(chief_weights, worker_weights):
        np.testing.assert_array_equal(a, b)
    _assert_trained(chief_weights)


def test_jax_cli_with_data_parallel_on_two_host_devices_and_resume(records, tmp_path):
    """... with gradients accumulated over 2 steps (which tf.distribute cannot do, below)."""
    out = tmp_path / "jax"
    env = _env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    accumulate = dict(distribute="mirrored", val_steps=1, gradient_accumulation_steps=2)
    result = subprocess.run(_cli(records, out, **accumulate), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["backend"] == "jax"
    assert config["distribution"]["num_replicas"] == 2 and len(config["distribution"]["devices"]) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2 and summary["num_replicas"] == 2
    assert summary["optimizer_updates"] == 1
    assert np.isfinite(summary["final_metrics"]["loss"]) and "val_mean_iu" in summary["final_metrics"]
    # The same command with one more epoch resumes from the backup under JAX too.
    result = subprocess.run(_cli(records, out, **accumulate, epochs=2), cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == {"epoch": 1, "step": 0, "global_step": 2}
    assert summary["global_step"] == 4 and summary["optimizer_updates"] == 2 and summary["epochs_done"] == 2
    # A model trained under JAX loads here (TensorFlow backend) and predicts.
    model = keras.saving.load_model(out / "last.keras", compile=False)
    _assert_trained(model.get_weights())
    assert model.predict(np.zeros((1, 32, 32, 3), np.uint8), verbose=0).shape == (1, 32, 32, 21)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the tf.distribute refusal")
def test_accumulated_gradients_under_tf_distribute_are_refused(records, tmp_path):
    """Keras' gradient accumulation branches on the step inside the replica function, which
    MirroredStrategy cannot run (keras-team/keras#20582): refused before anything starts."""
    config = TrainConfig(data=str(records), output_dir=str(tmp_path / "run"), distribute="mirrored",
                         gradient_accumulation_steps=2, **FLAGS)
    with pytest.raises(ValueError, match=re.escape(
            "gradient_accumulation_steps > 1 cannot run under tf.distribute (--distribute with the TensorFlow backend)")):
        train(config)
    assert not (tmp_path / "run").exists()


def test_jax_two_processes_on_localhost_match_one_process_on_two_devices(records, tmp_path):
    """keras.distribution.initialize with two processes (one CPU device each, gloo collectives):
    both end with the weights of a single process training on two devices with the same global
    batch, to the bit, so each process fed its own share of every batch."""
    out, single = tmp_path / "processes", tmp_path / "single"
    coordinator = f"127.0.0.1:{_free_ports(1)[0]}"
    _run_workers(_cli(records, out, distribute="multi_worker"), [
        _env(KERAS_BACKEND="jax", KERAS_DISTRIBUTION_JOB_ADDRESSES=coordinator, KERAS_DISTRIBUTION_NUM_PROCESSES="2",
             KERAS_DISTRIBUTION_PROCESS_ID=str(index)) for index in range(2)
    ])
    result = subprocess.run(_cli(records, single, distribute="mirrored"), cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=240, env=_env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert result.returncode == 0, result.stderr[-3000:]

    config = json.loads((out / "config.json").read_text())["distribution"]
    assert config["mode"] == "multi_worker" and config["num_workers"] == 2 and config["num_replicas"] == 2
    assert config["is_chief"] and len(config["devices"]) == 2
    summaries = [json.loads((d / "summary.json").read_text()) for d in (out, out / "workers" / "1")]
    assert [s["global_step"] for s in summaries] == [2, 2]
    chief, worker, reference = (_weights(d / "last.keras") for d in (out, out / "workers" / "1", single))
    for a, b, c in zip(chief, worker, reference):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    _assert_trained(chief)
