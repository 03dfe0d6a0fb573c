r"""Where a training step of FCN-8s goes, part by part (Keras on JAX).

    KERAS_BACKEND=jax python benchmarks/train_step.py                     # 512x512 'same', batch 8, bf16
    KERAS_BACKEND=jax python benchmarks/train_step.py --size=64 --batch_size=2 --steps=1 --warmup=1 \
        --precision=float32 --fc_units=16 --peak_size=128                 # CPU smoke test

On the H200 FCN-8s's forward (512x512, batch 8) takes 7.3 ms and a training step 32 ms, where
3 x the forward's FLOPs would allow about 22 ms at the forward's efficiency; with fc6 as an
im2col matmul (12x faster forward+backward alone) the step only fell to 28.8 ms. The sum of the
convolutions' forward+backward alone (``conv_layers.py``) is far below either. For each model
configuration (``--configs``: fc6 implementation / pooling implementation, see ``build_fcn``)
this times, jitted on the same batch:

- ``forward``: the model's training-mode forward and the loss (``stateless_call``);
- ``forward + backward``: the gradients of the loss with respect to every trainable variable;
- ``optimizer``: the SGD update (momentum 0.99, weight decay) of all variables from given
  gradients (``optimizer.stateless_apply``);
- ``fit step``: ``model.fit`` per step on a repeated synthetic batch (as ``throughput.py``);
  what it takes beyond forward+backward and the optimizer is Keras' step around them
  (host-to-device copy, dispatch, loss tracking);

then (``--profile_calls``, default 5) traces that many calls of the compiled forward+backward
with ``jax.profiler`` and attributes the kernel time to layers, forward / backward and kinds of
kernel (``kernel_profile.py``): where the time outside the convolutions goes;

and, first (they do not depend on the configuration): every 2x2 max pooling of the network
alone, forward and forward+backward, as ``keras.ops.max_pool`` and as ``ReshapeMaxPooling2D`` (a
reshape and a max), and the loss alone on the logits. Milliseconds per step; with ``--output``
the tables are written there (atomically) after each part, so a run stopped by a time limit
leaves what it measured.
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
import kernel_profile  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

from fcn_keras.console import run_cli  # noqa: E402
from fcn_keras.constants import NUM_CLASSES  # noqa: E402
from fcn_keras.flops import forward_flops  # noqa: E402
from fcn_keras.layers import ReshapeMaxPooling2D  # noqa: E402
from fcn_keras.model import FC6_IMPLEMENTATIONS, POOL_IMPLEMENTATIONS, build_fcn  # noqa: E402
from throughput import (  # noqa: E402
    PRECISIONS, benchmark_main, check_flags_at_least, compile_for_training, device_description, matmul_peak,
    peak_side, report_header, seconds_per_call, synthetic_batch, train_images_per_second, write_report,
)

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defines the CLI's flags (only when run as a script)."""
    flags.DEFINE_integer("size", 512, "Square image size.")
    flags.DEFINE_enum("geometry", "same", ["reference", "same"], "Network geometry (see fcn_keras.architecture).")
    flags.DEFINE_integer("batch_size", 8, "Images per batch.")
    flags.DEFINE_integer("fc_units", 4096, "fc6/fc7 channels (4096 in VGG16; small only for the smoke test).")
    flags.DEFINE_list("configs", ["im2col/reshape", "im2col/pool"],
                      "Model configurations to time, each FC6/POOL: fc6_implementation and pool_implementation "
                      "(conv/pool: the models before 2026-12-04).")
    flags.DEFINE_enum("precision", "bf16", list(PRECISIONS), "Compute precision.")
    flags.DEFINE_integer("steps", 20, "Back-to-back calls (or fit steps) per timing, >= 1.")
    flags.DEFINE_integer("warmup", 2, "Untimed calls first (compilation), >= 1.")
    flags.DEFINE_integer("profile_calls", 5, "Calls of the forward+backward traced for the kernel profile "
                         "(0: no profile).")
    flags.DEFINE_integer("peak_size", 0, "Side of the square matmul that measures the peak; "
                         "0: 8192 on an accelerator, 1024 on a CPU.")
    flags.DEFINE_string("output", None, "Also write the markdown tables here (atomically).")


def parse_config(text: str) -> tuple[str, str]:
    """``"im2col/reshape"`` -> ``("im2col", "reshape")``, checked against build_fcn's choices."""
    parts = text.split("/")
    if len(parts) != 2 or parts[0] not in FC6_IMPLEMENTATIONS or parts[1] not in POOL_IMPLEMENTATIONS:
        raise ValueError(
            f"--configs entries must be FC6/POOL with FC6 in {tuple(FC6_IMPLEMENTATIONS)} and POOL in "
            f"{tuple(POOL_IMPLEMENTATIONS)}. Received: {text!r}"
        )
    return parts[0], parts[1]


