"""``attn_implementation="zoo"`` for transformers models (HuBERT, Llama, CLIP ...): their attention runs through
``zoo.nn.attention``, registered with transformers' ``AttentionInterface``
(huggingface/transformers:src/transformers/modeling_utils.py).

transformers calls an attention function as ``fn(module, query, key, value, attention_mask,
scaling=..., dropout=..., **kwargs)`` with ``[B, H, M, K]`` tensors and expects
``(output [B, M, H, K], weights or None)``. The mask function registered next to it is
transformers' own SDPA mask builder (a boolean keep-mask, or None when nothing is masked).
"""
from __future__ import annotations

import torch

from zoo.nn.attention import attention

NAME = "zoo"


def _repeat_kv(states: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hkv, N, K] -> [B, Hkv * groups, N, K] for grouped-query attention."""
    if groups == 1:
        return states
    batch, heads, length, dim = states.shape
    return states[:, :, None].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


def zoo_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                          is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature on top of ``zoo.nn.attention``.

    ``query`` [B, H, M, K], ``key``/``value`` [B, Hkv, N, K] (grouped-query heads are repeated), ``attention_mask``
    a boolean keep-mask or additive float mask broadcastable to [B, H, M, N] (or None). Returns
    ``(output [B, M, H, K], None)``: attention weights are never materialised.
    """
    groups = getattr(module, "num_key_value_groups", 1) or 1
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    q_length, kv_length = query.shape[2], key.shape[2]
    # Same rule as transformers' SDPA path: causal only when no explicit mask and more than one query
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    causal = bool(causal) and attention_mask is None and q_length > 1
    if causal and kv_length > q_length:  # prefill into an empty static cache: drop the unused slots
        key, value = key[:, :, :q_length], value[:, :, :q_length]
    bias = None
    if attention_mask is not None:
        bias = attention_mask[..., : key.shape[2]]
    out = attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                    causal=causal, bias=bias, dropout=dropout, scale=scaling)
    return out.contiguous(), None


def register() -> str:
    """Register ``zoo_attention_forward`` (and the SDPA mask builder) under ``"zoo"``; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, zoo_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
