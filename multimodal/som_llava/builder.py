"""SoM-LLaVA configs and sizes: LLaVA-1.5 (CLIP ViT-L/14-336 + ``mlp2x_gelu`` projector + Vicuna-v1.5).

SoM-LLaVA changes only LLaVA-1.5's data, so its model is LLaVA-1.5's
(``haotian-liu/LLaVA:scripts/v1_5/finetune.sh``: ``--vision_tower openai/clip-vit-large-patch14-336
--mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --image_aspect_ratio pad``), built here
as transformers' ``LlavaForConditionalGeneration`` with attention through ``zoo.nn.attention``.

``vision_config`` / ``text_config`` hold ``CLIPVisionConfig`` / ``LlamaConfig`` arguments
(transformers' names). The values are written out here (those of ``openai/clip-vit-large-patch14-336``
and ``lmsys/vicuna-{7b,13b}-v1.5``), so building never downloads anything. The vocabulary is
Vicuna's 32000 tokens plus ``<image>`` (32000) and ``<pad>`` (32001), padded to 32064 rows as
transformers' LLaVA conversion does (``llava-hf/llava-1.5-7b-hf``).
"""
from __future__ import annotations

from zoo.config import merge, sized_config

# openai/clip-vit-large-patch14-336 (vision part)
CLIP_VIT_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "num_channels": 3,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# lmsys/vicuna-7b-v1.5 (a Llama-2-7B fine-tune), vocabulary widened for <image> and <pad>
VICUNA_7B = {
    "vocab_size": 32064,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 32001,
}

# CLIP's normalisation (openai/clip-vit-large-patch14-336 preprocessor_config.json)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

DEFAULT_CONFIG = {
    "vision_config": CLIP_VIT_L_336,
    "text_config": VICUNA_7B,
    # LLaVA-1.5's connector: Linear(1024 -> d), GELU, Linear(d -> d)
    "mm_projector_type": "mlp2x_gelu",
    "projector_hidden_act": "gelu",
    # penultimate CLIP layer, CLS token dropped (mm_vision_select_feature "patch")
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "image_token_id": 32000,
    # image preprocessing: pad to a square with the mean colour, then CLIP's resize/crop/normalise
    "image_aspect_ratio": "pad",
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    # conversation template and the longest training sequence (tokens, image tokens included)
    "template": "vicuna_v1",
    "model_max_length": 2048,
    # where the tokenizer comes from: a Hub repo, or a tokenizers JSON string (tiny models)
    "tokenizer": {"repo_id": None, "revision": None, "json": None, "special_tokens": {}},
    # official weights: expected key layout ("llava": original LLaVA, "hf": transformers; "auto": any)
    "checkpoint_layout": "auto",
    # where the original LLaVA layout takes its (unsaved, frozen) vision tower from
    "vision_tower_weights": {"repo_id": "openai/clip-vit-large-patch14-336",
                             "filenames": ["model.safetensors", "pytorch_model.bin"], "revision": None},
    "attn_implementation": "zoo",
    # weights' dtype when loading official checkpoints: auto = bfloat16 with a CUDA GPU, else float32
    "dtype": "auto",
}

SIZES = {
    # first = the default of `zoo convert som-llava`
    "7b": {},
    # lmsys/vicuna-13b-v1.5
    "13b": {"text_config": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                            "num_attention_heads": 40, "num_key_value_heads": 40}},
    # CPU-sized: 32 px images in 8 px patches (16 image tokens), a 2-layer 64-wide Llama. The
    # vocabulary follows the tokenizer (the trainer sets it); 128 rows leave room for small ones.
    "tiny": {
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "projection_dim": 32},
        "text_config": {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512,
                        "pad_token_id": 1},
        "image_token_id": 3,
        "model_max_length": 256,
    },
}


def make_config(size: str = "7b", **overrides) -> dict:
    """The full config of ``size`` with nested ``overrides`` merged in."""
    return sized_config("SoM-LLaVA", DEFAULT_CONFIG, SIZES, size, overrides)


def num_image_tokens(config: dict) -> int:
    """Image tokens per image: (image_size / patch_size)^2 patches (576 for ViT-L/14 at 336 px)."""
    vision = config["vision_config"]
    side = int(vision["image_size"]) // int(vision["patch_size"])
    tokens = side * side
    return tokens if config.get("vision_feature_select_strategy", "default") == "default" else tokens + 1


def build(config: dict):
    """A random-init SoM-LLaVA model from a complete config (registry contract)."""
    from zoo.multimodal.som_llava.model import SomLlavaModel

    return SomLlavaModel(merge(DEFAULT_CONFIG, config))
