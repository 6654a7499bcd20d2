"""Tests of the hypergradient engine: HD, RTHO and MARTHE.

* Exactness: with mu = 1 and beta = 0 the tangent is d w_t / d eta, checked
  against ``jax.jvp`` through an unrolled training loop (SGD, momentum,
  Nesterov, Adam, weight decay + Adam).
* Every update rule against an independent float64 numpy reference written
  here (logistic regression with a hand-written gradient and Hessian).
* The paper's Figure 1 in miniature (Beale: RTHO beats HD; smoothed Bukin
  N.6: HD beats RTHO).
* Validation, extra-arg requirements, buffers, dtypes, non-finite inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _tiny
import optax_lr
from optax_lr import _checkpoint
from optax_lr import hypergradient
from optax_lr._registry import standard_promotion
from optax_lr.hypergradient import HypergradientState

# ---------------------------------------------------------------- problem

N_FEATURES = 3
REG = 0.05  # L2 term of the training loss (so the Hessian is not singular).


def _data(seed, n):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, N_FEATURES))
  true_w = np.array([1.5, -2.0, 0.5])
  y = (x @ true_w + 0.3 + rng.normal(scale=1.0, size=n) > 0).astype(np.float64)
  return x, y


TRAIN_X, TRAIN_Y = _data(0, 24)
VAL_X, VAL_Y = _data(1, 16)
BATCH = 8  # three mini-batches, cycled: the hypergradient is stochastic.


def _batch(t):
  i = (t % 3) * BATCH
  return TRAIN_X[i : i + BATCH], TRAIN_Y[i : i + BATCH]


def jax_loss(params, x, y, reg):
  z = x @ params["w"] + params["b"]
  nll = jnp.mean(jax.nn.softplus(z) - y * z)
  return nll + 0.5 * reg * jnp.sum(params["w"] ** 2)


def init_params(dtype=jnp.float32):
  return {"w": jnp.array([0.1, -0.2, 0.3], dtype), "b": jnp.array(0.05, dtype)}


# ------------------------------------------- numpy float64 reference


def _np_grad(theta, x, y, reg):
  w, b = theta[:-1], theta[-1]
  p = 1 / (1 + np.exp(-(x @ w + b)))
  r = p - y
  return np.concatenate([x.T @ r / len(y) + reg * w, [np.mean(r)]])


def _np_hvp(theta, vec, x, y, reg):
  w, b = theta[:-1], theta[-1]
  p = 1 / (1 + np.exp(-(x @ w + b)))
  dz = x @ vec[:-1] + vec[-1]
  s = p * (1 - p) * dz
  return np.concatenate([x.T @ s / len(y) + reg * vec[:-1], [np.mean(s)]])


def reference(
  steps, eta0, beta0, *, mu, kappa=0.0, momentum=0.0, multiplicative=False, use_val=False
):
  """The design page's six steps (docs/design.md) in plain float64 numpy, for
  SGD or momentum.

  ``mu=None`` is the adaptive discount. Returns per-step arrays of params,
  eta, beta, mu and c after each call.
  """
  theta = np.array([0.1, -0.2, 0.3, 0.05])
  eta, beta, c, h_prev = eta0, beta0, 0.0, 0.0
  mu_t = 0.0 if mu is None else mu
  z = np.zeros(4)  # tangent of the params
  z_m = np.zeros(4)  # tangent of the momentum buffer
  m = np.zeros(4)
  u_prev = np.zeros(4)
  out = {"params": [], "eta": [], "beta": [], "mu": [], "c": []}
  for t in range(steps):
    x, y = _batch(t)
    g = _np_grad(theta, x, y, REG)
    v = _np_grad(theta, VAL_X, VAL_Y, 0.0) if use_val else g
    h = z @ v
    g1 = -(u_prev @ v)
    c_new = mu_t * (1 + c)
    if mu is None:
      q = 0.0 if g1 == 0 else min(max(h / g1, 0.0), 1.0)
      mu_t = q ** (1 / (c + 1))
    c = c_new
    if kappa > 0:
      beta = max(beta + kappa * h * h_prev, 0.0)
    if multiplicative:
      norms = np.linalg.norm(u_prev) * np.linalg.norm(v)
      cos = 0.0 if norms == 0 else (u_prev @ v) / norms
      eta = max(eta * (1 + beta * cos), 0.0)
    else:
      eta = max(eta - beta * h, 0.0)
    h_prev = h
    # The direction u = momentum * m + g and its JVP along (z, z_m).
    hz = _np_hvp(theta, z, x, y, REG)
    m = momentum * m + g
    dm = momentum * z_m + hz
    u = m
    z = mu_t * (z - eta * dm) - u
    z_m = mu_t * dm
    theta = theta - eta * u
    u_prev = u
    for key, val in (
      ("params", theta.copy()),
      ("eta", eta),
      ("beta", beta),
      ("mu", mu_t),
      ("c", c),
    ):
      out[key].append(val)
  return {k: np.array(v) for k, v in out.items()}


def run_engine(tx, steps, *, use_val=False, dtype=jnp.float64):
  """Trains with ``tx`` under jit; returns the same per-step arrays."""

  def body(carry, t):
    params, state = carry
    xs = jnp.asarray(np.stack([_batch(i)[0] for i in range(3)]))
    ys = jnp.asarray(np.stack([_batch(i)[1] for i in range(3)]))
    x, y = xs[t % 3], ys[t % 3]
    loss_fn = lambda p: jax_loss(p, x, y, REG)
    grads = jax.grad(loss_fn)(params)
    extra = {"loss_fn": loss_fn}
    if use_val:
      extra["val_grads"] = jax.grad(jax_loss)(params, jnp.asarray(VAL_X), jnp.asarray(VAL_Y), 0.0)
    updates, state = tx.update(grads, state, params, **extra)
    params = optax.apply_updates(params, updates)
    flat = jnp.concatenate([params["w"], params["b"][None]])
    return (params, state), (flat, state.learning_rate, state.hyper_lr, state.mu, state.horizon)

  @jax.jit
  def run():
    params = init_params(dtype)
    _, outs = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
    return outs

  keys = ("params", "eta", "beta", "mu", "c")
  return {k: np.asarray(v) for k, v in zip(keys, run())}


REFERENCE_CASES = {
  "hd": (
    lambda d: optax_lr.hypergradient_descent(0.5, 0.3, direction=d),
    dict(eta0=0.5, beta0=0.3, mu=0.0),
  ),
  "hd_multiplicative": (
    lambda d: optax_lr.hypergradient_descent(0.5, 0.2, direction=d, multiplicative=True),
    dict(eta0=0.5, beta0=0.2, mu=0.0, multiplicative=True),
  ),
  "rtho": (lambda d: optax_lr.rtho(0.5, 0.05, direction=d), dict(eta0=0.5, beta0=0.05, mu=1.0)),
  "marthe_fixed_mu": (
    lambda d: optax_lr.marthe(0.5, hyper_lr=0.05, hyper_lr_step=0.0, mu=0.9, direction=d),
    dict(eta0=0.5, beta0=0.05, mu=0.9),
  ),
  "marthe_adaptive": (
    lambda d: optax_lr.marthe(0.5, hyper_lr=0.02, hyper_lr_step=0.5, direction=d),
    dict(eta0=0.5, beta0=0.02, mu=None, kappa=0.5),
  ),
  "marthe_mu0_adapted_beta": (
    lambda d: optax_lr.marthe(0.5, hyper_lr=0.02, hyper_lr_step=10.0, mu=0.0, direction=d),
    dict(eta0=0.5, beta0=0.02, mu=0.0, kappa=10.0),
  ),
}


# Each case over SGD with E = L and over momentum with a validation objective
# (the adaptive case also over SGD with val_grads): every jit costs a second.
_SETTINGS = [(0.0, False), (0.9, True)]
_REFERENCE_PARAMS = [
  pytest.param(
    case, mom, val, id=f"{case}-{'momentum' if mom else 'sgd'}-{'val_grads' if val else 'E=L'}"
  )
  for case in sorted(REFERENCE_CASES)
  for mom, val in _SETTINGS + ([(0.0, True)] if case == "marthe_adaptive" else [])
]


@pytest.mark.parametrize("case,momentum,use_val", _REFERENCE_PARAMS)
def test_update_rules_match_float64_reference(case, momentum, use_val):
  make, kwargs = REFERENCE_CASES[case]
  direction = optax.trace(momentum) if momentum else None
  steps = 30
  with jax.enable_x64(True):
    got = run_engine(make(direction), steps, use_val=use_val)
  want = reference(steps, momentum=momentum, use_val=use_val, **kwargs)
  # The rates really move (otherwise the comparison proves little).
  assert np.ptp(want["eta"]) > 1e-3
  if kwargs.get("kappa"):
    assert np.ptp(want["beta"]) > 1e-3
  if kwargs["mu"] is None:  # the adaptive discount takes values inside (0, 1)
    assert np.any((want["mu"] > 0.01) & (want["mu"] < 0.99))
  for key in ("params", "eta", "beta", "mu", "c"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)


# ---------------------------------------------------------------- exactness


EXACT_DIRECTIONS = {
  "sgd": lambda: optax.identity(),
  "momentum": lambda: optax.trace(0.9),
  "nesterov": lambda: optax.trace(0.9, nesterov=True),
  "adam": lambda: standard_promotion(optax.scale_by_adam()),
  "weight_decay_adam": lambda: standard_promotion(
    optax.chain(optax.add_decayed_weights(0.1), optax.scale_by_adam())
  ),
}


@pytest.mark.parametrize("name", sorted(EXACT_DIRECTIONS))
def test_tangent_is_forward_mode_derivative_of_unrolled_training(name):
  """mu = 1, beta = 0: Z_t = d w_t / d eta of training with a constant eta."""
  steps, eta0 = 12, 0.05 if "adam" in name else 0.3
  xs = np.stack([_batch(i)[0] for i in range(3)])
  ys = np.stack([_batch(i)[1] for i in range(3)])

  def loss_at(t):
    return lambda p: jax_loss(p, xs[t % 3], ys[t % 3], REG)

  with jax.enable_x64(True):
    params0 = init_params(jnp.float64)
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    direction = EXACT_DIRECTIONS[name]()

    def unrolled(eta):
      # Plain training with a constant rate, differentiated by jax.jvp.
      def body(carry, t):
        params, state = carry
        u, state = direction.update(jax.grad(loss_at(t))(params), state, params)
        params = jax.tree_util.tree_map(lambda w, d: w - eta * d, params, u)
        return (params, state), (params, state)

      carry = (params0, direction.init(params0))
      return jax.lax.scan(body, carry, jnp.arange(steps))[1]

    _, (dw, ds) = jax.jit(lambda eta: jax.jvp(unrolled, (eta,), (jnp.ones_like(eta),)))(
      jnp.float64(eta0)
    )

    tx = optax_lr.rtho(eta0, 0.0, direction=EXACT_DIRECTIONS[name]())

    @jax.jit
    def engine():
      def body(carry, t):
        params, state = carry
        grads = jax.grad(loss_at(t))(params)
        updates, state = tx.update(grads, state, params, loss_fn=loss_at(t))
        params = optax.apply_updates(params, updates)
        return (params, state), (state.tangent, state.direction_tangent)

      carry = (params0, tx.init(params0))
      return jax.lax.scan(body, carry, jnp.arange(steps))[1]

    tangents, state_tangents = engine()

  for got, want in zip(jax.tree_util.tree_leaves(tangents), jax.tree_util.tree_leaves(dw)):
    assert np.min(np.max(np.abs(want), axis=-1)) > 1e-3  # non-trivial
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  # The direction state's float leaves (momentum buffer, Adam's moments)
  # carry exactly d s_t / d eta; integer leaves (Adam's count) carry none.
  want_state = [
    np.asarray(d) for d in jax.tree_util.tree_leaves(ds) if np.asarray(d).dtype != jax.dtypes.float0
  ]
  # Stored structured like the direction state, None at integer leaves.
  state_tangents = jax.tree_util.tree_leaves(state_tangents)
  assert len(state_tangents) == len(want_state)
  for got, want in zip(state_tangents, want_state):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ------------------------------------------------- Figure 1 in miniature


def beale(p):
  x, y = p[0], p[1]
  return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


BUKIN_EPS = 1e-4


def smoothed_bukin(p):
  """The paper's footnote 5: sqrt(((y - 0.01 x)^2 + eps)^(1/2) + eps)."""
  x, y = p[0], p[1]
  return jnp.sqrt(jnp.sqrt((y - 0.01 * x) ** 2 + BUKIN_EPS) + BUKIN_EPS)


