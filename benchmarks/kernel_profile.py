"""Where a compiled JAX program's device time goes: by layer, by forward/backward, by kind of kernel.

``conv_layers.py`` times each convolution alone and ``train_step.py`` times the step's parts; they
left about 18 ms of FCN-8s's 26.6 ms forward+backward on the H200 outside the convolutions. This
module traces calls of a compiled program with ``jax.profiler`` and attributes every device kernel
(on the CPU backend: every XLA thunk) to the HLO instruction that launched it, then to the Keras
layer and the phase that instruction came from:

- the compiled HLO text names each instruction, its opcode (a cuDNN convolution, a cuBLAS gemm, a
  fusion and the ops it fuses, a scatter, ...) and the ``op_name`` metadata JAX gave it, such as
  ``jit(loss)/transpose(jvp(block1_pool))/select_and_scatter``: Keras layers are JAX name scopes,
  ``jvp(...)`` marks the forward pass and ``transpose(jvp(...))`` the backward pass;
- an instruction XLA created without metadata (a layout copy, a weight-gradient convolution)
  takes the ``op_name`` of the computation it calls or else of its nearest consumer that has one;
- a fusion of ops from more than two layers (the CPU backend fuses whole VGG blocks) is written
  ``first + ... + last (N layers)``; a fusion of two counts for its root's layer;
- a kernel is matched to its instruction by the trace's ``hlo_op`` statistic, else by its own name
  (XLA names a fusion's kernel after the fusion, with ``_`` for ``.``); kernels matched to none
  stay in the tables as ``(unmatched kernels)``.

``train_step.py`` profiles the forward+backward of each configuration it times, ``throughput.py
--profile`` the inference forward (label maps).

Kernel times are summed per call of the program; on a GPU they are device time (kernels on several
streams may overlap, so the sum can exceed the wall time), on the CPU the busy time of XLA's threads.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import tempfile
import time

UNMATCHED = "(unmatched kernels)"
NO_OP_NAME = "(no op_name)"
OUTSIDE_LAYERS = "(outside layers)"
PHASES = ("forward", "backward", "other")

# Ops that characterise a fusion, most telling first: a fusion holding several is named by the first.
_NOTABLE_OPS = (
    "convolution", "dot", "select-and-scatter", "scatter", "gather", "reduce-window", "sort", "reduce",
    "transpose", "concatenate", "pad", "dynamic-update-slice", "dynamic-slice", "slice", "rng-bit-generator",
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = (?P<rest>.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[\w.\-]+) \(.*\{\s*$")
_OPCODE = re.compile(r"(?<![\w.\-%])(?P<opcode>[a-z][a-z0-9\-]*)\((?P<args>[^)]*)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One HLO instruction of the compiled text."""

    name: str
    opcode: str
    operands: tuple[str, ...]
    calls: tuple[str, ...]
    op_name: str | None
    custom_call_target: str | None
    fusion_kind: str | None


@dataclasses.dataclass(frozen=True)
class HloModule:
    """The parsed compiled text: instructions by name, and each computation's instructions."""

    name: str
    entry: str
    instructions: dict[str, Instruction]
    computations: dict[str, tuple[str, ...]]


