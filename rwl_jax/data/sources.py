"""Data sources: a TFDS dataset or an image folder, as in-memory uint8 arrays.

CIFAR-sized datasets fit in host (and accelerator) memory, so each process reads its range of a
split once (order.DataShards says which) into `ArraySplit(images [N, H, W, 3] uint8, labels [N]
int32)`; the input pipelines index into it. Nothing here imports TensorFlow except the TFDS
source, and only when it is used.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import threading
import urllib.parse
import zipfile
from typing import Iterator

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from rwl_jax import paths
from rwl_jax.errors import ConfigError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """Examples of a labelled image dataset (a whole split or one process's range), in memory."""

  images: np.ndarray  # [N, H, W, 3] uint8
  labels: np.ndarray  # [N] int32
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)


class ImageFolderSource:
  """image_dir/split/CLASS/*.{png,jpg} in a fixed shuffled order; class index = sorted folder names.

  Listing is cheap and decoding is not, so `read(start, end)` decodes only that range of the
  source order (one process's shards). Decoded ranges are cached as .npz files keyed by their
  files' names, sizes and times, so a second run starts in a second instead of re-decoding.
  """

  def __init__(self, image_dir: str, split: str, *, image_size: int, cache_dir: str = "",
               max_examples: int = 0, num_threads: int = 8):
    self.root = paths.as_path(image_dir, "data.image_dir")  # local or a URL (gs://...)
    self.split, self.image_size, self.cache_dir = split, image_size, cache_dir
    self.class_names, files, labels = _list_image_folder(self.root, split)
    # A fixed shuffle (not the training seed): every prefix and every shard mixes all classes,
    # as TFDS's shuffled record order does.
    source_order = np.random.default_rng(0).permutation(len(files))
    self.files = [files[i] for i in source_order]
    self.labels = labels[source_order]
    self.num_examples = _prefix(len(files), max_examples)
    self.num_threads = num_threads

  def read(self, start: int = 0, end: int | None = None) -> ArraySplit:
    start, end = _check_range(start, end, self.num_examples)
    files, labels = self.files[start:end], self.labels[start:end]
    cache = _cache_path(self.cache_dir, self.root, self.split, files, self.image_size)
    if cache.exists():
      cached = _read_cache(cache, len(files), self.image_size)
      if cached is not None:
        return ArraySplit(*cached, self.class_names)
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      images = np.stack(list(pool.map(lambda p: _decode(p, self.image_size), files)))
    try:
      cache.parent.mkdir(parents=True, exist_ok=True)
      partial = cache.parent / f"{cache.name}.{os.getpid()}.tmp.npz"
      with partial.open("wb") as f:
        np.savez(f, images=images, labels=labels)
      partial.rename(cache)  # Atomic locally: a concurrent or killed writer never leaves half a cache.
    except OSError:
      pass  # A read-only cache location only costs the next run a re-decode.
    return ArraySplit(images, labels, self.class_names)


class TfdsSource:
  """A TFDS split in record order; `read(start, end)` reads only that slice (split[start:end]).

  An unprepared dataset is downloaded once, but only after one quick look at its download hosts:
  TFDS retries a refused connection for minutes, so without internet this fails in seconds.
  """

  def __init__(self, name: str, split: str, *, data_dir: str = "", image_size: int,
               max_examples: int = 0):
    self.name, self.split, self.image_size = name, split, image_size
    where = f"could not load TFDS dataset {name!r} split {split!r}"
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      self.builder = tfds.builder(name, data_dir=data_dir or None)
      if not self.builder.is_prepared():
        _check_download_hosts(self.builder, where)
        self.builder.download_and_prepare()
      total = self.builder.info.splits[split].num_examples
    except ConfigError:
      raise
    except Exception as error:  # TFDS raises many types; the user needs one actionable line.
      raise ConfigError(f"{where}: {_tfds_problem(error, name)}") from error
    self.class_names = tuple(self.builder.info.features["label"].names)
    self.num_examples = _prefix(total, max_examples)

  def read(self, start: int = 0, end: int | None = None) -> ArraySplit:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    start, end = _check_range(start, end, self.num_examples)
    try:
      dataset = self.builder.as_dataset(split=f"{self.split}[{start}:{end}]", batch_size=-1,
                                        as_supervised=True, shuffle_files=False)
      images, labels = tfds.as_numpy(dataset)
    except Exception as error:
      raise ConfigError(f"could not read TFDS dataset {self.name!r} split "
                        f"{self.split}[{start}:{end}] ({first_line(error)})") from error
    _check_image_shape(images.shape[1:], self.image_size, f"TFDS dataset {self.name!r}")
    return ArraySplit(np.asarray(images, np.uint8), np.asarray(labels, np.int32), self.class_names)


