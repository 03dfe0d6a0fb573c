"""Reading the standard segmentation layouts and validating every image/mask pair.

Layouts (``voc_root`` is a ``VOCdevkit`` folder, the one holding ``VOC2012/``):

- PASCAL VOC 2012: ``VOC2012/JPEGImages/<id>.jpg``, ``VOC2012/SegmentationClass/<id>.png``
  (palette PNGs of class indices) and ``VOC2012/ImageSets/Segmentation/<split>.txt``.
- "SegmentationClassAug" (VOC + SBD masks as grayscale PNGs): ``VOC2012/SegmentationClassAug/
  <id>.png`` with the ``train_aug.txt`` list.
- SBD (Hariharan et al.): ``<sbd_root>/dataset/{img/<id>.jpg, cls/<id>.mat, train.txt,
  val.txt}``; masks are MATLAB files read with scipy (``GTcls.Segmentation``).

Splits: ``train``, ``val``, ``trainval`` (VOC lists); ``seg11valid`` (the paper's 736 VOC2011
val images not in SBD train, VOC masks); ``train_aug`` (masks from ``SegmentationClassAug``
when that folder exists, otherwise each id's VOC mask or else its SBD mask); ``sbd_train`` and
``sbd_val`` (SBD images and masks). Lists named ``<split>.txt`` are looked up in ``lists_dir``
first, then in ``VOC2012/ImageSets/Segmentation`` (SBD's lists in ``<sbd_root>/dataset``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import scipy.io
import tensorflow as tf
from PIL import Image

from fcn_keras.console import op_error_reason
from fcn_keras.constants import IGNORE_LABEL, JPEG_SIGNATURE, NUM_CLASSES

# --- Layouts ----------------------------------------------------------------------------------

VOC_SPLITS: tuple[str, ...] = ("train", "val", "trainval", "seg11valid")
AUG_SPLIT: str = "train_aug"
SBD_SPLITS: dict[str, str] = {"sbd_train": "train.txt", "sbd_val": "val.txt"}
SPLITS: tuple[str, ...] = (*VOC_SPLITS, AUG_SPLIT, *SBD_SPLITS)

_VALID_VALUES = np.zeros(256, dtype=bool)
_VALID_VALUES[:NUM_CLASSES] = True
_VALID_VALUES[IGNORE_LABEL] = True


@dataclasses.dataclass(frozen=True)
class Pair:
    """One listed image and its mask (paths not yet checked to exist)."""

    image_id: str
    image_path: Path
    label_path: Path


@dataclasses.dataclass(frozen=True)
class Problem:
    """What is wrong with one pair: the file concerned and the problem, in words."""

    image_id: str
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem} (id {self.image_id!r})"


class InvalidPairError(ValueError):
    """A pair that cannot be converted; ``problem`` names the file and what is wrong."""

    def __init__(self, problem: Problem, more: int = 0):
        self.problem = problem
        suffix = f" (and {more} more problems; --skip_invalid skips them and writes a report)" if more else ""
        super().__init__(f"{problem}{suffix}")


@dataclasses.dataclass(frozen=True)
class LoadedPair:
    """A validated pair: the JPEG bytes as-is and the mask as class indices."""

    image_id: str
    image_bytes: bytes
    label: np.ndarray  # uint8 [H, W]
    height: int
    width: int


def voc_dir(voc_root: str | os.PathLike) -> Path:
    """``<voc_root>/VOC2012``, checked to exist.

    Raises:
        ValueError: naming ``voc_root`` when it holds no ``VOC2012/`` folder.
    """
    path = Path(voc_root) / "VOC2012"
    if not path.is_dir():
        hint = " (pass the folder above VOC2012/)" if Path(voc_root).name == "VOC2012" else ""
        raise ValueError(
            f"voc_root must be a VOCdevkit folder holding VOC2012/{hint}. "
            f"Received: voc_root={str(voc_root)!r}, where {path} does not exist"
        )
    return path


def sbd_dir(sbd_root: str | os.PathLike | None, split: str) -> Path:
    """SBD's ``dataset`` folder (``<sbd_root>/dataset``, or ``sbd_root`` itself if it holds ``cls/``).

    Raises:
        ValueError: when ``sbd_root`` is missing or holds neither ``dataset/`` nor ``cls/``.
    """
    if sbd_root is None:
        raise ValueError(f"split {split!r} reads SBD: pass sbd_root (--sbd_root). Received: sbd_root=None")
    root = Path(sbd_root)
    for candidate in (root / "dataset", root):
        if (candidate / "cls").is_dir():
            return candidate
    raise ValueError(f"sbd_root must hold SBD's dataset/cls/ folder. Received: sbd_root={str(sbd_root)!r}")


def find_list(split: str, voc_root: str | os.PathLike, sbd_root=None, lists_dir=None) -> Path:
    """The id list file of ``split``.

    Raises:
        ValueError: unknown split, or no list file found (naming the places searched).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")
    if split in SBD_SPLITS:
        candidates = [sbd_dir(sbd_root, split) / SBD_SPLITS[split]]
    else:
        candidates = [voc_dir(voc_root) / "ImageSets" / "Segmentation" / f"{split}.txt"]
    if lists_dir is not None:
        candidates.insert(0, Path(lists_dir) / (SBD_SPLITS.get(split, f"{split}.txt")))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"no id list for split {split!r}: none of {[str(c) for c in candidates]} exists")


