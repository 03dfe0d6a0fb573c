"""The predict CLI: VOC palette label PNGs equal to the model's labels, overlays, .keras files,
run folders and SavedModel models, JPEGs decoded as in training, converted gray/RGBA inputs, bad
inputs reported by name, and input files never overwritten nor outputs taken as inputs."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcn_keras import export, predict, viz
from fcn_keras.constants import VOC_PALETTE
from fcn_keras.data import voc
from fcn_keras.inference import downscale, labels_model, predict_labels_on_canvas, resize_labels, tile_spans
from fcn_keras.io import read_image, write_image
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
        # TensorFlow's decoder, as in training and serving (PIL's gives other pixels).
        "photo": tf.io.decode_jpeg((folder / "photo.jpg").read_bytes(), channels=3).numpy(),
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


def check_outputs(labeler, output_dir: Path, expected: dict, overlay_format: str, palette: np.ndarray = VOC_PALETTE) -> None:
    """Every label PNG is a palette PNG (VOC's by default) of the model's labels; every overlay is
    the default blend (alpha 0.5) of the image and those labels' colours (a JPEG's within its loss)."""
    for stem, image in expected.items():
        png = Image.open(output_dir / f"{stem}.png")
        assert png.mode == "P", (stem, png.mode)
        np.testing.assert_array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3), palette)
        labels = labeler.predict(image[np.newaxis], verbose=0)[0]
        np.testing.assert_array_equal(np.asarray(png), labels, err_msg=stem)
        with Image.open(output_dir / f"{stem}_overlay.{overlay_format}") as picture:
            assert picture.size == image.shape[1::-1] and picture.mode == "RGB"
            blend = viz.overlay(image, labels, 0.5, palette)
            if overlay_format == "jpg":  # The blend as write_image encodes it (JPEG noise of random pixels is large).
                with Image.open(write_image(blend, output_dir.parent / f"{output_dir.name}-blend.jpg")) as encoded:
                    blend = np.asarray(encoded)
            np.testing.assert_array_equal(np.asarray(picture), blend, err_msg=stem)


def test_cli_on_a_folder_with_bad_files_processes_the_rest_and_fails(labeler, keras_file, inputs, tmp_path):
    folder, expected = inputs
    colours = tmp_path.parent / f"{tmp_path.name}-colours.txt"
    colours.write_text("0 1 2 3\n")  # Background in (1, 2, 3), the rest in VOC's colours.
    result = run_predict_cli(f"--model={keras_file}", f"--output_dir={tmp_path}", f"--label_colours={colours}", str(folder),
                             str(folder / "missing.jpg"))
    assert result.returncode == 1, result.stderr[-3000:]
    palette = VOC_PALETTE.copy()
    palette[0] = (1, 2, 3)
    check_outputs(labeler, tmp_path, expected, "jpg", palette)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "photo.png")))) > 3  # Labels vary.
    assert "wrote 4 label maps and overlays" in result.stdout and "1 folder entry ignored: hidden, or without an image extension" in result.stdout
    assert "3 inputs failed:" in result.stderr
    assert f"{folder / 'missing.jpg'}: no such file or folder" in result.stderr
    assert f"cannot read image {folder / 'broken.jpg'}" in result.stderr
    assert f"cannot use image {folder / 'deep.png'}: expected 8 bits per channel" in result.stderr
    # The Progbar ran over the 6 images found, one line (stdout is a pipe, not a terminal).
    assert re.search(r"^6/6 - \d+s - \d+(s|ms|us)/image$", result.stdout, re.MULTILINE), result.stdout
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
    images, bad, ignored, skipped, *_ = predict.collect_images([folder / "photo.jpg", twin], tmp_path / "out")
    assert images == [folder / "photo.jpg", twin / "photo.png"] and bad == [] and ignored == skipped == 0
    written, bad = predict.predict_images(lambda image: image[..., 0] % 21, images, tmp_path / "out", verbose=False)
    assert [p.name for p in written] == ["photo.png"]
    assert bad == [(twin / "photo.png", f"its output photo.png would overwrite an output of {folder / 'photo.jpg'}")]
    # An image that cannot be read claims no output (found by review: its twin was refused for it).
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    images = [tmp_path / "broken" / "photo.jpg", twin / "photo.png"]
    written, bad = predict.predict_images(lambda image: image[..., 0] % 21, images, tmp_path / "out2", verbose=False)
    assert [p.name for p in written] == ["photo.png"] and [path for path, _ in bad] == [images[0]]


def test_a_failed_first_batch_an_overlay_that_fails_and_an_unwritable_output_dir(inputs, tmp_path, capsys):
    """Found by review: a prediction failing in the first batch crashed the run (UnboundLocalError);
    a failed overlay left its label PNG, which evaluate --predictions would score; an output
    folder that could not be made failed image by image after the work, one line unnamed."""
    folder, _ = inputs
    images = [folder / "photo.jpg", folder / "gray.png"]

    def fails_then_works(image):
        if image.shape[0] == 37:
            raise RuntimeError("out of device memory")
        return image[..., 0] % 21

    written, bad = predict.predict_images(fails_then_works, images, tmp_path / "out", verbose=False)
    assert [p.name for p in written] == ["gray.png"]
    assert bad == [(folder / "photo.jpg", "RuntimeError: out of device memory")]
    strip = tmp_path / "strip"
    strip.mkdir()
    Image.fromarray(np.zeros((2, 70000), np.uint8)).save(strip / "strip.png")
    written, bad = predict.predict_images(lambda image: image[..., 0], [strip / "strip.png"], tmp_path / "out", verbose=False)
    assert written == [] and bad == [(strip / "strip.png", (
        f"cannot write {tmp_path / 'out' / 'strip_overlay.jpg'}: a JPEG holds at most 65500 pixels a side, this image "
        "is 2x70000; write a PNG (e.g. --overlay_format=png); its label PNG strip.png was removed"))]
    assert not (tmp_path / "out" / "strip.png").exists()
    written, bad = predict.predict_images(lambda image: image[..., 0], [strip / "strip.png"], tmp_path / "out",
                                          overlay_format="png", verbose=False)
    assert [p.name for p in written] == ["strip.png"] and bad == []
    # An output folder inside an input file: refused before any image is segmented, status 2.
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"--output_dir must be a folder. Received: --output_dir='.*file.jpg/out', inside"):
        predict.check_outputs(images, tmp_path / "file.jpg" / "out")
    with pytest.raises(ValueError, match=r"--output_dir '/proc/fcn-predict' cannot be written: "):
        predict.check_outputs(images, "/proc/fcn-predict")


def test_an_input_named_like_another_inputs_overlay_is_refused(inputs, tmp_path):
    """b.png's PNG overlay is b_overlay.png, the label map of an input b_overlay.png: the second
    input is refused instead of silently replacing the first one's overlay."""
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, name in enumerate(("b.png", "b_overlay.png")):
        Image.fromarray(random_image(seed, (20, 24))).save(folder / name)
    images = predict.collect_images([folder]).images
    written, bad = predict.predict_images(lambda image: image[..., 0] % 21, images, tmp_path / "out",
                                          overlay_format="png", verbose=False)
    assert written == [tmp_path / "out" / "b.png"]
    assert bad == [(folder / "b_overlay.png", f"its output b_overlay.png would overwrite an output of {folder / 'b.png'}")]
    with Image.open(tmp_path / "out" / "b_overlay.png") as overlay_png:
        assert overlay_png.mode == "RGB"  # Still b.png's overlay, not a label map.


