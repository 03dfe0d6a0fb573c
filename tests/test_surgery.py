"""Surgery: bilinear kernels, VGG16 → FCN transplant, FCN → FCN transfer, weight files."""

import hashlib
import logging

import numpy as np
import pytest

import h5py
import keras

from fcn_keras import backbone
from fcn_keras.backbone import load_vgg16, resolve_preprocessing, weights_file_has_top
from fcn_keras.constants import CAFFE_BGR_MEAN
from fcn_keras.model import build_fcn
from fcn_keras.surgery import (
    bilinear_filter, bilinear_kernel, structure_differences, transfer_weights, transplant_vgg16,
)
from fcn_keras.train import TrainConfig, build_model, resolve_config

# --- Bilinear kernels --------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2, 8, 16, 32])
def test_bilinear_filter_is_the_analytic_interpolation_filter(stride):
    size = 2 * stride
    # Linear interpolation between samples `stride` apart, centred on the kernel.
    taps = np.array([1 - abs(i - (size - 1) / 2) / stride for i in range(size)])
    np.testing.assert_allclose(bilinear_filter(size), np.outer(taps, taps), rtol=1e-6)
    # Every output pixel receives weights summing to one from the samples around it.
    np.testing.assert_allclose(taps[:stride] + taps[stride:], 1.0)


def test_bilinear_filter_of_odd_size():
    np.testing.assert_allclose(bilinear_filter(3), np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]))


def test_bilinear_kernel_upsamples_each_channel_alone_and_reproduces_linear_functions():
    kernel = bilinear_kernel(8, 3)
    assert kernel.shape == (8, 8, 3, 3)
    assert not np.any(kernel[:, :, 0, 1]) and not np.any(kernel[:, :, 2, 0])
    layer = keras.layers.Conv2DTranspose(3, 8, strides=4, use_bias=False)
    layer.build((None, 10, 10, 3))
    layer.set_weights([kernel])
    rows = np.arange(10, dtype="float32")
    samples = np.stack([np.broadcast_to(rows[:, None], (10, 10)) * c for c in (1, -2, 3)], -1)
    up = np.asarray(layer(samples[None]))[0]
    # Output position t sits at input coordinate (t - 3.5) / 4 (stride 4, kernel 8: centre 3.5).
    t = np.arange(up.shape[0])[8:-8]
    for channel, slope in enumerate((1, -2, 3)):
        np.testing.assert_allclose(up[8:-8, 20, channel], slope * (t - 3.5) / 4, rtol=1e-5, atol=1e-5)


# --- VGG16 → FCN ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_vgg16():
    """keras.applications VGG16 with its top, seeded random weights (no download)."""
    keras.utils.set_random_seed(1234)
    vgg = keras.applications.VGG16(include_top=True, weights=None)
    rng = np.random.default_rng(0)
    for layer in vgg.layers:  # Non-zero biases everywhere, so a dropped bias shows.
        weights = layer.get_weights()
        if weights:
            layer.set_weights([weights[0], rng.normal(0, 0.1, weights[1].shape).astype("float32")])
    return vgg


def test_fc6_fc7_compute_vgg16_fc1_fc2_on_every_7x7_window(random_vgg16):
    with pytest.raises(ValueError, match=r"preprocessing must be one of \(.caffe., .torch., .caffe_fcn.\) when weights is a keras.Model"):
        build_fcn("32s", weights=random_vgg16)
    fcn = build_fcn("32s", weights=random_vgg16, preprocessing="caffe")
    images = np.random.default_rng(1).uniform(0, 255, (1, 70, 90, 3)).astype("float32")
    probe = keras.Model(fcn.input, [fcn.get_layer("block5_pool").output, fcn.get_layer("fc7").output])
    pool5, fc7 = (np.asarray(t) for t in probe(images, training=False))
    head = keras.Sequential([random_vgg16.get_layer(n) for n in ("flatten", "fc1", "fc2")])
    for i, j in [(0, 0), (fc7.shape[1] - 1, fc7.shape[2] - 1), (1, 2)]:
        window = pool5[:, i : i + 7, j : j + 7, :]
        np.testing.assert_allclose(fc7[:, i, j, :], head(window), rtol=1e-4, atol=1e-4)


