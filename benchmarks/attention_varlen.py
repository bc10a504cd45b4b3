"""Packed variable-length attention (zoo.nn.attention with seqlens) vs a padded batch with a key mask.

A realistic speech mix: 16 utterances of 2-16 s at 50 frames/s (100-800 frames), 12 heads x 64.
Both compute the same outputs for the real frames; the padded batch also pays for the padding.
Prints tokens/s (real frames per second) of both and their ratio, measured in this run.

    python benchmarks/attention_varlen.py [--device cpu|cuda] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse

import torch

from _timing import best_time, device_sync
from zoo.nn import attention, attention_backend


def lengths_mix(count: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    seconds = 2.0 + 14.0 * torch.rand(count, generator=generator)
    return [int(s * 50) for s in seconds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--utterances", type=int, default=16)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    lengths = lengths_mix(args.utterances, args.seed)
    total, longest = sum(lengths), max(lengths)
    h, k = args.heads, args.head_dim
    generator = torch.Generator().manual_seed(args.seed)
    q, kk, v = (torch.randn(1, total, h, k, generator=generator).to(device, dtype) for _ in range(3))

    # padded batch [B, Lmax, H, K] with a boolean key mask (True = real frame)
    def pad(x):
        out = torch.zeros(len(lengths), longest, h, k, device=device, dtype=dtype)
        start = 0
        for row, n in enumerate(lengths):
            out[row, :n] = x[0, start:start + n]
            start += n
        return out

    qp, kp, vp = pad(q), pad(kk), pad(v)
    keep = torch.zeros(len(lengths), 1, 1, longest, dtype=torch.bool, device=device)
    for row, n in enumerate(lengths):
        keep[row, ..., :n] = True

    sync = device_sync(device)
    with torch.no_grad():
        packed_out = attention(q, kk, v, seqlens=lengths)
        padded_out = attention(qp, kp, vp, bias=keep)
        start, worst = 0, 0.0
        for row, n in enumerate(lengths):  # same numbers on the real frames
            worst = max(worst, (packed_out[0, start:start + n] - padded_out[row, :n]).abs().max().item())
            start += n
        t_packed = best_time(lambda: attention(q, kk, v, seqlens=lengths), args.repeats, sync)
        t_padded = best_time(lambda: attention(qp, kp, vp, bias=keep), args.repeats, sync)

    print(f"device {device} ({dtype}), backend {attention_backend(device, dtype)}, threads {torch.get_num_threads()}")
    print(f"{len(lengths)} utterances, {total} frames (padded: {len(lengths) * longest}, "
          f"{100 * (1 - total / (len(lengths) * longest)):.0f}% padding), {h} heads x {k}; max |diff| {worst:.2e}")
    print(f"packed varlen : {total / t_packed:12.0f} tokens/s  ({1000 * t_packed:.1f} ms)")
    print(f"padded + mask : {total / t_padded:12.0f} tokens/s  ({1000 * t_padded:.1f} ms)")
    print(f"ratio packed/padded: {t_padded / t_packed:.2f}x")


if __name__ == "__main__":
    main()
