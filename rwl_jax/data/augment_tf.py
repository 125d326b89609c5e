"""The two-view augmentation (an `AugmentRecipe`) in TensorFlow, vectorised over a batch.

This is the host-side implementation: it runs inside a tf.data `map` after batching, in graph
mode, so every operation works on the whole batch at once (no per-image `tf.map_fn`). All
randomness comes from stateless ops seeded by one `[2]` seed, so a view is a pure function of
(images, seed, recipe).

The law is torchvision's (RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter),
RandomGrayscale, RandomApply(GaussianBlur), RandomSolarize, Normalize), with the colour operations
following `torchvision.transforms.functional` on float tensors in [0, 1]. Deliberate deviations:

* Resize: bilinear with half-pixel centres and edge clamping inside the crop, i.e. exactly
  PyTorch's `interpolate(mode="bilinear", align_corners=False)`, which equals PIL's bilinear
  when upsampling. No antialiasing is done when a crop is larger than `output_size` (PIL and
  torchvision's `antialias=True` blur first); for CIFAR at 32x32 a crop never exceeds the output.
* No uint8 quantisation between steps: the PIL path rounds to uint8 after the resize and after
  each jitter operation; here everything stays float32 in [0, 1].
* The crop's top-left corner is drawn once per image rather than after the winning attempt;
  the distribution is the same.
* Blur: a (2r + 1)-tap kernel, r = blur_radius(S) from recipe.py, SimCLR's and BYOL's size
  (23 taps at 224 px, 3 at 32 px), with reflect padding (see `_gaussian_blur`).
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  (must follow the log-level setting)

from rwl_jax.data.recipe import LUMA, AugmentRecipe, blur_radius, central_crop  # noqa: E402

# torchvision's RandomResizedCrop tries this many (scale, ratio) draws before falling back.
_CROP_ATTEMPTS = 10
# Position of each colour operation in `jitter_order`.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3
# Philox explicitly, so the same seed gives the same view on every device.
_ALG = "philox"
# Seeds split from a view's seed: 0-10 the crop, flip, jitter and grayscale streams, 11-13 blur,
# blur sigma and solarisation. stateless_split(seed, n) is a prefix of stateless_split(seed, m)
# for n < m, so the first 11 streams (and every view of a recipe without blur or solarisation)
# are what they were before blur and solarisation were added.
_NUM_SEEDS = 14


def _uniform(shape, seed, minval=0.0, maxval=1.0, dtype=tf.float32) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=dtype,
                                     alg=_ALG)


def _sample_crop(seeds: tf.Tensor, batch_size, height: int, width: int,
                 recipe: AugmentRecipe) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """RandomResizedCrop.get_params for a batch: integer (i, j, h, w), each float64 [B]."""
  shape = tf.stack([batch_size, _CROP_ATTEMPTS])
  scale_lo, scale_hi = recipe.crop_scale
  ratio_lo, ratio_hi = recipe.crop_ratio
  # All attempts are drawn up front; the first valid one per image is the one torchvision keeps.
  target_area = float(height * width) * _uniform(shape, seeds[0], scale_lo, scale_hi, tf.float64)
  aspect = tf.exp(_uniform(shape, seeds[1], math.log(ratio_lo), math.log(ratio_hi), tf.float64))
  # tf.round rounds half to even, like Python's round() in torchvision.
  w = tf.round(tf.sqrt(target_area * aspect))
  h = tf.round(tf.sqrt(target_area / aspect))
  valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)
  found = tf.reduce_any(valid, axis=1)
  w = tf.gather(w, first, axis=1, batch_dims=1)
  h = tf.gather(h, first, axis=1, batch_dims=1)
  corner = _uniform(tf.stack([batch_size, 2]), seeds[2], dtype=tf.float64)
  # randint[0, H - h] inclusive; the minimum guards against u rounding up to 1.
  i = tf.minimum(tf.floor(corner[:, 0] * (height - h + 1.0)), height - h)
  j = tf.minimum(tf.floor(corner[:, 1] * (width - w + 1.0)), width - w)
  fallback = [tf.constant(float(v), tf.float64)
              for v in central_crop(height, width, recipe.crop_ratio)]
  i, j, h, w = (tf.where(found, v, fb) for v, fb in zip((i, j, h, w), fallback))
  return i, j, h, w


def sample_view_params(seed, batch_size: int, image_size: tuple[int, int],
                       recipe: AugmentRecipe, view: int = 0) -> dict[str, tf.Tensor]:
  """Draws the per-image parameters of one view for a batch.

  Args:
    seed: a stateless seed, int32/int64 of shape [2].
    batch_size: number of images B (a Python int or a scalar int tensor).
    image_size: (height, width) of the input images, as Python ints.
    recipe: the augmentation recipe.
    view: which view this is (0 = first, 1 = second; recipe.view_probabilities), for the
      per-view blur and solarisation probabilities. Nothing else depends on it.

  Returns:
    A dict of tensors, each with leading dimension B:
      crop_box: float32 [B, 4] = (y_min, x_min, y_max, x_max), the pixel crop rows [i, i + h)
        and columns [j, j + w) as edge coordinates normalised by the image size, i.e.
        (i / H, j / W, (i + h) / H, (j + w) / W); (0, 0, 1, 1) is the whole image.
      crop_area_fraction: float32 [B], h * w / (H * W) of that crop.
      crop_aspect_ratio: float32 [B], w / h of that crop.
      flip: bool [B], mirror horizontally.
      jitter: bool [B], apply the colour jitter.
      brightness, contrast, saturation: float32 [B] factors, 1 is the identity.
      hue: float32 [B] hue shift in turns, 0 is the identity.
      jitter_order: int32 [B, 4], the order of the jitter operations (0 brightness,
        1 contrast, 2 saturation, 3 hue), a uniformly random permutation per image.
      grayscale: bool [B], convert to grayscale.
      blur: bool [B], Gaussian-blur the view; blur_sigma: float32 [B], its sigma in pixels,
        ~ U[recipe.blur_sigma] (drawn for every image, used where blur is True).
      solarize: bool [B], solarise the view.
  """
  height, width = (int(s) for s in image_size)
  blur_prob, solarize_prob = recipe.view_probabilities(view)
  seed = tf.convert_to_tensor(seed)
  if seed.dtype not in (tf.int32, tf.int64):
    seed = tf.cast(seed, tf.int64)
  seeds = tf.random.experimental.stateless_split(seed, num=_NUM_SEEDS, alg=_ALG)
  shape = tf.reshape(tf.convert_to_tensor(batch_size, tf.int32), [1])

  i, j, h, w = _sample_crop(seeds[0:3], batch_size, height, width, recipe)
  crop_box = tf.stack([i / height, j / width, (i + h) / height, (j + w) / width], axis=1)

  def factor(s, x):
    return _uniform(shape, s, 1.0 - x, 1.0 + x)

  return {
      "crop_box": tf.cast(crop_box, tf.float32),
      "crop_area_fraction": tf.cast(h * w / (height * width), tf.float32),
      "crop_aspect_ratio": tf.cast(w / h, tf.float32),
      "flip": _uniform(shape, seeds[3]) < recipe.flip_prob,
      "jitter": _uniform(shape, seeds[4]) < recipe.jitter_prob,
      "brightness": factor(seeds[5], recipe.brightness),
      "contrast": factor(seeds[6], recipe.contrast),
      "saturation": factor(seeds[7], recipe.saturation),
      "hue": _uniform(shape, seeds[8], -recipe.hue, recipe.hue),
      # Sorting i.i.d. uniforms gives a uniformly random permutation (ties have probability 0).
      "jitter_order": tf.argsort(_uniform(tf.concat([shape, [4]], 0), seeds[9]), axis=1,
                                 stable=True),
      "grayscale": _uniform(shape, seeds[10]) < recipe.grayscale_prob,
      "blur": _uniform(shape, seeds[11]) < blur_prob,
      "blur_sigma": _uniform(shape, seeds[12], *recipe.blur_sigma),
      "solarize": _uniform(shape, seeds[13]) < solarize_prob,
  }


def _resize_taps(start: tf.Tensor, size: tf.Tensor,
                 output_size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Source indices and weight along one axis for half-pixel bilinear resize of a crop.

  Output pixel k of a crop [start, start + size) samples crop coordinate
  (k + 0.5) * size / output_size - 0.5, clamped into the crop (PyTorch align_corners=False).
  Returns absolute indices (low, high), int32 [B, S], and the weight of `high`, float32 [B, S].
  """
  size_f = tf.cast(size, tf.float32)[:, None]
  k = tf.range(output_size, dtype=tf.float32)[None, :]
  src = tf.maximum((k + 0.5) * (size_f / output_size) - 0.5, 0.0)
  low = tf.minimum(tf.floor(src), size_f - 1.0)
  frac = src - low
  low = tf.cast(low, tf.int32)
  high = tf.minimum(low + 1, size[:, None] - 1)
  return start[:, None] + low, start[:, None] + high, frac


