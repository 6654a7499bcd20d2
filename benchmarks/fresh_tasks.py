"""The defaults on problems nobody tuned for, over SGD, momentum and Adam.

``benchmarks.robustness`` fixes one direction per task (momentum on the
MLPs, AdamW on the LM) and feeds the epoch-level methods a validation loss,
as their papers do. A user who never read the papers writes
``optax_lr.aalr(lr, steps_per_epoch=N)`` over whatever optimizer they use,
on a problem of their own. This script runs that: every optax_lr method
with its defaults only, the epoch-level ones (ASLR, AALR) in window mode
(the epoch-mean training loss, no validation split), over
``optax.identity()``, ``optax.trace(0.9)`` and ``optax.scale_by_adam()``,
from initial rates 1e-4, 1e-2 and 1, on four small problems chosen after
every default was fixed:

* ``logreg``: softmax regression on ``sklearn.datasets.load_digits``;
* ``lsq``: least squares with singular values 1 ... 100 (condition number
  1e4 of the Hessian), Gaussian noise 0.1, generated with ``jax.random``;
* ``deep_tanh``: a tanh MLP 64-32x6-10 on digits;
* ``autoenc``: a ReLU autoencoder 64-16-64 with a sigmoid output on digits.

Each run is one seed, batch 32, 31 batches per epoch, ``--steps`` update
calls (default 1500, 48 epochs). A run is scored by its full-data training
loss at the end (AALR at ``optax_lr.best_params``) over the best that optax
``sgd``, ``sgd(momentum=0.9)`` or ``adam`` reaches at a constant rate of
1e-4 ... 1 (decades) on the same problem and batches. The table also shows
the range of the method's rate over the run and its last value, so a rate
that collapses (to 1e-9) or runs away shows. The update calls get the
batch loss as ``value`` (so the safety net sees it); ``--without-value``
leaves it out, as a plain ``tx.update(grads, state, params)`` does.

``--range-test`` also starts every method at the rate ``lr_range_test``
suggests (valley), the sweep's optimizer the reference of the run's
direction (``REFERENCES``: ``optax.sgd``, ``sgd(momentum=0.9)``,
``optax.adam``), on the run's own first 200 batches from its initial
params; a summary then gives, per method, the geometric mean over problems
and directions of the ratio from the suggestion against that of the
method's worst initial rate, and how many are within 1.25x.

Usage::

    python -m benchmarks.fresh_tasks                      # everything, ~4 min
    python -m benchmarks.fresh_tasks --methods aalr --problems lsq
    python -m benchmarks.fresh_tasks --quick              # a smoke run
    python -m benchmarks.fresh_tasks --without-value      # no value= in update
    python -m benchmarks.fresh_tasks --range-test         # also from the range test

Writes ``results/fresh_tasks.json``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lr
from benchmarks import _harness
from benchmarks import _methods
from benchmarks import _report
from benchmarks import _train
from benchmarks import robustness

BATCH = 32
STEPS_PER_EPOCH = 31
RATES = (1e-4, 1e-2, 1.0)
PROBLEMS = ("logreg", "lsq", "deep_tanh", "autoenc")
GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DIRECTIONS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "sgd": optax.identity,
  "momentum": lambda: optax.trace(0.9),
  "adam": optax.scale_by_adam,
}
# Each direction's hand-tuned reference, and the optimizer the range test
# sweeps for it (its rate by keyword: a partial, not a lambda).
REFERENCES: dict[str, Callable[..., optax.GradientTransformation]] = {
  "sgd": optax.sgd,
  "momentum": functools.partial(optax.sgd, momentum=0.9),
  "adam": optax.adam,
}
# The summary of --range-test counts the ratios within the robustness
# targets' bound (1.25x).
WITHIN = robustness.HAND_TUNED_BOUND


class Problem(NamedTuple):
  init: Callable[[jax.Array], Any]
  loss: Callable[[Any, jax.Array, jax.Array], jax.Array]
  inputs: jax.Array
  targets: jax.Array


def problems(examples: int = BATCH * STEPS_PER_EPOCH) -> dict[str, Problem]:
  """The four problems, each on ``examples`` training examples."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  x, y = load_digits(return_X_y=True)
  keep = np.random.RandomState(0).permutation(len(x))[:examples]
  digits = jnp.asarray(x[keep] / 16.0, jnp.float32)
  labels = jnp.asarray(y[keep], jnp.int32)
  # Least squares: X = U diag(s) V^T with s log-spaced in 1 ... 100, scaled so
  # that the Hessian X^T X / n has eigenvalues 1e-4 ... 1.
  key_u, key_v, key_w, key_noise = jax.random.split(jax.random.PRNGKey(1), 4)
  u, _ = jnp.linalg.qr(jax.random.normal(key_u, (examples, 20)))
  v, _ = jnp.linalg.qr(jax.random.normal(key_v, (20, 20)))
  design = (u * jnp.logspace(0, 2, 20)) @ v.T * np.sqrt(examples) / 100
  w_true = jax.random.normal(key_w, (20,))
  noisy = design @ w_true + 0.1 * jax.random.normal(key_noise, (examples,))
  relu_logits = lambda p, x, y: _harness.cross_entropy(_harness.mlp_logits(p, x), y)
  # LeCun's initialisation (gain 1) for every problem (suited to tanh).
  lecun = lambda sizes: lambda k: _harness.init_mlp(k, sizes, gain=1.0)
  return {
    "logreg": Problem(lecun([64, 10]), relu_logits, digits, labels),
    "lsq": Problem(
      lambda k: {"w": jnp.zeros(20)},
      lambda p, x, y: 0.5 * jnp.mean((x @ p["w"] - y) ** 2),
      design,
      noisy,
    ),
    "deep_tanh": Problem(
      lecun([64] + [32] * 6 + [10]),
      lambda p, x, y: _harness.cross_entropy(_harness.mlp_logits(p, x, jnp.tanh), y),
      digits,
      labels,
    ),
    "autoenc": Problem(
      lecun([64, 16, 64]),
      lambda p, x, y: jnp.mean((jax.nn.sigmoid(_harness.mlp_logits(p, x)) - x) ** 2),
      digits,
      digits,
    ),
  }


