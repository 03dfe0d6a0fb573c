"""Caffe .caffemodel import: files written here byte by byte in Caffe's format (an encoder of
the protobuf wire format independent of the reader, field numbers from caffe.proto), checked
against Caffe's arithmetic written out in numpy: convolution [out, in, kh, kw] correlates, an
InnerProduct flattens [C, H, W], a deconvolution [in, out, kh, kw] scatters, and the whole
converted net against a numpy forward pass of the authors' deploy nets."""

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from fcn_keras.architecture import VGG16_BLOCKS
from fcn_keras.caffe_import import fcn_from_caffemodel, keras_layer_name, read_caffemodel

REPO_ROOT = Path(__file__).resolve().parents[1]
FC, K = 8, 5  # fc6/fc7 units and classes of the tiny nets


# --- A writer of Caffe's NetParameter (protobuf wire format) ---------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _blob(array: np.ndarray, legacy: bool = False) -> bytes:
    """BlobProto: shape = 7 (BlobShape: dim = 1, packed; none for one value) or
    num/channels/height/width = 1..4 (legacy 4-D, leading 1s), data = 5 (packed float)."""
    if array.ndim == 0:
        return _field(5, array.astype("<f4").tobytes())
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(_varint(n << 3) + _varint(d) for n, d in zip((1, 2, 3, 4), dims))
    else:
        head = _field(7, _field(1, b"".join(_varint(d) for d in array.shape)))
    return head + _field(5, array.astype("<f4").tobytes())


def _layer(name: str, kind: str, blobs: list[np.ndarray], v1: bool = False, transpose: bool = False) -> bytes:
    """LayerParameter (name 1, type 2, bottom 3, param 6, blobs 7, inner_product_param 117) or
    V1LayerParameter (name 4, type 5 enum, blobs 6, inner_product_param 17); NetParameter holds
    them as layer = 100 / layers = 2. ``transpose``: an InnerProduct whose weight is saved
    [in, out] (InnerProductParameter.transpose = 6)."""
    inner_product = _field(117 if not v1 else 17, _varint(6 << 3) + _varint(1)) if transpose else b""
    if transpose:
        blobs = [blobs[0].T, *blobs[1:]]
    if v1:
        enum = {"Convolution": 4, "InnerProduct": 14, "Deconvolution": 39}[kind]
        body = _field(2, b"data") + _field(4, name.encode()) + _varint(5 << 3) + _varint(enum) + inner_product
        body += b"".join(_field(6, _blob(b, legacy=True)) for b in blobs)
        return _field(2, body)
    lr_mult = _varint(3 << 3 | 5) + struct.pack("<f", 1.0)  # ParamSpec.lr_mult: a fixed32 field to skip
    body = _field(1, name.encode()) + _field(2, kind.encode()) + _field(3, b"data") + _field(6, lr_mult)
    body += b"".join(_field(7, _blob(b)) for b in blobs) + inner_product
    return _field(100, body)


def _write_net(path, layers: list[bytes], name: str = "net") -> None:
    path.write_bytes(_field(1, name.encode()) + b"".join(layers))


def _conv_blobs(rng, out: int, inputs: int, kernel: int, gain: float = 1.0) -> list[np.ndarray]:
    """A Caffe convolution's [out, in, k, k] weight, He-scaled (random, non-symmetric; activations
    neither vanish nor explode through VGG16), times ``gain``, and its [out] bias."""
    weight = rng.normal(size=(out, inputs, kernel, kernel)) * np.sqrt(2 / (inputs * kernel * kernel)) * gain
    return [weight, rng.normal(0, 0.1, out)]


