"""Every notebook in notebooks/ runs top to bottom on small settings.

Each notebook is executed in a fresh Jupyter kernel with nbclient, as a user
would run it: its install cell must find optax_lr already installed (no
network), its settings cell defaults to the small CPU sizes, and matplotlib
draws with the non-interactive Agg backend. The committed ``.ipynb`` files
must carry no outputs and match ``notebooks/make_notebooks.py``.
"""

import importlib.util
import os
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

# Small settings run in well under a minute each on a CPU; this is the
# budget for one notebook on a busy CI machine.
CELL_TIMEOUT_S = 300


def _generator():
  spec = importlib.util.spec_from_file_location(
      "make_notebooks", NOTEBOOKS / "make_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_generated_notebook_is_committed_without_outputs():
  generator = _generator()
  assert sorted(p.stem for p in PATHS) == sorted(generator.NOTEBOOKS)
  for path in PATHS:
    assert path.read_text(encoding="utf-8") == generator.render(path.stem), (
        f"{path.name} differs from make_notebooks.py: run "
        "python notebooks/make_notebooks.py")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None


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
      nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS)}})
  start = time.perf_counter()
  client.execute(env=_kernel_env())  # raises CellExecutionError on any error
  elapsed = time.perf_counter() - start
  assert elapsed < CELL_TIMEOUT_S
  # The install cell found the package: it printed nothing and installed nothing.
  install = next(c for c in nb.cells if c.cell_type == "code")
  assert "find_spec" in install.source and install.outputs == []
