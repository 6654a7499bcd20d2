"""The safety net (``optax_lr/_checkpoint.py``) and MARTHE's kappa selection.

* unit checks of the shared machinery with hand-computed numbers: when it
  saves, when it rolls back, the rate after a rollback;
* every method with a net (the ``NET_CASES`` list, with the extra args each
  update receives), built from its defaults: survives an initial rate at which
  SGD diverges within a few steps; lands exactly on its checkpoint from NaN
  params; keeps its rate inside the documented band; changes nothing on a
  run that never diverges (bit for bit against ``safety_net=False``); and
  costs exactly one params copy plus one direction-state copy of memory;
* MARTHE's kappa selection: a scripted divergence rolls back and divides
  kappa by 10.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lr
from optax_lr import _checkpoint
from optax_lr import hypergradient
from optax_lr._registry import standard_promotion

# ---------------------------------------------------------------- unit checks


def _net(
  first=math.inf,
  saved=math.inf,
  rate=0.1,
  since=0,
  failures=0,
  rolled_back=False,
  pending=False,
  has_saved=True,
):
  net = _checkpoint.net_init({"w": jnp.zeros(2)}, (), jnp.float32(rate))
  return net.replace(
    saved=jnp.bool_(has_saved),
    first_cost=jnp.float32(first),
    checkpoint=net.checkpoint._replace(cost=jnp.float32(saved)),
    since_save=jnp.int32(since),
    failures=jnp.int32(failures),
    rolled_back=jnp.bool_(rolled_back),
    pending=jnp.bool_(pending),
  )


def test_replace_sets_packed_scalars_by_name_and_refuses_unknown_names():
  net = _net(first=2.0, saved=3.0, since=4)
  changed = net.replace(loss_level=jnp.float32(5.0), rollbacks=jnp.int32(7), saved=jnp.bool_(False))
  # Each name lands in its own slot of the packed vectors, in their dtypes;
  # the other slots and fields are the ones given.
  assert float(changed.loss_level) == 5.0 and int(changed.rollbacks) == 7
  assert int(changed.saved) == 0 and changed.levels.dtype == jnp.float32
  assert changed.counts.dtype == jnp.int32
  assert float(changed.first_cost) == 2.0 and int(changed.since_save) == 4
  assert float(changed.checkpoint.cost) == 3.0
  np.testing.assert_array_equal(
    np.delete(np.asarray(changed.levels), _checkpoint._LEVELS.index("loss_level")),
    np.delete(np.asarray(net.levels), _checkpoint._LEVELS.index("loss_level")),
  )
  with pytest.raises(TypeError, match="'loss_levels'"):
    net.replace(loss_levels=jnp.float32(1.0))
  # The packed vectors are what the sharding tests and benchmarks.net_cost
  # take for bookkeeping: they must stay within that bound.
  assert net.levels.size <= _checkpoint.BOOKKEEPING_SIZE
  assert net.counts.size <= _checkpoint.BOOKKEEPING_SIZE


@pytest.mark.parametrize(
  "first,saved,value,diverged",
  [
    # ref = max(first, saved) = 2: the limit is 10 * 2 = 20.
    (2.0, 1.0, 19.9, False),
    (2.0, 1.0, 20.1, True),
    # ref = the checkpoint's cost when it is the larger.
    (2.0, 3.0, 29.0, False),
    (2.0, 3.0, 31.0, True),
    # No checkpoint cost yet: ref = the first cost.
    (2.0, math.inf, 21.0, True),
    # Nothing seen yet: this loss is the reference, never a divergence.
    (math.inf, math.inf, 1e30, False),
    # A negative reference: ref + 9 |ref| = -1 + 9 = 8.
    (-1.0, math.inf, 7.9, False),
    (-1.0, math.inf, 8.1, True),
    (2.0, 1.0, math.nan, True),
    (2.0, 1.0, math.inf, True),
  ],
)
def test_a_loss_ten_times_its_reference_is_a_divergence(first, saved, value, diverged):
  save, rollback, cost = _checkpoint.net_decide(
    _net(first, saved, since=0), jnp.float32(value), jnp.bool_(True)
  )
  assert bool(rollback) == diverged
  assert not bool(save)  # since_save = 0: too early to save
  np.testing.assert_equal(float(cost), np.float32(value))


@pytest.mark.parametrize(
  "first,value,diverged",
  [
    # Before the first save the limit is 3 * ref: 3 * 2 = 6.
    (2.0, 5.9, False),
    (2.0, 6.1, True),
    # ref + 2 |ref| for a negative ref: -1 + 2 = 1.
    (-1.0, 0.9, False),
    (-1.0, 1.1, True),
    # Nothing seen yet: this loss is the reference.
    (math.inf, 1e30, False),
  ],
)
def test_before_the_first_save_a_loss_three_times_its_reference_is_a_divergence(
  first, value, diverged
):
  net = _net(first, first, has_saved=False)
  _, rollback, _ = _checkpoint.net_decide(net, jnp.float32(value), jnp.bool_(True))
  assert bool(rollback) == diverged
  # After a save the limit is 10 * ref: none of these is a divergence.
  _, rollback, _ = _checkpoint.net_decide(
    net.replace(saved=jnp.bool_(True)), jnp.float32(value), jnp.bool_(True)
  )
  assert not bool(rollback)


def test_the_first_save_and_only_a_save_lifts_the_early_factor():
  net = _net(2.0, 2.0, has_saved=False)
  update = lambda save, rollback: _checkpoint.net_update(
    net, net.checkpoint, jnp.bool_(save), jnp.bool_(rollback), jnp.float32(1.0)
  )
  assert not bool(_checkpoint.net_init({"w": jnp.zeros(2)}, (), jnp.float32(0.1)).saved)
  assert bool(update(True, False).saved)
  assert not bool(update(False, True).saved)
  assert not bool(update(False, False).saved)
  # Once saved, a rollback keeps it saved: the checkpoint is a trained point.
  assert bool(
    _checkpoint.net_update(
      net.replace(saved=jnp.bool_(True)),
      net.checkpoint,
      jnp.bool_(False),
      jnp.bool_(True),
      jnp.float32(1.0),
    ).saved
  )


@pytest.mark.parametrize(
  "level,value,diverged",
  [
    # first = 1 (limit 10): only the running level can see these.
    (1e-6, 0.9e-3, False),  # 900 times the level: noise, however large
    (1e-6, 1.1e-3, True),  # above LEVEL_FACTOR = 1000 times it
    (1e-2, 5.0, False),  # 500 times
    # Below float epsilon times ref (1.19e-7 for ref = 1): the rounding noise
    # of a loss that converged to ~0, never a divergence.
    (1e-12, 1e-7, False),
    (1e-12, 1.3e-7, True),
    # No level yet (no positive loss seen): the tenfold test only.
    (0.0, 5.0, False),
  ],
)
def test_a_loss_a_thousand_times_its_running_level_is_a_divergence(level, value, diverged):
  net = _net(1.0, 1.0).replace(loss_level=jnp.float32(level))
  _, rollback, _ = _checkpoint.net_decide(net, jnp.float32(value), jnp.bool_(True))
  assert bool(rollback) == diverged


def test_loss_level_averages_positive_losses_and_moves_at_most_five_percent_up():
  net = _net()
  step = lambda net, value, rollback=False: _checkpoint.net_update(
    net, net.checkpoint, jnp.bool_(False), jnp.bool_(rollback), jnp.float32(value)
  )
  net = step(net, 4.0)  # the first positive loss starts the level
  assert float(net.loss_level) == 4.0
  # 4 + (min(1e6, 8) - 4) / 20 = 4.2; 4 + (2 - 4) / 20 = 3.9.
  np.testing.assert_allclose(float(step(net, 1e6).loss_level), 4.2, rtol=1e-6)
  np.testing.assert_allclose(float(step(net, 2.0).loss_level), 3.9, rtol=1e-6)
  for unchanged in (step(net, 1e6, rollback=True), step(net, math.nan), step(net, -1.0)):
    assert float(unchanged.loss_level) == 4.0
  # Without a `value` the cost is +inf: no level.
  assert float(step(_net(), math.inf).loss_level) == 0.0


@pytest.mark.parametrize(
  "first,most_live,grad_live,value,diverged,save",
  [
    # A zero gradient above half the first loss (1.0): a dead model.
    (1.0, 0, 0, 0.51, True, False),
    (1.0, 0, 0, 1.2, True, False),
    # At or below half of it, an exact minimum is possible: no divergence,
    # but no save either (a dead model must not become the checkpoint).
    (1.0, 0, 0, 0.5, False, False),
    (1.0, 0, 0, 0.0, False, False),
    # A nonzero gradient saves as usual (SAVE_EVERY calls, loss <= 1).
    (1.0, 0, 1, 0.9, False, True),
    # A negative first loss: half-way to 0 from -2 is... -2 - 0.5 * 2 = -3.
    (-2.0, 0, 0, -2.9, True, False),
    (-2.0, 0, 0, -3.1, False, False),
    # The first call (no first loss yet) is measured against its own loss.
    (math.inf, 0, 0, 0.7, True, False),
    (math.inf, 0, 0, 0.0, False, False),
    # Six leaves once had a gradient; fewer than half of them (2 < 6 / 2)
    # have one now, at a loss above half the first: a dead model.
    (1.0, 6, 2, 0.9, True, False),
    (1.0, 6, 1, 1.4, True, False),
    # Half of them or more: alive, and saves as usual.
    (1.0, 6, 3, 0.9, False, True),
    (1.0, 7, 4, 0.9, False, True),
    (1.0, 7, 3, 0.9, True, False),  # 2 * 3 < 7
    # At or below half the first loss no divergence, and still no save.
    (1.0, 6, 2, 0.5, False, False),
    # Leaves that never had a gradient do not count: 2 of 2 live is all.
    (1.0, 2, 2, 0.9, False, True),
  ],
)
def test_a_gradient_zero_everywhere_or_on_most_leaves_that_had_one_is_a_dead_model(
  first, most_live, grad_live, value, diverged, save
):
  # The hand computation: dead = (no live leaf or 2 * live < most live so
  # far) and value > first - 0.5 |first|.
  net = _net(first, 1.0 if math.isfinite(first) else math.inf, since=_checkpoint.SAVE_EVERY)
  net = net.replace(live_leaves=jnp.int32(most_live))
  got_save, got_rollback, _ = _checkpoint.net_decide(
    net, jnp.float32(value), jnp.bool_(True), grad_live=jnp.int32(grad_live)
  )
  assert bool(got_rollback) == diverged
  assert bool(got_save) == save


@pytest.mark.parametrize(
  "has_saved,most_live,grad_live,value,diverged,save",
  [
    # Before the first save, three layers (vectors) once had at least a
    # third of their units live and two have now (every leaf keeps a
    # gradient): a dead model above half the first loss,
    (False, 3, 2, 0.9, True, False),
    # and no save at or below it.
    (False, 3, 2, 0.5, False, False),
    # As many as the most seen, or more: alive, saves as usual.
    (False, 3, 3, 0.9, False, True),
    (False, 2, 3, 0.9, False, True),
    # No layer ever counted (none, or their units mostly zero from the
    # start): the test never fires.
    (False, 0, 0, 0.9, False, True),
    # After a save the rate has trained: units that die are training's own.
    (True, 3, 2, 0.9, False, True),
  ],
)
def test_fewer_layers_with_a_third_of_their_units_live_is_a_dead_model_before_a_save(
  has_saved, most_live, grad_live, value, diverged, save
):
  # The hand computation: dead = not saved and (layers < most layers so
  # far) and value > first - 0.5 |first|, with the leaves' count (5 of 5)
  # alive.
  net = _net(1.0, 1.0, since=_checkpoint.SAVE_EVERY, has_saved=has_saved)
  net = net.replace(live_leaves=jnp.int32(5), live_layers=jnp.int32(most_live))
  got_save, got_rollback, _ = _checkpoint.net_decide(
    net, jnp.float32(value), jnp.bool_(True), grad_live=jnp.array([5, grad_live], jnp.int32)
  )
  assert bool(got_rollback) == diverged
  assert bool(got_save) == save


def test_live_leaves_keeps_the_most_seen_at_one_call():
  net = _net(1.0, 1.0)
  update = lambda net, live, rollback=False: _checkpoint.net_update(
    net,
    net.checkpoint,
    jnp.bool_(False),
    jnp.bool_(rollback),
    jnp.float32(1.0),
    grad_live=None if live is None else jnp.int32(live),
  )
  assert int(net.live_leaves) == 0
  for live, most in ((4, 4), (6, 6), (1, 6), (None, 6)):
    net = update(net, live)
    assert int(net.live_leaves) == most
  # A rollback call counts too: its gradient is the diverged model's, and
  # the most is what matters.
  assert int(update(net, 9, rollback=True).live_leaves) == 9
  # A [2] count keeps the most of each, apart; a scalar leaves the layers'.
  assert int(net.live_layers) == 0
  for live, most in (([3, 2], [6, 2]), ([7, 1], [7, 2]), (5, [7, 2]), ([2, 4], [7, 4])):
    net = update(net, live)
    assert net.live_counts.tolist() == most


@pytest.mark.parametrize(
  "most_live,since,value,counted,save,rollback",
  [
    # Nothing seen yet: the first calls count (the reference); 2 live is
    # not under half of 0.
    (0, 0, 0.9, True, False, False),
    # Afterwards only a call that would save counts: since_save >=
    # SAVE_EVERY - 1 and a loss no worse than the checkpoint's (1.0).
    (4, 0, 0.9, False, False, False),
    (4, _checkpoint.SAVE_EVERY, 0.9, True, True, False),  # 2 of 4: alive
    # 2 of 6: lifeless. Above half the first loss (1.0) a dead model, at
    # 0.4 no save.
    (6, _checkpoint.SAVE_EVERY, 0.9, True, False, True),
    (6, _checkpoint.SAVE_EVERY, 0.4, True, False, False),
    # Worse than the checkpoint: no save to keep out, no count (a window
    # end's count sees such a run).
    (6, _checkpoint.SAVE_EVERY, 1.2, False, False, False),
  ],
)
def test_live_leaves_are_counted_at_the_calls_that_would_save(
  most_live, since, value, counted, save, rollback
):
  # A gradient with 2 of its 4 leaves live: a tiny entry counts, an Inf
  # counts, a NaN counts as zero (as in _tree.tree_max_abs_and_live).
  grads = {
    "a": jnp.array([0.0, -1e-30]),
    "b": jnp.array([0.0, jnp.inf, 0.0]),
    "c": jnp.array([0.0, jnp.nan]),
    "d": jnp.zeros(4),
  }
  net = _net(1.0, 1.0, since=since).replace(live_leaves=jnp.int32(most_live))
  decide = jax.jit(_checkpoint.net_decide_counting_live)
  got_save, got_rollback, cost, live = decide(net, jnp.float32(value), jnp.bool_(True), grads)
  assert live.dtype == jnp.int32
  # Not counted: the most seen so far, which reads as alive. Counted, "a"
  # and "b" are also layers (a third of their entries or more not 0), "c"
  # is not (its NaN counts as 0).
  assert live.tolist() == ([2, 2] if counted else [most_live, 0])
  assert (bool(got_save), bool(got_rollback)) == (save, rollback)
  assert float(cost) == np.float32(value)
  # Where it counted, the verdict is net_decide's with the count.
  if counted:
    expected = _checkpoint.net_decide(net, jnp.float32(value), jnp.bool_(True), grad_live=live)
    assert (bool(expected[0]), bool(expected[1])) == (save, rollback)


@pytest.mark.parametrize(
  "most_live,pending_save,pending_count,value,counted,save,rollback",
  [
    # The call after an epoch end that did not improve: it counts, and 2 of
    # 6 live leaves at a loss above half the first (1.0) is a dead model.
    (6, False, True, 0.9, True, False, True),
    # After an improving one: the same count keeps the dead model out of
    # the checkpoint and rolls back instead.
    (6, True, True, 0.9, True, False, True),
    # 2 of 4 is alive: the pending save goes ahead.
    (4, True, True, 0.9, True, True, False),
    # At or below half the first loss: lifeless, yet no divergence; no save.
    (6, True, True, 0.4, True, False, False),
    # No epoch end since the last call: no count, whatever the gradient
    # (however many calls since the last save: epoch-level saves only).
    (6, False, False, 0.9, False, False, False),
  ],
)
def test_an_epoch_end_has_the_next_call_count_live_leaves(
  most_live, pending_save, pending_count, value, counted, save, rollback
):
  grads = {"a": jnp.array([0.0, 2.0]), "b": jnp.array([-1.0]), "c": jnp.zeros(3), "d": jnp.zeros(2)}
  net = _net(1.0, 1.0, since=_checkpoint.SAVE_EVERY).replace(
    live_leaves=jnp.int32(most_live),
    pending_save=jnp.bool_(pending_save),
    pending_count=jnp.bool_(pending_count),
  )
  decide = jax.jit(_checkpoint.net_decide_counting_live, static_argnames="epoch_saves")
  got_save, got_rollback, _, live = decide(
    net, jnp.float32(value), jnp.bool_(True), grads, epoch_saves=True
  )
  # Counted: "a" is also a layer (1 of its 2 entries live), "b" is no
  # vector of units (one entry), "c" and "d" are all zeros.
  assert live.tolist() == ([2, 1] if counted else [most_live, 0])
  assert (bool(got_save), bool(got_rollback)) == (save, rollback)


@pytest.mark.parametrize(
  "rollbacks,has_saved,since,level,diverged",
  [
    # After a rollback, before any save, STALL_CALLS calls with a running
    # level above the first loss (1.0): the backed-off rate does not train.
    (1, False, _checkpoint.STALL_CALLS - 1, 1.01, True),
    (1, False, _checkpoint.STALL_CALLS - 2, 1.01, False),  # one call early
    (1, False, _checkpoint.STALL_CALLS - 1, 1.0, False),  # level not above
    (0, False, _checkpoint.STALL_CALLS - 1, 2.0, False),  # never rolled back
    (1, True, _checkpoint.STALL_CALLS - 1, 2.0, False),  # has saved
    # Negative losses have no level (0): a first loss of -2 is no bar.
    (1, False, _checkpoint.STALL_CALLS - 1, 0.0, False),
  ],
)
def test_a_backed_off_run_that_stays_worse_than_the_first_loss_backs_off_again(
  rollbacks, has_saved, since, level, diverged
):
  first = 1.0 if level > 0 else -2.0
  net = _net(first, first, since=since, has_saved=has_saved).replace(
    rollbacks=jnp.int32(rollbacks), loss_level=jnp.float32(level)
  )
  # This call's own loss is no divergence and no save (above the checkpoint's).
  value = jnp.float32(1.2 if level > 0 else -1.9)
  save, rollback, _ = _checkpoint.net_decide(net, value, jnp.bool_(True))
  assert bool(rollback) == diverged and not bool(save)
  # An epoch-level method's net (ASLR's: saves at improving epoch ends) does
  # not use the test.
  _, rollback, _ = _checkpoint.net_decide(net, value, jnp.bool_(True), epoch_saves=True)
  assert not bool(rollback)


@pytest.mark.parametrize(
  "saved_level,level,share,diverged",
  [
    # More than half of the recent losses above RISE_FACTOR times the level
    # of the last save: a sustained rise.
    (1e-3, 1e-3, 0.51, True),
    (1e-3, 1e-3, 0.5, False),
    # No level saved yet (or a loss that may be negative): no test.
    (0.0, 1e-3, 0.9, False),
    # A running level under float epsilon times ref (1.19e-7 for ref = 1):
    # rounding noise, never a divergence.
    (1e-12, 1e-7, 0.9, False),
    (1e-12, 1.3e-7, 0.9, True),
  ],
)
def test_a_sustained_rise_over_the_saved_level_is_a_divergence(saved_level, level, share, diverged):
  net = _net(1.0, 1.0).replace(
    loss_level=jnp.float32(level),
    saved_level=jnp.float32(saved_level),
    high_share=jnp.float32(share),
  )
  # This call's loss (twice the level) is no divergence by any other test.
  _, rollback, _ = _checkpoint.net_decide(net, jnp.float32(2 * level), jnp.bool_(True))
  assert bool(rollback) == diverged


def test_high_share_averages_losses_above_three_times_the_saved_level():
  net = _net().replace(loss_level=jnp.float32(1e-3), saved_level=jnp.float32(1e-3))
  step = lambda net, value, save=False, rollback=False: _checkpoint.net_update(
    net, net.checkpoint, jnp.bool_(save), jnp.bool_(rollback), jnp.float32(value)
  )
  # The limit is RISE_FACTOR * 1e-3 = 3e-3.
  assert _checkpoint.RISE_FACTOR == 3.0
  assert float(step(net, 3.1e-3).high_share) == pytest.approx(1 / 20)
  assert float(step(net, 2.9e-3).high_share) == 0.0
  assert float(step(net, math.nan).high_share) == 0.0
  half = net.replace(high_share=jnp.float32(0.5))
  # 0.5 + (1 - 0.5) / 20 = 0.525; 0.5 + (0 - 0.5) / 20 = 0.475.
  assert float(step(half, 1.0).high_share) == pytest.approx(0.525)
  assert float(step(half, 1e-3).high_share) == pytest.approx(0.475)
  # A save or a rollback starts the share again.
  assert float(step(half, 1.0, save=True).high_share) == 0.0
  assert float(step(half, 1.0, rollback=True).high_share) == 0.0
  # Without a saved level nothing counts as high.
  assert float(step(_net(), 1e9).high_share) == 0.0


def test_a_save_keeps_the_loss_level_and_a_rollback_restores_it():
  net = _net().replace(loss_level=jnp.float32(4.0), saved_level=jnp.float32(1.0))
  step = lambda net, save, rollback: _checkpoint.net_update(
    net, net.checkpoint, jnp.bool_(save), jnp.bool_(rollback), jnp.float32(2.0)
  )
  # A save records the level after this call's loss: 4 + (2 - 4) / 20 = 3.9.
  saved = step(net, True, False)
  np.testing.assert_allclose(float(saved.saved_level), 3.9, rtol=1e-6)
  np.testing.assert_allclose(float(saved.loss_level), 3.9, rtol=1e-6)
  # A rollback puts the level back to the saved one (the blow-up's is gone).
  rolled = step(net, False, True)
  assert float(rolled.loss_level) == 1.0 and float(rolled.saved_level) == 1.0
  # A plain call changes neither the saved level nor, beyond averaging, the level.
  plain = step(net, False, False)
  assert float(plain.saved_level) == 1.0
  np.testing.assert_allclose(float(plain.loss_level), 3.9, rtol=1e-6)
  # Before any save with a level, a rollback leaves the level alone.
  assert float(step(_net().replace(loss_level=jnp.float32(4.0)), False, True).loss_level) == 4.0


def _scripted(losses, net):
  """The calls at which a net fed ``losses`` (healthy otherwise) rolls back."""
  rollbacks = []
  for t, value in enumerate(losses):
    value = jnp.float32(value)
    save, rollback, cost = _checkpoint.net_decide(net, value, jnp.bool_(True))
    if bool(rollback):
      rollbacks.append(t)
    net = _checkpoint.net_update(net, net.checkpoint, save, rollback, cost)
  return rollbacks, net


def test_a_slow_blow_up_from_a_converged_point_rolls_back_within_fifteen_calls():
  # Converged at 1e-3 (first loss 1, the run has saved at that level); then a
  # blow-up whose losses are 300 times that: under the tenfold test (10) and
  # the thousandfold one (the level follows it up 5% a call).
  converged = _net(1.0, 1e-3).replace(loss_level=jnp.float32(1e-3), saved_level=jnp.float32(1e-3))
  rollbacks, _ = _scripted([0.3] * 30, converged)
  # The share after k high calls is 1 - 0.95^k: 0.487 after 13, 0.513 after
  # 14, which the 15th call's decision reads.
  assert rollbacks[0] == 14


def test_a_loss_level_that_triples_and_stays_rolls_back_and_a_doubled_one_does_not():
  # Trained from a first loss of 2.3 to a level of 0.1, saved there; then
  # the rate climbs and the minibatch losses go to 0.35: under the tenfold
  # test (23) and the thousandfold one, and nothing saves (every loss is
  # above the checkpoint's). The share after k calls above 0.3 is
  # 1 - 0.95^k, past one half after 14 calls.
  trained = _net(2.3, 0.1).replace(loss_level=jnp.float32(0.1), saved_level=jnp.float32(0.1))
  rollbacks, _ = _scripted([0.35] * 30, trained)
  assert rollbacks[0] == 14
  # Twice the saved level for 600 calls is noise, or a slower phase: no test
  # fires, however long it lasts.
  rollbacks, net = _scripted([0.2] * 600, trained)
  assert rollbacks == [] and float(net.high_share) == 0.0
  # Losses that alternate between 0.05 and 0.4 (above the limit at every
  # other call) never make more than half.
  rollbacks, _ = _scripted([0.05, 0.4] * 300, trained)
  assert rollbacks == []


def test_a_heavy_tail_of_hard_minibatches_is_no_sustained_rise():
  # Most minibatches at 1e-4, one in three at 0.05 (500 times the level of
  # the last save, and under the thousandfold test as the running level
  # settles at 2e-4): at most a third of the losses are high, and the saves
  # (at the easy ones) restart the share.
  converged = _net(1.0, 1e-4).replace(loss_level=jnp.float32(1e-4), saved_level=jnp.float32(1e-4))
  losses = [0.05 if t % 3 == 2 else 1e-4 for t in range(600)]
  rollbacks, net = _scripted(losses, converged)
  assert rollbacks == []
  # The running level the saves keep: 2/3 * 1e-4 + 1/3 * 2L = L at 2e-4.
  assert 1e-4 < float(net.saved_level) <= 2e-4


def test_since_save_counts_up_to_the_stall_test():
  net = _net(since=0)
  for expected in range(1, _checkpoint.STALL_CALLS + 3):
    net = _checkpoint.net_update(
      net, net.checkpoint, jnp.bool_(False), jnp.bool_(False), jnp.float32(1.0)
    )
    assert int(net.since_save) == min(expected, _checkpoint.STALL_CALLS + 1)


def test_unhealthy_numbers_and_pending_rollbacks_are_divergences():
  assert bool(_checkpoint.net_decide(_net(), None, jnp.bool_(False))[1])
  assert bool(_checkpoint.net_decide(_net(pending=True), None, jnp.bool_(True))[1])
  assert not bool(_checkpoint.net_decide(_net(), None, jnp.bool_(True))[1])


@pytest.mark.parametrize(
  "since,saved,value,save",
  [
    (_checkpoint.SAVE_EVERY - 1, 1.0, 0.9, True),
    (_checkpoint.SAVE_EVERY - 1, 1.0, 1.0, True),
    (_checkpoint.SAVE_EVERY - 1, 1.0, 1.1, False),  # worse than the checkpoint
    (_checkpoint.SAVE_EVERY - 2, 1.0, 0.5, False),  # too early
    (_checkpoint.SAVE_EVERY - 1, math.inf, 5.0, True),  # the first finite loss
    (_checkpoint.SAVE_EVERY - 1, 1.0, None, True),  # no loss: healthy is enough
  ],
)
def test_saves_come_every_save_every_healthy_calls_at_no_worse_loss(since, saved, value, save):
  value = None if value is None else jnp.float32(value)
  got = _checkpoint.net_decide(_net(2.0, saved, since=since), value, jnp.bool_(True))
  assert bool(got[0]) == save and not bool(got[1])


@pytest.mark.parametrize(
  "first,level,save",
  [
    (2.0, 0.0, True),  # no running level yet
    (2.0, 1.5, True),
    (2.0, 2.0, True),  # at the first loss
    (2.0, 2.8, False),  # a damaged run: its level is above the first loss
    (math.inf, 2.8, True),  # no first loss yet
  ],
)
def test_a_save_needs_a_running_level_no_higher_than_the_first_loss(first, level, save):
  # A due save at a loss (0.5) below the checkpoint's (1.0): only the level
  # decides.
  net = _net(first, 1.0, since=_checkpoint.SAVE_EVERY - 1).replace(loss_level=jnp.float32(level))
  got = _checkpoint.net_decide(net, jnp.float32(0.5), jnp.bool_(True))
  assert bool(got[0]) == save and not bool(got[1])


@pytest.mark.parametrize(
  "rate,failures,rolled_back,expected",
  [
    # The first divergence since the save restores the checkpoint's rate 0.1.
    (0.5, 0, False, 0.1),
    # The second one from the same checkpoint divides it by 10.
    (0.5, 1, False, 0.01),
    (0.5, 2, False, 0.001),
    # A call right after a rollback (the bad input persists) does not count
    # again: k = failures - 1.
    (0.5, 1, True, 0.1),
    (0.5, 2, True, 0.01),
    # A rate already below wins.
    (0.003, 1, False, 0.003),
  ],
)
def test_backoff_restores_the_saved_rate_then_divides_it(rate, failures, rolled_back, expected):
  net = _net(rate=0.1, failures=failures, rolled_back=rolled_back)
  got = _checkpoint.backoff_rate(jnp.float32(rate), net, net.checkpoint)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  # Before any save the checkpoint is the initial point, whose rate has not
  # shown that it trains: every case divides once more.
  net = _net(rate=0.1, failures=failures, rolled_back=rolled_back, has_saved=False)
  got = _checkpoint.backoff_rate(jnp.float32(rate), net, net.checkpoint)
  k = max(failures - 1, 0) if rolled_back else failures
  np.testing.assert_allclose(float(got), min(rate, 0.1 / 10.0 ** (k + 1)), rtol=1e-6)


def test_failures_count_divergences_after_a_step_and_reset_on_save():
  net = _net()
  ckpt = net.checkpoint
  cost = jnp.float32(1.0)
  t, f = jnp.bool_(True), jnp.bool_(False)
  net = _checkpoint.net_update(net, ckpt, f, t, cost)  # a rollback: 1
  net = _checkpoint.net_update(net, ckpt, f, t, cost)  # right after one: 1
  assert int(net.failures) == 1 and int(net.rollbacks) == 2
  net = _checkpoint.net_update(net, ckpt, f, f, cost)  # a step
  net = _checkpoint.net_update(net, ckpt, f, t, cost)  # diverged again: 2
  assert int(net.failures) == 2
  net = _checkpoint.net_update(net, ckpt, t, f, cost)  # a save
  assert int(net.failures) == 0 and int(net.since_save) == 0


def test_epoch_ends_leave_a_save_or_a_rollback_pending():
  net = _net()
  best = jnp.float32(2.0)
  assert bool(_checkpoint.net_epoch_end(net, jnp.float32(1.5), best).pending_save)
  assert not bool(_checkpoint.net_epoch_end(net, jnp.float32(2.5), best).pending_save)
  for bad in (math.nan, math.inf, 20.5):  # 20.5 > 10 * 2
    out = _checkpoint.net_epoch_end(net, jnp.float32(bad), best)
    assert bool(out.pending) and not bool(out.pending_save)
  assert not bool(_checkpoint.net_epoch_end(net, jnp.float32(19.0), best).pending)
  # Every epoch end, improving or not, has the next call count the
  # gradient's live leaves; that call's update clears the request.
  assert not bool(net.pending_count)
  for cost in (1.5, 2.5, 19.0, math.nan):
    out = _checkpoint.net_epoch_end(net, jnp.float32(cost), best)
    assert bool(out.pending_count)
    after = _checkpoint.net_update(out, out.checkpoint, jnp.bool_(False), jnp.bool_(False), best)
    assert not bool(after.pending_count)


@pytest.mark.parametrize("rollback", [False, True])
def test_direction_or_restore_steps_or_restores_the_saved_state(rollback):
  # Adam's state after one step from g = [2, -4] with b1 = 0.9, b2 = 0.999:
  # mu = 0.1 g, nu = 0.001 g^2, count 1, and u = mu_hat / (sqrt(nu_hat) + eps)
  # = g / |g| = [1, -1], to float32's rounding of 1 - b2 (7e-6).
  adam = optax.scale_by_adam()
  grads = jnp.array([2.0, -4.0])
  state = adam.init(grads)
  saved = optax.ScaleByAdamState(
    count=jnp.int32(7), mu=jnp.array([0.5, 0.25]), nu=jnp.array([3.0, 1.0])
  )

  @jax.jit
  def run(flag, state, saved):
    return _checkpoint.direction_or_restore(flag, lambda: adam.update(grads, state), saved)

  # optax's bias correction raises a float to an int32 count.
  with jax.numpy_dtype_promotion("standard"):
    u, new_state = run(jnp.asarray(rollback), state, saved)
  if rollback:
    np.testing.assert_array_equal(u, [0.0, 0.0])
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_state, saved)
  else:
    np.testing.assert_allclose(u, [1.0, -1.0], rtol=2e-5)
    np.testing.assert_allclose(new_state.mu, [0.2, -0.4], rtol=1e-6)
    np.testing.assert_allclose(new_state.nu, [0.004, 0.016], rtol=1e-5)
    assert int(new_state.count) == 1
  assert u.dtype == grads.dtype and new_state.mu.dtype == saved.mu.dtype


@pytest.mark.parametrize("rollback", [False, True])
def test_direction_or_restore_returns_a_step_that_is_the_state_once(rollback):
  # optax.trace's step is its new momentum buffer (0.9 * 1 + 2 = 2.9): it
  # leaves the cond once, as the state, so a rollback's step is the
  # restored buffer (no method steps along it).
  momentum = optax.trace(0.9)
  grads = {"w": jnp.array([2.0, -1.0]), "b": jnp.array(0.5)}
  state = optax.TraceState(trace={"w": jnp.array([1.0, 1.0]), "b": jnp.array(1.0)})
  saved = optax.TraceState(trace={"w": jnp.array([7.0, 8.0]), "b": jnp.array(9.0)})
  update = lambda: momentum.update(grads, state)
  u, new_state = jax.jit(lambda flag: _checkpoint.direction_or_restore(flag, update, saved))(
    jnp.asarray(rollback)
  )
  expected = saved.trace if rollback else {"w": [2.9, -0.1], "b": 1.4}
  for name in ("w", "b"):
    np.testing.assert_allclose(new_state.trace[name], expected[name], rtol=1e-6)
    np.testing.assert_array_equal(u[name], new_state.trace[name])


@pytest.mark.parametrize("rollback", [False, True])
def test_direction_or_restore_zeroes_what_it_is_told_on_a_rollback(rollback):
  # RTHO's and MARTHE's tangents: the update returns them beside the new
  # state, and a rollback returns zeros of their shapes and dtypes instead.
  momentum = optax.trace(0.5)
  grads = jnp.array([2.0, -1.0])
  state = optax.TraceState(trace=jnp.array([1.0, 1.0]))
  saved = optax.TraceState(trace=jnp.array([7.0, 8.0]))
  tangent = jnp.array([3.0, -3.0, 3.0])

  def update():
    u, new_state = momentum.update(grads, state)
    return u, (new_state, 2.0 * tangent)

  u, (new_state, new_tangent) = jax.jit(
    lambda flag: _checkpoint.direction_or_restore(flag, update, saved, zeroed=tangent)
  )(jnp.asarray(rollback))
  expected_trace = [7.0, 8.0] if rollback else [2.5, -0.5]
  np.testing.assert_array_equal(new_state.trace, expected_trace)
  np.testing.assert_array_equal(u, new_state.trace)
  np.testing.assert_array_equal(new_tangent, [0.0, 0.0, 0.0] if rollback else [6.0, -6.0, 6.0])
  assert new_tangent.dtype == tangent.dtype


@pytest.mark.parametrize(
  "direction",
  [optax.trace(0.9), optax.scale_by_adam()],
  ids=["momentum", "adam"],
)
@pytest.mark.parametrize(
  "make",
  [
    lambda d: optax_lr.rtho(0.01, direction=d),
    lambda d: optax_lr.marthe(0.01, direction=d),
  ],
  ids=["rtho", "marthe"],
)
def test_a_tangent_method_restores_its_direction_state_and_zeroes_its_tangent(make, direction):
  # A NaN loss at call 25, after the first save (SAVE_EVERY = 20 calls in):
  # that call rolls back. Its direction state is the checkpoint's (not the
  # one it started from), its tangents are zero.
  _, states = _run_tangent_method_into_a_nan_loss(make(standard_promotion(direction)))
  rolled_back = _at(states, 25)
  assert bool(_at(states, 24).safety.saved)
  assert bool(rolled_back.safety.rolled_back) and not bool(_at(states, 24).safety.rolled_back)
  saved = rolled_back.safety.checkpoint.direction_state
  jax.tree_util.tree_map(np.testing.assert_array_equal, rolled_back.direction_state, saved)
  moved = jax.tree_util.tree_map(
    lambda a, b: bool(jnp.any(a != b)), saved, _at(states, 24).direction_state
  )
  assert any(jax.tree_util.tree_leaves(moved))
  np.testing.assert_array_equal(rolled_back.tangent, jnp.zeros_like(rolled_back.tangent))
  # And the run goes on from there with finite numbers.
  assert bool(jnp.all(jnp.isfinite(_at(states, 26).tangent)))


@pytest.mark.parametrize(
  "make",
  [lambda: optax_lr.rtho(0.01), lambda: optax_lr.marthe(0.01)],
  ids=["rtho", "marthe"],
)
def test_a_tangent_method_over_sgd_restores_its_params_and_zeroes_its_tangent(make):
  # Over SGD the tangent step takes no cond (nothing params-sized to
  # restore): the same NaN loss at call 25 must still give the checkpoint's
  # params and a zero tangent, through the select and `finite`.
  params, states = _run_tangent_method_into_a_nan_loss(make())
  rolled_back = _at(states, 25)
  assert bool(_at(states, 24).safety.saved)
  assert bool(rolled_back.safety.rolled_back) and not bool(_at(states, 24).safety.rolled_back)
  np.testing.assert_array_equal(params[25], rolled_back.safety.checkpoint.params)
  assert bool(jnp.any(params[24] != params[25]))
  np.testing.assert_array_equal(rolled_back.tangent, jnp.zeros_like(rolled_back.tangent))
  assert bool(jnp.all(jnp.isfinite(_at(states, 26).tangent)))
  assert bool(jnp.all(jnp.isfinite(params[26])))


def _at(tree, i):
  """The ``i``-th call's entry of a tree stacked by ``lax.scan``."""
  return jax.tree_util.tree_map(lambda x: x[i], tree)


