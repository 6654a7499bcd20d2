"""Property tests over random pytrees, for every optax_lr method of `METHODS`.

Hypothesis draws params trees: nested dicts and lists (empty ones included),
scalar and array leaves of float16, bfloat16, float32 and float64 (under x64),
and `None` leaves; each tree is used as it is and inside `optax.masked` (whose
masked-out leaves reach the method as `optax.MaskedNode`). For each method
(the contract suite's `METHODS`, less the plain-optax anchor: optax's own tree
casting rejects a float16 + bfloat16 tree under strict promotion), two update
calls must:

* return updates with the params' tree structure and each leaf's dtype and
  shape, all finite;
* keep the state's structure, dtypes and shapes (no drift across steps);
* leave the state donatable: no two arrays of ``(params, state)`` share a
  buffer, after `init` and after each update (a train step that donates
  params and state would otherwise donate one buffer twice).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import _reliability as rel
import optax_lr
from test_contract import parabola_params

DTYPES = ("float16", "bfloat16", "float32", "float64")
SHAPES = ((), (1,), (3,), (2, 2))

# A leaf spec is None (a None leaf) or (shape, dtype, seed).
_leaf = st.one_of(
  st.none(),
  st.tuples(st.sampled_from(SHAPES), st.sampled_from(DTYPES), st.integers(0, 99)),
)
TREES = st.recursive(
  _leaf,
  lambda children: st.one_of(
    st.lists(children, max_size=3),
    st.dictionaries(st.sampled_from("abcd"), children, max_size=3),
  ),
  max_leaves=6,
)

CASES = [
  case
  for case in rel.METHODS
  if rel.holds_optax_lr_method(jax.eval_shape(case.make(case.parabola_lr).init, parabola_params()))
]


def _is_spec(x):
  return x is None or isinstance(x, tuple)


def _build(spec):
  def leaf(s):
    if s is None:
      return None
    shape, dtype, seed = s
    values = np.random.default_rng(seed).uniform(-2.0, 2.0, shape)
    return jnp.asarray(values, dtype=jnp.dtype(dtype))

  return jax.tree_util.tree_map(leaf, spec, is_leaf=_is_spec)


def _uses_float64(spec):
  specs = jax.tree_util.tree_leaves(spec, is_leaf=_is_spec)
  return any(s is not None and s[1] == "float64" for s in specs)


def _loss(params):
  # Each leaf in float32 (strict promotion mixes no dtypes implicitly).
  total = jnp.zeros([], jnp.float32)
  for x in jax.tree_util.tree_leaves(params):
    x = x.astype(jnp.float32)
    total = total + jnp.sum(0.5 * x * x + 0.1 * jnp.sin(x))
  return total


def _buffers(tree):
  return [
    shard.data.unsafe_buffer_pointer()
    for x in jax.tree_util.tree_leaves(tree)
    if isinstance(x, jax.Array)
    for shard in x.addressable_shards
  ]


def _assert_no_shared_buffers(params, state):
  pointers = _buffers((params, state))
  assert len(pointers) == len(set(pointers)), "an array is aliased in (params, state)"


def _avals(tree):
  return jax.tree_util.tree_structure(tree), [
    (jnp.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(tree)
  ]


def _check(case, spec, masked):
  params = _build(spec)
  tx = case.make(case.parabola_lr)
  if masked:
    # Every other leaf (in flattening order) is handed to the method.
    flags = iter(range(len(jax.tree_util.tree_leaves(params))))
    tx = optax.masked(tx, jax.tree_util.tree_map(lambda _: next(flags) % 2 == 0, params))
  state = tx.init(params)
  _assert_no_shared_buffers(params, state)
  state_avals = _avals(state)
  for _ in range(2):
    grads = jax.grad(_loss)(params)
    updates, state = tx.update(grads, state, params, **case.extra_args(_loss, params))
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(params)
    for (path, u), p in zip(
      jax.tree_util.tree_leaves_with_path(updates), jax.tree_util.tree_leaves(params)
    ):
      where = jax.tree_util.keystr(path)
      assert (u.dtype, u.shape) == (p.dtype, p.shape), where
      assert bool(jnp.all(jnp.isfinite(u))), where
    assert _avals(state) == state_avals
    params = optax_lr.apply_updates(params, updates, state)
    _assert_no_shared_buffers(params, state)
  rel.assert_rates_valid(optax_lr.current_lr(state))


@pytest.mark.parametrize("case", CASES, ids=rel.case_id)
@settings(
  max_examples=4,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.too_slow],
)
@given(spec=TREES, masked=st.booleans())
@example(spec=None, masked=False)
@example(spec={}, masked=True)
@example(spec=[[], {"a": None}], masked=False)
@example(spec=((), "bfloat16", 0), masked=False)
@example(
  spec={
    "a": ((2, 2), "float16", 1),
    "b": [((), "float64", 2), None],
    "c": ((3,), "bfloat16", 3),
    "d": ((1,), "float32", 4),
  },
  masked=True,
)
def test_updates_keep_leaf_dtypes_and_states_stay_donatable(case, spec, masked):
  x64 = jax.enable_x64(True) if _uses_float64(spec) else contextlib.nullcontext()
  with x64:
    _check(case, spec, masked)
