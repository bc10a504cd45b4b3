"""Configs: YAML recipes, ``a.b.c=value`` overrides, validation against defaults, model sizes.

A recipe is a nested dict. Its shape is given by a *defaults* dict (the engine's sections plus
the trainer's ``config_defaults``): every key of a recipe must exist in the defaults, and its value
must have the default's type. Two escape hatches:

* a default of ``{}`` marks an open section (free-form keys, e.g. ``model.overrides``);
* a default of ``None`` accepts any type (unless a ``types`` entry names the allowed ones).

``None`` is accepted for every key (it means "unset"); the code that reads a key decides whether
it may be unset. Numbers written as strings that YAML 1.1 does not parse (``1e-3``) are converted.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import ConfigError

__all__ = ["load_yaml", "parse_overrides", "apply_overrides", "merge", "sized_config", "dotted_items", "validate",
           "check_paths", "get_dotted", "build_config", "type_name"]


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping (an empty file is ``{}``).

    Raises ConfigError when the file does not exist, is not valid YAML, or holds something other than a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe file {path} does not exist; pass an existing YAML file to --config.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"Recipe file {path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe file {path} must hold a mapping of sections, not a {type(data).__name__}.")
    return data


def parse_overrides(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; values are parsed as YAML (``null``, lists, numbers).

    Raises ConfigError for an item without ``=`` or with an empty key, and for a value that is not valid YAML.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"Override {item!r} must look like key=value (e.g. optim.lr=3e-4).")
        try:
            out[key] = yaml.safe_load(value) if value.strip() != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"Override {item!r}: the value is not valid YAML ({err}).") from err
    return out


def merge(base: Mapping, update: Mapping) -> dict:
    """Deep copy of ``base`` with ``update`` merged in (sections merge, other values replace).

    No key checking: use it to combine trusted layers (defaults, a size). User input goes
    through :func:`apply_overrides` / :func:`sized_config`, which reject unknown keys.
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dotted_items(overrides: Mapping[str, Any], config: Mapping, _prefix: str = "") -> dict[str, Any]:
    """Nested overrides as dotted keys, following ``config``'s sections.

    ``{"encoder": {"hidden_size": 32}, "a.b": 1}`` -> ``{"encoder.hidden_size": 32, "a.b": 1}`` when
    ``encoder`` is a (non-empty) section of ``config``; a mapping given for an open section (``{}``)
    or for a plain value stays one value.
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{_prefix}{key}"
        section = get_dotted(config, dotted) if isinstance(value, Mapping) else None
        if isinstance(section, Mapping) and section and value:
            out.update(dotted_items(value, config, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def sized_config(family: str, defaults: Mapping, sizes: Mapping, size: str | None = None,
                 overrides: Mapping | None = None, *, source: str = "") -> dict:
    """A model's full config: ``defaults``, then the named size, then ``overrides`` (``size`` recorded).

    ``size=None`` takes the first size. ``overrides`` may be nested (``{"encoder": {"hidden_size": 32}}``)
    or dotted (``{"encoder.hidden_size": 32}``). Every override must name a key the config has:
    an unknown key or a wrong type is a :class:`ConfigError` that lists the valid keys, exactly as
    ``zoo.load(name, key=value)`` and ``zoo train`` overrides report it. Raises ``ConfigError`` for an
    unknown size too, listing the sizes.
    """
    size = size if size is not None else next(iter(sizes))
    if size not in sizes:
        where = f" ({source})" if source else ""
        raise ConfigError(f"{family} has no size {size!r}{where}; sizes: {', '.join(sizes)}")
    config = merge(defaults, sizes[size])
    config["size"] = size
    return apply_overrides(config, overrides or {}, defaults=copy.deepcopy(config),
                           source=source or f"overrides for {family} size {size!r}")


def _is_open(default: Any) -> bool:
    return isinstance(default, dict) and not default


def _lookup_default(defaults: Mapping, parts: list[str]) -> tuple[bool, Any]:
    """(known, default) for a dotted key; keys below an open section are known with default None."""
    node: Any = defaults
    for part in parts:
        if _is_open(node):
            return True, None
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def get_dotted(config: Mapping, dotted: str, default: Any = None) -> Any:
    """The value at ``a.b.c`` in a nested mapping, or ``default`` when any part is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def apply_overrides(config: dict, overrides: Mapping[str, Any], *, defaults: Mapping | None = None,
                    source: str = "command line", types: Mapping[str, tuple[type, ...]] | None = None) -> dict:
    """Set each (dotted or nested) override in ``config``, in place; returns ``config``.

    This is the one path for user overrides: recipes on the command line, ``zoo.load(name, **overrides)``,
    ``Family.make_config`` and the family builders' ``make_config``. With ``defaults`` (the shape the
    config must keep), an unknown key raises :class:`ConfigError` naming the key, ``source`` and the
    valid keys at that level, and a value of the wrong type raises ``ConfigError`` naming the expected
    type (``"1e-3"`` and integral floats are converted as in :func:`validate`). Without ``defaults``
    any key is set, creating sections as needed. Setting a key below a plain value is a ``ConfigError``.
    """
    for dotted, value in dotted_items(overrides, defaults if defaults is not None else config).items():
        parts = dotted.split(".")
        if defaults is not None:
            known, default = _lookup_default(defaults, parts)
            if not known:
                raise ConfigError(_unknown_key_message(dotted, defaults, source))
            allowed = (types or {}).get(dotted) or _allowed_types(default)
            if allowed is not None and value is not None:
                ok, value = _coerce(value, allowed)
                if not ok:
                    raise ConfigError(f"Config key {dotted!r} in {source} must be {type_name(allowed)}, "
                                      f"got {type(value).__name__} {value!r}.")
        node = config
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"Override {dotted}={value!r} ({source}): {'.'.join(parts[:depth + 1])} is a "
                                  f"value, not a section.")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return config


