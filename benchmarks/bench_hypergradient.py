"""Per-step cost of the hypergradient methods (HD, RTHO, MARTHE).

Targets (train steps with params and optimizer state donated):

* ``hypergradient_descent`` costs at most 1.10x the same step with
  ``optax.sgd(momentum=0.9)``: both carry one param-sized buffer and do a
  handful of elementwise passes over it.
* ``marthe`` costs at most 1.15x the "anchor": a step that computes the
  gradient, one forward-over-reverse Hessian-vector product and an SGD update.
  The HVP is the only real extra work of the tangent engine.

Other rows (RTHO, MARTHE over momentum and Adam, HD over momentum) are
reported for information against the same baselines.

Usage::

    python -m benchmarks.bench_hypergradient          # MLP 784-500-500-500-10, batch 100
    python -m benchmarks.bench_hypergradient --quick  # a tiny MLP, a few rounds

Prints per-step times and ratios, and writes them to
``results/bench_hypergradient.json``.
"""

from __future__ import annotations

import argparse
import platform

import jax
import optax

import optax_lr
from benchmarks import _harness

LR = 0.01


def _adam():
  """optax's Adam raises a float to an int32 power: trace it under standard
  promotion, so the benchmark also runs in a strict-promotion session."""
  tx = optax.scale_by_adam()

  def init(params):
    with jax.numpy_dtype_promotion("standard"):
      return tx.init(params)

  def update(updates, state, params=None, **extra_args):
    del extra_args
    with jax.numpy_dtype_promotion("standard"):
      return tx.update(updates, state, params)

  return optax.GradientTransformationExtraArgs(init, update)


def hd_candidates() -> list[_harness.Candidate]:
  return [
      _harness.Candidate("sgd_momentum", optax.sgd(LR, momentum=0.9)),
      _harness.Candidate("hd", optax_lr.hypergradient_descent(LR, 1e-4)),
      _harness.Candidate(
          "hd_multiplicative",
          optax_lr.hypergradient_descent(LR, 1e-3, multiplicative=True),
      ),
      _harness.Candidate(
          "hd_over_momentum",
          optax_lr.hypergradient_descent(LR, 1e-4, direction=optax.trace(0.9)),
      ),
  ]


def tangent_candidates() -> list[_harness.Candidate]:
  needs = ("loss_fn",)
  return [
      _harness.Candidate("grad_hvp_sgd", optax.sgd(LR), hvp=True),
      _harness.Candidate(
          "marthe", optax_lr.marthe(LR, hyper_lr_step=1e-6), needs=needs
      ),
      _harness.Candidate(
          "marthe_mu0.9", optax_lr.marthe(LR, hyper_lr_step=1e-6, mu=0.9),
          needs=needs,
      ),
      _harness.Candidate("rtho", optax_lr.rtho(LR, 1e-6), needs=needs),
      _harness.Candidate(
          "marthe_over_momentum",
          optax_lr.marthe(LR, hyper_lr_step=1e-6, direction=optax.trace(0.9)),
          needs=needs,
      ),
      _harness.Candidate(
          "marthe_over_adam",
          optax_lr.marthe(1e-3, hyper_lr_step=1e-9, direction=_adam()),
          needs=needs,
      ),
  ]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny MLP, few rounds")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--steps-per-round", type=int, default=None)
  parser.add_argument("--out", default="results/bench_hypergradient.json")
  args = parser.parse_args(argv)

  if args.quick:
    sizes, batch_size = (64, 32, 32, 10), 16
    rounds, steps = 5, 10
  else:
    sizes, batch_size = (784, 500, 500, 500, 10), 100
    rounds, steps = 31, 20
  rounds = args.rounds or rounds
  steps = args.steps_per_round or steps

  batch = _harness.random_batch(jax.random.PRNGKey(0), batch_size, sizes[0], sizes[-1])
  init_params = lambda: _harness.init_mlp(jax.random.PRNGKey(1), sizes)

  report = {
      "setting": {
          "mlp": list(sizes),
          "batch": batch_size,
          "rounds": rounds,
          "steps_per_round": steps,
          "backend": jax.default_backend(),
          "device": str(jax.devices()[0]),
          "machine": platform.machine(),
      },
      "targets": {"hd / sgd_momentum": 1.10, "marthe / grad_hvp_sgd": 1.15},
      "tables": {},
  }
  for cands in (hd_candidates(), tangent_candidates()):
    times = _harness.time_candidates(
        cands, init_params, _harness.mlp_loss, batch,
        rounds=rounds, steps_per_round=steps,
    )
    baseline = cands[0].name
    print(_harness.ratio_table(times, baseline))
    print()
    report["tables"][baseline] = {
        name: {"seconds_per_step": sec, "ratio": sec / times[baseline]}
        for name, sec in times.items()
    }

  tables = report["tables"]
  report["ratios"] = {
      "hd / sgd_momentum": tables["sgd_momentum"]["hd"]["ratio"],
      "marthe / grad_hvp_sgd": tables["grad_hvp_sgd"]["marthe"]["ratio"],
  }
  for name, ratio in report["ratios"].items():
    target = report["targets"][name]
    print(f"{name}: {ratio:.3f} (target <= {target:.2f})")

  _harness.write_json(report, args.out)
  return report


if __name__ == "__main__":
  main()
