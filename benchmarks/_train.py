"""One whole training run of a registry method as a single jit-compiled call.

The run is a ``lax.scan`` over epochs of a ``lax.scan`` over the train step, so
a run costs one compilation and one dispatch; it is ``vmap``-ed over seeds
(initial params, batch order) and jit-compiled with the params and the
optimizer state donated. The train step is the production one: gradient,
the extra args the method needs (``_methods.extra_args``), ``tx.update``,
``optax_lr.apply_updates``; at each epoch end the validation and test losses
are evaluated (on ``method.eval_params``, e.g. AALR's best checkpoint) and,
for epoch-level methods, ``optax_lr.observe(state, validation_loss)`` is
applied with the validation loss of the params being trained.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lr
from benchmarks import _data
from benchmarks import _methods
from benchmarks import _models

# XLA options for the compiled runs; ``fast_compilation()`` trades run time for
# compilation time (the smoke runs are all compilation).
COMPILER_OPTIONS: dict | None = None


def fast_compilation(enable: bool = True) -> None:
  """Compile the runs with XLA's backend optimisations off (``--quick``)."""
  global COMPILER_OPTIONS
  COMPILER_OPTIONS = (
    {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    if enable
    else None
  )


@dataclasses.dataclass(frozen=True)
class Setting:
  """How a task trains.

  Attributes:
    epochs: epochs per run (an epoch ends with an evaluation, and an
      ``observe`` for the epoch-level methods).
    batch_size: examples per batch.
    steps_per_epoch: update calls per epoch.
    direction: ``() -> optax transformation``, the direction of every method
      that takes a ``direction`` (the optax_lr ones); None: the registry's
      (momentum, ``_methods._direction``).
    range_test_optimizer: ``rate -> optimizer``, what the range test of
      ``_methods.range_test_suggestion`` sweeps; None: plain SGD.
  """

  epochs: int
  batch_size: int
  steps_per_epoch: int
  direction: Optional[Callable[[], optax.GradientTransformation]] = None
  range_test_optimizer: Optional[Callable[[float], optax.GradientTransformation]] = None

  @property
  def steps(self) -> int:
    return self.epochs * self.steps_per_epoch


def build(method: _methods.Method, lr: float, setting: Setting):
  """``method`` at rate ``lr`` for ``setting`` (over its direction, if it has one)."""
  options = {}
  if setting.direction is not None and method.accepts("direction"):
    options["direction"] = setting.direction()
  return method.build(lr, setting.steps_per_epoch, **options)


def setting_for(splits: _data.Splits, epochs: int, batch_size: int) -> Setting:
  steps = len(splits.y_train) // batch_size
  if steps < 1:
    raise ValueError(f"batch_size {batch_size} exceeds the {len(splits.y_train)} training examples")
  return Setting(epochs, batch_size, steps)


def _run_fn(model: _models.Model, method: _methods.Method, tx, lr: float, setting: Setting):
  """``run(params, state, orders, data) -> (params, state, history)``, one seed."""
  needs = method.needs

  def step(carry, xs):
    params, state = carry
    batch, val_batch = xs
    batch_loss = lambda p: model.loss(p, batch)
    loss, grads = jax.value_and_grad(batch_loss)(params)
    extra = _methods.extra_args(
      needs,
      loss=loss,
      batch_loss=batch_loss,
      val_grads_fn=lambda: jax.grad(model.loss)(params, val_batch),
    )
    updates, state = tx.update(grads, state, params, **extra)
    params = optax_lr.apply_updates(params, updates, state)
    return (params, state), (loss, method.lr_of(state, lr))

  def evaluate(params, state, data):
    eval_params = method.eval_params(state, params)
    valid = (data["x_valid"], data["y_valid"])
    test = (data["x_test"], data["y_test"])
    return (
      model.loss(eval_params, valid),
      model.loss(eval_params, test),
      model.accuracy(eval_params, test),
    )

  def observed_cost(params, data):
    # What an epoch-level method observes is the loss of the params it is
    # training, not of the params reported (AALR's best checkpoint): it
    # compares that loss with its best. (Identical when eval_params is the
    # identity; XLA computes it once then.)
    return model.loss(params, (data["x_valid"], data["y_valid"]))

  def epoch(carry, xs, data):
    params, state = carry
    order, val_order = xs  # [steps, batch] indices into train and valid
    batches = (data["x_train"][order], data["y_train"][order])
    val_batches = (data["x_valid"][val_order], data["y_valid"][val_order])
    (params, state), (losses, lrs) = jax.lax.scan(step, (params, state), (batches, val_batches))
    if method.epoch_level:
      state = optax_lr.observe(state, observed_cost(params, data))
    # Scored after the epoch end, as a user reads `best_params` after
    # observing the last epoch's cost: that epoch end may make these params
    # the best model (an improvement, or a cost below the checkpoint's).
    valid_loss, test_loss, test_acc = evaluate(params, state, data)
    return (params, state), dict(
      train_loss=losses, lr=lrs, valid_loss=valid_loss, test_loss=test_loss, test_acc=test_acc
    )

  def run(params, state, orders, data):
    """``orders``: (train, valid) batch indices, each [epochs, steps, batch]."""
    init_valid, init_test, init_acc = evaluate(params, state, data)
    if method.observe_initial:
      state = optax_lr.observe(state, observed_cost(params, data))
    (params, state), hist = jax.lax.scan(lambda c, xs: epoch(c, xs, data), (params, state), orders)
    hist["init"] = dict(valid_loss=init_valid, test_loss=init_test, test_acc=init_acc)
    hist["params_finite"] = params_finite(params)
    return params, state, hist

  return run


def params_finite(params) -> jax.Array:
  """Scalar bool: every entry of every leaf of ``params`` is finite."""
  leaves = jax.tree_util.tree_leaves(params)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


@dataclasses.dataclass
class RunResult:
  """One method's runs from one initial rate (or rate source), every seed.

  ``lr`` is the swept (or fixed) rate; NaN for a rate computed per seed from
  the task, whose rates are in ``seed_rates`` (the rate of each seed's run in
  every case). ``history["params_finite"]`` ([seeds] bool) says whether the
  params were finite at the end of the run.
  """

  method: str
  lr: float
  history: dict  # numpy arrays with a leading seed axis
  compile_s: float  # this run's share of its group's compilation
  run_s: float  # this run's share of its group's compiled run
  steps: int  # update calls per seed
  group: int = 0  # runs of one method with the same group shared a compilation
  seed_rates: tuple = ()  # the rate each seed's run started from


def batch_orders(splits: _data.Splits, setting: Setting, seeds) -> tuple:
  """Per seed, the shuffled train batches and the random validation batches.

  Drawn with numpy outside the compiled run: a PRNG and a sort inside it
  would only add compilation time. Returns ``(train, valid)`` index arrays
  of shape ``[seeds, epochs, steps, batch]``.
  """
  e, n, b = setting.epochs, setting.steps_per_epoch, setting.batch_size
  train, valid = [], []
  for seed in seeds:
    rng = np.random.default_rng([seed, 1])
    train.append(
      np.stack([rng.permutation(len(splits.y_train))[: n * b].reshape(n, b) for _ in range(e)])
    )
    valid.append(rng.integers(0, len(splits.y_valid), (e, n, b)))
  return (jnp.asarray(np.stack(train), jnp.int32), jnp.asarray(np.stack(valid), jnp.int32))


def _signature(closed_jaxpr) -> tuple:
  consts = tuple(
    (np.asarray(c).dtype.str, np.asarray(c).shape, np.asarray(c).tobytes())
    for c in closed_jaxpr.consts
  )
  return str(closed_jaxpr.jaxpr), consts


def init_states(tx):
  """``params -> state``, both with a leading seed axis: ``tx.init`` per seed."""
  return jax.jit(jax.vmap(tx.init))


def init_states_per_seed(txs):
  """Like :func:`init_states`, with seed ``s``'s state from ``txs[s].init``."""

  def init(params):
    states = [
      tx.init(jax.tree_util.tree_map(lambda x, s=s: x[s], params)) for s, tx in enumerate(txs)
    ]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)

  return jax.jit(init)


