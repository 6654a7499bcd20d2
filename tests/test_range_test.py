"""Tests for optax_lr.range_test.lr_range_test."""

import functools
import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_lr.range_test import RangeTestResult
from optax_lr.range_test import lr_range_test

# ---------------------------------------------------------------------------
# Helpers. Module-level loss functions so repeated calls share compilations.


def batch_loss(w, b):
  """Loss equal to the batch value; params get a zero gradient."""
  return jnp.asarray(b, jnp.float32) + 0.0 * jnp.sum(w)


def counting_loss(w, b):
  """Loss equal to the batch value, gradient -1 w.r.t. the scalar param w.

  Under SGD with rate lr_i, w_{i+1} = w_i + lr_i, so w counts the rates applied.
  """
  return -w + jax.lax.stop_gradient(w) + b


def sweep64(min_lr, max_lr, n):
  i = np.arange(n, dtype=np.float64)
  return min_lr * (max_lr / min_lr) ** (i / (n - 1))


def ema_reference(losses, smoothing):
  """Bias-corrected EMA in float64, an independent loop."""
  out, avg = [], 0.0
  for i, x in enumerate(np.asarray(losses, np.float64)):
    avg = smoothing * avg + (1.0 - smoothing) * x
    out.append(avg / (1.0 - smoothing ** (i + 1)))
  return np.array(out)


def reference_suggestion_index(smoothed, d, num_steps):
  """The "steep" rule: argmin of np.gradient(smoothed[:d]) over start <= i < d."""
  if d < 2:
    return 0
  start = num_steps // 10 if num_steps // 10 < d else 0
  g = np.gradient(np.asarray(smoothed[:d], np.float64))
  return start + int(np.argmin(g[start:]))


def reference_valley_index(smoothed, d, num_steps):
  """The "valley" rule, as fastai's double loop, with the documented 2/3 point.

  lds[k]: longest strictly decreasing subsequence of the candidates ending at
  k; the valley ends at the first longest one, e, and starts at
  s = e - lds[e] + 1; the pick is s + (2 (e - s)) // 3.
  """
  if d < 2:
    return 0
  start = num_steps // 10 if num_steps // 10 < d else 0
  y = [float(v) for v in smoothed[start:d]]
  lds = [1] * len(y)
  for k in range(len(y)):
    for j in range(k):
      if y[j] > y[k] and lds[j] + 1 > lds[k]:
        lds[k] = lds[j] + 1
  e = max(range(len(y)), key=lambda k: (lds[k], -k))  # first longest
  s = e - lds[e] + 1
  return start + s + (2 * (e - s)) // 3


def reference_minimum_index(smoothed, d, num_steps):
  """The "minimum" rule's index (the rate is lrs[index] / 10)."""
  start = num_steps // 10 if num_steps // 10 < d else 0
  return start + int(np.argmin(np.asarray(smoothed[start:d], np.float64)))


def reference_suggestion(lrs, smoothed, d, num_steps, rule):
  lrs = np.asarray(lrs)
  if d < 2:
    return lrs[0]
  if rule == "steep":
    return lrs[reference_suggestion_index(smoothed, d, num_steps)]
  if rule == "valley":
    return lrs[reference_valley_index(smoothed, d, num_steps)]
  return lrs[reference_minimum_index(smoothed, d, num_steps)] / np.float32(10)


# ---------------------------------------------------------------------------
# The sweep, the result and the smoothing.


def test_result_fields_and_sweep_exact():
  n = 37
  res = lr_range_test(
    batch_loss, jnp.zeros(()), jnp.ones((n,)), min_lr=1e-5, max_lr=3.0, num_steps=n
  )
  assert isinstance(res, RangeTestResult)
  assert res._fields[:4] == ("lrs", "losses", "smoothed", "suggestion")
  assert res.lrs.shape == res.losses.shape == res.smoothed.shape == (n,)
  assert res.lrs.dtype == res.losses.dtype == res.smoothed.dtype == jnp.float32
  assert res.suggestion.shape == () and res.suggestion.dtype == jnp.float32
  assert res.diverged_at.dtype == jnp.int32 and int(res.diverged_at) == n
  np.testing.assert_array_equal(np.asarray(res.lrs), sweep64(1e-5, 3.0, n).astype(np.float32))
  assert res.lrs[0] == np.float32(1e-5) and res.lrs[-1] == np.float32(3.0)
  ratios = np.asarray(res.lrs[1:], np.float64) / np.asarray(res.lrs[:-1])
  np.testing.assert_allclose(ratios, (3.0 / 1e-5) ** (1 / (n - 1)), rtol=1e-6)


def test_two_steps_is_the_minimum():
  res = lr_range_test(
    batch_loss, jnp.zeros(()), jnp.ones((3,)), min_lr=0.01, max_lr=0.1, num_steps=2
  )
  np.testing.assert_array_equal(np.asarray(res.lrs), np.float32([0.01, 0.1]))


