"""The one list of methods the benchmarks run, with what each one needs.

Every script (``compare``, ``speed``, ``robustness``) takes its methods from
here; no script names a method. A :class:`Method` says:

* how to build it from the swept *initial rate* ``lr`` (and the number of
  update calls per epoch, for the methods that count in epochs);
* which extra arguments its ``update`` needs (``value``, ``loss_fn``,
  ``val_grads``: see :func:`extra_args`);
* whether it is epoch-level, i.e. driven by ``optax_lr.observe(state,
  validation_loss)`` at each epoch end;
* how to read its effective learning rate from its state (``lr_of``), and which
  params to evaluate (``eval_params``: schedule-free SGD evaluates its
  averaged iterate, AALR its best checkpoint through ``optax_lr.best_params``);
* where its rate comes from when it is not swept: a fixed rate
  (``fixed_lr``), or a rate computed from the task before training
  (``rate_from_task``: ASLR's paper pipeline, range test then ``aslr``).

The optax_lr methods run with the library's defaults only: no
hyperparameter but the initial rate is set here (HD, RTHO and MARTHE use
their tuning-free hyper-rate rules, every method its default safety net), and
each gets the training loss as ``value``, as a production train step would
pass it (the safety net reads it). For the optax methods, the hyperparameters
other than the rate are fixed here, once, for every task and every rate.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
import optax.contrib

import optax_lr
from optax_lr._registry import EXTRA_ARG_NAMES
from optax_lr._registry import standard_promotion

# The rate of the hand-picked SGD reference and of the timed steps.
HAND_PICKED_SGD_LR = 0.1
SPEED_LR = 0.01
# Update calls per epoch assumed by the timed steps (newton_lr's window is a
# third of it, 200 steps: no window end in a timed round of 20 steps is
# likely, and the window end is a lax.cond anyway).
SPEED_STEPS_PER_EPOCH = 600
# The range test of ASLR's pipeline: plain SGD, rates swept exponentially
# from RANGE_TEST_MIN_LR to RANGE_TEST_MAX_LR over RANGE_TEST_STEPS training
# batches (in the seed's training order), the library's default suggestion.
RANGE_TEST_MIN_LR = 1e-5
RANGE_TEST_MAX_LR = 10.0
RANGE_TEST_STEPS = 200
# The rate grid of the hand-tuned references (sgd, sgd with momentum, adam).
HAND_TUNED_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def _fresh(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``tx`` whose ``init`` copies every buffer.

  Several optax.contrib states keep the initial params as they are given
  (prodigy's ``params0``, dog's ``init_params``, mechanize's ``x0``,
  schedule-free's ``z``): a train step that donates both params and state
  would then donate one buffer twice.
  """
  tx = optax.with_extra_args_support(tx)

  def init(params):
    return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), tx.init(params))

  return optax.GradientTransformationExtraArgs(init, tx.update)


def _find(state: Any, cls: type) -> Any:
  leaves = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, cls))
  found = [leaf for leaf in leaves if isinstance(leaf, cls)]
  if len(found) != 1:
    raise ValueError(f"expected one {cls.__name__} in the state, found {len(found)}")
  return found[0]


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _optax_lr_rate(state, lr0):
  del lr0
  return _f32(optax_lr.current_lr(state))


def _constant_rate(state, lr0):
  del state
  return _f32(lr0)


def _plateau_rate(state, lr0):
  del lr0
  return _f32(optax_lr.current_lr(state)) * _f32(
    _find(state, optax.contrib.ReduceLROnPlateauState).scale
  )


def _prodigy_rate(state, lr0):
  del lr0  # prodigy's learning_rate is a multiplier kept at 1; lr0 is its d0
  return _f32(_find(state, optax.contrib.ProdigyState).estim_lr)


