"""The training engine: one loop for every family (``zoo train``; see ``zoo.train.engine``).

    from zoo.train import Trainer, load_recipe, run
    config = load_recipe("recipe.yaml", ["optim.lr=3e-4", "train.max_steps=100"])
    final_folder = run(config)          # output_dir/final, zoo format

Names are imported on first use, so ``import zoo.train.cli`` (``zoo --help``) does not import torch.
"""
import importlib

_EXPORTS = {
    "ENGINE_DEFAULTS": "zoo.train.recipe", "load_recipe": "zoo.train.recipe", "recipe_defaults": "zoo.train.recipe",
    "resolve_trainer": "zoo.train.recipe", "run": "zoo.train.engine", "Trainer": "zoo.train.trainer",
    "ResumableBatchSampler": "zoo.train.sampler", "latest_checkpoint": "zoo.train.checkpoint",
    "list_checkpoints": "zoo.train.checkpoint", "load_checkpoint": "zoo.train.checkpoint",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'zoo.train' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
