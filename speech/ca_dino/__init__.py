"""CA-DINO (Han, Chen, Qian; arXiv 2304.05754): self-supervised speaker verification.

Stage I is WeSpeaker's DINO recipe (ECAPA-TDNN student/teacher, multi-crop, centring,
EMA teacher); the cluster-aware stage draws an anchor's crops from other utterances of
the same k-means cluster; Stage II trains AAM-softmax on pseudo-labels with the dynamic
loss gate and label correction (DLG-LC). See README.md here.

Public pieces: CADinoModel (model.py: ``embed``, ``score``), ``eer`` / ``min_dcf``
(scoring.py), DINOLoss (dino_loss.py), ``kmeans_labels`` (cluster.py), ``LossGate``
(loss_gate.py), ``evaluate`` (evaluate.py), the trainer (trainer.py).
"""
from zoo.registry import Family, register_family
from zoo.speech.ca_dino.builder import DEFAULT_CONFIG, SIZES, build, make_config

FAMILY = register_family(Family(
    name="ca-dino",
    modality="speech",
    build=build,
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.speech.ca_dino.trainer:CADinoTrainer",
    load="zoo.speech.ca_dino.loader:load",
    evaluate="zoo.speech.ca_dino.evaluate:evaluate",
    description="CA-DINO: self-supervised speaker embeddings (WeSpeaker ECAPA-TDNN, DINO + cluster-aware "
                "DINO + DLG-LC pseudo-label training; arXiv 2304.05754). Loads WeSpeaker checkpoints.",
))

__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "make_config", "load", "eer", "min_dcf"]


# Loaded on first use: importing the family (``zoo list``) must not import torch (see zoo.registry).
_LAZY = {
    "load": "zoo.speech.ca_dino.loader",
    "eer": "zoo.speech.ca_dino.scoring",
    "min_dcf": "zoo.speech.ca_dino.scoring",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
