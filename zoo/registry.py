"""One registry of model families.

A family package (e.g. ``speech/sylber``) registers itself on import with
``FAMILY = register_family(Family(...))``. ``zoo`` imports the modality packages
(``zoo.speech``, ``zoo.vision``, ``zoo.multimodal``) and their sub-packages lazily,
the first time a family is looked up, so ``zoo`` itself never names a family.
"""
from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from zoo.config import merge
from zoo.errors import ConfigError, UnknownFamilyError

logger = logging.getLogger("zoo")

MODALITIES = ("speech", "vision", "multimodal")

_FAMILIES: dict[str, "Family"] = {}
_discovered = False


@dataclass
class Family:
    """A model family: how to build it, train it and load its official weights."""

    name: str
    modality: str
    build: Callable[[dict], Any]
    sizes: dict[str, dict]
    trainer: str | None = None
    load: Callable[[str, dict], Any] | None = None
    evaluate: str | None = None
    commands: dict[str, str] = field(default_factory=dict)
    description: str = ""
    defaults: dict | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"Family {self.name!r}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if not self.sizes:
            raise ValueError(f"Family {self.name!r} declares no sizes")

    def make_config(self, size: str | None = None, overrides: dict | None = None, *, source: str = "") -> dict:
        """The complete config of ``size`` with ``overrides`` applied (dotted keys allowed)."""
        size = size or next(iter(self.sizes))
        if size not in self.sizes:
            raise ConfigError(
                f"Family {self.name!r} has no size {size!r}{' (' + source + ')' if source else ''}; "
                f"sizes: {', '.join(self.sizes)}"
            )
        config = merge(self.defaults or {}, self.sizes[size])
        config.setdefault("size", size)
        for key, value in (overrides or {}).items():
            set_dotted(config, key, value, source=source or f"family {self.name!r}")
        return config

    def resolve(self, dotted: str) -> Any:
        """Import ``'package.module:attribute'`` (used for trainer, evaluate and commands)."""
        module_name, _, attr = dotted.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module


def set_dotted(config: dict, dotted_key: str, value: Any, *, source: str = "", allow_new: bool = False) -> None:
    """Set ``a.b.c`` in a nested config; unknown keys are a ConfigError that lists the valid ones."""
    parts = dotted_key.split(".")
    node = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if part not in node and not allow_new:
            where = ".".join(parts[:depth]) or "the top level"
            valid = ", ".join(sorted(node)) or "(none)"
            raise ConfigError(f"Unknown config key {dotted_key!r} in {source}: {where} has keys {valid}")
        if last:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                if allow_new and part not in node:
                    node[part] = {}
                else:
                    raise ConfigError(f"Config key {'.'.join(parts[:depth + 1])!r} in {source} is not a section")
            node = node[part]


def register_family(family: Family) -> Family:
    existing = _FAMILIES.get(family.name)
    if existing is not None and existing is not family:
        logger.warning("re-registering model family %r", family.name)
    _FAMILIES[family.name] = family
    return family


def _discover() -> None:
    """Import every family package under the modality packages (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for modality in MODALITIES:
        package = importlib.import_module(f"zoo.{modality}")
        for info in pkgutil.iter_modules(package.__path__):
            if info.ispkg:
                importlib.import_module(f"zoo.{modality}.{info.name}")


def get_family(name: str) -> Family:
    _discover()
    key = name.lower().replace("_", "-")
    for candidate in (name, key):
        if candidate in _FAMILIES:
            return _FAMILIES[candidate]
    raise UnknownFamilyError(name, list(_FAMILIES))


def list_families() -> list[Family]:
    _discover()
    return sorted(_FAMILIES.values(), key=lambda f: f.name)


def closest(name: str, choices: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
