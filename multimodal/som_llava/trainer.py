"""``zoo train som-llava``: LLaVA-1.5's visual-instruction-tuning stage on SoM-LLaVA's data mix.

As ``haotian-liu/LLaVA:scripts/v1_5/finetune.sh`` (which SoM-LLaVA runs on ``som_llava_mix695k.json``):

* the CLIP vision tower is frozen; the projector and the whole language model are trained
  (or, with ``som_llava.lora.enabled``, LoRA adapters on the language model's linear layers plus the
  projector, as ``finetune_lora.sh``);
* each record is rendered with the ``vicuna_v1`` template and only the assistant's answers (and
  the ``</s>`` closing each) carry the loss (``zoo.text.encode_conversation``);
* sequences are cut at ``model_max_length`` tokens (image tokens included) with a warning, never
  silently;
* batches are grouped by length and modality as ``--group_by_modality_length`` does: per epoch a
  seeded shuffle, megabatches of ``world_size x batch_size`` records sorted by length, image and
  text-only records in separate megabatches (``som_llava.group_by_length``);
* gradient checkpointing on request; bf16 autocast, FSDP and DDP come from the engine.

``data.train`` is a LLaVA conversation file (JSON list or JSONL) whose image paths are relative to
``data.image_folder`` (default: the file's folder), or ``shapes``: tagged shapes-world scenes made
in ``output_dir/data`` (``data.shapes``: ``kind: som`` for listing + QA + captions, ``kind:
captions`` for the plain-caption baseline). A model without a tokenizer (``model.size: tiny``
from scratch) gets a small byte-level BPE tokenizer trained on the records' text.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.train import Trainer

logger = logging.getLogger("zoo.som_llava")


# --------------------------------------------------------------------------- length grouping


def record_length(record: dict) -> int:
    """LLaVA's cheap length estimate: words of all turns, + 128 when the record has an image;
    negative for text-only records (``LazySupervisedDataset.modality_lengths``)."""
    words = sum(len(turn["value"].split()) for turn in record["conversations"])
    return words + 128 if "image" in record else -words


def grouped_order(lengths: list[int], batch_size: int, world_size: int, generator: torch.Generator) -> list[int]:
    """A length- and modality-grouped permutation of ``range(len(lengths))``.

    Image records (positive lengths) and text-only ones (negative) are shuffled separately, cut
    into megabatches of ``batch_size * world_size``, each sorted longest first; the megabatches
    of both kinds are shuffled together, and the two last (partial) ones are put at the end. Read
    in order and split into batches (rank r taking every ``world_size``-th record, as the engine's
    sampler does without shuffling), each batch holds records of similar length and one modality.
    """
    mega = batch_size * world_size
    groups = []
    tails = []
    for sign in (1, -1):
        members = [i for i, n in enumerate(lengths) if (n > 0) == (sign > 0) and n != 0]
        if not members:
            continue
        perm = torch.randperm(len(members), generator=generator).tolist()
        shuffled = [members[p] for p in perm]
        chunks = [shuffled[i:i + mega] for i in range(0, len(shuffled), mega)]
        chunks = [sorted(chunk, key=lambda i: -abs(lengths[i])) for chunk in chunks]
        if len(chunks[-1]) < mega:
            tails.extend(chunks.pop())
        groups.extend(chunks)
    order = torch.randperm(len(groups), generator=generator).tolist()
    out = [i for g in order for i in groups[g]]
    return out + sorted(tails, key=lambda i: -abs(lengths[i]))


# --------------------------------------------------------------------------- dataset


class ConversationDataset(torch.utils.data.Dataset):
    """LLaVA records -> ``{"input_ids", "labels", "pixel_values" (or None)}`` for one model.

    ``set_epoch`` (called by the engine) draws the epoch's length-grouped order when
    ``group_by_length``; item ``i`` is then the ``i``-th record of that order.
    """

    def __init__(self, records: list[dict], image_folder: Path, tokenizer, *, template: str, image_tokens: int,
                 max_length: int, transform, group_by_length: bool = True, batch_size: int = 1,
                 world_size: int = 1, seed: int = 0):
        if not records:
            raise ConfigError("The training data has no records.")
        self.records = records
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.template = template
        self.image_tokens = int(image_tokens)
        self.max_length = int(max_length)
        self.transform = transform
        self.group_by_length = group_by_length
        self.batch_size, self.world_size, self.seed = int(batch_size), int(world_size), int(seed)
        self.lengths = [record_length(r) for r in records]
        self.order = list(range(len(records)))
        self.truncated = 0

    def set_epoch(self, epoch: int) -> None:
        if self.group_by_length:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch) + 17)
            self.order = grouped_order(self.lengths, self.batch_size, self.world_size, generator)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        from zoo.image import load_image
        from zoo.text import encode_conversation

        record = self.records[self.order[index]]
        encoded = encode_conversation(self.tokenizer, record, self.template, self.max_length,
                                      image_tokens=self.image_tokens)
        item = {"input_ids": encoded["input_ids"], "labels": encoded["labels"], "pixel_values": None}
        if "image" in record:
            kept = int((encoded["input_ids"] == self.tokenizer.convert_tokens_to_ids("<image>")).sum())
            if kept != self.image_tokens:
                raise ConfigError(f"record {record.get('id')!r}: model_max_length={self.max_length} cuts into the "
                                  f"{self.image_tokens} image tokens; raise som_llava.model_max_length.")
            image = load_image(self.image_folder / record["image"])
            item["pixel_values"] = self.transform(image)
        if encoded.get("truncated"):
            self.truncated += 1
        return item


def collate(items: list[dict], pad_token_id: int) -> dict:
    """Right-padded ``input_ids``/``labels``/``attention_mask`` and the images of the batch's image records."""
    from zoo.text import collate_conversations

    batch = collate_conversations(items, pad_token_id, padding_side="right")
    images = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
    batch["pixel_values"] = torch.stack(images) if images else None
    return batch


