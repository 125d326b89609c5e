"""Where a step's time goes, read from a jax.profiler trace without TensorBoard.

  python -m rwl_jax.profile_summary TRACE_DIR_OR_FILE [--steps=N] [--top=15]

jax.profiler writes DIR/plugins/profile/<time>/<host>.trace.json.gz: Chrome trace-event JSON,
gzipped. This module reads it with json and gzip only (pure functions: find_trace -> load_events
-> summarize -> format_summary), so a GPU machine without TensorBoard's profile plugin can say
per step: how long the device was busy (the union of its kernels' intervals), how long it idled
between the first kernel and the last, how many kernels ran, the time by kind of kernel and the
top kernels.

Which events count as kernels:
  * GPU: every event on the device process's "Stream #..." lines (kernels, memsets, copies);
  * another device (TPU): its "XLA Ops" line, else all of its lines;
  * no device in the trace (a CPU run): the host events that carry an `hlo_op` argument, the XLA
    operations the CPU runtime executed (on its tf_XLAEigen / tf_XLAPjRtCpuClient threads).
The summary names the lines it used. Steps: --steps, else the number of distinct step_num values
of jax.profiler.StepTraceAnnotation events in the trace, else 1.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import sys
from typing import Any, Iterable, Sequence

from etils import epath

from rwl_jax import paths
from rwl_jax.errors import ConfigError

TRACE_SUFFIX = ".trace.json.gz"
CATEGORIES = ("convolution", "gemm", "reduction fusion", "elementwise fusion", "copy/memset",
              "sort", "other")

# Kernel-name keywords, checked in this order (first match wins). cuDNN's implicit-GEMM
# convolutions contain "gemm", so the convolution words come first; XLA:CPU names its operations
# after the HLO (convolution.3, dot.1, copy.7, wrapped_reduce, multiply_add_fusion).
_CATEGORY_KEYWORDS = (
    ("convolution", ("conv", "cudnn", "fprop", "dgrad", "wgrad", "implicit")),
    ("gemm", ("gemm", "cublas", "cutlass", "matmul", "dot")),
    ("convolution", ("xmma",)),
    ("copy/memset", ("memcpy", "memset")),
)
_FUSION_KEYWORDS = ("fusion", "loop_", "input_", "triton", "concatenate", "transpose", "broadcast",
                    "select")


def category(name: str) -> str:
  """The kind of a kernel (one of CATEGORIES), from its name."""
  lowered = name.lower()
  for kind, keywords in _CATEGORY_KEYWORDS:
    if any(keyword in lowered for keyword in keywords):
      return kind
  if lowered.startswith("copy"):  # a copy op, not transpose_copy_fusion
    return "copy/memset"
  if "sort" in lowered:
    return "sort"
  if "reduce" in lowered or "reduction" in lowered:
    return "reduction fusion"
  if any(keyword in lowered for keyword in _FUSION_KEYWORDS):
    return "elementwise fusion"
  return "other"


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
  """Total length covered by (start, end) intervals, overlaps counted once."""
  total, covered_to = 0.0, -float("inf")
  for start, end in sorted(intervals):
    if end > covered_to:
      total += end - max(start, covered_to)
      covered_to = end
  return total


def find_trace(path: epath.PathLike) -> epath.Path:
  """The trace file itself, or the newest *.trace.json.gz in a directory, its subfolders or its
  plugins/profile/*/ (jax.profiler names each capture's folder by its start time, so the name
  order is the time order; epath globs no `**`, which would list a whole bucket)."""
  path = paths.as_path(path, "trace")
  if path.is_file():
    return path
  if not path.is_dir():
    raise ConfigError(f"trace {os.fspath(path)!r} does not exist; give a jax.profiler trace "
                      f"directory or a *{TRACE_SUFFIX} file")
  found = sorted((trace for pattern in ("", "*/", "plugins/profile/*/")
                  for trace in path.glob(f"{pattern}*{TRACE_SUFFIX}")), key=os.fspath)
  if not found:
    raise ConfigError(f"no *{TRACE_SUFFIX} under {os.fspath(path)!r} (jax.profiler writes "
                      f"DIR/plugins/profile/TIME/HOST{TRACE_SUFFIX})")
  return found[-1]


def load_events(path: epath.PathLike) -> list[dict[str, Any]]:
  """The trace events of one *.trace.json.gz (or plain .json) file."""
  path = epath.Path(path)
  data = path.read_bytes()
  try:
    text = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    trace = json.loads(text)
  except (OSError, EOFError, ValueError) as error:
    raise ConfigError(f"{os.fspath(path)!r} is not a trace-event JSON file: {error}") from None
  events = trace.get("traceEvents") if isinstance(trace, dict) else None
  if not isinstance(events, list):
    raise ConfigError(f"{os.fspath(path)!r} has no traceEvents list")
  return events


def _names(events: Sequence[dict[str, Any]]) -> tuple[dict, dict]:
  """({pid: process name}, {(pid, tid): thread name}) from the metadata events."""
  processes, threads = {}, {}
  for event in events:
    if event.get("ph") != "M":
      continue
    name = event.get("args", {}).get("name", "")
    if event.get("name") == "process_name":
      processes[event.get("pid")] = name
    elif event.get("name") == "thread_name":
      threads[(event.get("pid"), event.get("tid"))] = name
  return processes, threads


def kernel_events(events: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str, list[str]]:
  """(the kernel events, 'device' or 'host', the names of the lines they came from); see the
  module docstring for which events count."""
  processes, threads = _names(events)
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e and "ts" in e]
  device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
  by_line = collections.defaultdict(list)
  for event in complete:
    if event.get("pid") in device_pids:
      line = (event.get("pid"), event.get("tid"))
      by_line[line].append(event)
  if by_line:
    line_name = lambda line: f"{processes[line[0]]} {threads.get(line, line[1])}"
    streams = [line for line in by_line if str(threads.get(line, "")).startswith("Stream")]
    xla_ops = [line for line in by_line if str(threads.get(line, "")) == "XLA Ops"]
    chosen = streams or xla_ops or list(by_line)
    kernels = [event for line in chosen for event in by_line[line]]
    return kernels, "device", sorted(line_name(line) for line in chosen)
  kernels = [e for e in complete if "hlo_op" in (e.get("args") or {})]
  lines = {(e.get("pid"), e.get("tid")) for e in kernels}
  named = lambda line: f"{processes.get(line[0], line[0])} {threads.get(line, line[1])}"
  return kernels, "host", sorted(named(line) for line in lines)


def annotated_steps(events: Sequence[dict[str, Any]]) -> int:
  """How many distinct steps jax.profiler.StepTraceAnnotation marked in the trace (0: none)."""
  return len({(e.get("name"), e["args"]["step_num"]) for e in events
              if e.get("ph") == "X" and "step_num" in (e.get("args") or {})})


def summarize(events: Sequence[dict[str, Any]], steps: int | None = None,
              top: int = 15) -> dict[str, Any]:
  """Per-step figures of the trace's kernels (times in ms per step unless the key says otherwise).

  busy: the union of the kernels' intervals; span: first kernel start to last kernel end; idle:
  span - busy. Category and kernel times sum durations, so kernels that overlap (several streams
  or CPU threads) each count in full there, while busy counts the overlap once.
  """
  kernels, source, lines = kernel_events(events)
  if steps is not None and steps < 1:
    raise ConfigError(f"--steps must be >= 1, got {steps}")
  marked = annotated_steps(events)
  steps_from = "given" if steps else ("step annotations" if marked else "assumed")
  steps = steps or marked or 1
  if not kernels:
    raise ConfigError("the trace has no kernel events (no device lines and no host events with an "
                      "hlo_op argument): was anything run while it was recorded?")
  start = min(e["ts"] for e in kernels)
  end = max(e["ts"] + e["dur"] for e in kernels)
  busy = union_length((e["ts"], e["ts"] + e["dur"]) for e in kernels)
  span = end - start
  per_step_ms = lambda microseconds: microseconds / steps / 1e3
  time_by_kind, count_by_kind = collections.Counter(), collections.Counter()
  time_by_name, count_by_name = collections.Counter(), collections.Counter()
  for event in kernels:
    kind = category(event["name"])
    time_by_kind[kind] += event["dur"]
    count_by_kind[kind] += 1
    time_by_name[event["name"]] += event["dur"]
    count_by_name[event["name"]] += 1
  categories = {
      kind: {"ms_per_step": per_step_ms(time_by_kind[kind]),
             "percent_of_busy": 100 * time_by_kind[kind] / busy if busy else 0.0,
             "kernels_per_step": count_by_kind[kind] / steps}
      for kind in sorted(time_by_kind, key=lambda k: (-time_by_kind[k], CATEGORIES.index(k)))}
  top_kernels = [{"name": name, "ms_per_step": per_step_ms(duration),
                  "count_per_step": count_by_name[name] / steps}
                 for name, duration in time_by_name.most_common(top)]
  return {
      "source": source, "lines": lines, "steps": steps, "steps_from": steps_from,
      "span_ms_per_step": per_step_ms(span), "busy_ms_per_step": per_step_ms(busy),
      "idle_ms_per_step": per_step_ms(span - busy),
      "busy_percent": 100 * busy / span if span else 0.0,
      "kernels_per_step": len(kernels) / steps, "mean_kernel_us": busy / len(kernels),
      "categories": categories, "top_kernels": top_kernels,
  }


def format_summary(summary: dict[str, Any]) -> str:
  """The summary as a few lines of text."""
  where = ("device lines" if summary["source"] == "device"
           else "host XLA-op lines (no device in the trace: a CPU run)")
  lines = [
      f"kernels from {where}: {'; '.join(summary['lines'])}",
      f"per step ({summary['steps']} step(s), {summary['steps_from']}): span "
      f"{summary['span_ms_per_step']:.3f} ms, busy {summary['busy_ms_per_step']:.3f} ms "
      f"({summary['busy_percent']:.1f}%), idle {summary['idle_ms_per_step']:.3f} ms, "
      f"{summary['kernels_per_step']:.0f} kernels (mean busy {summary['mean_kernel_us']:.1f} us)",
      "time by kernel category (per step, % of busy" + (
          "; operations on several threads overlap, so the shares can sum past 100%):"
          if summary["source"] == "host" else "):"),
  ]
  for kind, figures in summary["categories"].items():
    lines.append(f"  {kind:20s} {figures['ms_per_step']:8.3f} ms "
                 f"{figures['percent_of_busy']:6.1f}% {figures['kernels_per_step']:7.0f} kernels")
  lines.append("top kernels (per step):")
  for kernel in summary["top_kernels"]:
    lines.append(f"  {kernel['ms_per_step']:8.3f} ms {kernel['count_per_step']:5.0f}x  "
                 f"{kernel['name'][:110]}")
  return "\n".join(lines)


def summarize_trace(path: epath.PathLike, steps: int | None = None,
                    top: int = 15) -> dict[str, Any]:
  """find_trace + load_events + summarize, the file's path under 'trace'."""
  trace = find_trace(path)
  return {"trace": os.fspath(trace), **summarize(load_events(trace), steps=steps, top=top)}


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one `error:` line, exit status 2, as every rwl_jax tool
    raise ConfigError(message)


def main(argv: Sequence[str] | None = None) -> None:
  parser = _Parser(prog="python -m rwl_jax.profile_summary", description=__doc__.split("\n")[0])
  parser.add_argument("trace", help="a jax.profiler trace directory or a *.trace.json.gz file")
  parser.add_argument("--steps", type=int, default=None,
                      help="steps the trace holds (default: its step annotations, else 1)")
  parser.add_argument("--top", type=int, default=15, help="how many top kernels to list")
  try:
    arguments = parser.parse_args(argv)
    summary = summarize_trace(arguments.trace, steps=arguments.steps, top=arguments.top)
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  print(f"trace {summary['trace']}")
  print(format_summary(summary))