def test_models_that_are_not_fcns_are_named_in_the_error(inputs, tmp_path, capsys):
    import keras

    folder, _ = inputs
    inputs_layer = keras.Input((16, 16, 3))
    keras.Model(inputs_layer, keras.layers.GlobalAveragePooling2D()(inputs_layer)).save(tmp_path / "pool.keras")
    assert predict.run(tmp_path / "pool.keras", [folder], tmp_path / "out") == 2
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
    with pytest.raises(ValueError, match="expected 8 bits per channel, found a 16-bit PNG"):
        read_image(folder / "deep.png")
    # 16-bit RGB: PIL would read it as 8-bit RGB (its high bytes).
    (folder.parent / "deep_rgb.png").write_bytes(tf.io.encode_png(np.full((4, 5, 3), 40000, np.uint16)).numpy())
    with pytest.raises(ValueError, match="deep_rgb.png: expected 8 bits per channel, found a 16-bit PNG"):
        read_image(folder.parent / "deep_rgb.png")
    # A 16-bit RGB TIFF: PIL opens it as 8-bit RGB, its high bytes (found by review: 12-bit data came out black).
    tiff = folder.parent / "deep_rgb.tif"
    tiff.write_bytes(_rgb16_tiff(np.full((4, 5, 3), 0x0FFF, np.uint16)))
    assert Image.open(tiff).mode == "RGB"  # What made it pass the mode check.
    with pytest.raises(ValueError, match=re.escape(f"cannot use image {tiff}: expected 8 bits per channel, found a TIFF of "
                                                   "(16, 16, 16) bits per sample")):
        read_image(tiff)


def _rgb16_tiff(pixels: np.ndarray) -> bytes:
    """An uncompressed little-endian TIFF of uint16 ``[H, W, 3]`` (PIL writes none)."""
    height, width, _ = pixels.shape
    data = pixels.astype("<u2").tobytes()
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, 8 + 2 + 10 * 12 + 4), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, 8 + 2 + 10 * 12 + 4 + 6), (277, 3, 1, 3), (278, 4, 1, height), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 16, 16, 16) + data


def test_a_run_folder_is_a_model(keras_file, labeler, inputs, tmp_path):
    folder, expected = inputs
    run = tmp_path / "runs" / "fcn8s"
    run.mkdir(parents=True)
    (run / "last.keras").symlink_to(keras_file)  # As fcn_keras.train leaves it: best.keras, else last.keras.
    written, bad = predict.predict_images(
        predict.load_predictor(run), [folder / "photo.jpg"], tmp_path / "out", verbose=False
    )
    assert bad == [] and written == [tmp_path / "out" / "photo.png"]
    check_outputs(labeler, tmp_path / "out", {"photo": expected["photo"]}, "jpg")


