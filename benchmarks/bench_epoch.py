"""Per-step cost of the epoch-level methods (ASLR, AALR) against plain SGD.

The target: on update calls that are not epoch ends, a train step with
``aslr`` or ``aalr`` costs at most 1.10x the same step with ``optax.sgd``
(params and optimizer state donated). Epoch ends are kept out of the timed
steps: observe-mode candidates never see one, and window-mode candidates use
a window far longer than the timed run, so they pay the window bookkeeping of
an ordinary step (the running mean of ``value`` and the ``lax.cond`` that
skips the epoch end).

Usage::

    python -m benchmarks.bench_epoch            # MLP 784-500-500-500-10, batch 100
    python -m benchmarks.bench_epoch --quick    # a tiny MLP, a few rounds

Prints the per-step times and their ratios to SGD for each of ``--repeats``
independent interleaved runs (the machine is shared and noisy), then the
median ratio over the runs, and writes everything to
``results/bench_epoch.json``.
"""

from __future__ import annotations

import argparse
import platform

import jax
import numpy as np
import optax

import optax_lr
from benchmarks import _harness

# Far more update calls than any timed run: no window ever closes.
_NEVER_ENDS = 10**9


def candidates(momentum: bool) -> list[_harness.Candidate]:
  """SGD (or SGD with momentum) and the epoch-level methods over the same direction."""
  direction = (lambda: optax.trace(0.9)) if momentum else (lambda: None)
  base = optax.sgd(0.01, momentum=0.9) if momentum else optax.sgd(0.01)
  suffix = "_momentum" if momentum else ""
  return [
      _harness.Candidate("sgd" + suffix, base),
      _harness.Candidate("aslr" + suffix, optax_lr.aslr(0.01, direction=direction())),
      _harness.Candidate(
          "aslr_window" + suffix,
          optax_lr.aslr(0.01, steps_per_epoch=_NEVER_ENDS, direction=direction()),
          needs=("value",),
      ),
      _harness.Candidate("aalr" + suffix, optax_lr.aalr(0.01, direction=direction())),
      _harness.Candidate(
          "aalr_window" + suffix,
          optax_lr.aalr(0.01, steps_per_epoch=_NEVER_ENDS, direction=direction()),
          needs=("value",),
      ),
  ]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny MLP, few rounds")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--steps-per-round", type=int, default=None)
  parser.add_argument(
      "--repeats", type=int, default=None,
      help="independent interleaved runs; the reported ratio is their median",
  )
  parser.add_argument("--out", default="results/bench_epoch.json")
  args = parser.parse_args(argv)

  if args.quick:
    sizes, batch_size = (64, 32, 32, 10), 16
    rounds, steps, repeats = 5, 10, 1
  else:
    sizes, batch_size = (784, 500, 500, 500, 10), 100
    rounds, steps, repeats = 21, 20, 3
  rounds = args.rounds or rounds
  steps = args.steps_per_round or steps
  repeats = args.repeats or repeats

  key = jax.random.PRNGKey(0)
  batch = _harness.random_batch(key, batch_size, sizes[0], sizes[-1])
  init_params = lambda: _harness.init_mlp(jax.random.PRNGKey(1), sizes)

  report = {
      "setting": {
          "mlp": list(sizes),
          "batch": batch_size,
          "rounds": rounds,
          "steps_per_round": steps,
          "repeats": repeats,
          "backend": jax.default_backend(),
          "device": str(jax.devices()[0]),
          "machine": platform.machine(),
      },
      "tables": {},
  }
  for momentum in (False, True):
    cands = candidates(momentum)
    baseline = cands[0].name
    runs = []
    for repeat in range(repeats):
      times = _harness.time_candidates(
          cands, init_params, _harness.mlp_loss, batch,
          rounds=rounds, steps_per_round=steps, seed=repeat,
      )
      print(f"run {repeat + 1}/{repeats}")
      print(_harness.ratio_table(times, baseline))
      runs.append(times)
    ratios = {
        name: float(np.median([run[name] / run[baseline] for run in runs]))
        for name in runs[0]
    }
    print(f"median ratio to {baseline} over {repeats} run(s): " + ", ".join(
        f"{name} {ratio:.3f}" for name, ratio in ratios.items()
    ))
    print()
    report["tables"][baseline] = {
        "median_ratio": ratios,
        "runs_seconds_per_step": runs,
    }

  _harness.write_json(report, args.out)
  return report


if __name__ == "__main__":
  main()
