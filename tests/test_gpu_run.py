"""experiments/gpu_run.sh's staging protocol without a GPU: a bundle packed into parts, received
one part per (simulated) device call, refused when parts are missing or mixed, unpacked and
checked; `all` refuses to start without the bundle. The packages of the real bundle (TensorFlow
and Keras for the device's Python) are not downloaded here: the fake site links this
environment's TensorFlow."""

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import tensorflow as tf

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "experiments" / "gpu_run.sh"
WEIGHTS = "vgg16_imagenet_notop_torchvision.weights.h5"

pytestmark = pytest.mark.skipif(shutil.which("xz") is None or shutil.which("split") is None, reason="needs xz and split")


def _bundle(folder: Path, payload: bytes) -> Path:
    """A folder named bundle shaped like stage's: site.tar.xz (a link to this environment's
    tensorflow package), voc2012_records/, the weights file (here ``payload``)."""
    bundle = folder / "bundle"
    (bundle / "voc2012_records").mkdir(parents=True)
    (bundle / WEIGHTS).write_bytes(payload)
    with tarfile.open(bundle / "site.tar.xz", "w:xz") as site:
        info = tarfile.TarInfo("tensorflow")
        info.type, info.linkname = tarfile.SYMTYPE, str(Path(tf.__file__).parent)
        site.addfile(info)
    return bundle


def _script_tree(root: Path) -> Path:
    (root / "experiments").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "experiments" / "gpu_run.sh")
    return root


def _run(tree: Path, *verbs: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "experiments/gpu_run.sh", *verbs], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300)


def _device_call(tmp_path: Path, parts: Path, k: int | None, *verbs: str, env: dict,
                 keep: bool = False) -> subprocess.CompletedProcess:
    """A device call: a fresh copy of the tree carrying only part ``k`` (or none); with ``keep``,
    the earlier calls' parts stay in the tree (the device tool may keep ignored folders)."""
    device = tmp_path / "device"
    if not (keep and device.is_dir()):
        shutil.rmtree(device, ignore_errors=True)
        _script_tree(device)
    if k is not None:
        shutil.copytree(parts / f".gpu{k}", device / f".gpu{k}", dirs_exist_ok=True)
    return _run(device, *verbs, env=env)


@pytest.fixture()
def env(tmp_path):
    bin_dir = tmp_path / "bin"  # python3 = this interpreter (and its environment), as on the device
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STAGE": str(tmp_path / "stage"),
            "SITE": str(tmp_path / "site"), "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
            "PART_SIZE": "8k", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "BENCH_NAME": "h200"}


def test_parts_are_received_checked_and_unpacked(tmp_path, env):
    here = _script_tree(tmp_path / "here")
    (here / ".gpu0").mkdir()  # stage_step's wheels: no part of a staging, kept
    (here / ".gpu0" / "keras-3.15.1-py3-none-any.whl").write_bytes(b"wheel")
    packed = _run(here, "pack", str(_bundle(tmp_path / "a", os.urandom(10_000))), env=env)
    assert packed.returncode == 0, packed.stderr
    assert sorted(p.name for p in here.glob(".gpu*")) == [".gpu0", ".gpu1", ".gpu2", ".gpu3"]
    assert (here / ".gpu0" / "keras-3.15.1-py3-none-any.whl").is_file()
    assert "staged 3 parts of at most 8k" in packed.stdout
    assert (here / ".gpu3" / "part-3-of-3").is_file() and (here / ".gpu3" / "bundle.sha256").is_file()

    # Part 2 first: part 1 would have been received on a machine given back since. Refused.
    result = _device_call(tmp_path, here, 2, "receive", env=env)
    assert result.returncode == 4 and "send every part again" in result.stderr
    shutil.rmtree(env["STAGE"])
    for k in (1, 2):  # the normal progression
        result = _device_call(tmp_path, here, k, "receive", env=env)
        assert result.returncode == 0, result.stderr
        assert f"received part {k} of 3; missing: {' '.join(str(j) for j in range(k + 1, 4))}" in result.stdout
    result = _device_call(tmp_path, here, 3, "receive", env=env)
    assert result.returncode == 0, result.stderr
    assert f"tensorflow {tf.__version__}" in result.stdout and "bundle unpacked in" in result.stdout
    assert (Path(env["SITE"]) / "tensorflow").is_dir() and (Path(env["STAGE"]) / "bundle" / WEIGHTS).is_file()
    assert not list(Path(env["STAGE"]).glob("part-*"))  # parts removed once unpacked
    # Again with no part: nothing to do.
    result = _device_call(tmp_path, here, None, "receive", env=env)
    assert result.returncode == 0 and "bundle already unpacked" in result.stdout
    # The work is fitted to the call's clock: with too little of LIMIT_S left nothing starts
    # (timeout 0 would mean no limit at all).
    result = _device_call(tmp_path, here, None, "all", env={**env, "LIMIT_S": "20"})
    assert result.returncode == 0, result.stderr
    assert "of LIMIT_S=20: experiment not started" in result.stdout and "benchmark not started" in result.stdout
    assert "experiment incomplete" in result.stdout


