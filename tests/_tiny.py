"""A tiny classification problem, and its training loop, that two net-invisibility tests share."""

import jax
import jax.numpy as jnp
import optax

import optax_lr


def classification():
  """``(x, labels, params)``: 200 inputs N(0, I_16), labels learnable from x.

  ``params`` is a 16-32-10 MLP (``hidden`` and ``out``, each ``w`` and ``b``).
  """
  x = jax.random.normal(jax.random.PRNGKey(0), (200, 16))
  labels = jnp.argmax(x[:, :10], axis=1)  # learnable from x
  k1, k2 = jax.random.split(jax.random.PRNGKey(2))
  params = {
    "hidden": {"w": 0.3 * jax.random.normal(k1, (16, 32)), "b": jnp.zeros(32)},
    "out": {"w": 0.3 * jax.random.normal(k2, (32, 10)), "b": jnp.zeros(10)},
  }
  return x, labels, params


def train(tx, activation, *, steps=60, pass_loss_fn=False):
  """``tx`` on :func:`classification`'s MLP, minibatches of 20 in a jitted scan.

  Each call gets ``value=`` (and with ``pass_loss_fn``, the minibatch's
  ``loss_fn=``). Returns ``(params, state, losses, rates)``: the final params
  and state, and each step's loss and ``state.learning_rate``.
  """
  x, labels, params = classification()

  def loss_fn(p, xb, yb):
    h = activation(xb @ p["hidden"]["w"] + p["hidden"]["b"])
    logits = h @ p["out"]["w"] + p["out"]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def body(carry, t):
    p, state = carry
    xb = jax.lax.dynamic_slice_in_dim(x, (t % 10) * 20, 20)
    yb = jax.lax.dynamic_slice_in_dim(labels, (t % 10) * 20, 20)
    loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
    extra = {"loss_fn": lambda q: loss_fn(q, xb, yb)} if pass_loss_fn else {}
    updates, state = tx.update(grads, state, p, value=loss, **extra)
    return (optax_lr.apply_updates(p, updates, state), state), (loss, state.learning_rate)

  scan = lambda p: jax.lax.scan(body, (p, tx.init(p)), jnp.arange(steps))
  (p, state), (losses, rates) = jax.jit(scan)(params)
  return p, state, losses, rates
