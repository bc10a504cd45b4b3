"""MMDiT (SD3's multimodal diffusion transformer) with per-token visibility masks.

The module layout and parameter names are those of the SD3 reference implementation as
Selftok extends it (selftok-team/SelftokTokenizer:mimogpt/models/selftok/sd3/mmdit.py), so
its checkpoints load without renaming:

* ``x_embedder`` (patch embedding of the noisy latent), ``pos_embed`` (fixed 2-D sin-cos
  buffer over a ``pos_embed_max_size``² grid, centre-cropped), ``t_embedder``, ``y_embedder``
  (present in the checkpoints, unused), ``context_embedder`` + ``context_pos_embed`` (1-D
  sin-cos at the token positions), ``joint_blocks.{i}.{context_block,x_block}``, ``final_layer``.
* Each ``JointBlock`` runs one joint attention over [context tokens, image tokens]; the two
  streams have their own weights and adaLN modulation (order: shift, scale, gate for the
  attention, then shift, scale, gate for the MLP).
* Selftok's context stream is modulated by the token **position** only
  (``context_modulation="position"``: ``adaLN(t_embedder(1000 + 8 k))``, one row per token,
  independent of t), except the last block's context stream, which is ``pre_only`` (it feeds
  keys and values to the last attention and has no output) and is modulated by the time
  embedding (mmdit.py ``DismantledBlock.pre_attention``).

Masks: ``key_mask`` [B, K] (True = the token is visible) hides tokens from every query.
``context_sees_x`` says whether context rows also attend to the image tokens (image rows
always do). Attention runs through :func:`zoo.nn.attention` with at most a [B, 1, 1, L]
key mask: when context and image rows see different keys they run as two calls, so no
[L, L] mask is ever built.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.embeddings import TimestepEmbedder, VectorEmbedder, crop_pos_embed, sincos_1d, sincos_2d
from zoo.nn import attention

__all__ = ["SelfAttention", "DismantledBlock", "JointBlock", "FinalLayer", "MMDiT", "MMDiTRenderer", "token_positions",
           "joint_attention"]


def token_positions(num_tokens: int, device=None) -> torch.Tensor:
    """Selftok's token positions ``1000 + 8 k`` (k = 0 .. K-1), int64 [K]: beyond every diffusion time in [0, 1000]."""
    return 1000 + torch.arange(num_tokens, device=device) * 8


def _approx_gelu():
    return nn.GELU(approximate="tanh")


def _mlp(dim: int, ratio: float):
    from timm.layers import Mlp

    return Mlp(in_features=dim, hidden_features=int(dim * ratio), act_layer=_approx_gelu, drop=0.0)


def _patch_embed(in_channels: int, dim: int, patch_size: int):
    from timm.layers import PatchEmbed

    return PatchEmbed(img_size=None, patch_size=patch_size, in_chans=in_channels, embed_dim=dim, bias=True,
                      strict_img_size=False)


