"""HuBERTopic (Maekaku et al., arXiv 2310.03975): HuBERT with topic-model labels.

HuBERT's masked prediction of k-means units (Hsu et al., arXiv 2106.07447), plus an auxiliary
utterance-level task: predict the utterance's topic, found by an LDA topic model
fitted on bag-of-units documents of the pseudo-labels. No official code
exists; README.md here lists which values are the paper's and which are ours.

Public pieces: HubertopicModel (model.py: ``extract_features``, ``predict_topic``),
the label pipeline (features.py, kmeans.py, topics.py, pipeline.py), the trainer
(trainer.py), ``evaluate`` (evaluate.py) and the upstream loader (loader.py).
"""
from zoo.registry import Family, register_family
from zoo.speech.hubertopic.builder import DEFAULT_CONFIG, SIZES, build, make_config

FAMILY = register_family(Family(
    name="hubertopic",
    modality="speech",
    build=build,
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.speech.hubertopic.trainer:HubertopicTrainer",
    load="zoo.speech.hubertopic.loader:load",
    evaluate="zoo.speech.hubertopic.evaluate:evaluate",
    description="HuBERTopic: HuBERT pretraining with an auxiliary utterance topic task from LDA on k-means "
                "units (arXiv 2310.03975). Also loads upstream HuBERT (transformers or fairseq checkpoints).",
))

__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "make_config", "load"]


# Loaded on first use: importing the family (``zoo list``) must not import torch (see zoo.registry).
_LAZY = {
    "load": "zoo.speech.hubertopic.loader",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
