"""fcn_keras.io: JPEGs read exactly as training and the SavedModel decode them (TensorFlow's
decoder, not PIL's), and models loaded from a .keras file or a training run folder."""

import io
import logging
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn_keras.data import records
from fcn_keras.io import RUN_CHECKPOINTS, check_fcn, load_fcn, read_image, resolve_model_file, upgrade_upsampling
from fcn_keras.layers import CropToReference, Deconvolution
from fcn_keras.model import build_fcn


def noisy_image(seed: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] with smooth structure and noise: its JPEG decodes differently with
    libjpeg's fast and accurate integer IDCTs."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3)).astype("uint8")
    smooth = np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.BILINEAR)).astype(int)
    return np.clip(smooth + rng.integers(-30, 31, smooth.shape), 0, 255).astype("uint8")


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --- JPEG decoding ---------------------------------------------------------------------------------


def test_jpegs_decode_exactly_as_tensorflow_decodes_them_not_as_pil(tmp_path):
    encoded = jpeg_bytes(noisy_image(0, (64, 96)))
    (tmp_path / "photo.jpg").write_bytes(encoded)
    (tmp_path / "named_like_a.png").write_bytes(encoded)  # Recognised by its bytes, not its name.
    gray = jpeg_bytes(noisy_image(1, (40, 48))[..., 0])
    (tmp_path / "gray.jpg").write_bytes(gray)

    expected = tf.io.decode_jpeg(encoded, channels=3).numpy()
    pil = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    assert not np.array_equal(pil, expected), "PIL and TensorFlow agree here: the test would not tell them apart"
    for name in ("photo.jpg", "named_like_a.png"):
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (64, 96, 3)
        np.testing.assert_array_equal(image, expected, err_msg=name)
        # The training pipeline's decoder and the SavedModel's give those pixels too.
        np.testing.assert_array_equal(image, records.decode_image(tf.constant(encoded)).numpy())
        np.testing.assert_array_equal(image, tf.io.decode_image(encoded, channels=3).numpy())
    np.testing.assert_array_equal(read_image(tmp_path / "gray.jpg"), tf.io.decode_jpeg(gray, channels=3).numpy())


def test_real_voc_jpegs_decode_as_the_training_pipeline_decodes_them(shared_dir):
    folder = shared_dir / "voc2012" / "VOCdevkit" / "VOC2012" / "JPEGImages"
    paths = sorted(folder.glob("*.jpg"))[:3]
    if not paths:
        pytest.skip(f"no JPEG in {folder}")
    for path in paths:
        encoded = path.read_bytes()
        expected = records.decode_image(tf.constant(encoded)).numpy()
        np.testing.assert_array_equal(read_image(path), expected, err_msg=str(path))


def test_broken_and_truncated_jpegs_are_named_in_the_error(tmp_path):
    encoded = jpeg_bytes(noisy_image(2, (48, 48)))
    (tmp_path / "truncated.jpg").write_bytes(encoded[: len(encoded) // 3])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for name in ("truncated.jpg", "broken.jpg"):
        path = tmp_path / name
        expected = f"^cannot read image {re.escape(str(path))}: TensorFlow's JPEG decoder failed"
        with pytest.raises(ValueError, match=expected):
            read_image(path)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_image(tmp_path / "missing.jpg")


# --- Models: a .keras file or a run folder ------------------------------------------------------------


def small_fcn() -> keras.Model:
    """The smallest model ``check_fcn`` accepts: RGB in, 21 class scores per pixel out."""
    inputs = keras.Input((None, None, 3))
    return keras.Model(inputs, keras.layers.Conv2D(21, 1)(keras.layers.Rescaling(1 / 255)(inputs)))


def test_check_fcn_refuses_a_crop_that_shrinks_the_output_and_computes_what_keras_cannot_infer():
    inputs = keras.Input((None, None, 3))
    scores = keras.layers.Conv2D(21, 1)(inputs)
    # Scores 2 pixels larger than the image, cropped at offset 5: 3 pixels short on each side.
    padded = keras.layers.ZeroPadding2D(1)(scores)
    cropped = CropToReference(5, name="score")([padded, inputs])
    with pytest.raises(ValueError, match=r"m.keras is not an FCN: it fails on a 64x96 image \(ValueError: "
                                         r"layer 'score' cannot crop a height of 64 at offset 5"):
        check_fcn(keras.Model(inputs, cropped), "m.keras")
    # A layer without shape inference: the model computes the probe's scores instead.
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda t: t[:, ::2, ::2, :])(scores))
    with pytest.raises(ValueError, match=r"not pixel-aligned with its input \(a 64x96 image gives 32x48 scores\)"):
        check_fcn(lambda_model, "l.keras")
    assert check_fcn(keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(scores)), "ok.keras") is not None


