"""VOC 2012 / SBD → sharded TFRecords plus a manifest, validated, parallel, resumable.

    python -m fcn_keras.data.convert --voc_root=VOCdevkit --output_dir=data/voc
        [--sbd_root=benchmark_RELEASE] [--splits=train,val] [--skip_invalid] [--num_workers=8]
    python -m fcn_keras.data.convert --download_dir=downloads --output_dir=data/voc [--splits=...]

Writes ``<output_dir>/<split>-00000-of-0000N.tfrecord`` (schema in ``fcn_keras.data.records``)
and ``<output_dir>/manifest.json``. Each shard goes to a temporary name and is renamed when
complete, and the manifest is rewritten after every shard, so a killed run leaves only complete
shards; the same command then resumes, keeping every shard whose inputs (ids, file sizes and
times) and sha256 still match the manifest.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import logging
import math
import os
import sys
from pathlib import Path

import keras
import tensorflow as tf
from absl import app, flags

from fcn_keras import __version__
from fcn_keras.console import progress_verbosity, usage_error
from fcn_keras.data import download, records, voc
from fcn_keras.files import atomic_path, file_digests, write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SKIPPED_REPORT_NAME = "skipped.json"
DEFAULT_SHARD_SIZE = 1000


# --- Small helpers ----------------------------------------------------------------------------


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``<split>-<index>-of-<num_shards>.tfrecord``, both numbers on five digits."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def split_glob(output_dir: str | os.PathLike, split: str) -> str:
    """The file pattern matching every shard of ``split`` in ``output_dir``."""
    return str(Path(output_dir) / f"{split}-*-of-*.tfrecord")


def _fingerprint(pairs: list[voc.Pair]) -> str:
    """A hash of what a shard is made from: ids, paths, file sizes and modification times."""
    digest = hashlib.sha256(f"schema={records.SCHEMA_VERSION}".encode())
    for pair in pairs:
        for path in (pair.image_path, pair.label_path):
            stat = path.stat()
            digest.update(f"{pair.image_id}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _encode_pair(pair: voc.Pair) -> bytes | voc.Problem:
    """Loads, validates and serializes one pair; a ``Problem`` when it is invalid."""
    try:
        loaded = voc.load_pair(pair)
    except voc.InvalidPairError as error:
        return error.problem
    label_png = records.encode_label_png(loaded.label)
    return records.encode_example(loaded.image_id, loaded.image_bytes, label_png, loaded.height, loaded.width)


def _write_if_changed(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, unless the file already holds exactly that."""
    if not (path.is_file() and path.read_text() == text):
        write_text_atomic(path, text)


def read_manifest(output_dir: str | os.PathLike) -> dict | None:
    """The manifest in ``output_dir``, or ``None`` when absent or unreadable."""
    path = Path(output_dir) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("version") == records.SCHEMA_VERSION else None


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
        and path.is_file()
        and file_digests(path, "sha256")[0] == old.get("sha256")
    )


def _write_shard(
    path: Path,
    pairs: list[voc.Pair],
    executor: concurrent.futures.Executor,
    progbar: keras.utils.Progbar | None,
    skip_invalid: bool,
) -> tuple[int, list[voc.Problem]]:
    """Writes the valid pairs of one shard to a temporary file, then renames it to ``path``.

    Returns:
        ``(num_examples, problems)`` of the shard.

    Raises:
        InvalidPairError: the first invalid pair, unless ``skip_invalid``.
    """
    problems, count = [], 0
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for result in executor.map(_encode_pair, pairs):
            if isinstance(result, voc.Problem):
                if not skip_invalid:
                    raise voc.InvalidPairError(result)
                problems.append(result)
            else:
                writer.write(result)
                count += 1
            if progbar is not None:
                progbar.add(1)
    return count, problems


