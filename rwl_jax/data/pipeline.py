"""The host input pipeline (tf.data): shuffled global batches of two augmented views.

Order and augmentation are pure functions of (seed, epoch, step): the epoch's order comes from
order.DataShards (seeded per shard), and each view's random parameters from a stateless
TensorFlow seed of the view's named stream (rng.tf_seed(seed, global step, 'view1'|'view2')).
So a resumed run sees exactly the batches an uninterrupted one would, and the parameters of the
whole global batch are drawn before a process takes its rows, so the split over processes does
not change an image's view.
TensorFlow runs on the host CPU only; batches leave as NumPy arrays.
"""

from __future__ import annotations

import os
from typing import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from rwl_jax import rng  # pylint: disable=g-import-not-at-top
from rwl_jax.data import augment_tf  # pylint: disable=g-import-not-at-top
from rwl_jax.data.order import DataShards  # pylint: disable=g-import-not-at-top
from rwl_jax.data.recipe import AugmentRecipe  # pylint: disable=g-import-not-at-top
from rwl_jax.data.array_split import ArraySplit  # pylint: disable=g-import-not-at-top

# Keep TensorFlow away from any accelerator: it only decodes and augments on the host.
tf.config.set_visible_devices([], "GPU")


def train_batches(local_split: ArraySplit, *, shards: DataShards, global_batch_size: int,
                  recipe: AugmentRecipe, seed: int, first_step: int = 0,
                  last_step: int | None = None,
                  prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of the global batches of steps [first_step, last_step), across epochs.

  One dataset for the whole run, so prefetching carries over epoch boundaries (no rebuild and
  no first-batch wait each epoch); last_step=None runs to the end of first_step's epoch.
  local_split holds this process's examples (shards.process_range() of the split). Yields dicts
  with 'view1', 'view2' (float32 [local_batch, H, W, 3], normalised) and 'label' (int32
  [local_batch]), where local_batch = global_batch_size / process_count.
  """
  steps_per_epoch = shards.steps_per_epoch(global_batch_size)
  if last_step is None:
    last_step = (first_step // steps_per_epoch + 1) * steps_per_epoch
  local_batch = global_batch_size // shards.process_count
  rows = shards.local_rows(global_batch_size)
  height, width = local_split.images.shape[1:3]
  images = tf.constant(local_split.images)
  labels = tf.constant(local_split.labels)

  def steps_and_indices():
    # Small int arrays only; the images are gathered and augmented in the parallel map below.
    order = None
    for step in range(first_step, last_step):
      epoch, index = divmod(step, steps_per_epoch)
      if index == 0 or order is None:
        order = shards.local_epoch_order(global_batch_size, seed, epoch)
      yield step, order[index]

  def make_views(step, local_indices):
    batch = tf.gather(images, local_indices)
    views = {}
    # index: first or second view, for the recipe's per-view blur and solarisation probabilities.
    for index, view in enumerate(("view1", "view2")):
      view_seed = tf.stack([tf.constant(value, tf.int64) if isinstance(value, int) else value
                            for value in rng.tf_seed(seed, step, view)])
      params = augment_tf.sample_view_params(view_seed, global_batch_size, (height, width), recipe,
                                             index)
      params = {name: value[rows] for name, value in params.items()}
      views[view] = augment_tf.apply_view(batch, params, recipe, height)
    views["label"] = tf.gather(labels, local_indices)
    return views

  dataset = tf.data.Dataset.from_generator(steps_and_indices, output_signature=(
      tf.TensorSpec((), tf.int64), tf.TensorSpec((local_batch,), tf.int64)))
  dataset = dataset.map(make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  dataset = dataset.prefetch(prefetch)
  options = tf.data.Options()
  options.threading.private_threadpool_size = max(1, os.cpu_count() or 1)
  dataset = dataset.with_options(options)
  yield from dataset.as_numpy_iterator()
