"""EER / minDCF / AS-norm / DET for CA-DINO scoring: exact values on hand-made cases and brute-force loops."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from zoo.errors import ZooError
from zoo.speech.ca_dino.scoring import as_norm, cosine_scores, eer, error_curve, min_dcf, plot_det


def _loop_eer(scores, labels):
    """speechbrain's loop: every distinct score and midpoint is a threshold (reject <= t); the first
    threshold with the smallest |FAR - FRR| wins; EER = (FAR + FRR) / 2. Rates as exact fractions."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    values = np.unique(scores)
    thresholds = np.sort(np.concatenate([values, (values[:-1] + values[1:]) / 2]))
    best = None
    for t in thresholds:
        frr = Fraction(int((pos <= t).sum()), pos.size)
        far = Fraction(int((neg > t).sum()), neg.size)
        if best is None or abs(far - frr) < abs(best[0] - best[1]):
            best = (far, frr)
    return float((best[0] + best[1]) / 2)


def _loop_eer_interpolated(scores, labels):
    """WeSpeaker's compute_eer on the per-distinct-score curve with the accept-all point first, in fractions."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    points = [(Fraction(0), Fraction(1))]  # accept all: FRR 0, FAR 1
    for t in np.unique(scores):
        points.append((Fraction(int((pos <= t).sum()), pos.size), Fraction(int((neg > t).sum()), neg.size)))
    diff = [frr - far for frr, far in points]
    x1 = next(i for i, d in enumerate(diff) if d >= 0)
    x2 = max(i for i, d in enumerate(diff) if d < 0)
    (frr1, far1), (frr2, far2) = points[x1], points[x2]
    a = (frr1 - far1) / (far2 - far1 - (frr2 - frr1))
    return float(frr1 + a * (frr2 - frr1))


def test_exact_tie_takes_the_first_operating_point():
    # targets 0.0 0.2 0.3, non-targets 0.1 0.4. Reject <= 0.1: FRR 1/3, FAR 1/2; reject <= 0.2: FRR 2/3,
    # FAR 1/2. Both are 1/6 from equal; the first wins: (1/3 + 1/2) / 2 = 5/12 (float rounding picked 7/12).
    assert eer([0.0, 0.1, 0.2, 0.3, 0.4], [1, 0, 1, 1, 0]) == 5 / 12
    assert eer([0.0, 0.1, 0.2, 0.3, 0.4], [1, 0, 1, 1, 0], return_threshold=True) == (5 / 12, 0.1)
    # the same trials in another order and as a tensor: same value
    assert eer(torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0]), torch.tensor([0, 1, 1, 0, 1])) == 5 / 12


def test_all_tied_scores():
    # one operating point (reject all: FRR 1, FAR 0) -> 0.5; interpolated between accept-all and reject-all -> 0.5
    assert eer([0.3] * 5, [1, 0, 0, 1, 1]) == 0.5
    assert eer([0.3] * 5, [1, 0, 0, 1, 1], interpolate=True) == 0.5
    # a perfect separation: 0 either way
    assert eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 0.0
    assert eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], interpolate=True) == 0.0
    # reversed scores: every operating point has FRR + FAR >= 1
    # reject <= 0.1: FRR 1/2, FAR 1; reject <= 0.2: FRR 1, FAR 1 (equal) -> 1.0
    assert eer([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0
    assert eer([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], interpolate=True) == 1.0


def test_interpolation_before_the_first_score():
    # 1 target at 0.1 below 3 non-targets: accept-all (FRR 0, FAR 1, diff -1) -> reject <= 0.1 (FRR 1, FAR 1,
    # diff 0): the crossing is the second point, FRR 1.
    assert eer([0.1, 0.2, 0.3, 0.4], [1, 0, 0, 0], interpolate=True) == 1.0
    # targets 0.1, 0.5; non-targets 0.2, 0.3: accept-all (0, 1) -> reject<=0.1 (1/2, 1): diff -1/2 ->
    # reject<=0.2 (1/2, 1/2): diff 0 -> the crossing is exactly that point
    assert eer([0.1, 0.5, 0.2, 0.3], [1, 1, 0, 0], interpolate=True) == 0.5


@pytest.mark.parametrize("interpolate", [False, True], ids=["loop", "interpolated"])
def test_equals_brute_force_on_random_score_sets(interpolate):
    reference = _loop_eer_interpolated if interpolate else _loop_eer
    rng = np.random.default_rng(11)
    for case in range(320):
        size = int(rng.integers(2, 40))
        labels = rng.integers(0, 2, size)
        labels[rng.integers(size)] = 1
        labels[(rng.integers(size - 1) + 1 + np.flatnonzero(labels == 1)[0]) % size] = 0
        # few distinct values: many ties, and many exactly equal |FAR - FRR| at different points
        scores = rng.integers(0, int(rng.integers(1, 8)), size) / 10 + labels * rng.integers(0, 3) / 10
        assert eer(scores, labels, interpolate=interpolate) == reference(scores, labels), (case, scores, labels)


def test_speechbrain_docstring_example_is_zero():
    pos, neg = [0.6, 0.7, 0.8, 0.5], [0.4, 0.3, 0.2, 0.1]
    assert eer(pos + neg, [1] * 4 + [0] * 4) == 0.0


def test_hand_computed_eer_and_min_dcf():
    # targets 0.9 0.6 0.4, non-targets 0.7 0.3 0.2 0.1.
    scores = [0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1]
    labels = [1, 1, 1, 0, 0, 0, 0]
    # rejecting <= 0.4: FRR 1/3, FAR 1/4 -> |diff| 1/12 is the smallest; rejecting <= 0.6: FRR 2/3, FAR 1/4.
    assert eer(scores, labels) == pytest.approx((1 / 3 + 1 / 4) / 2)
    # p_target 0.5, c=1: costs 0.5*FRR + 0.5*FAR; best at reject <= 0.3 (FRR 0, FAR 1/4) -> 0.125 / 0.5.
    assert min_dcf(scores, labels, p_target=0.5) == pytest.approx(0.25)
    # p_target 0.01: best is reject <= 0.6 (FRR 2/3, FAR 1/4)? cost .01*2/3+.99/4 vs reject <= 0.7: .01*2/3 + 0
    assert min_dcf(scores, labels, p_target=0.01, normalize=False) == pytest.approx(0.01 * 2 / 3)
    assert min_dcf(scores, labels, p_target=0.01) == pytest.approx(2 / 3)


def test_ties_are_one_operating_point():
    curve = error_curve([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])
    assert curve.frr.tolist() == [1.0] and curve.far.tolist() == [0.0]
    assert eer([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5


def test_interpolated_eer_hand_case():
    # diff crosses between reject<=0.4 (FRR 1/3, FAR 1/4: diff +1/12) and reject<=0.3 (FRR 0, FAR 1/4: -1/4)
    scores = [0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1]
    labels = [1, 1, 1, 0, 0, 0, 0]
    # far constant 1/4 on that segment, so the crossing is at 1/4
    assert eer(scores, labels, interpolate=True) == pytest.approx(0.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_and_sklearn_on_random_scores(seed):
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.normal(size=3000) + labels * 1.2, 3)  # rounding makes ties
    ours = eer(scores, labels)
    assert ours == _loop_eer(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    index = np.argmin(np.abs(fnr - fpr))
    assert ours == pytest.approx((fpr[index] + fnr[index]) / 2, abs=1e-3)
    assert abs(eer(scores, labels, interpolate=True) - ours) < 2e-3


def test_min_dcf_matches_loop():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    pos, neg = scores[labels == 1], scores[labels == 0]
    best = min(0.01 * (pos <= t).mean() + 0.99 * (neg > t).mean() for t in np.unique(scores))
    assert min_dcf(scores, labels) == pytest.approx(best / 0.01)


def test_bad_inputs():
    with pytest.raises(ZooError, match="both target"):
        eer([0.1, 0.2], [1, 1])
    with pytest.raises(ZooError, match="same length"):
        eer([0.1, 0.2], [1])
    with pytest.raises(ZooError, match="NaN"):
        eer([float("nan"), 0.2], [1, 0])


def test_cosine_mean_subtraction_and_as_norm():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert cosine_scores(a, b).tolist() == pytest.approx([0.0, 1.0])
    # subtracting [1, 0] turns a[0] into 0 -> normalize gives 0 -> score 0; a[1]-m=[0,1], b[1]-m=[1,2]
    assert cosine_scores(a, b, mean=torch.tensor([1.0, 0.0]))[1].item() == pytest.approx(2 / 5 ** 0.5)
    cohort = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    scores = cosine_scores(a, b)
    normed = as_norm(scores, a, b, cohort, top_n=2)
    # enroll a[0]=[1,0]: cohort scores 1, 0, -1 -> top2 {1, 0}: mean .5 std .5; test b[0]=[0,1]: same stats
    assert normed[0].item() == pytest.approx(0.5 * ((0 - 0.5) / 0.5) * 2)


def test_det_png_leaves_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    plot_det(rng.normal(size=400) + 2 * labels, labels, tmp_path / "det.png")
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures
    assert list(tmp_path.iterdir()) == [tmp_path / "det.png"]  # no temporary file left behind
