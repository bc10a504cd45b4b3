"""Official checkpoints -> UniCTokens models (strict).

* Show-o (``showlab/show-o-512x512``): ``pytorch_model.bin`` (or ``.safetensors``, or a sharded
  ``*.index.json`` set) of the ``Showo`` module: keys ``showo.model.*`` and ``showo.lm_head.{weight,bias}``
  (showlab/Show-o:models/modeling_showo.py wraps transformers-style ``PhiForCausalLM`` as ``showo``).
  The image tokenizer comes from ``showlab/magvitv2`` (``encoder.*``, ``decoder.*``,
  ``quantize.{embedding,power_vals}``), downloaded with it unless ``vq_weights.path`` names a file.
* A concept (``saves/<concept>/<task>/``): the three per-epoch files of the official scripts,
  applied on top of a named base (``zoo convert unictokens saves/bo/task OUT --base show-o-512``);
  the result is a zoo adapter (rows only, the base named in its config).

Files load with ``torch.load(weights_only=True)`` / safetensors; every missing, unexpected or
mis-shaped key is an error that lists them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from zoo.errors import CheckpointFormatError, ConfigError

SHOWO_FILES = ("pytorch_model.bin", "pytorch_model.safetensors", "model.safetensors")
INDEX_FILES = ("pytorch_model.bin.index.json", "pytorch_model.safetensors.index.json", "model.safetensors.index.json")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, a sharded ``*.index.json``, or a folder holding either."""
    from zoo.models.checkpoints import read_checkpoint

    path = Path(path)
    if path.is_dir():
        for name in INDEX_FILES + SHOWO_FILES:
            if (path / name).is_file():
                return read_weights(path / name)
        raise CheckpointFormatError(f"{path} holds none of {', '.join(INDEX_FILES + SHOWO_FILES)}.")
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise CheckpointFormatError(f"{path} is not a shard index (needs a 'weight_map'): {err}") from err
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            part = read_checkpoint(path.parent / shard)
            wrong = sorted(k for k in part if index["weight_map"].get(k) != shard)
            if wrong:
                raise CheckpointFormatError(f"{path.parent / shard} holds keys its index puts elsewhere: {wrong[:5]}")
            state.update(part)
        absent = sorted(set(index["weight_map"]) - set(state))
        if absent:
            raise CheckpointFormatError(f"{path}: keys listed in the index are in no shard: {absent[:5]}")
        return state
    return read_checkpoint(path)


def showo_state_dict(raw: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Official Show-o keys -> the zoo model's ``showo.*`` keys (pure key map; the CLIP projector of
    the ``w_clip_vit`` variants is refused: it has no place in this model)."""
    from zoo.models.showo import showo_key

    projector = sorted(k for k in raw if showo_key(k) is None)
    if projector:
        raise CheckpointFormatError(f"{source} is a Show-o variant with a CLIP-ViT projector ({projector[0]}, ...); "
                                    "only the MAGVIT-token models (show-o-512x512, show-o) load here.")
    return {showo_key(k): v for k, v in raw.items()}


def _vq_weights(config: dict):
    spec = config.get("vq_weights") or {}
    if spec.get("path"):
        return read_weights(spec["path"])
    from zoo.hub import download_file

    return read_weights(download_file(spec.get("repo_id", "showlab/magvitv2"), spec.get("filename", "pytorch_model.bin"),
                                      revision=spec.get("revision")))


def load_showo(model, showo_path, vq_state: dict | None = None, source: str | None = None):
    """Load an official Show-o checkpoint (and a MAGVIT-v2 state dict) into ``model`` strictly."""
    from zoo.hub import load_state_dict_strict

    source = source or str(showo_path)
    state = showo_state_dict(read_weights(showo_path), source)
    if vq_state is not None:
        state.update({f"vq_model.{k}": v for k, v in vq_state.items()})
    hint = ""
    if vq_state is None:
        hint = "  the image tokenizer's keys (vq_model.*) come from showlab/magvitv2; pass its state dict too."
    load_state_dict_strict(model, state, source, hint=hint)
    return model


def load_concept(base_name: str, folder, config: dict, epoch: int | None = None):
    """The official per-concept files in ``folder`` as a zoo adapter model on the base ``base_name``.

    The concept name defaults to the folder's parent (``saves/<concept>/<task>``); token counts
    default to the official layout for the row count (17: [16], 25: [16, 8], 33: [16, 8, 8]).
    The base is not loaded: the result only carries the rows and the base's name.
    """
    from zoo.multimodal.unictokens.concept_tokens import load_official_rows
    from zoo.multimodal.unictokens.model import ConceptAdapter

    from zoo.cards import get_card
    from zoo.registry import get_family

    concept = dict(config.get("concept") or {})
    folder = Path(folder)
    base_config = config
    if base_name and not base_name.startswith("hf-hub:") and "/" not in base_name and not Path(base_name).exists():
        card = get_card(base_name)
        base_config = get_family(card.family).make_config(card.size, card.config, source=card.source)
    hidden = int(base_config["llm"]["hidden_size"])
    tokens = [int(t) for t in concept.get("tokens") or []]
    rows = load_official_rows(folder, epoch, num_rows=1 + sum(tokens) if tokens else None, hidden_size=hidden)
    n = rows["embed"].shape[0]
    if not tokens:
        tokens = {17: [16], 25: [16, 8], 33: [16, 8, 8]}.get(n, [n - 1])
    concept["tokens"] = tokens
    concept["name"] = concept.get("name") or folder.resolve().parent.name
    concept.setdefault("class_word", "")
    concept.setdefault("kind", "object")
    concept["trainable"] = None
    full = dict(base_config)
    full["concept"] = concept
    full["base"] = base_name
    return ConceptAdapter(full, rows)


def load(path: str, config: dict):
    """Registry loader: an official file/folder + the full config -> model.

    A folder of ``epoch_*_embed.pt`` files is a concept (needs ``config["base"]``, the CLI's
    ``--base``); anything else is a Show-o checkpoint (file, folder or shard index).
    """
    from zoo.multimodal.unictokens.concept_tokens import official_epochs
    from zoo.multimodal.unictokens.model import UniCTokensModel

    path = Path(path)
    if path.is_dir() and official_epochs(path):
        if not config.get("base"):
            raise ConfigError(f"{path} holds concept rows; name the base they apply to (`--base show-o-512`, or "
                              "base=<card|hf-hub:org/name|folder>).")
        return load_concept(config["base"], path, config)
    if config.get("base"):
        raise ConfigError(f"base={config['base']!r} is only for concept folders (epoch_<E>_embed.pt ...); {path} "
                          "is not one.")
    model = UniCTokensModel(config)
    return load_showo(model, path, _vq_weights(config), source=str(path))


__all__ = ["read_weights", "showo_state_dict", "load_showo", "load_concept", "load"]