def _run_tangent_method_into_a_nan_loss(tx):
  """27 jitted calls on ``quadratic`` with a NaN loss at call 25.

  Returns the params after every call and the state after every call.
  """

  def loss(p, t):
    return quadratic(p) * jnp.where(t == 25, jnp.float32(jnp.nan), jnp.float32(1.0))

  def body(carry, t):
    w, state = carry
    value, grads = jax.value_and_grad(loss)(w, t)
    updates, new_state = tx.update(grads, state, w, value=value, loss_fn=lambda p: loss(p, t))
    new_w = optax_lr.apply_updates(w, updates, new_state)
    return (new_w, new_state), (new_w, new_state)

  _, (params, states) = jax.jit(lambda w: jax.lax.scan(body, (w, tx.init(w)), jnp.arange(27)))(W0)
  return params, states


# ---------------------------------------------------------------- the methods


@dataclasses.dataclass(frozen=True)
class NetCase:
  """A method with its safety net: ``make(lr, safety_net)``."""

  name: str
  make: Callable[..., optax.GradientTransformationExtraArgs]
  needs: tuple[str, ...] = ("value",)
  # The rate never leaves [lr0 / RATE_BAND, lr0 * RATE_BAND].
  banded: bool = True
  # Saves every SAVE_EVERY healthy calls at a loss no worse than the
  # checkpoint's (ASLR saves at the epoch ends that improve its cost).
  saves_by_loss: bool = True
  # Takes a gradient exactly zero everywhere, or on most of the leaves that
  # once had one, at a loss above half the first for a dead model (the
  # hypergradient methods: their cosine pass tells it free; newton_lr counts
  # on the calls that can save). ASLR tests it too, at the call after each
  # epoch end, with random per-leaf rates that the shared dead-model checks
  # (a first step of exactly rate 2) do not fit: its own tests below.
  sees_dead_models: bool = False
  # The call at which a run killed by its first step rolls back, to the
  # initial point at a tenth of the initial rate (dead_relu and dead_layers,
  # whose dead loss is above the checkpoint's: the model never tries to
  # save). The hypergradient methods count at every call: call 1. newton_lr
  # counts its window sums at window ends (update_every=10 here): the first
  # window (calls 0-9) holds the live first gradient, the second is dead,
  # and the call after its end rolls back (20).
  dead_rollback: int = 1
  # The same from a start whose loss is above the dead one's (which then
  # tries to save at call SAVE_EVERY - 1): newton_lr counts the gradient's
  # live leaves on the calls that would save, and rolls back at 19.
  dead_rollback_at_saves: int = 1
  # Without a `value`, reads the training loss from its `loss_fn` (RTHO and
  # MARTHE hold it for their Hessian-vector products).
  loss_from_loss_fn: bool = False
  # Without a `value` (and no `loss_fn` to read it from) its net sees
  # non-finite numbers only, and its update warns that it does.
  warns_without_value: bool = False


