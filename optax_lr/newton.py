"""Newton-based trainable learning rate (NTLR), over any descent direction.

Retsinas et al. treat the rate ``η`` as a parameter of the auxiliary loss
``L_η(w) = L(w - η u)`` and take damped Newton steps on it. Both derivatives
come from first-order quantities only:

* ``∂L_η/∂η = -<∇L(w - η u), u>``;
* ``∂²L_η/∂η² = uᵀ H u ≈ <u, ∇L(w) - ∇L(w - η u)> / η`` (a finite difference
  of gradients along ``u``, no Hessian),

so the Newton step is multiplicative (the paper's Eq. 8):

    η ← η · (1 + γ <u, ∇L(w - η u)> / <u, ∇L(w) - ∇L(w - η u)>).

Consecutive mini-batch gradients come from different data, so the paper sums the
directions over windows of ``K`` steps and applies the rule to two consecutive
window sums ``U_{k-1}`` (``u_prev``) and ``U_k`` (``u_new``), once per window.
With ``r = <U_{k-1}, U_k>`` and ``d = <U_{k-1}, U_{k-1}> - r``:

    factor = 1 + γ r / d        (d > 0; else 1: the second derivative is not
                                 positive and the paper keeps η),
    η ← η · clip(factor, 1 / max_factor, max_factor).

For SGD on a quadratic with ``K = 1`` this is the exact Newton step (hence the
exact line search) on the rate used for the previous step.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lr import _monitor
from optax_lr._tree import accumulation_dtype
from optax_lr._tree import tree_sum_squares
from optax_lr._tree import tree_vdot

__all__ = ["NewtonLRState", "newton_lr"]


class NewtonLRState(NamedTuple):
  """State of :func:`newton_lr`."""

  # [] int32: update calls so far (saturates at the int32 maximum).
  count: jax.Array
  # [] float, the accumulation dtype of the params (f32 at least): the rate η.
  # With per_leaf=True: a pytree like params of [] scalars, one rate per leaf.
  learning_rate: Any
  # [] int32 in [0, K): update calls already summed into `acc`.
  window_step: jax.Array
  # Like params (each leaf's dtype): sum of the directions u of this window.
  acc: Any
  # Like params: the previous window's sum; all zeros when there is no usable
  # previous window (at the start, and after a non-finite window).
  u_prev: Any
  # The direction's own state.
  direction_state: Any


_monitor.register_method(NewtonLRState)


# ---------------------------------------------------------------- validation


def _real(name: str, value: Any) -> float:
  if isinstance(value, bool):
    raise ValueError(f"{name} must be a real number, got {name}={value!r}")
  if not isinstance(value, numbers.Real):
    try:  # concrete 0-d arrays are fine
      value = np.asarray(value).item()
    except (TypeError, ValueError, AttributeError):
      raise ValueError(f"{name} must be a real number, got {name}={value!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise ValueError(f"{name} must be a real number, got {name}={value!r}")
  return float(value)


def _positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool):
    raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
  try:
    value = operator.index(value)
  except TypeError:
    raise ValueError(f"{name} must be a positive int, got {name}={value!r}") from None
  if value < 1:
    raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
  return value


def _window_length(update_every, steps_per_epoch, fraction) -> int:
  fraction = _real("fraction", fraction)
  if not (fraction > 0 and math.isfinite(fraction)):
    raise ValueError(f"fraction must be finite and > 0, got fraction={fraction!r}")
  if (update_every is None) == (steps_per_epoch is None):
    raise ValueError(
        "give exactly one of update_every and steps_per_epoch, got "
        f"update_every={update_every!r}, steps_per_epoch={steps_per_epoch!r}"
    )
  if update_every is not None:
    return _positive_int("update_every", update_every)
  steps_per_epoch = _positive_int("steps_per_epoch", steps_per_epoch)
  # The paper's p: the nearest integer to p * steps_per_epoch (halves round
  # up), and at least one step.
  return max(1, int(math.floor(fraction * steps_per_epoch + 0.5)))


# ---------------------------------------------------------------- the rule


def _newton_rate(lr, r, s, n, gamma, max_factor):
  """One window end's rate from ``r = <U_prev, U_new>``, ``s = |U_prev|²``, ``n = |U_new|²``.

  Every input may be NaN, Inf, zero or denormal; the result is always a finite
  rate in ``[tiny, max]`` of ``lr``'s dtype, and ``lr`` itself when the window
  gives no usable curvature.
  """
  dtype = lr.dtype
  r, s, n = (jnp.asarray(x).astype(dtype) for x in (r, s, n))
  # A NaN or Inf entry in U_new makes n non-finite, one in U_prev makes s
  # non-finite, and an inner product that overflowed is caught the same way.
  finite = jnp.isfinite(r) & jnp.isfinite(s) & jnp.isfinite(n)
  d = s - r
  # `d > 0` is false for NaN and for a denormal that the backend flushes to 0.
  use = finite & (d > 0)
  # With r finite and d > 0 normal, r / d is finite or ±Inf (never NaN): a
  # tiny d sends it to ±Inf, which the clip below turns into a bound.
  ratio = r / jnp.where(use, d, jnp.ones_like(d))
  factor = jnp.clip(1.0 + gamma * ratio, 1.0 / max_factor, max_factor)
  factor = jnp.where(use, factor, jnp.ones_like(factor))
  # A zero rate would be absorbing under a multiplicative rule, and an
  # infinite one poisons the params: keep η inside the normal finite range.
  info = jnp.finfo(dtype)
  return jnp.clip(lr * factor, info.tiny, info.max).astype(dtype)


def _run_if(pred, fn, operands):
  """``fn(*operands)`` if ``pred`` else ``operands``, as a while loop of 0 or 1 trips.

  The semantics of ``lax.cond(pred, fn, lambda *x: x, *operands)``, but XLA's
  conditional copies every buffer that a branch returns unchanged: with
  ``lax.cond`` each call that is not a window end would copy both window
  buffers, twice the cost of ``acc += u``. A while loop updates its carry in
  place, so those calls touch neither buffer. (Unlike ``lax.cond``, the update
  is then not reverse-mode differentiable; ``jvp``, ``vmap`` and ``jit`` work.)
  """

  def body(carry):
    _, ops = carry
    return jnp.zeros_like(pred), tuple(fn(*ops))

  return jax.lax.while_loop(lambda carry: carry[0], body, (pred, tuple(operands)))[1]


def _scale(u, lr):
  # -η u in the accumulation dtype, rounded once to the leaf's dtype.
  return (u.astype(lr.dtype) * -lr).astype(u.dtype)


# ---------------------------------------------------------------- factory


def newton_lr(
    learning_rate: float,
    *,
    update_every: Optional[int] = None,
    steps_per_epoch: Optional[int] = None,
    fraction: float = 1 / 3,
    gamma: float = 0.2,
    max_factor: float = 100.0,
    per_leaf: bool = False,
    direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Newton-based trainable learning rate over any descent direction.

  Each call turns the gradient into a direction ``u_t`` with ``direction``,
  returns ``-η u_t`` and adds ``u_t`` to a window sum. At the last call of each
  window of ``K`` calls (after that call's update, which still uses the old
  ``η``), with ``U_prev`` the previous window's sum and ``U_new`` this one's:

  .. math::

     r = \langle U_{prev}, U_{new}\rangle, \quad
     d = \langle U_{prev}, U_{prev}\rangle - r, \quad
     f = 1 + \gamma\, r / d \ \ (d > 0), \ \ f = 1 \ \ (d \le 0),

  .. math::

     \eta \leftarrow \eta \cdot \mathrm{clip}(f,\ 1/\mathrm{max\_factor},\
     \mathrm{max\_factor}),

  then ``U_prev ← U_new`` and the window sum restarts at 0. The first change
  comes at the end of the second window. This is the paper's Eq. 8 with the
  look-ahead gradient replaced by the next window's direction: ``r`` is minus
  the slope of the loss along ``U_prev`` and ``d`` its finite-difference
  curvature (``η Uᵀ H U`` for SGD). Per-step cost: ``acc += u`` and the update;
  the three inner products, the rate update and the swap run only at window
  ends (inside a ``lax.while_loop`` of zero or one trip: a ``lax.cond`` would
  copy both window buffers on every call).

  Guards beyond the paper's two (keep ``η`` when ``d ≤ 0``, cap the factor):

  * Lower bound ``1 / max_factor``. For ``γ ≤ 1`` the factor is always
    ``> 1 - γ ≥ 0`` in exact arithmetic, but a sharp overshoot (``U_new ≈ -c
    U_prev``, ``c ≫ 1``) drives it towards 0, and ``γ > 1`` (over-relaxed
    Newton, allowed) can make it negative. So ``η`` changes by at most
    ``max_factor``-fold per window, up or down, and stays positive.
  * A tiny or denormal ``d`` gives a huge or infinite ratio, which the clip
    bounds; a ``d`` flushed to 0 keeps ``η``.
  * ``η`` is kept within ``[finfo.tiny, finfo.max]`` of its dtype: a zero rate
    would never move again under a multiplicative rule.
  * A window whose sum holds NaN or Inf (or whose squared norm overflows) keeps
    ``η`` and is dropped: ``U_prev`` is reset to zeros, so the next window end
    only records its sum (``d = 0`` there keeps ``η``) and the rule resumes one
    window later, once the numbers are finite again.

  ``per_leaf=True`` (the paper's proposed extension) applies the same rule to
  each leaf with its own rate, its own inner products and its own NaN guard.

  The window sums are kept in each param leaf's dtype, like optax's
  ``MultiSteps`` accumulator and Adam's moments; inner products accumulate in
  at least float32.

  Args:
    learning_rate: the initial rate ``η_0 > 0`` (finite and nonzero in
      float32).
    update_every: the window length ``K`` in update calls.
    steps_per_epoch: instead of ``update_every``: the number of update calls
      per epoch; the window is then ``fraction * steps_per_epoch`` calls (the
      paper's ``p``), rounded to the nearest integer (halves up), at least 1.
      Exactly one of ``update_every`` and ``steps_per_epoch`` must be given.
    fraction: the paper's ``p``, a positive fraction of an epoch; only used
      with ``steps_per_epoch``.
    gamma: the damping ``γ > 0`` of the Newton step (the paper uses 0.2 and
      recommends ``(0, 1]``; larger values are allowed and guarded).
    max_factor: the largest factor by which ``η`` grows in one window (the
      paper's 100); ``η`` also shrinks by at most this factor. At least 1.
    per_leaf: one rate per leaf of the params instead of one global rate.
    direction: the transformation from gradients to the unscaled descent
      direction ``u`` (default ``optax.identity()``, plain SGD); e.g.
      ``optax.trace(0.9)`` or ``optax.scale_by_adam()``, or a chain. Extra
      keyword arguments of ``update`` are passed on to it.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`NewtonLRState`; ``optax_lr.current_lr`` reads ``η`` (a pytree of
    rates with ``per_leaf=True``).

  Raises:
    ValueError: for a non-positive or non-finite ``learning_rate``, ``gamma``
      or ``fraction``, ``max_factor < 1``, a window length that is not a
      positive int, or when not exactly one of ``update_every`` and
      ``steps_per_epoch`` is given.

  Example:
    >>> import jax, jax.numpy as jnp, optax, optax_lr
    >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * p['w'] ** 2)
    >>> tx = optax_lr.newton_lr(0.01, update_every=2, gamma=1.0)
    >>> params = {'w': jnp.array([1.0, 1.0])}
    >>> state = tx.init(params)
    >>> for _ in range(8):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(round(float(optax_lr.current_lr(state)), 2))  # from 0.01
    0.5

  References:
    Retsinas, Sfikas, Filntisis, Maragos, *Newton-based Trainable Learning
    Rate*, ICASSP 2023; the authors' code: https://github.com/georgeretsi/NTLR
  """
  lr0 = _real("learning_rate", learning_rate)
  # Checked in this order so that no cast to float32 overflows.
  if not (math.isfinite(lr0) and 0 < lr0 <= float(np.finfo(np.float32).max)
          and np.float32(lr0) > 0):
    raise ValueError(
        "learning_rate must be finite and > 0 (also in float32), got "
        f"learning_rate={learning_rate!r}"
    )
  window = _window_length(update_every, steps_per_epoch, fraction)
  gamma = _real("gamma", gamma)
  if not (gamma > 0 and math.isfinite(gamma)):
    raise ValueError(f"gamma must be finite and > 0, got gamma={gamma!r}")
  max_factor = _real("max_factor", max_factor)
  if not (max_factor >= 1 and math.isfinite(max_factor)):
    raise ValueError(
        f"max_factor must be finite and >= 1, got max_factor={max_factor!r}"
    )
  if not isinstance(per_leaf, (bool, np.bool_)):
    raise ValueError(f"per_leaf must be a bool, got per_leaf={per_leaf!r}")
  per_leaf = bool(per_leaf)
  if direction is None:
    direction = optax.identity()
  if not isinstance(direction, optax.GradientTransformation):
    raise ValueError(
        "direction must be an optax.GradientTransformation, got "
        f"direction={direction!r}"
    )
  direction = optax.with_extra_args_support(direction)

  def init_fn(params):
    dtype = accumulation_dtype(params)
    if per_leaf:
      rate = jax.tree_util.tree_map(lambda _: jnp.full([], lr0, dtype), params)
    else:
      rate = jnp.full([], lr0, dtype)
    return NewtonLRState(
        count=jnp.zeros([], jnp.int32),
        learning_rate=rate,
        window_step=jnp.zeros([], jnp.int32),
        acc=optax.tree.zeros_like(params),
        u_prev=optax.tree.zeros_like(params),
        direction_state=direction.init(params),
    )

  def window_end(lr, u_new, u_prev):
    if per_leaf:
      def leaf_rate(rate, prev, new):
        return _newton_rate(rate, tree_vdot(prev, new), tree_sum_squares(prev),
                            tree_sum_squares(new), gamma, max_factor)

      lr = jax.tree_util.tree_map(leaf_rate, lr, u_prev, u_new)
      keep = lambda new: jnp.isfinite(tree_sum_squares(new))
      u_prev = jax.tree_util.tree_map(
          lambda new: jnp.where(keep(new), new, jnp.zeros_like(new)), u_new
      )
    else:
      norm_new = tree_sum_squares(u_new)
      lr = _newton_rate(lr, tree_vdot(u_prev, u_new), tree_sum_squares(u_prev),
                        norm_new, gamma, max_factor)
      keep = jnp.isfinite(norm_new)
      u_prev = jax.tree_util.tree_map(
          lambda new: jnp.where(keep, new, jnp.zeros_like(new)), u_new
      )
    return lr, optax.tree.zeros_like(u_new), u_prev

  def update_fn(updates, state, params=None, **extra_args):
    u, direction_state = direction.update(
        updates, state.direction_state, params, **extra_args
    )
    lr = state.learning_rate
    if per_leaf:
      new_updates = jax.tree_util.tree_map(_scale, u, lr)
    else:
      new_updates = jax.tree_util.tree_map(lambda x: _scale(x, lr), u)
    acc = jax.tree_util.tree_map(lambda a, x: a + x.astype(a.dtype), state.acc, u)
    if window == 1:
      lr, acc, u_prev = window_end(lr, acc, state.u_prev)
      window_step = state.window_step
    else:
      is_end = state.window_step >= window - 1
      lr, acc, u_prev = _run_if(is_end, window_end, (lr, acc, state.u_prev))
      window_step = jnp.where(
          is_end, jnp.zeros_like(state.window_step), state.window_step + 1
      )
    new_state = NewtonLRState(
        count=optax.safe_increment(state.count),
        learning_rate=lr,
        window_step=window_step,
        acc=acc,
        u_prev=u_prev,
        direction_state=direction_state,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
