"""A Flax linen MLP trained with ``TrainState`` and a self-tuning learning rate.

    python examples/linen_train_state.py --method aalr --epochs 10

``TrainState.apply_gradients(grads=..., **kwargs)`` treats its keyword
arguments as fields of the state to replace, so none reaches the optimizer.
``optax_lr.apply_gradients(state, grads, **extra_args)`` is the same step with
the keyword arguments passed to ``tx.update`` (``value``, ``loss_fn``,
``val_grads``) and ``optax_lr.apply_updates`` (AALR's exact rollbacks). The
state is a pytree: ``jax.jit`` the step, feed the validation loss to
ASLR/AALR with ``state.replace(opt_state=optax_lr.observe(state.opt_state,
val_loss))``, log ``optax_lr.current_lr(state.opt_state)``, and checkpoint the
whole ``TrainState`` (``flax.serialization.to_bytes`` or orbax): the
learning-rate method's state is inside ``opt_state``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen
from flax import serialization
from flax.training import train_state

import optax_lr

METHODS = ("hypergradient_descent", "rtho", "marthe", "newton_lr", "aslr", "aalr")


def make_tx(method: str, steps_per_epoch: int) -> optax.GradientTransformation:
  """Each method at settings that train digits well (as examples/nnx_digits.py)."""
  momentum = optax.trace(0.9)
  return {
    "hypergradient_descent": lambda: optax_lr.hypergradient_descent(0.01, direction=momentum),
    "rtho": lambda: optax_lr.rtho(0.01, direction=momentum),
    "marthe": lambda: optax_lr.marthe(0.01, direction=momentum),
    "newton_lr": lambda: optax_lr.newton_lr(0.01, steps_per_epoch=steps_per_epoch),
    "aslr": lambda: optax_lr.aslr(0.05, direction=momentum),
    "aalr": lambda: optax_lr.aalr(0.05, warmup_patience=2, direction=momentum),
  }[method]()


class MLP(linen.Module):
  @linen.compact
  def __call__(self, x):
    return linen.Dense(10)(jax.nn.relu(linen.Dense(64)(x)))


def train(
  method: str = "aalr", epochs: int = 10, batch_size: int = 100, seed: int = 0, verbose: bool = True
) -> dict:
  splits = optax_lr.datasets.digits(n_train=1500, n_valid=297, seed=seed)
  x_train, y_train = map(jnp.asarray, splits.train_batches(batch_size))
  x_val, y_val = jnp.asarray(splits.x_valid), jnp.asarray(splits.y_valid)
  steps_per_epoch = x_train.shape[0]
  model = MLP()
  state = train_state.TrainState.create(
    apply_fn=model.apply,
    params=model.init(jax.random.PRNGKey(seed), x_train[0])["params"],
    tx=make_tx(method, steps_per_epoch),
  )

  def loss_of(params, apply_fn, x, y):
    logits = apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(state, x, y):
    loss, grads = jax.value_and_grad(loss_of)(state.params, state.apply_fn, x, y)
    state = optax_lr.apply_gradients(
      state,
      grads,
      value=loss,  # the training loss: the safety net's tests, windowed methods' cost
      loss_fn=lambda params: loss_of(params, state.apply_fn, x, y),  # RTHO/MARTHE
      val_grads=jax.grad(loss_of)(state.params, state.apply_fn, x_val, y_val),
    )  # extra args a method does not use are ignored (and compiled away)
    return state, loss, optax_lr.current_lr(state.opt_state)

  @jax.jit
  def end_epoch(state):
    logits = state.apply_fn({"params": state.params}, x_val)
    val_loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_val).mean()
    state = state.replace(opt_state=optax_lr.observe(state.opt_state, val_loss))
    return state, val_loss, jnp.mean(jnp.argmax(logits, -1) == y_val)

  history = {"lr": [], "loss": [], "val_loss": [], "val_acc": []}
  if method in ("aslr", "aalr"):
    state, _, _ = end_epoch(state)  # L* of the initial model
  for epoch in range(epochs):
    for i in range(steps_per_epoch):
      state, loss, lr = train_step(state, x_train[i], y_train[i])
      history["loss"].append(float(loss))
      history["lr"].append(float(lr))
    state, val_loss, val_acc = end_epoch(state)
    history["val_loss"].append(float(val_loss))
    history["val_acc"].append(float(val_acc))
    if verbose:
      print(
        f"epoch {epoch + 1:3d}  lr {history['lr'][-1]:.4g}  train loss "
        f"{np.mean(history['loss'][-steps_per_epoch:]):.4f}  val loss "
        f"{float(val_loss):.4f}  val acc {float(val_acc):.3f}"
      )

  # Checkpointing: the learning-rate method's whole state (rate, windows,
  # AALR's checkpoint, ASLR's PRNG key) lives in state.opt_state.
  restored = serialization.from_bytes(state, serialization.to_bytes(state))
  assert float(optax_lr.current_lr(restored.opt_state)) == float(
    optax_lr.current_lr(state.opt_state)
  )
  return history


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", choices=METHODS, default="aalr")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  return train(args.method, args.epochs, args.batch_size, args.seed)


if __name__ == "__main__":
  main()
