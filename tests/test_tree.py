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


def _sharding_4x2():
  """Arrays split over a 4 x 2 mesh of CPU devices (rows x columns)."""
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs 8 devices (set by conftest.py's XLA_FLAGS)")
  mesh = jax.sharding.Mesh(np.array(devices[:8]).reshape(4, 2), ("data", "model"))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "model"))


def test_sharded_reduction_matches_single_device():
  spec = _sharding_4x2()
  rng = np.random.default_rng(1)
  x = {
    "w": rng.normal(size=(8, 6)).astype(np.float32),
    "b": rng.normal(size=(6,)).astype(np.float32),
  }
  y = {
    "w": rng.normal(size=(8, 6)).astype(np.float32),
    "b": rng.normal(size=(6,)).astype(np.float32),
  }
  replicated = jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec())
  shard = lambda t: {"w": jax.device_put(t["w"], spec), "b": jax.device_put(t["b"], replicated)}
  xs, ys = shard(x), shard(y)
  assert len(xs["w"].sharding.device_set) == 8
  got = jax.jit(_tree.tree_vdot)(xs, ys)
  np.testing.assert_allclose(float(got), _np_dot(x, y), rtol=1e-5)
  np.testing.assert_allclose(float(jax.jit(_tree.tree_norm)(xs)), np.sqrt(_np_dot(x, x)), rtol=1e-5)


# ------------------------------------------------ range (issue 12)

EPS32 = float(np.finfo(np.float32).eps)


def _normal_tree(scale, seed, dtypes=(jnp.float32, jnp.float32, jnp.float32)):
  """Leaves of the given dtypes, entries in +-[1, 2) * scale (no subnormals)."""
  rng = np.random.default_rng(seed)
  shapes = [(2, 3), (4,), ()]
  return {
    f"l{i}": jnp.asarray(scale * rng.uniform(1, 2, s) * rng.choice([-1.0, 1.0], s), dtype)
    for i, (s, dtype) in enumerate(zip(shapes, dtypes))
  }


def _ref_cosine(x, y):
  """The cosine in float64 of each tree divided by a power of two near its max.

  The division is exact, and keeps float64's own squares in range for trees
  near 1e-300 or 1e300.
  """

  def normalized(tree):
    flat = np.concatenate(
      [np.asarray(v, np.float64).ravel() for v in jax.tree_util.tree_leaves(tree)]
    )
    return np.ldexp(flat, -int(np.frexp(np.abs(flat).max())[1]))

  x, y = normalized(x), normalized(y)
  return x @ y / np.sqrt((x @ x) * (y @ y))


@pytest.mark.parametrize(
  "scale_x,scale_y",
  [
    (1e-37, 1e-37),
    (1e-37, 3e37),
    (1e-30, 1e30),
    (1e30, 1e-30),
    (1e38, 1.0),
    (1e-20, 1e-20),
    (1e19, 1e19),
  ],
)
def test_cosine_extreme_scales_match_float64(scale_x, scale_y):
  x, y = _normal_tree(scale_x, 0), _normal_tree(scale_y, 1)
  got = jax.jit(_tree.tree_cosine)(x, y)
  assert got.dtype == jnp.float32
  assert abs(float(got) - _ref_cosine(x, y)) <= 4 * EPS32


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_cosine_mixed_leaf_dtypes(scale):
  # bf16 shares float32's exponent range; f16 does not, so its leaf stays
  # near 1 and the tree spans both scales.
  dtypes = (jnp.bfloat16, jnp.float16, jnp.float32)
  x = _normal_tree(scale, 2, (jnp.bfloat16, jnp.float32, jnp.float32))
  y = _normal_tree(1 / scale, 3, (jnp.bfloat16, jnp.float32, jnp.float32))
  x["l1"], y["l1"] = _normal_tree(1.0, 4, dtypes)["l1"], _normal_tree(1.0, 5, dtypes)["l1"]
  assert x["l1"].dtype == jnp.float16
  got = jax.jit(_tree.tree_cosine)(x, y)
  assert got.dtype == jnp.float32
  assert abs(float(got) - _ref_cosine(x, y)) <= 4 * EPS32


@pytest.mark.parametrize("scale_x,scale_y", [(1e-300, 1e300), (1.0, 1e-200)])
def test_cosine_float64_under_x64(scale_x, scale_y):
  with jax.enable_x64(True):
    dtypes = (jnp.float64, jnp.float32, jnp.float64)
    x = _normal_tree(scale_x, 6, (jnp.float64,) * 3)
    y = _normal_tree(scale_y, 7, (jnp.float64,) * 3)
    y["l1"] = _normal_tree(1.0, 8, dtypes)["l1"]  # an f32 leaf in the mix
    got = jax.jit(_tree.tree_cosine)(x, y)
    assert got.dtype == jnp.float64
    eps64 = float(np.finfo(np.float64).eps)
    assert abs(float(got) - _ref_cosine(x, y)) <= 8 * eps64


