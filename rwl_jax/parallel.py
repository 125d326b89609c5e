"""Device mesh and shardings: one 'data' axis; parameters replicated, batches split along it.

jit with NamedSharding (not pmap): a batch mean inside the model (BatchNorm) or the loss is then
a global-batch mean, and XLA inserts the collectives.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rwl_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "global_batch_size") -> None:
  count = mesh.devices.size
  if batch_size % count:
    raise ConfigError(f"{what}={batch_size} is not divisible by the {count} devices; "
                      f"use a multiple of {count}")


def to_global(batch: Any, mesh: Mesh) -> Any:
  """This process's rows of a batch (NumPy pytree) -> global arrays sharded on the data axis."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def any_process(flag: bool) -> bool:
  """True when `flag` is true on any process: an all-gather on several processes, which every
  process must call at the same point."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def fetch_array(x: jax.Array) -> np.ndarray:
  """A global array -> NumPy: its local copy when replicated, the whole array when all of it is on
  this process's devices; ValueError otherwise (one device's copy would silently be one shard)."""
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  if x.is_fully_addressable:
    return np.asarray(x)
  raise ValueError(f"fetch needs replicated arrays; this one of shape {x.shape} is split over "
                   f"the devices of several processes ({x.sharding}); replicate it first")


def fetch(tree: Any) -> Any:
  """Replicated global arrays -> NumPy, on every process (each reads its own local copy).

  Unlike jax.device_get this works when the array spans devices of several processes.
  """
  return jax.tree.map(lambda x: fetch_array(x) if isinstance(x, jax.Array) else x, tree)
