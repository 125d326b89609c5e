"""The two-view augmentation (an `AugmentRecipe`) in pure JAX, for the accelerator path.

Here the uint8 dataset lives in device memory and views are made inside the jitted train step,
so everything is batched jnp code with static shapes: no per-image Python loops, no dynamic
partitions, and it also vmaps (e.g. over views). All randomness comes from one JAX key, so a
view is a pure function of (images, key, recipe).

It is the same parameterisation as `augment_tf` (same dict keys, dtypes, shapes, conventions and
laws), so parameters drawn by either implementation can be applied by either one:

* RandomResizedCrop(scale=crop_scale, ratio=crop_ratio): up to 10 (area, log-uniform aspect)
  attempts, the first that fits is kept, w and h rounded half to even as Python's round(); the
  corner is uniform over the valid positions; torchvision's central crop if none fits.
* Horizontal flip with probability flip_prob.
* With probability jitter_prob, ColorJitter with factors b, c, s ~ U[1 - x, 1 + x] and hue
  shift ~ U[-hue, hue] (turns), its four operations in a uniformly random per-image order,
  following `torchvision.transforms.functional` on float images in [0, 1].
* Grayscale (ITU-R 601-2 luma) with probability grayscale_prob.
* Gaussian blur with probability blur_prob[view % 2], sigma ~ U[blur_sigma], 2r + 1 taps with
  r = blur_radius(S) (23 taps at 224 px, 3 at 32), separable, reflect padding (see
  `_gaussian_blur`); solarisation (x -> 1 - x where x >= 0.5) with probability
  solarize_prob[view % 2]; then (x - mean) / std.

The deliberate deviations from torchvision are those of `augment_tf` (bilinear resize with
half-pixel centres clamped inside the crop and no antialiasing; no uint8 rounding between
steps), plus one of its own: the crop attempts are drawn in float32 (JAX's default) rather than
float64, which changes a rounded w or h only when sqrt(area * aspect) lands within ~1e-6 of a
half-integer. The random streams differ from TensorFlow's, so the two agree in law, not draw by
draw; given the same parameters, `apply_view` agrees with `augment_tf.apply_view` to float
round-off (tests/test_augment_agreement.py checks both).
"""

from __future__ import annotations

import math
from typing import Mapping

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from rwl_jax.data.recipe import LUMA, AugmentRecipe, blur_radius, central_crop

# torchvision's RandomResizedCrop tries this many (scale, ratio) draws before falling back.
_CROP_ATTEMPTS = 10
# Columns of the one [B, _NUM_UNIFORMS] uniform draw behind a view's parameters.
_AREA = slice(0, _CROP_ATTEMPTS)
_ASPECT = slice(_CROP_ATTEMPTS, 2 * _CROP_ATTEMPTS)
_CORNER_I, _CORNER_J, _FLIP, _JITTER, _B, _C, _S, _H, _GRAY = range(2 * _CROP_ATTEMPTS,
                                                                    2 * _CROP_ATTEMPTS + 9)
_ORDER = slice(2 * _CROP_ATTEMPTS + 9, 2 * _CROP_ATTEMPTS + 13)
_NUM_UNIFORMS = 2 * _CROP_ATTEMPTS + 13
# Blur, blur sigma and solarisation draw from a key folded from the view's key, so the draw above
# (and every view of a recipe without blur or solarisation) is what it was before they existed.
_BLUR, _SIGMA, _SOLARIZE = range(3)
_EXTRA_STREAM = 1
# Position of each colour operation in `jitter_order`; _IDENTITY marks images without jitter.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE, _IDENTITY = 0, 1, 2, 3, 4
# float32 matmuls must not drop to TF32/bf16 passes on GPU: the resize weights need ~1e-6.
_PRECISION = jax.lax.Precision.HIGHEST


