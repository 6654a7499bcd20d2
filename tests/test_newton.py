"""Tests of `optax_lr.newton_lr` (Newton-based trainable learning rate).

Numbers come from hand computation or from a float64 numpy reference written
here with plain loops (it shares no code with the implementation).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

import optax_lr
from optax_lr import newton as newton_module
from optax_lr._registry import standard_promotion


def _paper_rule(*args, **kwargs):
  """``newton_lr`` without its safety net: the rule and its own guards, as
  the design page (docs/design.md) states them (the net, which rolls back
  where these guards drop a window, has its tests in test_safety.py)."""
  return optax_lr.newton_lr(*args, safety_net=False, **kwargs)


def _run_grads(tx, params, grads_seq):
  """Feeds a fixed sequence of gradient trees; returns the rate after each call."""

  @jax.jit
  def run(params, grads_seq):
    def body(state, grads):
      _, state = tx.update(grads, state, params)
      return state, optax_lr.current_lr(state)

    return jax.lax.scan(body, tx.init(params), grads_seq)

  return run(params, grads_seq)


def _pass_through():
  """u = g through the general (non-SGD) path: not recognised as the identity."""

  def update(updates, state, params=None):
    return jax.tree_util.tree_map(lambda g: g * 1.0, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update)


def _preconditioned(scale):
  """u = scale * g elementwise, a fixed diagonal preconditioner."""

  def update(updates, state, params=None):
    return jax.tree_util.tree_map(lambda g: g * scale, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update)


# ---------------------------------------------------------------- validation


# Bad arguments: tests/test_bad_input.py.


def test_valid_edge_arguments_are_accepted():
  optax_lr.newton_lr(np.float32(0.1), update_every=np.int64(1), max_factor=1.0)
  optax_lr.newton_lr(1.0, steps_per_epoch=3, fraction=2.0, gamma=3.0)


@pytest.mark.parametrize(
  "steps_per_epoch, fraction, window",
  [
    (9, 1 / 3, 3),
    (10, 1 / 3, 3),
    (600, 1 / 3, 200),
    (10, 0.25, 3),  # 2.5 -> 3
    (10, 0.2, 2),
    (2, 1 / 3, 1),
    (1, 0.01, 1),
    (4, 1.0, 4),
    (3, 2.0, 6),
  ],
)
def test_window_length_from_fraction_of_an_epoch(steps_per_epoch, fraction, window):
  # The window ends where `window_step` returns to 0: after `window` calls.
  tx = optax_lr.newton_lr(0.1, steps_per_epoch=steps_per_epoch, fraction=fraction)
  params = jnp.zeros(2)
  state = tx.init(params)
  update = jax.jit(tx.update)
  steps = []
  for _ in range(2 * window):
    _, state = update(jnp.ones(2), state, params)
    steps.append(int(state.window_step))
  expected = [(t + 1) % window for t in range(2 * window)]
  assert steps == expected


# ---------------------------------------------------------------- hand-computed


def test_hand_computed_windows_with_nan_window_and_recovery():
  # K = 2, gamma = 0.2, scalar param, gradients given directly (SGD direction).
  # W1 sums to 2 (stored); W2 sums to 1: r = 2, s = 4, d = 2, factor 1.2.
  # W3 holds a NaN: rate kept, U_prev reset to 0. W4 sums to 2: d = 0, kept
  # (only stored). W5 sums to 1 against 2: factor 1.2 again.
  grads = jnp.array([1, 1, 0.5, 0.5, np.nan, 1, 1, 1, 0.5, 0.5], jnp.float32)
  tx = _paper_rule(0.5, update_every=2, gamma=0.2)
  state, rates = _run_grads(tx, jnp.zeros([]), grads)
  expected = 0.5 * np.array([1, 1, 1, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.44])
  np.testing.assert_allclose(np.asarray(rates), expected, rtol=1e-6)
  np.testing.assert_allclose(float(state.u_prev), 1.0)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_window_keeps_rate_and_resets(bad):
  grads = jnp.array([1, 1, 0.5, 0.5, bad, 0, 1, 1, 0.5, 0.5], jnp.float32)
  tx = _paper_rule(0.5, update_every=2, gamma=0.2)
  state, rates = _run_grads(tx, jnp.zeros([]), grads)
  expected = 0.5 * np.array([1, 1, 1, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.44])
  np.testing.assert_allclose(np.asarray(rates), expected, rtol=1e-6)


def test_per_leaf_nan_only_touches_its_leaf():
  # Leaf 'a' sees the NaN window; leaf 'b' keeps adapting (factor 1.2 each
  # window from W2 on: its window sums halve, r/d = 1).
  a = jnp.array([1, 1, 0.5, 0.5, np.nan, 1, 1, 1, 0.5, 0.5], jnp.float32)
  b = jnp.array([8, 8, 4, 4, 2, 2, 1, 1, 0.5, 0.5], jnp.float32)
  tx = _paper_rule(0.5, update_every=2, gamma=0.2, per_leaf=True)
  params = {"a": jnp.zeros([]), "b": jnp.zeros([])}
  _, rates = _run_grads(tx, params, {"a": a, "b": b})
  np.testing.assert_allclose(
    np.asarray(rates["a"]), 0.5 * np.array([1, 1, 1, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.44]), rtol=1e-6
  )
  np.testing.assert_allclose(
    np.asarray(rates["b"]),
    0.5 * np.array([1, 1, 1, 1.2, 1.2, 1.44, 1.44, 1.728, 1.728, 2.0736]),
    rtol=1e-6,
  )


def test_tiny_curvature_is_capped_at_max_factor():
  # U1 = 1, U2 = 1 - 2^-24: d = 2^-24 ~ 6e-8, r / d ~ 1.7e7 -> factor 100.
  grads = jnp.array([1.0, np.nextafter(np.float32(1), np.float32(0))], jnp.float32)
  tx = optax_lr.newton_lr(1e-3, update_every=1, gamma=0.2, max_factor=100.0)
  _, rates = _run_grads(tx, jnp.zeros([]), grads)
  np.testing.assert_allclose(np.asarray(rates), [1e-3, 1e-1], rtol=1e-6)


def test_non_positive_curvature_keeps_the_rate():
  # U2 = 2 U1: r = 2 s, d = -s < 0. U3 = U2: d = 0.
  grads = jnp.array([1.0, 2.0, 2.0], jnp.float32)
  tx = optax_lr.newton_lr(0.3, update_every=1)
  _, rates = _run_grads(tx, jnp.zeros([]), grads)
  np.testing.assert_allclose(np.asarray(rates), [0.3, 0.3, 0.3])


def test_negative_factor_is_floored_at_inverse_max_factor():
  # gamma = 3, U2 = -U1: r = -1, d = 2, factor = 1 - 1.5 = -0.5 -> 1 / 100.
  grads = jnp.array([1.0, -1.0], jnp.float32)
  tx = optax_lr.newton_lr(0.3, update_every=1, gamma=3.0, max_factor=100.0)
  _, rates = _run_grads(tx, jnp.zeros([]), grads)
  np.testing.assert_allclose(np.asarray(rates), [0.3, 0.003], rtol=1e-6)


def test_denormal_windows_give_a_finite_positive_rate():
  # s = 1e-40 and d = 5e-41 are denormal in f32: whether the backend flushes
  # them (factor 1) or not (factor 1 + 0.2 * 1), the rate stays sane.
  grads = jnp.array([1e-20, 5e-21], jnp.float32)
  tx = optax_lr.newton_lr(0.3, update_every=1, gamma=0.2)
  _, rates = _run_grads(tx, jnp.zeros([]), grads)
  assert float(rates[-1]) in (np.float32(0.3), np.float32(0.3) * np.float32(1.2))


def test_overflowing_window_norm_is_dropped():
  # |U|^2 = 1e60 overflows f32: that window is dropped like a NaN window.
  grads = jnp.array([1e30, 1e30, 1.0, 0.5], jnp.float32)
  tx = optax_lr.newton_lr(0.3, update_every=1, gamma=0.2)
  _, rates = _run_grads(tx, jnp.zeros([]), grads)
  np.testing.assert_allclose(np.asarray(rates), [0.3, 0.3, 0.3, 0.36], rtol=1e-6)


def test_rate_stays_within_the_finite_normal_range():
  dtype_info = np.finfo(np.float32)
  tiny_step = jnp.array([1.0, np.nextafter(np.float32(1), np.float32(0))] * 3, jnp.float32)
  tx = _paper_rule(1e37, update_every=1, gamma=0.2)
  _, rates = _run_grads(tx, jnp.zeros([]), tiny_step)
  assert float(rates[-1]) == dtype_info.max
  flip = jnp.array([1.0, -1.0] * 20, jnp.float32)
  tx = _paper_rule(1e-30, update_every=1, gamma=3.0)
  _, rates = _run_grads(tx, jnp.zeros([]), flip)
  assert float(rates[-1]) == dtype_info.tiny


def test_rule_never_gives_a_bad_rate_on_extreme_inputs():
  # Every combination of special values for r = <U_prev, U_new>, s = |U_prev|^2
  # and n = |U_new|^2, including combinations no real window produces.
  specials = np.array(
    [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-38, 1.0, -1.0, 3e38, -3e38], np.float32
  )
  r, s, n = (jnp.asarray(x) for x in zip(*itertools.product(specials, repeat=3)))
  for lr in (1e-30, 0.1, 3e38):
    for gamma in (0.2, 1.0, 5.0):
      rate = newton_module._newton_rate(jnp.float32(lr), r, s, n, gamma, 100.0)
      rate = np.asarray(rate)
      assert rate.dtype == np.float32
      assert np.all(np.isfinite(rate)) and np.all(rate > 0)
      assert np.all(rate.astype(np.float64) <= float(np.float32(lr)) * 100.0 * (1 + 1e-6))


# ------------------------------------------------ gradient sums (non-SGD directions)


def test_gradient_sums_hand_computed_with_a_preconditioned_direction():
  # u = (1, 10) * g, K = 1, eta_0 = 0.5, gamma = 0.2.
  # W1: g = (1, 1), U = (1, 10): only recorded, <U1, G1> = 11.
  # W2: g = (0.5, -0.1): r = <U1, G2> = 0.5 - 1 = -0.5, d = 11 + 0.5 = 11.5,
  #     factor 1 - 0.2 * 0.5 / 11.5. (The original rule on direction sums,
  #     docs/design.md: U2 = (0.5, -1), r = -9.5, d = 110.5,
  #     factor 1 - 0.2 * 9.5 / 110.5.)
  # W3: g = (0.25, 0.25): <U2, G2> = 0.25 + 0.1 = 0.35, r = <U2, G3> = 0.125 -
  #     0.25 = -0.125, d = 0.475, factor 1 - 0.2 * 0.125 / 0.475.
  grads = jnp.array([[1.0, 1.0], [0.5, -0.1], [0.25, 0.25]], jnp.float32)
  tx = optax_lr.newton_lr(
    0.5, update_every=1, gamma=0.2, direction=_preconditioned(jnp.array([1.0, 10.0], jnp.float32))
  )
  state, rates = _run_grads(tx, jnp.zeros(2), grads)
  f2 = 1 - 0.2 * 0.5 / 11.5
  f3 = 1 - 0.2 * 0.125 / 0.475
  np.testing.assert_allclose(np.asarray(rates), [0.5, 0.5 * f2, 0.5 * f2 * f3], rtol=1e-6)
  # <U3, G3> = (0.25, 2.5) . (0.25, 0.25), kept for the next window end.
  np.testing.assert_allclose(float(state.prev_dot), 0.25 * 0.25 + 2.5 * 0.25, rtol=1e-6)
  assert not np.isclose(f2, 1 - 0.2 * 9.5 / 110.5, rtol=1e-3)  # the rules differ


@pytest.mark.parametrize("per_leaf", [False, True])
def test_general_rule_reduces_to_sgd_when_the_direction_is_the_gradient(per_leaf):
  # A direction that returns g (but is not `optax.identity`) takes the general
  # path, with a gradient buffer; U = G there, so every rate, NaN window
  # included, is the SGD rule's, bit for bit.
  grads = jnp.array([1, 1, 0.5, 0.5, np.nan, 1, 1, 1, 0.5, 0.5], jnp.float32)
  params = {"a": jnp.zeros([]), "b": jnp.zeros(2)}
  grads = {"a": grads, "b": jnp.stack([grads[::-1], -2 * grads], axis=1)}
  sgd = optax_lr.newton_lr(0.5, update_every=2, per_leaf=per_leaf)
  general = optax_lr.newton_lr(0.5, update_every=2, per_leaf=per_leaf, direction=_pass_through())
  state_sgd, rates_sgd = _run_grads(sgd, params, grads)
  state_gen, rates_gen = _run_grads(general, params, grads)
  for x, y in zip(jax.tree_util.tree_leaves(rates_sgd), jax.tree_util.tree_leaves(rates_gen)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert len(set(np.asarray(jax.tree_util.tree_leaves(rates_gen)[0]).tolist())) > 1
  assert state_sgd.grad_acc is None and state_gen.grad_acc is not None


@pytest.mark.parametrize("scale", [2.0, 1e-3])
def test_rates_do_not_depend_on_a_constant_scale_of_the_direction(scale):
  # u = c g multiplies r and d by c: the factors are those of SGD.
  grads = jnp.array([1, 1, 0.5, 0.5, np.nan, 1, 1, 1, 0.5, 0.5], jnp.float32)
  tx = _paper_rule(0.5, update_every=2, gamma=0.2, direction=_preconditioned(jnp.float32(scale)))
  _, rates = _run_grads(tx, jnp.zeros([]), grads)
  expected = 0.5 * np.array([1, 1, 1, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.44])
  np.testing.assert_allclose(np.asarray(rates), expected, rtol=1e-6)


@pytest.mark.parametrize(
  "direction, extra_buffers",
  [
    (None, 2),
    (optax.identity(), 2),
    (optax.trace(0.9), 3),
    (optax.chain(optax.add_decayed_weights(1e-4), optax.trace(0.9)), 3),
  ],
)
def test_param_sized_buffers_two_over_sgd_three_otherwise(direction, extra_buffers):
  params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
  for per_leaf in (False, True):
    state = _paper_rule(0.1, update_every=3, per_leaf=per_leaf, direction=direction).init(params)
    own = state._replace(direction_state=None)
    sized = [x for x in jax.tree_util.tree_leaves(own) if x.shape in ((3, 2), (2,))]
    assert len(sized) == 2 * extra_buffers  # two leaves per buffer
    if extra_buffers == 2:
      assert state.grad_acc is None and state.prev_dot is None
    else:
      assert jax.tree_util.tree_structure(state.grad_acc) == jax.tree_util.tree_structure(params)
      assert jax.tree_util.tree_structure(state.prev_dot) == jax.tree_util.tree_structure(
        state.learning_rate
      )


# ---------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_window_sums_are_at_least_float32_and_updates_keep_the_leaf_dtype(dtype):
  params = {"w": jnp.ones((2, 3), dtype), "b": jnp.ones(3, jnp.float32)}
  for direction in (None, optax.trace(0.9)):
    tx = optax_lr.newton_lr(0.1, update_every=2, direction=direction)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
    for _ in range(3):
      updates, state = tx.update(grads, state, params)
    assert updates["w"].dtype == dtype and updates["b"].dtype == jnp.float32
    for buffer in (state.acc, state.u_prev) + (() if direction is None else (state.grad_acc,)):
      assert buffer["w"].dtype == jnp.float32 and buffer["b"].dtype == jnp.float32
    assert state.learning_rate.dtype == jnp.float32


def test_window_sums_stay_float64_under_x64():
  with jax.enable_x64(True):
    params = {"w": jnp.ones(2, jnp.float64), "h": jnp.ones(2, jnp.bfloat16)}
    state = optax_lr.newton_lr(0.1, update_every=2, direction=optax.trace(0.9)).init(params)
    assert state.acc["w"].dtype == jnp.float64 and state.grad_acc["w"].dtype == jnp.float64
    assert state.acc["h"].dtype == jnp.float32 and state.u_prev["h"].dtype == jnp.float32
    assert state.prev_dot.dtype == jnp.float64


@pytest.mark.parametrize("direction", [None, _pass_through()])
def test_bfloat16_params_give_the_float32_rates(direction):
  # Windows of 200 calls of bf16-exact gradients (1.1015625, then 0.75, then
  # 0.5). Summed in f32 the sums are exact: 220.3125 and 150, factor
  # 1 + 0.2 (150/220.3125) / (1 - 150/220.3125) = 1.42667. Summed in bf16 they
  # would be 204 and 178 (8-bit mantissa: past 128 each term rounds to a whole
  # number), factor 2.37.
  window = 200
  values = np.repeat(np.array([1.1015625, 0.75, 0.5], np.float32), window)
  vec = np.array([1.0, -2.0, 0.5], np.float32)
  grads32 = jnp.asarray(values[:, None] * vec)
  grads16 = grads32.astype(jnp.bfloat16)
  assert np.array_equal(np.asarray(grads16.astype(jnp.float32)), np.asarray(grads32))
  tx = optax_lr.newton_lr(0.1, update_every=window, gamma=0.2, direction=direction)
  state16, rates16 = _run_grads(tx, jnp.zeros(3, jnp.bfloat16), grads16)
  _, rates32 = _run_grads(tx, jnp.zeros(3, jnp.float32), grads32)
  np.testing.assert_allclose(np.asarray(rates16), np.asarray(rates32), rtol=1e-6)
  expected = 1 + 0.2 * (150 / 220.3125) / (1 - 150 / 220.3125)
  np.testing.assert_allclose(float(rates16[2 * window - 1]), 0.1 * expected, rtol=1e-6)
  assert state16.acc.dtype == jnp.float32
  # What a bf16 window sum would have given: far off.
  bf16_sum = lambda v: float(
    jax.lax.scan(lambda c, x: (c + x, None), jnp.bfloat16(0), jnp.full(window, v, jnp.bfloat16))[0]
  )
  a, b = bf16_sum(1.1015625), bf16_sum(0.75)
  assert (a, b) == (204.0, 178.0)
  assert abs((1 + 0.2 * (b / a) / (1 - b / a)) / expected - 1) > 0.5


# ---------------------------------------------------------------- float64 reference


def _quartic_loss(params, b):
  """sum over leaves of  0.5 h w^2 + 0.25 c w^4 - b w  (h < 0 somewhere)."""
  total = 0.0
  for name in ("a", "b"):
    w = params[name]
    total = total + jnp.sum(0.5 * H[name] * w * w + 0.25 * C * w**4 - b[name] * w)
  return total


H = {"a": np.array([1.0, 3.0, -0.5]), "b": np.array([[2.0, 0.5], [4.0, 1.5]])}
C = 0.3
W0 = {"a": np.array([0.8, -0.6, 0.05]), "b": np.array([[0.5, -1.0], [0.3, 0.9]])}


def _noise(num_steps, seed=0):
  rng = np.random.default_rng(seed)
  return {name: 0.3 * rng.standard_normal((num_steps,) + W0[name].shape) for name in W0}


def _reference(num_steps, lr0, window, gamma, max_factor, per_leaf, adam):
  """The window rule in float64 numpy, with plain loops over steps and leaves.

  Sums of directions U and of gradients G per window; r = <U_prev, G_new>,
  d = <U_prev, G_prev> - r. Over SGD (u = g) this is r = <U_prev, U_new>,
  d = |U_prev|^2 - r.
  """
  names = ("a", "b")
  noise = _noise(num_steps)
  w = {k: W0[k].copy() for k in names}
  m = {k: np.zeros_like(W0[k]) for k in names}
  v = {k: np.zeros_like(W0[k]) for k in names}
  acc = {k: np.zeros_like(W0[k]) for k in names}
  gacc = {k: np.zeros_like(W0[k]) for k in names}
  prev = {k: np.zeros_like(W0[k]) for k in names}
  prev_gacc = {k: np.zeros_like(W0[k]) for k in names}
  lr = {k: lr0 for k in names} if per_leaf else lr0
  branches = set()
  trajectory, rates = [], []
  for t in range(num_steps):
    u, grad = {}, {}
    for k in names:
      g = H[k] * w[k] + C * w[k] ** 3 - noise[k][t]
      grad[k] = g
      if adam:
        m[k] = 0.9 * m[k] + 0.1 * g
        v[k] = 0.999 * v[k] + 0.001 * g * g
        m_hat = m[k] / (1 - 0.9 ** (t + 1))
        v_hat = v[k] / (1 - 0.999 ** (t + 1))
        u[k] = m_hat / (np.sqrt(v_hat) + 1e-8)
      else:
        u[k] = g
    for k in names:
      w[k] = w[k] - (lr[k] if per_leaf else lr) * u[k]
      acc[k] = acc[k] + u[k]
      gacc[k] = gacc[k] + grad[k]
    if (t + 1) % window == 0:
      groups = [[k] for k in names] if per_leaf else [list(names)]
      for group in groups:
        r = sum(float(np.sum(prev[k] * gacc[k])) for k in group)
        s = sum(float(np.sum(prev[k] * prev_gacc[k])) for k in group)
        nn = sum(float(np.sum(acc[k] * gacc[k])) for k in group)
        d = s - r
        factor = 1.0
        if s == 0:
          branches.add("first")
        elif np.isfinite(r) and np.isfinite(s) and np.isfinite(nn) and d > 0:
          raw = 1 + gamma * r / d
          factor = min(max(raw, 1 / max_factor), max_factor)
          branches.add(
            "cap"
            if raw > max_factor
            else "floor"
            if raw < 1 / max_factor
            else "grow"
            if raw > 1
            else "shrink"
          )
        else:
          branches.add("keep")
        if per_leaf:
          lr[group[0]] = lr[group[0]] * factor
        else:
          lr = lr * factor
        for k in group:
          keep = np.isfinite(nn)
          prev[k] = acc[k].copy() if keep else np.zeros_like(acc[k])
          prev_gacc[k] = gacc[k].copy() if keep else np.zeros_like(gacc[k])
          acc[k] = np.zeros_like(acc[k])
          gacc[k] = np.zeros_like(gacc[k])
    trajectory.append({k: w[k].copy() for k in names})
    rates.append(dict(lr) if per_leaf else lr)
  return trajectory, rates, branches


REFERENCE_CASES = [
  # (direction, window, gamma, max_factor, per_leaf, lr0); all stay bounded
  # over the 48 steps, so float rounding is not amplified.
  ("sgd", 1, 1.0, 1.5, False, 0.05),
  ("sgd", 3, 0.2, 100.0, False, 0.05),
  ("sgd", 4, 3.0, 1.5, True, 0.05),
  ("adam", 2, 1.0, 1.5, False, 0.01),
  ("adam", 3, 0.2, 100.0, True, 0.05),
  ("adam", 4, 0.2, 1.5, False, 0.05),
]


def test_window_rule_matches_float64_reference():
  num_steps = 48
  branches = set()
  with jax.enable_x64(True):
    noise = jax.tree_util.tree_map(jnp.asarray, _noise(num_steps))
    params0 = jax.tree_util.tree_map(jnp.asarray, W0)
    for direction, window, gamma, max_factor, per_leaf, lr0 in REFERENCE_CASES:
      tx = optax_lr.newton_lr(
        lr0,
        update_every=window,
        gamma=gamma,
        max_factor=max_factor,
        per_leaf=per_leaf,
        direction=(standard_promotion(optax.scale_by_adam()) if direction == "adam" else None),
      )

      @jax.jit
      def run(params, noise):
        def body(carry, b):
          params, state = carry
          grads = jax.grad(_quartic_loss)(params, b)
          updates, state = tx.update(grads, state, params)
          params = optax.apply_updates(params, updates)
          return (params, state), (params, optax_lr.current_lr(state))

        return jax.lax.scan(body, (params, tx.init(params)), noise)[1]

      params_seq, rates_seq = run(params0, noise)
      ref_params, ref_rates, hit = _reference(
        num_steps, lr0, window, gamma, max_factor, per_leaf, direction == "adam"
      )
      branches |= hit
      for k in ("a", "b"):
        np.testing.assert_allclose(
          np.asarray(params_seq[k]), np.stack([p[k] for p in ref_params]), rtol=1e-9, atol=1e-12
        )
        got = np.asarray(rates_seq[k] if per_leaf else rates_seq)
        want = np.array([r[k] if per_leaf else r for r in ref_rates])
        np.testing.assert_allclose(got, want, rtol=1e-9)
  # The reference cases exercise every branch of the rule.
  assert branches == {"first", "grow", "shrink", "cap", "floor", "keep"}, branches


# ---------------------------------------------------------------- exact Newton


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_factor_is_the_exact_newton_step_on_a_quadratic(gamma):
  # L(w) = 0.5 w^T A w - b^T w. SGD with K = 1: the window sums are single
  # gradients and g_t = g_{t-1} - eta_{t-1} A g_{t-1}, where eta_{t-1} is the
  # rate call t-1 used. The Newton step on alpha for L(w_{t-1} - alpha g_{t-1})
  # from alpha = eta_{t-1} lands on alpha* = |g|^2 / g^T A g (exact: the loss
  # is quadratic in alpha), so the factor at call t must be
  # 1 + gamma (alpha* / eta_{t-1} - 1).
  a = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
  b = np.array([1.0, -2.0, 0.5])
  with jax.enable_x64(True):
    tx = optax_lr.newton_lr(0.05, update_every=1, gamma=gamma, max_factor=1e6)
    loss = lambda w: 0.5 * w @ jnp.asarray(a) @ w - jnp.asarray(b) @ w

    @jax.jit
    def run(w):
      def body(carry, _):
        w, state = carry
        lr_before = state.learning_rate
        g = jax.grad(loss)(w)
        updates, state = tx.update(g, state, w)
        return (w + updates, state), (g, lr_before, state.learning_rate)

      return jax.lax.scan(body, (w, tx.init(w)), None, length=5)[1]

    g, lr_before, lr_after = (np.asarray(x) for x in run(jnp.array([2.0, 1.0, -1.0])))
  factor = lr_after / lr_before
  assert factor[0] == 1.0  # the first window only records its sum
  for t in range(1, 5):
    alpha_star = g[t - 1] @ g[t - 1] / (g[t - 1] @ a @ g[t - 1])
    expected = 1 + gamma * (alpha_star / lr_before[t - 1] - 1)
    np.testing.assert_allclose(factor[t], expected, rtol=1e-9)
  if gamma == 1.0:  # the first change lands exactly on the line-search minimum
    np.testing.assert_allclose(lr_after[1], g[0] @ g[0] / (g[0] @ a @ g[0]), rtol=1e-9)


# ---------------------------------------------------------------- wrapper behaviour


def test_returns_minus_rate_times_the_direction_of_a_chain():
  direction = optax.chain(optax.add_decayed_weights(1e-2), optax.trace(0.9))
  tx = optax_lr.newton_lr(0.07, update_every=3, direction=direction)
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  grads_seq = [jax.tree_util.tree_map(lambda p, i=i: p * (i + 1.0), params) for i in range(3)]
  state, ref_state = tx.init(params), direction.init(params)
  update = jax.jit(tx.update)
  for grads in grads_seq:  # the first window: the rate is still 0.07
    updates, state = update(grads, state, params)
    u, ref_state = direction.update(grads, ref_state, params)
    jax.tree_util.tree_map(
      lambda x, y: np.testing.assert_allclose(x, -0.07 * y, rtol=1e-6), updates, u
    )


def test_extra_args_reach_the_direction():
  def init(params):
    return optax.EmptyState()

  def update(updates, state, params=None, *, value=None, **extra_args):
    return jax.tree_util.tree_map(lambda g: g * value, updates), state

  direction = optax.GradientTransformationExtraArgs(init, update)
  tx = optax_lr.newton_lr(0.5, update_every=2, direction=direction)
  params = jnp.ones(2)
  updates, _ = tx.update(jnp.ones(2), tx.init(params), params, value=jnp.float32(3.0), unknown=1)
  np.testing.assert_allclose(updates, [-1.5, -1.5])


def test_per_leaf_rates_form_a_params_like_tree():
  params = {"w": jnp.ones((2, 3)), "layers": [jnp.ones(4), jnp.ones([], jnp.bfloat16)]}
  tx = optax_lr.newton_lr(0.1, update_every=2, per_leaf=True)
  rates = optax_lr.current_lr(tx.init(params))
  assert jax.tree_util.tree_structure(rates) == jax.tree_util.tree_structure(params)
  for rate in jax.tree_util.tree_leaves(rates):
    assert rate.shape == () and rate.dtype == jnp.float32
    np.testing.assert_allclose(rate, 0.1)


def test_per_leaf_equals_separate_global_runs():
  # With a separable loss, each leaf's rate follows the global rule on that
  # leaf alone.
  grads = {
    "a": jnp.array([[1.0, 2.0], [0.9, 1.7], [0.5, 0.2], [0.6, -0.1]]),
    "b": jnp.array([[3.0], [2.0], [-1.0], [0.5]]),
  }
  params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  leafwise = optax_lr.newton_lr(0.2, update_every=1, gamma=0.4, per_leaf=True)
  _, rates = _run_grads(leafwise, params, grads)
  for k in ("a", "b"):
    single = optax_lr.newton_lr(0.2, update_every=1, gamma=0.4)
    _, alone = _run_grads(single, params[k], grads[k])
    np.testing.assert_allclose(rates[k], alone, rtol=1e-6)
    assert len(set(np.asarray(alone).tolist())) > 2  # the rate really moved


def test_window_end_work_runs_only_at_window_ends():
  # Outside the one-trip while loop, an update does elementwise work only: the
  # inner products (dot_general / reductions) live inside the loop body, which
  # runs at window ends only.
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  for per_leaf in (False, True):
    tx = _paper_rule(0.1, update_every=4, per_leaf=per_leaf)
    jaxpr = jax.make_jaxpr(lambda g, s: tx.update(g, s, params))(params, tx.init(params))
    outer = [eqn.primitive.name for eqn in jaxpr.eqns]
    assert outer.count("while") == 1
    assert not {"dot_general", "reduce_sum"} & set(outer), outer
    (loop,) = [e for e in jaxpr.eqns if e.primitive.name == "while"]
    inner = {e.primitive.name for e in loop.params["body_jaxpr"].jaxpr.eqns}
    assert "dot_general" in inner or "reduce_sum" in inner


def test_window_end_runs_exactly_at_window_ends():
  # The rate can only change on calls K, 2K, ...: with aligned gradients that
  # halve every call, each window end (from the second on) changes it.
  grads = jnp.asarray(0.5 ** np.arange(12), jnp.float32)
  tx = optax_lr.newton_lr(0.1, update_every=3, gamma=0.2)
  state, rates = _run_grads(tx, jnp.zeros([]), grads)
  rates = np.asarray(rates)
  changed = np.flatnonzero(np.diff(np.concatenate([[np.float32(0.1)], rates])) != 0)
  np.testing.assert_array_equal(changed, [5, 8, 11])  # calls 6, 9, 12
  assert int(state.window_step) == 0


@pytest.mark.parametrize("direction", [None, optax.trace(0.9)])
def test_init_buffers_are_fresh(direction):
  params = {"w": jnp.ones(3), "v": jnp.ones(3)}
  tx = optax_lr.newton_lr(0.1, update_every=2, per_leaf=True, direction=direction)
  leaves = jax.tree_util.tree_leaves(tx.init(params))
  pointers = [x.unsafe_buffer_pointer() for x in leaves]
  pointers += [x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(params)]
  assert len(set(pointers)) == len(pointers)


# ---------------------------------------------------------------- optax contrib targets


def _contrib_target(name):
  """(initial params, target params, loss) of optax's contrib test targets
  (`_setup_parabola`, `_setup_rosenbrock`, `_setup_matrix_parabola`,
  `_setup_mixed_tensor_target` in optax/contrib/_common_test.py), float32."""
  if name == "parabola":
    target = jnp.array([1.0, -1.0, 1.0])
    return jnp.array([-1.0, 10.0, 1.0]), target, lambda p: jnp.sum((p - target) ** 2)
  if name == "rosenbrock":
    loss = lambda p: (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2
    return jnp.zeros(2), jnp.array([1.0, 1.0]), loss
  if name == "matrix_parabola":
    target = jnp.array([[3.0, -2.0], [1.0, 4.0]])
    return jnp.zeros((2, 2)), target, lambda p: jnp.sum((p - target) ** 2)
  target = (jnp.array([1.0, -1.0, 2.0]), jnp.array([[1.0, 0.0], [-1.0, 1.0]]))
  loss = lambda p: jnp.sum((p[0] - target[0]) ** 2) + jnp.sum((p[1] - target[1]) ** 2)
  return (jnp.zeros(3), jnp.zeros((2, 2))), target, loss


CONTRIB_DIRECTIONS = {
  "sgd": lambda: None,
  "momentum": lambda: optax.trace(0.9),
  "adam": lambda: standard_promotion(optax.scale_by_adam()),
}

# Window sums cancel an oscillation that alternates from step to step, so the
# rule cannot see Rosenbrock's stiff direction (curvature up to 1002 at the
# minimum, against 0.4 along the valley) go unstable: the rate climbs past the
# stability limit (2 / 1002 = 2.0e-3 for SGD, 2 (1 + 0.9) / 1002 = 3.8e-3 for
# momentum; it reaches 6.7e-3 and 4.2e-3) and the params overflow inside one
# window. SGD and momentum at a constant 1e-3 converge there. The safety net
# (on by default) handles it.
_STIFF_BLIND_SPOT = pytest.mark.xfail(
  strict=True, reason="window sums cannot see a stiff direction go unstable"
)
# SGD on the mixed target converges to the float32 floor with the rate at 0.2;
# there the steps round away, the gradients repeat, r ~ <U_prev, G_prev> reads
# as a flat loss and the factor jumps (0.2 -> 2.2, past the stability limit 1):
# the params overflow. Also handled by the safety net.
_FLOAT32_FLOOR = pytest.mark.xfail(
  strict=True, reason="at the float32 floor repeated gradients read as a flat loss"
)


@pytest.mark.parametrize(
  "direction, target",
  [
    pytest.param(
      d,
      t,
      marks=(
        _STIFF_BLIND_SPOT
        if (t == "rosenbrock" and d != "adam")
        else _FLOAT32_FLOOR
        if (t, d) == ("mixed", "sgd")
        else ()
      ),
    )
    for d in CONTRIB_DIRECTIONS
    for t in ("parabola", "rosenbrock", "matrix_parabola", "mixed")
  ],
)
def test_converges_on_optax_contrib_targets(direction, target):
  """optax's contrib convergence test (30k steps, rtol = atol = 3e-2) with
  the defaults, windows of 50 and a small initial rate; the rate stays below
  10. (Over Adam on Rosenbrock the rule on direction sums alone ran the rate
  to 1e13 and the params to 7e12.)"""
  params, final, loss = _contrib_target(target)
  # The rule alone: with its safety net and the loss passed as `value`,
  # newton_lr converges on all twelve (tests/test_defaults.py).
  tx = _paper_rule(1e-3, update_every=50, direction=CONTRIB_DIRECTIONS[direction]())

  @jax.jit
  def run(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), optax_lr.current_lr(state)

    (params, _), rates = jax.lax.scan(body, (params, tx.init(params)), None, length=30_000)
    return params, jnp.max(rates)

  params, max_rate = run(params)
  for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(final)):
    np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2)
  assert float(max_rate) < 10.0, float(max_rate)


# ---------------------------------------------------------------- robustness (digits)


def _digits_final_val_losses(tx, with_rate, rates):
  """Final validation losses of a 64-32-10 MLP on sklearn's digits (8 epochs
  of batches of 32), one run per initial rate, vmapped; `with_rate(state, lr)`
  puts the initial rate into a fresh state."""
  x, y = load_digits(return_X_y=True)
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(x))
  x = jnp.asarray(x[perm] / 16.0, jnp.float32)
  y = jnp.asarray(y[perm], jnp.int32)
  x_train, y_train, x_val, y_val = x[:1297], y[:1297], x[1297:], y[1297:]
  batch, epochs = 32, 8
  steps_per_epoch = 1297 // batch
  order = np.concatenate(
    [rng.permutation(1297)[: steps_per_epoch * batch] for _ in range(epochs)]
  ).reshape(-1, batch)
  order = jnp.asarray(order)

  def init_mlp():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
      "w1": jax.random.normal(k1, (64, 32)) * jnp.sqrt(2 / 64.0),
      "b1": jnp.zeros(32),
      "w2": jax.random.normal(k2, (32, 10)) * jnp.sqrt(1 / 32.0),
      "b2": jnp.zeros(10),
    }

  def loss(params, xb, yb):
    h = jax.nn.relu(xb @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def train(lr):
    params = init_mlp()

    def body(carry, idx):
      params, state = carry
      grads = jax.grad(loss)(params, x_train[idx], y_train[idx])
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    state = with_rate(tx.init(params), lr)
    (params, state), _ = jax.lax.scan(body, (params, state), order)
    return loss(params, x_val, y_val)

  return np.asarray(jax.jit(jax.vmap(train))(jnp.asarray(rates, jnp.float32)))


DIGITS_STEPS_PER_EPOCH = 1297 // 32


def test_robust_to_the_initial_rate_on_digits():
  """The paper's headline claim on real data: from initial rates 1e-4 .. 1,
  the final validation losses of `newton_lr` spread far less than SGD's."""
  rates = np.logspace(-4, 0, 5)
  sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  sgd_losses = _digits_final_val_losses(
    sgd, lambda s, lr: s._replace(hyperparams={**s.hyperparams, "learning_rate": lr}), rates
  )
  newton = optax_lr.newton_lr(0.1, steps_per_epoch=DIGITS_STEPS_PER_EPOCH)
  newton_losses = _digits_final_val_losses(
    newton, lambda s, lr: s._replace(learning_rate=lr), rates
  )

  assert np.all(np.isfinite(newton_losses)), newton_losses
  assert np.std(sgd_losses) > 0.5, sgd_losses  # the grid really spans bad rates
  assert np.std(newton_losses) < 0.25 * np.std(sgd_losses), (newton_losses, sgd_losses)
  assert np.max(newton_losses) < 0.6, newton_losses
  assert np.mean(newton_losses) < np.mean(sgd_losses)


def test_over_adam_trains_digits_from_small_initial_rates():
  """Over Adam the rule needs the gradient sums. On direction sums alone
  (the original rule, docs/design.md) Adam's correlated, sign-like directions
  make the measured curvature vanish and the rate climbs too high: measured here
  0.16-0.38 (and chance level, 2.3, on a 64-128-128-10 MLP over 30 epochs),
  against 0.05-0.07 with the gradient sums."""
  newton = optax_lr.newton_lr(
    1e-3,
    steps_per_epoch=DIGITS_STEPS_PER_EPOCH,
    direction=standard_promotion(optax.scale_by_adam()),
  )
  losses = _digits_final_val_losses(
    newton, lambda s, lr: s._replace(learning_rate=lr), [1e-4, 1e-3, 1e-2]
  )
  assert np.all(losses < 0.12), losses
