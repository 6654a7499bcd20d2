"""The registry of learning-rate methods: one ``MethodCase`` per method.

Private: not part of the API. The contract suite (``tests/test_contract.py``),
the suites built on it and the Flax suite (``tests/test_flax.py``) run every
entry of ``METHODS`` through the same checks, and the benchmarks
(``benchmarks/memory.py``) measure every entry; a method joins them all with
one ``MethodCase`` here. Each case records its factory, the keyword arguments
and static arguments it is built with, and the extra arguments its update
needs.

Also the one copy of ``EXTRA_ARG_NAMES`` (the extra arguments an update may
be given) and of ``under_promotion`` (a transformation traced under a given
dtype promotion; ``standard_promotion`` for the standard one), which tests
and benchmarks share.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Optional

import jax
import optax

import optax_lr

EXTRA_ARG_NAMES = ("value", "loss_fn", "val_grads")


@dataclasses.dataclass(frozen=True)
class MethodCase:
  """One method under test.

  Attributes:
    name: test id.
    factory: the method's constructor, ``factory(learning_rate, **kwargs)``
      (``optax_lr.newton_lr``, ...): what ``optax.inject_hyperparams`` wraps.
    kwargs: the keyword arguments this entry passes to ``factory``, without
      ``learning_rate``.
    static_args: the names of ``factory``'s arguments that cannot change
      after ``init`` because they shape the state or are read as Python
      values (window lengths, seeds, patience): ``optax.inject_hyperparams``'s
      ``static_args``. ``factory``'s other numeric arguments are injected.
    needs: the extra arguments its update needs, from ``EXTRA_ARG_NAMES``.
    passes: optional extra arguments it is given too, as a production step
      should (``value`` for newton_lr's safety net).
    epoch_level: whether ``optax_lr.observe`` drives it.
    parabola_lr, rosenbrock_lr: the initial rates for the training checks.
    make: ``learning_rate -> GradientTransformationExtraArgs``, derived:
      ``factory(learning_rate, **kwargs)``. Given explicitly only by a case
      with no ``factory`` (``_reliability``'s union of every method).
  """

  name: str
  factory: Optional[Callable[..., optax.GradientTransformationExtraArgs]] = None
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
  static_args: tuple[str, ...] = ()
  needs: tuple[str, ...] = ()
  passes: tuple[str, ...] = ()
  epoch_level: bool = False
  parabola_lr: float = 0.1
  rosenbrock_lr: float = 1e-3
  make: Optional[Callable[[float], optax.GradientTransformationExtraArgs]] = dataclasses.field(
    default=None, compare=False, repr=False
  )

  def __post_init__(self):
    unknown = set(self.needs + self.passes) - set(EXTRA_ARG_NAMES)
    assert not unknown, f"{self.name}: unknown extra args {unknown}"
    if self.factory is None:
      return
    parameters = inspect.signature(self.factory).parameters
    assert "learning_rate" in parameters, f"{self.name}: no learning_rate"
    assert "learning_rate" not in self.kwargs, f"{self.name}: learning_rate in kwargs"
    for names, what in ((self.kwargs, "kwargs"), (self.static_args, "static_args")):
      unknown = set(names) - set(parameters)
      assert not unknown, f"{self.name}: {what} {unknown} not arguments of the factory"
    # `make` is always derived, so `dataclasses.replace(case, kwargs=...)`
    # does not keep the old entry's `make`.
    assert self.make is None or getattr(self.make, "_derived", False), (
      f"{self.name}: give factory and kwargs, not make"
    )
    factory, kwargs = self.factory, dict(self.kwargs)

    def make(learning_rate):
      return factory(learning_rate, **kwargs)

    make._derived = True
    object.__setattr__(self, "make", make)

  def injected(self, learning_rate):
    """The method under ``optax.inject_hyperparams``, with ``static_args``."""
    return optax.inject_hyperparams(self.factory, static_args=self.static_args)(
      learning_rate=learning_rate, **self.kwargs
    )

  @property
  def given(self) -> tuple[str, ...]:
    """Every extra argument a step gives it: ``needs`` and ``passes``."""
    return self.needs + self.passes

  def extra_args(self, loss_fn, params):
    """The keyword arguments this method's update is given at ``params``."""
    available = {
      "value": lambda: loss_fn(params),
      "loss_fn": lambda: loss_fn,
      "val_grads": lambda: jax.grad(loss_fn)(params),
    }
    return {name: available[name]() for name in self.given}


def plain_sgd(learning_rate):
  """``optax.sgd`` under ``inject_hyperparams``, so ``current_lr`` reads it."""
  return optax.with_extra_args_support(
    optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)
  )


def under_promotion(tx, mode: str):
  """``tx`` traced under dtype promotion ``mode`` (``"standard"`` or
  ``"strict"``) whatever its caller's mode, extra args passed through."""
  tx = optax.with_extra_args_support(tx)

  def init(params):
    with jax.numpy_dtype_promotion(mode):
      return tx.init(params)

  def update(updates, state, params=None, **extra_args):
    with jax.numpy_dtype_promotion(mode):
      return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init, update)


