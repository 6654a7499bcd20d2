"""A Flax nnx MLP on scikit-learn's digits, with a learning rate that tunes itself.

    python examples/nnx_digits.py --method marthe --epochs 10

Shows, for ``flax.nnx.Optimizer``:

* the extra arguments each method needs, passed through the update: ``value``
  (the batch loss), ``loss_fn`` (a function of the *params*, built with
  ``nnx.split``/``nnx.merge``, for RTHO and MARTHE's Hessian-vector products)
  and ``val_grads`` (the gradient of a validation batch, the hypergradient
  methods' objective);
* ``optax_lr.nnx_update``: ``optimizer.update`` with ``optax_lr.apply_updates``,
  so an AALR rollback lands exactly on its checkpoint;
* ``optax_lr.nnx_observe``: the validation loss fed to ASLR/AALR once per epoch;
* logging the rate with ``optax_lr.current_lr``;
* checkpointing the model and the optimizer (the method's state included).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import serialization

import optax_lr

METHODS = ("hypergradient_descent", "rtho", "marthe", "newton_lr", "aslr", "aalr")
NEEDS_LOSS_FN = ("rtho", "marthe")
EPOCH_LEVEL = ("aslr", "aalr")


def make_tx(method: str, steps_per_epoch: int) -> optax.GradientTransformation:
  """Each method over SGD with momentum, at settings that train digits well."""
  momentum = optax.trace(0.9)
  if method == "hypergradient_descent":
    return optax_lr.hypergradient_descent(0.01, direction=momentum)
  if method == "rtho":
    return optax_lr.rtho(0.01, direction=momentum)
  if method == "marthe":
    return optax_lr.marthe(0.01, direction=momentum)
  if method == "newton_lr":
    return optax_lr.newton_lr(0.01, steps_per_epoch=steps_per_epoch)
  if method == "aslr":
    return optax_lr.aslr(0.05, direction=momentum)
  if method == "aalr":
    return optax_lr.aalr(0.05, warmup_patience=2, direction=momentum)
  raise ValueError(f"method must be one of {METHODS}, got {method!r}")


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 64, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def cross_entropy(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def train(
  method: str = "marthe",
  epochs: int = 10,
  batch_size: int = 100,
  seed: int = 0,
  verbose: bool = True,
) -> dict:
  """Trains and returns the per-step rates and losses and per-epoch val losses."""
  splits = optax_lr.datasets.digits(n_train=1500, n_valid=297, seed=seed)
  x_train, y_train = map(jnp.asarray, splits.train_batches(batch_size))
  x_val, y_val = jnp.asarray(splits.x_valid), jnp.asarray(splits.y_valid)
  steps_per_epoch = x_train.shape[0]
  model = MLP(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, make_tx(method, steps_per_epoch), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
    extra = {"value": loss}
    if method in NEEDS_LOSS_FN:
      # tx.update sees the params as an nnx.State of arrays: rebuild the model
      # from them so that the loss is a function of the params.
      graphdef, _, rest = nnx.split(model, nnx.Param, ...)
      extra["loss_fn"] = lambda params: cross_entropy(nnx.merge(graphdef, params, rest), x, y)
    if method in ("hypergradient_descent", "rtho", "marthe"):
      # The hypergradient's objective E: the validation loss.
      extra["val_grads"] = nnx.grad(cross_entropy)(model, x_val, y_val)
    optax_lr.nnx_update(optimizer, model, grads, **extra)
    # nnx.as_pure: an array, not the optimizer's Variable (updated in place).
    return loss, optax_lr.current_lr(nnx.as_pure(optimizer.opt_state))

  @nnx.jit
  def evaluate(model, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  @nnx.jit
  def end_epoch(optimizer, val_loss):
    optax_lr.nnx_observe(optimizer, val_loss)  # a no-op for step-level methods

  history = {"lr": [], "loss": [], "val_loss": [], "val_acc": []}
  if method in EPOCH_LEVEL:
    end_epoch(optimizer, evaluate(model, x_val, y_val)[0])  # L* of the initial model
  for epoch in range(epochs):
    for i in range(steps_per_epoch):
      loss, lr = train_step(model, optimizer, x_train[i], y_train[i])
      history["loss"].append(float(loss))
      history["lr"].append(float(lr))
    val_loss, val_acc = evaluate(model, x_val, y_val)
    end_epoch(optimizer, val_loss)
    history["val_loss"].append(float(val_loss))
    history["val_acc"].append(float(val_acc))
    if verbose:
      print(
        f"epoch {epoch + 1:3d}  lr {history['lr'][-1]:.4g}  train loss "
        f"{np.mean(history['loss'][-steps_per_epoch:]):.4f}  val loss "
        f"{float(val_loss):.4f}  val acc {float(val_acc):.3f}"
      )
  # Checkpointing: the learning-rate method's whole state (rate, windows,
  # AALR's checkpoint, ASLR's PRNG key) lives in optimizer.opt_state. Save the
  # model and the optimizer together as a pure dict of arrays ...
  blob = serialization.msgpack_serialize(nnx.to_pure_dict(nnx.state((model, optimizer))))
  # ... and restore into freshly built ones.
  model2 = MLP(nnx.Rngs(seed + 1))
  optimizer2 = nnx.Optimizer(model2, make_tx(method, steps_per_epoch), wrt=nnx.Param)
  restored = nnx.state((model2, optimizer2))
  nnx.replace_by_pure_dict(restored, serialization.msgpack_restore(blob))
  nnx.update((model2, optimizer2), restored)
  assert float(optax_lr.current_lr(optimizer2.opt_state)) == float(
    optax_lr.current_lr(optimizer.opt_state)
  )
  return history


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", choices=METHODS, default="marthe")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  return train(args.method, args.epochs, args.batch_size, args.seed)


if __name__ == "__main__":
  main()
