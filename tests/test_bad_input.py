"""Bad hyperparameters and bad extra arguments fail loudly, naming the argument.

* Every factory rejects each bad hyperparameter at construction with a
  `ValueError` whose message names it and the bad value. (The per-module test
  files leave these checks to this one.)
* For every method of the contract suite's `METHODS`, a bad extra argument
  (wrong shapes, wrong tree, not callable, not a scalar) or bad params either
  raise a `ValueError` naming the argument while the update is traced, or are
  provably ignored: the update then equals the one made without that argument
  (or with the right params). A missing argument the method needs raises a
  `ValueError` naming it. No bad input gives a silently different result.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _inject
import _reliability as rel
import optax_lr

# ---------------------------------------------------------------- factories

FACTORIES = {
  "hypergradient_descent": (optax_lr.hypergradient_descent, dict(learning_rate=0.1, hyper_lr=1e-3)),
  "rtho": (optax_lr.rtho, dict(learning_rate=0.1, hyper_lr=1e-3)),
  "marthe": (optax_lr.marthe, dict(learning_rate=0.1, hyper_lr_step=1e-3)),
  "newton_lr": (optax_lr.newton_lr, dict(learning_rate=0.1, update_every=5)),
  "aslr": (optax_lr.aslr, dict(learning_rate=0.1)),
  "aalr": (optax_lr.aalr, dict(learning_rate=0.1)),
}

_EVERY_FACTORY = {
  "learning_rate": [-0.1, math.nan, math.inf, "0.1", None, True, np.ones(2), 1j],
  "direction": ["sgd", optax.sgd, 0.9],
}
_SPECIFIC = {
  "hypergradient_descent": {
    # None is the default (issue 11): the scale-free rule.
    "hyper_lr": [-1.0, -1e-3, math.nan, math.inf, "x"],
    "multiplicative": ["yes", 1],
    "safety_net": ["yes", 1, None],
  },
  "rtho": {
    "learning_rate": [-1.0],
    "hyper_lr": [-1.0, -0.5, math.nan, math.inf, "x"],
    "safety_net": ["yes", 1, None],
  },
  "marthe": {
    "hyper_lr": [-1.0, math.nan, "x"],
    # None is the default (issue 11): kappa selection.
    "hyper_lr_step": [-1.0, -1e-3, math.nan, math.inf, "x"],
    "mu": [-0.1, 1.5, math.nan, "x"],
    "safety_net": ["yes", 1, None],
  },
  "newton_lr": {
    # 1e-50 is 0 in float32, 1e39 is inf.
    "learning_rate": [0.0, 1e-50, 1e39],
    "direction": ["adam"],
    "update_every": [0, -3, 2.5, "5", True],
    "gamma": [0.0, -0.2, -1.0, math.nan, math.inf],
    "max_factor": [0.5, math.nan, math.inf, -1.0],
    "fraction": [0.0, -0.1, -0.5, math.nan, math.inf],
    "per_leaf": ["yes"],
  },
  "aslr": {
    "learning_rate": [0.0, 1e-31, 1e32],
    "steps_per_epoch": [0, -3, -4, 2.5, "4", True],
    "seed": [
      1.5,
      "1",
      "3",
      None,
      True,
      -1,
      2**64,
      np.float32(1.0),
      np.int32(-3),
      np.ones(2, np.int32),
    ],
  },
  "aalr": {
    "learning_rate": [0.0, np.ones(2, np.float32)],
    "steps_per_epoch": [0, -3, -4, 2.5, "4", True],
    "warmup_patience": [0, -1, 2.5, "10", True, None, np.float32(2.0), np.int32(0)],
  },
}

HYPERPARAMETER_CASES = [
  (factory, name, value)
  for factory in FACTORIES
  for table in (_EVERY_FACTORY, _SPECIFIC[factory])
  for name, values in table.items()
  for value in values
]


@pytest.mark.parametrize(
  "factory,name,value",
  HYPERPARAMETER_CASES,
  ids=[f"{f}-{n}={v!r}"[:60] for f, n, v in HYPERPARAMETER_CASES],
)
def test_bad_hyperparameter_fails_at_construction_naming_it(factory, name, value):
  make, good = FACTORIES[factory]
  make(**good)  # the good arguments are good
  with pytest.raises(ValueError, match=name) as info:
    make(**{**good, name: value})
  assert repr(value) in str(info.value)


@pytest.mark.parametrize(
  "window,name",
  [
    ({}, "update_every"),  # neither given
    ({"update_every": 5, "steps_per_epoch": 20}, "update_every"),  # both given
    ({"update_every": 2, "steps_per_epoch": 9}, "update_every"),
    ({"steps_per_epoch": 0}, "steps_per_epoch"),
    ({"steps_per_epoch": 10.0}, "steps_per_epoch"),
  ],
)
def test_newton_lr_needs_exactly_one_good_window_length(window, name):
  with pytest.raises(ValueError, match=name):
    optax_lr.newton_lr(0.1, **window)


# The epoch-level methods' factories also run under `optax.inject_hyperparams`,
# where a bad value arrives as a concrete array at `init`: the same checks
# apply eagerly. A window length cannot be injected (it shapes the state).
INJECTED_BAD = {
  "aslr": [
    ("learning_rate", -1.0, "learning_rate"),
    ("learning_rate", np.nan, "learning_rate"),
    ("learning_rate", 1e-31, "learning_rate"),
    ("seed", -1, "seed"),
    ("seed", 1.5, "seed"),
    ("steps_per_epoch", 3, "static_args"),
  ],
  "aalr": [
    ("learning_rate", -1.0, "learning_rate"),
    ("learning_rate", np.nan, "learning_rate"),
    ("learning_rate", np.inf, "learning_rate"),
    ("warmup_patience", 0, "warmup_patience"),
    ("warmup_patience", 2.5, "warmup_patience"),
    ("steps_per_epoch", 3, "static_args"),
  ],
}
INJECTED_CASES = [(f, *case) for f, cases in INJECTED_BAD.items() for case in cases]


@pytest.mark.parametrize(
  "factory, name, value, match",
  INJECTED_CASES,
  ids=[f"{f}-{n}={v!r}" for f, n, v, _ in INJECTED_CASES],
)
def test_bad_concrete_values_under_inject_hyperparams_raise(factory, name, value, match):
  make, good = FACTORIES[factory]
  tx = optax.inject_hyperparams(make)(**{**good, name: value})
  with pytest.raises(ValueError, match=match):
    tx.init(_inject.inject_params())  # eager: the factory sees concrete arrays


# ---------------------------------------------------------------- extra args

PARAMS = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3) / 10, "b": jnp.ones(3)}


def _loss(params):
  return jnp.sum(params["w"] ** 2) + jnp.sum(jnp.sin(params["b"]))


GRADS = jax.grad(_loss)(PARAMS)
GOOD = {"value": _loss(PARAMS), "loss_fn": _loss, "val_grads": GRADS}

BAD = {
  "value": [jnp.ones(3)],
  "loss_fn": [3.0, lambda p: p["b"], lambda p: (_loss(p), 0.0)],
  "val_grads": [
    {"w": GRADS["w"].T, "b": GRADS["b"]},  # same size, wrong shape
    {"w": GRADS["w"]},
    [GRADS["w"], GRADS["b"]],
  ],
  # Missing, and a scalar where a vector belongs (it would broadcast).
  "params": [None, {"w": PARAMS["w"], "b": jnp.float32(1.0)}],
}
BAD_CASES = [(name, i) for name, values in BAD.items() for i in range(len(values))]


@functools.lru_cache(maxsize=None)
def _warm_state(case):
  """The state after three steps: tangents, previous directions, windows and
  accumulators are nonzero, so a misused argument would change the result."""
  tx = case.make(case.parabola_lr)
  params, state = PARAMS, tx.init(PARAMS)
  for _ in range(3):
    extra = {name: GOOD[name] for name in case.needs}
    updates, state = tx.update(jax.grad(_loss)(params), state, params, **extra)
    params = optax.apply_updates(params, updates)
  return tx, state


def _update(tx, state, params, extra):
  return tx.update(GRADS, state, params, **extra)


@functools.lru_cache(maxsize=None)
def _reference(case, name):
  """The update with the right params and without ``name`` (``None`` when
  the method needs ``name``: then it must raise, naming it)."""
  tx, state = _warm_state(case)
  extra = {n: GOOD[n] for n in case.needs if n != name}
  try:
    return _update(tx, state, PARAMS, extra)
  except ValueError as error:
    assert name in str(error), f"the message does not name {name}: {error}"
    return None


@pytest.mark.parametrize("name,index", BAD_CASES, ids=[f"{n}{i}" for n, i in BAD_CASES])
@pytest.mark.parametrize("case", rel.METHODS, ids=rel.case_id)
def test_bad_argument_raises_naming_it_or_is_ignored(case, name, index):
  tx, state = _warm_state(case)
  needed = {n: GOOD[n] for n in case.needs}
  bad = BAD[name][index]
  try:
    if name == "params":
      result = _update(tx, state, bad, needed)
    else:
      result = _update(tx, state, PARAMS, {**needed, name: bad})
  except ValueError as error:
    assert name in str(error), f"the message does not name {name}: {error}"
    return
  reference = _reference(case, name)
  assert reference is not None, f"a bad {name} was accepted in place of a needed one"
  rel.assert_trees_identical(result, reference)


@pytest.mark.parametrize("case", [c for c in rel.METHODS if c.needs], ids=rel.case_id)
def test_missing_needed_argument_raises_naming_it(case):
  tx, state = _warm_state(case)
  for name in case.needs:
    extra = {n: GOOD[n] for n in case.needs if n != name}
    with pytest.raises(ValueError, match=name):
      jax.jit(lambda s: _update(tx, s, PARAMS, extra))(state)
