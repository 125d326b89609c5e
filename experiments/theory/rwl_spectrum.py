"""E4: RWL as spectral clustering: the spectrum of L_rw during a small RWL training.

A 2-layer MLP (32 -> 64 -> 16) is trained with the project's rwl_loss (SGD with momentum, cosine
learning rate) on a 10-component Gaussian mixture in R^32; the two views of a point add Gaussian
noise and mask coordinates; every step draws a fresh batch of B = 16 points. After every step the
2B eigenvalues of L_rw(S) of a fixed held-out batch (fixed points and views, so the curves follow
the model, not the batch) are computed (theory.spectral, through the symmetric D^-1/2 S D^-1/2),
with RWL, sum_i (1 - p_i) and the normalised cut of the instance partition.
R5 (Bauer-Fike): once RWL < 1, exactly B eigenvalues lie in [0, sqrt(RWL)] and B in
[2 - sqrt(RWL), 2]; R4: Ncut <= sum (1 - p) <= sqrt(N RWL) at every step; R6: at tau = 0.4 and
B = 16 RWL cannot go below RWL* = 15.10 (numerically verified optimum), so no split is guaranteed.

  python experiments/theory/rwl_spectrum.py --out=DIR [--quick]

writes DIR/rwl_spectrum.{png,json} and exits non-zero with one line if a headline check fails.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

from rwl_jax import losses
from rwl_jax.theory import closed_forms
from rwl_jax.theory import spectral

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
from figures import experiment_arguments, save_png  # pylint: disable=g-import-not-at-top  (this folder)

BATCH_SIZE = 16
SCALARS = ("step", "train_batch_rwl", "project_rwl", "rwl", "negative_mass", "ncut",
           "bottom_band", "top_band")
INPUT_DIM, HIDDEN_DIM, OUTPUT_DIM = 32, 64, 16


def mixture(num_samples, rng):
  """10-component Gaussian mixture in R^32: means of norm ~6, unit within-component spread."""
  means = 1.0 * rng.normal(size=(10, INPUT_DIM))
  components = rng.integers(0, 10, num_samples)
  return means[components] + rng.normal(size=(num_samples, INPUT_DIM))


def views(x, rng, noise=0.2, drop=0.05):
  """Two views per row: additive Gaussian noise, then each coordinate zeroed with prob `drop`."""
  def one():
    return (x + noise * rng.normal(size=x.shape)) * (rng.random(size=x.shape) >= drop)
  return one(), one()


def init_mlp(rng):
  return {
      "w1": jnp.asarray(rng.normal(size=(INPUT_DIM, HIDDEN_DIM)) / math.sqrt(INPUT_DIM),
                        jnp.float32),
      "b1": jnp.zeros(HIDDEN_DIM),
      "w2": jnp.asarray(rng.normal(size=(HIDDEN_DIM, OUTPUT_DIM)) / math.sqrt(HIDDEN_DIM),
                        jnp.float32),
      "b2": jnp.zeros(OUTPUT_DIM),
  }


def mlp(params, x):
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def train(temperature, steps, learning_rate, seed):
  """Per-step spectral records of a fixed held-out batch (after each update)."""
  rng = np.random.default_rng(seed)
  data = mixture(4096, rng)
  held_out = [jnp.asarray(v, jnp.float32) for v in views(data[:BATCH_SIZE], rng)]
  data = data[BATCH_SIZE:]
  params = init_mlp(rng)
  optimizer = optax.sgd(optax.cosine_decay_schedule(learning_rate, steps), momentum=0.9)
  state = optimizer.init(params)

  def loss_fn(params, x1, x2):
    return losses.rwl_loss(mlp(params, x1), mlp(params, x2), temperature)

  @jax.jit
  def update(params, state, x1, x2):
    value, gradient = jax.value_and_grad(loss_fn)(params, x1, x2)
    updates, state = optimizer.update(gradient, state)
    params = optax.apply_updates(params, updates)
    held_out_z = jnp.concatenate([mlp(params, held_out[0]), mlp(params, held_out[1])])
    return params, state, value, loss_fn(params, *held_out), held_out_z

  records = []
  for step in range(steps):
    batch = data[rng.choice(len(data), BATCH_SIZE, replace=False)]
    x1, x2 = (jnp.asarray(v, jnp.float32) for v in views(batch, rng))
    params, state, train_rwl, held_out_rwl, z = update(params, state, x1, x2)
    summary = spectral.batch_spectrum(np.asarray(z, np.float64), temperature)
    records.append({
        "step": step, "train_batch_rwl": float(train_rwl), "project_rwl": float(held_out_rwl),
        "rwl": summary["rwl"],
        "negative_mass": summary["negative_mass"], "ncut": summary["ncut"],
        "bottom_band": summary["bottom_band"], "top_band": summary["top_band"],
        "eigenvalues": summary["eigenvalues"].tolist(),
    })
  return records


def check(runs, failures):
  num_rows = 2 * BATCH_SIZE
  for temperature, records in runs.items():
    floor = closed_forms.contrastive_optimum(BATCH_SIZE, temperature)["rwl"]
    for record in records:
      where = f"tau={temperature} step {record['step']}"
      if not record["ncut"] <= record["negative_mass"] + 1e-9:
        failures.append(f"{where}: Ncut {record['ncut']:.4g} > sum(1-p)")
      if not record["negative_mass"] <= math.sqrt(num_rows * record["rwl"]) + 1e-9:
        failures.append(f"{where}: sum(1-p) > sqrt(N RWL)")
      if record["rwl"] < 1 and (record["bottom_band"], record["top_band"]) != (BATCH_SIZE,
                                                                               BATCH_SIZE):
        failures.append(f"{where}: RWL {record['rwl']:.3g} < 1 but band counts "
                        f"{record['bottom_band']}/{record['top_band']}")
      if record["rwl"] < floor * (1 - 1e-6):
        failures.append(f"{where}: RWL {record['rwl']:.4f} below RWL* {floor:.4f}")
      if abs(record["rwl"] - record["project_rwl"]) > 1e-4 * max(1.0, record["rwl"]):
        failures.append(f"{where}: float64 RWL {record['rwl']} != project {record['project_rwl']}")
  small = runs[min(runs)]
  if not any(record["rwl"] < 1 for record in small):
    failures.append(f"tau={min(runs)}: RWL never went below 1 (R5 never applies)")
  return failures


def main():
  args = experiment_arguments(__doc__)
  out = args.out
  started = time.time()
  steps = 500 if args.quick else 1000
  learning_rate = 0.05
  runs = {temperature: train(temperature, steps, learning_rate, seed=0)
          for temperature in (0.1, 0.4)}
  failures = check(runs, [])
  summary = {
      "command": " ".join([pathlib.Path(sys.executable).name] + sys.argv), "quick": args.quick,
      "steps": steps, "learning_rate": learning_rate, "batch_size": BATCH_SIZE,
      "seconds": time.time() - started,
      "rwl_star": {str(t): closed_forms.contrastive_optimum(BATCH_SIZE, t)["rwl"] for t in runs},
      # Column per quantity, every step (6 significant digits); the eigenvalues every 10th step.
      "runs": {str(t): {key: [float(f"{r[key]:.6g}") for r in records] for key in SCALARS}
                       | {"eigenvalues_every_10_steps": [[round(v, 5) for v in r["eigenvalues"]]
                                                         for r in records[::10]]}
               for t, records in runs.items()},
      "headline": {
          str(t): {
              "min_rwl": min(r["rwl"] for r in records),
              "first_step_rwl_below_1": next((r["step"] for r in records if r["rwl"] < 1), None),
              "steps_rwl_below_1": sum(r["rwl"] < 1 for r in records),
              "final_rwl": records[-1]["rwl"],
          } for t, records in runs.items()},
      "failures": failures,
  }
  plot(summary, runs, out / "rwl_spectrum.png")
  (out / "rwl_spectrum.json").write_text(json.dumps(summary))
  for t, headline in summary["headline"].items():
    print(f"tau={t}: " + ", ".join(f"{k} {v}" for k, v in headline.items()) +
          f" (RWL* {summary['rwl_star'][t]:.4g})")
  print(f"{summary['seconds']:.0f} s")
  if failures:
    print("FAILED: " + failures[0] + (f" (+{len(failures) - 1} more)" if len(failures) > 1
                                      else ""))
    sys.exit(1)


def plot(summary, runs, path):
  figure, axes = plt.subplots(2, 2, figsize=(13, 7.5), sharex=True)
  for column, (temperature, records) in enumerate(runs.items()):
    steps = np.array([r["step"] for r in records])
    eigenvalues = np.array([r["eigenvalues"] for r in records])
    radius = np.sqrt(np.array([r["rwl"] for r in records]))
    axis = axes[0, column]
    axis.plot(steps[::4], eigenvalues[::4], color="C0", lw=0.5)
    below = radius < 1  # Bands drawn only where they are disjoint (R5's hypothesis RWL < 1).
    axis.fill_between(steps, 0, np.minimum(radius, 2), where=below, color="C2", alpha=0.3,
                      label="[0, sqrt(RWL)]", step="mid")
    axis.fill_between(steps, np.maximum(2 - radius, 0), 2, where=below, color="C3", alpha=0.3,
                      label="[2 - sqrt(RWL), 2]", step="mid")
    if below.any():
      axis.axvline(steps[below][0], color="k", ls=":", lw=1, label="first RWL < 1")
    axis.set(ylim=(0, 2), ylabel="eigenvalues of L_rw(S), held-out batch",
             title=f"tau = {temperature}: the {2 * BATCH_SIZE} eigenvalues after each step")
    axis.legend(fontsize=7, loc="center right")
    axis = axes[1, column]
    window = 25  # The training batch changes every step: its RWL is shown as a running mean.
    running = np.convolve([r["train_batch_rwl"] for r in records], np.ones(window) / window,
                          mode="valid")
    axis.plot(steps[window - 1:], running, color="gray", lw=1,
              label=f"training-batch RWL ({window}-step mean)")
    axis.plot(steps, [r["rwl"] for r in records], label="RWL")
    axis.plot(steps, [r["negative_mass"] for r in records], label="sum (1 - p_i)")
    axis.plot(steps, [r["ncut"] for r in records], label="Ncut(instances)")
    axis.plot(steps, np.sqrt(2 * BATCH_SIZE * np.array([r["rwl"] for r in records])), ":",
              label="sqrt(N RWL)")
    axis.axhline(summary["rwl_star"][str(temperature)], color="k", ls="--", lw=1,
                 label=f"RWL* = {summary['rwl_star'][str(temperature)]:.3g}")
    axis.axhline(1.0, color="gray", lw=0.5)
    axis.set(yscale="log", xlabel="SGD step", title=f"tau = {temperature}: Ncut <= sum(1-p) <= "
             "sqrt(N RWL)")
    axis.legend(fontsize=7)
  figure.suptitle(f"E4 L_rw spectrum during RWL training, B = {BATCH_SIZE}, MLP 32-64-16 "
                  f"({'quick' if summary['quick'] else 'full'})", fontsize=9)
  figure.tight_layout()
  save_png(figure, path)


if __name__ == "__main__":
  main()
