"""Tests for the tf.data two-view augmentation against independent NumPy/PIL references."""

from __future__ import annotations

import colorsys
import math
import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from rwl_jax.data.augment_tf import apply_view, random_view, sample_view_params  # noqa: E402
from rwl_jax.data.recipe import AugmentRecipe  # noqa: E402

RECIPE = AugmentRecipe()
MEAN = np.asarray(RECIPE.mean, np.float32)
STD = np.asarray(RECIPE.std, np.float32)
LUMA = np.asarray([0.299, 0.587, 0.114])
N_DRAWS = 20_000
SIZE = 32


def _images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _denormalise(out) -> np.ndarray:
  return np.asarray(out) * STD + MEAN


def _within_sigmas(rate: float, p: float, n: int, sigmas: float = 4.0) -> bool:
  return abs(rate - p) <= sigmas * math.sqrt(p * (1.0 - p) / n)


def _numpy_params(params) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in params.items()}


@pytest.fixture(scope="module")
def draws() -> dict[str, np.ndarray]:
  """Parameters of N_DRAWS views of 32x32 images under the default recipe."""
  return _numpy_params(sample_view_params(tf.constant([3, 14]), N_DRAWS, (SIZE, SIZE), RECIPE))


# ---------------------------------------------------------------------------------------------
# Independent reference of torchvision's RandomResizedCrop.get_params, one image at a time.


