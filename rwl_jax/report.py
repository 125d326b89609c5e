"""Tables and time-to-accuracy plots from finished runs' results.json and metrics.jsonl.

  python -m rwl_jax.report --workdirs=runs/rwl,runs/simclr [--plot=curve.png --title=...]

Prints one Markdown row per run (method, epochs, kNN and linear top-1, images/s, s/epoch, the kNN
curve) and, with --plot, draws kNN top-1 against wall-clock minutes since the run's first
logged row (the untrained network's kNN when eval.knn_every_epochs > 0), one line per run.
Minutes include everything the run did: compilation, input pipeline, periodic kNN evaluations.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from absl import app, flags
from etils import epath

from rwl_jax import cli, paths
from rwl_jax.errors import ConfigError

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories.", required=True)
_PLOT = flags.DEFINE_string("plot", "", "Write the kNN-against-minutes plot here (PNG).")
_TITLE = flags.DEFINE_string("title", "kNN top-1 against wall-clock time", "Plot title.")


def load(workdir: epath.PathLike) -> dict[str, Any]:
  """{'name', 'results', 'knn_curve': [(minutes, step, knn_top1)]} of one finished run."""
  workdir = paths.as_path(workdir, "--workdirs")
  results_path, metrics_path = workdir / "results.json", workdir / "metrics.jsonl"
  for path in (results_path, metrics_path):
    if not path.is_file():
      raise ConfigError(f"{path} not found: {workdir} is not a finished run")
  results = json.loads(results_path.read_text())
  rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
  start = rows[0]["time"]
  curve = [((row["time"] - start) / 60, row["step"], row["knn_top1"])
           for row in rows if "knn_top1" in row]
  return {"name": workdir.name, "results": results, "knn_curve": curve}


def markdown_table(runs: Sequence[dict[str, Any]]) -> str:
  lines = ["| run | method | epochs | kNN top-1 | linear top-1 | images/s | s/epoch "
           "| kNN during training (step: top-1) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for run in runs:
    r = run["results"]
    curve = ", ".join(f"{step}: {100 * knn:.1f}" for _, step, knn in run["knn_curve"][:-1])
    number = lambda key, scale=1.0, digits=1: (f"{scale * r[key]:.{digits}f}"
                                               if r.get(key) is not None else "n/a")
    lines.append(f"| {run['name']} | {r.get('method', '?')} | {r.get('epochs', '?')} | "
                 f"{number('knn_top1', 100)} | {number('linear_top1', 100)} | "
                 f"{number('images_per_second', 1.0, 0)} | {number('seconds_per_epoch')} | "
                 f"{curve or '-'} |")
  return "\n".join(lines)


def plot(runs: Sequence[dict[str, Any]], path: str, title: str) -> None:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ConfigError("--plot needs matplotlib: pip install 'rwl_jax[notebook]'") from error
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axis = plt.subplots(figsize=(7, 4.5))
  for run in runs:
    minutes, _, knn = zip(*run["knn_curve"]) if run["knn_curve"] else ((), (), ())
    method = run["results"].get("method", "?")
    axis.plot(minutes, [100 * k for k in knn], marker="o", markersize=3,
              label=run["name"] if run["name"] == method else f"{run['name']} ({method})")
  axis.set(xlabel="wall-clock minutes since the run started", ylabel="kNN top-1 (%)")
  axis.set_title(title, fontsize=9)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  fig.tight_layout()
  output = paths.as_path(path, "--plot")
  output.parent.mkdir(parents=True, exist_ok=True)
  with output.open("wb") as f:  # savefig alone would not write to a URL
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    runs = [load(workdir) for workdir in _WORKDIRS.value]
    print(markdown_table(runs))
    if _PLOT.value:
      plot(runs, _PLOT.value, _TITLE.value)
      print(f"plot: {_PLOT.value}")
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli.run(main)
