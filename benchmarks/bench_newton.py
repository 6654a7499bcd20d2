"""Per-step cost of `newton_lr` against `optax.adam`, measured side by side.

Both carry two param-sized buffers: Adam its moments, `newton_lr` over plain SGD
its window sum and the previous window's sum. The target: a donated train step
of `newton_lr(direction=optax.identity())` costs at most 1.10x the same step
with `optax.adam`. For information, also: `newton_lr` over `scale_by_adam`
(four buffers) against Adam, plain SGD, and `newton_lr` with a window of one
step (the window-end work — three inner products, the rate update, the swap —
on every call), which bounds what the `lax.cond` saves.

The model is the MLP 784-500-500-500-10 with batch 100 (MNIST-sized, random
data); `--quick` uses a tiny MLP for a smoke run. The windows are a third of a
600-step epoch (200 steps), the paper's p.

Run:  python -m benchmarks.bench_newton [--quick]
Writes results/bench_newton.json.
"""

from __future__ import annotations

import argparse
import platform

import jax
import optax

import optax_lr
from benchmarks import _harness


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny model, few rounds")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--steps-per-round", type=int, default=None)
  parser.add_argument("--out", default="results/bench_newton.json")
  args = parser.parse_args(argv)

  if args.quick:
    sizes, batch_size = (64, 32, 32, 10), 16
    rounds, steps = 5, 10
  else:
    sizes, batch_size = (784, 500, 500, 500, 10), 100
    rounds, steps = 15, 20
  rounds = args.rounds or rounds
  steps = args.steps_per_round or steps
  steps_per_epoch = 600

  candidates = [
      _harness.Candidate("adam", optax.adam(1e-3)),
      _harness.Candidate(
          "newton_sgd",
          optax_lr.newton_lr(0.1, steps_per_epoch=steps_per_epoch,
                             direction=optax.identity())),
      _harness.Candidate(
          "newton_adam",
          optax_lr.newton_lr(1e-3, steps_per_epoch=steps_per_epoch,
                             direction=optax.scale_by_adam())),
      _harness.Candidate("sgd", optax.sgd(0.1)),
      _harness.Candidate(
          "newton_sgd_every_step",
          optax_lr.newton_lr(0.1, update_every=1, direction=optax.identity())),
  ]
  key = jax.random.PRNGKey(0)
  batch = _harness.random_batch(jax.random.PRNGKey(1), batch_size, sizes[0], sizes[-1])
  times = _harness.time_candidates(
      candidates,
      lambda: _harness.init_mlp(key, sizes),
      _harness.mlp_loss,
      batch,
      rounds=rounds,
      steps_per_round=steps,
  )
  print(f"MLP {'-'.join(map(str, sizes))}, batch {batch_size}, "
        f"{rounds} rounds x {steps} steps, backend {jax.default_backend()}")
  print(_harness.ratio_table(times, "adam"))
  ratios = {name: sec / times["adam"] for name, sec in times.items()}
  target = 1.10
  verdict = "meets" if ratios["newton_sgd"] <= target else "misses"
  print(f"newton_sgd / adam = {ratios['newton_sgd']:.3f} ({verdict} the "
        f"{target:.2f}x target)")
  print(f"newton_adam / adam = {ratios['newton_adam']:.3f} (information)")

  _harness.write_json({
        "benchmark": "newton",
        "model": list(sizes),
        "batch_size": batch_size,
        "rounds": rounds,
        "steps_per_round": steps,
        "window": "steps_per_epoch=600, fraction=1/3 -> 200 steps",
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": platform.platform(),
        "seconds_per_step": times,
        "ratio_to_adam": ratios,
        "target": {"newton_sgd / adam": target, "met": ratios["newton_sgd"] <= target},
    }, args.out)


if __name__ == "__main__":
  main()
