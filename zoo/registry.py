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

from zoo.config import sized_config
from zoo.errors import UnknownFamilyError

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

    def make_config(self, size: str | None = None, overrides: dict | None = None, *, source: str = "",
                    **kw_overrides) -> dict:
        """The complete config of ``size`` (default: the first size) with overrides applied.

        Overrides come as a dict (nested or dotted keys) and/or keywords:
        ``make_config("tiny", {"encoder.hidden_size": 32}, norm_threshold=2.0)``. An unknown key or a
        value of the wrong type raises :class:`~zoo.errors.ConfigError` listing the valid keys (the
        same check and message as ``zoo.load(name, key=value)``); an unknown size raises
        ``ConfigError`` listing the sizes.
        """
        return sized_config(f"Family {self.name!r}", self.defaults or {}, self.sizes, size,
                            {**(overrides or {}), **kw_overrides}, source=source)

    def resolve(self, dotted: str) -> Any:
        """Import ``'package.module:attribute'`` (used for trainer, evaluate and commands)."""
        module_name, _, attr = dotted.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module


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