@pytest.mark.parametrize("smoothing", [0.0, 0.5, 0.9, 0.98])
def test_smoothing_is_bias_corrected_ema_and_batches_cycle(smoothing):
  rng = np.random.default_rng(1)
  batches = rng.uniform(1.0, 2.0, size=13).astype(np.float32)
  n = 40
  res = lr_range_test(batch_loss, jnp.zeros(()), batches, num_steps=n, smoothing=smoothing)
  assert int(res.diverged_at) == n
  raw = batches[np.arange(n) % 13]
  np.testing.assert_array_equal(np.asarray(res.losses), raw)
  np.testing.assert_allclose(np.asarray(res.smoothed), ema_reference(raw, smoothing), rtol=2e-6)
  assert res.smoothed[0] == res.losses[0]  # bias correction at step 0
  if smoothing == 0.0:
    np.testing.assert_array_equal(np.asarray(res.smoothed), raw)


def test_batch_pytree_index_is_step_mod_n():
  n, steps = 5, 23
  batches = {"idx": jnp.arange(n, dtype=jnp.int32), "x": jnp.ones((n, 2, 3))}
  seen = []

  def loss_fn(w, b):
    jax.debug.callback(lambda k: seen.append(int(k)), b["idx"])
    assert b["x"].shape == (2, 3)  # the leading axis is consumed
    return 10.0 + b["idx"].astype(jnp.float32) + 0.0 * jnp.sum(w * b["x"])

  res = lr_range_test(loss_fn, jnp.zeros((2, 3)), batches, num_steps=steps)
  jax.effects_barrier()
  expected = np.arange(steps) % n
  np.testing.assert_array_equal(np.asarray(res.losses), 10.0 + expected)
  assert seen == expected.tolist()


# ---------------------------------------------------------------------------
# The suggestion.


def sigmoid_curve_loss(w, b):
  """A loss whose value at step i is g(i) = 2 - tanh((i - t0) / width).

  SGD with gradient -1 makes w_i = sum_{j<i} lr_j = lr_0 (r^i - 1) / (r - 1)
  for the geometric sweep with ratio r, so u(w) = log1p(w (r-1)/lr_0) / log r
  recovers i exactly; the value is g(u(w)) and the gradient stays -1.
  """
  t0, width, lr0, r = b[0], b[1], b[2], b[3]
  u = jnp.log1p(w * (r - 1.0) / lr0) / jnp.log(r)
  value = 2.0 - jnp.tanh((u - t0) / width)
  return -w + jax.lax.stop_gradient(w + value)


@pytest.mark.parametrize("t0", [9.3, 24.0, 31.6, 52.4])
def test_suggestion_at_analytic_steepest_point(t0):
  n, min_lr, max_lr, width = 61, 1e-4, 1.0, 4.0
  r = (max_lr / min_lr) ** (1 / (n - 1))
  batches = jnp.array([[t0, width, min_lr, r]], jnp.float32)
  res = lr_range_test(
    sigmoid_curve_loss,
    jnp.zeros(()),
    batches,
    min_lr=min_lr,
    max_lr=max_lr,
    num_steps=n,
    smoothing=0.0,
    suggest="steep",
  )
  i = np.arange(n)
  # The construction really produces the curve (so the test is not vacuous).
  np.testing.assert_allclose(np.asarray(res.losses), 2.0 - np.tanh((i - t0) / width), atol=2e-4)
  assert int(res.diverged_at) == n  # 3 -> 1: never 4x the best
  analytic = min_lr * r**t0  # the rate at the steepest point in log lr
  assert abs(np.log(float(res.suggestion)) - np.log(analytic)) <= np.log(r)
  assert float(res.suggestion) == pytest.approx(float(res.lrs[round(t0)]))


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(
  values=st.lists(st.floats(1.0, 3.0, width=32), min_size=20, max_size=20),
  smoothing=st.sampled_from([0.0, 0.3, 0.9]),
  nan_at=st.integers(0, 25),
)
def test_suggestion_matches_np_gradient_before_divergence(values, smoothing, nan_at):
  batches = np.array(values, np.float32)
  if nan_at < 20:
    batches[nan_at] = np.nan
  res = lr_range_test(
    batch_loss, jnp.zeros(()), batches, num_steps=20, smoothing=smoothing, suggest="steep"
  )
  d = int(res.diverged_at)
  assert d == (nan_at if nan_at < 20 else 20)  # values within 3x: NaN only
  sugg = float(res.suggestion)
  assert np.isfinite(sugg) and sugg > 0
  lrs = np.asarray(res.lrs)
  k = int(np.flatnonzero(lrs == np.float32(sugg))[0])
  if d < 2:
    assert k == 0
    return
  start = 2 if d > 2 else 0  # num_steps // 10 = 2, unless d <= 2
  g = np.gradient(np.asarray(res.smoothed[:d], np.float64))
  assert start <= k < d
  assert g[k] <= g[start:].min() + 1e-6  # the steepest one (up to float ties)


