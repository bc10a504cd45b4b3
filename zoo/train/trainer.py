"""The protocol a family implements to be trained by the engine (``zoo.train.engine.run``)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch


class Trainer:
    """Base class of every family trainer; the engine (``zoo.train.run``) drives it.

    Subclasses set ``config_defaults`` (their recipe sections with defaults) and implement
    ``build_model``, ``build_datasets`` and ``training_step``; the hooks are optional.
    ``path_keys`` names config keys that must point at existing files or folders (checked
    before training starts), e.g. ``("data.train",)``.

    Before ``build_model`` the engine sets ``device``, ``rank``, ``world_size`` and
    ``output_dir`` on the trainer (defaults below for use outside the engine).
    """

    config_defaults: ClassVar[dict] = {}
    path_keys: ClassVar[tuple[str, ...]] = ()

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    output_dir = None

    def __init__(self, config: dict):
        self.config = config

    # ------------------------------------------------------------------ required
    def build_model(self) -> torch.nn.Module:
        """The model to train (a ZooModel), from ``config["model"]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_model()")

    def build_datasets(self) -> tuple[Any, Any]:
        """Map-style datasets ``(train, eval or None)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_datasets()")

    def collate(self, items: list) -> Any:
        """Turn a list of dataset items into a batch (default: ``torch.utils.data.default_collate``)."""
        return torch.utils.data.default_collate(items)

    def training_step(self, model, batch) -> dict:
        """``{"loss": scalar tensor, **metrics}``; ``model`` may be DDP-wrapped: only call it."""
        raise NotImplementedError(f"{type(self).__name__} must implement training_step()")

    # ------------------------------------------------------------------ optional hooks
    def param_groups(self, model) -> list[dict]:
        """Optimizer parameter groups; default: every trainable parameter, weight decay from ``optim``."""
        weight_decay = float((self.config.get("optim") or {}).get("weight_decay") or 0.0)
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def lr_factors(self, optimizer) -> list | None:
        """Per-group learning-rate factors: one ``f(step) -> float`` (or None) per ``optimizer.param_groups``
        entry, multiplied with the recipe's ``schedule`` (``step`` counts optimizer steps from 0). Default
        None: the schedule alone, the same for every group."""
        return None

    def fsdp_layer_classes(self, model) -> list[type] | None:
        """Module classes FSDP shards one unit each under ``train.distributed: fsdp`` (e.g. the transformer
        layer class). ``None``: ``train.fsdp.layer_classes``, else transformers' ``_no_split_modules``, else
        the class of every child of an ``nn.ModuleList`` (``zoo.train.fsdp``)."""
        return None

    def on_train_start(self, model) -> None:
        """Once, after the model is built and moved to its device, before a checkpoint is restored."""

    def on_step_end(self, model, step: int) -> None:
        """After each optimizer step (``step`` counts from 1)."""

    def on_train_end(self, model) -> None:
        """Once, after the last step and before ``final/`` is saved (e.g. fit a tokenizer)."""

    def on_epoch_start(self, model, epoch: int) -> None:
        """Before the first batch of each epoch (not again when a run resumes mid-epoch)."""

    def evaluate(self, model) -> dict:
        """Metrics every ``train.eval_every`` steps (called on every rank; rank 0's are logged)."""
        return {}

    def state_dict(self) -> dict:
        """Trainer state that exact resume must restore (EMA teacher, centers, own RNGs)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (called on resume, after ``on_train_start``)."""
        pass
