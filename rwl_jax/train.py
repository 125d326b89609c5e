"""Training: build the state, shard it, run the jitted step over the data, evaluate, save.

One straight path: source arrays -> two augmented views (tf.data, host) -> global batch sharded
on the mesh's data axis -> jit(train_step) -> metrics, checkpoints, results.json.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import nnx, struct

from rwl_jax import losses, methods, models, parallel, paths
from rwl_jax.checkpoint import Checkpointer
from rwl_jax.data import device_pipeline, order, sources
from rwl_jax.data.recipe import AugmentRecipe
from rwl_jax.errors import ConfigError, RunError
from rwl_jax.evaluate import features as feature_lib
from rwl_jax.metrics import MetricWriter, log_progress


@struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree, so it shards and checkpoints as one.

  target_params / target_batch_stats: the EMA target network of BYOL-style methods, a full copy of
  the online network's state (same graph, so the same pytree structure; its predictor copy is never
  called), and empty States for methods without a target.
  """

  step: jax.Array
  params: nnx.State
  batch_stats: nnx.State
  opt_state: optax.OptState
  target_params: nnx.State
  target_batch_stats: nnx.State


@struct.dataclass
class ModelDefs:
  """The static halves of the network split: graph definitions for training and evaluation."""

  train: nnx.GraphDef = struct.field(pytree_node=False)
  eval: nnx.GraphDef = struct.field(pytree_node=False)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the values a run depends on; raises ConfigError with one line naming the problem."""
  methods.check_method_config(config)
  if not (isinstance(config.num_epochs, int) and config.num_epochs >= 1):
    raise ConfigError(f"num_epochs must be a positive integer, got {config.num_epochs}")
  if config.global_batch_size < 2:
    raise ConfigError(f"global_batch_size must be >= 2 (pairs need negatives), got "
                      f"{config.global_batch_size}")
  if not config.optimizer.learning_rate > 0:
    raise ConfigError(f"optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}")
  if config.optimizer.name not in ("sgd", "lars"):
    raise ConfigError(f"unknown optimizer.name {config.optimizer.name!r}; choose 'sgd' or 'lars'")
  if not 0 <= config.optimizer.warmup_epochs < config.num_epochs:
    raise ConfigError(f"optimizer.warmup_epochs must be in [0, num_epochs), got "
                      f"{config.optimizer.warmup_epochs}")
  if config.log_every_steps < 1 or config.checkpoint_every_epochs < 1 or config.keep_checkpoints < 1:
    raise ConfigError("log_every_steps, checkpoint_every_epochs and keep_checkpoints must be >= 1")
  if config.data.augment_on not in ("host", "device"):
    raise ConfigError(f"data.augment_on must be 'host' (tf.data) or 'device' (JAX), got "
                      f"{config.data.augment_on!r}")
  if not (isinstance(config.data.num_shards, int) and config.data.num_shards >= 0):
    raise ConfigError(f"data.num_shards must be an integer >= 0 (0 = one per process), got "
                      f"{config.data.num_shards!r}")
  if config.eval.batch_size < 1:
    raise ConfigError(f"eval.batch_size must be >= 1, got {config.eval.batch_size}")
  AugmentRecipe.from_config(config.augment)
  models.compute_dtype(config.model.dtype)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """SGD (momentum, weight decay on every parameter, as torch.optim.SGD) or LARS; warmup+cosine."""
  opt = config.optimizer
  total_steps = steps_per_epoch * config.num_epochs
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


def create_train_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                       mesh: jax.sharding.Mesh) -> tuple[ModelDefs, TrainState]:
  """Builds the network and optimizer state directly into replicated device memory.

  The shapes come from eval_shape first, so the parameters are created once, already sharded. A
  method with an EMA target starts it as an exact copy of the online network (BYOL).
  """
  method = methods.get(config)
  build = lambda: models.build_network(config.model, seed=config.seed, predictor=method.predictor)
  abstract_model = nnx.eval_shape(build)
  train_def = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)[0]
  abstract_model.eval()  # BatchNorm uses its running statistics in evaluation.
  eval_def = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)[0]

  def init() -> TrainState:
    _, params, batch_stats = nnx.split(build(), nnx.Param, nnx.BatchStat)
    if method.ema_target:
      target_params, target_batch_stats = jax.tree.map(jnp.copy, (params, batch_stats))
    else:
      target_params, target_batch_stats = nnx.State({}), nnx.State({})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), target_params=target_params,
                      target_batch_stats=target_batch_stats)

  state = jax.jit(init, out_shardings=parallel.replicated(mesh))()
  return ModelDefs(train=train_def, eval=eval_def), state


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


def make_train_step(defs: ModelDefs, tx: optax.GradientTransformation, method: methods.Method,
                    *, seed: int, total_steps: int
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The pure step: (state, batch) -> (state, metrics); batch holds 'view1' and 'view2'.

  Randomness (GSG's pairing) comes from methods.step_key(seed, state.step), so a resumed run
  repeats the same steps exactly. With an EMA target, the momentum follows
  methods.ema_momentum(state.step, total_steps, method.base_momentum) and the target moves toward
  the online parameters AFTER this step's update, as in BYOL.

  Every branch makes one forward pass over both views together, so BatchNorm sees all 2B
  images, as in the RWL reference (the BYOL/SimSiam codes run the views separately, normalising
  each view's B images on their own; a documented difference).
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    views = interleave_views(batch["view1"], batch["view2"])
    key = methods.step_key(seed, state.step)

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
      _, projections = model(views)
      z1, z2 = split_views(projections.astype(jnp.float32))
      p1 = p2 = None
      if method.predictor:
        p1, p2 = split_views(model.predictor(projections).astype(jnp.float32))
      # Without an EMA network the targets are the online projections (SimSiam); the predictive
      # losses stop their gradient themselves.
      loss = method.loss(methods.Outputs(z1, z2, p1, p2),
                         targets if method.ema_target else (z1, z2), key)
      return loss, jax.lax.stop_gradient(z1)

    # nnx.value_and_grad differentiates the Params and carries BatchNorm's updates out.
    (loss, z1), grads = nnx.value_and_grad(loss_of, has_aux=True)(model)
    batch_stats = nnx.state(model, nnx.BatchStat)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # representation_std ~1 for spread-out projections, 0 when they collapse to one point.
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "representation_std": losses.normalized_std(z1)}
    if method.ema_target:
      momentum = methods.ema_momentum(state.step, total_steps, method.base_momentum)
      target_params = methods.ema_update(state.target_params, params, momentum)
      metrics["ema_momentum"] = momentum
    new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                           opt_state=opt_state, target_params=target_params,
                           target_batch_stats=target_batch_stats)
    return new_state, metrics

  return train_step


def compile_train_step(train_step, mesh: jax.sharding.Mesh):
  replicated = parallel.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated, parallel.data_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def evaluate(config: ml_collections.ConfigDict, defs: ModelDefs, state: TrainState,
             data: ProcessData, mesh: jax.sharding.Mesh, *,
             linear: bool = True) -> dict[str, float]:
  """kNN (and linear-probe) top-1 on the test split, from frozen encoder features.

  Each process extracts the features of the examples it holds; every process gets all of them.
  """
  from rwl_jax.evaluate import knn_top1, linear_probe_top1  # pylint: disable=g-import-not-at-top

  features = encoder_features(config, defs, state, data, mesh, ("train", "test"))
  (train_features, train_labels), (test_features, test_labels) = features["train"], features["test"]
  num_classes = len(data.class_names)
  results = {"knn_top1": knn_top1(train_features, train_labels, test_features, test_labels,
                                  num_classes=num_classes, k=config.eval.knn_k,
                                  temperature=config.eval.knn_temperature)}
  if linear:
    results["linear_top1"] = linear_probe_top1(
        train_features, train_labels, test_features, test_labels,
        num_classes=num_classes, epochs=config.eval.linear_epochs,
        batch_size=config.eval.linear_batch_size, learning_rate=config.eval.linear_learning_rate,
        weight_decay=config.eval.linear_weight_decay, seed=config.seed)
  return results


@dataclasses.dataclass(frozen=True)
class ProcessData:
  """This process's examples of the train and eval splits, and how each split is sharded."""

  train: sources.ArraySplit
  test: sources.ArraySplit
  train_shards: order.DataShards
  test_shards: order.DataShards

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.train.class_names


