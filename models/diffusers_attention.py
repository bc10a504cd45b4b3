"""Route diffusers models' attention through :func:`zoo.nn.attention`.

diffusers modules (e.g. the mid-block attention of ``AutoencoderKL``) call an attention
*processor*; :class:`ZooAttnProcessor` is one that keeps diffusers' ``Attention`` weights and
pre/post steps (spatial or group norm, q/k/v/out projections, residual, output rescale) and
runs the attention itself through ``zoo.nn.attention``. ``use_zoo_attention(model)`` installs
it on every attention layer of a diffusers model.
"""
from __future__ import annotations

import torch

from zoo.nn import attention

__all__ = ["ZooAttnProcessor", "use_zoo_attention"]


class ZooAttnProcessor:
    """A diffusers attention processor that calls ``zoo.nn.attention`` (self- or cross-attention, optional mask)."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.dim() == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.reshape(batch, channels, height * width).transpose(1, 2)
        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states
        if encoder_hidden_states is not None:
            context = encoder_hidden_states
            if getattr(attn, "norm_cross", None):
                context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        batch, length, inner = query.shape
        head_dim = inner // heads
        query = query.reshape(batch, length, heads, head_dim)
        key = key.reshape(batch, key.shape[1], heads, head_dim)
        value = value.reshape(batch, value.shape[1], heads, head_dim)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        bias = None
        if attention_mask is not None:
            bias = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            bias = bias.reshape(batch, -1, bias.shape[-2], bias.shape[-1])
        out = attention(query, key, value, bias=bias, scale=getattr(attn, "scale", None))
        out = attn.to_out[1](attn.to_out[0](out.reshape(batch, length, inner).to(query.dtype)))
        if spatial:
            out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / getattr(attn, "rescale_output_factor", 1.0)


def use_zoo_attention(model) -> None:
    """Install :class:`ZooAttnProcessor` on every attention layer of a diffusers model (if it has any)."""
    if hasattr(model, "set_attn_processor") and getattr(model, "attn_processors", None):
        model.set_attn_processor(ZooAttnProcessor())
