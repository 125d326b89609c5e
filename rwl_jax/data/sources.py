"""What a run opens: a dataset's sources (a TFDS dataset or an image folder) and its splits read as
in-memory uint8 arrays, and the evaluation's fixed-size batches of them.

CIFAR-sized datasets fit in host (and accelerator) memory, so each process reads its range of a
split once (order.DataShards says which) into `ArraySplit(images [N, H, W, 3] uint8, labels [N]
int32)` (array_split); the input pipelines index into it. open_dataset resolves the data
section into the run's training, bank and test sources: tfds_source.TfdsSource, or
image_folder.ImageFolderSource (whose docstring gives the folder layouts). Nothing here imports
TensorFlow except the TFDS source, and only when it is used.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np
from absl import logging

from rwl_jax import paths
from rwl_jax.data import image_folder, tfds_source
from rwl_jax.data.array_split import ArraySplit  # the library reads sources.ArraySplit
from rwl_jax.errors import ConfigError

Source = image_folder.ImageFolderSource | tfds_source.TfdsSource


def open_split(data_config, split: str, max_examples: int = 0) -> Source:
  """The split named `split` of the dataset data_config describes (image_dir/split, else TFDS).

  max_examples > 0 keeps only that prefix of the source order (0 = everything).
  """
  if data_config.image_dir:
    return image_folder.ImageFolderSource(
        data_config.image_dir, split, image_size=data_config.image_size,
        cache_dir=data_config.cache_dir, max_examples=max_examples,
        decode_workers=data_config.decode_workers)
  return tfds_source.TfdsSource(data_config.tfds_name, split, data_dir=data_config.tfds_data_dir,
                                image_size=data_config.image_size, max_examples=max_examples)


def load_split(data_config, split: str, max_examples: int = 0) -> ArraySplit:
  """A whole split (or its prefix of max_examples) in memory."""
  return open_split(data_config, split, max_examples).read()


@dataclasses.dataclass(frozen=True)
class DatasetSources:
  """What a run reads: the training split; the split whose features train the kNN bank and the
  linear probe (`bank`, None = the training split itself) and the one they are scored on
  (`test`). test is None when evaluation is off, and evaluation_off says why."""

  train: Source
  bank: Source | None
  test: Source | None
  evaluation_off: str = ""


def open_dataset(data_config) -> DatasetSources:
  """The sources of a run's data section, its layout resolved (nothing decoded yet).

  Training: data.image_dir (any layout of image_folder's docstring), else TFDS data.train_split.
  Evaluation, labelled images only: data.eval_image_dir if given (its train split for the bank,
  its test split or a held-out part for the accuracy); else the training data's own eval_split
  (or, for an image folder without one, a held-out part of train), with the bank from
  data.eval_train_split ("" = the training split). Unlabelled images with no eval_image_dir:
  evaluation off.
  """
  data = data_config
  if not 0.0 <= data.holdout_fraction < 1.0:
    raise ConfigError(f"data.holdout_fraction must be in [0, 1), got {data.holdout_fraction!r}")
  image_folder.check_decode_workers(data.decode_workers)
  kwargs = dict(image_size=data.image_size, cache_dir=data.cache_dir,
                decode_workers=data.decode_workers)
  bank_split = data.eval_train_split or data.train_split
  bank = test = None
  off = ""
  if data.image_dir:
    # With an eval_image_dir, the training folder keeps every image (nothing held out).
    train, test, off = _folder_sources(data, data.image_dir, "data.image_dir",
                                       evaluate=not data.eval_image_dir)
    bank = (image_folder.ImageFolderSource(data.image_dir, bank_split,
                                           max_examples=data.max_train_examples, **kwargs)
            if bank_split != data.train_split else None)
  else:
    tfds_kwargs = dict(data_dir=data.tfds_data_dir, image_size=data.image_size)
    train = tfds_source.TfdsSource(data.tfds_name, data.train_split,
                                   max_examples=data.max_train_examples, **tfds_kwargs)
    if not data.eval_image_dir:
      test = tfds_source.TfdsSource(data.tfds_name, data.eval_split,
                                    max_examples=data.max_eval_examples, **tfds_kwargs)
      bank = (tfds_source.TfdsSource(data.tfds_name, bank_split,
                                     max_examples=data.max_train_examples, **tfds_kwargs)
              if bank_split != data.train_split else None)
  if data.eval_image_dir:
    bank, test, off = _folder_sources(data, data.eval_image_dir, "data.eval_image_dir")
    if not bank.class_names:
      raise ConfigError(f"data.eval_image_dir {data.eval_image_dir!r} has no class folders: "
                        "evaluation needs labelled images (DIR/train/CLASS/IMAGE)")
  elif test is not None and not (bank or train).class_names:
    test, off = None, (f"the images in data.image_dir {data.image_dir!r} have no labels (no "
                       "class folders) and no data.eval_image_dir is given")
  if test is not None and test.class_names != (bank or train).class_names:
    raise ConfigError(f"the evaluation's {(bank or train).split!r} and {test.split!r} splits "
                      f"have different classes: {(bank or train).class_names} vs "
                      f"{test.class_names}")
  return DatasetSources(train=train, bank=bank, test=test, evaluation_off=off)


def _folder_sources(data, image_dir: str, what: str, evaluate: bool = True
                    ) -> tuple[image_folder.ImageFolderSource,
                               image_folder.ImageFolderSource | None, str]:
  """(train, test or None, why there is no test) of an image folder in any supported layout;
  evaluate=False: no test split (none read, nothing held out)."""
  root = paths.as_path(image_dir, what)
  train_listing, test_listing = image_folder.folder_layout(root, data.train_split,
                                                          data.eval_split, what)
  test_split, off = data.eval_split, ""
  if not evaluate:
    test_listing = None
  elif test_listing is None and train_listing.labelled:
    keep, held = image_folder.hold_out(train_listing.labels, data.holdout_fraction,
                                       data.holdout_seed)
    if len(held):
      logging.info("%s has no %r folder: %d of its %d %r images (%g of each class, seed %d) "
                   "are held out as the evaluation split", os.fspath(root), data.eval_split,
                   len(held), len(train_listing.files), data.train_split, data.holdout_fraction,
                   data.holdout_seed)
      test_listing = train_listing.subset(held)
      train_listing = train_listing.subset(keep)
      test_split = f"{data.train_split}-holdout"
    else:
      off = (f"{what} {image_dir!r} has no {data.eval_split!r} folder and holds out nothing "
             f"(data.holdout_fraction={data.holdout_fraction:g})")
  elif test_listing is None:
    off = (f"the images in {what} {image_dir!r} have no labels (no class folders) and no "
           "data.eval_image_dir is given")
  kwargs = dict(image_size=data.image_size, cache_dir=data.cache_dir,
                decode_workers=data.decode_workers)
  train = image_folder.ImageFolderSource(image_dir, data.train_split, listing=train_listing,
                                         max_examples=data.max_train_examples, **kwargs)
  test = (image_folder.ImageFolderSource(image_dir, test_split, listing=test_listing,
                                         max_examples=data.max_eval_examples, **kwargs)
          if test_listing is not None else None)
  return train, test, off


def eval_batches(split: ArraySplit, batch_size: int,
                 num_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-size batches of uint8 images in order, padded at the end; `mask` marks real rows and
  `index` gives each row's position in the split.

  num_batches (at least enough for the split) lets processes holding different numbers of
  examples run the same number of batches.
  """
  needed = -(-len(split) // batch_size)
  for index in range(needed if num_batches is None else max(num_batches, needed)):
    start = index * batch_size
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    real = len(labels)
    if real < batch_size:
      pad = batch_size - real
      images = np.concatenate([images, np.zeros((pad,) + split.images.shape[1:], np.uint8)])
      labels = np.concatenate([labels, np.zeros((pad,), np.int32)])
    yield {"image": images, "label": labels, "mask": np.arange(batch_size) < real,
           "index": np.arange(start, start + batch_size, dtype=np.int32)}
