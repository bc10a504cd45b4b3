"""EER / minDCF / AS-norm / DET for CA-DINO scoring (speech.md §3.3, ecosystem.md §5.2)."""
import numpy as np
import pytest
import torch

from zoo.errors import ZooError
from zoo.speech.ca_dino.scoring import as_norm, cosine_scores, eer, error_curve, min_dcf, plot_det


def _loop_eer(scores, labels):
    """speechbrain-style reference: every distinct score and midpoint as a threshold."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    values = np.unique(scores)
    thresholds = np.sort(np.concatenate([values, (values[:-1] + values[1:]) / 2]))
    best = None
    for t in thresholds:
        frr = (pos <= t).sum() / pos.size
        far = (neg > t).sum() / neg.size
        if best is None or abs(far - frr) < abs(best[0] - best[1]):
            best = (far, frr)
    return (best[0] + best[1]) / 2


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


def test_det_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    plot_det(rng.normal(size=400) + 2 * labels, labels, tmp_path / "det.png")
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
