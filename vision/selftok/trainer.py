"""``zoo train selftok``: the tokenizer objective (stage 1) and the one-step renderer (stage 2).

The release has no training code; this follows the paper's objective as the released modules
and the co-author's partial training code implement it (jiachunp/selftok-training:
mimogpt/engine/trainer_selftok_enc.py, mimogpt/engine/utils/selftok_hook.py,
mimogpt/engine/utils/selftok/lr_scheduler.py):

* **tokenizer**: ``t ~ U(0, 1)``; the tokens visible at ``1000 t`` (DiTi, before the timestep
  shift) condition the MMDiT, which regresses the velocity ``noise - x0`` at ``x_t``; plus the
  quantizer's commitment loss and the diversity loss with smart re-activation (EMA codebook,
  dead codes re-sampled with per-position weights). Latents are VAE posterior samples.
* **renderer**: the encoder is frozen (``fix_encoder``); the renderer predicts the clean latent
  from all tokens in one pass; loss: mean squared error in latent space (the release does not
  include the renderer's objective). It starts from a tokenizer: the encoder (and a tiny model's
  VAE) are copied, and the decoder weights whose names and shapes match are reused.
* **optimizer** (selftok_hook.py ``build_selftok_optimizer``): AdamW, betas (0.9, 0.99), no weight
  decay, three groups: ``encoder`` (``lr.encoder_lr``; constant until ``init_step1``, linear to
  ``min_lr1`` at ``init_step2``, cosine to ``min_lr2`` at ``max_step``, then held), the image
  stream ``x_block``/``x_embedder`` (``lr.dit_lr``) and the rest of the decoder (``lr.token_lr``).
* **SD3 initialisation** (``selftok.sd3_init``): the decoder starts from SD3-medium's MMDiT
  (``model.diffusion_model.*``) except ``context_embedder`` and every ``context_block``, which
  train from scratch (the release's ``load_state``).
* ``selftok.vae_steps`` > 0 (demo models only): the first steps fit the model's own small VAE
  as an autoencoder; real runs use SD3's VAE, frozen.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.train import Trainer

logger = logging.getLogger("zoo.selftok")

SD3_PREFIX = "model.diffusion_model."


def encoder_lr_factor(step: int, *, base: float, init_step1: int, init_step2: int, max_step: int, min_lr1: float,
                      min_lr2: float) -> float:
    """The encoder's learning rate at ``step`` over ``base`` (lr_scheduler.py ``MyLRScheduler``; held after ``max_step``)."""
    if step < init_step1:
        lr = base
    elif step < init_step2:
        lr = min_lr1 + (base - min_lr1) * max(1, init_step2 - step) / (init_step2 - init_step1)
    else:
        progress = min((step - init_step2) / max(max_step - init_step2, 1), 1.0)
        lr = (min_lr1 - min_lr2) * 0.5 * (1.0 + math.cos(math.pi * progress)) + min_lr2
    return lr / base if base else 0.0


def _data_source(value, split: str):
    if value in (None, ""):
        raise ConfigError(f"data.{split} is not set: give an image folder or JSONL manifest, or 'shapes' / "
                          "'shapes-heldout' for the bundled shapes world.")
    if str(value) in ("shapes", "shapes-train", "shapes-heldout"):
        from zoo.data.shapes import demo_manifest

        return demo_manifest("heldout" if str(value) == "shapes-heldout" else "train")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"data.{split}={value!r} does not exist; give an image folder or a JSONL manifest.")
    return path


def image_dataset(source, image_size: int):
    """Images from a folder / manifest (or 'shapes'), resized and centre-cropped to ``image_size``, in [-1, 1]."""
    from zoo.image import ImageDataset, ImageTransform

    transform = ImageTransform.minus_one_one(resize=image_size, crop=image_size, interpolation="bilinear")
    dataset = ImageDataset(source, transform)
    if len(dataset) == 0:
        from zoo.errors import ImageInputError

        raise ImageInputError(f"{source} holds no images.")
    return dataset


def sd3_decoder_state(state: dict, source: str) -> dict:
    """SD3-medium MMDiT weights for Selftok's decoder: ``model.diffusion_model.*`` without ``context_embedder`` and
    any ``context_block`` (image_tokenizer load_state: the token stream trains from scratch)."""
    picked = {}
    for key, value in state.items():
        if not key.startswith(SD3_PREFIX):
            continue
        name = key[len(SD3_PREFIX):]
        if name.startswith("context_embedder.") or "context_block" in name:
            continue
        picked[name] = value
    if not picked:
        raise ConfigError(f"{source} holds no '{SD3_PREFIX}*' keys; selftok.sd3_init needs SD3-medium's MMDiT "
                          "weights in Stability's reference layout (sd3_medium.safetensors).")
    return picked


