"""AALR: halve until training is stable, then double optimistically.

Algorithm 1 of "A simple dynamic learning rate tuning algorithm for automated
training of DNNs" compares each epoch's loss ``L`` with the best loss ``L*``:

* phase 1 halves the rate and restarts from the initial model whenever an
  epoch makes things worse, until ``warmup_patience`` epochs in a row are good;
* phase 2 doubles the rate after every improvement, gives a non-improving
  rate a second chance, then halves it and doubles the patience; a diverged
  (NaN) loss reloads the last checkpoint.

A checkpoint holds the params, the direction state and their cost, as the
paper saves and loads "θ and L*" together: every rollback restores ``L*`` to
the checkpoint's cost (in phase 1 the initial model's cost, or ``+inf`` when
none was observed), so a restart is judged against the model it restarts
from, not against the best epoch of the abandoned attempt.

Checkpoints need params, and ``optax_lr.observe`` sees only the state, so a
save or rollback decided at an epoch end is *pending* until the next update
call carries it out. ``optax_lr.apply_updates`` lands exactly on the
checkpoint on a rollback call, even from NaN params, and
``optax_lr.best_params`` reads the best model at the end of training.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from optax_lr import _checkpoint
from optax_lr import _checks
from optax_lr import _monitor
from optax_lr._tree import accumulation_dtype

__all__ = ["AALRState", "aalr"]

# `pending` codes: what the next update call does before (or instead of) its step.
NONE = 0
SAVE = 1
ROLLBACK = 2

# p doubles on every halving; it saturates here instead of wrapping around.
_MAX_PATIENCE = 2**30

# Window mode: phase 1 calls an epoch worse only when its mean training loss
# exceeds L* by more than this many standard errors of the difference of two
# epoch means (each estimated from the window's own spread). Under pure
# minibatch noise one epoch in 44 is then called worse (a one-sided 2-sigma
# test), so ten good epochs in a row come four times in five.
NOISE_STANDARD_ERRORS = 2.0


class AALRState(NamedTuple):
  """State of :func:`aalr`."""

  # (The ignore: `count` shadows tuple.count, as in optax's own states.)
  count: jax.Array  # type: ignore[assignment]  # [] int32: update calls so far (saturating).
  learning_rate: jax.Array  # [] float32 (f64 under x64 params): η.
  phase: jax.Array  # [] int32: 1 (initial exploration) or 2 (binary exploration).
  best_cost: jax.Array  # [] float32 (f64 under x64): L*, +inf until a cost is seen.
  # [] float32 (f64 under x64): the cost of `checkpoint`, what every rollback
  # restores L* to: +inf at init, the initial model's cost when one is observed
  # before the first update call, then L* at each save.
  checkpoint_cost: jax.Array
  good_epochs: jax.Array  # [] int32: phase 1's counter i of good epochs in a row.
  # [] int32: good epochs that end phase 1, written by every update call (an
  # injected value takes effect from the next call).
  warmup_patience: jax.Array
  patience: jax.Array  # [] int32: phase 2's p, epochs between checks.
  epochs_to_check: jax.Array  # [] int32: phase-2 epochs left before the next check.
  second_chance: jax.Array  # [] bool: the current phase-2 period is the second try.
  # [] bool: an epoch end since the last update call (in window mode: one
  # that ended inside the last update call) saw a finite cost below
  # `best_model_cost` as it stood: the params the caller holds are the best
  # model yet (`best_params`), which the next update call stores in
  # `best_model`.
  observed_better: jax.Array
  # [] float32 (f64 under x64): the lowest finite cost any epoch end has
  # seen, the initial model's included; +inf until one is seen.
  best_model_cost: jax.Array
  pending: jax.Array  # [] int32: 0 none, 1 save, 2 rollback, for the next update.
  rolled_back: jax.Array  # [] bool: the update call that produced this state rolled back.
  checkpoint: Any  # params-like: the initial params in phase 1, then the last save.
  checkpoint_direction_state: Any  # the direction state saved with `checkpoint`.
  # params-like, params' dtypes: the model of `best_model_cost` (the initial
  # params until a cost is seen), what `best_params` returns. A phase-1
  # restart abandons models the checkpoint never held; this keeps the best.
  best_model: Any
  # The training-loss window with steps_per_epoch, else None: `observe`
  # refuses a state that ends its epochs itself.
  window: Optional[_monitor.EpochWindow]
  direction_state: Any  # the direction's state.


# The param-sized fields: left out of the epoch end's lax.cond.
_TREE_FIELDS = ("checkpoint", "checkpoint_direction_state", "best_model", "direction_state")


def _clamp_rate(rate: jax.Array) -> jax.Array:
  # Halving and doubling alone could reach 0 (after ~150 halvings) or inf;
  # kept inside the normal floats, η stays positive, finite and can recover.
  info = jnp.finfo(rate.dtype)
  return jnp.clip(rate, info.tiny, info.max)


def _noise_margin(standard_error: jax.Array) -> jax.Array:
  """Phase 1's tolerance for a window's mean: ``z·sqrt(2)·SE``, 0 if not finite.

  The difference of two epoch means with the same standard error ``SE`` has
  standard error ``sqrt(2)·SE``. A non-finite ``SE`` comes with a non-finite
  cost, which is a divergence whatever the margin.
  """
  margin = NOISE_STANDARD_ERRORS * jnp.sqrt(jnp.asarray(2.0, standard_error.dtype)) * standard_error
  return jnp.where(jnp.isfinite(margin), margin, jnp.zeros_like(margin))


def _epoch_end(state: AALRState, cost: jax.Array, noise_margin: Any = 0.0) -> AALRState:
  """One epoch end of Algorithm 1 with the monitored ``cost``.

  Reads and writes only scalar fields: checkpoint work is left to the next
  update call through ``pending``. ``noise_margin`` (window mode) is how far
  above ``L*`` a cost may be before phase 1 calls its epoch worse: 0 for an
  observed cost, the paper's ``L > L*``.
  """
  dtype = state.best_cost.dtype
  cost = jnp.asarray(cost).astype(dtype)
  noise_margin = jnp.asarray(noise_margin).astype(dtype)
  # The paper's "L is NaN" is a diverged loss: +inf (overflow) and -inf are
  # no more a loss to compare than NaN is; nor is a loss that blew up to
  # more than ten times L* (the safety net's test, `_checkpoint`), which
  # would otherwise train on from a wrecked model until it overflows.
  best = state.best_cost
  blown_up = jnp.isfinite(best) & (
    cost > best + (_checkpoint.DIVERGENCE_FACTOR - 1) * jnp.abs(best)
  )
  diverged = jnp.logical_not(jnp.isfinite(cost)) | blown_up
  lr = state.learning_rate
  halved = _clamp_rate(lr * jnp.asarray(0.5, dtype))
  doubled = _clamp_rate(lr * jnp.asarray(2.0, dtype))
  patience_up = jnp.minimum(state.patience, _MAX_PATIENCE // 2) * 2

  # ---- Phase 1: halve and restart from the initial params on a bad epoch.
  # A windowed cost is a mean of minibatch losses: at a rate too small to
  # make progress within one epoch's noise, "L > L*" is a coin flip, and
  # every flip halves the rate and restarts, so the rate spirals to 0
  # (measured: 1e-4 -> 1e-9 in 48 epochs of noisy least squares). Only a
  # rise beyond the noise is a bad epoch.
  bad = diverged | (cost > state.best_cost + noise_margin)
  good_epochs = jnp.where(bad, 0, state.good_epochs + 1)
  switches = jnp.logical_not(bad) & (good_epochs >= state.warmup_patience)
  p1 = dict(
    learning_rate=jnp.where(bad, halved, jnp.where(switches, doubled, lr)),
    phase=jnp.where(switches, 2, 1),
    # A rollback reloads the initial model and its cost (+inf if none was
    # seen): the restart must beat where it starts from, not the best
    # epoch of the attempt it abandons.
    best_cost=jnp.where(bad, state.checkpoint_cost, cost),
    good_epochs=good_epochs,
    patience=jnp.where(switches, 1, state.patience),
    epochs_to_check=jnp.where(switches, 1, state.epochs_to_check),
    second_chance=jnp.asarray(False),
    pending=jnp.where(bad, ROLLBACK, jnp.where(switches, SAVE, NONE)),
  )

  # ---- Phase 2: a check after every `patience` epochs.
  left = state.epochs_to_check - 1
  check = left <= 0
  improved = jnp.logical_not(diverged) & (cost < state.best_cost)
  retry = check & jnp.logical_not(diverged | improved | state.second_chance)
  lower = check & jnp.logical_not(improved | retry)  # NaN, or no gain twice.
  raise_ = check & improved
  patience = jnp.where(raise_, 1, jnp.where(lower, patience_up, state.patience))
  rolls_back = lower & diverged
  p2 = dict(
    learning_rate=jnp.where(raise_, doubled, jnp.where(lower, halved, lr)),
    phase=jnp.asarray(2),
    # Loading the checkpoint loads its L* too (the paper's lines 21, 37).
    best_cost=jnp.where(
      raise_, cost, jnp.where(rolls_back, state.checkpoint_cost, state.best_cost)
    ),
    good_epochs=state.good_epochs,
    patience=patience,
    epochs_to_check=jnp.where(check, patience, left),
    second_chance=jnp.where(check, retry, state.second_chance),
    pending=jnp.where(raise_, SAVE, jnp.where(rolls_back, ROLLBACK, NONE)),
  )

  in_phase_2 = state.phase == 2
  new = {name: jnp.where(in_phase_2, p2[name], p1[name]) for name in p1}

  # A cost seen before the first update call is the paper's forward pass
  # through the initial model: it sets L* and the cost of the initial model,
  # phase 1's checkpoint, and nothing else.
  initial = state.count == 0
  new = {name: jnp.where(initial, getattr(state, name), value) for name, value in new.items()}
  sets_initial = initial & jnp.logical_not(diverged)
  new["best_cost"] = jnp.where(sets_initial, cost, new["best_cost"])
  new["checkpoint_cost"] = jnp.where(sets_initial, cost, state.checkpoint_cost)
  # At every epoch end, a check or not: phase 2 looks at costs only every p
  # epochs, and a phase-1 restart abandons its attempt, but `best_params`
  # keeps the lowest-cost model seen. The flag stays set until an update
  # call stores the params (two epoch ends with no call between them saw
  # the same params).
  record = jnp.isfinite(cost) & (cost < state.best_model_cost)
  new["observed_better"] = state.observed_better | record
  new["best_model_cost"] = jnp.where(record, cost, state.best_model_cost)

  # Two epoch ends with no update call between them: a pending rollback stays
  # a rollback (a save right after it would store the checkpoint itself);
  # otherwise the newer decision wins, and "none" keeps an older one.
  decided = new["pending"]
  new["pending"] = jnp.where(
    (decided == NONE) | (state.pending == ROLLBACK), state.pending, decided
  )
  # Any: only array fields are replaced, which the keyword types cannot tell.
  fields: dict[str, Any] = {
    name: value.astype(getattr(state, name).dtype) for name, value in new.items()
  }
  return state._replace(**fields)


def _best_params(state: AALRState) -> tuple[jax.Array, Any]:
  """``(has_best, best_model)`` for ``optax_lr.best_params``.

  The best model is the one of the lowest finite cost any epoch end has
  seen: the caller's params while that epoch end is the last thing that
  happened (``observed_better``: no update call has stored them yet),
  ``best_model`` otherwise. It is the phase-2 checkpoint when no earlier
  model did better, but a phase-1 restart abandons models the checkpoint
  never held, and phase 2 saves only at its checks, every ``p`` epochs.
  With no finite cost seen, ``best_model`` is the initial model: returned
  while a rollback is pending (the params at hand diverged, or made things
  worse, and training restarts from it), else the params.
  """
  seen = jnp.isfinite(state.best_model_cost) | (state.pending == ROLLBACK)
  return seen & jnp.logical_not(state.observed_better), state.best_model


_monitor.register_method(
  AALRState,
  epoch_end=_monitor.unless_windowed(_epoch_end, "aalr"),
  rollback=lambda state: (state.rolled_back, state.checkpoint),
  best_params=_best_params,
)


def _check_warmup_patience(value) -> Any:
  """A Python int >= 1, or an integer array (injected; traced: unchecked)."""
  return _checks.integer("warmup_patience", value, lambda x: x >= 1, ">= 1")


def _check_steps_per_epoch(value) -> Optional[int]:
  if _checks.is_array(value):
    raise ValueError(
      "steps_per_epoch must be None or a positive Python int: it decides "
      "whether the state has an epoch window. Under "
      "optax.inject_hyperparams pass static_args=('steps_per_epoch',); got "
      f"steps_per_epoch={value!r}."
    )
  return _checks.positive_int("steps_per_epoch", value, allow_none=True)


def _patience(warmup_patience) -> jax.Array:
  # A traced patience was not checked: below 1 it acts as 1 (phase 1 ends at
  # the first good epoch), as a checked one could at the least.
  return jnp.maximum(jnp.asarray(warmup_patience, jnp.int32), 1)


def _initial_rate(learning_rate, dtype) -> jax.Array:
  # A traced rate was not checked: NaN becomes the smallest normal rate and
  # the clamp keeps the rest in the positive normal floats, as for any η.
  rate = jnp.full([], learning_rate, dtype)
  return _clamp_rate(jnp.where(jnp.isnan(rate), jnp.finfo(dtype).tiny, rate))


def aalr(
  learning_rate: float = 0.1,
  *,
  warmup_patience: int = 10,
  steps_per_epoch: Optional[int] = None,
  direction: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AALR: Algorithm 1's two-phase halving and optimistic doubling of η.

  Each update call returns :math:`-\eta\, u_t` with
  ``(u_t, s') = direction.update(g_t, s, params)``. At each epoch end with
  cost ``L`` (``L*`` and ``L_0`` start at ``+inf``; a cost observed before
  the first update call is the paper's forward pass through the initial model
  and only sets both: ``L_0`` is the initial model's cost):

  * Phase 1: if ``L > L*`` or ``L`` diverged: ``η ← η/2``, roll back to the
    initial params with a fresh direction state, ``L* ← L_0``, ``i = 0``;
    else ``L* = L``, ``i += 1``. After ``warmup_patience`` good epochs in a
    row: save a checkpoint, go to phase 2, ``η ← 2η``, ``p = 1``.
  * Phase 2 checks after every ``p`` epochs. Diverged: ``η ← η/2``, roll back
    to the checkpoint (params, direction state and ``L*``), ``p ← 2p``.
    ``L < L*``: ``L* = L``, save a checkpoint, ``η ← 2η``, ``p = 1``.
    Otherwise, the first time: train ``p`` more epochs (the second chance);
    the second time: ``η ← η/2``, ``p ← 2p``. Costs between checks are not
    looked at.

  "Diverged" is the paper's "L is NaN": a NaN, ``+inf`` or ``-inf`` cost (an
  exploding loss overflows to inf before it turns NaN), and, beyond the
  paper, a cost above ten times ``L*`` (``L* + 9|L*|``; the safety net's
  test in ``optax_lr._checkpoint``): such a blown-up epoch, typically right
  after a doubling, is handled as a NaN one (a rollback to the checkpoint)
  instead of training on from a wrecked model until it overflows (without
  it, SGD on Rosenbrock from rate 1e-3 kept doubling into its unstable
  regime and ended at (0.94, 0.88) after 30k steps). A checkpoint carries its cost
  (``checkpoint_cost``), as the paper saves and loads "θ and L*" together,
  and every rollback restores ``L*`` to it: in phase 1 that is ``L_0``, the
  initial model's cost, or ``+inf`` when none was observed (the next epoch is
  then accepted); in phase 2 the ``L*`` of the last save. So a restart is
  judged against the model it restarts from: were it held to the best epoch
  of the attempt it abandoned, which one epoch from scratch can rarely beat,
  one noisy epoch would halve ``η`` for ever. ``η`` is kept within the normal
  positive floats, so it is never 0, inf or NaN.

  Saves and rollbacks decided at an epoch end are ``pending`` until the next
  update call: a save stores the params that call receives, its direction
  state and ``L*``, then steps as usual; a rollback returns
  ``checkpoint - params`` with no gradient step, restores the direction state
  and ``L*`` (the epoch end that decided it restored ``L*`` already; costs
  observed since then were those of the discarded params) and sets
  ``rolled_back``, so that ``optax_lr.apply_updates`` lands exactly on the
  checkpoint (also from NaN params). A save is a ``lax.cond`` branch (other
  calls copy nothing) and a rollback an elementwise select fused with the
  step (other calls read the checkpoint but copy nothing), so the step fuses
  with the gradient and with ``params + updates``. In ``steps_per_epoch``
  mode a rollback call trains nothing, so its ``value`` (the loss of the
  discarded params) belongs to no epoch window.
  Two epoch ends with no update call between them: a pending rollback stays
  pending (saving right after it would store the checkpoint itself), else the
  later decision wins.

  AALR also keeps the best model it has seen: the params of the lowest
  finite cost any epoch end observed, the initial model's included
  (``best_model``, ``best_model_cost``), stored by the first update call
  after that epoch end (in the checkpoint save's ``lax.cond``: other calls
  copy nothing). At the end of training ``optax_lr.best_params`` returns it
  (the caller's params while that epoch end is the last thing that
  happened). It is the phase-2 checkpoint when nothing earlier did better;
  but a phase-1 restart abandons the models of the attempt it ends, which
  no checkpoint holds, and phase 2 reads costs only every ``p`` epochs
  (``p`` doubles at every halving). With no finite cost seen, it is the
  initial model while a rollback is pending, else the caller's params.
  Extra buffers: two params copies (the checkpoint and the best model) and
  one copy of the direction state.

  Epoch ends come from ``optax_lr.observe(state, cost)`` or, with
  ``steps_per_epoch=N``, from the update call itself; one or the other:
  ``observe`` refuses a state built with ``steps_per_epoch`` (each epoch
  would end twice), which therefore starts with ``L* = L_0 = +inf`` (no
  initial model's cost). A window's cost is the mean of its minibatch
  losses, and phase 1 then calls an epoch worse only when
  ``L > L* + 2·sqrt(2)·SE``, ``SE`` the window's standard error (two standard
  errors of the difference of two epoch means; 0 for a window of one call):
  at a rate too small to move the loss beyond one epoch's noise, the
  paper's ``L > L*`` is a coin flip, each "worse" flip halves the rate and
  restarts, and the rate spiralled to 0 (1e-4 to 1e-9 in 48 epochs of
  noisy least squares). An observed cost keeps the paper's test; pass a
  low-noise one (the whole validation set).

  Under ``optax.inject_hyperparams``, ``steps_per_epoch`` goes in
  ``static_args`` (it decides whether the state has an epoch window);
  ``learning_rate`` and ``warmup_patience`` may be injected. The rate is read
  by ``init`` only (η is the method's afterwards: a later change of the
  injected value has no effect); the patience by every update call, which
  writes it into the state, so a change takes effect from the next call.
  Traced values cannot be checked: a NaN rate starts at the smallest normal
  float, a patience below 1 acts as 1.

  Args:
    learning_rate: the initial η, ``> 0`` (the paper uses 0.1).
    warmup_patience: good epochs in a row that end phase 1 (the paper's 10),
      an int ``>= 1``.
    steps_per_epoch: ``None`` (epoch ends from ``optax_lr.observe``) or the
      window length ``N``; then every update needs ``value=loss``, the cost
      is the window's mean training loss, and ``observe`` raises.
    direction: the unscaled descent direction, ``optax.identity()`` (SGD) by
      default; the paper uses ``optax.trace(0.9)`` with weight decay.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose update needs
    ``params``. The state exposes ``phase``, ``best_cost``,
    ``checkpoint_cost``, ``good_epochs``, ``patience``, ``epochs_to_check``,
    ``second_chance``, ``observed_better``, ``best_model_cost`` and
    ``pending``.

  Raises:
    ValueError: for a non-positive or non-finite ``learning_rate``, a bad
      ``warmup_patience`` or ``steps_per_epoch``, a ``direction`` that is not
      an ``optax.GradientTransformation`` (concrete values are checked under
      ``inject_hyperparams`` too, e.g. by an eager ``init``); at trace time
      when ``params`` are missing or not shaped like the updates, or
      ``steps_per_epoch`` is set without ``value``, or ``optax_lr.observe``
      is given a state built with ``steps_per_epoch``.

  Example:
    >>> import jax.numpy as jnp, optax_lr
    >>> tx = optax_lr.aalr(0.4, warmup_patience=2)
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> state = optax_lr.observe(tx.init(params), 5.0)  # L* of the initial model
    >>> updates, state = tx.update({'w': jnp.ones(2)}, state, params)
    >>> params = optax_lr.apply_updates(params, updates, state)
    >>> state = optax_lr.observe(state, 6.0)  # worse: halve, roll back
    >>> print(float(optax_lr.current_lr(state)), int(state.pending))
    0.2 2
    >>> float(state.best_cost)  # L* of the model it rolls back to
    5.0
    >>> updates, state = tx.update({'w': jnp.ones(2)}, state, params)
    >>> optax_lr.apply_updates(params, updates, state)['w']
    Array([1., 2.], dtype=float32)

    Under ``optax.inject_hyperparams``, with ``steps_per_epoch`` static:

    >>> import jax, optax
    >>> tx = optax.inject_hyperparams(optax_lr.aalr, static_args=(
    ...     'steps_per_epoch',))(learning_rate=0.4, warmup_patience=2)
    >>> state = jax.jit(tx.init)(params)
    >>> updates, state = jax.jit(tx.update)({'w': jnp.ones(2)}, state, params)
    >>> print(round(float(optax_lr.current_lr(state)), 6), updates['w'])
    0.4 [-0.4 -0.4]

  References:
    "A Simple Dynamic Learning Rate Tuning Algorithm for Automated Training of
    DNNs", ICLR 2020 submission, https://openreview.net/forum?id=rJxyqkSYDH
  """
  # Under optax.inject_hyperparams this runs in init and in every update,
  # with learning_rate and warmup_patience as arrays (traced under jit): the
  # rate is read by init only (η is the method's afterwards), the patience
  # by every update call.
  initial_rate = _checks.positive("learning_rate", learning_rate)
  warmup_patience = _check_warmup_patience(warmup_patience)
  steps_per_epoch = _check_steps_per_epoch(steps_per_epoch)
  direction = optax.identity() if direction is None else direction
  _checks.check_direction(direction)
  direction = optax.with_extra_args_support(direction)

  def init_fn(params):
    dtype = accumulation_dtype(params)
    return AALRState(
      count=jnp.zeros([], jnp.int32),
      learning_rate=_initial_rate(initial_rate, dtype),
      phase=jnp.ones([], jnp.int32),
      best_cost=jnp.full([], jnp.inf, dtype),
      checkpoint_cost=jnp.full([], jnp.inf, dtype),
      good_epochs=jnp.zeros([], jnp.int32),
      warmup_patience=_patience(warmup_patience),
      patience=jnp.ones([], jnp.int32),
      epochs_to_check=jnp.ones([], jnp.int32),
      second_chance=jnp.zeros([], jnp.bool_),
      observed_better=jnp.zeros([], jnp.bool_),
      best_model_cost=jnp.full([], jnp.inf, dtype),
      pending=jnp.full([], NONE, jnp.int32),
      rolled_back=jnp.zeros([], jnp.bool_),
      # The initial params are phase 1's checkpoint, and their fresh
      # direction state is what every phase-1 rollback restores.
      checkpoint=_checkpoint.fresh_copy(params),
      checkpoint_direction_state=_checkpoint.fresh_copy(direction.init(params)),
      best_model=_checkpoint.fresh_copy(params),
      window=None if steps_per_epoch is None else _monitor.window_init(dtype),
      direction_state=direction.init(params),
    )

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    _checks.check_params(params, updates, "aalr", "it saves and restores checkpoints of them")
    rollback = state.pending == ROLLBACK
    save = state.pending == SAVE
    extra = extra_args if value is None else {**extra_args, "value": value}
    # Save: the params and direction state this call receives, and L*, their
    # cost; keep: the same params as the best model seen (their epoch end
    # saw a new lowest cost); rollback: `checkpoint - params` instead of the
    # step, and the direction state restored. The shared machinery of
    # `_checkpoint`: saving and keeping are one lax.cond (other calls copy
    # nothing), a rollback a select fused with the step.
    saved, best_model, updates = _checkpoint.save_and_keep_if(
      save,
      state.observed_better,
      _checkpoint.Checkpoint(
        params=state.checkpoint,
        direction_state=state.checkpoint_direction_state,
        cost=state.checkpoint_cost,
        rate=state.learning_rate,
      ),
      state.best_model,
      params,
      state.direction_state,
      state.learning_rate,
      state.best_cost,
      updates,
    )
    u, direction_state = _checkpoint.direction_or_restore(
      rollback,
      lambda: direction.update(updates, state.direction_state, params, **extra),
      saved.direction_state,
    )
    new_updates = _checkpoint.step_or_rollback(
      rollback, u, -state.learning_rate, saved.params, params, updates
    )
    checkpoint, checkpoint_direction_state, checkpoint_cost = (
      saved.params,
      saved.direction_state,
      saved.cost,
    )
    state = state._replace(
      count=optax.safe_increment(state.count),
      # This call moves the params: the last observed cost is no longer
      # theirs (an epoch end in this call, in window mode, may set it again).
      observed_better=jnp.zeros([], jnp.bool_),
      # The epoch end that decided the rollback restored L* already; epoch
      # ends since then judged params this call discards.
      best_cost=jnp.where(rollback, checkpoint_cost, state.best_cost),
      pending=jnp.full([], NONE, jnp.int32),
      rolled_back=rollback,
      warmup_patience=_patience(warmup_patience),
      checkpoint=checkpoint,
      checkpoint_cost=checkpoint_cost,
      checkpoint_direction_state=checkpoint_direction_state,
      best_model=best_model,
      direction_state=direction_state,
    )
    if steps_per_epoch is not None:
      window, end = _monitor.window_step(state.window, value, steps_per_epoch)
      # A rollback call trains nothing: the loss it was given is that of the
      # discarded params, part of no epoch.
      window = jax.tree_util.tree_map(
        lambda old, new: jnp.where(rollback, old, new), state.window, window
      )
      is_end = end.is_end & jnp.logical_not(rollback)
      margin = _noise_margin(end.standard_error)
      light = state._replace(window=window, **{name: None for name in _TREE_FIELDS})
      light = _monitor.maybe_epoch_end(
        light, is_end, end.cost, lambda s, c: _epoch_end(s, c, margin)
      )
      state = light._replace(**{name: getattr(state, name) for name in _TREE_FIELDS})
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
