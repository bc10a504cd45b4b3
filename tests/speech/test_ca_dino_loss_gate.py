"""DLG-LC: GMM gate threshold and label correction."""
import math

import numpy as np
import pytest
import torch

from zoo.speech.ca_dino.loss_gate import (
    LossGateError, aam_logits, correct_labels, dlg_lc_loss, gaussian_intersection, gmm_threshold, margin_at,
)


def _analytic_crossing(w1, m1, s1, w2, m2, s2):
    """Bisection on w1 N(m1, s1) - w2 N(m2, s2) between the means."""
    def diff(x):
        return (w1 / s1 * math.exp(-0.5 * ((x - m1) / s1) ** 2)) - (w2 / s2 * math.exp(-0.5 * ((x - m2) / s2) ** 2))
    lo, hi = m1, m2
    for _ in range(200):
        mid = (lo + hi) / 2
        if (diff(lo) > 0) == (diff(mid) > 0):
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def test_intersection_of_given_gaussians():
    # equal weights and variances: the midpoint
    assert gaussian_intersection([0.5, 0.5], [-1.0, 3.0], [1.0, 1.0]) == pytest.approx(1.0)
    # unequal: compare with bisection on the densities
    w1, m1, s1, w2, m2, s2 = 0.7, -2.0, 0.5, 0.3, 1.0, 1.2
    got = gaussian_intersection([w1, w2], [m1, m2], [s1 ** 2, s2 ** 2])
    assert got == pytest.approx(_analytic_crossing(w1, m1, s1, w2, m2, s2), abs=1e-9)
    assert m1 < got < m2


def test_gmm_threshold_on_hand_made_bimodal_losses():
    rng = np.random.default_rng(0)
    # clean samples: log-loss ~ N(-2, 0.5); noisy labels: log-loss ~ N(1, 0.6); 70/30
    log_losses = np.concatenate([rng.normal(-2.0, 0.5, 7000), rng.normal(1.0, 0.6, 3000)])
    tau = gmm_threshold(np.exp(log_losses))
    # the analytic crossing of the generating mixture; the fit recovers it closely
    assert tau == pytest.approx(_analytic_crossing(0.7, -2.0, 0.5, 0.3, 1.0, 0.6), abs=0.05)
    # and exactly the crossing of the fitted parameters themselves
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(2, covariance_type="full", tol=1e-5, max_iter=1000, random_state=0).fit(log_losses[:, None])
    (w1, w2), (m1, m2) = gmm.weights_, gmm.means_.ravel()
    s1, s2 = np.sqrt(gmm.covariances_.ravel())
    if m1 > m2:
        w1, w2, m1, m2, s1, s2 = w2, w1, m2, m1, s2, s1
    assert tau == pytest.approx(_analytic_crossing(w1, m1, s1, w2, m2, s2), abs=1e-6)


def test_no_crossing_between_modes_is_an_error():
    # a tiny broad component under a dominant narrow one: densities never cross between the means
    with pytest.raises(LossGateError, match="gate_start_epoch"):
        gaussian_intersection([0.99, 0.01], [0.0, 0.1], [1.0, 100.0])


def test_label_correction_rule():
    cosine = torch.tensor([
        [0.9, 0.1, 0.0],    # sharpened at T=0.1: p(0) = e^9 / (e^9+e^1+e^0) ~ 0.9995 -> confident, label 0
        [0.48, 0.50, 0.0],  # p(1) = 1 / (1 + e^-0.2 + e^-5) = 0.548 -> confident (> 0.5), label 1
        [0.50, 0.45, 0.44],  # p(0) = e^5 / (e^5 + e^4.5 + e^4.4) = 0.46396 -> not confident
    ])
    labels, confident = correct_labels(cosine, temperature=0.1, confidence=0.5)
    assert labels.tolist() == [0, 1, 0]
    assert confident.tolist() == [True, True, False]
    # the code's p(0) for row 2 lies between 0.463 and 0.464: the confidence threshold moves it across
    assert correct_labels(cosine, temperature=0.1, confidence=0.463)[1].tolist() == [True, True, True]
    assert correct_labels(cosine, temperature=0.1, confidence=0.464)[1].tolist() == [True, True, False]
    # row 1 at T = 0.05: p(1) = 1 / (1 + e^-0.4 + e^-10) = 0.59867: confident at 0.598, not at 0.599
    assert correct_labels(cosine[1:2], temperature=0.05, confidence=0.598)[1].item() is True
    assert correct_labels(cosine[1:2], temperature=0.05, confidence=0.599)[1].item() is False


def test_gated_loss_combines_reliable_and_corrected():
    cosine = torch.tensor([[0.3, 0.0], [0.0, 0.9], [0.0, 0.9]])
    labels = torch.tensor([0, 0, 0])  # sample 0 fits its label; 1 and 2 do not
    # clean view: sample 1 confidently class 1; sample 2 class 0 with p(0) = 1 / (1 + e^-0.5) = 0.62 (> 0.5)
    clean = torch.tensor([[0.9, 0.0], [0.0, 0.9], [0.5, 0.45]])
    ce_all = torch.nn.functional.cross_entropy(aam_logits(cosine, labels, margin=0.2, scale=32), labels,
                                               reduction="none")
    tau = float(torch.log(ce_all[0]) + 0.1)  # only sample 0 is reliable
    loss, per_sample, stats = dlg_lc_loss(cosine, labels, clean, threshold=tau, correct=True)
    assert torch.allclose(per_sample, ce_all)
    predicted = torch.tensor([0, 1, 0])
    ce_hat = torch.nn.functional.cross_entropy(aam_logits(cosine, predicted, margin=0.2, scale=32), predicted,
                                               reduction="none")
    expected = (ce_all[0] + ce_hat[1] + ce_hat[2]) / 3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert stats == {"reliable": pytest.approx(1 / 3), "corrected": pytest.approx(2 / 3)}
    # without correction, gated-out samples contribute nothing
    loss_gate_only, _, _ = dlg_lc_loss(cosine, labels, clean, threshold=tau, correct=False)
    assert loss_gate_only.item() == pytest.approx(ce_all[0].item() / 3, rel=1e-6)
    # before the gate starts: plain mean AAM loss
    plain, _, _ = dlg_lc_loss(cosine, labels, clean, threshold=None, correct=False)
    assert plain.item() == pytest.approx(ce_all.mean().item(), rel=1e-6)


def test_aam_logits_and_margin_schedule():
    cosine = torch.tensor([[0.5, 0.2]])
    logits = aam_logits(cosine, torch.tensor([0]), margin=0.2, scale=32)
    assert logits[0, 0].item() == pytest.approx(32 * math.cos(math.acos(0.5) + 0.2), rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(32 * 0.2, rel=1e-6)
    assert margin_at(5) == 0.0 and margin_at(40) == 0.2 and margin_at(100) == 0.2
    assert 0.0 < margin_at(25) < margin_at(30) < 0.2
