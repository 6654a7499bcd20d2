"""Tests for optax_lr.aalr: Algorithm 1's rates, phases, saves and rollbacks.

`algorithm1` below is the paper's pseudocode transcribed loop for loop as a
Python coroutine (send the loss of each epoch, get back η, the phase, L* and
what happens to the model); `Reference` adds the params and the direction
state around it, with saves and rollbacks carried out by the next update call
as DESIGN.md says. Neither shares code with the implementation, which is a
flat state machine over scalars in the optimizer state.

Rates are powers of two and params, gradients and momenta are dyadic, so
float32 arithmetic here is exact; landings on checkpoints are compared with
`==`, long random runs to 1e-6.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lr

NONE, SAVE, ROLLBACK = "none", "save", "rollback"
PENDING_CODE = {NONE: 0, SAVE: 1, ROLLBACK: 2}


def algorithm1(lr, warmup, best=math.inf):
  """The paper's Algorithm 1; `best` is J(θ) of the initial model."""
  diverged = lambda loss: not math.isfinite(loss)  # the paper's "L is NAN"
  loss = yield None
  # Phase 1: initial LR exploration.
  i = 0
  while True:
    i += 1
    if loss > best or diverged(loss):
      lr, i = lr / 2, 0
      loss = yield lr, 1, best, ROLLBACK  # reload θ, reset the optimizer
      continue
    best = loss
    if i >= warmup:
      break
    loss = yield lr, 1, best, NONE
  # Save checkpoint; phase 2: optimistic binary exploration.
  lr, p = 2 * lr, 1
  loss = yield lr, 2, best, SAVE
  while True:
    for _ in range(p - 1):  # train for p epochs: only the last is evaluated
      loss = yield lr, 2, best, NONE
    if diverged(loss):
      lr, p = lr / 2, 2 * p
      loss = yield lr, 2, best, ROLLBACK
      continue
    if loss < best:
      best, lr, p = loss, 2 * lr, 1
      loss = yield lr, 2, best, SAVE
      continue
    loss = yield lr, 2, best, NONE  # train for another p epochs
    for _ in range(p - 1):
      loss = yield lr, 2, best, NONE
    if loss < best:
      best, lr, p = loss, 2 * lr, 1
      action = SAVE
    else:
      lr, p = lr / 2, 2 * p
      action = ROLLBACK if diverged(loss) else NONE
    loss = yield lr, 2, best, action


class Reference:
  """Algorithm 1 with params and a trace(decay) direction, float64."""

  def __init__(self, lr, warmup, params, decay, initial_cost):
    self.algorithm = algorithm1(lr, warmup, initial_cost)
    next(self.algorithm)
    self.lr, self.phase, self.best, self.pending = lr, 1, initial_cost, NONE
    self.params = np.array(params, np.float64)
    self.trace = np.zeros_like(self.params)
    self.checkpoint, self.checkpoint_trace = self.params.copy(), self.trace.copy()
    self.decay = decay
    self.history = []  # (phase before the epoch end, action) per epoch end

  def call(self, grads):
    """One update call; returns whether it rolled back."""
    pending, self.pending = self.pending, NONE
    if pending == ROLLBACK:
      self.params, self.trace = self.checkpoint.copy(), self.checkpoint_trace.copy()
      return True
    if pending == SAVE:
      self.checkpoint, self.checkpoint_trace = self.params.copy(), self.trace.copy()
    # decay 0 is the identity direction (0 * inf would make NaN of an Inf).
    self.trace = grads + (self.decay * self.trace if self.decay else 0.0)
    self.params = self.params - self.lr * self.trace
    return False

  def epoch_end(self, cost):
    phase = self.phase
    self.lr, self.phase, self.best, action = self.algorithm.send(cost)
    self.history.append((phase, action))
    if action != NONE:
      self.pending = action


PARAMS0 = np.array([1.0, 2.0, -3.0])
GRADS = np.array([0.5, -1.0, 2.0])

# Costs of a scripted run with warmup_patience=3 (see the hand-computed table).
SCRIPT = [9.0, 8.0, 8.5, 7.0, np.nan, 7.0, 6.0, 5.0,  # phase 1
          4.0, 4.5, 4.2, 4.1, 3.9, np.inf, 3.0, 5.0, 2.0, np.nan,
          3.0, 3.0, 3.0, 3.5, 3.5, 3.4]
