"""Throughput benchmark: `python -m rwl_jax.benchmark --config=configs/cifar10_rwl.py [overrides]`.

Times the real jitted train step on inputs already on the device (--mode=step), the host
tf.data two-view pipeline alone (--mode=pipeline), or both, so a user sees which one limits.
Prints one table (images/s, ms/step, compile seconds, achieved TFLOP/s, model-FLOP utilisation,
peak device memory) and writes the figures as JSON (--output, default benchmark.json).

Variants, timed one after another in this process with the same steps, one row each (and a
speed-up against the first):

  python -m rwl_jax.benchmark --config=cifar10_rwl --variant=default
      --variant=wide:model.width=128 --variant=no_cmdbuf:xla.xla_gpu_enable_command_buffer=

A variant is NAME or NAME:SETTING,SETTING,... where a SETTING is a config override key.path=value
(parsed and validated as --config.key.path=value; commas inside brackets stay in the value:
model.projector_dims=(512,128)) or an XLA compiler option xla.OPTION=value, given to this
variant's compilation only (true/false become booleans, other values go to XLA as text, which
parses them by the option's type). Every variant is checked before any is timed.

--profile records a jax.profiler trace of --profile_steps more steps per variant (after its timed
steps, so the trace does not slow them) into --profile_dir/NAME and prints where the step's time
goes (rwl_jax.tools.profile_summary: device busy and idle time, kernels per step, time by kind of kernel,
top kernels).

FLOPs are counted from the step's jaxpr (every convolution and matrix product, forward and
backward, from its shapes), not from XLA's cost analysis, which on GPU leaves out the cuDNN
convolutions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags
from etils import epath
from ml_collections import config_flags

from rwl_jax import parallel, paths, tables
from rwl_jax.tools import profile_summary
from rwl_jax.run import experiment as experiment_lib
from rwl_jax.data import inputs as data_inputs
from rwl_jax.errors import ConfigError, RunError, first_line

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_MODE = flags.DEFINE_enum("mode", "step", ["step", "pipeline", "both"], "What to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (or pipeline batches).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_OUTPUT = flags.DEFINE_string("output", "benchmark.json", "Where to write the figures as JSON.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Device peak for MFU (default: by kind).")
_VARIANT = flags.DEFINE_multi_string(
    "variant", None, "A variant to time (repeat the flag; all run in this process, in order): NAME "
    "or NAME:SETTING,SETTING,... where a SETTING is a config override key.path=value or an XLA "
    "compiler option xla.OPTION=value. Default: one variant, 'default', the config as given.")
_PROFILE = flags.DEFINE_bool(
    "profile", False, "Record a jax.profiler trace of --profile_steps steps per variant (after its "
    "timed steps) and print where the step's time goes (--mode=step or both).")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 5, "Steps each --profile trace records.")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Where --profile writes its traces, one folder per variant (default: a "
    "new temporary folder, named in the output).")

# Dense bf16 peaks (TFLOP/s) by device kind, for model-FLOP utilisation.
_PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0,
                     "TPU v5 lite": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0}


def _shape_product(shape) -> int:
  return int(math.prod(shape))


def count_flops(fn: Callable, *args) -> int:
  """FLOPs of the convolutions and matrix products in fn's jaxpr (2 per multiply-add).

  Walks nested jaxprs (pjit, custom_vjp, scan bodies times their length), so a train step's
  count includes its backward pass.
  """
  closed = jax.make_jaxpr(fn)(*args)
  return _jaxpr_flops(closed.jaxpr)


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      lhs, rhs = (v.aval for v in eqn.invars[:2])
      out = eqn.outvars[0].aval
      spec = eqn.params["dimension_numbers"]
      kernel_in = rhs.shape[spec.rhs_spec[1]]
      kernel_spatial = _shape_product(rhs.shape[d] for d in spec.rhs_spec[2:])
      total += 2 * _shape_product(out.shape) * kernel_in * kernel_spatial
    elif name == "dot_general":
      lhs = eqn.invars[0].aval
      (contracting, _), _ = eqn.params["dimension_numbers"]
      total += 2 * _shape_product(eqn.outvars[0].aval.shape) * _shape_product(
          lhs.shape[d] for d in contracting)
    multiplier = eqn.params.get("length", 1) if name == "scan" else 1
    for sub in _subjaxprs(eqn):
      total += multiplier * _jaxpr_flops(sub)
  return total


def _subjaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, "jaxpr") and hasattr(item, "consts"):  # ClosedJaxpr
        yield item.jaxpr
      elif hasattr(item, "eqns"):  # Jaxpr
        yield item


def _peak_memory_bytes(device) -> int | None:
  try:
    stats = device.memory_stats()
  except Exception:  # CPU backends raise or return None; the figure is then "n/a".
    return None
  return stats.get("peak_bytes_in_use") if stats else None


def _step_memory_bytes(compiled) -> int:
  """The compiled step's own device memory (arguments + outputs - donated + temporaries) on one
  device: per variant, where the process-wide peak_bytes_in_use only ever grows."""
  stats = compiled.memory_analysis()
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
          + stats.temp_size_in_bytes)


def _peak_tflops(device, override: float | None) -> float | None:
  if override:
    return override
  kind = device.device_kind
  return next((peak for name, peak in _PEAK_BF16_TFLOPS.items() if name in kind), None)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One configuration to time: its name, its settings as given, its config, its XLA options."""

  name: str
  overrides: dict[str, str]  # key.path -> value as given
  compiler_options: dict[str, bool | str]  # XLA option -> value, for this compilation only
  config: ml_collections.ConfigDict


