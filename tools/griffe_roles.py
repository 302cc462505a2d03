"""A griffe extension for ``make docs``: callflow's docstrings are written with Sphinx roles
(``:class:`~callflow.errors.ActionError```) and reST literal blocks (``::``); mkdocstrings
renders Markdown. Each role becomes a code span, linked into the API reference when it
names something the reference documents (an export of ``callflow`` or ``callflow.testing``);
a paragraph ending in ``::`` ends in ``:`` (the indented block after it is code either way).

Runs only inside ``mkdocs build``; nothing in ``callflow`` imports it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

import callflow
import callflow.testing

_ROLE = re.compile(r":(?:class|meth|func|data|mod|attr|exc|obj):`(~?)([^`<]+?)(?:\s*<([^`>]+)>)?`")
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)
_PUBLIC = {name: f"callflow.{name}" for name in callflow.__all__} | {
    name: f"callflow.testing.{name}" for name in callflow.testing.__all__
}


def _role(match: re.Match[str]) -> str:
    short, target, explicit = match.group(1), match.group(2).strip(), match.group(3)
    if explicit:  # :class:`text <target>`
        text, target = target, explicit.strip()
    else:
        text = target.rsplit(".", 1)[-1] if short else target
    last = target.rsplit(".", 1)[-1]
    if last in _PUBLIC and target in {last, _PUBLIC[last]} | _canonical(last):
        return f"[`{text}`][{_PUBLIC[last]}]"
    return f"`{text}`"


def _canonical(name: str) -> set[str]:
    """The module path a public name is defined under (``callflow.errors.ActionError``)."""
    module = callflow.testing if _PUBLIC[name].startswith("callflow.testing.") else callflow
    obj = getattr(module, name)
    where = getattr(obj, "__module__", None)
    return {f"{where}.{name}"} if isinstance(where, str) else set()


def rewrite(text: str) -> str:
    """The docstring ``text`` with its Sphinx roles and ``::`` made Markdown."""
    return _LITERAL.sub(r"\1:", _ROLE.sub(_role, text))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring as it is loaded (before it is parsed or rendered)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
