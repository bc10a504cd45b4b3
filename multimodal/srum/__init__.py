"""SRUM (Jin et al., arXiv 2510.12784): fine-grained self-rewarding for a unified multimodal model.

The base is BAGEL-7B-MoT (``zoo.models.bagel``, ``zoo.models.mot``): the model generates images for
compositional prompts, judges them itself region by region (boxes from a mask proposer) and globally,
and is fine-tuned with a reward-weighted flow-matching loss on its own images.

Public pieces: ``SrumModel`` (model.py: ``generate_image``, ``understand``), the reward functions
(rewards.py: prompts, parsers, reward map, loss), the self-reward pipeline (pipeline.py), the trainer
(trainer.py), the official-checkpoint loader (loader.py) and the shapes-world real check (demo.py).
"""
from zoo.multimodal.srum.builder import DEFAULT_CONFIG, SIZES, build, make_config
from zoo.registry import Family, register_family

FAMILY = register_family(Family(
    name="srum",
    modality="multimodal",
    build=build,
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.multimodal.srum.trainer:SrumTrainer",
    load="zoo.multimodal.srum.loader:load",
    description="SRUM: self-rewarding fine-tuning of BAGEL-7B-MoT (Mixture-of-Transformers unified model) with "
                "region-level and global rewards from the model itself (arXiv 2510.12784).",
))

__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "make_config", "load"]


# Loaded on first use: importing the family (``zoo list``) must not import torch (see zoo.registry).
def __getattr__(name: str):
    if name == "load":
        from zoo.multimodal.srum.loader import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
