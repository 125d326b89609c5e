"""The benchmark configs (CIFAR-100, STL-10, Imagenette, your own folder): each builds and passes
validation, its TFDS data path reads the right splits (TFDS mocked offline: tfds.testing.mock_data
with split metadata written here, examples made from the requested split string), and (slow) its
:smoke variant trains a step at tiny size.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rwl_jax import cli, parallel
from rwl_jax.run import experiment
from rwl_jax.configs import cifar100_rwl, cifar100_simclr, folder_rwl, imagenette_rwl, stl10_rwl
from rwl_jax.data import inputs, order, tfds_source
from rwl_jax.errors import ConfigError

def load(config):
  """The config's data as a run reads it (its data section; labels checked for the online probe)."""
  return inputs.load_data(config.data, train_labels=config.eval.online_probe)



def pixel(split: str, position: int) -> int:
  """The value every pixel of example `position` of `split` has (to check what was read)."""
  return (position + 100 * ("unlabelled", "test", "validation").count(split)) % 256


@contextlib.contextmanager
def mock_tfds(name: str, split_sizes: dict[str, int], tmp_path, shape=None):
  """TFDS dataset `name` with these splits, offline: its real features, split sizes written as
  metadata, and examples generated from the split string asked for (so ranges and 'a+b' are
  checked). Labels: -1 in 'unlabelled', else position % 10; shape(position) gives the image's."""
  meta = tmp_path / "tfds_meta"
  builder = tfds.builder(name, data_dir=str(meta))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0)
      for split, size in split_sizes.items()]))
  builder.data_path.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_path)
  image_shape = shape or (lambda position: builder.info.features["image"].shape)

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    del decoders, read_config, shuffle_files, kwargs
    examples = []
    for part in tfds.core.ReadInstruction.from_spec(split).to_absolute(self.info.splits):
      for position in range(part.from_ or 0, split_sizes[part.splitname] if part.to is None
                            else part.to):
        label = -1 if part.splitname == "unlabelled" else position % 10
        examples.append((np.full(image_shape(position), pixel(part.splitname, position),
                                 np.uint8), label))
    return tf.data.Dataset.from_generator(
        lambda: ({"image": image, "label": label} for image, label in examples),
        output_signature={"image": tf.TensorSpec((None, None, 3), tf.uint8),
                          "label": tf.TensorSpec((), tf.int64)})

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(meta),
                              as_dataset_fn=as_dataset):
    yield


@pytest.mark.parametrize("name", ["cifar100_rwl", "cifar100_simclr", "stl10_rwl", "imagenette_rwl",
                                  "folder_rwl"])
def test_configs_are_packaged_and_valid(name):
  module = {"cifar100_rwl": cifar100_rwl, "cifar100_simclr": cifar100_simclr,
            "stl10_rwl": stl10_rwl, "imagenette_rwl": imagenette_rwl,
            "folder_rwl": folder_rwl}[name]
  assert name in cli.packaged_configs()
  for arg in (None, "smoke"):
    experiment.validate_config(module.get_config(arg))


def test_dataset_statistics_and_settings():
  assert cifar100_rwl.get_config().augment.mean == (0.5071, 0.4865, 0.4409)
  assert cifar100_simclr.get_config().augment.std == (0.2673, 0.2564, 0.2762)
  stl10 = stl10_rwl.get_config()
  assert (stl10.data.train_split, stl10.data.eval_train_split) == ("train+unlabelled", "train")
  assert stl10.data.image_size == 96 and stl10.augment.mean == (0.4467, 0.4398, 0.4066)
  imagenette = imagenette_rwl.get_config()
  assert (imagenette.model.encoder, imagenette.model.stem) == ("resnet50", "imagenet")
  assert imagenette.data.image_size == 224 and imagenette.augment.std == (0.229, 0.224, 0.225)


def test_imagenette_builds_a_resnet50_with_the_imagenet_stem():
  config = imagenette_rwl.get_config("smoke")
  built = experiment.build(config, parallel.make_mesh(), steps_per_epoch=1)
  state = jax.eval_shape(built.init_state)  # shapes only: nothing is compiled or allocated
  shapes = [leaf.shape for leaf in jax.tree.leaves(state.params)]
  assert (7, 7, 3, 8) in shapes  # the 7x7 stem at the smoke width 8
  # ResNet-50 features (32 x width: 256 at width 8) into the 2048-128 head
  assert (256, 2048) in shapes and (2048, 128) in shapes


