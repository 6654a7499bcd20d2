"""Trace-time checks of the arguments an update call receives.

A bad extra argument must fail while the update is traced, with a message
that names it, never run on: ``<Z, v>`` of a ``(2, 3)`` tangent with a
``(3, 2)`` validation gradient is a perfectly finite wrong number, since a
global inner product only sees each leaf's elements. The checks read shapes
and tree structures only, so they cost nothing in the compiled step.

It is also the one place of the factories' argument checks, with one rule:
a wrong type (a string, ``None``, a complex, an array where a scalar is
needed, a float where an int is) raises :class:`ArgumentTypeError`, a
``TypeError``; a bad value (negative, NaN, infinite, out of range) raises
``ValueError``. Both name the argument: ``"<name> must be <requirement>, got
<name>=<value>."``. Every check takes ``(name, value, ...)`` and returns the
value, normalized where it says so. A value traced under ``jit`` (injected by
``optax.inject_hyperparams``) is unknown at trace time: the checks that
accept arrays pass it through once its shape and dtype are right.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Callable, Literal, overload

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lr import _partition

__all__ = [
  "ArgumentTypeError",
  "at_least",
  "boolean",
  "check_direction",
  "check_loss_fn",
  "check_params",
  "check_tree_like",
  "concrete",
  "finite",
  "in_range",
  "integer",
  "is_array",
  "non_negative",
  "one_of",
  "positive",
  "positive_int",
  "real",
  "is_traced",
]


class ArgumentTypeError(TypeError, ValueError):
  """An argument of the wrong type, named in the message.

  A ``TypeError``; also a ``ValueError``, which earlier releases raised for
  a wrong type as for a bad value, so that code catching that still does.
  """


def _type_error(name: str, value: Any, requirement: str) -> ArgumentTypeError:
  return ArgumentTypeError(f"{name} must be {requirement}, got {name}={value!r}.")


def _value_error(name: str, value: Any, requirement: str) -> ValueError:
  return ValueError(f"{name} must be {requirement}, got {name}={value!r}.")


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


def real(
  name: str,
  value: Any,
  ok: Callable[[float], bool] = math.isfinite,
  requirement: str = "a finite real number",
) -> Any:
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
    ArgumentTypeError: naming ``value`` when it is not a real scalar (bools
      and strings included), traced or not.
    ValueError: naming ``value`` when a concrete one fails ``ok``.

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
    jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
  )
  is_number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
  if is_traced(value):
    if jnp.shape(value) != () or not real_dtype:
      raise _type_error(name, value, "a real scalar")
    return value
  if not (is_number or (is_array(value) and jnp.shape(value) == () and real_dtype)):
    raise _type_error(name, value, "a real scalar")
  x = float(np.asarray(value).item())
  if not ok(x):
    raise _value_error(name, value, requirement)
  return value if is_array(value) else x


def positive(name: str, value: Any) -> Any:
  """:func:`real`, finite and ``> 0``."""
  return real(name, value, lambda x: math.isfinite(x) and x > 0, "finite and > 0")


def non_negative(name: str, value: Any) -> Any:
  """:func:`real`, finite and ``>= 0``."""
  return real(name, value, lambda x: math.isfinite(x) and x >= 0, "finite and >= 0")


def at_least(name: str, value: Any, low: float) -> Any:
  """:func:`real`, finite and ``>= low``."""
  return real(name, value, lambda x: math.isfinite(x) and x >= low, f"finite and >= {low}")


def in_range(
  name: str,
  value: Any,
  low: float,
  high: float,
  *,
  low_open: bool = False,
  high_open: bool = False,
  requirement: str | None = None,
) -> Any:
  """:func:`real`, in ``[low, high]`` (an end excluded where it is open).

  ``requirement`` replaces the message's ``"in [low, high]"``. NaN is out.

  Example:
    >>> from optax_lr._checks import in_range
    >>> in_range("mu", 0.5, 0, 1)
    0.5
    >>> in_range("smoothing", 1.0, 0, 1, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: smoothing must be in [0, 1), got smoothing=1.0.
  """

  def ok(x):
    return (low < x if low_open else low <= x) and (x < high if high_open else x <= high)

  if requirement is None:
    requirement = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
  return real(name, value, ok, requirement)


def boolean(name: str, value: Any) -> bool:
  """A Python or numpy bool, as a Python bool (not 0 or 1, not a string)."""
  if not isinstance(value, (bool, np.bool_)):
    raise _type_error(name, value, "a bool")
  return bool(value)


# The overloads tell a type checker that only allow_none=True can give None.
@overload
def positive_int(
  name: str, value: Any, *, minimum: int = 1, allow_none: Literal[False] = False
) -> int: ...


@overload
def positive_int(name: str, value: Any, *, minimum: int = 1, allow_none: bool) -> int | None: ...


def positive_int(
  name: str, value: Any, *, minimum: int = 1, allow_none: bool = False
) -> int | None:
  """A concrete integer ``>= minimum`` as a Python int (``None`` if allowed).

  Takes what ``operator.index`` takes (numpy integers, concrete 0-d integer
  arrays), not bools; a float, even ``10.0``, is the wrong type.

  Example:
    >>> from optax_lr._checks import positive_int
    >>> positive_int("update_every", 5)
    5
    >>> positive_int("update_every", 2.5)
    Traceback (most recent call last):
    ...
    optax_lr._checks.ArgumentTypeError: update_every must be a positive int, got update_every=2.5.
  """
  if value is None and allow_none:
    return None
  kind = "None or a positive int" if allow_none else "a positive int"
  if isinstance(value, (bool, np.bool_)):
    raise _type_error(name, value, kind)
  try:
    index = operator.index(value)
  except TypeError:
    raise _type_error(name, value, kind) from None
  if index < minimum:
    raise _value_error(name, value, f">= {minimum}")
  return index


def integer(
  name: str, value: Any, ok: Callable[[int], bool] = lambda x: True, requirement: str = "an int"
) -> Any:
  """An integer scalar: a Python int, or a 0-d integer array (traced or not).

  Returns a Python int unchanged, an array (traced or not) unchanged; a
  concrete one must meet ``ok`` (applied to its Python int), a traced one is
  passed through.
  """
  if is_array(value):
    if jnp.shape(value) != () or not jnp.issubdtype(value.dtype, jnp.integer):
      raise _type_error(name, value, "an int")
    if is_traced(value):
      return value
    x = int(np.asarray(value).item())
  elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise _type_error(name, value, "an int")
  else:
    x = value = int(value)
  if not ok(x):
    raise _value_error(name, value, requirement)
  return value


def concrete(
  name: str, value: Any, ok: Callable[[Any], bool] = math.isfinite, requirement: str = "finite"
) -> int | float:
  """A concrete real scalar as a Python int (integer dtype) or float.

  Takes what ``np.asarray`` makes a 0-d int or float array of (bf16 too);
  not a bool, a string, a complex or a traced value (the argument shapes the
  computation: it must be known at trace time). ``ok`` is applied to the
  returned number.
  """
  if is_traced(value):
    raise ArgumentTypeError(f"{name} must be a concrete number, got a traced value {value!r}.")
  arr = None if isinstance(value, (str, bytes)) else np.asarray(value)
  if (
    arr is None
    or arr.ndim != 0
    or not (jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating))
  ):
    raise _type_error(name, value, "a real scalar")
  x = int(arr) if jnp.issubdtype(arr.dtype, jnp.integer) else float(arr)
  if not ok(x):
    raise _value_error(name, value, requirement)
  return x


def finite(name: str, value: Any) -> Any:
  """A real array (any shape; traced passes); a concrete one all finite."""
  if is_traced(value):
    return value
  arr = None if isinstance(value, (str, bytes)) else np.asarray(value)
  if arr is None or not (
    jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)
  ):
    raise _type_error(name, value, "a finite real number")
  if not np.all(np.isfinite(arr.astype(np.float64))):
    raise _value_error(name, value, "a finite real number")
  return value


def one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
  """One of the strings ``choices`` (an array, even of one, is no string)."""
  requirement = f"one of {', '.join(map(repr, choices))}"
  if not isinstance(value, str):
    raise _type_error(name, value, requirement)
  if value not in choices:
    raise _value_error(name, value, requirement)
  return value


def check_direction(direction: Any) -> None:
  """Raises :class:`ArgumentTypeError` unless ``direction`` is an optax transformation."""
  if not isinstance(direction, optax.GradientTransformation):
    raise ArgumentTypeError(
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
  # Any: jaxlib ships no type stub for PyTreeDef (a compiled class), whose
  # comparison a type checker then cannot see.
  tree_def: Any = jax.tree_util.tree_structure(tree)
  reference_def: Any = jax.tree_util.tree_structure(reference)
  if tree_def != reference_def:
    raise ValueError(
      f"{name}: expected a pytree with the structure of {what}, {reference_def}, got {tree_def}."
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
      f"loss_fn: {method} needs a callable params -> scalar loss, got loss_fn={loss_fn!r}."
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
      f"loss_fn: {method} needs loss_fn(params) to be a scalar float loss, got {out}."
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
      f"params: {method} needs the params ({why}): call update(grads, state, params)."
    )
  check_tree_like("params", params, updates, "the updates")