def test_mixed_parts_and_a_missing_bundle_are_refused(tmp_path, env):
    first, second = _script_tree(tmp_path / "first"), _script_tree(tmp_path / "second")
    for tree, seed in ((first, b"a"), (second, b"b")):
        assert _run(tree, "pack", str(_bundle(tmp_path / seed.decode(), seed * 10_000)), env=env).returncode == 0
    for tree, k in ((first, 1), (first, 2), (second, 3)):
        result = _device_call(tmp_path, tree, k, "receive", env=env)
    assert result.returncode == 5 and "the 3 parts do not make the staged bundle" in result.stderr
    assert not (Path(env["SITE"]) / "tensorflow").exists()
    # The work itself refuses to start without an unpacked bundle.
    result = _device_call(tmp_path, first, None, "all", env=env)
    assert result.returncode == 3 and "send the parts again" in result.stderr
    assert _run(first, "pack", str(tmp_path / "a"), env=env).returncode == 2  # not a folder named bundle


def test_parts_kept_in_the_tree_and_a_repeated_receive_all(tmp_path, env):
    """Where the machine keeps the earlier calls' .gpuK folders in the tree, each call still
    takes the part it carries; a second `receive all` after unpacking goes on with `all`."""
    here = _script_tree(tmp_path / "here")
    assert _run(here, "pack", str(_bundle(tmp_path / "a", os.urandom(10_000))), env=env).returncode == 0
    for k in (1, 2):
        result = _device_call(tmp_path, here, k, "receive", env=env, keep=True)
        assert result.returncode == 0, result.stderr
        assert f"received part {k} of 3" in result.stdout
    result = _device_call(tmp_path, here, 3, "receive", env=env, keep=True)
    assert result.returncode == 0 and "bundle unpacked in" in result.stdout, result.stderr
    result = _device_call(tmp_path, here, 3, "receive", "all", env={**env, "LIMIT_S": "20"}, keep=True)
    assert result.returncode == 0, result.stderr
    assert "bundle already unpacked" in result.stdout and "experiment not started" in result.stdout


def _archive(path: Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_collect_checks_and_swaps_in_what_came_back(tmp_path, env):
    here = _script_tree(tmp_path / "here")
    files_at = tmp_path / "files_at"
    files_at.mkdir()
    result = _run(here, "collect", str(files_at), env=env)
    assert result.returncode == 1 and "no *_train_step.md, bench.tar.gz, bench.log or voc2012-gpu.tar.gz" in result.stderr

    # A partial run: FCN-32s only, and its log; an earlier collect's stale file does not stay.
    stale = here / "experiments" / "results" / "voc2012-gpu" / "fcn8s" / "summary.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    _archive(files_at / "voc2012-gpu.tar.gz", {"results.json": '{"complete": false}', "results.md": "# partial",
                                               "fcn32s/log.csv": "epoch\n0\n"})
    (files_at / "experiment.log").write_text("fcn32s: ...")
    _archive(files_at / "bench.tar.gz", {"h200.md": "| table |", "h200.jsonl": "{}"})
    result = _run(here, "collect", str(files_at), env=env)
    assert result.returncode == 0, result.stderr
    assert "experiment: PARTIAL" in result.stdout
    run = here / "experiments" / "results" / "voc2012-gpu"
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == [
        "experiment.log", "fcn32s/log.csv", "results.json", "results.md"]
    assert (here / "benchmarks" / "results" / "h200.md").read_text() == "| table |"
    # Each call's bench.log is appended to the earlier calls'.
    (files_at / "bench.log").write_text("first call\n")
    assert _run(here, "collect", str(files_at), env=env).returncode == 0
    (files_at / "bench.log").write_text("second call\n")
    assert _run(here, "collect", str(files_at), env=env).returncode == 0
    log = (here / "benchmarks" / "results" / "h200.log").read_text().splitlines()
    assert log[0] == "first call" and log[-1] == "second call" and log[-2].startswith("===== gpu_run.sh collect ")

    # A damaged archive changes nothing.
    (files_at / "voc2012-gpu.tar.gz").write_bytes(b"\x1f\x8b truncated")
    (files_at / "bench.tar.gz").unlink()
    result = _run(here, "collect", str(files_at), env=env)
    assert result.returncode == 1 and "voc2012-gpu.tar.gz is damaged" in result.stderr
    assert (run / "results.md").read_text() == "# partial"
    assert not list((here / "experiments" / "results").glob(".collect-*"))


