"""The one rollback machinery: checkpoints of params, direction state and cost.

Two users share it:

* AALR's Algorithm 1 saves its best model and reloads it (with its cost) when
  an epoch diverges;
* the *safety net* of every other method (``safety_net=True``, the default)
  saves a known-good point every few healthy steps and rolls back to it when
  training diverges, with a smaller learning rate.

A checkpoint is saved and restored inside an update call, where the params
are at hand: a save stores the params the call receives and the direction
state it starts from; a rollback returns ``checkpoint - params`` instead of a
step and restores the direction state. ``optax_lr.apply_updates`` lands
exactly on the checkpoint on such a call (also from NaN params, where
``params + update`` would stay NaN).

A save is a ``lax.cond`` on a scalar flag, so a call that does not save
copies nothing; a rollback is an elementwise select between the step and
``checkpoint - params``, fused with the step (it reads the checkpoint). The
direction update runs inside a ``lax.cond`` on the rollback flag
(:func:`direction_or_restore`), so a call that does not roll back writes the
new direction state in place, and a rollback call restores the saved one.

The safety net's policy (:class:`SafetyNetState`, :func:`net_decide`):

* **Diverged** at update call ``t`` when any of these holds: the method's own
  health flag is false (a non-finite hypergradient, window sum or epoch
  cost: the methods already compute these scalars, so detection costs no
  extra pass over the tree); the training loss ``value`` (when the caller
  passes it) is not finite, or is ``> 10·ref`` with ``ref`` the larger of the
  first finite loss seen and the checkpoint's loss (``ref + 9|ref|`` for a
  negative ``ref``): a loss ten times its starting level is a blow-up, not
  noise; until the net's first save, ``> 3·ref``
  (:data:`EARLY_DIVERGENCE_FACTOR`): the initial rate is too high, and
  going back to the initial point costs the few calls since (over Adam at
  0.1 the digits MLP's loss went from 2.3 to 22-28 in one step, and where
  that stayed under 10·ref the run kept the rate and trained a damaged
  network); or is above :data:`LEVEL_FACTOR` (1000) times its running level
  (``loss_level``, an average of the positive losses over about
  :data:`SAVE_EVERY` calls), once it is also above float epsilon times
  ``ref``: a loss that has come down by orders of magnitude and jumps back
  up a thousandfold is a blow-up too, though still under its first value; or
  more than half of the recent losses (an average over about
  :data:`SAVE_EVERY` calls since the last save or rollback) above
  :data:`RISE_FACTOR` (3) times the running level at the last save (while
  the level is above the same floor): a sustained rise, which the
  thousandfold test misses when the level follows the blow-up up (by 5% a
  call), while a heavy tail of hard minibatches among easy ones never makes
  half of the losses; or
  (for the hypergradient methods, whose cosine pass tells it at no cost,
  for ``newton_lr``, which counts on the calls that would save and at
  window ends, and for ASLR, which counts at the call after each epoch end:
  :func:`net_decide_counting_live`) a
  gradient that is exactly zero everywhere, or on more than half of the
  most leaves that had a nonzero one at a call so far, or, before the first
  save, fewer layers with at least a third of their units live than at
  some call so far (a layer: a vector leaf, its bias; a unit: one entry,
  exactly 0 where the unit is dead on the whole minibatch), at a loss above
  :data:`DEAD_LOSS_FRACTION` (half) of the first: a dead model, whose
  outputs a too-high rate saturated or whose units it killed, and which no
  rate moves again (such a call never saves; a dead hidden layer zeroes
  the gradient of every layer before it and of the kernel after it, and
  leaves the last biases'; a layer whose units mostly died keeps its
  leaves' gradients through the units left, and its bias, zero on most
  entries, shows it); or, after a rollback and
  before any save, :data:`STALL_CALLS` (40) calls with nothing saved and the
  running loss level still above the first loss: the backed-off rate is
  still too high, and trains a damaged model that stays worse than the
  untrained one (over Adam at 0.1 a deep tanh MLP's units saturate, its
  loss stays ~1.1 times the first, and a single low minibatch loss would
  have saved that point); or a rollback left pending by the previous call.

  The running level is what keeps a converged run converged. On Rosenbrock
  (optax's contrib target) a rule that drives its rate to the edge of
  stability makes the loss spike from ~1e-8 back to 1-10, under the tenfold
  test; whether the 30,000th step fell inside such a spike decided whether
  the run "converged", and a relative perturbation of 1e-7 to 1e-5 of the
  loss flipped it (newton_lr over SGD and RTHO over Adam with their
  defaults; HD's multiplicative rule with an explicit ``hyper_lr``).
  On the benchmark tasks no minibatch loss moved a thousandfold against its
  running average: their runs are identical with and without this test.

  The sustained-rise test catches what the thousandfold one lets through
  from a converged point: over momentum from rate 1 on a deep tanh MLP
  (``benchmarks.fresh_tasks``' ``deep_tanh``) HD's rate rose near the
  minimum and its minibatch losses went to 100-450 times the running level
  while the level rose with them; a lucky minibatch then saved the damaged
  model, and the run ended at 133 times the best hand-tuned loss (0.27
  times with the test). Heavy tails are why it counts losses rather than
  averaging them: softmax regression on digits has most minibatch losses
  near 1e-4 and a few at 0.3-0.9, which a hundredfold level test read as
  divergences (nine rollbacks, the rate from 2 to 2e-5).
* **Rollback**: params and direction state back to the checkpoint, the
  method's own buffers (tangents, window sums) reset, and the rate set to
  ``min(rate, checkpoint_rate / BACKOFF^k)``, ``k`` the divergences since
  that checkpoint was saved before this one (:func:`backoff_rate`): the first
  rollback restores the rate that was in use at the known-good point, each
  further one from the same checkpoint divides it by :data:`BACKOFF` again.
  Before the first save the checkpoint is the initial point, whose rate has
  not shown that it trains: the first rollback there already divides it.
  The running loss level returns to the one saved with the checkpoint
  (a rollback to the initial point, which has none, leaves it as it is).
* **Save**: every :data:`SAVE_EVERY` calls at the earliest, on a healthy call
  whose loss (when given) is finite and no worse than the checkpoint's. The
  first checkpoint is the initial point, and the first call's loss (the
  loss at those params) is its cost: a run that a too-high rate makes worse
  than the untrained model, without a tenfold loss, saves nothing. Nor does
  one while its running loss level is above the first loss, even at a
  lucky minibatch loss below the checkpoint's: that model is still worse
  than the untrained one.
  Without a loss, a save also needs the call's squared gradient norm
  :math:`|g_t|^2` within :data:`GRADIENT_GROWTH` times its running average
  (when the method passes it): a run that blows up without NaN yet has
  gradients growing by orders of magnitude in a few calls, and a checkpoint
  saved there would be rolled back to again and again.

Memory: one params-sized checkpoint plus one copy of the direction state.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from optax_lr._tree import tree_max_abs_and_live

__all__ = [
  "BACKOFF",
  "DEAD_LOSS_FRACTION",
  "DIVERGENCE_FACTOR",
  "EARLY_DIVERGENCE_FACTOR",
  "GRADIENT_GROWTH",
  "LEVEL_FACTOR",
  "RATE_BAND",
  "RISE_FACTOR",
  "SAVE_EVERY",
  "STALL_CALLS",
  "Checkpoint",
  "SafetyNetState",
  "backoff_rate",
  "band",
  "clip_to_band",
  "dead_model",
  "checkpoint_init",
  "direction_or_restore",
  "fresh_copy",
  "net_decide",
  "net_decide_counting_live",
  "net_epoch_end",
  "net_init",
  "net_update",
  "net_rollback",
  "save_and_keep_if",
  "save_if",
  "step_or_rollback",
  "warn_without_value",
]

# Each further divergence from the same checkpoint divides the rate saved
# with it by this factor (MARTHE's paper "decimates" its hyper-step on
# divergence; a diverging rate gets the same treatment).
BACKOFF = 10.0
# A training loss above this many times its reference level is a divergence.
DIVERGENCE_FACTOR = 10.0
# The same test's factor until the net's first save: until then the run has
# not shown that its initial rate trains, and a rollback costs only the calls
# since the initial point. A rate too high for its direction (Adam at 0.1 on
# an MLP) sends the loss to 6-10 times the untrained model's in one step and
# leaves dead units behind, without ever reaching ten times it.
EARLY_DIVERGENCE_FACTOR = 3.0
# Healthy update calls between two saves, at the least.
SAVE_EVERY = 20
# Calls after a rollback within which a run that has not saved yet must
# bring its running loss level under the first loss.
STALL_CALLS = 2 * SAVE_EVERY
# Without a `value`, a save needs |g_t|^2 <= GRADIENT_GROWTH * (its running
# average over ~SAVE_EVERY calls): minibatch noise stays well within it, a
# run blowing up (|g| growing x3 or more per call) does not.
GRADIENT_GROWTH = 10.0
# A training loss above this many times its running level (an average over
# ~SAVE_EVERY calls) is a divergence. A blow-up from a converged point jumps
# by far more; minibatch noise stayed far below it on every task measured
# (digits, MNIST-1D, a teacher-student MSE regression whose loss goes to ~0:
# runs bit-identical with and without the test).
LEVEL_FACTOR = 1000.0
# A run is diverging when more than half of its recent losses are above this
# many times the running level it had at its last save (a sustained rise).
# Three, as before the first save (EARLY_DIVERGENCE_FACTOR): a loss level
# that has tripled since the last known-good point and stays there is a run
# going wrong, not minibatch noise, which moves the median of ~20 losses by
# far less. At ten, a run over Adam near a minimum whose minibatch losses
# went from a level of ~0.01 to 0.05-0.3 at about half the calls trained on
# (the digits MLP, RTHO from 1e-2, seed 0: a test loss of 0.119; 0.067 with
# the rollbacks at three).
RISE_FACTOR = 3.0
# A training loss above this fraction of the first loss, at a gradient that
# is exactly zero everywhere, or on more than half of the leaves that had
# one, is a dead model: a too-high rate saturated its outputs or killed its
# units (a ReLU autoencoder with a sigmoid output, over Adam at rate 1: the
# gradient is exactly 0 from its 12th step on, at the untrained model's
# loss; a small CNN over Adam at 0.1: only the output bias has a gradient
# from its 7th step on). An exact minimum has a zero gradient too, but at a
# loss near 0 (a minibatch gradient of a noisy task is not exactly 0).
DEAD_LOSS_FRACTION = 0.5
# Methods with a net keep their rate within [eta_0 / RATE_BAND,
# eta_0 * RATE_BAND]: no runaway, no collapse for good.
RATE_BAND = 1e4


def warn_without_value(method: str) -> None:
  """Warns (when an update is traced) that the net gets no training loss.

  Without ``value`` the net rolls back on non-finite numbers only. A rate
  that wrecks the model while every number stays finite goes unseen: over
  momentum from rate 1 a deep tanh MLP's units saturate, and HD ended at
  chance level (276 times the best hand-tuned loss) where with ``value`` it
  ended at 1.6 times it (``python -m benchmarks.fresh_tasks
  --without-value``). The warning fires when the update is traced, so once
  per compilation under ``jax.jit``.
  """
  warnings.warn(
    f"{method}: update() got no value=loss, so its safety net (safety_net=True, "
    "the default) sees non-finite numbers only and misses a rate that wrecks the "
    "model without a NaN (saturated or dead units). Pass the training loss of the "
    "batch as value=loss (with Flax: optax_lr.apply_gradients(state, grads, "
    "value=loss) for linen, optax_lr.nnx_update(optimizer, model, grads, "
    "value=loss) for NNX), or build the method with safety_net=False.",
    UserWarning,
    stacklevel=3,
  )


class Checkpoint(NamedTuple):
  """A saved point of training. ``A`` is the accumulation dtype of the params."""

  params: Any  # params-like, in the params' dtypes: the saved params.
  direction_state: Any  # the direction's state saved with `params`.
  cost: jax.Array  # [] A: the loss at `params`, +inf when unknown.
  # [] A: the learning rate in use when saved (a pytree of [] A for
  # per-leaf rates).
  rate: Any


def _rate_dtype(rate: Any):
  # A per-leaf rate of empty params has no leaf: costs are then float32.
  leaves = jax.tree_util.tree_leaves(rate)
  return leaves[0].dtype if leaves else jnp.dtype(jnp.float32)


def fresh_copy(tree: Any) -> Any:
  # `init` must return buffers aliased with nothing, so a step can donate them.
  return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tree)


def checkpoint_init(params: Any, direction_state: Any, rate: Any) -> Checkpoint:
  """A checkpoint of the initial params and direction state, cost unknown."""
  return Checkpoint(
    params=fresh_copy(params),
    direction_state=fresh_copy(direction_state),
    cost=jnp.full([], jnp.inf, _rate_dtype(rate)),
    rate=fresh_copy(rate),
  )


def save_if(
  save: jax.Array,
  checkpoint: Checkpoint,
  params: Any,
  direction_state: Any,
  rate: jax.Array,
  cost: jax.Array,
  grads: Any,
) -> tuple[Checkpoint, Any]:
  """Saves ``params`` and ``direction_state`` when ``save``; returns ``grads`` tied to it.

  The identity branch passes the checkpoint through untouched (no copy). Each
  gradient leaf is tied to an int32 token of the save through an
  optimization barrier, meant to order the save before the step overwrites
  the (donated) params and direction state in place, leaf by leaf. The
  compiled CPU programs read on 2026-12-03 hold no barrier any more: the
  order that lets the step write in place comes from the data, the rollback
  select reading the saved params and :func:`direction_or_restore`'s
  ``lax.cond`` around the direction update.
  """
  checkpoint, _, grads = save_and_keep_if(
    save, jnp.zeros([], jnp.bool_), checkpoint, None, params, direction_state, rate, cost, grads
  )
  return checkpoint, grads


def save_and_keep_if(
  save: jax.Array,
  keep: jax.Array,
  checkpoint: Checkpoint,
  kept: Any,
  params: Any,
  direction_state: Any,
  rate: jax.Array,
  cost: jax.Array,
  grads: Any,
) -> tuple[Checkpoint, Any, Any]:
  """:func:`save_if` that also copies ``params`` into ``kept`` when ``keep``.

  Returns ``(checkpoint, kept, grads)``; ``kept=None`` is :func:`save_if`.
  AALR keeps its best model this way. Both copies are one ``lax.cond``: the
  step that follows overwrites the (donated) params in place and reads the
  checkpoint (the rollback select), so the cond is ordered before it. A
  second cond, whose output the step does not read, made XLA copy the
  params on every call to keep them for it (AALR's step on the speed
  benchmark's MLP: 1.15-1.16x SGD's, against 1.01-1.03x).
  """

  def copy():
    if kept is None:
      return fresh_copy(params), fresh_copy(direction_state), None, jnp.int32(1)
    # One of the two may not be asked for: a select keeps its old value (a
    # copy, on the rare calls that save or keep anything).
    pick = lambda flag: lambda new, old: jnp.where(flag, new, old)
    fresh = fresh_copy(params)
    return (
      jax.tree_util.tree_map(pick(save), fresh, checkpoint.params),
      jax.tree_util.tree_map(pick(save), fresh_copy(direction_state), checkpoint.direction_state),
      jax.tree_util.tree_map(pick(keep), fresh, kept),
      jnp.int32(1),
    )

  saved_params, saved_direction, kept, token = jax.lax.cond(
    save | keep,
    copy,
    lambda: (checkpoint.params, checkpoint.direction_state, kept, jnp.int32(0)),
  )
  checkpoint = Checkpoint(
    params=saved_params,
    direction_state=saved_direction,
    cost=jnp.where(save, cost.astype(checkpoint.cost.dtype), checkpoint.cost),
    rate=jax.tree_util.tree_map(
      lambda new, old: jnp.where(save, new.astype(old.dtype), old), rate, checkpoint.rate
    ),
  )
  grads = jax.tree_util.tree_map(lambda g: jax.lax.optimization_barrier((g, token))[0], grads)
  return checkpoint, kept, grads


def step_or_rollback(
  rollback: jax.Array, directions: Any, scales: Any, checkpoint_params: Any, params: Any, like: Any
) -> Any:
  """Per leaf: ``scale * u`` normally, ``checkpoint - params`` on a rollback.

  ``scales`` is one scalar (``-η``) or a tree of scalars like ``directions``
  (per-leaf rates). The product is taken in the scale's dtype and rounded
  once to the dtype of the matching leaf of ``like`` (the gradients). The
  choice is an elementwise select, which fuses with the product (and with the
  caller's ``params + updates``): it reads the checkpoint on every call, which
  measured cheaper on CPU than a ``lax.cond`` per leaf (HD's step: 1.02x
  against 1.06x the step without a net).
  """
  if not isinstance(scales, jax.Array) or jnp.ndim(scales) != 0:
    scales = jax.tree_util.tree_map(lambda s, _: s, scales, directions)
  else:
    scales = jax.tree_util.tree_map(lambda _: scales, directions)

  def leaf(u, scale, saved, p, g):
    step = (scale * u.astype(scale.dtype)).astype(jnp.result_type(g))
    return jnp.where(rollback, (saved - p).astype(step.dtype), step)

  return jax.tree_util.tree_map(leaf, directions, scales, checkpoint_params, params, like)


def direction_or_restore(
  rollback: jax.Array,
  update: Callable[[], tuple[Any, Any]],
  saved: Any,
  zeroed: Any = None,
) -> tuple[Any, Any]:
  """``update()`` (the direction's ``(u, new_state)``), or ``saved`` on a rollback.

  One ``lax.cond`` around the direction update itself: a call that does not
  roll back runs the update in the cond's stepping branch, which writes the
  new direction state in place over the donated old one, as the step without
  a net does. A ``lax.cond`` on the *updated* state made
  XLA compute a momentum or Adam state in a temporary buffer and copy it back
  on every call (one params-sized copy per moment); over Adam on the speed
  MLP its net cost 1.11-1.15x the step without a net, this 0.94-1.07x.

  A leaf of ``u`` that *is* a leaf of the new state (``optax.trace``: the
  momentum buffer is the step) leaves the cond once, as that state leaf: a
  cond returning one value twice must copy it. A rollback call's ``u`` is
  zeros, or for such a leaf the restored state; no method steps along it
  (the call's step is ``checkpoint - params``), and the methods reset
  whatever else reads ``u`` on it.

  ``zeroed``: a tree of buffers that a rollback resets to zeros (RTHO's and
  MARTHE's tangents), or ``None``. With it, ``update()`` returns ``(u,
  (new_state, new_zeroed))`` and a rollback ``(zeros, (saved, zeros like
  zeroed))``. The tangent step runs the direction inside a JVP, so this is
  how it gets the same cond: restoring the state with a ``lax.cond`` on the
  *updated* state made XLA copy each moment on every call (MARTHE's net over
  Adam on the speed MLP cost 1.087 [1.064, 1.114] of the net-off step).
  """
  jaxpr, shapes = jax.make_jaxpr(update, return_shape=True)()
  u_shapes, u_def = jax.tree_util.tree_flatten(shapes[0])
  outvars = jaxpr.jaxpr.outvars
  u_vars, state_vars = outvars[: len(u_shapes)], outvars[len(u_shapes) :]
  # u leaf i -> the index of the state leaf it is (the same jaxpr variable).
  alias = {}
  for i, var in enumerate(u_vars):
    for j, other in enumerate(state_vars):
      if var is other:
        alias[i] = j
        break
  own = [i for i in range(len(u_shapes)) if i not in alias]

  def stepped():
    u, new_state = update()
    leaves = jax.tree_util.tree_leaves(u)
    return [leaves[i] for i in own], new_state

  def restored():
    zeros = [jnp.zeros(u_shapes[i].shape, u_shapes[i].dtype) for i in own]
    if zeroed is None:
      return zeros, fresh_copy(saved)
    return zeros, (fresh_copy(saved), jax.tree_util.tree_map(jnp.zeros_like, zeroed))

  own_leaves, new_state = jax.lax.cond(rollback, restored, stepped)
  state_leaves = jax.tree_util.tree_leaves(new_state)
  own_iter = iter(own_leaves)
  u_leaves = [
    state_leaves[alias[i]] if i in alias else next(own_iter) for i in range(len(u_shapes))
  ]
  return jax.tree_util.tree_unflatten(u_def, u_leaves), new_state


# --------------------------------------------------------------------------
# The safety net: when to save, when to roll back.


# The net's scalars, packed into two arrays of the state: one buffer each in
# the compiled step instead of fifteen, so the decisions that rewrite them
# every call run as a few fused kernels rather than about one per scalar.
# Each is read through the property of its name on SafetyNetState.
_LEVELS = ("first_cost", "grad_level", "loss_level", "saved_level", "high_share")
_COUNTERS = ("since_save", "rollbacks", "failures", "live_leaves", "live_layers")
_FLAGS = ("pending", "pending_save", "pending_count", "rolled_back", "saved")
_COUNTS = _COUNTERS + _FLAGS
# The most entries of a state vector that is bookkeeping, as a scalar is: the
# packed `levels` and `counts` above. Every device holds such a vector whole,
# and a kernel that writes one is scalar work, not a pass over an array (the
# sharding tests and `benchmarks.net_cost` read this bound).
BOOKKEEPING_SIZE = 16


class SafetyNetState(NamedTuple):
  """The safety net's part of a method's state. ``A``: accumulation dtype.

  Its scalars are packed into ``levels`` and ``counts`` (one buffer each for
  the compiled step); read each through the property of its name, and
  change them with :meth:`replace`.
  """

  checkpoint: Checkpoint  # the last known-good point.
  # Like the rate ([] A, or a pytree of them): the initial rate, whose band
  # [rate / RATE_BAND, rate * RATE_BAND] the method's rate stays in. A state
  # field, not a constant of the compiled step: runs from different initial
  # rates share one compilation.
  initial_rate: Any
  # [5] A: first_cost, grad_level, loss_level, saved_level, high_share (the
  # properties of those names).
  levels: jax.Array
  # [10] int32: since_save, rollbacks, failures, live_leaves, live_layers,
  # then the flags
  # pending, pending_save, pending_count, rolled_back, saved as 0 or 1 (the
  # properties of those names).
  counts: jax.Array

  @property
  def first_cost(self) -> jax.Array:
    """[] A: the first finite loss seen, +inf before."""
    return self.levels[_LEVELS.index("first_cost")]

  @property
  def since_save(self) -> jax.Array:
    """Update calls since the last save or rollback, a [] int32 (saturating at
    STALL_CALLS + 1)."""
    return self.counts[_COUNTS.index("since_save")]

  @property
  def pending(self) -> jax.Array:
    """[] bool: a divergence found after the last update was built."""
    return self.counts[_COUNTS.index("pending")] != 0

  @property
  def pending_save(self) -> jax.Array:
    """[] bool: a save decided at an epoch end (epoch-level methods), carried
    out by the next update call, which sees the params."""
    return self.counts[_COUNTS.index("pending_save")] != 0

  @property
  def pending_count(self) -> jax.Array:
    """[] bool: an epoch end asked the next update call to count its
    gradient's live leaves (the dead-model test of an epoch-level method,
    whose monitored cost stops improving once the model is dead)."""
    return self.counts[_COUNTS.index("pending_count")] != 0

  @property
  def rolled_back(self) -> jax.Array:
    """[] bool: the call that produced this state rolled back."""
    return self.counts[_COUNTS.index("rolled_back")] != 0

  @property
  def rollbacks(self) -> jax.Array:
    """Rollbacks so far, a [] int32 (saturating)."""
    return self.counts[_COUNTS.index("rollbacks")]

  @property
  def failures(self) -> jax.Array:
    """Divergences since the last save, a [] int32, each after at least one
    step from the checkpoint (a bad input that persists over the rollback
    call does not count twice); sets the rate after a rollback."""
    return self.counts[_COUNTS.index("failures")]

  @property
  def grad_level(self) -> jax.Array:
    """[] A: running average of ``|g_t|^2`` over healthy calls (0 before the
    first): what a save without a ``value`` compares the call's ``|g_t|^2``
    with."""
    return self.levels[_LEVELS.index("grad_level")]

  @property
  def loss_level(self) -> jax.Array:
    """[] A: running average of the finite positive losses ``value`` over
    calls that did not roll back (0 before the first): a loss above
    LEVEL_FACTOR times it is a divergence."""
    return self.levels[_LEVELS.index("loss_level")]

  @property
  def saved(self) -> jax.Array:
    """[] bool: a save has happened (the checkpoint is no longer the initial
    point); before it, the loss test uses EARLY_DIVERGENCE_FACTOR."""
    return self.counts[_COUNTS.index("saved")] != 0

  @property
  def saved_level(self) -> jax.Array:
    """[] A: ``loss_level`` at the last save (0 before one with a level): the
    level the run had at its known-good point, and the one a rollback
    restores."""
    return self.levels[_LEVELS.index("saved_level")]

  @property
  def high_share(self) -> jax.Array:
    """[] A: the share of recent calls (an exponential average over about
    SAVE_EVERY calls, restarted at 0 by a save or a rollback) whose loss
    was above RISE_FACTOR times ``saved_level``; above one half is a
    divergence."""
    return self.levels[_LEVELS.index("high_share")]

  @property
  def live_leaves(self) -> jax.Array:
    """The most gradient leaves not all zeros at one call so far, a [] int32
    (0 for a method that does not count them): a call with fewer than half
    as many is a dying model (see net_decide's ``grad_live``)."""
    return self.counts[_COUNTS.index("live_leaves")]

  @property
  def live_layers(self) -> jax.Array:
    """The most vector leaves (layers' biases) with at least a third of their
    entries live at one call so far, a [] int32 (0 for a method that does
    not count them): a call with fewer, before the first save, is a dying
    model (see net_decide's ``grad_live``)."""
    return self.counts[_COUNTS.index("live_layers")]

  @property
  def live_counts(self) -> jax.Array:
    """``[live_leaves, live_layers]``, [2] int32: the most seen, as a
    ``grad_live`` count reads them."""
    i = _COUNTS.index("live_leaves")
    return self.counts[i : i + 2]

  def replace(self, **values: Any) -> SafetyNetState:
    """A copy with the named fields or packed scalars changed.

    Raises:
      TypeError: a name that is neither.
    """
    fields = {name: values.pop(name) for name in list(values) if name in self._fields}
    net = self._replace(**fields)
    levels, counts = net.levels, net.counts
    for name, value in values.items():
      if name in _LEVELS:
        levels = levels.at[_LEVELS.index(name)].set(jnp.asarray(value).astype(levels.dtype))
      elif name in _COUNTS:
        counts = counts.at[_COUNTS.index(name)].set(jnp.asarray(value).astype(jnp.int32))
      else:
        raise TypeError(f"SafetyNetState has no field or scalar {name!r}")
    return net._replace(levels=levels, counts=counts)


def _packed(checkpoint: Checkpoint, initial_rate: Any, **values: Any) -> SafetyNetState:
  """A net state from every one of its scalars, by name."""
  dtype = checkpoint.cost.dtype
  return SafetyNetState(
    checkpoint=checkpoint,
    initial_rate=initial_rate,
    levels=jnp.stack([jnp.asarray(values[name]).astype(dtype) for name in _LEVELS]),
    counts=jnp.stack([jnp.asarray(values[name]).astype(jnp.int32) for name in _COUNTS]),
  )


def net_init(params: Any, direction_state: Any, rate: Any) -> SafetyNetState:
  """A safety net whose first checkpoint is the initial point."""
  dtype = _rate_dtype(rate)
  levels = dict.fromkeys(_LEVELS, jnp.zeros([], dtype))
  return _packed(
    checkpoint_init(params, direction_state, rate),
    fresh_copy(rate),
    **dict(levels, first_cost=jnp.full([], jnp.inf, dtype)),
    **dict.fromkeys(_COUNTS, jnp.zeros([], jnp.int32)),
  )


def _cost(value: Any, dtype) -> Optional[jax.Array]:
  if value is None:
    return None
  value = jnp.asarray(value)
  if value.shape != ():
    raise ValueError(f"value: expected a scalar loss, got shape {value.shape}.")
  return value.astype(dtype)


def net_decide(
  net: SafetyNetState,
  value: Any,
  healthy: jax.Array,
  epoch_saves: bool = False,
  grad_sq: Optional[jax.Array] = None,
  grad_live: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(save, rollback, cost)`` for this update call.

  Args:
    net: the safety net's state.
    value: the training loss at the params this call receives, or ``None``.
    healthy: scalar bool, the method's own verdict on this call's numbers.
    epoch_saves: save only where an epoch end asked for it
      (``net.pending_save``: an epoch-level method saves at improvements of
      its monitored cost) instead of every ``SAVE_EVERY`` healthy calls.
    grad_sq: the call's squared gradient norm, read when ``value`` is
      ``None``: a save then needs it within ``GRADIENT_GROWTH`` times
      ``net.grad_level``.
    grad_live: [2] int32, how many leaves of the call's gradient are not
      all zeros, and how many of its vector leaves (layers' biases) have at
      least a third of their entries not 0 (``_tree.tree_max_abs_and_live``'s count,
      for a method that gets it at no cost, or from
      :func:`net_decide_counting_live`); an int32 scalar is the leaves'
      count alone. With a ``value``, a call whose gradient is zero
      everywhere, or on more than half of the most leaves that were ever
      not (``net.live_leaves``), or, before the first save, that has fewer
      such vectors than the most seen at one call (``net.live_layers``),
      saves nothing, and is a divergence where its loss has not come down
      to :data:`DEAD_LOSS_FRACTION` of the first loss (a dead model).

  Returns:
    Scalar bools ``save`` and ``rollback`` (never both) and the cost to store
    with a save (+inf when no loss is given).
  """
  dtype = net.first_cost.dtype
  cost = _cost(value, dtype)
  diverged = net.pending | jnp.logical_not(healthy)
  good = jnp.asarray(True)
  if cost is None:
    cost = jnp.full([], jnp.inf, dtype)
    if grad_sq is not None:
      grad_sq = grad_sq.astype(dtype)
      level = net.grad_level
      # A level of 0: no average yet (or only zero gradients): no bar.
      good = jnp.isfinite(grad_sq) & ((grad_sq <= GRADIENT_GROWTH * level) | (level == 0))
  else:
    # The larger of the first loss and the checkpoint's, among the finite ones.
    saved_cost = net.checkpoint.cost
    ref = jnp.where(
      jnp.isfinite(saved_cost), jnp.maximum(net.first_cost, saved_cost), net.first_cost
    )
    ref = jnp.where(jnp.isfinite(ref), ref, cost)
    factor = jnp.where(net.saved, DIVERGENCE_FACTOR, EARLY_DIVERGENCE_FACTOR).astype(dtype)
    limit = ref + (factor - 1) * jnp.abs(ref)
    diverged = diverged | jnp.logical_not(jnp.isfinite(cost)) | (cost > limit)
    # A thousandfold jump over the running level; the floor keeps the
    # rounding noise of a loss that converged to ~0 from counting.
    level = net.loss_level
    floor = jnp.finfo(dtype).eps * jnp.abs(ref)
    diverged = diverged | ((level > 0) & (cost > LEVEL_FACTOR * level) & (cost > floor))
    # A sustained rise: most recent losses three times the level of the
    # last save. A blow-up from a converged point that the thousandfold test
    # misses (the running level follows it up by 5% a call) shows here
    # within ~14 calls; a heavy tail (a few hard minibatches among many easy
    # ones) does not, however high its losses. The floor again keeps a
    # level of rounding noise out of it.
    rise = (net.saved_level > 0) & (net.high_share > 0.5) & (level > floor)
    diverged = diverged | rise
    # `<=` against +inf accepts the first finite loss.
    good = jnp.isfinite(cost) & (cost <= net.checkpoint.cost)
    # Nor while the running level is above the first loss: a run a too-high
    # rate damaged trains a model worse than the untrained one, and one
    # lucky minibatch below the checkpoint's cost would save the damage (a
    # rollback would then return to it). A level of 0 is none yet.
    good = good & (
      (level <= net.first_cost) | (level == 0) | jnp.logical_not(jnp.isfinite(net.first_cost))
    )
    if grad_live is not None:
      # A gradient that is exactly zero everywhere, or on most of the leaves
      # that once had one, at a loss far from any minimum: saturated outputs
      # or dead units (a too-high rate's work), which no rate can move
      # again. A dead layer zeroes the gradient of every layer before it and
      # of the kernel after it, so a dead hidden layer leaves only the last
      # biases (over Adam at 0.1 a small CNN's second conv layer died within
      # 7-24 calls: 1 of its 6 leaves had a gradient, the output bias, and
      # the model predicted one class). Leaves that never had a gradient
      # (unused or frozen params) do not count. A layer can also die in
      # part: over Adam at 0.1 a CNN's conv layer lost 75-97% of its units
      # in its first calls, every leaf kept a gradient through the units
      # left, and the run ended at 4-5 times the best loss; its bias's
      # entries show it, before the first save. A vector never seen with a
      # third of its entries live (unused entries) never counts. Against the
      # first loss (the first call's own when there is none yet); a negative
      # one keeps the test in the same sense.
      lifeless, dead = dead_model(net, cost, grad_live)
      diverged = diverged | dead
      good = good & jnp.logical_not(lifeless)
    if not epoch_saves:
      # A run that has rolled back and, STALL_CALLS calls after it, has
      # still saved nothing, while its running loss level is above the
      # first loss: the backed-off rate is still too high (it trains a
      # damaged model that stays worse than the untrained one). Back off
      # again. Only before the first save: the checkpoint is the initial
      # point, and going back costs the calls since. A level of 0 is none
      # (no positive loss seen: a loss that may be negative has no level).
      stalled = (
        (net.rollbacks > 0)
        & jnp.logical_not(net.saved)
        & (net.since_save >= STALL_CALLS - 1)
        & (level > 0)
        & (level > net.first_cost)
      )
      diverged = diverged | stalled
  if epoch_saves:
    save = jnp.logical_not(diverged) & net.pending_save
  else:
    save = jnp.logical_not(diverged) & good & (net.since_save >= SAVE_EVERY - 1)
  return save, diverged, cost


def dead_model(
  net: SafetyNetState, cost: jax.Array, grad_live: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """``(lifeless, dead)``: the dead-model test of :func:`net_decide` alone.

  ``lifeless``: ``grad_live``'s leaves count (int32, the leaves of a
  gradient that are not all zeros; its first entry where it is a [2] count)
  is 0, or under half of ``net.live_leaves``, the most seen at one call, or
  before the first save, its layers count (the second entry: vectors with
  at least a third of their entries live) is under ``net.live_layers``;
  ``dead``: lifeless at a finite ``cost`` above
  :data:`DEAD_LOSS_FRACTION` of the first loss (the call's own when there is
  none yet; a negative one keeps the test in the same sense).
  """
  grad_live = grad_live.astype(jnp.int32)
  leaves = grad_live if grad_live.ndim == 0 else grad_live[0]
  lifeless = (leaves == 0) | (2 * leaves < net.live_leaves)
  if grad_live.ndim:
    # Units die during healthy training too (a ReLU unit that fires on no
    # example of a minibatch): the layers' test looks at the run before its
    # first save, whose initial rate has not shown that it trains.
    fewer = grad_live[1] < net.live_layers
    lifeless = lifeless | (fewer & jnp.logical_not(net.saved))
  first = jnp.where(jnp.isfinite(net.first_cost), net.first_cost, cost)
  fraction = jnp.asarray(DEAD_LOSS_FRACTION, cost.dtype)
  dead = lifeless & jnp.isfinite(cost) & (cost > first - (1 - fraction) * jnp.abs(first))
  return lifeless, dead


def net_decide_counting_live(
  net: SafetyNetState,
  value: jax.Array,
  healthy: jax.Array,
  grads: Any,
  epoch_saves: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """:func:`net_decide` with a ``value``, counting ``grads``' live leaves only where it matters.

  For a method whose update makes no per-leaf pass over the gradient, where
  a count at every call would be one more read of a params-sized tree (+3%
  of the bytes of a params-bound step). The count keeps a dead model out
  of the checkpoint, so it runs, in a ``lax.cond``, on the calls that would
  save without it (about one in :data:`SAVE_EVERY` or fewer), and on the
  first calls until a gradient with a live leaf has given the reference
  (``net.live_leaves == 0``). A dead run whose loss stays above the
  checkpoint's never tries to save: the method must count elsewhere too
  (``newton_lr`` counts its window sums at window ends, with
  :func:`dead_model`, and rolls back at the next call). An epoch-level
  method (``epoch_saves``, passed on to :func:`net_decide`) counts here at
  the call after every epoch end (``net.pending_count``, set by
  :func:`net_epoch_end`), whether the epoch improved or not: one count an
  epoch.

  Returns:
    ``(save, rollback, cost, grad_live)``: those of :func:`net_decide`, and
    the [2] count (``net.live_counts`` where it did not run: alive).
  """
  save, rollback, cost = net_decide(net, value, healthy, epoch_saves=epoch_saves)
  needed = save | (net.live_leaves == 0) | net.pending_count
  # The per-leaf maxima's count (the unused maximum compiles away).
  grad_live = jax.lax.cond(
    needed, lambda g: tree_max_abs_and_live(g)[1], lambda g: net.live_counts, grads
  )
  lifeless, dead = dead_model(net, cost, grad_live)
  # A save and a rollback are never both: a dead call is lifeless.
  return save & jnp.logical_not(lifeless), rollback | dead, cost, grad_live


def net_update(
  net: SafetyNetState,
  checkpoint: Checkpoint,
  save: jax.Array,
  rollback: jax.Array,
  cost: jax.Array,
  pending: Optional[jax.Array] = None,
  grad_sq: Optional[jax.Array] = None,
  grad_live: Optional[jax.Array] = None,
) -> SafetyNetState:
  """The net's state after a call that saved ``checkpoint`` or rolled back.

  ``pending``: a divergence the method found only after building this call's
  update (e.g. a window sum); the next call rolls back. ``grad_sq``: the
  call's squared gradient norm, averaged into ``grad_level`` (an
  exponential average over about ``SAVE_EVERY`` calls, of inputs capped at
  twice the average) unless it rolled back; ``cost``, the call's loss, is
  averaged into ``loss_level`` the same way. ``grad_live``: the call's
  gradient leaves that are not all zeros, whose most so far is kept in
  ``live_leaves``, and (a [2] count) its vectors with a third of their
  entries live, whose most is kept in ``live_layers``.
  """
  level = net.grad_level
  if grad_sq is not None:
    level = _running_level(level, grad_sq, rollback)
  # `cost` is +inf when no loss was given, which leaves the level at 0.
  loss_level = _running_level(net.loss_level, cost, rollback, positive_only=True)
  first = jnp.where(
    jnp.isfinite(net.first_cost) | jnp.logical_not(jnp.isfinite(cost)),
    net.first_cost,
    cost,
  )
  # The very first call receives the initial params, which are the initial
  # checkpoint: its loss is that checkpoint's cost. A save then needs a loss
  # no worse than the untrained model's, so a run that a too-high rate
  # damages from its first steps (dead units, saturated outputs: worse, yet
  # not ten times worse) cannot save the damage and roll back to it.
  first_call = (
    (net.since_save == 0) & (net.rollbacks == 0) & jnp.logical_not(jnp.isfinite(net.first_cost))
  )
  initial_cost = first_call & jnp.isfinite(cost) & jnp.logical_not(save | rollback)
  checkpoint = checkpoint._replace(
    cost=jnp.where(initial_cost, cost.astype(checkpoint.cost.dtype), checkpoint.cost)
  )
  since = jnp.where(save | rollback, 0, jnp.minimum(net.since_save, STALL_CALLS) + 1)
  new_failure = rollback & jnp.logical_not(net.rolled_back)
  failures = jnp.where(save, 0, net.failures + new_failure.astype(jnp.int32))
  return _packed(
    checkpoint,
    net.initial_rate,
    first_cost=first,
    since_save=since,
    pending=jnp.zeros([], jnp.bool_) if pending is None else pending,
    pending_save=jnp.zeros([], jnp.bool_),
    pending_count=jnp.zeros([], jnp.bool_),
    rolled_back=rollback,
    rollbacks=jnp.where(
      rollback,
      jnp.minimum(net.rollbacks, jnp.iinfo(jnp.int32).max - 1) + 1,
      net.rollbacks,
    ),
    failures=jnp.minimum(failures, _MAX_FAILURES),
    grad_level=level,
    # A rollback returns to the checkpoint's loss level as well: the level a
    # blow-up raised would otherwise hide the next one.
    loss_level=jnp.where(rollback & (net.saved_level > 0), net.saved_level, loss_level),
    saved=net.saved | save,
    saved_level=jnp.where(save, loss_level, net.saved_level),
    high_share=_high_share(net, cost, save | rollback),
    **_most_live(net, grad_live),
  )


def _most_live(net: SafetyNetState, grad_live: Optional[jax.Array]) -> dict:
  """``live_leaves`` and ``live_layers`` after a call that counted ``grad_live``."""
  if grad_live is None:
    return dict(live_leaves=net.live_leaves, live_layers=net.live_layers)
  grad_live = grad_live.astype(jnp.int32)
  if grad_live.ndim == 0:
    return dict(live_leaves=jnp.maximum(net.live_leaves, grad_live), live_layers=net.live_layers)
  most = jnp.maximum(net.live_counts, grad_live)
  return dict(live_leaves=most[0], live_layers=most[1])


def _high_share(net: SafetyNetState, cost: jax.Array, restart: jax.Array) -> jax.Array:
  """``high_share`` after a call of loss ``cost``: 0 after a save or a rollback."""
  limit = RISE_FACTOR * net.saved_level
  high = (net.saved_level > 0) & jnp.isfinite(cost) & (cost > limit)
  share = net.high_share + (high.astype(net.high_share.dtype) - net.high_share) / SAVE_EVERY
  return jnp.where(restart, jnp.zeros_like(share), share)


def _running_level(
  level: jax.Array, x: jax.Array, rollback: jax.Array, positive_only: bool = False
) -> jax.Array:
  """The running average ``level`` of a positive quantity, after this call's ``x``.

  An exponential average over about ``SAVE_EVERY`` calls, started at the
  first finite ``x`` (the first positive one, with ``positive_only``). Each
  call moves it by at most 5% up (an input is capped at twice the average):
  a blow-up must not raise the bar it is judged by, while a sustained rise
  (or a fall) is followed within ~``SAVE_EVERY`` calls. A rollback call or
  a non-finite ``x`` leaves it unchanged, and so does an ``x <= 0`` with
  ``positive_only`` (a loss that may be negative has no level to be a
  multiple of).
  """
  x = x.astype(level.dtype)
  capped = jnp.minimum(x, 2 * level)
  averaged = jnp.where(level > 0, level + (capped - level) / SAVE_EVERY, x)
  use = jnp.isfinite(x) & jnp.logical_not(rollback)
  if positive_only:
    use = use & (x > 0)
  return jnp.where(use, averaged, level)


# 10^-40 is below every float32 rate: more failures change nothing.
_MAX_FAILURES = 40


def backoff_rate(rate: Any, net: SafetyNetState, checkpoint: Checkpoint) -> Any:
  """The rate after a rollback: ``min(rate, checkpoint.rate / BACKOFF^k)``.

  ``k`` counts the divergences since the checkpoint was saved (before this
  one): the first rollback restores the rate saved with the known-good point
  (as AALR's paper loads θ with its state), every further one from the same
  checkpoint divides it by ``BACKOFF`` once more. Before the first save
  (``net.saved`` false) ``k`` is one more: the checkpoint is then the
  initial point, whose rate has not shown that it trains, and the first
  rollback there divides it. (Over Adam from 0.1 a small CNN's units died
  within 7 calls; the net went back to the initial point, but at the
  initial rate the loss spiked again, under the early threefold test, and
  the run ended damaged.)
  """
  k = jnp.where(net.rolled_back, jnp.maximum(net.failures - 1, 0), net.failures)
  k = k + jnp.where(net.saved, 0, 1).astype(k.dtype)

  def one(now, saved):
    scale = jnp.asarray(BACKOFF, now.dtype) ** (-k.astype(now.dtype))
    return jnp.minimum(now, saved * scale).astype(now.dtype)

  return jax.tree_util.tree_map(one, rate, checkpoint.rate)


def band(initial_rate: Any) -> tuple[Any, Any]:
  """``(low, high)``: ``initial / RATE_BAND`` and ``initial * RATE_BAND`` (+inf for 0)."""
  low = jax.tree_util.tree_map(lambda r: r / RATE_BAND, initial_rate)
  high = jax.tree_util.tree_map(
    lambda r: jnp.where(r > 0, r * RATE_BAND, jnp.inf).astype(r.dtype), initial_rate
  )
  return low, high


def clip_to_band(rate: Any, net: SafetyNetState) -> Any:
  """``rate`` (a scalar or a pytree of them) clipped to the net's band."""
  low, high = band(net.initial_rate)
  return jax.tree_util.tree_map(
    lambda r, lo, hi: jnp.clip(r, lo, hi).astype(r.dtype), rate, low, high
  )


def net_epoch_end(net: SafetyNetState, cost: jax.Array, best: jax.Array) -> SafetyNetState:
  """An epoch end of an epoch-level method: decide a save or a rollback.

  A non-finite epoch cost, or one above ``10·best`` (``best + 9|best|``),
  leaves a rollback pending; a finite cost no worse than ``best`` (the
  method's best monitored cost before this epoch) leaves a save pending. The
  next update call carries either out, and counts its gradient's live leaves
  (``pending_count``, read by :func:`net_decide_counting_live`): a model that
  died during the epoch no longer improves the cost, so no save would look.
  """
  cost = cost.astype(best.dtype)
  limit = best + (DIVERGENCE_FACTOR - 1) * jnp.abs(best)
  diverged = jnp.logical_not(jnp.isfinite(cost)) | (jnp.isfinite(best) & (cost > limit))
  improved = jnp.isfinite(cost) & (cost <= best)
  return net.replace(
    pending=net.pending | diverged,
    pending_save=(net.pending_save | improved) & jnp.logical_not(diverged),
    pending_count=jnp.ones([], jnp.bool_),
  )


def net_best_params(state: Any) -> Optional[tuple[jax.Array, Any]]:
  """The ``best_params`` hook of ``_monitor.register_method`` for a state whose
  ``safety`` field holds a :class:`SafetyNetState` (``None`` without a net):
  the checkpoint while a rollback is pending. The divergence was found after
  the last update was built (a non-finite window sum, a diverged epoch cost),
  so the params that update produced are the diverged ones, and the next
  call would land on the checkpoint."""
  net = state.safety
  return None if net is None else (net.pending, net.checkpoint.params)


def net_rollback(state: Any) -> Optional[tuple[jax.Array, Any]]:
  """The ``rollback`` hook of ``_monitor.register_method`` for a state whose
  ``safety`` field holds a :class:`SafetyNetState` (``None`` without a net)."""
  net = state.safety
  return None if net is None else (net.rolled_back, net.checkpoint.params)
