"""Markdown tables of dict rows, for the command-line tools' printed results."""

from __future__ import annotations

import re
from typing import Any, Sequence


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
  """A Markdown table of dict rows: the given columns that some row has (default: the first
  row's keys); floats to 4 significant digits, None as n/a."""
  columns = [c for c in (columns or list(rows[0])) if any(c in row for row in rows)]

  def cell(value):
    if value is None:
      return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)

  lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
  return "\n".join(lines + [" | ".join(cell(row.get(c)) for c in columns) for row in rows])


_SWEEP_KEY = re.compile(r"^knn_top1_k(\d+)$")
_FINETUNE_KEY = re.compile(r"^finetune_(\d+(?:p\d+)?)pct_top1$")


def knn_sweep_ks(results: dict[str, Any]) -> list[int]:
  """The k of every knn_top1_k{k} in results, ascending."""
  return sorted(int(m.group(1)) for m in map(_SWEEP_KEY.match, results) if m)


def fraction_name(fraction: float) -> str:
  """The results-key part of a label fraction: 0.01 -> '1pct', 0.1 -> '10pct', 0.005 -> '0p5pct'
  (finetune_names and percent_label read it back)."""
  return f"{100 * fraction:g}".replace(".", "p") + "pct"


def finetune_names(results: dict[str, Any]) -> list[str]:
  """The fraction names ('1pct', '10pct', '0p5pct') of every finetune_*_top1, by fraction."""
  names = [m.group(1) + "pct" for m in map(_FINETUNE_KEY.match, results) if m]
  return sorted(names, key=lambda name: float(name[:-3].replace("p", ".")))


def percent_label(name: str) -> str:
  """'1pct' -> '1%', '0p5pct' -> '0.5%'."""
  return name[:-3].replace("p", ".") + "%"


def accuracy_rows(results: dict[str, Any], knn_k: int | None = None) -> list[dict[str, Any]]:
  """One row per evaluation in results, in percent: {'evaluation', 'top-1', 'top-5'} for kNN at
  its headline k (knn_k, when given, names it), kNN at each swept k, the linear and online probes
  and fine-tuning on each fraction of the labels; evaluations absent from results have no row."""
  entries = [("kNN" + (f" k={knn_k}" if knn_k else ""), "knn_top1", "knn_top5")]
  entries += [(f"kNN k={k}", f"knn_top1_k{k}", f"knn_top5_k{k}") for k in knn_sweep_ks(results)]
  entries += [("linear probe", "linear_top1", "linear_top5"),
              ("online probe", "online_top1", "online_top5")]
  entries += [(f"fine-tune {percent_label(name)} labels", f"finetune_{name}_top1",
               f"finetune_{name}_top5") for name in finetune_names(results)]
  rows = []
  for title, top1, top5 in entries:
    if results.get(top1) is not None:
      rows.append({"evaluation": title, "top-1": f"{100 * results[top1]:.1f}",
                   "top-5": (None if results.get(top5) is None
                             else f"{100 * results[top5]:.1f}")})
  return rows
