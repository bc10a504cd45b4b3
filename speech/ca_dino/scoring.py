"""Verification scoring: cosine, mean subtraction, AS-norm, EER, minDCF, DET curves.

EER and minDCF are vectorised: one sort, cumulative counts of target / non-target
trials at every distinct score, then an argmin. The operating points are those of
a threshold loop over every distinct score (reject ``score <= t``), as in
speechbrain's ``EER`` (``speechbrain/speechbrain:speechbrain/utils/metric_stats.py``).
The EER is ``(FAR + FRR) / 2`` at the *first* point where ``|FAR - FRR|`` is smallest,
compared in exact integer arithmetic on the counts (``|FA * P - M * N|`` for M misses
of P targets and FA false accepts of N non-targets), so a tie between two operating
points is never broken by float rounding. ``interpolate=True`` gives WeSpeaker's
interpolated value instead (``wenet-e2e/wespeaker:wespeaker/utils/score_metrics.py``,
``compute_eer``), on a curve that also holds the accept-all point (FRR 0, FAR 1).

Units: ``eer`` and ``min_dcf`` return fractions in [0, 1]; ``zoo eval`` and the
trainer report the EER as a percentage under the key ``eer_percent``.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

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
    """Error counts and rates when rejecting every score ``<= thresholds[i]``, one entry per distinct score.

    ``misses[i]``: targets rejected, ``false_accepts[i]``: non-targets accepted (int64 counts);
    ``frr = misses / num_targets`` and ``far = false_accepts / num_nontargets`` (float64 in [0, 1]).
    Thresholds rise, so ``frr`` never falls and ``far`` never rises along the curve.
    """

    thresholds: np.ndarray
    misses: np.ndarray
    false_accepts: np.ndarray
    num_targets: int
    num_nontargets: int

    @property
    def frr(self) -> np.ndarray:
        """False-reject rate at each point, float64 in [0, 1] (non-decreasing)."""
        return self.misses / self.num_targets

    @property
    def far(self) -> np.ndarray:
        """False-accept rate at each point, float64 in [0, 1] (non-increasing)."""
        return self.false_accepts / self.num_nontargets


def error_curve(scores, labels) -> ErrorCurve:
    """The operating points of ``scores`` (higher = same speaker) for 0/1 ``labels``; see ErrorCurve.

    Raises ZooError when the lengths differ, a label is not 0/1, a score is not finite, or one
    class is absent. O(N log N): one stable sort and cumulative sums.
    """
    scores, labels = _check(scores, labels)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # the last index of every run of equal scores: a threshold there rejects the whole run
    run_ends = np.flatnonzero(np.diff(sorted_scores) != 0)
    run_ends = np.append(run_ends, sorted_scores.size - 1)
    misses = np.cumsum(sorted_labels, dtype=np.int64)[run_ends]
    nontargets_rejected = np.cumsum(~sorted_labels, dtype=np.int64)[run_ends]
    num_targets = int(labels.sum())
    num_nontargets = labels.size - num_targets
    return ErrorCurve(sorted_scores[run_ends], misses, num_nontargets - nontargets_rejected, num_targets,
                      num_nontargets)


def _scaled_gap(curve: ErrorCurve) -> np.ndarray:
    """``(FRR - FAR) * P * N`` at every point, exactly (int64 while P * N fits, Python ints beyond)."""
    targets, nontargets = curve.num_targets, curve.num_nontargets
    misses, false_accepts = curve.misses, curve.false_accepts
    if targets * nontargets >= 2 ** 62:  # beyond int64: Python integers (slow, exact)
        misses, false_accepts = misses.astype(object), false_accepts.astype(object)
    return misses * nontargets - false_accepts * targets


def eer(scores, labels, *, interpolate: bool = False, return_threshold: bool = False):
    """Equal error rate, a fraction in [0, 1], of verification ``scores`` for 0/1 ``labels``.

    ``scores``: [N] floats (numpy, list or tensor), higher = more likely the same speaker.
    ``labels``: [N] 1 (target) / 0 (non-target). Default: ``(FAR + FRR) / 2`` at the first
    operating point (in rising threshold) where ``|FAR - FRR|`` is smallest, chosen in exact
    integer arithmetic and rounded once to float. ``interpolate=True``: the FRR where the
    straight line between the two points around FAR == FRR crosses it (WeSpeaker), on the curve
    with the accept-all point added, so all-tied scores give 0.5. ``return_threshold=True``
    returns ``(eer, threshold)``, rejecting scores ``<= threshold``. Raises ZooError as
    :func:`error_curve`.
    """
    curve = error_curve(scores, labels)
    gap = _scaled_gap(curve)
    targets, nontargets = curve.num_targets, curve.num_nontargets
    if interpolate:
        above = int(np.flatnonzero(gap >= 0)[0])  # the last point (reject all) has gap = P * N >= 0
        if above > 0:
            before_misses, before_gap = int(curve.misses[above - 1]), int(gap[above - 1])
        else:  # the point before is accept-all: no misses, every non-target accepted
            before_misses, before_gap = 0, -targets * nontargets
        step = int(gap[above]) - before_gap
        weight = Fraction(-before_gap, step)
        value = (before_misses + weight * (int(curve.misses[above]) - before_misses)) / Fraction(targets)
        index = above
    else:
        index = int(np.argmin(np.abs(gap)))  # argmin returns the first of equal minima
        value = Fraction(int(curve.false_accepts[index]) * targets + int(curve.misses[index]) * nontargets,
                         2 * targets * nontargets)
    value = float(value)
    return (value, float(curve.thresholds[index])) if return_threshold else value


def min_dcf(scores, labels, *, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0,
            normalize: bool = True, return_threshold: bool = False):
    """Minimum detection cost over the operating points of :func:`error_curve`.

    ``cost = c_miss * FRR * p_target + c_fa * FAR * (1 - p_target)``, minimised over the
    thresholds; with ``normalize`` (default) divided by ``min(c_miss * p_target, c_fa * (1 - p_target))``,
    the cost of the better trivial system (NIST SRE convention, as WeSpeaker's ``compute_c_norm``).
    Returns a float >= 0 (or ``(value, threshold)``); raises ZooError as :func:`error_curve`.
    """
    curve = error_curve(scores, labels)
    cost = c_miss * curve.frr * p_target + c_fa * curve.far * (1 - p_target)
    index = int(np.argmin(cost))
    value = float(cost[index])
    if normalize:
        value /= min(c_miss * p_target, c_fa * (1 - p_target))
    return (value, float(curve.thresholds[index])) if return_threshold else value


def cosine_scores(enroll: torch.Tensor, test: torch.Tensor, *, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise cosine similarity [N] in [-1, 1] of paired embeddings ``enroll``, ``test`` [N, D].

    ``mean`` [D] (e.g. the mean embedding of a cohort) is subtracted from both first, as
    WeSpeaker's scoring does with its ``cal_mean`` option. A zero vector scores 0.
    """
    enroll, test = enroll.float(), test.float()
    if mean is not None:
        enroll = enroll - mean
        test = test - mean
    return (F.normalize(enroll, dim=-1) * F.normalize(test, dim=-1)).sum(-1)


def as_norm(scores: torch.Tensor, enroll: torch.Tensor, test: torch.Tensor, cohort: torch.Tensor, *,
            top_n: int = 300, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Adaptive symmetric score normalisation (Matejka et al., Interspeech 2017, AS-norm1).

    ``scores`` [N] are the raw cosine scores of ``enroll`` [N, D] against ``test`` [N, D];
    each side is compared with every ``cohort`` [C, D] embedding, and the mean / standard
    deviation of its ``top_n`` highest cohort scores normalise the score:
    ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)``. Returns [N] unbounded floats.
    """
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
    """Write the detection error trade-off curve (normal-deviate axes, percent ticks) as a PNG at ``path``.

    Draws on a ``matplotlib.figure.Figure`` with its own Agg canvas, so the caller's pyplot
    backend and open figures are untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.stats import norm

    curve = error_curve(scores, labels)
    clip = 1e-5
    far = norm.ppf(np.clip(curve.far, clip, 1 - clip))
    frr = norm.ppf(np.clip(curve.frr, clip, 1 - clip))
    value = eer(scores, labels)
    ticks = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4])
    fig = Figure(figsize=(5, 5))
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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
        canvas.print_png(handle)
