"""Issue 12: scale-free reductions over the whole float32 range.

`tree_cosine` used to multiply two squared norms before the square root, so
in float32 cos(x, x) came out 0 for x = 1e-11 * [1, 2] (the squares
underflow) and for x = 1e10 * [1, 2] (they overflow), and multiplicative
hypergradient descent, which reads cos(u_{t-1}, g_t), froze. Each result here
is checked against a float64 numpy reference written out in the test, on the
float32-rounded inputs, under jit and strict dtype promotion.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lr
from optax_lr import _tree

EPS32 = float(np.finfo(np.float32).eps)
SCALES = [1e-30, 1e-11, 1.0, 1e10, 1e30]
SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


def _tree_at(scale, seed):
  """A float32 tree with every entry in +-[1, 2) * scale: no subnormals."""
  rng = np.random.default_rng(seed)
  leaf = lambda shape: (
    np.float32(scale)
    * (rng.uniform(1, 2, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)
  )
  return {k: jnp.asarray(leaf(s), jnp.float32) for k, s in SHAPES.items()}


def _flat64(tree):
  return np.concatenate(
    [np.asarray(leaf, np.float64).ravel() for leaf in jax.tree_util.tree_leaves(tree)]
  )


def _cosine64(x, y):
  x, y = _flat64(x), _flat64(y)
  return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.mark.parametrize("x", [[1.0, 2.0], [3.0, -4.0]])
@pytest.mark.parametrize("scale", [1e-30, 1e-11, 1e10, 1e30])
def test_issue_examples_cosine_of_a_vector_with_itself_is_one(scale, x):
  v = jnp.asarray(np.float32(scale) * np.asarray(x, np.float32))
  with jax.numpy_dtype_promotion("strict"):
    got = jax.jit(_tree.tree_cosine)(v, v)
  assert got.dtype == jnp.float32
  assert abs(float(got) - 1.0) <= EPS32


@pytest.mark.parametrize("scale_y", SCALES)
@pytest.mark.parametrize("scale_x", SCALES)
def test_cosine_matches_float64_at_every_pair_of_scales(scale_x, scale_y):
  x = _tree_at(scale_x, seed=1)
  # y leans on x, so the cosine is far from 0 and its digits all count.
  y = jax.tree_util.tree_map(
    lambda a, b: jnp.asarray(
      np.asarray(a, np.float64) * (scale_y / scale_x) + np.asarray(b, np.float64), jnp.float32
    ),
    x,
    _tree_at(scale_y, seed=2),
  )
  with jax.numpy_dtype_promotion("strict"):
    got = jax.jit(_tree.tree_cosine)(x, y)
  want = _cosine64(x, y)
  assert got.dtype == jnp.float32
  assert abs(want) > 0.3
  # A few ulps of 1, the scale of a cosine's error (the sums' rounding).
  assert abs(float(got) - want) <= 4 * EPS32, (float(got), want)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("ratio", [1e-3, 1.0, 1e3])
def test_gram_ratios_match_float64(scale, ratio):
  x = _tree_at(scale, seed=3)
  # y = -x/2 + noise: s - r ~ 1.5 s is well conditioned.
  y = jax.tree_util.tree_map(
    lambda a, b: jnp.asarray(
      -0.5 * ratio * np.asarray(a, np.float64) + 0.1 * np.asarray(b, np.float64), jnp.float32
    ),
    x,
    _tree_at(scale * ratio, seed=4),
  )
  with jax.numpy_dtype_promotion("strict"):
    r, s, n = jax.jit(_tree.tree_gram)(x, y)
  X, Y = _flat64(x), _flat64(y)
  assert all(v.dtype == jnp.float32 for v in (r, s, n))
  assert all(np.isfinite(float(v)) for v in (r, s, n))
  np.testing.assert_allclose(float(r / (s - r)), (X @ Y) / (X @ X - X @ Y), rtol=8 * EPS32)
  np.testing.assert_allclose(float(n / s), (Y @ Y) / (X @ X), rtol=8 * EPS32)
  np.testing.assert_allclose(float(r / s), (X @ Y) / (X @ X), rtol=8 * EPS32)


@pytest.mark.parametrize("scale", SCALES)
def test_norm_matches_float64(scale):
  x = _tree_at(scale, seed=5)
  with jax.numpy_dtype_promotion("strict"):
    got = jax.jit(_tree.tree_norm)(x)
  want = np.linalg.norm(_flat64(x))
  np.testing.assert_allclose(float(got), want, rtol=4 * EPS32)


# ----------------------------------------------- multiplicative hypergradient

CURVATURE = {"w": np.array([1.0, 2.0, 3.0, 0.5]), "v": np.array([[1.5, 0.25, 4.0]])}
START = {"w": np.array([1.0, -1.0, 0.5, 2.0]), "v": np.array([[-0.5, 1.0, 0.25]])}


def _hd_reference(params, eta0, beta, steps):
  """Baydin's multiplicative rule on f(w) = sum(a w² / 2), in float64.

  eta_t = eta_{t-1} (1 + beta cos(u_{t-1}, g_t)), cos = 0 while u = 0; the
  update is -eta_t g_t and u_t = g_t (plain SGD). Returns the rates after
  each step and the final params (flattened as ``jax.tree_util`` orders the
  leaves: sorted keys).
  """
  w = _flat64(params)
  a = np.concatenate([CURVATURE[k].ravel() for k in sorted(CURVATURE)])
  eta, u_prev, rates = eta0, np.zeros_like(w), []
  for _ in range(steps):
    g = a * w
    norms = np.linalg.norm(u_prev) * np.linalg.norm(g)
    cos = 0.0 if norms == 0 else (u_prev @ g) / norms
    eta = max(eta * (1 + beta * cos), 0.0)
    w = w - eta * g
    u_prev = g
    rates.append(eta)
  return np.array(rates), w


@pytest.mark.parametrize(
  "scale",
  [
    1e-30,
    1e-11,
    1.0,
    1e10,
    1e30,
  ],
)
def test_multiplicative_hd_rate_follows_float64_reference(scale):
  eta0, beta, steps = 0.1, 0.01, 3
  tx = optax_lr.hypergradient_descent(eta0, beta, multiplicative=True, safety_net=False)
  params = {k: jnp.asarray(np.float32(scale) * v.astype(np.float32)) for k, v in START.items()}
  curvature = {k: jnp.asarray(v, jnp.float32) for k, v in CURVATURE.items()}

  @jax.jit
  def step(params, state):
    # The gradient of sum(a w² / 2), at the params' own scale.
    grads = jax.tree_util.tree_map(lambda a, w: a * w, curvature, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  want, want_params = _hd_reference(params, eta0, beta, steps)
  state = tx.init(params)
  rates = []
  with jax.numpy_dtype_promotion("strict"):
    for _ in range(steps):
      params, state = step(params, state)
      rates.append(float(state.learning_rate))
  assert state.learning_rate.dtype == jnp.float32
  # The first step has no previous direction: the rate stays at eta0.
  assert rates[0] == float(np.float32(eta0))
  # Later steps move it by beta * cos ~ 1e-2: far more than the tolerance.
  assert abs(want[-1] - eta0) > 1e-3
  assert rates[-1] != rates[0]
  np.testing.assert_allclose(rates, want, rtol=2e-6)
  np.testing.assert_allclose(_flat64(params) / scale, want_params / scale, rtol=1e-5)
