"""The contract suite: every learning-rate method through the same checks.

The design page's testing strategy (docs/design.md), run for each entry of
`METHODS`: jit with no second compilation, an initial state whose leaves
share no buffer (the step donates it), unknown extra args ignored,
bf16/f32 dtypes kept, state dtypes stable under `lax.cond`, `lax.scan`
training on a parabola and on Rosenbrock, NaN and Inf in gradients, losses
and costs never giving a NaN or negative learning rate, a
`flax.serialization` round trip, use inside `optax.chain` and
`optax.MultiSteps`, and, for the methods that read a window of training
losses, no collapse of the rate on pure minibatch noise.

A method joins the suite with one `MethodCase` in `METHODS`, the registry in
`optax_lr._registry` (shared with the benchmarks), which records its factory,
the keyword arguments and static arguments it is built with, and the extra
arguments its update needs; no test below names a method.
"""

from __future__ import annotations

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lr

# The registry, re-exported: the suites built on this one import it from here.
from optax_lr._registry import METHODS
from optax_lr._registry import MethodCase

CASES = pytest.mark.parametrize("case", METHODS, ids=lambda c: c.name)


# ---------------------------------------------------------------- problems

SCALES = {"a": jnp.array([1.0, 2.0], jnp.float32), "b": jnp.array(0.5, jnp.float32)}


def parabola(params):
  """0.5 Σ s_i w_i², minimum 0 at w = 0."""
  terms = jax.tree_util.tree_map(
    lambda s, w: 0.5 * jnp.sum(s.astype(w.dtype) * w * w).astype(jnp.float32),
    SCALES,
    params,
  )
  return sum(jax.tree_util.tree_leaves(terms))


def rosenbrock(params):
  x, y = params["xy"][0], params["xy"][1]
  return ((1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2).astype(jnp.float32)


def parabola_params(dtype=jnp.float32):
  return {"a": jnp.array([1.0, -2.0], dtype), "b": jnp.array(3.0, dtype)}


def rosenbrock_params():
  return {"xy": jnp.array([-1.2, 1.0], jnp.float32)}


def make_step(case: MethodCase, tx, loss_fn, poison=None):
  """A train step ``(params, state, t) -> (params, state, loss, lr)``.

  ``poison(t)`` (optional) is a scalar multiplying the loss and gradients at
  step ``t``: NaN or Inf there injects bad numbers into every input at once.
  """

  def step(params, state, t):
    scale = jnp.float32(1.0) if poison is None else poison(t)
    scaled_loss = lambda p: loss_fn(p) * scale
    loss, grads = jax.value_and_grad(scaled_loss)(params)
    extra = case.extra_args(scaled_loss, params)
    updates, state = tx.update(grads, state, params, **extra)
    params = optax_lr.apply_updates(params, updates, state)
    return params, state, loss, optax_lr.current_lr(state)

  return step


def _scan_train(case, tx, loss_fn, params, num_steps, poison=None):
  step = make_step(case, tx, loss_fn, poison)

  @jax.jit
  def run(params):
    def body(carry, t):
      params, state = carry
      params, state, loss, lr = step(params, state, t)
      return (params, state), (loss, lr)

    (params, state), (losses, lrs) = jax.lax.scan(
      body, (params, tx.init(params)), jnp.arange(num_steps)
    )
    return params, state, losses, lrs

  return run(params)


def _assert_rates_valid(rates):
  for leaf in jax.tree_util.tree_leaves(rates):
    leaf = np.asarray(leaf, np.float64)
    assert np.all(np.isfinite(leaf)), f"non-finite learning rate: {leaf}"
    assert np.all(leaf >= 0), f"negative learning rate: {leaf}"


def _assert_same_avals(tree_a, tree_b):
  assert jax.tree_util.tree_structure(tree_a) == jax.tree_util.tree_structure(tree_b)
  for a, b in zip(jax.tree_util.tree_leaves(tree_a), jax.tree_util.tree_leaves(tree_b)):
    assert jnp.shape(a) == jnp.shape(b)
    assert jnp.result_type(a) == jnp.result_type(b)


# ---------------------------------------------------------------- the checks


@CASES
def test_jit_compiles_once_with_donated_buffers(case):
  tx = case.make(case.parabola_lr)
  traces = []
  step = make_step(case, tx, parabola)

  def traced_step(params, state, t):
    traces.append(None)
    return step(params, state, t)

  jitted = jax.jit(traced_step, donate_argnums=(0, 1))
  # A fresh function: jit's cache is shared by every jit of the same function,
  # so `jax.jit(optax_lr.observe)` would also count other cases' compilations.
  observe = jax.jit(lambda s, c: optax_lr.observe(s, c), donate_argnums=0)
  params = parabola_params()
  state = tx.init(params)
  for t in range(12):
    params, state, loss, lr = jitted(params, state, jnp.int32(t))
    if case.epoch_level and t % 3 == 2:
      state = observe(state, loss)
  assert len(traces) == 1
  assert observe._cache_size() <= 1
  _assert_rates_valid(optax_lr.current_lr(state))


@CASES
def test_init_state_shares_no_buffer_between_leaves(case):
  # A train step donates the state: a buffer that two leaves share would be
  # donated twice. XLA's CPU runtime segfaulted on exactly that in a sharded
  # run (`test_sharding.py`), when the epoch window's three float zeros were
  # one array; a single-device run did not show it.
  params = parabola_params()
  for state in (case.make(case.parabola_lr).init(params), jax.jit(case.make(0.1).init)(params)):
    leaves = [x for x in jax.tree_util.tree_leaves(state) if isinstance(x, jax.Array)]
    pointers = [x.unsafe_buffer_pointer() for x in leaves]
    assert len(set(pointers)) == len(pointers), f"{case.name}: init returns a shared buffer"
    param_pointers = {x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(params)}
    assert not param_pointers & set(pointers), f"{case.name}: init returns a params buffer"


@CASES
def test_unknown_extra_args_are_ignored(case):
  tx = case.make(case.parabola_lr)
  params = parabola_params()
  grads = jax.grad(parabola)(params)
  extra = case.extra_args(parabola, params)
  updates, _ = tx.update(grads, tx.init(params), params, some_unknown_arg=1.0, **extra)
  _assert_same_avals(updates, params)


@CASES
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_updates_keep_dtype_and_shape(case, dtype):
  tx = case.make(case.parabola_lr)
  params = parabola_params(dtype)
  step = jax.jit(make_step(case, tx, parabola))
  state = tx.init(params)
  for t in range(4):
    grads = jax.grad(parabola)(params)
    updates, _ = tx.update(grads, state, params, **case.extra_args(parabola, params))
    _assert_same_avals(updates, params)
    params, state, _, lr = step(params, state, jnp.int32(t))
    _assert_same_avals(params, parabola_params(dtype))
  _assert_rates_valid(lr)


@CASES
def test_state_dtypes_stable_under_cond(case):
  tx = case.make(case.parabola_lr)
  params = parabola_params()
  state = tx.init(params)

  @jax.jit
  def maybe_update(flag, state):
    def do_update(state):
      grads = jax.grad(parabola)(params)
      extra = case.extra_args(parabola, params)
      return tx.update(grads, state, params, **extra)[1]

    return jax.lax.cond(flag, do_update, lambda s: s, state)

  new_state = maybe_update(True, state)
  _assert_same_avals(new_state, state)
  kept = maybe_update(False, new_state)
  for a, b in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(new_state)):
    np.testing.assert_array_equal(a, b)
  if case.epoch_level:
    _assert_same_avals(optax_lr.observe(state, jnp.float32(1.0)), state)


