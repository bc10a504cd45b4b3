"""Selftok's masked joint attention through zoo.nn.attention vs the release's dense masked SDPA.

One joint-attention call of the 512 decoder: K = 512 context tokens + N = 256 image tokens,
24 heads of 64, a batch whose samples see different numbers of tokens (training: DiTi masks).
The release builds one boolean [B, 1, L, L] mask per forward (rows = [context; image]) and
calls ``scaled_dot_product_attention`` with it in every block (sd3/mmdit.py); zoo passes a
[B, 1, 1, L] key mask to ``zoo.nn.attention`` (and, when context rows must not see the image,
runs the two row groups as two calls). The reference's mask is built once, outside the timing.

Printed: time ratio reference / zoo for the decoder (context sees the image) and the renderer
(context sees only the tokens), forward and forward + backward (goal >= 1.0), with the largest
difference between the outputs.

    python benchmarks/selftok_attention.py [--batch 4] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse

import torch

from _timing import device_sync, timed_pair


def dense_mask(key_mask: torch.Tensor, num_x: int, context_sees_x: bool) -> torch.Tensor:
    """The release's [B, 1, L, L] mask (mmdit.py MMDiT.forward)."""
    batch, k_len = key_mask.shape
    x_visible = torch.ones(batch, num_x, dtype=torch.bool, device=key_mask.device)
    context_rows = torch.cat([key_mask, x_visible if context_sees_x else ~x_visible], 1)[:, None, None]
    image_rows = torch.cat([key_mask, x_visible], 1)[:, None, None]
    return torch.cat([context_rows.expand(-1, 1, k_len, -1), image_rows.expand(-1, 1, num_x, -1)], dim=2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from zoo.models.mmdit import joint_attention
    from zoo.nn import attention_backend
    from zoo.vision.selftok.diti import DiTi

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = device_sync(device)
    k_len, n_len, heads, dim = 512, 256, 24, 64
    torch.manual_seed(0)
    diti = DiTi([200, 400, 600, 800, 1000], [192, 184, 72, 48, 16])
    key_mask = diti.visible_mask(torch.linspace(50, 950, args.batch)).to(device)

    def tensors():
        c = [torch.randn(args.batch, k_len, heads, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
        x = [torch.randn(args.batch, n_len, heads, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3)]
        return c, x

    c, x = tensors()
    print(f"joint attention: batch {args.batch}, K={k_len} tokens (visible {key_mask.sum(1).tolist()}) + N={n_len} "
          f"image tokens, {heads} heads x {dim}; {device.type} {dtype}, {args.threads} threads; zoo backend "
          f"{attention_backend(device, dtype)}; torch {torch.__version__}")
    for name, sees_x in (("decoder (context sees image)", True), ("renderer (context sees tokens only)", False)):
        mask = dense_mask(key_mask, n_len, sees_x)

        def reference():
            q, k, v = (torch.cat(p, 1).transpose(1, 2) for p in zip(c, x))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
            return out[:, :k_len], out[:, k_len:]

        def ours():
            return joint_attention(tuple(c), tuple(x), key_mask, context_sees_x=sees_x)

        with torch.no_grad():
            ref_out, our_out = reference(), ours()
            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ref_out, our_out))
            t_ref, t_ours = timed_pair(reference, ours, args.repeats, sync)

        def backward(fn):
            def run():
                out = fn()
                (out[0].float().sum() + out[1].float().sum()).backward()
            return run

        b_ref, b_ours = timed_pair(backward(reference), backward(ours), args.repeats, sync)
        print(f"{name:38s} forward: ref {t_ref * 1e3:7.1f} ms  zoo {t_ours * 1e3:7.1f} ms  ratio {t_ref / t_ours:5.2f}   "
              f"fwd+bwd: ref {b_ref * 1e3:7.1f} ms  zoo {b_ours * 1e3:7.1f} ms  ratio {b_ref / b_ours:5.2f}  "
              f"(goal >= 1.0)  max|diff| {diff:.2e}")


if __name__ == "__main__":
    main()
