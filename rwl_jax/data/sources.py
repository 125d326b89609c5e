"""Data sources: a TFDS dataset or an image folder, as in-memory uint8 arrays.

CIFAR-sized datasets fit in host (and accelerator) memory, so each process reads its range of a
split once (order.DataShards says which) into `ArraySplit(images [N, H, W, 3] uint8, labels [N]
int32)`; the input pipelines index into it. Nothing here imports TensorFlow except the TFDS
source, and only when it is used.

Image folders (data.image_dir, data.eval_image_dir), one level deep, hidden entries ignored:

  DIR/train/CLASS/IMAGE + DIR/test/CLASS/IMAGE   labelled, with its own evaluation split
  DIR/train/CLASS/IMAGE                          labelled; a seeded, class-balanced
                                                 data.holdout_fraction of train is the test split
  DIR/IMAGE, or DIR/train/IMAGE [+ DIR/test/IMAGE] unlabelled (labels -1, no classes)

Images of any size, mode and format PIL reads are made [S, S, 3] uint8 RGB at read time
(RESIZE_POLICY, fit_square): decoded once and cached as .npz, so the per-step augmentation
works on small fixed-size arrays.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import uuid
import zipfile
from typing import Iterator

import numpy as np
from absl import logging
from etils import epath
from PIL import Image, ImageOps

from rwl_jax import paths
from rwl_jax.errors import ConfigError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
UNLABELLED = -1  # the label of an image without one (as TFDS gives STL-10's unlabelled split)
# How an image of another size becomes S x S; part of every decode cache key. The shorter side is
# scaled to S with PIL's bicubic filter (antialiased when shrinking: its support widens with the
# scale), then the centre S x S is kept: no distortion of the aspect ratio, and the centre is where
# photographs put their subject (torchvision's Resize(S) + CenterCrop(S)). JPEGs are first decoded
# at the largest DCT reduction (1/2, 1/4, 1/8) that keeps both sides >= S (PIL's draft), which
# makes big photographs several times faster to read; EXIF orientation is applied.
RESIZE_POLICY = "shorter-side-bicubic-centre-crop-draft-exif-v1"
# A decode worker process starts in about 0.3 s (a fresh interpreter importing this module), the
# time one takes to decode some 3,000 32 px PNGs (measured on 2 cores): the images are decoded by
# workers only where that saves time, n * (1 - 1/workers) > WORKER_START_IMAGES.
WORKER_START_IMAGES = 3000
# Concurrent reads per worker from a URL image_dir: each object is a request, mostly waiting.
URL_READERS = 8
# Modes whose values span 16 bits (PNG/TIFF 16-bit grayscale): scaled to 8 bits, not clipped.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """Examples of an image dataset (a whole split or one process's range), in memory.

  An unlabelled split has no class names and every label UNLABELLED (-1); a TFDS split may mix
  both (STL-10's 'train+unlabelled').
  """

  images: np.ndarray  # [N, H, W, 3] uint8
  labels: np.ndarray  # [N] int32, UNLABELLED where there is none
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def labelled(self) -> bool:
    """Whether the split has classes (some of its examples may still be UNLABELLED)."""
    return bool(self.class_names)


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """The images of one split folder, sorted (by class, then name); class_names () = unlabelled."""

  folder: epath.Path
  class_names: tuple[str, ...]
  files: tuple[epath.Path, ...]
  labels: np.ndarray  # [N] int32

  @property
  def labelled(self) -> bool:
    return bool(self.class_names)

  def subset(self, keep: np.ndarray) -> "FolderListing":
    """The listing's images at the sorted positions `keep`."""
    keep = np.sort(keep)
    return FolderListing(self.folder, self.class_names, tuple(self.files[i] for i in keep),
                         self.labels[keep])


class ImageFolderSource:
  """The images of a split folder in a fixed shuffled order; class index = sorted folder names.

  `ImageFolderSource(image_dir, split)` lists image_dir/split (CLASS folders, or images directly
  in it for an unlabelled split); `listing=` takes a FolderListing already made (a held-out part
  of a split). Listing is cheap and decoding is not, so `read(start, end)` decodes only that range
  of the source order (one process's shards), with a worker process per core (decode_images).
  Decoded ranges are cached as .npz files (write_cache) keyed by their files' names, sizes and
  times, the image size and RESIZE_POLICY, so a second run starts in a second instead of
  re-decoding.
  """

  def __init__(self, image_dir: str, split: str, *, image_size: int, cache_dir: str = "",
               max_examples: int = 0, decode_workers: int = 0,
               listing: FolderListing | None = None):
    self.root = paths.as_path(image_dir, "data.image_dir")  # local or a URL (gs://...)
    self.split, self.image_size, self.cache_dir = split, image_size, cache_dir
    if listing is None:
      listing = list_split_folder(_split_dir(self.root, split))
    self.folder, self.class_names = listing.folder, listing.class_names
    # A fixed shuffle (not the training seed): every prefix and every shard mixes all classes,
    # as TFDS's shuffled record order does.
    source_order = np.random.default_rng(0).permutation(len(listing.files))
    self.files = [listing.files[i] for i in source_order]
    self.labels = listing.labels[source_order]
    self.num_examples = _prefix(len(self.files), max_examples)
    self.decode_workers = check_decode_workers(decode_workers)

  def read(self, start: int = 0, end: int | None = None) -> ArraySplit:
    start, end = _check_range(start, end, self.num_examples)
    files, labels = self.files[start:end], self.labels[start:end]
    cache = _cache_path(self.cache_dir, self.root, self.split, files, self.image_size)
    if cache.exists():
      cached = _read_cache(cache, len(files), self.image_size)
      if cached is not None:
        return ArraySplit(*cached, self.class_names)
    images, seen, problems = decode_images(files, self.image_size, self.decode_workers)
    where = f"{self.folder} ({self.split!r} split)"
    if problems:
      # Not skipped: every process has already cut the split into shards by its listing, so
      # an image dropped here would shift every later one on this process only.
      (index, problem), others = problems[0], [files[i].name for i, _ in problems[1:]]
      more = (f" and {len(others)} more of its {len(files)} images ({', '.join(others[:3])}"
              f"{', ...' if len(others) > 3 else ''})" if others else "")
      raise ConfigError(f"{where}: cannot decode image {files[index].name} ({problem}){more}; "
                        "delete or move them and run again")
    _report_conversions(where, seen, self.image_size)
    write_cache(cache, images, labels)
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
    where = f"TFDS dataset {self.name!r} split {self.split}[{start}:{end}]"
    size = self.image_size
    try:
      split = _split_range(self.builder.info.splits, self.split, start, end)
      if tuple(self.builder.info.features["image"].shape) == (size, size, 3):
        dataset = self.builder.as_dataset(split=split, batch_size=-1, as_supervised=True,
                                          shuffle_files=False)
        images, labels = tfds.as_numpy(dataset)
      else:
        # Other or varying sizes (imagenette's full-size photos), or grayscale: one image at a
        # time, never batch_size=-1, which would pad every image to the largest one.
        dataset = self.builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        fitted, labels, seen = [], [], []
        for image, label in tfds.as_numpy(dataset):
          picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
          seen.append((picture.mode, picture.size))
          fitted.append(np.asarray(fit_square(picture.convert("RGB"), size), np.uint8))
          labels.append(label)
        _report_conversions(where, seen, size)
        images = np.stack(fitted)
    except ConfigError:
      raise
    except Exception as error:
      raise ConfigError(f"could not read {where} ({first_line(error)})") from error
    _check_image_shape(images.shape[1:], size, f"TFDS dataset {self.name!r}")
    return ArraySplit(np.asarray(images, np.uint8), np.asarray(labels, np.int32), self.class_names)


def open_split(data_config, split: str, max_examples: int = 0) -> ImageFolderSource | TfdsSource:
  """The split named `split` of the dataset data_config describes (image_dir/split, else TFDS).

  max_examples > 0 keeps only that prefix of the source order (0 = everything).
  """
  if data_config.image_dir:
    return ImageFolderSource(data_config.image_dir, split, image_size=data_config.image_size,
                             cache_dir=data_config.cache_dir, max_examples=max_examples,
                             decode_workers=data_config.decode_workers)
  return TfdsSource(data_config.tfds_name, split, data_dir=data_config.tfds_data_dir,
                    image_size=data_config.image_size, max_examples=max_examples)


def load_split(data_config, split: str, max_examples: int = 0) -> ArraySplit:
  """A whole split (or its prefix of max_examples) in memory."""
  return open_split(data_config, split, max_examples).read()


Source = ImageFolderSource | TfdsSource


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

  Training: data.image_dir (any layout of the module docstring), else TFDS data.train_split.
  Evaluation, labelled images only: data.eval_image_dir if given (its train split for the bank,
  its test split or a held-out part for the accuracy); else the training data's own eval_split
  (or, for an image folder without one, a held-out part of train), with the bank from
  data.eval_train_split ("" = the training split). Unlabelled images with no eval_image_dir:
  evaluation off.
  """
  data = data_config
  if not 0.0 <= data.holdout_fraction < 1.0:
    raise ConfigError(f"data.holdout_fraction must be in [0, 1), got {data.holdout_fraction!r}")
  check_decode_workers(data.decode_workers)
  kwargs = dict(image_size=data.image_size, cache_dir=data.cache_dir,
                decode_workers=data.decode_workers)
  bank_split = data.eval_train_split or data.train_split
  bank = test = None
  off = ""
  if data.image_dir:
    # With an eval_image_dir, the training folder keeps every image (nothing held out).
    train, test, off = _folder_sources(data, data.image_dir, "data.image_dir",
                                       evaluate=not data.eval_image_dir)
    bank = (ImageFolderSource(data.image_dir, bank_split, max_examples=data.max_train_examples,
                              **kwargs) if bank_split != data.train_split else None)
  else:
    tfds_kwargs = dict(data_dir=data.tfds_data_dir, image_size=data.image_size)
    train = TfdsSource(data.tfds_name, data.train_split, max_examples=data.max_train_examples,
                       **tfds_kwargs)
    if not data.eval_image_dir:
      test = TfdsSource(data.tfds_name, data.eval_split, max_examples=data.max_eval_examples,
                        **tfds_kwargs)
      bank = (TfdsSource(data.tfds_name, bank_split, max_examples=data.max_train_examples,
                         **tfds_kwargs) if bank_split != data.train_split else None)
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
                    ) -> tuple[ImageFolderSource, ImageFolderSource | None, str]:
  """(train, test or None, why there is no test) of an image folder in any supported layout;
  evaluate=False: no test split (none read, nothing held out)."""
  root = paths.as_path(image_dir, what)
  train_listing, test_listing = folder_layout(root, data.train_split, data.eval_split, what)
  test_split, off = data.eval_split, ""
  if not evaluate:
    test_listing = None
  elif test_listing is None and train_listing.labelled:
    keep, held = hold_out(train_listing.labels, data.holdout_fraction, data.holdout_seed)
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
  train = ImageFolderSource(image_dir, data.train_split, listing=train_listing,
                            max_examples=data.max_train_examples, **kwargs)
  test = (ImageFolderSource(image_dir, test_split, listing=test_listing,
                            max_examples=data.max_eval_examples, **kwargs)
          if test_listing is not None else None)
  return train, test, off


def folder_layout(root: epath.Path, train_split: str, eval_split: str,
                  what: str = "data.image_dir") -> tuple[FolderListing, FolderListing | None]:
  """(train listing, test listing or None) of root: root/train_split[/CLASS]/IMAGE with an
  optional root/eval_split alike, or images directly in root (unlabelled, no test)."""
  if not root.is_dir():
    raise ConfigError(f"{what} {os.fspath(root)!r} does not exist or is not a directory")
  if (root / train_split).is_dir():
    test_dir = root / eval_split
    return (list_split_folder(root / train_split),
            list_split_folder(test_dir) if test_dir.is_dir() else None)
  try:
    listing = list_split_folder(root)
  except ConfigError:
    listing = None
  if listing is None or listing.labelled:
    folders = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    has = f" (it has folders {', '.join(folders[:3])})" if folders else ""
    raise ConfigError(f"{what} {os.fspath(root)!r} has no {train_split!r} folder and no images "
                      f"({', '.join(IMAGE_SUFFIXES)}) directly in it{has}; lay it out "
                      f"{root}/{train_split}/CLASS/IMAGE (labelled), {root}/{train_split}/IMAGE "
                      f"or {root}/IMAGE (unlabelled)")
  return listing, None


def _is_image(path: epath.Path) -> bool:
  return path.suffix.lower() in IMAGE_SUFFIXES


def _visible(folder: epath.Path) -> list[epath.Path]:
  """A folder's entries but hidden ones (.DS_Store, ._IMG.jpg, .ipynb_checkpoints)."""
  return [entry for entry in folder.iterdir() if not entry.name.startswith(".")]


def list_split_folder(folder: epath.Path) -> FolderListing:
  """The images of one split folder: directly in it (unlabelled), or in its CLASS folders.

  One level only: images in folders below a class folder (or in any folder beside images) are
  not searched; they and non-image files are skipped and counted in one warning. Images both
  directly in the folder and in class folders is an error, as is a folder without images.
  """
  entries = _visible(folder)
  loose = sorted((e for e in entries if _is_image(e)), key=lambda e: e.name)
  # By name alone: asking each of 50,000 objects whether it is a file costs a request on a bucket.
  others = [e for e in entries if not _is_image(e)]
  subfolders = sorted((e for e in others if e.is_dir()), key=lambda e: e.name)
  skipped = sorted(e.name for e in others if e not in subfolders)
  inside, skipped_inside = {}, []
  for sub in subfolders:
    sub_entries = _visible(sub)
    inside[sub.name] = sorted((e for e in sub_entries if _is_image(e)), key=lambda e: e.name)
    skipped_inside.extend(f"{sub.name}/{e.name}" + ("/" if e.is_dir() else "")
                          for e in sub_entries if not _is_image(e))
  classes = [name for name, found in inside.items() if found]
  if loose and classes:
    raise ConfigError(
        f"{folder} mixes two layouts: {len(loose)} images directly in it (e.g. {loose[0].name}) "
        f"and {len(classes)} folders of images ({', '.join(classes[:3])}); put every image in a "
        "class folder (labelled) or every image directly in it (unlabelled)")
  if loose or not subfolders:
    skipped += [f"{name}/" for name in inside]  # nested folders are not searched
    if not loose:
      raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} (expected "
                        f"{folder}/CLASS/IMAGE or {folder}/IMAGE)")
    class_names, files = (), loose
    labels = np.full(len(loose), UNLABELLED, np.int32)
  else:
    for name, found in inside.items():
      if not found:
        nested = sorted(e for e in skipped_inside if e.startswith(f"{name}/"))
        it_has = (f" (it has {', '.join(e[len(name) + 1:] for e in nested[:3])}: images must "
                  "sit directly in it)") if nested else ""
        raise ConfigError(f"class folder {folder / name} has no images "
                          f"({', '.join(IMAGE_SUFFIXES)}){it_has}")
    skipped += skipped_inside
    class_names = tuple(inside)
    files = [path for name in class_names for path in inside[name]]
    labels = np.repeat(np.arange(len(class_names), dtype=np.int32),
                       [len(inside[name]) for name in class_names])
  if skipped:
    logging.warning("%s: skipped %d entries that are not images (%s) or are nested folders, "
                    "e.g. %s", folder, len(skipped), ", ".join(IMAGE_SUFFIXES),
                    ", ".join(sorted(skipped)[:3]))
  return FolderListing(folder, class_names, tuple(files), labels)


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept, held-out) positions: round(fraction * n) of each class's n images, at least 1 and at
  most n - 1 (a class of one image keeps it), drawn with the given seed; sorted."""
  rng = np.random.default_rng(seed)
  held = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = min(len(members) - 1, max(1, int(fraction * len(members) + 0.5))) if fraction else 0
    held.extend(rng.choice(members, count, replace=False).tolist())
  held = np.sort(np.asarray(held, np.int64))
  return np.setdiff1d(np.arange(len(labels)), held), held


def _split_dir(root: epath.Path, split: str) -> epath.Path:
  if not root.is_dir():
    raise ConfigError(f"data.image_dir {os.fspath(root)!r} does not exist or is not a directory")
  if not (root / split).is_dir():
    raise ConfigError(f"data.image_dir {os.fspath(root)!r} has no {split!r} folder "
                      f"(expected {root}/{split}/CLASS/IMAGE or {root}/{split}/IMAGE)")
  return root / split


def _split_range(split_infos, split: str, start: int, end: int) -> str:
  """The TFDS split string of positions [start, end) of `split`, which may join splits with '+'
  ('train+unlabelled'[5000:5100] -> 'unlabelled[0:100]'): a slice of a joined split would
  otherwise apply to its last part only."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  parts, offset = [], 0
  for part in tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos):
    first = part.from_ or 0
    last = split_infos[part.splitname].num_examples if part.to is None else part.to
    low, high = max(start - offset, 0), min(end - offset, last - first)
    if low < high:
      parts.append(f"{part.splitname}[{first + low}:{first + high}]")
    offset += last - first
  return "+".join(parts)


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


