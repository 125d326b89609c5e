"""The benchmark's variants (--variant: config overrides and XLA compiler options, timed in one
process) and its --profile summary (rwl_jax.profile_summary), on hand-made traces with known
arithmetic, on the H200 trace kept under ../shared and on CPU traces recorded here."""

import gzip
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO, SHARED_DATA
from rwl_jax.tools import benchmark, profile_summary
from rwl_jax.configs import common
from rwl_jax.errors import ConfigError

H200 = SHARED_DATA.parent / "gpu" / "2026-12-04-h200"
# The smallest real train step (as tests/conftest.py's tiny_config), as command-line overrides.
TINY = ["--config=cifar10_rwl:smoke", "--config.model.encoder=resnet10",
        "--config.global_batch_size=32", "--config.model.projector_dims=(32,16)",
        "--steps=2", "--warmup=1"]


@pytest.fixture
def config():
  base = common.get_config()
  base.lock()  # as --config gives it: an override of a field it lacks must fail
  return base


def run_benchmark(args, cwd):
  """python -m rwl_jax.benchmark ARGS through its real entry point, on the CPU."""
  return subprocess.run([sys.executable, "-m", "rwl_jax.benchmark", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)))


# Parsing and checking the variants.

def test_no_variant_is_the_config_as_given(config):
  (variant,) = benchmark.parse_variants(None, config)
  assert (variant.name, variant.overrides, variant.compiler_options) == ("default", {}, {})
  assert variant.config is config


def test_variant_settings_split_into_overrides_and_compiler_options(config):
  default, narrow = benchmark.parse_variants(
      ["default", "narrow:model.width=4,model.projector_dims=(16,8),"
                  "xla.xla_cpu_enable_fast_math=true,xla.xla_gpu_autotune_level=4"], config)
  assert default.config.model.width == config.model.width == 64  # the base is left alone
  assert narrow.name == "narrow"
  assert narrow.overrides == {"model.width": "4", "model.projector_dims": "(16,8)"}
  assert narrow.config.model.width == 4 and narrow.config.model.projector_dims == (16, 8)
  # true/false become booleans (XLA refuses the text 'true' for a boolean option), the rest text.
  assert narrow.compiler_options == {"xla_cpu_enable_fast_math": True,
                                     "xla_gpu_autotune_level": "4"}
  (empty,) = benchmark.parse_variants(["nocmd:xla.xla_gpu_enable_command_buffer="], config)
  assert empty.compiler_options == {"xla_gpu_enable_command_buffer": ""}


def test_commas_inside_brackets_and_quotes_stay_in_the_value():
  assert benchmark.split_settings("a=1,b=(2,3),c='x,y',d=[1,(2,3)]") == [
      "a=1", "b=(2,3)", "c='x,y'", "d=[1,(2,3)]"]


@pytest.mark.parametrize("spec, said", [
    ("two words", r"a variant is NAME or NAME:key.path=value"),
    ("x:", r"no settings after ':'"),
    ("x:model.width", r"setting 'model.width' is not key.path=value or xla.OPTION=value"),
    ("x:model.width=3,model.width=4", r"'model.width' is given twice"),
    ("x:xla.bad-name=1", r"'xla.bad-name' is not xla.OPTION"),
    ("x:modle.width=3", r"names a field the config does not have: modle \(Did you mean \"model\""),
    ("x:model.widthx=3",
     r"does not have: widthx \(Did you mean \"width\" instead of \"widthx\"\?\)$"),
    ("x:model.width=abc", r"flag --config.model.width=abc: invalid literal for int\(\)"),
    ("x:seed=-1", r"seed must be an integer in \[0, 2\*\*31\)"),  # validate_config, per variant
    ("x:xla.xla_no_such_option=1", r"rejects the compiler option xla.xla_no_such_option=1: "
                                   r"INVALID_ARGUMENT: No such compile option"),
    ("x:xla.xla_cpu_enable_fast_math=1", r"xla_cpu_enable_fast_math=1: .*not a valid bool"),
])
def test_a_bad_variant_is_one_line_naming_it(config, spec, said):
  with pytest.raises(ConfigError) as raised:
    benchmark.parse_variants(["default", spec], config)
  message = str(raised.value)
  assert "\n" not in message and message.startswith(f"--variant={spec.split(':')[0]}")
  assert re.search(said, message), message