def _order(steps: int, examples: int) -> jax.Array:
  return jax.random.permutation(jax.random.PRNGKey(5), steps * BATCH) % examples


def _batch(problem: Problem, order, t):
  pick = jax.lax.dynamic_slice(order, (t * BATCH,), (BATCH,))
  return problem.inputs[pick], problem.targets[pick]


def _run(problem: Problem, tx, steps: int, needs=(), rate_of=None):
  """One jitted run: ``(final loss, params finite, rate per call)``.

  The loss is on the whole data, at ``optax_lr.best_params`` (the params
  themselves for a state without a best checkpoint); the rate per call is
  ``rate_of(state)``, zeros when ``rate_of`` is None (plain optax).
  """
  order = _order(steps, len(problem.targets))

  def run(params):
    def step(carry, t):
      params, state = carry
      x, y = _batch(problem, order, t)
      batch_loss = lambda p: problem.loss(p, x, y)
      loss, grads = jax.value_and_grad(batch_loss)(params)
      extra = _methods.extra_args(needs, loss=loss, batch_loss=batch_loss, val_grads_fn=None)
      updates, state = tx.update(grads, state, params, **extra)
      params = optax_lr.apply_updates(params, updates, state)
      rate = jnp.zeros([]) if rate_of is None else rate_of(state)
      return (params, state), rate

    (params, state), rates = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
    params = optax_lr.best_params(state, params)
    loss = problem.loss(params, problem.inputs, problem.targets)
    return loss, _train.params_finite(params), rates

  loss, finite, rates = jax.jit(run)(problem.init(jax.random.PRNGKey(0)))
  return float(loss), bool(finite), np.asarray(rates)


