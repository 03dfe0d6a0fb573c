"""fcn_keras.optimizers.CaffeSGD: Caffe's SGD update of the reference solvers, step by step
against the formula under both backends (TensorFlow hands update_step the tf.Variable, named
``bias:0``, JAX the Keras variable, named ``bias``) and on both replicas of a MirroredStrategy
(whose second copy is named ``bias/replica_1:0``); what --optimizer=sgd builds; config round
trip; gradient accumulation (Caffe's ``iter_size``). The learning rate: the poly schedule, the
automatic paper-equivalent rate and the two profiles of resolve_config, Adam's decoupled decay.
(The poly schedule across a time-budget stop and resume: tests/test_train.py.)"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from fcn_keras import build_fcn
from fcn_keras.losses import SegmentationCrossEntropy
from fcn_keras.optimizers import CaffeSGD, batches_applied
from fcn_keras.train import PAPER_PROFILE, TrainConfig, make_optimizer, paper_learning_rate, resolve_config


def caffe_sgd_reference(weights, gradients, *, lr, mu, l2, bias_lr_mult, is_bias):
    """Caffe's SGDSolver with momentum, written out: the L2 term joins the gradient of a kernel
    (decay_mult 1; biases decay_mult 0), biases learn at bias_lr_mult times the rate,
    ``v = mu v - lr g; w += v``. Returns the weights after each step."""
    w, v, out = weights.astype(np.float64), np.zeros_like(weights, np.float64), []
    for g in gradients:
        rate = lr * bias_lr_mult if is_bias else lr
        g = g if is_bias else g + l2 * w
        v = mu * v - rate * g
        w = w + v
        out.append(w.copy())
    return out


def test_update_matches_caffe_over_steps():
    rng = np.random.default_rng(0)
    kernel0, bias0 = rng.normal(size=(3, 3, 2, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")
    kernel, bias = keras.Variable(kernel0, name="kernel"), keras.Variable(bias0, name="bias")
    grads = [(rng.normal(size=kernel0.shape).astype("float32"), rng.normal(size=bias0.shape).astype("float32")) for _ in range(3)]
    settings = dict(lr=0.01, mu=0.9, l2=5e-2, bias_lr_mult=2.0)
    optimizer = CaffeSGD(settings["lr"], momentum=settings["mu"], l2=settings["l2"], bias_lr_mult=settings["bias_lr_mult"])

    expected_kernel = caffe_sgd_reference(kernel0, [g for g, _ in grads], **settings, is_bias=False)
    expected_bias = caffe_sgd_reference(bias0, [g for _, g in grads], **settings, is_bias=True)
    for step, (g_kernel, g_bias) in enumerate(grads):
        optimizer.apply_gradients([(g_kernel, kernel), (g_bias, bias)])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), expected_kernel[step], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), expected_bias[step], rtol=1e-5, atol=1e-6)
    # Keras' decoupled weight decay would shrink the bias too and not go through the momentum:
    # the bias moved exactly as without any decay.
    plain = caffe_sgd_reference(bias0, [g for _, g in grads], **{**settings, "l2": 0.0}, is_bias=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), plain[-1], rtol=1e-5, atol=1e-6)


def test_update_matches_caffe_under_the_other_backend():
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    code = ("import test_optimizers as t; t.test_update_matches_caffe_over_steps(); "
            "t.test_accumulated_update_is_caffes_on_the_mean_gradient(); import keras; print(keras.backend.backend())")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": other, "TF_CPP_MIN_LOG_LEVEL": "3",
                                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == other


def test_both_mirrored_replicas_apply_the_bias_rule():
    """One step under MirroredStrategy on 2 logical CPUs (set before TensorFlow starts, hence a
    subprocess): both copies of the bias and of the kernel end equal, and as Caffe's update on
    the summed gradient says."""
    code = """
import json
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from fcn_keras.optimizers import CaffeSGD
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    bias, kernel = keras.Variable(np.zeros(2, "float32"), name="bias"), keras.Variable(np.ones(2, "float32"), name="kernel")
    optimizer = CaffeSGD(0.01, momentum=0.9, l2=0.5)
    optimizer.build([bias, kernel])
