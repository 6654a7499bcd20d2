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
net, with the additive rule's program at kappa 0, ``NET_OFF_OPTIONS``;
``benchmarks.net_cost`` measures the net against a twin of the default's
own rule instead, ``SAME_RULE_NET_OFF``), side by side with the others.
Every step timed here is one that does *not* save a checkpoint: each call
starts with the net's ``since_save`` counter at 0, passed to the compiled
step as a runtime argument (``_harness.make_train_step(no_saves=True)``; the same calling
convention for every candidate), so the save ``lax.cond`` takes its identity
branch while the program stays the production one. The timed steps must not
roll back either (a rollback is a divergence, not a step cost): the script
checks each net's ``rollbacks`` counter after timing and reports it. Nor may
any candidate's timed run diverge (a NaN run's step is no production step,
and a ratio against it says nothing): the script checks every candidate's
last loss and params, lists those that ended non-finite, and leaves every
target that reads one of them unmet; a net target is unmet, too, when its
method rolled back while timed.

Targets (``TARGETS``, the first release's, measured with the net off
(``<name>_net_off``) where a method has one): HD <= 1.10x sgd(momentum=0.9);
MARTHE <= 1.15x grad+HVP+SGD; newton_lr <= 1.10x adam; ASLR and AALR <= 1.10x
sgd on steps that are not epoch ends. Safety net (``NET_BOUND``): each
method's non-saving step with the net on costs at most 1.05x the same method
with the net off; "n/a" for a method whose library call has no
``safety_net`` keyword yet. On GPU also: every method other than RTHO/MARTHE
cheaper per step than prodigy (reported on CPU for information).

Parts (``PARTS``; not in the default run): ``--methods`` takes a part's
name for its candidates with their anchors, or any of them by name, side by
side with the rest. Each variant of a part (``VARIANTS``) runs with its
safety net off where its library call has one, as the first release timed
it; its direction is the model's (plain SGD; AdamW's on the Transformer)
unless its name says otherwise (``_momentum``: ``optax.trace(0.9)``,
``_adam``: ``scale_by_adam``). Informational ratios (``INFORMATION``) are
printed without a verdict.

* ``epoch``: ASLR and AALR on steps that are not epoch ends, in observe mode
  (``aslr``, ``aalr``) and in window mode with a window no timed run closes
  (``*_window``: the running mean of ``value`` and the ``lax.cond`` that
  skips the epoch end), over plain SGD against sgd and over momentum
  (``*_momentum``) against sgd_momentum, each <= 1.10x; for information, a
  window of one step (``*_every_step``: an epoch end at every call) against
  the window that never closes.
* ``hypergradient``: the defaults' HD/RTHO/MARTHE, and the first release's
  fixed hyper-rates (``hd_fixed``: additive, beta 1e-4, <= 1.10x
  sgd_momentum; ``marthe_fixed``: hyper_lr_step 1e-6, <= 1.15x
  grad_hvp_sgd), with the multiplicative rule, RTHO, MARTHE with mu 0.9, and
  over momentum and Adam for information.
* ``newton``: newton_lr against adam (the target above), and for
  information newton_lr over ``scale_by_adam`` (four buffers) against adam,
  and with a window of one step (``newton_lr_every_step``: the window-end
  work at every call) against the 200-step window, which bounds what the
  window's ``lax.cond`` saves.

Usage::

    python -m benchmarks.speed                 # the three models, 3 repeats
    python -m benchmarks.speed --models transformer
    python -m benchmarks.speed --quick         # tiny models, a smoke run
    python -m benchmarks.speed --models mlp --repeats 5
    python -m benchmarks.speed --models mlp --methods epoch hypergradient newton
    python -m benchmarks.speed --models mlp --methods sgd aslr aslr_window

Writes ``results/speed.json`` and ``results/speed.png``.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
import optax

import optax_lr
from benchmarks import _harness
from benchmarks import _methods
from benchmarks import _models
from benchmarks import _report
from optax_lr import _checkpoint
from optax_lr import hypergradient
from optax_lr._registry import standard_promotion

