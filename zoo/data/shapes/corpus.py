"""Seeded generation of shapes-world corpora, their JSONL manifests, and the bundled set."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError, OutputExistsError
from zoo.files import staging_folder, write_json

from .world import (
    BACKGROUND_TEXTURES, BACKGROUNDS, COLORS, CONCEPTS, MAX_SIZE, SHAPES, TEXTURES, UNUSED_LOOKS, Scene, ShapeObject,
    caption_for, layout, render, tags_for,
)

__all__ = ["generate", "sample_scene", "read_manifest", "demo_manifest", "load_masks", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_SIZE_RANGES = {1: (0.22, 0.42), 2: (0.2, 0.4), 3: (0.2, 0.34), 4: (0.2, 0.3)}  # by object count


def _random_object(rng: np.random.Generator) -> dict:
    shape = str(rng.choice(SHAPES))
    texture = "plain" if rng.random() < 0.55 else str(rng.choice(TEXTURES[1:]))
    if (shape, texture) in UNUSED_LOOKS:
        texture = "plain"
    return {"shape": shape, "color": str(rng.choice(list(COLORS))), "texture": texture, "mark": None,
            "concept": None}


def sample_scene(rng: np.random.Generator, concept: str | None = None) -> dict:
    """One random scene spec with every object placed (sizes and centres rounded to 1e-4).

    1-4 objects (probabilities 0.2/0.35/0.25/0.2) on a plain (half the time) or textured
    background; in scenes of 3-4 objects an object repeats an earlier one's look with
    probability 0.35 (numeracy). Objects never overlap (boxes at least 0.05 apart); in
    two-object scenes the sizes differ by at most 1.25x or at least 1.7x and one axis clearly
    dominates the centres' offset, so the caption's relation is unambiguous. ``concept`` puts
    that concept's object first.

    Raises ConfigError if the objects cannot be placed even after shrinking them (not seen with 1-4 objects).
    """
    count = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.25, 0.2]))
    background = {"color": str(rng.choice(list(BACKGROUNDS))),
                  "texture": "plain" if rng.random() < 0.5 else str(rng.choice(BACKGROUND_TEXTURES[1:]))}
    objects = []
    for k in range(count):
        if k == 0 and concept is not None:
            look = CONCEPTS[concept]
            objects.append({"shape": look.shape, "color": look.color, "texture": look.texture, "mark": look.mark,
                            "concept": look.id})
            continue
        ordinary = [o for o in objects if o["concept"] is None]
        if count >= 3 and ordinary and rng.random() < 0.35:
            objects.append(dict(ordinary[int(rng.integers(len(ordinary)))]))
        else:
            objects.append(_random_object(rng))
    low, high = _SIZE_RANGES[count]
    for obj in objects:
        obj["size"] = round(float(rng.uniform(low, high)), 4)
    if count == 2:
        if rng.random() < 0.3:  # a clear size difference: captions say "bigger/smaller than"
            big = round(float(rng.uniform(0.38, 0.44)), 4)
            small = round(big / float(rng.uniform(1.7, 1.9)), 4)
            objects[0]["size"], objects[1]["size"] = (big, small) if rng.random() < 0.5 else (small, big)
        else:
            while max(o["size"] for o in objects) > 1.25 * min(o["size"] for o in objects):
                objects[1]["size"] = round(float(rng.uniform(low, high)), 4)
    spec = {"background": background, "objects": objects}
    placed = None
    for _ in range(50):
        try:
            placed = layout(spec, rng)
        except ConfigError:  # no room for these sizes: shrink every object by 10% and try again
            spec["objects"] = [dict(o, size=round(o["size"] * 0.9, 4)) for o in spec["objects"]]
            continue
        if count != 2:
            return placed
        (ax, ay), (bx, by) = (o["center"] for o in placed["objects"])
        if min(abs(ax - bx), abs(ay - by)) <= 0.6 * max(abs(ax - bx), abs(ay - by)):
            return placed
    if placed is None:
        raise ConfigError(f"sample_scene: could not place {count} objects.")
    return placed


def _concept_schedule(n: int, seed: int, concept_images: int, concepts: list[str]) -> dict[int, str]:
    if not concepts or concept_images <= 0:
        return {}
    per_concept = min(concept_images, n // (2 * len(concepts)))
    order = np.random.default_rng([seed, 0xC0C0]).permutation(n)
    return {int(order[j]): concepts[j // per_concept] for j in range(per_concept * len(concepts))}


def generate(out_dir, n: int, size: int = 64, seed: int = 0, *, concept_images: int = 10,
             concepts: list[str] | None = None, overwrite: bool = False, progress: bool = False) -> Path:
    """Write ``n`` scenes to ``out_dir`` and return the path of its ``manifest.jsonl``.

    Layout: ``images/<id>.png`` (RGB, ``size`` x ``size``), ``masks/<id>_<k>.png`` (1-bit, one per
    object, the object's visible pixels), ``manifest.jsonl`` (one row per scene; paths relative
    to the folder) and ``info.json`` (the settings). Scene ``i`` depends only on ``(seed, i)``,
    except which scenes show a concept: each concept of ``concepts`` (default: all of
    :data:`CONCEPTS`) appears in ``min(concept_images, n // (2 * len(concepts)))`` scenes.
    The same arguments give byte-identical files. The folder is written beside the target and
    swapped in at the end; a non-empty ``out_dir`` raises ``OutputExistsError`` unless
    ``overwrite=True``.
    """
    from PIL import Image

    from zoo.data import write_manifest

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"generate: n must be a positive number of scenes, got {n!r}.")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= MAX_SIZE:
        raise ConfigError(f"generate: size must be an integer from 16 to {MAX_SIZE} pixels, got {size!r}.")
    concepts = list(CONCEPTS) if concepts is None else list(concepts)
    for name in concepts:
        if name not in CONCEPTS:
            raise ConfigError(f"generate: unknown concept {name!r}; the concepts are {', '.join(CONCEPTS)}.")
    target = Path(os.fspath(out_dir)).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} is a file; give a folder for the shapes corpus.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"{target} is not empty; pass overwrite=True (CLI: --overwrite) to replace it, "
                                "or choose another folder.")
    schedule = _concept_schedule(int(n), int(seed), int(concept_images), concepts)
    width = max(6, len(str(int(n) - 1)))
    rows = []
    with staging_folder(target) as staging:  # swapped in only once every file is written
        (staging / "images").mkdir()
        (staging / "masks").mkdir()
        indices = range(int(n))
        if progress:
            from tqdm import tqdm

            indices = tqdm(indices, desc="shapes", unit="scene")
        for index in indices:
            concept = schedule.get(index)
            spec = sample_scene(np.random.default_rng([int(seed), index]), concept)
            scene_id = f"{index:0{width}d}"
            image, masks = render(spec, int(size))
            image.save(staging / "images" / f"{scene_id}.png", format="PNG")
            objects = []
            for k, (obj, mask) in enumerate(zip(spec["objects"], masks)):
                ys, xs = np.nonzero(mask)
                mask_name = f"masks/{scene_id}_{k}.png"
                Image.fromarray(mask).save(staging / mask_name, format="PNG")
                objects.append({"shape": obj["shape"], "color": obj["color"], "texture": obj["texture"],
                                "mark": obj["mark"], "concept": obj["concept"], "size": obj["size"],
                                "center": list(obj["center"]),
                                "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                                "mask": mask_name})
            caption, relation = caption_for(objects)
            row = {"id": scene_id, "path": f"images/{scene_id}.png", "size": int(size),
                   "background": spec["background"], "objects": objects, "caption": caption,
                   "tags": tags_for(objects, relation), "concept": concept}
            if concept is not None:
                row["concept_caption"] = caption_for(objects, {0: f"<{concept}>"})[0]
            rows.append(row)
        write_manifest(rows, staging / "manifest.jsonl")
        write_json(staging / "info.json", {"generator": "zoo.data.shapes", "format_version": FORMAT_VERSION,
                                           "n": int(n), "size": int(size), "seed": int(seed),
                                           "concept_images": int(concept_images), "concepts": concepts}, indent=1)
    return target / "manifest.jsonl"


def read_manifest(path) -> list[Scene]:
    """Scenes of a shapes manifest, image and mask paths made absolute against its folder.

    Reads with :func:`zoo.data.read_manifest`; a row missing a field raises ``ConfigError``
    naming the file, the scene and the field.
    """
    from zoo.data import read_manifest as read_rows
    from zoo.data import resolve_path

    manifest = Path(os.fspath(path)).expanduser()
    base = manifest.resolve().parent
    scenes = []
    for number, row in enumerate(read_rows(manifest), 1):
        where = f"{manifest}, scene {number} ({row.get('id', '?')})"
        try:
            objects = []
            for k, obj in enumerate(row["objects"]):
                mask = None if obj.get("mask") is None else resolve_path(obj["mask"], base)
                objects.append(ShapeObject(shape=obj["shape"], color=obj["color"], size=float(obj["size"]),
                                           center=tuple(obj["center"]), texture=obj.get("texture", "plain"),
                                           mark=obj.get("mark"), concept=obj.get("concept"),
                                           bbox=None if obj.get("bbox") is None else tuple(obj["bbox"]), mask=mask))
            scenes.append(Scene(id=str(row["id"]), image=row["path"], objects=objects, caption=row["caption"],
                                tags=list(row.get("tags", [])), concept=row.get("concept"),
                                concept_caption=row.get("concept_caption"), size=int(row.get("size", 64)),
                                background=dict(row.get("background") or {"color": "white", "texture": "plain"})))
        except KeyError as error:
            raise ConfigError(f"{where}: missing field {error.args[0]!r}; shapes manifests are written by "
                              "zoo.data.shapes.generate.") from None
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}: malformed field ({error}).") from None
    return scenes


def load_masks(scene: Scene) -> list[np.ndarray]:
    """The scene's object masks as bool arrays (size, size), in object order (``zoo.image.load_mask``).

    Raises ``ConfigError`` when an object has no mask path and ``ImageInputError`` naming the file when a
    mask cannot be read.
    """
    from zoo.image import load_mask

    masks = []
    for k, obj in enumerate(scene.objects):
        if obj.mask is None:
            raise ConfigError(f"Scene {scene.id}: object {k} has no mask path.")
        masks.append(load_mask(obj.mask, of=f"scene {scene.id}"))
    return masks


def demo_manifest(split: str = "train") -> Path:
    """The bundled 64 px shapes set: ``"train"`` (300 scenes) or ``"heldout"`` (100 scenes).

    Raises ConfigError for any other split.
    """
    from zoo.data import DEMO_ROOT

    if split not in ("train", "heldout"):
        raise ConfigError(f"demo_manifest: split must be 'train' or 'heldout', got {split!r}.")
    return DEMO_ROOT / "shapes" / split / "manifest.jsonl"
