"""build_fcn: sizes, alignment, parameter counts, initialisation, serialisation, precision."""

import numpy as np
import pytest

import keras

from fcn_keras import architecture as arch
from fcn_keras.constants import CAFFE_BGR_MEAN, PAD_RGB
from fcn_keras.layers import Im2colConv2D, ReshapeMaxPooling2D
from fcn_keras.model import build_fcn
from fcn_keras.surgery import bilinear_kernel, transfer_weights


def _randomize(model, seed=0, scale=0.02):
    """Random weights everywhere (score layers included) so outputs are not trivially zero."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, scale, w.shape).astype("float32") for w in layer.get_weights()])


# --- Any input size in, the same size out -------------------------------------------------------


@pytest.fixture(scope="module")
def full_models():
    """One full-size (fc 4096) model per variant, accepting any input size."""
    return {variant: build_fcn(variant) for variant in arch.VARIANTS}


@pytest.mark.parametrize("variant", arch.VARIANTS)
@pytest.mark.parametrize("size", [(1, 1), (37, 91), (333, 500), (500, 500)])
def test_output_has_the_input_size(full_models, variant, size):
    images = np.zeros((1, *size, 3), dtype="uint8")
    logits = full_models[variant](images, training=False)
    assert tuple(logits.shape) == (1, *size, 21)
    assert logits.dtype == "float32"


@pytest.mark.parametrize("variant", arch.VARIANTS)
def test_same_geometry_output_has_the_input_size(variant):
    model = build_fcn(variant, fc_units=8, geometry="same")
    assert "input_padding" not in {layer.name for layer in model.layers}
    for size in [(1, 1), (37, 91), (64, 64), (97, 33)]:
        logits = model(np.zeros((1, *size, 3), dtype="uint8"), training=False)
        assert tuple(logits.shape) == (1, *size, 21)


# --- Pixel alignment ----------------------------------------------------------------------------
# Make the network linear along one path: every convolution passes channel 0 through its centre
# tap, biases are zero, and only one score layer is on. A ramp image x + K then comes out as its
# own coordinate plus a constant shift from max pooling; the shift flips sign for a falling ramp,
# so (rising - falling) / 2 recovers the output pixel's input coordinate exactly. A crop offset
# that is off by one pixel (or one position of a coarser map) moves that estimate.


def _linearize(model, path):
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights or layer.name.startswith("upscore"):
            continue  # Upsampling keeps its bilinear kernels.
        kernel = np.zeros_like(weights[0])
        if not layer.name.startswith("score") or layer.name == path:
            centre = kernel.shape[0] // 2
            kernel[centre, centre, 0, 0] = 1.0
        layer.set_weights([kernel, np.zeros_like(weights[1])])


def _recovered_coordinates(model, height, width, axis):
    coords = np.arange((height, width)[axis], dtype=np.float32)
    ramp = coords[:, None] if axis == 0 else coords[None, :]
    low, high = 1000.0, 1000.0 + coords.size
    rising = np.broadcast_to(ramp + low, (height, width))
    falling = np.broadcast_to(high - ramp, (height, width))
    images = np.stack([rising, falling])[..., None].repeat(3, axis=-1)
    out = np.asarray(model(images, training=False))[..., 0]
    # Channel 0 after preprocessing is blue minus its mean; that constant cancels in the difference.
    return (out[0] - out[1] - (low - high)) / 2.0


@pytest.mark.parametrize("geometry", ["reference", "same"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize(
    "variant,path",
    [("32s", "score_fr"), ("16s", "score_fr"), ("16s", "score_pool4"),
     ("8s", "score_fr"), ("8s", "score_pool4"), ("8s", "score_pool3")],
)
def test_every_path_is_pixel_aligned(variant, path, static, geometry):
    height, width = 193, 211
    model = build_fcn(
        variant,
        fc_units=4,
        input_shape=(height, width, 3) if static else (None, None, 3),
        geometry=geometry,
    )
    _linearize(model, path)
    margin = 64  # Output within ~56 px of the border also interpolates cells of the padding.
    for axis in (0, 1):
        estimate = _recovered_coordinates(model, height, width, axis)
        expected = np.broadcast_to(
            np.arange((height, width)[axis])[:, None] if axis == 0 else np.arange(width)[None, :],
            (height, width),
        )
        interior = (slice(margin, height - margin), slice(margin, width - margin))
        np.testing.assert_allclose(estimate[interior], expected[interior], atol=1e-2)


# --- Parameter counts -------------------------------------------------------------------------
# Derived from the reference nets' layers: a k x k convolution from c to n channels has
# k*k*c*n + n parameters; Caffe's deconvolutions have bias_term=False and a full C x C kernel.


def _reference_parameter_count(variant, classes=21):
    conv = lambda k, c, n: k * k * c * n + n  # noqa: E731
    deconv = lambda k: k * k * classes * classes  # noqa: E731
    total, channels = 0, 3
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            total += conv(3, channels, filters)
            channels = filters
    total += conv(7, 512, 4096) + conv(1, 4096, 4096) + conv(1, 4096, classes)  # fc6 fc7 score_fr
    pool_channels = {4: 512, 3: 256}
    for block in {"32s": (), "16s": (4,), "8s": (4, 3)}[variant]:
        total += deconv(4) + conv(1, pool_channels[block], classes)  # upscore, score_pool
    return total + deconv({"32s": 64, "16s": 32, "8s": 16}[variant])


@pytest.mark.parametrize("variant", arch.VARIANTS)
def test_parameter_counts_equal_the_reference_nets(full_models, variant):
    assert full_models[variant].count_params() == _reference_parameter_count(variant)


def test_reference_counts_of_vgg16_part():
    # Sanity of the derivation itself: the trunk is keras.applications' VGG16 without top.
    vgg = keras.applications.VGG16(include_top=False, weights=None)
    trunk = _reference_parameter_count("32s") - (
        7 * 7 * 512 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 21 + 21 + 64 * 64 * 21 * 21
    )
    assert vgg.count_params() == trunk


# --- Initialisation --------------------------------------------------------------------------


def test_score_layers_start_at_zero_and_upsampling_is_bilinear_and_trainable_as_the_paper():
    model = build_fcn("8s", fc_units=8)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert all(not np.any(w) for w in model.get_layer(name).get_weights()), name
    assert model.get_layer("upscore2").trainable and model.get_layer("upscore_pool4").trainable
    assert not model.get_layer("upscore8").trainable
    assert build_fcn("8s", fc_units=8, learn_final_upsampling=True).get_layer("upscore8").trainable
    # The authors' released nets: every deconvolution fixed (lr_mult 0), 2 x 4x4x21x21 fewer to train.
    released = build_fcn("8s", fc_units=8, learn_skip_upsampling=False)
    assert not any(released.get_layer(name).trainable for name in ("upscore2", "upscore_pool4", "upscore8"))
    count = lambda m: sum(int(np.prod(w.shape)) for w in m.trainable_weights)  # noqa: E731
    assert count(model) - count(released) == 2 * 4 * 4 * 21 * 21


def caffe_upsample_filt(size: int) -> np.ndarray:
    """The reference nets' surgery.upsample_filt (fcn.berkeleyvision.org), written out."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    rows, cols = np.ogrid[:size, :size]
    return (1 - abs(rows - center) / factor) * (1 - abs(cols - center) / factor)


