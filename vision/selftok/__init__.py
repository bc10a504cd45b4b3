"""Selftok (Wang et al., arXiv 2505.07538): discrete visual tokens of autoregression, by diffusion.

``zoo.load("selftok-512")`` gives the released 512-token tokenizer (diffusion decoder),
``zoo.load("selftok-512-renderer")`` the one-step renderer; ``zoo train selftok`` trains them.
Public pieces: SelftokModel (model.py), DiTi / diti_indices (diti.py), QformerEncoder
(encoder.py), the loader (loader.py) and evaluation (evaluate.py). Importing this package
imports only the (torch-free) builder; the rest loads on first use.
"""
import importlib

from zoo.registry import Family, register_family
from zoo.vision.selftok.builder import DEFAULT_CONFIG, SIZES, build, make_config


FAMILY = register_family(Family(
    name="selftok",
    modality="vision",
    build="zoo.vision.selftok.builder:build",
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.vision.selftok.trainer:SelftokTrainer",
    load="zoo.vision.selftok.loader:load",
    evaluate="zoo.vision.selftok.evaluate:evaluate",
    description="Selftok: 1-D discrete image tokens in an autoregressive order, learned by a diffusion decoder "
                "whose visible tokens grow with the noise level (arXiv 2505.07538).",
))

_LAZY = {"DiTi": "zoo.vision.selftok.diti", "diti_indices": "zoo.vision.selftok.diti",
         "SelftokModel": "zoo.vision.selftok.model", "load": "zoo.vision.selftok.loader"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo.vision.selftok' has no attribute {name!r}")


__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "make_config", *_LAZY]
