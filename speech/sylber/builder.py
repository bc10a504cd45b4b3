"""Sylber configs and sizes (``Berkeley-Speech-Group/sylber:sylber/model/sylber.py`` builds the encoder).

The backbone is HuBERT-base truncated to 9 transformer layers; its config is
hard-coded here (the values of ``facebook/hubert-base-ls960``) so building a model
never downloads anything. ``encoder`` holds the arguments of
``zoo.models.hubert.HubertConfig`` (transformers' names).
"""
from __future__ import annotations

import copy

from zoo.config import merge, sized_config
from zoo.models.configs import HUBERT_BASE_ENCODER, HUBERT_TINY_ENCODER

# The official HubertConfig.from_pretrained("facebook/hubert-base-ls960", num_hidden_layers=9).
BASE_ENCODER = {**HUBERT_BASE_ENCODER, "num_hidden_layers": 9}

DEFAULT_CONFIG = {
    "encoder": BASE_ENCODER,
    "sample_rate": 16000,
    # Frames are 50 Hz: hop 320 samples, receptive field 400 samples (the conv stack's strides and kernels).
    "frame_rate": 50,
    # The official Segmenter's defaults (sylber/model/sylber.py).
    "norm_threshold": 2.6,
    "merge_threshold": 0.8,
    # Syllable codebook (k-means centroids) rows; 0 = no tokenizer attached.
    "num_tokens": 0,
}

SIZES = {
    # First = the default of `zoo convert sylber` (the released checkpoint is base).
    "base": {},
    # Same conv strides (so still 50 Hz) at a width that trains on a CPU in seconds.
    "tiny": {
        "encoder": copy.deepcopy(HUBERT_TINY_ENCODER),
    },
}


def make_config(size: str = "base", **overrides) -> dict:
    """The full config of ``size`` with nested ``overrides`` merged in."""
    return sized_config("Sylber", DEFAULT_CONFIG, SIZES, size, overrides)


def build(config: dict):
    """A random-init Sylber model from a complete config (registry contract)."""
    from zoo.speech.sylber.model import SylberModel

    return SylberModel(merge(DEFAULT_CONFIG, config))