#: Every upsampling of each variant by Caffe's layer name, with its kernel size: 4x4 for the 2x
#: skips, twice the stride for the final one.
UPSAMPLINGS = {"32s": {"upscore": 64}, "16s": {"upscore2": 4, "upscore16": 32},
               "8s": {"upscore2": 4, "upscore_pool4": 4, "upscore8": 16}}


@pytest.mark.parametrize("geometry", ["reference", "same"])
@pytest.mark.parametrize("variant", arch.VARIANTS)
def test_every_upsampling_starts_as_the_bilinear_kernel(variant, geometry):
    """Each deconvolution's kernel is bilinear_kernel(k, C) exactly: Caffe's bilinear filter on
    the channel diagonal (each class upsampled on its own), zeros elsewhere, no bias."""
    classes = 5
    model = build_fcn(variant, classes, fc_units=8, geometry=geometry)
    deconvs = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Conv2DTranspose)}
    assert {name: tuple(layer.kernel_size) for name, layer in deconvs.items()} == {
        name: (size, size) for name, size in UPSAMPLINGS[variant].items()}
    for name, size in UPSAMPLINGS[variant].items():
        (kernel,) = deconvs[name].get_weights()  # No bias.
        np.testing.assert_array_equal(kernel, bilinear_kernel(size, classes), err_msg=name)
        for c in range(classes):
            np.testing.assert_allclose(kernel[:, :, c, c], caffe_upsample_filt(size), rtol=1e-6, err_msg=name)
        kernel[:, :, np.arange(classes), np.arange(classes)] = 0
        assert not kernel.any(), name  # No class leaks into another.


