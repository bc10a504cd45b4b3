"""Step 6: active learning. The current head scores the unlabelled pool; the images it is least
sure about go to the Annotator, and the head is trained again (Modeling Collaborator, arXiv
2403.02626, after Agile Modeling's active-learning loop; the Annotator replaces the human labeller).
"""
from __future__ import annotations

import numpy as np

from zoo.errors import ConfigError

__all__ = ["STRATEGIES", "uncertainty_scores", "select"]

STRATEGIES = ("margin", "entropy", "random")


def uncertainty_scores(probabilities, strategy: str = "margin") -> np.ndarray:
    """Higher = more uncertain. ``margin``: ``-|p1 - p0| = -|2p - 1|``; ``entropy``: binary entropy in
    nats. For two classes both order images the same (most uncertain at p = 0.5)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12)
    if strategy == "margin":
        return -np.abs(2 * p - 1)
    if strategy == "entropy":
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))
    raise ConfigError(f"active.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}.")


def select(probabilities, exclude, k: int, *, strategy: str = "margin", seed: int = 0) -> list[int]:
    """Indices of the ``k`` most uncertain pool images not in ``exclude`` (ties broken by index);
    ``random`` draws ``k`` uniformly with ``seed``. Fewer when the pool runs out."""
    n = len(probabilities)
    excluded = set(int(i) for i in exclude)
    candidates = np.array([i for i in range(n) if i not in excluded], dtype=np.int64)
    if k <= 0 or not len(candidates):
        return []
    if strategy == "random":
        rng = np.random.default_rng(seed)
        return sorted(int(i) for i in rng.choice(candidates, size=min(k, len(candidates)), replace=False))
    scores = uncertainty_scores(np.asarray(probabilities)[candidates], strategy)
    order = np.lexsort((candidates, -scores))  # most uncertain first, then lower index
    return [int(i) for i in candidates[order[:k]]]