# --- The step's parts --------------------------------------------------------------------------


def step_parts(model: keras.Model, images, labels, batch: int, steps: int, warmup: int,
               profile_calls: int = 0) -> tuple[dict[str, float], list[str]]:
    """Milliseconds per step of the forward, forward+backward, optimizer and fit step of a
    compiled ``model`` on one batch (JAX), and the markdown of the forward+backward's kernel
    profile over ``profile_calls`` calls (none for 0; a failed trace is reported in one line)."""
    import jax

    x, y = jax.device_put(images), jax.device_put(labels)
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss(trainable, x):
        logits, _ = model.stateless_call(trainable, frozen, x, training=True)
        return model.loss(y, logits)

    forward = jax.jit(loss)
    # Compiled ahead of time: the kernel profile reads the very program that was timed.
    gradients = jax.jit(jax.grad(loss)).lower(trainable, x).compile()
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    optimizer_state = [v.value for v in optimizer.variables]
    apply = jax.jit(lambda grads: optimizer.stateless_apply(optimizer_state, grads, trainable))
    grads = gradients(trainable, x)
    parts = {
        "forward": 1e3 * seconds_per_call(lambda v: forward(trainable, v), x, steps, warmup),
        # Every gradient comes from one compiled call; waiting for the last waits for the call.
        "forward + backward": 1e3 * seconds_per_call(lambda v: gradients(trainable, v)[-1], x, steps, warmup),
        "optimizer": 1e3 * seconds_per_call(lambda g: apply(g)[0][-1], grads, steps, warmup),
    }
    # Before fit, which donates the variables' buffers (``trainable`` would be deleted).
    profile = kernel_profile.profile_lines(gradients, (trainable, x), profile_calls,
                                           tuple(layer.name for layer in model.layers))
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    parts["fit step"] = 1e3 * batch / train_images_per_second(model, dataset, batch, steps, warmup)
    return parts, profile


def pool_rows(model: keras.Model, batch: int, dtype: str, steps: int, warmup: int) -> list[dict]:
    """Each max pooling of ``model`` alone: forward and forward+backward ms, as
    ``keras.ops.max_pool`` and as ``ReshapeMaxPooling2D``."""
    import jax

    rows = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.MaxPooling2D):
            continue
        x = keras.random.normal((batch, *layer.input.shape[1:]), dtype=dtype, seed=0)
        forms = {
            "max_pool": lambda v: keras.ops.max_pool(v, 2, strides=2, padding="same"),
            "reshape": ReshapeMaxPooling2D(2, strides=2, padding="same", dtype=dtype),
        }
        row = {"layer": layer.name, "input": "x".join(str(d) for d in layer.input.shape[1:])}
        for name, pool in forms.items():
            forward = jax.jit(pool)
            backward = jax.jit(jax.grad(lambda v, pool=pool: keras.ops.sum(keras.ops.square(
                keras.ops.cast(pool(v), "float32")))))
            row[f"{name} fwd"] = 1e3 * seconds_per_call(forward, x, steps, warmup)
            row[f"{name} fwd+bwd"] = 1e3 * seconds_per_call(backward, x, steps, warmup)
        rows.append(row)
    return rows


def loss_ms(model: keras.Model, labels, steps: int, warmup: int) -> float:
    """Forward+backward ms of the loss alone on float32 logits of the batch's shape."""
    import jax

    logits = keras.random.normal((*labels.shape, model.output.shape[-1]), seed=0)
    grad = jax.jit(jax.grad(lambda v: model.loss(labels, v)))
    return 1e3 * seconds_per_call(grad, logits, steps, warmup)


# --- Report ------------------------------------------------------------------------------------


PARTS = ("forward", "forward + backward", "optimizer", "fit step")