NET_CASES = [
  NetCase(
    "hypergradient_descent",
    lambda lr, **kw: optax_lr.hypergradient_descent(lr, **kw),
    sees_dead_models=True,
    warns_without_value=True,
  ),
  NetCase(
    "hypergradient_descent_multiplicative",
    lambda lr, **kw: optax_lr.hypergradient_descent(lr, multiplicative=True, **kw),
    sees_dead_models=True,
    warns_without_value=True,
  ),
  NetCase(
    "rtho",
    lambda lr, **kw: optax_lr.rtho(lr, **kw),
    needs=("value", "loss_fn"),
    sees_dead_models=True,
    loss_from_loss_fn=True,
  ),
  NetCase(
    "marthe_fixed_mu",
    lambda lr, **kw: optax_lr.marthe(lr, mu=0.9, hyper_lr_step=0.0, hyper_lr=1e-5, **kw),
    needs=("value", "loss_fn"),
    sees_dead_models=True,
    loss_from_loss_fn=True,
  ),
  NetCase(
    "newton_lr",
    lambda lr, **kw: optax_lr.newton_lr(lr, update_every=10, **kw),
    sees_dead_models=True,
    dead_rollback=20,
    dead_rollback_at_saves=_checkpoint.SAVE_EVERY - 1,
    warns_without_value=True,
  ),
  NetCase(
    "newton_lr_per_leaf",
    lambda lr, **kw: optax_lr.newton_lr(lr, update_every=10, per_leaf=True, **kw),
    sees_dead_models=True,
    dead_rollback=20,
    dead_rollback_at_saves=_checkpoint.SAVE_EVERY - 1,
    warns_without_value=True,
  ),
  NetCase(
    "aslr_window",
    lambda lr, **kw: optax_lr.aslr(lr, steps_per_epoch=10, **kw),
    banded=False,
    saves_by_loss=False,
  ),
]
NETS = pytest.mark.parametrize("case", NET_CASES, ids=lambda c: c.name)

