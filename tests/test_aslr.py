"""Tests for optax_lr.aslr: the exact digit search, the per-leaf draws, both epoch modes.

The reference below follows the paper's arithmetic form of the search on exact
decimals (``c ← c ± s`` with ``s = 10^floor(log10 c)``, ``c ← 0.9c`` where
``c - s`` would be 0) and the design page's radius bookkeeping
(docs/design.md); it shares no code with the implementation, which walks a
digit and an exponent instead.
"""

import decimal
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _inject
import _tiny
import optax_lr
from optax_lr.aslr import _round_half_up

D = decimal.Decimal


def reference_centres(initial: str, costs, lo=D("1e-30"), hi=D("9e30")):
  """Centres after each epoch end, as exact decimals."""
  c = D(initial)
  min_cost, radius, walked, direction = math.inf, 0, 0, 1
  out = []
  for cost in costs:
    if math.isfinite(cost) and cost <= min_cost:
      min_cost, radius = cost, 0
    else:
      if radius == 0:
        radius, walked, direction = 1, 0, 1
      elif walked >= radius:
        radius, direction, walked = radius + 1, -direction, 0
      step = D(10) ** c.adjusted()  # 10^floor(log10 c): c has one digit
      new = c + direction * step
      if new == 0:
        new = D("0.9") * c
      if lo <= new <= hi:
        c = new.normalize()
      walked += 1
    out.append(c)
  return out


def observe_all(tx, costs, params=None):
  """Centres, digits and exponents after each of `costs`, in one jitted scan."""
  params = {"w": jnp.ones(3)} if params is None else params

  @jax.jit
  def run(costs):
    def body(state, cost):
      state = optax_lr.observe(state, cost)
      return state, (optax_lr.current_lr(state), state.digit, state.exponent)

    return jax.lax.scan(body, tx.init(params), costs)

  state, (lrs, digits, exponents) = run(jnp.asarray(costs, jnp.float32))
  return state, np.asarray(lrs), np.asarray(digits), np.asarray(exponents)


def assert_centres(lrs, digits, exponents, expected):
  for lr, d, e, want in zip(lrs, digits, exponents, expected):
    sign, want_digits, want_exp = want.normalize().as_tuple()
    assert (int(d), int(e)) == (want_digits[0], want_exp), (d, e, want)
    assert lr == np.float32(str(want)), (lr, want)


# ---------------------------------------------------------------- the search


def test_centres_from_0_1_with_every_epoch_worse():
  costs = [1.0] + [2.0] * 12
  _, lrs, digits, exponents = observe_all(optax_lr.aslr(0.1), costs)
  printed = ["0.2", "0.1", "0.09", "0.1", "0.2", "0.3", "0.2", "0.1", "0.09", "0.08", "0.09", "0.1"]
  assert_centres(lrs[1:], digits[1:], exponents[1:], [D(x) for x in printed])
  assert [str(c) for c in reference_centres("0.1", costs)[1:]] == printed
  assert lrs[0] == np.float32(0.1)


def test_improvement_resets_the_search():
  # best 1.0; worse (0.2); worse (back to 0.1, radius 2); better: the search
  # stops at 0.1; worse again starts over upwards from 0.1.
  costs = [1.0, 2.0, 2.0, 0.5, 0.7, 0.7, 0.4, 0.9]
  _, lrs, digits, exponents = observe_all(optax_lr.aslr(0.1), costs)
  expected = [D(x) for x in ["0.1", "0.2", "0.1", "0.1", "0.2", "0.1", "0.1", "0.2"]]
  assert_centres(lrs, digits, exponents, expected)
  assert reference_centres("0.1", costs) == expected


def test_exponent_crossings_both_ways():
  # 0.009 -> 0.01 crossing up; 0.01 -> 0.009 crossing down; 9 -> 10 and back.
  _, lrs, d, e = observe_all(optax_lr.aslr(0.009), [1.0, 2.0, 2.0, 2.0])
  assert_centres(lrs, d, e, [D("0.009"), D("0.01"), D("0.009"), D("0.008")])
  _, lrs, d, e = observe_all(optax_lr.aslr(9.0), [1.0, 2.0, 2.0, 2.0, 2.0])
  assert_centres(lrs, d, e, [D(9), D(10), D(9), D(8), D(9)])
  # A long unsuccessful search sweeps ever wider, across several decades.
  costs = [1.0] + [2.0] * 420
  _, lrs, d, e = observe_all(optax_lr.aslr(0.1), costs)
  expected = reference_centres("0.1", costs)
  assert_centres(lrs, d, e, expected)
  assert min(expected) < D("0.01") and max(expected) > D("1")  # e: -3 .. 0


