"""MAGVIT-v2 image tokenizer as Show-o uses it (``showlab/magvitv2``), with the official parameter names.

Architecture (showlab/Show-o:models/modeling_magvitv2.py, models/common_modules.py; Yu et al.,
"Language Model Beats Diffusion", arXiv 2310.05737, §3.1):

* a VQGAN-style convolutional encoder (``encoder.*``): ``conv_in``, per level ``down.{i}.block.{j}``
  ResNet blocks (GroupNorm + swish + 3x3 conv, a 1x1 ``nin_shortcut`` when the width changes) and a
  ``down.{i}.downsample`` stride-2 conv (pad right/bottom by one, no padding in the conv), a middle
  ``mid.block_1`` / ``mid.attn_1`` (single-head self-attention over all positions) / ``mid.block_2``,
  ``norm_out``, swish, ``conv_out`` to ``z_channels`` and a 1x1 ``quant_conv``;
* lookup-free quantisation (``quantize.*``): each of the ``codebook_dim`` channels is quantised to
  its sign (``> 0`` -> +1, else -1), so the code of a position is the integer whose bits, most
  significant first, are the positive channels; ``2 ** codebook_dim`` codes (13 bits = 8192);
* the mirrored decoder (``decoder.*``): ``post_quant_conv``, ``conv_in``, middle, per level
  ``up.{i}.block.{j}`` and ``up.{i}.upsample`` (nearest x2 then a 3x3 conv), ``norm_out``, ``conv_out``.

``showlab/magvitv2``'s weights load strictly into :class:`MAGVITv2` built from :data:`MAGVITV2_CONFIG`
(the official defaults: 256-px-trained, 16x downsampling, 13-bit codes); a 512 px image gives a
32 x 32 = 1024 token grid. Attention runs through ``zoo.nn.attention``.

Images are ``[B, 3, H, W]`` float in [-1, 1]; codes are ``LongTensor[B, (H/f) * (W/f)]`` in
row-major order, ``f = 2 ** (len(ch_mult) - 1)``.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError, ImageInputError
from zoo.models.configs import MAGVITV2_CONFIG as _CONFIG
from zoo.nn.attention import attention

#: The official configuration (torch-free copy in zoo.models.configs).
MAGVITV2_CONFIG: dict[str, Any] = _CONFIG


def swish(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)`` (SiLU), elementwise, same shape and dtype."""
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv3x3 twice with a residual; a 1x1 ``nin_shortcut`` when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W]`` -> ``[B, out_channels, H, W]``: two GroupNorm-swish-conv layers plus the
        (1x1-projected) input.
        """
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (1x1-conv q/k/v/proj_out), with a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Single-head self-attention over the ``H * W`` positions of ``[B, C, H, W]`` (through ``zoo.nn.attention``),
        added to the input; same shape.
        """
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(conv):  # [B, C, H, W] -> [B, HW, 1 head, C]
            return conv(normed).reshape(b, c, h * w).transpose(1, 2).unsqueeze(2)

        out = attention(tokens(self.q), tokens(self.k), tokens(self.v), scale=c ** -0.5)
        out = out.squeeze(2).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row/column at the bottom/right (taming-transformers' rule)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H // 2, W // 2]`` (H, W even)."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, 2H, 2W]``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: nn.ModuleList, attns: nn.ModuleList) -> nn.Module:
    module = nn.Module()
    module.block, module.attn = blocks, attns
    return module


class Encoder(nn.Module):
    """Images ``[B, in_channels, H, W]`` -> latents ``[B, z_channels, H/f, W/f]`` (after ``quant_conv``)."""

    def __init__(self, ch: int, ch_mult, num_res_blocks, attn_resolutions, resolution: int, in_channels: int,
                 z_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(ch_mult)
        current = resolution
        self.down = nn.ModuleList()
        for i in range(self.num_resolutions):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
            for _ in range(num_res_blocks[i]):
                blocks.append(ResnetBlock(block_in, block_out, groups, dropout))
                block_in = block_out
                if current in attn_resolutions:
                    attns.append(AttnBlock(block_in, groups))
            level = _level(blocks, attns)
            if i != self.num_resolutions - 1:
                level.downsample = Downsample(block_in)
                current //= 2
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups, dropout)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups, dropout)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``x`` ``[B, in_channels, H, W]`` (H, W multiples of the downsampling factor f) -> latents
        ``[B, z_channels, H/f, W/f]``.
        """
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = self.conv_out(swish(self.norm_out(h)))
        return self.quant_conv(h)


class Decoder(nn.Module):
    """Quantised latents ``[B, z_channels, h, w]`` -> images ``[B, out_channels, h*f, w*f]`` (unbounded)."""

    def __init__(self, ch: int, ch_mult, num_res_blocks, attn_resolutions, resolution: int, out_channels: int,
                 z_channels: int, dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        block_in = ch * ch_mult[-1]
        current = resolution // 2 ** (self.num_resolutions - 1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, groups, dropout)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, groups, dropout)
        levels = []
        for i in reversed(range(self.num_resolutions)):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i]
            for _ in range(num_res_blocks[i]):
                blocks.append(ResnetBlock(block_in, block_out, groups, dropout))
                block_in = block_out
                if current in attn_resolutions:
                    attns.append(AttnBlock(block_in, groups))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in)
                current *= 2
            levels.insert(0, level)  # up[i] is level i, as in the official module list
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(groups, block_in, eps=1e-6, affine=True)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``z`` ``[B, z_channels, h, w]`` -> images ``[B, out_channels, h*f, w*f]`` (unbounded; about [-1, 1]
        once trained).
        """
        h = self.conv_in(self.post_quant_conv(z))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i in reversed(range(self.num_resolutions)):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class LFQuantizer(nn.Module):
    """Lookup-free quantiser: sign per channel; code = bits of the positive channels, MSB first.

    Buffers (persistent, in the official checkpoint): ``embedding`` ``[2**d, d]`` (each code's
    +-1 vector) and ``power_vals`` ``[d]`` (``2**(d-1) ... 1``).
    """

    def __init__(self, codebook_dim: int, beta: float = 0.25, commit_loss_multiplier: float = 0.1,
                 entropy_multiplier: float = 0.1):
        super().__init__()
        self.codebook_dim = codebook_dim
        self.codebook_size = 2 ** codebook_dim
        self.beta, self.commit_loss_multiplier, self.entropy_multiplier = beta, commit_loss_multiplier, entropy_multiplier
        powers = 2 ** torch.arange(codebook_dim - 1, -1, -1)
        bits = (torch.arange(self.codebook_size)[:, None] // powers) % 2
        self.register_buffer("embedding", bits.float() * 2 - 1)
        self.register_buffer("power_vals", powers)

    def get_indices(self, z_q: torch.Tensor) -> torch.Tensor:
        """``[B, d, h, w]`` quantised (or raw) latents -> codes ``LongTensor[B, 1, h, w]``."""
        return (self.power_vals.reshape(1, -1, 1, 1) * (z_q > 0).float()).sum(1, keepdim=True).long()

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes ``LongTensor[B, h*w]`` -> quantised latents ``[B, d, h, w]`` (a square grid unless ``shape``)."""
        b, n = indices.shape
        h, w = shape if shape is not None else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise ConfigError(f"{n} image codes do not form a {h} x {w} grid; pass shape=(h, w).")
        if indices.min() < 0 or indices.max() >= self.codebook_size:
            raise ConfigError(f"image codes must lie in [0, {self.codebook_size}), got "
                              f"[{int(indices.min())}, {int(indices.max())}].")
        return self.embedding[indices.reshape(-1)].view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Quantise ``[B, d, h, w]`` with a straight-through gradient; returns ``z`` (quantised),
        ``quantizer_loss`` (commitment), ``entropy_loss`` (per-position minus batch entropy) and ``indices``."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.codebook_dim)
        signs = torch.where(flat > 0, torch.ones_like(flat), -torch.ones_like(flat))
        quantised = flat + (signs - flat).detach()
        # per-bit two-way distributions: logits -(z - 1)^2 and -(z + 1)^2
        logits = torch.stack([-(flat - 1).pow(2), -(flat + 1).pow(2)], dim=-1)
        probs = logits.softmax(-1)
        entropy = -(probs * logits.log_softmax(-1)).sum(-1).mean()
        mean_probs = probs.mean(0)
        mean_entropy = -(mean_probs * mean_probs.clamp_min(1e-30).log()).sum(-1).mean()
        commit = torch.mean((quantised.detach() - flat) ** 2) + self.beta * torch.mean((quantised - flat.detach()) ** 2)
        z_q = quantised.view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2).contiguous()
        return {"z": z_q, "quantizer_loss": commit * self.commit_loss_multiplier,
                "entropy_loss": (entropy - mean_entropy) * self.entropy_multiplier, "indices": self.get_indices(z_q)}


class MAGVITv2(nn.Module):
    """The MAGVIT-v2 tokenizer: ``encoder``, ``quantize`` (LFQ), ``decoder`` (official names).

    config: :data:`MAGVITV2_CONFIG`'s keys (``encoder``, ``decoder``, ``codebook_dim``, ``norm_groups``,
        loss weights). Raises ConfigError when a level's width is not a multiple of ``norm_groups`` or
        ``z_channels`` differs from ``codebook_dim``.
    """

    def __init__(self, config: dict | None = None):
        super().__init__()
        config = copy.deepcopy(config or MAGVITV2_CONFIG)
        self.config = config
        enc, dec, groups = config["encoder"], config["decoder"], int(config.get("norm_groups", 32))
        for part in (enc, dec):
            for mult in part["ch_mult"]:
                if (part["ch"] * mult) % groups:
                    raise ConfigError(f"MAGVIT-v2: width {part['ch'] * mult} is not a multiple of norm_groups={groups}.")
            if part["z_channels"] != config["codebook_dim"]:
                raise ConfigError(f"MAGVIT-v2: z_channels ({part['z_channels']}) must equal codebook_dim "
                                  f"({config['codebook_dim']}) for lookup-free quantisation.")
        if len(enc["ch_mult"]) != len(dec["ch_mult"]):
            raise ConfigError("MAGVIT-v2: encoder and decoder need the same number of levels (ch_mult lengths).")
        self.encoder = Encoder(enc["ch"], enc["ch_mult"], enc["num_res_blocks"], enc["attn_resolutions"],
                               enc["resolution"], enc.get("in_channels", 3), enc["z_channels"], enc.get("dropout", 0.0),
                               groups)
        self.decoder = Decoder(dec["ch"], dec["ch_mult"], dec["num_res_blocks"], dec["attn_resolutions"],
                               dec["resolution"], dec.get("out_channels", 3), dec["z_channels"], dec.get("dropout", 0.0),
                               groups)
        self.quantize = LFQuantizer(config["codebook_dim"], config.get("beta", 0.25),
                                    config.get("commit_loss_multiplier", 0.1), config.get("entropy_multiplier", 0.1))

    @property
    def codebook_size(self) -> int:
        """The number of codes, ``2 ** codebook_dim`` (lookup-free quantisation: 8192 for the 13-bit release)."""
        return self.quantize.codebook_size

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent side: ``2 ** (len(ch_mult) - 1)`` (16 for the release)."""
        return 2 ** (len(self.config["encoder"]["ch_mult"]) - 1)

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.encoder.conv_in.in_channels:
            raise ImageInputError(f"MAGVIT-v2 expects images [B, {self.encoder.conv_in.in_channels}, H, W] in [-1, 1], "
                                  f"got shape {tuple(pixel_values.shape)}.")
        f = self.downsample_factor
        if pixel_values.shape[2] % f or pixel_values.shape[3] % f:
            raise ImageInputError(f"MAGVIT-v2: image sides must be multiples of {f}, got "
                                  f"{pixel_values.shape[2]} x {pixel_values.shape[3]}.")

    def get_code(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] -> codes ``LongTensor[B, (H/f)*(W/f)]`` in ``[0, 2**d)``."""
        self._check_pixels(pixel_values)
        latents = self.encoder(pixel_values)
        return self.quantize.get_indices(latents).reshape(pixel_values.shape[0], -1)

    def decode_code(self, codes: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes ``LongTensor[B, h*w]`` -> images ``[B, 3, h*f, w*f]`` (about [-1, 1]; clamp before saving)."""
        return self.decoder(self.quantize.get_codebook_entry(codes, shape))

    def forward(self, pixel_values: torch.Tensor, quantize: bool = True) -> dict[str, torch.Tensor]:
        """Reconstruction pass for training: ``reconstruction``, ``indices [B, h*w]``, ``quantizer_loss``,
        ``entropy_loss``. ``quantize=False`` decodes ``tanh`` of the latents instead of their signs (a
        continuous warm-up that keeps a small tokenizer from collapsing onto a few codes early on); the
        losses are then zero and ``indices`` are still the sign codes."""
        self._check_pixels(pixel_values)
        latents = self.encoder(pixel_values)
        if not quantize:
            zero = latents.new_zeros(())
            return {"reconstruction": self.decoder(torch.tanh(latents)),
                    "indices": self.quantize.get_indices(latents).flatten(1), "quantizer_loss": zero,
                    "entropy_loss": zero}
        quantised = self.quantize(latents)
        return {"reconstruction": self.decoder(quantised["z"]), "indices": quantised["indices"].flatten(1),
                "quantizer_loss": quantised["quantizer_loss"], "entropy_loss": quantised["entropy_loss"]}


def magvitv2_key(official_key: str) -> str:
    """Official ``showlab/magvitv2`` key -> key inside :class:`MAGVITv2` (the names are the same)."""
    return official_key


__all__ = ["MAGVITV2_CONFIG", "MAGVITv2", "Encoder", "Decoder", "LFQuantizer", "ResnetBlock", "AttnBlock",
           "magvitv2_key"]