# η after each epoch end from 0.25, worked out by hand from the paper.
SCRIPT_RATES = [.25, .25, .125, .125, .0625, .0625, .0625, .125,
                .25, .25, .125, .125, .25, .125, .125, .125, .125, .0625,
                .0625, .0625, .0625, .125, .125, .25]
SCRIPT_ACTIONS = [NONE, NONE, ROLLBACK, NONE, ROLLBACK, NONE, NONE, SAVE,
                  SAVE, NONE, NONE, NONE, SAVE, ROLLBACK, NONE, NONE, NONE, ROLLBACK,
                  NONE, NONE, NONE, SAVE, NONE, SAVE]


def test_reference_agrees_with_the_hand_computed_table():
  algorithm = algorithm1(0.25, 3, 10.0)
  next(algorithm)
  got = [algorithm.send(cost) for cost in SCRIPT]
  assert [g[0] for g in got] == SCRIPT_RATES
  assert [g[3] for g in got] == SCRIPT_ACTIONS
  assert [g[1] for g in got] == [1] * 7 + [2] * 17


def _make_step(tx, window):
  def step(params, state, grads, value):
    extra = {"value": value} if window else {}
    updates, state = tx.update(grads, state, params, **extra)
    new_params = optax_lr.apply_updates(params, updates, state)
    return new_params, state, optax.apply_updates(params, updates)

  return jax.jit(step)


def _check(state, params, ref):
  # Exact while the numbers stay dyadic with few bits; long runs at large
  # rates round in float32 where the reference does not.
  np.testing.assert_allclose(np.asarray(params["w"]), ref.params, rtol=1e-6, atol=0)
  assert float(optax_lr.current_lr(state)) == ref.lr
  assert int(state.phase) == ref.phase
  assert float(state.best_cost) == np.float32(ref.best) or (
      math.isinf(ref.best) and math.isinf(float(state.best_cost))
  )
  assert int(state.pending) == PENDING_CODE[ref.pending]


def run_script(costs, *, window, decay=0.0, calls_per_epoch=2, poison=(), warmup=3):
  """Drives aalr and the reference through `costs`, checking every call.

  Observe mode: `calls_per_epoch` update calls, then `observe(cost)`. Window
  mode: the update's `value` is the epoch's cost, NaN on rollback calls (which
  belong to no window). Epochs listed in `poison` get NaN/Inf gradients, so
  the params are NaN or Inf when the rollback comes.
  """
  direction = optax.trace(decay) if decay else None
  tx = optax_lr.aalr(
      0.25, warmup_patience=warmup, direction=direction,
      steps_per_epoch=calls_per_epoch if window else None,
  )
  params = {"w": jnp.asarray(PARAMS0, jnp.float32)}
  state = optax_lr.observe(tx.init(params), 10.0)  # J(θ) of the initial model
  ref = Reference(0.25, warmup, PARAMS0, decay, 10.0)
  step = _make_step(tx, window)
  observe = jax.jit(lambda s, c: optax_lr.observe(s, c))  # own jit cache
  log = []
  for epoch, cost in enumerate(costs):
    bad = poison[epoch] if epoch in poison else None
    grads = GRADS if bad is None else np.full(3, bad)
    done = 0
    while done < calls_per_epoch:
      rolled_back = ref.call(grads)
      value = jnp.float32(np.nan if rolled_back else cost)
      new_params, state, naive = step(
          params, state, {"w": jnp.asarray(grads, jnp.float32)}, value
      )
      assert bool(state.rolled_back) == rolled_back
      if rolled_back:
        log.append((epoch, np.asarray(params["w"]), np.asarray(new_params["w"])))
      else:  # apply_updates is optax.apply_updates on ordinary calls
        np.testing.assert_array_equal(np.asarray(new_params["w"]), np.asarray(naive["w"]))
      params = new_params
      if window and rolled_back:
        continue  # a rollback call trains nothing and is part of no epoch
      done += 1
      if window and done == calls_per_epoch:
        ref.epoch_end(cost)
      if not (window and done == calls_per_epoch):
        assert int(state.pending) == 0
      _check(state, params, ref)
    if not window:
      state = observe(state, jnp.float32(cost))
      ref.epoch_end(cost)
      _check(state, params, ref)
    if decay:  # the direction state follows the reference's too
      np.testing.assert_array_equal(
          np.asarray(state.inner_state.trace["w"]), np.float32(ref.trace)
      )
  assert step._cache_size() == 1 and observe._cache_size() <= 1
  return state, ref, log


