"""Periodic actions of the train loop: small objects, each with its own schedule (after CLU's
periodic actions; CLU itself imports TensorFlow, which the accelerator path must not).

A hook is called after a step when `hook.schedule.due(step, steps_per_epoch, num_steps)`; it sees
the loop's `Context` (step, epoch, state, experiment, writer, timer). Hooks whose `timed` is true
(checkpoint, evaluation, diagnostics) are timed apart from the steps, so images/s and seconds per
epoch measure training alone, and each reports its own seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath

from rwl_jax import parallel
from rwl_jax.errors import RunError


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When a hook runs: every N steps, every N epochs (at the epoch's last step), at the final
  step; 0 / False turns a clause off. due() is true when any clause holds."""

  every_steps: int = 0
  every_epochs: int = 0
  at_end: bool = False
  at_steps: tuple[int, ...] = ()

  def due(self, step: int, steps_per_epoch: int, num_steps: int) -> bool:
    return bool((self.every_steps and step % self.every_steps == 0)
                or (self.every_epochs and step % (self.every_epochs * steps_per_epoch) == 0)
                or (self.at_end and step == num_steps) or step in self.at_steps)


class WindowTimer:
  """Splits the wall time of a logging window into steps, data wait and timed hooks, and keeps
  each timed hook's calls and seconds over the whole run (for the ETA). clock: seconds, e.g. a
  fake one in tests."""

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self.clock = clock
    self.hook_totals: dict[str, tuple[int, float]] = {}  # name -> (calls, seconds), all run
    self.restart()

  def restart(self) -> None:
    self.window_start = self.clock()
    self.data_wait = 0.0
    self.hooks: dict[str, float] = {}

  @contextlib.contextmanager
  def waiting_for_data(self) -> Iterator[None]:
    start = self.clock()
    yield
    self.data_wait += self.clock() - start

  @contextlib.contextmanager
  def hook(self, name: str) -> Iterator[None]:
    start = self.clock()
    yield
    seconds = self.clock() - start
    self.hooks[name] = self.hooks.get(name, 0.0) + seconds
    calls, total = self.hook_totals.get(name, (0, 0.0))
    self.hook_totals[name] = (calls + 1, total + seconds)

  def training_seconds(self) -> float:
    """Wall time of the window so far, less the timed hooks: steps and data wait."""
    return self.clock() - self.window_start - sum(self.hooks.values())