def _exact_fraction(numerator: jax.Array, denominator: int) -> jax.Array:
  """float32(numerator / denominator) rounded once, for integer numerator in [0, denominator].

  These are the values augment_tf produces (it divides in float64 and casts). A float32 division
  would not always give them: XLA rewrites division by a constant as multiplication by the
  reciprocal, one ulp off for some quotients (5 / 24), so a full crop's h * w / (H * W) could
  miss 1.0. The quotients are few, so look them up in a table built exactly in NumPy.
  """
  table = (np.arange(denominator + 1, dtype=np.float64) / denominator).astype(np.float32)
  return jnp.asarray(table)[numerator.astype(jnp.int32)]


def _sample_crop(u: jax.Array, height: int, width: int,
                 recipe: AugmentRecipe) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """RandomResizedCrop.get_params for a batch from uniforms u [B, _NUM_UNIFORMS]: (i, j, h, w).

  Returns the integer crop rows [i, i + h) and columns [j, j + w), each as float32 [B].
  """
  scale_lo, scale_hi = recipe.crop_scale
  log_lo, log_hi = math.log(recipe.crop_ratio[0]), math.log(recipe.crop_ratio[1])
  # All attempts are drawn up front; the first valid one per image is the one torchvision keeps.
  target_area = float(height * width) * (scale_lo + (scale_hi - scale_lo) * u[:, _AREA])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[:, _ASPECT])
  # jnp.round rounds half to even, like Python's round() in torchvision.
  w = jnp.round(jnp.sqrt(target_area * aspect))
  h = jnp.round(jnp.sqrt(target_area / aspect))
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(valid, axis=1)[:, None]
  found = jnp.any(valid, axis=1)
  w = jnp.take_along_axis(w, first, axis=1)[:, 0]
  h = jnp.take_along_axis(h, first, axis=1)[:, 0]
  # randint[0, H - h] inclusive; the minimum guards against u rounding up to 1.
  i = jnp.minimum(jnp.floor(u[:, _CORNER_I] * (height - h + 1.0)), height - h)
  j = jnp.minimum(jnp.floor(u[:, _CORNER_J] * (width - w + 1.0)), width - w)
  fallback = central_crop(height, width, recipe.crop_ratio)
  i, j, h, w = (jnp.where(found, v, float(fb)) for v, fb in zip((i, j, h, w), fallback))
  return i, j, h, w


