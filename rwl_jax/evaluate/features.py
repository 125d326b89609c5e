"""Frozen-encoder features of a whole split, computed on the mesh (uint8 in, float32 out)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rwl_jax import parallel
from rwl_jax.data import sources
from rwl_jax.data.recipe import AugmentRecipe


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def normalize(images: jax.Array, recipe: AugmentRecipe) -> jax.Array:
  """uint8 [..., 3] -> (x/255 - mean) / std in float32, the recipe's normalisation."""
  mean = jnp.asarray(recipe.mean, jnp.float32)
  std = jnp.asarray(recipe.std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def make_feature_fn(eval_def: nnx.GraphDef, recipe: AugmentRecipe, mesh: jax.sharding.Mesh):
  """jit((params, batch_stats, uint8 images)) -> encoder features, replicated on every device."""

  def features(params, batch_stats, images):
    model = nnx.merge(eval_def, params, batch_stats)
    return model.encoder(normalize(images, recipe)).astype(jnp.float32)

  replicated = parallel.replicated(mesh)
  return jax.jit(features, in_shardings=(replicated, replicated, parallel.data_sharded(mesh)),
                 out_shardings=replicated)


def extract(feature_fn, params, batch_stats, split: sources.ArraySplit, batch_size: int,
            mesh: jax.sharding.Mesh) -> np.ndarray:
  """[N, D] features of every image of `split`, in order (batch_size must divide over the mesh)."""
  parallel.check_batch_divisible(batch_size, mesh, "eval.batch_size")
  local = batch_size // jax.process_count()
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  outputs = []
  for batch in sources.eval_batches(split, batch_size):
    images = parallel.to_global(batch["image"][rows], mesh)
    outputs.append((feature_fn(params, batch_stats, images), batch["mask"]))
  return np.concatenate([parallel.fetch(f)[mask] for f, mask in outputs])
