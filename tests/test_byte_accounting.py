"""experiments/performance/byte_accounting.py: exact bytes on a hand-written HLO module, the trace
join on a hand-written trace, the floor rules, and (where ../shared has the H200 session's files)
facts of the real step that the accounting must reproduce."""

import gzip
import importlib.util
import json
import sys

import pytest

from conftest import REPO, SHARED_DATA

_SPEC = importlib.util.spec_from_file_location(
    "byte_accounting", REPO / "experiments" / "performance" / "byte_accounting.py")
ba = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("byte_accounting", ba)   # dataclasses look their module up by name
_SPEC.loader.exec_module(ba)

H200 = SHARED_DATA.parent / "gpu" / "2026-12-04-h200"
H200_HLO = H200 / "rwl_bf16_256_step_hlo.txt.gz"
H200_TRACE = H200 / "rwl20" / "vm.trace.json.gz"

# A pool of 8 images, 4 gathered, a convolution to 16 channels, one-pass statistics, a BN apply,
# a while loop of 3 trips with one fusion in its body, a copy and a cuBLAS call.
HLO = """HloModule jit_step, is_scheduled=true

FileNames
1 "/src/rwl_jax/data/augment_jax.py"
2 "/venv/flax/nnx/nn/normalization.py"
3 "/venv/flax/nnx/nn/linear.py"

FunctionNames
1 "random_view"
2 "BatchNorm.__call__"
3 "Conv.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=10 end_line=10 column=1 end_column=2}
2 {file_name_id=2 function_name_id=2 line=20 end_line=20 column=1 end_column=2}
3 {file_name_id=3 function_name_id=3 line=30 end_line=30 column=1 end_column=2}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
3 {file_location_id=3 parent_frame_id=3}

%region_add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b), metadata={op_name="jit(step)/add" stack_frame_id=1}
}

%fused_gather (param_0: u8[8,4,4,3], param_1: s32[4]) -> bf16[4,4,4,3] {
  %param_0 = u8[8,4,4,3]{3,2,1,0} parameter(0)
  %param_1 = s32[4]{0} parameter(1)
  %gather.1 = u8[4,4,4,3]{3,2,1,0} gather(%param_0, %param_1), offset_dims={1,2,3}, slice_sizes={1,4,4,3}, metadata={op_name="jit(step)/gather" stack_frame_id=1}
  ROOT %convert.1 = bf16[4,4,4,3]{3,2,1,0} convert(%gather.1), metadata={op_name="jit(step)/convert_element_type" stack_frame_id=1}
}

%fused_stats (param_0.2: bf16[4,4,4,16]) -> (f32[4,16], f32[4,16]) {
  %param_0.2 = bf16[4,4,4,16]{3,2,1,0} parameter(0)
  %convert.2 = f32[4,4,4,16]{3,2,1,0} convert(%param_0.2), metadata={op_name="jit(step)/jvp()/convert_element_type" stack_frame_id=2}
  %bitcast.2 = f32[4,16,16]{2,1,0} bitcast(%convert.2)
  %zero = f32[] constant(0)
  %reduce.1 = f32[4,16]{1,0} reduce(%bitcast.2, %zero), dimensions={1}, to_apply=%region_add
  %square = f32[4,4,4,16]{3,2,1,0} multiply(%convert.2, %convert.2)
  %bitcast.3 = f32[4,16,16]{2,1,0} bitcast(%square)
  %reduce.2 = f32[4,16]{1,0} reduce(%bitcast.3, %zero), dimensions={1}, to_apply=%region_add
  ROOT %tuple.1 = (f32[4,16]{1,0}, f32[4,16]{1,0}) tuple(%reduce.1, %reduce.2)
}

%fused_apply (param_0.3: bf16[4,4,4,16], param_1.3: f32[16]) -> bf16[4,4,4,16] {
  %param_0.3 = bf16[4,4,4,16]{3,2,1,0} parameter(0)
  %param_1.3 = f32[16]{0} parameter(1)
  %convert.3 = f32[4,4,4,16]{3,2,1,0} convert(%param_0.3)
  %broadcast.3 = f32[4,4,4,16]{3,2,1,0} broadcast(%param_1.3), dimensions={3}
  %multiply.3 = f32[4,4,4,16]{3,2,1,0} multiply(%convert.3, %broadcast.3)
  ROOT %convert.4 = bf16[4,4,4,16]{3,2,1,0} convert(%multiply.3), metadata={op_name="jit(step)/transpose(jvp())/mul" stack_frame_id=2}
}

%fused_apply.1 (param_0.4: bf16[4,4,4,16], param_1.4: f32[16]) -> bf16[4,4,4,16] {
  %param_0.4 = bf16[4,4,4,16]{3,2,1,0} parameter(0)
  %param_1.4 = f32[16]{0} parameter(1)
  %convert.5 = f32[4,4,4,16]{3,2,1,0} convert(%param_0.4)
  %broadcast.5 = f32[4,4,4,16]{3,2,1,0} broadcast(%param_1.4), dimensions={3}
  %multiply.6 = f32[4,4,4,16]{3,2,1,0} multiply(%convert.5, %broadcast.5)
  ROOT %convert.6 = bf16[4,4,4,16]{3,2,1,0} convert(%multiply.6), metadata={op_name="jit(step)/transpose(jvp())/mul" stack_frame_id=2}
}

%fused_scale (param_0.5: f32[16]) -> f32[16] {
  %param_0.5 = f32[16]{0} parameter(0)
  ROOT %multiply.5 = f32[16]{0} multiply(%param_0.5, %param_0.5)
}

%body (state: (s32[], f32[16])) -> (s32[], f32[16]) {
  %state = (s32[], f32[16]{0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %v = f32[16]{0} get-tuple-element(%state), index=1
  %loop_multiply_fusion = f32[16]{0} fusion(%v), kind=kLoop, calls=%fused_scale
  ROOT %next = (s32[], f32[16]{0}) tuple(%i, %loop_multiply_fusion)
}

%condition (state.1: (s32[], f32[16])) -> pred[] {
  %state.1 = (s32[], f32[16]{0}) parameter(0)
  ROOT %true = pred[] constant(true)
}

ENTRY %main.1 (pool: u8[8,4,4,3], indices: s32[4], kernel: bf16[16,3,3,3], scale: f32[16], a: f32[4,8], b: f32[8,8]) -> (bf16[4,4,4,16], f32[16]) {
  %pool = u8[8,4,4,3]{3,2,1,0} parameter(0)
  %indices = s32[4]{0} parameter(1)
  %kernel = bf16[16,3,3,3]{3,2,1,0} parameter(2)
  %scale = f32[16]{0} parameter(3)
  %a = f32[4,8]{1,0} parameter(4)
  %b = f32[8,8]{1,0} parameter(5)
  %loop_convert_fusion = bf16[4,4,4,3]{3,2,1,0} fusion(%pool, %indices), kind=kLoop, calls=%fused_gather
  %cudnn-conv.1 = (bf16[4,4,4,16]{3,2,1,0}, u8[4096]{0}) custom-call(%loop_convert_fusion, %kernel), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/jvp()/conv_general_dilated" stack_frame_id=3}
  %get-tuple-element.1 = bf16[4,4,4,16]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %input_reduce_fusion.1 = (f32[4,16]{1,0}, f32[4,16]{1,0}) fusion(%get-tuple-element.1), kind=kInput, calls=%fused_stats
  %loop_multiply_fusion.2 = bf16[4,4,4,16]{3,2,1,0} fusion(%get-tuple-element.1, %scale), kind=kLoop, calls=%fused_apply
  %loop_multiply_fusion.3 = bf16[4,4,4,16]{3,2,1,0} fusion(%loop_multiply_fusion.2, %scale), kind=kLoop, calls=%fused_apply.1
  %init = (s32[], f32[16]{0}) tuple(%indices, %scale)
  %while.1 = (s32[], f32[16]{0}) while(%init), condition=%condition, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %get-tuple-element.2 = f32[16]{0} get-tuple-element(%while.1), index=1
  %copy.1 = f32[16]{0} copy(%get-tuple-element.2)
  %custom-call.1 = (f32[4,8]{1,0}, s8[1024]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul"
  ROOT %tuple.9 = (bf16[4,4,4,16]{3,2,1,0}, f32[16]{0}) tuple(%loop_multiply_fusion.3, %copy.1)
}
"""