def _dog_rate(state, lr0):
  # After an update, dog's state holds the max distance and the gradient sum
  # that the update used; only the first step (distance still 0) used lr0.
  dog = _find(state, optax.contrib.DoGState)
  rate = dog.max_dist / jnp.sqrt(dog.sum_sq_norm_grads + 1e-8)
  return jnp.where(dog.max_dist > 0, _f32(rate), _f32(lr0))


def _mechanic_rate(state, lr0):
  del lr0  # the base optimizer is sgd(1.0): the rate is mechanic's scale
  return _f32(jnp.sum(_find(state, optax.contrib.MechanicState).s))


def _identity_params(state, params):
  del state
  return params


def _schedule_free_params(state, params):
  return optax.contrib.schedule_free_eval_params(
    _find(state, optax.contrib.ScheduleFreeState), params
  )


_MECHANIC_BETAS = 6


@dataclasses.dataclass(frozen=True)
class Method:
  """One method as the benchmarks run it.

  Attributes:
    name: the row name in every table.
    make: ``(lr, steps_per_epoch) -> GradientTransformationExtraArgs``.
    library: ``"optax_lr"`` or ``"optax"``.
    needs: extra args of ``update``, from ``EXTRA_ARG_NAMES``.
    epoch_level: at each epoch end the train loop calls
      ``optax_lr.observe(state, validation_loss)``.
    observe_initial: also observe the initial model's validation loss before
      the first update (AALR's forward pass through the initial model).
    lr_of: ``(state, lr) -> f32 scalar``, the effective rate, for the plots.
    eval_params: ``(state, params) -> params`` to evaluate.
    fixed_lr: not swept: one run at this rate, whatever the initial rates.
    rate_from_task: not swept: ``(TaskSeed) -> rate``, the rate of one seed's
      run, computed from the task before training (e.g. a range test).
    factory: the library function ``make`` calls, when ``make`` forwards
      keyword options to it (``build(lr, n, safety_net=False)``): what
      :meth:`accepts` inspects.
    hvp: timing anchor only: the step adds one Hessian-vector product.
    rate_means: what the swept initial rate sets, for the tables' notes.
    info: why the row is information only, not one the issue's targets
      judge (``with_range_test``'s rows); ``None`` for the others.
  """

  name: str
  make: Callable[[float, int], optax.GradientTransformationExtraArgs]
  library: str = "optax_lr"
  needs: tuple[str, ...] = ()
  epoch_level: bool = False
  observe_initial: bool = False
  lr_of: Callable[[Any, float], jax.Array] = _optax_lr_rate
  eval_params: Callable[[Any, Any], Any] = _identity_params
  fixed_lr: Optional[float] = None
  rate_from_task: Optional[Callable[["TaskSeed"], float]] = None
  factory: Optional[Callable[..., Any]] = None
  hvp: bool = False
  rate_means: str = "the initial learning rate"
  info: Optional[str] = None

  def __post_init__(self):
    unknown = set(self.needs) - set(EXTRA_ARG_NAMES)
    if unknown:
      raise ValueError(f"{self.name}: unknown extra args {sorted(unknown)}")
    if self.fixed_lr is not None and self.rate_from_task is not None:
      raise ValueError(f"{self.name}: fixed_lr and rate_from_task are exclusive")

  @property
  def swept(self) -> bool:
    """Whether the method runs from each initial rate of a sweep."""
    return self.fixed_lr is None and self.rate_from_task is None

  def accepts(self, option: str) -> bool:
    """Whether ``build`` can pass the keyword ``option`` to the library call.

    Read from the library function's signature at call time, so an option a
    method gains later (``safety_net``) is picked up without a change here.
    """
    if self.factory is None:
      return False
    return option in inspect.signature(self.factory).parameters

  def build(
    self, lr: float, steps_per_epoch: int, **options
  ) -> optax.GradientTransformationExtraArgs:
    """The method at rate ``lr``; ``options`` go to the library call."""
    rejected = [o for o in options if not self.accepts(o)]
    if rejected:
      raise ValueError(f"{self.name}: the library call takes no {rejected}")
    rate = self.fixed_lr if self.fixed_lr is not None else lr
    return _fresh(self.make(rate, steps_per_epoch, **options))

  def rate(self, lr: float) -> float:
    return self.fixed_lr if self.fixed_lr is not None else lr


