"""Named random streams: every consumer of randomness draws from its own key of (seed, step).

    key = fold_in(fold_in(key(seed), STREAM_IDS[name]), step)

One stream per consumer (the two views, the method's own draws such as GSG's pairing, the probe
batch's views), so no two draws are correlated and a resumed run repeats every draw exactly.
The stream comes first so that no step of one stream can ever equal a key of another. The host
(tf.data) path cannot hold JAX keys; it seeds its stateless ops with `tf_seed`, the same
(seed, stream, step) triple in TensorFlow's [2]-integer form.
"""

from __future__ import annotations

from typing import Any

import jax

# Fixed numbers, never reordered: they are part of every saved run's randomness.
STREAM_IDS = {"view1": 1, "view2": 2, "method": 3, "probe": 4}


def stream_key(seed: int, step: Any, name: str) -> jax.Array:
  """The key of stream `name` at `step` (an int or a traced int32 scalar)."""
  if name not in STREAM_IDS:
    raise KeyError(f"unknown random stream {name!r}; streams: {sorted(STREAM_IDS)}")
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAM_IDS[name]), step)


def tf_seed(seed: int, step: Any, name: str) -> tuple[Any, Any]:
  """(seed, step * len(STREAM_IDS) + id): a stateless-op seed, distinct per (stream, step).

  `step` may be a TensorFlow int64 tensor: only + and * are applied to it.
  """
  if name not in STREAM_IDS:
    raise KeyError(f"unknown random stream {name!r}; streams: {sorted(STREAM_IDS)}")
  return seed, step * (max(STREAM_IDS.values()) + 1) + STREAM_IDS[name]
