"""benchmarks/step_profile.py charges a trace's operations to the right HLO instructions,
layers and kinds: on a small hand-written module, and on a real CPU trace."""

import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import step_profile  # noqa: E402  pylint: disable=wrong-import-position

MODULE = """HloModule jit__fun, entry_computation_layout={(f32[4,8]{1,0})->f32[]}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%fused_computation.1 (param_0: f32[4,8], param_1: f32[8,3]) -> f32[4,3] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[8,3]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,3]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, \
rhs_contracting_dims={0}, metadata={op_name="jit(_fun)/shard_map/jvp(Model)/backbone/enc0/Conv_0/\
dot_general" stack_frame_id=7}
}

%fused_computation.2 (param_0.1: f32[4,3]) -> f32[3,4] {
  %param_0.1 = f32[4,3]{1,0} parameter(0)
  %transpose.1 = f32[3,4]{0,1} transpose(%param_0.1), dimensions={1,0}
  ROOT %copy.1 = f32[3,4]{1,0} copy(%transpose.1)
}

%fused_computation.3 (param_0.2: f32[3,4]) -> f32[3,4] {
  %param_0.2 = f32[3,4]{1,0} parameter(0)
  ROOT %exponential.1 = f32[3,4]{1,0} exponential(%param_0.2), metadata={op_name="jit(_fun)/\
shard_map/transpose(jvp(Model))/backbone/dec0/Conv_1/exp"}
}

ENTRY %main.9 (p0: f32[4,8], p1: f32[8,3]) -> (f32[], f32[3,4]) {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,3]{1,0} parameter(1)
  %ynn_fusion = f32[4,3]{1,0} fusion(%p0, %p1), kind=kCustom, calls=%fused_computation.1, \
backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %transpose_copy_fusion = f32[3,4]{1,0} fusion(%ynn_fusion), kind=kLoop, \
calls=%fused_computation.2
  %exp_fusion = f32[3,4]{1,0} fusion(%transpose_copy_fusion), kind=kLoop, \
calls=%fused_computation.3
  %c = f32[] constant(1)
  ROOT %psum.5 = (f32[], f32[3,4]{1,0}) all-reduce(%c, %exp_fusion), channel_id=1, \
replica_groups={{0,1}}, to_apply=%add, metadata={op_name="jit(_fun)/shard_map/psum"}
}
""".replace("\\\n", "")


def test_instructions_named_by_what_they_compute():
  ins = step_profile.parse_hlo(MODULE)
  # Only the entry computation's instructions: fused ones run inside their fusion.
  assert set(ins) == {"p0", "p1", "ynn_fusion", "transpose_copy_fusion", "exp_fusion", "c",
                      "psum.5"}
  dot = ins["ynn_fusion"]
  assert dot.description == "dot f32[4,3]" and dot.has_product
  assert step_profile.kind_of(dot) == "convolution or product"
  assert step_profile.layer_of(dot) == "forward backbone/enc0/Conv_0 (dot_general)"
  copy = ins["transpose_copy_fusion"]
  assert copy.op_name == "" and not copy.has_product
  assert step_profile.kind_of(copy) == "layout copy or transpose"
  assert step_profile.layer_of(copy) == "(unnamed) copy f32[3,4]"
  back = ins["exp_fusion"]
  assert step_profile.layer_of(back) == "backward backbone/dec0/Conv_1 (exp)"
  assert step_profile.kind_of(back) == "other"
  assert step_profile.kind_of(ins["psum.5"]) == "collective"
  assert step_profile.layer_of(ins["psum.5"]) == "forward outside the model (psum)"


def test_tables_sum_the_trace_per_device_and_step():
  ins = step_profile.parse_hlo(MODULE)
  events = [
      {"ph": "X", "name": "ynn_fusion", "dur": 3000.0},
      {"ph": "X", "name": "ynn_fusion", "dur": 5000.0},
      {"ph": "X", "name": "psum.5", "dur": 2000.0},
      {"ph": "X", "name": "Rendezvous", "dur": 1500.0},     # inside psum.5: not counted twice
      {"ph": "X", "name": "dot.1", "dur": 9000.0},          # not an entry instruction
      {"ph": "i", "name": "exp_fusion", "dur": 7000.0},     # not a complete event
  ]
  times = step_profile.device_times(events, ins)
  assert times == {"ynn_fusion": 8000.0, "psum.5": 2000.0}
  text = step_profile.tables(times, ins, per=2, top=5)   # e.g. 2 devices x 1 step
  assert "convolution or product | 4.00 | 80%" in text
  assert "collective | 1.00 | 20%" in text
  assert "all | 5.00 | 100%" in text
  assert ("forward backbone/enc0/Conv_0 (dot_general) | convolution or product | 4.00 | 80.0%"
          in text)
  assert "forward outside the model (psum) | collective | 1.00 | 20.0%" in text


def test_a_cpu_trace_names_its_operations_after_the_hlo_instructions():
  """What the tool rests on: XLA CPU's trace events carry the compiled module's
  instruction names."""
  f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum())
  x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
  compiled = f.lower(x, w).compile()
  ins = step_profile.parse_hlo(compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(3):
        out = compiled(x, w)
      jax.block_until_ready(out)
    times = step_profile.device_times(step_profile.read_trace(d), ins)
  assert times, "no trace event matched an instruction of the compiled module"
  assert any(ins[name].has_product for name in times)
  assert np.isfinite(float(out))