# 0.5 sum(s w^2): SGD at rate 1 multiplies the last coordinate by 1 - 30 = -29
# per step, so the loss overflows float32 within ~30 steps.
CURVATURES = jnp.array([1.0, 10.0, 30.0])
W0 = jnp.array([1.0, 1.0, 1.0])


def quadratic(w):
  return 0.5 * jnp.sum(CURVATURES * w * w)


def _train(case, tx, steps, w0=W0, loss_fn=quadratic, poison_at=None):
  """``(params after every step, rates, rolled_back flags, final state)``."""

  def body(carry, t):
    w, state = carry
    scale = (
      jnp.where(t == poison_at, jnp.float32(jnp.nan), jnp.float32(1.0))
      if poison_at is not None
      else jnp.float32(1.0)
    )
    poisoned = lambda p: loss_fn(p) * scale
    loss, grads = jax.value_and_grad(poisoned)(w)
    available = {"value": loss, "loss_fn": poisoned}
    extra = {name: available[name] for name in case.needs}
    updates, state = tx.update(grads, state, w, **extra)
    w = optax_lr.apply_updates(w, updates, state)
    return (w, state), (
      w,
      optax_lr.current_lr(state),
      state.safety.rolled_back if state.safety is not None else jnp.bool_(False),
    )

  @jax.jit
  def run(w0):
    (w, state), (ws, rates, flags) = jax.lax.scan(body, (w0, tx.init(w0)), jnp.arange(steps))
    return ws, rates, flags, state

  return run(w0)


