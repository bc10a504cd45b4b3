"""The SD3 VAE Selftok tokenizes: diffusers ``AutoencoderKL`` with 16 latent channels (8x down).

Latents are used after SD3's ``process_in`` (``(z - 0.0609) * 1.5305``) and decoded after
``process_out`` (selftok-team/SelftokTokenizer:mimogpt/models/selftok/sd3/sd3_impls.py
``SD3LatentFormat``); encoding takes the posterior mode (SelftokPipeline.py ``encoding``).

The real weights live in the gated repo ``stabilityai/stable-diffusion-3-medium-diffusers``
(subfolder ``vae``): accept the SD3 licence on its Hub page, then pass ``token=`` or set
``HF_TOKEN``. A VAE given as a diffusers config instead (``vae.config``, e.g. the tiny test
VAE) is built here and its weights travel with the model.
"""
from __future__ import annotations

import json
import logging

import torch

from zoo.errors import WeightsNotAvailableError

logger = logging.getLogger("zoo.selftok")

__all__ = ["SHIFT_FACTOR", "SCALE_FACTOR", "process_in", "process_out", "SD3_VAE_CONFIG", "TINY_VAE_CONFIG",
           "build_vae", "load_hub_vae", "SD3_REPO"]

from zoo.vision.selftok.builder import SCALE_FACTOR, SD3_REPO, SD3_VAE_CONFIG, SHIFT_FACTOR, TINY_VAE_CONFIG


def process_in(latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the scale Selftok works in: ``(z - 0.0609) * 1.5305``."""
    return (latents - SHIFT_FACTOR) * SCALE_FACTOR


def process_out(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`process_in`."""
    return latents / SCALE_FACTOR + SHIFT_FACTOR


def build_vae(config: dict):
    """A random-init diffusers ``AutoencoderKL`` from a config dict, attention through ``zoo.nn.attention``
    (``zoo.models.flux_vae.build_vae``; its ConfigError names ``selftok vae.config``)."""
    from zoo.models.flux_vae import build_vae as build_autoencoder

    return build_autoencoder(config, source="selftok vae.config")


def load_hub_vae(repo_id: str = SD3_REPO, subfolder: str = "vae", *, revision: str | None = None, token=None,
                 cache_dir=None, local_files_only: bool | None = None):
    """Download ``{subfolder}/config.json`` and ``{subfolder}/diffusion_pytorch_model.safetensors`` and load
    them strictly. Raises :class:`WeightsNotAvailableError` (accept the licence, pass a token) when refused."""
    from zoo.hub import download_file, load_state_dict_strict, read_safetensors

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    kwargs = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    try:
        config_path = download_file(repo_id, f"{prefix}config.json", **kwargs)
        weights_path = download_file(repo_id, f"{prefix}diffusion_pytorch_model.safetensors", **kwargs)
    except WeightsNotAvailableError as err:
        raise WeightsNotAvailableError(
            f"Selftok needs the SD3 VAE from {repo_id} (subfolder {subfolder!r}) to turn images into latents and "
            "back. It is a gated repo: log in to huggingface.co, accept the Stability AI licence on the repo's page, "
            "then pass token=... or set HF_TOKEN (or `hf auth login`). Without it you can still use "
            f"encode_latents/decode_latents on precomputed latents. ({err})") from err
    with open(config_path, encoding="utf-8") as handle:
        raw = json.load(handle)
    from diffusers import AutoencoderKL

    import inspect

    allowed = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    config = {k: v for k, v in raw.items() if k in allowed and not k.startswith("_")}
    vae = build_vae(config)
    load_state_dict_strict(vae, read_safetensors(weights_path, f"{repo_id}/{prefix}diffusion_pytorch_model.safetensors",
                                      cached=True), f"{repo_id}/{prefix}diffusion_pytorch_model.safetensors")
    logger.info("loaded the VAE from %s/%s", repo_id, subfolder)
    return vae.eval()
