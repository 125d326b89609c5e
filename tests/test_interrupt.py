"""Ctrl-C (SIGINT) or SIGTERM (preemption) during training saves a checkpoint: no lost work."""

import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from conftest import REPO, interrupt_after_logging

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it


@pytest.mark.parametrize("stop, said", [(signal.SIGINT, "interrupted"),
                                        (signal.SIGTERM, "stopped by SIGTERM")])
def test_signal_saves_a_checkpoint_and_the_rerun_resumes(stop, said, cifar_dir, tmp_path):
  workdir = tmp_path / "work"
  command = [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
             f"--workdir={workdir}", f"--config.data.image_dir={cifar_dir}",
             f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.num_epochs=50",
             "--config.global_batch_size=32", "--config.model.width=4",
             "--config.model.projector_dims=(16,8)", "--config.log_every_steps=2",
             "--config.checkpoint_every_epochs=100", "--config.eval.linear_epochs=1"]
  returncode, stderr = interrupt_after_logging(command, REPO, workdir / "metrics.jsonl", stop)
  assert returncode == 2, stderr[-2000:]
  match = re.search(rf"error: {said} at step (\d+); checkpoint saved in (\S+), rerun", stderr)
  assert match, stderr[-2000:]
  step = int(match.group(1))
  assert step >= 4 and (pathlib.Path(match.group(2)) / str(step)).is_dir()
  assert "Traceback" not in stderr
  if stop == signal.SIGTERM:
    return  # the resume below is the same for both signals

  # The same command, now for one epoch in total (fewer than the step reached would be an error),
  # resumes from that checkpoint.
  steps_per_epoch = 640 // 32
  epochs = step // steps_per_epoch + 1
  command[command.index("--config.num_epochs=50")] = f"--config.num_epochs={epochs}"
  done = subprocess.run(command + ["--accept_config_change"], cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"resumed from {workdir.resolve() / 'checkpoints'} at step {step}" in done.stderr
