"""rwl_jax.run.metrics: metrics.jsonl trimmed to the checkpoint on resume, run time without downtime."""

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from rwl_jax.run import metrics


class FakeClock:
  """time.monotonic that moves only when told to."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  fake = FakeClock()
  monkeypatch.setattr(metrics.time, "monotonic", fake)
  return fake


def rows_of(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def write_steps(writer, clock, steps, seconds_per_step=2.0):
  for step in steps:
    clock.now += seconds_per_step
    writer.write_scalars(step, {"loss": 1.0 / step})


def test_resume_replays_steps_once_and_skips_downtime(tmp_path, clock):
  writer = metrics.MetricWriter(tmp_path, enabled=True)
  write_steps(writer, clock, [5, 10, 15])
  writer.close()
  clock.now += 3600.0  # the crash, and an hour before the rerun
  seen = []
  writer = metrics.MetricWriter(tmp_path, resume_step=10, enabled=True,
                                on_write=lambda step, scalars: seen.append((step, scalars)))
  assert [row["step"] for row in rows_of(tmp_path)] == [5, 10]  # trimmed when opened
  write_steps(writer, clock, [15])
  writer.close()

  rows = rows_of(tmp_path)
  assert [row["step"] for row in rows] == [5, 10, 15]
  assert [row["run_seconds"] for row in rows] == [2.0, 4.0, 6.0]  # the hour is not counted
  assert all(isinstance(row["time"], float) for row in rows)
  assert seen == [(15, {"loss": 1.0 / 15})]
  assert not list(tmp_path.glob("metrics.jsonl.*"))  # no temporary file left behind


@pytest.mark.parametrize("resume_step", [None, 0])
def test_fresh_start_drops_an_earlier_attempts_rows(tmp_path, clock, resume_step):
  writer = metrics.MetricWriter(tmp_path, enabled=True)
  write_steps(writer, clock, [5, 10])
  writer.close()  # died before its first checkpoint: the rerun starts at step 0
  writer = metrics.MetricWriter(tmp_path, resume_step=resume_step, enabled=True)
  write_steps(writer, clock, [5])
  writer.close()
  assert [(row["step"], row["run_seconds"]) for row in rows_of(tmp_path)] == [(5, 2.0)]


def test_truncated_line_dropped_with_a_warning(tmp_path, clock, caplog):
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 5, "time": 1.0, "run_seconds": 7.0, "loss": 2.0}\n'
      '{"step": 10, "time": 2.0, "run_seconds": 9.0, "loss": 1.0}\n'
      '{"step": 15, "time": 3.0, "run_sec')  # killed mid-write
  with caplog.at_level(logging.WARNING):
    writer = metrics.MetricWriter(tmp_path, resume_step=20, enabled=True)
  assert "line 3 is not a metrics row" in caplog.text
  write_steps(writer, clock, [15])
  writer.close()
  assert [(row["step"], row["run_seconds"]) for row in rows_of(tmp_path)] == [
      (5, 7.0), (10, 9.0), (15, 11.0)]


def test_rows_written_before_run_seconds_resume_from_their_wall_clock_span(tmp_path, clock):
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 5, "time": 1000.0, "loss": 2.0}\n{"step": 10, "time": 1030.0, "loss": 1.0}\n')
  writer = metrics.MetricWriter(tmp_path, resume_step=10, enabled=True)
  write_steps(writer, clock, [15])
  writer.close()
  assert rows_of(tmp_path)[-1]["run_seconds"] == 32.0


def test_disabled_writer_touches_nothing(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 5, "time": 1.0, "loss": 2.0}\n')
  writer = metrics.MetricWriter(tmp_path, resume_step=0, enabled=False)
  writer.write_scalars(10, {"loss": 1.0})
  writer.close()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
  assert len(rows_of(tmp_path)) == 1


def test_latest_rows_keeps_the_replay_not_the_attempt_that_died():
  rows = [{"step": 5, "time": 1, "loss": 5.0},
          {"step": 10, "time": 2, "loss": 4.0}, {"step": 10, "time": 2, "epoch_seconds": 9.0},
          {"step": 15, "time": 3, "loss": 3.0},
          {"step": 20, "time": 4, "loss": 2.0},  # past the checkpoint at 10: replayed below
          {"step": 15, "time": 9, "loss": 3.5},
          {"step": 20, "time": 10, "loss": 2.5}, {"step": 20, "time": 11, "knn_top1": 0.4}]
  assert metrics.latest_rows(rows) == [
      {"step": 5, "time": 1, "loss": 5.0},
      {"step": 10, "time": 2, "loss": 4.0}, {"step": 10, "time": 2, "epoch_seconds": 9.0},
      {"step": 15, "time": 9, "loss": 3.5},
      {"step": 20, "time": 10, "loss": 2.5}, {"step": 20, "time": 11, "knn_top1": 0.4}]
  assert metrics.latest_rows(rows[:4]) == rows[:4]  # a run never resumed is left as it is
  # Same step, some scalars logged again: only the repeated ones are taken from the later row.
  same_step = [{"step": 3, "time": 1, "a": 1.0, "b": 2.0}, {"step": 3, "time": 2, "a": 1.5}]
  assert metrics.latest_rows(same_step) == [{"step": 3, "time": 1, "b": 2.0},
                                            {"step": 3, "time": 2, "a": 1.5}]


def test_parse_rows_skips_what_is_not_a_row(caplog):
  text = ('{"step": 1, "time": 1.0}\n\n[1, 2]\n{"time": 3.0}\n'
          '{"step": 2, "time": 2.0, "x": NaN}\n{"step": 3, "time": 3.0, "x": "high"}\n{"st')
  with caplog.at_level(logging.WARNING):
    rows = metrics.parse_rows(text, "metrics.jsonl")
  assert [row["step"] for row in rows] == [1, 2]
  # One warning for the file, however many lines: a file of garbage is not a page of warnings.
  assert [r.getMessage()[:60] for r in caplog.records] == [
      "metrics.jsonl line 3 is not a metrics row (a write cut short?) (and 3 more)"[:60]]
  assert "(and 3 more)" in caplog.text


def test_read_rows_of_bytes_that_are_not_text(tmp_path, caplog):
  (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "time": 1.0}\n\xff\xfe\x00garbage\n')
  with caplog.at_level(logging.WARNING):
    rows = metrics.read_rows(tmp_path / "metrics.jsonl")
  assert rows == [{"step": 1, "time": 1.0}] and "line 2 is not a metrics row" in caplog.text


def test_trims_a_gs_workdir_through_epath(tmp_path, clock):
  from local_bucket import local_bucket  # pylint: disable=g-import-not-at-top  # imports Orbax

  with local_bucket(str(tmp_path)):
    writer = metrics.MetricWriter("gs://bucket/run", enabled=True)
    write_steps(writer, clock, [5, 10, 15])
    writer.close()
    writer = metrics.MetricWriter("gs://bucket/run", resume_step=10, enabled=True)
    write_steps(writer, clock, [15])
    writer.close()
  assert [row["step"] for row in rows_of(tmp_path / "bucket" / "run")] == [5, 10, 15]
  assert sorted(p.name for p in (tmp_path / "bucket" / "run").iterdir()) == [
      "metrics.jsonl", "tensorboard"]


def test_closed_event_loop_tracebacks_of_an_abandoned_restore_are_one_warning(capsys, caplog):
  """A failed Orbax restore (a damaged checkpoint) or save (a full disk) leaves TensorStore
  operations that end after its event loop closed: one warning for all of them, not a traceback
  each; other unraisable exceptions are still printed."""
  previous = sys.unraisablehook
  try:
    metrics.configure_logging()

    class RaisesWhenCollected:  # Python reports an exception in __del__ as unraisable
      def __init__(self, error):
        self.error = error

      def __del__(self):
        raise self.error

    for _ in range(3):
      RaisesWhenCollected(RuntimeError("Event loop is closed"))
    assert capsys.readouterr().err == ""
    assert caplog.text.count("failed checkpoint save or restore") == 1
    RaisesWhenCollected(ValueError("something else"))
    assert "ValueError: something else" in capsys.readouterr().err
  finally:
    sys.unraisablehook = previous


def test_asyncio_errors_of_unawaited_futures_are_one_line():
  """asyncio's 'Future exception was never retrieved' (futures of a failed save nobody awaited)
  comes with a traceback each; a tool's log keeps one line of it (through absl's handler, as in
  every command)."""
  script = textwrap.dedent("""
      import logging
      from absl import app
      from rwl_jax.run import metrics

      def main(_):
        metrics.configure_logging()
        try:
          raise ValueError("RESOURCE_EXHAUSTED: No space left on device\\n[tensorstore_spec=]")
        except ValueError as error:
          logging.getLogger("asyncio").error(
              "Future exception was never retrieved\\nfuture: <Future>", exc_info=error)

      app.run(main)
      """)
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr
  lines = [line for line in done.stderr.splitlines() if "never retrieved" in line]
  assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
  assert "RESOURCE_EXHAUSTED" not in done.stderr  # the exception's pages stay out of the log
