"""Official BAGEL / SRUM checkpoints -> SrumModel, strictly.

A release folder (``ByteDance-Seed/BAGEL-7B-MoT``; SRUM's ``Wayne-King/SRUM_BAGEL_7B_MoT`` has the same
layout, its trained ``model.safetensors`` completed with the base's ViT and connector by
``tool/trans2hf.py``) holds:

* ``ema.safetensors`` (BAGEL; the EMA weights, what ``finetune_from_ema`` starts from) or
  ``model.safetensors`` (SRUM): every key except the VAE's, in the names SrumModel uses
  (``language_model.model.layers.{i}.self_attn.q_proj_moe_gen.weight``, ``vit_model.vision_model.*`` with
  a linear ``patch_embedding``, ``connector.fc1``, ``vae2llm``, ``time_embedder.mlp.0``,
  ``latent_pos_embed.pos_embed`` ...): :func:`bagel_key` is the identity on them;
* ``ae.safetensors``: the FLUX autoencoder in BFL names, mapped by
  ``zoo.models.flux_vae.bfl_to_diffusers_key`` under ``vae.``;
* ``llm_config.json`` and ``vit_config.json``: the widths (the ViT loses its last layer, as BAGEL's
  loaders do); the Qwen2 tokenizer files.

Every key must match: a missing, unexpected or mis-shaped key is a ``CheckpointKeysError`` listing them.
The two fixed sin-cos tables (``latent_pos_embed.pos_embed``, ``vit_pos_embed.pos_embed``) may be absent
(BAGEL's own resume drops them, fsdp_utils.py:163-164); they are then computed, and the log says so.

The weights stream through ``zoo.weights``: the model is built on the meta device, the keys are checked
before anything is read, and each tensor goes straight into the target dtype and device (safetensors
memory-mapped), so the process never holds a second copy.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import torch

from zoo.errors import CheckpointFormatError, WeightsNotAvailableError

logger = logging.getLogger("zoo.srum")

__all__ = ["BAGEL_PREFIXES", "POS_EMBED_KEYS", "bagel_key", "vae_key", "llm_values", "vit_values",
           "load", "load_folder", "load_tokenizer", "release_file"]

BAGEL_PREFIXES = ("language_model.", "vit_model.", "connector.", "vit_pos_embed.", "latent_pos_embed.",
                  "time_embedder.", "vae2llm.", "llm2vae.")
POS_EMBED_KEYS = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")
LLM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps", "hidden_act")
VIT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
            "image_size", "patch_size", "hidden_act", "layer_norm_eps")


def bagel_key(key: str) -> str:
    """An ``ema.safetensors``/``model.safetensors`` key -> SrumModel's key (the same name; the strict check
    reports anything that is not one of the model's keys)."""
    return key


def vae_key(key: str, num_levels: int = 4) -> str | None:
    """An ``ae.safetensors`` key -> SrumModel's key (``vae.`` + diffusers' name), None if not a VAE weight."""
    from zoo.models.flux_vae import bfl_to_diffusers_key

    new = bfl_to_diffusers_key(key, num_levels)
    return None if new is None else "vae." + new


def llm_values(llm_config: Mapping) -> dict:
    """The ``llm`` config section from a release's ``llm_config.json`` (untied embeddings, q/k norm on)."""
    values = {k: llm_config[k] for k in LLM_KEYS if k in llm_config}
    if "rope_theta" not in values and isinstance(llm_config.get("rope_parameters"), Mapping):
        values["rope_theta"] = llm_config["rope_parameters"].get("rope_theta")
    return {**values, "tie_word_embeddings": False, "qk_norm": True}


def vit_values(vit_config: Mapping) -> dict:
    """The ``vit`` config section from ``vit_config.json``, the last layer dropped (``num_hidden_layers - 1``)."""
    values = {k: vit_config[k] for k in VIT_KEYS if k in vit_config}
    if "num_hidden_layers" in values:
        values["num_hidden_layers"] = int(values["num_hidden_layers"]) - 1
    return values


def release_file(anchor: Path | None, name: str, config: Mapping, *, required: bool = True) -> Path | None:
    """``name`` next to ``anchor`` (a downloaded or local release file), else from ``config.source.repo_id``."""
    if anchor is not None and (anchor.parent / name).is_file():
        return anchor.parent / name
    source = config.get("source") or {}
    if source.get("repo_id"):
        from zoo import hub

        try:
            return Path(hub.download_file(source["repo_id"], name, revision=source.get("revision")))
        except WeightsNotAvailableError:
            if required:
                raise
            return None
    if required:
        raise WeightsNotAvailableError(
            f"{name} is not next to {anchor} and config.source.repo_id is not set; put the release's files in one "
            "folder (ema.safetensors or model.safetensors, ae.safetensors, llm_config.json, vit_config.json, "
            "the tokenizer files) or load a card (zoo.load('bagel-7b-mot')).")
    return None


