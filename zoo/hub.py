"""Zoo format on disk and on the Hugging Face Hub.

A zoo folder or Hub repo holds ``config.json`` (``family``, ``zoo_version``,
``config``), ``model.safetensors`` (or, above ``max_shard_size``, shards
``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``) and a
``README.md`` model card. Loading is strict and streams the weights (``zoo.weights``).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from zoo.errors import (
    CheckpointFormatError, CheckpointKeysError, ConfigError, HubError, OutputExistsError, WeightsNotAvailableError,
)
from zoo import weights
from zoo.files import copy_file, staging_folder
from zoo.version import __version__

logger = logging.getLogger("zoo")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
README_NAME = "README.md"
LIBRARY_NAME = "zoo"


# ----------------------------------------------------------------------------- saving

def _check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder; choose another output path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{path} is not empty; pass overwrite=True (CLI: --overwrite) to replace it, or choose another folder."
        )


def save_pretrained(model, save_directory: str | Path, *, card: Any = None, overwrite: bool = False,
                    max_shard_size: int | str = weights.DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write ``model`` in zoo format to ``save_directory`` atomically; returns the folder.

    The folder gets ``config.json`` (``family``, ``zoo_version``, ``config``, ``card``), the weights
    (every parameter and buffer, CPU, contiguous: ``model.safetensors``, or above ``max_shard_size``
    (bytes, or a string such as ``"5GB"``) shards ``model-0000i-of-0000n.safetensors`` with
    ``model.safetensors.index.json``, one shard on the CPU at a time) and ``README.md`` (a Hub
    model card from ``card`` or the model's card name). Files are written into a staging folder
    next to the target, which then replaces it in one rename. Raises ``OutputExistsError`` when
    the folder holds files and ``overwrite`` is false (nothing is touched then).
    """
    target = Path(save_directory)
    _check_output_dir(target, overwrite)
    with staging_folder(target) as staging:
        config = {"family": model.family, "zoo_version": __version__, "config": model.config}
        if getattr(model, "card_name", None):
            config["card"] = model.card_name
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        weights.save_weights(model, staging, max_shard_size=max_shard_size,
                             metadata={"format": "pt", "family": model.family})
        (staging / README_NAME).write_text(model_card_text(model, card), encoding="utf-8")
    return target


def plain_state_dict(model) -> dict[str, torch.Tensor]:
    """The state dict as safetensors wants it: contiguous, CPU, no two names sharing memory."""
    return weights.plain_tensors(model.state_dict())


