"""What differs between SSL methods: here, which loss the two views' projections go through.

Each entry maps a method name to loss(z1, z2, config) -> scalar, with z1, z2 the [B, d]
projections of the two views.
"""

from __future__ import annotations

from typing import Callable

import jax
import ml_collections

from rwl_jax import losses
from rwl_jax.errors import ConfigError

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

_CONTRASTIVE = {
    "rwl": losses.rwl_loss,
    "simclr": losses.nt_xent_loss,
}

METHODS = tuple(sorted(_CONTRASTIVE))


def check_method_config(config: ml_collections.ConfigDict) -> None:
  if config.method not in _CONTRASTIVE:
    raise ConfigError(f"unknown method {config.method!r}; choose one of {list(METHODS)}")
  if not config.temperature > 0:
    raise ConfigError(f"temperature must be > 0, got {config.temperature}")


def loss_fn(config: ml_collections.ConfigDict) -> LossFn:
  """The method's loss of the two views' projections, with its hyper-parameters bound."""
  check_method_config(config)
  contrastive = _CONTRASTIVE[config.method]
  temperature = float(config.temperature)
  return lambda z1, z2: contrastive(z1, z2, temperature)
