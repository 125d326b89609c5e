"""Two processes x 4 CPU devices (jax.distributed over localhost) train like 1 process x 8."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it


def command(workdir, cifar_dir, cache, augment_on):
  return [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
          f"--workdir={workdir}", f"--config.data.image_dir={cifar_dir}",
          f"--config.data.cache_dir={cache}", "--config.num_epochs=1",
          "--config.global_batch_size=32", "--config.data.max_train_examples=64",
          "--config.model.width=4", "--config.model.projector_dims=(16,8)",
          "--config.log_every_steps=1", "--config.eval.linear_epochs=1", "--config.eval.batch_size=64",
          f"--config.data.augment_on={augment_on}"]


def environment(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def final_parameters(workdir):
  manager = ocp.CheckpointManager(workdir / "checkpoints", item_handlers=ocp.StandardCheckpointHandler())
  step = manager.latest_step()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step))
  restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  return step, [np.asarray(x) for x in jax.tree.leaves((restored["params"], restored["batch_stats"]))]


def losses(workdir):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [row["loss"] for row in rows if "loss" in row]


@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_two_processes_equal_one_process(cifar_dir, tmp_path, augment_on):
  single = tmp_path / "single"
  # One process reading both shards sees the batches two processes reading one each see.
  done = subprocess.run(command(single, cifar_dir, tmp_path / "cache", augment_on)
                        + ["--config.data.num_shards=2"], cwd=REPO,
                        env=environment(8), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  multi = tmp_path / "multi"
  port = free_port()
  workers = [subprocess.Popen(
      command(multi, cifar_dir, tmp_path / "cache", augment_on) + [
          "--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2",
          f"--process_id={index}"],
      cwd=REPO, env=environment(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for index in (0, 1)]
  outputs = [worker.communicate(timeout=600) for worker in workers]
  for index, (worker, (_, stderr)) in enumerate(zip(workers, outputs)):
    assert worker.returncode == 0, stderr[-3000:]
    # Each process decodes only its half of each split (64 train, 160 test images).
    start, end = (0, 32) if index == 0 else (32, 64)
    assert f"process {index} of 2 reads train examples [{start}, {end}) of 64" in stderr
    start, end = (0, 80) if index == 0 else (80, 160)
    assert f"process {index} of 2 reads test examples [{start}, {end}) of 160" in stderr

  single_losses, multi_losses = losses(single), losses(multi)
  assert len(single_losses) == 2
  # Step 1 sees the same data and parameters; step 2 follows one update made from the all-reduced
  # gradient. Both agree to float32 round-off (gloo sums in another order than one process).
  # Two steps, not more: with 4 images per device this width-4 model's BatchNorm amplifies that
  # round-off ~100x per step (host views: parameters 2e-8 of their norm apart after one step, 6e-7
  # after two, 4e-3 after four; device views: 1.1e-5 after two).
  np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-6)
  step_single, params_single = final_parameters(single)
  step_multi, params_multi = final_parameters(multi)
  assert step_single == step_multi == 2
  flat_single = np.concatenate([a.ravel() for a in params_single])
  flat_multi = np.concatenate([b.ravel() for b in params_multi])
  assert np.linalg.norm(flat_single - flat_multi) <= 1e-4 * np.linalg.norm(flat_single)
  # The evaluation gathers every process's features: the same kNN as one process.
  single_results = json.loads((single / "results.json").read_text())
  multi_results = json.loads((multi / "results.json").read_text())
  assert multi_results["test_examples"] == single_results["test_examples"] == 160
  assert abs(multi_results["knn_top1"] - single_results["knn_top1"]) <= 1 / 160
  # Only process 0 writes metrics and results.
  assert (multi / "results.json").exists()
  assert len(list((multi / "tensorboard").iterdir())) == 1