def load_tokenizer(spec: Mapping):
    """BAGEL's Qwen2 tokenizer from ``spec["path"]`` (a folder) or ``spec["repo_id"]`` (a Hub repo):
    ``tokenizer.json`` when present, else ``vocab.json`` + ``merges.txt`` (no remote code)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(spec["path"]) if spec.get("path") else None
    if folder is None:
        from zoo import hub

        files = {}
        for name in ("tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt"):
            try:
                files[name] = Path(hub.download_file(spec["repo_id"], name, revision=spec.get("revision")))
            except WeightsNotAvailableError:
                continue
        if not files:
            raise WeightsNotAvailableError(f"no tokenizer files in {spec['repo_id']}")
        folder = next(iter(files.values())).parent
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    raise WeightsNotAvailableError(f"{folder} has neither tokenizer.json nor vocab.json + merges.txt")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointFormatError(f"cannot read {path}: {err}") from err


def load(path: str, config: dict, *, dtype: torch.dtype | None = None, device=None):
    """Registry loader: a release weights file (or folder) and the card's config -> SrumModel, strict.

    path: ``ema.safetensors`` / ``model.safetensors`` (its siblings are used when present, else fetched from
    ``config.source.repo_id``), or a release folder. dtype/device: where the weights go (default float32, CPU).
    """
    path = Path(path)
    if path.is_dir():
        return load_folder(path, config, dtype=dtype, device=device)
    config = dict(config)
    llm_file = release_file(path, "llm_config.json", config, required=False)
    vit_file = release_file(path, "vit_config.json", config, required=False)
    if llm_file is not None:
        config["llm"] = {**config["llm"], **llm_values(_read_json(llm_file))}
    if vit_file is not None:
        config["vit"] = {**config["vit"], **vit_values(_read_json(vit_file))}
    tokenizer = dict(config.get("tokenizer") or {})
    if not tokenizer.get("json") and not tokenizer.get("repo_id"):
        if (path.parent / "tokenizer.json").is_file() or (path.parent / "vocab.json").is_file():
            tokenizer["path"] = str(path.parent)
        elif (config.get("source") or {}).get("repo_id"):
            tokenizer.update(repo_id=config["source"]["repo_id"], revision=config["source"].get("revision"))
        config["tokenizer"] = tokenizer
    ae = release_file(path, "ae.safetensors", config)
    return _load_weights(config, path, ae, dtype=dtype, device=device)


def load_folder(folder: str | Path, config: dict, *, ema: bool = True, dtype=None, device=None):
    """A local release folder -> SrumModel: ``ema.safetensors`` (``ema=True``, BAGEL's ``finetune_from_ema``)
    or ``model.safetensors``, whichever exists when the preferred one does not."""
    folder = Path(folder)
    names = ("ema.safetensors", "model.safetensors") if ema else ("model.safetensors", "ema.safetensors")
    for name in names:
        if (folder / name).is_file():
            return load(str(folder / name), config, dtype=dtype, device=device)
    raise WeightsNotAvailableError(f"{folder} holds neither ema.safetensors nor model.safetensors")


def _load_weights(config: dict, weights: Path, ae: Path, *, dtype=None, device=None):
    """Meta-build the model, stream ``weights`` into it strictly (``zoo.weights``), load the VAE from ``ae``."""
    from zoo import hub
    from zoo import weights as zw
    from zoo.models.flux_vae import convert_bfl_state_dict
    from zoo.multimodal.srum.builder import build

    source = str(weights)
    infos = zw.read_index(weights)
    model = zw.build_empty(build, config)
    if model is None:
        model = build(config)
    # the VAE comes from its own file, with names converted and the attention's 1x1 convolutions reshaped:
    # small, so read whole and loaded by the strict loader (which also fills a meta-built module)
    vae_state = convert_bfl_state_dict(hub.read_safetensors(ae, str(ae)), str(ae), len(config["vae"]["block_out_channels"]))
    hub.load_state_dict_strict(model.vae, vae_state, str(ae))
    computed = []
    for key in POS_EMBED_KEYS:
        if key not in infos:
            owner = key.split(".")[0]
            logger.info("%s has no %s; using the fixed sin-cos table", source, key)
            hub.load_state_dict_strict(getattr(model, owner), {"pos_embed": getattr(model, owner).sincos_table()},
                                       "the sin-cos table")
            computed.append(owner)
    detached = {name: model._modules.pop(name) for name in ["vae", *computed]}
    try:
        zw.load_into(model, infos, key_map=bagel_key, dtype=dtype, device=device, source=source)
    finally:
        model._modules.update(detached)
    model.to(device=device, dtype=dtype)
    model.vae.requires_grad_(False)
    return model
