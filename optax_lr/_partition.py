"""Extra arguments that follow a method into ``optax.partition``.

Inside ``optax.partition`` (and ``optax.masked``, ``optax.multi_transform``)
each transformation sees only its group of params: the others are
``optax.MaskedNode`` placeholders in ``updates`` and ``params``. The extra
arguments of the update call are passed through unchanged (or, with
``mask_compatible_extra_args=True``, masked like the params). Two of the
methods' extra arguments need care there:

* ``val_grads`` (a gradient shaped like the params): a method masks a full
  one like its own ``updates`` (:func:`mask_like`).
* ``loss_fn`` (``params -> loss``, for RTHO's and MARTHE's Hessian-vector
  products): a loss over the *full* params cannot be evaluated at a group's
  params alone, since the other groups' values are not in the call.
  :func:`partition_loss` binds it to the full params; called with a group's
  params (placeholders elsewhere) it fills the placeholders from them, so the
  method differentiates the loss with respect to its own group, the others
  held at their current values.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

__all__ = ["PartitionLoss", "has_masked_nodes", "mask_like", "partition_loss"]


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def has_masked_nodes(tree: Any) -> bool:
  """Whether ``tree`` holds ``optax.MaskedNode`` placeholders (a partition's view)."""
  return any(_is_masked(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_is_masked))


def mask_like(tree: Any, masked: Any) -> Any:
  """``tree`` with ``MaskedNode`` wherever ``masked`` has one.

  A full tree (``val_grads`` over every param) becomes the partition's view of
  it; a tree that is already masked, or not shaped like the full tree, is
  returned unchanged for the caller's own structure check to judge.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optax_lr._partition import mask_like
    >>> mask_like({'a': jnp.ones(2), 'b': jnp.zeros(3)},
    ...           {'a': jnp.ones(2), 'b': optax.MaskedNode()})['b']
    MaskedNode()
  """
  if not has_masked_nodes(masked) or has_masked_nodes(tree):
    return tree
  try:
    return jax.tree_util.tree_map(
      lambda m, x: m if _is_masked(m) else x, masked, tree, is_leaf=_is_masked
    )
  except ValueError:  # another structure altogether: let the caller report it
    return tree


class PartitionLoss:
  """A loss over the full params, evaluable at one partition's params.

  Calling it with params holding ``optax.MaskedNode`` placeholders evaluates
  ``loss_fn`` at those params with every placeholder replaced by the bound
  full params' value; calling it with full params is ``loss_fn(params)``.
  Build it with :func:`partition_loss`.
  """

  def __init__(self, loss_fn: Callable[[Any], Any], params: Any):
    if not callable(loss_fn):
      raise ValueError(
        f"loss_fn: partition_loss needs a callable params -> scalar loss, got loss_fn={loss_fn!r}."
      )
    if has_masked_nodes(params):
      raise ValueError(
        "params: partition_loss needs the full params (the ones the train "
        "step holds), got params with optax.MaskedNode placeholders."
      )
    self.loss_fn = loss_fn
    self.params = params

  def __call__(self, params: Any) -> Any:
    if not has_masked_nodes(params):
      return self.loss_fn(params)
    full = jax.tree_util.tree_map(
      lambda part, whole: whole if _is_masked(part) else part,
      params,
      self.params,
      is_leaf=_is_masked,
    )
    return self.loss_fn(full)


def partition_loss(loss_fn: Callable[[Any], Any], params: Any) -> PartitionLoss:
  r"""Binds ``loss_fn`` (over the full params) to ``params`` for ``optax.partition``.

  RTHO and MARTHE take ``loss_fn`` for Hessian-vector products. Inside
  ``optax.partition`` a method sees only its group :math:`w_G` of the params,
  so it needs the loss as a function of that group with the others fixed at
  their current values :math:`w_{\bar G}`:

  .. math::
    L_G(w_G) = L(w_G, w_{\bar G}).

  ``partition_loss(loss_fn, params)`` is that function for every group at
  once; outside a partition it is ``loss_fn`` itself, so a train step can
  always pass it.

  Args:
    loss_fn: ``params -> scalar loss`` over the full params.
    params: the full params of this update call.

  Returns:
    A callable to pass as the ``loss_fn`` extra argument.

  Raises:
    ValueError: when ``loss_fn`` is not callable or ``params`` are already a
      partition's view.

  Example:
    >>> import jax, jax.numpy as jnp, optax, optax_lr
    >>> params = {'body': jnp.ones(3), 'head': jnp.array(2.0)}
    >>> loss = lambda p: jnp.sum(p['body'] * p['head']) ** 2
    >>> tx = optax.partition(
    ...     {'body': optax_lr.rtho(0.01), 'head': optax.sgd(0.01)},
    ...     {'body': 'body', 'head': 'head'})
    >>> state = tx.init(params)
    >>> updates, state = tx.update(
    ...     jax.grad(loss)(params), state, params,
    ...     loss_fn=optax_lr.partition_loss(loss, params))
    >>> updates['body']
    Array([-0.24, -0.24, -0.24], dtype=float32)

  References:
    Franceschi, Donini, Frasconi, Pontil, `Forward and Reverse Gradient-Based
    Hyperparameter Optimization <https://arxiv.org/abs/1703.01785>`_, ICML
    2017 (the Hessian-vector products of RTHO's tangent).
  """
  return PartitionLoss(loss_fn, params)
