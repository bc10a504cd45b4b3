"""The protocol a family implements to be trained by the engine (``zoo.train.engine.run``)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from zoo.errors import ConfigError


class Trainer:
    """Base class of every family trainer; the engine (``zoo.train.run``) drives it.

    Subclasses set ``config_defaults`` (their recipe sections with defaults) and implement
    ``build_datasets`` and ``training_step``; the hooks are optional. The default ``build_model`` builds
    or loads a model of the trainer's registry family (:meth:`family`) from the recipe's ``model``
    section; a family with extras overrides it and calls ``super().build_model()``.
    ``path_keys`` names config keys that must point at existing files or folders (checked
    before training starts), e.g. ``("data.train",)``.

    Before ``build_model`` the engine sets ``device``, ``rank``, ``world_size`` and
    ``output_dir`` on the trainer (defaults below for use outside the engine).
    """

    config_defaults: ClassVar[dict] = {}
    # The registry family this trainer trains; None: the family that registers this class (or a base
    # class) as its ``trainer``, else the recipe's ``family:``. Set it on trainers no family registers.
    family_name: ClassVar[str | None] = None
    path_keys: ClassVar[tuple[str, ...]] = ()

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    output_dir = None

    def __init__(self, config: dict):
        self.config = config

    # ------------------------------------------------------------------ model
    def family(self):
        """The :class:`zoo.registry.Family` this trainer trains.

        ``family_name`` when the class sets it; else the registered family whose ``trainer`` reference
        (``"package.module:Class"``) names this class or, nearest first, one of its base classes; else the
        recipe's ``family:``. Raises :class:`~zoo.errors.ConfigError` when none of them names a family,
        :class:`~zoo.errors.UnknownFamilyError` for an unknown name.
        """
        from zoo.registry import get_family, list_families

        name = type(self).family_name
        if not name:
            by_trainer = {family.trainer: family for family in list_families() if family.trainer}
            for cls in type(self).__mro__:
                family = by_trainer.get(f"{cls.__module__}:{cls.__qualname__}")
                if family is not None:
                    return family
            name = self.config.get("family")
        if not name:
            raise ConfigError(f"{type(self).__name__} does not say which model family it trains: set `family: NAME` "
                              "in the recipe (see `zoo list`), set the class's family_name, or override build_model().")
        return get_family(name)

    def build_model(self) -> torch.nn.Module:
        """The model to train (a ZooModel of :meth:`family`), in training mode, from ``config["model"]``.

        ``model.init`` set: ``zoo.load(model.init, **model.overrides)`` (a card name, a zoo folder or
        ``hf-hub:org/name``; an override that changes a head's shape re-initialises that head). Otherwise a
        random-init model of ``model.size`` (empty: the trainer's default size, else the family's first)
        with ``model.overrides``. Raises :class:`~zoo.errors.ConfigError` for an unknown size or override
        key, or when ``model.init`` is a model of another family; ``zoo.load``'s errors for an ``init``
        that cannot be loaded.
        """
        import zoo

        family = self.family()
        section = self.config.get("model") or {}
        overrides = dict(section.get("overrides") or {})
        init = section.get("init")
        if init:
            model = zoo.load(str(init), **overrides)
            loaded = str(getattr(model, "family", "") or "")
            if loaded.lower().replace("_", "-") != family.name.lower().replace("_", "-"):
                raise ConfigError(f"model.init={init!r} is a {loaded or type(model).__name__} model, not a "
                                  f"{family.name} model: give a {family.name} card, zoo folder or hf-hub name "
                                  "(see `zoo list`), or leave model.init empty to train from scratch.")
        else:
            size = section.get("size") or (type(self).config_defaults.get("model") or {}).get("size")
            model = family.build(family.make_config(size or None, overrides, source="model.overrides"))
        model.train()
        return model

    def build_datasets(self) -> tuple[Any, Any]:
        """Map-style datasets ``(train, eval or None)``.

        Raises NotImplementedError: every trainer must override it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_datasets()")

    def collate(self, items: list) -> Any:
        """Turn a list of dataset items into a batch (default: ``torch.utils.data.default_collate``)."""
        return torch.utils.data.default_collate(items)

    def training_step(self, model, batch) -> dict:
        """``{"loss": scalar tensor, **metrics}``; ``model`` may be DDP-wrapped: only call it.

        Raises NotImplementedError: every trainer must override it.
        """
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
