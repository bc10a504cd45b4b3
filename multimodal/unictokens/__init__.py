"""UniCTokens (NeurIPS 2025, arXiv 2505.14671): unified concept tokens for personalised
understanding and generation on a Show-o base.

``zoo.load("show-o-512")`` gives the Show-o base (``showlab/show-o-512x512`` + ``showlab/magvitv2``);
``zoo train unictokens --config .../recipes/all.yaml`` learns one concept in the paper's three
stages. Public pieces: UniCTokensModel (model.py; ``generate_image``, ``answer``, ``recognize``),
the concept rows (concept_tokens.py), the stage initialisations and diff masks (stages.py), the
concept folder (data.py), evaluation (evaluate.py).
"""
from zoo.multimodal.unictokens.builder import DEFAULT_CONFIG, SIZES, build
from zoo.registry import Family, register_family

FAMILY = register_family(Family(
    name="unictokens",
    modality="multimodal",
    build=build,
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.multimodal.unictokens.trainer:UniCTokensTrainer",
    load="zoo.multimodal.unictokens.loader:load",
    evaluate="zoo.multimodal.unictokens.evaluate:evaluate",
    description="UniCTokens: personal concepts as unified tokens of a Show-o model (understanding and "
                "generation; arXiv 2505.14671).",
))

__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "load"]


def __getattr__(name: str):
    # loaded on first use: importing the family (``zoo list``) must not import torch
    if name == "load":
        from zoo.multimodal.unictokens.loader import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
