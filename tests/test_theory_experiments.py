"""The theory-lab experiment scripts run at reduced size and their headline inequalities hold.

Each script exits non-zero with a one-line message when a headline check fails (see its
docstring); here each runs with --quick (seconds to ~30 s on a 2-core CPU) in a subprocess.
"""

import json
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = ("contrastive_optimum", "linear_regime", "spiked_covariance", "rwl_spectrum")


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_experiment_runs_quick_and_its_headline_checks_hold(name, tmp_path):
  done = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "theory" / f"{name}.py"), f"--out={tmp_path}",
       "--quick"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
  assert (tmp_path / f"{name}.png").stat().st_size > 0
  summary = json.loads((tmp_path / f"{name}.json").read_text())
  assert summary["quick"] is True and summary["failures"] == []
