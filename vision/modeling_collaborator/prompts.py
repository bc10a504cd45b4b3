"""Prompt templates: ``prompts/<name>.txt`` with ``{field}`` placeholders (``str.format`` syntax).

``render(template_name, folder=None, **fields)`` fills a template; a folder given by the recipe
(``prompts.dir``) overrides the bundled templates file by file. Every template is part of the
settings of the step that uses it (``digest``), so editing one is a changed setting, not a
silent mix of old and new answers.
"""
from __future__ import annotations

import hashlib
import os
import string
from pathlib import Path

from zoo.errors import ConfigError

BUNDLED = Path(__file__).resolve().parent / "prompts"
NAMES = ("attributes", "questions", "queries", "annotate", "retry", "refine", "cupl")


def template(name: str, folder=None) -> str:
    """The text of template ``name`` (from ``folder`` when it has one, else the bundled one)."""
    if name not in NAMES:
        raise ConfigError(f"unknown prompt template {name!r}; templates are {', '.join(NAMES)}.")
    if folder:
        custom = Path(os.fspath(folder)).expanduser() / f"{name}.txt"
        if custom.is_file():
            return custom.read_text(encoding="utf-8")
    return (BUNDLED / f"{name}.txt").read_text(encoding="utf-8")


def fields(name: str, folder=None) -> set[str]:
    """The placeholder names template ``name`` uses."""
    return {field for _, field, _, _ in string.Formatter().parse(template(name, folder)) if field}


def render(template_name: str, folder=None, /, **values) -> str:
    """Template ``template_name`` with its placeholders filled (trailing whitespace stripped).
    Raises ``ConfigError`` naming a placeholder that has no value."""
    text = template(template_name, folder)
    missing = sorted(fields(template_name, folder) - set(values))
    if missing:
        raise ConfigError(f"prompt template {template_name}.txt uses {missing}, which the step does not provide; "
                          f"it provides {sorted(values)}.")
    return text.format(**values).rstrip()


def digest(names, folder=None) -> str:
    """16 hex digits of SHA-256 over the named templates' texts."""
    sha = hashlib.sha256()
    for name in names:
        sha.update(name.encode() + b"\0" + template(name, folder).encode() + b"\0")
    return sha.hexdigest()[:16]
