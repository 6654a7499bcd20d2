"""Where the hypergradient points at constant rates: ``python -m benchmarks.cosine_sign``.

HD's default rule (``hyper_lr=None``) moves its rate by
``exp(0.05 * drive_t)``, where the drive is the cosine between the last
direction ``u_{t-1}`` and the new gradient ``g_t`` (the sign of Baydin et
al.'s hypergradient, flipped), divided by its running root mean square and
clipped to [-1, 1] (``optax_lr.hypergradient``'s standardisation). So the
rate goes up where the mean drive is positive and down where it is negative,
whatever the rate is now.

This script trains each task's direction (the robustness benchmark's
momentum, or Adam's) at constant rates, with the robustness benchmark's
model, batches and epochs, and records at every step the cosine that HD
reads, and the same cosine against a longer memory of past directions (an
exponential average ``d_t = rho d_{t-1} + (1 - rho) u_t``; ``rho = 0`` is
HD's). It prints, per task and rate, the final held-out loss and each
memory's mean standardised drive over the run after its first sixth (the
first epochs, where every rate starts from the untrained model). A rate
whose drive is negative is one that HD's rule leaves, downwards; if the
drive is negative at every rate from a good one upward, no rule driven by
the sign of this cosine can hold the rate there::

    python -m benchmarks.cosine_sign
    python -m benchmarks.cosine_sign --datasets digits_cnn --rates 0.1 1 3 --rhos 0 0.99

``--noise-free`` adds two cosines that take HD's apart, at one more
gradient a step (a diagnostic: HD itself reads one gradient). At every step
the gradient ``b_t`` of an independent batch (a second shuffle of the
training set) is taken at the same params, and a shadow direction ``v_t``
is run on those gradients, with its own state, beside the one that moves
the params:

* "independent batch", ``cos(u_{t-1}, b_t)``: HD's cosine without the
  anticorrelation of two batches of one shuffle (disjoint sets of one
  epoch); the noise of ``u_{t-1}``'s batch, which moved the params to where
  ``b_t`` is read, is still in it;
* "noise-free", ``cos(v_{t-1}, g_t)``: no batch's noise in ``v`` ever moved
  the params, so what is left is the mean gradients' agreement (to first
  order ``|grad f|^2 - rate grad f' H grad f`` against HD's further
  ``- rate tr(H Sigma)``, Sigma the covariance of the direction's noise).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_lr
from benchmarks import _methods
from benchmarks import _report
from benchmarks import _train
from benchmarks import robustness
from optax_lr import hypergradient
from optax_lr._tree import tree_cosine

DATASETS = ("digits", "mnist1d", "teacher_student", "digits_cnn", "mnist1d_cnn")
RATES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
RHOS = (0.0, 0.9, 0.99)
# The drive is averaged after this share of the run: the first epochs
# start from the untrained model, where every rate's drive is positive.
SKIP = 1 / 6
# The independent batches of ``--noise-free`` are the shuffles of this seed
# offset: independent of the run's own, so their noise is uncorrelated with it.
INDEPENDENT_SEED_OFFSET = 1000
NOISE_FREE_LABELS = ("independent batch", "noise-free")


def standardised(cosines: np.ndarray, decay: float = hypergradient.HYPERGRADIENT_SCALE_DECAY):
  """HD's standardised drive from its raw cosines, step by step (float64).

  ``s_t = c_t^2`` at the first nonzero square, ``decay s_{t-1} + (1 - decay)
  c_t^2`` after it; the drive is ``clip(c_t / sqrt(s_t), -1, 1)``, and 0
  while every square so far is 0.
  """
  scale = 0.0
  drive = np.zeros(len(cosines))
  for t, c in enumerate(np.asarray(cosines, np.float64)):
    squared = c * c
    scale = squared if scale == 0 else decay * scale + (1 - decay) * squared
    drive[t] = np.clip(c / np.sqrt(scale), -1, 1) if scale > 0 else 0.0
  return drive


def constant_rate_run(task, rate: float, rhos, seed: int = 0, noise_free: bool = False) -> dict:
  """The task's direction at a constant ``rate`` for the task's epochs.

  Returns the final held-out loss and, per ``rho``, the cosine at each step
  between the memory of past directions ``d_{t-1}`` (0 before the first
  step) and the gradient ``g_t``; with ``noise_free``, two more rows: the
  "independent batch" and "noise-free" cosines of the module docstring.
  """
  model, splits, setting = task.model, task.splits, task.setting
  direction = (setting.direction or _methods._direction)()

  def flat_orders(s):
    return _train.batch_orders(splits, setting, [s])[0][0].reshape(-1, setting.batch_size)

  orders = flat_orders(seed)
  # Without --noise-free the second gradient is never taken: the scan reads
  # the run's own batches and the shadow stays out of the carry.
  others = flat_orders(seed + INDEPENDENT_SEED_OFFSET) if noise_free else orders
  x, y = jnp.asarray(splits.x_train), jnp.asarray(splits.y_train)
  decays = jnp.asarray(rhos, jnp.float32)

  def step(carry, batches):
    params, state, memories, shadow = carry
    batch, other = batches
    grads = jax.grad(model.loss)(params, (x[batch], y[batch]))
    cosines = [tree_cosine(memory, grads) for memory in memories]
    u, state = direction.update(grads, state, params)
    if noise_free:
      shadow_state, v_before, u_before = shadow
      independent = jax.grad(model.loss)(params, (x[other], y[other]))
      cosines += [tree_cosine(u_before, independent), tree_cosine(v_before, grads)]
      v, shadow_state = direction.update(independent, shadow_state, params)
      shadow = (shadow_state, v, u)
    params = optax.apply_updates(params, jax.tree.map(lambda d: -rate * d, u))
    memories = tuple(
      jax.tree.map(lambda m, d: rho * m + (1 - rho) * d, memory, u)
      for rho, memory in zip(decays, memories)
    )
    return (params, state, memories, shadow), jnp.stack(cosines)

  @jax.jit
  def run(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    shadow = (direction.init(params), zeros, zeros) if noise_free else ()
    carry = (params, direction.init(params), tuple(zeros for _ in rhos), shadow)
    (params, *_), cosines = jax.lax.scan(step, carry, (orders, others))
    test = model.loss(params, (jnp.asarray(splits.x_test), jnp.asarray(splits.y_test)))
    return test, cosines.T

  test_loss, cosines = run(model.init(jax.random.PRNGKey(seed)))
  return dict(test_loss=float(test_loss), cosines=np.asarray(cosines, np.float64))


def mean_drive(cosines: np.ndarray) -> float:
  """The mean standardised drive after the run's first :data:`SKIP`."""
  drive = standardised(cosines)
  return float(drive[int(len(drive) * SKIP) :].mean())


