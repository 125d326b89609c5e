"""E2: linear VICReg and Barlow Twins against their closed forms, and B&L's alignment guidance.

(a) One output, symmetric views (closed_forms.symmetric_views(0)): Adam on w with the project's
    vicreg_loss and barlow_twins_loss converges onto the closed-form values L* (V3) and
    (1 - rho_1)^2 (BT1).
(b) VICReg, two outputs: the optimum's |corr(z_1, z_2)| against cov_coeff (float64 objective,
    BFGS, restarts) with the crossover nu_c where the collapsed and decorrelated candidates tie:
    below it the default-style small covariance weight collapses the representation to rank one.
(c) Barlow Twins, two outputs: optimum against lambd with the CCA and rank-one values: rank one is
    the optimum below the BT3 threshold (the default 0.0051 included); above it the optimum is
    partially correlated and, on these views, reaches the CCA value at large lambd.
(d) Balestriero & LeCun's guidance in closed form (V2, no training): probe accuracy against the
    invariance weight gamma for a relation graph aligned with the classes and one aligned with a
    nuisance factor.

  python experiments/theory/linear_regime.py --out=DIR [--quick]

writes DIR/linear_regime.{png,json} and exits non-zero with one line if a headline check fails.
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
import scipy.optimize

from rwl_jax import losses
from rwl_jax.theory import closed_forms

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
from figures import experiment_arguments, save_png  # pylint: disable=g-import-not-at-top  (this folder)


def adam_curve(loss, x1, x2, steps, learning_rate, seed):
  """Loss per step of Adam (cosine-decayed learning rate) on a linear encoder w [D, 1]."""
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-3))
  x1, x2 = jnp.asarray(x1, jnp.float32), jnp.asarray(x2, jnp.float32)

  def objective(w):
    return loss(x1 @ w, x2 @ w)

  def step(carry, _):
    w, state = carry
    value, gradient = jax.value_and_grad(objective)(w)
    updates, state = optimizer.update(gradient, state)
    return (optax.apply_updates(w, updates), state), value

  w = jnp.asarray(np.random.default_rng(seed).normal(size=(x1.shape[1], 1)), jnp.float32)
  (w, _), values = jax.jit(lambda w: jax.lax.scan(step, (w, optimizer.init(w)), None,
                                                  length=steps))(w)
  return np.asarray(values, np.float64), float(objective(w))


def vicreg_two_outputs(x1, x2, cov_coeffs, restarts, rng):
  """Best BFGS optimum of the float64 linear VICReg (d = 2) per cov_coeff, and its |corr|.

  BFGS rather than L-BFGS-B: L-BFGS-B's core calls multithreaded OpenBLAS on tiny vectors, which
  is erratically slow on a busy 2-core machine.
  """
  a, c = closed_forms.vicreg_view_matrices(x1, x2)
  dim = x1.shape[1]
  rows = []
  for cov_coeff in cov_coeffs:

    def objective(flat, cov_coeff=cov_coeff):
      value, gradient = closed_forms.vicreg_linear_objective(flat.reshape(dim, 2), a, c,
                                                             cov_coeff=cov_coeff)
      return value, gradient.ravel()

    best = min((scipy.optimize.minimize(objective, 0.3 * rng.normal(size=2 * dim), jac=True,
                                        method="BFGS", options={"gtol": 1e-10, "maxiter": 20000})
                for _ in range(restarts)), key=lambda result: result.fun)
    w = best.x.reshape(dim, 2)
    gram = w.T @ c @ w
    rows.append({
        "cov_coeff": float(cov_coeff), "value": float(best.fun),
        "abs_corr": float(abs(gram[0, 1]) / np.sqrt(gram[0, 0] * gram[1, 1])),
        "collapsed": closed_forms.vicreg_linear_collapsed(x1, x2, 2, cov_coeff=cov_coeff)["value"],
        "decorrelated": closed_forms.vicreg_linear_decorrelated(x1, x2, 2)["value"],
    })
  return rows


def barlow_two_outputs(x1, x2, lambds, restarts, rng):
  """Best BFGS optimum (finite-difference gradients) of the float64 linear Barlow Twins (d = 2)."""
  dim = x1.shape[1]
  rows = []
  for lambd in lambds:

    def objective(flat, lambd=lambd):
      return closed_forms.barlow_linear_objective(flat.reshape(dim, 2), x1, x2, lambd=lambd)

    best = min((scipy.optimize.minimize(objective, rng.normal(size=2 * dim), method="BFGS",
                                        options={"gtol": 1e-9, "maxiter": 5000})
                for _ in range(restarts)), key=lambda result: result.fun)
    candidates = closed_forms.barlow_linear_candidates(x1, x2, 2, lambd=lambd)
    rows.append({"lambd": float(lambd), "value": float(best.fun), "cca": candidates["cca"],
                 "rank_one": candidates["rank_one"], "threshold": candidates["threshold"]})
  return rows


def alignment_data(num_samples, rng, class_means, nuisance_means):
  """20-d rows: class mean (dims 0-2) + nuisance mean (dims 3-5) + unit Gaussian noise; the
  class and the 4-valued nuisance factor are independent and uniform."""
  labels = rng.integers(0, 4, num_samples)
  nuisance = rng.integers(0, 4, num_samples)
  x = rng.normal(size=(num_samples, 20))
  x[:, :3] += class_means[labels]
  x[:, 3:6] += nuisance_means[nuisance]
  return x, labels, nuisance


def knn_graph_within(groups, neighbours, rng):
  """Symmetric 0/1 graph linking each row to `neighbours` random rows of the same group."""
  graph = np.zeros((len(groups), len(groups)))
  for i, group in enumerate(groups):
    candidates = np.flatnonzero(groups == group)
    candidates = candidates[candidates != i]
    graph[i, rng.choice(candidates, neighbours, replace=False)] = 1.0
  return np.maximum(graph, graph.T)


def probe_accuracy(train_features, train_labels, test_features, test_labels, shots, draws, rng):
  """Mean accuracy of the nearest-class-mean probe from `shots` labelled rows per class."""
  accuracies = []
  for _ in range(draws):
    chosen = [rng.choice(np.flatnonzero(train_labels == c), shots, replace=False)
              for c in range(4)]
    means = np.stack([train_features[index].mean(axis=0) for index in chosen])
    distances = np.sum(np.square(test_features[:, None, :] - means[None]), axis=-1)
    accuracies.append(np.mean(np.argmin(distances, axis=1) == test_labels))
  return float(np.mean(accuracies))


def alignment_experiment(gammas, num_samples, draws, rng):
  """Probe accuracy and rank of the V2 closed form (beta = 1, d = D = 20) per gamma and graph."""
  # Means on a regular tetrahedron: each factor spans 3 directions with equal variance.
  tetrahedron = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
  class_means, nuisance_means = 3.0 * tetrahedron, 4.0 * tetrahedron
  x, labels, nuisance = alignment_data(num_samples, rng, class_means, nuisance_means)
  x_test, labels_test, _ = alignment_data(4000, rng, class_means, nuisance_means)
  graphs = {"aligned": knn_graph_within(labels, 5, rng),
            "misaligned": knn_graph_within(nuisance, 5, rng)}
  rows = []
  for name, graph in graphs.items():
    for gamma in gammas:
      solution = closed_forms.spectral_vicreg(x, graph, 1.0, gamma, 20)
      w = solution["w"][:, solution["t"] > 0]
      if w.shape[1] == 0:
        accuracy = 0.25
      else:
        accuracy = probe_accuracy(x @ w, labels, x_test @ w, labels_test, 3, draws, rng)
      rows.append({"graph": name, "gamma": float(gamma), "rank": solution["rank"],
                   "accuracy": accuracy})
  return rows


def main():
  args = experiment_arguments(__doc__)
  out = args.out
  started = time.time()
  rng = np.random.default_rng(0)
  failures = []

  # (a) one output: Adam onto the closed forms.
  x1, x2 = closed_forms.symmetric_views(0)
  steps = 2000 if args.quick else 5000
  vicreg_star = closed_forms.vicreg_linear_d1(x1, x2)
  barlow_star = closed_forms.barlow_linear_d1(x1, x2)
  vicreg_values, vicreg_final = adam_curve(losses.vicreg_loss, x1, x2, steps, 3e-2, seed=1)
  barlow_values, barlow_final = adam_curve(losses.barlow_twins_loss, x1, x2, steps, 3e-2, seed=1)
  one_output = {"steps": steps, "vicreg_closed_form": vicreg_star["value"],
                "vicreg_final": vicreg_final, "barlow_infimum": barlow_star["infimum"],
                "barlow_final": barlow_final, "vicreg_rho_1": vicreg_star["rho"],
                "barlow_rho_1": barlow_star["rho"]}
  for name, final, target in (("VICReg", vicreg_final, vicreg_star["value"]),
                              ("Barlow Twins", barlow_final, barlow_star["infimum"])):
    if not target * (1 - 1e-6) <= final <= target * (1 + 1e-4):
      failures.append(f"(a) {name} Adam final {final:.7g} not within 1e-4 of {target:.7g}")

  # (b) VICReg d = 2 against cov_coeff.
  cov_coeffs = np.geomspace(0.5, 200, 6 if args.quick else 12)
  crossover = closed_forms.vicreg_collapse_crossover(x1, x2, 2)
  vicreg_rows = vicreg_two_outputs(x1, x2, cov_coeffs, 4 if args.quick else 8, rng)
  for row in vicreg_rows:
    candidates = min(row["collapsed"], row["decorrelated"])
    if row["value"] > candidates * (1 + 1e-9):
      failures.append(f"(b) optimum {row['value']:.7g} above a candidate {candidates:.7g}")
    if row["cov_coeff"] <= crossover / 2 and row["abs_corr"] < 0.999:
      failures.append(f"(b) nu={row['cov_coeff']:.3g} << nu_c: |corr| {row['abs_corr']:.3g} < 1")
    if row["cov_coeff"] >= 4 * crossover and row["abs_corr"] > 1e-3:
      failures.append(f"(b) nu={row['cov_coeff']:.3g} >> nu_c: |corr| {row['abs_corr']:.3g} > 0")

  # (c) Barlow Twins d = 2 against lambd.
  lambds = np.geomspace(1e-3, 10, 5 if args.quick else 9)
  barlow_rows = barlow_two_outputs(x1, x2, lambds, 4 if args.quick else 12, rng)
  for row in barlow_rows:
    # Both candidates are (limits of) feasible points, so the optimum is never above either.
    if row["value"] > min(row["cca"], row["rank_one"]) * (1 + 1e-6):
      failures.append(f"(c) lambd={row['lambd']:.3g}: optimum {row['value']:.6g} above a "
                      f"candidate")
    if row["lambd"] < row["threshold"] and not abs(row["value"] - row["rank_one"]) <= 1e-4 * (
        row["rank_one"]):
      failures.append(f"(c) lambd={row['lambd']:.3g} below the threshold: optimum "
                      f"{row['value']:.6g} != rank one {row['rank_one']:.6g}")

  # (d) alignment guidance.
  gammas = (0.0, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0)
  alignment_rows = alignment_experiment(gammas, 1000, 10 if args.quick else 40, rng)
  accuracy = {(row["graph"], row["gamma"]): row["accuracy"] for row in alignment_rows}
  aligned_best = max(accuracy["aligned", g] for g in (0.2, 0.3, 0.5))
  misaligned_late = max(accuracy["misaligned", g] for g in (0.3, 0.5, 1.0))
  if aligned_best < 0.9:
    failures.append(f"(d) aligned graph: best accuracy {aligned_best:.3f} at gamma in [0.2, 0.5]")
  if not aligned_best >= accuracy["aligned", 0.0] + 0.3:
    failures.append("(d) aligned graph: invariance does not beat whitening by 0.3")
  if not (misaligned_late <= 0.35 and accuracy["misaligned", 0.0] >= misaligned_late + 0.15):
    failures.append(f"(d) misaligned graph: accuracy {misaligned_late:.3f} at large gamma is not "
                    f"near chance below whitening's {accuracy['misaligned', 0.0]:.3f}")

  summary = {
      "command": " ".join([pathlib.Path(sys.executable).name] + sys.argv), "quick": args.quick,
      "seconds": time.time() - started, "one_output": one_output,
      "vicreg_crossover": crossover, "vicreg_two_outputs": vicreg_rows,
      "barlow_two_outputs": barlow_rows, "alignment": alignment_rows, "failures": failures,
  }
  plot(summary, vicreg_values, barlow_values, out / "linear_regime.png")
  (out / "linear_regime.json").write_text(json.dumps(summary, indent=1))
  print(f"(a) VICReg {vicreg_final:.6f} vs L* {vicreg_star['value']:.6f}; Barlow "
        f"{barlow_final:.7f} vs (1-rho)^2 {barlow_star['infimum']:.7f}")
  print(f"(b) nu_c = {crossover:.2f}; |corr| = " + ", ".join(
      f"{row['cov_coeff']:.3g}:{row['abs_corr']:.2f}" for row in vicreg_rows))
  print("(c) " + ", ".join(f"lambd {row['lambd']:.3g}: {row['value']:.4f}" for row in barlow_rows)
        + f" (CCA {barlow_rows[0]['cca']:.4f}, threshold {barlow_rows[0]['threshold']:.4f})")
  for graph in ("aligned", "misaligned"):
    print(f"(d) {graph}: " + ", ".join(
        f"{row['gamma']:g}: {row['rank']}/{row['accuracy']:.3f}" for row in alignment_rows
        if row["graph"] == graph))
  print(f"{summary['seconds']:.0f} s")
  if failures:
    print("FAILED: " + failures[0] + (f" (+{len(failures) - 1} more)" if len(failures) > 1
                                      else ""))
    sys.exit(1)


def plot(summary, vicreg_values, barlow_values, path):
  figure, axes = plt.subplots(1, 4, figsize=(18, 4.2))
  one = summary["one_output"]
  steps = np.arange(1, len(vicreg_values) + 1)
  # Relative distance, floored at 1e-8: the float32 losses fluctuate ~1e-7 around the optimum.
  for values, target, label in ((vicreg_values, one["vicreg_closed_form"], "VICReg vs L* (V3)"),
                                (barlow_values, one["barlow_infimum"],
                                 "Barlow Twins vs (1 - rho_1)^2 (BT1)")):
    axes[0].plot(steps, np.maximum(np.abs(values - target) / target, 1e-8), label=label)
  axes[0].axhline(1e-4, color="k", ls=":", lw=1, label="check: 1e-4")
  axes[0].set(xscale="log", yscale="log", xlabel="Adam step",
              ylabel="|L - closed form| / closed form",
              title="(a) one output: Adam onto the closed forms\n"
              f"L* = {one['vicreg_closed_form']:.6f}, (1-rho_1)^2 = {one['barlow_infimum']:.7f}")
  axes[0].title.set_fontsize(8)
  axes[0].legend(fontsize=7)
  rows = summary["vicreg_two_outputs"]
  axes[1].plot([r["cov_coeff"] for r in rows], [r["abs_corr"] for r in rows], "o-")
  axes[1].axvline(summary["vicreg_crossover"], color="k", ls="--",
                  label=f"nu_c = {summary['vicreg_crossover']:.1f} (L_coll = L_dec)")
  axes[1].axvline(1.0, color="C3", ls=":", label="project default cov_coeff = 1")
  axes[1].set(xscale="log", xlabel="cov_coeff nu (sim = std = 25)", ylabel="|corr(z_1, z_2)|",
              title="(b) VICReg, 2 outputs: optimum's correlation")
  axes[1].legend(fontsize=7)
  rows = summary["barlow_two_outputs"]
  axes[2].plot([r["lambd"] for r in rows], [r["value"] for r in rows], "o-", label="optimum")
  axes[2].axhline(rows[0]["cca"], color="k", ls="--", label="CCA sum (1 - rho_k)^2 (BT2)")
  axes[2].plot([r["lambd"] for r in rows], [r["rank_one"] for r in rows], ":",
               label="rank one 2(1-rho_1)^2 + 2 lambd rho_1^2")
  axes[2].axvline(rows[0]["threshold"], color="C3", ls=":", label="BT3 threshold")
  axes[2].axvline(0.0051, color="C2", ls="-.", label="default lambd 0.0051")
  axes[2].set(xscale="log", xlabel="lambd", title="(c) Barlow Twins, 2 outputs: optimum",
              ylim=(0, 1.2 * rows[0]["cca"]))
  axes[2].legend(fontsize=7)
  rows = summary["alignment"]
  for graph, colour in (("aligned", "C0"), ("misaligned", "C1")):
    chosen = [r for r in rows if r["graph"] == graph]
    gammas = [max(r["gamma"], 3e-3) for r in chosen]  # gamma = 0 drawn at 3e-3 on the log axis.
    axes[3].plot(gammas, [r["accuracy"] for r in chosen], "o-", color=colour,
                 label=f"{graph} graph")
    for gamma, row in zip(gammas, chosen):
      axes[3].annotate(str(row["rank"]), (gamma, row["accuracy"]), fontsize=6,
                       textcoords="offset points", xytext=(2, 3))
  axes[3].axhline(0.25, color="gray", ls=":", label="chance")
  axes[3].set(xscale="log", xlabel="invariance weight gamma (0 at left edge)",
              ylabel="probe accuracy (3 labels/class)",
              title="(d) B&L guidance, closed form V2 (numbers: rank)")
  axes[3].legend(fontsize=7)
  figure.suptitle(f"E2 linear regime ({'quick' if summary['quick'] else 'full'})", fontsize=9)
  figure.tight_layout()
  save_png(figure, path)


if __name__ == "__main__":
  main()
