"""Syllable boundary detection metrics (the protocol of ``cheoljun95/sdhubert:evaluate_boundary.py``).

The protocol of the SD-HuBERT / Sylber authors' evaluation code:

* reference boundaries of an utterance = every distinct start *and* end of its syllables;
  predicted boundaries = the distinct segment *starts* only (:func:`boundaries_from_segments`);
* boundaries are matched greedily with two pointers over the sorted lists: a pair within the
  tolerance (50 ms, inclusive) is a hit and both pointers advance; otherwise the pointer
  of the smaller boundary advances;
* hits, predictions and references are summed over the corpus first, then
  precision = hits / predictions, recall = hits / references, F1, over-segmentation
  OS = recall / precision - 1, r1 = sqrt((1 - recall)^2 + OS^2), r2 = (-OS + recall - 1) / sqrt(2),
  R = 1 - (|r1| + |r2|) / 2;
* a global shift, added to the *reference* boundaries, is tuned on a validation set over
  [-50, +50) ms in 5 ms steps to maximise R (the first best shift wins), then applied to test.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from zoo.errors import ZooError

__all__ = [
    "SHIFTS",
    "BoundaryInputError",
    "boundaries_from_segments",
    "boundary_scores",
    "match_boundaries",
    "reference_boundaries",
    "tune_shift",
]

SHIFTS = np.arange(-0.05, 0.05, 0.005)  # seconds, the official grid (20 values, -50 ms .. +45 ms)


class BoundaryInputError(ZooError, ValueError):
    """Boundary lists that cannot be scored (mismatched corpus lengths, wrong shapes)."""


def boundaries_from_segments(segments_s) -> np.ndarray:
    """Predicted boundaries of one utterance: the sorted distinct segment starts (seconds)."""
    segments = np.asarray(segments_s, dtype=np.float64).reshape(-1, 2)
    return np.unique(segments[:, 0])


def reference_boundaries(segments_s) -> np.ndarray:
    """Reference boundaries of one utterance: sorted distinct syllable starts and ends (seconds)."""
    return np.unique(np.asarray(segments_s, dtype=np.float64).reshape(-1, 2))


def match_boundaries(predicted, reference, tolerance: float = 0.05) -> int:
    """Number of hits between two sorted boundary lists (greedy two-pointer matching)."""
    i = j = hits = 0
    while i < len(reference) and j < len(predicted):
        if abs(reference[i] - predicted[j]) <= tolerance:
            hits += 1
            i += 1
            j += 1
        elif reference[i] > predicted[j]:
            j += 1
        else:
            i += 1
    return hits


def _as_corpus(boundaries, name: str) -> list[np.ndarray]:
    """One utterance (a 1-D array of seconds) or a corpus (a sequence of 1-D arrays)."""
    if isinstance(boundaries, np.ndarray) and boundaries.dtype != object:
        if boundaries.ndim != 1:
            raise BoundaryInputError(
                f"{name} must be a 1-D array of boundary times or a list of them (one per utterance); "
                f"got an array of shape {boundaries.shape}."
            )
        return [boundaries.astype(np.float64)]
    items = list(boundaries)
    if all(np.ndim(item) == 0 for item in items):  # a plain list of numbers: one utterance
        return [np.asarray(items, dtype=np.float64)]
    corpus = []
    for item in items:
        array = np.asarray(item, dtype=np.float64)
        if array.ndim != 1:
            raise BoundaryInputError(
                f"Each utterance of {name} must be a 1-D list of boundary times; got shape {array.shape}. "
                "Use boundaries_from_segments / reference_boundaries to turn (N, 2) segments into boundaries."
            )
        corpus.append(array)
    return corpus


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def boundary_scores(
    predicted_boundaries_s,
    reference_boundaries_s,
    tolerance: float = 0.05,
    shift: float = 0.0,
) -> dict:
    """Precision, recall, F1, OS and R of predicted against reference boundaries (seconds).

    Both arguments are one utterance (1-D) or a corpus (a sequence of 1-D arrays, same length);
    counts are summed over the corpus before the ratios are taken. ``shift`` is added to the
    reference boundaries. Undefined ratios (no predictions, no references) are NaN.
    """
    predicted = _as_corpus(predicted_boundaries_s, "predicted_boundaries_s")
    reference = _as_corpus(reference_boundaries_s, "reference_boundaries_s")
    if len(predicted) != len(reference):
        raise BoundaryInputError(
            f"{len(predicted)} predicted utterances but {len(reference)} reference utterances; "
            "pass one boundary list per utterance on both sides, in the same order."
        )
    n_hit = n_pred = n_ref = 0
    for pred, ref in zip(predicted, reference):
        pred = np.unique(pred)
        ref = np.sort(np.unique(ref) + shift)
        n_hit += match_boundaries(pred, ref, tolerance)
        n_pred += len(pred)
        n_ref += len(ref)
    precision, recall = _ratio(n_hit, n_pred), _ratio(n_hit, n_ref)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else (
        0.0 if precision == 0 and recall == 0 else math.nan)
    over_segmentation = recall / precision - 1 if precision > 0 else math.nan
    r1 = math.sqrt((1 - recall) ** 2 + over_segmentation ** 2)
    r2 = (-over_segmentation + recall - 1) / math.sqrt(2)
    r_value = 1.0 - (abs(r1) + abs(r2)) / 2.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "os": over_segmentation,
        "r1": r1,
        "r2": r2,
        "r_value": r_value,
        "n_pred": n_pred,
        "n_ref": n_ref,
        "n_hit": n_hit,
        "shift": float(shift),
        "tolerance": float(tolerance),
    }


def tune_shift(
    predicted_boundaries_s,
    reference_boundaries_s,
    tolerance: float = 0.05,
    shifts: Sequence[float] | None = None,
) -> tuple[float, dict]:
    """The shift (seconds, added to references) that maximises R on a validation set.

    Returns ``(best_shift, scores at best_shift)``; ties keep the earliest shift of the grid
    (default :data:`SHIFTS`, [-50, +50) ms in 5 ms steps).
    """
    grid = SHIFTS if shifts is None else np.asarray(shifts, dtype=np.float64)
    if len(grid) == 0:
        raise BoundaryInputError("shifts is empty; pass at least one shift in seconds.")
    best_shift, best_scores, best_r = float(grid[0]), None, -math.inf
    for shift in grid:
        scores = boundary_scores(predicted_boundaries_s, reference_boundaries_s, tolerance, float(shift))
        if best_scores is None:
            best_scores = scores  # kept only if no shift gives a defined R
        if scores["r_value"] > best_r:  # NaN never wins
            best_shift, best_scores, best_r = float(shift), scores, scores["r_value"]
    return best_shift, best_scores