@dataclasses.dataclass(frozen=True)
class TaskSeed:
  """What a method may look at before training, for one seed's run.

  Attributes:
    loss: ``(params, batch) -> scalar``, the model's training loss.
    params: the seed's initial params (the run starts from them again).
    train_batches: ``(x, y)`` with a leading batch axis: the seed's training
      batches in the order its run will see them.
    optimizer: ``rate -> optimizer``, what a range test sweeps: plain SGD
      (the ASLR paper's pipeline), AdamW on the tasks trained over Adam.
  """

  loss: Callable[[Any, Any], jax.Array]
  params: Any
  train_batches: Any
  optimizer: Callable[[float], optax.GradientTransformation] = optax.sgd


def extra_args(needs: Sequence[str], *, loss, batch_loss, val_grads_fn) -> dict:
  """The keyword arguments a method's ``update`` needs at this step.

  Args:
    needs: the method's ``needs``.
    loss: the training loss of the batch (``value``).
    batch_loss: ``params -> loss`` on the batch (``loss_fn``, for HVPs).
    val_grads_fn: ``() -> grads`` of the validation objective at the current
      params, only called when ``val_grads`` is needed.
  """
  extra = {}
  if "value" in needs:
    extra["value"] = loss
  if "loss_fn" in needs:
    extra["loss_fn"] = batch_loss
  if "val_grads" in needs:
    extra["val_grads"] = val_grads_fn()
  return extra


# ------------------------------------------------------------- optax_lr


def range_test_suggestion(task: TaskSeed) -> float:
  """The rate ``optax_lr.lr_range_test`` suggests for the task's optimizer
  (SGD; AdamW on the Adam tasks) on one seed's task.

  The sweep runs on the seed's first ``RANGE_TEST_STEPS`` training batches
  from its initial params (which it does not change: the run then starts
  from them, as fastai's ``lr_find`` restores the model).
  """
  x, y = task.train_batches
  result = optax_lr.lr_range_test(
    task.loss,
    task.params,
    (x[:RANGE_TEST_STEPS], y[:RANGE_TEST_STEPS]),
    optimizer=task.optimizer,
    min_lr=RANGE_TEST_MIN_LR,
    max_lr=RANGE_TEST_MAX_LR,
    num_steps=RANGE_TEST_STEPS,
  )
  return float(result.suggestion)


_RANGE_TEST_MEANS = (
  f"nothing: the rate lr_range_test suggests (SGD, AdamW on "
  f"the Adam tasks; "
  f"{RANGE_TEST_MIN_LR:g} ... {RANGE_TEST_MAX_LR:g} over "
  f"{RANGE_TEST_STEPS} training batches) per seed"
)


def _best_params(state, params):
  return optax_lr.best_params(state, params)


# Every optax_lr method with its defaults; `options` reach the library call
# (the benchmarks pass only `safety_net=False`, for the speed of the net).
# RTHO and MARTHE get the gradient of a validation minibatch as `val_grads`
# (E = the validation loss, as the MARTHE paper's experiments do); HD keeps
# Baydin et al.'s E = L.
# Every optax_lr method runs over the same direction, fixed once for all
# rates, and for every task but those trained over Adam (their
# `_train.Setting.direction`: `adamw_direction` below): momentum 0.9 as a
# (debiased) average of the gradients, `optax.ema`, rather than optax.trace's
# sum. Both give the same directions up
# to a factor 1 / (1 - 0.9) = 10; with the average a rate means what it
# means for SGD, so the initial rates 1e-4 ... 1 span the same range of steps
# for every method (with the sum, rate 1 is a step of 10 and kills the
# ReLU network within a few steps, too fast for any rule to react).
MOMENTUM = 0.9


