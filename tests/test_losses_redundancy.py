"""VICReg and Barlow Twins against an independent NumPy implementation of the official formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwl_jax import losses

SHAPES = ((8, 4), (32, 16), (5, 64))  # The last has fewer rows than dims (rank-deficient C).


def numpy_off_diagonal_square_sum(c):
  return sum(c[k, l] ** 2 for k in range(len(c)) for l in range(len(c)) if k != l)


def numpy_vicreg_terms(z1, z2, gamma=1.0, epsilon=1e-4):
  """The three terms in float64: np.var(ddof=1) and np.cov (unbiased) over the rows."""
  z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
  d = z1.shape[1]
  v = lambda z: np.mean(np.maximum(gamma - np.sqrt(np.var(z, axis=0, ddof=1) + epsilon), 0.0))
  c = lambda z: numpy_off_diagonal_square_sum(np.cov(z, rowvar=False)) / d
  return {"invariance": np.mean((z1 - z2) ** 2),
          "variance": (v(z1) + v(z2)) / 2,
          "covariance": c(z1) + c(z2)}


def numpy_barlow_twins(z1, z2, lambd=0.0051, epsilon=1e-5):
  """Per-dimension BatchNorm (biased variance, epsilon inside the sqrt), then C = z1n^T z2n / n."""
  z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
  bn = lambda z: (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0, ddof=0) + epsilon)
  n, d = z1.shape
  c = np.array([[np.dot(bn(z1)[:, k], bn(z2)[:, l]) / n for l in range(d)] for k in range(d)])
  return sum((1 - c[k, k]) ** 2 for k in range(d)) + lambd * numpy_off_diagonal_square_sum(c)


def random_pair(seed, n=16, d=8, scale=1.0):
  """Two correlated views with dimensions of unequal scale and some cross-dimension correlation."""
  rng = np.random.default_rng(seed)
  mix = np.eye(d) + 0.3 * rng.normal(size=(d, d))
  z1 = scale * rng.normal(size=(n, d)) @ mix + rng.normal(size=d)
  z2 = z1 + 0.4 * scale * rng.normal(size=(n, d))
  return z1.astype(np.float32), z2.astype(np.float32)


@pytest.mark.parametrize("n, d", SHAPES)
@pytest.mark.parametrize("scale", (0.3, 2.0))  # Below and above gamma: the hinge active or not.
def test_vicreg_matches_numpy(n, d, scale):
  z1, z2 = random_pair(n * d, n, d, scale)
  terms = losses.vicreg_terms(z1, z2)
  expected = numpy_vicreg_terms(z1, z2)
  assert set(terms) == {"invariance", "variance", "covariance"}
  for name in expected:
    np.testing.assert_allclose(terms[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(
      losses.vicreg_loss(z1, z2),
      25 * expected["invariance"] + 25 * expected["variance"] + expected["covariance"], rtol=1e-4)
  coefficients = dict(sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5, gamma=1.5, epsilon=1e-3)
  expected = numpy_vicreg_terms(z1, z2, gamma=1.5, epsilon=1e-3)
  np.testing.assert_allclose(
      losses.vicreg_loss(z1, z2, **coefficients),
      2 * expected["invariance"] + 3 * expected["variance"] + 0.5 * expected["covariance"],
      rtol=1e-4)


@pytest.mark.parametrize("n, d", SHAPES)
@pytest.mark.parametrize("lambd", (0.0051, 0.5))
def test_barlow_twins_matches_numpy(n, d, lambd):
  z1, z2 = random_pair(n + d, n, d, scale=3.0)
  np.testing.assert_allclose(losses.barlow_twins_loss(z1, z2, lambd=lambd),
                             numpy_barlow_twins(z1, z2, lambd=lambd), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(losses.barlow_twins_loss(z1, z2, lambd=lambd, epsilon=0.5),
                             numpy_barlow_twins(z1, z2, lambd=lambd, epsilon=0.5), rtol=1e-4)


def test_vicreg_variance_averages_and_covariance_sums_the_branches():
  z1, _ = random_pair(1, scale=0.3)
  single = losses.vicreg_terms(z1, z1)
  np.testing.assert_allclose(single["variance"], numpy_vicreg_terms(z1, z1)["variance"], rtol=1e-5)
  # Rows +-100 e_k: every std is ~36 > gamma and C is diagonal, so v = c = 0 for this branch.
  orthogonal = np.kron(np.array([[1.0], [-1.0]]), 100 * np.eye(8)).astype(np.float32)  # [16, 8]
  mixed = losses.vicreg_terms(z1, orthogonal)
  np.testing.assert_allclose(mixed["variance"], single["variance"] / 2, rtol=1e-5)
  np.testing.assert_allclose(mixed["covariance"], single["covariance"] / 2, rtol=1e-4)


@pytest.mark.parametrize("gamma, epsilon", ((1.0, 1e-4), (2.0, 0.25)))
def test_vicreg_collapse_value_and_finite_gradients(gamma, epsilon):
  # All rows equal in both views: Var = 0 and C = 0, so the variance term is at its maximum
  # relu(gamma - sqrt(epsilon)) (0.99 by default) and the other two terms are 0.
  row = np.random.default_rng(2).normal(size=(1, 8)).astype(np.float32)
  collapsed = jnp.asarray(np.repeat(row, 16, axis=0))
  terms = losses.vicreg_terms(collapsed, collapsed, gamma=gamma, epsilon=epsilon)
  np.testing.assert_allclose(terms["variance"], gamma - np.sqrt(epsilon), rtol=1e-6)
  np.testing.assert_allclose(terms["invariance"], 0.0, atol=1e-12)
  np.testing.assert_allclose(terms["covariance"], 0.0, atol=1e-12)
  loss = lambda a, b: losses.vicreg_loss(a, b, gamma=gamma, epsilon=epsilon)
  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(collapsed, collapsed)
  chex.assert_tree_all_finite((value, grads))
  np.testing.assert_allclose(value, 25 * (gamma - np.sqrt(epsilon)), rtol=1e-6)


def test_barlow_twins_collapse_value_and_finite_gradients():
  # Constant columns standardise to 0, so C = 0 and the loss is sum_k (1 - 0)^2 = d.
  row = np.random.default_rng(3).normal(size=(1, 12)).astype(np.float32)
  collapsed = jnp.asarray(np.repeat(row, 16, axis=0))
  value_and_grad = jax.jit(jax.value_and_grad(losses.barlow_twins_loss, argnums=(0, 1)))
  value, grads = value_and_grad(collapsed, collapsed)
  chex.assert_tree_all_finite((value, grads))
  np.testing.assert_allclose(value, 12.0, rtol=1e-6)


def test_barlow_twins_optimum_is_near_zero():
  # Identical views with decorrelated unit-variance columns: C ~ I, so the loss is ~0.
  z = np.kron(np.array([[1.0], [-1.0]]), np.eye(8)).astype(np.float32)  # [16, 8]
  assert float(losses.barlow_twins_loss(z, z)) < 1e-3


@pytest.mark.parametrize("loss", (losses.vicreg_loss, losses.barlow_twins_loss))
def test_invariant_to_swapping_views_and_permuting_rows(loss):
  z1, z2 = random_pair(4)
  value = loss(z1, z2)
  np.testing.assert_allclose(loss(z2, z1), value, rtol=1e-5)
  order = np.random.default_rng(0).permutation(len(z1))
  np.testing.assert_allclose(loss(z1[order], z2[order]), value, rtol=1e-5)


def test_statistics_are_over_the_whole_batch():
  # Shards of the batch have other statistics: the loss of the whole is not the mean of the halves.
  z1, z2 = random_pair(5, n=32)
  for loss in (losses.vicreg_loss, losses.barlow_twins_loss):
    halves = (loss(z1[:16], z2[:16]) + loss(z1[16:], z2[16:])) / 2
    assert abs(float(loss(z1, z2)) - float(halves)) > 1e-2
  # A shift of every row changes no statistic.
  shift = np.random.default_rng(6).normal(size=8).astype(np.float32)
  np.testing.assert_allclose(losses.barlow_twins_loss(z1 + shift, z2 + shift),
                             losses.barlow_twins_loss(z1, z2), rtol=1e-4)


def test_gradient_matches_finite_differences():
  z1, z2 = map(jnp.asarray, random_pair(7, n=6, d=4, scale=0.5))
  direction = jnp.asarray(np.random.default_rng(1).normal(size=z1.shape), z1.dtype)
  for loss in (losses.vicreg_loss, losses.barlow_twins_loss):
    f = jax.jit(lambda a, loss=loss: loss(a, z2))
    eps = 1e-2
    numeric = (f(z1 + eps * direction) - f(z1 - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(jax.grad(f)(z1), direction), numeric, rtol=2e-2,
                               atol=1e-3)


def test_bfloat16_inputs_accumulate_in_float32():
  z1, z2 = random_pair(8, n=32, d=16)
  for loss in (losses.vicreg_loss, losses.barlow_twins_loss):
    exact = loss(z1, z2)
    low = loss(jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16))
    assert low.dtype == jnp.float32 and low.shape == ()
    np.testing.assert_allclose(low, exact, rtol=3e-2)


def test_shape_checks_and_hyper_parameter_validation():
  z1, z2 = random_pair(9)
  with pytest.raises(AssertionError):
    losses.vicreg_loss(z1, z2[:-1])
  with pytest.raises(AssertionError):
    losses.barlow_twins_loss(z1[None], z2[None])
  with pytest.raises(ValueError, match="batch size"):
    losses.vicreg_loss(z1[:1], z2[:1])
  with pytest.raises(ValueError, match="batch size"):
    losses.barlow_twins_loss(z1[:1], z2[:1])
  for name in ("sim_coeff", "std_coeff", "cov_coeff", "gamma"):
    with pytest.raises(ValueError, match=name):
      losses.vicreg_loss(z1, z2, **{name: -1.0})
  with pytest.raises(ValueError, match="epsilon"):
    losses.vicreg_terms(z1, z2, epsilon=0.0)
  with pytest.raises(ValueError, match="lambd"):
    losses.barlow_twins_loss(z1, z2, lambd=-0.1)
  with pytest.raises(ValueError, match="epsilon"):
    losses.barlow_twins_loss(z1, z2, epsilon=0.0)
