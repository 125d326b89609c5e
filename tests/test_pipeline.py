"""The image-folder source and the tf.data two-view pipeline on real CIFAR-10 images."""

import numpy as np
import pytest

from rwl_jax.configs import common
from rwl_jax.data import array_split, image_folder, pipeline, sources
from rwl_jax.data.order import DataShards
from rwl_jax.data.recipe import AugmentRecipe, CIFAR10_MEAN, CIFAR10_STD


@pytest.fixture(scope="module")
def train_split(cifar_dir, tmp_path_factory):
  config = common.get_config()
  config.data.image_dir = str(cifar_dir)
  config.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
  return sources.load_split(config.data, "train")


def batches(split, epoch=0, seed=0, shards=None, start_step=0, **kwargs):
  """One epoch's batches (from its step start_step on)."""
  shards = shards or DataShards(len(split))
  first = epoch * shards.steps_per_epoch(64) + start_step
  return list(pipeline.train_batches(split, shards=shards, global_batch_size=64,
                                     recipe=AugmentRecipe(), seed=seed, first_step=first, **kwargs))


def test_image_folder_source(train_split, cifar_dir, tmp_path):
  assert train_split.images.shape == (640, 32, 32, 3) and train_split.images.dtype == np.uint8
  assert train_split.class_names[0] == "airplane" and train_split.class_names[-1] == "truck"
  np.testing.assert_array_equal(np.bincount(train_split.labels), [64] * 10)
  # Real CIFAR-10: channel means near the published ones even on 640 images.
  np.testing.assert_allclose(train_split.images.mean(axis=(0, 1, 2)) / 255, CIFAR10_MEAN, atol=0.05)
  # The decoded cache gives back identical arrays.
  source = image_folder.ImageFolderSource(str(cifar_dir), "train", image_size=32,
                                          cache_dir=str(tmp_path))
  again, again_cached = source.read(), source.read()
  np.testing.assert_array_equal(again.images, train_split.images)
  np.testing.assert_array_equal(again_cached.images, train_split.images)
  assert len(list(tmp_path.glob("*.npz"))) == 1
  # The source order mixes the classes, so a prefix (max_examples) has every class.
  assert len(set(train_split.labels[:40])) == 10


def test_views_shapes_ranges_and_difference(train_split):
  epoch = batches(train_split)
  assert len(epoch) == 640 // 64
  batch = epoch[0]
  assert set(batch) == {"view1", "view2", "label"}
  for name in ("view1", "view2"):
    assert batch[name].shape == (64, 32, 32, 3) and batch[name].dtype == np.float32
    pixels = batch[name] * np.asarray(CIFAR10_STD) + np.asarray(CIFAR10_MEAN)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert batch["label"].dtype == np.int32
  # Two independent augmentations of the same images: they differ, image by image.
  per_image = np.abs(batch["view1"] - batch["view2"]).mean(axis=(1, 2, 3))
  assert (per_image > 1e-3).mean() > 0.95


def test_each_epoch_is_a_permutation_without_repeats(train_split):
  shards = DataShards(len(train_split))
  order = shards.epoch_order(64, seed=0, epoch=0)
  assert order.shape == (10, 64) and len(np.unique(order)) == 640
  assert not np.array_equal(order, shards.epoch_order(64, seed=0, epoch=1))
  # drop_remainder: 650 images at batch 64 still give 10 full batches
  assert DataShards(650).epoch_order(64, seed=0, epoch=0).shape == (10, 64)


def test_same_seed_same_batches_and_resume_offset(train_split):
  first, second = batches(train_split), batches(train_split)
  for a, b in zip(first, second):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  other_seed = batches(train_split, seed=1)
  assert not np.array_equal(first[0]["view1"], other_seed[0]["view1"])
  resumed = batches(train_split, start_step=7)
  assert len(resumed) == 3
  np.testing.assert_array_equal(resumed[0]["view1"], first[7]["view1"])


def test_processes_reading_only_their_shards_tile_the_global_batch(train_split):
  """Two processes, each holding only its half of the split, give the rows of the global batch
  that one process reading everything (with the same two shards) gives."""
  whole = batches(train_split, shards=DataShards(len(train_split), num_shards=2))
  shares = []
  for process in (0, 1):
    shards = DataShards(len(train_split), 2, process_index=process, process_count=2)
    start, end = shards.process_range()
    local = array_split.ArraySplit(train_split.images[start:end], train_split.labels[start:end],
                                   train_split.class_names)
    shares.append(batches(local, shards=shards))
  assert len(whole) == len(shares[0]) == len(shares[1]) == 10
  for step in (0, 9):
    for name in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([share[step][name] for share in shares]), whole[step][name])


def test_one_pipeline_across_epochs_equals_epoch_by_epoch(train_split):
  shards = DataShards(len(train_split))
  run = list(pipeline.train_batches(train_split, shards=shards, global_batch_size=64,
                                    recipe=AugmentRecipe(), seed=0, first_step=7, last_step=23))
  by_epoch = batches(train_split, epoch=0, start_step=7) + batches(train_split, epoch=1) + \
      batches(train_split, epoch=2)[:3]
  assert len(run) == len(by_epoch) == 16
  for a, b in zip(run, by_epoch):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  # Each step's images are the ones its epoch's order names.
  for step, batch in zip(range(7, 23), run):
    epoch, index = divmod(step, 10)
    expected = train_split.labels[shards.local_epoch_order(64, seed=0, epoch=epoch)[index]]
    np.testing.assert_array_equal(batch["label"], expected)
