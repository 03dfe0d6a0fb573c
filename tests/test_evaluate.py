"""The evaluation: a tiny FCN on synthetic VOC data end to end, metrics.json against scores
computed independently from model.predict on the images decoded straight from the files; the
CLI under JAX; clear errors for bad input."""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras

from fcn_keras.constants import IGNORE_LABEL, PAD_RGB, VOC_CLASSES, VOC_PALETTE
from fcn_keras import predict
from fcn_keras import evaluate
from fcn_keras.evaluate import (
    _Tally, evaluate_model, evaluate_predictions, evaluation_mode, metrics_markdown, per_image_csv,
)
from fcn_keras.metrics import confusion_matrix, scores

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference(model_path: Path, voc: Path, ids: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Confusion matrix from model.predict on images decoded from the JPEG files (tf.io, as
    the records keep the bytes) and labels read from the palette PNGs (PIL), image by image."""
    model = keras.saving.load_model(model_path, compile=False)
    hist = np.zeros((21, 21), np.int64)
    predictions = []
    for image_id in ids:
        image = tf.io.decode_jpeg(tf.io.read_file(str(voc / "VOC2012" / "JPEGImages" / f"{image_id}.jpg")), channels=3)
        label = np.array(Image.open(voc / "VOC2012" / "SegmentationClass" / f"{image_id}.png"))
        predicted = model.predict(image.numpy()[None], verbose=0)[0].argmax(-1)
        predictions.append(predicted)
        for t, p in zip(label.ravel(), predicted.ravel()):
            if t != IGNORE_LABEL:
                hist[t, p] += 1
    return hist, predictions


def val_ids(voc: Path) -> list[str]:
    return (voc / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()


def test_metrics_json_equals_scores_of_model_predict(eval_workspace, tmp_path):
    out = tmp_path / "eval"
    results = evaluate_model(
        eval_workspace["model"], str(eval_workspace["voc"]), output_dir=out, cache_dir=eval_workspace["cache"], verbose=False
    )
    ids = val_ids(eval_workspace["voc"])
    hist, predictions = reference(eval_workspace["model"], eval_workspace["voc"], ids)
    assert len({p.shape for p in predictions}) > 1  # Whole images of several sizes, no crop.
    assert len(np.unique(np.concatenate([p.ravel() for p in predictions]))) > 2
    written = json.loads((out / "metrics.json").read_text())
    np.testing.assert_array_equal(written["confusion"], hist)
    expected = scores(hist)
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "per_class_iu"):
        assert written[key] == pytest.approx(expected[key]), key
        assert results[key] == written[key]
    assert written["num_images"] == len(ids) == 5
    assert written["num_pixels"] == hist.sum()
    labels = [np.array(Image.open(eval_workspace["voc"] / "VOC2012" / "SegmentationClass" / f"{i}.png")) for i in ids]
    assert written["void_pixels"] == sum(int((label == IGNORE_LABEL).sum()) for label in labels) > 0
    # The markdown table: the paper's four metrics in its order, in %, under their headings; every VOC class.
    markdown = (out / "metrics.md").read_text()
    lines = markdown.splitlines()
    heading = lines.index("| pixel acc. | mean acc. | mean IU | f.w. IU |")
    assert lines[heading + 1] == "|---:|---:|---:|---:|"
    assert lines[heading + 2] == "| " + " | ".join(
        f"{100 * expected[key]:.1f}" for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")) + " |"
    assert len({f"{100 * expected[key]:.1f}" for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")}) == 4
    for name in VOC_CLASSES:
        assert f"| {name} |" in markdown
    with Image.open(out / "confusion.png") as figure:
        assert figure.format == "PNG" and figure.size == (900, 900)
    # Each image's own scores, in data order: in the results, per_image.csv and metrics.md's lowest rows.
    assert "per_image" not in written
    expected_rows = []
    for image_id, label, prediction in zip(ids, labels, predictions):
        own = scores(confusion_matrix(label, prediction, 21))
        expected_rows.append({"image_id": image_id, "height": label.shape[0], "width": label.shape[1],
                              "pixels": int((label != IGNORE_LABEL).sum()), "pixel_accuracy": pytest.approx(own["pixel_accuracy"]),
                              "mean_iu": pytest.approx(own["mean_iu"])})
    assert results["per_image"] == expected_rows
    assert sum(row["pixels"] for row in results["per_image"]) == written["num_pixels"]
    assert len({row["mean_iu"] for row in results["per_image"]}) > 1
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["image_id"] for row in rows] == ids
    for row, expected in zip(rows, results["per_image"]):
        assert (int(row["height"]), int(row["width"]), int(row["pixels"])) == (expected["height"], expected["width"], expected["pixels"])
        assert float(row["mean_iu"]) == pytest.approx(expected["mean_iu"], abs=1e-12)
    lowest = sorted(results["per_image"], key=lambda row: row["mean_iu"])
    section = markdown.split("## Lowest mean IU (5 of 5 images; all in per_image.csv)")[1]
    assert [line.split(" | ")[0][2:] for line in section.splitlines() if line.startswith("| synth")] == [r["image_id"] for r in lowest]
    assert f"| {100 * lowest[0]['mean_iu']:.1f} |" in section


def test_glob_max_images_and_batches(eval_workspace, capsys):
    glob = str(eval_workspace["records"] / "val-*.tfrecord")  # Written by the first test's conversion.
    if not tf.io.gfile.glob(glob):
        evaluate_model(eval_workspace["model"], str(eval_workspace["voc"]), cache_dir=eval_workspace["cache"], max_images=1, verbose=False)
    ids = val_ids(eval_workspace["voc"])[:3]
    hist, _ = reference(eval_workspace["model"], eval_workspace["voc"], ids)
    exact = evaluate_model(eval_workspace["model"], glob, max_images=3, verbose=False)
    np.testing.assert_array_equal(exact["confusion"], hist)
    assert exact["num_images"] == 3 and exact["split"] is None
    # Batches of 2 pad to the largest image with void labels: the same pixels are counted.
    batched = evaluate_model(eval_workspace["model"], glob, max_images=3, batch_size=2, verbose=False)
    assert batched["num_images"] == 3 and batched["num_pixels"] == hist.sum()
    # A glob does not say how many images it holds: the progress line (not on a terminal: one
    # line at the end) is printed at the count read (found by review: it was never printed).
    capsys.readouterr()
    everything = evaluate_model(eval_workspace["model"], glob, verbose=True)
    printed = capsys.readouterr().out
    assert re.search(rf"^{everything['num_images']}/{everything['num_images']} - \d+s - .*/image$", printed, re.MULTILINE), printed


def test_canvas_pads_with_the_mean_colour_and_fills_the_last_batch(eval_workspace):
    glob = str(eval_workspace["records"] / "val-*.tfrecord")
    if not tf.io.gfile.glob(glob):
        evaluate_model(eval_workspace["model"], str(eval_workspace["voc"]), cache_dir=eval_workspace["cache"], max_images=1, verbose=False)
    ids = val_ids(eval_workspace["voc"])
    canvas = (64, 72)
    model = keras.saving.load_model(eval_workspace["model"], compile=False)
    hist = np.zeros((21, 21), np.int64)
    expected_predictions, void = [], 0
    for image_id in ids:  # Reference: each image padded to the canvas by hand, predicted alone.
        image = tf.io.decode_jpeg(tf.io.read_file(str(eval_workspace["voc"] / "VOC2012" / "JPEGImages" / f"{image_id}.jpg")), channels=3).numpy()
        label = np.array(Image.open(eval_workspace["voc"] / "VOC2012" / "SegmentationClass" / f"{image_id}.png"))
        h, w = label.shape
        padded = np.empty((*canvas, 3), np.uint8)
        padded[:] = PAD_RGB
        padded[:h, :w] = image
        predicted = model.predict(padded[None], verbose=0)[0].argmax(-1)[:h, :w]
        expected_predictions.append(predicted)
        valid = label != IGNORE_LABEL
        np.add.at(hist, (label[valid], predicted[valid]), 1)
        void += int((~valid).sum())
    # 5 images in batches of 2: the last batch is filled with blank images, which count for nothing.
    results = evaluate_model(eval_workspace["model"], glob, batch_size=2, canvas=canvas, keep_predictions=3, verbose=False)
    np.testing.assert_array_equal(results["confusion"], hist)
    assert results["num_images"] == 5 and results["void_pixels"] == void > 0
    assert results["canvas"] == list(canvas) and results["batch_size"] == 2
    assert len(results["predictions"]) == 3
    for kept, expected in zip(results["predictions"], expected_predictions):
        np.testing.assert_array_equal(kept, expected)
    assert "batches of 2 padded to a 64x72 canvas" in metrics_markdown(results)
    # Each image's row counts its own pixels only, not the canvas' padding nor the blank fillers.
    assert [row["image_id"] for row in results["per_image"]] == ids
    assert [row["pixels"] for row in results["per_image"]] == [
        int((np.array(Image.open(eval_workspace["voc"] / "VOC2012" / "SegmentationClass" / f"{i}.png")) != IGNORE_LABEL).sum())
        for i in ids]
    with pytest.raises(ValueError, match=r"holds 5 images larger than canvas=\(16, 16\) \(height, width\), e.g. '\w+' \(\d+x\d+\): pass a larger canvas"):
        evaluate_model(eval_workspace["model"], glob, canvas=(16, 16), verbose=False)
    with pytest.raises(ValueError, match="keep_predictions must be an integer >= 0. Received: keep_predictions=-1"):
        evaluate_model(eval_workspace["model"], glob, keep_predictions=-1, verbose=False)


def test_an_image_of_void_only_has_no_scores_of_its_own():
    tally = _Tally(2)  # What the evaluation counts of each image, here one all void and one half right.
    tally.add("all_void", np.full((2, 3), IGNORE_LABEL, np.uint8), np.zeros((2, 3), np.uint8))
    tally.add("b", np.zeros((2, 3), np.uint8), np.array([[0, 1, 0], [1, 0, 1]], np.uint8))
    rows = tally.per_image
    assert rows == [{"image_id": "all_void", "height": 2, "width": 3, "pixels": 0, "pixel_accuracy": None, "mean_iu": None},
                    {"image_id": "b", "height": 2, "width": 3, "pixels": 6, "pixel_accuracy": 0.5, "mean_iu": 0.25}]
    assert tally.void_pixels == 6 and tally.confusion.tolist() == [[3, 3], [0, 0]]
    assert per_image_csv(rows) == ("image_id,height,width,pixels,pixel_accuracy,mean_iu\n"
                                   "all_void,2,3,0,,\nb,2,3,6,0.5,0.25\n")
    results = {"model": "m", "data": "d", "split": None, "num_images": 2, "num_pixels": 6, "backend": "tensorflow",
               "images_per_second": 1.0, "pixel_accuracy": 0.5, "mean_accuracy": 0.5, "mean_iu": 0.25, "fw_iu": 0.25,
               "per_class_iu": [0.25, None], "confusion": [[3, 0], [3, 0]], "class_names": ["x", "y"], "per_image": rows}
    assert "## Lowest mean IU (1 of 1 images; all in per_image.csv)" in metrics_markdown(results)
    assert "all_void" not in metrics_markdown(results)


def test_bad_input_gives_clear_errors(eval_workspace, tmp_path):
    model, voc = eval_workspace["model"], str(eval_workspace["voc"])
    with pytest.raises(FileNotFoundError, match="model file not found"):
        evaluate_model(tmp_path / "missing.keras", voc, verbose=False)
    inputs = keras.Input((None, None, 3))
    classifier = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    classifier.save(tmp_path / "classifier.keras")
    with pytest.raises(ValueError, match="is not an FCN"):
        evaluate_model(tmp_path / "classifier.keras", voc, verbose=False)
    strided = keras.Model(inputs, keras.layers.Conv2D(21, 3, strides=2, padding="same")(inputs))
    strided.save(tmp_path / "strided.keras")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'strided.keras'} is not an FCN: its scores are not "
                                                   "pixel-aligned with its input (a 64x96 image gives 32x48 scores)")):
        evaluate_model(tmp_path / "strided.keras", voc, verbose=False)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match=r"output_dir must be a folder. Received: output_dir='.*a_file', a file"):
        evaluate_model(model, voc, output_dir=tmp_path / "a_file", verbose=False)  # Before the evaluation, not after.
    with pytest.raises(ValueError, match=r"output_dir must be a folder. Received: output_dir='.*a_file/out', inside "
                                         r"'.*a_file', a file"):
        evaluate_model(model, voc, output_dir=tmp_path / "a_file" / "out", verbose=False)
    with pytest.raises(ValueError, match=r"output_dir '/proc/fcn-eval' cannot be written: "):
        evaluate_model(model, voc, output_dir="/proc/fcn-eval", verbose=False)
    with pytest.raises(ValueError, match="nothing matches"):
        evaluate_model(model, str(tmp_path / "nothing-*.tfrecord"), verbose=False)
    with pytest.raises(ValueError, match="predicts 21 classes but 3 class names"):
        evaluate_model(model, voc, class_names=("a", "b", "c"), cache_dir=eval_workspace["cache"], verbose=False)
    with pytest.raises(ValueError, match="has no split 'test'"):
        evaluate_model(model, voc, split="test", cache_dir=eval_workspace["cache"], verbose=False)


def test_class_names_come_from_the_data(eval_workspace, tmp_path):
    import shutil

    from fcn_keras.data.convert import convert
    from fcn_keras.data.synthetic import make_synthetic_folder_dataset
    from fcn_keras.model import build_fcn

    own = make_synthetic_folder_dataset(tmp_path / "mine", class_names=("sky", "tree", "rock", "water"), num_train=1,
                                        num_val=2, seed=3)
    data = tmp_path / "records"
    convert(None, data, **own, verbose=False)
    model = build_fcn("32s", 4, fc_units=8, geometry="same")
    results = evaluate_model(model, data, output_dir=tmp_path / "eval", verbose=False)
    assert results["class_names"] == ["sky", "tree", "rock", "water"] and results["num_images"] == 2
    assert "| water |" in (tmp_path / "eval" / "metrics.md").read_text()
    # Records without a manifest: names for the count (VOC's for 21 classes).
    bare = tmp_path / "bare"
    bare.mkdir()
    for shard in data.glob("val-*.tfrecord"):
        shutil.copy(shard, bare)
    assert evaluate_model(model, str(bare / "*.tfrecord"), verbose=False)["class_names"] == [f"class {i}" for i in range(4)]
    assert evaluate_model(model, str(bare / "*.tfrecord"), class_names=list("abcd"), verbose=False)["class_names"] == list("abcd")
    run = tmp_path / "run"  # A run folder: its config.json names the classes it was trained on.
    run.mkdir()
    model.save(run / "best.keras")
    (run / "config.json").write_text(json.dumps({"config": {}, "class_names": ["sky", "tree", "rock", "water"]}))
    assert evaluate_model(run, str(bare / "*.tfrecord"), verbose=False)["class_names"] == ["sky", "tree", "rock", "water"]
    with pytest.raises(ValueError, match=r"predicts 21 classes but data .* has 4 \(sky, tree, rock, water\): it was trained on other data"):
        evaluate_model(eval_workspace["model"], data, verbose=False)
    # Names matching the model do not make it a model of this data (found by review: given names
    # skipped the check, and a VOC model scored 21 classes against these 4).
    with pytest.raises(ValueError, match=r"predicts 21 classes but data .* has 4 \(sky, tree, rock, water\)"):
        evaluate_model(eval_workspace["model"], data, class_names=[f"c{i}" for i in range(21)], verbose=False)
    # Records without a manifest cannot tell their class count: labels the model has no class for
    # are refused, not dropped from the confusion matrix (which would score a subset of pixels).
    three = build_fcn("32s", 3, fc_units=8, geometry="same")
    labels = tmp_path / "label_maps"  # Label maps (all class 0) of every image, as predict writes them.
    written, _ = predict.predict_images(lambda image: np.zeros(image.shape[:2], np.uint8),
                                        sorted(own["images_dir"].iterdir()), labels, verbose=False)
    assert len(written) == 3
    with pytest.raises(ValueError, match=r"holds labels \[3\] outside \[0, 3\) and not 255 \(void\), in images 0\.\.0: "
                                         r"they do not fit a 3-class model"):
        evaluate_model(three, str(bare / "*.tfrecord"), batch_size=1, verbose=False)
    with pytest.raises(ValueError, match=r"holds labels \[3\] outside \[0, 3\) and not 255 \(void\), in image '.*': "
                                         r"they do not fit a 3-class prediction set"):
        evaluate_predictions(labels, str(bare / "*.tfrecord"), class_names=["sky", "tree", "rock"], verbose=False)


def test_cli_under_jax_writes_the_same_metrics(eval_workspace, tmp_path):
    pytest.importorskip("jax")
    # One convolution: an FCN in shape (RGB in, 21-class logits out) that JAX compiles quickly
    # for each image size; the full network under TensorFlow is checked above.
    inputs = keras.Input((None, None, 3))
    scaled = keras.layers.Rescaling(1 / 255)(inputs)
    logits = keras.layers.Conv2D(21, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(0, 1, seed=1))(scaled)
    keras.Model(inputs, logits).save(tmp_path / "conv.keras")
    out = tmp_path / "jax"
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
    flags = [f"--data={eval_workspace['voc']}", f"--cache_dir={eval_workspace['cache']}", f"--output_dir={out}"]
    command = [sys.executable, "-m", "fcn_keras.evaluate", *flags, "--max_images=3"]
    result = subprocess.run([*command, f"--model={tmp_path / 'conv.keras'}"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "mean IU" in result.stdout
    written = json.loads((out / "metrics.json").read_text())
    assert written["backend"] == "jax" and written["num_images"] == 3
    hist, predictions = reference(tmp_path / "conv.keras", eval_workspace["voc"], val_ids(eval_workspace["voc"])[:3])
    assert len(np.unique(np.concatenate([p.ravel() for p in predictions]))) > 2
    np.testing.assert_array_equal(written["confusion"], hist)
    # A missing model file exits with status 2 and a message naming it, no traceback.
    result = subprocess.run([*command, f"--model={tmp_path / 'missing.keras'}"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert f"error: model file not found: {tmp_path / 'missing.keras'}" in result.stderr
    assert "Traceback" not in result.stderr
    # A bad --canvas is named; a canvas run under JAX counts the same pixels.
    result = subprocess.run([*command, f"--model={tmp_path / 'conv.keras'}", "--canvas=12x"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "--canvas must be N or HxW with positive integers. Received: '12x'" in result.stderr
    (tmp_path / "names.txt").write_text("".join(f"thing {i}\n" for i in range(21)))
    result = subprocess.run([*command, f"--model={tmp_path / 'conv.keras'}", "--canvas=64x72", "--batch_size=2",
                             f"--class_names={tmp_path / 'names.txt'}"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    written = json.loads((out / "metrics.json").read_text())
    assert written["canvas"] == [64, 72] and written["num_pixels"] == hist.sum()
    assert written["class_names"] == [f"thing {i}" for i in range(21)]
    result = subprocess.run([*command, f"--model={tmp_path / 'conv.keras'}", "--class_names=sky,tree"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "predicts 21 classes but 2 class names were given" in result.stderr
    result = subprocess.run([*command, f"--model={tmp_path / 'conv.keras'}", "--tile_size=480", "--batch_size=2"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and ("error: --tile_size segments one image at a time: it needs --batch_size=1 and no "
                                       "--canvas. Received: --batch_size=2, --canvas=None") in result.stderr


def test_label_maps_of_predict_score_as_the_model_does(eval_workspace, tmp_path):
    """predict's label PNGs of the val images, scored with --predictions, give the model's own
    evaluation (confusion and per-image rows); a missing, resized, out-of-range or colour
    prediction is refused naming its file, and the CLI refuses flags that only a model uses."""
    voc, cache = eval_workspace["voc"], eval_workspace["cache"]
    ids = val_ids(voc)
    out = tmp_path / "labels"
    assert predict.run(eval_workspace["model"], [voc / "VOC2012" / "JPEGImages" / f"{i}.jpg" for i in ids], out) == 0
    by_model = evaluate_model(eval_workspace["model"], str(voc), cache_dir=cache, verbose=False)
    scored = evaluate_predictions(out, str(voc), cache_dir=cache, output_dir=tmp_path / "eval", verbose=False)
    assert scored["confusion"] == by_model["confusion"] and scored["per_image"] == by_model["per_image"]
    assert scored["mean_iu"] == by_model["mean_iu"] and scored["num_images"] == 5 and scored["predictions_dir"] == str(out)
    markdown = (tmp_path / "eval" / "metrics.md").read_text()
    assert markdown.startswith(f"# Evaluation of `{out}`") and "(label maps read from files)" in markdown
    assert evaluate_predictions(out, str(voc), cache_dir=cache, max_images=2, verbose=False)["num_images"] == 2
    with pytest.raises(ValueError, match=re.escape(f"3 class names were given (a, b, c) but data {str(voc)!r} has 21")):
        evaluate_predictions(out, str(voc), cache_dir=cache, class_names=list("abc"), verbose=False)
    names = [f"n{i}" for i in range(21)]  # Given names of the data's count replace the data's.
    assert evaluate_predictions(out, str(voc), cache_dir=cache, class_names=names, max_images=1, verbose=False)["class_names"] == names

    first = out / f"{ids[0]}.png"
    label = np.asarray(Image.open(first))
    first.rename(tmp_path / "aside.png")
    with pytest.raises(ValueError, match=re.escape(f"1 of the 5 images of data {str(voc)!r} have no prediction in {out}: "
                                                   f"expected <image id>.png, e.g. {first}")):
        evaluate_predictions(out, str(voc), cache_dir=cache, verbose=False)
    for image_id in ids[1:4]:  # Four missing: the first three named, then "...".
        (out / f"{image_id}.png").rename(tmp_path / f"{image_id}.png")
    with pytest.raises(ValueError, match=re.escape(f"4 of the 5 images of data {str(voc)!r} have no prediction in {out}: "
                                                   f"expected <image id>.png, e.g. {first}, {out / ids[1]}.png, "
                                                   f"{out / ids[2]}.png ...") + "$"):
        evaluate_predictions(out, str(voc), cache_dir=cache, verbose=False)
    for image_id in ids[1:4]:
        (tmp_path / f"{image_id}.png").rename(out / f"{image_id}.png")
    broken = {
        "a smaller map": (Image.fromarray(label[:-1]), r"the prediction is \d+x\d+ \(HxW\) but image '\w+' is \d+x\d+"),
        "a value no class": (Image.fromarray(np.full_like(label, 30)), r"predictions must be classes in \[0, 21\)"),
        "colours": (Image.fromarray(np.zeros((*label.shape, 3), np.uint8)), r"mask is a mode-RGB PNG"),
    }
    for case, (picture, match) in broken.items():
        picture.save(first)
        with pytest.raises(ValueError, match=re.escape(str(first)) + ".*" + match):
            evaluate_predictions(out, str(voc), cache_dir=cache, verbose=False)
    # Colour-coded predictions (RGB PNGs in VOC's colours, as other ports save them) with label_colours.
    coloured = tmp_path / "coloured"
    coloured.mkdir()
    for path in out.glob("*.png"):
        if path != first:
            Image.fromarray(VOC_PALETTE[np.asarray(Image.open(path))]).save(coloured / path.name)
    Image.fromarray(VOC_PALETTE[label]).save(coloured / first.name)
    painted = evaluate_predictions(coloured, str(voc), cache_dir=cache, label_colours="voc", verbose=False)
    assert painted["confusion"] == by_model["confusion"]
    with pytest.raises(ValueError, match=re.escape(str(coloured / first.name)) + r".*colour\(s\) not in voc"):
        Image.fromarray(VOC_PALETTE[label] + 1).save(coloured / first.name)
        evaluate_predictions(coloured, str(voc), cache_dir=cache, label_colours="voc", verbose=False)
    with pytest.raises(ValueError, match=r"predictions must be a folder of <image id>.png label maps"):
        evaluate_predictions(first, str(voc), cache_dir=cache, verbose=False)

    (tmp_path / "aside.png").replace(first)
    # In subfolders (predict --recursive's outputs) each is found by its name, which must be unique.
    for image_id, folder in ((ids[1], out / "a"), (ids[2], out / "b" / "c")):
        folder.mkdir(parents=True)
        (out / f"{image_id}.png").replace(folder / f"{image_id}.png")
    nested = evaluate_predictions(out, str(voc), cache_dir=cache, verbose=False)
    assert nested["confusion"] == by_model["confusion"] and nested["per_image"] == by_model["per_image"]
    (out / "b" / f"{ids[1]}.png").write_bytes((out / "a" / f"{ids[1]}.png").read_bytes())
    with pytest.raises(ValueError, match=re.escape(f"image {ids[1]!r} has several predictions in {out}: "
                                                   f"{out / 'a' / ids[1]}.png and {out / 'b' / ids[1]}.png; keep one")):
        evaluate_predictions(out, str(voc), cache_dir=cache, verbose=False)
    (out / "d").mkdir()
    (out / "d" / f"{ids[1]}.png").write_bytes((out / "a" / f"{ids[1]}.png").read_bytes())
    with pytest.raises(ValueError, match=re.escape(f"{out / 'a' / ids[1]}.png and {out / 'b' / ids[1]}.png and 1 more; keep one")):
        evaluate_predictions(out, str(voc), cache_dir=cache, verbose=False)
    (out / "d" / f"{ids[1]}.png").unlink()
    (out / "b" / f"{ids[1]}.png").unlink()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "fcn_keras.evaluate", f"--data={voc}", f"--cache_dir={cache}"]
    result = subprocess.run([*command, f"--predictions={out}"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"mean IU {100 * by_model['mean_iu']:.2f}" in result.stdout and "5 images" in result.stdout
    result = subprocess.run([*command, f"--predictions={out}", "--canvas=64", "--batch_size=2"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and ("error: --batch_size, --canvas tell how to run a --model; --predictions are read "
                                       "as they are: drop them") in result.stderr


@pytest.mark.parametrize("cache_dir", [None, "elsewhere"])
def test_conversion_folder_is_the_one_training_made(eval_workspace, tmp_path, monkeypatch, cache_dir):
    """With the same --cache_dir (or neither), evaluating a VOCdevkit root reads what
    `fcn_keras.train --data=<root>` converted (<cache_dir>/records-<hash>): nothing converted twice."""
    from fcn_keras.evaluate import resolve_split
    from fcn_keras.train import TrainConfig, resolve_run_data

    monkeypatch.chdir(tmp_path)
    voc = eval_workspace["voc"]
    parent = Path(cache_dir or "cache")
    trained = resolve_run_data(TrainConfig(data=str(voc), **({"cache_dir": cache_dir} if cache_dir else {})))
    stamps = {p: p.stat().st_mtime_ns for p in parent.rglob("val-*.tfrecord")}
    assert stamps
    pattern, count = resolve_split(voc, "val", *([cache_dir] if cache_dir else []))
    assert pattern == trained["val"] and count == 5 and Path(pattern).parent.parent == parent
    assert {p: p.stat().st_mtime_ns for p in parent.rglob("val-*.tfrecord")} == stamps


def test_tiles_give_the_whole_images_metrics(eval_workspace, tmp_path):
    """Images taller than the tiles (500 to 640 rows) evaluated in tiles of 480: the same label maps
    as whole (but where two classes tie to within rounding), so the same metrics; wrong uses named."""
    from fcn_keras.data.synthetic import make_synthetic_voc

    voc = make_synthetic_voc(tmp_path / "VOCdevkit", num_train=1, num_val=2, size=(570, 40), seed=4)
    common = dict(cache_dir=tmp_path / "cache", keep_predictions=2, verbose=False)
    whole = evaluate_model(eval_workspace["model"], str(voc), **common)
    tiled = evaluate_model(eval_workspace["model"], str(voc), tile_size=(480, 480), **common)
    assert [p.shape[0] > 480 for p in whole["predictions"]] == [True, True]
    for a, b in zip(tiled["predictions"], whole["predictions"]):
        assert len(np.unique(b)) > 3 and np.mean(a != b) <= 1e-3
    assert tiled["num_pixels"] == whole["num_pixels"] and tiled["tile_size"] == [480, 480]
    assert abs(tiled["mean_iu"] - whole["mean_iu"]) <= 1e-3
    assert "one at a time, exact, in tiles of at most 480x480" in metrics_markdown(tiled)
    with pytest.raises(ValueError, match=re.escape("tile_size segments one image at a time: it needs batch_size=1 "
                                                   "and no canvas. Received: batch_size=2, canvas=None")):
        evaluate_model(eval_workspace["model"], str(voc), tile_size=(480, 480), batch_size=2, **common)
    with pytest.raises(ValueError, match=re.escape("tile_size must be at least 480 pixels on each side")):
        evaluate_model(eval_workspace["model"], str(voc), tile_size=(479, 480), **common)
    inputs = keras.Input((None, None, 3))
    conv = keras.Model(inputs, keras.layers.Conv2D(21, 3, padding="same")(inputs), name="conv")
    with pytest.raises(ValueError, match=re.escape("tiled prediction needs an FCN-VGG16 of fcn_keras.model.build_fcn "
                                                   "(its reach is known); model conv has no layers")):
        evaluate_model(conv, str(voc), tile_size=(480, 480), **common)


def test_images_the_conversion_skipped_are_reported_not_scored(eval_workspace, tmp_path, monkeypatch, capsys):
    import shutil

    from fcn_keras.data.convert import convert

    voc = Path(shutil.copytree(eval_workspace["voc"], tmp_path / "VOCdevkit"))
    ids = (voc / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    (voc / "VOC2012" / "SegmentationClass" / f"{ids[2]}.png").unlink()
    convert(voc, tmp_path / "records", splits=("val",), skip_invalid=True, verbose=False)
    results = evaluate_model(eval_workspace["model"], tmp_path / "records", output_dir=tmp_path / "eval", verbose=False)
    assert results["num_images"] == len(ids) - 1 and results["skipped_at_conversion"] == [ids[2]]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["skipped_at_conversion"] == [ids[2]]
    assert (f"**1 image(s) of the split's list are not scored**: its conversion skipped them as invalid (the "
            f"conversion's skipped.json says why): {ids[2]}.") in (tmp_path / "eval" / "metrics.md").read_text()
    whole = evaluate_model(eval_workspace["model"], eval_workspace["voc"], cache_dir=eval_workspace["cache"], verbose=False)
    assert whole["skipped_at_conversion"] == [] and whole["num_images"] == len(ids)
    # The command line says so too, after the metrics.
    flags = argparse.Namespace(model=str(eval_workspace["model"]), predictions=None, label_colours=None,
                               data=str(tmp_path / "records"), split="val", output_dir=None, max_images=None, batch_size=1,
                               canvas=None, tile_size=None, class_names=None, cache_dir="cache")
    monkeypatch.setattr(evaluate, "FLAGS", flags)
    capsys.readouterr()
    assert evaluate.main(["evaluate"]) == 0
    assert re.search(rf"^pixel acc\. [\d.]+ \| .* \| {len(ids) - 1} images, [\d.]+ images/s \| 1 skipped at conversion, "
                     rf"not scored$", capsys.readouterr().out, re.MULTILINE)


def _bare_val_records(eval_workspace, folder: Path) -> str:
    """A glob of the workspace's val shards copied where no manifest names their classes."""
    import shutil

    records = eval_workspace["records"]
    if not tf.io.gfile.glob(str(records / "val-*.tfrecord")):
        evaluate_model(eval_workspace["model"], str(eval_workspace["voc"]), cache_dir=eval_workspace["cache"], max_images=1,
                       verbose=False)
    folder.mkdir()
    for shard in records.glob("val-*.tfrecord"):
        shutil.copy(shard, folder)
    return str(folder / "val-*.tfrecord")


def test_arguments_are_refused_before_any_work(eval_workspace):
    """max_images of 0 or a bool (True would evaluate one image), and tiles with a canvas, are
    named before the model is even loaded (found by review: True was taken as 1)."""
    missing = eval_workspace["root"] / "no-such-model.keras"  # Never read: the arguments are refused first.
    for value in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match=re.escape(f"max_images must be None or an integer >= 1. Received: max_images={value!r}")):
            evaluate_model(missing, str(eval_workspace["voc"]), max_images=value, verbose=False)
        with pytest.raises(ValueError, match=re.escape(f"max_images must be None or an integer >= 1. Received: max_images={value!r}")):
            evaluate_predictions(eval_workspace["root"], str(eval_workspace["voc"]), max_images=value, verbose=False)
    with pytest.raises(ValueError, match=re.escape("tile_size segments one image at a time: it needs batch_size=1 and no "
                                                   "canvas. Received: batch_size=1, canvas=(500, 500)")):
        evaluate_model(missing, str(eval_workspace["voc"]), tile_size=480, canvas=(500, 500), verbose=False)


