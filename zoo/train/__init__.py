"""The training engine: one loop for every family (``zoo train``; see ``zoo.train.engine``).

    from zoo.train import Trainer, load_recipe, run
    config = load_recipe("recipe.yaml", ["optim.lr=3e-4", "train.max_steps=100"])
    final_folder = run(config)          # output_dir/final, zoo format

Names are imported on first use, so ``import zoo.train.cli`` (``zoo --help``) does not import torch.
"""
from zoo.registry import lazy_exports

_EXPORTS = {
    "ENGINE_DEFAULTS": "zoo.train.recipe", "load_recipe": "zoo.train.recipe", "recipe_defaults": "zoo.train.recipe",
    "resolve_trainer": "zoo.train.recipe", "run": "zoo.train.engine", "Trainer": "zoo.train.trainer",
    "ResumableBatchSampler": "zoo.train.sampler", "latest_checkpoint": "zoo.train.checkpoint",
    "list_checkpoints": "zoo.train.checkpoint", "load_checkpoint": "zoo.train.checkpoint",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
