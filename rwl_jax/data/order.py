"""Which images each step sees: seeded epoch permutations, remainder dropped (no TensorFlow).

Shared by the host (tf.data) and device (JAX) input paths, so both see the same order.
"""

from __future__ import annotations

import numpy as np


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  return num_examples // global_batch_size  # drop_remainder: every step sees a full batch


def epoch_order(num_examples: int, global_batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """[steps, global_batch_size] example indices of one epoch (a seeded permutation, remainder dropped)."""
  steps = steps_per_epoch(num_examples, global_batch_size)
  permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return permutation[:steps * global_batch_size].reshape(steps, global_batch_size)
