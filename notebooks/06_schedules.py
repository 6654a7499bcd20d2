# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The survey's schedules, and the range test choosing the initial rate
#
# Every schedule of the learning-rate schedule survey, as an optax schedule of the step count (optax's own where it has one; `optax_lr` adds `inverse_time_decay`, `cyclic_schedule`, `sgdr_schedule` and `per_epoch`), then the learning-rate range test (Smith, [arXiv:1506.01186](https://arxiv.org/abs/1506.01186)) picking the peak rate for a few of them on digits.

# %%
# Install optax_lr if this runtime lacks it (a fresh Colab runtime): from a
# clone of the repository. Where optax_lr is installed, this does nothing.
import importlib.util, pathlib, subprocess, sys

if importlib.util.find_spec("optax_lr") is None:
    candidates = [pathlib.Path.cwd(), pathlib.Path.cwd().parent,
                  pathlib.Path("/content/optax_lr")]
    root = next((p for p in candidates if (p / "optax_lr" / "__init__.py").exists()), None)
    if root is None:
        raise RuntimeError(
            "optax_lr is not installed and no clone of it was found. On Colab, "
            "upload or clone the optax_lr repository to /content/optax_lr "
            "(Files panel, or !git clone <repository URL> /content/optax_lr) "
            "and run this cell again; elsewhere: pip install -e '.[examples]'.")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e",
                    f"{root}[examples]"], check=True)
    sys.path.insert(0, str(root))  # this kernel predates the editable install

# %%
# Small settings run on a CPU in well under a minute. On a GPU/TPU runtime set
# FULL = True (or OPTAX_LR_FULL=1 in the environment) for the full-size runs.
import os

FULL = os.environ.get("OPTAX_LR_FULL", "0") == "1"

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn

import optax_lr


class MLP(nn.Module):
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x)))


def make_loss(model):
    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss_fn


# %%
import math

EPOCHS = 40
eta0, eta_min = 0.1, 0.001
schedules = {
    "fixed": optax.constant_schedule(eta0),
    "step decay": optax.exponential_decay(eta0, transition_steps=10, decay_rate=0.5, staircase=True),
    "exponential": optax.exponential_decay(eta0, transition_steps=1, decay_rate=math.exp(-0.05)),
    "inverse time": optax_lr.inverse_time_decay(eta0, decay_rate=0.1),
    "polynomial": optax.polynomial_schedule(eta0, 0.0, power=2.0, transition_steps=EPOCHS),
    "triangular CLR": optax_lr.cyclic_schedule(eta_min, eta0, step_size_up=5),
    "triangular2 CLR": optax_lr.cyclic_schedule(eta_min, eta0, step_size_up=5, mode="triangular2"),
    "cosine": optax.cosine_decay_schedule(eta0, decay_steps=EPOCHS, alpha=eta_min / eta0),
    "SGDR": optax_lr.sgdr_schedule(eta0, first_period=5, period_mult=2, min_value=eta_min),
}
steps_per_epoch = 10  # per_epoch: a schedule of the epoch, constant within each epoch
steps = jnp.arange(EPOCHS * steps_per_epoch)
fig, axes = plt.subplots(3, 3, figsize=(13, 8), sharex=True)
for ax, (name, schedule) in zip(axes.flat, schedules.items()):
    values = jax.vmap(optax_lr.per_epoch(schedule, steps_per_epoch))(steps)
    ax.plot(steps / steps_per_epoch, values)
    ax.set_title(name)
for ax in axes[-1]:
    ax.set_xlabel("epoch")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The range test
#
# `optax_lr.lr_range_test` sweeps the rate exponentially from `min_lr` to
# `max_lr` in one `lax.scan`, smooths the loss, stops once it diverges and
# suggests the rate where the smoothed loss falls fastest. The caller's params
# are untouched.

# %%
BATCH = 64
splits = optax_lr.datasets.digits(n_train=1500, n_valid=297, seed=0)
x_train, y_train = map(jnp.asarray, splits.train_batches(BATCH))
x_val, y_val = jnp.asarray(splits.x_valid), jnp.asarray(splits.y_valid)
model = MLP(hidden=256 if FULL else 64)
loss_fn = make_loss(model)
params0 = model.init(jax.random.PRNGKey(0), x_train[0])["params"]

found = optax_lr.lr_range_test(
    lambda p, batch: loss_fn(p, *batch), params0, (x_train, y_train),
    optimizer=lambda learning_rate: optax.sgd(learning_rate, momentum=0.9),
    min_lr=1e-5, max_lr=10.0, num_steps=200)
peak = float(found.suggestion)
print(f"suggested rate {peak:.3g}; diverged at step {int(found.diverged_at)}")

plt.figure(figsize=(6, 3.5))
plt.plot(found.lrs, found.losses, alpha=0.3, label="loss")
plt.plot(found.lrs, found.smoothed, label="smoothed")
plt.axvline(peak, color="k", ls="--", label=f"suggestion {peak:.3g}")
plt.xscale("log")
plt.ylim(0, 2 * float(found.smoothed[0]))
plt.xlabel("learning rate")
plt.legend()
plt.show()

# %% [markdown]
# ## Training with the suggested peak

# %%
EPOCHS = 30 if FULL else 10
steps_per_epoch = x_train.shape[0]
chosen = {
    "fixed": optax.constant_schedule(peak),
    "cosine": optax_lr.per_epoch(optax.cosine_decay_schedule(peak, EPOCHS, alpha=0.01), steps_per_epoch),
    "SGDR": optax_lr.per_epoch(optax_lr.sgdr_schedule(peak, first_period=2, period_mult=2), steps_per_epoch),
    "triangular CLR": optax_lr.cyclic_schedule(peak / 10, peak, step_size_up=2 * steps_per_epoch),
}


def train(schedule):
    tx = optax.sgd(schedule, momentum=0.9)

    def step(carry, batch):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    @jax.jit
    def run(params):
        batches = jax.tree_util.tree_map(lambda a: jnp.concatenate([a] * EPOCHS), (x_train, y_train))
        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
        return losses, loss_fn(params, x_val, y_val)

    losses, val_loss = run(params0)
    return np.asarray(losses), float(val_loss)


fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(13, 3.5))
t = np.arange(EPOCHS * steps_per_epoch)
for name, schedule in chosen.items():
    losses, val_loss = train(schedule)
    ax_lr.plot(t / steps_per_epoch, jax.vmap(schedule)(jnp.asarray(t)), label=name)
    smooth = np.convolve(losses, np.ones(steps_per_epoch) / steps_per_epoch, mode="valid")
    ax_loss.plot(t[steps_per_epoch - 1:] / steps_per_epoch, smooth, label=f"{name}: val {val_loss:.3f}")
ax_lr.set(xlabel="epoch", title="learning rate")
ax_loss.set(xlabel="epoch", yscale="log", title="training loss (running mean)")
ax_lr.legend()
ax_loss.legend()
plt.tight_layout()
plt.show()
