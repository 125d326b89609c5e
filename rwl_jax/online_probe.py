"""The online linear probe: a softmax classifier trained inside the train step on the encoder's
stop-gradient features, the running accuracy BYOL and solo-learn report next to their losses.

    logits = f W + b,   L(W, b) = mean_rows [ -log softmax(logits)_y ]

f are the encoder features of both views of each training image (train-mode BatchNorm, as the
loss sees them) under stop_gradient, so the probe never changes the encoder's gradient. W [D, C]
and b [C] start at zero and have their own optimiser: SGD with momentum 0.9 at a constant
learning rate, no weight decay (constant because the features it reads keep moving; as the
encoder's learning rate decays they settle and the probe converges on them). The step logs the
batch's online_probe_loss and online_probe_top1 (on augmented training views); the evaluator
reports online_top1 / online_top5 of the same W, b on the test split's eval-mode features.
Unlike the linear probe, nothing is trained after the run: the figure is available at every
evaluation for the cost of one feature pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

MOMENTUM = 0.9


def logits(params: dict[str, jax.Array], features: jax.Array) -> jax.Array:
  """[N, D] features -> [N, C] class scores f W + b."""
  return features @ params["w"] + params["b"]


def top_k_correct(scores: jax.Array, labels: jax.Array, k: int = 5,
                  mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(top-1, top-k) counts of rows whose label has the largest / one of the k largest scores
  (all C scores when C < k); ties go to the smaller class, as argmax does. Rows with mask False
  (padding) count for neither. The one top-k rule of every evaluation (kNN, linear probe, online
  probe, fine-tuning)."""
  _, best = jax.lax.top_k(scores, min(k, scores.shape[-1]))
  top1 = best[:, 0] == labels
  top_k = jnp.any(best == labels[:, None], axis=-1)
  if mask is not None:
    top1, top_k = top1 & mask, top_k & mask
  return jnp.sum(top1), jnp.sum(top_k)


@dataclasses.dataclass(frozen=True)
class OnlineProbe:
  """The probe of a run: its shape, its optimiser, its initial state and its update."""

  num_features: int
  num_classes: int
  learning_rate: float

  @property
  def tx(self) -> optax.GradientTransformation:
    return optax.sgd(self.learning_rate, momentum=MOMENTUM)

  def init(self) -> tuple[dict[str, jax.Array], Any]:
    """(zero W and b, their optimiser state)."""
    params = {"w": jnp.zeros((self.num_features, self.num_classes), jnp.float32),
              "b": jnp.zeros((self.num_classes,), jnp.float32)}
    return params, self.tx.init(params)

  def update(self, params: dict[str, jax.Array], opt_state: Any, features: jax.Array,
             labels: jax.Array) -> tuple[dict[str, jax.Array], Any, dict[str, jax.Array]]:
    """One SGD step on a batch of (already stop-gradient) features -> (params, opt_state,
    {'online_probe_loss', 'online_probe_top1'} of the batch before the step)."""
    chex.assert_rank(features, 2)
    chex.assert_shape(labels, (features.shape[0],))
    features = jax.lax.stop_gradient(features.astype(jnp.float32))

    def loss_of(params):
      scores = logits(params, features)
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(scores, labels)), scores

    (loss, scores), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    top1, _ = top_k_correct(scores, labels, k=1)
    return optax.apply_updates(params, updates), opt_state, {
        "online_probe_loss": loss, "online_probe_top1": top1 / labels.shape[0]}
