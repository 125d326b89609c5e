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
jax.lax.scan over its steps; all epochs run inside one jitted function.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import optax

from rwl_jax import online_probe
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate.knn import check_features_and_labels, is_int, is_real

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


@jax.jit
def _count_correct(params, features, labels) -> tuple[jax.Array, jax.Array]:
  """(top-1, top-5) correct rows."""
  return online_probe.top_k_correct(online_probe.logits(params, features), labels, k=5)


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
  if not is_int(epochs) or epochs < 1:
    raise ConfigError(f"{caller}: epochs must be an int >= 1, got {epochs!r}")
  if not is_int(batch_size) or batch_size < 1:
    raise ConfigError(f"{caller}: batch_size must be an int >= 1, got {batch_size!r}")
  if not is_real(learning_rate) or not learning_rate > 0:
    raise ConfigError(f"{caller}: learning_rate must be a number > 0, got {learning_rate!r}")
  if not is_real(weight_decay) or not weight_decay >= 0:
    raise ConfigError(f"{caller}: weight_decay must be a number >= 0, got {weight_decay!r}")
  if not is_int(seed):
    raise ConfigError(f"{caller}: seed must be an int, got {seed!r}")
  train_x, train_y, test_x, test_y = check_features_and_labels(
      caller, train_features, train_labels, test_features, test_labels, num_classes)
  mean, inv_std = _standardizer(train_x)
  params = _train((train_x - mean) * inv_std, jnp.asarray(train_y), jax.random.PRNGKey(seed),
                  jnp.float32(learning_rate), jnp.float32(weight_decay),
                  num_classes=num_classes, epochs=epochs,
                  batch_size=min(batch_size, train_x.shape[0]))
  correct, correct_top5 = _count_correct(params, (test_x - mean) * inv_std, jnp.asarray(test_y))
  return {"top1": float(correct) / test_x.shape[0], "top5": float(correct_top5) / test_x.shape[0]}
