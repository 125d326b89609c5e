"""Metric writing: TensorBoard event files, a JSON-lines log and absl logging, from process 0.

CLU's writers would be the natural choice, but `clu.metric_writers` imports TensorFlow, which
the accelerator machines do not have; tensorboardX writes the same event files without it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Mapping

import jax
from absl import logging
from etils import epath

from rwl_jax import paths


class MetricWriter:
  """write_scalars(step, {...}) to TensorBoard (workdir/tensorboard) and workdir/metrics.jsonl.

  on_write(step, scalars), if given, also receives every write (a notebook's progress bar).
  """

  def __init__(self, workdir: epath.PathLike, *, enabled: bool | None = None,
               on_write: Callable[[int, dict[str, float]], None] | None = None):
    self._enabled = jax.process_index() == 0 if enabled is None else enabled
    self._on_write = on_write
    self._tensorboard = None
    self._jsonl = None
    if self._enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      workdir = paths.as_path(workdir, "workdir")
      _write_event_files_through_epath()
      self._tensorboard = SummaryWriter(os.fspath(workdir / "tensorboard"))
      self._jsonl = (workdir / "metrics.jsonl").open("a")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    scalars = {name: float(value) for name, value in scalars.items()}
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, global_step=step)
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    if self._on_write is not None:
      self._on_write(int(step), scalars)

  def close(self) -> None:
    if self._enabled:
      self._tensorboard.close()
      self._jsonl.close()
      self._enabled = False


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


def log_progress(epoch: int, num_epochs: int, step: int, num_steps: int,
                 scalars: Mapping[str, float]) -> None:
  parts = " ".join(f"{name} {value:.4g}" for name, value in scalars.items())
  logging.info("epoch %d/%d step %d/%d %s", epoch, num_epochs, step, num_steps, parts)


def configure_logging() -> None:
  """INFO progress lines; Orbax's per-save INFO chatter dropped (its warnings kept)."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.converter.STANDARD_WARNING
      or "/orbax/" not in record.pathname)
