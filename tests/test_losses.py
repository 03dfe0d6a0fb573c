"""SegmentationCrossEntropy: the per-pixel softmax cross-entropy ignoring 255, mean over valid
pixels, against a numpy reference (JAX behaviour is checked in tests/test_metrics.py's
subprocess)."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from fcn_keras.constants import IGNORE_LABEL
from fcn_keras.losses import SegmentationCrossEntropy, check_class_weights, median_frequency_weights


def reference_pixel_losses(labels: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 per-pixel -log softmax at the true class, with a loop over pixels, and the mask."""
    logits = logits.astype(np.float64)
    losses = np.zeros(labels.shape)
    valid = labels != IGNORE_LABEL
    for index in np.ndindex(labels.shape):
        if valid[index]:
            row = logits[index]
            log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
            losses[index] = log_z - row[labels[index]]
    return losses, valid


def random_batch(seed: int, shape=(2, 9, 11), classes: int = 5, void_fraction: float = 0.3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, shape).astype("uint8")
    labels[rng.random(shape) < void_fraction] = IGNORE_LABEL
    logits = rng.normal(0, 3, (*shape, classes)).astype("float32")
    return labels, logits


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_over_valid_pixels_matches_numpy(seed):
    labels, logits = random_batch(seed)
    losses, valid = reference_pixel_losses(labels, logits)
    assert 0 < valid.sum() < valid.size  # Void pixels are present and excluded.
    expected = losses.sum() / valid.sum()
    loss = SegmentationCrossEntropy()
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    # Labels as [B, H, W, 1] and int32 give the same value.
    np.testing.assert_allclose(float(loss(labels[..., None].astype("int32"), logits)), expected, rtol=1e-5)


def test_void_pixels_do_not_change_the_loss_whatever_their_logits():
    labels, logits = random_batch(2)
    changed = logits.copy()
    changed[labels == IGNORE_LABEL] = 1e4  # Huge logits at void pixels only.
    loss = SegmentationCrossEntropy()
    np.testing.assert_allclose(float(loss(labels, changed)), float(loss(labels, logits)), rtol=1e-6)


def test_pixel_losses_are_zero_at_void_and_the_cross_entropy_elsewhere():
    """pixel_losses' promise (found by review: only __call__ was tested, where the weights hid it)."""
    labels, logits = random_batch(4)
    losses, weights = (np.asarray(t) for t in SegmentationCrossEntropy().pixel_losses(labels, logits))
    expected, valid = reference_pixel_losses(labels, logits)
    void = labels == IGNORE_LABEL
    assert void.any() and (losses[void] == 0).all() and (weights[void] == 0).all() and (weights[~void] == 1).all()
    np.testing.assert_allclose(losses[~void], expected[~void], rtol=1e-5)


def test_reductions_sum_and_none_and_sample_weight():
    labels, logits = random_batch(3)
    losses, valid = reference_pixel_losses(labels, logits)
    per_pixel = SegmentationCrossEntropy(reduction="none")(labels, logits)
    assert tuple(per_pixel.shape) == labels.shape
    np.testing.assert_allclose(np.asarray(per_pixel), losses, rtol=1e-5, atol=1e-6)
    # The paper's summed loss is N_valid times the mean (docs/evaluation.md).
    summed = float(SegmentationCrossEntropy(reduction="sum")(labels, logits))
    mean = float(SegmentationCrossEntropy()(labels, logits))
    np.testing.assert_allclose(summed, valid.sum() * mean, rtol=1e-5)
    # Per-image weights: a weighted mean over valid pixels.
    weights = np.array([1.0, 3.0], "float32")
    pixel_weights = valid * weights[:, None, None]
    expected = (losses * pixel_weights).sum() / pixel_weights.sum()
    np.testing.assert_allclose(float(SegmentationCrossEntropy()(labels, logits, weights)), expected, rtol=1e-5)


