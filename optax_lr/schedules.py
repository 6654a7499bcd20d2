"""Step-indexed learning-rate schedules from the survey that optax lacks.

optax already covers most formulas of the learning-rate schedule survey:
step decay is ``optax.exponential_decay(..., staircase=True)``,
``eta0 * exp(-k * epoch)`` is ``optax.exponential_decay`` with
``decay_rate=exp(-k)``, polynomial decay is ``optax.polynomial_schedule`` and a
single cosine annealing is ``optax.cosine_decay_schedule``. This module adds
the rest:

* :func:`cyclic_schedule` -- cyclical learning rates (PyTorch ``CyclicLR``),
* :func:`inverse_time_decay` -- ``eta0 / (1 + decay * t)`` (survey Eq. 2.1/2.4),
* :func:`sgdr_schedule` -- cosine annealing with unbounded warm restarts,
* :func:`per_epoch` -- turns a schedule written per epoch into a per-step one.

Every schedule is a pure ``count -> value`` function (an ``optax.Schedule``)
that works on a traced integer or float ``count`` under ``jax.jit`` and
``jax.vmap``. Structural hyperparameters (step sizes, periods, rates, mode)
must be concrete and are validated eagerly (``ValueError`` naming the
argument and value; for a wrong type ``optax_lr._checks.ArgumentTypeError``,
a ``TypeError`` that is also a ``ValueError``); the value arguments (``base_value``, ``init_value``,
...) may be traced. Dtype rule: the value has the dtype that the value
arguments and ``count`` promote to, but at least float32 (bf16 values give
float32, float64 stays float64). Negative counts are treated as 0.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lr import _checks
from optax_lr._tree import accumulation_dtype

__all__ = ["cyclic_schedule", "inverse_time_decay", "sgdr_schedule", "per_epoch"]

_MODES = ("triangular", "triangular2", "exp_range")


# --------------------------------------------------------------------------
# Validation helpers (host side, at construction).


def _number(name: str, value: Any, ok=math.isfinite, requirement: str = "finite") -> int | float:
  """A concrete finite real scalar as a Python int or float (``_checks.concrete``)."""
  x = _checks.concrete(name, value, lambda x: math.isfinite(x) and ok(x), requirement)
  # 10.0 behaves as 10, so that the exact integer code paths apply.
  return int(x) if isinstance(x, float) and x.is_integer() else x


def _positive(name: str, value: Any) -> int | float:
  return _number(name, value, lambda x: x > 0, "finite and > 0")


# --------------------------------------------------------------------------
# Numerics helpers (traced).


def _count(count) -> jax.Array:
  """Counts as a signed int32/int64 or float array, clamped at 0."""
  count = jnp.asarray(count)
  if not jnp.issubdtype(count.dtype, jnp.floating):
    target = jnp.int64 if count.dtype.itemsize == 8 else jnp.int32
    count = count.astype(target)
  return jnp.maximum(count, 0)


def _int_ok(count, *ints) -> bool:
  """Whether exact integer arithmetic in count's dtype applies to `ints`."""
  if not jnp.issubdtype(count.dtype, jnp.integer):
    return False
  limit = int(jnp.iinfo(count.dtype).max)
  return all(isinstance(n, int) and n <= limit for n in ints)


def _divmod(count, period, dtype):
  """(floor(count / period), count mod period), exact.

  Integer counts with an integer period use integer division. Otherwise the
  float divmod is used: its remainder comes from fmod, which is exact, and its
  quotient is rounded from an exact multiple, so neither is off by one at a
  period boundary (unlike floor(count / period)).
  """
  if _int_ok(count, period):
    return jnp.divmod(count, period)
  return jnp.divmod(count.astype(dtype), float(period))


def _powi(base, n, nbits: int):
  """base ** n for integer arrays 0 <= n < 2**nbits, by square-and-multiply.

  Every product is rounded once, so the result is exact whenever the true
  powers are representable (integers, dyadic bases such as 1.5); XLA's float
  ``pow`` goes through exp/log and is not.
  """
  result = jnp.ones(jnp.broadcast_shapes(jnp.shape(base), jnp.shape(n)), base.dtype)
  for k in range(nbits):  # static loop over the bits of n
    result = jnp.where((n >> k) & 1 == 1, result * base, result)
    base = base * base
  return result


