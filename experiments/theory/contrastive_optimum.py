"""E1: closed-form minima of RWL and NT-Xent, their temperature dependence, and RWL's plateaus.

Free unit embeddings (2B rows in R^d, d = max(B, 8)) are trained with Adam (lr 0.05) on the
project's rwl_loss and nt_xent_loss, rows renormalised after every step, from several random
starts, over a grid of temperatures. The best final values are compared with
closed_forms.contrastive_optimum (docs/theory.md S2/R6) and the final Gram matrix with the simplex
Gram (B(I + T) - J)/(B - 1). At small tau some RWL runs stop on plateaus: k rows whose positive
has vanishing probability p_i (the two views of an image far apart). There
dRWL/da_{i,pos} = 2 p_i [(p_i - 1) - sum_j e_ij P_ij] -> 0 with p_i, so RWL's gradient is tiny
while NT-Xent's (P_i - T_i) is not; the value is sum over those rows of (1 + sum_j P_ij^2), in
[k (N-1)/(N-2), 2k] (2k, R7, only when each such row's mass sits on one wrong neighbour).

  python experiments/theory/contrastive_optimum.py --out=DIR [--quick]

writes DIR/contrastive_optimum.{png,json} and exits non-zero with one line if a headline check
fails.
"""

from __future__ import annotations

import json
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

LOSSES = {"rwl": losses.rwl_loss, "nt_xent": losses.nt_xent_loss}
SUCCESS_ATOL = 1e-3  # A run 'reaches' the closed form when within this absolute distance.
CONVERGED_FROM = 0.2  # Temperatures from here on: every run must reach the closed form.


def train(loss, batch_size, dim, temperature, seeds, steps, learning_rate):
  """Final values, embeddings and gradient norms of Adam runs on the sphere, one per seed."""
  optimizer = optax.adam(learning_rate)

  def objective(z):
    return loss(z[:batch_size], z[batch_size:], temperature)

  def normalise(z):
    return z / jnp.linalg.norm(z, axis=1, keepdims=True)

  def run(key):
    z = normalise(jax.random.normal(key, (2 * batch_size, dim)))

    def step(carry, _):
      z, state = carry
      updates, state = optimizer.update(jax.grad(objective)(z), state)
      return (normalise(optax.apply_updates(z, updates)), state), None

    (z, _), _ = jax.lax.scan(step, (z, optimizer.init(z)), None, length=steps)
    value, gradient = jax.value_and_grad(objective)(z)
    return value, z, jnp.linalg.norm(gradient)

  keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
  values, embeddings, gradient_norms = jax.jit(jax.vmap(run))(keys)
  return np.asarray(values, np.float64), np.asarray(embeddings, np.float64), np.asarray(
      gradient_norms, np.float64)


def lost_rows(z, temperature):
  """#rows whose positive probability p_i is below 1e-2 (the rows that hold a plateau)."""
  return int(np.count_nonzero(spectral.positive_probabilities(z, temperature) < 1e-2))


def gradient_norm(loss, z, temperature):
  batch_size = len(z) // 2
  gradient = jax.grad(lambda z: loss(z[:batch_size], z[batch_size:], temperature))(
      jnp.asarray(z, jnp.float32))
  return float(jnp.linalg.norm(gradient))