def _convert_split(
    split: str,
    voc_root: str | os.PathLike,
    output_dir: Path,
    manifest: dict,
    old_split: dict,
    options: dict,
    executor: concurrent.futures.Executor,
) -> dict:
    """Converts one split, shard by shard, updating and saving ``manifest`` after each."""
    list_path, pairs, problems = voc.resolve_pairs(
        split, voc_root, sbd_root=options["sbd_root"], lists_dir=options["lists_dir"], max_images=options["max_images"]
    )
    if problems and not options["skip_invalid"]:
        raise voc.InvalidPairError(problems[0], more=len(problems) - 1)
    shard_size = options["shard_size"]
    num_shards = max(1, math.ceil(len(pairs) / shard_size))
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
    planned = {name for name, _, _ in plans}
    for stale in Path(output_dir).glob(f"{split}-*-of-*.tfrecord"):
        if stale.name not in planned:
            stale.unlink()

    split_entry = {
        "list": str(list_path),
        "source": options["source"],
        "glob": Path(split_glob(output_dir, split)).name,
        "num_examples": 0,
        "num_skipped": 0,
        "num_shards": num_shards,
        "shards": [],
        "skipped": [_problem_dict(split, p) for p in problems],
        "complete": False,
    }
    manifest["splits"][split] = split_entry
    to_write = sum(len(p) for name, p, _ in plans if name not in current)
    verbose = options["verbose"]
    if verbose:
        print(f"{split}: {len(pairs)} pairs from {list_path}, {num_shards} shard(s), "
              f"{num_shards - len(current)} to write, {len(current)} already complete")
    progbar = keras.utils.Progbar(to_write, unit_name="image", verbose=progress_verbosity(1)) if verbose and to_write else None
    for name, shard_pairs, fingerprint in plans:
        if name in current:
            entry = old_shards[name]
        else:
            count, shard_problems = _write_shard(output_dir / name, shard_pairs, executor, progbar, options["skip_invalid"])
            entry = {
                "name": name,
                "num_examples": count,
                "sha256": file_digests(output_dir / name, "sha256")[0],
                "fingerprint": fingerprint,
                "skipped": [_problem_dict(split, p) for p in shard_problems],
            }
        split_entry["shards"].append(entry)
        split_entry["num_examples"] += entry["num_examples"]
        if name not in current:  # A new shard: recorded now, so a killed run keeps it.
            write_text_atomic(output_dir / MANIFEST_NAME, json.dumps(manifest, indent=2))
    split_entry["skipped"] += [problem for entry in split_entry["shards"] for problem in entry["skipped"]]
    split_entry["num_skipped"] = len(split_entry["skipped"])
    split_entry["complete"] = True
    return split_entry


# --- Public API -------------------------------------------------------------------------------


