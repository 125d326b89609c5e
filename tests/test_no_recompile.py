"""The jitted steps compile once: later steps (new batches, new state) reuse the executable."""

import numpy as np
import pytest

from rwl_jax.configs import common
from rwl_jax.run import experiment
from rwl_jax import parallel
from rwl_jax.data import device_pipeline

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it


def test_host_and_device_steps_compile_once():
  config = common.get_config()
  config.global_batch_size = 8
  config.model.width = 4
  config.model.projector_dims = (8, 8)
  mesh = parallel.make_mesh()
  built = experiment.build(config, mesh, steps_per_epoch=10)
  state = built.init_state()
  host_step = built.jitted_step
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {k: rng.normal(size=(8, 32, 32, 3)).astype(np.float32) for k in ("view1", "view2")}
    state, metrics = host_step(state, parallel.to_global(batch, mesh))
  assert host_step._cache_size() == 1  # pylint: disable=protected-access

  config.data.augment_on = "device"
  device_step = experiment.build(config, mesh, steps_per_epoch=10).jitted_step
  images = device_pipeline.put_dataset(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), mesh)
  for step in range(3):
    indices = np.arange(8, dtype=np.int32) + step
    state, metrics = device_step(state, images, parallel.to_global(indices, mesh))
  assert device_step._cache_size() == 1  # pylint: disable=protected-access
  assert np.isfinite(float(metrics["loss"]))
