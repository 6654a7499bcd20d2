"""Per-step cost of every optax_lr method against optax's own, as ratios.

For each model, the jit-compiled train step (params and optimizer state
donated, ``optax_lr.apply_updates``, the extra args each method needs) of
every optax_lr method of ``benchmarks/_methods.py`` and of the optax anchors
(sgd, sgd with momentum, adam, reduce_on_plateau, prodigy, dadapt_adamw, dog,
mechanize, and plain SGD on the gradient plus one Hessian-vector product) is
timed by ``_harness.time_candidates``: all candidates interleaved round by
round in one process, each summarised by its median. The run is repeated
``--repeats`` times and each ratio is the median over the repeats.

Models: the MLP 784-500-500-500-10 with batch 100 (pure jax, ``_harness``) and
a small CNN on 32x32x3 images with batch 128 (flax; two 3x3 conv + pool
blocks). Random data: only the cost matters here.

Epoch-level methods (ASLR, AALR) never meet an epoch end in the timed steps
(epoch ends come from ``optax_lr.observe``, which the timed loop never
calls); ``newton_lr``'s window is 200 steps (a third of a 600-step epoch), so
its window end, a ``lax.cond``, is almost never in a timed round.

Targets (``TARGETS``): HD <= 1.10x sgd(momentum=0.9); MARTHE <= 1.15x
grad+HVP+SGD; newton_lr <= 1.10x adam; ASLR and AALR <= 1.10x sgd on steps
that are not epoch ends. On GPU also: every method other than RTHO/MARTHE
cheaper per step than prodigy (reported on CPU for information).

Usage::

    python -m benchmarks.speed                 # both models, 3 repeats (~5 min on 2 cores)
    python -m benchmarks.speed --quick         # tiny models, a smoke run
    python -m benchmarks.speed --models mlp --repeats 5

Writes ``results/speed.json`` and ``results/speed.png``.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import _harness
from benchmarks import _methods
from benchmarks import _models
from benchmarks import _report

# (method, baseline, bound): method's step costs at most bound x baseline's.
TARGETS = (
    ("hd", "sgd_momentum", 1.10),
    ("marthe", "grad_hvp_sgd", 1.15),
    ("newton_lr", "adam", 1.10),
    ("aslr", "sgd", 1.10),
    ("aalr", "sgd", 1.10),
)
# On GPU: every method except these costs less per step than this anchor.
GPU_CHEAPER_THAN = "prodigy"
GPU_EXEMPT = ("rtho", "marthe")


def candidates(names=None) -> list[_harness.Candidate]:
  methods = list(_methods.SPEED_ANCHORS) + list(_methods.OPTAX_LR_METHODS)
  if names:
    methods = [m for m in methods if m.name in set(names)]
  return [
      _harness.Candidate(m.name, m.build(_methods.SPEED_LR, _methods.SPEED_STEPS_PER_EPOCH),
                         needs=tuple(m.needs), hvp=m.hvp)
      for m in methods
  ]


def models(quick: bool) -> dict:
  """name -> (init_params, loss_fn, batch, description)."""
  if quick:
    mlp_sizes, mlp_batch = (64, 32, 32, 10), 16
    cnn, cnn_shape, cnn_batch = _models.cnn2d((8, 8, 3), (4, 8)), (8, 8, 3), 8
  else:
    mlp_sizes, mlp_batch = (784, 500, 500, 500, 10), 100
    cnn, cnn_shape, cnn_batch = _models.cnn2d((32, 32, 3), (16, 32)), (32, 32, 3), 128
  return {
      "mlp": (
          lambda: _harness.init_mlp(jax.random.PRNGKey(1), mlp_sizes),
          _harness.mlp_loss,
          _harness.random_batch(jax.random.PRNGKey(0), mlp_batch, mlp_sizes[0], 10),
          f"MLP {'-'.join(map(str, mlp_sizes))}, batch {mlp_batch}",
      ),
      "cnn": (
          lambda: cnn.init(jax.random.PRNGKey(1)),
          cnn.loss,
          _harness.random_batch(jax.random.PRNGKey(0), cnn_batch, cnn_shape, 10),
          f"CNN {cnn.name}, batch {cnn_batch}",
      ),
  }


def plot(report, path):
  plt = _report.pyplot()
  if plt is None:
    return
  names = list(report["models"])
  fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 6), squeeze=False,
                           layout="constrained")
  for ax, name in zip(axes[0], names):
    ratios = report["models"][name]["median_ratio_to_sgd"]
    order = sorted(ratios, key=ratios.get)
    colors = ["tab:blue" if n in {m.name for m in _methods.OPTAX_LR_METHODS}
              else "tab:gray" for n in order]
    ax.barh(order, [ratios[n] for n in order], color=colors)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("step time / sgd step time (median over repeats)")
    ax.set_title(report["models"][name]["description"], fontsize=10)
    for y, n in enumerate(order):
      ax.text(ratios[n], y, f" {ratios[n]:.2f}", va="center", fontsize=8)
  fig.suptitle(f"per-step cost, {report['machine']['backend']} "
               f"({report['machine']['cpu']}); blue: optax_lr, gray: optax")
  _report.save_figure(fig, path)
  plt.close(fig)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny models, few rounds")
  parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
  parser.add_argument("--methods", nargs="+", default=None,
                      help="subset of candidates (default: all)")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--steps-per-round", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--out", default="results/speed.json")
  parser.add_argument("--png", default="results/speed.png")
  args = parser.parse_args(argv)
  # (rounds, steps per round) per model: the CNN step is ~10x the MLP's.
  default_rounds = {"mlp": (21, 10), "cnn": (9, 5)}
  if args.quick:
    default_rounds = {"mlp": (3, 5), "cnn": (3, 5)}
  repeats = args.repeats or (1 if args.quick else 3)

  start = time.perf_counter()
  cands = candidates(args.methods)
  names = [c.name for c in cands]
  report = {
      "command": "python -m benchmarks.speed" + ("" if argv is None else " " + " ".join(argv)),
      "machine": _report.machine(),
      "setting": {"repeats": repeats,
                  "learning_rate": _methods.SPEED_LR,
                  "steps_per_epoch": _methods.SPEED_STEPS_PER_EPOCH},
      "models": {},
  }
  for model_name in args.models:
    init_params, loss_fn, batch, description = models(args.quick)[model_name]
    rounds = args.rounds or default_rounds[model_name][0]
    steps = args.steps_per_round or default_rounds[model_name][1]
    print(f"\n{description}: {len(cands)} candidates, {repeats} x {rounds} "
          f"interleaved rounds of {steps} steps")
    runs = []
    for repeat in range(repeats):
      times = _harness.time_candidates(cands, init_params, loss_fn, batch,
                                       rounds=rounds, steps_per_round=steps,
                                       seed=repeat)
      runs.append(times)
      print(f"  repeat {repeat + 1}/{repeats}: sgd {1e3 * times.get('sgd', np.nan):.3f} ms/step")
    ratio = lambda a, b: float(np.median([r[a] / r[b] for r in runs]))
    entry = {
        "description": description,
        "rounds": rounds,
        "steps_per_round": steps,
        "seconds_per_step_runs": runs,
        "median_seconds_per_step": {n: float(np.median([r[n] for r in runs])) for n in names},
    }
    if "sgd" in names:
      entry["median_ratio_to_sgd"] = {n: ratio(n, "sgd") for n in names}
    targets = []
    for method, base, bound in TARGETS:
      if method in names and base in names:
        value = ratio(method, base)
        targets.append({"method": method, "baseline": base, "bound": bound,
                        "ratio": value, "met": value <= bound})
    entry["targets"] = targets
    if GPU_CHEAPER_THAN in names:
      entry[f"ratio_to_{GPU_CHEAPER_THAN}"] = {
          n: ratio(n, GPU_CHEAPER_THAN) for n in names if n not in GPU_EXEMPT}
    report["models"][model_name] = entry

    rows = [[n, f"{1e3 * entry['median_seconds_per_step'][n]:.3f}",
             _report.fmt(entry.get("median_ratio_to_sgd", {}).get(n, np.nan)),
             _report.fmt(entry.get(f"ratio_to_{GPU_CHEAPER_THAN}", {}).get(n, np.nan))]
            for n in names]
    print(_report.table(["step", "ms/step", "/ sgd", f"/ {GPU_CHEAPER_THAN}"], rows))
    for t in targets:
      print(f"  target {t['method']} / {t['baseline']} = {t['ratio']:.3f} "
            f"(<= {t['bound']:.2f}: {'met' if t['met'] else 'MISSED'})")

  if "sgd" in names:
    plot(report, args.png)
  report["wall_s"] = time.perf_counter() - start
  _report.write_json(args.out, report)
  print(f"total {report['wall_s']:.0f} s")
  return report


if __name__ == "__main__":
  main()
