"""One registry of model families.

A family package (e.g. ``speech/sylber``) registers itself on import with
``FAMILY = register_family(Family(...))``. ``zoo`` imports the modality packages
(``zoo.speech``, ``zoo.vision``, ``zoo.multimodal``) and their sub-packages lazily,
the first time a family is looked up, so ``zoo`` itself never names a family.

Importing a family package must stay cheap: ``zoo list``, ``zoo info`` and ``zoo --help`` import
every family and must not import torch. So a family's ``__init__`` imports only its builder
(configs and sizes, torch-free) and names everything heavy (``build``, ``load``, ``trainer``,
``evaluate``, CLI verbs) as ``"package.module:attribute"`` strings or functions that import lazily.
``tests/zoo/test_cli.py`` checks this with a subprocess.
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
# Families that exist only for zoo's own tests (zoo.testing.toy_family) register under this modality;
# there is no package to discover for it.
TEST_MODALITY = "test"

_FAMILIES: dict[str, "Family"] = {}
_discovered = False


def import_object(reference: str) -> Any:
    """Import ``"package.module:attribute"`` (or a module with no ``:attribute``)."""
    module_name, _, attr = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def lazy_exports(module_name: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports each exported name from its submodule on first access.

    ``exports`` maps an attribute name to the module that defines it, e.g. ``{"load": "zoo.speech.x.loader"}``;
    a package writes ``__getattr__ = lazy_exports(__name__, _EXPORTS)`` so importing it stays torch-free
    (``zoo list``) while ``from package import load`` still works. The returned function raises
    ``AttributeError`` naming ``module_name`` for a name not in ``exports`` (what ``hasattr`` and
    ``from package import missing`` expect).
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__


class LazyCallable:
    """A ``"package.module:function"`` reference that imports its target on the first call."""

    def __init__(self, reference: str):
        if ":" not in reference:
            raise ValueError(f"a lazy reference must look like 'package.module:function', got {reference!r}")
        self.reference = reference
        self._target: Callable | None = None

    def resolve(self) -> Callable:
        """Import (once) and return the target; ``ImportError``/``AttributeError`` when the reference is wrong."""
        if self._target is None:
            self._target = import_object(self.reference)
        return self._target

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyCallable({self.reference!r})"


@dataclass
class Family:
    """A model family: how to build it, train it and load its official weights.

    ``name``: registry name (``zoo train NAME``, card ``family:``). ``modality``: one of
    ``MODALITIES`` (or ``TEST_MODALITY`` for test-only families). ``build(config) -> ZooModel``: a
    random-init model from a complete config. ``sizes``: size name -> partial config (the first is the
    default); ``defaults``: the config every size starts from. ``load(path, config) -> ZooModel``: reads an
    official checkpoint (file or folder) into a model of ``config``, strictly. ``trainer``/``evaluate``:
    ``"package.module:attribute"`` of the Trainer class and the evaluation function; ``commands``: extra
    CLI verbs (``{"segment": "package.module:main"}``). ``build`` and ``load`` may also be such strings:
    they are imported on first use, which keeps ``zoo list`` free of torch.

    Raises ``ValueError`` for an unknown modality or an empty ``sizes``.
    """

    name: str
    modality: str
    build: Callable[[dict], Any] | str
    sizes: dict[str, dict]
    trainer: str | None = None
    load: Callable[[str, dict], Any] | str | None = None
    evaluate: str | None = None
    commands: dict[str, str] = field(default_factory=dict)
    description: str = ""
    defaults: dict | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES + (TEST_MODALITY,):
            raise ValueError(f"Family {self.name!r}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if not self.sizes:
            raise ValueError(f"Family {self.name!r} declares no sizes")
        if isinstance(self.build, str):
            self.build = LazyCallable(self.build)
        if isinstance(self.load, str):
            self.load = LazyCallable(self.load)

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
        return import_object(dotted)


def register_family(family: Family) -> Family:
    """Add ``family`` to the registry (replacing one of the same name, with a warning); returns it."""
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
    """The registered family called ``name`` (``ca_dino`` and ``CA-DINO`` find ``ca-dino``).

    Imports the family packages on first use. Raises :class:`~zoo.errors.UnknownFamilyError`
    (a ``KeyError``) listing the known families.
    """
    _discover()
    key = name.lower().replace("_", "-")
    for candidate in (name, key):
        if candidate in _FAMILIES:
            return _FAMILIES[candidate]
    raise UnknownFamilyError(name, list(_FAMILIES))


def list_families() -> list[Family]:
    """Every registered family, sorted by name."""
    _discover()
    return sorted(_FAMILIES.values(), key=lambda f: f.name)


def closest(name: str, choices: list[str], n: int = 5) -> list[str]:
    """Up to ``n`` of ``choices`` that look like ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.4)
