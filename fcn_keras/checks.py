"""Argument checks shared by the package: one wording for every "must be one of", "must be an
integer >= N", "must be a folder" and "must be N or HxW" error."""

from __future__ import annotations

import numbers
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def check_choice(name: str, value: T, choices: Iterable[Any]) -> T:
    """Returns ``value`` if it is one of ``choices``, else raises a ``ValueError`` naming them.

    Args:
        name: the argument or flag, as the user wrote it (``"variant"``).
        value: what was given.
        choices: the accepted values (a tuple, or a dict's keys).

    Returns:
        ``value``.

    Raises:
        ValueError: e.g. ``variant must be one of ('32s', '16s', '8s'). Received: variant='4s'``.
    """
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}. Received: {name}={value!r}")
    return value


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (a bool is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int, note: str = "") -> int:
    """Returns ``value`` as an ``int`` if it is an integer ``>= minimum``, else raises a ``ValueError``.

    Args:
        name: the argument or flag, as the user wrote it (``"batch_size"``).
        value: what was given: a Python or numpy integer; not a bool, not a float.
        minimum: the smallest value accepted.
        note: what the number means, appended in parentheses (``"epochs"``).

    Returns:
        ``int(value)``.

    Raises:
        ValueError: e.g. ``batch_size must be an integer >= 1. Received: batch_size=0``.
    """
    if not is_integer(value) or value < minimum:
        meaning = f" ({note})" if note else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{meaning}. Received: {name}={value!r}")
    return int(value)


def check_folder(name: str, path: str | os.PathLike) -> None:
    """Refuses an output folder that is a file or lies inside one (one that does not exist yet is fine).

    Args:
        name: the argument or flag, as the user wrote it (``"output_dir"``).
        path: the folder.

    Raises:
        ValueError: e.g. ``output_dir must be a folder. Received: output_dir='out.png', a file``, or
            ``... Received: output_dir='best.keras/eval', inside 'best.keras', a file``.
    """
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"{name} must be a folder. Received: {name}={str(path)!r}, a file")
    parent = next((p for p in Path(path).parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{name} must be a folder. Received: {name}={str(path)!r}, inside {str(parent)!r}, a file")


def check_writable_folder(name: str, path: str | os.PathLike) -> None:
    """``check_folder``, then a temporary file in the folder, or where it would be made (its
    nearest existing parent; nothing is left there): an output folder that cannot be written
    is refused before the work whose results go there, not after.

    Raises:
        ValueError: as ``check_folder``, or ``output_dir '/proc/x' cannot be written: <reason>``.
    """
    check_folder(name, path)
    existing = next((folder for folder in (Path(path), *Path(path).absolute().parents) if folder.exists()), Path("/"))
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ValueError(f"{name} {str(path)!r} cannot be written: {error.strerror or error}") from error


def parse_size(text: str, name: str = "size") -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"375x500"`` -> (375, 500) (height x width).

    Args:
        text: the size as written on a command line.
        name: what to name in the error (e.g. ``"--canvas"``).

    Returns:
        ``(height, width)``, ints >= 1.

    Raises:
        ValueError: ``text`` is not N or HxW with positive integers.
    """
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise ValueError(f"{name} must be N or HxW with positive integers. Received: {text!r}")
    return dims
