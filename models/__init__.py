"""Shared neural building blocks (HuBERT backbone, ECAPA-TDNN, DINO head, checkpoint helpers).

Submodules import lazily: ``from zoo.models import HubertModel`` loads only ``zoo.models.hubert``.
"""
from __future__ import annotations

from zoo.registry import lazy_exports

_EXPORTS = {
    "HubertConfig": "zoo.models.hubert",
    "HubertModel": "zoo.models.hubert",
    "HubertOutput": "zoo.models.hubert",
    "HubertPretrainModel": "zoo.models.hubert_pretrain",
    "read_checkpoint": "zoo.models.checkpoints",
    "normalize_weight_norm_keys": "zoo.models.checkpoints",
    "remap_keys": "zoo.models.checkpoints",
    "fairseq_hubert_to_hf": "zoo.models.checkpoints",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
