"""What the theory experiments share: writing a figure as a small PNG."""

import io

from matplotlib import pyplot as plt
from PIL import Image


def save_png(figure, path, dpi=80):
  """Saves a 64-colour palette PNG: line plots lose nothing visible and stay well under 150 KB."""
  buffer = io.BytesIO()
  figure.savefig(buffer, dpi=dpi, format="png")
  plt.close(figure)
  buffer.seek(0)
  Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)
