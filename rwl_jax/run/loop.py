"""The train loop: steps, then the hooks due after each, until the run ends or a stop is agreed.

A stop signal (SIGINT, SIGTERM) only sets a flag; the loop stops between steps, where the state
is whole. On one process it stops after the current step. On several processes every process
must stop at the same step (a checkpoint is a collective write), so the flag is all-reduced at
agreed steps (the log steps and epoch ends, where the loop synchronises with the device anyway)
and all processes stop together at the first one after any of them got a signal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterable, Iterator

import jax
from absl import logging

from rwl_jax import parallel
from rwl_jax.errors import RunError
from rwl_jax.run.hooks import Context, Hook, Schedule

EpochInputs = Callable[[int, int], Iterable[tuple[Any, ...]]]


class StopRequested(Exception):
  """A stop signal arrived and every process agreed to stop; raised between steps."""


class StopSignals:
  """While installed, SIGINT and SIGTERM only record their cause (see the module docstring).

  A second signal stops at once (KeyboardInterrupt): the user insists. Except inside shielded()
  (the checkpoint save after a stop, seconds long): there it is logged and the save finishes, since
  an interrupted save would cost the work the first signal asked to keep.
  """

  CAUSES = {signal.SIGINT: "interrupted", signal.SIGTERM: "stopped by SIGTERM"}

  def __init__(self, agree_schedule: Schedule):
    self.cause: str | None = None
    self.agree_schedule = agree_schedule
    self._previous = {}
    self._shielded = False

  def _handle(self, signum, frame):
    del frame
    if self.cause is not None and self._shielded:
      logging.warning("%s again: finishing the checkpoint save first (seconds)",
                      self.CAUSES[signum])
      return
    if self.cause is not None:
      raise KeyboardInterrupt
    self.cause = self.CAUSES[signum]

  @contextlib.contextmanager
  def shielded(self) -> Iterator[None]:
    self._shielded = True
    try:
      yield
    finally:
      self._shielded = False

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self.CAUSES}
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def stop_if_pending(self, phase: str) -> None:
    """Before training starts: RunError if any process got a signal (all processes call this at
    the same point). Nothing in the workdir has changed yet."""
    if parallel.any_process(self.cause is not None):
      cause = self.cause or "stopped because another process was"
      raise RunError(f"{cause} {phase}, before training started; nothing in the workdir changed")

  def check(self, step: int, steps_per_epoch: int, num_steps: int) -> None:
    """Raises StopRequested when this process (one process) or any process (several) asked."""
    if jax.process_count() == 1:
      stop = self.cause is not None
    elif self.agree_schedule.due(step, steps_per_epoch, num_steps):
      stop = parallel.any_process(self.cause is not None)
      if stop and self.cause is None:
        self.cause = "stopped because another process was"
    else:
      stop = False
    if stop:
      raise StopRequested(self.cause)


def run(context: Context, step_fn: Callable, epoch_inputs: EpochInputs, hooks: list[Hook],
        signals: StopSignals) -> Any:
  """Runs the steps from context.step to the experiment's last, calling the hooks due after each;
  returns the final state (context.state, context.step follow the run)."""
  experiment, timer = context.experiment, context.timer
  steps_per_epoch, num_steps = experiment.steps_per_epoch, experiment.num_steps
  while context.step < num_steps:
    epoch = context.step // steps_per_epoch
    batches: Iterator = iter(epoch_inputs(epoch, context.step - epoch * steps_per_epoch))
    while True:
      with timer.waiting_for_data():
        inputs = next(batches, None)
      if inputs is None:
        break
      context.state, metrics = step_fn(context.state, *inputs)
      context.pending.append(metrics)
      context.step += 1
      for hook in hooks:
        if hook.schedule.due(context.step, steps_per_epoch, num_steps):
          if hook.timed:
            with timer.hook(hook.name):
              hook(context)
          else:
            hook(context)
      signals.check(context.step, steps_per_epoch, num_steps)
  return context.state