# (method, baseline, bound): method's step costs at most bound x baseline's;
# each is measured with the net off (the method's net-off twin, or a variant).
TARGETS = (
  ("hd", "sgd_momentum", 1.10),
  ("marthe", "grad_hvp_sgd", 1.15),
  ("newton_lr", "adam", 1.10),
  ("aslr", "sgd", 1.10),
  ("aalr", "sgd", 1.10),
  # The parts' (timed when named in --methods).
  ("aslr_window", "sgd", 1.10),
  ("aalr_window", "sgd", 1.10),
  ("aslr_momentum", "sgd_momentum", 1.10),
  ("aslr_window_momentum", "sgd_momentum", 1.10),
  ("aalr_momentum", "sgd_momentum", 1.10),
  ("aalr_window_momentum", "sgd_momentum", 1.10),
  ("hd_fixed", "sgd_momentum", 1.10),
  ("marthe_fixed", "grad_hvp_sgd", 1.15),
)
# (method, baseline): ratios reported for information, with no bound.
INFORMATION = (
  ("aslr_every_step", "aslr_window"),
  ("aalr_every_step", "aalr_window"),
  ("hd_mult_fixed", "sgd_momentum"),
  ("hd_fixed_momentum", "sgd_momentum"),
  ("rtho_fixed", "grad_hvp_sgd"),
  ("marthe_fixed_mu0.9", "grad_hvp_sgd"),
  ("marthe_fixed_momentum", "grad_hvp_sgd"),
  ("marthe_fixed_adam", "grad_hvp_sgd"),
  ("newton_lr_adam", "adam"),
  ("newton_lr_every_step", "newton_lr"),
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
# the net off it runs the paper's additive rule with kappa 0 given as an
# array. That is the program of any fixed kappa (kappa is a state value, and
# an array kappa traces the adaptive-beta branch; see `marthe`), whose rate
# stays at its initial value: on the timed steps' one repeated batch a fixed
# kappa's rate keeps growing, and both 1e-2 (the selection's first kappa)
# and 1e-6 (the first release's ``marthe_fixed``) ran the MLP's params to NaN
# within them. A diverged run times NaN arithmetic, not a training step.
NET_OFF_OPTIONS = {
  "marthe": {"hyper_lr_step": np.float32(0.0)},
}


def _marthe_scale_free_net_off(learning_rate, direction):
  # MARTHE's default rule with the net off: kappa selection's standardised
  # cosine (three reductions per leaf the additive rule does not take) at a
  # fixed kappa of 0, so the rate stays at its initial value. No public
  # call builds it (kappa selection needs the net), hence the engine.
  return hypergradient._engine(
    learning_rate,
    hyper_lr=0.0,
    hyper_lr_step=np.float32(0.0),
    mu=None,
    multiplicative=False,
    normalized=True,
    select_kappa=False,
    safety_net=False,
    direction=direction,
    name="marthe",
  )


# `candidates(same_rule_twins=True)`: twins that run the default's rule with
# the net off, where NET_OFF_OPTIONS' twin runs another one (MARTHE's
# additive rule skips the standardised cosine: 114 array kernels against
# 130 on the speed MLP over SGD, 1.013-1.033 of its step in one process
# each of two runs; RESULTS, "MARTHE's net against its own rule"). The net's
# own cost (`benchmarks.net_cost`) is measured against these; the first
# release's speed targets, here, keep the additive twin.
SAME_RULE_NET_OFF = {"marthe": _marthe_scale_free_net_off}


# The models trained over Adam: the optax_lr methods step along AdamW's
# direction, and AdamW is an anchor.
ADAM_MODELS = ("transformer",)
ADAM_ANCHOR = "adamw"
# The Transformer's default size: robustness's stdlib_lm task.
LM_DEFAULT = dict(context=64, d_model=64, heads=4, layers=2, batch=16)
LM_QUICK = dict(context=16, d_model=16, heads=2, layers=1, batch=4)


# ---------------------------------------------------------------- parts

# Far more update calls than any timed run: no window ever closes.
_NEVER_ENDS = 10**9


def _momentum() -> optax.GradientTransformation:
  return optax.trace(0.9)


def _adam() -> optax.GradientTransformation:
  return standard_promotion(optax.scale_by_adam())


def _variant(
  name, factory, *, direction=None, needs=("value",), fixed_lr=None, **fixed
) -> _methods.Method:
  """``factory(lr, **fixed)`` over ``direction()`` (None: the model's)."""

  def make(lr, n, **options):
    del n
    if direction is not None:
      options["direction"] = direction()
    return factory(lr, **fixed, **options)

  return _methods.Method(name, make, needs=tuple(needs), fixed_lr=fixed_lr, factory=factory)


_TANGENT = ("value", "loss_fn")  # the training loss as E, as the first release timed
VARIANTS: tuple[_methods.Method, ...] = (
  _variant("aslr_window", optax_lr.aslr, steps_per_epoch=_NEVER_ENDS),
  _variant("aslr_every_step", optax_lr.aslr, steps_per_epoch=1),
  _variant("aalr_window", optax_lr.aalr, steps_per_epoch=_NEVER_ENDS),
  _variant("aalr_every_step", optax_lr.aalr, steps_per_epoch=1),
  _variant("aslr_momentum", optax_lr.aslr, direction=_momentum),
  _variant("aslr_window_momentum", optax_lr.aslr, direction=_momentum, steps_per_epoch=_NEVER_ENDS),
  _variant("aalr_momentum", optax_lr.aalr, direction=_momentum),
  _variant("aalr_window_momentum", optax_lr.aalr, direction=_momentum, steps_per_epoch=_NEVER_ENDS),
  _variant("hd_fixed", optax_lr.hypergradient_descent, hyper_lr=1e-4),
  _variant("hd_mult_fixed", optax_lr.hypergradient_descent, hyper_lr=1e-3, multiplicative=True),
  _variant("hd_fixed_momentum", optax_lr.hypergradient_descent, direction=_momentum, hyper_lr=1e-4),
  _variant("marthe_fixed", optax_lr.marthe, needs=_TANGENT, hyper_lr_step=1e-6),
  _variant("marthe_fixed_mu0.9", optax_lr.marthe, needs=_TANGENT, hyper_lr_step=1e-6, mu=0.9),
  _variant("rtho_fixed", optax_lr.rtho, needs=_TANGENT, hyper_lr=1e-6),
  _variant(
    "marthe_fixed_momentum",
    optax_lr.marthe,
    direction=_momentum,
    needs=_TANGENT,
    hyper_lr_step=1e-6,
  ),
  _variant(
    "marthe_fixed_adam",
    optax_lr.marthe,
    direction=_adam,
    needs=_TANGENT,
    fixed_lr=1e-3,
    hyper_lr_step=1e-9,
  ),
  _variant(
    "newton_lr_adam",
    optax_lr.newton_lr,
    direction=_adam,
    fixed_lr=1e-3,
    steps_per_epoch=_methods.SPEED_STEPS_PER_EPOCH,
  ),
  _variant("newton_lr_every_step", optax_lr.newton_lr, update_every=1),
)
# Each part: the candidates of one former per-method benchmark, anchors first.
PARTS = {
  "epoch": (
    "sgd",
    "sgd_momentum",
    "aslr",
    "aalr",
    "aslr_window",
    "aslr_every_step",
    "aalr_window",
    "aalr_every_step",
    "aslr_momentum",
    "aslr_window_momentum",
    "aalr_momentum",
    "aalr_window_momentum",
  ),
  "hypergradient": (
    "sgd",
    "sgd_momentum",
    "grad_hvp_sgd",
    "hd",
    "hd_mult",
    "rtho",
    "marthe",
    "hd_fixed",
    "hd_mult_fixed",
    "hd_fixed_momentum",
    "marthe_fixed",
    "marthe_fixed_mu0.9",
    "rtho_fixed",
    "marthe_fixed_momentum",
    "marthe_fixed_adam",
  ),
  "newton": ("sgd", "adam", "newton_lr", "newton_lr_adam", "newton_lr_every_step"),
}


def known_names() -> set[str]:
  """Every name ``--methods`` takes: candidates, variants and parts."""
  registry = (
    _methods.SPEED_ANCHORS + _methods.ADAM_SPEED_ANCHORS + _methods.OPTAX_LR_METHODS + VARIANTS
  )
  return {m.name for m in registry if m.rate_from_task is None} | set(PARTS)


def expand(names):
  """``names`` with each part's name replaced by its candidates (None: None)."""
  if not names:
    return names
  return [n for name in names for n in PARTS.get(name, (name,))]


def _has_net(method: _methods.Method) -> bool:
  return method.name in NET_METHODS and method.accepts("safety_net")


def _net_off(name: str) -> bool:
  """Whether candidate ``name`` runs with its safety net switched off."""
  variant = {m.name: m for m in VARIANTS}.get(name)
  return name.endswith(NET_OFF_SUFFIX) or bool(variant and variant.accepts("safety_net"))


def _measured(name: str, names) -> str:
  """The candidate a target measures ``name`` by: its net-off twin when timed."""
  return name + NET_OFF_SUFFIX if name + NET_OFF_SUFFIX in names else name


def candidates(
  names=None, adam: bool = False, direction=None, same_rule_twins: bool = False
) -> list[_harness.Candidate]:
  """The anchors, every optax_lr method, and the net-off twin of each net method.

  The methods whose rate comes from the task (ASLR's range-test pipeline)
  take the same step as their raw method and are not timed again. ``adam``:
  the model trains over Adam (``ADAM_MODELS``): the optax_lr methods step
  along AdamW's direction, and the Adam anchors are timed too. ``names``:
  the candidates to time (parts' names expand to theirs); the parts'
  variants (``VARIANTS``) are timed only when named, with their net off.
  ``direction``: a factory of the optax_lr methods' direction, in place of
  the model's (plain SGD, or AdamW's with ``adam``). ``same_rule_twins``:
  the net-off twins of ``SAME_RULE_NET_OFF`` run the default's rule.
  """
  anchors = list(_methods.SPEED_ANCHORS) + (list(_methods.ADAM_SPEED_ANCHORS) if adam else [])
  methods = anchors + [m for m in _methods.OPTAX_LR_METHODS if m.rate_from_task is None]
  names = expand(names)
  if names:
    methods = [m for m in methods + list(VARIANTS) if m.name in set(names)]

  def over():
    # The optax_lr methods over plain SGD directions, as the first release
    # timed them against their anchors (robustness and compare use momentum),
    # or over AdamW's on a model trained over Adam.
    if direction is not None:
      return direction()
    return _methods.adamw_direction() if adam else optax.identity()

  def build(m, **options):
    if m.library == "optax_lr":
      options = {"direction": over(), **options}
    return m.build(_methods.SPEED_LR, _methods.SPEED_STEPS_PER_EPOCH, **options)

  cands = []
  for m in methods:
    options = {"safety_net": False} if _net_off(m.name) else {}
    cands.append(
      _harness.Candidate(
        m.name, build(m, **options), needs=tuple(m.needs), hvp=m.hvp, no_saves=True
      )
    )
    if _has_net(m):
      if same_rule_twins and m.name in SAME_RULE_NET_OFF:
        off = SAME_RULE_NET_OFF[m.name](_methods.SPEED_LR, over())
      else:
        off = build(m, safety_net=False, **NET_OFF_OPTIONS.get(m.name, {}))
      cands.append(
        _harness.Candidate(
          m.name + NET_OFF_SUFFIX, off, needs=tuple(m.needs), hvp=m.hvp, no_saves=True
        )
      )
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
      checks[name] = {
        "status": "n/a",
        "rollbacks": 0,
        "why": "safety_net=True/False does not switch a SafetyNetState",
      }
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
  lm_model = _models.transformer_lm(size["context"], size["d_model"], size["heads"], size["layers"])
  tokens = jax.random.randint(
    jax.random.PRNGKey(0), (2, size["batch"], size["context"]), 0, lm_model.vocab
  )
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
      f"Transformer LM {lm_model.name} ({lm_model.num_params()} params), batch {size['batch']}",
    ),
  }


