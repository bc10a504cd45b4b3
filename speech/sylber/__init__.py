"""Sylber (Cho et al., ICLR 2025): syllabic embeddings and segmentation from raw audio.

``zoo.load("sylber-base")`` gives the released encoder; ``zoo train sylber`` trains it
(official code: Berkeley-Speech-Group/sylber). Public pieces: SylberModel (model.py), segment (segment.py),
NoiseMixer (noise.py), fit_tokenizer (tokenizer.py), evaluate (evaluate.py).
"""
from zoo.registry import Family, register_family
from zoo.speech.sylber.builder import DEFAULT_CONFIG, SIZES, build

FAMILY = register_family(Family(
    name="sylber",
    modality="speech",
    build=build,
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.speech.sylber.trainer:SylberTrainer",
    load="zoo.speech.sylber.loader:load",
    evaluate="zoo.speech.sylber.evaluate:evaluate",
    commands={"segment": "zoo.speech.sylber.cli:segment_main"},
    description="Sylber: syllable segments and embeddings from a 9-layer HuBERT encoder "
                "(self-segmentation distillation; arXiv 2410.07168).",
))

__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "load"]


# Loaded on first use: importing the family (``zoo list``) must not import torch (see zoo.registry).
_LAZY = {
    "load": "zoo.speech.sylber.loader",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
