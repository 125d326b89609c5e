"""Which images each process reads and each step sees (no TensorFlow).

A split is read in its source order (TFDS record order, or a fixed shuffle of an image folder)
and cut into `num_shards` contiguous shards; each process reads only the shards it owns (a
contiguous run of them). Every step's global batch is the concatenation of one sub-batch per
shard, each from a seeded permutation of its shard, so process p's rows of the global batch are
exactly the images it holds. The order is a pure function of (seed, epoch, num_shards): a run on
1 process with num_shards=2 sees the same batches as the same run on 2 processes.

Shared by the host (tf.data) and device (JAX) input paths, so both see the same order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rwl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataShards:
  """num_examples split into num_shards contiguous shards, spread over process_count processes."""

  num_examples: int
  num_shards: int = 1
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.num_shards < 1 or self.num_shards % self.process_count:
      raise ConfigError(f"data.num_shards={self.num_shards} must be a positive multiple of the "
                        f"{self.process_count} processes (0 = one shard per process)")
    if self.num_examples < self.num_shards:
      raise ConfigError(f"{self.num_examples} examples cannot be cut into {self.num_shards} shards")

  @property
  def bounds(self) -> np.ndarray:
    """[num_shards + 1] shard boundaries; shard sizes differ by at most one."""
    return np.asarray([self.num_examples * s // self.num_shards
                       for s in range(self.num_shards + 1)])

  @property
  def shards_per_process(self) -> int:
    return self.num_shards // self.process_count

  def process_range(self, process_index: int | None = None) -> tuple[int, int]:
    """[start, end) of the source-order positions that process reads."""
    index = self.process_index if process_index is None else process_index
    bounds = self.bounds
    return (int(bounds[index * self.shards_per_process]),
            int(bounds[(index + 1) * self.shards_per_process]))

  @property
  def max_process_examples(self) -> int:
    return max(end - start for start, end in map(self.process_range, range(self.process_count)))

  def check_batch(self, global_batch_size: int, what: str = "global_batch_size") -> None:
    if global_batch_size % self.num_shards:
      raise ConfigError(f"{what}={global_batch_size} is not divisible by data.num_shards="
                        f"{self.num_shards} (each shard gives an equal part of every batch)")

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Full global batches per epoch: every shard gives global_batch_size / num_shards images."""
    self.check_batch(global_batch_size)
    smallest = int(np.diff(self.bounds).min())
    return smallest // (global_batch_size // self.num_shards)  # remainders dropped

  def epoch_order(self, global_batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """[steps, global_batch_size] source positions of one epoch, shard s in its columns block s."""
    steps = self.steps_per_epoch(global_batch_size)
    shard_batch = global_batch_size // self.num_shards
    bounds = self.bounds
    blocks = []
    for shard in range(self.num_shards):
      size = int(bounds[shard + 1] - bounds[shard])
      permutation = np.random.default_rng([seed, epoch, shard]).permutation(size)
      blocks.append(bounds[shard] + permutation[:steps * shard_batch].reshape(steps, shard_batch))
    return np.concatenate(blocks, axis=1)

  def local_rows(self, global_batch_size: int) -> slice:
    """This process's rows of every global batch."""
    local = global_batch_size // self.process_count
    return slice(self.process_index * local, (self.process_index + 1) * local)

  def local_epoch_order(self, global_batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """[steps, local batch] indices into this process's own examples (its range of the split)."""
    start, _ = self.process_range()
    global_order = self.epoch_order(global_batch_size, seed, epoch)
    return global_order[:, self.local_rows(global_batch_size)] - start


def data_shards(num_examples: int, num_shards: int, process_index: int,
                process_count: int) -> DataShards:
  """DataShards with num_shards = 0 meaning one shard per process."""
  return DataShards(num_examples, num_shards or process_count, process_index, process_count)