def _lerp(a, b, w):
  """(1 - w) a + w b: exactly a at w = 0 and exactly b at w = 1."""
  return (1 - w) * a + w * b


# --------------------------------------------------------------------------
# Public schedules.


def cyclic_schedule(
  base_value, max_value, step_size_up, step_size_down=None, mode="triangular", gamma=1.0
) -> optax.Schedule:
  r"""Cyclical learning rate (CLR), with the semantics of PyTorch's ``CyclicLR``.

  With ``total = up + down``, ``cycle = floor(count / total)`` (0-based) and
  ``pos = count - cycle * total``, the scale is ``pos / up`` on the way up
  (``pos <= up``) and ``(total - pos) / down`` on the way down, and

  .. math::
    \eta = \eta_{base} + (\eta_{max} - \eta_{base}) \cdot scale \cdot f,

  with ``f = 1`` (``"triangular"``), ``f = 2^{-cycle}`` (``"triangular2"``,
  the amplitude halves every cycle) or ``f = gamma^{count}``
  (``"exp_range"``, decays every step). This equals PyTorch's ``x``/
  ``step_ratio`` form (1-based cycles) but uses exact modular arithmetic:
  integer counts with an integer ``up + down`` stay exact up to the count
  dtype's maximum; otherwise the float dtype's integers bound exactness
  (2**24 in float32). Cycle starts give exactly ``base_value`` and peaks
  exactly the peak value.
  ``max_value < base_value`` is allowed (as in PyTorch): the cycles then dip
  below ``base_value``.

  Args:
    base_value: the value at the start of every cycle (lower bound).
    max_value: the value at the peak of the first cycle.
    step_size_up: steps (> 0) from base to peak; may be fractional.
    step_size_down: steps (> 0) from peak back to base; defaults to
      ``step_size_up``.
    mode: ``"triangular"``, ``"triangular2"`` or ``"exp_range"``.
    gamma: per-step amplitude factor of ``"exp_range"`` (> 0, finite);
      ignored by the other modes.

  Returns:
    An ``optax.Schedule`` mapping a step count to the learning rate.

  Example:
    >>> import jax, jax.numpy as jnp, optax_lr
    >>> sched = optax_lr.cyclic_schedule(0.1, 1.0, step_size_up=2, step_size_down=4)
    >>> values = jax.jit(sched)(jnp.arange(8))
    >>> [round(float(v), 4) for v in values]
    [0.1, 0.55, 1.0, 0.775, 0.55, 0.325, 0.1, 0.55]

  References:
    Smith, "Cyclical Learning Rates for Training Neural Networks",
    https://arxiv.org/abs/1506.01186
  """
  _checks.finite("base_value", base_value)
  _checks.finite("max_value", max_value)
  up = _positive("step_size_up", step_size_up)
  down = up if step_size_down is None else _positive("step_size_down", step_size_down)
  _checks.one_of("mode", mode, _MODES)
  gamma = _positive("gamma", gamma)
  total = up + down
  if isinstance(total, float) and total.is_integer():  # 2.5 + 1.5: exact int path
    total = int(total)
  # Python ints beyond int32 cannot meet float arrays in JAX: use floats there.
  up_f, down_f, total_f = float(up), float(down), float(total)
  # gamma ** count as exp(count * log(gamma)) with log(gamma) taken in float64:
  # rounding gamma itself to float32 would put a relative error of
  # count * 6e-8 into gamma ** count.
  log_gamma = math.log(gamma)

  def schedule(count):
    count = _count(count)
    dtype = accumulation_dtype(count, base_value, max_value)
    cycle, pos = _divmod(count, total, dtype)
    pos = pos.astype(dtype)
    scale = jnp.where(pos <= up_f, pos / up_f, (total_f - pos) / down_f)
    # pos / up is rounded (XLA multiplies by 1 / up): make the peak exact.
    scale = jnp.where(pos == up_f, 1, scale)
    if mode == "triangular2":
      # 2 ** -cycle exactly (square-and-multiply on 0.5); clipping only
      # affects cycles whose factor has already underflowed to 0.
      cycle = jnp.clip(cycle, 0, 2047).astype(jnp.int32)
      scale = scale * _powi(jnp.asarray(0.5, dtype), cycle, 11)
    elif mode == "exp_range":
      scale = scale * jnp.exp(count.astype(dtype) * log_gamma)
    return _lerp(jnp.asarray(base_value, dtype), jnp.asarray(max_value, dtype), scale)

  return schedule


