"""pyproject.toml: `pip install .` gives the whole fcn_keras package (subpackages included),
importable from any folder, with requirements.txt's dependencies."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="no setuptools to build with offline")
def test_pip_install_gives_the_package_and_its_dependencies(tmp_path):
    source = tmp_path / "source"  # A copy: building writes build/ and *.egg-info beside the sources.
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "fcn_keras", source / "fcn_keras", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(source)], check=True, capture_output=True, text=True, timeout=300)

    packaged = {p.relative_to(target / "fcn_keras").as_posix() for p in (target / "fcn_keras").rglob("*.py")}
    shipped = {p.relative_to(REPO_ROOT / "fcn_keras").as_posix() for p in (REPO_ROOT / "fcn_keras").rglob("*.py")}
    assert packaged == shipped and "data/convert.py" in packaged
    (metadata,) = target.glob("fcn_keras-*.dist-info")
    requires = [line.split(": ", 1)[1] for line in (metadata / "METADATA").read_text().splitlines()
                if line.startswith("Requires-Dist: ")]
    listed = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(r.split("<")[0].split(">")[0] for r in requires) == sorted(
        r.split("<")[0].split(">")[0] for r in listed if r)

    # Imported from another folder, the installed copy is used, and it does not claim a git commit
    # unless FCN_KERAS_COMMIT names one (as on the GPU machine, whose copy of the tree has no .git).
    env = {**os.environ, "PYTHONPATH": str(target), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("FCN_KERAS_COMMIT", None)
    result = subprocess.run(
        [sys.executable, "-c", "import os, fcn_keras, fcn_keras.data.convert; from fcn_keras.train import git_commit; "
         "print(fcn_keras.__file__); print(git_commit()); os.environ['FCN_KERAS_COMMIT'] = 'abc123'; "
         "print(git_commit())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(target / "fcn_keras" / "__init__.py"), "None", "abc123"]
