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
* **decisions**: each method's net-off twin plus the net's scalar
  decisions on the call's loss, with no checkpoint to save, restore or
  select (:func:`net_decisions`), timed against the twin: what the net's
  scalar kernels cost inside a train step. (A scalar kernel timed in a
  program of scalars alone cost 0.43 us on a CPU; inside the MLP's step the
  net's decisions cost about 2 us per kernel there: RESULTS, "The net's
  scalar decisions, timed in the step".)
* **select**: a plain SGD step against the same step through the net's
  rollback select, ``p + where(rollback, checkpoint - p, -lr * g)`` with
  ``rollback`` a runtime False (``sgd_rollback_select``): what reading a
  params-sized checkpoint on every step costs.
* **net**: each method of ``speed.NET_METHODS`` with its net on against
  off, timed side by side with the three above (the ratio ``benchmarks.speed``
  reports, here with more repeats and fewer candidates). The net-off twin
  runs the default's own rule (``speed.SAME_RULE_NET_OFF``): MARTHE's is
  kappa selection's standardised cosine at a fixed kappa of 0, where
  ``benchmarks.speed`` times the additive rule, whose step skips the cosine.
* **noise floor**: the first method's net-off step compiled a second time
  and timed as one more candidate, against the first compilation: the same
  program, so its ratio is 1 but for the machine's noise and the program's
  place in the interleaving. A net ratio within that ratio's range is not
  resolved by the run.

Ratios follow the project's timing rule (``benchmarks._harness``): steps
interleaved round by round in one process, each summarised by its median;
a ratio is the median over repeats of the per-repeat ratio, with the range
of the repeats.

**Across processes** (``--processes N``). The medians of one process move
together: the same programs, run again in a new process (compiled afresh,
their buffers placed anew), gave net ratios whose 7-repeat medians differed
by up to 0.1, and a program against its own second compilation spans
0.94-1.11 in a single repeat. More repeats in one process do not shrink that
spread, so ``--processes N`` runs the whole measurement in ``N`` fresh
processes, one after the other, and reads one median per process. Each
ratio's verdict against the bound then comes from a distribution-free
confidence interval for the median of those ``N`` values: the order
statistics ``x_(k) <= median <= x_(N+1-k)``, with ``k`` the largest for
which the coverage ``1 - 2 P(B <= k - 1)``, ``B ~ Binomial(N, 1/2)``, is at
least 95 % (``CONFIDENCE``; ``N >= 6`` is needed for any interval). The
bound is *met* where the interval lies at or below it, *missed* where it
lies above, and *not resolved* where it straddles it. The noise floor's
interval should hold 1. The interval covers the spread between processes
of one command on one host, no more: HD-mult's MLP net read 1.043 [1.014,
1.063] over ten processes of a six-method run on one host and 1.014
[0.995, 1.020] over twenty of a two-method run on another, so a verdict
holds for the host and the candidates it was taken with.

Usage::

    python -m benchmarks.net_cost                    # the MLP, 7 repeats
    python -m benchmarks.net_cost --models mlp transformer --methods hd newton_lr
    python -m benchmarks.net_cost --quick            # a smoke run
    python -m benchmarks.net_cost --direction adam   # the methods over Adam
    python -m benchmarks.net_cost --processes 10 --repeats 3   # a verdict per method

Writes ``results/net_cost.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
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
# Appended to a method's name for its net-off twin plus the net's decisions
# (:func:`net_decisions`).
DECISIONS_SUFFIX = "_net_decisions"
# --processes: the coverage of the interval for the median of the
# per-process medians that a verdict against the bound reads.
CONFIDENCE = 0.95
# Top-level HLO operations that run nothing (bookkeeping of buffers).
# Results of at most this many entries are scalar work: the safety net packs
# its fifteen scalars into vectors of 5 and 10 (`_checkpoint.SafetyNetState`).
BOOKKEEPING_SIZE = _checkpoint.BOOKKEEPING_SIZE
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