def test_first_tenth_of_the_sweep_is_skipped():
  # Steepest drop at step 0 (batch noise), then a gentler real descent with
  # its steepest point at step 14. num_steps // 10 = 3 steps are skipped.
  i = np.arange(30)
  values = 2.5 - 0.4 * np.tanh((i - 14) / 3.0)
  values[:3] = [3.0, 2.0, 2.5]
  g = np.gradient(values)
  assert np.argmin(g) == 0 and 3 + np.argmin(g[3:]) == 14
  res = lr_range_test(
    batch_loss, jnp.zeros(()), np.float32(values), num_steps=30, smoothing=0.0, suggest="steep"
  )
  assert int(res.diverged_at) == 30
  assert res.suggestion == res.lrs[14]
  # Divergence within the skipped part: all valid steps are candidates.
  early = np.float32([3.0, 2.9, 1.0, 50.0] + [1.0] * 26)
  res = lr_range_test(
    batch_loss, jnp.zeros(()), early, num_steps=30, smoothing=0.0, suggest="steep"
  )
  assert int(res.diverged_at) == 3
  assert res.suggestion == res.lrs[2]  # np.gradient: [-.1, -1, -1.9]


def test_suggestion_uses_one_sided_difference_at_last_valid_step():
  # np.gradient([3, 2.9, 2.8, 2.7, 1.0]) = [-.1, -.1, -.1, -.9, -1.7]: the
  # last valid step is steepest only if the backward difference is used there
  # (a central difference would need the diverged value at step 5).
  batches = np.float32([3.0, 2.9, 2.8, 2.7, 1.0, np.inf, 1.0, 1.0])
  res = lr_range_test(
    batch_loss, jnp.zeros(()), batches, num_steps=8, smoothing=0.0, suggest="steep"
  )
  assert int(res.diverged_at) == 5
  assert res.suggestion == res.lrs[4]


@pytest.mark.parametrize("rule", ["valley", "steep", "minimum"])
@pytest.mark.parametrize(
  "values, expected_d, minimum_at",
  [
    ([np.nan] * 6, 0, None),  # all NaN
    ([np.nan, 1, 1, 1, 1, 1], 0, None),  # NaN at the start
    ([2.0, np.inf, 1, 1, 1, 1], 1, None),  # only one valid step
    ([2.0, 100.0, 1, 1, 1, 1], 1, None),  # blows up at step 1
    # Two valid: steep ties -> first; the valley [2, 1] has s=0, e=1 and
    # picks 0 + (2 * 1) // 3 = 0; the minimum is at step 1.
    ([2.0, 1.0, 50.0, 1, 1, 1], 2, 1),
    ([1.0] * 6, 6, 0),  # flat: everything at step 0
  ],
)
def test_degenerate_cases_suggest_min_lr(values, expected_d, minimum_at, rule):
  # d < 2: no curve, every rule falls back to min_lr. Otherwise steep and
  # valley give min_lr and minimum gives its step's rate / 10.
  res = lr_range_test(
    batch_loss,
    jnp.zeros(()),
    np.float32(values),
    min_lr=1e-3,
    max_lr=1.0,
    num_steps=6,
    smoothing=0.0,
    suggest=rule,
  )
  assert int(res.diverged_at) == expected_d
  if rule == "minimum" and minimum_at is not None:
    np.testing.assert_array_max_ulp(  # the division's rounding, see below
      np.float32(res.suggestion), np.float32(res.lrs[minimum_at]) / np.float32(10), maxulp=1
    )
  else:
    assert res.suggestion == np.float32(1e-3)
  assert np.all(np.isnan(np.asarray(res.losses[expected_d + 1 :])))


def two_descents():
  """A short steep drop (steps 3-6), then a long gentle descent (7-26).

  n = 30, so steps 0-2 are skipped. Steep: np.gradient is -0.6 at step 4 (the
  drop), -0.15 in the gentle descent. Valley: the gentle descent is the longest
  strictly decreasing subsequence (20 steps; the drop's points can only start
  shorter ones, e.g. 3.0 then the 14 gentle points below 3.0), so e = 26,
  s = 7 and the pick is 7 + (2 * 19) // 3 = 19. Minimum: 1.0 at step 26.
  """
  gentle = 3.9 - np.arange(20) * (2.9 / 19)
  values = np.concatenate([[3.5, 3.5, 3.0], [3.0, 2.6, 1.8, 1.5], gentle, [1.1, 1.2, 1.3]])
  assert len(values) == 30 and values[26] == 1.0
  return np.float32(values)


@pytest.mark.parametrize(
  "rule, index, divisor", [("valley", 19, 1), ("steep", 4, 1), ("minimum", 26, 10)]
)
def test_rules_on_two_descents(rule, index, divisor):
  values = two_descents()
  g = np.gradient(values.astype(np.float64))
  assert 3 + np.argmin(g[3:]) == 4  # the construction does what it says
  res = lr_range_test(batch_loss, jnp.zeros(()), values, num_steps=30, smoothing=0.0, suggest=rule)
  assert int(res.diverged_at) == 30
  assert res.suggestion == res.lrs[index] / np.float32(divisor)
  assert res.suggestion == reference_suggestion(res.lrs, res.smoothed, 30, 30, rule)


