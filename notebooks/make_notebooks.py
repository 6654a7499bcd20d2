"""Writes the notebooks in this folder from the cell sources below.

    python notebooks/make_notebooks.py

The ``.ipynb`` files are generated, with no outputs, so that git holds code
only; edit the cells here and regenerate. ``tests/test_notebooks.py`` checks
that the files match this script and executes every notebook on small
settings.
"""

from __future__ import annotations

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent

INSTALL = '''\
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
    sys.path.insert(0, str(root))  # this kernel predates the editable install'''

SETTINGS = '''\
# Small settings run on a CPU in well under a minute. On a GPU/TPU runtime set
# FULL = True (or OPTAX_LR_FULL=1 in the environment) for the full-size runs.
import os

FULL = os.environ.get("OPTAX_LR_FULL", "0") == "1"'''

DATA = '''\
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn
from sklearn.datasets import load_digits

import optax_lr


def digits(batch_size, seed=0):
    """Shuffled 8x8 digits: train batches [steps, batch, 64], a validation split."""
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_val, y_val = x[297:], y[297:], x[:297], y[:297]
    steps = len(x_train) // batch_size
    x_train = x_train[: steps * batch_size].reshape(steps, batch_size, 64)
    y_train = y_train[: steps * batch_size].reshape(steps, batch_size)
    return tuple(map(jnp.asarray, (x_train, y_train, x_val, y_val)))


class MLP(nn.Module):
    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x)))


def make_loss(model):
    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss_fn'''


def md(text):
  return ("markdown", text)


def code(text):
  return ("code", text)


def header(title, intro):
  return [md(f"# {title}\n\n{intro}"), code(INSTALL), code(SETTINGS)]


# --------------------------------------------------------------------------
# 01: quickstart (Flax nnx)

QUICKSTART = header(
    "optax_lr quickstart: a learning rate that tunes itself, in a Flax training loop",
    "Pick one of optax_lr's methods, train a Flax `nnx` MLP on scikit-learn's "
    "8x8 digits, and plot the learning rate the method chose next to the loss. "
    "Every method is an optax transformation: its whole state (the rate "
    "included) lives in the optimizer state, so the jit-compiled step never "
    "recompiles when the rate changes.",
) + [
    code('''\
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import optax_lr

EPOCHS = 40 if FULL else 8
HIDDEN = 512 if FULL else 64
BATCH = 100'''),
    md('''\
## Pick a method

| method | what it adapts | extra args of `update` |
|---|---|---|
| `hypergradient_descent` | η by the inner product of consecutive steps | `val_grads` (optional) |
| `rtho` | η by the exact tangent dw/dη (one Hessian-vector product a step) | `loss_fn`, `val_grads` (optional) |
| `marthe` | η with a discounted tangent, μ and β adapted online | `loss_fn`, `val_grads` (optional) |
| `newton_lr` | η by a Newton step on windows of directions | none |
| `aslr` | a per-layer random band around a centre searched digit by digit | a cost per epoch (`observe`) |
| `aalr` | η halved until stable, then doubled optimistically, with rollbacks | a cost per epoch (`observe`) |'''),
    code('''\
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
}'''),
    md("## Data and model"),
    code('''\
data = load_digits()
x = (data.data / 16.0).astype(np.float32)
y = data.target.astype(np.int32)
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
x_val, y_val = jnp.asarray(x[:297]), jnp.asarray(y[:297])
steps_per_epoch = (len(x) - 297) // BATCH
x_train = jnp.asarray(x[297:297 + steps_per_epoch * BATCH].reshape(steps_per_epoch, BATCH, 64))
y_train = jnp.asarray(y[297:297 + steps_per_epoch * BATCH].reshape(steps_per_epoch, BATCH))


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def cross_entropy(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


model = MLP(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, METHODS[METHOD](), wrt=nnx.Param)'''),
    md('''\
## The train step

`nnx.Optimizer.update(model, grads, **kwargs)` forwards keyword arguments to
the transformation; `optax_lr.nnx_update` is the same call with
`optax_lr.apply_updates`, which AALR needs to land exactly on its checkpoint
when it rolls back. RTHO and MARTHE need `loss_fn`, a function of the
*params* that the transformation receives: rebuild the model from them with
`nnx.split`/`nnx.merge`. `val_grads` makes the validation loss the
hypergradient's objective. Methods ignore the extra args they do not use.'''),
    code('''\
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
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)'''),
    code('''\
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
      f"val accuracy {val_accs[-1]:.3f}")'''),
    code('''\
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
plt.show()'''),
    md('''\
## Next

* linen's `TrainState`: `optax_lr.apply_gradients(state, grads, value=..., loss_fn=..., val_grads=...)`
  (see `examples/linen_train_state.py`);
* one notebook per family: `02_hypergradients`, `03_newton_lr`, `04_aslr`,
  `05_aalr`, and `06_schedules` for the survey's schedules and the range test.'''),
]

