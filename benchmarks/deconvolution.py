r"""FCN's upsampling layers: Keras' ``Conv2DTranspose`` against ``fcn_keras.layers.Deconvolution``.

    python benchmarks/deconvolution.py                               # 512x512 'same', batch 8, bf16
    KERAS_BACKEND=jax python benchmarks/deconvolution.py --output=benchmarks/results/deconvolution-h200.md
    python benchmarks/deconvolution.py --size=64 --batch_size=1 --steps=2 --warmup=1 \
        --precision=float32                                          # CPU smoke test

XLA computes a stride-s transposed convolution as a convolution over the input dilated with s - 1
zeros between pixels: s * s times the useful multiply-adds (1024 times for FCN-32s's 64x64,
stride-32 upsampling). ``Deconvolution`` holds the same kernel and computes the same values as a
small convolution to s * s * C channels plus depth-to-space (see its docstring). For every
upsampling layer of FCN-32s/16s/8s at the chosen image size and geometry (the layer shapes are
read from the built models), this times both on the current backend:

- forward: the layer alone, jitted, kernel passed as an argument, best of 3 timings of
  ``--steps`` back-to-back calls on a batch already on the device;
- forward + backward: the same for the gradients with respect to the input and the kernel (the
  work of a learned upsampling in training);

and prints them beside the layer's useful GFLOPs (2 x input positions x k^2 x C x C, the count of
``fcn_keras.flops``) and the GFLOPs of the dilated-input convolution (2 x output positions x k^2
x C x C). With ``--output`` the table is written there (atomically).
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
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from fcn_keras.console import run_cli  # noqa: E402
from fcn_keras.constants import NUM_CLASSES, VARIANTS  # noqa: E402
from fcn_keras.layers import Deconvolution  # noqa: E402
from fcn_keras.model import build_fcn  # noqa: E402
from throughput import (  # noqa: E402
    PRECISIONS, benchmark_main, check_flags_at_least, device_description, report_header, seconds_per_call,
    write_report,
)

FLAGS = flags.FLAGS
IMPLEMENTATIONS: tuple[str, ...] = ("Conv2DTranspose", "Deconvolution")


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a script)."""
    flags.DEFINE_integer("size", 512, "Square image size whose upsampling layers are measured.")
    flags.DEFINE_enum("geometry", "same", ["reference", "same"], "Network geometry (see fcn_keras.architecture).")
    flags.DEFINE_integer("batch_size", 8, "Images per batch.")
    flags.DEFINE_enum("precision", "bf16", list(PRECISIONS), "Compute precision of the layers.")
    flags.DEFINE_integer("steps", 20, "Back-to-back calls per timing (best of 3 timings), >= 1.")
    flags.DEFINE_integer("warmup", 2, "Untimed calls first (compilation), >= 1.")
    flags.DEFINE_string("output", None, "Also write the markdown table here (atomically).")


# --- The layers measured -----------------------------------------------------------------------


def upsampling_layers(size: int, geometry: str) -> list[dict]:
    """The distinct upsampling layers of FCN-32s/16s/8s on a ``size x size`` image.

    Returns:
        One dict per distinct (kernel, stride, padding, input shape): ``names`` (the layers,
        ``"fcn8s/upscore8"``...), ``kernel``, ``stride``, ``padding``, ``input_shape`` ``(h, w, C)``
        and ``output_shape`` ``(h, w, C)``.
    """
    found: dict[tuple, dict] = {}
    for variant in VARIANTS:
        model = build_fcn(variant, input_shape=(size, size, 3), geometry=geometry, fc_units=8)
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2DTranspose):
                in_shape, out_shape = tuple(layer.input.shape[1:]), tuple(layer.output.shape[1:])
                key = (layer.kernel_size[0], layer.strides[0], layer.padding, in_shape)
                entry = found.setdefault(key, {"names": [], "kernel": key[0], "stride": key[1], "padding": key[2],
                                               "input_shape": in_shape, "output_shape": out_shape})
                entry["names"].append(f"{model.name}/{layer.name}")
        keras.utils.clear_session()
    return sorted(found.values(), key=lambda e: (e["stride"], e["input_shape"]))


def layer_gflops(entry: dict, batch: int) -> tuple[float, float]:
    """(useful, dilated-input) GFLOPs of one call on ``batch`` images."""
    k, (h, w, c), (oh, ow, f) = entry["kernel"], entry["input_shape"], entry["output_shape"]
    useful = 2 * batch * h * w * k * k * c * f
    dilated = 2 * batch * oh * ow * k * k * c * f
    return useful / 1e9, dilated / 1e9


# --- Timing ------------------------------------------------------------------------------------


