"""The public entry points: ``zoo.load``, ``zoo.list_models``, ``zoo.model_info``."""
from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path

from zoo.cards import get_card, list_models  # noqa: F401  (re-exported)
from zoo.cards import model_info as card_info
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
    :class:`~zoo.errors.ConfigError` (an empty name, an unknown override key or a wrong type, a malformed Hub
    name, a ``dtype`` that is not a torch dtype, a ``device`` that is not one or is not on this machine),
    :class:`~zoo.errors.WeightsNotAvailableError` (no released weights, offline with a cold cache, a missing or
    gated repo), :class:`~zoo.errors.CheckpointFormatError` / ``CheckpointKeysError`` (a corrupt or
    mismatched file).
    """
    import torch

    from zoo import hub

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"zoo.load expects a model name or a path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ConfigError("zoo.load got an empty name; give a card name (`zoo list`), 'hf-hub:org/name' or a folder.")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        if not isinstance(getattr(torch, str(dtype).removeprefix("torch."), None), torch.dtype):
            raise ConfigError(f"dtype={dtype!r} is not a torch dtype; use e.g. torch.bfloat16 or 'float32'.")
        dtype = getattr(torch, str(dtype).removeprefix("torch."))
    if device is not None:
        device = parse_device(device)
    if name.startswith(HF_HUB_PREFIX):
        repo = name[len(HF_HUB_PREFIX):]
        if not re.match(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$", repo):
            raise ConfigError(f"{name!r} is not a Hub name; write 'hf-hub:org/name' or 'hf-hub:org/name@revision'.")
        model = hub.load_from_hub(repo, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                  token=token, overrides=overrides, dtype=dtype, device=device)
    elif _looks_like_path(name) or ":" in name or Path(name).is_dir():
        folder = Path(name).expanduser()
        if not folder.is_dir():
            if not _looks_like_path(name):
                raise UnknownModelError(name)
            if folder.is_file():
                raise WeightsNotAvailableError(
                    f"{name!r} is a file; zoo.load takes the zoo-format folder that holds config.json and the "
                    f"weights ({str(folder.parent)!r}?). For an official checkpoint file use `zoo convert FAMILY "
                    "SRC DST` first.")
            hub_hint = (f" A Hub repo is written 'hf-hub:{name}'; a card name has no '/' or ':'."
                        if re.match(r"^[\w.-]+/[\w.-]+$", name) else "")
            raise WeightsNotAvailableError(f"No folder at {name!r}.{hub_hint}")
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


def model_info(name_or_path: str, revision: str | None = None, cache_dir=None, local_files_only: bool | None = None,
               token=None) -> dict:
    """What ``zoo.load(name_or_path)`` would build, as a dict, without building it.

    A card name gives its card (:func:`zoo.cards.model_info`: config, weights source, license, paper,
    metrics; no torch import). A zoo folder or ``hf-hub:org/name[@rev]`` gives its ``config.json``:
    ``name``, ``family``, ``modality``, ``config`` (checked and completed as loading does), ``card`` (the
    card it was made from, if any), ``zoo_version``, ``pretrained: True`` and, for a LoRA adapter,
    ``adapter``; only ``config.json`` is downloaded. Raises ``UnknownModelError`` for an unknown card,
    ``WeightsNotAvailableError`` for a missing folder or an unreachable repo, ``CheckpointFormatError`` for
    a folder zoo did not write, ``ConfigError`` for a config its family rejects.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"model_info expects a model name or a path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if _is_card_name(name) and not Path(name).is_dir():
        return card_info(name)
    from zoo import hub

    if name.startswith(HF_HUB_PREFIX):
        repo_id, pinned = hub.split_revision(name[len(HF_HUB_PREFIX):])
        hub.check_repo_id(repo_id)
        path = hub.download_file(repo_id, hub.CONFIG_NAME, revision=revision or pinned, cache_dir=cache_dir,
                                 local_files_only=local_files_only, token=token)
        folder, source = Path(path).parent, name
    else:
        folder, source = Path(name).expanduser(), name
        if not folder.is_dir():
            raise WeightsNotAvailableError(f"No folder at {name!r}.")
    meta = hub.read_zoo_config(folder, source)
    family = get_family(meta["family"])
    info = {"name": source, "family": family.name, "modality": family.modality, "card": meta.get("card"),
            "zoo_version": meta.get("zoo_version"), "pretrained": True,
            "config": hub.stored_config(family, meta["config"], f"{source}/{hub.CONFIG_NAME}")}
    if "adapter" in meta:
        info["adapter"] = meta["adapter"]
    return info


def parse_device(device, *, name: str = "device") -> "torch.device":
    """``device`` (a ``torch.device``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, an int GPU index) as a
    ``torch.device`` that exists here. ``name`` is what the messages call the setting (``train.device``).

    Raises :class:`~zoo.errors.ConfigError` for a string torch cannot parse (``"gpu"``) and for a CUDA or MPS
    device on a machine without one (torch would fail later, inside ``Module.to``, with a driver message).
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{name}={device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'.") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{name}={device!r} but no CUDA GPU is visible here; use {name}='cpu'.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"{name}={device!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible.")
    if parsed.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{name}={device!r} but MPS is not available here; use {name}='cpu'.")
    return parsed


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