def test_default_rule_is_valley():
  values = two_descents()
  res = lr_range_test(batch_loss, jnp.zeros(()), values, num_steps=30, smoothing=0.0)
  assert res.suggestion == res.lrs[19]  # inside the long descent, not at 4


def test_valley_bridges_bumps_in_a_descent():
  # Steps 4-35 descend by 0.04 a step, but every fourth step (7, 11, ..., 35)
  # bumps 0.01 above the step before it: no strictly decreasing *run* is longer
  # than 3 steps. The subsequence takes 3 steps of each of the 8 blocks:
  # lds = 24, first reached at e = 34 (35, the bump, also reaches 24), so
  # s = 34 - 24 + 1 = 11 and the pick is 11 + (2 * 23) // 3 = 26.
  k = np.arange(40)
  values = 2.0 - 0.04 * (np.clip(k, 4, 35) - 4)
  values[(k >= 4) & (k <= 35) & ((k - 4) % 4 == 3)] += 0.05
  values[36:] = values[34] + 0.1 * np.arange(1, 5)
  values = np.float32(values)
  runs = np.diff(np.flatnonzero(np.diff(values) >= 0))
  assert runs.max() <= 4  # no strictly decreasing run of more than 4 points
  res = lr_range_test(batch_loss, jnp.zeros(()), values, num_steps=40, smoothing=0.0)
  assert int(res.diverged_at) == 40
  assert reference_valley_index(values, 40, 40) == 26
  assert res.suggestion == res.lrs[26]


@pytest.mark.parametrize(
  "rule, index, divisor",
  [
    ("valley", 13, 1),  # s = 2, e = 19: 2 + (2 * 17) // 3
    ("steep", 2, 1),  # constant slope: the first candidate
    ("minimum", 19, 10),
  ],
)
def test_rules_on_a_straight_descent(rule, index, divisor):
  values = np.float32(30.0 - np.arange(20))
  res = lr_range_test(batch_loss, jnp.zeros(()), values, num_steps=20, smoothing=0.0, suggest=rule)
  assert res.suggestion == res.lrs[index] / np.float32(divisor)


@pytest.mark.parametrize("rule, divisor", [("valley", 1), ("steep", 1), ("minimum", 10)])
def test_rules_on_a_rising_curve_pick_the_first_candidate(rule, divisor):
  # Nothing decreases: valley has L = 1 everywhere (first candidate), steep
  # the least increase (all equal: first), minimum the first candidate.
  values = np.float32(1.0 + 0.01 * np.arange(20))
  res = lr_range_test(batch_loss, jnp.zeros(()), values, num_steps=20, smoothing=0.0, suggest=rule)
  assert res.suggestion == res.lrs[2] / np.float32(divisor)


def test_minimum_skips_the_first_tenth():
  # The lowest value is at step 0, inside the skipped tenth (n // 10 = 2); the
  # lowest candidate is the end of the descent, step 19.
  values = np.float32(np.concatenate([[0.9, 2.0], 2.0 - 0.05 * np.arange(18)]))
  res = lr_range_test(
    batch_loss, jnp.zeros(()), values, num_steps=20, smoothing=0.0, suggest="minimum"
  )
  assert int(res.diverged_at) == 20
  assert res.suggestion == res.lrs[19] / np.float32(10)


def test_rules_stop_at_divergence():
  # The long gentle descent of two_descents(), cut at step 16 by an Inf: only
  # steps 3-15 are candidates. Valley: 3.0 (step 3) then the gentle points
  # 13-15 below it are shorter than the gentle run 7-15 (9 steps), so e = 15,
  # s = 7, pick 7 + (2 * 8) // 3 = 12. Minimum: the gentle descent only got
  # to 2.68, so the end of the short drop, 1.5 at step 6, is the lowest.
  values = two_descents()
  values[16] = np.inf
  for rule, expected in [("valley", 12), ("minimum", 6)]:
    res = lr_range_test(
      batch_loss, jnp.zeros(()), values, num_steps=30, smoothing=0.0, suggest=rule
    )
    assert int(res.diverged_at) == 16
    divisor = np.float32(10 if rule == "minimum" else 1)
    assert res.suggestion == res.lrs[expected] / divisor


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(
  values=st.lists(st.floats(1.0, 3.0, width=32), min_size=20, max_size=20),
  smoothing=st.sampled_from([0.0, 0.3, 0.9]),
  nan_at=st.integers(0, 25),
  rule=st.sampled_from(["valley", "minimum"]),
)
def test_valley_and_minimum_match_reference(values, smoothing, nan_at, rule):
  batches = np.array(values, np.float32)
  if nan_at < 20:
    batches[nan_at] = np.nan
  res = lr_range_test(
    batch_loss, jnp.zeros(()), batches, num_steps=20, smoothing=smoothing, suggest=rule
  )
  d = int(res.diverged_at)
  assert d == (nan_at if nan_at < 20 else 20)
  expected = reference_suggestion(res.lrs, np.asarray(res.smoothed), d, 20, rule)
  # The same point of the sweep; "minimum" divides its rate by 10, which XLA
  # may compute as a product by 0.1 (one ulp apart from numpy's division).
  np.testing.assert_array_max_ulp(np.float32(res.suggestion), np.float32(expected), maxulp=1)
  assert np.isfinite(float(res.suggestion)) and float(res.suggestion) > 0
  assert res.suggestion.shape == () and res.suggestion.dtype == jnp.float32


