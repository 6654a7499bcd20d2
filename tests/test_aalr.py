"""Tests for optax_lr.aalr: Algorithm 1's rates, phases, saves and rollbacks.

`algorithm1` below is the paper's pseudocode transcribed loop for loop as a
Python coroutine (send the loss of each epoch, get back η, the phase, L* and
what happens to the model); `Reference` adds the params and the direction
state around it, with saves and rollbacks carried out by the next update call
as the design page (docs/design.md) says. Neither shares code with the
implementation, which is a flat state machine over scalars in the optimizer
state.

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

import _inject
import optax_lr

NONE, SAVE, ROLLBACK = "none", "save", "rollback"
PENDING_CODE = {NONE: 0, SAVE: 1, ROLLBACK: 2}


def algorithm1(lr, warmup, best=math.inf):
  """The paper's Algorithm 1; `best` is J(θ) of the initial model."""
  diverged = lambda loss: not math.isfinite(loss)  # the paper's "L is NAN"
  initial = best  # the cost of the reloaded θ (docs/design.md: θ and L* together)
  loss = yield None
  # Phase 1: initial LR exploration.
  i = 0
  while True:
    i += 1
    if loss > best or diverged(loss):
      lr, i, best = lr / 2, 0, initial
      loss = yield lr, 1, best, ROLLBACK  # reload θ and L*, reset the optimizer
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
SCRIPT = [
  9.0,
  8.0,
  8.5,
  7.0,
  np.nan,
  7.0,
  6.0,
  5.0,  # phase 1
  4.0,
  4.5,
  4.2,
  4.1,
  3.9,
  np.inf,
  3.0,
  5.0,
  2.0,
  np.nan,
  3.0,
  3.0,
  3.0,
  3.5,
  3.5,
  3.4,
]
# η after each epoch end from 0.25, worked out by hand from the paper.
SCRIPT_RATES = [
  0.25,
  0.25,
  0.125,
  0.125,
  0.0625,
  0.0625,
  0.0625,
  0.125,
  0.25,
  0.25,
  0.125,
  0.125,
  0.25,
  0.125,
  0.125,
  0.125,
  0.125,
  0.0625,
  0.0625,
  0.0625,
  0.0625,
  0.125,
  0.125,
  0.25,
]
SCRIPT_ACTIONS = [
  NONE,
  NONE,
  ROLLBACK,
  NONE,
  ROLLBACK,
  NONE,
  NONE,
  SAVE,
  SAVE,
  NONE,
  NONE,
  NONE,
  SAVE,
  ROLLBACK,
  NONE,
  NONE,
  NONE,
  ROLLBACK,
  NONE,
  NONE,
  NONE,
  SAVE,
  NONE,
  SAVE,
]


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

  Observe mode: the initial model's cost 10 is observed, then each epoch is
  `calls_per_epoch` update calls and `observe(cost)`. Window mode (no cost
  observed at all): the update's `value` is the epoch's cost, NaN on
  rollback calls (which belong to no window). Epochs listed in `poison` get
  NaN/Inf gradients, so the params are NaN or Inf when the rollback comes.
  """
  direction = optax.trace(decay) if decay else None
  tx = optax_lr.aalr(
    0.25,
    warmup_patience=warmup,
    direction=direction,
    steps_per_epoch=calls_per_epoch if window else None,
  )
  params = {"w": jnp.asarray(PARAMS0, jnp.float32)}
  state = tx.init(params)
  if window:
    # The update call ends every epoch, and observe refuses the state: the
    # initial model's cost is not observed (L* and L_0 start at +inf).
    ref = Reference(0.25, warmup, PARAMS0, decay, math.inf)
  else:
    state = optax_lr.observe(state, 10.0)  # J(θ) of the initial model
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
      new_params, state, naive = step(params, state, {"w": jnp.asarray(grads, jnp.float32)}, value)
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
        np.asarray(state.direction_state.trace["w"]), np.float32(ref.trace)
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
    assert int(state.direction_state.count) == 3
    state = optax_lr.observe(state, 11.0)  # worse: halve, roll back
    updates, state = step(params, state)
    params = optax_lr.apply_updates(params, updates, state)
  np.testing.assert_array_equal(np.asarray(params["w"]), np.float32(PARAMS0))
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.direction_state, fresh)
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


# ------------------------------------------- checkpoint cost (issue 11)


def _quadratic_run(tx, noise, *, calls_per_epoch=2):
  """Trains loss(w) = w²/2 (gradient w) from w = 4; epoch k's cost is the loss
  of the params at its end plus `noise[k]`. Returns (η, phase, L*) after each
  epoch end, and the final state and params."""
  params = {"w": jnp.full(1, 4.0, jnp.float32)}
  loss = lambda p: 0.5 * jnp.sum(p["w"] ** 2)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax_lr.apply_updates(params, updates, state), state

  state = optax_lr.observe(tx.init(params), loss(params))  # L0 = 8
  log = []
  for extra in noise:
    for _ in range(calls_per_epoch):
      params, state = step(params, state)
    state = optax_lr.observe(state, loss(params) + jnp.float32(extra))
    log.append((float(state.learning_rate), int(state.phase), float(state.best_cost)))
  return log, state, params


def test_phase_one_recovers_after_one_noisy_epoch():
  # w ← (1 - η) w, two calls per epoch, L0 = 8, warmup_patience = 3; epoch 2's
  # cost carries +1 of noise. By hand:
  #   epoch  η   w after the calls      cost              decision
  #   0     .5   2, 1                   .5                good, i = 1
  #   1     .5   .5, .25                .03125            good, i = 2
  #   2     .5   .125, .0625            .001953125 + 1    bad: η/2, reload θ and L* = 8
  #   3     .25  rollback to 4, 3       4.5               good (4.5 <= 8), i = 1
  #   4     .25  2.25, 1.6875           1.423828125       good, i = 2
  #   5     .25  1.265625, .94921875    243²/2¹⁷         good, i = 3: phase 2, 2η, save
  #   6     .5   save; .474609375, .2373046875
  #                                     243²/2²¹         improved: 2η, save
  # Keeping L* = .03125 of the abandoned attempt instead, every restart
  # (cost 4.5, then 6.125, ...) would be "worse": η = .5 / 2**5 after epoch 6
  # and halving for ever, in phase 1.
  tx = optax_lr.aalr(0.5, warmup_patience=3)
  log, state, _ = _quadratic_run(tx, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
  assert [entry[0] for entry in log] == [0.5, 0.5, 0.25, 0.25, 0.25, 0.5, 1.0]
  assert [entry[1] for entry in log] == [1, 1, 1, 1, 1, 2, 2]
  assert [entry[2] for entry in log] == [
    0.5,
    0.03125,
    8.0,
    4.5,
    1.423828125,
    0.45050811767578125,
    0.028156757354736328,
  ]
  # The checkpoint saved on epoch 6's first call, with its cost.
  assert float(state.checkpoint_cost) == 0.45050811767578125
  np.testing.assert_array_equal(np.asarray(state.checkpoint["w"]), [0.94921875])
  assert int(state.pending) == PENDING_CODE[SAVE]


def test_noisy_costs_do_not_halve_the_rate_for_ever():
  # The setting of issue 11: η0 = 0.05 and the defaults, a cost with 30%
  # multiplicative noise; keeping L* of the abandoned attempt took η to 9e-11
  # in 30 epochs. Reloading L* with θ, phase 1 ends and η grows again.
  tx = optax_lr.aalr(0.05)
  rng = np.random.default_rng(2)
  params = {"w": jnp.array([3.0, -2.0, 1.0], jnp.float32)}
  loss = lambda p: 0.5 * jnp.sum(p["w"] ** 2)

  @jax.jit
  def epoch(params, state):
    for _ in range(10):
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      params = optax_lr.apply_updates(params, updates, state)
    return params, state

  state = optax_lr.observe(tx.init(params), loss(params))
  rates, rollbacks = [], 0
  for _ in range(30):
    params, state = epoch(params, state)
    noisy = float(loss(params)) * (1.0 + 0.3 * rng.standard_normal())
    state = optax_lr.observe(state, noisy)
    rollbacks += int(state.phase) == 1 and int(state.pending) == PENDING_CODE[ROLLBACK]
    rates.append(float(state.learning_rate))
  assert rollbacks >= 1  # the noise did make phase 1 restart
  assert int(state.phase) == 2
  assert min(rates) >= 0.05 / 4 and rates[-1] >= 0.05


def _window_run(tx, values, steps_per_epoch):
  """Feeds ``values`` one per update call (gradient 0); the state after each epoch."""
  params = {"w": jnp.ones(2, jnp.float32)}
  update = jax.jit(tx.update)
  state = tx.init(params)
  after_epoch = []
  grads = {"w": jnp.zeros(2, jnp.float32)}
  for t, value in enumerate(values):
    updates, state = update(grads, state, params, value=jnp.float32(value))
    params = optax_lr.apply_updates(params, updates, state)
    if (t + 1) % steps_per_epoch == 0:
      after_epoch.append(state)
  return after_epoch


def test_window_mode_phase_one_halves_only_on_a_rise_beyond_the_noise():
  # Three calls per epoch. Epoch 0: 1, 2, 3 (mean 2, sample variance 1, SE
  # 1/sqrt(3)): L* = 2 (from +inf). The margin is 2·sqrt(2)·SE = 1.63299.
  # Epoch 1: 2.5, 3.5, 4.5, mean 3.5 <= 2 + 1.633: within the noise, good
  # (the paper's L > L* would halve here), L* = 3.5, i = 2. Epoch 2: 4.5,
  # 5.5, 6.5, mean 5.5 > 3.5 + 1.633 = 5.133: bad, halve and roll back.
  tx = optax_lr.aalr(0.4, warmup_patience=5, steps_per_epoch=3)
  states = _window_run(tx, [1, 2, 3, 2.5, 3.5, 4.5, 4.5, 5.5, 6.5], 3)
  assert [float(s.best_cost) for s in states[:2]] == [2.0, 3.5]
  assert [int(s.good_epochs) for s in states] == [1, 2, 0]
  assert [float(s.learning_rate) for s in states] == pytest.approx([0.4, 0.4, 0.2])
  assert int(states[-1].pending) == PENDING_CODE[ROLLBACK]
  margin = 2.0 * math.sqrt(2.0) * math.sqrt(1.0 / 3.0)
  assert 3.5 <= 2.0 + margin and 5.5 > 3.5 + margin


def test_window_mode_constant_windows_keep_the_papers_strict_test():
  # No spread within a window, no margin: 2.0 after 1.0 is worse.
  tx = optax_lr.aalr(0.4, warmup_patience=5, steps_per_epoch=2)
  states = _window_run(tx, [1.0, 1.0, 1.0 + 1e-6, 1.0 + 1e-6], 2)
  assert [float(s.learning_rate) for s in states] == pytest.approx([0.4, 0.2])


def test_window_mode_minibatch_noise_does_not_collapse_a_small_rate():
  # A rate too small to move the loss within an epoch's noise: each window's
  # mean is a coin flip against L*. With the paper's strict test every flip
  # halved and restarted, and the rate spiralled to 0 (1e-4 -> 1e-9 in 48
  # epochs on noisy least squares). Here the loss ignores the params: pure
  # noise, 20 calls per epoch, 60 epochs.
  rng = np.random.default_rng(0)
  values = 1.0 + 0.1 * rng.standard_normal(20 * 60)
  states = _window_run(optax_lr.aalr(1e-4, steps_per_epoch=20), values, 20)
  rates = np.asarray([s.learning_rate for s in states]) / np.float32(1e-4)
  phases = np.asarray([s.phase for s in states])
  # Phase 1 ends (with the strict test, ten falling means in a row under pure
  # noise have probability 1/10!, and about every other epoch halved).
  assert phases[20] == 2 and np.all(phases[20:] == 2)
  assert rates[phases == 1].min() >= 0.5
  # Phase 2 halves a rate that never improves with its patience doubled each
  # time: a few halvings in 60 epochs, logarithmic in the epochs, not a spiral.
  assert rates.min() >= 1 / 8


@pytest.mark.parametrize("initial_cost", [None, 5.0], ids=["no_initial", "initial"])
def test_phase_one_rollback_restores_best_cost_to_the_initial_models(initial_cost):
  tx = optax_lr.aalr(0.5, warmup_patience=3)
  params = {"w": jnp.ones(2)}
  state = tx.init(params)
  assert math.isinf(float(state.checkpoint_cost)) and state.checkpoint_cost.dtype == jnp.float32
  if initial_cost is not None:
    state = optax_lr.observe(state, np.nan)  # a diverged initial cost sets nothing
    assert math.isinf(float(state.checkpoint_cost))
    state = optax_lr.observe(state, initial_cost)
    assert float(state.checkpoint_cost) == float(state.best_cost) == 5.0
  expected = math.inf if initial_cost is None else 5.0
  _, state = tx.update(params, state, params)
  state = optax_lr.observe(state, 2.0)  # good: L* = 2
  _, state = tx.update(params, state, params)
  state = optax_lr.observe(state, 2.5)  # bad: halve, reload θ and L*
  assert int(state.pending) == PENDING_CODE[ROLLBACK]
  assert float(state.best_cost) == expected == float(state.checkpoint_cost)
  _, state = tx.update(params, state, params)  # the rollback call
  assert bool(state.rolled_back) and float(state.best_cost) == expected
  # From the initial model, 4.5 is judged against L0, not against 2.
  state = optax_lr.observe(state, 4.5)
  assert int(state.good_epochs) == 1 and float(state.best_cost) == 4.5
  assert float(optax_lr.current_lr(state)) == 0.25
  _, state = tx.update(params, state, params)
  state = optax_lr.observe(state, 6.0)  # worse than 4.5: bad again
  assert float(state.best_cost) == expected
  _, state = tx.update(params, state, params)
  state = optax_lr.observe(state, 6.0)  # accepted only without an initial cost
  if initial_cost is None:
    assert int(state.good_epochs) == 1 and float(state.best_cost) == 6.0
    assert float(optax_lr.current_lr(state)) == 0.125
  else:
    assert int(state.good_epochs) == 0 and float(state.best_cost) == 5.0
    assert float(optax_lr.current_lr(state)) == 0.0625


def test_phase_two_rollback_restores_the_cost_saved_with_the_checkpoint():
  tx = optax_lr.aalr(0.5, warmup_patience=1)
  grads = {"w": jnp.ones(2)}
  params = {"w": jnp.array([1.0, 2.0])}
  step = jax.jit(lambda p, s: tx.update(grads, s, p))

  def call(params, state):
    updates, state = step(params, state)
    return optax_lr.apply_updates(params, updates, state), state

  state = optax_lr.observe(tx.init(params), 5.0)
  params, state = call(params, state)  # w = [.5, 1.5]
  state = optax_lr.observe(state, 4.0)  # phase 2, η = 1, save pending
  assert int(state.phase) == 2 and float(state.best_cost) == 4.0
  assert float(state.checkpoint_cost) == 5.0  # the save is not carried out yet
  params, state = call(params, state)  # saves [.5, 1.5] with 4; w = [-.5, .5]
  assert float(state.checkpoint_cost) == 4.0
  state = optax_lr.observe(state, 3.0)  # improved: η = 2, save pending
  params, state = call(params, state)  # saves [-.5, .5] with 3; w = [-2.5, -1.5]
  assert float(state.checkpoint_cost) == 3.0
  state = optax_lr.observe(state, 2.0)  # improved: L* = 2, save pending ...
  assert float(state.best_cost) == 2.0 and int(state.pending) == PENDING_CODE[SAVE]
  state = optax_lr.observe(state, np.inf)  # ... then diverged: the rollback wins
  assert int(state.pending) == PENDING_CODE[ROLLBACK]
  assert float(state.best_cost) == 3.0 and float(optax_lr.current_lr(state)) == 2.0
  params, state = call(params, state)
  np.testing.assert_array_equal(np.asarray(params["w"]), [-0.5, 0.5])
  assert float(state.best_cost) == float(state.checkpoint_cost) == 3.0


def test_the_rollback_call_restores_best_cost_after_later_epoch_ends():
  tx = optax_lr.aalr(0.5, warmup_patience=1)
  params = {"w": jnp.ones(2)}
  state = optax_lr.observe(tx.init(params), 3.0)
  _, state = tx.update(params, state, params)
  state = optax_lr.observe(state, 4.0)  # worse: rollback pending, L* = 3
  assert float(state.best_cost) == 3.0
  state = optax_lr.observe(state, 2.0)  # judges params the rollback discards
  assert int(state.phase) == 2 and float(state.best_cost) == 2.0
  _, state = tx.update(params, state, params)  # lands on the initial model
  assert bool(state.rolled_back) and float(state.best_cost) == 3.0
  assert float(state.checkpoint_cost) == 3.0
  state = optax_lr.observe(state, 2.5)  # beats the initial model's 3: improved
  assert int(state.pending) == PENDING_CODE[SAVE]
  assert float(optax_lr.current_lr(state)) == 1.0


# ---------------------------------------------------------------- best_params


def test_best_params_of_states_without_a_checkpoint_is_params():
  params = {"w": jnp.array([1.0, 2.0])}
  # ASLR keeps a checkpoint only with its safety net (tests/test_safety.py).
  no_net = optax.chain(optax.adam(1e-3), optax_lr.aslr(0.1, safety_net=False))
  for tx in (optax.sgd(0.1), no_net):
    assert optax_lr.best_params(tx.init(params), params) is params


def _best_params_script(tx, params, check, calls_per_step=1):
  """warmup_patience=1, η = .5, gradient 1 on `x`: phase 1, then phase 2 with
  a checkpoint that is not the current params. `check(state, params,
  expected_x)` runs at each stage."""
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  step = jax.jit(lambda p, s: tx.update(grads, s, p))

  def call(params, state):
    for _ in range(calls_per_step):
      updates, state = step(params, state)
      params = optax_lr.apply_updates(params, updates, state)
    return params, state

  state = optax_lr.observe(tx.init(params), 4.0)
  check(state, params, [1.0, 2.0])  # the initial model, cost 4
  params, state = call(params, state)  # x = [.5, 1.5]
  # Params whose cost nobody has seen yet: the best model seen is the initial one.
  check(state, params, [1.0, 2.0])
  state = optax_lr.observe(state, 3.0)  # phase 2, save pending
  check(state, params, [0.5, 1.5])  # the params the save will store
  params, state = call(params, state)  # saves [.5, 1.5]; η = 1: x = [-.5, .5]
  np.testing.assert_array_equal(np.asarray(params["x"]), [-0.5, 0.5])
  check(state, params, [0.5, 1.5])  # phase 2: the checkpoint
  state = optax_lr.observe(state, 3.5)  # not better: second chance
  check(state, params, [0.5, 1.5])
  state = optax_lr.observe(state, np.nan)  # diverged: rollback pending
  check(state, params, [0.5, 1.5])
  return state, params


def test_best_params_follows_the_phase_and_the_pending_decision():
  tx = optax_lr.aalr(0.5, warmup_patience=1)

  def check(state, params, expected):
    best = optax_lr.best_params(state, params)
    np.testing.assert_array_equal(np.asarray(best["x"]), expected)

  _best_params_script(tx, {"x": jnp.array([1.0, 2.0])}, check)
  # Phase 1 with a rollback pending: the initial model it will restart from.
  params = {"x": jnp.array([1.0, 2.0])}
  state = optax_lr.observe(tx.init(params), 4.0)
  updates, state = tx.update(params, state, params)
  moved = optax_lr.apply_updates(params, updates, state)  # x = [.5, 1.]
  state = optax_lr.observe(state, np.nan)
  np.testing.assert_array_equal(np.asarray(optax_lr.best_params(state, moved)["x"]), [1.0, 2.0])


def test_best_params_prefers_params_observed_better_between_checks():
  # Phase 2 looks at costs only every p epochs. A cost below the checkpoint's
  # seen between checks changes nothing in the schedule, but the params it
  # was observed at are the better model, until the next update call moves
  # them. warmup_patience=1, η = .5, gradient 1 on `x`.
  tx = optax_lr.aalr(0.5, warmup_patience=1)
  step = jax.jit(lambda p, s: tx.update({"x": jnp.ones(2)}, s, p))

  def call(params, state):
    updates, state = step(params, state)
    return optax_lr.apply_updates(params, updates, state), state

  def best(state, params):
    return np.asarray(optax_lr.best_params(state, params)["x"]).tolist()

  params = {"x": jnp.array([1.0, 2.0])}
  state = optax_lr.observe(tx.init(params), 4.0)
  params, state = call(params, state)  # x = [.5, 1.5]
  state = optax_lr.observe(state, 3.0)  # phase 2, save pending, η = 1
  params, state = call(params, state)  # saves [.5, 1.5] at cost 3; x = [-.5, .5]
  state = optax_lr.observe(state, 3.5)  # a check, worse: second chance
  params, state = call(params, state)  # x = [-1.5, -.5]
  state = optax_lr.observe(state, 3.4)  # worse twice: η = .5, p = 2
  assert (float(state.learning_rate), int(state.patience)) == (0.5, 2)
  assert best(state, params) == [0.5, 1.5]  # 3.4 is not below 3
  params, state = call(params, state)  # x = [-2, -1]
  state = optax_lr.observe(state, 2.0)  # not a check: the schedule ignores it
  assert int(state.pending) == PENDING_CODE[NONE] and float(state.best_cost) == 3.0
  assert (float(state.learning_rate), int(state.epochs_to_check)) == (0.5, 1)
  assert best(state, params) == [-2.0, -1.0]  # ... but these params cost 2 < 3
  params, state = call(params, state)  # stores [-2, -1]; x = [-2.5, -1.5], unseen
  assert best(state, params) == [-2.0, -1.0]  # kept, though the checkpoint is older
  np.testing.assert_array_equal(np.asarray(state.checkpoint["x"]), [0.5, 1.5])
  state = optax_lr.observe(state, np.nan)  # a check, diverged: rollback pending
  assert best(state, params) == [-2.0, -1.0]
  params, state = call(params, state)  # the rollback lands on the checkpoint
  assert np.asarray(params["x"]).tolist() == [0.5, 1.5]
  assert best(state, params) == [-2.0, -1.0] and float(state.best_model_cost) == 2.0


@pytest.mark.parametrize("worse_cost", [3.5, 4.5])
def test_best_params_keeps_the_model_a_phase_1_restart_abandons(worse_cost):
  # A phase-1 epoch worse than the one before it (cost 3, x = [.5, 1.5])
  # restarts from the initial model (cost 4). The model of cost 3 was never a
  # checkpoint, and the restart abandons it; it is still the best model seen,
  # before the restart runs, after it, and after a slower second attempt.
  tx = optax_lr.aalr(0.5, warmup_patience=3)
  step = jax.jit(lambda p, s: tx.update({"x": jnp.ones(2)}, s, p))
  params = {"x": jnp.array([1.0, 2.0])}
  state = optax_lr.observe(tx.init(params), 4.0)
  for cost in (3.0, worse_cost):
    updates, state = step(params, state)
    params = optax_lr.apply_updates(params, updates, state)  # x -= .5
    state = optax_lr.observe(state, cost)
  assert int(state.phase) == 1 and int(state.pending) == PENDING_CODE[ROLLBACK]
  assert float(state.checkpoint_cost) == 4.0 and float(state.best_model_cost) == 3.0

  def best():
    return np.asarray(optax_lr.best_params(state, params)["x"]).tolist()

  assert best() == [0.5, 1.5]
  updates, state = step(params, state)  # the restart: back to the initial model
  params = optax_lr.apply_updates(params, updates, state)
  assert np.asarray(params["x"]).tolist() == [1.0, 2.0] and best() == [0.5, 1.5]
  for cost in (3.9, 3.2):  # η = .25: two good epochs, neither below 3
    updates, state = step(params, state)
    params = optax_lr.apply_updates(params, updates, state)
    state = optax_lr.observe(state, cost)
  assert int(state.good_epochs) == 2 and best() == [0.5, 1.5]


def test_best_params_in_window_mode_weighs_the_last_window():
  # In window mode an epoch ends inside an update call, and its cost is the
  # window's mean loss: the cost AALR saves a checkpoint on, so it weighs the
  # params that call returns against the checkpoint in the same currency.
  tx = optax_lr.aalr(0.5, warmup_patience=1, steps_per_epoch=1)
  step = jax.jit(lambda p, s, v: tx.update({"x": jnp.ones(2)}, s, p, value=v))

  def call(params, state, value):
    updates, state = step(params, state, value)
    return optax_lr.apply_updates(params, updates, state), state

  def best(state, params):
    return np.asarray(optax_lr.best_params(state, params)["x"]).tolist()

  params = {"x": jnp.array([1.0, 2.0])}
  state = tx.init(params)
  for value in (4.0, 5.0, 5.0):  # phase 2; saved at 4; worse twice: p = 2
    params, state = call(params, state, value)
  assert (int(state.phase), int(state.patience), float(state.checkpoint_cost)) == (2, 2, 4.0)
  checkpoint = np.asarray(state.checkpoint["x"]).tolist()
  assert best(state, params) == checkpoint
  params, state = call(params, state, 1.0)  # below 4, between checks
  assert int(state.pending) == PENDING_CODE[NONE] and bool(state.observed_better)
  recorded = np.asarray(params["x"]).tolist()
  assert best(state, params) == recorded != checkpoint
  params, state = call(params, state, np.inf)  # stores them; a check, diverged
  assert int(state.pending) == PENDING_CODE[ROLLBACK] and not bool(state.observed_better)
  assert best(state, params) == recorded  # cost 1, below the checkpoint's 4
  params, state = call(params, state, 2.0)  # the rollback: back on the checkpoint
  assert np.asarray(params["x"]).tolist() == checkpoint and best(state, params) == recorded


def test_best_params_inside_chain_and_under_jit():
  tx = optax.chain(optax.clip_by_global_norm(100.0), optax_lr.aalr(0.5, warmup_patience=1))
  best_params = jax.jit(optax_lr.best_params)

  def check(state, params, expected):
    best = best_params(state, params)
    np.testing.assert_array_equal(np.asarray(best["x"]), expected)
    assert best["x"].dtype == jnp.float32

  _best_params_script(tx, {"x": jnp.array([1.0, 2.0])}, check)
  assert best_params._cache_size() == 1


def test_best_params_under_partition_keeps_the_other_params():
  # AALR owns `x`; `y` follows SGD at .25 and keeps the caller's value.
  tx = optax.partition(
    {"a": optax_lr.aalr(0.5, warmup_patience=1), "b": optax.sgd(0.25)},
    {"x": "a", "y": "b"},
  )
  seen = []

  def check(state, params, expected):
    best = optax_lr.best_params(state, params)
    np.testing.assert_array_equal(np.asarray(best["x"]), expected)
    np.testing.assert_array_equal(np.asarray(best["y"]), np.asarray(params["y"]))
    seen.append(float(best["y"][0]))

  _best_params_script(tx, {"x": jnp.array([1.0, 2.0]), "y": jnp.array([3.0])}, check)
  assert seen == [3.0, 2.75, 2.75, 2.5, 2.5, 2.5]


def test_best_params_under_multisteps():
  tx = optax.MultiSteps(optax_lr.aalr(0.5, warmup_patience=1), every_k_schedule=2)

  def check(state, params, expected):
    best = optax_lr.best_params(state, params)
    np.testing.assert_array_equal(np.asarray(best["x"]), expected)

  with jax.numpy_dtype_promotion("standard"):  # MultiSteps mixes int32 and f32
    _best_params_script(tx, {"x": jnp.array([1.0, 2.0])}, check, calls_per_step=2)


# ---------------------------------------------------------------- validation


# Bad arguments at construction: tests/test_bad_input.py.


def test_update_needs_params_and_window_mode_needs_value():
  params = {"w": jnp.ones(2)}
  tx = optax_lr.aalr(0.1)
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))
  tx = optax_lr.aalr(0.1, steps_per_epoch=3)
  with pytest.raises(ValueError, match="value"):
    tx.update(params, tx.init(params), params)


# ---------------------------------------------------------------- inject_hyperparams


_inject_params = _inject.inject_params
_inject_loss = _inject.inject_loss


def _run_side_by_side(plain, injected, steps, extra_at, cost_at):
  """Runs both (``_inject.run_side_by_side``); the plain run's ``(rate, phase)``
  after each step."""
  states = _inject.run_side_by_side(plain, injected, steps, extra_at, cost_at)
  return [(float(optax_lr.current_lr(s)), int(s.phase)) for s in states]


def test_inject_hyperparams_gives_the_same_updates_and_state():
  kwargs = dict(warmup_patience=2, direction=optax.trace(0.5))
  plain = optax_lr.aalr(0.3, **kwargs)
  injected = optax.inject_hyperparams(optax_lr.aalr, static_args=("steps_per_epoch",))(
    learning_rate=0.3, **kwargs
  )
  # Epoch ends after every 2nd call: good, worse (halve, roll back to the
  # initial params), good twice (phase 2, save), better (double, save), NaN
  # (halve, roll back to the checkpoint), worse twice (second chance, halve).
  costs = {1: 5.0, 3: 6.0, 5: 4.0, 7: 3.0, 9: 2.0, 11: np.nan, 13: 2.5, 15: 2.5}
  seen = _run_side_by_side(plain, injected, 18, lambda t: {}, costs.get)
  assert {phase for _, phase in seen} == {1, 2}
  assert len({rate for rate, _ in seen}) > 2


def test_inject_hyperparams_in_window_mode():
  plain = optax_lr.aalr(0.3, warmup_patience=1, steps_per_epoch=2)
  injected = optax.inject_hyperparams(optax_lr.aalr, static_args=("steps_per_epoch",))(
    learning_rate=0.3, warmup_patience=1, steps_per_epoch=2
  )
  values = [4.0, 4.0, 5.0, 5.0, 3.0, 3.0, 2.0, 2.0, 2.5, 2.5, 2.5, 2.5, 1.0, 1.0]
  seen = _run_side_by_side(
    plain, injected, len(values), lambda t: {"value": jnp.float32(values[t])}, lambda t: None
  )
  assert {phase for _, phase in seen} == {1, 2}
  assert len({rate for rate, _ in seen}) > 2


def test_injected_warmup_patience_takes_effect_at_the_next_update():
  params = _inject_params()
  grads = jax.grad(_inject_loss)(params)
  tx = optax.inject_hyperparams(optax_lr.aalr)(learning_rate=0.25, warmup_patience=5)
  update = jax.jit(tx.update)
  state = optax_lr.observe(jax.jit(tx.init)(params), 4.0)  # the initial model
  state.hyperparams["warmup_patience"] = jnp.asarray(1, jnp.int32)
  _, state = update(grads, state, params)
  assert int(state.inner_state.warmup_patience) == 1
  state = optax_lr.observe(state, 3.0)  # one good epoch is now enough
  assert int(state.inner_state.phase) == 2
  assert float(optax_lr.current_lr(state)) == 0.5


def test_traced_values_are_clamped_not_checked():
  tx = optax.inject_hyperparams(optax_lr.aalr)(learning_rate=np.nan, warmup_patience=-3)
  state = jax.jit(tx.init)(_inject_params()).inner_state
  assert float(state.learning_rate) == np.finfo(np.float32).tiny
  assert int(state.warmup_patience) == 1


@pytest.mark.parametrize("seed", range(12))
def test_best_params_is_the_lowest_cost_model_observed(seed):
  # An independent reference: whatever AALR's schedule does (halvings,
  # restarts, saves, second chances, NaN rollbacks), best_params is the model
  # of the lowest finite cost observed, the first one seen at that cost. The
  # reference maps each model the run visits to the costs observed at it;
  # random gradients make every visit a different model.
  rng = np.random.default_rng(seed)
  tx = optax_lr.aalr(float(rng.choice([0.1, 1.0])), warmup_patience=int(rng.integers(1, 4)))
  step = jax.jit(lambda g, p, s: tx.update(g, s, p))
  params = {"x": jnp.asarray(rng.normal(size=3), jnp.float32)}
  state = tx.init(params)
  best_cost, best_model = np.inf, None

  def observe(state, cost):
    nonlocal best_cost, best_model
    if np.isfinite(cost) and cost < best_cost:
      best_cost, best_model = cost, np.asarray(params["x"]).copy()
    return optax_lr.observe(state, cost)

  state = observe(state, float(rng.uniform(2.0, 4.0)))  # the initial model's cost
  for _ in range(40):
    if rng.uniform() < 0.6:
      grads = {"x": jnp.asarray(rng.normal(size=3), jnp.float32)}
      updates, state = step(grads, params, state)
      params = optax_lr.apply_updates(params, updates, state)
    else:
      kind = rng.uniform()
      cost = np.nan if kind < 0.1 else np.inf if kind < 0.15 else float(rng.uniform(0.0, 4.0))
      state = observe(state, cost)
    best = np.asarray(optax_lr.best_params(state, params)["x"])
    np.testing.assert_array_equal(best, best_model)
  assert float(state.best_model_cost) == np.float32(best_cost)


@pytest.mark.parametrize(
  "direction, state_size",
  [(None, 0), (optax.trace(0.9), 1), (optax.scale_by_adam(), 2)],
  ids=["sgd", "momentum", "adam"],
)
def test_param_sized_buffers_are_two_plus_the_direction_state(direction, state_size):
  # Beyond the direction's own state: the checkpoint, the best model and the
  # checkpoint's direction state (the README's method table: 2 + S), each in
  # the params' dtype and aliased with nothing, so a train step may donate them.
  params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones((2, 2), jnp.float32)}
  state = optax_lr.aalr(0.1, direction=direction).init(params)
  sized = lambda tree: [x for x in jax.tree_util.tree_leaves(tree) if x.ndim]
  extra = sized((state.checkpoint, state.best_model, state.checkpoint_direction_state))
  assert len(extra) == (2 + state_size) * 2  # two leaves per buffer
  for kept in (state.checkpoint, state.best_model):
    assert jax.tree_util.tree_map(lambda x: x.dtype, kept) == {
      "a": jnp.bfloat16,
      "b": jnp.float32,
    }
  buffers = sized((params, state))
  pointers = [x.unsafe_buffer_pointer() for x in buffers]
  assert len(set(pointers)) == len(pointers)


@pytest.mark.parametrize("steps_per_epoch", [None, 3], ids=["observe", "window"])
def test_keeping_the_best_model_copies_no_params_on_other_calls(steps_per_epoch):
  # The best model is stored in the checkpoint's lax.cond, which the step
  # reads (the rollback select), so the donated params are overwritten in
  # place after it. A cond of its own, unread by the step, made XLA copy
  # every params leaf on every call (3 array copies here; AALR's step on the
  # speed benchmark's MLP went from 1.02x to 1.16x SGD's).
  from benchmarks import net_cost  # pylint: disable=g-import-not-at-top

  params = {"w1": jnp.ones((16, 32)), "b1": jnp.zeros(32), "w2": jnp.ones((32, 4))}
  tx = optax_lr.aalr(0.1, direction=optax.trace(0.9), steps_per_epoch=steps_per_epoch)

  def loss(p, x):
    return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]) ** 2)

  def step(p, s, x):
    value, grads = jax.value_and_grad(loss)(p, x)
    updates, s = tx.update(grads, s, p, value=value)
    return optax_lr.apply_updates(p, updates, s), s

  state = tx.init(params)
  x = jnp.ones((8, 16))
  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x).compile().as_text()
  assert net_cost.count_kernels(hlo)["array_copies"] == 0
