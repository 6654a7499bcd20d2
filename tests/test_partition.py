"""Every method inside ``optax.partition``, with a loss over the full params.

A method in a partition group must do exactly what it does on that group's
params alone, with the loss as a function of the group and the other groups
held at their current values: the reference below runs the same method on the
group by hand, in lockstep with plain SGD on the rest. The extra arguments
reach it per group: ``loss_fn`` through ``optax_lr.partition_loss``, a full
``val_grads`` masked by the method, ``value`` as is. ``current_lr`` reports
each group's rate; AALR's and the safety net's rollbacks land per group.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lr
from optax_lr._registry import METHODS

CASES = pytest.mark.parametrize("case", METHODS, ids=lambda c: c.name)

HEAD_LR = 0.05
STEPS = 24


def loss(params):
  """Non-separable: the body's and the head's gradients depend on each other."""
  body = params["body"]
  pred = jnp.tanh(body["w"] @ jnp.array([0.5, -1.0, 2.0])) + body["b"]
  target = jnp.array([1.0, -0.5])
  return jnp.sum((params["head"] * pred - target) ** 2) + 0.1 * jnp.sum(body["w"] ** 2)


def init_params():
  return {
    "body": {"w": jnp.array([[0.3, -0.2, 0.1], [0.0, 0.4, -0.3]]), "b": jnp.array([0.1, -0.1])},
    "head": jnp.array(1.5),
  }


LABELS = {"body": {"w": "body", "b": "body"}, "head": "head"}


def extra_args(case, loss_fn, params, grads):
  available = {
    "value": lambda: loss_fn(params),
    "loss_fn": lambda: optax_lr.partition_loss(loss_fn, params),
    "val_grads": lambda: grads,  # the full tree: the method masks it
  }
  return {name: available[name]() for name in case.given}


def _trajectory(case, step, state):
  """``STEPS`` calls of ``step`` from the initial params (an epoch end every
  4 for epoch-level methods): the params and the rates after each."""
  params = init_params()
  trajectory, rates = [], []
  for t in range(STEPS):
    params, state = step(params, state)
    if case.epoch_level and t % 4 == 3:
      state = optax_lr.observe(state, loss(params))
    trajectory.append(params)
    rates.append(optax_lr.current_lr(state))
  return trajectory, rates


def _partitioned_run(case, lr):
  tx = optax.partition({"body": case.make(lr), "head": optax.sgd(HEAD_LR)}, LABELS)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params, **extra_args(case, loss, params, grads))
    return optax_lr.apply_updates(params, updates, state), state

  return _trajectory(case, step, tx.init(init_params()))


def _reference_run(case, lr):
  """The method on the body alone, the head by SGD, by hand."""
  tx = case.make(lr)

  @jax.jit
  def step(params, state):
    head = params["head"]
    body_loss = lambda body: loss({"body": body, "head": head})
    grads = jax.grad(loss)(params)
    available = {
      "value": lambda: loss(params),
      "loss_fn": lambda: body_loss,
      "val_grads": lambda: grads["body"],
    }
    extra = {name: available[name]() for name in case.given}
    updates, state = tx.update(grads["body"], state, params["body"], **extra)
    body = optax_lr.apply_updates(params["body"], updates, state)
    return {"body": body, "head": head - HEAD_LR * grads["head"]}, state

  return _trajectory(case, step, tx.init(init_params()["body"]))


@CASES
def test_partition_group_matches_the_method_on_the_group(case):
  lr = case.parabola_lr
  got, got_rates = _partitioned_run(case, lr)
  want, want_rates = _reference_run(case, lr)
  assert float(loss(got[-1])) < float(loss(init_params()))
  for t, (a, b) in enumerate(zip(got, want)):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6, err_msg=f"step {t}")
  for a, b in zip(got_rates, want_rates):
    # Per-leaf rates: the partition's are shaped like its masked view.
    np.testing.assert_allclose(
      jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), rtol=2e-5
    )


@CASES
def test_current_lr_reports_each_group(case):
  labels = {"body": {"w": "w", "b": "b"}, "head": "head"}
  tx = optax.partition({"w": case.make(0.1), "b": case.make(0.2), "head": optax.sgd(0.1)}, labels)
  params = init_params()
  state = tx.init(params)
  grads = jax.grad(loss)(params)
  _, state = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra_args(case, loss, p, g)))(
    grads, state, params
  )
  rates = optax_lr.current_lr(state)
  assert isinstance(rates, tuple) and len(rates) == 2  # one per group, b then w
  for rate in rates:
    for leaf in jax.tree_util.tree_leaves(rate):
      assert np.isfinite(leaf) and leaf > 0


def test_loss_over_full_params_without_partition_loss_says_what_to_do():
  tx = optax.partition({"body": optax_lr.rtho(0.01), "head": optax.sgd(0.1)}, LABELS)
  params = init_params()
  with pytest.raises(ValueError, match="partition_loss"):
    tx.update(jax.grad(loss)(params), tx.init(params), params, loss_fn=loss)


def test_partition_loss_outside_a_partition_is_the_loss():
  params = init_params()
  bound = optax_lr.partition_loss(loss, params)
  assert float(bound(params)) == float(loss(params))
  with pytest.raises(ValueError, match="loss_fn"):
    optax_lr.partition_loss(3.0, params)


def test_partition_loss_holds_the_other_groups_at_their_values():
  params = init_params()
  bound = optax_lr.partition_loss(loss, params)
  masked = {"body": params["body"], "head": optax.MaskedNode()}
  grad = jax.grad(bound)(masked)
  want = jax.grad(loss)(params)["body"]
  jax.tree_util.tree_map(np.testing.assert_allclose, grad["body"], want)


@pytest.mark.parametrize("exact", [True, False], ids=["optax_lr", "stock"])
def test_aalr_rollback_lands_per_group(exact):
  # Phase 2 saves the body after a good epoch; a blown-up epoch then rolls
  # the body back, while the head takes its own SGD step. The stock
  # optax.apply_updates lands there too (the update is checkpoint - params).
  tx = optax.partition(
    {"body": optax_lr.aalr(0.05, warmup_patience=1), "head": optax.sgd(HEAD_LR)}, LABELS
  )

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    new = (
      optax_lr.apply_updates(params, updates, state)
      if exact
      else optax.apply_updates(params, updates)
    )
    return new, state, grads

  params = init_params()
  state = optax_lr.observe(tx.init(params), loss(params))
  params, state, _ = step(params, state)
  state = optax_lr.observe(state, loss(params))  # better: a save is pending
  saved = params["body"]
  params, state, _ = step(params, state)  # saves `saved`
  params, state, _ = step(params, state)
  state = optax_lr.observe(state, jnp.float32(1e6))  # blew up: rollback
  before = params
  params, state, grads = step(params, state)
  aalr_state = state.inner_states["body"].inner_state
  assert bool(aalr_state.rolled_back)
  assert isinstance(aalr_state.checkpoint["head"], optax.MaskedNode)
  jax.tree_util.tree_map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), params["body"], saved
  )
  np.testing.assert_allclose(params["head"], before["head"] - HEAD_LR * grads["head"], rtol=1e-6)
