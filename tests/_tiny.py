"""A tiny classification problem that two net-invisibility tests share."""

import jax
import jax.numpy as jnp


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
