"""The FLOP counter against hand computations, and the throughput benchmark end to end (CPU)."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from fcn_keras.flops import TRAIN_FLOPS_FACTOR, fcn_flops, forward_flops, layer_flops, model_flops
from fcn_keras.model import build_fcn

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "throughput.py"


# --- FLOP counter: hand computations ---------------------------------------------------------


def _single(layer: keras.layers.Layer, input_shape: tuple[int, ...]) -> keras.Model:
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def test_single_convolution():
    # 'valid' 3x3 on 10x12x3 -> 8x10x8: 8*10 positions x 8 filters x 3*3*3 MACs, 2 FLOPs each.
    model = _single(keras.layers.Conv2D(8, 3, name="conv"), (10, 12, 3))
    assert model_flops(model) == {"conv": 2 * 8 * 10 * 8 * 27}
    # Strided 'same' 5x5 on 9x9x4 -> 5x5x6; grouped (2 groups: 2 input channels per filter).
    strided = _single(keras.layers.Conv2D(6, 5, strides=2, padding="same", groups=2), (9, 9, 4))
    assert forward_flops(strided) == 2 * 5 * 5 * 6 * 25 * 2


def test_one_vgg_block():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, keras.layers.MaxPooling2D(2)(x))
    # conv1: 32*32*64 outputs x 27 MACs; conv2: 32*32*64 x 576; pooling and ReLU are not counted.
    assert forward_flops(model) == 2 * (32 * 32 * 64 * 27 + 32 * 32 * 64 * 576) == 79_036_416


def test_transposed_convolution_and_dense():
    # Each of the 5*5*21 inputs scatters a 4x4x21 patch: 5*5*21*16*21 MACs.
    deconv = _single(keras.layers.Conv2DTranspose(21, 4, strides=2, use_bias=False), (5, 5, 21))
    assert forward_flops(deconv) == 2 * 5 * 5 * 21 * 16 * 21
    assert forward_flops(_single(keras.layers.Dense(4), (10,))) == 2 * 10 * 4
    assert layer_flops(keras.layers.ReLU()) == 0


def test_deconvolution_counts_its_input_channels_dense_its_positions_and_nested_models_their_layers():
    # 4*6 inputs of 3 channels each scatter a 3x3x5 patch: input channels and filters both count.
    deconv = _single(keras.layers.Conv2DTranspose(5, 3, strides=2, use_bias=False), (4, 6, 3))
    assert forward_flops(deconv) == 2 * 4 * 6 * 3 * 9 * 5
    # A Dense on a sequence applies to each of its 7 positions.
    assert forward_flops(_single(keras.layers.Dense(4), (7, 10))) == 2 * 7 * 10 * 4
    inner = _single(keras.layers.Conv2D(8, 3, name="conv"), (10, 12, 3))
    inputs = keras.Input((10, 12, 3))
    outer = keras.Model(inputs, keras.layers.ReLU()(inner(inputs)))
    assert model_flops(outer) == {inner.name: 2 * 8 * 10 * 8 * 27}


def test_fcn_reference_geometry_counts_the_padding():
    model = build_fcn("32s", input_shape=(32, 32, 3), fc_units=8)
    counts = model_flops(model)
    # 32 + 2*100 = 232, valid conv1_1 -> 230; ceil pools 115, 58, 29, 15, 8; valid 7x7 fc6 -> 2.
    assert counts["block1_conv1"] == 2 * 230 * 230 * 64 * 27
    assert counts["block5_conv3"] == 2 * 15 * 15 * 512 * 9 * 512
    assert counts["fc6"] == 2 * 2 * 2 * 8 * 49 * 512
    # upscore: 2x2x21 inputs, 64x64 kernel, 21 outputs (its cropped border is computed too).
    assert counts["upscore"] == 2 * 2 * 2 * 21 * 64 * 64 * 21


def test_fcn_same_geometry_total_by_hand():
    model = build_fcn("32s", input_shape=(32, 32, 3), fc_units=8, geometry="same")
    macs, channels, size = 0, 3, 32
    for filters, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(convs):
            macs += size * size * filters * 9 * channels
            channels = filters
        size //= 2
    # pool5 is 1x1: 'same' fc6 (7x7), fc7 (1x1), score_fr, then the 64x64 stride-32 deconvolution.
    trunk = macs + 8 * 49 * 512 + 8 * 8
    macs = trunk + 21 * 8 + 21 * 64 * 64 * 21
    assert forward_flops(model) == 2 * macs
    assert fcn_flops("32s", 32, 32, geometry="same", fc_units=8) == 2 * macs
    # The class count is that of the head: 5 classes in score_fr and upscore.
    assert fcn_flops("32s", 32, 32, geometry="same", fc_units=8, num_classes=5) == 2 * (trunk + 5 * 8 + 5 * 64 * 64 * 5)
    assert TRAIN_FLOPS_FACTOR == 3


def test_dynamic_shapes_are_refused():
    with pytest.raises(ValueError, match="static shapes.*block1_conv1|block1_conv1.*static shapes"):
        forward_flops(build_fcn("32s", fc_units=8))
    # fcn_flops builds its model at a static size: the arguments it was given are named.
    with pytest.raises(ValueError, match=r"height must be an integer >= 1\. Received: height=None"):
        fcn_flops("8s", None, 5)
    with pytest.raises(ValueError, match=r"width must be an integer >= 1\. Received: width=0"):
        fcn_flops("8s", 5, 0)


# --- Benchmark helpers -----------------------------------------------------------------------


def test_parse_size_and_table_rendering():
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    assert throughput.parse_size("512") == (512, 512)
    assert throughput.parse_size("375x500") == (375, 500)
    for bad in ("0", "12x", "axb"):
        with pytest.raises(ValueError, match=f"--sizes entries must be N or HxW with positive integers. Received: '{bad}'"):
            throughput.parse_size(bad, "--sizes entries")
    with pytest.raises(ValueError, match="--batch_sizes must be a list of positive integers"):
        throughput._positive_ints(["8", "0"], "batch_sizes")
    setup = {"backend": "jax", "device": "gpu: test", "precision": "bf16", "geometry": "reference", "fc_units": 4096,
             "num_classes": 21, "input_pipeline": "tfrecord", "fc6_implementation": "im2col", "pool_implementation": "pool"}
    call = {"command": "`python benchmarks/throughput.py --sizes=512`", "commit": "abc1234", "date": "2026-12-05 10:00:00 UTC"}
    record = {"kind": "config", "setup": setup, "variant": "8s", "size": "512x512", "batch": 8,
              "forward_gflop_per_image": 200.0, "train_img_s": 400.0, "infer_img_s": 1000.0, "latency_ms": 3.5,
              "tfrecord_train_img_s": 380.0, "peak": {"tflops": 800.0, "n": 8192, "runs": 10}, "call": call}
    text = throughput.render_markdown([record], setup)
    rows = _table_rows(text)
    assert list(rows) == ["8s"]
    row = rows["8s"][0]
    assert row["train TFLOP/s"] == 240.0  # 400 img/s x 200 GFLOP x 3
    assert row["train % peak"] == 30.0
    assert row["infer TFLOP/s"] == 200.0 and row["infer % peak"] == 25.0
    assert row["TFRecords / synthetic %"] == 95.0
    assert row["steady train img/s (TFRecords)"] == row["steady TFRecords / synthetic %"] == "-"  # older records
    steady = throughput.render_markdown([{**record, "tfrecord_steady_train_img_s": 396.0}], setup)
    assert _table_rows(steady)["8s"][0]["steady TFRecords / synthetic %"] == 99.0
    assert "100-pixel input padding" in text and "3 x forward" in text
    # --profile records: a block's TFLOP/s is its FLOPs x batch over its time, its share of the last prefix's time.
    profile = {"kind": "profile", "setup": setup, "variant": "8s", "size": "512x512", "batch": 8, "blocks": [
        {"block": "block1", "gflop_per_image": 10.0, "prefix_ms": 2.0, "ms": 2.0},
        {"block": "head", "gflop_per_image": 30.0, "prefix_ms": 8.0, "ms": 6.0}], "peak": record["peak"], "call": call}
    text = throughput.render_markdown([record, profile], setup)
    table = text[text.index("## Forward time by block: FCN-8s, 512x512, batch 8"):]
    assert "| block1 | 10 | 2 | 25 | 40 | 5 |" in table  # 10 GFLOP x 8 / 2 ms = 40 TFLOP/s
    assert "| head | 30 | 6 | 75 | 40 | 5 |" in table
    assert "| **whole forward** | 40 | 8 | 100.0 | 40 | 5 |" in table
    assert "Kernel profile" not in table  # records without one (TensorFlow, or before kernel profiles)
    kernels = throughput.render_markdown([record, {**profile, "kernels": ["| layer | forward ms |"]}], setup)
    assert "### Kernel profile of the inference forward (label maps): FCN-8s, 512x512, batch 8\n\n| layer | forward ms |" \
        in kernels


def test_each_row_is_against_the_peak_of_its_own_call():
    """Rows of two calls: each row's % peak uses the peak its call measured, and the header names
    both calls and the effective value of every setup flag."""
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    setup = {"backend": "jax", "device": "gpu: test", "precision": "bf16", "geometry": "same", "fc_units": 4096,
             "num_classes": 21, "input_pipeline": "synthetic", "fc6_implementation": "conv", "pool_implementation": "pool"}
    first = {"command": "`python benchmarks/throughput.py --batch_sizes=8`", "commit": "1111111",
             "date": "2026-12-05 10:00:00 UTC", "settings": "20 timed steps after 3 warm-up, latency median of 50"}
    second = {**first, "command": "`python benchmarks/throughput.py --batch_sizes=16`", "date": "2026-12-05 11:00:00 UTC"}
    base = {"kind": "config", "setup": setup, "variant": "8s", "size": "512x512", "forward_gflop_per_image": 200.0,
            "train_img_s": 400.0, "infer_img_s": 1000.0, "latency_ms": 3.5}
    records = [{**base, "batch": 8, "peak": {"tflops": 800.0, "n": 8192}, "call": first},
               {**base, "batch": 16, "peak": {"tflops": 600.0, "n": 8192}, "call": second}]
    text = throughput.render_markdown(records, setup)
    rows = {row["batch"]: row for row in _table_rows(text)["8s"]}
    assert rows[8]["train % peak"] == 30.0 and rows[16]["train % peak"] == 40.0  # 240 TFLOP/s of 800, of 600
    assert rows[8]["infer % peak"] == 25.0 and rows[16]["infer % peak"] == pytest.approx(33.3)
    assert "fc6_implementation conv, pool_implementation pool, input_pipeline synthetic" in text
    assert "- Measured by 2 calls" in text
    assert "  1. `python benchmarks/throughput.py --batch_sizes=8` (2026-12-05 10:00:00 UTC; commit 1111111; " in text
    assert "bf16 matmul peak 800.00 TFLOP/s (n=8192)): FCN-8s 512x512 batch 8" in text
    assert "  2. `python benchmarks/throughput.py --batch_sizes=16`" in text and "600.00 TFLOP/s" in text
    assert "predate" not in text and "Rendered" not in text
    # A record without a peak (none recorded before it) shows no % peak rather than another call's.
    assert _table_rows(throughput.render_markdown([{**records[0], "peak": None}], setup))["8s"][0]["train % peak"] == "-"


def test_records_of_earlier_versions_take_their_calls_peak_and_the_logged_command(tmp_path):
    """Old records hold no peak or call: the peak is the latest "peak" record of the same setup
    before them (their call's), the command that of the call in a log that printed that peak and
    wrote to that records file."""
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    old_setup = {"backend": "jax", "device": "gpu: test", "precision": "bf16", "geometry": "same"}
    config = {"kind": "config", "setup": old_setup, "variant": "8s", "size": "512x512", "batch": 8,
              "forward_gflop_per_image": 200.0, "train_img_s": 400.0, "infer_img_s": 1000.0, "latency_ms": 3.5,
              "blocks": [{"block": "block1", "gflop_per_image": 10.0, "prefix_ms": 2.0, "ms": 2.0}]}
    records = [
        {"kind": "peak", "setup": old_setup, "n": 8192, "tflops": 749.2999},
        config,
        {"kind": "peak", "setup": {**old_setup, "geometry": "reference"}, "n": 8192, "tflops": 700.0},  # another setup
        {"kind": "peak", "setup": old_setup, "n": 8192, "tflops": 761.19},
        {**config, "kind": "profile"},
        {"kind": "peak", "setup": {**old_setup, "fc6_implementation": "conv"}, "n": 8192, "tflops": 776.07},  # measured nothing
    ]
    log = tmp_path / "calls.log"
    log.write_text("\n".join([
        "device: gpu: test; bf16 matmul peak 749.30 TFLOP/s (n=8192)",
        "FCN-8s 512x512 batch 8: train 1 img/s",
        "# FCN-VGG16 throughput", "",
        "- Command: `KERAS_BACKEND=jax python benchmarks/throughput.py --output=/tmp/bench/h200.md`",
        "- Device: gpu: test; host: 16 CPU cores",
        "- Software: jax 0.11.2, Keras 3.15.1, Python 3.12.3",
        "- Setup: precision bf16, 20 timed steps after 3 warm-up, latency median of 50",
        "- Date: 2026-12-04 15:58 UTC", "", "## FCN-8s",
        "device: gpu: test; bf16 matmul peak 761.19 TFLOP/s (n=8192)",
        "# FCN-VGG16 throughput", "",
        "- Command: `KERAS_BACKEND=jax python benchmarks/throughput.py --output=/tmp/bench/other.md`",
        "- Date: 2026-12-04 16:02 UTC",
    ]))
    calls = throughput.parse_calls_log(log)
    assert [(c["tflops"], c["records_file"]) for c in calls] == [("749.30", "h200.jsonl"), ("761.19", "other.jsonl")]
    config_out, profile_out = throughput.attach_calls(records, tmp_path / "h200.jsonl", calls)
    assert config_out["peak"] == {"tflops": 749.2999, "n": 8192}
    assert profile_out["peak"] == {"tflops": 761.19, "n": 8192}
    assert config_out["call"]["command"] == "`KERAS_BACKEND=jax python benchmarks/throughput.py --output=/tmp/bench/h200.md`"
    assert config_out["call"]["host"] == "16 CPU cores" and config_out["call"]["date"] == "2026-12-04 15:58 UTC"
    assert config_out["call"]["settings"] == "20 timed steps after 3 warm-up, latency median of 50"
    assert profile_out["call"]["command"] is None  # the logged call with that peak wrote another records file
    text = throughput.render_markdown([config_out, profile_out], throughput.full_setup(
        {"setup": {**old_setup, "fc_units": 4096, "num_classes": 21, "input_pipeline": "synthetic"}}))
    assert "- 2 of the 2 records predate the fc6_implementation flag: measured with fc6 a `Conv2D`, " in text
    assert "- 2 of the 2 records predate the pool_implementation flag: measured with `MaxPooling2D` poolings, " in text
    # A record that names its fc6 (im2col) but predates the pooling flag: only the pooling is said.
    im2col = {**config_out, "setup": {**config_out["setup"], "fc6_implementation": "im2col"}}
    only_pool = throughput.render_markdown([im2col], throughput.full_setup(
        {"setup": {**im2col["setup"], "fc_units": 4096, "num_classes": 21, "input_pipeline": "synthetic"}}))
    assert "fc6_implementation im2col, pool_implementation pool" in only_pool and "`Conv2D`" not in only_pool
    assert "- 1 of the 1 records predate the pool_implementation flag" in only_pool
    assert f"from {log}: the call there that printed this peak" in text
    assert "command, date and software not recorded (records written before calls were recorded; bf16 matmul " \
           "peak 761.19 TFLOP/s (n=8192)): block profile FCN-8s 512x512 batch 8" in text
    assert throughput.records_file_of("`python throughput.py --output=a/b.md --records=c/d.jsonl`") == "d.jsonl"
    assert throughput.records_file_of("`python throughput.py --output x.md`") == "x.jsonl"
    assert throughput.records_file_of("`python throughput.py`") is None


@pytest.mark.parametrize("name", ["h200_conv.md", "h200_reference.md", "h200_steady.md", "h200_im2col.md"])
def test_committed_tables_come_from_the_command_written_in_them(name):
    """Each committed throughput table says the --report_only command that rendered it from the
    committed records; running it again gives the same file (but the line naming that run)."""
    path = REPO_ROOT / "benchmarks" / "results" / name
    text = path.read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("- Rendered from the records (nothing measured) by ")]
    command = re.match(r".* by `KERAS_BACKEND=\w+ python (.*)` \(", line).group(1)
    args = shlex.split(command.replace(f"--output=benchmarks/results/{name}", ""))
    assert args[0] == "benchmarks/throughput.py" and "--report_only" in args
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]

    def without_rendered_line(markdown: str) -> list[str]:
        return [line for line in markdown.strip().splitlines() if not line.startswith("- Rendered from the records")]

    assert without_rendered_line(result.stdout) == without_rendered_line(text)


def test_report_only_and_tfrecord_sizes_refuse_bad_input_before_measuring(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    missing = subprocess.run([sys.executable, str(SCRIPT), "--report_only", f"--records={tmp_path / 'none.jsonl'}"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == f"throughput.py: error: --report_only: no records file {tmp_path / 'none.jsonl'}"
    records = REPO_ROOT / "benchmarks" / "results" / "h200_reference.jsonl"
    other = subprocess.run([sys.executable, str(SCRIPT), "--report_only", f"--records={records}"],  # fc6 im2col
                           capture_output=True, text=True, env=env, timeout=300)
    assert other.returncode == 2, other.stderr[-3000:]
    assert "holds no measurement of this setup (precision bf16, geometry reference" in other.stderr
    assert "fc6_implementation im2col, pool_implementation pool); it holds: precision bf16" in other.stderr
    assert other.stderr.strip().endswith("fc6_implementation conv, pool_implementation pool")
    # A non-square size with the TFRecord pipeline: refused before any peak, data or model.
    square = subprocess.run([sys.executable, str(SCRIPT), "--input_pipeline=tfrecord", "--sizes=32,32x48",
                             "--variants=8s", "--fc_units=8", f"--cache_dir={tmp_path / 'cache'}"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert square.returncode == 2, square.stderr[-3000:]
    assert square.stderr.strip().splitlines()[-1] == \
        "throughput.py: error: --input_pipeline=tfrecord crops squares: --sizes must be N, not 32x48"
    assert "device:" not in square.stdout and "--data not given" not in square.stdout
    assert not (tmp_path / "cache").exists()
    # Found by review: a bad variant named no flag, a bad class count was refused after the
    # peak's measurement, and --data without the TFRecord pipeline was silently ignored.
    for flags, message in ((["--variants=8s,4s"], "--variants: variant must be one of ('32s', '16s', '8s'). Received: "
                                                  "variant='4s'"),
                           (["--num_classes=1"], "--num_classes must be >= 2. Received: --num_classes=1"),
                           ([f"--data={tmp_path}"], f"--data is read only with --input_pipeline=tfrecord (the synthetic "
                                                    f"pipeline makes its own tensors). Received: --data={str(tmp_path)!r}, "
                                                    "--input_pipeline=synthetic")):
        refused = subprocess.run([sys.executable, str(SCRIPT), "--fc_units=8", *flags], capture_output=True, text=True,
                                 env=env, timeout=300)
        assert refused.returncode == 2 and "device:" not in refused.stdout, refused.stderr[-3000:]
        assert refused.stderr.strip().splitlines()[-1] == f"throughput.py: error: {message}"


def test_peak_side_is_small_on_a_cpu():
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    assert throughput.peak_side(0, accelerator=True) == 8192
    assert throughput.peak_side(0, accelerator=False) == 1024
    assert throughput.peak_side(64, accelerator=True) == 64


def test_inference_kernel_profile_on_jax():
    """profile_blocks' label-map forward, traced on JAX's CPU: every layer's kernels, the argmax included."""
    pytest.importorskip("jax")
    code = (
        "import numpy as np; from benchmarks import throughput; from fcn_keras.model import build_fcn; "
        "from fcn_keras.inference import labels_model; "
        "model = build_fcn('8s', input_shape=(32, 32, 3), fc_units=8, geometry='same'); labeler = labels_model(model); "
        "images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype('float32'); "
        "print('\\n'.join(throughput.profile_blocks(model, labeler, images, 1, 1, profile_calls=2)[1])); "
        "print('NONE' if throughput.profile_blocks(model, labeler, images, 1, 1, profile_calls=0)[1] == [] else 'SOME')"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "traced over 2 calls with jax.profiler" in out and out.rstrip().endswith("NONE")
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if re.match(r"\| [^|]+ \| [\d.]+ \|", line)}
    for layer in ("fc6", "upscore8", "labels"):
        forward, backward = (float(v) for v in rows[layer].split("|")[2:4])
        assert forward > 0 and backward == 0, rows[layer]  # inference: no backward phase
    # XLA's CPU backend fuses whole VGG blocks (XNNPACK): such a row names its first and last layer.
    assert any(name.startswith(("block1_conv1", "preprocess")) for name in rows), list(rows)


def _table_rows(markdown: str) -> dict[str, list[dict]]:
    """``{variant: [row dict]}`` of the benchmark's tables; numeric cells as floats."""
    tables, variant, columns = {}, None, None
    for line in markdown.splitlines():
        heading = re.match(r"## FCN-(\w+)", line)
        if heading:
            variant, columns = heading.group(1), None
        elif line.startswith("| ") and variant:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if columns is None:
                columns = cells
            else:
                values = [c if "x" in c or c == "-" else float(c.replace(",", "")) for c in cells]
                tables.setdefault(variant, []).append(dict(zip(columns, values)))
    return tables


# --- Benchmark end to end --------------------------------------------------------------------


def test_benchmark_runs_on_cpu_with_the_tfrecord_pipeline_and_resumes(tmp_path):
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    output = tmp_path / "bench" / "cpu.md"
    command = [sys.executable, str(SCRIPT), "--variants=8s", "--sizes=32", "--batch_sizes=2", "--steps=2",
               "--warmup=1", "--latency_runs=2", "--fc_units=8", "--geometry=same", "--precision=float32",
               "--peak_size=64", "--peak_runs=2", "--input_pipeline=tfrecord", f"--cache_dir={tmp_path / 'records'}",
               f"--output={output}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text()
    assert "--variants=8s" in text and "device cpu: " in text
    rows = _table_rows(text)
    assert list(rows) == ["8s"] and len(rows["8s"]) == 1
    row = rows["8s"][0]
    assert row["size"] == "32x32" and row["batch"] == 2
    for column in ("train img/s", "infer img/s", "batch-1 latency ms", "train TFLOP/s", "train % peak",
                   "train img/s (TFRecords)", "TFRecords / synthetic %"):
        assert row[column] > 0, column
    # 2 steps of a tiny model: the pipeline's start-up noise may exceed them ("-" then).
    assert row["steady train img/s (TFRecords)"] == "-" or row["steady train img/s (TFRecords)"] > 0
    assert "; TFRecords " in text and "--data not given: using a synthetic VOC set" in result.stdout
    records = [json.loads(line) for line in output.with_suffix(".jsonl").read_text().splitlines()]
    (config,) = records  # no separate peak record: the peak travels with the measurement
    assert config["kind"] == "config"
    expected = forward_flops(build_fcn("8s", input_shape=(32, 32, 3), fc_units=8, geometry="same"))
    assert config["forward_gflop_per_image"] == pytest.approx(expected / 1e9)
    assert config["peak"]["n"] == 64 and config["peak"]["runs"] == 2 and config["peak"]["tflops"] > 0
    assert config["call"]["command"].startswith(f"`KERAS_BACKEND={keras.backend.backend()} python ")
    assert "--variants=8s" in config["call"]["command"] and config["call"]["date"].endswith(" UTC")
    assert row["train % peak"] == pytest.approx(
        100 * config["train_img_s"] * config["forward_gflop_per_image"] * 3 / 1e3 / config["peak"]["tflops"], rel=0.01)
    assert "fc6_implementation im2col, pool_implementation pool, input_pipeline tfrecord" in text
    peak = throughput.format_tflops(config["peak"]["tflops"])  # 3 significant digits on a CPU (below 1 TFLOP/s)
    assert "- Measured by 1 call " in text and f"bf16 matmul peak {peak} TFLOP/s (n=64, " in text
    assert f"; bf16 matmul peak {peak} TFLOP/s (n=64)" in result.stdout and float(peak) > 0

    # The same command again: nothing is measured (no peak either), the records and the table stay as they are.
    table, jsonl = output.read_text(), output.with_suffix(".jsonl").read_text()
    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already measured" in again.stdout and "nothing new to measure" in again.stdout
    assert "device:" not in again.stdout  # the line printed after measuring the peak
    assert output.read_text() == table and output.with_suffix(".jsonl").read_text() == jsonl

    # With --profile: only the block profile is measured, its blocks' FLOPs add up to the model's.
    profiled = subprocess.run([*command, "--profile"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert profiled.returncode == 0, profiled.stderr[-3000:]
    assert "profiled block1" in profiled.stdout and "already measured" not in profiled.stdout
    records = [json.loads(line) for line in output.with_suffix(".jsonl").read_text().splitlines()]
    assert len([r for r in records if r["kind"] == "config"]) == 1
    (profile,) = [r for r in records if r["kind"] == "profile"]
    assert "--profile" in profile["call"]["command"] and "- Measured by 2 calls " in output.read_text()
    assert [b["block"] for b in profile["blocks"]] == [name for name, _ in throughput.PROFILE_CUTS] + [throughput.PROFILE_HEAD]
    assert sum(b["gflop_per_image"] for b in profile["blocks"]) == pytest.approx(expected / 1e9)
    layers = model_flops(build_fcn("8s", input_shape=(32, 32, 3), fc_units=8, geometry="same"))
    assert profile["blocks"][0]["gflop_per_image"] == pytest.approx((layers["block1_conv1"] + layers["block1_conv2"]) / 1e9)
    assert profile["blocks"][-1]["prefix_ms"] > 0
    assert "## Forward time by block: FCN-8s, 32x32, batch 2" in output.read_text()
    assert "already measured" in subprocess.run([*command, "--profile"], capture_output=True, text=True, cwd=tmp_path,
                                                env=env, timeout=300).stdout


def test_bf16_conv_grad_check_measures_against_float32():
    """benchmarks/bf16_conv_grad.py's measurement, in this process (TensorFlow, 3x3 input, where
    the gradient is right): bf16 rounding only, the same at every call."""
    from benchmarks import bf16_conv_grad

    row = bf16_conv_grad._measure("tensorflow", 3, runs=2)
    assert row["size"] == 3 and row["non_finite"] == 0 and row["calls_agree"] is True
    assert 0 < row["max_rel_error"] < 0.02


@pytest.mark.parametrize("args,message", [
    (["--runs=-1"], "bf16_conv_grad.py: error: --runs must be >= 1. Received: --runs=-1"),
    (["--runs", "0"], "bf16_conv_grad.py: error: --runs must be >= 1. Received: --runs=0"),
    (["--runs=abc"], "bf16_conv_grad.py: error: argument --runs: invalid int value: 'abc'"),
    (["500"], "bf16_conv_grad.py: error: unrecognized arguments: 500"),
])
def test_bf16_conv_grad_refuses_bad_runs_in_one_line(args, message):
    """No worker starts: a count below 1 would give failed rows (max of no calls) and status 0."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bf16_conv_grad.py"), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == message, result.stderr
    assert result.stdout == ""


def test_bf16_conv_grad_exits_1_when_a_setting_fails(tmp_path):
    """A worker that fails leaves a 'failed' row, and the status says the table has holes."""
    for name in ("tensorflow", "jax"):  # Shadow both frameworks with modules that cannot be imported.
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('no {name} here')\n")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "bf16_conv_grad.py"), "--runs=1"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert "| JAX | failed: ImportError: no jax here | | | |" in result.stdout
    assert result.stdout.count("| failed: ImportError: no tensorflow here |") == 2
    assert result.stderr.strip().splitlines()[-1] == ("bf16_conv_grad.py: 3 of 3 settings failed: TensorFlow, oneDNN on, "
                                                      "TensorFlow, oneDNN off, JAX")


def test_steady_rate_leaves_the_pipeline_start_up_out():
    """Each fit call pays the pipeline's start-up; the steady rate is that of the steps alone."""
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    class SlowStartModel:  # fit: 0.2 s of start-up, then 10 ms per step
        trainable_variables = [keras.ops.zeros((1,))]

        def fit(self, dataset, epochs, steps_per_epoch, shuffle, verbose):
            time.sleep(0.2 + 0.01 * steps_per_epoch)

    model = SlowStartModel()
    cold = throughput.train_images_per_second(model, None, batch=4, steps=10, warmup=1)
    steady = throughput.steady_train_images_per_second(model, None, batch=4, steps=10, short_img_s=cold)
    assert cold == pytest.approx(4 * 10 / 0.3, rel=0.1)  # what one short fit call sees
    assert steady == pytest.approx(4 / 0.01, rel=0.1)  # 400 img/s: the start-up left out


def test_records_of_earlier_versions_count_as_conv2d_and_maxpooling2d():
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    setup = {"backend": "jax", "geometry": "same", "fc6_implementation": "conv", "pool_implementation": "pool"}
    old = {"setup": {"backend": "jax", "geometry": "same"}}  # written before fc6 had a choice
    assert throughput.same_setup(old, setup)
    assert not throughput.same_setup(old, {**setup, "fc6_implementation": "im2col"})
    assert throughput.same_setup({"setup": {**setup, "fc6_implementation": "im2col"}}, {**setup, "fc6_implementation": "im2col"})
    assert not throughput.same_setup({"setup": {**old["setup"], "geometry": "reference"}}, setup)
    assert not throughput.same_setup(old, {**setup, "pool_implementation": "reshape"})


def test_a_record_after_a_torn_line_is_kept_and_noresume_drops_only_its_own_setup(tmp_path, capsys):
    """Found by review: a record appended to a line a kill cut short was lost with it (and
    measured again by the next call); --noresume deleted every setup's records."""
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    path = tmp_path / "r.jsonl"
    im2col, conv = {"backend": "jax", "fc6_implementation": "im2col"}, {"backend": "jax", "fc6_implementation": "conv"}
    throughput.append_record(path, {"setup": conv, "batch": 1})
    with open(path, "a") as file:
        file.write('{"setup": {"backe')  # A kill in mid-write.
    throughput.append_record(path, {"setup": im2col, "batch": 2})
    throughput.append_record(path, {"setup": im2col, "batch": 4})
    assert [r["batch"] for r in throughput.read_records(path)] == [1, 2, 4]
    assert "1 unreadable line(s) left out" in capsys.readouterr().out
    legacy = {**throughput.LEGACY_SETUP}
    throughput.drop_records_of(path, {**legacy, **im2col})
    assert throughput.read_records(path) == [{"setup": conv, "batch": 1}]
    assert "2 record(s) of this setup removed, 1 of other setups kept" in capsys.readouterr().out


def test_a_cpu_peak_is_shown_to_three_significant_digits():
    """Found by review: two decimals showed a CPU's 0.0038 TFLOP/s as 0.00 beside "% peak 498.5"."""
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import throughput

    assert [throughput.format_tflops(x) for x in (774.016, 1.0, 0.17, 0.0038123, 0.000412)] == \
        ["774.02", "1.00", "0.170", "0.00381", "0.000412"]
    assert throughput.PEAK_LINE.search(f"device: cpu; bf16 matmul peak {throughput.format_tflops(0.0038123)} TFLOP/s (n=64)")