@pytest.fixture(scope="module")
def small_ops():
  return {op.name: op for op in ba.executed_ops(ba.parse_module(HLO))}


def test_shapes_count_elements_times_dtype_size_whatever_the_layout_or_nesting():
  assert ba.type_bytes("bf16[512,32,32,64]{3,2,1,0}") == 512 * 32 * 32 * 64 * 2
  assert ba.type_bytes("f32[]") == 4
  assert ba.type_bytes("(f32[512,64]{1,0}, /*index=1*/pred[3]{0}, (s32[], u8[5]{0}))") == \
      512 * 64 * 4 + 3 + 4 + 5


def test_each_launching_op_reads_its_operands_and_writes_its_results(small_ops):
  assert sorted(small_ops) == sorted([
      "loop_convert_fusion", "cudnn-conv.1", "input_reduce_fusion.1", "loop_multiply_fusion.2",
      "loop_multiply_fusion.3", "loop_multiply_fusion", "copy.1", "custom-call.1"])
  image = 4 * 4 * 3
  gather = small_ops["loop_convert_fusion"]       # 4 of the pool's 8 images, and the indices
  assert (gather.bytes_read, gather.bytes_written) == (4 * image + 4 * 4, 4 * image * 2)
  conv = small_ops["cudnn-conv.1"]                # bf16 images and kernel; no scratch written
  assert (conv.kind, conv.bytes_read, conv.bytes_written) == \
      ("conv fprop", 4 * image * 2 + 16 * 27 * 2, 4 * 4 * 4 * 16 * 2)
  stats = small_ops["input_reduce_fusion.1"]
  assert (stats.kind, stats.bytes_read, stats.bytes_written) == \
      ("reduction", 4 * 4 * 4 * 16 * 2, 2 * 4 * 16 * 4)
  apply = small_ops["loop_multiply_fusion.2"]
  assert (apply.kind, apply.bytes_read, apply.bytes_written) == \
      ("elementwise", 4 * 4 * 4 * 16 * 2 + 16 * 4, 4 * 4 * 4 * 16 * 2)
  assert small_ops["loop_multiply_fusion"].bytes_read == 3 * 16 * 4   # 3 trips of the while body
  assert (small_ops["copy.1"].kind, small_ops["copy.1"].bytes_written) == ("copy", 16 * 4)
  gemm = small_ops["custom-call.1"]
  assert (gemm.kind, gemm.bytes_read, gemm.bytes_written) == ("gemm", 32 * 4 + 64 * 4, 32 * 4)


