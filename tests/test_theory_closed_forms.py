"""Closed forms of rwl_jax.theory against the project's own float32 losses (docs/theory.md, T2-T3,
T7-T8, V2).

Tolerances: the project losses compute in float32, so exact-value checks use rtol 1e-5 (a few
float32 ulps of accumulated rounding) and gradient-zero checks atol 1e-4 (1 + |loss|); float64
checks of the closed forms themselves use 1e-8 to 1e-10.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

from rwl_jax import losses
from rwl_jax.theory import closed_forms

# The float64 checks use scipy's BFGS, not L-BFGS-B: L-BFGS-B's core calls multithreaded OpenBLAS
# on tiny vectors, which takes seconds instead of milliseconds on a busy 2-core machine.
# Jitted once per shape and temperature: eager dispatch of the losses' many small ops costs ~1 s.
CONTRASTIVE = {"rwl": jax.jit(losses.rwl_loss, static_argnums=2),
               "nt_xent": jax.jit(losses.nt_xent_loss, static_argnums=2)}
CONTRASTIVE_VALUE_AND_GRAD = {
    name: jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    for name, loss in (("rwl", losses.rwl_loss), ("nt_xent", losses.nt_xent_loss))}
TRANSITION = jax.jit(losses.transition_matrix, static_argnums=1)
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def float32_atol(name, num_rows, temperature, negative_mass):
  """Absolute float32 error bound of a contrastive loss (derived, not fitted).

  log_softmax in float32 loses about an ulp of the largest logit per entry, so
  |delta log P| <= 4 eps32 (1/tau + log N) =: delta. NT-Xent then errs by <= delta, and RWL by
  2 sum |P - T| P delta <= 4 delta sum_i (1 - p_i): a plain rtol of 1e-5 fails for RWL near its
  optimum at small tau, where RWL ~ (1 - p)^2 is tiny but its error is ~ (1 - p) delta.
  """
  delta = 4 * FLOAT32_EPS * (1 / temperature + math.log(num_rows))
  return delta if name == "nt_xent" else 4 * delta * negative_mass


def simplex_views(batch_size, dim):
  simplex = jnp.asarray(closed_forms.simplex_embedding(batch_size, dim), jnp.float32)
  return simplex, simplex


# --- S2 / R6: the contrastive optimum -------------------------------------------------------------


@pytest.mark.parametrize("batch_size,dim", [(2, 1), (4, 3), (5, 9), (8, 8)])
def test_simplex_embedding_has_unit_rows_and_equal_negative_cosines(batch_size, dim):
  simplex = closed_forms.simplex_embedding(batch_size, dim)
  expected = (batch_size * np.eye(batch_size) - 1.0) / (batch_size - 1)
  np.testing.assert_allclose(simplex @ simplex.T, expected, atol=1e-12)
  both_views = np.concatenate([simplex, simplex])
  np.testing.assert_allclose(both_views @ both_views.T, closed_forms.simplex_gram(batch_size),
                             atol=1e-12)
  with pytest.raises(ValueError):
    closed_forms.simplex_embedding(batch_size + 2, batch_size)


# theory.md's literal cases, plus a small-temperature one where RWL* ~ 1.6e-5 tests float32_atol.
# Few distinct (shape, temperature) pairs: each one compiles the losses once (~0.2 s).
SIMPLEX_CASES = [(4, 3, 0.5), (4, 3, 2.0), (8, 8, 0.4), (16, 20, 0.1), (256, 256, 0.4)]


@pytest.mark.parametrize("batch_size,dim,temperature", SIMPLEX_CASES)
def test_project_losses_at_the_simplex_equal_the_closed_form(batch_size, dim, temperature):
  """T2: nt_xent = log(1 + eps), rwl = N(N-1)/(N-2) (eps/(1+eps))^2 at z1 = z2 = simplex."""
  z1, z2 = simplex_views(batch_size, dim)
  optimum = closed_forms.contrastive_optimum(batch_size, temperature)
  for name, loss in CONTRASTIVE.items():
    atol = float32_atol(name, 2 * batch_size, temperature, 2 * batch_size * (1 - optimum["p"]))
    value = float(loss(z1, z2, temperature))
    np.testing.assert_allclose(value, optimum[name], rtol=1e-5, atol=atol, err_msg=name)
    # A 10% wrong temperature gives a value outside the tolerance: the check can fail.
    wrong = closed_forms.contrastive_optimum(batch_size, 1.1 * temperature)[name]
    assert abs(optimum[name] - wrong) > 10 * (1e-5 * optimum[name] + atol)
  if batch_size == 4:
    probabilities = TRANSITION(jnp.concatenate([z1, z2]), temperature)
    positives = np.diagonal(np.asarray(probabilities), offset=batch_size)
    np.testing.assert_allclose(positives, optimum["p"], rtol=1e-5)


def test_contrastive_optimum_literal_values():
  """T2's literal values (theory.md), including the CIFAR floor at B = 256, tau = 0.4."""
  literal = {(4, 0.5): (0.3484719, 0.8080220), (4, 2.0): (1.4062202, 5.3192772),
             (8, 0.4): (0.5900378, 3.4053062), (256, 0.4): (3.748443, 489.1216)}
  for (batch_size, temperature), (nt_xent, rwl) in literal.items():
    optimum = closed_forms.contrastive_optimum(batch_size, temperature)
    np.testing.assert_allclose([optimum["nt_xent"], optimum["rwl"]], [nt_xent, rwl], rtol=2e-7)
  np.testing.assert_allclose(closed_forms.contrastive_optimum(256, 0.4)["p"], 0.023554, rtol=2e-5)
  np.testing.assert_allclose(closed_forms.collapse_values(256)["rwl"], 510.9980, rtol=1e-7)
  with pytest.raises(ValueError):
    closed_forms.contrastive_optimum(4, 0.0)


