"""Where the bytes go: a byte accounting of one compiled train step, joined with a profiler trace.

Reads the optimised HLO text of a jitted step (`compiled.as_text()`, optionally gzipped) and lists
every op that launches work on the device (fusions, custom-calls such as cuDNN convolutions and
cuBLAS GEMMs, copies; the bodies of while/call/conditional ops are walked) with the bytes it reads
(its operands, each once; a fused parameter read only through slice/dynamic-slice/gather counts
the part read) and writes (its result, without a custom-call's scratch buffer), its kind (conv
fprop/dgrad/wgrad, gemm, reduction, elementwise, transpose, copy, sort) and its role, from the
source files of the ops it fuses (BatchNorm/ReLU/residual, augmentation, optimiser, head/loss,
conv weights).

With --trace (a jax.profiler `*.trace.json.gz`), each op gets its device time per step. Kernel
events name their HLO op in args.hlo_op; inside a CUDA command buffer they carry only the kernel
name, which for XLA's own kernels is the fusion's name with '.' written '_'; the rest (a cuBLAS
kernel inside a command buffer) are placed by their position between matched kernels.

Then the bytes XLA moves for the BatchNorm/ReLU/residual work are set against a floor: what a
fused BN(+residual)+ReLU forward and backward must move per layer of a CIFAR ResNet-18 (the model
is checked against the HLO's forward convolutions; the rules are in `floor_sites`).

  python experiments/performance/byte_accounting.py --hlo=STEP_HLO.txt[.gz]
      [--trace=T.trace.json.gz]
      [--bandwidth_tbs=4.3] [--top=40] [--json=OUT.json]

Bad input (a missing or unreadable file, no ENTRY computation): one `error: ...` line, status 2.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import re
import sys

from etils import epath

from rwl_jax.errors import first_line

DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e4m3fnuz": 1,
    "f8e5m2fnuz": 1, "f8e8m0fnu": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5,
    "s2": 0.25, "u2": 0.25, "token": 0,
}
# Ops that launch nothing: they name, alias or reinterpret buffers.
FREE_OPCODES = frozenset({"parameter", "constant", "get-tuple-element", "bitcast", "tuple",
                          "after-all", "partition-id", "replica-id", "opt-barrier",
                          "add-dependency"})
CONTROL_OPCODES = frozenset({"while", "call", "conditional"})
SLICING_OPCODES = frozenset({"slice", "dynamic-slice", "gather"})
CONV_KINDS = {"__cudnn$convForward": "conv fprop",
              "__cudnn$convBiasActivationForward": "conv fprop",
              "__cudnn$convBackwardInput": "conv dgrad",
              "__cudnn$convBackwardFilter": "conv wgrad"}
# Source file of each fused op's innermost stack frame -> the work the op belongs to; the first
# role in this order that any of its fused ops has wins.
ROLE_FILES = (
    ("augmentation", ("augment_jax.py", "device_pipeline.py", "recipe.py", "color_conversion.py")),
    ("bn/relu/residual", ("normalization.py", "resnet.py")),
    ("optimizer", ("optax",)),
    ("head/loss", ("heads.py", "losses/", "methods/")),
    ("dense/conv weights", ("linear.py",)),
)
BN_ROLE = "bn/relu/residual"
# A CIFAR ResNet-18: a 3x3 stride-1 stem to the first block's channels, then (channels, stride)
# per basic block; a block whose stride or width changes has a 1x1 conv + BN shortcut.
RESNET18_CIFAR_BLOCKS = ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                         (512, 1))
SMALL_OP_BYTES = 1 << 20      # below this an op's time is launch latency, not bandwidth

_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,<=]*)\]")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%(\S+)\s*=\s*")
_HEADER = re.compile(r"^(ENTRY\s+)?%(\S+)\s*\(.*\{\s*$")


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str                # result type text: "bf16[512,32,32,64]{3,2,1,0}" or a tuple
  opcode: str
  operands: list
  attributes: str           # everything after the operand list
  number: int | None = None  # a parameter's number

  def attribute(self, key):
    match = re.search(rf"\b{re.escape(key)}=(\"[^\"]*\"|%?[\w.$\-]+)", self.attributes)
    return match.group(1).strip('"').lstrip("%") if match else None

  @property
  def called(self):
    """Computations this instruction calls (fusion and while bodies, branches, reducers)."""
    names = []
    for key in ("calls", "body", "condition", "to_apply"):
      names += re.findall(rf"\b{key}=%([\w.\-]+)", self.attributes)
    for group in re.findall(r"branch_computations=\{([^}]*)\}", self.attributes):
      names += re.findall(r"%([\w.\-]+)", group)
    return names

  @property
  def stack_frame_id(self):
    match = re.search(r"stack_frame_id=(\d+)", self.attributes)
    return int(match.group(1)) if match else None


@dataclasses.dataclass
class Module:
  computations: dict        # name -> [Instruction] in schedule order
  entry: str
  frame_files: dict         # stack frame id -> source file of its innermost location


@dataclasses.dataclass
class Op:
  """One device op of the step: one kernel launch (a cuDNN call may launch a few)."""
  name: str
  opcode: str
  kind: str
  role: str
  bytes_read: float
  bytes_written: float
  order: int                # position in the schedule
  largest: str              # the largest array it reads or writes, e.g. "f32[512,32,32,64]"
  f32_written: float = 0.0  # bytes of f32 arrays of >= 1 MiB among its results
  output: tuple = ()        # dims of its (first) result array
  phase: str = "forward"    # "backward" when a fused op comes from a transpose (VJP)
  source: str = ""          # for a copy: the op whose result it copies
  inputs: tuple = ()        # the ops whose results it reads (through get-tuple-element/bitcast)
  loop: str = ""            # the innermost while loop it runs in
  trace_us: float | None = None   # device time per step
  kernels: float | None = None    # kernel events per step

  @property
  def bytes_moved(self):
    return self.bytes_read + self.bytes_written


# ----------------------------------------------------------------------------------- parsing


def shapes_in(type_text):
  """[(dtype, dims)] of every array in a type; a tuple lists its elements in order."""
  type_text = re.sub(r"/\*.*?\*/", "", type_text)
  return [(dtype, tuple(int(d.split("=")[-1]) for d in dims.split(",") if d))
          for dtype, dims in _SHAPE.findall(type_text) if dtype in DTYPE_BYTES]


def array_bytes(dtype, dims):
  count = 1
  for d in dims:
    count *= d
  return count * DTYPE_BYTES[dtype]


def type_bytes(type_text):
  """Bytes of all arrays in a type; layouts ({3,2,1,0}) and tuple nesting do not change it."""
  return sum(array_bytes(d, s) for d, s in shapes_in(type_text))


def _split_type(text):
  """'(a, b) op(...)' or 'f32[2]{0} op(...)' -> (type text, rest)."""
  if text.startswith("("):
    end = _matching_paren(text, 0)
    return text[:end + 1], text[end + 1:].lstrip()
  head, _, rest = text.partition(" ")
  return head, rest


def _matching_paren(text, start):
  depth = 0
  for i in range(start, len(text)):
    depth += text[i] == "("
    depth -= text[i] == ")"
    if depth == 0:
      return i
  return len(text) - 1


def parse_instruction(line):
  """One instruction line, or None for anything else."""
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  type_text, rest = _split_type(line[match.end():])
  paren = rest.find("(")
  if paren < 0:
    return None
  opcode = rest[:paren].strip()
  close = _matching_paren(rest, paren)
  operand_text = rest[paren + 1:close]
  # Operands are %names (older dumps put their type first); a constant's literal is no operand.
  operands = [] if opcode == "constant" else re.findall(r"%([\w.\-]+)", operand_text)
  number = int(operand_text) if opcode == "parameter" and operand_text.strip().isdigit() else None
  return Instruction(match.group(2), type_text, opcode, operands, rest[close + 1:], number)


def _frame_files(lines):
  """Stack frame id -> the source file of its location, from the module's debug tables."""
  section, files, locations, frames = None, {}, {}, {}
  for line in lines:
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    if line.startswith("%") or line.startswith("ENTRY"):
      break
    match = re.match(r"(\d+) (.*)", line)
    if not match or section is None:
      continue
    index, rest = int(match.group(1)), match.group(2)
    if section == "FileNames":
      files[index] = rest.strip().strip('"')
    elif section == "FileLocations":
      locations[index] = int(re.search(r"file_name_id=(\d+)", rest).group(1))
    elif section == "StackFrames":
      frames[index] = int(re.search(r"file_location_id=(\d+)", rest).group(1))
  return {frame: files.get(locations.get(loc), "") for frame, loc in frames.items()}


