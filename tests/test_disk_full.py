"""A disk that fills up mid-run (ENOSPC, on a real small tmpfs): a checkpoint save (synchronous,
or asynchronous, whose failure surfaces at the next wait) or a metrics write fails; the run stops
with one `error:` line naming the path, 'no space left' and the remedy; the last complete
checkpoint stays usable, a partial one is never taken for complete, nothing of the user's is
deleted; once space is back, the same command resumes and ends bit-identical to a run left alone.

Needs root (or passwordless sudo) to mount the tmpfs; skipped otherwise.
"""

import errno
import os
import re
import subprocess
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (REPO, TINY_RUN_EPOCHS, TINY_RUN_STEPS_PER_EPOCH, subprocess_environment,
                      tiny_run_command)
from rwl_jax.run.checkpoint import Checkpointer
from rwl_jax.errors import RunError
from rwl_jax.run.metrics import MetricWriter, read_rows


def fill(path):
  """Writes `path` until the disk has no byte left (the test's stand-in for the user's files)."""
  descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
  size = 1 << 20
  try:
    while size:
      try:
        os.write(descriptor, b"\0" * size)
      except OSError as error:
        if error.errno != errno.ENOSPC:
          raise
        size //= 2
  finally:
    os.close(descriptor)


def _mount_command():
  if os.geteuid() == 0:
    return []
  if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
    return ["sudo", "-n"]
  return None


