"""Shared pieces of the reliability suites: sharding, resume, faults, properties.

Every suite is driven by the contract suite's `METHODS` list (one `MethodCase`
per method, recording the extra arguments its update needs), so a method that
joins the contract suite joins these too; nothing here names a method.

The problem is a small tanh MLP regression whose leading dimensions are all
multiples of 8, so each leaf can be sharded over the 8 host devices that
`conftest.py` creates. Batches are a pure function of the step index, so two
processes that run the same steps see the same data.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lr
from optax_lr import _checkpoint
from optax_lr import _monitor
from test_contract import METHODS  # noqa: F401  (re-exported for the suites)
from test_contract import MethodCase

IN, HIDDEN, OUT = 16, 32, 8
BATCH = 64


def mlp_params(seed: int = 0) -> dict:
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return {
    "w1": jax.random.normal(k1, (IN, HIDDEN), jnp.float32) / np.sqrt(IN),
    "b1": jnp.zeros((HIDDEN,), jnp.float32),
    "w2": jax.random.normal(k2, (HIDDEN, OUT), jnp.float32) / np.sqrt(HIDDEN),
    "b2": jnp.zeros((OUT,), jnp.float32),
  }


def mlp_loss(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  x, y = batch
  hidden = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean(jnp.square(hidden @ params["w2"] + params["b2"] - y))


def batch_at(t: int) -> tuple[jax.Array, jax.Array]:
  """The batch of step ``t``: inputs and a smooth target of them."""
  x = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(1), t), (BATCH, IN))
  return x, jnp.sin(x[:, :OUT]) + 0.5 * x[:, OUT:]


def batches(start: int, stop: int) -> tuple[jax.Array, jax.Array]:
  """Batches ``start..stop-1`` stacked along a leading step axis."""
  steps = [batch_at(t) for t in range(start, stop)]
  return tuple(jnp.stack(parts) for parts in zip(*steps))


def make_train_step(
  case: MethodCase,
  tx,
  *,
  epoch_every: int,
  cost_scale: Optional[Callable[[jax.Array], jax.Array]] = None,
  loss_of: Callable[[Any, Any], jax.Array] = mlp_loss,
  observe: Optional[Callable[[Any, jax.Array], Any]] = None,
):
  """``(params, state, t, batch) -> (params, state, loss)``, one training step.

  ``loss_of(params, batch)`` (default: the MLP's) is differentiated; the
  update gets the extra arguments ``case.needs``. After every
  ``epoch_every``-th call an epoch ends: ``observe(state, cost)`` (default
  ``optax_lr.observe`` for a case driven by it, ``case.epoch_level``) with
  the batch loss times ``cost_scale(t)``. Other cases get no epoch ends: a
  method with ``steps_per_epoch`` ends its own, and ``observe`` refuses it.
  """
  if observe is None and case.epoch_level:
    observe = optax_lr.observe

  def step(params, state, t, batch):
    loss_fn = lambda p: loss_of(p, batch)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params, **case.extra_args(loss_fn, params))
    params = optax_lr.apply_updates(params, updates, state)
    if observe is not None:
      cost = loss if cost_scale is None else loss * cost_scale(t)
      state = jax.lax.cond(
        (t + 1) % epoch_every == 0,
        lambda s: observe(s, cost),
        lambda s: s,
        state,
      )
    return params, state, loss

  return step


def holds_optax_lr_method(state: Any) -> bool:
  """Whether ``state`` contains the state of a method registered by optax_lr."""
  return any(
    type(node) in _monitor._METHODS and type(node).__module__.startswith("optax_lr")
    for node in jax.tree_util.tree_leaves(state, is_leaf=lambda x: type(x) in _monitor._METHODS)
  )


def find_states(tree: Any, cls: type) -> list:
  """Every node of type ``cls`` in ``tree``."""
  nodes = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, cls))
  return [node for node in nodes if isinstance(node, cls)]


def assert_trees_identical(actual: Any, expected: Any) -> None:
  """Same structure, dtypes, shapes and bits."""
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)
  ):
    a, b = np.asarray(a), np.asarray(b)
    where = jax.tree_util.keystr(path)
    assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype)
    # Bitwise, so that NaNs compare equal to themselves and -0.0 != 0.0.
    np.testing.assert_array_equal(
      a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8), err_msg=where
    )


def assert_rates_valid(rates: Any) -> None:
  for leaf in jax.tree_util.tree_leaves(rates):
    leaf = np.asarray(leaf, np.float64)
    assert np.all(np.isfinite(leaf)), f"non-finite learning rate: {leaf}"
    assert np.all(leaf >= 0), f"negative learning rate: {leaf}"


def case_id(case: MethodCase) -> str:
  return case.name


# ---------------------------------------------------------------- resume
#
# `test_resume.py` and the fresh process it starts (`_resume_worker.py`) build
# the same jitted step from these, so both run the same compiled program.

RESUME_TOTAL_STEPS = 12
RESUME_SAVED_AFTER = 6  # steps run before the checkpoint
RESUME_EPOCH_EVERY = 2


def _resume_cost_scale(t):
  # The epoch that ends right before the checkpoint diverged (an infinite
  # cost): AALR schedules a rollback (in either phase) and ASLR starts
  # walking, so the checkpoint holds decisions still to be carried out.
  return jnp.where(t == RESUME_SAVED_AFTER - 1, jnp.inf, 1.0).astype(jnp.float32)


def resume_step(case: MethodCase):
  """``(tx, step)``: ``step(params, state, t) -> (params, state, loss)``, jitted
  with params and state donated; the batch of step ``t`` is made inside."""
  tx = case.make(case.parabola_lr)
  step = make_train_step(case, tx, epoch_every=RESUME_EPOCH_EVERY, cost_scale=_resume_cost_scale)
  jitted = jax.jit(lambda p, s, t: step(p, s, t, batch_at(t)), donate_argnums=(0, 1))
  return tx, jitted


def resume_template(tx) -> dict:
  """A checkpoint's structure, built from scratch: the restore target."""
  params = mlp_params()
  return {"params": params, "state": tx.init(params), "step": jnp.zeros([], jnp.int32)}


def resume_run(step, params, state, start: int, stop: int):
  """Steps ``start..stop-1``: ``(params, state, losses)``."""
  # Through the host: restored arrays (orbax commits them to a device) enter
  # the step exactly as the original run's arrays did, so both processes run
  # one and the same compiled step.
  params, state = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), (params, state))
  losses = []
  for t in range(start, stop):
    params, state, loss = step(params, state, jnp.int32(t))
    losses.append(loss)
  return params, state, jnp.stack(losses) if losses else jnp.zeros([0], jnp.float32)