def read_id_list(path: Path) -> list[tuple[str, int]]:
    """The ids of a list file with their line numbers (blank lines ignored; VOC lists may carry
    a second column, e.g. ``2007_000032 1``, of which only the first is kept)."""
    entries = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if fields:
            entries.append((fields[0], line_no))
    return entries


# --- Pairs of a split -------------------------------------------------------------------------


def _label_path(split: str, image_id: str, voc: Path | None, sbd: Path | None) -> Path:
    """Where the mask of ``image_id`` lives for ``split`` (see the module docstring)."""
    if split in SBD_SPLITS:
        return sbd / "cls" / f"{image_id}.mat"
    if split == AUG_SPLIT:
        aug = voc / "SegmentationClassAug"
        if aug.is_dir():
            return aug / f"{image_id}.png"
        voc_mask = voc / "SegmentationClass" / f"{image_id}.png"
        if voc_mask.is_file() or sbd is None:
            return voc_mask
        return sbd / "cls" / f"{image_id}.mat"
    return voc / "SegmentationClass" / f"{image_id}.png"


def resolve_pairs(
    split: str,
    voc_root: str | os.PathLike,
    *,
    sbd_root: str | os.PathLike | None = None,
    lists_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
) -> tuple[Path, list[Pair], list[Problem]]:
    """Reads the list of ``split`` and pairs each id with its files.

    Args:
        split: one of ``SPLITS``.
        voc_root: the VOCdevkit folder (holding ``VOC2012/``).
        sbd_root: SBD's root (holding ``dataset/``), for the SBD splits and ``train_aug``.
        lists_dir: a folder searched first for ``<split>.txt``.
        max_images: keep only the first ``max_images`` ids of the list.

    Returns:
        ``(list_path, pairs, problems)``: the pairs whose files exist, in list order, and a
        problem for each duplicate id or missing file (those ids are not in ``pairs``).
    """
    list_path = find_list(split, voc_root, sbd_root, lists_dir)
    voc = None if split in SBD_SPLITS else voc_dir(voc_root)
    sbd = sbd_dir(sbd_root, split) if (split in SBD_SPLITS or sbd_root is not None) else None
    images = (sbd / "img") if split in SBD_SPLITS else (voc / "JPEGImages")
    entries = read_id_list(list_path)
    if max_images is not None:
        entries = entries[:max_images]
    pairs, problems, seen = [], [], {}
    for image_id, line_no in entries:
        if image_id in seen:
            problems.append(
                Problem(image_id, str(list_path), f"duplicate id {image_id!r} on lines {seen[image_id]} and {line_no}")
            )
            continue
        seen[image_id] = line_no
        pair = Pair(image_id, images / f"{image_id}.jpg", _label_path(split, image_id, voc, sbd))
        has_image, has_label = pair.image_path.is_file(), pair.label_path.is_file()
        if not has_image and not has_label:
            problems.append(
                Problem(
                    image_id,
                    str(list_path),
                    f"id {image_id!r} (line {line_no}) is listed but absent on disk: "
                    f"neither {pair.image_path} nor {pair.label_path} exists",
                )
            )
        elif not has_image:
            problems.append(Problem(image_id, str(pair.image_path), "image file is missing"))
        elif not has_label:
            problems.append(Problem(image_id, str(pair.label_path), "mask file is missing"))
        else:
            pairs.append(pair)
    return list_path, pairs, problems