def _gradient_descent_runs(factory, eta0, f, p0, betas, steps=500):
  """500 steps of ``factory(eta0, beta)`` on ``f`` for each ``beta`` in ``betas``.

  ``beta`` is injected with ``optax.inject_hyperparams``, so one compiled run
  serves all of them through ``vmap``. Returns the objective after every
  step and the learning rates, each ``[len(betas), steps]``.
  """
  tx = optax.inject_hyperparams(factory)(eta0, 0.0, safety_net=False)

  def one(beta):
    state = tx.init(p0)
    state = state._replace(hyperparams={**state.hyperparams, "hyper_lr": beta})

    def body(carry, _):
      p, s = carry
      updates, s = tx.update(jax.grad(f)(p), s, p, loss_fn=f)
      p = optax.apply_updates(p, updates)
      return (p, s), (f(p), s.inner_state.learning_rate)

    return jax.lax.scan(body, (p0, state), None, length=steps)[1]

  values, rates = jax.jit(jax.vmap(one))(jnp.asarray(betas, jnp.float32))
  return np.asarray(values, np.float64), np.asarray(rates, np.float64)


def test_figure1_beale_rtho_reaches_lower_values_than_hd():
  # Flat plateaus: HD's one-step hypergradient is tiny there, RTHO's
  # accumulated one keeps raising the rate.
  p0, eta0, betas = jnp.array([1.0, 1.5]), 1e-4, [1e-7, 3e-7, 1e-6]
  hd_values, _ = _gradient_descent_runs(optax_lr.hypergradient_descent, eta0, beale, p0, betas)
  rtho_values, _ = _gradient_descent_runs(optax_lr.rtho, eta0, beale, p0, betas)
  assert np.all(np.isfinite(hd_values)) and np.all(np.isfinite(rtho_values))
  best_hd, best_rtho = hd_values.min(axis=1), rtho_values.min(axis=1)
  np.testing.assert_array_less(best_rtho, 0.5 * best_hd)


