"""The README's promises: its set-up lines and its Python examples run."""

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_setup_commands():
  first_block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
  assert README.read_text().startswith("```bash\n")
  lines = first_block.group(1).strip().splitlines()
  assert 'pip install -e ".[test]" && pytest' in lines


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_block_runs(index):
  code = _python_blocks()[index]
  # The README shows code as users run it, with standard dtype promotion.
  with jax.numpy_dtype_promotion("standard"):
    exec(compile(code, f"README.md[python block {index}]", "exec"), {})
