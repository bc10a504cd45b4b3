"""Model cards: one YAML file per published model name (``hub_cards/<name>.yaml``).

A card is what users load by name, like a timm pretrained tag or a fairseq2 asset
card. It names the family and size, config overrides, where the weights live, and
the facts a user needs (license, paper, sample rate, reported metrics).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import CardError, UnknownModelError
from zoo.registry import closest

NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:[-.][a-z0-9]+)*$")
WEIGHT_FORMATS = ("official", "zoo")

_FIELDS = {
    "name": str, "family": str, "size": str, "config": dict, "weights": dict, "license": str,
    "paper": str, "sample_rate": int, "image_size": int, "metrics": list, "description": str,
    "tags": list, "pipeline_tag": str, "datasets": list, "base_model": str, "notes": str,
}
_REQUIRED = ("name", "family", "description")
_WEIGHT_FIELDS = {"repo_id": str, "filename": str, "revision": str, "format": str, "notes": str}


@dataclass(frozen=True)
class Weights:
    """Where a card's weights live: Hub ``repo_id`` and ``filename`` (optionally pinned to ``revision``), and their
    ``format``: ``official`` (the upstream checkpoint, converted on load by the family's loader) or ``zoo`` (a
    zoo-format repo).
    """
    repo_id: str
    filename: str
    format: str = "official"
    revision: str | None = None
    notes: str = ""


@dataclass(frozen=True)
class Card:
    """One published model name (``hub_cards/<name>.yaml``): family, size, config overrides, weights and the facts a
    user needs (license, paper, sample rate, reported metrics with their sources). Built by :func:`parse_card`.
    """
    name: str
    family: str
    description: str
    size: str | None = None
    config: dict = field(default_factory=dict)
    weights: Weights | None = None
    license: str | None = None
    paper: str | None = None
    sample_rate: int | None = None
    image_size: int | None = None
    metrics: list = field(default_factory=list)
    tags: list = field(default_factory=list)
    pipeline_tag: str | None = None
    datasets: list = field(default_factory=list)
    base_model: str | None = None
    notes: str = ""
    source: str = ""

    @property
    def has_weights(self) -> bool:
        """Whether released weights exist (``zoo.load(name)`` works without ``pretrained=False``)."""
        return self.weights is not None

    def to_dict(self) -> dict:
        """The card's set fields as a plain dict (what ``zoo info`` prints), weights included."""
        out = {k: getattr(self, k) for k in _FIELDS if getattr(self, k) not in (None, [], {}, "")}
        if self.weights is not None:
            out["weights"] = {k: v for k, v in vars(self.weights).items() if v not in (None, "")}
        return out


