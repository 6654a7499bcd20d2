"""Trace-time checks of the arguments an update call receives.

A bad extra argument must fail while the update is traced, with a message
that names it, never run on: ``<Z, v>`` of a ``(2, 3)`` tangent with a
``(3, 2)`` validation gradient is a perfectly finite wrong number, since a
global inner product only sees each leaf's elements. The checks read shapes
and tree structures only, so they cost nothing in the compiled step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["check_direction", "check_loss_fn", "check_params", "check_tree_like"]


def check_direction(direction: Any) -> None:
  """Raises ``ValueError`` unless ``direction`` is an optax transformation."""
  if not isinstance(direction, optax.GradientTransformation):
    raise ValueError(
        "direction must be an optax.GradientTransformation (for example "
        f"optax.trace(0.9) or optax.scale_by_adam()), got direction={direction!r}"
    )


def check_tree_like(name: str, tree: Any, reference: Any, what: str) -> None:
  """Raises ``ValueError`` naming ``name`` unless ``tree`` is shaped like ``reference``.

  Args:
    name: the argument's name, e.g. ``"val_grads"``.
    tree: the argument.
    reference: a pytree with the expected structure and leaf shapes.
    what: what ``reference`` is, for the message (``"the gradients"``).

  Raises:
    ValueError: when the tree structures or a leaf's shape differ.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._checks import check_tree_like
    >>> grads = {'w': jnp.zeros((2, 3))}
    >>> check_tree_like('val_grads', {'w': jnp.ones((2, 3))}, grads, 'the gradients')
    >>> check_tree_like('val_grads', {'w': jnp.ones((3, 2))}, grads, 'the gradients')
    Traceback (most recent call last):
    ...
    ValueError: val_grads['w']: expected shape (2, 3) like the gradients, got (3, 2).
  """
  tree_def = jax.tree_util.tree_structure(tree)
  reference_def = jax.tree_util.tree_structure(reference)
  if tree_def != reference_def:
    raise ValueError(
        f"{name}: expected a pytree with the structure of {what}, "
        f"{reference_def}, got {tree_def}."
    )
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  for (path, leaf), expected in zip(leaves, jax.tree_util.tree_leaves(reference)):
    if jnp.shape(leaf) != jnp.shape(expected):
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)}: expected shape "
          f"{jnp.shape(expected)} like {what}, got {jnp.shape(leaf)}."
      )


def check_loss_fn(loss_fn: Any, params: Any, method: str) -> None:
  """Raises ``ValueError`` unless ``loss_fn(params)`` is a scalar float."""
  if not callable(loss_fn):
    raise ValueError(
        f"loss_fn: {method} needs a callable params -> scalar loss, got "
        f"loss_fn={loss_fn!r}."
    )
  out = jax.eval_shape(loss_fn, params)
  if not (
      isinstance(out, jax.ShapeDtypeStruct)
      and out.shape == ()
      and jnp.issubdtype(out.dtype, jnp.floating)
  ):
    raise ValueError(
        f"loss_fn: {method} needs loss_fn(params) to be a scalar float loss, "
        f"got {out}."
    )


def check_params(params: Any, updates: Any, method: str, why: str) -> None:
  """Raises ``ValueError`` unless ``params`` are given and shaped like ``updates``.

  Args:
    params: the ``params`` argument of an update call.
    updates: the gradients it received.
    method: the method's name, for the message.
    why: what the params are for, e.g. ``"its safety net's checkpoint"``.
  """
  # `None` is also the empty params tree: missing only if updates are not.
  if params is None and jax.tree_util.tree_leaves(updates):
    raise ValueError(
        f"params: {method} needs the params ({why}): call "
        "update(grads, state, params)."
    )
  check_tree_like("params", params, updates, "the updates")