def files_and_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_an_output_that_would_replace_an_input_stops_the_run_before_anything_is_written(keras_file, tmp_path, capsys):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.fromarray(random_image(5, (30, 40))).save(pngs / "cat.png")
    Image.fromarray(random_image(6, (30, 40))).save(pngs / "dog.jpg")
    before = files_and_bytes(pngs)

    # The user's command, with the file named: its label map would replace it.
    assert predict.run(keras_file, [pngs / "dog.jpg", pngs / "cat.png"], pngs) == 2
    error = capsys.readouterr().err
    cat = pngs / "cat.png"
    assert f"error: output {cat} would overwrite the input image {cat}; nothing was written" in error
    suggestion = tmp_path / "pngs_predictions"
    assert f"choose another --output_dir, one that holds no input images (e.g. --output_dir={suggestion})" in error
    assert files_and_bytes(pngs) == before  # Not even dog.jpg's outputs.

    # The same folder spelled differently (a link to it, "sub/.."): resolved paths are compared.
    (tmp_path / "link").symlink_to(pngs)
    (pngs / "sub").mkdir()
    for output_dir in (tmp_path / "link", pngs / "sub" / ".."):
        with pytest.raises(ValueError, match=re.escape(f"would overwrite the input image {pngs / 'cat.png'}")):
            predict.predict_images(lambda image: image[..., 0] % 21, [pngs / "cat.png"], output_dir, verbose=False)
    (pngs / "sub").rmdir()
    assert files_and_bytes(pngs) == before

    # An overlay would replace an input named like one; counted when several would.
    Image.fromarray(random_image(7, (30, 40))).save(pngs / "dog_overlay.jpg")
    with pytest.raises(ValueError, match=re.escape(
        f"output {pngs / 'dog_overlay.jpg'} would overwrite the input image {pngs / 'dog_overlay.jpg'} "
        "(1 more outputs would overwrite inputs)"
    )):
        predict.check_outputs([pngs / "dog.jpg", pngs / "dog_overlay.jpg", pngs / "cat.png"], pngs)
    # No clash: PNG overlays.
    predict.check_outputs([pngs / "dog.jpg", pngs / "dog_overlay.jpg"], pngs, overlay_format="png")
    predict.check_outputs([pngs / "dog.jpg", pngs / "cat.png"], tmp_path / "out")


