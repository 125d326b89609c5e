"""The loop of hooks on a stand-in step (no network): schedules, timing windows, stop signals,
named random streams, one compiled feature function, fetch of non-replicated arrays."""

import os
import signal
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwl_jax.run import hooks, loop
from rwl_jax import parallel, rng
from rwl_jax.errors import RunError

STEPS_PER_EPOCH = 10
BATCH = 8


class Writer:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))

  def scalars(self, name):
    return [(step, row[name]) for step, row in self.rows if name in row]


def fake_experiment(num_epochs=2):
  return types.SimpleNamespace(global_batch_size=BATCH, num_epochs=num_epochs,
                               steps_per_epoch=STEPS_PER_EPOCH,
                               num_steps=STEPS_PER_EPOCH * num_epochs,
                               learning_rate=lambda step: 0.1)


def sleeping_step(seconds, losses=None):
  def step(state, batch):
    time.sleep(seconds)
    loss = jnp.float32(1.0 if losses is None else losses(state))
    return state + 1, {"loss": loss}
  return step


def epoch_inputs(wait=0.0):
  def inputs(epoch, start):
    for _ in range(start, STEPS_PER_EPOCH):
      time.sleep(wait)
      yield (None,)
  return inputs


class Sleeper(hooks.Hook):
  """A timed hook standing in for a checkpoint save or an evaluation."""

  name = "checkpoint"
  timed = True

  def __init__(self, schedule, seconds):
    super().__init__(schedule)
    self.seconds, self.calls = seconds, []

  def __call__(self, context):
    self.calls.append(context.step)
    time.sleep(self.seconds)


def run(step_fn, hook_list, *, inputs=None, start=0, signals=None, num_epochs=2, timer=None):
  context = hooks.Context(experiment=fake_experiment(num_epochs), writer=Writer(),
                          timer=timer or hooks.WindowTimer(), step=start, state=start)
  log = next(h for h in hook_list if isinstance(h, hooks.LogMetrics))
  log.start(start, context.timer, steps_per_epoch=STEPS_PER_EPOCH)
  signals = signals or loop.StopSignals(hooks.Schedule(every_steps=5))
  with signals:
    loop.run(context, step_fn, inputs or epoch_inputs(), hook_list, signals)
  return context


def test_schedule_clauses():
  schedule = hooks.Schedule(every_steps=4, every_epochs=2, at_end=True, at_steps=(3,))
  due = [s for s in range(1, 51) if schedule.due(s, 10, 50)]
  assert due == [3, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 50]
  assert not any(hooks.Schedule().due(s, 10, 50) for s in range(1, 51))