def standard_promotion(tx):
  """``tx`` traced under standard dtype promotion, extra args passed through.

  optax's Adam bias correction raises a float to an int32 power, and its
  reduce_on_plateau mixes dtypes, which a session with strict promotion (the
  test suite's) rejects. Wrap only the direction (or the optax method), so a
  method's own code stays under strict promotion.
  """
  return under_promotion(tx, "standard")


# The arguments of each factory that shape the state or are read as Python
# values: they stay static under `optax.inject_hyperparams`.
NEWTON_STATIC = ("update_every", "steps_per_epoch", "fraction")
ASLR_STATIC = ("steps_per_epoch", "seed")
AALR_STATIC = ("steps_per_epoch", "warmup_patience")

METHODS = [
  # A plain optax optimizer: the anchor every method must behave like.
  MethodCase("optax_sgd", plain_sgd),
  # newton_lr gets `value`, as the README asks, so its safety net sees a
  # blow-up before NaN. Windows of 10 calls: short, so the contract's short
  # runs cross many window ends, yet long enough for the Newton estimate on
  # Rosenbrock (with 4-5 calls it overshoots again and again, and the
  # backoffs pin the rate at its band floor, where r >= s keeps it).
  MethodCase(
    "newton_lr_sgd", optax_lr.newton_lr, dict(update_every=10), NEWTON_STATIC, passes=("value",)
  ),
  MethodCase(
    "newton_lr_adam",
    optax_lr.newton_lr,
    dict(update_every=25, direction=standard_promotion(optax.scale_by_adam())),
    NEWTON_STATIC,
    passes=("value",),
  ),
  MethodCase(
    "newton_lr_per_leaf",
    optax_lr.newton_lr,
    dict(steps_per_epoch=30, per_leaf=True),
    NEWTON_STATIC,
    passes=("value",),
  ),
  MethodCase("aslr", optax_lr.aslr, dict(seed=3), ASLR_STATIC, epoch_level=True),
  # With steps_per_epoch the update call ends the epochs itself, from the
  # window's mean `value`; `optax_lr.observe` refuses such a state.
  MethodCase(
    "aslr_window",
    optax_lr.aslr,
    dict(steps_per_epoch=5),
    ASLR_STATIC,
    needs=("value",),
  ),
  MethodCase("aalr", optax_lr.aalr, {}, AALR_STATIC, epoch_level=True),
  # With steps_per_epoch the update call ends the epochs itself, from the
  # window's mean `value`; `optax_lr.observe` refuses such a state.
  MethodCase(
    "aalr_window",
    optax_lr.aalr,
    dict(warmup_patience=3, steps_per_epoch=4),
    AALR_STATIC,
    needs=("value",),
  ),
  MethodCase(
    "aalr_momentum",
    optax_lr.aalr,
    dict(direction=optax.trace(0.9)),
    AALR_STATIC,
    epoch_level=True,
    parabola_lr=0.05,
  ),
  # Hypergradient engine. beta and kappa are small: Rosenbrock's gradients
  # are ~200, so <g_t, u_{t-1}> ~ 1e4 and h_t h_{t-1} up to ~1e12 there.
  MethodCase("hypergradient_descent", optax_lr.hypergradient_descent, dict(hyper_lr=1e-7)),
  # Given the loss, as a production step gives it: over SGD this rule holds
  # Rosenbrock's rate at the edge of stability, and without the loss its
  # spikes back from a converged point (10^-8 to 1-10) stay under every
  # divergence test, so where the last of 30k steps fell decided the
  # convergence check (6 of 12 loss scalings 1 + ε, |ε| <= 1e-5, failed).
  MethodCase(
    "hypergradient_descent_multiplicative",
    optax_lr.hypergradient_descent,
    dict(hyper_lr=1e-3, multiplicative=True),
    passes=("value",),
  ),
  MethodCase("rtho", optax_lr.rtho, dict(hyper_lr=1e-8), needs=("loss_fn",)),
  MethodCase(
    "marthe_fixed_mu",
    optax_lr.marthe,
    dict(hyper_lr=1e-8, hyper_lr_step=0.0, mu=0.9),
    needs=("loss_fn",),
  ),
  MethodCase(
    "marthe_adaptive",
    optax_lr.marthe,
    dict(hyper_lr_step=1e-14),
    needs=("loss_fn",),
  ),
  MethodCase(
    "marthe_adam",
    optax_lr.marthe,
    dict(hyper_lr_step=1e-9, direction=standard_promotion(optax.scale_by_adam())),
    needs=("loss_fn",),
    parabola_lr=0.05,
    rosenbrock_lr=0.02,
  ),
]
