"""Verification scoring: cosine, mean subtraction, AS-norm, EER, minDCF, DET (speech.md §3.3, ecosystem.md §5.2).

EER and minDCF are vectorised: one sort, cumulative sums of target / non-target
counts at every distinct score, then an argmin. The operating points are those of
a threshold loop over every distinct score (reject ``score <= t``), and the EER is
``(FAR + FRR) / 2`` at the first point where ``|FAR - FRR|`` is smallest: the
convention of speechbrain's ``EER`` (so its docstring example gives 0.0), computed in
O(N log N) instead of O(N * thresholds). ``interpolate=True`` gives WeSpeaker's
variant instead (linear interpolation between the two points around FAR == FRR).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zoo.errors import ZooError


def _as_numpy(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size and not np.isfinite(array).all():
        raise ZooError(f"{name} contains NaN or infinite values; check the embeddings that produced them.")
    return array


def _check(scores, labels):
    scores = _as_numpy(scores, "scores")
    labels = _as_numpy(labels, "labels")
    if scores.shape != labels.shape:
        raise ZooError(f"scores ({scores.size}) and labels ({labels.size}) must have the same length")
    if not np.isin(labels, (0, 1)).all():
        raise ZooError("labels must be 0 (non-target) or 1 (target)")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ZooError("EER/minDCF need both target (1) and non-target (0) trials")
    return scores, labels


@dataclass
class ErrorCurve:
    """False-reject and false-accept rates when rejecting every score <= thresholds[i]."""

    thresholds: np.ndarray
    frr: np.ndarray
    far: np.ndarray


def error_curve(scores, labels) -> ErrorCurve:
    """FRR / FAR at every distinct score (sort + cumulative sums)."""
    scores, labels = _check(scores, labels)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # the last index of every run of equal scores: a threshold there rejects the whole run
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    run_ends = np.append(run_ends, sorted_scores.size - 1)
    targets_below = np.cumsum(sorted_labels)[run_ends]
    nontargets_below = np.cumsum(~sorted_labels)[run_ends]
    num_targets = int(labels.sum())
    num_nontargets = labels.size - num_targets
    frr = targets_below / num_targets
    far = (num_nontargets - nontargets_below) / num_nontargets
    return ErrorCurve(sorted_scores[run_ends], frr, far)


def eer(scores, labels, *, interpolate: bool = False, return_threshold: bool = False):
    """Equal error rate in [0, 1] of verification ``scores`` (higher = same speaker) for 0/1 ``labels``."""
    curve = error_curve(scores, labels)
    if interpolate:
        diff = curve.frr - curve.far  # rises from negative to positive
        above = np.flatnonzero(diff >= 0)[0]
        below = np.flatnonzero(diff < 0)
        if below.size == 0:
            value, index = curve.frr[above], above
        else:
            before = below[-1]
            step = (diff[above] - diff[before])
            weight = -diff[before] / step if step else 0.0
            value = curve.frr[before] + weight * (curve.frr[above] - curve.frr[before])
            index = above
    else:
        index = int(np.argmin(np.abs(curve.far - curve.frr)))
        value = (curve.far[index] + curve.frr[index]) / 2
    value = float(value)
    return (value, float(curve.thresholds[index])) if return_threshold else value


def min_dcf(scores, labels, *, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0,
            normalize: bool = True, return_threshold: bool = False):
    """Minimum detection cost over all thresholds; normalised by min(c_miss*p, c_fa*(1-p)) by default."""
    curve = error_curve(scores, labels)
    cost = c_miss * curve.frr * p_target + c_fa * curve.far * (1 - p_target)
    index = int(np.argmin(cost))
    value = float(cost[index])
    if normalize:
        value /= min(c_miss * p_target, c_fa * (1 - p_target))
    return (value, float(curve.thresholds[index])) if return_threshold else value


def cosine_scores(enroll: torch.Tensor, test: torch.Tensor, *, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise cosine of paired embeddings [N, D] x [N, D]; ``mean`` is subtracted first (speech.md §3.3)."""
    enroll, test = enroll.float(), test.float()
    if mean is not None:
        enroll = enroll - mean
        test = test - mean
    return (F.normalize(enroll, dim=-1) * F.normalize(test, dim=-1)).sum(-1)


def as_norm(scores: torch.Tensor, enroll: torch.Tensor, test: torch.Tensor, cohort: torch.Tensor, *,
            top_n: int = 300, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Adaptive symmetric score normalisation with the ``top_n`` closest cohort embeddings of each side."""
    if mean is not None:
        enroll, test, cohort = enroll - mean, test - mean, cohort - mean
    cohort = F.normalize(cohort.float(), dim=-1)
    top_n = min(top_n, cohort.shape[0])

    def stats(embeddings):
        cohort_scores = F.normalize(embeddings.float(), dim=-1) @ cohort.T
        top = cohort_scores.topk(top_n, dim=-1).values
        return top.mean(-1), top.std(-1, unbiased=False).clamp_min(1e-8)

    enroll_mean, enroll_std = stats(enroll)
    test_mean, test_std = stats(test)
    return 0.5 * ((scores - enroll_mean) / enroll_std + (scores - test_mean) / test_std)


def plot_det(scores, labels, path, *, title: str = "DET curve") -> None:
    """Write the detection error trade-off curve (normal deviate axes) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    curve = error_curve(scores, labels)
    clip = 1e-5
    far = norm.ppf(np.clip(curve.far, clip, 1 - clip))
    frr = norm.ppf(np.clip(curve.frr, clip, 1 - clip))
    value = eer(scores, labels)
    ticks = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(far, frr, "r-")
    point = norm.ppf(np.clip(value, clip, 1 - clip))
    ax.plot(point, point, "o", label=f"EER = {value * 100:.2f}%")
    ax.set_xticks(norm.ppf(ticks), [f"{t * 100:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t * 100:g}" for t in ticks])
    low, high = norm.ppf(0.0005), norm.ppf(0.5)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("false-accept rate [%]")
    ax.set_ylabel("false-reject rate [%]")
    ax.set_title(title)
    ax.grid(True)
    ax.legend(loc="upper right")
    fig.tight_layout()
    from zoo.files import atomic_open

    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, dpi=100, format="png")
    plt.close(fig)
