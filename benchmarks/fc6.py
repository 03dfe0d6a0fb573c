r"""fc6 and fc7, the slowest part of FCN on a GPU, computed three ways.

    KERAS_BACKEND=jax python benchmarks/fc6.py                       # 512x512 'same', batch 8, bf16
    python benchmarks/fc6.py --size=64 --batch_size=1 --steps=1 --warmup=1 --precision=float32 \
        --fc_units=64                                                # CPU smoke test

On the H200 (benchmarks/results/h200_conv.md, block profile) fc6 + fc7 take 40 % of FCN-8s's forward
time at 22 % of the bf16 peak, while blocks 2-5 reach 41-50 %. fc6 is a 7x7 convolution from 512
to 4,096 channels on the small pool5 map (16x16 at 512x512 'same'), fc7 a 1x1 convolution from
4,096 to 4,096. As matrix products both are large (fc6 at batch 8: 2,048 x 25,088 x 4,096), so a
formulation that hands XLA one matmul may run closer to the peak than its convolution
algorithm for this shape. For the shapes of the FCN built at ``--size``/``--geometry`` this
times, jitted, forward and forward+backward (gradients of the input and the kernel):

- fc6 ``conv``: ``keras.ops.conv``, what the model's ``Conv2D`` computes;
- fc6 ``im2col``: the 49 shifted windows concatenated on the channel axis (``[B, H', W', 49 C]``,
  in the kernel's (row, column, channel) order), then one matmul with the kernel reshaped to
  ``[49 C, F]``;
- fc6 ``shifted``: the sum of 49 matmuls, one per kernel position (no patch matrix);
- fc7 ``conv`` against ``matmul`` (the 1x1 convolution as a reshape and a matmul).

Each row gives ms per call, TFLOP/s and % of the measured bf16 (or float32) matmul peak (2
multiply-adds per FLOP pair as in ``fcn_keras.flops``; forward+backward = 3 x forward) and the
largest difference from ``conv``'s output relative to its largest magnitude, so a faster
formulation is also seen to be the same function. With ``--output`` the table is written there
(atomically).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # the package, and throughput.py's helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from fcn_keras.console import run_cli  # noqa: E402
from fcn_keras.layers import im2col_conv, shifted_windows  # noqa: E402
from fcn_keras.model import build_fcn  # noqa: E402
from throughput import (  # noqa: E402
    PRECISIONS, _jit, benchmark_main, check_flags_at_least, device_description, matmul_peak, peak_side,
    report_header, seconds_per_call, write_report,
)

FLAGS = flags.FLAGS


def define_layer_flags(measured: str) -> None:
    """The flags of a benchmark that times layers of FCN-8s alone (this one, conv_layers.py)
    with the shapes they have in a ``--size`` x ``--size`` image; ``measured`` names them."""
    flags.DEFINE_integer("size", 512, f"Square image size whose {measured} shapes are measured.")
    flags.DEFINE_enum("geometry", "same", ["reference", "same"], "Network geometry (see fcn_keras.architecture).")
    flags.DEFINE_integer("batch_size", 8, "Images per batch.")
    flags.DEFINE_integer("fc_units", 4096, "fc6/fc7 channels (4096 in VGG16; small only for the smoke test).")
    flags.DEFINE_enum("precision", "bf16", list(PRECISIONS), "Compute precision.")
    flags.DEFINE_integer("steps", 20, "Back-to-back calls per timing (best of 3 timings), >= 1.")
    flags.DEFINE_integer("warmup", 2, "Untimed calls first (compilation), >= 1.")
    flags.DEFINE_integer("peak_size", 0, "Side of the square matmul that measures the peak; "
                         "0: 8192 on an accelerator, 1024 on a CPU.")
    flags.DEFINE_string("output", None, "Also write the markdown table here (atomically).")


def check_layer_flags() -> None:
    """``define_layer_flags``' counts are >= 1 (``--peak_size`` >= 0), else a ValueError naming the flag."""
    check_flags_at_least(1, "size", "batch_size", "fc_units", "steps", "warmup")
    check_flags_at_least(0, "peak_size")