def test_roles_come_from_the_fused_ops_source_files_and_phases_from_vjp_names(small_ops):
  assert small_ops["loop_convert_fusion"].role == "augmentation"
  assert small_ops["input_reduce_fusion.1"].role == ba.BN_ROLE    # not its reducer's file
  assert small_ops["cudnn-conv.1"].role == "convolution"
  assert small_ops["input_reduce_fusion.1"].phase == "forward"
  assert small_ops["loop_multiply_fusion.2"].phase == "backward"
  assert small_ops["input_reduce_fusion.1"].inputs == ("cudnn-conv.1",)


def _kernel(name, ts, dur, hlo_op="command_buffer_1"):
  return {"ph": "X", "pid": 1, "tid": 7, "ts": ts, "dur": dur, "name": name,
          "args": {"hlo_op": hlo_op}}


def test_the_trace_join_places_named_shared_and_unnamed_kernels_step_by_step():
  module = ba.parse_module(HLO)
  ops = ba.executed_ops(module)
  events, ts = [], 0.0
  for _ in range(2):   # two steps
    for name, hlo_op, dur in [
        ("loop_convert_fusion", "command_buffer_1", 1.0),
        ("Memset 3", "cudnn-conv.1", 0.5), ("sm90_xmma_fprop", "cudnn-conv.1", 4.0),
        ("input_reduce_fusion_1", "command_buffer_2", 2.0),
        ("loop_multiply_fusion_2", "command_buffer_2", 3.0),
        ("loop_multiply_fusion_2", "command_buffer_2", 3.0),   # .3 shares .2's kernel
        ("loop_multiply_fusion", "command_buffer_2", 0.25),
        ("loop_multiply_fusion", "command_buffer_2", 0.25),
        ("loop_multiply_fusion", "command_buffer_2", 0.25),
        ("memcpy32_post", "command_buffer_2", 0.5),             # the copy, unnamed
        ("sm80_gemm_cublas", "command_buffer_2", 6.0)]:        # the cuBLAS call, unnamed
      events.append(_kernel(name, ts, dur, hlo_op))
      ts += 10
  trace = {"traceEvents": [{"ph": "M", "pid": 1, "name": "process_name",
                            "args": {"name": "/device:GPU:0"}},
                           {"ph": "M", "pid": 2, "name": "process_name",
                            "args": {"name": "/host:CPU"}},
                           dict(_kernel("host op", 0, 99.0), pid=2)] + events}
  steps, unplaced = ba.join_trace(module, ops, ba.kernel_events(trace))
  by_name = {op.name: op for op in ops}
  assert (steps, unplaced) == (2, {})
  assert {n: (o.kernels, o.trace_us) for n, o in by_name.items()} == {
      "loop_convert_fusion": (1, 1.0), "cudnn-conv.1": (2, 4.5),
      "input_reduce_fusion.1": (1, 2.0), "loop_multiply_fusion.2": (1, 3.0),
      "loop_multiply_fusion.3": (1, 3.0), "loop_multiply_fusion": (3, 0.75),
      "copy.1": (1, 0.5), "custom-call.1": (1, 6.0)}


