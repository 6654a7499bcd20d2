"""Running a method and its ``optax.inject_hyperparams`` twin side by side."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

import optax_lr


def inject_params():
  return {"a": jnp.array([1.0, -2.0, 3.0], jnp.float32), "b": jnp.full((2, 2), 0.5, jnp.float32)}


def inject_loss(params):
  return sum(jnp.sum(0.5 * x**2 + jnp.sin(x)) for x in jax.tree_util.tree_leaves(params))


def run_side_by_side(plain, injected, steps, extra_at, cost_at):
  """Runs both, jitted, asserting equal updates, params and (inner) states.

  ``extra_at(t)``: the update's extra args; ``cost_at(t)``: a cost to observe
  after step ``t``, or None. Returns the plain run's state after each step.
  """
  close = lambda a, b: chex.assert_trees_all_close(a, b, rtol=1e-5)
  params = inject_params()
  state_p, state_i = jax.jit(plain.init)(params), jax.jit(injected.init)(params)
  assert isinstance(state_i, optax.InjectStatefulHyperparamsState)
  close(state_i.inner_state, state_p)
  update_p, update_i = jax.jit(plain.update), jax.jit(injected.update)
  observe = jax.jit(optax_lr.observe)
  apply = jax.jit(optax_lr.apply_updates)
  params_p = params_i = params
  states = []
  for t in range(steps):
    grads = jax.grad(inject_loss)(params_p)
    updates_p, state_p = update_p(grads, state_p, params_p, **extra_at(t))
    updates_i, state_i = update_i(grads, state_i, params_i, **extra_at(t))
    close(updates_i, updates_p)
    close(state_i.inner_state, state_p)
    params_p = apply(params_p, updates_p, state_p)
    params_i = apply(params_i, updates_i, state_i)
    close(params_i, params_p)
    cost = cost_at(t)
    if cost is not None:
      state_p = observe(state_p, jnp.float32(cost))
      state_i = observe(state_i, jnp.float32(cost))
      close(state_i.inner_state, state_p)
    close(optax_lr.current_lr(state_i), optax_lr.current_lr(state_p))
    states.append(state_p)
  return states