def fit_square(image: Image.Image, size: int) -> Image.Image:
  """RESIZE_POLICY: the centre square of the image, scaled to size x size (bicubic); an image
  whose shorter side is already `size` is only cropped, one of that size returned as it is."""
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  box = (left, top, left + side, top + side)
  if side == size:
    return image if (width, height) == (size, size) else image.crop(box)
  return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def to_rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB of any PIL mode: 16-bit values scaled (not clipped) to 8 bits, a palette with a
  transparent colour through RGBA (as PIL advises), alpha dropped, CMYK and the rest by PIL."""
  if image.mode == "RGB":
    return image
  if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
    values = np.asarray(image, np.float64)
    values = values / 257.0 if image.mode in _SIXTEEN_BIT_MODES else values
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8)).convert("RGB")
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  return image.convert("RGB")


def available_cores() -> int:
  """The cores this process may run on (its affinity mask: taskset, a cgroup cpuset), else all."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS has no affinity masks
    return os.cpu_count() or 1


def check_decode_workers(value) -> int:
  """data.decode_workers, checked: an integer >= 0."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ConfigError(f"data.decode_workers must be an integer >= 0 (0 = one per core this "
                      f"process may use, 1 = decode in the process itself), got {value!r}")
  return value


def decode_images(files: list[epath.Path], image_size: int, workers: int = 0):
  """(images uint8 [N, S, S, 3], [(original mode, size)] of the decoded, [(index, problem)]).

  In file order, by `workers` processes (0 = available_cores()) each decoding a contiguous part
  of the files (decode_worker): PIL holds the GIL for most of a small image's decode (its
  Python-level parsing), so threads would not scale. The workers are fresh interpreters: forked
  ones would copy the locks of this process's JAX and TensorFlow threads without the threads
  that release them, and multiprocessing's spawn and forkserver workers would each re-import
  this program's main module (JAX, Flax: seconds and 200 MB each) before decoding anything.
  Fewer images than make the workers' start worth it (WORKER_START_IMAGES) are decoded here. A
  row whose file did not decode is zero.
  """
  names = [os.fspath(path) for path in files]
  workers = min(workers or available_cores(), len(names))
  if workers <= 1 or len(names) * (workers - 1) <= WORKER_START_IMAGES * workers:
    return decode_chunk(names, image_size)
  logging.info("decoding %d images with %d worker processes", len(names), workers)
  try:
    return _decode_in_workers(names, image_size, workers)
  except (OSError, WorkerFailed) as error:
    # No worker processes here (none may be started, one killed for memory): slower, not fatal.
    logging.warning("could not decode with %d worker processes (%s); decoding in this process",
                    workers, first_line(error))
    return decode_chunk(names, image_size)


class WorkerFailed(Exception):
  """A decode worker exited with an error (its last line of output says which)."""


def _decode_in_workers(names: list[str], image_size: int, workers: int):
  bounds = np.linspace(0, len(names), workers + 1).astype(int).tolist()
  parts = list(zip(bounds[:-1], bounds[1:]))
  images = np.empty((len(names), image_size, image_size, 3), np.uint8)
  seen, problems = [], []
  # The workers import this very rwl_jax (a checkout on sys.path need not be installed).
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [package_root, os.environ.get("PYTHONPATH")])))
  with tempfile.TemporaryDirectory(prefix="rwl_jax_decode_") as scratch:
    running = []
    try:
      for index, (start, end) in enumerate(parts):
        part = os.path.join(scratch, str(index))
        with open(f"{part}.request.json", "w") as f:
          json.dump({"names": names[start:end], "image_size": image_size}, f)
        with open(f"{part}.log", "wb") as log:
          running.append(subprocess.Popen(
              [sys.executable, "-m", "rwl_jax.data.decode_worker", part],
              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env))
      for index, worker in enumerate(running):
        if worker.wait():
          with open(os.path.join(scratch, f"{index}.log"), errors="replace") as f:
            said = [line.strip() for line in f if line.strip()]
          raise WorkerFailed(f"worker {index} exited with status {worker.returncode}"
                             + (f": {said[-1]}" if said else ""))
    finally:
      for worker in running:
        if worker.poll() is None:  # interrupted, or another worker failed: stop the rest
          worker.kill()
          worker.wait()
    for index, (start, end) in enumerate(parts):
      part = os.path.join(scratch, str(index))
      images[start:end] = np.load(f"{part}.npy")
      with open(f"{part}.json") as f:
        said = json.load(f)
      seen += [(mode, tuple(size)) for mode, size in said["seen"]]
      problems += [(start + row, problem) for row, problem in said["problems"]]
  return images, seen, problems


def decode_chunk(names: list[str], image_size: int):
  """decode_images' triple for the files `names` (local paths or URLs), in this process."""
  decode = lambda name: _decode_or_problem(name, image_size)
  if names and paths.url_scheme(names[0]) is not None:
    with concurrent.futures.ThreadPoolExecutor(URL_READERS) as readers:
      decoded = list(readers.map(decode, names))
  else:
    decoded = [decode(name) for name in names]
  images = np.zeros((len(names), image_size, image_size, 3), np.uint8)
  seen, problems = [], []
  for index, (image, mode_and_size, problem) in enumerate(decoded):
    if problem:
      problems.append((index, problem))
    else:
      images[index] = image
      seen.append(mode_and_size)
  return images, seen, problems