def _crop_resize_flip(images: tf.Tensor, crop_box: tf.Tensor, flip: tf.Tensor,
                      output_size: int) -> tf.Tensor:
  """Crops each image to its box (snapped to whole pixels), resizes bilinearly, maybe mirrors.

  Done separably with batched gathers rather than tf.image.crop_and_resize, whose sampling
  grid is align-corners style and which extrapolates past the image edge instead of clamping
  at the crop's edge, so it cannot reproduce torchvision's resize exactly. Returns float32 in
  [0, 1].
  """
  dims = tf.shape(images)
  height = tf.cast(dims[1], tf.float32)
  width = tf.cast(dims[2], tf.float32)
  pixels = tf.cast(tf.round(crop_box * tf.stack([height, width, height, width])), tf.int32)
  i, j = pixels[:, 0], pixels[:, 1]
  h = tf.maximum(pixels[:, 2] - i, 1)
  w = tf.maximum(pixels[:, 3] - j, 1)

  y0, y1, fy = _resize_taps(i, h, output_size)
  x0, x1, fx = _resize_taps(j, w, output_size)
  # Mirroring the resized crop is reversing its column taps (the sampling grid is symmetric),
  # which is free here, unlike a per-image select over whole images.
  mirror = flip[:, None]
  x0, x1, fx = (tf.where(mirror, tf.reverse(t, axis=[1]), t) for t in (x0, x1, fx))

  def gather(values, index, axis):
    return tf.cast(tf.gather(values, index, axis=axis, batch_dims=1), tf.float32)

  fy = fy[:, :, None, None]
  rows = (1.0 - fy) * gather(images, y0, 1) + fy * gather(images, y1, 1)
  fx = fx[:, None, :, None]
  out = (1.0 - fx) * gather(rows, x0, 2) + fx * gather(rows, x1, 2)
  return out / 255.0


