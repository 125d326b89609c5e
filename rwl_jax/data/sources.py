"""Data sources: a TFDS dataset or an image folder, as in-memory uint8 arrays.

CIFAR-sized datasets fit in host (and accelerator) memory, so every source is read once into
`ArraySplit(images [N, H, W, 3] uint8, labels [N] int32)`; the input pipelines index into it.
Nothing here imports TensorFlow except the TFDS loader, and only when it is used.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
from typing import Iterator

import numpy as np
from PIL import Image

from rwl_jax.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split of a labelled image dataset, held in memory."""

  images: np.ndarray  # [N, H, W, 3] uint8
  labels: np.ndarray  # [N] int32
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, max_examples: int, seed: int = 0) -> "ArraySplit":
    """A seeded random subset of at most max_examples (0 = everything), in index order."""
    if max_examples <= 0 or max_examples >= len(self):
      return self
    keep = np.sort(np.random.default_rng(seed).permutation(len(self))[:max_examples])
    return ArraySplit(self.images[keep], self.labels[keep], self.class_names)


def load_split(data_config, split: str) -> ArraySplit:
  """The split named `split` of the dataset `data_config` describes (image_dir, else TFDS)."""
  if data_config.image_dir:
    data = load_image_folder(data_config.image_dir, split, image_size=data_config.image_size,
                             cache_dir=data_config.cache_dir)
  else:
    data = load_tfds(data_config.tfds_name, split, data_dir=data_config.tfds_data_dir)
    _check_image_shape(data.images.shape[1:], data_config.image_size,
                       f"TFDS dataset {data_config.tfds_name!r}")
  return data


def _check_image_shape(shape: tuple[int, ...], image_size: int, where: str) -> None:
  if tuple(shape) != (image_size, image_size, 3):
    raise ConfigError(f"{where} has images of shape {tuple(shape)}, expected "
                      f"({image_size}, {image_size}, 3) (data.image_size={image_size})")


def load_tfds(name: str, split: str, *, data_dir: str = "") -> ArraySplit:
  """A whole TFDS split as arrays (imports tensorflow_datasets only when called)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    builder.download_and_prepare()
    dataset = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
  except Exception as error:  # TFDS raises many types; the user needs one actionable line.
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ConfigError(f"could not load TFDS dataset {name!r} split {split!r} ({first_line}); "
                      "without internet pass --config.data.image_dir=PATH to an image folder") from error
  images, labels = tfds.as_numpy(dataset)
  class_names = tuple(builder.info.features["label"].names)
  return ArraySplit(np.asarray(images, np.uint8), np.asarray(labels, np.int32), class_names)


def _list_image_folder(root: pathlib.Path, split: str) -> tuple[tuple[str, ...], list[pathlib.Path], np.ndarray]:
  if not root.is_dir():
    raise ConfigError(f"data.image_dir {str(root)!r} does not exist or is not a directory")
  split_dir = root / split
  if not split_dir.is_dir():
    raise ConfigError(f"data.image_dir {str(root)!r} has no {split!r} folder "
                      f"(expected {root}/{split}/CLASS/*.png)")
  class_names = tuple(sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir()))
  paths, labels = [], []
  for label, class_name in enumerate(class_names):
    files = sorted(p for p in (split_dir / class_name).iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    paths.extend(files)
    labels.extend([label] * len(files))
  if not paths:
    raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}/CLASS/ "
                      "(data.image_dir must be laid out PATH/SPLIT/CLASS/IMAGE)")
  return class_names, paths, np.asarray(labels, np.int32)


def _decode(path: pathlib.Path, image_size: int) -> np.ndarray:
  try:
    with Image.open(path) as image:
      array = np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError) as error:
    raise ConfigError(f"cannot decode image {path}: {error}") from error
  if array.shape != (image_size, image_size, 3):
    raise ConfigError(f"image {path} is {array.shape[1]}x{array.shape[0]}, expected "
                      f"{image_size}x{image_size} (data.image_size={image_size})")
  return array


def _cache_path(cache_dir: str, root: pathlib.Path, split: str, paths: list[pathlib.Path],
                image_size: int) -> pathlib.Path:
  # The key covers every file's name, size and mtime: any change to the folder re-decodes.
  digest = hashlib.sha256(f"{root.resolve()}|{split}|{image_size}".encode())
  for path in paths:
    stat = path.stat()
    digest.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
  base = pathlib.Path(cache_dir or os.environ.get("RWL_JAX_CACHE", "~/.cache/rwl_jax")).expanduser()
  return base / f"image_folder_{split}_{digest.hexdigest()[:20]}.npz"


def load_image_folder(image_dir: str, split: str, *, image_size: int, cache_dir: str = "",
                      num_threads: int = 8) -> ArraySplit:
  """Reads image_dir/split/CLASS/*.{png,jpg} into arrays; class index = sorted folder names.

  Decoded arrays are cached (an .npz keyed by the folder's file names, sizes and times), so a
  second run starts in a second instead of re-decoding 60,000 PNGs.
  """
  root = pathlib.Path(image_dir).expanduser()
  class_names, paths, labels = _list_image_folder(root, split)
  cache = _cache_path(cache_dir, root, split, paths, image_size)
  if cache.exists():
    with np.load(cache) as cached:
      return ArraySplit(cached["images"], cached["labels"], class_names)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    images = np.stack(list(pool.map(lambda p: _decode(p, image_size), paths)))
  try:
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + f".{os.getpid()}.tmp.npz")
    np.savez(partial, images=images, labels=labels)
    os.replace(partial, cache)  # Atomic: a concurrent or killed writer never leaves half a cache.
  except OSError:
    pass  # A read-only cache location only costs the next run a re-decode.
  return ArraySplit(images, labels, class_names)


def eval_batches(split: ArraySplit, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-size batches of uint8 images in order; the last is padded and `mask` marks real rows."""
  for start in range(0, len(split), batch_size):
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    real = len(labels)
    if real < batch_size:
      pad = batch_size - real
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
    yield {"image": images, "label": labels, "mask": np.arange(batch_size) < real}
