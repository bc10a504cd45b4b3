"""DLG-LC: dynamic loss gate and label correction for pseudo-label training.

Han, Chen, Qian, arXiv 2208.01928 (Interspeech 2022) and arXiv 2304.05754 (CA-DINO); no official
code exists, so the rule follows ``theolepage/wavlm_ssl_sv:trainSpeakerNet.py`` (``LGL_threshold_update_gmm``)
and ``theolepage/wavlm_ssl_sv:loss/aamsoftmax.py``:

* Each epoch the per-sample AAM-softmax losses l_i (augmented view) are kept; from
  ``gate_start_epoch`` on, a 2-component GaussianMixture (full covariance, tol 1e-5,
  max_iter 1000) is fitted on log(l_i) and the gate threshold tau is the intersection of
  the two weighted Gaussian densities that lies between their means (exactly one is
  required). A sample is reliable when log(l_i) <= tau.
* From ``correction_start_epoch`` on, unreliable samples take the label predicted from
  the clean (non-augmented) view: p = softmax(cos(x_clean, W) / T) with T = 0.1 and plain
  cosine logits (no margin); used only when max p > ``confidence`` (0.5).
* loss = mean_i( ce(y_i) * reliable_i + ce(y_hat_i) * (~reliable_i & confident_i) ).

Defaults follow that third-party implementation (gate from epoch 5, correction for epochs > 8);
the paper's own values are not public.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from zoo.errors import ZooError


class LossGateError(ZooError):
    """The two-Gaussian fit has no single crossing between its modes (the losses are not bimodal)."""


def gaussian_intersection(weights, means, variances) -> float:
    """The x between the two means where w1 N(x; m1, v1) == w2 N(x; m2, v2)."""
    (w1, w2), (m1, m2), (v1, v2) = weights, means, variances
    a = 1 / (2 * v2) - 1 / (2 * v1)
    b = m1 / v1 - m2 / v2
    c = m2 ** 2 / (2 * v2) - m1 ** 2 / (2 * v1) + math.log(w1 / math.sqrt(v1)) - math.log(w2 / math.sqrt(v2))
    if abs(a) < 1e-12:
        roots = [-c / b] if b else []
    else:
        disc = b * b - 4 * a * c
        roots = [] if disc < 0 else [(-b + s * math.sqrt(disc)) / (2 * a) for s in (1.0, -1.0)]
    low, high = min(m1, m2), max(m1, m2)
    between = sorted({r for r in roots if low <= r <= high})
    if len(between) != 1:
        raise LossGateError(
            f"expected one crossing of the two loss modes between {low:.4g} and {high:.4g}, found {len(between)} "
            f"(weights {w1:.3g}/{w2:.3g}, means {m1:.4g}/{m2:.4g}, variances {v1:.3g}/{v2:.3g}); the per-sample "
            "losses are not bimodal yet: start the gate later (dlg.gate_start_epoch).")
    return between[0]


def gmm_threshold(losses, *, seed: int = 0, tol: float = 1e-5, max_iter: int = 1000, log: bool = True) -> float:
    """Fit a 2-component GaussianMixture on (log) losses; the threshold between its modes (in log space)."""
    from sklearn.mixture import GaussianMixture

    values = losses.detach().cpu().double().numpy() if isinstance(losses, torch.Tensor) \
        else np.asarray(losses, dtype=np.float64)
    values = values.reshape(-1)
    if log:
        values = np.log(np.maximum(values, 1e-12))
    gmm = GaussianMixture(n_components=2, covariance_type="full", tol=tol, max_iter=max_iter, random_state=seed)
    gmm.fit(values[:, None])
    variances = gmm.covariances_.reshape(2)
    return gaussian_intersection(gmm.weights_.tolist(), gmm.means_.reshape(2).tolist(), variances.tolist())


def correct_labels(clean_cosine: torch.Tensor, *, temperature: float = 0.1, confidence: float = 0.5):
    """(predicted labels, confident mask) from plain cosine logits of the clean view."""
    probs = F.softmax(clean_cosine.float() / temperature, dim=-1)
    top, labels = probs.max(dim=-1)
    return labels, top > confidence


def aam_logits(cosine: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, scale: float = 32.0):
    """ArcFace logits [B, C]: s * cos(theta + m) at the label, s * cos elsewhere.

    As WeSpeaker's ``ArcMarginProduct`` with ``easy_margin`` off.
    """
    cosine = cosine.float().clamp(-1, 1)
    sine = torch.sqrt((1.0 - cosine * cosine).clamp_min(0))
    phi = cosine * math.cos(margin) - sine * math.sin(margin)
    # beyond theta + m > pi, WeSpeaker continues with cos - (1 + cos(pi - m)) to keep the target logit monotone
    phi = torch.where(cosine > math.cos(math.pi - margin), phi, cosine - (1.0 + math.cos(math.pi - margin)))
    one_hot = F.one_hot(labels.long(), cosine.shape[-1]).to(cosine.dtype)
    return scale * (one_hot * phi + (1 - one_hot) * cosine)


def margin_at(epoch: float, *, final_margin: float = 0.2, increase_start: int = 20, fix_start: int = 40,
              initial_margin: float = 0.0) -> float:
    """WeSpeaker v2's margin schedule (``wenet-e2e/wespeaker:examples/voxceleb/v2/conf/ecapa_tdnn.yaml``).

    ``initial`` until epoch ``increase_start``, then an
    exponential rise (ratio 1 - 1e-3^t) to ``final`` at ``fix_start``. Epochs are 1-based as in WeSpeaker;
    ``epoch`` may be fractional (iteration granularity)."""
    if epoch >= fix_start:
        return final_margin
    if epoch < increase_start:
        return initial_margin
    progress = (epoch - increase_start) / max(fix_start - increase_start, 1)
    ratio = 1.0 - math.exp(progress * math.log(1e-3 / (1.0 + 1e-6)))
    return initial_margin + (final_margin - initial_margin) * ratio


def dlg_lc_loss(cosine_aug: torch.Tensor, labels: torch.Tensor, cosine_clean: torch.Tensor | None, *,
                threshold: float | None, correct: bool, margin: float = 0.2, scale: float = 32.0,
                temperature: float = 0.1, confidence: float = 0.5):
    """Gated AAM-softmax loss. Returns (loss, per-sample CE for the assigned labels [B], stats dict)."""
    ce = F.cross_entropy(aam_logits(cosine_aug, labels, margin=margin, scale=scale), labels, reduction="none")
    if threshold is None:  # gate not active yet: plain AAM-softmax
        return ce.mean(), ce.detach(), {"reliable": 1.0, "corrected": 0.0}
    reliable = torch.log(ce.detach().clamp_min(1e-12)) <= threshold
    loss_terms = ce * reliable
    corrected = torch.zeros_like(reliable)
    if correct and cosine_clean is not None:
        predicted, confident = correct_labels(cosine_clean.detach(), temperature=temperature, confidence=confidence)
        corrected = ~reliable & confident
        ce_hat = F.cross_entropy(aam_logits(cosine_aug, predicted, margin=margin, scale=scale), predicted,
                                 reduction="none")
        loss_terms = loss_terms + ce_hat * corrected
    stats = {"reliable": float(reliable.float().mean()), "corrected": float(corrected.float().mean())}
    return loss_terms.mean(), ce.detach(), stats