@pytest.mark.parametrize("chain", [("32s", "16s"), ("16s", "8s"), ("32s", "8s")])
def test_fresh_finer_net_starts_from_its_source_scores(chain):
    # Zero-initialised new score layers add exactly nothing: every score map the two nets share
    # is identical, and each new fusion equals its upsampled coarse input. (The final logits then
    # differ only by bilinear 2x-then-16x versus 32x interpolation of the same scores, which is
    # exact for linear score maps: see the alignment test.)
    source = build_fcn(chain[0], fc_units=16)
    _randomize(source, scale=0.05)
    target = build_fcn(chain[1], fc_units=16)
    report = transfer_weights(source, target)
    assert report["unused"] == [arch.final_upsample_name(chain[0])]  # replaced by a finer one
    new_fusions = [n for n in ("fuse_pool4", "fuse_pool3") if n in {l.name for l in target.layers}
                   and n not in {l.name for l in source.layers}]
    assert new_fusions
    images = np.random.default_rng(1).integers(0, 256, (2, 71, 97, 3)).astype("uint8")
    shared = [
        layer.name for layer in source.layers
        if layer.name.startswith(("score_", "fuse_")) and layer.name in {l.name for l in target.layers}
    ]
    source_maps = keras.Model(source.input, [source.get_layer(n).output for n in shared])(images)
    target_maps = keras.Model(target.input, [target.get_layer(n).output for n in shared])(images)
    for name, expected, actual in zip(shared, source_maps, target_maps):
        assert np.abs(np.asarray(expected)).max() > 1e-3, name
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    for name in new_fusions:
        fuse = target.get_layer(name)
        upsampled, pool_score = (t for t in fuse.input)
        probe = keras.Model(target.input, [upsampled, pool_score, fuse.output])(images)
        assert not np.any(np.asarray(probe[1])), name
        np.testing.assert_array_equal(probe[2], probe[0], err_msg=name)


def test_at_once_scales_the_pool_features():
    model = build_fcn("8s", fc_units=8, at_once=True)
    assert model.name == "fcn8s_at_once"
    images = np.random.default_rng(2).integers(0, 256, (1, 40, 40, 3)).astype("uint8")
    probe = keras.Model(
        model.input,
        [model.get_layer(n).output for n in ("block4_pool", "scale_pool4", "block3_pool", "scale_pool3")],
    )
    pool4, scaled4, pool3, scaled3 = (np.asarray(t) for t in probe(images))
    np.testing.assert_allclose(scaled4, 0.01 * pool4, rtol=1e-6)
    np.testing.assert_allclose(scaled3, 1e-4 * pool3, rtol=1e-6)
    assert model.count_params() == build_fcn("8s", fc_units=8).count_params()


def test_dropout_follows_fc6_and_fc7_at_the_papers_rate_in_training_only():
    images = np.random.default_rng(4).integers(0, 256, (4, 96, 96, 3)).astype("uint8")
    names = ("fc6", "drop6", "fc7", "drop7")
    for rate in (0.5, 0.0):  # The default (the paper's), and none.
        model = build_fcn("32s", fc_units=64, geometry="same", dropout=rate)
        _randomize(model)
        assert [model.get_layer(n).rate for n in ("drop6", "drop7")] == [rate, rate]
        probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
        fc6, drop6, fc7, drop7 = (np.asarray(t) for t in probe(images, training=False))
        np.testing.assert_array_equal(drop6, fc6)  # Inference: the identity.
        np.testing.assert_array_equal(drop7, fc7)
        fc6, drop6, fc7, drop7 = (np.asarray(t) for t in probe(images, training=True))
        for before, after in ((fc6, drop6), (fc7, drop7)):
            active = before > 0
            dropped = active & (after == 0)
            # Training: each unit dropped with probability `rate`, the rest scaled by 1 / (1 - rate).
            assert abs(dropped.sum() / active.sum() - rate) < 0.06, (rate, dropped.sum(), active.sum())
            np.testing.assert_allclose(after[active & ~dropped], before[active & ~dropped] / (1 - rate), rtol=1e-6)


# --- Serialisation ---------------------------------------------------------------------------


def test_get_config_round_trip_and_save_reload_equality(tmp_path):
    model = build_fcn("16s", num_classes=5, fc_units=16, preprocessing="torch")
    _randomize(model)
    clone = keras.Model.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    images = np.random.default_rng(3).integers(0, 256, (2, 29, 33, 3)).astype("uint8")
    expected = np.asarray(model(images, training=False))
    np.testing.assert_array_equal(clone(images, training=False), expected)
    path = tmp_path / "fcn16s.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.get_layer("preprocess").mode == "torch"
    np.testing.assert_array_equal(reloaded(images, training=False), expected)