def test_fc7_at_the_position_that_sees_the_whole_224_input_equals_vgg16_fc2(random_vgg16):
    # In the "same" geometry the trunk is VGG16's own, and on a 224x224 input fc6's centre
    # position (3, 3) covers pool5's whole 7x7 grid: fc7 there is VGG16's fc2, biases included.
    # (The reference geometry's 100-pixel padding puts no fc6 position on that grid; its fc6/fc7
    # are checked window by window in the test above.)
    fcn = build_fcn("32s", weights=random_vgg16, preprocessing="caffe", geometry="same")
    images = np.random.default_rng(2).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    fc7 = np.asarray(keras.Model(fcn.input, fcn.get_layer("fc7").output)(images, training=False))
    assert fc7.shape == (2, 7, 7, 4096)
    caffe_input = images[..., ::-1] - np.array(CAFFE_BGR_MEAN, dtype="float32")
    fc2 = np.asarray(keras.Model(random_vgg16.input, random_vgg16.get_layer("fc2").output)(caffe_input))
    assert np.abs(fc2).max() > 0.1
    np.testing.assert_allclose(fc7[:, 3, 3, :], fc2, rtol=1e-4, atol=1e-4)
    # The neighbouring position sees another window, so the match above is not an accident.
    assert not np.allclose(fc7[:, 3, 4, :], fc2, rtol=1e-2, atol=1e-2)


def test_transplant_reports_what_it_copied_and_refuses_wrong_shapes(random_vgg16):
    fcn = build_fcn("8s", fc_units=4096)
    copied = transplant_vgg16(fcn, random_vgg16)
    assert copied[0] == "block1_conv1" and copied[-2:] == ["fc6", "fc7"] and len(copied) == 15
    np.testing.assert_array_equal(
        fcn.get_layer("fc6").get_weights()[0], random_vgg16.get_layer("fc1").get_weights()[0].reshape(7, 7, 512, 4096)
    )
    small = build_fcn("8s", fc_units=64)
    conv1_1 = small.get_layer("block1_conv1").get_weights()[0]
    with pytest.raises(ValueError, match=r"cannot copy VGG16 fc1 .* into layer 'fc6': expected weight shapes \[\(7, 7, 512, 64\), \(64,\)\]"):
        transplant_vgg16(small, random_vgg16)
    np.testing.assert_array_equal(small.get_layer("block1_conv1").get_weights()[0], conv1_1)  # Nothing copied.


def test_transplant_refuses_a_source_that_is_not_exactly_vgg16(random_vgg16):
    fcn = build_fcn("32s", fc_units=4096, geometry="same")
    before = fcn.get_weights()
    vgg19 = keras.applications.VGG19(include_top=False, weights=None, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"'vgg19' is not a VGG16: .*found \[.*'block3_conv4'"):
        transplant_vgg16(fcn, vgg19)
    fc1_only = keras.Model(random_vgg16.input, random_vgg16.get_layer("fc1").output, name="vgg16_fc1")
    with pytest.raises(ValueError, match=r"'vgg16_fc1' has fc1 but not fc2: .*both fully connected layers"):
        transplant_vgg16(fcn, fc1_only)
    for a, b in zip(fcn.get_weights(), before):
        np.testing.assert_array_equal(a, b)


# --- FCN → FCN -------------------------------------------------------------------------------


def test_transfer_refuses_other_class_counts_and_non_fcn_sources():
    target = build_fcn("16s", fc_units=8)
    before = target.get_weights()
    with pytest.raises(ValueError, match=r"into layer 'score_fr': expected weight shapes \[\(1, 1, 8, 21\).*no layer was changed"):
        transfer_weights(build_fcn("32s", num_classes=5, fc_units=8), target)
    for a, b in zip(target.get_weights(), before):  # Not half overwritten: the trunk before score_fr too.
        np.testing.assert_array_equal(a, b)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense_x")], name="mlp")
    with pytest.raises(ValueError, match="share no weighted layer: is the source an FCN"):
        transfer_weights(other, build_fcn("16s", fc_units=8))


