"""Tables, time-to-accuracy plots and training diagnostics from results.json and metrics.jsonl.

  python -m rwl_jax.report --workdirs=runs/rwl,runs/simclr [--plot=curve.png --title=...]
      [--diagnostics=diagnostics.png]

Prints one Markdown row per run (method, epochs, kNN and linear top-1, images/s, s/epoch, the kNN
curve). Columns that only some results.json files have appear when any run has them, so tables of
runs without them keep their old header: kNN and linear top-5, kNN top-1 at each swept k
(knn_top1_k10, ...), the online probe, and fine-tuning top-1/top-5 at each fraction of the labels
(finetune_1pct_top1, ...).

--plot draws kNN top-1 against training minutes since the run's first logged row (the untrained
network's kNN when eval.knn_every_epochs > 0), one line per run. Minutes are the rows'
run_seconds, which count the time the run was running, across resumes, and not the downtime
between a crash and its resume; files written before run_seconds existed fall back to wall-clock
time. Minutes include everything the run did: compilation, input pipeline, kNN evaluations.

--diagnostics draws every logged metric against the training step, one panel per group
(DIAGNOSTIC_PANELS, then any other scalar such as a method's loss terms, grouped by the prefix
before its first '_'), one colour per run; a panel no run has data for is left out.

A run resumed after a crash replays the steps after its checkpoint; rows of the attempt that
did not finish are dropped (metrics.latest_rows), for workdirs written before metrics.jsonl was
trimmed on resume.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Sequence

from absl import flags
from absl import logging
from etils import epath

from rwl_jax import paths, tables
from rwl_jax.run import metrics
from rwl_jax.errors import ConfigError

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories.", required=True)
_PLOT = flags.DEFINE_string("plot", "", "Write the kNN-against-minutes plot here (PNG).")
_TITLE = flags.DEFINE_string("title", "kNN top-1 against training time", "Plot title.")
_DIAGNOSTICS = flags.DEFINE_string(
    "diagnostics", "", "Write the diagnostics figure here (PNG): every logged metric against the "
    "training step, one panel per metric group.")

# (panel title, ((metric, line style), ...), horizontal reference line or None). Within a panel
# line styles tell the metrics apart; colours tell the runs apart.
DIAGNOSTIC_PANELS = (
    ("loss", (("loss", "-"),), None),
    ("p_pos (ceiling dashed)", (("p_pos", "-"), ("p_pos_ceiling", "--")), None),
    ("Ncut bound", (("ncut_bound", "-"),), None),
    ("effective rank", (("rank_projections", "-"), ("rank_features", "--")), None),
    ("alignment, uniformity", (("alignment", "-"), ("uniformity", "--")), None),
    # probe_rwl = 1 is where the spectral-clustering regime ends.
    ("probe RWL (1: spectral-clustering boundary)", (("probe_rwl", "-"),), 1.0),
    # The probe batch's size is not logged, so the counts are drawn without a reference line.
    ("LRW band counts", (("lrw_low_band", "-"), ("lrw_high_band", "--")), None),
    ("accuracy", (("knn_top1", "-"), ("knn_top5", "--"), ("linear_top1", ":"),
                  ("linear_top5", "-.")), None),
    ("online probe (test top-1; train batch dashed)",
     (("online_top1", "-"), ("online_probe_top1", "--")), None),
    ("images/s", (("images_per_second", "-"),), None),
    ("seconds per step", (("step_seconds", "-"), ("data_wait_seconds", "--")), None),
    ("checkpoint, evaluation seconds", (("checkpoint_seconds", "-"), ("eval_seconds", "--")),
     None),
    ("seconds per epoch", (("epoch_seconds", "-"),), None),
    ("learning rate", (("learning_rate", "-"),), None),
)
KNOWN_METRICS = tuple(name for _, lines, _ in DIAGNOSTIC_PANELS for name, _ in lines)
_OTHER_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")
_PANEL_COLUMNS = 3


def load(workdir: epath.PathLike) -> dict[str, Any]:
  """One run: {'name', 'results', 'rows', 'knn_curve': [(minutes, step, knn_top1)]}.

  rows are metrics.jsonl's (metrics.latest_rows: a replay after a resume counted once).
  """
  workdir = paths.as_path(workdir, "--workdirs")
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdirs {workdir} is a file, not a run's folder")
  results_path, metrics_path = workdir / metrics.RESULTS_FILE, workdir / metrics.METRICS_FILE
  # Without results.json a run still has a curve if it logged one (it is running, or it stopped
  # before its final evaluation); without either file it is not a run.
  finished = results_path.exists()
  for path in (results_path, metrics_path) if finished or not metrics_path.exists() else ():
    if not path.exists():
      raise ConfigError(f"{path} not found: {workdir} is not a finished run")
  if finished:
    results = metrics.read_results(results_path, f"{metrics.REWRITE_RESULTS}, or leave it out of "
                                   "--workdirs")
  else:  # a run in progress, or one stopped before its final evaluation: its curve still counts
    logging.warning("%s not found: %s has not finished; its row and curve come from %s alone",
                    results_path, workdir, metrics.METRICS_FILE)
    results = {}
  rows = metrics.latest_rows(metrics.read_rows(metrics_path))
  if not rows:
    raise ConfigError(f"{metrics_path} has no rows: the run logged nothing readable; rerun it or "
                      "leave it out of --workdirs")
  first = rows[0]
  start = metrics.run_seconds(first, first)
  curve = [((metrics.run_seconds(row, first) - start) / 60, row["step"], row["knn_top1"])
           for row in rows if "knn_top1" in row]
  return {"name": workdir.name, "results": results, "rows": rows, "knn_curve": curve,
          "finished": finished}


def series(run: dict[str, Any], name: str) -> tuple[list[int], list[float]]:
  """(steps, values) of the rows of `run` that hold metric `name`."""
  points = [(row["step"], row[name]) for row in run["rows"] if name in row]
  return [step for step, _ in points], [value for _, value in points]


def markdown_table(runs: Sequence[dict[str, Any]]) -> str:
  """One row per run; top-5 columns only where some run's results have them."""

  def number(run, key, scale=1.0, digits=1):
    value = run["results"].get(key)
    return f"{scale * value:.{digits}f}" if value is not None else "n/a"

  def curve(run):  # a finished run's last point is its final evaluation, in its own columns
    points = run["knn_curve"][:-1] if run["finished"] else run["knn_curve"]
    return ", ".join(f"{step}: {100 * knn:.1f}" for _, step, knn in points) or "-"

  def present(key):
    return any(run["results"].get(key) is not None for run in runs)

  columns = [("run", lambda run: run["name"]),
             ("method", lambda run: run["results"].get("method", "?")),
             ("epochs", lambda run: run["results"].get("epochs", "?")),
             ("kNN top-1", lambda run: number(run, "knn_top1", 100))]
  if present("knn_top5"):
    columns.append(("kNN top-5", lambda run: number(run, "knn_top5", 100)))
  every_key = {key: True for run in runs for key in run["results"]}
  # The k sweep's top-1 (top-5 per k stays in results.json), for k any run has.
  for k in tables.knn_sweep_ks(every_key):
    columns.append((f"kNN k={k}", lambda run, k=k: number(run, f"knn_top1_k{k}", 100)))
  columns.append(("linear top-1", lambda run: number(run, "linear_top1", 100)))
  if present("linear_top5"):
    columns.append(("linear top-5", lambda run: number(run, "linear_top5", 100)))
  if present("online_top1"):
    columns.append(("online top-1", lambda run: number(run, "online_top1", 100)))
  for name in tables.finetune_names(every_key):
    for top in ("top1", "top5"):
      columns.append((f"fine-tune {tables.percent_label(name)} {top[:3]}-{top[3:]}",
                      lambda run, key=f"finetune_{name}_{top}": number(run, key, 100)))
  columns += [("images/s", lambda run: number(run, "images_per_second", 1.0, 0)),
              ("s/epoch", lambda run: number(run, "seconds_per_epoch")),
              ("kNN during training (step: top-1)", curve)]
  lines = ["| " + " | ".join(title for title, _ in columns) + " |",
           "|" + " --- |" * len(columns)]
  for run in runs:
    lines.append("| " + " | ".join(str(cell(run)) for _, cell in columns) + " |")
  return "\n".join(lines)


