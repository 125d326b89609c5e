"""The device input path: the uint8 dataset in accelerator memory, views made inside the step.

CIFAR-10's 50,000 training images are 150 MB, so each process places its own examples (its range
of the split, order.DataShards) once on each of its devices: a [devices, N, H, W, 3] array with
one block per device. Each step then needs only the batch's indices from the host (the same
seeded order as the tf.data path, relative to the process's range); every device gathers its rows
from its own block (shard_map, no communication), and both augmentations (augment_jax, the same
recipe and parameter laws as augment_tf) run inside the jitted step. Each view draws from its own
named stream of (seed, step) (rwl_jax.rng: 'view1', 'view2'), so a resumed run draws the same
views, and the values do not depend on the number of devices (partitionable threefry).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from rwl_jax import parallel, rng
from rwl_jax.data import augment_jax
from rwl_jax.data.recipe import AugmentRecipe


def put_dataset(local_images: np.ndarray, mesh: jax.sharding.Mesh,
                max_process_examples: int | None = None,
                local_labels: np.ndarray | None = None) -> dict[str, jax.Array]:
  """This process's uint8 images (and int32 labels, if given) on each of its devices:
  {'image': [devices, N, H, W, 3], 'label': [devices, N]} global arrays.

  N = max_process_examples (processes may hold one example more or less; shorter ones are
  padded, and the padding is never indexed).
  """
  count = max_process_examples or len(local_images)
  local = {"image": local_images.astype(np.uint8, copy=False)}
  if local_labels is not None:
    local["label"] = np.asarray(local_labels, np.int32)

  def on_devices(values: np.ndarray) -> jax.Array:
    padded = np.zeros((count,) + values.shape[1:], values.dtype)
    padded[:len(values)] = values
    # Called only for this process's devices; each gets the whole local block.
    return jax.make_array_from_callback((mesh.devices.size,) + padded.shape,
                                        parallel.data_sharded(mesh), lambda _: padded[None])

  return {name: on_devices(values) for name, values in local.items()}


def with_device_views(train_step: Callable, recipe: AugmentRecipe, *, seed: int, image_size: int,
                      mesh: jax.sharding.Mesh) -> Callable:
  """train_step(state, {'view1', 'view2'[, 'label']}) -> step(state, dataset, indices) making the
  views itself.

  dataset: put_dataset's arrays; indices: [global batch] int32 sharded on the data axis, each row
  an index into the block of the device holding that row.
  """
  data = PartitionSpec(parallel.DATA_AXIS)
  gather = jax.shard_map(
      lambda blocks, rows: jax.tree.map(lambda block: jnp.take(block[0], rows, axis=0), blocks),
      mesh=mesh, in_specs=(data, data), out_specs=data)

  def step(state, dataset: dict[str, jax.Array], indices: jax.Array):
    batch = gather(dataset, indices)
    # index: first or second view, for the recipe's per-view blur and solarisation probabilities.
    inputs = {view: augment_jax.random_view(rng.stream_key(seed, state.step, view),
                                            batch["image"], recipe, image_size, index)
              for index, view in enumerate(("view1", "view2"))}
    if "label" in batch:
      inputs["label"] = batch["label"]
    return train_step(state, inputs)

  return step
