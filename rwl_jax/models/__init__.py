"""Flax NNX encoders and heads, and the encoder+projector network the SSL methods train."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rwl_jax.errors import ConfigError
from rwl_jax.models.heads import MLP
from rwl_jax.models.resnet import CifarResNet, build_resnet

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


def build_network(model_config, *, seed: int, predictor: bool = False) -> Network:
  """The network a config describes (model.encoder, width, projector_dims, dtype...).

  With predictor=True it also has the prediction head MLP(projector_dims[-1], predictor_dims)
  with BatchNorm between its layers, as in BYOL and SimSiam (Linear, BN, ReLU, Linear).
  """
  dtype = compute_dtype(model_config.dtype)
  rngs = nnx.Rngs(seed)
  encoder = build_resnet(model_config.encoder, width=model_config.width, dtype=dtype, rngs=rngs)
  projector = MLP(encoder.num_features, tuple(model_config.projector_dims),
                  batch_norm=model_config.projector_batch_norm, dtype=dtype, rngs=rngs)
  head = None
  if predictor:
    head = MLP(projector.out_features, tuple(model_config.predictor_dims), batch_norm=True,
               dtype=dtype, rngs=rngs)
  return Network(encoder, projector, head)
