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

import decimal
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
_NET_NEEDS_PARAMS = "for its safety net's checkpoint; or build it with safety_net=False"
_MIN_EXP = -30
_MAX_EXP = 30


class ASLRState(NamedTuple):
  """State of :func:`aslr`."""

  # (The ignore: `count` shadows tuple.count, as in optax's own states.)
  count: jax.Array  # type: ignore[assignment]  # [] int32: update calls so far (saturating).
  learning_rate: jax.Array  # [] float32 (f64 under x64 params): the centre d·10^e.
  digit: jax.Array  # [] int32 in 1..9: the centre's leading digit d.
  exponent: jax.Array  # [] int32 in [-30, 30]: the centre's exponent e.
  min_cost: jax.Array  # [] float32 (f64 under x64): best finite cost, +inf at first.
  radius: jax.Array  # [] int32: search radius, 0 while not searching.
  walked: jax.Array  # [] int32: digit steps taken at the current radius.
  search_dir: jax.Array  # [] int32, +1 or -1: the walk's current direction.
  key: jax.Array  # [2] uint32: raw PRNG key, split at every update call.
  leaf_rates: Any  # params-like tree of [] float32: rates drawn at the last call.
  # The training-loss window with steps_per_epoch, else None: `observe`
  # refuses a state that ends its epochs itself.
  window: Optional[_monitor.EpochWindow]
  direction_state: Any  # the direction's state.
  # The safety net (checkpoint saved at improvements, rollback on a diverged
  # epoch or loss, or a dead model counted after an epoch end); None with
  # safety_net=False.
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
    state = state._replace(safety=_checkpoint.net_epoch_end(state.safety, cost, state.min_cost))
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
  ASLRState,
  epoch_end=_monitor.unless_windowed(_epoch_end, "aslr"),
  rollback=_checkpoint.net_rollback,
  best_params=_checkpoint.net_best_params,
)


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


# ---------------------------------------------------------------------------
# Hyperparameters: Python numbers from a direct call, arrays (traced under
# jit) from optax.inject_hyperparams. Concrete values are validated here, a
# traced one only by its shape and dtype.

# The traced rounding's relative tolerance, in epsilons of its computing
# dtype (float32 or float64); see `_split_rate_array`.
_ROUNDING_EPS = 64


def _round_half_up(value: float) -> tuple[int, int]:
  """``value > 0`` rounded half up to one decimal digit, as ``(d, e)``.

  The decimal rounded is the shortest repr of the float, the number the user
  wrote, not its binary value: ``0.15`` is stored as ``0.14999999999999999...``
  and ``0.95`` as ``0.94999999999999995...`` (rounded down, 0.1 and 0.9),
  ``0.45`` as ``0.45000000000000001...`` (up), and exact ties such as
  ``0.25`` went to even (0.2). In decimal, ``0.15 -> 0.2``, ``0.45 -> 0.5``,
  ``0.25 -> 0.3``, ``0.0015 -> 0.002``, ``0.95 -> 1`` and ``9.5 -> 10``
  (``d = 1, e = 1``).
  """
  context = decimal.Context(prec=40)
  written = decimal.Decimal(repr(float(value)))
  exponent = written.adjusted()  # floor(log10 value), exactly
  digit = int(
    written.scaleb(-exponent, context).quantize(
      decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP, context=context
    )
  )
  # 9.5·10^e rounds up to 10·10^e, which is 1·10^(e+1).
  return (1, exponent + 1) if digit == 10 else (digit, exponent)