def test_figure1_smoothed_bukin_hd_does_better_than_rtho():
  # Along the valley y = 0.01 x the gradient flips sign: RTHO's undiscounted
  # history first blows the rate up, then drives it to 0; HD damps it.
  p0, eta0, betas = jnp.array([-5.0, 2.0]), 1e-2, [1e-5, 1e-4]
  minimum = np.sqrt(np.sqrt(BUKIN_EPS) + BUKIN_EPS)
  hd_values, _ = _gradient_descent_runs(
    optax_lr.hypergradient_descent, eta0, smoothed_bukin, p0, betas
  )
  rtho_values, rtho_rates = _gradient_descent_runs(optax_lr.rtho, eta0, smoothed_bukin, p0, betas)
  hd_gap, rtho_gap = hd_values[:, -1] - minimum, rtho_values[:, -1] - minimum
  np.testing.assert_array_less(hd_gap, 0.1 * rtho_gap)
  assert np.all(rtho_rates.max(axis=1) > 10 * eta0)  # resonance ...
  np.testing.assert_array_equal(rtho_rates[:, -1], 0.0)  # ... then collapse


# ------------------------------------------------- hand-computed numbers


def test_hd_and_adapted_beta_by_hand():
  """0.5 w^2 from w = 10, eta0 = 0.1: three calls computed by hand."""
  loss = lambda w: 0.5 * w**2

  def run(tx, calls=3):
    w, state = jnp.float32(10.0), None
    state = tx.init(w)
    rates, betas = [], []
    for _ in range(calls):
      updates, state = tx.update(jax.grad(loss)(w), state, w)
      w = w + updates
      rates.append(float(state.learning_rate))
      betas.append(float(state.hyper_lr))
    return rates, betas, float(w)

  # HD (Baydin): eta_t = eta_{t-1} + beta <g_t, g_{t-1}>.
  # call 0: g = 10, no previous step: eta = 0.1, w = 9.
  # call 1: g = 9: eta = 0.1 + 1e-3 * 90 = 0.19, w = 9 - 1.71 = 7.29.
  # call 2: g = 7.29: eta = 0.19 + 1e-3 * 9 * 7.29 = 0.25561.
  rates, _, w = run(optax_lr.hypergradient_descent(0.1, 1e-3))
  np.testing.assert_allclose(rates, [0.1, 0.19, 0.25561], rtol=1e-6)
  np.testing.assert_allclose(w, 7.29 - 0.25561 * 7.29, rtol=1e-6)

  # Multiplicative: cos(g_{t-1}, g_t) = 1 in 1-D: eta_t = eta_{t-1} (1 + 0.5).
  rates, _, _ = run(optax_lr.hypergradient_descent(0.1, 0.5, multiplicative=True))
  np.testing.assert_allclose(rates, [0.1, 0.15, 0.225], rtol=1e-6)

  # Adapted beta (mu = 0, beta_0 = 0, kappa = 1e-6): h_0 = 0, h_1 = -90.
  # call 1: beta = 0 + kappa h_1 h_0 = 0, eta = 0.1, w = 8.1.
  # call 2: h_2 = -9 * 8.1 = -72.9: beta = 1e-6 * 72.9 * 90 = 6.561e-3
  #   (consecutive hypergradients agree: beta grows; the paper's printed
  #   minus would clamp it at 0), eta = 0.1 + 6.561e-3 * 72.9 = 0.5782969.
  rates, betas, _ = run(optax_lr.marthe(0.1, hyper_lr_step=1e-6, mu=0.0))
  np.testing.assert_allclose(betas, [0.0, 0.0, 6.561e-3], rtol=1e-6)
  np.testing.assert_allclose(rates, [0.1, 0.1, 0.5782969], rtol=1e-6)


# ------------------------------------------------- the rate rule on its own
# hypergradient._rate_rule (steps 1-4 and their guards), called directly in
# float64 with hand-computed numbers.

# The static flags of each factory's rule.
_HD = dict(
  mu=0.0,
  hyper_lr_step=0.0,
  adaptive_mu=False,
  uses_tangent=False,
  keeps_u_prev=True,
  adapts_beta=False,
  normalized=False,
  multiplicative=False,
  select_kappa=False,
)
_HD_MULTIPLICATIVE = {**_HD, "multiplicative": True}
# hyper_lr=None: the scale-free rule, its cosine standardised.
_HD_SCALE_FREE = {**_HD, "normalized": True}
_RTHO = {**_HD, "mu": 1.0, "uses_tangent": True, "keeps_u_prev": False}
_MARTHE_SELECT = {
  **_RTHO,
  "hyper_lr_step": 123.0,
  "adapts_beta": True,
  "normalized": True,
  "select_kappa": True,
}
_MARTHE_ADAPTIVE_MU = {**_RTHO, "mu": None, "adaptive_mu": True, "keeps_u_prev": True}


def _rule_state(
  eta, *, beta=0.0, mu=0.0, horizon=0.0, h=0.0, scale=0.0, kappa=0.0, tangent=None, u_prev=None
):
  f64 = lambda x: jnp.asarray(x, jnp.float64)
  tree = lambda t: None if t is None else {"a": f64(t[:2]), "b": f64(t[2:])}
  return HypergradientState(
    count=jnp.zeros([], jnp.int32),
    learning_rate=f64(eta),
    hyper_lr=f64(beta),
    mu=f64(mu),
    horizon=f64(horizon),
    hypergradient=f64(h),
    hypergradient_scale=f64(scale),
    tangent=tree(tangent),
    direction_tangent=None,
    u_prev=tree(u_prev),
    direction_state=None,
    hyper_lr_step=f64(kappa),
    safety=None,
  )


def _rule(state, v, hyper_lr, flags):
  v = {"a": jnp.asarray(v[:2], jnp.float64), "b": jnp.asarray(v[2:], jnp.float64)}
  rate = hypergradient._rate_rule(state, v, hyper_lr=hyper_lr, **flags)
  assert all(x.dtype == jnp.float64 for x in rate[:5])
  return rate


