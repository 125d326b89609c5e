"""Agreement of the JAX augmentation (augment_jax) with the TensorFlow one (augment_tf).

Two claims: given the same parameters both compute the same view (to float round-off), and
parameters and views drawn independently by each follow the same law (two-sample KS and z
tests at a fixed significance, with a check that a perturbed recipe is caught).
"""

from __future__ import annotations

import functools
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from rwl_jax.data import augment_jax, augment_tf  # noqa: E402
from rwl_jax.data.recipe import AugmentRecipe  # noqa: E402

RECIPE = AugmentRecipe()
# Every knob away from its default, to check both implementations read the recipe alike.
CUSTOM = AugmentRecipe(crop_scale=(0.08, 0.9), crop_ratio=(0.5, 1.5), flip_prob=0.3,
                       brightness=0.6, contrast=0.2, saturation=0.7, hue=0.3, jitter_prob=0.55,
                       grayscale_prob=0.4, blur_prob=(0.7, 0.25), blur_sigma=(0.3, 1.5),
                       solarize_prob=(0.15, 0.6), mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
MEAN = np.asarray(RECIPE.mean, np.float32)
STD = np.asarray(RECIPE.std, np.float32)
N_DRAWS = 20_000
SIZE = 32
# Per-statistic false-alarm rate of the KS tests, and the |z| bound of the mean and rate tests
# (two-sided p ~ 6e-5). With ~40 statistics per comparison a correct implementation fails with
# probability ~1% for a random seed; the seeds here are fixed, so the outcome is deterministic.
KS_ALPHA = 1e-3
Z_MAX = 4.0
CONTINUOUS = ("crop_area_fraction", "crop_aspect_ratio", "crop_y_min", "crop_x_min",
              "brightness", "contrast", "saturation", "hue", "blur_sigma")
EVENTS = ("flip", "jitter", "grayscale", "full_crop", "blur", "solarize")

# Shared jitted entry points, so each (shape, recipe) compiles once per session.
_jax_sample = jax.jit(augment_jax.sample_view_params, static_argnums=(1, 2, 3, 4))
_jax_apply = jax.jit(augment_jax.apply_view, static_argnums=(2, 3))


def _numpy(params) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in params.items()}


def _images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _natural_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  """Smooth colour fields with a colour cast and mild noise: image-like statistics, unlike noise."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0.0, 1.0, (batch, 4, 4, 3)) ** 1.5
  smooth = np.asarray(jax.image.resize(coarse, (batch, size, size, 3), "linear"))
  cast = rng.uniform(0.5, 1.0, (batch, 1, 1, 3))
  noisy = 255.0 * smooth * cast + rng.normal(0.0, 6.0, smooth.shape)
  return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _tf_params(seed: tuple[int, int], batch: int, image_size, recipe,
               view: int = 0) -> dict[str, np.ndarray]:
  return _numpy(augment_tf.sample_view_params(tf.constant(seed), batch, image_size, recipe, view))


def _jax_params(seed: int, batch: int, image_size, recipe, view: int = 0) -> dict[str, np.ndarray]:
  return _numpy(_jax_sample(jax.random.key(seed), batch, tuple(image_size), recipe, view))


# ---------------------------------------------------------------------------------------------
# Two-sample statistics, by hand (no SciPy).


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
  """sup |F_a - F_b| of the two empirical CDFs; exact with ties (discrete laws)."""
  a, b = np.sort(a), np.sort(b)
  points = np.concatenate([a, b])
  cdf_a = np.searchsorted(a, points, side="right") / a.size
  cdf_b = np.searchsorted(b, points, side="right") / b.size
  return float(np.abs(cdf_a - cdf_b).max())


def ks_critical(n: int, m: int, alpha: float = KS_ALPHA) -> float:
  """Asymptotic two-sample KS critical value c(alpha) * sqrt((n + m) / (n m)).

  Conservative for discrete laws (crop areas and aspects take few values), which is the safe
  direction for a test that must not fail spuriously.
  """
  return math.sqrt(-0.5 * math.log(alpha / 2.0)) * math.sqrt((n + m) / (n * m))


def proportion_z(a: np.ndarray, b: np.ndarray) -> float:
  """Pooled two-proportion z statistic of two boolean samples."""
  pooled = (a.sum() + b.sum()) / (a.size + b.size)
  se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / a.size + 1.0 / b.size))
  diff = a.mean() - b.mean()
  if se == 0.0:
    return 0.0 if diff == 0.0 else math.inf
  return float(diff / se)


def mean_z(a: np.ndarray, b: np.ndarray) -> float:
  """Welch z statistic of the difference in means."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
  diff = a.mean() - b.mean()
  if se == 0.0:
    return 0.0 if diff == 0.0 else math.inf
  return float(diff / se)


