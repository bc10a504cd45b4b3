"""The public entry points: ``zoo.load``, ``zoo.list_models``, ``zoo.model_info``."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

from zoo.cards import get_card, list_models, model_info  # noqa: F401  (re-exported)
from zoo.config import apply_overrides
from zoo.errors import ConfigError, UnknownModelError, WeightsNotAvailableError
from zoo.registry import get_family

HF_HUB_PREFIX = "hf-hub:"
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or _WINDOWS_DRIVE.match(name) is not None or os.sep in name or "/" in name


def load(name_or_path: str, pretrained: bool = True, revision: str | None = None, device=None, dtype=None,
         cache_dir=None, local_files_only: bool | None = None, token=None, **overrides):
    """Load a model by card name (``zoo list``), ``hf-hub:org/name[@rev]``, or a local zoo-format folder.

    Returns the family's ``ZooModel`` in eval mode, on ``device`` (default CPU) and in ``dtype`` (a
    ``torch.dtype`` or its name, default float32). ``pretrained=False`` builds the card's config with random
    weights. Keyword ``overrides`` change config values (nested keys as ``section.key``); an override that
    changes a head's shape re-initialises that head, like timm's ``num_classes``. ``revision``,
    ``cache_dir``, ``local_files_only`` and ``token`` go to huggingface_hub.

    Raises :class:`~zoo.errors.UnknownModelError` (no such card; the closest names are listed),
    :class:`~zoo.errors.ConfigError` (an unknown override key or a wrong type, a malformed Hub name),
    :class:`~zoo.errors.WeightsNotAvailableError` (no released weights, offline with a cold cache, a missing or
    gated repo), :class:`~zoo.errors.CheckpointFormatError` / ``CheckpointKeysError`` (a corrupt or
    mismatched file).
    """
    from zoo import hub

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"zoo.load expects a model name or a path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if name.startswith(HF_HUB_PREFIX):
        repo = name[len(HF_HUB_PREFIX):]
        if not re.match(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$", repo):
            raise ConfigError(f"{name!r} is not a Hub name; write 'hf-hub:org/name' or 'hf-hub:org/name@revision'.")
        model = hub.load_from_hub(repo, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                  token=token, overrides=overrides)
    elif _looks_like_path(name) or ":" in name or Path(name).is_dir():
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise UnknownModelError(name) if not _looks_like_path(name) else WeightsNotAvailableError(
                f"No folder at {name!r}. A Hub repo is written 'hf-hub:{name}'; a card name has no '/' or ':'."
            )
        model = hub.build_from_zoo_folder(folder, str(folder), overrides=overrides)
    else:
        model = _load_card(name, pretrained=pretrained, revision=revision, cache_dir=cache_dir,
                           local_files_only=local_files_only, token=token, overrides=overrides)
    if dtype is not None:
        import torch

        model = model.to(dtype=dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype)))
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def _load_card(name: str, *, pretrained, revision, cache_dir, local_files_only, token, overrides):
    from zoo import hub

    card = get_card(name)
    family = get_family(card.family)
    config = family.make_config(card.size, card.config, source=card.source)
    apply_overrides(config, overrides, defaults=copy.deepcopy(config), source=f"overrides for {name!r}")
    if not pretrained:
        model = family.build(config)
    elif card.weights is None:
        raise WeightsNotAvailableError(
            f"{name!r} has no released weights; train it with `zoo train`, or build it with random weights.",
            python_hint="Pass pretrained=False for random weights.")
    else:
        weights = card.weights
        path = hub.download_file(weights.repo_id, weights.filename, revision=revision or weights.revision,
                                 cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        if weights.format == "zoo":
            model = hub.build_from_zoo_folder(Path(path).parent, f"{name} ({weights.repo_id})",
                                              overrides=overrides, cached=True)
        else:
            if family.load is None:
                raise ConfigError(f"{card.source}: family {family.name!r} has no loader for official weights")
            model = family.load(path, config)
    model.card_name = name
    return model