def parse_card(data: Any, source: str) -> Card:
    """Validate one card's YAML mapping; errors name the file and the field."""
    if not isinstance(data, dict):
        raise CardError(f"{source}: a card must be a YAML mapping, got {type(data).__name__}")
    for key in data:
        if key not in _FIELDS:
            raise CardError(f"{source}: unknown field {key!r}; valid fields: {', '.join(sorted(_FIELDS))}")
    for key in _REQUIRED:
        if key not in data:
            raise CardError(f"{source}: missing required field {key!r}")
    for key, kind in _FIELDS.items():
        if key in data and data[key] is not None and not isinstance(data[key], kind):
            raise CardError(f"{source}: field {key!r} must be a {kind.__name__}, got {type(data[key]).__name__}")
    if not NAME_PATTERN.match(data["name"]):
        raise CardError(f"{source}: field 'name' must be lowercase words joined by '-', got {data['name']!r}")
    weights = None
    if data.get("weights") is not None:
        raw = data["weights"]
        for key in raw:
            if key not in _WEIGHT_FIELDS:
                raise CardError(f"{source}: unknown field 'weights.{key}'; valid: {', '.join(_WEIGHT_FIELDS)}")
        for key in ("repo_id", "filename"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise CardError(f"{source}: field 'weights.{key}' is required and must be a string")
        if raw.get("format", "official") not in WEIGHT_FORMATS:
            raise CardError(f"{source}: field 'weights.format' must be one of {WEIGHT_FORMATS}, got {raw['format']!r}")
        weights = Weights(
            repo_id=raw["repo_id"], filename=raw["filename"], format=raw.get("format", "official"),
            revision=raw.get("revision"), notes=raw.get("notes", ""),
        )
    for i, metric in enumerate(data.get("metrics") or []):
        if not isinstance(metric, dict) or not {"name", "value", "source"} <= set(metric):
            raise CardError(f"{source}: field 'metrics[{i}]' needs 'name', 'value' and 'source'")
    values = {k: v for k, v in data.items() if k != "weights" and v is not None}
    return Card(weights=weights, source=source, **values)


def _card_files() -> list[tuple[str, str]]:
    root = resources.files("zoo.hub_cards")
    return sorted((entry.name, entry.read_text(encoding="utf-8")) for entry in root.iterdir()
                  if entry.name.endswith(".yaml"))


_CARDS: dict[str, Card] | None = None


def all_cards() -> dict[str, Card]:
    """Every card, by name: the bundled ``hub_cards/*.yaml`` (parsed once) plus cards added with :func:`add_card`.

    Raises :class:`~zoo.errors.CardError` naming the file for an invalid card.
    """
    global _CARDS
    if _CARDS is None:
        cards = {}
        for filename, text in _card_files():
            source = f"hub_cards/{filename}"
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise CardError(f"{source}: not valid YAML: {err}") from err
            card = parse_card(data, source)
            if Path(filename).stem != card.name:
                raise CardError(f"{source}: field 'name' is {card.name!r} but the file is named {filename!r}")
            cards[card.name] = card
        _CARDS = cards
    return _CARDS


def get_card(name: str) -> Card:
    """The card called ``name``; :class:`~zoo.errors.UnknownModelError` (listing the closest names) otherwise."""
    cards = all_cards()
    if name in cards:
        return cards[name]
    raise UnknownModelError(name, closest(name, list(cards)))


def list_models(pattern: str = "*", modality: str | None = None, pretrained: bool | None = None) -> list[str]:
    """Card names matching an fnmatch ``pattern`` (``*``, ``?``, ``[...]``), sorted, optionally filtered by
    ``modality`` (``"speech"``, ``"vision"``, ``"multimodal"``, or ``"test"`` for test-only families) and by
    ``pretrained`` (True: cards with released weights only; False: cards without).

    Raises :class:`~zoo.errors.ConfigError` for an unknown ``modality`` (a misspelt one would otherwise
    match nothing and look like an empty zoo), and for a ``pattern`` that is a modality name matching no card
    (``list_models("speech")``: the modality is the keyword argument).
    """
    from zoo.registry import MODALITIES, TEST_MODALITY, get_family

    if modality is not None and modality not in MODALITIES + (TEST_MODALITY,):
        from zoo.errors import ConfigError

        raise ConfigError(f"Unknown modality {modality!r}; use one of {', '.join(MODALITIES + (TEST_MODALITY,))}.")
    names = []
    for name, card in sorted(all_cards().items()):
        if not fnmatch.fnmatch(name, pattern):
            continue
        if pretrained is not None and card.has_weights != pretrained:
            continue
        if modality is not None and get_family(card.family).modality != modality:
            continue
        names.append(name)
    if not names and pattern in MODALITIES + (TEST_MODALITY,):
        from zoo.errors import ConfigError

        raise ConfigError(f"No model name matches the pattern {pattern!r}; for the {pattern} models call "
                          f"list_models(modality={pattern!r}) (CLI: zoo list --modality {pattern}).")
    return names


def model_info(name: str) -> dict:
    """The card of ``name`` as a dict, with the family's modality and the full default config."""
    from zoo.registry import get_family

    card = get_card(name)
    family = get_family(card.family)
    info = card.to_dict()
    info["modality"] = family.modality
    info["config"] = family.make_config(card.size, card.config, source=card.source)
    info["pretrained"] = card.has_weights
    return info


def add_card(card: "str | Path | dict") -> Card:
    """Register a card from a YAML file or a dict (user cards, tests), like open_clip's add_model_config.

    Raises CardError when the file is missing or not valid YAML, or the card has a missing or invalid field
    (naming it).
    """
    if isinstance(card, dict):
        parsed = parse_card(card, source="<dict>")
    else:
        path = Path(card)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CardError(f"card file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise CardError(f"{path}: not valid YAML: {err}") from err
        parsed = parse_card(data, source=str(path))
    all_cards()[parsed.name] = parsed
    return parsed


def remove_card(name: str) -> None:
    """Forget the card ``name`` (added with :func:`add_card`); no error when it is not there."""
    all_cards().pop(name, None)