def run_signature(run, init, params, seed_args, shared_args) -> tuple:
  """What identifies ``run``'s traced program (one seed, abstract inputs)."""
  one_seed = lambda tree: jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree
  )
  return _signature(
    jax.make_jaxpr(run)(
      one_seed(params), one_seed(jax.eval_shape(init, params)), *one_seed(seed_args), *shared_args
    )
  )


def run_grouped(items, params, seed_args, shared_args):
  """Runs every ``(key, init, run)`` of ``items`` on every seed, sharing compilations.

  ``run(params, state, *seed_args, *shared_args) -> outputs`` is one seed's
  run; ``init(params) -> state`` builds every seed's initial optimizer state
  (:func:`init_states`, or :func:`init_states_per_seed` when the seeds start
  from different rates). Items whose runs trace to the same program (their
  differences live only in the optimizer's initial state) share one
  compilation: their states are stacked and the run is ``vmap``-ed over items
  and seeds, jit-compiled with params and state donated. Items whose runs
  differ (a hyperparameter closed over as a constant) get a compilation each.
  The traced programs are compared, so nothing here assumes which methods keep
  which hyperparameters in their state.

  Args:
    items: a list of ``(key, init, run)``.
    params: the initial params of each seed, with a leading seed axis.
    seed_args: arrays with a leading seed axis (batch orders, ...).
    shared_args: arrays shared by all seeds and items (the data).

  Returns:
    ``{key: (outputs with a leading seed axis, compile_s, run_s, group)}``,
    the times being the item's share of its group's, and ``group`` the index
    of the compilation the item ran in.
  """
  groups: dict[tuple, list] = {}
  for key, init, run in items:
    if len(items) == 1:  # nothing to share: spare the trace
      sig = ()
    else:
      sig = run_signature(run, init, params, seed_args, shared_args)
    groups.setdefault(sig, []).append((key, init, run))

  n_seed, n_shared = len(seed_args), len(shared_args)
  results = {}
  for group, members in enumerate(groups.values()):
    run = members[0][2]
    per_seed = jax.vmap(run, in_axes=(0, 0) + (0,) * n_seed + (None,) * n_shared)
    batched = jax.jit(
      jax.vmap(per_seed, in_axes=(0, 0) + (None,) * (n_seed + n_shared)), donate_argnums=(0, 1)
    )
    states = [init(params) for _, init, _ in members]
    state = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *states)
    stacked = jax.tree_util.tree_map(
      lambda x: jnp.broadcast_to(x, (len(members),) + x.shape).copy(), params
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
      # Runs that return metrics only leave the donated params unused.
      warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
      compiled = batched.lower(stacked, state, *seed_args, *shared_args).compile(COMPILER_OPTIONS)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = compiled(stacked, state, *seed_args, *shared_args)
    out = jax.tree_util.tree_map(np.asarray, jax.block_until_ready(out))
    run_s = time.perf_counter() - start
    for i, (key, _, _) in enumerate(members):
      results[key] = (
        jax.tree_util.tree_map(lambda x: x[i], out),
        compile_s / len(members),
        run_s / len(members),
        group,
      )
  return results


def train_rates(
  model: _models.Model,
  method: _methods.Method,
  lrs,
  splits: _data.Splits,
  setting: Setting,
  seeds=(0,),
) -> list[RunResult]:
  """Trains ``model`` with ``method`` from each initial rate, every seed at once.

  The runs from all rates share one compilation when the rate lives only in
  the optimizer's initial state, as in every optax_lr method (see
  :func:`run_grouped`). A method with a ``fixed_lr`` runs once at it; one
  with a ``rate_from_task`` runs once, each seed from the rate computed for
  it (``lrs`` is ignored for both).
  """
  data = {name: jnp.asarray(getattr(splits, name)) for name in splits._fields}
  params = jax.vmap(model.init)(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))
  orders = batch_orders(splits, setting, seeds)
  if method.rate_from_task is not None:
    return [_train_task_rated(model, method, splits, setting, seeds, params, orders, data)]
  if method.fixed_lr is not None:
    lrs = [lrs[0]]
  items = []
  for lr in lrs:
    tx = build(method, lr, setting)
    items.append((lr, init_states(tx), _run_fn(model, method, tx, method.rate(lr), setting)))
  done = run_grouped(items, params, (orders,), (data,))
  return [
    _result(method, float(lr), (method.rate(lr),) * len(seeds), done[lr], setting) for lr in lrs
  ]