def main():
  args = experiment_arguments(__doc__)
  out = args.out
  started = time.time()

  if args.quick:
    batch_sizes, temperatures, seeds, steps = (4, 8), (0.05, 0.4, 2.0), range(4), 1000
  else:
    batch_sizes, temperatures, seeds, steps = (4, 8, 16), np.geomspace(0.05, 5, 12), range(8), 2000
  learning_rate = 0.05
  results = []
  best_grams = {}  # (batch_size, temperature, loss) -> Gram of the best run (plotted, not saved).
  final_embeddings = {}
  for batch_size in batch_sizes:
    dim = max(batch_size, 8)
    for temperature in temperatures:
      temperature = float(temperature)
      optimum = closed_forms.contrastive_optimum(batch_size, temperature)
      for name, loss in LOSSES.items():
        values, embeddings, gradient_norms = train(loss, batch_size, dim, temperature, seeds,
                                                   steps, learning_rate)
        best = int(np.argmin(values))
        gram = embeddings[best] @ embeddings[best].T
        best_grams[batch_size, temperature, name] = gram
        final_embeddings[batch_size, temperature, name] = embeddings
        results.append({
            "batch_size": batch_size, "dim": dim, "temperature": temperature, "loss": name,
            "closed_form": optimum[name], "values": values.tolist(),
            "gradient_norms": gradient_norms.tolist(),
            "lost_rows": [lost_rows(z, temperature) for z in embeddings],
            "best": float(values[best]),
            "reached": int(np.count_nonzero(np.abs(values - optimum[name]) <= SUCCESS_ATOL)),
            "runs": len(values),
            "gram_error": float(np.abs(gram - closed_forms.simplex_gram(batch_size)).max()),
        })
        print(f"B={batch_size:2d} tau={temperature:.3f} {name:7s} best={values[best]:.6g} "
              f"closed form={optimum[name]:.6g} reached {results[-1]['reached']}/{len(values)}",
              flush=True)

  # Headline checks.
  failures = []
  for row in results:
    if row["best"] < row["closed_form"] * (1 - 1e-4) - 1e-6:
      failures.append(f"{row['loss']} B={row['batch_size']} tau={row['temperature']:.3g}: best "
                      f"{row['best']:.6g} below the closed form {row['closed_form']:.6g}")
    if row["temperature"] >= CONVERGED_FROM and row["reached"] < row["runs"]:
      failures.append(f"{row['loss']} B={row['batch_size']} tau={row['temperature']:.3g}: only "
                      f"{row['reached']}/{row['runs']} runs reached the closed form")
    if row["temperature"] >= CONVERGED_FROM and row["gram_error"] > 1e-2:
      failures.append(f"{row['loss']} B={row['batch_size']} tau={row['temperature']:.3g}: Gram "
                      f"off the simplex by {row['gram_error']:.3g}")
  nt_xent_failures = [row for row in results if row["loss"] == "nt_xent"
                      and row["reached"] < row["runs"]]
  if nt_xent_failures:
    failures.append(f"NT-Xent missed its closed form at {len(nt_xent_failures)} settings")
  stuck = []
  for row in results:
    if row["loss"] != "rwl" or row["temperature"] >= CONVERGED_FROM:
      continue
    for seed, value in enumerate(row["values"]):
      if value - row["closed_form"] <= SUCCESS_ATOL:
        continue
      z = final_embeddings[row["batch_size"], row["temperature"], "rwl"][seed]
      num_rows, lost = len(z), row["lost_rows"][seed]
      stuck.append({"batch_size": row["batch_size"], "temperature": row["temperature"],
                    "seed": seed, "value": value, "lost_rows": lost,
                    "lower": lost * (num_rows - 1) / (num_rows - 2), "upper": 2 * lost,
                    "rwl_gradient_norm": gradient_norm(losses.rwl_loss, z, row["temperature"]),
                    "nt_xent_gradient_norm": gradient_norm(losses.nt_xent_loss, z,
                                                           row["temperature"])})
  if not stuck:
    failures.append(f"no RWL run stuck on a plateau at tau < {CONVERGED_FROM}")
  for run in stuck:
    # Rows with p_i < 1e-2 carry (1 - p_i)^2 (1 + ...) each; the solved rows carry ~0.
    if not (run["lost_rows"] >= 1 and 0.97 * run["lower"] <= run["value"] <= run["upper"] + 0.05):
      failures.append(f"stuck RWL value {run['value']:.3f} outside [k(N-1)/(N-2), 2k], k = "
                      f"{run['lost_rows']}")
    if not run["nt_xent_gradient_norm"] >= 10 * run["rwl_gradient_norm"]:
      failures.append(f"RWL plateau at {run['value']:.3f} is not flat relative to NT-Xent")

  cifar = closed_forms.contrastive_optimum(256, 0.4)
  cifar_collapse = closed_forms.collapse_values(256)
  summary = {
      "command": " ".join([pathlib.Path(sys.executable).name] + sys.argv),
      "quick": args.quick, "steps": steps, "learning_rate": learning_rate,
      "seconds": time.time() - started, "results": results,
      "stuck_rwl_runs": stuck,
      "cifar_floor": {"batch_size": 256, "temperature": 0.4, "rwl_min": cifar["rwl"],
                      "rwl_collapse": cifar_collapse["rwl"], "p_star": cifar["p"],
                      "nt_xent_min": cifar["nt_xent"],
                      "nt_xent_collapse": cifar_collapse["nt_xent"]},
      "failures": failures,
  }
  plot(results, batch_sizes, best_grams, summary, out / "contrastive_optimum.png")
  (out / "contrastive_optimum.json").write_text(json.dumps(summary, indent=1))
  print(f"{len(stuck)} RWL runs stuck at tau < {CONVERGED_FROM}; CIFAR floor RWL* = "
        f"{cifar['rwl']:.4f} (collapse {cifar_collapse['rwl']:.4f}); {summary['seconds']:.0f} s")
  if failures:
    print("FAILED: " + failures[0] + (f" (+{len(failures) - 1} more)" if len(failures) > 1
                                      else ""))
    sys.exit(1)


