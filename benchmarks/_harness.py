"""Shared pieces of the benchmarks: models, train steps, interleaved timing.

Timing rule of this project: the machine is shared and noisy, so absolute
times are not comparable across runs. Every figure is a *ratio* of per-step
times measured side by side in one run: the candidates' steps are interleaved
round by round (in a shuffled order each round) and each is summarised by its
median over rounds.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lr
from benchmarks import _methods
from optax_lr import _checkpoint
from optax_lr._registry import EXTRA_ARG_NAMES

# ---------------------------------------------------------------- models


def init_mlp(
  key: jax.Array, sizes: Sequence[int], dtype=jnp.float32, gain: float = 2.0
) -> list[dict]:
  """Dense layers ``sizes[0] -> ... -> sizes[-1]``, weights N(0, gain / fan_in).

  ``gain=2`` is He's initialisation (ReLU), ``gain=1`` LeCun's (tanh).
  """
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    key, sub = jax.random.split(key)
    scale = jnp.sqrt(gain / fan_in).astype(dtype)
    params.append(
      {
        "w": jax.random.normal(sub, (fan_in, fan_out), dtype) * scale,
        "b": jnp.zeros((fan_out,), dtype),
      }
    )
  return params


def mlp_logits(params: list[dict], x: jax.Array, activation=jax.nn.relu) -> jax.Array:
  for layer in params[:-1]:
    x = activation(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def mlp_loss(params: list[dict], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  x, y = batch
  return cross_entropy(mlp_logits(params, x), y)


def random_batch(key: jax.Array, batch: int, features: int | tuple, classes: int):
  kx, ky = jax.random.split(key)
  shape = (batch,) + (tuple(features) if isinstance(features, tuple) else (features,))
  return jax.random.normal(kx, shape), jax.random.randint(ky, (batch,), 0, classes)


# ---------------------------------------------------------------- steps


def _set_since_save(state: Any, since_save: jax.Array) -> Any:
  """``state`` with every safety net's ``since_save`` counter set to ``since_save``."""
  is_net = lambda x: isinstance(x, _checkpoint.SafetyNetState)
  return jax.tree_util.tree_map(
    lambda x: x.replace(since_save=since_save) if is_net(x) else x, state, is_leaf=is_net
  )


def make_train_step(
  tx: optax.GradientTransformation,
  loss_fn: Callable[[Any, Any], jax.Array],
  needs: Sequence[str] = (),
  *,
  hvp: bool = False,
  no_saves: bool = False,
) -> Callable:
  """A jit-compiled train step ``(params, state, batch) -> (params, state, loss)``.

  Params and state are donated, as a production train step would do.

  Args:
    tx: the optimizer.
    loss_fn: ``(params, batch) -> scalar``.
    needs: the extra args ``tx.update`` needs, from ``EXTRA_ARG_NAMES``
      (``val_grads`` is the gradient on the same batch here: the cost of a
      separate validation batch is the user's, not the method's).
    hvp: add one forward-over-reverse Hessian-vector product along the
      gradient, folded into the update (the "grad + one HVP" anchor).
    no_saves: time only steps that do not save a checkpoint. Each call sets
      the safety net's ``since_save`` counter (``optax_lr._checkpoint``) to
      0 before ``tx.update``, so the save condition (``since_save >=
      SAVE_EVERY - 1``) is false; the 0 is a runtime argument of the compiled
      step (not donated, not a constant XLA could fold), so the step is the
      production program, with its ``lax.cond`` taking the no-save branch,
      plus the write of that 0 into the net's packed counts (one update of
      a [10] int32 buffer). A state without a safety net is left as it is
      (the argument goes unused).
  """
  unknown = set(needs) - set(EXTRA_ARG_NAMES)
  if unknown:
    raise ValueError(f"needs: unknown extra args {sorted(unknown)}")

  def step(params, state, batch, since_save=None):
    if since_save is not None:
      state = _set_since_save(state, since_save)
    batch_loss = lambda p: loss_fn(p, batch)
    loss, grads = jax.value_and_grad(batch_loss)(params)
    if hvp:
      _, hess_grads = jax.jvp(jax.grad(batch_loss), (params,), (grads,))
      grads = jax.tree_util.tree_map(lambda g, h: g + 1e-3 * h, grads, hess_grads)
    extra = _methods.extra_args(needs, loss=loss, batch_loss=batch_loss, val_grads_fn=lambda: grads)
    updates, state = tx.update(grads, state, params, **extra)
    params = optax_lr.apply_updates(params, updates, state)
    return params, state, loss

  compiled = jax.jit(step, donate_argnums=(0, 1))
  if not no_saves:
    return compiled
  zero = jnp.zeros([], jnp.int32)
  return lambda params, state, batch: compiled(params, state, batch, zero)


def ended_finite(params: Any, state: Any, loss: jax.Array) -> bool:
  """Whether a timed run's last ``loss`` and its ``params`` are all finite."""
  del state  # A method's state may hold +inf by design (AALR's best cost).
  leaves = [loss] + jax.tree_util.tree_leaves(params)
  return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


@dataclasses.dataclass
class Candidate:
  """One train step to time: ``tx`` with the extra args it needs."""

  name: str
  tx: optax.GradientTransformation
  needs: Sequence[str] = ()
  hvp: bool = False
  no_saves: bool = False  # see make_train_step


def time_candidates(
  candidates: Sequence[Candidate],
  init_params: Callable[[], Any],
  loss_fn: Callable[[Any, Any], jax.Array],
  batch: Any,
  *,
  rounds: int = 15,
  steps_per_round: int = 20,
  seed: int = 0,
  final_states: Optional[dict] = None,
  finite: Optional[dict] = None,
) -> dict[str, float]:
  """Median seconds per step of each candidate, interleaved in one run.

  ``final_states``, when given, receives each candidate's optimizer state
  after its last timed step (e.g. to check that no step rolled back);
  ``finite`` whether its last loss and its params after the last step are
  all finite (a diverged run's steps time NaN arithmetic, not training).
  """
  runners = {}
  for cand in candidates:
    step = make_train_step(cand.tx, loss_fn, cand.needs, hvp=cand.hvp, no_saves=cand.no_saves)
    params = init_params()
    carry = [params, cand.tx.init(params), None]
    # Compile and warm up outside the timed rounds.
    for _ in range(3):
      carry[0], carry[1], carry[2] = step(carry[0], carry[1], batch)
    jax.block_until_ready(carry[2])
    runners[cand.name] = (step, carry)

  times: dict[str, list[float]] = {name: [] for name in runners}
  order = list(runners)
  rng = random.Random(seed)
  for _ in range(rounds):
    rng.shuffle(order)
    for name in order:
      step, carry = runners[name]
      start = time.perf_counter()
      for _ in range(steps_per_round):
        carry[0], carry[1], carry[2] = step(carry[0], carry[1], batch)
      jax.block_until_ready(carry)
      times[name].append((time.perf_counter() - start) / steps_per_round)
  if final_states is not None:
    final_states.update({name: carry[1] for name, (_, carry) in runners.items()})
  if finite is not None:
    finite.update({name: ended_finite(*carry) for name, (_, carry) in runners.items()})
  return {name: float(np.median(ts)) for name, ts in times.items()}