def test_variant_names_are_distinct(config):
  with pytest.raises(ConfigError, match="distinct; repeated: a"):
    benchmark.parse_variants(["a", "b", "a:model.width=4"], config)


def test_a_compiler_option_reaches_the_compilation(tmp_path):
  """compile(compiler_options=...) as Experiment.compile_step uses it: the option is applied (an
  XLA dump lands where xla_dump_to says) and an unknown one is refused."""
  lowered = jax.jit(lambda x: jnp.sin(x) * 2).lower(jnp.ones(4))
  lowered.compile(compiler_options={"xla_dump_to": str(tmp_path / "dump")})
  assert any((tmp_path / "dump").iterdir())
  with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
    lowered.compile(compiler_options={"xla_no_such_option": "1"})


def test_speedup_is_against_the_first_variant_of_the_same_mode():
  rows = [{"variant": "a", "mode": "step", "images_per_second": 100.0},
          {"variant": "a", "mode": "pipeline", "images_per_second": 50.0},
          {"variant": "b", "mode": "step", "images_per_second": 150.0},
          {"variant": "b", "mode": "pipeline", "images_per_second": 25.0}]
  benchmark.add_speedups(rows)
  assert [row["speedup"] for row in rows] == [1.0, 1.0, 1.5, 0.5]
  single = [{"variant": "default", "mode": "step", "images_per_second": 100.0}]
  benchmark.add_speedups(single)
  assert "speedup" not in single[0]  # one variant: nothing to compare


def test_a_variant_that_fails_leaves_the_others_their_rows(config, monkeypatch):
  """An out-of-memory variant is an 'error' in its row; the variants after it still run."""
  def fake_step(variant_config, **kwargs):
    if variant_config.model.width == 4096:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory\nallocation details")
    return {"mode": "step (host views)", "images_per_second": float(variant_config.model.width),
            "compiler_options": kwargs["compiler_options"]}

  monkeypatch.setattr(benchmark, "benchmark_step", fake_step)
  variants = benchmark.parse_variants(
      ["base:model.width=10", "huge:model.width=4096", "fast:model.width=20,"
       "xla.xla_cpu_enable_fast_math=false"], config)
  rows = benchmark.benchmark_variants(variants, mode="step", steps=1, warmup=0)
  assert [row["variant"] for row in rows] == ["base", "huge", "fast"]
  assert rows[1]["error"] == "RESOURCE_EXHAUSTED: Out of memory" and "speedup" not in rows[1]
  assert rows[2]["speedup"] == 2.0 and rows[2]["compiler_options"] == {
      "xla_cpu_enable_fast_math": False}


# The trace summary's arithmetic.

def _meta(pid, name, tid=None):
  event = {"ph": "M", "pid": pid, "name": "thread_name" if tid is not None else "process_name",
           "args": {"name": name}}
  return event if tid is None else {**event, "tid": tid}


def _kernel(pid, tid, name, start, duration, **args):
  return {"ph": "X", "pid": pid, "tid": tid, "ts": start, "dur": duration, "name": name,
          **({"args": args} if args else {})}


def synthetic_gpu_trace():
  """Two annotated steps; 7 kernels on two streams, one copy overlapping two compute kernels.

  Stream 1: conv [0,100) fusion [100,150) reduce [200,260) gemm [300,340) sort [400,410)
            other [410,420); stream 2: copy [120,220).
  Union: [0,260) + [300,340) + [400,420) = 320 us busy in a 420 us span, so 100 us idle.
  The 'XLA Ops' line and the host's hlo_op events are not kernels once streams exist.
  """
  return [
      _meta(1, "/device:GPU:0"), _meta(1, "Stream #1(Compute)", 1),
      _meta(1, "Stream #2(Memcpy)", 2),
      _meta(1, "XLA Ops", 3), _meta(7, "/host:CPU"), _meta(7, "python", 70),
      _kernel(1, 1, "sm90_xmma_fprop_implicit_gemm_bf16", 0, 100),
      _kernel(1, 1, "loop_add_fusion", 100, 50),
      _kernel(1, 1, "input_reduce_fusion_3", 200, 60),
      _kernel(1, 1, "cublasLt_gemm_f32", 300, 40),
      _kernel(1, 1, "cub::DeviceRadixSortOnesweepKernel", 400, 10),
      _kernel(1, 1, "mystery_kernel", 410, 10),
      _kernel(1, 2, "MemcpyH2D", 120, 100),
      _kernel(1, 3, "fusion.1", 0, 420),  # the XLA Ops line: ignored
      _kernel(7, 70, "add.3", 0, 5000, hlo_op="add.3"),  # host: ignored
      _kernel(7, 70, "benchmark_step", 0, 210, step_num="0"),
      _kernel(7, 70, "benchmark_step", 210, 210, step_num="1"),
      {"ph": "i", "pid": 7, "tid": 70, "ts": 5, "name": "instant"},  # no duration: ignored
  ]


