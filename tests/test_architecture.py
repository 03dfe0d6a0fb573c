"""The geometry arithmetic: crop offsets, blob sizes, and that Keras builds what it predicts."""

import re

import numpy as np
import pytest

import keras

from fcn_keras import architecture as arch
from fcn_keras.checks import check_choice, check_int
from fcn_keras.model import build_fcn


def test_crop_offsets_are_those_of_the_reference_nets():
    # The values written in the authors' Caffe nets (voc-fcn{32,16,8}s/net.py via coord_map).
    assert arch.crop_offsets("32s") == {"score": 19}
    assert arch.crop_offsets("16s") == {"score_pool4c": 5, "score": 27}
    assert arch.crop_offsets("8s") == {"score_pool4c": 5, "score_pool3c": 9, "score": 31}


def test_same_geometry_needs_no_offsets():
    assert arch.crop_offsets("32s", "same") == {"score": 0}
    assert arch.crop_offsets("8s", "same") == {"upscore2c": 0, "upscore_pool4c": 0, "score": 0}


def test_coord_map_of_a_deconvolution_inverts_the_convolution():
    start = arch.CoordMap(arch.Fraction(3), arch.Fraction(-7, 2))
    there_and_back = start.through_conv(4, stride=2, pad=1).through_deconv(4, stride=2, pad=1)
    assert there_and_back == start


@pytest.mark.parametrize("geometry", arch.GEOMETRIES)
@pytest.mark.parametrize("variant", arch.VARIANTS)
def test_every_input_size_from_one_pixel_fits_every_crop(variant, geometry):
    for size in range(1, 1200):
        assert arch.blob_sizes(variant, size, geometry)["score"] == size


def test_output_strides_and_final_kernels():
    assert [arch.output_stride(v) for v in arch.VARIANTS] == [32, 16, 8]
    assert [arch.final_upsample_kernel(v) for v in arch.VARIANTS] == [64, 32, 16]
    assert [arch.final_upsample_name(v) for v in arch.VARIANTS] == ["upscore", "upscore16", "upscore8"]


@pytest.mark.parametrize("variant", arch.VARIANTS)
def test_the_variant_of_a_net_is_read_from_its_score_layers(variant):
    model = build_fcn(variant, fc_units=8, geometry="same")
    assert arch.variant_of(layer.name for layer in model.layers) == variant
    assert arch.variant_of(["fc6", "score_pool4", "score_pool3"]) is None  # No score_fr: no FCN head.


def test_bad_variant_and_size_are_rejected_with_the_argument_named():
    with pytest.raises(ValueError, match=r"variant must be one of \('32s', '16s', '8s'\)\. Received: variant='4s'"):
        arch.crop_offsets("4s")
    with pytest.raises(ValueError, match="size must be >= 1"):
        arch.blob_sizes("8s", 0)


def test_check_choice_returns_the_value_or_names_every_choice():
    assert check_choice("geometry", "same", arch.GEOMETRIES) == "same"  # a dict's keys are its choices
    with pytest.raises(ValueError, match=r"^geometry must be one of \('reference', 'same'\)\. Received: geometry=3$"):
        check_choice("geometry", 3, arch.GEOMETRIES)


def test_check_int_accepts_python_and_numpy_integers_only():
    assert check_int("batch_size", np.int64(8), 1) == 8 and type(check_int("batch_size", np.int64(8), 1)) is int
    assert check_int("keep_predictions", 0, 0) == 0
    for bad in (0, True, 2.0, "2", None):
        with pytest.raises(ValueError, match=rf"^batch_size must be an integer >= 1\. Received: batch_size={re.escape(repr(bad))}$"):
            check_int("batch_size", bad, 1)
    with pytest.raises(ValueError, match=r"^checkpoint_freq must be an integer >= 1 \(epochs\)\. Received: checkpoint_freq=0$"):
        check_int("checkpoint_freq", 0, 1, "epochs")