def encoder_features(config: ml_collections.ConfigDict, defs: ModelDefs, state: TrainState,
                     data: ProcessData, mesh: jax.sharding.Mesh, splits: tuple[str, ...]
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{split: ([N, D] frozen encoder features, [N] labels)} for 'train' and/or 'test', each in
  split order with every process's examples (one compiled feature function for all splits)."""
  feature_fn = feature_lib.make_feature_fn(defs.eval, AugmentRecipe.from_config(config.augment),
                                           mesh)
  batch_size = feature_lib.round_up(config.eval.batch_size, mesh.devices.size)
  held = {"train": (data.train, data.train_shards), "test": (data.test, data.test_shards)}
  unknown = set(splits) - set(held)
  if unknown:
    raise ConfigError(f"features are for the 'train' and 'test' splits, got {sorted(unknown)}")
  return {split: feature_lib.extract(feature_fn, state.params, state.batch_stats, *held[split],
                                     batch_size, mesh)
          for split in splits}


def load_data(config: ml_collections.ConfigDict) -> ProcessData:
  """Reads only this process's shards of the train and eval splits (order.DataShards)."""
  data = config.data
  train_source = sources.open_split(data, data.train_split, data.max_train_examples)
  test_source = sources.open_split(data, data.eval_split, data.max_eval_examples)
  if train_source.class_names != test_source.class_names:
    raise ConfigError(f"the {data.train_split!r} and {data.eval_split!r} splits have different "
                      f"classes: {train_source.class_names} vs {test_source.class_names}")
  train_shards, test_shards = (
      order.data_shards(source.num_examples, data.num_shards, jax.process_index(),
                        jax.process_count()) for source in (train_source, test_source))
  for name, shards in (("train", train_shards), ("test", test_shards)):
    logging.info("process %d of %d reads %s examples [%d, %d) of %d", jax.process_index(),
                 jax.process_count(), name, *shards.process_range(), shards.num_examples)
  return ProcessData(train=train_source.read(*train_shards.process_range()),
                     test=test_source.read(*test_shards.process_range()),
                     train_shards=train_shards, test_shards=test_shards)


def _save_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


class _MetricBuffer:
  """Per-step metrics stay on device until a log step, so the loop never waits for the device."""

  def __init__(self):
    self._pending: list[dict[str, jax.Array]] = []

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self._pending.append(metrics)

  def drain(self, first_step: int) -> dict[str, float]:
    """Means over the buffered steps; raises RunError if any loss is not finite."""
    if not self._pending:
      return {}
    stacked = parallel.fetch(self._pending)
    self._pending = []
    losses = np.asarray([m["loss"] for m in stacked], np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      raise RunError(f"loss became {losses[bad[0]]} at step {first_step + bad[0] + 1}; stopped "
                     "without saving it (the last good checkpoint is kept); lower "
                     "optimizer.learning_rate or raise temperature")
    return {name: float(np.mean([m[name] for m in stacked])) for name in stacked[0]}


class _StopRequested(Exception):
  """Ctrl-C or SIGTERM arrived; raised between steps, where the state is whole."""


class _StopSignals:
  """While active, SIGINT and SIGTERM only set `cause`; the loop stops at the next step boundary.

  Raising from the handler itself could land inside a step whose donated input buffers are
  already gone, leaving nothing to save. A second signal stops at once (KeyboardInterrupt).
  """

  _CAUSES = {signal.SIGINT: "interrupted", signal.SIGTERM: "stopped by SIGTERM"}

  def __init__(self):
    self.cause: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.cause is not None:
      raise KeyboardInterrupt
    self.cause = self._CAUSES[signum]

  def check(self) -> None:
    if self.cause is not None:
      raise _StopRequested(self.cause)

  def install(self) -> "_StopSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self._CAUSES}
    return self

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def _input_path(config, base_step, data: ProcessData, recipe: AugmentRecipe,
                mesh: jax.sharding.Mesh, first_step: int):
  """(compiled step, epoch_inputs(epoch, start_step) -> iterator of the step's extra arguments).

  The loop asks for the epochs in order, the first from first_step (a resumed run's step) on.
  'host': tf.data makes the two views on the CPU and each step receives them; one pipeline for
  the whole run, so its prefetching carries over epoch boundaries.
  'device': this process's uint8 examples live on its devices and each step receives only the
  batch's indices; the same epoch order, views made in JAX inside the step (device_pipeline).
  """
  if config.data.augment_on == "host":
    from rwl_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)

    steps_per_epoch = data.train_shards.steps_per_epoch(config.global_batch_size)
    batches = pipeline.train_batches(  # a generator: nothing runs until the first batch
        data.train, shards=data.train_shards, global_batch_size=config.global_batch_size,
        recipe=recipe, seed=config.seed, first_step=first_step,
        last_step=steps_per_epoch * config.num_epochs, prefetch=config.data.prefetch_batches)

    def host_inputs(epoch: int, start_step: int):
      for _ in range(start_step, steps_per_epoch):
        batch = next(batches)
        yield (parallel.to_global({"view1": batch["view1"], "view2": batch["view2"]}, mesh),)

    return compile_train_step(base_step, mesh), host_inputs

  images = device_pipeline.put_dataset(data.train.images, mesh,
                                       data.train_shards.max_process_examples)
  step = device_pipeline.with_device_views(base_step, recipe, seed=config.seed,
                                           image_size=config.data.image_size, mesh=mesh)

  def device_inputs(epoch: int, start_step: int):
    indices = data.train_shards.local_epoch_order(config.global_batch_size, config.seed, epoch)
    for local_indices in indices[start_step:]:
      yield images, parallel.to_global(local_indices.astype(np.int32), mesh)

  return device_pipeline.compile_device_step(step, mesh), device_inputs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike, *,
                       on_metrics: Callable[[int, int, dict[str, float]], None] | None = None
                       ) -> dict[str, Any]:
  """Trains config.method on config.data, resuming from workdir's checkpoints; returns results.

  Writes workdir/config.json, TensorBoard events, metrics.jsonl, checkpoints/ and results.json.
  on_metrics(step, num_steps, scalars), if given, sees every scalar write on process 0 (training
  averages, kNN evaluations, the final results), e.g. to drive a progress bar.
  """
  validate_config(config)
  workdir_path = paths.workdir(workdir)  # local or a URL (gs://), never a local 'gs:' folder
  workdir_path.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh()
  parallel.check_batch_divisible(config.global_batch_size, mesh)

  data = load_data(config)
  num_train = data.train_shards.num_examples
  steps_per_epoch = data.train_shards.steps_per_epoch(config.global_batch_size)
  if steps_per_epoch < 1:
    raise ConfigError(f"global_batch_size={config.global_batch_size} is larger than the "
                      f"{num_train} training images"
                      + (f" ({data.train_shards.num_shards} shards)"
                         if data.train_shards.num_shards > 1 else ""))
  num_steps = steps_per_epoch * config.num_epochs
  recipe = AugmentRecipe.from_config(config.augment)

  tx, schedule = create_optimizer(config, steps_per_epoch)
  defs, state = create_train_state(config, tx, mesh)
  checkpointer = Checkpointer(workdir_path, keep=config.keep_checkpoints)
  resumed_step, state = checkpointer.restore_newest_readable(state)
  if resumed_step is not None:
    logging.info("resumed from %s at step %d", checkpointer.directory, resumed_step)
  _save_config(config, workdir_path)

  base_step = make_train_step(defs, tx, methods.get(config, mesh), seed=config.seed,
                              total_steps=num_steps)
  step = int(parallel.fetch(state.step))
  if step > num_steps:
    raise ConfigError(f"the checkpoint in {workdir_path} is at step {step}, past this config's "
                      f"{num_steps} steps; use a new --workdir or more num_epochs")
  train_step, epoch_inputs = _input_path(config, base_step, data, recipe, mesh, step)
  writer = MetricWriter(workdir_path, on_write=None if on_metrics is None else (
      lambda step, scalars: on_metrics(step, num_steps, scalars)))
  metrics = _MetricBuffer()
  logging.info("%s on %d train / %d test images, %d devices, %d steps of batch %d",
               config.method, num_train, data.test_shards.num_examples, mesh.devices.size,
               num_steps, config.global_batch_size)

  if config.eval.knn_every_epochs and step == 0:
    # The untrained network's kNN: the origin of the accuracy-against-time curve.
    writer.write_scalars(0, evaluate(config, defs, state, data, mesh,
                                     linear=False))

  epoch_seconds: list[float] = []
  images_per_second: list[float] = []
  log_start_time, log_start_step = time.perf_counter(), step
  stop_signals = _StopSignals().install()
  try:
    for epoch in range(step // steps_per_epoch, config.num_epochs):
      epoch_start = time.perf_counter()
      epoch_first_step = step
      for inputs in epoch_inputs(epoch, step - epoch * steps_per_epoch):
        state, step_metrics = train_step(state, *inputs)
        metrics.add(step_metrics)
        step += 1
        stop_signals.check()
        if step % config.log_every_steps == 0 or step % steps_per_epoch == 0:
          averages = metrics.drain(log_start_step)
          now = time.perf_counter()
          rate = (step - log_start_step) * config.global_batch_size / (now - log_start_time)
          scalars = {"loss": averages.pop("loss"), "learning_rate": float(schedule(step - 1)),
                     "images_per_second": rate, **averages}
          if log_start_step > epoch_first_step or epoch > 0:
            images_per_second.append(rate)  # the first window of a run includes compilation
          log_progress(epoch + 1, config.num_epochs, step, num_steps, scalars)
          writer.write_scalars(step, scalars)
          log_start_time, log_start_step = now, step
      epoch_seconds.append(time.perf_counter() - epoch_start)
      writer.write_scalars(step, {"epoch_seconds": epoch_seconds[-1]})
      done = epoch + 1 == config.num_epochs
      if done or (epoch + 1) % config.checkpoint_every_epochs == 0:
        checkpointer.save(step, state)
      if config.eval.knn_every_epochs and not done and (epoch + 1) % config.eval.knn_every_epochs == 0:
        knn = evaluate(config, defs, state, data, mesh, linear=False)
        writer.write_scalars(step, knn)
        logging.info("epoch %d: kNN top-1 %.4f", epoch + 1, knn["knn_top1"])
      stop_signals.check()  # a signal during the save or the kNN: stop before the next epoch
  except (KeyboardInterrupt, _StopRequested) as stop:
    metrics.drain(log_start_step)  # never save a state whose loss went non-finite
    cause = str(stop) if isinstance(stop, _StopRequested) else "interrupted"
    try:
      if step not in checkpointer.all_steps():  # the signal may land right after a save
        checkpointer.save(step, state)
      checkpointer.close()
    except Exception:  # The signal landed inside a step whose donated input is gone.
      newest = checkpointer.latest_step()
      kept = (f"the newest checkpoint is step {newest} in {checkpointer.directory}"
              if newest is not None else "no checkpoint had been saved yet")
      raise RunError(f"{cause} twice, during step {step + 1}, whose state could not be saved; "
                     f"{kept}") from None
    finally:
      writer.close()
    raise RunError(f"{cause} at step {step}; checkpoint saved in {checkpointer.directory}, "
                   "rerun the same command to resume") from None
  except RunError:
    checkpointer.close()
    writer.close()
    raise
  finally:
    stop_signals.restore()
  checkpointer.close()

  logging.info("evaluating: kNN (k=%d) and linear probe on frozen features", config.eval.knn_k)
  results = evaluate(config, defs, state, data, mesh)
  writer.write_scalars(step, results)
  writer.close()
  # The first epoch of a run includes compilation; report steady-state epochs where there are any.
  steady = epoch_seconds[1:] or epoch_seconds
  results.update(
      method=config.method, epochs=config.num_epochs, steps=step,
      global_batch_size=config.global_batch_size,
      seconds_per_epoch=float(np.median(steady)) if steady else None,
      images_per_second=float(np.median(images_per_second)) if images_per_second else None,
      data=config.data.image_dir or f"tfds:{config.data.tfds_name}",
      train_examples=num_train, test_examples=data.test_shards.num_examples,
      data_shards=data.train_shards.num_shards,
      devices=[str(d.device_kind) for d in mesh.devices.flat], jax_version=jax.__version__,
      config=json.loads(config.to_json_best_effort()))
  if jax.process_index() == 0:
    (workdir_path / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
  logging.info("kNN top-1 %.4f, linear top-1 %.4f -> %s", results["knn_top1"],
               results["linear_top1"], workdir_path / "results.json")
  return results
