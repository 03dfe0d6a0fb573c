"""The paper's four metrics and the streaming ConfusionMatrix metric, against an independent
numpy reference; model.fit under JAX and under tf.distribute (subprocesses: the backend and the
logical devices are fixed at import)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import keras

from fcn_keras.constants import IGNORE_LABEL
from fcn_keras.metrics import ConfusionMatrix, confusion_matrix, scores

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = 6


# --- Independent reference: loops over pixels and classes, straight from section 5 -------------


def reference_scores(labels: np.ndarray, predictions: np.ndarray, n_cl: int) -> dict:
    n = np.zeros((n_cl, n_cl))
    for t, p in zip(labels.ravel().tolist(), predictions.ravel().tolist()):
        if t != IGNORE_LABEL:
            n[t, p] += 1
    t_i = [sum(n[i, j] for j in range(n_cl)) for i in range(n_cl)]
    col = [sum(n[j, i] for j in range(n_cl)) for i in range(n_cl)]
    in_truth = [i for i in range(n_cl) if t_i[i] > 0]
    in_either = [i for i in range(n_cl) if t_i[i] > 0 or col[i] > 0]
    iu = {i: n[i, i] / (t_i[i] + col[i] - n[i, i]) for i in in_either}
    return {
        "matrix": n,
        "pixel_accuracy": sum(n[i, i] for i in range(n_cl)) / sum(t_i),
        "mean_accuracy": sum(n[i, i] / t_i[i] for i in in_truth) / len(in_truth),
        "mean_iu": sum(iu.values()) / len(iu),
        "fw_iu": sum(t_i[i] * iu[i] for i in in_either) / sum(t_i),
        "per_class_iu": [iu.get(i) for i in range(n_cl)],
    }


def random_maps(seed: int, shape=(3, 17, 23), absent=(4,), predicted_only=(5,)):
    """Labels with void pixels and classes absent from the truth; one absent class is predicted."""
    rng = np.random.default_rng(seed)
    truth_classes = [c for c in range(CLASSES) if c not in absent and c not in predicted_only]
    labels = rng.choice(truth_classes, shape).astype("uint8")
    labels[rng.random(shape) < 0.2] = IGNORE_LABEL
    predicted_classes = [c for c in range(CLASSES) if c not in absent]
    predictions = np.where(rng.random(shape) < 0.6, labels, rng.choice(predicted_classes, shape))
    predictions = np.where(predictions == IGNORE_LABEL, 0, predictions).astype("uint8")
    return labels, predictions


def one_hot_logits(predictions: np.ndarray) -> np.ndarray:
    """Logits whose argmax is ``predictions`` (noise below the margin)."""
    noise = np.random.default_rng(9).random((*predictions.shape, CLASSES)).astype("float32")
    return noise + 2.0 * np.eye(CLASSES, dtype="float32")[predictions]


# --- scores() ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_the_reference_with_void_and_absent_classes(seed):
    labels, predictions = random_maps(seed)
    expected = reference_scores(labels, predictions, CLASSES)
    hist = confusion_matrix(labels, predictions, CLASSES)
    np.testing.assert_array_equal(hist, expected["matrix"])
    got = scores(hist)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12), key
    assert got["per_class_iu"][4] is None  # Absent from truth and prediction.
    assert got["per_class_iu"][5] == 0.0  # Predicted, absent from the truth: IU 0, counted.
    for value, reference in zip(got["per_class_iu"], expected["per_class_iu"]):
        assert (value is None and reference is None) or value == pytest.approx(reference, rel=1e-12)


def test_perfect_prediction_scores_one_and_bad_matrices_are_rejected():
    labels, _ = random_maps(3)
    perfect = scores(confusion_matrix(labels, np.where(labels == IGNORE_LABEL, 0, labels), CLASSES))
    assert perfect["pixel_accuracy"] == perfect["mean_accuracy"] == perfect["mean_iu"] == perfect["fw_iu"] == 1.0
    with pytest.raises(ValueError, match="counts no pixel"):
        scores(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"square \[C, C\]"):
        scores(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match="counts >= 0; it has negative entries"):
        scores(np.array([[2, -1], [0, 3]]))


def test_labels_outside_the_classes_and_the_ignore_label_are_not_counted():
    """Any label outside [0, C) is left out, as is the ignore label also when it lies inside
    (found by review: no test held a label in [C, 255), a negative one or such an ignore label)."""
    labels = np.array([[0, 1, 2, 3, 200, -1, 255]])
    predictions = np.array([[0, 1, 1, 0, 2, 2, 0]])
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3), [[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3, ignore_label=1),
                                  [[1, 0, 0], [0, 0, 0], [0, 1, 0]])


# --- ConfusionMatrix metric (TensorFlow, eager and XLA) -----------------------------------------


def test_streaming_updates_equal_one_big_update_and_reset():
    labels, predictions = random_maps(4, shape=(6, 13, 19))
    logits = one_hot_logits(predictions)
    streaming = ConfusionMatrix(CLASSES)
    for start in range(0, 6, 2):
        streaming.update_state(labels[start : start + 2], logits[start : start + 2])
    whole = ConfusionMatrix(CLASSES)
    whole.update_state(labels, logits)
    expected = reference_scores(labels, predictions, CLASSES)
    np.testing.assert_array_equal(np.asarray(streaming.confusion), expected["matrix"])
    np.testing.assert_array_equal(np.asarray(whole.confusion), expected["matrix"])
    assert float(streaming.result()) == pytest.approx(expected["mean_iu"], rel=1e-6)
    streaming.reset_state()
    assert int(np.asarray(streaming.confusion).sum()) == 0
    assert float(streaming.result()) == 0.0


def test_counts_past_int32_are_exact_under_xla():
    # 64 pixels weighted 2**24 each add 2**30 per update: one int32 would wrap at the second.
    labels = np.zeros((1, 8, 8), "uint8")
    labels[0, :, 4:] = 1
    logits = one_hot_logits(np.zeros((1, 8, 8), "int64"))  # Everything predicted as class 0.
    metric = ConfusionMatrix(CLASSES)
    update = tf.function(lambda y, p, w: metric.update_state(y, p, w), jit_compile=True)
    for _ in range(6):
        update(labels, logits, np.full((1,), 2.0**24, "float32"))
    expected = np.zeros((CLASSES, CLASSES), np.int64)
    expected[0, 0] = expected[1, 0] = 6 * 32 * 2**24  # 3 * 2**31 each
    np.testing.assert_array_equal(metric.confusion, expected)
    assert metric.confusion.dtype == np.int64
    assert float(metric.result()) == pytest.approx(scores(expected)["mean_iu"], rel=1e-6)


def test_update_compiles_under_xla_with_labels_channel_axis_and_sample_weight():
    labels, predictions = random_maps(5)
    logits = one_hot_logits(predictions)
    metric = ConfusionMatrix(CLASSES)
    update = tf.function(lambda y, p, w: metric.update_state(y, p, w), jit_compile=True)
    weights = np.array([1.0, 0.0, 2.0], "float32")  # Per image: image 1 dropped, image 2 twice.
    update(labels[..., None], logits, weights)
    expected = (
        reference_scores(labels[0], predictions[0], CLASSES)["matrix"]
        + 2 * reference_scores(labels[2], predictions[2], CLASSES)["matrix"]
    )
    np.testing.assert_array_equal(np.asarray(metric.confusion), expected)


def test_predictions_outside_the_classes_and_weights_with_a_channel_axis():
    labels = np.array([[0, 1, 2, 255]])
    with pytest.raises(ValueError, match=r"predictions must be classes in \[0, 3\); 2 are not, e.g. \[-1, 4\]"):
        confusion_matrix(labels, np.array([[4, 1, -1, 9]]), num_classes=3)  # 9 is at a void pixel: not counted.
    np.testing.assert_array_equal(confusion_matrix(labels, np.array([[0, 1, 2, 9]]), num_classes=3), np.eye(3))

    metric = ConfusionMatrix(np.int64(3))  # A numpy integer is an integer.
    logits = tf.one_hot([[[0, 1], [2, 2]]], 3)
    metric.update_state(np.array([[[0, 1], [2, 0]]])[..., None], logits, sample_weight=np.array([[[1, 0], [2, 1]]])[..., None])
    np.testing.assert_array_equal(metric.confusion, [[1, 0, 1], [0, 0, 0], [0, 0, 2]])
    assert metric.num_classes == 3 and type(metric.num_classes) is int
    # Weights are rounded to whole pixels (1.6 and 2.5 count twice, 0.7 once, 0.4 not), not truncated.
    rounded = ConfusionMatrix(3)
    rounded.update_state(np.array([[[0, 1], [2, 0]]])[..., None], logits, sample_weight=np.array([[[1.6, 0.4], [2.5, 0.7]]])[..., None])
    np.testing.assert_array_equal(rounded.confusion, [[2, 0, 1], [0, 0, 0], [0, 0, 2]])


def test_metric_serializes_and_rejects_a_class_count_mismatch():
    metric = ConfusionMatrix(num_classes=4, ignore_label=9, name="val_iu")
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert (restored.num_classes, restored.ignore_label, restored.name) == (4, 9, "val_iu")
    assert [v.name for v in restored.variables] == ["confusion_high", "confusion_low"]
    with pytest.raises(ValueError, match="y_pred must have 4 classes"):
        metric.update_state(np.zeros((1, 2, 2), "uint8"), np.zeros((1, 2, 2, 5), "float32"))


# --- model.fit under JAX and under tf.distribute (subprocesses) ----------------------------------

FIT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    backend = os.environ["KERAS_BACKEND"]
    if backend == "tensorflow":  # Two logical CPU devices for MirroredStrategy.
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    assert keras.backend.backend() == backend, keras.backend.backend()
    from fcn_keras.losses import SegmentationCrossEntropy
    import fcn_keras.metrics
    from fcn_keras.metrics import ConfusionMatrix, confusion_matrix

    # A low word of 8 pixels: counts carry into the high word at every update, on every replica.
    fcn_keras.metrics._LOW_WORD = 8

    classes = 5
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 12, 14, 3)).astype("uint8")
    labels = rng.integers(0, classes, (8, 12, 14)).astype("uint8")
    labels[rng.random(labels.shape) < 0.25] = 255
    labels[3] = 255  # An all-void image.

    def build():
        inputs = keras.Input((None, None, 3))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        model = keras.Model(inputs, keras.layers.Conv2D(classes, 3, padding="same")(x))
        # lr 0: the weights fit() evaluates with are the ones predict() uses afterwards.
        # (XLA under MirroredStrategy on logical CPUs is a known TF limitation: not compiled.)
        model.compile(keras.optimizers.SGD(0.0), loss=SegmentationCrossEntropy(),
                      metrics=[metric], jit_compile=backend == "jax")
        return model

    if backend == "tensorflow":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            metric = ConfusionMatrix(classes)
            model = build()
    else:  # keras.distribution data parallelism over 2 host devices (XLA_FLAGS below).
        import jax
        assert len(jax.devices()) == 2, jax.devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        metric = ConfusionMatrix(classes)
        model = build()
    history = model.fit(images, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert np.asarray(metric.confusion_high).sum() > 0
    logits = np.asarray(model.predict(images, batch_size=4, verbose=0))
    out = {
        "state": metric.confusion.tolist(),
        "expected": confusion_matrix(labels, logits.argmax(-1), classes).tolist(),
        "mean_iu": history.history["mean_iu"][-1],
        "loss": history.history["loss"][-1],
        "logits": logits.tolist(),
        "labels": labels.tolist(),
    }
    if backend == "jax":  # The loss under jax.jit, and zero gradients for an all-void batch.
        import jax
        loss = SegmentationCrossEntropy()
        out["jit_loss"] = float(jax.jit(loss)(labels, logits))
        grad = jax.grad(lambda p: loss(np.full((1, 12, 14), 255, "uint8"), p))(logits[:1])
        out["void_grad_max"] = float(np.abs(np.asarray(grad)).max())
        out["void_loss"] = float(loss(np.full((1, 12, 14), 255, "uint8"), logits[:1]))
    json.dump(out, open(sys.argv[1], "w"))
    """
)


