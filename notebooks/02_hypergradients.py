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
# # Hypergradients: HD, RTHO and MARTHE
#
# All three learn the learning rate η by gradient descent on an objective E (here the validation loss, passed as `val_grads`). They keep a tangent Z ≈ ∂w/∂η and read the hypergradient h = ⟨Z, ∇E(w)⟩; they differ in how much of the past Z remembers, a discount μ: HD (μ = 0, Z = -u_prev), RTHO (μ = 1, the exact forward-mode derivative) and MARTHE (μ adapted online, and its hyper-learning rate β too). Donini et al., [arXiv:1910.10238](https://arxiv.org/abs/1910.10238).

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
EPOCHS = 30 if FULL else 6
BATCH = 100
splits = optax_lr.datasets.digits(n_train=1500, n_valid=297, seed=0)
x_train, y_train = map(jnp.asarray, splits.train_batches(BATCH))
x_val, y_val = jnp.asarray(splits.x_valid), jnp.asarray(splits.y_valid)
model = MLP(hidden=256 if FULL else 64)
loss_fn = make_loss(model)
params0 = model.init(jax.random.PRNGKey(0), x_train[0])["params"]


# %% [markdown]
# ## Exactness first
#
# With μ = 1 and β = 0 the tangent is exactly dw_t/dη of training with a
# constant rate. Check it against `jax.jvp` through the unrolled SGD loop on
# one batch.

# %%
def unrolled(eta, steps=5):
    p = params0
    for _ in range(steps):
        p = jax.tree_util.tree_map(lambda w, g: w - eta * g, p,
                                   jax.grad(loss_fn)(p, x_train[0], y_train[0]))
    return p

_, want = jax.jvp(unrolled, (jnp.float32(0.1),), (jnp.float32(1.0),))
tx = optax_lr.rtho(0.1, hyper_lr=0.0)
p, state = params0, tx.init(params0)
for _ in range(5):
    g = jax.grad(loss_fn)(p, x_train[0], y_train[0])
    u, state = tx.update(g, state, p, loss_fn=lambda q: loss_fn(q, x_train[0], y_train[0]))
    p = optax.apply_updates(p, u)
err = optax.tree.norm(optax.tree.sub(state.tangent, want)) / optax.tree.norm(want)
print(f"relative error of RTHO's tangent against jax.jvp: {float(err):.1e}")


# %% [markdown]
# ## Training
#
# A `lax.scan` over each epoch's batches, recording from the state at every
# step: the rate η, the tangent's norm ‖Z‖ (HD's tangent is -u_prev), μ, β and
# the hypergradient h.

# %%
def record(state):
    tangent = state.u_prev if state.tangent is None else state.tangent
    return {"lr": state.learning_rate, "mu": state.mu, "beta": state.hyper_lr,
            "h": state.hypergradient, "tangent_norm": optax.tree.norm(tangent)}


def train(tx, needs_loss_fn):
    def step(carry, batch):
        params, state = carry
        x, y = batch
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        extra = {"val_grads": jax.grad(loss_fn)(params, x_val, y_val)}
        if needs_loss_fn:
            extra["loss_fn"] = lambda p: loss_fn(p, x, y)
        updates, state = tx.update(grads, state, params, value=loss, **extra)
        params = optax_lr.apply_updates(params, updates, state)
        return (params, state), {"loss": loss, **record(state)}

    @jax.jit
    def epoch(params, state):
        (params, state), logs = jax.lax.scan(step, (params, state), (x_train, y_train))
        return params, state, logs, loss_fn(params, x_val, y_val)

    params, state, logs, val = params0, tx.init(params0), [], []
    for _ in range(EPOCHS):
        params, state, epoch_logs, val_loss = epoch(params, state)
        logs.append(epoch_logs)
        val.append(float(val_loss))
    logs = {k: np.concatenate([np.asarray(l[k]) for l in logs]) for k in logs[0]}
    return logs, val


momentum = optax.trace(0.9)
runs = {
    # The defaults: no hyper-learning rate to tune.
    "HD (μ = 0)": train(optax_lr.hypergradient_descent(0.01, direction=momentum), False),
    "RTHO (μ = 1)": train(optax_lr.rtho(0.01, direction=momentum), True),
    "MARTHE (μ, β adapted)": train(optax_lr.marthe(0.01, direction=momentum), True),
}
for name, (logs, val) in runs.items():
    print(f"{name:24s} final η {logs['lr'][-1]:.4f}  validation loss {val[-1]:.4f}")

# %%
fig, axes = plt.subplots(2, 3, figsize=(14, 6.5))
steps_per_epoch = x_train.shape[0]
for name, (logs, val) in runs.items():
    axes[0, 0].plot(logs["lr"], label=name)
    axes[0, 1].plot(logs["tangent_norm"], label=name)
    axes[0, 2].plot(logs["h"], label=name, alpha=0.7)
    axes[1, 2].plot(np.arange(1, EPOCHS + 1) * steps_per_epoch, val, "o-", label=name)
marthe_logs = runs["MARTHE (μ, β adapted)"][0]
axes[1, 0].plot(marthe_logs["mu"], color="C2")
axes[1, 1].plot(marthe_logs["beta"], color="C2")
axes[0, 0].set(title="learning rate η", xlabel="step")
axes[0, 1].set(title="tangent norm ‖Z‖", xlabel="step", yscale="log")
axes[0, 2].set_yscale("symlog", linthresh=1e-2)
axes[0, 2].set(title="hypergradient h: the cosine (MARTHE: standardised)", xlabel="step")
axes[1, 0].set(title="MARTHE's μ (adapted)", xlabel="step", ylim=(-0.05, 1.05))
axes[1, 1].set(title="MARTHE's β (adapted)", xlabel="step")
axes[1, 2].set(title="validation loss", xlabel="step", yscale="log")
axes[0, 0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# HD's tangent is one step long, so its hypergradient is myopic; RTHO's tangent
# accumulates the whole trajectory (its norm grows); MARTHE discounts the past
# with μ and grows β while consecutive hypergradients agree. With their
# defaults all three read the hypergradient normalised by the norms it
# multiplies (a cosine, ⟨Z, ∇E⟩ / (‖Z‖ ‖∇E‖)), so no hyper-learning rate
# depends on the loss's scale. MARTHE also divides that cosine by its running
# root mean square (a long tangent's cosine is tiny, and β would not move),
# and selects its κ itself (divided by 10 at each divergence).