@dataclasses.dataclass
class Context:
  """What hooks see after each step; the loop updates step, epoch, state and pending metrics."""

  experiment: Any
  writer: Any
  timer: WindowTimer
  step: int
  state: Any = None
  pending: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)
  latest: dict[str, float] = dataclasses.field(default_factory=dict)  # the last logged scalars

  @property
  def epoch(self) -> int:
    """The 1-based epoch the last step belonged to."""
    return -(-self.step // self.experiment.steps_per_epoch)

  @property
  def batch_size(self) -> int:
    return self.experiment.global_batch_size


class Hook:
  """Base: a name, a schedule, whether its time is kept apart from the steps', and an action."""

  name = "hook"
  timed = False

  def __init__(self, schedule: Schedule):
    self.schedule = schedule

  def __call__(self, context: Context) -> None:
    raise NotImplementedError


class LogMetrics(Hook):
  """Averages the buffered step metrics (fetched only now, so the loop never waits for the device
  between log steps), adds the learning rate and the window's timing, writes them.

  Timing of a window (since the previous log step): step_seconds = (wall time - timed hooks) /
  steps, images_per_second = batch / step_seconds, data_wait_seconds = time blocked on the input
  iterator per step (included in step_seconds: it is time the run spent not stepping),
  hook_seconds = the window's time in timed hooks (diagnostics, evaluation, checkpoint). Raises
  RunError on a non-finite loss, before any later hook can checkpoint that state.
  """

  name = "log"

  def __init__(self, schedule: Schedule):
    super().__init__(schedule)
    self.window_first_step: int | None = None
    self.windows: list[dict[str, float]] = []  # every window's timing, for the run's summary
    self.epoch_seconds: list[float] = []  # training seconds of each epoch run whole here
    self._epoch_training_seconds = 0.0
    self._epoch_whole = False

  def start(self, step: int, timer: WindowTimer, *, steps_per_epoch: int | None = None) -> None:
    """Opens a window at `step`; with steps_per_epoch, the run (re)starts here, and a resumed
    epoch's seconds are not counted (part of it ran before)."""
    if steps_per_epoch is not None:
      self._epoch_whole = step % steps_per_epoch == 0
      self._epoch_training_seconds = 0.0
    self.window_first_step = step
    timer.restart()

  def drain(self, context: Context) -> dict[str, float]:
    """The buffered metrics' means (and clears the buffer); RunError if a loss is not finite."""
    if not context.pending:
      return {}
    stacked = parallel.fetch(context.pending)
    context.pending.clear()
    losses = np.asarray([m["loss"] for m in stacked], np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      first = context.step - len(stacked) + bad[0] + 1
      raise RunError(f"loss became {losses[bad[0]]} at step {first}; stopped without saving it "
                     "(the last good checkpoint is kept); lower optimizer.learning_rate or raise "
                     "temperature")
    return {name: float(np.mean([m[name] for m in stacked])) for name in stacked[0]}

  def __call__(self, context: Context) -> None:
    steps = context.step - self.window_first_step
    averages = self.drain(context)  # waits for the window's last step: its time is now complete
    if steps <= 0:
      return
    timer = context.timer
    training = timer.training_seconds()
    window = {"step_seconds": training / steps, "data_wait_seconds": timer.data_wait / steps,
              "images_per_second": steps * context.batch_size / training,
              "hook_seconds": sum(timer.hooks.values())}
    self.windows.append({**window, "first_step": self.window_first_step, "steps": steps})
    scalars = {"loss": averages.pop("loss"),
               "learning_rate": context.experiment.learning_rate(context.step),
               **window, **averages}
    self._epoch_training_seconds += training
    if context.step % context.experiment.steps_per_epoch == 0:
      if self._epoch_whole:
        scalars["epoch_seconds"] = self._epoch_training_seconds
        self.epoch_seconds.append(self._epoch_training_seconds)
      self._epoch_training_seconds, self._epoch_whole = 0.0, True
    context.writer.write_scalars(context.step, scalars)
    context.latest = scalars
    self.start(context.step, timer)


class Progress(Hook):
  """One log line per log step: epoch, step, the latest scalars and the time left (ETA).

  ETA = steps left x seconds per step (the training windows' mean since the first, steps and
  data wait only) + for each timed hook (evaluation, checkpoint, diagnostics) its calls left x
  its mean seconds per call so far. So an evaluation is foreseen, not a jump in the step time;
  a hook not yet run counts 0 until its first call. The evaluation after the loop is not in it.
  """

  name = "progress"

  def __init__(self, schedule: Schedule):
    super().__init__(schedule)
    self.timed_hooks: list[tuple[Hook, bool]] = []  # (hook, runs after this one)
    self.shown: list[tuple[int, float]] = []  # (step, ETA seconds) of every line
    self._windows: list[tuple[int, float]] = []  # (steps, training seconds) of each window
    self._last_step: int | None = None

  def watch(self, hooks: list[Hook]) -> "Progress":
    """The timed hooks whose remaining calls the ETA counts (the loop's hook list, in order: a
    hook after this one that is due at this step is still to come)."""
    after = hooks.index(self) if self in hooks else len(hooks)
    self.timed_hooks = [(hook, index > after) for index, hook in enumerate(hooks) if hook.timed]
    return self

  def eta(self, context: Context) -> float:
    experiment, scalars = context.experiment, context.latest
    if self._last_step is not None and "step_seconds" in scalars and context.step > self._last_step:
      steps = context.step - self._last_step
      self._windows.append((steps, steps * scalars["step_seconds"]))
    self._last_step = context.step
    # The first window after a (re)start holds the first step's warm-up: left out once others exist.
    windows = self._windows[1:] or self._windows
    if not windows:
      return float("nan")
    per_step = sum(seconds for _, seconds in windows) / sum(steps for steps, _ in windows)
    spe, num_steps = experiment.steps_per_epoch, experiment.num_steps
    left = (num_steps - context.step) * per_step
    for hook, still_due_now in self.timed_hooks:
      calls, seconds = context.timer.hook_totals.get(hook.name, (0, 0.0))
      if calls:
        from_step = context.step - 1 if still_due_now else context.step
        left += calls_left(hook.schedule, from_step, spe, num_steps) * seconds / calls
    return left

  def start(self, step: int) -> None:
    """The run (re)starts at `step`: the next log step closes the first window."""
    self._last_step = step

  def __call__(self, context: Context) -> None:
    experiment, scalars = context.experiment, context.latest
    eta = self.eta(context)
    self.shown.append((context.step, eta))
    shown = " ".join(f"{name} {value:.4g}" for name, value in scalars.items())
    logging.info("epoch %d/%d step %d/%d %s eta %s", context.epoch, experiment.num_epochs,
                 context.step, experiment.num_steps, shown, _clock(eta))


def calls_left(schedule: Schedule, step: int, steps_per_epoch: int, num_steps: int) -> int:
  """How many of the steps (step, num_steps] the schedule is due at."""
  due = set(schedule.at_steps) | ({num_steps} if schedule.at_end else set())
  for every in (schedule.every_steps, schedule.every_epochs * steps_per_epoch):
    if every:
      due.update(range(every * (step // every + 1), num_steps + 1, every))
  return sum(1 for s in due if step < s <= num_steps)


def _clock(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


class ProbeDiagnostics(Hook):
  """The theory diagnostics (rwl_jax.diagnostics) of the current network on the fixed probe batch."""

  name = "diagnostics"
  timed = True

  def __init__(self, schedule: Schedule, probe_images: jax.Array):
    super().__init__(schedule)
    self.probe_images = probe_images

  def __call__(self, context: Context) -> None:
    values = context.experiment.probe(context.state.params, context.state.batch_stats,
                                      self.probe_images)
    scalars = {name: float(value) for name, value in parallel.fetch(values).items()}
    context.writer.write_scalars(context.step, scalars)
    context.latest.update(scalars)


class Checkpoint(Hook):
  """Saves the state and logs the seconds the loop waited for it (checkpoint_seconds).

  Asynchronous saves (config.checkpoint_async) wait only for the copy off the device and for the
  previous save to finish; the files are written while the next steps run, which may donate the
  saved state's buffers (Orbax holds its own copy).
  """

  name = "checkpoint"
  timed = True

  def __init__(self, schedule: Schedule, checkpointer):
    super().__init__(schedule)
    self.checkpointer = checkpointer
    self.saved_step: int | None = None

  def save(self, step: int, state: Any) -> None:
    if step != self.saved_step and step not in self.checkpointer.all_steps():
      self.checkpointer.save(step, state)
    self.saved_step = step

  def __call__(self, context: Context) -> None:
    start = time.perf_counter()
    self.save(context.step, context.state)
    context.writer.write_scalars(context.step, {"checkpoint_seconds": time.perf_counter() - start})


class Evaluate(Hook):
  """The evaluators due at this epoch (kNN, linear probe), on one extraction of the features."""

  name = "evaluate"
  timed = True

  def __init__(self, evaluators, extractor, steps_per_epoch: int, num_steps: int):
    # Due whenever one of the evaluators is; the final evaluation is the run's own, after the loop.
    epochs = sorted({e.every_epochs for e in evaluators if e.every_epochs})
    super().__init__(Schedule(at_steps=tuple(
        step for step in range(steps_per_epoch, num_steps, steps_per_epoch)
        if any((step // steps_per_epoch) % every == 0 for every in epochs))))
    self.evaluators = evaluators
    self.extractor = extractor

  def __call__(self, context: Context) -> None:
    from rwl_jax.evaluate.evaluators import run_evaluators  # pylint: disable=g-import-not-at-top

    start = time.perf_counter()
    due = [e for e in self.evaluators if e.every_epochs and context.epoch % e.every_epochs == 0]
    results = run_evaluators(due, self.extractor, context.state)
    context.writer.write_scalars(context.step, {**results,
                                                "eval_seconds": time.perf_counter() - start})
    logging.info("epoch %d: %s", context.epoch,
                 " ".join(f"{name} {value:.4f}" for name, value in results.items()))


class Profile(Hook):
  """A jax.profiler trace of the steps (start, start + num_steps] into workdir/profile."""

  name = "profile"

  def __init__(self, start_step: int, num_steps: int, directory: epath.Path):
    super().__init__(Schedule(at_steps=(start_step, start_step + num_steps)))
    self.start_step = start_step
    self.directory = directory
    self.active = False

  def __call__(self, context: Context) -> None:
    if context.step == self.start_step and not self.active:
      jax.profiler.start_trace(str(self.directory))
      self.active = True
    elif self.active:
      jax.block_until_ready(context.state)
      jax.profiler.stop_trace()
      self.active = False
      logging.info("profile of steps %d-%d in %s", self.start_step + 1, context.step,
                   self.directory)

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False

