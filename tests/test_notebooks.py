"""Every notebook in notebooks/ runs top to bottom on small settings.

Each notebook's source is a jupytext percent-format script,
``notebooks/NN_name.py``, paired with the ``.ipynb`` users open. The
committed ``.ipynb`` must hold the same cells as its script and carry no
outputs (``jupytext --sync notebooks/*.py`` refreshes it after an edit).

Each notebook is executed in a fresh Jupyter kernel with nbclient, as a user
would run it: its install cell must find optax_lr already installed (no
network), its settings cell defaults to the small CPU sizes, and matplotlib
draws with the non-interactive Agg backend.
"""

import os
import pathlib
import time

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
SCRIPTS = sorted(NOTEBOOKS.glob("*.py"))
NAMES = ["01_quickstart", "02_hypergradients", "03_newton_lr", "04_aslr", "05_aalr", "06_schedules"]
SYNC = "run: jupytext --sync notebooks/*.py"

# Small settings run in well under a minute each on a CPU; this is the
# budget for one notebook on a busy CI machine.
CELL_TIMEOUT_S = 300


def _cells(nb):
  return [(cell.cell_type, cell.source) for cell in nb.cells]


def test_every_script_is_paired_with_its_notebook():
  assert [p.stem for p in SCRIPTS] == NAMES, (
    "notebooks/ should hold one jupytext script per notebook"
  )
  assert [p.stem for p in PATHS] == NAMES, (
    f"every notebooks/*.py needs its .ipynb and vice versa: {SYNC}"
  )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_script_without_outputs(name):
  script = jupytext.read(NOTEBOOKS / f"{name}.py")
  assert script.metadata["jupytext"]["formats"] == "ipynb,py:percent"
  assert script.metadata["kernelspec"]["name"] == "python3"
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  nbformat.validate(nb)
  assert _cells(nb) == _cells(script), f"{name}.ipynb differs from {name}.py: {SYNC}"
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
        f"{name}.ipynb is committed with outputs: clear them, then {SYNC}"
      )


def _kernel_env():
  env = dict(os.environ)
  env["MPLBACKEND"] = "Agg"
  env["OPTAX_LR_FULL"] = "0"
  # The test session's 8 fake CPU devices (conftest.py) are not a user's.
  env.pop("XLA_FLAGS", None)
  return env


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path):
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOKS)}},
  )
  start = time.perf_counter()
  client.execute(env=_kernel_env())  # raises CellExecutionError on any error
  elapsed = time.perf_counter() - start
  assert elapsed < CELL_TIMEOUT_S
  # The install cell found the package: it printed nothing and installed nothing.
  install = next(c for c in nb.cells if c.cell_type == "code")
  assert "find_spec" in install.source and install.outputs == []
