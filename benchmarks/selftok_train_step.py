"""Selftok training step (encoder + quantizer + MMDiT, forward + backward) at the 512 model's widths.

The ``512`` config (256 px, 16 x 32 x 32 latents, K = 512 tokens, encoder 64/512 wide, codebook
32768 x 16, decoder 1536 wide with 24 heads) with fewer blocks so it fits a CPU: ``--encoder-depth``
and ``--decoder-depth`` (the released model has 16 and 24; the widths stay the released ones).
Timed: ``loss = model(latents)`` (the rectified-flow + commitment + diversity loss of a training
step) and ``loss.backward()``, fp32 on CPU, bf16 autocast on CUDA.

Printed: achieved FLOP/s (matmul and conv FLOPs from torch's FlopCounterMode, attention counted
analytically as 4 M N D per head forward and twice that backward) against this machine's
``torch.mm`` FLOP/s in the same dtype, measured in the same run (goal >= 40 %).

    python benchmarks/selftok_train_step.py [--batch 2] [--encoder-depth 2] [--decoder-depth 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from _timing import matmul_flops, median_time


class AttentionCounter:
    """Wraps zoo.nn.attention where Selftok calls it and adds up 4 M N D per head (forward)."""

    def __init__(self):
        self.flops = 0.0
        self.enabled = False

    def wrap(self, fn):
        def counted(q, k, v, **kwargs):
            if self.enabled:
                self.flops += 4.0 * q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1] * q.shape[3]
            return fn(q, k, v, **kwargs)
        return counted


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--encoder-depth", type=int, default=2)
    parser.add_argument("--decoder-depth", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch.utils.flop_counter import FlopCounterMode

    import zoo.models.mmdit as mmdit
    import zoo.vision.selftok.encoder as encoder_module
    from zoo.nn import attention_backend
    from zoo.vision.selftok.builder import build, make_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    counter = AttentionCounter()
    mmdit.attention = counter.wrap(mmdit.attention)
    encoder_module.attention = counter.wrap(encoder_module.attention)

    torch.manual_seed(0)
    config = make_config("512", encoder={"depth": args.encoder_depth},
                         decoder={"depth": args.decoder_depth, "hidden_size": 1536, "num_heads": 24},
                         vae={"repo_id": None, "subfolder": None})
    model = build(config).to(device).train()
    latents = torch.randn(args.batch, 16, 32, 32, device=device)
    model.encoder.quantizer._codebook.initted.fill_(1.0)  # skip the one-off k-means
    with torch.no_grad():
        model.encoder.quantizer._codebook.embed.copy_(torch.nn.functional.normalize(
            torch.randn_like(model.encoder.quantizer._codebook.embed), dim=-1))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = model(latents)["loss"]
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    counter.enabled = True
    with FlopCounterMode(display=False) as flop_mode:
        step()
    counter.enabled = False
    matmul_flops = flop_mode.get_total_flops()
    attention_flops = 3 * counter.flops  # forward + backward (2x)
    total = matmul_flops + attention_flops
    peak = matmul_flops(device, dtype)
    peak = max(peak, matmul_flops(device, dtype))
    seconds = median_time(step, args.repeats, warmup=False)
    achieved = total / seconds
    params = sum(p.numel() for p in model.parameters())
    print(f"Selftok 512 widths, encoder depth {args.encoder_depth}/16, decoder depth {args.decoder_depth}/24 "
          f"(1536 wide, 24 heads), {params / 1e6:.0f}M parameters; batch {args.batch} of 16x32x32 latents, K=512; "
          f"{device.type} {dtype}, {args.threads} threads, attention backend {attention_backend(device)}; "
          f"torch {torch.__version__}")
    print(f"{str(dtype).split('.')[-1]} torch.mm peak:           {peak / 1e9:9.1f} GFLOP/s")
    print(f"training step (fwd+bwd):        {seconds:9.3f} s   ({total / 1e9:.0f} GFLOP: {matmul_flops / 1e9:.0f} "
          f"matmul/conv + {attention_flops / 1e9:.0f} attention)")
    print(f"achieved:                       {achieved / 1e9:9.1f} GFLOP/s = {100 * achieved / peak:.0f}% of mm peak"
          f"  (goal >= 40%)")


if __name__ == "__main__":
    main()
