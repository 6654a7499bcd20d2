"""Tests for optax_lr._tree: global reductions accumulated in at least f32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_lr import _tree


def _tree_pair(dtype):
  rng = np.random.default_rng(0)
  x = {"a": rng.normal(size=(3, 4)), "b": [rng.normal(size=5), rng.normal()]}
  y = {"a": rng.normal(size=(3, 4)), "b": [rng.normal(size=5), rng.normal()]}
  cast = lambda t: jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), t)
  return x, y, cast(x), cast(y)


def _np_dot(x, y):
  return sum(
      float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))
      for a, b in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y))
  )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_vdot_norm_cosine_match_float64_reference(dtype):
  _, _, x, y = _tree_pair(dtype)
  # The reference uses the *rounded* leaves, so the only error left is the
  # accumulation's, which must be f32-small, not bf16-large.
  dot = _np_dot(x, y)
  sq = _np_dot(x, x)
  got_dot = jax.jit(_tree.tree_vdot)(x, y)
  assert got_dot.dtype == jnp.float32
  np.testing.assert_allclose(float(got_dot), dot, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(float(_tree.tree_sum_squares(x)), sq, rtol=1e-6)
  np.testing.assert_allclose(float(_tree.tree_norm(x)), np.sqrt(sq), rtol=1e-6)
  cos = dot / np.sqrt(sq * _np_dot(y, y))
  np.testing.assert_allclose(float(_tree.tree_cosine(x, y)), cos, rtol=1e-5)


def test_bf16_accumulation_keeps_precision():
  # 4096 products of 1.0 * 1.0 plus tiny ones: a bf16 accumulator would stall
  # at 256 (its mantissa has 8 bits); f32 accumulation is exact here.
  x = jnp.ones(4096, jnp.bfloat16)
  assert float(_tree.tree_vdot(x, x)) == 4096.0
  assert float(_tree.tree_norm(x)) == 64.0


def test_accumulation_dtype_rules():
  assert _tree.accumulation_dtype({"w": jnp.ones(2, jnp.bfloat16)}) == jnp.float32
  assert _tree.accumulation_dtype((jnp.ones(2, jnp.int32),)) == jnp.float32
  assert _tree.accumulation_dtype(()) == jnp.float32
  with jax.enable_x64(True):
    tree = {"w": jnp.ones(2, jnp.float64), "c": jnp.zeros([], jnp.int32)}
    assert _tree.accumulation_dtype(tree) == jnp.float64
    assert _tree.tree_vdot(tree["w"], tree["w"]).dtype == jnp.float64


def test_integer_leaves_and_empty_trees():
  tree = {"count": jnp.array(3, jnp.int32), "w": jnp.array([1.0, 2.0])}
  assert float(_tree.tree_vdot(tree, tree)) == 14.0
  assert float(_tree.tree_vdot({}, {})) == 0.0
  assert float(_tree.tree_norm([])) == 0.0


def test_none_and_masked_nodes_contribute_nothing():
  x = {"a": jnp.array([1.0, 2.0]), "b": None, "c": optax.MaskedNode()}
  assert float(_tree.tree_vdot(x, x)) == 5.0


def test_cosine_is_zero_for_zero_vectors_and_has_finite_gradient():
  zero = {"a": jnp.zeros(3)}
  one = {"a": jnp.ones(3)}
  assert float(_tree.tree_cosine(zero, one)) == 0.0
  assert float(_tree.tree_cosine(zero, zero)) == 0.0
  grad = jax.grad(lambda t: _tree.tree_cosine(t, one))(zero)
  assert np.all(np.isfinite(grad["a"]))


def test_cosine_bounds():
  x = {"a": jnp.array([1.0, -2.0, 3.0])}
  assert abs(float(_tree.tree_cosine(x, x)) - 1.0) < 1e-6
  neg = jax.tree_util.tree_map(lambda v: -v, x)
  assert abs(float(_tree.tree_cosine(x, neg)) + 1.0) < 1e-6


def test_sharded_reduction_matches_single_device():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs 8 devices (set by conftest.py's XLA_FLAGS)")
  mesh = jax.sharding.Mesh(np.array(devices[:8]).reshape(4, 2), ("data", "model"))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "model"))
  rng = np.random.default_rng(1)
  x = {"w": rng.normal(size=(8, 6)).astype(np.float32), "b": rng.normal(size=(6,)).astype(np.float32)}
  y = {"w": rng.normal(size=(8, 6)).astype(np.float32), "b": rng.normal(size=(6,)).astype(np.float32)}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shard = lambda t: {
      "w": jax.device_put(t["w"], spec), "b": jax.device_put(t["b"], replicated)
  }
  xs, ys = shard(x), shard(y)
  assert len(xs["w"].sharding.device_set) == 8
  got = jax.jit(_tree.tree_vdot)(xs, ys)
  np.testing.assert_allclose(float(got), _np_dot(x, y), rtol=1e-5)
  np.testing.assert_allclose(
      float(jax.jit(_tree.tree_norm)(xs)), np.sqrt(_np_dot(x, x)), rtol=1e-5
  )