def _vgg_blobs(rng) -> dict[str, list[np.ndarray]]:
    """Caffe-shaped random weights of VGG16's convolutions, conv1_1 ... conv5_3."""
    blobs, channels = {}, 3
    for block, (width, convs) in enumerate(VGG16_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            blobs[f"conv{block}_{conv}"] = _conv_blobs(rng, width, channels, 3)
            channels = width
    return blobs


def _fcn_layers(rng, variant: str = "8s", at_once: bool = True) -> dict[str, tuple[str, list[np.ndarray]]]:
    """The layers with weights of the authors' voc-fcn{variant}(-atonce) net (tiny fc/classes), in
    their order. At once, score_pool4/3 are 100 / 1e4 times larger, undoing the scale layers, so
    the skips still count in the output."""
    layers = {name: ("Convolution", blobs) for name, blobs in _vgg_blobs(rng).items()}
    layers.update(fc6=("Convolution", _conv_blobs(rng, FC, 512, 7)), fc7=("Convolution", _conv_blobs(rng, FC, FC, 1)),
                  score_fr=("Convolution", _conv_blobs(rng, K, FC, 1)))
    deconv = lambda k: ("Deconvolution", [rng.normal(0, 0.3, (K, K, k, k))])  # noqa: E731
    for block, channels, scale in ((4, 512, 0.01), (3, 256, 1e-4))[: {"32s": 0, "16s": 1, "8s": 2}[variant]]:
        layers["upscore2" if block == 4 else "upscore_pool4"] = deconv(4)
        if at_once:
            layers[f"scale_pool{block}"] = ("Scale", [np.full(channels, scale)])
        layers[f"score_pool{block}"] = ("Convolution", _conv_blobs(rng, K, channels, 1, 1 / scale if at_once else 1))
    final = {"32s": ("upscore", 32), "16s": ("upscore16", 16), "8s": ("upscore8", 8)}[variant]
    layers[final[0]] = deconv(2 * final[1])
    return layers


@pytest.fixture(scope="module")
def fcn_file(tmp_path_factory):
    layers = _fcn_layers(np.random.default_rng(0))
    path = tmp_path_factory.mktemp("caffe") / "fcn8s-atonce.caffemodel"
    _write_net(path, [_layer(name, kind, blobs) for name, (kind, blobs) in layers.items()])
    return path, layers


# --- Reading -----------------------------------------------------------------------------------


def test_reader_returns_every_blob_in_caffe_shape(fcn_file, tmp_path):
    path, layers = fcn_file
    read = read_caffemodel(path)
    assert [layer.name for layer in read] == list(layers)
    # A blob without dimensions holds one value (Caffe's Blob::FromProto), e.g. a scalar Scale.
    scalar = tmp_path / "scalar.caffemodel"
    _write_net(scalar, [_layer("scale", "Scale", [np.array(0.5)])])
    assert read_caffemodel(scalar)[0].blobs[0].shape == () and read_caffemodel(scalar)[0].blobs[0] == 0.5
    for layer in read:
        kind, blobs = layers[layer.name]
        assert layer.type == kind and len(layer.blobs) == len(blobs)
        for got, expected in zip(layer.blobs, blobs):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected.astype("float32"))


