"""launch/colab.ipynb runs unattended (nbclient) with a tiny config on the real CIFAR-10 subset:
it trains with a progress bar, draws the loss/kNN curves and the 2-D feature projection."""

import json

import nbformat
from nbclient import NotebookClient
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it


def test_colab_notebook_runs_end_to_end(cifar_dir, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  # The kernel inherits this environment: the notebook reads its settings from it.
  for name, value in {"RWL_JAX_IMAGE_DIR": str(cifar_dir), "RWL_JAX_EPOCHS": "2",
                      "RWL_JAX_WIDTH": "4", "RWL_JAX_BATCH": "64", "RWL_JAX_LINEAR_EPOCHS": "2",
                      "RWL_JAX_WORKDIR": str(workdir), "RWL_JAX_CACHE": str(tmp_path / "cache"),
                      "JAX_PLATFORMS": "cpu"}.items():
    monkeypatch.setenv(name, value)
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows figures
  notebook = nbformat.read(REPO / "launch" / "colab.ipynb", as_version=4)
  assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
      "commit the notebook without outputs"
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(REPO / "launch")}}).execute()

  outputs = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "kNN top-1" in text and "linear probe top-1" in text
  assert "RWL: 100%" in text  # the progress bar reached the last step (2 epochs x 10 steps)
  images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
  assert len(images) == 2  # the curves and the 2-D projection
  results = json.loads((workdir / "results.json").read_text())
  assert results["epochs"] == 2 and results["steps"] == 20
