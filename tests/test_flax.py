"""optax_lr in Flax training loops: ``nnx.Optimizer`` and linen's ``TrainState``.

Each jit-compiled Flax step (``nnx.jit`` / ``jax.jit``) is compared with the
same optax_lr transformation driven by hand on a plain dict of params
(``tx.update`` + ``optax_lr.apply_updates`` under ``jax.jit``): the wrappers
must pass ``value``, ``loss_fn`` and ``val_grads`` through unchanged and read
the same learning rate. AALR's rollbacks must land exactly on the checkpoint,
also from NaN params. The methods are the registry's (``optax_lr._registry``):
a method joins these checks with its ``MethodCase`` there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen
from flax import nnx
from flax import struct
from flax.training import train_state

import optax_lr
from optax_lr._registry import METHODS as REGISTRY

STEPS = 6
X = jax.random.normal(jax.random.PRNGKey(0), (STEPS, 16, 4))
Y = jnp.sin(X @ jnp.array([1.0, -2.0, 0.5, 1.0]))[..., None]
X_VAL = jax.random.normal(jax.random.PRNGKey(1), (16, 4))
Y_VAL = jnp.sin(X_VAL @ jnp.array([1.0, -2.0, 0.5, 1.0]))[..., None]

# Every method of the registry, at one initial rate; every step gives every
# method every extra arg (those it does not read are ignored).
METHODS = {case.name: case for case in REGISTRY}
RATE = 0.05


def _marthe():
  """MARTHE with fixed β and κ, for the tests of its extra args."""
  return optax_lr.marthe(RATE, hyper_lr=1e-3, hyper_lr_step=1e-3)


def _rates(rate):
  """The learning rate(s) as one flat array: a scalar, or per_leaf's tree."""
  return np.concatenate([np.ravel(np.asarray(r)) for r in jax.tree_util.tree_leaves(rate)])


def _mse(pred, y):
  return jnp.mean((pred - y) ** 2)