def _decode_or_problem(name: str, image_size: int):
  """(uint8 [S, S, 3], (original mode, original size), "") or (None, None, what went wrong)."""
  try:
    # The builtin open for a local file: epath's adds 11 us, an eighth of a 32 px PNG's decode.
    with (open(name, "rb") if paths.url_scheme(name) is None else epath.Path(name).open("rb")
          ) as f, Image.open(f) as image:
      seen = (image.mode, image.size)
      image.draft(None, (image_size, image_size))  # JPEG only: decode at a reduced scale
      picture = to_rgb(ImageOps.exif_transpose(image))
      return np.asarray(fit_square(picture, image_size), np.uint8), seen, ""
  except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
    return None, None, first_line(error)


def _report_conversions(where: str, seen: list[tuple[str, tuple[int, int]]],
                        image_size: int) -> None:
  """One warning per split read for the images that were not RGB, one line for the resized."""
  converted = collections.Counter(mode for mode, _ in seen if mode != "RGB")
  if converted:
    logging.warning("%s: converted %d of %d images to RGB (%s)", where, sum(converted.values()),
                    len(seen), ", ".join(f"{n} {mode}" for mode, n in sorted(converted.items())))
  resized = sum(size != (image_size, image_size) for _, size in seen)
  if resized:
    logging.info("%s: %d of %d images were not %dx%d: shorter side scaled to %d (bicubic), "
                 "centre square kept", where, resized, len(seen), image_size, image_size,
                 image_size)