def sample_view_params(key: jax.Array, batch_size: int, image_size: tuple[int, int],
                       recipe: AugmentRecipe, view: int = 0) -> dict[str, jax.Array]:
  """Draws the per-image parameters of one view for a batch.

  Args:
    key: a JAX PRNG key (typed or raw uint32 [2]).
    batch_size: number of images B, a Python int (static under jit).
    image_size: (height, width) of the input images, as Python ints.
    recipe: the augmentation recipe.
    view: which view this is (0 = first, 1 = second; recipe.view_probabilities), a Python int
      (static under jit), for the per-view blur and solarisation probabilities.

  Returns:
    A dict with the keys, dtypes and shapes of `augment_tf.sample_view_params`:
      crop_box: float32 [B, 4] = (i / H, j / W, (i + h) / H, (j + w) / W), the pixel crop rows
        [i, i + h) and columns [j, j + w) as normalised edge coordinates.
      crop_area_fraction: float32 [B], h * w / (H * W); crop_aspect_ratio: float32 [B], w / h.
      flip, jitter, grayscale: bool [B].
      brightness, contrast, saturation: float32 [B] factors (1 is the identity); hue: float32
        [B] shift in turns (0 is the identity).
      jitter_order: int32 [B, 4], a uniformly random permutation of (0 brightness, 1 contrast,
        2 saturation, 3 hue) per image.
      blur, solarize: bool [B]; blur_sigma: float32 [B] pixels, ~ U[recipe.blur_sigma].
  """
  height, width = (int(s) for s in image_size)
  blur_prob, solarize_prob = recipe.view_probabilities(view)
  # One draw of i.i.d. uniforms, one column per random quantity: a single RNG kernel, and far
  # less to compile than a key split and a threefry call per parameter.
  u = jax.random.uniform(key, (batch_size, _NUM_UNIFORMS), jnp.float32)

  i, j, h, w = _sample_crop(u, height, width, recipe)
  crop_box = jnp.stack([_exact_fraction(i, height), _exact_fraction(j, width),
                        _exact_fraction(i + h, height), _exact_fraction(j + w, width)], axis=1)

  def between(column: int, lo: float, hi: float) -> jax.Array:
    return lo + (hi - lo) * u[:, column]

  extra = jax.random.uniform(jax.random.fold_in(key, _EXTRA_STREAM), (batch_size, 3), jnp.float32)
  sigma_lo, sigma_hi = recipe.blur_sigma

  return {
      "crop_box": crop_box,
      "crop_area_fraction": _exact_fraction(h * w, height * width),
      # A division by a traced value is IEEE (correctly rounded), unlike one by a constant.
      "crop_aspect_ratio": w / h,
      "flip": u[:, _FLIP] < recipe.flip_prob,
      "jitter": u[:, _JITTER] < recipe.jitter_prob,
      "brightness": between(_B, 1.0 - recipe.brightness, 1.0 + recipe.brightness),
      "contrast": between(_C, 1.0 - recipe.contrast, 1.0 + recipe.contrast),
      "saturation": between(_S, 1.0 - recipe.saturation, 1.0 + recipe.saturation),
      "hue": between(_H, -recipe.hue, recipe.hue),
      # Sorting i.i.d. uniforms gives a uniformly random permutation (ties have probability ~0).
      "jitter_order": jnp.argsort(u[:, _ORDER], axis=1, stable=True).astype(jnp.int32),
      "grayscale": u[:, _GRAY] < recipe.grayscale_prob,
      "blur": extra[:, _BLUR] < blur_prob,
      "blur_sigma": sigma_lo + (sigma_hi - sigma_lo) * extra[:, _SIGMA],
      "solarize": extra[:, _SOLARIZE] < solarize_prob,
  }


def _resize_matrix(start: jax.Array, size: jax.Array, length: int,
                   output_size: int) -> jax.Array:
  """Half-pixel bilinear resize of a crop along one axis, as a float32 [B, S, length] matrix.

  Output pixel k of a crop [start, start + size) samples crop coordinate
  (k + 0.5) * size / output_size - 0.5, clamped into the crop (PyTorch align_corners=False);
  row k holds the two interpolation weights at the absolute input indices (equal at the edge).
  """
  size_f = size.astype(jnp.float32)[:, None]
  k = jnp.arange(output_size, dtype=jnp.float32)[None, :]
  src = jnp.maximum((k + 0.5) * (size_f / output_size) - 0.5, 0.0)
  low = jnp.minimum(jnp.floor(src), size_f - 1.0)
  frac = (src - low)[..., None]
  low = low.astype(jnp.int32)
  high = jnp.minimum(low + 1, size[:, None] - 1)
  start = start[:, None]
  return ((1.0 - frac) * jax.nn.one_hot(start + low, length, dtype=jnp.float32)
          + frac * jax.nn.one_hot(start + high, length, dtype=jnp.float32))


