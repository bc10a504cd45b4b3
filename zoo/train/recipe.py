"""Recipe schema: the engine's sections and defaults, trainer lookup, ``load_recipe``."""
from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

from zoo.config import build_config, load_yaml, merge, validate
from zoo.errors import ConfigError, UnknownFamilyError
from zoo.train.fsdp import FSDP_DEFAULTS, FSDP_TYPES
from zoo.train.lora import LORA_DEFAULTS, LORA_TYPES

# The engine's sections. Families add their own through Trainer.config_defaults.
ENGINE_DEFAULTS: dict[str, Any] = {
    "family": None,            # registry name; selects the trainer (zoo.registry Family.trainer)
    "trainer": None,           # or an explicit "package.module:Class"
    "optim": {
        "name": "adamw",       # adamw | adam | sgd
        "lr": 1.0e-3,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "weight_decay": 0.0,
        "momentum": 0.0,       # sgd
        "nesterov": False,     # sgd
    },
    "schedule": {
        "name": "constant",    # constant | linear | cosine | polynomial
        "warmup_steps": 0,     # linear warmup from lr/warmup_steps to lr
        "total_steps": None,   # decay horizon; default train.max_steps
        "min_lr_ratio": 0.0,   # final lr = lr * min_lr_ratio
        "power": 1.0,          # polynomial
    },
    "train": {
        "max_steps": 1000,     # optimizer steps
        "batch_size": 8,       # per process
        "grad_accum": 1,
        "clip_grad_norm": None,  # global grad-norm clipping; null = off
        "seed": 0,
        "log_every": 10,
        "ckpt_every": 500,     # 0 = no intermediate checkpoints (Ctrl-C still saves the last finished step)
        "keep_last": 2,
        "eval_every": 0,       # 0 = never
        "output_dir": "runs/zoo",
        "num_workers": 0,
        "precision": "auto",   # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
        "device": "auto",      # auto | cpu | cuda | cuda:N
        "distributed": "ddp",  # under torchrun: ddp | fsdp
        "fsdp": dict(FSDP_DEFAULTS),  # train.distributed=fsdp: layer units, mixed precision, activation checkpointing
        "lora": dict(LORA_DEFAULTS),  # r > 0: peft LoRA adapters, only they train; final/ is an adapter folder
        "find_unused_parameters": False,
        "shuffle": True,
        "drop_last": True,
        "resume": "auto",      # auto | true | false | path to checkpoints/step-*
        "overwrite": False,
        "progress": "auto",    # auto (a bar on a terminal, plain lines otherwise) | bar | lines | false
        "tensorboard": True,
    },
}

ENGINE_TYPES: dict[str, tuple[type, ...]] = {
    "family": (str,),
    "trainer": (str,),
    "schedule.total_steps": (int,),
    "train.clip_grad_norm": (float, int),
    "train.resume": (str, bool),
    "train.progress": (str, bool),
    **FSDP_TYPES,
    **LORA_TYPES,
}

ENGINE_SECTIONS = ("optim", "schedule", "train")