def test_files_inside_output_dir_are_not_taken_from_a_folder(keras_file, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(random_image(8, (30, 40))).save(photos / "a.jpg")
    Image.fromarray(random_image(9, (30, 40))).save(photos / "cat.png")
    # An earlier run wrote into the input folder: its outputs are not new inputs ...
    predict.predict_images(lambda image: image[..., 0] % 21, [photos / "a.jpg"], photos, verbose=False)
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg", "a.png", "a_overlay.jpg", "cat.png"]
    assert len(predict.collect_images([photos]).images) == 4  # (what a folder scan alone finds)
    images, bad, ignored, skipped, *_ = predict.collect_images([photos], photos)
    assert images == [] and ignored == 0 and skipped == 4
    assert bad == [(photos, f"the 4 image files of {photos} are in --output_dir={photos} and are not taken "
                            "as inputs (they may be outputs of an earlier run): write the outputs to another "
                            "--output_dir")]
    # ... nor through a link to the folder, while a sub-folder output_dir, or the folder above
    # (outputs are never written into a sub-folder), leaves them all in.
    (tmp_path / "link").symlink_to(photos)
    assert predict.collect_images([tmp_path / "link"], photos).skipped == 4
    found = sorted(photos.iterdir())
    assert predict.collect_images([photos], photos / "out") == (found, [], 0, 0, [Path(p.stem) for p in found], 0, 0)
    assert predict.collect_images([photos], tmp_path) == (found, [], 0, 0, [Path(p.stem) for p in found], 0, 0)

    # The user's command: `--output_dir=pngs pngs/` writes nothing and says why.
    before = files_and_bytes(photos)
    assert predict.run(keras_file, [photos], photos) == 1
    out, err = capsys.readouterr()
    assert f"skipped 4 image files in --output_dir={photos}" in out
    assert "wrote 0 label maps and overlays" in out and "4 image files in --output_dir skipped" in out
    assert f"  the 4 image files of {photos} are in --output_dir={photos}" in err
    assert files_and_bytes(photos) == before


def test_files_fcn_keras_did_not_write_are_replaced_only_with_overwrite(keras_file, tmp_path, capsys):
    """`--output_dir=photos photos/cat.jpg` would replace the user's photos/cat.png: refused
    unless --overwrite; an earlier run's outputs (marked by fcn_keras.io) are replaced freely."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(random_image(1, (30, 40))).save(photos / "cat.jpg")
    Image.fromarray(np.dstack([random_image(2, (30, 40)), np.full((30, 40), 9, np.uint8)])).save(photos / "cat.png")
    before = files_and_bytes(photos)
    assert predict.run(keras_file, [photos / "cat.jpg"], photos) == 2
    assert (f"error: output {photos / 'cat.png'} would replace a file that fcn_keras did not write; nothing was "
            "written: choose another --output_dir, or pass --overwrite to replace them") in capsys.readouterr().err
    assert files_and_bytes(photos) == before

    assert predict.run(keras_file, [photos / "cat.jpg"], photos, overwrite=True) == 0
    with Image.open(photos / "cat.png") as labels:
        assert labels.mode == "P"
    # The same command again: the files there now are its own outputs.
    assert predict.run(keras_file, [photos / "cat.jpg"], photos) == 0
    assert sorted(files_and_bytes(photos)) == ["cat.jpg", "cat.png", "cat_overlay.jpg"]


def test_an_output_dir_that_is_a_file_and_hidden_files_and_usage_errors(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(random_image(1, (20, 20))).save(photos / "cat.jpg")
    (photos / "._cat.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork companion.
    Image.fromarray(random_image(2, (20, 20))).save(photos / ".thumb.png")
    assert predict.collect_images([photos]) == ([photos / "cat.jpg"], [], 2, 0, [Path("cat")], 0, 0)

    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ValueError, match=re.escape(f"--output_dir={tmp_path / 'taken'} is a file, not a folder")):
        predict.check_outputs([photos / "cat.jpg"], tmp_path / "taken")

    # No image named: one line and status 2, not absl's usage dump.
    assert predict.main(["predict"]) == 2
    err = capsys.readouterr().err
    assert err == ("fcn_keras.predict: error: give image files or folders to segment after the flags "
                   "(see python -m fcn_keras.predict --help)\n")


def test_tiles_give_the_whole_image_labels_from_a_keras_file_and_a_savedmodel(model, keras_file, tmp_path):
    """An image taller than the tiles: 4 row tiles of at most 480 rows, from a .keras file and from its
    SavedModel, give the whole image's labels wherever its two best classes are not tied to within
    the rounding of other shapes; the CLI's run writes them too."""
    image = random_image(7, (560, 200))
    Image.fromarray(image).save(tmp_path / "tall.png")
    assert len(tile_spans(560, 480)) == 4 and len(tile_spans(200, 640)) == 1
    whole_logits = model.predict(image[np.newaxis], verbose=0)[0]
    best_two = np.sort(whole_logits, axis=-1)[..., -2:]
    decided = best_two[..., 1] - best_two[..., 0] > 1e-5 * np.abs(whole_logits).max()
    assert decided.mean() > 0.999
    whole = whole_logits.argmax(-1)
    assert len(np.unique(whole)) > 3
    version_dir = export.export_saved_model(model, tmp_path / "serving", name="fcn8s", version=1)
    assert (version_dir / export.TILE_CONTEXT_FILE).read_text() == "221\n"
    for source in (keras_file, tmp_path / "serving" / "fcn8s"):
        labels = predict.load_predictor(source, tile_size=(480, 640))(image)
        assert labels.dtype == np.uint8 and labels.shape == (560, 200)
        np.testing.assert_array_equal(labels[decided], whole[decided], err_msg=str(source))
    assert predict.run(keras_file, [tmp_path / "tall.png"], tmp_path / "out", tile_size=(480, 640)) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "tall.png"))[decided], whole[decided])
    # A SavedModel that does not say how much context its net needs, or says nonsense, is not tiled.
    for text in ("-32\n", "lots\n"):
        (version_dir / export.TILE_CONTEXT_FILE).write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"must hold a whole number of pixels >= 0. Received: {text!r}")):
            predict.load_predictor(version_dir, tile_size=480)
    (version_dir / export.TILE_CONTEXT_FILE).write_text("0\n")  # A net of 1x1 convolutions: tiles without overlap.
    assert predict.load_predictor(version_dir, tile_size=480)(image).shape == (560, 200)
    # A net of larger reach needs larger tiles: refused before any image is read (found by review:
    # every tiled image failed alone, the run's status 1).
    (version_dir / export.TILE_CONTEXT_FILE).write_text("300\n")
    with pytest.raises(ValueError, match=re.escape(f"tile_size must be at least 672 pixels on each side for {version_dir}: "
                                                   f"its {export.TILE_CONTEXT_FILE} says its net needs 300 pixels of "
                                                   "context on each side. Received: tile_size=480x640")):
        predict.load_predictor(version_dir, tile_size=(480, 640))
    assert predict.load_predictor(version_dir, tile_size=672)(image).shape == (560, 200)
    (version_dir / export.TILE_CONTEXT_FILE).unlink()
    with pytest.raises(ValueError, match=re.escape(f"{version_dir} does not say how much context its net needs")):
        predict.load_predictor(version_dir, tile_size=480)
    assert predict.load_predictor(version_dir)(image).shape == (560, 200)  # Whole images still work.


def test_tile_sizes_too_small_or_models_of_unknown_reach_are_refused(tmp_path):
    inputs = keras.Input((None, None, 3))
    other = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs), name="other")
    other.save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match=re.escape(f"tiled prediction needs an FCN-VGG16 of fcn_keras.model.build_fcn "
                                                   f"(its reach is known); {tmp_path / 'other.keras'} has no layers")):
        predict.load_predictor(tmp_path / "other.keras", tile_size=(480, 480))
    with pytest.raises(ValueError, match=re.escape("tile_size must be at least 480 pixels on each side")):
        predict.load_predictor(tmp_path / "other.keras", tile_size=(480, 479))
    # Exported, a model outside the family gets no tile context: its SavedModel is not tiled.
    version_dir = export.export_saved_model(other, tmp_path / "serving", name="other", version=1)
    assert not (version_dir / export.TILE_CONTEXT_FILE).exists()
    with pytest.raises(ValueError, match=re.escape(f"{version_dir} does not say how much context its net needs")):
        predict.load_predictor(version_dir, tile_size=480)
    Image.fromarray(random_image(1, (20, 20))).save(tmp_path / "cat.jpg")
    result = run_predict_cli(f"--model={tmp_path / 'other.keras'}", f"--output_dir={tmp_path / 'out'}",
                             "--tile_size=640x400", str(tmp_path / "cat.jpg"))
    assert result.returncode == 2
    assert ("fcn_keras.predict: error: --tile_size must be at least 480 pixels on each side (221 pixels of context on "
            "each side of the part a tile keeps, on the net's 32-pixel grid). Received: --tile_size=640x400") in result.stderr
    assert not (tmp_path / "out").exists()