def _unknown_key_message(dotted: str, defaults: Mapping, source: str) -> str:
    parts = dotted.split(".")
    node: Any = defaults
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            valid = ", ".join(sorted(node)) if isinstance(node, Mapping) else "(none: it is a value)"
            hint = _closest_hint(part, node) if isinstance(node, Mapping) else ""
            return (f"Unknown config key {dotted!r} in {source}: {where} has keys {valid}.{hint} "
                    "Fix the spelling or remove it.")
        node = node[part]
    return f"Unknown config key {dotted!r} in {source}."


def _closest_hint(part: str, node: Mapping) -> str:
    import difflib

    close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def type_name(types: tuple[type, ...]) -> str:
    """Readable names of ``types`` for error messages (``int or float (a number)``)."""
    names = {bool: "bool", int: "int", float: "float (a number)", str: "str", list: "list", dict: "mapping"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _allowed_types(default: Any) -> tuple[type, ...] | None:
    if default is None:
        return None
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (float, int)
    if isinstance(default, str):
        return (str,)
    if isinstance(default, (list, tuple)):
        return (list, tuple)
    if isinstance(default, dict):
        return (dict,)
    return (type(default),)


def _coerce(value: Any, types: tuple[type, ...]) -> tuple[bool, Any]:
    """(ok, value): is ``value`` of ``types`` (after the few safe conversions)?"""
    if value is None:
        return True, None
    if isinstance(value, bool):
        return bool in types, value
    if isinstance(value, int) and (int in types or float in types):
        return True, value if int in types else float(value)
    if isinstance(value, float):
        if float in types:
            return True, value
        if int in types and value.is_integer():
            return True, int(value)
        return False, value
    if isinstance(value, str) and str not in types and (int in types or float in types):
        try:
            number = float(value)  # "1e-3": YAML 1.1 reads it as a string
        except ValueError:
            return False, value
        if float in types:
            return True, number
        if number.is_integer():
            return True, int(number)
        return False, value
    if isinstance(value, tuple) and list in types:
        return True, list(value)
    return isinstance(value, types), value


def validate(config: dict, defaults: Mapping, *, source: str = "recipe",
             types: Mapping[str, tuple[type, ...]] | None = None,
             sources: Mapping[str, str] | None = None, _prefix: str = "") -> dict:
    """Check every key of ``config`` against ``defaults`` (in place; converts numbers; returns ``config``).

    ``types`` maps dotted keys to allowed types where the default alone cannot say (``None`` defaults);
    ``sources`` maps dotted keys to where they were set (for messages), falling back to ``source``.

    Raises ConfigError for a key ``defaults`` does not have (listing the valid keys at that level) and for a
    value of the wrong type.
    """
    types = types or {}
    sources = sources or {}
    for key in list(config):
        dotted = f"{_prefix}{key}"
        where = sources.get(dotted, source)
        if _is_open(defaults):
            return config
        if not isinstance(defaults, Mapping) or key not in defaults:
            section = _prefix[:-1] or "the top level"
            raise ConfigError(f"Unknown config key {dotted!r} in {where}: {section} has keys "
                              f"{', '.join(sorted(defaults))}. Fix the spelling or remove it.")
        default = defaults[key]
        value = config[key]
        allowed = types.get(dotted) or _allowed_types(default)
        if allowed is None or value is None:
            continue
        ok, converted = _coerce(value, allowed)
        if not ok:
            raise ConfigError(f"Config key {dotted!r} in {where} must be {type_name(allowed)}, "
                              f"got {type(value).__name__} {value!r}.")
        config[key] = converted
        if isinstance(default, dict) and default and isinstance(converted, dict):
            validate(converted, default, source=source, types=types, sources=sources, _prefix=f"{dotted}.")
    return config


def check_paths(config: Mapping, path_keys: Iterable[str], *, source: str = "recipe") -> None:
    """Every dotted key in ``path_keys`` that is set must name an existing file or folder, or be ``"demo"``
    (the bundled data, ``zoo.data.DEMO``). The engine checks a trainer's ``path_keys`` this way before it
    creates or touches the output folder.

    Raises ConfigError naming the key and the value for the first path that does not exist.
    """
    for dotted in path_keys:
        value = get_dotted(config, dotted)
        if value in (None, ""):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item != "demo" and not Path(str(item)).expanduser().exists():
                raise ConfigError(f"{dotted}: {item!r} does not exist ({source}). Point {dotted} at an existing "
                                  f"file or folder (override on the command line: {dotted}=PATH).")


def build_config(defaults: Mapping, recipe: Mapping | None = None, overrides: Any = None, *,
                 source: str = "recipe", types: Mapping[str, tuple[type, ...]] | None = None) -> dict:
    """defaults <- recipe (checked, naming ``source``) <- overrides (checked, naming the command line)."""
    recipe = copy.deepcopy(dict(recipe or {}))
    validate(recipe, defaults, source=source, types=types)
    config = merge(defaults, recipe)
    parsed = parse_overrides(overrides)
    apply_overrides(config, parsed, defaults=defaults, source="command-line overrides", types=types)
    sources = {key: f"command-line override {key}={value!r}" for key, value in parsed.items()}
    return validate(config, defaults, source=source, types=types, sources=sources)