# ------------------------------------------------------------------ nnx


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 8, rngs=rngs)
    self.out = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def _nnx_loss_of_params(model, x, y):
  """``params -> loss`` on one batch, for RTHO/MARTHE's HVPs (split/merge)."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  return lambda params: _mse(nnx.merge(graphdef, params, rest)(x), y)


def _nnx_step(use_helper):
  @nnx.jit
  def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: _mse(m(x), y))(model)
    val_grads = nnx.grad(lambda m: _mse(m(X_VAL), Y_VAL))(model)
    extra = dict(value=loss, loss_fn=_nnx_loss_of_params(model, x, y), val_grads=val_grads)
    if use_helper:
      optax_lr.nnx_update(optimizer, model, grads, **extra)
    else:
      optimizer.update(model, grads, **extra)
    # nnx.as_pure: the rate as an array, not the optimizer's live Variable.
    return optax_lr.current_lr(nnx.as_pure(optimizer.opt_state))

  return step


def _pure(tree):
  return jax.tree_util.tree_map(np.asarray, nnx.as_pure(tree))


# What `_reference(..., perturb=name)` gives the method instead of the extra
# arg `name`: a different number of the same shape.
_PERTURBED = {
  "value": lambda value, loss_fn, val_grads: value + 1.0,
  "loss_fn": lambda value, loss_fn, val_grads: lambda p: 2.0 * loss_fn(p),
  "val_grads": lambda value, loss_fn, val_grads: jax.tree_util.tree_map(
    lambda g: 2.0 * g, val_grads
  ),
}


def _reference(tx, params, loss_of_params, perturb=None):
  """The same training by hand: ``tx.update`` + ``optax_lr.apply_updates``.

  With ``perturb``, the extra arg of that name is replaced by a different one.
  """

  @jax.jit
  def step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_of_params)(params, x, y)
    extra = {
      "value": loss,
      "loss_fn": lambda p: loss_of_params(p, x, y),
      "val_grads": jax.grad(loss_of_params)(params, X_VAL, Y_VAL),
    }
    if perturb is not None:
      extra[perturb] = _PERTURBED[perturb](**extra)
    updates, state = tx.update(grads, state, params, **extra)
    return optax_lr.apply_updates(params, updates, state), state

  state = tx.init(params)
  rates = []
  for i in range(STEPS):
    params, state = step(params, state, X[i], Y[i])
    rates.append(_rates(optax_lr.current_lr(state)))
  return params, state, rates


def _nnx_reference(tx, perturb=None):
  model = NnxMLP(nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_of_params(p, x, y):
    return _mse(nnx.merge(graphdef, p, rest)(x), y)

  return _reference(tx, nnx.as_pure(params), loss_of_params, perturb)


# How closely a Flax path's optimizer state must match the reference's.
_STATE_TOLERANCE = dict(rtol=1e-5, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize(
  "name, extra", [(case.name, extra) for case in REGISTRY for extra in case.given]
)
def test_every_extra_arg_a_method_is_given_changes_its_training(name, extra):
  """The evidence that the Flax paths below pass the extra args through: they
  match the reference run with the true extra args, and the reference run with
  a different one of them ends in a different state."""
  _, want_state, _ = _nnx_reference(METHODS[name].make(RATE))
  _, other_state, _ = _nnx_reference(METHODS[name].make(RATE), perturb=extra)
  leaves = zip(jax.tree_util.tree_leaves(want_state), jax.tree_util.tree_leaves(other_state))
  assert any(not np.allclose(a, b, **_STATE_TOLERANCE) for a, b in leaves), extra


def _assert_same_state(got, want):
  got, want = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **_STATE_TOLERANCE)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_nnx_update_matches_raw_optax(name):
  model = NnxMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, METHODS[name].make(RATE), wrt=nnx.Param)
  step = _nnx_step(use_helper=True)
  rates = [_rates(step(model, optimizer, X[i], Y[i])) for i in range(STEPS)]

  want_params, want_state, want_rates = _nnx_reference(METHODS[name].make(RATE))
  np.testing.assert_allclose(rates, want_rates, rtol=1e-6)
  # Outside jit, current_lr reads the live Variable(s).
  np.testing.assert_array_equal(_rates(optax_lr.current_lr(optimizer.opt_state)), rates[-1])
  jax.tree_util.tree_map(
    lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7),
    _pure(nnx.state(model, nnx.Param)),
    _pure(want_params),
  )
  assert int(optimizer.step[...]) == STEPS
  _assert_same_state(_pure(optimizer.opt_state), want_state)


def test_nnx_stock_update_forwards_extra_args_like_the_helper():
  # Flax's own Optimizer.update passes value/loss_fn/val_grads to tx.update:
  # only AALR's exact rollback needs optax_lr.nnx_update.
  results = []
  for use_helper in (True, False):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, _marthe(), wrt=nnx.Param)
    step = _nnx_step(use_helper)
    rates = [float(step(model, optimizer, X[i], Y[i])) for i in range(STEPS)]
    results.append((rates, _pure(nnx.state(model, nnx.Param))))
  (rates_a, params_a), (rates_b, params_b) = results
  assert rates_a == rates_b
  jax.tree_util.tree_map(np.testing.assert_array_equal, params_a, params_b)


def test_nnx_val_grads_reach_marthe():
  # The hypergradient reads val_grads when given: a different validation
  # objective gives a different learning rate. val_grads may come from
  # nnx.grad (Variables) or from jax.grad of a function of the params.
  rates = []
  for with_val_grads in ("nnx.grad", "jax.grad", None):
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, _marthe(), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
      grads = nnx.grad(lambda m: _mse(m(x), y))(model)
      extra = {"loss_fn": _nnx_loss_of_params(model, x, y)}
      if with_val_grads == "nnx.grad":
        extra["val_grads"] = nnx.grad(lambda m: _mse(m(X_VAL), Y_VAL))(model)
      elif with_val_grads == "jax.grad":
        params = nnx.as_pure(nnx.state(model, nnx.Param))
        extra["val_grads"] = jax.grad(_nnx_loss_of_params(model, X_VAL, Y_VAL))(params)
      optax_lr.nnx_update(optimizer, model, grads, **extra)

    for i in range(3):  # Z_0 = 0: the rate moves from the second call on
      step(model, optimizer, X[i], Y[i])
    rates.append(float(optax_lr.current_lr(optimizer.opt_state)))
  assert rates[0] == pytest.approx(rates[1], rel=1e-6) and rates[0] != rates[2]


def test_nnx_current_lr_returns_the_live_variable():
  # What a logging loop must know: current_lr(optimizer.opt_state) is the
  # optimizer's own Variable, updated in place; log float(...) or read it
  # through nnx.as_pure.
  model = NnxMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax_lr.aslr(0.1), wrt=nnx.Param)
  live = optax_lr.current_lr(optimizer.opt_state)
  logged = float(live)
  optax_lr.nnx_observe(optimizer, 1.0)
  optax_lr.nnx_observe(optimizer, 2.0)
  assert logged == pytest.approx(0.1) and float(live) == pytest.approx(0.2)
  pure = optax_lr.current_lr(nnx.as_pure(optimizer.opt_state))
  assert isinstance(pure, jax.Array) and float(pure) == pytest.approx(0.2)


def test_nnx_observe_inside_jit_without_recompiling():
  model = NnxMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax_lr.aslr(0.1), wrt=nnx.Param)
  traces = []

  @nnx.jit
  def end_epoch(optimizer, cost):
    traces.append(1)
    optax_lr.nnx_observe(optimizer, cost)

  centres = []
  for cost in (1.0, 2.0, 3.0, 4.0):  # the docs/design.md walk: 0.2, 0.1, 0.09
    end_epoch(optimizer, jnp.float32(cost))
    centres.append(round(float(optax_lr.current_lr(optimizer.opt_state)), 6))
  assert centres == [0.1, 0.2, 0.1, 0.09]
  assert len(traces) == 1


def _nan_grads(grads):
  return jax.tree_util.tree_map(lambda g: g * jnp.nan, grads)


@pytest.mark.parametrize("poison", [False, True], ids=["finite", "nan"])
def test_nnx_aalr_rollback_lands_exactly_on_the_initial_params(poison):
  model = NnxMLP(nnx.Rngs(0))
  start = _pure(nnx.state(model, nnx.Param))
  optimizer = nnx.Optimizer(model, optax_lr.aalr(0.5, warmup_patience=3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y, poison):
    grads = nnx.grad(lambda m: _mse(m(x), y))(model)
    grads = jax.lax.cond(poison, _nan_grads, lambda g: g, grads)
    optax_lr.nnx_update(optimizer, model, grads)

  optax_lr.nnx_observe(optimizer, 10.0)  # L* of the initial model
  for i in range(3):
    step(model, optimizer, X[i], Y[i], jnp.asarray(poison and i == 2))
  moved = _pure(nnx.state(model, nnx.Param))
  assert not np.array_equal(moved["out"]["kernel"], start["out"]["kernel"])
  assert np.isnan(moved["out"]["kernel"]).any() == poison
  # A worse epoch (or NaN) in phase 1: halve and restart from the initial model.
  optax_lr.nnx_observe(optimizer, jnp.nan if poison else 20.0)
  step(model, optimizer, X[3], Y[3], jnp.asarray(False))
  jax.tree_util.tree_map(np.testing.assert_array_equal, _pure(nnx.state(model, nnx.Param)), start)
  assert float(optax_lr.current_lr(optimizer.opt_state)) == 0.25
  # Flax's own update applies checkpoint - params with optax.apply_updates:
  # from NaN params it cannot come back.
  if poison:
    model = NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax_lr.aalr(0.5, warmup_patience=3), wrt=nnx.Param)
    grads = _nan_grads(nnx.grad(lambda m: _mse(m(X[0]), Y[0]))(model))
    optimizer.update(model, grads)
    optax_lr.nnx_observe(optimizer, jnp.nan)
    optimizer.update(model, grads)
    assert np.isnan(_pure(nnx.state(model, nnx.Param))["out"]["kernel"]).all()


# ------------------------------------------------------------------ linen


class LinenMLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    return linen.Dense(1)(jnp.tanh(linen.Dense(8)(x)))


def _linen_state(tx):
  model = LinenMLP()
  params = model.init(jax.random.PRNGKey(0), X[0])["params"]
  return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _linen_loss(apply_fn):
  return lambda params, x, y: _mse(apply_fn({"params": params}, x), y)


@jax.jit
def _linen_step(state, x, y):
  loss_of_params = _linen_loss(state.apply_fn)
  loss, grads = jax.value_and_grad(loss_of_params)(state.params, x, y)
  state = optax_lr.apply_gradients(
    state,
    grads,
    value=loss,
    loss_fn=lambda p: loss_of_params(p, x, y),
    val_grads=jax.grad(loss_of_params)(state.params, X_VAL, Y_VAL),
  )
  return state, optax_lr.current_lr(state.opt_state)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_train_state_apply_gradients_matches_raw_optax(name):
  state = _linen_state(METHODS[name].make(RATE))
  rates = []
  for i in range(STEPS):
    state, rate = _linen_step(state, X[i], Y[i])
    rates.append(_rates(rate))

  want_params, want_state, want_rates = _reference(
    METHODS[name].make(RATE), _linen_state(optax.sgd(0.0)).params, _linen_loss(LinenMLP().apply)
  )
  np.testing.assert_allclose(rates, want_rates, rtol=1e-6)
  jax.tree_util.tree_map(
    lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7),
    state.params,
    want_params,
  )
  assert int(state.step) == STEPS
  _assert_same_state(state.opt_state, want_state)


@pytest.mark.parametrize("poison", [False, True], ids=["finite", "nan"])
def test_train_state_aalr_rollback_lands_exactly_on_the_checkpoint(poison):
  state = _linen_state(optax_lr.aalr(0.5, warmup_patience=1))

  @jax.jit
  def step(state, x, y, poison):
    grads = jax.grad(_linen_loss(state.apply_fn))(state.params, x, y)
    grads = jax.lax.cond(poison, _nan_grads, lambda g: g, grads)
    return optax_lr.apply_gradients(state, grads)

  @jax.jit
  def end_epoch(state, cost):
    return state.replace(opt_state=optax_lr.observe(state.opt_state, cost))

  state = end_epoch(state, 10.0)  # L* of the initial model
  state = step(state, X[0], Y[0], False)
  state = end_epoch(state, 5.0)  # one good epoch: phase 2, checkpoint pending
  assert int(state.opt_state.phase) == 2
  state = step(state, X[1], Y[1], False)  # saves the params it receives
  checkpoint = jax.tree_util.tree_map(np.asarray, state.opt_state.checkpoint)
  state = step(state, X[2], Y[2], poison)
  assert not np.array_equal(state.params["Dense_1"]["kernel"], checkpoint["Dense_1"]["kernel"])
  # Phase 2 checks after p = 1 epoch: NaN rolls back; a worse cost on the
  # first check only gives a second chance.
  state = end_epoch(state, jnp.nan if poison else 6.0)
  state = step(state, X[3], Y[3], False)
  if poison:
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, checkpoint)
    assert float(optax_lr.current_lr(state.opt_state)) == 0.5  # 0.5 * 2 / 2
  else:
    assert bool(state.opt_state.second_chance)
    assert float(optax_lr.current_lr(state.opt_state)) == 1.0
  assert int(state.step) == 4


def test_train_state_stock_apply_gradients_cannot_take_extra_args():
  state = _linen_state(optax_lr.aslr(0.1))
  grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
  with pytest.raises(TypeError):  # kwargs replace fields of the dataclass
    state.apply_gradients(grads=grads, value=jnp.float32(1.0))
  # Windowed: needs value every call.
  state = _linen_state(optax_lr.aslr(RATE, steps_per_epoch=2, seed=3))
  with pytest.raises(ValueError, match="value"):
    state.apply_gradients(grads=grads)
  # A gradient that is not zero everywhere: an all-zero one at a loss is a
  # dead model to the safety net, whose rollback call counts in no window.
  grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
  state = optax_lr.apply_gradients(state, grads=grads, value=jnp.float32(1.0))
  assert not bool(state.opt_state.safety.rolled_back)
  assert int(state.opt_state.window.steps) == 1


# Scripts of update calls ("step", value) and epoch ends ("observe", cost)
# that end with a rollback from finite params; "saved" is the index of the
# step after which the params are the checkpoint rolled back to (a save
# stores the params the saving call receives).
_ROLLBACK_SCRIPTS = {
  # Phase 2 after one good epoch saves the next step's params; a blown-up
  # epoch rolls back to them.
  "aalr": (
    lambda: optax_lr.aalr(0.5, warmup_patience=1),
    [
      ("observe", 10.0),
      ("step", None),
      ("observe", 5.0),
      ("step", None),
      ("step", None),
      ("observe", 1e6),
      ("step", None),
    ],
    0,
  ),
  # The safety net saves at its 20th healthy call, then a loss 10^6 times
  # the first rolls back to that save.
  "hd_safety_net": (
    lambda: optax_lr.hypergradient_descent(0.01),
    [("step", 1.0)] * 21 + [("step", 1e6)],
    18,
  ),
}


def _run_script(path, make, script):
  """Params after each step of ``script``, applied through ``path``."""
  tx = make()
  model = NnxMLP(nnx.Rngs(0))
  params = _pure(nnx.state(model, nnx.Param))
  grads = jax.tree_util.tree_map(lambda p: 0.1 * jnp.ones_like(p), params)
  kwargs = lambda value: {} if value is None else {"value": jnp.float32(value)}
  history = []
  if path == "nnx":
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    nnx_grads = nnx.grad(lambda m: _mse(m(X[0]), Y[0]))(model)
    nnx_grads = jax.tree_util.tree_map(lambda g: 0.1 * jnp.ones_like(g), nnx_grads)
    for event, number in script:
      if event == "observe":
        optax_lr.nnx_observe(optimizer, number)
      else:
        optimizer.update(model, nnx_grads, **kwargs(number))  # Flax's own update
        history.append(_pure(nnx.state(model, nnx.Param)))
    return history
  if path == "train_state":
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
    for event, number in script:
      if event == "observe":
        state = state.replace(opt_state=optax_lr.observe(state.opt_state, number))
      else:
        assert number is None  # stock apply_gradients takes no extra args
        state = state.apply_gradients(grads=grads)
        history.append(state.params)
    return history
  state = tx.init(params)
  for event, number in script:
    if event == "observe":
      state = optax_lr.observe(state, number)
    else:
      updates, state = tx.update(grads, state, params, **kwargs(number))
      params = (
        optax.apply_updates(params, updates)
        if path == "optax"
        else optax_lr.apply_updates(params, updates, state)
      )
      history.append(params)
  return history


@pytest.mark.parametrize("path", ["optax", "nnx", "train_state"])
@pytest.mark.parametrize("name", sorted(_ROLLBACK_SCRIPTS))
def test_stock_update_paths_land_a_rollback_to_rounding(name, path):
  """The update of a rollback call is ``checkpoint - params``: with finite
  params, optax's and Flax's own update paths land on the checkpoint to
  rounding (only ``optax_lr.apply_updates`` also lands from NaN params)."""
  make, script, saved = _ROLLBACK_SCRIPTS[name]
  if path == "train_state" and any(v is not None for e, v in script if e == "step"):
    pytest.skip("TrainState.apply_gradients cannot pass `value`")
  exact = _run_script("exact", make, script)
  stock = _run_script(path, make, script)
  # The exact path lands on the saved params bit for bit ...
  jax.tree_util.tree_map(np.testing.assert_array_equal, exact[-1], exact[saved])
  assert not np.array_equal(exact[-2]["out"]["kernel"], exact[saved]["out"]["kernel"])
  # ... and every stock path to rounding.
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), stock[-1], exact[-1]
  )


def test_apply_gradients_rejects_overwrite_with_gradient_collections():
  state = _linen_state(optax.sgd(0.1))
  grads = {"params": state.params, "_overwrite_with_gradient": {}}
  with pytest.raises(ValueError, match="_overwrite_with_gradient"):
    optax_lr.apply_gradients(state, grads)


def test_apply_gradients_is_a_dataclass_replace():
  # Custom TrainState subclasses keep their extra fields.
  class Tagged(train_state.TrainState):
    tag: str = struct.field(pytree_node=False, default="run-1")

  params = {"w": jnp.ones(2)}
  state = Tagged.create(apply_fn=None, params=params, tx=optax.sgd(0.5))
  state = optax_lr.apply_gradients(state, {"w": jnp.ones(2)})
  assert state.tag == "run-1" and int(state.step) == 1
  np.testing.assert_allclose(state.params["w"], [0.5, 0.5])


# ------------------------------------------------------------------ examples


def _load_example(name):
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"example_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize(
  "example, method",
  [
    ("nnx_digits", "aslr"),
    ("linen_train_state", "aalr"),
  ],
)
def test_example_trains_and_round_trips_a_checkpoint(example, method):
  history = _load_example(example).train(method, epochs=2, verbose=False)
  assert len(history["val_loss"]) == 2 and len(history["lr"]) == 2 * 15
  assert history["val_loss"][1] < history["val_loss"][0]
  assert all(np.isfinite(history["lr"])) and min(history["lr"]) > 0