def _direction() -> optax.GradientTransformation:
  return optax.ema(MOMENTUM, debias=True)


def _with_direction(options: dict) -> dict:
  # A `direction` given to `Method.build` (speed.py times plain SGD
  # directions, the first release's setting) replaces the default one.
  return {"direction": _direction(), **options}


_ASLR = Method(
  "aslr",
  lambda lr, n, **options: optax_lr.aslr(lr, **_with_direction(options)),
  needs=("value",),
  epoch_level=True,
  factory=optax_lr.aslr,
  rate_means="the initial centre (rounded to one digit)",
)

OPTAX_LR_METHODS: tuple[Method, ...] = (
  Method(
    "hd",
    lambda lr, n, **options: optax_lr.hypergradient_descent(lr, **_with_direction(options)),
    needs=("value",),
    factory=optax_lr.hypergradient_descent,
  ),
  Method(
    "hd_mult",
    lambda lr, n, **options: optax_lr.hypergradient_descent(
      lr, multiplicative=True, **_with_direction(options)
    ),
    needs=("value",),
    factory=optax_lr.hypergradient_descent,
  ),
  Method(
    "rtho",
    lambda lr, n, **options: optax_lr.rtho(lr, **_with_direction(options)),
    needs=("value", "loss_fn", "val_grads"),
    factory=optax_lr.rtho,
  ),
  Method(
    "marthe",
    lambda lr, n, **options: optax_lr.marthe(lr, **_with_direction(options)),
    needs=("value", "loss_fn", "val_grads"),
    factory=optax_lr.marthe,
  ),
  Method(
    "newton_lr",
    lambda lr, n, **options: optax_lr.newton_lr(lr, steps_per_epoch=n, **_with_direction(options)),
    needs=("value",),
    factory=optax_lr.newton_lr,
  ),
  _ASLR,
  # ASLR as its paper prescribes: the range test picks the initial rate.
  dataclasses.replace(
    _ASLR,
    name="aslr_range_test",
    rate_from_task=range_test_suggestion,
    rate_means=_RANGE_TEST_MEANS + ", as ASLR's initial centre",
  ),
  Method(
    "aalr",
    lambda lr, n, **options: optax_lr.aalr(lr, **_with_direction(options)),
    needs=("value",),
    epoch_level=True,
    observe_initial=True,
    eval_params=_best_params,
    factory=optax_lr.aalr,
  ),
)

# ------------------------------------------------------------- optax's own

BASELINES: tuple[Method, ...] = (
  # inject_hyperparams keeps SGD's rate in the state, so runs from several
  # rates share one compilation (see _train.train_rates).
  Method("sgd", lambda lr, n: optax.inject_hyperparams(optax.sgd)(lr), library="optax"),
  Method(
    "sgd_hand_picked",
    lambda lr, n: optax.sgd(lr),
    library="optax",
    lr_of=_constant_rate,
    fixed_lr=HAND_PICKED_SGD_LR,
    rate_means=f"nothing: SGD at the hand-picked {HAND_PICKED_SGD_LR}",
  ),
  # The range test's suggestion trained at a constant rate (the rate lives
  # in the state, so the seeds' runs share one compilation).
  Method(
    "sgd_range_test",
    lambda lr, n: optax.inject_hyperparams(optax.sgd)(lr),
    library="optax",
    rate_from_task=range_test_suggestion,
    rate_means=_RANGE_TEST_MEANS + ", SGD at that constant rate",
  ),
  Method(
    "reduce_on_plateau",
    lambda lr, n: standard_promotion(
      optax.chain(
        optax.inject_hyperparams(optax.sgd)(lr),
        optax.contrib.reduce_on_plateau(factor=0.5, patience=3, accumulation_size=n),
      )
    ),
    library="optax",
    needs=("value",),
    lr_of=_plateau_rate,
    rate_means="SGD's rate before any reduction (epoch-mean training loss)",
  ),
  Method(
    "prodigy",
    lambda lr, n: standard_promotion(optax.contrib.prodigy(1.0, estim_lr0=lr)),
    library="optax",
    lr_of=_prodigy_rate,
    rate_means="d0 (estim_lr0), the initial Adam-scale step estimate",
  ),
  Method(
    "dog",
    lambda lr, n: optax.contrib.dog(1.0, init_step=("learning_rate", lr)),
    library="optax",
    lr_of=_dog_rate,
    rate_means="the first step's rate (init_step='learning_rate')",
  ),
  Method(
    "mechanize",
    lambda lr, n: standard_promotion(
      optax.contrib.mechanize(
        optax.sgd(1.0), s_init=lr / _MECHANIC_BETAS, num_betas=_MECHANIC_BETAS
      )
    ),
    library="optax",
    lr_of=_mechanic_rate,
    rate_means="the initial scale sum(s) over sgd(1.0)",
  ),
  Method(
    "schedule_free_sgd",
    lambda lr, n: optax.contrib.schedule_free_sgd(lr),
    library="optax",
    lr_of=_constant_rate,
    eval_params=_schedule_free_params,
  ),
)

