"""Robustness to the initial rate: final held-out loss from 1e-4 to 1, three seeds.

Every method of ``benchmarks/_methods.py`` (``COMPARE_METHODS``) trains

* an MLP (flax, 64-128-128-10) on scikit-learn's digits, and
* the same MLP (40-128-128-10) on MNIST-1D (a small 1-D conv net, vmapped
  over the 15 runs with RTHO's and MARTHE's Hessian-vector products, took
  ~8 min per method here on 2 CPU cores),

from each initial rate and each seed (initial weights and batch order), with
the same train/valid/test protocol as ``benchmarks.compare`` (the methods may
look at ``valid``; the loss reported is the ``test`` split's). For each
method the final loss is averaged over the seeds at each rate, and the table
gives the mean ± std of those across the initial rates, as the NTLR paper
reports "SGD 0.661 ± 0.774 vs 0.095 ± 0.054" (MNIST, MLP), with the worst rate
and the number of diverged runs (a non-finite final loss scores ln 10).

Usage::

    python -m benchmarks.robustness            # both data sets, 5 rates, 3 seeds
    python -m benchmarks.robustness --quick    # a smoke run
    python -m benchmarks.robustness --datasets digits --methods sgd newton_lr

Writes ``results/robustness.json`` and ``results/robustness.png``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import _data
from benchmarks import _methods
from benchmarks import _models
from benchmarks import _report
from benchmarks import _train

DEFAULT_RATES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def task(name: str, quick: bool, epochs: int | None):
  """(splits, model, setting) of a data set."""
  if name == "digits":
    splits = _data.digits()
    model = _models.mlp((64,), (16,) if quick else (128, 128))
    return splits, model, _train.setting_for(splits, epochs or (2 if quick else 30), 32)
  if name == "mnist1d":
    splits = (_data.mnist1d(n_train=300, n_valid=100, num_samples=500) if quick
              else _data.mnist1d())
    model = _models.mlp((40,), (16,) if quick else (128, 128))
    return splits, model, _train.setting_for(splits, epochs or (2 if quick else 30), 100)
  raise ValueError(f"unknown data set {name!r}")


def plot(report, path):
  plt = _report.pyplot()
  if plt is None:
    return
  names = list(report["datasets"])
  fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 5), squeeze=False,
                           layout="constrained")
  for ax, name in zip(axes[0], names):
    ds = report["datasets"][name]
    methods = list(ds["methods"])
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, len(methods)))
    for color, m in zip(colors, methods):
      entry = ds["methods"][m]
      rates = np.array(entry["initial_rates"])
      loss = np.array(entry["scored_loss"])  # [rates, seeds]
      style = "-" if entry["library"] == "optax_lr" else "--"
      ax.errorbar(rates * (1 + 0.03 * methods.index(m)), loss.mean(1), yerr=loss.std(1),
                  fmt=style, marker="o", ms=3, capsize=2, color=color, label=m, lw=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("initial rate")
    ax.set_ylabel("final held-out loss (mean ± std over seeds)")
    ax.set_title(f"{name}: {ds['model']}, {ds['epochs']} epochs", fontsize=10)
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, fontsize=8, loc="outside right upper")
  fig.suptitle("robustness to the initial rate (solid: optax_lr, dashed: optax)")
  _report.save_figure(fig, path)
  plt.close(fig)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny models, 2 epochs, 2 rates")
  parser.add_argument("--datasets", nargs="+", default=["digits", "mnist1d"],
                      choices=["digits", "mnist1d"])
  parser.add_argument("--methods", nargs="+", default=None)
  parser.add_argument("--rates", type=float, nargs="+", default=None)
  parser.add_argument("--seeds", type=int, nargs="+", default=None)
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--out", default="results/robustness.json")
  parser.add_argument("--png", default="results/robustness.png")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if args.quick:
    _train.fast_compilation()
  rates = args.rates or ([1e-2, 1.0] if args.quick else list(DEFAULT_RATES))
  seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
  methods = _methods.by_name(_methods.COMPARE_METHODS, args.methods)
  # The hand-picked SGD has no initial rate to be robust to.
  methods = [m for m in methods if m.fixed_lr is None]

  start = time.perf_counter()
  report = {
      "command": "python -m benchmarks.robustness" + ("" if argv is None else " " + " ".join(argv)),
      "machine": _report.machine(),
      "initial_rates": rates,
      "seeds": seeds,
      "score": "final test-split loss, mean over seeds per rate, then mean ± std "
               "across rates; a non-finite loss scores ln(10)",
      "datasets": {},
  }
  for name in args.datasets:
    if name == "mnist1d" and not _data.have_mnist1d():
      print("mnist1d is not installed: skipping it (pip install -e '.[examples]')")
      continue
    splits, model, setting = task(name, args.quick, args.epochs)
    print(f"\n{name}: {len(splits.y_train)}/{len(splits.y_valid)}/{len(splits.y_test)} "
          f"train/valid/test; {model.name}; batch {setting.batch_size}, "
          f"{setting.epochs} epochs of {setting.steps_per_epoch} steps")
    entries, rows = {}, []
    for m in _report.progress(methods, desc=name, quiet=args.no_progress):
      runs = _train.train_rates(model, m, rates, splits, setting, seeds=seeds)
      loss = np.stack([r.history["test_loss"][:, -1] for r in runs])  # [rates, seeds]
      acc = np.stack([r.history["test_acc"][:, -1] for r in runs])
      scored = _train.score(loss, splits.num_classes)
      stats = _train.summary(scored.mean(1))
      diverged = int((~np.isfinite(loss)).sum())
      entries[m.name] = {
          "library": m.library, "rate_means": m.rate_means,
          "initial_rates": rates, "final_test_loss": loss, "final_test_accuracy": acc,
          "scored_loss": scored, "across_rates": stats, "diverged_runs": diverged,
      }
      rows.append([m.name, f"{stats['mean']:.3f} ± {stats['std']:.3f}",
                   _report.fmt(stats["worst"]),
                   " ".join(f"{x:.3f}" for x in scored.mean(1)),
                   f"{100 * acc.mean():.1f}", f"{diverged}/{loss.size}"])
    print(f"final held-out loss across initial rates {' '.join(map(_report.rate_label, rates))} "
          f"({len(seeds)} seeds)")
    print(_report.table(["method", "mean ± std", "worst", "per rate (seed mean)",
                         "acc %", "diverged"], rows))
    report["datasets"][name] = {
        "model": model.name, "epochs": setting.epochs, "batch_size": setting.batch_size,
        "steps_per_epoch": setting.steps_per_epoch,
        "split": [len(splits.y_train), len(splits.y_valid), len(splits.y_test)],
        "methods": entries,
    }
  plot(report, args.png)
  report["wall_s"] = time.perf_counter() - start
  _report.write_json(args.out, report)
  print(f"total {report['wall_s']:.0f} s")
  return report


if __name__ == "__main__":
  main()
