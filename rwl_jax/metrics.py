"""Metric writing: TensorBoard event files, a JSON-lines log and absl logging, from process 0.

CLU's writers would be the natural choice, but `clu.metric_writers` imports TensorFlow, which
the accelerator machines do not have; tensorboardX writes the same event files without it.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Callable, Mapping

import jax
from absl import logging


class MetricWriter:
  """write_scalars(step, {...}) to TensorBoard (workdir/tensorboard) and workdir/metrics.jsonl.

  on_write(step, scalars), if given, also receives every write (a notebook's progress bar).
  """

  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool | None = None,
               on_write: Callable[[int, dict[str, float]], None] | None = None):
    self._enabled = jax.process_index() == 0 if enabled is None else enabled
    self._on_write = on_write
    self._tensorboard = None
    self._jsonl = None
    if self._enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      workdir = pathlib.Path(workdir)
      self._tensorboard = SummaryWriter(str(workdir / "tensorboard"))
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")

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
