"""Shapes-world pretraining data for the demo's small Show-o base (``stage.name: vq`` / ``base``).

Show-o's own pretraining (captions for text-to-image, captioning/VQA for understanding) is what
UniCTokens starts from; offline, the demo pretrains a small base the same way on shapes-world
scenes: the caption is the text-to-image condition, and one question about the scene (from
``zoo.data.shapes.judge.sample_questions``, or "Describe the image." with the caption as answer)
is the understanding sample. Questions change with the epoch (``set_epoch``) and the seed.
"""
from __future__ import annotations

import numpy as np
import torch

from zoo.errors import ConfigError

__all__ = ["ShapesPretrainSet", "collate_pretrain", "format_answer", "scene_questions"]


def format_answer(answer: str) -> str:
    """Judge answers as the concept data writes them: "Yes." / "No." / "purple."."""
    return {"yes": "Yes.", "no": "No."}.get(answer, answer + ".")


def scene_questions(scene, rng) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs about a scene: judge questions plus a description request."""
    from zoo.data.shapes.judge import sample_questions

    pairs = [(q, format_answer(a)) for q, a, _ in sample_questions(scene, rng)]
    pairs.append(("Describe the image.", scene.caption[0].upper() + scene.caption[1:] + "."))
    return pairs


def _manifest(value):
    from pathlib import Path

    from zoo.data.shapes import demo_manifest

    if value in (None, "", "demo"):
        return demo_manifest("train")
    if value == "heldout":
        return demo_manifest("heldout")
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.manifest {value!r} is not a shapes manifest file; give a manifest.jsonl written by "
                          "zoo.data.shapes.generate, or 'demo'.")
    return path


class ShapesPretrainSet(torch.utils.data.Dataset):
    """Shapes scenes as pretraining items: ``pixel_values`` and (``with_text``) the caption's ids and an
    encoded question/answer (``input_ids``/``labels`` of the Show-o chat format)."""

    def __init__(self, model, manifest="demo", *, with_text: bool = True, seed: int = 0):
        from zoo.data.shapes import read_manifest

        self.scenes = read_manifest(_manifest(manifest))
        if not self.scenes:
            raise ConfigError(f"{manifest} lists no scenes.")
        self.model, self.with_text, self.seed = model, with_text, seed
        self.transform = model.image_transform()
        self.epoch = 0
        self._pixels = {}
        self.codes = None
        if with_text:  # the image tokenizer is frozen while the LLM trains: encode every image once
            pixels = torch.stack([self._image(i) for i in range(len(self.scenes))])
            self.codes = torch.cat([model.encode_images(chunk) for chunk in pixels.split(32)]).cpu()
            self._pixels = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.scenes)

    def _image(self, index: int) -> torch.Tensor:
        if index not in self._pixels:  # small corpora: decode each image once
            self._pixels[index] = self.transform(self.scenes[index].image)
        return self._pixels[index]

    def __getitem__(self, index: int) -> dict:
        from zoo.text import encode_conversation

        if not self.with_text:
            return {"pixel_values": self._image(index)}
        item = {"codes": self.codes[index]}
        scene = self.scenes[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        pairs = scene_questions(scene, rng)
        question, answer = pairs[int(rng.integers(len(pairs)))]
        encoded = encode_conversation(self.model.tokenizer, [{"from": "human", "value": question},
                                                            {"from": "gpt", "value": answer}], "showo")
        item.update(caption=self.model.text_ids([scene.caption])[0], input_ids=encoded["input_ids"],
                    labels=encoded["labels"])
        return item


def collate_pretrain(items: list[dict], pad_id: int) -> dict:
    """Images: ``{"pixel_values"}``; with text, ``{"t2i": {codes, text_ids}, "mmu": {codes, input_ids, labels}}``
    (codes: the frozen tokenizer's, computed once)."""
    if "caption" not in items[0]:
        return {"pixel_values": torch.stack([item["pixel_values"] for item in items])}
    codes = torch.stack([item["codes"] for item in items])
    width = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, :len(item["input_ids"])] = item["input_ids"]
        labels[row, :len(item["labels"])] = item["labels"]
    return {"t2i": {"codes": codes, "text_ids": [item["caption"] for item in items]},
            "mmu": {"codes": codes, "input_ids": ids, "labels": labels}}
