"""Which examples each process reads and each step sees (order.DataShards), and range reads."""

import numpy as np
import pytest

from rwl_jax.data import image_folder
from rwl_jax.data.order import DataShards, data_shards
from rwl_jax.errors import ConfigError


def test_bounds_cover_the_split_in_near_equal_shards():
  shards = DataShards(1003, num_shards=4)
  np.testing.assert_array_equal(shards.bounds, [0, 250, 501, 752, 1003])
  assert DataShards(1003, 4, process_index=1, process_count=2).process_range() == (501, 1003)
  assert DataShards(1003, 4, process_count=2).max_process_examples == 502


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_epoch_order_takes_each_block_from_its_own_shard(num_shards):
  shards = DataShards(1003, num_shards)
  order = shards.epoch_order(64, seed=3, epoch=2)
  steps = (1003 // num_shards) // (64 // num_shards)
  assert order.shape == (steps, 64)
  assert len(np.unique(order)) == order.size  # no example twice in an epoch
  block = 64 // num_shards
  for shard in range(num_shards):
    low, high = shards.bounds[shard], shards.bounds[shard + 1]
    columns = order[:, shard * block:(shard + 1) * block]
    assert columns.min() >= low and columns.max() < high
  np.testing.assert_array_equal(order, shards.epoch_order(64, seed=3, epoch=2))
  assert not np.array_equal(order, shards.epoch_order(64, seed=3, epoch=3))


def test_process_local_orders_rebuild_the_global_order():
  global_order = DataShards(1000, 4).epoch_order(64, seed=0, epoch=0)
  parts = []
  for process in range(2):
    shards = DataShards(1000, 4, process_index=process, process_count=2)
    start, end = shards.process_range()
    local = shards.local_epoch_order(64, seed=0, epoch=0)
    assert local.min() >= 0 and local.max() < end - start  # indexes only what it holds
    parts.append(local + start)
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), global_order)


def test_bad_sharding_is_one_config_error():
  with pytest.raises(ConfigError, match="multiple of the 2 processes"):
    DataShards(100, num_shards=3, process_count=2)
  with pytest.raises(ConfigError, match="not divisible by data.num_shards=3"):
    DataShards(100, num_shards=3).steps_per_epoch(64)
  assert data_shards(100, 0, process_index=1, process_count=4).num_shards == 4


def test_a_range_read_decodes_only_that_range(cifar_dir, tmp_path):
  source = image_folder.ImageFolderSource(str(cifar_dir), "train", image_size=32,
                                          cache_dir=str(tmp_path / "cache"))
  whole = source.read()
  part = source.read(100, 300)
  np.testing.assert_array_equal(part.images, whole.images[100:300])
  np.testing.assert_array_equal(part.labels, whole.labels[100:300])
  assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # one cache per range read
  limited = image_folder.ImageFolderSource(str(cifar_dir), "train", image_size=32,
                                           cache_dir=str(tmp_path / "cache"), max_examples=50)
  assert limited.num_examples == 50
  np.testing.assert_array_equal(limited.read().images, whole.images[:50])  # a prefix
  with pytest.raises(ValueError, match="outside"):
    limited.read(0, 51)
