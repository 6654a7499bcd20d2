"""The release's metadata: one version, py.typed, the license, the changelog.

CI builds the wheel and the sdist, checks them with twine and runs
.ci/smoke_test.py against the installed wheel (.ci/run); these tests check
the source tree those come from.
"""

import importlib.metadata
import pathlib
import re

import pytest

import optax_lr
from optax_lr import _version

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(optax_lr.__file__).resolve().parent


def _pyproject():
  tomllib = pytest.importorskip("tomllib")  # Python 3.11+
  return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_written_once():
  project = _pyproject()
  assert "version" not in project["project"]
  assert "version" in project["project"]["dynamic"]
  attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
  assert attr == "optax_lr._version.__version__"
  assert optax_lr.__version__ == _version.__version__
  assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", optax_lr.__version__)


def test_version_matches_the_installed_metadata():
  assert importlib.metadata.version("optax_lr") == optax_lr.__version__


def test_version_is_not_a_public_api_name():
  # As optax: ``__version__`` is an attribute, not in ``__all__``.
  assert "__version__" not in optax_lr.__all__


def test_py_typed_ships():
  assert (PACKAGE / "py.typed").is_file()
  package_data = _pyproject()["tool"]["setuptools"]["package-data"]
  assert "py.typed" in package_data["optax_lr"]


def test_license_file():
  project = _pyproject()["project"]
  assert project["license"] == "Apache-2.0"
  assert project["license-files"] == ["LICENSE"]
  text = (ROOT / "LICENSE").read_text()
  assert "Apache License" in text and "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text


def test_changelog_has_this_release():
  changelog = (ROOT / "CHANGELOG.md").read_text()
  version = re.escape(optax_lr.__version__)
  assert re.search(rf"^## \[{version}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, flags=re.M), (
    f"CHANGELOG.md has no entry for {version}"
  )
