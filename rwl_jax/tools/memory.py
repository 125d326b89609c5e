"""Per-device memory of the contrastive loss and the train step, from XLA's compiled memory analysis.

  XLA_FLAGS=--xla_force_host_platform_device_count=64 JAX_PLATFORMS=cpu \\
    python -m rwl_jax.memory --config=configs/cifar10_rwl.py --batches=1024,4096,16384,65536

Nothing is executed: each program is lowered and compiled for the current devices (simulate a
pod with the flag above) and its temporary-buffer size per device is read. Columns, per global
batch B on D devices (b = B / D):
  loss_row_sharded   value and gradient of the loss on [B, d] embeddings, each device computing
                     its [2b, 2B] rows (losses.sharded): O(b B) per device;
  loss_unsharded     the same loss written on the whole [2B, 2B] matrix, partitioned by jit on
                     its own (what the step did before row sharding);
  loss_replicated    the whole matrix on every device, as code that all-gathers the embeddings
                     and then calls the loss does: O(B^2) per device;
  step_row_sharded   the config's whole train step (encoder forward and backward on b images
                     per device, two views), as train.py runs it.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from rwl_jax import methods, parallel, paths, tables
from rwl_jax.run import experiment as experiment_lib
from rwl_jax.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_BATCHES = flags.DEFINE_list("batches", ["1024", "4096", "16384", "65536"], "Global batch sizes.")
_STEP = flags.DEFINE_bool("step", True, "Also compile the whole train step.")
_OUTPUT = flags.DEFINE_string("output", "", "Also write the rows as JSON here.")



def _temp_bytes(compiled) -> int:
  return int(compiled.memory_analysis().temp_size_in_bytes)


def loss_temp_bytes(loss: Callable, global_batch: int, dim: int, temperature: float,
                    mesh: jax.sharding.Mesh, *, replicate: bool = False) -> int:
  """Per-device temporary bytes of jit(value_and_grad(loss)) on [B, dim] embeddings split on B
  (replicate=True: on every device whole)."""
  sharding = parallel.replicated(mesh) if replicate else parallel.data_sharded(mesh)
  z = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32, sharding=sharding)
  value_and_grad = jax.value_and_grad(lambda a, b: loss(a, b, temperature), argnums=(0, 1))
  compiled = jax.jit(value_and_grad, out_shardings=(parallel.replicated(mesh), (sharding, sharding))
                     ).lower(z, z).compile()
  return _temp_bytes(compiled)


def step_temp_bytes(config, mesh: jax.sharding.Mesh) -> int:
  """Per-device temporary bytes of the config's compiled train step (host views [B, H, W, 3])."""
  config = config.copy_and_resolve_references()
  config.data.augment_on = "host"
  experiment = experiment_lib.build(config, mesh, steps_per_epoch=10, num_classes=10)
  compiled, _ = experiment.compile_step(experiment.abstract_state(),
                                        *experiment.host_inputs_spec())
  return _temp_bytes(compiled)


def memory_rows(config, batches: list[int], *, with_step: bool) -> list[dict[str, Any]]:
  if config.method not in methods.CONTRASTIVE_LOSSES:
    raise ConfigError(f"memory compares the row-sharded contrastive losses: method must be one of "
                      f"{sorted(methods.CONTRASTIVE_LOSSES)}, got {config.method!r}")
  mesh = parallel.make_mesh()
  whole, sharded = methods.CONTRASTIVE_LOSSES[config.method]
  dim = config.model.projector_dims[-1]
  rows = []
  for batch in batches:
    parallel.check_batch_divisible(batch, mesh)
    row = {"devices": mesh.devices.size, "global_batch": batch,
           "local_batch": batch // mesh.devices.size,
           "similarity_matrix_gib": (2 * batch) ** 2 * 4 / 2**30,
           "loss_row_sharded_gib": loss_temp_bytes(
               sharded(mesh, parallel.DATA_AXIS), batch, dim, config.temperature, mesh) / 2**30,
           "loss_unsharded_gib": loss_temp_bytes(whole, batch, dim, config.temperature,
                                                 mesh) / 2**30,
           "loss_replicated_gib": loss_temp_bytes(whole, batch, dim, config.temperature, mesh,
                                                  replicate=True) / 2**30}
    if with_step:
      step_config = config.copy_and_resolve_references()
      step_config.global_batch_size = batch
      row["step_row_sharded_gib"] = step_temp_bytes(step_config, mesh) / 2**30
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def main():
  try:
    batches = [int(b) for b in _BATCHES.value]
  except ValueError:
    raise ConfigError(f"--batches must be integers, got {','.join(_BATCHES.value)}") from None
  if not batches or min(batches) < 2:
    raise ConfigError(f"--batches must be global batch sizes >= 2, got {batches}")
  output = paths.output_file(_OUTPUT.value, "--output") if _OUTPUT.value else None
  experiment_lib.validate_config(_CONFIG.value)
  rows = memory_rows(_CONFIG.value, batches, with_step=_STEP.value)
  print(tables.format_table(rows))
  if output is not None:
    output.write_text(json.dumps(
        {"jax_version": jax.__version__, "platform": jax.devices()[0].platform,
         "method": _CONFIG.value.method, "rows": rows}, indent=2))
