"""Your own image folders: the three layouts, held-out evaluation, any size and colour mode, what
is skipped or refused, and runs on unlabelled images (no evaluation, or a labelled eval folder).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_config
from rwl_jax.configs import common
from rwl_jax.data import array_split, image_folder, inputs, order, sources
from rwl_jax.errors import ConfigError

MODES = ("RGB", "L", "P", "RGBA", "CMYK", "I;16", "1", "LA")

def load(config):
  """The config's data as a run reads it (its data section; labels checked for the online probe)."""
  return inputs.load_data(config.data, train_labels=config.eval.online_probe)



def write_image(path, size=(8, 8), mode="RGB", seed=0):
  """A random image of `size` (width, height) in `mode`, saved by its suffix; returns its RGB."""
  rng = np.random.default_rng(seed)
  width, height = size
  rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))
  if mode == "I;16":
    image = Image.fromarray(rng.integers(0, 65536, (height, width), np.uint16))
  elif mode == "P":
    image = rgb.convert("P")
    image.info["transparency"] = 0
  else:
    image = rgb.convert(mode)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)
  return image


def labelled_folder(root, classes=("cat", "dog"), per_class=10, splits=("train",), size=8):
  for split in splits:
    for label, name in enumerate(classes):
      for index in range(per_class):
        write_image(root / split / name / f"{index}.png", (size, size), seed=label * 1000 + index)
  return root


def data_config(image_dir, cache_dir, **data):
  config = common.get_config()
  config.data.image_dir = str(image_dir)
  config.data.cache_dir = str(cache_dir)
  config.data.image_size = 8
  config.data.update(data)
  return config


def test_labelled_with_test_split(tmp_path):
  root = labelled_folder(tmp_path / "a", splits=("train", "test"), per_class=4)
  data = load(data_config(root, tmp_path / "cache"))
  assert data.evaluates and data.class_names == ("cat", "dog")
  assert len(data.train) == len(data.test) == 8 and data.eval_train is data.train


def test_held_out_split_is_class_balanced_and_seeded(tmp_path, caplog):
  root = labelled_folder(tmp_path / "b", classes=("a", "b", "c"), per_class=20)
  write_image(root / "train" / "d" / "only.png", seed=99)  # a class of one image keeps it
  with caplog.at_level(logging.INFO):
    data = load(data_config(root, tmp_path / "cache", holdout_fraction=0.25))
  assert np.bincount(data.test.labels).tolist() == [5, 5, 5]
  assert np.bincount(data.train.labels).tolist() == [15, 15, 15, 1]
  assert any("has no 'test' folder: 15 of its 61 'train' images" in r.getMessage()
             for r in caplog.records)
  # Disjoint, together everything, the same with the same seed and not with another.
  rows = lambda split: {image.tobytes() for image in split.images}
  assert not rows(data.train) & rows(data.test) and len(rows(data.train) | rows(data.test)) == 61
  again = load(data_config(root, tmp_path / "cache", holdout_fraction=0.25))
  assert rows(again.test) == rows(data.test)
  other = load(data_config(root, tmp_path / "cache", holdout_fraction=0.25,
                                       holdout_seed=1))
  assert rows(other.test) != rows(data.test)
  nothing = load(data_config(root, tmp_path / "cache", holdout_fraction=0.0))
  assert not nothing.evaluates and "holds out nothing" in nothing.evaluation_off
  with pytest.raises(ConfigError, match=r"data.holdout_fraction must be in \[0, 1\)"):
    load(data_config(root, tmp_path / "cache", holdout_fraction=1.0))


@pytest.mark.parametrize("layout", ["flat", "train", "train+test"])
def test_unlabelled_layouts(tmp_path, layout):
  root = tmp_path / layout
  folder = root if layout == "flat" else root / "train"
  for index in range(6):
    write_image(folder / f"{index}.jpg", (8, 8), seed=index)
  if layout == "train+test":
    write_image(root / "test" / "t.jpg")
  data = load(data_config(root, tmp_path / "cache"))
  assert len(data.train) == 6 and data.train.class_names == ()
  assert (data.train.labels == array_split.UNLABELLED).all()
  assert data.test is None and not data.evaluates
  assert "have no labels (no class folders) and no data.eval_image_dir" in data.evaluation_off
  config = data_config(root, tmp_path / "cache")
  config.eval.online_probe = True
  with pytest.raises(ConfigError, match="eval.online_probe needs labelled training images"):
    load(config)