DEFAULT_VARIANT = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # also a folder name (--profile_dir/NAME)
_XLA_PREFIX = "xla."


def split_settings(text: str) -> list[str]:
  """'a=1,b=(2,3)' -> ['a=1', 'b=(2,3)']: commas inside brackets or quotes belong to a value."""
  settings, current, depth, quote = [], [], 0, None
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      settings.append("".join(current))
      current = []
      continue
    current.append(char)
  settings.append("".join(current))
  return settings


def compiler_option_value(text: str) -> bool | str:
  """true/false (any case) as booleans, as XLA's boolean options want; anything else as text,
  which XLA parses by the option's type ('4' for an integer option)."""
  return text.lower() == "true" if text.lower() in ("true", "false") else text


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, str]) -> ml_collections.ConfigDict:
  """A copy of config with key.path=value overrides, parsed by ml_collections as the command
  line's --config.key.path=value are (by each field's type; an unknown field is an error)."""
  argv = ["benchmark", *(f"--config.{key}={value}" for key, value in overrides.items())]
  values = flags.FlagValues()
  try:
    # Defining the flag already applies the overrides (ml_collections reads them from sys_argv).
    config_flags.DEFINE_config_dict("config", config.copy_and_resolve_references(),
                                    flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
  except flags.Error as error:  # a value its field's type cannot parse
    raise ConfigError(first_line(error)) from None
  except (AttributeError, KeyError) as error:  # ml_collections' "no such field" (with a hint)
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    text = text.replace("\\n", "\n").replace("\\'", "'")  # a nested field's message comes escaped
    lines = [line.strip().strip("'\"") for line in text.splitlines() if line.strip()]
    lines = lines or [type(error).__name__]
    hint = f" ({'; '.join(lines[1:])})" if len(lines) > 1 else ""
    raise ConfigError(f"names a field the config does not have: {lines[0]}{hint}") from None
  except (TypeError, ValueError) as error:
    raise ConfigError(f"does not fit the config ({first_line(error)})") from None
  return values["config"].value


def parse_variant(spec: str, config: ml_collections.ConfigDict) -> Variant:
  """A --variant value (NAME or NAME:SETTING,...) on top of config, validated; ConfigError with
  one line naming the variant otherwise."""
  name, colon, settings_text = spec.partition(":")
  where = f"--variant={spec}"
  if not _NAME.match(name):
    raise ConfigError(f"{where}: a variant is NAME or NAME:key.path=value,xla.OPTION=value,... "
                      f"with NAME of letters, digits and _.+- (starting with a letter or digit)")
  if colon and not settings_text.strip():
    raise ConfigError(f"{where}: no settings after ':' (drop the ':' for the config as given)")
  overrides, options = {}, {}
  for setting in (split_settings(settings_text) if colon else []):
    key, equals, value = setting.strip().partition("=")
    if not equals or not key:
      raise ConfigError(f"{where}: setting {setting!r} is not key.path=value or xla.OPTION=value")
    if key.startswith(_XLA_PREFIX):
      option = key[len(_XLA_PREFIX):]
      if not re.fullmatch(r"[A-Za-z0-9_]+", option):
        raise ConfigError(f"{where}: {key!r} is not xla.OPTION (an XLA option name such as "
                          f"xla.xla_gpu_autotune_level)")
      target = options
      key, value = option, compiler_option_value(value)
    else:
      target = overrides
    if key in target:
      raise ConfigError(f"{where}: {setting.split('=')[0]!r} is given twice")
    target[key] = value
  try:
    variant_config = apply_overrides(config, overrides) if overrides else config
    experiment_lib.validate_config(variant_config)
  except ConfigError as error:
    raise ConfigError(f"{where}: {error}") from None
  return Variant(name=name, overrides=overrides, compiler_options=options, config=variant_config)


def check_compiler_options(variant: Variant) -> None:
  """Compiles a trivial function with each of the variant's XLA options, so an option this
  backend does not know, or a value it cannot parse, is one line before any variant runs."""
  probe = jax.jit(lambda x: x + 1).lower(np.float32(0))
  for option, value in variant.compiler_options.items():
    try:
      probe.compile(compiler_options={option: value})
    except jax.errors.JaxRuntimeError as error:
      raise ConfigError(f"--variant={variant.name}: XLA ({jax.default_backend()}) rejects the "
                        f"compiler option xla.{option}={value}: {first_line(error)}") from None


def parse_variants(specs: Sequence[str] | None,
                   config: ml_collections.ConfigDict) -> list[Variant]:
  """The variants of the --variant values (none: the config as given, named 'default'), each
  checked, names distinct."""
  variants = [parse_variant(spec, config) for spec in specs or [DEFAULT_VARIANT]]
  names = [variant.name for variant in variants]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise ConfigError(f"--variant names must be distinct; repeated: {', '.join(repeated)}")
  for variant in variants:
    check_compiler_options(variant)
  return variants


def benchmark_step(config, *, steps: int, warmup: int, peak_tflops: float | None = None,
                   compiler_options: dict[str, Any] | None = None,
                   profile_dir: epath.PathLike | None = None,
                   profile_steps: int = 5) -> dict[str, Any]:
  """Compiles the real train step (the experiment's) and times it with its inputs on the devices.

  data.augment_on='host': the step on ready-made views (what the step costs once tf.data has
  made them). 'device': the whole device path, uint8 images on the devices, gather and both JAX
  augmentations inside the step (synthetic images: the cost does not depend on content).
  compiler_options: XLA options for this compilation. profile_dir: after the timed steps, trace
  profile_steps more there and add their summary (rwl_jax.tools.profile_summary) under 'profile'.
  """
  from rwl_jax.data import device_pipeline  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh()
  # A CIFAR-10-sized split of synthetic images (the cost does not depend on the content).
  experiment = experiment_lib.build(config, mesh,
                                    steps_per_epoch=max(1, 50_000 // config.global_batch_size),
                                    num_classes=10)
  state = experiment.init_state()
  size = config.data.image_size
  rng = np.random.default_rng(0)
  host_batch = {k: rng.normal(size=(config.global_batch_size, size, size, 3)).astype(np.float32)
                for k in ("view1", "view2")}
  with_labels = experiment.online_probe is not None
  if with_labels:
    host_batch["label"] = rng.integers(0, 10, config.global_batch_size).astype(np.int32)
  batch = parallel.to_global(host_batch, mesh)
  # Model FLOPs (the encoder and heads, forward and backward): the augmentation is not counted.
  flops_per_step = count_flops(experiment.train_step, state, batch)
  if config.data.augment_on == "device":
    pool = 8 * config.global_batch_size
    images = device_pipeline.put_dataset(
        rng.integers(0, 256, (pool, size, size, 3), dtype=np.uint8), mesh,
        local_labels=rng.integers(0, 10, pool) if with_labels else None)
    indices = parallel.to_global(
        rng.permutation(pool)[:config.global_batch_size].astype(np.int32), mesh)
    inputs = (images, indices)
  else:
    inputs = (batch,)
  compiled, compile_seconds = experiment.compile_step(state, *inputs,
                                                      compiler_options=compiler_options)
  for _ in range(warmup):
    state, metrics = compiled(state, *inputs)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, *inputs)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  device = mesh.devices.flat[0]
  achieved = flops_per_step / seconds / 1e12
  peak = _peak_tflops(device, peak_tflops)
  row = {
      "mode": f"step ({config.data.augment_on} views)",
      "images_per_second": config.global_batch_size / seconds,
      "ms_per_step": 1e3 * seconds, "compile_seconds": compile_seconds,
      "gflop_per_image": flops_per_step / config.global_batch_size / 1e9,
      "achieved_tflops": achieved, "mfu": achieved / (peak * mesh.devices.size) if peak else None,
      "peak_memory_gib": (_peak_memory_bytes(device) or 0) / 2**30 or None,
      "step_memory_gib": _step_memory_bytes(compiled) / 2**30,
      "final_loss": float(parallel.fetch(metrics["loss"])),
  }
  if profile_dir is not None:
    row["profile"] = trace_steps(compiled, state, inputs, steps=profile_steps,
                                 directory=profile_dir)
  return row


def trace_steps(step: Callable, state: Any, inputs: tuple, *, steps: int,
                directory: epath.PathLike) -> dict[str, Any]:
  """Runs `steps` more steps under jax.profiler.trace(directory), each marked with a
  StepTraceAnnotation, and returns rwl_jax.tools.profile_summary's summary of that trace."""
  with jax.profiler.trace(os.fspath(directory)):
    for number in range(steps):
      with jax.profiler.StepTraceAnnotation("benchmark_step", step_num=number):
        state, metrics = step(state, *inputs)
    jax.block_until_ready(metrics)
  return profile_summary.summarize_trace(directory, steps=steps)


def benchmark_pipeline(config, *, steps: int, warmup: int) -> dict[str, Any]:
  """Times the host tf.data two-view pipeline alone (no device work)."""
  from rwl_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from rwl_jax.data.recipe import AugmentRecipe  # pylint: disable=g-import-not-at-top

  data = data_inputs.load_data(config.data, train_labels=config.eval.online_probe)
  batches = pipeline.train_batches(data.train, shards=data.train_shards,
                                   global_batch_size=config.global_batch_size,
                                   recipe=AugmentRecipe.from_config(config.augment),
                                   seed=config.seed, first_step=0,
                                   prefetch=config.data.prefetch_batches)
  available = data.train_shards.steps_per_epoch(config.global_batch_size)
  if available < warmup + steps:
    raise ConfigError(f"the pipeline has {available} batches per epoch, fewer than --warmup + "
                      f"--steps = {warmup + steps}")
  for _ in range(warmup):
    next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  seconds = (time.perf_counter() - start) / steps
  import os  # pylint: disable=g-import-not-at-top
  cores = os.cpu_count() or 1
  return {"mode": "pipeline", "images_per_second": config.global_batch_size / seconds,
          "ms_per_step": 1e3 * seconds, "host_cores": cores,
          "images_per_second_per_core": config.global_batch_size / seconds / cores}


COLUMNS = ("variant", "mode", "images_per_second", "speedup", "ms_per_step", "compile_seconds",
           "gflop_per_image", "achieved_tflops", "mfu", "peak_memory_gib", "step_memory_gib",
           "images_per_second_per_core", "error")


def _check_counts(steps: int, warmup: int, profile_steps: int) -> None:
  if steps < 1 or warmup < 0:
    raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
  if profile_steps < 1:
    raise ConfigError(f"--profile_steps must be >= 1, got {profile_steps}")


def add_speedups(rows: list[dict[str, Any]]) -> None:
  """Each row's images/s over the first variant's step row (or pipeline row, for a pipeline
  row), with two variants or more; rows that failed get none."""
  if len({row["variant"] for row in rows}) < 2:
    return
  first = {}
  for row in rows:
    if "images_per_second" in row:
      reference = first.setdefault(row["mode"].split()[0], row)  # 'step (host views)' -> 'step'
      row["speedup"] = row["images_per_second"] / reference["images_per_second"]


def benchmark_variants(variants: Sequence[Variant], *, mode: str, steps: int, warmup: int,
                       peak_tflops: float | None = None,
                       profile_root: epath.Path | None = None,
                       profile_steps: int = 5) -> list[dict[str, Any]]:
  """One row per variant and mode, in order, each with the variant's name and settings; a
  variant whose step XLA cannot compile or run (out of memory, an option only the step's
  compilation refuses) gets an 'error' in its row instead of figures, and the others still run."""
  rows = []
  for variant in variants:
    settings = {"variant": variant.name, "overrides": variant.overrides,
                "compiler_options": variant.compiler_options}
    if mode in ("step", "both"):
      profile_dir = None
      if profile_root is not None:
        profile_dir = profile_root / variant.name
        if jax.process_count() > 1:  # each process writes its own trace
          profile_dir = profile_dir / f"process{jax.process_index()}"
      try:
        row = benchmark_step(variant.config, steps=steps, warmup=warmup, peak_tflops=peak_tflops,
                             compiler_options=variant.compiler_options or None,
                             profile_dir=profile_dir, profile_steps=profile_steps)
      except jax.errors.JaxRuntimeError as error:
        # Out of memory, an option only the step's compilation refuses: the other variants
        # still run, and main() reports this one after writing their figures.
        row = {"mode": f"step ({variant.config.data.augment_on} views)",
               "error": first_line(error)}
      rows.append({**settings, **row})
    if mode in ("pipeline", "both"):
      rows.append({**settings, **benchmark_pipeline(variant.config, steps=steps, warmup=warmup)})
  add_speedups(rows)
  return rows


def main():
  config = _CONFIG.value
  _check_counts(_STEPS.value, _WARMUP.value, _PROFILE_STEPS.value)
  output = paths.output_file(_OUTPUT.value, "--output")  # before the work, not after
  experiment_lib.validate_config(config)
  variants = parse_variants(_VARIANT.value, config)  # every variant checked before any runs
  profile_root = None
  if _PROFILE.value:
    if _MODE.value == "pipeline":
      raise ConfigError("--profile traces the train step: use --mode=step or --mode=both")
    profile_root = paths.as_path(_PROFILE_DIR.value or tempfile.mkdtemp(prefix="rwl_jax_profile_"),
                                 "--profile_dir")
  rows = benchmark_variants(variants, mode=_MODE.value, steps=_STEPS.value, warmup=_WARMUP.value,
                            peak_tflops=_PEAK_TFLOPS.value, profile_root=profile_root,
                            profile_steps=_PROFILE_STEPS.value)
  header = {"method": config.method, "global_batch_size": config.global_batch_size,
            "dtype": config.model.dtype, "encoder": config.model.encoder,
            "devices": [d.device_kind for d in jax.devices()], "jax_version": jax.__version__}
  if jax.process_index() == 0:
    print(json.dumps(header))
    print(tables.format_table(rows, COLUMNS))
    for row in rows:
      if "profile" in row:
        print(f"\nprofile of variant {row['variant']} (trace {row['profile']['trace']}):")
        print(profile_summary.format_summary(row["profile"]))
    output.write_text(json.dumps({**header, "results": rows}, indent=2))
  failed = [row for row in rows if "error" in row]
  if failed:
    others = f"; the other variants' figures are in {os.fspath(output)}" if len(rows) > 1 else ""
    raise RunError(f"--variant={failed[0]['variant']} failed: {failed[0]['error']}"
                   f"{f' (and {len(failed) - 1} more)' if len(failed) > 1 else ''}{others}")