@pytest.mark.parametrize("window", [False, True], ids=["observe", "window"])
def test_scripted_run_rates_phases_saves_and_rollbacks(window):
  poison = {4: np.nan, 13: np.inf, 17: np.nan}
  state, ref, log = run_script(SCRIPT, window=window, poison=poison)
  assert ref.lr == SCRIPT_RATES[-1]
  # Rollbacks decided after epochs 2 and 4 (phase 1) go to the initial
  # params, those after 13 and 17 (phase 2) to the checkpoint saved on the
  # first call of epoch 13; each is carried out by the next epoch's first call.
  assert [entry[0] for entry in log] == [3, 5, 14, 18]
  for epoch, before, after in log:
    if epoch in (5, 14, 18):  # landed from NaN / Inf params
      assert not np.all(np.isfinite(before))
    target = PARAMS0 if epoch < 8 else checkpoint_of_epoch_13(window)
    np.testing.assert_array_equal(after, np.float32(target))


def checkpoint_of_epoch_13(window):
  """The params saved on the first call of epoch 13, recomputed by hand.

  Phase 1 restarts from PARAMS0 after epoch 4's rollback: epoch 5 trains one
  call (its first call is the rollback) in observe mode, two in window mode;
  then epochs 6..12 train two calls each, at the rates in force.
  """
  rates_in_force = [0.25] + SCRIPT_RATES  # η during epoch k is rates_in_force[k]
  params = PARAMS0.copy()
  calls = {5: 1 if not window else 2}
  for epoch in range(5, 13):
    for _ in range(calls.get(epoch, 2)):
      params = params - rates_in_force[epoch] * GRADS
  return params


def test_scripted_run_over_momentum_restores_the_direction_state():
  poison = {13: np.inf}
  state, ref, log = run_script(SCRIPT[:16], window=False, decay=0.5, poison=poison)
  assert [entry[0] for entry in log] == [3, 5, 14]


@pytest.mark.parametrize("window", [False, True], ids=["observe", "window"])
def test_random_cost_scripts_match_the_reference(window):
  rng = np.random.default_rng(6 + window)
  costs = list(np.round(5.0 - 0.05 * np.arange(70) + rng.normal(0, 0.4, 70), 2))
  for i in rng.choice(70, 6, replace=False):
    costs[i] = float(rng.choice([np.nan, np.inf, -np.inf]))
  costs = [float(np.float32(c)) for c in costs]
  _, ref, _ = run_script(costs, window=window, decay=0.5, calls_per_epoch=4, warmup=2)
  # The scripts reach every branch: rollbacks and saves in both phases.
  for event in [(1, ROLLBACK), (1, SAVE), (2, SAVE), (2, ROLLBACK), (2, NONE)]:
    assert event in ref.history, event


def test_phase_one_rollback_restores_a_fresh_adam_state():
  direction = optax.scale_by_adam()
  tx = optax_lr.aalr(0.25, warmup_patience=3, direction=direction)
  params = {"w": jnp.asarray(PARAMS0, jnp.float32)}
  grads = {"w": jnp.asarray(GRADS, jnp.float32)}
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes int and float
    state = optax_lr.observe(tx.init(params), 10.0)
    fresh = direction.init(params)
    step = jax.jit(lambda p, s: tx.update(grads, s, p))
    for _ in range(3):
      updates, state = step(params, state)
      params = optax_lr.apply_updates(params, updates, state)
    assert int(state.inner_state.count) == 3
    state = optax_lr.observe(state, 11.0)  # worse: halve, roll back
    updates, state = step(params, state)
    params = optax_lr.apply_updates(params, updates, state)
  np.testing.assert_array_equal(np.asarray(params["w"]), np.float32(PARAMS0))
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.inner_state, fresh)
  assert float(optax_lr.current_lr(state)) == 0.125


