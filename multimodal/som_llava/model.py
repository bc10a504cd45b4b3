"""The SoM-LLaVA model: transformers' ``LlavaForConditionalGeneration`` behind the zoo API.

``model.llava`` is a plain ``LlavaForConditionalGeneration`` (CLIP vision tower, ``mlp2x_gelu``
projector, Llama/Vicuna language model) whose attention runs through ``zoo.nn.attention``
(``attn_implementation="zoo"``). Its state-dict keys are transformers' (>= 4.52) names under
``llava.``; ``loader.py`` converts the original LLaVA and older transformers layouts to them.
"""
from __future__ import annotations

import logging

import torch

from zoo.errors import ConfigError
from zoo.model import ZooModel

logger = logging.getLogger("zoo.som_llava")


def llava_config(config: dict):
    """transformers ``LlavaConfig`` of a SoM-LLaVA config (raises ConfigError on a bad argument)."""
    from transformers import LlavaConfig

    from zoo.multimodal.som_llava.builder import num_image_tokens

    if config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConfigError(f"mm_projector_type {config['mm_projector_type']!r} is not supported; SoM-LLaVA "
                          "(LLaVA-1.5) uses 'mlp2x_gelu'.")
    vision = {**config["vision_config"], "model_type": "clip_vision_model"}
    text = {**config["text_config"], "model_type": "llama"}
    if int(config["image_token_id"]) >= int(text["vocab_size"]):
        raise ConfigError(f"image_token_id {config['image_token_id']} is outside the vocabulary "
                          f"(text_config.vocab_size={text['vocab_size']}).")
    try:
        llava = LlavaConfig(
            vision_config=vision, text_config=text, image_token_index=int(config["image_token_id"]),
            image_seq_length=num_image_tokens(config), projector_hidden_act=config["projector_hidden_act"],
            vision_feature_layer=int(config["vision_feature_layer"]),
            vision_feature_select_strategy=config["vision_feature_select_strategy"],
            multimodal_projector_bias=True, tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"SoM-LLaVA config is not a valid LlavaConfig: {err}") from err
    implementation = config.get("attn_implementation") or "zoo"
    if implementation == "zoo":
        from zoo.nn import register_transformers_attention

        register_transformers_attention()
    llava._attn_implementation = implementation
    return llava


class SomLlavaModel(ZooModel):
    """LLaVA-1.5 as SoM-LLaVA trains it; ``forward`` is ``LlavaForConditionalGeneration.forward``.

    Inputs: ``input_ids`` [B, L] int64 with ``num_image_tokens`` copies of ``image_token_id`` per
    image, ``pixel_values`` [B_images, 3, S, S] float (CLIP-normalised, ``S`` = vision image size),
    ``attention_mask`` [B, L] (1 = real token), optional ``labels`` [B, L] (-100 = no loss).
    Returns transformers' output (``logits`` [B, L, V], ``loss`` when labels are given).
    """

    family = "som-llava"

    def __init__(self, config: dict):
        super().__init__(config)
        from transformers import LlavaForConditionalGeneration

        self.llava = LlavaForConditionalGeneration(llava_config(self.config))
        self._tokenizer = None

    # ------------------------------------------------------------------ facts
    @property
    def image_size(self) -> int:
        return int(self.config["vision_config"]["image_size"])

    @property
    def num_image_tokens(self) -> int:
        from zoo.multimodal.som_llava.builder import num_image_tokens

        return num_image_tokens(self.config)

    @property
    def image_token_id(self) -> int:
        return int(self.config["image_token_id"])

    @property
    def pad_token_id(self) -> int:
        return int(self.config["text_config"]["pad_token_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["text_config"]["vocab_size"])

    # ------------------------------------------------------------------ parts
    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.llava.model.vision_tower

    @property
    def projector(self) -> torch.nn.Module:
        return self.llava.model.multi_modal_projector

    @property
    def language_model(self) -> torch.nn.Module:
        return self.llava.model.language_model

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, labels=None, **kwargs):
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.vision_tower.dtype)
        return self.llava(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                          labels=labels, **kwargs)
