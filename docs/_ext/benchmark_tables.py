"""Benchmark tables and figures rendered from the committed benchmark JSON.

The benchmark scripts (``python -m benchmarks.<name>``) write
``results/<name>.json`` with every number they print and the command line
that produced them (the ``"command"`` field); the copies committed in
``benchmarks/figures/`` beside the PNGs are what the documentation reads. No
number on a page is typed by hand: a table is computed from the JSON at build
time, and every table and figure names its command.

Directives (MyST: ```` ```{benchmark-table} robustness.json ````):

``benchmark-table <file.json>``
  ``:table:`` one of ``compare``, ``robustness``, ``hand-tuned``,
  ``targets``, ``summary`` (every task of a robustness report side by
  side), ``range-test`` (each method started at the range test's
  suggestion beside its worst initial rate, every task side by side),
  ``speed``, ``speed-targets``, ``safety-net``;
  ``:dataset:`` (robustness tables but ``summary``) or ``:model:`` (speed
  tables);
  ``:methods:`` an optional space-separated subset of rows, in order.
  The content, if any, is the table's caption.
``benchmark-figure <file.png>``
  ``:json:`` the JSON whose command produced the figure, or ``:command:`` for
  figures whose script keeps no JSON in the repository; ``:alt:``. The
  content is the caption; "Produced by ``<command>``" is appended.
``benchmark-command <file.json>``
  The command and the machine line of a JSON file, as a paragraph.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

FIGURES = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "figures"

_CACHE: dict[pathlib.Path, tuple[float, dict]] = {}


def load(name: str) -> dict:
  path = FIGURES / name
  mtime = path.stat().st_mtime
  if path not in _CACHE or _CACHE[path][0] != mtime:
    with open(path, encoding="utf-8") as f:
      _CACHE[path] = (mtime, json.load(f))
  return _CACHE[path][1]


def _num(x: Any, digits: int = 3) -> str:
  if x is None:
    return "–"
  if isinstance(x, str):  # the scripts write NaN / Inf as strings
    return x
  if not math.isfinite(x):
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
  if abs(x) >= 1e4:  # a blown-up loss, as the scripts print it
    return f"{x:.{digits - 1}e}"
  return f"{x:.{digits}f}"


def _rate(x: float) -> str:
  return f"{x:g}"


def _mean(xs) -> float:
  xs = [x for x in xs if isinstance(x, (int, float))]
  return sum(xs) / len(xs) if xs else float("nan")


def _verdict(ok) -> str:
  return "–" if ok is None else ("✓" if ok else "✗")


def _code(text: str) -> nodes.literal:
  return nodes.literal(text, text)


def table_node(
  header: list[str], rows: list[list[str]], caption: str = "", numeric_from: int = 1
) -> nodes.table:
  """A docutils table; columns from ``numeric_from`` on are right-aligned."""
  table = nodes.table(classes=["benchmark-table"])
  if caption:
    table += nodes.title(caption, caption)
  group = nodes.tgroup(cols=len(header))
  table += group
  for _ in header:
    group += nodes.colspec(colwidth=1)
  head = nodes.thead()
  group += head

  def row(cells, head_row=False):
    r = nodes.row()
    for i, cell in enumerate(cells):
      entry = nodes.entry()
      if i >= numeric_from and not head_row:
        entry["classes"].append("text-end")
      if i == 0 and not head_row:
        entry += nodes.paragraph("", "", _code(str(cell)))
      else:
        entry += nodes.paragraph(str(cell), str(cell))
      r += entry
    return r

  head += row(header, head_row=True)
  body = nodes.tbody()
  group += body
  for cells in rows:
    body += row(cells)
  return table


def command_paragraph(report: dict, name: str) -> nodes.paragraph:
  """The paragraph "Command: ``...`` (file; date, backend, load)"."""
  para = nodes.paragraph()
  para += nodes.strong("Command: ", "Command: ")
  para += _code(report.get("command", "(none recorded)"))
  machine = report.get("machine", {})
  details = [f"benchmarks/figures/{name}"]
  if machine:
    details.append(
      f"run {machine.get('date', '?')[:10]} on {machine.get('backend', '?')}"
      f" ({machine.get('cpu', '?')}, {machine.get('cpus_available', '?')} cores),"
      f" jax {machine.get('jax', '?')}, optax {machine.get('optax', '?')}"
    )
  if isinstance(report.get("wall_s"), (int, float)):
    details.append(f"{report['wall_s']:.0f} s wall time")
  text = " (" + "; ".join(details) + ")"
  para += nodes.Text(text)
  # Rows rerun or added later and merged in (`benchmarks.robustness --update`).
  for update in report.get("updates", []):
    rows = sorted({m for methods in update.get("methods", {}).values() for m in methods})
    para += nodes.Text(f"; then {', '.join(rows)} run by ")
    para += _code(update.get("command", "(none recorded)"))
    para += nodes.Text(f" ({update.get('machine', {}).get('date', '?')[:10]})")
  return para


# ----------------------------------------------------------------- tables


def compare_table(report: dict, methods=None):
  rates = report["setting"]["initial_rates"]
  header = ["method"] + [f"lr={_rate(r)}" for r in rates] + ["worst", "spread", "ms/step"]
  rows = []
  for name, m in report["methods"].items():
    if methods and name not in methods:
      continue
    # float32 arithmetic, as the script formatted it.
    cells = [
      f"{_num(r['final_test_loss'])} / {100 * np.float32(r['final_test_accuracy']):.1f}"
      for r in m["runs"]
    ]
    if len(cells) < len(rates):  # one run that does not depend on the rate
      cells += ["(same run)"] * (len(rates) - len(cells))
    stats = m["summary_of_scored_final_loss"]
    rows.append(
      [name] + cells + [_num(stats["worst"]), _num(stats["spread"]), _num(m["ms_per_step"])]
    )
  return header, rows


def robustness_table(report: dict, ds: dict, methods=None):
  rates = ds.get("initial_rates") or report["initial_rates"]
  header = (
    ["method", "mean ± std", "worst"]
    + [f"lr={_rate(r)}" for r in rates]
    # Accuracy, or R² on a regression (reports before it was recorded: accuracy).
    + [ds.get("metric", "acc %"), "non-finite params"]
  )
  rows = []
  for name, m in ds["methods"].items():
    if methods and name not in methods:
      continue
    stats = m["across_rates"]
    per_rate = [_mean(seeds) for seeds in m["scored_loss"]]
    if m.get("swept", True):
      cells = [_num(x) for x in per_rate]
    else:
      suggestions = " ".join(f"{x:.3g}" for x in m["seed_rates"][0])
      cells = [f"{_num(per_rate[0])} from the range test's {suggestions}"]
      cells += [""] * (len(rates) - 1)
    # The script averages the float32 accuracies in float32: so does this.
    acc = float(np.mean(np.asarray(m["final_test_accuracy"], np.float32)))
    rows.append(
      [name, f"{_num(stats['mean'])} ± {_num(stats['std'])}", _num(stats["worst"])]
      + cells
      + [f"{100 * acc:.1f}", f"{m['nonfinite_params_runs']}/{m['runs']}"]
    )
  return header, rows


def hand_tuned_table(ds: dict, methods=None):
  refs = ds["hand_tuned"]
  grid = next(iter(refs.values()))["grid"]
  header = ["optimizer"] + [f"lr={_rate(r)}" for r in grid] + ["best rate", "best loss"]
  rows = [
    [name] + [_num(x) for x in r["seed_mean_loss"]] + [_rate(r["best_rate"]), _num(r["best_loss"])]
    for name, r in refs.items()
    if not methods or name in methods
  ]
  return header, rows


def targets_table(report: dict, ds: dict, methods=None):
  target = ds["targets"]
  bound = target["hand_tuned_bound"]
  row_of = report.get("targets", {}).get("target_row_of", {})
  header = [
    "method",
    "worst",
    "worst at",
    "/ best hand-tuned",
    f"≤ {bound}×",
    "non-finite params",
    "as robust as dog",
    "early-stopped (info)",
  ]
  rows = []
  for name, t in target["methods"].items():
    if methods and name not in methods:
      continue
    counted = t.get("counts", True)
    # Why the row is information: its own "info" (reports before it: ASLR's
    # raw sweep, whose target row is its pipeline's).
    info = t.get("info") or f"see {row_of.get(name, '')}"
    label = name if counted else f"{name} ({info})"
    rows.append(
      [
        label,
        _num(t["worst_loss"]),
        t["worst_at"],
        _num(t["ratio_to_best_hand_tuned"]),
        _verdict(t["within_bound"]) if counted else "(info)",
        f"{t['nonfinite_params_runs']}/{t['runs']}",
        _verdict(t["as_robust_as_dog"]),
        _num(t.get("early_stopped_ratio")),
      ]
    )
  best = target["best_hand_tuned"]
  note = (
    f"Best hand-tuned: {best['optimizer']} at {_rate(best['rate'])}, "
    f"{_num(best['loss'])}; dog's worst: {_num(target['dog_worst'])}; "
    f"best hypergradient method: {target['best_hypergradient']}."
  )
  rt = target.get("range_test")
  if rt:
    note += (
      " Range test: SGD at the suggestions ("
      + " ".join(f"{x:.3g}" for x in rt["suggestions"])
      + f") {_num(rt['loss'])}; SGD at its best grid rate "
      f"{_rate(rt['best_sgd_grid_rate'])} {_num(rt['best_sgd_grid_loss'])}; "
      f"ratio {_num(rt['ratio'])} (≤ {rt['bound']}×: {_verdict(rt['met'])})."
    )
  note += f" All targets met: {'yes' if target['all_met'] else 'no'}."
  stopped = target.get("best_hand_tuned_early_stopped")
  note += (
    " Early-stopped (information, not a target): the worst initial rate's "
    "held-out loss with every run stopped at its epoch of lowest validation "
    f"loss, over the best hand-tuned run so stopped ({_num(stopped)})."
    if stopped is not None
    else " Early-stopped: not measured in this run."
  )
  return header, rows, note


def summary_table(report: dict, methods=None):
  """Per optax_lr method, its worst case over the best hand-tuned loss on every task."""
  names = list(report["datasets"])
  header = ["method"] + [f"{name}: worst / best hand-tuned" for name in names]
  header += [f"{name}: as robust as dog" for name in names]
  found: dict[str, None] = {}  # the targeted methods, in the order the tasks list them
  for name in names:
    for method, t in report["datasets"][name]["targets"]["methods"].items():
      if t.get("counts", True):
        found.setdefault(method)
  rows = []
  for method in found:
    if methods and method not in methods:
      continue
    targets = [report["datasets"][name]["targets"]["methods"].get(method) for name in names]
    rows.append(
      [method]
      + [
        "–" if t is None else f"{_num(t['ratio_to_best_hand_tuned'])} {_verdict(t['within_bound'])}"
        for t in targets
      ]
      + ["–" if t is None else _verdict(t["as_robust_as_dog"]) for t in targets]
    )
  return header, rows


def range_test_table(report: dict, methods=None):
  """Per method with a ``<method>_range_test`` row (``benchmarks.robustness
  --range-test-for``): its ratio to the best hand-tuned loss from the range
  test's suggestion, and in brackets its worst over the initial rates, on
  every task."""
  names = list(report["datasets"])
  header = ["method"] + [
    f"{name}: from the suggestion (worst initial rate) / best hand-tuned" for name in names
  ]
  suffix = "_range_test"
  found: dict[str, None] = {}
  for name in names:
    for row, t in report["datasets"][name]["targets"]["methods"].items():
      # Information rows only: aslr_range_test is ASLR's target row.
      if row.endswith(suffix) and not t.get("counts", True):
        found.setdefault(row[: -len(suffix)])
  rows = []
  for method in found:
    if methods and method not in methods:
      continue
    cells = []
    for name in names:
      targets = report["datasets"][name]["targets"]["methods"]
      start, swept = targets.get(method + suffix), targets.get(method)
      if start is None:
        cells.append("–")
        continue
      cell = _num(start["ratio_to_best_hand_tuned"])
      if swept is not None:
        cell += f" ({_num(swept['ratio_to_best_hand_tuned'])})"
      cells.append(cell)
    rows.append([method] + cells)
  return header, rows


def speed_table(model: dict, methods=None):
  anchors = [k[len("ratio_to_") :] for k in model if k.startswith("ratio_to_")]
  header = ["step", "ms/step", "/ sgd"] + [f"/ {a}" for a in anchors]
  rows = []
  for name, seconds in model["median_seconds_per_step"].items():
    if methods and name not in methods:
      continue
    rows.append(
      [name, f"{1e3 * seconds:.3f}", _num(model.get("median_ratio_to_sgd", {}).get(name))]
      + [_num(model[f"ratio_to_{a}"].get(name)) for a in anchors]
    )
  return header, rows


def speed_targets_table(model: dict, methods=None):
  header = ["target", "measured as", "ratio", "bound", "met"]
  rows = [
    [
      f"{t['method']} / {t['baseline']}",
      t["measured_as"],
      _num(t["ratio"]),
      f"≤ {t['bound']:.2f}",
      _verdict(t["met"]),
    ]
    for t in model["targets"]
    if not methods or t["method"] in methods
  ]
  return header, rows


def safety_net_table(model: dict, methods=None):
  header = ["method", "net on / net off", "bound", "met"]
  rows = [
    [t["method"], _num(t["ratio_net_on_to_off"]), f"≤ {t['bound']:.2f}", _verdict(t["met"])]
    for t in model["safety_net_targets"]
    if not methods or t["method"] in methods
  ]
  return header, rows


class BenchmarkTable(SphinxDirective):
  required_arguments = 1
  has_content = True
  option_spec = {
    "table": directives.unchanged_required,
    "dataset": directives.unchanged,
    "model": directives.unchanged,
    "methods": directives.unchanged,
  }

  def run(self):
    name = self.arguments[0]
    path = FIGURES / name
    if not path.exists():
      raise self.error(f"benchmark JSON {path} not found")
    self.env.note_dependency(str(path))
    report = load(name)
    kind = self.options.get("table")
    methods = self.options.get("methods", "").split() or None
    note = ""
    try:
      if kind == "compare":
        header, rows = compare_table(report, methods)
      elif kind == "summary":
        header, rows = summary_table(report, methods)
      elif kind == "range-test":
        header, rows = range_test_table(report, methods)
      elif kind in ("robustness", "hand-tuned", "targets"):
        ds = report["datasets"][self.options["dataset"]]
        if kind == "robustness":
          header, rows = robustness_table(report, ds, methods)
        elif kind == "hand-tuned":
          header, rows = hand_tuned_table(ds, methods)
        else:
          header, rows, note = targets_table(report, ds, methods)
      elif kind in ("speed", "speed-targets", "safety-net"):
        model = report["models"][self.options["model"]]
        fn = {
          "speed": speed_table,
          "speed-targets": speed_targets_table,
          "safety-net": safety_net_table,
        }[kind]
        header, rows = fn(model, methods)
      else:
        raise self.error(f"unknown :table: {kind!r}")
    except KeyError as e:
      raise self.error(f"{name} has no field {e} (table {kind!r})") from e
    if methods:
      missing = set(methods) - {r[0].split(" ")[0] for r in rows}
      if missing:
        logger.warning("%s: no row for %s", name, sorted(missing), location=self.get_location())
    caption = " ".join(self.content).strip()
    container = nodes.container(classes=["benchmark"])
    container += command_paragraph(report, name)
    container += table_node(header, rows, caption)
    if note:
      container += nodes.paragraph(note, note)
    return [container]


class BenchmarkCommand(SphinxDirective):
  required_arguments = 1

  def run(self):
    name = self.arguments[0]
    self.env.note_dependency(str(FIGURES / name))
    return [command_paragraph(load(name), name)]


class BenchmarkFigure(SphinxDirective):
  required_arguments = 1
  has_content = True
  option_spec = {
    "json": directives.unchanged,
    "command": directives.unchanged,
    "alt": directives.unchanged,
    "width": directives.unchanged,
  }

  def run(self):
    name = self.arguments[0]
    png = FIGURES / name
    if not png.exists():
      raise self.error(f"benchmark figure {png} not found")
    if "json" in self.options:
      self.env.note_dependency(str(FIGURES / self.options["json"]))
      command = load(self.options["json"]).get("command")
    else:
      command = self.options.get("command")
    if not command:
      raise self.error("a benchmark figure names its command: give :json: or :command:")
    # The image path, relative to this document's directory.
    docdir = pathlib.Path(self.env.doc2path(self.env.docname)).parent
    rel = pathlib.Path(
      *([".."] * len(docdir.relative_to(self.env.srcdir).parts)),
      "..",
      "benchmarks",
      "figures",
      name,
    )
    figure = nodes.figure(classes=["benchmark-figure"])
    image = nodes.image(uri=str(rel).replace("\\", "/"), alt=self.options.get("alt", name))
    if "width" in self.options:
      image["width"] = self.options["width"]
    figure += image
    caption = nodes.caption()
    text = " ".join(self.content).strip()
    if text:
      inline, messages = self.state.inline_text(text + " ", self.lineno)
      caption += inline
      figure += messages
    caption += nodes.Text("Produced by ")
    caption += _code(command)
    caption += nodes.Text(f" (benchmarks/figures/{name}).")
    figure += caption
    return [figure]


def setup(app):
  app.add_directive("benchmark-table", BenchmarkTable)
  app.add_directive("benchmark-figure", BenchmarkFigure)
  app.add_directive("benchmark-command", BenchmarkCommand)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
