"""Training: data -> experiment -> loop(hooks) -> evaluators -> results.json.

    results = train_and_evaluate(config, workdir)

Reads this process's shards of the data, builds the experiment, resumes from the workdir's newest
readable checkpoint, runs the loop with its hooks (log, diagnostics, progress, checkpoint,
periodic evaluation, profile), evaluates the final state with every evaluator and writes
workdir/results.json. Everything opened here is closed in one place (an ExitStack), whatever
ends the run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from rwl_jax import compilation, parallel, paths
from rwl_jax.data import inputs
from rwl_jax.errors import ConfigError, DamagedFile, RunError
from rwl_jax.evaluate.evaluators import (FeatureExtractor, build_evaluators, compile_tasks,
                                         run_evaluators)
from rwl_jax.run import experiment as experiment_lib
from rwl_jax.run import hooks as hooks_lib
from rwl_jax.run import loop
from rwl_jax.run import workdir as workdir_lib
from rwl_jax.run.checkpoint import Checkpointer
from rwl_jax.run.metrics import MetricWriter, read_results, write_results


def _median(values: list[float]) -> float | None:
  return float(np.median(values)) if values else None


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """What drives the run around the experiment (logging, checkpoints, profile, the compilation
  cache), the sections handed to the data and the evaluators, and the config as recorded in
  results.json. Read once, here; the experiment reads the rest (experiment.build)."""

  compilation_cache_dir: str
  global_batch_size: int  # the batches the data is cut into (steps per epoch)
  log_every_steps: int
  checkpoint_every_epochs: int
  keep_checkpoints: int
  checkpoint_async: bool
  profile_start_step: int
  profile_num_steps: int
  probe_batch_size: int  # the diagnostics' probe batch (0 = off)
  online_probe: bool  # the step trains on the training split's labels
  data: ml_collections.ConfigDict  # the data section, for inputs.load_data
  data_name: str  # the data as results.json names it: the image folder or tfds:NAME
  evaluation: ml_collections.ConfigDict  # the eval section, for the evaluators
  record: dict[str, Any]  # the whole config as JSON values

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "RunSettings":
    return cls(compilation_cache_dir=config.compilation_cache_dir,
               global_batch_size=config.global_batch_size,
               log_every_steps=config.log_every_steps,
               checkpoint_every_epochs=config.checkpoint_every_epochs,
               keep_checkpoints=config.keep_checkpoints, checkpoint_async=config.checkpoint_async,
               profile_start_step=config.profile.start_step,
               profile_num_steps=config.profile.num_steps,
               probe_batch_size=config.eval.probe_batch_size,
               online_probe=config.eval.online_probe, data=config.data,
               data_name=config.data.image_dir or f"tfds:{config.data.tfds_name}",
               evaluation=config.eval, record=json.loads(config.to_json_best_effort()))


def make_hooks(settings: RunSettings, experiment, data: inputs.ProcessData,
               workdir: epath.Path, checkpointer: Checkpointer,
               extractor: FeatureExtractor, evaluators: list[Any]) -> list[hooks_lib.Hook]:
  """The run's hooks in the order they run after a step: metrics are logged (and a non-finite
  loss stopped) before anything is saved."""
  spe = experiment.steps_per_epoch
  every_log = hooks_lib.Schedule(every_steps=settings.log_every_steps, every_epochs=1)
  hooks = [hooks_lib.LogMetrics(every_log)]
  if settings.probe_batch_size:
    probe = inputs.probe_images(data, settings.probe_batch_size, experiment.mesh)
    hooks.append(hooks_lib.ProbeDiagnostics(every_log, probe))
  progress = hooks_lib.Progress(every_log)
  hooks.append(progress)
  hooks.append(hooks_lib.Checkpoint(hooks_lib.Schedule(
      every_epochs=settings.checkpoint_every_epochs, at_end=True), checkpointer))
  if any(evaluator.every_epochs for evaluator in evaluators):
    hooks.append(hooks_lib.Evaluate(evaluators, extractor, spe, experiment.num_steps))
  if settings.profile_start_step:
    hooks.append(hooks_lib.Profile(settings.profile_start_step, settings.profile_num_steps,
                                   workdir / "profile"))
  progress.watch(hooks)  # its ETA foresees their calls
  return hooks


def _find(hooks: list[hooks_lib.Hook], kind: type) -> Any:
  return next(hook for hook in hooks if isinstance(hook, kind))


def _compile_tasks(experiment, extractor: FeatureExtractor, evaluators: list[Any],
                   hooks: list[hooks_lib.Hook]) -> dict[str, Callable[[], Any]]:
  """{name: task} compiling the programs the run calls besides its init and its step: the
  evaluators' (evaluators.compile_tasks) and the probe-batch diagnostics'. A jitted function
  called later with the same shapes reuses the executable compiled here."""
  abstract = experiment.abstract_state()
  tasks = compile_tasks(evaluators, extractor, abstract)
  diagnostics = [hook for hook in hooks if isinstance(hook, hooks_lib.ProbeDiagnostics)]
  if diagnostics:
    tasks["diagnostics"] = lambda: experiment.probe.lower(
        abstract.params, abstract.batch_stats, diagnostics[0].probe_images).compile()
  return tasks


def _timed(task: Callable[[], Any]) -> float:
  start = time.perf_counter()
  task()
  return time.perf_counter() - start


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.PathLike, *,
                       on_metrics: Callable[[int, int, dict[str, float]], None] | None = None,
                       accept_config_change: bool = False) -> dict[str, Any]:
  """Trains config.method on config.data, resuming from workdir's checkpoints; returns results.

  Writes workdir/config.json, TensorBoard events, metrics.jsonl, checkpoints/ and results.json.
  A workdir holds one run at a time (workdir.WorkdirLock), and a rerun whose settings change what
  is trained stops before anything in the workdir changes, unless accept_config_change
  (workdir.check_rerun). on_metrics(step, num_steps, scalars), if given, sees every scalar write
  on process 0 (training averages, diagnostics, evaluations, the final results), e.g. to drive a
  progress bar.
  """
  experiment_lib.validate_config(config)
  settings = RunSettings.from_config(config)
  compilation.use_cache(settings.compilation_cache_dir)  # before anything compiles
  workdir_path = paths.workdir(workdir)  # local or a URL (gs://), never a local 'gs:' folder
  workdir_lib.prepare(workdir_path)

  with contextlib.ExitStack() as cleanup:
    compiles = cleanup.enter_context(compilation.CompileLog())  # what this run compiles
    # The workdir first: a second run or a refused rerun stops in seconds, before any data.
    cleanup.enter_context(workdir_lib.WorkdirLock(workdir_path))
    # From here a signal only records itself: it is acted on between phases and between steps
    # (a KeyboardInterrupt raised inside a library's callback during compilation can be lost).
    signals = cleanup.enter_context(loop.StopSignals(
        hooks_lib.Schedule(every_steps=settings.log_every_steps, every_epochs=1)))
    checkpointer = Checkpointer(workdir_path, keep=settings.keep_checkpoints,
                                asynchronous=settings.checkpoint_async)
    cleanup.callback(checkpointer.close)
    changes = workdir_lib.check_rerun(workdir_path, config,
                                      has_checkpoint=bool(checkpointer.all_steps()),
                                      accept_change=accept_config_change)
    mesh = parallel.make_mesh()
    data = inputs.load_data(settings.data, train_labels=settings.online_probe)
    experiment = experiment_lib.build(config, mesh, steps_per_epoch=data.steps_per_epoch(
        settings.global_batch_size), num_classes=len(data.class_names))
    num_steps = experiment.num_steps
    signals.stop_if_pending("while the data was read")
    evaluators = build_evaluators(
        settings.evaluation, num_classes=len(data.class_names), seed=experiment.seed,
        experiment=experiment, data=data) if data.evaluates else []
    if not data.evaluates:
      logging.warning("evaluation is off (no kNN, linear probe or accuracy in results.json): %s",
                      data.evaluation_off)
    extractor = FeatureExtractor(experiment, data)
    hooks = make_hooks(settings, experiment, data, workdir_path, checkpointer, extractor,
                       evaluators)
    for hook in hooks:
      if hasattr(hook, "close"):
        cleanup.callback(hook.close)

    # Every program of the run compiles now, the evaluation's and the diagnostics' on threads
    # beside the init's and the step's (XLA compiles without the GIL): nothing compiles in the
    # loop, and the first evaluation costs its forward pass.
    compile_start = time.perf_counter()
    ahead = _compile_tasks(experiment, extractor, evaluators, hooks)
    # One core stays with the main thread (init, restore, step); on 2 cores the rest compile one
    # after another on one thread beside it.
    workers = max(1, min(len(ahead), (os.cpu_count() or 2) - 1))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="compile") as pool:
      compiling = {name: pool.submit(_timed, task) for name, task in ahead.items()}
      resumed_step, state = checkpointer.restore_newest_readable(experiment.init_state())
      step = int(parallel.fetch(state.step))
      if resumed_step is not None:
        logging.info("resumed from %s at step %d", checkpointer.directory, resumed_step)
      if step > num_steps:
        raise ConfigError(f"the checkpoint in {workdir_path} is at step {step}, past this "
                          f"config's {num_steps} steps; use a new --workdir or more num_epochs")
      train_inputs = inputs.train_inputs(experiment, data, first_step=step)
      step_fn, compile_seconds = experiment.compile_step(state, *train_inputs.abstract)
      experiment.learning_rate(step + 1)  # its eager ops compile here, not at the first log
      ahead_seconds = {name: future.result() for name, future in compiling.items()}
    compile_wall = time.perf_counter() - compile_start
    log, checkpoint = _find(hooks, hooks_lib.LogMetrics), _find(hooks, hooks_lib.Checkpoint)
    # Accepted: every check has passed, so only now does anything in the workdir change.
    signals.stop_if_pending("while the step compiled")
    workdir_lib.record_config(workdir_path, config, changes, step)
    writer = MetricWriter(workdir_path, resume_step=step, on_write=None if on_metrics is None else (
        lambda at, scalars: on_metrics(at, num_steps, scalars)))
    cleanup.callback(writer.close)
    logging.info("%s on %d train / %d test images, %d devices, %d steps of batch %d; step "
                 "compiled in %.1f s; with init and %s: %.1f s", experiment.method.name,
                 data.train_shards.num_examples, _num_examples(data.test_shards),
                 mesh.devices.size, num_steps, experiment.global_batch_size, compile_seconds,
                 ", ".join(f"{name} {seconds:.1f} s" for name, seconds in ahead_seconds.items())
                 or "nothing else", compile_wall)

    context = hooks_lib.Context(experiment=experiment, writer=writer,
                                timer=hooks_lib.WindowTimer(), step=step, state=state)
    if step == 0:
      writer.write_scalars(0, {"compile_seconds": compile_seconds})
      knn = [e for e in evaluators if e.name == "knn" and e.every_epochs]
      if knn:  # the untrained network's kNN: the origin of the accuracy-against-time curve
        with context.timer.hook(hooks_lib.Evaluate.name):  # the ETA's first evaluation time
          writer.write_scalars(0, run_evaluators(knn, extractor, state))
    log.start(step, context.timer, steps_per_epoch=experiment.steps_per_epoch)
    _find(hooks, hooks_lib.Progress).start(step)
    try:
      state = loop.run(context, step_fn, train_inputs.epoch_inputs, hooks, signals)
    except (loop.StopRequested, KeyboardInterrupt) as stop:
      cause = str(stop) if isinstance(stop, loop.StopRequested) else "interrupted"
      log.drain(context)  # never save a state whose loss went non-finite
      try:
        with signals.shielded():  # a further signal waits for the save
          checkpoint.save(context.step, context.state)
          checkpointer.wait()  # complete and committed before the process says so and exits
      except RunError as error:  # the save itself failed (a full disk): its line says what is kept
        raise RunError(f"{cause} at step {context.step}, but {error}") from None
      except (Exception, KeyboardInterrupt):  # pylint: disable=broad-except
        # A second signal inside the step, whose donated input is gone: nothing to save.
        newest = checkpointer.latest_step()
        kept = (f"the newest checkpoint is step {newest} in {checkpointer.directory}"
                if newest is not None else "no checkpoint had been saved yet")
        raise RunError(f"{cause} twice: the state of step {context.step} could not be saved; "
                       f"{kept}") from None
      raise RunError(f"{cause} at step {context.step}; checkpoint saved in "
                     f"{checkpointer.directory}, rerun the same command to resume") from None

    logging.info("evaluating: %s on frozen features", ", ".join(e.name for e in evaluators))
    results = run_evaluators(evaluators, extractor, state)  # while the final save is written
    checkpointer.wait()  # results.json only once the final checkpoint is complete
    writer.write_scalars(context.step, results)

    # The first window after a (re)start runs the step for the first time; report steady ones.
    steady = [w for w in log.windows if w["first_step"] != step] or log.windows
    results.update(
        method=experiment.method.name, epochs=experiment.num_epochs, steps=context.step,
        global_batch_size=experiment.global_batch_size, compile_seconds=compile_seconds,
        **compiles.summary(),
        seconds_per_epoch=_median(log.epoch_seconds[1:] or log.epoch_seconds),
        images_per_second=_median([w["images_per_second"] for w in steady]),
        step_seconds=_median([w["step_seconds"] for w in steady]),
        data_wait_seconds=_median([w["data_wait_seconds"] for w in steady]),
        data=settings.data_name,
        train_examples=data.train_shards.num_examples,
        test_examples=_num_examples(data.test_shards),
        eval_train_examples=_num_examples(data.eval_train_shards) if data.evaluates else 0,
        data_shards=data.train_shards.num_shards,
        devices=[str(d.device_kind) for d in mesh.devices.flat], jax_version=jax.__version__,
        config=settings.record)
    if not data.evaluates:
      results["evaluation_off"] = data.evaluation_off
    _keep_measured_speed(results, workdir_path / "results.json")
    if jax.process_index() == 0:
      write_results(results, workdir_path / "results.json")
    logging.info("programs: %d compiled (%.1f s), %d loaded from the compilation cache (%.1f s)",
                 *compiles.summary().values())
    logging.info("%s -> %s", " ".join(f"{name} {results[name]:.4f}" for name in results
                                      if name.startswith(("knn_", "linear_")))
                 or "no accuracy (evaluation off)", workdir_path / "results.json")
  return results


def _num_examples(shards) -> int:
  """A split's size, 0 for one the run does not have (no evaluation split)."""
  return shards.num_examples if shards is not None else 0


_SPEED_FIGURES = ("seconds_per_epoch", "images_per_second", "step_seconds", "data_wait_seconds")


def _keep_measured_speed(results: dict[str, Any], previous: epath.Path) -> None:
  """A rerun with nothing (or too little) left to train keeps the figures its run measured. A
  previous results.json that does not read back is set aside (process 0), not overwritten."""
  if not previous.exists():
    return
  try:
    earlier = read_results(previous)
  except DamagedFile as damaged:
    kept = paths.set_aside(previous).name if jax.process_index() == 0 else "set aside"
    logging.warning("%s %s; kept as %s, and this run writes a new one", previous,
                    damaged.problem, kept)
    return
  for name in _SPEED_FIGURES:
    if results[name] is None and earlier.get(name) is not None:
      results[name] = earlier[name]
