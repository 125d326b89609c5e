"""The package as users get it, away from the checkout: the built wheel in a fresh virtualenv, used
from another directory, and the Colab notebook's own install cell on a machine whose jax is
preinstalled (as Colab's CUDA/TPU build is) and must stay. Both install from the package index."""

import json
import os
import subprocess
import sys

import nbformat
import pytest

from conftest import REPO, declared_minimums

pytestmark = pytest.mark.slow


# rwl_jax's own floor for jax, older than the newest flax and chex accept: left to itself, pip would
# replace it to install the newest of those.
PREINSTALLED_JAX = declared_minimums()["jax"]


def _run(command, cwd, timeout=1200, **env):
  done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu", **env))
  assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
  return done


def _virtualenv(path):
  subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
  return path / "bin" / "python"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  out = tmp_path_factory.mktemp("wheel")
  _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, REPO], cwd=out)
  (built,) = out.glob("rwl_jax-*.whl")
  return built


def test_wheel_trains_and_evaluates_outside_the_checkout(wheel, cifar_dir, tmp_path):
  python = _virtualenv(tmp_path / "venv")
  _run([python, "-m", "pip", "install", "--quiet", wheel], cwd=tmp_path)
  home = tmp_path / "elsewhere"
  home.mkdir()
  located = _run([python, "-c", "import rwl_jax; print(rwl_jax.__file__)"], cwd=home).stdout
  assert str(tmp_path / "venv") in located and str(REPO) not in located

  data = [f"--config.data.image_dir={cifar_dir}", f"--config.data.cache_dir={tmp_path / 'cache'}"]
  # A packaged config by name, through the console entry point.
  _run([tmp_path / "venv" / "bin" / "rwl-jax", "train", "--config=cifar10_rwl:smoke",
        "--workdir=runs/rwl", *data], cwd=home)
  results = json.loads((home / "runs" / "rwl" / "results.json").read_text())
  assert results["method"] == "rwl" and results["epochs"] == 2 and 0 < results["knn_top1"] <= 1

  # A config file of the user's own, built on the packaged recipe.
  (home / "my_simclr.py").write_text(
      "from rwl_jax.configs import common\n\n\n"
      "def get_config(arg=None):\n"
      "  config = common.get_config('smoke')\n"
      "  config.method, config.num_epochs, config.eval.linear_epochs = 'simclr', 1, 1\n"
      "  return config\n")
  _run([python, "-m", "rwl_jax.main", "--config=my_simclr.py", "--workdir=runs/mine", *data],
       cwd=home)
  assert json.loads((home / "runs" / "mine" / "results.json").read_text())["method"] == "simclr"

  evaluated = _run([python, "-m", "rwl_jax.evaluate", "--workdir=runs/rwl", "--nolinear"], cwd=home)
  assert json.loads(evaluated.stdout[evaluated.stdout.index("{"):])["knn_top1"] == \
      pytest.approx(results["knn_top1"])


def test_colab_install_cell_keeps_the_preinstalled_jax(wheel, tmp_path):
  python = _virtualenv(tmp_path / "venv")
  _run([python, "-m", "pip", "install", "--quiet", f"jax=={PREINSTALLED_JAX}",
        f"jaxlib=={PREINSTALLED_JAX}"], cwd=tmp_path)
  notebook = nbformat.read(REPO / "launch" / "colab.ipynb", as_version=4)
  install_cell = next(cell.source for cell in notebook.cells
                      if cell.cell_type == "code" and "pip_install" in cell.source)
  (tmp_path / "install_cell.py").write_text(install_cell)
  done = _run([python, "install_cell.py"], cwd=tmp_path, RWL_JAX_REPOSITORY=str(wheel))
  assert f"with jax {PREINSTALLED_JAX}" in done.stdout, done.stdout
  versions = _run([python, "-c", "import jax, flax, rwl_jax.train; print(jax.__version__)"],
                  cwd=tmp_path).stdout
  assert versions.strip() == PREINSTALLED_JAX