def test_bad_files_are_refused_with_their_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.caffemodel' does not exist"):
        read_caffemodel(tmp_path / "missing.caffemodel")
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text('name: "FCN"\nlayer { name: "conv1_1" type: "Convolution" }\n')
    with pytest.raises(ValueError, match=r"deploy.prototxt' (is not a Caffe net|holds no layer with weights)"):
        read_caffemodel(prototxt)
    truncated = tmp_path / "truncated.caffemodel"
    _write_net(truncated, [_layer("conv1_1", "Convolution", [np.ones((2, 3, 3, 3))])])
    truncated.write_bytes(truncated.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated.caffemodel' is not a Caffe net"):
        read_caffemodel(truncated)
    with pytest.raises(ValueError, match=f"caffemodel {re.escape(repr(str(tmp_path)))} is a folder"):
        read_caffemodel(tmp_path)
    # Blobs no Caffe writes (found by review: a TypeError traceback, numpy's messages without the
    # file, and dimensions whose product wraps around to the value count passed the size check).
    conv = _field(1, b"conv1_1") + _field(2, b"Convolution")
    bad_blobs = {
        "varint_data": (_field(7, _field(1, _varint(2))) + _varint(5 << 3) + _varint(7), "a blob's data is not 4-byte floats (a varint)"),
        "odd_data": (_field(7, _field(1, _varint(1))) + _field(5, bytes(5)), "a blob's data is not 4-byte floats (5 bytes)"),
        "odd_double": (_field(7, _field(1, _varint(1))) + _field(8, bytes(12)), "a blob's double_data is not 8-byte floats (12 bytes)"),
        "wrapping": (_field(7, _field(1, _varint(2**32) + _varint(2**32))), "a blob of shape (4294967296, 4294967296) holds 0 values"),
        # An 11-byte varint (protobuf's are at most 10): not read on into a 70-bit number.
        "overlong": (_varint(5 << 3) + b"\xff" * 10 + b"\x01", "truncated or overlong varint"),
        "field_zero": (_varint(0 << 3) + _varint(1), "field number 0"),
    }
    for name, (blob, message) in bad_blobs.items():
        path = tmp_path / f"{name}.caffemodel"
        path.write_bytes(_field(100, conv + _field(7, blob)))
        with pytest.raises(ValueError, match=re.escape(f"{name}.caffemodel' is not a Caffe net (.caffemodel): {message}")):
            read_caffemodel(path)


# --- Converting: the weights do Caffe's arithmetic ----------------------------------------------


def test_fcn_file_gives_the_authors_net_computing_what_caffe_computes(fcn_file):
    path, layers = fcn_file
    model, report = fcn_from_caffemodel(path)
    assert (report["source"], report["variant"], report["at_once"], report["num_classes"]) == ("FCN", "8s", True, K)
    assert report["kept"] == [] and report["unused"] == []
    assert len(report["copied"]) == 13 + 2 + 6
    assert model.get_layer("preprocess").mode == "caffe_fcn" and model.output_shape[-1] == K
    assert model.get_layer("scale_pool4").scale == 0.01
    rng = np.random.default_rng(1)

    # Convolution: y[o, i, j] = b[o] + sum_{c, u, v} W[o, c, u, v] x[c, i + u, j + v].
    x = rng.normal(size=(3, 6, 7)).astype("float32")  # Caffe's [C, H, W]
    w, b = (blob.astype("float32") for blob in layers["conv1_1"][1])
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # [C, 4, 5, 3, 3]
    caffe = np.einsum("ocuv,cijuv->oij", w, windows) + b[:, None, None]
    kernel, bias = model.get_layer(keras_layer_name("conv1_1")).get_weights()
    ours = keras.ops.conv(x.transpose(1, 2, 0)[None], kernel, padding="valid")[0] + bias
    np.testing.assert_allclose(np.asarray(ours), caffe.transpose(1, 2, 0), rtol=1e-4, atol=1e-5)

    # Deconvolution: y[o, s*i + u, s*j + v] += W[c, o, u, v] x[c, i, j] (Caffe's col2im).
    x = rng.normal(size=(K, 3, 2)).astype("float32")
    w = layers["upscore2"][1][0].astype("float32")
    caffe = np.zeros((K, 2 * (3 - 1) + 4, 2 * (2 - 1) + 4), "float32")
    for i in range(3):
        for j in range(2):
            caffe[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4] += np.einsum("couv,c->ouv", w, x[:, i, j])
    (kernel,) = model.get_layer("upscore2").get_weights()
    ours = keras.ops.conv_transpose(x.transpose(1, 2, 0)[None], kernel, strides=2, padding="valid")[0]
    np.testing.assert_allclose(np.asarray(ours), caffe.transpose(1, 2, 0), rtol=1e-4, atol=1e-5)

    # Every other layer: the same layouts, biases included.
    for name, (kind, blobs) in layers.items():
        if kind == "Scale":
            continue
        weights = model.get_layer(keras_layer_name(name)).get_weights()
        np.testing.assert_array_equal(weights[0], blobs[0].astype("float32").transpose(2, 3, 1, 0))
        if len(blobs) == 2:
            np.testing.assert_array_equal(weights[1], blobs[1].astype("float32"))


@pytest.mark.parametrize("v1", [True, False], ids=["v1", "v2"])
def test_v1_vgg16_file_gives_the_backbone_with_fc6_fc7_from_its_inner_products(tmp_path, v1):
    """VGG_ILSVRC_16_layers.caffemodel: V1 layers, legacy 4-D blobs, fc6-fc8 InnerProducts; and the
    same net in today's format (V2 layers, whose InnerProductParameter is field 117: found by review
    untested, a wrong field number read transposed fc weights as they lay)."""
    rng = np.random.default_rng(2)
    vgg = _vgg_blobs(rng)
    fc6, fc7 = rng.normal(0, 0.1, (FC, 512 * 7 * 7)), rng.normal(0, 0.1, (FC, FC))
    fc_biases = rng.normal(0, 0.1, FC), rng.normal(0, 0.1, FC)
    layers = [_layer(name, "Convolution", blobs, v1=v1) for name, blobs in vgg.items()]
    # fc6 and the square fc7 saved [in, out] (transpose: true): read back as [out, in].
    layers += [_layer("fc6", "InnerProduct", [fc6, fc_biases[0]], v1=v1, transpose=True),
               _layer("fc7", "InnerProduct", [fc7, fc_biases[1]], v1=v1, transpose=True),
               _layer("fc8", "InnerProduct", [rng.normal(0, 0.1, (10, FC)), np.zeros(10)], v1=v1)]
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    _write_net(path, layers)

    model, report = fcn_from_caffemodel(path, variant="16s", num_classes=K)
    assert (report["source"], report["variant"], report["num_classes"]) == ("VGG16", "16s", K)
    assert report["unused"] == ["fc8"] and report["kept"] == ["score_fr", "upscore2", "score_pool4", "upscore16"]
    assert model.get_layer("preprocess").mode == "caffe"
    assert not np.any(model.get_layer("score_fr").get_weights()[0])  # score layers start at zero

    # fc6 on pool5 [512, 7, 7] is W @ pool5.flatten() in Caffe: one output pixel of our 7x7 conv.
    pool5 = rng.normal(size=(512, 7, 7)).astype("float32")
    kernel, bias = model.get_layer("fc6").get_weights()
    ours = keras.ops.conv(pool5.transpose(1, 2, 0)[None], kernel, padding="valid")[0, 0, 0] + bias
    np.testing.assert_allclose(np.asarray(ours), fc6.astype("float32") @ pool5.ravel() + fc_biases[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(model.get_layer("fc7").get_weights()[0][0, 0], fc7.astype("float32").T)
    np.testing.assert_array_equal(
        model.get_layer("block5_conv3").get_weights()[0], vgg["conv5_3"][0].astype("float32").transpose(2, 3, 1, 0)
    )


def test_files_that_do_not_fit_are_refused_before_any_copy(tmp_path, fcn_file):
    path, layers = fcn_file
    with pytest.raises(ValueError, match=r"holds an FCN-8s of 5 classes; variant='16s' differs"):
        fcn_from_caffemodel(path, variant="16s")

    def write(name, changed):
        out = tmp_path / name
        _write_net(out, [_layer(n, kind, blobs) for n, (kind, blobs) in {**layers, **changed}.items() if blobs is not None])
        return out

    with pytest.raises(ValueError, match=r"holds an FCN-8s of 5 classes; num_classes=21 differs"):
        fcn_from_caffemodel(path, num_classes=21)
    missing = write("missing.caffemodel", {"conv3_2": ("Convolution", None)})
    with pytest.raises(ValueError, match="the caffemodel has no layer for 'block3_conv2'"):
        fcn_from_caffemodel(missing)
    # fc7 too: found by review, a file without it would have kept a random fc7, reported as "kept".
    with pytest.raises(ValueError, match="the caffemodel has no layer for 'fc7'"):
        fcn_from_caffemodel(write("no_fc7.caffemodel", {"fc7": ("Convolution", None)}))
    # Only VGG16's own ImageNet classifier (fc8) may go unused, not another fc layer.
    extra = write("extra.caffemodel", {"fc8_pascal": ("Convolution", _conv_blobs(np.random.default_rng(1), K, FC, 1))})
    with pytest.raises(ValueError, match=r"weights that no layer of the FCN-8s takes: \['fc8_pascal'\]"):
        fcn_from_caffemodel(extra)
    wrong = write("wrong.caffemodel", {"score_pool4": ("Convolution", [np.ones((K, 256, 1, 1)), np.ones(K)])})
    with pytest.raises(ValueError, match=r"'score_pool4' \(Convolution\) has weights \(5, 256, 1, 1\); .* needs \(5, 512, 1, 1\)"):
        fcn_from_caffemodel(wrong)
    biased = write("biased.caffemodel", {"upscore8": ("Deconvolution", [np.ones((K, K, 16, 16)), np.ones(K)])})
    with pytest.raises(ValueError, match="'upscore8' has a non-zero bias"):
        fcn_from_caffemodel(biased)
    alexnet_fc6 = write("alexnet.caffemodel", {"fc6": ("Convolution", [np.ones((FC, 256, 6, 6)), np.ones(FC)])})
    with pytest.raises(ValueError, match=r"fc6's weights \(8, 256, 6, 6\) are not VGG16's fc6 \(25088 = 512 x 7 x 7"):
        fcn_from_caffemodel(alexnet_fc6)
    renamed = write("renamed.caffemodel", {"score-pool4": layers["score_pool4"]})
    with pytest.raises(ValueError, match=r"weights that no layer of the FCN-8s takes: \['score-pool4'\]"):
        fcn_from_caffemodel(renamed)
    scaled = write("scaled.caffemodel", {"scale_pool3": ("Scale", [np.full(256, 0.5)])})
    with pytest.raises(ValueError, match="scale_pool3 scales by .*not the at-once net's 0.0001"):
        fcn_from_caffemodel(scaled)
    # Every channel's factor is checked, not their mean (the Keras layer is one Rescaling).
    uneven = write("uneven.caffemodel", {"scale_pool3": ("Scale", [np.tile([0.0, 2e-4], 128)])})
    with pytest.raises(ValueError, match=r"scale_pool3 scales by \[0\.(0+)? +0\.0002\], not the at-once net's 0.0001"):
        fcn_from_caffemodel(uneven)


def test_cli_writes_a_keras_file_that_predicts_like_the_converted_model(fcn_file, tmp_path):
    path, _ = fcn_file
    output = tmp_path / "fcn8s.keras"
    command = [sys.executable, "-m", "fcn_keras.caffe_import", f"--caffemodel={path}", f"--output={output}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FCN -> FCN-8s at once, 5 classes, fc6/fc7 8 units" in result.stdout
    assert f"wrote {output}" in result.stdout and not result.stderr.count("Traceback")
    loaded = keras.saving.load_model(output)
    expected, _ = fcn_from_caffemodel(path)
    images = np.random.default_rng(3).integers(0, 256, (1, 20, 23, 3)).astype("uint8")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected.predict(images, verbose=0), rtol=1e-5, atol=1e-5)

    again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and f"{output} exists: pass --overwrite" in again.stderr
    bad = subprocess.run([*command[:-1], f"--output={tmp_path / 'x.h5'}"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--output must end with .keras" in bad.stderr


# --- The whole net against Caffe's forward pass in numpy ----------------------------------------


def _caffe_forward(weights: dict[str, list[np.ndarray]], image: np.ndarray, variant: str, at_once: bool) -> np.ndarray:
    """The authors' voc-fcn{variant}(-atonce) deploy net, layer by layer as Caffe computes it:
    BGR minus their mean, conv1_1 padded by 100, 3x3 convs padded by 1, 2x2 ceil-mode pooling,
    fc6/fc7 valid, deconvolution by col2im scatter, and the Crop offsets of their prototxts
    (score_pool4c 5, score_pool3c 9, score 19 / 27 / 31 for 32s / 16s / 8s). Returns [H, W, K]."""

    def conv(x, name, pad, relu=True):
        w, b = weights[name]
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (pad, pad), (pad, pad))), w.shape[2:], axis=(1, 2))
        y = np.tensordot(w, windows, axes=([1, 2, 3], [0, 3, 4])) + b[:, None, None]
        return np.maximum(y, 0) if relu else y

    def pool(x):
        c, h, w = x.shape
        padded = np.full((c, h + h % 2, w + w % 2), -np.inf)
        padded[:, :h, :w] = x
        return padded.reshape(c, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2).max(axis=(2, 4))

    def deconv(x, name, stride):
        w = weights[name][0]
        k, (_, h, wd) = w.shape[-1], x.shape
        y = np.zeros((w.shape[1], (h - 1) * stride + k, (wd - 1) * stride + k))
        for i in range(h):
            for j in range(wd):
                y[:, stride * i : stride * i + k, stride * j : stride * j + k] += np.einsum("couv,c->ouv", w, x[:, i, j])
        return y

    def crop(x, reference, offset):
        return x[:, offset : offset + reference.shape[1], offset : offset + reference.shape[2]]

    data = (image[:, :, ::-1].astype("float64") - [104.00698793, 116.66876762, 122.67891434]).transpose(2, 0, 1)
    h, pools = data, {}
    for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1):
        for index in range(1, convs + 1):
            h = conv(h, f"conv{block}_{index}", 100 if (block, index) == (1, 1) else 1)
        h = pools[block] = pool(h)
    score = conv(conv(conv(h, "fc6", 0), "fc7", 0), "score_fr", 0, relu=False)
    if variant != "32s":
        up = deconv(score, "upscore2", 2)
        score = up + crop(conv(pools[4] * (0.01 if at_once else 1), "score_pool4", 0, relu=False), up, 5)
    if variant == "8s":
        up = deconv(score, "upscore_pool4", 2)
        score = up + crop(conv(pools[3] * (1e-4 if at_once else 1), "score_pool3", 0, relu=False), up, 9)
    final, stride, offset = {"32s": ("upscore", 32, 19), "16s": ("upscore16", 16, 27), "8s": ("upscore8", 8, 31)}[variant]
    return crop(deconv(score, final, stride), data, offset).transpose(1, 2, 0)


@pytest.mark.parametrize("variant, at_once", [("32s", False), ("16s", False), ("8s", True)])
def test_converted_net_predicts_what_caffe_computes(tmp_path, variant, at_once):
    """Random, non-symmetric weights and an odd-sized image: every offset, the ceil-mode pooling
    and the kernel layouts must be right."""
    rng = np.random.default_rng(4)
    layers = _fcn_layers(rng, variant, at_once)
    path = tmp_path / f"fcn{variant}.caffemodel"
    _write_net(path, [_layer(name, kind, blobs) for name, (kind, blobs) in layers.items()])
    weights = {name: [blob.astype("float32").astype("float64") for blob in blobs] for name, (_, blobs) in layers.items()}

    image = rng.integers(0, 256, (37, 45, 3)).astype("uint8")
    caffe = _caffe_forward(weights, image, variant, at_once)
    model, report = fcn_from_caffemodel(path)
    assert (report["variant"], report["at_once"]) == (variant, at_once)
    ours = model.predict(image[None], verbose=0)[0]
    assert ours.shape == caffe.shape == (37, 45, K)
    print(variant, "max |ours - caffe| / max |caffe|:", np.abs(ours - caffe).max() / np.abs(caffe).max())
    np.testing.assert_allclose(ours, caffe, atol=1e-4 * np.abs(caffe).max())


def test_every_cli_loader_takes_an_fcn_caffemodel(fcn_file, tmp_path):
    """evaluate, predict, export and train --init_from load models with io.load_fcn."""
    from fcn_keras.io import load_fcn

    path, _ = fcn_file
    loaded = load_fcn(path)
    expected, _ = fcn_from_caffemodel(path)
    images = np.random.default_rng(5).integers(0, 256, (1, 19, 21, 3)).astype("uint8")
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), expected.predict(images, verbose=0))
    vgg = tmp_path / "vgg.caffemodel"
    rng = np.random.default_rng(6)
    _write_net(vgg, [_layer(name, "Convolution", blobs) for name, blobs in _vgg_blobs(rng).items()]
               + [_layer("fc6", "Convolution", [np.zeros((FC, 512, 7, 7)), np.zeros(FC)]),
                  _layer("fc7", "Convolution", [np.zeros((FC, FC, 1, 1)), np.zeros(FC)])])
    with pytest.raises(ValueError, match="vgg.caffemodel holds a VGG16, not a trained FCN"):
        load_fcn(vgg)