def _torchvision_crops(n: int, height: int, width: int, scale, ratio, seed: int = 0) -> np.ndarray:
  """Returns (i, j, h, w) rows, following torchvision's loop literally."""
  rng = random.Random(seed)
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  crops = np.empty((n, 4), np.int64)
  for k in range(n):
    for _ in range(10):
      target_area = area * rng.uniform(scale[0], scale[1])
      aspect = math.exp(rng.uniform(log_lo, log_hi))
      w = int(round(math.sqrt(target_area * aspect)))
      h = int(round(math.sqrt(target_area / aspect)))
      if 0 < w <= width and 0 < h <= height:
        crops[k] = (rng.randint(0, height - h), rng.randint(0, width - w), h, w)
        break
    else:
      in_ratio = width / height
      if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
      elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
      else:
        w, h = width, height
      crops[k] = ((height - h) // 2, (width - w) // 2, h, w)
  return crops


def _pixel_crops(params: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
  """Integer (i, j, h, w) from the documented box convention (edges normalised by H, W)."""
  box = params["crop_box"].astype(np.float64) * [height, width, height, width]
  edges = np.round(box).astype(np.int64)
  np.testing.assert_allclose(box, edges, atol=1e-4)  # The box lies on the pixel grid.
  i, j, y_max, x_max = edges.T
  return np.stack([i, j, y_max - i, x_max - j], axis=1)


def _assert_means_agree(ours: np.ndarray, reference: np.ndarray, sigmas: float = 4.0):
  se = math.sqrt(ours.var() / ours.size + reference.var() / reference.size)
  assert abs(ours.mean() - reference.mean()) <= sigmas * se + 1e-12, (ours.mean(),
                                                                      reference.mean(), se)


# ---------------------------------------------------------------------------------------------
# Whole views.


def test_random_view_shape_dtype_and_range():
  out = random_view(_images(8, SIZE, SIZE), tf.constant([1, 2]), RECIPE, 24)
  assert out.shape == (8, 24, 24, 3)
  assert out.dtype == tf.float32
  x = _denormalise(out)
  assert x.min() >= -1e-5 and x.max() <= 1.0 + 1e-5
  assert x.std() > 0.05  # Not a constant image.


def test_random_view_is_a_function_of_the_seed():
  images = _images(8, SIZE, SIZE)
  a = random_view(images, tf.constant([5, 6]), RECIPE, SIZE).numpy()
  b = random_view(images, tf.constant([5, 6]), RECIPE, SIZE).numpy()
  c = random_view(images, tf.constant([5, 7]), RECIPE, SIZE).numpy()
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).mean() > 0.1


def test_random_view_in_tf_data_pipeline():
  images = _images(20, SIZE, SIZE)
  seed = tf.constant([9, 9], tf.int64)
  ds = tf.data.Dataset.from_tensor_slices(images).batch(8).map(
      lambda x: random_view(x, seed, RECIPE, SIZE))
  batches = list(ds.as_numpy_iterator())
  assert [b.shape for b in batches] == [(8, SIZE, SIZE, 3), (8, SIZE, SIZE, 3), (4, SIZE, SIZE, 3)]
  assert all(b.dtype == np.float32 for b in batches)
  # Graph mode inside tf.data computes the same view as eager mode.
  np.testing.assert_allclose(batches[0], random_view(images[:8], seed, RECIPE, SIZE).numpy(),
                             atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Parameter laws.


def test_param_shapes_and_dtypes(draws):
  n = N_DRAWS
  expected = {
      "crop_box": (np.float32, (n, 4)), "crop_area_fraction": (np.float32, (n,)),
      "crop_aspect_ratio": (np.float32, (n,)), "flip": (np.bool_, (n,)),
      "jitter": (np.bool_, (n,)), "brightness": (np.float32, (n,)),
      "contrast": (np.float32, (n,)), "saturation": (np.float32, (n,)),
      "hue": (np.float32, (n,)), "jitter_order": (np.int32, (n, 4)),
      "grayscale": (np.bool_, (n,)), "blur": (np.bool_, (n,)),
      "blur_sigma": (np.float32, (n,)), "solarize": (np.bool_, (n,)),
  }
  assert set(draws) == set(expected)
  for name, (dtype, shape) in expected.items():
    assert draws[name].dtype == dtype, name
    assert draws[name].shape == shape, name


def test_crop_box_consistent_with_area_and_aspect(draws):
  i, j, h, w = _pixel_crops(draws, SIZE, SIZE).T
  assert (i >= 0).all() and (j >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (i + h <= SIZE).all() and (j + w <= SIZE).all()
  np.testing.assert_allclose(draws["crop_area_fraction"], h * w / SIZE**2, rtol=1e-6)
  np.testing.assert_allclose(draws["crop_aspect_ratio"], w / h, rtol=1e-6)


def test_crop_area_and_aspect_within_recipe_up_to_rounding(draws):
  area = draws["crop_area_fraction"]
  assert area.min() >= RECIPE.crop_scale[0] - 0.02 and area.max() <= 1.0
  # Exact version: some real (w, h) within half a pixel of the integer crop meets the recipe.
  _, _, h, w = _pixel_crops(draws, SIZE, SIZE).T.astype(np.float64)
  scale_lo, scale_hi = RECIPE.crop_scale
  ratio_lo, ratio_hi = RECIPE.crop_ratio
  assert ((w - 0.5) * (h - 0.5) <= scale_hi * SIZE**2 + 1e-9).all()
  assert ((w + 0.5) * (h + 0.5) >= scale_lo * SIZE**2 - 1e-9).all()
  assert ((w - 0.5) / (h + 0.5) <= ratio_hi + 1e-9).all()
  assert ((w + 0.5) / (h - 0.5) >= ratio_lo - 1e-9).all()
  aspect = draws["crop_aspect_ratio"]
  assert aspect.min() >= ratio_lo * 0.9 and aspect.max() <= ratio_hi / 0.9


def test_crop_law_matches_torchvision_simulation(draws):
  reference = _torchvision_crops(50_000, SIZE, SIZE, RECIPE.crop_scale, RECIPE.crop_ratio)
  ref_area = reference[:, 2] * reference[:, 3] / SIZE**2
  _assert_means_agree(draws["crop_area_fraction"].astype(np.float64), ref_area)
  ref_log_aspect = np.log(reference[:, 3] / reference[:, 2])
  _assert_means_agree(np.abs(np.log(draws["crop_aspect_ratio"].astype(np.float64))),
                      np.abs(ref_log_aspect))
  # Full-image crops (where rejection and rounding pile up) occur at the reference rate.
  full = (draws["crop_area_fraction"] == 1.0).mean()
  assert _within_sigmas(full, (ref_area == 1.0).mean(), N_DRAWS, 5.0)


def test_crop_log_aspect_is_symmetric(draws):
  log_aspect = np.log(draws["crop_aspect_ratio"].astype(np.float64))
  assert abs(log_aspect.mean()) <= 4.0 * log_aspect.std() / math.sqrt(log_aspect.size)
  assert _within_sigmas((log_aspect > 0).mean(), (log_aspect < 0).mean(), N_DRAWS)


def test_crop_corner_is_uniform(draws):
  i, j, h, w = _pixel_crops(draws, SIZE, SIZE).T
  for start, free in ((i, SIZE - h), (j, SIZE - w)):
    movable = free >= 1
    position = start[movable] / free[movable]
    # randint[0, free] inclusive: mean 1/2, and both extremes are reached.
    assert abs(position.mean() - 0.5) <= 4.0 * position.std() / math.sqrt(position.size)
    assert (position == 0).any() and (position == 1).any()


def test_crop_law_non_square_image():
  height, width, n = 24, 40, 10_000
  params = _numpy_params(sample_view_params(tf.constant([0, 1]), n, (height, width), RECIPE))
  i, j, h, w = _pixel_crops(params, height, width).T
  assert (i + h <= height).all() and (j + w <= width).all()
  reference = _torchvision_crops(30_000, height, width, RECIPE.crop_scale, RECIPE.crop_ratio)
  _assert_means_agree((h * w / (height * width)).astype(np.float64),
                      reference[:, 2] * reference[:, 3] / (height * width))
  _assert_means_agree(h.astype(np.float64), reference[:, 2].astype(np.float64))
  _assert_means_agree(w.astype(np.float64), reference[:, 3].astype(np.float64))


def test_crop_scale_range_is_respected():
  narrow = AugmentRecipe(crop_scale=(0.5, 0.5))
  params = _numpy_params(sample_view_params(tf.constant([4, 4]), 5_000, (SIZE, SIZE), narrow))
  area = params["crop_area_fraction"]
  _, _, h, w = _pixel_crops(params, SIZE, SIZE).T.astype(np.float64)
  assert ((w - 0.5) * (h - 0.5) <= 0.5 * SIZE**2).all()
  assert ((w + 0.5) * (h + 0.5) >= 0.5 * SIZE**2).all()
  assert area.std() < 0.03
  reference = _torchvision_crops(20_000, SIZE, SIZE, (0.5, 0.5), narrow.crop_ratio)
  _assert_means_agree(area.astype(np.float64), reference[:, 2] * reference[:, 3] / SIZE**2)

  wide = _numpy_params(sample_view_params(tf.constant([4, 4]), 5_000, (SIZE, SIZE), RECIPE))
  wide_area = wide["crop_area_fraction"]
  assert wide_area.std() > 0.15
  assert (wide_area < 0.4).mean() > 0.15 and (wide_area > 0.7).mean() > 0.15


def test_crop_fallback_is_torchvision_central_crop():
  # No attempt can fit: every w = sqrt(1024 * r) > 32. torchvision falls back to the central
  # crop clamped to the smallest ratio: w = 32, h = round(32 / 2) = 16, i = 8, j = 0.
  recipe = AugmentRecipe(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))
  params = _numpy_params(sample_view_params(tf.constant([0, 0]), 100, (SIZE, SIZE), recipe))
  assert (_torchvision_crops(5, SIZE, SIZE, (1.0, 1.0), (2.0, 3.0)) == [8, 0, 16, 32]).all()
  assert (_pixel_crops(params, SIZE, SIZE) == [8, 0, 16, 32]).all()
  np.testing.assert_allclose(params["crop_area_fraction"], 0.5)
  np.testing.assert_allclose(params["crop_aspect_ratio"], 2.0)


def test_event_rates(draws):
  for name, p in (("flip", RECIPE.flip_prob), ("jitter", RECIPE.jitter_prob),
                  ("grayscale", RECIPE.grayscale_prob)):
    assert _within_sigmas(draws[name].mean(), p, N_DRAWS), (name, draws[name].mean(), p)
  # Each event has its own stream: joint rates are the products.
  for a, b in (("flip", "jitter"), ("flip", "grayscale"), ("jitter", "grayscale")):
    p = draws[a].mean() * draws[b].mean()
    assert _within_sigmas((draws[a] & draws[b]).mean(), p, N_DRAWS), (a, b)


def test_event_rates_follow_recipe():
  recipe = AugmentRecipe(flip_prob=0.0, jitter_prob=1.0, grayscale_prob=0.7)
  params = _numpy_params(sample_view_params(tf.constant([8, 1]), 5_000, (SIZE, SIZE), recipe))
  assert not params["flip"].any()
  assert params["jitter"].all()
  assert _within_sigmas(params["grayscale"].mean(), 0.7, 5_000)


def test_jitter_factor_ranges(draws):
  for name, x in (("brightness", RECIPE.brightness), ("contrast", RECIPE.contrast),
                  ("saturation", RECIPE.saturation), ("hue", RECIPE.hue)):
    centre = 0.0 if name == "hue" else 1.0
    values = draws[name].astype(np.float64)
    assert values.min() >= centre - x - 1e-6 and values.max() <= centre + x + 1e-6, name
    # Uniform over the whole range: the ends are reached and the spread is (2x)^2 / 12.
    assert values.min() < centre - 0.98 * x and values.max() > centre + 0.98 * x, name
    assert abs(values.mean() - centre) <= 4.0 * x / math.sqrt(3.0 * N_DRAWS), name
    np.testing.assert_allclose(values.std(), 2.0 * x / math.sqrt(12.0), rtol=0.03)
  assert abs(np.corrcoef(draws["brightness"], draws["contrast"])[0, 1]) < 4.0 / math.sqrt(N_DRAWS)


def test_jitter_order_is_uniform_permutation(draws):
  order = draws["jitter_order"]
  np.testing.assert_array_equal(np.sort(order, axis=1), np.tile(np.arange(4), (N_DRAWS, 1)))
  for position in range(4):
    counts = np.bincount(order[:, position], minlength=4)
    for count in counts:
      assert _within_sigmas(count / N_DRAWS, 0.25, N_DRAWS), (position, counts)
  # All 24 orders appear about equally often.
  codes = order @ np.array([64, 16, 4, 1])
  _, counts = np.unique(codes, return_counts=True)
  assert counts.size == 24
  assert all(_within_sigmas(c / N_DRAWS, 1 / 24, N_DRAWS) for c in counts)


# ---------------------------------------------------------------------------------------------
# Operations against NumPy references, with hand-built parameters.


def _params(batch: int, **overrides) -> dict[str, tf.Tensor]:
  """Identity view parameters (whole image, nothing applied), with some fields replaced."""
  values = {
      "crop_box": np.tile(np.asarray([0.0, 0.0, 1.0, 1.0], np.float32), (batch, 1)),
      "flip": np.zeros(batch, bool),
      "jitter": np.zeros(batch, bool),
      "brightness": np.ones(batch, np.float32),
      "contrast": np.ones(batch, np.float32),
      "saturation": np.ones(batch, np.float32),
      "hue": np.zeros(batch, np.float32),
      "jitter_order": np.tile(np.arange(4, dtype=np.int32), (batch, 1)),
      "grayscale": np.zeros(batch, bool),
      "blur": np.zeros(batch, bool),
      "blur_sigma": np.ones(batch, np.float32),
      "solarize": np.zeros(batch, bool),
  }
  values.update(overrides)
  return {k: tf.constant(v) for k, v in values.items()}


def _np_gray(x: np.ndarray) -> np.ndarray:
  return (x @ LUMA)[..., None]


def _np_brightness(x, b):
  return np.clip(x * b, 0.0, 1.0)


def _np_contrast(x, c):
  return np.clip(c * x + (1.0 - c) * _np_gray(x).mean(), 0.0, 1.0)


def _np_saturation(x, s):
  return np.clip(s * x + (1.0 - s) * _np_gray(x), 0.0, 1.0)


def _np_hue(x, shift):
  flat = x.reshape(-1, 3)
  out = np.empty_like(flat)
  for k, (r, g, b) in enumerate(flat):
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    out[k] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
  return out.reshape(x.shape)


def _np_jitter(x, order, b, c, s, h):
  ops = (lambda y: _np_brightness(y, b), lambda y: _np_contrast(y, c),
         lambda y: _np_saturation(y, s), lambda y: _np_hue(y, h))
  for op in order:
    x = ops[op](x)
  return x


def test_identity_params_reproduce_normalised_input():
  images = _images(4, 12, 12, seed=1)
  out = apply_view(images, _params(4), RECIPE, 12).numpy()
  np.testing.assert_allclose(out, (images / 255.0 - MEAN) / STD, atol=1e-4)


def test_flip_only_mirrors():
  images = _images(4, 12, 12, seed=2)
  out = apply_view(images, _params(4, flip=np.array([True, False, True, False])), RECIPE, 12)
  expected = images / 255.0
  expected[[0, 2]] = expected[[0, 2], :, ::-1]
  np.testing.assert_allclose(_denormalise(out), expected, atol=1e-5)


def test_crop_resize_matches_pil_bilinear():
  """A crop upsampled to the output equals PIL's bilinear resize (torchvision's CIFAR path)."""
  image_module = pytest.importorskip("PIL.Image")
  images = _images(2, 16, 16, seed=3)
  # Pixel crops (i, j, h, w), in the documented normalised-edge box convention.
  crops = [(2, 3, 5, 6), (0, 9, 16, 7)]
  box = np.asarray([[i / 16, j / 16, (i + h) / 16, (j + w) / 16] for i, j, h, w in crops],
                   np.float32)
  out = _denormalise(apply_view(images, _params(2, crop_box=box), RECIPE, 20))
  for k, (i, j, h, w) in enumerate(crops):
    crop = images[k, i:i + h, j:j + w].astype(np.float32) / 255.0
    for channel in range(3):
      resized = image_module.fromarray(np.ascontiguousarray(crop[..., channel])).resize(
          (20, 20), image_module.Resampling.BILINEAR)
      np.testing.assert_allclose(out[k, ..., channel], np.asarray(resized), atol=1e-4)


def test_flip_of_a_crop_mirrors_the_resized_crop():
  """Flip after the resize, as torchvision: the view of a crop equals PIL's resize, mirrored."""
  image_module = pytest.importorskip("PIL.Image")
  images = _images(2, 16, 16, seed=12)
  box = np.asarray([[2 / 16, 3 / 16, 7 / 16, 9 / 16], [0.0, 0.25, 1.0, 0.6875]], np.float32)
  flipped = _denormalise(apply_view(images, _params(2, crop_box=box, flip=np.ones(2, bool)),
                                    RECIPE, 20))
  for k, (y0, x0, y1, x1) in enumerate(np.round(box * 16).astype(int)):
    crop = images[k, y0:y1, x0:x1].astype(np.float32) / 255.0
    for channel in range(3):
      resized = image_module.fromarray(np.ascontiguousarray(crop[..., channel])).resize(
          (20, 20), image_module.Resampling.BILINEAR)
      np.testing.assert_allclose(flipped[k, ..., channel], np.asarray(resized)[:, ::-1], atol=1e-4)


def test_sampled_crop_box_convention_matches_apply_view():
  """Boxes from sample_view_params select the pixels apply_view resizes."""
  image_module = pytest.importorskip("PIL.Image")
  images = _images(6, SIZE, SIZE, seed=4)
  sampled = _numpy_params(sample_view_params(tf.constant([2, 7]), 6, (SIZE, SIZE), RECIPE))
  out = _denormalise(apply_view(images, _params(6, crop_box=sampled["crop_box"]), RECIPE, SIZE))
  for k, (i, j, h, w) in enumerate(_pixel_crops(sampled, SIZE, SIZE)):
    crop = images[k, i:i + h, j:j + w].astype(np.float32) / 255.0
    for channel in range(3):
      resized = image_module.fromarray(np.ascontiguousarray(crop[..., channel])).resize(
          (SIZE, SIZE), image_module.Resampling.BILINEAR)
      np.testing.assert_allclose(out[k, ..., channel], np.asarray(resized), atol=1e-4)


@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_single_jitter_op_matches_numpy(op):
  images = _images(3, 8, 8, seed=5 + op)
  x = images / 255.0
  factors = np.asarray([0.6, 1.25, 1.4], np.float32)
  shifts = np.asarray([-0.1, 0.04, 0.1], np.float32)
  name = ("brightness", "contrast", "saturation", "hue")[op]
  value = shifts if op == 3 else factors
  order = np.tile(np.roll(np.arange(4, dtype=np.int32), -op), (3, 1))  # op first
  out = apply_view(images, _params(3, jitter=np.ones(3, bool), jitter_order=order,
                                   **{name: value}), RECIPE, 8)
  reference = (_np_brightness, _np_contrast, _np_saturation, _np_hue)[op]
  expected = np.stack([reference(x[k], value[k]) for k in range(3)])
  np.testing.assert_allclose(_denormalise(out), expected, atol=1e-4)
  assert np.abs(expected - x).max() > 0.05  # The op changed the image, so the test has teeth.


def test_jitter_with_per_image_order_matches_numpy():
  batch = 6
  images = _images(batch, 8, 8, seed=9)
  x = images / 255.0
  orders = np.asarray([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1], [3, 0, 1, 2],
                       [0, 1, 2, 3]], np.int32)
  b = np.asarray([1.4, 0.6, 1.3, 1.35, 0.7, 1.4], np.float32)
  c = np.asarray([0.6, 1.4, 1.3, 0.65, 1.35, 0.6], np.float32)
  s = np.asarray([1.4, 1.3, 0.6, 1.4, 0.7, 1.4], np.float32)
  h = np.asarray([0.1, -0.08, 0.05, -0.1, 0.07, 0.1], np.float32)
  jitter = np.asarray([True] * 5 + [False])
  out = _denormalise(apply_view(images, _params(
      batch, jitter=jitter, jitter_order=orders, brightness=b, contrast=c, saturation=s, hue=h),
                                RECIPE, 8))
  for k in range(batch):
    expected = _np_jitter(x[k], orders[k], b[k], c[k], s[k], h[k]) if jitter[k] else x[k]
    np.testing.assert_allclose(out[k], expected, atol=1e-4, err_msg=f"image {k}")
    if jitter[k]:
      # The order matters for these factors, so a wrong order would be caught.
      wrong = _np_jitter(x[k], orders[k][::-1], b[k], c[k], s[k], h[k])
      assert np.abs(wrong - expected).max() > 0.02


def test_grayscale_matches_luma():
  images = _images(3, 8, 8, seed=10)
  out = _denormalise(apply_view(images, _params(3, grayscale=np.array([True, False, True])),
                                RECIPE, 8))
  x = images / 255.0
  gray = np.repeat(_np_gray(x), 3, axis=-1)
  np.testing.assert_allclose(out[[0, 2]], gray[[0, 2]], atol=1e-5)
  np.testing.assert_allclose(out[1], x[1], atol=1e-5)


def test_grayscale_follows_jitter():
  images = _images(2, 8, 8, seed=11)
  x = images / 255.0
  out = _denormalise(apply_view(images, _params(
      2, jitter=np.ones(2, bool), brightness=np.asarray([1.3, 0.7], np.float32),
      grayscale=np.ones(2, bool)), RECIPE, 8))
  expected = np.stack([np.repeat(_np_gray(_np_brightness(x[k], f)), 3, axis=-1)
                       for k, f in enumerate((1.3, 0.7))])
  np.testing.assert_allclose(out, expected, atol=1e-4)