@pytest.mark.parametrize("geometry", arch.GEOMETRIES)
@pytest.mark.parametrize("variant", arch.VARIANTS)
def test_keras_builds_the_sizes_the_arithmetic_predicts(variant, geometry):
    height, width = 37, 91
    model = build_fcn(variant, input_shape=(height, width, 3), fc_units=8, geometry=geometry)
    expected = {axis: arch.blob_sizes(variant, n, geometry) for axis, n in ((0, height), (1, width))}
    for name in expected[0]:
        shape = model.get_layer(name).output.shape
        assert (shape[1], shape[2]) == (expected[0][name], expected[1][name]), name


def test_static_shapes_use_cropping2d_and_match_dynamic_crops():
    static = build_fcn("8s", input_shape=(45, 61, 3), fc_units=8)
    dynamic = build_fcn("8s", fc_units=8)
    assert type(static.get_layer("score_pool4c")).__name__ == "Cropping2D"
    assert type(dynamic.get_layer("score_pool4c")).__name__ == "CropToReference"
    rng = np.random.default_rng(0)
    for layer in static.layers:  # Non-zero score layers so the comparison means something.
        weights = [rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()]
        layer.set_weights(weights)
        dynamic.get_layer(layer.name).set_weights(weights)
    images = rng.integers(0, 256, (2, 45, 61, 3)).astype("uint8")
    np.testing.assert_allclose(static(images), dynamic(images), rtol=1e-5, atol=1e-5)



def test_one_fixed_side_keeps_dynamic_crops():
    """Cropping2D needs both sides known: with one None side every crop is a CropToReference."""
    model = build_fcn("8s", input_shape=(None, 61, 3), fc_units=8)
    assert type(model.get_layer("score_pool4c")).__name__ == "CropToReference"
    for height in (45, 30):
        assert model(np.zeros((1, height, 61, 3), "uint8")).shape == (1, height, 61, 21)
@pytest.mark.parametrize("variant, geometry", [("8s", "reference"), ("32s", "same"), ("8s", "same")])
def test_dependency_span_is_exactly_where_the_gradient_is_nonzero(variant, geometry):
    """For output columns at 8 phases of the 32-pixel grid, the input columns with a nonzero
    gradient are exactly ``first(i) .. last(i)``: the span is neither short nor loose."""
    import tensorflow as tf

    keras.utils.clear_session()
    model = build_fcn(variant, fc_units=8, geometry=geometry)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in layer.get_weights()])
    columns = np.arange(400, 440, 5)
    images = tf.constant(np.repeat(rng.integers(0, 256, (1, 2, 720, 3)).astype("float32"), len(columns), axis=0))
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = model(images)
        # Image b's output column columns[b], all rows and classes, randomly weighted.
        picked = tf.gather(logits, columns, axis=2, batch_dims=1)
        total = tf.reduce_sum(picked * rng.normal(size=picked.shape).astype("float32"))
    reached = np.abs(tape.gradient(total, images).numpy()).max(axis=(1, 3)) > 0
    first, last = arch.dependency_span(variant, geometry)
    for column, row in zip(columns, reached):
        nonzero = np.nonzero(row)[0]
        assert (nonzero.min(), nonzero.max()) == (first(column), last(column)), column


def test_tile_context_and_the_reach_of_the_family():
    assert [arch.tile_context(v) for v in arch.VARIANTS] == [221, 221, 221]
    assert [arch.tile_context(v, "same") for v in arch.VARIANTS] == [218, 218, 218]
    for geometry in arch.GEOMETRIES:  # Off the grid's ends pixels read farther: fc6 plus the upsamplings.
        first, last = zip(*(arch.dependency_span(v, geometry) for v in arch.VARIANTS))
        pixels = range(3200, 3232)
        assert [max(max(i - f(i), l(i) - i) for i in pixels) for f, l in zip(first, last)] == [233, 241, 245]
