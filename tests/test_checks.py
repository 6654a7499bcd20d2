"""The argument checks of `optax_lr._checks`, one by one.

The rule: a wrong type raises `ArgumentTypeError` (a `TypeError`, also a
`ValueError` for code written against earlier releases), a bad value a plain
`ValueError` (never a `TypeError`); both name the argument. A traced value
of the right shape and dtype passes where the check takes arrays.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_lr import _checks


def _wrong_type(check, *args, **kwargs):
  with pytest.raises(TypeError, match="arg") as info:
    check("arg", *args, **kwargs)
  assert isinstance(info.value, _checks.ArgumentTypeError)
  assert isinstance(info.value, ValueError)  # what earlier releases raised


def _bad_value(check, *args, **kwargs):
  with pytest.raises(ValueError, match="arg") as info:
    check("arg", *args, **kwargs)
  assert not isinstance(info.value, TypeError)


def _traced(check, value, *args, **kwargs):
  """What ``check`` returns for ``value`` traced under jit: the tracer itself."""
  seen = []

  def f(x):
    seen.append(check("arg", x, *args, **kwargs) is x)
    return x

  jax.jit(f)(value)
  return seen[0]


WRONG_SCALARS = [
  "0.1",
  None,
  True,
  np.bool_(False),
  1j,
  np.ones(2),
  jnp.ones((1,)),
  np.complex64(1),
  [1.0],
]


# ---------------------------------------------------------------- real and its ranges


@pytest.mark.parametrize(
  "check, good, bad",
  [
    (
      _checks.positive,
      [0.1, 3, np.float32(2.0), jnp.asarray(1e-3, jnp.bfloat16)],
      [0.0, -1.0, math.nan, math.inf],
    ),
    (_checks.non_negative, [0.0, 2.5, np.int32(0)], [-1e-9, math.nan, math.inf]),
    (
      lambda name, value: _checks.at_least(name, value, 1),
      [1, 1.0, 4.5, np.float32(1.0)],
      [0.999, -1.0, math.nan, math.inf],
    ),
    (
      lambda name, value: _checks.in_range(name, value, 0, 1),
      [0, 0.5, 1.0],
      [-0.1, 1.5, math.nan, math.inf],
    ),
    (
      lambda name, value: _checks.in_range(name, value, 0, 1, high_open=True),
      [0, 0.5, 0.999],
      [1.0, -0.1, math.nan],
    ),
    (
      lambda name, value: _checks.in_range(name, value, 0, 1, low_open=True),
      [0.5, 1.0],
      [0.0, 1.1],
    ),
  ],
)
def test_real_ranges(check, good, bad):
  for value in good:
    out = check("arg", value)
    if _checks.is_array(value):
      assert out is value  # arrays stay arrays: `is_array` still tells
    else:
      assert out == value and isinstance(out, float)
  for value in bad:
    _bad_value(check, value)
  for value in WRONG_SCALARS:
    _wrong_type(check, value)
  assert _traced(check, jnp.float32(good[0]))
  # A traced value is not checked (unknown at trace time) ...
  assert _traced(check, jnp.float32(bad[0]))
  # ... but its shape and dtype are.
  with pytest.raises(TypeError, match="arg"):
    jax.jit(lambda x: check("arg", x))(jnp.ones(2))


def test_real_messages():
  with pytest.raises(ValueError, match=r"^mu must be in \[0, 1\], got mu=1.5.$"):
    _checks.in_range("mu", 1.5, 0, 1)
  with pytest.raises(ValueError, match=r"^mu must be in \[0, 1\] or None, got mu=-1.$"):
    _checks.in_range("mu", -1, 0, 1, requirement="in [0, 1] or None")
  with pytest.raises(TypeError, match=r"^lr must be a real scalar, got lr='x'.$"):
    _checks.positive("lr", "x")
  with pytest.raises(ValueError, match=r"^lr must be finite and > 0, got lr=0.$"):
    _checks.positive("lr", 0)


# ---------------------------------------------------------------- booleans and ints


def test_boolean():
  assert _checks.boolean("arg", True) is True
  assert _checks.boolean("arg", np.bool_(False)) is False
  for value in ["yes", 1, 0, None, 1.0, np.ones(1, bool)]:
    _wrong_type(_checks.boolean, value)


def test_positive_int():
  assert _checks.positive_int("arg", 3) == 3
  assert _checks.positive_int("arg", np.int64(7)) == 7
  assert type(_checks.positive_int("arg", np.array(5))) is int
  assert _checks.positive_int("arg", None, allow_none=True) is None
  assert _checks.positive_int("arg", 2, minimum=2) == 2
  for value in [0, -3]:
    _bad_value(_checks.positive_int, value)
  _bad_value(_checks.positive_int, 1, minimum=2)
  for value in [2.5, 10.0, "5", True, np.bool_(True), None, np.ones(2, int), jnp.float32(2)]:
    _wrong_type(_checks.positive_int, value)
  with pytest.raises(TypeError, match="None or a positive int"):
    _checks.positive_int("arg", "5", allow_none=True)


def test_integer():
  in_range = lambda x: 0 <= x < 2**64
  assert _checks.integer("arg", 2**64 - 1, in_range) == 2**64 - 1
  concrete = np.uint64(2**40)
  assert _checks.integer("arg", concrete, in_range) is concrete  # arrays as they are
  for value in [-1, 2**64, np.int32(-3)]:
    _bad_value(_checks.integer, value, in_range, "in [0, 2**64)")
  for value in [1.5, "1", None, True, np.float32(1.0), np.ones(2, np.int32)]:
    _wrong_type(_checks.integer, value)
  assert _traced(_checks.integer, jnp.int32(-5), in_range)  # traced: unchecked
  with pytest.raises(TypeError, match="arg"):
    jax.jit(lambda x: _checks.integer("arg", x))(jnp.float32(1))


# ---------------------------------------------------------------- concrete numbers


def test_concrete():
  assert _checks.concrete("arg", 3) == 3 and type(_checks.concrete("arg", 3)) is int
  assert _checks.concrete("arg", np.int64(3)) == 3
  assert _checks.concrete("arg", jnp.array(2.5)) == 2.5
  assert type(_checks.concrete("arg", jnp.asarray(1.5, jnp.bfloat16))) is float
  assert _checks.concrete("arg", math.inf, lambda x: x > 1, "> 1") == math.inf
  for value in [math.nan, math.inf, -math.inf]:
    _bad_value(_checks.concrete, value)
  _bad_value(_checks.concrete, 0.5, lambda x: x > 1, "> 1")
  for value in WRONG_SCALARS:
    _wrong_type(_checks.concrete, value)
  # Not traced: it must be known at trace time.
  with pytest.raises(TypeError, match="arg must be a concrete number") as info:
    jax.jit(lambda x: _checks.concrete("arg", x))(1.0)
  assert isinstance(info.value, ValueError)


def test_finite():
  for value in [0.1, -3, np.ones(3), jnp.zeros((2, 2), jnp.bfloat16)]:
    assert _checks.finite("arg", value) is value
  for value in [math.nan, -math.inf, np.array([1.0, math.inf])]:
    _bad_value(_checks.finite, value)
  for value in ["high", None, True, 1j, np.ones(2, bool)]:
    _wrong_type(_checks.finite, value)
  assert _traced(_checks.finite, jnp.float32(math.nan))


def test_one_of():
  choices = ("valley", "steep")
  assert _checks.one_of("arg", "steep", choices) == "steep"
  for value in ["Valley", "", "min"]:
    _bad_value(_checks.one_of, value, choices)
  for value in [None, 0, ("valley",), np.array("valley")]:
    _wrong_type(_checks.one_of, value, choices)
  with pytest.raises(ValueError, match=r"arg must be one of 'valley', 'steep', got arg='x'."):
    _checks.one_of("arg", "x", choices)


def test_check_direction():
  _checks.check_direction(optax.sgd(0.1))
  for value in ["sgd", optax.sgd, 0.9]:
    with pytest.raises(TypeError, match="direction") as info:
      _checks.check_direction(value)
    assert isinstance(info.value, ValueError)
