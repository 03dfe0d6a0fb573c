"""Accuracy of the bf16 convolution kernel gradient on the CPU: fc6's 7x7 kernel on small inputs.

    python benchmarks/bf16_conv_grad.py            # TensorFlow with and without oneDNN, and JAX

For each input size, the gradient of ``sum(conv2d(x, w)^2)`` with respect to a 7x7x512x8 kernel
(``SAME`` padding, bf16 compute, float32 kernel) is compared with the float32 gradient of the
same bf16-rounded values; the table gives the largest error relative to the largest entry over
``--runs`` calls, whether the calls agree with each other, and how many gave a NaN/inf. bf16
rounding alone gives about 0.3%. TensorFlow's oneDNN switch is read at import, so each
TensorFlow setting runs in its own process (this script, with ``--worker``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SIZES = (1, 2, 3, 4, 8)
KERNEL = (7, 7, 512, 8)


def _measure(framework: str, size: int, runs: int) -> dict:
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, size, size, KERNEL[2])).astype("float32")
    w = (rng.standard_normal(KERNEL) * 0.01).astype("float32")
    if framework == "tensorflow":
        import tensorflow as tf

        @tf.function
        def grad(x, w, dtype):
            with tf.GradientTape() as tape:
                tape.watch(w)
                y = tf.nn.conv2d(tf.cast(x, dtype), tf.cast(w, dtype), 1, "SAME")
                loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
            return tape.gradient(loss, w)

        xb = tf.cast(tf.cast(x, tf.bfloat16), tf.float32)
        wb = tf.cast(tf.cast(w, tf.bfloat16), tf.float32)
        reference = grad(xb, wb, tf.float32).numpy()
        results = [grad(xb, tf.constant(w), tf.bfloat16).numpy() for _ in range(runs)]
    else:
        import jax
        import jax.numpy as jnp

        def loss(w, x, dtype):
            y = jax.lax.conv_general_dilated(x.astype(dtype), w.astype(dtype), (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(y.astype(jnp.float32) ** 2)

        grad = jax.jit(jax.grad(loss), static_argnums=2)
        xb = jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32)
        reference = np.asarray(grad(jnp.asarray(w).astype(jnp.bfloat16).astype(jnp.float32), xb, jnp.float32))
        results = [np.asarray(grad(jnp.asarray(w), xb, jnp.bfloat16)) for _ in range(runs)]
    scale = float(np.abs(reference).max())
    return {
        "size": size,
        "max_rel_error": max(float(np.nanmax(np.abs(g - reference))) / scale for g in results),
        "calls_agree": bool(all(np.array_equal(g, results[0], equal_nan=True) for g in results)),
        "non_finite": int(sum(not np.isfinite(g).all() for g in results)),
    }


class _Parser(argparse.ArgumentParser):
    """Bad input in one line, ``<program>: error: ...``, and status 2, as the other benchmarks
    report it (argparse's own adds the usage line). The parent imports neither TensorFlow nor JAX:
    each setting's worker process does, with its own oneDNN switch."""

    def error(self, message: str):
        print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main() -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="calls per input size, >= 1")
    parser.add_argument("--worker", choices=("tensorflow", "jax"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be >= 1. Received: --runs={args.runs}")
    if args.worker:
        print(json.dumps([_measure(args.worker, size, args.runs) for size in SIZES]))
        return 0
    settings = [("TensorFlow, oneDNN on", "tensorflow", "1"), ("TensorFlow, oneDNN off", "tensorflow", "0"),
                ("JAX", "jax", "1")]
    print(f"bf16 conv2d gradient w.r.t. a {'x'.join(map(str, KERNEL))} kernel, SAME padding, {args.runs} calls per size")
    print("| setting | input | max rel. error | calls agree | non-finite |")
    print("|---|---|---|---|---|")
    failed = []
    for name, framework, onednn in settings:
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
        done = subprocess.run([sys.executable, __file__, "--worker", framework, "--runs", str(args.runs)],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode} | | | |")
            failed.append(name)
            continue
        for row in json.loads(done.stdout.strip().splitlines()[-1]):
            print(f"| {name} | {row['size']}x{row['size']} | {row['max_rel_error']:.2%} | {'yes' if row['calls_agree'] else 'no'} "
                  f"| {row['non_finite']} |")


    if failed:  # A table with holes is not a measurement of every setting: say so in the status.
        print(f"{Path(sys.argv[0]).name}: {len(failed)} of {len(settings)} settings failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