def parse_module(text):
  """The computations of an HLO module's text, as `compiled.as_text()` prints it."""
  lines = text.splitlines()
  computations, entry, current = {}, None, None
  for line in lines:
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
    elif line.startswith("}"):
      current = None
    elif current is not None:
      instruction = parse_instruction(line)
      if instruction is not None:
        computations[current].append(instruction)
  if entry is None:
    raise ValueError("no ENTRY computation: is this an HLO module's text (compiled.as_text())?")
  return Module(computations, entry, _frame_files(lines))


# ------------------------------------------------------------------------------ the device ops


def _nested(module, computation, seen=None):
  """The instructions of a computation and of those it calls (reducers, nested fusions)."""
  seen = set() if seen is None else seen
  if computation in seen or computation not in module.computations:
    return []
  seen.add(computation)
  out = list(module.computations[computation])
  for instruction in module.computations[computation]:
    for callee in instruction.called:
      out += _nested(module, callee, seen)
  return out


def op_kind(module, instruction):
  if instruction.opcode == "custom-call":
    target = instruction.attribute("custom_call_target") or ""
    if target in CONV_KINDS:
      return CONV_KINDS[target]
    return "gemm" if ("cublas" in target or "matmul" in target) else "custom-call"
  if instruction.opcode != "fusion":
    return instruction.opcode
  callee = instruction.attribute("calls") or ""
  opcodes = {i.opcode for i in _nested(module, callee)}
  if callee.startswith("gemm_fusion") or "dot" in opcodes:
    return "gemm"
  for opcode, kind in (("sort", "sort"), ("reduce", "reduction"), ("transpose", "transpose"),
                       ("copy", "transpose")):
    if opcode in opcodes:
      return kind
  return "elementwise"