def test_cosine_is_exact_under_power_of_two_rescaling():
  # Past the one-pass range each tree is rescaled by a power of two, so
  # scaling either tree by another power of two changes no bit.
  x, y = _normal_tree(1.0, 9), _normal_tree(1.0, 10)
  scaled = lambda t, k: jax.tree_util.tree_map(lambda v: v * np.float32(2.0**k), t)
  cos = jax.jit(_tree.tree_cosine)
  reference = cos(scaled(x, -100), scaled(y, 100))
  for kx, ky in [(-120, 120), (-70, -90), (110, 60), (120, -110)]:
    assert cos(scaled(x, kx), scaled(y, ky)) == reference
  # ... and the one-pass result agrees to an ulp or so.
  assert abs(float(cos(x, y)) - float(reference)) <= 2 * EPS32


def test_gram_is_exact_under_power_of_two_rescaling():
  x, y = _normal_tree(1.0, 11), _normal_tree(1.0, 12)
  scaled = lambda t, k: jax.tree_util.tree_map(lambda v: v * np.float32(2.0**k), t)
  gram = jax.jit(_tree.tree_gram)
  reference = gram(x, y)
  for k in (-120, -64, 64, 120):
    got = gram(scaled(x, k), scaled(y, k))
    for a, b in zip(got, reference):
      assert a == b
  # The common scale puts the largest entry in [0.5, 1), in range.
  largest = max(float(_tree.tree_max_abs(x)), float(_tree.tree_max_abs(y)))
  k = int(np.frexp(largest)[1])
  np.testing.assert_allclose(
    [float(v) * 4.0**k for v in reference],
    [_np_dot(x, y), _np_dot(x, x), _np_dot(y, y)],
    rtol=4 * EPS32,
  )


def test_gram_keeps_ratios_where_the_raw_sums_overflow():
  x = jnp.array([3e30, 4e30], jnp.float32)
  r, s, n = jax.jit(_tree.tree_gram)(x, 2 * x)
  assert not np.isfinite(float(_tree.tree_sum_squares(x)))
  assert (float(r / s), float(n / s)) == (2.0, 4.0)
  x = jnp.array([3e-30, 4e-30], jnp.float32)
  r, s, n = jax.jit(_tree.tree_gram)(x, 2 * x)
  assert float(_tree.tree_sum_squares(x)) == 0.0
  assert (float(r / s), float(n / s)) == (2.0, 4.0)


@pytest.mark.parametrize("scale", [1e-37, 1e-30, 1e30, 1e37])
def test_norm_extreme_scales(scale):
  x = _normal_tree(scale, 13)
  got = jax.jit(_tree.tree_norm)(x)
  np.testing.assert_allclose(float(got), np.sqrt(_np_dot(x, x)), rtol=4 * EPS32)


def test_norm_overflows_only_when_the_norm_does():
  x = jnp.full(4, 3e38, jnp.float32)  # norm 6e38 > float32 max
  assert float(jax.jit(_tree.tree_norm)(x)) == np.inf


def test_max_abs():
  x = {"a": jnp.array([1e30, -3e30]), "b": jnp.array(2.0, jnp.bfloat16), "n": None}
  assert float(_tree.tree_max_abs(x)) == np.float32(3e30)
  assert _tree.tree_max_abs(x).dtype == jnp.float32
  assert float(_tree.tree_max_abs({})) == 0.0
  assert float(_tree.tree_max_abs(jnp.array([1.0, -np.inf]))) == np.inf
  assert np.isnan(float(_tree.tree_max_abs(jnp.array([np.inf, np.nan, 1.0]))))


