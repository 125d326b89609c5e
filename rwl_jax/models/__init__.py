"""Flax NNX encoders and heads, and the encoder+projector network the SSL methods train.

Encoders (model.encoder): the ResNets of models/resnet.py ('resnet10/18/34/50', model.stem
'cifar' or 'imagenet') and the ViTs of models/vit.py ('vit_tiny/small/base', model.patch_size).
model.width is the ResNets' base width and the ViTs' head dimension (64 = the published sizes).
model.batchnorm: the ResNets' BatchNorm implementation (models/batchnorm.py; unused by ViTs).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rwl_jax.errors import ConfigError
from rwl_jax.models.heads import MLP
from rwl_jax.models import batchnorm, resnet, vit
from rwl_jax.models.resnet import STEMS, CifarResNet, ResNet, build_resnet
from rwl_jax.models.vit import VisionTransformer, build_vit

__all__ = ["ENCODERS", "MLP", "STEMS", "CifarResNet", "Network", "ResNet", "VisionTransformer",
           "build_encoder", "build_network", "build_resnet", "build_vit", "check_devices",
           "compute_dtype", "is_vit", "validate"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class Network(nnx.Module):
  """Encoder followed by a projection head; returns (features, projections).

  The predictor methods (BYOL, SimSiam and their GSG variants) also have a prediction head q,
  applied by the train step to the projections: p = q(z). It is None for the other methods.
  """

  def __init__(self, encoder: nnx.Module, projector: nnx.Module,
               predictor: nnx.Module | None = None):
    self.encoder = encoder
    self.projector = projector
    self.predictor = predictor

  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    features = self.encoder(images)
    return features, self.projector(features)


def compute_dtype(name: str) -> Any:
  if name not in _DTYPES:
    raise ConfigError(f"unknown model.dtype {name!r}; choose one of {sorted(_DTYPES)}")
  return _DTYPES[name]


ENCODERS = tuple(sorted(resnet.ARCHITECTURES)) + tuple(sorted(vit.ARCHITECTURES))


def is_vit(encoder: str) -> bool:
  return encoder in vit.ARCHITECTURES


def validate(model_config, *, image_size: int) -> None:
  """The model section's values (types are checked against the defaults elsewhere): encoder,
  width, dtype, batchnorm, and the stem (ResNets) or the patch size dividing image_size (ViTs);
  one ConfigError line naming the problem."""
  compute_dtype(model_config.dtype)
  batchnorm.check_variant(model_config.batchnorm)
  if model_config.encoder not in ENCODERS:
    raise ConfigError(f"unknown model.encoder {model_config.encoder!r}; choose one of "
                      f"{list(ENCODERS)}")
  if not model_config.width >= 1:
    raise ConfigError(f"model.width must be >= 1, got {model_config.width}")
  if model_config.stem not in STEMS:
    raise ConfigError(f"unknown model.stem {model_config.stem!r}; choose one of {list(STEMS)}")
  if is_vit(model_config.encoder):
    patch = model_config.patch_size
    if not (patch >= 1 and image_size % patch == 0):
      raise ConfigError(f"data.image_size {image_size} must be a multiple of model.patch_size "
                        f"{patch} (the ViT cuts the image into whole patches)")


def check_devices(model_config, num_devices: int) -> None:
  """The model runs on a mesh of num_devices (model.batchnorm='pallas' needs one); one
  ConfigError line otherwise."""
  if not is_vit(model_config.encoder):
    batchnorm.check_devices(model_config.batchnorm, num_devices)


def build_encoder(model_config, *, image_size: int, rngs: nnx.Rngs,
                  depth: int | None = None) -> nnx.Module:
  """The encoder model_config names: a ResNet (width, stem) or a ViT (width, patch_size; its
  position embeddings are sized for image_size x image_size images). depth: a ViT's number of
  blocks when not the architecture's (the tests' one-block ViTs)."""
  dtype = compute_dtype(model_config.dtype)
  if is_vit(model_config.encoder):
    return build_vit(model_config.encoder, width=model_config.width,
                     patch_size=model_config.patch_size, image_size=image_size, dtype=dtype,
                     depth=depth, rngs=rngs)
  return build_resnet(model_config.encoder, width=model_config.width, stem=model_config.stem,
                      dtype=dtype, batchnorm_variant=model_config.batchnorm, rngs=rngs)


def build_network(model_config, *, seed: int, predictor: bool = False,
                  image_size: int = 32) -> Network:
  """The network a config describes (model.encoder, width, stem or patch_size, projector_dims,
  dtype...) for image_size x image_size inputs (data.image_size; only ViTs depend on it).

  With predictor=True it also has the prediction head MLP(projector_dims[-1], predictor_dims)
  with BatchNorm between its layers, as in BYOL and SimSiam (Linear, BN, ReLU, Linear).
  """
  dtype = compute_dtype(model_config.dtype)
  projector_dims, predictor_dims = (tuple(model_config.projector_dims),
                                    tuple(model_config.predictor_dims))
  projector_batch_norm = model_config.projector_batch_norm
  rngs = nnx.Rngs(seed)
  encoder = build_encoder(model_config, image_size=image_size, rngs=rngs)
  projector = MLP(encoder.num_features, projector_dims, batch_norm=projector_batch_norm,
                  dtype=dtype, rngs=rngs)
  head = None
  if predictor:
    head = MLP(projector.out_features, predictor_dims, batch_norm=True, dtype=dtype, rngs=rngs)
  return Network(encoder, projector, head)
