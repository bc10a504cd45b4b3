"""FSDP2 for the engine (``train.distributed: fsdp`` under torchrun): sharding, mixed precision,
activation checkpointing and sharded checkpoints.

* ``shard(model, options, trainer)`` applies ``torch.distributed.fsdp.fully_shard`` to
  every transformer layer (one communication unit each), then to the root, in place. The
  layer classes come from ``train.fsdp.layer_classes`` (class names), else the trainer's
  ``fsdp_layer_classes(model)`` hook, else transformers' ``_no_split_modules`` of any
  ``PreTrainedModel`` inside the model (e.g. ``LlamaDecoderLayer``), else the class of every
  child of an ``nn.ModuleList`` (the usual ``layers`` list).
* ``train.fsdp.mixed_precision: bf16`` keeps float32 sharded parameters for the optimizer and
  all-gathers them in bfloat16 for forward and backward; gradients are reduced in
  ``train.fsdp.reduce_dtype`` (float32 by default): FSDP2's ``MixedPrecisionPolicy``. It runs on
  CPU too (gloo, tested), where it only shows the numerics: CPU bfloat16 matmuls are not faster.
* ``train.fsdp.activation_checkpointing: true`` wraps each layer with torch's
  ``checkpoint_wrapper`` (non-reentrant) before sharding: activations inside a layer are
  recomputed in backward. State-dict keys do not change.
* ``save_sharded`` / ``load_sharded``: every rank writes and reads its own shard of the model
  and optimizer state with ``torch.distributed.checkpoint`` (DCP), so no rank ever holds the
  full state; a checkpoint resumes on another number of processes too (DCP reshards).
* ``full_state_dict`` gathers the full weights on rank 0 (CPU) for the final zoo-format save.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterable

import torch

from zoo.errors import ConfigError

logger = logging.getLogger("zoo.train")

FSDP_DEFAULTS = {
    "layer_classes": None,            # class names sharded one unit each; null = the trainer's hook / a default
    "mixed_precision": None,          # null (float32) | bf16 (parameters gathered and computed in bfloat16)
    "reduce_dtype": "fp32",           # gradient reduce-scatter dtype under mixed precision: fp32 | bf16
    "activation_checkpointing": False,
    "reshard_after_forward": True,    # free gathered parameters after forward (ZeRO-3); false keeps them (ZeRO-2)
}
FSDP_TYPES = {"train.fsdp.layer_classes": (list, str), "train.fsdp.mixed_precision": (str,)}
DCP_DIR = "dcp"
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def default_layer_classes(model: torch.nn.Module) -> list[type]:
    """transformers' ``_no_split_modules`` classes found in ``model``, else the classes of ``nn.ModuleList`` children."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    found = _classes_named(model, names)
    if found:
        return found
    classes: list[type] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            for child in module:
                if type(child) not in classes:
                    classes.append(type(child))
    return classes


def _classes_named(model: torch.nn.Module, names: Iterable[str]) -> list[type]:
    names = set(names)
    classes: list[type] = []
    for module in model.modules():
        if type(module).__name__ in names and type(module) not in classes:
            classes.append(type(module))
    return classes


def resolve_layer_classes(model: torch.nn.Module, options: dict, trainer=None) -> list[type]:
    """The layer classes to shard one by one (see the module docstring for the order of sources).

    Raises ConfigError when ``layer_classes`` names a class the model does not contain (listing the ones it
    does).
    """
    wanted = options.get("layer_classes")
    if wanted:
        names = [wanted] if isinstance(wanted, str) else [str(n) for n in wanted]
        classes = _classes_named(model, names)
        absent = sorted(set(names) - {c.__name__ for c in classes})
        if absent:
            present = sorted({type(m).__name__ for m in model.modules()})
            raise ConfigError(f"train.fsdp.layer_classes names {absent}, which the model does not contain; its "
                              f"module classes are: {', '.join(present)}.")
        return classes
    hook = getattr(trainer, "fsdp_layer_classes", None)
    if hook is not None:
        classes = hook(model)
        if classes:
            return list(classes)
    return default_layer_classes(model)