def model_card_text(model, card: Any = None) -> str:
    """README.md with the YAML front matter the Hub reads, generated from the model's card."""
    from zoo.cards import all_cards
    from zoo.registry import get_family

    if card is None and getattr(model, "card_name", None):
        card = all_cards().get(model.card_name)
    family = get_family(model.family)
    meta: dict[str, Any] = {
        "library_name": LIBRARY_NAME,
        "tags": ["zoo", model.family, family.modality],
        "license": (card.license if card and card.license else "other"),
        "pipeline_tag": (card.pipeline_tag if card and card.pipeline_tag else "feature-extraction"),
    }
    if card is not None:
        meta["tags"] += [t for t in card.tags if t not in meta["tags"]]
        if card.base_model:
            meta["base_model"] = card.base_model
        elif card.weights is not None:
            meta["base_model"] = card.weights.repo_id
        if card.datasets:
            meta["datasets"] = list(card.datasets)
        if card.metrics:
            meta["metrics"] = sorted({m["name"] for m in card.metrics})
    title = card.name if card is not None else f"{model.family} model"
    description = card.description.strip() if card is not None else family.description
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {title}", "", description, ""]
    if card is not None and card.paper:
        lines += [f"Paper: {card.paper}", ""]
    if card is not None and card.metrics:
        lines += ["## Reported metrics", "", "| metric | value | source |", "|---|---|---|"]
        lines += [f"| {m['name']} | {m['value']} | {m['source']} |" for m in card.metrics]
        lines.append("")
    lines += [
        "## Usage", "", "```python", "import zoo", "", 'model = zoo.load("hf-hub:<this repo id>")', "```", "",
        f"Family `{model.family}` ({family.modality}); zoo {__version__}.", "",
        "## Config", "", "```json", json.dumps(model.config, indent=2, sort_keys=True), "```", "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- loading

def read_zoo_config(folder: Path, source: str) -> dict:
    """The parsed ``config.json`` of a zoo-format ``folder`` (``family``, ``config``, ``zoo_version``, ``card``).

    Raises :class:`~zoo.errors.CheckpointFormatError` naming ``source`` when the file is missing, not JSON, or
    not written by zoo (then it says to run ``zoo convert``).
    """
    path = folder / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointFormatError(f"{source} has no {CONFIG_NAME}: it is not a zoo-format model.") from None
    except json.JSONDecodeError as err:
        raise CheckpointFormatError(f"{source}: {CONFIG_NAME} is not valid JSON ({err}).") from err
    if not isinstance(data, dict) or "family" not in data or not isinstance(data.get("config"), dict):
        raise CheckpointFormatError(
            f"{source}: {CONFIG_NAME} lacks 'family' or 'config'; it was not written by zoo. "
            "For an official checkpoint use `zoo convert FAMILY SRC DST` first."
        )
    return data


def read_safetensors(path: str | Path, source: str, *, cached: bool = False) -> dict[str, torch.Tensor]:
    """A whole safetensors file as ``{name: CPU tensor}`` (for small files and conversions; big checkpoints
    stream through ``zoo.weights.load_into`` instead).

    Raises :class:`~zoo.errors.CheckpointFormatError` naming ``source`` for a corrupt or truncated file;
    ``cached=True`` (a huggingface_hub cache file) also deletes the bad copy so the next load downloads it.
    """
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        if cached:
            evict_cached_file(path)
            hint = "The bad copy was removed from the cache; loading again downloads it afresh."
        else:
            hint = "Re-save or re-download the file."
        raise CheckpointFormatError(f"{source}: {Path(path).name} is corrupt or truncated ({err}). {hint}") from err


def evict_cached_file(path: str | Path) -> None:
    """Remove a file from the huggingface_hub cache: the snapshot link and the blob it points to."""
    path = Path(path)
    blob = Path(os.path.realpath(path))
    for p in {path, blob}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


_LEGACY_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0",
                       "weight_v": "parametrizations.weight.original1"}


def normalize_weight_norm_keys(state_dict: Mapping[str, Any], prefer: str = "parametrizations") -> dict:
    """Spell weight-norm keys one way: ``X.weight_g/weight_v`` <-> ``X.parametrizations.weight.original0/1``.

    ``prefer="parametrizations"`` gives ``torch.nn.utils.parametrizations.weight_norm``'s names (torch >= 2.1),
    ``"legacy"`` (or ``"weight_g"``) the old ``torch.nn.utils.weight_norm`` names that fairseq and
    WeSpeaker checkpoints use. Values are passed through untouched. Raises ``ValueError`` for another
    ``prefer`` and :class:`CheckpointKeysError` when both spellings of one weight are present.
    """
    if prefer not in ("parametrizations", "legacy", "weight_g"):
        raise ValueError(f"prefer must be 'parametrizations' or 'legacy', got {prefer!r}")
    out = {}
    for key, value in state_dict.items():
        new = key
        for old, modern in _LEGACY_WEIGHT_NORM.items():
            have, want = (old, modern) if prefer == "parametrizations" else (modern, old)
            if key == have or key.endswith("." + have):
                new = key[: -len(have)] + want
        if new in out:
            raise CheckpointKeysError("state dict", hint=f"  both spellings of weight norm are present for {new}.")
        out[new] = value
    return out


def _weight_norm_spelling(keys) -> str | None:
    for key in keys:
        if ("." + key).rsplit(".", 3)[-3:-1] == ["parametrizations", "weight"]:
            return "parametrizations"
        if ("." + key).endswith((".weight_g", ".weight_v")):
            return "legacy"
    return None