def test_the_floor_counts_each_bn_layer_once_with_its_own_rules():
  sites = ba.floor_sites(batch=2, image_size=4, blocks=((8, 1), (16, 2)))
  a1, a2 = 2 * 4 * 4 * 8 * 2, 2 * 2 * 2 * 16 * 2
  # stem; block0 (identity, output feeds block1: 2 gradient parts); block1 (projection, last)
  assert [(s.name, s.activation_bytes, s.forward, s.backward) for s in sites] == [
      ("stem bn+relu", a1, 3, 7), ("block0 bn1+relu", a1, 3, 5),
      ("block0 bn2+add+relu", a1, 4, 10), ("block1 bn1+relu", a2, 3, 5),
      ("block1 bn2+bn_shortcut+add+relu", a2, 5, 8)]
  resnet18 = ba.floor_sites(batch=512)
  assert len(resnet18) == 17   # 20 BN layers: the 3 shortcut BNs share their block's site
  assert sum(ba.expected_forward_convs(512).values()) == 20


def test_a_model_that_is_no_cifar_resnet18_gets_no_floor_and_the_report_lists_every_op(
    tmp_path, capsys):
  ops = ba.executed_ops(ba.parse_module(HLO))
  summary = ba.summarise(ops, 4.3e12)
  assert not summary["model_matches"] and "floor" not in summary
  assert summary["by_kind"]["conv fprop"]["ops"] == 1
  hlo = tmp_path / "step.txt"
  hlo.write_text(HLO)
  assert ba.main([f"--hlo={hlo}", "--top=0", f"--json={tmp_path / 'out.json'}"]) == 0
  report = capsys.readouterr().out
  assert all(f"| {op.name} |" in report for op in ops) and "no floor" in report
  written = json.loads((tmp_path / "out.json").read_text())
  assert [o["name"] for o in written["op_list"]] == [op.name for op in ops]


