"""Asynchronous checkpoint saves: the loop goes on while a save is written, the saved state is the
state at the save step bit for bit although the next step donates its buffers, a stop waits for
the save, and a SIGKILL while a save is in flight costs only that save."""

import signal
import subprocess
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from conftest import (REPO, TINY_RUN_EPOCHS, TINY_RUN_STEPS_PER_EPOCH, subprocess_environment,
                      tiny_run_command)
from rwl_jax.run.checkpoint import Checkpointer


def donating_step():
  return jax.jit(lambda state: jax.tree.map(lambda x: x * 1.5 + 1, state), donate_argnums=0)


def new_state():
  return {"params": {"w": jnp.arange(200_000, dtype=jnp.float32).reshape(400, 500) / 7,
                     "b": jnp.full((500,), 0.25, jnp.float32)},
          "step": jnp.asarray(3, jnp.int32)}


def is_commit(source, destination) -> bool:
  """Orbax commits a checkpoint by renaming its temporary folder to the step's name."""
  return "orbax-checkpoint-tmp" in str(source) and str(destination).rsplit("/", 1)[-1].isdigit()


class HeldCommit:
  """`reached` is set once a checkpoint's files are written and its commit has begun; the commit
  then waits until `release` is set."""

  def __init__(self):
    self.reached = threading.Event()
    self.release = threading.Event()


@pytest.fixture
def held_commit(monkeypatch):
  """Every checkpoint's commit (the rename of its folder, in Orbax's background thread) waits
  until the test releases it: a save stays in flight for as long as the test wants."""
  commit = HeldCommit()
  path_class = type(epath.Path("/"))
  rename = path_class.rename

  def held(self, target):
    if is_commit(self, target):
      commit.reached.set()
      commit.release.wait(120)
    return rename(self, target)

  monkeypatch.setattr(path_class, "rename", held)
  yield commit
  commit.release.set()