# ------------------------------------------------------------- timing anchors

SPEED_ANCHORS: tuple[Method, ...] = (
  Method("sgd", lambda lr, n: optax.sgd(lr), library="optax"),
  Method("sgd_momentum", lambda lr, n: optax.sgd(lr, momentum=0.9), library="optax"),
  Method("adam", lambda lr, n: standard_promotion(optax.adam(lr)), library="optax"),
  Method(
    "reduce_on_plateau",
    lambda lr, n: standard_promotion(
      optax.chain(optax.sgd(lr), optax.contrib.reduce_on_plateau(accumulation_size=n))
    ),
    library="optax",
    needs=("value",),
  ),
  Method(
    "prodigy",
    lambda lr, n: standard_promotion(optax.contrib.prodigy(1.0, estim_lr0=lr)),
    library="optax",
  ),
  Method(
    "dadapt_adamw",
    lambda lr, n: standard_promotion(optax.contrib.dadapt_adamw(1.0, estim_lr0=lr)),
    library="optax",
  ),
  Method("dog", lambda lr, n: optax.contrib.dog(1.0), library="optax"),
  Method(
    "mechanize",
    lambda lr, n: standard_promotion(optax.contrib.mechanize(optax.sgd(1.0))),
    library="optax",
  ),
  Method("grad_hvp_sgd", lambda lr, n: optax.sgd(lr), library="optax", hvp=True),
)

# ------------------------------------------------------------- hand-tuned references

# Each is run over HAND_TUNED_GRID; the best rate (seed mean) is the reference
# a self-tuning method is measured against. The rate lives in the state
# (inject_hyperparams): one compilation per optimizer for the whole grid.
HAND_TUNED: tuple[Method, ...] = (
  Method("sgd", lambda lr, n: optax.inject_hyperparams(optax.sgd)(lr), library="optax"),
  Method(
    "sgd_momentum",
    lambda lr, n: optax.inject_hyperparams(optax.sgd)(lr, momentum=0.9),
    library="optax",
  ),
  Method(
    "adam",
    lambda lr, n: standard_promotion(optax.inject_hyperparams(optax.adam)(lr)),
    library="optax",
  ),
)

COMPARE_METHODS: tuple[Method, ...] = OPTAX_LR_METHODS + BASELINES


def with_val_grads(method: Method) -> Method:
  """``method`` given the gradient of a validation minibatch as ``val_grads``.

  Its hypergradient is then taken on the validation loss (E = the validation
  loss, as RTHO and MARTHE get it here, after the MARTHE paper's
  experiments) instead of the training loss: one more gradient per step.

  Raises:
    ValueError: ``method``'s update does not read ``val_grads``.
  """
  # Read from the built update's signature, as `Method.accepts` reads the
  # factory's: today the tangent engine's (HD, RTHO, MARTHE) names it.
  update = method.build(0.01, 10).update
  if "val_grads" not in inspect.signature(update).parameters:
    raise ValueError(f"{method.name} does not read val_grads (only the hypergradient methods do)")
  if "val_grads" in method.needs:
    return method
  return dataclasses.replace(method, needs=method.needs + ("val_grads",))