def test_busy_idle_and_categories_of_a_hand_made_trace():
  summary = profile_summary.summarize(synthetic_gpu_trace())
  assert summary["source"] == "device" and summary["steps"] == 2
  assert summary["steps_from"] == "step annotations"
  assert summary["lines"] == ["/device:GPU:0 Stream #1(Compute)", "/device:GPU:0 Stream #2(Memcpy)"]
  assert summary["busy_ms_per_step"] == pytest.approx(0.160)  # 320 us over 2 steps
  assert summary["span_ms_per_step"] == pytest.approx(0.210)
  assert summary["idle_ms_per_step"] == pytest.approx(0.050)
  assert summary["busy_percent"] == pytest.approx(100 * 320 / 420)
  assert summary["kernels_per_step"] == 3.5
  assert summary["mean_kernel_us"] == pytest.approx(320 / 7)
  expected = {"convolution": 100, "copy/memset": 100, "reduction fusion": 60,
              "elementwise fusion": 50, "gemm": 40, "sort": 10, "other": 10}
  assert list(summary["categories"]) == list(expected)  # by time, ties in CATEGORIES order
  for kind, microseconds in expected.items():
    figures = summary["categories"][kind]
    assert figures["ms_per_step"] == pytest.approx(microseconds / 2 / 1e3)
    assert figures["percent_of_busy"] == pytest.approx(100 * microseconds / 320)
    assert figures["kernels_per_step"] == 0.5
  assert summary["top_kernels"][0] == {"name": "sm90_xmma_fprop_implicit_gemm_bf16",
                                       "ms_per_step": 0.05, "count_per_step": 0.5}
  # --steps wins over the annotations.
  assert profile_summary.summarize(synthetic_gpu_trace(), steps=4)["busy_ms_per_step"] == 0.08


def test_without_a_device_the_host_xla_ops_are_the_kernels():
  events = [_meta(7, "/host:CPU"), _meta(7, "tf_XLAEigen/1", 71), _meta(7, "python", 70),
            _kernel(7, 71, "convolution.2", 10, 30, hlo_op="convolution.2"),
            _kernel(7, 71, "end: convolution.2", 40, 1),  # bookkeeping, no hlo_op
            _kernel(7, 70, "PjitFunction(step)", 0, 100),
            _kernel(7, 70, "dot.1", 20, 30, hlo_op="dot.1")]
  summary = profile_summary.summarize(events)
  assert summary["source"] == "host" and summary["steps_from"] == "assumed"
  assert summary["lines"] == ["/host:CPU python", "/host:CPU tf_XLAEigen/1"]
  assert summary["busy_ms_per_step"] == pytest.approx(0.040)  # [10,40) U [20,50)
  assert summary["idle_ms_per_step"] == 0
  assert set(summary["categories"]) == {"convolution", "gemm"}
  assert "host XLA-op lines" in profile_summary.format_summary(summary)


def test_unreadable_or_empty_traces_are_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    profile_summary.find_trace(tmp_path / "nothing")
  with pytest.raises(ConfigError, match="no \\*.trace.json.gz under"):
    profile_summary.find_trace(tmp_path)
  (tmp_path / "bad.trace.json.gz").write_bytes(b"not gzip")
  with pytest.raises(ConfigError, match="not a trace-event JSON file"):
    profile_summary.load_events(tmp_path / "bad.trace.json.gz")
  with pytest.raises(ConfigError, match="no kernel events"):
    profile_summary.summarize([_meta(7, "/host:CPU")])


