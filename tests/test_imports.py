"""The package and its accelerator path import without TensorFlow (the GPU machines have none)."""

import subprocess
import sys

import pytest

from conftest import REPO

# Command-line modules define absl flags when imported, so each gets its own process.
COMMAND_LINE = ["rwl_jax.main", "rwl_jax.benchmark", "rwl_jax.memory", "rwl_jax.report",
                "rwl_jax.export", "rwl_jax.profile_summary", "rwl_jax.evaluate.__main__",
                "rwl_jax.tools.benchmark", "rwl_jax.tools.memory", "rwl_jax.tools.report"]
# The only places TensorFlow belongs: the tf.data host pipeline.
HOST_ONLY = ["rwl_jax.data.pipeline", "rwl_jax.data.augment_tf"]

_CODE = """
import importlib, pkgutil, sys
import rwl_jax
names = sorted(m.name for m in pkgutil.walk_packages(rwl_jax.__path__, "rwl_jax."))
wanted = {wanted}
for name in (names if wanted is None else wanted):
  if name not in {skip}:
    importlib.import_module(name)
print(len(names), sorted(m for m in sys.modules
                         if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')))
"""


@pytest.mark.parametrize("modules", [None] + COMMAND_LINE)
def test_modules_other_than_tf_data_do_not_import_tensorflow(modules):
  wanted = None if modules is None else [modules]
  code = _CODE.format(wanted=wanted, skip=set(HOST_ONLY + COMMAND_LINE) if modules is None else set())
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  count, imported = done.stdout.strip().splitlines()[-1].split(" ", 1)
  assert int(count) >= 30 and imported == "[]", done.stdout