def mixed_precision_policy(options: dict):
    """FSDP2 ``MixedPrecisionPolicy`` from ``train.fsdp``; ``None`` for float32 training.

    Raises ConfigError for a mixed_precision other than null or bf16, or a reduce_dtype other than fp32 or bf16.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    name = options.get("mixed_precision")
    if name in (None, "", "fp32", "float32", "none"):
        return None
    if str(name) not in _DTYPES:
        raise ConfigError(f"train.fsdp.mixed_precision must be null or bf16, got {name!r}.")
    reduce = str(options.get("reduce_dtype") or "fp32")
    if reduce not in _DTYPES:
        raise ConfigError(f"train.fsdp.reduce_dtype must be fp32 or bf16, got {reduce!r}.")
    return MixedPrecisionPolicy(param_dtype=_DTYPES[str(name)], reduce_dtype=_DTYPES[reduce])


def _replace_layers(model: torch.nn.Module, classes: tuple[type, ...], wrap) -> int:
    """Replace every module of ``classes`` (outermost ones) by ``wrap(module)`` in its parent."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, classes):
                setattr(parent, name, wrap(child))
                count += 1
    return count


def shard(model: torch.nn.Module, options: dict | None = None, trainer=None) -> torch.nn.Module:
    """``fully_shard`` each layer, then the root (in place); returns ``model`` (now an ``FSDPModule``).

    ``options`` is ``train.fsdp`` (see ``FSDP_DEFAULTS``). Needs an initialised process group.
    The returned model also gets ``no_sync()``, so gradient accumulation reduces once per step.

    Raises ConfigError when activation checkpointing is asked for but no layer classes are known.
    """
    from torch.distributed.fsdp import fully_shard

    options = {**FSDP_DEFAULTS, **(options or {})}
    classes = tuple(resolve_layer_classes(model, options, trainer))
    policy = mixed_precision_policy(options)
    kwargs = {"reshard_after_forward": bool(options["reshard_after_forward"])}
    if policy is not None:
        kwargs["mp_policy"] = policy
    if options["activation_checkpointing"]:
        if not classes:
            raise ConfigError("train.fsdp.activation_checkpointing needs layer classes: set train.fsdp.layer_classes.")
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

        _replace_layers(model, classes, lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    if options["activation_checkpointing"]:  # the wrappers are the units
        units = [m for m in model.modules() if isinstance(getattr(m, "_checkpoint_wrapped_module", None), classes)]
    else:
        units = [m for m in model.modules() if isinstance(m, classes)]
    for module in reversed(units):  # innermost first, should a layer class nest in another
        fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    logger.info("FSDP2: %d layer units (%s) + root; mixed precision %s; activation checkpointing %s", len(units),
                ", ".join(sorted({c.__name__ for c in classes})) or "none",
                options["mixed_precision"] or "off", "on" if options["activation_checkpointing"] else "off")

    @contextlib.contextmanager
    def no_sync():
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    model.no_sync = no_sync
    return model


# ----------------------------------------------------------------------------- checkpoints

def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: str | Path) -> Path:
    """Every rank writes its shard of the model and optimizer state into ``folder/dcp`` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    target = Path(folder) / DCP_DIR
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(target))
    return target


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: str | Path) -> None:
    """Read ``folder/dcp`` into the (sharded or plain) model and optimizer, strictly (collective under FSDP).

    Raises CheckpointFormatError when the folder holds no sharded (DCP) checkpoint.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    source = Path(folder) / DCP_DIR
    if not source.is_dir():
        from zoo.errors import CheckpointFormatError

        raise CheckpointFormatError(f"{folder} has no {DCP_DIR}/ folder: it is not a sharded (FSDP) checkpoint.")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(source))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=True))


def load_full(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """A full (unsharded) model/optimizer state dict into a sharded model (checkpoints written before DCP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True, strict=True))


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights, gathered on rank 0's CPU (other ranks get ``{}``); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_final(trainer, model: torch.nn.Module, final_dir: Path, is_main: bool) -> None:
    """Gather the full weights on rank 0 and save them through an unsharded copy of the model built on the
    meta device (no second random initialisation); collective."""
    full = full_state_dict(model)
    if is_main:
        from zoo.hub import load_state_dict_strict
        from zoo.weights import init_empty

        from zoo.train import lora

        options = trainer.config.get("train", {}).get("lora")
        with init_empty():
            plain = trainer.build_model()
            if lora.enabled(options):
                lora.apply(plain, options)
        load_state_dict_strict(plain, full, "the FSDP-trained model")
        lora.final_model(plain, options).save_pretrained(final_dir, overwrite=True)