def plot(results, batch_sizes, best_grams, summary, path):
  figure, axes = plt.subplots(1, 4, figsize=(17, 4.2))
  fine = np.geomspace(0.04, 6, 200)
  colours = dict(zip(batch_sizes, ["C0", "C1", "C2"]))
  for axis, name, title in ((axes[0], "rwl", "RWL"), (axes[1], "nt_xent", "NT-Xent")):
    for batch_size in batch_sizes:
      rows = [row for row in results if row["loss"] == name and row["batch_size"] == batch_size]
      curve = [closed_forms.contrastive_optimum(batch_size, t)[name] for t in fine]
      axis.plot(fine, curve, color=colours[batch_size], lw=1, label=f"closed form, B={batch_size}")
      axis.axhline(closed_forms.collapse_values(batch_size)[name], color=colours[batch_size],
                   ls=":", lw=1)
      temperatures = [row["temperature"] for row in rows]
      axis.plot(temperatures, [row["best"] for row in rows], "o", color=colours[batch_size],
                ms=4, label=f"best of {rows[0]['runs']} Adam runs")
      for row in rows:  # Runs that missed the closed form (RWL's plateaus) as crosses.
        missed = [v for v in row["values"] if v - row["closed_form"] > SUCCESS_ATOL]
        axis.plot([row["temperature"]] * len(missed), missed, "x", color=colours[batch_size],
                  ms=5)
    # Below ~1e-7 the float32 losses cannot follow the closed form (rounding floor).
    axis.set(xscale="log", yscale="log", xlabel="temperature tau", ylim=(1e-8, None),
             title=f"{title}: minimum vs tau\n(x: stuck runs, dotted: collapse)")
    axis.title.set_fontsize(9)
    axis.legend(fontsize=6)
  for name, marker in (("rwl", "o-"), ("nt_xent", "s--")):
    for batch_size in batch_sizes:
      rows = [row for row in results if row["loss"] == name and row["batch_size"] == batch_size]
      axes[2].plot([row["temperature"] for row in rows],
                   [row["reached"] / row["runs"] for row in rows], marker,
                   color=colours[batch_size], ms=3, label=f"{name} B={batch_size}")
  axes[2].set(xscale="log", xlabel="temperature tau", ylim=(-0.05, 1.05),
              title=f"fraction of runs within {SUCCESS_ATOL:g} of closed form")
  axes[2].legend(fontsize=6)
  chosen = min((row for row in results if row["loss"] == "rwl" and row["batch_size"] == 8),
               key=lambda row: abs(row["temperature"] - 0.4))
  gram = best_grams[8, chosen["temperature"], "rwl"]
  image = axes[3].imshow(gram, cmap="RdBu_r", vmin=-1, vmax=1)
  axes[3].set_title(f"Gram of the best RWL run, B=8, tau={chosen['temperature']:.2f}\n"
                    f"max |Gram - (B(I+T)-J)/(B-1)| = {chosen['gram_error']:.1e}", fontsize=8)
  figure.colorbar(image, ax=axes[3], fraction=0.046)
  floor = summary["cifar_floor"]
  figure.suptitle(f"E1 contrastive optimum ({'quick' if summary['quick'] else 'full'}); CIFAR "
                  f"defaults B=256, tau=0.4: RWL in [{floor['rwl_min']:.1f}, "
                  f"{floor['rwl_collapse']:.1f}], p* = {floor['p_star']:.3f}", fontsize=9)
  figure.tight_layout()
  save_png(figure, path)


if __name__ == "__main__":
  main()
