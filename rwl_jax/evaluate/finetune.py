"""Semi-supervised fine-tuning: the whole encoder and a new linear head on 1 % / 10 % of the labels.

The protocol of SimCLR (Chen et al. 2020, appendix B.5), which later papers report beside the
linear probe:

* Labelled subset, class-balanced and seeded (labelled_subset): for each class c with n_c
  training examples, m_c = min(n_c, max(1, floor(fraction * n_c + 0.5))) of them (round half up,
  at least one per class present), the first m_c of a permutation of the class seeded by
  (seed, c). A smaller fraction's subset is therefore part of a larger one's (same seed), and the
  rest of the split is never read. CIFAR-10 at 1 % / 10 %: 50 / 500 images per class.
* Model: the pretrained encoder (projector and predictor dropped) and a linear head
  logits = f W + b with W ~ N(0, 0.01^2), b = 0 (the initialiser of SimCLR's code), all trained:
  L = mean_batch [ -log softmax(logits)_y ], no weight decay or other regularisation.
* Optimiser: SGD with Nesterov momentum 0.9, no warm-up, learning rate
  eval.finetune_learning_rate decayed to 0 with a cosine over the steps (SimCLR uses
  0.05 * batch / 256 and the cosine of its code's schedule; the rate is not rescaled here).
  eval.finetune_epochs (SimCLR: 60 at 1 %, 30 at 10 %), eval.finetune_batch_size (SimCLR: 4096 on
  ImageNet; capped here by the subset's size and rounded down to a multiple of the devices).
* Batches: each epoch a fresh seeded permutation of the subset cut into floor(m / B) full
  batches, the last partial batch dropped (a different remainder each epoch): BatchNorm runs in
  train mode and a padded row would enter its batch statistics.
* Augmentation: the run's RandomResizedCrop and horizontal flip only (augment_jax.random_view of
  the run's recipe with every other operation's probability set to 0), as SimCLR's "random
  cropping with random left-to-right flipping"; no colour distortion.
* Evaluation: top-1 / top-5 (online_probe.top_k_correct) of the fine-tuned network on the whole
  evaluation split, un-augmented, BatchNorm with the running statistics fine-tuning updated.

Devices: the step is jitted on the run's mesh with the batch sharded on the data axis like the
train step (the subset's uint8 images replicated on every device, the batch's rows gathered
inside the step), so BatchNorm statistics are over the global batch. It needs the whole
labelled split on one process: several processes are refused with one line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from rwl_jax import online_probe, parallel
from rwl_jax.data import augment_jax, sources
from rwl_jax.data.recipe import AugmentRecipe
from rwl_jax.errors import ConfigError

MOMENTUM = 0.9
HEAD_INIT_STDDEV = 0.01
# Tags of this module's random draws, apart from every stream of the train step.
_KEY_TAG = 0x46494E45  # "FINE"


def labelled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a class-balanced, seeded subset of the labelled split (module docstring).

  Args:
    labels: [N] integer labels of the labelled train split.
    fraction: in (0, 1]; 1 takes every example.
    seed: the run's seed; each class c is permuted by numpy's default_rng([seed, c]).

  Returns:
    int64 [M] indices into labels, sorted, without repeats.
  """
  if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
    raise ConfigError(f"a fine-tuning label fraction must be in (0, 1], got {fraction!r}")
  labels = np.asarray(labels)
  chosen = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    count = min(len(members), max(1, int(np.floor(fraction * len(members) + 0.5))))
    order = np.random.default_rng([seed, int(label)]).permutation(len(members))
    chosen.append(members[order[:count]])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


def crop_flip_recipe(recipe: AugmentRecipe) -> AugmentRecipe:
  """The recipe's crop and flip with every other operation off: each '*_prob' but flip's set to
  0 (a per-view pair such as blur_prob to (0, 0))."""
  off = {}
  for field in dataclasses.fields(recipe):
    if field.name.endswith("_prob") and field.name != "flip_prob":
      value = getattr(recipe, field.name)
      off[field.name] = tuple(0.0 for _ in value) if isinstance(value, tuple) else 0.0
  return dataclasses.replace(recipe, **off)


@dataclasses.dataclass(frozen=True)
class Encoder:
  """An encoder to fine-tune: its graph in train and eval mode (BatchNorm on batch statistics /
  on running averages), its parameters and BatchNorm statistics, its feature size."""

  train_def: Any
  eval_def: Any
  params: Any
  batch_stats: Any
  num_features: int

  @classmethod
  def of_run(cls, defs, params, batch_stats) -> "Encoder":
    """The encoder of a run's network (experiment.defs, state.params, state.batch_stats)."""
    halves = []
    for graph in (defs.train, defs.eval):
      network = nnx.merge(graph, params, batch_stats)
      halves.append(nnx.split(network.encoder, nnx.Param, nnx.BatchStat))
    (train_def, encoder_params, encoder_stats), (eval_def, _, _) = halves
    return cls(train_def, eval_def, encoder_params, encoder_stats, network.encoder.num_features)