class FakeClock:
  """The windows' clock, moved only by the stand-in step, input and save: exact timing figures
  whatever the machine is doing."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now

  def advance(self, seconds):
    self.now += seconds


def test_windows_time_the_steps_alone_and_hooks_apart():
  clock = FakeClock()

  def step(state, batch):
    clock.advance(0.02)
    return state + 1, {"loss": jnp.float32(1.0)}

  def inputs(epoch, start):
    for _ in range(start, STEPS_PER_EPOCH):
      clock.advance(0.01)
      yield (None,)

  class Save(Sleeper):
    def __call__(self, context):
      self.calls.append(context.step)
      clock.advance(self.seconds)

  log = hooks.LogMetrics(hooks.Schedule(every_steps=5, every_epochs=1))
  save = Save(hooks.Schedule(every_epochs=1), seconds=0.5)
  context = run(step, [log, save], inputs=inputs, timer=hooks.WindowTimer(clock))
  assert save.calls == [10, 20]
  writer = context.writer
  assert [s for s, _ in writer.scalars("loss")] == [5, 10, 15, 20]
  # Every window: 0.02 s of step and 0.01 s of waiting for data per step. Step 15's window
  # follows the 0.5 s save at step 10: the save is in its hook_seconds, not in its step time.
  assert writer.scalars("step_seconds") == [(s, pytest.approx(0.03)) for s in (5, 10, 15, 20)]
  assert writer.scalars("data_wait_seconds") == [(s, pytest.approx(0.01)) for s in (5, 10, 15, 20)]
  assert writer.scalars("images_per_second") == [(s, pytest.approx(BATCH / 0.03))
                                                 for s in (5, 10, 15, 20)]
  assert [seconds for _, seconds in writer.scalars("hook_seconds")] == pytest.approx(
      [0.0, 0.0, 0.5, 0.0])
  # Both epochs ran whole here: their training seconds, without the saves.
  epochs = writer.scalars("epoch_seconds")
  assert epochs == [(10, pytest.approx(0.3)), (20, pytest.approx(0.3))]
  assert log.epoch_seconds == [seconds for _, seconds in epochs]


def test_a_resumed_epoch_is_not_counted_as_whole():
  log = hooks.LogMetrics(hooks.Schedule(every_steps=5, every_epochs=1))
  context = run(sleeping_step(0.0), [log], start=5)
  assert [s for s, _ in context.writer.scalars("epoch_seconds")] == [20]
  assert [w["first_step"] for w in log.windows] == [5, 10, 15]


def test_non_finite_loss_raises_before_a_later_hook_runs():
  log = hooks.LogMetrics(hooks.Schedule(every_steps=5, every_epochs=1))
  save = Sleeper(hooks.Schedule(every_steps=5), seconds=0.0)
  step = sleeping_step(0.0, losses=lambda state: np.nan if state == 6 else 1.0)
  with pytest.raises(RunError, match=r"loss became nan at step 7"):
    run(step, [log, save])
  assert save.calls == [5]  # the state of step 10 was never saved


def test_a_signal_stops_after_the_current_step_on_one_process():
  log = hooks.LogMetrics(hooks.Schedule(every_steps=5))

  def step(state, batch):
    if state == 6:
      os.kill(os.getpid(), signal.SIGTERM)
    return state + 1, {"loss": jnp.float32(1.0)}

  signals = loop.StopSignals(hooks.Schedule(every_steps=5))
  with pytest.raises(loop.StopRequested, match="stopped by SIGTERM"):
    run(step, [log], signals=signals)
  assert signal.getsignal(signal.SIGTERM) is not signals._handle  # restored on the way out


def test_stop_agreement_waits_for_the_agreed_step(monkeypatch):
  """On several processes a stop takes effect only at an agreed step, where every process
  learns whether any process got a signal (the all-gather is faked here; the two-process test
  in test_multiprocess.py runs the real one)."""
  gathered = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(parallel.multihost_utils, "process_allgather",
                      lambda flag: gathered.append(int(flag)) or np.asarray([int(flag), 0]))
  signals = loop.StopSignals(hooks.Schedule(every_steps=5))
  signals.check(3, 10, 20)  # not an agreed step: nothing exchanged
  assert gathered == []
  signals.cause = "stopped by SIGTERM"
  signals.check(4, 10, 20)  # a signal, but still not an agreed step
  with pytest.raises(loop.StopRequested):
    signals.check(5, 10, 20)
  assert gathered == [1]
  # A process without a signal stops too when the other one had one.
  other = loop.StopSignals(hooks.Schedule(every_steps=5))
  monkeypatch.setattr(parallel.multihost_utils, "process_allgather",
                      lambda flag: np.asarray([int(flag), 1]))
  with pytest.raises(loop.StopRequested, match="another process"):
    other.check(5, 10, 20)


def test_named_streams_are_distinct_and_independent_of_each_other():
  seed = 7
  keys = {(name, step): rng.stream_key(seed, step, name)
          for name in rng.STREAM_IDS for step in range(4)}
  data = {k: tuple(np.asarray(jax.random.key_data(v)).tolist()) for k, v in keys.items()}
  assert len(set(data.values())) == len(data)
  # None is the old shared step key, nor a child of another stream's key (the views were
  # fold_in(step_key, view) while GSG drew from step_key itself).
  for step in range(4):
    shared = jax.random.fold_in(jax.random.key(seed), step)
    related = {tuple(np.asarray(jax.random.key_data(k)).tolist())
               for k in [shared] + [jax.random.fold_in(keys[name, step], i)
                                    for name in rng.STREAM_IDS for i in range(2)]}
    assert not related & {data[name, step] for name in rng.STREAM_IDS}
  # The same (seed, step, stream) is the same key: a resumed run repeats its draws.
  again = rng.stream_key(seed, jnp.int32(2), "method")
  assert np.array_equal(jax.random.key_data(again), jax.random.key_data(keys["method", 2]))
  with pytest.raises(KeyError):
    rng.stream_key(seed, 0, "views")


def test_fetch_refuses_a_non_replicated_array_of_several_processes():
  mesh = parallel.make_mesh()
  replicated = jax.device_put(jnp.arange(8.0), parallel.replicated(mesh))
  np.testing.assert_array_equal(parallel.fetch({"x": replicated})["x"], np.arange(8.0))
  # One process holds every shard: the whole array comes back, not its first shard.
  sharded = jax.device_put(jnp.arange(8.0), parallel.data_sharded(mesh))
  np.testing.assert_array_equal(parallel.fetch(sharded), np.arange(8.0))
  # Shards on another process's devices cannot be read here: an error, not one shard.
  elsewhere = types.SimpleNamespace(is_fully_replicated=False, is_fully_addressable=False,
                                    shape=(8,), sharding="data on 2 processes")
  with pytest.raises(ValueError, match="split over the devices of several processes"):
    parallel.fetch_array(elsewhere)