def test_unlabelled_training_with_a_labelled_eval_folder(tmp_path):
  for index in range(12):
    write_image(tmp_path / "photos" / f"{index}.png", (10 + index, 9), seed=index)
  labelled = labelled_folder(tmp_path / "labelled", per_class=10)  # no test/: held out
  config = data_config(tmp_path / "photos", tmp_path / "cache", eval_image_dir=str(labelled))
  data = load(config)
  assert len(data.train) == 12 and data.class_names == ("cat", "dog")
  assert len(data.eval_train) == 18 and len(data.test) == 2
  assert set(data.eval_train.labels.tolist()) == {0, 1} and data.eval_train is not data.train
  # A labelled image_dir keeps all its images when evaluation comes from eval_image_dir.
  other = data_config(labelled, tmp_path / "cache", eval_image_dir=str(labelled))
  assert len(load(other).train) == 20
  with pytest.raises(ConfigError, match="data.eval_image_dir .* has no class folders"):
    load(data_config(labelled, tmp_path / "cache",
                                 eval_image_dir=str(tmp_path / "photos")))


def test_mixed_layout_and_no_images_are_one_error_each(tmp_path):
  root = labelled_folder(tmp_path / "mixed", per_class=2)
  write_image(root / "train" / "loose.png")
  with pytest.raises(ConfigError, match=r"train mixes two layouts: 1 images directly in it "
                                        r"\(e.g. loose.png\) and 2 folders of images \(cat, dog\)"):
    load(data_config(root, tmp_path / "cache"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("")
  with pytest.raises(ConfigError, match=r"has no 'train' folder and no images \(.png, .*\) "
                                        "directly in it"):
    load(data_config(tmp_path / "empty", tmp_path / "cache"))
  labelled_folder(tmp_path / "noclasses_root", splits=("pets",), per_class=1)
  with pytest.raises(ConfigError, match=r"no 'train' folder .* \(it has folders pets\)"):
    load(data_config(tmp_path / "noclasses_root", tmp_path / "cache"))
  (tmp_path / "emptytrain" / "train").mkdir(parents=True)
  with pytest.raises(ConfigError, match=r"no images \(.*\) in .*emptytrain/train"):
    load(data_config(tmp_path / "emptytrain", tmp_path / "cache"))


def test_resize_policy(tmp_path):
  """Shorter side to S (bicubic), centre square kept; an image of S x S comes back bit-exact."""
  wide = write_image(tmp_path / "u" / "wide.png", (40, 20), seed=1)
  exact = write_image(tmp_path / "u" / "exact.png", (8, 8), seed=2)
  tall = write_image(tmp_path / "u" / "tall.png", (8, 13), seed=3)
  source = image_folder.ImageFolderSource(str(tmp_path), "u", image_size=8,
                                          cache_dir=str(tmp_path / "cache"))
  split = source.read()
  by_name = {path.name: image for path, image in zip(source.files, split.images)}
  expected = wide.resize((16, 8), Image.Resampling.BICUBIC).crop((4, 0, 12, 8))
  np.testing.assert_array_equal(by_name["wide.png"], np.asarray(expected))
  np.testing.assert_array_equal(by_name["exact.png"], np.asarray(exact))
  np.testing.assert_array_equal(by_name["tall.png"], np.asarray(tall)[2:10])  # crop only
  # The cache is keyed by the size: another size is decoded again, not read back wrong.
  other = image_folder.ImageFolderSource(str(tmp_path), "u", image_size=4,
                                         cache_dir=str(tmp_path / "cache")).read()
  assert other.images.shape == (3, 4, 4, 3)
  assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_modes_are_converted_with_one_counting_warning(tmp_path, caplog):
  folder = tmp_path / "m" / "train"
  for index, mode in enumerate(MODES):
    write_image(folder / f"{index}.{'jpg' if mode == 'CMYK' else 'png'}", (12, 9), mode, index)
  Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(folder / "white16.png")
  Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(folder / "grey16.png")
  (folder / "notes.txt").write_text("not an image")
  (folder / "nested").mkdir()
  write_image(folder / "nested" / "deeper" / "deep.png")  # below the split folder: not searched
  with caplog.at_level(logging.WARNING):
    source = image_folder.ImageFolderSource(str(tmp_path / "m"), "train", image_size=8,
                                            cache_dir=str(tmp_path / "cache"))
    split = source.read()
  said = [r.getMessage() for r in caplog.records]
  assert len(split) == len(MODES) + 2 and split.images.dtype == np.uint8
  assert [m for m in said if "): converted" in m] == [
      f"{folder} ('train' split): converted 9 of 10 images to RGB (1 1, 1 CMYK, 3 I;16, 1 L, "
      "1 LA, 1 P, 1 RGBA)"], said
  assert [m for m in said if ": skipped" in m] == [
      f"{folder}: skipped 2 entries that are not images (.png, .jpg, .jpeg, .bmp, .gif, .webp, "
      ".tif, .tiff) or are nested folders, e.g. nested/, notes.txt"], said
  by_name = {path.name: image for path, image in zip(source.files, split.images)}
  assert (by_name["white16.png"] == 255).all() and (by_name["grey16.png"] == 128).all()


def test_unreadable_images_are_one_error(tmp_path):
  folder = tmp_path / "c" / "train"
  for index in range(3):
    write_image(folder / f"{index}.png", seed=index)
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  (folder / "empty.png").write_bytes(b"")
  with pytest.raises(ConfigError, match=r"cannot decode image (broken.jpg|empty.png) \(.*\) and "
                                        r"1 more of its 5 images .*; delete or move them"):
    load(data_config(tmp_path / "c", tmp_path / "cache"))


def test_sharded_reads_of_a_held_out_split_tile_it(tmp_path):
  """Two processes' ranges of the (held-out) splits are exactly the one-process split."""
  root = labelled_folder(tmp_path / "s", per_class=10)
  config = data_config(root, tmp_path / "cache")
  opened = sources.open_dataset(config.data)
  for source in (opened.train, opened.test):
    whole = source.read()
    shards = [order.DataShards(source.num_examples, 2, p, 2) for p in (0, 1)]
    parts = [source.read(*s.process_range()) for s in shards]
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
    np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), whole.labels)


