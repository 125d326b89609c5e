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
# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale (tf.image uses 0.2989 for red).
LUMA = (0.299, 0.587, 0.114)


def central_crop(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop fallback (i, j, h, w): the whole image, clamped to the ratio range."""
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


@dataclasses.dataclass(frozen=True)
class AugmentRecipe:
  """The SimCLR-style two-view recipe, as torchvision applies it.

  Per view, in this order: RandomResizedCrop(size, scale=crop_scale, ratio=crop_ratio) with
  bilinear resize; horizontal flip with probability flip_prob; with probability jitter_prob a
  ColorJitter whose four operations run in a random order with factors
  brightness b ~ U[1-brightness, 1+brightness], contrast c ~ U[1-contrast, 1+contrast],
  saturation s ~ U[1-saturation, 1+saturation] and hue shift h ~ U[-hue, hue] (in turns);
  grayscale with probability grayscale_prob; then (x/255 - mean) / std per channel.
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
  mean: tuple[float, float, float] = CIFAR10_MEAN
  std: tuple[float, float, float] = CIFAR10_STD

  def __post_init__(self):
    for name in ("crop_scale", "crop_ratio"):
      if len(getattr(self, name)) != 2:
        raise ConfigError(f"augment.{name} must be a pair (low, high), got {getattr(self, name)}")
    lo, hi = self.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
      raise ConfigError(f"augment.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
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
      raise ConfigError(f"augment.mean/std must be 3 values with std > 0, got {self.mean} / {self.std}")

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
