"""One attention function for the whole zoo (every family's attention goes through ``attention``).

Layout is xformers' ``[B, M, H, K]`` (batch, tokens, heads, head dim). Backends:

* ``xformers`` - ``xformers.ops.memory_efficient_attention`` (CUDA only; packed
  variable-length batches use ``fmha.BlockDiagonalMask``);
* ``sdpa`` - ``torch.nn.functional.scaled_dot_product_attention``; packed batches run
  block by block (sequences of equal length batched together), so no ``(sum L)^2``
  mask is ever built unless an explicit ``bias`` asks for one;
* ``math`` - the explicit reference ``softmax(Q K^T * scale + bias) V``.

``ZOO_ATTENTION=xformers|sdpa|math`` forces one; otherwise xformers runs on CUDA when
it can be imported and the dtype is supported, SDPA everywhere else.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from zoo.errors import ZooError

logger = logging.getLogger("zoo.nn")

BACKENDS = ("xformers", "sdpa", "math")
_XFORMERS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_XFORMERS_MAX_HEAD_DIM = 256  # larger head dims have no xformers forward kernel
_logged_backends: set[tuple[str, str]] = set()


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    """``xformers.ops`` when it imports with working CUDA kernels, else None (checked once)."""
    if not torch.cuda.is_available():
        # xformers 0.0.3x has no CPU kernels (every fmha op declares SUPPORTED_DEVICES = {"cuda"},
        # facebookresearch/xformers:xformers/ops/fmha/); don't even import it (it warns loudly).
        return None
    try:
        import xformers.ops as xops
        from xformers.ops import fmha  # noqa: F401
    except Exception:  # ImportError, or a broken binary build raising at import
        return None
    return xops


def _forced_backend() -> str | None:
    value = os.environ.get("ZOO_ATTENTION", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ZooError(f"ZOO_ATTENTION={value!r} is not a backend; use one of {', '.join(BACKENDS)} or unset it.")
    return value


def attention_backend(device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> str:
    """The backend ``attention`` uses for tensors on ``device`` (default: CUDA if present, else CPU).

    Returns ``"xformers"``, ``"sdpa"`` or ``"math"``; ``ZOO_ATTENTION`` forces one.
    """
    forced = _forced_backend()
    if forced is not None:
        return forced
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and (dtype is None or dtype in _XFORMERS_DTYPES) and _xformers_ops() is not None:
        return "xformers"
    return "sdpa"


def _log_once(backend: str, device: torch.device) -> None:
    key = (backend, device.type)
    if key not in _logged_backends:
        _logged_backends.add(key)
        logger.info("zoo.nn.attention: %s backend on %s", backend, device.type)


def _as_seqlens(seqlens) -> list[int]:
    if isinstance(seqlens, torch.Tensor):
        seqlens = seqlens.tolist()
    lengths = [int(n) for n in seqlens]
    if any(n <= 0 for n in lengths):
        raise ZooError(f"attention: every sequence length must be positive, got {lengths}.")
    return lengths


def _check_shapes(q, k, v, lengths):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ZooError(
            f"attention expects q, k, v of shape [B, M, H, K]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}.")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[3] != k.shape[3]:
        raise ZooError(
            f"attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit together "
            "(same batch and heads; k and v the same length; q and k the same head dim).")
    if lengths is not None:
        total = sum(lengths)
        if q.shape[0] != 1 or q.shape[1] != total or k.shape[1] != total:
            raise ZooError(
                f"attention with seqlens packs sequences into one row: expected q, k, v of shape [1, {total}, H, K] "
                f"(sum of seqlens), got q {tuple(q.shape)}, k {tuple(k.shape)}.")


def _is_xformers_bias(bias) -> bool:
    return bias is not None and not isinstance(bias, torch.Tensor) and hasattr(bias, "materialize")


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean keep-mask (True = attend, SDPA's convention) as an additive float mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def _dense_mask(q, k, *, lengths, causal, bias) -> torch.Tensor | None:
    """Everything as one additive ``[B or 1, H or 1, M, N]`` float mask (None when nothing masks)."""
    batch, m, heads, _ = q.shape
    n = k.shape[1]
    mask = None
    if lengths is not None:
        segment = torch.repeat_interleave(
            torch.arange(len(lengths), device=q.device), torch.tensor(lengths, device=q.device))
        keep = segment[:, None] == segment[None, :]
        if causal:
            keep = keep & torch.ones(m, n, dtype=torch.bool, device=q.device).tril()
        mask = _additive(keep, q.dtype)[None, None]
    elif causal:
        keep = torch.ones(m, n, dtype=torch.bool, device=q.device).tril()  # top-left aligned, like LowerTriangularMask
        mask = _additive(keep, q.dtype)[None, None]
    if bias is not None:
        if _is_xformers_bias(bias):
            extra = bias.materialize((batch, heads, m, n), dtype=q.dtype, device=q.device)
        else:
            extra = _additive(bias.to(q.device), q.dtype)
        mask = extra if mask is None else mask + extra
    return mask


def _sdpa(q, k, v, *, mask=None, causal=False, dropout=0.0, scale=None):
    """SDPA on ``[B, M, H, K]`` tensors."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, dropout_p=dropout, is_causal=causal and mask is None, scale=scale)
    return out.transpose(1, 2)