def _crop_resize_flip(images: jax.Array, crop_box: jax.Array, flip: jax.Array,
                      output_size: int) -> jax.Array:
  """Crops each image to its box (snapped to whole pixels), resizes bilinearly, maybe mirrors.

  The resize is two small per-image matrices, [S, H] for rows and [S, W] for columns, applied
  with batched matmuls rather than gathers: on GPU a batched matmul is one well-tiled kernel,
  while data-dependent gathers along the W axis read 3-element strips, and the extra multiplies
  by zero are cheap at the image sizes that fit a dataset in device memory (~0.4 MFLOP per
  32x32 view). Mirroring is reversing the column matrix's rows. Returns float32 in [0, 1].
  """
  _, height, width, _ = images.shape
  pixels = jnp.round(crop_box * jnp.asarray([height, width, height, width], jnp.float32))
  pixels = pixels.astype(jnp.int32)
  i, j = pixels[:, 0], pixels[:, 1]
  h = jnp.maximum(pixels[:, 2] - i, 1)
  w = jnp.maximum(pixels[:, 3] - j, 1)

  rows = _resize_matrix(i, h, height, output_size)
  cols = _resize_matrix(j, w, width, output_size)
  # The sampling grid is symmetric, so the mirrored resize is the resize with reversed taps.
  cols = jnp.where(flip[:, None, None], cols[:, ::-1], cols)

  x = images.astype(jnp.float32)
  x = jnp.einsum("bkh,bhwc->bkwc", rows, x, precision=_PRECISION)
  x = jnp.einsum("blw,bkwc->bklc", cols, x, precision=_PRECISION)
  return x / 255.0


def _grayscale(x: jax.Array) -> jax.Array:
  """Luma, [..., 1]."""
  return jnp.sum(x * jnp.asarray(LUMA, x.dtype), axis=-1, keepdims=True)


def _adjust_hue(x: jax.Array, shift: jax.Array) -> jax.Array:
  """torchvision's adjust_hue: rotate the HSV hue by `shift` turns ([B, 1, 1, 1])."""
  # dm-pix's HSV conversions are the same formulas as tf.image's (and torchvision's).
  hsv = pix.rgb_to_hsv(x)
  hue = jnp.mod(hsv[..., :1] + shift, 1.0)
  rgb = pix.hsv_to_rgb(jnp.concatenate([hue, hsv[..., 1:]], axis=-1))
  # HSV->RGB can overshoot [0, 1] by float round-off.
  return jnp.clip(rgb, 0.0, 1.0)


def _color_jitter(x: jax.Array, params: Mapping[str, jax.Array]) -> jax.Array:
  """ColorJitter with a per-image operation order; images with jitter False pass through.

  Brightness, contrast and saturation are all torchvision's blend clip(f * x + (1 - f) * ref)
  with ref = 0, the image's mean luma, or the pixel's luma, so at each position one blend with a
  per-image factor and reference does whichever of the three an image needs, and only hue is a
  second candidate, selected per image with jnp.where. (vmap of lax.switch would lower to the
  same select but evaluate all four branches.) On GPU each position fuses into an elementwise
  pass plus the mean-luma reduction, so it is memory-bound and the extra hue arithmetic is free.
  """
  batch = x.shape[0]
  ones = jnp.ones((batch,), jnp.float32)
  # Factor per op code; hue and identity blend with factor 1, which is exactly x.
  factors = jnp.stack([jnp.asarray(params["brightness"], jnp.float32),
                       jnp.asarray(params["contrast"], jnp.float32),
                       jnp.asarray(params["saturation"], jnp.float32), ones, ones], axis=1)
  shift = jnp.asarray(params["hue"], jnp.float32)[:, None, None, None]
  order = jnp.asarray(params["jitter_order"], jnp.int32)
  jitter = jnp.asarray(params["jitter"], jnp.bool_)
  for position in range(4):
    op = jnp.where(jitter, order[:, position], _IDENTITY)
    f = jnp.take_along_axis(factors, op[:, None], axis=1)[:, :, None, None]
    op = op[:, None, None, None]
    gray = _grayscale(x)
    mean_luma = jnp.mean(gray, axis=(1, 2, 3), keepdims=True)
    ref = jnp.where(op == _CONTRAST, mean_luma, jnp.where(op == _SATURATION, gray, 0.0))
    blended = jnp.clip(f * x + (1.0 - f) * ref, 0.0, 1.0)
    x = jnp.where(op == _HUE, _adjust_hue(x, shift), blended)
  return x


