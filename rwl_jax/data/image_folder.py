"""Image folders as data sources: listing, layouts, held-out splits, and decoding to uint8 RGB.

Image folders (data.image_dir, data.eval_image_dir), one level deep, hidden entries ignored:

  DIR/train/CLASS/IMAGE + DIR/test/CLASS/IMAGE   labelled, with its own evaluation split
  DIR/train/CLASS/IMAGE                          labelled; a seeded, class-balanced
                                                 data.holdout_fraction of train is the test split
  DIR/IMAGE, or DIR/train/IMAGE [+ DIR/test/IMAGE] unlabelled (labels -1, no classes)

Images of any size, mode and format PIL reads are made [S, S, 3] uint8 RGB at read time
(RESIZE_POLICY, fit_square): decoded once, by a worker process per core (decode_images,
decode_worker), and cached as .npz (decode_cache), so the per-step augmentation works on small
fixed-size arrays. No TensorFlow here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import logging
from etils import epath
from PIL import Image, ImageOps

from rwl_jax import paths
from rwl_jax.data import decode_cache
from rwl_jax.data.array_split import UNLABELLED, ArraySplit, check_range, prefix_length
from rwl_jax.errors import ConfigError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
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
  Decoded ranges are cached as .npz files (decode_cache) keyed by their files' names, sizes and
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
    self.num_examples = prefix_length(len(self.files), max_examples)
    self.decode_workers = check_decode_workers(decode_workers)

  def read(self, start: int = 0, end: int | None = None) -> ArraySplit:
    start, end = check_range(start, end, self.num_examples)
    files, labels = self.files[start:end], self.labels[start:end]
    cache = decode_cache.cache_path(self.cache_dir, self.root, self.split, files, self.image_size,
                                    RESIZE_POLICY)
    if cache.exists():
      cached = decode_cache.read_cache(cache, len(files), self.image_size)
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
    report_conversions(where, seen, self.image_size)
    decode_cache.write_cache(cache, images, labels)
    return ArraySplit(images, labels, self.class_names)


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


def report_conversions(where: str, seen: list[tuple[str, tuple[int, int]]],
                       image_size: int) -> None:
  """Logs what reading a split from `where` did to its images, given each decoded image's
  (original mode, original size): one warning for those that were not RGB, one line for those
  that were not image_size x image_size. For any source that fits images on read (an image
  folder, a TFDS dataset of other sizes)."""
  converted = collections.Counter(mode for mode, _ in seen if mode != "RGB")
  if converted:
    logging.warning("%s: converted %d of %d images to RGB (%s)", where, sum(converted.values()),
                    len(seen), ", ".join(f"{n} {mode}" for mode, n in sorted(converted.items())))
  resized = sum(size != (image_size, image_size) for _, size in seen)
  if resized:
    logging.info("%s: %d of %d images were not %dx%d: shorter side scaled to %d (bicubic), "
                 "centre square kept", where, resized, len(seen), image_size, image_size,
                 image_size)
