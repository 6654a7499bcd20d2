"""Flax train steps that pass optax_lr's extra arguments and honour rollbacks.

What Flax 0.12 does with the two wrappers, and what this module adds:

* ``flax.nnx.Optimizer.update(model, grads, **kwargs)`` forwards ``kwargs``
  (``value``, ``loss_fn``, ``val_grads``) to ``tx.update``, so every method
  except AALR works with it as is. It applies the updates with
  ``optax.apply_updates``, though: an AALR rollback update
  ``checkpoint - params`` leaves NaN params NaN, and finite ones only land on
  the checkpoint up to rounding. :func:`nnx_update` is the same call with
  ``optax_lr.apply_updates``. ``optimizer.opt_state`` holds its arrays in
  ``nnx.Variable`` boxes, which ``optax_lr.observe`` cannot write back into;
  :func:`nnx_observe` does that.
* ``flax.training.train_state.TrainState.apply_gradients(grads=..., **kwargs)``
  treats ``kwargs`` as fields of the state to replace: nothing reaches
  ``tx.update``. :func:`apply_gradients` is the same step with the keyword
  arguments passed to ``tx.update`` and ``optax_lr.apply_updates``.

Flax is imported inside the functions that need it: ``optax_lr`` itself does
not depend on Flax.
"""

from __future__ import annotations

from typing import Any

import jax

from optax_lr import _monitor

__all__ = ["apply_gradients", "nnx_observe", "nnx_update"]

# flax.linen.fp8_ops.OVERWRITE_WITH_GRADIENT: the linen collection whose
# "gradients" are new values (fp8 scales), not gradients.
_OVERWRITE_WITH_GRADIENT = "_overwrite_with_gradient"


def apply_gradients(state: Any, grads: Any, **extra_args: Any) -> Any:
  r"""``TrainState.apply_gradients`` that passes extra args to the optimizer.

  .. math::
    (u, s') = \mathrm{tx.update}(g, s, w, **extra\_args), \quad
    w' = \mathrm{optax\_lr.apply\_updates}(w, u, s'),

  and ``step`` is incremented: the Flax step, except that the keyword
  arguments go to ``tx.update`` (``value=loss`` for ASLR and AALR in
  ``steps_per_epoch`` mode, ``loss_fn=`` for RTHO and MARTHE, ``val_grads=``
  for the hypergradient methods) instead of replacing fields of the state, and
  an AALR rollback lands exactly on its checkpoint (NaN params included).
  Jit it as usual; nothing here syncs with the host.

  Args:
    state: a ``flax.training.train_state.TrainState`` (anything with
      ``params``, ``opt_state``, ``tx``, ``step`` and ``replace``).
    grads: gradients with the structure of ``state.params``.
    **extra_args: keyword arguments for ``state.tx.update``.

  Returns:
    The new state, with ``step + 1``, the new ``params`` and ``opt_state``.

  Raises:
    ValueError: when ``grads`` holds linen's ``_overwrite_with_gradient``
      collection, which this step does not split off.

  Example:
    >>> import jax, jax.numpy as jnp, optax_lr
    >>> from flax.training import train_state
    >>> loss = lambda p: jnp.sum((p['w'] - 3.0) ** 2)
    >>> state = train_state.TrainState.create(
    ...     apply_fn=None, params={'w': jnp.zeros(2)},
    ...     tx=optax_lr.marthe(0.01, hyper_lr=1e-5, hyper_lr_step=1e-7))
    >>> step = jax.jit(lambda s: optax_lr.apply_gradients(
    ...     s, jax.grad(loss)(s.params), loss_fn=loss))
    >>> for _ in range(5):
    ...   state = step(state)
    >>> int(state.step), bool(optax_lr.current_lr(state.opt_state) > 0.01)
    (5, True)

  References:
    The methods' papers are cited in their own docstrings; this is plumbing
    for Flax's ``TrainState`` (https://flax.readthedocs.io).
  """
  if isinstance(grads, dict) and _OVERWRITE_WITH_GRADIENT in grads:
    raise ValueError(
      f"grads: holds the {_OVERWRITE_WITH_GRADIENT!r} collection; use "
      "TrainState.apply_gradients for models with overwrite-with-gradient "
      "variables."
    )
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra_args)
  params = _monitor.apply_updates(state.params, updates, opt_state)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def _state_fn(optimizer: Any):
  """``nnx.state`` with the optimizer's graph mode (Flax >= 0.12 has one)."""
  from flax import nnx

  graph = getattr(optimizer, "graph", None)
  return lambda tree, *filters: nnx.state(tree, *filters, graph=graph)


def _holds_variables(tree: Any) -> bool:
  """Whether ``tree`` has ``nnx.Variable`` leaves (``nnx.grad``'s output does)."""
  from flax import nnx

  is_variable = lambda x: isinstance(x, nnx.Variable)
  return any(map(is_variable, jax.tree_util.tree_leaves(tree, is_leaf=is_variable)))


