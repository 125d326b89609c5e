"""Guided stop-gradient: the closest cross pair of views are the sources, the others targets."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwl_jax import losses

PAIRS = tuple(itertools.product((0, 1), repeat=2))  # (view of A, view of B), the official order.


def numpy_assignment(z_a1, z_a2, z_b1, z_b2):
  """Row by row in float64: argmin of the four Euclidean distances, first minimum on ties."""
  views_a = np.asarray([z_a1, z_a2], np.float64)
  views_b = np.asarray([z_b1, z_b2], np.float64)
  rows = []
  for r in range(views_a.shape[1]):
    distances = [np.linalg.norm(views_a[i, r] - views_b[j, r]) for i, j in PAIRS]
    rows.append(PAIRS[int(np.argmin(distances))])
  return np.array(rows)


def numpy_official_gsg_simsiam_loss(p_a, p_b, z_a, z_b):
  """The official per-row table (l1121, l1122, l1221, l1222), the closest pair's entry, mean."""
  cos = lambda x, y: x @ y / (np.linalg.norm(x) * np.linalg.norm(y))
  total = 0.0
  for r, (i, j) in enumerate(numpy_assignment(z_a[0], z_a[1], z_b[0], z_b[1])):
    total += -0.5 * (cos(p_a[i, r], z_a[1 - i, r]) + cos(p_b[j, r], z_b[1 - j, r]))
  return total / p_a.shape[1]


def gsg_simsiam_loss(p_a, p_b, z_a, z_b):
  """A GSG-SimSiam loss as a train step would write it, from the two helpers (module docstring)."""
  assignment = losses.gsg_assignment(z_a[0], z_a[1], z_b[0], z_b[1])
  p_src_a, _, p_src_b, _ = losses.gsg_select(p_a, p_b, assignment)
  _, z_tgt_a, _, z_tgt_b = losses.gsg_select(z_a, z_b, assignment)
  return (0.5 * losses.negative_cosine(p_src_a, z_tgt_a)
          + 0.5 * losses.negative_cosine(p_src_b, z_tgt_b))


def random_stacks(seed, b=8, d=16):
  """Stacked [2, B, d] predictions and projections of two views of A and of B."""
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(2, b, d)).astype(np.float32) for _ in range(4))


def planted(b=12, d=8):
  """Rows cycle through the four pairs: in row r, PAIRS[r % 4] is 0.1 apart and the rest >= 10."""
  rng = np.random.default_rng(0)
  views_a = np.zeros((2, b, d), np.float32)
  views_b = np.zeros((2, b, d), np.float32)
  expected = []
  for r in range(b):
    i, j = PAIRS[r % 4]
    offset = rng.normal(size=d)  # A common shift of the row changes no distance.
    views_a[0, r] = offset + 10 * np.eye(d)[0]
    views_a[1, r] = offset + 10 * np.eye(d)[1]
    views_b[j, r] = views_a[i, r] + 0.1 * np.eye(d)[2]
    views_b[1 - j, r] = offset - 10 * np.eye(d)[3]
    expected.append((i, j))
  return views_a, views_b, np.array(expected)


def test_planted_closest_pair_is_found_in_every_row():
  views_a, views_b, expected = planted()
  assignment = losses.gsg_assignment(views_a[0], views_a[1], views_b[0], views_b[1])
  assert assignment.dtype == jnp.int32 and assignment.shape == (12, 2)
  np.testing.assert_array_equal(assignment, expected)


@pytest.mark.parametrize("b, d", ((1, 3), (8, 16), (33, 5)))
def test_assignment_matches_numpy(b, d):
  _, _, z_a, z_b = random_stacks(b * d, b, d)
  np.testing.assert_array_equal(losses.gsg_assignment(z_a[0], z_a[1], z_b[0], z_b[1]),
                                numpy_assignment(z_a[0], z_a[1], z_b[0], z_b[1]))


def test_distances_are_euclidean_not_cosine():
  # b_2 points the same way as a_1 but is far; b_1 is closer yet at an angle: Euclidean picks b_1.
  z_a1 = np.array([[1.0, 0.0]], np.float32)
  z_a2 = np.array([[-5.0, -5.0]], np.float32)
  z_b1 = np.array([[1.0, 0.5]], np.float32)
  z_b2 = np.array([[20.0, 0.0]], np.float32)
  np.testing.assert_array_equal(losses.gsg_assignment(z_a1, z_a2, z_b1, z_b2), [[0, 0]])


