"""Label maps on the device: the same labels as argmax of the logits, uint8, any size."""

import numpy as np
import pytest

import keras

from fcn_keras.inference import labels_model, predict_labels
from fcn_keras.model import build_fcn


@pytest.fixture(scope="module")
def model():
    keras.utils.clear_session()
    net = build_fcn("8s", fc_units=16)
    rng = np.random.default_rng(0)
    for layer in net.layers:
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])
    return net


@pytest.mark.parametrize("size", [(1, 1), (37, 91), (64, 48)])
def test_labels_equal_argmax_of_logits(model, size):
    images = np.random.default_rng(1).integers(0, 256, (3, *size, 3)).astype("uint8")
    logits = model.predict(images, verbose=0)
    labels = predict_labels(model, images, batch_size=2)
    assert labels.dtype == np.uint8 and labels.shape == (3, *size)
    np.testing.assert_array_equal(labels, logits.argmax(-1))
    if size != (1, 1):  # Random weights give varied labels: the comparison means something.
        assert len(np.unique(labels)) > 1


def test_labels_model_round_trips_through_a_keras_file(model, tmp_path):
    wrapped = labels_model(model)
    assert wrapped.output.dtype == "uint8" and wrapped.output.shape == (None, None, None)
    wrapped.save(tmp_path / "labels.keras")
    reloaded = keras.saving.load_model(tmp_path / "labels.keras")
    images = np.random.default_rng(2).integers(0, 256, (1, 40, 50, 3)).astype("uint8")
    np.testing.assert_array_equal(predict_labels(reloaded, images), predict_labels(wrapped, images))


def test_labels_model_rejects_a_model_without_class_axis():
    inputs = keras.Input((8, 8, 3))
    flat = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs), name="classifier")
    with pytest.raises(ValueError, match=r"model must have one output of shape \[B, H, W, classes\]"):
        labels_model(flat)


def test_predict_labels_reuses_its_wrapper_and_refuses_one_image_without_a_batch_axis(model):
    images = np.random.default_rng(4).integers(0, 256, (2, 40, 52, 3)).astype("uint8")
    layers = [layer.name for layer in model.layers]
    first = predict_labels(model, images)
    wrapper = model._fcn_keras_labels_model
    np.testing.assert_array_equal(predict_labels(model, images), first)
    assert model._fcn_keras_labels_model is wrapper  # Built once: no new trace or compilation per call.
    assert [layer.name for layer in model.layers] == layers  # Not tracked as a part of the FCN.
    with pytest.raises(ValueError, match=r"images must be a batch \[N, H, W, 3\]. Received: shape \(40, 52, 3\) "
                                         r"\(one image: add a batch axis"):
        predict_labels(model, images[0])