def test_find_trace_takes_the_newest_capture(tmp_path):
  for stamp in ("2026_12_04_10_00_00", "2026_12_04_11_00_00"):
    folder = tmp_path / "plugins" / "profile" / stamp
    folder.mkdir(parents=True)
    (folder / "host.trace.json.gz").write_bytes(gzip.compress(json.dumps(
        {"traceEvents": synthetic_gpu_trace()}).encode()))
  assert "11_00_00" in str(profile_summary.find_trace(tmp_path))
  summary = profile_summary.summarize_trace(tmp_path)
  assert summary["trace"].endswith("11_00_00/host.trace.json.gz")


def _reference_figures(text):
  """The figures the H200 session's throwaway script printed (rwl20/trace_summary_*.txt)."""
  span = re.search(r"device span [\d.]+ ms for (\d+) step\(s\): ([\d.]+) ms/step; busy ([\d.]+)% "
                   r"\(([\d.]+) ms/step\), idle ([\d.]+) ms/step; (\d+) kernels/step", text)
  block = text.split("time by kernel category (per step):")[1].split("top kernels")[0]
  rows = re.findall(r"^\s+(\S.*?)\s+([\d.]+) ms\s+([\d.]+)%\s+(\d+) kernels$", block, re.M)
  categories = {name.replace(" (cuDNN)", ""): (ms, percent, kernels)
                for name, ms, percent, kernels in rows}
  top = re.findall(r"^\s+([\d.]+) ms\s+(\d+)x  (\S+)$", text.split("top kernels (per step):")[1],
                   re.M)
  return span.groups(), categories, top


def test_the_h200_trace_gives_the_h200_session_figures():
  trace = H200 / "rwl20" / "vm.trace.json.gz"
  printed = H200 / "rwl20" / "trace_summary_loop_steps401-405.txt"
  if not (trace.exists() and printed.exists()):
    pytest.skip(f"the H200 trace and its summary are not under {H200} (set RWL_JAX_SHARED_DATA "
                "to the shared data folder; its sibling gpu/ holds them)")
  (steps, span, busy_percent, busy, idle, kernels), categories, top = _reference_figures(
      printed.read_text())
  summary = profile_summary.summarize_trace(trace, steps=int(steps))
  assert summary["source"] == "device"
  assert [line.split(" ", 1)[1] for line in summary["lines"]] == [
      "Stream #14(Memset,Compute,MemcpyD2D)", "Stream #15(MemcpyH2D)"]
  assert (f"{summary['span_ms_per_step']:.3f}", f"{summary['busy_percent']:.1f}",
          f"{summary['busy_ms_per_step']:.3f}", f"{summary['idle_ms_per_step']:.3f}",
          f"{summary['kernels_per_step']:.0f}") == (span, busy_percent, busy, idle, kernels)
  assert len(categories) == 7
  assert {kind: (f"{f['ms_per_step']:.3f}", f"{f['percent_of_busy']:.1f}",
                 f"{f['kernels_per_step']:.0f}")
          for kind, f in summary["categories"].items()} == categories
  assert [(f"{k['ms_per_step']:.3f}", f"{k['count_per_step']:.0f}", k["name"][:110])
          for k in summary["top_kernels"]] == top


def test_a_cpu_trace_of_steps_has_busy_host_xla_ops(tmp_path):
  """benchmark.trace_steps on a small jitted step, as --profile runs the train step on a CPU."""
  step = jax.jit(lambda state, x: (state + 1, {"loss": jnp.tanh(x @ x.T).sum() + state
                                                        + jnp.sort(x, axis=0)[0].sum()}))
  x = jnp.ones((128, 128))
  state, _ = step(jnp.zeros(()), x)  # compiled before the trace
  try:
    summary = benchmark.trace_steps(step, state, (x,), steps=3, directory=tmp_path / "trace")
  except ConfigError as error:
    version = tuple(int(part) for part in jax.__version__.split(".")[:2])
    if "no host events with an hlo_op argument" in str(error) and version < (0, 10):
      # Seen at the declared floor, jax 0.7.1; the CPU traces of jax 0.10 name them.
      pytest.skip(f"jax {jax.__version__}'s CPU traces name no HLO ops")
    raise
  assert summary["source"] == "host" and summary["steps"] == 3 and summary["steps_from"] == "given"
  assert summary["lines"] and all("XLA" in line for line in summary["lines"]), summary["lines"]
  assert 0 < summary["busy_ms_per_step"] <= summary["span_ms_per_step"]
  # XLA:CPU names its operations after the HLO: the sort is one of them.
  assert summary["kernels_per_step"] >= 2 and summary["categories"]["sort"]["kernels_per_step"] >= 1
  assert summary["trace"].startswith(str(tmp_path / "trace"))