# --- The formulations --------------------------------------------------------------------------


def fc6_shapes(size: int, geometry: str, fc_units: int) -> dict:
    """fc6's input shape ``(h, w, C)``, kernel size and padding in FCN-8s on a ``size x size`` image."""
    model = build_fcn("8s", input_shape=(size, size, 3), geometry=geometry, fc_units=fc_units)
    fc6 = model.get_layer("fc6")
    return {"input_shape": tuple(int(d) for d in fc6.input.shape[1:]), "kernel": int(fc6.kernel_size[0]),
            "padding": fc6.padding, "units": fc_units}


def conv(kernel, x, padding: str):
    """The model's computation: ``keras.ops.conv``, stride 1."""
    return keras.ops.conv(x, kernel, strides=1, padding=padding)


def im2col(kernel, x, padding: str):
    """One matmul: ``[B, H', W', k k C]`` patches (kernel order) times the kernel as ``[k k C, F]``
    (``fcn_keras.layers.im2col_conv``, what ``build_fcn(fc6_implementation="im2col")`` computes)."""
    return im2col_conv(x, kernel, padding)


def shifted(kernel, x, padding: str):
    """The sum over the k * k kernel positions of ``window @ kernel[i, j]``: no patch matrix."""
    k = kernel.shape[0]
    windows = shifted_windows(x, k, k, padding)
    out = None
    for index, window in enumerate(windows):
        term = keras.ops.matmul(window, kernel[index // k, index % k])
        out = term if out is None else out + term
    return out


FC6_FORMS = {"conv": conv, "im2col": im2col, "shifted": shifted}
FC7_FORMS = {"conv": conv, "matmul": im2col}  # for a 1x1 kernel im2col is a reshape and a matmul


def forward_and_backward(form, padding: str, input_grad: bool = True):
    """Jitted ``(kernel, x) -> form(kernel, x)`` and ``(kernel, x) -> d sum(out^2) / d (kernel, x)``
    (``d / d kernel`` alone, in a list, without ``input_grad``: a network's first layer)."""
    def apply(kernel, x):
        return form(kernel, x, padding)

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grads = jax.grad(lambda kernel, x: keras.ops.sum(keras.ops.square(apply(kernel, x))),
                         argnums=(0, 1) if input_grad else (0,))
    elif backend == "tensorflow":
        def grads(kernel, x):
            with tf.GradientTape() as tape:
                tape.watch([kernel, x])
                loss = tf.reduce_sum(tf.square(apply(kernel, x)))
            return tape.gradient(loss, [kernel, x] if input_grad else [kernel])
    else:
        raise ValueError(f"this benchmark supports the jax and tensorflow backends. Received: {backend!r}")
    return _jit(apply), _jit(grads)


def measure(forms: dict, kernel, x, padding: str, steps: int, warmup: int) -> list[dict]:
    """Times every formulation on the same kernel and input; compares each output with ``conv``'s."""
    rows, reference = [], None
    for name, form in forms.items():
        forward, backward = forward_and_backward(form, padding)
        out = keras.ops.convert_to_numpy(keras.ops.cast(forward(kernel, x), "float32"))
        reference = out if reference is None else reference
        difference = float(np.max(np.abs(out - reference)) / max(float(np.max(np.abs(reference))), 1e-30))
        rows.append({
            "form": name,
            "fwd_ms": seconds_per_call(lambda v: forward(kernel, v), x, steps, warmup) * 1e3,
            # Both gradients come from one compiled call; waiting for one waits for the call.
            "fwd_bwd_ms": seconds_per_call(lambda v: backward(kernel, v)[0], x, steps, warmup) * 1e3,
            "difference": difference,
        })
    return rows


# --- Report ------------------------------------------------------------------------------------


def render(tables: list[tuple[str, str, float, list[dict]]], peak: float, header: dict[str, str]) -> str:
    """The markdown report: a header, then per layer one row per formulation."""
    lines = ["# fc6 and fc7: convolution, im2col + matmul, shifted matmuls", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "", "Milliseconds per call on the batch; TFLOP/s from 2 x multiply-adds (forward+backward: 3 x forward); "
        "difference: the largest |output - conv's output| / the largest |conv's output|.", "",
        "| layer | shape | GFLOP (fwd) | form | fwd ms | fwd TFLOP/s | fwd % peak | fwd+bwd ms | fwd+bwd TFLOP/s "
        "| fwd+bwd % peak | difference |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer, shape, gflop, rows in tables:
        for row in rows:
            fwd, both = gflop / row["fwd_ms"], 3 * gflop / row["fwd_bwd_ms"]  # GFLOP/ms = TFLOP/s
            lines.append(
                f"| {layer} | {shape} | {gflop:.3g} | {row['form']} | {row['fwd_ms']:.3f} | {fwd:.3g} "
                f"| {100 * fwd / peak:.1f} | {row['fwd_bwd_ms']:.3f} | {both:.3g} | {100 * both / peak:.1f} "
                f"| {row['difference']:.1e} |"
            )
    return "\n".join(lines) + "\n"


def run(argv: list[str]) -> str:
    """Measures fc6 and fc7 as the flags say; returns (and prints) the markdown."""
    check_layer_flags()
    if keras.backend.backend() != "tensorflow":
        tf.config.set_visible_devices([], "GPU")
    shapes = fc6_shapes(FLAGS.size, FLAGS.geometry, FLAGS.fc_units)
    dtype = "bfloat16" if FLAGS.precision == "bf16" else "float32"
    (h, w, c), k, f, b = shapes["input_shape"], shapes["kernel"], shapes["units"], FLAGS.batch_size
    device, accelerator = device_description()
    peak_n = peak_side(FLAGS.peak_size, accelerator)
    peak = matmul_peak(peak_n, 10, dtype)
    x6 = keras.random.normal((b, h, w, c), dtype=dtype, seed=0)
    kernel6 = keras.random.normal((k, k, c, f), stddev=(k * k * c) ** -0.5, dtype=dtype, seed=1)
    fc6_rows = measure(FC6_FORMS, kernel6, x6, shapes["padding"], FLAGS.steps, FLAGS.warmup)
    h7, w7 = (h, w) if shapes["padding"] == "same" else (h - k + 1, w - k + 1)
    x7 = keras.random.normal((b, h7, w7, f), dtype=dtype, seed=2)
    kernel7 = keras.random.normal((1, 1, f, f), stddev=f ** -0.5, dtype=dtype, seed=3)
    fc7_rows = measure(FC7_FORMS, kernel7, x7, "valid", FLAGS.steps, FLAGS.warmup)
    tables = [
        ("fc6", f"{b}x{h}x{w}x{c} -> {k}x{k}x{c}x{f} ({shapes['padding']})", 2e-9 * b * h7 * w7 * k * k * c * f, fc6_rows),
        ("fc7", f"{b}x{h7}x{w7}x{f} -> 1x1x{f}x{f}", 2e-9 * b * h7 * w7 * f * f, fc7_rows),
    ]
    header = report_header(
        argv, device,
        f"FCN-8s at {FLAGS.size}x{FLAGS.size}, geometry {FLAGS.geometry}, batch {b}, precision {FLAGS.precision}, "
        f"best of 3 timings of {FLAGS.steps} calls after {FLAGS.warmup} warm-up",
        {"Matmul peak": f"{peak:.3g} TFLOP/s ({dtype} {peak_n}x{peak_n}, throughput.matmul_peak)"},
    )
    return write_report(render(tables, peak, header), FLAGS.output)


def main(argv: list[str]) -> int | None:
    return benchmark_main("benchmarks/fc6.py", run, argv)


if __name__ == "__main__":
    define_layer_flags("fc6/fc7")
    run_cli(main)