def make_optimizer(learning_rate: float, total_steps: int) -> optax.GradientTransformation:
  """SGD, Nesterov momentum 0.9, cosine decay from learning_rate to 0, no weight decay."""
  schedule = optax.cosine_decay_schedule(learning_rate, decay_steps=max(total_steps, 1))
  return optax.sgd(schedule, momentum=MOMENTUM, nesterov=True)


def init_state(encoder: Encoder, num_classes: int, tx: optax.GradientTransformation,
               key: jax.Array) -> dict[str, Any]:
  """{'step', 'params': {'encoder', 'head'}, 'batch_stats', 'opt_state'}: the pretrained encoder
  (copied: the run's own arrays are never written) and a new head."""
  head = {"w": HEAD_INIT_STDDEV * jax.random.normal(key, (encoder.num_features, num_classes),
                                                    jnp.float32),
          "b": jnp.zeros((num_classes,), jnp.float32)}
  params = {"encoder": jax.tree.map(jnp.copy, encoder.params), "head": head}
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "batch_stats": jax.tree.map(jnp.copy, encoder.batch_stats),
          "opt_state": tx.init(params)}


def make_step(train_def, tx: optax.GradientTransformation, recipe: AugmentRecipe,
              image_size: int) -> Callable:
  """The pure step (state, images, labels, index, key) -> (state, {'loss', 'top1'}).

  images: uint8 [M, H, W, 3] and labels: int32 [M], the labelled subset; index: int32 [B], the
  batch's rows of it; key: the run's fine-tuning key, folded with state['step'] for the batch's
  crop and flip. Forward in train mode (BatchNorm on the batch, its running averages updated),
  cross-entropy of the head's logits, one SGD step on encoder and head together.
  """
  crop_flip = crop_flip_recipe(recipe)

  def step(state, images, labels, index, key):
    batch_labels = labels[index]
    views = augment_jax.random_view(jax.random.fold_in(key, state["step"]), images[index],
                                    crop_flip, image_size)

    encoder = nnx.merge(train_def, state["params"]["encoder"], state["batch_stats"])

    def loss_of(encoder, head):
      scores = online_probe.logits(head, encoder(views).astype(jnp.float32))
      loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(scores, batch_labels))
      return loss, scores

    # nnx.value_and_grad differentiates the encoder's Params (and the head) and carries
    # BatchNorm's running-average updates out in the module, as the train step does.
    (loss, scores), (encoder_grads, head_grads) = nnx.value_and_grad(
        loss_of, argnums=(0, 1), has_aux=True)(encoder, state["params"]["head"])
    batch_stats = nnx.state(encoder, nnx.BatchStat)
    grads = {"encoder": encoder_grads, "head": head_grads}
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    top1, _ = online_probe.top_k_correct(scores, batch_labels, k=1)
    new_state = {"step": state["step"] + 1,
                 "params": optax.apply_updates(state["params"], updates),
                 "batch_stats": batch_stats, "opt_state": opt_state}
    return new_state, {"loss": loss, "top1": top1 / batch_labels.shape[0]}

  return step


def make_counts(eval_def, recipe: AugmentRecipe) -> Callable:
  """(params, batch_stats, uint8 images [B], labels [B], mask [B]) -> int32 [2] (top-1, top-5
  correct real rows) of the fine-tuned network, eval-mode BatchNorm, un-augmented images."""

  def counts(params, batch_stats, images, labels, mask):
    encoder = nnx.merge(eval_def, params["encoder"], batch_stats)
    x = recipe.normalize(images.astype(jnp.float32) / 255.0,
                         lambda values: jnp.asarray(values, jnp.float32))
    scores = online_probe.logits(params["head"], encoder(x).astype(jnp.float32))
    return jnp.stack(online_probe.top_k_correct(scores, labels, k=5, mask=mask))

  return counts