def _assert_rate(rate, eta, beta, mu, horizon, h, kappa, finite=True):
  got = [float(x) for x in (rate.eta, rate.beta, rate.mu, rate.horizon, rate.h, rate.kappa)]
  np.testing.assert_allclose(got, [eta, beta, mu, horizon, h, kappa], rtol=1e-15)
  assert bool(rate.finite) is finite


@pytest.mark.parametrize("beta, sign, eta", [(0.02, 1.0, 0.1 + 0.02), (1.0, -1.0, 0.0)])
def test_rate_rule_additive_by_hand(beta, sign, eta):
  # RTHO, beta fixed: h = <Z, v> = 0.5 + 0.5 - 2 = -1 (sign = 1), and
  # eta = max(0.1 - beta h, 0): 0.12, or clamped at 0 for h = 1, beta = 1.
  # c_t = mu_{t-1} (1 + c_{t-1}) = 1 * (1 + 3); mu = 1 comes from the factory.
  with jax.enable_x64(True):
    state = _rule_state(0.1, beta=7.0, mu=1.0, horizon=3.0, h=0.25, tangent=[1.0, 2.0, -1.0])
    rate = _rule(state, [sign * 0.5, sign * 0.25, sign * 2.0], beta, _RTHO)
    _assert_rate(rate, eta, beta, 1.0, 4.0, -sign, 0.0)
    assert rate.objective_finite is None  # no cosine pass: the net's own test


def test_rate_rule_hd_reads_the_last_direction():
  # mu = 0: h = g1 = -<u_{t-1}, v> = -(3 + 2 + 0) = -5, eta = 0.1 + 0.01 * 5;
  # c_t = 0 * (1 + 0).
  with jax.enable_x64(True):
    state = _rule_state(0.1, u_prev=[1.0, 2.0, 4.0])
    rate = _rule(state, [3.0, 1.0, 0.0], 0.01, _HD)
    _assert_rate(rate, 0.1 - 0.01 * -5.0, 0.01, 0.0, 0.0, -5.0, 0.0)


# MARTHE's kappa selection, cos(Z, v) = 24 / 25 = 0.96 (the scale of v does
# not matter) standardised: s = 0.9 s' + 0.1 cos^2 (cos^2 itself where s' =
# 0), h = clip(cos / sqrt(s), -1, 1).
_COS = 0.96
_SCALE_FROM_ONE = 0.9 * 1.0 + 0.1 * _COS**2  # s' = 1: s = 0.99216
_H_FROM_ONE = _COS / np.sqrt(_SCALE_FROM_ONE)  # 0.96379...


@pytest.mark.parametrize(
  "scale_prev, scale, h",
  [
    (0.0, _COS**2, 1.0),  # first call: s = cos^2, so h = 1
    (1.0, _SCALE_FROM_ONE, _H_FROM_ONE),  # a larger past scale: h < 1
    (0.01, 0.9 * 0.01 + 0.1 * _COS**2, 1.0),  # a smaller one: clipped at 1
  ],
)
@pytest.mark.parametrize(
  "beta_prev, h_prev, beta_of_h",
  [
    (0.01, 0.5, lambda h: 0.01 + 0.01 * h * 0.5),  # beta grows as h_t h_{t-1} > 0
    (0.045, 100.0, lambda h: 0.05),  # clipped at MAX_NORMALIZED_HYPER_LR
    (0.045, -100.0, lambda h: 0.0),  # clipped at 0
  ],
)
def test_rate_rule_normalized_by_hand(scale_prev, scale, h, beta_prev, h_prev, beta_of_h):
  # beta = clip(beta' + kappa h h', 0, 0.05) with kappa = 0.01 from the state
  # (not the factory's 123), eta = 0.2 exp(-beta h).
  assert hypergradient.MAX_NORMALIZED_HYPER_LR == 0.05
  assert hypergradient.HYPERGRADIENT_SCALE_DECAY == 0.9
  beta = beta_of_h(h)
  with jax.enable_x64(True):
    state = _rule_state(
      0.2,
      beta=beta_prev,
      mu=1.0,
      horizon=0.0,
      h=h_prev,
      scale=scale_prev,
      kappa=0.01,
      tangent=[3.0, 0.0, 4.0],
    )
    rate = _rule(state, [4e10, 0.0, 3e10], 0.0, _MARTHE_SELECT)
    _assert_rate(rate, 0.2 * np.exp(-beta * h), beta, 1.0, 1.0, h, 0.01)
    np.testing.assert_allclose(float(rate.scale), scale, rtol=1e-15)
    assert bool(rate.objective_finite)


def test_rate_rule_normalized_is_zero_while_every_cosine_was_zero():
  # v orthogonal to Z: cos = 0, s = 0, h = 0 (no 0/0), eta unchanged.
  with jax.enable_x64(True):
    state = _rule_state(0.2, beta=0.03, mu=1.0, kappa=0.01, tangent=[3.0, 0.0, 4.0])
    rate = _rule(state, [0.0, 5.0, 0.0], 0.0, _MARTHE_SELECT)
    _assert_rate(rate, 0.2, 0.03, 1.0, 1.0, 0.0, 0.01)
    assert float(rate.scale) == 0.0


@pytest.mark.parametrize(
  "scale_prev, scale, h",
  [
    (0.0, _COS**2, -1.0),  # first call: s = cos^2, so h = -1
    (1.0, _SCALE_FROM_ONE, -_H_FROM_ONE),  # a larger past scale: |h| < 1
  ],
)
def test_rate_rule_hd_scale_free_is_standardised_by_hand(scale_prev, scale, h):
  # HD's default: h = -cos(u_{t-1}, v) = -24 / 25 (the scale of v does not
  # matter), standardised as kappa selection's, with the factory's fixed
  # beta = 0.05 (not adapted: hyper_lr_step = 0): eta = 0.2 exp(-0.05 h).
  with jax.enable_x64(True):
    state = _rule_state(0.2, beta=0.05, scale=scale_prev, h=0.3, u_prev=[3.0, 0.0, 4.0])
    rate = _rule(state, [4e-10, 0.0, 3e-10], 0.05, _HD_SCALE_FREE)
    _assert_rate(rate, 0.2 * np.exp(-0.05 * h), 0.05, 0.0, 0.0, h, 0.0)
    np.testing.assert_allclose(float(rate.scale), scale, rtol=1e-15)
    assert bool(rate.objective_finite)


def test_rate_rule_hd_scale_free_consistent_small_cosines_move_the_rate_fully():
  # The case it is for: a cosine of one sign but tiny (1e-3, as on a large
  # model) moves the rate by the full 5% once the running scale is its own:
  # s = 0.9 s' + 0.1 c^2 = c^2 for s' = c^2, so h = -1.
  cos = 1e-3
  with jax.enable_x64(True):
    state = _rule_state(0.2, beta=0.05, scale=cos**2, u_prev=[1.0, 0.0, 0.0])
    v = [cos, np.sqrt(1 - cos**2), 0.0]
    rate = _rule(state, v, 0.05, _HD_SCALE_FREE)
    _assert_rate(rate, 0.2 * np.exp(0.05), 0.05, 0.0, 0.0, -1.0, 0.0)
    # (The plain cosine would move it by exp(0.05 * 1e-3): 0.005% only.)


