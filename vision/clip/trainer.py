"""``zoo train clip``: contrastive image-text training with open_clip's ``ClipLoss`` on the zoo engine.

Data is a JSONL manifest of images with captions (``{"path", "caption"}``, e.g. a shapes-world
manifest), ``demo`` (the bundled 300-scene shapes set) or ``shapes`` (a shapes-world corpus of
``data.shapes.n`` scenes generated into ``<output_dir>/shapes-train`` on first use). The loss is
open_clip's symmetric InfoNCE over the batch (``open_clip/loss.py: ClipLoss``, CLIP paper §2.3),
gathering features across processes under torchrun.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError
from zoo.train import Trainer

logger = logging.getLogger("zoo.clip")


def resolve_manifest(value, output_dir=None, shapes: dict | None = None, split: str = "train") -> Path:
    """The manifest a ``data.*`` value names: a path, ``demo``/``heldout`` (the bundled shapes sets),
    or ``shapes`` (generated into ``output_dir``). Raises ``ConfigError`` for a missing path."""
    from zoo.data.shapes import demo_manifest

    if value in ("demo", "heldout"):
        return demo_manifest("train" if value == "demo" else "heldout")
    if value == "shapes":
        if output_dir is None:
            raise ConfigError("data.train=shapes needs train.output_dir to generate the corpus into.")
        return generated_shapes(Path(output_dir) / f"shapes-{split}", **(shapes or {}))
    if not value:
        raise ConfigError("data.train is not set: give a JSONL manifest of images with captions, 'demo' (bundled "
                          "shapes scenes) or 'shapes' (a generated shapes-world corpus).")
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"manifest {str(value)!r} does not exist; give a JSONL file of {{\"path\", \"caption\"}} "
                          "rows, 'demo' or 'shapes'.")
    return path


def generated_shapes(folder: Path, n: int = 4000, seed: int = 11, size: int = 64) -> Path:
    """A shapes-world corpus in ``folder`` (made once; an existing one with other settings is an error)."""
    import json

    from zoo.data.shapes import generate

    manifest, info = folder / "manifest.jsonl", folder / "info.json"
    if manifest.is_file() and info.is_file():
        recorded = json.loads(info.read_text(encoding="utf-8"))
        if (recorded.get("n"), recorded.get("seed"), recorded.get("size")) != (n, seed, size):
            raise ConfigError(f"{folder} holds a shapes corpus with n={recorded.get('n')}, seed={recorded.get('seed')}, "
                              f"size={recorded.get('size')}, not n={n}, seed={seed}, size={size}; delete it or use "
                              "another train.output_dir.")
        return manifest
    logger.info("generating %d shapes-world scenes (seed %d) into %s", n, seed, folder)
    return generate(folder, int(n), size=int(size), seed=int(seed), overwrite=True)


class CaptionedImages(torch.utils.data.Dataset):
    """Manifest rows with a caption -> ``{"pixel_values": FloatTensor[3, H, W], "caption": str}``.

    ``cache``: keep the decoded RGB pixels in memory (uint8), for small corpora.
    """

    def __init__(self, manifest: Path, transform, *, caption_field: str = "caption", cache: bool = False):
        from zoo.data import read_manifest

        rows = read_manifest(manifest)
        missing = [r["path"] for r in rows if not isinstance(r.get(caption_field), str)]
        if missing:
            raise ConfigError(f"{manifest}: {len(missing)} row(s) have no {caption_field!r} text, e.g. {missing[0]}.")
        if not rows:
            raise ConfigError(f"{manifest} lists no images.")
        self.rows, self.transform, self.field = rows, transform, caption_field
        self.cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        from zoo.image import load_image

        row = self.rows[index]
        if self.cache is not None:
            if index not in self.cache:
                self.cache[index] = np.asarray(load_image(row["path"]), dtype=np.uint8)
            image = self.cache[index]
        else:
            image = load_image(row["path"])
        return {"pixel_values": self.transform(load_image(image)), "caption": row[self.field]}


class ClipTrainer(Trainer):
    """Trains a :class:`~zoo.vision.clip.model.ClipModel` (from ``model.size`` or ``model.init``)."""

    config_defaults = {
        "model": {"size": "tiny", "init": None, "overrides": {}},
        "data": {
            "train": "shapes",        # manifest with captions | demo | shapes (generated, see data.shapes)
            "eval": "heldout",        # manifest | heldout (bundled shapes) | null
            "caption_field": "caption",
            "cache_images": True,     # keep decoded pixels in memory (small corpora)
            "shapes": {"n": 4000, "seed": 11, "size": 64},
            "eval_items": 100,
        },
    }

    def build_model(self):
        """The engine's model (``model.init`` or ``model.size``, see ``Trainer.build_model``) and open_clip's
        ``ClipLoss`` over every rank's features."""
        model = super().build_model()
        from open_clip.loss import ClipLoss

        self.loss = ClipLoss(gather_with_grad=True, rank=self.rank, world_size=self.world_size)
        self.model_ref = model
        return model

    def build_datasets(self):
        data = self.config["data"]
        manifest = resolve_manifest(data["train"], self.output_dir, data["shapes"])
        train = CaptionedImages(manifest, self.model_ref.image_transform, caption_field=data["caption_field"],
                                cache=bool(data["cache_images"]))
        return train, None

    def collate(self, items: list) -> dict:
        return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                "tokens": self.model_ref.tokenize([i["caption"] for i in items])}

    def training_step(self, model, batch) -> dict:
        out = model(batch["pixel_values"], batch["tokens"])
        loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"])
        return {"loss": loss, "logit_scale": out["logit_scale"].detach()}

    def evaluate(self, model) -> dict:
        data = self.config["data"]
        if not data["eval"]:
            return {}
        from zoo.vision.clip.evaluate import retrieval

        manifest = resolve_manifest(data["eval"], self.output_dir, data["shapes"], split="eval")
        return retrieval(self.model_ref, manifest, caption_field=data["caption_field"],
                         max_items=data["eval_items"])
