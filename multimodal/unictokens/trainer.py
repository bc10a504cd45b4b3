"""``zoo train unictokens``: the three UniCTokens stages (and the shapes-world base for the demo).

``stage.name``:

* ``"1"``, ``"2"``, ``"3"``: one stage on a concept folder (see stages.py for what each does and
  data.py for the folder). Stage 2 starts from the stage-1 run's official row files
  (``stage.previous`` = that run's folder, epoch ``stage.from_epoch``, default 15), stage 3 from
  stage 2's (default epoch 20) and its diff masks (``<previous>/diff_masks``, made if missing).
* ``"all"``: stage 1, stage 2, the diff masks and stage 3 in turn, in ``<output_dir>/stage1``,
  ``<output_dir>/stage2`` and the run itself (stage 3); each part is skipped when already done.
* ``"vq"``, ``"base"``: pretrain a small MAGVIT-v2 and then a small Show-o on shapes-world scenes
  (captions for text-to-image, judge questions for understanding): the demo's base.

A stage step is one combined batch (text-to-image batch + understanding batch, the official
``CombinedLoader``): ``train.batch_size`` must be 1 and ``train.shuffle`` false; the batch sizes
are ``data.t2i_batch_size`` / ``data.mmu_batch_size``. An epoch is one pass of the longer stream;
``train.max_steps`` must be ``stage.epochs`` times the steps per epoch (the error says the number).
Every ``stage.save_every`` epochs the concept rows are written in the official three-file layout
to ``<output_dir>/saves/epoch_{E}_{embed,lm_head_weight,lm_head_bias}.pt``.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.models.showo import (
    mask_or_random_replace_tokens, mmu_attention_mask, mmu_loss, mmu_prefix, t2i_attention_mask, t2i_loss,
    t2i_sequences,
)
from zoo.train import Trainer

logger = logging.getLogger("zoo.unictokens")

STAGES = ("1", "2", "3", "all", "vq", "base")


def _stage_name(value) -> str:
    name = str(value).lower()
    if name not in STAGES:
        raise ConfigError(f"stage.name must be one of {', '.join(STAGES)}, got {value!r}.")
    return name


class UniCTokensTrainer(Trainer):
    """The UniCTokens stages on the zoo engine (see the module docstring)."""

    config_defaults = {
        "stage": {
            "name": "1",
            "epochs": None,          # official: 20 (then train.max_steps = epochs x steps per epoch)
            "save_every": 5,         # epochs between official row files
            "previous": None,        # stage 2/3: the previous stage's run folder
            "from_epoch": None,      # its epoch to start from (default 15 for stage 2, 20 for stage 3)
            "tokens": [16, 8, 8],    # <token_i> rows added by stages 1, 2, 3
            "loss_weights": {"t2i": 0.8, "mmu": 0.2},
            "l2_lambda": 0.0,        # stages 2/3: L2 pull of the <name> rows to their start (official default 0)
            "diff_masks": {"num_images": 20, "steps": 50, "guidance": 5.0, "step_index": 34, "seed": 0},
            "epochs_per_stage": {"1": 20, "2": 20, "3": 20},   # stage "all"
            "optim_per_stage": {},   # stage "all": optimiser overrides per stage, e.g. {"1": {"weight_decay": 1e-4}}
            "data_per_stage": {},    # stage "all": data overrides per stage, e.g. {"1": {"mmu_batch_size": 4}}
            "vq_warmup_steps": 0,    # stage "vq": steps that decode tanh(latents) before the sign quantiser
        },
        "model": {"init": "unictokens-tiny", "pretrained": True, "overrides": {}, "lora": {"r": 0}},
        "concept": {"folder": None, "shapes": None, "min_images": 3},
        "data": {
            "t2i_batch_size": 1,
            "mmu_batch_size": 1,
            "cond_dropout_prob": 0.1,
            "seed": 0,
            "manifest": "demo",      # vq/base stages: a shapes manifest, or 'demo' (the bundled train split)
        },
        "eval": {"enabled": True, "num_images": 2, "steps": 16, "guidance": 2.0},
    }
    path_keys = ()

    def __init__(self, config: dict):
        super().__init__(config)
        self.stage = _stage_name(config["stage"]["name"])
        engine_lora = (config.get("train") or {}).get("lora") or {}
        if int(engine_lora.get("r") or 0) > 0:
            # the engine's LoRA trains its matrices only and saves a LoRA folder; here the concept rows
            # must train too and travel in the concept adapter
            raise ConfigError("UniCTokens takes LoRA as model.lora.r (with alpha, target_modules): the concept rows "
                              "train with it and are saved with it. Set train.lora.r=0.")
        self.steps_per_epoch = 1
        self.concept = None
        self.base_reference = None

    # ------------------------------------------------------------------ model
    def _load_base(self):
        import zoo
        from zoo.registry import get_family

        section = self.config["model"]
        init = section.get("init")
        overrides = dict(section.get("overrides") or {})
        if not init:
            raise ConfigError("model.init is not set: name the base (a card such as unictokens-tiny or show-o-512, "
                              "hf-hub:org/name, or a run's final/ folder).")
        from zoo.multimodal.unictokens.model import UniCTokensModel

        path = Path(str(init)).expanduser()
        if path.is_dir():
            model = zoo.load(str(path.resolve()), **overrides)
            reference = str(path.resolve())
        elif section.get("pretrained", True) or str(init).startswith("hf-hub:"):
            model = zoo.load(str(init), **overrides)
            reference = str(init)
        else:
            family = get_family("unictokens")
            from zoo.cards import get_card

            card = get_card(str(init))
            model = family.build(family.make_config(card.size, {**card.config, **overrides}, source="model.overrides"))
            reference = None
        if not isinstance(model, UniCTokensModel):
            raise ConfigError(f"model.init {init!r} is a {model.family} model, not a UniCTokens/Show-o base.")
        if model.num_concept_rows:
            raise ConfigError(f"model.init {init!r} already carries a concept; start from a plain base.")
        return model, reference

    def _concept_data(self):
        from zoo.multimodal.unictokens.data import build_shapes_concept, read_concept_folder

        section = self.config["concept"]
        folder = section.get("folder")
        if section.get("shapes"):
            folder = folder or str(Path(self.output_dir or ".") / "concept")
            if not (Path(folder) / "info.json").is_file():
                build_shapes_concept(str(section["shapes"]), folder, size=int(self._image_size()), overwrite=True)
        if not folder:
            raise ConfigError("concept.folder is not set: give a concept folder (images + info.json + "
                              "conversations.json), or concept.shapes=<bo|kiki|mel|tuk|zed> to build one.")
        return read_concept_folder(folder, min_images=int(section.get("min_images") or 3))

    def _image_size(self) -> int:
        from zoo.cards import get_card
        from zoo.registry import get_family

        init = self.config["model"].get("init")
        path = Path(str(init)).expanduser()
        if path.is_dir():
            return int(json.loads((path / "config.json").read_text())["config"]["image_size"])
        card = get_card(str(init))
        return int(get_family("unictokens").make_config(card.size, card.config)["image_size"])

    def build_model(self):
        if self.stage in ("vq", "base"):
            return self._build_pretrain_model()
        if self.stage == "all":
            self._run_earlier_stages()
        model, self.base_reference = self._load_base()
        self.concept = self._concept_data()
        stage = 3 if self.stage == "all" else int(self.stage)
        self._init_stage(model, stage)
        lora = self.config["model"].get("lora") or {}
        if int(lora.get("r") or 0) > 0:
            model.config["lora"] = {**model.config.get("lora", {}), **lora}
            model._install_lora(model.config["lora"])
            model.set_trainable(model.concept.get("trainable"))
        model.config["base"] = self.base_reference
        model.train()
        model.vq_model.eval()
        self._model_ref = model  # the engine builds the model first; build_datasets needs its tokenizer
        return model

    def _previous(self, stage: int) -> tuple[Path, int]:
        if getattr(self, "_previous_cache", None) is None:
            self._previous_cache = {}
        if stage not in self._previous_cache:
            self._previous_cache[stage] = self._find_previous(stage)
        return self._previous_cache[stage]

    def _find_previous(self, stage: int) -> tuple[Path, int]:
        section = self.config["stage"]
        if self.stage == "all":
            folder = Path(self.output_dir) / f"stage{stage - 1}"
        elif section.get("previous"):
            folder = Path(str(section["previous"])).expanduser()
        else:
            raise ConfigError(f"stage {stage} starts from stage {stage - 1}: set stage.previous to that run's folder.")
        from zoo.multimodal.unictokens.concept_tokens import official_epochs
        from zoo.multimodal.unictokens.stages import FROM_EPOCH

        epoch = int(section.get("from_epoch") or FROM_EPOCH[stage])
        saved = official_epochs(folder / "saves")
        if epoch not in saved:
            earlier = [e for e in saved if e <= epoch]
            if self.stage == "all" and not section.get("from_epoch") and earlier:
                logger.info("stage %d: stage %d saved no epoch %d (it ran fewer epochs); starting from epoch %d",
                            stage, stage - 1, epoch, earlier[-1])
                return folder, earlier[-1]
            raise ConfigError(f"stage {stage} starts from epoch {epoch} of {folder / 'saves'}, which has epochs "
                              f"{saved or 'none'}; set stage.from_epoch to one of them.")
        return folder, epoch

    def _init_stage(self, model, stage: int) -> None:
        from zoo.multimodal.unictokens import stages
        from zoo.multimodal.unictokens.concept_tokens import load_official_rows

        concept = self.concept
        tokens = stages.stage_tokens(stage, self.config["stage"]["tokens"])
        hidden = model.showo.get_input_embeddings().weight.shape[1]
        centres = None
        if stage == 3:  # k-means on the base, before the insertion (train_p_stage_3.py:273)
            folder, _ = self._previous(stage)
            masks = self._diff_mask_images(folder)
            codes = model.encode_images(torch.stack([self._plain(p, model.image_size) for p in masks]))
            centres = stages.stage3_centres(model, codes, tokens[2], seed=0)
        model.insert_concept(concept.name, concept.class_word, tokens, kind=concept.kind,
                             trainable=stages.trainable_rows(stage, tokens))
        if stage == 1:
            codes = self._training_codes(model)
            stages.init_stage1(model, concept.class_word, codes, tokens[0], seed=0)
            return
        folder, epoch = self._previous(stage)
        previous = load_official_rows(Path(folder) / "saves", epoch, num_rows=1 + sum(tokens[:stage - 1]),
                                      hidden_size=hidden)
        if stage == 2:
            used = stages.init_stage2(model, previous, concept.kind, face_images=concept.images)
            logger.info("stage 2: new rows %s", "from ArcFace" if used else "keep the image-code initialisation")
        else:
            stages.init_stage3(model, previous, centres)

    def _training_codes(self, model) -> torch.Tensor:
        """Codes of every training image through the training transform (random flip, seeded)."""
        from zoo.multimodal.unictokens.data import _rng, augment_image

        rng = _rng(int(self.config["data"]["seed"]), 7)
        pixels = torch.stack([augment_image(p, model.image_size, rng) for p in self.concept.images])
        return model.encode_images(pixels)

    @staticmethod
    def _plain(path, size: int) -> torch.Tensor:
        from zoo.multimodal.unictokens.data import _rng, augment_image

        return augment_image(path, size, _rng(0), flip=False)

    def _diff_mask_images(self, stage2_folder: Path) -> list[Path]:
        folder = Path(stage2_folder) / "diff_masks"
        images = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not images:
            raise ConfigError(f"{folder} has no diff masks; run stage 2 -> 3 first (stage.name=all does it, or "
                              "zoo.multimodal.unictokens.trainer.make_diff_masks).")
        return images

    # ------------------------------------------------------------------ stage all
    def _run_earlier_stages(self) -> None:
        from zoo.train import run

        if self.config["eval"].get("enabled"):
            self._baseline_eval()
        for stage in (1, 2):
            sub = self._sub_config(stage)
            logger.info("stage all: stage %d in %s", stage, sub["train"]["output_dir"])
            run(sub)
        make_diff_masks(Path(self.output_dir) / "stage2", self.config["stage"]["diff_masks"])

    def _baseline_eval(self) -> None:
        """The base asked with the class word instead of the concept (once, ``eval_base.json``)."""
        from zoo.files import write_json
        from zoo.multimodal.unictokens.evaluate import evaluate_concept

        target = Path(self.output_dir) / "eval_base.json"
        if target.is_file():
            return
        base, _ = self._load_base()
        section = self.config["eval"]
        report = evaluate_concept(base, self._concept_data(), num_images=int(section["num_images"]),
                                  steps=int(section["steps"]), guidance=float(section["guidance"]), baseline=True)
        write_json(target, report)

    def _sub_config(self, stage: int) -> dict:
        from zoo.multimodal.unictokens.data import read_concept_folder

        config = copy.deepcopy(self.config)
        config["stage"]["name"] = str(stage)
        config["stage"]["previous"] = str(Path(self.output_dir) / f"stage{stage - 1}") if stage > 1 else None
        config["train"]["output_dir"] = str(Path(self.output_dir) / f"stage{stage}")
        config["train"]["resume"] = "auto"
        config["train"]["overwrite"] = False
        optim = (config["stage"].get("optim_per_stage") or {}).get(str(stage)) or {}
        config["optim"].update(optim)
        config["data"].update((config["stage"].get("data_per_stage") or {}).get(str(stage)) or {})
        if config["concept"].get("shapes") and not config["concept"].get("folder"):
            config["concept"]["folder"] = str(Path(self.output_dir) / "concept")
            self._concept_data()  # build it once, here
        data = read_concept_folder(config["concept"]["folder"])
        batches = _stage_batches(stage, data, config["data"])
        epochs = int((config["stage"].get("epochs_per_stage") or {}).get(str(stage)) or 20)
        config["stage"]["epochs"] = epochs
        config["train"]["max_steps"] = epochs * batches
        if stage == 2 and not config["stage"].get("from_epoch"):
            from zoo.multimodal.unictokens.stages import FROM_EPOCH

            previous = int((config["stage"].get("epochs_per_stage") or {}).get("1") or 20)
            config["stage"]["from_epoch"] = FROM_EPOCH[2] if previous >= FROM_EPOCH[2] else previous
        return config

    # ------------------------------------------------------------------ data
    def build_datasets(self):
        if self.stage in ("vq", "base"):
            return self._pretrain_datasets(), None
        from zoo.multimodal.unictokens.data import CombinedSteps

        train = self.config["train"]
        if int(train["batch_size"]) != 1 or bool(train["shuffle"]):
            raise ConfigError("UniCTokens stage steps are whole combined batches: set train.batch_size=1 and "
                              "train.shuffle=false (batch sizes are data.t2i_batch_size / data.mmu_batch_size).")
        model = self._model_ref
        stage = 3 if self.stage == "all" else int(self.stage)
        t2i, mmu = _stage_streams(stage, self.concept, model)
        data = self.config["data"]
        dataset = CombinedSteps(model, model.image_size, t2i, mmu, t2i_batch_size=int(data["t2i_batch_size"]),
                                mmu_batch_size=int(data["mmu_batch_size"]), seed=int(data["seed"]))
        self.steps_per_epoch = len(dataset)
        epochs = self.config["stage"].get("epochs")
        if self.stage == "all" and not epochs:
            epochs = int((self.config["stage"].get("epochs_per_stage") or {}).get("3") or 0) or None
        max_steps = int(train["max_steps"])
        if epochs and max_steps != int(epochs) * self.steps_per_epoch:
            raise ConfigError(f"stage {stage} has {self.steps_per_epoch} steps per epoch here, so {epochs} epochs are "
                              f"train.max_steps={int(epochs) * self.steps_per_epoch} (got {max_steps}); set that, or "
                              "stage.epochs=null to train by steps.")
        return dataset, None

    def collate(self, items):
        if self.stage in ("vq", "base"):
            return self._pretrain_collate(items)
        from zoo.multimodal.unictokens.data import first_item

        return first_item(items)


    # ------------------------------------------------------------------ steps
    def training_step(self, model, batch) -> dict:
        if self.stage == "vq":
            return self._vq_step(model, batch)
        core = getattr(model, "module", model)
        weights = self.config["stage"]["loss_weights"]
        out, losses = {}, []
        stage = self.stage if self.stage in ("base",) else (3 if self.stage == "all" else int(self.stage))
        if "t2i" in batch:
            loss = self._t2i_loss(model, core, batch["t2i"])
            out["loss_t2i"] = loss.detach()
            losses.append(("t2i", loss))
        if "mmu" in batch:
            loss = self._mmu_loss(model, core, batch["mmu"])
            out["loss_mmu"] = loss.detach()
            losses.append(("mmu", loss))
        if len(losses) == 2:
            total = float(weights["t2i"]) * losses[0][1] + float(weights["mmu"]) * losses[1][1]
        else:
            total = losses[0][1]
        l2 = float(self.config["stage"].get("l2_lambda") or 0.0)
        if l2 and stage in (2, 3):
            total = total + l2 * self._l2_name_rows(core)
        out["loss"] = total
        return out

    def _codes(self, core, batch) -> torch.Tensor:
        if "codes" in batch:
            return batch["codes"]
        with torch.no_grad():
            return core.vq_model.get_code(batch["pixel_values"])

    def _t2i_loss(self, model, core, batch) -> torch.Tensor:
        vocab = core.vocab
        image_tokens = self._codes(core, batch) + vocab.image_offset
        masked, labels, _ = mask_or_random_replace_tokens(image_tokens, vocab.mask_id)
        input_ids, labels = t2i_sequences(batch["text_ids"], masked, vocab, core.max_text_len, core.bos_id, core.eos_id,
                                          labels=labels, cond_dropout_prob=float(self.config["data"]["cond_dropout_prob"]))
        return t2i_loss(model(input_ids, t2i_attention_mask(input_ids, vocab)), labels, core.max_text_len)

    def _mmu_loss(self, model, core, batch) -> torch.Tensor:
        vocab = core.vocab
        image_tokens = self._codes(core, batch) + vocab.image_offset
        prefix = mmu_prefix(image_tokens, vocab)
        input_ids = torch.cat([prefix, batch["input_ids"]], dim=1)
        labels = torch.cat([torch.full_like(prefix, -100), batch["labels"]], dim=1)
        return mmu_loss(model(input_ids, mmu_attention_mask(input_ids, vocab)), labels)

    def _l2_name_rows(self, core) -> torch.Tensor:
        start = getattr(self, "_name_start", None)
        embed, head = core.showo.get_input_embeddings(), core.showo.get_output_embeddings()
        slot = int(embed.row_slot[core.concept_ids[0]])
        if slot < 0:
            return embed.weight.new_zeros(())
        if start is None:
            start = self._name_start = (embed.row_weight[slot].detach().clone(), head.row_weight[slot].detach().clone(),
                                        head.row_bias[slot].detach().clone())
        return (((embed.row_weight[slot] - start[0]) ** 2).sum() + ((head.row_weight[slot] - start[1]) ** 2).sum()
                + ((head.row_bias[slot] - start[2]) ** 2).sum())

    def on_step_end(self, model, step: int) -> None:
        if self.stage in ("vq", "base") or step % self.steps_per_epoch:
            return
        epoch = step // self.steps_per_epoch
        every = int(self.config["stage"].get("save_every") or 0)
        last = step == int(self.config["train"]["max_steps"])
        if ((every and epoch % every == 0) or last) and self.rank == 0:
            from zoo.multimodal.unictokens.concept_tokens import save_official_rows

            save_official_rows(Path(self.output_dir) / "saves", epoch, model.concept_rows(), overwrite=True)

    def on_train_end(self, model) -> None:
        if self.rank != 0 or not self.config["eval"].get("enabled"):
            return
        try:
            report = self.evaluate_now(model)
        except Exception as err:  # evaluation must not lose a finished run
            logger.warning("evaluation after training failed: %s", err)
            return
        from zoo.files import write_json

        write_json(Path(self.output_dir) / "eval.json", report)
        if self.stage == "all":
            print(stage_table(Path(self.output_dir)))
        else:
            print(json.dumps(report, indent=2))

    def evaluate_now(self, model) -> dict:
        from zoo.multimodal.unictokens.evaluate import evaluate_concept, evaluate_base

        section = self.config["eval"]
        if self.stage == "vq":
            from zoo.multimodal.unictokens.evaluate import evaluate_vq

            return evaluate_vq(model, "heldout")
        if self.stage == "base":
            return evaluate_base(model, "heldout", max_items=32,
                                 num_images=int(section["num_images"]), steps=int(section["steps"]),
                                 guidance=float(section["guidance"]))
        return evaluate_concept(model, self.concept, num_images=int(section["num_images"]), steps=int(section["steps"]),
                                guidance=float(section["guidance"]))

    # ------------------------------------------------------------------ vq / base pretraining
    def _build_pretrain_model(self):
        import zoo
        from zoo.cards import get_card
        from zoo.registry import get_family

        section = self.config["model"]
        init = str(section.get("init") or "")
        overrides = dict(section.get("overrides") or {})
        path = Path(init).expanduser()
        if path.is_dir():
            model = zoo.load(str(path.resolve()), **overrides)
        else:
            card = get_card(init)
            family = get_family("unictokens")
            model = family.build(family.make_config(card.size, {**card.config, **overrides}, source="model.overrides"))
        if self.stage == "vq":
            for name, param in model.named_parameters():
                param.requires_grad_(name.startswith("vq_model."))
        else:
            for name, param in model.named_parameters():
                param.requires_grad_(name.startswith("showo."))
            model.vq_model.eval()
        model.train()
        if self.stage == "base":
            model.vq_model.eval()
        self._model_ref = model
        return model

    def _pretrain_datasets(self):
        from zoo.multimodal.unictokens.pretrain import ShapesPretrainSet

        return ShapesPretrainSet(self._model_ref, self.config["data"]["manifest"], with_text=self.stage == "base",
                                 seed=int(self.config["data"]["seed"]))

    def _pretrain_collate(self, items):
        from zoo.multimodal.unictokens.pretrain import collate_pretrain

        return collate_pretrain(items, self._model_ref.vocab.pad_id)

    def _vq_step(self, model, batch) -> dict:
        pixels = batch["pixel_values"]
        self._vq_step_count = getattr(self, "_vq_step_count", 0) + 1
        warm = self._vq_step_count <= int(self.config["stage"].get("vq_warmup_steps") or 0)
        out = model(pixels, vq=True, quantize=not warm)
        recon = out["reconstruction"]
        mse = torch.mean((recon - pixels) ** 2)
        l1 = torch.mean((recon - pixels).abs())
        loss = mse + l1 + out["quantizer_loss"] + out["entropy_loss"]
        return {"loss": loss, "mse": mse.detach(), "codes_used": float(out["indices"].unique().numel())}

    def state_dict(self) -> dict:
        return {"vq_step_count": int(getattr(self, "_vq_step_count", 0))}

    def load_state_dict(self, state: dict) -> None:
        self._vq_step_count = int(state.get("vq_step_count", 0))


def stage_table(folder: Path) -> str:
    """A Markdown table of the evaluations of an ``all`` run: base + class word, after stages 1, 2, 3."""
    rows = [("base + class word", folder / "eval_base.json"), ("after stage 1", folder / "stage1/eval.json"),
            ("after stage 2", folder / "stage2/eval.json"), ("after stage 3", folder / "eval.json")]
    keys = ["rec_recall", "rec_no_recall", "rec_accuracy", "rec_auc", "vqa_accuracy", "concept_present", "faithfulness"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, path in rows:
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        cells = [f"{report[k]:.3f}" if isinstance(report.get(k), (int, float)) else "-" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stage_batches(stage: int, data, section: dict) -> int:
    import math

    t2i = {1: 0, 2: len(data.cropped), 3: len(data.images)}[stage]
    mmu = len(data.conversations if stage < 3 else data.conversations_stage_3)
    counts = [math.ceil(mmu / int(section["mmu_batch_size"]))]
    if t2i:
        counts.append(math.ceil(t2i / int(section["t2i_batch_size"])))
    return max(counts)


def _stage_streams(stage: int, concept, model):
    """The (T2I, MMU) streams of a stage, as the official scripts set them up."""
    from zoo.multimodal.unictokens import stages
    from zoo.multimodal.unictokens.data import MMUItems, T2IItems

    tokens = model.concept["tokens"]
    mmu = MMUItems(concept.conversations if stage < 3 else concept.conversations_stage_3, model.system_prefix("."))
    if stage == 1:
        return None, mmu
    condition = stages.t2i_condition(concept.name, sum(tokens[:2]))
    if stage == 2:  # cropped images with crop augmentation
        return T2IItems(concept.cropped, [condition] * len(concept.cropped), crop=True), mmu
    return T2IItems(concept.images, [condition] * len(concept.images), crop=False), mmu


def make_diff_masks(stage2_folder, settings: dict, *, force: bool = False) -> Path:
    """Stage 2 -> 3: the diff-mask pictures of a finished stage-2 run, as a resumable pipeline step
    (``zoo.pipeline``) in ``<stage2_folder>``; writes ``diff_masks/{i}.png``. Returns the folder."""
    import zoo
    from zoo.multimodal.unictokens.stages import diff_masks
    from zoo.pipeline import Pipeline, Step

    folder = Path(stage2_folder)
    final = folder / "final"
    if not final.is_dir():
        raise ConfigError(f"{final} is missing: stage 2 has not finished in {folder}.")

    def run(ctx):
        model = zoo.load(str(final))
        out = ctx.output("diff_masks")
        out.mkdir(parents=True, exist_ok=True)
        pictures = diff_masks(model, model.concept_name, int(ctx.settings["num_images"]), steps=int(ctx.settings["steps"]),
                              guidance=float(ctx.settings["guidance"]), step_index=int(ctx.settings["step_index"]),
                              seed=int(ctx.settings["seed"]), kind=model.concept.get("kind", "object"))
        marked = []
        for i, (image, region) in enumerate(pictures):
            image.save(out / f"{i}.png")
            marked.append(float(region.float().mean()))
        return {"white_fraction": marked}

    settings = {k: settings[k] for k in ("num_images", "steps", "guidance", "step_index", "seed")}
    Pipeline(folder, [Step("diff_masks", run, settings=settings, inputs=[str(final / "model.safetensors")],
                           outputs=["diff_masks"])], name="unictokens stage 2->3").run(force=force)
    return folder / "diff_masks"


__all__ = ["UniCTokensTrainer", "make_diff_masks", "stage_table", "STAGES"]