def test_profile_summary_command_line(tmp_path):
  folder = tmp_path / "plugins" / "profile" / "2026_12_04_10_00_00"
  folder.mkdir(parents=True)
  (folder / "vm.trace.json.gz").write_bytes(gzip.compress(json.dumps(
      {"traceEvents": synthetic_gpu_trace()}).encode()))
  command = [sys.executable, "-m", "rwl_jax.profile_summary"]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  done = subprocess.run([*command, str(tmp_path), "--steps=1"], capture_output=True, text=True,
                        env=env, timeout=120)
  assert done.returncode == 0, done.stderr
  assert "busy 0.320 ms (76.2%), idle 0.100 ms, 7 kernels" in done.stdout
  assert re.search(r"convolution +0.100 ms +31.2% +1 kernels", done.stdout)
  done = subprocess.run([*command, str(tmp_path / "none")], capture_output=True, text=True,
                        env=env, timeout=120)
  assert done.returncode == 2 and done.stderr.startswith("error: trace ") and len(
      done.stderr.splitlines()) == 1, done.stderr


# The command line: several variants in one process; bad variants as one error line.

@pytest.mark.slow
def test_two_variants_and_a_profile_in_one_process(tmp_path):
  done = run_benchmark(TINY + [
      f"--output={tmp_path}/b.json", "--variant=default",
      "--variant=tweaked:model.width=4,model.projector_dims=(16,8),"
      "xla.xla_cpu_enable_fast_math=true",
      "--profile", "--profile_steps=2", f"--profile_dir={tmp_path}/profile"], cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  table = [line.split(" | ") for line in done.stdout.splitlines() if " | " in line]
  assert table[0][:4] == ["variant", "mode", "images_per_second", "speedup"]
  assert [row[0] for row in table[2:]] == ["default", "tweaked"] and table[2][3] == "1"
  results = json.loads((tmp_path / "b.json").read_text())["results"]
  default, tweaked = results
  assert (default["variant"], default["overrides"], default["compiler_options"]) == ("default", {},
                                                                                     {})
  assert tweaked["overrides"] == {"model.width": "4", "model.projector_dims": "(16,8)"}
  assert tweaked["compiler_options"] == {"xla_cpu_enable_fast_math": True}
  assert tweaked["gflop_per_image"] < default["gflop_per_image"]  # the narrower network ran
  assert tweaked["speedup"] == pytest.approx(
      tweaked["images_per_second"] / default["images_per_second"])
  for row in results:
    profile = row["profile"]
    assert profile["source"] == "host" and profile["steps"] == 2
    assert profile["busy_ms_per_step"] > 0 and profile["kernels_per_step"] > 10
    assert profile["trace"].startswith(f"{tmp_path}/profile/{row['variant']}/")
  assert done.stdout.count("kernels from host XLA-op lines") == 2
  assert "profile of variant tweaked" in done.stdout


@pytest.mark.parametrize("variant, said", [
    pytest.param("fast:xla.xla_no_such_option=1",
                 r"^error: --variant=fast: XLA \(cpu\) rejects the compiler option "
                 r"xla.xla_no_such_option=1: INVALID_ARGUMENT: No such compile option", id="xla"),
    pytest.param("wide:modle.width=3", r"^error: --variant=wide:modle.width=3: names a field the "
                 r"config does not have: modle", id="field", marks=pytest.mark.slow),
    pytest.param("wide;model.width=3", r"^error: --variant=wide;model.width=3: a variant is NAME",
                 id="syntax", marks=pytest.mark.slow),
])
def test_bad_variant_is_one_error_line(variant, said, tmp_path):
  done = run_benchmark(["--config=cifar10_rwl:smoke", f"--output={tmp_path}/b.json",
                        "--variant=default", f"--variant={variant}"], cwd=tmp_path)
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert len(errors) == 1 and re.search(said, errors[0]), done.stderr[-3000:]
  assert not (tmp_path / "b.json").exists()  # checked before any variant ran
