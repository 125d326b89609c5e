"""Gaussian blur, solarisation and per-view recipes, in both augmentation paths.

The operations against NumPy and PIL references (the same checks for augment_tf and augment_jax,
whose agreement with each other is tests/test_augment_agreement.py), the per-view probabilities
through both pipelines, validation, and the configs' published recipes.
"""

from __future__ import annotations

import json
import os
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from conftest import tiny_config  # noqa: E402
from rwl_jax.run import experiment
from rwl_jax import parallel, train  # noqa: E402
from rwl_jax.configs import (  # noqa: E402
    cifar10_barlow, cifar10_byol, cifar10_byol_gsg, cifar10_rwl, cifar10_simclr, cifar10_vicreg,
    common)
from rwl_jax.data import augment_jax, augment_tf, device_pipeline, pipeline  # noqa: E402
from rwl_jax.data.array_split import ArraySplit  # noqa: E402
from rwl_jax.data.order import DataShards  # noqa: E402
from rwl_jax.data.recipe import (BYOL_IMAGENET, IMAGENET_MEAN, IMAGENET_STD,  # noqa: E402
                                 AugmentRecipe, blur_radius)
from rwl_jax.errors import ConfigError  # noqa: E402

RECIPE = AugmentRecipe()
MEAN = np.asarray(RECIPE.mean, np.float32)
STD = np.asarray(RECIPE.std, np.float32)
PATHS = ("tf", "jax")
# The JAX tests below apply views to [4, 32, 32, 3] batches only, so they compile apply_view once.
BATCH, SIZE = 4, 32
_jax_apply = jax.jit(augment_jax.apply_view, static_argnums=(2, 3))
_jax_sample = jax.jit(augment_jax.sample_view_params, static_argnums=(1, 2, 3, 4))


def _images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _params(batch: int, **overrides) -> dict[str, np.ndarray]:
  """Identity view parameters (whole image, nothing applied), with some fields replaced."""
  values = {
      "crop_box": np.tile(np.asarray([0.0, 0.0, 1.0, 1.0], np.float32), (batch, 1)),
      "flip": np.zeros(batch, bool), "jitter": np.zeros(batch, bool),
      "brightness": np.ones(batch, np.float32), "contrast": np.ones(batch, np.float32),
      "saturation": np.ones(batch, np.float32), "hue": np.zeros(batch, np.float32),
      "jitter_order": np.tile(np.arange(4, dtype=np.int32), (batch, 1)),
      "grayscale": np.zeros(batch, bool), "blur": np.zeros(batch, bool),
      "blur_sigma": np.ones(batch, np.float32), "solarize": np.zeros(batch, bool),
  }
  values.update({k: np.asarray(v) for k, v in overrides.items()})
  return values


def _apply(path: str, images, params, size: int, recipe: AugmentRecipe = RECIPE) -> np.ndarray:
  """The view in [0, 1] (normalisation undone)."""
  if path == "tf":
    out = augment_tf.apply_view(images, {k: tf.constant(v) for k, v in params.items()}, recipe,
                                size).numpy()
  else:
    out = np.asarray(_jax_apply(images, params, recipe, size))
  return out * np.asarray(recipe.std, np.float32) + np.asarray(recipe.mean, np.float32)


def _sample(path: str, seed: int, batch: int, size: int, recipe: AugmentRecipe,
            view: int) -> dict[str, np.ndarray]:
  if path == "tf":
    params = augment_tf.sample_view_params(tf.constant([seed, 0]), batch, (size, size), recipe,
                                           view)
  else:
    params = _jax_sample(jax.random.key(seed), batch, (size, size), recipe, view)
  return {k: np.asarray(v) for k, v in params.items()}


def _np_blur(x: np.ndarray, sigma: float, radius: int) -> np.ndarray:
  """One [H, W, C] image: the full 2-D (not separable) reflect-padded Gaussian convolution."""
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-t**2 / (2.0 * sigma**2))
  k2 = np.outer(k, k) / k.sum()**2
  padded = np.pad(x.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), "reflect")
  h, w = x.shape[:2]
  return sum(k2[a, b] * padded[a:a + h, b:b + w]
             for a in range(2 * radius + 1) for b in range(2 * radius + 1))


# ---------------------------------------------------------------------------------------------
# Gaussian blur.


def test_blur_kernel_is_a_tenth_of_the_view_rounded_to_odd():
  # 2r + 1 taps: BYOL's and SimCLR's 23 at 224 px, 3 at CIFAR's 32 px, none below 20 px.
  assert [2 * blur_radius(s) + 1 for s in (224, 96, 64, 32, 20, 19)] == [23, 9, 7, 3, 3, 1]