def test_random_cost_script_matches_the_reference():
  rng = np.random.default_rng(0)
  # A slowly drifting cost: improvements, plateaus and searches all occur.
  costs = list(np.round(3.0 - 0.01 * np.arange(300) + rng.normal(0, 0.3, 300), 3))
  for i, bad in zip(rng.choice(300, 12, replace=False), [np.nan, np.inf, -np.inf] * 4):
    costs[i] = float(bad)
  costs = [float(np.float32(c)) for c in costs]
  _, lrs, d, e = observe_all(optax_lr.aslr(0.03), costs)
  assert_centres(lrs, d, e, reference_centres("0.03", costs))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_costs_count_as_worse(bad):
  state, lrs, _, _ = observe_all(optax_lr.aslr(0.1), [1.0, bad, 0.5])
  np.testing.assert_array_equal(lrs, np.float32([0.1, 0.2, 0.2]))
  assert float(state.min_cost) == 0.5  # -inf never became the best
  assert int(state.radius) == 0


def test_exponent_bounds_keep_the_centre_finite_and_positive():
  _, lrs, d, e = observe_all(optax_lr.aslr(9e30), [1.0, 2.0, 2.0])
  assert (int(d[1]), int(e[1])) == (9, 30)  # cannot walk up past 9e30
  assert (int(d[2]), int(e[2])) == (8, 30)
  _, lrs, d, e = observe_all(optax_lr.aslr(1e-30), [1.0, 2.0, 2.0, 2.0, 2.0])
  # 2e-30, back to 1e-30, blocked below 1e-30 (the walk still counts), up.
  assert [(int(a), int(b)) for a, b in zip(d, e)] == [
    (1, -30),
    (2, -30),
    (1, -30),
    (1, -30),
    (2, -30),
  ]
  assert_centres(lrs, d, e, reference_centres("1e-30", [1.0, 2.0, 2.0, 2.0, 2.0]))
  assert np.all(np.isfinite(lrs)) and np.all(lrs > 0)


# Half up in decimal, on the number written (the float's shortest repr):
# 0.15, 0.35, 0.85 and 0.95 are binary values just below their ties, and
# 0.25 and 2.5 exact ties, which rounding the binary value (formatting,
# ties to even) would take down; 0.45, 0.055 and 0.0015 lie just above.
ROUNDING_TABLE = [
  (0.123, 1, -1),
  (0.0456, 5, -2),
  (0.96, 1, 0),
  (3e-4, 3, -4),
  (7, 7, 0),
  (15.0, 2, 1),
  (0.15, 2, -1),
  (0.45, 5, -1),
  (0.25, 3, -1),
  (0.35, 4, -1),
  (0.85, 9, -1),
  (0.0015, 2, -3),
  (9.5, 1, 1),
  (0.95, 1, 0),
  (2.5, 3, 0),
  (0.149, 1, -1),
  (0.1499, 1, -1),
  (0.0549, 5, -2),
  (0.055, 6, -2),
  (1, 1, 0),
  (1500, 2, 3),
  (1449, 1, 3),
  (9.99e-4, 1, -3),
  (1e-30, 1, -30),
  (9e30, 9, 30),
  (9.49e30, 9, 30),
]


@pytest.mark.parametrize("rate, digit, exponent", ROUNDING_TABLE)
def test_initial_rate_rounded_half_up_in_decimal(rate, digit, exponent):
  state = optax_lr.aslr(rate).init({"w": jnp.ones(2)})
  assert (int(state.digit), int(state.exponent)) == (digit, exponent)
  assert state.digit.dtype == jnp.int32 and state.exponent.dtype == jnp.int32
  assert float(optax_lr.current_lr(state)) == pytest.approx(digit * 10.0**exponent)


def test_injected_rates_round_by_the_table_too():
  rates = [row[0] for row in ROUNDING_TABLE]
  digits, exponents = _injected_split(jnp.asarray(rates, jnp.float32))
  got = list(zip(np.asarray(digits).tolist(), np.asarray(exponents).tolist()))
  assert got == [(d, e) for _, d, e in ROUNDING_TABLE]


