"""Concept folders, the shapes-world concept builder, and the stage datasets.

A **concept folder** holds what the official data root spreads over several places
(``concept/train/<name>/``, ``train_images.json``, ``showo_training_data_stage_{1,3}/<name>.json``,
``test_data/<name>.json`` of HF ``HankYang428/unictokens_data``)::

    <folder>/
      info.json                  {"name": "bo", "class": "star", "info": "<bo> is ...",
                                  "conversation_type": "object"|"human", "generation_type": "object"}
      images/*.png|jpg           the training images (k-means, ArcFace, stage-1/3 T2I, understanding)
      cropped/*.png              optional: the stage-2 text-to-image images (default: images/)
      conversations.json         LLaVA records [{"image": "images/a.png", "conversations": [...]}]
      conversations_stage_3.json optional: stage-3 understanding data (default: conversations.json)
      test.json                  optional: evaluation items (same record form plus "type":
                                 "rec" | "vqa" | "text_only"), and "t2i": [{"prompt", "spec"}]

:func:`read_concept_folder` checks it and names the file at fault; :func:`build_shapes_concept`
writes one for a shapes-world concept.

Datasets mirror the official loaders (arctanxarc/UniCTokens:pdata.py) with their augmentation:
understanding images are resized (short side, bicubic) and centre-cropped; text-to-image images
of stage 2 are resized to 1.1x and randomly cropped; every image is flipped with probability 0.25
(a ``RandomHorizontalFlip(0.5)`` applied half the time). The official combined loader is
materialised once (``list(CombinedLoader(..., "max_size_cycle"))``), so its order and augmentation
repeat every epoch; :class:`CombinedSteps` does the same from a seed.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError, ImageInputError, OutputExistsError

logger = logging.getLogger("zoo.unictokens")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_IMAGES = 3


@dataclass
class ConceptData:
    """A checked concept folder (see the module docstring)."""

    folder: Path
    name: str
    class_word: str
    info: str
    kind: str
    images: list[Path]
    cropped: list[Path]
    conversations: list[dict]
    conversations_stage_3: list[dict]
    test: list[dict] = field(default_factory=list)
    t2i_tests: list[dict] = field(default_factory=list)


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and "mask" not in p.name)


def _check_image(path: Path) -> None:
    from zoo.image import load_image

    try:
        load_image(path)
    except ImageInputError as err:
        raise ImageInputError(f"concept image {path} cannot be read ({err}); replace or remove it.") from None


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: a concept folder needs {what}.") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}).") from err


def _records(path: Path, folder: Path) -> list[dict]:
    data = _read_json(path, "LLaVA-style conversation records")
    if not isinstance(data, list):
        raise ConfigError(f"{path} must hold a list of records, got a {type(data).__name__}.")
    out = []
    for index, record in enumerate(data):
        if not isinstance(record, dict) or "conversations" not in record:
            raise ConfigError(f"{path}: record {index} has no 'conversations'.")
        record = dict(record)
        if record.get("image"):
            image = Path(record["image"])
            image = image if image.is_absolute() else folder / image
            if not image.is_file():
                raise ConfigError(f"{path}: record {index} names the image {record['image']!r}, which is not in {folder}.")
            record["image"] = str(image)
        out.append(record)
    return out


def read_concept_folder(folder, *, min_images: int = MIN_IMAGES, check_images: bool = True) -> ConceptData:
    """Read and check a concept folder. Raises ConfigError / ImageInputError naming the file: no
    ``info.json`` or no ``class`` in it, fewer than ``min_images`` images, an unreadable image, a
    missing or malformed ``conversations.json``, a record naming an image that is not there."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"concept folder {folder} does not exist (build one for a shapes concept with "
                          "zoo.multimodal.unictokens.data.build_shapes_concept).")
    info = _read_json(folder / "info.json", 'info.json with at least {"class": "<class word>"}')
    if not isinstance(info, dict) or not str(info.get("class") or "").strip():
        raise ConfigError(f"{folder / 'info.json'} needs a non-empty 'class' (the concept's class word, e.g. \"dog\").")
    name = str(info.get("name") or folder.name)
    images = _images_in(folder / "images") or _images_in(folder)
    if len(images) < min_images:
        raise ConfigError(f"{folder} has {len(images)} training image(s) in images/; UniCTokens needs at least "
                          f"{min_images} (the paper uses 10-15).")
    cropped = _images_in(folder / "cropped") or images
    if check_images:
        for path in dict.fromkeys(images + cropped):
            _check_image(path)
    conversations = _records(folder / "conversations.json", folder)
    stage3 = folder / "conversations_stage_3.json"
    conversations_3 = _records(stage3, folder) if stage3.is_file() else conversations
    test, t2i = [], []
    if (folder / "test.json").is_file():
        data = _read_json(folder / "test.json", "evaluation items")
        items = data.get("items", []) if isinstance(data, dict) else data
        test = [dict(r, image=str(folder / r["image"])) if r.get("image") and not Path(r["image"]).is_absolute()
                else dict(r) for r in items]
        t2i = list(data.get("t2i", [])) if isinstance(data, dict) else []
    kind = str(info.get("conversation_type") or "object")
    return ConceptData(folder=folder, name=name, class_word=str(info["class"]).strip(),
                       info=str(info.get("info") or ""), kind=kind, images=images, cropped=cropped,
                       conversations=conversations, conversations_stage_3=conversations_3, test=test, t2i_tests=t2i)


