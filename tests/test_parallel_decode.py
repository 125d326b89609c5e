"""Image folders decoded by worker processes give what one process gives (pixels, labels, order,
warnings, the undecodable-image error), and the decode cache is never seen half-written."""

from __future__ import annotations

import logging
import os
import sys
import threading

import numpy as np
import pytest

from rwl_jax.configs import common
from rwl_jax.data import image_folder, sources
from rwl_jax.errors import ConfigError
from test_own_images import MODES, write_image

WORKERS_SAID = "worker processes"
WORKER_START_IMAGES = image_folder.WORKER_START_IMAGES  # before small_parts changes it


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
  """Worker processes for folders of a few images (the real minimum would decode them here)."""
  monkeypatch.setattr(image_folder, "WORKER_START_IMAGES", 1)


def mixed_folder(root):
  """Two classes of images of every mode and several sizes (JPEG and PNG)."""
  for label, name in enumerate(("cat", "dog")):
    for index, mode in enumerate(MODES * 2):
      size = ((8, 8), (12, 9), (9, 20), (33, 17))[index % 4]
      suffix = "jpg" if mode == "CMYK" else "png"
      write_image(root / "train" / name / f"{index}.{suffix}", size, mode, label * 100 + index)
  return root


def read_logged(caplog, root, split, workers, cache, start=0, end=None):
  """(the split read with `workers`, what it logged)."""
  caplog.clear()
  with caplog.at_level(logging.INFO):
    source = image_folder.ImageFolderSource(str(root), split, image_size=8, cache_dir=str(cache),
                                            decode_workers=workers)
    read = source.read(start, end)
  return source, read, [r.getMessage() for r in caplog.records]


def assert_same(first, second):
  np.testing.assert_array_equal(first.images, second.images)
  np.testing.assert_array_equal(first.labels, second.labels)
  assert first.class_names == second.class_names


def test_workers_give_what_one_process_gives(tmp_path, caplog, monkeypatch):
  root = mixed_folder(tmp_path / "mixed")
  monkeypatch.setattr(image_folder, "available_cores", lambda: 3)  # decode_workers=0: one per core
  source, alone, said_alone = read_logged(caplog, root, "train", 1, tmp_path / "c1")
  _, pooled, said_pooled = read_logged(caplog, root, "train", 0, tmp_path / "c2")
  assert_same(alone, pooled)
  assert len(alone) == 2 * 2 * len(MODES)
  assert f"decoding {len(alone)} images with 3 {WORKERS_SAID}" in said_pooled
  assert [m for m in said_pooled if WORKERS_SAID not in m] == said_alone
  assert any(": converted 28 of 32 images to RGB (4 1, 4 CMYK, 4 I;16, 4 L, 4 LA, 4 P, 4 RGBA)"
             in m for m in said_alone), said_alone
  # A process's range of the split: only its files are decoded, in their order.
  _, part_alone, _ = read_logged(caplog, root, "train", 1, tmp_path / "c3", 5, 25)
  _, part_pooled, said = read_logged(caplog, root, "train", 4, tmp_path / "c4", 5, 25)
  assert f"decoding 20 images with 4 {WORKERS_SAID}" in said
  assert_same(part_alone, part_pooled)
  np.testing.assert_array_equal(part_pooled.images, alone.images[5:25])
  assert len(source.files) == 32


def test_a_small_folder_is_decoded_in_this_process(tmp_path, caplog, monkeypatch):
  monkeypatch.setattr(image_folder, "WORKER_START_IMAGES", WORKER_START_IMAGES)
  root = mixed_folder(tmp_path / "mixed")
  _, read, said = read_logged(caplog, root, "train", 4, tmp_path / "cache")
  assert len(read) == 32 and not [m for m in said if WORKERS_SAID in m]


def test_workers_on_real_cifar_images(cifar_dir, tmp_path, caplog):
  alone = image_folder.ImageFolderSource(str(cifar_dir), "test", image_size=32,
                                         cache_dir=str(tmp_path / "c1"), decode_workers=1).read()
  with caplog.at_level(logging.INFO):
    pooled = image_folder.ImageFolderSource(str(cifar_dir), "test", image_size=32,
                                            cache_dir=str(tmp_path / "c2"), decode_workers=2).read()
  assert any(f"with 2 {WORKERS_SAID}" in r.getMessage() for r in caplog.records)
  assert_same(alone, pooled)
  assert len(pooled) == 160 and np.bincount(pooled.labels).tolist() == [16] * 10


def test_an_undecodable_image_in_a_workers_part_is_the_same_one_line_error(tmp_path):
  folder = tmp_path / "c" / "train"
  for index in range(10):
    write_image(folder / f"{index}.png", seed=index)
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  (folder / "empty.png").write_bytes(b"")
  errors = []
  for workers in (1, 3):
    with pytest.raises(ConfigError) as raised:
      image_folder.ImageFolderSource(str(tmp_path / "c"), "train", image_size=8,
                                     cache_dir=str(tmp_path / "cache"),
                                     decode_workers=workers).read()
    errors.append(str(raised.value))
  assert errors[0] == errors[1]
  assert "\n" not in errors[0] and "cannot decode image" in errors[0]
  assert "and 1 more of its 12 images" in errors[0]


