"""benchmarks/pipeline.py end to end on the CPU: a row per pipeline, bad --data refused first."""

import os
import re
import subprocess
import sys
from pathlib import Path

from fcn_keras.data.convert import convert, split_glob
from fcn_keras.data.synthetic import make_synthetic_voc

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "pipeline.py"


def test_pipeline_benchmark_measures_every_row_and_refuses_data_matching_nothing(tmp_path):
    voc = make_synthetic_voc(tmp_path / "voc", num_train=4, num_val=1, size=(40, 48), seed=3)
    convert(voc, tmp_path / "records", splits=("train",), verbose=False)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(SCRIPT), f"--data={split_glob(tmp_path / 'records', 'train')}",
                             "--crop_size=32", "--batch_size=2", "--seconds=0.3", "--warmup_seconds=0.1"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("command: `python ") and "crop 32, batch 2, 0.3 s per row" in result.stdout
    rows = re.findall(r"^\| ([^|]+) \| ([\d,.]+) \| ([\d,.]+) \| ([\d,.]+) \|$", result.stdout, re.MULTILINE)
    assert [name.strip() for name, *_ in rows] == ["read+parse", "+decode", "modern", "modern fast-dct"]
    for _, rate, per_core, per_cpu_second in rows:
        assert min(float(v.replace(",", "")) for v in (rate, per_core, per_cpu_second)) > 0
    missing = subprocess.run([sys.executable, str(SCRIPT), f"--data={tmp_path / 'none-*.tfrecord'}"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "command:" not in missing.stdout
    assert missing.stderr.strip().splitlines()[-1] == \
        f"pipeline.py: error: --data matches no file. Received: --data={tmp_path / 'none-*.tfrecord'}"