FAKE_DRIVER = '''"""Stands in for the experiment driver: records what gpu_run.sh gave it and found."""
import json, sys
from pathlib import Path
output = Path(next(a for a in sys.argv if a.startswith("--output_dir=")).split("=", 1)[1])
print("driver argv:", " ".join(sys.argv[1:]))
print("driver found:", " ".join(sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())))
(output / "fcn8s_at_once" / "eval").mkdir(parents=True)
(output / "fcn8s_at_once" / "eval" / "figure_labels.npz").write_bytes(b"npz")
(output / "results.json").write_text(json.dumps({"complete": True, "planned": ["FCN-8s at-once"]}))
'''


def test_a_fresh_machine_continues_from_the_committed_results(tmp_path, env):
    """AT_ONCE=1 on results committed without the at-once model: the work folder is seeded from
    them (stages, FCN-32s's budget, the log) and the driver is run on it."""
    device = _script_tree(tmp_path / "device")
    (device / "experiments" / "skip_experiment.py").write_text(FAKE_DRIVER)
    committed = device / "experiments" / "results" / "voc2012-gpu"
    (committed / "fcn32s" / "eval").mkdir(parents=True)
    (committed / "fcn32s" / "summary.json").write_text('{"status": "finished"}')
    (committed / "fcn32s" / "eval" / "metrics.json").write_text('{"mean_iu": 0.4}')
    (committed / "results.json").write_text(json.dumps(
        {"complete": True, "planned": ["FCN-32s", "FCN-16s", "FCN-8s"], "budget": {"stage_seconds": 73.0}}))
    (committed / "experiment.log").write_text("the earlier call's log\n")
    (tmp_path / "site" / "tensorflow").mkdir(parents=True)  # an unpacked bundle
    (tmp_path / "stage" / "bundle").mkdir(parents=True)
    (tmp_path / "stage" / "bundle" / WEIGHTS).write_bytes(b"w")
    result = _run(device, "experiment", env={**env, "AT_ONCE": "1", "LIMIT_S": "120"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpu_run: seeded" in result.stdout and "experiment complete" in result.stdout
    argv = next(line for line in result.stdout.splitlines() if line.startswith("driver argv:"))
    assert "--at_once" in argv.split() and "--stage_seconds=73" in argv.split()
    found = next(line for line in result.stdout.splitlines() if line.startswith("driver found:")).split()
    assert {"fcn32s/summary.json", "fcn32s/eval/metrics.json", "results.json"} <= set(found)
    assert "experiment.log" not in found
    log = (tmp_path / "out" / "experiment.log").read_text()
    assert log.startswith("the earlier call's log\n") and "driver argv:" in log
    with tarfile.open(tmp_path / "out" / "voc2012-gpu.tar.gz") as archive:
        names = {name.lstrip("./") for name in archive.getnames()}
    assert {"fcn32s/summary.json", "fcn8s_at_once/eval/figure_labels.npz", "results.json"} <= names
    # The folder exists now: a continuation on the same machine is not seeded again.
    result = _run(device, "experiment", env={**env, "AT_ONCE": "1", "LIMIT_S": "120"})
    assert "gpu_run: seeded" not in result.stdout


def test_committed_tables_are_not_measured_again(tmp_path, env):
    """`bench` on a tree whose extra tables are committed runs only the throughput
    configurations (which skip their committed .jsonl records themselves)."""
    device = _script_tree(tmp_path / "device")
    (device / "benchmarks" / "results").mkdir(parents=True)
    for name in ("throughput", "fc6", "conv_layers", "train_step", "deconvolution", "pipeline"):
        (device / "benchmarks" / f"{name}.py").write_text(f"import sys\nprint('ran {name}', *sys.argv[1:])\n")
    tables = ("h200_fc6.md", "h200_im2col.md", "h200_layers.md", "h200_train_step.md", "h200_reshape_pool.md",
              "h200_steady.md", "h200_deconvolution.md", "h200_pipeline.txt", "h200_layers_im2col.md")
    for table in tables:
        (device / "benchmarks" / "results" / table).write_text("committed")
    # A table a call left partial is no table: measured again.
    (device / "benchmarks" / "results" / "h200_steady.md").write_text("# fit\n\n**Partial**: not measured (yet): x.\n")
    (tmp_path / "site" / "tensorflow").mkdir(parents=True)  # an unpacked bundle
    (tmp_path / "stage" / "bundle").mkdir(parents=True)
    (tmp_path / "stage" / "bundle" / WEIGHTS).write_bytes(b"w")
    result = _run(device, "bench", env={**env, "LIMIT_S": "120"})
    assert result.returncode == 0, result.stdout + result.stderr
    for table in tables:
        if table != "h200_steady.md":
            assert f"benchmarks/results/{table} is committed: not measured again" in result.stdout
    assert "benchmarks/results/h200_steady.md is partial: measured again" in result.stdout
    ran = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("ran ")]
    # the issue's setting, the steady fit, the reference, the profile
    assert ran == ["throughput", "throughput", "throughput", "throughput"]
    assert "bench complete" in result.stdout

    for table in ("h200_fc6.md", "h200_im2col.md", "h200_layers.md", "h200_train_step.md", "h200_reshape_pool.md",
                  "h200_steady.md", "h200_layers_im2col.md"):  # not committed: measured
        (device / "benchmarks" / "results" / table).unlink()
    result = _run(device, "bench", env={**env, "LIMIT_S": "120"})
    ran = [line.split(maxsplit=2)[1:] for line in result.stdout.splitlines() if line.startswith("ran ")]
    # What is investigated first (the training step's parts, then reshape poolings), then the
    # issue's setting with the default models, then the other tables not committed.
    assert [name for name, _ in ran][:7] == ["train_step", "throughput", "throughput", "fc6", "throughput",
                                             "conv_layers", "throughput"]
    assert "h200_train_step.md" in ran[0][1]
    reshape = ran[1][1].split()
    assert "--fc6_implementation=im2col" in reshape and "--pool_implementation=reshape" in reshape
    assert "--profile" in reshape and "--variants=8s" in reshape
    assert [a for a in reshape if a.startswith("--output=")] == [f"--output={tmp_path / 'work'}/bench/h200_reshape_pool.md"]
    issue = ran[2][1].split()
    assert "--variants=8s,16s,32s" in issue and f"--output={tmp_path / 'work'}/bench/h200.md" in issue
    assert not [a for a in issue if "implementation" in a]  # build_fcn's defaults
    # fc6 as im2col: FCN-8s in the issue's setting with its own table and the block profile.
    im2col = ran[4][1].split()
    assert "--variants=8s" in im2col and "--fc6_implementation=im2col" in im2col and "--profile" in im2col
    assert [a for a in im2col if a.startswith("--output=")] == [f"--output={tmp_path / 'work'}/bench/h200_im2col.md"]
    assert "--sizes=512" in im2col and "--input_pipeline=tfrecord" in im2col
    assert "h200_layers.md" in ran[5][1]
    assert "--batch_sizes=16" in ran[6][1] and "--output=" in ran[6][1] and "h200_steady.md" in ran[6][1]
    assert ran[7][0] == "conv_layers" and "--also_im2col=block1_conv1,block1_conv2" in ran[7][1]
    assert "h200_layers_im2col.md" in ran[7][1]


def test_a_failing_step_does_not_stop_the_others_but_a_timeout_does(tmp_path, env):
    """A script that crashes (jax.profiler on a new GPU, say) is reported and the next tables are
    measured; one stopped by the time limit (status 124) ends the benchmark."""
    device = _script_tree(tmp_path / "device")
    (device / "benchmarks" / "results").mkdir(parents=True)
    for name in ("throughput", "fc6", "conv_layers", "deconvolution", "pipeline"):
        (device / "benchmarks" / f"{name}.py").write_text(f"import sys\nprint('ran {name}', *sys.argv[1:])\n")
    (device / "benchmarks" / "train_step.py").write_text("import sys\nprint('ran train_step')\nsys.exit(int(sys.argv[-1]))\n")
    (tmp_path / "site" / "tensorflow").mkdir(parents=True)  # an unpacked bundle
    (tmp_path / "stage" / "bundle").mkdir(parents=True)
    (tmp_path / "stage" / "bundle" / WEIGHTS).write_bytes(b"w")
    result = _run(device, "bench", env={**env, "LIMIT_S": "120", "EXTRA_STEP_FLAGS": "1"})
    ran = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("ran ")]
    assert ran[0] == "train_step" and len(ran) > 5 and "bench stopped (status 1)" in result.stdout
    result = _run(device, "bench", env={**env, "LIMIT_S": "120", "EXTRA_STEP_FLAGS": "124"})
    ran = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("ran ")]
    assert ran == ["train_step"] and "bench stopped (status 124)" in result.stdout