@pytest.mark.parametrize(
  "bad", ["Valley", "steepest", "", "min", None, 0, ("valley",), np.array("valley")]
)
def test_invalid_suggest_names_the_value(bad):
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    lr_range_test(batch_loss, jnp.zeros(()), jnp.ones(3), suggest=bad)


def test_changing_the_rule_does_not_retrace_the_sweep():
  traces = []

  def loss_fn(w, b):
    traces.append(1)
    return jnp.sum((w - b) ** 2)

  results = {}
  for rule in ("valley", "steep", "minimum", "valley"):
    results[rule] = lr_range_test(
      loss_fn, jnp.zeros(3), jnp.ones((4, 3)), min_lr=1e-4, max_lr=1.0, num_steps=30, suggest=rule
    )
  assert len(traces) == 1
  # One sweep, three readings of the same curve.
  np.testing.assert_array_equal(
    np.asarray(results["steep"].smoothed), np.asarray(results["valley"].smoothed)
  )


# ---------------------------------------------------------------------------
# Divergence.


@pytest.mark.parametrize("smoothing", [0.0, 0.7])
def test_divergence_freezes_params_and_marks_steps(smoothing):
  n = 30
  batches = np.ones(n, np.float32)
  batches[12:] = 50.0  # a jump the EMA sees at step 12 at the latest
  res = lr_range_test(
    counting_loss, jnp.zeros(()), batches, min_lr=1e-3, max_lr=1.0, num_steps=n, smoothing=smoothing
  )
  sm_ref = ema_reference(batches, smoothing)
  best = np.minimum.accumulate(sm_ref)
  expected_d = int(np.flatnonzero(sm_ref[1:] > 4.0 * best[:-1])[0] + 1)
  assert int(res.diverged_at) == expected_d
  if smoothing == 0.0:
    assert expected_d == 12
  d = expected_d
  np.testing.assert_array_equal(np.asarray(res.losses[: d + 1]), batches[: d + 1])
  np.testing.assert_allclose(np.asarray(res.smoothed[: d + 1]), sm_ref[: d + 1], rtol=1e-6)
  assert np.all(np.isnan(np.asarray(res.losses[d + 1 :])))
  assert np.all(np.isnan(np.asarray(res.smoothed[d + 1 :])))
  # Steps 0..d-1 applied their rate; step d and all later ones are no-ops.
  lrs = np.asarray(res.lrs, np.float64)
  np.testing.assert_allclose(float(res.params), lrs[:d].sum(), rtol=1e-6)
  assert not np.isclose(float(res.params), lrs[: d + 1].sum(), rtol=1e-4)


def test_no_divergence_applies_every_step():
  res = lr_range_test(
    counting_loss, jnp.zeros(()), np.ones(30, np.float32), min_lr=1e-3, max_lr=1.0, num_steps=30
  )
  assert int(res.diverged_at) == 30
  np.testing.assert_allclose(float(res.params), np.asarray(res.lrs, np.float64).sum(), rtol=1e-6)


def quadratic_loss(w, b):
  return 0.5 * b * jnp.sum(w**2)


def test_quadratic_blow_up_matches_reference_simulation():
  # SGD on a w^2 / 2 multiplies w by (1 - lr a): the loss shrinks, then grows
  # geometrically once lr > 2 / a. Simulate the whole algorithm in float64.
  a, n, smoothing, factor = 3.0, 80, 0.9, 4.0
  lrs = sweep64(1e-3, 10.0, n).astype(np.float32).astype(np.float64)
  w, avg, best, losses, sm, d = np.ones(4), 0.0, np.inf, [], [], n
  for i, lr in enumerate(lrs):
    loss = 0.5 * a * np.sum(w**2)
    avg = smoothing * avg + (1 - smoothing) * loss
    s = avg / (1 - smoothing ** (i + 1))
    losses.append(loss)
    sm.append(s)
    if s > factor * best:
      d = i
      break
    best = min(best, s)
    w = w - lr * a * w
  assert 0 < d < n
  # The threshold is crossed by a wide margin (no borderline f32 decision).
  assert sm[d] > 1.5 * factor * best and sm[d - 1] < 0.9 * factor * best
  run = functools.partial(
    lr_range_test,
    quadratic_loss,
    jnp.ones(4),
    jnp.full((2,), a),
    min_lr=1e-3,
    max_lr=10.0,
    num_steps=n,
    smoothing=smoothing,
    diverge_factor=factor,
  )
  res = run()
  assert int(res.diverged_at) == d
  np.testing.assert_allclose(np.asarray(res.losses[: d + 1]), losses, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(res.smoothed[: d + 1]), sm, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(res.params), w, rtol=1e-4)
  k = reference_suggestion_index(np.array(sm), d, n)
  steep = run(suggest="steep")
  assert steep.suggestion == res.lrs[k]
  # The default (valley) and the minimum rule, from the same curve.
  smoothed = np.asarray(res.smoothed)
  assert res.suggestion == res.lrs[reference_valley_index(smoothed, d, n)]
  minimum = run(suggest="minimum")
  assert minimum.suggestion == res.lrs[reference_minimum_index(smoothed, d, n)] / np.float32(10)
  for r in (res, steep, minimum):  # rates that still converge
    assert float(r.suggestion) < 2.0 / a


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_loss_diverges(bad):
  batches = np.ones(20, np.float32)
  batches[9] = bad
  res = lr_range_test(
    counting_loss, jnp.zeros(()), batches, min_lr=1e-3, max_lr=1.0, num_steps=20
  )  # default smoothing 0.98
  assert int(res.diverged_at) == 9
  assert np.isfinite(float(res.suggestion)) and float(res.suggestion) > 0
  np.testing.assert_allclose(
    float(res.params), np.asarray(res.lrs[:9], np.float64).sum(), rtol=1e-6
  )