def inverse_time_decay(
  init_value, decay_rate, transition_steps=1, staircase=False
) -> optax.Schedule:
  r"""Inverse time decay ``init_value / (1 + decay_rate * p)``.

  .. math::
    \eta = \frac{\eta_0}{1 + r \, p}, \qquad
    p = \frac{count}{transition\_steps}
    \ (\text{or } \lfloor count / transition\_steps \rfloor \text{ with staircase}),

  the survey's Eq. 2.1 and 2.4 (with ``transition_steps`` steps per unit of
  ``p``, e.g. one epoch).

  Args:
    init_value: the value at step 0.
    decay_rate: ``r >= 0``; 0 gives a constant schedule.
    transition_steps: steps per unit of ``p`` (> 0).
    staircase: if True, ``p`` is floored, so the value is constant within
      each block of ``transition_steps`` steps.

  Returns:
    An ``optax.Schedule`` mapping a step count to the learning rate.

  Example:
    >>> import jax, jax.numpy as jnp, optax_lr
    >>> sched = optax_lr.inverse_time_decay(1.0, decay_rate=0.5, transition_steps=2)
    >>> [round(float(v), 4) for v in jax.jit(sched)(jnp.arange(4))]
    [1.0, 0.8, 0.6667, 0.5714]
    >>> stairs = optax_lr.inverse_time_decay(1.0, 0.5, 2, staircase=True)
    >>> [round(float(v), 4) for v in jax.jit(stairs)(jnp.arange(4))]
    [1.0, 1.0, 0.6667, 0.6667]

  References:
    The survey "Learning Rate Schedule" (Motahari, 2024), Eq. 2.1 and 2.4.
  """
  _checks.finite("init_value", init_value)
  decay_rate = _number("decay_rate", decay_rate, lambda x: x >= 0, "finite and >= 0")
  transition_steps = _positive("transition_steps", transition_steps)
  _checks.boolean("staircase", staircase)
  rate_per_step = decay_rate / transition_steps  # host float64, one rounding

  def schedule(count):
    count = _count(count)
    dtype = accumulation_dtype(count, init_value)
    if staircase:
      p, _ = _divmod(count, transition_steps, dtype)
      denom = 1 + decay_rate * p.astype(dtype)
    else:
      denom = 1 + rate_per_step * count.astype(dtype)
    return jnp.asarray(init_value, dtype) / denom

  return schedule


def _last_start_index(first_period: int, mult: int, limit: int) -> int:
  """Largest i with S_i = T0 (m^i - 1) / (m - 1) <= limit (Python integers)."""

  def start(i):
    return first_period * (mult**i - 1) // (mult - 1)

  i = max(0, int(math.log(limit * (mult - 1) / first_period + 1, mult)))
  while i > 0 and start(i) > limit:  # fix the float estimate (a step or two)
    i -= 1
  while start(i + 1) <= limit:
    i += 1
  return i


def _sgdr_int(t, first_period: int, mult: int, dtype):
  """(t_cur, T_i) for integer counts, m >= 2: exact integer cycle starts.

  S_j is built as S_{j-1} + T_{j-1} with T_{j-1} = T0 m^{j-1} <= S_j, so no
  intermediate exceeds S_j: nothing overflows for j <= i_hi, the last cycle
  that starts within the count dtype (i_hi = 31 for T0 = 1, m = 2 with int32:
  S_31 = 2**31 - 1). T_i itself may not fit, so it is returned as a float.
  """
  i_hi = _last_start_index(first_period, mult, int(jnp.iinfo(t.dtype).max))
  nbits = i_hi.bit_length()
  m = jnp.asarray(mult, t.dtype)

  def start(j):
    prev_period = first_period * _powi(m, jnp.maximum(j - 1, 0), nbits)
    prev_start = (prev_period - first_period) // (mult - 1)
    return jnp.where(j > 0, prev_start + prev_period, 0)

  # The float estimate of the cycle index can be one off near a boundary (and
  # float32 cannot even hold every int32 count); the two exact comparisons
  # below fix that.
  est = jnp.floor(jnp.log1p(t.astype(dtype) * ((mult - 1) / first_period)) * (1 / math.log(mult)))
  i = jnp.clip(est, 0, i_hi).astype(t.dtype)
  i = jnp.where(t < start(i), i - 1, i)
  i = jnp.where((i < i_hi) & (t >= start(jnp.minimum(i + 1, i_hi))), i + 1, i)
  period = first_period * _powi(jnp.asarray(mult, dtype), i, nbits)
  return (t - start(i)).astype(dtype), period