@NETS
def test_survives_an_initial_rate_at_which_sgd_diverges(case):
  # Plain SGD at rate 1 overflows here.
  w = W0
  for _ in range(60):
    w = w - jax.grad(quadratic)(w)
  assert not np.all(np.isfinite(np.asarray(w)))
  ws, rates, flags, state = _train(case, case.make(1.0), 3000)
  w = np.asarray(ws[-1])
  assert np.all(np.isfinite(w)), w
  assert float(quadratic(w)) < 1e-3 * float(quadratic(W0))
  assert int(state.safety.rollbacks) >= 1  # it had to back off
  rates = np.asarray(rates, np.float64)
  assert np.all(np.isfinite(rates)) and np.all(rates > 0)
  if case.banded:
    band = hypergradient.RATE_BAND
    assert np.all(rates <= band * (1 + 1e-6)) and np.all(rates >= 1 / band * (1 - 1e-6))


@NETS
def test_nan_params_land_exactly_on_the_checkpoint(case):
  tx = case.make(0.01)
  # Healthy until step 50; NaN loss and gradients there.
  ws, _, flags, state = _train(case, tx, 51, poison_at=50)
  flags = np.asarray(flags)
  assert not flags[:50].any() and flags[50]
  saved = np.asarray(state.safety.checkpoint.params)
  np.testing.assert_array_equal(np.asarray(ws[50]), saved)
  # The checkpoint is one of the params the run went through (not a blend).
  assert any(np.array_equal(saved, np.asarray(w)) for w in [W0, *ws[:50]])


@NETS
def test_best_params_is_the_checkpoint_while_a_rollback_is_pending(case):
  # A divergence found after the last update was built (a non-finite window
  # sum, a diverged epoch cost) leaves the params that update produced
  # diverged: until the next call lands on the checkpoint, it is the best.
  tx = case.make(0.01)
  _, _, _, state = _train(case, tx, 25)
  checkpoint = np.asarray(state.safety.checkpoint.params)
  moved = W0 * jnp.float32(jnp.nan)
  assert np.isnan(np.asarray(optax_lr.best_params(state, moved))).all()
  pending = state._replace(safety=state.safety.replace(pending=jnp.bool_(True)))
  np.testing.assert_array_equal(np.asarray(optax_lr.best_params(pending, moved)), checkpoint)
  best = jax.jit(optax_lr.best_params)(optax.chain(optax.identity(), tx).init(W0), moved)
  assert np.isnan(np.asarray(best)).all()  # a fresh state: nothing pending


@NETS
def test_the_net_changes_nothing_where_nothing_diverges(case):
  # The same numbers with and without the net on a healthy run, to rounding:
  # XLA contracts `w - eta * u` into one fused multiply-add on one path and
  # not on the other (1 ulp per step).
  # (60 steps: newton_lr's windows would take the rate past this
  # quadratic's stability limit later on, which the net then catches.)
  with_net = _train(case, case.make(0.01), 60)
  without = _train(case, case.make(0.01, safety_net=False), 60)
  assert not np.asarray(with_net[2]).any()
  np.testing.assert_allclose(np.asarray(with_net[0]), np.asarray(without[0]), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(with_net[1]), np.asarray(without[1]), rtol=1e-5)
  assert without[3].safety is None


@NETS
def test_the_net_costs_one_params_copy_and_one_direction_state_copy(case):
  params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}
  adam = optax.scale_by_adam()
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
  with jax.numpy_dtype_promotion("standard"):
    on = case.make(0.1, direction=adam).init(params)
    off = case.make(0.1, direction=adam, safety_net=False).init(params)
  extra = nbytes(on) - nbytes(off)
  # Params (64*32 + 32 floats) and Adam's mu, nu and count; plus the net's
  # scalars: 14 packed in `levels` and `counts` (4 bytes each, the flags
  # as int32), the checkpoint's cost and rate and the initial rate (68
  # bytes), and whatever scalars a method keeps only with its net.
  expected = nbytes(params) + nbytes(adam.init(params))
  assert expected + 68 <= extra <= expected + 80