# --- A dataset's own colours --------------------------------------------------------------------


def test_label_colours_paint_the_outputs_and_read_back_to_the_same_labels(model, keras_file, labeler, inputs, tmp_path,
                                                                         capsys):
    """With the colour map its masks were converted with, predict's label PNGs show a dataset's
    own colours, and reading them through the map gives back the model's labels."""
    folder, expected = inputs
    names = [f"class {i}" for i in range(21)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").symlink_to(keras_file)
    (run / "config.json").write_text(json.dumps({"class_names": names}))
    colours_file = tmp_path / "colours.txt"
    colours_file.write_text("".join(f"class {i} {10 * i} {250 - 10 * i} {7 * i}\n" for i in range(21))
                            + "class 3 1 2 3\nvoid 9 9 9\n")
    status = predict.run(run, [folder / "photo.jpg", folder / "drawing.png"], tmp_path / "out", overlay_format="png",
                         alpha=1.0, label_colours=colours_file)
    assert status == 0, capsys.readouterr().err
    colours = voc.read_label_colours(colours_file, names)
    assert colours.palette[3].tolist() == [30, 220, 21] and colours.palette[255].tolist() == [9, 9, 9]  # first listed
    for stem in ("photo", "drawing"):
        labels = labeler.predict(expected[stem][np.newaxis], verbose=0)[0]
        with Image.open(tmp_path / "out" / f"{stem}.png") as png:
            np.testing.assert_array_equal(np.asarray(png), labels)
            np.testing.assert_array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3), colours.palette)
        np.testing.assert_array_equal(voc.read_label(tmp_path / "out" / f"{stem}.png", colours), labels)
        with Image.open(tmp_path / "out" / f"{stem}_overlay.png") as picture:
            np.testing.assert_array_equal(np.asarray(picture), colours.palette[labels])  # alpha 1: colours only
    assert len(np.unique(labels)) > 2
    # The names come from the run, or from beside a SavedModel; a name the model lacks is refused.
    export.export_saved_model(model, tmp_path / "serving", name="m", class_names=names)
    assert predict.model_class_names(tmp_path / "serving" / "m") == tuple(names)
    assert predict.model_class_names(keras_file) is None
    colours_file.write_text("bus 1 2 3\n")
    assert predict.run(run, [folder / "photo.jpg"], tmp_path / "out2", label_colours=colours_file) == 2
    assert re.search(r"colours.txt', line 1 \('bus 1 2 3'\): 'bus' is not a class of the dataset \(21: class 0",
                     capsys.readouterr().err)
    assert not (tmp_path / "out2").exists()


# --- A canvas: one input shape for images of many sizes ---------------------------------------


def test_canvas_batches_images_of_many_sizes_and_segments_larger_ones_at_their_own_size(model, labeler, keras_file, inputs,
                                                                                      tmp_path, capsys):
    """--canvas=48x64 --batch_size=2: the images that fit get the labels of their padded canvas (the
    same from the .keras file and its SavedModel), the one that does not (photo, 37x91) its own,
    and the summary counts it; a broken image fails alone."""
    folder, expected = inputs
    sources = [folder / name for name in ("photo.jpg", "drawing.png", "broken.jpg", "gray.png", "alpha.png")]
    status = predict.run(keras_file, sources, tmp_path / "out", canvas=(48, 64), batch_size=2)
    assert status == 1
    out, err = capsys.readouterr()
    assert "wrote 4 label maps and overlays" in out
    assert "1 image larger than the 48x64 canvas was segmented at its own size (one compilation per size under XLA)" in out
    assert f"cannot read image {folder / 'broken.jpg'}" in err
    fitting = ["drawing", "gray", "alpha"]
    on_canvas = dict(zip(fitting, predict_labels_on_canvas(labeler, [expected[stem] for stem in fitting], (48, 64))))
    on_canvas["photo"] = labeler.predict(expected["photo"][np.newaxis], verbose=0)[0]  # 37x91: wider than the canvas.
    for stem, labels in on_canvas.items():
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{stem}.png")), labels, err_msg=stem)
    own = labeler.predict(expected["gray"][np.newaxis], verbose=0)[0]
    assert (on_canvas["gray"] != own).any()  # The canvas was used (its padding changes some labels).

    export.export_saved_model(model, tmp_path / "serving", name="fcn8s", version=1)
    predictor = predict.load_predictor(tmp_path / "serving" / "fcn8s", canvas=(48, 64), batch_size=3)
    for stem, labels in zip(fitting, predictor.many([expected[stem] for stem in fitting])):
        np.testing.assert_array_equal(labels, on_canvas[stem], err_msg=stem)
    assert predictor.outside == 0

    # With tiles too: an image larger than the canvas and the tiles is segmented in tiles.
    tall = random_image(7, (560, 200))
    tiled = predict.load_predictor(keras_file, tile_size=(480, 640), canvas=(48, 64), batch_size=2)
    labels = tiled.many([tall, expected["gray"]])
    np.testing.assert_array_equal(labels[0], predict.load_predictor(keras_file, tile_size=(480, 640))(tall))
    np.testing.assert_array_equal(labels[1], on_canvas["gray"])
    assert tiled.outside == 1
    with pytest.raises(ValueError, match=re.escape("batch_size=2 needs a canvas: images of different sizes are batched")):
        predict.load_predictor(keras_file, batch_size=2)
    result = run_predict_cli(f"--model={keras_file}", f"--output_dir={tmp_path / 'cli'}", "--batch_size=4",
                             str(folder / "gray.png"))
    assert result.returncode == 2 and not (tmp_path / "cli").exists()
    assert ("fcn_keras.predict: error: --batch_size=4 needs --canvas: images of different sizes are batched by padding "
            "them to one canvas (e.g. --canvas=500 for PASCAL VOC)") in result.stderr
    # --alpha reaches the overlays: 1 paints the label colours only (PNG overlays: no JPEG loss).
    result = run_predict_cli(f"--model={keras_file}", f"--output_dir={tmp_path / 'cli'}", "--canvas=48x64",
                             "--batch_size=2", "--alpha=1", "--overlay_format=png", str(folder / "gray.png"),
                             str(folder / "alpha.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    for stem in ("gray", "alpha"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli" / f"{stem}.png")), on_canvas[stem])
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli" / f"{stem}_overlay.png")),
                                      VOC_PALETTE[on_canvas[stem]], err_msg=stem)


