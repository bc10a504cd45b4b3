"""LoRA through peft for any family: ``train.lora`` in a recipe, adapters in the zoo format.

``train.lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: [q_proj, v_proj]}`` (``r: 0`` = off)
injects peft's LoRA layers into the model the trainer builds (``peft.inject_adapter_in_model``,
Hu et al. 2021, arXiv 2106.09685, eq. 3: ``h = W0 x + (alpha / r) B A x``, B initialised to zero);
only the LoRA matrices train. ``save_pretrained`` of such a model writes an **adapter folder**:

* ``adapter_config.json``: peft's ``LoraConfig`` (``base_model_name_or_path`` names the base);
* ``adapter_model.safetensors``: the LoRA weights only, in peft's key names;
* ``config.json``: the zoo header (family, the base's config) plus
  ``"adapter": {"type": "lora", "base": NAME}``, where NAME is what ``zoo.load`` was given for the
  base (card name, ``hf-hub:org/name@rev`` or folder). A base that ``zoo.load`` cannot rebuild by
  name (random init, built in code) is saved in the folder too (``model.safetensors``, ``"base": null``);
* ``README.md``.

``zoo.load(adapter folder)`` loads the base and applies the adapter on top (strict keys both ways).
``merge(model)`` folds the adapters into the base weights (``W0 + (alpha / r) B A``) and removes
the LoRA layers: a plain model that saves as an ordinary zoo folder (``train.lora.merge: true``
does that for the final folder of a run).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError

logger = logging.getLogger("zoo")

LORA_DEFAULTS = {
    "r": 0,                  # rank; 0 = LoRA off
    "alpha": 16,             # scaling alpha / r
    "dropout": 0.0,          # dropout on the LoRA branch's input
    "target_modules": None,  # module names (suffixes) or "all-linear"; null = every nn.Linear but output heads
    "merge": False,          # final folder: the merged plain model instead of an adapter
}
LORA_TYPES = {"train.lora.target_modules": (list, str)}
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_NAME = "default"


def enabled(options: dict | None) -> bool:
    """True when ``train.lora`` asks for LoRA: a mapping with rank ``r`` > 0 (``r: 0``, the default, is off)."""
    return bool(options) and int(options.get("r") or 0) > 0


def lora_config(options: dict):
    """peft ``LoraConfig`` from ``train.lora`` (``ConfigError`` for a bad value)."""
    from peft import LoraConfig

    options = {**LORA_DEFAULTS, **options}
    r = int(options["r"])
    if r < 1:
        raise ConfigError(f"train.lora.r must be a positive rank to use LoRA (0 = off), got {options['r']!r}.")
    target = options["target_modules"] or "all-linear"
    if not isinstance(target, str):
        target = [str(t) for t in target]
    return LoraConfig(r=r, lora_alpha=float(options["alpha"]), lora_dropout=float(options["dropout"]),
                      target_modules=target, bias="none")


def has_adapter(model: torch.nn.Module) -> bool:
    """True when ``model`` holds peft LoRA layers (``peft.tuners.lora.LoraLayer``) anywhere."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def apply(model: torch.nn.Module, options: dict | Any) -> torch.nn.Module:
    """Inject LoRA layers into ``model`` in place and freeze everything else; returns ``model``.

    ``options``: ``train.lora`` (dict) or a peft ``LoraConfig``. Raises ``ConfigError`` when
    ``target_modules`` matches no layer of the model.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = options if isinstance(options, LoraConfig) else lora_config(options)
    try:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"train.lora.target_modules={config.target_modules!r} does not fit this model ({err}). "
                          f"Its linear layers are named: {', '.join(names)}.") from err
    model.lora_config = config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("LoRA r=%d alpha=%g on %s: %d of %d parameters train (%.2f%%)", config.r, config.lora_alpha,
                sorted(config.target_modules) if not isinstance(config.target_modules, str) else config.target_modules,
                trainable, total, 100.0 * trainable / max(total, 1))
    return model


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights only, in peft's names (``...q_proj.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    # save_embedding_layers=False: peft's "auto" would look the base up on the Hub to compare vocabularies
    return get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME, save_embedding_layers=False)


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights under their names without LoRA (``q_proj.base_layer.weight`` -> ``q_proj.weight``)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}


def save_adapter(model, folder: str | Path, *, card: Any = None, overwrite: bool = False) -> Path:
    """Write ``model``'s adapter folder atomically (see the module docstring); returns it."""
    from zoo import hub, weights
    from zoo.files import staging_folder
    from zoo.version import __version__

    target = Path(folder)
    hub._check_output_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(model, "name_or_path", None)
    config = model.lora_config
    with staging_folder(target) as staging:  # every file or none; swapped in on success
        meta = {"family": model.family, "zoo_version": __version__, "config": model.config,
                "adapter": {"type": "lora", "base": base}}
        if getattr(model, "card_name", None):
            meta["card"] = model.card_name
        (staging / hub.CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        peft_config = config.to_dict()
        peft_config["base_model_name_or_path"] = base
        peft_config["target_modules"] = sorted(peft_config["target_modules"]) \
            if isinstance(peft_config["target_modules"], (set, list)) else peft_config["target_modules"]
        (staging / ADAPTER_CONFIG_NAME).write_text(json.dumps(peft_config, indent=2, sort_keys=True, default=str) + "\n",
                                                   encoding="utf-8")
        weights.write_safetensors(staging / ADAPTER_WEIGHTS_NAME, weights.plain_tensors(adapter_state_dict(model)),
                                  metadata={"format": "pt", "family": model.family})
        if base is None:  # the base cannot be rebuilt by name: keep its weights with the adapter
            logger.info("the LoRA base has no name zoo.load can rebuild; saving its weights in %s too", target)
            weights.save_weights(base_state_dict(model), staging, metadata={"format": "pt", "family": model.family})
        readme = hub.model_card_text(model, card).replace(
            "## Usage", f"## Usage\n\nA LoRA adapter (r={config.r}, alpha={config.lora_alpha}) on "
                        f"{'`' + base + '`' if base else 'the base weights saved here'}; `zoo.load` applies it.\n", 1)
        (staging / hub.README_NAME).write_text(readme, encoding="utf-8")
    return target


def load_adapter_folder(folder: Path, meta: dict, source: str, *, cached: bool = False, dtype=None, device=None):
    """The model an adapter folder describes: its base (by name, or from the folder), with the adapter applied.

    Raises CheckpointFormatError for an adapter type other than LoRA, an unreadable adapter config, or a base of
    another family; CheckpointKeysError when the adapter weights do not match the LoRA layers.
    """
    from peft import LoraConfig, set_peft_model_state_dict

    from zoo import weights
    from zoo.registry import get_family

    adapter = meta["adapter"]
    if adapter.get("type") != "lora":
        raise CheckpointFormatError(f"{source}: adapter type {adapter.get('type')!r} is not supported (only 'lora').")
    try:
        options = json.loads((folder / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointFormatError(f"{source}: cannot read {ADAPTER_CONFIG_NAME} ({err}).") from err
    if adapter.get("base"):
        from zoo.api import load

        model = load(adapter["base"], dtype=dtype, device=device)
        if model.family != meta["family"]:
            raise CheckpointFormatError(f"{source}: the adapter is for a {meta['family']} model but its base "
                                        f"{adapter['base']!r} is a {model.family} model.")
        if json.loads(json.dumps(model.config)) != meta["config"]:
            logger.warning("%s: the base %s now has a different config than when the adapter was saved",
                           source, adapter["base"])
        model.train(True)
    else:
        family = get_family(meta["family"])
        model = weights.load_pretrained(family.build, dict(meta["config"]), folder / weights.weight_files(folder)[0],
                                        source=source, cached=cached, dtype=dtype, device=device)
    options = {k: v for k, v in options.items() if k in LoraConfig.__dataclass_fields__}
    options["inference_mode"] = False
    apply(model, LoraConfig(**options))
    infos = weights.read_index(folder / ADAPTER_WEIGHTS_NAME, cached=cached)
    expected = {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
    mismatched = [(k, expected[k], infos[k].shape) for k in infos if k in expected and expected[k] != infos[k].shape]
    if set(expected) != set(infos) or mismatched:
        raise CheckpointKeysError(f"{source} ({ADAPTER_WEIGHTS_NAME})", [k for k in expected if k not in infos],
                                  [k for k in infos if k not in expected], mismatched,
                                  hint="  the adapter weights do not match adapter_config.json's target modules.")
    tensors = dict(weights.stream_tensors(infos.values(), cached=cached, mmap=False))
    set_peft_model_state_dict(model, tensors, adapter_name=ADAPTER_NAME)
    model.name_or_path = adapter.get("base")
    model.card_name = meta.get("card")
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model


def final_model(model: torch.nn.Module, options: dict | None) -> torch.nn.Module:
    """What a run saves as ``final/``: the merged plain model when ``train.lora.merge``, else ``model``."""
    if enabled(options) and options.get("merge") and has_adapter(model):
        return merge(model)
    return model


def folder_files(folder: Path, meta: dict) -> list[str]:
    """The files of an adapter folder that push and pull carry (adapter, and base weights when saved)."""
    from zoo import weights

    names = [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    if not meta["adapter"].get("base"):
        names += weights.weight_files(folder)
    return names


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every LoRA adapter into its base weight and remove the LoRA layers, in place; returns ``model``.
    The result has the base model's structure and state-dict keys, and no ``lora_config``."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, module.get_base_layer())
    if "lora_config" in model.__dict__:
        del model.__dict__["lora_config"]
    for param in model.parameters():
        param.requires_grad_(True)
    return model