def parse_hlo(text: str) -> HloModule:
    """Parses ``compiled.as_text()`` (optimised HLO) into its instructions.

    Args:
        text: the HLO module text, instructions written ``%name = type opcode(operands), attrs``.

    Returns:
        The module's name, its entry computation and every instruction of every computation.
    """
    module = re.search(r"^HloModule ([\w.\-]+)", text, re.M)
    instructions: dict[str, Instruction] = {}
    computations: dict[str, list[str]] = {}
    current, entry = "", ""
    for line in text.splitlines():
        if (header := _COMPUTATION.match(line)) and " = " not in line.split("(")[0]:
            current = header.group("name")
            computations[current] = []
            if line.lstrip().startswith("ENTRY"):
                entry = current
            continue
        match = _INSTRUCTION.match(line)
        if not match or not current:
            continue
        rest = match.group("rest")
        op = _OPCODE.search(_strip_type(rest))
        if op is None:
            continue
        target = re.search(r'custom_call_target="([^"]*)"', rest)
        kind = re.search(r'"kind":"([^"]+)"', rest) or re.search(r"kind=(k\w+)", rest)
        op_name = re.search(r'op_name="([^"]*)"', rest)
        instructions[match.group("name")] = Instruction(
            name=match.group("name"),
            opcode=op.group("opcode"),
            operands=tuple(re.findall(r"%([\w.\-]+)", op.group("args"))),
            calls=tuple(re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", rest)),
            op_name=op_name.group(1) if op_name and "/" in op_name.group(1) else None,
            custom_call_target=target.group(1) if target else None,
            fusion_kind=kind.group(1) if kind else None,
        )
        computations[current].append(match.group("name"))
    return HloModule(
        name=module.group(1) if module else "", entry=entry, instructions=instructions,
        computations={k: tuple(v) for k, v in computations.items()},
    )


def _strip_type(rest: str) -> str:
    """The instruction text after its result type (a tuple type is one parenthesised group)."""
    if not rest.startswith("("):
        return rest.split(" ", 1)[1] if " " in rest else rest
    depth = 0
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[index + 1:]
    return rest


def category(module: HloModule, name: str) -> str:
    """What kind of kernel an instruction launches: its custom-call target (``__cudnn$convForward``,
    ``__cublas$gemm``...), ``fusion: <op>`` with the most telling op it fuses, or its opcode."""
    inst = module.instructions[name]
    if inst.custom_call_target:
        return inst.custom_call_target
    if inst.opcode != "fusion":
        return inst.opcode
    fused = {called.custom_call_target or called.opcode for called in called_instructions(module, name)}
    notable = next((op for op in _NOTABLE_OPS if op in fused), "elementwise")
    if inst.fusion_kind and inst.fusion_kind.startswith("__"):
        return f"fusion {inst.fusion_kind}: {notable}"
    return f"fusion: {notable}"


def called_instructions(module: HloModule, name: str) -> list[Instruction]:
    """Every instruction of the computations ``name`` calls, and of those they call, breadth
    first, each computation once (a fusion's body, a reduction's reducer)."""
    found: list[Instruction] = []
    pending = list(module.instructions[name].calls)
    seen = set(pending)
    while pending:
        for inner in module.computations.get(pending.pop(0), ()):
            inst = module.instructions[inner]
            found.append(inst)
            for computation in inst.calls:
                if computation not in seen:
                    seen.add(computation)
                    pending.append(computation)
    return found


def origins(module: HloModule, names) -> dict[str, str | None]:
    """The ``op_name`` each of ``names`` is attributed to: the instruction's own; else that of an
    instruction of the computation it calls (the root first); else that of its nearest consumer with
    one (breadth-first through its consumers); else ``None``."""
    users: dict[str, list[str]] = collections.defaultdict(list)
    for inst in module.instructions.values():
        for operand in inst.operands:
            users[operand].append(inst.name)

    def own(name: str) -> str | None:
        inst = module.instructions[name]
        if inst.op_name:
            return inst.op_name
        for computation in inst.calls:
            for called in reversed(module.computations.get(computation, ())):  # the root is last
                if module.instructions[called].op_name:
                    return module.instructions[called].op_name
        return None

    result: dict[str, str | None] = {}
    for name in names:
        found, queue, seen = own(name), collections.deque(users[name]), {name}
        while found is None and queue:
            user = queue.popleft()
            if user in seen:
                continue
            seen.add(user)
            found = own(user)
            queue.extend(users[user])
        result[name] = found
    return result


def layer_and_phase(op_name: str | None) -> tuple[str, str]:
    """``"jit(loss)/transpose(jvp(block1_pool))/select_and_scatter"`` -> ``("block1_pool", "backward")``.

    The layer is the first name scope under the jitted function (wrappers such as ``jvp(...)``
    removed; ``(outside layers)`` when there is none, ``(no op_name)`` without an op_name); the phase
    is ``backward`` under a ``transpose(...)`` (JAX's transposed, i.e. backward, pass), else
    ``forward`` (``other`` without an op_name).
    """
    if not op_name:
        return NO_OP_NAME, "other"
    parts = op_name.split("/")
    scopes = [re.sub(r"^(?:[\w\-]+\()+", "", part).rstrip(")") for part in parts[1:-1]]
    layer = next((scope for scope in scopes if scope), OUTSIDE_LAYERS)
    return layer, "backward" if "transpose(" in op_name else "forward"


def fused_layers(module: HloModule, name: str) -> list[str]:
    """The layers (``layer_and_phase``) of the ops a fusion holds, in the order of the fused
    computation; one layer, or none, for most GPU fusions, several where XLA fuses across layers
    (e.g. the CPU backend's XNNPACK fusions of convolutions and poolings)."""
    layers: list[str] = []
    for inst in called_instructions(module, name):
        layer = layer_and_phase(inst.op_name)[0] if inst.op_name else None
        if layer and layer not in layers and layer != OUTSIDE_LAYERS:
            layers.append(layer)
    return layers


def label(module: HloModule, name: str, op_name: str | None, layer_order: tuple[str, ...] = ()) -> tuple[str, str]:
    """(layer, phase) of an instruction: ``layer_and_phase`` of its ``op_name``, with the layer
    written ``first + ... + last (N layers)`` where it fuses ops of more than two layers (first and
    last in ``layer_order`` where it names them; a fusion of two, e.g. a ReLU's gradient with the
    next pooling's, counts for its root's layer)."""
    layer, phase = layer_and_phase(op_name)
    rank = {name: index for index, name in enumerate(layer_order)}
    fused = sorted(fused_layers(module, name), key=lambda fused_layer: rank.get(fused_layer, len(rank)))
    if len(fused) > 2:
        layer = f"{fused[0]} + ... + {fused[-1]} ({len(fused)} layers)"
    return layer, phase


# --- Tracing -----------------------------------------------------------------------------------


@dataclasses.dataclass
class KernelProfile:
    """Kernel time per call of a compiled program, in milliseconds, by instruction."""

    module: str
    calls: int
    wall_ms: float  # wall time per call during the trace (the profiler adds to it)
    source: str  # "device" (GPU/TPU kernels) or "host" (the CPU backend's thunks)
    by_instruction: dict[str, float]  # instruction name (or kernel name, unmatched) -> ms per call
    unmatched: dict[str, float]  # kernel name -> ms per call, for kernels matched to no instruction
    layer: dict[str, tuple[str, str]]  # instruction -> (layer, phase)
    kind: dict[str, str]  # instruction -> category
    position: dict[str, int]  # instruction -> its place in the compiled text (the schedule)
    kernels_per_call: float = 0.0  # kernel launches (or thunks) per call: many short ones cost launch gaps

    @property
    def total_ms(self) -> float:
        return sum(self.by_instruction.values()) + sum(self.unmatched.values())

    def by_layer(self, order: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
        """Layer -> {phase: ms per call}: the layers of ``order`` in that order, then the others
        in the order the program first runs them."""
        scheduled = sorted(self.by_instruction, key=self.position.__getitem__)
        return self._phase_table(lambda name: self.layer[name][0], scheduled, order)

    def by_kind(self) -> dict[str, dict[str, float]]:
        """Kernel kind -> {phase: ms per call}."""
        return self._phase_table(self.kind.__getitem__, self.by_instruction)

    def _phase_table(self, row_of, names, preset: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
        """Row (``row_of(instruction)``) -> {phase: ms per call} over ``names``, the ``preset`` rows
        first (left out where no kernel fell in them: an input, a weightless reshape), unmatched
        kernels last."""
        table: dict[str, dict[str, float]] = {row: dict.fromkeys(PHASES, 0.0) for row in preset}
        for name in names:
            table.setdefault(row_of(name), dict.fromkeys(PHASES, 0.0))[self.layer[name][1]] += self.by_instruction[name]
        for row in preset:
            if not any(table[row].values()):
                del table[row]
        if self.unmatched:
            table.setdefault(UNMATCHED, dict.fromkeys(PHASES, 0.0))["other"] += sum(self.unmatched.values())
        return table


def profile_compiled(compiled, args: tuple, calls: int = 5, sync=None,
                     layer_order: tuple[str, ...] = ()) -> KernelProfile:
    """Traces ``calls`` calls of ``compiled`` (a ``jax.jit(...).lower(...).compile()`` result, already
    warm) on ``args`` and attributes the kernel time.

    Args:
        compiled: a compiled JAX program (``as_text()`` gives its HLO).
        args: its positional arguments.
        calls: calls traced (>= 1); the times are per call.
        sync: waits for a call's result (default ``jax.block_until_ready``).
        layer_order: the model's layer names, in order (how fusions across layers are named).

    Returns:
        The ``KernelProfile``. Raises ``RuntimeError`` when the trace holds no kernel of the program.
    """
    import jax

    if calls < 1:
        raise ValueError(f"calls must be >= 1. Received: calls={calls}")
    sync = sync or jax.block_until_ready
    with tempfile.TemporaryDirectory(prefix="kernel_profile_") as log_dir:
        with jax.profiler.trace(log_dir):
            start = time.perf_counter()
            for _ in range(calls):
                sync(compiled(*args))
            wall_ms = 1e3 * (time.perf_counter() - start) / calls
        paths = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
        if not paths:
            raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {log_dir}")
        data = jax.profiler.ProfileData.from_file(paths[0])
    return profile_from_trace(compiled.as_text(), data, calls, wall_ms, jax.devices()[0].platform, layer_order)


def profile_from_trace(hlo_text: str, data, calls: int, wall_ms: float, platform: str,
                       layer_order: tuple[str, ...] = ()) -> KernelProfile:
    """Attributes the kernels of a trace (``jax.profiler.ProfileData``: planes of lines of events
    with stats) of ``calls`` calls of the program ``hlo_text`` run on ``platform``."""
    module = parse_hlo(hlo_text)
    source, events = _kernel_events(data, module.name)
    if not events or (platform != "cpu" and source != "device"):
        raise RuntimeError(f"the trace holds no {platform} kernel of {module.name or 'the program'} "
                           "(no device tracer, e.g. CUPTI, on this machine?)")
    by_kernel_name = {_kernel_name(name): name for name in module.instructions}
    by_instruction: dict[str, float] = collections.defaultdict(float)
    unmatched: dict[str, float] = collections.defaultdict(float)
    for kernel, hlo_op, duration_ns in events:
        name = hlo_op if hlo_op in module.instructions else by_kernel_name.get(_kernel_name(kernel))
        if name is None:
            unmatched[kernel] += duration_ns / 1e6 / calls
        else:
            by_instruction[name] += duration_ns / 1e6 / calls
    attributed = origins(module, by_instruction)
    return KernelProfile(
        module=module.name, calls=calls, wall_ms=wall_ms, source=source,
        by_instruction=dict(by_instruction), unmatched=dict(unmatched),
        layer={name: label(module, name, attributed[name], layer_order) for name in by_instruction},
        kind={name: category(module, name) for name in by_instruction},
        position={name: index for index, name in enumerate(module.instructions) if name in by_instruction},
        kernels_per_call=len(events) / calls,
    )


def _kernel_name(name: str) -> str:
    return re.sub(r"[.\-]", "_", name)


def _kernel_events(data, module_name: str) -> tuple[str, list[tuple[str, str | None, float]]]:
    """(kernel name, hlo_op or None, duration ns) of the program's kernels: the device planes'
    (their "XLA Ops" line where the profiler derived one, else their CUDA streams' lines, "Stream
    #N...", else every line but the derived ones: no "CUPTI overhead"), else the CPU backend's thunks. Events
    whose ``hlo_module`` names another program are left out, unless that would leave none (the
    trace holds only the traced calls)."""
    device, host = [], []
    for plane in data.planes:
        if plane.name.startswith("/device:") and not plane.name.startswith("/device:CPU"):
            lines = list(plane.lines)
            ops_lines = [line for line in lines if line.name == "XLA Ops"]
            streams = [line for line in lines if line.name.startswith("Stream #")]
            for line in ops_lines or streams or [line for line in lines if not line.name.startswith(("XLA ", "Steps"))]:
                for event in line.events:
                    stats = dict(event.stats)
                    hlo_op = stats.get("hlo_op") or (event.name if ops_lines else None)
                    device.append((stats.get("hlo_module"), (event.name, hlo_op, event.duration_ns)))
        elif plane.name.startswith("/host:CPU"):
            for line in plane.lines:
                for event in line.events:
                    stats = dict(event.stats)
                    if "hlo_op" in stats:
                        host.append((stats.get("hlo_module"), (event.name, stats["hlo_op"], event.duration_ns)))
    source, events = ("device", device) if device else ("host", host)
    ours = [event for module, event in events if module in (module_name, None, "")]
    return source, ours or [event for _, event in events]


# --- Report ------------------------------------------------------------------------------------


def render(profile: KernelProfile, layer_order: tuple[str, ...] = (), top: int = 12) -> list[str]:
    """Markdown: the kernel time by layer (forward / backward; ``layer_order`` first, e.g. the
    model's layers), by kind of kernel, and the ``top`` instructions."""
    total = profile.total_ms or 1.0
    where = "device kernels" if profile.source == "device" else "XLA CPU thunks (busy time, threads overlap)"
    lines = [
        f"Kernel time per call of `{profile.module}` ({where}, traced over {profile.calls} calls with "
        f"jax.profiler, benchmarks/kernel_profile.py): {profile.total_ms:.2f} ms summed over "
        f"{profile.kernels_per_call:.0f} kernels; wall time per call while tracing {profile.wall_ms:.2f} ms (the "
        "profiler adds to it: XLA runs command buffers op by op while tracing).", "",
    ]

    def phase_rows(heading: str, table: dict[str, dict[str, float]]) -> list[str]:
        rows = [f"| {heading} | forward ms | backward ms | other ms | total ms | % of kernel time |",
                "|---|---:|---:|---:|---:|---:|"]
        for row, phases in table.items():
            rows.append(f"| {row} | " + " | ".join(f"{phases[p]:.3f}" for p in PHASES)
                        + f" | {sum(phases.values()):.3f} | {100 * sum(phases.values()) / total:.1f} |")
        return rows

    lines += phase_rows("layer", profile.by_layer(layer_order))
    kinds = dict(sorted(profile.by_kind().items(), key=lambda item: -sum(item[1].values())))
    lines += ["", *phase_rows("kind of kernel", kinds)]
    lines += ["", f"The {top} longest instructions:", "",
              "| instruction | kind | layer | phase | ms per call | % of kernel time |", "|---|---|---|---|---:|---:|"]
    ranked = sorted(profile.by_instruction.items(), key=lambda item: -item[1])[:top]
    for name, ms in ranked:
        layer, phase = profile.layer[name]
        lines.append(f"| {name} | {profile.kind[name]} | {layer} | {phase} | {ms:.3f} | {100 * ms / total:.1f} |")
    if profile.unmatched:
        names = sorted(profile.unmatched.items(), key=lambda item: -item[1])[:5]
        lines += ["", "Kernels matched to no instruction (the longest): "
                  + ", ".join(f"`{name}` {ms:.3f} ms" for name, ms in names) + "."]
    return lines


def profile_lines(compiled, args: tuple, calls: int, layer_order: tuple[str, ...] = ()) -> list[str]:
    """``render`` of ``profile_compiled`` over ``calls`` calls (``[]`` for 0). A failed trace is
    reported in one line instead: the profile is a diagnostic, the timings beside it stand alone."""
    if not calls:
        return []
    try:
        profile = profile_compiled(compiled, args, calls, layer_order=layer_order)
    except Exception as error:  # noqa: BLE001
        return [f"Kernel profile not taken: {type(error).__name__}: {error}"]
    return render(profile, layer_order)
