"""Where the safety net's per-step cost comes from: compiled kernels, paired timings.

Issue 11 bounds the safety net's cost: on a step that does not save a
checkpoint, a method with its net on may cost at most 1.05x the same method
with ``safety_net=False`` (``benchmarks.speed``, ``NET_BOUND``). On a shared
CPU one run of ``benchmarks.speed`` cannot resolve that bound, so this
script takes the net apart, on the models of ``benchmarks.speed`` (the
optax_lr methods over the model's direction as there, plain SGD or AdamW's;
``--direction momentum`` or ``adam`` puts them over ``optax.trace(0.9)`` or
``optax.scale_by_adam()``, whose state a rollback restores):

* **kernels**: the compiled train step that ``benchmarks.speed`` times (a
  step that does not save) with the net on and off, its top-level
  operations counted: *scalar* kernels (the net's decisions: fusions,
  copies and conditionals on scalars) and *array* kernels (a pass over
  params-, gradient- or activation-sized data), and among those the array
  copies. An extra array kernel is an extra pass over memory; an extra
  scalar kernel is a launch (on a GPU) or a thunk (on XLA's CPU runtime).
* **select**: a plain SGD step against the same step through the net's
  rollback select, ``p + where(rollback, checkpoint - p, -lr * g)`` with
  ``rollback`` a runtime False (``sgd_rollback_select``): what reading a
  params-sized checkpoint on every step costs.
* **net**: each method of ``speed.NET_METHODS`` with its net on against
  off, timed side by side with the two above (the ratio ``benchmarks.speed``
  reports, here with more repeats and fewer candidates).
* **noise floor**: the first method's net-off step compiled a second time
  and timed as one more candidate, against the first compilation: the same
  program, so its ratio is 1 but for the machine's noise and the program's
  place in the interleaving. A net ratio within that ratio's range is not
  resolved by the run.

Ratios follow the project's timing rule (``benchmarks._harness``): steps
interleaved round by round in one process, each summarised by its median;
a ratio is the median over repeats of the per-repeat ratio, with the range
of the repeats.

Usage::

    python -m benchmarks.net_cost                    # the MLP, 7 repeats
    python -m benchmarks.net_cost --models mlp transformer --methods hd newton_lr
    python -m benchmarks.net_cost --quick            # a smoke run
    python -m benchmarks.net_cost --direction adam   # the methods over Adam

Writes ``results/net_cost.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _harness
from benchmarks import _methods
from benchmarks import _report
from benchmarks import speed
from optax_lr import _checkpoint

SELECT = "sgd_rollback_select"
# --direction: the optax_lr methods' direction ("model": the model's, as in
# benchmarks.speed: plain SGD on the MLP and CNN, AdamW's on the Transformer).
DIRECTIONS = {
  "model": None,
  "momentum": lambda: optax.trace(0.9),
  "adam": optax.scale_by_adam,
}
# Appended to a candidate's name for its second compilation (the noise floor).
AGAIN_SUFFIX = "_again"
# Top-level HLO operations that run nothing (bookkeeping of buffers).
_NOT_KERNELS = ("parameter", "get-tuple-element", "tuple", "constant", "bitcast", "opt-barrier")
_OPERATION = re.compile(r"^\s*(?:ROOT )?%\S+ = (\S+|\([^=]*\)) ([\w-]+)\(")


class RollbackSelectState(NamedTuple):
  checkpoint: Any  # params-like: what a rollback would land on.
  rollback: jax.Array  # [] bool, always False: a runtime value XLA cannot fold.


def sgd_rollback_select(learning_rate: float) -> optax.GradientTransformation:
  """SGD whose update goes through the safety net's rollback select.

  The update is ``_checkpoint.step_or_rollback``'s, the select every net
  method builds: ``where(rollback, checkpoint - params, -learning_rate * g)``
  leaf by leaf. ``rollback`` is never set, so this is SGD plus one read of a
  params-sized checkpoint.
  """

  def init_fn(params):
    return RollbackSelectState(_checkpoint.fresh_copy(params), jnp.zeros([], jnp.bool_))

  def update_fn(updates, state, params=None):
    scale = jnp.asarray(-learning_rate, jnp.float32)
    updates = _checkpoint.step_or_rollback(
      state.rollback, updates, scale, state.checkpoint, params, updates
    )
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def count_kernels(hlo_text: str) -> dict:
  """Top-level operations of a compiled HLO module's entry computation.

  Returns ``{"scalar": n, "array": n, "array_copies": n}``: operations that
  run (not parameters, tuples, constants, bitcasts or barriers) whose result
  is one scalar or a tuple of scalars, the others, and the array copies.
  """
  entry = hlo_text[hlo_text.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  counts = {"scalar": 0, "array": 0, "array_copies": 0}
  for line in entry.splitlines()[1:]:
    match = _OPERATION.match(line)
    if not match or match.group(2) in _NOT_KERNELS:
      continue
    shapes = re.findall(r"\[([^\]]*)\]", match.group(1))
    if all(shape == "" for shape in shapes):
      counts["scalar"] += 1
    else:
      counts["array"] += 1
      counts["array_copies"] += match.group(2) == "copy"
  return counts


def compiled_kernels(cand: _harness.Candidate, init_params, loss_fn, batch) -> dict:
  """:func:`count_kernels` of the step ``benchmarks.speed`` times for ``cand``."""
  step = _harness.make_train_step(cand.tx, loss_fn, cand.needs, hvp=cand.hvp)
  params = init_params()
  state = cand.tx.init(params)
  # The no-save program of `no_saves=True`: `since_save` a runtime 0.
  since_save = jnp.zeros([], jnp.int32)
  text = step.lower(params, state, batch, since_save).compile().as_text()
  return count_kernels(text)


def _ratio(times: list[dict], name: str, base: str) -> dict:
  per_repeat = [t[name] / t[base] for t in times]
  return {
    "median": float(np.median(per_repeat)),
    "min": float(min(per_repeat)),
    "max": float(max(per_repeat)),
    "per_repeat": per_repeat,
  }


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny models, 1 repeat, few rounds")
  parser.add_argument("--models", nargs="+", default=["mlp"], choices=["mlp", "cnn", "transformer"])
  parser.add_argument(
    "--methods", nargs="+", default=list(speed.NET_METHODS), choices=list(speed.NET_METHODS)
  )
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument(
    "--direction",
    default="model",
    choices=list(DIRECTIONS),
    help="the optax_lr methods' direction (default: the model's, as benchmarks.speed)",
  )
  parser.add_argument("--out", default="results/net_cost.json")
  args = parser.parse_args(argv)
  repeats = args.repeats or (1 if args.quick else 7)
  rounds, steps = (3, 2) if args.quick else (21, 10)

  start = time.perf_counter()
  report: dict = {
    "command": " ".join(
      ["python -m benchmarks.net_cost"] + (sys.argv[1:] if argv is None else list(argv))
    ),
    "machine": _report.machine(),
    "repeats": repeats,
    "rounds": rounds,
    "steps_per_round": steps,
    "net_bound": speed.NET_BOUND,
    "direction": args.direction,
    "models": {},
  }
  all_models = speed.models(args.quick)
  direction = DIRECTIONS[args.direction]
  for model_name in args.models:
    init_params, loss_fn, batch, description = all_models[model_name]
    adam = model_name in speed.ADAM_MODELS
    cands = [
      _harness.Candidate("sgd", optax.sgd(_methods.SPEED_LR)),
      _harness.Candidate(SELECT, sgd_rollback_select(_methods.SPEED_LR)),
    ] + speed.candidates(args.methods, adam=adam, direction=direction)
    # The noise floor: the first net-off twin built and compiled once more.
    floor_base = args.methods[0] + speed.NET_OFF_SUFFIX
    twins = speed.candidates(args.methods[:1], adam=adam, direction=direction)
    twin = {c.name: c for c in twins}[floor_base]
    cands.append(dataclasses.replace(twin, name=floor_base + AGAIN_SUFFIX))
    print(
      f"\n{description}, optax_lr methods over {args.direction}'s direction: {len(cands)} "
      f"candidates, {repeats} x {rounds} rounds of {steps} steps"
    )

    kernels = {}
    for cand in cands:
      if cand.name in args.methods or cand.name.endswith(speed.NET_OFF_SUFFIX):
        kernels[cand.name] = compiled_kernels(cand, init_params, loss_fn, batch)
    times = []
    for repeat in range(repeats):
      times.append(
        _harness.time_candidates(
          cands, init_params, loss_fn, batch, rounds=rounds, steps_per_round=steps, seed=repeat
        )
      )
    select = _ratio(times, SELECT, "sgd")
    net = {m: _ratio(times, m, m + speed.NET_OFF_SUFFIX) for m in args.methods}
    floor = _ratio(times, floor_base + AGAIN_SUFFIX, floor_base)

    rows = []
    for m in args.methods:
      on, off = kernels[m], kernels[m + speed.NET_OFF_SUFFIX]
      r = net[m]
      rows.append(
        [
          m,
          f"{off['scalar']} -> {on['scalar']}",
          f"{off['array']} -> {on['array']}",
          f"{off['array_copies']} -> {on['array_copies']}",
          f"{_report.fmt(r['median'])} ({_report.fmt(r['min'])}-{_report.fmt(r['max'])})",
        ]
      )
    print(
      _report.table(
        [
          "method",
          "scalar kernels off -> on",
          "array kernels off -> on",
          "array copies off -> on",
          f"net on / net off (<= {speed.NET_BOUND})",
        ],
        rows,
      )
    )
    print(
      f"  {SELECT} / sgd (reading a params-sized checkpoint): "
      f"{_report.fmt(select['median'])} ({_report.fmt(select['min'])}-"
      f"{_report.fmt(select['max'])})"
    )
    print(
      f"  noise floor, {floor_base}{AGAIN_SUFFIX} / {floor_base} (one program compiled "
      f"twice): {_report.fmt(floor['median'])} ({_report.fmt(floor['min'])}-"
      f"{_report.fmt(floor['max'])})"
    )
    report["models"][model_name] = {
      "description": description,
      "kernels": kernels,
      "median_seconds_per_step": times,
      "select_over_sgd": select,
      "net_on_over_off": net,
      "noise_floor": dict(floor, program=floor_base),
    }
  return _report.finish(report, start, args.out)


if __name__ == "__main__":
  main()
