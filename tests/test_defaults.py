"""Every method with its defaults only, on optax's contrib targets (issue 11).

optax applies these four targets to every `optax.contrib` optimizer
(`optax/contrib/_common_test.py`): a parabola, Rosenbrock from (0, 0), a
matrix parabola and a target of mixed tensors, trained for 30k steps and
compared with `rtol = atol = 3e-2`. Here every optax_lr method, built from its
defaults and the initial rate 1e-3 (where `optax.adam(1e-3)` itself converges
on all four), over SGD, momentum and Adam directions, must do the same, and
its rate must stay finite, positive and inside its band all along.

Each case lists the extra arguments its update receives; the train step
passes `value` (the loss), `loss_fn` and `params`, as a production step does.

The same cases then train issue 11's teacher-student regression, a problem
none of the defaults was chosen on, from initial rates 1e-4 and 1 (at 1,
plain SGD and momentum overflow within ~20 steps and Adam does not train):
finite params, a trained model and the same rate bounds.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_lr
from optax_lr._registry import standard_promotion

STEPS = 30_000
INITIAL_RATE = 1e-3
TOLERANCE = 3e-2


DIRECTIONS = {
  "sgd": lambda: None,
  "momentum": lambda: optax.trace(0.9),
  "adam": lambda: standard_promotion(optax.scale_by_adam()),
}


@dataclasses.dataclass(frozen=True)
class DefaultCase:
  """A method built from its defaults: ``make(lr, direction)``."""

  name: str
  make: Callable[[float, optax.GradientTransformation], optax.GradientTransformationExtraArgs]
  needs: tuple[str, ...] = ("value",)
  # The rate stays within 10^4 of its start (the hypergradient methods'
  # band, newton_lr's); the epoch-level searches only keep it positive.
  banded: bool = True


# An epoch here is 100 update calls (the targets have no data set).
EPOCH = 100

CASES = [
  DefaultCase(
    "hypergradient_descent", lambda lr, d: optax_lr.hypergradient_descent(lr, direction=d)
  ),
  DefaultCase(
    "hypergradient_descent_multiplicative",
    lambda lr, d: optax_lr.hypergradient_descent(lr, multiplicative=True, direction=d),
  ),
  DefaultCase("rtho", lambda lr, d: optax_lr.rtho(lr, direction=d), needs=("value", "loss_fn")),
  DefaultCase("marthe", lambda lr, d: optax_lr.marthe(lr, direction=d), needs=("value", "loss_fn")),
  DefaultCase(
    "newton_lr", lambda lr, d: optax_lr.newton_lr(lr, steps_per_epoch=EPOCH, direction=d)
  ),
  DefaultCase(
    "aslr", lambda lr, d: optax_lr.aslr(lr, steps_per_epoch=EPOCH, direction=d), banded=False
  ),
  DefaultCase(
    "aalr", lambda lr, d: optax_lr.aalr(lr, steps_per_epoch=EPOCH, direction=d), banded=False
  ),
]


def _step(case, tx, loss_fn, params, state):
  """One production train step: the case's extra args, applied through ``apply_updates``."""
  loss, grads = jax.value_and_grad(loss_fn)(params)
  available = {"value": loss, "loss_fn": loss_fn}
  updates, state = tx.update(grads, state, params, **{n: available[n] for n in case.needs})
  return optax_lr.apply_updates(params, updates, state), state


def _targets():
  """optax's four contrib targets: ``(name, initial, final, loss)``."""
  parabola_final = jnp.array([1.0, -1.0, 1.0])
  rosenbrock = lambda p: (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2
  matrix_final = jnp.array([[3.0, -2.0], [1.0, 4.0]])
  # optax's `_setup_mixed_tensor_target`: a vector and a matrix target, each
  # leaf's squared distance summed.
  mixed_final = (jnp.array([1.0, -1.0, 2.0]), jnp.array([[1.0, 0.0], [-1.0, 1.0]]))
  return [
    (
      "parabola",
      jnp.array([-1.0, 10.0, 1.0]),
      parabola_final,
      lambda p: jnp.sum((p - parabola_final) ** 2),
    ),
    ("rosenbrock", jnp.zeros(2), jnp.array([1.0, 1.0]), rosenbrock),
    (
      "matrix_parabola",
      jnp.zeros((2, 2)),
      matrix_final,
      lambda p: jnp.sum((p - matrix_final) ** 2),
    ),
    (
      "mixed_tensors",
      (jnp.zeros(3), jnp.zeros((2, 2))),
      mixed_final,
      lambda p: sum(jnp.sum((a - b) ** 2) for a, b in zip(p, mixed_final)),
    ),
  ]


def _train(case, direction):
  """All four targets in one compiled program: final params and rate bounds."""
  targets = _targets()

  def one(initial, loss_fn):
    tx = case.make(INITIAL_RATE, direction)

    def body(carry, _):
      params, state = _step(case, tx, loss_fn, *carry)
      return (params, state), jnp.asarray(optax_lr.current_lr(state), jnp.float32)

    (params, _), rates = jax.lax.scan(body, (initial, tx.init(initial)), None, length=STEPS)
    return params, jnp.min(rates), jnp.max(rates)

  @jax.jit
  def run():
    return [one(initial, loss_fn) for _, initial, _, loss_fn in targets]

  return targets, run()


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_defaults_converge_on_optax_contrib_targets(case, direction):
  targets, results = _train(case, DIRECTIONS[direction]())
  for (name, _, final, _), (params, low, high) in zip(targets, results):
    for got, want in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(final)):
      np.testing.assert_allclose(
        got, want, rtol=TOLERANCE, atol=TOLERANCE, err_msg=f"{case.name} over {direction} on {name}"
      )
    _assert_rate_bounds(case, INITIAL_RATE, low, high, f"{name} over {direction}")


