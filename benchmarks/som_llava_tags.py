"""Set-of-Mark tag placement: zoo's tagger vs a straightforward per-mask reference (no cv2).

Scenes imitate what SoM-LLaVA's segmenter hands the tagger: COCO-sized images resized to a
shortest side of 640 (640 x 853), each with 30-90 masks from a few pixels to a quarter of the
image (discs, boxes, diamonds, and some ragged blobs), plus one whole-image background mask.
Both implementations place the tags of the same scenes; the script checks that every tag (label,
anchor, source mask, area, box) is identical and prints images/s of both and their ratio,
measured in this run. Drawing (matplotlib, the same for both) is timed separately.

    python benchmarks/som_llava_tags.py [--images 6] [--repeats 3] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np

from _timing import best_time
from zoo.multimodal.som_llava.tags import draw_tags, place_tags, place_tags_reference

HEIGHT, WIDTH = 640, 853


def scene_masks(rng: np.random.Generator) -> list[np.ndarray]:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    masks = []
    for _ in range(int(rng.integers(30, 90))):
        cy, cx = int(rng.integers(0, HEIGHT)), int(rng.integers(0, WIDTH))
        radius = int(rng.choice([5, 10, 20, 35, 60, 100, 160], p=[.12, .2, .22, .2, .13, .09, .04]))
        kind = int(rng.integers(4))
        if kind == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
        elif kind == 1:
            mask = (np.abs(yy - cy) < radius) & (np.abs(xx - cx) < int(radius * rng.uniform(0.5, 2.0)))
        elif kind == 2:
            mask = np.abs(yy - cy) + np.abs(xx - cx) < radius
        else:  # a ragged blob: a disc with a noisy edge
            noise = rng.normal(0, radius * 0.15, (HEIGHT, WIDTH))
            mask = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) + noise < radius
        masks.append(mask)
    masks.append(np.ones((HEIGHT, WIDTH), dtype=bool))  # background ("stuff") mask
    return masks


def signature(tags):
    return [(t.label, t.anchor, t.mask_index, t.area, t.bbox) for t in tags]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    scenes = [scene_masks(rng) for _ in range(args.images)]
    place_tags(scenes[0])  # compile the numba kernel outside the timing

    tags_fast = [place_tags(masks) for masks in scenes]
    tags_slow = [place_tags_reference(masks) for masks in scenes]
    same = all(signature(a) == signature(b) for a, b in zip(tags_fast, tags_slow))
    count = sum(len(t) for t in tags_fast)
    masks_total = sum(len(m) for m in scenes)

    t_fast = best_time(lambda: [place_tags(m) for m in scenes], args.repeats, warmup=False)
    t_slow = best_time(lambda: [place_tags_reference(m) for m in scenes], max(1, args.repeats - 1), warmup=False)
    from PIL import Image

    pictures = [Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)) for _ in scenes]
    t_draw = best_time(lambda: [draw_tags(p, t) for p, t in zip(pictures, tags_fast)], args.repeats, warmup=False)

    n = len(scenes)
    print(f"{n} scenes of {WIDTH}x{HEIGHT}, {masks_total} masks, {count} tags; identical tags: {same}")
    print(f"reference (whole-image ops + scipy EDT per mask): {n / t_slow:8.2f} images/s")
    print(f"zoo place_tags (box-local, exact EDT in numba)  : {n / t_fast:8.2f} images/s")
    print(f"speed-up: {t_slow / t_fast:.1f}x (goal >= 5x)")
    print(f"drawing (matplotlib, as the official visualizer): {n / t_draw:8.2f} images/s; "
          f"tag + draw: zoo {n / (t_fast + t_draw):.2f} vs reference {n / (t_slow + t_draw):.2f} images/s")
    if not same:
        raise SystemExit("tag positions differ between the implementations")


if __name__ == "__main__":
    main()