def run_method(
  problem: Problem, method: _methods.Method, direction, lr: float, steps: int, value: bool = True
):
  """``(final loss, params finite, rates per call)`` of one run with defaults.

  ``value=False`` leaves the training loss out of the update call, as a plain
  ``tx.update(grads, state, params)`` does (window-mode ASLR and AALR average
  it, so they always get it).
  """
  if method.epoch_level:
    # Window mode: the library call itself, as a user writes it (`build`
    # takes the window length as its own positional argument).
    tx = method.factory(lr, steps_per_epoch=STEPS_PER_EPOCH, direction=direction())
  else:
    tx = method.build(lr, STEPS_PER_EPOCH, direction=direction())
  dropped = {"val_grads"} if value or method.epoch_level else {"val_grads", "value"}
  needs = tuple(n for n in method.needs if n not in dropped)  # no validation split
  return _run(problem, tx, steps, needs, optax_lr.current_lr)


def run_reference(problem: Problem, make, lr: float, steps: int) -> float:
  """The final full-data loss of an optax optimizer at a constant rate."""
  return _run(problem, make(lr), steps)[0]


def range_test_suggestion(problem: Problem, optimizer, steps: int) -> float:
  """The rate ``lr_range_test`` suggests for ``optimizer`` on a run's first
  batches, from the run's initial params, which the run then starts from:
  ``_methods.range_test_suggestion``, as the robustness benchmark's rows
  (``RANGE_TEST_STEPS`` steps, cycling through a shorter run's batches)."""
  order = _order(steps, len(problem.targets))
  batches = jax.vmap(lambda t: _batch(problem, order, t))(
    jnp.arange(min(_methods.RANGE_TEST_STEPS, steps))
  )
  return _methods.range_test_suggestion(
    _methods.TaskSeed(
      loss=lambda params, batch: problem.loss(params, *batch),
      params=problem.init(jax.random.PRNGKey(0)),
      train_batches=batches,
      optimizer=optimizer,
    )
  )


def _cell(lr: float, run, best: float) -> dict:
  """One run's row cell from ``run_method``'s ``(loss, finite, rates)``."""
  loss, finite, rates = run
  return dict(
    initial_rate=lr,
    loss=loss,
    ratio=loss / best,
    finite=finite,
    rate_min=float(rates.min()),
    rate_max=float(rates.max()),
    rate_end=float(rates[-1]),
  )


def _text(cell: dict) -> str:
  return (
    f"{cell['ratio']:7.2f}x [{cell['rate_min']:.0e}, {cell['rate_max']:.0e}] "
    f"end {cell['rate_end']:.0e}" + ("" if cell["finite"] else " NON-FINITE")
  )


