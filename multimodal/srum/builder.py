"""SRUM / BAGEL configs and sizes.

``bagel-7b-mot`` holds the released shapes as data (no download at build): the language model is
Qwen2.5-7B-Instruct's (the loader reads the real ``llm_config.json`` and ``vit_config.json`` next to
the weights and uses them instead), the understanding encoder SigLIP-so400m/14 at 980 px with its
last layer dropped (27 - 1 = 26 layers, as BAGEL's ``vit_config.num_hidden_layers - 1``), the FLUX VAE,
latent patches of 2, ``max_latent_size`` 64 (1024 px) and a 70 x 70 ViT position table
(WayneJin0918/SRUM:srum_data_infer/t2i.py). ``tiny`` is the CPU size (hidden 64, 2 layers, 64-px images:
16-channel 8 x 8 latents, 16 latent tokens).

Keys:
  llm: Qwen2 config values (``transformers.Qwen2Config`` names, ``rope_theta``, ``qk_norm``).
  vit: ``SiglipVisionConfig`` values; ``num_hidden_layers`` counts the layers kept.
  vae: ``diffusers.AutoencoderKL`` arguments.
  latent_patch_size, max_latent_size, vit_max_num_patch_per_side, connector_act, interpolate_pos.
  timestep_shift: the training-time shift of t (1.0 as released: no shift).
  vae_transform / vit_transform: ``ImageTransform`` sizes (max side, min side, stride) for generation-side
      images and for understanding images.
  understand_resize_by_vae_transform: BAGEL's inferencer first resizes an understanding image with the VAE
      transform's resize, then the ViT transform (inferencer.py ``interleave_inference``); true as released.
  image_size: default generated image ``[height, width]``.
  tokenizer: ``repo_id``/``revision`` of a Hub repo with the Qwen2 tokenizer files, or ``json`` (a
      ``tokenizers`` JSON string, e.g. the tiny tokenizer, saved with the model).
  special_tokens: BAGEL's block markers (``add_special_tokens`` in data/data_utils.py).
  source: the Hub repo the official files (weights, ``ae.safetensors``, configs) come from.
  caption_prompt: the question ``caption(image)`` asks when the model is used as a ``VQATool``.
"""
from __future__ import annotations

import copy

from zoo.config import merge, sized_config
from zoo.models.configs import FLUX_VAE_CONFIG

# Qwen2.5-7B-Instruct (the BAGEL-7B-MoT language model); the loader replaces it with llm_config.json.
QWEN25_7B = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "qk_norm": True,
    "initializer_range": 0.02,
}

# siglip-so400m-patch14 at 980 px, one layer dropped (27 -> 26).
SIGLIP_SO400M_980 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 980,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}

SPECIAL_TOKENS = {"bos": "<|im_start|>", "eos": "<|im_end|>", "start_of_image": "<|vision_start|>",
                  "end_of_image": "<|vision_end|>"}

DEFAULT_CONFIG = {
    "llm": QWEN25_7B,
    "vit": SIGLIP_SO400M_980,
    "vae": FLUX_VAE_CONFIG,
    "latent_patch_size": 2,
    "max_latent_size": 64,
    "vit_max_num_patch_per_side": 70,
    "connector_act": "gelu_pytorch_tanh",
    "interpolate_pos": False,
    "timestep_shift": 1.0,
    "vae_transform": {"max_size": 1024, "min_size": 512, "stride": 16},
    "vit_transform": {"max_size": 980, "min_size": 224, "stride": 14},
    "understand_resize_by_vae_transform": True,
    "image_size": [1024, 1024],
    "tokenizer": {"repo_id": None, "revision": None, "json": None},
    "special_tokens": SPECIAL_TOKENS,
    "source": {"repo_id": None, "revision": None, "weights": "ema.safetensors"},
    "caption_prompt": "Describe this image in one sentence.",
}

TINY_VAE = {
    **FLUX_VAE_CONFIG,
    "block_out_channels": [16, 32, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}

SIZES = {
    "bagel-7b-mot": {},
    "tiny": {
        "llm": {
            "vocab_size": 1024,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_theta": 10000.0,
        },
        "vit": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 8,
        },
        "vae": TINY_VAE,
        "max_latent_size": 8,
        "vit_max_num_patch_per_side": 8,
        "vae_transform": {"max_size": 64, "min_size": 64, "stride": 16},
        "vit_transform": {"max_size": 64, "min_size": 64, "stride": 8},
        "image_size": [64, 64],
    },
}


def make_config(size: str = "bagel-7b-mot", **overrides) -> dict:
    """The full config of ``size`` with nested or dotted ``overrides``."""
    return sized_config("SRUM", DEFAULT_CONFIG, SIZES, size, overrides)


def build(config: dict):
    """A random-init :class:`~zoo.multimodal.srum.model.SrumModel` from a complete config (registry contract)."""
    from zoo.multimodal.srum.model import SrumModel

    return SrumModel(merge(copy.deepcopy(DEFAULT_CONFIG), config))
