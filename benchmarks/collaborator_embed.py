"""Modeling Collaborator pool embedding throughput: batched (the pipeline's way) vs one image at a time.

Embeds the same shapes-world images (generated into a temporary folder, or --folder) with a clip
model (--model: a zoo folder or card; default the tiny CLIP of card shapes-clip-tiny at random
init, which costs the same as a trained one) through ``embed_files``: once with --batch-size
images per forward pass, once with 1. Reading, decoding and preprocessing are included in both.
Prints images/s of each, the ratio, and whether both give the same embeddings. Set
OMP_NUM_THREADS to choose the thread count (printed).

    python benchmarks/collaborator_embed.py [--images 512] [--batch-size 64] [--model shapes-clip-tiny]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import zoo
from zoo.vision.modeling_collaborator.embeddings import embed_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="shapes-clip-tiny")
    parser.add_argument("--folder", help="a folder of images to embed instead of generated scenes")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = zoo.load(args.model, pretrained=False) if "/" not in args.model else zoo.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            from zoo.image import image_folder

            paths = [r["path"] for r in image_folder(args.folder)][:args.images]
        else:
            from zoo.data.shapes import generate

            manifest = generate(Path(tmp) / "pool", args.images, seed=3)
            paths = sorted(str(p) for p in (manifest.parent / "images").glob("*.png"))
        embed_files(model, paths[:8], batch_size=8)  # warm-up
        results = {}
        for batch in (args.batch_size, 1):
            start = time.perf_counter()
            vectors, kept, errors = embed_files(model, paths, batch_size=batch)
            seconds = time.perf_counter() - start
            results[batch] = (len(kept) / seconds, vectors)
    batched, single = results[args.batch_size], results[1]
    print(f"{len(paths)} images, model {args.model}, torch threads {torch.get_num_threads()}")
    print(f"  batched (batch {args.batch_size}): {batched[0]:8.1f} images/s")
    print(f"  one at a time:           {single[0]:8.1f} images/s")
    print(f"  speed-up: {batched[0] / single[0]:.2f}x; max |difference| of the embeddings "
          f"{(batched[1] - single[1]).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