def test_fc6_as_im2col_is_the_same_function_with_the_same_weights():
    model = build_fcn("8s", num_classes=4, fc_units=8, geometry="same", fc6_implementation="conv")
    _randomize(model)
    fast = build_fcn("8s", num_classes=4, fc_units=8, geometry="same")  # im2col: the default
    assert type(fast.get_layer("fc6")) is Im2colConv2D and type(model.get_layer("fc6")) is keras.layers.Conv2D
    assert [w.shape for w in fast.weights] == [w.shape for w in model.weights]
    fast.set_weights(model.get_weights())
    images = np.random.default_rng(5).integers(0, 256, (2, 40, 48, 3)).astype("uint8")
    expected = np.asarray(model(images, training=False))
    assert np.abs(expected).max() > 0  # a real comparison, not of two all-zero maps
    np.testing.assert_allclose(fast(images, training=False), expected, atol=1e-4 * np.abs(expected).max())
    # Weights move by layer name (reference geometry: fc6 is 'valid' there). A .weights.h5 file
    # does not: Keras keys it by class name (conv2d_13 vs im2col_conv2d), see the layer's docstring.
    reference = build_fcn("32s", num_classes=4, fc_units=8, fc6_implementation="conv")
    _randomize(reference)
    other = build_fcn("32s", num_classes=4, fc_units=8)
    assert "fc6" in transfer_weights(reference, other)["copied"]
    small = images[:1, :20, :20]
    expected = np.asarray(reference(small, training=False))
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(other(small, training=False), expected, atol=1e-4 * np.abs(expected).max())


def test_reshape_poolings_are_the_same_function():
    model = build_fcn("8s", num_classes=4, fc_units=8, geometry="same")
    _randomize(model)
    fast = build_fcn("8s", num_classes=4, fc_units=8, geometry="same", fc6_implementation="im2col",
                     pool_implementation="reshape")
    assert all(type(fast.get_layer(arch.pool_name(block))) is ReshapeMaxPooling2D for block in range(1, 6))
    fast.set_weights(model.get_weights())
    images = np.random.default_rng(6).integers(0, 256, (2, 37, 45, 3)).astype("uint8")  # odd sides: ceil mode
    expected = np.asarray(model(images, training=False))
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(fast(images, training=False), expected, atol=1e-4 * np.abs(expected).max())


# --- Preprocessing ---------------------------------------------------------------------------