# --------------------------------------------------------------------------
# 02: hypergradients

HYPERGRADIENTS = header(
    "Hypergradients: HD, RTHO and MARTHE",
    "All three learn the learning rate η by gradient descent on an objective E "
    "(here the validation loss, passed as `val_grads`). They keep a tangent "
    "Z ≈ ∂w/∂η and read the hypergradient h = ⟨Z, ∇E(w)⟩; they differ in how "
    "much of the past Z remembers, a discount μ: HD (μ = 0, Z = -u_prev), RTHO "
    "(μ = 1, the exact forward-mode derivative) and MARTHE (μ adapted online, "
    "and its hyper-learning rate β too). Donini et al., "
    "[arXiv:1910.10238](https://arxiv.org/abs/1910.10238).",
) + [
    code(DATA),
    code('''\
EPOCHS = 30 if FULL else 6
BATCH = 100
x_train, y_train, x_val, y_val = digits(BATCH)
model = MLP(hidden=256 if FULL else 64)
loss_fn = make_loss(model)
params0 = model.init(jax.random.PRNGKey(0), x_train[0])["params"]'''),
    md('''\
## Exactness first

With μ = 1 and β = 0 the tangent is exactly dw_t/dη of training with a
constant rate. Check it against `jax.jvp` through the unrolled SGD loop on
one batch.'''),
    code('''\
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
print(f"relative error of RTHO's tangent against jax.jvp: {float(err):.1e}")'''),
    md('''\
## Training

A `lax.scan` over each epoch's batches, recording from the state at every
step: the rate η, the tangent's norm ‖Z‖ (HD's tangent is -u_prev), μ, β and
the hypergradient h.'''),
    code('''\
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
    print(f"{name:24s} final η {logs['lr'][-1]:.4f}  validation loss {val[-1]:.4f}")'''),
    code('''\
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
axes[0, 2].set(title="normalised hypergradient ⟨Z, ∇E⟩ / (‖Z‖ ‖∇E‖)", xlabel="step")
axes[1, 0].set(title="MARTHE's μ (adapted)", xlabel="step", ylim=(-0.05, 1.05))
axes[1, 1].set(title="MARTHE's β (adapted)", xlabel="step")
axes[1, 2].set(title="validation loss", xlabel="step", yscale="log")
axes[0, 0].legend()
plt.tight_layout()
plt.show()'''),
    md('''\
HD's tangent is one step long, so its hypergradient is myopic; RTHO's tangent
accumulates the whole trajectory (its norm grows); MARTHE discounts the past
with μ and grows β while consecutive hypergradients agree. With their
defaults all three read the hypergradient normalised by the norms it
multiplies (a cosine), so no hyper-learning rate depends on the loss's scale,
and MARTHE selects its κ itself (divided by 10 at each divergence).'''),
]

# --------------------------------------------------------------------------
# 03: newton_lr

