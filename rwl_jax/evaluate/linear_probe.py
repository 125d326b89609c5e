"""Linear probe: multinomial logistic regression on frozen, standardised features.

Standardisation, with statistics of the train split only (the test split must not leak in):

    mu = mean_i x_i,   sigma = sqrt(mean_i (x_i - mu)^2),   x' = (x - mu) / sigma   (per feature)

and x' = 0 for a feature constant on the train split (sigma = 0).

Model and loss, for C classes, W: [D, C] and b: [C], both initialised to zero:

    logits = x' W + b,   L(W, b) = mean_batch [ -log softmax(logits)_y ] + (wd / 2) ||W||^2

The weight-decay term covers W only, never b: it is optax.add_decayed_weights masked to W,
before the SGD transform, so it is the gradient wd * W of that L2 penalty. The optimiser is SGD
with momentum 0.9 and learning rate lr * (1 + cos(pi * t / T)) / 2 over T = epochs * steps
steps, the usual linear-evaluation recipe. SGD rather than Adam: on standardised features the
problem is convex and well conditioned, SGD with a cosine decay converges from lr = 0.1 without
tuning, and the config's defaults (lr 0.1, wd 0) are SGD numbers.

Minibatches: each epoch draws a permutation of the N train rows from
jax.random.fold_in(PRNGKey(seed), epoch), padded to steps * B with steps = ceil(N / B). The
padded slots carry mask 0 and the loss is the masked mean, so every row is used exactly once
per epoch and the last partial batch is neither dropped nor filled with repeats. An epoch is one
jax.lax.scan over its steps; all epochs, with the standardisation and the test count around them,
run inside one jitted function.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rwl_jax import online_probe
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate.knn import (check_compiled_shapes, check_features_and_labels, is_int,
                                  is_real)

_MOMENTUM = 0.9


def _standardizer(train_features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-feature (mu, 1 / sigma) of the train features; 1 / sigma = 0 where sigma = 0."""
  # Shifted by the first row before averaging: a constant feature then gets mu exactly (so
  # sigma = 0, not the rounding error of a float32 sum, which 1 / sigma would blow up on the test
  # split), and a feature with a large common offset keeps its precision.
  shift = train_features[0]
  mean = shift + jnp.mean(train_features - shift, axis=0)
  std = jnp.sqrt(jnp.mean(jnp.square(train_features - mean), axis=0))
  # A feature constant on the train split carries no information: zero it on both splits.
  return mean, jnp.where(std > 0, 1.0 / jnp.where(std > 0, std, 1.0), 0.0)


def _make_optimizer(learning_rate, weight_decay, total_steps: int) -> optax.GradientTransformation:
  schedule = optax.cosine_decay_schedule(learning_rate, decay_steps=total_steps)
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask={"w": True, "b": False}),
      optax.sgd(schedule, momentum=_MOMENTUM))