# 3 taps at 32 px; 9 at 96 px (the JAX side at 96 px is compared with this one in
# tests/test_augment_agreement.py).
@pytest.mark.parametrize("path, size", [("tf", SIZE), ("tf", 96), ("jax", SIZE)])
def test_blur_matches_numpy_reference(path, size):
  images = _images(BATCH, size, seed=size)
  sigma = np.asarray([0.3, 0.8, 1.5, 2.0], np.float32)
  out = _apply(path, images, _params(BATCH, blur=np.ones(BATCH, bool), blur_sigma=sigma), size)
  x = images / 255.0
  for k in range(BATCH):
    expected = _np_blur(x[k], float(sigma[k]), blur_radius(size))
    np.testing.assert_allclose(out[k], expected, atol=1e-5, err_msg=f"image {k}")
    if sigma[k] >= 0.8:  # Noise: the blur visibly changes it (sigma 0.3 barely does).
      assert np.abs(expected - x[k]).mean() > 0.02


@pytest.mark.parametrize("path", PATHS)
def test_blur_with_sigma_near_zero_is_the_identity(path):
  images = _images(BATCH, SIZE, seed=1)
  out = _apply(path, images, _params(BATCH, blur=np.ones(BATCH, bool),
                                     blur_sigma=np.full(BATCH, 1e-3, np.float32)), SIZE)
  np.testing.assert_allclose(out, images / 255.0, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_blur_keeps_a_constant_image_constant(path):
  """Reflect padding: the kernel sums to 1 at the border too, so the mean is kept everywhere
  (zero padding would dim the border pixels to (1 - k_r) of their value, ~0.7 at sigma 2)."""
  colour = np.asarray([200, 37, 91], np.uint8)
  images = np.broadcast_to(colour, (BATCH, SIZE, SIZE, 3)).copy()
  out = _apply(path, images, _params(BATCH, blur=np.ones(BATCH, bool),
                                     blur_sigma=np.asarray([0.2, 0.7, 1.3, 2.0], np.float32)), SIZE)
  np.testing.assert_allclose(out, np.broadcast_to(colour / 255.0, out.shape), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Solarisation.


@pytest.mark.parametrize("path", PATHS)
def test_solarize_matches_pil(path):
  """x -> 1 - x where x >= 0.5 is PIL's ImageOps.solarize(threshold=128) on uint8 images."""
  image_ops = pytest.importorskip("PIL.ImageOps")
  image_module = pytest.importorskip("PIL.Image")
  images = _images(BATCH, SIZE, seed=2)
  images[0, 0, :4, 0] = (127, 128, 0, 255)  # Both sides of the threshold and the ends.
  out = _apply(path, images, _params(BATCH, solarize=np.asarray([True, False, True, True])), SIZE)
  for k in range(BATCH):
    expected = np.asarray(image_ops.solarize(image_module.fromarray(images[k]), threshold=128))
    if k == 1:
      expected = images[k]
    np.testing.assert_allclose(out[k] * 255.0, expected, atol=1e-3, err_msg=f"image {k}")
  assert (out[0] * 255.0 > 127.5 + 1e-3).sum() == 0 and (images[0] >= 128).any()


@pytest.mark.parametrize("path", PATHS)
def test_order_is_grayscale_then_blur_then_solarize(path):
  images = _images(BATCH, SIZE, seed=3)
  sigma = np.asarray([1.0, 1.8, 0.6, 1.2], np.float32)
  on = np.ones(BATCH, bool)
  out = _apply(path, images, _params(BATCH, grayscale=on, blur=on, blur_sigma=sigma, solarize=on),
               SIZE)
  gray = (images / 255.0) @ np.asarray([0.299, 0.587, 0.114])
  for k in range(BATCH):
    blurred = _np_blur(np.repeat(gray[k][..., None], 3, -1), float(sigma[k]), 1)
    expected = np.where(blurred >= 0.5, 1.0 - blurred, blurred)
    np.testing.assert_allclose(out[k], expected, atol=1e-5)
    # Solarising before blurring gives a different image, so the order is tested.
    solarized = np.where(gray[k] >= 0.5, 1.0 - gray[k], gray[k])
    other = _np_blur(np.repeat(solarized[..., None], 3, -1), float(sigma[k]), 1)
    assert np.abs(other - expected).max() > 0.05


# ---------------------------------------------------------------------------------------------
# Per-view probabilities.

ASYMMETRIC = AugmentRecipe(blur_prob=(1.0, 0.0), solarize_prob=(0.0, 1.0))


@pytest.mark.parametrize("path", PATHS)
def test_per_view_probabilities_are_honoured_and_change_no_other_draw(path):
  """View 0 always blurred and never solarised, view 1 the reverse. And what keeps every recipe
  without blur or solarisation bit-identical to before they existed: the other parameters'
  draws depend neither on the new fields nor on the view index, and images with blur and
  solarize False pass through those steps bit-exactly."""
  base = _sample(path, 4, 64, SIZE, RECIPE, 0)
  first, second = (_sample(path, 4, 64, SIZE, ASYMMETRIC, view) for view in (0, 1))
  assert not base["blur"].any() and not base["solarize"].any()
  assert first["blur"].all() and not first["solarize"].any()
  assert not second["blur"].any() and second["solarize"].all()
  np.testing.assert_array_equal(first["blur_sigma"], second["blur_sigma"])
  for name in base:
    if name not in ("blur", "blur_sigma", "solarize"):
      for params in (first, second):
        np.testing.assert_array_equal(params[name], base[name], err_msg=name)

  images = _images(BATCH, SIZE, seed=5)
  base = {name: value[:BATCH] for name, value in base.items()}
  plain = _apply(path, images, base, SIZE)
  other_sigma = dict(base, blur_sigma=3.0 * base["blur_sigma"])
  np.testing.assert_array_equal(plain, _apply(path, images, other_sigma, SIZE))
  # With the flags set the same sigmas do change the views.
  blurred = _apply(path, images, dict(base, blur=np.ones(BATCH, bool)), SIZE)
  assert np.abs(blurred - plain).mean() > 0.01


def test_views_alternate_first_and_second():
  assert [ASYMMETRIC.view_probabilities(v) for v in range(4)] == [(1.0, 0.0), (0.0, 1.0)] * 2
  with pytest.raises(ValueError, match="view must be an integer >= 0"):
    ASYMMETRIC.view_probabilities(-1)


def _max_per_image(views: np.ndarray, recipe: AugmentRecipe) -> np.ndarray:
  return (views * np.asarray(recipe.std) + np.asarray(recipe.mean)).max(axis=(1, 2, 3))


@pytest.mark.slow  # ~11 s on 2 cores: tf.data start-up and the device views' compilation.
def test_both_pipelines_pass_the_view_index():
  """Second views only are solarised (so no pixel is above 0.5), in tf.data and on the device."""
  # No jitter or grayscale, so every first view of the noise images keeps bright pixels.
  recipe = AugmentRecipe(jitter_prob=0.0, grayscale_prob=0.0, solarize_prob=(0.0, 1.0))
  images = _images(32, 32, seed=6)
  host = next(pipeline.train_batches(
      ArraySplit(images, np.zeros(32, np.int32), ("a",)), shards=DataShards(32),
      global_batch_size=16, recipe=recipe, seed=0, first_step=0, last_step=1))
  mesh = parallel.make_mesh(jax.devices()[:1])
  # The train step is the identity on its inputs: the views come back as the device made them.
  step = device_pipeline.with_device_views(lambda state, inputs: inputs, recipe, seed=0,
                                           image_size=32, mesh=mesh)
  views_at_step_0 = jax.jit(lambda data, rows: step(types.SimpleNamespace(step=jnp.int32(0)),
                                                    data, rows))
  device = views_at_step_0(device_pipeline.put_dataset(images, mesh),
                           parallel.to_global(np.arange(16, dtype=np.int32), mesh))
  for views in (host, device):
    assert (_max_per_image(np.asarray(views["view2"]), recipe) <= 0.5 + 1e-5).all()
    assert (_max_per_image(np.asarray(views["view1"]), recipe) > 0.7).all()


# ---------------------------------------------------------------------------------------------
# Validation and the configs' recipes.


@pytest.mark.parametrize("fields, message", [
    (dict(blur_prob=(1.2, 0.0)), r"augment.blur_prob must be a pair of probabilities in \[0, 1\]"),
    (dict(solarize_prob=(0.2,)), r"augment.solarize_prob must be a pair of probabilities"),
    (dict(solarize_prob=0.2), r"augment.solarize_prob must be a pair of probabilities"),
    (dict(blur_sigma=(0.0, 2.0)), r"augment.blur_sigma must satisfy 0 < low <= high"),
    (dict(blur_sigma=(2.0, 1.0)), r"augment.blur_sigma must satisfy 0 < low <= high"),
    (dict(blur_sigma=(1.0,)), r"augment.blur_sigma must be a pair \(low, high\)"),
])
def test_bad_values_are_one_line_config_errors(fields, message):
  with pytest.raises(ConfigError, match=message) as error:
    AugmentRecipe.from_config(dict(RECIPE.as_config(), **fields))
  assert "\n" not in str(error.value)


def test_a_number_for_a_per_view_pair_is_refused_before_training():
  """As a config file or a config.json could hold it (a ConfigDict refuses the assignment)."""
  config = common.get_config()
  config.augment = ml_collections.ConfigDict(dict(config.augment.to_dict(), blur_prob=0.5))
  with pytest.raises(ConfigError, match=r"augment.blur_prob must be a tuple of numbers"):
    experiment.validate_config(config)
  # A config.json holds lists.
  config.augment = ml_collections.ConfigDict(dict(config.augment.to_dict(), blur_prob=[1.0, 0.1]))
  experiment.validate_config(config)
  assert AugmentRecipe.from_config(config.augment).blur_prob == (1.0, 0.1)


SOLO_LEARN_ASYMMETRIC = AugmentRecipe(crop_scale=(0.08, 1.0), saturation=0.2,
                                      solarize_prob=(0.0, 0.2))


@pytest.mark.parametrize("module, expected", [
    # solo-learn scripts/pretrain/cifar/augmentations/asymmetric.yaml (BYOL, Barlow Twins).
    (cifar10_byol, SOLO_LEARN_ASYMMETRIC),
    (cifar10_byol_gsg, SOLO_LEARN_ASYMMETRIC),
    (cifar10_barlow, SOLO_LEARN_ASYMMETRIC),
    # scripts/pretrain/cifar/vicreg.yaml's own augmentations: symmetric, solarisation 0.1.
    (cifar10_vicreg, AugmentRecipe(saturation=0.2, solarize_prob=(0.1, 0.1))),
    # The RWL reference recipe, unchanged.
    (cifar10_rwl, RECIPE),
    (cifar10_simclr, RECIPE),
])
def test_config_recipes(module, expected):
  assert AugmentRecipe.from_config(module.get_config().augment) == expected
  assert AugmentRecipe.from_config(module.get_config("smoke").augment) == expected


def test_byol_imagenet_recipe():
  assert (BYOL_IMAGENET.blur_prob, BYOL_IMAGENET.solarize_prob) == ((1.0, 0.1), (0.0, 0.2))
  assert (BYOL_IMAGENET.brightness, BYOL_IMAGENET.contrast, BYOL_IMAGENET.saturation,
          BYOL_IMAGENET.hue, BYOL_IMAGENET.jitter_prob) == (0.4, 0.4, 0.2, 0.1, 0.8)
  assert BYOL_IMAGENET.grayscale_prob == 0.2 and BYOL_IMAGENET.crop_scale == (0.08, 1.0)
  assert (BYOL_IMAGENET.mean, BYOL_IMAGENET.std) == (IMAGENET_MEAN, IMAGENET_STD)
  assert BYOL_IMAGENET == AugmentRecipe.from_config(BYOL_IMAGENET.as_config())
  assert 2 * blur_radius(224) + 1 == 23


# ---------------------------------------------------------------------------------------------
# Training with the BYOL config's recipe on both paths.


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_byol_recipe_trains_on_both_paths(augment_on, cifar_dir, tmp_path):
  """The BYOL config's views, plus BYOL's ImageNet blur probabilities (1.0, 0.1) so the compiled
  step contains the blur too (solo-learn's CIFAR recipe has none), train for 3 steps."""
  config = tiny_config(cifar_dir, tmp_path / "cache", method="byol")
  config.augment = cifar10_byol.get_config().augment
  config.augment.blur_prob = BYOL_IMAGENET.blur_prob
  config.data.augment_on = augment_on
  config.num_epochs = 1
  config.data.max_train_examples = 96  # 3 steps of 32
  config.model.width = 4
  config.eval.linear_epochs = 1
  config.log_every_steps = 1
  workdir = tmp_path / "work"
  results = train.train_and_evaluate(config, str(workdir))
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [line["loss"] for line in lines if "loss" in line]
  assert len(losses) == 3 and np.isfinite(losses).all(), losses
  assert results["steps"] == 3
  saved = json.loads((workdir / "config.json").read_text())["augment"]
  assert saved["solarize_prob"] == [0.0, 0.2] and saved["blur_prob"] == [1.0, 0.1]
