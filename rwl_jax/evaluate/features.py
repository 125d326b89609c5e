"""Frozen-encoder features of a whole split, computed on the mesh (uint8 in, float32 out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwl_jax import parallel
from rwl_jax.data import order, sources
from rwl_jax.data.recipe import AugmentRecipe


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def normalize(images: jax.Array, recipe: AugmentRecipe) -> jax.Array:
  """uint8 [..., 3] -> (x/255 - mean) / std in float32, the recipe's normalisation."""
  mean = jnp.asarray(recipe.mean, jnp.float32)
  std = jnp.asarray(recipe.std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def make_feature_fn(eval_def: nnx.GraphDef, recipe: AugmentRecipe, mesh: jax.sharding.Mesh):
  """jit((params, batch_stats, uint8 images, rows)) -> (features, rows): the features and the
  rows' other arrays (labels, mask, positions), all replicated on every device, so every process
  gets the rows all processes fed."""

  def features(params, batch_stats, images, rows):
    model = nnx.merge(eval_def, params, batch_stats)
    return model.encoder(normalize(images, recipe)).astype(jnp.float32), rows

  replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(features, in_shardings=(replicated, replicated, sharded, sharded),
                 out_shardings=replicated)


def extract(feature_fn, params, batch_stats, local_split: sources.ArraySplit,
            shards: order.DataShards, batch_size: int,
            mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray]:
  """([N, D] features, [N] labels) of every example of the split, in the split's order.

  Each process feeds the examples it holds (local_split, its shards.process_range()); the rows
  come back from all processes with their labels and positions in the split, and are put back
  in split order, so the result does not depend on the number of processes. batch_size must
  divide over the mesh.
  """
  parallel.check_batch_divisible(batch_size, mesh, "eval.batch_size")
  local = batch_size // jax.process_count()
  num_batches = -(-shards.max_process_examples // local)  # the same count on every process
  start, _ = shards.process_range()
  outputs = []
  for batch in sources.eval_batches(local_split, local, num_batches):
    rows = {"label": batch["label"], "mask": batch["mask"], "position": batch["index"] + start}
    outputs.append(feature_fn(params, batch_stats,
                              *parallel.to_global((batch["image"], rows), mesh)))
  fetched = parallel.fetch(outputs)
  features = np.concatenate([f for f, _ in fetched])
  rows = {name: np.concatenate([r[name] for _, r in fetched]) for name in fetched[0][1]}
  real = rows["mask"]
  in_split_order = np.argsort(rows["position"][real], kind="stable")
  return features[real][in_split_order], rows["label"][real][in_split_order]