def crossing(rates, drives) -> float | None:
  """The lowest rate where the mean drive turns from positive to not.

  Interpolated between the two rates around the turn, linearly in the
  logarithm of the rate: where HD's rule would settle on this task if the
  drive at a rate did not change as the run goes on. ``None`` without a
  turn. ``rates`` ascending; NaN drives (runs that diverged) are skipped.
  """
  points = [(r, d) for r, d in zip(rates, drives) if np.isfinite(d)]
  for (low, above), (high, below) in zip(points, points[1:]):
    if above > 0 >= below:
      share = above / (above - below)
      return float(np.exp(np.log(low) + share * (np.log(high) - np.log(low))))
  return None


def columns(report: dict) -> list:
  """A report's cosine labels (reports before ``--noise-free``: its rhos)."""
  return report.get("columns") or [f"rho = {rho:g}" for rho in report["rhos"]]


def table(name: str, runs: dict, labels) -> str:
  """Markdown: per rate, the held-out loss and each cosine's mean drive.

  ``labels``: the column of each cosine (``rho = 0.9``, ``noise-free``).
  """
  finite = {rate: run for rate, run in runs.items() if np.isfinite(run["test_loss"])}
  best = min(finite, key=lambda rate: finite[rate]["test_loss"], default=None)
  head = "| rate | held-out loss | " + " | ".join(f"drive, {label}" for label in labels) + " |"
  title = f"**{name}** (best constant rate {best:g})" if best is not None else f"**{name}**"
  lines = [title, "", head, "|---" * (2 + len(labels)) + "|"]
  for rate, run in runs.items():
    # A run that diverged has no drive to read (its cosines turn NaN).
    drives = " | ".join(f"{d:+.2f}" if rate in finite else "diverged" for d in run["mean_drive"])
    lines.append(f"| {rate:g} | {run['test_loss']:.4f} | {drives} |")
  rates = sorted(finite)
  turns = []
  for i in range(len(labels)):
    drives = [finite[r]["mean_drive"][i] for r in rates]
    turn = crossing(rates, drives)
    if turn is not None:
      turns.append(f"{turn:.2g}")
    elif rates and all(d <= 0 for d in drives):
      turns.append(f"below {rates[0]:g}")
    elif rates and all(d > 0 for d in drives):
      turns.append(f"above {rates[-1]:g}")
    else:
      turns.append("-")
  lines.append("| drive turns negative near | | " + " | ".join(turns) + " |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
  parser.add_argument("--direction", choices=sorted(robustness.DIRECTIONS), default="task")
  parser.add_argument("--rates", nargs="+", type=float, default=list(RATES))
  parser.add_argument("--rhos", nargs="+", type=float, default=list(RHOS))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--noise-free",
    action="store_true",
    help="add the independent-batch and noise-free cosines (module docstring)",
  )
  parser.add_argument("--quick", action="store_true", help="tiny tasks, for the tests")
  parser.add_argument("--out", help="write the report (JSON) here")
  args = parser.parse_args(argv)
  for rho in args.rhos:
    if not 0 <= rho < 1:
      raise ValueError(f"--rhos: each rho must be in [0, 1), got {rho}")
  for rate in args.rates:
    if not rate > 0:
      raise ValueError(f"--rates: each rate must be positive, got {rate}")
  if args.quick:
    _train.fast_compilation()
  report = dict(
    command="python -m benchmarks.cosine_sign " + " ".join(sys.argv[1:] if argv is None else argv),
    library=optax_lr.__version__,
    machine=_report.machine(),
    direction=args.direction,
    rhos=args.rhos,
    noise_free=args.noise_free,
    seed=args.seed,
    datasets={},
  )
  labels = columns(report) + (list(NOISE_FREE_LABELS) if args.noise_free else [])
  report["columns"] = labels
  start = time.perf_counter()
  for name in args.datasets:
    task = robustness.task(name, args.quick, None, direction=args.direction)
    runs = {}
    for rate in args.rates:
      run = constant_rate_run(task, rate, args.rhos, args.seed, args.noise_free)
      runs[rate] = dict(
        test_loss=run["test_loss"], mean_drive=[mean_drive(c) for c in run["cosines"]]
      )
    report["datasets"][name] = {str(rate): run for rate, run in runs.items()}
    print(table(name, runs, labels), end="\n\n", flush=True)
  if args.out:
    return _report.finish(report, start, args.out)
  report["wall_s"] = time.perf_counter() - start
  return report


if __name__ == "__main__":
  main()