def respell_weight_norm(model: torch.nn.Module, state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """``state_dict`` with its weight-norm keys spelled as ``model`` spells them (unchanged if it has none)."""
    spelling = _weight_norm_spelling(model.state_dict())
    return normalize_weight_norm_keys(state_dict, prefer=spelling) if spelling is not None else state_dict


def check_keys(model: torch.nn.Module, shapes: Mapping[str, tuple | None], source: str, *,
               hint: str | Callable[[list[str], list[str]], str] = "", tied: Iterable[Iterable[str]] = ()) -> list[str]:
    """The one strict key check, on names and shapes only (``shapes``: checkpoint name -> shape, ``None``
    for an entry that is not a tensor), so that a streaming loader can run it before reading any weight.

    Raises :class:`~zoo.errors.CheckpointKeysError` for missing, unexpected and mis-shaped keys and
    non-tensors (``hint`` as in ``load_state_dict_strict``). A name of a ``tied`` group (parameters
    sharing one tensor, e.g. an LM head tied to its embedding) is present when any name of its group
    is. Returns the keys under ``model.head_keys`` whose shape a config override changed.
    """
    own = model.state_dict()
    head_keys = tuple(getattr(model, "head_keys", ()) or ())
    present = set(shapes)
    for group in tied:
        group = list(group)
        if any(name in shapes for name in group):
            present.update(group)
    missing = [k for k in own if k not in present]
    unexpected = [k for k in shapes if k not in own]
    not_tensors = sorted(k for k, shape in shapes.items() if shape is None)
    mismatched, reinit = [], []
    for key, shape in shapes.items():
        if key in own and shape is not None and tuple(own[key].shape) != tuple(shape):
            if key.startswith(head_keys) and head_keys:
                reinit.append(key)
            else:
                mismatched.append((key, tuple(own[key].shape), tuple(shape)))
    if missing or unexpected or mismatched or not_tensors:
        advice = hint(sorted(missing), sorted(unexpected)) if callable(hint) else hint
        if not_tensors:
            advice = f"  entries that are not tensors: {not_tensors[:10]}" + (f"\n{advice}" if advice else "")
        raise CheckpointKeysError(source, missing, unexpected, mismatched, hint=advice)
    return reinit


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, Any], source: str, *,
                           hint: str | Callable[[list[str], list[str]], str] = "",
                           normalize_weight_norm: bool = True) -> torch.nn.Module:
    """Load ``state_dict`` into ``model`` with every mismatch reported; the one strict loader of zoo.

    - Weight-norm keys are respelled to the module's own spelling first (``weight_g/weight_v`` vs
      ``parametrizations.weight.original0/1``), unless ``normalize_weight_norm=False``.
    - Missing, unexpected and mis-shaped keys, and entries that are not tensors, raise
      :class:`~zoo.errors.CheckpointKeysError` (every key in its attributes; a grouped summary with the
      likely cause in its message). ``hint`` is the family's advice (``"  set head.enabled=false"``), or
      a callable ``hint(missing, unexpected) -> str``.
    - Keys under ``model.head_keys`` whose shape changed because of a config override are kept at
      their fresh initialisation and logged (like timm's ``num_classes``).

    Returns ``model``. Nothing is loaded when an error is raised.
    """
    if normalize_weight_norm:
        state_dict = respell_weight_norm(model, state_dict)
    own = model.state_dict()
    reinit = check_keys(model, {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None
                                for k, v in state_dict.items()}, source, hint=hint)
    if reinit:
        logger.warning("%s: re-initialised %s (shape changed by a config override)", source, ", ".join(reinit))
    filtered = {k: v for k, v in state_dict.items() if k not in reinit}
    filtered.update({k: own[k] for k in reinit})
    weights.load_state_dict(model, filtered, strict=True)  # also fills a model built under weights.init_empty
    return model


