"""Every row of the README's survey-schedule table against the survey's formula.

The survey (lr-schedule-survey.txt) writes each schedule per epoch; the README
maps each to an optax or optax_lr call. Here the formula is written out in
plain float64 numpy and compared with the call, per step through `per_epoch`
and jit, over several epochs (boundaries included).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lr

EPOCHS = np.arange(0, 40)
STEPS_PER_EPOCH = 7

ETA0, ETA_MIN, ETA_MAX = 0.8, 0.01, 0.8


def _survey_rows():
  k, alpha, drop, s, power, T = 0.05, 0.1, 0.5, 10, 2.0, 40
  return {
    "fixed": (optax.constant_schedule(ETA0), lambda t: ETA0 + 0.0 * t),
    # Eq. 2.2: lr0 * drop ** floor(epoch / step_size).
    "step": (
      optax.exponential_decay(ETA0, transition_steps=s, decay_rate=drop, staircase=True),
      lambda t: ETA0 * drop ** np.floor(t / s),
    ),
    # Eq. 2.3 / 2.6: eta0 * exp(-k * epoch).
    "exponential": (
      optax.exponential_decay(ETA0, transition_steps=1, decay_rate=math.exp(-k)),
      lambda t: ETA0 * np.exp(-k * t),
    ),
    # Eq. 2.1 / 2.4: eta0 / (1 + alpha * epoch).
    "inverse_time": (
      optax_lr.inverse_time_decay(ETA0, decay_rate=alpha),
      lambda t: ETA0 / (1.0 + alpha * t),
    ),
    # Eq. 2.5: eta0 * (1 - epoch / max_epoch) ** power.
    "polynomial": (
      optax.polynomial_schedule(ETA0, 0.0, power=power, transition_steps=T),
      lambda t: ETA0 * (1.0 - np.minimum(t, T) / T) ** power,
    ),
    # Section 2.8.2: linear up from min to max over s epochs, then down.
    "triangular": (
      optax_lr.cyclic_schedule(ETA_MIN, ETA_MAX, step_size_up=s),
      lambda t: ETA_MIN + (ETA_MAX - ETA_MIN) * (1.0 - np.abs((t % (2 * s)) / s - 1.0)),
    ),
    # Eq. 2.7: eta_min + (eta_max - eta_min)(1 + cos(t pi / max_epochs)) / 2.
    "cosine": (
      optax.cosine_decay_schedule(ETA_MAX, decay_steps=T, alpha=ETA_MIN / ETA_MAX),
      lambda t: ETA_MIN + 0.5 * (ETA_MAX - ETA_MIN) * (1.0 + np.cos(t * np.pi / T)),
    ),
    # Cosine annealing restarted at epochs 5, 15, 35 (periods 5, 10, 20).
    "sgdr": (
      optax_lr.sgdr_schedule(ETA_MAX, first_period=5, period_mult=2, min_value=ETA_MIN),
      _sgdr_reference(first_period=5, mult=2),
    ),
  }


def _sgdr_reference(first_period, mult):
  def reference(epochs):
    out = []
    for t in epochs:
      start, period = 0, first_period
      while t >= start + period:  # walk the restarts one by one
        start, period = start + period, period * mult
      cosine = 1.0 + np.cos(np.pi * (t - start) / period)
      out.append(ETA_MIN + 0.5 * (ETA_MAX - ETA_MIN) * cosine)
    return np.asarray(out)

  return reference


ROWS = _survey_rows()

# optax's own schedules mix Python floats with int32 counts, which the suite's
# strict promotion rejects; optax_lr's schedules are tested strictly in
# test_schedules.py.
STANDARD_PROMOTION = lambda: jax.numpy_dtype_promotion("standard")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_survey_row_matches_formula_per_epoch(name):
  schedule, formula = ROWS[name]
  with STANDARD_PROMOTION():
    got = jax.jit(jax.vmap(schedule))(jnp.asarray(EPOCHS, jnp.int32))
  np.testing.assert_allclose(np.asarray(got, np.float64), formula(EPOCHS), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_survey_row_per_step_is_constant_within_each_epoch(name):
  schedule, formula = ROWS[name]
  per_step = jax.jit(jax.vmap(optax_lr.per_epoch(schedule, STEPS_PER_EPOCH)))
  steps = np.arange(EPOCHS[-1] * STEPS_PER_EPOCH)
  with STANDARD_PROMOTION():
    got = np.asarray(per_step(jnp.asarray(steps, jnp.int32)), np.float64)
  want = formula(steps // STEPS_PER_EPOCH)
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)


def test_readme_lists_every_row():
  import pathlib

  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  for call in [
    "optax.constant_schedule",
    "staircase=True",
    "decay_rate=math.exp(-k)",
    "optax_lr.inverse_time_decay",
    "optax.polynomial_schedule",
    "optax_lr.cyclic_schedule",
    "optax.cosine_decay_schedule",
    "optax_lr.sgdr_schedule",
  ]:
    assert call in readme, call