class SelftokTrainer(Trainer):
    """The engine's trainer for ``family: selftok`` recipes (see the module docstring)."""

    config_defaults = {
        "model": {
            "size": "tiny",          # a selftok size (tiny, 512, tiny-renderer, 512-renderer, ...)
            "init": None,            # start from: a card name, hf-hub:..., a zoo folder, or an official .pth
            "overrides": {},
        },
        "data": {
            "train": "shapes",       # image folder | JSONL manifest | shapes | shapes-heldout
            "eval": None,
            "eval_items": 16,
            "eval_steps": 10,        # diffusion-decoder steps of the periodic evaluation
        },
        "selftok": {
            "stage": "tokenizer",    # tokenizer | renderer
            "full_tokens": False,    # every token visible at every t (the release's renderer-stage switch)
            "vae_steps": 0,          # demo: fit a config-built VAE for the first steps
            "vae_lr": 1.0e-3,
            "sd3_init": None,        # SD3-medium weights for the decoder's image stream
            "ema_decay": 0.0,        # decoder EMA (0 = off); the final model gets the EMA weights
        },
        "lr": {
            "encoder_lr": 5.0e-5, "dit_lr": 1.0e-5, "token_lr": 5.0e-5,
            "init_step1": 5000, "init_step2": 50000, "max_step": 100000, "min_lr1": 5.0e-5, "min_lr2": 5.0e-5,
        },
    }

    def __init__(self, config: dict):
        super().__init__(config)
        self.step = 0
        self.ema: dict[str, torch.Tensor] | None = None
        sel = config["selftok"]
        if sel["stage"] not in ("tokenizer", "renderer"):
            raise ConfigError(f"selftok.stage must be 'tokenizer' or 'renderer', got {sel['stage']!r}")
        self.vae_steps = int(sel.get("vae_steps") or 0)
        self.ema_decay = float(sel.get("ema_decay") or 0.0)

    # ------------------------------------------------------------------ model
    def _model_config(self) -> dict:
        from zoo.registry import get_family

        spec = self.config["model"]
        return get_family("selftok").make_config(spec["size"], spec.get("overrides") or {}, source="the recipe's model")

    def _load_init(self, init: str):
        """A trained Selftok model to start from: an official .pth/.ckpt file, or anything zoo.load takes."""
        path = Path(str(init)).expanduser()
        if path.is_file():
            from zoo.vision.selftok.loader import load

            return load(str(path), self._model_config())
        import zoo

        return zoo.load(str(init))

    def build_model(self):
        from zoo.vision.selftok.builder import build

        spec, sel = self.config["model"], self.config["selftok"]
        config = self._model_config()
        renderer = sel["stage"] == "renderer"
        if renderer and config["decoder"]["type"] != "renderer":
            raise ConfigError(f"selftok.stage=renderer needs a renderer size (e.g. tiny-renderer, 512-renderer), "
                              f"got model.size={spec['size']!r}")
        model = build(config)
        if spec.get("init"):
            source = self._load_init(spec["init"])
            if renderer and not source.is_renderer:
                self._renderer_from_tokenizer(model, source, str(spec["init"]))
            else:
                from zoo.hub import load_state_dict_strict

                load_state_dict_strict(model, source.state_dict(), str(spec["init"]))
        if sel.get("sd3_init"):
            self._init_from_sd3(model, str(sel["sd3_init"]))
        if renderer:
            model.freeze_encoder(True)
        if self.vae_steps:
            if "vae" not in model._modules:
                raise ConfigError("selftok.vae_steps > 0 trains the model's own VAE, but this size uses the SD3 VAE "
                                  "(frozen); set selftok.vae_steps=0")
            model.vae.requires_grad_(True)
        return model

    @staticmethod
    def _renderer_from_tokenizer(model, source, name: str) -> None:
        """Copy the tokenizer's encoder (and own VAE) exactly, and its decoder weights wherever names and shapes match."""
        own = model.state_dict()
        src = source.state_dict()
        for prefix in ("encoder.", "vae."):
            keys = [k for k in own if k.startswith(prefix)]
            missing = [k for k in keys if k not in src or src[k].shape != own[k].shape]
            if missing:
                from zoo.errors import CheckpointKeysError

                raise CheckpointKeysError(name, missing=missing, hint=(
                    "  the renderer's encoder must be the tokenizer's: use the same size (e.g. tiny -> tiny-renderer)."))
        shared = {k: v for k, v in src.items() if k in own and v.shape == own[k].shape}
        fresh = sorted(k for k in own if k not in shared)
        dropped = sorted(k for k in src if k not in shared)
        model.load_state_dict({**own, **shared}, strict=True)
        logger.info("renderer initialised from %s: %d tensors copied; new: %s; not used: %s", name, len(shared),
                    ", ".join(fresh) or "-", ", ".join(dropped) or "-")

    @staticmethod
    def _init_from_sd3(model, path: str) -> None:
        from zoo.models.checkpoints import read_checkpoint

        state = read_checkpoint(path)
        picked = sd3_decoder_state(state, path)
        own = model.model.state_dict()
        usable = {k: v for k, v in picked.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        skipped = sorted(k for k in picked if k not in usable)
        model.model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in usable.items()}}, strict=True)
        fresh = sorted(k for k in own if k not in usable)
        logger.info("decoder initialised from %s: %d SD3 tensors; trained from scratch: %d (%s); SD3 tensors not "
                    "used: %s", path, len(usable), len(fresh), ", ".join(fresh[:8]) + (" ..." if len(fresh) > 8 else ""),
                    ", ".join(skipped) or "-")

    # ------------------------------------------------------------------ data
    def build_datasets(self):
        model_config = self._model_config()
        size = int(model_config["image_size"])
        train = image_dataset(_data_source(self.config["data"]["train"], "train"), size)
        eval_value = self.config["data"].get("eval")
        evaluation = image_dataset(_data_source(eval_value, "eval"), size) if eval_value else None
        self.eval_set = evaluation
        return train, evaluation

    def collate(self, items: list):
        return torch.stack([item["image"] for item in items])

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, model) -> list[dict]:
        lr = self.config["lr"]
        encoder = [p for p in model.encoder.parameters() if p.requires_grad]
        image_stream, token_stream = [], []
        for name, param in model.model.named_parameters():
            if param.requires_grad:
                (image_stream if ("x_block" in name or "x_embedder" in name) else token_stream).append(param)
        groups = []
        if encoder:
            groups.append({"params": encoder, "lr": float(lr["encoder_lr"]), "name": "encoder", "weight_decay": 0.0})
        groups.append({"params": image_stream, "lr": float(lr["dit_lr"]), "name": "decoder", "weight_decay": 0.0})
        groups.append({"params": token_stream, "lr": float(lr["token_lr"]), "name": "token", "weight_decay": 0.0})
        if self.vae_steps:
            groups.append({"params": list(model.vae.parameters()), "lr": float(self.config["selftok"]["vae_lr"]),
                           "name": "vae", "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def lr_factors(self, optimizer) -> list:
        lr = self.config["lr"]
        options = dict(base=float(lr["encoder_lr"]), init_step1=int(lr["init_step1"]), init_step2=int(lr["init_step2"]),
                       max_step=int(lr["max_step"]), min_lr1=float(lr["min_lr1"]), min_lr2=float(lr["min_lr2"]))
        return [(lambda step: encoder_lr_factor(step, **options)) if group.get("name") == "encoder" else None
                for group in optimizer.param_groups]

    # ------------------------------------------------------------------ steps
    def training_step(self, model, batch) -> dict:
        if self.step < self.vae_steps:
            return model(images=batch, phase="vae")
        return model(images=batch, full_tokens=bool(self.config["selftok"]["full_tokens"]))

    def on_train_start(self, model) -> None:
        if self.ema_decay and self.ema is None:
            self.ema = {k: p.detach().clone() for k, p in model.model.named_parameters() if p.requires_grad}

    def on_step_end(self, model, step: int) -> None:
        self.step = step
        if self.ema is not None and step > self.vae_steps:
            with torch.no_grad():
                for name, param in model.model.named_parameters():
                    if name in self.ema:
                        self.ema[name].lerp_(param.detach(), 1.0 - self.ema_decay)

    def on_train_end(self, model) -> None:
        if self.ema is not None:
            with torch.no_grad():
                for name, param in model.model.named_parameters():
                    if name in self.ema:
                        param.copy_(self.ema[name])
            logger.info("final decoder = EMA weights (decay %g)", self.ema_decay)

    def evaluate(self, model) -> dict:
        """Held-out PSNR of the decoder (``data.eval_steps`` steps) or renderer, next to the VAE round trip
        (the ceiling) and the held-out mean image (the baseline); plus the latent MSE."""
        from zoo.metrics import psnr

        dataset = getattr(self, "eval_set", None)
        if dataset is None or self.step < self.vae_steps:
            return {}
        count = min(len(dataset), int(self.config["data"]["eval_items"]))
        images = torch.stack([dataset[i]["image"] for i in range(count)]).to(self.device)
        target = (images.clamp(-1, 1) + 1) / 2
        latents = model.images_to_latents(images)
        ids = model.encode_latents(latents)
        if model.is_renderer:
            recon = model.render_latents(ids)
        else:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
            recon = model.decode_latents(ids, steps=int(self.config["data"]["eval_steps"]), noise=noise)
        mean_image = target.mean(dim=0, keepdim=True).expand_as(target)
        metrics = {"eval_psnr": float(psnr(model.latents_to_images(recon), target)),
                   "eval_vae_psnr": float(psnr(model.latents_to_images(latents), target)),
                   "eval_mean_image_psnr": float(psnr(mean_image, target)),
                   "eval_latent_mse": float(torch.mean((recon - latents) ** 2))}
        logger.info("held-out PSNR %.2f dB (%s), VAE alone %.2f dB, mean image %.2f dB", metrics["eval_psnr"],
                    "renderer" if model.is_renderer else "decoder", metrics["eval_vae_psnr"],
                    metrics["eval_mean_image_psnr"])
        return metrics

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"step": self.step, "ema": None if self.ema is None else {k: v.cpu() for k, v in self.ema.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state.get("step", 0))
        if state.get("ema") is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