@pytest.mark.parametrize(
  "scale_prev, scale, h, sign",
  [
    (0.0, _COS**2, -1.0, 1.0),  # first call: s = cos^2, so h = -1
    (1.0, _SCALE_FROM_ONE, -_H_FROM_ONE, 1.0),  # a larger past scale: |h| < 1
    (1.0, _SCALE_FROM_ONE, _H_FROM_ONE, -1.0),  # opposed steps: h > 0
  ],
)
def test_rate_rule_multiplicative_default_is_standardised_by_hand(scale_prev, scale, h, sign):
  # HD-mult's default (hyper_lr=None): h = -cos(u_{t-1}, v) = -+24 / 25 (the
  # scale of v does not matter), standardised as HD's, in Baydin et al.'s
  # form eta = max(0.2 (1 - 0.05 h), 0); the state records the standardised h.
  flags = {**_HD_MULTIPLICATIVE, "normalized": True}
  with jax.enable_x64(True):
    state = _rule_state(0.2, beta=0.05, scale=scale_prev, h=0.3, u_prev=[3.0, 0.0, 4.0])
    rate = _rule(state, [sign * 4e-10, 0.0, sign * 3e-10], 0.05, flags)
    _assert_rate(rate, 0.2 * (1 - 0.05 * h), 0.05, 0.0, 0.0, h, 0.0)
    np.testing.assert_allclose(float(rate.scale), scale, rtol=1e-15)
    assert bool(rate.objective_finite)


def test_rate_rule_rtho_scale_free_is_standardised_by_hand():
  # RTHO's default (hyper_lr=None): h = cos(Z, v) = 24 / 25 over its tangent,
  # standardised as HD's and kappa selection's (s' = 1: s = 0.99216), with
  # the factory's fixed beta = 0.05: eta = 0.2 exp(-0.05 h).
  flags = {**_RTHO, "normalized": True}
  with jax.enable_x64(True):
    state = _rule_state(0.2, mu=1.0, scale=1.0, tangent=[3.0, 0.0, 4.0])
    rate = _rule(state, [4.0, 0.0, 3.0], 0.05, flags)
    _assert_rate(rate, 0.2 * np.exp(-0.05 * _H_FROM_ONE), 0.05, 1.0, 1.0, _H_FROM_ONE, 0.0)
    np.testing.assert_allclose(float(rate.scale), _SCALE_FROM_ONE, rtol=1e-15)


@pytest.mark.parametrize(
  "flags, hyper_lr, eta",
  [
    # eta = 0.2 - beta <Z, v> = 0.2 - 0.001 * 24, the raw sum unstandardised.
    (_RTHO, 0.001, 0.2 - 0.001 * 24.0),
    # eta = 0.2 (1 + beta cos(u_{t-1}, v)), the raw cosine 0.96.
    (_HD_MULTIPLICATIVE, 0.01, 0.2 * (1 + 0.01 * _COS)),
  ],
  ids=["additive", "multiplicative"],
)
def test_rate_rule_other_rules_leave_the_scale_alone(flags, hyper_lr, eta):
  # Only the defaults (hyper_lr=None) standardise: with an explicit hyper_lr,
  # the paper's additive rule and Baydin et al.'s multiplicative one read the
  # raw hypergradient and keep s.
  with jax.enable_x64(True):
    state = _rule_state(0.2, mu=1.0, scale=0.25, tangent=[3.0, 0.0, 4.0], u_prev=[3.0, 0.0, 4.0])
    rate = _rule(state, [4.0, 0.0, 3.0], hyper_lr, flags)
    assert float(rate.scale) == 0.25
    np.testing.assert_allclose(float(rate.eta), eta, rtol=1e-15)


@pytest.mark.parametrize("sign, eta", [(1.0, 0.1 * (1 + 0.02 * 0.96)), (-1.0, 0.0)])
def test_rate_rule_multiplicative_by_hand(sign, eta):
  # HD's multiplicative rule: cos(u_{t-1}, v) = +-0.96, eta = max(0.1 (1 +
  # beta cos), 0), beta = 0.02 (or 2: 1 - 1.92 < 0 is clamped at 0); the
  # state records h = -cos.
  beta = 0.02 if sign > 0 else 2.0
  with jax.enable_x64(True):
    state = _rule_state(0.1, u_prev=[3.0, 0.0, 4.0])
    rate = _rule(state, [sign * 4.0, 0.0, sign * 3.0], beta, _HD_MULTIPLICATIVE)
    _assert_rate(rate, eta, beta, 0.0, 0.0, -sign * 0.96, 0.0)
    assert bool(rate.objective_finite)


@pytest.mark.parametrize(
  "tangent, q",
  [
    ([1.0, 1.0, 0.0], 1.5 / 2.5),  # h = 1.5, g1 = 2.5
    ([4.0, 0.0, 0.0], 1.0),  # h = 4 > g1: clipped at 1
    ([-1.0, 0.0, 0.0], 0.0),  # h = -1 < 0: clipped at 0
  ],
)
def test_rate_rule_adaptive_mu_by_hand(tangent, q):
  # mu_t = clip(h / g1, 0, 1) ** (1 / (c_{t-1} + 1)) with g1 = -<u_{t-1}, v>
  # = 2 + 0.5 = 2.5 and c_{t-1} = 1; c_t = 0.5 * (1 + 1) = 1; eta = 0.1 -
  # 0.01 h.
  with jax.enable_x64(True):
    state = _rule_state(0.1, mu=0.5, horizon=1.0, tangent=tangent, u_prev=[-2.0, -1.0, 0.0])
    rate = _rule(state, [1.0, 0.5, 0.0], 0.01, _MARTHE_ADAPTIVE_MU)
    h = tangent[0] + 0.5 * tangent[1]
    _assert_rate(rate, 0.1 - 0.01 * h, 0.01, q ** (1 / 2), 1.0, h, 0.0)


def test_rate_rule_adaptive_mu_is_zero_where_g1_is_zero():
  with jax.enable_x64(True):
    state = _rule_state(0.1, mu=0.5, horizon=1.0, tangent=[1.0, 1.0, 0.0], u_prev=[0.0, 0.0, 0.0])
    rate = _rule(state, [1.0, 0.5, 0.0], 0.01, _MARTHE_ADAPTIVE_MU)
    _assert_rate(rate, 0.1 - 0.01 * 1.5, 0.01, 0.0, 1.0, 1.5, 0.0)


