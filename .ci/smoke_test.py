"""Smoke test of an installed optax_lr wheel, run from outside the repository.

.ci/run installs the built wheel (not editable) in a fresh virtualenv, changes
to a directory outside the repository and runs this file. It checks that the
import resolves to the installed wheel, that the version and ``py.typed``
shipped, and that a few methods train a small least-squares problem in a
jitted step. Usage: ``python smoke_test.py REPO_ROOT``.
"""

import importlib.metadata
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import optax

import optax_lr


def check_installed(repo_root):
  package = pathlib.Path(optax_lr.__file__).resolve().parent
  assert not package.is_relative_to(repo_root), (
    f"optax_lr imported from the repository ({package}), not the wheel"
  )
  assert "site-packages" in package.parts, package
  installed = importlib.metadata.version("optax_lr")
  assert optax_lr.__version__ == installed, (optax_lr.__version__, installed)
  assert (package / "py.typed").is_file(), "py.typed is not in the wheel"
  license_files = importlib.metadata.metadata("optax_lr").get_all("License-File") or []
  assert "LICENSE" in license_files, license_files
  print(f"smoke: optax_lr {optax_lr.__version__} from {package}")


def loss_fn(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def train(name, tx, *, epochs=8, observe=False):
  """Trains least squares for ``epochs`` epochs of 10 batches; checks it."""
  key_x, key_noise = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(key_x, (10, 32, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3
  y = y + 0.01 * jax.random.normal(key_noise, y.shape)
  params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params, value=loss)
    params = optax_lr.apply_updates(params, updates, opt_state)
    return params, opt_state, optax_lr.current_lr(opt_state)

  def full_loss(params):
    return float(loss_fn(params, x.reshape(-1, 3), y.reshape(-1)))

  initial = full_loss(params)
  end_epoch = jax.jit(optax_lr.observe)
  if observe:
    opt_state = end_epoch(opt_state, initial)
  for _ in range(epochs):
    for i in range(x.shape[0]):
      params, opt_state, lr = train_step(params, opt_state, x[i], y[i])
    if observe:
      opt_state = end_epoch(opt_state, full_loss(params))
  final = full_loss(optax_lr.best_params(opt_state, params))
  rate = float(optax_lr.current_lr(opt_state))
  print(f"smoke: {name}: loss {initial:.3g} -> {final:.3g}, lr {rate:.3g}")
  assert math.isfinite(float(lr)) and float(lr) > 0, (name, float(lr))
  assert math.isfinite(rate) and rate > 0, (name, rate)
  assert math.isfinite(final) and final < 0.5 * initial, (name, initial, final)


def main():
  repo_root = pathlib.Path(sys.argv[1]).resolve()
  check_installed(repo_root)
  train("hypergradient_descent", optax_lr.hypergradient_descent(0.01, direction=optax.trace(0.9)))
  train("newton_lr", optax_lr.newton_lr(0.01, steps_per_epoch=10))
  train("aslr", optax_lr.aslr(0.01, steps_per_epoch=10))
  # AALR's phase 1 restarts from the initial params after any worse epoch:
  # a short warm-up reaches phase 2 within the few epochs of a smoke test.
  train("aalr", optax_lr.aalr(0.01, warmup_patience=2, direction=optax.trace(0.9)), observe=True)
  print("smoke: all checks passed")


if __name__ == "__main__":
  main()