def _gaussian_blur(x: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
  """Separable Gaussian blur of [B, S, S, C] images, sigma float32 [B] pixels, 2r + 1 taps.

  out = sum_{a,b} k_a k_b x[y + a, x + b] with k_t = exp(-t^2 / (2 sigma^2)) / sum_s (same),
  t = -r..r, as 2r + 1 shifted multiply-adds along the columns (x), then the rows (y): the same
  sums in the same order as augment_tf. Not dm_pix.gaussian_blur: with a sigma per image it
  needs a vmap, which lowers to one grouped convolution with B * C groups (on CPU about half the
  time of a whole 32-pixel view), while the shifted sums fuse into elementwise passes.
  Reflect padding (..., x[2], x[1] | x[0], x[1], ...: torchvision's GaussianBlur) rather than
  the zero ('SAME') padding of SimCLR's and BYOL's code (and dm-pix's default): the kernel sums
  to 1 at every pixel, so a constant image stays constant and the border keeps its brightness
  instead of darkening an r-pixel frame (a tenth of a 32-pixel view).
  """
  if radius == 0:
    return x
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-jnp.square(taps)[None, :] / (2.0 * jnp.square(sigma)[:, None]))
  kernel = kernel / jnp.sum(kernel, axis=1, keepdims=True)  # [B, 2r + 1]
  weight = [kernel[:, t, None, None, None] for t in range(2 * radius + 1)]
  height, width = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
  columns = sum(weight[t] * padded[:, :, t:t + width] for t in range(2 * radius + 1))
  return sum(weight[t] * columns[:, t:t + height] for t in range(2 * radius + 1))


def apply_view(images_uint8: jax.Array, params: Mapping[str, jax.Array], recipe: AugmentRecipe,
               output_size: int) -> jax.Array:
  """Applies one view's parameters (from either `sample_view_params`) to a batch.

  Args:
    images_uint8: uint8 [B, H, W, 3].
    params: per-image parameters as returned by `sample_view_params` (JAX or NumPy arrays).
    recipe: the recipe; only its mean and std are read here.
    output_size: side S of the square output (static).

  Returns:
    float32 [B, S, S, 3], normalised as (x / 255 - mean) / std.
  """
  images = jnp.asarray(images_uint8)
  x = _crop_resize_flip(images, jnp.asarray(params["crop_box"], jnp.float32),
                        jnp.asarray(params["flip"], jnp.bool_), output_size)
  x = _color_jitter(x, params)
  grayscale = jnp.asarray(params["grayscale"], jnp.bool_)[:, None, None, None]
  x = jnp.where(grayscale, _grayscale(x), x)  # The luma broadcasts over the 3 channels.
  # Static shapes: every image is blurred and the flag selects, so unblurred images pass through
  # bit-exactly (as do unsolarised ones).
  blur = jnp.asarray(params["blur"], jnp.bool_)[:, None, None, None]
  blurred = _gaussian_blur(x, jnp.asarray(params["blur_sigma"], jnp.float32),
                           blur_radius(output_size))
  x = jnp.where(blur, blurred, x)
  solarize = jnp.asarray(params["solarize"], jnp.bool_)[:, None, None, None]
  x = jnp.where(solarize & (x >= 0.5), 1.0 - x, x)
  return recipe.normalize(x, lambda values: jnp.asarray(values, jnp.float32))


def random_view(key: jax.Array, images_uint8: jax.Array, recipe: AugmentRecipe,
                output_size: int, view: int = 0) -> jax.Array:
  """One random view of each image: `sample_view_params` then `apply_view`.

  Shapes come from `images_uint8` (static under jit); jit with recipe, output_size and view
  static, e.g. `jax.jit(random_view, static_argnums=(2, 3, 4))`. Use a fresh key per batch and
  view; view (0 first, 1 second) picks the recipe's per-view blur and solarisation probabilities.
  """
  batch, height, width = images_uint8.shape[:3]
  params = sample_view_params(key, batch, (height, width), recipe, view)
  return apply_view(images_uint8, params, recipe, output_size)
