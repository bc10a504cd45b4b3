"""SoM-LLaVA training data: "list items one by one" samples, QA samples, LLaVA conversation files, mixing.

Records are LLaVA's conversation format (``haotian-liu/LLaVA:llava/train/train.py``,
``LazySupervisedDataset``), one JSON list per file::

    {"id": "000000000025", "image": "coco/som_train2017/000000000025.jpg",
     "conversations": [{"from": "human", "value": "<image>\\n<instruction>"},
                       {"from": "gpt", "value": "1. ...\\n2. ..."}]}

Turns alternate ``human`` / ``gpt`` starting with ``human``; a record with an ``image`` has exactly
one ``<image>`` placeholder, in a human turn. A record without ``image`` is text-only (LLaVA's
ShareGPT part).

* Listing samples: the instruction is drawn from the 42 paraphrases the release ships
  (``instruction_pool.txt``, from ``zzxslp/SoM-LLaVA:prompts.py``), the answer is a numbered list in
  tag order. Items the annotator cannot identify (hidden objects) are said to be uncertain, as the
  GPT-4V prompt of the paper asks.
* QA samples: free questions about tagged images (the paper's 20k QA set was written by GPT-4V).
* On the shapes world (``zoo.data.shapes``) answers come from the scene's ground truth: tags are
  drawn on the objects' masks, so tag k names the object whose mask received it.
* ``mix`` combines SoM records with plain LLaVA records by a ratio (the release's
  ``som_llava_mix695k.json`` is ``llava_v1_5_mix665k`` + 30k SoM records).
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from zoo.errors import ConfigError

logger = logging.getLogger("zoo.som_llava")

IMAGE_TOKEN = "<image>"
HUMAN, GPT = "human", "gpt"


# --------------------------------------------------------------------------- instructions


@lru_cache(maxsize=1)
def instruction_pool() -> tuple[str, ...]:
    """The 42 listing instructions of the SoM-LLaVA release, in their official order."""
    text = resources.files("zoo.multimodal.som_llava").joinpath("instruction_pool.txt").read_text(encoding="utf-8")
    pool = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if len(pool) != 42:
        raise ConfigError(f"instruction_pool.txt holds {len(pool)} instructions, expected 42; reinstall zoo.")
    return pool


def sample_instruction(rng: random.Random) -> str:
    """One instruction drawn uniformly from :func:`instruction_pool`."""
    return rng.choice(instruction_pool())


# --------------------------------------------------------------------------- answers


@dataclass
class Item:
    """What one tag points at: ``text`` names it; ``sure=False`` marks an item the annotator could not
    identify for certain (mostly hidden, cut off), which the answer says explicitly."""

    label: str
    text: str
    sure: bool = True


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    if not text:
        raise ConfigError("An item needs a non-empty description.")
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def item_line(item: Item) -> str:
    """``"3. A red circle."``; an uncertain item reads ``"3. Not sure: possibly a red circle, ..."``."""
    if item.sure:
        return f"{item.label}. {_sentence(item.text)}"
    text = " ".join(str(item.text).split())
    return f"{item.label}. Not sure: possibly {text[0].lower() + text[1:] if text else 'an object'}" + (
        "" if text.endswith(".") else ".")


def listing_answer(items: Sequence[Item]) -> str:
    """The numbered list, one item per line, in tag order (the order of ``items``)."""
    if not items:
        raise ConfigError("A listing answer needs at least one tagged item.")
    return "\n".join(item_line(item) for item in items)


# --------------------------------------------------------------------------- records


def record(id: str, image: str | None, turns: Sequence[tuple[str, str]]) -> dict:
    """A LLaVA record from ``(question, answer)`` pairs; the first question gets ``<image>\\n`` in front
    when there is an image and none of the questions has the placeholder yet."""
    if not turns:
        raise ConfigError(f"record {id!r}: a conversation needs at least one (question, answer) pair.")
    conversations = []
    needs_image = image is not None and not any(IMAGE_TOKEN in q for q, _ in turns)
    for index, (question, answer) in enumerate(turns):
        if needs_image and index == 0:
            question = f"{IMAGE_TOKEN}\n{question}"
        conversations += [{"from": HUMAN, "value": question}, {"from": GPT, "value": answer}]
    out = {"id": str(id)}
    if image is not None:
        out["image"] = str(image)
    out["conversations"] = conversations
    validate_record(out)
    return out


def listing_record(id: str, image: str, items: Sequence[Item], rng: random.Random,
                   instruction: str | None = None) -> dict:
    """A "list items one by one" record: a pool instruction and the numbered answer."""
    return record(id, image, [(instruction or sample_instruction(rng), listing_answer(items))])


def qa_record(id: str, image: str | None, qa_pairs: Sequence[tuple[str, str]]) -> dict:
    """A question-answering record (one or more turns) about a (tagged) image."""
    return record(id, image, list(qa_pairs))


def validate_record(item: Any, where: str = "record") -> None:
    """Raise ConfigError (saying what is wrong) unless ``item`` is a valid LLaVA conversation record."""
    if not isinstance(item, dict):
        raise ConfigError(f"{where} is a {type(item).__name__}, not a JSON object.")
    turns = item.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ConfigError(f"{where} has no 'conversations' list.")
    images = 0
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ConfigError(f"{where}: turn {index} must be an object with 'from' and a string 'value'.")
        if turn.get("from") != (HUMAN if index % 2 == 0 else GPT):
            raise ConfigError(f"{where}: turn {index} is from {turn.get('from')!r}; turns must alternate "
                              "'human' / 'gpt', starting with 'human'.")
        count = turn["value"].count(IMAGE_TOKEN)
        if count and turn["from"] != HUMAN:
            raise ConfigError(f"{where}: turn {index} (gpt) contains {IMAGE_TOKEN}.")
        images += count
    if "image" in item:
        if not isinstance(item["image"], str) or not item["image"]:
            raise ConfigError(f"{where}: 'image' must be a relative path string.")
        if images > 1:
            raise ConfigError(f"{where} has {images} {IMAGE_TOKEN} placeholders for one image.")
    elif images:
        raise ConfigError(f"{where} has {IMAGE_TOKEN} in its text but no 'image'.")


def read_conversations(path: str | os.PathLike) -> list[dict]:
    """Records of a LLaVA conversation file (a JSON list, or JSON Lines); every record is validated."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"Conversation file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            items = json.loads(text)
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not a JSON list or JSON Lines file of LLaVA records: {err}") from err
    for index, item in enumerate(items):
        validate_record(item, f"{path} record {index}")
    return items


