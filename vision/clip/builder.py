"""CLIP configs and sizes, in open_clip's own terms.

A config holds open_clip's ``model_cfg`` (the fields of ``open_clip/model_configs/*.json``:
``embed_dim``, ``quick_gelu``, ``vision_cfg``, ``text_cfg``) and ``preprocess_cfg`` (image
size, mean, std, interpolation, resize mode), i.e. what open_clip writes to
``open_clip_config.json``. Torch-free, so ``zoo list`` stays fast.
"""
from __future__ import annotations

from zoo.config import merge, sized_config

# OpenAI CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN/STD, also used by the laion tags).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# open_clip:src/open_clip/model_configs/ViT-B-32.json
DEFAULT_CONFIG = {
    "model_cfg": {
        "embed_dim": 512,
        "quick_gelu": False,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0,
                       "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
    },
    "preprocess_cfg": {"size": 224, "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic",
                       "resize_mode": "shortest"},
    # When model_name is set, open_clip builds the model (its built-in config replaces model_cfg and
    # preprocess_cfg) and fetches the `pretrained` weights itself (a tag such as laion2b_s34b_b79k,
    # or a checkpoint file), at run time.
    "open_clip": {"model_name": None, "pretrained": None},
}

SIZES = {
    "vit-b-32": {},
    # 64 px images in 8 px patches and a 2-layer, 64-wide text tower with open_clip's BPE
    # tokenizer (vocabulary 49408) cut to 32 tokens: trains on a CPU in minutes (ours).
    "tiny": {
        "model_cfg": {
            "embed_dim": 64,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 32, "width": 64, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"size": 64},
    },
}


def make_config(size: str = "vit-b-32", **overrides) -> dict:
    """The full config of ``size`` with nested ``overrides`` merged in."""
    return sized_config("CLIP", DEFAULT_CONFIG, SIZES, size, overrides)


def build(config: dict):
    """A random-init :class:`~zoo.vision.clip.model.ClipModel` from a complete config (registry contract)."""
    from zoo.vision.clip.model import ClipModel

    config = merge(DEFAULT_CONFIG, config)
    source = config["open_clip"]
    if source.get("model_name"):
        return ClipModel.from_open_clip(source["model_name"], source.get("pretrained"))
    return ClipModel(config)
