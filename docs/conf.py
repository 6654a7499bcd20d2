"""Sphinx configuration of the optax_lr documentation.

Build (warnings are errors):

  pip install -e ".[docs]"
  sphinx-build -W --keep-going -b html docs docs/_build/html

The notebooks of ``notebooks/`` are copied into ``docs/notebooks/`` (git
ignored) when the build starts and executed by myst-nb on their small
settings; the benchmark tables are rendered from the JSON files committed in
``benchmarks/figures/`` by ``docs/_ext/benchmark_tables.py``.
"""

import filecmp
import os
import pathlib
import shutil
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

# The notebooks run on their small CPU settings and draw off screen, with
# matplotlib's inline backend (Agg rendering, figures sent as PNG outputs: a
# plain "Agg" backend would draw them and send nothing). Set here so that the
# kernels myst-nb starts inherit them.
os.environ["OPTAX_LR_FULL"] = "0"
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import optax_lr  # noqa: E402  (after sys.path)

project = "optax_lr"
author = "optax_lr developers"
copyright = "optax_lr developers"  # pylint: disable=redefined-builtin
release = optax_lr.__version__
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
  "sphinx_design",
  "myst_nb",
  "benchmark_tables",
  "api_checks",
  "readme_include",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "README.md"]
templates_path = []

# ---------------------------------------------------------------- HTML

html_theme = "sphinx_book_theme"
html_title = f"optax_lr {release}"
html_theme_options = {
  "show_toc_level": 2,
  "navigation_with_keys": False,
}
html_static_path = []

# ---------------------------------------------------------------- MyST / myst-nb

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Every notebook runs at build time; a cell that raises fails the build.
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# ---------------------------------------------------------------- autodoc

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as a field list, no duplicate entries
napoleon_custom_sections = ["Pitfalls"]

# Broken cross-references are warnings (errors under -W). Names of other
# libraries cannot resolve without intersphinx (the build is offline), so
# they are exempt; every optax_lr name must resolve.
nitpicky = True
nitpick_ignore_regex = [
  (r"py:.*", r"(jax|jnp|jaxlib|optax|chex|flax|nnx|np|numpy)(\..*)?"),
  (r"py:.*", r"(typing|collections\.abc|types)\..*"),
  (
    r"py:.*",
    r"(Any|Callable|Optional|Union|Sequence|Iterable|Iterator|"
    r"NamedTuple|Mapping)",
  ),
  (
    r"py:.*",
    r"(int|float|bool|str|None|tuple|list|dict|object|type|"
    r"callable|optional|array|pytree|Array|ArrayTree|Schedule|"
    r"ScalarOrSchedule|Params|State|Updates)",
  ),
  (r"py:.*", r"A"),  # "A": the accumulation dtype in the state docs
  (r"py:.*", r"optional"),
]


# ---------------------------------------------------------------- notebooks


def _sync_notebooks():
  """Copies notebooks/*.ipynb into docs/notebooks/ (a git-ignored build copy).

  The notebooks stay in ``notebooks/``, one copy in the repository; a file is
  rewritten only when it changed, so Sphinx rebuilds only what changed.
  """
  target = DOCS / "notebooks"
  target.mkdir(exist_ok=True)
  sources = sorted((ROOT / "notebooks").glob("*.ipynb"))
  names = {p.name for p in sources}
  for stale in target.glob("*.ipynb"):
    if stale.name not in names:
      stale.unlink()
  for source in sources:
    copy = target / source.name
    if not copy.exists() or not filecmp.cmp(source, copy, shallow=False):
      shutil.copyfile(source, copy)


_sync_notebooks()