# ---------------------------------------------------------------- sharding
#
# `test_sharding.py` and its multi-process workers (`_multihost_worker.py`)
# run the same jitted training run on a one-axis mesh "fsdp": each param
# leaf's leading axis and each batch are split over the mesh's devices.

SHARDED_STEPS = 6
SHARDED_EPOCH_EVERY = 2


def sharded_runner(case: MethodCase):
  """``(tx, run)``: ``run(params, state, batches) -> (params, state, losses)``,
  ``SHARDED_STEPS`` steps in one jitted ``lax.scan``, params and state donated."""
  tx = case.make(case.parabola_lr)
  step = make_train_step(case, tx, epoch_every=SHARDED_EPOCH_EVERY)

  return tx, _scan_run(step)


def _scan_run(step):
  """``SHARDED_STEPS`` of ``step`` in one jitted, donated ``lax.scan``."""

  def run(params, state, data):
    def body(carry, inputs):
      t, batch = inputs
      params, state, loss = step(*carry, t, batch)
      return (params, state), loss

    # Full float32 matmuls: GPUs would otherwise use TF32, whose rounding
    # dwarfs the reordering of reductions that the comparisons allow for.
    with jax.default_matmul_precision("highest"):
      (params, state), losses = jax.lax.scan(
        body, (params, state), (jnp.arange(SHARDED_STEPS), data)
      )
    return params, state, losses

  return jax.jit(run, donate_argnums=(0, 1))


# State vectors of at most this many entries are bookkeeping, as scalars are
# (the safety net packs its fifteen scalars into vectors of 5 and 10), and
# every device holds them whole.
BOOKKEEPING_SIZE = _checkpoint.BOOKKEEPING_SIZE


def assert_sharded_like_params(params: Any, state: Any) -> None:
  """Every param-sized state leaf is sharded exactly like the params (which
  all have the same sharding), and no state array bigger than the mesh (and
  than :data:`BOOKKEEPING_SIZE`) sits whole on any device."""
  (sharding,) = {p.sharding for p in jax.tree_util.tree_leaves(params)}
  num_devices = len(sharding.device_set)
  param_shapes = {jnp.shape(p) for p in jax.tree_util.tree_leaves(params)}
  small = max(num_devices - 1, BOOKKEEPING_SIZE)
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    where = f"state{jax.tree_util.keystr(path)} {leaf.shape}"
    assert leaf.size <= small or not leaf.sharding.is_fully_replicated, (
      f"{where} is replicated on every device"
    )
    if leaf.ndim >= 1 and leaf.shape in param_shapes:
      assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (
        f"{where} is {leaf.sharding}, not sharded like its param"
      )
      for shard in leaf.addressable_shards:  # 1/num_devices of it per device
        assert shard.data.size * num_devices == leaf.size, (where, shard.data.shape)


def combined_runner():
  """``(tx, run, params)``: every method of `METHODS` in one optimizer.

  `optax.partition` gives each method its own copy of the MLP (the params are
  ``{case name: mlp params}``), so one compiled program of the
  ``sharded_runner`` kind covers every method: the multi-process test pays for
  one compilation, not one per method. The loss is the sum of the copies'
  losses; inside the partition each method sees the other copies as
  `optax.MaskedNode`s, which the loss skips (so ``loss_fn`` gives each method
  the Hessian of its own copy). Every method gets the union of the extra
  arguments the methods need (a method ignores those it does not read).
  """
  params = {case.name: mlp_params(seed) for seed, case in enumerate(METHODS)}
  labels = {
    name: jax.tree_util.tree_map(lambda _, name=name: name, sub) for name, sub in params.items()
  }
  tx = optax.partition({case.name: case.make(case.parabola_lr) for case in METHODS}, labels)
  needs = tuple(sorted({name for case in METHODS for name in case.needs}))
  every = MethodCase("every_method", make=None, needs=needs)

  def loss(params, batch):
    total = jnp.zeros([], jnp.float32)
    for sub in params.values():
      if not isinstance(sub["w1"], optax.MaskedNode):
        total = total + mlp_loss(sub, batch)
    return total

  observed = [case.name for case in METHODS if case.epoch_level]

  def observe(state, cost):
    # Epoch ends for the groups `observe` drives; the windowed ones end
    # their own epochs (and refuse `observe`).
    inner = dict(state.inner_states)
    for name in observed:
      inner[name] = optax_lr.observe(inner[name], cost)
    return state._replace(inner_states=inner)

  step = make_train_step(every, tx, epoch_every=SHARDED_EPOCH_EVERY, loss_of=loss, observe=observe)
  return tx, _scan_run(step), params
