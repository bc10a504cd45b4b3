"""Mixture-of-Transformers (MoT) decoder: BAGEL's language model on transformers' Qwen2 modules.

BAGEL (Deng et al. 2025, arXiv 2505.14683, §2.1; ByteDance-Seed/Bagel:modeling/bagel/qwen2_navit.py
``Qwen2MoTDecoderLayer``/``PackedAttentionMoT``) keeps two copies of every weight of a Qwen2 decoder
layer: the plain ones serve *understanding* tokens (text, ViT patches, the image start/end markers)
and the ``*_moe_gen`` copies serve *generation* tokens (VAE latent patches). One layer is

    input norm -> q/k/v projections -> per-head q/k RMSNorm -> RoPE -> one joint attention over all
    tokens -> o projection -> residual -> post-attention norm -> MLP -> residual

with every step except the attention done by the token's own expert, and a final norm per expert
(``norm`` / ``norm_moe_gen``). Tokens of both kinds live in **one packed, padding-free sequence**
(``[N, hidden]``, no batch axis); a :class:`Routing` says which rows go to which expert, and each
expert runs only on its own rows (gather, compute, scatter), so the cost is that of one dense model.

Attention runs through :func:`zoo.nn.attention` on a list of :class:`AttnBlock`: each block is a run
of query rows with the key rows it may see, full or causal. BAGEL's packed masks
(ByteDance-Seed/Bagel:data/data_utils.py ``prepare_attention_mask_per_sample``/``create_sparse_mask``)
become such blocks (:func:`split_blocks`), so no ``[N, N]`` mask is built: SDPA runs block by block
(blocks of one shape batched together), xformers runs one call for the full blocks and one for the
causal ones with block-diagonal biases of different query and key lengths.

Key names are the official ones (``language_model.model.layers.{i}.self_attn.q_proj_moe_gen.weight``
...); see ``MoTForCausalLM``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2Attention,
    Qwen2MLP,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
    apply_rotary_pos_emb,
)

from zoo.errors import ConfigError, ZooError
from zoo.nn import attention, attention_backend

__all__ = [
    "ATTN_MODES", "AttnBlock", "Routing", "split_blocks", "dense_mask", "packed_attention", "MoTAttention",
    "MoTDecoderLayer", "MoTModel", "MoTForCausalLM", "qwen2_config",
]

ATTN_MODES = ("causal", "full", "noise")


# ----------------------------------------------------------------------------- routing

class Routing:
    """Which rows of a packed sequence use the understanding (``und``) or generation (``gen``) expert.

    und, gen: 1-D int64 row indexes (disjoint, together every row once), or None. ``Routing.all_und(n)``
    sends every row to the understanding expert (text and ViT prefill, text decoding): no gather.
    """

    def __init__(self, num_rows: int, und: torch.Tensor | None = None, gen: torch.Tensor | None = None):
        self.num_rows = int(num_rows)
        self.gen = gen if gen is not None and gen.numel() > 0 else None
        if self.gen is None:
            self.und = None  # every row
        elif und is None:
            raise ZooError("Routing: give the understanding rows when some rows are generation rows")
        else:
            if und.numel() + self.gen.numel() != self.num_rows:
                raise ZooError(f"Routing: {und.numel()} understanding + {self.gen.numel()} generation rows "
                               f"do not cover the {self.num_rows} rows of the sequence")
            self.und = und if und.numel() > 0 else None

    @classmethod
    def all_und(cls, num_rows: int) -> "Routing":
        """A routing in which all ``num_rows`` rows are understanding rows."""
        return cls(num_rows)

    @property
    def mixed(self) -> bool:
        """Whether some rows are generation rows (then the MoT layers run both experts)."""
        return self.gen is not None

    def map(self, x: torch.Tensor, und_fn: Callable, gen_fn: Callable):
        """Apply ``und_fn`` to the understanding rows of ``x`` and ``gen_fn`` to the generation rows.

        Each function maps ``[n, ...]`` rows to a tuple of ``[n, ...]`` tensors (or one tensor); the
        results are scattered back to ``[N, ...]`` in row order. Returns a tensor or a tuple, as the
        functions do.
        """
        if self.gen is None:
            return und_fn(x)
        if self.und is None:
            return gen_fn(x)
        out_und = und_fn(x.index_select(0, self.und))
        out_gen = gen_fn(x.index_select(0, self.gen))
        single = isinstance(out_und, torch.Tensor)
        if single:
            out_und, out_gen = (out_und,), (out_gen,)
        merged = []
        for a, b in zip(out_und, out_gen):
            out = a.new_empty((self.num_rows, *a.shape[1:]))
            out.index_copy_(0, self.und, a)
            out.index_copy_(0, self.gen, b.to(a.dtype))
            merged.append(out)
        return merged[0] if single else tuple(merged)


# ----------------------------------------------------------------------------- attention blocks

@dataclass(frozen=True)
class AttnBlock:
    """Query rows ``[q_start, q_start + q_len)`` attending to the key segments ``kv`` (``(start, len)`` runs,
    read in order).

    ``causal``: query ``i`` of the block sees the first ``kv_len - q_len + i + 1`` keys (causal aligned at
    the bottom right: a prefix of context keys fully visible, then causal within the block's own rows).
    """

    q_start: int
    q_len: int
    kv: tuple[tuple[int, int], ...]
    causal: bool

    @property
    def kv_len(self) -> int:
        """The number of key/value rows this block attends to (sum of its ``kv`` spans)."""
        return sum(n for _, n in self.kv)


def split_blocks(sample_lens: Sequence[int], split_lens: Sequence[int], attn_modes: Sequence[str],
                 offset: int = 0) -> list[AttnBlock]:
    """BAGEL's packed training mask as attention blocks (one per split).

    sample_lens: tokens per sample (samples are packed one after another).
    split_lens, attn_modes: the splits of all samples in order; each mode is ``"causal"`` (text),
        ``"full"`` (a ViT image or a clean VAE image, markers included) or ``"noise"`` (a noised VAE
        image). The splits of one sample sum to its length.
    A split's rows see the earlier splits of their sample that are not ``noise`` splits, plus their own
    split (causally for ``causal``, fully otherwise); nothing sees a ``noise`` split from outside it
    (ByteDance-Seed/Bagel:data/data_utils.py:72-103). Raises ConfigError on inconsistent lengths or an
    unknown mode.
    """
    blocks: list[AttnBlock] = []
    splits = list(zip(split_lens, attn_modes))
    position, index = offset, 0
    for sample_len in sample_lens:
        visible: list[tuple[int, int]] = []
        used = 0
        while used < sample_len:
            if index >= len(splits):
                raise ConfigError(f"split_blocks: the splits cover fewer tokens than the samples {list(sample_lens)}")
            length, mode = splits[index]
            index += 1
            if mode not in ATTN_MODES:
                raise ConfigError(f"split_blocks: attention mode {mode!r} is not one of {ATTN_MODES}")
            length = int(length)
            kv = _merge_runs(visible + [(position, length)])
            blocks.append(AttnBlock(position, length, kv, causal=mode == "causal"))
            if mode != "noise":
                visible.append((position, length))
            position += length
            used += length
        if used != sample_len:
            raise ConfigError(f"split_blocks: the splits of a sample add up to {used}, not its length {sample_len}")
    if index != len(splits):
        raise ConfigError("split_blocks: there are more splits than the sample lengths cover")
    return blocks


def _merge_runs(runs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[list[int]] = []
    for start, length in runs:
        if merged and merged[-1][0] + merged[-1][1] == start:
            merged[-1][1] += length
        else:
            merged.append([start, length])
    return tuple((s, n) for s, n in merged)


def dense_mask(blocks: Sequence[AttnBlock], num_q: int, num_k: int, device=None) -> torch.Tensor:
    """The boolean ``[num_q, num_k]`` keep-mask the blocks describe (True = attend); for tests and references."""
    mask = torch.zeros(num_q, num_k, dtype=torch.bool, device=device)
    for block in blocks:
        keys = torch.cat([torch.arange(s, s + n, device=device) for s, n in block.kv])
        rows = torch.arange(block.q_start, block.q_start + block.q_len, device=device)
        keep = _block_keep(block, device)
        mask[rows[:, None], keys[None, :]] = keep
    return mask


def _block_keep(block: AttnBlock, device) -> torch.Tensor:
    if not block.causal:
        return torch.ones(block.q_len, block.kv_len, dtype=torch.bool, device=device)
    return torch.ones(block.q_len, block.kv_len, dtype=torch.bool, device=device).tril(block.kv_len - block.q_len)


def _gather_rows(x: torch.Tensor, runs: Sequence[tuple[int, int]]) -> torch.Tensor:
    if len(runs) == 1:
        start, length = runs[0]
        return x[start:start + length]
    return torch.cat([x[s:s + n] for s, n in runs])


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, Hkv, D] -> [N, H, D]: query head h reads key/value head h // (H / Hkv) (transformers' repeat_kv)."""
    groups = heads // x.shape[1]
    if groups == 1:
        return x
    n, hkv, d = x.shape
    return x[:, :, None].expand(n, hkv, groups, d).reshape(n, heads, d)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks: Sequence[AttnBlock], *,
                     scale: float | None = None) -> torch.Tensor:
    """Attention of packed queries over packed keys, block by block, through ``zoo.nn.attention``.

    q: ``[Nq, H, D]``; k, v: ``[Nk, Hkv, D]`` with ``H`` a multiple of ``Hkv`` (grouped-query attention).
    blocks: every query row in exactly one block (rows of no block come back as zeros).
    Returns ``[Nq, H, D]`` in q's dtype. On xformers (CUDA) two calls run: one for the full blocks
    (``BlockDiagonalMask`` with per-block query/key lengths) and one for the causal blocks
    (``BlockDiagonalCausalFromBottomRightMask``); elsewhere SDPA runs each group of blocks of one shape
    as one batch, with a small ``[q_len, kv_len]`` mask only for causal blocks that have a context prefix.
    """
    heads = q.shape[1]
    if heads % k.shape[1]:
        raise ZooError(f"packed_attention: {heads} query heads are not a multiple of {k.shape[1]} key heads")
    k, v = _expand_kv(k, heads), _expand_kv(v, heads)
    out = q.new_zeros(q.shape)
    if not blocks:
        return out
    if attention_backend(q.device, q.dtype) == "xformers":
        for causal in (False, True):
            chosen = [b for b in blocks if b.causal == causal]
            if chosen:
                _xformers_blocks(q, k, v, chosen, out, causal=causal, scale=scale)
        return out
    groups: dict[tuple[int, int, bool], list[AttnBlock]] = {}
    for block in blocks:
        groups.setdefault((block.q_len, block.kv_len, block.causal), []).append(block)
    for (q_len, kv_len, causal), members in groups.items():
        qs = torch.stack([q[b.q_start:b.q_start + q_len] for b in members])
        ks = torch.stack([_gather_rows(k, b.kv) for b in members])
        vs = torch.stack([_gather_rows(v, b.kv) for b in members])
        bias = None
        if causal and kv_len != q_len:
            bias = _block_keep(members[0], q.device)  # bool keep-mask broadcast over batch and heads
        result = attention(qs, ks, vs, causal=causal and bias is None, bias=bias, scale=scale)
        for row, b in enumerate(members):
            out[b.q_start:b.q_start + q_len] = result[row]
    return out


