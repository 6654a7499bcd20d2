"""Reporting helpers shared by the scripts: progress bar, machine, JSON, plots."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
import time
from typing import Any, Iterable

import jax
import numpy as np


def progress(iterable: Iterable, total: int | None = None, desc: str = "", quiet=False):
  """A tqdm progress bar on stderr; a plain iterator when tqdm is missing."""
  if quiet:
    return iterable
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return iterable
  return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  """Where and when: the numbers of a benchmark mean nothing without it."""
  try:
    load = list(os.getloadavg())
  except OSError:
    load = None
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:
    cpus = os.cpu_count()
  import optax  # pylint: disable=g-import-not-at-top

  return {
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "cpu": _cpu_model(),
    "cpus_available": cpus,
    "load_average_1_5_15min": load,
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0]),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "optax": optax.__version__,
  }


def jsonable(x: Any) -> Any:
  """``x`` as JSON holds it: arrays and tuples as lists, non-finite floats as strings."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    return jsonable(np.asarray(x).tolist())
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else str(x)  # JSON has no NaN/inf
  if isinstance(x, np.integer):
    return int(x)
  return x


def write_json(path: str, report: dict) -> None:
  if isinstance(report.get("machine"), dict):
    try:
      report["machine"]["load_average_at_end"] = list(os.getloadavg())
    except OSError:
      pass
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(jsonable(report), f, indent=1)
  print(f"wrote {path}")


def pyplot():
  """matplotlib's pyplot with the Agg backend, or None when not installed."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("matplotlib is not installed: no figure (pip install -e '.[examples]')")
    return None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def add_output_args(parser, name: str, *, progress: bool = False) -> None:
  """``--out results/<name>.json``, ``--png results/<name>.png`` (and ``--no-progress``)."""
  parser.add_argument("--out", default=f"results/{name}.json")
  parser.add_argument("--png", default=f"results/{name}.png")
  if progress:
    parser.add_argument("--no-progress", action="store_true")


def finish(report: dict, start: float, path: str) -> dict:
  """Stamps ``report["wall_s"]`` since ``start``, writes it to ``path``, returns it."""
  report["wall_s"] = time.perf_counter() - start
  write_json(path, report)
  print(f"total {report['wall_s']:.0f} s")
  return report


def panels(plt, rows: int, cols: int, width: float, height: float, **kwargs):
  """``(fig, axes)``: a ``rows x cols`` grid of ``width x height``-inch panels.

  ``axes`` is always 2-D (``squeeze=False``) and the layout constrained;
  ``kwargs`` go to ``plt.subplots``.
  """
  return plt.subplots(
    rows,
    cols,
    figsize=(width * cols, height * rows),
    squeeze=False,
    layout="constrained",
    **kwargs,
  )


def save_figure(fig, path: str) -> None:
  """Writes ``fig`` to ``path`` and closes it."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=90)
  print(f"wrote {path}")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  plt.close(fig)


def fmt(x: float, digits: int = 3) -> str:
  """``x`` with ``digits`` decimals; in scientific notation from 1e4 (a blown-up loss)."""
  if x is None or not np.isfinite(x):
    return "nan" if x is None or np.isnan(x) else ("inf" if x > 0 else "-inf")
  if abs(x) >= 1e4:
    return f"{x:.{digits - 1}e}"
  return f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
  widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: "  ".join(
    str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))
  )
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def rate_label(lr: float) -> str:
  return f"{lr:g}"