# --- Reading and validating one pair ----------------------------------------------------------


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Reads a mask as class indices, never through colours.

    Args:
        path: a palette (``P``) or grayscale (``L``) PNG, or an SBD ``.mat`` file
            (``GTcls.Segmentation``).

    Returns:
        uint8 ``[H, W]`` class indices (values not yet validated).

    Raises:
        InvalidPairError: unreadable file, a PNG of another mode, or a ``.mat`` without
            ``GTcls.Segmentation``.
    """
    path = Path(path)
    image_id = path.stem
    if path.suffix == ".mat":
        try:
            contents = scipy.io.loadmat(str(path))
        except Exception as error:  # scipy raises several types for corrupt files
            raise InvalidPairError(Problem(image_id, str(path), f"unreadable .mat file ({error})"))
        try:
            segmentation = contents["GTcls"]["Segmentation"][0, 0]
        except (KeyError, ValueError, IndexError, TypeError):
            raise InvalidPairError(Problem(image_id, str(path), "no GTcls.Segmentation in the .mat file (SBD's cls/ layout)"))
        segmentation = np.asarray(segmentation)
        if segmentation.ndim != 2 or segmentation.size == 0:
            raise InvalidPairError(Problem(image_id, str(path), f"GTcls.Segmentation has shape {segmentation.shape}, expected [H, W]"))
        if segmentation.min() < 0 or segmentation.max() > 255:
            raise InvalidPairError(
                Problem(image_id, str(path), f"mask values outside {{0..{NUM_CLASSES - 1}, {IGNORE_LABEL}}}: range {segmentation.min()}..{segmentation.max()}")
            )
        return segmentation.astype(np.uint8)
    try:
        with Image.open(path) as png:
            if png.format != "PNG":
                raise InvalidPairError(Problem(image_id, str(path), f"mask is not a PNG file (format {png.format})"))
            if png.mode not in ("P", "L"):
                raise InvalidPairError(
                    Problem(image_id, str(path), f"mask is a mode-{png.mode} PNG; expected a palette (P) or grayscale (L) PNG of class indices")
                )
            return np.array(png, dtype=np.uint8)
    except InvalidPairError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise InvalidPairError(Problem(image_id, str(path), f"undecodable PNG mask ({error})"))


def load_pair(pair: Pair) -> LoadedPair:
    """Reads and validates one pair.

    Checks: the image is a decodable JPEG (decoded with ``tf.io.decode_jpeg``, as the pipeline
    does), the mask decodes to class indices, both have the same size, and every mask value is
    in ``{0..20, 255}``.

    Args:
        pair: the files of one id.

    Returns:
        The JPEG bytes as-is, the uint8 ``[H, W]`` label and the size.

    Raises:
        InvalidPairError: naming the file and the problem.
    """
    image_path = str(pair.image_path)
    try:
        image_bytes = pair.image_path.read_bytes()
    except OSError as error:
        raise InvalidPairError(Problem(pair.image_id, image_path, f"unreadable image file ({error})"))
    if not image_bytes.startswith(JPEG_SIGNATURE):
        raise InvalidPairError(Problem(pair.image_id, image_path, "image is not a JPEG file"))
    try:
        shape = tf.io.decode_jpeg(image_bytes, channels=3).shape
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
        raise InvalidPairError(Problem(pair.image_id, image_path, f"undecodable JPEG ({op_error_reason(error.message)})"))
    height, width = int(shape[0]), int(shape[1])
    label = read_label(pair.label_path)
    if label.shape != (height, width):
        raise InvalidPairError(
            Problem(
                pair.image_id,
                str(pair.label_path),
                f"mask is {label.shape[0]}x{label.shape[1]} (HxW) but its image {image_path} is {height}x{width}",
            )
        )
    invalid = np.unique(label[~_VALID_VALUES[label]])
    if invalid.size:
        raise InvalidPairError(
            Problem(
                pair.image_id,
                str(pair.label_path),
                f"mask values outside {{0..{NUM_CLASSES - 1}, {IGNORE_LABEL}}}: {invalid.tolist()}",
            )
        )
    return LoadedPair(pair.image_id, image_bytes, label, height, width)
