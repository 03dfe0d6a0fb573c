r"""Every convolution of FCN-VGG16 alone, forward and forward+backward: where a training step goes.

    KERAS_BACKEND=jax python benchmarks/conv_layers.py                   # 512x512 'same', batch 8, bf16
    python benchmarks/conv_layers.py --size=64 --batch_size=1 --steps=1 --warmup=1 \
        --precision=float32 --fc_units=16                                # CPU smoke test

The block profile of ``throughput.py --profile`` times the forward pass only. On the H200 FCN-8s's
forward at 512x512, batch 8, takes 7.3 ms while a training step takes 32 ms (3 x the forward's
FLOPs at 22 % of the peak instead of 32 %): the backward costs about 3.4 forwards instead of 2.
This script times each convolution of the trunk and the classifier (``block1_conv1`` ...
``block5_conv3``, ``fc6``, ``fc7``) on its own, with the shapes it has in the FCN built at
``--size``/``--geometry`` and with ``--fc6_implementation``: jitted ``keras.ops.conv`` (what
``Conv2D`` computes; fc6 with ``im2col``: ``fcn_keras.layers.im2col_conv``) forward, and forward
plus the gradients a training step needs (of the kernel and of the input; of the kernel alone
for ``block1_conv1``, whose input is the image). Bias, ReLU and pooling are left out (XLA fuses
them into neighbours), as are the score layers and upsamplings (``deconvolution.py`` has those).

Each row: GFLOP of the batch's forward (``fcn_keras.flops``: 2 x multiply-adds), ms and % of the
measured matmul peak forward and forward+backward (3 x forward FLOPs with the input gradient,
2 x without), backward / forward time, and the layer's share of the summed forward+backward time.
With ``--output`` the table is written there (atomically).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # the package, and the other benchmarks' helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from fc6 import FC6_FORMS, check_layer_flags, define_layer_flags, forward_and_backward  # noqa: E402
from fcn_keras.console import run_cli  # noqa: E402
from fcn_keras.flops import model_flops  # noqa: E402
from fcn_keras.model import FC6_IMPLEMENTATIONS, build_fcn  # noqa: E402
from throughput import (  # noqa: E402
    benchmark_main, device_description, matmul_peak, peak_side, report_header, seconds_per_call,
    write_report,
)

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a script)."""
    define_layer_flags("layer")
    flags.DEFINE_enum("fc6_implementation", "im2col", list(FC6_IMPLEMENTATIONS),
                      "How fc6 is computed (build_fcn's default: im2col).")
    flags.DEFINE_list("also_im2col", [], "Layers (e.g. block1_conv1) also timed as an im2col matmul, in an extra "
                      "row each (not in the sums): would Im2colConv2D pay off there too?")


# --- The layers --------------------------------------------------------------------------------


def conv_layers(size: int, geometry: str, fc_units: int) -> list[dict]:
    """The trunk's and classifier's convolutions of FCN-8s on a ``size x size`` image, in order.

    Returns:
        ``[{"name", "input_shape" (h, w, C), "kernel_shape" (k, k, C, F), "padding",
        "gflop_per_image"}]``.
    """
    model = build_fcn("8s", input_shape=(size, size, 3), geometry=geometry, fc_units=fc_units)
    flops = model_flops(model)
    return [
        {
            "name": layer.name,
            "input_shape": tuple(int(d) for d in layer.input.shape[1:]),
            "kernel_shape": tuple(int(d) for d in layer.kernel.shape),
            "padding": layer.padding,
            "gflop_per_image": flops[layer.name] / 1e9,
        }
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.name.startswith(("block", "fc"))
    ]


def measure_layer(layer: dict, batch: int, dtype: str, implementation: str, steps: int, warmup: int,
                  input_grad: bool) -> dict:
    """Forward and forward+backward ms of one layer on random data of its shapes, computed as
    ``implementation`` (``"conv"`` or ``"im2col"``)."""
    form = FC6_FORMS[implementation]
    x = keras.random.normal((batch, *layer["input_shape"]), dtype=dtype, seed=0)
    fan_in = layer["kernel_shape"][0] * layer["kernel_shape"][1] * layer["kernel_shape"][2]
    kernel = keras.random.normal(layer["kernel_shape"], stddev=fan_in ** -0.5, dtype=dtype, seed=1)
    forward, backward = forward_and_backward(form, layer["padding"], input_grad=input_grad)
    return {
        "fwd_ms": seconds_per_call(lambda v: forward(kernel, v), x, steps, warmup) * 1e3,
        # The gradients come from one compiled call; waiting for the first waits for the call.
        "fwd_bwd_ms": seconds_per_call(lambda v: backward(kernel, v)[0], x, steps, warmup) * 1e3,
    }


# --- Report ------------------------------------------------------------------------------------


