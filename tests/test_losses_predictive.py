"""BYOL and SimSiam losses against an independent NumPy implementation of the papers' formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwl_jax import losses

SHAPES = ((4, 8), (16, 32), (33, 7))


def numpy_cosines(p, z):
  """cos(p_i, z_i) per row, in float64, from the definition <p, z> / (||p|| ||z||)."""
  p, z = np.asarray(p, np.float64), np.asarray(z, np.float64)
  return np.array([a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(p, z)])


def numpy_normalized_mse(p, z):
  return np.mean(2.0 - 2.0 * numpy_cosines(p, z))


def numpy_byol(p1, p2, z1, z2):
  return numpy_normalized_mse(p1, z2) + numpy_normalized_mse(p2, z1)


def numpy_simsiam(p1, p2, z1, z2):
  return 0.5 * -np.mean(numpy_cosines(p1, z2)) + 0.5 * -np.mean(numpy_cosines(p2, z1))


def random_views(seed, b=8, d=16):
  """p1, p2, z1, z2 with each p correlated with the other view's z, as after some training."""
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(b, d))
  z2 = z1 + 0.5 * rng.normal(size=(b, d))
  p1 = z2 + 0.7 * rng.normal(size=(b, d))
  p2 = z1 + 0.7 * rng.normal(size=(b, d))
  return tuple(x.astype(np.float32) for x in (p1, p2, z1, z2))


@pytest.mark.parametrize("b, d", SHAPES)
@pytest.mark.parametrize("seed", (0, 1))
def test_losses_match_numpy(b, d, seed):
  p1, p2, z1, z2 = random_views(seed, b, d)
  np.testing.assert_allclose(losses.normalized_mse(p1, z2), numpy_normalized_mse(p1, z2),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.negative_cosine(p1, z2), -np.mean(numpy_cosines(p1, z2)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.byol_loss(p1, p2, z1, z2), numpy_byol(p1, p2, z1, z2),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.simsiam_loss(p1, p2, z1, z2), numpy_simsiam(p1, p2, z1, z2),
                             rtol=1e-5, atol=1e-6)


def test_byol_sums_the_two_directions():
  p1, p2, z1, z2 = random_views(2)
  np.testing.assert_allclose(losses.byol_loss(p1, p1, z1, z1), 2 * losses.normalized_mse(p1, z1),
                             rtol=1e-6)
  # Near-orthogonal random vectors: each direction is ~2, so the sum is ~4 (a mean would be ~2).
  rng = np.random.default_rng(3)
  far = [rng.normal(size=(64, 128)).astype(np.float32) for _ in range(4)]
  assert 3.5 < float(losses.byol_loss(*far)) < 4.5


@pytest.mark.parametrize("loss", (losses.byol_loss, losses.simsiam_loss))
def test_invariant_to_swapping_views_and_permuting_rows(loss):
  p1, p2, z1, z2 = random_views(4)
  value = loss(p1, p2, z1, z2)
  np.testing.assert_allclose(loss(p2, p1, z2, z1), value, rtol=1e-6)
  order = np.random.default_rng(0).permutation(len(p1))
  np.testing.assert_allclose(loss(p1[order], p2[order], z1[order], z2[order]), value, rtol=1e-5)


@pytest.mark.parametrize("loss", (losses.byol_loss, losses.simsiam_loss))
def test_invariant_to_positive_row_scale(loss):
  p1, p2, z1, z2 = random_views(5)
  scale = np.random.default_rng(1).uniform(0.1, 10.0, size=(len(p1), 1)).astype(np.float32)
  np.testing.assert_allclose(loss(scale * p1, p2, z1, 3 * z2), loss(p1, p2, z1, z2), rtol=1e-5)


@pytest.mark.parametrize("loss, expected", ((losses.byol_loss, 0.0), (losses.simsiam_loss, -1.0)))
def test_collapse_values_and_finite_gradients(loss, expected):
  # All rows equal and p == z: every cosine is 1, so BYOL is 2 * (2 - 2) = 0 and SimSiam is -1.
  row = np.random.default_rng(6).normal(size=(1, 16)).astype(np.float32)
  collapsed = jnp.asarray(np.repeat(row, 8, axis=0))
  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*(collapsed,) * 4)
  chex.assert_tree_all_finite((value, grads))
  np.testing.assert_allclose(value, expected, atol=1e-6)
  # All-zero embeddings (a dead projector) stay finite too.
  zeros = jnp.zeros((8, 16))
  chex.assert_tree_all_finite(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(*(zeros,) * 4))


