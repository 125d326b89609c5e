"""Metric writing: TensorBoard event files, a JSON-lines log and absl logging, from process 0.

CLU's writers would be the natural choice, but `clu.metric_writers` imports TensorFlow, which
the accelerator machines do not have; tensorboardX writes the same event files without it.

Every metrics.jsonl row is {"step", "time" (wall clock), "run_seconds", <scalars>}. run_seconds
counts training-run time only: the time each writer was open, added up across resumes, so the
downtime between a crash and its resume is never counted. read_rows and latest_rows are the
readers shared with rwl_jax.tools.report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Mapping

from absl import logging
from etils import epath

from rwl_jax import paths
from rwl_jax.errors import DamagedFile, RunError, first_line, out_of_space

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
# Keys of a metrics.jsonl row that say when it was written, not what was measured.
ROW_KEYS = ("step", "time", "run_seconds")


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_row(row: Any) -> bool:
  return (isinstance(row, dict) and isinstance(row.get("step"), int)
          and all(_is_number(value) for value in row.values()))


def parse_rows(text: str, source: str) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl text, in file order; what is not a row (every value a number,
  the step an integer) is dropped, with one warning for the file.

  A run killed mid-write (SIGKILL, preemption) can leave a truncated last line behind.
  """
  rows, skipped = [], []
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if not (_is_row(row) and "time" in row):
      skipped.append((number, line))
      continue
    rows.append(row)
  if skipped:
    number, line = skipped[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    logging.warning("%s line %d is not a metrics row (a write cut short?)%s; skipped: %.80s",
                    source, number, more, line)
  return rows


def read_rows(path: epath.PathLike) -> list[dict[str, Any]]:
  """parse_rows of the file at `path` (local or URL); bytes that are not text are part of the
  lines skipped. DamagedFile when the file cannot be read at all."""
  path = epath.Path(path)
  try:
    data = path.read_bytes()
  except OSError as error:
    raise DamagedFile(path, f"cannot be read ({error.strerror or error})", "move it aside (the "
                      "run's TensorBoard events hold the same scalars)") from None
  return parse_rows(data.decode("utf-8", errors="replace"), os.fspath(path))


def latest_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The rows a run's final history holds, when steps were logged again after a resume.

  A resumed run replays the steps after its checkpoint, and files written before MetricWriter
  truncated on resume hold both attempts: a row is dropped when a later row has a smaller step
  (the crashed attempt had got further than the checkpoint), and of the scalars logged under the
  same step and name only the last is kept. Order is preserved; a row left with no scalars goes.
  """
  rows = [dict(row) for row in rows]
  kept, smallest_later_step, seen = [], None, set()
  for row in reversed(rows):
    if smallest_later_step is not None and row["step"] > smallest_later_step:
      continue  # a step after the checkpoint, logged by an attempt that did not finish
    smallest_later_step = (row["step"] if smallest_later_step is None
                           else min(smallest_later_step, row["step"]))
    names = [name for name in row if name not in ROW_KEYS]
    fresh = [name for name in names if (row["step"], name) not in seen]
    seen.update((row["step"], name) for name in names)
    if fresh:
      kept.append({key: value for key, value in row.items()
                   if key in ROW_KEYS or key in fresh})
  kept.reverse()
  return kept


def run_seconds(row: Mapping[str, Any], first_row: Mapping[str, Any]) -> float:
  """Seconds of training-run time at `row`: its run_seconds, or for a file written before
  run_seconds existed, wall-clock seconds since `first_row` (downtime included, unavoidably)."""
  if "run_seconds" in row:
    return float(row["run_seconds"])
  return float(row["time"]) - float(first_row["time"])


class MetricWriter:
  """write_scalars(step, {...}) to TensorBoard (workdir/tensorboard) and workdir/metrics.jsonl.

  Only the writer of process 0 (`enabled` None) or of enabled=True writes anything. On opening
  it trims an existing metrics.jsonl to the rows with step <= resume_step, the steps the restored
  checkpoint holds, so the steps a resume replays appear once; resume_step None or 0 is a fresh
  start and keeps no row (rows already there came from an earlier attempt that died before its
  first checkpoint). Rows are rewritten to a temporary file beside it that then replaces it, so a
  crash while trimming leaves the old file whole. Unparsable lines (a write cut short) are dropped
  with a warning.

  Every row carries `time` (wall clock) and `run_seconds`: the kept rows' last run_seconds plus
  the time.monotonic() seconds since this writer was opened, so time between runs never counts.

  A write that fails (a full disk) raises RunError naming the file and what is kept.

  TensorBoard event files are append-only and cannot be trimmed: after a resume they hold the
  replayed steps twice, which is harmless, since TensorBoard shows the newest value of a step.

  on_write(step, scalars), if given, also receives every write (a notebook's progress bar).
  """

  def __init__(self, workdir: epath.PathLike, *, resume_step: int | None = None,
               enabled: bool | None = None,
               on_write: Callable[[int, dict[str, float]], None] | None = None):
    if enabled is None:
      import jax  # pylint: disable=g-import-not-at-top  # report reads rows without loading jax
      enabled = jax.process_index() == 0
    self._enabled = enabled
    self._on_write = on_write
    self._tensorboard = None
    self._jsonl = None
    self._jsonl_path = None
    self._run_seconds_before = 0.0  # the kept rows' run time, from the runs before this one
    if self._enabled:
      workdir = paths.as_path(workdir, "workdir")
      metrics_path = workdir / METRICS_FILE
      self._run_seconds_before = _trim_to_resume_step(metrics_path, resume_step)
      self._tensorboard = _EventFile(workdir / "tensorboard")
      self._jsonl = metrics_path.open("a")
      self._jsonl_path = metrics_path
    self._opened = time.monotonic()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    scalars = {name: float(value) for name, value in scalars.items()}
    elapsed = self._run_seconds_before + time.monotonic() - self._opened
    row = {"step": int(step), "time": time.time(), "run_seconds": elapsed, **scalars}
    path = self._tensorboard.path
    try:
      self._tensorboard.write(int(step), scalars)
      path = self._jsonl_path
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
    except OSError as error:
      self._enabled = False  # close() must not flush into the same error
      raise _write_failed(path, error) from None
    if self._on_write is not None:
      self._on_write(int(step), scalars)

  def close(self) -> None:
    if self._tensorboard is None:
      return
    files = ((self._tensorboard, self._tensorboard.path), (self._jsonl, self._jsonl_path))
    self._tensorboard = self._jsonl = None
    enabled, self._enabled = self._enabled, False
    for file, path in files:
      try:
        file.close()
      except OSError as error:
        if enabled:  # after a failed write its error has been raised already
          raise _write_failed(path, error) from None


def _write_failed(path: Any, error: OSError) -> RunError:
  if out_of_space(error):
    return RunError(f"no space left on the device of {os.fspath(path)}: metrics could not be "
                    "written; checkpoints already saved are intact: free space there (or move the "
                    "workdir) and rerun the same command to resume")
  return RunError(f"{os.fspath(path)} cannot be written ({error.strerror or error}); checkpoints "
                  "already saved are intact, rerun the same command to resume")


class _EventFile:
  """TensorBoard scalars written and flushed in the calling thread.

  tensorboardX's SummaryWriter writes from a thread of its own: a write that fails there (a full
  disk) ends that thread with a traceback and the writer's queue then blocks the run for ever.
  Here a failed write raises where the loop can say so and stop. URLs (gs://) are written
  through epath (_EpathEventFiles).
  """

  def __init__(self, directory: epath.Path):
    from tensorboardX import event_file_writer  # pylint: disable=g-import-not-at-top

    _write_event_files_through_epath()
    directory.mkdir(parents=True, exist_ok=True)
    self._writer = event_file_writer.EventsWriter(os.fspath(directory / "events"))
    self.path = directory  # for an error line

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    from tensorboardX import summary  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

    wall_time = time.time()
    for name, value in scalars.items():
      self._writer.write_event(event_pb2.Event(wall_time=wall_time, step=step,
                                               summary=summary.scalar(name, value)))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _trim_to_resume_step(path: epath.Path, resume_step: int | None) -> float:
  """Keeps path's rows with step <= resume_step (none for None or 0); their last run_seconds."""
  if not path.exists():
    return 0.0
  rows = read_rows(path) if resume_step else []
  kept = latest_rows(row for row in rows if row["step"] <= resume_step) if rows else []
  temporary = path.parent / f"{path.name}.trimming"
  temporary.write_text("".join(json.dumps(row) + "\n" for row in kept))
  temporary.replace(path)  # the old file stays whole until the new one is complete
  return run_seconds(kept[-1], kept[0]) if kept else 0.0


class _EpathEventFiles:
  """A tensorboardX writer factory that writes event files through epath (gs://, s3://, ...).

  tensorboardX's own gs:// writer needs google-cloud-storage and re-uploads the whole file on every
  flush; this one writes where every other file of the run goes, through the same filesystem.
  """

  def open(self, path: str):
    return epath.Path(path).open("wb")

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _write_event_files_through_epath() -> None:
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top

  for scheme in paths.URL_SCHEMES:
    record_writer.register_writer_factory(scheme, _EpathEventFiles())


def configure_logging() -> None:
  """INFO progress lines; Orbax's per-save INFO chatter dropped, its warnings and errors kept as
  one line each, and so are asyncio's about the futures of a failed save or restore that nobody
  awaited (their tracebacks, logged from Orbax's threads, would bury the run's own error line,
  which says what failed and what is kept)."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_orbax_in_brief)
  sys.unraisablehook = _ClosedLoopInBrief()


class _ClosedLoopInBrief:
  """sys.unraisablehook: when an Orbax restore of a damaged checkpoint or a save on a full disk
  fails, the TensorStore reads or writes still in flight finish after Orbax has closed its event
  loop, and each would print a traceback from TensorStore's thread, beside the one line that
  already says what failed and what is kept. One warning says so; any other unraisable exception
  is printed as usual."""

  def __init__(self):
    self.reported = False

  def __call__(self, unraisable) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      sys.__unraisablehook__(unraisable)
    elif not self.reported:
      self.reported = True
      logging.warning("TensorStore operations of a failed checkpoint save or restore ended after "
                      "Orbax's event loop had closed (harmless: that checkpoint is not used)")


def _orbax_in_brief(record) -> bool:
  if "/orbax/" not in record.pathname and record.name != "asyncio":
    return True
  if record.levelno < logging.converter.STANDARD_WARNING:
    return False
  record.exc_info = record.exc_text = None
  record.msg, record.args = first_line(RuntimeError(record.getMessage())), None
  return True


def write_results(results: Mapping[str, Any], path: epath.Path) -> None:
  """Writes results as JSON; if that fails, the figures still reach the log and the error line
  names the file, so nothing computed is lost. Call it on process 0 only."""
  text = json.dumps(results, indent=2, sort_keys=True, default=str)
  try:
    path.write_text(text)
  except OSError as error:
    logging.error("results that could not be written:\n%s", text)
    raise RunError(f"{path} cannot be written ({error.strerror or error}); the results are in "
                   "the log above") from None


# results.json figures a reader formats as numbers: accuracies (by prefix) and speeds.
_NUMBER_PREFIXES = ("knn_", "linear_", "online_", "finetune_")
_NUMBER_FIELDS = ("images_per_second", "seconds_per_epoch", "step_seconds", "data_wait_seconds",
                  "compile_seconds")
REWRITE_RESULTS = ("rerun the training command on this --workdir to write it again (it resumes "
                   "at the newest checkpoint and only evaluates)")


def read_results(path: epath.Path, remedy: str = REWRITE_RESULTS) -> dict[str, Any]:
  """The figures of a results.json (train's or evaluate's); DamagedFile naming it when it is cut
  short, not JSON, or of another version (a figure that is not a number)."""
  results = paths.read_json_object(path, what="an object of results", remedy=remedy)
  for name, value in results.items():
    if (name.startswith(_NUMBER_PREFIXES) or name in _NUMBER_FIELDS) and not (
        value is None or _is_number(value)):
      raise DamagedFile(path, f"{name} is {value!r}, not a number (written by another rwl_jax "
                        "version, or edited?)", remedy)
  return results