def _xformers_blocks(q, k, v, blocks, out, *, causal: bool, scale):
    from xformers.ops import fmha

    qs = torch.cat([q[b.q_start:b.q_start + b.q_len] for b in blocks])[None]
    ks = torch.cat([_gather_rows(k, b.kv) for b in blocks])[None]
    vs = torch.cat([_gather_rows(v, b.kv) for b in blocks])[None]
    q_lens, kv_lens = [b.q_len for b in blocks], [b.kv_len for b in blocks]
    kind = fmha.attn_bias.BlockDiagonalCausalFromBottomRightMask if causal else fmha.attn_bias.BlockDiagonalMask
    bias = kind.from_seqlens(q_seqlen=q_lens, kv_seqlen=kv_lens, device=q.device)
    result = attention(qs, ks, vs, bias=bias, scale=scale)[0]
    row = 0
    for b in blocks:
        out[b.q_start:b.q_start + b.q_len] = result[row:row + b.q_len]
        row += b.q_len


# ----------------------------------------------------------------------------- the layers

def qwen2_config(**kwargs) -> Qwen2Config:
    """A transformers ``Qwen2Config`` from plain keyword values (``rope_theta`` accepted as in config.json).

    BAGEL's own keys (``qk_norm``, ``layer_module``, ``freeze_und``) are ignored here; the MoT classes
    always have q/k norms when ``qk_norm`` is true (the default, as every BAGEL checkpoint).
    """
    kwargs = dict(kwargs)
    for key in ("layer_module", "freeze_und", "_attn_implementation", "architectures", "torch_dtype"):
        kwargs.pop(key, None)
    qk_norm = bool(kwargs.pop("qk_norm", True))
    rope_theta = kwargs.pop("rope_theta", None)
    if rope_theta is not None and "rope_parameters" not in kwargs:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": float(rope_theta)}
    kwargs.pop("rope_scaling", None)
    config = Qwen2Config(**kwargs)
    config.qk_norm = qk_norm
    return config


