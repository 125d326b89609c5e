"""rwl_jax.report: the Markdown table, the kNN-against-minutes plot and the diagnostics figure."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from rwl_jax import paths, tables
from rwl_jax.tools import report
from rwl_jax.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(directory, rows, results=None, text_after=""):
  directory.mkdir()
  (directory / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows) + text_after)
  (directory / "results.json").write_text(json.dumps(results or {"method": "rwl", "epochs": 1}))
  return directory


def fake_run(directory, method, start, knn_by_minute):
  rows = [{"step": 10 * i, "time": start + 60 * minute, "knn_top1": knn}
          for i, (minute, knn) in enumerate(knn_by_minute)]
  rows.insert(1, {"step": 5, "time": start + 1, "loss": 3.0, "images_per_second": 100.0})
  return write_run(directory, rows, {
      "method": method, "epochs": 3, "knn_top1": knn_by_minute[-1][1], "linear_top1": 0.5,
      "images_per_second": 1234.4, "seconds_per_epoch": 2.25})


def diagnostic_rows(start, scale):
  """A run as the training loop now logs it: diagnostics, timing and VICReg's terms."""
  rows = [{"step": 0, "time": start, "run_seconds": 3.0, "knn_top1": 0.1, "knn_top5": 0.5}]
  for step in (10, 20, 30):
    rows.append({"step": step, "time": start + step, "run_seconds": 3.0 + step, "loss": 5 / step,
                 "learning_rate": 0.1, "images_per_second": 900.0, "step_seconds": 0.1,
                 "data_wait_seconds": 0.01, "p_pos": scale * step / 40,
                 "p_pos_ceiling": 0.9, "ncut_bound": 1 / step, "rank_projections": step,
                 "rank_features": 2 * step, "alignment": 1.0, "uniformity": -2.0,
                 "probe_rwl": step / 20, "lrw_low_band": step, "lrw_high_band": 40 - step,
                 "vicreg_invariance": 1.0, "vicreg_variance": 0.5, "vicreg_covariance": 0.1})
  rows.append({"step": 30, "time": start + 40, "run_seconds": 43.0, "knn_top1": 0.4,
               "knn_top5": 0.8, "linear_top1": 0.45, "linear_top5": 0.85,
               "checkpoint_seconds": 1.5, "eval_seconds": 4.0})
  return rows