@CASES
def test_scan_training_on_parabola(case):
  params = parabola_params()
  tx = case.make(case.parabola_lr)
  final, _, losses, lrs = _scan_train(case, tx, parabola, params, 300)
  assert float(parabola(final)) < 1e-2 * float(parabola(params))
  _assert_rates_valid(lrs)


@CASES
def test_scan_training_on_rosenbrock(case):
  params = rosenbrock_params()
  tx = case.make(case.rosenbrock_lr)
  final, _, losses, lrs = _scan_train(case, tx, rosenbrock, params, 500)
  assert np.isfinite(float(rosenbrock(final)))
  assert float(rosenbrock(final)) < 0.5 * float(rosenbrock(params))
  _assert_rates_valid(lrs)


@CASES
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_inputs_never_give_a_bad_learning_rate(case, bad):
  # Steps 5..9 see a poisoned loss: gradients, `value`, HVPs and validation
  # gradients are all NaN or Inf there; the run then continues clean.
  poison = lambda t: jnp.where((t >= 5) & (t < 10), jnp.float32(bad), jnp.float32(1.0))
  tx = case.make(case.parabola_lr)
  _, state, _, lrs = _scan_train(case, tx, parabola, parabola_params(), 30, poison)
  _assert_rates_valid(lrs)
  if case.epoch_level:  # a windowed method ends its own epochs
    for cost in (np.nan, np.inf, -np.inf):
      state = optax_lr.observe(state, jnp.float32(cost))
      _assert_rates_valid(optax_lr.current_lr(state))


@CASES
def test_flax_serialization_round_trip(case):
  tx = case.make(case.parabola_lr)
  step = jax.jit(make_step(case, tx, parabola))
  params = parabola_params()
  state = tx.init(params)
  for t in range(5):
    params, state, _, _ = step(params, state, jnp.int32(t))
  blob = flax.serialization.to_bytes(state)
  restored = flax.serialization.from_bytes(tx.init(parabola_params()), blob)
  _assert_same_avals(restored, state)
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(a, b)
  # Continuing from the restored state is bit-for-bit the same run.
  for t in range(5, 9):
    params_a, state, _, _ = step(params, state, jnp.int32(t))
    params_b, restored, _, _ = step(params, restored, jnp.int32(t))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)
    params = params_a