def render(configs: dict[str, dict[str, float]], pools: list[dict], loss: float, batch: int, gflop: float,
           peak: float, header: dict[str, str], profiles: dict[str, list[str]] | None = None) -> str:
    """The markdown report: the step's parts per configuration, the poolings, the loss, then each
    configuration's kernel profile (markdown lines from ``kernel_profile.render``)."""
    lines = ["# FCN-8s training step, part by part", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "", f"Milliseconds per step on a batch of {batch}; the rest = fit step - (forward + backward) - optimizer "
        f"(Keras' step around them). % peak: 3 x {gflop:.1f} forward GFLOP per image (fcn_keras.flops) over the "
        "time of forward + backward or of the fit step.", "",
        "| configuration (fc6 / pool) | forward | forward + backward | optimizer | fit step | the rest "
        "| fwd+bwd % peak | fit % peak | fit img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    train_gflop = 3 * gflop * batch
    for name, parts in configs.items():
        rest = parts["fit step"] - parts["forward + backward"] - parts["optimizer"]
        lines.append(
            f"| {name} | " + " | ".join(f"{parts[p]:.2f}" for p in PARTS) + f" | {rest:.2f} "
            f"| {100 * train_gflop / parts['forward + backward'] / peak:.1f} "
            f"| {100 * train_gflop / parts['fit step'] / peak:.1f} | {1e3 * batch / parts['fit step']:.1f} |"
        )
    lines += [
        "", "Each 2x2 max pooling alone (bf16 or the run's precision), ms per call on the batch:", "",
        "| layer | input | max_pool fwd | max_pool fwd+bwd | reshape fwd | reshape fwd+bwd |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in pools:
        lines.append(f"| {row['layer']} | {row['input']} | {row['max_pool fwd']:.3f} | {row['max_pool fwd+bwd']:.3f} "
                     f"| {row['reshape fwd']:.3f} | {row['reshape fwd+bwd']:.3f} |")
    totals = {key: sum(r[key] for r in pools) for key in ("max_pool fwd", "max_pool fwd+bwd", "reshape fwd",
                                                            "reshape fwd+bwd")}
    lines.append("| **sum** | | " + " | ".join(f"{v:.3f}" for v in totals.values()) + " |")
    lines += ["", f"The loss alone (SegmentationCrossEntropy, float32 logits), forward+backward: {loss:.3f} ms."]
    for name, profile in (profiles or {}).items():
        if profile:
            lines += ["", f"## Kernel profile of the forward + backward: {name}", "", *profile]
    return "\n".join(lines) + "\n"


def run(argv: list[str]) -> str:
    """Times the parts as the flags say; returns (and prints) the markdown."""
    check_flags_at_least(1, "size", "batch_size", "fc_units", "steps", "warmup")
    check_flags_at_least(0, "profile_calls", "peak_size")
    configs = [parse_config(text) for text in FLAGS.configs]
    if not configs:
        raise ValueError("--configs must name at least one FC6/POOL configuration. Received: --configs=")
    if keras.backend.backend() != "jax":
        raise ValueError(f"train_step.py times JAX's stateless calls: run it with KERAS_BACKEND=jax. "
                         f"Received: backend {keras.backend.backend()!r}")
    tf.config.set_visible_devices([], "GPU")  # tf.data only
    keras.config.set_dtype_policy(PRECISIONS[FLAGS.precision])
    dtype = "bfloat16" if FLAGS.precision == "bf16" else "float32"
    device, accelerator = device_description()
    peak_n = peak_side(FLAGS.peak_size, accelerator)
    peak = matmul_peak(peak_n, 10, dtype)
    images, labels = synthetic_batch(FLAGS.batch_size, FLAGS.size, FLAGS.size, NUM_CLASSES, 0)
    header = report_header(
        argv, device,
        f"FCN-8s at {FLAGS.size}x{FLAGS.size}, geometry {FLAGS.geometry}, batch {FLAGS.batch_size}, precision "
        f"{FLAGS.precision}, SGD momentum 0.99 + weight decay, best of 3 timings of {FLAGS.steps} calls after "
        f"{FLAGS.warmup} warm-up (fit: one timed call of {FLAGS.steps} steps)",
        {"Matmul peak": f"{peak:.3g} TFLOP/s ({dtype} {peak_n}x{peak_n}, throughput.matmul_peak)"},
    )

    def build(fc6: str, pool: str) -> keras.Model:
        keras.utils.clear_session()
        return build_fcn("8s", input_shape=(FLAGS.size, FLAGS.size, 3), geometry=FLAGS.geometry,
                         fc_units=FLAGS.fc_units, fc6_implementation=fc6, pool_implementation=pool)

    # The cheap parts first (one compilation each), then a configuration at a time (about 3.5 min
    # each on the H200, mostly compilation); the report is rewritten after each.
    model = build(*configs[0])
    compile_for_training(model)
    pools = pool_rows(model, FLAGS.batch_size, dtype, FLAGS.steps, FLAGS.warmup)
    loss = loss_ms(model, labels, FLAGS.steps, FLAGS.warmup)
    gflop = forward_flops(model) / 1e9
    results: dict[str, dict[str, float]] = {}
    profiles: dict[str, list[str]] = {}

    def report() -> str:
        return write_report(render(results, pools, loss, FLAGS.batch_size, gflop, peak, header, profiles),
                            FLAGS.output, echo=False)

    markdown = report()
    for index, (fc6, pool) in enumerate(configs):
        if index:
            model = build(fc6, pool)
            compile_for_training(model)
        name = f"{fc6} / {pool}"
        results[name], profiles[name] = step_parts(model, images, labels, FLAGS.batch_size, FLAGS.steps,
                                                   FLAGS.warmup, FLAGS.profile_calls)
        parts = results[name]
        print(f"{fc6} / {pool}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in parts.items()), flush=True)
        markdown = report()
    print(markdown, flush=True)
    return markdown


def main(argv: list[str]) -> int | None:
    return benchmark_main("benchmarks/train_step.py", run, argv)


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
