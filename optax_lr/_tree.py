"""Global reductions over pytrees, accumulated in at least float32.

Every learning-rate method in this package reduces whole parameter trees to a
handful of scalars (``<Z, v>``, ``||u||²``, ``cos(u, v)``). Three details
matter:

* Precision. ``bf16`` has an 8-bit mantissa: summing a million products in bf16
  loses every digit of the result. Each leaf is therefore cast to the
  *accumulation dtype* — the promotion of ``float32`` with the tree's floating
  leaves (``float64`` stays ``float64`` under x64) — before it is multiplied
  and summed. Under ``jit`` XLA fuses the cast into the reduction, so no f32
  copy of the tree is materialised.
* Range. A squared norm leaves float32 long before its tree does: the squares
  of ``1e-20`` underflow to 0 and those of ``1e20`` overflow to ``inf``. For
  trees whose entries are normal numbers of the accumulation dtype (float32:
  magnitudes from ``1.2e-38`` to ``3.4e38``), the scale-free reductions hold
  over the whole range:

  - :func:`tree_cosine` is correct to a few ulps, each tree on its own scale
    (``x`` near ``1e-30`` and ``y`` near ``1e30`` included);
  - :func:`tree_norm` is correct to a few ulps wherever the norm is finite;
  - :func:`tree_gram` gives ``<x, y>``, ``|x|²`` and ``|y|²`` divided by one
    common power of two, exactly, with no overflow;
  - :func:`tree_max_abs` is exact.

  Where the plain sums would under- or overflow, each tree is rescaled by a
  power of two taken from its largest magnitude (exact in binary) before it
  is squared. :func:`tree_cosine` and :func:`tree_norm` pay for that only
  then: the common case is the one fused pass of old, and the rescaled second
  pass runs under ``lax.cond`` when a sum leaves the safe range. The raw sums
  :func:`tree_vdot` and :func:`tree_sum_squares` have no such guarantee: they
  return the float, ``0`` or ``inf`` that the accumulation dtype holds.
  Subnormal inputs may be flushed to zero by the backend; a NaN or an Inf
  anywhere in a tree gives a non-finite result.
* Sharding. The reductions are plain ``jnp`` sums and maxima over whole
  arrays, so when a leaf is sharded over a device mesh XLA inserts the
  cross-device all-reduce and the result is the same global scalar as on one
  device.

``None`` leaves (for example from ``optax.masked``) and ``optax.MaskedNode``
placeholders have no array leaves and contribute nothing.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
  "accumulation_dtype",
  "tree_cosine",
  "tree_cosine_and_finite",
  "tree_cosine_and_flags",
  "tree_gram",
  "tree_max_abs",
  "tree_max_abs_and_live",
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
    trees). It under- or overflows where the sum leaves that dtype's range;
    :func:`tree_cosine` and :func:`tree_gram` give the scale-free quantities
    over the whole range.

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

  A plain sum of squares: ``0`` for a float32 tree near ``1e-20`` and ``inf``
  near ``1e20``. :func:`tree_norm` and :func:`tree_gram` do not under- or
  overflow.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_sum_squares
    >>> float(tree_sum_squares([jnp.array([3., 4.]), jnp.array(12.)]))
    169.0
  """
  return tree_vdot(tree, tree)


# ------------------------------------------------------- range-safe reductions


def _size(tree: Any) -> int:
  """The static number of elements over the tree's leaves."""
  return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def _vdot(x: Any, y: Any, dtype: jnp.dtype) -> jax.Array:
  """``<x, y>`` of two trees already cast to ``dtype``."""
  return jnp.asarray(optax.tree.vdot(x, y), dtype=dtype)


