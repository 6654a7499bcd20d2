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
# # newton_lr: warm-up, then decay, found by Newton steps on the rate
#
# Retsinas et al. (*Newton-based Trainable Learning Rate*, ICASSP 2023) take damped Newton steps on η using only first-order quantities: every K steps (a fraction p of an epoch) the sums of two consecutive windows of directions U_prev, U_new give r = ⟨U_prev, U_new⟩ and d = ‖U_prev‖² - r, and η ← η·(1 + γ r / d). Their Figure 1: from a small rate, plain SGD on an MLP warms up, then decays, like a hand-made schedule. Here on digits.

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
EPOCHS = 20
BATCH = 64
splits = optax_lr.datasets.digits(n_train=1500, n_valid=297, seed=0)
x_train, y_train = map(jnp.asarray, splits.train_batches(BATCH))
x_val, y_val = jnp.asarray(splits.x_valid), jnp.asarray(splits.y_valid)
steps_per_epoch = x_train.shape[0]
model = MLP(hidden=1000 if FULL else 128)  # the paper's MNIST MLP has 1000 units
loss_fn = make_loss(model)
params0 = model.init(jax.random.PRNGKey(0), x_train[0])["params"]


def train(tx):
    """All epochs in one lax.scan; returns the rate and the loss per step."""
    def step(carry, batch):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        # value=loss feeds the safety net's loss tests (without it the update
        # warns that the net sees non-finite numbers only); apply_updates
        # lands exactly on the checkpoint when the net rolls back.
        updates, state = tx.update(grads, state, params, value=loss)
        return (optax_lr.apply_updates(params, updates, state), state), (optax_lr.current_lr(state), loss)

    batches = jax.tree_util.tree_map(lambda a: jnp.concatenate([a] * EPOCHS), (x_train, y_train))
    run = jax.jit(lambda c: jax.lax.scan(step, c, batches))
    _, (lrs, losses) = run((params0, tx.init(params0)))
    return np.asarray(lrs), np.asarray(losses)


# %%
LR0 = 0.01  # plain SGD, the paper's setting
by_p = {p: train(optax_lr.newton_lr(LR0, steps_per_epoch=steps_per_epoch, fraction=p, gamma=0.2))
        for p in (0.1, 0.2, 0.33, 0.5)}
by_gamma = {g: train(optax_lr.newton_lr(LR0, steps_per_epoch=steps_per_epoch, fraction=0.33, gamma=g))
            for g in (0.1, 0.2, 0.5)}

# %%
epoch_axis = np.arange(EPOCHS * steps_per_epoch) / steps_per_epoch
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for p, (lrs, _) in by_p.items():
    axes[0].plot(epoch_axis, lrs, label=f"p = {p}")
for g, (lrs, _) in by_gamma.items():
    axes[1].plot(epoch_axis, lrs, label=f"γ = {g}")
for p, (_, losses) in by_p.items():
    smooth = np.convolve(losses, np.ones(steps_per_epoch) / steps_per_epoch, mode="valid")
    axes[2].plot(epoch_axis[steps_per_epoch - 1:], smooth, label=f"p = {p}")
axes[0].set(title="learning rate, γ = 0.2", xlabel="epoch", yscale="log")
axes[1].set(title="learning rate, p = 0.33", xlabel="epoch", yscale="log")
axes[2].set(title="training loss (running mean), γ = 0.2", xlabel="epoch", yscale="log")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()
for p, (lrs, losses) in by_p.items():
    peak = int(np.argmax(lrs))
    print(f"p = {p}: peak η {lrs[peak]:.3g} at epoch {peak / steps_per_epoch:.1f}, "
          f"final η {lrs[-1]:.3g}, final loss {losses[-steps_per_epoch:].mean():.4f}")

# %% [markdown]
# Smaller p (more frequent updates) warms up sooner and decays sooner; larger γ
# adapts faster in both directions. `newton_lr` also takes `update_every=K`
# directly, `per_leaf=True` for one rate per layer, and any `direction`. Over
# momentum or Adam directions the window sums of consecutive directions stay
# correlated and on this problem the rate kept growing: prefer plain SGD, the
# paper's setting, or check the rate's plot.