def test_temperatures_for_a_target_optimum():
  """Inverse of contrastive_optimum; R6's thresholds tau(RWL* = 1) for B = 64, 128, 256, 512."""
  for batch_size, probability in ((4, 0.5), (256, 0.5), (256, 0.9), (16, 0.99)):
    temperature = closed_forms.temperature_for_positive_probability(batch_size, probability)
    np.testing.assert_allclose(closed_forms.contrastive_optimum(batch_size, temperature)["p"],
                               probability, rtol=1e-12)
  thresholds = [closed_forms.temperature_for_rwl_optimum(b, 1.0) for b in (64, 128, 256, 512)]
  np.testing.assert_allclose(thresholds, [0.1416, 0.1222, 0.1078, 0.0967], atol=5e-5)
  for batch_size, temperature in zip((64, 128, 256, 512), thresholds):
    np.testing.assert_allclose(closed_forms.contrastive_optimum(batch_size, temperature)["rwl"],
                               1.0, rtol=1e-10)
  with pytest.raises(ValueError):
    closed_forms.temperature_for_positive_probability(4, 1.0 / 7)


@pytest.mark.parametrize("batch_size,dim,temperature", SIMPLEX_CASES[:4])
def test_collapse_values_equal_the_losses_of_identical_rows(batch_size, dim, temperature):
  """R2: all rows equal gives P = q(J - I): nt_xent = log(N-1), rwl = N(N-2)/(N-1), any tau."""
  ones = jnp.ones((batch_size, dim))
  collapse = closed_forms.collapse_values(batch_size)
  num_rows = 2 * batch_size
  for name, loss in CONTRASTIVE.items():
    atol = float32_atol(name, num_rows, temperature, num_rows * (1 - collapse["p"]))
    np.testing.assert_allclose(float(loss(ones, ones, temperature)), collapse[name], rtol=1e-5,
                               atol=atol)
  optimum = closed_forms.contrastive_optimum(batch_size, temperature)
  assert optimum["rwl"] < collapse["rwl"] and optimum["nt_xent"] < collapse["nt_xent"]


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_simplex_is_stationary_and_perturbations_increase_both_losses(temperature):
  """The simplex is a critical point on the sphere and every small perturbation costs loss.

  Perturbations of size 3e-2 change the losses by >= 1e-4 relative, far above float32 noise.
  """
  batch_size, dim = 4, 3
  z1, z2 = simplex_views(batch_size, dim)
  rng = np.random.default_rng(0)
  for name, loss in CONTRASTIVE.items():
    value, (grad1, grad2) = CONTRASTIVE_VALUE_AND_GRAD[name](z1, z2, temperature)
    assert max(np.abs(grad1).max(), np.abs(grad2).max()) <= 1e-5 * (1 + float(value)), name
    for _ in range(20):
      noise = 3e-2 * rng.normal(size=(2, batch_size, dim))
      perturbed = float(loss(z1 + noise[0], z2 + noise[1], temperature))
      assert perturbed > float(value) * (1 + 1e-4), name


