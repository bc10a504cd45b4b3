"""HuBERTopic configs and sizes (arXiv 2310.03975; HuBERT base as fairseq's hubert_base_librispeech.yaml).

``encoder`` holds ``zoo.models.hubert.HubertConfig`` arguments (transformers' names,
hard-coded ``facebook/hubert-base-ls960`` values for ``base``: nothing is downloaded).
``pretrain`` holds fairseq's HuBERT objective and ``topic`` the auxiliary
utterance-level topic head. The paper leaves the topic head's details open;
our defaults are marked "ours" and listed in README.md here.
"""
from __future__ import annotations

import copy

from zoo.config import merge, sized_config
from zoo.models.configs import HUBERT_BASE_ENCODER, HUBERT_TINY_ENCODER

# HuBERT Base; fairseq's pretraining (hubert_base_librispeech.yaml) uses encoder_layerdrop 0.05 and activation_dropout 0.0.
# transformers keeps masked_spec_embed only when mask_time_prob > 0; pretraining masks with `pretrain`.
BASE_ENCODER = {**HUBERT_BASE_ENCODER, "layerdrop": 0.05, "activation_dropout": 0.0}

DEFAULT_CONFIG = {
    "encoder": BASE_ENCODER,
    "sample_rate": 16000,
    # fairseq: `normalize: false` for Base (the waveform is fed as read); true z-scores it (fairseq's layer_norm).
    "normalize": False,
    # Classes per label set (one set: k-means units). [] = encoder only (e.g. the hubert-base card).
    "num_classes": [500],
    "label_rate": 50,               # labels per second: 100 for MFCC units (iteration 1), 50 for layer units
    "pretrain": {
        "final_dim": 256,
        "untie_final_proj": True,
        "logit_temp": 0.1,
        "mask_prob": 0.8,
        "mask_length": 10,
        "min_masks": 2,
        "require_same_masks": True,
        "feature_grad_mult": 0.1,
        "feature_penalty_weight": 10.0,
        "pred_masked_weight": 1.0,
        "pred_nomask_weight": 0.0,
        "label_tolerance_frames": 2,
    },
    # The paper's auxiliary topic classification on a pooled utterance representation.
    "topic": {
        "num_topics": 100,          # ours (paper: unknown T); 0 = no topic head
        "layer": None,              # ours: None = last layer; k = output of layer k (1-based)
        "pooling": "mean",          # ours: mean over the utterance's frames ("mean" | "max")
        "dropout": 0.0,
        "weight": 1.0,              # ours: lambda in L = L_hubert + lambda * CE
    },
}

SIZES = {
    # First = the default of `zoo convert hubertopic`.
    "base": {},
    # Same conv strides (50 Hz frames) at a width that trains on a CPU in minutes.
    "tiny": {
        "encoder": copy.deepcopy(HUBERT_TINY_ENCODER),
        "num_classes": [100],
        "label_rate": 100,
        "pretrain": {"final_dim": 32},
        "topic": {"num_topics": 10},
    },
}

POOLINGS = ("mean", "max")


def make_config(size: str = "base", **overrides) -> dict:
    """The full config of ``size`` with nested ``overrides`` merged in."""
    return sized_config("HuBERTopic", DEFAULT_CONFIG, SIZES, size, overrides)


def build(config: dict):
    """A random-init HubertopicModel from a complete config (registry contract)."""
    from zoo.speech.hubertopic.model import HubertopicModel

    return HubertopicModel(merge(DEFAULT_CONFIG, config))
