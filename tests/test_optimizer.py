"""The optimiser: torch-style SGD weight decay, warmup + cosine schedule, LARS masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rwl_jax.configs import common
from rwl_jax.run import experiment
from rwl_jax import optimizer


def make(name="sgd", **settings):
  config = common.get_config()
  config.num_epochs = 10
  config.optimizer.name = name
  config.optimizer.update(settings)
  return optimizer.create(config.optimizer, num_epochs=config.num_epochs, steps_per_epoch=100)


def test_schedule_warmup_then_cosine_to_the_final_fraction():
  _, schedule = make(learning_rate=0.4, warmup_epochs=2, final_lr_fraction=0.1)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(100), 0.2, rtol=1e-6)  # half-way through warm-up
  np.testing.assert_allclose(schedule(200), 0.4, rtol=1e-6)
  np.testing.assert_allclose(schedule(600), 0.04 + 0.36 * 0.5 * (1 + np.cos(np.pi * 0.5)), rtol=1e-5)
  np.testing.assert_allclose(schedule(1000), 0.04, rtol=1e-6)
  _, reference = make()  # the reference: no warm-up, cosine from 0.1 to 0
  np.testing.assert_allclose([reference(0), reference(500), reference(1000)], [0.1, 0.05, 0.0],
                             atol=1e-7)


def test_sgd_matches_torch_semantics():
  """torch.optim.SGD: g += wd * p; buf = momentum * buf + g; p -= lr * buf."""
  tx, schedule = make(learning_rate=0.1, weight_decay=0.01, momentum=0.9)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.5])}
  state = tx.init(params)
  buffer = np.zeros(2)
  p = np.array([1.0, -2.0])
  for step in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    buffer = 0.9 * buffer + (np.array([0.5, 0.5]) + 0.01 * p)
    p = p - float(schedule(step)) * buffer
    np.testing.assert_allclose(params["w"], p, rtol=1e-6)


def test_lars_skips_biases_and_norm_parameters():
  tx, _ = make("lars", learning_rate=1.0, weight_decay=0.5)
  params = {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Zero gradients: only weight decay moves anything, and only the matrix.
  assert float(jnp.abs(updates["kernel"]).sum()) > 0
  assert float(jnp.abs(updates["bias"]).sum()) == 0


def test_unknown_optimizer_is_a_config_error():
  config = common.get_config()
  config.optimizer.name = "adamw2"
  with pytest.raises(Exception, match="unknown optimizer.name 'adamw2'"):
    experiment.validate_config(config)
