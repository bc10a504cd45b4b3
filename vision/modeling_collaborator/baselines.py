"""Baselines on the same embeddings: CLIP zero-shot (the concept's name, or its description, as
the prompt), CuPL (Pratt et al., ICCV 2023: LLM-written descriptions of each class, their text
embeddings averaged), and the Annotator alone used as the classifier (Modeling Collaborator,
arXiv 2403.02626, compares against all three kinds).

A binary concept is scored as a two-class zero-shot problem: the positive class's text embedding
against a negative class's (the generic prompt "a photo." for zero-shot, LLM descriptions of
"not <name>" for CuPL), softmax over the CLIP logits (cosine times the model's logit scale); the
probability of the positive class is the score and 0.5 the threshold (ours).
"""
from __future__ import annotations

import numpy as np
import torch

from zoo.tools import parse_numbered_list

from .prompts import render

__all__ = ["class_embedding", "two_class_scores", "clip_zero_shot", "cupl", "annotator_scores",
           "NAME_TEMPLATE", "NEGATIVE_PROMPT"]

NAME_TEMPLATE = "a photo of a {name}."
NEGATIVE_PROMPT = "a photo."


def class_embedding(embedder, texts) -> torch.Tensor:
    """The normalised mean of the normalised text embeddings of ``texts`` ``[D]``."""
    features = embedder.encode_text(list(texts))
    return torch.nn.functional.normalize(features.mean(0), dim=0)


def _logit_scale(embedder) -> float:
    clip = getattr(embedder, "clip", None)
    scale = getattr(clip, "logit_scale", None)
    return float(scale.detach().exp()) if scale is not None else 100.0


def two_class_scores(embedder, image_embeddings, positive: torch.Tensor, negative: torch.Tensor) -> np.ndarray:
    """P(positive) ``float64 [N]`` for image embeddings ``[N, D]`` between two class embeddings."""
    images = torch.nn.functional.normalize(torch.as_tensor(np.asarray(image_embeddings, dtype=np.float32)), dim=-1)
    logits = _logit_scale(embedder) * images @ torch.stack([positive, negative]).T
    return torch.softmax(logits.double(), dim=-1)[:, 0].numpy()


def clip_zero_shot(embedder, image_embeddings, concept, *, mode: str = "name") -> tuple[np.ndarray, list[str]]:
    """Scores and the prompt used: ``mode="name"`` ("a photo of a <name>.") or ``"description"``."""
    prompt = NAME_TEMPLATE.format(name=concept.name) if mode == "name" else concept.description
    scores = two_class_scores(embedder, image_embeddings, class_embedding(embedder, [prompt]),
                              class_embedding(embedder, [NEGATIVE_PROMPT]))
    return scores, [prompt]


def cupl(llm, embedder, image_embeddings, concept, *, count: int = 10, prompts_dir=None):
    """CuPL scores: ``count`` LLM descriptions of the concept and of "not <name>", averaged per
    class. Returns ``(scores, {"positive": [...], "negative": [...]})``."""
    texts = {}
    for kind, label in (("positive", concept.name), ("negative", f"not {concept.name}")):
        answer = llm.generate(render("cupl", prompts_dir, context=concept.text(), label=label, count=count))
        texts[kind] = parse_numbered_list(answer) or [label]
    scores = two_class_scores(embedder, image_embeddings, class_embedding(embedder, texts["positive"]),
                              class_embedding(embedder, texts["negative"]))
    return scores, texts


def annotator_scores(annotations) -> np.ndarray:
    """The Annotator as a classifier: 1 for Yes, 0 for No, 0.5 for unknown/unreadable."""
    return np.array([0.5 if a.label is None else float(a.label) for a in annotations], dtype=np.float64)
