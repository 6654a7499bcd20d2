r"""Hypergradient learning rates: HD, RTHO and MARTHE on one tangent engine.

The learning rate :math:`\eta` is itself trained by gradient descent on an
objective :math:`E` (the training loss, or a validation loss passed as
``val_grads``). All three methods keep a *tangent* :math:`Z_t \approx
\partial w_t / \partial \eta`, the direction in which the weights move when the
learning rate changes, and read the hypergradient as
:math:`h_t = \langle Z_t, \nabla E(w_t)\rangle`. They differ only in how much of
the past the tangent remembers, a discount :math:`\mu \in [0, 1]`:

* :func:`hypergradient_descent` (Baydin et al.): :math:`\mu = 0`, the tangent
  is the last step's direction, :math:`Z_t = -u_{t-1}`;
* :func:`rtho` (Franceschi et al.): :math:`\mu = 1`, the exact forward-mode
  derivative of :math:`w_t` with respect to a constant learning rate;
* :func:`marthe` (Donini et al.): any fixed :math:`\mu`, or :math:`\mu` adapted
  online, and an adapted hyper-learning rate :math:`\beta`.

The engine (the design page (``docs/design.md``), "The tangent engine"), at
update call :math:`t` with gradient :math:`g_t`, :math:`v_t = \nabla E(w_t)`
and :math:`(u_t, s_{t+1}) = \mathrm{direction}(g_t, s_t, w_t)`:

1. :math:`h_t = \langle Z_t, v_t \rangle`.
2. adaptive :math:`\mu`: :math:`g_1 = -\langle u_{t-1}, v_t\rangle`,
   :math:`q = \mathrm{clip}(h_t / g_1, 0, 1)` (0 where :math:`g_1 = 0`),
   :math:`\mu_t = q^{1/(c_{t-1} + 1)}`,
   :math:`c_t = \mu_{t-1}(1 + c_{t-1})`.
3. adapted :math:`\beta`: :math:`\beta_t = \max(\beta_{t-1} + \kappa h_t
   h_{t-1}, 0)`.
4. :math:`\eta_t = \max(\eta_{t-1} - \beta_t h_t, 0)`.
5. the update is :math:`-\eta_t u_t`.
6. :math:`Z_{t+1} = \mu_t A_t Z_t - u_t`, where :math:`A_t Z_t` is the JVP of
   the whole step :math:`(w, s) \mapsto (w - \eta_t u, s')` along
   :math:`(Z_t, Z^s_t)`; the gradient's tangent :math:`H_t Z_t` comes from
   ``jax.jvp(jax.grad(loss_fn), (w_t,), (Z_t,))`` (forward over reverse), and
   the direction's own Jacobian from ``jax.jvp`` of ``direction.update``. Any
   direction works (SGD, momentum, Nesterov, Adam, chains with weight decay)
   with no hand-written recursion; integer state leaves (Adam's ``count``)
   carry no tangent.

Defaults (no hyper-hyperparameter to tune):

* ``hyper_lr=None`` (HD, HD-mult, RTHO) is a scale-free rule: the
  hypergradient is normalised by the norms it multiplies,
  :math:`\hat h_t = h_t / (\|Z_t\| \|v_t\|) \in [-1, 1]` (a cosine, as
  Baydin et al.'s multiplicative rule uses), and
  :math:`\eta_t = \eta_{t-1} \exp(-\beta \hat h_t)` with
  :math:`\beta` = ``DEFAULT_HYPER_LR`` = 0.05: at most 5% per step, whatever
  the scale of the loss, and never 0 or negative. The cosine is standardised
  as MARTHE's default does (below): it shrinks with the model's size and
  noise (about -0.012 between HD's consecutive steps on a 120k-param
  Transformer, whose rate then moved 0.06% a step, too slowly to leave a
  rate 30 times too high in 600 steps; about 0.01 over RTHO's tangent on the
  benchmark MLPs), while its sign stays consistent. RTHO's long tangent
  keeps one sign for hundreds of steps, so its standardised rate moves up
  to 5% a step for as long: on the benchmarks its worst initial rate
  improved on 9 of 10 MLP and CNN task-direction pairs, held on the
  Transformer LM, and got worse on digits over Adam, where the rate wanders
  (0.01 to 0.05 from 0.01). HD with
  ``multiplicative=True`` reads the same standardised cosine in Baydin et
  al.'s form, :math:`\eta_t = \eta_{t-1}(1 - \beta \hat h_t)` (the first
  order of the exponential), with the same :math:`\beta`.
* ``hyper_lr_step=None`` (MARTHE) is the paper's own :math:`\kappa`
  selection (Section 4: start high, decimate until the learning system does
  not diverge), run inside the train step. The cosine above is
  standardised by its running root mean square, :math:`s_t = 0.9 s_{t-1} +
  0.1 \cos_t^2` (``HYPERGRADIENT_SCALE_DECAY``) and :math:`\hat h_t =
  \mathrm{clip}(\cos_t / \sqrt{s_t}, -1, 1)`, because the cosine of a long
  tangent with a minibatch gradient is ~0.01 and would move neither
  :math:`\beta` nor :math:`\eta`; :math:`\hat h` then drives
  :math:`\beta_t = \mathrm{clip}(\beta_{t-1} + \kappa \hat h_t \hat
  h_{t-1}, 0, 0.05)` (at most 5% a step, as above) and :math:`\eta_t =
  \eta_{t-1}\exp(-\beta_t \hat h_t)`; :math:`\kappa` starts at
  ``DEFAULT_HYPER_LR_STEP`` = 0.01 and every divergence (below) rolls back
  to the last checkpoint, divides :math:`\kappa` by 10 and restarts
  :math:`\beta` from 0 (and :math:`s`).
* An explicit number keeps the paper's additive rule exactly.

The safety net (``safety_net=True``, the default; ``optax_lr._checkpoint``):
every ``SAVE_EVERY`` = 20 healthy calls (with a training loss ``value`` no
worse than the checkpoint's, when given; without one, with :math:`|g_t|^2`
within ``GRADIENT_GROWTH`` = 10 times its running average) the params and
the direction state are saved; a divergence (non-finite gradients, a
non-finite ``value`` or one above ten times its reference (three times
before the first save), a thousand times its running level or, in most
recent calls, three times its level at the last save, a
:math:`v_t` exactly zero everywhere, or on more than half of the most
leaves it ever had nonzero, at a ``value`` above half the first
loss (a dead model: saturated outputs or dead units; such a call never
saves), after a rollback 40 calls with nothing saved and the running loss
level still above the first loss (the backed-off rate is still too high),
and under :math:`\kappa` selection a rate leaving its band) rolls back to
them in the same call, resets the tangents, and sets the rate to the checkpoint's (then
a tenth of it for each further divergence from the same checkpoint). The
rate is kept within :math:`[\eta_0 / 10^4, \eta_0 \cdot 10^4]`
(``RATE_BAND``); a tangent that pushes it below the floor is stale (with
:math:`\mu = 1` it remembers directions taken at far larger rates) and
restarts. Memory: one params copy
and one copy of the direction state; ``safety_net=False`` removes both (and
the ``params`` argument is then optional for HD). Without a ``value``, RTHO
and MARTHE give their net ``loss_fn(params)`` (its forward pass is the one
the Hessian-vector product linearises, so XLA computes it once); HD, and
MARTHE with :math:`\mu = 0` (which takes no ``loss_fn``), warn once per
trace that their net sees non-finite numbers only.

Numerics:

* Tangents (:math:`Z` and the direction-state tangent) are stored per leaf in
  the leaf's dtype promoted to at least float32. :math:`Z` is a running sum of
  directions (with :math:`\mu = 1` it grows like :math:`\sum_i u_i`); in bf16
  its 8-bit mantissa would drop each new :math:`u_t` once :math:`Z` is ~256
  times larger, so bf16 params get a float32 tangent (twice the bytes of a
  bf16 buffer). The JVP itself runs in the params' dtype.
* Entries of the step's JVP that are non-finite while :math:`H_t Z_t` is
  finite there are taken as 0. They arise where the direction is not
  differentiable along a zero tangent: Adam's :math:`\sqrt{\nu}` at
  :math:`\nu = 0` (a parameter whose gradient has always been exactly 0) has
  ``0 * inf = NaN`` as its JAX JVP, although the step's derivative there is 0.
* Non-finite hypergradients (NaN/Inf gradients, ``val_grads`` or HVPs, or
  overflow) leave :math:`\eta, \beta, \mu, c, h` (and :math:`s`) unchanged
  and reset the tangents to 0: whenever :math:`h_t` or :math:`g_1` is not finite. A
  non-finite new tangent :math:`Z_{t+1}` is caught the same way one call
  later, since it makes :math:`h_{t+1} = \langle Z_{t+1}, v_{t+1}\rangle`
  non-finite; this costs no reduction over the tree. The learning rate is
  never NaN, Inf or negative.

Bad input fails loudly: a ``direction`` that is not an optax transformation
raises ``ValueError`` at construction; a missing or non-callable ``loss_fn``,
one that does not return a scalar float, and ``params`` or ``val_grads`` not
shaped like the gradients (a ``(3, 2)`` leaf against a ``(2, 3)`` one would
give a finite, wrong ``<Z, v>``) raise ``ValueError`` naming the argument
when the update is traced. Tangents are created with ``zeros_like`` the
params, so a state built from sharded params is sharded like them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_lr import _checkpoint
from optax_lr import _checks
from optax_lr import _monitor
from optax_lr import _partition
from optax_lr._tree import accumulation_dtype
from optax_lr._tree import tree_cosine_and_flags
from optax_lr._tree import tree_max_abs_and_live
from optax_lr._tree import tree_sum_squares
from optax_lr._tree import tree_vdot

__all__ = [
  "HypergradientState",
  "hypergradient_descent",
  "marthe",
  "rtho",
]


class HypergradientState(NamedTuple):
  """State of :func:`hypergradient_descent`, :func:`rtho` and :func:`marthe`.

  ``A`` below is the accumulation dtype of the params (float32, float64 under
  x64 with float64 params).
  """

  # (The ignore: `count` shadows tuple.count, as in optax's own states.)
  count: jax.Array  # type: ignore[assignment]  # [] int32: update calls so far (saturating).
  learning_rate: jax.Array  # [] A: eta_t, the rate of the last update.
  hyper_lr: jax.Array  # [] A: beta_t, the hyper-learning rate.
  mu: jax.Array  # [] A: mu_t, the tangent's discount of the last update.
  horizon: jax.Array  # [] A: c_t, effective horizon of the tangent.
  hypergradient: jax.Array  # [] A: h_t of the last accepted update.
  # [] A: the scale-free rules' (the defaults of HD, HD-mult and RTHO,
  # MARTHE's kappa selection) running mean of cos(Z_t, v_t)^2, by which they
  # divide the cosine; 0 before the first call and after a rollback, and for
  # every other rule.
  hypergradient_scale: jax.Array
  # Z_{t+1}: params-like, each leaf in its dtype promoted to >= float32;
  # None for mu = 0 (HD), whose tangent is -u_prev.
  tangent: Any
  # Tangent of the direction state: structured like it, each float leaf's
  # dtype promoted to >= float32, None at its integer leaves; None for mu = 0.
  direction_tangent: Any
  # u_t: params-like in the params' dtypes; None for a fixed mu > 0 (RTHO),
  # which never reads it.
  u_prev: Any
  direction_state: Any  # the direction's own state s_{t+1}.
  # [] A: kappa, the step that adapts beta (MARTHE); its kappa selection
  # divides it by 10 at every rollback. 0 when beta is fixed.
  hyper_lr_step: jax.Array
  # The safety net (checkpoint, costs, rollback flags); None with
  # safety_net=False.
  safety: Optional[_checkpoint.SafetyNetState]


_monitor.register_method(
  HypergradientState,
  rollback=_checkpoint.net_rollback,
  best_params=_checkpoint.net_best_params,
)


# --------------------------------------------------------------------------
# Defaults (``hyper_lr=None``, ``hyper_lr_step=None``): module docstring.

# beta of the scale-free rule eta_t = eta_{t-1} exp(-beta cos_t): at most 5%
# per step, a factor e^5 = 148 over 100 steps that all agree (from 1e-4, a
# good rate of ~0.1 is reached within a few hundred noisy steps; 0.02 took
# ~900 on digits). Chosen on digits, MNIST-1D and optax's contrib targets.
# HD's multiplicative rule eta_t = eta_{t-1} (1 + beta cos) takes the same
# beta and standardised cosine when hyper_lr=None (it is the first-order
# form of the same rule; its own 0.02 of before took the rate from 1e-4
# only to 0.04 in 900 steps on MNIST-1D, worst held-out 1.69 against 1.42
# with 0.05).
DEFAULT_HYPER_LR = 0.05
# MARTHE's kappa selection starts here ("high") and divides by 10 at every
# rollback; beta (scale-free) stays within [0, MAX_NORMALIZED_HYPER_LR]:
# with the standardised |h_t| <= 1 below, at most 5% a step, as the fixed
# beta of HD and RTHO. (A cap of 0.5, up to 65% a step, made the rate jump
# threefold within ten steps, typically, on the benchmark tasks; its worst
# held-out losses were 1.197 on MNIST-1D and 0.094 on digits, against 1.202
# and 0.091 with 0.05.)
DEFAULT_HYPER_LR_STEP = 1e-2
MAX_NORMALIZED_HYPER_LR = DEFAULT_HYPER_LR
# Under kappa selection and in the defaults of HD, HD-mult and RTHO the
# cosine is divided by its root mean square over the last ~10 calls (a
# running mean of its square with this decay). The cosine of a tangent with
# a minibatch gradient is small: over RTHO's tangent on the benchmark MLPs,
# |cos| ~ 0.01 after a few hundred steps, a step exp(-0.05 cos) of 0.05%,
# and kappa * h_t * h_{t-1} ~ 1e-6, so beta never moves; over HD's on the
# benchmarks' 120k-param Transformer from a rate 30 times too high, cos =
# -0.012 on average (std 0.030, negative at 68% of the steps), and in 600
# steps the rate fell only from 0.1 to 0.069. The ratio is O(1) whatever
# the tangent's length or the model's size (a consistent sign gives +-1,
# noise alone a mean near 0), clipped to [-1, 1].
HYPERGRADIENT_SCALE_DECAY = 0.9
# With the safety net, the rate stays within [eta_0 / RATE_BAND,
# eta_0 * RATE_BAND]; leaving it is a divergence under kappa selection.
RATE_BAND = _checkpoint.RATE_BAND


# --------------------------------------------------------------------------
# The engine. (Arguments are checked by `_checks`, at construction.)


def _tangent_dtype(leaf: Any) -> jnp.dtype:
  return accumulation_dtype(leaf)


def _is_float(leaf: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def _undefined_to_zero(d: jax.Array, hessian_z: jax.Array) -> jax.Array:
  """``d``, a JVP output entry, with 0 where it is non-finite but ``H Z`` is not.

  Such an entry is a ``0 * inf`` of the direction's own Jacobian (Adam's
  ``sqrt`` at ``nu = 0``) along a zero tangent, whose true value is 0. A
  non-finite ``H Z`` entry propagates, so the next hypergradient sees it.
  """
  bad = jnp.logical_not(jnp.isfinite(d)) & jnp.isfinite(hessian_z)
  return jnp.where(bad, jnp.zeros_like(d), d)


class _Rate(NamedTuple):
  """What :func:`_rate_rule` returns: the scalars of one update call.

  Each ``[]`` in the accumulation dtype ``A`` of the state's rate, except the
  flags.
  """

  eta: jax.Array  # [] A: eta_t (the previous one where not `finite`).
  beta: jax.Array  # [] A: beta_t, likewise.
  mu: jax.Array  # [] A: mu_t, likewise.
  horizon: jax.Array  # [] A: c_t, likewise.
  h: jax.Array  # [] A: h_t as the state records it, likewise.
  scale: jax.Array  # [] A: the scale-free rules' running mean of cos^2, likewise.
  kappa: jax.Array  # [] A: the step that adapts beta (not guarded).
  finite: jax.Array  # [] bool: the new values were all finite and are taken.
  # [] bool: whether v_t is finite, when the rule's cosine pass gives it at no
  # cost (normalized or multiplicative); None otherwise.
  objective_finite: Optional[jax.Array]
  # [] int32: how many leaves of v_t are not all zeros, likewise.
  objective_live: Optional[jax.Array]


def _rate_rule(
  state: HypergradientState,
  objective_grads: Any,
  *,
  mu: Any,
  hyper_lr: Any,
  hyper_lr_step: Any,
  adaptive_mu: bool,
  uses_tangent: bool,
  keeps_u_prev: bool,
  adapts_beta: bool,
  normalized: bool,
  multiplicative: bool,
  select_kappa: bool,
) -> _Rate:
  r"""Steps 1-4 of the engine and their guards: the rate :math:`\eta_t`.

  Reads ``state``'s ``learning_rate``, ``hyper_lr``, ``mu``, ``horizon``,
  ``hypergradient``, ``hypergradient_scale`` (:math:`s`, the scale-free rules),
  ``hyper_lr_step`` and, as the flags need them,
  ``tangent`` (:math:`Z_t`) and ``u_prev`` (:math:`u_{t-1}`);
  ``objective_grads`` is :math:`v_t`. ``mu``, ``hyper_lr`` and
  ``hyper_lr_step`` are the factory's (a Python number or an injected
  array); the flags are :func:`_engine`'s static structure. Where any new
  value is not finite, :math:`\eta, \beta, \mu, c, h, s` keep the state's
  and ``finite`` is False. Pure: no safety net, no tangent step.
  """
  dtype = state.learning_rate.dtype
  # Steps 1-2: the hypergradient h_t = <Z_t, v_t> and the one-step
  # hypergradient g1 = -<u_{t-1}, v_t> (equal to h_t when mu = 0). The
  # scale-free rules (normalized, multiplicative) read only a cosine,
  # computed below over the whole float range, where the raw h under- or
  # overflows (float32 trees near 1e-20 or 1e20): the raw sums are taken
  # only for the rules that read them (and adaptive mu's ratio h / g1).
  reads_raw = adaptive_mu or not (normalized or multiplicative)
  finite = jnp.ones([], jnp.bool_)
  if reads_raw:
    if uses_tangent:
      h = tree_vdot(state.tangent, objective_grads).astype(dtype)
    if keeps_u_prev:
      g1 = -tree_vdot(state.u_prev, objective_grads).astype(dtype)
    if not uses_tangent:
      h = g1
    finite = jnp.isfinite(h)
  if adaptive_mu:
    nonzero = g1 != 0
    ratio = h / jnp.where(nonzero, g1, jnp.ones_like(g1))
    q = jnp.where(nonzero, jnp.clip(ratio, 0, 1), jnp.zeros_like(ratio))
    mu_t = q ** (1 / (state.horizon + 1))
    finite = finite & jnp.isfinite(g1)
  else:
    # A fixed mu is read from the factory, not the state, so a value
    # injected by optax.inject_hyperparams takes effect (equal otherwise).
    mu_t = jnp.asarray(mu, dtype)
  horizon = state.mu * (1 + state.horizon)
  # Whether v_t is finite, at any scale (|v_t|^2 overflows for float32
  # gradients near 1e20), whatever the tangent does (an overflowing tangent
  # only resets it): the safety net's test that training diverged.
  objective_finite = objective_live = None
  if normalized or multiplicative:
    # The scale-free rules' cosine, without under- or overflow at any
    # scale (NaN when either tree holds a NaN or an Inf), gives the flag at
    # no extra pass. Over HD (mu = 0) the tangent is -u_{t-1}.
    tangent = state.tangent if uses_tangent else state.u_prev
    cosine, objective_finite, objective_live = tree_cosine_and_flags(tangent, objective_grads)
    cosine = cosine.astype(dtype)
  scale = state.hypergradient_scale
  if normalized:
    # The scale-free hypergradient h_t / (|Z_t| |v_t|), in [-1, 1].
    h = cosine if uses_tangent else -cosine
    finite = finite & jnp.isfinite(h)
    # Standardised: h_t = clip(cos_t / sqrt(s_t), -1, 1) with s_t the
    # running mean of cos^2 (its first value cos_0^2, so h_0 = +-1). The
    # clip bounds the step; h_t = 0 where every cosine so far was 0.
    decay = HYPERGRADIENT_SCALE_DECAY
    squared = h * h
    previous = state.hypergradient_scale
    scale = jnp.where(previous == 0, squared, decay * previous + (1 - decay) * squared)
    positive = scale > 0
    root = jnp.sqrt(jnp.where(positive, scale, jnp.ones_like(scale)))
    h = jnp.where(positive, jnp.clip(h / root, -1, 1), jnp.zeros_like(h))

  # Step 3: beta grows when consecutive hypergradients agree (gradient
  # descent on beta; the paper's printed minus sign would shrink it).
  # kappa and a fixed beta likewise come from the factory; kappa selection
  # keeps its decimated kappa in the state.
  kappa = state.hyper_lr_step if select_kappa else jnp.asarray(hyper_lr_step, dtype)
  if adapts_beta:
    beta_t = jnp.maximum(state.hyper_lr + kappa * h * state.hypergradient, 0)
    if normalized:
      beta_t = jnp.minimum(beta_t, MAX_NORMALIZED_HYPER_LR)
  else:
    beta_t = jnp.asarray(hyper_lr, dtype)

  # Step 4.
  if multiplicative:
    # Baydin's rule eta (1 + beta cos(u_{t-1}, v_t)) = eta (1 - beta h) reads
    # h = -cos (bit for bit the same product), which the state records, not
    # the raw h, which may overflow; its default (normalized) reads the
    # standardised h above instead.
    if not normalized:
      h = -cosine
      finite = finite & jnp.isfinite(h)
    eta_t = jnp.maximum(state.learning_rate * (1 - beta_t * h), 0)
  elif normalized:
    # exp keeps the rate positive: it can shrink, never reach 0.
    eta_t = state.learning_rate * jnp.exp(-beta_t * h)
  else:
    eta_t = jnp.maximum(state.learning_rate - beta_t * h, 0)

  finite = finite & jnp.isfinite(eta_t) & jnp.isfinite(beta_t)
  finite = finite & jnp.isfinite(mu_t) & jnp.isfinite(horizon)
  keep = lambda new, old: jnp.where(finite, new, old)
  return _Rate(
    eta=keep(eta_t, state.learning_rate),
    beta=keep(beta_t, state.hyper_lr),
    mu=keep(mu_t, state.mu),
    horizon=keep(horizon, state.horizon),
    h=keep(h, state.hypergradient),
    scale=keep(scale, state.hypergradient_scale),
    kappa=kappa,
    finite=finite,
    objective_finite=objective_finite,
    objective_live=objective_live,
  )


def _engine(
  learning_rate: float,
  *,
  hyper_lr: float,
  hyper_lr_step: float,
  mu: Optional[float],
  multiplicative: bool,
  normalized: bool,
  select_kappa: bool,
  safety_net: bool,
  direction: Optional[optax.GradientTransformation],
  name: str,
) -> optax.GradientTransformationExtraArgs:
  """The shared tangent engine; ``mu=None`` is the adaptive discount.

  ``normalized``: the scale-free rule of ``hyper_lr=None`` and of kappa
  selection, its cosine divided by the cosine's running root mean square
  (module docstring, "Defaults"); ``select_kappa``: MARTHE's kappa selection
  (rollback and kappa / 10 on divergence); ``safety_net``: checkpoints and
  rollbacks.
  """
  direction = optax.identity() if direction is None else direction
  _checks.check_direction(direction)
  direction = optax.with_extra_args_support(direction)
  adaptive_mu = mu is None
  # mu = 0 is HD: the tangent is -u_prev, no Z, no loss_fn, no HVP. The
  # structure may depend on mu and kappa only when they are Python numbers:
  # optax.inject_hyperparams passes arrays (traced under jit) to `init` and
  # to every `update`, which must agree, so an array takes the general path
  # (a tangent for any mu, beta adapted by any kappa, 0 included: exact).
  uses_tangent = mu is None or _checks.is_array(mu) or mu > 0
  keeps_u_prev = not uses_tangent or adaptive_mu
  adapts_beta = _checks.is_array(hyper_lr_step) or hyper_lr_step > 0

  def init_fn(params):
    dtype = accumulation_dtype(params)
    direction_state = direction.init(params)
    scalar = lambda x: jnp.asarray(x, dtype=dtype)
    # `zeros_like` places each buffer like the leaf it mirrors: params sharded
    # over a mesh give tangents sharded the same way, not a whole copy on
    # one device.
    if uses_tangent:
      tangent = jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=_tangent_dtype(p)), params)
      # Structured like the direction state (None at its integer leaves),
      # so optax.tree.map_params finds the params-shaped parts in it.
      direction_tangent = jax.tree_util.tree_map(
        lambda leaf: jnp.zeros_like(leaf, dtype=_tangent_dtype(leaf)) if _is_float(leaf) else None,
        direction_state,
      )
    else:
      tangent = direction_tangent = None
    u_prev = (
      jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=jnp.result_type(p)), params)
      if keeps_u_prev
      else None
    )
    safety = (
      _checkpoint.net_init(params, direction_state, scalar(learning_rate)) if safety_net else None
    )
    return HypergradientState(
      count=jnp.zeros([], jnp.int32),
      learning_rate=scalar(learning_rate),
      hyper_lr=scalar(hyper_lr),
      mu=scalar(0.0 if adaptive_mu else mu),
      horizon=scalar(0.0),
      hypergradient=scalar(0.0),
      hypergradient_scale=scalar(0.0),
      tangent=tangent,
      direction_tangent=direction_tangent,
      u_prev=u_prev,
      direction_state=direction_state,
      hyper_lr_step=scalar(hyper_lr_step),
      safety=safety,
    )

  def update_fn(
    updates, state, params=None, *, loss_fn=None, val_grads=None, value=None, **extra_args
  ):
    grads = updates
    dtype = state.learning_rate.dtype
    if uses_tangent:
      if loss_fn is None:
        raise ValueError(
          f"loss_fn: {name} with mu > 0 needs the training loss on the "
          "current batch for Hessian-vector products: call "
          "update(grads, state, params, loss_fn=lambda p: loss(p, batch))."
        )
    if uses_tangent or safety_net:
      _check_params(params, grads, name)
    if uses_tangent:
      _checks.check_loss_fn(loss_fn, params, name)
    if val_grads is not None:
      # Inside optax.partition a full val_grads arrives: take this group's.
      val_grads = _partition.mask_like(val_grads, grads)
      _checks.check_tree_like("val_grads", val_grads, grads, "the gradients")
      extra_args["val_grads"] = val_grads
    objective_grads = grads if val_grads is None else val_grads
    if loss_fn is not None:
      extra_args["loss_fn"] = loss_fn
    if value is not None:
      extra_args["value"] = value
    elif uses_tangent and safety_net:
      # The net's loss tests need the training loss at `params`, and RTHO and
      # MARTHE hold it: `loss_fn(params)`. Its forward pass is the one the
      # HVP below linearises (and the caller's gradient ran), so XLA computes
      # it once. Without it the net would see non-finite numbers only: over
      # Adam from rate 1 a deep tanh MLP's saturated units, which leave every
      # number finite, ended RTHO's run at 2566 times the best hand-tuned
      # loss; with it, 0.12 times (`benchmarks.fresh_tasks --without-value`).
      value = loss_fn(params)

    # Steps 1-4: the rate eta_t (and beta_t, mu_t, c_t, h_t), with the
    # guards that keep the old values where a new one is not finite.
    rate = _rate_rule(
      state,
      objective_grads,
      mu=mu,
      hyper_lr=hyper_lr,
      hyper_lr_step=hyper_lr_step,
      adaptive_mu=adaptive_mu,
      uses_tangent=uses_tangent,
      keeps_u_prev=keeps_u_prev,
      adapts_beta=adapts_beta,
      normalized=normalized,
      multiplicative=multiplicative,
      select_kappa=select_kappa,
    )
    eta_t, beta_t, mu_t, horizon = rate.eta, rate.beta, rate.mu, rate.horizon
    h_kept, kappa, finite = rate.h, rate.kappa, rate.finite
    scale_kept = rate.scale
    objective_finite, objective_live = rate.objective_finite, rate.objective_live
    if safety_net and objective_finite is None:
      # Whether v_t is finite, at any scale (|v_t|^2 overflows for float32
      # gradients near 1e20): the safety net's test that training diverged;
      # and how many of its leaves are not all zeros (a dead model).
      objective_max_abs, objective_live = tree_max_abs_and_live(objective_grads)
      objective_finite = jnp.isfinite(objective_max_abs)

    # The safety net: a non-finite hypergradient (NaN/Inf gradients, HVPs or
    # overflow) or a blown-up loss rolls back to the last checkpoint with a
    # smaller rate; under kappa selection so does a rate leaving its band.
    direction_state = state.direction_state
    net = state.safety
    if safety_net:
      # Training diverged when the gradients did; a non-finite hypergradient
      # with finite gradients is an overflowing tangent, which the guard
      # above handles by resetting it.
      healthy = objective_finite & jnp.isfinite(eta_t)
      # The band that keeps the rate from running away or collapsing for good.
      low, high = _checkpoint.band(net.initial_rate)
      if select_kappa:
        healthy = healthy & (eta_t >= low) & (eta_t <= high)
      # Without a `value`, the gradient norm keeps saves off a blow-up.
      grad_sq = None if value is not None else tree_sum_squares(grads)
      if value is None:
        _checkpoint.warn_without_value(name)
      save, rollback, cost = _checkpoint.net_decide(
        net, value, healthy, grad_sq=grad_sq, grad_live=objective_live
      )
      checkpoint, grads = _checkpoint.save_if(
        save,
        net.checkpoint,
        params,
        direction_state,
        state.learning_rate,
        cost,
        grads,
      )
      eta_t = jnp.where(rollback, _checkpoint.backoff_rate(eta_t, net, checkpoint), eta_t)
      if select_kappa:
        kappa = jnp.where(rollback, kappa / 10, kappa)
        beta_t = jnp.where(rollback, jnp.zeros_like(beta_t), beta_t)
      h_kept = jnp.where(rollback, jnp.zeros_like(h_kept), h_kept)
      scale_kept = jnp.where(rollback, jnp.zeros_like(scale_kept), scale_kept)
      finite = finite & jnp.logical_not(rollback)
    if safety_net:
      pushed_below = eta_t < low
      eta_t = jnp.clip(eta_t, low, high).astype(dtype)
      if uses_tangent:
        # A tangent that pushes the rate to the band's floor is stale: with
        # mu = 1 it remembers the whole trajectory, and directions taken at
        # rates 10^4 times larger outweigh the present for tens of thousands
        # of steps, so the rate would sit at the floor for good. Restart
        # its horizon.
        finite = finite & jnp.logical_not(pushed_below)

    # Steps 5-6: the direction, and (mu > 0) the JVP of the whole step.
    if uses_tangent:
      # H_t Z_t outside the net's cond, where XLA shares its forward pass
      # with the caller's gradient; the direction and its JVP inside it.
      hessian_z = _hessian_z(loss_fn, params, state.tangent, grads)

      def tangent_step():
        u, new_state, tangent, direction_tangent = _tangent_step(
          direction,
          grads,
          direction_state,
          params,
          hessian_z,
          extra_args,
          state.tangent,
          state.direction_tangent,
          eta_t,
          mu_t,
          finite,
        )
        return u, (new_state, (tangent, direction_tangent))

      if safety_net and _has_arrays(direction_state):
        # A rollback restores the direction state and zeroes the tangents
        # (as `finite` would): no tangent of a trajectory left behind.
        u, (new_direction_state, (tangent, direction_tangent)) = _checkpoint.direction_or_restore(
          rollback,
          tangent_step,
          checkpoint.direction_state,
          zeroed=(state.tangent, state.direction_tangent),
        )
      else:
        # Nothing params-sized to restore (SGD), and with the cond here RTHO's
        # and MARTHE's nets cost 1.042 and 1.065 of the net-off step on the
        # speed MLP. `finite` zeroes the tangents on a rollback. (This bypass
        # belongs to the tangent step, not to direction_or_restore: HD's,
        # newton_lr's and ASLR's cond over SGD compiles with no array copy,
        # and with the cond gone AALR's step copied a params leaf.)
        u, (new_direction_state, (tangent, direction_tangent)) = tangent_step()
        if safety_net:
          new_direction_state = jax.tree_util.tree_map(
            lambda new, saved: jnp.where(rollback, saved, new),
            new_direction_state,
            checkpoint.direction_state,
          )
    elif safety_net:
      # A rollback's u is no step: its u_prev is zeroed (below).
      u, new_direction_state = _checkpoint.direction_or_restore(
        rollback,
        lambda: direction.update(grads, direction_state, params, **extra_args),
        checkpoint.direction_state,
      )
      tangent = direction_tangent = None
    else:
      u, new_direction_state = direction.update(grads, direction_state, params, **extra_args)
      tangent = direction_tangent = None

    if safety_net:
      new_updates = _checkpoint.step_or_rollback(
        rollback, u, -eta_t, checkpoint.params, params, grads
      )
      net = _checkpoint.net_update(
        net, checkpoint, save, rollback, cost, grad_sq=grad_sq, grad_live=objective_live
      )
    else:
      new_updates = jax.tree_util.tree_map(
        lambda d, g: (-eta_t * d.astype(dtype)).astype(jnp.result_type(g)),
        u,
        grads,
      )
    # u_prev carries HD's tangent -u_t: reset it with the scalars' guard. (A
    # non-finite u_t itself makes the next call's g1 non-finite, which that
    # call guards.) The select also lets XLA write u_t in place over the
    # donated buffer right after the g1 reduction read it; a plain copy of
    # u_t costs two copies of the tree.
    u_prev = (
      jax.tree_util.tree_map(
        lambda d, old: jnp.where(finite, d.astype(old.dtype), jnp.zeros_like(old)),
        u,
        state.u_prev,
      )
      if keeps_u_prev
      else None
    )
    new_state = HypergradientState(
      count=optax.safe_increment(state.count),
      learning_rate=eta_t,
      hyper_lr=beta_t,
      mu=mu_t,
      horizon=horizon,
      hypergradient=h_kept,
      hypergradient_scale=scale_kept,
      tangent=tangent,
      direction_tangent=direction_tangent,
      u_prev=u_prev,
      direction_state=new_direction_state,
      hyper_lr_step=kappa,
      safety=net,
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_params(params, grads, name):
  _checks.check_params(params, grads, name, "for its tangent or its safety net's checkpoint")


def _has_arrays(tree) -> bool:
  return any(jnp.ndim(leaf) > 0 for leaf in jax.tree_util.tree_leaves(tree))


def _tangent_in_params_dtype(tangent, params):
  # Tangent of w, in the params' dtypes (jax.jvp wants matching dtypes).
  return jax.tree_util.tree_map(lambda z, p: z.astype(jnp.result_type(p)), tangent, params)


def _hessian_z(loss_fn, params, tangent, grads):
  """``H_t Z_t``, forward over reverse, in the gradients' dtypes.

  Only the tangent output is used: XLA drops the primal gradient's last
  matmuls and shares the forward pass with the caller's gradient computation.
  """
  z_params = _tangent_in_params_dtype(tangent, params)
  _, hessian_z = jax.jvp(jax.grad(loss_fn), (params,), (z_params,))
  return jax.tree_util.tree_map(lambda hz, g: hz.astype(jnp.result_type(g)), hessian_z, grads)


def _tangent_step(
  direction,
  grads,
  direction_state,
  params,
  hessian_z,
  extra_args,
  tangent,
  direction_tangent,
  eta,
  mu,
  finite,
):
  """One direction step and ``(Z_{t+1}, Z^s_{t+1})`` for ``mu > 0``."""
  z_params = _tangent_in_params_dtype(tangent, params)

  # Tangent of the direction state: stored float leaves, float0 elsewhere.
  # (`direction_state` leads the tree maps: a None in the stored tangent sits
  # where it has an integer leaf.)
  state_tangent = jax.tree_util.tree_map(
    lambda leaf, slot: (
      np.zeros(jnp.shape(leaf), jax.dtypes.float0)
      if slot is None
      else slot.astype(jnp.result_type(leaf))
    ),
    direction_state,
    direction_tangent,
  )

  def step(g, s, w):
    return direction.update(g, s, w, **extra_args)

  (u, new_direction_state), (du, d_state) = jax.jvp(
    step,
    (grads, direction_state, params),
    (hessian_z, state_tangent, z_params),
  )

  # Z_{t+1} = mu (Z - eta du) - u, in the tangent's dtype, reset to 0 when
  # this call's hypergradient was not finite. One elementwise pass, written
  # in place over the donated tangent: a non-finite Z_{t+1} (NaN gradients,
  # HVPs, overflow) is caught by the next call's h = <Z_{t+1}, v>, which is
  # then non-finite too, rather than by a reduction over the tree here.
  def advance(z, d, hz, uu):
    d = _undefined_to_zero(d, hz).astype(z.dtype)
    new = mu.astype(z.dtype) * (z - eta.astype(z.dtype) * d) - uu.astype(z.dtype)
    return jnp.where(finite, new, jnp.zeros_like(new))

  new_tangent = jax.tree_util.tree_map(advance, tangent, du, hessian_z, u)
  new_direction_tangent = jax.tree_util.tree_map(
    lambda d, old: (
      None
      if old is None
      else jnp.where(finite, mu.astype(old.dtype) * d.astype(old.dtype), jnp.zeros_like(old))
    ),
    d_state,
    direction_tangent,
  )
  return u, new_direction_state, new_tangent, new_direction_tangent


def _fixed_mu(
  name: str,
  learning_rate: float,
  hyper_lr: Optional[float],
  *,
  mu: float,
  multiplicative: bool,
  direction: Optional[optax.GradientTransformation],
  safety_net: bool,
) -> optax.GradientTransformationExtraArgs:
  """HD (``mu=0``) or RTHO (``mu=1``): a fixed discount, a fixed ``hyper_lr``.

  Checks the public factories' arguments (``learning_rate``,
  ``multiplicative``, ``hyper_lr``, ``safety_net``, in that order) and builds
  the engine; ``hyper_lr=None`` takes :data:`DEFAULT_HYPER_LR` and the
  standardised cosine (with ``multiplicative``, in Baydin et al.'s form).
  """
  learning_rate = _checks.non_negative("learning_rate", learning_rate)
  multiplicative = _checks.boolean("multiplicative", multiplicative)
  normalized = hyper_lr is None
  if normalized:
    hyper_lr = DEFAULT_HYPER_LR
  else:
    hyper_lr = _checks.non_negative("hyper_lr", hyper_lr)
  return _engine(
    learning_rate,
    hyper_lr=hyper_lr,
    hyper_lr_step=0.0,
    mu=mu,
    multiplicative=multiplicative,
    normalized=normalized,
    select_kappa=False,
    safety_net=_checks.boolean("safety_net", safety_net),
    direction=direction,
    name=name,
  )


# --------------------------------------------------------------------------
# Public factories.

# The pitfall every hypergradient factory's docstring states (README,
# "Pitfalls"), written once; ``_with_chain_pitfall`` puts it in place of the
# docstring's ``{chain_pitfall}`` line with that line's indentation.
_CHAIN_PITFALL = """\
The optimizer goes in ``direction=``, never before the method in an
``optax.chain``: ``optax.chain(optax.scale_by_adam(), optax_lr.{name}(lr))``
runs, but the method then takes Adam's output for the gradient, so its
hypergradient and tangent ignore Adam's dependence on the rate and a
rollback cannot restore Adam's moments. Measured for RTHO after ten Adam
steps on a 3-parameter problem (README, "Pitfalls"): the tangent
``dw/dη`` is ``[6.426, -9.918, 9.603]`` with ``direction=``, equal to
``jax.jvp`` through the unrolled steps, and ``[5.021, -8.780, 8.931]``
in the chain. Inside ``optax.partition``, pass
``loss_fn=optax_lr.partition_loss(loss_fn, params)`` (with the full
params) where the method needs ``loss_fn``."""


def _with_chain_pitfall(factory):
  """``factory`` with ``_CHAIN_PITFALL`` in its docstring's placeholder line."""
  if factory.__doc__ is None:  # python -OO strips docstrings
    return factory
  lines = factory.__doc__.splitlines()
  (at,) = [i for i, line in enumerate(lines) if line.strip() == "{chain_pitfall}"]
  indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
  text = _CHAIN_PITFALL.format(name=factory.__name__).splitlines()
  lines[at : at + 1] = [indent + line for line in text]
  factory.__doc__ = "\n".join(lines)
  return factory


@_with_chain_pitfall
def hypergradient_descent(
  learning_rate: float,
  hyper_lr: Optional[float] = None,
  *,
  direction: Optional[optax.GradientTransformation] = None,
  multiplicative: bool = False,
  safety_net: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Hypergradient descent (HD): the learning rate follows the last step.

  The tangent is the last step's direction, :math:`Z_t = -u_{t-1}`
  (:math:`\mu = 0`), so the hypergradient is
  :math:`h_t = -\langle u_{t-1}, v_t\rangle` and

  .. math::
    \eta_t = \max(\eta_{t-1} + \beta \langle u_{t-1}, v_t\rangle, 0),

  or, with ``multiplicative=True``,
  :math:`\eta_t = \max(\eta_{t-1}(1 + \beta \cos(u_{t-1}, v_t)), 0)`
  (:math:`\cos = 0` where a norm is 0). The update is :math:`-\eta_t u_t`.
  :math:`v_t` is ``val_grads`` when given, else the incoming gradient
  (:math:`E = L`: Baydin et al.'s rule). No ``loss_fn`` and no
  Hessian-vector product are needed; one extra param-sized buffer
  (``u_prev``) is carried. NaN/Inf hypergradients leave :math:`\eta`
  unchanged.

  Args:
    learning_rate: the initial rate :math:`\eta_0 \ge 0`.
    hyper_lr: the hyper-learning rate :math:`\beta \ge 0` of the rule
      above, or ``None`` (the default) for the scale-free rule
      :math:`\eta_t = \eta_{t-1}\exp(0.05\, \mathrm{clip}(c_t /
      \sqrt{s_t}, -1, 1))` with :math:`c_t = \cos(u_{t-1}, v_t)` and
      :math:`s_t = 0.9 s_{t-1} + 0.1 c_t^2` its running mean square (module
      docstring, "Defaults"), which needs no tuning.
    direction: optax transformation giving the unscaled descent direction
      :math:`u_t` (default ``optax.identity()``: SGD).
    multiplicative: use the multiplicative rule (with ``hyper_lr=None``,
      the scale-free rule's :math:`\beta` = 0.05 and standardised cosine:
      :math:`\eta_t = \eta_{t-1}(1 + 0.05\, \mathrm{clip}(c_t /
      \sqrt{s_t}, -1, 1))`).
    safety_net: checkpoint and roll back on divergence (module docstring);
      ``False`` saves one params copy and one direction-state copy of memory.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its ``update`` accepts the
    keyword-only extra arguments ``val_grads`` and ``value`` (the training
    loss, read by the safety net; without it, with the net on, ``update``
    warns once per trace that the net sees non-finite numbers only) and
    ignores unknown ones. With the safety net it needs ``params``; apply its
    updates with ``optax_lr.apply_updates`` to land exactly on a checkpoint
    from NaN params.

  Example:
    >>> import jax, jax.numpy as jnp, optax_lr
    >>> loss = lambda w: jnp.sum((w - 3.0) ** 2)
    >>> tx = optax_lr.hypergradient_descent(0.01, hyper_lr=0.001)
    >>> w = jnp.zeros(2)
    >>> state = tx.init(w)
    >>> for _ in range(5):
    ...   value, grads = jax.value_and_grad(loss)(w)
    ...   updates, state = tx.update(grads, state, w, value=value)
    ...   w = w + updates
    >>> bool(optax_lr.current_lr(state) > 0.01)  # consecutive steps agree
    True

  Pitfalls:
    {chain_pitfall}

  References:
    Baydin, Cornish, Martinez-Rubio, Schmidt, Wood, `Online Learning Rate
    Adaptation with Hypergradient Descent <https://arxiv.org/abs/1703.04782>`_,
    ICLR 2018.

    Donini, Franceschi, Pontil, Majumder, Frasconi, `Scheduling the Learning
    Rate via Hypergradients: New Insights and a New Algorithm
    <https://arxiv.org/abs/1910.10238>`_, 2019.
  """
  return _fixed_mu(
    "hypergradient_descent",
    learning_rate,
    hyper_lr,
    mu=0.0,
    multiplicative=multiplicative,
    direction=direction,
    safety_net=safety_net,
  )


@_with_chain_pitfall
def rtho(
  learning_rate: float,
  hyper_lr: Optional[float] = None,
  *,
  direction: Optional[optax.GradientTransformation] = None,
  safety_net: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Real-time hyperparameter optimization (RTHO) of the learning rate.

  The tangent is the exact forward-mode derivative of the weights with respect
  to the learning rate over the whole trajectory (:math:`\mu = 1`):

  .. math::
    h_t = \langle Z_t, v_t\rangle, \quad
    \eta_t = \max(\eta_{t-1} - \beta h_t, 0), \quad
    Z_{t+1} = A_t Z_t - u_t,

  with :math:`A_t Z_t` the JVP of the whole optimizer step
  :math:`(w, s) \mapsto (w - \eta_t u, s')` along :math:`(Z_t, Z^s_t)`; for SGD
  :math:`A_t Z_t = Z_t - \eta_t H_t Z_t`. With :math:`\beta = 0`, :math:`Z_t`
  is exactly :math:`d w_t / d\eta` of training with the constant rate
  :math:`\eta_0`. :math:`v_t` is ``val_grads`` when given (the gradient of a
  validation objective :math:`E`), else the incoming gradient (:math:`E = L`).
  Each update costs one Hessian-vector product (forward over reverse) on
  ``loss_fn``. Tangents are kept in at least float32 (see the module
  docstring).

  Args:
    learning_rate: the initial rate :math:`\eta_0 \ge 0`.
    hyper_lr: the hyper-learning rate :math:`\beta \ge 0` of the rule
      above, or ``None`` (the default) for the scale-free rule
      :math:`\eta_t = \eta_{t-1}\exp(-0.05\, \mathrm{clip}(c_t /
      \sqrt{s_t}, -1, 1))` with :math:`c_t = h_t / (\|Z_t\| \|v_t\|)` and
      :math:`s_t = 0.9 s_{t-1} + 0.1 c_t^2` its running mean square (module
      docstring, "Defaults"), which needs no tuning.
    direction: optax transformation giving the unscaled descent direction
      :math:`u_t` (default ``optax.identity()``: SGD). Any direction works;
      its state's float leaves get a tangent too.
    safety_net: checkpoint and roll back on divergence (module docstring);
      ``False`` saves one params copy and one direction-state copy of memory.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs the
    keyword argument ``loss_fn`` (``params -> scalar`` training loss on the
    current batch, whose gradient is the incoming ``updates``) and the
    ``params``; ``val_grads`` and ``value`` (the training loss, read by the
    safety net; when it is absent the net reads ``loss_fn(params)``) are
    optional; unknown extra args are ignored.
    Transformations before this one in an ``optax.chain`` are taken as the
    identity in the tangent.

  Example:
    >>> import jax, jax.numpy as jnp, optax_lr
    >>> loss = lambda w: jnp.sum((w - 3.0) ** 2)
    >>> tx = optax_lr.rtho(0.01, hyper_lr=0.001)
    >>> w = jnp.zeros(2)
    >>> state = tx.init(w)
    >>> for _ in range(5):
    ...   updates, state = tx.update(jax.grad(loss)(w), state, w, loss_fn=loss)
    ...   w = w + updates
    >>> bool(optax_lr.current_lr(state) > 0.01)
    True

  Pitfalls:
    {chain_pitfall}

  References:
    Franceschi, Donini, Frasconi, Pontil, `Forward and Reverse Gradient-Based
    Hyperparameter Optimization <https://arxiv.org/abs/1703.01785>`_, ICML 2017.

    Donini, Franceschi, Pontil, Majumder, Frasconi, `Scheduling the Learning
    Rate via Hypergradients: New Insights and a New Algorithm
    <https://arxiv.org/abs/1910.10238>`_, 2019.
  """
  return _fixed_mu(
    "rtho",
    learning_rate,
    hyper_lr,
    mu=1.0,
    multiplicative=False,
    direction=direction,
    safety_net=safety_net,
  )


@_with_chain_pitfall
def marthe(
  learning_rate: float,
  *,
  hyper_lr: float = 0.0,
  hyper_lr_step: Optional[float] = None,
  mu: Optional[float] = None,
  direction: Optional[optax.GradientTransformation] = None,
  safety_net: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""MARTHE: a discounted tangent between HD and RTHO, with adapted μ and β.

  .. math::
    h_t = \langle Z_t, v_t\rangle, \quad
    \beta_t = \max(\beta_{t-1} + \kappa h_t h_{t-1}, 0), \quad
    \eta_t = \max(\eta_{t-1} - \beta_t h_t, 0), \quad
    Z_{t+1} = \mu_t A_t Z_t - u_t.

  :math:`\mu = 0` is HD, :math:`\mu = 1` is RTHO. With ``mu=None`` the
  discount is adapted (the paper's Appendix A): with
  :math:`g_1 = -\langle u_{t-1}, v_t\rangle`,
  :math:`q = \mathrm{clip}(h_t / g_1, 0, 1)` (0 where :math:`g_1 = 0`),
  :math:`\mu_t = q^{1/(c_{t-1}+1)}` and :math:`c_t = \mu_{t-1}(1 + c_{t-1})`,
  starting from :math:`\mu = c = 0`.

  :math:`\beta` (the hyper-learning rate, starting at ``hyper_lr``) is itself
  adapted by gradient descent with step :math:`\kappa` = ``hyper_lr_step``:
  since :math:`\eta_{t-1} = \eta_{t-2} - \beta h_{t-1}`, the objective's
  derivative is :math:`\partial E / \partial \beta \approx h_t \,
  \partial \eta_{t-1} / \partial \beta = -h_t h_{t-1}`, so descent grows
  :math:`\beta` when consecutive hypergradients agree in sign. The paper's
  Algorithm 1 prints a minus sign there; with its suggested
  :math:`\beta_0 = 0` and the clamp at 0, that sign would grow :math:`\beta`
  only when consecutive hypergradients disagree (the design page
  (``docs/design.md``) takes the descent sign). ``hyper_lr_step=0`` keeps
  :math:`\beta` fixed.
  :math:`v_t` is ``val_grads`` when given (the gradient of a validation
  objective :math:`E`), else the incoming gradient (:math:`E = L`).

  A fixed ``mu=0`` needs neither ``loss_fn`` nor Hessian-vector products;
  otherwise each update costs one Hessian-vector product (forward over
  reverse) on ``loss_fn``. Buffers: the tangent :math:`Z`, ``u_prev``
  (adaptive μ or μ = 0 only) and the tangent of the direction state's float
  leaves.

  Args:
    learning_rate: the initial rate :math:`\eta_0 \ge 0`.
    hyper_lr: the initial hyper-learning rate :math:`\beta_0 \ge 0` (the
      paper suggests 0).
    hyper_lr_step: the step :math:`\kappa \ge 0` that adapts :math:`\beta`
      (0 keeps :math:`\beta` fixed), or ``None`` (the default): the paper's
      :math:`\kappa` selection on the scale-free hypergradient (module
      docstring, "Defaults"), which needs no tuning and the safety net.
    mu: a fixed discount in ``[0, 1]``, or ``None`` to adapt it. A Python
      ``0.0`` is HD (no tangent); an array (``optax.inject_hyperparams``)
      keeps a tangent whatever its value, since the state's layout cannot
      depend on a traced value (``mu = 0`` then gives HD's rates, at RTHO's
      cost). A fixed ``mu``, a fixed ``hyper_lr_step`` and (for HD and RTHO)
      ``hyper_lr`` are read at every update, so injected values take effect.
    direction: optax transformation giving the unscaled descent direction
      :math:`u_t` (default ``optax.identity()``: SGD).
    safety_net: checkpoint and roll back on divergence (module docstring);
      ``False`` saves one params copy and one direction-state copy of memory.

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Unless ``mu=0``, its
    ``update`` needs the keyword argument ``loss_fn`` (``params -> scalar``
    training loss on the current batch) and the ``params``; ``val_grads`` and
    ``value`` (the training loss, read by the safety net; when it is absent
    the net reads ``loss_fn(params)``) are optional;
    unknown extra args are ignored. ``state.hyper_lr_step`` is the current
    :math:`\kappa`.

  Example:
    >>> import jax, jax.numpy as jnp, optax_lr
    >>> loss = lambda w: jnp.sum((w - 3.0) ** 2)
    >>> tx = optax_lr.marthe(0.01, hyper_lr=1e-5, hyper_lr_step=1e-7)
    >>> w = jnp.zeros(2)
    >>> state = tx.init(w)
    >>> for _ in range(5):
    ...   updates, state = tx.update(jax.grad(loss)(w), state, w, loss_fn=loss)
    ...   w = w + updates
    >>> bool(optax_lr.current_lr(state) > 0.01), bool(state.mu > 0)
    (True, True)

  Pitfalls:
    {chain_pitfall}

  References:
    Donini, Franceschi, Pontil, Majumder, Frasconi, `Scheduling the Learning
    Rate via Hypergradients: New Insights and a New Algorithm
    <https://arxiv.org/abs/1910.10238>`_, 2019.
  """
  learning_rate = _checks.non_negative("learning_rate", learning_rate)
  hyper_lr = _checks.non_negative("hyper_lr", hyper_lr)
  safety_net = _checks.boolean("safety_net", safety_net)
  select_kappa = hyper_lr_step is None
  if select_kappa:
    if not safety_net:
      raise ValueError(
        "hyper_lr_step=None selects kappa by rolling back on divergence, "
        "which needs safety_net=True; give an explicit hyper_lr_step with "
        "safety_net=False."
      )
    hyper_lr_step = DEFAULT_HYPER_LR_STEP
  else:
    hyper_lr_step = _checks.non_negative("hyper_lr_step", hyper_lr_step)
  if mu is not None:
    mu = _checks.in_range("mu", mu, 0, 1, requirement="in [0, 1] or None")
  return _engine(
    learning_rate,
    hyper_lr=hyper_lr,
    hyper_lr_step=hyper_lr_step,
    mu=mu,
    multiplicative=False,
    normalized=select_kappa,
    select_kappa=select_kappa,
    safety_net=safety_net,
    direction=direction,
    name="marthe",
  )
