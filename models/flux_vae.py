"""The FLUX autoencoder (``ae.safetensors``) as a diffusers ``AutoencoderKL``.

BAGEL and FLUX.1 share one VAE: 16 latent channels, 8x down-sampling, latents scaled as
``z = 0.3611 * (sample - 0.1159)`` (black-forest-labs/flux:src/flux/modules/autoencoder.py;
ByteDance-Seed/Bagel:modeling/autoencoder.py). The released file uses the BFL module names
(``encoder.down.0.block.0.norm1.weight`` ...); :func:`bfl_to_diffusers_key` maps each to diffusers'
name, and the mid-block attention's 1x1 convolutions become linear weights
(:func:`convert_bfl_state_dict`). Encoding **samples** the posterior, as BAGEL's ``DiagonalGaussian``
does (``sample=True``) in training and in its image-editing context; ``mode=True`` takes the mean.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from zoo.errors import CheckpointKeysError, ConfigError
from zoo.models.configs import FLUX_VAE_CONFIG

__all__ = ["FLUX_VAE_CONFIG", "build_vae", "bfl_to_diffusers_key", "convert_bfl_state_dict", "encode", "decode"]



def build_vae(config: Mapping, *, source: str = "vae config"):
    """A random-init diffusers ``AutoencoderKL`` from ``config`` (its keyword arguments), attention through
    ``zoo.nn.attention``. Raises ConfigError naming ``source`` (where the config came from) on an argument
    ``AutoencoderKL`` does not take."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL(**dict(config))
    except TypeError as err:
        raise ConfigError(f"{source} has an argument AutoencoderKL does not take: {err}") from err
    from zoo.models.diffusers_attention import use_zoo_attention

    use_zoo_attention(vae)
    return vae


_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_END = {"norm_out": "conv_norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}


def bfl_to_diffusers_key(key: str, num_levels: int = 4) -> str | None:
    """One BFL autoencoder key -> its diffusers ``AutoencoderKL`` key (None: not a weight of the VAE).

    num_levels: resolution levels (``len(ch_mult)``); the decoder's ``up.{i}`` is diffusers'
    ``up_blocks.{num_levels - 1 - i}``.
    """
    part, _, name = key.partition(".")
    if part not in ("encoder", "decoder"):
        return None
    m = re.fullmatch(r"(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", name)
    if m:
        kind, level, block, module, tensor = m.groups()
        if module not in _RESNET:
            return None
        level = int(level) if kind == "down" else num_levels - 1 - int(level)
        return f"{part}.{kind}_blocks.{level}.resnets.{block}.{_RESNET[module]}.{tensor}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(weight|bias)", name)
    if m:
        kind, level, which, tensor = m.groups()
        level = int(level) if kind == "down" else num_levels - 1 - int(level)
        return f"{part}.{kind}_blocks.{level}.{which}rs.0.conv.{tensor}"
    m = re.fullmatch(r"mid\.block_([12])\.(\w+)\.(weight|bias)", name)
    if m:
        index, module, tensor = m.groups()
        return f"{part}.mid_block.resnets.{int(index) - 1}.{_RESNET[module]}.{tensor}" if module in _RESNET else None
    m = re.fullmatch(r"mid\.attn_1\.(\w+)\.(weight|bias)", name)
    if m:
        module, tensor = m.groups()
        return f"{part}.mid_block.attentions.0.{_ATTN[module]}.{tensor}" if module in _ATTN else None
    m = re.fullmatch(r"(norm_out|conv_in|conv_out)\.(weight|bias)", name)
    if m:
        return f"{part}.{_END[m.group(1)]}.{m.group(2)}"
    return None


def convert_bfl_state_dict(state: Mapping[str, torch.Tensor], source: str, num_levels: int = 4,
                           prefix: str = "") -> dict[str, torch.Tensor]:
    """A BFL ``ae.safetensors`` state dict in diffusers names (under ``prefix``), 1x1 attention convs as
    linear weights. Raises CheckpointKeysError listing every key that is not a BFL autoencoder weight."""
    out, unknown = {}, []
    for key, value in state.items():
        new = bfl_to_diffusers_key(key, num_levels)
        if new is None:
            unknown.append(key)
            continue
        if ".mid_block.attentions.0.to_" in new and new.endswith(".weight") and value.dim() == 4:
            value = value[:, :, 0, 0]
        out[prefix + new] = value
    if unknown:
        raise CheckpointKeysError(source, unexpected=sorted(unknown), hint=(
            "  These are not weights of the FLUX/BAGEL autoencoder (ae.safetensors, BFL module names)."))
    return out


def encode(vae, images: torch.Tensor, *, mode: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> scaled latents ``[B, C, H/8, W/8]``: ``scale * (z - shift)``,
    ``z`` sampled from the posterior (its mean when ``mode``)."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    z = dist.mode() if mode else dist.sample(generator=generator)
    cfg = vae.config
    return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``[B, C, h, w]`` -> images ``[B, 3, 8h, 8w]`` (about [-1, 1], not clamped)."""
    cfg = vae.config
    z = latents.to(vae.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
    return vae.decode(z).sample
