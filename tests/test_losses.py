"""RWL and NT-Xent against an independent NumPy implementation of the paper's formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwl_jax import losses

TEMPERATURES = (0.05, 0.1, 0.4, 1.0)


def numpy_transition(z1, z2, temperature):
  """Explicit S, D and P = D^-1 S, in float64, from the formula."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z)
  s = np.exp(z @ z.T / temperature)
  np.fill_diagonal(s, 0.0)
  d = np.diag(s.sum(axis=1))
  return np.linalg.inv(d) @ s, n


def numpy_target(b):
  t = np.zeros((2 * b, 2 * b))
  for i in range(b):
    t[i, i + b] = t[i + b, i] = 1.0
  return t


def numpy_rwl(z1, z2, temperature):
  p, n = numpy_transition(z1, z2, temperature)
  t = numpy_target(len(z1))
  return sum((p[i, j] - t[i, j]) ** 2 for i in range(n) for j in range(n) if i != j)


def numpy_nt_xent(z1, z2, temperature):
  p, n = numpy_transition(z1, z2, temperature)
  b = len(z1)
  return -np.mean([np.log(p[i, (i + b) % n]) for i in range(n)])


def random_pair(seed, b=8, d=16):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, d)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.normal(size=(b, d))).astype(np.float32)
  return z1, z2


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_transition_matrix_and_laplacian_match_numpy(temperature):
  z1, z2 = random_pair(0)
  z = np.concatenate([z1, z2])
  p = np.asarray(losses.transition_matrix(jnp.asarray(z), temperature))
  expected, n = numpy_transition(z1, z2, temperature)
  np.testing.assert_allclose(p, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.diag(p), 0.0)
  laplacian = np.asarray(losses.random_walk_laplacian(jnp.asarray(z), temperature))
  np.testing.assert_allclose(laplacian, np.eye(n) - expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(laplacian.sum(axis=1), 0.0, atol=1e-5)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("seed", (1, 2))
def test_losses_match_numpy(temperature, seed):
  z1, z2 = random_pair(seed)
  np.testing.assert_allclose(losses.rwl_loss(z1, z2, temperature), numpy_rwl(z1, z2, temperature),
                             rtol=1e-4)
  np.testing.assert_allclose(losses.nt_xent_loss(z1, z2, temperature),
                             numpy_nt_xent(z1, z2, temperature), rtol=1e-4)


def test_rwl_is_a_sum_not_a_mean():
  # Random embeddings at a high temperature: P is near uniform, so each row contributes about 1
  # (its positive entry misses by ~1) and the sum grows linearly with the batch.
  small = losses.rwl_loss(*map(jnp.asarray, random_pair(3, b=8)), 10.0)
  large = losses.rwl_loss(*map(jnp.asarray, random_pair(3, b=32)), 10.0)
  assert 3.0 < float(large) / float(small) < 5.0


@pytest.mark.parametrize("loss", (losses.rwl_loss, losses.nt_xent_loss))
def test_invariant_to_swapping_views_and_permuting_pairs(loss):
  z1, z2 = random_pair(4)
  value = loss(z1, z2, 0.4)
  np.testing.assert_allclose(loss(z2, z1, 0.4), value, rtol=1e-5)
  order = np.random.default_rng(0).permutation(len(z1))
  np.testing.assert_allclose(loss(z1[order], z2[order], 0.4), value, rtol=1e-5)


def test_invariant_to_embedding_scale():
  z1, z2 = random_pair(5)
  np.testing.assert_allclose(losses.rwl_loss(3 * z1, 0.5 * z2, 0.4), losses.rwl_loss(z1, z2, 0.4),
                             rtol=1e-5)


@pytest.mark.parametrize("loss", (losses.rwl_loss, losses.nt_xent_loss))
@pytest.mark.parametrize("temperature", (0.05, 0.01))
def test_collapse_and_small_temperature_are_finite(loss, temperature):
  b = 8
  collapsed = jnp.ones((b, 16))
  value, grads = jax.value_and_grad(lambda a, c: loss(a, c, temperature), argnums=(0, 1))(
      collapsed, collapsed)
  chex.assert_tree_all_finite((value, grads))
  # Collapse: every off-diagonal P_ij = 1/(2B-1), so the values follow from the formula.
  p = 1.0 / (2 * b - 1)
  expected = {losses.rwl_loss: 2 * b * ((1 - p) ** 2 + (2 * b - 2) * p**2),
              losses.nt_xent_loss: np.log(2 * b - 1)}[loss]
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  # Near-parallel embeddings at a tiny temperature overflow an explicit exp(); the softmax does not.
  z1, z2 = random_pair(6)
  value, grads = jax.value_and_grad(lambda a: loss(a, z2, temperature))(jnp.asarray(z1) * 1e3)
  chex.assert_tree_all_finite((value, grads))


def test_bfloat16_inputs_accumulate_in_float32():
  z1, z2 = random_pair(7, b=16, d=32)
  exact = losses.rwl_loss(z1, z2, 0.1)
  low = losses.rwl_loss(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16), 0.1)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, exact, rtol=2e-2)


def test_gradient_matches_finite_differences():
  z1, z2 = (jnp.asarray(x, jnp.float64) if jax.config.x64_enabled else jnp.asarray(x)
            for x in random_pair(8, b=4, d=6))
  loss = lambda a: losses.rwl_loss(a, z2, 0.5)
  grad = jax.grad(loss)(z1)
  direction = jnp.asarray(np.random.default_rng(1).normal(size=z1.shape), z1.dtype)
  eps = 1e-2
  numeric = (loss(z1 + eps * direction) - loss(z1 - eps * direction)) / (2 * eps)
  np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=2e-2, atol=1e-4)


def test_shape_checks_and_temperature_validation():
  z1, z2 = random_pair(9)
  with pytest.raises(AssertionError):
    losses.rwl_loss(z1, z2[:-1], 0.4)
  with pytest.raises(AssertionError):
    losses.nt_xent_loss(z1[None], z2[None], 0.4)
  with pytest.raises(ValueError, match="temperature"):
    losses.rwl_loss(z1, z2, 0.0)