def finetune_accuracy(encoder: Encoder, train: sources.ArraySplit, test: sources.ArraySplit, *,
                      fraction: float, num_classes: int, epochs: int, batch_size: int,
                      learning_rate: float, seed: int, recipe: AugmentRecipe, image_size: int,
                      mesh: jax.sharding.Mesh, eval_batch_size: int) -> dict[str, float]:
  """{'top1', 'top5'} on `test` after fine-tuning encoder + a new head on `fraction` of `train`'s
  labels (the module docstring's protocol). The encoder given is not modified."""
  if len(test) == 0 or test.labels.min() < 0 or test.labels.max() >= num_classes:
    raise ConfigError(f"fine-tuning needs a labelled eval split with labels in "
                      f"[0, {num_classes}), got {len(test)} examples")
  state = finetune(encoder, train, fraction=fraction, num_classes=num_classes, epochs=epochs,
                   batch_size=batch_size, learning_rate=learning_rate, seed=seed, recipe=recipe,
                   image_size=image_size, mesh=mesh)
  return accuracy(encoder.eval_def, state, test, recipe=recipe, mesh=mesh,
                  batch_size=eval_batch_size)


def finetune(encoder: Encoder, train: sources.ArraySplit, *, fraction: float, num_classes: int,
             epochs: int, batch_size: int, learning_rate: float, seed: int,
             recipe: AugmentRecipe, image_size: int, mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """The fine-tuned state (init_state's layout) after `epochs` over the labelled subset of
  `fraction` of train; deterministic for a seed."""
  if jax.process_count() > 1:
    raise ConfigError("fine-tuning needs the whole labelled split on one process; run "
                      "`python -m rwl_jax.evaluate --workdir=DIR --finetune` on one process")
  if len(train) == 0 or train.labels.min() < 0 or train.labels.max() >= num_classes:
    raise ConfigError(f"fine-tuning needs a labelled train split with labels in "
                      f"[0, {num_classes}), got {len(train)} examples")
  subset = labelled_subset(train.labels, fraction, seed)
  devices = mesh.devices.size
  batch = min(batch_size, len(subset))
  batch -= batch % devices
  if batch < 1:
    raise ConfigError(f"fine-tuning on {fraction:g} of the labels: its {len(subset)} images are "
                      f"fewer than the {devices} devices; use a larger fraction")
  steps_per_epoch = len(subset) // batch
  tx = make_optimizer(learning_rate, epochs * steps_per_epoch)
  tag = int(round(fraction * 1e6))  # each fraction draws its own head, views and order
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _KEY_TAG), tag)
  head_key, view_key = jax.random.split(key)
  replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  state = jax.device_put(init_state(encoder, num_classes, tx, head_key), replicated)
  images = jax.device_put(np.ascontiguousarray(train.images[subset]), replicated)
  labels = jax.device_put(train.labels[subset].astype(np.int32), replicated)
  view_key = jax.device_put(view_key, replicated)
  step = jax.jit(make_step(encoder.train_def, tx, recipe, image_size),
                 in_shardings=(replicated, replicated, replicated, sharded, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)
  logging.info("fine-tuning on %d labelled images (%s of each class), %d epochs of %d steps of "
               "batch %d", len(subset), f"{fraction:g}", epochs, steps_per_epoch, batch)
  metrics = {}
  for epoch in range(epochs):
    order = np.random.default_rng([seed, _KEY_TAG, tag, epoch]).permutation(len(subset))
    for index in range(steps_per_epoch):
      rows = order[index * batch:(index + 1) * batch].astype(np.int32)
      state, metrics = step(state, images, labels, parallel.to_global(rows, mesh), view_key)
  if metrics:
    logging.info("fine-tuned on %s of the labels: last batch loss %.4f, top-1 %.3f",
                 f"{fraction:g}", *(float(v) for v in parallel.fetch(
                     (metrics["loss"], metrics["top1"]))))
  return state


def accuracy(eval_def, state: dict[str, Any], test: sources.ArraySplit, *, recipe: AugmentRecipe,
             mesh: jax.sharding.Mesh, batch_size: int) -> dict[str, float]:
  """{'top1', 'top5'} of a fine-tuned state on every example of test (eval-mode BatchNorm,
  un-augmented images, batches of batch_size rounded up to the devices, padding masked)."""
  devices = mesh.devices.size
  replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
  counts = jax.jit(make_counts(eval_def, recipe),
                   in_shardings=(replicated, replicated, sharded, sharded, sharded),
                   out_shardings=replicated)
  totals = [counts(state["params"], state["batch_stats"],
                   *parallel.to_global((b["image"], b["label"].astype(np.int32), b["mask"]), mesh))
            for b in sources.eval_batches(test, -(-batch_size // devices) * devices)]
  top1, top5 = np.sum(parallel.fetch(totals), axis=0)
  return {"top1": float(top1) / len(test), "top5": float(top5) / len(test)}
