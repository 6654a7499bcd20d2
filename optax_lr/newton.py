"""Newton-based trainable learning rate (NTLR), over any descent direction.

Retsinas et al. treat the rate ``η`` as a parameter of the auxiliary loss
``L_η(w) = L(w - η u)`` and take damped Newton steps on it. Both derivatives
come from first-order quantities only:

* ``∂L_η/∂η = -<∇L(w - η u), u>``;
* ``∂²L_η/∂η² = uᵀ H u ≈ <u, ∇L(w) - ∇L(w - η u)> / η`` (a finite difference
  of gradients along ``u``, no Hessian),

so the Newton step is multiplicative (the paper's Eq. 8)::

    η ← η · (1 + γ <u, ∇L(w - η u)> / <u, ∇L(w) - ∇L(w - η u)>).

Consecutive mini-batch gradients come from different data, so the paper sums
over windows of ``K`` steps and applies the rule once per window, to two
consecutive windows. With ``U_k`` the sum of the directions and ``G_k`` the sum
of the gradients over window ``k``, ``r = <U_{k-1}, G_k>`` (minus the slope of
the loss along the previous window's step) and ``d = <U_{k-1}, G_{k-1}> - r``
(the finite-difference curvature along it)::

    factor = 1 + γ r / d        (d > 0; else 1: the second derivative is not
                                 positive and the paper keeps η),
    η ← η · clip(factor, 1 / max_factor, max_factor).

For SGD (``u = g``, so ``G = U``) this is the original rule on direction sums
alone (the design page, ``docs/design.md``), ``r = <U_{k-1}, U_k>``,
``d = |U_{k-1}|² - r``; on a quadratic with ``K = 1`` it is the exact Newton
step (hence the exact line search) on the rate used for the previous step.
Over other directions the gradient sums are needed: see :func:`newton_lr`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lr import _checkpoint
from optax_lr import _checks
from optax_lr import _monitor
from optax_lr._tree import accumulation_dtype
from optax_lr._tree import tree_gram
from optax_lr._tree import tree_max_abs_and_live
from optax_lr._tree import tree_sum_squares
from optax_lr._tree import tree_vdot

__all__ = ["NewtonLRState", "newton_lr"]


class NewtonLRState(NamedTuple):
  """State of :func:`newton_lr`."""

  # [] int32: update calls so far (saturates at the int32 maximum).
  # (The ignore: `count` shadows tuple.count, as in optax's own states.)
  count: jax.Array  # type: ignore[assignment]
  # [] float, the accumulation dtype of the params (f32 at least): the rate η.
  # With per_leaf=True: a pytree like params of [] scalars, one rate per leaf.
  learning_rate: Any
  # [] int32 in [0, K): update calls already summed into `acc`.
  window_step: jax.Array
  # Like params, each leaf in its accumulation dtype (f32 for bf16/f16 leaves,
  # else the leaf's dtype): sum of the directions u of this window.
  acc: Any
  # Like `acc`: the previous window's sum U_prev; all zeros when there is no
  # usable previous window (at the start, and after a non-finite window).
  u_prev: Any
  # None over SGD (the gradients are the directions). Otherwise like `acc`:
  # sum of the gradients g of this window.
  grad_acc: Any
  # None over SGD. Otherwise [] float, the dtype of `learning_rate` (a pytree
  # like params of [] scalars with per_leaf=True): <U_prev, G_prev>, the
  # previous window's direction sum dotted with its gradient sum; 0 whenever
  # `u_prev` is all zeros.
  prev_dot: Any
  # The direction's own state.
  direction_state: Any
  # The safety net (checkpoint, costs, rollback flags); None with
  # safety_net=False.
  safety: Optional[_checkpoint.SafetyNetState] = None


_monitor.register_method(
  NewtonLRState, rollback=_checkpoint.net_rollback, best_params=_checkpoint.net_best_params
)


# ---------------------------------------------------------------- validation


def _positive_int(name: str, value: Any) -> int:
  if _checks.is_traced(value):
    raise ValueError(
      f"{name} sets the window length, which shapes the state: give it as a "
      f"static_arg of optax.inject_hyperparams, got {name}={value!r}"
    )
  return _checks.positive_int(name, value)


def _window_length(update_every, steps_per_epoch, fraction) -> int:
  if _checks.is_traced(fraction):
    raise ValueError(
      "fraction sets the window length, which shapes the state: give it "
      "as a static_arg of optax.inject_hyperparams, got "
      f"fraction={fraction!r}"
    )
  fraction = float(_checks.positive("fraction", fraction))
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

  Only ``r / (s - r)`` is read, so ``(r, s, n)`` may all be divided by one
  positive scale (as :func:`~optax_lr._tree.tree_gram` returns them).

  Every input may be NaN, Inf, zero or denormal; the result is always a finite
  rate in ``[tiny, max]`` of ``lr``'s dtype, and ``lr`` itself when the window
  gives no usable curvature.
  """
  dtype = lr.dtype
  r, s, n = (jnp.asarray(x).astype(dtype) for x in (r, s, n))
  # Injected (inject_hyperparams) values arrive in the params' dtype.
  gamma, max_factor = (jnp.asarray(x).astype(dtype) for x in (gamma, max_factor))
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


