"""README.md sections included in the site, with their links made site links.

Pages include sections of the repository's README.md (MyST ``{include}`` with
``:start-after:`` / ``:end-before:``) rather than retyping them, so the code a
user reads here is the code ``tests/test_readme.py`` runs. The README's
relative links point at repository files; on the site they become links to the
page that covers the same thing, or plain text when no page does (a link to a
file outside the site would be a broken reference).
"""

from __future__ import annotations

import re

# README link target -> site document (absolute from the source directory).
SITE_LINKS = {
  "benchmarks/RESULTS.md": "project:/which_method.md",
}
_NOTEBOOK = re.compile(r"^notebooks/(\d\d_\w+)\.ipynb$")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _rewrite(match: re.Match) -> str:
  text, target = match.group(1), match.group(2)
  if re.match(r"^(https?:|mailto:|#|project:)", target):
    return match.group(0)
  if target in SITE_LINKS:
    return f"[{text}]({SITE_LINKS[target]})"
  notebook = _NOTEBOOK.match(target)
  if notebook:
    return f"[{text}](project:/notebooks/{notebook.group(1)}.ipynb)"
  return text  # a repository file with no page: its name, as written


def rewrite_links(app, relative_path, parent_docname, content):
  del app, parent_docname
  if relative_path.name == "README.md":
    content[0] = _LINK.sub(_rewrite, content[0])


def setup(app):
  app.connect("include-read", rewrite_links)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
