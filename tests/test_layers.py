"""``Deconvolution`` computes exactly what ``Conv2DTranspose`` computes, without dilated inputs;
``Im2colConv2D`` exactly what ``Conv2D`` computes, as one matmul; ``ReshapeMaxPooling2D`` what
``MaxPooling2D`` computes, as a reshape and a max."""

import re

import numpy as np
import pytest
import tensorflow as tf

import keras

from fcn_keras.layers import (BilinearUpsampling, CropToReference, Deconvolution, Im2colConv2D, ReshapeMaxPooling2D,
                              im2col_conv)

# (kernel, stride): FCN's 2x skip upsampling, FCN-8s/16s/32s's final ones, and odd cases (kernels
# smaller than the stride among them: 'same' once cropped them to nothing).
SHAPES = [(4, 2), (16, 8), (32, 16), (64, 32), (3, 1), (5, 2), (2, 3), (7, 3), (2, 4), (1, 3), (3, 5)]


def _twins(reference, layer, channels: int, seed: int):
    """``reference`` and ``layer`` built for ``channels`` inputs with the same random weights."""
    reference.build((None, None, None, channels))
    layer.build((None, None, None, channels))
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=w.shape).astype("float32") for w in reference.get_weights()]
    reference.set_weights(weights)
    layer.set_weights(weights)
    return reference, layer


def _pair(kernel: int, stride: int, padding: str, use_bias: bool, channels: int = 4, filters: int = 3):
    """A ``Conv2DTranspose`` and a ``Deconvolution`` of one configuration with the same random weights."""
    return _twins(keras.layers.Conv2DTranspose(filters, kernel, strides=stride, padding=padding, use_bias=use_bias),
                  Deconvolution(filters, kernel, strides=stride, padding=padding, use_bias=use_bias),
                  channels, kernel * 100 + stride)


def _assert_same_values_and_gradients(reference, layer, x, weights: tuple[str, ...] = ("kernel", "bias"),
                                      rtol: float = 0.0) -> None:
    """The two layers' outputs and the gradients of a loss that depends on every output with
    respect to the input and to ``weights`` agree (to 1e-4 of the largest, or ``rtol``)."""
    x = tf.constant(x)
    results = []
    for each in (reference, layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = each(x)
            loss = tf.reduce_sum(y * tf.cos(y))
        results.append((y, *tape.gradient(loss, [x, *(getattr(each, name) for name in weights)])))
    names = ("outputs", "d inputs", *(f"d {name}" for name in weights))
    for name, expected, actual in zip(names, *results):
        assert expected.shape == actual.shape, name
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(actual, expected, atol=0 if rtol else 1e-4 * scale, rtol=rtol, err_msg=name)


def _assert_round_trip(model: keras.Model, cls, x: np.ndarray, tmp_path) -> None:
    """``get_config`` round trip of the model's last layer and save/reload equality."""
    layer = model.layers[-1]
    assert cls.from_config(layer.get_config()).get_config() == layer.get_config()
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(reloaded.layers[-1]) is cls
    np.testing.assert_array_equal(reloaded(x), model(x))


@pytest.mark.parametrize("kernel,stride", SHAPES)
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_equals_conv2d_transpose_values_and_gradients(kernel, stride, padding):
    if padding == "same" and (kernel - stride) % 2:
        pytest.skip("refused, see test_refuses_what_it_does_not_compute")
    reference, layer = _pair(kernel, stride, padding, use_bias=True)
    _assert_same_values_and_gradients(reference, layer, np.random.default_rng(0).normal(size=(2, 5, 3, 4)).astype("float32"))


@pytest.mark.parametrize("kernel,stride,padding", [((4, 5), (2, 3), "valid"), ((4, 5), (2, 3), "same"),
                                                   ((3, 8), (1, 4), "valid"), ((6, 2), (2, 2), "same")])
def test_non_square_kernels_and_strides_and_an_activation_equal_conv2d_transpose(kernel, stride, padding):
    """Each axis with its own kernel and stride, and the activation applied (found by review:
    every shape tested was square, and no test passed an activation)."""
    reference, layer = _twins(
        keras.layers.Conv2DTranspose(3, kernel, strides=stride, padding=padding, activation="tanh"),
        Deconvolution(3, kernel, strides=stride, padding=padding, activation="tanh"), 4, 11)
    _assert_same_values_and_gradients(reference, layer, np.random.default_rng(1).normal(size=(2, 5, 3, 4)).astype("float32"))


def test_unknown_sizes_in_a_model_and_a_tf_function():
    reference, layer = _pair(16, 8, "valid", use_bias=False, channels=2, filters=2)
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, layer(inputs))
    assert model.output.shape == (None, None, None, 2)
    serve = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec((None, None, None, 2))])
    for size in ((1, 1), (3, 7)):
        x = np.random.default_rng(1).normal(size=(1, *size, 2)).astype("float32")
        np.testing.assert_allclose(serve(x), reference(x), atol=1e-4)