def open_split(data_config, split: str, max_examples: int = 0) -> ImageFolderSource | TfdsSource:
  """The split named `split` of the dataset data_config describes (image_dir, else TFDS).

  max_examples > 0 keeps only that prefix of the source order (0 = everything).
  """
  if data_config.image_dir:
    return ImageFolderSource(data_config.image_dir, split, image_size=data_config.image_size,
                             cache_dir=data_config.cache_dir, max_examples=max_examples)
  return TfdsSource(data_config.tfds_name, split, data_dir=data_config.tfds_data_dir,
                    image_size=data_config.image_size, max_examples=max_examples)


def load_split(data_config, split: str, max_examples: int = 0) -> ArraySplit:
  """A whole split (or its prefix of max_examples) in memory."""
  return open_split(data_config, split, max_examples).read()


def _prefix(total: int, max_examples: int) -> int:
  return min(total, max_examples) if max_examples > 0 else total


def _check_range(start: int, end: int | None, num_examples: int) -> tuple[int, int]:
  end = num_examples if end is None else end
  if not 0 <= start < end <= num_examples:
    raise ValueError(f"range [{start}, {end}) is outside the split's {num_examples} examples")
  return start, end


# Modules TFDS imports whose pip package has another name (else the module name is the package).
_PIP_PACKAGES = {"importlib_resources": "importlib-resources", "tree": "dm-tree", "PIL": "pillow",
                 "cv2": "opencv-python", "skimage": "scikit-image", "apache_beam": "apache-beam"}
_PROBE_TIMEOUT_S = 4.0


def _tfds_problem(error: Exception, name: str) -> str:
  """What went wrong, in words: a missing module names its pip package; no traceback."""
  cause = error
  while cause is not None and not isinstance(cause, ModuleNotFoundError):
    cause = cause.__cause__ or cause.__context__
  if cause is not None and cause.name:
    module = cause.name.split(".")[0]
    return (f"Python module {module!r} is missing (pip install {_PIP_PACKAGES.get(module, module)}"
            "); tensorflow-datasets needs it to prepare datasets")
  if type(error).__name__ == "DatasetNotFoundError":
    return f"{name!r} is not a TFDS dataset (tfds.list_builders() lists them); check data.tfds_name"
  return first_line(error)


def _check_download_hosts(builder, where: str) -> None:
  """Raises ConfigError naming both remedies unless every download host of `builder` answers.

  Why not let TFDS try: its downloader retries a failed connection 10 times with exponential
  backoff (about 3.5 minutes) and sets no timeout, and its retry count is not configurable. One
  HEAD per host through `requests` sees the same proxies and certificates that TFDS's download
  would. Builders that list no http(s) URLs (manual or custom downloads) are left to TFDS.
  The remedy is not `tfds build`: in tensorflow-datasets 4.9.10 that needs apache-beam, whose
  pinned versions need an older protobuf than TensorFlow 2.21 does.
  """
  urls = [urllib.parse.urlsplit(url) for url in builder.url_infos or {}]
  hosts = {url.netloc: url.geturl() for url in urls if url.scheme in ("http", "https")}
  for host, url in hosts.items():
    problem = _unreachable(url)
    if problem:
      raise ConfigError(
          f"{where}: it is not prepared in {builder.data_dir} and its download host {host} "
          f"cannot be reached ({problem}); pass --config.data.image_dir=PATH (an image folder "
          "PATH/train/CLASS/*.png), or download it once on a machine with internet (this command "
          "with --config.data.tfds_data_dir=DIR does) and pass --config.data.tfds_data_dir=DIR")


def _unreachable(url: str) -> str:
  """'' if url's server answers at all (any HTTP status), else why not, within a few seconds."""
  import requests  # pylint: disable=g-import-not-at-top  # TFDS's own HTTP client.

  outcome = [f"no answer in {_PROBE_TIMEOUT_S:g} s"]

  def probe():
    try:
      requests.head(url, timeout=_PROBE_TIMEOUT_S, allow_redirects=False)
      outcome[0] = ""
    except Exception as error:  # pylint: disable=broad-except  # Any failure here fails TFDS too.
      outcome[0] = type(error).__name__
  # A daemon thread bounds the DNS lookup too, which `timeout` does not cover.
  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(_PROBE_TIMEOUT_S + 1)
  return outcome[0]


def _check_image_shape(shape: tuple[int, ...], image_size: int, where: str) -> None:
  if tuple(shape) != (image_size, image_size, 3):
    raise ConfigError(f"{where} has images of shape {tuple(shape)}, expected "
                      f"({image_size}, {image_size}, 3) (data.image_size={image_size})")


