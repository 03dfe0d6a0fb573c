"""benchmarks/kernel_profile.py: kernel time of a compiled JAX program by layer, phase and kind."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import kernel_profile as kp  # noqa: E402

# A GPU-style optimised module: a cuDNN convolution, a fusion holding a select-and-scatter, a
# layout copy XLA added without metadata, and a reduction.
HLO = """HloModule jit_loss, is_scheduled=true, entry_computation_layout={(bf16[2,8,8,4]{3,2,1,0})->f32[]}

%fused_select (param_0: bf16[2,8,8,4], param_1: bf16[2,4,4,4]) -> bf16[2,8,8,4] {
  %param_0 = bf16[2,8,8,4]{3,2,1,0} parameter(0)
  %param_1 = bf16[2,4,4,4]{3,2,1,0} parameter(1)
  ROOT %select-and-scatter.1 = bf16[2,8,8,4]{3,2,1,0} select-and-scatter(%param_0, %param_1, %c), window={size=1x2x2x1 stride=1x2x2x1}, select=%ge, scatter=%add, metadata={op_name="jit(loss)/transpose(jvp(block1_pool))/select_and_scatter"}
}

ENTRY %main (x: bf16[2,8,8,4]) -> f32[] {
  %x = bf16[2,8,8,4]{3,2,1,0} parameter(0), metadata={op_name="x"}
  %cudnn-conv.1 = (bf16[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, custom_call_target="__cudnn$convForward", metadata={op_name="jit(loss)/jvp(block1_conv1)/conv_general_dilated"}
  %get-tuple-element.1 = bf16[2,8,8,4]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %copy.3 = bf16[2,8,8,4]{2,1,3,0} copy(%get-tuple-element.1)
  %loop_select_fusion.2 = bf16[2,8,8,4]{3,2,1,0} fusion(%copy.3, %y), kind=kLoop, calls=%fused_select
  ROOT %reduce.9 = f32[] reduce(%loop_select_fusion.2, %zero), dimensions={0,1,2,3}, to_apply=%add, metadata={op_name="jit(loss)/jvp(segmentation_cross_entropy)/reduce_sum"}
}
"""


def _event(name, duration_ms, **stats):
    return SimpleNamespace(name=name, duration_ns=duration_ms * 1e6, stats=list(stats.items()))


def _trace(*planes):
    return SimpleNamespace(planes=[
        SimpleNamespace(name=name, lines=[SimpleNamespace(name=line, events=events) for line, events in lines])
        for name, lines in planes
    ])


def test_parse_hlo_reads_opcodes_operands_calls_and_metadata():
    module = kp.parse_hlo(HLO)
    assert module.name == "jit_loss" and module.entry == "main"
    conv = module.instructions["cudnn-conv.1"]
    assert (conv.opcode, conv.operands, conv.custom_call_target) == ("custom-call", ("x", "w"), "__cudnn$convForward")
    assert conv.op_name == "jit(loss)/jvp(block1_conv1)/conv_general_dilated"
    fusion = module.instructions["loop_select_fusion.2"]
    assert (fusion.opcode, fusion.calls, fusion.op_name) == ("fusion", ("fused_select",), None)
    assert module.instructions["x"].op_name is None  # a parameter's bare name is no scope
    assert module.computations["fused_select"] == ("param_0", "param_1", "select-and-scatter.1")
    assert [kp.category(module, n) for n in ("cudnn-conv.1", "loop_select_fusion.2", "copy.3", "reduce.9")] == [
        "__cudnn$convForward", "fusion: select-and-scatter", "copy", "reduce"]


def test_instructions_without_metadata_take_their_callee_or_nearest_consumer():
    module = kp.parse_hlo(HLO)
    found = kp.origins(module, ["loop_select_fusion.2", "copy.3", "get-tuple-element.1", "reduce.9"])
    assert found["loop_select_fusion.2"] == "jit(loss)/transpose(jvp(block1_pool))/select_and_scatter"  # callee root
    assert found["copy.3"] == found["loop_select_fusion.2"]  # its consumer
    assert found["get-tuple-element.1"] == found["loop_select_fusion.2"]  # two consumers on
    assert found["reduce.9"] == "jit(loss)/jvp(segmentation_cross_entropy)/reduce_sum"


@pytest.mark.parametrize("op_name,expected", [
    ("jit(loss)/transpose(jvp(block1_pool))/select_and_scatter", ("block1_pool", "backward")),
    ("jit(loss)/jvp(block1_conv1)/jit(relu)/max", ("block1_conv1", "forward")),
    ("jit(loss)/transpose(jvp())/mul", (kp.OUTSIDE_LAYERS, "backward")),
    ("jit(apply)/sub", (kp.OUTSIDE_LAYERS, "forward")),
    ("jit(_lambda)/fc6/dot_general", ("fc6", "forward")),  # inference: no jvp
    (None, (kp.NO_OP_NAME, "other")),
])
def test_layer_and_phase(op_name, expected):
    assert kp.layer_and_phase(op_name) == expected


def test_device_kernels_match_by_hlo_op_or_kernel_name_and_skip_other_programs():
    trace = _trace(
        ("/device:GPU:0", [("Stream #14(compute)", [
            _event("sm90_xmma_fprop_implicit_gemm", 2.0, hlo_op="cudnn-conv.1", hlo_module="jit_loss"),
            _event("sm90_xmma_fprop_implicit_gemm", 2.0, hlo_op="cudnn-conv.1", hlo_module="jit_loss"),
            _event("loop_select_fusion_2", 1.0),  # no annotation: matched by the kernel's name
            _event("MemcpyD2D", 0.5),
            _event("sm90_xmma_fprop_implicit_gemm", 9.0, hlo_op="cudnn-conv.1", hlo_module="jit_other"),
        ]), ("CUPTI overhead", [_event("cuptiActivityFlushAll", 4.0)])]),
        ("/host:CPU", [("launch", [_event("cudnn-conv.1", 7.0, hlo_op="cudnn-conv.1", hlo_module="jit_loss")])]),
    )
    profile = kp.profile_from_trace(HLO, trace, calls=2, wall_ms=3.0, platform="gpu")
    assert profile.source == "device"
    assert profile.by_instruction == {"cudnn-conv.1": pytest.approx(2.0), "loop_select_fusion.2": pytest.approx(0.5)}
    assert profile.unmatched == {"MemcpyD2D": pytest.approx(0.25)}
    assert profile.total_ms == pytest.approx(2.75)  # The profiler's own "CUPTI overhead" line is no kernel.
    assert profile.kernels_per_call == 2.0  # 4 of this program's kernels in 2 calls
    layers = profile.by_layer()
    assert layers["block1_conv1"] == {"forward": pytest.approx(2.0), "backward": 0.0, "other": 0.0}
    assert layers["block1_pool"]["backward"] == pytest.approx(0.5)
    assert layers[kp.UNMATCHED]["other"] == pytest.approx(0.25)
    kinds = profile.by_kind()
    assert kinds["fusion: select-and-scatter"]["backward"] == pytest.approx(0.5)
    text = "\n".join(kp.render(profile, layer_order=("block1_conv1", "block1_pool", "never_ran")))
    assert "| block1_conv1 | 2.000 | 0.000 | 0.000 | 2.000 | 72.7 |" in text
    assert "2.75 ms summed over 2 kernels; wall time per call while tracing 3.00 ms" in text
    assert "never_ran" not in text and "`MemcpyD2D` 0.250 ms" in text
    assert text.index("| block1_conv1 |") < text.index("| block1_pool |")


def test_derived_xla_ops_line_is_used_alone():
    trace = _trace(("/device:GPU:0", [
        ("XLA Ops", [_event("cudnn-conv.1", 3.0)]),
        ("Stream #14(compute)", [_event("sm90_xmma_fprop_implicit_gemm", 3.0, hlo_op="cudnn-conv.1")]),
    ]))
    profile = kp.profile_from_trace(HLO, trace, calls=1, wall_ms=3.0, platform="gpu")
    assert profile.by_instruction == {"cudnn-conv.1": pytest.approx(3.0)} and not profile.unmatched


def test_a_gpu_trace_without_device_kernels_is_an_error():
    trace = _trace(("/host:CPU", [("launch", [_event("cudnn-conv.1", 7.0, hlo_op="cudnn-conv.1")])]))
    with pytest.raises(RuntimeError, match="the trace holds no gpu kernel of jit_loss"):
        kp.profile_from_trace(HLO, trace, calls=1, wall_ms=1.0, platform="gpu")


def test_profile_of_a_real_gradient_on_the_cpu():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def loss(w, x):
        with jax.named_scope("conv_a"):
            y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        with jax.named_scope("pool_b"):
            y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        return jnp.sum(jnp.square(y))

    w, x = jnp.ones((3, 3, 4, 8)), jnp.ones((2, 16, 16, 4))
    compiled = jax.jit(jax.grad(loss)).lower(w, x).compile()
    compiled(w, x).block_until_ready()
    profile = kp.profile_compiled(compiled, (w, x), calls=2)
    layers = profile.by_layer()
    assert profile.source == "host" and profile.calls == 2 and profile.wall_ms > 0
    assert layers["conv_a"]["forward"] > 0 and layers["conv_a"]["backward"] > 0
    assert layers["pool_b"]["backward"] > 0  # the select-and-scatter gradient
    assert sum(sum(p.values()) for p in layers.values()) == pytest.approx(profile.total_ms)
    with pytest.raises(ValueError, match="calls must be >= 1. Received: calls=0"):
        kp.profile_compiled(compiled, (w, x), calls=0)


def test_a_fusion_across_more_than_two_layers_names_its_first_and_last():
    hlo = """HloModule jit_f

%fused_block (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %a = f32[4]{0} convolution(%p, %p), metadata={op_name="jit(f)/block1_conv1/conv_general_dilated"}
  %b = f32[4]{0} convolution(%a, %a), metadata={op_name="jit(f)/block1_conv2/conv_general_dilated"}
  ROOT %c = f32[4]{0} reduce-window(%b, %b), metadata={op_name="jit(f)/block1_pool/reduce_window_max"}
}

%fused_pair (q: f32[4]) -> f32[4] {
  %q = f32[4]{0} parameter(0)
  %d = f32[4]{0} maximum(%q, %q), metadata={op_name="jit(f)/transpose(jvp(block2_conv1))/max"}
  ROOT %e = f32[4]{0} multiply(%d, %d), metadata={op_name="jit(f)/transpose(jvp(block1_pool))/mul"}
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %ynn_fusion = f32[4]{0} fusion(%x), kind=kCustom, calls=%fused_block, metadata={op_name="jit(f)/block1_pool/reduce_window_max"}
  ROOT %pair = f32[4]{0} fusion(%ynn_fusion), kind=kLoop, calls=%fused_pair
}
"""
    module = kp.parse_hlo(hlo)
    assert kp.fused_layers(module, "ynn_fusion") == ["block1_conv1", "block1_conv2", "block1_pool"]
    assert kp.label(module, "ynn_fusion", "jit(f)/block1_pool/reduce_window_max") == (
        "block1_conv1 + ... + block1_pool (3 layers)", "forward")
    # Named in the model's order where one is given.
    assert kp.label(module, "ynn_fusion", None, ("block1_pool", "block1_conv2", "block1_conv1"))[0] == (
        "block1_pool + ... + block1_conv1 (3 layers)")
    # Two layers: the root's.
    assert kp.label(module, "pair", kp.origins(module, ["pair"])["pair"]) == ("block1_pool", "backward")
