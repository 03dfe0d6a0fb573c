"""benchmarks/train_step.py: the training step's parts per model configuration, on JAX's CPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "train_step.py"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
# Runs the script with TensorFlow impossible to import, as on the GPU machine (gpu_run.sh step).
WITHOUT_TENSORFLOW = """
import runpy, sys
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError("no TensorFlow here: " + name)
sys.meta_path.insert(0, NoTensorFlow())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_benchmark_times_every_part_and_pooling_without_tensorflow(tmp_path):
    pytest.importorskip("jax")
    output = tmp_path / "step.md"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, str(SCRIPT), "--size=32", "--batch_size=2", "--steps=1", "--warmup=1", "--precision=float32",
         "--fc_units=8", "--peak_size=64", "--configs=conv/pool,im2col/reshape", "--profile_calls=1",
         f"--output={output}"],
        capture_output=True, text=True, env=ENV, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text()
    assert text in result.stdout and "batch 2, precision float32" in text
    assert "**Partial**" not in text  # everything was measured
    optimizer = float(re.search(r"the same in every configuration\): ([\d.]+) ms", text).group(1))
    rows = [_cells(line) for line in text.splitlines() if re.match(r"\| (conv|im2col) / ", line)]
    assert [r[0] for r in rows] == ["conv / pool", "im2col / reshape"]
    for row in rows:
        forward, both, fit, rest, _, _, fit_img_s, infer, _, infer_img_s = (float(v) for v in row[1:])
        assert 0 < forward and 0 < both and 0 < optimizer and 0 < fit and 0 < infer
        assert rest == pytest.approx(fit - both - optimizer, abs=0.02)
        assert fit_img_s == pytest.approx(2e3 / fit, rel=0.01, abs=0.06)  # img/s of the fit step (1 decimal)
        assert infer_img_s == pytest.approx(2e3 / infer, rel=0.01, abs=0.06)
    # Printed as each part is measured, the training step of every configuration first.
    order = [line.split(":")[0] for line in result.stdout.splitlines() if line.endswith(" ms") and " of " in line]
    assert order[:4] == ["forward + backward of conv / pool", "forward + backward of im2col / reshape",
                         "fit step of conv / pool", "fit step of im2col / reshape"]
    tables = text.split("## Kernel profile")[0]  # the profiles below have block rows of their own
    pools = [line for line in tables.splitlines() if re.match(r"\| block\d_pool ", line)]
    # 'same' geometry at 32x32: block1_pool sees 32x32x64, block5_pool 2x2x512.
    assert [p.split("|")[1].strip() for p in pools] == [f"block{b}_pool" for b in range(1, 6)]
    assert "| block1_pool | 32x32x64 |" in text and "| block5_pool | 2x2x512 |" in text
    assert re.search(r"The loss alone .*: \d+\.\d+ ms", text)
    # Each configuration's forward+backward, traced: kernel time by layer, forward and backward.
    sections = text.split("## Kernel profile of the forward + backward: ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["conv / pool", "im2col / reshape"]
    for section in sections:
        assert "traced over 1 calls with jax.profiler" in section
        conv = re.search(r"^\| block1_conv2 \| ([\d.]+) \| ([\d.]+) \|", section, re.M)
        assert conv and float(conv.group(1)) > 0 and float(conv.group(2)) > 0, section[:3000]
        assert "| kind of kernel |" in section and "longest instructions" in section


@pytest.mark.parametrize("flag,message", [
    ("--configs=conv/avg", r"--configs entries must be FC6/POOL with FC6 in \('conv', 'im2col'\) and POOL in "
                           r"\('pool', 'reshape'\)\. Received: 'conv/avg'"),
    ("--steps=0", r"--steps must be >= 1\. Received: --steps=0"),
    ("--configs=", r"--configs must name at least one FC6/POOL configuration"),
    ("--profile_calls=-1", r"--profile_calls must be >= 0\. Received: --profile_calls=-1"),
])
def test_bad_flags_are_reported_in_one_line(flag, message):
    result = subprocess.run([sys.executable, str(SCRIPT), flag], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2 and re.search("train_step.py: error: " + message, result.stderr), result.stderr[-2000:]


def test_other_backends_are_refused():
    result = subprocess.run([sys.executable, str(SCRIPT), "--size=32"], capture_output=True, text=True,
                            env={**ENV, "KERAS_BACKEND": "tensorflow"}, timeout=300)
    assert result.returncode == 2 and "run it with KERAS_BACKEND=jax. Received: backend 'tensorflow'" in result.stderr


def test_a_partial_report_names_what_is_missing():
    """What a time limit leaves: the parts measured, '-' for the others, and a line naming them."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import train_step

    header = {"Device": "gpu: test"}
    parts = {"im2col / reshape": {"forward + backward": 20.0}, "im2col / pool": {}}
    text = train_step.render(parts, [], None, 8, 222.6, 750.0, header,
                             missing=["fit step of im2col / reshape", "the loss alone"])
    assert "**Partial**: not measured (yet): fit step of im2col / reshape; the loss alone." in text
    row = next(_cells(line) for line in text.splitlines() if line.startswith("| im2col / reshape |"))
    # fwd+bwd % peak = 3 x 222.6 GFLOP x 8 images / 20 ms / 750 TFLOP/s
    assert row == ["im2col / reshape", "-", "20.00", "-", "-", f"{100 * 3 * 222.6 * 8 / 20 / 750:.1f}", "-", "-",
                   "-", "-", "-"]
    assert "| im2col / pool | - | - |" in text and "max_pool fwd" not in text and "The loss alone" not in text
    assert "**Partial**" not in train_step.render(parts, [], None, 8, 222.6, 750.0, header)
