"""data.augment_on='device': the split on the devices, JAX views inside the step."""

import json
import shutil
import textwrap

import jax
import numpy as np
import pytest

from conftest import run_on_devices, tiny_config
from rwl_jax.run import experiment
from rwl_jax import parallel, train
from rwl_jax.run.checkpoint import Checkpointer

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it


def final_state(config, workdir):
  template = experiment.build(config, parallel.make_mesh(), steps_per_epoch=10).abstract_state()
  checkpointer = Checkpointer(workdir)
  state = checkpointer.restore(checkpointer.latest_step(), template)
  checkpointer.close()
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats))]


def test_device_augmentation_trains_and_resumes_bit_exactly(cifar_dir, tmp_path):
  config = tiny_config(cifar_dir, tmp_path / "cache")
  config.data.augment_on = "device"
  config.data.max_train_examples = 160  # 5 steps of 32 per epoch
  config.eval.linear_epochs = 1
  results = train.train_and_evaluate(config, str(tmp_path / "straight"))
  assert results["steps"] == 10 and 0 <= results["knn_top1"] <= 1
  losses = [json.loads(line)["loss"] for line in
            (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines() if "loss" in line]
  assert len(losses) == 2 and all(np.isfinite(losses))

  # The same run cut after epoch 1 (its last checkpoint removed) and started again resumes at
  # step 5 and draws the same views and batches: bit-identical parameters at the end.
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "10")
  again = train.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert again["steps"] == 10
  for a, b in zip(final_state(config, tmp_path / "straight"), final_state(config, tmp_path / "resumed")):
    np.testing.assert_array_equal(a, b)


_SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    from rwl_jax.configs import common
    from rwl_jax.run import experiment
    from rwl_jax import parallel
    from rwl_jax.data import device_pipeline
    config = common.get_config()
    config.global_batch_size = 16
    config.model.width = 4
    config.model.projector_dims = (16, 8)
    config.data.augment_on = "device"
    images = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    indices = np.arange(16, dtype=np.int32) * 3
    losses = []
    for devices in (jax.devices()[:1], jax.devices()):
      mesh = parallel.make_mesh(devices)
      built = experiment.build(config, mesh, steps_per_epoch=10)
      state, step = built.init_state(), built.jitted_step
      data = device_pipeline.put_dataset(images, mesh)
      for _ in range(2):
        state, metrics = step(state, data, parallel.to_global(indices, mesh))
      losses.append(float(metrics["loss"]))
    print("RESULT " + json.dumps(losses))
""")


def test_device_views_do_not_depend_on_the_device_count():
  one, eight = run_on_devices(_SCRIPT)
  assert abs(one - eight) <= 1e-5 * abs(one)