def render(rows: list[dict], batch: int, peak: float, header: dict[str, str]) -> str:
    """The markdown report: a header, one row per layer, and the sums."""
    lines = ["# FCN-VGG16's convolutions alone: forward and forward+backward", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "", f"Milliseconds per call on a batch of {batch}; TFLOP/s from 2 x multiply-adds (forward+backward: "
        "3 x forward, 2 x for block1_conv1 whose input gradient a training step does not compute); bwd / fwd = "
        "(fwd+bwd ms - fwd ms) / fwd ms (2 when the backward runs as fast as the forward per FLOP); share: of "
        "the summed fwd+bwd ms. Rows named '(im2col)' (--also_im2col) time a layer as one im2col matmul "
        "instead, beside the sums.", "",
        "| layer | input | kernel | GFLOP (fwd) | fwd ms | fwd % peak | fwd+bwd ms | fwd+bwd % peak | bwd / fwd "
        "| share of fwd+bwd % |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    extra = [r for r in rows if r.get("extra")]  # alternatives, beside the model's own rows
    rows = [r for r in rows if not r.get("extra")]
    total_ms = sum(r["fwd_bwd_ms"] for r in rows)

    def line(r: dict) -> str:
        gflop = r["gflop_per_image"] * batch
        both = r["factor"] * gflop
        share = "-" if r.get("extra") else f"{100 * r['fwd_bwd_ms'] / total_ms:.1f}"
        return (
            f"| {r['name']} | {'x'.join(map(str, r['input_shape']))} | {'x'.join(map(str, r['kernel_shape']))} "
            f"({r['padding']}) | {gflop:.3g} | {r['fwd_ms']:.3f} | {100 * gflop / r['fwd_ms'] / peak:.1f} "
            f"| {r['fwd_bwd_ms']:.3f} | {100 * both / r['fwd_bwd_ms'] / peak:.1f} "
            f"| {(r['fwd_bwd_ms'] - r['fwd_ms']) / r['fwd_ms']:.2f} | {share} |"
        )

    lines += [line(r) for r in rows]
    fwd_gflop = sum(r["gflop_per_image"] for r in rows) * batch
    both_gflop = sum(r["factor"] * r["gflop_per_image"] for r in rows) * batch
    fwd_ms = sum(r["fwd_ms"] for r in rows)
    lines.append(
        f"| **sum** | | | {fwd_gflop:.3g} | {fwd_ms:.3f} | {100 * fwd_gflop / fwd_ms / peak:.1f} | {total_ms:.3f} "
        f"| {100 * both_gflop / total_ms / peak:.1f} | {(total_ms - fwd_ms) / fwd_ms:.2f} | 100.0 |"
    )
    lines += [line(r) for r in extra]
    lines += ["", f"The summed fwd+bwd time alone allows {1e3 * batch / total_ms:.1f} training images/s "
              "(no optimizer, loss, bias, ReLU, pooling or head)."]
    return "\n".join(lines) + "\n"


def run(argv: list[str]) -> str:
    """Measures every layer as the flags say; returns (and prints) the markdown."""
    check_layer_flags()
    if keras.backend.backend() != "tensorflow":
        tf.config.set_visible_devices([], "GPU")
    dtype = "bfloat16" if FLAGS.precision == "bf16" else "float32"
    layers = conv_layers(FLAGS.size, FLAGS.geometry, FLAGS.fc_units)
    unknown = sorted(set(FLAGS.also_im2col) - {layer["name"] for layer in layers})
    if unknown:
        raise ValueError(f"--also_im2col names no convolution of FCN-8s: {unknown}. Known: "
                         f"{[layer['name'] for layer in layers]}")
    device, accelerator = device_description()
    peak_n = peak_side(FLAGS.peak_size, accelerator)
    peak = matmul_peak(peak_n, 10, dtype)
    rows = []
    for index, layer in enumerate(layers):
        own = FLAGS.fc6_implementation if layer["name"] == "fc6" else "conv"
        others = ["im2col"] if layer["name"] in FLAGS.also_im2col and own != "im2col" else []
        for implementation in [own, *others]:
            row = {**layer, **measure_layer(layer, FLAGS.batch_size, dtype, implementation, FLAGS.steps, FLAGS.warmup,
                                            input_grad=index > 0),
                   "factor": 3 if index else 2}
            if implementation != own:
                row.update(name=f"{layer['name']} (im2col)", extra=True)
            rows.append(row)
            print(f"{row['name']}: fwd {row['fwd_ms']:.3f} ms, fwd+bwd {row['fwd_bwd_ms']:.3f} ms", flush=True)
    header = report_header(
        argv, device,
        f"FCN-8s at {FLAGS.size}x{FLAGS.size}, geometry {FLAGS.geometry}, fc6 {FLAGS.fc6_implementation}, "
        f"batch {FLAGS.batch_size}, precision {FLAGS.precision}, best of 3 timings of {FLAGS.steps} calls after "
        f"{FLAGS.warmup} warm-up",
        {"Matmul peak": f"{peak:.3g} TFLOP/s ({dtype} {peak_n}x{peak_n}, throughput.matmul_peak)"},
    )
    return write_report(render(rows, FLAGS.batch_size, peak, header), FLAGS.output)


def main(argv: list[str]) -> int | None:
    return benchmark_main("benchmarks/conv_layers.py", run, argv)


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
