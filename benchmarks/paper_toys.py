"""The MARTHE paper's Figure 1: HD vs RTHO vs MARTHE on Beale and smoothed Bukin N.6.

Donini et al. (Section 3) run 500 steps of gradient descent with E = L from a
fixed point on two 2-D functions and report the best objective value reached
for each hyper-learning rate β that does not diverge:

* Beale, ``(1.5 - x + xy)² + (2.25 - x + xy²)² + (2.625 - x + xy³)²``: sharp
  peaks and large plateaus, where RTHO (the whole-trajectory tangent) beats
  HD (the last step only);
* a simplified, smoothed Bukin N.6, ``sqrt(sqrt((y - 0.01x)² + ε) + ε)``, a
  valley of minimisers ``y = 0.01x``: once the trajectory reaches it, RTHO's
  rate first grows then collapses to 0, while HD damps it.

MARTHE here is the adaptive discount μ with the same fixed β
(``marthe(η0, hyper_lr=β, hyper_lr_step=0)``), so the three share the β axis.
The paper gives neither the starting points nor η0 nor ε: they are the
``FUNCTIONS`` entries below. Plain gradient descent at η0 is the reference.

Usage::

    python -m benchmarks.paper_toys            # 7 values of β, 500 steps
    python -m benchmarks.paper_toys --quick    # 3 values of β, 50 steps

Writes ``results/paper_toys.json`` and ``results/paper_toys.png`` (left:
contours and the trajectories at each method's best β; centre: best and
final objective against β; right: the learning rates).

The methods run the paper's rules with explicit hyper-learning rates and
``safety_net=False``: the safety net (on by default since issue 11) is not
part of the paper, and a rollback would change what is reproduced.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import optax_lr
from benchmarks import _report

BUKIN_EPS = 1e-4


def beale(w):
  x, y = w[0], w[1]
  return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def bukin_smoothed(w):
  x, y = w[0], w[1]
  return jnp.sqrt(jnp.sqrt((y - 0.01 * x) ** 2 + BUKIN_EPS) + BUKIN_EPS)


# name -> (function, start, eta0, plot box (xmin, xmax, ymin, ymax), minimum)
FUNCTIONS = {
  "beale": (beale, (1.0, 1.5), 0.01, (-0.5, 3.5, -0.5, 2.0), 0.0),
  # x moves 100x less than y: the box is narrow in x to show the steps.
  "bukin_smoothed": (
    bukin_smoothed,
    (-10.0, 1.0),
    0.01,
    (-10.03, -9.97, -0.4, 1.2),
    float(np.sqrt(np.sqrt(BUKIN_EPS) + BUKIN_EPS)),
  ),
}

METHODS = {
  "hd": lambda eta0, beta: optax_lr.hypergradient_descent(eta0, beta, safety_net=False),
  "rtho": lambda eta0, beta: optax_lr.rtho(eta0, beta, safety_net=False),
  "marthe": lambda eta0, beta: optax_lr.marthe(
    eta0, hyper_lr=beta, hyper_lr_step=0.0, safety_net=False
  ),
}


def trajectory(f, tx, w0, steps):
  """Gradient descent with ``tx`` from ``w0``: losses, rates and iterates."""

  def step(carry, _):
    w, state = carry
    loss, g = jax.value_and_grad(f)(w)
    u, state = tx.update(g, state, w, loss_fn=f)
    return (w + u, state), (loss, optax_lr.current_lr(state), w)

  w0 = jnp.asarray(w0, jnp.float32)
  (w, _), (losses, lrs, ws) = jax.lax.scan(step, (w0, tx.init(w0)), None, length=steps)
  return jnp.append(losses, f(w)), lrs, jnp.concatenate([ws, w[None]])


def run_all(f, w0, eta0, betas, steps):
  gd = lambda: optax_lr.hypergradient_descent(eta0, 0.0, safety_net=False)
  out = {"gd": jax.jit(lambda: trajectory(f, gd(), w0, steps))()}
  for name, make in METHODS.items():
    for beta in betas:
      out[(name, beta)] = jax.jit(
        lambda make=make, beta=beta: trajectory(f, make(eta0, beta), w0, steps)
      )()
  return {k: tuple(np.asarray(x) for x in v) for k, v in out.items()}


def summarise(runs, betas):
  table = {}
  for name in METHODS:
    rows = []
    for beta in betas:
      losses, lrs, _ = runs[(name, beta)]
      diverged = not np.isfinite(losses).all()
      rows.append(
        {
          "beta": beta,
          "diverged": diverged,
          "best": float(np.nanmin(losses)),
          "final": float(losses[-1]),
          "lr_final": float(lrs[-1]),
          "lr_max": float(np.nanmax(lrs)),
        }
      )
    ok = [r for r in rows if not r["diverged"]]
    best = min(ok, key=lambda r: r["best"]) if ok else None
    table[name] = {"by_beta": rows, "best_beta": best and best["beta"]}
  return table


def plot(results, path):
  plt = _report.pyplot()
  if plt is None:
    return
  colors = {"hd": "tab:orange", "rtho": "tab:green", "marthe": "tab:blue", "gd": "k"}
  fig, axes = plt.subplots(
    len(results), 3, figsize=(16, 4.6 * len(results)), squeeze=False, layout="constrained"
  )
  for row, (fname, res) in enumerate(results.items()):
    f, _, _, box, minimum = FUNCTIONS[fname]
    runs, table = res["runs"], res["table"]
    ax = axes[row, 0]
    xs, ys = np.meshgrid(np.linspace(box[0], box[1], 200), np.linspace(box[2], box[3], 200))
    zs = np.asarray(jax.vmap(jax.vmap(lambda x, y: f(jnp.stack([x, y]))))(xs, ys))
    ax.contourf(xs, ys, np.log(zs - minimum + 1e-3), levels=30, cmap="Greys")
    gd_w = runs["gd"][2]
    ax.plot(gd_w[:, 0], gd_w[:, 1], color="k", lw=1, label="gd (η0)")
    for name in METHODS:
      beta = table[name]["best_beta"]
      if beta is None:
        continue
      w = runs[(name, beta)][2]
      ax.plot(w[:, 0], w[:, 1], color=colors[name], lw=1.2, label=f"{name} β={beta:g}")
    ax.plot(*res["start"], "ko", ms=4)
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_title(f"{fname}: trajectories at each method's best β", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[row, 1]
    for name in METHODS:
      rows = [r for r in table[name]["by_beta"] if not r["diverged"]]
      b = [r["beta"] for r in rows]
      # Floored at 1e-8: float32 reaches the minimum itself.
      gap = lambda v: max(v - minimum, 1e-8)
      ax.plot(b, [gap(r["best"]) for r in rows], "o-", color=colors[name], label=f"{name}: best")
      ax.plot(
        b,
        [gap(r["final"]) for r in rows],
        "x--",
        color=colors[name],
        alpha=0.6,
        label=f"{name}: final",
      )
    gd_losses = runs["gd"][0]
    ax.axhline(max(np.nanmin(gd_losses) - minimum, 1e-8), color="k", lw=0.8, label="gd: best")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("β (diverged runs omitted)")
    ax.set_ylabel("objective - minimum (floored at 1e-8)")
    ax.set_title(f"{fname}: best and final objective in {res['steps']} steps", fontsize=10)
    ax.legend(fontsize=7, ncol=2)

    ax = axes[row, 2]
    for name in METHODS:
      beta = table[name]["best_beta"]
      if beta is None:
        continue
      ax.plot(
        np.maximum(runs[(name, beta)][1], 1e-6), color=colors[name], label=f"{name} β={beta:g}"
      )
    ax.axhline(res["eta0"], color="k", lw=0.8, label="η0")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"{fname}: learning rate at each method's best β", fontsize=10)
    ax.legend(fontsize=7)
  _report.save_figure(fig, path)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="3 values of β, 50 steps")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--betas", type=float, nargs="+", default=None)
  _report.add_output_args(parser, "paper_toys")
  args = parser.parse_args(argv)
  steps = args.steps or (50 if args.quick else 500)
  betas = args.betas or (
    [1e-5, 1e-3, 1e-1] if args.quick else [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
  )

  start = time.perf_counter()
  results, report = (
    {},
    {
      "command": "python -m benchmarks.paper_toys" + ("" if argv is None else " " + " ".join(argv)),
      "machine": _report.machine(),
      "steps": steps,
      "betas": betas,
      "bukin_eps": BUKIN_EPS,
      "functions": {},
    },
  )
  for fname, (f, w0, eta0, _, minimum) in FUNCTIONS.items():
    runs = run_all(f, w0, eta0, betas, steps)
    table = summarise(runs, betas)
    results[fname] = {"runs": runs, "table": table, "start": w0, "eta0": eta0, "steps": steps}
    gd_losses = runs["gd"][0]
    report["functions"][fname] = {
      "start": w0,
      "eta0": eta0,
      "minimum": minimum,
      "gd": {"best": float(np.nanmin(gd_losses)), "final": float(gd_losses[-1])},
      "methods": table,
    }
    print(
      f"\n{fname} from {w0}, η0 = {eta0}, {steps} steps (minimum {minimum:.4g}); "
      f"gd: best {np.nanmin(gd_losses):.3e}"
    )
    header = ["method"] + [f"β={b:g}" for b in betas]
    rows = []
    for name in METHODS:
      rows.append(
        [f"{name} best"]
        + ["diverged" if r["diverged"] else f"{r['best']:.3e}" for r in table[name]["by_beta"]]
      )
      rows.append(
        [f"{name} final"]
        + ["diverged" if r["diverged"] else f"{r['final']:.3e}" for r in table[name]["by_beta"]]
      )
    print(_report.table(header, rows))
  plot(results, args.png)
  return _report.finish(report, start, args.out)


if __name__ == "__main__":
  main()
