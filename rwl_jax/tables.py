"""Markdown tables of dict rows, for the command-line tools' printed results."""

from __future__ import annotations

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