def test_empty_and_zero_trees():
  zero = _normal_tree(0.0, 14)
  one = _normal_tree(1e30, 15)
  for fn in (_tree.tree_cosine, jax.jit(_tree.tree_cosine)):
    assert float(fn({}, {})) == 0.0
    assert float(fn([], [])) == 0.0
    assert float(fn(zero, one)) == 0.0
    assert float(fn(one, zero)) == 0.0
    assert float(fn(zero, zero)) == 0.0
  assert fn({}, {}).dtype == jnp.float32
  assert float(jax.jit(_tree.tree_norm)(zero)) == 0.0
  assert [float(v) for v in _tree.tree_gram({}, {})] == [0.0, 0.0, 0.0]
  assert [float(v) for v in jax.jit(_tree.tree_gram)(zero, zero)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
  "x_scale,y,finite,live",
  [
    # The one-pass branch (normal sums): leaf "a" has a gradient, "b" not.
    (1.0, [1.0, 2.0], True, 1),
    # The rescaling branch, taken for a zero x (HD's first call), a tiny y
    # whose squares underflow, a huge y whose squares overflow, a zero y.
    (0.0, [1.0, 2.0], True, 1),
    (1.0, [1e-30, 0.0], True, 1),
    (1.0, [3e30, 0.0], True, 1),
    (1.0, [0.0, -0.0], True, 0),
    (0.0, [0.0, 0.0], True, 0),
    (1e30, [0.0, 0.0], True, 0),
    # A NaN's square is not positive; an Inf's is.
    (1.0, [np.nan, 0.0], False, 0),
    (1.0, [np.inf, 0.0], False, 1),
  ],
)
def test_cosine_flags_tell_a_non_finite_y_and_count_its_nonzero_leaves(x_scale, y, finite, live):
  x = {"a": jnp.array([1.0, -1.0]) * x_scale, "b": jnp.array(x_scale)}
  y = {"a": jnp.array(y, jnp.float32), "b": jnp.array(0.0)}
  cosine, got_finite, got_live = jax.jit(_tree.tree_cosine_and_flags)(x, y)
  # "a" is a vector of 2 entries: it counts as a layer when one of them is
  # not 0 (a NaN is not 0: its square, not the entry, makes the leaf 0).
  layers = int(np.any(np.asarray(y["a"]) != 0))
  assert (bool(got_finite), got_live.tolist()) == (finite, [live, layers])
  assert got_live.dtype == jnp.int32
  # The cosine is tree_cosine's, the first flag tree_cosine_and_finite's.
  ref_cosine, ref_finite = _tree.tree_cosine_and_finite(x, y)
  np.testing.assert_array_equal(np.asarray(cosine), np.asarray(ref_cosine))
  assert bool(ref_finite) == finite
  _, empty_finite, empty_live = _tree.tree_cosine_and_flags({}, {})
  assert (bool(empty_finite), empty_live.tolist()) == (True, [0, 0])


@pytest.mark.parametrize("scale", [1.0, 1e-25, 1e25])
def test_live_leaves_count_each_leaf_not_all_zeros_on_both_branches(scale):
  # Six leaves, of which leaves 1 and 4 are all zeros and leaf 3 holds a
  # single nonzero entry; at 1e-25 and 1e25 the sums leave float32's range
  # and the rescaling branch counts.
  rng = np.random.default_rng(0)
  shapes = [(3, 4), (5,), (2, 2), (7,), (4, 1), ()]
  y = [jnp.asarray(rng.normal(size=s) * scale, jnp.float32) for s in shapes]
  y[1] = jnp.zeros(5)
  y[4] = jnp.zeros((4, 1))
  y[3] = jnp.zeros(7).at[2].set(-0.5 * scale)
  x = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  # The vectors: leaf 1 all zeros, leaf 3 one entry of 7 (under a third):
  # neither counts as a layer.
  assert jax.jit(_tree.tree_cosine_and_flags)(x, y)[2].tolist() == [4, 0]
  got_max, got_live = jax.jit(_tree.tree_max_abs_and_live)(y)
  assert got_live.tolist() == [4, 0]
  assert float(got_max) == float(_tree.tree_max_abs(y))


@pytest.mark.parametrize("scale", [1.0, 1e-25, 1e25])
def test_vectors_count_as_layers_where_a_third_of_their_entries_are_live(scale):
  # A vector (a layer's bias: one entry per unit) of 6 entries with 4 zeros:
  # 2 of 6 live, a third, counts. One of 7 with 5 zeros: 2 of 7, does not.
  # An all-zero vector: a dead leaf, no layer. A (3, 4) kernel, a (1,)
  # vector and a scalar are live leaves and no layers. At 1e-25 and 1e25 the
  # cosine's sums leave float32's range and its rescaling branch counts.
  rng = np.random.default_rng(2)
  normal = lambda *shape: rng.normal(size=shape) * scale
  v1, v2 = normal(6), normal(7)
  v1[2:] = 0.0
  v2[[0, 2, 3, 5, 6]] = 0.0
  y = [v1, v2, np.zeros(3), normal(3, 4), normal(1), normal()]
  y = [jnp.asarray(leaf, jnp.float32) for leaf in y]
  x = [jnp.asarray(rng.normal(size=leaf.shape), jnp.float32) for leaf in y]
  assert jax.jit(_tree.tree_cosine_and_flags)(x, y)[2].tolist() == [5, 1]
  got_max, got_live = jax.jit(_tree.tree_max_abs_and_live)(y)
  assert got_live.tolist() == [5, 1]
  assert float(got_max) == float(_tree.tree_max_abs(y))


