"""optax's contrib test cases, applied to every method of the contract suite.

optax runs one set of checks on every `optax.contrib` optimizer
(`optax/contrib/_common_test.py`). Here the same checks run on every entry of
the contract suite's registry (`optax_lr._registry.METHODS`), each built with its
entry's factory and keyword arguments and given the extra arguments its
update needs (`MethodCase.extra_args`):

* extra args: a jitted step passes
  ``unexpected_extra_args_your_optimizer_doesnt_expect=1`` besides the
  method's own extra arguments, and the second call does not recompile (nor
  does a step after ``optax_lr.observe`` for epoch-level methods);
* convergence on optax's four targets (parabola, Rosenbrock, matrix parabola,
  mixed tensors): each entry as configured, from the initial rate 1e-3,
  30k `lax.scan` steps (an epoch end every 100 for epoch-level methods) to
  ``rtol = atol = 3e-2``. The targets, step count, rate and tolerance are
  `test_defaults.py`'s, which runs the same check on every method's defaults
  over SGD, momentum and Adam directions; each entry's four targets are one
  compiled program of a few seconds. Every optax_lr factory of the registry
  must also have a `test_defaults.py` case;
* ``optax.inject_hyperparams(factory, static_args)`` gives the same updates
  and inner states as the method itself, over three jitted steps (and an
  epoch end for epoch-level methods), and ``optax_lr.current_lr`` reads the
  injected state;
* updates keep the params' dtype (bf16, f32), also as the first, non-final
  micro-step of ``optax.MultiSteps(every_k_schedule=4)``, where the update
  is exactly zero;
* state shapes and dtypes are stable under `lax.cond` for f16, bf16, f32 and
  f64 (f64 under x64), with ``value`` deliberately in another float dtype;
* ``optax.tree.map_params`` works: the identity is a no-op and a cast to bf16
  casts every params-shaped leaf of the state and no leaf that is not a
  float.

optax's last case (a ``learning_rate`` schedule) does not apply: the methods
adapt the rate themselves and take a float initial rate.

As in the contract suite, no test names a method: anything method-specific is
a field of `MethodCase`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax._src import test_utils

import optax_lr
import test_defaults
from optax_lr._registry import METHODS
from optax_lr._registry import under_promotion
from test_contract import _assert_same_avals

CASES = pytest.mark.parametrize("case", METHODS, ids=lambda c: c.name)
TOLERANCE = 1e-5


# ------------------------------------------- optax's targets (the same maths)


def parabola_target(dtype):
  initial = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
  final = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
  return initial, final, lambda p: jnp.sum(jnp.square(p - final))


def rosenbrock_target(dtype):
  a, b = 1.0, 100.0
  initial = jnp.array([0.0, 0.0], dtype=dtype)
  final = jnp.array([a, a**2], dtype=dtype)
  return initial, final, lambda p: jnp.square(a - p[0]) + b * jnp.square(p[1] - p[0] ** 2)


# ------------------------------------------------------------------ helpers


def _jitted_update(tx, extra):
  """``jax.jit(tx.update)`` with the callables of ``extra`` bound (jit takes
  arrays only) and its array-valued extra arguments passed through jit."""
  bound = {k: v for k, v in extra.items() if callable(v)}
  arrays = {k: v for k, v in extra.items() if not callable(v)}
  update = jax.jit(functools.partial(tx.update, **bound))
  return lambda grads, state, params: update(grads, state, params, **arrays)


def _assert_trees_close(actual, desired, what):
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(desired), what
  for a, d in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(desired)):
    assert jnp.result_type(a) == jnp.result_type(d), what
    if jnp.issubdtype(jnp.result_type(a), jnp.inexact):
      np.testing.assert_allclose(
        np.asarray(a, np.float64),
        np.asarray(d, np.float64),
        rtol=TOLERANCE,
        atol=TOLERANCE,
        err_msg=what,
      )
    else:
      np.testing.assert_array_equal(a, d, err_msg=what)


# ---------------------------------------------------------------- the cases


@CASES
def test_accepts_extra_args_and_does_not_recompile(case):
  tx = case.make(case.rosenbrock_lr)
  initial, _, objective = rosenbrock_target(jnp.float32)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(objective)(params)
    extra = {"unexpected_extra_args_your_optimizer_doesnt_expect": 1}
    extra.update(case.extra_args(objective, params))
    updates, state = tx.update(grads, state, params, **extra)
    return optax_lr.apply_updates(params, updates, state), state, value

  # The update works with extra args. The first call compiles, and the log
  # sees it (so the check below is not vacuous); the second call, on the
  # state the first returned, does not compile again.
  params, state = initial, tx.init(initial)
  with test_utils.log_compilations() as logs:
    params, state, value = step(params, state)
  assert logs, "log_compilations saw no compilation of a new function"
  with test_utils.log_compilations() as logs:
    params, state, value = step(params, state)
  assert not logs, f"{case.name} recompiles on the second call to update: {logs}"
  assert np.isfinite(float(objective(params)))

  if case.epoch_level:
    # An epoch end keeps the state's avals: neither the step nor observe
    # compile again.
    observe = jax.jit(lambda s, c: optax_lr.observe(s, c))
    state = observe(state, value)
    with test_utils.log_compilations() as logs:
      params, state, value = step(params, state)
      state = observe(state, value)
    assert not logs, f"{case.name} recompiles after an epoch end: {logs}"


@CASES
def test_converges_on_optax_targets(case):
  targets = test_defaults._targets()

  def one(initial, loss_fn):
    tx = case.make(test_defaults.INITIAL_RATE)

    def body(carry, t):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, state = tx.update(grads, state, params, **case.extra_args(loss_fn, params))
      params = optax_lr.apply_updates(params, updates, state)
      if case.epoch_level:
        end = t % test_defaults.EPOCH == test_defaults.EPOCH - 1
        state = jax.lax.cond(
          end, lambda s: optax_lr.observe(s, loss_fn(params)), lambda s: s, state
        )
      rates = jax.tree.leaves(optax_lr.current_lr(state))
      return (params, state), jnp.stack([jnp.asarray(r, jnp.float32) for r in rates])

    (params, _), rates = jax.lax.scan(
      body, (initial, tx.init(initial)), jnp.arange(test_defaults.STEPS)
    )
    return params, jnp.min(rates), jnp.max(rates)

  results = jax.jit(lambda: [one(initial, loss_fn) for _, initial, _, loss_fn in targets])()
  for (name, _, final, _), (params, low, high) in zip(targets, results):
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(final)):
      np.testing.assert_allclose(
        got,
        want,
        rtol=test_defaults.TOLERANCE,
        atol=test_defaults.TOLERANCE,
        err_msg=f"{case.name} on {name}",
      )
    assert np.isfinite(float(high)) and float(low) > 0, (name, float(low), float(high))


def test_every_registry_method_has_a_defaults_convergence_run():
  """Each optax_lr factory of the registry is one of `test_defaults.py`'s
  cases, which check its defaults on the same targets."""
  converged = {c.name for c in test_defaults.CASES}
  methods = {
    case.factory.__name__
    for case in METHODS
    if getattr(optax_lr, case.factory.__name__, None) is case.factory
  }
  assert methods, "no optax_lr factory in the registry"
  assert methods <= converged, f"no 30k-step convergence run for {methods - converged}"


@CASES
def test_inject_hyperparams_gives_the_same_updates_and_state(case):
  lr = case.parabola_lr
  opt = case.make(lr)
  opt_inject = case.injected(lr)
  obj_fn = lambda x: optax.tree.norm(x, squared=True)

  params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
  grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
  params_inject = params
  state = jax.jit(opt.init)(params)
  state_inject = jax.jit(opt_inject.init)(params)
  _assert_trees_close(state_inject.inner_state, state, f"{case.name}: init")

  observe = jax.jit(lambda s, c: optax_lr.observe(s, c))
  update = jax.jit(lambda g, s, p: opt.update(g, s, p, **case.extra_args(obj_fn, p)))
  update_inject = jax.jit(lambda g, s, p: opt_inject.update(g, s, p, **case.extra_args(obj_fn, p)))
  for t in range(3):
    updates, state = update(grads, state, params)
    updates_inject, state_inject = update_inject(grads, state_inject, params_inject)
    _assert_trees_close(updates_inject, updates, f"{case.name}: updates of step {t}")
    _assert_trees_close(state_inject.inner_state, state, f"{case.name}: state of step {t}")
    _assert_trees_close(
      optax_lr.current_lr(state_inject),
      optax_lr.current_lr(state),
      f"{case.name}: current_lr of step {t}",
    )
    params = optax_lr.apply_updates(params, updates, state)
    params_inject = optax_lr.apply_updates(params_inject, updates_inject, state_inject)
    if case.epoch_level and t == 1:
      state = observe(state, obj_fn(params))
      state_inject = observe(state_inject, obj_fn(params_inject))
      _assert_trees_close(state_inject.inner_state, state, f"{case.name}: observe")


@CASES
@pytest.mark.parametrize("bad", [-1.0, float("nan")], ids=["negative", "nan"])
def test_inject_hyperparams_still_rejects_a_bad_concrete_rate(case, bad):
  if getattr(optax_lr, case.factory.__name__, None) is not case.factory:
    pytest.skip("optax's own factories do not validate their rate")
  params = [jnp.ones((2, 3))]
  # An eager init hands the factory concrete arrays: they are validated.
  with pytest.raises(ValueError, match="learning_rate"):
    case.injected(bad).init(params)


@CASES
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_updates_have_the_params_dtype(case, dtype):
  opt = case.make(case.parabola_lr)
  fun = lambda x: jnp.sum(x**2)
  params = jnp.array([1.0, 2.0], dtype=dtype)
  grads = jax.grad(fun)(params)
  state = jax.jit(opt.init)(params)
  updates, _ = _jitted_update(opt, case.extra_args(fun, params))(grads, state, params)
  assert updates.dtype == params.dtype


@CASES
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_multisteps_gives_a_zero_update_on_a_micro_step(case, dtype):
  # optax.MultiSteps mixes int32 and float32 itself, which strict promotion
  # rejects: it runs under standard promotion, the method under strict.
  opt = optax.MultiSteps(under_promotion(case.make(case.parabola_lr), "strict"), every_k_schedule=4)
  fun = lambda x: jnp.sum(x**2)
  params = jnp.array([1.0, 2.0], dtype=dtype)
  grads = jax.grad(fun)(params)
  with jax.numpy_dtype_promotion("standard"):
    state = jax.jit(opt.init)(params)
    updates, _ = _jitted_update(opt, case.extra_args(fun, params))(grads, state, params)
  assert updates.dtype == params.dtype
  np.testing.assert_array_equal(updates, jnp.zeros_like(grads))


@CASES
@pytest.mark.parametrize(
  "dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64], ids=["f16", "bf16", "f32", "f64"]
)
def test_state_shape_and_dtype_stable_under_cond(case, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    opt = case.make(case.parabola_lr)
    initial, _, objective = parabola_target(dtype)
    # optax confuses the value's dtype on purpose: the method must cast it.
    value_dtype = jnp.float16 if dtype != jnp.float16 else jnp.bfloat16
    coin = lambda: jax.random.randint(jax.random.key(0), (), 0, 2) == 0

    def extra_args(params):
      extra = case.extra_args(objective, params)
      if "value" in extra:
        extra["value"] = extra["value"].astype(value_dtype)
      return extra

    @jax.jit
    def step(params, state):
      grads = jax.grad(objective)(params)
      extra = extra_args(params)
      # lax.cond defeats compiler optimizations: both branches must agree.
      updates, state = jax.lax.cond(
        coin(), lambda: opt.update(grads, state, params, **extra), lambda: (params, state)
      )
      return optax_lr.apply_updates(params, updates, state), state

    @jax.jit
    def observed(state, params):
      cost = objective(params).astype(value_dtype)
      return jax.lax.cond(coin(), lambda: state, lambda: optax_lr.observe(state, cost))

    params, state = initial, opt.init(initial)
    for _ in range(2):
      params, new_state = step(params, state)
      assert jax.tree.leaves(params)[0].dtype == dtype
      # optax's second lax.cond, between the old state and the new, checked
      # directly (step's lax.cond already needed the same of update).
      _assert_same_avals(new_state, state)
      state = new_state
      if case.epoch_level:
        state = observed(state, params)


def _params_shaped_leaves_cast(state, mapped, shapes):
  """Every float leaf of ``state`` whose shape is a params leaf's is cast to
  bf16 in ``mapped``. Other leaves are unchanged, or cast if they belong to a
  params-structured tree (per-leaf rates: map_params maps a tree by its
  structure); a leaf that is not a float is never touched."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  assert jax.tree_util.tree_structure(mapped) == treedef
  for (path, leaf), new in zip(flat, jax.tree_util.tree_leaves(mapped)):
    where = jax.tree_util.keystr(path)
    is_float = jnp.issubdtype(jnp.result_type(leaf), jnp.floating)
    if jnp.shape(leaf) in shapes and is_float:
      assert jnp.result_type(new) == jnp.bfloat16, f"{where} is not mapped"
    if jnp.result_type(new) == jnp.result_type(leaf):
      np.testing.assert_array_equal(new, leaf, err_msg=where)
    else:
      assert is_float and jnp.result_type(new) == jnp.bfloat16, f"{where} was changed"
      np.testing.assert_array_equal(new, jnp.asarray(leaf).astype(jnp.bfloat16), err_msg=where)
    assert jnp.shape(new) == jnp.shape(leaf), where


@CASES
def test_tree_map_params(case):
  opt = case.make(case.parabola_lr)
  # Shapes that no window, rate or key of a state has.
  params = {"w": jnp.full((3, 4), 0.5, jnp.float32), "v": jnp.full((2, 7), -1.0, jnp.float32)}
  loss_fn = lambda p: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))
  state = opt.init(params)
  # A state past its first update, so every field holds a value.
  grads = jax.grad(loss_fn)(params)
  _, state = opt.update(grads, state, params, **case.extra_args(loss_fn, params))
  shapes = {jnp.shape(x) for x in jax.tree.leaves(params)}

  same = optax.tree.map_params(opt, lambda v: v, state)
  assert jax.tree_util.tree_structure(same) == jax.tree_util.tree_structure(state)
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)

  cast = optax.tree.map_params(opt, lambda v: v.astype(jnp.bfloat16), state)
  _params_shaped_leaves_cast(state, cast, shapes)