class MoTAttention(Qwen2Attention):
    """Qwen2 attention projections (``q/k/v/o_proj``) plus q/k RMSNorm and the ``*_moe_gen`` copies.

    Only the projections are used from transformers' class; the attention itself is computed by the
    decoder (packed blocks through ``zoo.nn.attention``).
    """

    def __init__(self, config: Qwen2Config, layer_idx: int):
        super().__init__(config, layer_idx)
        hidden, head_dim = config.hidden_size, self.head_dim
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        if getattr(config, "qk_norm", True):
            self.q_norm = Qwen2RMSNorm(head_dim, eps=config.rms_norm_eps)
            self.k_norm = Qwen2RMSNorm(head_dim, eps=config.rms_norm_eps)
            self.q_norm_moe_gen = Qwen2RMSNorm(head_dim, eps=config.rms_norm_eps)
            self.k_norm_moe_gen = Qwen2RMSNorm(head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = self.q_norm_moe_gen = self.k_norm_moe_gen = nn.Identity()
        self.q_proj_moe_gen = nn.Linear(hidden, heads * head_dim, bias=True)
        self.k_proj_moe_gen = nn.Linear(hidden, kv_heads * head_dim, bias=True)
        self.v_proj_moe_gen = nn.Linear(hidden, kv_heads * head_dim, bias=True)
        self.o_proj_moe_gen = nn.Linear(heads * head_dim, hidden, bias=False)

    def qkv(self, x: torch.Tensor, gen: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[n, hidden]`` normed rows -> q ``[n, H, D]``, k, v ``[n, Hkv, D]`` with one expert (q/k normed)."""
        n, d = x.shape[0], self.head_dim
        if gen:
            q = self.q_norm_moe_gen(self.q_proj_moe_gen(x).view(n, -1, d))
            k = self.k_norm_moe_gen(self.k_proj_moe_gen(x).view(n, -1, d))
            return q, k, self.v_proj_moe_gen(x).view(n, -1, d)
        q = self.q_norm(self.q_proj(x).view(n, -1, d))
        k = self.k_norm(self.k_proj(x).view(n, -1, d))
        return q, k, self.v_proj(x).view(n, -1, d)


class MoTDecoderLayer(nn.Module):
    """One BAGEL ``Qwen2MoTDecoderLayer``: both experts' norms, attention projections and MLPs."""

    def __init__(self, config: Qwen2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = MoTAttention(config, layer_idx)
        self.mlp = Qwen2MLP(config)
        self.mlp_moe_gen = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, routing: Routing, rope: tuple[torch.Tensor, torch.Tensor],
                attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """x: ``[N, hidden]``; rope: (cos, sin) ``[N, head_dim]``; ``attend(layer_idx, q, k, v) -> [N, H, D]``."""
        attn = self.self_attn
        q, k, v = routing.map(
            x,
            lambda rows: attn.qkv(self.input_layernorm(rows), gen=False),
            lambda rows: attn.qkv(self.input_layernorm_moe_gen(rows), gen=True))
        cos, sin = rope
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        out = attend(self.layer_idx, q, k, v).reshape(x.shape[0], -1)
        x = x + routing.map(out, attn.o_proj, attn.o_proj_moe_gen)
        return x + routing.map(
            x,
            lambda rows: self.mlp(self.post_attention_layernorm(rows)),
            lambda rows: self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(rows)))


class MoTModel(nn.Module):
    """Embeddings, MoT layers, the two final norms and the rotary table (``language_model.model.*``)."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([MoTDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)

    def rope(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary ``(cos, sin)`` for ``position_ids`` [N] (int64): each ``[N, head_dim]`` in ``x``'s dtype."""
        cos, sin = self.rotary_emb(x, position_ids[None])
        return cos[0], sin[0]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, routing: Routing,
                attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """x: packed ``[N, hidden]`` embeddings; position_ids: ``[N]`` RoPE positions. Returns the final
        hidden states ``[N, hidden]``, each row normed by its expert's final norm."""
        rope = self.rope(x, position_ids)
        for layer in self.layers:
            x = layer(x, routing, rope, attend)
        return routing.map(x, self.norm, self.norm_moe_gen)


class MoTForCausalLM(nn.Module):
    """``language_model``: ``model`` (:class:`MoTModel`) and an untied ``lm_head``."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        if getattr(config, "tie_word_embeddings", False):
            raise ConfigError("BAGEL's language model has untied embeddings (tie_word_embeddings: false)")
        self.config = config
        self.model = MoTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, text_ids: torch.Tensor, text_index: torch.Tensor, position_ids: torch.Tensor, routing: Routing,
                attend: Callable, *, num_rows: int, inputs: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                lm_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A packed forward: token embeddings at ``text_index``, the given ``(rows, [n, hidden])`` embeddings
        elsewhere, the MoT layers. Returns (final hidden states ``[num_rows, hidden]``, ``lm_head`` logits at
        ``lm_rows`` or None). Everything of the language model runs inside this call (one FSDP unit's
        forward when the model is sharded)."""
        text = self.model.embed_tokens(text_ids)
        seq = text.new_zeros(num_rows, text.shape[-1])
        seq.index_copy_(0, text_index, text)
        for rows, values in inputs:
            if rows.numel():
                seq.index_copy_(0, rows, values.to(seq.dtype))
        hidden = self.model(seq, position_ids, routing, attend)
        logits = self.lm_head(hidden.index_select(0, lm_rows)) if lm_rows is not None and lm_rows.numel() else None
        return hidden, logits

    def init_moe(self) -> None:
        """Copy every understanding weight into its ``_moe_gen`` twin (BAGEL's ``copy_init_moe``)."""
        state = self.state_dict()
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "moe_gen" in name:
                    param.copy_(state[name.replace("_moe_gen", "")])