def stored_config(family, config: Mapping, source: str) -> dict:
    """A saved model's ``config`` checked against its family's config of the same size (``config["size"]``,
    else the first size) and completed from it.

    A value of the wrong type for a key the family knows raises :class:`~zoo.errors.ConfigError` naming
    ``source`` and the key. A key the family's defaults do not have is kept and passed to the build as
    before, but logged as a warning naming it (families keep pass-through keys, e.g. the extra fields of a
    converted transformers ``HubertConfig``; a misspelt hand edit is no longer silent). A key the folder
    lacks (written before the family added it) takes the family's default. Returns a new dict.
    """
    from zoo.config import merge, validate

    config = json.loads(json.dumps(dict(config)))
    size = config.get("size")
    reference = family.make_config(size if size in family.sizes else None)
    unknown = _unknown_keys(config, reference)
    if unknown:
        logger.warning("%s: %s not in the %s family's config; kept as saved (check the spelling if you edited "
                       "it)", source, ", ".join(repr(k) for k in unknown), family.name)
    known = json.loads(json.dumps(config))
    for dotted in unknown:
        *parents, last = dotted.split(".")
        node = known
        for part in parents:
            node = node[part]
        node.pop(last, None)
    validate(known, reference, source=source)  # types of the keys the family knows (numbers converted)
    if "size" not in config:
        reference.pop("size", None)  # a config built without a named size does not claim one
    return merge(merge(reference, config), known)


def _unknown_keys(config: Mapping, reference: Mapping, prefix: str = "") -> list[str]:
    """Dotted keys of ``config`` that ``reference`` lacks (an empty ``{}`` in ``reference`` is an open section)."""
    out = []
    for key, value in config.items():
        if key not in reference:
            out.append(f"{prefix}{key}")
        elif isinstance(value, Mapping) and isinstance(reference[key], Mapping) and reference[key]:
            out += _unknown_keys(value, reference[key], f"{prefix}{key}.")
    return out


def build_from_zoo_folder(folder: Path, source: str, *, overrides: dict | None = None, cached: bool = False,
                          dtype: torch.dtype | None = None, device=None):
    """Build the model a zoo-format ``folder`` describes and load its weights strictly.

    The model is built on the meta device and its weights (``model.safetensors``, or shards with an
    index) stream in with ``zoo.weights``, in ``dtype`` on ``device``; an adapter folder loads its base
    and applies the LoRA adapter (``zoo.train.lora``). ``overrides`` (dotted keys) change the stored
    config first; an unknown key is a ``ConfigError``, and an override that changes a head's shape
    re-initialises that head. The stored config itself is checked and completed by :func:`stored_config`.
    Raises ``CheckpointFormatError`` / ``CheckpointKeysError`` for bad files (``cached=True`` evicts a corrupt
    cached weights file), ``ConfigError`` for a config the family does not accept.
    """
    from zoo.config import apply_overrides
    from zoo.registry import get_family

    meta = read_zoo_config(folder, source)
    if "adapter" in meta:  # a LoRA adapter: its base, then the adapter on top (zoo.train.lora)
        from zoo.train.lora import load_adapter_folder

        return load_adapter_folder(folder, meta, source, cached=cached, dtype=dtype, device=device)
    family = get_family(meta["family"])
    config = stored_config(family, meta["config"], f"{source}/{CONFIG_NAME}")
    apply_overrides(config, overrides or {}, defaults=json.loads(json.dumps(config)), source=f"overrides for {source}")
    files = weights.weight_files(folder)
    model = weights.load_pretrained(family.build, config, folder / files[0], source=source, cached=cached,
                                    dtype=dtype, device=device)
    model.card_name = meta.get("card")
    return model


# ----------------------------------------------------------------------------- Hub access

def _hf():
    import huggingface_hub

    return huggingface_hub


def split_revision(repo: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")``; no ``@`` -> ``(repo, None)``."""
    repo_id, _, revision = repo.partition("@")
    return repo_id, (revision or None)


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub repo id (``org/name``: letters, digits, ``-``, ``_``, ``.``; at most 96
    characters); raises :class:`~zoo.errors.ConfigError` saying what a valid one looks like (huggingface_hub's
    own ``HFValidationError`` is not a zoo error, so the CLI would print a traceback)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"{repo_id!r} is not a Hub repo id; write 'org/name' (letters, digits, '-', '_', '.'). "
                          f"({err})") from None
    return repo_id


