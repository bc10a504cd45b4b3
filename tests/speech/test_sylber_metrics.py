"""Syllable boundary metrics (cheoljun95/sdhubert:evaluate_boundary.py protocol), checked against hand-computed values."""
import math

import numpy as np
import pytest

from zoo.speech.sylber.metrics import (
    SHIFTS,
    BoundaryInputError,
    boundaries_from_segments,
    boundary_scores,
    match_boundaries,
    reference_boundaries,
    tune_shift,
)


def test_boundaries_from_segments_uses_starts_references_use_both_edges():
    segments = [[0.10, 0.30], [0.30, 0.52], [0.60, 0.80]]
    assert boundaries_from_segments(segments).tolist() == [0.10, 0.30, 0.60]
    assert reference_boundaries(segments).tolist() == [0.10, 0.30, 0.52, 0.60, 0.80]
    assert boundaries_from_segments(np.zeros((0, 2))).tolist() == []


def test_two_pointer_matching_is_greedy_and_one_to_one():
    # 0.10 matches 0.12; 0.50 matches 0.46 (the first in reach); 0.52 then has no partner;
    # 0.90 is 0.06 from 0.84 (> 50 ms): no hit. The tolerance is inclusive.
    assert match_boundaries([0.12, 0.46, 0.52, 0.84], [0.10, 0.50, 0.90], 0.05) == 2
    assert match_boundaries([0.25], [0.5], 0.25) == 1
    assert match_boundaries([], [0.1], 0.05) == 0


def test_scores_by_hand():
    predicted = [0.12, 0.46, 0.52, 0.84]
    reference = [0.10, 0.50, 0.90]
    scores = boundary_scores(predicted, reference, tolerance=0.05)
    precision, recall = 2 / 4, 2 / 3
    over_segmentation = recall / precision - 1  # 1/3
    r1 = math.sqrt((1 - recall) ** 2 + over_segmentation ** 2)
    r2 = (-over_segmentation + recall - 1) / math.sqrt(2)
    assert (scores["n_hit"], scores["n_pred"], scores["n_ref"]) == (2, 4, 3)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7)  # 2*0.5*(2/3)/(0.5+2/3)
    assert scores["os"] == pytest.approx(1 / 3)
    assert scores["r_value"] == pytest.approx(1 - (abs(r1) + abs(r2)) / 2)
    assert scores["r_value"] == pytest.approx(1 - (math.sqrt(2) / 3 + (2 / 3) / math.sqrt(2)) / 2)


def test_corpus_counts_are_summed_before_the_ratios():
    # utterance 1: 1 hit of 1 prediction / 1 reference; utterance 2: 0 hits, 3 predictions, 1 reference
    predicted = [np.array([0.2]), np.array([1.0, 2.0, 3.0])]
    reference = [np.array([0.21]), np.array([5.0])]
    scores = boundary_scores(predicted, reference)
    assert (scores["n_hit"], scores["n_pred"], scores["n_ref"]) == (1, 4, 2)
    assert scores["precision"] == pytest.approx(0.25)  # not the mean of per-utterance 1.0 and 0.0
    assert scores["recall"] == pytest.approx(0.5)
    # duplicates are counted once, as the official np.unique does
    assert boundary_scores([0.2, 0.2], [0.2])["n_pred"] == 1
    with pytest.raises(BoundaryInputError, match="same order"):
        boundary_scores(predicted, reference[:1])


def test_undefined_ratios_are_nan():
    scores = boundary_scores([], [0.5])
    assert math.isnan(scores["precision"]) and scores["recall"] == 0.0
    scores = boundary_scores([0.1], [0.9])
    assert scores["precision"] == 0.0 and scores["f1"] == 0.0 and math.isnan(scores["os"])


def test_shift_grid_and_tuning():
    assert len(SHIFTS) == 20
    assert SHIFTS[0] == pytest.approx(-0.05) and SHIFTS[-1] == pytest.approx(0.045)
    # predictions are consistently 30 ms late; with tolerance 12 ms only shifts of
    # +20/+25/+30/+35/+40 ms reach them, and the first of these wins the tie.
    reference = [np.array([0.5, 1.0, 1.5]), np.array([0.3, 0.9])]
    predicted = [r + 0.03 for r in reference]
    assert boundary_scores(predicted, reference, tolerance=0.012)["n_hit"] == 0
    shift, scores = tune_shift(predicted, reference, tolerance=0.012)
    assert shift == pytest.approx(0.02)
    assert scores["n_hit"] == 5 and scores["precision"] == 1.0 and scores["r_value"] == pytest.approx(1.0)
    assert scores["shift"] == shift
    shift, _ = tune_shift(predicted, reference, tolerance=0.012, shifts=[0.0, 0.03])
    assert shift == pytest.approx(0.03)
