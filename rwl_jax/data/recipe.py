"""Augmentation recipes as data: one parameterisation shared by every implementation.

The host (tf.data) and device (JAX) augmentations both read an `AugmentRecipe`, so a recipe
is stated once, in a config, and the two paths cannot drift apart in their parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from rwl_jax.errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# torchvision's ImageNet channel statistics (the normalisation of BYOL, VICReg and Barlow Twins).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale (tf.image uses 0.2989 for red).
LUMA = (0.299, 0.587, 0.114)


def central_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop fallback (i, j, h, w): the whole image, clamped to the ratio
  range."""
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def blur_radius(image_size: int) -> int:
  """Radius r of the (2r + 1)-tap Gaussian blur kernel for a square view of side S.

  r = floor(floor(S / 10) / 2): SimCLR's and BYOL's kernel of side ~10% of the image, S // 10,
  rounded up to an odd number of taps, i.e. 23 taps at 224, 9 at 96, 3 at 32 and a single tap
  (no blur) below 20 pixels.
  """
  return (int(image_size) // 10) // 2


@dataclasses.dataclass(frozen=True)
class AugmentRecipe:
  """The two-view recipe, as torchvision applies it: SimCLR's by default, BYOL's with blur and
  solarisation.

  Per view v, in this order: RandomResizedCrop(size, scale=crop_scale, ratio=crop_ratio) with
  bilinear resize; horizontal flip with probability flip_prob; with probability jitter_prob a
  ColorJitter whose four operations run in a random order with factors
  brightness b ~ U[1-brightness, 1+brightness], contrast c ~ U[1-contrast, 1+contrast],
  saturation s ~ U[1-saturation, 1+saturation] and hue shift h ~ U[-hue, hue] (in turns);
  grayscale with probability grayscale_prob; Gaussian blur with probability blur_prob[v];
  solarisation with probability solarize_prob[v]; then (x/255 - mean) / std per channel. This
  is BYOL's order (Grill et al. 2020, appendix B: crop, flip, colour jitter, grayscale, blur,
  solarisation).

  Blur: sigma ~ U[blur_sigma low, high] pixels and the normalised kernel
  k_t = exp(-t^2 / (2 sigma^2)) / sum_s exp(-s^2 / (2 sigma^2)), t = -r..r with
  r = blur_radius(S) for an S x S view, applied separably (out = sum_{a,b} k_a k_b x[y+a, x+b])
  with reflect padding. Solarisation: x -> 1 - x where x >= 0.5 (x in [0, 1]), i.e. PIL's
  ImageOps.solarize(threshold=128) on uint8 images (i -> 255 - i where i >= 128).

  The two views of an image differ only in the blur and solarisation probabilities, each a pair
  (first view, second view); view v (0-based) uses entry v % 2, so views alternate first,
  second. The defaults (0, 0) leave both operations out. Each event has its own uniform draw,
  separate from the other parameters' draws, so the operations are independent of each other
  and of the crop, flip, jitter and grayscale, and adding them changes no other draw.
  """

  crop_scale: tuple[float, float] = (0.2, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip_prob: float = 0.5
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  jitter_prob: float = 0.8
  grayscale_prob: float = 0.2
  # (first view, second view) probabilities; (0, 0) = off.
  blur_prob: tuple[float, float] = (0.0, 0.0)
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_prob: tuple[float, float] = (0.0, 0.0)
  mean: tuple[float, float, float] = CIFAR10_MEAN
  std: tuple[float, float, float] = CIFAR10_STD

  def __post_init__(self):
    for name in ("crop_scale", "crop_ratio", "blur_sigma"):
      value = getattr(self, name)
      if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ConfigError(f"augment.{name} must be a pair (low, high), got {value}")
    for name in ("blur_prob", "solarize_prob"):
      value = getattr(self, name)
      if not (isinstance(value, (tuple, list)) and len(value) == 2
              and all(0.0 <= p <= 1.0 for p in value)):
        raise ConfigError(f"augment.{name} must be a pair of probabilities in [0, 1] "
                          f"(first view, second view), got {value}")
    lo, hi = self.blur_sigma
    if not 0.0 < lo <= hi:
      raise ConfigError(f"augment.blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
    lo, hi = self.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
      raise ConfigError(f"augment.crop_scale must satisfy 0 < low <= high <= 1, got "
                        f"{self.crop_scale}")
    lo, hi = self.crop_ratio
    if not 0.0 < lo <= hi:
      raise ConfigError(f"augment.crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
    for name in ("flip_prob", "jitter_prob", "grayscale_prob"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {value}")
    for name in ("brightness", "contrast", "saturation"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ConfigError(f"augment.{name} must be in [0, 1), got {value}")
    if not 0.0 <= self.hue <= 0.5:
      raise ConfigError(f"augment.hue must be in [0, 0.5], got {self.hue}")
    if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
      raise ConfigError(f"augment.mean/std must be 3 values with std > 0, got {self.mean} / "
                        f"{self.std}")

  def view_probabilities(self, view: int) -> tuple[float, float]:
    """(blur, solarisation) probabilities of view `view` (0-based; views alternate first, second:
    entry view % 2 of blur_prob and solarize_prob). For the GSG methods, whose pairing reuses
    the two views of another image of the batch, its views keep their own probabilities."""
    if not (isinstance(view, int) and view >= 0):
      raise ValueError(f"view must be an integer >= 0 (0 = first view), got {view!r}")
    return self.blur_prob[view % 2], self.solarize_prob[view % 2]

  def normalize(self, x01: Any, as_array: Callable[[Any], Any]) -> Any:
    """(x - mean) / std per channel, for x in [0, 1] (the last step of every view and of the
    evaluation images). as_array turns the mean and std into the framework's constants
    (jnp.asarray, tf.constant), so the TensorFlow and JAX paths share this one formula."""
    return (x01 - as_array(self.mean)) / as_array(self.std)

  def as_config(self) -> dict[str, Any]:
    """The recipe's fields as config values: the single source of a config's `augment` section."""
    return dataclasses.asdict(self)

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "AugmentRecipe":
    """Builds a recipe from a ConfigDict or mapping; unknown keys are an error."""
    values = dict(config)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ConfigError(f"unknown augment config keys {unknown}; known keys: {sorted(known)}")
    as_tuples = {k: tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else float(v)
                 for k, v in values.items()}
    return cls(**as_tuples)


# BYOL's ImageNet views (Grill et al. 2020, appendix B, table 6), for 224-pixel configs: crop scale
# 0.08-1, jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, blur 1.0 / 0.1 and solarisation
# 0.0 / 0.2 (first / second view), ImageNet normalisation. VICReg and Barlow Twins use the same
# views. Colour jitter is torchvision's (random operation order), as everywhere here.
BYOL_IMAGENET = AugmentRecipe(crop_scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.2,
                              hue=0.1, jitter_prob=0.8, grayscale_prob=0.2, blur_prob=(1.0, 0.1),
                              solarize_prob=(0.0, 0.2), mean=IMAGENET_MEAN, std=IMAGENET_STD)
