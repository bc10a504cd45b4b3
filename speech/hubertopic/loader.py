"""Upstream HuBERT checkpoints -> HubertopicModel (speech.md §2.3), strictly and without running pickled code.

Two layouts are read:

* transformers: ``facebook/hubert-base-ls960``'s ``pytorch_model.bin`` / ``model.safetensors``,
  a ``HubertModel`` state dict (keys optionally under ``hubert.``);
* fairseq: ``hubert_base_ls960.pt``, weights under ``model`` with fairseq names, mapped
  through the §2.3 key map; its ``cfg``/``args`` objects are read by the restricted
  unpickler of ``zoo.models.checkpoints`` as inert stand-ins (fairseq is never imported).

The file decides which heads exist: a fairseq pretraining checkpoint brings its own
``final_proj``/``label_embs_concat`` (504 rows for the released base: 500 units + 4
dictionary symbols), and neither upstream layout has a topic head, so the registry
loader sizes those heads from the checkpoint and says so in the log. Every encoder key
must match: a missing, unexpected or mis-shaped key is a ``CheckpointKeysError``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError

log = logging.getLogger(__name__)

TRANSFORMERS_PREFIX = "hubert."


def _weight_norm_spelling(module: torch.nn.Module) -> str:
    keys = module.state_dict().keys()
    return "parametrizations" if any(".parametrizations.weight.original" in k for k in keys) else "legacy"


def is_fairseq(checkpoint: dict) -> bool:
    weights = checkpoint.get("model") if isinstance(checkpoint.get("model"), dict) else checkpoint
    return any(k.startswith(("post_extract_proj.", "encoder.pos_conv.0.", "w2v_encoder.")) or k == "mask_emb"
               for k in weights)


def split_checkpoint(checkpoint: dict, source: str, prefer: str) -> tuple[dict, dict, str]:
    """(encoder state dict in transformers names, pretraining head tensors, layout name)."""
    from zoo.models.checkpoints import fairseq_hubert_to_hf, find_state_dict, normalize_weight_norm_keys

    if is_fairseq(checkpoint):
        encoder, heads = fairseq_hubert_to_hf(checkpoint, prefer=prefer, source=source)
        return encoder, heads, "fairseq"
    state = find_state_dict(checkpoint, source)
    if any(k.startswith(TRANSFORMERS_PREFIX) for k in state):
        outside = sorted(k for k in state if not k.startswith(TRANSFORMERS_PREFIX))
        if outside:
            raise CheckpointKeysError(source, unexpected=outside, hint=(
                "  This looks like a transformers task model (e.g. HubertForCTC) whose head zoo does not load; "
                "load a HubertModel checkpoint such as facebook/hubert-base-ls960."))
        state = {k[len(TRANSFORMERS_PREFIX):]: v for k, v in state.items()}
    if not any(k.startswith("feature_extractor.") for k in state):
        raise CheckpointFormatError(
            f"{source} is neither a transformers HubertModel state dict nor a fairseq HuBERT checkpoint "
            f"(first keys: {sorted(state)[:8]}).")
    return normalize_weight_norm_keys(state, prefer=prefer), {}, "transformers"


def load_encoder(model, path: str | Path, source: str | None = None) -> str:
    """Load only the encoder (``model.hubert``) from an upstream checkpoint, strictly; returns the layout.

    Used to initialise pretraining from ``hubert-base``: the model's own heads stay as built.
    """
    from zoo.hub import load_state_dict_strict
    from zoo.models.checkpoints import read_checkpoint

    source = source or str(path)
    encoder, _, layout = split_checkpoint(read_checkpoint(path), source, _weight_norm_spelling(model.hubert))
    load_state_dict_strict(model.hubert, encoder, source)
    return layout


def load(path: str, config: dict):
    """Registry loader: (upstream checkpoint path, full config) -> HubertopicModel, strict."""
    from zoo.hub import load_state_dict_strict
    from zoo.models.checkpoints import read_checkpoint
    from zoo.speech.hubertopic.builder import build

    source = str(path)
    checkpoint = read_checkpoint(path)
    config = {**config, "topic": {**config.get("topic", {})}}
    prefer = "parametrizations"
    encoder, heads, layout = split_checkpoint(checkpoint, source, prefer)
    rows = int(heads["label_embs_concat"].shape[0]) if "label_embs_concat" in heads else 0
    wanted = [rows] if rows else []
    if list(config.get("num_classes") or []) != wanted:
        log.info("%s: %s checkpoint %s; num_classes set to %s", source, layout,
                 f"has {rows} label embeddings" if rows else "has no pretraining head", wanted)
        config["num_classes"] = wanted
    if int(config["topic"].get("num_topics") or 0):
        log.info("%s: upstream HuBERT has no topic head; topic.num_topics set to 0", source)
        config["topic"]["num_topics"] = 0
    if rows and "final_proj.weight" in heads:
        config["pretrain"] = {**config.get("pretrain", {}), "final_dim": int(heads["final_proj.weight"].shape[0])}
    model = build(config)
    if _weight_norm_spelling(model.hubert) != prefer:
        encoder, heads, layout = split_checkpoint(checkpoint, source, _weight_norm_spelling(model.hubert))
    state = {f"hubert.{k}": v for k, v in encoder.items()}
    state.update(heads)
    load_state_dict_strict(model, state, source)
    return model


__all__ = ["is_fairseq", "load", "load_encoder", "split_checkpoint"]
