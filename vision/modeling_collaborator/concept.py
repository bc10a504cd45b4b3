"""Concepts: a subjective visual concept in the user's words, as a YAML file, with versioned edits.

A concept file::

    name: calm scene
    description: >-
      A calm scene: few objects, all in cool colours, nothing red.
    positive: [few objects]            # optional: criteria that make an image positive
    negative: [anything red]           # optional: criteria that rule an image out
    examples: {positive: [img/a.png], negative: []}   # optional example images
    version: 1
    history: []                        # earlier versions, oldest first (written by edits)

``name`` and ``description`` are required. :meth:`Concept.edit` returns the next version with the
current one appended to ``history`` (nothing is ever dropped); the human-review step edits the
description this way (Modeling Collaborator, arXiv 2403.02626: the user refines the concept in
natural language instead of labelling thousands of images).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zoo.errors import ConfigError

__all__ = ["Concept", "load_concept", "save_concept"]


def _strings(value, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ConfigError(f"{where} must be a list of strings, got {value!r}.")


@dataclass(frozen=True)
class Concept:
    """One version of a concept.

    name: short name ("calm scene"). description: the concept in words, with what makes an image
    positive and what rules it out. positive / negative: optional extra criteria (strings).
    examples: ``{"positive": [paths], "negative": [paths]}`` (absolute paths after loading).
    version: 1 for the user's file, +1 per edit. history: earlier versions as dicts (oldest first),
    each with the reason of the edit that replaced it.
    """

    name: str
    description: str
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    examples: dict = field(default_factory=lambda: {"positive": [], "negative": []})
    version: int = 1
    history: tuple[dict, ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError("A concept needs a name (a few words, e.g. 'calm scene').")
        if not isinstance(self.description, str) or not self.description.strip():
            raise ConfigError(f"Concept {self.name!r} has no description: write what makes an image positive and "
                              "what rules it out (e.g. 'A calm scene: few objects, cool colours, nothing red.').")
        object.__setattr__(self, "name", self.name.strip())
        object.__setattr__(self, "description", " ".join(self.description.split()))
        object.__setattr__(self, "positive", tuple(_strings(self.positive, "concept positive")))
        object.__setattr__(self, "negative", tuple(_strings(self.negative, "concept negative")))
        if int(self.version) < 1:
            raise ConfigError(f"concept version must be >= 1, got {self.version!r}.")
        object.__setattr__(self, "version", int(self.version))

    def text(self) -> str:
        """The concept as prompts show it: the description, then the explicit criteria if any."""
        lines = [self.description]
        if self.positive:
            lines.append("Positive when: " + "; ".join(self.positive) + ".")
        if self.negative:
            lines.append("Negative when: " + "; ".join(self.negative) + ".")
        return " ".join(lines)

    def digest(self) -> str:
        """16 hex digits of SHA-256 over name, description and criteria (what the pipeline reads)."""
        payload = json.dumps([self.name, self.description, list(self.positive), list(self.negative)])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def edit(self, *, description: str | None = None, positive=None, negative=None, reason: str = "") -> "Concept":
        """The next version: changed fields replaced, this version appended to ``history`` with
        ``reason`` (e.g. "human review: 12 disagreements")."""
        record = {"version": self.version, "description": self.description, "positive": list(self.positive),
                  "negative": list(self.negative), "replaced_because": reason,
                  "replaced_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return Concept(self.name, self.description if description is None else description,
                       self.positive if positive is None else tuple(_strings(positive, "positive")),
                       self.negative if negative is None else tuple(_strings(negative, "negative")),
                       dict(self.examples), self.version + 1, (*self.history, record))

    def to_dict(self) -> dict:
        """The YAML/JSON form (lists, not tuples)."""
        out = asdict(self)
        out.update(positive=list(self.positive), negative=list(self.negative), history=list(self.history))
        return out

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "concept", base: Path | None = None) -> "Concept":
        """A concept from its dict form; example paths are resolved against ``base``. Raises
        ``ConfigError`` naming ``source`` for unknown keys or a missing name/description."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source} must be a mapping with name and description, got {type(data).__name__}.")
        known = {"name", "description", "positive", "negative", "examples", "version", "history"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown keys {unknown}; a concept has {sorted(known)}.")
        if not data.get("description"):
            raise ConfigError(f"{source} has no description: write what makes an image positive and what rules "
                              "it out (e.g. 'A calm scene: few objects, cool colours, nothing red.').")
        examples = data.get("examples") or {}
        if not isinstance(examples, dict) or set(examples) - {"positive", "negative"}:
            raise ConfigError(f"{source}: examples must be {{positive: [paths], negative: [paths]}}.")
        resolved = {}
        for kind in ("positive", "negative"):
            paths = _strings(examples.get(kind), f"{source} examples.{kind}")
            resolved[kind] = [str((base / p) if base is not None and not os.path.isabs(p) else Path(p))
                              for p in paths]
        try:
            return cls(str(data.get("name") or ""), str(data["description"]), data.get("positive"),
                       data.get("negative"), resolved, int(data.get("version", 1)),
                       tuple(data.get("history") or ()))
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None


def load_concept(path) -> Concept:
    """Read a concept YAML file (see the module docstring). Raises ``ConfigError`` naming the file
    when it is missing, not YAML, or lacks a name or description."""
    import yaml

    file = Path(os.fspath(path)).expanduser()
    if not file.is_file():
        raise ConfigError(f"Concept file {str(file)!r} does not exist; write a YAML file with name and description "
                          "(see vision/modeling_collaborator/concepts/calm.yaml).")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"Concept file {file} is not valid YAML: {error}") from None
    return Concept.from_dict(data or {}, source=f"concept file {file}", base=file.resolve().parent)


def save_concept(concept: Concept, path, *, overwrite: bool = False) -> Path:
    """Write ``concept`` as YAML atomically; an existing file raises ``OutputExistsError`` unless
    ``overwrite``."""
    import yaml

    from zoo.errors import OutputExistsError
    from zoo.files import write_text

    file = Path(os.fspath(path)).expanduser()
    if file.exists() and not overwrite:
        raise OutputExistsError(f"{file} exists; pass overwrite=True to replace it.")
    return write_text(file, yaml.safe_dump(concept.to_dict(), sort_keys=False, allow_unicode=True))