def test_transfer_refuses_a_source_without_the_trunk():
    """A VGG16 without its top shares the convolutions but would leave fc6/fc7 random."""
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    target = build_fcn("32s", fc_units=8, geometry="same")
    with pytest.raises(ValueError, match=r"has no fc6, fc7: only score and upsampling layers may be new"):
        transfer_weights(vgg, target)


@pytest.mark.parametrize(
    "source, target, message",
    [
        (dict(preprocessing="torch"), dict(preprocessing="caffe"),
         r"the source normalises its input as 'torch', the target as 'caffe'"),
        (dict(geometry="reference"), dict(geometry="same"), r"the source's geometry is 'reference', the target's 'same'"),
        (dict(variant="16s", at_once=True), dict(variant="16s"),
         r"score_pool4 scores pool4 x 0.01 in the source \(trained at once\) but pool4 x 1 in the target"),
        (dict(variant="16s"), dict(variant="8s", at_once=True),
         r"score_pool4 scores pool4 x 1 in the source \(trained in stages\) but pool4 x 0.01 in the target"),
    ],
    ids=["preprocessing", "geometry", "at_once_to_staged", "staged_to_at_once"],
)
def test_transfer_refuses_nets_whose_weightless_parts_differ(source, target, message):
    """Equal weight shapes are not enough: these differences change what the copied weights compute."""
    base = dict(variant="32s", fc_units=8, geometry="same", preprocessing="caffe")
    target_model = build_fcn(**{**base, **target})
    before = target_model.get_weights()
    with pytest.raises(ValueError, match=message + r".*no layer was changed"):
        transfer_weights(build_fcn(**{**base, **source}), target_model)
    for a, b in zip(target_model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_transfer_between_at_once_nets_and_from_32s_into_an_at_once_net():
    """The scaling must match only where a score_pool layer is copied."""
    base = dict(fc_units=8, geometry="same")
    report = transfer_weights(build_fcn("16s", at_once=True, **base), build_fcn("8s", at_once=True, **base))
    assert "score_pool4" in report["copied"] and set(report["kept"]) == {"upscore_pool4", "score_pool3", "upscore8"}
    report = transfer_weights(build_fcn("32s", **base), build_fcn("8s", at_once=True, **base))
    assert set(report["kept"]) == {"upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"}
    assert structure_differences(build_fcn("16s", **base), build_fcn("16s", **base)) == []


@pytest.mark.parametrize("source_at_once, at_once", [(True, False), (False, True)])
def test_staged_training_refuses_a_source_of_the_other_at_once_kind(source_at_once, at_once, tmp_path):
    path = tmp_path / "source.keras"
    build_fcn("16s", fc_units=8, geometry="same", at_once=source_at_once).save(path)
    config = resolve_config(TrainConfig(variant="8s", fc_units=8, geometry="same", at_once=at_once, data="unused",
                                        init_from=str(path), weights="none"))
    kind = "at once" if source_at_once else "in stages"
    with pytest.raises(ValueError, match=rf"it was trained {kind} .*not at_once={at_once}"):
        build_model(config)


# --- Weight files ------------------------------------------------------------------------------


def test_shared_torchvision_notop_weights_load_with_torch_preprocessing(shared_dir, caplog):
    path = shared_dir / "weights" / "vgg16_imagenet_notop_torchvision.weights.h5"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    assert not weights_file_has_top(path)
    assert resolve_preprocessing(path) == "torch"
    with caplog.at_level(logging.WARNING, logger="fcn_keras.model"):
        fcn = build_fcn("8s", weights=path, fc_units=4096)
    assert "fc6 and fc7 of fcn8s start from scratch" in caplog.text
    assert fcn.get_layer("preprocess").mode == "torch"
    vgg = keras.applications.VGG16(include_top=False, weights=None)
    vgg.load_weights(path)
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        for ours, theirs in zip(fcn.get_layer(name).get_weights(), vgg.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)


def test_weights_file_with_top_transplants_fc_layers(tmp_path, random_vgg16):
    path = tmp_path / "vgg16_top.weights.h5"
    random_vgg16.save_weights(path)
    assert weights_file_has_top(path)
    with pytest.raises(ValueError, match="cannot tell which input normalisation"):
        build_fcn("32s", weights=path)
    fcn = build_fcn("32s", weights=path, preprocessing="caffe")
    for dense, conv in (("fc1", "fc6"), ("fc2", "fc7")):
        kernel, bias = random_vgg16.get_layer(dense).get_weights()
        np.testing.assert_array_equal(fcn.get_layer(conv).get_weights()[1], bias)
        np.testing.assert_array_equal(fcn.get_layer(conv).get_weights()[0].reshape(kernel.shape), kernel)


def test_weights_file_of_another_network_is_refused_with_its_name(tmp_path):
    path = tmp_path / "mobilenet.weights.h5"
    keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), include_top=False, alpha=0.35).save_weights(path)
    # What a file holds is checked before its origin: no "cannot tell which normalisation" here.
    with pytest.raises(ValueError, match=rf"weights file '{path}' does not hold VGG16 weights"):
        build_fcn("8s", weights=path, fc_units=8)
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(ValueError, match=rf"weights file '{not_hdf5}' is not an HDF5 file"):
        build_fcn("8s", weights=not_hdf5, fc_units=8)


