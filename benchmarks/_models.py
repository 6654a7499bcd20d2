"""The benchmarks' models, in flax linen, as pure functions of their params.

Every model is a :class:`Model`: ``init(key) -> params``, ``logits(params, x)``
and ``loss(params, (x, y))`` (mean softmax cross-entropy), pure functions of a
params pytree, so any optax transformation trains them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class MLPModule(nn.Module):
  """ReLU layers of ``hidden`` widths, then ``classes`` logits."""

  hidden: Sequence[int]
  classes: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.classes)(x)


class CNN2DModule(nn.Module):
  """A small image CNN: two 3x3 conv + 2x2 average-pool blocks, one dense layer."""

  channels: Sequence[int] = (32, 64)
  classes: int = 10

  @nn.compact
  def __call__(self, x):
    for width in self.channels:
      x = nn.relu(nn.Conv(width, kernel_size=(3, 3))(x))
      x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    return nn.Dense(self.classes)(x.reshape((x.shape[0], -1)))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@dataclasses.dataclass(frozen=True)
class Model:
  """A flax module with a fixed input shape, as pure functions of its params."""

  name: str
  module: nn.Module
  input_shape: tuple[int, ...]  # one example's shape

  @functools.cached_property
  def _init(self):
    # One compiled call: flax's init run eagerly would compile op by op.
    dummy = jnp.zeros((1,) + tuple(self.input_shape), jnp.float32)
    return jax.jit(lambda key: self.module.init(key, dummy)["params"])

  def init(self, key: jax.Array) -> Any:
    return self._init(key)

  def logits(self, params: Any, x: jax.Array) -> jax.Array:
    return self.module.apply({"params": params}, x)

  def loss(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return cross_entropy(self.logits(params, x), y)

  def accuracy(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return jnp.mean(jnp.argmax(self.logits(params, x), -1) == y)


def mlp(input_shape: tuple[int, ...], hidden: Sequence[int], classes: int = 10) -> Model:
  name = "mlp-" + "-".join(map(str, (int(jnp.prod(jnp.array(input_shape))),
                                     *hidden, classes)))
  return Model(name, MLPModule(tuple(hidden), classes), tuple(input_shape))


def cnn2d(shape: tuple[int, int, int] = (32, 32, 3), channels: Sequence[int] = (32, 64),
          classes: int = 10) -> Model:
  return Model(f"cnn-{'x'.join(map(str, shape))}-{'-'.join(map(str, channels))}",
               CNN2DModule(tuple(channels), classes), tuple(shape))