def test_model_preprocessing_matches_the_weights_origin():
    rgb = np.array([[[[10, 100, 200]]]], dtype="uint8")
    caffe = build_fcn("32s", fc_units=8).get_layer("preprocess")
    torch = build_fcn("32s", fc_units=8, preprocessing="torch").get_layer("preprocess")
    caffe_fcn = build_fcn("32s", fc_units=8, preprocessing="caffe_fcn").get_layer("preprocess")
    np.testing.assert_allclose(
        caffe(rgb)[0, 0, 0], [200 - CAFFE_BGR_MEAN[0], 100 - CAFFE_BGR_MEAN[1], 10 - CAFFE_BGR_MEAN[2]], rtol=1e-6
    )
    # The authors' FCN data layer: in_ -= np.array((104.00698793, 116.66876762, 122.67891434)), BGR.
    np.testing.assert_allclose(caffe_fcn(rgb)[0, 0, 0], [200 - 104.00698793, 100 - 116.66876762, 10 - 122.67891434], rtol=1e-6)
    np.testing.assert_allclose(
        torch(rgb)[0, 0, 0],
        (np.array([10, 100, 200]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
        rtol=1e-5,
    )
    floats = rgb.astype("float32")
    np.testing.assert_array_equal(caffe(floats), caffe(rgb))
    # The padding colour of crops and batches is (about) zero after either normalisation, like
    # the zeros the convolutions pad with; black would be a strong signal (-124 / -2.1).
    pad = np.array([[[PAD_RGB]]], dtype="uint8")
    assert np.abs(np.asarray(caffe(pad))).max() < 1.0 and np.abs(np.asarray(torch(pad))).max() < 0.01
    assert np.asarray(caffe(np.zeros_like(pad))).min() < -100


# --- Mixed precision -------------------------------------------------------------------------


def test_bf16_mixed_precision_computes_in_bf16_and_returns_float32_logits():
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = build_fcn("8s", fc_units=8)
    assert model.get_layer("fc6").compute_dtype == "bfloat16"
    assert model.get_layer("fc6").kernel.dtype == "float32"
    assert model.get_layer("preprocess").compute_dtype == "float32"
    keras.config.set_dtype_policy("float32")
    reference = build_fcn("8s", fc_units=8)
    _randomize(model, scale=0.05)
    reference.set_weights(model.get_weights())
    images = np.random.default_rng(4).integers(0, 256, (1, 50, 60, 3)).astype("uint8")
    logits = model(images, training=False)
    assert logits.dtype == "float32"
    expected = np.asarray(reference(images, training=False))
    error = np.abs(np.asarray(logits) - expected).max() / np.abs(expected).max()
    assert error < 0.1  # bf16 keeps ~3 significant digits through 19 layers


# --- Bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"variant": "4s"}, r"variant must be one of \('32s', '16s', '8s'\)\. Received: variant='4s'"),
        ({"num_classes": 1}, r"num_classes must be an integer >= 2\. Received: num_classes=1"),
        ({"input_shape": (64, 64, 1)}, r"input_shape must be \(height, width, 3\)"),
        ({"input_shape": (0, 5, 3)}, r"each side None or >= 1\. Received: input_shape=\(0, 5, 3\)"),
        ({"num_classes": True}, r"num_classes must be an integer >= 2\. Received: num_classes=True"),
        ({"variant": "32s", "at_once": True}, r"at_once=True .* needs variant '16s' or '8s'"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)\. Received: dropout=1\.0"),
        ({"dropout": "0.5"}, r"dropout must be a number in \[0, 1\)\. Received: dropout='0\.5'"),
        ({"dropout": None}, r"dropout must be a number in \[0, 1\)\. Received: dropout=None"),
        ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\)\. Received: dropout=-0\.1"),
        ({"dropout": False}, r"dropout must be a number in \[0, 1\)\. Received: dropout=False"),
        # Not a sequence: was a TypeError (len() of None) naming no argument.
        ({"input_shape": None}, r"input_shape must be \(height, width, 3\) .* Received: input_shape=None"),
        ({"input_shape": 64}, r"input_shape must be \(height, width, 3\) .* Received: input_shape=64"),
        ({"input_shape": (True, True, 3)}, r"each side None or >= 1\. Received: input_shape=\(True, True, 3\)"),
        ({"input_shape": (64, 64, 3.0)}, r"input_shape must be \(height, width, 3\) .* Received: input_shape=\(64, 64, 3\.0\)"),
        ({"at_once": "yes"}, r"at_once must be True or False\. Received: at_once='yes'"),
        ({"learn_final_upsampling": 1}, r"learn_final_upsampling must be True or False\. Received: learn_final_upsampling=1"),
        ({"weights": 123}, r"weights must be None, 'imagenet', the path of a weights file or a keras.Model\. "
         r"Received: weights=123"),
        ({"weights": "/tmp"}, r"weights file '/tmp' is a folder: give the weights file itself"),
        ({"fc6_implementation": "fft"}, r"fc6_implementation must be one of \('conv', 'im2col'\)\. Received: "
         r"fc6_implementation='fft'"),
        ({"pool_implementation": "avg"}, r"pool_implementation must be one of \('pool', 'reshape'\)\. Received: "
         r"pool_implementation='avg'"),
        ({"geometry": "valid"}, r"geometry must be one of \('reference', 'same'\)\. Received: geometry='valid'"),
        ({"preprocessing": "tf"}, r"preprocessing must be one of \('auto', 'caffe', 'torch', 'caffe_fcn'\)"),
        ({"weights": "/nonexistent/vgg16.h5"}, r"weights file '/nonexistent/vgg16.h5' does not exist"),
        ({"fc_units": 2.5}, r"fc_units must be an integer >= 1\. Received: fc_units=2\.5"),
        ({"fc_units": True}, r"fc_units must be an integer >= 1\. Received: fc_units=True"),
        # Before keras.applications' download (no network here: a download would fail otherwise).
        ({"weights": "imagenet"}, r"fc_units must be 4096 with weights='imagenet', .* Received: fc_units=8"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_fcn(**{"fc_units": 8, **kwargs})


def test_a_numpy_integer_is_a_class_count():
    assert build_fcn("32s", np.int64(5), fc_units=8, geometry="same").output.shape[-1] == 5