def convert(
    voc_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    splits: tuple[str, ...] | list[str] = ("train", "val"),
    sbd_root: str | os.PathLike | None = None,
    lists_dir: str | os.PathLike | None = None,
    skip_invalid: bool = False,
    num_workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_images: int | None = None,
    verbose: bool = True,
) -> dict:
    """Converts dataset splits to sharded TFRecords and writes ``manifest.json``.

    Idempotent and resumable: a shard already written whose inputs and sha256 match the
    manifest is kept as it is; others are rewritten (temporary file, then rename).

    Args:
        voc_root: the VOCdevkit folder (the one holding ``VOC2012/``).
        output_dir: where shards, ``manifest.json`` and ``skipped.json`` go (created).
        splits: names (or one comma-separated string) from ``fcn_keras.data.voc.SPLITS`` (``train``, ``val``, ``trainval``,
            ``seg11valid``, ``train_aug``, ``sbd_train``, ``sbd_val``).
        sbd_root: SBD's folder holding ``dataset/`` (for ``sbd_*`` and ``train_aug``).
        lists_dir: a folder searched first for ``<split>.txt`` id lists.
        skip_invalid: skip invalid pairs (counted, and reported in ``skipped.json``) instead of
            stopping at the first.
        num_workers: threads reading and validating pairs (default: the CPU count).
        shard_size: at most this many examples per shard (>= 1).
        max_images: convert only the first ``max_images`` ids of each list (>= 1).
        verbose: print a line per split and a ``keras.utils.Progbar``.

    Returns:
        The manifest: ``{"version", "format", "fcn_keras_version", "source", "shard_size",
        "splits": {split: {"num_examples", "num_skipped", "shards": [{"name", "num_examples",
        "sha256", ...}], "glob", "list", "skipped", ...}}, "skipped_report"}``.

    Raises:
        ValueError: bad arguments, a missing layout or list (named), or an invalid pair
            (``InvalidPairError``: the file and the problem) when not ``skip_invalid``.
    """
    # --- Arguments ---------------------------------------------------------------------------
    splits = tuple(splits.split(",")) if isinstance(splits, str) else tuple(splits)
    if not splits:
        raise ValueError("splits must name at least one split. Received: splits=()")
    for split in splits:
        if split not in voc.SPLITS:
            raise ValueError(f"splits must be among {voc.SPLITS}. Received: splits={splits!r}")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an integer >= 1. Received: shard_size={shard_size!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 or None. Received: max_images={max_images!r}")
    num_workers = num_workers or os.cpu_count() or 1
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1. Received: num_workers={num_workers!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # --- Manifest ----------------------------------------------------------------------------
    source = {
        "voc_root": str(Path(voc_root).resolve()),
        "sbd_root": None if sbd_root is None else str(Path(sbd_root).resolve()),
        "lists_dir": None if lists_dir is None else str(Path(lists_dir).resolve()),
        "max_images": max_images,
    }
    old = read_manifest(output_dir) or {}
    manifest = {
        "format": "fcn_keras.tfrecord",
        "version": records.SCHEMA_VERSION,
        "fcn_keras_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "shard_size": shard_size,
        "splits": {s: entry for s, entry in old.get("splits", {}).items() if s not in splits},
        "skipped_report": None,
    }
    for split, entry in manifest["splits"].items():  # Kept from an earlier conversion: same data?
        differences = [f"{key} {value!r} (now {source[key]!r})" for key, value in (entry.get("source") or {}).items()
                       if source.get(key) != value]
        if differences:
            logger.warning("%s also holds split %r converted from other data: %s. A --data of this folder uses it "
                           "with the splits converted now; reconvert it or use another --output_dir",
                           output_dir, split, ", ".join(differences))
    options = {
        "sbd_root": sbd_root,
        "lists_dir": lists_dir,
        "max_images": max_images,
        "skip_invalid": skip_invalid,
        "shard_size": shard_size,
        "source": source,
        "verbose": verbose,
    }

    # --- Splits ------------------------------------------------------------------------------
    with concurrent.futures.ThreadPoolExecutor(num_workers) as executor:
        for split in splits:
            old_split = old.get("splits", {}).get(split, {})
            if old_split.get("source") != source:
                old_split = {}
            _convert_split(split, voc_root, output_dir, manifest, old_split, options, executor)

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
            print(f"{split}: {entry['num_examples']} examples in {entry['num_shards']} shard(s), "
                  f"{entry['num_skipped']} skipped")
        if skipped:
            print(f"skipped {len(skipped)} invalid pair(s); report: {report}")
    return manifest


# --- CLI --------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("voc_root", None, "VOCdevkit folder, the one holding VOC2012/ (or pass --download_dir).")
    flags.DEFINE_string("output_dir", None, "Folder for the TFRecord shards, manifest.json and skipped.json.", required=True)
    flags.DEFINE_string("sbd_root", None, "SBD folder holding dataset/{img,cls,train.txt,val.txt} (splits sbd_train, sbd_val, train_aug).")
    flags.DEFINE_string("lists_dir", None, "Folder searched first for <split>.txt id lists (e.g. seg11valid.txt, train_aug.txt).")
    flags.DEFINE_list("splits", ["train", "val"], f"Comma-separated splits among {', '.join(voc.SPLITS)}.")
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
    try:
        if FLAGS.download_dir is not None:
            given = [f"--{name}" for name, value in roots.items() if value is not None]
            if given:
                raise ValueError(f"--download_dir finds the data itself: drop {', '.join(given)}, or drop --download_dir")
            needed = download.sources_for_splits(FLAGS.splits)
            downloaded = download.download(needed, FLAGS.download_dir, mirror=FLAGS.download_mirror, verbose=not FLAGS.quiet)
            roots = {"voc_root": downloaded.voc_root, "sbd_root": downloaded.sbd_root, "lists_dir": downloaded.lists_dir}
        elif FLAGS.voc_root is None:
            raise ValueError("pass --voc_root (a VOCdevkit folder) or --download_dir (to download VOC 2012 and SBD)")
        convert(
            roots["voc_root"],
            FLAGS.output_dir,
            splits=FLAGS.splits,
            sbd_root=roots["sbd_root"],
            lists_dir=roots["lists_dir"],
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
    app.run(main)
