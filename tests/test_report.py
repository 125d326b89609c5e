"""rwl_jax.report: the Markdown table and the kNN-against-minutes plot from run directories."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from rwl_jax import report
from rwl_jax.errors import ConfigError


def fake_run(directory, method, start, knn_by_minute):
  directory.mkdir()
  rows = [{"step": 10 * i, "time": start + 60 * minute, "knn_top1": knn}
          for i, (minute, knn) in enumerate(knn_by_minute)]
  rows.insert(1, {"step": 5, "time": start + 1, "loss": 3.0, "images_per_second": 100.0})
  (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (directory / "results.json").write_text(json.dumps({
      "method": method, "epochs": 3, "knn_top1": knn_by_minute[-1][1], "linear_top1": 0.5,
      "images_per_second": 1234.4, "seconds_per_epoch": 2.25}))
  return directory


def test_table_curve_and_plot(tmp_path):
  a = fake_run(tmp_path / "a", "rwl", 1000.0, [(0, 0.1), (2, 0.3), (5, 0.45)])
  b = fake_run(tmp_path / "b", "simclr", 5000.0, [(0, 0.1), (4, 0.4)])
  runs = [report.load(a), report.load(b)]
  assert runs[0]["knn_curve"] == [(0.0, 0, 0.1), (2.0, 10, 0.3), (5.0, 20, 0.45)]
  table = report.markdown_table(runs).splitlines()
  assert table[2] == "| a | rwl | 3 | 45.0 | 50.0 | 1234 | 2.2 | 0: 10.0, 10: 30.0 |"
  assert table[3].startswith("| b | simclr | 3 | 40.0 |")
  png = tmp_path / "curve.png"
  done = subprocess.run([sys.executable, "-m", "rwl_jax.report", f"--workdirs={a},{b}",
                         f"--plot={png}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_not_a_run(tmp_path):
  with pytest.raises(ConfigError, match="is not a finished run"):
    report.load(tmp_path)
