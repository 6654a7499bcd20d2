"""Fault injection: NaN, Inf and exploding losses in every input of every method.

Each method of the contract suite's `METHODS` trains the contract parabola for
`STEPS` steps (an epoch ends every `EPOCH` steps, where `optax_lr.observe`
gets the monitored cost). At step `FAULT_AT` bad numbers enter one input
channel for a few steps, then the numbers recover:

* ``grads``: the gradient the update receives;
* ``value``: the loss passed as ``value``, and the cost passed to ``observe``;
* ``val_grads``: the validation gradient;
* ``hvp``: ``loss_fn``, so Hessian-vector products (and nothing else) go bad;
* ``explosion``: the loss, and so all four channels, grows 10x, 100x, 1000x,
  then overflows to Inf and NaN.

Every update receives all three extra arguments (a method ignores those it
does not read), so a bad number in any of them reaches every method that
reads it. The train loop is a robust one: `optax.clip_by_global_norm(10)`
before the method, and a step whose new params are not finite is skipped,
state included, as `optax.apply_if_finite` does (the "unguarded" scenarios
drop that skip). Checks, for every method and scenario:

* the learning rate is finite and non-negative after every step;
* a bad ``value``, ``val_grads`` or HVP never makes a non-finite update (no
  step is skipped), and after a guarded run the state holds no NaN or Inf;
* the method recovers: after the fault, the loss gets back below its level
  just before the fault (or, where the fault-free run does not get there
  either, to within 1% of the fault-free run's best loss after that step).

AALR's own answer to a diverged loss, its paper's rollback, is checked below
on unguarded runs: the params land exactly on the checkpoint, the rate halves.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _reliability as rel
import optax_lr
from optax_lr.aalr import SAVE
from optax_lr.aalr import AALRState
from test_contract import parabola
from test_contract import parabola_params

STEPS = 160
FAULT_AT = 48
EPOCH = 4
CHANNELS = ("grads", "value", "val_grads", "hvp")


@dataclasses.dataclass(frozen=True)
class Scenario:
  name: str
  channels: tuple[str, ...]
  factors: tuple[float, ...]  # multipliers from step FAULT_AT on
  guard: bool = True

  @property
  def side_channel(self) -> bool:
    """Only inputs that never reach the params directly go bad."""
    return "grads" not in self.channels

  def multipliers(self) -> np.ndarray:
    m = np.ones((STEPS, len(CHANNELS)), np.float32)
    columns = [CHANNELS.index(c) for c in self.channels]
    for i, factor in enumerate(self.factors):
      m[FAULT_AT + i, columns] = factor
    return m


SCENARIOS = [
  Scenario(f"{channel}_{bad}", (channel,), (float(bad),) * 3)
  for channel in CHANNELS
  for bad in ("nan", "inf")
] + [
  Scenario("explosion", CHANNELS, (1e1, 1e2, 1e3, np.inf, np.nan)),
  Scenario("grads_nan_unguarded", ("grads",), (np.nan,) * 3, guard=False),
  Scenario("grads_inf_unguarded", ("grads",), (np.inf,) * 3, guard=False),
]
CLEAN = Scenario("clean", (), ())


def _all_finite(tree):
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree_util.tree_leaves(tree)
    if jnp.issubdtype(jnp.result_type(x), jnp.floating)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


@functools.lru_cache(maxsize=None)
def _runner(case):
  """The jitted run ``(multipliers, guard) -> (losses, rates, skipped, finite)``."""
  tx = optax.chain(optax.clip_by_global_norm(10.0), case.make(case.parabola_lr))

  @jax.jit
  def run(mult, guard):
    def body(carry, inputs):
      params, state, skipped = carry
      t, m = inputs
      loss, grads = jax.value_and_grad(parabola)(params)
      scale = lambda tree, k: jax.tree_util.tree_map(lambda x: x * m[k], tree)
      updates, new_state = tx.update(
        scale(grads, 0),
        state,
        params,
        value=loss * m[1],
        val_grads=scale(grads, 2),
        loss_fn=lambda p: parabola(p) * m[3],
      )
      new_params = optax_lr.apply_updates(params, updates, new_state)
      if case.epoch_level:  # windowed methods end their own epochs
        new_state = jax.lax.cond(
          t % EPOCH == EPOCH - 1,
          lambda s: optax_lr.observe(s, loss * m[1]),
          lambda s: s,
          new_state,
        )
      ok = _all_finite(new_params) | jnp.logical_not(guard)
      keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)
      state = keep(new_state, state)
      rates = jnp.stack(
        [jnp.asarray(r, jnp.float32) for r in jax.tree_util.tree_leaves(optax_lr.current_lr(state))]
      )
      skipped = skipped + jnp.logical_not(ok).astype(jnp.int32)
      return (keep(new_params, params), state, skipped), (loss, rates)

    params = parabola_params()
    init = (params, tx.init(params), jnp.int32(0))
    (_, state, skipped), (losses, rates) = jax.lax.scan(body, init, (jnp.arange(STEPS), mult))
    return losses, rates, skipped, _all_finite(state)

  return run


def _run(case, scenario):
  out = _runner(case)(jnp.asarray(scenario.multipliers()), scenario.guard)
  return jax.tree_util.tree_map(np.asarray, out)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("case", rel.METHODS, ids=rel.case_id)
def test_bad_numbers_keep_the_rate_valid_and_training_recovers(case, scenario):
  losses, rates, skipped, state_finite = _run(case, scenario)
  rel.assert_rates_valid(rates)
  if not scenario.guard:
    return  # NaN params stay NaN: only the rate is checked (AALR: below).
  if scenario.side_channel:
    assert skipped == 0, "a bad side input made a non-finite update"
  assert state_finite, "NaN or Inf left in the state after the numbers recovered"
  after = FAULT_AT + len(scenario.factors)
  before, best_after = losses[FAULT_AT], np.min(losses[after:])
  clean_losses = _run(case, CLEAN)[0]
  clean_best = np.min(clean_losses[after:])
  assert best_after < before or best_after <= 1.01 * clean_best, (
    f"no recovery: best loss after the fault {best_after:.3g}, before it "
    f"{before:.3g}, fault-free run {clean_best:.3g}"
  )


# ---------------------------------------------------------------- AALR
#
# The paper (Algorithm 1): a diverged (NaN) loss in phase 2 reloads the last
# checkpoint (params and optimizer), halves the rate and doubles the patience;
# a bad epoch in phase 1 restarts from the initial model at half the rate.


def _aalr_loop(tx, params, factors, epoch, steps):
  """An unguarded loop; yields what each update call saw and did."""
  step = jax.jit(lambda p, s, f: _aalr_step(tx, p, s, f))
  observe = jax.jit(optax_lr.observe)
  state = tx.init(params)
  for t in range(steps):
    before = state
    params_in = params
    params, state, loss = step(params, state, jnp.float32(factors.get(t, 1.0)))
    yield t, params_in, before, params, state, loss
    if t % epoch == epoch - 1:
      state = observe(state, loss)


def _aalr_step(tx, params, state, factor):
  loss, grads = jax.value_and_grad(parabola)(params)
  grads = jax.tree_util.tree_map(lambda g: g * factor, grads)
  updates, state = tx.update(grads, state, params)
  return optax_lr.apply_updates(params, updates, state), state, loss * factor


def _aalr(state) -> AALRState:
  (found,) = rel.find_states(state, AALRState)
  return found


def test_aalr_reloads_its_checkpoint_when_the_loss_turns_nan_in_phase_two():
  tx = optax_lr.aalr(0.05, warmup_patience=2, direction=optax.trace(0.9))
  fault = 30
  saved = None  # (params, direction state) stored by the latest save
  rollbacks = []
  for t, params_in, before, params, state, loss in _aalr_loop(
    tx, parabola_params(), {fault: np.nan}, epoch=2, steps=80
  ):
    if int(_aalr(before).pending) == SAVE:
      saved = (params_in, _aalr(before).direction_state)
    if t == fault:
      assert int(_aalr(state).phase) == 2 and saved is not None
      pre_fault_loss = float(parabola(params_in))
      rate, patience = _aalr(state).learning_rate, _aalr(state).patience
      assert not np.isfinite(float(parabola(params)))  # NaN params from here
    if bool(_aalr(state).rolled_back):
      rollbacks.append(t)
      # Params and optimizer state reloaded exactly from the latest save.
      rel.assert_trees_identical(params, saved[0])
      rel.assert_trees_identical(_aalr(state).direction_state, saved[1])
      if len(rollbacks) == 1:  # the NaN's: rate halved, patience doubled.
        assert float(_aalr(state).learning_rate) == float(rate) / 2
        assert int(_aalr(state).patience) == 2 * int(patience)
  # The NaN loss ends the epoch at step 31; the next update call reloads.
  # (Later rollbacks, if any, are blown-up epochs after a doubling: a loss
  # ten times L* counts as diverged, see `aalr`.)
  assert rollbacks[0] == fault + 2
  assert float(parabola(params)) < pre_fault_loss


def test_aalr_restarts_from_the_initial_model_when_the_loss_explodes_in_phase_one():
  # Momentum 0.5 keeps every epoch of this parabola better than the last, so
  # the explosion is the only bad epoch.
  tx = optax_lr.aalr(0.1, warmup_patience=10, direction=optax.trace(0.5))
  params0 = parabola_params()
  explosion = {9: 1e3, 10: 1e6, 11: np.inf}
  rates, rolled = [], []
  for t, params_in, before, params, state, loss in _aalr_loop(
    tx, params0, explosion, epoch=4, steps=40
  ):
    rates.append(float(_aalr(state).learning_rate))
    if bool(_aalr(state).rolled_back):
      rolled.append(t)
      assert int(_aalr(state).phase) == 1
      rel.assert_trees_identical(params, params0)
      # A fresh direction state, as the optimizer is re-initialised.
      rel.assert_trees_identical(_aalr(state).direction_state, tx.init(params0).direction_state)
  # The epoch ending at step 11 diverged: the next call (step 12) restarts.
  assert rolled[0] == 12
  assert rates[12] == rates[11] / 2
  assert np.isfinite(float(parabola(params)))