def import_object(dotted: str, *, key: str = "trainer") -> Any:
    """Import ``"package.module:Name"``.

    Raises ConfigError naming ``key`` when the string is malformed, the module cannot be imported, or it has no
    such attribute.
    """
    module_name, sep, attr = str(dotted).partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key} must look like 'package.module:ClassName', got {dotted!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{key}: cannot import {module_name!r} ({err}).") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ConfigError(f"{key}: {module_name!r} has no {attr!r}.") from err


def family_trainer(name: str):
    """(family name, trainer class) of a family, or of a model card's family.

    Raises ConfigError for a family that has no trainer.
    """
    from zoo.registry import get_family

    family = get_family(name)
    if not family.trainer:
        raise ConfigError(f"Family {family.name!r} has no trainer; it cannot be trained with `zoo train`.")
    return family.name, import_object(family.trainer, key=f"family {family.name!r} trainer")


def resolve_trainer(config: dict, trainer_cls=None):
    """The Trainer class a config asks for: explicit class > ``trainer:`` > ``family:``.

    Raises ConfigError when neither a family nor a trainer is named, and the errors of import_object.
    """
    if trainer_cls is not None:
        return trainer_cls
    if config.get("trainer"):
        return import_object(config["trainer"])
    if config.get("family"):
        return family_trainer(config["family"])[1]
    raise ConfigError("The recipe names no trainer: set `family: NAME` (see `zoo list`) or "
                      "`trainer: package.module:Class`, or pass the family to `zoo train`.")


def recipe_defaults(trainer_cls) -> dict:
    """Engine defaults merged with the trainer's ``config_defaults`` (the trainer wins)."""
    return merge(ENGINE_DEFAULTS, getattr(trainer_cls, "config_defaults", {}) or {})


def load_recipe(path: str | Path | None, overrides=(), *, family: str | None = None, trainer_cls=None) -> dict:
    """Read a YAML recipe, apply ``key=value`` overrides, fill defaults and validate.

    ``family`` (the ``zoo train FAMILY`` argument) must agree with the recipe's ``family:``;
    a model card name is accepted too: its family is trained, starting from ``model.init`` = the card when the
    trainer has that key (replacing the trainer's default, not a recipe's or an override's ``model.init``), or,
    for a card without released weights, from scratch at the card's size (``model.size``, unless the recipe or
    an override sets it).

    Raises ConfigError for a missing or malformed recipe file, an unknown key or a wrong type (naming the file
    or the override), and a recipe whose family or trainer contradicts the command line's.
    """
    source = str(path) if path is not None else "the defaults"
    recipe = load_yaml(path) if path is not None else {}
    init_from_card = None
    if family is not None and ":" in family:  # `zoo train package.module:Trainer`
        if recipe.get("trainer") and recipe["trainer"] != family:
            raise ConfigError(f"`zoo train {family}` but {source} declares trainer: {recipe['trainer']}.")
        recipe["trainer"] = family
        family = None
    if family is not None:
        family_name, init_from_card = _family_or_card(family)
        declared = recipe.get("family")
        if declared and declared != family_name:
            raise ConfigError(f"`zoo train {family}` but {source} declares family: {declared}; use the recipe's "
                              "family or remove its `family:` line.")
        recipe["family"] = family_name
    # which trainer decides the schema: overrides may name it too
    from zoo.config import parse_overrides

    parsed = parse_overrides(overrides)
    probe = {**recipe, **{k: v for k, v in parsed.items() if k in ("family", "trainer")}}
    trainer_cls = resolve_trainer(probe, trainer_cls)
    defaults = recipe_defaults(trainer_cls)
    config = build_config(defaults, recipe, parsed, source=source, types=ENGINE_TYPES)
    model = config.get("model")
    section = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    init_given = bool(parsed.get("model.init") or section.get("init"))  # a trainer's default init is not "given"
    if init_from_card and isinstance(model, dict) and "init" in model and not init_given:
        from zoo.cards import get_card

        card = get_card(init_from_card)
        size_given = "model.size" in parsed or "size" in section
        if card.has_weights or card.config or "size" not in model:
            model["init"] = init_from_card
        elif not size_given:  # nothing released to start from: the card is its size, trained from scratch
            model["init"], model["size"] = None, card.size
    return config


def _family_or_card(name: str) -> tuple[str, str | None]:
    try:
        return family_trainer(name)[0], None
    except UnknownFamilyError as family_error:
        try:
            from zoo.cards import get_card

            card = get_card(name)
        except Exception:
            raise family_error from None
        return card.family, card.name


def complete_config(config: dict, trainer_cls=None) -> tuple[dict, type]:
    """A full, validated copy of ``config`` (defaults filled) and its trainer class (for ``run``)."""
    trainer_cls = resolve_trainer(config, trainer_cls)
    defaults = recipe_defaults(trainer_cls)
    full = merge(defaults, copy.deepcopy(config))
    validate(full, defaults, source="the run config", types=ENGINE_TYPES)
    return full, trainer_cls
