"""fcn_keras.console: Keras' live progress bar only on a terminal; a command line a CLI cannot
use (stray arguments, flags absl refuses) is one line and status 2; Ctrl-C is one line and 130."""

import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcn_keras import console
from fcn_keras.console import progress_verbosity

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_bar_becomes_one_line_when_not_on_a_terminal():
    assert progress_verbosity(1, _Terminal()) == 1
    assert progress_verbosity(1, io.StringIO()) == 2  # A log file or a pipe.
    assert [progress_verbosity(v, io.StringIO()) for v in (0, 2)] == [0, 2]


def test_progress_goes_to_stdout_by_default_and_a_stream_without_isatty_is_no_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Terminal())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_verbosity(1) == 1
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_verbosity(1) == 2

    class Writer:  # A file-like object with no isatty().
        def write(self, text: str) -> int:
            return len(text)

    assert progress_verbosity(1, Writer()) == 2


def test_op_error_reason_keeps_only_the_reason():
    """TensorFlow's messages as its eager decoders raise them (found by review: DecodeImage's
    ' name: ' after [Op:...] was left in every BMP and GIF error, ending in 'name:')."""
    prefix = "{{function_node __wrapped__%s_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
    assert console.op_error_reason(prefix % "DecodeJpeg" + "jpeg::Uncompress failed. Invalid JPEG data or crop "
                                   "window. [Op:DecodeJpeg]") == (
        "jpeg::Uncompress failed. Invalid JPEG data or crop window.")
    assert console.op_error_reason(prefix % "DecodeImage" + "Invalid GIF data (size 24), failed to slurp gif file: "
                                   "Wrong record type detected [Op:DecodeImage] name: ") == (
        "Invalid GIF data (size 24), failed to slurp gif file: Wrong record type detected")
    assert console.op_error_reason("Input is empty. [Op:DecodePng] name: decode") == "Input is empty."
    assert console.op_error_reason("{{node a}} {{node b}} plain") == "plain"
    assert console.op_error_reason("no decoration") == "no decoration"


def test_the_program_is_named_as_it_was_run(monkeypatch):
    """``python -m fcn_keras.train``: the module; a script, ``python -c`` or a folder run as
    ``python folder`` (whose ``__main__``'s spec is named ``__main__``): ``sys.argv[0]``."""
    import importlib.machinery
    import types

    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["tools/app"])
    for spec, program in ((importlib.machinery.ModuleSpec("fcn_keras.train", None), "fcn_keras.train"),
                          (None, "tools/app"), (importlib.machinery.ModuleSpec("__main__", None), "tools/app")):
        main.__spec__ = spec
        assert console._program() == program


@pytest.mark.parametrize("module", ["fcn_keras.train", "fcn_keras.evaluate", "fcn_keras.export",
                                    "fcn_keras.data.convert", "fcn_keras.data.download", "fcn_keras.caffe_import"])
def test_unexpected_arguments_are_one_line_and_status_2(module, capsys):
    """Not absl's UsageError, which exits with status 1 after printing every flag."""
    assert importlib.import_module(module).main([module, "stray.jpg"]) == 2
    assert capsys.readouterr().err == (f"{module}: error: unexpected arguments: ['stray.jpg'] "
                                       f"(see python -m {module} --help)\n")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_flags_absl_refuses_are_one_line_and_status_2_and_ctrl_c_is_130():
    """Not absl's 'FATAL Flags parsing error' with status 1, the status of a failure while running."""
    result = _run("-m", "fcn_keras.data.convert", "--output_dir=unused", "--shard_size=0")
    assert result.returncode == 2 and "FATAL" not in result.stderr
    assert ("fcn_keras.data.convert: error: flag --shard_size=0: 0 is not a positive integer "
            "(see python -m fcn_keras.data.convert --help)\n") in result.stderr
    result = _run("-m", "fcn_keras.data.convert", "--shard_size=3")  # --output_dir is required.
    assert result.returncode == 2
    assert "fcn_keras.data.convert: error: flag --output_dir=None: Flag --output_dir must have a value" in result.stderr
    result = _run("benchmarks/fc6.py", "--no_such_flag=1")  # A script: named by its path.
    assert result.returncode == 2
    assert result.stderr.endswith("benchmarks/fc6.py: error: Unknown command line flag 'no_such_flag' "
                                  "(see python benchmarks/fc6.py --help)\n")
    script = "from fcn_keras.console import run_cli\ndef main(argv):\n    raise KeyboardInterrupt\nrun_cli(main)\n"
    result = _run("-c", script)
    assert result.returncode == 130 and result.stderr.endswith("\n-c: interrupted\n") and "Traceback" not in result.stderr


def test_counts_take_the_noun_in_the_right_number():
    from fcn_keras.console import counted

    assert [counted(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert counted(1, "hidden entry", "hidden entries") == "1 hidden entry"
    assert counted(5, "hidden entry", "hidden entries") == "5 hidden entries"