def range_test_summary(report: dict) -> dict:
  """Per method, over every problem and direction run: the geometric mean
  of the ratio to the best hand-tuned loss from the range test's suggestion
  and from the method's worst initial rate, how many of each are within
  ``WITHIN``, and in how many the suggestion ends worse than the worst
  initial rate. A non-finite loss counts as an infinite ratio."""
  ratio = lambda cell: cell["ratio"] if np.isfinite(cell["ratio"]) else np.inf
  pairs: dict[str, list[tuple[float, float]]] = {}
  for problem in report["problems"].values():
    for row in problem["methods"]:
      if "from_range_test" not in row:
        continue
      worst = max(ratio(c) for c in row["runs"])
      pairs.setdefault(row["method"], []).append((ratio(row["from_range_test"]), worst))
  summary = {}
  for method, cells in pairs.items():
    start, worst = np.asarray(cells, np.float64).T
    summary[method] = dict(
      cells=len(cells),
      geometric_mean_from_range_test=float(np.exp(np.log(start).mean())),
      geometric_mean_worst_initial_rate=float(np.exp(np.log(worst).mean())),
      within_from_range_test=int((start <= WITHIN).sum()),
      within_worst_initial_rate=int((worst <= WITHIN).sum()),
      worse_than_worst_initial_rate=int((start > worst).sum()),
    )
  return summary


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  names = [m.name for m in _methods.OPTAX_LR_METHODS if m.swept]
  parser.add_argument("--methods", nargs="+", default=names, choices=names)
  parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
  parser.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=list(DIRECTIONS))
  parser.add_argument("--steps", type=int, default=1500, help="update calls per run")
  parser.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs")
  parser.add_argument(
    "--without-value",
    action="store_true",
    help="leave the training loss out of the update calls (a plain tx.update(grads, state, "
    "params)); window-mode ASLR and AALR still average it",
  )
  parser.add_argument(
    "--range-test",
    action="store_true",
    help="also start every method at the rate lr_range_test suggests for the direction's "
    "reference optimizer, and summarize against the worst initial rate",
  )
  parser.add_argument("--out", default="results/fresh_tasks.json")
  args = parser.parse_args(argv)
  steps = 2 * STEPS_PER_EPOCH if args.quick else args.steps
  by_name = {m.name: m for m in _methods.OPTAX_LR_METHODS}
  start = time.perf_counter()
  report: dict[str, Any] = {
    "command": "python -m benchmarks.fresh_tasks "
    + " ".join(argv if argv is not None else sys.argv[1:]),
    "machine": _report.machine(),
    "steps": steps,
    "value_passed": not args.without_value,
    "initial_rates": list(RATES),
    "grid": list(GRID),
    "problems": {},
  }
  all_problems = problems()
  for name in args.problems:
    problem = all_problems[name]
    references = {
      ref: [run_reference(problem, make, lr, steps) for lr in GRID]
      for ref, make in REFERENCES.items()
    }
    best = min(min(np.nan_to_num(v, nan=np.inf)) for v in references.values())
    print(f"{name}: best hand-tuned final training loss {best:.4g}")
    for ref, losses in references.items():
      print(f"  {ref:9s} per grid rate " + " ".join(f"{x:.4g}" for x in losses))
    columns = [f"from {lr:g}" for lr in RATES] + (
      ["from the range test"] if args.range_test else []
    )
    print(f"  {'':8s} {'method':10s} " + " | ".join(f"{c:>32s}" for c in columns))
    runs = []
    for direction in args.directions:
      suggestion = (
        range_test_suggestion(problem, REFERENCES[direction], steps) if args.range_test else None
      )
      if suggestion is not None:
        print(f"  {direction}: the range test suggests {suggestion:.3g}")
      for method_name in args.methods:
        run = functools.partial(
          run_method,
          problem,
          by_name[method_name],
          DIRECTIONS[direction],
          steps=steps,
          value=not args.without_value,
        )
        row = dict(
          direction=direction,
          method=method_name,
          runs=[_cell(lr, run(lr), best) for lr in RATES],
        )
        if suggestion is not None:
          row["from_range_test"] = _cell(suggestion, run(suggestion), best)
        runs.append(row)
        cells = row["runs"] + ([row["from_range_test"]] if suggestion is not None else [])
        print(f"  {direction:8s} {method_name:10s} " + " | ".join(map(_text, cells)), flush=True)
    report["problems"][name] = dict(best_reference=best, references=references, methods=runs)
  if args.range_test:
    report["range_test_summary"] = summary = range_test_summary(report)
    print(
      "\nfrom the range test's suggestion against the worst initial rate: geometric mean of "
      f"the ratio over problems and directions (within {WITHIN}x)"
    )
    print(
      _report.table(
        ["method", "from the range test", "worst initial rate", "worse than the worst"],
        [
          [
            method,
            f"{s['geometric_mean_from_range_test']:.2f}x ({s['within_from_range_test']})",
            f"{s['geometric_mean_worst_initial_rate']:.2f}x ({s['within_worst_initial_rate']})",
            f"{s['worse_than_worst_initial_rate']}/{s['cells']}",
          ]
          for method, s in summary.items()
        ],
      )
    )
  return _report.finish(report, start, args.out)


if __name__ == "__main__":
  main()