def test_negative_losses_use_relative_criterion():
  # A naive `smoothed > 4 * best` would stop at step 1 on a constant -1.
  flat = lr_range_test(
    batch_loss, jnp.zeros(()), -np.ones(10, np.float32), num_steps=10, smoothing=0.0
  )
  assert int(flat.diverged_at) == 10
  # -1 -> 2.5 rises by 3.5 > (4 - 1) * |-1|: diverged; -1 -> 1.5 does not.
  jump = lr_range_test(
    batch_loss, jnp.zeros(()), np.float32([-1, -1, 1.5, -1, 2.5, -1]), num_steps=6, smoothing=0.0
  )
  assert int(jump.diverged_at) == 4


def test_infinite_diverge_factor_stops_only_on_nan():
  batches = np.float32([1, 1e6, 1e30, 1, np.nan, 1])
  res = lr_range_test(
    batch_loss, jnp.zeros(()), batches, num_steps=6, smoothing=0.0, diverge_factor=np.inf
  )
  assert int(res.diverged_at) == 4


# ---------------------------------------------------------------------------
# Optimizers: the injected rate changes every step.


def momentum_reference(lrs, beta, scale=1.0):
  v, w = 0.0, 0.0
  for lr in np.asarray(lrs, np.float64):
    v = beta * v + 1.0
    w += scale * lr * v
  return w


@pytest.mark.parametrize("name", ["sgd", "adam", "momentum", "chain"])
def test_works_with_optimizer_factories(name):
  optimizer, expected = {
    "sgd": (optax.sgd, lambda lrs: lrs.sum()),
    # Adam's update for a constant gradient is exactly lr (up to eps).
    "adam": (optax.adam, lambda lrs: lrs.sum()),
    "momentum": (
      functools.partial(optax.sgd, momentum=0.9),
      lambda lrs: momentum_reference(lrs, 0.9),
    ),
    "chain": (
      lambda learning_rate: optax.chain(optax.scale(2.0), optax.sgd(learning_rate)),
      lambda lrs: 2.0 * lrs.sum(),
    ),
  }[name]
  res = lr_range_test(
    counting_loss,
    jnp.zeros(()),
    np.ones(25, np.float32),
    optimizer=optimizer,
    min_lr=1e-3,
    max_lr=1.0,
    num_steps=25,
  )
  lrs = np.asarray(res.lrs, np.float64)
  assert int(res.diverged_at) == 25
  np.testing.assert_allclose(float(res.params), expected(lrs), rtol=1e-5)
  # The rate followed the sweep: a constant rate at either end of it
  # sweep would end somewhere else.
  for const in (lrs[0], lrs[-1]):
    assert abs(float(res.params) / expected(np.full(25, const)) - 1) > 0.1


def test_bfloat16_params_with_adam():
  params = {"w": jnp.zeros(3, jnp.bfloat16)}
  loss_fn = lambda p, x: jnp.mean((x @ p["w"].astype(jnp.float32) - 1.0) ** 2)
  res = lr_range_test(
    loss_fn,
    params,
    jnp.ones((4, 8, 3)),
    optimizer=optax.adam,
    min_lr=1e-3,
    max_lr=1.0,
    num_steps=30,
    smoothing=0.5,
  )
  assert res.params["w"].dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(res.losses[:10])))
  assert float(res.losses[10]) < float(res.losses[0])


def test_rejects_factory_without_learning_rate_keyword():
  with pytest.raises(TypeError, match="learning_rate"):
    lr_range_test(batch_loss, jnp.zeros(()), jnp.ones(3), optimizer=lambda lr: optax.sgd(lr))


# ---------------------------------------------------------------------------
# Caller's params, compilation, validation.