def plot(report, path):
  plt = _report.pyplot()
  if plt is None:
    return
  names = list(report["models"])
  fig, axes = _report.panels(plt, 1, len(names), 5.5, 6)
  for ax, name in zip(axes[0], names):
    ratios = report["models"][name]["median_ratio_to_sgd"]
    order = sorted(ratios, key=ratios.get)
    optax_lr_names = {m.name for m in _methods.OPTAX_LR_METHODS}
    light = optax_lr_names | {m.name for m in VARIANTS}
    colors = [
      "tab:blue"
      if n in optax_lr_names
      else "lightsteelblue"
      if n.removesuffix(NET_OFF_SUFFIX) in light
      else "tab:gray"
      for n in order
    ]
    ax.barh(order, [ratios[n] for n in order], color=colors)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("step time / sgd step time (median over repeats)")
    ax.set_title(report["models"][name]["description"], fontsize=10)
    for y, n in enumerate(order):
      ax.text(ratios[n], y, f" {ratios[n]:.2f}", va="center", fontsize=8)
  fig.suptitle(
    f"per-step cost, {report['machine']['backend']} "
    f"({report['machine']['cpu']}); blue: optax_lr (light: safety net off, "
    "or a part's variant), "
    "gray: optax"
  )
  _report.save_figure(fig, path)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny models, few rounds")
  parser.add_argument(
    "--models",
    nargs="+",
    default=["mlp", "cnn", "transformer"],
    choices=["mlp", "cnn", "transformer"],
  )
  parser.add_argument(
    "--methods",
    nargs="+",
    default=None,
    help="candidates to time, by name, or parts by name: "
    f"{', '.join(PARTS)} (default: every method, no part)",
  )
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--steps-per-round", type=int, default=None)
  parser.add_argument("--repeats", type=int, default=None)
  for flag in LM_DEFAULT:
    parser.add_argument(
      f"--lm-{flag.replace('_', '-')}",
      type=int,
      default=None,
      help=f"Transformer's {flag} (default {LM_DEFAULT[flag]})",
    )
  _report.add_output_args(parser, "speed")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.methods or ()) - known_names())
  if unknown:
    parser.error(f"--methods: unknown {unknown}; known: {sorted(known_names())}")
  # (rounds, steps per round) per model: the CNN step is ~10x the MLP's.
  default_rounds = {"mlp": (21, 10), "cnn": (9, 5), "transformer": (9, 5)}
  if args.quick:
    default_rounds = {"mlp": (3, 5), "cnn": (3, 5), "transformer": (3, 5)}
  lm = {k: getattr(args, "lm_" + k) for k in LM_DEFAULT}
  repeats = args.repeats or (1 if args.quick else 3)

  start = time.perf_counter()
  report = {
    "command": " ".join(
      ["python -m benchmarks.speed"] + (sys.argv[1:] if argv is None else list(argv))
    ),
    "machine": _report.machine(),
    "setting": {
      "repeats": repeats,
      "learning_rate": _methods.SPEED_LR,
      "steps_per_epoch": _methods.SPEED_STEPS_PER_EPOCH,
      "timed_steps": "no checkpoint saves: the safety net's since_save "
      "is set to 0 (a runtime argument) before each step",
    },
    "models": {},
  }
  for model_name in args.models:
    init_params, loss_fn, batch, description = models(args.quick, lm)[model_name]
    adam = model_name in ADAM_MODELS
    cands = candidates(args.methods, adam=adam)
    names = [c.name for c in cands]
    rounds = args.rounds or default_rounds[model_name][0]
    steps = args.steps_per_round or default_rounds[model_name][1]
    print(
      f"\n{description}: {len(cands)} candidates, {repeats} x {rounds} "
      f"interleaved rounds of {steps} steps"
    )
    runs, final_states, finite = [], [], []
    for repeat in range(repeats):
      states, finite_now = {}, {}
      times = _harness.time_candidates(
        cands,
        init_params,
        loss_fn,
        batch,
        rounds=rounds,
        steps_per_round=steps,
        seed=repeat,
        final_states=states,
        finite=finite_now,
      )
      runs.append(times)
      final_states.append(states)
      finite.append(finite_now)
      print(f"  repeat {repeat + 1}/{repeats}: sgd {1e3 * times.get('sgd', np.nan):.3f} ms/step")
    ratio = lambda a, b: float(np.median([r[a] / r[b] for r in runs]))
    entry = {
      "description": description,
      "optax_lr_direction": (
        "AdamW (scale_by_adam + add_decayed_weights)" if adam else "plain SGD (optax.identity)"
      ),
      "rounds": rounds,
      "steps_per_round": steps,
      "seconds_per_step_runs": runs,
      "median_seconds_per_step": {n: float(np.median([r[n] for r in runs])) for n in names},
      # Candidates whose timed run ended with a non-finite loss or params in
      # some repeat: every target that reads one of them is left unmet.
      "diverged_while_timed": sorted(n for n in names if not all(f[n] for f in finite)),
    }
    diverged = set(entry["diverged_while_timed"])
    if "sgd" in names:
      entry["median_ratio_to_sgd"] = {n: ratio(n, "sgd") for n in names}
    targets = []
    for method, base, bound in TARGETS:
      # The first release's targets hold with the net off.
      measured = _measured(method, names)
      if method in names and base in names:
        value = ratio(measured, base)
        targets.append(
          {
            "method": method,
            "measured_as": measured,
            "baseline": base,
            "bound": bound,
            "ratio": value,
            "met": value <= bound and not {measured, base} & diverged,
          }
        )
    entry["targets"] = targets
    entry["information"] = [
      {
        "method": method,
        "baseline": _measured(base, names),
        "ratio": ratio(method, _measured(base, names)),
      }
      for method, base in INFORMATION
      if method in names and base in names
    ]
    net_targets = []
    for method, check in net_checks(names, final_states).items():
      measured = check["status"] == "measured"
      value = ratio(method, method + NET_OFF_SUFFIX) if measured else None
      clean = not check["rollbacks"] and not {method, method + NET_OFF_SUFFIX} & diverged
      net_targets.append(
        {
          "method": method,
          "status": check["status"],
          "why": check["why"],
          "rollbacks_while_timed": check["rollbacks"],
          "bound": NET_BOUND,
          "ratio_net_on_to_off": value,
          "met": None if value is None else value <= NET_BOUND and clean,
        }
      )
    entry["safety_net_targets"] = net_targets
    if GPU_CHEAPER_THAN in names:
      entry[f"ratio_to_{GPU_CHEAPER_THAN}"] = {
        n: ratio(n, GPU_CHEAPER_THAN) for n in names if n not in GPU_EXEMPT
      }
      optax_lr_names = [
        n for n in names if n in {m.name for m in _methods.OPTAX_LR_METHODS} and n not in GPU_EXEMPT
      ]
      entry[f"cheaper_than_{GPU_CHEAPER_THAN}"] = {
        n: entry[f"ratio_to_{GPU_CHEAPER_THAN}"][n] < 1.0 for n in optax_lr_names
      }
    if adam and ADAM_ANCHOR in names:
      entry[f"ratio_to_{ADAM_ANCHOR}"] = {n: ratio(n, ADAM_ANCHOR) for n in names}
    report["models"][model_name] = entry

    columns = {
      "sgd": entry.get("median_ratio_to_sgd"),
      GPU_CHEAPER_THAN: entry.get(f"ratio_to_{GPU_CHEAPER_THAN}"),
      ADAM_ANCHOR: entry.get(f"ratio_to_{ADAM_ANCHOR}"),
    }
    columns = {a: c for a, c in columns.items() if c is not None}
    rows = [
      [n, f"{1e3 * entry['median_seconds_per_step'][n]:.3f}"]
      + [_report.fmt(c.get(n, np.nan)) for c in columns.values()]
      for n in names
    ]
    print(_report.table(["step", "ms/step"] + [f"/ {a}" for a in columns], rows))
    cheaper = entry.get(f"cheaper_than_{GPU_CHEAPER_THAN}", {})
    if cheaper:
      print(
        f"  cheaper per step than {GPU_CHEAPER_THAN} (all but "
        f"{'/'.join(GPU_EXEMPT)}; the issue's target on GPU, here on "
        f"{jax.default_backend()}): "
        + " ".join(f"{n} {'yes' if ok else 'NO'}" for n, ok in cheaper.items())
      )
    if diverged:
      print(
        "  diverged while timed (non-finite loss or params; their targets "
        f"are left unmet): {', '.join(sorted(diverged))}"
      )
    for t in targets:
      net = " (net off)" if _net_off(t["measured_as"]) else ""
      print(
        f"  target {t['method']}{net} / {t['baseline']} = {t['ratio']:.3f} "
        f"(<= {t['bound']:.2f}: {'met' if t['met'] else 'MISSED'})"
      )
    for t in entry["information"]:
      print(f"  information {t['method']} / {t['baseline']} = {t['ratio']:.3f}")
    if net_targets:
      print(f"  safety net, steps that do not save: net on / net off (<= {NET_BOUND:.2f})")
    for t in net_targets:
      if t["status"] != "measured":
        print(f"    {t['method']:<10} n/a ({t['why']})")
        continue
      rolled = (
        f"; {t['rollbacks_while_timed']} rollbacks while timed: not a clean step"
        if t["rollbacks_while_timed"]
        else ""
      )
      print(
        f"    {t['method']:<10} {t['ratio_net_on_to_off']:.3f}  "
        f"{'PASS' if t['met'] else 'FAIL'}{rolled}"
      )

  if any("median_ratio_to_sgd" in m for m in report["models"].values()):
    plot(report, args.png)
  return _report.finish(report, start, args.out)


if __name__ == "__main__":
  main()