def test_progress_line_ends_at_the_images_read(eval_workspace, capsys):
    """The one-line progress bar (not on a terminal) is printed at the count of images read, also
    when max_images is above what a glob holds (found by review: it was never printed) or below
    what a folder's manifest counts."""
    glob = _bare_val_records(eval_workspace, eval_workspace["root"] / "progress")
    capsys.readouterr()
    assert evaluate_model(eval_workspace["model"], glob, max_images=9, verbose=True)["num_images"] == 5
    assert re.search(r"^5/5 - \d+s - .*/image$", capsys.readouterr().out, re.MULTILINE)
    evaluate_model(eval_workspace["model"], str(eval_workspace["voc"]), cache_dir=eval_workspace["cache"], max_images=3,
                   verbose=True)
    printed = capsys.readouterr().out
    assert re.search(r"^3/3 - \d+s - .*/image$", printed, re.MULTILINE) and "/5 -" not in printed, printed


def test_class_names_of_records_without_a_manifest(eval_workspace, tmp_path):
    """A 21-class model on records that name no classes gets VOC's names; names its run recorded
    for another class count are not used (nor refused); no label maps are returned unasked; max_images
    may be a numpy integer (found by review: it was refused as not an integer)."""
    glob = _bare_val_records(eval_workspace, tmp_path / "bare")
    results = evaluate_model(eval_workspace["model"], glob, max_images=np.int64(1), verbose=False)
    assert results["class_names"] == list(VOC_CLASSES) and "predictions" not in results and results["num_images"] == 1
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(eval_workspace["model"].read_bytes())
    (run / "config.json").write_text(json.dumps({"config": {}, "class_names": ["sky", "tree", "rock"]}))
    assert evaluate_model(run, glob, max_images=1, verbose=False)["class_names"] == list(VOC_CLASSES)