def _scripted_step(case, tx):
  """A jitted update call on the quadratic whose ``value`` is scripted."""

  @jax.jit
  def step(w, state, value):
    available = {"value": value, "loss_fn": quadratic}
    extra = {name: available[name] for name in case.needs}
    updates, state = tx.update(jax.grad(quadratic)(w), state, w, **extra)
    return optax_lr.apply_updates(w, updates, state), state

  return step


@pytest.mark.parametrize("case", [c for c in NET_CASES if c.saves_by_loss], ids=lambda c: c.name)
def test_a_backed_off_rate_that_keeps_the_loss_above_its_start_backs_off_again(case):
  # Over Adam at rate 1 a tanh MLP's loss tripled at once (a rollback); at
  # the backed-off rate it stayed 1.1 times its first value for 70 calls
  # (saturated units), until one low minibatch loss saved that damaged
  # model. Now, 40 calls after a rollback with nothing saved and the running
  # level above the first loss, the net backs off again.
  tx = case.make(0.01)
  step = _scripted_step(case, tx)

  def run(scripted):
    w, state, flags, rates = W0, tx.init(W0), [], []
    for value in scripted:
      w, state = step(w, state, jnp.float32(value))
      flags.append(bool(state.safety.rolled_back))
      rates.append(float(optax_lr.current_lr(state)))
    return state, flags, rates

  stall = _checkpoint.STALL_CALLS
  state, flags, rates = run([1.0, 3.5] + [1.1] * (stall + 1))
  # Rollbacks at call 1 (threefold) and at the 40th call after it.
  assert [t for t, f in enumerate(flags) if f] == [1, 1 + stall]
  assert int(state.safety.rollbacks) == 2 and not bool(state.safety.saved)
  # The second rollback from the same checkpoint divides its rate by 10.
  assert rates[-1] <= 0.01 / _checkpoint.BACKOFF * (1 + 1e-5)
  # Losses under the first: the run saves at call 1 + SAVE_EVERY, no stall.
  state, flags, _ = run([1.0, 3.5] + [0.9] * (stall + 1))
  assert [t for t, f in enumerate(flags) if f] == [1]
  assert bool(state.safety.saved)


_DAMAGED = [2.5] * (3 * _checkpoint.SAVE_EVERY)
# Every SAVE_EVERY-th loss a lucky minibatch below the first loss, when a
# save is due: the running level (about 2.5) refuses it.
_DAMAGED_LUCKY = ([2.5] * (_checkpoint.SAVE_EVERY - 1) + [0.9]) * 3


@pytest.mark.parametrize("damaged", [_DAMAGED, _DAMAGED_LUCKY], ids=["steady", "lucky"])
@pytest.mark.parametrize("case", [c for c in NET_CASES if c.saves_by_loss], ids=lambda c: c.name)
def test_a_run_worse_than_the_initial_model_never_saves(case, damaged):
  # A too-high rate can damage a model in its first steps (dead units,
  # saturated outputs) without a threefold loss. The first call's loss is the
  # initial checkpoint's cost, and a save needs a running level no higher, so
  # no save stores the damage, and the divergence that follows rolls back to
  # the initial params.
  tx = case.make(0.01)
  step = _scripted_step(case, tx)
  w, state = W0, tx.init(W0)
  scripted = [1.0] + damaged + [100.0]
  for t, value in enumerate(scripted):
    w, state = step(w, state, jnp.float32(value))
    if t == 0:
      assert float(state.safety.checkpoint.cost) == 1.0
    assert bool(state.safety.rolled_back) == (t == len(scripted) - 1)
    assert not bool(state.safety.saved)
  np.testing.assert_array_equal(np.asarray(state.safety.checkpoint.params), W0)
  np.testing.assert_array_equal(np.asarray(w), W0)


@NETS
def test_a_threefold_loss_rolls_back_before_the_first_save_only(case):
  # Adam at a too-high rate sends a loss to 6-10 times its first value in one
  # step: before the first save (the checkpoint is the initial point) more
  # than three times the first loss rolls back to it; after a save only ten
  # times does.
  tx = case.make(0.01)
  step = _scripted_step(case, tx)

  def run(scripted):
    w, state, flags = W0, tx.init(W0), []
    for value in scripted:
      w, state = step(w, state, jnp.float32(value))
      flags.append(bool(state.safety.rolled_back))
    return w, state, flags

  w, state, flags = run([1.0, 2.9, 3.1])
  assert flags == [False, False, True]
  np.testing.assert_array_equal(np.asarray(w), W0)
  # A save (ASLR's: at the end of an improving 10-call window), then 3.1
  # again (and 9.9): no rollback; 10.1: one.
  healthy = [1.0] + [0.5] * (2 * _checkpoint.SAVE_EVERY)
  w, state, flags = run(healthy + [3.1, 9.9, 10.1])
  assert bool(state.safety.saved)
  assert flags[len(healthy) :] == [False, False, True]


@NETS
def test_a_loss_level_that_triples_after_a_save_rolls_back_to_the_checkpoint(case):
  # Trained to a loss level near 0.5 from a first loss of 1 (a save there);
  # then losses at 2.7 times that level for 60 calls change nothing, and at
  # 3.4 times it (under the tenfold test, 10) the net rolls back at the 15th
  # call (the share of high losses, 1 - 0.95^k, passes one half after 14),
  # exactly to the checkpoint. A small rate keeps every method's own tests
  # quiet on the quadratic, so the rollback is the sustained-rise test's.
  tx = case.make(1e-3)
  step = _scripted_step(case, tx)
  w, state = W0, tx.init(W0)
  for value in [1.0] + [0.5] * (2 * _checkpoint.SAVE_EVERY):
    w, state = step(w, state, jnp.float32(value))
  net = state.safety
  assert bool(net.saved) and 0.5 < float(net.saved_level) < 0.6
  level = float(net.saved_level)
  for _ in range(60):
    w, state = step(w, state, jnp.float32(2.7 * level))
    assert not bool(state.safety.rolled_back)
  calls = 0
  while calls < 20:
    checkpoint = state.safety.checkpoint.params
    w, state = step(w, state, jnp.float32(3.4 * level))
    calls += 1
    if bool(state.safety.rolled_back):
      break
  assert bool(state.safety.rolled_back) and calls == 15
  np.testing.assert_array_equal(np.asarray(w), np.asarray(checkpoint))


def dead_relu(w):
  # (relu(w) - 1)^2: from w = 1.8 (loss 0.64, gradient 1.6) a step at rate 2
  # lands on w = -1.4, where the unit is dead: loss 1.0 (1.56 times the
  # first, under the threefold test), gradient exactly 0, for ever.
  return jnp.sum((jax.nn.relu(w) - 1.0) ** 2)


W_DEAD = jnp.array([1.8])


# MARTHE's default (kappa selection) too, which needs its net: not in
# NET_CASES, whose checks compare with safety_net=False.
DEAD_MODEL_CASES = [c for c in NET_CASES if c.sees_dead_models] + [
  NetCase(
    "marthe_kappa_selection",
    lambda lr, **kw: optax_lr.marthe(lr, **kw),
    needs=("value", "loss_fn"),
    sees_dead_models=True,
    loss_from_loss_fn=True,
  )
]


def _dead_rollback(case, flags, state, expected=None):
  """The call of a dead run's rollback, checked to be its only one."""
  call = case.dead_rollback if expected is None else expected
  assert list(np.flatnonzero(flags)) == [call]
  assert int(state.safety.rollbacks) == 1
  return call


def _largest_rate(rates, call):
  """The largest learning rate at one call (one scalar, or one per leaf)."""
  return max(float(np.asarray(leaf)[call]) for leaf in jax.tree_util.tree_leaves(rates))


@pytest.mark.parametrize("case", DEAD_MODEL_CASES, ids=lambda c: c.name)
def test_a_rate_that_kills_the_model_rolls_back_and_backs_off(case):
  ws, rates, flags, state = _train(case, case.make(2.0), 200, w0=W_DEAD, loss_fn=dead_relu)
  ws, flags = np.asarray(ws)[:, 0], np.asarray(flags)
  assert ws[0] == pytest.approx(-1.4, abs=1e-6)  # the first step kills the unit
  # The dead test sees the zero gradient (at call 1, or at the end of the
  # first dead window for newton_lr) and rolls back to the initial point.
  # Nothing was saved: the initial rate has not shown that it trains, and
  # the rollback divides it by BACKOFF; from there the unit lives and fits.
  call = _dead_rollback(case, flags, state)
  assert ws[call] == np.float32(1.8)
  assert _largest_rate(rates, call) <= 2.0 / _checkpoint.BACKOFF * (1 + 1e-6)
  assert dead_relu(ws[-1:]) < 1e-6
  no_value = dataclasses.replace(case, needs=tuple(n for n in case.needs if n != "value"))
  without = _train(no_value, case.make(2.0), 200, w0=W_DEAD, loss_fn=dead_relu)
  if case.loss_from_loss_fn:
    # Without a `value`, RTHO and MARTHE read the loss from `loss_fn`: the
    # same run, call for call.
    np.testing.assert_array_equal(np.asarray(without[0])[:, 0], ws)
    np.testing.assert_array_equal(np.asarray(without[2]), flags)
  else:
    # Without a loss the net cannot tell a dead model from a minimum: it
    # stays dead (what the test above guards against).
    assert np.asarray(without[0])[-1, 0] == pytest.approx(-1.4, abs=1e-6)
    assert int(without[3].safety.rollbacks) == 0


@pytest.mark.parametrize("case", DEAD_MODEL_CASES, ids=lambda c: c.name)
def test_a_dead_model_below_the_first_loss_is_never_saved(case):
  # From w = 2.2 (loss 1.44, gradient 2.4) a step at rate 2 lands on
  # w = -2.6: dead, at loss 1.0, under the first loss (so a save would take
  # it) and above half of it. No save takes the dead point: the rollback
  # lands on the start, and the backed-off rate fits.
  start = jnp.array([2.2])
  ws, rates, flags, state = _train(case, case.make(2.0), 200, w0=start, loss_fn=dead_relu)
  ws, flags = np.asarray(ws)[:, 0], np.asarray(flags)
  assert ws[0] == pytest.approx(-2.6, abs=1e-6)
  call = _dead_rollback(case, flags, state, case.dead_rollback_at_saves)
  assert ws[call] == np.float32(2.2)
  assert _largest_rate(rates, call) <= 2.0 / _checkpoint.BACKOFF * (1 + 1e-6)
  assert dead_relu(ws[-1:]) < 1e-6