def mixed_unlabelled_folder(root, count=40):
  """count images of assorted sizes and modes, one text file; returns the non-RGB count."""
  converted = 0
  for index in range(count):
    mode = MODES[index % len(MODES)]
    converted += mode != "RGB"
    size = (24 + 7 * (index % 5), 20 + 11 * (index % 3))
    write_image(root / f"img_{index:03d}.{'jpg' if mode in ('CMYK', 'RGB') else 'png'}", size,
                mode, index)
  (root / "README.txt").write_text("my holiday photos")
  return converted


@pytest.mark.slow
def test_own_unlabelled_folder_end_to_end(tmp_path):
  """docs/own_data.md's first command on arbitrary-size, mixed-mode unlabelled images (host path):
  it trains, says once per split what it converted and skipped and that evaluation is off,
  writes results.json without accuracies; evaluate says why it cannot, then evaluates on a
  labelled folder when given one."""
  converted = mixed_unlabelled_folder(tmp_path / "photos")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  work = tmp_path / "runs" / "mine"
  done = subprocess.run(
      [sys.executable, "-m", "rwl_jax.main", "--config=folder_rwl:smoke",
       f"--config.data.image_dir={tmp_path / 'photos'}", f"--workdir={work}",
       f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.image_size=32",
       "--config.model.encoder=resnet10", "--config.global_batch_size=16",
       "--config.eval.probe_batch_size=16", "--config.num_epochs=1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stderr.splitlines()
  assert [l.split("] ", 1)[-1] for l in lines if "converted" in l] == [
      f"{tmp_path / 'photos'} ('train' split): converted {converted} of 40 images to RGB "
      "(5 1, 5 CMYK, 5 I;16, 5 L, 5 LA, 5 P, 5 RGBA)"]
  assert sum("skipped 1 entries that are not images" in l and "README.txt" in l
             for l in lines) == 1
  assert sum("evaluation is off" in l and "have no labels" in l for l in lines) == 1, lines[-20:]
  results = json.loads((work / "results.json").read_text())
  assert not [k for k in results if k.startswith(("knn", "linear", "online"))], results
  assert results["test_examples"] == 0 and results["train_examples"] == 40
  assert "have no labels" in results["evaluation_off"] and results["steps"] == 2

  done = subprocess.run([sys.executable, "-m", "rwl_jax.evaluate", f"--workdir={work}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert len(errors) == 1 and "has no labelled evaluation data" in errors[0], errors
  assert "--eval_image_dir=PATH" in errors[0]

  from rwl_jax.tools import report  # pylint: disable=g-import-not-at-top
  from rwl_jax.evaluate.run import evaluate_checkpoint  # pylint: disable=g-import-not-at-top
  assert "| mine |" in report.markdown_table([report.load(work)])
  labelled = labelled_folder(tmp_path / "labelled", per_class=12, size=32)
  scores = evaluate_checkpoint(str(work), linear=False, eval_image_dir=str(labelled))
  assert 0.0 <= scores["knn_top1"] <= 1.0


@pytest.mark.slow
def test_unlabelled_training_on_the_device_path_with_an_eval_folder(tmp_path):
  """augment_on=device on unlabelled images, evaluated on a labelled eval_image_dir."""
  from rwl_jax import train  # pylint: disable=g-import-not-at-top

  mixed_unlabelled_folder(tmp_path / "photos", count=32)
  labelled = labelled_folder(tmp_path / "labelled", per_class=12, size=40)
  config = tiny_config(tmp_path / "photos", tmp_path / "cache")
  config.data.augment_on = "device"
  config.data.eval_image_dir = str(labelled)
  config.global_batch_size, config.num_epochs = 16, 1
  config.eval.probe_batch_size, config.eval.linear_epochs = 16, 1
  results = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert results["train_examples"] == 32 and results["test_examples"] == 2
  assert results["eval_train_examples"] == 22 and 0.0 <= results["knn_top1"] <= 1.0
  assert "evaluation_off" not in results
