"""Tests for optax_lr.schedules.

Every schedule is checked against its formula written out independently here
in plain Python float64 (a literal transcription of PyTorch's CyclicLR.get_lr,
a loop that walks the SGDR cycles one by one), at many steps including step 0
and the cycle / restart boundaries, under jit and vmap, and against a few
numbers computed by hand.

Compilation dominates the run time, so each test evaluates all its schedules
in one jit-compiled call (`evaluate_all`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_lr.schedules import cyclic_schedule
from optax_lr.schedules import inverse_time_decay
from optax_lr.schedules import per_epoch
from optax_lr.schedules import sgdr_schedule

INT32_MAX = 2**31 - 1
EPS32 = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------
# Independent float64 references.


def torch_cyclic_lr(
  last_epoch, base_lr, max_lr, step_size_up, step_size_down=None, mode="triangular", gamma=1.0
):
  """torch.optim.lr_scheduler.CyclicLR.get_lr, for one parameter group."""
  step_size_up = float(step_size_up)
  step_size_down = float(step_size_down) if step_size_down is not None else step_size_up
  total_size = step_size_up + step_size_down
  step_ratio = step_size_up / total_size

  def scale_fn(x):
    if mode == "triangular":
      return 1.0
    if mode == "triangular2":
      try:
        return 1 / (2.0 ** (x - 1))
      except OverflowError:  # Python floats overflow where float32 gives 0
        return 0.0
    return gamma**x

  scale_mode = "iterations" if mode == "exp_range" else "cycle"
  cycle = math.floor(1 + last_epoch / total_size)
  x = 1.0 + last_epoch / total_size - cycle
  if x <= step_ratio:
    scale_factor = x / step_ratio
  else:
    scale_factor = (x - 1) / (step_ratio - 1)
  base_height = (max_lr - base_lr) * scale_factor
  if scale_mode == "cycle":
    return base_lr + base_height * scale_fn(cycle)
  return base_lr + base_height * scale_fn(last_epoch)


def sgdr_walk(counts, init_value, first_period, period_mult, min_value):
  """SGDR by walking the cycles one by one, through ascending `counts`.

  Returns (values, cycle starts, cycle ends), one each per count. Integer
  periods stay Python ints, so far-out restarts are exact.
  """
  values, starts, ends = [], [], []
  start, period, previous = 0, first_period, -math.inf
  for count in counts:
    assert count >= previous, "counts must ascend"
    previous = count
    while count >= start + period:
      start, period = start + period, period * period_mult
    values.append(
      min_value
      + 0.5 * (init_value - min_value) * (1 + math.cos(math.pi * (count - start) / period))
    )
    starts.append(start)
    ends.append(start + period)
  return np.array(values), np.array(starts, float), np.array(ends, float)


def sgdr_reference(count, *args):
  return sgdr_walk([count], *args)[0][0]


def sgdr_restarts(first_period, period_mult, limit):
  """Restart steps S_1, S_2, ... up to `limit`, walking cycles in Python."""
  starts, start, period = [], 0, first_period
  while start + period <= limit:
    start, period = start + period, period * period_mult
    starts.append(start)
  return starts


def inverse_time_reference(count, init_value, decay_rate, transition_steps, staircase):
  p = count / transition_steps
  if staircase:
    p = math.floor(p)
  return init_value / (1 + decay_rate * p)


def evaluate_all(pairs):
  """[(schedule, counts array)] -> float64 values, in one jit compilation."""
  schedules = [schedule for schedule, _ in pairs]
  run = jax.jit(lambda *counts: [s(c) for s, c in zip(schedules, counts)])
  return [np.asarray(out, np.float64) for out in run(*[c for _, c in pairs])]


def evaluate(schedule, counts, dtype=jnp.int32):
  return evaluate_all([(schedule, jnp.asarray(counts, dtype))])[0]


# --------------------------------------------------------------------------
# cyclic_schedule


def test_cyclic_hand_computed():
  # up 2, down 4: 0.1 -> 0.55 -> 1.0 (peak), then down by 0.225 per step.
  asym = cyclic_schedule(0.1, 1.0, step_size_up=2, step_size_down=4)
  tri2 = cyclic_schedule(0.0, 1.0, step_size_up=1, mode="triangular2")
  exp = cyclic_schedule(0.0, 1.0, step_size_up=1, mode="exp_range", gamma=0.5)
  # In float32 41 * (1 / 41) != 1 and 0.07 + (0.2 - 0.07) != 0.2: exact
  # peaks need neither to round well.
  odd = cyclic_schedule(0.07, 0.2, step_size_up=41, step_size_down=3)
  counts = jnp.arange(8)
  got = evaluate_all(
    [(asym, counts), (tri2, counts), (exp, counts), (odd, counts * 44), (odd, counts * 44 + 41)]
  )
  np.testing.assert_allclose(got[0], [0.1, 0.55, 1.0, 0.775, 0.55, 0.325, 0.1, 0.55], rtol=1e-6)
  np.testing.assert_allclose(got[1], [0, 1, 0, 0.5, 0, 0.25, 0, 0.125], atol=1e-7)
  np.testing.assert_allclose(got[2], [0, 0.5, 0, 0.125, 0, 0.5**5, 0, 0.5**7], rtol=1e-6, atol=1e-9)
  # Cycle starts give base and peaks give max exactly, not just closely.
  np.testing.assert_array_equal(got[0][[0, 2, 6]], np.float32([0.1, 1.0, 0.1]))
  np.testing.assert_array_equal(got[3], np.float32(0.07))
  np.testing.assert_array_equal(got[4], np.float32(0.2))


CYCLIC_SHAPES = [(1, None), (2, 4), (5, None), (3, 7), (4, 1), (2.5, 1.5), (2.5, 1)]


@pytest.mark.parametrize(
  "mode,gamma",
  [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.99), ("exp_range", 1.02)],
)
def test_cyclic_matches_torch(mode, gamma):
  # Alternately rising (base < max) and falling (base > max, as PyTorch allows).
  configs = [
    (base, peak, up, down)
    for (up, down), (base, peak) in zip(
      CYCLIC_SHAPES, [(0.001, 0.1), (1.0, 0.2)] * len(CYCLIC_SHAPES)
    )
  ]
  pairs, wants, scales = [], [], []
  for base, peak, up, down in configs:
    sched = cyclic_schedule(base, peak, up, down, mode=mode, gamma=gamma)
    total = up + (down or up)
    # Four whole cycles (every boundary and peak), far counts, fractions.
    int_counts = list(range(0, 4 * math.ceil(total) + 3))
    int_counts += [10**6 - 1, 10**6, 10**6 + 1, INT32_MAX - 1, INT32_MAX]
    float_counts = list(np.arange(0.0, 12.0, 0.25))
    for counts, dtype in [(int_counts, jnp.int32), (float_counts, jnp.float32)]:
      if gamma > 1:  # gamma ** count overflows far out
        counts = [c for c in counts if c < 300]
      if not float(total).is_integer():  # float arithmetic: float32-exact counts
        counts = [c for c in counts if c < 2**24]
      pairs.append((sched, jnp.asarray(counts, dtype)))
      wants.append([torch_cyclic_lr(c, base, peak, up, down, mode, gamma) for c in counts])
      # Errors scale with the largest magnitude involved.
      scales.append([max(abs(base), abs(peak)) * max(1.0, gamma**c) for c in counts])
  for got, want, scale in zip(evaluate_all(pairs), wants, scales):
    np.testing.assert_allclose(got / scale, np.divide(want, scale), rtol=1e-5, atol=1e-6)


def test_cyclic_default_down_equals_up_and_gamma_only_for_exp_range():
  counts = jnp.arange(40)
  a, b, c = evaluate_all(
    [
      (cyclic_schedule(0.1, 1.0, 3, gamma=0.5), counts),
      (cyclic_schedule(0.1, 1.0, 3, 3), counts),
      (cyclic_schedule(0.1, 1.0, 3, mode="exp_range", gamma=0.5), counts),
    ]
  )
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


# --------------------------------------------------------------------------
# inverse_time_decay


def test_inverse_time_hand_computed():
  smooth, stairs = evaluate_all(
    [
      (inverse_time_decay(1.0, decay_rate=0.5, transition_steps=2), jnp.arange(5)),
      (inverse_time_decay(1.0, 0.5, transition_steps=2, staircase=True), jnp.arange(6)),
    ]
  )
  np.testing.assert_allclose(smooth, [1, 1 / 1.25, 1 / 1.5, 1 / 1.75, 0.5], rtol=1e-6)
  np.testing.assert_allclose(stairs, [1, 1, 1 / 1.5, 1 / 1.5, 0.5, 0.5], rtol=1e-6)


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_time_matches_formula(staircase):
  int_counts = list(range(0, 320)) + [10**6, 10**6 + 1, INT32_MAX]
  float_counts = list(np.arange(0.0, 40.0, 0.125))
  pairs, wants = [], []
  for init, rate, steps in [
    (0.1, 0.01, 1),
    (1.0, 0.5, 3),
    (2.0, 1.0, 2.5),
    (0.3, 0.2, 100),
    (0.5, 0.0, 7),
  ]:
    sched = inverse_time_decay(init, rate, steps, staircase=staircase)
    for counts, dtype in [(int_counts, jnp.int32), (float_counts, jnp.float32)]:
      pairs.append((sched, jnp.asarray(counts, dtype)))
      wants.append([inverse_time_reference(c, init, rate, steps, staircase) for c in counts])
  for got, want in zip(evaluate_all(pairs), wants):
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_inverse_time_staircase_is_constant_within_each_block():
  sched = inverse_time_decay(1.0, 0.3, transition_steps=5, staircase=True)
  values = evaluate(sched, np.arange(50)).reshape(10, 5)
  assert np.all(values == values[:, :1])  # constant inside a block
  assert np.all(np.diff(values[:, 0]) < 0)  # and it drops at each block start


# --------------------------------------------------------------------------
# sgdr_schedule


def test_sgdr_hand_computed():
  # T0 = 2, m = 2: cycles [0, 2), [2, 6), [6, 14).
  doubling, constant = evaluate_all(
    [
      (sgdr_schedule(1.0, first_period=2, period_mult=2), jnp.arange(8)),
      (sgdr_schedule(1.0, first_period=4, min_value=0.2), jnp.arange(0, 8, 2)),
    ]
  )
  r = math.sqrt(0.5)
  want = [1, 0.5, 1, 0.5 + 0.5 * r, 0.5, 0.5 - 0.5 * r, 1, 0.5 + 0.5 * math.cos(math.pi / 8)]
  np.testing.assert_allclose(doubling, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(constant, [1, 0.6, 1, 0.6], rtol=1e-6)


# (first_period, period_mult): integer (the exact integer path for int32
# counts), m = 1, non-integer T0, m = 1.5 (m - 1 a power of two: still exact),
# m = 2.5 (1 / (m - 1) rounded), and inexact m (1.1, 1.01, 1.0001) near 1.
SGDR_CONFIGS = [
  (10, 1),
  (7, 1.0),
  (2.5, 1),
  (1, 2),
  (10, 2.0),
  (3, 3),
  (2, 7),
  (4, 1.5),
  (5, 2.5),
  (2.5, 2),
  (10, 1.1),
  (10, 1.01),
  (3, 1.0001),
]


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.float32])
def test_sgdr_matches_cycle_walk(dtype):
  init, low = 0.5, 0.01
  counts = np.arange(0, 3000) if dtype == jnp.int32 else np.arange(0.0, 600.0, 0.25)
  scheds = [sgdr_schedule(init, t0, m, min_value=low) for t0, m in SGDR_CONFIGS]
  got_all = evaluate_all([(s, jnp.asarray(counts, dtype)) for s in scheds])
  for (t0, m), got in zip(SGDR_CONFIGS, got_all):
    want, start, end = sgdr_walk([float(c) for c in counts], init, t0, m, low)
    if float(m).is_integer() or math.log2(m - 1).is_integer():
      np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=f"{t0}, {m}")
    else:
      # Cycle starts are exact for integer m and for m - 1 a power of two.
      # Otherwise (1.1 is no float; 1 / 1.5 is rounded) restarts land at
      # float32-rounded positions: skip counts within 1e-3 of a boundary,
      # and allow the float32 resolution of the start relative to the period.
      keep = np.minimum(counts - start, end - counts) > 1e-3
      assert keep.mean() > 0.95
      tol = 2e-6 + (init - low) * 8 * EPS32 * start / (end - start)
      assert np.all(np.abs(got - want)[keep] <= tol[keep]), (t0, m)


@pytest.mark.parametrize(
  "dtype,configs",
  [
    (
      jnp.int32,
      [
        (1000, 2, INT32_MAX),  # the 20th restart is at 1,048,575,000
        (1, 2, INT32_MAX),  # the 31st restart is INT32_MAX itself
        (1, 3, INT32_MAX),  # 3**20 overflows int32; S_20 does not
        (5, 7, INT32_MAX),
        (1, 1, 300),
        (256, 1.5, 2**24),  # dyadic m: 256, 640, 1216, 2080, ...
      ],
    ),
    (
      jnp.float32,
      [
        (10, 2, 2**24),  # the 20th restart: 10,485,750
        (7, 4, 2**24),  # 1 / (m - 1) is not exact
        (256, 1.5, 2**24),
        (3, 1, 3000),
        (0.5, 3, 2**24),  # non-integer T0: the even restarts
      ],
    ),
  ],
)
def test_sgdr_exact_at_every_restart(dtype, configs):
  init, low = 0.1, 0.02  # in float32, 0.02 + (0.1 - 0.02) != 0.1
  pairs, nears = [], []
  for t0, m, limit in configs:
    sched = sgdr_schedule(init, t0, m, min_value=low)
    starts = np.array([s for s in sgdr_restarts(t0, m, limit) if float(s).is_integer()], np.int64)
    assert len(starts) >= 8
    near = np.concatenate([starts - 1, starts + 1])
    near = np.sort(near[near <= limit])
    pairs.append((sched, jnp.asarray(np.concatenate([starts, near]), dtype)))
    nears.append(near)
  got = evaluate_all(pairs)
  for k, (t0, m, _) in enumerate(configs):
    at, around = np.split(got[k], [len(got[k]) - len(nears[k])])
    np.testing.assert_array_equal(at, np.float32(init), err_msg=f"{t0}, {m}")
    want = sgdr_walk([int(c) for c in nears[k]], init, t0, m, low)[0]
    np.testing.assert_allclose(around, want, rtol=0, atol=1e-6, err_msg=f"{t0}, {m}")


@pytest.mark.parametrize("t0", [3, 100])
def test_sgdr_first_restart_is_exact_for_any_period_mult(t0):
  # S_1 = T0 whatever m is, also when m is inexact (1.1) or close to 1.
  mults = [1.1, 1.7, 2.5, 1.0001]
  counts = [t0 - 1, t0, t0 + 1]
  got = evaluate_all(
    [
      (sgdr_schedule(0.1, t0, m, 0.001), jnp.asarray(counts, dtype))
      for m in mults
      for dtype in [jnp.int32, jnp.float32]
    ]
  )
  for k, m in enumerate(mults):
    want = sgdr_walk(counts, 0.1, t0, m, 0.001)[0]
    for values in got[2 * k : 2 * k + 2]:
      assert values[1] == np.float32(0.1), m
      np.testing.assert_allclose(values, want, rtol=0, atol=1e-6, err_msg=str(m))


def test_sgdr_far_counts_int32():
  # Away from restarts too, up to INT32_MAX, on the integer path.
  rng = np.random.default_rng(0)
  counts = np.sort(
    np.concatenate(
      [rng.integers(0, INT32_MAX, 300, endpoint=True), [INT32_MAX, INT32_MAX - 1, 2**30, 2**30 - 1]]
    )
  )
  configs = [(1, 2), (1000, 2), (1, 3), (13, 4)]
  got = evaluate_all(
    [(sgdr_schedule(1.0, t0, m), jnp.asarray(counts, jnp.int32)) for t0, m in configs]
  )
  for (t0, m), values in zip(configs, got):
    want = sgdr_walk([int(c) for c in counts], 1.0, t0, m, 0.0)[0]
    np.testing.assert_allclose(values, want, rtol=0, atol=2e-6, err_msg=f"{t0}, {m}")
  assert np.ptp(got[0]) > 0.9  # the counts do land all over the cosine


def test_sgdr_min_value_above_init_and_negative_counts():
  sched = sgdr_schedule(0.1, first_period=4, min_value=0.5)
  np.testing.assert_allclose(evaluate(sched, [-5, 0, 2, 4]), [0.1, 0.1, 0.3, 0.1], rtol=1e-6)


# --------------------------------------------------------------------------
# per_epoch


@pytest.mark.parametrize("steps", [1, 4, 7.0])
def test_per_epoch_is_schedule_at_epoch_and_constant_within_epoch(steps):
  inner = sgdr_schedule(1.0, first_period=3, period_mult=2)
  decay = optax.exponential_decay(1.0, transition_steps=1, decay_rate=0.5)
  n = int(steps)
  values, inner_values, halving = evaluate_all(
    [
      (per_epoch(inner, steps_per_epoch=steps), jnp.arange(40 * n)),
      (inner, jnp.arange(40)),
      (per_epoch(decay, steps_per_epoch=steps), jnp.arange(4 * n)),
    ]
  )
  values = values.reshape(40, n)
  assert np.all(values == values[:, :1])
  np.testing.assert_array_equal(values[:, 0], inner_values)
  assert len(np.unique(values[:, 0])) > 5  # the inner schedule does move
  np.testing.assert_allclose(halving, np.repeat([1, 0.5, 0.25, 0.125], n))


def test_per_epoch_passes_the_epoch_index_with_the_count_dtype():
  seen = []

  def spy(epoch):
    seen.append(epoch)
    return epoch

  sched = per_epoch(spy, steps_per_epoch=4)
  out = sched(jnp.arange(10, dtype=jnp.int32))
  assert seen[-1].dtype == jnp.int32
  np.testing.assert_array_equal(out, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
  out = sched(jnp.array([0.0, 3.99, 4.0, 7.5, 8.0], jnp.float32))
  assert seen[-1].dtype == jnp.float32
  np.testing.assert_array_equal(out, [0, 0, 1, 1, 2])


# --------------------------------------------------------------------------
# All schedules: jit, vmap, dtypes.

ALL = {
  "cyclic": (
    lambda: cyclic_schedule(0.01, 0.1, 3, 5, mode="triangular2"),
    lambda c: torch_cyclic_lr(c, 0.01, 0.1, 3, 5, "triangular2"),
  ),
  "cyclic_exp": (
    lambda: cyclic_schedule(0.01, 0.1, 3, mode="exp_range", gamma=0.9),
    lambda c: torch_cyclic_lr(c, 0.01, 0.1, 3, None, "exp_range", 0.9),
  ),
  "inverse": (
    lambda: inverse_time_decay(0.1, 0.3, 4),
    lambda c: inverse_time_reference(c, 0.1, 0.3, 4, False),
  ),
  "inverse_stairs": (
    lambda: inverse_time_decay(0.1, 0.3, 4, staircase=True),
    lambda c: inverse_time_reference(c, 0.1, 0.3, 4, True),
  ),
  "sgdr_int": (
    lambda: sgdr_schedule(0.1, 5, 2, 0.001),
    lambda c: sgdr_reference(c, 0.1, 5, 2, 0.001),
  ),
  "sgdr_m1": (lambda: sgdr_schedule(0.1, 5, 1), lambda c: sgdr_reference(c, 0.1, 5, 1, 0.0)),
  "sgdr_float": (
    lambda: sgdr_schedule(0.1, 5, 1.5, 0.001),
    lambda c: sgdr_reference(c, 0.1, 5, 1.5, 0.001),
  ),
  "sgdr_near_one": (
    lambda: sgdr_schedule(0.1, 5, 1.01, 0.001),
    lambda c: sgdr_reference(c, 0.1, 5, 1.01, 0.001),
  ),
  "per_epoch": (
    lambda: per_epoch(sgdr_schedule(0.1, 2, 2), 3),
    lambda c: sgdr_reference(c // 3, 0.1, 2, 2, 0.0),
  ),
}


def test_jit_vmap_traced_count():
  names = sorted(ALL)
  scheds = [ALL[name][0]() for name in names]
  counts = [0, 1, 2, 4, 5, 7, 14, 15, 16, 100, 1233, 99999]
  want = np.array([[ALL[name][1](c) for c in counts] for name in names])
  assert all(len(np.unique(w)) >= 5 for w in want)  # no constant schedule
  traces = []

  @jax.jit
  def at_scalar(c):
    traces.append(c)
    return jnp.stack([s(c) for s in scheds])

  by_jit = np.stack([np.asarray(at_scalar(jnp.int32(c))) for c in counts], axis=1)
  assert len(traces) == 1  # every count reuses one trace: nothing concrete
  # atol: float32 resolution of far cycle starts (m = 1.01 at count 99999).
  np.testing.assert_allclose(by_jit, want, rtol=2e-6, atol=1e-6)

  @jax.jit
  def batched(ci, cf):
    return [jax.vmap(s)(ci) for s in scheds], [jax.vmap(s)(cf) for s in scheds]

  ints, floats = batched(jnp.asarray(counts, jnp.int32), jnp.asarray(counts, jnp.float32))
  np.testing.assert_allclose(np.stack(ints), want, rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(np.stack(floats), want, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ALL))
def test_dtypes_and_shapes(name):
  sched = ALL[name][0]()
  for count in [jnp.int32(7), jnp.float32(7.0), jnp.bfloat16(7), jnp.uint8(7), 7, 7.5]:
    out = jax.eval_shape(sched, count)
    assert out.dtype == jnp.float32 and out.shape == (), (count, out)
  assert jax.eval_shape(sched, jnp.zeros((2, 3), jnp.int32)).shape == (2, 3)


def test_dtypes_follow_value_arguments():
  bf16, f32 = jnp.bfloat16, jnp.float32
  count = jnp.int32(3)
  for sched in [
    cyclic_schedule(bf16(0.1), bf16(1.0), 2),
    inverse_time_decay(bf16(0.1), 0.5),
    sgdr_schedule(bf16(0.1), 4, 2),
  ]:
    assert jax.eval_shape(sched, count).dtype == jnp.float32
  with jax.enable_x64(True):
    for count in [jnp.int64(3), jnp.float64(3.0), jnp.int32(3)]:
      for sched in [
        cyclic_schedule(0.1, 1.0, 2),
        inverse_time_decay(0.1, 0.5),
        sgdr_schedule(0.1, 4, 2),
        sgdr_schedule(0.1, 4, 1.5),
      ]:
        assert jax.eval_shape(sched, count).dtype == jnp.float64
    sched = sgdr_schedule(f32(0.1), 4, 2, f32(0))
    assert jax.eval_shape(sched, jnp.int64(3)).dtype == jnp.float32


def test_float64_precision_under_x64():
  cases = [
    (
      lambda: cyclic_schedule(0.1, 1.0, 3, 7, mode="exp_range", gamma=0.999),
      lambda c: torch_cyclic_lr(c, 0.1, 1.0, 3, 7, "exp_range", 0.999),
    ),
    (lambda: sgdr_schedule(0.3, 10, 1.5, 0.01), lambda c: sgdr_reference(c, 0.3, 10, 1.5, 0.01)),
    (lambda: sgdr_schedule(0.3, 7, 3, 0.01), lambda c: sgdr_reference(c, 0.3, 7, 3, 0.01)),
    (lambda: inverse_time_decay(0.3, 0.7, 3), lambda c: 0.3 / (1 + 0.7 * c / 3)),
  ]
  counts = np.arange(0, 2000)
  with jax.enable_x64(True):
    pairs = [
      (make(), jnp.asarray(counts, dtype))
      for make, _ in cases
      for dtype in [jnp.int64, jnp.float64]
    ]
    got = evaluate_all(pairs)
  for k, (_, ref) in enumerate(cases):
    want = [ref(int(c)) for c in counts]
    for values in got[2 * k : 2 * k + 2]:
      np.testing.assert_allclose(values, want, rtol=1e-12, atol=1e-13)


def test_sgdr_int64_counts_under_x64():
  # int64 counts: exact integer arithmetic up to 2**63 - 1 (= S_63 for T0 = 1).
  far = [2**62 - 2, 2**62 - 1, 2**62 + 12345, 2**63 - 2, 2**63 - 1]
  with jax.enable_x64(True):
    got = evaluate_all(
      [
        (sgdr_schedule(1.0, 1, 2), jnp.asarray(far, jnp.int64)),
        (sgdr_schedule(1.0, 3, 3), jnp.asarray(far, jnp.int64)),
      ]
    )
  np.testing.assert_array_equal(got[0][[1, 4]], [1.0, 1.0])
  np.testing.assert_allclose(got[0], sgdr_walk(far, 1.0, 1, 2, 0.0)[0], rtol=0, atol=1e-12)
  np.testing.assert_allclose(got[1], sgdr_walk(far, 1.0, 3, 3, 0.0)[0], rtol=0, atol=1e-12)


def test_value_arguments_may_be_traced():
  @jax.jit
  def run(base, peak, init):
    return (
      cyclic_schedule(base, peak, 2)(jnp.int32(1)),
      inverse_time_decay(init, 1.0)(jnp.int32(1)),
      sgdr_schedule(init, 4, 2, base)(jnp.int32(2)),
    )

  np.testing.assert_allclose(run(0.0, 1.0, 0.5), [0.5, 0.25, 0.25], rtol=1e-6)


# --------------------------------------------------------------------------
# Validation: every bad argument raises ValueError naming argument and value.

BAD = [
  (cyclic_schedule, dict(step_size_up=0), r"step_size_up.*0"),
  (cyclic_schedule, dict(step_size_up=-2), r"step_size_up.*-2"),
  (cyclic_schedule, dict(step_size_up=float("nan")), r"step_size_up.*nan"),
  (cyclic_schedule, dict(step_size_up=float("inf")), r"step_size_up.*inf"),
  (cyclic_schedule, dict(step_size_up="3"), r"step_size_up.*'3'"),
  (cyclic_schedule, dict(step_size_up=True), r"step_size_up.*True"),
  (cyclic_schedule, dict(step_size_up=np.array([1, 2])), r"step_size_up"),
  (cyclic_schedule, dict(step_size_down=0), r"step_size_down.*0"),
  (cyclic_schedule, dict(step_size_down=-1.5), r"step_size_down.*-1.5"),
  (cyclic_schedule, dict(mode="cosine"), r"mode.*'cosine'"),
  (cyclic_schedule, dict(mode=None), r"mode.*None"),
  (cyclic_schedule, dict(gamma=0.0), r"gamma.*0"),
  (cyclic_schedule, dict(gamma=-0.9), r"gamma.*-0.9"),
  (cyclic_schedule, dict(gamma=float("inf")), r"gamma.*inf"),
  (cyclic_schedule, dict(base_value=float("nan")), r"base_value.*nan"),
  (cyclic_schedule, dict(max_value=float("inf")), r"max_value.*inf"),
  (cyclic_schedule, dict(max_value="high"), r"max_value.*'high'"),
  (inverse_time_decay, dict(decay_rate=-0.1), r"decay_rate.*-0.1"),
  (inverse_time_decay, dict(decay_rate=float("nan")), r"decay_rate.*nan"),
  (inverse_time_decay, dict(transition_steps=0), r"transition_steps.*0"),
  (inverse_time_decay, dict(transition_steps=-5), r"transition_steps.*-5"),
  (inverse_time_decay, dict(staircase="yes"), r"staircase.*'yes'"),
  (inverse_time_decay, dict(init_value=float("nan")), r"init_value.*nan"),
  (sgdr_schedule, dict(first_period=0), r"first_period.*0"),
  (sgdr_schedule, dict(first_period=-10), r"first_period.*-10"),
  (sgdr_schedule, dict(first_period=float("inf")), r"first_period.*inf"),
  (sgdr_schedule, dict(period_mult=0.5), r"period_mult.*0.5"),
  (sgdr_schedule, dict(period_mult=0), r"period_mult.*0"),
  (sgdr_schedule, dict(period_mult=float("nan")), r"period_mult.*nan"),
  (sgdr_schedule, dict(init_value=float("nan")), r"init_value.*nan"),
  (sgdr_schedule, dict(min_value=float("-inf")), r"min_value.*-inf"),
  (per_epoch, dict(steps_per_epoch=0), r"steps_per_epoch.*0"),
  (per_epoch, dict(steps_per_epoch=-3), r"steps_per_epoch.*-3"),
  (per_epoch, dict(steps_per_epoch=2.5), r"steps_per_epoch.*2.5"),
  (per_epoch, dict(steps_per_epoch=True), r"steps_per_epoch.*True"),
  (per_epoch, dict(steps_per_epoch=None), r"steps_per_epoch.*None"),
]

GOOD = {
  cyclic_schedule: dict(base_value=0.1, max_value=1.0, step_size_up=2),
  inverse_time_decay: dict(init_value=0.1, decay_rate=0.5),
  sgdr_schedule: dict(init_value=0.1, first_period=10, period_mult=2),
  per_epoch: dict(schedule=optax.constant_schedule(0.1), steps_per_epoch=10),
}


@pytest.mark.parametrize(
  "factory,bad,pattern",
  BAD,
  ids=[f"{f.__name__}-{next(iter(b))}-{i}" for i, (f, b, _) in enumerate(BAD)],
)
def test_bad_arguments_raise_value_error(factory, bad, pattern):
  factory(**GOOD[factory])  # the good arguments alone are fine
  with pytest.raises(ValueError, match=pattern):
    factory(**{**GOOD[factory], **bad})


def test_non_callable_schedule_raises_type_error():
  with pytest.raises(TypeError, match="schedule"):
    per_epoch(0.1, steps_per_epoch=10)


def test_traced_structural_argument_raises_value_error():
  with pytest.raises(ValueError, match="step_size_up"):
    jax.jit(lambda s: cyclic_schedule(0.1, 1.0, s)(0))(3)
  with pytest.raises(ValueError, match="period_mult"):
    jax.jit(lambda m: sgdr_schedule(0.1, 10, m)(0))(2.0)


def test_allowed_edge_arguments():
  # max_value < base_value (as PyTorch), gamma > 1, integral floats, numpy ints.
  counts = jnp.arange(8)
  inverted, growing, float_args, int_args, flat = evaluate_all(
    [
      (cyclic_schedule(1.0, 0.5, np.int64(2), 2.0), counts),
      (cyclic_schedule(0.0, 1.0, 1, mode="exp_range", gamma=2.0), counts),
      (sgdr_schedule(1.0, 2.0, 2.0), counts),
      (sgdr_schedule(1.0, 2, 2), counts),
      (inverse_time_decay(1.0, 0.0), jnp.array([0, 10**6])),
    ]
  )
  np.testing.assert_allclose(inverted[:5], [1, 0.75, 0.5, 0.75, 1])
  np.testing.assert_allclose(growing[[1, 3]], [2.0, 8.0])
  np.testing.assert_array_equal(float_args, int_args)
  np.testing.assert_array_equal(flat, [1, 1])
  # Step sizes and periods beyond int32 with int32 counts.
  huge = 10**12
  count = jnp.array([5 * 10**8], jnp.int32)
  cyc, sgdr, stairs, epochs = evaluate_all(
    [
      (cyclic_schedule(0.1, 1.0, huge), count),
      (sgdr_schedule(1.0, huge, 2), count),
      (inverse_time_decay(1.0, 0.5, huge, staircase=True), count),
      (per_epoch(lambda e: e.astype(jnp.float32), huge), count),
    ]
  )
  np.testing.assert_allclose(cyc, 0.1 + 0.9 * 5e8 / huge, rtol=1e-6)
  np.testing.assert_allclose(sgdr, 0.5 * (1 + math.cos(math.pi * 5e8 / huge)), rtol=1e-6)
  np.testing.assert_array_equal(stairs, [1.0])
  np.testing.assert_array_equal(epochs, [0.0])
