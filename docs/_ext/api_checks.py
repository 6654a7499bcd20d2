"""Sphinx checks and helpers for the API reference of optax_lr.

* Every name of ``optax_lr.__all__`` must have a docstring and be documented
  on an API page as ``optax_lr.<name>``: a warning otherwise, which
  ``sphinx-build -W`` turns into an error.
* The fields of the state ``NamedTuple``s are documented in the source by a
  comment on (or above) each field. autodoc would show "Alias for field number
  N"; this extension shows that comment instead, so the source stays the one
  place where a field is described.
* A cross-reference to a bare public name (``:func:`current_lr``` written in
  a submodule's docstring) resolves to ``optax_lr.<name>``.
"""

from __future__ import annotations

import inspect
import io
import re
import tokenize
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)

_ALIAS = re.compile(r"^Alias for field number \d+$")


def _is_namedtuple(obj: Any) -> bool:
  return isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def field_comments(cls: type) -> dict[str, str]:
  """``{field: comment}`` from the ``# ...`` comments of a NamedTuple's source.

  A field's description is the block of comment lines right above it plus the
  comment at the end of its line, in that order.
  """
  try:
    source = inspect.getsource(cls)
  except (OSError, TypeError):
    return {}
  comments: dict[str, str] = {}
  pending: list[str] = []
  lines = source.splitlines()
  tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
  trailing = {}
  code_lines = set()
  for tok in tokens:
    if tok.type == tokenize.COMMENT:
      row = tok.start[0]
      if lines[row - 1][: tok.start[1]].strip():
        trailing[row] = tok.string
    elif tok.type not in (
      tokenize.NL,
      tokenize.NEWLINE,
      tokenize.INDENT,
      tokenize.DEDENT,
      tokenize.ENDMARKER,
    ):
      code_lines.add(tok.start[0])
  field = re.compile(r"^\s+([A-Za-z_]\w*)\s*:")
  for row, line in enumerate(lines, start=1):
    stripped = line.strip()
    if row not in code_lines and stripped.startswith("#"):
      pending.append(stripped.lstrip("#").strip())
      continue
    match = field.match(line) if row in code_lines else None
    if match and match.group(1) in cls._fields:
      text = pending[:]
      if row in trailing:
        text.append(trailing[row].lstrip("#").strip())
      if text:
        comments[match.group(1)] = " ".join(text)
    pending = []
  return comments


def _to_rst(comment: str) -> str:
  """A source comment as reST: `x` (code in a comment) becomes ``x``; the
  characters reST would read as markup (``*``, ``|``, a trailing ``_``) are
  escaped outside code."""
  comment = re.sub(r"(?<!`)`([^`]+)`(?!`)", r"``\1``", comment)
  parts = re.split(r"(``[^`]+``)", comment)
  for i in range(0, len(parts), 2):
    text = parts[i].replace("\\", "\\\\")
    text = re.sub(r"([*|])", r"\\\1", text)
    parts[i] = re.sub(r"(\w)_(?=\W|$)", r"\1\\_", text)
  return "".join(parts)


def process_docstring(app, what, name, obj, options, lines):
  del app, options
  if what not in ("attribute", "property", "method"):
    return
  if not lines or not _ALIAS.match(" ".join(lines).strip()):
    return
  owner_name, _, field = name.rpartition(".")
  owner = _owner(owner_name)
  if owner is None or not _is_namedtuple(owner):
    return
  comment = field_comments(owner).get(field)
  if comment:
    lines[:] = [_to_rst(comment)]


def _owner(dotted: str):
  module_name, _, attr = dotted.rpartition(".")
  try:
    module = __import__(module_name, fromlist=[attr])
    return getattr(module, attr)
  except (ImportError, AttributeError, ValueError):
    return None


def check_public_docstrings(app):
  """Each public name has a docstring (a warning, an error under -W)."""
  import optax_lr  # pylint: disable=import-outside-toplevel

  for name in optax_lr.__all__:
    obj = getattr(optax_lr, name)
    if not (inspect.getdoc(obj) or "").strip():
      logger.warning(
        "optax_lr.%s is public (optax_lr.__all__) but has no docstring",
        name,
        type="optax_lr",
        subtype="docstring",
      )
    if _is_namedtuple(obj):
      comments = field_comments(obj)
      doc = inspect.getdoc(obj) or ""
      for field in obj._fields:
        if field not in comments and not re.search(rf"^\s+{field}:", doc, re.M):
          logger.warning(
            "optax_lr.%s: field %r has neither a comment nor an Attributes: entry",
            name,
            field,
            type="optax_lr",
            subtype="docstring",
          )


def check_public_documented(app, env):
  """Each public name is documented on an API page as optax_lr.<name>."""
  del app
  import optax_lr  # pylint: disable=import-outside-toplevel

  objects = env.get_domain("py").objects
  for name in optax_lr.__all__:
    if f"optax_lr.{name}" not in objects:
      logger.warning(
        "optax_lr.%s is public (optax_lr.__all__) but no API page documents it",
        name,
        type="optax_lr",
        subtype="api",
      )


def resolve_public(app, env, node, contnode):
  """A py reference that does not resolve as written, resolved by its tail.

  ``:func:`current_lr``` in a submodule's docstring is ``optax_lr.current_lr``;
  the annotation ``_checkpoint.SafetyNetState`` of a state field is
  ``optax_lr._checkpoint.SafetyNetState``. Only a unique optax_lr object whose
  dotted name ends with the target resolves; anything else stays a warning.
  """
  del app
  if node.get("refdomain") != "py":
    return None
  target = node.get("reftarget", "").lstrip("~.")
  if not target:
    return None
  domain = env.get_domain("py")
  matches = sorted(
    name
    for name in domain.objects
    if name.startswith("optax_lr.")
    and (name == f"optax_lr.{target}" or name.endswith(f".{target}"))
  )
  if f"optax_lr.{target}" in matches:
    matches = [f"optax_lr.{target}"]
  if len(matches) != 1:
    return None
  return domain.resolve_xref(
    env, node["refdoc"], env.app.builder, node.get("reftype", "obj"), matches[0], node, contnode
  )


def setup(app):
  app.connect("builder-inited", check_public_docstrings)
  app.connect("autodoc-process-docstring", process_docstring)
  app.connect("env-check-consistency", check_public_documented)
  app.connect("missing-reference", resolve_public)
  return {"parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["field_comments", "setup"]