def adam_on_the_sphere(loss, batch_size, dim, temperature, seeds, steps, learning_rate=0.05):
  """Final losses and embeddings of Adam on free unit embeddings, rows renormalised every step."""
  optimizer = optax.adam(learning_rate, b1=0.9, b2=0.999)

  def objective(z):
    return loss(z[:batch_size], z[batch_size:], temperature)

  def run(key):
    z = jax.random.normal(key, (2 * batch_size, dim))
    z = z / jnp.linalg.norm(z, axis=1, keepdims=True)

    def step(carry, _):
      z, state = carry
      updates, state = optimizer.update(jax.grad(objective)(z), state)
      z = optax.apply_updates(z, updates)
      return (z / jnp.linalg.norm(z, axis=1, keepdims=True), state), None

    (z, _), _ = jax.lax.scan(step, (z, optimizer.init(z)), None, length=steps)
    return objective(z), z

  keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
  values, embeddings = jax.jit(jax.vmap(run))(keys)
  return np.asarray(values), np.asarray(embeddings)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.5, 2.0])
@pytest.mark.parametrize("name", sorted(CONTRASTIVE))
def test_adam_from_random_starts_reaches_the_simplex_and_not_below(name, temperature):
  """T3: the best of 4 Adam runs equals the closed form to 1e-5 relative and its Gram is the
  simplex Gram to 1e-2 (not proved: this is the numerical evidence that it is the global min)."""
  batch_size, dim = 4, 8
  values, embeddings = adam_on_the_sphere(CONTRASTIVE[name], batch_size, dim, temperature,
                                          seeds=range(4), steps=3000)
  formula = closed_forms.contrastive_optimum(batch_size, temperature)[name]
  assert values.min() >= formula * (1 - 1e-5)
  assert values.min() <= formula * (1 + 1e-5)
  best = embeddings[np.argmin(values)]
  np.testing.assert_allclose(best @ best.T, closed_forms.simplex_gram(batch_size), atol=1e-2)


# --- V2: the soft-constraint linear VICReg (Laplacian eigenmaps) ----------------------------------


def paired_data(seed, num_pairs=20, dim=6):
  """N = 2 * num_pairs rows: two noisy copies of each point, and the pair graph G = T."""
  rng = np.random.default_rng(seed)
  points = rng.normal(size=(num_pairs, dim)) @ rng.normal(size=(dim, dim))
  scales = np.linspace(0.2, 2.0, dim)
  x = np.concatenate([points + scales * rng.normal(size=(num_pairs, dim)),
                      points + scales * rng.normal(size=(num_pairs, dim))])
  return x, closed_forms.pair_graph(num_pairs)


@pytest.mark.parametrize("gamma", [0.05, 0.5, 2.0, 8.0])
def test_spectral_vicreg_closed_form_is_the_global_minimum(gamma):
  """V2: L(W*) = L*, grad L(W*) = 0, Cov(X W*) = diag(t), BFGS from 6 random starts is never
  below L* (1 - 1e-9) and reaches it to 1e-7 relative (float64 throughout)."""
  x, graph = paired_data(0)
  beta, dim = 1.0, 3
  solution = closed_forms.spectral_vicreg(x, graph, beta, gamma, dim)
  a, c = closed_forms.spectral_vicreg_matrices(x, graph)

  def objective(flat):
    return closed_forms.spectral_vicreg_objective(flat.reshape(-1, dim), a, c, beta, gamma)

  def gradient(flat):
    w = flat.reshape(-1, dim)
    return (4 * beta * c @ w @ (w.T @ c @ w - np.eye(dim)) + 2 * gamma * a @ w).ravel()

  w_star = solution["w"]
  np.testing.assert_allclose(objective(w_star.ravel()), solution["value"], rtol=1e-10)
  np.testing.assert_allclose(gradient(w_star.ravel()), 0.0, atol=1e-9)
  np.testing.assert_allclose(w_star.T @ c @ w_star, np.diag(solution["t"]), atol=1e-10)
  assert solution["rank"] == np.count_nonzero(solution["rho"] < 2 * beta / gamma)
  rng = np.random.default_rng(1)
  found = []
  for _ in range(6):
    result = scipy.optimize.minimize(objective, rng.normal(size=w_star.size), jac=gradient,
                                     method="BFGS", options={"gtol": 1e-10, "maxiter": 20000})
    assert result.fun >= solution["value"] * (1 - 1e-9) - 1e-12
    found.append(result.fun)
  np.testing.assert_allclose(min(found), solution["value"], rtol=1e-7, atol=1e-12)


