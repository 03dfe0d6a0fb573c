"""Small synthetic datasets in the real VOCdevkit layout, for tests and the embedded default run.

``make_synthetic_voc(root)`` writes real JPEG images and palette PNG masks (the format of VOC's
``SegmentationClass``) of simple shapes, each shape one VOC class painted in a colour tied to
its class (so a model can learn it), with a void (255) border around every shape as VOC has.
``make_synthetic_sbd(root, voc_root, ids)`` adds an SBD tree (``.mat`` masks) of those images.
``make_synthetic_folder_dataset(root)`` writes a dataset of your own's layout (images, masks,
lists, class names; see ``fcn_keras.data.voc``) with any number of classes and PNG images too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image, ImageDraw

from fcn_keras.constants import (
    IGNORE_LABEL,
    NUM_CLASSES,
    VOC_DIR,
    VOC_IMAGES_DIR,
    VOC_LISTS_DIR,
    VOC_MASKS_DIR,
    VOC_PALETTE,
)

# --- Shapes -----------------------------------------------------------------------------------

#: Width in pixels of the void band drawn around each shape.
VOID_BORDER = 2
#: How much an image's height and width vary around the requested size (fraction).
SIZE_JITTER = 0.125


# --- Drawing ----------------------------------------------------------------------------------


def _draw_pair(rng: np.random.Generator, height: int, width: int, num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Draws one image and its label map: 1..3 shapes of random classes (1..num_classes - 1) on
    a noisy background (class 0).

    Returns:
        ``(image uint8 [H, W, 3], label uint8 [H, W])``.
    """
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, num_classes))
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        x1, y1 = max(x1, x0 + width // 6), max(y1, y0 + height // 6)
        box = (x0, y0, x1, y1)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.rectangle(box, fill=cls, outline=IGNORE_LABEL, width=VOID_BORDER)
        elif kind == 1:
            draw.ellipse(box, fill=cls, outline=IGNORE_LABEL, width=VOID_BORDER)
        else:
            triangle = [(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)]
            draw.polygon(triangle, fill=cls, outline=IGNORE_LABEL, width=VOID_BORDER)
    label = np.array(mask, dtype=np.uint8)
    # Class colours come from the VOC palette (background a dark grey), plus sensor-like noise.
    colours = VOC_PALETTE.astype(np.float32)
    colours[0] = (40.0, 40.0, 40.0)
    colours[IGNORE_LABEL] = (128.0, 128.0, 128.0)
    image = colours[label] + rng.normal(0.0, 12.0, (height, width, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def _write_palette_png(label: np.ndarray, path: Path) -> None:
    """Writes a label map as a VOC-style palette (mode ``P``) PNG."""
    png = Image.fromarray(label, mode="P")
    png.putpalette(VOC_PALETTE.reshape(-1).tolist())
    png.save(path, format="PNG")


# --- Public API -------------------------------------------------------------------------------


def make_synthetic_voc(
    root: str | os.PathLike,
    *,
    num_train: int = 16,
    num_val: int = 8,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
) -> Path:
    """Writes a small synthetic dataset in the VOCdevkit layout.

    Creates ``<root>/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}`` with
    ``num_train + num_val`` JPEG images (quality 95), palette PNG masks of class indices (shapes
    of random VOC classes, 255 void borders) and the lists ``train.txt``, ``val.txt`` and
    ``trainval.txt``. Image sizes vary by up to 12.5% around ``size``. The same arguments always
    write the same files.

    Args:
        root: the folder to write into (the VOCdevkit root); created if needed.
        num_train: number of images in the ``train`` list (>= 1).
        num_val: number of images in the ``val`` list (>= 0).
        size: nominal ``(height, width)`` in pixels (each >= 8).
        seed: seed of the random shapes, classes, sizes and noise.

    Returns:
        ``Path(root)``, to pass as ``voc_root`` to ``fcn_keras.data.convert.convert``.
    """
    if num_train < 1 or num_val < 0:
        raise ValueError(f"num_train must be >= 1 and num_val >= 0. Received: num_train={num_train}, num_val={num_val}")
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be (height, width) with both >= 8. Received: size={size!r}")
    root = Path(root)
    voc = root / VOC_DIR
    for folder in (VOC_IMAGES_DIR, VOC_MASKS_DIR, VOC_LISTS_DIR):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"synth_{index:06d}" for index in range(num_train + num_val)]
    for image_id in ids:
        jitter = rng.uniform(-SIZE_JITTER, SIZE_JITTER, 2)
        height, width = (int(round(side * (1.0 + j))) for side, j in zip(size, jitter))
        image, label = _draw_pair(rng, height, width)
        Image.fromarray(image, mode="RGB").save(voc / VOC_IMAGES_DIR / f"{image_id}.jpg", format="JPEG", quality=95)
        _write_palette_png(label, voc / VOC_MASKS_DIR / f"{image_id}.png")
    lists = {"train": ids[:num_train], "val": ids[num_train:], "trainval": ids}
    for split, split_ids in lists.items():
        (voc / VOC_LISTS_DIR / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    return root


def make_synthetic_folder_dataset(
    root: str | os.PathLike,
    *,
    class_names: tuple[str, ...] | list[str] = ("background", "road", "car"),
    num_train: int = 6,
    num_val: int = 3,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> dict[str, Path]:
    """Writes a small synthetic dataset in the layout of a dataset of your own.

    Creates ``<root>/images/<id>.jpg`` (even ids, JPEG quality 95) and ``<id>.png`` (odd ids:
    RGB, grayscale and palette PNGs in turn), ``<root>/masks/<id>.png`` (grayscale PNGs of class
    indices: shapes of random classes 1..C-1 on class 0, 255 void borders), ``<root>/lists/
    {train,val}.txt`` and ``<root>/classes.txt`` (one name per line). The same arguments always
    write the same files.

    Args:
        root: the folder to write into; created if needed.
        class_names: the ``C`` class names (2 to 255).
        num_train: images in ``train.txt`` (>= 1).
        num_val: images in ``val.txt`` (>= 0).
        size: nominal ``(height, width)`` (each >= 8), varied by up to 12.5% per image.
        seed: seed of the shapes, classes, sizes and noise.

    Returns:
        The converter's arguments: ``{"images_dir", "labels_dir", "lists_dir", "class_names"}``
        (the last the path of ``classes.txt``).
    """
    if not 2 <= len(class_names) <= IGNORE_LABEL:
        raise ValueError(f"class_names must hold 2 to {IGNORE_LABEL} names. Received: {len(class_names)} names")
    if num_train < 1 or num_val < 0:
        raise ValueError(f"num_train must be >= 1 and num_val >= 0. Received: num_train={num_train}, num_val={num_val}")
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be (height, width) with both >= 8. Received: size={size!r}")
    root = Path(root)
    paths = {"images_dir": root / "images", "labels_dir": root / "masks", "lists_dir": root / "lists",
             "class_names": root / "classes.txt"}
    for key in ("images_dir", "labels_dir", "lists_dir"):
        paths[key].mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"item_{index:04d}" for index in range(num_train + num_val)]
    png_modes = ("RGB", "L", "P")
    for index, image_id in enumerate(ids):
        jitter = rng.uniform(-SIZE_JITTER, SIZE_JITTER, 2)
        height, width = (int(round(side * (1.0 + j))) for side, j in zip(size, jitter))
        image, label = _draw_pair(rng, height, width, len(class_names))
        picture = Image.fromarray(image, mode="RGB")
        if index % 2 == 0:
            picture.save(paths["images_dir"] / f"{image_id}.jpg", format="JPEG", quality=95)
        else:
            mode = png_modes[(index // 2) % len(png_modes)]
            picture = picture.convert(mode) if mode == "L" else picture.quantize(64) if mode == "P" else picture
            picture.save(paths["images_dir"] / f"{image_id}.png", format="PNG")
        Image.fromarray(label, mode="L").save(paths["labels_dir"] / f"{image_id}.png", format="PNG")
    for split, split_ids in (("train", ids[:num_train]), ("val", ids[num_train:])):
        (paths["lists_dir"] / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    paths["class_names"].write_text("".join(f"{name}\n" for name in class_names))
    return paths


def make_synthetic_sbd(
    root: str | os.PathLike,
    voc_root: str | os.PathLike,
    ids: list[str] | tuple[str, ...],
    *,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Writes an SBD tree (Hariharan et al.'s ``benchmark_RELEASE`` layout) from VOC images.

    Creates ``<root>/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt, val.txt}``: the images are
    copied from ``<voc_root>/VOC2012/JPEGImages``; each ``.mat`` holds a new random mask of
    classes 0..20 (SBD has no void label) in SBD's structure (``GTcls`` with ``Segmentation``,
    a cell of sparse ``Boundaries`` and ``CategoriesPresent``). ``train.txt`` lists all ids but
    the last, ``val.txt`` the last.

    Args:
        root: the folder to write into (SBD's ``benchmark_RELEASE``); created if needed.
        voc_root: a VOCdevkit holding the images of ``ids`` (e.g. from ``make_synthetic_voc``).
        ids: the image ids (at least one).
        seed: seed of the random masks.

    Returns:
        The masks written, ``{id: uint8 [H, W]}``.
    """
    if not ids:
        raise ValueError("ids must name at least one image. Received: ids=[]")
    root, voc = Path(root) / "dataset", Path(voc_root) / VOC_DIR
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "cls").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    masks = {}
    for image_id in ids:
        image = voc / VOC_IMAGES_DIR / f"{image_id}.jpg"
        shutil.copy(image, root / "img")
        with Image.open(image) as picture:
            width, height = picture.size
        masks[image_id] = rng.integers(0, NUM_CLASSES, (height, width)).astype(np.uint8)
        present = np.unique(masks[image_id])
        boundaries = np.empty((NUM_CLASSES - 1, 1), dtype=object)
        for cls in range(NUM_CLASSES - 1):
            boundaries[cls, 0] = scipy.sparse.csc_matrix((height, width), dtype=bool)
        gtcls = {
            "Segmentation": masks[image_id],
            "Boundaries": boundaries,
            "CategoriesPresent": present[present > 0].astype(np.uint8)[:, None],  # Without the background.
        }
        scipy.io.savemat(root / "cls" / f"{image_id}.mat", {"GTcls": gtcls})
    (root / "train.txt").write_text("".join(f"{i}\n" for i in ids[:-1]))
    (root / "val.txt").write_text(f"{ids[-1]}\n")
    return masks
