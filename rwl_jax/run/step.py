"""The pure train step: (state, batch) -> (state, metrics), and the state it carries.

Randomness inside the step comes from named streams of (seed, state.step) (rwl_jax.rng), so the
step is a pure function of its inputs and a resumed run repeats every step exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from rwl_jax import losses, methods, rng
from rwl_jax.online_probe import OnlineProbe


@struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree, so it shards and checkpoints as one.

  target_params / target_batch_stats: the EMA target network of BYOL-style methods, a full copy of
  the online network's state (same graph, so the same pytree structure; its predictor copy is never
  called), and empty States for methods without a target.
  probe_params / probe_opt_state: the online linear probe's W, b and optimiser state
  (rwl_jax.online_probe) when eval.online_probe is on, empty dicts otherwise.
  """

  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState
  target_params: nnx.State
  target_batch_stats: nnx.State
  probe_params: dict = struct.field(default_factory=dict)
  probe_opt_state: Any = struct.field(default_factory=dict)


@struct.dataclass
class ModelDefs:
  """The static halves of the network split: graph definitions for training and evaluation."""

  train: nnx.GraphDef = struct.field(pytree_node=False)
  eval: nnx.GraphDef = struct.field(pytree_node=False)


def interleave_views(view1: jax.Array, view2: jax.Array) -> jax.Array:
  """[B, ...] twice -> [2B, ...] with rows 2i, 2i+1 the two views of image i.

  Interleaved rather than concatenated: with the batch split over devices, each device's rows of
  the result are its own rows of both views, so no image moves between devices (concatenation
  would make XLA reshuffle half the batch with all-to-alls).
  """
  return jnp.stack([view1, view2], axis=1).reshape((-1,) + view1.shape[1:])


def split_views(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The inverse of interleave_views: [2B, ...] -> ([B, ...] of view 1, [B, ...] of view 2)."""
  pairs = x.reshape((-1, 2) + x.shape[1:])
  return pairs[:, 0], pairs[:, 1]


StepFn = Callable[[TrainState, dict], tuple[TrainState, dict]]


def make_train_step(defs: ModelDefs, tx: optax.GradientTransformation, method: methods.Method,
                    *, seed: int, total_steps: int,
                    online_probe: OnlineProbe | None = None) -> StepFn:
  """The pure step: (state, batch) -> (state, metrics); batch holds 'view1' and 'view2' (and
  'label', read only by the online probe).

  metrics: loss, grad_norm, representation_std (~1 for spread-out projections, 0 at collapse),
  the method's aux terms, with an EMA target ema_momentum, and with an online probe its batch
  loss and top-1 (the probe trains on the step's stop-gradient encoder features). The method's randomness (GSG's
  pairing) is the 'method' stream of (seed, state.step). With an EMA target, the momentum follows
  methods.ema_momentum(state.step, total_steps, method.base_momentum) and the target moves toward
  the online parameters AFTER this step's update, as in BYOL.

  Every branch makes one forward pass over both views together, so BatchNorm sees all 2B
  images, as in the RWL reference (the BYOL/SimSiam codes run the views separately, normalising
  each view's B images on their own; a documented difference).
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    views = interleave_views(batch["view1"], batch["view2"])
    key = rng.stream_key(seed, state.step, "method")

    target_params, target_batch_stats = state.target_params, state.target_batch_stats
    if method.ema_target:
      # Outside the differentiated function and under stop_gradient: the target is never
      # differentiated. Its BatchNorm runs in train mode on the batch (as in BYOL); its running
      # averages are updated by its own forward passes, as the PyTorch codes' buffers are (their
      # EMA covers parameters only). Training never reads them.
      target = nnx.merge(defs.train, state.target_params, state.target_batch_stats)
      _, target_projections = target(views)
      targets = split_views(jax.lax.stop_gradient(target_projections.astype(jnp.float32)))
      target_batch_stats = nnx.state(target, nnx.BatchStat)

    model = nnx.merge(defs.train, state.params, state.batch_stats)

    def loss_of(model):
      features, projections = model(views)
      z1, z2 = split_views(projections.astype(jnp.float32))
      p1 = p2 = None
      if method.predictor:
        p1, p2 = split_views(model.predictor(projections).astype(jnp.float32))
      # Without an EMA network the targets are the online projections (SimSiam); the predictive
      # losses stop their gradient themselves.
      loss, aux = method.loss(methods.Outputs(z1, z2, p1, p2),
                              targets if method.ema_target else (z1, z2), key)
      return loss, (jax.lax.stop_gradient(z1), jax.lax.stop_gradient(features), aux)

    # nnx.value_and_grad differentiates the Params and carries BatchNorm's updates out.
    (loss, (z1, features, aux)), grads = nnx.value_and_grad(loss_of, has_aux=True)(model)
    batch_stats = nnx.state(model, nnx.BatchStat)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "representation_std": losses.normalized_std(z1), **aux}
    if method.ema_target:
      momentum = methods.ema_momentum(state.step, total_steps, method.base_momentum)
      target_params = methods.ema_update(state.target_params, params, momentum)
      metrics["ema_momentum"] = momentum
    probe_params, probe_opt_state = state.probe_params, state.probe_opt_state
    if online_probe is not None:
      # Rows 2i and 2i + 1 are the two views of image i (interleave_views).
      labels = jnp.repeat(batch["label"].astype(jnp.int32), 2)
      probe_params, probe_opt_state, probe_metrics = online_probe.update(
          state.probe_params, state.probe_opt_state, features, labels)
      metrics.update(probe_metrics)
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state, target_params=target_params,
                           target_batch_stats=target_batch_stats, probe_params=probe_params,
                           probe_opt_state=probe_opt_state)
    return new_state, metrics

  return train_step