def nnx_update(optimizer: Any, model: Any, grads: Any, /, **extra_args: Any) -> Any:
  r"""``nnx.Optimizer.update`` whose parameter step honours AALR rollbacks.

  .. math::
    (u, s') = \mathrm{tx.update}(g, s, w, **extra\_args), \quad
    w' = \mathrm{optax\_lr.apply\_updates}(w, u, s'),

  with ``w`` the model's variables selected by ``optimizer.wrt``; then the
  model, ``optimizer.opt_state`` and ``optimizer.step`` are updated in place,
  as ``optimizer.update(model, grads, **extra_args)`` does. ``val_grads`` from
  ``nnx.grad`` is filtered by ``optimizer.wrt`` like ``grads``; a pytree of
  arrays shaped like the params (``jax.grad`` of a ``loss_fn`` of the params)
  is passed as it is. Works inside ``nnx.jit``.

  A ``loss_fn`` for RTHO/MARTHE must be a function of the *params* that
  ``tx.update`` receives (an ``nnx.State`` of arrays), not of the model::

    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    loss_fn = lambda params: loss(nnx.merge(graphdef, params, rest), batch)

  Args:
    optimizer: a ``flax.nnx.Optimizer`` built on ``model``.
    model: the ``nnx.Module`` being trained.
    grads: the gradients from ``nnx.grad`` (an ``nnx.State``).
    **extra_args: keyword arguments for ``optimizer.tx.update``.

  Returns:
    The updates, as ``nnx.Optimizer.update`` returns them.

  Example:
    >>> import jax.numpy as jnp, optax_lr
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> opt = nnx.Optimizer(model, optax_lr.aalr(0.5, warmup_patience=2),
    ...                     wrt=nnx.Param)
    >>> start = model.kernel[...]
    >>> loss = lambda m: jnp.mean(m(jnp.ones((4, 2))) ** 2)
    >>> grads = nnx.grad(loss)(model)
    >>> _ = optax_lr.nnx_update(opt, model, grads)
    >>> optax_lr.nnx_observe(opt, 1.0)  # L* = 1
    >>> optax_lr.nnx_observe(opt, 2.0)  # worse: halve, roll back
    >>> _ = optax_lr.nnx_update(opt, model, grads)
    >>> bool((model.kernel[...] == start).all()), int(opt.step[...])
    (True, 2)

  References:
    The methods' papers are cited in their own docstrings; this is plumbing
    for Flax's ``nnx.Optimizer`` (https://flax.readthedocs.io).
  """
  from flax import nnx

  state_of = _state_fn(optimizer)
  params = nnx.as_pure(state_of(model, optimizer.wrt))
  grads = nnx.as_pure(state_of(grads, optimizer.wrt))
  val_grads = extra_args.get("val_grads")
  if val_grads is not None and _holds_variables(val_grads):
    extra_args["val_grads"] = state_of(val_grads, optimizer.wrt)
  extra_args = nnx.as_pure(extra_args)
  updates, opt_state = optimizer.tx.update(
    grads, nnx.as_pure(optimizer.opt_state), params, **extra_args
  )
  nnx.update(model, _monitor.apply_updates(params, updates, opt_state))
  nnx.update(optimizer.opt_state, state_of(opt_state))
  optimizer.step[...] += 1
  return updates


def nnx_observe(optimizer: Any, cost: Any) -> None:
  r"""``optax_lr.observe`` for an ``nnx.Optimizer``, in place.

  Applies one epoch end with the monitored ``cost`` (e.g. a validation loss)
  to every epoch-level method (ASLR, AALR) in ``optimizer.opt_state``:
  :math:`s \leftarrow \mathrm{observe}(s, \mathrm{cost})`. Works inside and
  outside ``nnx.jit``; changing costs never recompile.

  Args:
    optimizer: a ``flax.nnx.Optimizer``.
    cost: a scalar cost.

  Returns:
    None; ``optimizer.opt_state`` is updated in place.

  Example:
    >>> import jax.numpy as jnp, optax_lr
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> opt = nnx.Optimizer(model, optax_lr.aslr(0.1), wrt=nnx.Param)
    >>> optax_lr.nnx_observe(opt, 1.0)  # the best so far
    >>> optax_lr.nnx_observe(opt, 2.0)  # worse: the search starts
    >>> print(round(float(optax_lr.current_lr(opt.opt_state)), 6))
    0.2

  References:
    The methods' papers are cited in their own docstrings; this is plumbing
    for Flax's ``nnx.Optimizer`` (https://flax.readthedocs.io).
  """
  from flax import nnx

  opt_state = _monitor.observe(nnx.as_pure(optimizer.opt_state), cost)
  nnx.update(optimizer.opt_state, _state_fn(optimizer)(opt_state))