def test_ties_go_to_the_first_pair_in_the_official_order():
  z = np.array([[1.0, 2.0]], np.float32)
  far = np.array([[50.0, -50.0]], np.float32)
  cases = [
      # All four distances equal (both views identical in A and in B): (a_1, b_1).
      ((z, z, z + 1, z + 1), (0, 0)),
      # a_1 is far; a_2 is equidistant from b_1 and b_2: (a_2, b_1).
      ((far, z, z + np.array([[1.0, 0.0]]), z - np.array([[1.0, 0.0]])), (1, 0)),
      # b_1 is far; b_2 is equidistant from a_1 and a_2: (a_1, b_2).
      ((z + np.array([[0.0, 1.0]]), z - np.array([[0.0, 1.0]]), far, z), (0, 1)),
  ]
  for views, expected in cases:
    views = [np.asarray(v, np.float32) for v in views]
    np.testing.assert_array_equal(losses.gsg_assignment(*views), [expected])


def test_select_returns_the_assigned_rows():
  p_a, p_b, _, _ = random_stacks(1, b=8)
  assignment = np.array([PAIRS[r % 4] for r in range(8)], np.int32)
  source_a, target_a, source_b, target_b = losses.gsg_select(p_a, p_b, assignment)
  rows = np.arange(8)
  np.testing.assert_array_equal(source_a, p_a[assignment[:, 0], rows])
  np.testing.assert_array_equal(target_a, p_a[1 - assignment[:, 0], rows])
  np.testing.assert_array_equal(source_b, p_b[assignment[:, 1], rows])
  np.testing.assert_array_equal(target_b, p_b[1 - assignment[:, 1], rows])
  # Written out for the first rows: (0, 0) then (0, 1) then (1, 0).
  np.testing.assert_array_equal(source_a[2], p_a[1, 2])
  np.testing.assert_array_equal(target_a[2], p_a[0, 2])
  np.testing.assert_array_equal(source_b[1], p_b[1, 1])
  np.testing.assert_array_equal(target_b[1], p_b[0, 1])
  low = [jnp.asarray(x, jnp.bfloat16) for x in (p_a, p_b)]
  bf16 = losses.gsg_select(*low, assignment)
  assert all(x.dtype == jnp.bfloat16 and x.shape == (8, 16) for x in bf16)


def test_composed_loss_equals_the_official_table():
  p_a, p_b, z_a, z_b = random_stacks(2)
  np.testing.assert_allclose(gsg_simsiam_loss(p_a, p_b, z_a, z_b),
                             numpy_official_gsg_simsiam_loss(p_a, p_b, z_a, z_b), rtol=1e-5)


def test_jit_and_gradients_reach_only_the_sources():
  p_a, p_b, z_a, z_b = map(jnp.asarray, random_stacks(3))
  assign = jax.jit(losses.gsg_assignment)
  assignment = assign(z_a[0], z_a[1], z_b[0], z_b[1])
  np.testing.assert_array_equal(assignment,
                                losses.gsg_assignment(z_a[0], z_a[1], z_b[0], z_b[1]))
  for eager, jitted in zip(losses.gsg_select(p_a, p_b, assignment),
                           jax.jit(losses.gsg_select)(p_a, p_b, assignment)):
    np.testing.assert_array_equal(jitted, eager)
  value, grads = jax.jit(jax.value_and_grad(gsg_simsiam_loss, argnums=(0, 1, 2, 3)))(
      p_a, p_b, z_a, z_b)
  np.testing.assert_allclose(value, gsg_simsiam_loss(p_a, p_b, z_a, z_b), rtol=1e-6)
  grad_p_a, grad_p_b, grad_z_a, grad_z_b = map(np.asarray, grads)
  np.testing.assert_array_equal(grad_z_a, 0.0)  # Targets are stop-gradient; the assignment is
  np.testing.assert_array_equal(grad_z_b, 0.0)  # an integer.
  rows = np.arange(p_a.shape[1])
  assignment = np.asarray(assignment)
  for grad, column in ((grad_p_a, 0), (grad_p_b, 1)):
    source, other = assignment[:, column], 1 - assignment[:, column]
    assert np.all(np.linalg.norm(grad[source, rows], axis=-1) > 1e-4)
    np.testing.assert_array_equal(grad[other, rows], 0.0)  # The targets' predictions are unused.


def test_shape_checks():
  _, _, z_a, z_b = random_stacks(4)
  with pytest.raises(AssertionError):
    losses.gsg_assignment(z_a[0], z_a[1], z_b[0], z_b[1][:-1])
  with pytest.raises(AssertionError):
    losses.gsg_assignment(z_a[0][None], z_a[1][None], z_b[0][None], z_b[1][None])
  assignment = losses.gsg_assignment(z_a[0], z_a[1], z_b[0], z_b[1])
  with pytest.raises(AssertionError):
    losses.gsg_select(z_a, z_b[:, :-1], assignment)
  with pytest.raises(AssertionError):
    losses.gsg_select(z_a[0], z_b[0], assignment)
  with pytest.raises(AssertionError):
    losses.gsg_select(z_a, z_b, assignment[:-1])
