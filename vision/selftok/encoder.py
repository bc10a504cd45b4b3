"""Selftok's Q-Former-style encoder (``QformerEncoder`` with ``qformer_mode='dual'``).

K learned query tokens read a VAE latent through a stack of ``DualBlock``s
(selftok-team/SelftokTokenizer:mimogpt/models/selftok/{models_ours,modules}.py):

* the latent is patch-embedded (``x_embedder``, patch 2) plus a fixed 2-D sin-cos table
  (``pos_embed``, a ``pos_embed_max_size``² grid, centre-cropped) and runs through plain
  pre-norm ViT blocks (``norm1``/``attn``/``norm2``/``mlp``; LayerNorm without affine, eps 1e-6);
* the queries attend over [image keys/values from ``attn.to_query_kv``, their own from
  ``attn.query_linear``] ("Uni": information flows image -> queries only; the image tokens
  never see the queries); queries attend to each other without a mask;
* every query token gets its own adaLN modulation from its position
  ``t_embedder(1000 + 8 k)`` -> ``adaLN_modulation`` (shift, scale, gate for attention, then for
  ``q_mlp``), on ``q_norm1``/``q_norm2`` (LayerNorm without affine);
* after the blocks: ``quantizer`` (cosine VQ) and ``final_layer_norm3`` (the post-norm on the
  16-d codes). ``final_layer_norm`` / ``final_layer_norm2`` exist in the checkpoints and are unused.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.models.embeddings import TimestepEmbedder, crop_pos_embed, sincos_2d
from zoo.models.mmdit import _mlp, _patch_embed, token_positions
from zoo.models.vector_quantize import VectorQuantize
from zoo.nn import attention

__all__ = ["DualAttention", "DualBlock", "QformerEncoder"]


class DualAttention(nn.Module):
    """Image self-attention (``qkv``/``proj``) and query attention over image + query keys
    (``to_query_kv``, ``query_linear``/``query_proj``). Returns (image update, query update)."""

    def __init__(self, dim: int, query_dim: int, num_heads: int, query_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads or query_dim % query_heads:
            raise ValueError(f"widths {dim}/{query_dim} must be divisible by heads {num_heads}/{query_heads}")
        self.num_heads, self.query_heads = num_heads, query_heads
        self.head_dim, self.query_head_dim = dim // num_heads, query_dim // query_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.to_query_kv = nn.Linear(dim, query_dim * 2, bias=qkv_bias)
        self.query_linear = nn.Linear(query_dim, query_dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.query_proj = nn.Linear(query_dim, query_dim)

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n, _ = x.shape
        k_queries = query.shape[1]
        q, k, v = self.qkv(x).reshape(batch, n, 3, self.num_heads, self.head_dim).unbind(2)
        x_out = attention(q, k, v)
        image_k, image_v = self.to_query_kv(x).reshape(batch, n, 2, self.query_heads, self.query_head_dim).unbind(2)
        qq, qk, qv = self.query_linear(query).reshape(batch, k_queries, 3, self.query_heads,
                                                      self.query_head_dim).unbind(2)
        query_out = attention(qq, torch.cat([image_k, qk], dim=1), torch.cat([image_v, qv], dim=1))
        return self.proj(x_out.flatten(2)), self.query_proj(query_out.flatten(2))


class DualBlock(nn.Module):
    """One encoder layer: a ViT block on the image tokens, an adaLN-modulated block on the queries."""

    def __init__(self, hidden_size: int, num_heads: int, query_dim: int, query_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = DualAttention(hidden_size, query_dim, num_heads, query_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = _mlp(hidden_size, mlp_ratio)
        self.q_norm1 = nn.LayerNorm(query_dim, elementwise_affine=False, eps=1e-6)
        self.q_norm2 = nn.LayerNorm(query_dim, elementwise_affine=False, eps=1e-6)
        self.q_mlp = _mlp(query_dim, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(query_dim, 6 * query_dim))
        self.t_embedder = TimestepEmbedder(query_dim)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def modulation(self, num_queries: int) -> tuple[torch.Tensor, ...]:
        """Per-query adaLN chunks [K, query_dim] (shift, scale, gate; shift, scale, gate), from positions only."""
        positions = token_positions(num_queries, device=self.adaLN_modulation[1].weight.device)
        return self.adaLN_modulation(self.t_embedder(positions)).chunk(6, dim=1)

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(q.shape[1])
        x_attn, q_attn = self.attn(self.norm1(x), self.q_norm1(q) * (1 + scale_msa) + shift_msa)
        x = x + x_attn
        x = x + self.mlp(self.norm2(x))
        q = q + gate_msa * q_attn
        q = q + gate_mlp * self.q_mlp(self.q_norm2(q) * (1 + scale_mlp) + shift_mlp)
        return x, q


class QformerEncoder(nn.Module):
    """Latent [B, C, H, W] -> K quantized token vectors [B, K, out_dim] and their code ids [B, K].

    Args:
        num_tokens: K queries. in_channels: latent channels. patch_size, hidden_size, depth,
        num_heads: the image stream; query_dim, query_heads: the query stream;
        pos_embed_max_size: side of the position table (2 x latent size as released);
        out_dim: width of the tokens handed to the decoder (``final_layer_norm3``);
        quantizer: keyword arguments of :class:`zoo.models.vector_quantize.VectorQuantize`.
    """

    def __init__(self, *, num_tokens: int, in_channels: int = 16, patch_size: int = 2, hidden_size: int = 64,
                 depth: int = 16, num_heads: int = 4, query_dim: int = 512, query_heads: int = 8,
                 mlp_ratio: float = 4.0, pos_embed_max_size: int = 64, out_dim: int = 16, quantizer: dict):
        super().__init__()
        self.num_tokens, self.patch_size, self.hidden_size = int(num_tokens), int(patch_size), int(hidden_size)
        self.pos_embed_max_size = int(pos_embed_max_size)
        code_dim = int(quantizer["codebook_dim"])
        self.x_embedder = _patch_embed(in_channels, hidden_size, patch_size)
        self.pos_embed = nn.Parameter(sincos_2d(hidden_size, self.pos_embed_max_size)[None], requires_grad=False)
        self.blocks = nn.ModuleList([DualBlock(hidden_size, num_heads, query_dim, query_heads, mlp_ratio)
                                     for _ in range(depth)])
        # present in the released checkpoints, never applied (pre_norm=False; LN2 is a leftover)
        self.final_layer_norm = nn.LayerNorm(query_dim, eps=1e-6).requires_grad_(False)
        self.final_layer_norm2 = nn.LayerNorm(code_dim, eps=1e-6).requires_grad_(False)
        self.final_layer_norm3 = nn.LayerNorm(out_dim, eps=1e-6)
        self.quantizer = VectorQuantize(dim=query_dim, output_dim=out_dim, **quantizer)
        self.query_tokens = nn.Parameter(torch.randn(1, self.num_tokens, query_dim) * 0.02)
        # the release xavier-initialises the patch embedding and the quantizer's projection (models_ours.py)
        weight = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if isinstance(self.quantizer.project_in, nn.Linear):
            nn.init.xavier_uniform_(self.quantizer.project_in.weight)
            nn.init.zeros_(self.quantizer.project_in.bias)

    def features(self, latents: torch.Tensor) -> torch.Tensor:
        """The query tokens after the blocks, before quantization: [B, K, query_dim]."""
        if latents.dim() != 4:
            raise ValueError(f"latents must be [B, C, H, W], got {tuple(latents.shape)}")
        height, width = latents.shape[-2] // self.patch_size, latents.shape[-1] // self.patch_size
        latents = latents.to(self.x_embedder.proj.weight.dtype)
        x = self.x_embedder(latents) + crop_pos_embed(self.pos_embed, self.pos_embed_max_size, height, width).to(
            latents.dtype)
        q = self.query_tokens.expand(latents.shape[0], -1, -1)
        for block in self.blocks:
            x, q = block(x, q)
        return q

    def forward(self, latents: torch.Tensor):
        """-> (tokens [B, K, out_dim] after ``final_layer_norm3``, ids [B, K], quantizer loss, logs)."""
        quantized, ids, loss, logs = self.quantizer(self.features(latents))  # float32, whatever the weights
        return self.final_layer_norm3(quantized.to(self.final_layer_norm3.weight.dtype)), ids, loss, logs

    def tokens_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Decoder input for code ids [B, K]: the codes through ``final_layer_norm3``, [B, K, out_dim]."""
        return self.final_layer_norm3(self.quantizer.get_output_from_indices(ids))