# --------------------------------------------------------------------------- trainer


class SomLlavaTrainer(Trainer):
    """LLaVA-1.5 visual instruction tuning (see the module docstring)."""

    config_defaults = {
        "model": {
            "size": "tiny",
            # start from: a card / hf-hub: / zoo folder (e.g. som-llava-7b), or null = random init
            "init": None,
            # or LLaVA-1.5's own starting point, component by component (paths or Hub repo ids):
            # Vicuna (LlamaForCausalLM), the stage-1 projector (mm_projector.bin), the CLIP tower
            "components": {"language_model": None, "projector": None, "vision_tower": None},
            "overrides": {},
        },
        "data": {
            "train": "shapes",     # LLaVA conversation JSON/JSONL, or "shapes" (made in output_dir/data)
            "image_folder": None,  # root of the records' image paths (default: the file's folder)
            "shapes": {"kind": "som", "scenes": 300, "size": 128, "seed": 0, "overlap_prob": 0.25,
                       "min_area": 12, "font_size": 9},
        },
        "som_llava": {
            "freeze_vision_tower": True,
            "model_max_length": None,       # default: the model's (2048 for 7b/13b)
            "group_by_length": True,        # needs train.shuffle=false: the dataset orders itself
            "gradient_checkpointing": False,
            "tokenizer": {"vocab_size": 512},  # tiny models trained from scratch: BPE size
            "lora": {"enabled": False, "r": 128, "alpha": 256, "dropout": 0.05, "projector_lr": 2.0e-5},
            "eval_scenes": 0,               # >0: tag-listing and POPE accuracy on held-out shapes scenes
        },
    }

    def __init__(self, config: dict):
        super().__init__(config)
        section = self.config["som_llava"]
        if section["group_by_length"] and self.config.get("train", {}).get("shuffle", True):
            raise ConfigError("som_llava.group_by_length draws its own length-grouped order each epoch; set "
                              "train.shuffle=false (or som_llava.group_by_length=false).")
        self.records: list[dict] | None = None
        self.image_folder: Path | None = None
        self.tokenizer = None
        self.model_ref = None

    # ------------------------------------------------------------------ data
    def _prepare_records(self) -> None:
        if self.records is not None:
            return
        from zoo.multimodal.som_llava import data as som_data

        section = self.config["data"]
        source = section["train"]
        if source == "shapes":
            shapes = section["shapes"]
            folder = Path(self.output_dir or "runs/som-llava") / "data"
            target = folder / "conversations.json"
            if not target.is_file():  # made once per run; a resumed run reuses it
                scenes = som_data.shapes_scenes(int(shapes["scenes"]), size=int(shapes["size"]),
                                                seed=int(shapes["seed"]), overlap_prob=float(shapes["overlap_prob"]))
                som_data.build_shapes_dataset(scenes, folder, kind=shapes["kind"], seed=int(shapes["seed"]),
                                              min_area=int(shapes["min_area"]), font_size=float(shapes["font_size"]),
                                              overwrite=True)
            path = target
        else:
            if not source:
                raise ConfigError("data.train is not set: give a LLaVA conversation file or 'shapes'.")
            path = Path(str(source)).expanduser()
        self.records = som_data.read_conversations(path)
        self.image_folder = Path(section["image_folder"]).expanduser() if section["image_folder"] else path.parent

    def _build_tokenizer(self):
        from zoo.text import IMAGE_PLACEHOLDER, build_tokenizer, get_template

        template = get_template(self.config["model"]["overrides"].get("template", "vicuna_v1"))
        texts = [template.render(r) for r in self.records]
        size = int(self.config["som_llava"]["tokenizer"]["vocab_size"])
        return build_tokenizer(texts, special_tokens=[IMAGE_PLACEHOLDER], kind="bpe", vocab_size=size, add_bos=True)

    # ------------------------------------------------------------------ model
    def build_model(self):
        import zoo
        from zoo.config import merge
        from zoo.registry import get_family

        self._prepare_records()
        section = self.config["model"]
        overrides = dict(section.get("overrides") or {})
        family = get_family("som-llava")
        if section.get("init"):
            model = zoo.load(section["init"], **overrides)
            tokenizer = model.tokenizer
        else:
            config = family.make_config(section.get("size") or "tiny", overrides, source="model.overrides")
            components = {k: v for k, v in (section.get("components") or {}).items() if v}
            if components:
                from zoo.multimodal.som_llava.loader import load_components

                tokenizer = None
                model = load_components(config, **components)
                tokenizer = model.tokenizer
            else:
                tokenizer = self._build_tokenizer()
                config = merge(config, {
                    "text_config": {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                                    "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
                    "image_token_id": tokenizer.convert_tokens_to_ids("<image>")})
                model = family.build(config)
                model.set_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        som = self.config["som_llava"]
        if som["freeze_vision_tower"]:
            model.vision_tower.requires_grad_(False)
        if som["lora"]["enabled"]:
            _add_lora(model, som["lora"])
        if som["gradient_checkpointing"]:
            model.llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.model_ref = model
        return model

    def param_groups(self, model):
        weight_decay = float((self.config.get("optim") or {}).get("weight_decay") or 0.0)
        projector = [p for p in model.projector.parameters() if p.requires_grad]
        ids = {id(p) for p in projector}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "weight_decay": weight_decay}]
        lora = self.config["som_llava"]["lora"]
        if lora["enabled"] and lora.get("projector_lr"):
            groups.append({"params": projector, "weight_decay": weight_decay, "lr": float(lora["projector_lr"])})
        else:
            groups[0]["params"] = rest + projector
        return [g for g in groups if g["params"]]

    def build_datasets(self):
        self._prepare_records()
        model = self.model_ref
        max_length = self.config["som_llava"]["model_max_length"] or model.config["model_max_length"]
        train = self.config.get("train", {})
        dataset = ConversationDataset(
            self.records, self.image_folder, self.tokenizer, template=model.config["template"],
            image_tokens=model.num_image_tokens, max_length=int(max_length), transform=model.image_transform,
            group_by_length=bool(self.config["som_llava"]["group_by_length"]),
            batch_size=int(train.get("batch_size", 1)), world_size=self.world_size, seed=int(train.get("seed", 0) or 0))
        dataset.set_epoch(0)
        return dataset, None

    def collate(self, items: list):
        return collate(items, self.model_ref.pad_token_id)

    def training_step(self, model, batch) -> dict:
        targets = int((batch["labels"][:, 1:] != -100).sum())  # labels are shifted inside the model
        out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                    attention_mask=batch["attention_mask"], labels=batch["labels"] if targets else None)
        if not targets:  # every answer was cut by model_max_length: no loss, said out loud
            logger.warning("a batch has no answer tokens left after truncation to model_max_length; it adds no "
                           "loss (raise som_llava.model_max_length)")
            return {"loss": out.logits.sum() * 0.0, "answer_tokens": 0.0}
        return {"loss": out.loss, "answer_tokens": float(targets)}

    def on_train_end(self, model) -> None:
        if self.config["som_llava"]["lora"]["enabled"]:
            _merge_lora(model)
        scenes = int(self.config["som_llava"]["eval_scenes"] or 0)
        if scenes and self.rank == 0:
            from zoo.multimodal.som_llava.evaluate import evaluate_shapes, print_report

            shapes = self.config["data"]["shapes"]  # held-out scenes drawn and tagged as the training ones
            report = evaluate_shapes(model, scenes=scenes, size=int(shapes["size"]), seed=int(shapes["seed"]) + 1,
                                     overlap_prob=float(shapes["overlap_prob"]), min_area=int(shapes["min_area"]),
                                     font_size=float(shapes["font_size"]))
            print_report(report)
            if self.output_dir is not None:
                from zoo.files import write_json

                write_json(Path(self.output_dir) / "eval.json", report)