def test_stl10_trains_on_train_plus_unlabelled_and_evaluates_on_train(tmp_path):
  sizes = {"train": 12, "test": 6, "unlabelled": 20}
  with mock_tfds("stl10", sizes, tmp_path):
    config = stl10_rwl.get_config()
    data = load(config)
    assert len(data.train) == 32 and len(data.eval_train) == 12 and len(data.test) == 6
    assert (data.train.labels[12:] == -1).all() and (data.eval_train.labels >= 0).all()
    assert data.train.images.shape[1:] == (96, 96, 3)
    assert data.train.images[:, 0, 0, 0].tolist() == list(range(12)) + list(range(100, 120))
    # One process's range of the joined split crosses from 'train' into 'unlabelled'.
    source = tfds_source.TfdsSource("stl10", "train+unlabelled", image_size=96)
    shards = order.DataShards(32, 4, process_index=1, process_count=2)
    part = source.read(*shards.process_range())
    np.testing.assert_array_equal(part.images, data.train.images[16:32])
    middle = source.read(10, 14)
    assert middle.labels.tolist() == [0, 1, -1, -1]
    # Unlabelled examples never reach the online probe or the kNN bank.
    config.eval.online_probe = True
    with pytest.raises(ConfigError, match="eval.online_probe .* has unlabelled examples"):
      load(config)
    config.eval.online_probe, config.data.eval_train_split = False, ""
    with pytest.raises(ConfigError, match="set data.eval_train_split to a labelled split"):
      load(config)


def test_cifar100_reads_its_splits(tmp_path):
  with mock_tfds("cifar100", {"train": 20, "test": 10}, tmp_path):
    data = load(cifar100_rwl.get_config())
  assert len(data.class_names) == 100 and len(data.train) == 20 and len(data.test) == 10
  assert data.test.images[:, 0, 0, 0].tolist() == list(range(100, 110))


def test_imagenette_images_of_any_size_become_224(tmp_path):
  shapes = [(300, 400, 3), (375, 500, 3), (224, 224, 3), (120, 90, 3)]
  with mock_tfds("imagenette/full-size-v2", {"train": 4, "validation": 2}, tmp_path,
                 shape=lambda position: shapes[position % len(shapes)]):
    data = load(imagenette_rwl.get_config())
  assert data.train.images.shape == (4, 224, 224, 3) and data.test.images.shape[0] == 2
  assert data.train.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3]  # constant images stay constant


def smoke_config(module, tmp_path):
  config = module.get_config("smoke")
  config.num_epochs, config.global_batch_size = 1, 8
  config.data.max_train_examples, config.data.max_eval_examples = 16, 8
  config.data.cache_dir = str(tmp_path / "cache")
  config.eval.probe_batch_size, config.eval.linear_epochs, config.eval.batch_size = 8, 1, 8
  return config


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar100_rwl", "stl10_rwl", "imagenette_rwl"])
def test_smoke_variant_trains(name, tmp_path):
  from rwl_jax import train  # pylint: disable=g-import-not-at-top

  module = {"cifar100_rwl": cifar100_rwl, "stl10_rwl": stl10_rwl,
            "imagenette_rwl": imagenette_rwl}[name]
  config = smoke_config(module, tmp_path)
  splits = {"cifar100_rwl": {"train": 16, "test": 8},
            "stl10_rwl": {"train": 8, "unlabelled": 16, "test": 8},
            "imagenette_rwl": {"train": 16, "validation": 8}}[name]
  if name == "stl10_rwl":
    config.data.max_train_examples = 0  # all 24 of train+unlabelled, half of them unlabelled
  if name != "imagenette_rwl":
    config.model.encoder = "resnet10"  # the data path is what is tested; half the compile time
  shape = None
  if name == "imagenette_rwl":
    config.data.image_size = 64  # the config's ResNet-50 and stem, on smaller images
    shape = lambda position: (70 + position, 90, 3)
  with mock_tfds(config.data.tfds_name, splits, tmp_path, shape=shape):
    results = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert results["steps"] >= 1 and np.isfinite(results["knn_top1"])
