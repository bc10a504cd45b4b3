"""``zoo train srum``: SRUM's reward-weighted flow-matching fine-tuning (WayneJin0918/SRUM:train/pretrain_unified_navit.py).

Per optimizer step, one token-budget pack of self-generated images (``data.py``). For every image:
``x_bad`` = a VAE posterior sample of the image, ``x_good`` = the "good" image's latents (the same file as
released, encoded again: a second posterior sample, so ``x_good != x_bad`` by sampling noise only; set
``srum.resample_good_latent: false`` to reuse ``x_bad``), ``t = shift(sigmoid(randn))`` (one draw per
image; shift 1.0 as released), ``x_t = (1 - t) x_bad + t noise``, and the MoT predicts the velocity at the
latent tokens. The loss is ``rewards.srum_loss``: ``mean(r * mse(x_bad)) + lambda * mean(mse(x_good))``
with ``r`` the reward map resized bilinearly to the latent-token grid, ``lambda = 0.5`` as the scripts
pass. ``srum.use_rewards: false`` sets ``r = 1`` (plain SFT on the same images, the ablation baseline).

The prompt is dropped with probability ``data.text_dropout`` (0.1; classifier-free guidance), the ViT,
connector, VAE and both position tables are frozen, everything else of the language model trains
(``vae2llm``, ``llm2vae``, ``time_embedder`` too); AdamW (0.9, 0.95), eps 1e-15, weight decay 0, lr 2e-5
constant after 100 warm-up steps, gradient clipping at 1.0. ``model.init`` names the starting weights:
a card (``bagel-7b-mot``: its EMA weights, i.e. ``finetune_from_ema``), a release folder (``ema`` or
``model.safetensors`` by ``model.finetune_from_ema``) or a zoo folder; none builds ``model.size``.

The loss is per process with no token-count normalisation across processes, as released (pretrain:673-681).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.multimodal.srum.rewards import srum_loss, token_rewards
from zoo.train import Trainer

logger = logging.getLogger("zoo.srum")

FROZEN = ("vit_model.", "connector.", "vit_pos_embed.", "vae.", "latent_pos_embed.")


def _load_init(init: str, config_overrides: dict, finetune_from_ema: bool):
    """The starting model for ``model.init``: a zoo folder, a release folder or a card name."""
    import zoo
    from zoo.multimodal.srum.builder import make_config
    from zoo.multimodal.srum.loader import load_folder

    path = Path(str(init)).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        return load_folder(path, make_config("bagel-7b-mot", **config_overrides), ema=finetune_from_ema)
    return zoo.load(str(init), **config_overrides)


class SrumTrainer(Trainer):
    config_defaults = {
        "family": "srum",
        "model": {
            "init": None,               # card | release folder | zoo folder; None = random model.size
            "size": "tiny",
            "overrides": {},
            "finetune_from_ema": True,  # a release folder: start from ema.safetensors (BAGEL's EMA weights)
        },
        "data": {
            "train": None,              # the format step's rewards.jsonl
            "image_dir": None,          # folder of the bad images (default: the JSONL's folder / images)
            "good_image_dir": None,     # folder of the good images (default: image_dir)
            "transform": {"max_size": 1024, "min_size": 512, "stride": 256},   # rft_*.yaml
            "rescale_boxes": False,     # as released: boxes stay in generated-image pixels
            "expected_num_tokens": 8192,
            "max_num_tokens": 9216,
            "max_num_tokens_per_sample": 8192,
            "text_dropout": 0.1,
            "pack_seed": 42,
        },
        "srum": {
            "lambda_constraint": 0.5,
            "timestep_shift": 1.0,
            "resample_good_latent": True,
            "use_rewards": True,        # false: r = 1 everywhere (SFT on the self-generated images)
            "eval": None,               # "demo": after training, score base vs trained on held-out shapes prompts
        },
        "demo": {
            "quick": False,             # model.init / data.train "demo": the shapes-world stages (demo.py)
            "folder": None,             # where they run (default: <train.output_dir>/demo-data)
            "seed": 0,
        },
        "optim": {"name": "adamw", "lr": 2.0e-5, "betas": [0.9, 0.95], "eps": 1.0e-15, "weight_decay": 0.0},
        "schedule": {"name": "constant", "warmup_steps": 100},
        "train": {"max_steps": 309, "batch_size": 1, "clip_grad_norm": 1.0, "find_unused_parameters": True,
                  "ckpt_every": 100, "log_every": 1},
    }

    # ------------------------------------------------------------------ the shapes-world demo
    def _demo_folder(self) -> Path:
        folder = self.config["demo"].get("folder")
        return Path(folder).expanduser() if folder else Path(str(self.output_dir or "runs/srum-demo")) / "demo-data"

    def _demo_sizes(self) -> dict:
        from zoo.multimodal.srum import demo

        return demo.QUICK if self.config["demo"].get("quick") else demo.FULL

    def _demo_base(self) -> Path:
        from zoo.multimodal.srum import demo

        if self.rank != 0:
            raise ConfigError("the shapes-world demo runs in one process; drop --nproc-per-node")
        base, _ = demo.prepare(self._demo_folder(), self._demo_sizes(), int(self.config["demo"]["seed"]))
        return base

    # ------------------------------------------------------------------ model
    def build_model(self):
        cfg = self.config["model"]
        overrides = dict(cfg.get("overrides") or {})
        overrides.setdefault("timestep_shift", float(self.config["srum"]["timestep_shift"]))
        init = cfg.get("init")
        if init == "demo":
            init = str(self._demo_base())
        self._init = init
        if init:
            model = _load_init(init, overrides, bool(cfg.get("finetune_from_ema", True)))
            model.config["timestep_shift"] = float(self.config["srum"]["timestep_shift"])
        else:
            from zoo.multimodal.srum.builder import build, make_config

            model = build(make_config(cfg.get("size") or "tiny", **overrides))
        model.train()
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith(FROZEN))
        model.vae.eval()
        self._model = model
        return model

    def fsdp_layer_classes(self, model):
        from zoo.models.mot import MoTDecoderLayer

        return [MoTDecoderLayer]

    # ------------------------------------------------------------------ data
    def build_datasets(self):
        from zoo.models.bagel import ImageTransform
        from zoo.multimodal.srum.data import RewardDataset, read_records

        data = self.config["data"]
        if not data.get("train"):
            raise ConfigError("data.train is not set: give the self-reward pipeline's rewards.jsonl "
                              "(zoo.multimodal.srum.pipeline), or 'demo' for the shapes-world demo")
        if data["train"] == "demo":
            from zoo.multimodal.srum import demo

            base, prompts = demo.prepare(self._demo_folder(), self._demo_sizes(), int(self.config["demo"]["seed"]))
            import zoo

            folder = demo.make_rewards(self._demo_folder(), zoo.load(str(base)), prompts, "self")
            data = {**data, "train": str(folder / "rewards.jsonl"), "image_dir": str(folder / "images")}
        if int(self.config["train"]["batch_size"]) != 1:
            raise ConfigError("srum packs samples by token budget (data.expected_num_tokens / max_num_tokens); "
                              "keep train.batch_size=1")
        path = Path(str(data["train"])).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.train={data['train']!r} does not exist; give the pipeline's rewards.jsonl")
        image_dir = Path(data["image_dir"]).expanduser() if data.get("image_dir") else path.parent / "images"
        if not image_dir.is_dir():
            image_dir = path.parent
        model = self._model
        dataset = RewardDataset(
            read_records(path), image_dir, data.get("good_image_dir"), model.tokenizer, ImageTransform(**data["transform"]),
            latent_downsample=model.latent_downsample, expected_num_tokens=int(data["expected_num_tokens"]),
            max_num_tokens=int(data["max_num_tokens"]), max_num_tokens_per_sample=int(data["max_num_tokens_per_sample"]),
            rescale_boxes=bool(data["rescale_boxes"]), seed=int(data["pack_seed"]))
        return dataset, None

    def collate(self, items: list) -> dict:
        """One pack -> packed inputs; draws text dropout and the per-image timesteps here (exact resume)."""
        (samples,) = items
        model = self._model
        packer = model.packer()
        dropout = float(self.config["data"]["text_dropout"])
        dropped = 0
        for sample in samples:
            if not (dropout > 0 and random.random() < dropout):
                packer.add_text(sample.text_ids)
            else:
                dropped += 1
            h, w = model.latent_grid(sample.bad.shape[1], sample.bad.shape[2])
            packer.add_vae((h, w), noise=True)
            packer.end_sample()
        return {
            "packed": packer.build(),
            "bad": [s.bad for s in samples],
            "good": [s.good for s in samples],
            "same": [s.same_image for s in samples],
            "maps": [s.reward_map for s in samples],
            "timesteps": torch.randn(len(samples)),
            "text_dropped": dropped,
        }

    def on_train_end(self, model) -> None:
        if self.config["srum"].get("eval") != "demo" or self.rank != 0:
            return
        import zoo
        from zoo.multimodal.srum import demo

        sizes = self._demo_sizes()
        held_out = demo.shapes_examples(sizes["eval_prompts"] * len(demo.CATEGORIES), int(self.config["demo"]["seed"]) + 99)
        base = zoo.load(self._init) if self._init else None
        report = {"trained": demo.evaluate(getattr(model, "module", model).eval(), held_out)}
        if base is not None:
            report["base"] = demo.evaluate(base, held_out)
        model.train()
        from zoo.files import write_json

        write_json(Path(str(self.output_dir)) / "demo_eval.json", report)
        names = [n for n in ("base", "trained") if n in report]
        print("\nHeld-out shapes prompts, the shapes judge's category score (share passing every check):")
        print(f"{'category':<12}" + "".join(f"{n:>16}" for n in names))
        for category in (*demo.CATEGORIES, "mean"):
            print(f"{category:<12}" + "".join(
                f"{report[n][category]['score']:>9.3f} ({report[n][category]['passed']:.2f})" for n in names))

    # ------------------------------------------------------------------ step
    def _fsdp_entry_points(self, base) -> None:
        """Under FSDP2, let the VAE encoding (called outside ``forward``) gather its sharded weights first."""
        if getattr(self, "_fsdp_ready", False):
            return
        self._fsdp_ready = True
        try:
            from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
        except ImportError:
            return
        for module, method in ((base.vae, "encode"), (base, "encode_images")):
            if isinstance(module, FSDPModule):
                register_fsdp_forward_method(module, method)

    def training_step(self, model, batch) -> dict:
        base = getattr(model, "module", model)
        self._fsdp_entry_points(base)
        srum = self.config["srum"]
        device = base.language_model.model.embed_tokens.weight.device
        packed = batch["packed"].to(device)
        with torch.no_grad():
            x_bad = torch.cat(base.encode_images(batch["bad"]))
            if srum["resample_good_latent"]:  # as released: the good image is encoded again (a new posterior sample)
                x_good = torch.cat(base.encode_images(batch["good"]))
            else:
                chunks = x_bad.split([h * w for h, w in packed.latent_shapes])
                x_good = torch.cat([c if same else base.encode_images([g])[0].to(c.device)
                                    for c, g, same in zip(chunks, batch["good"], batch["same"])])
        out = model(packed=packed, x0=x_bad, timesteps=batch["timesteps"].to(device))
        if srum["use_rewards"]:
            rewards = token_rewards([m.to(device) for m in batch["maps"]], packed.latent_shapes)
        else:
            rewards = torch.ones(x_bad.shape[0], device=device)
        losses = srum_loss(out["velocity"], out["noise"], x_bad, x_good, rewards, float(srum["lambda_constraint"]))
        return {**losses, "mean_reward": rewards.mean().detach(), "images": float(len(batch["bad"])),
                "tokens": float(packed.num_rows), "text_dropped": float(batch["text_dropped"])}
