"""Selftok configs and named sizes.

``512`` is the released 512-token tokenizer at 256 px (configs/res256/256-eval.yml and
model_zoo.py of selftok-team/SelftokTokenizer): encoder ``Enc-Qformer-Uni-XL/2`` (image stream
64 wide, 16 blocks, 4 heads; 512 queries 512 wide, 8 heads), codebook 32768 x 16, decoder
``MMDiT_XL`` (depth 24, so 1536 wide with 24 heads), DiTi stages 200/400/600/800/1000 with
192/184/72/48/16 tokens. ``512-renderer`` swaps in the one-step renderer
(configs/renderer/renderer-eval.yml: one stage of 512 tokens, no context dropout, context rows
that see only the tokens). ``tiny`` keeps every structural choice at CPU size: 64 px images,
16-channel 8x8 latents, 16 tokens, codebook 64 x 8, a 2-block encoder and a 2-block MMDiT
(128 wide, 2 heads), with a small random VAE of the SD3 VAE's layout.
"""
from __future__ import annotations

from zoo.config import merge, sized_config

# SD3's latent format (sd3_impls.py SD3LatentFormat) and VAE (torch-free constants; the VAE itself is in vae.py).
SHIFT_FACTOR = 0.0609
SCALE_FACTOR = 1.5305
SD3_REPO = "stabilityai/stable-diffusion-3-medium-diffusers"

# stabilityai/stable-diffusion-3-medium-diffusers:vae/config.json (the architecture; weights from the Hub).
SD3_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu", "norm_num_groups": 32,
    "sample_size": 1024, "scaling_factor": SCALE_FACTOR, "shift_factor": SHIFT_FACTOR,
    "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True,
}

# Same layout at a width that runs on a CPU in milliseconds: 64 px -> 16 x 8 x 8.
TINY_VAE_CONFIG = {
    **SD3_VAE_CONFIG, "block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
    "sample_size": 64,
}

DEFAULT_CONFIG = {
    "image_size": 256,
    "latent_channels": 16,
    "vae_downsample": 8,
    "num_tokens": 512,
    "stages": [200, 400, 600, 800, 1000],
    "k_per_stage": [192, 184, 72, 48, 16],
    "token_dim": 16,            # encoder_hidden_size: width of final_layer_norm3 and of the decoder's context
    "t2k": 1.0,                 # training: visible tokens from clamp(t2k * t) (image_tokenizer.py)
    "sampling_shift": 1.0,      # decoding timestep shift (the release decodes with 1.0)
    "encoder": {
        "patch_size": 2, "hidden_size": 64, "depth": 16, "num_heads": 4,
        "query_dim": 512, "query_heads": 8, "mlp_ratio": 4.0,
        "pos_embed_max_size": None,   # None: 2 x latent size (enable_enc_variable_size)
    },
    "quantizer": {
        "codebook_size": 32768, "code_dim": 16, "decay": 0.99, "kmeans_iters": 10,
        "dead_code_threshold": 0.2, "reset_cluster_size": 0.2,   # x B*K*world/C
        "w_commit": 1.0, "w_diversity": 1.0, "ema_entropy_ratio": 0.8, "reg": [0.1, 0.3],
        "smart_react": True, "entropy_groups": 64, "continuous": False,
    },
    "decoder": {
        "type": "diffusion",          # diffusion (MMDiT_XL) | renderer (MMDiT_XL_Renderer)
        "depth": 24, "hidden_size": None, "num_heads": None,   # None: 64 x depth wide, depth heads
        "patch_size": 2, "mlp_ratio": 4.0, "pos_embed_max_size": 192,
        "class_dropout_prob": 0.1, "context_see_xt": True, "context_modulation": "position",
        "repeat_mask_token": True,
    },
    "vae": {"repo_id": SD3_REPO, "subfolder": "vae", "revision": None, "config": None},
    "use_ema": True,                # official loader: take the decoder from 'ema_state_dict' when present
}

_RENDERER = {
    "stages": [1000],
    "decoder": {"type": "renderer", "class_dropout_prob": 0.0, "context_see_xt": False},
}

_TINY = {
    "image_size": 64,
    "num_tokens": 16,
    "stages": [500, 1000],
    "k_per_stage": [12, 4],
    "token_dim": 8,
    "encoder": {"hidden_size": 32, "depth": 2, "num_heads": 2, "query_dim": 64, "query_heads": 4},
    "quantizer": {"codebook_size": 64, "code_dim": 8},
    "decoder": {"depth": 2, "pos_embed_max_size": 8},
    "vae": {"repo_id": None, "subfolder": None, "config": TINY_VAE_CONFIG},
}

SIZES = {
    # first = the default of `zoo convert selftok`
    "512": {},
    "512-renderer": merge(_RENDERER, {"k_per_stage": [512]}),
    # The 1024-token release has no config; its renderer needs none beyond K (derived from the checkpoint's
    # shapes by the loader): all 1024 tokens are always visible to it.
    "1024-renderer": merge(_RENDERER, {"num_tokens": 1024, "k_per_stage": [1024]}),
    "tiny": _TINY,
    "tiny-renderer": merge(_TINY, merge(_RENDERER, {"k_per_stage": [16]})),
}


def make_config(size: str = "512", **overrides) -> dict:
    """The full config of ``size`` with nested ``overrides`` merged in."""
    return sized_config("Selftok", DEFAULT_CONFIG, SIZES, size, overrides)


def build(config: dict):
    """A random-init ``SelftokModel`` from a (possibly partial) config (registry contract)."""
    from zoo.vision.selftok.model import SelftokModel

    return SelftokModel(merge(DEFAULT_CONFIG, config))
