"""``zoo som-tag IMAGE [--masks DIR|FILE] [--letters] -o tagged.png [--json tags.json]``: Set-of-Mark tags."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.errors import ConfigError

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".jpg", ".jpeg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo som-tag",
        description="Draw SoM-LLaVA's numeric (or letter) tags on an image's object masks, as the official "
                    "pipeline does: shortest side 640, small masks first, overlaps removed, no tag under 110 px, "
                    "tag at the distance-transform maximum.")
    parser.add_argument("image", help="image file (any mode and size)")
    parser.add_argument("--masks", help="a folder of mask images (one object per file, non-zero = object, "
                                        "taken in file-name order), or a .npy/.npz file holding an [N, H, W] "
                                        "array; masks may have the input's size or the resized one")
    parser.add_argument("--proposer", choices=["shapes", "sam"],
                        help="propose masks when --masks is not given: 'shapes' (shapes-world scenes, offline) "
                             "or 'sam' (segment-anything, needs --sam-checkpoint)")
    parser.add_argument("--sam-checkpoint", help="segment-anything checkpoint for --proposer sam")
    parser.add_argument("--letters", action="store_true", help="label a, b, ..., z, aa, ... instead of 1, 2, 3")
    parser.add_argument("--resize", type=int, default=640, help="shortest side of the tagged image (default 640; "
                                                                "0 keeps the input size)")
    parser.add_argument("--min-area", type=int, default=110, help="regions with fewer pixels get no tag (110)")
    parser.add_argument("-o", "--output", required=True, help="tagged image to write (.png or .jpg)")
    parser.add_argument("--json", dest="json_path", help="write the tags (label, anchor, mask index, area, bbox)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def read_masks(source: str | Path) -> list:
    """Masks from a folder of images (sorted by name) or an ``.npy`` / ``.npz`` array ``[N, H, W]``."""
    import numpy as np
    from PIL import Image

    source = Path(source).expanduser()
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in MASK_SUFFIXES and p.is_file())
        if not files:
            raise ConfigError(f"--masks {str(source)!r} holds no mask images ({', '.join(MASK_SUFFIXES)}).")
        masks = []
        for path in files:
            with Image.open(path) as image:
                masks.append(np.asarray(image.convert("L")) > 0)
        return masks
    if source.suffix in (".npy", ".npz") and source.is_file():
        data = np.load(source)
        if isinstance(data, np.lib.npyio.NpzFile):
            if len(data.files) != 1:
                raise ConfigError(f"{source} holds {len(data.files)} arrays ({', '.join(data.files)}); save one "
                                  "[N, H, W] array.")
            data = data[data.files[0]]
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ConfigError(f"{source} holds an array of shape {data.shape}; expected [N, H, W].")
        return list(data)
    raise ConfigError(f"--masks {str(source)!r} is neither a folder of mask images nor a .npy/.npz file.")


def make_proposer(kind: str, sam_checkpoint: str | None):
    """A ``zoo.tools`` MaskProposer: the shapes world's colour segmenter or segment-anything."""
    if kind == "shapes":
        from zoo.data.shapes.judge import ShapesMaskProposer

        return ShapesMaskProposer()
    if not sam_checkpoint:
        raise ConfigError("--proposer sam needs --sam-checkpoint PATH (a segment-anything .pth file).")
    from zoo.tools import SamMaskProposer

    return SamMaskProposer(checkpoint=sam_checkpoint)


def som_tag_main(argv: list[str]) -> int:
    from zoo.files import write_text
    from zoo.multimodal.som_llava.tags import tag_image

    args = build_parser().parse_args(argv)
    outputs = [Path(args.output)] + ([Path(args.json_path)] if args.json_path else [])
    for path in outputs:  # fail before any work
        if path.exists() and not args.overwrite:
            raise ConfigError(f"{path} exists; pass --overwrite to replace it.")
    if args.masks:
        masks, proposer = read_masks(args.masks), None
    elif args.proposer:
        masks, proposer = None, make_proposer(args.proposer, args.sam_checkpoint)
    else:
        raise ConfigError("Give --masks DIR (or .npy/.npz), or --proposer shapes|sam to find the objects.")
    result = tag_image(args.image, masks, proposer=proposer, resize=args.resize or None,
                       labels="letters" if args.letters else "numbers", min_area=args.min_area)
    result.save(args.output, overwrite=args.overwrite)
    width, height = result.size
    print(f"{args.image}: {len(result.tags)} tags on a {width}x{height} image -> {args.output}")
    for tag in result.tags:
        print(f"  {tag.label:>4}  at ({tag.anchor[0]}, {tag.anchor[1]})  mask {tag.mask_index}  {tag.area} px")
    if not result.tags:
        print("  no region kept 110 pixels or more; the official pipeline skips such images")
    if args.json_path:
        payload = {"image": str(args.image), "output": str(args.output), **result.to_dict()}
        write_text(args.json_path, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 0