def _split_rate_array(rate: jax.Array) -> tuple[jax.Array, jax.Array]:
  r""":func:`_round_half_up` of an array rate, in ``jnp``: int32 ``(d, e)``.

  An injected rate arrives as a float of the params' dtype, not as the
  decimal the user wrote: float32's ``0.45`` is ``0.449999988...``. With
  ``e = floor(log10 rate)`` and ``m = rate / 10^e`` (in ``[1, 10)``),

  .. math:: d = \lfloor m\,(1 + \tau) + \tfrac12 \rfloor,
     \qquad \tau = \max(64\,\epsilon, \epsilon_{in}),

  ``ε`` the epsilon of the computing dtype (float32, or float64 for a
  float64 rate) and ``ε_in`` that of the rate's own dtype (a bf16 or f16
  rate is that far from the decimal written). In float32 ``m`` is within
  about ``2e-7`` (relative) of the written decimal: the rate's rounding, one
  correctly rounded division or multiplication, and ``10^e`` from a table
  of correctly rounded powers. So every tie ``x.5`` rounds up, while
  ``τ ≈ 7.6e-6`` stays below the ``1e-4`` relative gap between a tie and its
  nearest value with 4 significant digits (``4.499`` against ``4.5``): such
  literals round as the Python path rounds them. A ``log10`` one ulp off at a
  power of ten gives ``m`` just below 1 (``d = 1``) or ``d = 10``, carried
  into ``e`` as for ``9.5 -> 10``.

  A traced rate cannot be checked: it is clamped to ``[1e-30, 9e30]``, NaN
  and rates ``<= 0`` to ``1e-30``.
  """
  rate = jnp.asarray(rate)
  given = rate.dtype
  floating = jnp.issubdtype(given, jnp.floating)
  wide = floating and jnp.finfo(given).bits >= 32
  dtype = given if wide else jnp.dtype(jnp.float32)
  tol = _ROUNDING_EPS * float(jnp.finfo(dtype).eps)
  if floating:
    tol = max(tol, float(jnp.finfo(given).eps))
  x = rate.astype(dtype)
  x = jnp.minimum(jnp.where(x > 0, x, 1e-30), 9e30)  # NaN > 0 is false
  exponent = jnp.clip(jnp.floor(jnp.log10(x)), _MIN_EXP, _MAX_EXP).astype(jnp.int32)
  mantissa = _scaled(x, -exponent)
  digit = jnp.floor(mantissa * (1 + tol) + 0.5).astype(jnp.int32)
  carry = digit >= 10
  digit = jnp.where(carry, 1, digit)
  exponent = jnp.where(carry, exponent + 1, exponent)
  # Unreachable from a rate <= 9e30, kept so the exponent bound is explicit.
  over = exponent > _MAX_EXP
  digit = jnp.clip(jnp.where(over, 9, digit), 1, 9).astype(jnp.int32)
  exponent = jnp.minimum(exponent, _MAX_EXP).astype(jnp.int32)
  return digit, exponent


def _check_learning_rate(learning_rate) -> Any:
  """``(d, e)`` of a Python rate, or the array rate itself (rounded in init).

  Raises ``ValueError`` for a concrete rate that is not finite and > 0 or
  does not round into ``[1e-30, 9e30]``, and ``_checks.ArgumentTypeError``
  (also a ``ValueError``) for any non-scalar or non-real value, traced or not.
  """
  rate = _checks.positive("learning_rate", learning_rate)
  if _checks.is_traced(rate):
    return rate
  value = float(np.asarray(rate).item()) if _checks.is_array(rate) else rate
  digit, exponent = _round_half_up(value)
  if not _MIN_EXP <= exponent <= _MAX_EXP:
    raise ValueError(
      f"learning_rate must round to a value in [1e{_MIN_EXP}, 9e{_MAX_EXP}], "
      f"got learning_rate={learning_rate!r}."
    )
  return rate if _checks.is_array(rate) else (digit, exponent)


def _check_seed(seed) -> Any:
  """A Python int in ``[0, 2**64)`` for a concrete seed; a traced one as is."""
  seed = _checks.integer("seed", seed, lambda x: 0 <= x < 2**64, "in [0, 2**64)")
  if _checks.is_traced(seed) or isinstance(seed, int):
    return seed
  return int(np.asarray(seed).item())


def _key_from_seed(seed) -> jax.Array:
  """The raw ``[2] uint32`` PRNG key of ``seed``: its high and low 32-bit words.

  All 64 bits count: ``[seed >> 32, seed mod 2**32]``, which below ``2**32``
  is ``jax.random.PRNGKey(seed)``. (``PRNGKey`` of a Python int keeps only its
  low 32 bits unless x64 is on: seeds ``2**32`` and ``0`` would collide.)
  """
  if not _checks.is_array(seed):
    return jnp.asarray(np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32))
  # Traced (inject_hyperparams): optax made the Python int an int32 array, so
  # the seed is below 2**31 and its high word 0; an int64 one (x64) has both.
  seed = jnp.asarray(seed)
  if jnp.iinfo(seed.dtype).bits == 64:
    wide = seed.astype(jnp.uint64)
    return jnp.stack([(wide >> 32).astype(jnp.uint32), (wide & 0xFFFFFFFF).astype(jnp.uint32)])
  low = seed.astype(jnp.uint32)
  return jnp.stack([jnp.zeros_like(low), low])