def test_save_returns_while_written_and_keeps_the_state_of_its_step(tmp_path, held_commit):
  checkpointer = Checkpointer(tmp_path, keep=2)
  step = donating_step()
  state = step(new_state())
  expected = jax.tree.map(np.array, state)  # host copies of the state at the save step

  checkpointer.save(7, state)  # returns with the commit still held
  assert not (checkpointer.directory / "7").exists()
  # On CPU the write holds zero-copy numpy views of the buffers, and XLA copies rather than
  # donates a buffer that is viewed: step once the files are written, so the donation is real.
  assert held_commit.reached.wait(120)
  donated = jax.tree.leaves(state)
  state = step(state)  # the next step reuses the saved state's buffers
  assert all(leaf.is_deleted() for leaf in donated)
  state = step(state)

  waiting = threading.Thread(target=checkpointer.wait)
  waiting.start()
  waiting.join(timeout=1)
  assert waiting.is_alive()  # wait() returns only once the save is complete
  held_commit.release.set()
  waiting.join(timeout=120)
  assert not waiting.is_alive() and checkpointer.all_steps() == [7]

  restored = checkpointer.restore(7, state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert np.array_equal(np.asarray(got), want)
  assert not np.array_equal(np.asarray(state["params"]["w"]), expected["params"]["w"])
  checkpointer.close()


def test_synchronous_save_is_complete_when_it_returns(tmp_path):
  checkpointer = Checkpointer(tmp_path, keep=2, asynchronous=False)
  state = new_state()
  checkpointer.save(1, state)
  assert checkpointer.all_steps() == [1] and (checkpointer.directory / "1").is_dir()
  restored = checkpointer.restore(1, state)
  assert np.array_equal(np.asarray(restored["params"]["w"]), np.asarray(state["params"]["w"]))
  checkpointer.close()


def test_the_next_save_waits_for_the_one_in_flight(tmp_path, held_commit):
  checkpointer = Checkpointer(tmp_path, keep=3)
  checkpointer.save(1, new_state())
  second = threading.Thread(target=checkpointer.save, args=(2, new_state()))
  second.start()
  second.join(timeout=1)
  assert second.is_alive() and not (checkpointer.directory / "1").exists()
  held_commit.release.set()
  second.join(timeout=120)
  checkpointer.close()
  assert checkpointer.all_steps() == [1, 2]


def test_checkpoint_async_is_a_bool_a_rerun_may_change(tmp_path):
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from rwl_jax.run import experiment, workdir  # pylint: disable=g-import-not-at-top
  from rwl_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top

  config = tiny_config("data", "cache")
  assert config.checkpoint_async is True
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  config.checkpoint_async = False
  experiment.validate_config(config)
  # Not refused (a trained-state field would be), only recorded.
  assert workdir.check_rerun(epath.Path(tmp_path), config, has_checkpoint=True,
                             accept_change=False) == {"checkpoint_async": (True, False)}
  config.checkpoint_async = None  # (the config's type check lets None through)
  with pytest.raises(ConfigError, match="checkpoint_async must be True or False, got None"):
    experiment.validate_config(config)


# End to end: a run whose second checkpoint is held in flight is SIGKILLed, and the rerun of the
# same command ends bit-identical to a run left alone.


# Runs in the training process (as its sitecustomize): the commit of checkpoint HOLD_STEP (every
# checkpoint for "all") waits for the file RELEASE, and every committed step is printed, so a test
# sees when saves land.
HOLD_COMMIT = textwrap.dedent("""
    import os, sys, time
    from etils import epath

    _path_class = type(epath.Path("/"))
    _rename = _path_class.rename

    def _held(self, target):
      step = str(target).rsplit("/", 1)[-1]
      if "orbax-checkpoint-tmp" not in str(self) or not step.isdigit():
        return _rename(self, target)
      if os.environ.get("HOLD_STEP") in (step, "all"):
        while not os.path.exists(os.environ["RELEASE"]):
          time.sleep(0.05)
      result = _rename(self, target)
      print(f"COMMITTED {step}", file=sys.stderr, flush=True)
      return result

    _path_class.rename = _held
    """)


@pytest.fixture
def hook_dir(tmp_path):
  directory = tmp_path / "hook"
  directory.mkdir()
  (directory / "sitecustomize.py").write_text(HOLD_COMMIT)
  return directory


def run_until(cmd, env, when, timeout=300):
  """Starts cmd; once when() holds, returns the process (still running)."""
  import time  # pylint: disable=g-import-not-at-top

  process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while not when():
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline, "the condition never came"
    time.sleep(0.05)
  return process


@pytest.mark.slow  # three short training runs in subprocesses
def test_sigkill_during_an_async_save_resumes_bit_identical(cifar_dir, tmp_path, hook_dir):
  from test_preemption import assert_same_final_state, checkpoint_entries, logged_steps  # pylint: disable=g-import-not-at-top

  cache = tmp_path / "cache"
  straight = tmp_path / "straight"
  done = subprocess.run(tiny_run_command(straight, cifar_dir, cache), cwd=REPO,
                        env=subprocess_environment(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  killed = tmp_path / "killed"
  held = 2 * TINY_RUN_STEPS_PER_EPOCH
  env = subprocess_environment(hook_dir, HOLD_STEP=str(held), RELEASE=str(tmp_path / "never"))
  # The loop goes on while checkpoint `held` is written (held uncommitted): steps after it are
  # trained and logged. Then SIGKILL, with that save still in flight.
  process = run_until(tiny_run_command(killed, cifar_dir, cache), env,
                      lambda: max(logged_steps(killed), default=0) >= held + 3)
  entries = checkpoint_entries(killed)
  process.send_signal(signal.SIGKILL)
  process.communicate(timeout=60)
  assert str(TINY_RUN_STEPS_PER_EPOCH) in entries and str(held) not in entries
  assert any(e.startswith(f"{held}.orbax-checkpoint-tmp") for e in entries), entries

  done = subprocess.run(tiny_run_command(killed, cifar_dir, cache), cwd=REPO,
                        env=subprocess_environment(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"at step {TINY_RUN_STEPS_PER_EPOCH}" in done.stderr  # resumed from the last complete one
  assert_same_final_state(straight, killed, TINY_RUN_EPOCHS * TINY_RUN_STEPS_PER_EPOCH)


@pytest.mark.slow  # one short training run in a subprocess
def test_a_stop_signal_exits_only_once_its_save_is_committed(cifar_dir, tmp_path, hook_dir):
  """Every commit is held until RELEASE appears: after SIGTERM the process keeps waiting for its
  save, and says 'checkpoint saved' only after that checkpoint is committed."""
  import re  # pylint: disable=g-import-not-at-top
  from test_preemption import checkpoint_entries, logged_steps  # pylint: disable=g-import-not-at-top

  workdir, release = tmp_path / "work", tmp_path / "release"
  env = subprocess_environment(hook_dir, RELEASE=str(release), HOLD_STEP="all")
  cmd = tiny_run_command(workdir, cifar_dir, tmp_path / "cache", "--config.num_epochs=50",
                "--config.checkpoint_every_epochs=100")
  process = run_until(cmd, env, lambda: max(logged_steps(workdir), default=0) >= 3)
  process.send_signal(signal.SIGTERM)
  in_flight = lambda: any("orbax-checkpoint-tmp" in e for e in checkpoint_entries(workdir))
  while not in_flight():  # the stop's save has started and is held
    assert process.poll() is None, process.communicate()[1][-3000:]
  assert process.poll() is None and not [e for e in checkpoint_entries(workdir) if e.isdigit()]
  release.touch()
  _, stderr = process.communicate(timeout=120)
  match = re.search(r"error: stopped by SIGTERM at step (\d+); checkpoint saved in (\S+),", stderr)
  assert match and process.returncode == 2, stderr[-3000:]
  step = int(match.group(1))
  assert stderr.index(f"COMMITTED {step}") < stderr.index("error: stopped by SIGTERM")
  assert checkpoint_entries(workdir) == [str(step)]