def _result(method, lr, seed_rates, done, setting) -> RunResult:
  (_, _, hist), compile_s, run_s, group = done
  # [seed, epoch, step] -> [seed, epoch * step] for the per-step series.
  for name in ("train_loss", "lr"):
    hist[name] = hist[name].reshape(hist[name].shape[0], -1)
  return RunResult(
    method.name,
    lr,
    hist,
    compile_s,
    run_s,
    setting.epochs * setting.steps_per_epoch,
    group,
    tuple(float(r) for r in seed_rates),
  )


def task_seeds(model, splits, params, orders, optimizer=None) -> list[_methods.TaskSeed]:
  """Per seed, what ``rate_from_task`` may look at: loss, params, train batches,
  and the optimizer a range test sweeps (``optimizer``; None: plain SGD)."""
  train_order = np.asarray(orders[0])  # [seeds, epochs, steps, batch]
  tasks = []
  for s in range(train_order.shape[0]):
    order = train_order[s].reshape(-1, train_order.shape[-1])  # [epochs * steps, batch]
    tasks.append(
      _methods.TaskSeed(
        loss=model.loss,
        params=jax.tree_util.tree_map(lambda x, s=s: x[s], params),
        train_batches=(jnp.asarray(splits.x_train[order]), jnp.asarray(splits.y_train[order])),
        **({} if optimizer is None else {"optimizer": optimizer}),
      )
    )
  return tasks


