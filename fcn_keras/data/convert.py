r"""VOC 2012 / SBD (or a dataset of your own) → sharded TFRecords plus a manifest, validated,
parallel, resumable.

    python -m fcn_keras.data.convert --voc_root=VOCdevkit --output_dir=data/voc
        [--sbd_root=benchmark_RELEASE] [--splits=train,val] [--skip_invalid] [--num_workers=8]
    python -m fcn_keras.data.convert --download_dir=downloads --output_dir=data/voc [--splits=...]
    python -m fcn_keras.data.convert --images_dir=mine/images --labels_dir=mine/masks \
        --lists_dir=mine/lists --class_names=mine/classes.txt --output_dir=data/mine [--splits=...]
        [--label_colours=voc|mine/colours.csv]

A dataset of your own lists ids (``<images_dir>/<id>.jpg``, ``<labels_dir>/<id>.png``) or, for
nested folders and suffixes, ``<image> <mask>`` paths under ``images_dir`` and ``labels_dir``.

Writes ``<output_dir>/<split>-00000-of-0000N.tfrecord`` (schema in ``fcn_keras.data.records``)
and ``<output_dir>/manifest.json``. Each shard goes to a temporary name and is renamed when
complete, and the manifest is rewritten after every shard, so a killed run leaves only complete
shards (and a hidden ``.tmp-*`` file, which the next conversion of its split removes); the same
command then resumes, keeping every shard whose inputs (ids, file sizes and times) and sha256
still match the manifest. The manifest also records the class names, each shard's size in bytes
and, per shard and split, the pixel count of each class and of void.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import fnmatch
import functools
import hashlib
import json
import logging
import math
import os
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from fcn_keras import __version__
from fcn_keras.checks import check_folder, check_int
from fcn_keras.constants import IGNORE_LABEL, VOC_CLASSES
from fcn_keras.console import progress_verbosity, run_cli, usage_error
from fcn_keras.data import download, records, voc
from fcn_keras.files import atomic_path, file_digests, temporary_target, write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SKIPPED_REPORT_NAME = "skipped.json"
DEFAULT_SHARD_SIZE = 1000


# --- Small helpers ----------------------------------------------------------------------------


#: Shards per split at most: their numbers are written on five digits.
MAX_SHARDS = 99999
_FIVE_DIGITS = "[0-9]" * 5


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``<split>-<index>-of-<num_shards>.tfrecord``, both numbers on five digits."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def split_glob(output_dir: str | os.PathLike, split: str) -> str:
    """The file pattern matching every shard of ``split`` in ``output_dir``, and only those:
    digits only where the numbers are, so split ``train`` does not match ``train-hard``'s shards."""
    return str(Path(output_dir) / f"{split}-{_FIVE_DIGITS}-of-{_FIVE_DIGITS}.tfrecord")