def op_role(module, instruction):
  if op_kind(module, instruction).startswith("conv"):
    return "convolution"
  instructions = [instruction]
  if instruction.opcode == "fusion":   # its fused ops; not reducers (shared, from anywhere)
    instructions += _fused(module, instruction.attribute("calls") or "")
  files = {module.frame_files.get(i.stack_frame_id, "") for i in instructions} - {""}
  for role, patterns in ROLE_FILES:
    if any(p in f for f in files for p in patterns):
      return role
  return "other"


def _fused(module, computation):
  """A fusion's instructions, nested fusions included, reducer computations not."""
  out = []
  for i in module.computations.get(computation, []):
    out.append(i)
    if i.opcode == "fusion":
      out += _fused(module, i.attribute("calls") or "")
  return out


def op_phase(module, instruction):
  """JAX names the ops of a VJP 'transpose(jvp(...))/...' in their metadata."""
  fused = (_fused(module, instruction.attribute("calls") or "")
           if instruction.opcode == "fusion" else [])
  names = [i.attribute("op_name") or "" for i in [instruction] + fused]
  return "backward" if any("transpose(" in n for n in names) else "forward"


def _producer(name, by_name):
  """The instruction whose result `name` is, looking through get-tuple-element and bitcast."""
  current = by_name.get(name)
  while (current is not None and current.opcode in ("get-tuple-element", "bitcast")
         and current.operands):
    name, current = current.operands[0], by_name.get(current.operands[0])
  return name


def _source(instruction, by_name):
  """The op a copy copies from."""
  if instruction.opcode != "copy" or not instruction.operands:
    return ""
  return _producer(instruction.operands[0], by_name)


def read_bytes(module, instruction, operand_types):
  """Each operand once; a fused parameter that is only sliced or gathered (through bitcasts)
  counts the parts read (a gather of 256 images from a pool of 2048 reads 256)."""
  fused = (module.computations.get(instruction.attribute("calls") or "", [])
           if instruction.opcode == "fusion" else [])
  parameters = {p.number: p.name for p in fused if p.opcode == "parameter"}
  total = 0.0
  for number, type_text in enumerate(operand_types):
    size = type_bytes(type_text)
    if number in parameters:
      size = min(size, _sliced_bytes(fused, parameters[number], size))
    total += size
  return total


def _sliced_bytes(fused, name, full):
  """Bytes of `name` that its users read: the slices' sizes if every use is a slice or gather
  of it (looking through bitcasts), else all of it."""
  users = [u for u in fused if name in u.operands]
  if not users:
    return full
  total = 0.0
  for user in users:
    if user.opcode == "bitcast":
      total += _sliced_bytes(fused, user.name, full)
    elif user.opcode in SLICING_OPCODES and user.operands[0] == name:
      total += type_bytes(user.shape)
    else:
      return full
  return total


def result_shapes(instruction):
  """The arrays an op writes; a cuDNN/cuBLAS call's trailing u8/s8 scratch buffer is no output."""
  shapes = shapes_in(instruction.shape)
  if (instruction.opcode == "custom-call" and len(shapes) > 1 and shapes[-1][0] in ("u8", "s8")
      and len(shapes[-1][1]) == 1):
    shapes = shapes[:-1]
  return shapes