def test_initial_cost_sets_best_only_and_costs_without_it_start_from_inf():
  tx = optax_lr.aalr(0.5, warmup_patience=2)
  params = {"w": jnp.ones(2)}
  state = optax_lr.observe(tx.init(params), 3.0)
  assert float(state.best_cost) == 3.0
  assert int(state.good_epochs) == 0 and int(state.pending) == 0
  assert float(optax_lr.current_lr(state)) == 0.5
  state = optax_lr.observe(state, np.nan)  # a NaN initial loss sets nothing
  assert float(state.best_cost) == 3.0 and float(optax_lr.current_lr(state)) == 0.5
  # Without an initial cost, L* = +inf: the first epoch is an improvement.
  state = tx.init(params)
  _, state = tx.update(params, state, params)
  state = optax_lr.observe(state, 100.0)
  assert float(state.best_cost) == 100.0 and int(state.good_epochs) == 1


def test_two_epoch_ends_without_an_update_keep_a_pending_rollback():
  tx = optax_lr.aalr(0.5, warmup_patience=1)
  params = {"w": jnp.ones(2)}
  state = optax_lr.observe(tx.init(params), 3.0)
  _, state = tx.update(params, state, params)
  state = optax_lr.observe(state, 4.0)  # worse: rollback pending
  state = optax_lr.observe(state, 2.0)  # good, ends phase 1: a save
  assert int(state.phase) == 2 and int(state.pending) == 2


def test_rate_stays_positive_and_finite_under_endless_halving_and_doubling():
  tx = optax_lr.aalr(0.1, warmup_patience=1)
  params = {"w": jnp.ones(2)}

  @jax.jit
  def run(costs):
    def body(state, cost):
      _, state = tx.update(params, state, params)
      state = optax_lr.observe(state, cost)
      return state, optax_lr.current_lr(state)

    return jax.lax.scan(body, tx.init(params), costs)

  _, rates = run(jnp.full(400, jnp.nan, jnp.float32))  # phase 1 halves forever
  assert np.all(np.asarray(rates) > 0)
  _, rates = run(-jnp.arange(400, dtype=jnp.float32))  # phase 2 doubles forever
  assert np.all(np.isfinite(np.asarray(rates))) and np.all(np.asarray(rates) > 0)


def test_bf16_params_keep_their_dtype_on_steps_and_rollbacks():
  tx = optax_lr.aalr(0.5, warmup_patience=1)
  params = {"w": jnp.array([1.0, 2.0], jnp.bfloat16)}
  grads = {"w": jnp.array([0.5, 0.25], jnp.bfloat16)}
  state = optax_lr.observe(tx.init(params), 1.0)
  assert state.best_cost.dtype == jnp.float32
  updates, state = tx.update(grads, state, params)
  assert updates["w"].dtype == jnp.bfloat16
  state = optax_lr.observe(state, 2.0)
  moved = optax_lr.apply_updates(params, updates, state)
  updates, state = tx.update(grads, state, moved)
  assert updates["w"].dtype == jnp.bfloat16 and bool(state.rolled_back)
  back = optax_lr.apply_updates(moved, updates, state)
  np.testing.assert_array_equal(np.asarray(back["w"]), np.asarray(params["w"]))


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("rate", [0.0, -0.1, np.nan, np.inf, True, "0.1"])
def test_bad_learning_rate(rate):
  with pytest.raises(ValueError, match="learning_rate"):
    optax_lr.aalr(rate)


@pytest.mark.parametrize("patience", [0, -1, 2.5, True, None])
def test_bad_warmup_patience(patience):
  with pytest.raises(ValueError, match="warmup_patience"):
    optax_lr.aalr(0.1, warmup_patience=patience)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_steps_per_epoch(steps):
  with pytest.raises(ValueError, match="steps_per_epoch"):
    optax_lr.aalr(0.1, steps_per_epoch=steps)


def test_update_needs_params_and_window_mode_needs_value():
  params = {"w": jnp.ones(2)}
  tx = optax_lr.aalr(0.1)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))
  tx = optax_lr.aalr(0.1, steps_per_epoch=3)
  with pytest.raises(ValueError, match="value"):
    tx.update(params, tx.init(params), params)
