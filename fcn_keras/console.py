"""What the CLIs print: progress that suits where it goes (a bar redrawn in place on a terminal,
whole lines in a log file or a pipe), and bad command lines as one error line with status 2.

Keras' progress bar (``verbose=1``) redraws itself with carriage returns and ANSI colours; sent
to a file it leaves every step's update on one endless line of escape codes. ``verbose=2``
prints one plain line when the bar is done (per epoch for ``model.fit``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
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
    ...}}`` prefix and the ``[Op:DecodeJpeg]`` suffix (with the ``name: ...`` some ops append to
    it), e.g. ``"jpeg::Uncompress failed. Invalid JPEG data or crop window."``."""
    return re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:[^\]]*\].*", "", message).strip()


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


def _program() -> str:
    """The running CLI as its user named it: the module of ``python -m fcn_keras.train``, else
    the script's path (``benchmarks/throughput.py``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name != "__main__" else sys.argv[0]


def run_cli(main: Callable[[list[str]], int | None]) -> None:
    """``absl.app.run(main)``, with bad flags and Ctrl-C reported as every other bad input is.

    absl reports a flag it refuses (an unknown flag, a value outside an enum's choices or an
    integer's bounds, a missing required flag, exclusive flags given together) with a
    ``FATAL Flags parsing error`` and status 1, which is also the status of a failure while
    running. Here it is one ``<program>: error: ...`` line on stderr and status 2; Ctrl-C is
    one ``interrupted`` line and status 130 (the CLIs that can say how to resume catch it
    themselves).

    Args:
        main: the CLI's ``main(argv)``, returning its exit status.
    """
    from absl import app, flags

    program = _program()

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            sys.exit(usage_error(program, str(error)))

    def interruptible(argv: list[str]) -> int | None:
        try:
            return main(argv)
        except KeyboardInterrupt:
            print(f"{program}: interrupted", file=sys.stderr)
            return 130

    app.run(interruptible, flags_parser=parse)  # Exits with main's status.


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``"1 image"``, ``"3 images"``: a count with its noun in the right number (``plural``
    for irregular ones, e.g. ``counted(2, "entry", "entries")``)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