def test_callers_params_untouched():
  params = {"a": jnp.arange(3.0), "b": [jnp.ones((2, 2))]}
  before = jax.tree_util.tree_map(np.array, params)
  res = lr_range_test(
    lambda p, x: jnp.sum((p["a"] - x) ** 2) + jnp.sum(p["b"][0] ** 2),
    params,
    jnp.ones((2, 3)),
    min_lr=1e-3,
    max_lr=0.1,
    num_steps=10,
  )
  for leaf, ref in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(before)):
    assert not leaf.is_deleted()
    np.testing.assert_array_equal(np.asarray(leaf), ref)
  assert jax.tree_util.tree_structure(res.params) == (jax.tree_util.tree_structure(params))
  assert not np.allclose(np.asarray(res.params["a"]), before["a"])


def test_compiles_once_for_same_shapes():
  traces = []

  def loss_fn(w, b):
    traces.append(1)  # Python side effect: runs once per trace
    return jnp.sum((w - b) ** 2)

  lr_range_test(loss_fn, jnp.zeros(3), jnp.ones((4, 3)), min_lr=1e-4, max_lr=1.0, num_steps=30)
  first = len(traces)
  assert first >= 1
  # Other values of every traced argument: no new trace.
  res = lr_range_test(
    loss_fn,
    jnp.full(3, 2.0, jnp.float32),
    3 * jnp.ones((4, 3)),
    min_lr=1e-3,
    max_lr=2.0,
    num_steps=30,
    smoothing=0.5,
    diverge_factor=8.0,
  )
  assert len(traces) == first
  assert res.lrs[0] == np.float32(1e-3) and res.lrs[-1] == np.float32(2.0)


def test_unhashable_callables_are_cached_by_identity():
  traces = []

  class Loss:
    __hash__ = None  # e.g. a dataclass with eq=True

    def __eq__(self, other):
      return isinstance(other, Loss)

    def __call__(self, w, b):
      traces.append(1)
      return jnp.sum((w - b) ** 2)

  loss_fn = Loss()
  for max_lr in (0.1, 0.2):
    res = lr_range_test(
      loss_fn, jnp.zeros(2), jnp.ones((3, 2)), min_lr=1e-3, max_lr=max_lr, num_steps=12
    )
  assert len(traces) == 1
  assert float(res.losses[-1]) < float(res.losses[0])


@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(min_lr=0.0), "min_lr"),
    (dict(min_lr=-1e-3), "min_lr"),
    (dict(min_lr=float("nan")), "min_lr"),
    (dict(min_lr=1e-50), "min_lr"),  # underflows float32
    (dict(min_lr=0.1, max_lr=0.1), "max_lr"),
    (dict(min_lr=0.1, max_lr=0.01), "max_lr"),
    (dict(max_lr=float("inf")), "max_lr"),
    (dict(max_lr=1e40), "max_lr"),  # overflows float32
    (dict(num_steps=1), "num_steps"),
    (dict(num_steps=0), "num_steps"),
    (dict(smoothing=1.0), "smoothing"),
    (dict(smoothing=-0.1), "smoothing"),
    (dict(diverge_factor=1.0), "diverge_factor"),
    (dict(diverge_factor=0.5), "diverge_factor"),
    (dict(diverge_factor=float("nan")), "diverge_factor"),
  ],
)
def test_invalid_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    lr_range_test(batch_loss, jnp.zeros(()), jnp.ones(3), **kwargs)


@pytest.mark.parametrize(
  "batches",
  [
    {},  # no leaves
    jnp.zeros((0, 3)),  # zero batches
    {"x": jnp.ones((4, 3)), "y": jnp.ones((5,))},  # sizes disagree
    jnp.array(1.0),  # no leading axis
  ],
)
def test_invalid_batches(batches):
  with pytest.raises(ValueError, match="batches"):
    lr_range_test(batch_loss, jnp.zeros(()), batches)


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(num_steps=2.5),
    dict(num_steps=True),
    dict(min_lr="big"),
    dict(optimizer=None),
    dict(optimizer=3.0),
  ],
)
def test_type_errors(kwargs):
  with pytest.raises(TypeError):
    lr_range_test(batch_loss, jnp.zeros(()), jnp.ones(3), **kwargs)


def test_non_callable_loss_fn():
  with pytest.raises(TypeError, match="loss_fn"):
    lr_range_test(None, jnp.zeros(()), jnp.ones(3))


def test_accepts_numpy_scalars():
  res = lr_range_test(
    batch_loss,
    np.zeros((), np.float32),
    np.ones(3),
    min_lr=np.float32(1e-3),
    max_lr=jnp.array(1.0),
    num_steps=np.int64(5),
  )
  assert res.lrs.shape == (5,)


# ---------------------------------------------------------------------------
# A real problem: a small MLP on sklearn's digits.


@pytest.fixture(scope="module")
def digits():
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)  # pixel values 0..16 -> [0, 1]
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm].astype(np.int32)
  nb = len(x) // 64
  batches = (x[: nb * 64].reshape(nb, 64, 64), y[: nb * 64].reshape(nb, 64))
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {
    "w1": jax.random.normal(k1, (64, 32)) / 8.0,
    "b1": jnp.zeros(32),
    "w2": jax.random.normal(k2, (32, 10)) / np.sqrt(32.0),
    "b2": jnp.zeros(10),
  }
  return x, y, batches, params