def test_spectral_vicreg_invariance_weight_removes_directions_one_by_one():
  x, graph = paired_data(0)
  rho = closed_forms.spectral_vicreg(x, graph, 1.0, 0.0, 3)["rho"]
  # Direction k (rho ascending) is removed exactly at gamma = 2 beta / rho_k.
  for k, threshold in enumerate(2.0 / rho):
    assert closed_forms.spectral_vicreg(x, graph, 1.0, 0.99 * threshold, 3)["rank"] == k + 1
    assert closed_forms.spectral_vicreg(x, graph, 1.0, 1.01 * threshold, 3)["rank"] == k


# --- V3: the project's vicreg_loss, linear, one output --------------------------------------------


def linear_vicreg(w, x1, x2, cov_coeff=1.0):
  """The project's vicreg_loss of a linear encoder (defaults otherwise), float32."""
  return losses.vicreg_loss(x1 @ w, x2 @ w, cov_coeff=cov_coeff)


project_vicreg = jax.jit(linear_vicreg, static_argnums=3)
project_vicreg_value_and_grad = jax.jit(jax.value_and_grad(linear_vicreg), static_argnums=3)
project_vicreg_many = jax.jit(jax.vmap(linear_vicreg, in_axes=(0, None, None)))


def float32_views(x1, x2):
  return jnp.asarray(x1, jnp.float32), jnp.asarray(x2, jnp.float32)


def test_vicreg_linear_d1_smooth_regime_is_the_exact_optimum():
  """T7: value = lambda rho_1 (t^2 - eps) + mu (gamma - t) (rtol 1e-5), grad <= 1e-4 (1 + L), and no
  BFGS run on the float64 objective gets below L* (1 - 1e-8)."""
  x1, x2 = closed_forms.symmetric_views(0)
  a, c = closed_forms.vicreg_view_matrices(x1, x2)
  np.testing.assert_allclose(np.cov(x1, rowvar=False), np.cov(x2, rowvar=False), atol=1e-10)
  solution = closed_forms.vicreg_linear_d1(x1, x2)
  assert solution["smooth"] and solution["rho"] > 25.0 / (2 * 25.0 * 1.0)
  w_star = jnp.asarray(solution["w"], jnp.float32)
  views = float32_views(x1, x2)
  value, gradient = project_vicreg_value_and_grad(w_star, *views)
  np.testing.assert_allclose(float(value), solution["value"], rtol=1e-5)
  # Literal check from theory.md (T7), printed there to 6 decimals.
  np.testing.assert_allclose([solution["value"], solution["rho"], solution["t"]],
                             [19.952784, 1.239067, 0.403529], atol=5e-7)
  assert np.linalg.norm(gradient) <= 1e-4 * (1 + float(value))
  # The float64 re-implementation is the same function (gradient included).
  value64, gradient64 = closed_forms.vicreg_linear_objective(solution["w"], a, c)
  np.testing.assert_allclose(value64, solution["value"], rtol=1e-12)
  np.testing.assert_allclose(gradient64, 0.0, atol=1e-10)
  rng = np.random.default_rng(0)

  def objective(flat):
    value, grad = closed_forms.vicreg_linear_objective(flat[:, None], a, c)
    return value, grad.ravel()

  for _ in range(5):
    result = scipy.optimize.minimize(objective, rng.normal(size=5), jac=True, method="BFGS")
    assert result.fun >= solution["value"] * (1 - 1e-8)
  # A wrong std (the hinge target gamma instead of t*) or a tilted direction cost more.
  off_scale = solution["w"] * math.sqrt((1.0 - 1e-4) / (solution["t"]**2 - 1e-4))
  assert float(project_vicreg(jnp.asarray(off_scale, jnp.float32), *views)) > value + 1e-3
  tilted = solution["w"] + 0.05 * np.linalg.norm(solution["w"]) * rng.normal(size=(5, 1))
  assert float(project_vicreg(jnp.asarray(tilted, jnp.float32), *views)) > value + 1e-4


