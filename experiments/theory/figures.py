"""What the theory experiments share: their two flags, and writing a figure as a small PNG."""

import argparse
import io
import pathlib

from matplotlib import pyplot as plt
from PIL import Image


def save_png(figure, path, dpi=80):
  """Saves a 64-colour palette PNG: line plots lose nothing visible and stay well under 150 KB."""
  buffer = io.BytesIO()
  figure.savefig(buffer, dpi=dpi, format="png")
  plt.close(figure)
  buffer.seek(0)
  Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)


def experiment_arguments(doc: str) -> argparse.Namespace:
  """--out DIR (made, as a pathlib.Path) and --quick (reduced size, as CI runs it)."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
  parser.add_argument("--quick", action="store_true", help="reduced size (CI)")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  return args