@pytest.fixture
def small_disk(tmp_path):
  """A fresh 16 MiB tmpfs: a disk that really fills up."""
  prefix = _mount_command()
  if prefix is None:
    pytest.skip("mounting a tmpfs needs root or passwordless sudo")
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(prefix + ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield disk
  finally:
    subprocess.run(prefix + ["umount", "-l", str(disk)], check=False)


def small_state():
  return {"w": jnp.arange(100_000, dtype=jnp.float32) / 3, "step": jnp.asarray(1, jnp.int32)}


@pytest.mark.parametrize("asynchronous", [True, False])
def test_a_save_on_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(small_disk,
                                                                         asynchronous):
  checkpointer = Checkpointer(small_disk / "work", keep=3, asynchronous=asynchronous)
  state = small_state()
  checkpointer.save(1, state)
  checkpointer.wait()
  fill(small_disk / "users_file")
  with pytest.raises(RunError) as raised:
    checkpointer.save(2, jax.tree.map(lambda x: x + 1, state))
    assert asynchronous  # the synchronous save raises above; the asynchronous one here:
    checkpointer.wait()
  message = str(raised.value)
  assert "\n" not in message and message.startswith("no space left")
  assert f"{checkpointer.directory}/2 could not be written" in message
  assert "step 1, is intact" in message and "rerun the same command" in message
  assert checkpointer.all_steps() == [1]
  checkpointer.close()  # as the run does on its way out; nothing more to raise
  # The partial checkpoint is gone (its space given back), the user's file is not.
  assert sorted(p.name for p in checkpointer.directory.iterdir()) == ["1"]
  assert (small_disk / "users_file").exists()

  os.remove(small_disk / "users_file")  # space is back: the rerun saves step 2 again
  checkpointer = Checkpointer(small_disk / "work", keep=3, asynchronous=asynchronous)
  checkpointer.save(2, jax.tree.map(lambda x: x + 1, state))
  checkpointer.close()
  restored = checkpointer.restore(1, state)
  assert np.array_equal(np.asarray(restored["w"]), np.asarray(state["w"]))
  assert checkpointer.all_steps() == [1, 2]


def test_metrics_on_a_full_disk_are_one_line(small_disk):
  workdir = small_disk / "work"
  writer = MetricWriter(workdir, enabled=True)
  writer.write_scalars(1, {"loss": 1.0})
  fill(small_disk / "users_file")
  with pytest.raises(RunError) as raised:
    for step in range(2, 2000):  # the files' last pages fill first
      writer.write_scalars(step, {"loss": 1.0, "learning_rate": 0.1, "step_seconds": 0.5})
  message = str(raised.value)
  assert re.match(rf"no space left on the device of {workdir}/(metrics.jsonl|tensorboard): "
                  "metrics could not be written; checkpoints already saved are intact: free space",
                  message), message
  writer.close()  # says nothing more: the error was raised already
  assert read_rows(workdir / "metrics.jsonl")[0]["step"] == 1


# End to end, through the command line.

# Runs in the training process (as its sitecustomize): fills the disk (FILLER) just before the
# checkpoint save of step SAVE_STEP, or before the metrics of step METRICS_STEP are written.
FILL_THE_DISK = textwrap.dedent("""
    import errno, os
    from rwl_jax.run import checkpoint, metrics

    def _fill(path=os.environ["FILLER"]):
      descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
      size = 1 << 20
      while size:
        try:
          os.write(descriptor, b"\\0" * size)
        except OSError as error:
          if error.errno != errno.ENOSPC:
            raise
          size //= 2
      os.close(descriptor)

    _save = checkpoint.Checkpointer.save
    _write = metrics.MetricWriter.write_scalars

    def save(self, step, state):
      if step == int(os.environ.get("SAVE_STEP", "-1")):
        _fill()
      return _save(self, step, state)

    def write_scalars(self, step, scalars):
      if step == int(os.environ.get("METRICS_STEP", "-1")) and "loss" in scalars:
        _fill()
      return _write(self, step, scalars)

    checkpoint.Checkpointer.save = save
    metrics.MetricWriter.write_scalars = write_scalars
    """)


@pytest.fixture(scope="module")
def straight_run(cifar_dir, tmp_path_factory):
  """The same command left alone, on a disk with room."""
  root = tmp_path_factory.mktemp("straight")
  done = subprocess.run(tiny_run_command(root / "work", cifar_dir, root / "cache"), cwd=REPO,
                        env=subprocess_environment(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return root / "work", root / "cache"


@pytest.mark.slow  # two short training runs in subprocesses per case
@pytest.mark.parametrize("extra, trigger, names", [
    # The save of step 20 fails inside save().
    (["--config.checkpoint_async=False"], {"SAVE_STEP": "20"},
     r"checkpoints: checkpoint \S+/checkpoints/20 could not be written"),
    # save() returns; the failure surfaces at the next wait (and outlives the metrics' own).
    ([], {"SAVE_STEP": "20"}, r"checkpoints: checkpoint \S+/checkpoints/20 could not be written"),
    # Full from step 11: the metrics files' last pages fill within the ten rows before step 20's
    # save (each gets about 700 bytes a step here, a page is 4096).
    (["--config.checkpoint_async=False"], {"METRICS_STEP": "11"},
     r"(metrics.jsonl|tensorboard): metrics could not be written"),
], ids=["synchronous save", "asynchronous save", "metrics"])
def test_a_disk_filling_up_mid_run_stops_in_one_line_and_resumes(
    extra, trigger, names, small_disk, straight_run, cifar_dir, tmp_path):
  from test_preemption import assert_same_final_state, checkpoint_entries  # pylint: disable=g-import-not-at-top

  straight, cache = straight_run
  hook_dir = tmp_path / "hook"
  hook_dir.mkdir()
  (hook_dir / "sitecustomize.py").write_text(FILL_THE_DISK)
  workdir, filler = small_disk / "work", small_disk / "users_file"
  cmd = tiny_run_command(workdir, cifar_dir, cache, *extra)

  failed = subprocess.run(cmd, cwd=REPO,
                          env=subprocess_environment(hook_dir, FILLER=str(filler), **trigger),
                          capture_output=True, text=True, timeout=600)
  assert failed.returncode == 2, failed.stderr[-3000:]
  errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
  assert re.match(rf"error: no space left on the device of {workdir}/{names}", errors[0]), errors
  assert "rerun the same command to resume" in errors[0]
  # Step 10's checkpoint is complete and the only one; no partial one is left; the user's file is.
  assert checkpoint_entries(workdir) == [str(TINY_RUN_STEPS_PER_EPOCH)], checkpoint_entries(workdir)
  assert filler.exists() and not (workdir / "results.json").exists()

  os.remove(filler)  # space is back: the same command resumes
  done = subprocess.run(cmd, cwd=REPO, env=subprocess_environment(), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"at step {TINY_RUN_STEPS_PER_EPOCH}" in done.stderr
  assert_same_final_state(straight, workdir, TINY_RUN_EPOCHS * TINY_RUN_STEPS_PER_EPOCH)