def _sum_dtype(leaf):
  # The dtype of a window sum: at least f32 for floating leaves (a bf16 sum
  # over hundreds of steps loses the low bits of every late term).
  dtype = jnp.result_type(leaf)
  return accumulation_dtype(leaf) if jnp.issubdtype(dtype, jnp.floating) else dtype


def _zero_sums(params):
  return jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=_sum_dtype(p)), params)


# `optax.identity()` builds a new closure at each call; its code object is
# shared, so an explicit identity direction is recognised as plain SGD.
_IDENTITY_CODE = optax.identity().update.__code__


def _is_identity(direction) -> bool:
  return direction is None or (
    isinstance(direction, optax.GradientTransformation)
    and getattr(direction.update, "__code__", None) is _IDENTITY_CODE
  )


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
  safety_net: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Newton-based trainable learning rate over any descent direction.

  Each call turns the gradient ``g_t`` into a direction ``u_t`` with
  ``direction``, returns ``-η u_t`` and adds ``u_t`` (and, over a direction
  other than plain SGD, ``g_t``) to window sums. At the last call of each window
  of ``K`` calls (after that call's update, which still uses the old ``η``),
  with ``U_prev``, ``G_prev`` the previous window's sums of directions and of
  gradients and ``U_new``, ``G_new`` this window's:

  .. math::

     r = \langle U_{prev}, G_{new}\rangle, \quad
     d = \langle U_{prev}, G_{prev}\rangle - r, \quad
     f = 1 + \gamma\, r / d \ \ (d > 0), \ \ f = 1 \ \ (d \le 0),

  .. math::

     \eta \leftarrow \eta \cdot \mathrm{clip}(f,\ 1/\mathrm{max\_factor},\
     \mathrm{max\_factor}),

  then ``U_prev ← U_new``, ``<U_prev, G_prev> ← <U_new, G_new>`` (a scalar: the
  gradient sum itself is not kept) and the window sums restart at 0. The first
  change comes at the end of the second window. This is the paper's Eq. 8 on
  windows: the previous window moved the params by ``-η U_prev``; ``-r`` is the
  slope of the loss along that step after it was taken (the look-ahead term
  ``-<∇L(w - η u), u>``, with the next window's gradients standing in for the
  look-ahead gradient) and ``d`` is the finite-difference curvature
  ``<u, ∇L(w) - ∇L(w - η u)>`` (``η Uᵀ H U``). Per-step cost: ``acc += u``
  (and ``grad_acc += g``) and the update; the inner products, the rate update
  and the swap run only at window ends (inside a ``lax.while_loop`` of zero or
  one trip: a ``lax.cond`` would copy the window buffers on every call).

  **Where this departs from the original rule, and why.** The design contract
  (the design page, ``docs/design.md``, says what changed) wrote the rule on
  direction sums only: ``r = <U_prev, U_new>``, ``d = |U_prev|² - r``
  (so does the authors' code, which takes both from the weights' change over a
  window). In the paper's auxiliary loss ``L_η(w) = L(w - η u)`` both
  derivatives dot the *gradient* with the direction; direction sums stand in
  for gradient sums only when ``u = g``. Over plain SGD (``direction=None`` or
  ``optax.identity()``) ``G = U`` and this rule *is* the original one,
  computed the same way, bit for bit, with no gradient buffer. Over momentum
  or Adam the directions of consecutive windows stay correlated (Adam's are
  sign-like), so ``<U_prev, U_new> ≈ |U_prev|²`` whatever the loss does:
  ``d → 0`` and the factor sat at ``max_factor``
  (``newton_lr(1e-3, update_every=50, direction=optax.scale_by_adam())`` on
  Rosenbrock: ``η`` 1e-3 → 1e13, params 7e12; with the gradient sums: it
  converges to (1, 1), ``η`` at most 1.5).

  Guards beyond the paper's two (keep ``η`` when ``d ≤ 0``, cap the factor):

  * Lower bound ``1 / max_factor``. For ``γ ≤ 1`` the factor is always
    ``> 1 - γ ≥ 0`` in exact arithmetic, but a sharp overshoot (``G_new ≈ -c
    G_prev``, ``c ≫ 1``) drives it towards 0, and ``γ > 1`` (over-relaxed
    Newton, allowed) can make it negative. So ``η`` changes by at most
    ``max_factor``-fold per window, up or down, and stays positive.
  * A tiny or denormal ``d`` gives a huge or infinite ratio, which the clip
    bounds; a ``d`` flushed to 0 keeps ``η``.
  * ``η`` is kept within ``[finfo.tiny, finfo.max]`` of its dtype: a zero rate
    would never move again under a multiplicative rule.
  * A window whose sums hold NaN or Inf (or whose ``<U_new, G_new>``, i.e.
    ``|U_new|²`` over SGD, overflows) keeps ``η`` and is dropped: ``U_prev``
    (and ``<U_prev, G_prev>``) is reset to zero, so the next window end only
    records its sums (``d = 0`` there keeps ``η``) and the rule resumes one
    window later, once the numbers are finite again.

  ``per_leaf=True`` (the paper's proposed extension) applies the same rule to
  each leaf with its own rate, its own inner products and its own NaN guard.

  Memory and dtypes: the window sums are param-sized buffers beyond the
  direction's own state: two over plain SGD (``acc``, ``u_prev``), as in the
  original design, and three over any other direction (plus ``grad_acc``),
  with one more scalar per rate. Each sum is kept in its leaf's accumulation
  dtype, never narrower than float32 (float64 stays float64): a bfloat16 sum
  over hundreds of steps drops the low bits of every late term (past 128 each
  term of about 1 rounds to a whole number), which biases ``η`` (by about
  10%, the design page, ``docs/design.md``, says). So with bfloat16 params
  each of those buffers takes twice the params' bytes. The returned update
  keeps each leaf's dtype; inner products accumulate in at least float32.

  Limits (measured on optax's contrib targets, 30k steps, defaults, from
  ``η_0 = 1e-3``): window sums cancel an oscillation that alternates from step
  to step, so the rule cannot see a stiff direction go unstable before it has
  grown for most of a window. Over SGD and momentum on Rosenbrock (a narrow
  curved valley) the rate climbs past the stiff direction's stability limit
  and the params overflow inside one window, for windows of 10 to 50; over
  Adam the rate still runs away there with windows of 10, 25 or 33 (to about
  9e3, 3e5 and 2e14; Adam's steps stay bounded and the params drift off), but
  not with windows of 50. And a deterministic run that converges to the
  float32 floor stops moving: its steps round away, the gradients repeat,
  ``r ≈ <U_prev, G_prev>`` reads as a flat loss and the rate jumps past the
  stability limit (SGD on the mixed-tensor target, windows of 50: 0.2 → 2.2,
  limit 1; also the matrix parabola with windows of 33). The safety net
  handles these.

  The safety net (``safety_net=True``, the default; ``optax_lr._checkpoint``)
  checkpoints the params and the direction state every 20 healthy calls
  (with a ``value`` no worse than the checkpoint's, when given; without one,
  with :math:`|g|^2` within 10 times its running average), and rolls
  back to them, with the rate saved there (then a tenth of it for each
  further divergence from the same checkpoint), on a divergence: a training
  loss ``value`` that is non-finite, above ten times its reference (three
  times before the first save), above a thousand times its running
  level or, in most recent calls, above three times its level at the last
  save, a gradient exactly zero on every leaf, or on more than half of the
  most leaves that had a nonzero one, at a ``value`` above half the first
  loss (a dead model: a too-high rate killed its units; such a call never
  saves; the leaves are counted on the calls that would save, and in the
  window's gradient sum at its end, so a dead run is seen within two
  windows), or, after a rollback, 40 calls with nothing saved and the running
  loss level still above the first loss (the backed-off rate still too
  high), in the same call; a dropped (non-finite) window sum, at the next
  call. The window restarts after a rollback, and the rate stays within
  ``[η_0 / 10^4, η_0 · 10^4]``. Pass ``value=loss`` so the net sees a
  divergence before the numbers overflow (without it, the update warns
  once per trace that the net sees non-finite numbers only). It costs one
  params copy and one direction-state copy; ``safety_net=False`` removes it.

  Under ``optax.inject_hyperparams``, ``update_every``, ``steps_per_epoch``
  and ``fraction`` set the window length, which shapes the state: give them
  as ``static_args``. ``gamma`` and ``max_factor`` are read at every window
  end, so injected values take effect; ``learning_rate`` is only ``η_0``.

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
      keyword arguments of ``update`` are passed on to it. ``None`` and
      ``optax.identity()`` (recognised by its code) use the SGD form of the
      rule with two window buffers; any other direction keeps the gradient sum
      as a third.
    safety_net: checkpoint and roll back on divergence (above); then
      ``update`` needs ``params`` and reads the ``value`` extra argument.

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
    ...   value, grads = jax.value_and_grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params, value=value)
    ...   params = optax_lr.apply_updates(params, updates, state)
    >>> print(round(float(optax_lr.current_lr(state)), 2))  # from 0.01
    0.5

  References:
    Retsinas, Sfikas, Filntisis, Maragos, *Newton-based Trainable Learning
    Rate*, ICASSP 2023; the authors' code: https://github.com/georgeretsi/NTLR
  """
  # Checked in this order so that no cast to float32 overflows.
  lr0 = _checks.real(
    "learning_rate",
    learning_rate,
    lambda x: math.isfinite(x) and 0 < x <= float(np.finfo(np.float32).max) and np.float32(x) > 0,
    "finite and > 0 (also in float32)",
  )
  window = _window_length(update_every, steps_per_epoch, fraction)
  # gamma and max_factor are read in `update` from here, so values injected
  # by optax.inject_hyperparams take effect at the next window end.
  gamma = _checks.positive("gamma", gamma)
  max_factor = _checks.at_least("max_factor", max_factor, 1)
  per_leaf = _checks.boolean("per_leaf", per_leaf)
  safety_net = _checks.boolean("safety_net", safety_net)
  sgd = _is_identity(direction)
  if direction is None:
    direction = optax.identity()
  _checks.check_direction(direction)
  direction = optax.with_extra_args_support(direction)

  def init_fn(params):
    dtype = accumulation_dtype(params)
    direction_state = direction.init(params)
    if per_leaf:
      rate = jax.tree_util.tree_map(lambda _: jnp.full([], lr0, dtype), params)
    else:
      rate = jnp.full([], lr0, dtype)
    return NewtonLRState(
      count=jnp.zeros([], jnp.int32),
      learning_rate=rate,
      window_step=jnp.zeros([], jnp.int32),
      acc=_zero_sums(params),
      u_prev=_zero_sums(params),
      grad_acc=None if sgd else _zero_sums(params),
      prev_dot=None if sgd else jax.tree_util.tree_map(jnp.zeros_like, rate),
      direction_state=direction_state,
      safety=(_checkpoint.net_init(params, direction_state, rate) if safety_net else None),
    )

  def end_one(lr, u_new, u_prev, g_new, prev_dot):
    """The rule on one group of leaves (the whole tree, or one leaf)."""
    if sgd:  # G = U: <U_prev, G_prev> = |U_prev|², and the new sums coincide.
      # The three sums over one common power of two (exact in binary): the
      # rule reads only r / (s - r), and none of them under- or overflows,
      # so new_dot is non-finite exactly when U_new holds a NaN or an Inf.
      r, s, new_dot = tree_gram(u_prev, u_new)
      lr = _newton_rate(lr, r, s, new_dot, gamma, max_factor)
    else:
      # <U_new, G_new> is non-finite when either sum holds a NaN or an Inf
      # (or when it overflows): the same drop test as |U_new|² over SGD.
      new_dot = tree_vdot(u_new, g_new).astype(lr.dtype)
      lr = _newton_rate(lr, tree_vdot(u_prev, g_new), prev_dot, new_dot, gamma, max_factor)
    keep = jnp.isfinite(new_dot)
    u_prev = jax.tree_util.tree_map(lambda new: jnp.where(keep, new, jnp.zeros_like(new)), u_new)
    if not sgd:
      prev_dot = jnp.where(keep, new_dot, jnp.zeros_like(new_dot))
    return lr, u_prev, prev_dot, jnp.logical_not(keep)

  def window_end(lr, u_new, u_prev, g_new, prev_dot, dropped, live):
    if per_leaf:
      # The rule leaf by leaf; over SGD the unused slots carry stand-ins.
      out = jax.tree_util.tree_map(
        end_one,
        lr,
        u_new,
        u_prev,
        u_new if sgd else g_new,
        lr if sgd else prev_dot,
      )
      column = lambda i: jax.tree_util.tree_map(lambda _, o: o[i], lr, out)
      lr, u_prev = column(0), column(1)
      prev_dot = None if sgd else column(2)
      dropped = functools.reduce(
        jnp.logical_or, jax.tree_util.tree_leaves(column(3)), jnp.zeros([], jnp.bool_)
      )
    else:
      lr, u_prev, prev_dot, dropped = end_one(lr, u_new, u_prev, g_new, prev_dot)
    if live is not None:
      # The leaves of the window's gradient sum that are not all zeros (a
      # leaf with a gradient at any call of the window is one): the dead
      # test of a run that never tries to save, once per window.
      live = tree_max_abs_and_live(u_new if sgd else g_new)[1]
    zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
    return (lr, zeros(u_new), u_prev, None if sgd else zeros(g_new), prev_dot, dropped, live)

  def restart(lr, u_new, u_prev, g_new, prev_dot, dropped, live):
    # After a rollback: no usable window (as after a dropped one).
    zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
    return (
      lr,
      zeros(u_new),
      zeros(u_prev),
      None if sgd else zeros(g_new),
      None if sgd else zeros(prev_dot),
      dropped,
      live,
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    lr = state.learning_rate
    net = state.safety
    grad_live = None
    if value is not None:
      extra_args["value"] = value
    if safety_net:
      _checks.check_params(
        params,
        updates,
        "newton_lr",
        "for its safety net's checkpoint; or build it with safety_net=False",
      )
      # Divergence: a blown-up or non-finite `value` now, or a dropped
      # (non-finite) window sum at the previous call.
      # Without a `value`, the gradient norm keeps saves off a blow-up.
      grad_sq = None if value is not None else tree_sum_squares(updates)
      healthy = jnp.asarray(True)
      if value is None:
        _checkpoint.warn_without_value("newton_lr")
        save, rollback, cost = _checkpoint.net_decide(net, value, healthy, grad_sq=grad_sq)
      else:
        # The dead-model test without a pass over the gradient at every
        # call: a count on the calls that would save, and (below) one of
        # the window's sums at its end.
        save, rollback, cost, grad_live = _checkpoint.net_decide_counting_live(
          net, value, healthy, updates
        )
      checkpoint, updates = _checkpoint.save_if(
        save, net.checkpoint, params, state.direction_state, lr, cost, updates
      )
    step = lambda: direction.update(updates, state.direction_state, params, **extra_args)
    if safety_net:
      # A rollback's u is no step: the window restarts on it (below).
      u, direction_state = _checkpoint.direction_or_restore(
        rollback, step, checkpoint.direction_state
      )
      neg = jax.tree_util.tree_map(jnp.negative, lr)
      new_updates = _checkpoint.step_or_rollback(
        rollback, u, neg if per_leaf else jnp.negative(lr), checkpoint.params, params, updates
      )
      backed_off = _checkpoint.backoff_rate(lr, net, checkpoint)
      lr = jax.tree_util.tree_map(lambda b, r: jnp.where(rollback, b, r), backed_off, lr)
    else:
      u, direction_state = step()
      if per_leaf:
        new_updates = jax.tree_util.tree_map(_scale, u, lr)
      else:
        new_updates = jax.tree_util.tree_map(lambda x: _scale(x, lr), u)
    add = lambda a, x: a + x.astype(a.dtype)
    acc = jax.tree_util.tree_map(add, state.acc, u)
    grad_acc = None if sgd else jax.tree_util.tree_map(add, state.grad_acc, updates)
    # The window sums' live counts, counted at a window end (the net's most
    # seen so far, alive, where there is none).
    window_live = None if grad_live is None else net.live_counts
    operands = (
      lr,
      acc,
      state.u_prev,
      grad_acc,
      state.prev_dot,
      jnp.zeros([], jnp.bool_),
      window_live,
    )
    is_end = jnp.asarray(True)
    if window > 1:
      is_end = state.window_step >= window - 1
    if safety_net:
      # A rollback call restarts the window instead. Both run in the same
      # loop of 0 or 1 trips, so other calls copy no buffer.
      lr, acc, u_prev, grad_acc, prev_dot, dropped, window_live = _run_if(
        is_end | rollback, lambda *ops: jax.lax.cond(rollback, restart, window_end, *ops), operands
      )
      is_end = is_end & jnp.logical_not(rollback)
    elif window == 1:
      lr, acc, u_prev, grad_acc, prev_dot, dropped, _ = window_end(*operands)
    else:
      lr, acc, u_prev, grad_acc, prev_dot, dropped, _ = _run_if(is_end, window_end, operands)
    if window == 1:
      window_step = state.window_step
    else:
      window_step = jnp.where(is_end, jnp.zeros_like(state.window_step), state.window_step + 1)
    if safety_net:
      window_step = jnp.where(rollback, jnp.zeros_like(window_step), window_step)
      lr = _checkpoint.clip_to_band(lr, net)
      if grad_live is not None:
        # A window whose gradient sum is zero on most leaves, at a loss
        # above half the first: a dead model; the next call rolls back.
        _, window_dead = _checkpoint.dead_model(net, cost, window_live)
        dropped = dropped | (is_end & window_dead)
        grad_live = jnp.maximum(grad_live, window_live)
      net = _checkpoint.net_update(
        net, checkpoint, save, rollback, cost, pending=dropped, grad_sq=grad_sq, grad_live=grad_live
      )
    new_state = NewtonLRState(
      count=optax.safe_increment(state.count),
      learning_rate=lr,
      window_step=window_step,
      acc=acc,
      u_prev=u_prev,
      grad_acc=grad_acc,
      prev_dot=prev_dot,
      direction_state=direction_state,
      safety=net,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
