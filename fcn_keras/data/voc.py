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
first, then in ``VOC2012/ImageSets/Segmentation`` (SBD's lists in ``<sbd_root>/dataset``, named
``train.txt`` / ``val.txt`` there; in ``lists_dir`` only ``sbd_train.txt`` / ``sbd_val.txt`` are
SBD's, a ``train.txt`` there being VOC's list).

A dataset of your own (``resolve_folder_pairs``): ``<images_dir>/<id>.jpg`` (or ``.jpeg``,
``.png``), ``<labels_dir>/<id>.png`` (palette or grayscale PNGs of class indices, 255 = void)
and ``<lists_dir>/<split>.txt`` for any split name; its classes are named in a list
(``read_class_names``). Colour-coded masks are read through a colour map
(``read_label_colours``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
import tensorflow as tf
from PIL import Image

from fcn_keras.checks import check_choice
from fcn_keras.console import op_error_reason
from fcn_keras.constants import (
    IGNORE_LABEL,
    JPEG_SIGNATURE,
    NUM_CLASSES,
    PNG_SIGNATURE,
    VOC_AUG_MASKS_DIR,
    VOC_DIR,
    VOC_IMAGES_DIR,
    VOC_LISTS_DIR,
    VOC_MASKS_DIR,
    VOC_PALETTE,
    png_bit_depth,
)

# --- Layouts ----------------------------------------------------------------------------------

VOC_SPLITS: tuple[str, ...] = ("train", "val", "trainval", "seg11valid")
AUG_SPLIT: str = "train_aug"
#: SBD's splits and the names of their lists in ``<sbd_root>/dataset`` (in ``lists_dir``: ``<split>.txt``).
SBD_SPLITS: dict[str, str] = {"sbd_train": "train.txt", "sbd_val": "val.txt"}
SPLITS: tuple[str, ...] = (*VOC_SPLITS, AUG_SPLIT, *SBD_SPLITS)

#: The suffixes of a folder dataset's images (in any letter case).
FOLDER_IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")

#: The second column of VOC's per-class lists (``2008_000123 -1``), read as no mask path.
_VOC_FLAG = re.compile(r"-?[0-9]+")

#: A folder dataset's split names: they name shard files and globs.
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
    """A validated pair: the image file's bytes as-is and the mask as class indices."""

    image_id: str
    image_bytes: bytes
    label: np.ndarray  # uint8 [H, W]
    height: int
    width: int
    image_format: str = "jpeg"  # or "png"


def is_voc_root(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a VOCdevkit folder: one holding ``VOC2012/``."""
    return (Path(path) / VOC_DIR).is_dir()


def voc_lists_dir(voc_root: str | os.PathLike) -> Path:
    """``<voc_root>/VOC2012/ImageSets/Segmentation``, the folder of VOC's split lists (not checked)."""
    return Path(voc_root) / VOC_DIR / VOC_LISTS_DIR


def voc_dir(voc_root: str | os.PathLike) -> Path:
    """``<voc_root>/VOC2012``, checked to exist.

    Raises:
        ValueError: naming ``voc_root`` when it holds no ``VOC2012/`` folder.
    """
    path = Path(voc_root) / VOC_DIR
    if not path.is_dir():
        hint = " (pass the folder above VOC2012/)" if Path(voc_root).name == VOC_DIR else ""
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


def find_list(
    split: str,
    voc_root: str | os.PathLike,
    sbd_root: str | os.PathLike | None = None,
    lists_dir: str | os.PathLike | None = None,
) -> Path:
    """The id list file of ``split``.

    Args:
        split: one of ``SPLITS`` (VOC's ``train``/``val``/..., SBD's ``sbd_train``/...).
        voc_root: the VOCdevkit folder (VOC splits: its ``ImageSets/Segmentation/<split>.txt``).
        sbd_root: SBD's ``benchmark_RELEASE`` folder, for the SBD splits.
        lists_dir: a folder of list files searched first, for ``<split>.txt`` (``sbd_train.txt``
            for SBD's train list: a ``train.txt`` there is VOC's, as in DeepLab's list folders).

    Returns:
        The first of those files that exists.

    Raises:
        ValueError: unknown split, or no list file found (naming the places searched).
    """
    check_choice("split", split, SPLITS)
    if split in SBD_SPLITS:
        candidates = [sbd_dir(sbd_root, split) / SBD_SPLITS[split]]
    else:
        candidates = [voc_dir(voc_root) / VOC_LISTS_DIR / f"{split}.txt"]
    if lists_dir is not None:
        candidates.insert(0, Path(lists_dir) / f"{split}.txt")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(f"no id list for split {split!r}: none of {[str(c) for c in candidates]} exists")


def _list_lines(path: Path) -> list[tuple[list[str], int, str]]:
    """The non-blank lines of a list file as ``(fields, line number, text)``: split at tabs when
    the line holds one (paths with spaces), else at whitespace."""
    lines = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = [field for field in (line.split("\t") if "\t" in line else line.split()) if field.strip()]
        if fields:
            lines.append(([field.strip() for field in fields], line_no, line.strip()))
    if not lines:  # A split of no images would train on nothing, or validate on nothing.
        raise ValueError(f"list file {path} names no image: it is empty")
    return lines


def read_id_list(path: Path) -> list[tuple[str, int]]:
    """The ids of a list file with their line numbers (blank lines ignored; VOC lists may carry
    a second column, e.g. ``2007_000032 1``, of which only the first is kept)."""
    return [(fields[0], line_no) for fields, line_no, _ in _list_lines(path)]


# --- Pairs of a split -------------------------------------------------------------------------


def _label_path(split: str, image_id: str, voc: Path | None, sbd: Path | None) -> Path:
    """Where the mask of ``image_id`` lives for ``split`` (see the module docstring)."""
    if split in SBD_SPLITS:
        return sbd / "cls" / f"{image_id}.mat"
    if split == AUG_SPLIT:
        aug = voc / VOC_AUG_MASKS_DIR
        if aug.is_dir():
            return aug / f"{image_id}.png"
        voc_mask = voc / VOC_MASKS_DIR / f"{image_id}.png"
        if voc_mask.is_file() or sbd is None:
            return voc_mask
        return sbd / "cls" / f"{image_id}.mat"
    return voc / VOC_MASKS_DIR / f"{image_id}.png"


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
    images = (sbd / "img") if split in SBD_SPLITS else (voc / VOC_IMAGES_DIR)
    entries = [(image_id, line_no, None) for image_id, line_no in read_id_list(list_path)[:max_images]]
    pairs, problems = _pair_list(
        list_path, entries, lambda image_id: (images / f"{image_id}.jpg", _label_path(split, image_id, voc, sbd))
    )
    return list_path, pairs, problems


def check_split_name(split: str) -> None:
    """A folder dataset's split name must be usable in file names and globs.

    Raises:
        ValueError: naming the split.
    """
    if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
        raise ValueError(
            "split names must be letters, digits, '_', '.' or '-' (they name the shard files and the list "
            f"<split>.txt), starting with a letter or digit. Received: split={split!r}"
        )


def resolve_folder_pairs(
    split: str,
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    lists_dir: str | os.PathLike,
    *,
    max_images: int | None = None,
) -> tuple[Path, list[Pair], list[Problem]]:
    """Reads ``<lists_dir>/<split>.txt`` of a dataset of your own and pairs each line with its files.

    A line is an id or a pair of paths. An id's image is ``<images_dir>/<id>`` with one of
    ``FOLDER_IMAGE_SUFFIXES``, its mask ``<labels_dir>/<id>.png``, suffixes in any letter case
    (``.JPG``, ``.Png``); two images (or masks) for one id is a problem: which one is meant? A
    pair ``<image> <mask>`` (tab-separated when a path holds spaces) names the files by their
    paths under ``images_dir`` and ``labels_dir`` (absolute paths as they are), for layouts of
    nested folders and suffixes (Cityscapes' ``aachen/aachen_000000_000019_leftImg8bit.png`` and
    ``aachen/aachen_000000_000019_gtFine_labelIds.png``); its id is the image's file name
    without its suffix.

    Args:
        split: any name accepted by ``check_split_name``, e.g. ``train``.
        images_dir: the folder of images.
        labels_dir: the folder of masks.
        lists_dir: the folder holding ``<split>.txt``: one id (a file name without its suffix) or
            one ``<image> <mask>`` pair per line.
        max_images: keep only the first ``max_images`` lines of the list.

    Returns:
        ``(list_path, pairs, problems)`` as ``resolve_pairs``.

    Raises:
        ValueError: a bad split name, a missing folder or list, or a line of more than two
            fields (named).
    """
    check_split_name(split)
    for name, folder in (("images_dir", images_dir), ("labels_dir", labels_dir), ("lists_dir", lists_dir)):
        if folder is None or not Path(folder).is_dir():
            raise ValueError(f"{name} must be a folder. Received: {name}={None if folder is None else str(folder)!r}")
    list_path = Path(lists_dir) / f"{split}.txt"
    if not list_path.is_file():
        found = sorted(p.stem for p in Path(lists_dir).glob("*.txt"))
        raise ValueError(f"no id list for split {split!r}: {list_path} does not exist (lists there: {found or 'none'})")
    entries = _folder_list_entries(list_path, Path(images_dir), Path(labels_dir))[:max_images]
    by_id = any(paths is None for _, _, paths in entries)
    images = _files_by_stem(images_dir, FOLDER_IMAGE_SUFFIXES) if by_id else {}
    masks = _files_by_stem(labels_dir, (".png",)) if by_id else {}
    ambiguous: list[Problem] = []

    def files(image_id: str) -> tuple[Path, Path]:
        found = {"image": images.get(image_id, []), "mask": masks.get(image_id, [])}
        for kind, paths in found.items():
            if len(paths) > 1:
                ambiguous.append(Problem(image_id, str(paths[0]), f"id {image_id!r} has several {kind}s: "
                                         f"{', '.join(p.name for p in paths)} (keep one)"))
        image = found["image"][0] if found["image"] else Path(images_dir) / f"{image_id}.jpg"
        return image, found["mask"][0] if found["mask"] else Path(labels_dir) / f"{image_id}.png"

    pairs, problems = _pair_list(list_path, entries, files)
    ambiguous_ids = {problem.image_id for problem in ambiguous}
    return list_path, [p for p in pairs if p.image_id not in ambiguous_ids], ambiguous + problems


def _files_by_stem(folder: str | os.PathLike, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
    """The files of ``folder`` whose suffix is one of ``suffixes`` in any letter case
    (``x.JPG``, ``x.Png``), by name without the suffix, each list sorted."""
    found: dict[str, list[Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in suffixes and entry.is_file():
                found.setdefault(stem, []).append(Path(folder) / entry.name)
    return {stem: sorted(paths) for stem, paths in found.items()}


def _folder_list_entries(list_path: Path, images_dir: Path, labels_dir: Path) -> list[tuple[str, int, tuple[Path, Path] | None]]:
    """The lines of a folder dataset's list as ``(id, line number, (image, mask) or None)``: an
    id alone (``None``: found by ``resolve_folder_pairs``; also an id with VOC's integer second
    column, ``2008_000123 -1``), or the paths of a pair's line."""
    entries = []
    for fields, line_no, text in _list_lines(list_path):
        if len(fields) == 1 or (len(fields) == 2 and _VOC_FLAG.fullmatch(fields[1])):  # VOC's `id 1` too.
            entries.append((fields[0], line_no, None))
        elif len(fields) == 2:
            image, mask = images_dir / fields[0], labels_dir / fields[1]
            entries.append((Path(fields[0]).stem, line_no, (image, mask)))
        else:
            raise ValueError(f"{list_path}, line {line_no} ({text!r}): expected an id, or an image path "
                             "and a mask path (under images_dir and labels_dir; tab-separated when a path holds spaces)")
    return entries


def _pair_list(
    list_path: Path, entries: list[tuple[str, int, tuple[Path, Path] | None]], files_of
) -> tuple[list[Pair], list[Problem]]:
    """The pairs of the entries ``(id, line number, (image, mask) or None)`` of ``list_path``
    whose files exist, in list order (``files_of(id) -> (image, mask)`` finds the files of an
    entry without paths), and a problem for each duplicate id or missing file."""
    pairs, problems, seen = [], [], {}
    for image_id, line_no, paths in entries:
        if image_id in seen:
            hint = " (a pair's id is its image's file name without the suffix)" if paths else ""
            problems.append(
                Problem(image_id, str(list_path), f"duplicate id {image_id!r} on lines {seen[image_id]} and {line_no}{hint}")
            )
            continue
        seen[image_id] = line_no
        pair = Pair(image_id, *(paths or files_of(image_id)))
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
    return pairs, problems


def abbreviate(names: Sequence[str], shown: int = 5) -> str:
    """``names`` joined with commas for a message, the first ``shown`` and ``...`` if there are more."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def read_class_names(value: str | os.PathLike | Sequence[str]) -> tuple[str, ...]:
    """The class names of a dataset, index order (the first is class 0).

    Args:
        value: a text file with one name per line (blank lines ignored), a comma-separated
            string, or a sequence of names.

    Returns:
        At least 2 and at most 255 distinct, non-empty names (255 is the void label).

    Raises:
        ValueError: naming what is wrong (too few or many names, duplicates, an unreadable file).
    """
    if isinstance(value, os.PathLike) or (isinstance(value, str) and ("," not in value or Path(value).is_file())):
        source = f"class_names file {str(value)!r}"
        if not Path(value).is_file():
            raise ValueError(f"{source} does not exist (class_names is a file with one name per line, or a "
                             "comma-separated list of names)")
        try:  # utf-8-sig: a byte-order mark is not part of the first name.
            names = [line.strip() for line in Path(value).read_text(encoding="utf-8-sig").splitlines()]
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read {source}: {error}") from error
        names = [name for name in names if name]
    else:
        source = f"class_names={value!r}"
        names = [name.strip() for name in (value.split(",") if isinstance(value, str) else value)]
        if not all(names):
            raise ValueError(f"class names must not be empty. Received: {source}")
    if not 2 <= len(names) <= IGNORE_LABEL:
        raise ValueError(f"a dataset needs 2 to {IGNORE_LABEL} class names (a file with one per line, or a comma-separated "
                         f"list; {IGNORE_LABEL} is the void label). Received: {len(names)} in {source}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"class names must be distinct; repeated: {repeated}. Received: {source}")
    return tuple(names)


# --- Colour-coded masks -----------------------------------------------------------------------

#: ``read_label_colours``'s name for the VOC colour map: class ``i`` is ``VOC_PALETTE[i]``,
#: void (255) is ``VOC_PALETTE[255]`` = (224, 224, 192), as in VOC's own colour PNGs.
VOC_COLOURS: str = "voc"

#: Colours shown in an "unknown colours" problem.
_SHOWN_COLOURS = 5


@dataclasses.dataclass(frozen=True, eq=False)
class LabelColours:
    """Which label each colour of a colour-coded mask stands for.

    Attributes:
        keys: uint32 ``[K]``, sorted: each colour as ``R << 16 | G << 8 | B``.
        labels: uint8 ``[K]``: the label of ``keys[k]`` (a class index, or 255 for void).
        palette: uint8 ``[256, 3]``: the colour to paint each label value in (its first colour
            in the map; ``VOC_PALETTE``'s for values the map does not name), for
            ``fcn_keras.predict``'s label PNGs and overlays.
        source: where the map came from, for messages (``"voc"`` or the file's path).
    """

    keys: np.ndarray
    labels: np.ndarray
    palette: np.ndarray
    source: str

    def to_json(self) -> list[list[int]]:
        """``[[R, G, B, label], ...]`` in colour order (recorded in the manifest)."""
        return [[*_rgb(int(key)), int(label)] for key, label in zip(self.keys, self.labels)]

    def labels_of(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Maps colours to labels.

        Args:
            rgb: uint8 ``[H, W, 3]``.

        Returns:
            ``(labels, unknown, counts)``: uint8 ``[H, W]`` labels (0 where the colour is not in
            the map), and the unknown colours (uint32 keys) with their pixel counts, most frequent
            first (empty when every colour is known).
        """
        keys = rgb[..., 0].astype(np.uint32) << 16 | rgb[..., 1].astype(np.uint32) << 8 | rgb[..., 2]
        index = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        known = self.keys[index] == keys
        unknown, counts = np.unique(keys[~known], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return np.where(known, self.labels[index], 0).astype(np.uint8), unknown[order], counts[order]


def _rgb(key: int) -> tuple[int, int, int]:
    """A ``LabelColours`` key as ``(R, G, B)``."""
    return key >> 16, key >> 8 & 255, key & 255


def read_label_colours(value: str | os.PathLike, class_names: Sequence[str] | None) -> LabelColours:
    """The colour map of a dataset whose masks are colour-coded (RGB) instead of class indices.

    Args:
        value: ``"voc"`` (``VOC_COLOURS``: the VOC colours of classes ``0..C-1`` and void), or a
            text file with one colour per line, ``<label> R G B`` or ``<label>,R,G,B``, or a
            gray level ``<label> V`` (the colour ``(V, V, V)``: a grayscale mask's value ``V``): the
            label is a class name, a class index ``0..C-1``, or ``void`` / 255. Blank lines,
            ``#`` comments and a ``name,r,g,b`` header line (CamVid's ``class_dict.csv``) are
            skipped. Several colours may have one label (the first listed paints it); a colour
            may not have two.
        class_names: the dataset's ``C`` class names, index order; ``None`` when unknown (then
            labels are indices 0..254 or void, and ``"voc"`` maps all 256 values).

    Returns:
        The ``LabelColours``.

    Raises:
        ValueError: naming the file, the line and what is wrong.
    """
    if str(value) == VOC_COLOURS:
        labels = np.array([*range(IGNORE_LABEL if class_names is None else len(class_names)), IGNORE_LABEL], np.uint8)
        colours = [(int(r), int(g), int(b), int(label)) for (r, g, b), label in zip(VOC_PALETTE[labels], labels)]
        source = VOC_COLOURS
    else:
        source = f"label_colours file {str(value)!r}"
        try:  # utf-8-sig: a byte-order mark is not part of the first label.
            lines = Path(value).read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read {source} (label_colours is {VOC_COLOURS!r} or a file of "
                             f"'<label> R G B' lines): {error}") from error
        colours, seen_data = [], False
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            separator = "," if "," in text else None
            tokens = [token.strip() for token in text.split(separator)]
            where = f"{source}, line {number} ({line.strip()!r})"
            if not seen_data and [token.lower() for token in tokens[-3:]] == ["r", "g", "b"]:
                seen_data = True  # A header line.
                continue
            seen_data = True
            # The values are the trailing tokens without letters (a class name may hold digits:
            # 'lane 2 7 7 7'); three are R G B, one is a gray level V, the colour (V, V, V).
            values = 0
            while values < len(tokens) - 1 and not any(char.isalpha() for char in tokens[-1 - values]):
                values += 1
            fields = [field.strip() for field in text.rsplit(separator, 3 if values >= 3 else 1)]
            if values in (0, 2) or not fields[0]:
                raise ValueError(f"{where}: expected '<label> R G B' or '<label> V' (a gray level, the colour "
                                 "(V, V, V)), or the same with commas")
            if not all(re.fullmatch(r"[0-9]{1,3}", field) and int(field) <= 255 for field in fields[1:]):
                raise ValueError(f"{where}: {'R, G and B' if len(fields) == 4 else 'V'} must be integers 0..255")
            rgb = [int(field) for field in fields[1:]] * (3 if len(fields) == 2 else 1)
            colours.append((*rgb, _label_index(fields[0], class_names, where)))
        if not colours:
            raise ValueError(f"{source} lists no colour (one '<label> R G B' line per colour)")
    by_key: dict[int, int] = {}
    palette = VOC_PALETTE.copy()
    for r, g, b, label in reversed(colours):  # The first colour of a label paints it.
        palette[label] = (r, g, b)
    for r, g, b, label in colours:
        key = r << 16 | g << 8 | b
        if by_key.setdefault(key, label) != label:
            raise ValueError(f"{source}: colour ({r}, {g}, {b}) is given two labels, {by_key[key]} and {label}")
    keys = np.array(sorted(by_key), np.uint32)
    palette.setflags(write=False)
    return LabelColours(keys, np.array([by_key[key] for key in keys.tolist()], np.uint8), palette, source)


def _label_index(label: str, class_names: Sequence[str] | None, where: str) -> int:
    """The label a colour line names: a class name, an index ``0..C-1``, or void (255)."""
    if class_names is not None and label in class_names:
        return list(class_names).index(label)
    if label.lower() == "void" or label == str(IGNORE_LABEL):
        return IGNORE_LABEL
    count = IGNORE_LABEL if class_names is None else len(class_names)
    if re.fullmatch(r"[0-9]{1,3}", label) and int(label) < count:
        return int(label)
    classes = ("the class names are unknown" if class_names is None
               else f"{len(class_names)}: {abbreviate(class_names)}")
    raise ValueError(f"{where}: {label!r} is not a class of the dataset ({classes}), an index 0..{count - 1}, "
                     f"or void / {IGNORE_LABEL}")


# --- Reading and validating one pair ----------------------------------------------------------


def read_label(path: str | os.PathLike, colours: LabelColours | None = None) -> np.ndarray:
    """Reads a mask as class indices: from its values, or from its colours with ``colours``.

    Args:
        path: a palette (``P``) or grayscale (``L``) PNG, or an SBD ``.mat`` file
            (``GTcls.Segmentation``, whole numbers); with ``colours``, an 8-bit PNG whose colours
            stand for the labels (RGB, RGBA with alpha ignored, palette or grayscale: read through
            its colours; a ``.mat`` is read as indices all the same).
        colours: the colour map of colour-coded masks (``read_label_colours``), or ``None``.

    Returns:
        uint8 ``[H, W]`` class indices (values not yet validated).

    Raises:
        InvalidPairError: unreadable file, a PNG of another mode, a ``.mat`` without
            ``GTcls.Segmentation``, or (``colours``) a colour not in the map.
    """
    path = Path(path)
    image_id = path.stem
    if path.suffix == ".mat":  # SBD's masks hold class indices, whatever colours the PNG masks use.
        return _read_mat_label(path)
    try:
        with Image.open(path) as png:
            if png.format != "PNG":
                raise InvalidPairError(Problem(image_id, str(path), f"mask is not a PNG file (format {png.format})"))
            if colours is None:
                if png.mode not in ("P", "L"):
                    raise InvalidPairError(Problem(
                        image_id, str(path), f"mask is a mode-{png.mode} PNG; expected a palette (P) or grayscale (L) "
                                             "PNG of class indices (colour-coded masks: pass label_colours, --label_colours on the command line, "
                                             "e.g. label_colours='voc' for VOC's colours)"))
                return np.array(png, dtype=np.uint8)
            with open(path, "rb") as file:
                depth = png_bit_depth(file.read(32))
            if png.mode not in ("RGB", "RGBA", "P", "PA", "L", "LA") or (depth is not None and depth > 8):
                raise InvalidPairError(Problem(image_id, str(path), f"colour mask is a mode-{png.mode}, {depth}-bit PNG; "
                                                                    "expected 8 bits per channel"))
            rgb = np.array(png.convert("RGB"), dtype=np.uint8)
    except InvalidPairError:
        raise
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise InvalidPairError(Problem(image_id, str(path), f"undecodable PNG mask ({error})"))
    labels, unknown, counts = colours.labels_of(rgb)
    if unknown.size:
        shown = ", ".join(f"{_rgb(int(key))} x {count}" for key, count in zip(unknown[:_SHOWN_COLOURS], counts))
        more = f" and {unknown.size - _SHOWN_COLOURS} more" if unknown.size > _SHOWN_COLOURS else ""
        raise InvalidPairError(Problem(
            image_id, str(path),
            f"{int(counts.sum())} pixels have {unknown.size} colour(s) not in {colours.source}: {shown}{more} (exact "
            "colours only: was the mask resized, blurred or saved as JPEG? Map stray colours to void with a "
            "'void R G B' line)"))
    return labels


def _read_mat_label(path: Path) -> np.ndarray:
    """An SBD ``.mat`` mask's ``GTcls.Segmentation`` as uint8 ``[H, W]``."""
    image_id = path.stem
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
    if not np.issubdtype(segmentation.dtype, np.integer) and not np.issubdtype(segmentation.dtype, np.bool_):
        fractional = ~np.isfinite(segmentation) | (segmentation != np.round(segmentation))
        if fractional.any():  # astype would truncate them (NaN to background) without a word.
            raise InvalidPairError(Problem(image_id, str(path), f"{int(fractional.sum())} mask values are not whole "
                                                                f"numbers (a {segmentation.dtype} mask; e.g. "
                                                                f"{segmentation[fractional][0]})"))
    if segmentation.min() < 0 or segmentation.max() > 255:
        raise InvalidPairError(
            Problem(image_id, str(path), f"mask values outside 0..255: range {segmentation.min()}..{segmentation.max()}")
        )
    return segmentation.astype(np.uint8)


def load_pair(pair: Pair, num_classes: int = NUM_CLASSES, colours: LabelColours | None = None) -> LoadedPair:
    """Reads and validates one pair.

    Checks: the image is a decodable JPEG or 8-bit PNG (decoded with ``tf.io.decode_jpeg`` /
    ``tf.io.decode_png``, as the pipeline does), the mask decodes to class indices, both have
    the same size, and every mask value is a class (``0..num_classes - 1``) or 255 (void).

    Args:
        pair: the files of one id.
        num_classes: the dataset's number of classes (21 for VOC).
        colours: the colour map of colour-coded masks (``read_label_colours``), or ``None``.

    Returns:
        The image bytes as-is with their format, the uint8 ``[H, W]`` label and the size.

    Raises:
        InvalidPairError: naming the file and the problem.
    """
    image_path = str(pair.image_path)
    try:
        image_bytes = pair.image_path.read_bytes()
    except OSError as error:
        raise InvalidPairError(Problem(pair.image_id, image_path, f"unreadable image file ({error})"))
    if image_bytes.startswith(JPEG_SIGNATURE):
        image_format, decode = "jpeg", tf.io.decode_jpeg
    elif image_bytes.startswith(PNG_SIGNATURE):
        image_format, decode = "png", tf.io.decode_png
        depth = png_bit_depth(image_bytes)
        if depth is not None and depth > 8:
            raise InvalidPairError(Problem(pair.image_id, image_path, f"image is a {depth}-bit PNG; expected 8 bits per channel"))
    else:
        raise InvalidPairError(Problem(pair.image_id, image_path, "image is neither a JPEG nor a PNG file"))
    try:
        shape = decode(image_bytes, channels=3).shape
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
        raise InvalidPairError(Problem(pair.image_id, image_path, f"undecodable {image_format.upper()} ({op_error_reason(error.message)})"))
    height, width = int(shape[0]), int(shape[1])
    try:
        label = read_label(pair.label_path, colours)
    except InvalidPairError as error:  # Named by the pair's id, not the mask's file name.
        raise InvalidPairError(dataclasses.replace(error.problem, image_id=pair.image_id)) from None
    if label.shape != (height, width):
        raise InvalidPairError(
            Problem(
                pair.image_id,
                str(pair.label_path),
                f"mask is {label.shape[0]}x{label.shape[1]} (HxW) but its image {image_path} is {height}x{width}",
            )
        )
    invalid = np.unique(label[(label >= num_classes) & (label != IGNORE_LABEL)])
    if invalid.size:
        raise InvalidPairError(
            Problem(
                pair.image_id,
                str(pair.label_path),
                f"mask values outside {{0..{num_classes - 1}, {IGNORE_LABEL}}}: {invalid.tolist()}",
            )
        )
    return LoadedPair(pair.image_id, image_bytes, label, height, width, image_format)
