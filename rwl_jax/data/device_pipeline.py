"""The device input path: the uint8 dataset in accelerator memory, views made inside the step.

CIFAR-10's 50,000 training images are 150 MB, so they are placed once, replicated, on every
device. Each step then needs only the global batch's indices from the host (from the same
seeded epoch order as the tf.data path); the gather and both augmentations (augment_jax, the
same recipe and parameter laws as augment_tf) run inside the jitted step. Randomness is
fold_in(key(seed), step) and then the view, so a resumed run draws the same views, and the
values do not depend on the number of devices (partitionable threefry).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rwl_jax import parallel
from rwl_jax.data import augment_jax
from rwl_jax.data.recipe import AugmentRecipe


def put_dataset(images: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """The whole uint8 split, replicated on every device of the mesh."""
  return jax.device_put(images, parallel.replicated(mesh))


def with_device_views(train_step: Callable, recipe: AugmentRecipe, *, seed: int,
                      image_size: int) -> Callable:
  """train_step(state, {'view1', 'view2'}) -> step(state, images, indices) making the views itself."""

  def step(state, images: jax.Array, indices: jax.Array):
    key = jax.random.fold_in(jax.random.key(seed), state.step)
    batch = jnp.take(images, indices, axis=0)
    views = {f"view{view + 1}": augment_jax.random_view(jax.random.fold_in(key, view), batch,
                                                         recipe, image_size)
             for view in (0, 1)}
    return train_step(state, views)

  return step


def compile_device_step(step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  replicated = parallel.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, replicated, parallel.data_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)
