"""Row-sharded RWL and NT-Xent (losses.sharded) on 8 simulated devices: the same values and
gradients as the whole-matrix losses, O(b B) memory per device, and a train step that moves no
images between devices."""

import textwrap

import pytest

from conftest import run_on_devices

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it

# Runs in a fresh process: the device count is fixed when JAX starts.
_SCRIPT = textwrap.dedent("""
    import json, re
    import jax, jax.numpy as jnp, numpy as np
    from rwl_jax.configs import common
    from rwl_jax.run import experiment
    from rwl_jax import losses, parallel
    from rwl_jax.tools import memory

    assert jax.device_count() == 8
    mesh = parallel.make_mesh()
    out = {"agreement": [], "memory": {}}
    rng = np.random.default_rng(0)
    for dtype in (jnp.float32, jnp.bfloat16):
      z1, z2 = (jnp.asarray(rng.normal(size=(64, 16)), dtype) for _ in range(2))
      z1s, z2s = (jax.device_put(z, parallel.data_sharded(mesh)) for z in (z1, z2))
      for name, whole, sharded in (("rwl", losses.rwl_loss, losses.sharded_rwl_loss),
                                   ("simclr", losses.nt_xent_loss, losses.sharded_nt_xent_loss)):
        row_loss = sharded(mesh, "data")
        for tau in (0.1, 0.4):
          v, g = jax.value_and_grad(whole, argnums=(0, 1))(z1, z2, tau)
          vs, gs = jax.jit(jax.value_and_grad(row_loss, argnums=(0, 1)), static_argnums=2)(
              z1s, z2s, tau)
          grad_error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
                           for a, b in zip(g, gs))
          out["agreement"].append([name, str(dtype.dtype), tau, float(v), float(vs), grad_error])

    # Temporary memory per device at B = 4096 on 8 devices (b = 512): the [2b, 2B] block is 32 MiB.
    for variant, kwargs in (("row_sharded", {}), ("replicated", {"replicate": True})):
      loss = losses.sharded_rwl_loss(mesh, "data") if variant == "row_sharded" else losses.rwl_loss
      out["memory"][variant] = memory.loss_temp_bytes(loss, 4096, 128, 0.4, mesh, **kwargs)

    # The whole RWL step: only all-gathers, reduce-scatters and all-reduces; no all-to-all or
    # collective-permute (which would mean images or embeddings reshuffled between devices).
    config = common.get_config()
    config.global_batch_size = 64
    config.model.width = 4
    config.model.projector_dims = (16, 8)
    built = experiment.build(config, mesh, steps_per_epoch=10)
    compiled, _ = built.compile_step(built.abstract_state(), *built.host_inputs_spec())
    hlo = compiled.as_text()
    out["collectives"] = sorted(set(re.findall(
        r"\\b(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\(", hlo)))
    print("RESULT " + json.dumps(out))
""")


def test_row_sharded_losses_match_memory_and_collectives():
  out = run_on_devices(_SCRIPT)
  for name, dtype, tau, whole, sharded, grad_error in out["agreement"]:
    assert abs(whole - sharded) <= 1e-5 * abs(whole), (name, dtype, tau, whole, sharded)
    assert grad_error <= 1e-5, (name, dtype, tau, grad_error)
  block = 2 * 512 * 2 * 4096 * 4  # this device's rows of the 2B x 2B float32 matrix
  matrix = (2 * 4096) ** 2 * 4
  assert out["memory"]["row_sharded"] <= 6 * block  # O(b B): a few copies of its block
  assert out["memory"]["replicated"] >= matrix  # O(B^2): at least the whole matrix
  assert out["collectives"] and set(out["collectives"]) <= {"all-gather", "all-reduce",
                                                            "reduce-scatter"}, out["collectives"]
