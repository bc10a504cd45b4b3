"""open_clip checkpoints -> ClipModel, strictly.

Reads what open_clip writes and publishes: a state dict of ``open_clip.model.CLIP`` (keys
``visual.*``, ``transformer.*``, ``token_embedding.weight``, ``positional_embedding``,
``ln_final.*``, ``text_projection``, ``logit_scale``), bare or under ``state_dict`` (open_clip's
training checkpoints, whose keys may carry DDP's ``module.`` prefix), as ``.safetensors`` or as a
torch file loaded with ``weights_only=True``. Every key must match the config's model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from zoo.errors import CheckpointFormatError


def read_state_dict(path) -> dict:
    """The open_clip state dict of a ``.safetensors``/``.bin``/``.pt`` file (``module.`` stripped)."""
    path = Path(path)
    if path.is_dir():
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointFormatError(f"{path} holds no open_clip_model.safetensors or open_clip_pytorch_model.bin.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointFormatError(f"cannot read {path} as a torch checkpoint with weights_only=True "
                                        f"({type(error).__name__}: {error}).") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path} does not hold a state dict.")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load(path, config: dict):
    """A :class:`~zoo.vision.clip.model.ClipModel` of ``config`` with the open_clip weights at ``path``."""
    from zoo.hub import load_state_dict_strict
    from zoo.vision.clip.builder import build

    model = build(config)
    state = {f"clip.{k}": v for k, v in read_state_dict(path).items()}
    load_state_dict_strict(model, state, str(path), hint="  pick the size that matches the checkpoint "
                                                          "(--size vit-b-32, tiny) or override model_cfg.*")
    return model
