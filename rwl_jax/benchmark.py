"""Throughput benchmark: `python -m rwl_jax.benchmark --config=configs/cifar10_rwl.py [overrides]`.

Times the real jitted train step on inputs already on the device (--mode=step), the host
tf.data two-view pipeline alone (--mode=pipeline), or both, so a user sees which one limits.
Prints one table (images/s, ms/step, compile seconds, achieved TFLOP/s, model-FLOP utilisation,
peak device memory) and writes the figures as JSON (--output, default benchmark.json).

FLOPs are counted from the step's jaxpr (every convolution and matrix product, forward and
backward, from its shapes), not from XLA's cost analysis, which on GPU leaves out the cuDNN
convolutions.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from rwl_jax import cli, parallel, paths, tables
from rwl_jax import experiment as experiment_lib
from rwl_jax.data import inputs as data_inputs
from rwl_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_MODE = flags.DEFINE_enum("mode", "step", ["step", "pipeline", "both"], "What to time.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (or pipeline batches).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_OUTPUT = flags.DEFINE_string("output", "benchmark.json", "Where to write the figures as JSON.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None, "Device peak for MFU (default: by kind).")

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


def _peak_tflops(device, override: float | None) -> float | None:
  if override:
    return override
  kind = device.device_kind
  return next((peak for name, peak in _PEAK_BF16_TFLOPS.items() if name in kind), None)


def benchmark_step(config, *, steps: int, warmup: int,
                   peak_tflops: float | None = None) -> dict[str, Any]:
  """Compiles the real train step (the experiment's) and times it with its inputs on the devices.

  data.augment_on='host': the step on ready-made views (what the step costs once tf.data has
  made them). 'device': the whole device path, uint8 images on the devices, gather and both JAX
  augmentations inside the step (synthetic images: the cost does not depend on content).
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
  compiled, compile_seconds = experiment.compile_step(state, *inputs)
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
  return {
      "mode": f"step ({config.data.augment_on} views)",
      "images_per_second": config.global_batch_size / seconds,
      "ms_per_step": 1e3 * seconds, "compile_seconds": compile_seconds,
      "gflop_per_image": flops_per_step / config.global_batch_size / 1e9,
      "achieved_tflops": achieved, "mfu": achieved / (peak * mesh.devices.size) if peak else None,
      "peak_memory_gib": (_peak_memory_bytes(device) or 0) / 2**30 or None,
      "final_loss": float(parallel.fetch(metrics["loss"])),
  }


def benchmark_pipeline(config, *, steps: int, warmup: int) -> dict[str, Any]:
  """Times the host tf.data two-view pipeline alone (no device work)."""
  from rwl_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from rwl_jax.data.recipe import AugmentRecipe  # pylint: disable=g-import-not-at-top

  data = data_inputs.load_data(config)
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


COLUMNS = ("mode", "images_per_second", "ms_per_step", "compile_seconds", "gflop_per_image",
           "achieved_tflops", "mfu", "peak_memory_gib", "images_per_second_per_core")


def _check_counts(steps: int, warmup: int) -> None:
  if steps < 1 or warmup < 0:
    raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")


def main():
  config = _CONFIG.value
  _check_counts(_STEPS.value, _WARMUP.value)
  output = paths.output_file(_OUTPUT.value, "--output")  # before the work, not after
  experiment_lib.validate_config(config)
  rows = []
  if _MODE.value in ("step", "both"):
    rows.append(benchmark_step(config, steps=_STEPS.value, warmup=_WARMUP.value,
                               peak_tflops=_PEAK_TFLOPS.value))
  if _MODE.value in ("pipeline", "both"):
    rows.append(benchmark_pipeline(config, steps=_STEPS.value, warmup=_WARMUP.value))
  header = {"method": config.method, "global_batch_size": config.global_batch_size,
            "dtype": config.model.dtype, "encoder": config.model.encoder,
            "devices": [d.device_kind for d in jax.devices()], "jax_version": jax.__version__}
  if jax.process_index() == 0:
    print(json.dumps(header))
    print(tables.format_table(rows, COLUMNS))
    output.write_text(json.dumps({**header, "results": rows}, indent=2))


if __name__ == "__main__":
  cli.run(main, distributed=True)