def test_live_leaves_count_a_nan_leaf_as_zero_and_an_inf_leaf_as_not():
  # At normal scales (a non-finite tree is not rescaled), in both counts.
  x = [jnp.ones(3), jnp.ones(2), jnp.ones(4)]
  y = [jnp.array([1.0, jnp.nan, 2.0]), jnp.array([0.0, jnp.inf]), jnp.array([0.5, 0, 0, 0])]
  # As layers (a third of their entries or more not 0): the first two
  # vectors count in both (a NaN entry is 0 to the maxima, not 0 to the
  # cosine's count: 2 of 3 and 3 of 3), the last (1 of 4) does not.
  assert jax.jit(_tree.tree_cosine_and_flags)(x, y)[2].tolist() == [2, 2]
  assert jax.jit(_tree.tree_max_abs_and_live)(y)[1].tolist() == [2, 2]


def test_squared_norm_summed_leaf_by_leaf_is_optaxs_float():
  # |y|² is built from the per-leaf sums (for the count) in optax.tree.vdot's
  # order, so the one-pass branch's cosine is the same float as before.
  rng = np.random.default_rng(1)
  y = {k: jnp.asarray(rng.normal(size=(17, 9)), jnp.float32) for k in "abcdefg"}
  x = jax.tree.map(lambda l: l[::-1], y)
  dtype = jnp.dtype(jnp.float32)
  dot, squares_x, squares_y, live = _tree._sums_and_live(x, y, dtype)
  assert np.asarray(squares_y) == np.asarray(optax.tree.vdot(y, y))
  assert np.asarray(squares_x) == np.asarray(optax.tree.vdot(x, x))
  assert np.asarray(dot) == np.asarray(optax.tree.vdot(x, y))
  assert live.tolist() == [7, 0]  # no vectors: no layers


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_give_non_finite_results(bad):
  poisoned = {"a": jnp.array([1.0, bad]), "b": jnp.array(2.0)}
  clean = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
  zero = jax.tree_util.tree_map(jnp.zeros_like, clean)
  cos = jax.jit(_tree.tree_cosine)
  for other in (clean, zero):
    assert np.isnan(float(cos(poisoned, other)))
    assert np.isnan(float(cos(other, poisoned)))
  assert not np.isfinite(float(jax.jit(_tree.tree_norm)(poisoned)))
  r, s, n = jax.jit(_tree.tree_gram)(poisoned, clean)
  assert not np.isfinite(float(s))
  r, s, n = jax.jit(_tree.tree_gram)(clean, poisoned)
  assert not np.isfinite(float(n))


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_cosine_gradient_at_every_scale(scale):
  # d cos / dx = y / (|x| |y|) - cos x / |x|²; the rescaled branch passes
  # the right gradient (the power of two is a constant).
  x, y = _normal_tree(scale, 16), _normal_tree(1.0, 17)
  grad = jax.jit(jax.grad(_tree.tree_cosine))(x, y)
  fx, fy = (
    np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree_util.tree_leaves(t)])
    for t in (x, y)
  )
  nx, ny = np.linalg.norm(fx), np.linalg.norm(fy)
  want = fy / (nx * ny) - (fx @ fy) / (nx * ny) * fx / nx**2
  got = np.concatenate([np.asarray(v, np.float64).ravel() for v in jax.tree_util.tree_leaves(grad)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_cosine_under_vmap_mixes_both_branches():
  xs = jnp.array([[1e-30, 2e-30], [1.0, 2.0], [1e30, -1e30]], jnp.float32)
  ys = jnp.array([[1e30, 1e30], [2.0, 1.0], [1.0, 1.0]], jnp.float32)
  got = jax.jit(jax.vmap(_tree.tree_cosine))(xs, ys)
  want = [_ref_cosine(x, y) for x, y in zip(np.asarray(xs), np.asarray(ys))]
  np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=2 * EPS32)


def test_sharded_scale_free_reductions_match_single_device():
  spec = _sharding_4x2()
  rng = np.random.default_rng(2)
  x = (rng.uniform(1, 2, (8, 6)) * 1e-30).astype(np.float32)
  y = (rng.uniform(1, 2, (8, 6)) * 1e30).astype(np.float32)
  xs, ys = jax.device_put(x, spec), jax.device_put(y, spec)
  assert float(jax.jit(_tree.tree_cosine)(xs, ys)) == pytest.approx(
    _ref_cosine(x, y), abs=4 * EPS32
  )
  np.testing.assert_allclose(
    float(jax.jit(_tree.tree_norm)(ys)), np.sqrt(_np_dot(y, y)), rtol=4 * EPS32
  )
  r, s, n = jax.jit(_tree.tree_gram)(xs, xs * np.float32(3))
  assert float(r / s) == pytest.approx(3.0, rel=2 * EPS32)
  assert float(jax.jit(_tree.tree_max_abs)(ys)) == np.abs(y).max()