@jax.jit
@jax.vmap
def _injected_split(rate):
  """``(d, e)`` of ``rate`` through ``inject_hyperparams``' jitted init."""
  tx = optax.inject_hyperparams(optax_lr.aslr)(learning_rate=rate)
  state = tx.init({"w": jnp.ones(1, jnp.float32)}).inner_state
  return state.digit, state.exponent


def _literal_grid(digits, exponents):
  """Every decimal k·10^e with k < 10^digits, as Python floats."""
  return [float(f"{k}e{e}") for e in exponents for k in range(1, 10**digits)]


@pytest.mark.parametrize(
  "dtype, digits, exponents",
  [(jnp.float32, 4, range(-6, 2)), (jnp.bfloat16, 2, range(-6, 2)), (jnp.float16, 2, range(-4, 2))],
)
def test_traced_rounding_agrees_with_the_python_rule(dtype, digits, exponents):
  # Each literal rounded in Python (the decimal written) and, through the
  # injected init, in jnp from its value in `dtype`: float32 holds every
  # decimal with 4 significant digits, bf16 and f16 those with 2.
  literals = _literal_grid(digits, exponents)
  want = np.array([_round_half_up(x) for x in literals])
  d, e = _injected_split(jnp.asarray(literals, dtype))
  got = np.stack([np.asarray(d), np.asarray(e)], axis=1)
  wrong = np.nonzero(np.any(got != want, axis=1))[0]
  assert wrong.size == 0, [(literals[i], got[i], want[i]) for i in wrong[:10]]


def test_python_rounding_of_a_sample_through_the_public_factory():
  rng = np.random.default_rng(0)
  literals = _literal_grid(4, range(-6, 2))
  for i in rng.choice(len(literals), 60, replace=False):
    rate = literals[i]
    state = optax_lr.aslr(rate).init({"w": jnp.ones(1)})
    d, e = _round_half_up(rate)
    assert (int(state.digit), int(state.exponent)) == (d, e)
    # The rule itself, on exact decimals.
    written = D(repr(rate))
    rounded = (
      written.scaleb(-written.adjusted())
      .quantize(D(1), rounding=decimal.ROUND_HALF_UP)
      .scaleb(written.adjusted())
    )
    assert D(d).scaleb(e) == rounded


def test_traced_rates_are_clamped_not_checked():
  rates = jnp.asarray([-1.0, 0.0, np.nan, np.inf, 1e-35, 3e33], jnp.float32)
  d, e = _injected_split(rates)
  assert list(zip(np.asarray(d).tolist(), np.asarray(e).tolist())) == [
    (1, -30),
    (1, -30),
    (1, -30),
    (9, 30),
    (1, -30),
    (9, 30),
  ]


# ---------------------------------------------------------------- the draws


def _params():
  return {
    "a": jnp.array([1.0, -2.0, 3.0], jnp.float32),
    "b": jnp.array(0.5, jnp.float32),
    "c": [jnp.ones((2, 2), jnp.float32), jnp.zeros(4, jnp.float32)],
  }


def _draw(tx, num_steps, grads):
  @jax.jit
  def run():
    def body(state, _):
      updates, state = tx.update(grads, state, params)
      return state, (updates, state.leaf_rates)

    return jax.lax.scan(body, tx.init(params), None, length=num_steps)

  params = _params()
  return run()


def test_draws_lie_in_the_band_differ_across_leaves_and_average_to_the_centre():
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 2.0), _params())
  n = 4000
  _, (updates, rates) = _draw(optax_lr.aslr(0.05, seed=7), n, grads)
  rates = np.stack([np.asarray(r) for r in jax.tree_util.tree_leaves(rates)])  # [4, n]
  assert rates.dtype == np.float32
  assert np.all(rates >= np.float32(0.045)) and np.all(rates <= np.float32(0.055))
  # Fresh draws every call and independent draws per leaf.
  assert len(np.unique(rates[0])) > 0.99 * n
  assert np.all(np.ptp(rates, axis=0) > 0)
  # Mean of U(c - s/2, c + s/2) is c; its standard error is s / sqrt(12 n).
  tolerance = 4 * 0.01 / math.sqrt(12 * n)
  np.testing.assert_allclose(rates.mean(axis=1), 0.05, atol=tolerance)
  np.testing.assert_allclose(rates.std(axis=1), 0.01 / math.sqrt(12), rtol=0.05)
  # Each leaf's update is -rate_leaf * u, with the rate stored for that leaf.
  for leaf_updates, leaf_rates in zip(jax.tree_util.tree_leaves(updates), rates):
    expected = -leaf_rates.reshape((-1,) + (1,) * (leaf_updates.ndim - 1)) * 2.0
    np.testing.assert_array_equal(
      np.asarray(leaf_updates), np.broadcast_to(expected.astype(np.float32), leaf_updates.shape)
    )