# --------------------------------------------------------------------------- LoRA


def _lora_targets(model) -> list[str]:
    """Names of the language model's linear layers (LLaVA's ``find_all_linear_names``: every
    ``nn.Linear`` outside the vision tower and the projector, and not the output head)."""
    names = []
    for name, module in model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            names.append(name.rsplit(".", 1)[-1])
    return sorted(set(names))


def _add_lora(model, settings: dict) -> None:
    """LoRA adapters (peft) on the language model; the base language model is frozen, the projector trains."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:  # pragma: no cover - peft is a dependency
        raise ConfigError("som_llava.lora needs the peft package (pip install peft).") from err
    config = LoraConfig(r=int(settings["r"]), lora_alpha=int(settings["alpha"]),
                        lora_dropout=float(settings["dropout"]), target_modules=_lora_targets(model), bias="none")
    model.language_model.requires_grad_(False)
    model.llava.lm_head.requires_grad_(False)
    inject_adapter_in_model(config, model.language_model)
    for name, param in model.language_model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)


def _merge_lora(model) -> None:
    """Fold the LoRA adapters into the base weights and remove them (plain keys in ``final/``)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.language_model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.language_model.get_submodule(parent_name) if parent_name else model.language_model
            setattr(parent, child, module.get_base_layer())
    model.language_model.requires_grad_(True)