def test_max_size_segments_larger_images_shrunk_and_resizes_their_labels_back(labeler, keras_file, inputs, tmp_path):
    """--max_size=40 --canvas=40: the 37x91 photo is shrunk to 16x40 and the 48x64 drawing to 30x40,
    segmented on the 40x40 canvas with the 40x40 gray image, and their labels resized back to
    their own sizes by nearest neighbour; the summary counts the shrunk images."""
    folder, expected = inputs
    stems = ["photo", "drawing", "gray"]
    result = run_predict_cli(f"--model={keras_file}", f"--output_dir={tmp_path}", "--max_size=40", "--canvas=40",
                             "--batch_size=2", *(str(next(folder.glob(f"{stem}.*"))) for stem in stems))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("2 images larger than 40 px were segmented at 40 px on the longer side (labels resized back, nearest "
            "neighbour)") in result.stdout and "canvas" not in result.stdout  # Every shrunk image fits the canvas.
    small = [downscale(expected[stem], 40) for stem in stems]
    assert [image.shape[:2] for image in small] == [(16, 40), (30, 40), (40, 40)]
    for stem, labels in zip(stems, predict_labels_on_canvas(labeler, small, 40)):
        png = np.asarray(Image.open(tmp_path / f"{stem}.png"))
        assert png.shape == expected[stem].shape[:2], stem
        np.testing.assert_array_equal(png, resize_labels(labels, png.shape), err_msg=stem)
        with Image.open(tmp_path / f"{stem}_overlay.jpg") as picture:  # On the image at its own size.
            assert picture.size == expected[stem].shape[1::-1]
    with pytest.raises(ValueError, match=r"max_size must be an integer >= 1"):
        predict.load_predictor(keras_file, max_size=0)