def test_draws_are_reproducible_from_the_seed():
  grads = _params()
  _, (_, a) = _draw(optax_lr.aslr(0.1, seed=3), 5, grads)
  _, (_, b) = _draw(optax_lr.aslr(0.1, seed=3), 5, grads)
  _, (_, c) = _draw(optax_lr.aslr(0.1, seed=4), 5, grads)
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(np.asarray(a["b"]), np.asarray(c["b"]))
  state = optax_lr.aslr(0.1, seed=3).init(_params())
  assert state.key.dtype == jnp.uint32 and state.key.shape == (2,)


def test_over_a_momentum_direction_and_bf16():
  params = {"w": jnp.array([1.0, -1.0], jnp.bfloat16), "v": jnp.ones(3, jnp.float32)}
  grads = {"w": jnp.array([0.5, 2.0], jnp.bfloat16), "v": jnp.full(3, 0.25, jnp.float32)}
  tx = optax_lr.aslr(0.2, direction=optax.trace(0.5))
  state = tx.init(params)
  update = jax.jit(tx.update)
  trace = {k: np.zeros(np.shape(g), np.float32) for k, g in grads.items()}
  for _ in range(3):
    updates, state = update(grads, state, params)
    for k in grads:
      trace[k] = 0.5 * trace[k] + np.asarray(grads[k], np.float32)
      rate = np.float32(state.leaf_rates[k])
      assert 0.15 <= rate <= 0.25
      assert updates[k].dtype == grads[k].dtype
      want = (-rate * trace[k]).astype(grads[k].dtype)
      np.testing.assert_array_equal(np.asarray(updates[k]), want)


def test_leaf_rates_mirror_the_params_and_current_lr_is_the_centre():
  tx = optax_lr.aslr(0.3)
  state = tx.init(_params())
  assert jax.tree_util.tree_structure(state.leaf_rates) == (jax.tree_util.tree_structure(_params()))
  _, state = tx.update(_params(), state, _params())
  assert float(optax_lr.current_lr(state)) == pytest.approx(0.3)
  for rate in jax.tree_util.tree_leaves(state.leaf_rates):
    assert rate.shape == () and 0.25 <= float(rate) <= 0.35


# ---------------------------------------------------------------- window mode


def test_window_mode_decides_on_the_mean_training_loss_without_recompiling():
  steps_per_epoch = 3
  epoch_means = [1.0, 0.75, 1.0, 0.5, 2.0, 2.0]
  spreads = [0.0, 0.5, -0.5, 0.25, -2.0, 0.0]
  values = []
  for mean, a in zip(epoch_means, spreads):
    # Three losses averaging exactly to `mean`; neither the first nor the last
    # of them would give the same decisions as the mean.
    values += [mean + a, mean - 2 * a, mean + a]
  tx = optax_lr.aslr(0.1, steps_per_epoch=steps_per_epoch)
  params = {"w": jnp.ones(2)}
  grads = {"w": jnp.ones(2)}
  traces = []

  def step(state, value):
    traces.append(None)
    updates, state = tx.update(grads, state, params, value=value)
    return updates, state

  step = jax.jit(step)
  state = tx.init(params)
  centres, used = [], []
  for value in values:
    updates, state = step(state, jnp.float32(value))
    used.append(-float(updates["w"][0]))
    centres.append(float(optax_lr.current_lr(state)))
  assert len(traces) == 1
  after = [float(c) for c in reference_centres("0.1", epoch_means)]
  during = [0.1] + after  # the centre in force while epoch k trains
  for i, (rate, centre) in enumerate(zip(used, centres)):
    epoch, last = divmod(i, steps_per_epoch)[0], i % steps_per_epoch == 2
    # The centre changes only on each window's last call, after its draw.
    assert centre == pytest.approx(after[epoch] if last else during[epoch])
    c = during[epoch]
    s = 10.0 ** math.floor(math.log10(c) + 1e-9)
    assert c - s / 2 <= rate <= c + s / 2


def test_window_mode_needs_value():
  tx = optax_lr.aslr(0.1, steps_per_epoch=2)
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="value"):
    tx.update(params, tx.init(params), params)


