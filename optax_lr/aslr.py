"""ASLR: an adaptive scheduler that searches the learning rate digit by digit.

Khodamoradi et al. keep one *centre* rate ``c`` and, at every update call,
draw each layer's rate from the uniform band ``U(c - s/2, c + s/2)`` with
``s = 10^floor(log10 c)``. Once per epoch a monitored cost (the validation
loss) is compared with the best seen so far; while it does not improve, the
centre walks a zig-zag of growing radius around its last good value, one unit
of its leading digit at a time.

The centre is stored exactly, as a digit ``d`` in ``1..9`` and an exponent
``e`` (``c = d·10^e``, ``s = 10^e``): in floating point ``0.009 + 0.001`` is
not ``0.01`` and a walk of float steps drifts, or reaches ``0`` and goes
negative. The float value is computed from ``(d, e)`` only where it is used.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lr import _checkpoint
from optax_lr import _checks
from optax_lr import _monitor
from optax_lr._tree import accumulation_dtype

__all__ = ["ASLRState", "aslr"]

# The exponent stays in [_MIN_EXP, _MAX_EXP]: the band (d ± ½)·10^e is then a
# normal, finite float32 number (float32's normal range is 1.2e-38..3.4e38),
# and 10^|e| is looked up in a table rather than computed with `pow`.
_NET_NEEDS_PARAMS = ("for its safety net's checkpoint; or build it with "
                     "safety_net=False")
_MIN_EXP = -30
_MAX_EXP = 30


class ASLRState(NamedTuple):
  """State of :func:`aslr`."""

  count: jax.Array  # [] int32: update calls so far (saturating).
  learning_rate: jax.Array  # [] float32 (f64 under x64 params): the centre d·10^e.
  digit: jax.Array  # [] int32 in 1..9: the centre's leading digit d.
  exponent: jax.Array  # [] int32 in [-30, 30]: the centre's exponent e.
  min_cost: jax.Array  # [] float32 (f64 under x64): best finite cost, +inf at first.
  radius: jax.Array  # [] int32: search radius, 0 while not searching.
  walked: jax.Array  # [] int32: digit steps taken at the current radius.
  search_dir: jax.Array  # [] int32, +1 or -1: the walk's current direction.
  key: jax.Array  # [2] uint32: raw PRNG key, split at every update call.
  leaf_rates: Any  # params-like tree of [] float32: rates drawn at the last call.
  window: _monitor.EpochWindow  # the training-loss window (steps_per_epoch mode).
  inner_state: Any  # the direction's state.
  # The safety net (checkpoint saved at improvements, rollback on a diverged
  # epoch or loss); None with safety_net=False.
  safety: Optional[_checkpoint.SafetyNetState] = None


def _pow10_magnitude(exponent: jax.Array, dtype) -> jax.Array:
  """``10^|e|`` from a table of correctly rounded powers of ten."""
  table = np.array([float(f"1e{k}") for k in range(max(-_MIN_EXP, _MAX_EXP) + 1)])
  return jnp.asarray(table, dtype)[jnp.abs(exponent)]


def _scaled(mantissa: jax.Array, exponent: jax.Array) -> jax.Array:
  """``mantissa · 10^e``, dividing by ``10^-e`` when ``e < 0``.

  Both operands are exact in float32 for ``|e| <= 10`` (5^10 < 2^24), so one
  correctly rounded multiplication or division gives the float nearest to
  ``d·10^e``: ``9·10^-2`` is exactly ``float32(0.09)``.
  """
  magnitude = _pow10_magnitude(exponent, mantissa.dtype)
  return jnp.where(exponent >= 0, mantissa * magnitude, mantissa / magnitude)


def _centre(digit: jax.Array, exponent: jax.Array, dtype) -> jax.Array:
  return _scaled(digit.astype(dtype), exponent)


def _band(digit: jax.Array, exponent: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  d = digit.astype(dtype)
  half = jnp.asarray(0.5, dtype)
  return _scaled(d - half, exponent), _scaled(d + half, exponent)


def _walk(digit, exponent, step):
  """One unit of the leading digit up (``step=+1``) or down (``step=-1``).

  ``9·10^e`` goes up to ``1·10^(e+1)`` and ``1·10^e`` down to ``9·10^(e-1)``
  (the paper's ``c ← 0.9c`` where ``c - s`` would be 0). At the exponent
  bounds the centre stays where it is.
  """
  up = step > 0
  wraps = jnp.where(up, digit == 9, digit == 1)
  new_digit = jnp.where(wraps, jnp.where(up, 1, 9), digit + step)
  new_exponent = jnp.where(wraps, exponent + step, exponent)
  inside = (new_exponent >= _MIN_EXP) & (new_exponent <= _MAX_EXP)
  return (
      jnp.where(inside, new_digit, digit).astype(jnp.int32),
      jnp.where(inside, new_exponent, exponent).astype(jnp.int32),
  )


def _epoch_end(state: ASLRState, cost: jax.Array) -> ASLRState:
  """One epoch end of the ASLR search with the monitored ``cost``.

  Only the scalar fields are read and written, so the update call can run
  this under ``lax.cond`` with the param-sized fields left out.
  """
  dtype = state.min_cost.dtype
  cost = jnp.asarray(cost).astype(dtype)
  # A non-finite cost is never the new best: NaN compares false anyway, and a
  # -inf (a broken loss, not a good model) would otherwise stay best forever.
  improved = jnp.isfinite(cost) & (cost <= state.min_cost)

  starts = state.radius == 0
  widens = jnp.logical_not(starts) & (state.walked >= state.radius)
  radius = jnp.where(starts, 1, jnp.where(widens, state.radius + 1, state.radius))
  search_dir = jnp.where(starts, 1, jnp.where(widens, -state.search_dir, state.search_dir))
  walked = jnp.where(starts | widens, 0, state.walked) + 1
  digit, exponent = _walk(state.digit, state.exponent, search_dir)

  digit = jnp.where(improved, state.digit, digit)
  exponent = jnp.where(improved, state.exponent, exponent)
  if state.safety is not None:
    state = state._replace(
        safety=_checkpoint.net_epoch_end(state.safety, cost, state.min_cost))
  return state._replace(
      learning_rate=_centre(digit, exponent, dtype),
      digit=digit,
      exponent=exponent,
      min_cost=jnp.where(improved, cost, state.min_cost),
      radius=jnp.where(improved, 0, radius).astype(jnp.int32),
      walked=jnp.where(improved, state.walked, walked).astype(jnp.int32),
      search_dir=jnp.where(improved, state.search_dir, search_dir).astype(jnp.int32),
  )


_monitor.register_method(
    ASLRState, epoch_end=_epoch_end, rollback=_checkpoint.net_rollback)


def _backed_off(state: ASLRState, net, checkpoint) -> dict:
  """The search after a rollback, not searching, around the safety net's rate.

  The net's rule (``_checkpoint.backoff_rate``): the centre saved with the
  checkpoint, a decade lower for each further divergence from it. That rate
  is ``d·10^e`` (or a power of ten times one), so reading its leading digit
  back from ``log10`` is exact: ``log10(d)`` is at most 0.954, far from the
  next integer, and the 0.01 below only guards ``d = 1`` against rounding.
  """
  dtype = state.min_cost.dtype
  rate = _checkpoint.backoff_rate(state.learning_rate, net, checkpoint)
  exponent = jnp.floor(jnp.log10(rate) + jnp.asarray(0.01, dtype))
  exponent = jnp.clip(exponent, _MIN_EXP, _MAX_EXP).astype(jnp.int32)
  digit = jnp.round(_scaled(rate, -exponent))
  digit = jnp.clip(digit, 1, 9).astype(jnp.int32)
  return dict(
      learning_rate=_centre(digit, exponent, dtype),
      digit=digit,
      exponent=exponent,
      radius=jnp.zeros_like(state.radius),
      walked=jnp.zeros_like(state.walked),
      search_dir=jnp.ones_like(state.search_dir),
  )


def _split_initial_rate(learning_rate) -> tuple[int, int]:
  """``learning_rate`` rounded to one significant digit, as ``(d, e)``."""
  if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
    raise ValueError(
        f"learning_rate must be a positive real number, got {learning_rate!r}."
    )
  value = float(learning_rate)
  if not (math.isfinite(value) and value > 0):
    raise ValueError(
        f"learning_rate must be finite and > 0, got learning_rate={learning_rate!r}."
    )
  # Formatting rounds the exact binary value correctly (ties to even).
  mantissa, exponent = f"{value:.0e}".split("e")
  digit, exponent = int(mantissa), int(exponent)
  if not _MIN_EXP <= exponent <= _MAX_EXP:
    raise ValueError(
        f"learning_rate must round to a value in [1e{_MIN_EXP}, 9e{_MAX_EXP}], "
        f"got learning_rate={learning_rate!r}."
    )
  return digit, exponent


def _check_steps_per_epoch(steps_per_epoch) -> Optional[int]:
  if steps_per_epoch is None:
    return None
  if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, numbers.Integral):
    raise ValueError(
        f"steps_per_epoch must be None or a positive int, got {steps_per_epoch!r}."
    )
  if steps_per_epoch < 1:
    raise ValueError(
        f"steps_per_epoch must be >= 1, got steps_per_epoch={steps_per_epoch!r}."
    )
  return int(steps_per_epoch)


def _direction_extra_args(value, extra_args):
  return extra_args if value is None else {**extra_args, "value": value}


def aslr(
    learning_rate: float,
    *,
    steps_per_epoch: Optional[int] = None,
    seed: int = 0,
    direction: Optional[optax.GradientTransformation] = None,
    safety_net: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""ASLR: random per-leaf rates around a centre found by a digit search.

  The centre :math:`c = d\cdot 10^e` (``d`` in 1..9) starts at
  ``learning_rate`` rounded to one significant digit. Every update call draws,
  for each leaf ``i`` of the params (the paper's per-layer rates),

  .. math::
     \eta_i \sim \mathcal U\big((d - \tfrac12)10^e,\ (d + \tfrac12)10^e\big),
     \qquad \text{update}_i = -\eta_i u_i,

  where ``(u, s') = direction.update(g, s, params)``; the mean of the draws is
  the centre. At each epoch end with cost ``C`` (``min_cost`` starts at
  ``+inf``, ``radius = 0`` means not searching):

  * ``C <= min_cost``: ``min_cost = C``, ``radius = 0`` (the centre stays);
  * else: if ``radius == 0``: ``radius = 1, walked = 0, dir = +1``; elif
    ``walked >= radius``: ``radius += 1, dir = -dir, walked = 0``; then the
    centre walks one unit of its leading digit in ``dir`` (``9·10^e`` up is
    ``1·10^(e+1)``, ``1·10^e`` down is ``9·10^(e-1)``) and ``walked += 1``.

  From 0.1 with every epoch worse than the first the centres are 0.2, 0.1,
  0.09, 0.1, 0.2, 0.3, 0.2, 0.1, 0.09, 0.08, 0.09, 0.1, ...

  A NaN, ``+inf`` or ``-inf`` cost counts as worse than the best (``-inf`` is a
  broken loss, not a model to keep searching around). The exponent is kept in
  ``[-30, 30]``: a walk past ``9e30`` or below ``1e-30`` leaves the centre
  where it is. So the centre is never 0, negative, NaN or infinite.

  Epoch ends come from ``optax_lr.observe(state, cost)`` (e.g. a validation
  loss, as the paper monitors), or, with ``steps_per_epoch=N``, from the mean
  of the ``value`` extra argument over each window of ``N`` update calls.
  Apart from the direction's own state, no param-sized buffer is kept.

  Args:
    learning_rate: the initial centre, ``> 0``; rounded to one significant
      digit (exact binary ties to even: 0.25 gives 0.2).
    steps_per_epoch: ``None`` (epoch ends from ``observe``) or the window
      length ``N``; then every update needs ``value=loss``.
    seed: an int seeding the PRNG key kept in the state.
    direction: the unscaled descent direction, ``optax.identity()`` (SGD) by
      default; ``optax.trace(0.9)``, ``optax.scale_by_adam()`` or any chain.
    safety_net: keep a checkpoint of the params and the direction state,
      saved by the update call after each improving epoch end, and roll back
      to it after a diverged epoch (a non-finite cost, or one above ten times
      the best) or a non-finite or blown-up ``value``: the centre then
      returns to the one saved with the checkpoint, a decade lower for each
      further divergence from it, and the search restarts. ``update`` then
      needs ``params``. ``False`` saves one params copy and one
      direction-state copy of memory.

  Its paper's recipe for the initial centre is the learning-rate range
  test: ``optax_lr.aslr(float(optax_lr.lr_range_test(loss_fn, params,
  batches).suggestion))`` (``benchmarks/robustness.py`` runs it so).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. ``optax_lr.current_lr``
    gives the centre; ``state.leaf_rates`` the rates drawn at the last call.

  Raises:
    ValueError: for a non-positive or non-finite ``learning_rate`` (or one
      outside ``[1e-30, 9e30]``), a bad ``steps_per_epoch`` or ``seed``, a
      ``direction`` that is not an ``optax.GradientTransformation``; and at
      trace time when ``steps_per_epoch`` is set and ``value`` is missing.

  Example:
    >>> import jax.numpy as jnp, optax_lr
    >>> tx = optax_lr.aslr(0.12, seed=1)
    >>> state = tx.init({'w': jnp.ones(3)})
    >>> print(round(float(optax_lr.current_lr(state)), 6))
    0.1
    >>> state = optax_lr.observe(state, 1.0)   # first cost: the best
    >>> state = optax_lr.observe(state, 2.0)   # worse: the search starts
    >>> print(round(float(optax_lr.current_lr(state)), 6))
    0.2
    >>> updates, state = tx.update({'w': jnp.ones(3)}, state, {'w': jnp.ones(3)})
    >>> rate = float(state.leaf_rates['w'])
    >>> 0.15 <= rate <= 0.25, bool(jnp.allclose(updates['w'], -rate))
    (True, True)

  References:
    Khodamoradi, Denolf, Vissers, Kastner, "ASLR: An Adaptive Scheduler for
    Learning Rate" (the arXiv listing of this title; the authors' code:
    https://github.com/Xilinx/AdaptiveSchedulers)
  """
  digit0, exponent0 = _split_initial_rate(learning_rate)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
    raise ValueError(f"seed must be an int, got seed={seed!r}.")
  direction = optax.identity() if direction is None else direction
  _checks.check_direction(direction)
  direction = optax.with_extra_args_support(direction)

  if not isinstance(safety_net, (bool, np.bool_)):
    raise ValueError(f"safety_net must be a bool, got safety_net={safety_net!r}.")
  safety_net = bool(safety_net)

  def init_fn(params):
    dtype = accumulation_dtype(params)
    direction_state = direction.init(params)
    digit = jnp.asarray(digit0, jnp.int32)
    exponent = jnp.asarray(exponent0, jnp.int32)
    centre = _centre(digit, exponent, dtype)
    return ASLRState(
        count=jnp.zeros([], jnp.int32),
        learning_rate=centre,
        digit=digit,
        exponent=exponent,
        min_cost=jnp.full([], jnp.inf, dtype),
        radius=jnp.zeros([], jnp.int32),
        walked=jnp.zeros([], jnp.int32),
        search_dir=jnp.ones([], jnp.int32),
        key=jnp.array(jax.random.PRNGKey(int(seed)), copy=True),
        # Before the first draw the leaves' rates are the centre.
        leaf_rates=jax.tree_util.tree_map(lambda _: jnp.array(centre, copy=True), params),
        window=_monitor.window_init(dtype),
        inner_state=direction_state,
        safety=(_checkpoint.net_init(params, direction_state, centre)
                if safety_net else None),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    dtype = state.min_cost.dtype
    net = state.safety
    if safety_net:
      _checks.check_params(params, updates, "aslr", _NET_NEEDS_PARAMS)
      # Saves happen at improving epoch ends; a diverged epoch, or a
      # non-finite or blown-up training loss, rolls back.
      save, rollback, cost = _checkpoint.net_decide(
          net, value, jnp.asarray(True), epoch_saves=True)
      checkpoint, updates = _checkpoint.save_if(
          save, net.checkpoint, params, state.inner_state, state.learning_rate,
          cost, updates)
    u, inner_state = direction.update(
        updates, state.inner_state, params, **_direction_extra_args(value, extra_args)
    )
    u_leaves, u_def = jax.tree_util.tree_flatten(u)
    rates_def = jax.tree_util.tree_structure(state.leaf_rates)
    if rates_def.num_leaves != len(u_leaves):
      raise ValueError(
          f"updates: expected a tree with {rates_def.num_leaves} leaves like the "
          f"params given to init, got {len(u_leaves)}."
      )
    # One draw of all leaves' rates from a fresh subkey: a single RNG op per
    # call, whatever the number of leaves.
    key, subkey = jax.random.split(state.key)
    low, high = _band(state.digit, state.exponent, dtype)
    rates = jax.random.uniform(subkey, (len(u_leaves),), dtype, low, high)
    # Scaled in the accumulation dtype and cast back once: a bf16 leaf keeps
    # its dtype without the rate being rounded to bf16 first.
    if safety_net:
      new_updates = _checkpoint.step_or_rollback(
          rollback, u, u_def.unflatten([-rates[i] for i in range(len(u_leaves))]),
          checkpoint.params, params, updates)
      inner_state = _checkpoint.restore_if(
          rollback, inner_state, checkpoint.direction_state)
      backed_off = _backed_off(state, net, checkpoint)
      state = state._replace(
          safety=_checkpoint.net_update(net, checkpoint, save, rollback, cost),
          **{name: jnp.where(rollback, value_, getattr(state, name))
             for name, value_ in backed_off.items()},
      )
    else:
      new_updates = u_def.unflatten([
          (-rates[i] * leaf.astype(dtype)).astype(leaf.dtype)
          for i, leaf in enumerate(u_leaves)
      ])
    state = state._replace(
        count=optax.safe_increment(state.count),
        key=key,
        leaf_rates=rates_def.unflatten([rates[i] for i in range(len(u_leaves))]),
        inner_state=inner_state,
    )
    if steps_per_epoch is not None:
      window, is_end, cost = _monitor.window_step(state.window, value, steps_per_epoch)
      if safety_net:
        # A rollback call trains nothing: its loss belongs to no epoch.
        window = jax.tree_util.tree_map(
            lambda old, new: jnp.where(rollback, old, new), state.window, window)
        is_end = is_end & jnp.logical_not(rollback)
      # Only the scalars go through the cond; the epoch end reads nothing else.
      net = state.safety
      search = state._replace(
          leaf_rates=None, inner_state=None, window=window,
          safety=None if net is None else net._replace(checkpoint=None))
      search = _monitor.maybe_epoch_end(search, is_end, cost, _epoch_end)
      state = search._replace(
          leaf_rates=state.leaf_rates, inner_state=state.inner_state,
          safety=None if net is None else search.safety._replace(
              checkpoint=net.checkpoint))
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