def test_vicreg_linear_d1_kink_regime_sits_on_the_hinge():
  """T7, rho_1 < mu/(2 lambda gamma): L* = lambda rho_1 (gamma^2 - eps) at std gamma, and 1000
  random directions scaled to std gamma all cost more (Rayleigh quotient >= rho_1)."""
  x1, x2 = closed_forms.symmetric_views(0, augmentation_scale=(0.1, 0.3, 0.6, 1.0, 1.5))
  solution = closed_forms.vicreg_linear_d1(x1, x2)
  assert not solution["smooth"] and solution["rho"] < 0.5
  views = float32_views(x1, x2)
  w_star = jnp.asarray(solution["w"], jnp.float32)
  np.testing.assert_allclose(float(project_vicreg(w_star, *views)),
                             25.0 * solution["rho"] * (1.0 - 1e-4), rtol=1e-5)
  _, c = closed_forms.vicreg_view_matrices(x1, x2)
  directions = np.random.default_rng(0).normal(size=(1000, 5, 1))
  variances = np.einsum("nki,kl,nli->n", directions, c, directions)
  directions *= np.sqrt((1.0 - 1e-4) / variances)[:, None, None]
  values = project_vicreg_many(jnp.asarray(directions, jnp.float32), *views)
  assert np.all(np.asarray(values) > solution["value"] * (1 + 1e-6))


def test_vicreg_two_outputs_default_cov_coeff_collapses_and_large_one_decorrelates():
  """V3, d = 2: below the crossover nu_c the collapsed candidate is the global minimum (BFGS
  from 8 starts finds nothing lower, |corr| = 1); far above it, the decorrelated one."""
  x1, x2 = closed_forms.symmetric_views(0)
  a, c = closed_forms.vicreg_view_matrices(x1, x2)
  crossover = closed_forms.vicreg_collapse_crossover(x1, x2, 2)
  rng = np.random.default_rng(0)
  for cov_coeff, expected_corr in ((crossover / 10, 1.0), (crossover * 10, 0.0)):
    collapsed = closed_forms.vicreg_linear_collapsed(x1, x2, 2, cov_coeff=cov_coeff)["value"]
    decorrelated = closed_forms.vicreg_linear_decorrelated(x1, x2, 2)["value"]

    def objective(flat):
      value, grad = closed_forms.vicreg_linear_objective(flat.reshape(5, 2), a, c,
                                                         cov_coeff=cov_coeff)
      return value, grad.ravel()

    best = min((scipy.optimize.minimize(objective, 0.3 * rng.normal(size=10), jac=True,
                                        method="BFGS", options={"gtol": 1e-10})
                for _ in range(8)), key=lambda result: result.fun)
    np.testing.assert_allclose(best.fun, min(collapsed, decorrelated), rtol=1e-7)
    gram = best.x.reshape(5, 2).T @ c @ best.x.reshape(5, 2)
    correlation = abs(gram[0, 1]) / math.sqrt(gram[0, 0] * gram[1, 1])
    np.testing.assert_allclose(correlation, expected_corr, atol=1e-3)
  # The project's loss agrees with both candidates' values (float32, rtol 1e-5).
  for candidate, cov_coeff in ((closed_forms.vicreg_linear_collapsed(x1, x2, 2), 1.0),
                               (closed_forms.vicreg_linear_decorrelated(x1, x2, 2), 1.0)):
    w = jnp.asarray(candidate["w"], jnp.float32)
    np.testing.assert_allclose(float(project_vicreg(w, *float32_views(x1, x2), cov_coeff)),
                               candidate["value"], rtol=1e-5)


# --- BT1-BT3: Barlow Twins, linear ----------------------------------------------------------------


def linear_barlow(w, x1, x2, lambd=0.0051):
  """The project's barlow_twins_loss of a linear encoder, float32."""
  return losses.barlow_twins_loss(x1 @ w, x2 @ w, lambd=lambd)


