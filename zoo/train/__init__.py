"""The training engine (DESIGN.md "Training engine", CONTRACTS.md "zoo.train").

    from zoo.train import Trainer, load_recipe, run
    config = load_recipe("recipe.yaml", ["optim.lr=3e-4", "train.max_steps=100"])
    final_folder = run(config)          # output_dir/final, zoo format
"""
from zoo.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from zoo.train.engine import run
from zoo.train.recipe import ENGINE_DEFAULTS, load_recipe, recipe_defaults, resolve_trainer
from zoo.train.sampler import ResumableBatchSampler
from zoo.train.trainer import Trainer

__all__ = ["ENGINE_DEFAULTS", "ResumableBatchSampler", "Trainer", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "load_recipe", "recipe_defaults", "resolve_trainer", "run"]
