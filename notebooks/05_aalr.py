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
# # AALR: halve until stable, then double, with rollbacks
#
# Algorithm 1 of *A Simple Dynamic Learning Rate Tuning Algorithm for Automated Training of DNNs* (ICLR 2020 submission, [OpenReview](https://openreview.net/forum?id=rJxyqkSYDH)). Phase 1 halves η and restarts from the initial model whenever an epoch makes things worse, until `warmup_patience` good epochs in a row. Phase 2 doubles η after every improvement (saving a checkpoint), gives a non-improving rate a second chance, then halves it and doubles the patience; a diverged (NaN) loss reloads the last checkpoint. Rollbacks need `optax_lr.apply_updates`, which lands exactly on the checkpoint even from NaN params.

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
EPOCHS = 60 if FULL else 24
BATCH = 100
splits = optax_lr.datasets.digits(n_train=1500, n_valid=297, seed=0)
x_train, y_train = map(jnp.asarray, splits.train_batches(BATCH))
x_val, y_val = jnp.asarray(splits.x_valid), jnp.asarray(splits.y_valid)
model = MLP(hidden=256 if FULL else 64)
loss_fn = make_loss(model)
params0 = model.init(jax.random.PRNGKey(0), x_train[0])["params"]
# Too high a start for momentum SGD, to watch phase 1 halve it.
tx = optax_lr.aalr(3.2, warmup_patience=3, direction=optax.trace(0.9))
# This small MLP does not blow up to NaN (too high a rate only stalls it), so
# the cost of phase 2's first check from this epoch on is replaced by NaN, as
# if training had diverged there, to show the reload of the checkpoint.
# None disables it.
SIMULATE_DIVERGENCE_FROM = 14


def step(carry, batch):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, state = tx.update(grads, state, params)
    # Not optax.apply_updates: on a rollback call this lands on the checkpoint.
    params = optax_lr.apply_updates(params, updates, state)
    return (params, state), (loss, state.rolled_back)


@jax.jit
def epoch(params, state):
    (params, state), (losses, rolled_back) = jax.lax.scan(step, (params, state), (x_train, y_train))
    return params, state, losses, jnp.any(rolled_back), loss_fn(params, x_val, y_val)


end_epoch = jax.jit(optax_lr.observe)  # one epoch end with a cost

params, state = params0, tx.init(params0)
state = end_epoch(state, loss_fn(params, x_val, y_val))  # L* of the initial model
log = {"lr": [], "phase": [], "rolled_back": [], "val_loss": [], "best": []}
simulated = False
for t in range(1, EPOCHS + 1):
    log["lr"].append(float(optax_lr.current_lr(state)))  # the rate this epoch trains with
    log["phase"].append(int(state.phase))
    params, state, losses, rolled_back, val_loss = epoch(params, state)
    # Phase 2 reads the cost only at its checks, every `patience` epochs.
    is_check = int(state.phase) == 2 and int(state.epochs_to_check) == 1
    if SIMULATE_DIVERGENCE_FROM and t >= SIMULATE_DIVERGENCE_FROM and is_check and not simulated:
        val_loss, simulated = jnp.nan, True
    state = end_epoch(state, val_loss)
    log["rolled_back"].append(bool(rolled_back))
    log["val_loss"].append(float(val_loss))
    log["best"].append(float(state.best_cost))
log = {k: np.asarray(v) for k, v in log.items()}
print("η per epoch:", log["lr"])
print("epochs that started with a rollback:", np.flatnonzero(log["rolled_back"]) + 1)

# %%
t = np.arange(1, EPOCHS + 1)
fig, (ax, ax_val) = plt.subplots(1, 2, figsize=(13, 3.8))
phase2 = t[log["phase"] == 2]
if len(phase2):
    for a in (ax, ax_val):
        a.axvspan(phase2[0] - 0.5, t[-1] + 0.5, color="C2", alpha=0.1, label="phase 2")
ax.step(t, log["lr"], where="mid", label="η")
ax.plot(t[log["rolled_back"]], log["lr"][log["rolled_back"]], "rv", label="rollback")
ax.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="AALR's rate")
ax.legend()
finite = np.isfinite(log["val_loss"])
ax_val.plot(t[finite], log["val_loss"][finite], "o-", label="validation loss")
ax_val.plot(t, log["best"], "k--", label="best L*")
ax_val.plot(t[~finite], np.full((~finite).sum(), np.nanmax(log["val_loss"][finite])), "rx",
            label="NaN cost (simulated)")
ax_val.set(xlabel="epoch", yscale="log", title="validation loss")
ax_val.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A rollback lands exactly on the checkpoint
#
# A rollback update is `checkpoint - params`; from NaN params,
# `optax.apply_updates` stays NaN, while `optax_lr.apply_updates` returns the
# checkpoint itself.

# %%
diverged = optax_lr.observe(state, jnp.nan)  # the last epoch's loss was NaN
nan_params = jax.tree_util.tree_map(lambda p: jnp.full_like(p, jnp.nan), params)
grads = jax.grad(loss_fn)(params, x_train[0], y_train[0])
updates, after = tx.update(grads, diverged, nan_params)
exact = optax_lr.apply_updates(nan_params, updates, after)
naive = optax.apply_updates(nan_params, updates)
same = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), exact, diverged.checkpoint)
print("optax_lr.apply_updates lands on the checkpoint:", all(jax.tree_util.tree_leaves(same)))
print("optax.apply_updates has NaN params:",
      any(bool(jnp.isnan(p).any()) for p in jax.tree_util.tree_leaves(naive)))
print(f"η halved: {float(optax_lr.current_lr(state))} -> {float(optax_lr.current_lr(after))}")

# %% [markdown]
# Epoch ends here come from `optax_lr.observe(state, val_loss)`; with
# `steps_per_epoch=N`, AALR instead averages the `value` extra argument over
# windows of N steps. In Flax: `optax_lr.nnx_update` / `optax_lr.nnx_observe`
# for `nnx.Optimizer`, `optax_lr.apply_gradients` for linen's `TrainState`.
