"""The decode cache of an image folder: decoded ranges kept as .npz files, so a second run starts
in a second instead of re-decoding.

cache_path names the file of one range of a split (its key covers the files' names, sizes and
times, the image size and the resize policy); read_cache reads one back, setting a damaged one
aside; write_cache writes one that no reader sees in part.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
import zipfile

import numpy as np
from absl import logging
from etils import epath

from rwl_jax import paths
from rwl_jax.errors import first_line


def cache_path(cache_dir: str, root: epath.Path, split: str, files: list[epath.Path],
               image_size: int, resize_policy: str) -> epath.Path:
  """Where the decoded range `files` of image folder `root` is cached (under cache_dir, ""
  = $RWL_JAX_CACHE or ~/.cache/rwl_jax); the key changes whenever the files, the image size or
  the resize policy (image_folder.RESIZE_POLICY) do.

  Locally the key covers every file's name, size and modification time. For a URL image_dir it
  covers the names only: a size and time per object would cost a request each.
  """
  local = paths.url_scheme(root) is None
  digest = hashlib.sha256(
      f"{root.resolve() if local else root}|{split}|{image_size}|{resize_policy}".encode())
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


def read_cache(cache: epath.Path, count: int,
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
