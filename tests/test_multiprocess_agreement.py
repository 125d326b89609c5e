"""Two processes (jax.distributed over localhost, gloo) agree: on the step a stop signal takes
effect when each gets it at a different step, on the checkpoint to resume from when only one of
them cannot read the newest, and on who writes an evaluation's result file."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.slow  # several processes compiling full steps


ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
           PYTHONPATH=str(REPO))


def distributed(port, index):
  return ["--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2",
          f"--process_id={index}"]


def logged_steps(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return 0
  return sum('"loss"' in line for line in path.read_text().splitlines())


def test_stop_signals_at_different_steps_stop_both_processes_at_one_step(cifar_dir, tmp_path):
  workdir = tmp_path / "work"
  train = [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
           f"--workdir={workdir}", f"--config.data.image_dir={cifar_dir}",
           f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.num_epochs=50",
           "--config.global_batch_size=32", "--config.model.width=4",
           "--config.model.projector_dims=(16,8)", "--config.log_every_steps=4",
           "--config.checkpoint_every_epochs=100", "--config.eval.linear_epochs=1",
           "--config.eval.probe_batch_size=0", "--config.eval.batch_size=64"]
  port = free_port()
  workers = [subprocess.Popen(train + distributed(port, index), cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for index in (0, 1)]
  deadline = time.time() + 400
  while logged_steps(workdir) < 2:
    assert all(w.poll() is None for w in workers), workers[0].communicate()[1][-3000:]
    assert time.time() < deadline, "training never logged"
    time.sleep(0.2)
  # Like a cluster's scheduler: every node gets TERM, at slightly different times.
  workers[0].send_signal(signal.SIGTERM)
  time.sleep(0.25)
  workers[1].send_signal(signal.SIGTERM)
  outputs = [worker.communicate(timeout=300) for worker in workers]
  stopped_at = []
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    match = re.search(r"error: stopped (?:by SIGTERM|because another process was) at step (\d+); "
                      r"checkpoint saved", stderr)
    assert match, stderr[-3000:]
    stopped_at.append(int(match.group(1)))
  assert stopped_at[0] == stopped_at[1] and stopped_at[0] % 4 == 0, stopped_at
  assert (workdir / "checkpoints" / str(stopped_at[0])).is_dir()

  # Evaluating that checkpoint on two processes: both finish, one result file, printed once.
  port = free_port()
  evaluate = [sys.executable, "-m", "rwl_jax.evaluate", f"--workdir={workdir}", "--nolinear"]
  workers = [subprocess.Popen(evaluate + distributed(port, index), cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for index in (0, 1)]
  outputs = [worker.communicate(timeout=300) for worker in workers]
  for worker, (_, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
  printed = [stdout for stdout, _ in outputs]
  # The results are the JSON object printed last (libraries may print lines before it).
  assert "{" not in printed[1], printed[1][-2000:]
  results = json.loads(printed[0][printed[0].rindex("\n{") + 1:] if "\n{" in printed[0]
                       else printed[0][printed[0].index("{"):])
  assert results["step"] == stopped_at[0], printed[0][-2000:]
  assert json.loads((workdir / f"eval_step_{stopped_at[0]}.json").read_text())["step"] == stopped_at[0]


_FALLBACK = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    from rwl_jax import parallel
    from rwl_jax.run.checkpoint import Checkpointer
    mesh = parallel.make_mesh()
    state = {"w": jax.device_put(jnp.ones((4,)), parallel.replicated(mesh))}
    checkpointer = Checkpointer(sys.argv[3], keep=3)
    for step in (1, 2):
      checkpointer.save(step, jax.tree.map(lambda x: x * step, state))
    checkpointer.wait()
    if jax.process_index() == 1:  # only this process cannot read the newest checkpoint
      real = checkpointer.restore
      def restore(step, target):
        restored = real(step, target)  # a collective read: every process takes part
        if step == 2:
          raise OSError("a shard of checkpoint 2 is cut short")
        return restored
      checkpointer.restore = restore
    step, restored = checkpointer.restore_newest_readable(state)
    value = float(parallel.fetch(restored["w"])[0])
    checkpointer.close()
    print(f"RESULT {step} {value}")
""")


def test_a_checkpoint_unreadable_on_one_process_is_skipped_by_all(tmp_path):
  port = free_port()
  workers = [subprocess.Popen([sys.executable, "-c", _FALLBACK, f"localhost:{port}", str(index),
                               str(tmp_path / "work")], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for index in (0, 1)]
  outputs = [worker.communicate(timeout=120) for worker in workers]
  results = []
  for worker, (stdout, stderr) in zip(workers, outputs):
    assert worker.returncode == 0, stderr[-3000:]
    results.append(next(line for line in stdout.splitlines() if line.startswith("RESULT ")))
  assert results == ["RESULT 1 1.0", "RESULT 1 1.0"]
  assert (tmp_path / "work" / "checkpoints" / "2.unreadable").is_dir()
