"""A tiny CLIP for the CPU demo: the pretrained vision tower LLaVA-1.5 assumes, at shapes-world scale.

LLaVA-1.5 never trains its vision tower: it takes OpenAI's contrastively pretrained CLIP ViT-L/14-336
(``--vision_tower openai/clip-vit-large-patch14-336``), freezes it, aligns a projector to it on
captions (``scripts/v1_5/pretrain.sh``) and then tunes on instructions (``finetune.sh``). The demo
needs the same starting point at a size a CPU trains in minutes, so this module pretrains a
transformers ``CLIPModel`` (vision + text towers) with CLIP's symmetric contrastive loss (Radford et
al. 2021, arXiv 2103.00020, Fig. 3) on shapes-world scenes and their captions, through the zoo engine:

    zoo train som-llava --config multimodal/som_llava/recipes/demo-clip.yaml

Pairs: each scene's plain image with its caption, and its Set-of-Mark tagged image with a caption
that names the objects by tag ("1: a red circle; 2: a striped blue square"). Real CLIP reads text in
images because its web data is full of it; a tiny CLIP on shapes alone has no reason to. So each
tagged image also meets a hard negative, the same caption with the numbers moved to other objects,
and can only tell the two apart by reading the digits where they stand (``clip.hard_negatives``).

The trainer ends by printing two checks against chance from the same run, on held-out scenes:
caption retrieval (top-1 among ``clip.eval_group`` candidates) and tag reading (the true numbering
scored above the moved one). ``output_dir/clip`` is then written in transformers' ``CLIPModel``
format, which is what SoM-LLaVA's ``model.components.vision_tower`` loads (as it loads OpenAI's).
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.model import ZooModel, inference
from zoo.train import Trainer

logger = logging.getLogger("zoo.som_llava")

END_OF_TEXT = "<|endoftext|>"  # the token CLIP's text tower pools at (its eos_token_id)

DEFAULT_CLIP_CONFIG = {
    "architecture": "clip",
    # 128 px scenes in 16 px patches: 8 x 8 patch tokens, each big enough to hold a tag's digit
    "vision_config": {"image_size": 128, "patch_size": 16, "hidden_size": 128, "intermediate_size": 512,
                      "num_hidden_layers": 3, "num_attention_heads": 4, "hidden_act": "quick_gelu"},
    "text_config": {"vocab_size": 128, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "max_position_embeddings": 48, "hidden_act": "quick_gelu",
                    # zoo.text.build_tokenizer's layout: <pad> 0, <s> 1, </s> 2, <unk> 3, <|endoftext|> 4
                    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 4},
    "projection_dim": 64,
    "logit_scale_init_value": 2.6592,  # ln(1 / 0.07), CLIP's initial temperature
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "tokenizer": {"repo_id": None, "revision": None, "json": None, "special_tokens": {}},
    "attn_implementation": "zoo",
}


def clip_config(config: dict):
    """transformers ``CLIPConfig`` of a demo CLIP config (the text tower pools at ``<|endoftext|>``)."""
    from transformers import CLIPConfig

    try:
        out = CLIPConfig(vision_config=dict(config["vision_config"]), text_config=dict(config["text_config"]),
                         projection_dim=int(config["projection_dim"]),
                         logit_scale_init_value=float(config["logit_scale_init_value"]))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"demo CLIP config is not a valid CLIPConfig: {err}") from err
    implementation = config.get("attn_implementation") or "zoo"
    if implementation == "zoo":
        from zoo.nn import register_transformers_attention

        register_transformers_attention()
    out._attn_implementation = implementation
    for sub in (out.vision_config, out.text_config):
        sub._attn_implementation = implementation
    return out


class ShapesClipModel(ZooModel):
    """transformers ``CLIPModel`` (``self.clip``) trained on shapes-world scenes; see the module docstring.

    ``encode_images(pixel_values [B, 3, S, S])`` and ``encode_texts(texts or input_ids)`` return
    L2-normalised embeddings ``[B, projection_dim]``; ``save_clip(folder)`` writes the transformers
    folder a LLaVA vision tower loads from.
    """

    family = "som-llava"

    def __init__(self, config: dict):
        super().__init__(config)
        from transformers import CLIPModel

        self.clip = CLIPModel(clip_config(self.config))
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The word-level caption tokenizer embedded in the config (ConfigError when there is none)."""
        if self._tokenizer is None:
            from zoo.multimodal.som_llava.model import tokenizer_from_spec

            spec = self.config.get("tokenizer") or {}
            if not spec.get("json"):
                raise ConfigError("This demo CLIP has no tokenizer in its config; train it with demo-clip.yaml.")
            self._tokenizer = tokenizer_from_spec(spec, int(self.config["text_config"]["max_position_embeddings"]))
        return self._tokenizer

    @property
    def image_transform(self):
        """``zoo.image.ImageTransform``: bicubic resize and centre crop to the tower's size, CLIP mean/std."""
        from zoo.image import ImageTransform

        size = int(self.config["vision_config"]["image_size"])
        return ImageTransform(resize=size, crop=size, interpolation="bicubic", mean=tuple(self.config["image_mean"]),
                              std=tuple(self.config["image_std"]))

    def token_ids(self, text: str) -> list[int]:
        """A caption's ids, ending in ``<|endoftext|>``; ConfigError when longer than the text tower allows."""
        ids = self.tokenizer(f"{text} {END_OF_TEXT}", add_special_tokens=False)["input_ids"]
        limit = int(self.config["text_config"]["max_position_embeddings"])
        if len(ids) > limit:
            raise ConfigError(f"caption {text!r} has {len(ids)} tokens, more than text_config."
                              f"max_position_embeddings={limit}; raise it.")
        return ids

    def tokenize(self, texts: list[str]) -> dict:
        """Texts -> right-padded ``input_ids`` / ``attention_mask`` [B, L]."""
        return pad_texts([self.token_ids(t) for t in texts], self.tokenizer.pad_token_id)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` float [B, 3, S, S] (normalised) -> L2-normalised image embeddings [B, projection_dim]."""
        features = self.clip.get_image_features(pixel_values=pixel_values)
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features, dim=-1)

    def encode_texts(self, texts=None, *, input_ids=None, attention_mask=None) -> torch.Tensor:
        """Captions (``texts``) or ``input_ids``/``attention_mask`` [B, L] -> L2-normalised text embeddings
        [B, projection_dim], pooled at ``<|endoftext|>``."""
        if texts is not None:
            batch = self.tokenize(list(texts))
            input_ids, attention_mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        features = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        features = getattr(features, "pooler_output", features)
        return torch.nn.functional.normalize(features, dim=-1)

    def forward(self, pixel_values, input_ids, attention_mask, negative_ids=None, negative_mask=None,
                has_negative=None) -> dict:
        """CLIP's symmetric InfoNCE loss on a batch of pairs, with optional hard-negative texts.

        ``negative_ids``/``negative_mask`` [B, L]: one extra text per image (used where
        ``has_negative`` [B] bool) that only competes in that image's row of the image-to-text loss.
        Returns ``{"loss", "accuracy"}`` (image-to-text top-1 in the batch).
        """
        images = self.encode_images(pixel_values)
        texts = self.encode_texts(input_ids=input_ids, attention_mask=attention_mask)
        scale = self.clip.logit_scale.exp().clamp(max=100.0)
        logits = scale * images @ texts.T  # [B images, B texts]
        target = torch.arange(len(images), device=images.device)
        image_logits = logits
        if negative_ids is not None and has_negative is not None and bool(has_negative.any()):
            negatives = self.encode_texts(input_ids=negative_ids, attention_mask=negative_mask)
            own = scale * (images * negatives).sum(-1, keepdim=True)  # each image against its own negative
            own = own.masked_fill(~has_negative.to(images.device)[:, None], float("-inf"))
            image_logits = torch.cat([logits, own], 1)
        loss = (torch.nn.functional.cross_entropy(image_logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        return {"loss": loss, "accuracy": (image_logits.argmax(1) == target).float().mean()}

    def save_clip(self, folder) -> Path:
        """Write the transformers ``CLIPModel`` folder (config.json + model.safetensors)."""
        folder = Path(folder)
        self.clip.save_pretrained(folder)
        return folder


def pad_texts(rows: list[list[int]], pad_id: int) -> dict:
    """Id lists -> right-padded ``input_ids`` and ``attention_mask`` LongTensors [B, longest]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# --------------------------------------------------------------------------- data


def tag_caption(tagged, scene) -> str:
    """"1: a red circle; 2: a striped blue square" in tag order."""
    from zoo.data.shapes import describe

    return "; ".join(f"{tag.label}: {describe(scene.objects[tag.mask_index])}" for tag in tagged.tags)


def moved_tag_caption(tagged, scene, rng: random.Random) -> str | None:
    """The tag caption with the numbers moved to other objects (None when that changes nothing)."""
    from zoo.data.shapes import describe

    phrases = [describe(scene.objects[tag.mask_index]) for tag in tagged.tags]
    labels = [tag.label for tag in tagged.tags]
    if len(phrases) == 1:
        other = str(int(labels[0]) + rng.randint(1, 3)) if labels[0].isdigit() else labels[0] + "a"
        return f"{other}: {phrases[0]}"
    shift = rng.randint(1, len(phrases) - 1)
    moved = phrases[shift:] + phrases[:shift]
    if moved == phrases:
        return None
    return "; ".join(f"{label}: {phrase}" for label, phrase in zip(labels, moved))


def build_clip_pairs(scenes, out_dir, *, seed: int = 0, min_area: int = 12, font_size: float = 9,
                     tagged: bool = True, overwrite: bool = False) -> Path:
    """Image-caption pairs of shapes-world scenes: writes ``images/`` and ``pairs.jsonl`` in ``out_dir``.

    Per scene: ``{"image", "text"}`` for the plain image and its caption and, with ``tagged``, one
    for the tagged image with :func:`tag_caption` and ``"negative"`` (:func:`moved_tag_caption`).
    """
    from zoo.files import write_text
    from zoo.multimodal.som_llava.data import tag_scene
    from zoo.multimodal.som_llava.tags import refuse_existing

    out_dir = Path(out_dir).expanduser()
    target = out_dir / "pairs.jsonl"
    refuse_existing(target, overwrite)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for scene in scenes:
        plain = f"images/{scene.id}.png"
        scene.image.save(out_dir / plain)
        lines.append({"image": plain, "text": scene.caption})
        if not tagged:
            continue
        tags = tag_scene(scene, min_area=min_area, font_size=font_size)
        if not tags.tags:
            continue
        path = f"images/{scene.id}-som.png"
        tags.image.save(out_dir / path)
        lines.append({"image": path, "text": tag_caption(tags, scene), "negative": moved_tag_caption(tags, scene, rng)})
    return write_text(target, "".join(json.dumps(line) + "\n" for line in lines))


def read_pairs(path) -> list[dict]:
    """The pairs of a ``pairs.jsonl`` written by :func:`build_clip_pairs`; ConfigError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CLIP pair file {path} does not exist.")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class PairDataset(torch.utils.data.Dataset):
    """Pairs -> ``{"pixel_values", "text_ids", "negative_ids" (or None)}``."""

    def __init__(self, pairs: list[dict], folder: Path, token_ids, transform):
        self.pairs, self.folder, self.token_ids, self.transform = pairs, Path(folder), token_ids, transform

    def tokenize(self, text: str) -> torch.Tensor:
        """A caption's ids (LongTensor [L], ending in ``<|endoftext|>``)."""
        return torch.tensor(self.token_ids(text), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        from zoo.image import load_image

        pair = self.pairs[index]
        negative = pair.get("negative")
        return {"pixel_values": self.transform(load_image(self.folder / pair["image"])),
                "text_ids": self.tokenize(pair["text"]), "negative_ids": self.tokenize(negative) if negative else None}


# --------------------------------------------------------------------------- trainer


class ShapesClipTrainer(Trainer):
    """Contrastive pretraining of the demo's CLIP (see the module docstring)."""

    config_defaults = {
        "model": {"overrides": {}},
        "data": {"scenes": 2000, "size": 128, "seed": 0, "overlap_prob": 0.25, "min_area": 12, "font_size": 9,
                 "tagged": True},
        "clip": {"hard_negatives": True, "eval_scenes": 256, "eval_group": 32, "vocab_size": 400},
    }

    def __init__(self, config: dict):
        super().__init__(config)
        self.pairs: list[dict] | None = None
        self.folder: Path | None = None
        self.model_ref: ShapesClipModel | None = None

    def _prepare(self) -> None:
        if self.pairs is not None:
            return
        from zoo.multimodal.som_llava.data import shapes_scenes

        data = self.config["data"]
        self.folder = Path(self.output_dir or "runs/som-llava-clip") / "data"
        target = self.folder / "pairs.jsonl"
        if not target.is_file():  # made once per run; a resumed run reuses it
            scenes = shapes_scenes(int(data["scenes"]), size=int(data["size"]), seed=int(data["seed"]),
                                   overlap_prob=float(data["overlap_prob"]))
            build_clip_pairs(scenes, self.folder, seed=int(data["seed"]), min_area=int(data["min_area"]),
                             font_size=float(data["font_size"]), tagged=bool(data["tagged"]), overwrite=True)
        self.pairs = read_pairs(target)

    def build_model(self):
        from zoo.config import merge
        from zoo.multimodal.som_llava.model import tokenizer_spec
        from zoo.text import build_tokenizer

        self._prepare()
        texts = [p["text"] for p in self.pairs] + [p["negative"] for p in self.pairs if p.get("negative")]
        tokenizer = build_tokenizer(texts, special_tokens=[END_OF_TEXT], kind="wordlevel",
                                    vocab_size=int(self.config["clip"]["vocab_size"]))
        config = merge(DEFAULT_CLIP_CONFIG, self.config["model"].get("overrides") or {})
        config = merge(config, {"text_config": {"vocab_size": len(tokenizer),
                                                "eos_token_id": tokenizer.convert_tokens_to_ids(END_OF_TEXT),
                                                "pad_token_id": tokenizer.pad_token_id},
                                "tokenizer": tokenizer_spec(tokenizer)})
        model = ShapesClipModel(config)
        model.train()
        self.model_ref = model
        return model

    def build_datasets(self):
        self._prepare()
        model = self.model_ref
        return PairDataset(self.pairs, self.folder, model.token_ids, model.image_transform), None

    def collate(self, items: list) -> dict:
        pad = self.model_ref.tokenizer.pad_token_id
        texts = pad_texts([i["text_ids"].tolist() for i in items], pad)
        batch = {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
                 "input_ids": texts["input_ids"], "attention_mask": texts["attention_mask"]}
        if self.config["clip"]["hard_negatives"] and any(i["negative_ids"] is not None for i in items):
            rows = [(i["negative_ids"] if i["negative_ids"] is not None else i["text_ids"]).tolist() for i in items]
            negatives = pad_texts(rows, pad)
            batch.update(negative_ids=negatives["input_ids"], negative_mask=negatives["attention_mask"],
                         has_negative=torch.tensor([i["negative_ids"] is not None for i in items]))
        return batch

    def training_step(self, model, batch) -> dict:
        out = model(**batch)
        return {"loss": out["loss"], "accuracy": float(out["accuracy"])}

    def on_train_end(self, model) -> None:
        if self.rank != 0:
            return
        if self.output_dir is not None:
            model.save_clip(Path(self.output_dir) / "clip")
        scenes = int(self.config["clip"]["eval_scenes"] or 0)
        if scenes:
            data = self.config["data"]
            report = evaluate_clip(model, scenes=scenes, group=int(self.config["clip"]["eval_group"]),
                                   size=int(data["size"]), seed=int(data["seed"]) + 1,
                                   overlap_prob=float(data["overlap_prob"]), min_area=int(data["min_area"]),
                                   font_size=float(data["font_size"]))
            print_clip_report(report)
            if self.output_dir is not None:
                from zoo.files import write_json

                write_json(Path(self.output_dir) / "eval.json", report)


# --------------------------------------------------------------------------- evaluation


@inference
def evaluate_clip(model: ShapesClipModel, *, scenes: int = 256, group: int = 32, size: int = 128, seed: int = 1,
                  start: int = 100_000, overlap_prob: float = 0.25, min_area: int = 12, font_size: float = 9) -> dict:
    """Held-out checks of the demo CLIP, each with its chance level.

    * retrieval: each plain image's caption ranked first among the captions of its group of
      ``group`` scenes (chance ``1/group``);
    * tag reading: on tagged images with a moved numbering, the true tag caption scores above the
      moved one (chance 0.5).
    """
    from zoo.multimodal.som_llava.data import shapes_scenes, tag_scene

    held_out = shapes_scenes(int(scenes), size=int(size), seed=int(seed), overlap_prob=overlap_prob,
                             start=int(start))
    transform = model.image_transform
    rng = random.Random(seed)
    hits = total = 0
    for begin in range(0, len(held_out) - group + 1, group):
        chunk = held_out[begin:begin + group]
        images = model.encode_images(torch.stack([transform(s.image) for s in chunk]).to(model.device))
        texts = model.encode_texts([s.caption for s in chunk])
        hits += int(((images @ texts.T).argmax(1) == torch.arange(len(chunk), device=images.device)).sum())
        total += len(chunk)
    read = pairs = 0
    for scene in held_out:
        tagged = tag_scene(scene, min_area=min_area, font_size=font_size)
        if not tagged.tags:
            continue
        moved = moved_tag_caption(tagged, scene, rng)
        if moved is None:
            continue
        image = model.encode_images(transform(tagged.image)[None].to(model.device))
        texts = model.encode_texts([tag_caption(tagged, scene), moved])
        scores = (image @ texts.T)[0]
        read += int(scores[0] > scores[1])
        pairs += 1
    return {"retrieval_top1": hits / max(total, 1), "retrieval_chance": 1.0 / group, "retrieval_images": total,
            "tag_reading": read / max(pairs, 1), "tag_reading_chance": 0.5, "tag_reading_pairs": pairs,
            "scenes": len(held_out)}


def print_clip_report(report: dict) -> None:
    """Print :func:`evaluate_clip`'s figures with their chance levels."""
    print(f"Demo CLIP on {report['scenes']} held-out shapes-world scenes")
    print(f"  caption retrieval: top-1 {report['retrieval_top1']:.1%} of {report['retrieval_images']} images "
          f"(chance {report['retrieval_chance']:.1%})")
    print(f"  tag reading: the true numbering scores above a moved one on {report['tag_reading']:.1%} of "
          f"{report['tag_reading_pairs']} tagged images (chance {report['tag_reading_chance']:.0%})")
