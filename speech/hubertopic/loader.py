"""Upstream HuBERT checkpoints -> HubertopicModel, strictly and without running pickled code.

Read by :func:`zoo.models.hubert_checkpoints.read_hubert_checkpoint`:

* transformers: ``facebook/hubert-base-ls960``'s ``pytorch_model.bin`` / ``model.safetensors``,
  a ``HubertModel`` state dict (keys optionally under ``hubert.``), or the whole
  ``save_pretrained`` folder / Hub snapshot with its ``config.json``;
* fairseq: ``hubert_base_ls960.pt`` / ``hubert_large_ll60k.pt``, weights under ``model`` with
  fairseq names, mapped with transformers' own conversion map
  (``huggingface/transformers:src/transformers/models/hubert/convert_hubert_original_pytorch_checkpoint_to_pytorch.py``);
  its ``cfg``/``args`` are read as inert stand-ins (fairseq is never imported).

The checkpoint decides the architecture (``config.json``, fairseq's config, or the tensor
shapes: a 24-layer, 1024-wide pre-LN ``hubert-large`` converts with no override) and which
heads exist: a fairseq pretraining checkpoint brings its ``final_proj``/``label_embs_concat``
(504 rows for the released base: 500 units + 4 dictionary symbols) and its ``normalize``
setting; neither upstream layout has a topic head. The loader sizes the model from the file
and logs what it changed. Every key must match: a missing, unexpected or mis-shaped key is a
:class:`~zoo.errors.CheckpointKeysError`.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def is_upstream_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is an upstream checkpoint for :func:`load` (a file, or a folder that is not a zoo folder).

    A zoo folder's ``config.json`` names its ``family``; a transformers folder's does not.
    """
    import json

    path = Path(str(path)).expanduser()
    if path.is_file():
        return True
    config = path / "config.json"
    if not path.is_dir():
        return False
    if not config.is_file():
        return True
    try:
        return "family" not in json.loads(config.read_text(encoding="utf-8"))
    except ValueError:
        return True


def load_encoder(model, path: str | Path) -> str:
    """Load only the encoder (``model.hubert``) from an upstream checkpoint file or folder, strictly.

    For starting pretraining from ``hubert-base``: the model's own heads stay as built, and its
    architecture must be the checkpoint's (else :class:`~zoo.errors.CheckpointKeysError` lists
    the keys). Returns the layout ("transformers" or "fairseq").
    """
    from zoo.hub import load_state_dict_strict
    from zoo.models.hubert_checkpoints import read_hubert_checkpoint

    found = read_hubert_checkpoint(path)
    load_state_dict_strict(model.hubert, found.encoder, str(found.file))
    return found.layout


def load(path: str, config: dict):
    """Registry loader: (upstream checkpoint file or folder, full config) -> HubertopicModel, strict.

    ``encoder`` comes from the checkpoint; ``num_classes`` and ``pretrain.final_dim`` from its
    fairseq pretraining head (none: ``num_classes = []``); ``normalize`` from fairseq's task
    config; ``topic.num_topics`` becomes 0 (no upstream topic head). Raises
    :class:`~zoo.errors.CheckpointKeysError` / :class:`~zoo.errors.CheckpointFormatError` naming
    the file.
    """
    from zoo.hub import load_state_dict_strict
    from zoo.models.hubert_checkpoints import encoder_config, read_hubert_checkpoint
    from zoo.speech.hubertopic.builder import build

    found = read_hubert_checkpoint(path)
    source = str(found.file)
    config = {**config, "topic": {**config.get("topic", {})}, "pretrain": {**config.get("pretrain", {})}}
    config["encoder"] = encoder_config(found, config["encoder"], source)
    rows = int(found.heads["label_embs_concat"].shape[0]) if "label_embs_concat" in found.heads else 0
    wanted = [rows] if rows else []
    if list(config.get("num_classes") or []) != wanted:
        log.info("%s: %s checkpoint %s; num_classes set to %s", source, found.layout,
                 f"has {rows} label embeddings" if rows else "has no pretraining head", wanted)
        config["num_classes"] = wanted
    if int(config["topic"].get("num_topics") or 0):
        log.info("%s: upstream HuBERT has no topic head; topic.num_topics set to 0", source)
        config["topic"]["num_topics"] = 0
    if rows and "final_proj.weight" in found.heads:
        config["pretrain"]["final_dim"] = int(found.heads["final_proj.weight"].shape[0])
    for key in ("untie_final_proj", "logit_temp"):
        if key in found.extras:
            config["pretrain"][key] = found.extras[key]
    if "label_rate" in found.extras and rows:
        config["label_rate"] = found.extras["label_rate"]
    if "normalize" in found.extras and bool(config.get("normalize")) != found.extras["normalize"]:
        log.info("%s: fairseq's task config says normalize=%s", source, found.extras["normalize"])
        config["normalize"] = found.extras["normalize"]
    model = build(config)
    state = {f"hubert.{k}": v for k, v in found.encoder.items()}
    state.update(found.heads)
    load_state_dict_strict(model, state, source)
    return model


__all__ = ["is_upstream_checkpoint", "load", "load_encoder"]
