"""The optimiser section (config.optimizer): its checks and the optax transformation it names.

    tx, schedule = create(config.optimizer, num_epochs=100, steps_per_epoch=195)
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from rwl_jax.errors import ConfigError

NAMES = ("sgd", "lars")


def validate(optimizer: ml_collections.ConfigDict, *, num_epochs: int) -> None:
  """The section's values (types are checked against the defaults beforehand); one ConfigError
  line naming the problem."""
  if not optimizer.learning_rate > 0:
    raise ConfigError(f"optimizer.learning_rate must be > 0, got {optimizer.learning_rate}")
  if optimizer.name not in NAMES:
    raise ConfigError(f"unknown optimizer.name {optimizer.name!r}; choose 'sgd' or 'lars'")
  if not 0 <= optimizer.warmup_epochs < num_epochs:
    raise ConfigError(f"optimizer.warmup_epochs must be in [0, num_epochs), got "
                      f"{optimizer.warmup_epochs}")


def create(optimizer: ml_collections.ConfigDict, *, num_epochs: int,
           steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD (momentum, weight decay on every parameter, as torch.optim.SGD) or LARS; warmup+cosine."""
  opt = optimizer
  total_steps = steps_per_epoch * num_epochs
  warmup_steps = int(round(opt.warmup_epochs * steps_per_epoch))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup_steps else opt.learning_rate, peak_value=opt.learning_rate,
      warmup_steps=warmup_steps, decay_steps=total_steps,
      end_value=opt.learning_rate * opt.final_lr_fraction)
  if opt.name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay),
                     optax.sgd(schedule, momentum=opt.momentum, nesterov=opt.nesterov))
  else:
    # LARS convention: no weight decay or trust ratio on biases and BatchNorm parameters.
    matrices_only = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    tx = optax.lars(schedule, weight_decay=opt.weight_decay, weight_decay_mask=matrices_only,
                    trust_coefficient=opt.trust_coefficient, trust_ratio_mask=matrices_only,
                    momentum=opt.momentum, nesterov=opt.nesterov)
  return tx, schedule
