"""Image folders: nothing skipped without a word, and a damaged decode cache costs a re-decode,
not every later run."""

import logging

import numpy as np
import pytest
from PIL import Image

from rwl_jax.data.image_folder import ImageFolderSource
from rwl_jax.errors import ConfigError


def make_folder(root, classes=("cat", "dog"), per_class=3, size=8):
  rng = np.random.default_rng(0)
  for name in classes:
    folder = root / "train" / name
    folder.mkdir(parents=True)
    for index in range(per_class):
      Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
          folder / f"{index}.png")
  return root


def test_a_class_folder_whose_images_sit_in_a_subfolder_is_an_error(tmp_path):
  root = make_folder(tmp_path)
  nested = root / "train" / "bird" / "bird_a"
  nested.mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(nested / "0.png")
  with pytest.raises(ConfigError, match=r"class folder .*train/bird has no images \(.*\) \(it has "
                                        r"bird_a/: images must sit directly in it\)"):
    ImageFolderSource(str(root), "train", image_size=8, cache_dir=str(tmp_path / "cache"))


def test_skipped_entries_are_reported(tmp_path, caplog):
  root = make_folder(tmp_path)
  (root / "train" / "cat" / "notes.txt").write_text("")
  (root / "train" / "cat" / "more").mkdir()
  (root / "train" / "README").write_text("")
  with caplog.at_level(logging.WARNING):
    source = ImageFolderSource(str(root), "train", image_size=8, cache_dir=str(tmp_path / "cache"))
  assert source.num_examples == 6
  said = [record.getMessage() for record in caplog.records]
  # One warning for the whole split, not one per folder.
  assert [m for m in said if "skipped" in m] == [
      f"{root / 'train'}: skipped 3 entries that are not images (.png, .jpg, .jpeg, .bmp, .gif, "
      ".webp, .tif, .tiff) or are nested folders, e.g. README, cat/more/, cat/notes.txt"], said


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 not a zip", "other shape"])
def test_a_damaged_decode_cache_is_set_aside_and_decoded_again(tmp_path, caplog, damage):
  root = make_folder(tmp_path)
  cache_dir = tmp_path / "cache"
  first = ImageFolderSource(str(root), "train", image_size=8, cache_dir=str(cache_dir)).read()
  (cache,) = [p for p in cache_dir.rglob("*.npz")]
  if damage == "other shape":
    np.savez(cache, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(2, np.int32))
  else:
    cache.write_bytes(damage)
  with caplog.at_level(logging.WARNING):
    again = ImageFolderSource(str(root), "train", image_size=8, cache_dir=str(cache_dir)).read()
  np.testing.assert_array_equal(again.images, first.images)
  np.testing.assert_array_equal(again.labels, first.labels)
  assert any("is damaged" in r.getMessage() and "decoding the images again" in r.getMessage()
             for r in caplog.records)
  assert cache.with_name(cache.name + ".damaged").is_file() and cache.is_file()  # rewritten