def _sdpa_packed(q, k, v, lengths, *, causal, dropout, scale):
    """Block-diagonal attention without a dense mask: sequences of equal length run as one SDPA batch."""
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    outputs: list[torch.Tensor | None] = [None] * len(lengths)
    by_length: dict[int, list[int]] = {}
    for index, n in enumerate(lengths):
        by_length.setdefault(n, []).append(index)
    for n, members in by_length.items():
        if len(members) == 1:
            s = starts[members[0]]
            block = _sdpa(q[:, s:s + n], k[:, s:s + n], v[:, s:s + n], causal=causal, dropout=dropout, scale=scale)
            outputs[members[0]] = block
            continue
        qs = torch.cat([q[:, starts[i]:starts[i] + n] for i in members])
        ks = torch.cat([k[:, starts[i]:starts[i] + n] for i in members])
        vs = torch.cat([v[:, starts[i]:starts[i] + n] for i in members])
        block = _sdpa(qs, ks, vs, causal=causal, dropout=dropout, scale=scale)
        for row, i in enumerate(members):
            outputs[i] = block[row:row + 1]
    return torch.cat(outputs, dim=1)


def _math(q, k, v, *, mask, dropout, scale):
    """The reference computation from xformers' docstring, in ``[B, M, H, K]``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.einsum("bmhk,bnhk->bhmn", q * scale, k)
    if mask is not None:
        logits = logits + mask
    # A query whose keys are all masked (left padding) gets a zero output, as SDPA gives; the
    # zeroed logits keep softmax (and its gradient) free of NaN.
    empty = torch.isneginf(logits).all(dim=-1, keepdim=True) if mask is not None else None
    if empty is not None:
        logits = logits.masked_fill(empty, 0.0)
    weights = logits.softmax(dim=-1)
    if empty is not None:
        weights = weights.masked_fill(empty, 0.0)
    if dropout > 0.0:
        weights = F.dropout(weights, p=dropout)
    return torch.einsum("bhmn,bnhk->bmhk", weights, v)


def _xformers(xops, q, k, v, *, lengths, causal, bias, dropout, scale):
    from xformers.ops import fmha

    if lengths is not None:
        attn_bias = fmha.BlockDiagonalMask.from_seqlens(lengths, device=q.device)
        if causal:
            attn_bias = attn_bias.make_causal()
    elif _is_xformers_bias(bias):
        attn_bias = bias
    elif bias is not None:
        batch, m, heads, _ = q.shape
        n = k.shape[1]
        tensor = _additive(bias.to(q.device), q.dtype).expand(batch, heads, m, n)
        # xformers wants the bias rows 16-byte aligned: allocate a padded buffer and view into it
        padded = (n + 7) // 8 * 8
        storage = torch.empty(batch, heads, m, padded, dtype=q.dtype, device=q.device)
        storage[..., :n] = tensor
        tensor = storage[..., :n]
        attn_bias = fmha.attn_bias.LowerTriangularMaskWithTensorBias(tensor) if causal else tensor
    elif causal:
        attn_bias = fmha.LowerTriangularMask()
    else:
        attn_bias = None
    return xops.memory_efficient_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), attn_bias=attn_bias, p=dropout, scale=scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, seqlens: Sequence[int] | torch.Tensor | None = None,
              causal: bool = False, bias=None, dropout: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Multi-head attention on ``[B, M, H, K]`` tensors; returns ``[B, M, H, K]``.

    seqlens: packed variable-length batch (``B == 1``, ``M == sum(seqlens)``); attention never
        crosses a sequence boundary.
    causal: each query sees keys at positions <= its own (within its sequence when packed).
    bias: an additive tensor broadcastable to ``[B, H, M, N]`` (a boolean tensor is a keep-mask,
        True = attend), or an xformers ``AttentionBias`` (materialised off CUDA).
    dropout: attention-weight dropout probability (pass 0.0 in eval mode).
    scale: logit scale, default ``1 / sqrt(K)``.

    Raises ZooError when ``ZOO_ATTENTION=xformers`` is forced but the inputs are not on a CUDA device.
    """
    lengths = None if seqlens is None else _as_seqlens(seqlens)
    _check_shapes(q, k, v, lengths)
    backend = attention_backend(q.device, q.dtype)
    if backend == "xformers":
        xops = _xformers_ops()
        if not q.is_cuda or xops is None:
            where = "xformers is not importable with CUDA kernels here" if q.is_cuda else f"tensors are on {q.device}"
            raise ZooError(
                f"ZOO_ATTENTION=xformers but {where}; xformers only runs on CUDA. "
                "Unset ZOO_ATTENTION or set it to sdpa or math.")
        if lengths is not None and bias is not None:
            backend = "sdpa"  # xformers cannot add a tensor bias to a block-diagonal mask
        else:
            _log_once(backend, q.device)
            return _xformers(xops, q, k, v, lengths=lengths, causal=causal, bias=bias, dropout=dropout, scale=scale)
    _log_once(backend, q.device)
    if backend == "math":
        mask = _dense_mask(q, k, lengths=lengths, causal=causal, bias=bias)
        return _math(q, k, v, mask=mask, dropout=dropout, scale=scale)
    if lengths is not None and bias is None:
        return _sdpa_packed(q, k, v, lengths, causal=causal, dropout=dropout, scale=scale)
    if bias is None:
        return _sdpa(q, k, v, causal=causal, dropout=dropout, scale=scale)
    if lengths is None and not causal and isinstance(bias, torch.Tensor) and bias.dtype in (torch.bool, q.dtype):
        return _sdpa(q, k, v, mask=bias.to(q.device), dropout=dropout, scale=scale)  # SDPA takes it as it is
    mask = _dense_mask(q, k, lengths=lengths, causal=causal, bias=bias)
    return _sdpa(q, k, v, mask=mask, dropout=dropout, scale=scale)