def executed_ops(module):
  """The step's device ops in schedule order; while/call/conditional bodies are walked (a while
  body counts its known trip count, else once)."""
  ops = []

  def walk(computation, times, loop):
    instructions = module.computations[computation]
    types = {i.name: i.shape for i in instructions}
    by_name = {i.name: i for i in instructions}
    for i in instructions:
      if i.opcode in FREE_OPCODES:
        continue
      if i.opcode in CONTROL_OPCODES:
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', i.attributes)
        for callee in i.called:
          if callee in module.computations:
            walk(callee, times * (int(trips.group(1)) if trips else 1),
                 i.name if i.opcode == "while" else loop)
        continue
      operand_types = [types.get(o, "") for o in i.operands]
      written = result_shapes(i)
      arrays = written + [s for t in operand_types for s in shapes_in(t)]
      largest = max(arrays, key=lambda s: array_bytes(*s), default=("", ()))
      ops.append(Op(
          name=i.name, opcode=i.opcode, kind=op_kind(module, i), role=op_role(module, i),
          bytes_read=times * read_bytes(module, i, operand_types),
          bytes_written=times * sum(array_bytes(*s) for s in written), order=len(ops),
          largest=f"{largest[0]}[{','.join(map(str, largest[1]))}]",
          f32_written=times * sum(array_bytes(*s) for s in written
                                  if s[0] == "f32" and array_bytes(*s) >= SMALL_OP_BYTES),
          output=written[0][1] if written else (),
          phase=op_phase(module, i), source=_source(i, by_name),
          inputs=tuple(_producer(o, by_name) for o in i.operands), loop=loop))

  walk(module.entry, 1, "")
  return ops


# ----------------------------------------------------------------------------------- the trace


def kernel_events(trace):
  """The GPU kernel/memcpy/memset events of a jax.profiler trace (chrome trace JSON)."""
  names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpus = {pid for pid, name in names.items() if "/device:gpu" in name.lower()}
  return sorted((e for e in trace["traceEvents"]
                 if e.get("ph") == "X" and e.get("pid") in gpus and "dur" in e),
                key=lambda e: e["ts"])


def _signature(module, instruction):
  """Ops XLA compiles to one shared kernel (identical fusion bodies) have equal signatures."""
  if instruction.opcode != "fusion":
    return ("op", instruction.name)
  body = module.computations.get(instruction.attribute("calls") or "", [])
  index = {i.name: n for n, i in enumerate(body)}
  return tuple((i.opcode, re.sub(r"\{[^}]*\}", "", i.shape),
                tuple(index.get(o) for o in i.operands), i.number) for i in body)


def join_trace(module, ops, events, steps=None):
  """Sets each op's trace_us and kernels (per step); returns (steps, {unplaced kernel: us/step}).

  Kernels run in schedule order on one stream, so a cursor walks the schedule: a kernel named
  after an op (args.hlo_op, or its name) goes to the first op at or after the cursor with the
  same kernel (XLA launches one kernel for identical fusions under the first one's name); none
  left means the next step began (or, inside a while loop, the next trip). A run of unnamed
  kernels (cuBLAS, sort or memcpy inside a command buffer) between two placed ones goes to the
  ops scheduled between them that got no kernel in that step: one to one in order if the
  counts agree, all to the op if there is one.
  """
  instructions = {i.name: i for i in module.computations[module.entry]}
  for name in module.computations:
    for i in module.computations[name]:
      instructions.setdefault(i.name, i)
  by_signature = collections.defaultdict(list)
  signature = {}
  for op in ops:
    signature[op.order] = _signature(module, instructions[op.name])
    by_signature[signature[op.order]].append(op)
  by_name = {}
  for op in ops:
    by_name[op.name] = op
    by_name.setdefault(op.name.replace(".", "_"), op)
  # Kernels of no HLO op (a host-to-device copy of the next batch) are outside the program.
  outside = [e for e in events if not e.get("args", {}).get("hlo_op")]
  events = [e for e in events if e.get("args", {}).get("hlo_op")]
  placed, cursor, step = [], -1, 0
  for event in events:
    hlo_op = event.get("args", {}).get("hlo_op", "")
    named = by_name.get(hlo_op)
    op = named or by_name.get(event["name"])
    if op is not None:
      same = by_signature[signature[op.order]] if named is None else [op]
      later = [c for c in same if c.order > cursor or (named is not None and c.order == cursor)]
      if not later and not (op.loop and cursor >= 0 and ops[cursor].loop == op.loop):
        step += 1
      op = min(later or same, key=lambda c: c.order)
      cursor = op.order
    placed.append((step, op))
  seen = collections.defaultdict(set)
  for step_index, op in placed:
    if op is not None:
      seen[step_index].add(op.order)
  i = 0
  while i < len(placed):
    if placed[i][1] is not None:
      i += 1
      continue
    j = i
    while j < len(placed) and placed[j][1] is None:
      j += 1
    step_index = placed[i - 1][0] if i else placed[j][0] if j < len(placed) else 0
    low = placed[i - 1][1].order if i else -1
    high = placed[j][1].order if j < len(placed) and placed[j][0] == step_index else len(ops)
    between = [op for op in ops[low + 1:high] if op.order not in seen[step_index]]
    if len(between) == 1:
      between *= j - i
    if len(between) == j - i:
      for k, op in zip(range(i, j), between):
        placed[k] = (step_index, op)
    i = j
  if steps is None:
    steps = len({s for s, op in placed if op is not None}) or 1
  time, count, unplaced = collections.Counter(), collections.Counter(), collections.Counter()
  for event, (_, op) in zip(events + outside, placed + [(0, None)] * len(outside)):
    if op is None:
      unplaced[event["name"]] += event["dur"] / steps
    else:
      time[op.order] += event["dur"] / steps
      count[op.order] += 1 / steps
  for op in ops:
    op.trace_us = time[op.order]
    op.kernels = round(count[op.order], 3)
  return steps, dict(unplaced)


