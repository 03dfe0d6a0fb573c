"""fcn_keras.console: Keras' live progress bar only on a terminal; a command line a CLI cannot
use is one line and status 2."""

import importlib
import io

import pytest

from fcn_keras.console import progress_verbosity


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_bar_becomes_one_line_when_not_on_a_terminal():
    assert progress_verbosity(1, _Terminal()) == 1
    assert progress_verbosity(1, io.StringIO()) == 2  # A log file or a pipe.
    assert [progress_verbosity(v, io.StringIO()) for v in (0, 2)] == [0, 2]


@pytest.mark.parametrize("module", ["fcn_keras.train", "fcn_keras.evaluate", "fcn_keras.export",
                                    "fcn_keras.data.convert", "fcn_keras.data.download", "fcn_keras.caffe_import"])
def test_unexpected_arguments_are_one_line_and_status_2(module, capsys):
    """Not absl's UsageError, which exits with status 1 after printing every flag."""
    assert importlib.import_module(module).main([module, "stray.jpg"]) == 2
    assert capsys.readouterr().err == (f"{module}: error: unexpected arguments: ['stray.jpg'] "
                                       f"(see python -m {module} --help)\n")