def _list_image_folder(root: epath.Path, split: str) -> tuple[tuple[str, ...], list[epath.Path], np.ndarray]:
  if not root.is_dir():
    raise ConfigError(f"data.image_dir {os.fspath(root)!r} does not exist or is not a directory")
  split_dir = root / split
  if not split_dir.is_dir():
    raise ConfigError(f"data.image_dir {os.fspath(root)!r} has no {split!r} folder "
                      f"(expected {root}/{split}/CLASS/*.png)")
  entries = list(split_dir.iterdir())
  class_names = tuple(sorted(entry.name for entry in entries if entry.is_dir()))
  loose = sorted(entry.name for entry in entries if entry.name not in class_names)
  if loose:
    logging.warning("%s: skipped %d files beside the class folders, e.g. %s", split_dir,
                    len(loose), ", ".join(loose[:3]))
  files, labels = [], []
  for label, class_name in enumerate(class_names):
    # By name alone: asking each of 50,000 objects whether it is a file costs a request on a bucket.
    entries = list((split_dir / class_name).iterdir())
    found = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)
    skipped = sorted(p.name + ("/" if p.is_dir() else "") for p in entries
                     if p.suffix.lower() not in IMAGE_SUFFIXES)
    if not found:
      nested = f" (it has {', '.join(skipped[:3])}: images must sit directly in it)" if skipped else ""
      raise ConfigError(f"class folder {split_dir / class_name} has no images "
                        f"({', '.join(IMAGE_SUFFIXES)}){nested}")
    if skipped:
      logging.warning("%s: skipped %d entries that are not images (%s), e.g. %s",
                      split_dir / class_name, len(skipped), ", ".join(IMAGE_SUFFIXES),
                      ", ".join(skipped[:3]))
    files.extend(found)
    labels.extend([label] * len(found))
  if not files:
    raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}/CLASS/ "
                      "(data.image_dir must be laid out PATH/SPLIT/CLASS/IMAGE)")
  return class_names, files, np.asarray(labels, np.int32)


def _read_cache(cache: epath.Path, count: int,
                image_size: int) -> tuple[np.ndarray, np.ndarray] | None:
  """(images, labels) from a decode cache, or None when it is damaged (cut short, overwritten,
  the wrong shape): then it is set aside as *.damaged with a warning and the images are decoded
  again, instead of every run failing until someone deletes it."""
  try:
    with cache.open("rb") as f, np.load(f) as cached:
      images, labels = cached["images"], cached["labels"]
    if images.shape != (count, image_size, image_size, 3) or labels.shape != (count,):
      raise ValueError(f"holds {images.shape} images, expected ({count}, {image_size}, "
                       f"{image_size}, 3)")
    return images, labels
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
    aside = cache.parent / f"{cache.name}.damaged"
    logging.warning("decode cache %s is damaged (%s); set aside as %s, decoding the images again",
                    cache, first_line(error), aside.name)
    try:
      cache.replace(aside)
    except OSError:
      pass  # a read-only cache: decoding again is all that is needed
    return None


def _decode(path: epath.Path, image_size: int) -> np.ndarray:
  try:
    with path.open("rb") as f, Image.open(f) as image:
      array = np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, ValueError) as error:
    raise ConfigError(f"cannot decode image {path}: {error}") from error
  if array.shape != (image_size, image_size, 3):
    raise ConfigError(f"image {path} is {array.shape[1]}x{array.shape[0]}, expected "
                      f"{image_size}x{image_size} (data.image_size={image_size})")
  return array


def _cache_path(cache_dir: str, root: epath.Path, split: str, files: list[epath.Path],
                image_size: int) -> epath.Path:
  """Where the decoded range is cached; the key changes whenever the files do.

  Locally the key covers every file's name, size and modification time. For a URL image_dir it
  covers the names only: a size and time per object would cost a request each.
  """
  local = paths.url_scheme(root) is None
  digest = hashlib.sha256(f"{root.resolve() if local else root}|{split}|{image_size}".encode())
  for path in files:
    key = os.fspath(path.relative_to(root))
    if local:
      stat = os.stat(path)
      key += f"|{stat.st_size}|{stat.st_mtime_ns}"
    digest.update(f"{key}\n".encode())
  base = paths.as_path(cache_dir or os.environ.get("RWL_JAX_CACHE", "~/.cache/rwl_jax"),
                       "data.cache_dir")
  return base / f"image_folder_{split}_{digest.hexdigest()[:20]}.npz"


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
