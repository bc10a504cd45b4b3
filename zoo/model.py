"""The base class of every zoo model (a torch module with a JSON config and Hub I/O), and the
``inference`` decorator that every inference method of a model uses."""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import torch

from zoo.errors import ZooError

F = TypeVar("F", bound=Callable[..., Any])


def inference(method: F | None = None, *, inference_mode: bool = False) -> F:
    """Run ``method(module, ...)`` in eval mode without autograd, then restore every flag.

    For the inference methods of a model (``segment``, ``extract_features``, ``embed``,
    ``generate``, ...) and for functions whose first argument is the model (``evaluate``):
    dropout and layer drop are off, so two calls on the same input give the same result
    whatever mode the model was left in (for example ``model.train()`` after fine-tuning in
    the same process). Every submodule's own ``training`` flag is put back afterwards, so a
    model with a frozen (eval) part inside a training model comes back exactly as it was,
    also when ``method`` raises.

    Gradients are off through ``torch.no_grad()``. ``inference_mode=True`` uses
    ``torch.inference_mode()`` instead (slightly faster, but its outputs can never enter
    autograd later); use it only where results are not fed back into training.

    Use as ``@inference`` or ``@inference(inference_mode=True)``. Raises ``TypeError`` at
    call time when the first argument is not a ``torch.nn.Module``.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(module, *args, **kwargs):
            if not isinstance(module, torch.nn.Module):
                raise TypeError(f"{function.__qualname__} is an inference method: its first argument must be a "
                                f"torch.nn.Module, got {type(module).__name__}.")
            flags = [(sub, sub.training) for sub in module.modules()]
            module.eval()
            try:
                with torch.inference_mode() if inference_mode else torch.no_grad():
                    return function(module, *args, **kwargs)
            finally:
                for sub, flag in flags:
                    sub.training = flag

        wrapper.__zoo_inference__ = True  # lets tests check that an API is decorated
        return wrapper  # type: ignore[return-value]

    return decorate(method) if method is not None else decorate  # type: ignore[return-value]


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