def mlp_loss(p, batch):
  x, t = batch
  logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()


@functools.partial(jax.jit, static_argnums=2)
def train_sgd(params, batches, epochs, lr):
  opt = optax.sgd(lr)

  def step(carry, batch):
    p, s = carry
    g = jax.grad(mlp_loss)(p, batch)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  carry = (params, opt.init(params))
  for _ in range(epochs):
    carry, _ = jax.lax.scan(step, carry, batches)
  return carry[0]


# On this tanh net steep picks 1.0 (the best of a 0.01-3 grid; 3 diverges),
# valley 0.25 and minimum 0.2: the lower two need more epochs.
@pytest.mark.parametrize("rule, epochs", [("steep", 3), ("valley", 10), ("minimum", 10)])
def test_digits_mlp_suggestion_trains_well(digits, rule, epochs):
  x, y, batches, params = digits
  res = lr_range_test(
    mlp_loss, params, batches, min_lr=1e-4, max_lr=100.0, num_steps=100, suggest=rule
  )
  lr = float(res.suggestion)
  assert 1e-3 <= lr <= 5.0
  d = int(res.diverged_at)
  assert 0 < d < 100  # SGD on this net blows up well before 100
  assert float(jnp.min(res.smoothed[:d])) < 0.9 * float(res.smoothed[0])
  initial = float(mlp_loss(params, (x, y)))
  good = train_sgd(params, batches, epochs, lr)
  slow = train_sgd(params, batches, epochs, float(res.lrs[0]))
  good_loss = float(mlp_loss(good, (x, y)))
  slow_loss = float(mlp_loss(slow, (x, y)))
  assert good_loss < 0.3 < 0.9 * initial
  assert good_loss < 0.2 * slow_loss
  logits = jnp.tanh(x @ good["w1"] + good["b1"]) @ good["w2"] + good["b2"]
  assert float(jnp.mean(jnp.argmax(logits, -1) == y)) > 0.9


def relu_mlp_loss(ps, batch):
  x, t = batch
  for p in ps[:-1]:
    x = jax.nn.relu(x @ p["w"] + p["b"])
  logits = x @ ps[-1]["w"] + ps[-1]["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()


def test_valley_trains_where_steep_sits_at_divergence():
  # The case that made valley the default: a ReLU MLP 64-128-128-10 on the
  # first 992 digits (batches of 32, in order), PyTorch-style uniform init,
  # SGD swept 1e-5 -> 100 over 200 steps. The dead-ReLU plateau keeps the
  # smoothed loss under 4x its best for long, and steep picks 7.49, where SGD
  # at a constant rate does not train. Held-out: digits 1400 onwards.
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
  batches = (jnp.asarray(x[:992].reshape(31, 32, 64)), jnp.asarray(y[:992].reshape(31, 32)))
  held_out = (jnp.asarray(x[1400:]), jnp.asarray(y[1400:]))
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  params = [
    {"w": jax.random.uniform(k, (a, b), minval=-1.0, maxval=1.0) / np.sqrt(a), "b": jnp.zeros(b)}
    for k, (a, b) in zip(keys, [(64, 128), (128, 128), (128, 10)])
  ]

  @jax.jit
  def held_out_loss(lrs):  # 30 epochs of SGD at each constant rate
    def train(lr):
      opt = optax.sgd(lr)

      def step(carry, batch):
        p, s = carry
        u, s = opt.update(jax.grad(relu_mlp_loss)(p, batch), s, p)
        return (optax.apply_updates(p, u), s), None

      def epoch(carry, key):
        perm = jax.random.permutation(key, 992)
        shuffled = jax.tree_util.tree_map(
          lambda b: b.reshape((992,) + b.shape[2:])[perm].reshape(b.shape), batches
        )
        return jax.lax.scan(step, carry, shuffled)[0], None

      carry = (params, opt.init(params))
      carry, _ = jax.lax.scan(epoch, carry, jax.random.split(jax.random.PRNGKey(1), 30))
      return relu_mlp_loss(carry[0], held_out)

    return jax.vmap(train)(lrs)

  kwargs = dict(min_lr=1e-5, max_lr=100.0, num_steps=200)
  valley = lr_range_test(relu_mlp_loss, params, batches, **kwargs)
  steep = lr_range_test(relu_mlp_loss, params, batches, suggest="steep", **kwargs)
  grid = np.float32([1e-2, 0.1, 1.0])
  losses = np.asarray(
    held_out_loss(
      jnp.concatenate([jnp.asarray(grid), jnp.stack([valley.suggestion, steep.suggestion])])
    )
  )
  losses = np.where(np.isfinite(losses), losses, np.inf)
  best = losses[:3].min()
  assert 0.01 < float(valley.suggestion) < 1.0
  assert losses[3] < 1.5 * best
  # Not vacuous: the steepest-slope rate does not train here.
  assert float(steep.suggestion) > 1.0 and losses[4] > 1.5 * best
