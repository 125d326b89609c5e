"""Train steps on 8 simulated CPU devices equal the same steps on 1 device (BatchNorm and loss
over the global batch, parameters replicated)."""

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO

# Runs in a fresh process: the device count is fixed when JAX starts.
_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from configs import common
    from rwl_jax import methods, parallel, train

    assert jax.device_count() == 8, jax.devices()
    results = {}
    for method in ("rwl", "simclr"):
      config = common.get_config()
      config.method = method
      config.global_batch_size = 16
      config.model.width = 4
      config.model.projector_dims = (16, 8)
      rng = np.random.default_rng(0)
      batch = {k: rng.normal(size=(16, 32, 32, 3)).astype(np.float32) for k in ("view1", "view2")}
      outcome = []
      for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        tx, _ = train.create_optimizer(config, steps_per_epoch=10)
        defs, state = train.create_train_state(config, tx, mesh)
        step = train.compile_train_step(train.make_train_step(defs, tx, methods.loss_fn(config)), mesh)
        for _ in range(2):
          state, metrics = step(state, parallel.to_global(batch, mesh))
        leaves = [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats))]
        outcome.append((float(metrics["loss"]), leaves, len(state.params["encoder"]["stem_conv"]["kernel"].sharding.device_set)))
      (loss1, leaves1, n1), (loss8, leaves8, n8) = outcome
      # Relative error of each parameter / statistic tensor, in the Frobenius norm.
      worst = max(float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12)) for a, b in zip(leaves1, leaves8))
      results[method] = {"loss1": loss1, "loss8": loss8, "worst_relative": worst,
                         "param_devices": [n1, n8]}
    print("RESULT " + json.dumps(results))
""")


def test_one_and_eight_devices_agree():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  done = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
  results = json.loads(line[len("RESULT "):])
  for method, r in results.items():
    assert abs(r["loss1"] - r["loss8"]) <= 1e-5 * abs(r["loss1"]), (method, r)
    assert r["worst_relative"] < 1e-5, (method, r)
    assert r["param_devices"] == [1, 8], (method, r)  # replicated over the whole mesh
