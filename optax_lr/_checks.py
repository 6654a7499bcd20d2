"""Trace-time checks of the arguments an update call receives.

A bad extra argument must fail while the update is traced, with a message
that names it, never run on: ``<Z, v>`` of a ``(2, 3)`` tangent with a
``(3, 2)`` validation gradient is a perfectly finite wrong number, since a
global inner product only sees each leaf's elements. The checks read shapes
and tree structures only, so they cost nothing in the compiled step.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lr import _partition

__all__ = [
    "check_direction",
    "check_loss_fn",
    "check_params",
    "check_tree_like",
    "is_array",
    "real",
    "is_traced",
]


def is_traced(value: Any) -> bool:
  """True for a hyperparameter whose value is unknown at trace time.

  ``optax.inject_hyperparams`` calls a method's factory inside ``init`` and
  ``update`` with its numeric hyperparameters as arrays, traced under ``jit``.
  Factories validate every concrete value (a direct call, or an eager
  ``init``), where a bad value raises ``ValueError`` naming it, and pass a
  traced one through: nothing can be raised about a value that is not known
  until the compiled step runs.
  """
  return isinstance(value, jax.core.Tracer)


def is_array(value: Any) -> bool:
  """True for an array hyperparameter (traced or not), false for a Python number.

  A state's structure may depend on a hyperparameter's value only when it is
  a Python number: ``optax.inject_hyperparams`` hands the factory an array
  (traced under ``jit``) in ``init`` and in every ``update``, so an array
  takes the general structure, the same in both.
  """
  return isinstance(value, (jax.Array, np.ndarray, np.generic))


def real(name: str, value: Any, ok: Callable[[float], bool] = math.isfinite,
         requirement: str = "a finite real number") -> Any:
  """Validates a real scalar hyperparameter; returns it ready for ``jnp``.

  Args:
    name: the argument's name, for the message.
    value: a Python number, a 0-d array, or a traced 0-d array (injected by
      ``optax.inject_hyperparams``).
    ok: the condition a concrete value must meet (applied to its float).
    requirement: what ``ok`` requires, for the message.

  Returns:
    A Python float for a concrete non-array value; an array (traced or not)
    unchanged, so that :func:`is_array` still tells the two apart.

  Raises:
    ValueError: naming ``value`` when it is not a real scalar (bools and
      strings included) or when a concrete one fails ``ok``.

  Example:
    >>> from optax_lr._checks import real
    >>> real("gamma", 0.2, lambda x: x > 0, "> 0")
    0.2
    >>> real("gamma", -1, lambda x: x > 0, "> 0")
    Traceback (most recent call last):
    ...
    ValueError: gamma must be > 0, got gamma=-1.
  """
  dtype = getattr(value, "dtype", None)
  # Not `dtype.kind`: bfloat16's kind is "V".
  real_dtype = dtype is not None and (
      jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
  is_number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
  if is_traced(value):
    if jnp.shape(value) != () or not real_dtype:
      raise ValueError(f"{name} must be a real scalar, got {name}={value!r}.")
    return value
  if not (is_number or (is_array(value) and jnp.shape(value) == () and real_dtype)):
    raise ValueError(f"{name} must be a real scalar, got {name}={value!r}.")
  x = float(np.asarray(value).item())
  if not ok(x):
    raise ValueError(f"{name} must be {requirement}, got {name}={value!r}.")
  return value if is_array(value) else x


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
  try:
    out = jax.eval_shape(loss_fn, params)
  except Exception as error:  # pylint: disable=broad-except
    if not _partition.has_masked_nodes(params):
      raise
    # Inside optax.partition the method sees optax.MaskedNode placeholders
    # for the params of the other groups, which a loss over the full params
    # cannot read.
    raise ValueError(
        f"loss_fn: {method} runs inside optax.partition (or optax.masked), "
        "where it sees only its group of params, and loss_fn failed on them "
        f"({type(error).__name__}: {error}). Pass loss_fn="
        "optax_lr.partition_loss(loss_fn, params) with the full params: it "
        "evaluates the loss with the other groups held at their values."
    ) from error
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