def test_table_curve_and_plot(tmp_path):
  a = fake_run(tmp_path / "a", "rwl", 1000.0, [(0, 0.1), (2, 0.3), (5, 0.45)])
  b = fake_run(tmp_path / "b", "simclr", 5000.0, [(0, 0.1), (4, 0.4)])
  runs = [report.load(a), report.load(b)]
  assert runs[0]["knn_curve"] == [(0.0, 0, 0.1), (2.0, 10, 0.3), (5.0, 20, 0.45)]
  table = report.markdown_table(runs).splitlines()
  # Runs without top-5 results keep the table's old header.
  assert table[0] == ("| run | method | epochs | kNN top-1 | linear top-1 | images/s | s/epoch "
                      "| kNN during training (step: top-1) |")
  assert table[2] == "| a | rwl | 3 | 45.0 | 50.0 | 1234 | 2.2 | 0: 10.0, 10: 30.0 |"
  assert table[3].startswith("| b | simclr | 3 | 40.0 |")
  c = write_run(tmp_path / "c", diagnostic_rows(9000.0, 1.0), {"method": "vicreg", "epochs": 1})
  png, diagnostics = tmp_path / "curve.png", tmp_path / "figures" / "diagnostics.png"
  done = subprocess.run([sys.executable, "-m", "rwl_jax.report", f"--workdirs={a},{b},{c}",
                         f"--plot={png}", f"--diagnostics={diagnostics}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 10_000
  assert diagnostics.read_bytes()[:8] == PNG_SIGNATURE and diagnostics.stat().st_size > 30_000


def test_top5_columns_only_when_some_run_has_them(tmp_path):
  with_top5 = report.load(write_run(tmp_path / "a", [{"step": 0, "time": 1.0, "knn_top1": 0.2}], {
      "method": "rwl", "epochs": 1, "knn_top1": 0.2, "knn_top5": 0.6, "linear_top1": 0.3}))
  without = report.load(write_run(tmp_path / "b", [{"step": 0, "time": 1.0, "knn_top1": 0.2}]))
  table = report.markdown_table([with_top5, without]).splitlines()
  assert table[0].startswith("| run | method | epochs | kNN top-1 | kNN top-5 | linear top-1 | "
                             "images/s |")  # no run has linear_top5: no column for it
  assert table[1] == "|" + " --- |" * 9
  assert table[2].startswith("| a | rwl | 1 | 20.0 | 60.0 | 30.0 | n/a |")
  assert table[3].startswith("| b | rwl | 1 | n/a | n/a | n/a | n/a |")


def test_minutes_count_run_time_not_downtime(tmp_path):
  rows = [{"step": 0, "time": 1000.0, "run_seconds": 30.0, "knn_top1": 0.1},
          {"step": 10, "time": 1120.0, "run_seconds": 150.0, "knn_top1": 0.2},
          # Resumed a day later from the checkpoint at step 10.
          {"step": 20, "time": 87_640.0, "run_seconds": 270.0, "knn_top1": 0.3}]
  run = report.load(write_run(tmp_path / "run", rows))
  assert run["knn_curve"] == [(0.0, 0, 0.1), (2.0, 10, 0.2), (4.0, 20, 0.3)]


def test_old_workdir_with_a_replay_and_a_truncated_line(tmp_path):
  rows = [{"step": 5, "time": 0.0, "loss": 5.0}, {"step": 10, "time": 60.0, "knn_top1": 0.2},
          {"step": 15, "time": 90.0, "loss": 3.0},  # after the checkpoint at 10: replayed
          {"step": 15, "time": 600.0, "loss": 3.5}, {"step": 20, "time": 660.0, "knn_top1": 0.3}]
  run = report.load(write_run(tmp_path / "run", rows, text_after='{"step": 25, "ti'))
  assert [(row["step"], row.get("loss")) for row in run["rows"]] == [
      (5, 5.0), (10, None), (15, 3.5), (20, None)]
  assert report.series(run, "loss") == ([5, 15], [5.0, 3.5])
  assert run["knn_curve"] == [(1.0, 10, 0.2), (11.0, 20, 0.3)]  # wall clock: no run_seconds


def test_empty_metrics_file(tmp_path):
  workdir = write_run(tmp_path / "run", [])
  with pytest.raises(ConfigError, match=r"metrics.jsonl has no rows: ") as error:
    report.load(workdir)
  assert "\n" not in str(error.value)


def test_a_run_without_results_is_reported_from_its_metrics(tmp_path, caplog):
  """A run in progress (or stopped before its final evaluation) has metrics.jsonl only: its row
  says what it does not know, and its whole kNN curve is drawn, the last point included."""
  finished = fake_run(tmp_path / "done", "rwl", 0.0, [(0, 0.1), (2, 0.3), (4, 0.4)])
  running = fake_run(tmp_path / "running", "simclr", 0.0, [(0, 0.1), (3, 0.35)])
  (running / "results.json").unlink()
  runs = [report.load(finished), report.load(running)]
  assert [run["finished"] for run in runs] == [True, False]
  assert "running/results.json not found" in caplog.text and "has not finished" in caplog.text
  table = report.markdown_table(runs).splitlines()
  assert table[2].startswith("| done | rwl | 3 | 40.0 |")
  assert table[2].endswith("| 0: 10.0, 10: 30.0 |")
  assert table[3].startswith("| running | ? | ? | n/a |")
  assert table[3].endswith("| 0: 10.0, 10: 35.0 |")
  assert report.plot(runs, str(tmp_path / "p.png"), "t") is None
  assert (tmp_path / "p.png").read_bytes().startswith(PNG_SIGNATURE)


def test_not_a_run(tmp_path):
  with pytest.raises(ConfigError, match="is not a finished run"):
    report.load(tmp_path)


def test_diagnostic_panels(tmp_path):
  runs = [report.load(write_run(tmp_path / "a", diagnostic_rows(0.0, 1.0))),
          report.load(write_run(tmp_path / "b", [
              {"step": 10, "time": 1.0, "loss": 1.0, "barlow_on_diagonal": 2.0,
               "barlow_off_diagonal": 0.1, "gsg_swap_rate": 0.3}]))]
  panels = {title: [name for name, _ in lines]
            for title, lines, _ in report.diagnostic_panels(runs)}
  assert panels["p_pos (ceiling dashed)"] == ["p_pos", "p_pos_ceiling"]
  assert panels["probe RWL (1: spectral-clustering boundary)"] == ["probe_rwl"]
  assert panels["accuracy"] == ["knn_top1", "knn_top5", "linear_top1", "linear_top5"]
  assert panels["vicreg terms"] == ["vicreg_covariance", "vicreg_invariance", "vicreg_variance"]
  assert panels["barlow terms"] == ["barlow_off_diagonal", "barlow_on_diagonal"]
  assert panels["gsg_swap_rate"] == ["gsg_swap_rate"]
  assert "seconds per epoch" not in panels  # no run logged epoch_seconds
  assert list(panels)[:3] == ["loss", "p_pos (ceiling dashed)", "Ncut bound"]


def test_bad_output_path_fails_before_reading_runs(tmp_path):
  (tmp_path / "file").write_text("")
  done = subprocess.run([sys.executable, "-m", "rwl_jax.report", f"--workdirs={tmp_path}/missing",
                         f"--diagnostics={tmp_path}/file/diagnostics.png"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert done.stderr.startswith("error: --diagnostics=") and "cannot be made" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1
  with pytest.raises(ConfigError, match="is a folder"):
    paths.output_file(str(tmp_path), "--plot")


def test_sweep_and_fine_tuning_columns_only_when_some_run_has_them(tmp_path):
  rows = [{"step": 0, "time": 1.0, "knn_top1": 0.2}]
  full = report.load(write_run(tmp_path / "a", rows, {
      "method": "rwl", "epochs": 1, "knn_top1": 0.4, "knn_top1_k10": 0.45, "knn_top5_k10": 0.9,
      "knn_top1_k200": 0.4, "linear_top1": 0.5, "finetune_10pct_top1": 0.6,
      "finetune_10pct_top5": 0.95, "finetune_1pct_top1": 0.3, "finetune_1pct_top5": 0.8}))
  plain = report.load(write_run(tmp_path / "b", rows, {"method": "simclr", "epochs": 1,
                                                       "knn_top1": 0.3, "linear_top1": 0.35}))
  header = report.markdown_table([full, plain]).splitlines()[0]
  assert header == ("| run | method | epochs | kNN top-1 | kNN k=10 | kNN k=200 | linear top-1 | "
                    "fine-tune 1% top-1 | fine-tune 1% top-5 | fine-tune 10% top-1 | "
                    "fine-tune 10% top-5 | images/s | s/epoch | "
                    "kNN during training (step: top-1) |")
  table = report.markdown_table([full, plain]).splitlines()
  assert table[2].startswith("| a | rwl | 1 | 40.0 | 45.0 | 40.0 | 50.0 | 30.0 | 80.0 | 60.0 | "
                             "95.0 |")
  assert table[3].startswith("| b | simclr | 1 | 30.0 | n/a | n/a | 35.0 | n/a | n/a | n/a | "
                             "n/a |")
  # Runs without any of them: the old header, nothing added.
  assert report.markdown_table([plain]).splitlines()[0] == (
      "| run | method | epochs | kNN top-1 | linear top-1 | images/s | s/epoch "
      "| kNN during training (step: top-1) |")


def test_accuracy_rows_of_one_results_file():
  results = {"knn_top1": 0.4, "knn_top5": 0.8, "knn_top1_k20": 0.42, "knn_top5_k20": 0.81,
             "knn_top1_k100": 0.41, "knn_top5_k100": 0.79, "linear_top1": 0.5,
             "linear_top5": 0.9, "finetune_0p5pct_top1": 0.2, "finetune_10pct_top1": 0.6,
             "finetune_10pct_top5": 0.95, "step": 20, "method": "rwl"}
  assert tables.format_table(tables.accuracy_rows(results, knn_k=200)).splitlines() == [
      "evaluation | top-1 | top-5", "--- | --- | ---", "kNN k=200 | 40.0 | 80.0",
      "kNN k=20 | 42.0 | 81.0", "kNN k=100 | 41.0 | 79.0", "linear probe | 50.0 | 90.0",
      "fine-tune 0.5% labels | 20.0 | n/a", "fine-tune 10% labels | 60.0 | 95.0"]
  assert tables.accuracy_rows({"step": 3}) == []