NEWTON = header(
    "newton_lr: warm-up, then decay, found by Newton steps on the rate",
    "Retsinas et al. (*Newton-based Trainable Learning Rate*, ICASSP 2023) take "
    "damped Newton steps on η using only first-order quantities: every K steps "
    "(a fraction p of an epoch) the sums of two consecutive windows of "
    "directions U_prev, U_new give r = ⟨U_prev, U_new⟩ and "
    "d = ‖U_prev‖² - r, and η ← η·(1 + γ r / d). Their Figure 1: from a small "
    "rate, plain SGD on an MLP warms up, then decays, like a hand-made "
    "schedule. Here on digits.",
) + [
    code(DATA),
    code('''\
EPOCHS = 20
BATCH = 64
x_train, y_train, x_val, y_val = digits(BATCH)
steps_per_epoch = x_train.shape[0]
model = MLP(hidden=1000 if FULL else 128)  # the paper's MNIST MLP has 1000 units
loss_fn = make_loss(model)
params0 = model.init(jax.random.PRNGKey(0), x_train[0])["params"]


def train(tx):
    """All epochs in one lax.scan; returns the rate and the loss per step."""
    def step(carry, batch):
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), (optax_lr.current_lr(state), loss)

    batches = jax.tree_util.tree_map(lambda a: jnp.concatenate([a] * EPOCHS), (x_train, y_train))
    run = jax.jit(lambda c: jax.lax.scan(step, c, batches))
    _, (lrs, losses) = run((params0, tx.init(params0)))
    return np.asarray(lrs), np.asarray(losses)'''),
    code('''\
LR0 = 0.01  # plain SGD, the paper's setting
by_p = {p: train(optax_lr.newton_lr(LR0, steps_per_epoch=steps_per_epoch, fraction=p, gamma=0.2))
        for p in (0.1, 0.2, 0.33, 0.5)}
by_gamma = {g: train(optax_lr.newton_lr(LR0, steps_per_epoch=steps_per_epoch, fraction=0.33, gamma=g))
            for g in (0.1, 0.2, 0.5)}'''),
    code('''\
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
          f"final η {lrs[-1]:.3g}, final loss {losses[-steps_per_epoch:].mean():.4f}")'''),
    md('''\
Smaller p (more frequent updates) warms up sooner and decays sooner; larger γ
adapts faster in both directions. `newton_lr` also takes `update_every=K`
directly, `per_leaf=True` for one rate per layer, and any `direction`. Over
momentum or Adam directions the window sums of consecutive directions stay
correlated and on this problem the rate kept growing: prefer plain SGD, the
paper's setting, or check the rate's plot.'''),
]

# --------------------------------------------------------------------------
# 04: aslr

ASLR = header(
    "ASLR: random per-layer bands and a digit-by-digit search",
    "Khodamoradi et al. (*ASLR: An Adaptive Scheduler for Learning Rate*) keep a "
    "centre c = d·10^e and draw every layer's rate, at every step, from the band "
    "U((d - ½)10^e, (d + ½)10^e). Once per epoch a monitored cost (the "
    "validation loss) is compared with the best so far; while it does not "
    "improve, the centre walks a zig-zag of growing radius around its last "
    "good value, one unit of its leading digit at a time.",
) + [
    code(DATA),
    md('''\
## The search alone

Feed costs that never beat the first one: the centre zig-zags with a growing
radius. (`optax_lr.observe` applies one epoch end; it is a pure function.)'''),
    code('''\
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
plt.show()'''),
    md('''\
## Training on digits

The validation loss drives the search through `optax_lr.observe` at every
epoch end (inside the same jit as the epoch). `state.leaf_rates` holds the
rates drawn for each layer at the last step.'''),
    code('''\
EPOCHS = 40 if FULL else 12
BATCH = 100
x_train, y_train, x_val, y_val = digits(BATCH)
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
print("centres:", np.round(centres, 4))'''),
    code('''\
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
plt.show()'''),
    md('''\
The paper recommends the learning-rate range test for the initial centre:
`optax_lr.lr_range_test` (see `06_schedules`). With `steps_per_epoch=N`, ASLR
instead averages the `value` extra argument (the training loss) over windows
of N steps.'''),
]

# --------------------------------------------------------------------------
# 05: aalr