def _fingerprint(pairs: list[voc.Pair]) -> str:
    """A hash of what a shard is made from: ids, paths, file sizes and modification times."""
    digest = hashlib.sha256(f"schema={records.SCHEMA_VERSION}".encode())
    for pair in pairs:
        for path in (pair.image_path, pair.label_path):
            stat = path.stat()
            digest.update(f"{pair.image_id}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _encode_pair(pair: voc.Pair, num_classes: int, colours: voc.LabelColours | None) -> tuple[bytes, np.ndarray] | voc.Problem:
    """Loads, validates and serializes one pair; a ``Problem`` when it is invalid.

    Returns:
        ``(serialized example, int64 [256] pixel count of each label value)``.
    """
    try:
        loaded = voc.load_pair(pair, num_classes, colours)
    except voc.InvalidPairError as error:
        return error.problem
    label_png = records.encode_label_png(loaded.label)
    counts = np.bincount(loaded.label.ravel(), minlength=256)
    return records.encode_example(
        loaded.image_id, loaded.image_bytes, label_png, loaded.height, loaded.width, loaded.image_format
    ), counts


def _write_if_changed(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, unless the file already holds exactly that."""
    if not (path.is_file() and path.read_text() == text):
        write_text_atomic(path, text)


def _save_manifest(output_dir: Path, manifest: dict) -> None:
    """Writes ``manifest`` to ``output_dir/manifest.json`` atomically (the folder is made if needed)."""
    write_text_atomic(output_dir / MANIFEST_NAME, json.dumps(manifest, indent=2))


def read_manifest(output_dir: str | os.PathLike) -> dict | None:
    """The manifest in ``output_dir``, or ``None`` when absent or unreadable."""
    path = Path(output_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("version") == records.SCHEMA_VERSION else None


def manifest_class_names(manifest: dict) -> tuple[str, ...]:
    """The class names a manifest records (index order); VOC's 21 for manifests written before
    class names were recorded, which were all VOC / SBD conversions."""
    names = manifest.get("class_names")
    return tuple(names) if names else VOC_CLASSES


def _problem_dict(split: str, problem: voc.Problem) -> dict:
    return {"split": split, "image_id": problem.image_id, "path": problem.path, "problem": problem.problem}


# --- Writing shards ---------------------------------------------------------------------------


def _shard_is_current(output_dir: Path, old: dict | None, name: str, fingerprint: str) -> bool:
    """Whether shard ``name`` exists and matches its manifest entry (inputs and sha256)."""
    path = output_dir / name
    return (
        old is not None
        and old.get("name") == name
        and old.get("fingerprint") == fingerprint
        and "class_image_pixels" in old  # Written before the pixel counts were recorded: count them now.
        and path.is_file()
        and file_digests(path, "sha256")[0] == old.get("sha256")
    )


def _remove_temporaries(output_dir: Path, split: str) -> None:
    """Removes the temporary shard files of ``split`` (``.tmp-<pid>-<random>-<shard name>``)
    that a killed conversion left in ``output_dir``, logging how many (a conversion that fails
    otherwise removes its own).

    One conversion at a time per output folder and split is assumed: every such file is stale,
    whichever process wrote it (a process still alive included). Other splits' are left alone.
    """
    pattern = Path(split_glob(output_dir, split)).name
    stale = sorted(path for path in output_dir.glob(".tmp-*")
                   if fnmatch.fnmatchcase(temporary_target(path.name) or "", pattern))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.warning("removed %d temporary file(s) of split %r left in %s by a stopped conversion: %s",
                       len(stale), split, output_dir, ", ".join(path.name for path in stale))


def _shard_entry_size(path: Path) -> dict:
    """``{"num_bytes": size}`` of a shard file: the data resolver checks it, so that a shard
    truncated by an incomplete copy is refused at once (its sha256 is too costly to check there)."""
    return {"num_bytes": path.stat().st_size}


def _write_shard(
    path: Path,
    pairs: list[voc.Pair],
    executor: concurrent.futures.Executor,
    progbar: keras.utils.Progbar | None,
    skip_invalid: bool,
    num_classes: int,
    colours: voc.LabelColours | None,
) -> tuple[int, list[voc.Problem], np.ndarray, np.ndarray]:
    """Writes the valid pairs of one shard to a temporary file, then renames it to ``path``.

    Returns:
        ``(num_examples, problems, counts, image_pixels)`` of the shard; ``counts``: int64
        ``[256]`` pixels of each label value; ``image_pixels``: int64 ``[num_classes]``, for each
        class the labelled pixels of the images holding it (Eigen & Fergus' denominator).

    Raises:
        InvalidPairError: the first invalid pair, unless ``skip_invalid``.
    """
    problems, count, counts, image_pixels = [], 0, np.zeros(256, np.int64), np.zeros(num_classes, np.int64)
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for result in executor.map(functools.partial(_encode_pair, num_classes=num_classes, colours=colours), pairs):
            if isinstance(result, voc.Problem):
                if not skip_invalid:
                    raise voc.InvalidPairError(result)
                problems.append(result)
            else:
                writer.write(result[0])
                counts += result[1]
                own = result[1][:num_classes]
                image_pixels += np.where(own > 0, own.sum(), 0)
                count += 1
            if progbar is not None:
                progbar.add(1)
    return count, problems, counts, image_pixels


def _convert_split(
    split: str,
    resolved: tuple[Path, list, list],
    output_dir: Path,
    manifest: dict,
    old_split: dict,
    options: dict,
    executor: concurrent.futures.Executor,
) -> dict:
    """Converts one split, shard by shard, updating and saving ``manifest`` after each.

    ``resolved`` is ``(list_path, pairs, problems)`` of the split (``voc.resolve_pairs``).
    """
    list_path, pairs, problems = resolved
    shard_size = options["shard_size"]
    num_shards = max(1, math.ceil(len(pairs) / shard_size))
    if num_shards > MAX_SHARDS:
        raise ValueError(f"split {split!r} would need {num_shards} shards (at most {MAX_SHARDS}): raise --shard_size. "
                         f"Received: shard_size={shard_size}")
    plans = []
    for index in range(num_shards):
        shard_pairs = pairs[index * shard_size : (index + 1) * shard_size]
        plans.append((shard_name(split, index, num_shards), shard_pairs, _fingerprint(shard_pairs)))
    old_shards = {entry.get("name"): entry for entry in old_split.get("shards", [])}
    current = {name for name, _, fp in plans if _shard_is_current(output_dir, old_shards.get(name), name, fp)}
    # Reused shards keep their recorded problems: rerunning without --skip_invalid still fails.
    for name in current:
        recorded = old_shards[name].get("skipped", [])
        if recorded and not options["skip_invalid"]:
            first = recorded[0]
            raise voc.InvalidPairError(voc.Problem(first["image_id"], first["path"], first["problem"]), more=len(recorded) - 1)
    # Shards of an earlier plan of this split (another shard count) would be read by the glob.
    _remove_temporaries(output_dir, split)
    planned = {name for name, _, _ in plans}
    for stale in Path(output_dir).glob(Path(split_glob(output_dir, split)).name):
        if stale.name not in planned:
            stale.unlink()

    split_entry = {
        "list": str(list_path),
        "source": options["source"],
        "glob": Path(split_glob(output_dir, split)).name,
        "num_examples": 0,
        "num_skipped": 0,
        "class_pixels": [0] * options["num_classes"],
        "class_image_pixels": [0] * options["num_classes"],
        "void_pixels": 0,
        "num_shards": num_shards,
        "shards": [],
        "skipped": [_problem_dict(split, p) for p in problems],
        "complete": False,
    }
    manifest["splits"][split] = split_entry
    # The shards known so far, reused ones from the start: a run stopped before reaching them
    # keeps them recorded (the next run reuses them). Sizes added to manifests written before
    # they were recorded.
    entries = {name: {**old_shards[name], **_shard_entry_size(output_dir / name)} for name in current}

    def record() -> None:
        """The split's entry from the shards known so far, in plan order."""
        shards = split_entry["shards"] = [entries[name] for name, _, _ in plans if name in entries]
        split_entry["num_examples"] = sum(shard["num_examples"] for shard in shards)
        for key in ("class_pixels", "class_image_pixels"):
            split_entry[key] = [sum(shard[key][i] for shard in shards) for i in range(options["num_classes"])]
        split_entry["void_pixels"] = sum(shard["void_pixels"] for shard in shards)

    record()
    to_write = sum(len(p) for name, p, _ in plans if name not in current)
    if to_write:  # Recorded as incomplete now: a failure in its first shard must not leave it unmentioned.
        _save_manifest(output_dir, manifest)
    verbose = options["verbose"]
    if verbose:
        print(f"{split}: {len(pairs)} pairs from {list_path}, {num_shards} shard(s), "
              f"{num_shards - len(current)} to write, {len(current)} already complete")
    progbar = keras.utils.Progbar(to_write, unit_name="image", verbose=progress_verbosity(1)) if verbose and to_write else None
    for name, shard_pairs, fingerprint in plans:
        if name in current:
            continue
        count, shard_problems, counts, image_pixels = _write_shard(
            output_dir / name, shard_pairs, executor, progbar, options["skip_invalid"], options["num_classes"],
            options["label_colours"],
        )
        entries[name] = {
            "name": name,
            "num_examples": count,
            "sha256": file_digests(output_dir / name, "sha256")[0],
            **_shard_entry_size(output_dir / name),
            "fingerprint": fingerprint,
            "class_pixels": counts[: options["num_classes"]].tolist(),
            "class_image_pixels": image_pixels.tolist(),
            "void_pixels": int(counts[IGNORE_LABEL]),
            "skipped": [_problem_dict(split, p) for p in shard_problems],
        }
        record()
        _save_manifest(output_dir, manifest)  # A new shard: recorded now, so a killed run keeps it.
    split_entry["skipped"] += [problem for entry in split_entry["shards"] for problem in entry["skipped"]]
    split_entry["num_skipped"] = len(split_entry["skipped"])
    split_entry["complete"] = True
    if to_write or not old_split.get("complete"):  # Said now: a later split may fail before the last write.
        _save_manifest(output_dir, manifest)
    return split_entry


# --- Public API -------------------------------------------------------------------------------


def convert(
    voc_root: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    *,
    splits: tuple[str, ...] | list[str] = ("train", "val"),
    sbd_root: str | os.PathLike | None = None,
    lists_dir: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    labels_dir: str | os.PathLike | None = None,
    class_names: str | os.PathLike | tuple[str, ...] | list[str] | None = None,
    label_colours: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    num_workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_images: int | None = None,
    verbose: bool = True,
) -> dict:
    """Converts dataset splits to sharded TFRecords and writes ``manifest.json``.

    Two sources: PASCAL VOC / SBD (``voc_root``, ``sbd_root``), or a dataset of your own
    (``images_dir``, ``labels_dir``, ``lists_dir``, ``class_names``; see ``fcn_keras.data.voc``).

    Idempotent and resumable: a shard already written whose inputs and sha256 match the
    manifest is kept as it is; others are rewritten (temporary file, then rename).

    Args:
        voc_root: the VOCdevkit folder (the one holding ``VOC2012/``); ``None`` with ``images_dir``,
            or for SBD's own splits (``sbd_train``, ``sbd_val``) alone.
        output_dir: where shards, ``manifest.json`` and ``skipped.json`` go (created).
        splits: names (or one comma-separated string) from ``fcn_keras.data.voc.SPLITS`` (``train``, ``val``, ``trainval``,
            ``seg11valid``, ``train_aug``, ``sbd_train``, ``sbd_val``); for a dataset of your
            own, any names with a ``<lists_dir>/<split>.txt``.
        sbd_root: SBD's folder holding ``dataset/`` (for ``sbd_*`` and ``train_aug``).
        lists_dir: a folder searched first for ``<split>.txt`` id lists (the only place, for a
            dataset of your own, whose lines are ids or ``<image> <mask>`` pairs of paths under
            ``images_dir`` and ``labels_dir``).
        images_dir: a dataset of your own: its folder of ``<id>.jpg`` / ``.jpeg`` / ``.png`` images.
        labels_dir: a dataset of your own: its folder of ``<id>.png`` masks (class indices, 255 =
            void; colours with ``label_colours``).
        class_names: a dataset of your own: its class names in index order (a file with one per
            line, a comma-separated string or a sequence; 2 to 255 of them). Mask values must be
            below their count (or 255).
        label_colours: masks that are colour-coded (a dataset of your own, or a VOC copy whose
            PNG masks are colour images): ``"voc"`` (the VOC colours) or a file of ``<label> R G
            B`` lines (``fcn_keras.data.voc.read_label_colours``; with ``voc_root``, its labels
            are VOC's classes). SBD's ``.mat`` masks are class indices and read as such.
            Every mask pixel must have one of its colours (exact colours: a resized or JPEG mask
            is refused, naming its stray colours).
        skip_invalid: skip invalid pairs (counted, and reported in ``skipped.json``) instead of
            stopping at the first.
        num_workers: threads reading and validating pairs (default: the CPU count).
        shard_size: at most this many examples per shard (>= 1).
        max_images: convert only the first ``max_images`` ids of each list (>= 1).
        verbose: print a line per split and a ``keras.utils.Progbar``.

    Returns:
        The manifest: ``{"version", "format", "fcn_keras_version", "source", "class_names",
        "shard_size", "splits": {split: {"num_examples", "num_skipped", "class_pixels",
        "class_image_pixels", "void_pixels", "shards": [{"name", "num_examples", "sha256", "num_bytes", ...}], "glob", "list",
        "skipped", ...}}, "skipped_report"}``.

    Raises:
        ValueError: bad arguments, a missing layout or list (named), or an invalid pair
            (``InvalidPairError``: the file and the problem) when not ``skip_invalid``.
    """
    # --- Arguments ---------------------------------------------------------------------------
    splits = tuple(splits.split(",")) if isinstance(splits, str) else tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one split. Received: splits=()")
    own = images_dir is not None or labels_dir is not None
    if own:
        given = {name: value for name, value in (("voc_root", voc_root), ("sbd_root", sbd_root)) if value is not None}
        if given:
            raise ValueError(f"images_dir/labels_dir convert a dataset of your own: drop {' and '.join(given)}. "
                             f"Received: {', '.join(f'{name}={str(value)!r}' for name, value in given.items())}")
        missing = [name for name, value in (("images_dir", images_dir), ("labels_dir", labels_dir), ("lists_dir", lists_dir),
                                            ("class_names", class_names)) if value is None]
        if missing:
            raise ValueError(f"a dataset of your own needs images_dir, labels_dir, lists_dir and class_names; missing: "
                             f"{', '.join(missing)}")
        for split in splits:
            voc.check_split_name(split)
        names = voc.read_class_names(class_names)
        colours = None if label_colours is None else voc.read_label_colours(label_colours, names)
    else:
        if voc_root is None and not set(splits) <= set(voc.SBD_SPLITS):
            raise ValueError("voc_root must be a VOCdevkit folder (SBD's own splits need only sbd_root; or pass "
                             "images_dir, labels_dir, lists_dir and class_names for a dataset of your own). "
                             "Received: voc_root=None")
        if voc_root is not None:  # Checked even where unused (SBD's splits): the manifest records it.
            voc.voc_dir(voc_root)
        if class_names is not None:
            raise ValueError(f"class_names describes a dataset of your own (with images_dir); VOC's classes are fixed. "
                             f"Received: class_names={str(class_names)!r}")
        # A VOC copy whose PNG masks are colour images (SBD's .mat masks are indices all the same).
        colours = None if label_colours is None else voc.read_label_colours(label_colours, VOC_CLASSES)
        for split in splits:
            if split not in voc.SPLITS:
                raise ValueError(f"splits must be among {voc.SPLITS}. Received: splits={splits!r}")
        names = VOC_CLASSES
    shard_size = check_int("shard_size", shard_size, 1)
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None. Received: max_images={max_images!r}")
    num_workers = (os.cpu_count() or 1) if num_workers is None else check_int("num_workers", num_workers, 1)
    output_dir = Path(output_dir)
    check_folder("output_dir", output_dir)

    # --- Manifest ----------------------------------------------------------------------------
    def absolute(path):
        return None if path is None else str(Path(path).resolve())

    if own:
        source = {"images_dir": absolute(images_dir), "labels_dir": absolute(labels_dir), "lists_dir": absolute(lists_dir),
                  "max_images": max_images, "class_names": list(names)}
        if colours is not None:  # Only when given: manifests written before the option stay current.
            source["label_colours"] = colours.to_json()

        def resolve(split):
            return voc.resolve_folder_pairs(split, images_dir, labels_dir, lists_dir, max_images=max_images)
    else:
        source = {"voc_root": absolute(voc_root), "sbd_root": absolute(sbd_root), "lists_dir": absolute(lists_dir),
                  "max_images": max_images}
        if colours is not None:
            source["label_colours"] = colours.to_json()

        def resolve(split):
            return voc.resolve_pairs(split, voc_root, sbd_root=sbd_root, lists_dir=lists_dir, max_images=max_images)
    old = read_manifest(output_dir) or {}
    old_names = manifest_class_names(old)
    if old.get("splits") and old_names != names:
        kept = [split for split in old["splits"] if split not in splits]
        if kept:
            raise ValueError(
                f"output_dir {str(output_dir)!r} holds splits {kept} of a dataset with other classes "
                f"({len(old_names)}: {voc.abbreviate(old_names)}); convert them "
                "again with these classes too (--splits), or use another --output_dir"
            )
    manifest = {
        "format": "fcn_keras.tfrecord",
        "version": records.SCHEMA_VERSION,
        "fcn_keras_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "class_names": list(names),
        "shard_size": shard_size,
        # Every earlier split, those converted now included until each is replaced: a run that
        # stops before reaching a split leaves its (intact) shards recorded. Not with other classes.
        "splits": dict(old.get("splits", {})) if old_names == names else {},
        "skipped_report": None,
    }
    for split, entry in manifest["splits"].items():  # Kept from an earlier conversion: same data?
        if split in splits:
            continue
        differences = [f"{key} {value!r} (now {source.get(key)!r})" for key, value in (entry.get("source") or {}).items()
                       if source.get(key) != value]
        if differences:
            logger.warning("%s also holds split %r converted from other data: %s. A --data of this folder uses it "
                           "with the splits converted now; reconvert it or use another --output_dir",
                           output_dir, split, ", ".join(differences))
    options = {
        "num_classes": len(names),
        "label_colours": colours,
        "skip_invalid": skip_invalid,
        "shard_size": shard_size,
        "source": source,
        "verbose": verbose,
    }

    # --- Splits: every list read and its files found before anything is written --------------
    resolved = {split: resolve(split) for split in splits}
    for list_path, pairs, problems in resolved.values():
        if problems and not skip_invalid:
            raise voc.InvalidPairError(problems[0], more=len(problems) - 1)
    # output_dir is made by the first write (the manifest, before a split's first shard): a run
    # refused before it leaves no empty folder.
    with concurrent.futures.ThreadPoolExecutor(num_workers) as executor:
        for split in splits:
            old_split = old.get("splits", {}).get(split, {})
            if old_split.get("source") != source:
                old_split = {}
            _convert_split(split, resolved[split], output_dir, manifest, old_split, options, executor)

    # --- Report ------------------------------------------------------------------------------
    skipped = [problem for entry in manifest["splits"].values() for problem in entry["skipped"]]
    report = output_dir / SKIPPED_REPORT_NAME
    if skipped:
        _write_if_changed(report, json.dumps(skipped, indent=2))
        manifest["skipped_report"] = SKIPPED_REPORT_NAME
    elif report.exists():
        report.unlink()
    if {**manifest, "created": None} == {**old, "created": None}:  # An identical rerun writes nothing.
        manifest["created"] = old["created"]
    _write_if_changed(output_dir / MANIFEST_NAME, json.dumps(manifest, indent=2))
    if verbose:
        for split in splits:
            entry = manifest["splits"][split]
            labelled = sum(entry["class_pixels"])
            absent = [name for name, count in zip(names, entry["class_pixels"]) if not count]
            print(f"{split}: {entry['num_examples']} examples in {entry['num_shards']} shard(s), "
                  f"{entry['num_skipped']} skipped; {len(names) - len(absent)} of {len(names)} classes present, "
                  f"{100 * entry['void_pixels'] / max(labelled + entry['void_pixels'], 1):.1f}% void pixels"
                  + (f"; no pixel of: {', '.join(absent)}" if absent else ""))
    if skipped:  # Said even when quiet: nothing is left out without a count.
        if verbose:
            print(f"skipped {len(skipped)} invalid pair(s); report: {report}")
        else:
            logger.warning("skipped %d invalid pair(s); report: %s", len(skipped), report)
    return manifest


# --- CLI --------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("voc_root", None, "VOCdevkit folder, the one holding VOC2012/ (or pass --download_dir; "
                        "not needed for --splits of SBD's alone).")
    flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards, manifest.json and skipped.json.", required=True)
    flags.DEFINE_string("sbd_root", None, "SBD folder holding dataset/{img,cls,train.txt,val.txt} (splits sbd_train, sbd_val, train_aug).")
    flags.DEFINE_string("lists_dir", None, "Folder searched first for <split>.txt id lists (e.g. seg11valid.txt, train_aug.txt, sbd_train.txt); "
                        "for a dataset of your own, the folder of its lists: one id, or one '<image> <mask>' pair of paths "
                        "under --images_dir and --labels_dir, per line.")
    flags.DEFINE_string("images_dir", None, "A dataset of your own: the folder of its images, <id>.jpg, .jpeg or .png "
                        "(with --labels_dir, --lists_dir and --class_names, instead of --voc_root).")
    flags.DEFINE_string("labels_dir", None, "A dataset of your own: the folder of its masks, <id>.png of class indices "
                        "(palette or grayscale PNGs; 255 = void).")
    flags.DEFINE_string("class_names", None, "A dataset of your own: its class names in index order, a file with one per "
                        "line or a comma-separated list (e.g. background,road,car).")
    flags.DEFINE_string("label_colours", None, "Masks that are colour-coded (RGB) PNGs (a dataset of your own, or a VOC "
                        "copy with --voc_root), or hold ids "
                        "to remap: 'voc' (the VOC colours) or a file of '<label> R G B' lines (or '<label> V' for the "
                        "gray level V), label a class name, index or void.")
    flags.DEFINE_list("splits", ["train", "val"], f"Comma-separated splits among {', '.join(voc.SPLITS)}; for a dataset "
                      "of your own, any names with a <lists_dir>/<split>.txt.")
    flags.DEFINE_boolean("skip_invalid", False, "Skip invalid pairs, count them and write skipped.json, instead of stopping at the first.")
    flags.DEFINE_integer("num_workers", None, "Threads reading and validating pairs (default: the CPU count).", lower_bound=1)
    flags.DEFINE_integer("shard_size", DEFAULT_SHARD_SIZE, "At most this many examples per shard.", lower_bound=1)
    flags.DEFINE_integer("max_images", None, "Convert only the first N ids of each list (quick runs).", lower_bound=1)
    flags.DEFINE_boolean("quiet", False, "No per-split lines or progress bar.")
    download.define_download_flags(required=False)


def main(argv: list[str]) -> int | None:
    """Runs ``convert`` from the flags; bad input exits with status 2 and a one-line error, a
    failed download with status 1."""
    if len(argv) > 1:
        return usage_error("fcn_keras.data.convert", f"unexpected arguments: {argv[1:]}")
    roots = {"voc_root": FLAGS.voc_root, "sbd_root": FLAGS.sbd_root, "lists_dir": FLAGS.lists_dir}
    own = {"images_dir": FLAGS.images_dir, "labels_dir": FLAGS.labels_dir, "class_names": FLAGS.class_names}
    own_options = {"label_colours": FLAGS.label_colours}  # Optional: colour-coded masks, own or VOC.
    # VOC and SBD: a VOCdevkit, or SBD alone for SBD's own splits.
    pascal = FLAGS.voc_root is not None or (FLAGS.sbd_root is not None and set(FLAGS.splits) <= set(voc.SBD_SPLITS))
    try:
        if FLAGS.download_dir is not None:
            given = [f"--{name}" for name, value in {**roots, **own, **own_options}.items() if value is not None]
            if given:
                raise ValueError(f"--download_dir finds the data itself: drop {', '.join(given)}, or drop --download_dir")
            needed = download.sources_for_splits(FLAGS.splits)
            downloaded = download.download(needed, FLAGS.download_dir, mirror=FLAGS.download_mirror, verbose=not FLAGS.quiet)
            roots = {"voc_root": downloaded.voc_root, "sbd_root": downloaded.sbd_root, "lists_dir": downloaded.lists_dir}
        elif not pascal and all(value is None for value in own.values()):
            raise ValueError("pass --voc_root (a VOCdevkit folder), --download_dir (to download VOC 2012 and SBD), or "
                             "--images_dir, --labels_dir, --lists_dir and --class_names (a dataset of your own)")
        elif not pascal and any(value is None for value in [*own.values(), FLAGS.lists_dir]):
            given = {**own, "lists_dir": FLAGS.lists_dir}
            missing = [f"--{name}" for name in ("images_dir", "labels_dir", "lists_dir", "class_names") if given[name] is None]
            raise ValueError(f"a dataset of your own needs --images_dir, --labels_dir, --lists_dir and --class_names; "
                             f"missing: {', '.join(missing)}")
        elif pascal and any(value is not None for value in own.values()):
            given = [f"--{name}" for name, value in own.items() if value is not None]
            raise ValueError(f"--voc_root converts PASCAL VOC: drop {', '.join(given)} (they describe a dataset of your own), "
                             "or drop --voc_root")
        convert(
            roots["voc_root"],
            FLAGS.output_dir,
            splits=FLAGS.splits,
            sbd_root=roots["sbd_root"],
            lists_dir=roots["lists_dir"],
            **own,
            **own_options,
            skip_invalid=FLAGS.skip_invalid,
            num_workers=FLAGS.num_workers,
            shard_size=FLAGS.shard_size,
            max_images=FLAGS.max_images,
            verbose=not FLAGS.quiet,
        )
    except ValueError as error:  # Bad flags or data (an invalid pair names its file): status 2.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except download.DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