def _cache_path(cache_dir: str, root: epath.Path, split: str, files: list[epath.Path],
                image_size: int) -> epath.Path:
  """Where the decoded range is cached; the key changes whenever the files do.

  Locally the key covers every file's name, size and modification time. For a URL image_dir it
  covers the names only: a size and time per object would cost a request each.
  """
  local = paths.url_scheme(root) is None
  digest = hashlib.sha256(
      f"{root.resolve() if local else root}|{split}|{image_size}|{RESIZE_POLICY}".encode())
  prefix = os.path.join(os.fspath(root), "")
  for path in files:
    name = os.fspath(path)
    # path.relative_to(root), by its name: a tenth of the time, which counts for 50,000 files.
    key = name[len(prefix):] if name.startswith(prefix) else os.fspath(path.relative_to(root))
    if local:
      stat = os.stat(name)
      key += f"|{stat.st_size}|{stat.st_mtime_ns}"
    digest.update(f"{key}\n".encode())
  base = paths.as_path(cache_dir or os.environ.get("RWL_JAX_CACHE", "~/.cache/rwl_jax"),
                       "data.cache_dir")
  return base / f"image_folder_{split}_{digest.hexdigest()[:20]}.npz"


def write_cache(cache: epath.Path, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes a decode cache that no reader sees in part under its final name.

  Locally: to a uniquely named hidden file beside it, flushed to disk, then renamed over the final
  name (atomic on POSIX), so a killed writer leaves no cache and two racing writers (processes or
  runs) each install a whole one, the last rename winning. A URL (gs://): an object store makes
  an object visible only once its upload completes, and its rename is a copy then a delete, so
  the file is made in memory and uploaded once under the final name; the last upload wins. A
  cache that cannot be written costs the next run a re-decode, with a warning.
  """
  try:
    cache.parent.mkdir(parents=True, exist_ok=True)
    if paths.url_scheme(cache) is not None:
      buffer = io.BytesIO()
      np.savez(buffer, images=images, labels=labels)
      cache.write_bytes(buffer.getbuffer())
      return
    partial = cache.parent / f".{cache.name}.{uuid.uuid4().hex}.partial"
    try:
      with partial.open("wb") as f:
        np.savez(f, images=images, labels=labels)
        f.flush()
        os.fsync(f.fileno())  # else a crash soon after the rename may leave an empty cache
      partial.replace(cache)
    finally:
      partial.unlink(missing_ok=True)
  except OSError as error:
    logging.warning("could not write the decode cache %s (%s); the next run decodes the images "
                    "again", cache, first_line(error))


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
