"""fcn_keras.console: Keras' live progress bar only on a terminal."""

import io

from fcn_keras.console import progress_verbosity


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_bar_becomes_one_line_when_not_on_a_terminal():
    assert progress_verbosity(1, _Terminal()) == 1
    assert progress_verbosity(1, io.StringIO()) == 2  # A log file or a pipe.
    assert [progress_verbosity(v, io.StringIO()) for v in (0, 2)] == [0, 2]