def test_all_void_batch_gives_zero_loss_and_zero_gradients():
    labels = np.full((2, 5, 6), IGNORE_LABEL, "uint8")
    logits = tf.Variable(np.random.default_rng(4).normal(size=(2, 5, 6, 4)).astype("float32"))
    with tf.GradientTape() as tape:
        value = SegmentationCrossEntropy()(labels, logits)
    gradient = tape.gradient(value, logits)
    assert float(value) == 0.0
    assert np.all(np.asarray(gradient) == 0.0)


def test_float32_under_bfloat16_logits_and_inside_xla():
    labels, logits = random_batch(5)
    loss = SegmentationCrossEntropy()
    value = loss(labels, tf.cast(logits, "bfloat16"))
    assert value.dtype == tf.float32
    reference = reference_pixel_losses(labels, np.asarray(tf.cast(tf.cast(logits, "bfloat16"), "float32")))
    np.testing.assert_allclose(float(value), reference[0].sum() / reference[1].sum(), rtol=1e-5)
    compiled = tf.function(lambda y, p: loss(y, p), jit_compile=True)
    np.testing.assert_allclose(float(compiled(labels, logits)), float(loss(labels, logits)), rtol=1e-6)


def test_serializable_and_trains_inside_a_saved_model(tmp_path):
    """Saved in a compiled model, the loss comes back with its ignore_label and reduction, and
    the reloaded model evaluates and trains with it: its loss on a batch with void pixels is the
    reference (here the summed loss, label 1 void) and a step moves the weights."""
    loss = SegmentationCrossEntropy(ignore_label=7, reduction="sum")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SegmentationCrossEntropy)
    assert (restored.ignore_label, restored.reduction) == (7, "sum")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile(keras.optimizers.SGD(0.1), loss=SegmentationCrossEntropy(ignore_label=1, reduction="sum"))
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(reloaded.loss, SegmentationCrossEntropy)
    assert (reloaded.loss.ignore_label, reloaded.loss.reduction) == (1, "sum")

    rng = np.random.default_rng(6)
    images = rng.normal(size=(2, 5, 6, 3)).astype("float32")
    labels = rng.integers(0, 3, (2, 5, 6)).astype("uint8")
    labels[0, 0, :3] = IGNORE_LABEL  # 255 stays void too (outside the 3 classes).
    void = labels == 1
    assert void.any() and (labels == 0).any() and (labels == 2).any()
    losses, _ = reference_pixel_losses(np.where(void, IGNORE_LABEL, labels).astype("uint8"), np.asarray(reloaded(images)))
    expected = losses.sum()  # Sum over the pixels of classes 0 and 2.
    assert expected != pytest.approx(reference_pixel_losses(labels, np.asarray(reloaded(images)))[0].sum(), rel=1e-3)
    logs = reloaded.evaluate(images, labels, batch_size=2, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    before = reloaded.get_weights()
    history = reloaded.fit(images, labels, batch_size=2, epochs=1, shuffle=False, verbose=0)
    assert history.history["loss"] == pytest.approx([expected], rel=1e-5)  # The step's loss, before its update.
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(before, reloaded.get_weights()))
    after = reference_pixel_losses(np.where(void, IGNORE_LABEL, labels).astype("uint8"), np.asarray(reloaded(images)))[0].sum()
    assert after < expected  # The step went down the reloaded loss.


def test_bad_ignore_label_is_rejected():
    with pytest.raises(ValueError, match="ignore_label must be a non-negative integer"):
        SegmentationCrossEntropy(ignore_label=-1)


def test_labels_outside_the_classes_are_void_as_in_the_metric():
    """A label in [C, 255) (VOC data, a 3-class model) cannot raise inside a compiled step; it is
    void, as ConfusionMatrix treats it, and does not count in N_valid (TensorFlow's sparse
    cross-entropy raised on it, JAX's counted it with zero loss)."""
    labels, logits = random_batch(2, classes=3)
    strange = labels.copy()
    strange[0, 0, :4] = [3, 7, 20, 254]
    voided = strange.copy()
    voided[0, 0, :4] = IGNORE_LABEL
    loss = SegmentationCrossEntropy()
    assert float(loss(strange, logits)) == pytest.approx(float(loss(voided, logits)), rel=1e-6)
    assert float(loss(strange, logits)) != pytest.approx(float(loss(labels, logits)), rel=1e-3)


