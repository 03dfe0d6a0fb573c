r"""Where a training step of FCN-8s goes, part by part (Keras on JAX, no TensorFlow needed).

    KERAS_BACKEND=jax python benchmarks/train_step.py                     # 512x512 'same', batch 8, bf16
    KERAS_BACKEND=jax python benchmarks/train_step.py --size=64 --batch_size=2 --steps=1 --warmup=1 \
        --precision=float32 --fc_units=16 --peak_size=128                 # CPU smoke test

On the H200 FCN-8s's forward (512x512, batch 8) takes 7.3 ms and a training step 32 ms, where
3 x the forward's FLOPs would allow about 22 ms at the forward's efficiency; with fc6 as an
im2col matmul (12x faster forward+backward alone) the step only fell to 28.8 ms. The sum of the
convolutions' forward+backward alone (``conv_layers.py``) is far below either. For each model
configuration (``--configs``: fc6 implementation / pooling implementation, see ``build_fcn``)
this times, jitted on the same batch, in this order (the training step of every configuration
first, the diagnostics after them):

- ``forward + backward``: the gradients of the loss with respect to every trainable variable;
- ``fit step``: ``model.fit`` per step on a repeated synthetic batch (as ``throughput.py``, from
  a Python generator instead of tf.data); what it takes beyond forward+backward and the
  optimizer is Keras' step around them (host-to-device copy, dispatch, loss tracking);
- ``inference``: ``labels_model(model).predict`` per batch, label maps to the host;
- ``forward``: the model's training-mode forward and the loss (``stateless_call``);

then, once (they do not depend on the configuration), the optimizer's update of all variables
from given gradients (``optimizer.stateless_apply``), every 2x2 max pooling of the network alone
(forward and forward+backward, as ``keras.ops.max_pool`` and as ``ReshapeMaxPooling2D``, a
reshape and a max) and the loss alone on the logits; and last (``--profile_calls``, default 5)
a trace of that many calls of each configuration's compiled forward+backward with
``jax.profiler``, its kernel time attributed to layers, forward / backward and kinds of kernel
(``kernel_profile.py``). Milliseconds per step; with ``--output`` the report is rewritten
(atomically) after every part, with a "**Partial**" line naming what is still missing, so a
run stopped by a time limit leaves what it measured.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # the package, and throughput.py's helpers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import keras  # noqa: E402
import kernel_profile  # noqa: E402
from absl import flags  # noqa: E402

from fcn_keras.console import run_cli  # noqa: E402
from fcn_keras.constants import NUM_CLASSES  # noqa: E402
from fcn_keras.flops import forward_flops  # noqa: E402
from fcn_keras.inference import labels_model  # noqa: E402
from fcn_keras.layers import ReshapeMaxPooling2D  # noqa: E402
from fcn_keras.model import FC6_IMPLEMENTATIONS, POOL_IMPLEMENTATIONS, build_fcn  # noqa: E402
from throughput import (  # noqa: E402
    PRECISIONS, benchmark_main, check_flags_at_least, compile_for_training, device_description,
    infer_images_per_second, matmul_peak, peak_side, report_header, seconds_per_call, synthetic_batch,
    train_images_per_second, write_report,
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


def repeated_batch(*arrays):
    """One batch yielded forever as a tuple (``(images, labels)`` for fit, ``(images,)`` for
    predict): model input without TensorFlow, which the GPU machine lacks (``gpu_run.sh step``)."""
    while True:
        yield arrays


class Configuration:
    """One FC6/POOL model, compiled for training, and its forward+backward program (compiled
    ahead of time: the kernel profile reads the very program that was timed)."""

    def __init__(self, model: keras.Model, images, labels):
        import jax

        self.model = model
        self.x, self.y = jax.device_put(images), jax.device_put(labels)

        def loss(trainable, frozen, x, y):
            logits, _ = model.stateless_call(trainable, frozen, x, training=True)
            return model.loss(y, logits)

        self.forward = jax.jit(loss)
        self.gradients = jax.jit(jax.grad(loss)).lower(*self.arguments()).compile()

    def arguments(self) -> tuple:
        """``(trainable, frozen, x, y)`` with the variables' current buffers (``fit`` donates the
        earlier ones), every one an argument: nothing is baked into the programs as a constant."""
        model = self.model
        return ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                self.x, self.y)

    def forward_backward_ms(self, steps: int, warmup: int) -> float:
        trainable, frozen, x, y = self.arguments()
        # Every gradient comes from one compiled call; waiting for the last waits for the call.
        return 1e3 * seconds_per_call(lambda v: self.gradients(trainable, frozen, v, y)[-1], x, steps, warmup)

    def forward_ms(self, steps: int, warmup: int) -> float:
        trainable, frozen, x, y = self.arguments()
        return 1e3 * seconds_per_call(lambda v: self.forward(trainable, frozen, v, y), x, steps, warmup)

    def optimizer_ms(self, steps: int, warmup: int) -> float:
        """The update of every variable from given gradients, state and variables passed as
        arguments (a closure over them would compile ~1 GB of constants into the program)."""
        import jax

        optimizer = self.model.optimizer
        optimizer.build(self.model.trainable_variables)
        state = [v.value for v in optimizer.variables]
        trainable, frozen, x, y = self.arguments()
        grads = self.gradients(trainable, frozen, x, y)
        apply = jax.jit(optimizer.stateless_apply)
        return 1e3 * seconds_per_call(lambda g: apply(state, g, trainable)[0][-1], grads, steps, warmup)

    def fit_step_ms(self, images, labels, batch: int, steps: int, warmup: int) -> float:
        return 1e3 * batch / train_images_per_second(self.model, repeated_batch(images, labels), batch, steps, warmup)

    def inference_ms(self, images, batch: int, steps: int, warmup: int) -> float:
        """``labels_model(model).predict``: uint8 label maps (argmax on the device) to the host."""
        labeler = labels_model(self.model)
        return 1e3 * batch / infer_images_per_second(labeler, repeated_batch(images), batch, steps, warmup)

    def profile(self, calls: int) -> list[str]:
        return kernel_profile.profile_lines(self.gradients, self.arguments(), calls,
                                            tuple(layer.name for layer in self.model.layers))


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
    grad = jax.jit(jax.grad(lambda v, y: model.loss(y, v)))
    y = jax.device_put(labels)
    return 1e3 * seconds_per_call(lambda v: grad(v, y), logits, steps, warmup)


# --- Report ------------------------------------------------------------------------------------


PARTS = ("forward", "forward + backward", "fit step", "inference")
#: The report's line while parts are missing (``gpu_run.sh`` measures a table with it again).
PARTIAL = "**Partial**"


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(configs: dict[str, dict[str, float]], pools: list[dict], loss: float | None, batch: int, gflop: float,
           peak: float, header: dict[str, str], profiles: dict[str, list[str]] | None = None,
           optimizer: float | None = None, missing: list[str] | None = None) -> str:
    """The markdown report: the step's parts per configuration ('-': not measured yet), the
    poolings, the loss, then each configuration's kernel profile (markdown lines from
    ``kernel_profile.render``); ``missing`` names what is still to be measured (a partial report)."""
    lines = ["# FCN-8s training step, part by part", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    if missing:
        lines += ["", f"{PARTIAL}: not measured (yet): {'; '.join(missing)}."]
    lines += [
        "", f"Milliseconds per batch of {batch}. The optimizer's update (SGD momentum 0.99 + weight decay of every "
        f"variable from given gradients, the same in every configuration): {_ms(optimizer)} ms; the rest = fit step "
        "- (forward + backward) - optimizer (Keras' step around them: the batch's copy to the device, dispatch, "
        f"loss tracking). % peak: {gflop:.1f} forward GFLOP per image (fcn_keras.flops), 3 x that for training, "
        "over the time of forward + backward, of the fit step or of inference.", "",
        "| configuration (fc6 / pool) | forward | forward + backward | fit step | the rest | fwd+bwd % peak "
        "| fit % peak | fit img/s | inference | inference % peak | inference img/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def percent(gflop_per_batch: float, ms: float | None) -> str:
        return "-" if ms is None else f"{100 * gflop_per_batch / ms / peak:.1f}"

    def per_second(ms: float | None) -> str:
        return "-" if ms is None else f"{1e3 * batch / ms:.1f}"

    for name, parts in configs.items():
        fwd_bwd, fit, infer = parts.get("forward + backward"), parts.get("fit step"), parts.get("inference")
        rest = None if None in (fit, fwd_bwd, optimizer) else fit - fwd_bwd - optimizer
        lines.append(
            f"| {name} | {_ms(parts.get('forward'))} | {_ms(fwd_bwd)} | {_ms(fit)} | {_ms(rest)} "
            f"| {percent(3 * gflop * batch, fwd_bwd)} | {percent(3 * gflop * batch, fit)} | {per_second(fit)} "
            f"| {_ms(infer)} | {percent(gflop * batch, infer)} | {per_second(infer)} |"
        )
    if pools:
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
    if loss is not None:
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
    keras.config.set_dtype_policy(PRECISIONS[FLAGS.precision])
    dtype = "bfloat16" if FLAGS.precision == "bf16" else "float32"
    batch, steps, warmup = FLAGS.batch_size, FLAGS.steps, FLAGS.warmup
    device, accelerator = device_description()
    peak_n = peak_side(FLAGS.peak_size, accelerator)
    peak = matmul_peak(peak_n, 10, dtype)
    print(f"bf16 matmul peak {peak:.1f} TFLOP/s" if dtype == "bfloat16" else f"matmul peak {peak:.3g} TFLOP/s", flush=True)
    images, labels = synthetic_batch(batch, FLAGS.size, FLAGS.size, NUM_CLASSES, 0)
    header = report_header(
        argv, device,
        f"FCN-8s at {FLAGS.size}x{FLAGS.size}, geometry {FLAGS.geometry}, batch {batch}, precision "
        f"{FLAGS.precision}, SGD momentum 0.99 + weight decay, best of 3 timings of {steps} calls after "
        f"{warmup} warm-up (fit and inference: one timed call of {steps} steps after a warm-up call, one "
        "random batch repeated by a Python generator)",
        {"Matmul peak": f"{peak:.3g} TFLOP/s ({dtype} {peak_n}x{peak_n}, throughput.matmul_peak)"},
    )
    names = [f"{fc6} / {pool}" for fc6, pool in configs]
    results: dict[str, dict[str, float]] = {name: {} for name in names}
    profiles: dict[str, list[str]] = {}
    measured: dict[str, Any] = {"pools": [], "loss": None, "optimizer": None}
    # Each configuration's parts, in the order they are measured: the training step of every
    # configuration first (the question: what do the poolings cost), diagnostics last.
    parts: dict[str, Callable[[Configuration], float]] = {
        "forward + backward": lambda c: c.forward_backward_ms(steps, warmup),
        "fit step": lambda c: c.fit_step_ms(images, labels, batch, steps, warmup),
        "inference": lambda c: c.inference_ms(images, batch, steps, warmup),
        "forward": lambda c: c.forward_ms(steps, warmup),
    }
    # What a time limit may leave unmeasured, in that order.
    todo = [f"{part} of {name}" for part in parts for name in names]
    todo += ["the optimizer", "the poolings alone", "the loss alone"]
    todo += [f"the kernel profile of {name}" for name in names] if FLAGS.profile_calls else []

    def report() -> str:
        return write_report(render(results, measured["pools"], measured["loss"], batch, gflop, peak, header, profiles,
                                   measured["optimizer"], todo), FLAGS.output, echo=False)

    def done(what: str, value: Any = None) -> None:
        todo.remove(what)
        if isinstance(value, float):
            print(f"{what}: {value:.3f} ms", flush=True)
        report()

    def build(fc6: str, pool: str) -> Configuration:
        model = build_fcn("8s", input_shape=(FLAGS.size, FLAGS.size, 3), geometry=FLAGS.geometry,
                          fc_units=FLAGS.fc_units, fc6_implementation=fc6, pool_implementation=pool)
        compile_for_training(model)
        return Configuration(model, images, labels)

    # Every model stays built (two FCN-8s with SGD state: ~3 GB of device memory), each when its
    # first part is measured.
    built: dict[str, Configuration] = {}
    gflop = 0.0
    for part, measure in parts.items():
        for name, config in zip(names, configs):
            if name not in built:
                built[name] = build(*config)
                gflop = gflop or forward_flops(built[name].model) / 1e9  # the same in every configuration
            results[name][part] = measure(built[name])
            done(f"{part} of {name}", results[name][part])
    first = built[names[0]]
    measured["optimizer"] = first.optimizer_ms(steps, warmup)
    done("the optimizer", measured["optimizer"])
    measured["pools"] = pool_rows(first.model, batch, dtype, steps, warmup)
    done("the poolings alone")
    measured["loss"] = loss_ms(first.model, labels, steps, warmup)
    done("the loss alone", measured["loss"])
    # Last: jax.profiler has never run on this GPU; whatever it does, the timings are written.
    for name in names if FLAGS.profile_calls else ():
        profiles[name] = built[name].profile(FLAGS.profile_calls)
        done(f"the kernel profile of {name}")
    markdown = report()
    print(markdown, flush=True)
    return markdown


def main(argv: list[str]) -> int | None:
    return benchmark_main("benchmarks/train_step.py", run, argv)


if __name__ == "__main__":
    _define_flags()
    run_cli(main)
