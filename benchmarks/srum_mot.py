"""BAGEL's MoT layer, forward + backward, on a packed mixed understanding/generation sequence.

Three ways to compute one ``MoTDecoderLayer`` on the same packed batch (SRUM's training layout: per
sample a causal text block and a noised image block that sees the text; e.g. 2 samples of 64 text
tokens + a 1024-px image = 4096 latent tokens + 2 markers):

* ``routed`` (zoo): each token through its own expert only (gather, compute, scatter), attention
  block by block through ``zoo.nn.attention``;
* ``dense two-model`` (reference): both experts on every token, the right one picked per token after
  (``torch.where``), the same block attention;
* ``dense mask`` (reference for the attention): routed experts, attention as BAGEL's non-flex path
  runs it: one SDPA per sample with its dense ``[L, L]`` additive mask.

Prints tokens/s of each, the ratios measured in this run (goal: routed >= 1.5x the dense two-model
reference), and the routed layer's achieved FLOP/s against a measured matmul peak (a large matmul in
the same dtype on the same device).

    python benchmarks/srum_mot.py [--device cuda] [--hidden 3584 --heads 28 --kv-heads 4 --ffn 18944]
        [--samples 2 --text 64 --latent 64] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse

import torch

from _timing import best_time, device_sync
from zoo.models.mot import MoTDecoderLayer, Routing, packed_attention, qwen2_config, split_blocks
from zoo.nn import attention_backend


def dense_two_model(layer: MoTDecoderLayer, x, is_gen, rope, attend):
    """Both experts on every token; pick per token after."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    a, n = layer.self_attn, x.shape[0]
    d = a.head_dim
    g1 = is_gen[:, None]
    g2 = is_gen[:, None, None]
    h = torch.where(g1, layer.input_layernorm_moe_gen(x), layer.input_layernorm(x))
    q = torch.where(g2, a.q_norm_moe_gen(a.q_proj_moe_gen(h).view(n, -1, d)), a.q_norm(a.q_proj(h).view(n, -1, d)))
    k = torch.where(g2, a.k_norm_moe_gen(a.k_proj_moe_gen(h).view(n, -1, d)), a.k_norm(a.k_proj(h).view(n, -1, d)))
    v = torch.where(g2, a.v_proj_moe_gen(h).view(n, -1, d), a.v_proj(h).view(n, -1, d))
    q, k = apply_rotary_pos_emb(q, k, rope[0], rope[1], unsqueeze_dim=1)
    o = attend(0, q, k, v).reshape(n, -1)
    x = x + torch.where(g1, a.o_proj_moe_gen(o), a.o_proj(o))
    return x + torch.where(g1, layer.mlp_moe_gen(layer.post_attention_layernorm_moe_gen(x)),
                           layer.mlp(layer.post_attention_layernorm(x)))