def test_sample_weight_with_a_channel_axis_like_the_labels():
    labels, logits = random_batch(3)
    weights = np.random.default_rng(3).uniform(0, 2, labels.shape).astype("float32")
    loss = SegmentationCrossEntropy()
    expected = float(loss(labels, logits, sample_weight=weights))
    assert float(loss(labels[..., None], logits, sample_weight=weights[..., None])) == pytest.approx(expected, rel=1e-6)


# --- Class weights (the paper's section 4.3 class balancing) ----------------------------------


def test_class_weights_give_the_weighted_mean_over_valid_pixels():
    labels, logits = random_batch(4, classes=4)
    losses, valid = reference_pixel_losses(labels, logits)
    weights = np.array([0.5, 1.0, 3.0, 0.0])
    pixel_weights = np.where(valid, weights[np.where(valid, labels, 0)], 0.0)
    expected = (losses * pixel_weights).sum() / pixel_weights.sum()
    loss = SegmentationCrossEntropy(class_weights=weights.tolist())
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-5)
    assert float(loss(labels, logits)) != pytest.approx(float(SegmentationCrossEntropy()(labels, logits)), rel=1e-3)
    # A class of weight 0 is as void: its logits change nothing.
    changed = logits.copy()
    changed[labels == 3] = 1e4
    np.testing.assert_allclose(float(loss(labels, changed)), float(loss(labels, logits)), rtol=1e-6)
    per_pixel = SegmentationCrossEntropy(class_weights=weights.tolist(), reduction="none")(labels, logits)
    np.testing.assert_allclose(np.asarray(per_pixel), losses * pixel_weights, rtol=1e-5, atol=1e-6)


def test_class_weights_survive_get_config_and_a_saved_model(tmp_path):
    loss = SegmentationCrossEntropy(class_weights=[1, 2, 0.5])
    assert SegmentationCrossEntropy.from_config(loss.get_config()).class_weights == [1.0, 2.0, 0.5]
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile("sgd", loss=loss)
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").loss.class_weights == [1.0, 2.0, 0.5]


def test_bad_class_weights_are_refused():
    labels, logits = random_batch(0, classes=5)
    with pytest.raises(ValueError, match=r"class_weights has 3 entries but the logits have 5 classes"):
        SegmentationCrossEntropy(class_weights=[1, 1, 1])(labels, logits)
    for weights in ([1, -1], [0, 0], [1, float("nan")], [2]):
        with pytest.raises(ValueError, match=r"class_weights must be one finite weight >= 0 per class \(at least 2\), not all 0"):
            SegmentationCrossEntropy(class_weights=weights)
    for weights in ([1, 1], [1, 1, 1, 1]):  # Too few and too many for 3 classes (the training flag's check).
        with pytest.raises(ValueError, match=r"class_weights must be one finite weight >= 0 per class \(3\), not all 0"):
            check_class_weights(weights, 3)
    assert check_class_weights([1, 0, 2.5], 3) == [1.0, 0.0, 2.5]


def test_median_frequency_weights():
    assert median_frequency_weights([600, 300, 100, 0]) == pytest.approx([0.5, 1.0, 3.0, 0.0])  # median of .6, .3, .1
    assert median_frequency_weights([7, 7, 7]) == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"class_pixels must be >= 2 non-negative counts"):
        median_frequency_weights([0, 0])
    # Eigen & Fergus: over the labelled pixels of the images holding each class (.6, .5, .25).
    assert median_frequency_weights([600, 300, 100, 0], [1000, 600, 400, 0]) == pytest.approx([0.5 / 0.6, 1.0, 2.0, 0.0])
    for image_pixels in ([1000, 600, 400], [1000, 200, 400, 0]):  # Another length; fewer than the class's pixels.
        with pytest.raises(ValueError, match=r"image_pixels must hold one count per class, each at least the class's"):
            median_frequency_weights([600, 300, 100, 0], image_pixels)