def test_recursive_takes_subfolders_keeps_their_paths_and_never_takes_the_outputs(keras_file, labeler, tmp_path):
    """--recursive: the images of subfolders too, in name order, each output at its path below the
    folder (so city/b.png and other/b.png do not clash); hidden folders are counted as ignored,
    a link back up is walked once, and --output_dir inside the folder is not searched (its images
    counted as skipped), so a second run takes no output as an input."""
    photos = tmp_path / "photos"
    pixels = {}
    for index, relative in enumerate(("a.jpg", "city/b.png", "city/deep/c.png", "other/b.png", ".cache/d.png")):
        (photos / relative).parent.mkdir(parents=True, exist_ok=True)
        pixels[relative] = random_image(index, (20 + index, 24))
        Image.fromarray(pixels[relative]).save(photos / relative, **({"quality": 95} if relative.endswith("jpg") else {}))
    (photos / "city" / "notes.txt").write_text("not an image")
    (photos / "loop").symlink_to(photos)
    out = photos / "predictions"
    out.mkdir()
    Image.fromarray(random_image(9, (8, 8))).save(out / "old.png")  # An earlier run's output.
    inputs = predict.collect_images([photos], out, recursive=True)
    assert inputs.images == [photos / name for name in ("a.jpg", "city/b.png", "city/deep/c.png", "other/b.png")]
    assert inputs.names == [Path(name) for name in ("a", "city/b", "city/deep/c", "other/b")]
    assert (inputs.bad, inputs.ignored, inputs.skipped) == ([], 2, 1)  # .cache/ and notes.txt; old.png
    # Not recursive: city/ and other/ counted as not searched (not predictions/ = out, nor loop/ = photos).
    assert predict.collect_images([photos], out) == ([photos / "a.jpg"], [], 0, 0, [Path("a")], 2, 0)
    result = run_predict_cli(f"--model={keras_file}", f"--output_dir={tmp_path / 'flat'}", str(photos), str(photos / "a.jpg"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("wrote 1 label map and overlay to " in result.stdout
            and "(1 image found; 1 image named twice, segmented once; 3 subfolders not searched: --recursive searches "
                "them)" in result.stdout)  # predictions/ too: it is not the --output_dir now.
    (tmp_path / "alias.jpg").symlink_to(photos / "a.jpg")  # Another name: another input, not a repeat.
    aliased = predict.collect_images([photos / "a.jpg", tmp_path / "alias.jpg", photos / "a.jpg"], out)
    assert aliased.images == [photos / "a.jpg", tmp_path / "alias.jpg"] and aliased.repeated == 1
    (tmp_path / "by_year" / "2023").mkdir(parents=True)
    shutil.copy(photos / "city" / "b.png", tmp_path / "by_year" / "2023")
    only_folders = predict.collect_images([tmp_path / "by_year"], out)
    assert only_folders.bad == [(tmp_path / "by_year", "folder holds no (not hidden) file ending in .jpg, .jpeg, .png, "
                                 ".bmp, .gif, .webp, .tif, .tiff; it has 1 subfolder: --recursive searches them")]
    refused = predict.collect_images([out], out, recursive=True)
    assert refused.images == [] and "with --recursive, --output_dir" in refused.bad[0][1]

    result = run_predict_cli(f"--model={keras_file}", f"--output_dir={out}", "--recursive", str(photos))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote 4 label maps and overlays" in result.stdout and "2 folder entries ignored: hidden, or without an image" in result.stdout
    assert "skipped 1 image file in --output_dir" in result.stdout
    for relative in ("city/b.png", "city/deep/c.png", "other/b.png"):
        labels = np.asarray(Image.open(out / relative))
        np.testing.assert_array_equal(labels, labeler.predict(pixels[relative][np.newaxis], verbose=0)[0], err_msg=relative)
        assert (out / relative.replace(".png", "_overlay.jpg")).is_file()
    assert (out / "a.png").is_file()
    again = predict.collect_images([photos], out, recursive=True)
    assert again.images == inputs.images and again.skipped == 9  # old.png and the 4 label maps and 4 overlays.


# --- Found by mutation testing ------------------------------------------------------------------


def test_a_model_folder_means_its_highest_numbered_version_and_its_class_names(tmp_path):
    """As TF Serving: version 10 beats 9 and 2 (by number, not by name), a folder that is not a
    number is no version; a version without recorded class names has none."""
    base = tmp_path / "serving" / "fcn8s"
    for version in ("2", "9", "10", "backup"):
        (base / version / export.CLASS_NAMES_FILE).parent.mkdir(parents=True)
        (base / version / "saved_model.pb").write_bytes(b"")
        (base / version / export.CLASS_NAMES_FILE).write_text(f"background\nv{version}\n")
    assert predict.model_class_names(base) == ("background", "v10")
    assert predict.model_class_names(base / "9") == ("background", "v9")
    (base / "11").mkdir()
    (base / "11" / "saved_model.pb").write_bytes(b"")
    assert predict.model_class_names(base) is None


def test_savedmodels_without_the_fcn_signature_or_corrupt_are_refused_by_name(tmp_path):
    """images uint8 [N, H, W, 3] -> labels uint8 [N, H, W] is checked part by part; a SavedModel
    TensorFlow cannot load is a ValueError naming it, not TensorFlow's own exception."""
    specs = {
        "float_images": (tf.TensorSpec([None, None, None, 3], tf.float32), "labels", tf.uint8),
        "one_image": (tf.TensorSpec([None, None, 3], tf.uint8), "labels", tf.uint8),
        "logits": (tf.TensorSpec([None, None, None, 3], tf.uint8), "logits", tf.uint8),
        "int_labels": (tf.TensorSpec([None, None, None, 3], tf.uint8), "labels", tf.int64),
    }
    for name, (spec, key, dtype) in specs.items():
        module = tf.Module()
        module.serve = tf.function(lambda images, key=key, dtype=dtype: {key: tf.cast(images[..., 0], dtype)},
                                   input_signature=[spec])
        tf.saved_model.save(module, str(tmp_path / name), signatures={"serving_default": module.serve})
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name} is not an FCN SavedModel from fcn_keras.export")):
            predict.load_predictor(tmp_path / name)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "saved_model.pb").write_bytes(b"not a protocol buffer")
    with pytest.raises(ValueError, match=re.escape(f"cannot load SavedModel {tmp_path / 'corrupt'}: ")):
        predict.load_predictor(tmp_path / "corrupt")


def test_image_extensions_are_matched_whatever_their_case(tmp_path):
    """Cameras write PHOTO.JPG: taken from a folder like photo.jpg."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("DSC_0001.JPG", "scan.Png", "notes.TXT"):
        (photos / name).write_bytes(b"")
    inputs = predict.collect_images([photos])
    assert inputs.images == [photos / "DSC_0001.JPG", photos / "scan.Png"] and inputs.ignored == 1


def test_an_output_that_is_a_hard_link_to_an_input_is_refused_even_with_overwrite(tmp_path):
    """Another name for the same file on disk (a hard link; a case-insensitive file system) is
    compared by device and inode, not by path; an image named twice is one clash, not two."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    out.mkdir()
    Image.fromarray(random_image(1, (20, 24))).save(photos / "cat.png")
    os.link(photos / "cat.png", out / "cat.png")
    with pytest.raises(ValueError, match=re.escape(f"output {out / 'cat.png'} would overwrite the input image "
                                                   f"{photos / 'cat.png'}; nothing was written")):
        predict.check_outputs([photos / "cat.png"] * 2, out, overwrite=True)  # Named twice, one clash.


