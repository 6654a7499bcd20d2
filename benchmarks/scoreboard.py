"""Where issue 11's targets stand: one table from the committed robustness reports.

``benchmarks.robustness`` writes one report per task family and direction
(``benchmarks/figures/robustness*.json``), and ``--update`` replaces a
method's rows in a report when the method changes. The targets tables
printed in RESULTS.md are each from the day of their run; this script
reads every committed report, recomputes its targets with
``robustness.targets`` (the code that wrote them), and prints them as one
markdown table: per task and direction, each optax_lr method's worst initial
rate's final held-out loss over the best hand-tuned loss (the issue bounds
it by 1.25x), dog's worst for comparison, the range-test target (1.5x), and
which of newton_lr, AALR and the best hypergradient method are less robust
than dog. A second table says how firm each verdict is against the
seeds (:func:`resample_share`), a third gives the same ratio
for each method started at the range test's suggestion (information, not
a target), and a list says on which host each row was last run.
RESULTS.md carries the output between two markers;
``tests/test_benchmarks.py`` checks that it is this script's output on
the committed reports::

    python -m benchmarks.scoreboard
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pathlib

import numpy as np

from benchmarks import robustness

REPO = pathlib.Path(__file__).resolve().parent.parent
FIGURES = REPO / "benchmarks" / "figures"
RESULTS = REPO / "benchmarks" / "RESULTS.md"

# The committed reports, in the order of RESULTS.md's sections.
REPORTS = (
  "robustness",
  "robustness_adam",
  "robustness_cnn",
  "robustness_cnn_adam",
  "robustness_mnist1d_cnn",
  "robustness_mnist1d_cnn_adam",
  "robustness_lm",
)

# The rows that count for the targets, as the reports name them (ASLR's is
# its paper's pipeline, range test -> aslr), and what the table calls them.
TARGET_ROWS = {
  "hd": "hd",
  "hd_mult": "hd_mult",
  "rtho": "rtho",
  "marthe": "marthe",
  "newton_lr": "newton_lr",
  "aslr_range_test": "aslr (range test → aslr)",
  "aalr": "aalr",
}

# Each method started at the range test's suggestion (`--range-test-for`).
RANGE_TEST_ROWS = {f"{name}_range_test": name for name in TARGET_ROWS if name != "aslr_range_test"}

# Per direction, the hand-tuned optimizer that steps along it at a constant
# rate (``optax.sgd(rate, momentum=0.9)`` is the ``ema(0.9)`` direction at
# ten times the rate, so its grid covers the same directions' rates).
DIRECTION_REFERENCES = {"momentum": "sgd_momentum", "Adam": "adam", "AdamW": "adamw"}

BEGIN = "<!-- scoreboard: begin (python -m benchmarks.scoreboard) -->"
END = "<!-- scoreboard: end -->"

_FAILED = " ✗"


def _direction(report: dict) -> str:
  """The report's direction in a word: momentum, Adam or AdamW."""
  return report["direction"].split()[0].rstrip(":")


def load(figures: pathlib.Path = FIGURES, reports=REPORTS) -> list[dict]:
  """One column per task and direction: its targets, recomputed, and its hosts.

  Args:
    figures: the folder of the reports.
    reports: the reports' file names, without ``.json``, in column order.

  Returns:
    A list, in the order of ``reports``, of dicts with ``report`` (the file's stem),
    ``task``, ``direction``, ``targets`` (``robustness.targets`` of the
    report's method entries and hand-tuned references), ``scored_loss``
    (target row -> its [rates, seeds] final held-out losses, non-finite
    runs scored as the targets score them), ``reference_loss`` (each
    hand-tuned optimizer's [grid rates, seeds] losses) and ``hosts`` (method
    -> the CPU of the run that last wrote its rows; ``"hand-tuned references"`` -> the
    CPU of the run that wrote the references, which ``--update`` keeps).
  """
  columns = []
  for stem in reports:
    report = json.loads((figures / f"{stem}.json").read_text())
    for task, task_report in report["datasets"].items():
      hosts = {name: report["machine"]["cpu"] for name in task_report["methods"]}
      hosts["hand-tuned references"] = report["machine"]["cpu"]
      for update in report.get("updates", []):
        for name in update["methods"].get(task, []):
          hosts[name] = update["machine"]["cpu"]
      columns.append(
        {
          "report": stem,
          "task": task,
          "direction": _direction(task_report),
          "targets": robustness.targets(task_report["methods"], task_report["hand_tuned"]),
          "scored_loss": {
            name: np.asarray(task_report["methods"][name]["scored_loss"], float)
            for name in TARGET_ROWS
            if name in task_report["methods"]
          },
          "reference_loss": [
            np.asarray(ref["scored_loss"], float) for ref in task_report["hand_tuned"].values()
          ],
          "reference_best": {
            name: (ref["best_rate"], ref["best_loss"])
            for name, ref in task_report["hand_tuned"].items()
          },
          "hosts": hosts,
        }
      )
  return columns


