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
# # optax_lr quickstart: a learning rate that tunes itself, in a Flax training loop
#
# Pick one of optax_lr's methods, train a Flax `nnx` MLP on scikit-learn's 8x8 digits, and plot the learning rate the method chose next to the loss. Every method is an optax transformation: its whole state (the rate included) lives in the optimizer state, so the jit-compiled step never recompiles when the rate changes.

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
from flax import nnx

import optax_lr

EPOCHS = 40 if FULL else 8
HIDDEN = 512 if FULL else 64
BATCH = 100

# %% [markdown]
# ## Pick a method
#
# | method | what it adapts | extra args of `update` |
# |---|---|---|
# | `hypergradient_descent` | η by the inner product of consecutive steps | `value`; `val_grads` (optional) |
# | `rtho` | η by the exact tangent dw/dη (one Hessian-vector product a step) | `loss_fn`; `value`, `val_grads` (optional) |
# | `marthe` | η with a discounted tangent, μ and β adapted online | `loss_fn`; `value`, `val_grads` (optional) |
# | `newton_lr` | η by a Newton step on windows of directions | `value` |
# | `aslr` | a per-layer random band around a centre searched digit by digit | a cost per epoch (`observe`) |
# | `aalr` | η halved until stable, then doubled optimistically, with rollbacks | a cost per epoch (`observe`) |

# %%
METHOD = "marthe"  # any key below

momentum = optax.trace(0.9)
METHODS = {
    "hypergradient_descent": lambda: optax_lr.hypergradient_descent(
        0.01, direction=momentum),
    "rtho": lambda: optax_lr.rtho(0.01, direction=momentum),
    "marthe": lambda: optax_lr.marthe(0.01, direction=momentum),
    "newton_lr": lambda: optax_lr.newton_lr(0.01, steps_per_epoch=steps_per_epoch),
    "aslr": lambda: optax_lr.aslr(0.05, direction=momentum),
    "aalr": lambda: optax_lr.aalr(0.05, warmup_patience=2, direction=momentum),
}

# %% [markdown]
# ## Data and model

# %%
splits = optax_lr.datasets.digits(n_train=1500, n_valid=297, seed=0)
x_train, y_train = map(jnp.asarray, splits.train_batches(BATCH))
x_val, y_val = jnp.asarray(splits.x_valid), jnp.asarray(splits.y_valid)
steps_per_epoch = len(x_train)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def cross_entropy(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


model = MLP(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, METHODS[METHOD](), wrt=nnx.Param)


# %% [markdown]
# ## The train step
#
# `nnx.Optimizer.update(model, grads, **kwargs)` forwards keyword arguments to
# the transformation; `optax_lr.nnx_update` is the same call with
# `optax_lr.apply_updates`, which AALR needs to land exactly on its checkpoint
# when it rolls back. `value` (the batch's training loss) is what the safety
# net reads to catch a rate that wrecks the model without a NaN; HD and
# `newton_lr` warn without it, RTHO and MARTHE read it from `loss_fn`.
# RTHO and MARTHE need `loss_fn`, a function of the
# *params* that the transformation receives: rebuild the model from them with
# `nnx.split`/`nnx.merge`. `val_grads` makes the validation loss the
# hypergradient's objective. Methods ignore the extra args they do not use.

# %%
@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(cross_entropy)(model, x, y)
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    optax_lr.nnx_update(
        optimizer, model, grads,
        value=loss,
        loss_fn=lambda params: cross_entropy(nnx.merge(graphdef, params, rest), x, y),
        val_grads=nnx.grad(cross_entropy)(model, x_val, y_val),
    )
    # Log the rate as an array: optax_lr.current_lr(optimizer.opt_state) alone
    # is the optimizer's own nnx.Variable, which later steps update in place.
    return loss, optax_lr.current_lr(nnx.as_pure(optimizer.opt_state))


@nnx.jit
def evaluate(model, optimizer, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    optax_lr.nnx_observe(optimizer, loss)  # ASLR/AALR's epoch end; a no-op for the others
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


# %%
lrs, losses, val_losses, val_accs = [], [], [], []
evaluate(model, optimizer, x_val, y_val)  # the initial model's loss: AALR's first L*
for epoch in range(EPOCHS):
    for i in range(steps_per_epoch):
        loss, lr = train_step(model, optimizer, x_train[i], y_train[i])
        losses.append(float(loss))
        lrs.append(float(lr))
    val_loss, val_acc = evaluate(model, optimizer, x_val, y_val)
    val_losses.append(float(val_loss))
    val_accs.append(float(val_acc))
print(f"{METHOD}: final lr {lrs[-1]:.4g}, val loss {val_losses[-1]:.4f}, "
      f"val accuracy {val_accs[-1]:.3f}")

# %%
steps = np.arange(1, len(lrs) + 1)
epochs = np.arange(1, EPOCHS + 1) * steps_per_epoch
fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.5))
ax_lr.plot(steps, lrs)
ax_lr.set(xlabel="step", ylabel="learning rate", title=f"{METHOD}: the rate it chose")
ax_loss.plot(steps, losses, alpha=0.5, label="train (batch)")
ax_loss.plot(epochs, val_losses, "o-", label="validation")
ax_loss.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
ax_loss.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Next
#
# * linen's `TrainState`: `optax_lr.apply_gradients(state, grads, value=..., loss_fn=..., val_grads=...)`
#   (see `examples/linen_train_state.py`);
# * one notebook per family: `02_hypergradients`, `03_newton_lr`, `04_aslr`,
#   `05_aalr`, and `06_schedules` for the survey's schedules and the range test.