# ---------------------------------------------------------------- validation


# Bad arguments at construction: tests/test_bad_input.py.


def _key(seed):
  return tuple(np.asarray(optax_lr.aslr(0.1, seed=seed).init({"w": jnp.ones(1)}).key).tolist())


def test_seed_uses_all_64_bits():
  # jax.random.PRNGKey keeps only the low 32 bits of a Python int (without
  # x64): 2**32 and 2**40 would be seed 0 again.
  seeds = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**40, 2**63, 2**64 - 1]
  keys = [_key(s) for s in seeds]
  assert len(set(keys)) == len(seeds)
  assert _key(2**40) == (256, 0) and _key(2**64 - 1) == (2**32 - 1, 2**32 - 1)
  assert _key(np.uint64(2**40)) == (256, 0)
  # Below 2**32 the key is jax.random.PRNGKey's: the draws of existing seeds
  # are unchanged.
  for seed in (0, 1, 12345, 2**31, 2**32 - 1):
    assert _key(seed) == tuple(np.asarray(jax.random.PRNGKey(seed)).tolist())


# ---------------------------------------------------------------- inject_hyperparams


_inject_params = _inject.inject_params
_inject_loss = _inject.inject_loss


def _run_side_by_side(plain, injected, steps, extra_at, cost_at):
  """Runs both (``_inject.run_side_by_side``); the plain run's centres."""
  states = _inject.run_side_by_side(plain, injected, steps, extra_at, cost_at)
  return [float(optax_lr.current_lr(s)) for s in states]


@pytest.mark.parametrize("safety_net", [True, False])
def test_inject_hyperparams_gives_the_same_updates_and_state(safety_net):
  kwargs = dict(seed=5, direction=optax.trace(0.9), safety_net=safety_net)
  plain = optax_lr.aslr(0.45, **kwargs)
  injected = optax.inject_hyperparams(optax_lr.aslr, static_args=("steps_per_epoch",))(
    learning_rate=0.45, **kwargs
  )
  # Epoch ends after every 3rd call: better, worse (the search moves), a NaN
  # (a diverged epoch: the safety net rolls back), worse, better.
  costs = {2: 3.0, 5: 4.0, 8: np.nan, 11: 5.0, 14: 1.0, 17: 2.0}
  centres = _run_side_by_side(plain, injected, 18, lambda t: {}, costs.get)
  assert centres[0] == pytest.approx(0.5)  # 0.45 rounded half up, injected too
  assert len(set(centres)) > 2


def test_inject_hyperparams_in_window_mode():
  plain = optax_lr.aslr(0.01, steps_per_epoch=3, seed=2)
  injected = optax.inject_hyperparams(optax_lr.aslr, static_args=("steps_per_epoch",))(
    learning_rate=0.01, steps_per_epoch=3, seed=2
  )
  values = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
  centres = _run_side_by_side(
    plain, injected, len(values), lambda t: {"value": jnp.float32(values[t])}, lambda t: None
  )
  assert len(set(centres)) > 2


@pytest.mark.parametrize(
  "direction",
  [None, optax.trace(0.9), optax.scale_by_adam()],
  ids=["sgd", "momentum", "adam"],
)
def test_the_net_leaves_a_healthy_run_bit_for_bit_unchanged(direction):
  # With the net on, a call that does not roll back steps by the same
  # product `-rate * u`, fused into the caller's `params + updates` as
  # without the net, so the two runs round alike: equal to the bit, not
  # merely close. (Taking the step inside the rollback's lax.cond rounded it
  # before the add and moved the params by up to 3.6e-7 in 100 steps over
  # Adam; RESULTS.md, "the step inside the rollback's cond".)
  # optax's Adam bias correction raises a float to an int32 count.
  with jax.numpy_dtype_promotion("standard"):
    with_net, state, losses, _ = _tiny.train(
      optax_lr.aslr(0.01, direction=direction, steps_per_epoch=10), jax.nn.relu
    )
    without, _, _, _ = _tiny.train(
      optax_lr.aslr(0.01, direction=direction, steps_per_epoch=10, safety_net=False), jax.nn.relu
    )
  # No rollback, and at least one save: the net took part in the run.
  assert int(state.safety.rollbacks) == 0 and bool(state.safety.saved)
  assert float(losses[-10:].mean()) < float(losses[:10].mean())
  jax.tree_util.tree_map(np.testing.assert_array_equal, with_net, without)