def _ratio_cell(method: dict | None) -> str:
  """A method's ratio to the best hand-tuned loss, marked where above the bound."""
  if method is None or method["ratio_to_best_hand_tuned"] is None:
    return "-"
  return f"{method['ratio_to_best_hand_tuned']:.2f}" + ("" if method["within_bound"] else _FAILED)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _tally(columns: list[dict], names) -> list[str]:
  """Per method: in how many columns its ratio is within the bound, of those that ran it."""
  cells = []
  for name in names:
    ran = [c["targets"]["methods"][name] for c in columns if name in c["targets"]["methods"]]
    met = sum(bool(m["within_bound"]) for m in ran)
    cells.append(f"{met} of {len(ran)}" if ran else "-")
  return cells


def target_table(columns: list[dict]) -> str:
  """The targets: one row per task and direction, one column per method."""
  bound = robustness.HAND_TUNED_BOUND
  header = (
    ["task, direction", "best hand-tuned"]
    + list(TARGET_ROWS.values())
    + [
      "dog",
      "non-finite runs",
      f"range test (≤ {robustness.RANGE_TEST_BOUND}×)",
      "less robust than dog",
      "all met",
    ]
  )
  rows = []
  for c in columns:
    t = c["targets"]
    best = t["best_hand_tuned"]
    methods = t["methods"]
    dog = "-" if t["dog_worst"] is None else f"{t['dog_worst'] / best['loss']:.2f}"
    range_test = t["range_test"]
    less_robust = [n for n, m in methods.items() if m["as_robust_as_dog"] is False]
    rows.append(
      [
        f"{c['task']}, {c['direction']}",
        f"{best['optimizer']} at {best['rate']:g}: {best['loss']:.3f}",
      ]
      + [_ratio_cell(methods.get(name)) for name in TARGET_ROWS]
      + [
        dog,
        str(sum(m["nonfinite_params_runs"] for m in methods.values())),
        "-"
        if range_test is None
        else f"{range_test['ratio']:.2f}" + ("" if range_test["met"] else _FAILED),
        ", ".join(less_robust) if less_robust else "none",
        "yes" if t["all_met"] else "no",
      ]
    )
  rows.append(
    [f"within {bound}×", ""] + _tally(columns, TARGET_ROWS) + [""] * 5,
  )
  return _markdown(header, rows)


def _resampled_means(losses) -> tuple[np.ndarray, np.ndarray]:
  """Every mean of ``n`` draws with replacement from ``n`` seeds' losses, and its weight.

  One value per multiset of draws (``C(2n - 1, n)`` of them), weighted by
  its multinomial probability ``n! / (k_1! ... k_n!) / n^n``.
  """
  losses = np.asarray(losses, float)
  n = len(losses)
  means, weights = [], []
  for draw in itertools.combinations_with_replacement(range(n), n):
    counts = np.bincount(draw, minlength=n)
    weights.append(math.factorial(n) / math.prod(math.factorial(int(k)) for k in counts) / n**n)
    means.append(float(counts @ losses) / n)
  return np.asarray(means), np.asarray(weights)