class NetDecisionsState(NamedTuple):
  inner: Any  # the wrapped (net-off) optimizer's state.
  # A safety net with an empty checkpoint: its scalars, no array.
  safety: _checkpoint.SafetyNetState


def net_decisions(tx: optax.GradientTransformation, rate: float) -> optax.GradientTransformation:
  """``tx`` (a method with its net off) plus the net's decisions, and nothing else.

  Every call runs the safety net's scalar work on the call's loss
  (``_checkpoint.net_decide`` and ``net_update``: the divergence tests, the
  running levels, the counters) in a state of its own, and the decisions
  feed nothing array-sized: the checkpoint is empty (no params, no direction
  state), nothing is saved or restored, and the updates are ``tx``'s. Timed
  against ``tx``, it measures what the net's scalar decisions cost inside a
  train step, apart from its array work (the save's cond, the restore's
  cond, the rollback select). The decisions are the generic net's, on the
  loss alone: a method's own tests (HD's band, MARTHE's kappa) are not in
  them, nor the dead-model test, whose count of the gradient's live leaves
  the twin has no pass to take for free; so it reads somewhat low.
  """

  def init_fn(params):
    return NetDecisionsState(tx.init(params), _checkpoint.net_init((), (), jnp.float32(rate)))

  def update_fn(updates, state, params=None, *, value=None, **extra_args):
    updates, inner = tx.update(updates, state.inner, params, value=value, **extra_args)
    net = state.safety
    save, rollback, cost = _checkpoint.net_decide(net, value, jnp.asarray(True))
    net = _checkpoint.net_update(net, net.checkpoint, save, rollback, cost)
    return updates, NetDecisionsState(inner, net)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def count_kernels(hlo_text: str) -> dict:
  """Top-level operations of a compiled HLO module's entry computation.

  Returns ``{"scalar": n, "array": n, "array_copies": n}``: operations that
  run (not parameters, tuples, constants, bitcasts or barriers) whose result
  is a scalar, or a vector of at most :data:`BOOKKEEPING_SIZE` entries (the
  safety net's packed scalars), or a tuple of them; the others, which pass
  over arrays; and the copies among those.
  """
  entry = hlo_text[hlo_text.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  counts = {"scalar": 0, "array": 0, "array_copies": 0}
  for line in entry.splitlines()[1:]:
    match = _OPERATION.match(line)
    if not match or match.group(2) in _NOT_KERNELS:
      continue
    shapes = re.findall(r"\[([^\]]*)\]", match.group(1))
    sizes = [math.prod(int(d) for d in shape.split(",") if d) for shape in shapes]
    if all(size <= BOOKKEEPING_SIZE for size in sizes):
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


def median_interval(values, confidence: float = CONFIDENCE) -> dict:
  """A distribution-free confidence interval for the median of ``values``.

  For ``n`` independent draws, the interval ``[x_(k), x_(n+1-k)]`` between
  order statistics holds the population median with probability ``1 - 2
  P(B <= k - 1)``, ``B ~ Binomial(n, 1/2)`` (the sign test's interval). ``k``
  is the largest with that coverage at least ``confidence``.

  Returns ``{"median", "low", "high", "coverage", "values"}``; ``low`` and
  ``high`` are ``None`` (and ``coverage`` 0) when ``n`` draws are too few
  for ``confidence`` (fewer than 6 at 95 %).
  """
  ordered = sorted(float(v) for v in values)
  n = len(ordered)
  low = high = None
  coverage = 0.0
  below = 0  # P(B <= k - 1) * 2^n, accumulated as k grows
  for k in range(1, n // 2 + 1):
    below += math.comb(n, k - 1)
    covers = 1.0 - 2.0 * below / 2.0**n
    if covers < confidence:
      break
    low, high, coverage = ordered[k - 1], ordered[n - k], covers
  return {
    "median": float(np.median(ordered)),
    "low": low,
    "high": high,
    "coverage": coverage,
    "values": [float(v) for v in values],
  }


def verdict(interval: dict, bound: float) -> str:
  """``"met"``, ``"missed"`` or ``"not resolved"``: where ``interval`` (from
  :func:`median_interval`) lies against ``bound``."""
  if interval["high"] is not None and interval["high"] <= bound:
    return "met"
  if interval["low"] is not None and interval["low"] > bound:
    return "missed"
  return "not resolved"


def across_processes(runs: list[dict], bound: float = speed.NET_BOUND) -> dict:
  """Per model: each net ratio's, each decisions twin's, the select's and the
  noise floor's per-process medians, the interval for their median, and the
  nets' verdicts.

  ``runs``: the reports of one measurement run in separate processes (the
  same models, methods and direction).
  """
  out = {}
  for model, first in runs[0]["models"].items():
    per = [r["models"][model] for r in runs]
    net = {}
    for method in first["net_on_over_off"]:
      interval = median_interval([p["net_on_over_off"][method]["median"] for p in per])
      net[method] = dict(interval, verdict=verdict(interval, bound))
    floor = median_interval([p["noise_floor"]["median"] for p in per])
    floor["holds_1"] = floor["low"] is not None and floor["low"] <= 1.0 <= floor["high"]
    out[model] = {
      "description": first["description"],
      "net_on_over_off": net,
      "decisions_over_off": {
        method: median_interval([p["decisions_over_off"][method]["median"] for p in per])
        for method in first["net_on_over_off"]
      },
      "select_over_sgd": median_interval([p["select_over_sgd"]["median"] for p in per]),
      "noise_floor": dict(floor, program=first["noise_floor"]["program"]),
    }
  return out


def _range_text(ratio: dict) -> str:
  """A ratio of one process: its median over repeats, and their range."""
  return f"{_report.fmt(ratio['median'])} ({_report.fmt(ratio['min'])}-{_report.fmt(ratio['max'])})"


def _interval_text(interval: dict) -> str:
  if interval["low"] is None:
    return f"{_report.fmt(interval['median'])} (too few processes for an interval)"
  return (
    f"{_report.fmt(interval['median'])} [{_report.fmt(interval['low'])}, "
    f"{_report.fmt(interval['high'])}] ({100 * interval['coverage']:.1f} %)"
  )


def _print_across(summary: dict) -> None:
  for model in summary.values():
    print(f"\n{model['description']}: median over processes [confidence interval]")
    rows = [
      [
        m,
        " ".join(_report.fmt(v) for v in r["values"]),
        _interval_text(r),
        r["verdict"],
        _interval_text(model["decisions_over_off"][m]),
      ]
      for m, r in model["net_on_over_off"].items()
    ]
    print(
      _report.table(
        [
          "method",
          "net on / net off, per process",
          "median [interval]",
          f"<= {speed.NET_BOUND}",
          "net decisions / net off",
        ],
        rows,
      )
    )
    print(f"  {SELECT} / sgd: {_interval_text(model['select_over_sgd'])}")
    floor = model["noise_floor"]
    print(
      f"  noise floor ({floor['program']} compiled twice): {_interval_text(floor)}; "
      f"holds 1: {'yes' if floor['holds_1'] else 'no'}"
    )


def _run_processes(args, argv_for_child, command: str, start) -> dict:
  """``args.processes`` fresh runs of this script, one after the other."""
  machine = _report.machine()
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(args.processes):
      out = os.path.join(tmp, f"run{i}.json")
      print(f"process {i + 1}/{args.processes}", flush=True)
      subprocess.run(
        [sys.executable, "-m", "benchmarks.net_cost", *argv_for_child, "--out", out],
        check=True,
        stdout=subprocess.DEVNULL,
      )
      with open(out) as f:
        runs.append(json.load(f))
  summary = across_processes(runs)
  _print_across(summary)
  report = {
    "command": command,
    "machine": dict(machine, load_average_at_end=_report.machine()["load_average_1_5_15min"]),
    "processes": args.processes,
    "confidence": CONFIDENCE,
    "net_bound": speed.NET_BOUND,
    "across_processes": summary,
    "runs": runs,
  }
  return _report.finish(report, start, args.out)


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
  parser.add_argument(
    "--processes",
    type=int,
    default=1,
    help="run the measurement in this many fresh processes and judge each "
    "ratio by the median over them (module docstring)",
  )
  parser.add_argument("--out", default="results/net_cost.json")
  args = parser.parse_args(argv)
  if args.processes < 1:
    raise ValueError(f"--processes must be >= 1, got {args.processes}")
  repeats = args.repeats or (1 if args.quick else 7)
  rounds, steps = (3, 2) if args.quick else (21, 10)

  start = time.perf_counter()
  command = " ".join(
    ["python -m benchmarks.net_cost"] + (sys.argv[1:] if argv is None else list(argv))
  )
  if args.processes > 1:
    child = (
      ["--models", *args.models, "--methods", *args.methods, "--direction", args.direction]
      + ["--repeats", str(repeats)]
      + (["--quick"] if args.quick else [])
    )
    return _run_processes(args, child, command, start)
  report: dict = {
    "command": command,
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
    ] + speed.candidates(args.methods, adam=adam, direction=direction, same_rule_twins=True)
    # The noise floor: the first net-off twin built and compiled once more.
    floor_base = args.methods[0] + speed.NET_OFF_SUFFIX
    twins = speed.candidates(args.methods[:1], adam=adam, direction=direction, same_rule_twins=True)
    twin = {c.name: c for c in twins}[floor_base]
    cands.append(dataclasses.replace(twin, name=floor_base + AGAIN_SUFFIX))
    # Each method's net-off twin plus the net's scalar decisions.
    offs = {c.name: c for c in cands}
    for m in args.methods:
      off = offs[m + speed.NET_OFF_SUFFIX]
      cands.append(
        dataclasses.replace(
          off, name=m + DECISIONS_SUFFIX, tx=net_decisions(off.tx, _methods.SPEED_LR)
        )
      )
    print(
      f"\n{description}, optax_lr methods over {args.direction}'s direction: {len(cands)} "
      f"candidates, {repeats} x {rounds} rounds of {steps} steps"
    )

    kernels = {}
    for cand in cands:
      if cand.name in args.methods or cand.name.endswith((speed.NET_OFF_SUFFIX, DECISIONS_SUFFIX)):
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
    decisions = {
      m: _ratio(times, m + DECISIONS_SUFFIX, m + speed.NET_OFF_SUFFIX) for m in args.methods
    }
    floor = _ratio(times, floor_base + AGAIN_SUFFIX, floor_base)

    rows = []
    for m in args.methods:
      on, off = kernels[m], kernels[m + speed.NET_OFF_SUFFIX]
      only = kernels[m + DECISIONS_SUFFIX]
      rows.append(
        [
          m,
          f"{off['scalar']} -> {only['scalar']} -> {on['scalar']}",
          f"{off['array']} -> {only['array']} -> {on['array']}",
          f"{off['array_copies']} -> {on['array_copies']}",
          _range_text(decisions[m]),
          _range_text(net[m]),
        ]
      )
    print(
      _report.table(
        [
          "method",
          "scalar kernels off -> decisions -> on",
          "array kernels off -> decisions -> on",
          "array copies off -> on",
          "net decisions / net off",
          f"net on / net off (<= {speed.NET_BOUND})",
        ],
        rows,
      )
    )
    print(f"  {SELECT} / sgd (reading a params-sized checkpoint): {_range_text(select)}")
    print(
      f"  noise floor, {floor_base}{AGAIN_SUFFIX} / {floor_base} (one program compiled "
      f"twice): {_range_text(floor)}"
    )
    report["models"][model_name] = {
      "description": description,
      "kernels": kernels,
      "median_seconds_per_step": times,
      "select_over_sgd": select,
      "net_on_over_off": net,
      "decisions_over_off": decisions,
      "noise_floor": dict(floor, program=floor_base),
    }
  return _report.finish(report, start, args.out)


if __name__ == "__main__":
  main()
