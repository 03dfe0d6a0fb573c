"""fcn_keras.optimizers.CaffeSGD: Caffe's SGD update of the reference solvers, step by step
against the formula under both backends (TensorFlow hands update_step the tf.Variable, named
``bias:0``, JAX the Keras variable, named ``bias``) and on both replicas of a MirroredStrategy
(whose second copy is named ``bias/replica_1:0``); what --optimizer=sgd builds; config round
trip; gradient accumulation (Caffe's ``iter_size``)."""

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
from fcn_keras.train import TrainConfig, make_optimizer, resolve_config


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