def seed_resample_share(scored_loss, threshold):
  """The share of seed resamples in which every rate's seed mean is at most ``threshold``.

  A bootstrap over seeds, computed exactly: each rate's ``n`` seeds are
  drawn again ``n`` times with replacement, independently across rates
  (:func:`_resampled_means`), and a resample passes when the worst rate's
  mean of the drawn losses is at most ``threshold``: the product over rates
  of the weight of the passing means. With every seed the same it is 1 or
  0, the verdict itself; between those it says how much the verdict rests on
  single runs.

  Args:
    scored_loss: ``[rates, seeds]`` final losses.
    threshold: the largest passing seed mean, a float or an array of them.

  Returns:
    The share at each threshold, shaped like ``threshold``.
  """
  threshold = np.asarray(threshold, float)
  share = np.ones(threshold.shape)
  for losses in np.asarray(scored_loss, float):
    means, weights = _resampled_means(losses)
    share = share * np.sum(weights * (means <= threshold[..., None]), axis=-1)
  return share


def resample_share(scored_loss, references, bound: float) -> float:
  """The share of seed resamples in which a method is within ``bound`` of the references.

  Both sides are resampled, independently: the method's worst rate (as in
  :func:`seed_resample_share`) and the best hand-tuned loss, the least
  resampled seed mean over every reference optimizer and grid rate. With
  ``R`` that least mean, the share is ``sum_r P(R = r) · P(worst <= bound · r)``,
  where ``P(R >= r)`` is the product over the reference cells of ``P(mean >= r)``.

  Args:
    scored_loss: the method's ``[rates, seeds]`` final losses.
    references: the hand-tuned optimizers' ``[grid rates, seeds]`` final losses.
    bound: the issue's bound on the ratio (1.25).
  """
  cells = [_resampled_means(losses) for ref in references for losses in np.asarray(ref, float)]
  support = np.unique(np.concatenate([means for means, _ in cells]))
  at_least = np.ones(support.shape)
  for means, weights in cells:
    at_least = at_least * np.sum(weights * (means >= support[:, None]), axis=-1)
  probability = at_least - np.append(at_least[1:], 0.0)
  return float(np.sum(probability * seed_resample_share(scored_loss, bound * support)))


def resample_table(columns: list[dict]) -> str:
  """Per task and method, :func:`resample_share` at the issue's bound, in percent."""
  bound = robustness.HAND_TUNED_BOUND
  rows = []
  firm = {name: 0 for name in TARGET_ROWS}
  for c in columns:
    row = [f"{c['task']}, {c['direction']}"]
    for name in TARGET_ROWS:
      if name not in c["scored_loss"]:
        row.append("-")
        continue
      share = resample_share(c["scored_loss"][name], c["reference_loss"], bound)
      firm[name] += share >= 0.9
      row.append(f"{100 * share:.0f}")
    rows.append(row)
  ran = {name: sum(name in c["scored_loss"] for c in columns) for name in TARGET_ROWS}
  rows.append(
    ["within the bound in ≥ 90 %"]
    + [f"{firm[name]} of {ran[name]}" if ran[name] else "-" for name in TARGET_ROWS]
  )
  return _markdown(["task, direction"] + list(TARGET_ROWS.values()), rows)


def range_test_table(columns: list[dict]) -> str:
  """Each method started at the range test's suggestion (information)."""
  bound = robustness.HAND_TUNED_BOUND
  names = [n for n in RANGE_TEST_ROWS if any(n in c["targets"]["methods"] for c in columns)]
  header = ["task, direction"] + [RANGE_TEST_ROWS[n] for n in names]
  rows = [
    [f"{c['task']}, {c['direction']}"]
    + [_ratio_cell(c["targets"]["methods"].get(n)) for n in names]
    for c in columns
  ]
  rows.append([f"within {bound}×"] + _tally(columns, names))
  return _markdown(header, rows)


