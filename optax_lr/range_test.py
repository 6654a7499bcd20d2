"""The learning-rate range test: one exponential sweep to pick a starting rate.

The ASLR paper asks its user for one number, the initial learning rate, and
recommends Smith's *learning-rate range test* to find it: train briefly while
the rate grows, watch the loss, and pick a rate where the loss falls fastest.
:func:`lr_range_test` runs the fastai ``lr_find`` flavour of that test:

* an exponential sweep ``min_lr -> max_lr`` (equal steps in ``log lr``),
* one optimizer step per sweep rate, the loss measured *before* the step,
* a bias-corrected exponential moving average of the loss (mini-batch losses
  are too noisy to differentiate),
* no further steps once the smoothed loss has blown up,
* a suggestion read off the smoothed curve before divergence (the first tenth
  of the sweep, where the average is still mostly noise, is not a candidate),
  by one of three rules, fastai's:

  - ``"valley"`` (the default): the longest descending stretch of the curve,
    and the rate two thirds of the way down it;
  - ``"steep"``: the rate where the curve falls steepest in ``log lr``;
  - ``"minimum"``: the rate at the curve's minimum, divided by 10.

  ``"steep"`` often lands just below divergence, where a constant rate does
  not train: on a digits MLP with SGD it suggested 7.49, where SGD at a
  constant rate does not train and the best grid rate is 0.1; the valley rule
  lands inside the descent.

The whole sweep is a single ``lax.scan`` inside one ``jax.jit``, and the
suggestion a small second ``jax.jit`` after it: nothing syncs with the host,
and calling it again with arrays of the same shapes, the same ``loss_fn`` /
``optimizer`` objects and the same ``num_steps`` reuses the compiled programs
(``min_lr``, ``max_lr``, ``smoothing`` and ``diverge_factor`` are traced, so
changing them does not recompile; changing ``suggest`` compiles only the
small suggestion program).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lr import _checks
from optax_lr._tree import accumulation_dtype

__all__ = ["RangeTestResult", "lr_range_test"]

# The suggestion rules, the default first.
_RULES = ("valley", "steep", "minimum")


class RangeTestResult(NamedTuple):
  """What :func:`lr_range_test` measured.

  Attributes:
    lrs: ``[num_steps]`` float32, the rate of every step of the sweep (all of
      them, also those after divergence).
    losses: ``[num_steps]`` float32, ``loss_fn`` at the params *before* each
      step's update. Steps after ``diverged_at`` are not run: their loss is NaN.
      The loss of the diverging step itself is kept (it may be NaN or Inf).
    smoothed: ``[num_steps]`` float32, the bias-corrected EMA of ``losses``;
      NaN after ``diverged_at`` like ``losses``.
    suggestion: float32 scalar, the rate the ``suggest`` rule reads off
      ``smoothed`` before divergence (by default the valley rule); always
      finite and positive (see :func:`lr_range_test`).
    diverged_at: int32 scalar, the index of the step at which the smoothed loss
      was found to diverge (that step's update is not applied), or
      ``num_steps`` if it never did.
    params: the params after the last update that was applied, so after step
      ``diverged_at - 1`` (the caller's params are left untouched).
  """

  lrs: jax.Array
  losses: jax.Array
  smoothed: jax.Array
  suggestion: jax.Array
  diverged_at: jax.Array
  params: Any


class _ById:
  """Hashes an unhashable callable by identity, so it can be a static jit arg."""

  __slots__ = ("fn",)

  def __init__(self, fn):
    self.fn = fn

  def __hash__(self):
    return id(self.fn)

  def __eq__(self, other):
    return isinstance(other, _ById) and other.fn is self.fn

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


def _static(fn):
  try:
    hash(fn)
  except TypeError:
    return _ById(fn)
  return fn


def _validate(loss_fn, optimizer, min_lr, max_lr, num_steps, smoothing, diverge_factor, suggest):
  # A string first: an array must not reach `in` (its `==` is elementwise).
  _checks.one_of("suggest", suggest, _RULES)
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable, got {loss_fn!r}")
  if not callable(optimizer):
    raise TypeError(
      f"optimizer must be a callable factory learning_rate -> "
      f"GradientTransformation, got {optimizer!r}"
    )
  try:
    inspect.signature(optimizer).bind(learning_rate=1.0)
  except TypeError as e:
    raise TypeError(
      f"optimizer {optimizer!r} must accept a `learning_rate` "
      f"keyword argument (it is wrapped in "
      f"optax.inject_hyperparams): {e}"
    ) from None
  except ValueError:  # no signature available (some builtins): try anyway
    pass
  # The rates are stored in float32: a rate that underflows to 0 or overflows
  # to inf there would make the sweep (and the suggestion) meaningless.
  min_lr = float(
    _checks.concrete(
      "min_lr",
      min_lr,
      lambda x: x > 0 and np.float32(x) > 0 and math.isfinite(x),
      "a finite positive float32 number",
    )
  )
  max_lr = float(
    _checks.concrete(
      "max_lr",
      max_lr,
      lambda x: x > min_lr and x <= float(np.finfo(np.float32).max),
      f"finite in float32 and > min_lr={min_lr!r}",
    )
  )
  # The sweep needs both ends.
  num_steps = _checks.positive_int("num_steps", num_steps, minimum=2)
  smoothing = float(_checks.concrete("smoothing", smoothing, lambda x: 0.0 <= x < 1.0, "in [0, 1)"))
  # inf is fine (never stop early); NaN is not.
  diverge_factor = float(
    _checks.concrete("diverge_factor", diverge_factor, lambda x: x > 1.0, "> 1")
  )
  return min_lr, max_lr, num_steps, smoothing, diverge_factor


def _num_batches(batches) -> int:
  leaves = jax.tree_util.tree_leaves(batches)
  if not leaves:
    raise ValueError(
      "batches is empty: it must hold at least one array whose leading axis indexes batches"
    )
  sizes = []
  for leaf in leaves:
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(
        f"every leaf of batches needs a leading batch axis; got a scalar leaf {leaf!r}"
      )
    sizes.append(shape[0])
  if len(set(sizes)) != 1:
    raise ValueError(
      f"all leaves of batches must have the same leading size "
      f"(the number of batches), got sizes {sizes}"
    )
  if sizes[0] == 0:
    raise ValueError("batches is empty: its leading axis has size 0")
  return sizes[0]


def _sweep(min_lr: float, max_lr: float, num_steps: int) -> np.ndarray:
  # In float64 on the host, then rounded once to float32; the ends are pinned
  # so lrs[0] == float32(min_lr) and lrs[-1] == float32(max_lr) exactly.
  t = np.arange(num_steps, dtype=np.float64) / (num_steps - 1)
  lrs = min_lr * (max_lr / min_lr) ** t
  lrs[0], lrs[-1] = min_lr, max_lr
  return lrs.astype(np.float32)


def _candidates(n, diverged_at):
  """Mask of the steps a rule may pick: ``start <= i < d``, and none if d < 2.

  The first steps are skipped, as fastai's lr_find does (its first 10 of 100):
  the bias-corrected EMA there averages only a handful of mini-batch losses,
  and the batch-to-batch noise in it is far larger than the trend at rates too
  small to change the loss. ``start = n // 10``, or 0 when ``d <= n // 10``.
  """
  i = jnp.arange(n, dtype=jnp.int32)
  start = jnp.where(n // 10 < diverged_at, n // 10, 0).astype(jnp.int32)
  return i, (i >= start) & (i < diverged_at) & (diverged_at >= 2)


def _steep_index(smoothed, diverged_at):
  """Index of the most negative slope of ``smoothed`` over the candidates.

  The slope is ``np.gradient(smoothed[:d])`` with ``d = diverged_at``: central
  differences inside, one-sided differences at both ends of the valid range
  (so the diverged value at ``d`` is never used). The sweep is uniform in
  ``log lr``, so this is the derivative with respect to ``log lr`` times the
  constant step ``log(max_lr / min_lr) / (num_steps - 1)``: same argmin.
  """
  i, ok = _candidates(smoothed.shape[0], diverged_at)
  y = smoothed
  fwd = y[1:] - y[:-1]  # slope i -> i+1
  fwd_at = jnp.concatenate([fwd, fwd[-1:]])  # [n], forward at i
  bwd_at = jnp.concatenate([fwd[:1], fwd])  # [n], backward at i
  central = 0.5 * (fwd_at + bwd_at)  # (y[i+1]-y[i-1])/2
  slope = jnp.where(i == 0, fwd_at, jnp.where(i == diverged_at - 1, bwd_at, central))
  # Valid smoothed values are finite by definition of divergence, but a
  # difference of huge finite values can overflow: NaN is excluded too. With no
  # candidate left argmin sees all +inf and picks 0 (min_lr).
  ok = ok & ~jnp.isnan(slope)
  return jnp.argmin(jnp.where(ok, slope, jnp.inf))


def _minimum_index(smoothed, diverged_at):
  """Index of the smallest ``smoothed`` value over the candidates (first)."""
  _, ok = _candidates(smoothed.shape[0], diverged_at)
  return jnp.argmin(jnp.where(ok, smoothed, jnp.inf))


def _valley_index(smoothed, diverged_at):
  """fastai's ``valley``: two thirds of the way down the longest descent.

  ``lds[k]`` is the length of the longest strictly decreasing subsequence of
  the candidates that ends at ``k`` (a ``lax.scan`` over ``k``, O(n^2) work):
  ``1 + max lds[j]`` over candidates ``j < k`` with ``smoothed[j] >
  smoothed[k]``. A subsequence rather than a run, so the small bumps the EMA
  keeps do not cut a descent short. The valley ends at the first ``e`` with
  the largest ``L = lds[e]`` and, measured by its length as fastai does,
  starts at ``s = e - L + 1`` (at or after the first candidate, since a
  subsequence of ``L`` steps ending at ``e`` spans at least ``L`` of them;
  fastai's ``e - L`` is one step earlier); the index is
  ``s + floor(2 (e - s) / 3)``. If nothing decreases (``L = 1``) that is the
  first candidate.
  """
  n = smoothed.shape[0]
  i, ok = _candidates(n, diverged_at)

  def body(lds, k):
    above = ok & (i < k) & (smoothed > smoothed[k])
    length = jnp.where(ok[k], 1 + jnp.max(jnp.where(above, lds, 0)), 0)
    return lds.at[k].set(length.astype(jnp.int32)), None

  lds, _ = jax.lax.scan(body, jnp.zeros((n,), jnp.int32), i)
  end = jnp.argmax(lds).astype(jnp.int32)
  begin = end - lds[end] + 1
  idx = begin + (2 * (end - begin)) // 3
  return jnp.where(diverged_at >= 2, idx, 0)


def _suggest(lrs, smoothed, diverged_at, rule):
  """The suggested rate by ``rule``; ``lrs[0]`` (``min_lr``) when ``d < 2``."""
  if rule == "steep":
    return lrs[_steep_index(smoothed, diverged_at)]
  if rule == "minimum":
    rate = lrs[_minimum_index(smoothed, diverged_at)] / 10.0
    return jnp.where(diverged_at >= 2, rate, lrs[0])
  if rule == "valley":
    return lrs[_valley_index(smoothed, diverged_at)]
  raise ValueError(f"suggest must be one of {_RULES}, got suggest={rule!r}")


# A second small program after the sweep: another rule reuses the sweep's
# compilation.
_suggest_jit = jax.jit(_suggest, static_argnums=3)


def _run(loss_fn, optimizer, params, batches, lrs, smoothing, diverge_factor):
  """The jitted sweep: one ``lax.scan`` over the ``num_steps`` rates."""
  n = lrs.shape[0]
  num_batches = jax.tree_util.tree_leaves(batches)[0].shape[0]
  smoothing = jnp.asarray(smoothing, jnp.float32)
  diverge_factor = jnp.asarray(diverge_factor, jnp.float32)
  # inject_hyperparams stores float hyperparameters in the params' dtype by
  # default; in bf16 Adam's b2 = 0.999 rounds to 1 and its bias correction
  # divides 0 by 0. Keep them in at least float32 instead (f64 under x64).
  opt = optax.inject_hyperparams(optimizer, hyperparam_dtype=accumulation_dtype(params))(
    learning_rate=lrs[0]
  )
  value_and_grad = jax.value_and_grad(loss_fn)
  nan = jnp.array(jnp.nan, jnp.float32)

  def live(carry, i, lr):
    params, opt_state, avg, decay, best, _ = carry
    batch = jax.tree_util.tree_map(
      lambda b: jax.lax.dynamic_index_in_dim(b, i % num_batches, 0, keepdims=False), batches
    )
    loss, grads = value_and_grad(params, batch)
    loss = jnp.asarray(loss, jnp.float32)
    # EMA started at 0; dividing by 1 - smoothing**(i+1) (carried as a running
    # product, exact for smoothing == 0) removes its bias towards 0, so
    # smoothed[0] == losses[0].
    avg = smoothing * avg + (1.0 - smoothing) * loss
    decay = decay * smoothing
    smooth = avg / (1.0 - decay)
    # `smooth > factor * best`, written as `smooth - best > (factor-1)|best|`
    # so that it also means "got much worse" for negative losses. At step 0
    # best = +inf and the test reads `-inf > inf`: False. NaN/Inf diverges.
    diverged = ~jnp.isfinite(smooth) | (smooth - best > (diverge_factor - 1.0) * jnp.abs(best))

    def step(ps):
      params, opt_state = ps
      hyperparams = dict(opt_state.hyperparams)
      old = hyperparams["learning_rate"]
      hyperparams["learning_rate"] = lr.astype(jnp.result_type(old))
      opt_state = opt_state._replace(hyperparams=hyperparams)
      # The optimizer was written for Python-float hyperparameters (weakly
      # typed); injected they are f32 arrays, so `b2 ** count` (f32, int32) or
      # `b1 * mu` (f32, bf16) would be rejected under strict promotion. Run it
      # (and apply_updates, which adds f32 updates to bf16 params and casts
      # back) under standard promotion: the arithmetic the un-injected
      # optimizer does.
      with jax.numpy_dtype_promotion("standard"):
        updates, new_state = opt.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
      # f32 hyperparameters can also promote low-precision state (bf16
      # momentum -> f32); cast back so the scan carry keeps its dtypes.
      new_state = jax.tree_util.tree_map(
        lambda new, old: jnp.asarray(new).astype(jnp.result_type(old)), new_state, opt_state
      )
      return new_params, new_state

    # The diverging step is a no-op too: the rate that produced its params is
    # already past the usable range, and its gradient may be NaN.
    params, opt_state = jax.lax.cond(diverged, lambda ps: ps, step, (params, opt_state))
    best = jnp.where(diverged, best, jnp.minimum(best, smooth))
    diverged_at = jnp.where(diverged, i, n).astype(jnp.int32)
    return (params, opt_state, avg, decay, best, diverged_at), (loss, smooth)

  def frozen(carry, i, lr):
    del i, lr
    # Nothing is evaluated any more: params and optimizer state stay as they
    # were, and the step is recorded as NaN.
    return carry, (nan, nan)

  def body(carry, xs):
    i, lr = xs
    return jax.lax.cond(carry[-1] < n, frozen, live, carry, i, lr)

  carry = (
    params,
    opt.init(params),
    jnp.zeros((), jnp.float32),
    jnp.ones((), jnp.float32),
    jnp.array(jnp.inf, jnp.float32),
    jnp.array(n, jnp.int32),
  )
  carry, (losses, smoothed) = jax.lax.scan(body, carry, (jnp.arange(n, dtype=jnp.int32), lrs))
  final_params, diverged_at = carry[0], carry[-1]
  return lrs, losses, smoothed, diverged_at, final_params


# Compiled once per (loss_fn, optimizer) objects and argument shapes. Nothing
# is donated: the caller's params and batches stay valid.
_run_jit = jax.jit(_run, static_argnums=(0, 1))


def lr_range_test(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  batches: Any,
  *,
  optimizer: Callable[..., optax.GradientTransformation] = optax.sgd,
  min_lr: float = 1e-7,
  max_lr: float = 10.0,
  num_steps: int = 100,
  smoothing: float = 0.98,
  diverge_factor: float = 4.0,
  suggest: str = "valley",
) -> RangeTestResult:
  r"""Sweeps the learning rate exponentially and suggests a rate to train at.

  Step ``i = 0 .. N-1`` (``N = num_steps``) uses the rate

  .. math::
    \eta_i = \eta_{min} (\eta_{max} / \eta_{min})^{i / (N - 1)},

  so ``lrs[0] == min_lr`` and ``lrs[-1] == max_lr`` (in float32). It evaluates
  ``(L_i, g_i) = value_and_grad(loss_fn)(w_i, batches[i mod n])`` at the params
  *before* its update, then applies one update of
  ``optax.inject_hyperparams(optimizer)(learning_rate=...)`` with the rate set
  to ``eta_i``. The loss is smoothed with a bias-corrected EMA (``beta =
  smoothing``; ``beta = 0`` means no smoothing):

  .. math::
    a_i = \beta a_{i-1} + (1 - \beta) L_i,\quad a_{-1} = 0,\qquad
    S_i = a_i / (1 - \beta^{i+1}).

  **Divergence.** Step ``d`` diverges when ``S_d`` is NaN/Inf or
  ``S_d - B > (diverge_factor - 1) |B|`` with ``B = min_{j<d} S_j`` — for
  non-negative losses that is ``S_d > diverge_factor * B``. ``diverged_at`` is
  the first such step (``N`` if none). Its update is not applied and no later
  step runs: params and optimizer state stay frozen, and ``losses`` /
  ``smoothed`` are NaN after ``d`` (``losses[d]`` and ``smoothed[d]`` keep the
  values that triggered it).

  **Suggestion.** Every rule reads ``S`` over the candidate steps
  ``C = {k : start <= k < d}``, ``start = num_steps // 10``: the first tenth of
  the sweep is skipped, as fastai's ``lr_find`` does, since there the EMA
  averages only a few mini-batch losses and is batch noise (when ``d <=
  start`` every step before ``d`` is a candidate instead). When ``d < 2`` there
  is no curve to read and every rule suggests ``min_lr``. Ties go to the first
  index. ``suggest`` picks the rule:

  * ``"valley"`` (default, fastai's ``valley``): with
    ``lds[k] = 1 + max {lds[j] : j in C, j < k, S_j > S_k}`` (0 for an empty
    set), the length of the longest strictly decreasing subsequence of the
    curve ending at ``k``, the valley ends at ``e = argmax_{k in C} lds[k]``
    and spans ``L = lds[e]`` steps from ``s = e - L + 1``; the suggestion is

    .. math::
      \eta^* = \eta_{s + \lfloor 2 (e - s) / 3 \rfloor},

    two thirds of the way down the longest descent. A subsequence, so the
    bumps left in ``S`` do not cut a descent short. fastai's code takes
    ``s' = e - L`` and ``s' + \lfloor L/3 \rfloor + \lfloor L/6 \rfloor``,
    about halfway down; two thirds sits nearer the minimum and trained better
    on the digits MLP. If the loss never decreases, it is ``lrs[start]``.
  * ``"steep"``: with ``g = np.gradient(S[:d])`` (central differences inside,
    one-sided at both ends; the sweep is uniform in ``log lr`` so this is
    proportional to ``dS / d log lr``), ``\eta^* = \eta_k`` with
    ``k = argmin_{k in C} g_k``, the steepest descent. It often sits just
    below divergence, at a rate that does not train at constant rate (7.49 for
    SGD on a digits MLP whose best grid rate is 0.1). If the loss never
    decreases it is the point of least increase.
  * ``"minimum"``: ``\eta^* = \eta_k / 10`` with ``k = argmin_{k in C} S_k``,
    a decade below the rate of the lowest smoothed loss (may be below
    ``min_lr`` when the loss never decreases).

  So the suggestion is always a finite positive float32 rate; look at the
  curve all the same.

  Args:
    loss_fn: ``(params, batch) -> scalar`` loss. Hashable callables are cached
      by equality, others by identity: pass the same object again to reuse the
      compiled sweep.
    params: initial params (any pytree). Not modified and not donated.
    batches: pytree of arrays whose leading axis indexes batches (all leaves
      the same leading size ``n >= 1``); step ``i`` uses batch ``i mod n``.
    optimizer: factory ``learning_rate -> GradientTransformation`` accepting
      the keyword ``learning_rate``: ``optax.sgd``, ``optax.adam``,
      ``functools.partial(optax.sgd, momentum=0.9)``, a lambda building a
      chain, ... Its float hyperparameters are held in at least float32 (Adam's
      ``b2`` would round to 1 in bf16) and it runs under standard dtype
      promotion, as it would with plain Python-float hyperparameters.
    min_lr: first rate, ``> 0`` (and not 0 in float32).
    max_lr: last rate, ``> min_lr`` and finite in float32.
    num_steps: number of steps ``N >= 2``; changing it recompiles.
    smoothing: EMA coefficient in ``[0, 1)``.
    diverge_factor: ``> 1``; ``inf`` stops only on NaN/Inf.
    suggest: the suggestion rule, ``"valley"`` (default), ``"steep"`` or
      ``"minimum"`` (see above). Changing it compiles only the small
      suggestion program, not the sweep.

  Returns:
    A :class:`RangeTestResult` ``(lrs, losses, smoothed, suggestion,
    diverged_at, params)``.

  Raises:
    ValueError: a bad ``min_lr``, ``max_lr``, ``num_steps``, ``smoothing``,
      ``diverge_factor`` or ``suggest``, or empty / inconsistent ``batches``.
    TypeError: ``loss_fn`` or ``optimizer`` not callable, or ``optimizer``
      without a ``learning_rate`` keyword.

  Example:
    >>> import jax.numpy as jnp, optax_lr
    >>> loss_fn = lambda w, x: jnp.mean((x @ w - 1.0) ** 2)
    >>> batches = jnp.ones((4, 8, 3))  # 4 batches of 8 examples, 3 features
    >>> res = optax_lr.lr_range_test(loss_fn, jnp.zeros(3), batches, min_lr=1e-4,
    ...                              max_lr=10.0, num_steps=50)
    >>> res.lrs.shape, res.smoothed.shape
    ((50,), (50,))
    >>> # SGD on this quadratic (curvature 6) blows up for rates above 1/3.
    >>> bool(0 < res.diverged_at < 50)
    True
    >>> bool(1e-3 < res.suggestion < 1 / 3)
    True
    >>> for rule in ("valley", "steep", "minimum"):
    ...   r = optax_lr.lr_range_test(loss_fn, jnp.zeros(3), batches, min_lr=1e-4,
    ...                              max_lr=10.0, num_steps=50, suggest=rule)
    ...   print(rule, f"{float(r.suggestion):.3g}")
    valley 0.091
    steep 0.045
    minimum 0.193

  References:
    L. N. Smith, "Cyclical Learning Rates for Training Neural Networks",
    WACV 2017, arXiv:1506.01186 (the range test).

    J. Howard, S. Gugger, "Fastai: A Layered API for Deep Learning",
    Information 11(2), 2020, arXiv:2002.04688 (``Learner.lr_find``; its
    ``valley``, ``steep`` and ``minimum`` suggestions live in
    ``fastai.callback.schedule``).

    A. Khodamoradi, K. Denolf, K. Vissers, R. C. Kastner, "ASLR: An Adaptive
    Scheduler for Learning Rate" (recommends the range test for its initial
    rate).
  """
  min_lr, max_lr, num_steps, smoothing, diverge_factor = _validate(
    loss_fn, optimizer, min_lr, max_lr, num_steps, smoothing, diverge_factor, suggest
  )
  _num_batches(batches)
  lrs = jnp.asarray(_sweep(min_lr, max_lr, num_steps))
  lrs, losses, smoothed, diverged_at, final_params = _run_jit(
    _static(loss_fn), _static(optimizer), params, batches, lrs, smoothing, diverge_factor
  )
  suggestion = _suggest_jit(lrs, smoothed, diverged_at, suggest)
  return RangeTestResult(lrs, losses, smoothed, suggestion, diverged_at, final_params)
