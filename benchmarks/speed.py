"""Per-step cost of every optax_lr method against optax's own, as ratios.

For each model, the jit-compiled train step (params and optimizer state
donated, ``optax_lr.apply_updates``, the extra args each method needs) of
every optax_lr method of ``benchmarks/_methods.py`` and of the optax anchors
(sgd, sgd with momentum, adam, reduce_on_plateau, prodigy, dadapt_adamw, dog,
mechanize, and plain SGD on the gradient plus one Hessian-vector product) is
timed by ``_harness.time_candidates``: all candidates interleaved round by
round in one process, each summarised by its median. The run is repeated
``--repeats`` times and each ratio is the median over the repeats.

Models: the MLP 784-500-500-500-10 with batch 100 (pure jax, ``_harness``), a
small CNN on 32x32x3 images with batch 128 (flax; two 3x3 conv + pool
blocks), and the Transformer language model of ``robustness``'s stdlib_lm
task (flax NNX; 2 layers, width 64, 4 heads, context 64 bytes, batch 16 by
default; ``--lm-*`` flags scale it up). Random data: only the cost matters
here. On the MLP and the CNN the optax_lr methods step along plain SGD
directions (the first release's setting); on the Transformer, a model trained
over Adam (``ADAM_MODELS``), along AdamW's direction
(``_methods.adamw_direction``), with optax's adamw and schedule_free_adamw
as extra anchors (``_methods.ADAM_SPEED_ANCHORS``) and each step's ratio to
adamw's reported.

Epoch-level methods (ASLR, AALR) never meet an epoch end in the timed steps
(epoch ends come from ``optax_lr.observe``, which the timed loop never
calls); ``newton_lr``'s window is 200 steps (a third of a 600-step epoch), so
its window end, a ``lax.cond``, is almost never in a timed round.

Safety net: every optax_lr method runs with its defaults, so with its safety
net on where it has one; each method of ``NET_METHODS`` whose library call
takes ``safety_net`` is also timed with ``safety_net=False``
(``<name>_net_off``; MARTHE's, whose default kappa selection needs the
net, with the kappa that selection starts from as a fixed step,
``NET_OFF_OPTIONS``), side by side with the others. Every step timed here is
one that does *not* save a checkpoint: each call starts with the net's
``since_save`` counter at 0, passed to the compiled step as a runtime
argument (``_harness.make_train_step(no_saves=True)``; the same calling
convention for every candidate), so the save ``lax.cond`` takes its identity
branch while the program stays the production one. The timed steps must not
roll back either (a rollback is a divergence, not a step cost): the script
checks each net's ``rollbacks`` counter after timing and reports it.

Targets (``TARGETS``, the first release's, measured with the net off
(``<name>_net_off``) where a method has one): HD <= 1.10x sgd(momentum=0.9);
MARTHE <= 1.15x grad+HVP+SGD; newton_lr <= 1.10x adam; ASLR and AALR <= 1.10x
sgd on steps that are not epoch ends. Safety net (``NET_BOUND``): each
method's non-saving step with the net on costs at most 1.05x the same method
with the net off; "n/a" for a method whose library call has no
``safety_net`` keyword yet. On GPU also: every method other than RTHO/MARTHE
cheaper per step than prodigy (reported on CPU for information).

Usage::

    python -m benchmarks.speed                 # the three models, 3 repeats
    python -m benchmarks.speed --models transformer
    python -m benchmarks.speed --quick         # tiny models, a smoke run
    python -m benchmarks.speed --models mlp --repeats 5

Writes ``results/speed.json`` and ``results/speed.png``.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
import optax

from benchmarks import _harness
from benchmarks import _methods
from benchmarks import _models
from benchmarks import _report
import optax_lr
from optax_lr import _checkpoint

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
# The methods with a safety net (AALR has its own checkpoint instead): each
# non-saving step with the net on costs at most NET_BOUND x the net off.
NET_METHODS = ("hd", "hd_mult", "rtho", "marthe", "newton_lr", "aslr")
NET_BOUND = 1.05
NET_OFF_SUFFIX = "_net_off"
# What a method's net-off twin needs besides safety_net=False: MARTHE's
# default kappa selection rolls back on divergence, so it needs the net; with
# the net off it takes the kappa the selection starts from, as a fixed step.
NET_OFF_OPTIONS = {
    "marthe": {"hyper_lr_step": optax_lr.hypergradient.DEFAULT_HYPER_LR_STEP},
}


# The models trained over Adam: the optax_lr methods step along AdamW's
# direction, and AdamW is an anchor.
ADAM_MODELS = ("transformer",)
ADAM_ANCHOR = "adamw"
# The Transformer's default size: robustness's stdlib_lm task.
LM_DEFAULT = dict(context=64, d_model=64, heads=4, layers=2, batch=16)
LM_QUICK = dict(context=16, d_model=16, heads=2, layers=1, batch=4)


def _has_net(method: _methods.Method) -> bool:
  return method.name in NET_METHODS and method.accepts("safety_net")


def candidates(names=None, adam: bool = False) -> list[_harness.Candidate]:
  """The anchors, every optax_lr method, and the net-off twin of each net method.

  The methods whose rate comes from the task (ASLR's range-test pipeline)
  take the same step as their raw method and are not timed again. ``adam``:
  the model trains over Adam (``ADAM_MODELS``): the optax_lr methods step
  along AdamW's direction, and the Adam anchors are timed too.
  """
  anchors = list(_methods.SPEED_ANCHORS) + (list(_methods.ADAM_SPEED_ANCHORS) if adam else [])
  methods = anchors + [m for m in _methods.OPTAX_LR_METHODS if m.rate_from_task is None]
  if names:
    methods = [m for m in methods if m.name in set(names)]
  def build(m, **options):
    # The optax_lr methods over plain SGD directions, as the first release
    # timed them against their anchors (robustness and compare use momentum),
    # or over AdamW's on a model trained over Adam.
    if m.library == "optax_lr":
      direction = _methods.adamw_direction() if adam else optax.identity()
      options = {"direction": direction, **options}
    return m.build(_methods.SPEED_LR, _methods.SPEED_STEPS_PER_EPOCH, **options)

  cands = []
  for m in methods:
    cands.append(_harness.Candidate(m.name, build(m), needs=tuple(m.needs), hvp=m.hvp,
                                    no_saves=True))
    if _has_net(m):
      off = build(m, safety_net=False, **NET_OFF_OPTIONS.get(m.name, {}))
      cands.append(_harness.Candidate(m.name + NET_OFF_SUFFIX, off,
                                      needs=tuple(m.needs), hvp=m.hvp, no_saves=True))
  return cands


def _nets(state) -> list:
  is_net = lambda x: isinstance(x, _checkpoint.SafetyNetState)
  return [x for x in jax.tree_util.tree_leaves(state, is_leaf=is_net) if is_net(x)]


def net_checks(names, states_per_repeat) -> dict:
  """Per method of ``NET_METHODS`` timed: whether its net is measurable, and why not.

  ``{name: {"status": "measured" | "n/a", "why": str, "rollbacks": int}}``; a
  method is measured when its library call takes ``safety_net``, its default
  state holds a safety net and the ``safety_net=False`` state none.
  """
  registry = {m.name: m for m in _methods.OPTAX_LR_METHODS}
  checks = {}
  for name in NET_METHODS:
    if name not in names:
      continue
    if not registry[name].accepts("safety_net"):
      checks[name] = {"status": "n/a", "why": "no safety_net keyword", "rollbacks": 0}
      continue
    on = [_nets(states[name]) for states in states_per_repeat]
    off = [_nets(states[name + NET_OFF_SUFFIX]) for states in states_per_repeat]
    if not all(on) or any(off):
      checks[name] = {"status": "n/a", "rollbacks": 0,
                      "why": "safety_net=True/False does not switch a SafetyNetState"}
      continue
    rollbacks = sum(int(net.rollbacks) for nets in on for net in nets)
    checks[name] = {"status": "measured", "why": "", "rollbacks": rollbacks}
  return checks


def models(quick: bool, lm: dict | None = None) -> dict:
  """name -> (init_params, loss_fn, batch, description).

  ``lm``: the Transformer's size overrides (keys of ``LM_DEFAULT``).
  """
  size = dict(LM_QUICK if quick else LM_DEFAULT)
  size.update({k: v for k, v in (lm or {}).items() if v is not None})
  lm_model = _models.transformer_lm(size["context"], size["d_model"], size["heads"],
                                    size["layers"])
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, size["batch"], size["context"]),
                              0, lm_model.vocab)
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
      "transformer": (
          lambda: lm_model.init(jax.random.PRNGKey(1)),
          lm_model.loss,
          (tokens[0], tokens[1]),
          f"Transformer LM {lm_model.name} ({lm_model.num_params()} params), "
          f"batch {size['batch']}",
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
    optax_lr_names = {m.name for m in _methods.OPTAX_LR_METHODS}
    colors = ["tab:blue" if n in optax_lr_names
              else "lightsteelblue" if n.removesuffix(NET_OFF_SUFFIX) in optax_lr_names
              else "tab:gray" for n in order]
    ax.barh(order, [ratios[n] for n in order], color=colors)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("step time / sgd step time (median over repeats)")
    ax.set_title(report["models"][name]["description"], fontsize=10)
    for y, n in enumerate(order):
      ax.text(ratios[n], y, f" {ratios[n]:.2f}", va="center", fontsize=8)
  fig.suptitle(f"per-step cost, {report['machine']['backend']} "
               f"({report['machine']['cpu']}); blue: optax_lr (light: safety net off), "
               "gray: optax")
  _report.save_figure(fig, path)
  plt.close(fig)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny models, few rounds")
  parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "transformer"],
                      choices=["mlp", "cnn", "transformer"])
  parser.add_argument("--methods", nargs="+", default=None,
                      help="subset of candidates (default: all)")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--steps-per-round", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  for flag in LM_DEFAULT:
    parser.add_argument(f"--lm-{flag.replace('_', '-')}", type=int, default=None,
                        help=f"Transformer's {flag} (default {LM_DEFAULT[flag]})")
  parser.add_argument("--out", default="results/speed.json")
  parser.add_argument("--png", default="results/speed.png")
  args = parser.parse_args(argv)
  # (rounds, steps per round) per model: the CNN step is ~10x the MLP's.
  default_rounds = {"mlp": (21, 10), "cnn": (9, 5), "transformer": (9, 5)}
  if args.quick:
    default_rounds = {"mlp": (3, 5), "cnn": (3, 5), "transformer": (3, 5)}
  lm = {k: getattr(args, "lm_" + k) for k in LM_DEFAULT}
  repeats = args.repeats or (1 if args.quick else 3)

  start = time.perf_counter()
  report = {
      "command": " ".join(["python -m benchmarks.speed"]
                          + (sys.argv[1:] if argv is None else list(argv))),
      "machine": _report.machine(),
      "setting": {"repeats": repeats,
                  "learning_rate": _methods.SPEED_LR,
                  "steps_per_epoch": _methods.SPEED_STEPS_PER_EPOCH,
                  "timed_steps": "no checkpoint saves: the safety net's since_save "
                                 "is set to 0 (a runtime argument) before each step"},
      "models": {},
  }
  for model_name in args.models:
    init_params, loss_fn, batch, description = models(args.quick, lm)[model_name]
    adam = model_name in ADAM_MODELS
    cands = candidates(args.methods, adam=adam)
    names = [c.name for c in cands]
    rounds = args.rounds or default_rounds[model_name][0]
    steps = args.steps_per_round or default_rounds[model_name][1]
    print(f"\n{description}: {len(cands)} candidates, {repeats} x {rounds} "
          f"interleaved rounds of {steps} steps")
    runs, final_states = [], []
    for repeat in range(repeats):
      states = {}
      times = _harness.time_candidates(cands, init_params, loss_fn, batch,
                                       rounds=rounds, steps_per_round=steps,
                                       seed=repeat, final_states=states)
      runs.append(times)
      final_states.append(states)
      print(f"  repeat {repeat + 1}/{repeats}: sgd {1e3 * times.get('sgd', np.nan):.3f} ms/step")
    ratio = lambda a, b: float(np.median([r[a] / r[b] for r in runs]))
    entry = {
        "description": description,
        "optax_lr_direction": ("AdamW (scale_by_adam + add_decayed_weights)" if adam
                               else "plain SGD (optax.identity)"),
        "rounds": rounds,
        "steps_per_round": steps,
        "seconds_per_step_runs": runs,
        "median_seconds_per_step": {n: float(np.median([r[n] for r in runs])) for n in names},
    }
    if "sgd" in names:
      entry["median_ratio_to_sgd"] = {n: ratio(n, "sgd") for n in names}
    targets = []
    for method, base, bound in TARGETS:
      # The first release's targets hold with the net off.
      measured = (method + NET_OFF_SUFFIX if method + NET_OFF_SUFFIX in names
                  else method)
      if method in names and base in names:
        value = ratio(measured, base)
        targets.append({"method": method, "measured_as": measured, "baseline": base,
                        "bound": bound, "ratio": value, "met": value <= bound})
    entry["targets"] = targets
    net_targets = []
    for method, check in net_checks(names, final_states).items():
      measured = check["status"] == "measured"
      value = ratio(method, method + NET_OFF_SUFFIX) if measured else None
      net_targets.append({
          "method": method, "status": check["status"], "why": check["why"],
          "rollbacks_while_timed": check["rollbacks"], "bound": NET_BOUND,
          "ratio_net_on_to_off": value,
          "met": None if value is None else value <= NET_BOUND,
      })
    entry["safety_net_targets"] = net_targets
    if GPU_CHEAPER_THAN in names:
      entry[f"ratio_to_{GPU_CHEAPER_THAN}"] = {
          n: ratio(n, GPU_CHEAPER_THAN) for n in names if n not in GPU_EXEMPT}
      optax_lr_names = [n for n in names if n in {m.name for m in _methods.OPTAX_LR_METHODS}
                        and n not in GPU_EXEMPT]
      entry[f"cheaper_than_{GPU_CHEAPER_THAN}"] = {
          n: entry[f"ratio_to_{GPU_CHEAPER_THAN}"][n] < 1.0 for n in optax_lr_names}
    if adam and ADAM_ANCHOR in names:
      entry[f"ratio_to_{ADAM_ANCHOR}"] = {n: ratio(n, ADAM_ANCHOR) for n in names}
    report["models"][model_name] = entry

    extra = [ADAM_ANCHOR] if f"ratio_to_{ADAM_ANCHOR}" in entry else []
    rows = [[n, f"{1e3 * entry['median_seconds_per_step'][n]:.3f}",
             _report.fmt(entry.get("median_ratio_to_sgd", {}).get(n, np.nan)),
             _report.fmt(entry.get(f"ratio_to_{GPU_CHEAPER_THAN}", {}).get(n, np.nan))]
            + [_report.fmt(entry[f"ratio_to_{a}"][n]) for a in extra]
            for n in names]
    print(_report.table(["step", "ms/step", "/ sgd", f"/ {GPU_CHEAPER_THAN}"]
                        + [f"/ {a}" for a in extra], rows))
    cheaper = entry.get(f"cheaper_than_{GPU_CHEAPER_THAN}", {})
    if cheaper:
      print(f"  cheaper per step than {GPU_CHEAPER_THAN} (all but "
            f"{'/'.join(GPU_EXEMPT)}; the issue's target on GPU, here on "
            f"{jax.default_backend()}): "
            + " ".join(f"{n} {'yes' if ok else 'NO'}" for n, ok in cheaper.items()))
    for t in targets:
      net = " (net off)" if t["measured_as"] != t["method"] else ""
      print(f"  target {t['method']}{net} / {t['baseline']} = {t['ratio']:.3f} "
            f"(<= {t['bound']:.2f}: {'met' if t['met'] else 'MISSED'})")
    if net_targets:
      print(f"  safety net, steps that do not save: net on / net off "
            f"(<= {NET_BOUND:.2f})")
    for t in net_targets:
      if t["status"] != "measured":
        print(f"    {t['method']:<10} n/a ({t['why']})")
        continue
      rolled = (f"; {t['rollbacks_while_timed']} rollbacks while timed: not a clean step"
                if t["rollbacks_while_timed"] else "")
      print(f"    {t['method']:<10} {t['ratio_net_on_to_off']:.3f}  "
            f"{'PASS' if t['met'] else 'FAIL'}{rolled}")

  if any("median_ratio_to_sgd" in m for m in report["models"].values()):
    plot(report, args.png)
  report["wall_s"] = time.perf_counter() - start
  _report.write_json(args.out, report)
  print(f"total {report['wall_s']:.0f} s")
  return report


if __name__ == "__main__":
  main()