@pytest.mark.parametrize("loss", (losses.byol_loss, losses.simsiam_loss))
def test_targets_get_exactly_zero_gradient(loss):
  views = tuple(map(jnp.asarray, random_views(7)))
  grad_p1, grad_p2, grad_z1, grad_z2 = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*views)
  np.testing.assert_array_equal(grad_z1, 0.0)
  np.testing.assert_array_equal(grad_z2, 0.0)
  for grad in (grad_p1, grad_p2):
    assert np.all(np.linalg.norm(grad, axis=1) > 1e-4)


def test_negative_cosine_stops_gradient_but_normalized_mse_leaves_it_to_the_caller():
  p1, _, _, z2 = map(jnp.asarray, random_views(8))
  np.testing.assert_array_equal(jax.grad(losses.negative_cosine, argnums=1)(p1, z2), 0.0)
  assert float(jnp.linalg.norm(jax.grad(losses.normalized_mse, argnums=1)(p1, z2))) > 1e-4


def test_gradient_matches_finite_differences():
  p1, p2, z1, z2 = map(jnp.asarray, random_views(9, b=4, d=6))
  for loss in (losses.byol_loss, losses.simsiam_loss):
    f = jax.jit(lambda p, loss=loss: loss(p, p2, z1, z2))
    grad = jax.grad(f)(p1)
    direction = jnp.asarray(np.random.default_rng(1).normal(size=p1.shape), p1.dtype)
    eps = 1e-2
    numeric = (f(p1 + eps * direction) - f(p1 - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), numeric, rtol=2e-2, atol=1e-4)


def test_bfloat16_inputs_accumulate_in_float32():
  views = random_views(10, b=16, d=32)
  for loss in (losses.byol_loss, losses.simsiam_loss):
    exact = loss(*views)
    low = loss(*(jnp.asarray(x, jnp.bfloat16) for x in views))
    assert low.dtype == jnp.float32 and low.shape == ()
    np.testing.assert_allclose(low, exact, rtol=2e-2, atol=1e-2)


def test_shape_checks():
  p1, p2, z1, z2 = random_views(11)
  with pytest.raises(AssertionError):
    losses.byol_loss(p1, p2, z1, z2[:-1])
  with pytest.raises(AssertionError):
    losses.simsiam_loss(p1, p2, z1[:, :-1], z2)
  with pytest.raises(AssertionError):
    losses.normalized_mse(p1[None], z2[None])
  with pytest.raises(AssertionError):
    losses.negative_cosine(p1, z2[0])


def test_normalized_std_monitors_collapse():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(4096, 64)).astype(np.float32)
  # Spread-out rows: each coordinate of z/||z|| has std close to 1/sqrt(d).
  assert abs(float(losses.normalized_std(z)) - 1.0) < 0.02
  expected = np.sqrt(64) * np.mean(np.std(z / np.linalg.norm(z, axis=1, keepdims=True), axis=0))
  np.testing.assert_allclose(float(losses.normalized_std(z)), expected, rtol=1e-5)
  collapsed = np.tile(z[:1], (128, 1)) * rng.uniform(0.5, 2.0, size=(128, 1)).astype(np.float32)
  assert float(losses.normalized_std(collapsed)) < 1e-3  # one direction, any lengths