def _sums(x: Any, y: Any, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(<x, y>, |x|², |y|²)`` of two trees already cast to ``dtype``."""
  dot, squares_x, squares_y, _ = _sums_and_live(x, y, dtype)
  return dot, squares_x, squares_y


def _sums_and_live(
  x: Any, y: Any, dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """:func:`_sums`, and how many leaves of ``y`` have a positive sum of squares.

  ``|y|²`` is summed leaf by leaf in ``optax.tree.vdot``'s order (from 0,
  left to right), so it is the same float as ``_vdot(y, y, dtype)``, and the
  per-leaf sums it is made of give the count at no extra pass.
  """
  leaves = jax.tree_util.tree_leaves(y)
  leaf_squares = [_vdot(leaf, leaf, dtype) for leaf in leaves]
  squares_y = jnp.zeros([], dtype)
  live = jnp.zeros([], jnp.int32)
  for i, square in enumerate(leaf_squares):
    squares_y = square if i == 0 else squares_y + square
    live = live + (square > 0).astype(jnp.int32)
  units = [leaf != 0 for leaf in leaves if _has_units(leaf)]
  return _vdot(x, y, dtype), _vdot(x, x, dtype), squares_y, _live_counts(live, units)


def _has_units(leaf: jax.Array) -> bool:
  """A vector of more than one entry: a layer's bias or a norm's scale, one
  entry per unit."""
  return leaf.ndim == 1 and leaf.shape[0] > 1


def _live_counts(live: jax.Array, units: list) -> jax.Array:
  """``[live leaves, vectors with at least a third of their entries live]``, [2] int32.

  ``units`` holds, for each vector leaf (see :func:`_has_units`), where its
  entries are not 0. A ReLU unit that fires on no example of a minibatch
  has a bias gradient of exactly 0 (the sum of its zero backward signal),
  while its layer's leaves keep a gradient through the units left: a layer
  whose units mostly died still counts as a live leaf, and its bias's
  entries show it, at the cost of a pass over the vectors only (a count
  over a kernel's units would read the kernel again). A third: healthy
  ReLU layers leave up to 40% of their units silent on a minibatch
  (digits over Adam at 0.01), a layer of 8 units on 4 examples loses its
  fifth unit of 8 to plain training, and the layers a too-high rate killed
  keep 0-25% of them (over Adam at 0.1, on the benchmarks' MLPs and CNNs).
  """
  layers = jnp.zeros([], jnp.int32)
  for unit_live in units:
    healthy = 3 * jnp.sum(unit_live.astype(jnp.int32)) >= unit_live.shape[0]
    layers = layers + healthy.astype(jnp.int32)
  return jnp.stack([live, layers])


def _safe_floor(dtype: jnp.dtype, size: int) -> float:
  """The least sum of squares of ``size`` terms that lost no digit to underflow.

  A square or a product that underflows is below ``tiny`` in magnitude, so
  ``size`` of them move a sum by less than ``size * tiny``: under an eighth of
  an ulp of any sum at or above this floor.
  """
  info = jnp.finfo(dtype)
  return float(info.tiny) * 2.0 ** (info.nmant + 3) * max(size, 1)


def _max_abs(tree: Any, dtype: jnp.dtype) -> jax.Array:
  """:func:`tree_max_abs` of a tree already cast to ``dtype``, no gradient."""
  # A power of two is taken from it: a constant as far as gradients go.
  return jax.lax.stop_gradient(_reduce_max_abs(tree, dtype))


def _reduce_max_abs(tree: Any, dtype: jnp.dtype) -> jax.Array:
  return _max_abs_and_live(tree, dtype)[0]


def _max_abs_and_live(tree: Any, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
  """``max_i |x_i|`` of a tree already cast to ``dtype``, and its leaves not all 0."""
  result = jnp.zeros([], dtype)
  live = jnp.zeros([], jnp.int32)
  units = []
  for leaf in jax.tree_util.tree_leaves(tree):
    if jnp.size(leaf):
      leaf_max = jnp.max(jnp.abs(leaf))
      result = jnp.maximum(result, leaf_max)
      if _has_units(leaf):
        units.append(jnp.abs(leaf) > 0)
      # NaN > 0 is False: a leaf holding a NaN counts as zero, as in
      # tree_cosine_and_flags (a NaN gradient is a divergence anyway).
      live = live + (leaf_max > 0).astype(jnp.int32)
  return result, _live_counts(live, units)


def tree_max_abs(tree: Any) -> jax.Array:
  r"""Global largest magnitude :math:`\|x\|_\infty = \max_i |x_i|`.

  Exact at every scale (a maximum rounds nothing), so it is the range-safe
  test that a tree is finite: ``isfinite(tree_max_abs(v))`` holds exactly when
  every entry of ``v`` is finite, where ``isfinite(tree_sum_squares(v))``
  fails for float32 gradients near ``1e20``.

  Args:
    tree: a pytree of arrays.

  Returns:
    A scalar in :func:`accumulation_dtype` of the tree: ``0`` for an empty
    tree, ``inf`` if a leaf holds an Inf (and no NaN), NaN if one holds a NaN.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_max_abs
    >>> float(tree_max_abs({'a': jnp.array([1e30, -3e30]), 'b': jnp.array(2.)}))
    3e+30
  """
  dtype = accumulation_dtype(tree)
  return _reduce_max_abs(_cast_tree(tree, dtype), dtype)


def tree_max_abs_and_live(tree: Any) -> tuple[jax.Array, jax.Array]:
  r""":func:`tree_max_abs`, how many leaves of the tree are not all zeros, and
  how many of its vectors have at least a third of their entries not 0.

  The leaves' count comes from the same per-leaf maxima, at no extra pass:
  a leaf is all zeros exactly when its largest magnitude is 0 (a leaf
  holding a NaN counts as zero, as in :func:`tree_cosine_and_flags`). The
  vectors (1-D leaves of more than one entry: a layer's biases, one entry
  per unit) count where at least a third of their entries are not 0 (a
  NaN entry counts as 0).

  Returns:
    ``(max_abs, live)``: a scalar in :func:`accumulation_dtype` of the tree
    and a [2] int32, ``[live leaves, vectors with a third of their entries
    live or more]`` (zeros for an empty tree).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_max_abs_and_live
    >>> tree = [jnp.array([0.0, -2.0, 0.0]), jnp.zeros(3), jnp.array([0.0, 0.0, 0.0, 1.0])]
    >>> m, live = tree_max_abs_and_live(tree)  # 1 of 3 entries live counts, 1 of 4 not
    >>> float(m), live.tolist()
    (2.0, [2, 1])
  """
  dtype = accumulation_dtype(tree)
  return _max_abs_and_live(_cast_tree(tree, dtype), dtype)


def _scale_exponent(magnitude: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """``k`` with ``magnitude * 2**k`` in ``[0.5, 1)``, and ``2**k`` a normal number.

  ``0`` for 0, NaN and Inf (which then propagate unscaled). At the ends of the
  range the clip to normal powers of two leaves ``magnitude * 2**k`` in
  ``[1, 4)`` (above ``2**126`` in float32) or in ``[2**-22, 0.5)`` (a
  subnormal magnitude, where the backend keeps those): squares of either
  neither under- nor overflow.
  """
  _, exponent = jnp.frexp(magnitude)
  info = jnp.finfo(dtype)
  k = jnp.clip(-exponent, info.minexp, info.maxexp - 1)
  usable = jnp.isfinite(magnitude) & (magnitude > 0)
  return jnp.where(usable, k, jnp.zeros_like(k))


def _times_pow2(tree: Any, k: jax.Array, dtype: jnp.dtype) -> Any:
  """Every leaf times ``2**k`` (a normal number): exact, barring underflow.

  One multiplication by one factor: a product of two factors could be
  reassociated by the compiler into a single factor that is not normal.
  """
  factor = jnp.ldexp(jnp.ones([], dtype), k)
  return jax.tree_util.tree_map(lambda leaf: leaf * factor, tree)


def _rescaled_sums(x: Any, y: Any, dtype: jnp.dtype) -> tuple[jax.Array, ...]:
  """``_sums`` of each tree rescaled by its own power of two into ``[0.5, 1)``,
  whether ``y`` is finite, and its leaves with a positive sum of squares.

  The sums are NaN if either tree holds a NaN or an Inf.
  """
  max_x, max_y = _max_abs(x, dtype), _max_abs(y, dtype)
  *sums, live = _sums_and_live(
    _times_pow2(x, _scale_exponent(max_x, dtype), dtype),
    _times_pow2(y, _scale_exponent(max_y, dtype), dtype),
    dtype,
  )
  finite = jnp.isfinite(max_x) & jnp.isfinite(max_y)
  nan = jnp.full([], jnp.nan, dtype)
  return tuple(jnp.where(finite, s, nan) for s in sums) + (jnp.isfinite(max_y), live)


def tree_norm(tree: Any) -> jax.Array:
  r"""Global Euclidean norm :math:`\|x\|_2`, accumulated in at least f32.

  .. math::
    \|x\|_2 = 2^e \sqrt{\textstyle\sum_i (x_i / 2^e)^2},

  with :math:`2^e = 1` while :math:`\sum_i x_i^2` neither under- nor
  overflows (one pass), else the power of two just above
  :math:`\max_i |x_i|` (a second pass, under ``lax.cond``). The result is
  correct to a few ulps wherever the norm itself is a normal number of the
  accumulation dtype: a float32 tree near ``1e-30`` or ``1e30`` included.

  Args:
    tree: a pytree of arrays.

  Returns:
    A scalar in :func:`accumulation_dtype` of the tree (``0`` for an empty or
    all-zero tree, ``inf`` if a leaf holds an Inf, NaN if one holds a NaN).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_norm
    >>> float(tree_norm([jnp.array([3., 4.]), jnp.array(12.)]))
    13.0
    >>> float(tree_norm(jnp.array([3e-30, 4e-30])))  # its squares underflow
    5e-30
  """
  dtype = accumulation_dtype(tree)
  x = _cast_tree(tree, dtype)
  size = _size(x)
  if not size:
    return jnp.zeros([], dtype)
  squares = _vdot(x, x, dtype)
  fast = jnp.isfinite(squares) & (squares >= _safe_floor(dtype, size))

  def rescaled(x):
    # NaN and Inf leave k at 0 and propagate through the sum.
    k = _scale_exponent(_max_abs(x, dtype), dtype)
    scaled = _times_pow2(x, k, dtype)
    # ldexp, not a multiplication: 2**-k itself may be subnormal.
    return jnp.ldexp(jnp.sqrt(_vdot(scaled, scaled, dtype)), -k)

  return jax.lax.cond(fast, lambda x: jnp.sqrt(squares), rescaled, x)


def tree_cosine(tree_x: Any, tree_y: Any) -> jax.Array:
  r"""Cosine similarity :math:`\langle x, y\rangle / (\|x\| \|y\|)`.

  Scale-free, and so computed over the whole range of each tree:

  .. math::
    \cos(x, y) = \frac{\langle \hat x, \hat y\rangle}
                      {\|\hat x\|\,\|\hat y\|},
    \qquad \hat x = x / 2^{e_x},\ \hat y = y / 2^{e_y},

  with :math:`2^{e_x} = 2^{e_y} = 1` while the three sums neither under- nor
  overflow — one fused pass, the common case — and otherwise (a second pass,
  under ``lax.cond``) :math:`2^{e_x}` the power of two just above
  :math:`\max_i |x_i|` (kept a normal number), likewise for :math:`y`.
  Rescaling by a power of two is exact, so the result is correct to a few
  ulps for trees anywhere in the normal range of the accumulation dtype,
  each on its own scale (``x`` near ``1e-30`` and ``y`` near ``1e30`` in
  float32), and is clipped to :math:`[-1, 1]`.

  Defined as ``0`` where either tree is all zeros (the first hypergradient
  step, where the previous direction is still all zeros); the gradient
  through this function is finite there too.

  Args:
    tree_x: a pytree of arrays.
    tree_y: a pytree with the same structure and leaf shapes.

  Returns:
    A scalar in :func:`accumulation_dtype` of both trees: the cosine, ``0``
    for empty or all-zero trees, NaN if either tree holds a NaN or an Inf.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_cosine
    >>> float(tree_cosine(jnp.array([1., 0.]), jnp.array([1., 1.])))
    0.7071...
    >>> float(tree_cosine(jnp.zeros(2), jnp.ones(2)))
    0.0
    >>> x = jnp.array([1e-30, 0.])  # its squares underflow in float32
    >>> float(tree_cosine(x, jnp.array([1e30, 1e30])))  # these overflow
    0.7071...
  """
  return tree_cosine_and_finite(tree_x, tree_y)[0]


def tree_cosine_and_finite(tree_x: Any, tree_y: Any) -> tuple[jax.Array, jax.Array]:
  r""":func:`tree_cosine` and whether every entry of ``tree_y`` is finite.

  The flag comes free with the cosine: the one-pass branch runs only when
  :math:`\|y\|^2` is finite (so is ``y``), and the rescaling branch reads
  :math:`\max_i |y_i|`. It is the range-safe test a training step needs
  (``isfinite(|g|²)`` fails for float32 gradients near ``1e20``) at no extra
  pass over the trees.

  Args:
    tree_x: a pytree of arrays.
    tree_y: a pytree with the same structure and leaf shapes.

  Returns:
    ``(cosine, y_finite)``: the cosine as :func:`tree_cosine` gives it, and a
    boolean scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_cosine_and_finite
    >>> cosine, finite = tree_cosine_and_finite(jnp.ones(2), jnp.array([1e30, 1e30]))
    >>> round(float(cosine), 6), bool(finite)
    (1.0, True)
    >>> bool(tree_cosine_and_finite(jnp.ones(2), jnp.array([1.0, jnp.inf]))[1])
    False
  """
  return tree_cosine_and_flags(tree_x, tree_y)[:2]


def tree_cosine_and_flags(tree_x: Any, tree_y: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  r""":func:`tree_cosine_and_finite`, and how many leaves of ``tree_y`` are not all zeros.

  Also free: :math:`\|y\|^2` is a sum of one sum of squares per leaf, and
  the count is of those that are positive. A leaf counts as zero when its
  sum of squares is 0: all its entries are 0, or their squares all
  underflow (in float32, entries below about :math:`10^{-19}`; relative to
  the largest entry of ``tree_y`` where the tree is rescaled for range).
  The count is 0 exactly when ``y`` is all zeros: the leaf that holds the
  largest entry never underflows. A leaf holding a NaN counts as zero, one
  holding an Inf does not; with either in ``y`` nothing is rescaled, and
  leaves whose squares underflow count as zero (a non-finite gradient is
  a divergence whatever the count).

  Args:
    tree_x: a pytree of arrays.
    tree_y: a pytree with the same structure and leaf shapes.

  Returns:
    ``(cosine, y_finite, y_live)``: the cosine as :func:`tree_cosine` gives
    it, a boolean scalar, and a [2] int32: the live leaves, and the
    vectors of ``y`` with at least a third of their entries not 0 (as
    :func:`tree_max_abs_and_live` counts them, but that a NaN entry counts
    as not 0 here, and as 0 there: a NaN gradient is a divergence either
    way; zeros for an empty tree).

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_cosine_and_flags
    >>> _, finite, live = tree_cosine_and_flags(jnp.ones(2), jnp.zeros(2))
    >>> bool(finite), live.tolist()
    (True, [0, 0])
    >>> x, y = [jnp.ones(2), jnp.ones(3)], [jnp.array([0.0, 1e-30]), jnp.zeros(3)]
    >>> tree_cosine_and_flags(x, y)[2].tolist()  # [live leaves, layers]
    [1, 1]
  """
  dtype = accumulation_dtype(tree_x, tree_y)
  x, y = _cast_tree(tree_x, dtype), _cast_tree(tree_y, dtype)
  size = max(_size(x), _size(y))
  if not size:
    return jnp.zeros([], dtype), jnp.ones([], jnp.bool_), jnp.zeros([2], jnp.int32)
  *sums, live = _sums_and_live(x, y, dtype)
  dot, squares_x, squares_y = sums
  floor = _safe_floor(dtype, size)
  # Products are bounded by sqrt(|x|² |y|²), so in-range squared norms keep
  # the inner product in range too; a NaN or an Inf takes the second branch,
  # which tells them from an overflow.
  fast = (
    jnp.isfinite(dot)
    & jnp.isfinite(squares_x)
    & jnp.isfinite(squares_y)
    & (squares_x >= floor)
    & (squares_y >= floor)
  )
  dot, squares_x, squares_y, y_finite, y_live = jax.lax.cond(
    fast,
    lambda x, y: (dot, squares_x, squares_y, jnp.ones([], jnp.bool_), live),
    lambda x, y: _rescaled_sums(x, y, dtype),
    x,
    y,
  )
  zero = (squares_x == 0) | (squares_y == 0)
  # The `where`s keep the untaken branch free of sqrt(0)' = inf and 0/0, so
  # gradients stay finite at zero trees. The norms are multiplied after the
  # square roots: the unscaled |x|² |y|² of the first branch can overflow.
  one = jnp.ones_like(squares_x)
  norms = jnp.sqrt(jnp.where(zero, one, squares_x)) * jnp.sqrt(jnp.where(zero, one, squares_y))
  cosine = jnp.clip(dot / norms, -1, 1)
  return jnp.where(zero, jnp.zeros_like(cosine), cosine), y_finite, y_live


def tree_gram(tree_x: Any, tree_y: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""``(<x, y>, |x|², |y|²)``, all divided by one power of two :math:`4^e`.

  .. math::
    (\hat r, \hat s, \hat n)
    = \bigl(\langle x, y\rangle, \|x\|^2, \|y\|^2\bigr) / 4^e,

  with :math:`2^e` the power of two just above
  :math:`\max(\max_i |x_i|, \max_i |y_i|)` (kept a normal number): every
  term is computed on the rescaled trees, whose largest entry lies in
  ``[0.5, 1)`` (``[1, 4)`` above ``2**126`` in float32), so no sum overflows
  (each is at most 16 times the number of elements) and the rescaling, a
  power of two, is exact. Every scale-free combination — ``r / (s - r)``,
  ``r / s``, ``n / s``, the cosine — comes out as it would in unbounded
  exponent range, to the rounding of the sums themselves, for float32 trees
  anywhere from ``1e-37`` to ``3e38``. The common scale is the price of
  exact ratios: the smaller tree's terms lose digits to underflow only once
  its squared norm is below about ``size * 2**-100`` times the larger's (in
  float32). Two passes over both trees (the maxima, then the sums), for
  occasional use such as a Newton window's end.

  Args:
    tree_x: a pytree of arrays.
    tree_y: a pytree with the same structure and leaf shapes.

  Returns:
    A tuple of three scalars in :func:`accumulation_dtype` of both trees
    (zeros for empty trees). A NaN or an Inf in ``tree_x`` makes the second
    non-finite, one in ``tree_y`` the third.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_lr._tree import tree_gram
    >>> x, y = jnp.array([3e30, 4e30]), jnp.array([6e30, 8e30])
    >>> r, s, n = tree_gram(x, y)  # r = 2 s, n = 4 s: no inf in sight
    >>> float(r / s), float(n / s)
    (2.0, 4.0)
  """
  dtype = accumulation_dtype(tree_x, tree_y)
  x, y = _cast_tree(tree_x, dtype), _cast_tree(tree_y, dtype)
  if not max(_size(x), _size(y)):
    return jnp.zeros([], dtype), jnp.zeros([], dtype), jnp.zeros([], dtype)
  # NaN and Inf leave k at 0 and propagate through the sums.
  largest = jnp.maximum(_max_abs(x, dtype), _max_abs(y, dtype))
  k = _scale_exponent(largest, dtype)
  return _sums(_times_pow2(x, k, dtype), _times_pow2(y, k, dtype), dtype)