FAKE_STEP = '''"""Stands in for benchmarks/train_step.py: a report cut short by the time limit."""
import sys
output = next(a for a in sys.argv if a.startswith("--output=")).split("=", 1)[1]
open(output, "w").write("# FCN-8s training step\\n\\n**Partial**: not measured (yet): the loss alone.\\n")
print("train_step argv:", " ".join(sys.argv[1:]))
sys.exit(124)
'''


def test_step_runs_the_training_step_alone_and_collect_takes_its_report(tmp_path, env):
    """`step`: the wheels carried in .gpu0 on the path (no TensorFlow, no bundle), the report
    written into $OUT under the GPU's kind (from nvidia-smi), a cut-short call said so; `collect`
    takes the report and the log under that name."""
    import zipfile

    device = _script_tree(tmp_path / "device")
    result = _run(device, "step", env=env)
    assert result.returncode == 4 and "no wheels in .gpu0: run experiments/gpu_run.sh stage_step here" in result.stderr
    (device / ".gpu0").mkdir()
    with zipfile.ZipFile(device / ".gpu0" / "fakekeras-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("fakekeras/__init__.py", "VERSION = 'carried'\n")
    (device / "benchmarks").mkdir()
    (device / "benchmarks" / "train_step.py").write_text(FAKE_STEP + "import fakekeras; print('site:', fakekeras.VERSION)\n")
    bin_dir = Path(env["PATH"].split(":")[0])
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559 MiB, 570.00'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    step_env = {k: v for k, v in env.items() if k != "BENCH_NAME"}
    result = _run(device, "step", env=step_env)
    out = Path(env["OUT"])
    assert result.returncode == 1 and "step stopped (status 124)" in result.stdout
    assert (out / "bench_name").read_text() == "h100\n"
    assert f"train_step argv: --output={out}/h100_train_step.md" in (out / "step.log").read_text()
    assert "**Partial**" in (out / "h100_train_step.md").read_text()

    here = _script_tree(tmp_path / "here")
    result = _run(here, "collect", str(out), env=env)  # BENCH_NAME=h200 here: the call's own name wins
    assert result.returncode == 0, result.stderr
    assert "benchmarks/results/h100_train_step.md: PARTIAL" in result.stdout
    assert (here / "benchmarks" / "results" / "h100_train_step.md").read_text() == (out / "h100_train_step.md").read_text()
    assert "train_step argv:" in (here / "benchmarks" / "results" / "h100.log").read_text()
    assert not (here / "benchmarks" / "results" / "h200.log").exists()
