"""Global reductions over pytrees, accumulated in at least float32.

Every learning-rate method in this package reduces whole parameter trees to a
handful of scalars (``<Z, v>``, ``||u||²``, ``cos(u, v)``). Two details matter:

* Precision. ``bf16`` has an 8-bit mantissa: summing a million products in bf16
  loses every digit of the result. Each leaf is therefore cast to the
  *accumulation dtype* — the promotion of ``float32`` with the tree's floating
  leaves (``float64`` stays ``float64`` under x64) — before it is multiplied
  and summed. Under ``jit`` XLA fuses the cast into the reduction, so no f32
  copy of the tree is materialised.
* Sharding. The reductions are plain ``jnp`` sums over whole arrays, so when a
  leaf is sharded over a device mesh XLA inserts the cross-device all-reduce and
  the result is the same global scalar as on one device.

``None`` leaves (for example from ``optax.masked``) and ``optax.MaskedNode``
placeholders have no array leaves and contribute nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "accumulation_dtype",
    "tree_cosine",
    "tree_norm",
    "tree_sum_squares",
    "tree_vdot",
]


def accumulation_dtype(*trees: Any) -> jnp.dtype:
  """Returns the promotion of ``float32`` with every floating leaf's dtype.

  Integer and boolean leaves (an Adam ``count``, a flag) do not take part: a
  tree of int32 and bf16 leaves accumulates in float32, a tree with a float64
  leaf (under x64) in float64.

  Args:
    *trees: pytrees of arrays.

  Returns:
    A floating dtype, never narrower than float32.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import accumulation_dtype
    >>> accumulation_dtype({'w': jnp.ones(2, jnp.bfloat16)})
    dtype('float32')
  """
  dtype = jnp.dtype(jnp.float32)
  for leaf in jax.tree_util.tree_leaves(trees):
    leaf_dtype = jnp.result_type(leaf)
    # Compared by width, not with `jnp.promote_types`: bf16 and f16 have no
    # common type under strict promotion, yet both accumulate in f32.
    if (
        jnp.issubdtype(leaf_dtype, jnp.floating)
        and jnp.finfo(leaf_dtype).bits > jnp.finfo(dtype).bits
    ):
      dtype = jnp.dtype(leaf_dtype)
  return dtype


def _cast_tree(tree: Any, dtype: jnp.dtype) -> Any:
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x).astype(dtype), tree)


def tree_vdot(tree_x: Any, tree_y: Any) -> jax.Array:
  r"""Global inner product :math:`\langle x, y\rangle = \sum_i x_i y_i`.

  Args:
    tree_x: a pytree of arrays.
    tree_y: a pytree with the same structure and leaf shapes.

  Returns:
    A scalar in :func:`accumulation_dtype` of both trees (``0`` for empty
    trees).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_vdot
    >>> x = {'a': jnp.array([1., 2.]), 'b': jnp.array(3.)}
    >>> y = {'a': jnp.array([4., 5.]), 'b': jnp.array(6.)}
    >>> float(tree_vdot(x, y))
    32.0
  """
  dtype = accumulation_dtype(tree_x, tree_y)
  result = optax.tree.vdot(_cast_tree(tree_x, dtype), _cast_tree(tree_y, dtype))
  return jnp.asarray(result, dtype=dtype)


def tree_sum_squares(tree: Any) -> jax.Array:
  r"""Global squared norm :math:`\|x\|^2`, accumulated in at least f32.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_sum_squares
    >>> float(tree_sum_squares([jnp.array([3., 4.]), jnp.array(12.)]))
    169.0
  """
  return tree_vdot(tree, tree)


def tree_norm(tree: Any) -> jax.Array:
  r"""Global Euclidean norm :math:`\|x\|_2`, accumulated in at least f32.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_norm
    >>> float(tree_norm([jnp.array([3., 4.]), jnp.array(12.)]))
    13.0
  """
  return jnp.sqrt(tree_sum_squares(tree))


def tree_cosine(tree_x: Any, tree_y: Any) -> jax.Array:
  r"""Cosine similarity :math:`\langle x, y\rangle / (\|x\| \|y\|)`.

  Defined as ``0`` where either norm is ``0`` (the first hypergradient step,
  where the previous direction is still all zeros). The three reductions are
  taken in one pass over the trees' leaves.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_cosine
    >>> float(tree_cosine(jnp.array([1., 0.]), jnp.array([1., 1.])))
    0.7071...
    >>> float(tree_cosine(jnp.zeros(2), jnp.ones(2)))
    0.0
  """
  dot = tree_vdot(tree_x, tree_y)
  squared_norms = tree_sum_squares(tree_x) * tree_sum_squares(tree_y)
  positive = squared_norms > 0
  # Both `where`s keep the untaken branch free of sqrt(0)' = inf and 0/0, so
  # gradients through this function stay finite too.
  safe = jnp.where(positive, squared_norms, jnp.ones_like(squared_norms))
  return jnp.where(positive, dot / jnp.sqrt(safe), jnp.zeros_like(dot))
