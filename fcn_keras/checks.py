"""Argument checks shared by the package: one wording for every "must be one of" error."""

from __future__ import annotations

from collections.abc import Iterable
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