def with_range_test(method: Method) -> Method:
  """``method`` started at ``lr_range_test``'s suggestion: the row
  ``<name>_range_test``, one run per seed, for information.

  What a user gets who runs the range test first and starts the method at its
  suggestion, as ASLR's paper pipeline (``aslr_range_test``) does. The issue
  judges these methods from every initial rate, so the row is not a target.

  Raises:
    ValueError: ``method`` is not an optax_lr method swept over initial rates.
  """
  if method.library != "optax_lr" or not method.swept:
    raise ValueError(
      f"{method.name} is not an optax_lr method swept over initial rates: "
      "only those can start from the range test's suggestion instead"
    )
  return dataclasses.replace(
    method,
    name=f"{method.name}_range_test",
    rate_from_task=range_test_suggestion,
    rate_means=_RANGE_TEST_MEANS + f", as {method.name}'s initial rate",
    info="started at the range test's suggestion",
  )


def by_name(methods: Sequence[Method], names: Optional[Sequence[str]]) -> list[Method]:
  """The methods named (all when ``names`` is empty), in registry order."""
  if not names:
    return list(methods)
  known = {m.name: m for m in methods}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; known: {sorted(known)}")
  return [m for m in methods if m.name in set(names)]


# ------------------------------------------------------------- Adam tasks

# The Transformer language model (``robustness``'s ``stdlib_lm`` task) trains
# over Adam, as its users train it: every optax_lr method steps along the
# AdamW direction ``chain(scale_by_adam(), add_decayed_weights(wd))`` (the
# decoupled weight decay in the direction, so that ``-lr * u`` is AdamW's
# step at rate ``lr``), and the references are the recipes people use.
# The weight decay is GPT's 0.1 on the matrices (embeddings included), none on
# biases and LayerNorm scales; prodigy and schedule_free_adamw take no mask and
# decay every parameter.
ADAMW_WEIGHT_DECAY = 0.1
# Linear warm-up over this fraction of the run (the cosine recipe and
# schedule_free_adamw's warm-up).
ADAMW_WARMUP_FRACTION = 0.05
# The initial rates of the Adam-direction sweeps, and the peak-rate grid of
# the hand-tuned AdamW recipes.
ADAM_RATES = (1e-4, 1e-3, 1e-2, 1e-1)
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def _matrices(params):
  """The weight-decay mask: every leaf with two or more axes."""
  return jax.tree_util.tree_map(lambda x: jnp.ndim(x) >= 2, params)


def adamw_direction() -> optax.GradientTransformation:
  """AdamW's unscaled direction: Adam's, plus decoupled weight decay."""
  return optax.chain(
    optax.scale_by_adam(), optax.add_decayed_weights(ADAMW_WEIGHT_DECAY, mask=_matrices)
  )


def adamw(lr: float) -> optax.GradientTransformation:
  """``optax.adamw(lr)`` with the weight decay of :func:`adamw_direction`, the
  rate in the state (one compilation for a grid of rates)."""
  return standard_promotion(
    optax.chain(adamw_direction(), optax.inject_hyperparams(optax.scale)(step_size=-lr))
  )


def adamw_optimizer(learning_rate) -> optax.GradientTransformation:
  """AdamW as an optax optimizer factory (``learning_rate`` keyword): what the
  range test of the Adam tasks sweeps (``lr_range_test(optimizer=...)``)."""
  return optax.chain(adamw_direction(), optax.scale_by_learning_rate(learning_rate))


def adam_optimizer(learning_rate) -> optax.GradientTransformation:
  """``optax.adam`` as an optimizer factory (``learning_rate`` keyword): what
  the range test sweeps when the MLP tasks run over Adam (``robustness
  --direction adam``)."""
  return optax.adam(learning_rate)


