"""The predict CLI: VOC palette label PNGs equal to the model's labels, overlays, .keras and
SavedModel models, converted gray/RGBA inputs, and bad inputs reported by name."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn_keras import export, predict
from fcn_keras.constants import VOC_PALETTE
from fcn_keras.inference import labels_model
from fcn_keras.io import read_image
from test_export import random_image, tiny_fcn

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return tiny_fcn(seed=1)


@pytest.fixture(scope="module")
def labeler(model):
    """The model with the argmax appended (one model, so one traced predict function)."""
    return labels_model(model)


@pytest.fixture(scope="module")
def keras_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "fcn8s.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of good images (RGB JPEG and PNG, gray, RGBA), bad ones and a non-image file.
    Returns (folder, {stem: the RGB pixels the model must see})."""
    folder = tmp_path_factory.mktemp("inputs")
    rgb = random_image(1, (37, 91))
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    Image.fromarray(random_image(2, (48, 64))).save(folder / "drawing.png")
    gray = random_image(3, (40, 40))[..., 0]
    Image.fromarray(gray).save(folder / "gray.png")
    rgba = np.dstack([random_image(4, (33, 45)), np.full((33, 45), 7, np.uint8)])
    Image.fromarray(rgba).save(folder / "alpha.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "deep.png")  # 16-bit.
    (folder / "notes.txt").write_text("not an image")
    expected = {
        "photo": np.asarray(Image.open(folder / "photo.jpg").convert("RGB")),
        "drawing": np.asarray(Image.open(folder / "drawing.png")),
        "gray": np.repeat(gray[..., None], 3, axis=-1),
        "alpha": rgba[..., :3],
    }
    return folder, expected


def run_predict_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "fcn_keras.predict", *args], capture_output=True, text=True, env=env, timeout=300
    )


def check_outputs(labeler, output_dir: Path, expected: dict, overlay_format: str) -> None:
    """Every label PNG is a VOC palette PNG of the model's labels; every overlay has its size."""
    for stem, image in expected.items():
        png = Image.open(output_dir / f"{stem}.png")
        assert png.mode == "P", (stem, png.mode)
        np.testing.assert_array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3), VOC_PALETTE)
        labels = labeler.predict(image[np.newaxis], verbose=0)[0]
        np.testing.assert_array_equal(np.asarray(png), labels, err_msg=stem)
        with Image.open(output_dir / f"{stem}_overlay.{overlay_format}") as picture:
            assert picture.size == image.shape[1::-1] and picture.mode == "RGB"


def test_cli_on_a_folder_with_bad_files_processes_the_rest_and_fails(labeler, keras_file, inputs, tmp_path):
    folder, expected = inputs
    result = run_predict_cli(f"--model={keras_file}", f"--output_dir={tmp_path}", str(folder), str(folder / "missing.jpg"))
    assert result.returncode == 1, result.stderr[-3000:]
    check_outputs(labeler, tmp_path, expected, "jpg")
    assert len(np.unique(np.asarray(Image.open(tmp_path / "photo.png")))) > 3  # Labels vary.
    assert "wrote 4 label maps and overlays" in result.stdout and "1 files without an image extension ignored" in result.stdout
    assert "3 inputs failed:" in result.stderr
    assert f"{folder / 'missing.jpg'}: no such file or folder" in result.stderr
    assert f"cannot read image {folder / 'broken.jpg'}" in result.stderr
    assert f"cannot use image {folder / 'deep.png'}: expected 8 bits per channel" in result.stderr
    assert "image/step" in result.stdout or "/6" in result.stdout  # The Progbar ran.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # No temporaries.


def test_savedmodel_gives_the_same_label_maps_as_the_keras_file(model, labeler, inputs, tmp_path):
    folder, expected = inputs
    export.export_saved_model(model, tmp_path / "serving", name="fcn8s", version=4)
    images = [folder / "photo.jpg", folder / "gray.png"]
    # The model folder (highest version) works like the version folder.
    predictor = predict.load_predictor(tmp_path / "serving" / "fcn8s")
    written, bad = predict.predict_images(predictor, images, tmp_path / "out", overlay_format="png", verbose=False)
    assert bad == [] and [p.name for p in written] == ["photo.png", "gray.png"]
    check_outputs(labeler, tmp_path / "out", {k: expected[k] for k in ("photo", "gray")}, "png")


def test_inputs_with_the_same_stem_do_not_overwrite_each_other(inputs, tmp_path):
    folder, _ = inputs
    twin = tmp_path / "twin"
    twin.mkdir()
    Image.fromarray(random_image(9, (30, 30))).save(twin / "photo.png")
    images, bad, ignored = predict.collect_images([folder / "photo.jpg", twin])
    assert images == [folder / "photo.jpg", twin / "photo.png"] and bad == [] and ignored == 0
    written, bad = predict.predict_images(lambda image: image[..., 0] % 21, images, tmp_path / "out", verbose=False)
    assert [p.name for p in written] == ["photo.png"]
    assert bad == [(twin / "photo.png", f"its outputs would overwrite those of {folder / 'photo.jpg'} (same file stem)")]


def test_models_that_are_not_fcns_are_named_in_the_error(inputs, tmp_path, capsys):
    import keras

    folder, _ = inputs
    inputs_layer = keras.Input((16, 16, 3))
    keras.Model(inputs_layer, keras.layers.GlobalAveragePooling2D()(inputs_layer)).save(tmp_path / "pool.keras")
    assert predict.run(tmp_path / "pool.keras", [folder], tmp_path / "out") == 1
    expected = f"error: {tmp_path / 'pool.keras'} is not an FCN: expected one output of shape [B, H, W, classes]"
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    # A SavedModel that is not an FCN export.
    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "double"), signatures={"serving_default": module.double})
    with pytest.raises(ValueError, match=f"{tmp_path / 'double'} is not an FCN SavedModel from fcn_keras.export"):
        predict.load_predictor(tmp_path / "double")

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'} is a folder without saved_model.pb"):
        predict.load_predictor(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=f"model not found: {tmp_path / 'none.keras'}"):
        predict.load_predictor(tmp_path / "none.keras")


def test_read_image_converts_gray_and_alpha_and_rejects_16_bit(inputs):
    folder, expected = inputs
    for stem in ("gray", "alpha"):
        image = read_image(folder / f"{stem}.png")
        assert image.dtype == np.uint8 and image.shape[2] == 3
        np.testing.assert_array_equal(image, expected[stem])
    with pytest.raises(ValueError, match="found PIL mode 'I;16'"):
        read_image(folder / "deep.png")
