"""Architecture constants of the shared blocks, importable without torch.

Family builders take their default configs from here, so that ``zoo list``, ``zoo info`` and
``zoo --help`` (which read the families' sizes) never import torch.
"""

# facebook/hubert-base-ls960 as transformers writes it (its config.json on the Hub; transformers'
# HubertConfig field names): the encoder of the speech families' base sizes, hard-coded so that
# building one never downloads a config.
HUBERT_BASE_ENCODER = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "conv_bias": False,
    "feat_extract_norm": "group",
    "feat_proj_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "layer_norm_eps": 1e-5,
    "do_stable_layer_norm": False,
    "mask_time_prob": 0.05,
    "layerdrop": 0.1,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "feat_proj_dropout": 0.1,
    # The rest of that config.json's HubertConfig fields, at its values (transformers' defaults too): a
    # converted transformers folder keeps them, so the speech families' configs must know them.
    "initializer_range": 0.02,
    "feat_extract_activation": "gelu",
    "conv_pos_batch_norm": False,
    "apply_spec_augment": True,
    "mask_time_length": 10,
    "mask_time_min_masks": 2,
    "mask_feature_prob": 0.0,
    "mask_feature_length": 10,
    "mask_feature_min_masks": 0,
}


# The CPU-test width of that encoder: the same conv strides (so still 50 Hz frames, 400-sample receptive
# field) with 2 layers of width 64; what the speech families' ``tiny`` sizes merge over HUBERT_BASE_ENCODER.
HUBERT_TINY_ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "layerdrop": 0.0,
}

# The speech families' ``tiny`` encoder (overrides of HUBERT_BASE_ENCODER): the same conv kernels and
# strides, so frames stay at 50 Hz, at a width that trains on a CPU in seconds.
HUBERT_TINY_ENCODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": [32] * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "layerdrop": 0.0,
}


# WeSpeaker's ECAPA-TDNN (wenet-e2e/wespeaker:wespeaker/models/ecapa_tdnn.py): the DINO recipes use the
# GLOB variants (global context attention) with emb_bn=True. ``tiny`` is a CPU-test width.
ECAPA_SIZES = {
    "ecapa512": {"channels": 512},
    "ecapa1024": {"channels": 1024},
    "tiny": {"channels": 32, "cat_out_channels": 96, "pool_bottleneck": 32, "se_bottleneck": 16},
}

ECAPA_DEFAULTS = {
    "channels": 512,
    "feat_dim": 80,
    "embed_dim": 192,
    "global_context_att": True,
    "emb_bn": True,
    "scale": 8,
    "se_bottleneck": 128,
    "pool_bottleneck": 128,
    # WeSpeaker hard-codes 512 * 3 for the 1x1 conv after the concatenation, whatever `channels` is.
    "cat_out_channels": 1536,
}

__all__ = ["ECAPA_DEFAULTS", "ECAPA_SIZES", "HUBERT_BASE_ENCODER", "HUBERT_TINY_ENCODER"]


# microsoft/phi-1_5's architecture (its config.json): the LLM of Show-o and UniCTokens.
PHI_1_5 = {
    "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32, "intermediate_size": 8192,
    "hidden_act": "gelu_new", "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "rope_theta": 10000.0,
    "partial_rotary_factor": 0.5, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0,
    "qk_layernorm": False, "tie_word_embeddings": False, "initializer_range": 0.02,
}

# showlab/magvitv2 as Show-o builds it: the defaults of the official VQGANEncoder / VQGANDecoder /
# LFQuantizer (showlab/Show-o:models/modeling_magvitv2.py): 16x downsampling, 13-bit lookup-free codes.
MAGVITV2_CONFIG = {
    "encoder": {"ch": 128, "ch_mult": [1, 2, 2, 4, 4], "num_res_blocks": [4, 3, 4, 3, 4], "attn_resolutions": [5],
                "resolution": 256, "in_channels": 3, "z_channels": 13, "dropout": 0.0},
    "decoder": {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": [4, 4, 3, 4, 3], "attn_resolutions": [5],
                "resolution": 256, "out_channels": 3, "z_channels": 13, "dropout": 0.0},
    "codebook_dim": 13,
    "norm_groups": 32,
    # lookup-free quantiser training losses (used only when training a tokenizer)
    "beta": 0.25,
    "commit_loss_multiplier": 0.1,
    "entropy_multiplier": 0.1,
}

# The FLUX.1 / BAGEL autoencoder (black-forest-labs/flux autoencoder.py ``AutoEncoderParams``: ch 128,
# ch_mult 1-2-4-4, 2 res blocks, 16 latent channels, scale 0.3611, shift 0.1159) as diffusers'
# ``AutoencoderKL`` arguments (zoo.models.flux_vae).
FLUX_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