def _sgdr_float(t, first_period, mult, dtype):
  """(t_cur, T_i) for float counts, or a non-integer T0 or m (m > 1)."""
  log_m = math.log(mult)
  # Cap the cycle index where T0 m^(i+1) would overflow the dtype.
  i_lim = (math.log(float(jnp.finfo(dtype).max)) - math.log(first_period)) / log_m - 2
  i_lim = int(min(2**30, max(0.0, i_lim)))
  # S_j = T0 (1 + m G_{j-1}) with G_k = (m^k - 1) / (m - 1): exactly T0 at
  # j = 1 (G_0 = 0), however XLA folds or reassociates the constants.
  if float(np.asarray(mult, dtype)) == mult and mult >= 1.0625:
    # m is exact in dtype and not so close to 1 that m^k - 1 cancels:
    # square-and-multiply gives exact powers while they are representable.
    # XLA rewrites `/ (m - 1)` as `* (1 / (m - 1))`, so write it that way:
    # exact when m - 1 is a power of two (1.5, 1.25, 3, 5). For integer m,
    # G_k is an integer, and rounding makes it exact for every integer m
    # (while below 2**24 in float32).
    nbits = i_lim.bit_length()
    m = jnp.asarray(mult, dtype)

    def grown(k):  # m G_k
      g = (_powi(m, k, nbits) - 1) * (1 / (mult - 1))
      return mult * (jnp.round(g) if isinstance(mult, int) else g)

    def period_of(j):
      return first_period * _powi(m, j, nbits)
  else:
    # m close to 1 (or inexact): m^k - 1 would cancel catastrophically;
    # expm1 with float64 host constants (L = log m) does not.
    def grown(k):
      return jnp.expm1(k.astype(dtype) * log_m) * (mult / (mult - 1))

    def period_of(j):
      return first_period * jnp.exp(j.astype(dtype) * log_m)

  def start(j):
    return jnp.where(j > 0, first_period * (1 + grown(jnp.maximum(j - 1, 0))), 0)

  est = jnp.floor(jnp.log1p(t * ((mult - 1) / first_period)) * (1 / log_m))
  i = jnp.clip(est, 0, i_lim).astype(jnp.int32)
  i = jnp.where(t < start(i), i - 1, i)
  i = jnp.where((i < i_lim) & (t >= start(jnp.minimum(i + 1, i_lim))), i + 1, i)
  return t - start(i), period_of(i)


