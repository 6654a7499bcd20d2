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
# # ASLR: random per-layer bands and a digit-by-digit search
#
# Khodamoradi et al. (*ASLR: An Adaptive Scheduler for Learning Rate*) keep a centre c = d·10^e and draw every layer's rate, at every step, from the band U((d - ½)10^e, (d + ½)10^e). Once per epoch a monitored cost (the validation loss) is compared with the best so far; while it does not improve, the centre walks a zig-zag of growing radius around its last good value, one unit of its leading digit at a time.

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


# %% [markdown]
# ## The search alone
#
# Feed costs that never beat the first one: the centre zig-zags with a growing
# radius. (`optax_lr.observe` applies one epoch end; it is a pure function.)

# %%
tx = optax_lr.aslr(0.1)
state = tx.init({"w": jnp.zeros(3)})
state = optax_lr.observe(state, 1.0)  # the first cost is the best
centres = []
for _ in range(14):
    state = optax_lr.observe(state, 2.0)  # every later epoch is worse
    centres.append(float(optax_lr.current_lr(state)))
print(np.round(centres, 4))

def band(c):  # (d ± ½)·10^e around a centre c = d·10^e
    unit = 10.0 ** np.floor(np.log10(c) + 1e-9)
    return c - unit / 2, c + unit / 2

lo, hi = np.transpose([band(c) for c in centres])
t = np.arange(1, len(centres) + 1)
plt.figure(figsize=(7, 3))
plt.fill_between(t, lo, hi, step="mid", alpha=0.3, label="band")
plt.step(t, centres, where="mid", label="centre")
plt.yscale("log")
plt.xlabel("epoch")
plt.legend()
plt.title("ASLR's search when no epoch improves")
plt.show()

# %% [markdown]
# ## Training on digits
#
# The validation loss drives the search through `optax_lr.observe` at every
# epoch end (inside the same jit as the epoch). `state.leaf_rates` holds the
# rates drawn for each layer at the last step.

# %%
EPOCHS = 40 if FULL else 12
BATCH = 100
splits = optax_lr.datasets.digits(n_train=1500, n_valid=297, seed=0)
x_train, y_train = map(jnp.asarray, splits.train_batches(BATCH))
x_val, y_val = jnp.asarray(splits.x_valid), jnp.asarray(splits.y_valid)
model = MLP(hidden=256 if FULL else 64)
loss_fn = make_loss(model)
params0 = model.init(jax.random.PRNGKey(0), x_train[0])["params"]
tx = optax_lr.aslr(0.5, seed=0, direction=optax.trace(0.9))  # a deliberately high start


def step(carry, batch):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), (loss, jax.tree_util.tree_leaves(state.leaf_rates))


@jax.jit
def epoch(params, state):
    (params, state), (losses, rates) = jax.lax.scan(step, (params, state), (x_train, y_train))
    val_loss = loss_fn(params, x_val, y_val)
    return params, optax_lr.observe(state, val_loss), losses, rates, val_loss


params, state = params0, tx.init(params0)
state = optax_lr.observe(state, loss_fn(params, x_val, y_val))  # the initial model's cost
leaf_names = [jax.tree_util.keystr(path) for path, _ in
              jax.tree_util.tree_flatten_with_path(state.leaf_rates)[0]]
centres, val_losses, drawn = [], [], []
for _ in range(EPOCHS):
    centres.append(float(optax_lr.current_lr(state)))  # the centre this epoch trains with
    params, state, losses, rates, val_loss = epoch(params, state)
    val_losses.append(float(val_loss))
    drawn.append(np.stack([np.asarray(r) for r in rates], -1))  # [steps, layers]
print("centres:", np.round(centres, 4))

# %%
steps_per_epoch = x_train.shape[0]
drawn = np.concatenate(drawn)
step_axis = np.arange(len(drawn)) / steps_per_epoch
lo, hi = np.transpose([band(c) for c in centres])
t = np.arange(EPOCHS)
fig, (ax, ax_val) = plt.subplots(1, 2, figsize=(13, 3.8))
ax.fill_between(np.append(t, EPOCHS), np.append(lo, lo[-1]), np.append(hi, hi[-1]),
                step="post", alpha=0.25, label="band")
ax.step(np.append(t, EPOCHS), np.append(centres, centres[-1]), where="post", label="centre")
for layer, name in enumerate(leaf_names):
    ax.plot(step_axis, drawn[:, layer], ".", ms=2, alpha=0.4, label=f"draws {name}")
ax.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="ASLR's rates")
ax.legend(fontsize=7)
ax_val.plot(np.arange(1, EPOCHS + 1), val_losses, "o-")
ax_val.set(xlabel="epoch", title="validation loss", yscale="log")
plt.tight_layout()
plt.show()

# %% [markdown]
# The paper recommends the learning-rate range test for the initial centre:
# `optax_lr.lr_range_test` (see `06_schedules`). With `steps_per_epoch=N`, ASLR
# instead averages the `value` extra argument (the training loss) over windows
# of N steps.