# ----------------------------------------------------------------------------------- the floor


@dataclasses.dataclass
class Site:
  """One fused BN(+residual)+ReLU unit of the floor; traffic in units of its activation."""
  name: str
  shape: str                # H x W x C of its activation
  activation_bytes: float   # one bf16 activation tensor at this layer (N*H*W*C*2)
  forward: int              # activation-sized reads + writes in the forward
  backward: int             # ... in the backward

  @property
  def bytes(self):
    return self.activation_bytes * (self.forward + self.backward)


def floor_sites(batch, image_size=32, blocks=RESNET18_CIFAR_BLOCKS, activation_dtype_bytes=2):
  """The floor of a fused BN+ReLU(+residual) forward and backward, per layer of a ResNet.

  Counted: activation-sized bf16 tensors read or written in HBM. Not counted: the per-channel f32
  statistics, scale and bias (C floats; < 0.1 %), the convolutions' own traffic (a conv writes
  y = conv(x) and reads its inputs; that is the convs' budget). Rules:
    forward, BN+ReLU: read y for sum and sum of squares (one pass, f32 accumulators), read y to
      normalise, write z (bf16): 3. With an identity residual: + read the block input: 4. With a
      projection shortcut (BN of the 1x1 conv's ys as well): stats of y and ys, read both, write
      z: 5. Nothing else is saved: x_hat is recomputed from y and the saved mean and rstd.
    backward, the incoming gradient g made of k tensors (2 where a block's output feeds the next
      block's conv1 and its shortcut, summed on the fly; 1 for conv2's input; 0 for the last block,
      whose gradient is the pool's per-image vector broadcast in-kernel): pass 1 reads g, the
      mask source and y once for both reductions (sum g', sum g' x_hat); pass 2 reads them again
      and writes dy (bf16). The ReLU mask is recomputed from y and the statistics where there is
      no residual; with one it comes from the saved block output z (saved anyway: the next
      convs' input). A residual site also writes g' = g * mask once, the shortcut's gradient.
      BN+ReLU: 2 (k + 1) + 1; identity residual: 2 (k + 2) + 2; projection: 2 (k + 3) + 2.
  """
  sites, size = [], image_size
  stem_bytes = batch * size * size * blocks[0][0] * activation_dtype_bytes
  stem_shape = f"{size}x{size}x{blocks[0][0]}"
  sites.append(Site("stem bn+relu", stem_shape, stem_bytes, 3, 2 * (2 + 1) + 1))
  for index, (channels, stride) in enumerate(blocks):
    size //= stride
    a = batch * size * size * channels * activation_dtype_bytes
    shape = f"{size}x{size}x{channels}"
    k = 2 if index + 1 < len(blocks) else 0
    projection = stride != 1 or (index > 0 and blocks[index - 1][0] != channels)
    sites.append(Site(f"block{index} bn1+relu", shape, a, 3, 2 * (1 + 1) + 1))
    if projection:
      sites.append(Site(f"block{index} bn2+bn_shortcut+add+relu", shape, a, 5, 2 * (k + 3) + 2))
    else:
      sites.append(Site(f"block{index} bn2+add+relu", shape, a, 4, 2 * (k + 2) + 2))
  return sites


def expected_forward_convs(batch, image_size=32, blocks=RESNET18_CIFAR_BLOCKS):
  """The (N, H, W, C) outputs of the ResNet's forward convolutions, as a multiset."""
  size, shapes = image_size, [(batch, image_size, image_size, blocks[0][0])]
  for index, (channels, stride) in enumerate(blocks):
    size //= stride
    shapes += [(batch, size, size, channels)] * 2
    if stride != 1 or (index > 0 and blocks[index - 1][0] != channels):
      shapes.append((batch, size, size, channels))
  return collections.Counter(shapes)


# ---------------------------------------------------------------------------------- reporting