def test_bad_input_is_one_error_line_and_status_2(tmp_path, capsys):
  not_hlo = tmp_path / "step.txt"
  not_hlo.write_text("this is not HLO\n")
  for argv in ([f"--hlo={tmp_path / 'missing.txt'}"], [f"--hlo={not_hlo}"],
               [f"--hlo={not_hlo}", "--bandwidth_tbs=0"]):
    with pytest.raises(SystemExit) as stopped:
      ba.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def h200():
  if not (H200_HLO.exists() and H200_TRACE.exists()):
    pytest.skip(f"the H200 session's HLO and trace are not under {H200} (CI has ../shared)")
  text = gzip.decompress(H200_HLO.read_bytes()).decode()
  module = ba.parse_module(text)
  ops = ba.executed_ops(module)
  trace = json.loads(gzip.decompress(H200_TRACE.read_bytes()))
  events = ba.kernel_events(trace)
  steps, unplaced = ba.join_trace(module, ops, events)
  return text, module, ops, trace, events, steps, unplaced


def test_the_real_step_has_one_convolution_per_bn_layer_and_weight(h200):
  text, module, ops, *_ = h200
  entry = [i for i in module.computations[module.entry] if i.opcode == "parameter"]
  bn_scales = [i for i in entry if i.name.startswith("state_params__encoder")
               and "scale" in i.name]
  conv_kernels = [i for i in entry if i.name.startswith("state_params__encoder")
                  and "kernel" in i.name]
  kinds = [op.kind for op in ops]
  assert kinds.count("conv fprop") == len(bn_scales) == 20
  assert kinds.count("conv wgrad") == len(conv_kernels) == 20
  assert kinds.count("conv dgrad") == 19   # no gradient for the images
  assert text.count('custom_call_target="__cudnn$conv') == 59
  assert ba.summarise(ops, 4.3e12)["model_matches"]
  gather = next(op for op in ops if op.role == "augmentation" and "u8[1,2048,32,32,3]" in op.largest)
  assert gather.bytes_read == 256 * 32 * 32 * 3 + 256 * 4     # 256 images of the pool, indices
  # One-pass statistics: each forward convolution's output is read by one forward fusion that
  # reduces it twice (sum and sum of squares, both f32) and by no other statistics pass.
  instructions = {i.name: i for i in module.computations[module.entry]}

  def reduces(op):
    body = module.computations[instructions[op.name].attribute("calls")]
    return sum(i.opcode == "reduce" for i in body)

  for conv in (op for op in ops if op.kind == "conv fprop"):
    readers = [op for op in ops if conv.name in op.inputs and op.kind == "reduction"
               and op.phase == "forward"]
    assert [reduces(op) for op in readers if reduces(op) == 2] == [2], conv.name


def test_every_op_of_the_real_step_gets_its_kernels_in_every_traced_step(h200):
  _, _, ops, trace, events, steps, unplaced = h200
  executions = [e for e in trace["traceEvents"]
                if e.get("name") == "CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice"]
  assert steps == len(executions) == 5
  assert all(op.kernels >= 1 for op in ops)
  assert all(op.kernels == 1 for op in ops if op.opcode == "fusion")
  total = sum(e["dur"] for e in events) / steps
  placed = sum(op.trace_us for op in ops)
  assert placed + sum(unplaced.values()) == pytest.approx(total)
  assert sum(unplaced.values()) < 1e-3 * total