@pytest.mark.parametrize(
    "weights, preprocessing, expected",
    [("imagenet", "auto", "caffe"), ("imagenet", "caffe_fcn", "caffe_fcn"), ("imagenet", "torch", None), (None, "torch", "torch")],
)
def test_explicit_preprocessing_must_fit_weights_of_known_origin(weights, preprocessing, expected):
    if expected is None:
        with pytest.raises(ValueError, match=r"weights='imagenet' .* expect preprocessing='caffe', not preprocessing='torch'"):
            resolve_preprocessing(weights, preprocessing)
    else:
        assert resolve_preprocessing(weights, preprocessing) == expected


def test_shared_torchvision_weights_refuse_caffe_preprocessing(shared_dir):
    path = shared_dir / "weights" / "vgg16_imagenet_notop_torchvision.weights.h5"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    for mode in ("caffe", "caffe_fcn"):
        with pytest.raises(ValueError, match=rf"expect preprocessing='torch', not preprocessing='{mode}'"):
            build_fcn("8s", weights=path, preprocessing=mode, fc_units=8)
    assert resolve_preprocessing(path, "torch") == "torch"


def test_keras_applications_files_are_known_by_their_md5(tmp_path, monkeypatch):
    """keras.applications lists its VGG16 files by md5 (KNOWN_WEIGHT_FILES keeps those), the
    shared torchvision file by sha256: both digests of a file are looked up."""
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    path.write_bytes(b"stands in for keras.applications' file")
    monkeypatch.setitem(backbone.KNOWN_WEIGHT_FILES, hashlib.md5(path.read_bytes()).hexdigest(), "caffe")
    assert resolve_preprocessing(path) == "caffe"
    with pytest.raises(ValueError, match=r"expect preprocessing='caffe', not preprocessing='torch'"):
        resolve_preprocessing(path, "torch")


def test_legacy_keras_2_files_tell_their_top_by_their_layer_names(tmp_path):
    """keras.applications downloads the Keras 2 HDF5 format: a ``layer_names`` attribute."""
    for names, top in ((["block5_pool", "flatten", "fc1", "fc2", "predictions"], True), (["block5_conv3", "block5_pool"], False)):
        path = tmp_path / f"legacy_{top}.h5"
        with h5py.File(path, "w") as f:
            f.attrs["layer_names"] = [name.encode() for name in names]
        assert weights_file_has_top(path) is top
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(2))
    with pytest.raises(ValueError, match=rf"weights file '{tmp_path / 'other.h5'}' is not a Keras weights file"):
        weights_file_has_top(tmp_path / "other.h5")


def test_a_long_keras_reason_is_cut_in_the_error(tmp_path, monkeypatch):
    """Keras may print whole weight tensors in its error: the message keeps their first 400 characters."""
    path = tmp_path / "vgg16_notop.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1"]

    def long_error(self, filepath, *args, **kwargs):
        raise ValueError("x" * 1000)

    monkeypatch.setattr(keras.Model, "load_weights", long_error)
    with pytest.raises(ValueError, match=r"does not hold VGG16 weights \(include_top=False\): x{400} \.\.\.$"):
        load_vgg16(path)