@pytest.mark.parametrize(
  "flags, hyper_lr",
  [
    (_HD, 0.01),
    (_RTHO, 0.01),
    (_HD_MULTIPLICATIVE, 0.02),
    (_MARTHE_SELECT, 0.0),
    (_HD_SCALE_FREE, 0.05),
    ({**_HD_MULTIPLICATIVE, "normalized": True}, 0.05),
    (_MARTHE_ADAPTIVE_MU, 0.01),
  ],
  ids=[
    "hd",
    "rtho",
    "multiplicative",
    "normalized",
    "hd-scale-free",
    "multiplicative-scale-free",
    "adaptive-mu",
  ],
)
@pytest.mark.parametrize("where", ["v", "tangent"])
def test_rate_rule_non_finite_keeps_the_previous_values(flags, hyper_lr, where):
  # A NaN in v, or an Inf in the tangent (HD's u_{t-1}): eta, beta, mu, c and
  # h keep the state's, finite = False. v's own flag (from the cosine pass)
  # sees only v's NaN.
  with jax.enable_x64(True):
    bad_z = [np.inf, 1.0, 2.0] if where == "tangent" else [1.0, 1.0, 2.0]
    state = _rule_state(
      0.3, beta=0.2, mu=0.5, horizon=2.0, h=0.7, kappa=0.01, tangent=bad_z, u_prev=bad_z
    )
    v = [np.nan, 1.0, 1.0] if where == "v" else [1.0, 1.0, 1.0]
    rate = _rule(state, v, hyper_lr, flags)
    kappa = 0.01 if flags["select_kappa"] else flags["hyper_lr_step"]
    _assert_rate(rate, 0.3, 0.2, 0.5, 2.0, 0.7, kappa, finite=False)
    if rate.objective_finite is not None:
      assert bool(rate.objective_finite) is (where != "v")


# ---------------------------------------------------------------- validation


# Bad hyperparameters: tests/test_bad_input.py.


def test_marthe_takes_its_hyperparameters_as_keywords():
  # hyper_lr_step=None (the default) is kappa selection (issue 11).
  assert isinstance(optax_lr.marthe(0.1), optax.GradientTransformationExtraArgs)
  with pytest.raises(TypeError):
    optax_lr.marthe(0.1, 0.0, 1e-3)  # the hyperparameters are keyword-only
  optax_lr.marthe(0.1, hyper_lr_step=0.0)  # 0: a fixed beta


@pytest.mark.parametrize(
  "make",
  [
    lambda: optax_lr.rtho(0.1, 0.01),
    lambda: optax_lr.marthe(0.1, hyper_lr_step=1e-3),
    lambda: optax_lr.marthe(0.1, hyper_lr_step=0.0, mu=0.5),
  ],
  ids=["rtho", "marthe_adaptive", "marthe_mu0.5"],
)
def test_mu_positive_needs_loss_fn_and_params_at_trace_time(make):
  tx, params = make(), init_params()
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  state = tx.init(params)
  with pytest.raises(ValueError, match="loss_fn"):
    jax.jit(lambda g, s, p: tx.update(g, s, p))(grads, state, params)
  loss_fn = lambda p: jax_loss(p, TRAIN_X[:8], TRAIN_Y[:8], REG)
  with pytest.raises(ValueError, match="params"):
    tx.update(grads, state, None, loss_fn=loss_fn)


@pytest.mark.parametrize(
  "make",
  [
    lambda: optax_lr.hypergradient_descent(0.1, 0.01),
    lambda: optax_lr.hypergradient_descent(0.1, 0.01, multiplicative=True),
    lambda: optax_lr.marthe(0.1, hyper_lr_step=1e-3, mu=0.0),
  ],
  ids=["hd", "hd_multiplicative", "marthe_mu0"],
)
def test_mu_zero_needs_no_loss_fn_and_computes_no_hvp(make):
  tx, params = make(), init_params()
  grads = jax.tree_util.tree_map(jnp.ones_like, params)

  def must_not_be_called(p):
    raise AssertionError("mu = 0 evaluated loss_fn")

  step = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=must_not_be_called))
  state = tx.init(params)
  for _ in range(3):
    updates, state = step(grads, state, params)
  # loss_fn was never traced, so no Hessian-vector product was built; and
  # loss_fn is not needed at all. The params are, by the safety net only.
  updates, state = tx.update(grads, state, params)
  assert state.tangent is None and state.direction_tangent is None
  assert float(state.learning_rate) != 0.1
  with pytest.raises(ValueError, match="params"):
    tx.update(grads, state)


# ---------------------------------------------------------------- buffers


@pytest.mark.parametrize(
  "make,extra,direction_tangents",
  [
    (lambda d: optax_lr.hypergradient_descent(0.1, 0.01, direction=d), 1, 0),
    (lambda d: optax_lr.rtho(0.1, 0.01, direction=d), 1, None),
    (lambda d: optax_lr.marthe(0.1, hyper_lr_step=0.0, mu=0.5, direction=d), 1, None),
    (lambda d: optax_lr.marthe(0.1, hyper_lr_step=1e-3, direction=d), 2, None),
  ],
  ids=["hd", "rtho", "marthe_fixed_mu", "marthe_adaptive"],
)
@pytest.mark.parametrize(
  "direction,float_leaves",
  [
    (None, 0),
    (optax.trace(0.9), 1),
    (optax.scale_by_adam(), 2),
  ],
  ids=["sgd", "momentum", "adam"],
)
def test_extra_param_sized_buffers(make, extra, direction_tangents, direction, float_leaves):
  """HD: u_prev only. RTHO/MARTHE: Z (+ u_prev when mu is adaptive) plus a
  tangent for each float leaf of the direction state (not Adam's count)."""
  params = init_params()
  state = make(direction).init(params)
  assert isinstance(state, HypergradientState)
  assert float(optax_lr.current_lr(state)) == pytest.approx(0.1)
  n = len(jax.tree_util.tree_leaves(params))
  own = jax.tree_util.tree_leaves((state.tangent, state.u_prev))
  assert len(own) == extra * n
  expected = float_leaves * n if direction_tangents is None else 0
  assert len(jax.tree_util.tree_leaves(state.direction_tangent)) == expected
  # Fresh buffers, nothing aliased: a train step can donate all of them.
  buffers = [x for x in jax.tree_util.tree_leaves((params, state)) if x.ndim]
  pointers = [x.unsafe_buffer_pointer() for x in buffers]
  assert len(set(pointers)) == len(pointers)


def test_bf16_params_keep_bf16_updates_and_a_float32_tangent():
  params = init_params(jnp.bfloat16)
  x, y = jnp.asarray(TRAIN_X[:8], jnp.bfloat16), jnp.asarray(TRAIN_Y[:8], jnp.bfloat16)
  loss_fn = lambda p: jax_loss(p, x, y, REG).astype(jnp.float32)
  tx = optax_lr.marthe(0.5, hyper_lr=0.05, hyper_lr_step=0.1, direction=optax.trace(0.9))
  state0 = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss_fn)(params), state, params, loss_fn=loss_fn)
    return optax.apply_updates(params, updates), state, updates

  state = state0
  for _ in range(6):
    params, state, updates = step(params, state)
  for u in jax.tree_util.tree_leaves(updates):
    assert u.dtype == jnp.bfloat16
  for z in jax.tree_util.tree_leaves((state.tangent, state.direction_tangent)):
    assert z.dtype == jnp.float32 and np.all(np.isfinite(z))
  assert float(np.abs(state.tangent["w"]).max()) > 0
  for u in jax.tree_util.tree_leaves(state.u_prev):
    assert u.dtype == jnp.bfloat16
  assert state.learning_rate.dtype == jnp.float32
  assert state.learning_rate != 0.5  # it adapts
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(state0)
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(state0)):
    assert a.dtype == b.dtype and a.shape == b.shape


