"""The MoT decoder: BAGEL's packed masks as attention blocks, block attention, per-token expert routing."""
import math

import pytest
import torch

from zoo.errors import ConfigError, ZooError
from zoo.models.mot import (
    AttnBlock, MoTDecoderLayer, MoTForCausalLM, Routing, dense_mask, packed_attention, qwen2_config, split_blocks,
)


def bagel_rule_mask(split_lens, attn_modes, sample_lens):
    """The packed mask from the rules, written independently: a query sees earlier non-noise splits of its sample
    and its own split (causally for 'causal'); nothing outside a noise split sees it."""
    n = sum(split_lens)
    owner_split, owner_sample = [], []
    s_index, acc, sample = 0, 0, 0
    bounds = [sum(sample_lens[:i + 1]) for i in range(len(sample_lens))]
    for i, length in enumerate(split_lens):
        for _ in range(length):
            while acc >= bounds[sample]:
                sample += 1
            owner_split.append(i)
            owner_sample.append(sample)
            acc += 1
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            if owner_sample[q] != owner_sample[k]:
                continue
            sq, sk = owner_split[q], owner_split[k]
            if sk == sq:
                mask[q, k] = attn_modes[sq] != "causal" or k <= q
            elif sk < sq:
                mask[q, k] = attn_modes[sk] != "noise"
    return mask


@pytest.mark.parametrize("sample_lens, split_lens, modes", [
    ([7], [4, 3], ["causal", "noise"]),                                     # T2I: text then noised image
    ([5, 6], [3, 2, 2, 4], ["causal", "noise", "causal", "noise"]),         # two packed T2I samples
    ([9], [3, 2, 4], ["full", "causal", "causal"]),                         # ViT image then two text turns
    ([12], [2, 3, 2, 5], ["causal", "noise", "causal", "full"]),            # a noise split in the middle
    ([4, 4], [4, 4], ["causal", "full"]),
])
def test_split_blocks_equal_bagels_packed_mask(sample_lens, split_lens, modes):
    blocks = split_blocks(sample_lens, split_lens, modes)
    n = sum(split_lens)
    assert torch.equal(dense_mask(blocks, n, n), bagel_rule_mask(split_lens, modes, sample_lens))


def test_split_blocks_reports_bad_layouts():
    with pytest.raises(ConfigError, match="mode"):
        split_blocks([3], [3], ["sideways"])
    with pytest.raises(ConfigError):
        split_blocks([5], [3], ["causal"])
    with pytest.raises(ConfigError):
        split_blocks([3], [3, 2], ["causal", "full"])


def reference_attention(q, k, v, mask):
    heads = q.shape[1]
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    logits = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", logits.softmax(-1), v)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_packed_attention_equals_dense_masked_attention(backend, monkeypatch):
    monkeypatch.setenv("ZOO_ATTENTION", backend)
    torch.manual_seed(0)
    sample_lens, split_lens, modes = [9, 7, 7], [3, 6, 3, 4, 2, 5], ["causal", "noise", "causal", "noise", "full", "causal"]
    blocks = split_blocks(sample_lens, split_lens, modes)
    n = sum(split_lens)
    q, k, v = torch.randn(n, 4, 8), torch.randn(n, 2, 8), torch.randn(n, 2, 8)   # grouped-query attention
    out = packed_attention(q, k, v, blocks)
    ref = reference_attention(q, k, v, dense_mask(blocks, n, n))
    assert torch.allclose(out, ref, atol=1e-5)


def test_packed_attention_with_a_cache_prefix_is_bottom_right_causal():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 4), torch.randn(5, 2, 4), torch.randn(5, 2, 4)
    block = AttnBlock(0, 3, ((0, 5),), causal=True)   # 2 cached keys, then the 3 queries' own keys
    out = packed_attention(q, k, v, [block])
    keep = torch.ones(3, 5, dtype=torch.bool).tril(2)
    assert keep[0].tolist() == [True, True, True, False, False]
    assert torch.allclose(out, reference_attention(q, k, v, keep), atol=1e-6)