def run_fit(tmp_path: Path, backend: str) -> dict:
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": str(REPO_ROOT),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    out = tmp_path / f"{backend}.json"
    result = subprocess.run(
        [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def batch_mean_losses(labels: np.ndarray, logits: np.ndarray, batch: int) -> list[float]:
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != IGNORE_LABEL
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None].astype(int), -1)[..., 0]
    return [
        -(picked[s] * valid[s]).sum() / valid[s].sum()
        for s in (slice(i, i + batch) for i in range(0, len(labels), batch))
    ]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_fit_under_jax_data_parallel_accumulates_the_exact_confusion_matrix(tmp_path):
    out = run_fit(tmp_path, "jax")
    np.testing.assert_array_equal(out["state"], out["expected"])
    assert np.sum(out["state"]) > 0
    assert out["mean_iu"] == pytest.approx(scores(np.array(out["expected"]))["mean_iu"], rel=1e-5)
    labels, logits = np.array(out["labels"]), np.array(out["logits"], "float32")
    # fit's logged loss is the mean of the per-batch means over valid pixels.
    assert out["loss"] == pytest.approx(np.mean(batch_mean_losses(labels, logits, 4)), rel=1e-4)
    assert out["jit_loss"] == pytest.approx(batch_mean_losses(labels, logits, 8)[0], rel=1e-4)
    assert out["void_loss"] == 0.0 and out["void_grad_max"] == 0.0


def test_fit_under_mirrored_strategy_sums_the_replicas(tmp_path):
    out = run_fit(tmp_path, "tensorflow")
    np.testing.assert_array_equal(out["state"], out["expected"])
    assert out["mean_iu"] == pytest.approx(scores(np.array(out["expected"]))["mean_iu"], rel=1e-5)
    # As under JAX: each global batch's mean over all its valid pixels (the replicas divide by the
    # all-reduced count), not the average of the 2 replicas' own means (1.7011 here, vs 1.6965).
    labels, logits = np.array(out["labels"]), np.array(out["logits"], "float32")
    assert out["loss"] == pytest.approx(np.mean(batch_mean_losses(labels, logits, 4)), rel=1e-4)