def _keep_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] keep-mask -> boolean [B, 1, 1, L] (broadcast over heads and queries)."""
    return None if mask is None else mask[:, None, None, :]


def joint_attention(context_qkv, x_qkv, key_mask: torch.Tensor | None, *, context_sees_x: bool,
                    need_context: bool = True, context_key_mask: torch.Tensor | None = None):
    """Joint attention of context and image rows; q, k, v in [B, L, H, D].

    ``key_mask`` [B, K] (True = visible) says which context tokens are keys for the image rows
    (and for the context rows, unless ``context_key_mask`` is given for them). Image tokens are
    keys for the image rows, and for the context rows when ``context_sees_x``. Returns
    ``(context_out or None, x_out)``; ``need_context=False`` skips the context rows.
    """
    cq, ck, cv = context_qkv
    xq, xk, xv = x_qkv
    keys, values = torch.cat([ck, xk], dim=1), torch.cat([cv, xv], dim=1)
    full_mask = None
    if key_mask is not None:
        full_mask = torch.cat([key_mask, key_mask.new_ones(key_mask.shape[0], xk.shape[1])], dim=1)
    if context_key_mask is None:
        context_key_mask = key_mask
    if context_sees_x and need_context and context_key_mask is key_mask:
        out = attention(torch.cat([cq, xq], dim=1), keys, values, bias=_keep_bias(full_mask))
        return out.split([cq.shape[1], xq.shape[1]], dim=1)  # split, not slicing: no zero-filled gradients
    x_out = attention(xq, keys, values, bias=_keep_bias(full_mask))
    if not need_context:
        return None, x_out
    if context_sees_x:
        context_mask = None if context_key_mask is None else torch.cat(
            [context_key_mask, context_key_mask.new_ones(context_key_mask.shape[0], xk.shape[1])], dim=1)
        return attention(cq, keys, values, bias=_keep_bias(context_mask)), x_out
    return attention(cq, ck, cv, bias=_keep_bias(context_key_mask)), x_out


class SelfAttention(nn.Module):
    """The q/k/v projection (``qkv``) and output projection (``proj``, absent when ``pre_only``) of one stream."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, pre_only: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        self.pre_only = pre_only

    def split_heads(self, x: torch.Tensor):
        """[B, L, dim] -> q, k, v each [B, L, heads, head_dim]."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).unbind(2)
        return q, k, v


class DismantledBlock(nn.Module):
    """One stream of a joint block: LayerNorm (no affine, eps 1e-6) + adaLN, attention projections, MLP.

    ``modulation``: ``"time"`` (adaLN of the conditioning vector c [B, H]) or ``"position"``
    (adaLN of ``t_embedder(token positions)``, one modulation row per token). A ``pre_only``
    block has only ``norm1``, ``attn.qkv`` and a 2-way adaLN of c (shift, scale), whatever
    ``modulation`` says.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, *, pre_only: bool = False,
                 modulation: str = "time", qkv_bias: bool = True):
        super().__init__()
        if modulation not in ("time", "position"):
            raise ValueError(f"modulation must be 'time' or 'position', got {modulation!r}")
        self.pre_only = pre_only
        self.modulation_kind = modulation
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias=qkv_bias, pre_only=pre_only)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = _mlp(hidden_size, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, (2 if pre_only else 6) * hidden_size))
        if modulation == "position":
            self.t_embedder = TimestepEmbedder(hidden_size)

    def modulation(self, c: torch.Tensor | None, num_tokens: int | None = None) -> tuple[torch.Tensor, ...]:
        """The adaLN chunks, each broadcastable to [B, L, H]: 2 for ``pre_only``, else 6."""
        if self.pre_only:
            return tuple(m.unsqueeze(1) for m in self.adaLN_modulation(c).chunk(2, dim=1))
        if self.modulation_kind == "position":
            positions = token_positions(num_tokens, device=self.adaLN_modulation[1].weight.device)
            return tuple(m.unsqueeze(0) for m in self.adaLN_modulation(self.t_embedder(positions)).chunk(6, dim=1))
        return tuple(m.unsqueeze(1) for m in self.adaLN_modulation(c).chunk(6, dim=1))

    def pre_attention(self, x: torch.Tensor, mods) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` [B, L, H] -> (q, k, v) heads of ``norm1(x) * (1 + scale) + shift`` (``mods`` from
        :meth:`modulation`).
        """
        shift, scale = mods[0], mods[1]
        return self.attn.split_heads(self.norm1(x) * (1 + scale) + shift)

    def post_attention(self, attn_out: torch.Tensor, x: torch.Tensor, mods) -> torch.Tensor:
        """Gated attention output projection and gated, modulated MLP added to ``x``: [B, L, H] (not for ``pre_only``
        blocks).
        """
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_msa * self.attn.proj(attn_out.flatten(2))
        return x + gate_mlp * self.mlp(self.norm2(x) * (1 + scale_mlp) + shift_mlp)


class JointBlock(nn.Module):
    """``context_block`` + ``x_block`` sharing one attention (SD3 ``block_mixing``)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, *, pre_only: bool = False,
                 context_modulation: str = "position", qkv_bias: bool = True):
        super().__init__()
        self.context_block = DismantledBlock(hidden_size, num_heads, mlp_ratio, pre_only=pre_only,
                                             modulation=context_modulation, qkv_bias=qkv_bias)
        self.x_block = DismantledBlock(hidden_size, num_heads, mlp_ratio, modulation="time", qkv_bias=qkv_bias)

    def forward(self, context: torch.Tensor | None, x: torch.Tensor, c: torch.Tensor, *,
                key_mask: torch.Tensor | None = None, context_key_mask: torch.Tensor | None = None,
                context_sees_x: bool = True, context_mods=None):
        """One SD3 joint block: ``context`` [B, K, H] (or None for the image stream alone) and ``x`` [B, L, H] attend
        together, modulated by ``c`` [B, H]. ``key_mask`` / ``context_key_mask`` say which keys each query may see,
        ``context_sees_x`` whether context queries see image keys. Returns ``(context or None, x)``; the context is
        None after a ``pre_only`` block.
        """
        x_mods = self.x_block.modulation(c)
        x_qkv = self.x_block.pre_attention(x, x_mods)
        if context is None:  # no token is visible to anyone: the image stream alone
            x_out = attention(*x_qkv)
            return None, self.x_block.post_attention(x_out, x, x_mods)
        if context_mods is None:
            context_mods = self.context_block.modulation(c, context.shape[1])
        context_qkv = self.context_block.pre_attention(context, context_mods)
        need_context = not self.context_block.pre_only
        context_out, x_out = joint_attention(context_qkv, x_qkv, key_mask, context_sees_x=context_sees_x,
                                             need_context=need_context, context_key_mask=context_key_mask)
        x = self.x_block.post_attention(x_out, x, x_mods)
        context = self.context_block.post_attention(context_out, context, context_mods) if need_context else None
        return context, x


class FinalLayer(nn.Module):
    """LayerNorm (no affine) modulated by adaLN(c) (shift, scale), then Linear to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, H] modulated by ``c`` [B, H] -> [B, L, p * p * out_channels]."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(self.norm_final(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1))


class MMDiT(nn.Module):
    """SD3-style MMDiT velocity predictor conditioned on K context tokens with visibility masks.

    Args:
        num_tokens: K, the context length (``context_pos_embed`` rows).
        context_dim: width of the context vectors (Selftok: the 16-d quantized tokens).
        in_channels: latent channels (16 for the SD3 VAE).
        depth: joint blocks; ``hidden_size`` defaults to ``64 * depth`` and ``num_heads`` to
            ``depth`` (head dim 64), as the reference fixes them.
        pos_embed_max_size: side of the 2-D position table (192 for SD3-medium); inputs up to
            ``pos_embed_max_size * patch_size`` latent pixels per side.
        class_dropout_prob: in training, the probability that a sample's context is dropped
            (zeroed and hidden) for classifier-free guidance.
        context_modulation: ``"position"`` (Selftok) or ``"time"`` (SD3) for the context stream.
        adm_in_channels: width of ``y_embedder``'s input; None leaves it out.

    ``forward(x, t, context, key_mask)`` -> velocity [B, C, H, W] for latents x [B, C, H, W],
    t [B] in [0, 1] (1 = noise; embedded as ``1000 t``), context [B, K, context_dim] and
    key_mask [B, K] bool (None = every token visible).
    """

    def __init__(self, *, num_tokens: int, context_dim: int, in_channels: int = 16, patch_size: int = 2,
                 depth: int = 24, hidden_size: int | None = None, num_heads: int | None = None,
                 mlp_ratio: float = 4.0, pos_embed_max_size: int = 192, class_dropout_prob: float = 0.1,
                 context_modulation: str = "position", adm_in_channels: int | None = None, qkv_bias: bool = True):
        super().__init__()
        hidden_size = int(hidden_size or 64 * depth)
        num_heads = int(num_heads or depth)
        self.num_tokens, self.context_dim = int(num_tokens), int(context_dim)
        self.in_channels = self.out_channels = int(in_channels)
        self.patch_size, self.depth = int(patch_size), int(depth)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.pos_embed_max_size = int(pos_embed_max_size)
        self.class_dropout_prob = float(class_dropout_prob)
        self._build_input_layers()
        self.t_embedder = TimestepEmbedder(hidden_size)
        if adm_in_channels is not None:
            self.y_embedder = VectorEmbedder(int(adm_in_channels), hidden_size)  # in the checkpoints; never used
            self.y_embedder.requires_grad_(False)
        self.context_embedder = nn.Linear(self.context_dim, hidden_size)
        self.register_buffer("pos_embed", torch.zeros(1, self.pos_embed_max_size ** 2, hidden_size))
        self.joint_blocks = nn.ModuleList([
            JointBlock(hidden_size, num_heads, mlp_ratio, pre_only=i == depth - 1,
                       context_modulation=context_modulation, qkv_bias=qkv_bias)
            for i in range(depth)])
        last = self.joint_blocks[-1].context_block
        if hasattr(last, "t_embedder"):  # the pre_only block is modulated by time: its position embedder is unused
            last.t_embedder.requires_grad_(False)
        self.final_layer = FinalLayer(hidden_size, self.patch_size, self.out_channels)
        self.register_buffer("context_pos_embed", sincos_1d(hidden_size, token_positions(self.num_tokens))[None])
        self.initialize_weights()

    def _build_input_layers(self) -> None:
        self.x_embedder = _patch_embed(self.in_channels, self.hidden_size, self.patch_size)

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """DiT's from-scratch init: xavier linears, zero biases, zero adaLN and output layer, sin-cos tables.

        The release only ever loads trained weights (or SD3's, for the image stream), so this is
        what a fresh model starts from in ``zoo train``.
        """
        def basic(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        if hasattr(self, "x_embedder"):
            weight = self.x_embedder.proj.weight.data
            nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
            nn.init.zeros_(self.x_embedder.proj.bias)
        self.pos_embed.copy_(sincos_2d(self.hidden_size, self.pos_embed_max_size)[None])
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.joint_blocks:
            for stream in (block.context_block, block.x_block):
                nn.init.zeros_(stream.adaLN_modulation[-1].weight)
                nn.init.zeros_(stream.adaLN_modulation[-1].bias)
                if hasattr(stream, "t_embedder"):
                    nn.init.normal_(stream.t_embedder.mlp[0].weight, std=0.02)
                    nn.init.normal_(stream.t_embedder.mlp[2].weight, std=0.02)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------ pieces
    def context_modulations(self) -> list:
        """The position-only adaLN chunks of every context block ([1, K, H] each; None where the block
        is time-modulated). They do not depend on the input: compute them once per sampling loop."""
        return [None if b.context_block.pre_only or b.context_block.modulation_kind != "position"
                else b.context_block.modulation(None, self.num_tokens) for b in self.joint_blocks]

    def embed_context(self, context_states: torch.Tensor) -> torch.Tensor:
        """Context states [B, num_tokens, context_dim] -> [B, num_tokens, hidden] (embedder plus position table).

        Raises ValueError for another shape.
        """
        if context_states.dim() != 3 or context_states.shape[1:] != (self.num_tokens, self.context_dim):
            raise ValueError(f"context must be [B, {self.num_tokens}, {self.context_dim}], "
                             f"got {tuple(context_states.shape)}")
        return self.context_embedder(context_states) + self.context_pos_embed.to(context_states.dtype)

    def embed_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, H, W] (H, W multiples of the patch size) -> patch tokens [B, (H/p)(W/p), hidden] with the
        centre-cropped 2-D position table added.
        """
        height, width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        pos = crop_pos_embed(self.pos_embed, self.pos_embed_max_size, height, width)
        return self.x_embedder(x) + pos.to(x.dtype)

    def unpatchify(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[B, (H/p)(W/p), p*p*C] -> [B, C, H, W] (patch rows p, q are the pixel offsets)."""
        p, c = self.patch_size, self.out_channels
        h, w = height // p, width // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def sample_drop_ids(self, batch: int, t_scaled: torch.Tensor) -> torch.Tensor | None:
        """Training-time context dropout: ``rand < p``, never at t = 1000 (pure noise needs no dropping)."""
        if not self.training or self.class_dropout_prob <= 0:
            return None
        return (torch.rand(batch, device=t_scaled.device) < self.class_dropout_prob) & (t_scaled != 1000.0)

    def run_blocks(self, context, x, c, *, key_mask=None, context_sees_x=True, context_mods=None):
        """The joint blocks and the final layer on embedded streams; returns [B, N, p*p*C]."""
        mods = context_mods if context_mods is not None else [None] * len(self.joint_blocks)
        context_key_mask = key_mask
        if context is not None and key_mask is not None and not context_sees_x:
            # a sample whose tokens are all hidden would leave its context rows with no key at all;
            # let those rows see the hidden tokens: harmless, since no image row sees them
            context_key_mask = key_mask | ~key_mask.any(dim=1, keepdim=True)
        for block, block_mods in zip(self.joint_blocks, mods):
            context, x = block(context, x, c, key_mask=key_mask, context_key_mask=context_key_mask,
                               context_sees_x=context_sees_x, context_mods=block_mods)
        return self.final_layer(x, c)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, context_states: torch.Tensor,
                key_mask: torch.Tensor | None = None, *, context_sees_x: bool = True, context_mods=None,
                drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity [B, C, H, W]; see the class docstring. ``drop_ids`` [B] bool forces context dropout."""
        height, width = x.shape[-2:]
        dtype = self.context_embedder.weight.dtype
        x, context_states = x.to(dtype), context_states.to(dtype)
        t_scaled = t.to(torch.float32) * 1000.0
        hidden = self.embed_latents(x)
        c = self.t_embedder(t_scaled)
        context = self.embed_context(context_states)
        if drop_ids is None:
            drop_ids = self.sample_drop_ids(x.shape[0], t_scaled)
        if drop_ids is not None:
            keep = (~drop_ids).to(context.dtype)[:, None, None]
            context = context * keep
            key_mask = torch.ones(x.shape[0], self.num_tokens, dtype=torch.bool, device=x.device) \
                if key_mask is None else key_mask
            key_mask = key_mask & ~drop_ids[:, None]
        out = self.run_blocks(context, hidden, c, key_mask=key_mask, context_sees_x=context_sees_x,
                              context_mods=context_mods)
        return self.unpatchify(out, height, width)

    def forward_unconditional(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The release's unconditional branch for CFG (mmdit.py ``cfg_inference``): no visible token, and
        the time embedded as ``floor(1000 t)`` clamped to [0, 999]. No token is visible to the image
        rows, so the context stream cannot reach the output and is skipped."""
        height, width = x.shape[-2:]
        hidden = self.embed_latents(x.to(self.context_embedder.weight.dtype))
        c = self.t_embedder(torch.floor(t.to(torch.float32) * 1000).int().clamp(0, 999))
        return self.unpatchify(self.run_blocks(None, hidden, c), height, width)


class MMDiTRenderer(MMDiT):
    """Selftok's one-step renderer: the MMDiT with learned mask tokens in place of the noisy latent.

    Image tokens are ``mask_token`` (one shared vector when ``repeat_mask_token``, else one per
    position) plus a learned ``positional_embedding``; time is fixed at 1000; context rows see
    only the tokens (mmdit.py ``MMDiT_Renderer.forward``). Output: the clean latent
    [B, C, input_size, input_size]. There is no ``x_embedder``.
    """

    def __init__(self, *, input_size: int, repeat_mask_token: bool = True, **kwargs):
        self.input_size = int(input_size)
        self.repeat_mask_token = bool(repeat_mask_token)
        super().__init__(**kwargs)

    def _build_input_layers(self) -> None:
        grid = self.input_size // self.patch_size
        scale = self.hidden_size ** -0.5
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid ** 2, self.hidden_size))
        self.mask_token = nn.Parameter(scale * torch.randn(1, 1 if self.repeat_mask_token else grid ** 2,
                                                           self.hidden_size))

    def forward(self, context_states: torch.Tensor, key_mask: torch.Tensor | None = None, *,
                context_sees_x: bool = False, context_mods=None) -> torch.Tensor:
        """Render from context states [B, K, context_dim] alone: the image tokens start as the learnt mask token
        plus positions; ``key_mask`` and ``context_sees_x`` as in :meth:`JointBlock.forward`, ``context_mods`` the
        precomputed adaLN chunks (:meth:`context_modulations`). Returns [B, out_channels, input_size, input_size]."""
        batch = context_states.shape[0]
        grid = self.input_size // self.patch_size
        dtype = self.context_embedder.weight.dtype
        context_states = context_states.to(dtype)
        tokens = self.mask_token.to(dtype).expand(batch, grid ** 2 if self.repeat_mask_token else -1, -1)
        hidden = tokens + self.positional_embedding.to(dtype)
        c = self.t_embedder(torch.full((batch,), 1000.0, device=context_states.device))
        context = self.embed_context(context_states)
        out = self.run_blocks(context, hidden, c, key_mask=key_mask, context_sees_x=context_sees_x,
                              context_mods=context_mods)
        return self.unpatchify(out, self.input_size, self.input_size)
