"""Sinusoidal embeddings shared by diffusion transformers.

Two conventions live side by side in DiT-family code and must not be mixed up:

* ``timestep_embedding`` orders features **[cos, sin]** (GLIDE / DiT ``TimestepEmbedder``);
* the fixed position tables (``sincos_1d``, ``sincos_2d``) order them **[sin, cos]**
  (MAE ``get_1d_sincos_pos_embed_from_grid``), computed in float64 and stored as float32.

``TimestepEmbedder`` and ``VectorEmbedder`` keep the parameter names of the SD3 reference
MMDiT (``mlp.0``, ``mlp.2``) so official checkpoints load without renaming.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["timestep_embedding", "TimestepEmbedder", "VectorEmbedder", "sincos_1d", "sincos_2d", "crop_pos_embed"]


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of scalar times ``t`` [N] (any real values) -> float32 [N, dim], ordered [cos, sin].

    Frequencies ``exp(-ln(max_period) * i / (dim // 2))``, i = 0 .. dim//2 - 1, computed in float32;
    an odd ``dim`` gets a trailing zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs.to(t.device)[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """``mlp(timestep_embedding(t))``: Linear(freq_dim, hidden) -> SiLU -> Linear(hidden, hidden).

    Input ``t`` [N] (float or integer); output [N, hidden] in the dtype of ``mlp``'s weights
    (or of autocast).
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` [N] -> [N, hidden]: ``mlp(timestep_embedding(t))`` in the dtype of ``mlp``'s weights."""
        features = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class VectorEmbedder(nn.Module):
    """Linear(in, hidden) -> SiLU -> Linear(hidden, hidden) on a flat vector [N, in] (SD3's pooled-text embedder)."""

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [N, input_dim] -> [N, hidden]."""
        return self.mlp(x)


def sincos_1d(dim: int, positions) -> torch.Tensor:
    """Fixed 1-D sin-cos table: float32 [M, dim] for positions [M], ordered [sin, cos].

    ``omega_i = 10000 ** (-i / (dim / 2))``; the products and sines run in float64 (as MAE's numpy
    helper) before the cast to float32. ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"sin-cos position tables need an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    positions = torch.as_tensor(positions).reshape(-1).to(torch.float64)
    out = positions[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table for a ``grid_size`` x ``grid_size`` grid: float32 [grid_size**2, dim].

    Rows run over the grid row-major (row i, column j -> index i * grid_size + j). The first
    ``dim / 2`` features encode the column j, the last ``dim / 2`` the row i (MAE's meshgrid
    puts the width coordinate first). ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos tables need a width divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def crop_pos_embed(table: torch.Tensor, max_size: int, height: int, width: int) -> torch.Tensor:
    """The centred ``height`` x ``width`` window of a [1, max_size**2, D] position table -> [1, height*width, D].

    The window starts at ``(max_size - height) // 2`` / ``(max_size - width) // 2`` (SD3's
    ``cropped_pos_embed``). Raises ValueError when the grid is larger than the table.
    """
    if height > max_size or width > max_size:
        raise ValueError(f"a {height}x{width} patch grid does not fit the {max_size}x{max_size} position table; "
                         "use a smaller input or a larger pos_embed_max_size")
    top, left = (max_size - height) // 2, (max_size - width) // 2
    grid = table.reshape(1, max_size, max_size, table.shape[-1])
    return grid[:, top:top + height, left:left + width, :].reshape(1, height * width, table.shape[-1])