def _loss(params, features, labels, mask):
  per_row = optax.softmax_cross_entropy_with_integer_labels(
      online_probe.logits(params, features), labels)
  return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _train(features: jax.Array, labels: jax.Array, key: jax.Array, learning_rate: jax.Array,
           weight_decay: jax.Array, *, num_classes: int, epochs: int,
           batch_size: int) -> dict[str, jax.Array]:
  """Trained {"w": [D, C], "b": [C]} on standardised features (see the module docstring)."""
  chex.assert_rank(features, 2)
  chex.assert_rank(labels, 1)
  num_rows, dim = features.shape
  steps = -(-num_rows // batch_size)
  pad = steps * batch_size - num_rows
  tx = _make_optimizer(learning_rate, weight_decay, epochs * steps)
  params = {"w": jnp.zeros((dim, num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  mask = jnp.pad(jnp.ones((num_rows,), jnp.float32), (0, pad)).reshape(steps, batch_size)

  def step(carry, batch):
    params, opt_state = carry
    index, batch_mask = batch
    grads = jax.grad(_loss)(params, features[index], labels[index], batch_mask)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def epoch(i, carry):
    order = jax.random.permutation(jax.random.fold_in(key, i), num_rows)
    # Padded slots point at row 0 but have mask 0, so they add nothing to the loss.
    index = jnp.pad(order, (0, pad)).reshape(steps, batch_size)
    carry, _ = jax.lax.scan(step, carry, (index, mask))
    return carry

  params, _ = jax.lax.fori_loop(0, epochs, epoch, (params, tx.init(params)))
  return params


def _count_correct(params, features, labels) -> tuple[jax.Array, jax.Array]:
  """(top-1, top-5) correct rows."""
  return online_probe.top_k_correct(online_probe.logits(params, features), labels, k=5)


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch_size"))
def _fit_and_count(train_x, train_y, test_x, test_y, seed, learning_rate, weight_decay, *,
                   num_classes: int, epochs: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """(top-1, top-5) correct test rows of the probe trained on train_x: the whole evaluation, one
  program (standardisation included), so a run compiles it once and nothing around it."""
  mean, inv_std = _standardizer(train_x)
  params = _train((train_x - mean) * inv_std, train_y, jax.random.PRNGKey(seed), learning_rate,
                  weight_decay, num_classes=num_classes, epochs=epochs, batch_size=batch_size)
  return _count_correct(params, (test_x - mean) * inv_std, test_y)


def _check_setting(caller, epochs, batch_size, learning_rate, weight_decay, seed) -> None:
  if not is_int(epochs) or epochs < 1:
    raise ConfigError(f"{caller}: epochs must be an int >= 1, got {epochs!r}")
  if not is_int(batch_size) or batch_size < 1:
    raise ConfigError(f"{caller}: batch_size must be an int >= 1, got {batch_size!r}")
  if not is_real(learning_rate) or not learning_rate > 0:
    raise ConfigError(f"{caller}: learning_rate must be a number > 0, got {learning_rate!r}")
  if not is_real(weight_decay) or not weight_decay >= 0:
    raise ConfigError(f"{caller}: weight_decay must be a number >= 0, got {weight_decay!r}")
  if not is_int(seed) or not -2**31 <= seed < 2**31:
    raise ConfigError(f"{caller}: seed must be an int in [-2**31, 2**31), got {seed!r}")


def _scalars(seed, learning_rate, weight_decay) -> tuple[np.ndarray, ...]:
  """The traced settings as the arrays the program takes (PRNGKey of an int32 seed is the key of
  that int, as PRNGKey of the Python int was)."""
  return np.int32(seed), np.float32(learning_rate), np.float32(weight_decay)


class LinearProbe:
  """linear_probe_accuracy for one shape of train and test features, compiled once when built.

      probe = LinearProbe(num_train=50_000, num_test=10_000, dim=512, num_classes=10, epochs=100)
      probe(train_x, train_y, test_x, test_y)    # {'top1', 'top5'}

  Every evaluation of a run then costs the training, not a compilation; features of another
  shape are refused (ConfigError), not recompiled.
  """

  def __init__(self, *, num_train: int, num_test: int, dim: int, num_classes: int,
               epochs: int = 100, batch_size: int = 1024, learning_rate: float = 0.1,
               weight_decay: float = 0.0, seed: int = 0, caller: str = "LinearProbe"):
    _check_setting(caller, epochs, batch_size, learning_rate, weight_decay, seed)
    if not is_int(num_classes) or num_classes < 1:
      raise ConfigError(f"{caller}: num_classes must be an int >= 1, got {num_classes!r}")
    self.caller, self.num_classes = caller, num_classes
    self.shapes = {"train": (num_train, dim), "test": (num_test, dim)}
    self._scalars = _scalars(seed, learning_rate, weight_decay)
    spec = jax.ShapeDtypeStruct
    self._compiled = _fit_and_count.lower(
        spec((num_train, dim), np.float32), spec((num_train,), np.int32),
        spec((num_test, dim), np.float32), spec((num_test,), np.int32),
        *(spec((), x.dtype) for x in self._scalars), num_classes=num_classes, epochs=epochs,
        batch_size=min(batch_size, num_train)).compile()

  def __call__(self, train_features, train_labels, test_features,
               test_labels) -> dict[str, float]:
    train_x, train_y, test_x, test_y = check_features_and_labels(
        self.caller, train_features, train_labels, test_features, test_labels, self.num_classes)
    check_compiled_shapes(self.caller, self.shapes, train_x, test_x)
    top1, top5 = self._compiled(train_x, train_y, test_x, test_y, *self._scalars)
    return {"top1": float(top1) / test_x.shape[0], "top5": float(top5) / test_x.shape[0]}


def linear_probe_top1(train_features, train_labels, test_features, test_labels, *,
                      num_classes: int, epochs: int = 100, batch_size: int = 1024,
                      learning_rate: float = 0.1, weight_decay: float = 0.0,
                      seed: int = 0) -> float:
  """Test top-1 accuracy of a softmax regression trained on standardised frozen features.

  linear_probe_accuracy(...)["top1"]; see there.
  """
  return _probe_accuracy("linear_probe_top1", train_features, train_labels, test_features,
                         test_labels, num_classes=num_classes, epochs=epochs,
                         batch_size=batch_size, learning_rate=learning_rate,
                         weight_decay=weight_decay, seed=seed)["top1"]


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels, *,
                          num_classes: int, epochs: int = 100, batch_size: int = 1024,
                          learning_rate: float = 0.1, weight_decay: float = 0.0,
                          seed: int = 0) -> dict[str, float]:
  """{'top1', 'top5'} test accuracies of a softmax regression on standardised frozen features.

  x' = (x - mu_train) / sigma_train; logits = x' W + b; minimise the mean softmax cross-entropy
  + (wd / 2) ||W||^2 with SGD (momentum 0.9, cosine-decayed lr) over shuffled minibatches; return
  mean over test rows of [argmax_c logits_c == label]. See the module docstring for the details.

  Args:
    train_features: [N_train, D] features (any float dtype; computed in float32).
    train_labels: [N_train] integer labels in [0, num_classes).
    test_features: [N_test, D] features.
    test_labels: [N_test] integer labels in [0, num_classes).
    num_classes: C, the number of classes.
    epochs: passes over the train set, >= 1.
    batch_size: rows per step, >= 1 (clamped to N_train); the last partial batch is masked.
    learning_rate: peak learning rate, > 0.
    weight_decay: L2 coefficient wd >= 0 on W (not b).
    seed: seeds the shuffling; the result is deterministic for a fixed seed.

  Returns:
    {'top1', 'top5'}: Python floats in [0, 1] (top-5: the label among the 5 largest logits).

  Raises:
    ValueError (ConfigError) with a one-line message on invalid input.
  """
  return _probe_accuracy("linear_probe_accuracy", train_features, train_labels, test_features,
                         test_labels, num_classes=num_classes, epochs=epochs,
                         batch_size=batch_size, learning_rate=learning_rate,
                         weight_decay=weight_decay, seed=seed)


def _probe_accuracy(caller, train_features, train_labels, test_features, test_labels, *,
                    num_classes, epochs, batch_size, learning_rate, weight_decay, seed):
  _check_setting(caller, epochs, batch_size, learning_rate, weight_decay, seed)
  train_x, train_y, test_x, test_y = check_features_and_labels(
      caller, train_features, train_labels, test_features, test_labels, num_classes)
  correct, correct_top5 = _fit_and_count(
      train_x, train_y, test_x, test_y, *_scalars(seed, learning_rate, weight_decay),
      num_classes=num_classes, epochs=epochs, batch_size=min(batch_size, train_x.shape[0]))
  return {"top1": float(correct) / test_x.shape[0], "top5": float(correct_top5) / test_x.shape[0]}