@CASES
def test_inside_optax_chain(case):
  tx = optax.chain(optax.clip_by_global_norm(10.0), case.make(case.parabola_lr))
  params = parabola_params()
  final, state, _, lrs = _scan_train(case, tx, parabola, params, 300)
  assert float(parabola(final)) < 1e-2 * float(parabola(params))
  _assert_rates_valid(lrs)
  assert jax.tree_util.tree_structure(optax_lr.current_lr(state)) == (
    jax.tree_util.tree_structure(optax_lr.current_lr(case.make(0.1).init(params)))
  )


@CASES
def test_inside_optax_multisteps(case):
  # MultiSteps mixes int32 and float32 internally; strict promotion rejects it.
  with jax.numpy_dtype_promotion("standard"):
    tx = optax.MultiSteps(case.make(case.parabola_lr), every_k_schedule=2)
    params = parabola_params()
    final, _, _, lrs = _scan_train(case, tx, parabola, params, 400)
  assert float(parabola(final)) < 1e-2 * float(parabola(params))
  _assert_rates_valid(lrs)


# ---------------------------------------------------------------- one epoch source

EPOCH_LEVEL = pytest.mark.parametrize(
  "case", [c for c in METHODS if c.epoch_level], ids=lambda c: c.name
)


@EPOCH_LEVEL
def test_observe_refuses_a_state_that_ends_its_epochs_itself(case):
  # With steps_per_epoch the update call ends the epochs; a second source of
  # epoch ends would count each epoch twice.
  params = {"w": jnp.ones(2)}
  windowed = dict(case.kwargs, steps_per_epoch=2)
  state = case.factory(0.1, **windowed).init(params)
  with pytest.raises(ValueError, match="steps_per_epoch.*one or the other"):
    optax_lr.observe(state, 1.0)
  with pytest.raises(ValueError, match="twice"):  # at trace time, under jit
    jax.jit(optax_lr.observe)(state, jnp.float32(1.0))
  # Found at any depth: in a chain, under MultiSteps, under inject_hyperparams.
  wrapped = [
    optax.chain(optax.clip(1.0), case.factory(0.1, **windowed)),
    optax.MultiSteps(case.factory(0.1, **windowed), every_k_schedule=2),
    optax.inject_hyperparams(case.factory, static_args=case.static_args)(
      learning_rate=0.1, **windowed
    ),
  ]
  for tx in wrapped:
    with pytest.raises(ValueError, match="steps_per_epoch"):
      optax_lr.observe(tx.init(params), 1.0)
  # Without a window, observe drives it, and the state has no window at all.
  state = case.make(0.1).init(params)
  assert state.window is None
  observed = optax_lr.observe(state, 1.0)
  changed = [
    float(value)
    for old, new in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(observed))
    if not np.array_equal(old, new)
    for value in np.ravel(new)  # the safety net's scalars are packed in arrays
  ]
  assert 1.0 in changed  # the epoch's cost is recorded


# ---------------------------------------------------------------- windows of noisy losses

WINDOWED = pytest.mark.parametrize(
  "case",
  [c for c in METHODS if "steps_per_epoch" in c.kwargs and "value" in c.needs + c.passes],
  ids=lambda c: c.name,
)


@WINDOWED
def test_minibatch_noise_in_the_window_does_not_collapse_the_rate(case):
  # A method that reads its epochs from the window's mean training loss, at
  # a rate too small to move that loss: pure minibatch noise (the loss
  # ignores the params, the gradient is 0). A method that reacts to each
  # coin flip as to a real rise halves the rate every other epoch (AALR's
  # phase 1 did, until it allowed for the window's standard error: 1e-4 ->
  # 1e-9 in 48 epochs). Windows of 20 calls, 60 epochs: the rate must stay
  # within a factor 16 (AALR's phase 2 halves a loss that never improves at
  # a doubling patience: a few times in 60 epochs).
  rate = 1e-3
  steps_per_epoch = 20
  tx = case.factory(rate, **dict(case.kwargs, steps_per_epoch=steps_per_epoch))
  params = {"w": jnp.ones(3, jnp.float32)}
  calls = 60 * steps_per_epoch
  noise = 1.0 + 0.1 * np.random.default_rng(0).standard_normal(calls).astype(np.float32)

  @jax.jit
  def run(params):
    def body(carry, value):
      params, state = carry
      grads = {"w": jnp.zeros(3, jnp.float32)}
      updates, state = tx.update(grads, state, params, value=value)
      return (optax_lr.apply_updates(params, updates, state), state), optax_lr.current_lr(state)

    _, rates = jax.lax.scan(body, (params, tx.init(params)), jnp.asarray(noise))
    return rates

  rates = run(params)
  _assert_rates_valid(rates)
  low = min(float(np.min(leaf)) for leaf in jax.tree_util.tree_leaves(rates))
  assert low >= np.float32(rate) / 16, f"{case.name}: rate fell to {low:.3g} on pure noise"