AALR = header(
    "AALR: halve until stable, then double, with rollbacks",
    "Algorithm 1 of *A Simple Dynamic Learning Rate Tuning Algorithm for "
    "Automated Training of DNNs* (ICLR 2020 submission, "
    "[OpenReview](https://openreview.net/forum?id=rJxyqkSYDH)). Phase 1 halves "
    "η and restarts from the initial model whenever an epoch makes things "
    "worse, until `warmup_patience` good epochs in a row. Phase 2 doubles η "
    "after every improvement (saving a checkpoint), gives a non-improving rate "
    "a second chance, then halves it and doubles the patience; a diverged "
    "(NaN) loss reloads the last checkpoint. Rollbacks need "
    "`optax_lr.apply_updates`, which lands exactly on the checkpoint even from "
    "NaN params.",
) + [
    code(DATA),
    code('''\
EPOCHS = 60 if FULL else 24
BATCH = 100
x_train, y_train, x_val, y_val = digits(BATCH)
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
print("epochs that started with a rollback:", np.flatnonzero(log["rolled_back"]) + 1)'''),
    code('''\
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
plt.show()'''),
    md('''\
## A rollback lands exactly on the checkpoint

A rollback update is `checkpoint - params`; from NaN params,
`optax.apply_updates` stays NaN, while `optax_lr.apply_updates` returns the
checkpoint itself.'''),
    code('''\
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
print(f"η halved: {float(optax_lr.current_lr(state))} -> {float(optax_lr.current_lr(after))}")'''),
    md('''\
Epoch ends here come from `optax_lr.observe(state, val_loss)`; with
`steps_per_epoch=N`, AALR instead averages the `value` extra argument over
windows of N steps. In Flax: `optax_lr.nnx_update` / `optax_lr.nnx_observe`
for `nnx.Optimizer`, `optax_lr.apply_gradients` for linen's `TrainState`.'''),
]

# --------------------------------------------------------------------------
# 06: schedules and the range test

SCHEDULES = header(
    "The survey's schedules, and the range test choosing the initial rate",
    "Every schedule of the learning-rate schedule survey, as an optax schedule "
    "of the step count (optax's own where it has one; `optax_lr` adds "
    "`inverse_time_decay`, `cyclic_schedule`, `sgdr_schedule` and `per_epoch`), "
    "then the learning-rate range test (Smith, "
    "[arXiv:1506.01186](https://arxiv.org/abs/1506.01186)) picking the peak "
    "rate for a few of them on digits.",
) + [
    code(DATA),
    code('''\
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
plt.show()'''),
    md('''\
## The range test

`optax_lr.lr_range_test` sweeps the rate exponentially from `min_lr` to
`max_lr` in one `lax.scan`, smooths the loss, stops once it diverges and
suggests the rate where the smoothed loss falls fastest. The caller's params
are untouched.'''),
    code('''\
BATCH = 64
x_train, y_train, x_val, y_val = digits(BATCH)
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
plt.show()'''),
    md("## Training with the suggested peak"),
    code('''\
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
plt.show()'''),
]

NOTEBOOKS = {
    "01_quickstart": QUICKSTART,
    "02_hypergradients": HYPERGRADIENTS,
    "03_newton_lr": NEWTON,
    "04_aslr": ASLR,
    "05_aalr": AALR,
    "06_schedules": SCHEDULES,
}


def notebook_json(name: str, cells) -> dict:
  """An nbformat 4.5 notebook with no outputs and stable cell ids."""
  out = []
  for i, (kind, source) in enumerate(cells):
    cell = {"cell_type": kind, "id": f"{name}-{i:02d}", "metadata": {},
            "source": source.splitlines(keepends=True)}
    if kind == "code":
      cell.update(execution_count=None, outputs=[])
    out.append(cell)
  return {
      "cells": out,
      "metadata": {
          "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
          "language_info": {"name": "python"},
          "colab": {"provenance": []},
      },
      "nbformat": 4,
      "nbformat_minor": 5,
  }


def render(name: str) -> str:
  return json.dumps(notebook_json(name, NOTEBOOKS[name]), indent=1, ensure_ascii=False) + "\n"


def main():
  for name in NOTEBOOKS:
    path = HERE / f"{name}.ipynb"
    path.write_text(render(name), encoding="utf-8")
    print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
  main()