# ---------------------------------------------------------------- non-finite


def test_adam_parameter_with_zero_gradient_keeps_a_finite_tangent():
  """Adam's sqrt(nu) at nu = 0 has a NaN JAX JVP (0 * inf); the step's
  derivative there is 0, and the other parameters' tangent must survive."""
  params = dict(init_params(), unused=jnp.ones(2))
  loss_fn = lambda p: jax_loss(p, TRAIN_X[:8], TRAIN_Y[:8], REG)
  adam = standard_promotion(optax.scale_by_adam())

  # The premise: jax.jvp of Adam's step along a zero tangent gives NaN.
  @jax.jit
  def adam_jvp_along_zero(params):
    grads, state = jax.grad(loss_fn)(params), adam.init(params)
    zero_state = jax.tree_util.tree_map(
      lambda s: np.zeros(s.shape, jax.dtypes.float0) if s.dtype == jnp.int32 else jnp.zeros_like(s),
      state,
    )
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, grads)
    return jax.jvp(adam.update, (grads, state), (zero_grads, zero_state))[1][0]

  assert np.all(np.isnan(adam_jvp_along_zero(params)["unused"]))

  tx = optax_lr.rtho(0.01, 1e-3, direction=adam)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss_fn)(params), state, params, loss_fn=loss_fn)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(8):
    params, state = step(params, state)
  np.testing.assert_array_equal(state.tangent["unused"], 0.0)
  assert np.all(np.isfinite(state.tangent["w"]))
  assert float(np.abs(state.tangent["w"]).min()) > 0  # never reset
  assert float(state.learning_rate) != 0.01


LOSS = lambda p: jax_loss(p, TRAIN_X[:8], TRAIN_Y[:8], REG)
NAN_HESSIAN_LOSS = lambda p: LOSS(p) * jnp.float32(jnp.nan)


def _step_fn(tx, loss_fn):
  return jax.jit(lambda g, s, p, **kw: tx.update(g, s, p, loss_fn=loss_fn, **kw))


_SCALARS = ("learning_rate", "hyper_lr", "mu", "horizon", "hypergradient")


@pytest.mark.parametrize("poison", ["val_grads", "grads", "hvp"])
def test_non_finite_hypergradient_keeps_scalars_and_resets_tangents(poison):
  # The paper's rule with its own guard; the safety net, which rolls back
  # on non-finite gradients instead, has its tests in test_safety.py.
  tx = optax_lr.marthe(
    0.5, hyper_lr=0.02, hyper_lr_step=0.5, direction=optax.trace(0.9), safety_net=False
  )
  clean = _step_fn(tx, LOSS)
  params = init_params()
  state = tx.init(params)
  for _ in range(6):
    updates, state = clean(jax.grad(LOSS)(params), state, params)
    params = optax.apply_updates(params, updates)
  before = state
  assert float(np.abs(before.tangent["w"]).max()) > 0
  grads = jax.grad(LOSS)(params)
  if poison == "val_grads":
    nan = jax.tree_util.tree_map(lambda g: jnp.full_like(g, jnp.nan), grads)
    after = clean(grads, before, params, val_grads=nan)[1]
  elif poison == "grads":
    inf = jax.tree_util.tree_map(lambda g: jnp.full_like(g, jnp.inf), grads)
    after = clean(inf, before, params)[1]
  else:
    # A finite gradient but a NaN Hessian: this call's h is still finite, so
    # it adapts the rate; its new tangent is NaN, which the next call's h
    # catches. Compare that next call with one after a clean call.
    after = _step_fn(tx, NAN_HESSIAN_LOSS)(grads, before, params)[1]
    assert np.all(np.isfinite([float(getattr(after, k)) for k in _SCALARS]))
    before = clean(grads, before, params)[1]
    after = clean(grads, after, params)[1]
  for key in _SCALARS:
    np.testing.assert_array_equal(getattr(after, key), getattr(before, key), err_msg=key)
  for leaf in jax.tree_util.tree_leaves((after.tangent, after.direction_tangent)):
    np.testing.assert_array_equal(leaf, 0.0)
  # Clean calls adapt the rate again from a fresh tangent. An Inf gradient
  # poisons the momentum buffer itself for good: the rate then stays frozen.
  state = after
  for _ in range(4):
    updates, state = clean(jax.grad(LOSS)(params), state, params)
    params = optax.apply_updates(params, updates)
    assert np.isfinite(float(state.learning_rate))
  if poison == "grads":
    assert float(state.learning_rate) == float(after.learning_rate)
  else:
    assert float(state.learning_rate) != float(after.learning_rate)


# ---------------------------------------------------------------- defaults


def _normalised_reference(eta0, mu, beta0, kappa, steps, curvatures, w0, multiplicative=False):
  """Float64 numpy reference of the scale-free rule on 0.5 sum(c w^2), SGD.

  h_hat = <Z, g> / (|Z| |g|) (0 where a norm is 0), with Z = -u_prev for
  mu = 0; standardised (the default rule of HD, HD-mult, RTHO and kappa
  selection), s = 0.9 s + 0.1 h_hat^2 (h_hat^2 where s = 0), h_hat =
  clip(h_hat / sqrt(s), -1, 1);
  when kappa > 0 (kappa selection), beta = clip(beta + kappa h_hat
  h_hat_prev, 0, 0.05); eta = eta
  exp(-beta h_hat), or with ``multiplicative`` Baydin et al.'s
  max(eta (1 - beta h_hat), 0); Z <- mu (Z - eta H Z) - g.
  """
  c, w = np.asarray(curvatures, np.float64), np.asarray(w0, np.float64)
  eta, beta, h_prev, scale = eta0, beta0, 0.0, 0.0
  z, u_prev, rates = np.zeros_like(w), np.zeros_like(w), []
  for _ in range(steps):
    g = c * w
    tangent = -u_prev if mu == 0 else z
    norms = np.linalg.norm(tangent) * np.linalg.norm(g)
    h = 0.0 if norms == 0 else tangent @ g / norms
    scale = h * h if scale == 0 else 0.9 * scale + 0.1 * h * h
    h = 0.0 if scale == 0 else min(max(h / np.sqrt(scale), -1.0), 1.0)
    if kappa > 0:
      beta = min(max(beta + kappa * h * h_prev, 0.0), 0.05)
    eta = max(eta * (1 - beta * h), 0.0) if multiplicative else eta * np.exp(-beta * h)
    z = mu * (z - eta * c * z) - g
    u_prev, h_prev = g, h
    w = w - eta * g
    rates.append(eta)
  return np.array(rates), w