def _offline_error(what: str, why: str = "offline mode or no connection",
                   retry: str = "Run once with network access (e.g. `zoo pull`)") -> WeightsNotAvailableError:
    return WeightsNotAvailableError(
        f"{what} is not in the local cache and cannot be downloaded ({why}). {retry}, unset HF_HUB_OFFLINE / "
        "local_files_only, or point HF_ENDPOINT at a reachable Hub.",
        python_hint="Or pass pretrained=False for random weights, or a local folder to zoo.load.")


def _network_errors() -> tuple[type[BaseException], ...]:
    """The connection-level errors huggingface_hub retries on (timeouts, refused or reset connections)."""
    try:
        from huggingface_hub.utils._http import _DEFAULT_RETRY_ON_EXCEPTIONS

        return tuple(_DEFAULT_RETRY_ON_EXCEPTIONS) + (ConnectionError, TimeoutError)
    except ImportError:  # another huggingface_hub layout: plain socket errors still count
        return (ConnectionError, TimeoutError)


def _check_reachable(repo_id: str, filename: str, *, revision, cache_dir, token) -> None:
    """Fail fast when a file must be downloaded and the Hub cannot be reached.

    huggingface_hub retries a failed metadata request of an uncached file five times with growing
    sleeps (ten "Retrying in Ns" lines, about 30 s). One request without retries tells the same.
    """
    hf = _hf()
    from huggingface_hub import constants  # not an attribute of the package until imported

    if constants.HF_HUB_OFFLINE:
        return  # hf_hub_download fails at once in offline mode
    cached = hf.try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str):
        return  # a cached copy: hf_hub_download falls back to it without retrying
    from huggingface_hub import errors as hf_errors

    url = hf.hf_hub_url(repo_id, filename, revision=revision)
    try:
        hf.get_hf_file_metadata(url, token=token, timeout=10)
    except hf_errors.HfHubHTTPError:  # the Hub answered (404, 401, gated): hf_hub_download reports it
        return
    except _network_errors() as err:
        raise _offline_error(f"{repo_id}/{filename}", f"no connection to {constants.ENDPOINT}: "
                             f"{type(err).__name__}") from err
    except Exception:  # HTTP errors (404, 401, gated): hf_hub_download reports them properly
        return


def download_file(repo_id: str, filename: str, *, revision: str | None = None, cache_dir=None,
                  local_files_only: bool | None = None, token=None, force_download: bool = False) -> str:
    """``hf_hub_download`` with its errors mapped to zoo errors that say what to do; returns the local path.

    Raises :class:`~zoo.errors.WeightsNotAvailableError` (offline or unreachable Hub with no cached copy,
    gated or missing repo, revision or file) or :class:`~zoo.errors.HubError` (other HTTP failures).
    Without a connection it fails after one request instead of huggingface_hub's retries.
    """
    hf = _hf()
    from huggingface_hub import errors as hf_errors

    if not local_files_only:
        _check_reachable(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token)
    try:
        return hf.hf_hub_download(
            repo_id, filename, revision=revision, cache_dir=cache_dir, token=token,
            local_files_only=bool(local_files_only), force_download=force_download,
            library_name=LIBRARY_NAME, library_version=__version__,
        )
    except hf_errors.GatedRepoError as err:
        raise WeightsNotAvailableError(
            f"{repo_id} is gated: accept its terms on the Hub and pass token= (or set HF_TOKEN). ({err})"
        ) from err
    except hf_errors.RepositoryNotFoundError as err:
        raise WeightsNotAvailableError(
            f"Hub repo {repo_id!r} not found, or private and no valid token was given (pass token= or set HF_TOKEN)."
        ) from err
    except hf_errors.RevisionNotFoundError as err:
        raise WeightsNotAvailableError(f"Revision {revision!r} not found in {repo_id!r}.") from err
    except hf_errors.EntryNotFoundError as err:
        if isinstance(err, hf_errors.LocalEntryNotFoundError):
            raise _offline_error(f"{repo_id}/{filename}") from err
        raise WeightsNotAvailableError(f"{repo_id!r} has no file {filename!r} at revision {revision or 'main'}.") from err
    except (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError) as err:
        raise _offline_error(f"{repo_id}/{filename}") from err
    except hf_errors.HfHubHTTPError as err:
        raise HubError(f"Hub request for {repo_id}/{filename} failed: {err}") from err


