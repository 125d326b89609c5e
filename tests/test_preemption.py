"""A run killed with SIGKILL at any point (no handler runs) resumes from its last checkpoint and
ends bit-identical to the same run left alone: data order, views, RNG and step all restored."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it

STEPS_PER_EPOCH = 640 // 64
EPOCHS = 4


def command(workdir, cifar_dir, cache):
  return [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
          f"--workdir={workdir}", f"--config.data.image_dir={cifar_dir}",
          f"--config.data.cache_dir={cache}", f"--config.num_epochs={EPOCHS}",
          "--config.global_batch_size=64", "--config.model.width=4",
          "--config.model.projector_dims=(16,8)", "--config.log_every_steps=1",
          "--config.checkpoint_every_epochs=1", "--config.keep_checkpoints=2",
          "--config.eval.linear_epochs=1"]


ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def logged_steps(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line)["step"] for line in path.read_text().splitlines()
          if line.endswith("}") and '"loss"' in line]


def run_and_kill(cmd, when, timeout=300):
  """Starts cmd, SIGKILLs it as soon as when() is true; returns its stderr."""
  process = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + timeout
  while not when():
    assert process.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline, "the kill condition never came"
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == -signal.SIGKILL
  return stderr


def checkpoint_entries(workdir):
  directory = workdir / "checkpoints"
  return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def final_state(workdir):
  manager = ocp.CheckpointManager(workdir / "checkpoints",
                                  item_handlers=ocp.StandardCheckpointHandler())
  step = manager.latest_step()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step))
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  return step, jax.tree_util.tree_leaves_with_path(restored)


def assert_same_final_state(straight, other, steps: int) -> None:
  """The newest checkpoints of two workdirs are both of `steps` and equal bit for bit."""
  step_straight, leaves_straight = final_state(straight)
  step_other, leaves_other = final_state(other)
  assert step_straight == step_other == steps
  assert [path for path, _ in leaves_straight] == [path for path, _ in leaves_other]
  for (path, a), (_, b) in zip(leaves_straight, leaves_other):
    assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)


def test_sigkill_anywhere_then_resume_is_bit_identical(cifar_dir, tmp_path):
  cache = tmp_path / "cache"
  straight = tmp_path / "straight"
  done = subprocess.run(command(straight, cifar_dir, cache), cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  killed = tmp_path / "killed"
  cmd = command(killed, cifar_dir, cache)
  # 1. Before the first checkpoint: the rerun starts over.
  run_and_kill(cmd, lambda: max(logged_steps(killed), default=0) >= 3)
  assert not [e for e in checkpoint_entries(killed) if e.isdigit()]
  # 2. Mid-epoch, after a checkpoint: the rerun resumes from it and repeats the lost steps.
  run_and_kill(cmd, lambda: max(logged_steps(killed), default=0) >= STEPS_PER_EPOCH + 5)
  saved = [int(e) for e in checkpoint_entries(killed) if e.isdigit()]
  assert saved and max(saved) >= STEPS_PER_EPOCH
  # 3. The moment a new checkpoint starts to be written (Orbax saves asynchronously, into a
  #    temporary folder it renames when complete): the half-written one is not used.
  before = set(checkpoint_entries(killed))
  stderr = run_and_kill(cmd, lambda: bool(set(checkpoint_entries(killed)) - before))
  assert f"at step {max(saved)}" in stderr  # it had resumed from the newest checkpoint
  # 4. Left alone, it finishes.
  done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from" in done.stderr

  assert_same_final_state(straight, killed, EPOCHS * STEPS_PER_EPOCH)
  # Same final evaluation too (same features, same probe).
  results = [json.loads((w / "results.json").read_text()) for w in (straight, killed)]
  assert results[0]["knn_top1"] == results[1]["knn_top1"]
  assert results[0]["linear_top1"] == results[1]["linear_top1"]