@pytest.mark.parametrize(
  "name,make,mu,beta0,kappa,steps,multiplicative",
  [
    (
      "hd",
      lambda: optax_lr.hypergradient_descent(0.02, safety_net=False),
      0.0,
      hypergradient.DEFAULT_HYPER_LR,
      0.0,
      40,
      False,
    ),
    # Baydin et al.'s multiplicative rule, with the same default beta and
    # the same standardised cosine.
    (
      "hd_mult",
      lambda: optax_lr.hypergradient_descent(0.02, multiplicative=True, safety_net=False),
      0.0,
      hypergradient.DEFAULT_HYPER_LR,
      0.0,
      40,
      True,
    ),
    (
      "rtho",
      lambda: optax_lr.rtho(0.02, safety_net=False),
      1.0,
      hypergradient.DEFAULT_HYPER_LR,
      0.0,
      40,
      False,
    ),
    # kappa selection with a fixed mu; no divergence here, so no rollback.
    # Its standardised h is +-1 here, and beta reaches its cap 0.05 by call
    # 6: the rate grows 5% a call, to 0.12 by call 40.
    (
      "marthe",
      lambda: optax_lr.marthe(0.02, mu=0.5),
      0.5,
      0.0,
      hypergradient.DEFAULT_HYPER_LR_STEP,
      40,
      False,
    ),
  ],
)
def test_scale_free_defaults_match_a_float64_reference(
  name, make, mu, beta0, kappa, steps, multiplicative
):
  curvatures, w0 = jnp.array([1.0, 3.0, 5.0]), jnp.array([1.0, -2.0, 0.5])
  loss = lambda w: 0.5 * jnp.sum(curvatures * w * w)
  tx = make()

  @jax.jit
  def run(w):
    def body(carry, _):
      w, s = carry
      u, s = tx.update(jax.grad(loss)(w), s, w, loss_fn=loss, value=loss(w))
      w = optax_lr.apply_updates(w, u, s)
      return (w, s), s.learning_rate

    return jax.lax.scan(body, (w, tx.init(w)), None, length=steps)

  (w, _), rates = run(w0)
  want_rates, want_w = _normalised_reference(
    0.02,
    mu,
    beta0,
    kappa,
    steps,
    curvatures,
    w0,
    multiplicative=multiplicative,
  )
  # float32 against float64 over compounding steps.
  np.testing.assert_allclose(np.asarray(rates), want_rates, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(w), want_w, rtol=1e-4, atol=1e-7)
  # The rate moved: the defaults adapt it.
  assert abs(want_rates[-1] / 0.02 - 1) > 0.05, name


@pytest.mark.parametrize(
  "factory, extra",
  [
    (optax_lr.hypergradient_descent, {}),
    (optax_lr.rtho, {"loss_fn": lambda w: 0.5 * jnp.sum(w * w)}),
  ],
)
def test_injected_hyper_lr_takes_effect_at_the_next_update(factory, extra):
  """A fixed beta is read at every update, not frozen in the state at init,
  so an injected (scheduled, or edited) hyper_lr changes the next step."""
  tx = optax.inject_hyperparams(factory)(0.1, hyper_lr=1e-2, safety_net=False)
  w = jnp.array([1.0, -2.0])
  grads = lambda w: w  # the gradient of 0.5 |w|^2
  state = tx.init(w)
  step = jax.jit(lambda w, s: tx.update(grads(w), s, w, **extra))
  for _ in range(2):  # the second call has a hypergradient to apply
    updates, state = step(w, state)
    w = w + updates
  moved = float(state.inner_state.learning_rate)
  assert moved != pytest.approx(0.1)
  state = state._replace(hyperparams={**state.hyperparams, "hyper_lr": jnp.float32(0.0)})
  for _ in range(3):
    updates, state = step(w, state)
    w = w + updates
  assert float(state.inner_state.learning_rate) == moved  # beta = 0: frozen


@pytest.mark.parametrize(
  "factory", [optax_lr.hypergradient_descent, optax_lr.rtho, optax_lr.marthe]
)
def test_each_factory_documents_the_chain_pitfall_with_its_own_call(factory):
  doc = factory.__doc__
  assert "{chain_pitfall}" not in doc
  pitfalls = doc[doc.index("  Pitfalls:\n") : doc.index("  References:")]
  assert f"optax.chain(optax.scale_by_adam(), optax_lr.{factory.__name__}(lr))" in pitfalls
  # Indented as the section's body, so Sphinx renders it inside the section.
  body = pitfalls.splitlines()[1:]
  assert body and all(line.startswith("    ") for line in body if line)


@pytest.mark.parametrize(
  "direction, rate",
  [(None, 0.05), (optax.trace(0.9), 0.05), (optax.scale_by_adam(), 0.005)],
  ids=["sgd", "momentum", "adam"],
)
@pytest.mark.parametrize(
  "factory",
  [
    lambda rate, **kw: optax_lr.rtho(rate, **kw),
    lambda rate, **kw: optax_lr.marthe(rate, hyper_lr_step=1e-5, **kw),
  ],
  ids=["rtho", "marthe"],
)
def test_the_net_leaves_a_healthy_tangent_run_unchanged(factory, direction, rate):
  # With the net on, the direction, its JVP and the tangents' update run
  # inside the rollback's lax.cond (the HVP outside it), and a rollback
  # zeroes the tangents there. A run that never rolls back must compute what
  # it computes without the net, up to where XLA fuses (and so rounds) the
  # tangent's update: rates, params and tangent agree to float32 rounding
  # amplified over 60 steps. (Unlike ASLR's, the two are not equal to the
  # bit, nor were they with the net's earlier design, which restored the
  # direction state by a lax.cond after the update: over momentum RTHO's
  # params differed by up to 1.4e-7 there.)
  # optax's Adam bias correction raises a float to an int32 count.
  direction = None if direction is None else standard_promotion(direction)
  train = lambda tx: _tiny.train(tx, jax.nn.tanh, pass_loss_fn=True)
  with_net, state, losses, rates = train(factory(rate, direction=direction))
  without, plain_state, _, plain_rates = train(factory(rate, direction=direction, safety_net=False))
  # No rollback, at least one save, the rate inside the net's band all along
  # (its clip never acted) and moving: the net and the tangent took part.
  assert int(state.safety.rollbacks) == 0 and bool(state.safety.saved)
  band = _checkpoint.RATE_BAND
  assert float(rates.min()) > rate / band and float(rates.max()) < rate * band
  assert float(rates.max()) > 1.2 * float(rates.min())
  assert float(losses[-10:].mean()) < float(losses[:10].mean())
  np.testing.assert_allclose(rates, plain_rates, rtol=1e-4)

  def close(a, b):  # to 1e-5 of the leaf's largest entry
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))

  jax.tree_util.tree_map(close, with_net, without)
  jax.tree_util.tree_map(close, state.tangent, plain_state.tangent)
