"""Modeling Collaborator (Toubal et al., CVPR 2024, arXiv 2403.02626): a subjective visual concept
in words -> a light image classifier, with LLM and VQA tools doing the labelling.

The concept is decomposed into questions (LLM), the unlabelled pool is mined with LLM-written
search queries (open_clip retrieval), an Annotator labels candidates (VQA caption + answers, LLM
chain of thought ending in "Final answer: Yes/No"), a head on frozen open_clip embeddings is
distilled from those labels, active-learning rounds add the most uncertain images, and a human
review of ~100 images turns disagreements into an edited concept description. No official code
exists: this is a reference implementation; README.md says which values are the paper's and
which are ours.

Public pieces: Concept (concept.py), CollaboratorClassifier (model.py), Annotator (annotator.py),
the steps (decompose.py, queries.py, embeddings.py, retrieve.py, distill.py, active.py, review.py),
baselines (baselines.py), metrics and ``zoo eval`` (evaluate.py), the trainer (trainer.py) and the
offline template LLM of the demo (offline.py).
"""
from zoo.registry import Family, register_family
from zoo.vision.modeling_collaborator.builder import DEFAULT_CONFIG, SIZES, build, make_config

FAMILY = register_family(Family(
    name="collaborator",
    modality="vision",
    build=build,
    sizes=SIZES,
    defaults=DEFAULT_CONFIG,
    trainer="zoo.vision.modeling_collaborator.trainer:CollaboratorTrainer",
    evaluate="zoo.vision.modeling_collaborator.evaluate:evaluate",
    description="Modeling Collaborator: subjective concept classifiers from LLM + VQA auto-labels, distilled "
                "into a head on frozen open_clip embeddings with active learning and a ~100-image human "
                "review (arXiv 2403.02626).",
))

__all__ = ["FAMILY", "DEFAULT_CONFIG", "SIZES", "build", "make_config"]