def test_labels_of_another_size_fail_the_image_before_its_label_png_is_written(inputs, tmp_path):
    """The overlay is made first: labels that do not match the image fail it with nothing of it
    written (evaluate would score a label PNG of the wrong size)."""
    folder, _ = inputs
    written, bad = predict.predict_images(lambda image: image[:-1, :, 0] % 21, [folder / "gray.png"], tmp_path,
                                          verbose=False)
    assert written == [] and [path for path, _ in bad] == [folder / "gray.png"]
    assert not (tmp_path / "gray.png").exists()
    assert "was removed" not in bad[0][1]


class _Batches:
    """A predictor of label maps ``image[..., 0] % 21`` that records how many images each call got."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.calls: list[int] = []

    def many(self, images):
        self.calls.append(len(images))
        return [image[..., 0] % 21 for image in images]


def test_predictors_with_many_get_batch_size_images_a_call_and_the_progress_counts_images(inputs, tmp_path, capsys):
    folder, expected = inputs
    images = [folder / name for name in ("photo.jpg", "drawing.png", "gray.png", "alpha.png", "broken.jpg")]
    predictor = _Batches(batch_size=2)
    written, bad = predict.predict_images(predictor, images, tmp_path, overlay_format="png")
    assert [path.name for path in written] == ["photo.png", "drawing.png", "gray.png", "alpha.png"]
    assert [path for path, _ in bad] == [folder / "broken.jpg"]
    assert predictor.calls == [2, 2]  # broken.jpg, alone in the last batch, cannot be read: no call.
    assert re.search(r"^5/5 - ", capsys.readouterr().out, re.MULTILINE)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "gray.png")), expected["gray"][..., 0] % 21)
    # Shrunk images pass through to the inner predictor's batches, their labels resized back.
    inner = _Batches(batch_size=3)
    downscaling = predict.DownscalingPredictor(inner, max_size=40)
    labels = downscaling.many([expected[stem] for stem in ("photo", "drawing", "gray")])
    assert inner.calls == [3] and downscaling.batch_size == 3 and downscaling.downscaled == 2
    assert [label_map.shape for label_map in labels] == [(37, 91), (48, 64), (40, 40)]


def test_max_size_with_a_canvas_smaller_than_the_shrunk_images_counts_those_outside_it(keras_file, inputs, tmp_path,
                                                                                      capsys):
    """--max_size=50 --canvas=40: drawing (48x64) is shrunk to 38x50, still wider than the canvas:
    the summary says so (the canvas predictor is inside the downscaling one)."""
    folder, _ = inputs
    assert predict.run(keras_file, [folder / "drawing.png"], tmp_path, canvas=(40, 40), max_size=50) == 0
    out = capsys.readouterr().out
    assert "1 image larger than 50 px was segmented at 50 px on the longer side" in out
    assert "1 image larger than the 40x40 canvas was segmented at its own size (one compilation per size under XLA)" in out


def test_a_folder_whose_images_all_lie_in_output_dir_below_it_says_so(tmp_path):
    """--recursive with --output_dir=photos/predictions and nothing else to segment: the folder's
    images are the outputs there, not 'no image file'."""
    photos = tmp_path / "photos"
    (photos / "predictions").mkdir(parents=True)
    Image.fromarray(random_image(1, (8, 8))).save(photos / "predictions" / "old.png")
    inputs = predict.collect_images([photos], photos / "predictions", recursive=True)
    assert inputs.images == [] and inputs.skipped == 1
    assert inputs.bad == [(photos, f"the 1 image file of {photos} is in --output_dir={photos / 'predictions'} and is "
                                   "not taken as input (it may be an output of an earlier run): write the outputs to "
                                   "another --output_dir")]


def test_a_folder_that_cannot_be_read_is_a_failed_input_and_the_rest_is_searched(tmp_path, monkeypatch):
    """A subfolder without read permission (or removed meanwhile) was a PermissionError traceback
    that stopped the whole run; it is now reported like a missing input, and its siblings are
    searched. (Simulated: the tests may run as root, whom permissions do not stop.)"""
    photos = tmp_path / "photos"
    for folder in ("a_locked", "b_open"):
        (photos / folder).mkdir(parents=True)
        Image.fromarray(random_image(1, (8, 8))).save(photos / folder / "x.png")
    listing = Path.iterdir

    def iterdir(self):
        if self.name.endswith("_locked"):
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    inputs = predict.collect_images([photos], recursive=True)
    assert inputs.images == [photos / "b_open" / "x.png"]
    assert inputs.bad == [(photos / "a_locked", "folder cannot be read: Permission denied")]
    locked = predict.collect_images([photos / "a_locked"])  # The folder named itself: its reason only.
    assert locked.images == [] and locked.bad == [(photos / "a_locked", "folder cannot be read: Permission denied")]


def test_tensorflow_is_kept_off_the_gpus_only_for_a_keras_model_under_another_backend(keras_file, tmp_path, monkeypatch):
    """Under JAX the backend's model needs the GPUs' memory (TensorFlow only decodes JPEGs then);
    under TensorFlow, or for a SavedModel (run by TensorFlow), TensorFlow keeps them."""
    hidden = []
    monkeypatch.setattr(predict.tf.config, "set_visible_devices", lambda devices, kind: hidden.append((devices, kind)))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"")
    for backend, model, hides in (("tensorflow", keras_file, False), ("jax", keras_file, True), ("jax", tmp_path, False)):
        hidden.clear()
        monkeypatch.setattr(predict.keras.backend, "backend", lambda: backend)
        predict._keep_tensorflow_off_the_gpus(model)
        assert hidden == ([([], "GPU")] if hides else []), (backend, model)
