"""The experiment: everything a run computes with, built once from (config, mesh, data sizes).

    experiment = build(config, mesh, steps_per_epoch=...)
    state = experiment.init_state()
    step = experiment.compile_step(state, *inputs)          # ahead of time, timed

It owns the model definitions, the optimiser and its schedule, the method, the shardings, the
initial state, the pure step and its jitted form (host views or device views), the one feature
function every evaluator shares, and the probe-batch diagnostics. `train`, `benchmark`, `memory`,
`evaluate` and the tests all build through it; nothing else constructs a step.

The whole config is read here: by validate_config (before any work: the types and the top-level
fields, then each section by its owner) and by build (everything it needs, read at the top, each
section handed to its owner). Besides, train reads only the run-level fields it drives
(train.RunSettings) and the workdir records the config as a document. The Experiment carries what
the loop, its hooks and the evaluators need, so nothing reads the config after build.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from rwl_jax import diagnostics, methods, models, optimizer, parallel, rng
from rwl_jax.configs import common
from rwl_jax.data import augment_jax, device_pipeline, inputs
from rwl_jax.data.recipe import AugmentRecipe
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate import evaluators
from rwl_jax.online_probe import OnlineProbe
from rwl_jax.run.step import ModelDefs, TrainState, make_train_step


def _positive_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _type_problem(value: Any, default: Any) -> str | None:
  """What is wrong with value's type, given the default's; None when it fits."""
  if isinstance(default, bool):
    return None if isinstance(value, bool) else "True or False"
  if isinstance(default, int):
    return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
  if isinstance(default, float):
    fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if fits else "a number"
  if isinstance(default, str):
    return None if isinstance(value, str) else "a string"
  if isinstance(default, (tuple, list)):
    fits = isinstance(value, (tuple, list)) and all(
        isinstance(item, (int, float)) and not isinstance(item, bool) for item in value)
    return None if fits else f"a tuple of numbers like {tuple(default)}"
  return None


def check_types(config: Mapping[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> None:
  """Every field of the config (as a dict) that the library defines has the type of its default
  (a config file or a JSON config.json can hold anything; an override of a tuple with a number is
  one line here rather than a traceback inside the augmentation)."""
  for name, default in defaults.items():
    if name not in config:
      continue
    value = config[name]
    if isinstance(default, Mapping):
      if not isinstance(value, Mapping):
        raise ConfigError(f"{prefix}{name} must be a section of fields, got {value!r}")
      check_types(value, default, f"{prefix}{name}.")
      continue
    expected = _type_problem(value, default)
    if expected:
      raise ConfigError(f"{prefix}{name} must be {expected}, got {value!r}")


def _check_run_fields(config: Mapping[str, Any]) -> None:
  """The top-level fields: what is trained for how long, and how the run is logged and kept."""
  if not 0 <= config["seed"] < 2**31:
    raise ConfigError(f"seed must be an integer in [0, 2**31), got {config['seed']}")
  if not _positive_int(config["num_epochs"]):
    raise ConfigError(f"num_epochs must be a positive integer, got {config['num_epochs']}")
  batch_size = config["global_batch_size"]
  if not (isinstance(batch_size, int) and batch_size >= 2):
    raise ConfigError(f"global_batch_size must be >= 2 (pairs need negatives) and an integer, "
                      f"got {batch_size!r}")
  for name in ("log_every_steps", "checkpoint_every_epochs", "keep_checkpoints"):
    if not _positive_int(config[name]):
      raise ConfigError(f"{name} must be an integer >= 1, got {config[name]!r}")
  if not isinstance(config["checkpoint_async"], bool):
    raise ConfigError(f"checkpoint_async must be True or False, got {config['checkpoint_async']!r}")
  profile = config["profile"]
  if not (isinstance(profile["start_step"], int) and profile["start_step"] >= 0
          and _positive_int(profile["num_steps"])):
    raise ConfigError(f"profile.start_step must be >= 0 (0 = off) and profile.num_steps >= 1, got "
                      f"{profile['start_step']}, {profile['num_steps']}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the values a run depends on, evaluation included, before any work starts; raises
  ConfigError with one line naming the problem. The types and the top-level fields are checked
  here on a copy; each section is checked by its owner (methods, optimizer, data.inputs,
  evaluate.evaluators, models, data.recipe)."""
  values = config.to_dict()
  check_types(values, common.get_config().to_dict())
  _check_run_fields(values)
  owners = ((methods.validate, (config,), {}),
            (optimizer.validate, (config.optimizer,), {"num_epochs": config.num_epochs}),
            (inputs.validate, (config.data,), {}),
            (evaluators.validate, (config.eval,), {}),
            (models.validate, (config.model,), {"image_size": config.data.image_size}),
            (AugmentRecipe.from_config, (config.augment,), {}))
  for check, sections, settings in owners:
    check(*sections, **settings)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The built experiment (see the module docstring). Fields are read-only; build() makes one.

  It carries the few settings of the config that the loop, its hooks and the evaluators need
  (batch size, epochs, image size, seed, the input path, the evaluation batch size), so nothing
  after build() reads the config.
  """

  mesh: jax.sharding.Mesh
  method: methods.Method
  recipe: AugmentRecipe
  defs: ModelDefs
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  global_batch_size: int
  num_epochs: int
  steps_per_epoch: int
  num_steps: int
  image_size: int
  seed: int
  augment_on: str  # where the views are made: 'host' (tf.data) or 'device' (in the step)
  eval_batch_size: int  # the feature extraction's global batch (eval.batch_size)
  train_step: Callable  # the pure step on ready-made views: (state, {'view1', 'view2'})
  jitted_step: Callable  # jit of the step the config's input path feeds (host or device views)
  features: Callable  # jit((params, batch_stats, uint8 images, rows)) -> (features, rows)
  probe: Callable  # jit((params, batch_stats, uint8 images)) -> {diagnostic: value}
  online_probe: OnlineProbe | None  # the linear classifier trained in the step (eval.online_probe)
  _init: Callable = dataclasses.field(repr=False)

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return parallel.replicated(self.mesh)

  @property
  def data_sharded(self) -> jax.sharding.NamedSharding:
    return parallel.data_sharded(self.mesh)

  def init_state(self) -> TrainState:
    """The initial state, created directly into replicated device memory."""
    return self._init()

  def abstract_state(self) -> TrainState:
    """The state's shapes, dtypes and shardings, with nothing allocated (restore targets)."""
    return jax.eval_shape(self._init)

  def host_inputs_spec(self) -> tuple[dict[str, jax.ShapeDtypeStruct]]:
    """The abstract inputs of the host-views step: float32 views [B, S, S, 3] (and int32 labels
    [B] with the online probe), data-sharded."""
    size, batch_size = self.image_size, self.global_batch_size
    view = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32,
                                sharding=self.data_sharded)
    spec = {"view1": view, "view2": view}
    if self.online_probe is not None:
      spec["label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=self.data_sharded)
    return (spec,)

  def compile_step(self, state: Any, *inputs: Any,
                   compiler_options: dict[str, Any] | None = None) -> tuple[Callable, float]:
    """(the step compiled ahead of time for these (abstract or real) inputs, seconds taken).

    Compiling before the loop keeps compilation out of every timed window, and a compiled step
    refuses inputs of another shape or sharding instead of silently recompiling.
    compiler_options: XLA options for this compilation only ({'xla_gpu_autotune_level': '4'}),
    as the benchmark's variants compare them.
    """
    start = time.perf_counter()
    compiled = self.jitted_step.lower(state, *inputs).compile(compiler_options=compiler_options)
    return compiled, time.perf_counter() - start

  def learning_rate(self, step: int) -> float:
    """The learning rate the step numbered `step` (1-based, as logged) used."""
    return float(self.schedule(step - 1))


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
          steps_per_epoch: int, num_classes: int | None = None) -> Experiment:
  """Builds the experiment of a validated config on `mesh` for a split of steps_per_epoch batches
  (and num_classes labels, needed only by the online probe). The one reader of the whole config:
  it reads what it needs here, at the top, and hands each owner its section."""
  seed, num_epochs, batch_size = config.seed, config.num_epochs, config.global_batch_size
  image_size, augment_on = config.data.image_size, config.data.augment_on
  model_config, temperature = config.model, float(config.temperature)
  optimizer_config, augment = config.optimizer, config.augment
  evaluation = config.eval
  with_online_probe, eval_batch_size = evaluation.online_probe, evaluation.batch_size
  online_probe_learning_rate = float(evaluation.online_probe_learning_rate)
  method = methods.get(config, mesh)  # the method's own sections (its loss, EMA, heads)
  if steps_per_epoch < 1:
    raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
  if with_online_probe and not (num_classes or 0) >= 2:
    raise ConfigError(f"eval.online_probe needs the dataset's classes (>= 2), got {num_classes}")
  parallel.check_batch_divisible(batch_size, mesh)
  models.check_devices(model_config, mesh.devices.size)
  recipe = AugmentRecipe.from_config(augment)
  tx, schedule = optimizer.create(optimizer_config, num_epochs=num_epochs,
                                  steps_per_epoch=steps_per_epoch)
  num_steps = steps_per_epoch * num_epochs
  replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)

  build_network = lambda: models.build_network(model_config, seed=seed,
                                               predictor=method.predictor, image_size=image_size)
  abstract_model = nnx.eval_shape(build_network)
  train_def = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)[0]
  abstract_model.eval()  # BatchNorm uses its running statistics in evaluation.
  eval_def = nnx.split(abstract_model, nnx.Param, nnx.BatchStat)[0]
  defs = ModelDefs(train=train_def, eval=eval_def)
  online_probe = None
  if with_online_probe:
    online_probe = OnlineProbe(num_features=abstract_model.encoder.num_features,
                               num_classes=num_classes, learning_rate=online_probe_learning_rate)

  def init() -> TrainState:
    # A method with an EMA target starts it as an exact copy of the online network (BYOL).
    _, params, batch_stats = nnx.split(build_network(), nnx.Param, nnx.BatchStat)
    if method.ema_target:
      target_params, target_batch_stats = jax.tree.map(jnp.copy, (params, batch_stats))
    else:
      target_params, target_batch_stats = nnx.State({}), nnx.State({})
    probe_params, probe_opt_state = online_probe.init() if online_probe else ({}, {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), target_params=target_params,
                      target_batch_stats=target_batch_stats, probe_params=probe_params,
                      probe_opt_state=probe_opt_state)

  train_step = make_train_step(defs, tx, method, seed=seed, total_steps=num_steps,
                               online_probe=online_probe)
  if augment_on == "device":
    # Inputs (state, uint8 images on every device, the batch's indices): views made in the step.
    step = device_pipeline.with_device_views(train_step, recipe, seed=seed,
                                             image_size=image_size, mesh=mesh)
    in_shardings = (replicated, sharded, sharded)
  else:
    step, in_shardings = train_step, (replicated, sharded)
  jitted_step = jax.jit(step, in_shardings=in_shardings, out_shardings=(replicated, replicated),
                        donate_argnums=0)

  def features(params, batch_stats, images, rows):
    """Frozen encoder features of uint8 images (eval-mode BatchNorm), and the rows' other arrays
    (labels, mask, positions), replicated so every process gets the rows all processes fed."""
    model = nnx.merge(eval_def, params, batch_stats)
    x = recipe.normalize(images.astype(jnp.float32) / 255.0,
                         lambda values: jnp.asarray(values, jnp.float32))
    return model.encoder(x).astype(jnp.float32), rows

  def probe(params, batch_stats, images):
    """The diagnostics of rwl_jax.diagnostics on a fixed probe batch: two views of the same
    images from the 'probe' stream at step 0 (so only the network changes between log steps),
    a train-mode forward pass as the loss sees it, BatchNorm's updates discarded."""
    key = rng.stream_key(seed, 0, "probe")
    # fold_in(1), fold_in(2) keep the probe's draws as before; view - 1 picks the recipe's
    # per-view blur/solarisation probabilities (first, second), as the train step's views do.
    view1, view2 = (augment_jax.random_view(jax.random.fold_in(key, view), images, recipe,
                                            image_size, view - 1) for view in (1, 2))
    model = nnx.merge(train_def, params, batch_stats)
    features, projections = model(jnp.concatenate([view1, view2]))
    z1, z2 = jnp.split(projections.astype(jnp.float32), 2)
    return diagnostics.probe_diagnostics(features.astype(jnp.float32), z1, z2, temperature)

  return Experiment(
      mesh=mesh, method=method, recipe=recipe, defs=defs, tx=tx, schedule=schedule,
      global_batch_size=batch_size, num_epochs=num_epochs, steps_per_epoch=steps_per_epoch,
      num_steps=num_steps, image_size=image_size, seed=seed, augment_on=augment_on,
      eval_batch_size=eval_batch_size, train_step=train_step, jitted_step=jitted_step,
      features=jax.jit(features, in_shardings=(replicated, replicated, sharded, sharded),
                       out_shardings=replicated),
      probe=jax.jit(probe, in_shardings=(replicated, replicated, sharded),
                    out_shardings=replicated),
      online_probe=online_probe,
      _init=jax.jit(init, out_shardings=replicated))