def write_conversations(records: Iterable[dict], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write records as LLaVA's JSON list, atomically; refuses to replace a file unless ``overwrite``."""
    from zoo.files import write_text
    from zoo.multimodal.som_llava.tags import refuse_existing

    records = list(records)
    for index, item in enumerate(records):
        validate_record(item, f"record {index}")
    refuse_existing(path, overwrite)
    return write_text(path, json.dumps(records, ensure_ascii=False, indent=1) + "\n")


def mix(som: Sequence[dict], plain: Sequence[dict], *, som_fraction: float | None = None, seed: int = 0) -> list[dict]:
    """Plain LLaVA records plus SoM records, shuffled with ``seed``.

    ``som_fraction=None`` keeps every record of both (as the release's 665k + 30k mix). Otherwise
    all plain records are kept and enough SoM records are drawn (without replacement) that they make
    up ``som_fraction`` of the result; asking for more SoM records than exist raises ConfigError.
    """
    rng = random.Random(seed)
    chosen = list(som)
    if som_fraction is not None:
        if not 0.0 <= float(som_fraction) < 1.0:
            raise ConfigError(f"som_fraction must be in [0, 1), got {som_fraction}")
        wanted = round(float(som_fraction) / (1.0 - float(som_fraction)) * len(plain))
        if wanted > len(chosen):
            raise ConfigError(f"som_fraction={som_fraction} needs {wanted} SoM records next to {len(plain)} plain "
                              f"ones, but only {len(chosen)} exist; lower the fraction or make more.")
        chosen = rng.sample(chosen, wanted)
    out = list(plain) + chosen
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------- shapes world

# Question of the caption records (the plain-caption baseline and the caption part of the SoM mix).
CAPTION_QUESTION = "Describe the image briefly."
# Below this visible share of its own shape an object is "mostly hidden": its listing item is uncertain.
SURE_FRACTION = 0.5


@dataclass
class ShapesScene:
    """A rendered shapes-world scene: ``spec`` (``zoo.data.shapes`` render spec), ``image`` (PIL RGB),
    ``masks`` (visible pixels per object, bool ``[S, S]``), ``full_masks`` (each object drawn alone),
    ``caption`` (the world's template caption)."""

    id: str
    spec: dict
    image: Any
    masks: list
    full_masks: list
    caption: str

    @property
    def objects(self) -> list[dict]:
        return self.spec["objects"]


def shapes_scenes(n: int, *, size: int = 128, seed: int = 0, overlap_prob: float = 0.0, start: int = 0
                  ) -> list[ShapesScene]:
    """``n`` rendered shapes-world scenes (``zoo.data.shapes.sample_scene``, seeded per scene).

    The world never lets objects overlap; with ``overlap_prob`` a scene of two or more objects
    gets its second object moved onto the first (drawn later, it hides part of it), so listing
    answers can show the uncertain phrasing for hidden objects.
    """
    import numpy as np

    from zoo.data import shapes as world

    scenes = []
    for index in range(start, start + int(n)):
        for attempt in range(20):  # the world's layout gives up on a few draws: draw again
            rng = np.random.default_rng([int(seed), index, attempt, 0x50A])
            try:
                spec = world.sample_scene(rng)
                break
            except ConfigError:
                continue
        else:
            raise ConfigError(f"shapes_scenes: no layout for scene {index} after 20 draws; change the seed.")
        if len(spec["objects"]) >= 2 and rng.random() < overlap_prob:
            first, second = spec["objects"][0], spec["objects"][1]
            angle = rng.uniform(0, 2 * np.pi)
            reach = float(rng.uniform(0.05, 0.3)) * (first["size"] + second["size"])
            cx = float(np.clip(first["center"][0] + reach * np.cos(angle), second["size"] / 2, 1 - second["size"] / 2))
            cy = float(np.clip(first["center"][1] + reach * np.sin(angle), second["size"] / 2, 1 - second["size"] / 2))
            second["center"] = (round(cx, 4), round(cy, 4))
        image, masks = world.render(spec, int(size))
        full = [world.render({"background": spec["background"], "objects": [obj]}, int(size))[1][0]
                for obj in spec["objects"]]
        caption = world.caption_for(spec["objects"])[0]
        scenes.append(ShapesScene(f"{index:06d}", spec, image, masks, full, caption))
    return scenes


def scenes_from_manifest(path, *, size: int = 128, limit: int | None = None) -> list[ShapesScene]:
    """Scenes of a ``zoo.data.shapes`` manifest (e.g. ``demo_manifest("heldout")``), re-rendered at ``size``."""
    from zoo.data import shapes as world

    scenes = []
    for scene in world.read_manifest(path)[:limit]:
        spec = scene.to_spec()
        image, masks = world.render(spec, int(size))
        full = [world.render({"background": spec["background"], "objects": [obj]}, int(size))[1][0]
                for obj in spec["objects"]]
        scenes.append(ShapesScene(str(scene.id), spec, image, masks, full, scene.caption))
    return scenes


def scene_items(tagged, scene: ShapesScene, *, sure_fraction: float = SURE_FRACTION) -> list[Item]:
    """Listing items of a tagged scene, in tag order, from the ground truth: tag k names the object
    whose mask received it (``tag.mask_index``). An object showing less than ``sure_fraction`` of its
    own shape is listed as uncertain ("Not sure: possibly ..., mostly hidden ...")."""
    from zoo.data.shapes import describe

    items = []
    for tag in tagged.tags:
        obj = scene.objects[tag.mask_index]
        full = int(scene.full_masks[tag.mask_index].sum())
        sure = full > 0 and tag.area / full >= sure_fraction
        text = describe(obj) + ("" if sure else ", mostly hidden behind another shape")
        items.append(Item(tag.label, text, sure))
    return items


def tag_scene(scene: ShapesScene, *, labels: str = "numbers", min_area: int = 12, font_size: float = 9):
    """Tag a scene on its ground-truth masks at its own size (the official 640 px / 110 px / 18 pt
    suit photos; small scenes use a smaller minimum area and font)."""
    from zoo.multimodal.som_llava.tags import tag_image

    return tag_image(scene.image, scene.masks, resize=None, labels=labels, min_area=min_area, font_size=font_size)


def yes_no_questions(scene: ShapesScene, rng: random.Random, *, count: int = 2) -> list[tuple[str, str]]:
    """POPE-style questions "Is there a red circle in the image?" with "Yes" / "No", alternating.

    Present pairs come from the scene's objects; absent ones are colour-shape pairs no object has
    (POPE's "random" negatives).
    """
    from zoo.data import shapes as world

    present = sorted({(o["color"], o["shape"]) for o in scene.objects})
    absent = [(c, s) for c in world.COLORS for s in world.SHAPES if (c, s) not in set(present)]
    out = []
    for index in range(count):
        pool, answer = (present, "Yes") if index % 2 == 0 else (absent, "No")
        color, shape = rng.choice(pool)
        article = "an" if color[0] in "aeiou" else "a"
        out.append((f"Is there {article} {color} {shape} in the image?", answer))
    return out


def tag_questions(tagged, scene: ShapesScene, rng: random.Random, count: int = 1) -> list[tuple[str, str]]:
    """Questions about tags ("What color is the object tagged 2?") answered from the ground truth."""
    out = []
    for _ in range(count):
        tag = rng.choice(tagged.tags)
        obj = scene.objects[tag.mask_index]
        if rng.random() < 0.5:
            out.append((f"What color is the object tagged {tag.label}?", obj["color"].capitalize() + "."))
        else:
            out.append((f"What shape is the object tagged {tag.label}?", obj["shape"].capitalize() + "."))
    return out


def build_shapes_dataset(scenes: Sequence[ShapesScene], out_dir: str | os.PathLike, *, kind: str = "som",
                         seed: int = 0, min_area: int = 12, font_size: float = 9, overwrite: bool = False) -> Path:
    """LLaVA records from shapes-world scenes: writes ``images/`` and ``conversations.json`` in ``out_dir``.

    ``kind="som"``: per scene a caption record (plain image), a listing record (tagged image, an
    instruction from the pool, the ground-truth list in tag order) and a QA record (a tag question
    and two POPE-style yes/no questions on the tagged image). ``kind="captions"``: the same number
    of records, all plain captions (the baseline trained on the same steps without SoM data).
    Record paths are relative to ``out_dir``. Scenes without a region of ``min_area`` pixels get no
    SoM records, as the official pipeline skips images without a surviving mask.
    """
    if kind not in ("som", "captions"):
        raise ConfigError(f"kind must be 'som' or 'captions', got {kind!r}")
    out_dir = Path(out_dir).expanduser()
    target = out_dir / "conversations.json"
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} exists; pass overwrite=True to rebuild it.")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records, skipped = [], 0
    for scene in scenes:
        plain = f"images/{scene.id}.png"
        scene.image.save(out_dir / plain)
        caption = record(f"{scene.id}-caption", plain, [(CAPTION_QUESTION, _sentence(scene.caption))])
        if kind == "captions":
            records += [caption, dict(caption, id=f"{scene.id}-caption-2"), dict(caption, id=f"{scene.id}-caption-3")]
            continue
        records.append(caption)
        tagged = tag_scene(scene, min_area=min_area, font_size=font_size)
        if not tagged.tags:
            skipped += 1
            continue
        tagged_path = f"images/{scene.id}-som.png"
        tagged.image.save(out_dir / tagged_path)
        records.append(listing_record(f"{scene.id}-listing", tagged_path, scene_items(tagged, scene), rng))
        qa = tag_questions(tagged, scene, rng) + yes_no_questions(scene, rng)
        rng.shuffle(qa)  # any question may come first, right after the image
        records.append(qa_record(f"{scene.id}-qa", tagged_path, qa))
    if skipped:
        logger.warning("%d scene(s) had no region of %d px or more; they got no SoM records", skipped, min_area)
    return write_conversations(records, target, overwrite=overwrite)