def dead_layers(params):
  # Three ReLU units (dead_relu each, one leaf each) and an output bias b
  # far from its minimum: 0.001 (b - 5)^2, whose gradient is never 0. From
  # 1.8 a step at rate 2 kills the three units: the gradient is then exactly
  # 0 on 3 of the 4 leaves, the loss 3.02 (1.56 times the first, 1.945), and
  # only b moves. So a dead hidden layer leaves the output bias's gradient.
  units = sum(dead_relu(params[name]) for name in ("u1", "u2", "u3"))
  return units + 1e-3 * jnp.sum((params["b"] - 5.0) ** 2)


DEAD_LAYERS_W0 = {"u1": W_DEAD, "u2": W_DEAD, "u3": W_DEAD, "b": jnp.zeros(1)}


@pytest.mark.parametrize("case", DEAD_MODEL_CASES, ids=lambda c: c.name)
def test_a_rate_that_kills_all_but_the_output_bias_rolls_back_and_backs_off(case):
  ws, rates, flags, state = _train(
    case, case.make(2.0), 200, w0=DEAD_LAYERS_W0, loss_fn=dead_layers
  )
  units, flags = np.asarray(ws["u1"])[:, 0], np.asarray(flags)
  assert units[0] == pytest.approx(-1.4, abs=1e-6)  # the first step kills the units
  # The dead test sees a gradient on 1 of the 4 leaves that had one and
  # rolls back to the initial point, at a tenth of the initial rate (no
  # save yet), and from there the units live.
  call = _dead_rollback(case, flags, state)
  assert units[call] == np.float32(1.8)
  assert _largest_rate(rates, call) <= 2.0 / _checkpoint.BACKOFF * (1 + 1e-6)
  assert int(state.safety.live_leaves) == 4
  for name in ("u1", "u2", "u3"):
    assert dead_relu(ws[name][-1]) < 1e-6


def dead_units(params):
  # One ReLU layer of five units, its biases a vector (each unit fitting
  # relu(w) = 1, dead_relu each), plus an output bias far from its minimum.
  # From w = (1.8, 1.8, 1.8, 1.8, 0.5) a step at rate 2 kills units 0-3 (to
  # -1.4) and takes unit 4 to 2.5: every leaf keeps a gradient, but 4 of
  # the layer's 5 units are dead (under a third live). The loss goes from
  # 2.84 to 6.27 (2.2 times, under the threefold test).
  return dead_relu(params["units"]) + 1e-3 * jnp.sum((params["b"] - 5.0) ** 2)


DEAD_UNITS_W0 = {"units": jnp.array([1.8, 1.8, 1.8, 1.8, 0.5]), "b": jnp.zeros(1)}


@pytest.mark.parametrize("case", DEAD_MODEL_CASES, ids=lambda c: c.name)
def test_a_rate_that_kills_most_units_of_a_layer_rolls_back_and_backs_off(case):
  # 60 calls: the units fit within 40 calls of the backed-off rate (the
  # loss falls 0.36-fold a call at 0.2), before newton_lr's per-leaf rate
  # for the units grows past stability and its net rolls back for that.
  ws, rates, flags, state = _train(case, case.make(2.0), 60, w0=DEAD_UNITS_W0, loss_fn=dead_units)
  units, flags = np.asarray(ws["units"]), np.asarray(flags)
  np.testing.assert_allclose(units[0], [-1.4, -1.4, -1.4, -1.4, 2.5], rtol=1e-6)
  # Both leaves keep a gradient: only the layer's units tell. The net rolls
  # back once, to the start at a tenth of the initial rate (no save yet),
  # and from there the units live and fit.
  call = _dead_rollback(case, flags, state)
  np.testing.assert_array_equal(units[call], DEAD_UNITS_W0["units"])
  assert _largest_rate(rates, call) <= 2.0 / _checkpoint.BACKOFF * (1 + 1e-6)
  assert state.safety.live_counts.tolist() == [2, 1]
  assert dead_units({"units": ws["units"][-1], "b": jnp.full(1, 5.0)}) < 1e-6


def zero_units_from_the_start(params):
  # A vector of 5 of which only entry 0 is used: entries 1-4 have an exactly
  # zero gradient from the first call (unused, not dead), so the vector
  # never has a third of its entries live and never counts as a layer.
  return jnp.sum((params["units"][0] - 1.0) ** 2) + jnp.sum((params["b"] - 1.0) ** 2)


@pytest.mark.parametrize("case", DEAD_MODEL_CASES, ids=lambda c: c.name)
def test_units_zero_from_the_start_are_not_a_dead_model(case):
  w0 = {"units": jnp.full(5, 3.0), "b": jnp.full(1, 3.0)}
  ws, _, flags, state = _train(case, case.make(0.1), 300, w0=w0, loss_fn=zero_units_from_the_start)
  assert not np.asarray(flags).any()
  assert state.safety.live_counts.tolist() == [2, 0]
  assert zero_units_from_the_start({"units": ws["units"][-1], "b": ws["b"][-1]}) < 1e-6


NO_VALUE = "got no value=loss"


def _warnings_of(case, tx, extra, calls=2):
  """The no-`value` warnings of ``calls`` jitted update calls (one trace)."""
  w = W0
  state = tx.init(w)
  step = jax.jit(lambda g, state, w: tx.update(g, state, w, **extra))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(calls):
      _, state = step(jax.grad(quadratic)(w), state, w)
  return [str(c.message) for c in caught if NO_VALUE in str(c.message)]


@NETS
def test_a_net_that_gets_no_loss_says_so_once_per_trace(case):
  loss_fn = {"loss_fn": quadratic} if "loss_fn" in case.needs else {}
  with_value = {"value": quadratic(W0), **loss_fn}
  assert _warnings_of(case, case.make(0.1), with_value) == []
  if not (case.warns_without_value or case.loss_from_loss_fn):
    return  # it needs `value` (ASLR's window averages it)
  said = _warnings_of(case, case.make(0.1), loss_fn)
  if case.loss_from_loss_fn:
    assert said == []  # it reads the loss from `loss_fn`
  else:
    # Two calls, one trace: one warning, naming the method and the cure.
    assert len(said) == 1
    assert "value=loss" in said[0] and "safety_net=False" in said[0]
  # Without a net there is nothing to warn about.
  assert _warnings_of(case, case.make(0.1, safety_net=False), loss_fn) == []


def test_the_initial_checkpoint_takes_the_first_call_loss_only():
  ckpt_of = lambda net: float(net.checkpoint.cost)
  f, t = jnp.bool_(False), jnp.bool_(True)
  net = _net()
  first = _checkpoint.net_update(net, net.checkpoint, f, f, jnp.float32(2.0))
  assert ckpt_of(first) == 2.0 and float(first.first_cost) == 2.0
  # A later call's loss is not the initial params' loss.
  later = _checkpoint.net_update(_net(since=3), net.checkpoint, f, f, jnp.float32(2.0))
  assert ckpt_of(later) == math.inf
  # Nor is the loss of a first call that rolls back (a non-finite gradient).
  rolled = _checkpoint.net_update(net, net.checkpoint, f, t, jnp.float32(2.0))
  assert ckpt_of(rolled) == math.inf


def test_the_band_keeps_the_rate_from_running_away():
  # A loss whose best rate is ~10^6 times the initial one: HD grows the rate
  # as fast as its rule lets it, and the band stops it at 10^4.
  case = NET_CASES[0]
  flat = lambda w: 0.5e-6 * jnp.sum(w * w)
  _, rates, _, _ = _train(case, case.make(1e-3), 3000, loss_fn=flat)
  rates = np.asarray(rates, np.float64)
  assert rates.max() == pytest.approx(1e-3 * hypergradient.RATE_BAND, rel=1e-5)


# ---------------------------------------------------------------- kappa selection


def test_marthe_kappa_selection_decimates_kappa_and_rolls_back():
  case = NetCase("marthe", optax_lr.marthe, needs=("value", "loss_fn"))
  tx = optax_lr.marthe(0.01)
  kappa0 = hypergradient.DEFAULT_HYPER_LR_STEP

  # Two scripted divergences: NaN losses at steps 30 and 60.
  def body(carry, t):
    w, state = carry
    bad = (t == 30) | (t == 60)
    scale = jnp.where(bad, jnp.float32(jnp.nan), jnp.float32(1.0))
    poisoned = lambda p: quadratic(p) * scale
    loss, grads = jax.value_and_grad(poisoned)(w)
    updates, state = tx.update(grads, state, w, value=loss, loss_fn=poisoned)
    w = optax_lr.apply_updates(w, updates, state)
    return (w, state), (
      w,
      state.hyper_lr_step,
      state.safety.rolled_back,
      state.hyper_lr,
      state.safety.checkpoint.params,
    )

  (_, state), (ws, kappas, flags, betas, saved) = jax.jit(
    lambda w: jax.lax.scan(body, (w, tx.init(w)), jnp.arange(70))
  )(W0)
  kappas, flags = np.asarray(kappas), np.asarray(flags)
  np.testing.assert_array_equal(np.nonzero(flags)[0], [30, 60])
  np.testing.assert_allclose(kappas[:30], kappa0, rtol=1e-6)
  np.testing.assert_allclose(kappas[30:60], kappa0 / 10, rtol=1e-6)
  np.testing.assert_allclose(kappas[60:], kappa0 / 100, rtol=1e-6)
  # beta restarts from 0 with the smaller kappa; the params land on the
  # checkpoint of the step each rollback went back to.
  assert float(betas[30]) == 0.0 and float(betas[60]) == 0.0
  np.testing.assert_array_equal(np.asarray(ws[30]), np.asarray(saved[30]))
  np.testing.assert_array_equal(np.asarray(ws[60]), np.asarray(saved[60]))
  del case