def _check_steps_per_epoch(steps_per_epoch) -> Optional[int]:
  if steps_per_epoch is None:
    return None
  if _checks.is_array(steps_per_epoch):
    raise ValueError(
      "steps_per_epoch must be None or a positive Python int: it decides "
      "whether the state has an epoch window. Under "
      "optax.inject_hyperparams pass static_args=('steps_per_epoch',); got "
      f"steps_per_epoch={steps_per_epoch!r}."
    )
  return _checks.positive_int("steps_per_epoch", steps_per_epoch, allow_none=True)


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
  ``learning_rate`` rounded half up to one significant decimal digit:
  :math:`e = \lfloor \log_{10} r \rfloor`, :math:`d = \lfloor r/10^e +
  \tfrac12 \rfloor`, and ``d = 10`` is ``1·10^(e+1)``. The decimal rounded is
  the one written (the float's shortest repr), not its binary value: 0.15
  gives 0.2, 0.45 gives 0.5, 0.25 gives 0.3, 0.0015 gives 0.002, 0.95 gives
  1 and 9.5 gives 10. Every update call draws,
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
  of the ``value`` extra argument over each window of ``N`` update calls;
  one or the other: ``observe`` refuses a state built with
  ``steps_per_epoch`` (each epoch would end twice). Apart from the
  direction's own state, no param-sized buffer is kept.

  Under ``optax.inject_hyperparams``, ``steps_per_epoch`` goes in
  ``static_args`` (it decides whether the state has an epoch window);
  ``learning_rate`` and ``seed`` may be injected, and are read by ``init``
  only: afterwards the search owns the centre and the state the PRNG key,
  so a later change of the injected values has no effect. An injected rate
  is a float of the params' dtype, not the decimal written: it is rounded
  in ``jnp`` with a relative tolerance (``64`` float32 epsilons, or the
  rate's own epsilon for bf16/f16), so that float32 values of decimals with
  up to 4 significant digits round as above (bf16 and f16 ones: 2 digits);
  a traced rate cannot be checked, and is clamped into ``[1e-30, 9e30]``. An injected seed is an
  int32 array unless x64 is on, so below ``2**31``.

  Args:
    learning_rate: the initial centre, ``> 0``; rounded half up to one
      significant decimal digit (0.25 gives 0.3), within ``[1e-30, 9e30]``.
    steps_per_epoch: ``None`` (epoch ends from ``observe``) or the window
      length ``N``; then every update needs ``value=loss``, and ``observe``
      raises.
    seed: an int in ``[0, 2**64)`` seeding the PRNG key kept in the state;
      all 64 bits count: the raw key is ``[seed >> 32, seed mod 2**32]``,
      ``jax.random.PRNGKey(seed)`` for a seed below ``2**32``.
    direction: the unscaled descent direction, ``optax.identity()`` (SGD) by
      default; ``optax.trace(0.9)``, ``optax.scale_by_adam()`` or any chain.
    safety_net: keep a checkpoint of the params and the direction state,
      saved by the update call after each improving epoch end, and roll back
      to it after a diverged epoch (a non-finite cost, or one above ten times
      the best) or a non-finite or blown-up ``value`` (above ten times its
      reference, three times before the first save, a thousand times its
      running level, or, in most recent calls, three times its level at the
      last save), or after a dead model (a gradient exactly zero on more
      than half of the leaves that had one, at a ``value`` above half the
      first; counted at the call after each epoch end only): the centre
      then returns to the one saved with the checkpoint, a decade lower for
      each further divergence from it, and the search restarts. ``update``
      then needs ``params``. ``False`` saves one params copy and one
      direction-state copy of memory.

  Its paper's recipe for the initial centre is the learning-rate range
  test: ``optax_lr.aslr(float(optax_lr.lr_range_test(loss_fn, params,
  batches).suggestion))`` (``benchmarks/robustness.py`` runs it so).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. ``optax_lr.current_lr``
    gives the centre; ``state.leaf_rates`` the rates drawn at the last call.

  Raises:
    ValueError: for a non-positive or non-finite ``learning_rate`` (or one
      that rounds outside ``[1e-30, 9e30]``), a bad ``steps_per_epoch``, a
      ``seed`` outside ``[0, 2**64)``, a ``direction`` that is not an
      ``optax.GradientTransformation`` (concrete values are checked under
      ``inject_hyperparams`` too, e.g. by an eager ``init``); and at trace
      time when ``steps_per_epoch`` is set and ``value`` is missing, or when
      ``optax_lr.observe`` is given a state built with ``steps_per_epoch``.

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

    The initial centre, rounded half up in decimal:

    >>> def centre(rate):
    ...   state = optax_lr.aslr(rate).init({'w': jnp.ones(3)})
    ...   return int(state.digit), int(state.exponent)
    >>> [centre(r) for r in (0.15, 0.45, 0.25, 0.0015, 0.95, 9.5, 0.1234)]
    [(2, -1), (5, -1), (3, -1), (2, -3), (1, 0), (1, 1), (1, -1)]

    Under ``optax.inject_hyperparams``, with ``steps_per_epoch`` static:

    >>> import jax, optax
    >>> tx = optax.inject_hyperparams(optax_lr.aslr, static_args=(
    ...     'steps_per_epoch',))(learning_rate=0.45, seed=1)
    >>> state = jax.jit(tx.init)({'w': jnp.ones(3)})
    >>> print(round(float(optax_lr.current_lr(state)), 6))
    0.5

  References:
    Khodamoradi, Denolf, Vissers, Kastner, "ASLR: An Adaptive Scheduler for
    Learning Rate" (the arXiv listing of this title; the authors' code:
    https://github.com/Xilinx/AdaptiveSchedulers)
  """
  # Under optax.inject_hyperparams this runs in init and in every update,
  # with learning_rate and seed as arrays (traced under jit): both are read
  # by init only, the search owning its centre and the state its key after.
  initial_rate = _check_learning_rate(learning_rate)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  seed = _check_seed(seed)
  direction = optax.identity() if direction is None else direction
  _checks.check_direction(direction)
  direction = optax.with_extra_args_support(direction)

  safety_net = _checks.boolean("safety_net", safety_net)

  def init_fn(params):
    dtype = accumulation_dtype(params)
    direction_state = direction.init(params)
    if _checks.is_array(initial_rate):
      digit, exponent = _split_rate_array(initial_rate)
    else:
      digit = jnp.asarray(initial_rate[0], jnp.int32)
      exponent = jnp.asarray(initial_rate[1], jnp.int32)
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
      key=_key_from_seed(seed),
      # Before the first draw the leaves' rates are the centre.
      leaf_rates=jax.tree_util.tree_map(lambda _: jnp.array(centre, copy=True), params),
      window=None if steps_per_epoch is None else _monitor.window_init(dtype),
      direction_state=direction_state,
      safety=(_checkpoint.net_init(params, direction_state, centre) if safety_net else None),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    dtype = state.min_cost.dtype
    net = state.safety
    if safety_net:
      _checks.check_params(params, updates, "aslr", _NET_NEEDS_PARAMS)
      # Saves happen at improving epoch ends; a diverged epoch, or a
      # non-finite or blown-up training loss, rolls back. With a `value`, so
      # does a dead model (a gradient zero on most of its leaves at a loss
      # above half the first), counted at the call after each epoch end
      # only: one pass over the gradient an epoch, not one a call.
      healthy = jnp.asarray(True)
      if value is None:
        grad_live = None
        save, rollback, cost = _checkpoint.net_decide(net, value, healthy, epoch_saves=True)
      else:
        save, rollback, cost, grad_live = _checkpoint.net_decide_counting_live(
          net, value, healthy, updates, epoch_saves=True
        )
      checkpoint, updates = _checkpoint.save_if(
        save, net.checkpoint, params, state.direction_state, state.learning_rate, cost, updates
      )
    step = lambda: direction.update(
      updates, state.direction_state, params, **_direction_extra_args(value, extra_args)
    )
    if safety_net:
      # A rollback's u is no step: that call's is `checkpoint - params`.
      u, direction_state = _checkpoint.direction_or_restore(
        rollback, step, checkpoint.direction_state
      )
    else:
      u, direction_state = step()
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
        rollback,
        u,
        u_def.unflatten([-rates[i] for i in range(len(u_leaves))]),
        checkpoint.params,
        params,
        updates,
      )
      backed_off = _backed_off(state, net, checkpoint)
      state = state._replace(
        safety=_checkpoint.net_update(net, checkpoint, save, rollback, cost, grad_live=grad_live),
        **{
          name: jnp.where(rollback, value_, getattr(state, name))
          for name, value_ in backed_off.items()
        },
      )
    else:
      new_updates = u_def.unflatten(
        [(-rates[i] * leaf.astype(dtype)).astype(leaf.dtype) for i, leaf in enumerate(u_leaves)]
      )
    state = state._replace(
      count=optax.safe_increment(state.count),
      key=key,
      leaf_rates=rates_def.unflatten([rates[i] for i in range(len(u_leaves))]),
      direction_state=direction_state,
    )
    if steps_per_epoch is not None:
      window, end = _monitor.window_step(state.window, value, steps_per_epoch)
      is_end = end.is_end
      if safety_net:
        # A rollback call trains nothing: its loss belongs to no epoch.
        window = jax.tree_util.tree_map(
          lambda old, new: jnp.where(rollback, old, new), state.window, window
        )
        is_end = is_end & jnp.logical_not(rollback)
      # Only the scalars go through the cond; the epoch end reads nothing else.
      net = state.safety
      search = state._replace(
        leaf_rates=None,
        direction_state=None,
        window=window,
        safety=None if net is None else net._replace(checkpoint=None),
      )
      search = _monitor.maybe_epoch_end(search, is_end, end.cost, _epoch_end)
      state = search._replace(
        leaf_rates=state.leaf_rates,
        direction_state=state.direction_state,
        safety=None if net is None else search.safety._replace(checkpoint=net.checkpoint),
      )
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
