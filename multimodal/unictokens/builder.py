"""UniCTokens configs and sizes.

A UniCTokens model is a Show-o base (Phi-1.5 LLM with omni-attention + MAGVIT-v2 image
tokenizer + the Phi text tokenizer with Show-o's specials) plus, optionally, one learned concept
(``concept``): its ``<name>`` / ``<token_i>`` rows live between the specials and the image codes.

Sizes:

* ``show-o-512``: ``showlab/show-o-512x512`` (configs/showo_demo_512x512.yaml of
  arctanxarc/UniCTokens): Phi-1.5 (2048 wide, 24 layers), vocabulary 58498, 512 px images ->
  32 x 32 = 1024 MAGVIT-v2 codes of 8192, text block 128 tokens. Nothing is downloaded to build it;
  ``zoo.load("show-o-512")`` downloads the official weights.
* ``tiny``: a CPU-sized model of the same shape: Phi 64 wide / 2 layers, a word-level text
  vocabulary of the shapes world (~200 words), a MAGVIT-v2 of 16 channels, 32 px images -> 4 x 4
  codes of 64 (6-bit LFQ).
* ``shapes``: the demo base for the shapes world (64 px -> 8 x 8 codes of 256), small enough to
  pretrain on a CPU in minutes.
"""
from __future__ import annotations

import copy

from zoo.config import merge
from zoo.models.configs import MAGVITV2_CONFIG, PHI_1_5

#: The concept a model carries (empty name = none). ``tokens``: ``<token_i>`` rows added by each
#: stage so far (official: [16], [16, 8], [16, 8, 8]); ``trainable``: indices into the concept rows
#: (0 = ``<name>``, i + 1 = ``<token_i>``) that train (null = all).
NO_CONCEPT = {"name": "", "class_word": "", "tokens": [], "trainable": None, "kind": "object"}


#: The tiny/shapes text vocabulary: shapes-world words (colours, shapes, textures, backgrounds, plurals,
#: class words), the chat template's words and the answers; ids follow this order after <|endoftext|> and <unk>.
SHAPES_WORDS: tuple[str, ...] = (
    '!', '"', "'", '(', ')', ',', '-', '.', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '>',
    '?', 'A', 'ASSISTANT', 'An', 'Are', 'Describe', 'Does', 'How', 'Is', 'No', 'The', 'USER', 'What', 'Yes', '_',
    'a', 'about', 'above', 'an', 'and', 'are', 'background', 'beige', 'below', 'bigger', 'blue', 'can', 'charcoal',
    'checkered', 'circle', 'circles', 'color', 'colour', 'cross', 'crosses', 'cyan', 'describe', 'detail',
    'diamond', 'diamonds', 'do', 'does', 'dot', 'dots', 'dotted', 'face', 'five', 'four', 'gray', 'green', 'has',
    'have', 'how', 'image', 'in', 'is', 'it', 'its', 'larger', 'left', 'many', 'mark', 'me', 'middle', 'no', 'none',
    'not', 'object', 'objects', 'of', 'on', 'one', 'orange', 'outline', 'pattern', 'photo', 'picture', 'pink',
    'plain', 'purple', 'red', 'right', 'ring', 'rings', 'scene', 'see', 'shape', 'six', 'smaller', 'spotted',
    'square', 'squares', 'star', 'stars', 'striped', 'stripes', 'tell', 'texture', 'than', 'that', 'the', 'there',
    'thing', 'things', 'this', 'three', 'to', 'top', 'triangle', 'triangles', 'two', 'under', 'what', 'where',
    'which', 'white', 'who', 'with', 'without', 'yellow', 'yes', 'you', '|',
)


DEFAULT_CONFIG: dict = {
    "llm": dict(PHI_1_5),
    # text tokens of the LLM's tokenizer before [PAD] (Phi-1.5: 50295)
    "llm_vocab_size": 50295,
    "codebook_size": 8192,
    "num_vq_tokens": 1024,
    "image_size": 512,
    # text block of text-to-image sequences (dataset.preprocessing.max_seq_length)
    "max_text_len": 128,
    "vq": copy.deepcopy(MAGVITV2_CONFIG),
    # where the official loader finds the image tokenizer's weights (a local file/folder wins)
    "vq_weights": {"repo_id": "showlab/magvitv2", "filename": "pytorch_model.bin", "revision": None, "path": None},
    # where the text tokenizer comes from: a Hub repo (downloaded on first use) or a word list
    "tokenizer": {"repo_id": "microsoft/phi-1_5", "revision": None, "words": []},
    "concept": dict(NO_CONCEPT),
    # a named base (card, hf-hub:org/name, folder) the concept rows apply to; set = adapter layout
    "base": None,
    # optional LoRA on the LLM (official option: r 8, alpha 16 on fc1, k/v/q_proj, fc2; 0 = off)
    "lora": {"r": 0, "alpha": 16, "dropout": 0.0, "target_modules": ["fc1", "k_proj", "v_proj", "q_proj", "fc2"]},
}

_WORDS = list(SHAPES_WORDS)

SIZES: dict[str, dict] = {
    "show-o-512": {},
    "tiny": {
        "llm": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                "max_position_embeddings": 256},
        "llm_vocab_size": len(_WORDS) + 2,  # + <|endoftext|> and <unk>
        "codebook_size": 64,
        "num_vq_tokens": 16,
        "image_size": 32,
        "max_text_len": 32,
        "vq": {"encoder": {"ch": 16, "ch_mult": [1, 1, 2, 2], "num_res_blocks": [1, 1, 1, 1], "attn_resolutions": [],
                           "resolution": 32, "z_channels": 6},
               "decoder": {"ch": 16, "ch_mult": [1, 1, 2, 2], "num_res_blocks": [1, 1, 1, 1], "attn_resolutions": [],
                           "resolution": 32, "z_channels": 6},
               "codebook_dim": 6, "norm_groups": 8},
        "tokenizer": {"repo_id": None, "words": _WORDS},
    },
    "shapes": {
        "llm": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 384,
                "max_position_embeddings": 256},
        "llm_vocab_size": len(_WORDS) + 2,
        "codebook_size": 256,
        "num_vq_tokens": 64,
        "image_size": 64,
        "max_text_len": 48,
        "vq": {"encoder": {"ch": 16, "ch_mult": [1, 2, 2, 4], "num_res_blocks": [1, 1, 1, 1], "attn_resolutions": [],
                           "resolution": 64, "z_channels": 8},
               "decoder": {"ch": 16, "ch_mult": [1, 2, 2, 4], "num_res_blocks": [1, 1, 1, 1], "attn_resolutions": [],
                           "resolution": 64, "z_channels": 8},
               "codebook_dim": 8, "norm_groups": 8},
        "tokenizer": {"repo_id": None, "words": _WORDS},
    },
}


def build(config: dict):
    """A UniCTokens model from a complete config (registry contract).

    With ``base`` set, the base model is loaded (``zoo.load``) and the concept rows are inserted
    into it; otherwise the whole model is built with random weights.
    """
    from zoo.multimodal.unictokens.model import UniCTokensModel

    return UniCTokensModel.from_config(merge(DEFAULT_CONFIG, config))


__all__ = ["DEFAULT_CONFIG", "SIZES", "NO_CONCEPT", "SHAPES_WORDS", "build"]