def test_marthe_kappa_selection_counts_a_rate_out_of_its_band_as_divergence():
  # kappa is large enough here that beta, then the rate, climbs past 10^4
  # times its start on a flat loss: a divergence under kappa selection.
  flat = lambda w: 0.5e-6 * jnp.sum(w * w)
  tx = optax_lr.marthe(1e-3)
  case = NetCase("marthe", None, needs=("value", "loss_fn"))
  _, rates, flags, state = _train(case, tx, 3000, loss_fn=flat)
  assert np.asarray(flags).any()
  assert float(state.hyper_lr_step) < hypergradient.DEFAULT_HYPER_LR_STEP
  assert np.asarray(rates).max() <= 1e-3 * hypergradient.RATE_BAND * (1 + 1e-6)


def test_kappa_selection_needs_the_net():
  with pytest.raises(ValueError, match="safety_net"):
    optax_lr.marthe(0.1, safety_net=False)
  optax_lr.marthe(0.1, hyper_lr_step=1e-3, safety_net=False)


def test_aslr_rolls_back_at_the_call_after_a_diverged_epoch():
  tx = optax_lr.aslr(0.3)
  w = W0
  state = optax_lr.observe(tx.init(w), 5.0)  # the initial model's cost
  grads = jax.grad(quadratic)(w)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  # The call after an improving epoch end saves the params it receives.
  updates, state = step(grads, state, w)
  w = optax_lr.apply_updates(w, updates, state)
  saved = np.asarray(w)
  state = optax_lr.observe(state, 4.0)
  updates, state = step(jax.grad(quadratic)(w), state, w)
  np.testing.assert_array_equal(np.asarray(state.safety.checkpoint.params), saved)
  w = optax_lr.apply_updates(w, updates, state) * jnp.float32(jnp.nan)
  # A NaN epoch: the next call lands on the checkpoint with the centre saved
  # with it (0.3); a second divergence from it gives a tenth (0.03).
  state = optax_lr.observe(state, float("nan"))
  assert bool(state.safety.pending)
  # Until that call, the best model is the checkpoint, not the NaN params.
  np.testing.assert_array_equal(np.asarray(optax_lr.best_params(state, w)), saved)
  updates, state = step(jax.grad(quadratic)(w), state, w)
  w = optax_lr.apply_updates(w, updates, state)
  np.testing.assert_array_equal(np.asarray(w), saved)
  np.testing.assert_array_equal(np.asarray(optax_lr.best_params(state, w + 1.0)), saved + 1.0)
  assert bool(state.safety.rolled_back)
  np.testing.assert_allclose(float(optax_lr.current_lr(state)), 0.3, rtol=1e-6)
  updates, state = step(jax.grad(quadratic)(w), state, w)  # one step
  w = optax_lr.apply_updates(w, updates, state)
  state = optax_lr.observe(state, float("inf"))
  updates, state = step(jax.grad(quadratic)(w), state, w)
  np.testing.assert_allclose(float(optax_lr.current_lr(state)), 0.03, rtol=1e-6)
  assert (int(state.digit), int(state.exponent)) == (3, -2)


def _aslr_dead_layers_run(tx, calls, observe_every=None, with_value=True):
  """ASLR on `dead_layers` from DEAD_LAYERS_W0: ``(u1 after every call,
  rolled_back flags, rates, final params, final state)``. ``observe_every``:
  an epoch end (`optax_lr.observe`, the epoch's mean training loss) after
  every that many calls, for ASLR without `steps_per_epoch`."""

  @jax.jit
  def run(params):
    def body(carry, t):
      params, state, total = carry
      loss, grads = jax.value_and_grad(dead_layers)(params)
      extra = {"value": loss} if with_value else {}
      updates, state = tx.update(grads, state, params, **extra)
      params = optax_lr.apply_updates(params, updates, state)
      total = total + loss
      if observe_every is not None:
        ends = (t + 1) % observe_every == 0
        state = jax.lax.cond(
          ends, lambda s: optax_lr.observe(s, total / observe_every), lambda s: s, state
        )
        total = jnp.where(ends, 0.0, total)
      rolled = state.safety.rolled_back
      return (params, state, total), (params["u1"][0], rolled, optax_lr.current_lr(state))

    init = (params, tx.init(params), jnp.float32(0.0))
    (params, state, _), (u1, flags, rates) = jax.lax.scan(body, init, jnp.arange(calls))
    return u1, flags, rates, params, state

  u1, flags, rates, params, state = run(DEAD_LAYERS_W0)
  return np.asarray(u1), np.asarray(flags), np.asarray(rates), params, state


@pytest.mark.parametrize("mode", ["steps_per_epoch", "observe"])
def test_aslr_rolls_back_a_model_its_rate_killed_at_the_call_after_the_epoch_end(mode):
  # ASLR's per-leaf rates at a centre of 2 lie in [1.5, 2.5]: the first
  # step takes each unit from 1.8 to 1.8 - 1.6 r <= -0.6, dead (gradient
  # exactly 0 on 3 of the 4 leaves, loss 3.02 > half the first, 1.945).
  # ASLR counts live leaves only at the call after an epoch end (10 calls
  # here; the first calls count until one gives the reference, 4 leaves):
  # call 10 rolls back to the initial point. Nothing was saved (the initial
  # centre has not shown that it trains): the rollback divides the centre
  # saved with it by BACKOFF (0.2, rates in [0.15, 0.25]), and from there
  # the units live and fit.
  if mode == "steps_per_epoch":
    tx, observe_every = optax_lr.aslr(2.0, steps_per_epoch=10), None
  else:
    tx, observe_every = optax_lr.aslr(2.0), 10
  u1, flags, rates, params, state = _aslr_dead_layers_run(tx, 300, observe_every)
  assert u1[0] < -0.5  # the first step kills the unit
  assert list(np.flatnonzero(flags)) == [10]
  assert u1[10] == np.float32(1.8)
  np.testing.assert_allclose(rates[10], 2.0 / _checkpoint.BACKOFF, rtol=1e-6)
  assert int(state.safety.rollbacks) == 1 and int(state.safety.live_leaves) == 4
  for name in ("u1", "u2", "u3"):
    assert dead_relu(params[name]) < 1e-6
  if mode == "observe":
    # Without a `value` (which the window needs) there is no loss to tell a
    # dead model from a minimum: the units stay dead.
    u1, flags, _, params, _ = _aslr_dead_layers_run(tx, 300, observe_every, with_value=False)
    assert not flags.any() and u1[-1] < 0


def test_aslr_counts_live_leaves_once_an_epoch_not_at_every_call():
  # Between epoch ends a dead gradient goes unread: with no epoch end in
  # 300 calls (the reference counted at call 0), the killed units stay
  # dead and nothing rolls back.
  tx = optax_lr.aslr(2.0)
  u1, flags, _, _, state = _aslr_dead_layers_run(tx, 300)
  assert not flags.any() and u1[-1] < 0
  assert int(state.safety.live_leaves) == 4


# ------------------------------------------- no `value`: the gradient gate


@pytest.mark.parametrize(
  "level,grad_sq,save",
  [
    (0.0, 5.0, True),  # no average yet: the first gradient is fine
    (2.0, 19.9, True),  # within GRADIENT_GROWTH = 10 times the average
    (2.0, 20.1, False),  # a blow-up in the making: no save there
    (2.0, math.inf, False),
    (2.0, math.nan, False),
  ],
)
def test_without_value_a_save_needs_the_gradient_within_its_growth_bound(level, grad_sq, save):
  net = _net(since=_checkpoint.SAVE_EVERY).replace(grad_level=jnp.float32(level))
  got, rollback, _ = _checkpoint.net_decide(
    net, None, jnp.asarray(True), grad_sq=jnp.float32(grad_sq)
  )
  assert bool(got) == save and not bool(rollback)


def test_gradient_average_moves_at_most_five_percent_up_per_call():
  net = _net().replace(grad_level=jnp.float32(4.0))
  keep = lambda g, rollback=False: (
    _checkpoint.net_update(
      net,
      net.checkpoint,
      jnp.bool_(False),
      jnp.bool_(rollback),
      jnp.float32(math.inf),
      grad_sq=jnp.float32(g),
    ).grad_level
  )
  # 4 + (min(1e6, 8) - 4) / 20 = 4.2; 4 + (2 - 4) / 20 = 3.9.
  np.testing.assert_allclose(float(keep(1e6)), 4.2, rtol=1e-6)
  np.testing.assert_allclose(float(keep(2.0)), 3.9, rtol=1e-6)
  assert float(keep(1e6, rollback=True)) == 4.0  # a rollback call: unchanged
  assert float(keep(math.nan)) == 4.0


@pytest.mark.parametrize("direction", [None, optax.trace(0.9)], ids=["sgd", "momentum"])
def test_newton_lr_without_value_survives_rosenbrock(direction):
  """Without `value` the net sees only non-finite numbers and gradients:
  before the gradient gate it saved points of a run already blowing up,
  rolled back to them for ever and ended NaN (SGD, 100 steps an epoch)."""
  rosenbrock = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2
  tx = optax_lr.newton_lr(1e-3, steps_per_epoch=100, direction=direction)

  def body(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(rosenbrock)(params), state, params)
    return (optax_lr.apply_updates(params, updates, state), state), None

  params = jnp.zeros(2)
  (params, state), _ = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=30_000))(
    params
  )
  np.testing.assert_allclose(params, [1.0, 1.0], rtol=3e-2, atol=3e-2)
  assert int(state.safety.rollbacks) > 0  # it did diverge on the way