def test_get_config_round_trip_and_save_reload(tmp_path):
    _, layer = _pair(4, 2, "same", use_bias=False)
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, layer(inputs))
    _assert_round_trip(model, Deconvolution, np.random.default_rng(2).normal(size=(1, 6, 6, 4)).astype("float32"), tmp_path)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"data_format": "channels_first"}, r"Received: data_format='channels_first'"),
        ({"strides": 1, "dilation_rate": 2}, r"Received: dilation_rate=\(2, 2\)"),
        ({"output_padding": 1}, r"Received: output_padding=\(1, 1\)"),
        ({"kernel_size": 5, "padding": "same"}, r"odd kernel_size - strides \(\(5, 5\) - \(2, 2\)\)"),
    ],
)
def test_refuses_what_it_does_not_compute(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Deconvolution(**{"filters": 3, "kernel_size": 4, "strides": 2, **kwargs})



# --- Im2colConv2D ------------------------------------------------------------------------------


def _conv_pair(kernel: int, padding: str, channels: int = 3, filters: int = 5):
    """A ``Conv2D`` and an ``Im2colConv2D`` of one configuration with the same random weights."""
    return _twins(keras.layers.Conv2D(filters, kernel, padding=padding, activation="relu"),
                  Im2colConv2D(filters, kernel, padding=padding, activation="relu"), channels, 7)


@pytest.mark.parametrize("kernel", [1, 2, 3, 7, (3, 2)])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_im2col_equals_conv2d_values_and_gradients(kernel, padding):
    reference, layer = _conv_pair(kernel, padding)
    _assert_same_values_and_gradients(reference, layer, np.random.default_rng(0).normal(size=(2, 9, 8, 3)).astype("float32"))


def test_im2col_conv_takes_the_windows_in_the_kernels_order():
    # One input pixel and a kernel whose taps are all different: the output is the flipped kernel
    # around the pixel, which a wrong window order (rows for columns) would transpose.
    x = np.zeros((1, 5, 5, 1), "float32")
    x[0, 2, 2, 0] = 1.0
    kernel = np.arange(1, 10, dtype="float32").reshape(3, 3, 1, 1)
    out = np.asarray(im2col_conv(x, kernel, "valid"))[0, :, :, 0]
    np.testing.assert_array_equal(out, kernel[::-1, ::-1, 0, 0])
    with pytest.raises(ValueError, match=r"padding must be one of \('valid', 'same'\)\. Received: padding='full'"):
        im2col_conv(x, kernel, "full")


def test_im2col_unknown_sizes_in_a_tf_function_and_save_reload(tmp_path):
    reference, layer = _conv_pair(7, "same", channels=2, filters=4)
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, layer(inputs))
    serve = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec((None, None, None, 2))])
    for size in ((1, 1), (3, 10)):
        x = np.random.default_rng(1).normal(size=(1, *size, 2)).astype("float32")
        np.testing.assert_allclose(serve(x), reference(x), atol=1e-4)
    _assert_round_trip(model, Im2colConv2D, np.random.default_rng(2).normal(size=(2, 6, 5, 2)).astype("float32"), tmp_path)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"strides": 2}, r"Received: strides=\(2, 2\)"),
        ({"dilation_rate": 2}, r"Received: dilation_rate=\(2, 2\)"),
        ({"groups": 3, "filters": 3}, r"Received: groups=3"),
        ({"data_format": "channels_first"}, r"Received: data_format='channels_first'"),
    ],
)
def test_im2col_refuses_what_it_does_not_compute(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Im2colConv2D(**{"filters": 6, "kernel_size": 3, **kwargs})


# --- ReshapeMaxPooling2D -----------------------------------------------------------------------


@pytest.mark.parametrize("size, padding, pool", [
    (size, padding, pool) for pool in (2, 3, 4, (2, 3), (3, 1)) for size in ((5, 7), (4, 6), (1, 1), (2, 3))
    for padding in ("same", "valid")
    if padding == "same" or all(s >= p for s, p in zip(size, np.broadcast_to(pool, 2)))  # 'valid': a whole window
])
def test_reshape_pooling_equals_max_pooling_values_and_gradients(size, padding, pool):
    """VGG's 2x2 windows, and larger ones, whose 'same' padding falls on both sides."""
    reference = keras.layers.MaxPooling2D(pool, strides=pool, padding=padding)
    layer = ReshapeMaxPooling2D(pool, strides=pool, padding=padding)
    # Distinct values: no ties, where the two gradients may share a maximum differently.
    x = np.random.default_rng(0).permutation(2 * size[0] * size[1] * 3).reshape(2, *size, 3).astype("float32")
    _assert_same_values_and_gradients(reference, layer, x, weights=(), rtol=1e-6)


def test_reshape_pooling_unknown_sizes_and_save_reload(tmp_path):
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, ReshapeMaxPooling2D(2, strides=2, padding="same")(inputs))
    reference = keras.layers.MaxPooling2D(2, strides=2, padding="same")
    serve = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec((None, None, None, 2))])
    for size in ((1, 1), (3, 10), (8, 5)):
        x = np.random.default_rng(1).normal(size=(1, *size, 2)).astype("float32")
        np.testing.assert_array_equal(serve(x), reference(x))
    _assert_round_trip(model, ReshapeMaxPooling2D, np.random.default_rng(2).normal(size=(2, 7, 6, 2)).astype("float32"),
                       tmp_path)