def dense_mask_attention(sample_lens, split_lens, modes):
    """BAGEL's nested-mask path: per sample, SDPA with the sample's dense additive mask."""
    from zoo.models.mot import dense_mask

    masks, start, index = [], 0, 0
    for length in sample_lens:
        used, sub_splits, sub_modes = 0, [], []
        while used < length:
            sub_splits.append(split_lens[index])
            sub_modes.append(modes[index])
            used += split_lens[index]
            index += 1
        keep = dense_mask(split_blocks([length], sub_splits, sub_modes), length, length)
        masks.append((start, length, keep))
        start += length

    def attend(layer, q, k, v):
        heads = q.shape[1]
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
        out = []
        for s, n, keep in masks:
            bias = torch.zeros(n, n, dtype=q.dtype, device=q.device).masked_fill(~keep.to(q.device), float("-inf"))
            out.append(torch.nn.functional.scaled_dot_product_attention(
                q[s:s + n].transpose(0, 1), k[s:s + n].transpose(0, 1), v[s:s + n].transpose(0, 1),
                attn_mask=bias).transpose(0, 1))
        return torch.cat(out)
    return attend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--ffn", type=int, default=None)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--text", type=int, default=64, help="text tokens per sample (bos and eos included)")
    parser.add_argument("--latent", type=int, default=None, help="latent tokens per image side")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    # defaults: BAGEL-7B widths on a GPU, a small layer on a CPU
    hidden = args.hidden or (3584 if cuda else 256)
    heads = args.heads or (28 if cuda else 8)
    kv_heads = args.kv_heads or (4 if cuda else 2)
    ffn = args.ffn or (18944 if cuda else 1024)
    side = args.latent or (64 if cuda else 16)
    dtype = torch.bfloat16 if cuda else torch.float32
    config = qwen2_config(vocab_size=16, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=1,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                          rope_theta=1e6)
    layer = MoTDecoderLayer(config, 0).to(device, dtype)
    # packed layout: per sample [text causal][soi + latents + eoi noise]
    sample_lens, split_lens, modes, gen_rows, positions = [], [], [], [], []
    row = 0
    for _ in range(args.samples):
        image = side * side + 2
        split_lens += [args.text, image]
        modes += ["causal", "noise"]
        sample_lens.append(args.text + image)
        gen_rows += list(range(row + args.text + 1, row + args.text + 1 + side * side))
        positions += list(range(args.text)) + [args.text] * image
        row += args.text + image
    n = row
    gen = torch.tensor(gen_rows, device=device)
    is_gen = torch.zeros(n, dtype=torch.bool, device=device)
    is_gen[gen] = True
    und = torch.nonzero(~is_gen)[:, 0]
    routing = Routing(n, und, gen)
    blocks = split_blocks(sample_lens, split_lens, modes)
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    x = torch.randn(n, hidden, device=device, dtype=dtype) * 0.5
    cos, sin = Qwen2RotaryEmbedding(config).to(device)(x, torch.tensor(positions, device=device)[None])
    rope = (cos[0], sin[0])
    attend_blocks = lambda i, q, k, v: packed_attention(q, k, v, blocks)   # noqa: E731
    attend_dense = dense_mask_attention(sample_lens, split_lens, modes)
    sync = device_sync(device)

    def step(fn):
        def run():
            layer.zero_grad(set_to_none=True)
            inp = x.detach().requires_grad_(True)
            fn(inp).float().square().mean().backward()
        return run

    routed = step(lambda inp: layer(inp, routing, rope, attend_blocks))
    two_model = step(lambda inp: dense_two_model(layer, inp, is_gen, rope, attend_blocks))
    masked = step(lambda inp: layer(inp, routing, rope, attend_dense))
    t_routed = best_time(routed, args.repeats, sync)
    t_two = best_time(two_model, args.repeats, sync)
    t_mask = best_time(masked, args.repeats, sync)

    # FLOPs of the routed layer (forward x3 for forward + backward): linear layers on each token once,
    # attention over the visible keys of each block
    head_dim = hidden // heads
    linear_params = hidden * (heads * head_dim + 2 * kv_heads * head_dim) + heads * head_dim * hidden + 3 * hidden * ffn
    visible = sum(b.q_len * b.kv_len - (b.q_len * (b.q_len - 1) // 2 if b.causal else 0) for b in blocks)
    flops = 3 * (2 * n * linear_params + 4 * visible * heads * head_dim)
    size = 8192 if cuda else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    t_mm = best_time(lambda: a @ b, args.repeats, sync)
    peak = 2 * size ** 3 / t_mm

    print(f"device {device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} CPU threads'}), "
          f"{dtype}, attention backend {attention_backend(device, dtype)}")
    print(f"layer: hidden {hidden}, heads {heads}/{kv_heads} kv, ffn {ffn}; packed sequence {n} tokens "
          f"({args.samples} samples x ({args.text} text + {side}x{side} latents + 2 markers)), "
          f"{gen.numel()} generation / {und.numel()} understanding tokens")
    print(f"routed (zoo)            {t_routed * 1e3:9.2f} ms  {n / t_routed:12.0f} tokens/s")
    print(f"dense two-model (ref)   {t_two * 1e3:9.2f} ms  {n / t_two:12.0f} tokens/s   routed is {t_two / t_routed:.2f}x")
    print(f"dense-mask attention    {t_mask * 1e3:9.2f} ms  {n / t_mask:12.0f} tokens/s   routed is {t_mask / t_routed:.2f}x")
    print(f"routed layer: {flops / t_routed / 1e12:.2f} TFLOP/s achieved; matmul peak measured "
          f"{peak / 1e12:.2f} TFLOP/s ({size}^3 {dtype}); {100 * flops / t_routed / peak:.0f}% of peak")


if __name__ == "__main__":
    main()