def compiled_functions(layer: keras.layers.Layer):
    """``(forward, forward_and_backward)``: jitted ``x -> layer(x)`` and ``x -> d sum(layer(x)^2)
    / d (kernel, x)``, the kernel passed as an argument (not folded in as a constant). The
    backward returns both gradients, as training computes them: a compiled program returning
    only the input's would have XLA prune the kernel's."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        kernel = layer.kernel.value

        def apply(k, x):
            return layer.stateless_call([k], [], x)[0]

        forward = jax.jit(apply)
        backward = jax.jit(jax.grad(lambda k, x: keras.ops.sum(keras.ops.square(apply(k, x))), argnums=(0, 1)))
        return (lambda x: forward(kernel, x)), (lambda x: backward(kernel, x))
    if backend == "tensorflow":
        def grads(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.square(layer(x)))
            gx, gk = tape.gradient(loss, [x, layer.kernel])
            return gk, gx

        return tf.function(layer, jit_compile=True), tf.function(grads, jit_compile=True)
    raise ValueError(f"this benchmark supports the jax and tensorflow backends. Received: {backend!r}")


def measure(entry: dict, batch: int, steps: int, warmup: int) -> dict[str, float]:
    """Forward and forward+backward ms of both implementations of one layer (random kernels:
    the time does not depend on the values)."""
    k, s, channels = entry["kernel"], entry["stride"], entry["input_shape"][-1]
    # Kernel and input in the compute dtype: stateless_call does not autocast as fit does, and
    # mixed precision computes with the kernel cast to it anyway.
    dtype = keras.config.dtype_policy().compute_dtype
    x = keras.random.normal((batch, *entry["input_shape"]), dtype=dtype, seed=0)
    times = {}
    for name, cls in zip(IMPLEMENTATIONS, (keras.layers.Conv2DTranspose, Deconvolution)):
        layer = cls(channels, k, strides=s, padding=entry["padding"], use_bias=False, dtype=dtype)
        layer.build((None, None, None, channels))
        forward, backward = compiled_functions(layer)
        times[f"{name} fwd"] = seconds_per_call(forward, x, steps, warmup) * 1e3
        # Synchronised on the input's gradient: one program computes both.
        times[f"{name} fwd+bwd"] = seconds_per_call(lambda x: backward(x)[1], x, steps, warmup) * 1e3
    return times


# --- Report ------------------------------------------------------------------------------------


def render(rows: list[tuple[dict, dict]], batch: int, header: dict[str, str]) -> str:
    """The markdown report: a header and one table row per layer."""
    lines = ["# FCN upsampling: Conv2DTranspose vs Deconvolution", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        f"Milliseconds per call on a batch of {batch}; speedup = Conv2DTranspose time / Deconvolution time.",
        "",
        "| layers | input | k / s | useful GFLOP | dilated-input GFLOP | Conv2DTranspose fwd ms "
        "| Deconvolution fwd ms | fwd speedup | Conv2DTranspose fwd+bwd ms | Deconvolution fwd+bwd ms "
        "| fwd+bwd speedup |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry, t in rows:
        useful, dilated = layer_gflops(entry, batch)
        h, w, c = entry["input_shape"]
        lines.append(
            f"| {', '.join(entry['names'])} | {h}x{w}x{c} | {entry['kernel']} / {entry['stride']} "
            f"| {useful:.3g} | {dilated:.3g} "
            f"| {t['Conv2DTranspose fwd']:.3f} | {t['Deconvolution fwd']:.3f} "
            f"| {t['Conv2DTranspose fwd'] / t['Deconvolution fwd']:.1f}x "
            f"| {t['Conv2DTranspose fwd+bwd']:.3f} | {t['Deconvolution fwd+bwd']:.3f} "
            f"| {t['Conv2DTranspose fwd+bwd'] / t['Deconvolution fwd+bwd']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def run(argv: list[str]) -> str:
    """Measures every upsampling layer as the flags say; returns (and prints) the markdown."""
    check_flags_at_least(1, "size", "batch_size", "steps", "warmup")
    if keras.backend.backend() != "tensorflow":
        tf.config.set_visible_devices([], "GPU")
    entries = upsampling_layers(FLAGS.size, FLAGS.geometry)
    keras.config.set_dtype_policy(PRECISIONS[FLAGS.precision])
    device, _ = device_description()
    header = report_header(
        argv, device,
        f"{FLAGS.size}x{FLAGS.size} images, geometry {FLAGS.geometry}, {NUM_CLASSES} classes, precision "
        f"{FLAGS.precision}, random kernels, best of 3 timings of {FLAGS.steps} calls after {FLAGS.warmup} warm-up",
    )
    rows = []
    for entry in entries:
        times = measure(entry, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup)
        rows.append((entry, times))
        print(f"{', '.join(entry['names'])}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()), flush=True)
    return write_report(render(rows, FLAGS.batch_size, header), FLAGS.output)


def main(argv: list[str]) -> int | None:
    return benchmark_main("benchmarks/deconvolution.py", run, argv)


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