project_barlow = jax.jit(linear_barlow, static_argnums=3)
project_barlow_grad = jax.jit(jax.grad(linear_barlow))
project_barlow_many = jax.jit(jax.vmap(linear_barlow, in_axes=(0, None, None)))


def test_barlow_linear_d1_value_and_canonical_correlation():
  """T8: loss at 100 v_1 = (1 - rho_1 c/(c + 1e-5))^2 (rtol 1e-5); rho_1 = (psi - 1)/(psi + 1)."""
  x1, x2 = closed_forms.symmetric_views(0)
  views = float32_views(x1, x2)
  solution = closed_forms.barlow_linear_d1(x1, x2, scale=100.0)
  value = float(project_barlow(jnp.asarray(solution["w"], jnp.float32), *views))
  np.testing.assert_allclose(value, solution["value"], rtol=1e-5)
  # Literal check from theory.md (T8), printed there to 7 and 6 decimals.
  np.testing.assert_allclose([solution["value"], solution["rho"]], [0.3961032, 0.370633],
                             atol=5e-7)
  signal, augmentation = (x1 + x2) / 2, (x1 - x2) / 2
  psi = closed_forms.generalized_eigh(signal.T @ signal, augmentation.T @ augmentation)[0][-1]
  np.testing.assert_allclose(solution["rho"], (psi - 1) / (psi + 1), atol=1e-10)
  # Scale-free up to eps: at scale 1e-3 the eps inside the sqrt is visible, the value is higher.
  small = closed_forms.barlow_linear_d1(x1, x2, scale=1e-3)
  np.testing.assert_allclose(float(project_barlow(jnp.asarray(small["w"], jnp.float32), *views)),
                             small["value"], rtol=1e-5)
  assert small["value"] > solution["value"] + 1e-2
  # No direction beats the top canonical one (the infimum over w).
  directions = 100.0 * np.random.default_rng(0).normal(size=(200, 5, 1))
  values = project_barlow_many(jnp.asarray(directions, jnp.float32), *views)
  assert np.all(np.asarray(values) >= solution["infimum"] * (1 - 1e-5))


def test_barlow_float64_objective_is_the_project_loss():
  x1, x2 = closed_forms.symmetric_views(2)
  w = np.random.default_rng(0).normal(size=(5, 3))
  for lambd in (0.0051, 1.0):
    np.testing.assert_allclose(
        closed_forms.barlow_linear_objective(w, x1, x2, lambd=lambd),
        float(project_barlow(jnp.asarray(w, jnp.float32), *float32_views(x1, x2), lambd)),
        rtol=1e-5)


def test_barlow_two_outputs_rank_one_beats_cca_below_the_threshold():
  """T8/BT3: CCA value sum (1 - rho_k)^2 = 0.950675, rank one 2(1-rho_1)^2 + 2 lambd rho_1^2 =
  0.793608 is lower because 0.0051 < 0.5768; with lambd above the threshold the order flips."""
  x1, x2 = closed_forms.symmetric_views(0)
  views = float32_views(x1, x2)
  _, v = closed_forms.canonical_correlations(x1, x2)
  cca_w = jnp.asarray(100 * v[:, :2], jnp.float32)
  rank_one_w = jnp.asarray(100 * v[:, [0, 0]], jnp.float32)
  candidates = closed_forms.barlow_linear_candidates(x1, x2, 2)
  cca = float(project_barlow(cca_w, *views))
  rank_one = float(project_barlow(rank_one_w, *views))
  np.testing.assert_allclose([cca, rank_one], [candidates["cca"], candidates["rank_one"]],
                             rtol=1e-5)
  np.testing.assert_allclose([candidates["cca"], candidates["rank_one"], candidates["threshold"]],
                             [0.950675, 0.793608, 0.5768], atol=5e-5)
  assert rank_one < cca
  high = 2 * candidates["threshold"]
  high_candidates = closed_forms.barlow_linear_candidates(x1, x2, 2, lambd=high)
  assert high_candidates["rank_one"] > high_candidates["cca"]
  np.testing.assert_allclose(float(project_barlow(rank_one_w, *views, high)),
                             high_candidates["rank_one"], rtol=1e-5)
  # BT2: CCA is a stationary point: the directional derivatives (gradient x scale 100) vanish.
  gradient = np.asarray(project_barlow_grad(cca_w, *views))
  assert np.abs(gradient).max() * 100 <= 1e-4
