"""The public entry points: ``zoo.load``, ``zoo.list_models``, ``zoo.model_info``."""
from __future__ import annotations

import copy
import logging
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

    Weights are not initialised only to be overwritten: the model is built on the meta device and
    zoo-format weights stream straight into ``dtype`` and ``device`` one tensor at a time, so the
    process never holds a second copy (``zoo.weights``). A LoRA adapter folder (``zoo.train.lora``)
    loads its base and applies the adapter. ``model.name_or_path`` records what was loaded.

    Raises :class:`~zoo.errors.UnknownModelError` (no such card; the closest names are listed),
    :class:`~zoo.errors.ConfigError` (an unknown override key or a wrong type, a malformed Hub name),
    :class:`~zoo.errors.WeightsNotAvailableError` (no released weights, offline with a cold cache, a missing or
    gated repo), :class:`~zoo.errors.CheckpointFormatError` / ``CheckpointKeysError`` (a corrupt or
    mismatched file).
    """
    import torch

    from zoo import hub

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"zoo.load expects a model name or a path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        if not isinstance(getattr(torch, str(dtype).removeprefix("torch."), None), torch.dtype):
            raise ConfigError(f"dtype={dtype!r} is not a torch dtype; use e.g. torch.bfloat16 or 'float32'.")
        dtype = getattr(torch, str(dtype).removeprefix("torch."))
    if device is not None:
        device = torch.device(device)
    if name.startswith(HF_HUB_PREFIX):
        repo = name[len(HF_HUB_PREFIX):]
        if not re.match(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$", repo):
            raise ConfigError(f"{name!r} is not a Hub name; write 'hf-hub:org/name' or 'hf-hub:org/name@revision'.")
        model = hub.load_from_hub(repo, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                  token=token, overrides=overrides, dtype=dtype, device=device)
    elif _looks_like_path(name) or ":" in name or Path(name).is_dir():
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise UnknownModelError(name) if not _looks_like_path(name) else WeightsNotAvailableError(
                f"No folder at {name!r}. A Hub repo is written 'hf-hub:{name}'; a card name has no '/' or ':'."
            )
        model = hub.build_from_zoo_folder(folder, str(folder), overrides=overrides, dtype=dtype, device=device)
    else:
        model = _load_card(name, pretrained=pretrained, revision=revision, cache_dir=cache_dir,
                           local_files_only=local_files_only, token=token, overrides=overrides,
                           dtype=dtype, device=device)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)  # a no-op for streamed weights; casts buffers and built models
    if getattr(model, "lora_config", None) is None and (pretrained or not _is_card_name(name)):
        model.name_or_path = _canonical_name(name, revision)
    model.eval()
    return model


def _is_card_name(name: str) -> bool:
    return not (name.startswith(HF_HUB_PREFIX) or _looks_like_path(name) or ":" in name)


def _canonical_name(name: str, revision: str | None) -> str:
    """What ``zoo.load`` needs to load these weights again (e.g. the base of a LoRA adapter)."""
    if name.startswith(HF_HUB_PREFIX):
        return name if revision is None or "@" in name else f"{name}@{revision}"
    if _is_card_name(name):
        return name
    return str(Path(name).expanduser().resolve())


def _load_card(name: str, *, pretrained, revision, cache_dir, local_files_only, token, overrides, dtype=None,
               device=None):
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
        kwargs = dict(revision=revision or weights.revision, cache_dir=cache_dir, local_files_only=local_files_only,
                      token=token)
        if weights.format == "zoo":
            if weights.filename.endswith(".index.json"):
                path = hub.download_weights(weights.repo_id, **kwargs)[0]
            else:
                path = hub.download_file(weights.repo_id, weights.filename, **kwargs)
            hub.download_file(weights.repo_id, hub.CONFIG_NAME, **kwargs)
            model = hub.build_from_zoo_folder(Path(path).parent, f"{name} ({weights.repo_id})",
                                              overrides=overrides, cached=True, dtype=dtype, device=device)
        else:
            if family.load is None:
                raise ConfigError(f"{card.source}: family {family.name!r} has no loader for official weights")
            model = _load_official(family, path=hub.download_file(weights.repo_id, weights.filename, **kwargs),
                                   config=config, dtype=dtype, device=device)
    model.card_name = name
    return model


def _load_official(family, path: str, config: dict, dtype=None, device=None):
    """``family.load(path, config)`` with the model built on the meta device (``zoo.weights.init_empty``), so
    that no weight is randomly initialised only to be overwritten. Family loaders that load through the strict
    loader (``zoo.hub.load_state_dict_strict``) or ``zoo.weights`` fill it; if anything is left on the meta
    device, or the build needs real parameters, the loader runs again on a normal build.

    A loader whose signature takes ``dtype`` and ``device`` keywords gets them, so a big checkpoint streams
    straight into the target dtype and device (a 7B bf16 file never passes through float32 on the CPU);
    other loaders load as saved and ``zoo.load`` casts afterwards."""
    import inspect

    from zoo import weights
    from zoo.errors import ZooError

    extra = {}
    if dtype is not None or device is not None:
        try:
            parameters = inspect.signature(family.load).parameters
        except (TypeError, ValueError):
            parameters = {}
        if "dtype" in parameters and "device" in parameters:
            extra = {"dtype": dtype, "device": device}

    def run():
        return family.load(path, config, **extra)

    try:
        with weights.init_empty():
            model = run()
    except ZooError:
        raise
    except (NotImplementedError, RuntimeError) as err:
        logging.getLogger("zoo").info("%s: loader cannot run on the meta device (%s); loading normally",
                                      family.name, err)
        return run()
    left = weights.meta_tensors(model)
    if left:
        logging.getLogger("zoo").info("%s: the loader left %d tensors on the meta device (%s ...); loading normally",
                                      family.name, len(left), left[0])
        return run()
    return model
