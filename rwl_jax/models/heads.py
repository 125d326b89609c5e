"""Projection and prediction heads: plain MLPs (Linear -> [BN] -> ReLU ... -> Linear)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rwl_jax.errors import ConfigError


class MLP(nnx.Module):
  """in_features -> dims[0] -> ... -> dims[-1]; ReLU (and optional BatchNorm) between layers.

  The reference RWL/SimCLR head is MLP(512, (512, 512)): Linear, ReLU, Linear.
  """

  def __init__(self, in_features: int, dims: Sequence[int], *, batch_norm: bool = False,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if not dims or min(dims) < 1:
      raise ConfigError(f"head dims must be a non-empty list of positive sizes, got {list(dims)}")
    layers = []
    norms = []
    for features in dims:
      layers.append(nnx.Linear(in_features, features, dtype=dtype, rngs=rngs))
      in_features = features
    for features in dims[:-1]:
      if batch_norm:
        norms.append(nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs))
    self.layers = nnx.List(layers)
    self.norms = nnx.List(norms)
    self.out_features = in_features

  def __call__(self, x: jax.Array) -> jax.Array:
    for index, layer in enumerate(self.layers):
      x = layer(x)
      if index < len(self.layers) - 1:
        if self.norms:
          x = self.norms[index](x)
        x = nnx.relu(x)
    return x
