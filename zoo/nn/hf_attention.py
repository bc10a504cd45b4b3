"""``attn_implementation="zoo"``: transformers models whose attention runs through ``zoo.nn.attention``.

transformers looks an attention implementation up by name (``AttentionInterface``) and calls it
as ``fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kwargs)`` with
``[B, H, M, K]`` query and ``[B, Hkv, N, K]`` key/value tensors; it expects
``(output [B, M, H, K], weights or None)``. The mask builder registered next to it is
transformers' own SDPA one (``masking_utils.sdpa_mask``): it returns ``None`` whenever a
plain causal or full attention needs no mask (no padding, first-token prefill, one-token
decode), a boolean keep-mask ``[B, 1, M, N]`` (True = attend) otherwise. A 4-D mask passed
to a model (an omni-attention or packed block mask, boolean or additive float) reaches
this function unchanged.

Semantics are those of transformers' ``sdpa`` implementation (``integrations/sdpa_attention.py``):
causal only when no mask is given and more than one query is present (top-left aligned);
a query whose keys are all masked (left padding) gets a zero output, as SDPA gives.

Usage::

    from zoo.nn.hf_attention import from_config
    model = from_config(LlamaForCausalLM, LlamaConfig(...))   # every sub-model on zoo attention

or ``register()`` then ``AutoModel.from_pretrained(..., attn_implementation="zoo")``.
"""
from __future__ import annotations

import copy

import torch

from zoo.errors import ConfigError
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
                          is_causal: bool | None = None, position_bias: torch.Tensor | None = None,
                          **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function on ``zoo.nn.attention``.

    query: ``[B, H, M, K]``; key, value: ``[B, Hkv, N, K]`` with ``H`` a multiple of ``Hkv``.
    attention_mask: None, a boolean keep-mask or an additive float mask broadcastable to
        ``[B, H, M, N']`` with ``N' >= N`` (a static cache's mask is cut to the keys present).
    position_bias: optional additive ``[B or 1, H, M, N]`` logits bias (added to the mask).
    Returns ``(output [B, M, H, K], None)``: attention weights are never materialised.

    Raises ConfigError for features zoo attention does not have (logit soft-capping,
    attention sinks): build such a model with ``attn_implementation="eager"``.
    """
    if kwargs.get("softcap") is not None:
        raise ConfigError(f"{type(module).__name__} uses attention logit soft-capping, which zoo attention does not "
                          "implement; build this model with attn_implementation='eager'.")
    if kwargs.get("s_aux") is not None or getattr(module, "sinks", None) is not None:
        raise ConfigError(f"{type(module).__name__} uses attention sinks, which zoo attention does not implement; "
                          "build this model with attn_implementation='eager'.")
    groups = getattr(module, "num_key_value_groups", 1) or 1
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    q_length, kv_length = query.shape[2], key.shape[2]
    # transformers' SDPA rule: causal only without an explicit mask and with more than one query
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and attention_mask is None and q_length > 1
    if causal and kv_length > q_length:
        # prefill into an empty static cache: the unused slots sit after the queries (top-left causal)
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        if position_bias is not None:
            position_bias = position_bias[..., :q_length]
    bias = None
    if attention_mask is not None:
        if attention_mask.dim() != 4:
            raise ConfigError(f"zoo attention expects a 4-D attention mask [B, 1 or H, M, N] here, got shape "
                              f"{tuple(attention_mask.shape)}; pass a 2-D padding mask or a 4-D mask to the model.")
        bias = attention_mask[..., : key.shape[2]]
    if position_bias is not None:
        if bias is not None and bias.dtype == torch.bool:
            bias = position_bias.masked_fill(~bias, float("-inf"))
        else:
            bias = position_bias if bias is None else position_bias + bias.to(position_bias.dtype)
    out = attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                    causal=causal, bias=bias, dropout=dropout, scale=scaling)
    return out.contiguous(), None


def register() -> str:
    """Register ``zoo_attention_forward`` (and the SDPA mask builder) under ``"zoo"``; idempotent.

    Returns the name to pass as ``attn_implementation``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, zoo_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def from_config(model_class, config, **kwargs):
    """``model_class`` built from ``config`` (random init) with every attention, sub-models included,
    on ``zoo.nn.attention``.

    model_class: a transformers ``PreTrainedModel`` class (``LlamaForCausalLM``,
        ``LlavaForConditionalGeneration``, ``SiglipVisionModel`` ...) or an ``AutoModel*`` class.
    config: its config; it is copied, never changed.
    kwargs: passed to ``from_config`` / ``_from_config`` (e.g. ``dtype=torch.bfloat16``).
    Raises ConfigError if some sub-model did not take the zoo implementation.
    """
    register()
    config = copy.deepcopy(config)
    build = getattr(model_class, "_from_config", None) or model_class.from_config
    model = build(config, attn_implementation=NAME, **kwargs)
    others = sorted({f"{type(m).__name__}: {m.config._attn_implementation}" for m in model.modules()
                     if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")
                     and m.config._attn_implementation != NAME})
    if others:
        raise ConfigError(f"{model_class.__name__} did not put every sub-model on zoo attention ({', '.join(others)}).")
    return model


__all__ = ["NAME", "from_config", "register", "zoo_attention_forward"]
