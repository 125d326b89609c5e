"""The TFDS source on a real (tiny) TFDS dataset built here from the CIFAR-10 subset: range reads
(`split[a:b]`, what a process of a pod reads), prefixes, and a training run from TFDS."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import tiny_config
from rwl_jax import train
from rwl_jax.data import sources
from rwl_jax.data.order import DataShards


class TinyCifar(tfds.core.GeneratorBasedBuilder):
  """The unpacked CIFAR-10 subset as a TFDS dataset (registered as 'tiny_cifar')."""

  VERSION = tfds.core.Version("1.0.0")
  image_dir = None  # set by the fixture before download_and_prepare

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(names=sorted(p.name for p in
                                                       (self.image_dir / "train").iterdir()))}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split):
    for class_dir in sorted((self.image_dir / split).iterdir()):
      for path in sorted(class_dir.iterdir()):
        yield f"{class_dir.name}/{path.name}", {"image": np.asarray(Image.open(path).convert("RGB")),
                                                "label": class_dir.name}


@pytest.fixture(scope="module")
def tfds_dir(cifar_dir, tmp_path_factory):
  TinyCifar.image_dir = cifar_dir
  data_dir = tmp_path_factory.mktemp("tfds")
  tfds.builder("tiny_cifar", data_dir=str(data_dir)).download_and_prepare()
  return data_dir


def test_range_reads_and_prefix(tfds_dir):
  source = sources.TfdsSource("tiny_cifar", "train", data_dir=str(tfds_dir), image_size=32)
  assert source.num_examples == 640 and source.class_names[0] == "airplane"
  whole = source.read()
  assert whole.images.shape == (640, 32, 32, 3) and whole.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(whole.labels), [64] * 10)
  part = source.read(100, 300)
  np.testing.assert_array_equal(part.images, whole.images[100:300])
  np.testing.assert_array_equal(part.labels, whole.labels[100:300])
  # Two processes' ranges tile the split.
  shards = [DataShards(640, 2, process_index=p, process_count=2) for p in (0, 1)]
  halves = [source.read(*s.process_range()) for s in shards]
  np.testing.assert_array_equal(np.concatenate([h.images for h in halves]), whole.images)
  limited = sources.TfdsSource("tiny_cifar", "test", data_dir=str(tfds_dir), image_size=32,
                               max_examples=50)
  assert limited.num_examples == 50 and len(limited.read()) == 50


def test_training_from_tfds(tfds_dir, tmp_path):
  config = tiny_config("", tmp_path / "cache")
  config.data.tfds_name = "tiny_cifar"
  config.data.tfds_data_dir = str(tfds_dir)
  config.num_epochs = 1
  config.eval.linear_epochs = 1
  results = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert results["train_examples"] == 640 and results["test_examples"] == 160
  assert results["data"] == "tfds:tiny_cifar" and 0.0 <= results["knn_top1"] <= 1.0
