"""The benchmarks' models, as pure functions of their params.

Every model is a :class:`Model` (flax linen: the MLP and the CNN) or a
:class:`LanguageModel` (flax NNX: a decoder-only Transformer):
``init(key) -> params``, ``logits(params, x)``, ``loss(params, (x, y))`` (mean
softmax cross-entropy) and ``accuracy``, pure functions of a params pytree,
so any optax transformation trains them. A :class:`Regressor` is a
:class:`Model` with one output, the mean squared error as its loss and R² as
its ``accuracy``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx


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


class CNNModule(nn.Module):
  """A small CNN: blocks of a size-3 conv and a size-2 average pool, one dense layer.

  The inputs are images ``(batch, height, width, channels)`` (3x3 convs, 2x2
  pools) or signals ``(batch, length, channels)`` (size-3 convs, size-2
  pools). ``image_shape``: when set, the inputs are flat rows reshaped to it
  (the digits' 64 pixels as an 8x8x1 image, an MNIST-1D row as a 40x1
  signal).
  """

  channels: Sequence[int] = (32, 64)
  classes: int = 10
  image_shape: tuple[int, ...] | None = None

  @nn.compact
  def __call__(self, x):
    if self.image_shape is not None:
      x = x.reshape((x.shape[0],) + tuple(self.image_shape))
    spatial = x.ndim - 2  # the dimensions between the batch and the channels
    for width in self.channels:
      x = nn.relu(nn.Conv(width, kernel_size=(3,) * spatial)(x))
      x = nn.avg_pool(x, window_shape=(2,) * spatial, strides=(2,) * spatial)
    return nn.Dense(self.classes)(x.reshape((x.shape[0], -1)))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class _Classifier:
  """``accuracy`` from ``logits``: the fraction of argmax predictions that hit."""

  metric = "acc %"  # what the tables call ``accuracy``, as a percentage

  def logits(self, params: Any, x: jax.Array) -> jax.Array:
    raise NotImplementedError

  def accuracy(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return jnp.mean(jnp.argmax(self.logits(params, x), -1) == y)


@dataclasses.dataclass(frozen=True)
class Model(_Classifier):
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


@dataclasses.dataclass(frozen=True)
class Regressor(Model):
  """A :class:`Model` of one output trained on the mean squared error.

  ``accuracy`` is the coefficient of determination R² = 1 - MSE / Var(y) on
  the batch (1: perfect; 0: no better than predicting the mean).
  """

  metric = "R² %"

  def loss(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return jnp.mean((self.logits(params, x) - y) ** 2)

  def accuracy(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return 1.0 - self.loss(params, batch) / jnp.mean((y - y.mean()) ** 2)


def mlp(input_shape: tuple[int, ...], hidden: Sequence[int], classes: int = 10) -> Model:
  name = "mlp-" + "-".join(map(str, (int(jnp.prod(jnp.array(input_shape))), *hidden, classes)))
  return Model(name, MLPModule(tuple(hidden), classes), tuple(input_shape))


def regressor_mlp(inputs: int, hidden: Sequence[int]) -> Regressor:
  """A ReLU MLP with one linear output, trained on the mean squared error."""
  name = "mlp-" + "-".join(map(str, (inputs, *hidden, 1)))
  return Regressor(name, MLPModule(tuple(hidden), 1), (inputs,))


def cnn2d(
  shape: tuple[int, int, int] = (32, 32, 3), channels: Sequence[int] = (32, 64), classes: int = 10
) -> Model:
  return Model(
    f"cnn-{'x'.join(map(str, shape))}-{'-'.join(map(str, channels))}",
    CNNModule(tuple(channels), classes),
    tuple(shape),
  )


def flat_image_cnn(shape: tuple[int, ...], channels: Sequence[int], classes: int = 10) -> Model:
  """:func:`cnn2d` on flat inputs: each row of ``prod(shape)`` values is an image.

  ``shape``: ``(height, width, channels)`` for images, ``(length,
  channels)`` for 1-D signals (a 1-D CNN).
  """
  return Model(
    f"cnn-{'x'.join(map(str, shape))}-{'-'.join(map(str, channels))}",
    CNNModule(tuple(channels), classes, image_shape=tuple(shape)),
    (math.prod(shape),),
  )


# ---------------------------------------------------------------- language model
#
# A decoder-only Transformer in Flax NNX, as pure functions of its params like
# the models above: ``init`` builds the module and returns its ``nnx.Param``
# state as plain arrays (``nnx.as_pure``), ``logits`` merges them back into
# the module's graph. Any optax transformation trains the pytree.


def _normal(stddev: float):
  return nnx.initializers.normal(stddev)


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention (``jax.nn.dot_product_attention``)."""

  def __init__(self, d_model: int, heads: int, out_std: float, *, rngs: nnx.Rngs):
    if d_model % heads:
      raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
    self.heads = heads
    self.qkv = nnx.Linear(d_model, 3 * d_model, kernel_init=_normal(0.02), rngs=rngs)
    self.out = nnx.Linear(d_model, d_model, kernel_init=_normal(out_std), rngs=rngs)

  def __call__(self, x):
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads), 3, axis=2)
    y = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], is_causal=True)
    return self.out(y.reshape(b, t, d))