def _assert_rate_bounds(case, initial_rate, low, high, label):
  """The rate stayed finite and positive; banded cases within 10^4 of its start."""
  assert np.isfinite(float(high)) and float(low) > 0, (label, low, high)
  if case.banded:
    # No runaway, no collapse.
    assert float(high) <= initial_rate * 1e4 * (1 + 1e-6), (
      f"{label}: the rate ran away to {float(high):.3g}"
    )
    assert float(low) >= initial_rate * 1e-4 * (1 - 1e-6), (
      f"{label}: the rate collapsed to {float(low):.3g}"
    )


# Relative perturbations of Rosenbrock's scale, the size of a backend's
# rounding differences and up to 100 times more. Before the safety net's
# running loss level, 1 of these flipped newton_lr over SGD and 3 flipped RTHO
# over Adam from converged to off by up to 1.1 (the design page, "Why a
# running level too"): the convergence above hinged on where in a blow-up
# and rollback cycle the last step fell.
PERTURBATIONS = (1e-7, -1e-7, 3e-7, -3e-7, 1e-6, -1e-6, 2e-6, -2e-6, 5e-6, -5e-6, 1e-5)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_defaults_converge_whatever_the_rounding(case, direction):
  """The Rosenbrock run of each case converges for every loss ``(1 + ε) f``."""
  _, initial, final, rosenbrock = _targets()[1]

  def one(eps):
    loss_fn = lambda p: (1 + eps) * rosenbrock(p)
    tx = case.make(INITIAL_RATE, DIRECTIONS[direction]())

    def body(carry, _):
      return _step(case, tx, loss_fn, *carry), None

    (params, _), _ = jax.lax.scan(body, (initial, tx.init(initial)), None, length=STEPS)
    return params

  got = jax.jit(jax.vmap(one))(jnp.asarray(PERTURBATIONS, jnp.float32))
  for eps, params in zip(PERTURBATIONS, np.asarray(got)):
    np.testing.assert_allclose(
      params,
      final,
      rtol=TOLERANCE,
      atol=TOLERANCE,
      err_msg=f"{case.name} over {direction}, loss scaled by 1 + {eps}",
    )


# ------------------------------------------- a problem nobody tuned them on

# Issue 11's teacher-student regression: a tanh MLP 8-32-1 learns a fixed
# random teacher of the same shape from minibatches of 32 Gaussian inputs
# (MSE; the loss can go to 0). With the first release's hyper-rates HD and
# RTHO diverged there from every initial rate 1e-4 ... 1, and newton_lr from
# 0.1 and 1. Here each method keeps its defaults. At a constant rate 1 the
# directions fail on their own: optax.sgd(1.0) and sgd(1.0, momentum=0.9)
# overflow to inf within ~20 steps, and adam(1.0) ends at 0.86 of the
# untrained loss.
TEACHER_STEPS = 2000
TEACHER_RATES = (1e-4, 1.0)
# Held-out loss at the end over the initial model's (1.33). Hand-tuned
# optax optimizers reach ~0.005 in these steps (adam(1e-3) 0.0056,
# sgd(0.1) 0.0049); the defaults reach 0.0003-0.04, except ASLR from 1e-4
# over SGD (0.21: its centre keeps improving its window's mean loss, so it
# never searches; "Which method" in the docs). A run that diverged, or
# whose rate collapsed early, stays near 1.
TEACHER_TRAINED = 0.25


def _teacher_student():
  def init(key, inputs=8, hidden=32):
    k1, k2 = jax.random.split(key)
    return {
      "w1": jax.random.normal(k1, (inputs, hidden)) / np.sqrt(inputs),
      "b1": jnp.zeros(hidden),
      "w2": jax.random.normal(k2, (hidden, 1)) / np.sqrt(hidden),
      "b2": jnp.zeros(1),
    }

  mlp = lambda p, x: jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  teacher = init(jax.random.PRNGKey(42))
  loss = lambda p, x: jnp.mean((mlp(p, x) - mlp(teacher, x)) ** 2)
  batches = jax.random.normal(jax.random.PRNGKey(1), (TEACHER_STEPS, 32, 8))
  held_out = jax.random.normal(jax.random.PRNGKey(2), (512, 8))
  return init(jax.random.PRNGKey(0)), loss, batches, held_out


@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_defaults_train_a_teacher_student_regression(case, direction):
  initial, loss, batches, held_out = _teacher_student()

  def one(rate):
    tx = case.make(rate, DIRECTIONS[direction]())

    def body(carry, x):
      params, state = _step(case, tx, lambda p: loss(p, x), *carry)
      return (params, state), jnp.asarray(optax_lr.current_lr(state), jnp.float32)

    (params, _), rates = jax.lax.scan(body, (initial, tx.init(initial)), batches)
    return params, loss(params, held_out), jnp.min(rates), jnp.max(rates)

  results = jax.jit(lambda: [one(rate) for rate in TEACHER_RATES])()
  untrained = float(loss(initial, held_out))
  for rate, (params, final, low, high) in zip(TEACHER_RATES, results):
    label = f"{case.name} over {direction} from {rate}"
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(params)), label
    assert float(final) <= TEACHER_TRAINED * untrained, (
      f"{label}: held-out loss {float(final):.3g}, untrained {untrained:.3g}"
    )
    _assert_rate_bounds(case, rate, low, high, label)