def _train_task_rated(model, method, splits, setting, seeds, params, orders, data):
  """One run per seed, each from the rate ``method.rate_from_task`` computes for it.

  The seeds' optimizers differ only in their rate; when it lives in the
  state (their runs trace to the same program, which is checked), all seeds
  run in one compilation, each from its own initial state.
  """
  rates = [
    method.rate_from_task(task)
    for task in task_seeds(model, splits, params, orders, setting.range_test_optimizer)
  ]
  txs = [build(method, rate, setting) for rate in rates]
  runs = [_run_fn(model, method, tx, rate, setting) for tx, rate in zip(txs, rates)]
  init = init_states_per_seed(txs)
  if (
    len(runs) > 1
    and len(set(run_signature(run, init, params, (orders,), (data,)) for run in runs)) > 1
  ):
    raise ValueError(
      f"{method.name}: the runs of different seeds trace to different programs; "
      "a rate computed per seed must live in the optimizer state"
    )
  done = run_grouped([("task", init, runs[0])], params, (orders,), (data,))
  return _result(method, math.nan, rates, done["task"], setting)


def score(loss: np.ndarray, chance: float) -> np.ndarray:
  """Final losses with a diverged (non-finite) run scored at ``chance``.

  ``chance``: the loss of a model that learned nothing (``_data.chance_loss``:
  ln C for C classes).
  """
  loss = np.asarray(loss, np.float64)
  return np.where(np.isfinite(loss), loss, chance)


def summary(values: np.ndarray) -> dict:
  """mean, std, worst (max), spread (max - min) of per-rate values."""
  values = np.asarray(values, np.float64)
  return dict(
    mean=float(values.mean()),
    std=float(values.std()),
    worst=float(values.max()),
    spread=float(values.max() - values.min()),
  )