strategy.run(tf.function(lambda: optimizer.apply_gradients([(tf.ones(2), bias), (tf.zeros(2), kernel)])))
print(json.dumps([[c.numpy().tolist() for c in v.value.values] for v in (bias, kernel)]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
                                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr[-3000:]
    biases, kernels = json.loads(result.stdout.strip().splitlines()[-1])
    # The gradients of the two replicas sum to 2: bias -0.01 x 2 (rate) x 2; kernel -0.01 x 0.5 x 1 (L2).
    np.testing.assert_allclose(biases, [[-0.04, -0.04]] * 2, rtol=1e-6)
    np.testing.assert_allclose(kernels, [[0.995, 0.995]] * 2, rtol=1e-6)


def test_the_fcn_biases_are_the_ones_it_treats_as_biases():
    """The rule keys on the variable name: every conv/deconv bias of the model is named
    ``bias`` and every kernel ``kernel``."""
    model = build_fcn("8s", fc_units=8, geometry="same")
    names = {variable.name for variable in model.trainable_variables}
    assert names == {"kernel", "bias"}
    assert sum(v.name == "bias" for v in model.trainable_variables) == sum(len(v.shape) == 1 for v in model.trainable_variables)


def test_sgd_flag_builds_it_with_the_run_settings_and_config_round_trips():
    config = resolve_config(TrainConfig(optimizer="sgd", learning_rate=1e-4, momentum=0.95, weight_decay=1e-3, data="d"))
    optimizer = make_optimizer(config, total_steps=10)
    assert isinstance(optimizer, CaffeSGD)
    assert (float(optimizer.learning_rate), optimizer.momentum, optimizer.l2, optimizer.bias_lr_mult) == (
        np.float32(1e-4), 0.95, 1e-3, 2.0)
    clone = CaffeSGD.from_config(optimizer.get_config())
    assert clone.get_config() == optimizer.get_config()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, CaffeSGD) and restored.l2 == 1e-3
    # A setting other than the default survives the round trip too (found by review: a dropped
    # bias_lr_mult came back as 2 unnoticed, as the test used the default).
    own = keras.optimizers.deserialize(keras.optimizers.serialize(CaffeSGD(1e-3, bias_lr_mult=1.0, l2=0.0)))
    assert (own.bias_lr_mult, own.l2) == (1.0, 0.0)
    # The defaults are the reference solvers' (voc-fcn*/solver.prototxt): momentum 0.99, decay 5e-4, bias lr x2.
    default = CaffeSGD()
    assert (default.momentum, default.l2, default.bias_lr_mult) == (0.99, 5e-4, 2.0)


# --- Gradient accumulation (Caffe's iter_size) -----------------------------------------------


def test_accumulated_update_is_caffes_on_the_mean_gradient():
    """With gradient_accumulation_steps=2 the weights move every second batch, by Caffe's update
    on the mean of the two gradients (iter_size: the diffs summed, then scaled by 1/iter_size)."""
    rng = np.random.default_rng(1)
    kernel0, bias0 = rng.normal(size=(3, 3, 2, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")
    kernel, bias = keras.Variable(kernel0, name="kernel"), keras.Variable(bias0, name="bias")
    grads = [(rng.normal(size=kernel0.shape).astype("float32"), rng.normal(size=bias0.shape).astype("float32")) for _ in range(4)]
    settings = dict(lr=0.01, mu=0.9, l2=5e-2, bias_lr_mult=2.0)
    config = resolve_config(TrainConfig(optimizer="sgd", learning_rate=settings["lr"], momentum=settings["mu"],
                                        weight_decay=settings["l2"], data="d", steps_per_epoch=4, gradient_accumulation_steps=2))
    optimizer = make_optimizer(config, total_steps=4)
    assert isinstance(optimizer, CaffeSGD) and optimizer.gradient_accumulation_steps == 2

    mean = [tuple((a + b) / 2 for a, b in zip(grads[i], grads[i + 1])) for i in (0, 2)]
    expected_kernel = caffe_sgd_reference(kernel0, [g for g, _ in mean], **settings, is_bias=False)
    expected_bias = caffe_sgd_reference(bias0, [g for _, g in mean], **settings, is_bias=True)
    for step, (g_kernel, g_bias) in enumerate(grads):
        optimizer.apply_gradients([(g_kernel, kernel), (g_bias, bias)])
        if step % 2 == 0:  # Accumulated only.
            previous_kernel = kernel0 if step == 0 else expected_kernel[step // 2 - 1]
            np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), previous_kernel, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), expected_kernel[step // 2], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), expected_bias[step // 2], rtol=1e-5, atol=1e-6)
    assert batches_applied(optimizer) == 4 and int(keras.ops.convert_to_numpy(optimizer.iterations)) == 2
    clone = CaffeSGD.from_config(optimizer.get_config())
    assert clone.gradient_accumulation_steps == 2 and clone.l2 == settings["l2"]


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_two_accumulated_batches_of_one_train_as_one_batch_of_two(name):
    """model.fit with batches of 1 accumulated over 2 ends with the weights of batches of 2 (the
    loss is the mean over a batch's valid pixels, and every image here has as many)."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 3, (4, 8, 8)).astype("uint8")

    def fitted(batch_size: int, accumulate: int) -> list[np.ndarray]:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 3))
        hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
        model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="score")(hidden))
        config = resolve_config(TrainConfig(optimizer=name, learning_rate=1e-2, momentum=0.9, data="d", steps_per_epoch=4,
                                            gradient_accumulation_steps=accumulate))
        model.compile(optimizer=make_optimizer(config, total_steps=4), loss=SegmentationCrossEntropy())
        model.fit(images, labels, batch_size=batch_size, epochs=2, shuffle=False, verbose=0)
        assert batches_applied(model.optimizer) == 2 * 4 // batch_size
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 4  # updates: 2 per epoch
        return model.get_weights()

    for a, b in zip(fitted(2, 1), fitted(1, 2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --- The learning rate: the poly schedule --------------------------------------------------------

#: docs/training.md: ``--lr_schedule=poly`` is ``lr (1 - step/total)^0.9``, ``step`` and ``total`` in batches.
POLY_POWER = 0.9


def poly_rate(lr: float, step: int, total: int) -> float:
    return lr * (1.0 - min(step, total) / total) ** POLY_POWER


def test_poly_schedule_decays_the_rate_to_zero_over_the_total_steps_and_the_updates_use_it():
    """Rate at steps 0, T/2 and T (and after): lr, lr 0.5^0.9, 0, 0. Plain SGD (momentum 0, no
    decay) with a gradient of 1 then moves a kernel by exactly the scheduled rate each step."""
    lr, total = 1e-2, 10
    config = resolve_config(TrainConfig(optimizer="sgd", learning_rate=lr, lr_schedule="poly", momentum=0.0,
                                        weight_decay=0.0, data="d"))
    optimizer = make_optimizer(config, total_steps=total)
    rates = {}
    for step in (0, total // 2, total, total + 5):
        optimizer.iterations.assign(step)
        rates[step] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    assert rates == pytest.approx({0: lr, 5: lr * 0.5 ** POLY_POWER, 10: 0.0, 15: 0.0}, rel=1e-6, abs=1e-12)
    assert rates[5] != pytest.approx(lr * 0.5, rel=1e-3)  # Not the linear decay.

    optimizer = make_optimizer(config, total_steps=total)
    kernel = keras.Variable(np.zeros(3, "float32"), name="kernel")
    expected = 0.0
    for step in range(total + 1):
        optimizer.apply_gradients([(np.ones(3, "float32"), kernel)])
        expected -= poly_rate(lr, step, total)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), expected, rtol=1e-5, err_msg=f"step {step}")


def test_poly_schedule_counts_batches_with_gradient_accumulation():
    """total_steps counts batches (docs/training.md): with updates every 2 batches the rate after
    batch k is lr (1 - k/T)^0.9 and reaches 0 at batch T, not at update T."""
    lr, total = 1e-2, 4
    config = resolve_config(TrainConfig(optimizer="adam", learning_rate=lr, lr_schedule="poly", data="d",
                                        steps_per_epoch=4, gradient_accumulation_steps=2))
    optimizer = make_optimizer(config, total_steps=total)
    kernel = keras.Variable(np.zeros(3, "float32"), name="kernel")
    rates = []
    for _ in range(total):
        optimizer.apply_gradients([(np.ones(3, "float32"), kernel)])
        rates.append(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
    assert rates == pytest.approx([poly_rate(lr, k, total) for k in range(1, total + 1)], rel=1e-6, abs=1e-12)
    assert rates[-1] == 0.0 and int(keras.ops.convert_to_numpy(optimizer.iterations)) == 2


def test_constant_schedule_keeps_the_rate():
    config = resolve_config(TrainConfig(optimizer="sgd", learning_rate=1e-2, data="d"))
    optimizer = make_optimizer(config, total_steps=10)
    optimizer.iterations.assign(9)
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(1e-2, rel=1e-6)


# --- The learning rate: automatic, the paper's for the mean loss ---------------------------------


@pytest.mark.parametrize(
    "variant, at_once, rate",
    # docs/training.md's table: the reference solvers' rate for the summed loss x 1.70e5 valid
    # pixels per VOC image.
    [("32s", False, 1.7e-5), ("16s", False, 1.7e-7), ("8s", False, 1.7e-9), ("8s", True, 1.7e-5), ("16s", True, 1.7e-5)],
)
def test_automatic_learning_rate_is_the_papers_for_the_mean_loss(variant, at_once, rate):
    resolved = resolve_config(TrainConfig(variant=variant, at_once=at_once, data="d"))
    assert resolved.learning_rate == pytest.approx(rate, rel=1e-9)
    assert paper_learning_rate(variant, at_once) == pytest.approx(rate, rel=1e-9)
    # A rate given is kept; the demo (no --data) has its own.
    assert resolve_config(TrainConfig(variant=variant, at_once=at_once, data="d", learning_rate=1e-3)).learning_rate == 1e-3
    assert resolve_config(TrainConfig(variant=variant, at_once=at_once)).learning_rate == 3e-4


def test_real_data_gets_the_paper_profile_and_no_data_the_demo_profile():
    """docs/training.md's flag table: auto values on real data (the reference solve.py and nets)
    and for the synthetic demo; values given win over both."""
    assert PAPER_PROFILE == {"epochs": 25, "steps_per_epoch": 4000, "batch_size": 1, "crop_size": 0, "fc_units": 4096,
                             "geometry": "reference", "optimizer": "sgd"}
    fields = ("epochs", "steps_per_epoch", "batch_size", "crop_size", "fc_units", "geometry", "optimizer", "learning_rate",
              "lr_schedule", "momentum", "weight_decay", "weights", "num_classes", "output_dir")

    def resolved(**kwargs):
        config = resolve_config(TrainConfig(**kwargs))
        return dict(zip(fields, (getattr(config, name) for name in fields)))

    assert resolved(data="d") == pytest.approx({
        "epochs": 25, "steps_per_epoch": 4000, "batch_size": 1, "crop_size": 0, "fc_units": 4096, "geometry": "reference",
        "optimizer": "sgd", "learning_rate": 1.7e-9, "lr_schedule": "constant", "momentum": 0.99, "weight_decay": 5e-4,
        "weights": "imagenet", "num_classes": 21, "output_dir": "runs/fcn8s"})
    assert resolved(data="d", variant="16s", at_once=True, init_from="runs/x")["weights"] == "none"  # --init_from: no backbone
    assert resolved(data="d", variant="16s", at_once=True)["output_dir"] == "runs/fcn16s_at_once"
    assert resolved() == pytest.approx({
        "epochs": 10, "steps_per_epoch": 60, "batch_size": 4, "crop_size": 64, "fc_units": 256, "geometry": "same",
        "optimizer": "adam", "learning_rate": 3e-4, "lr_schedule": "constant", "momentum": 0.99, "weight_decay": 5e-4,
        "weights": "none", "num_classes": 21, "output_dir": "runs/fcn8s"})
    given = dict(epochs=3, steps_per_epoch=7, batch_size=2, crop_size=64, fc_units=16, geometry="same", optimizer="adam",
                 learning_rate=1e-4)
    for data in ("d", ""):
        assert {k: v for k, v in resolved(data=data, **given).items() if k in given} == given


# --- Adam's decoupled weight decay --------------------------------------------------------------


def test_adam_flag_builds_adam_with_decoupled_weight_decay_and_none_for_zero():
    """--optimizer=adam --weight_decay=wd: Keras' AdamW decay, ``w -= lr wd w`` outside the moments:
    with a zero gradient the kernel shrinks by exactly (1 - lr wd) (an L2 term in the gradient would
    go through Adam's normalisation and move it by about lr instead). weight_decay=0: none."""
    lr, decay = 1e-2, 0.1
    config = resolve_config(TrainConfig(optimizer="adam", learning_rate=lr, weight_decay=decay, data="d"))
    optimizer = make_optimizer(config, total_steps=10)
    assert type(optimizer) is keras.optimizers.Adam and optimizer.weight_decay == decay
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(lr, rel=1e-6)
    kernel = keras.Variable(np.full((2, 3), 3.0, "float32"), name="kernel")
    optimizer.apply_gradients([(np.zeros((2, 3), "float32"), kernel)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), 3.0 * (1 - lr * decay), rtol=1e-6)

    plain = make_optimizer(dataclasses.replace(config, weight_decay=0.0), total_steps=10)
    assert type(plain) is keras.optimizers.Adam and plain.weight_decay is None
    kernel = keras.Variable(np.full((2, 3), 3.0, "float32"), name="kernel")
    plain.apply_gradients([(np.zeros((2, 3), "float32"), kernel)])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel), np.full((2, 3), 3.0, "float32"))
