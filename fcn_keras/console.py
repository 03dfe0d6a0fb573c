"""Progress output that suits where it goes: a bar redrawn in place on a terminal, whole lines
in a log file or a pipe.

Keras' progress bar (``verbose=1``) redraws itself with carriage returns and ANSI colours; sent
to a file it leaves every step's update on one endless line of escape codes. ``verbose=2``
prints one plain line when the bar is done (per epoch for ``model.fit``).
"""

from __future__ import annotations

import re
import sys
from typing import TextIO


def progress_verbosity(verbose: int, stream: TextIO | None = None) -> int:
    """The Keras verbosity to use for a progress bar written to ``stream``.

    Args:
        verbose: the verbosity asked for: 0 (silent), 1 (a live bar) or 2 (one line when done).
        stream: where Keras writes its bars (default ``sys.stdout``).

    Returns:
        ``verbose``, except 1 becomes 2 when ``stream`` is not a terminal.
    """
    stream = sys.stdout if stream is None else stream
    if verbose == 1 and not (hasattr(stream, "isatty") and stream.isatty()):
        return 2
    return verbose


def op_error_reason(message: str) -> str:
    """A TensorFlow op error's message for a one-line report: without the ``{{function_node
    ...}}`` prefix and the ``[Op:DecodeJpeg]`` suffix, e.g. ``"jpeg::Uncompress failed. Invalid
    JPEG data or crop window."``."""
    return re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*\]", "", message).strip()


def usage_error(program: str, message: str) -> int:
    """Reports a command line the program cannot use (e.g. missing or unexpected positional
    arguments) as one line on stderr, as every CLI reports bad input, instead of absl's
    ``UsageError`` (which exits with status 1 after printing the whole flag list).

    Args:
        program: the CLI's module, e.g. ``"fcn_keras.predict"``, or its script's path.
        message: what is wrong.

    Returns:
        2, the exit status for bad input.
    """
    command = f"python {program}" if program.endswith(".py") else f"python -m {program}"
    print(f"{program}: error: {message} (see {command} --help)", file=sys.stderr)
    return 2
