"""Closed-form optima and values of the project's losses (docs/theory.md, notation of losses).

Batch of B images, two views, N = 2B rows, T = pair_target(B), q = 1/(N - 1). All functions are
NumPy (float64): they are the yardsticks the float32 project losses are tested against.
"""

from __future__ import annotations

import math

import numpy as np


def contrastive_optimum(batch_size: int, temperature: float) -> dict[str, float]:
  """Minimum of nt_xent_loss and rwl_loss over unit embeddings of dimension d >= B - 1.

  The minimiser (verified numerically from random starts, not proved) is the regular simplex:
  both views of an image coincide and the B image directions have pairwise cosine -1/(B - 1)
  (simplex_embedding). Each row then has one positive at similarity 1 and 2(B - 1) negatives at
  -1/(B - 1), so with

    eps = 2 (B - 1) exp(-B / ((B - 1) tau)),

  p* = P_{i,pos(i)} = 1 / (1 + eps), each negative gets (1 - p*) / (2(B - 1)), and

    NTX* = -log p* = log(1 + eps),
    RWL* = N [(1 - p*)^2 + 2(B - 1) ((1 - p*) / (2(B - 1)))^2] = N (N - 1) / (N - 2) (1 - p*)^2.

  Args:
    batch_size: B >= 2 images (N = 2B rows).
    temperature: tau > 0.

  Returns:
    {'p': p*, 'nt_xent': NTX*, 'rwl': RWL*} as Python floats.
  """
  if batch_size < 2:
    raise ValueError(f"batch_size must be >= 2, got {batch_size}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  num_rows = 2 * batch_size
  eps = 2.0 * (batch_size - 1) * math.exp(-batch_size / ((batch_size - 1) * temperature))
  negative_mass = eps / (1.0 + eps)  # 1 - p*, computed without cancellation at small eps.
  return {
      "p": 1.0 / (1.0 + eps),
      "nt_xent": math.log1p(eps),
      "rwl": num_rows * (num_rows - 1) / (num_rows - 2) * negative_mass**2,
  }


def temperature_for_positive_probability(batch_size: int, positive_probability: float) -> float:
  """The temperature at which the optimum's positive probability p* equals the given p.

  Inverting p* = 1 / (1 + 2 (B - 1) exp(-B / ((B - 1) tau))):

    tau = B / ((B - 1) log(2 (B - 1) p / (1 - p))),

  defined for q = 1/(2B - 1) < p < 1 (p* falls to q only as tau -> infinity). Lower temperatures
  let the optimal batch put more mass on the positive (P closer to T).
  """
  if not 1.0 / (2 * batch_size - 1) < positive_probability < 1.0:
    raise ValueError(f"need 1/(2B - 1) < p < 1, got p={positive_probability}")
  odds = positive_probability / (1.0 - positive_probability)
  return batch_size / ((batch_size - 1) * math.log(2.0 * (batch_size - 1) * odds))


def temperature_for_rwl_optimum(batch_size: int, rwl: float) -> float:
  """The temperature below which RWL* = N (N - 1)/(N - 2) (1 - p*)^2 is smaller than `rwl`.

  E.g. rwl = 1, the regime where R5's spectral-clustering guarantee can hold at the optimum.
  """
  num_rows = 2 * batch_size
  negative_mass = math.sqrt(rwl * (num_rows - 2) / (num_rows * (num_rows - 1)))
  return temperature_for_positive_probability(batch_size, 1.0 - negative_mass)


def collapse_values(batch_size: int) -> dict[str, float]:
  """nt_xent_loss and rwl_loss when all rows coincide (also their tau -> infinity limits).

  Then P = q (J - I), p_i = q = 1/(N - 1), and

    NTX = log(N - 1),   RWL = N [(1 - q)^2 + (N - 2) q^2] = N (N - 2) / (N - 1).

  These are the largest values a training run can be expected to show: RWL < 2N always, and the
  loss can only move between contrastive_optimum(B, tau) and these.

  Args:
    batch_size: B >= 2 images.

  Returns:
    {'p': q, 'nt_xent': log(N - 1), 'rwl': N (N - 2) / (N - 1)}.
  """
  if batch_size < 2:
    raise ValueError(f"batch_size must be >= 2, got {batch_size}")
  num_rows = 2 * batch_size
  return {
      "p": 1.0 / (num_rows - 1),
      "nt_xent": math.log(num_rows - 1),
      "rwl": num_rows * (num_rows - 2) / (num_rows - 1),
  }


def pair_graph(batch_size: int) -> np.ndarray:
  """T of shape [2B, 2B] in float64: T_ij = 1 exactly when j is i's other view (as pair_target)."""
  eye = np.eye(batch_size)
  zeros = np.zeros_like(eye)
  return np.block([[zeros, eye], [eye, zeros]])


def simplex_embedding(batch_size: int, dim: int) -> np.ndarray:
  """B unit vectors in R^dim with pairwise inner products exactly -1/(B - 1), dim >= B - 1.

  The rows of the centring matrix H = I - J/B span a (B - 1)-dimensional space and have Gram
  matrix H; writing them in an orthonormal basis of that space (the Helmert basis, so the result is
  deterministic), normalising (||row||^2 = (B - 1)/B) and zero-padding to dim gives the regular
  simplex. Used with z1 = z2 = simplex_embedding(B, d) it is the contrastive optimum (S2).

  Args:
    batch_size: B >= 2.
    dim: output dimension, >= B - 1.

  Returns:
    [B, dim] float64 array.
  """
  if batch_size < 2 or dim < batch_size - 1:
    raise ValueError(f"need B >= 2 and dim >= B - 1, got B={batch_size}, dim={dim}")
  # Helmert basis of 1-perp: column k (k = 1..B-1) is (1, ..., 1, -k, 0, ...)/sqrt(k(k+1)).
  basis = np.zeros((batch_size, batch_size - 1))
  for k in range(1, batch_size):
    basis[:k, k - 1] = 1.0
    basis[k, k - 1] = -float(k)
    basis[:, k - 1] /= math.sqrt(k * (k + 1))
  # The rows of `basis` are the coordinates of the rows of H = basis basis^T in that basis.
  rows = basis / np.linalg.norm(basis, axis=1, keepdims=True)
  return np.pad(rows, ((0, 0), (0, dim - (batch_size - 1))))


def simplex_gram(batch_size: int) -> np.ndarray:
  """Gram matrix of the optimal 2B unit rows: (B (I + T) - J) / (B - 1) = (N / (B - 1)) Pi.

  Pi = (I + T)/2 - J/N is the orthogonal projector onto the pair-constant vectors orthogonal to 1
  (null space of L(G) = I - T minus the constants): the optimal Gram is the unit-row Laplacian
  eigenmap of the augmentation graph, rank B - 1. Entries: 1 on the diagonal and at (i, pos(i)),
  -1/(B - 1) elsewhere.
  """
  num_rows = 2 * batch_size
  identity_plus_pairs = np.eye(num_rows) + pair_graph(batch_size)
  return (batch_size * identity_plus_pairs - np.ones((num_rows, num_rows))) / (batch_size - 1)


def generalized_eigh(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Solves a v = rho b v for symmetric a and positive-definite b (NumPy only, via Cholesky).

  With b = L L^T and M = L^-1 a L^-T = U diag(rho) U^T, the eigenvectors are V = L^-T U, so that
  V^T b V = I and V^T a V = diag(rho).

  Returns:
    (rho, V): eigenvalues in ascending order and the b-orthonormal eigenvectors as columns.
  """
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  lower = np.linalg.cholesky(b)
  lower_inverse = np.linalg.inv(lower)
  reduced = lower_inverse @ a @ lower_inverse.T
  rho, u = np.linalg.eigh(0.5 * (reduced + reduced.T))
  return rho, lower_inverse.T @ u


def graph_laplacian(graph: np.ndarray) -> np.ndarray:
  """L_G = diag(G 1) - G for a symmetric non-negative relation matrix G."""
  graph = np.asarray(graph, dtype=np.float64)
  return np.diag(graph.sum(axis=1)) - graph


def spectral_vicreg_matrices(x: np.ndarray, graph: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(A, C) of the linear VICReg/Laplacian-eigenmaps problem (V1, V2) for rows x and graph G.

  A = X^T L_G X / N (the invariance, i.e. Laplacian-eigenmaps, quadratic form) and
  C = X^T H X / (N - 1) (the covariance of Z = X W is W^T C W), H the centring matrix.
  """
  x = np.asarray(x, dtype=np.float64)
  centred = x - x.mean(axis=0)
  return (x.T @ graph_laplacian(graph) @ x / len(x),
          centred.T @ centred / (len(x) - 1))


def spectral_vicreg_objective(w: np.ndarray, a: np.ndarray, c: np.ndarray, beta: float,
                              gamma: float) -> float:
  """L(W) = beta ||W^T C W - I_d||_F^2 + gamma tr(W^T A W) (V2: VICReg's soft-constraint form)."""
  gram = w.T @ c @ w
  return float(beta * np.sum(np.square(gram - np.eye(len(gram)))) + gamma * np.trace(w.T @ a @ w))


def spectral_vicreg(x: np.ndarray, graph: np.ndarray, beta: float, gamma: float,
                    dim: int) -> dict[str, np.ndarray | float | int]:
  """Global minimiser of the soft-constraint linear VICReg (V2) on data x with relation graph G.

  With (rho_k, v_k) the generalized eigenpairs A v = rho C v (ascending, v^T C v = 1) of
  spectral_vicreg_matrices, L(W) = beta ||W^T C W - I||_F^2 + gamma tr(W^T A W) is minimised by

    W* = [v_1 ... v_d] diag(sqrt(t_k)) R,   t_k = max(0, 1 - gamma rho_k / (2 beta)),  R in O(d),
    L* = sum_{k <= d} [beta (t_k - 1)^2 + gamma rho_k t_k],   Cov(X W*) = R^T diag(t) R.

  Proof: with M = C^1/2 W, the squared singular values t of M fix the first term; von Neumann's
  trace inequality gives min tr(M^T C^-1/2 A C^-1/2 M) = sum_k t_k (descending) rho_k
  (ascending), and each t_k solves the scalar problem beta (t - 1)^2 + gamma rho_k t, whose
  solutions are already ordered. The invariance weight gamma is a spectral shrinkage: gamma -> 0
  whitens, and the direction v_k is removed once gamma >= 2 beta / rho_k.

  Args:
    x: [N, D] data rows.
    graph: [N, N] symmetric non-negative relation matrix G.
    beta: weight of the (squared) covariance constraint, > 0.
    gamma: weight of the invariance (Laplacian eigenmaps) term, >= 0.
    dim: output dimension d <= D.

  Returns:
    {'w': [D, d] minimiser (R = I), 't': shrinkage factors, 'rho': the d smallest generalized
    eigenvalues, 'value': L*, 'rank': #{k : t_k > 0}}.
  """
  a, c = spectral_vicreg_matrices(x, graph)
  rho, v = generalized_eigh(a, c)
  rho, v = rho[:dim], v[:, :dim]
  shrinkage = np.maximum(0.0, 1.0 - gamma * rho / (2.0 * beta))
  return {
      "w": v * np.sqrt(shrinkage),
      "t": shrinkage,
      "rho": rho,
      "value": float(np.sum(beta * np.square(shrinkage - 1.0) + gamma * rho * shrinkage)),
      "rank": int(np.count_nonzero(shrinkage > 0)),
  }


def symmetric_views(seed: int, num_rows: int = 64, dim: int = 5,
                    augmentation_scale: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 3.5),
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Two views X1 = Xc + E, X2 = Xc - E with identical covariances (the setting of V3 and BT1).

  Xc (signal) and E (augmentation) are centred and E is projected off span(1, Xc), so
  X1^T X1 = X2^T X2 = Xc^T Xc + E^T E and X1^T X2 = Xc^T Xc - E^T E exactly.
  """
  rng = np.random.default_rng(seed)
  signal = rng.normal(size=(num_rows, dim)) @ rng.normal(size=(dim, dim))
  signal -= signal.mean(axis=0)
  augmentation = rng.normal(size=(num_rows, dim)) * np.asarray(augmentation_scale)
  augmentation -= augmentation.mean(axis=0)
  basis, _ = np.linalg.qr(np.concatenate([np.ones((num_rows, 1)), signal], axis=1))
  augmentation -= basis @ (basis.T @ augmentation)
  return signal + augmentation, signal - augmentation


def _unbiased_covariance(x: np.ndarray) -> np.ndarray:
  centred = x - x.mean(axis=0)
  return centred.T @ centred / (len(x) - 1)


def vicreg_view_matrices(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(A, C) for the project's vicreg_loss on a linear encoder z_a = X_a W (V3).

  A = (X1 - X2)^T (X1 - X2) / B (so invariance = tr(W^T A W) / d) and C = cov(X1) = cov(X2)
  (ddof=1, as vicreg_terms). The closed forms need the two covariances to be equal
  (symmetric_views); a ValueError says when they are not.
  """
  x1 = np.asarray(x1, dtype=np.float64)
  x2 = np.asarray(x2, dtype=np.float64)
  c1, c2 = _unbiased_covariance(x1), _unbiased_covariance(x2)
  if not np.allclose(c1, c2, rtol=1e-8, atol=1e-10 * np.abs(c1).max()):
    raise ValueError("the closed forms need cov(X1) == cov(X2) (see symmetric_views)")
  difference = x1 - x2
  return difference.T @ difference / len(x1), 0.5 * (c1 + c2)


def vicreg_linear_objective(w: np.ndarray, a: np.ndarray, c: np.ndarray, *,
                            sim_coeff: float = 25.0, std_coeff: float = 25.0,
                            cov_coeff: float = 1.0, gamma: float = 1.0,
                            epsilon: float = 1e-4) -> tuple[float, np.ndarray]:
  """vicreg_loss(X1 W, X2 W) and its gradient in float64, from (A, C) of vicreg_view_matrices.

  With both views of covariance C, d = W.shape[1], M = W^T C W, t_k = sqrt(M_kk + epsilon):

    L(W) = (lambda/d) tr(W^T A W) + (mu/d) sum_k relu(gamma - t_k) + (2 nu / d) sum_{k != l} M_kl^2,
    dL/dW = (2 lambda/d) A W - (mu/d) C W diag([t_k < gamma] / t_k) + (8 nu / d) C W offdiag(M).

  The variance term averages two equal views and the covariance term sums them, as vicreg_terms.
  """
  w = np.asarray(w, dtype=np.float64)
  dim = w.shape[1]
  gram = w.T @ c @ w
  std = np.sqrt(np.diagonal(gram) + epsilon)
  off_diagonal = gram - np.diag(np.diagonal(gram))
  value = (sim_coeff * np.trace(w.T @ a @ w) + std_coeff * np.sum(np.maximum(gamma - std, 0.0))
           + 2.0 * cov_coeff * np.sum(np.square(off_diagonal))) / dim
  hinge_active = (std < gamma).astype(np.float64)
  gradient = (2.0 * sim_coeff * a @ w - std_coeff * (c @ w) * (hinge_active / std)
              + 8.0 * cov_coeff * c @ w @ off_diagonal) / dim
  return float(value), gradient


def vicreg_linear_d1(x1: np.ndarray, x2: np.ndarray, *, sim_coeff: float = 25.0,
                     std_coeff: float = 25.0, gamma: float = 1.0,
                     epsilon: float = 1e-4) -> dict[str, np.ndarray | float | bool]:
  """Exact optimum of vicreg_loss(X1 w, X2 w) over w in R^D (one output, no covariance term; V3).

  With (rho_1, v_1) the smallest generalized eigenpair of (A, C) (vicreg_view_matrices) and
  t = sqrt(w^T C w + epsilon) the output std, min over directions gives
  L(t) = lambda rho_1 (t^2 - epsilon) + mu relu(gamma - t), minimised at

    t* = clip(mu / (2 lambda rho_1), sqrt(epsilon), gamma),   w* = v_1 sqrt(t*^2 - epsilon),
    L* = lambda rho_1 (t*^2 - epsilon) + mu (gamma - t*).

  If rho_1 > mu / (2 lambda gamma) (the 'smooth' regime) t* < gamma and grad L(w*) = 0; otherwise
  t* = gamma sits on the hinge kink (zero variance loss, L* = lambda rho_1 (gamma^2 - epsilon)),
  where gradient methods stall. A larger invariance weight lambda shrinks the output but never to
  zero (unless mu / (2 lambda rho_1) < sqrt(epsilon)).

  Returns:
    {'w': [D, 1], 'rho': rho_1, 't': t*, 'value': L*, 'smooth': t* < gamma}.
  """
  a, c = vicreg_view_matrices(x1, x2)
  rho, v = generalized_eigh(a, c)
  smallest = float(rho[0])
  unclipped = std_coeff / (2.0 * sim_coeff * smallest) if smallest > 0 else math.inf
  std = min(gamma, max(math.sqrt(epsilon), unclipped))
  return {
      "w": v[:, :1] * math.sqrt(std**2 - epsilon),
      "rho": smallest,
      "t": std,
      "value": sim_coeff * smallest * (std**2 - epsilon) + std_coeff * max(gamma - std, 0.0),
      "smooth": std < gamma,
  }


def vicreg_linear_decorrelated(x1: np.ndarray, x2: np.ndarray, dim: int, *,
                               sim_coeff: float = 25.0, std_coeff: float = 25.0,
                               gamma: float = 1.0, epsilon: float = 1e-4) -> dict:
  """The decorrelated candidate for d >= 2 outputs (V3): W = [v_1 .. v_d] diag(sqrt(t_k^2 - eps)).

  Each column is an independent d = 1 problem on its own eigen-direction (zero covariance term):
  t_k = clip(mu / (2 lambda rho_k), sqrt(eps), gamma) and
  L_dec = (1/d) sum_k [lambda rho_k (t_k^2 - eps) + mu relu(gamma - t_k)].
  """
  a, c = vicreg_view_matrices(x1, x2)
  rho, v = generalized_eigh(a, c)
  rho, v = rho[:dim], v[:, :dim]
  unclipped = np.where(rho > 0, std_coeff / (2.0 * sim_coeff * np.maximum(rho, 1e-300)), np.inf)
  std = np.clip(unclipped, math.sqrt(epsilon), gamma)
  value = np.mean(sim_coeff * rho * (std**2 - epsilon) + std_coeff * np.maximum(gamma - std, 0.0))
  return {"w": v * np.sqrt(std**2 - epsilon), "rho": rho, "t": std, "value": float(value)}


def vicreg_linear_collapsed(x1: np.ndarray, x2: np.ndarray, dim: int, *, sim_coeff: float = 25.0,
                            std_coeff: float = 25.0, cov_coeff: float = 1.0, gamma: float = 1.0,
                            epsilon: float = 1e-4) -> dict:
  """The fully collapsed candidate for d >= 2 (V3): every column equals s v_1.

  Then invariance = rho_1 s^2, variance = relu(gamma - sqrt(s^2 + eps)), covariance =
  2 (d - 1) s^4, so L_coll(nu) = min_s [lambda rho_1 s^2 + mu relu(gamma - sqrt(s^2 + eps))
  + 2 nu (d - 1) s^4]. In u = s^2 the bracket is convex, so the minimiser is found by bisection on
  its derivative lambda rho_1 + 4 nu (d - 1) u - mu / (2 sqrt(u + eps)) over [0, gamma^2 - eps].

  Returns:
    {'w': [D, d], 's': s*, 'value': L_coll}.
  """
  a, c = vicreg_view_matrices(x1, x2)
  rho, v = generalized_eigh(a, c)
  smallest = float(rho[0])
  quartic = 2.0 * cov_coeff * (dim - 1)

  def slope(u):
    return sim_coeff * smallest + 2.0 * quartic * u - std_coeff / (2.0 * math.sqrt(u + epsilon))

  low, high = 0.0, max(gamma**2 - epsilon, 0.0)
  if slope(high) <= 0:  # The minimiser sits on the hinge kink u = gamma^2 - eps.
    low = high
  elif slope(low) < 0:
    for _ in range(200):
      middle = 0.5 * (low + high)
      low, high = (middle, high) if slope(middle) < 0 else (low, middle)
  u = low
  value = (sim_coeff * smallest * u + std_coeff * max(gamma - math.sqrt(u + epsilon), 0.0)
           + quartic * u**2)
  return {"w": np.repeat(v[:, :1] * math.sqrt(u), dim, axis=1), "s": math.sqrt(u),
          "value": float(value)}


def vicreg_collapse_crossover(x1: np.ndarray, x2: np.ndarray, dim: int, *,
                              sim_coeff: float = 25.0, std_coeff: float = 25.0,
                              gamma: float = 1.0, epsilon: float = 1e-4) -> float:
  """nu_c with L_coll(nu_c) = L_dec: below it the collapsed candidate is the lower one (V3).

  L_coll is non-decreasing in nu, from L_coll(0) (<= L_dec, d = 1 value) up to mu relu(gamma -
  sqrt(eps)) as nu -> infinity, so nu_c is found by bisection on log nu. Near nu_c partially
  correlated solutions can be lower than both candidates; the candidates are exact away from it.
  """
  target = vicreg_linear_decorrelated(x1, x2, dim, sim_coeff=sim_coeff, std_coeff=std_coeff,
                                      gamma=gamma, epsilon=epsilon)["value"]

  def excess(cov_coeff):
    return vicreg_linear_collapsed(x1, x2, dim, sim_coeff=sim_coeff, std_coeff=std_coeff,
                                   cov_coeff=cov_coeff, gamma=gamma,
                                   epsilon=epsilon)["value"] - target

  low, high = 1e-8, 1.0
  while excess(high) < 0:
    high *= 2.0
    if high > 1e12:
      return math.inf  # Collapse stays lower: the decorrelated candidate never wins.
  for _ in range(100):
    middle = math.sqrt(low * high)
    low, high = (middle, high) if excess(middle) < 0 else (low, middle)
  return math.sqrt(low * high)


def _biased_covariances(x1: np.ndarray, x2: np.ndarray):
  x1 = np.asarray(x1, dtype=np.float64)
  x2 = np.asarray(x2, dtype=np.float64)
  c1, c2 = x1 - x1.mean(axis=0), x2 - x2.mean(axis=0)
  return c1.T @ c1 / len(x1), c2.T @ c2 / len(x1), c1.T @ c2 / len(x1)


def canonical_correlations(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Tied-weight canonical correlations of two views with equal covariances (Barlow Twins, BT).

  rho, V = generalized eigenpairs of (sym(C12), C), DESCENDING, with the biased covariances
  C = X1^T X1 / B = X2^T X2 / B and C12 = X1^T X2 / B (centred), V^T C V = I. For
  X1,2 = Xc +- E: rho = (psi - 1)/(psi + 1), psi the generalized eigenvalues of (Xc^T Xc, E^T E).
  """
  c1, c2, c12 = _biased_covariances(x1, x2)
  if not np.allclose(c1, c2, rtol=1e-8, atol=1e-10 * np.abs(c1).max()):
    raise ValueError("the closed forms need cov(X1) == cov(X2) (see symmetric_views)")
  rho, v = generalized_eigh(0.5 * (c12 + c12.T), 0.5 * (c1 + c2))
  return rho[::-1], v[:, ::-1]


def barlow_linear_d1(x1: np.ndarray, x2: np.ndarray, scale: float = 1.0,
                     epsilon: float = 1e-5) -> dict[str, np.ndarray | float]:
  """barlow_twins_loss(X1 w, X2 w) along the top canonical direction, and its infimum (BT1).

  For one output, C_11 = w^T C12 w / (w^T C w + eps) <= rho_1 c / (c + eps) with c = w^T C w,
  equality at w = s v_1, so at w = scale * v_1 the loss is (1 - rho_1 c/(c + eps))^2 with
  c = scale^2, and inf_w = (1 - rho_1)^2, approached as scale -> infinity (scale-free up to eps).

  Returns:
    {'w': scale * v_1 ([D, 1]), 'rho': rho_1, 'value': the loss at w, 'infimum': (1 - rho_1)^2}.
  """
  rho, v = canonical_correlations(x1, x2)
  variance = scale**2  # v_1^T C v_1 = 1.
  top = float(rho[0])
  return {"w": scale * v[:, :1], "rho": top,
          "value": (1.0 - top * variance / (variance + epsilon))**2,
          "infimum": (1.0 - top)**2}


def barlow_linear_candidates(x1: np.ndarray, x2: np.ndarray, dim: int,
                             lambd: float = 0.0051) -> dict[str, float]:
  """Values (scale -> infinity) of the two Barlow Twins candidates for d outputs (BT2, BT3).

  CCA, W = [v_1 .. v_d] (a stationary point, cross-correlation diag(rho)):
  sum_k (1 - rho_k)^2. Rank one, every column v_1: d (1 - rho_1)^2 + lambd d (d - 1) rho_1^2.
  For d = 2 rank one is lower iff lambd < [(1 - rho_2)^2 - (1 - rho_1)^2] / (2 rho_1^2)
  ('threshold'); with the official lambd = 0.0051 it usually is: dimensional collapse.
  """
  rho, _ = canonical_correlations(x1, x2)
  return {
      "cca": float(np.sum(np.square(1.0 - rho[:dim]))),
      "rank_one": dim * (1.0 - rho[0])**2 + lambd * dim * (dim - 1) * rho[0]**2,
      "threshold": float(((1.0 - rho[1])**2 - (1.0 - rho[0])**2) / (2.0 * rho[0]**2)),
  }


def barlow_linear_objective(w: np.ndarray, x1: np.ndarray, x2: np.ndarray, *,
                            lambd: float = 0.0051, epsilon: float = 1e-5) -> float:
  """barlow_twins_loss(X1 W, X2 W) in float64 (for optimisers; same formula as the project's).

  R_kl = w_k^T C12 w_l / sqrt((w_k^T C1 w_k + eps)(w_l^T C2 w_l + eps)) with biased covariances,
  loss = sum_k (1 - R_kk)^2 + lambd sum_{k != l} R_kl^2.
  """
  c1, c2, c12 = _biased_covariances(x1, x2)
  w = np.asarray(w, dtype=np.float64)
  scale1 = 1.0 / np.sqrt(np.diagonal(w.T @ c1 @ w) + epsilon)
  scale2 = 1.0 / np.sqrt(np.diagonal(w.T @ c2 @ w) + epsilon)
  correlation = scale1[:, None] * (w.T @ c12 @ w) * scale2[None, :]
  diagonal = np.diagonal(correlation)
  off_diagonal = correlation - np.diag(diagonal)
  return float(np.sum(np.square(1.0 - diagonal)) + lambd * np.sum(np.square(off_diagonal)))
