"""Spectral quantities of a batch's similarity graph, in float64 NumPy (docs/theory.md, R1-R5).

z = concat(z1, z2) has N = 2B rows, z_hat its L2-normalised rows, a_ij = z_hat_i . z_hat_j / tau
for i != j, S_ij = exp(a_ij), S_ii = 0, D = diag(S 1), P = D^-1 S, L_rw = I - P, and
p_i = P_{i,pos(i)} with pos(i) = (i + B) mod N, as in rwl_jax.losses.contrastive. Everything is
computed from a and the log-degrees log D_i = logsumexp_{k != i} a_ik, so no exp overflows at
small tau (S itself is never formed).
"""

from __future__ import annotations

import math

import numpy as np


def similarity_logits(z: np.ndarray, temperature: float) -> np.ndarray:
  """a = z_hat z_hat^T / tau with -inf on the diagonal, [N, N] float64."""
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  z = np.asarray(z, dtype=np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  logits = z @ z.T / temperature
  np.fill_diagonal(logits, -np.inf)
  return logits


def _log_degrees(logits: np.ndarray) -> np.ndarray:
  row_max = logits.max(axis=1, keepdims=True)
  return (row_max + np.log(np.exp(logits - row_max).sum(axis=1, keepdims=True)))[:, 0]


def positive_index(num_rows: int) -> np.ndarray:
  """pos(i) = (i + B) mod N for the N = 2B rows."""
  return (np.arange(num_rows) + num_rows // 2) % num_rows


def transition_probabilities(z: np.ndarray, temperature: float) -> np.ndarray:
  """P = D^-1 S (rows sum to 1, zero diagonal), float64."""
  logits = similarity_logits(z, temperature)
  return np.exp(logits - _log_degrees(logits)[:, None])


def symmetric_transition(z: np.ndarray, temperature: float) -> np.ndarray:
  """D^-1/2 S D^-1/2 = D^1/2 P D^-1/2, entries exp(a_ij - (l_i + l_j)/2), l_i = log D_i.

  It is symmetric and similar to P.
  So P (and L_rw = I - P) has a real spectrum, the eigenvalues of Shi-Malik's generalized problem
  (D - S) v = lambda D v; P is stochastic, so they lie in [-1, 1] (and L_rw's in [0, 2]).
  """
  logits = similarity_logits(z, temperature)
  log_degrees = _log_degrees(logits)
  return np.exp(logits - 0.5 * (log_degrees[:, None] + log_degrees[None, :]))


def laplacian_eigenvalues(z: np.ndarray, temperature: float) -> np.ndarray:
  """The N eigenvalues of L_rw = I - P, ascending, as 1 - eigvalsh(D^-1/2 S D^-1/2)."""
  return np.sort(1.0 - np.linalg.eigvalsh(symmetric_transition(z, temperature)))


def band_counts(eigenvalues: np.ndarray, rwl: float, slack: float = 0.0) -> tuple[int, int]:
  """#eigenvalues of L_rw in [0, sqrt(rwl)] and in [2 - sqrt(rwl), 2] (R5).

  Since ||P - T||_2 <= ||P - T||_F = sqrt(RWL) and T is symmetric with eigenvalues +-1 (B each),
  Bauer-Fike puts every eigenvalue of P within sqrt(RWL) of +-1; if RWL < 1 the two discs are
  disjoint and, along T + t (P - T), t in [0, 1], each keeps its count: exactly B eigenvalues of
  L_rw lie in each band, i.e. spectral clustering of S recovers the B instances.
  """
  radius = math.sqrt(rwl) + slack
  eigenvalues = np.asarray(eigenvalues)
  return (int(np.count_nonzero(eigenvalues <= radius)),
          int(np.count_nonzero(eigenvalues >= 2.0 - radius)))


def positive_probabilities(z: np.ndarray, temperature: float) -> np.ndarray:
  """p_i = P_{i,pos(i)}, [N]."""
  probabilities = transition_probabilities(z, temperature)
  return probabilities[np.arange(len(probabilities)), positive_index(len(probabilities))]


def negative_masses(z: np.ndarray, temperature: float) -> np.ndarray:
  """1 - p_i = sum_{j != i, pos(i)} P_ij per row, summed over the negatives (no cancellation)."""
  probabilities = transition_probabilities(z, temperature)
  probabilities[np.arange(len(probabilities)), positive_index(len(probabilities))] = 0.0
  return probabilities.sum(axis=1)


def rwl_value(z: np.ndarray, temperature: float) -> float:
  """RWL = ||P - T||_F^2 = N - 2 sum_i p_i + ||P||_F^2 (R1), float64."""
  probabilities = transition_probabilities(z, temperature)
  rows = np.arange(len(probabilities))
  probabilities[rows, positive_index(len(probabilities))] -= 1.0
  return float(np.sum(np.square(probabilities)))


def nt_xent_value(z: np.ndarray, temperature: float) -> float:
  """NT-Xent = -(1/N) sum_i log p_i, float64."""
  logits = similarity_logits(z, temperature)
  positives = logits[np.arange(len(logits)), positive_index(len(logits))]
  return float(np.mean(_log_degrees(logits) - positives))


def ncut_instances(z: np.ndarray, temperature: float) -> float:
  """Shi-Malik normalised cut of the partition of the batch into its B instances {i, pos(i)} (R4).

  For the part {i, j = pos(i)}: cut = D_i + D_j - 2 S_ij = D_i (1 - p_i) + D_j (1 - p_j) (S is
  symmetric, S_ij = D_i p_i = D_j p_j) and vol = D_i + D_j, so

    Ncut = sum_pairs [D_i (1 - p_i) + D_j (1 - p_j)] / (D_i + D_j)
         <= sum_i (1 - p_i) <= min(sqrt(N RWL), N NT-Xent),

  each pair's term being a weighted mean of 1 - p_i and 1 - p_j; then Cauchy-Schwarz with
  RWL >= sum_i (1 - p_i)^2, and 1 - p <= -log p.
  """
  logits = similarity_logits(z, temperature)
  log_degrees = _log_degrees(logits)
  masses = negative_masses(z, temperature)
  num_pairs = len(logits) // 2
  first, second = np.arange(num_pairs), np.arange(num_pairs) + num_pairs
  # D_i / (D_i + D_j) = sigmoid(l_i - l_j): stable for any degrees.
  weight_first = 1.0 / (1.0 + np.exp(log_degrees[second] - log_degrees[first]))
  return float(np.sum(weight_first * masses[first] + (1.0 - weight_first) * masses[second]))


def batch_spectrum(z: np.ndarray, temperature: float) -> dict[str, np.ndarray | float | int]:
  """Everything R1-R5 say about one batch: spectrum, bands and the quantities they bound.

  Returns:
    {'eigenvalues' (ascending L_rw spectrum), 'rwl', 'nt_xent', 'negative_mass' (sum_i 1 - p_i),
    'ncut', 'bottom_band' and 'top_band' (band_counts at the batch's own RWL)}.
  """
  eigenvalues = laplacian_eigenvalues(z, temperature)
  rwl = rwl_value(z, temperature)
  bottom, top = band_counts(eigenvalues, rwl)
  return {
      "eigenvalues": eigenvalues,
      "rwl": rwl,
      "nt_xent": nt_xent_value(z, temperature),
      "negative_mass": float(np.sum(negative_masses(z, temperature))),
      "ncut": ncut_instances(z, temperature),
      "bottom_band": bottom,
      "top_band": top,
  }