def download_weights(repo_id: str, **kwargs) -> list[str]:
    """Download a zoo repo's weights: ``model.safetensors``, else ``model.safetensors.index.json`` and every
    shard it names. Returns the local paths (index first). ``kwargs`` as ``download_file``.

    Raises WeightsNotAvailableError (the one for ``model.safetensors``) when the repo has neither layout, and
    the errors of download_file.
    """
    try:
        return [download_file(repo_id, WEIGHTS_NAME, **kwargs)]
    except WeightsNotAvailableError as err:
        first = err
    try:
        index = download_file(repo_id, weights.SAFE_WEIGHTS_INDEX_NAME, **kwargs)
    except WeightsNotAvailableError:
        raise first from None
    return [index] + [download_file(repo_id, name, **kwargs) for name in weights.shard_names(index)]


def load_from_hub(repo: str, *, revision=None, cache_dir=None, local_files_only=None, token=None,
                  overrides: dict | None = None, dtype=None, device=None):
    """Load a zoo-format Hub repo (``"org/name"`` or ``"org/name@revision"``) through the huggingface_hub cache.

    Downloads ``config.json`` and the weights (``model.safetensors``, or the index and every shard; an
    adapter repo's adapter files) from one snapshot and builds the model as :func:`build_from_zoo_folder`
    does (``overrides``, ``dtype``, ``device`` as there). Raises
    :class:`~zoo.errors.WeightsNotAvailableError` (offline or unreachable with a cold cache, missing or gated
    repo, unknown revision), :class:`~zoo.errors.HubError`, or the loading errors of a bad file.
    """
    repo_id, pinned = split_revision(repo)
    revision = revision or pinned
    kwargs = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    config_path = download_file(repo_id, CONFIG_NAME, **kwargs)
    meta = read_zoo_config(Path(config_path).parent, f"hf-hub:{repo_id}")
    if "adapter" in meta:
        from zoo.train.lora import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

        weight_paths = [download_file(repo_id, ADAPTER_CONFIG_NAME, **kwargs),
                        download_file(repo_id, ADAPTER_WEIGHTS_NAME, **kwargs)]
        if not meta["adapter"].get("base"):
            weight_paths += download_weights(repo_id, **kwargs)
    else:
        weight_paths = download_weights(repo_id, **kwargs)
    folder = Path(config_path).parent
    if any(Path(p).parent != folder for p in weight_paths):  # every file must come from the same snapshot
        raise HubError(f"{repo_id}: config and weights resolved to different snapshots; pin a revision.")
    return build_from_zoo_folder(folder, f"hf-hub:{repo_id}@{revision or 'main'}", overrides=overrides, cached=True,
                                 dtype=dtype, device=device)


def _api(token=None):
    return _hf().HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)


def _folder_files(folder: Path, meta: dict) -> list[str]:
    """The weight files of a zoo folder (``zoo.weights.weight_files``), or of an adapter folder."""
    if "adapter" in meta:
        from zoo.train.lora import folder_files

        return folder_files(folder, meta)
    return weights.weight_files(folder)


