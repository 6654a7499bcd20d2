"""Reading and driving learning-rate methods from outside the update call.

Users hold an opaque optax state: ``optax.chain`` tuples, ``optax.MultiSteps``,
``optax.inject_hyperparams``, ``optax.partition`` dictionaries, nested as deep
as they like. This module finds the optax_lr method states inside it:

* :func:`current_lr` reads the learning rate, for logging;
* :func:`observe` applies one epoch end, with a monitored cost such as a
  validation loss, to every epoch-level method (ASLR, AALR);
* :func:`apply_updates` is ``optax.apply_updates`` that also honours a
  checkpoint rollback decided by a method (AALR);
* :func:`best_params` returns the best model a method kept (AALR), for the
  end of training.

Methods plug in through :func:`register_method`, called once by the module
that defines the method's state ``NamedTuple``; nothing here names a method.
Wrappers that hide an inner state behind a condition (``optax.MultiSteps``
only emits an inner update every k calls) plug in through
:func:`register_wrapper`.

The module also holds the epoch window shared by the epoch-level methods:
:class:`EpochWindow`, :class:`WindowEnd`, :func:`window_init`,
:func:`window_step` and :func:`maybe_epoch_end`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

__all__ = [
  "EpochWindow",
  "WindowEnd",
  "apply_updates",
  "best_params",
  "current_lr",
  "maybe_epoch_end",
  "observe",
  "register_method",
  "register_wrapper",
  "unless_windowed",
  "window_init",
  "window_step",
]

State = Any
EpochEndFn = Callable[[State, jax.Array], State]
# Both hooks may return None for a state that holds no checkpoint (e.g. one
# built with safety_net=False).
RollbackFn = Callable[[State], Optional[tuple[jax.Array, Any]]]
BestParamsFn = Callable[[State], Optional[tuple[jax.Array, Any]]]


class _MethodSpec(NamedTuple):
  learning_rate: Callable[[State], Any]
  epoch_end: Optional[EpochEndFn]
  rollback: Optional[RollbackFn]
  best_params: Optional[BestParamsFn]


class _WrapperSpec(NamedTuple):
  inner: Callable[[State], Any]
  emitted: Callable[[State], jax.Array]


_METHODS: dict[type, _MethodSpec] = {}
_WRAPPERS: dict[type, _WrapperSpec] = {}


def register_method(
  state_type: type,
  *,
  learning_rate: Callable[[State], Any] = lambda state: state.learning_rate,
  epoch_end: Optional[EpochEndFn] = None,
  rollback: Optional[RollbackFn] = None,
  best_params: Optional[BestParamsFn] = None,
) -> type:
  """Registers a method's state type with the monitor.

  Args:
    state_type: the method's state class (a ``NamedTuple``).
    learning_rate: ``state -> rate`` read by :func:`current_lr`; a scalar, or a
      pytree of rates for per-leaf methods. Defaults to ``state.learning_rate``.
    epoch_end: ``(state, cost) -> state``, one epoch end with a scalar cost,
      applied by :func:`observe`. ``None`` for step-level methods, which
      :func:`observe` leaves untouched.
    rollback: ``state -> (rolled_back, checkpoint)`` (or ``None`` when this
      state holds no checkpoint): ``rolled_back`` is a scalar bool, true when
      the update call that produced ``state`` returned
      a rollback to ``checkpoint`` (a params-like pytree).
      :func:`apply_updates` then lands exactly on ``checkpoint``.
    best_params: ``state -> (has_best, checkpoint)`` (or ``None`` when this
      state holds no checkpoint): ``has_best`` is a scalar bool, true when
      ``checkpoint`` (a params-like pytree) is the method's best model;
      :func:`best_params` then returns it, else the caller's params. ``None``
      for methods that keep no checkpoint.

  Returns:
    ``state_type``, so this can decorate the class.
  """
  _METHODS[state_type] = _MethodSpec(learning_rate, epoch_end, rollback, best_params)
  return state_type


def register_wrapper(
  state_type: type,
  *,
  inner: Callable[[State], Any],
  emitted: Callable[[State], jax.Array],
) -> type:
  """Registers a wrapper whose inner updates only reach the params sometimes.

  Args:
    state_type: the wrapper's state class.
    inner: ``state -> inner state``.
    emitted: ``state -> scalar bool``, true when the call that produced
      ``state`` passed the inner transformation's update through. A rollback
      flag left in the inner state is honoured only then.

  Returns:
    ``state_type``.
  """
  _WRAPPERS[state_type] = _WrapperSpec(inner, emitted)
  return state_type


# optax.MultiSteps keeps the inner state frozen between emissions; its
# `mini_step` returns to 0 exactly on the call that emitted the inner update.
register_wrapper(
  optax.MultiStepsState,
  inner=lambda state: state.inner_opt_state,
  emitted=lambda state: state.mini_step == 0,
)


_OBSERVE_WITH_WINDOW = (
  "optax_lr.observe: this {method} state was built with steps_per_epoch, so "
  "its update call ends every epoch itself, from the mean `value` of each "
  "window; observing a cost too would end every epoch twice. Use one or the "
  "other: steps_per_epoch=N with update(..., value=loss), or "
  "steps_per_epoch=None (the default) with optax_lr.observe(state, cost)."
)


def unless_windowed(epoch_end: EpochEndFn, method: str) -> EpochEndFn:
  """``epoch_end`` as :func:`observe`'s hook, refused for a windowed state.

  With ``steps_per_epoch`` an epoch-level method's update call ends the
  epochs itself (it calls ``epoch_end`` directly, from its ``window``);
  observing a cost as well would end each epoch twice. The window's presence
  is the state's static structure (``window`` is ``None`` without one), so
  the hook raises ``ValueError`` at trace time, inside ``jit`` too.
  """

  def hook(state: State, cost: jax.Array) -> State:
    if state.window is not None:
      raise ValueError(_OBSERVE_WITH_WINDOW.format(method=method))
    return epoch_end(state, cost)

  return hook


def _is_method(node: Any) -> bool:
  return type(node) in _METHODS


def _walk(tree: Any, emitted: Any = True) -> Iterator[tuple[Any, Any]]:
  """Yields ``(method_state, emitted)`` in pytree flattening order."""
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: _is_method(x) or type(x) in _WRAPPERS)
  for leaf in leaves:
    if _is_method(leaf):
      yield leaf, emitted
    elif type(leaf) in _WRAPPERS:
      wrapper = _WRAPPERS[type(leaf)]
      yield from _walk(wrapper.inner(leaf), jnp.logical_and(emitted, wrapper.emitted(leaf)))


# `optax.inject_hyperparams` builds one state type or the other depending on
# the optax version and on whether a hyperparameter is itself stateful.
_INJECT_STATES = tuple(
  getattr(optax, name)
  for name in ("InjectHyperparamsState", "InjectStatefulHyperparamsState")
  if hasattr(optax, name)
)


def _injected_rates(tree: Any) -> list[Any]:
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, _INJECT_STATES))
  return [
    leaf.hyperparams["learning_rate"]
    for leaf in leaves
    if isinstance(leaf, _INJECT_STATES) and "learning_rate" in leaf.hyperparams
  ]


def current_lr(opt_state: Any) -> Any:
  r"""Returns the learning rate of the optax_lr method inside ``opt_state``.

  The method's state is found at any depth: inside ``optax.chain``,
  ``optax.MultiSteps``, ``optax.inject_hyperparams``, ``optax.partition`` and
  any other container of states. When the state holds no optax_lr method, the
  ``learning_rate`` hyperparameter of an ``optax.inject_hyperparams`` state is
  returned instead, so plain optax optimizers can be logged the same way.

  Several methods (for example one per ``optax.partition`` group) give a
  ``tuple`` of their rates, in the order ``jax.tree_util`` flattens the state:
  chain order for ``optax.chain``, sorted label order for ``optax.partition``.

  What each method returns, for the update call that produced the state: the
  rate :math:`\eta_t` of that update (hypergradient methods, ``newton_lr``,
  AALR; a pytree of per-leaf rates with ``newton_lr(per_leaf=True)``) or, for
  ASLR, the centre :math:`c = d \cdot 10^e` of the band its per-leaf rates are
  drawn from. It is a pure function of arrays: return it from a jitted step to
  log it. In a ``flax.nnx.Optimizer`` the state's leaves are ``nnx.Variable``
  boxes updated in place: log ``float(...)`` of the result, or read
  ``current_lr(nnx.as_pure(optimizer.opt_state))``.

  Args:
    opt_state: an optimizer state.

  Returns:
    The rate (a scalar array, or a pytree of rates for per-leaf methods), or a
    tuple of rates when there are several methods.

  Raises:
    ValueError: when the state holds no learning rate at all.

  Example:
    >>> import optax, optax_lr
    >>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.5)
    >>> float(optax_lr.current_lr(tx.init({'w': 1.0})))
    0.5

  References:
    The rates are those of the methods' papers, cited in their docstrings
    (``optax_lr.marthe``, ``optax_lr.newton_lr``, ``optax_lr.aslr``,
    ``optax_lr.aalr``).
  """
  rates = [_METHODS[type(state)].learning_rate(state) for state, _ in _walk(opt_state)]
  if not rates:
    rates = _injected_rates(opt_state)
  if not rates:
    raise ValueError(
      "current_lr: no learning rate found in the optimizer state: it holds "
      "no optax_lr method state and no optax.inject_hyperparams state with "
      "a 'learning_rate' hyperparameter. Got a state of type "
      f"{type(opt_state).__name__}."
    )
  return rates[0] if len(rates) == 1 else tuple(rates)


def observe(opt_state: Any, cost: Any) -> Any:
  r"""Applies one epoch end with a monitored ``cost`` to every epoch-level method.

  For every epoch-level method state :math:`s` found in ``opt_state``,

  .. math::
    s \leftarrow \mathrm{epoch\_end}(s, \mathrm{cost}),

  the method's own decision (ASLR's digit search, AALR's halving, doubling,
  checkpoint and rollback; a save or rollback it decides is carried out by the
  next update call, which sees the params). A pure function of arrays: call it
  inside or outside ``jit``; changing costs never recompile. States without an
  epoch-level method are returned unchanged, so a training loop can call it
  whatever optimizer it holds.

  Args:
    opt_state: an optimizer state.
    cost: a scalar, e.g. the validation loss after the epoch. NaN and Inf are
      valid inputs: each method says how it treats them.

  A method built with ``steps_per_epoch=N`` (ASLR, AALR) ends its epochs
  itself, from the mean ``value`` of each window of update calls; it is
  driven by one or the other, never both, and ``observe`` refuses it rather
  than end each of its epochs twice.

  Returns:
    The state with every epoch-level method advanced by one epoch.

  Raises:
    ValueError: at trace time, when ``opt_state`` holds a method built with
      ``steps_per_epoch`` (the state's structure tells: it has an epoch
      window).

  Example:
    >>> import jax.numpy as jnp, optax, optax_lr
    >>> state = optax.sgd(0.1).init({'w': jnp.ones(2)})
    >>> optax_lr.observe(state, 0.3) == state  # no epoch-level method inside
    True
    >>> state = optax_lr.aslr(0.1).init({'w': jnp.ones(2)})
    >>> state = optax_lr.observe(optax_lr.observe(state, 1.0), 2.0)  # worse
    >>> print(round(float(optax_lr.current_lr(state)), 6))  # ASLR's search
    0.2

  References:
    Khodamoradi, Denolf, Vissers, Kastner, "ASLR: An Adaptive Scheduler for
    Learning Rate"; "A Simple Dynamic Learning Rate Tuning Algorithm for
    Automated Training of DNNs", https://openreview.net/forum?id=rJxyqkSYDH
    (the per-epoch decisions that ``observe`` feeds).
  """
  cost = jnp.asarray(cost)

  def step(node):
    spec = _METHODS.get(type(node))
    if spec is None or spec.epoch_end is None:
      return node
    return spec.epoch_end(node, cost)

  return jax.tree_util.tree_map(step, opt_state, is_leaf=_is_method)


def _land_on_checkpoint(checkpoint: Any, params: Any) -> Any:
  # Under optax.partition / optax.masked, the method sees `MaskedNode`s in
  # place of the params it does not own: those keep their new values.
  return jax.tree_util.tree_map(
    lambda saved, new: new if isinstance(saved, optax.MaskedNode) else saved,
    checkpoint,
    params,
    is_leaf=lambda x: isinstance(x, optax.MaskedNode) or x is None,
  )


def _select_checkpoint(flag: jax.Array, checkpoint: Any, params: Any) -> Any:
  """Leaf by leaf: the checkpoint's value where ``flag``, else ``params``'.

  An elementwise select, exact from NaN ``params``; the leaves a method does
  not own keep ``params`` (:func:`_land_on_checkpoint`).
  """
  landed = _land_on_checkpoint(checkpoint, params)
  return jax.tree_util.tree_map(lambda saved, new: jnp.where(flag, saved, new), landed, params)


def apply_updates(params: Any, updates: Any, opt_state: Any) -> Any:
  r"""``optax.apply_updates`` that lands exactly on a rolled-back checkpoint.

  A rollback update is ``checkpoint - params``; when ``params`` are NaN or Inf
  (the usual reason to roll back), ``params + update`` stays NaN. On the call
  where a method in ``opt_state`` rolled back, this returns the checkpoint
  itself; on every other call it equals ``optax.apply_updates``:

  .. math::
    w_{t+1} = \begin{cases} c & \text{if the update call rolled back to } c,
    \\ w_t + u_t & \text{otherwise.} \end{cases}

  The choice is an elementwise select on a scalar flag, which XLA fuses with
  the add and with the update's own rollback select (``checkpoint - params``,
  which reads the same checkpoint): no extra pass over the trees. (A
  ``lax.cond`` here cost 3-5% of an MLP's train step on CPU, with the net's
  other work at about 2%: a conditional must wait for every new param leaf,
  where fused selects let each leaf's update run as soon as its gradient is
  ready.) Flax users: ``optax_lr.nnx_update`` and
  ``optax_lr.apply_gradients`` call it for ``nnx.Optimizer`` and
  ``TrainState``.

  Args:
    params: the params the update call received.
    updates: the updates it returned.
    opt_state: the state it returned.

  Returns:
    The new params.

  Example:
    >>> import jax.numpy as jnp, optax, optax_lr
    >>> tx = optax.sgd(0.1)
    >>> params = {'w': jnp.ones(2)}
    >>> updates, state = tx.update({'w': jnp.ones(2)}, tx.init(params))
    >>> optax_lr.apply_updates(params, updates, state)['w']
    Array([0.9, 0.9], dtype=float32)

  References:
    "A Simple Dynamic Learning Rate Tuning Algorithm for Automated Training
    of DNNs" (AALR's checkpoint reloads),
    https://openreview.net/forum?id=rJxyqkSYDH
  """
  new_params = optax.apply_updates(params, updates)
  for state, emitted in _walk(opt_state):
    rollback = _METHODS[type(state)].rollback
    found = None if rollback is None else rollback(state)
    if found is None:  # no rollback machinery (e.g. safety_net=False)
      continue
    rolled_back, checkpoint = found
    new_params = _select_checkpoint(jnp.logical_and(rolled_back, emitted), checkpoint, new_params)
  return new_params


def best_params(opt_state: Any, params: Any) -> Any:
  r"""Returns the best model kept by a method in ``opt_state``.

  For the end of training: a method that keeps its best model (AALR) may end
  a run past it, with params that trained on at a rate still being
  explored. For each such method found in ``opt_state`` (inside
  ``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``,
  ``optax.partition``, ...),

  .. math::
    w^\star = \begin{cases} c & \text{if the method holds a model } c
    \text{ better than } w, \\ w & \text{otherwise,} \end{cases}

  leaf by leaf over the params the method owns (under ``optax.partition``
  the others keep ``params``' values). States without such a method give
  ``params`` back unchanged. The choice is a ``lax.cond`` on a scalar flag,
  so it runs inside ``jit``.

  AALR's best model is the one of the lowest finite cost it has observed,
  the initial model's included: the params while the epoch end that saw that
  cost is the last thing that happened (``optax_lr.observe`` with no update
  call since, or, with ``steps_per_epoch``, a window that ended in the last
  update call), else the copy the next update call stored. That is its
  phase-2 checkpoint unless an earlier model did better: a phase-1 restart
  abandons the models of the attempt it ends, and phase 2 reads costs only
  every ``p`` epochs, ``p`` doubling at every halving. With no finite cost
  observed it is the initial model while a rollback is pending (the params
  diverged), and ``params`` otherwise.

  A method with a safety net returns its last known-good checkpoint while a
  rollback is pending: a divergence found after the last update was built
  (newton_lr's non-finite window sums, a diverged epoch cost observed for
  ASLR), so the params that update produced are the diverged ones.

  Args:
    opt_state: an optimizer state.
    params: the current params, as ``apply_updates`` returned them after the
      last update call.

  Returns:
    The best params, a pytree like ``params``.

  Example:
    >>> import jax.numpy as jnp, optax_lr
    >>> tx = optax_lr.aalr(0.5, warmup_patience=1)
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> state = optax_lr.observe(tx.init(params), 4.0)  # the initial model
    >>> def step(params, state):
    ...   updates, state = tx.update({'w': jnp.ones(2)}, state, params)
    ...   return optax_lr.apply_updates(params, updates, state), state
    >>> params, state = step(params, state)  # w = [0.5, 1.5]
    >>> state = optax_lr.observe(state, 3.0)  # good: phase 2, save pending
    >>> params, state = step(params, state)  # saves [0.5, 1.5]; w = [-0.5, 0.5]
    >>> state = optax_lr.observe(state, 3.5)  # not better than 3
    >>> optax_lr.best_params(state, params)['w']
    Array([0.5, 1.5], dtype=float32)

  References:
    "A Simple Dynamic Learning Rate Tuning Algorithm for Automated Training
    of DNNs" (AALR's checkpoints),
    https://openreview.net/forum?id=rJxyqkSYDH
  """
  best = params
  for state, _ in _walk(opt_state):
    hook = _METHODS[type(state)].best_params
    found = None if hook is None else hook(state)
    if found is None:  # this state keeps no checkpoint
      continue
    has_best, checkpoint = found
    best = jax.lax.cond(
      has_best,
      lambda c, p: _land_on_checkpoint(c, p),
      lambda c, p: p,
      checkpoint,
      best,
    )
  return best


# --------------------------------------------------------------------------
# The epoch window shared by the epoch-level methods.
# --------------------------------------------------------------------------


class EpochWindow(NamedTuple):
  """Running mean and spread of the training loss over the current epoch window."""

  total: jax.Array  # [] float32 (f64 under x64 params): sum of `value` so far.
  steps: jax.Array  # [] int32: update calls seen in the current window.
  # [] float32 (f64 under x64): Welford's running mean of `value`, kept apart
  # from `total` (which gives the window's cost) so that `spread` stays
  # exact where a sum of squares would cancel (losses of 100 ± 0.01).
  running_mean: jax.Array
  # [] float32 (f64 under x64): Welford's sum of squared deviations from the
  # running mean; spread / (steps - 1) is the sample variance.
  spread: jax.Array


class WindowEnd(NamedTuple):
  """What :func:`window_step` reports about the window it closes."""

  is_end: jax.Array  # [] bool: this call was the window's last.
  cost: jax.Array  # [] mean `value` over the window (meaningful when is_end).
  # [] the standard error of that mean, sqrt(sample variance / N), 0 for a
  # window of one call (meaningful when is_end; NaN for non-finite values).
  standard_error: jax.Array


def window_init(dtype: Any = jnp.float32) -> EpochWindow:
  """An empty window accumulating in ``dtype`` (use ``accumulation_dtype``).

  Each field is a buffer of its own: a train step donates the state, and a
  buffer shared by two leaves would be donated twice (XLA's CPU runtime
  crashed on exactly that in a sharded, donated run).
  """
  return EpochWindow(
    total=jnp.zeros([], dtype),
    steps=jnp.zeros([], jnp.int32),
    running_mean=jnp.zeros([], dtype),
    spread=jnp.zeros([], dtype),
  )


def window_step(
  window: EpochWindow, value: Optional[Any], steps_per_epoch: int
) -> tuple[EpochWindow, WindowEnd]:
  """Adds one training loss to the window and says whether the epoch ended.

  A NaN or Inf loss makes the window's mean NaN or Inf: the epoch is then
  judged on a non-finite cost, which each method treats as its paper says.
  The window also keeps the spread of its losses (Welford's update), so a
  method can tell a change of the mean from minibatch noise.

  Args:
    window: the current window.
    value: the scalar training loss of this update call (the ``value`` extra
      argument).
    steps_per_epoch: the window length ``N`` (a Python int).

  Returns:
    ``(window, end)``: the window after this call (emptied at an epoch end),
    and a :class:`WindowEnd` with ``is_end`` (true on the window's last call),
    the window's mean loss and its standard error (both meaningful when
    ``is_end``).

  Raises:
    ValueError: at trace time, when ``value`` is missing or not a scalar.
  """
  if value is None:
    raise ValueError(
      "value: an epoch-level method with steps_per_epoch set needs the "
      "training loss of each batch: call update(..., value=loss)."
    )
  value = jnp.asarray(value)
  if value.shape != ():
    raise ValueError(f"value: expected a scalar loss, got shape {value.shape}.")
  value = value.astype(window.total.dtype)
  total = window.total + value
  steps = window.steps + 1
  count = steps.astype(total.dtype)
  is_end = steps >= steps_per_epoch
  mean_cost = total / count
  # Welford: one pass, no cancellation between a sum of squares and the
  # squared sum.
  delta = value - window.running_mean
  running_mean = window.running_mean + delta / count
  spread = window.spread + delta * (value - running_mean)
  variance = spread / jnp.maximum(count - 1, 1)
  standard_error = jnp.sqrt(jnp.maximum(variance, 0) / count)
  emptied = window_init(total.dtype)
  kept = EpochWindow(total=total, steps=steps, running_mean=running_mean, spread=spread)
  new_window = jax.tree_util.tree_map(lambda e, k: jnp.where(is_end, e, k), emptied, kept)
  return new_window, WindowEnd(is_end=is_end, cost=mean_cost, standard_error=standard_error)


def maybe_epoch_end(
  state: State, is_end: jax.Array, cost: jax.Array, epoch_end: EpochEndFn
) -> State:
  """``epoch_end(state, cost)`` when ``is_end``, else ``state``, via ``lax.cond``."""
  return jax.lax.cond(is_end, epoch_end, lambda s, c: s, state, cost)
