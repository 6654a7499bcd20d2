"""The main job: every optax_lr method against optax's own, from several initial rates.

A small MLP (flax) learns scikit-learn's 8x8 digits with every method of
``benchmarks/_methods.py`` (the optax_lr methods; plain SGD swept over the same
rates and at a hand-picked rate; ``optax.contrib``'s reduce_on_plateau,
prodigy, dog, mechanize and schedule_free_sgd), each from every initial rate
(ASLR also through its paper's pipeline, and SGD at a constant rate, from the
rate ``optax_lr.lr_range_test`` suggests).
The digits are split three ways: the weights train on ``train``; the methods
may look at ``valid`` (ASLR and AALR get its loss through
``optax_lr.observe`` at each epoch end, RTHO and MARTHE the gradient of a
validation minibatch as ``val_grads``); the table reports the ``test`` split,
which no method sees.

Prints one row per method: the final held-out loss / accuracy (%) from each
initial rate, the worst loss and the spread (max - min) across rates, and the
per-step time of the method's jit-compiled, donated train step (interleaved
timing, ``_harness.time_candidates``). Writes ``results/compare.json`` and
``results/compare.png`` (held-out loss per epoch and learning-rate trajectory
per step, one line per initial rate).

Usage::

    python -m benchmarks.compare              # the main job: < 5 min on 2 CPU cores
    python -m benchmarks.compare --quick      # a smoke run
    python -m benchmarks.compare --methods hd marthe sgd --rates 0.01 0.1
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import _data
from benchmarks import _harness
from benchmarks import _methods
from benchmarks import _models
from benchmarks import _report
from benchmarks import _train

DEFAULT_RATES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick", action="store_true", help="tiny MLP, 2 epochs, 2 rates, short timing"
  )
  parser.add_argument("--rates", type=float, nargs="+", default=None)
  parser.add_argument(
    "--methods",
    nargs="+",
    default=None,
    help="subset of: " + " ".join(m.name for m in _methods.COMPARE_METHODS),
  )
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--hidden", type=int, nargs="+", default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--timing-rounds",
    type=int,
    default=None,
    help="interleaved rounds timing the train steps (0: no timing)",
  )
  _report.add_output_args(parser, "compare", progress=True)
  args = parser.parse_args(argv)
  if args.quick:
    _train.fast_compilation()
    args.rates = args.rates or [1e-2, 1e-1]
    args.epochs = args.epochs or 2
    args.hidden = args.hidden or [16]
    args.timing_rounds = 2 if args.timing_rounds is None else args.timing_rounds
  args.rates = args.rates or list(DEFAULT_RATES)
  args.epochs = args.epochs or 30
  args.hidden = args.hidden or [128, 128]
  args.timing_rounds = 15 if args.timing_rounds is None else args.timing_rounds
  return args


def time_steps(model, methods, batch_size, rounds, steps_per_epoch, quiet):
  """ms per step of each method's train step, interleaved in one run."""
  if rounds <= 0:
    return {m.name: float("nan") for m in methods}
  cands = [
    _harness.Candidate(
      m.name, m.build(_methods.SPEED_LR, steps_per_epoch), needs=tuple(m.needs), hvp=m.hvp
    )
    for m in methods
  ]
  if not quiet:
    print(f"timing {len(cands)} train steps, {rounds} interleaved rounds ...")
  batch = _harness.random_batch(jax.random.PRNGKey(1), batch_size, tuple(model.input_shape), 10)
  times = _harness.time_candidates(
    cands,
    lambda: model.init(jax.random.PRNGKey(0)),
    model.loss,
    batch,
    rounds=rounds,
    steps_per_round=10 if rounds < 5 else 20,
  )
  return {name: 1e3 * sec for name, sec in times.items()}