def test_canvas_checks_only_the_images_evaluated(eval_workspace):
    """With max_images, images beyond those evaluated may be larger than the canvas."""
    ids = val_ids(eval_workspace["voc"])
    sizes = [np.array(Image.open(eval_workspace["voc"] / "VOC2012" / "SegmentationClass" / f"{i}.png")).shape for i in ids]
    canvas = (max(h for h, _ in sizes[:2]), max(w for _, w in sizes[:2]))
    larger = [s for s in sizes[2:] if s[0] > canvas[0] or s[1] > canvas[1]]
    assert larger  # The fixture's sizes make the point.
    results = evaluate_model(eval_workspace["model"], str(eval_workspace["voc"]), cache_dir=eval_workspace["cache"],
                             canvas=canvas, max_images=2, verbose=False)
    assert results["num_images"] == 2
    with pytest.raises(ValueError, match=rf"holds {len(larger)} images larger than canvas={re.escape(str(canvas))}"):
        evaluate_model(eval_workspace["model"], str(eval_workspace["voc"]), cache_dir=eval_workspace["cache"],
                       canvas=canvas, verbose=False)


def test_max_images_stops_the_model_at_those_images(eval_workspace, monkeypatch):
    """The model runs on the first max_images images only, not on every batch of the data."""
    from fcn_keras.inference import labels_model

    calls = []

    def counting(model):
        predictor = labels_model(model)

        class Counting:
            def predict_on_batch(self, images):
                calls.append(len(images))
                return predictor.predict_on_batch(images)

        return Counting()

    monkeypatch.setattr(evaluate, "labels_model", counting)
    results = evaluate_model(eval_workspace["model"], str(eval_workspace["voc"]), cache_dir=eval_workspace["cache"],
                             max_images=2, verbose=False)
    assert results["num_images"] == 2 and calls == [1, 1]


