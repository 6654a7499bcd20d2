"""Tests for optax_lr._monitor: current_lr, observe, apply_updates, epoch windows.

The monitor must not know any method by name, so these tests register a small
epoch-level method of their own ("halve and roll back on a bad epoch") through
the same `register_method` hook the library's methods use.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lr
from optax_lr import _monitor


class ToyState(NamedTuple):
  learning_rate: jax.Array  # [] f32
  best_cost: jax.Array  # [] f32
  pending_rollback: jax.Array  # [] bool, decided at an epoch end
  rolled_back: jax.Array  # [] bool, the last update call rolled back
  checkpoint: Any  # params-like
  window: _monitor.EpochWindow


def _toy_epoch_end(state: ToyState, cost) -> ToyState:
  worse = jnp.logical_not(cost <= state.best_cost)  # NaN counts as worse
  return state._replace(
    learning_rate=jnp.where(worse, state.learning_rate / 2, state.learning_rate),
    best_cost=jnp.where(worse, state.best_cost, cost.astype(jnp.float32)),
    pending_rollback=worse,
  )


_monitor.register_method(
  ToyState,
  epoch_end=_toy_epoch_end,
  rollback=lambda s: (s.rolled_back, s.checkpoint),
)


def toy(learning_rate, steps_per_epoch=None):
  def init(params):
    return ToyState(
      learning_rate=jnp.asarray(learning_rate, jnp.float32),
      best_cost=jnp.asarray(jnp.inf, jnp.float32),
      pending_rollback=jnp.asarray(False),
      rolled_back=jnp.asarray(False),
      checkpoint=jax.tree_util.tree_map(jnp.array, params),
      window=_monitor.window_init(),
    )

  def update(updates, state, params=None, *, value=None, **extra_args):
    del extra_args
    rollback = state.pending_rollback
    new_updates = jax.lax.cond(
      rollback,
      lambda: jax.tree_util.tree_map(lambda c, p: c - p, state.checkpoint, params),
      lambda: jax.tree_util.tree_map(lambda g: -state.learning_rate * g, updates),
    )
    state = state._replace(pending_rollback=jnp.asarray(False), rolled_back=rollback)
    if steps_per_epoch is not None:
      window, end = _monitor.window_step(state.window, value, steps_per_epoch)
      state = _monitor.maybe_epoch_end(
        state._replace(window=window), end.is_end, end.cost, _toy_epoch_end
      )
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init, update)


PARAMS = {"a": jnp.array([1.0, 2.0], jnp.float32), "b": jnp.array(3.0, jnp.float32)}
GRADS = {"a": jnp.array([1.0, 1.0], jnp.float32), "b": jnp.array(1.0, jnp.float32)}

# optax.MultiSteps mixes int32 and float32 internally, which strict promotion
# (set for the whole suite in conftest.py) rejects; its tests relax it locally.
standard_promotion = lambda: jax.numpy_dtype_promotion("standard")


# ---------------------------------------------------------------- current_lr


def test_current_lr_bare_and_nested():
  assert float(optax_lr.current_lr(toy(0.3).init(PARAMS))) == pytest.approx(0.3)
  nested = [
    optax.chain(optax.clip_by_global_norm(1.0), toy(0.3)),
    optax.MultiSteps(toy(0.3), every_k_schedule=2),
    optax.chain(optax.MultiSteps(optax.chain(toy(0.3)), 3)),
    optax.inject_hyperparams(toy)(learning_rate=0.3),
  ]
  for tx in nested:
    assert float(optax_lr.current_lr(tx.init(PARAMS))) == pytest.approx(0.3)


def test_current_lr_prefers_the_method_over_an_injected_rate():
  tx = optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=5.0), toy(0.3))
  assert float(optax_lr.current_lr(tx.init(PARAMS))) == pytest.approx(0.3)


def test_current_lr_several_methods_gives_a_tuple_in_flatten_order():
  tx = optax.partition({"x": toy(0.1), "y": toy(0.2)}, {"a": "y", "b": "x"})
  rates = optax_lr.current_lr(tx.init(PARAMS))
  assert isinstance(rates, tuple)
  # optax.partition keeps a dict of states: sorted label order, "x" then "y".
  np.testing.assert_allclose([float(r) for r in rates], [0.1, 0.2])


def test_current_lr_plain_optax_and_error():
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
  assert float(optax_lr.current_lr(tx.init(PARAMS))) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match="no learning rate found"):
    optax_lr.current_lr(optax.adam(1e-3).init(PARAMS))


def test_current_lr_under_jit():
  tx = optax.chain(toy(0.25))
  state = tx.init(PARAMS)
  assert float(jax.jit(optax_lr.current_lr)(state)) == 0.25


# ---------------------------------------------------------------- observe


def test_observe_applies_one_epoch_end_to_every_epoch_level_method():
  tx = optax.partition({"x": toy(0.1), "y": toy(0.2)}, {"a": "y", "b": "x"})
  state = tx.init(PARAMS)
  state = optax_lr.observe(state, 1.0)  # first cost: an improvement
  np.testing.assert_allclose([float(r) for r in optax_lr.current_lr(state)], [0.1, 0.2])
  state = optax_lr.observe(state, 2.0)  # worse: both halve
  np.testing.assert_allclose([float(r) for r in optax_lr.current_lr(state)], [0.05, 0.1])


def test_observe_is_a_no_op_without_epoch_level_methods():
  state = optax.chain(optax.adam(1e-3), optax.scale(0.5)).init(PARAMS)
  out = optax_lr.observe(state, 3.0)
  assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(state)
  for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_observe_jitted_compiles_once_and_treats_nan_as_worse():
  traces = []

  @jax.jit
  def observe(state, cost):
    traces.append(None)
    return optax_lr.observe(state, cost)

  state = optax.MultiSteps(toy(0.4), 2).init(PARAMS)
  for cost in [1.0, 0.5, float("nan"), float("inf"), 0.1]:
    state = observe(state, jnp.float32(cost))
  assert len(traces) == 1
  # improvements at 1.0, 0.5, 0.1; NaN and Inf each halve the rate.
  assert float(optax_lr.current_lr(state)) == pytest.approx(0.1)


# ---------------------------------------------------------------- apply_updates


def test_apply_updates_equals_optax_without_rollback():
  tx = toy(0.5)
  state = tx.init(PARAMS)
  updates, state = tx.update(GRADS, state, PARAMS)
  got = optax_lr.apply_updates(PARAMS, updates, state)
  want = optax.apply_updates(PARAMS, updates)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


def test_apply_updates_lands_exactly_on_checkpoint_from_nan_params():
  tx = toy(0.5)
  state = optax_lr.observe(optax_lr.observe(tx.init(PARAMS), 1.0), 2.0)
  bad_params = jax.tree_util.tree_map(lambda p: jnp.full_like(p, jnp.nan), PARAMS)
  step = jax.jit(lambda p, s: tx.update(GRADS, s, p))
  updates, state = step(bad_params, state)
  assert bool(state.rolled_back)
  naive = optax.apply_updates(bad_params, updates)
  assert np.isnan(naive["b"])  # why apply_updates exists
  got = jax.jit(optax_lr.apply_updates)(bad_params, updates, state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, PARAMS)
  # The next call is an ordinary step again.
  updates, state = step(got, state)
  got2 = optax_lr.apply_updates(got, updates, state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got2, optax.apply_updates(got, updates))


def test_apply_updates_is_a_select_not_a_conditional():
  """The landing is an elementwise select that XLA fuses with the add: a
  ``lax.cond`` there waits for every new param leaf (measured: 3-5% of an
  MLP's step on CPU)."""
  tx = toy(0.5)
  state = tx.init(PARAMS)
  updates, state = tx.update(GRADS, state, PARAMS)
  hlo = jax.jit(optax_lr.apply_updates).lower(PARAMS, updates, state).as_text()
  assert "select" in hlo
  assert "stablehlo.case" not in hlo and "stablehlo.if" not in hlo


@standard_promotion()
def test_apply_updates_under_multisteps_only_on_the_emitting_call():
  tx = optax.MultiSteps(toy(0.5), every_k_schedule=2)
  state = tx.init(PARAMS)
  state = optax_lr.observe(optax_lr.observe(state, 1.0), 2.0)  # rollback pending
  params = jax.tree_util.tree_map(lambda p: p + 10.0, PARAMS)
  # Call 1 accumulates only: zero updates, no rollback yet.
  updates, state = tx.update(GRADS, state, params)
  params = optax_lr.apply_updates(params, updates, state)
  assert float(params["b"]) == 13.0
  # Call 2 emits the inner (rollback) update.
  updates, state = tx.update(GRADS, state, params)
  params = optax_lr.apply_updates(params, updates, state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, PARAMS)
  # Call 3 accumulates again: the inner state still says "rolled back", but
  # nothing was emitted, so the params must not jump back again.
  moved = jax.tree_util.tree_map(lambda p: p + 1.0, params)
  updates, state = tx.update(GRADS, state, moved)
  assert bool(state.inner_opt_state.rolled_back)
  after = optax_lr.apply_updates(moved, updates, state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, after, moved)


def test_apply_updates_under_partition_restores_only_the_methods_leaves():
  tx = optax.partition({"toy": toy(0.5), "sgd": optax.sgd(1.0)}, {"a": "toy", "b": "sgd"})
  state = tx.init(PARAMS)
  state = optax_lr.observe(optax_lr.observe(state, 1.0), 2.0)
  params = {"a": jnp.array([jnp.nan, jnp.inf]), "b": jnp.array(3.0)}
  updates, state = tx.update(GRADS, state, params)
  got = optax_lr.apply_updates(params, updates, state)
  np.testing.assert_array_equal(got["a"], PARAMS["a"])
  assert float(got["b"]) == 2.0  # the sgd group stepped as usual


# ---------------------------------------------------------------- windows


def test_window_means_and_ends():
  window = _monitor.window_init()
  seen = []
  for value in [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]:
    window, end = _monitor.window_step(window, jnp.float32(value), 3)
    seen.append((bool(end.is_end), float(end.cost), float(end.standard_error)))
  assert [s[0] for s in seen] == [False, False, True] * 2
  assert seen[2][1] == pytest.approx(2.0)
  assert seen[5][1] == pytest.approx(20.0)
  # Sample variances 1 and 100 (n - 1 = 2), over n = 3: SE = sqrt(var / 3).
  assert seen[2][2] == pytest.approx(math.sqrt(1.0 / 3.0), rel=1e-6)
  assert seen[5][2] == pytest.approx(math.sqrt(100.0 / 3.0), rel=1e-6)
  assert int(window.steps) == 0 and float(window.total) == 0.0
  assert float(window.running_mean) == 0.0 and float(window.spread) == 0.0


def test_window_standard_error_does_not_cancel_on_a_large_mean():
  # Losses 1000 + (-0.01, 0, +0.01): a sum of squares in f32 (1e6 against a
  # spread of 2e-4) would lose the spread entirely; Welford keeps it.
  window = _monitor.window_init()
  for value in [999.99, 1000.0, 1000.01]:
    window, end = _monitor.window_step(window, jnp.float32(value), 3)
  want = np.std(np.float32([999.99, 1000.0, 1000.01]).astype(np.float64), ddof=1) / math.sqrt(3)
  assert float(end.standard_error) == pytest.approx(want, rel=1e-2)


def test_window_of_one_call_has_no_standard_error():
  window = _monitor.window_init()
  for value in [1.0, 5.0]:
    window, end = _monitor.window_step(window, jnp.float32(value), 1)
    assert bool(end.is_end) and float(end.cost) == value
    assert float(end.standard_error) == 0.0


def test_window_nan_value_gives_nan_cost_then_recovers():
  window = _monitor.window_init()
  costs = []
  for value in [1.0, float("nan"), 1.0, 1.0]:
    window, end = _monitor.window_step(window, jnp.float32(value), 2)
    if end.is_end:
      costs.append(float(end.cost))
  assert np.isnan(costs[0]) and costs[1] == 1.0


def test_window_bad_value_raises():
  with pytest.raises(ValueError, match="value"):
    _monitor.window_step(_monitor.window_init(), None, 3)
  with pytest.raises(ValueError, match="value"):
    _monitor.window_step(_monitor.window_init(), jnp.ones(3), 3)


def test_window_mode_inside_jit_halves_on_bad_epochs():
  tx = toy(0.8, steps_per_epoch=2)
  state = tx.init(PARAMS)
  step = jax.jit(lambda p, s, v: tx.update(GRADS, s, p, value=v))
  params = PARAMS
  rates = []
  for value in [1.0, 1.0, 3.0, 3.0, 0.5, 0.5]:
    updates, state = step(params, state, jnp.float32(value))
    params = optax_lr.apply_updates(params, updates, state)
    rates.append(float(optax_lr.current_lr(state)))
  assert rates == pytest.approx([0.8, 0.8, 0.8, 0.4, 0.4, 0.4])
  assert step._cache_size() == 1
