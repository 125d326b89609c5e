"""The Progress hook's ETA foresees the evaluations (and every timed hook), on a fake clock."""

import types

import numpy as np
import pytest

from rwl_jax.run import hooks, loop

STEPS_PER_EPOCH, NUM_EPOCHS = 10, 4
NUM_STEPS = STEPS_PER_EPOCH * NUM_EPOCHS
STEP, WARM_UP, EVALUATION = 0.1, 1.0, 10.0  # seconds on the fake clock


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


class Writer:
  def write_scalars(self, step, scalars):
    pass


class FakeEvaluation(hooks.Hook):
  """Timed like Evaluate; EVALUATION seconds a call, due at every epoch's end."""

  name = "evaluate"
  timed = True

  def __init__(self, clock):
    super().__init__(hooks.Schedule(every_epochs=1))
    self.clock = clock

  def __call__(self, context):
    self.clock.now += EVALUATION


def test_eta_counts_the_evaluations_left_and_does_not_jump_after_one():
  clock = Clock()
  experiment = types.SimpleNamespace(
      global_batch_size=8, num_epochs=NUM_EPOCHS,
      steps_per_epoch=STEPS_PER_EPOCH, num_steps=NUM_STEPS, learning_rate=lambda step: 0.1)
  timer = hooks.WindowTimer(clock=clock)
  context = hooks.Context(experiment=experiment, writer=Writer(), timer=timer, step=0, state=0)
  every_log = hooks.Schedule(every_steps=5, every_epochs=1)
  log, progress = hooks.LogMetrics(every_log), hooks.Progress(every_log)
  evaluation = FakeEvaluation(clock)
  hook_list = [log, progress, evaluation]  # as train orders them: the evaluation after the line
  progress.watch(hook_list)
  with timer.hook("evaluate"):  # the step-0 evaluation train runs before the loop
    clock.now += EVALUATION
  log.start(0, timer, steps_per_epoch=STEPS_PER_EPOCH)
  progress.start(0)

  def step(state, batch):
    clock.now += STEP + (WARM_UP if state == 0 else 0.0)
    return state + 1, {"loss": np.float32(1.0)}

  def inputs(epoch, start):
    return [(None,)] * (STEPS_PER_EPOCH - start)

  with loop.StopSignals(every_log) as signals:
    loop.run(context, step, inputs, hook_list, signals)

  shown = dict(progress.shown)
  assert sorted(shown) == list(range(5, NUM_STEPS + 1, 5))
  for at, eta in shown.items():
    evaluations_left = sum(1 for end in range(STEPS_PER_EPOCH, NUM_STEPS + 1, STEPS_PER_EPOCH)
                           if end >= at)  # the one due at this very step runs after the line
    if at == 5:  # one window so far, its first step's warm-up included
      per_step = (5 * STEP + WARM_UP) / 5
    else:  # the warm-up window is left out once there are others
      per_step = STEP
    assert eta == pytest.approx((NUM_STEPS - at) * per_step + evaluations_left * EVALUATION), at
  # Steadily down, no jump up after an evaluation.
  etas = [shown[at] for at in sorted(shown) if at >= 10]
  assert all(later < earlier for earlier, later in zip(etas, etas[1:])), etas


def test_calls_left_matches_the_schedule_step_by_step():
  schedules = [hooks.Schedule(every_steps=4, every_epochs=2, at_end=True, at_steps=(3, 50)),
               hooks.Schedule(every_epochs=1), hooks.Schedule(at_steps=(7,)), hooks.Schedule()]
  for schedule in schedules:
    for step in range(0, 51):
      expected = sum(1 for s in range(step + 1, 51) if schedule.due(s, 10, 50))
      assert hooks.calls_left(schedule, step, 10, 50) == expected, (schedule, step)