def test_records_without_images_are_refused(eval_workspace, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with tf.io.TFRecordWriter(str(empty / "val-00000.tfrecord")):
        pass
    glob = str(empty / "*.tfrecord")
    with pytest.raises(ValueError, match=re.escape(f"no image was evaluated: {glob!r} holds no record")):
        evaluate_model(eval_workspace["model"], glob, verbose=False)
    with pytest.raises(ValueError, match=re.escape(f"no image was evaluated: {glob!r} holds no record")):
        evaluate_predictions(empty, glob, verbose=False)


def test_report_tables_rates_and_modes():
    """metrics.md's per-class rows (IU, '-' for an absent class, ground-truth pixels = row sums),
    at most HARDEST_SHOWN hardest images, the rate, and each way of feeding images in words."""
    tally = _Tally(3)
    rng = np.random.default_rng(0)
    for i in range(evaluate.HARDEST_SHOWN + 2):
        label = rng.integers(0, 2, (3, 4)).astype(np.uint8)
        tally.add(f"im{i:02d}", label, np.where(rng.random((3, 4)) < 0.2 * (i % 5), 1 - label, label).astype(np.uint8))
    results = {**tally.results(["a", "b", "never"], seconds=4.0), "model": "m", "data": "d", "split": "val",
               "backend": "tensorflow", "batch_size": 1}
    assert results["images_per_second"] == pytest.approx(len(tally.per_image) / 4.0)
    confusion = np.asarray(results["confusion"])
    assert confusion.sum(axis=1).tolist() != confusion.sum(axis=0).tolist()  # Rows (truth) differ from columns.
    markdown = metrics_markdown(results)
    for name, iu, pixels in zip(("a", "b"), results["per_class_iu"], confusion.sum(axis=1)):
        assert f"| {name} | {100 * iu:.1f} | {pixels:,} |" in markdown
    assert "| never | - | 0 |" in markdown and results["per_class_iu"][2] is None
    section = markdown.split(f"## Lowest mean IU ({evaluate.HARDEST_SHOWN} of {len(tally.per_image)} images; all in per_image.csv)")[1]
    listed = [line for line in section.splitlines() if re.match(r"\| im\d\d \|", line)]
    hardest = sorted(tally.per_image, key=lambda row: (row["mean_iu"], row["image_id"]))[:evaluate.HARDEST_SHOWN]
    assert [line.split(" | ")[0][2:] for line in listed] == [row["image_id"] for row in hardest]
    assert "(one at a time, exact)" in markdown
    assert evaluation_mode({"batch_size": 4}) == "batches of 4 padded to the largest image"
    assert evaluation_mode({"batch_size": 1}) == "one at a time, exact"


def test_cli_refuses_flags_that_do_not_go_together(monkeypatch, capsys):
    """main's usage errors, each on one line naming the flags, before any work."""
    defaults = {"model": "m.keras", "predictions": None, "label_colours": None, "data": "d", "split": "val",
                "output_dir": None, "max_images": None, "batch_size": 1, "canvas": None, "tile_size": None,
                "class_names": None, "cache_dir": "cache"}
    cases = [
        (["evaluate", "extra"], {}, "unexpected arguments: ['extra']"),
        (["evaluate"], {"predictions": "labels"}, "pass --model (a trained FCN to run) or --predictions"),
        (["evaluate"], {"model": None}, "pass --model (a trained FCN to run) or --predictions"),
        (["evaluate"], {"label_colours": "voc"}, "--label_colours reads colour-coded --predictions"),
        (["evaluate"], {"model": None, "predictions": "labels", "tile_size": "480"},
         "--tile_size tells how to run a --model; --predictions are read as they are: drop them"),
        (["evaluate"], {"tile_size": "480", "canvas": "500"},
         "error: --tile_size segments one image at a time: it needs --batch_size=1 and no --canvas. Received: "
         "--batch_size=1, --canvas=500"),
    ]
    for argv, changed, message in cases:
        monkeypatch.setattr(evaluate, "FLAGS", argparse.Namespace(**{**defaults, **changed}))
        assert evaluate.main(argv) == 2, (argv, changed)
        captured = capsys.readouterr()
        assert message in captured.err and not captured.out, (message, captured.err)
