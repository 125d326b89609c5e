"""The package and its accelerator path import without TensorFlow (the GPU machines have none)."""

import subprocess
import sys

from conftest import REPO


def test_core_modules_do_not_import_tensorflow():
  code = ("import sys; import rwl_jax, rwl_jax.losses, rwl_jax.models, rwl_jax.train, "
          "rwl_jax.evaluate, rwl_jax.evaluate.features, rwl_jax.data.sources, rwl_jax.metrics; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')))")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().splitlines()[-1] == "[]"