def _table(rows, bandwidth=None):
  """{key: [ops]} -> rows of totals: ops, kernels/step, bytes read/written, device us/step."""
  out = {}
  for key, members in rows.items():
    read = sum(o.bytes_read for o in members)
    written = sum(o.bytes_written for o in members)
    us = sum(o.trace_us or 0.0 for o in members)
    row = {"ops": len(members), "kernels": round(sum(o.kernels or 0.0 for o in members), 2),
           "read": read, "written": written, "us": us,
           "small_ops": sum(o.bytes_moved < SMALL_OP_BYTES for o in members),
           "small_us": sum(o.trace_us or 0.0 for o in members if o.bytes_moved < SMALL_OP_BYTES)}
    if bandwidth:
      row["us_at_bandwidth"] = 1e6 * (read + written) / bandwidth
    out[key] = row
  return dict(sorted(out.items(), key=lambda kv: -kv[1]["us"] or -kv[1]["read"]))


def _group(ops, key):
  groups = collections.defaultdict(list)
  for op in ops:
    groups[key(op)].append(op)
  return groups


def _elements(op):
  dims = shapes_in(op.largest)[0][1] if shapes_in(op.largest) else ()
  count = 1
  for d in dims:
    count *= d
  return count


def summarise(ops, bandwidth):
  """The figures the report prints (and --json writes)."""
  result = {"ops": len(ops), "bandwidth_bytes_per_s": bandwidth,
            "by_kind": _table(_group(ops, lambda o: o.kind), bandwidth),
            "by_role": _table(_group(ops, lambda o: o.role), bandwidth),
            "trace_us": sum(o.trace_us or 0.0 for o in ops)}
  convs = collections.Counter(op.output for op in ops if op.kind == "conv fprop")
  batch = min((d[0] for d in convs if len(d) == 4), default=0)
  image_size = max((d[1] for d in convs if len(d) == 4), default=0)   # the stem keeps it
  result["forward_convs"] = sum(convs.values())
  result["model_matches"] = bool(batch) and convs == expected_forward_convs(batch, image_size)
  copies = [o for o in ops if o.opcode == "copy"]
  by_name = {o.name: o for o in ops}
  result["copies"] = _table(_group(copies, lambda o: by_name[o.source].role
                                   if o.source in by_name else "parameter/other"), bandwidth)
  result["weight_transposes"] = _table(_group(
      [o for o in ops if o.kind == "transpose" and o.role in ("other", "optimizer")
       and len(shapes_in(o.largest)[0][1]) == 4], lambda o: f"{o.role} ({o.phase})"), bandwidth)
  if not result["model_matches"]:
    return result
  sites = floor_sites(batch, image_size)
  stage_of = {}
  for site in sites:
    stage_of.setdefault(int(site.activation_bytes // 2), site)
  bn_ops = [o for o in ops if o.role == BN_ROLE]
  stages = collections.defaultdict(lambda: {"floor": 0.0, "xla": 0.0, "xla_us": 0.0, "ops": 0})
  for site in sites:
    label = site.shape
    stages[(label, "forward")]["floor"] += site.activation_bytes * site.forward
    stages[(label, "backward")]["floor"] += site.activation_bytes * site.backward
  for op in bn_ops:
    site = stage_of.get(_elements(op))
    label = site.shape if site and op.bytes_moved >= SMALL_OP_BYTES else "per-channel (< 1 MiB)"
    row = stages[(label, op.phase)]
    row["xla"] += op.bytes_moved
    row["xla_us"] += op.trace_us or 0.0
    row["ops"] += 1
  floor = sum(s.bytes for s in sites)
  xla = sum(o.bytes_moved for o in bn_ops)
  large = [o for o in bn_ops if o.bytes_moved >= SMALL_OP_BYTES]
  small = [o for o in bn_ops if o.bytes_moved < SMALL_OP_BYTES]
  measured = sum(o.trace_us or 0.0 for o in bn_ops)
  large_us = sum(o.trace_us or 0.0 for o in large)
  large_bytes = sum(o.bytes_moved for o in large)
  result["floor"] = {
      "batch": batch,
      "sites": [dict(dataclasses.asdict(s), bytes=s.bytes) for s in sites],
      "stages": [dict(stage=k[0], phase=k[1], **v) for k, v in stages.items()],
      "floor_bytes": floor, "floor_us": 1e6 * floor / bandwidth,
      "xla_bytes": xla, "xla_us_at_bandwidth": 1e6 * xla / bandwidth,
      "xla_measured_us": measured,
      "excess_bytes": xla - floor, "excess_us_at_bandwidth": 1e6 * (xla - floor) / bandwidth,
      "bn_ops": len(bn_ops), "small_ops": len(small),
      "small_ops_us": sum(o.trace_us or 0.0 for o in small),
      "large_ops_us": large_us, "large_ops_bytes": large_bytes,
      "large_ops_below_bandwidth_us": large_us - 1e6 * large_bytes / bandwidth,
      "large_ops_achieved_bytes_per_s": large_bytes / (large_us * 1e-6) if large_us else None,
      "f32_activation_bytes_written": sum(o.f32_written for o in large),
      "second_reductions": [o.name for o in second_reductions(ops)],
      "second_reductions_bytes": sum(o.bytes_read for o in second_reductions(ops)),
      "second_reductions_us": sum(o.trace_us or 0.0 for o in second_reductions(ops)),
  }
  return result


def second_reductions(ops):
  """Backward BN reductions whose only activation-sized input is a masked gradient that another
  reduction wrote: the gradient makes an HBM round trip so that the layer's two sums (sum g',
  sum g' x_hat) run as two kernels; the floor takes both in one pass over g and y."""
  by_name = {o.name: o for o in ops}
  out = []
  for op in ops:
    if (op.role != BN_ROLE or op.phase != "backward" or op.kind != "reduction"
        or op.bytes_read < SMALL_OP_BYTES):
      continue
    large = [by_name[p] for p in op.inputs if p in by_name
             and by_name[p].bytes_written >= SMALL_OP_BYTES]
    if large and all(p.kind == "reduction" and p.role == BN_ROLE for p in large):
      out.append(op)
  return out


def _mb(x):
  return f"{x / 1e6:,.1f}"


def _rate(nbytes, us):
  return f"{nbytes / (us * 1e3):,.0f}" if us else "-"


def _row(*cells):
  return "| " + " | ".join(str(c) for c in cells) + " |"


def _ms(us, has_trace):
  return f"{us / 1e3:.3f}" if has_trace else "-"


def _totals_table(title, rows, bandwidth, has_trace):
  lines = ["", f"### {title}", "",
           _row("", "ops", "kernels/step", "MB read", "MB written", "ms/step", "GB/s",
                f"ms at {bandwidth / 1e12:.1f} TB/s", "ops < 1 MiB (ms)"),
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
  for name, r in rows.items():
    lines.append(_row(name, r["ops"], f"{r['kernels']:g}", _mb(r["read"]), _mb(r["written"]),
                      _ms(r["us"], has_trace), _rate(r["read"] + r["written"], r["us"]),
                      f"{r['us_at_bandwidth'] / 1e3:.3f}",
                      f"{r['small_ops']} ({_ms(r['small_us'], has_trace)})"))
  return lines


def _floor_lines(floor, bandwidth, has_trace):
  tbs = f"{bandwidth / 1e12:.1f} TB/s"
  lines = ["", f"### BatchNorm/ReLU/residual: floor vs XLA (batch {floor['batch']} views)", "",
           _row("stage", "phase", "floor MB", "XLA MB", "XLA - floor MB", "XLA ops",
                "XLA ms/step"),
           "|---|---|--:|--:|--:|--:|--:|"]
  for r in floor["stages"]:
    lines.append(_row(r["stage"], r["phase"], _mb(r["floor"]), _mb(r["xla"]),
                      _mb(r["xla"] - r["floor"]), r["ops"], _ms(r["xla_us"], has_trace)))
  measured = f", measured {_ms(floor['xla_measured_us'], True)} ms" if has_trace else ""
  lines += ["", f"floor {_mb(floor['floor_bytes'])} MB = {floor['floor_us'] / 1e3:.3f} ms at "
            f"{tbs}; XLA {_mb(floor['xla_bytes'])} MB = "
            f"{floor['xla_us_at_bandwidth'] / 1e3:.3f} ms at that rate{measured} in "
            f"{floor['bn_ops']} ops."]
  if has_trace:
    gap = floor["xla_measured_us"] - floor["floor_us"]
    lines.append(
        f"measured - floor = {gap / 1e3:.3f} ms: excess bytes {_mb(floor['excess_bytes'])} MB "
        f"({floor['excess_us_at_bandwidth'] / 1e3:.3f} ms), {floor['small_ops']} ops under "
        f"1 MiB ({floor['small_ops_us'] / 1e3:.3f} ms), large ops below {tbs} "
        f"({floor['large_ops_below_bandwidth_us'] / 1e3:.3f} ms; they achieve "
        f"{(floor['large_ops_achieved_bytes_per_s'] or 0) / 1e12:.2f} TB/s).")
  second = f" in {_ms(floor['second_reductions_us'], True)} ms" if has_trace else ""
  lines += [
      f"f32 activation-sized tensors written: {_mb(floor['f32_activation_bytes_written'])} MB. "
      "Second backward reductions whose only large input is the masked gradient a first one "
      f"wrote: {len(floor['second_reductions'])}, reading "
      f"{_mb(floor['second_reductions_bytes'])} MB{second} "
      f"({', '.join(floor['second_reductions'])}).",
      "", _row("floor site", "activation MB", "forward x", "backward x", "MB"),
      "|---|--:|--:|--:|--:|"]
  for site in floor["sites"]:
    lines.append(_row(site["name"], _mb(site["activation_bytes"]), site["forward"],
                      site["backward"], _mb(site["bytes"])))
  return lines


def render(summary, ops, top, steps, unplaced, has_trace):
  """The report as Markdown tables."""
  bandwidth = summary["bandwidth_bytes_per_s"]
  if has_trace:
    missing = [o.name for o in ops if not o.kernels]
    lines = [f"{summary['ops']} device ops; trace: {steps} steps, "
             f"{summary['trace_us'] / 1e3:.3f} ms of kernel time per step placed, "
             f"{sum(unplaced.values()):.1f} us not placed "
             f"({', '.join(sorted(unplaced)) or '-'}); ops without a kernel: {len(missing)}"
             + (f" (is the trace of this HLO's program? {', '.join(missing[:5])}, ...)"
                if missing else "") + "."]
  else:
    lines = [f"{summary['ops']} device ops (no trace: times are '-')."]
  lines += _totals_table("By kind", summary["by_kind"], bandwidth, has_trace)
  lines += _totals_table("By role (source files of the fused ops)", summary["by_role"],
                         bandwidth, has_trace)
  if "floor" in summary:
    lines += _floor_lines(summary["floor"], bandwidth, has_trace)
  else:
    lines += ["", f"(no floor: the {summary['forward_convs']} forward convolutions are not a "
              "CIFAR ResNet-18's)"]
  for title, key in (("Copies (by the role of what they copy)", "copies"),
                     ("Weight layout transposes", "weight_transposes")):
    lines += ["", f"### {title}", "", _row("", "ops", "MB read", "MB written", "ms/step"),
              "|---|--:|--:|--:|--:|"]
    for name, r in summary[key].items():
      lines.append(_row(name, r["ops"], _mb(r["read"]), _mb(r["written"]),
                        _ms(r["us"], has_trace)))
  chosen = sorted(ops, key=lambda o: -(o.trace_us or 0.0) if has_trace else -o.bytes_moved)
  chosen = chosen[:top] if top else chosen
  lines += ["", f"### Ops ({f'top {len(chosen)}' if top else 'all'}, by "
            f"{'time' if has_trace else 'bytes'})", "",
            _row("op", "kind", "role", "phase", "largest array", "MB read", "MB written",
                 "us/step", "GB/s"),
            "|---|---|---|---|---|--:|--:|--:|--:|"]
  for o in chosen:
    lines.append(_row(o.name, o.kind, o.role, o.phase, o.largest, _mb(o.bytes_read),
                      _mb(o.bytes_written), f"{o.trace_us:.1f}" if has_trace else "-",
                      _rate(o.bytes_moved, o.trace_us)))
  return "\n".join(lines)


# --------------------------------------------------------------------------------------- main


def _read_text(path):
  path = epath.Path(path)
  data = path.read_bytes()
  if str(path).endswith(".gz"):
    data = gzip.decompress(data)
  return data.decode()


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
  parser = _Parser(description=__doc__.split("\n")[0])
  parser.add_argument("--hlo", required=True,
                      help="optimised HLO text of the step (.txt or .txt.gz)")
  parser.add_argument("--trace",
                      help="jax.profiler *.trace.json.gz of some steps of the same program")
  parser.add_argument("--steps", type=int, help="steps in the trace (default: counted)")
  parser.add_argument("--bandwidth_tbs", type=float, default=4.3, help="HBM bandwidth, TB/s")
  parser.add_argument("--top", type=int, default=40, help="ops listed (0: all)")
  parser.add_argument("--json", help="also write the figures and every op here")
  args = parser.parse_args(argv)
  if args.bandwidth_tbs <= 0:
    parser.error(f"--bandwidth_tbs must be positive, got {args.bandwidth_tbs}")
  if args.steps is not None and args.steps < 1:
    parser.error(f"--steps must be at least 1, got {args.steps}")
  try:
    module = parse_module(_read_text(args.hlo))
  except (OSError, UnicodeDecodeError, ValueError) as error:
    parser.error(f"--hlo={args.hlo}: {first_line(error)}")
  ops = executed_ops(module)
  steps, unplaced = None, {}
  if args.trace:
    try:
      trace = json.loads(_read_text(args.trace))
      events = kernel_events(trace)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
      parser.error(f"--trace={args.trace}: not a readable trace ({first_line(error)})")
    if not events:
      parser.error(f"--trace={args.trace}: no GPU kernel events")
    steps, unplaced = join_trace(module, ops, events, args.steps)
  summary = summarise(ops, args.bandwidth_tbs * 1e12)
  print(render(summary, ops, args.top, steps, unplaced, bool(args.trace)))
  if args.json:
    summary["steps"] = steps
    summary["unplaced_us"] = unplaced
    summary["op_list"] = [dataclasses.asdict(o) for o in ops]
    try:
      epath.Path(args.json).write_text(json.dumps(summary, indent=1))
    except OSError as error:
      parser.error(f"--json={args.json} cannot be written: {first_line(error)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
