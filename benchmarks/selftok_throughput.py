"""Selftok images per second: encode (VAE + encoder) + render (renderer + VAE), against the VAE alone.

Random weights (no download): ``--size tiny`` (64 px, the default on CPU) or ``--size 512``
(256 px, the released architecture, with a random SD3-layout VAE; for a GPU). The batch goes
``pixels -> latents -> ids -> renderer -> latents -> pixels``; the reference in the same run is
the VAE round trip alone (``pixels -> latents -> pixels``), the floor any VAE tokenizer pays.
Also timed: the 50-step diffusion decoding of the same ids with the tokenizer's decoder.

Printed: images/s of encode+render, of encode+decode, of the VAE alone, and the ratio VAE / encode+render.

    python benchmarks/selftok_throughput.py [--size tiny] [--batch 8] [--repeats 3]
"""
from __future__ import annotations

import argparse

import torch

from _timing import device_sync, median_time


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "512"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-steps", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from zoo.vision.selftok.builder import SD3_VAE_CONFIG, build, make_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = device_sync(device)
    overrides = {} if args.size == "tiny" else {"vae": {"repo_id": None, "subfolder": None, "config": SD3_VAE_CONFIG}}
    torch.manual_seed(0)
    tokenizer = build(make_config(args.size, **overrides)).to(device).eval()
    renderer = build(make_config(f"{args.size}-renderer", **overrides)).to(device).eval()
    renderer.vae = tokenizer.vae  # one VAE for both
    for model in (tokenizer, renderer):
        cb = model.encoder.quantizer._codebook
        cb.initted.fill_(1.0)
        cb.embed.copy_(torch.nn.functional.normalize(torch.randn_like(cb.embed), dim=-1))
    size = tokenizer.image_size
    pixels = torch.rand(args.batch, 3, size, size, device=device) * 2 - 1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def vae_only():
        with torch.no_grad(), autocast:
            tokenizer.latents_to_images(tokenizer.images_to_latents(pixels))

    def encode_render():
        with torch.no_grad(), autocast:
            ids = renderer.encode_latents(renderer.images_to_latents(pixels))
            renderer.render(ids)

    def encode_decode():
        with torch.no_grad(), autocast:
            ids = tokenizer.encode_latents(tokenizer.images_to_latents(pixels))
            tokenizer.decode(ids, steps=args.decode_steps)

    t_vae = median_time(vae_only, args.repeats, sync)
    t_render = median_time(encode_render, args.repeats, sync)
    t_decode = median_time(encode_decode, max(1, args.repeats // 2), sync)
    print(f"Selftok {args.size} ({size} px, K={tokenizer.num_tokens}), random weights; batch {args.batch}; "
          f"{device.type} {dtype if device.type == 'cuda' else torch.float32}, {args.threads} threads; "
          f"torch {torch.__version__}")
    print(f"VAE alone (encode + decode):        {args.batch / t_vae:9.1f} images/s")
    print(f"encode + render (one step):         {args.batch / t_render:9.1f} images/s   "
          f"= {t_vae / t_render:.2f} x the VAE round trip")
    print(f"encode + decode ({args.decode_steps} Euler steps):    {args.batch / t_decode:9.1f} images/s   "
          f"= {t_vae / t_decode:.3f} x the VAE round trip")


if __name__ == "__main__":
    main()
