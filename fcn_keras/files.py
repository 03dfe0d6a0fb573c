"""Atomic file writes: a file either holds its complete new content or is left as it was.

Every writer of the project's outputs (JSON records, markdown tables, PNG figures and label maps,
``.keras`` files, backups, TFRecord shards) writes to a temporary file beside its target and
renames it over the target, so a kill never leaves a half-written file that looks complete.
Two append a line at a time instead: a run's ``log.csv`` (Keras' ``CSVLogger``; a resume
truncates it to the epochs its backup holds) and ``benchmarks/throughput.py``'s ``.jsonl``
records (a torn last line is left out and counted when read). The
synthetic datasets of ``data.synthetic`` (tests, the demo) write their files in place: the demo
dataset is made in a temporary folder that is renamed when complete (``train._demo_data``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: The name of ``atomic_path``'s temporary files: ``.tmp-<pid>-<random>-<name>``.
_TEMPORARY_NAME = re.compile(r"\.tmp-([0-9]+)-[0-9a-f]{8}-(.+)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over ``path`` when the block succeeds.

    The temporary name is hidden and unique (``.tmp-<pid>-<random>-<name>``) and ends with
    ``path``'s own name, so writers that check the suffix (Keras' ``.keras`` and
    ``.weights.h5``) accept it. If the block raises, the temporary file is removed and ``path``
    is untouched. The parent folder is created if needed. A killed process (``SIGKILL``, power
    loss) leaves its temporary file behind: ``temporary_target`` recognizes it.

    Args:
        path: the file to write.
        durable: also on disk before the block returns, so that a power loss or an OS crash
            cannot leave a renamed but empty file: the temporary file is fsynced before the
            rename, the folder after it. For what a durable record names (a backup's state
            files, which ``state.json`` points to): the rename alone orders nothing on disk.

    Yields:
        The temporary path to write to.

    Raises:
        OSError: as the block or the rename raised it, naming ``path`` where it named the
            temporary file or no file (a full disk, a read-only folder, a folder at ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield temporary
        if durable:
            _fsync(temporary)
        os.replace(temporary, path)
        if durable:
            _fsync(path.parent)
    except OSError as error:
        if error.errno is None or error.filename not in (None, str(temporary), temporary):
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from error  # The file the user asked for.
    finally:
        temporary.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flushes a file's (or a folder's entries') data to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def temporary_target(name: str) -> str | None:
    """The name of the file that a temporary file of ``atomic_path`` named ``name`` was to
    become (``.tmp-123-0a1b2c3d-train-00000-of-00002.tfrecord`` → ``train-00000-of-00002.tfrecord``),
    or ``None`` when ``name`` is not such a temporary name."""
    match = _TEMPORARY_NAME.fullmatch(name)
    return match.group(2) if match else None


def remove_orphaned_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Removes the temporary files of ``atomic_path`` in ``folder`` (not its subfolders) whose
    writing process no longer runs on this machine: what a kill (``SIGKILL``, a time limit, power
    loss) left in mid-write, e.g. a 1.6 GB backup. A live writer's, this process's included, are
    kept.

    Returns:
        The files removed, sorted.
    """
    removed = []
    for path in sorted(Path(folder).glob(".tmp-*")):
        match = _TEMPORARY_NAME.fullmatch(path.name)
        if match and not _process_runs(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: beyond any process id (pid_t)
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Writes ``data`` as indented, key-sorted JSON to ``path``, atomically and durably (fsynced,
    the file and its folder: ``atomic_path(durable=True)``).

    Strict JSON: a NaN or infinite float (a diverged run's loss) is written as ``null``, which
    every JSON reader (``jq``, JavaScript) takes, where Python's ``NaN`` token is not JSON.
    numpy scalars and arrays are written as the numbers and lists they hold.
    """
    with atomic_path(path, durable=True) as temporary, open(temporary, "w") as f:
        json.dump(_finite_or_none(data), f, indent=2, sort_keys=True, default=str, allow_nan=False)
        f.write("\n")
    return Path(path)


def _finite_or_none(data: Any) -> Any:
    if isinstance(data, (np.ndarray, np.generic)):  # numpy scalars and arrays as the Python values they hold
        data = data.tolist()
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite_or_none(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_none(value) for value in data]
    return data


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Makes ``path`` a copy of the complete file ``source``, atomically; returns ``path``.

    A hard link where the file system allows it (no bytes written: a 540 MB ``.keras`` file
    costs nothing), else a byte copy. Either way ``path`` keeps this content when ``source``
    is later replaced by ``os.replace`` (as every writer here does), since a replacement is a
    new file.
    """
    with atomic_path(path) as temporary:
        try:
            os.link(source, temporary)
        except OSError:  # another device, or no hard links on this file system
            shutil.copyfile(source, temporary)
    return Path(path)


def file_digests(path: str | os.PathLike, *algorithms: str) -> tuple[str, ...]:
    """The hex digests of a file's bytes, one per ``hashlib`` algorithm, in one read.

    Args:
        path: the file.
        algorithms: ``hashlib`` names, e.g. ``"sha256"``, ``"md5"``.

    Returns:
        The digests in the order of ``algorithms``.
    """
    digests = [hashlib.new(name, usedforsecurity=False) for name in algorithms]
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            for digest in digests:
                digest.update(block)
    return tuple(digest.hexdigest() for digest in digests)