def tiny_config():
    return qwen2_config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0)


def randomize(module):
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if p.dim() == 1 and "norm" in name else 0.2 * torch.randn_like(p))


def test_mot_layer_routes_each_token_to_its_own_expert():
    """The packed layer equals a dense reference that runs both experts on every token and picks per token."""
    config = tiny_config()
    layer = MoTDecoderLayer(config, 0)
    randomize(layer)
    n = 10
    gen = torch.tensor([2, 3, 4, 7, 8])
    und = torch.tensor([0, 1, 5, 6, 9])
    is_gen = torch.zeros(n, dtype=torch.bool)
    is_gen[gen] = True
    x = torch.randn(n, 32)
    positions = torch.tensor([0, 1, 2, 2, 2, 3, 4, 5, 5, 6])
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding, apply_rotary_pos_emb
    cos, sin = Qwen2RotaryEmbedding(config)(x, positions[None])
    blocks = split_blocks([n], [2, 3, 5], ["causal", "full", "causal"])
    attend = lambda i, q, k, v: packed_attention(q, k, v, blocks)   # noqa: E731
    out = layer(x, Routing(n, und, gen), (cos[0], sin[0]), attend)

    a = layer.self_attn
    pick = lambda u, g: torch.where(is_gen.view(-1, *([1] * (u.dim() - 1))), g, u)   # noqa: E731
    h = pick(layer.input_layernorm(x), layer.input_layernorm_moe_gen(x))
    q = pick(a.q_norm(a.q_proj(h).view(n, 4, 8)), a.q_norm_moe_gen(a.q_proj_moe_gen(h).view(n, 4, 8)))
    k = pick(a.k_norm(a.k_proj(h).view(n, 2, 8)), a.k_norm_moe_gen(a.k_proj_moe_gen(h).view(n, 2, 8)))
    v = pick(a.v_proj(h).view(n, 2, 8), a.v_proj_moe_gen(h).view(n, 2, 8))
    q, k = apply_rotary_pos_emb(q, k, cos[0], sin[0], unsqueeze_dim=1)
    o = reference_attention(q, k, v, dense_mask(blocks, n, n)).reshape(n, 32)
    x2 = x + pick(a.o_proj(o), a.o_proj_moe_gen(o))
    ref = x2 + pick(layer.mlp(layer.post_attention_layernorm(x2)),
                    layer.mlp_moe_gen(layer.post_attention_layernorm_moe_gen(x2)))
    assert torch.allclose(out, ref, atol=1e-5)
    # the understanding-only path (text prefill) never touches the _moe_gen weights
    only_und = layer(x, Routing.all_und(n), (cos[0], sin[0]), attend)
    gen_only = {n_ for n_, _ in layer.named_parameters() if "moe_gen" in n_}
    only_und.sum().backward()
    assert all(p.grad is None for n_, p in layer.named_parameters() if n_ in gen_only)


def test_routing_must_cover_every_row_once():
    with pytest.raises(ZooError, match="cover"):
        Routing(5, torch.tensor([0, 1]), torch.tensor([2]))
    with pytest.raises(ZooError):
        Routing(5, None, torch.tensor([2]))


def test_init_moe_copies_understanding_weights_and_embeddings_stay_untied():
    model = MoTForCausalLM(tiny_config())
    model.init_moe()
    state = model.state_dict()
    gen_keys = [k for k in state if "moe_gen" in k]
    assert len(gen_keys) == 2 * (6 + 1 + 2 + 3 + 2) + 1   # per layer: q/k/v w+b, o, q/k norms, mlp, 2 norms; + final
    assert all(torch.equal(state[k], state[k.replace("_moe_gen", "")]) for k in gen_keys)
    with pytest.raises(ConfigError, match="untied"):
        MoTForCausalLM(qwen2_config(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
