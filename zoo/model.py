"""The base class of every zoo model: a torch module with a JSON config and Hub I/O."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

import torch

from zoo.errors import ZooError


class ZooModel(torch.nn.Module):
    """A model of one family, built from a JSON-able ``config`` dict.

    Everything that must travel with the weights (codebooks, running statistics)
    is a parameter or buffer, so ``save_pretrained`` puts it in ``model.safetensors``.
    """

    family: ClassVar[str] = ""
    # State-dict prefixes that may be re-initialised when a config override changes
    # their shape (like timm's ``num_classes``): e.g. ("classifier.",).
    head_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(dict(config))
        self.card_name: str | None = None
        # what zoo.load was given for these weights (card, hf-hub:..., folder); None when built in code
        self.name_or_path: str | None = None

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (or buffer); CPU for a model with neither."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    def save_pretrained(self, save_directory: str | Path, *, card: Any = None, overwrite: bool = False,
                        max_shard_size: int | str = "5GB") -> Path:
        """Write ``config.json``, the weights and a README model card atomically; returns the folder.

        Weights up to ``max_shard_size`` (bytes or ``"500MB"``-style) go to ``model.safetensors``;
        larger ones to ``model-0000i-of-0000n.safetensors`` shards with ``model.safetensors.index.json``.
        A model with LoRA layers (``zoo.train.lora``) writes an adapter folder instead.
        Raises :class:`~zoo.errors.OutputExistsError` when the folder holds files and ``overwrite`` is false.
        """
        from zoo import hub

        if getattr(self, "lora_config", None) is not None:  # LoRA layers injected: save the adapter
            from zoo.train.lora import save_adapter

            return save_adapter(self, save_directory, card=card, overwrite=overwrite)
        return hub.save_pretrained(self, save_directory, card=card, overwrite=overwrite, max_shard_size=max_shard_size)

    def push_to_hub(self, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                    token: str | None = None, commit_message: str | None = None,
                    max_shard_size: int | str = "5GB") -> str:
        """Save to a temporary folder (shards above ``max_shard_size``) and upload it to ``repo_id``;
        returns the commit id."""
        from zoo import hub

        return hub.push_model(self, repo_id, revision=revision, private=private, token=token,
                              commit_message=commit_message, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "ZooModel":
        """Same as ``zoo.load``; checks that the result is of this class.

        Raises ZooError when the folder or name holds another model class, and the errors of zoo.load.
        """
        from zoo.api import load

        model = load(name_or_path, **kwargs)
        if cls is not ZooModel and not isinstance(model, cls):
            raise ZooError(f"{name_or_path!r} holds a {type(model).__name__} ({model.family}), not a {cls.__name__}")
        return model