def _apply_where(x: tf.Tensor, mask: tf.Tensor, fn, *per_image: tf.Tensor) -> tf.Tensor:
  """fn(selected x, *selected per_image) for the images where mask is True; the others pass
  through bit-exactly. per_image: further [B, ...] arguments of fn, partitioned alike."""
  # Partition and stitch, so fn runs only on the selected images and no whole-batch tf.where
  # (slow on CPU) is needed.
  index = tf.range(tf.shape(x)[0])
  code = tf.cast(mask, tf.int32)
  kept, selected = tf.dynamic_partition(x, code, 2)
  kept_index, selected_index = tf.dynamic_partition(index, code, 2)
  arguments = [tf.dynamic_partition(value, code, 2)[1] for value in per_image]
  return tf.dynamic_stitch([kept_index, selected_index], [kept, fn(selected, *arguments)])


def _grayscale(x: tf.Tensor) -> tf.Tensor:
  """Luma, [..., 1]."""
  return tf.reduce_sum(x * tf.constant(LUMA, x.dtype), axis=-1, keepdims=True)


def _blend(x: tf.Tensor, other: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """torchvision's _blend for float images: factor * x + (1 - factor) * other, clipped."""
  return tf.clip_by_value(factor * x + (1.0 - factor) * other, 0.0, 1.0)


def _adjust_hue(x: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
  hsv = tf.image.rgb_to_hsv(x)
  hue = tf.math.floormod(hsv[..., :1] + shift, 1.0)
  rgb = tf.image.hsv_to_rgb(tf.concat([hue, hsv[..., 1:]], axis=-1))
  # HSV->RGB can overshoot [0, 1] by float round-off.
  return tf.clip_by_value(rgb, 0.0, 1.0)


def _color_jitter(x: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
  """ColorJitter with a per-image operation order; images with jitter False pass through."""
  factors = tf.stack([tf.cast(params[name], tf.float32)
                      for name in ("brightness", "contrast", "saturation", "hue")], axis=1)
  order = tf.cast(params["jitter_order"], tf.int32)
  jitter = tf.cast(params["jitter"], tf.bool)
  index = tf.range(tf.shape(x)[0])
  identity = 4
  for position in range(4):
    # Each image needs its own op at this position: partition the batch by op (images without
    # jitter go to an identity part), run each op once on its part, and stitch back. Every
    # image is computed once per position, not once per candidate op.
    code = tf.where(jitter, order[:, position], identity)
    parts = tf.dynamic_partition(x, code, 5)
    part_factors = tf.dynamic_partition(factors, code, 5)
    part_index = tf.dynamic_partition(index, code, 5)

    def factor(op: int) -> tf.Tensor:
      return part_factors[op][:, op, None, None, None]

    contrast_in = parts[_CONTRAST]
    mean_luma = tf.reduce_mean(_grayscale(contrast_in), axis=[1, 2, 3], keepdims=True)
    outputs = [
        tf.clip_by_value(parts[_BRIGHTNESS] * factor(_BRIGHTNESS), 0.0, 1.0),
        _blend(contrast_in, mean_luma, factor(_CONTRAST)),
        _blend(parts[_SATURATION], _grayscale(parts[_SATURATION]), factor(_SATURATION)),
        _adjust_hue(parts[_HUE], factor(_HUE)),
        parts[identity],
    ]
    x = tf.dynamic_stitch(part_index, outputs)
  return x


def _gaussian_blur(x: tf.Tensor, sigma: tf.Tensor, radius: int, size: int) -> tf.Tensor:
  """Separable Gaussian blur of [n, S, S, C] images, sigma float32 [n] pixels, 2r + 1 taps.

  out = sum_{a,b} k_a k_b x[y + a, x + b] with k_t = exp(-t^2 / (2 sigma^2)) / sum_s (same),
  t = -r..r: along the columns (x) first, then the rows (y), as augment_jax.
  Reflect padding (..., x[2], x[1] | x[0], x[1], ...: torchvision's GaussianBlur): the kernel
  sums to 1 at every pixel, so a constant image stays constant and the border keeps its
  brightness, unlike SimCLR's and BYOL's zero ('SAME') padding, which darkens an r-pixel frame
  (a tenth of the view at r = 1, S = 32). The reflected taps are static gathers (tf.pad's
  REFLECT mode refuses an empty batch, which a partition can be).
  """
  if radius == 0:
    return x
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(taps)[None, :] / (2.0 * tf.square(sigma)[:, None]))
  kernel = kernel / tf.reduce_sum(kernel, axis=1, keepdims=True)  # [n, 2r + 1]

  def along(values: tf.Tensor, axis: int) -> tf.Tensor:
    total = 0.0
    for t in range(-radius, radius + 1):
      source = [abs(k) if k < size else 2 * (size - 1) - k for k in range(t, size + t)]
      total += kernel[:, t + radius, None, None, None] * tf.gather(values, source, axis=axis)
    return total

  return along(along(x, 2), 1)


def _solarize(x: tf.Tensor) -> tf.Tensor:
  """x -> 1 - x where x >= 0.5 (PIL's ImageOps.solarize(threshold=128) on [0, 1] images)."""
  return tf.where(x >= 0.5, 1.0 - x, x)


def apply_view(images, params: dict[str, tf.Tensor], recipe: AugmentRecipe,
               output_size: int) -> tf.Tensor:
  """Applies one view's parameters (from `sample_view_params`) to a batch.

  Args:
    images: uint8 [B, H, W, 3].
    params: per-image parameters as returned by `sample_view_params`.
    recipe: the recipe; only its mean and std are read here.
    output_size: side S of the square output.

  Returns:
    float32 [B, S, S, 3], normalised as (x / 255 - mean) / std.
  """
  images = tf.convert_to_tensor(images)
  x = _crop_resize_flip(images, tf.cast(params["crop_box"], tf.float32),
                        tf.cast(params["flip"], tf.bool), output_size)
  x = _color_jitter(x, params)
  x = _apply_where(x, tf.cast(params["grayscale"], tf.bool),
                   lambda y: tf.tile(_grayscale(y), [1, 1, 1, 3]))
  radius = blur_radius(output_size)
  x = _apply_where(x, tf.cast(params["blur"], tf.bool),
                   lambda y, sigma: _gaussian_blur(y, sigma, radius, output_size),
                   tf.cast(params["blur_sigma"], tf.float32))
  x = _apply_where(x, tf.cast(params["solarize"], tf.bool), _solarize)
  x = recipe.normalize(x, lambda values: tf.constant(values, tf.float32))
  return tf.ensure_shape(x, [None, output_size, output_size, 3])


def random_view(images, seed, recipe: AugmentRecipe, output_size: int,
                view: int = 0) -> tf.Tensor:
  """One random view of each image: `sample_view_params` then `apply_view`.

  The image size comes from the static shape of `images`; the batch size may be dynamic (a
  final partial batch). The same seed gives the same parameters, so vary it per batch and view;
  view (0 first, 1 second) picks the recipe's per-view blur and solarisation probabilities.
  """
  images = tf.convert_to_tensor(images)
  height, width = images.shape[1], images.shape[2]
  if height is None or width is None:
    raise ValueError(f"random_view needs a static image height and width, got {images.shape}")
  params = sample_view_params(seed, tf.shape(images)[0], (height, width), recipe, view)
  return apply_view(images, params, recipe, output_size)