def test_reshape_pooling_refuses_overlapping_windows():
    with pytest.raises(ValueError, match=r"strides equal to pool_size\. Received: strides=\(1, 1\) with pool_size=\(2, 2\)"):
        ReshapeMaxPooling2D(2, strides=1)
    with pytest.raises(ValueError, match=r"Received: data_format='channels_first'"):
        ReshapeMaxPooling2D(2, data_format="channels_first")


# --- CropToReference -----------------------------------------------------------------------------


def test_crop_to_reference_crops_at_its_offset_and_refuses_a_crop_that_does_not_fit():
    x = np.arange(2 * 10 * 9 * 3, dtype="float32").reshape(2, 10, 9, 3)
    reference = np.zeros((2, 6, 5, 1), "float32")
    layer = CropToReference(3)
    np.testing.assert_array_equal(np.asarray(layer([x, reference])), x[:, 3:9, 3:8, :])
    assert layer.compute_output_shape(((None, 10, 9, 3), (None, 6, 5, 1))) == (None, 6, 5, 3)
    # Offset 5 + height 6 > 10: slicing would silently return 5 rows; the layer says so instead.
    too_far = CropToReference(5, name="crop_x")
    with pytest.raises(ValueError, match=r"'crop_x' cannot crop a height of 6 at offset 5 from a height of 10: "
                                         r"the input is 1 pixels too small"):
        too_far([x, reference])
    with pytest.raises(ValueError, match=r"cannot crop a width of 5 at offset 5 from a width of 9"):
        too_far.compute_output_shape(((None, 20, 9, 3), (None, 6, 5, 1)))
    # Unknown sizes (a free input size) leave the check to the call.
    assert too_far.compute_output_shape(((None, None, None, 3), (None, None, None, 1))) == (None, None, None, 3)
    with pytest.raises(ValueError, match=r"offset must be a non-negative integer\. Received: offset=-3"):
        CropToReference(-3)  # Would slice from the end.


def test_bilinear_initialiser_refuses_kernels_it_cannot_fill():
    assert BilinearUpsampling()((4, 4, 3, 3)).shape == (4, 4, 3, 3)
    for shape in ((4, 4, 3, 2), (4, 2, 3, 3)):  # Outputs other than the inputs; a non-square kernel.
        with pytest.raises(ValueError, match=r"bilinear upsampling needs a square kernel with as many outputs as "
                                             r"inputs\. Received: shape=" + re.escape(str(shape))):
            BilinearUpsampling()(shape)