def test_workers_that_cannot_run_leave_the_decode_to_this_process(tmp_path, caplog, monkeypatch):
  root = mixed_folder(tmp_path / "mixed")
  alone = image_folder.ImageFolderSource(str(root), "train", image_size=8,
                                         cache_dir=str(tmp_path / "c1"), decode_workers=1).read()
  monkeypatch.setattr(sys, "executable", "/bin/false")  # every worker exits with 1
  with caplog.at_level(logging.WARNING):
    fallen_back = image_folder.ImageFolderSource(str(root), "train", image_size=8,
                                                 cache_dir=str(tmp_path / "c2"),
                                                 decode_workers=2).read()
  assert_same(alone, fallen_back)
  assert any("could not decode with 2 worker processes (worker 0 exited with status 1); "
             "decoding in this process" in r.getMessage() for r in caplog.records)


def test_decode_workers_is_checked(tmp_path):
  config = common.get_config()
  config.data.image_dir = str(mixed_folder(tmp_path / "m"))
  config.data.decode_workers = -1  # what the command line lets through (it refuses non-integers)
  said = ("data.decode_workers must be an integer >= 0 (0 = one per core this process may use, "
          "1 = decode in the process itself), got {!r}")
  with pytest.raises(ConfigError) as raised:
    sources.open_dataset(config.data)
  assert str(raised.value) == said.format(-1)
  for bad in (True, 2.0, "4"):  # from Python
    with pytest.raises(ConfigError) as raised:
      image_folder.ImageFolderSource(config.data.image_dir, "train", image_size=8,
                                     decode_workers=bad)
    assert str(raised.value) == said.format(bad)


class Killed(BaseException):
  """What a writer interrupted mid-file sees (a signal turned exception)."""


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), Killed()])
def test_a_cache_write_that_fails_leaves_no_cache(tmp_path, caplog, monkeypatch, failure):
  root = mixed_folder(tmp_path / "mixed")
  cache_dir = tmp_path / "cache"
  savez = np.savez

  def half_then_fail(file, **arrays):
    file.write(b"PK\x03\x04 the first bytes of a cache")
    raise failure

  decoded = []
  decode_images = image_folder.decode_images
  monkeypatch.setattr(image_folder, "decode_images",
                      lambda *a: decoded.append(1) or decode_images(*a))
  monkeypatch.setattr(np, "savez", half_then_fail)
  open_source = lambda: image_folder.ImageFolderSource(str(root), "train", image_size=8,
                                                       cache_dir=str(cache_dir), decode_workers=1)
  if isinstance(failure, OSError):
    with caplog.at_level(logging.WARNING):
      first = open_source().read()  # the images still come back
    assert any("could not write the decode cache" in r.getMessage() and
               "No space left on device" in r.getMessage() for r in caplog.records)
  else:
    with pytest.raises(Killed):
      open_source().read()
  assert os.listdir(cache_dir) == []  # nothing under the final name, no partial file left
  monkeypatch.setattr(np, "savez", savez)
  again = open_source().read()
  assert len(decoded) == 2 and len(os.listdir(cache_dir)) == 1  # decoded again, cached now
  cached = open_source().read()
  assert len(decoded) == 2  # read back from the cache
  assert_same(again, cached)
  if isinstance(failure, OSError):
    assert_same(first, cached)


def test_racing_writers_leave_one_whole_cache(tmp_path, monkeypatch):
  root = mixed_folder(tmp_path / "mixed")
  cache_dir = tmp_path / "cache"
  savez, both_written, both_looked = (np.savez, threading.Barrier(2, timeout=30),
                                      threading.Barrier(2, timeout=30))
  seen_while_writing = []

  def savez_then_wait(file, **arrays):
    savez(file, **arrays)
    both_written.wait()  # both have written their file before either is renamed into place
    seen_while_writing.append(sorted(os.listdir(cache_dir)))
    both_looked.wait()

  monkeypatch.setattr(np, "savez", savez_then_wait)
  reads, failures = [], []

  def read():
    try:
      reads.append(image_folder.ImageFolderSource(str(root), "train", image_size=8,
                                                  cache_dir=str(cache_dir),
                                                  decode_workers=1).read())
    except BaseException as error:  # pylint: disable=broad-except  # reported below
      failures.append(error)

  writers = [threading.Thread(target=read) for _ in range(2)]
  for writer in writers:
    writer.start()
  for writer in writers:
    writer.join()
  assert not failures and len(reads) == 2
  # Each writer has a file of its own, and none is under the final name until it is whole.
  for listing in seen_while_writing:
    assert len(listing) == 2 and all(n.startswith(".") and n.endswith(".partial")
                                     for n in listing), listing
  (cache,) = os.listdir(cache_dir)  # one cache, no partial files
  assert cache.startswith("image_folder_train_") and cache.endswith(".npz")
  monkeypatch.setattr(np, "savez", savez)
  with np.load(cache_dir / cache) as cached:
    np.testing.assert_array_equal(cached["images"], reads[0].images)
    np.testing.assert_array_equal(cached["labels"], reads[0].labels)