def test_a_run_folder_resolves_to_best_keras_else_last_keras(tmp_path):
    assert RUN_CHECKPOINTS == ("best.keras", "last.keras")  # What fcn_keras.train writes.
    run = tmp_path / "runs" / "fcn16s"
    run.mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as error:
        resolve_model_file(run)
    message = str(error.value)
    assert message.startswith(f"model folder {run} holds no trained model: looked for ")
    assert f"{run / 'best.keras'} and {run / 'last.keras'}" in message
    saved = tmp_path / "serving" / "fcn16s" / "1"
    saved.mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"model folder {re.escape(str(saved))} is a SavedModel "
                                                r"\(fcn_keras.export's\), not a Keras model"):
        resolve_model_file(saved)

    (run / "last.keras").write_bytes(b"")
    assert resolve_model_file(run) == run / "last.keras"
    (run / "best.keras").write_bytes(b"")
    assert resolve_model_file(run) == run / "best.keras"
    assert resolve_model_file(run / "last.keras") == run / "last.keras"  # A file is itself.
    with pytest.raises(FileNotFoundError, match=f"model file not found: {re.escape(str(run / 'no.keras'))}"):
        resolve_model_file(run / "no.keras")


def test_load_fcn_takes_a_run_folder_and_does_not_compile(tmp_path):
    model = small_fcn()
    model.compile(optimizer="sgd", loss="mse")  # Saved with a training config, like train's files.
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "last.keras")
    loaded = load_fcn(run)
    assert not loaded.compiled  # compile=False: no optimizer, so no "Skipping variable loading" warning.
    for expected, actual in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)
    os.remove(run / "last.keras")
    with pytest.raises(FileNotFoundError, match=f"model folder {re.escape(str(run))} holds no trained model"):
        load_fcn(run)


def test_models_saved_with_conv2d_transpose_load_and_are_upgraded_to_deconvolution(tmp_path, caplog):
    # Models saved before fcn_keras.layers.Deconvolution existed name Keras' Conv2DTranspose.
    model = build_fcn("16s", num_classes=3, fc_units=8)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in model.get_weights()])
    config = model.get_config()
    upsamplings = [layer for layer in config["layers"] if layer["registered_name"] == "fcn_keras>Deconvolution"]
    assert [layer["name"] for layer in upsamplings] == ["upscore2", "upscore16"]
    for layer in upsamplings:
        layer.update(module="keras.layers", class_name="Conv2DTranspose", registered_name=None)
    old = keras.Model.from_config(config)
    old.set_weights(model.get_weights())
    old.save(tmp_path / "old.keras")
    images = rng.integers(0, 256, (1, 37, 45, 3)).astype("uint8")
    expected = np.asarray(model(images))
    # Keras loads it as it was saved, and it computes the same.
    plain = keras.saving.load_model(tmp_path / "old.keras")
    assert type(plain.get_layer("upscore16")) is keras.layers.Conv2DTranspose
    np.testing.assert_allclose(plain(images), expected, atol=1e-4)
    # load_fcn (predict, evaluate, export, train --init_from) computes it as Deconvolution.
    with caplog.at_level(logging.INFO, logger="fcn_keras.io"):
        loaded = load_fcn(tmp_path / "old.keras")
    assert type(loaded.get_layer("upscore2")) is Deconvolution and type(loaded.get_layer("upscore16")) is Deconvolution
    assert not loaded.get_layer("upscore16").trainable and loaded.get_layer("upscore2").trainable
    assert "['upscore2', 'upscore16'] computed as Deconvolution" in caplog.text
    np.testing.assert_allclose(loaded(images), expected, atol=1e-4)
    # A current model needs nothing.
    assert upgrade_upsampling(model) is model
