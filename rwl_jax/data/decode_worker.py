"""One worker process of image_folder.decode_images (not a command for people).

    python -m rwl_jax.data.decode_worker PART

decodes the images PART.request.json names ({"names": [...], "image_size": S}) with
image_folder.decode_chunk and writes PART.npy (uint8 [N, S, S, 3], zero rows for the
undecodable) and PART.json ({"seen": [[mode, [width, height]], ...] of the decoded, "problems":
[[row, why], ...]}).
A fresh interpreter importing only the decoder: see decode_images for why.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from rwl_jax.data import image_folder


def main(part: str) -> None:
  with open(f"{part}.request.json") as f:
    request = json.load(f)
  images, seen, problems = image_folder.decode_chunk(request["names"], request["image_size"])
  np.save(f"{part}.npy", images)
  with open(f"{part}.json", "w") as f:
    json.dump({"seen": seen, "problems": problems}, f)


if __name__ == "__main__":
  main(sys.argv[1])
