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
  """jit((params, batch_stats, uint8 images, labels, mask)) -> (features, labels, mask), each
  replicated on every device, so every process gets the rows all processes fed."""

  def features(params, batch_stats, images, labels, mask):
    model = nnx.merge(eval_def, params, batch_stats)
    return model.encoder(normalize(images, recipe)).astype(jnp.float32), labels, mask

  replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(features, in_shardings=(replicated, replicated, sharded, sharded, sharded),
                 out_shardings=replicated)


def extract(feature_fn, params, batch_stats, local_split: sources.ArraySplit,
            shards: order.DataShards, batch_size: int,
            mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray]:
  """([N, D] features, [N] labels) of every example of the split, gathered from all processes.

  Each process feeds the examples it holds (local_split); rows come back grouped by batch and
  process, so the labels come with them. batch_size must divide over the mesh.
  """
  parallel.check_batch_divisible(batch_size, mesh, "eval.batch_size")
  local = batch_size // jax.process_count()
  num_batches = -(-shards.max_process_examples // local)  # the same count on every process
  outputs = []
  for batch in sources.eval_batches(local_split, local, num_batches):
    outputs.append(feature_fn(params, batch_stats, *parallel.to_global(
        (batch["image"], batch["label"], batch["mask"]), mesh)))
  features, labels, mask = (np.concatenate(parts) for parts in zip(*parallel.fetch(outputs)))
  return features[mask], labels[mask]