class Block(nnx.Module):
  """Pre-norm block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))`` (GELU, 4x wide)."""

  def __init__(self, d_model: int, heads: int, layers: int, *, rngs: nnx.Rngs):
    out_std = 0.02 / math.sqrt(2 * layers)  # GPT-2's residual scaling
    self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = CausalSelfAttention(d_model, heads, out_std, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.fc = nnx.Linear(d_model, 4 * d_model, kernel_init=_normal(0.02), rngs=rngs)
    self.proj = nnx.Linear(4 * d_model, d_model, kernel_init=_normal(out_std), rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.proj(jax.nn.gelu(self.fc(self.ln2(x))))


class TransformerLM(nnx.Module):
  """A decoder-only byte-level Transformer: token and learned position
  embeddings, ``layers`` pre-norm blocks, a final LayerNorm, and logits from
  the token embedding (tied)."""

  def __init__(
    self, vocab: int, context: int, d_model: int, heads: int, layers: int, *, rngs: nnx.Rngs
  ):
    self.embed = nnx.Embed(vocab, d_model, embedding_init=_normal(0.02), rngs=rngs)
    self.pos = nnx.Param(_normal(0.02)(rngs.params(), (context, d_model)))
    self.blocks = nnx.List([Block(d_model, heads, layers, rngs=rngs) for _ in range(layers)])
    self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens) + self.pos[: tokens.shape[-1]]
    for block in self.blocks:
      x = block(x)
    return self.embed.attend(self.ln_f(x))


def _sequence_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy over every position, in nats."""
  return optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), labels.astype(jnp.int32)
  ).mean()


@dataclasses.dataclass(frozen=True)
class LanguageModel(_Classifier):
  """A :class:`TransformerLM` as pure functions of its params, like :class:`Model`.

  ``loss(params, (x, y))`` is the mean cross-entropy of the next byte over
  every position of the windows ``x`` (``[batch, context]`` ints), in nats
  per byte; ``accuracy`` the fraction of next bytes predicted (argmax).
  """

  name: str
  vocab: int
  context: int
  d_model: int
  heads: int
  layers: int

  def _module(self, key) -> TransformerLM:
    return TransformerLM(
      self.vocab, self.context, self.d_model, self.heads, self.layers, rngs=nnx.Rngs(key)
    )

  @functools.cached_property
  def _graph(self):
    abstract = nnx.eval_shape(lambda: self._module(jax.random.PRNGKey(0)))
    graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
    return graphdef, rest

  @functools.cached_property
  def _init(self):
    return jax.jit(lambda key: nnx.as_pure(nnx.state(self._module(key), nnx.Param)))

  def init(self, key: jax.Array) -> Any:
    return self._init(key)

  def num_params(self) -> int:
    params = jax.eval_shape(self.init, jax.random.PRNGKey(0))
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))

  def logits(self, params: Any, x: jax.Array) -> jax.Array:
    graphdef, rest = self._graph
    return nnx.merge(graphdef, params, rest)(x.astype(jnp.int32))

  def loss(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return _sequence_cross_entropy(self.logits(params, x), y)


def transformer_lm(
  context: int = 64, d_model: int = 64, heads: int = 4, layers: int = 2, vocab: int = 256
) -> LanguageModel:
  return LanguageModel(
    f"transformer-lm-L{layers}-d{d_model}-h{heads}-T{context}",
    vocab,
    context,
    d_model,
    heads,
    layers,
  )