def _pyplot(flag: str):
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ConfigError(f"{flag} needs matplotlib: pip install 'rwl_jax[notebook]'") from error
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str, flag: str) -> None:
  output = paths.output_file(path, flag)
  with output.open("wb") as f:  # savefig alone would not write to a URL
    fig.savefig(f, format="png", dpi=120)


def _label(run: dict[str, Any]) -> str:
  method = run["results"].get("method")
  return run["name"] if method in (None, run["name"]) else f"{run['name']} ({method})"


def plot(runs: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """kNN top-1 against training minutes, one line per run, as a PNG at path (local or URL)."""
  plt = _pyplot("--plot")
  fig, axis = plt.subplots(figsize=(7, 4.5))
  for run in runs:
    minutes, _, knn = zip(*run["knn_curve"]) if run["knn_curve"] else ((), (), ())
    axis.plot(minutes, [100 * k for k in knn], marker="o", markersize=3, label=_label(run))
  axis.set(xlabel="training minutes since the first logged row (downtime not counted)",
           ylabel="kNN top-1 (%)")
  axis.set_title(title, fontsize=9)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  fig.tight_layout()
  try:
    _save(fig, path, "--plot")
  finally:
    plt.close(fig)


def diagnostic_panels(runs: Sequence[dict[str, Any]]
                      ) -> list[tuple[str, tuple[tuple[str, str], ...], float | None]]:
  """DIAGNOSTIC_PANELS that some run has data for, then a panel per prefix of other scalars."""
  logged = {name for run in runs for row in run["rows"] for name, value in row.items()
            if name not in metrics.ROW_KEYS and isinstance(value, (int, float))
            and not isinstance(value, bool)}
  panels = [(title, tuple((name, style) for name, style in lines if name in logged), reference)
            for title, lines, reference in DIAGNOSTIC_PANELS]
  panels = [panel for panel in panels if panel[1]]
  others = collections.defaultdict(list)
  for name in sorted(logged - set(KNOWN_METRICS)):
    others[name.split("_", 1)[0]].append(name)
  for prefix, names in sorted(others.items()):
    styles = tuple((name, _OTHER_LINE_STYLES[i % len(_OTHER_LINE_STYLES)])
                   for i, name in enumerate(names))
    panels.append((names[0] if len(names) == 1 else f"{prefix} terms", styles, None))
  return panels


def plot_diagnostics(runs: Sequence[dict[str, Any]], path: str) -> None:
  """Every logged metric against the training step (diagnostic_panels) as a PNG at path."""
  plt = _pyplot("--diagnostics")
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top

  panels = diagnostic_panels(runs)
  if not panels:
    raise ConfigError("--diagnostics: the runs logged no metrics to draw")
  rows_of_panels = math.ceil(len(panels) / _PANEL_COLUMNS)
  columns = min(len(panels), _PANEL_COLUMNS)
  fig, axes = plt.subplots(rows_of_panels, columns, figsize=(4.3 * columns, 3.0 * rows_of_panels),
                           squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for axis, (title, lines, reference) in zip(axes.flat, panels):
    # A marker per metric too: a metric logged once (the final evaluation) is a lone marker.
    markers = [_MARKERS[i % len(_MARKERS)] for i in range(len(lines))]
    for index, run in enumerate(runs):
      for (name, style), marker in zip(lines, markers):
        steps, values = series(run, name)
        if steps:
          axis.plot(steps, values, linestyle=style, color=colors[index % len(colors)],
                    marker=marker, markersize=2 if len(steps) > 1 else 4)
    if reference is not None:
      axis.axhline(reference, color="black", linewidth=0.8, alpha=0.6)
    if len(lines) > 1:  # which line is which metric; the runs' colours: the figure legend
      axis.legend([Line2D([], [], color="gray", linestyle=style, marker=marker)
                   for (_, style), marker in zip(lines, markers)],
                  [name for name, _ in lines], fontsize=7)
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("step", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.grid(alpha=0.3)
  for axis in list(axes.flat)[len(panels):]:
    axis.set_visible(False)
  fig.legend([Line2D([], [], color=colors[i % len(colors)]) for i in range(len(runs))],
             [_label(run) for run in runs], loc="upper center", ncol=min(len(runs), 4),
             fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.0 * rows_of_panels)))
  try:
    _save(fig, path, "--diagnostics")
  finally:
    plt.close(fig)


def main():
  outputs = {"--plot": _PLOT.value, "--diagnostics": _DIAGNOSTICS.value}
  for flag, value in outputs.items():  # a bad output path fails before the runs are read
    if value:
      paths.output_file(value, flag)
      _pyplot(flag)
  runs = [load(workdir) for workdir in _WORKDIRS.value]
  print(markdown_table(runs))
  if _PLOT.value:
    plot(runs, _PLOT.value, _TITLE.value)
    print(f"plot: {_PLOT.value}")
  if _DIAGNOSTICS.value:
    plot_diagnostics(runs, _DIAGNOSTICS.value)
    print(f"diagnostics: {_DIAGNOSTICS.value}")
