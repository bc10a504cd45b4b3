"""``python -m zoo.data.shapes --n N --size S [--seed K] [--concept-images M] [--overwrite] OUT``."""
from __future__ import annotations

import argparse
import sys
import time

from zoo.errors import ZooError


def main(argv=None) -> int:
    """Run the shapes-world generator CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Writes ``OUT/manifest.jsonl``, ``OUT/images/*.png``, ``OUT/masks/*.png`` and ``OUT/info.json`` through
    :func:`zoo.data.shapes.generate`, then prints the scene count, size, time and bytes. A user error (a
    non-empty OUT without ``--overwrite``, ``--n`` < 1, ``--size`` outside 16-4096) prints one ``error:`` line
    and returns 2; argparse errors exit with status 2 as usual.
    """
    parser = argparse.ArgumentParser(prog="python -m zoo.data.shapes",
                                     description="Write a shapes-world corpus: PNG scenes, per-object mask PNGs "
                                                 "and manifest.jsonl.")
    parser.add_argument("out", help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--n", type=int, default=1000, help="number of scenes (default 1000)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    parser.add_argument("--concept-images", type=int, default=10,
                        help="scenes per recurring concept object (default 10; 0 for none)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    args = parser.parse_args(argv)
    from . import generate

    start = time.perf_counter()
    try:
        manifest = generate(args.out, args.n, args.size, args.seed, concept_images=args.concept_images,
                            overwrite=args.overwrite, progress=sys.stderr.isatty())
    except ZooError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in manifest.parent.rglob("*") if p.is_file())
    print(f"wrote {args.n} scenes ({args.size} px) to {manifest} in {time.perf_counter() - start:.1f} s, "
          f"{total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