def _law_samples(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The quantities whose laws are compared, from a params dict."""
  samples = {name: params[name] for name in CONTINUOUS if name in params}
  samples["crop_y_min"] = params["crop_box"][:, 0]  # With the size, locates the corner.
  samples["crop_x_min"] = params["crop_box"][:, 1]
  samples["full_crop"] = params["crop_area_fraction"] == 1.0
  for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
    samples[name] = params[name]
  for position in range(4):
    for op in range(4):
      samples[f"order[{position}]=={op}"] = params["jitter_order"][:, position] == op
  return samples


def law_disagreements(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> list[str]:
  """Every statistic on which two params samples disagree beyond sampling error."""
  a, b = _law_samples(ours), _law_samples(theirs)
  failures = []
  for name in CONTINUOUS:
    d, critical = ks_statistic(a[name], b[name]), ks_critical(a[name].size, b[name].size)
    if d > critical:
      failures.append(f"KS {name}: D={d:.4f} > {critical:.4f}")
    z = mean_z(a[name], b[name])
    if abs(z) > Z_MAX:
      failures.append(f"mean {name}: z={z:.2f}")
  for name in [*EVENTS, *(k for k in a if k.startswith("order["))]:
    z = proportion_z(a[name], b[name])
    if abs(z) > Z_MAX:
      failures.append(f"rate {name}: {a[name].mean():.4f} vs {b[name].mean():.4f}, z={z:.2f}")
  return failures


def test_statistics_on_known_samples():
  rng = np.random.default_rng(0)
  x, y = rng.uniform(size=5_000), rng.uniform(size=5_000)
  assert ks_statistic(x, x) == 0.0
  assert ks_statistic(x, y) < ks_critical(5_000, 5_000)
  assert ks_statistic(x, y + 0.1) > 0.09  # A shift by 0.1 moves the CDF by ~0.1.
  # With ties: {0, 1} vs {1, 1} differ by 1/2 at 0.
  assert ks_statistic(np.array([0.0, 1.0]), np.array([1.0, 1.0])) == 0.5
  np.testing.assert_allclose(ks_critical(100, 100, 0.05), 1.358 * math.sqrt(0.02), rtol=1e-3)
  assert abs(proportion_z(rng.uniform(size=5_000) < 0.5, rng.uniform(size=5_000) < 0.5)) < Z_MAX
  assert proportion_z(np.ones(100, bool), np.zeros(100, bool)) > Z_MAX


# ---------------------------------------------------------------------------------------------
# Parameters: schema and conventions.


def test_param_keys_dtypes_and_shapes_match_tf():
  ours = _jax_params(0, 96, (SIZE, SIZE), RECIPE)
  theirs = _tf_params((0, 1), 96, (SIZE, SIZE), RECIPE)
  assert set(ours) == set(theirs)
  for name in theirs:
    assert ours[name].dtype == theirs[name].dtype, name
    assert ours[name].shape == theirs[name].shape, name


@pytest.mark.parametrize("image_size", [(SIZE, SIZE), (24, 40)])
def test_crop_box_on_pixel_grid_and_consistent(image_size):
  height, width = image_size
  params = _jax_params(1, 4_000, image_size, RECIPE)
  box = params["crop_box"].astype(np.float64) * [height, width, height, width]
  edges = np.round(box)
  np.testing.assert_allclose(box, edges, atol=1e-4)
  i, j, y_max, x_max = edges.T
  h, w = y_max - i, x_max - j
  assert (i >= 0).all() and (j >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (y_max <= height).all() and (x_max <= width).all()
  # Bit-exact: the float64 quotients rounded once to float32, as augment_tf gives them, so a
  # full crop has area exactly 1.0 and equal crops have equal boxes across implementations.
  exact = (edges / [height, width, height, width]).astype(np.float32)
  np.testing.assert_array_equal(params["crop_box"], exact)
  np.testing.assert_array_equal(params["crop_area_fraction"],
                                (h * w / (height * width)).astype(np.float32))
  np.testing.assert_array_equal(params["crop_aspect_ratio"], (w / h).astype(np.float32))
  order = params["jitter_order"]
  np.testing.assert_array_equal(np.sort(order, axis=1), np.tile(np.arange(4), (len(order), 1)))


def test_crop_fallback_matches_tf():
  # No attempt can fit, so both take torchvision's central crop: (i, j, h, w) = (8, 0, 16, 32).
  recipe = AugmentRecipe(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))
  ours = _jax_params(2, 50, (SIZE, SIZE), recipe)
  theirs = _tf_params((2, 2), 50, (SIZE, SIZE), recipe)
  for name in ("crop_box", "crop_area_fraction", "crop_aspect_ratio"):
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
  np.testing.assert_allclose(ours["crop_box"], np.tile([0.25, 0.0, 0.75, 1.0], (50, 1)))


# ---------------------------------------------------------------------------------------------
# Operations: the same parameters give the same view.


@pytest.mark.parametrize("image_size, output_size, recipe", [
    ((SIZE, SIZE), SIZE, RECIPE),
    ((24, 40), 28, CUSTOM),  # Non-square; upsamples rows, downsamples some columns.
    ((16, 16), 40, RECIPE),
])
def test_apply_view_matches_tf_on_tf_params(image_size, output_size, recipe):
  batch = 96
  images = _images(batch, *image_size, seed=sum(image_size))
  params = _tf_params((7, output_size), batch, image_size, recipe)
  # The batch exercises what it claims to: mixed orders, flips, grayscale and crops.
  jittered = params["jitter_order"][params["jitter"]]
  assert len({tuple(o) for o in jittered}) >= 12
  assert set(jittered[:, 0]) == {0, 1, 2, 3}
  applied = ("flip", "jitter", "grayscale") + (("blur", "solarize") if recipe is CUSTOM else ())
  for name in applied:
    assert 0 < params[name].sum() < batch, name
  assert (params["crop_area_fraction"] < 0.7).sum() > 10

  no_hue = dict(params, hue=np.zeros_like(params["hue"]))
  for p, atol in ((no_hue, 1e-4), (params, 1e-3)):
    ours = np.asarray(_jax_apply(images, p, recipe, output_size))
    theirs = augment_tf.apply_view(images, p, recipe, output_size).numpy()
    assert ours.shape == theirs.shape == (batch, output_size, output_size, 3)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)
  # Hue changes the views, so the loose tolerance is not hiding a missing operation.
  hue_effect = np.abs(np.asarray(_jax_apply(images, params, recipe, output_size))
                      - np.asarray(_jax_apply(images, no_hue, recipe, output_size)))
  assert hue_effect.max() > 0.1


# 3 taps (r = 1) at 32 px and 5 taps (r = 2) at 40 px; the shapes and recipe of the cases above,
# so no new compilation.
@pytest.mark.parametrize("image_size, output_size", [(SIZE, SIZE), (16, 40)])
def test_blur_and_solarize_match_tf_on_the_same_params(image_size, output_size):
  """Same parameters, same pixels for the two new operations: each image blurred, solarised,
  both or neither, sigma spread over [0.5, 3], on whole noise images (no flip or jitter), so
  only blur and solarisation can differ beyond the resize. Tolerance 2e-5 in normalised units
  (~5e-6 in [0, 1]: float32 round-off of a convex combination of 2r + 1 taps, then 1 - x)."""
  batch = 96
  images = _images(batch, image_size, image_size, seed=output_size)
  rng = np.random.default_rng(output_size)
  params = _tf_params((5, 5), batch, (image_size, image_size), RECIPE)
  params.update(
      crop_box=np.tile(np.asarray([0.0, 0.0, 1.0, 1.0], np.float32), (batch, 1)),
      flip=np.zeros(batch, bool), jitter=np.zeros(batch, bool),
      grayscale=np.zeros(batch, bool),
      blur=np.arange(batch) % 2 == 0, solarize=np.arange(batch) % 4 < 2,
      blur_sigma=rng.uniform(0.5, 3.0, batch).astype(np.float32))
  ours = np.asarray(_jax_apply(images, params, RECIPE, output_size))
  theirs = augment_tf.apply_view(images, params, RECIPE, output_size).numpy()
  np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)
  # Both operations visibly change the images they are applied to, and only those.
  plain = augment_tf.apply_view(images, dict(params, blur=np.zeros(batch, bool),
                                             solarize=np.zeros(batch, bool)),
                                RECIPE, output_size).numpy()
  change = np.abs(theirs - plain).max(axis=(1, 2, 3))
  touched = params["blur"] | params["solarize"]
  assert (change[touched] > 0.1).all() and (change[~touched] == 0).all()


def test_apply_view_matches_tf_on_jax_params():
  """The other direction: JAX-drawn boxes and orders mean the same thing to augment_tf."""
  images = _images(96, SIZE, SIZE, seed=3)  # The shapes of a case above: no new compilation.
  params = _jax_params(3, 96, (SIZE, SIZE), RECIPE)
  ours = np.asarray(_jax_apply(images, params, RECIPE, SIZE))
  theirs = augment_tf.apply_view(images, params, RECIPE, SIZE).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# Laws: independently drawn parameters and views are distributed alike.


@functools.lru_cache(maxsize=None)
def _draws(image_size: tuple[int, int], recipe: AugmentRecipe,
           jax_recipe: AugmentRecipe | None = None, view: int = 0):
  """(JAX, TF) params of N_DRAWS views each; the JAX side may use a different recipe."""
  ours = _jax_params(11, N_DRAWS, image_size, jax_recipe or recipe, view)
  theirs = _tf_params((3, 14), N_DRAWS, image_size, recipe, view)
  return ours, theirs


@pytest.mark.parametrize("image_size, recipe, view", [
    ((SIZE, SIZE), RECIPE, 0), ((24, 40), CUSTOM, 0), ((24, 40), CUSTOM, 1)])
def test_param_laws_agree(image_size, recipe, view):
  ours, theirs = _draws(image_size, recipe, view=view)
  failures = law_disagreements(ours, theirs)
  assert not failures, failures


@pytest.mark.parametrize("view", [0, 1])
def test_blur_and_solarize_laws_follow_the_recipe(view):
  """Both paths: blur and solarise rates are the view's probabilities, sigma ~ U[blur_sigma],
  and the two events are independent of each other and of the other draws."""
  blur_p, solarize_p = CUSTOM.blur_prob[view], CUSTOM.solarize_prob[view]
  lo, hi = CUSTOM.blur_sigma
  for params in _draws((24, 40), CUSTOM, view=view):
    for name, p in (("blur", blur_p), ("solarize", solarize_p)):
      rate = params[name].mean()
      assert abs(rate - p) <= 4.0 * math.sqrt(p * (1 - p) / N_DRAWS), (name, view, rate, p)
    joint = (params["blur"] & params["solarize"]).mean()
    assert abs(joint - blur_p * solarize_p) <= 4.0 * math.sqrt(blur_p * solarize_p / N_DRAWS)
    sigma = params["blur_sigma"].astype(np.float64)
    assert lo <= sigma.min() < lo + 0.01 and hi - 0.01 < sigma.max() <= hi
    uniform = np.random.default_rng(view).uniform(lo, hi, N_DRAWS)
    assert ks_statistic(sigma, uniform) < ks_critical(N_DRAWS, N_DRAWS)
    for other in ("flip", "jitter", "grayscale"):
      z = proportion_z(params[other][params["blur"]], params[other][~params["blur"]])
      assert abs(z) < Z_MAX, (other, z)


@pytest.mark.parametrize("perturbed, expected", [
    (AugmentRecipe(crop_scale=(0.3, 1.0)), "KS crop_area_fraction"),
    (AugmentRecipe(flip_prob=0.6), "rate flip"),
    (AugmentRecipe(grayscale_prob=0.23), "rate grayscale"),
    (AugmentRecipe(hue=0.09), "KS hue"),
    (AugmentRecipe(blur_prob=(0.03, 0.0)), "rate blur"),
    (AugmentRecipe(blur_sigma=(0.1, 1.9)), "KS blur_sigma"),
])
def test_param_law_test_detects_a_perturbed_recipe(perturbed, expected):
  """The law comparison has power: JAX draws under a slightly wrong recipe are caught."""
  ours, theirs = _draws((SIZE, SIZE), RECIPE, perturbed)
  failures = law_disagreements(ours, theirs)
  assert any(f.startswith(expected) for f in failures), failures


def test_view_channel_statistics_agree():
  """Whole pipelines, independent randomness: per-channel output means and spreads agree."""
  n = 2_000
  images = _natural_images(n, SIZE, seed=5)
  ours = np.asarray(jax.jit(augment_jax.random_view, static_argnums=(2, 3))(
      jax.random.key(5), images, RECIPE, SIZE))
  theirs = augment_tf.random_view(images, tf.constant([5, 5]), RECIPE, SIZE).numpy()
  for statistic in (np.mean, np.std):
    a = statistic(ours, axis=(1, 2))  # [n, 3]: one value per image and channel
    b = statistic(theirs, axis=(1, 2))
    for channel in range(3):
      z = mean_z(a[:, channel], b[:, channel])
      assert abs(z) < Z_MAX, (statistic.__name__, channel, a[:, channel].mean(),
                              b[:, channel].mean())
  # The augmentation moves the statistics a lot relative to the test's resolution, so an
  # implementation that skipped, say, the jitter would be caught.
  plain = (images / 255.0 - MEAN) / STD
  shift = np.abs(theirs.std(axis=(1, 2)).mean(0) - plain.std(axis=(1, 2)).mean(0))
  se = theirs.std(axis=(1, 2)).std(0) / math.sqrt(n)
  assert (shift > 10 * se).any()


# ---------------------------------------------------------------------------------------------
# Compilation.


def test_random_view_jits_once_and_vmaps():
  traces = []

  def counted(key, images, recipe, output_size):
    traces.append(images.shape)
    return augment_jax.random_view(key, images, recipe, output_size)

  view = jax.jit(counted, static_argnums=(2, 3))
  images = jnp.asarray(_natural_images(8, SIZE, seed=1))
  a = view(jax.random.key(1), images, RECIPE, 24)
  b = view(jax.random.key(1), images, RECIPE, 24)
  c = view(jax.random.key(2), images, RECIPE, 24)
  assert len(traces) == 1
  assert a.shape == (8, 24, 24, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).mean()) > 0.1
  x = np.asarray(a) * STD + MEAN
  assert x.min() >= -1e-5 and x.max() <= 1.0 + 1e-5
  assert x.std() > 0.05

  # vmap over keys (e.g. several views at once) gives each key's own view.
  keys = jax.random.split(jax.random.key(3), 3)
  views = jax.jit(jax.vmap(lambda k: augment_jax.random_view(k, images, RECIPE, 24)))(keys)
  assert views.shape == (3, 8, 24, 24, 3)
  for k in range(3):
    np.testing.assert_allclose(views[k], view(keys[k], images, RECIPE, 24), atol=1e-5)
  assert len(traces) == 1