def warmup_cosine(total_steps: int):
  """The unit schedule of the cosine recipe: linear warm-up from 0 to 1 over
  ``ADAMW_WARMUP_FRACTION`` of the run, then cosine decay to 0 at its end."""
  warmup = max(1, int(ADAMW_WARMUP_FRACTION * total_steps))
  return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(total_steps, warmup + 1))


def _injected_rate(state, lr0):
  del lr0
  inject = _find(state, optax.InjectStatefulHyperparamsState)
  return -_f32(inject.hyperparams["step_size"])


def _cosine_rate_of(total_steps):
  schedule = warmup_cosine(total_steps)

  def rate(state, lr0):
    # After an update the schedule's count has moved on: the step used count - 1.
    count = _find(state, optax.ScaleByScheduleState).count
    return _injected_rate(state, lr0) * _f32(schedule(jnp.maximum(count - 1, 0)))

  return rate


# Swept from the initial rates like the optax_lr methods: what needs no rate
# grid (prodigy's d0 and dog's first step are what the initial rate sets).
ADAM_BASELINES: tuple[Method, ...] = (
  Method(
    "prodigy",
    lambda lr, n: standard_promotion(
      optax.contrib.prodigy(1.0, estim_lr0=lr, weight_decay=ADAMW_WEIGHT_DECAY)
    ),
    library="optax",
    lr_of=_prodigy_rate,
    rate_means="d0 (estim_lr0), the initial Adam-scale step estimate",
  ),
  Method(
    "dog",
    lambda lr, n: optax.contrib.dog(
      1.0, init_step=("learning_rate", lr), weight_decay=ADAMW_WEIGHT_DECAY, mask=_matrices
    ),
    library="optax",
    lr_of=_dog_rate,
    rate_means="the first step's rate (init_step='learning_rate')",
  ),
)


def adam_hand_tuned(total_steps: int) -> tuple[Method, ...]:
  """The hand-tuned AdamW recipes of a run of ``total_steps`` updates.

  Each runs over ``ADAM_GRID``; the best (rate, recipe) is the reference.
  AdamW's rate lives in the state (one compilation for the grid);
  schedule_free_adamw's is a constant of its update (one per rate).
  """
  warmup = max(1, int(ADAMW_WARMUP_FRACTION * total_steps))
  return (
    Method(
      "adamw_cosine",
      lambda lr, n: standard_promotion(
        optax.chain(
          adamw_direction(),
          optax.scale_by_schedule(warmup_cosine(total_steps)),
          optax.inject_hyperparams(optax.scale)(step_size=-lr),
        )
      ),
      library="optax",
      lr_of=_cosine_rate_of(total_steps),
      rate_means=f"the peak rate (linear warm-up over {warmup} steps, cosine "
      f"decay to 0 at step {total_steps})",
    ),
    Method("adamw", lambda lr, n: adamw(lr), library="optax", lr_of=_injected_rate),
    Method(
      "schedule_free_adamw",
      lambda lr, n: standard_promotion(
        optax.contrib.schedule_free_adamw(lr, warmup_steps=warmup, weight_decay=ADAMW_WEIGHT_DECAY)
      ),
      library="optax",
      lr_of=_constant_rate,
      eval_params=_schedule_free_params,
      rate_means=f"the rate after a linear warm-up over {warmup} steps",
    ),
  )


# Timing anchors of the models trained over Adam (speed.py's transformer).
ADAM_SPEED_ANCHORS: tuple[Method, ...] = (
  Method("adamw", lambda lr, n: adamw(lr), library="optax"),
  Method(
    "schedule_free_adamw",
    lambda lr, n: standard_promotion(
      optax.contrib.schedule_free_adamw(lr, warmup_steps=10, weight_decay=ADAMW_WEIGHT_DECAY)
    ),
    library="optax",
  ),
)
