"""Collaborator classifier configs and sizes (torch-free).

``backbone.source``: ``open_clip`` (``open_clip_model`` with the ``open_clip_pretrained`` tag;
open_clip fetches the weights at run time and they are not part of the classifier's file) or
``bundled`` (a ``clip`` family model whose weights travel in the classifier's
``model.safetensors``; e.g. the tiny CLIP trained on shapes-world scenes). ``backbone.size`` is
the clip-family size and ``backbone.clip`` overrides of that clip config.
"""
from __future__ import annotations

from zoo.config import merge, sized_config

DEFAULT_CONFIG = {
    # source: open_clip | bundled; size: the clip-family size the backbone starts from; clip: overrides
    # of that clip config (after building, the complete clip config, saved with the classifier).
    "backbone": {"source": "open_clip", "size": "vit-b-32", "open_clip_model": "ViT-B-32",
                 "open_clip_pretrained": "laion2b_s34b_b79k", "clip": {}},
    "embed_dim": 512,
    # The light classifier on frozen embeddings (ours: the paper's exact head is not public).
    "head": {"type": "mlp", "hidden": 256, "dropout": 0.1},
    "threshold": 0.5,        # probability at or above which predict() says positive
    "concept": {"name": "", "description": "", "positive": [], "negative": [], "version": 1},
}

SIZES = {
    "vit-b-32": {},
    "tiny": {
        "backbone": {"source": "bundled", "size": "tiny", "open_clip_model": None, "open_clip_pretrained": None},
        "embed_dim": 64,
        "head": {"hidden": 64},
    },
}


def make_config(size: str = "vit-b-32", **overrides) -> dict:
    """The full config of ``size`` with nested ``overrides`` merged in."""
    return sized_config("Collaborator", DEFAULT_CONFIG, SIZES, size, overrides)


def build(config: dict):
    """A :class:`~zoo.vision.modeling_collaborator.model.CollaboratorClassifier` (head at random init)."""
    from zoo.vision.modeling_collaborator.model import CollaboratorClassifier

    return CollaboratorClassifier(merge(DEFAULT_CONFIG, config))
