"""zoo.nn.attention: packed varlen == per-sequence, backends agree, ZOO_ATTENTION forcing, transformers routing."""
import importlib
import logging
import math

import pytest
import torch

import zoo.nn
import zoo.nn.hf_attention
from zoo.errors import ZooError
from zoo.nn import attention, attention_backend

attention_module = importlib.import_module("zoo.nn.attention")  # the name zoo.nn.attention is the function

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (xformers runs on CUDA only)")
LENGTHS = [5, 9, 5, 3, 9, 1]


def _qkv(lengths, heads=3, dim=8, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return [torch.randn(1, total, heads, dim, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
            for _ in range(3)]


def _reference(q, k, v, *, causal=False, mask=None, scale=None):
    """Plain softmax(QK^T * scale + mask) V in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.einsum("bmhk,bnhk->bhmn", q, k) * scale
    if causal:
        m, n = logits.shape[-2:]
        logits = logits.masked_fill(~torch.ones(m, n, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        logits = logits + mask.double()
    return torch.einsum("bhmn,bnhk->bmhk", logits.softmax(-1), v)


def _per_sequence(q, k, v, lengths, causal=False):
    outs, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        outs.append(_reference(q[:, sl], k[:, sl], v[:, sl], causal=causal))
        start += n
    return torch.cat(outs, dim=1)


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv("ZOO_ATTENTION", raising=False)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("causal", [False, True])
def test_packed_varlen_equals_per_sequence(monkeypatch, backend, causal):
    monkeypatch.setenv("ZOO_ATTENTION", backend)
    q, k, v = _qkv(LENGTHS)
    out = attention(q, k, v, seqlens=LENGTHS, causal=causal)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), _per_sequence(q, k, v, LENGTHS, causal), atol=1e-6, rtol=0)


def test_seqlens_as_tensor_and_gradients_flow():
    q, k, v = _qkv(LENGTHS)
    q.requires_grad_(True)
    out = attention(q, k, v, seqlens=torch.tensor(LENGTHS))
    out.square().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # a query's gradient only depends on its own sequence: perturb sequence 0, sequence 1 unchanged
    v2 = v.clone()
    v2[:, :5] += 1.0
    out2 = attention(q.detach(), k, v2, seqlens=LENGTHS)
    torch.testing.assert_close(out2[:, 5:], out.detach()[:, 5:], atol=0, rtol=0)


def test_xformers_block_diagonal_mask_materialised_on_cpu():
    fmha = pytest.importorskip("xformers.ops.fmha")
    q, k, v = _qkv(LENGTHS)
    for causal in (False, True):
        bias = fmha.BlockDiagonalMask.from_seqlens(LENGTHS)
        if causal:
            bias = bias.make_causal()
        out = attention(q, k, v, bias=bias)  # CPU: materialised, then SDPA
        torch.testing.assert_close(out.double(), _per_sequence(q, k, v, LENGTHS, causal), atol=1e-6, rtol=0)


def test_tensor_bias_is_added_to_logits_and_bool_is_keep_mask():
    q, k, v = _qkv([7, 7])
    q, k, v = (t.reshape(2, 7, 3, 8) for t in (q, k, v))
    bias = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(1))
    for backend in ("sdpa", "math"):
        import os
        os.environ["ZOO_ATTENTION"] = backend
        try:
            torch.testing.assert_close(attention(q, k, v, bias=bias).double(), _reference(q, k, v, mask=bias),
                                       atol=1e-6, rtol=0)
            # key padding: batch row 1 has 4 valid keys
            keep = torch.ones(2, 1, 1, 7, dtype=torch.bool)
            keep[1, ..., 4:] = False
            additive = torch.zeros(2, 1, 1, 7).masked_fill(~keep, float("-inf"))
            torch.testing.assert_close(attention(q, k, v, bias=keep).double(), _reference(q, k, v, mask=additive),
                                       atol=1e-6, rtol=0)
            # causal + bias + packed: the dense path combines all three
            qp, kp, vp = (t.reshape(1, 14, 3, 8) for t in (q, k, v))
            packed_bias = torch.randn(1, 3, 14, 14, generator=torch.Generator().manual_seed(2))
            block = torch.full((14, 14), float("-inf"))
            block[:7, :7] = 0
            block[7:, 7:] = 0
            torch.testing.assert_close(
                attention(qp, kp, vp, seqlens=[7, 7], causal=True, bias=packed_bias).double(),
                _reference(qp, kp, vp, causal=True, mask=packed_bias + block), atol=1e-6, rtol=0)
        finally:
            del os.environ["ZOO_ATTENTION"]


def test_sdpa_and_math_agree_with_scale_and_causal(monkeypatch):
    q, k, v = _qkv([6, 6], dim=16)
    q, k, v = (t.reshape(2, 6, 3, 16) for t in (q, k, v))
    results = {}
    for backend in ("sdpa", "math"):
        monkeypatch.setenv("ZOO_ATTENTION", backend)
        results[backend] = attention(q, k, v, causal=True, scale=0.3)
    torch.testing.assert_close(results["sdpa"], results["math"], atol=1e-6, rtol=0)
    torch.testing.assert_close(results["math"].double(), _reference(q, k, v, causal=True, scale=0.3), atol=1e-6, rtol=0)


def test_zoo_attention_forcing_and_errors(monkeypatch, caplog):
    monkeypatch.setenv("ZOO_ATTENTION", "math")
    assert attention_backend() == "math"
    monkeypatch.setenv("ZOO_ATTENTION", "sdpa")
    assert attention_backend() == "sdpa"
    monkeypatch.setenv("ZOO_ATTENTION", "flash")
    with pytest.raises(ZooError, match="ZOO_ATTENTION"):
        attention_backend()
    monkeypatch.setenv("ZOO_ATTENTION", "xformers")
    q, k, v = _qkv([4])
    with pytest.raises(ZooError, match="xformers only runs on CUDA"):
        attention(q, k, v)
    monkeypatch.delenv("ZOO_ATTENTION")
    assert attention_backend("cpu") == "sdpa"
    # the backend that ran is logged once per (backend, device)
    attention_module._logged_backends.clear()
    with caplog.at_level(logging.INFO, logger="zoo.nn"):
        attention(q, k, v)
        attention(q, k, v)
    messages = [r.getMessage() for r in caplog.records if r.name == "zoo.nn"]
    assert messages == ["zoo.nn.attention: sdpa backend on cpu"]


def test_bad_shapes_raise():
    q, k, v = _qkv([4, 4])
    with pytest.raises(ZooError, match="sum of seqlens"):
        attention(q, k, v, seqlens=[4, 3])
    with pytest.raises(ZooError, match=r"\[B, M, H, K\]"):
        attention(q[0], k[0], v[0])


def test_transformers_hubert_zoo_equals_eager():
    from transformers import HubertConfig, HubertModel

    assert zoo.nn.register_transformers_attention() == "zoo"
    torch.manual_seed(0)
    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=4, feat_extract_norm="layer", do_stable_layer_norm=True)
    config._attn_implementation = "eager"
    eager = HubertModel(config).eval()
    config_zoo = HubertConfig(**config.to_dict())
    config_zoo._attn_implementation = "zoo"
    routed = HubertModel(config_zoo).eval()
    routed.load_state_dict(eager.state_dict())
    assert routed.config._attn_implementation == "zoo"
    wave = torch.randn(2, 4000, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 4000, dtype=torch.long)
    mask[1, 2500:] = 0
    calls = []
    original = zoo.nn.hf_attention.attention
    monkey = lambda *a, **kw: calls.append(1) or original(*a, **kw)  # noqa: E731
    zoo.nn.hf_attention.attention = monkey
    try:
        with torch.no_grad():
            for attention_mask in (None, mask):
                want = eager(wave, attention_mask=attention_mask).last_hidden_state
                got = routed(wave, attention_mask=attention_mask).last_hidden_state
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    finally:
        zoo.nn.hf_attention.attention = original
    assert len(calls) == 4  # 2 layers x 2 forwards went through zoo.nn.attention


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_xformers_matches_sdpa(monkeypatch, dtype, tol, causal):
    pytest.importorskip("xformers.ops")
    if attention_module._xformers_ops() is None:
        pytest.skip("xformers has no working CUDA kernels in this environment")
    lengths = [37, 120, 5, 64, 64]
    q, k, v = _qkv(lengths, heads=4, dim=64, dtype=dtype, device="cuda")
    monkeypatch.setenv("ZOO_ATTENTION", "xformers")
    fast = attention(q, k, v, seqlens=lengths, causal=causal)
    monkeypatch.setenv("ZOO_ATTENTION", "sdpa")
    slow = attention(q, k, v, seqlens=lengths, causal=causal)
    torch.testing.assert_close(fast.float(), slow.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(fast.double().cpu(), _per_sequence(q.cpu(), k.cpu(), v.cpu(), lengths, causal),
                               atol=tol * 5, rtol=tol * 5)


@cuda
def test_cuda_auto_backend_and_bias(monkeypatch):
    pytest.importorskip("xformers.ops")
    if attention_module._xformers_ops() is None:
        pytest.skip("xformers has no working CUDA kernels in this environment")
    assert attention_backend("cuda", torch.float16) == "xformers"
    q, k, v = (t.reshape(2, 10, 4, 64) for t in _qkv([10, 10], heads=4, dim=64, device="cuda"))
    bias = torch.randn(2, 4, 10, 10, device="cuda")
    fast = attention(q, k, v, bias=bias, causal=True)
    monkeypatch.setenv("ZOO_ATTENTION", "math")
    slow = attention(q, k, v, bias=bias, causal=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