def push_folder(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                token=None, commit_message: str | None = None) -> str:
    """Upload a zoo-format folder (validated first) to ``repo_id``; returns the commit id.

    The folder's ``config.json`` and weight headers are checked before anything is sent. ``revision``: a branch,
    created from ``main`` when missing. Raises :class:`~zoo.errors.CheckpointFormatError` (not a complete zoo
    folder), :class:`~zoo.errors.ConfigError` (an invalid repo id), :class:`~zoo.errors.HubError` (no token or no
    permission, the Hub unreachable, any other refusal).
    """
    from huggingface_hub import errors as hf_errors

    check_repo_id(repo_id)
    folder = Path(folder)
    meta = read_zoo_config(folder, str(folder))
    files = _folder_files(folder, meta)
    for name in files:  # never push a broken or incomplete file (headers and sizes checked)
        if name == weights.SAFE_WEIGHTS_INDEX_NAME or (name.endswith(".safetensors") and "-of-" not in name):
            weights.read_index(folder / name)  # an index reads every shard's header
    api = _api(token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), revision=revision,
            commit_message=commit_message or f"Upload {meta['family']} model with zoo {__version__}",
            allow_patterns=[CONFIG_NAME, README_NAME, *files],
        )
    except hf_errors.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise HubError(f"Not allowed to write to {repo_id!r}: log in (`hf auth login`) or pass token=.") from err
        raise HubError(f"Push to {repo_id!r} failed: {err}") from err
    except _network_errors() as err:
        from huggingface_hub import constants

        raise HubError(f"Push to {repo_id!r} failed: no connection to {constants.ENDPOINT} "
                       f"({type(err).__name__}: {err}); check the network or HF_ENDPOINT.") from err
    return info.oid


def push_model(model, repo_id: str, *, revision=None, private=None, token=None, commit_message=None,
               max_shard_size: int | str = weights.DEFAULT_MAX_SHARD_SIZE) -> str:
    """Save ``model`` to a temporary zoo-format folder (shards above ``max_shard_size``; an adapter folder for
    a LoRA model) and upload it to ``repo_id``; returns the commit id.

    Raises :class:`~zoo.errors.HubError` when the Hub refuses (no token, no permission).
    """
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        folder = model.save_pretrained(Path(tmp) / "model", max_shard_size=max_shard_size)  # or a LoRA adapter
        return push_folder(folder, repo_id, revision=revision, private=private, token=token,
                           commit_message=commit_message)


def pull(repo: str, *, revision=None, to: str | Path | None = None, cache_dir=None, token=None,
         local_files_only=None, overwrite: bool = False) -> Path:
    """Download a zoo-format repo (``"org/name"`` or ``"org/name@revision"``) into the huggingface_hub cache and
    return the snapshot folder, or copy its files into ``to`` (atomically: all of them or none) and return ``to``.

    Raises :class:`~zoo.errors.ConfigError` (an invalid repo id), :class:`~zoo.errors.OutputExistsError` (``to``
    is not empty and ``overwrite`` is false), :class:`~zoo.errors.HubError` (missing or private repo, unknown
    revision), :class:`~zoo.errors.WeightsNotAvailableError` (offline or unreachable with a cold cache),
    :class:`~zoo.errors.CheckpointFormatError` (the repo is not in zoo format).
    """
    from huggingface_hub import errors as hf_errors

    repo_id, pinned = split_revision(repo)
    check_repo_id(repo_id)
    revision = revision or pinned
    if to is not None:
        _check_output_dir(Path(to), overwrite)
    try:
        folder = _hf().snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, token=token, local_files_only=bool(local_files_only),
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, README_NAME, weights.SAFE_WEIGHTS_INDEX_NAME,
                            "model-*-of-*.safetensors", "adapter_config.json", "adapter_model.safetensors"],
            library_name=LIBRARY_NAME, library_version=__version__,
        )
    except hf_errors.RepositoryNotFoundError as err:
        raise HubError(f"Hub repo {repo_id!r} not found, or private and no valid token was given.") from err
    except hf_errors.RevisionNotFoundError as err:
        raise HubError(f"Revision {revision!r} not found in {repo_id!r}.") from err
    except (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError) as err:
        raise _offline_error(repo_id, retry="Run `zoo pull` again with network access") from err
    except _network_errors() as err:
        raise _offline_error(repo_id, f"no connection: {type(err).__name__}",
                             retry="Run `zoo pull` again with network access") from err
    folder = Path(folder)
    read_zoo_config(folder, f"hf-hub:{repo_id}")
    if to is None:
        return folder
    target = Path(to)
    with staging_folder(target) as staging:  # `--to` gets the whole repo or, on any error, nothing
        for name in (CONFIG_NAME, README_NAME, *_folder_files(folder, read_zoo_config(folder, str(folder)))):
            if (folder / name).exists():
                copy_file(folder / name, staging / name)
    return target