def sgdr_schedule(init_value, first_period, period_mult=1, min_value=0.0) -> optax.Schedule:
  r"""SGDR: cosine annealing with unbounded warm restarts, in closed form.

  Cycle ``i`` (0-based) lasts ``T_i = T_0 m^i`` steps and starts at
  ``S_i = T_0 (m^i - 1) / (m - 1)`` (``S_i = i T_0`` for ``m = 1``). For
  ``S_i <= count < S_{i+1}``, with ``t = count - S_i``,

  .. math::
    \eta = \eta_{min} + \tfrac12 (\eta_0 - \eta_{min})
           \left(1 + \cos\left(\pi \, t / T_i\right)\right),

  so the value is exactly ``init_value`` at every restart step. The cycle
  index comes from ``log(1 + count (m - 1) / T_0) / log(m)`` and is then
  corrected by comparing ``count`` with the starts of cycles ``i`` and
  ``i + 1``; there is no loop over cycles and no table of boundaries.

  Exactness and range: with integer ``count``, ``first_period`` and
  ``period_mult``, cycle starts and ``t`` are computed in exact integer
  arithmetic for every count the dtype holds (int32: up to 2**31 - 1, e.g.
  the 20th restart with ``T_0 = 1000, m = 2`` at step 1,048,575,000).
  Otherwise (float counts, or a non-integer ``T_0`` or ``m``) the arithmetic
  is in the float dtype, and counts are exact below 2**24 in float32 (2**53
  in float64). There, restarts are still exact when ``m`` is an integer or
  ``m - 1`` is a power of two (1.5, 1.25, ...). With other ``m`` (1.1 is
  not a float; 1 / (2.5 - 1) is rounded) a restart that falls exactly on a
  step may come out one step early or late, and far cycle starts carry the
  float's relative rounding (about 1e-7 of the count in float32).

  Args:
    init_value: the value at each restart (the cosine's maximum).
    first_period: ``T_0 > 0``, the length of the first cycle in steps.
    period_mult: ``m >= 1``, the factor by which each cycle is longer than
      the previous one; may be a non-integer float.
    min_value: the value the cosine approaches at the end of each cycle. It
      may exceed ``init_value`` (the cosine then rises).

  Returns:
    An ``optax.Schedule`` mapping a step count to the learning rate.

  Example:
    >>> import jax, jax.numpy as jnp, optax_lr
    >>> sched = optax_lr.sgdr_schedule(1.0, first_period=2, period_mult=2)
    >>> values = jax.jit(sched)(jnp.arange(8))
    >>> [round(float(v), 4) for v in values]
    [1.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0, 0.9619]

  References:
    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", https://arxiv.org/abs/1608.03983
  """
  _checks.finite("init_value", init_value)
  _checks.finite("min_value", min_value)
  first_period = _positive("first_period", first_period)
  mult = _number("period_mult", period_mult, lambda x: x >= 1, "finite and >= 1")

  def schedule(count):
    count = _count(count)
    dtype = accumulation_dtype(count, init_value, min_value)
    if mult == 1:
      _, t_cur = _divmod(count, first_period, dtype)
      t_cur, period = t_cur.astype(dtype), float(first_period)
    elif _int_ok(count, first_period, mult):
      t_cur, period = _sgdr_int(count, first_period, mult, dtype)
    else:
      t_cur, period = _sgdr_float(count.astype(dtype), float(first_period), mult, dtype)
    ratio = jnp.clip(t_cur / period, 0, 1)
    weight = 0.5 * (1 + jnp.cos(jnp.pi * ratio))  # exactly 1 at a restart
    return _lerp(jnp.asarray(min_value, dtype), jnp.asarray(init_value, dtype), weight)

  return schedule


def per_epoch(schedule, steps_per_epoch) -> optax.Schedule:
  r"""Evaluates a per-epoch schedule at the epoch index of a step count.

  .. math::
    \eta(count) = schedule(\lfloor count / steps\_per\_epoch \rfloor),

  so a schedule written in epochs (as the survey's formulas are) becomes a
  per-step schedule that is constant within each epoch. Integer counts give
  an integer epoch of the same dtype; float counts a floored float epoch.

  Args:
    schedule: any ``optax.Schedule`` (``epoch -> value``).
    steps_per_epoch: a positive integer.

  Returns:
    An ``optax.Schedule`` mapping a step count to what ``schedule`` returns
    for its epoch.

  Example:
    >>> import jax, jax.numpy as jnp, optax, optax_lr
    >>> decay = optax.exponential_decay(1.0, transition_steps=1, decay_rate=0.5)
    >>> sched = optax_lr.per_epoch(decay, steps_per_epoch=3)
    >>> [round(float(v), 4) for v in jax.jit(sched)(jnp.arange(7))]
    [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]

  References:
    The survey "Learning Rate Schedule" (Motahari, 2024), Sec. 2.3.
  """
  if not callable(schedule):
    raise TypeError(f"schedule must be callable (count -> value), got {schedule!r}")
  steps = _number("steps_per_epoch", steps_per_epoch)
  if not isinstance(steps, int):
    raise _checks.ArgumentTypeError(
      f"steps_per_epoch must be an integer >= 1, got steps_per_epoch={steps_per_epoch!r}."
    )
  if steps < 1:
    raise ValueError(
      f"steps_per_epoch must be an integer >= 1, got steps_per_epoch={steps_per_epoch!r}."
    )

  def step_schedule(count):
    count = jnp.asarray(count)
    if jnp.issubdtype(count.dtype, jnp.integer) and steps > jnp.iinfo(count.dtype).max:
      epoch = jnp.where(count < 0, -1, 0).astype(count.dtype)  # steps unrepresentable
    elif jnp.issubdtype(count.dtype, jnp.integer):
      epoch = count // steps
    else:
      epoch = jnp.floor_divide(count, float(steps))  # exact: it uses fmod
    return schedule(epoch)

  return step_schedule
