"""make_synthetic_voc writes a real VOCdevkit layout: JPEGs, palette PNGs of class indices with
void borders, lists; deterministic by seed."""

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image

from fcn_keras.constants import IGNORE_LABEL, NUM_CLASSES, VOC_PALETTE
from fcn_keras.data.synthetic import make_synthetic_voc


def test_layout_files_and_masks(tmp_path):
    root = make_synthetic_voc(tmp_path / "voc", num_train=5, num_val=3, size=(48, 64), seed=3)
    assert root == tmp_path / "voc"
    voc = root / "VOC2012"
    lists = {s: (voc / "ImageSets/Segmentation" / f"{s}.txt").read_text().split() for s in ("train", "val", "trainval")}
    assert len(lists["train"]) == 5 and len(lists["val"]) == 3
    assert lists["trainval"] == lists["train"] + lists["val"] and not set(lists["train"]) & set(lists["val"])
    sizes, classes = set(), set()
    for image_id in lists["trainval"]:
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as jpeg:
            assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
            image_size = jpeg.size
        with Image.open(voc / "SegmentationClass" / f"{image_id}.png") as png:
            assert png.format == "PNG" and png.mode == "P"
            np.testing.assert_array_equal(np.array(png.getpalette(), np.uint8).reshape(-1, 3), VOC_PALETTE)
            assert png.size == image_size
            label = np.array(png)
        values = set(np.unique(label).tolist())
        assert values <= set(range(NUM_CLASSES)) | {IGNORE_LABEL}
        assert {0, IGNORE_LABEL} <= values and len(values) >= 3  # background, void border, >= 1 object
        classes |= values
        sizes.add(image_size)
        w, h = image_size
        assert 0.85 * 48 <= h <= 1.15 * 48 and 0.85 * 64 <= w <= 1.15 * 64
    assert len(sizes) > 1  # sizes vary per image
    assert len(classes) >= 6


def test_objects_have_their_class_colour(tmp_path):
    root = make_synthetic_voc(tmp_path, num_train=4, num_val=0, size=(96, 128), seed=1)
    checked = 0
    for image_id in (root / "VOC2012/ImageSets/Segmentation/train.txt").read_text().split():
        image = np.array(Image.open(root / "VOC2012/JPEGImages" / f"{image_id}.jpg")).astype(float)
        label = np.array(Image.open(root / "VOC2012/SegmentationClass" / f"{image_id}.png"))
        for cls in set(np.unique(label).tolist()) - {0, IGNORE_LABEL}:
            interior = scipy.ndimage.binary_erosion(label == cls, iterations=3)  # away from JPEG chroma blur
            if interior.sum() >= 20:
                mean = image[interior].mean(axis=0)
                assert np.abs(mean - VOC_PALETTE[cls]).max() < 20, (image_id, cls, mean)
                checked += 1
    assert checked >= 3


def test_deterministic_by_seed(tmp_path):
    first = make_synthetic_voc(tmp_path / "a", num_train=3, num_val=1, seed=7)
    second = make_synthetic_voc(tmp_path / "b", num_train=3, num_val=1, seed=7)
    other = make_synthetic_voc(tmp_path / "c", num_train=3, num_val=1, seed=8)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 4 * 2 + 3
    for path in files:
        assert (first / path).read_bytes() == (second / path).read_bytes()
    jpeg = "VOC2012/JPEGImages/synth_000000.jpg"
    assert (first / jpeg).read_bytes() != (other / jpeg).read_bytes()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_train": 0}, "num_train must be >= 1 and num_val >= 0. Received: num_train=0"),
        ({"num_val": -1}, "Received: num_train=16, num_val=-1"),
        ({"size": (4, 64)}, r"size must be \(height, width\) with both >= 8. Received: size=\(4, 64\)"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_voc(tmp_path, **kwargs)