# ---------------------------------------------------------------------------- the shapes-world concept

def _negative_look(concept, rng) -> dict:
    """A same-class distractor: the concept's shape with another colour or texture and no mark."""
    from zoo.data.shapes import COLORS, TEXTURES

    if rng.random() < 0.5:
        color = str(rng.choice([c for c in COLORS if c != concept.color]))
        return {"shape": concept.shape, "color": color, "texture": concept.texture, "mark": None, "concept": None}
    texture = str(rng.choice([t for t in TEXTURES if t != concept.texture]))
    return {"shape": concept.shape, "color": concept.color, "texture": texture, "mark": None, "concept": None}


def _scene(rng, concept_id: str | None, distractor=None):
    from zoo.data.shapes import sample_scene

    spec = sample_scene(rng, concept_id)
    if distractor is not None:
        spec["objects"][0].update(distractor)
    return spec


def build_shapes_concept(concept: str, folder, *, n_train: int = 10, n_negative: int | None = None, n_test: int = 12,
                         size: int = 64, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a concept folder for a shapes-world concept (``zoo.data.shapes.CONCEPTS``: bo, kiki, ...).

    ``images/``: ``n_train`` scenes showing the concept; ``negative/``: ``n_negative`` without it (half
    with a same-class distractor; default ``n_train``, so "Yes." and "No." recognition answers are
    equally many; the official data has more negatives than positives: 100 random images plus hard
    negatives per concept, arctanxarc/UniCTokens:README.md "UniCTokens Dataset"). ``conversations.json``:
    per training image "Is <c> in the image?" (Yes.), its colour, shape and texture, and a
    description; per negative "Is <c> in the image?" (No.); the records are in a seeded random
    order, because the stage trainer reads them in file order (as the official MMU loader does, no
    shuffling): negatives written last would make every epoch end on "No." batches and bias the
    rows towards "No.". ``test.json``: ``n_test`` held-out scenes with and ``n_test`` without the
    concept (recognition), colour/shape/texture questions (VQA), and generation prompts with their
    specs. Deterministic in ``seed``; written atomically; an existing folder needs ``overwrite``.
    """
    from zoo.data.shapes import CONCEPTS, render
    from zoo.data.shapes.judge import answer_from_objects
    from zoo.files import staging_folder, write_json

    if concept not in CONCEPTS:
        raise ConfigError(f"unknown shapes concept {concept!r}; the concepts are {', '.join(CONCEPTS)}.")
    look = CONCEPTS[concept]
    n_negative = n_train if n_negative is None else int(n_negative)
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise OutputExistsError(f"{folder} exists; pass overwrite=True (CLI: --overwrite) to rebuild the concept folder.")
    rng = np.random.default_rng([seed, 0x5EC])
    tag = f"<{concept}>"

    def objects_of(spec):
        from zoo.data.shapes import ShapeObject

        return [ShapeObject(shape=o["shape"], color=o["color"], size=o["size"], center=tuple(o["center"]),
                            texture=o.get("texture", "plain"), mark=o.get("mark"), concept=o.get("concept"))
                for o in spec["objects"]]

    def qa(spec, question):
        answer = answer_from_objects(objects_of(spec), question)
        return {"yes": "Yes.", "no": "No."}.get(answer, answer + ".")

    with staging_folder(folder) as staging:
        for sub in ("images", "negative"):
            (staging / sub).mkdir()
        records = []
        for i in range(n_train):
            spec = _scene(rng, concept)
            path = f"images/{i:03d}.png"
            render(spec, size)[0].save(staging / path)
            turns = [(f"<image>\nIs {tag} in the image?", qa(spec, f"Is {tag} in the image?")),
                     (f"<image>\nWhat color is {tag}?", qa(spec, f"What color is {tag}?")),
                     (f"<image>\nWhat shape is {tag}?", qa(spec, f"What shape is {tag}?")),
                     (f"<image>\nWhat texture does {tag} have?", qa(spec, f"What texture does {tag} have?")),
                     (f"<image>\nDescribe {tag}.", f"{tag} is {look.phrase()}.")]
            for question, answer in turns:
                records.append({"image": path, "conversations": [{"from": "human", "value": question},
                                                                 {"from": "gpt", "value": answer}]})
        for i in range(n_negative):
            spec = _scene(rng, None, _negative_look(look, rng) if i % 2 == 0 else None)
            path = f"negative/{i:03d}.png"
            render(spec, size)[0].save(staging / path)
            records.append({"image": path, "conversations": [
                {"from": "human", "value": f"<image>\nIs {tag} in the image?"}, {"from": "gpt", "value": "No."}]})
        tests, t2i = [], []
        (staging / "test").mkdir()
        for i in range(2 * n_test):
            positive = i % 2 == 0
            spec = _scene(rng, concept if positive else None,
                          None if positive or i % 4 != 1 else _negative_look(look, rng))
            path = f"test/{i:03d}.png"
            render(spec, size)[0].save(staging / path)
            tests.append({"image": path, "type": "rec", "conversations": [
                {"from": "human", "value": f"<image>\nIs {tag} in the image?"},
                {"from": "gpt", "value": "Yes." if positive else "No."}]})
            if positive:
                for question in (f"What color is {tag}?", f"What texture does {tag} have?", f"What shape is {tag}?"):
                    tests.append({"image": path, "type": "vqa", "conversations": [
                        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": qa(spec, question)}]})
        t2i = [{"prompt": f"A photo of {tag}.", "judge": tag},
               {"prompt": f"{tag} to the left of a red circle", "judge": f"{tag} to the left of a red circle"}]
        # own generator, so the order does not change the scenes drawn after it
        order = np.random.default_rng([seed, 0x0DE]).permutation(len(records))
        write_json(staging / "conversations.json", [records[i] for i in order], indent=1, sort_keys=False)
        write_json(staging / "test.json", {"items": tests, "t2i": t2i}, indent=1, sort_keys=False)
        write_json(staging / "info.json", {"name": concept, "class": look.class_word, "info": f"{tag} is {look.phrase()}.",
                                           "conversation_type": "object", "generation_type": "object",
                                           "source": {"generator": "zoo.data.shapes", "seed": seed, "size": size}},
                   sort_keys=False)
    return folder


# ---------------------------------------------------------------------------- transforms

def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(k) for k in keys]])


def augment_image(path, size: int, rng: np.random.Generator, *, crop: bool = False, flip: bool = True) -> torch.Tensor:
    """pdata.py ``image_transform``: bicubic resize of the short side (to ``int(1.1 * size)`` then a random
    ``size`` crop when ``crop``, else to ``size`` and a centre crop), flip with probability 0.25,
    to [-1, 1]. ``[3, size, size]`` float32."""
    from zoo.image import ImageTransform, load_image

    image = load_image(path)
    if crop:
        big = ImageTransform(resize=int(size * 1.1), interpolation="bicubic").geometry(image)
        top = int(rng.integers(0, big.height - size + 1))
        left = int(rng.integers(0, big.width - size + 1))
        image = big.crop((left, top, left + size, top + size))
        transform = ImageTransform.minus_one_one()
    else:
        transform = ImageTransform.minus_one_one(resize=size, crop=size, interpolation="bicubic")
    tensor = transform(image)
    if flip and rng.random() < 0.5 and rng.random() < 0.5:
        tensor = tensor.flip(-1)
    return tensor


# ---------------------------------------------------------------------------- datasets

@dataclass
class T2IItems:
    """Text-to-image pairs: image paths, one condition per image, augmentation settings."""

    images: list
    conditions: list[str]
    crop: bool = False
    flip: bool = True


@dataclass
class MMUItems:
    """Understanding records (LLaVA form) with the system prefix to put before the first question."""

    records: list[dict]
    prefix: str = ""


class CombinedSteps(torch.utils.data.Dataset):
    """The official ``list(CombinedLoader({"mmu_flow", "t2i_flow"}, "max_size_cycle"))`` as a dataset of steps.

    Step ``i`` holds batch ``i mod n`` of each stream (the shorter one cycles); the text-to-image
    stream is reshuffled at each of its cycles (``DataLoader(shuffle=True)``), understanding keeps
    its order. Orders and augmentations come from ``seed`` and the step index only, so every
    epoch repeats them (as the materialised official list does). Items are whole batches:
    ``{"t2i": {"pixel_values", "text_ids"}, "mmu": {"pixel_values", "input_ids", "labels"}}``.
    """

    def __init__(self, model, image_size: int, t2i: T2IItems | None, mmu: MMUItems | None, *, t2i_batch_size: int = 1,
                 mmu_batch_size: int = 1, seed: int = 0, text_length: int | None = None):
        if t2i is None and mmu is None:
            raise ConfigError("a stage needs text-to-image or understanding data.")
        self.image_size, self.seed = image_size, seed
        self.t2i, self.mmu = t2i, mmu
        self.t2i_batch_size, self.mmu_batch_size = t2i_batch_size, mmu_batch_size
        self.t2i_text = model.text_ids(t2i.conditions) if t2i else []
        self.mmu_encoded = [self._encode(model, r, mmu.prefix) for r in mmu.records] if mmu else []
        self.pad_id = model.vocab.pad_id
        self.text_length = text_length if text_length is not None else int(model.max_text_len)
        self.t2i_batches = math.ceil(len(t2i.images) / t2i_batch_size) if t2i else 0
        self.mmu_batches = math.ceil(len(mmu.records) / mmu_batch_size) if mmu else 0
        if (t2i and not t2i.images) or (mmu and not mmu.records):
            raise ConfigError("a stage stream has no data (no images or no conversation records).")

    @staticmethod
    def _encode(model, record: dict, prefix: str) -> dict:
        from zoo.text import encode_conversation

        turns = copy.deepcopy(record["conversations"])
        first = next(i for i, t in enumerate(turns) if t.get("from", t.get("role")) in ("human", "user"))
        key = "value" if "value" in turns[first] else "content"
        turns[first][key] = prefix + turns[first][key]  # no separator (pdata.py)
        encoded = encode_conversation(model.tokenizer, turns, "showo")
        return {"image": record["image"], "input_ids": encoded["input_ids"], "labels": encoded["labels"]}

    def __len__(self) -> int:
        return max(self.t2i_batches, self.mmu_batches)

    def _t2i_order(self, cycle: int) -> list[int]:
        return _rng(self.seed, 1, cycle).permutation(len(self.t2i.images)).tolist()

    def __getitem__(self, step: int) -> dict:
        item = {}
        if self.t2i:
            cycle, batch = divmod(step, self.t2i_batches)
            order = self._t2i_order(cycle)
            picks = order[batch * self.t2i_batch_size:(batch + 1) * self.t2i_batch_size]
            rng = _rng(self.seed, 2, step)
            item["t2i"] = {
                "pixel_values": torch.stack([augment_image(self.t2i.images[j], self.image_size, rng, crop=self.t2i.crop,
                                                           flip=self.t2i.flip) for j in picks]),
                "text_ids": [self.t2i_text[j] for j in picks]}
        if self.mmu:
            batch = step % self.mmu_batches
            picks = list(range(batch * self.mmu_batch_size, min((batch + 1) * self.mmu_batch_size, len(self.mmu_encoded))))
            rng = _rng(self.seed, 3, step)
            rows = [self.mmu_encoded[j] for j in picks]
            width = max(self.text_length, max(len(r["input_ids"]) for r in rows))
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            labels = torch.full((len(rows), width), -100, dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, :len(row["input_ids"])] = row["input_ids"]
                labels[r, :len(row["labels"])] = row["labels"]
            item["mmu"] = {"pixel_values": torch.stack([augment_image(r["image"], self.image_size, rng) for r in rows]),
                           "input_ids": ids, "labels": labels}
        return item


def first_item(items: list):
    """Collate for :class:`CombinedSteps` (each item is already a batch)."""
    if len(items) != 1:
        raise ConfigError("UniCTokens stage steps are whole batches: set train.batch_size=1 (batch sizes are "
                          "data.t2i_batch_size and data.mmu_batch_size).")
    return items[0]


__all__ = ["ConceptData", "read_concept_folder", "build_shapes_concept", "augment_image", "T2IItems", "MMUItems",
           "CombinedSteps", "first_item", "MIN_IMAGES"]