def direction_table(columns: list[dict]) -> str:
  """Per task, the direction's own hand-tuned optimizer at its best constant rate.

  Its loss over the best hand-tuned loss of the task: above the bound, no
  constant rate of that direction meets the target, and a method over it
  must do better with the rate it moves. The last column counts the target
  rows that fail on the task.
  """
  bound = robustness.HAND_TUNED_BOUND
  rows = []
  for c in columns:
    name = DIRECTION_REFERENCES.get(c["direction"])
    ran = [m for n, m in c["targets"]["methods"].items() if n in TARGET_ROWS]
    failed = f"{sum(not m['within_bound'] for m in ran)} of {len(ran)}"
    if name not in c["reference_best"]:  # a report without that optimizer
      rows.append([f"{c['task']}, {c['direction']}", "-", "-", failed])
      continue
    rate, loss = c["reference_best"][name]
    ratio = loss / c["targets"]["best_hand_tuned"]["loss"]
    rows.append(
      [
        f"{c['task']}, {c['direction']}",
        f"{name} at {rate:g}: {loss:.3f}",
        f"{ratio:.2f}" + ("" if ratio <= bound else _FAILED),
        failed,
      ]
    )
  header = [
    "task, direction",
    "the direction, hand-tuned",
    "over the best hand-tuned",
    "methods above the bound",
  ]
  return _markdown(header, rows)


def host_list(columns: list[dict]) -> str:
  """Per report, the host that last ran each of its rows (XLA compiles for the CPU)."""
  order = ["hand-tuned references", "dog", *TARGET_ROWS, *RANGE_TEST_ROWS]
  lines = []
  for stem in dict.fromkeys(c["report"] for c in columns):
    by_host: dict[str, set] = {}
    for c in columns:
      if c["report"] != stem:
        continue
      for name in order:
        if name in c["hosts"]:
          by_host.setdefault(c["hosts"][name], set()).add(name)
    parts = [
      f"{host}: {', '.join(n for n in order if n in names)}"
      for host, names in sorted(by_host.items())
    ]
    lines.append(f"- `{stem}.json`: " + "; ".join(parts))
  return "\n".join(lines)


def scoreboard(columns: list[dict]) -> str:
  """The markdown that RESULTS.md carries between ``BEGIN`` and ``END``."""
  bound = robustness.HAND_TUNED_BOUND
  return "\n\n".join(
    [
      BEGIN,
      "Each method's worst initial rate (seed mean of its final held-out loss) "
      f"over the best hand-tuned loss of the task; ✗: above {bound}×, the "
      "issue's bound. dog: `optax.contrib.dog`'s worst, the same ratio "
      "(not a target). Range test: SGD at `lr_range_test`'s suggestion over "
      "SGD at its best grid rate, on the momentum reports only.",
      target_table(columns),
      "How firm each verdict is against the seeds: the share (%) of seed "
      "resamples (the seeds of each initial rate, and of each hand-tuned "
      "optimizer's grid rate, drawn again with replacement) in which the "
      f"method's worst initial rate is within {bound}× of the best hand-tuned "
      "loss. 100 or 0: no single run decides the verdict; in between, one or "
      "two runs do:",
      resample_table(columns),
      "Started at the range test's suggestion instead of each initial rate "
      "(`--range-test-for`; information, not a target), the same ratio:",
      range_test_table(columns),
      "What the methods' own direction reaches at a constant rate: the "
      "hand-tuned optimizer that steps along it (`sgd_momentum`, `adam`, "
      "`adamw`) at its best grid rate, over the best hand-tuned loss of the "
      f"task (information, not a target). ✗: above {bound}×, where no "
      "constant rate of the direction meets the bound:",
      direction_table(columns),
      "The host that last ran each row (`--update` replaces a method's rows; "
      "XLA compiles for the CPU it runs on, and chaotic runs move with it):",
      host_list(columns),
      END,
    ]
  )


def in_results(text: str) -> str:
  """The scoreboard that ``text`` (RESULTS.md) carries, markers included."""
  start = text.find(BEGIN)
  end = text.find(END, start)
  if start < 0 or end < 0:
    raise ValueError(f"no scoreboard: the text lacks {BEGIN!r} or {END!r}")
  return text[start : end + len(END)]


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--figures", default=str(FIGURES), help="the folder of the reports")
  args = parser.parse_args(argv)
  text = scoreboard(load(pathlib.Path(args.figures)))
  print(text)
  return text


if __name__ == "__main__":
  main()