def plot(results, methods, rates, setting, path):
  plt = _report.pyplot()
  if plt is None:
    return
  cols = 4
  rows = -(-len(methods) // 2)
  fig, axes = _report.panels(plt, rows, cols, 4.2, 2.6)
  colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(rates)))
  for i, m in enumerate(methods):
    ax_loss, ax_lr = axes[i // 2, 2 * (i % 2)], axes[i // 2, 2 * (i % 2) + 1]
    for j, r in enumerate(results[m.name]):
      h = r.history
      if m.fixed_lr is not None:
        label = f"{m.rate(r.lr):g} (fixed)"
      elif m.rate_from_task is not None:
        label = f"{r.seed_rates[0]:.3g} (from the task)"
      else:
        label = f"{r.lr:g}"
      color = colors[j] if m.swept else "k"
      epochs = np.arange(setting.epochs + 1)
      loss = np.concatenate([h["init"]["test_loss"][:1], h["test_loss"][0]])
      ax_loss.plot(epochs, loss, color=color, label=label)
      steps = np.arange(1, h["lr"].shape[1] + 1)
      ax_lr.plot(steps, np.maximum(h["lr"][0], 1e-9), color=color, lw=1)
    ax_loss.set_yscale("log")
    ax_loss.set_ylim(0.02, 5)
    ax_loss.set_title(f"{m.name}: held-out loss", fontsize=9)
    ax_loss.set_xlabel("epoch", fontsize=8)
    ax_lr.set_yscale("log")
    ax_lr.set_ylim(1e-5, 20)
    ax_lr.set_title(f"{m.name}: learning rate", fontsize=9)
    ax_lr.set_xlabel("step", fontsize=8)
    if i == 0:
      ax_loss.legend(title="initial rate", fontsize=7, title_fontsize=7)
  for k in range(len(methods), 2 * rows):
    axes[k // 2, 2 * (k % 2)].axis("off")
    axes[k // 2, 2 * (k % 2) + 1].axis("off")
  fig.suptitle(
    "digits, MLP: held-out loss per epoch and learning rate per step, one line per initial rate"
  )
  _report.save_figure(fig, path)


def main(argv=None) -> dict:
  args = parse_args(argv)
  start = time.perf_counter()
  methods = _methods.by_name(_methods.COMPARE_METHODS, args.methods)
  splits = _data.digits(seed=args.seed)
  model = _models.mlp((64,), args.hidden, splits.num_classes)
  setting = _train.setting_for(splits, args.epochs, args.batch_size)
  print(
    f"digits: {len(splits.y_train)} train / {len(splits.y_valid)} valid / "
    f"{len(splits.y_test)} test; {model.name}; batch {setting.batch_size}, "
    f"{setting.epochs} epochs of {setting.steps_per_epoch} steps; "
    f"initial rates {' '.join(map(_report.rate_label, args.rates))}"
  )

  results = {}
  for m in _report.progress(methods, desc="methods", quiet=args.no_progress):
    results[m.name] = _train.train_rates(model, m, args.rates, splits, setting, seeds=(args.seed,))
  ms = time_steps(
    model, methods, args.batch_size, args.timing_rounds, setting.steps_per_epoch, args.no_progress
  )

  header = (
    ["method"]
    + [f"lr={_report.rate_label(r)}" for r in args.rates]
    + ["worst", "spread", "ms/step"]
  )
  rows, report_methods = [], {}
  for m in methods:
    runs = results[m.name]
    losses = np.array([r.history["test_loss"][0, -1] for r in runs])
    accs = np.array([r.history["test_acc"][0, -1] for r in runs])
    scored = _train.score(losses, _data.chance_loss(splits))
    cells = [f"{_report.fmt(l)} / {100 * a:4.1f}" for l, a in zip(losses, accs)]
    if not m.swept:
      cells = [cells[0]] + ["  (same run)"] * (len(args.rates) - 1)
    stats = _train.summary(scored)
    rows.append(
      [m.name]
      + cells
      + [_report.fmt(stats["worst"]), _report.fmt(stats["spread"]), _report.fmt(ms[m.name])]
    )
    report_methods[m.name] = {
      "library": m.library,
      "needs": list(m.needs),
      "epoch_level": m.epoch_level,
      "rate_means": m.rate_means,
      "fixed_lr": m.fixed_lr,
      "rate_from_task": m.rate_from_task is not None,
      "ms_per_step": ms[m.name],
      "summary_of_scored_final_loss": stats,
      "runs": [
        {
          "initial_rate": r.seed_rates[0],
          "final_test_loss": r.history["test_loss"][0, -1],
          "final_test_accuracy": r.history["test_acc"][0, -1],
          "final_valid_loss": r.history["valid_loss"][0, -1],
          "test_loss_per_epoch": r.history["test_loss"][0],
          "test_accuracy_per_epoch": r.history["test_acc"][0],
          "valid_loss_per_epoch": r.history["valid_loss"][0],
          "initial_test_loss": r.history["init"]["test_loss"][0],
          "lr_per_step": r.history["lr"][0],
          "train_loss_per_step": r.history["train_loss"][0],
          "compile_s": r.compile_s,
          "run_s": r.run_s,
        }
        for r in runs
      ],
    }
  print()
  print(
    "final held-out loss / accuracy (%) per initial rate; worst and spread "
    "of the loss across rates (a diverged run scores ln 10); ms per train step"
  )
  print(_report.table(header, rows))

  report = {
    "command": "python -m benchmarks.compare" + ("" if argv is None else " " + " ".join(argv)),
    "machine": _report.machine(),
    "setting": {
      "data": "sklearn digits, 8x8, split train/valid/test "
      f"{len(splits.y_train)}/{len(splits.y_valid)}/{len(splits.y_test)}",
      "model": model.name,
      "batch_size": setting.batch_size,
      "epochs": setting.epochs,
      "steps_per_epoch": setting.steps_per_epoch,
      "initial_rates": args.rates,
      "seed": args.seed,
      "timing": f"harness.time_candidates, {args.timing_rounds} interleaved rounds, "
      f"random batch of {args.batch_size}, rate {_methods.SPEED_LR}",
      "score": "final test-split loss; a non-finite loss scores ln(10)",
    },
    "methods": report_methods,
  }
  plot(results, methods, args.rates, setting, args.png)
  return _report.finish(report, start, args.out)


if __name__ == "__main__":
  main()
