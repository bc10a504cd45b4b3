"""EER on 1M verification trials: vectorised (sort + cumsum) vs a per-threshold loop.

The reference is speechbrain's loop (``speechbrain/speechbrain:speechbrain/utils/metric_stats.py``, ``EER``):
every distinct score and
every midpoint is a threshold, and FRR/FAR are recounted over all trials for each one,
O(N * thresholds). Over 1M trials that is ~2M thresholds x 1M comparisons, far too slow to
run in full, so the loop is timed on a subset of thresholds and extrapolated linearly to
the full threshold count (each iteration does the same work). Equality of the values is
checked two ways: the full loop on a 20k-trial subset, and on the 1M set the loop over a
window of thresholds around the vectorised EER's threshold (where the optimum lies).

    python benchmarks/ca_dino_eer.py [--trials 1000000] [--timed-thresholds 200]
"""
from __future__ import annotations

import argparse
import time
from fractions import Fraction

import numpy as np
import torch

from _timing import measure
from zoo.speech.ca_dino.scoring import eer


def loop_eer(positive: torch.Tensor, negative: torch.Tensor, thresholds: torch.Tensor):
    """speechbrain's rule: first threshold with the smallest |FAR - FRR|; EER = (FAR + FRR) / 2.

    |FAR - FRR| is compared exactly, on the counts (|FA * P - M * N|), as zoo's ``eer`` documents.
    """
    num_pos, num_neg = positive.shape[0], negative.shape[0]
    best = None
    for threshold in thresholds:
        misses = int((positive <= threshold).sum())
        false_accepts = int((negative > threshold).sum())
        gap = abs(false_accepts * num_pos - misses * num_neg)
        if best is None or gap < best[0]:
            best = (gap, misses, false_accepts)
    _, misses, false_accepts = best
    return float(Fraction(false_accepts * num_pos + misses * num_neg, 2 * num_pos * num_neg))


def all_thresholds(scores: torch.Tensor) -> torch.Tensor:
    values = torch.unique(scores)
    return torch.sort(torch.cat([values, (values[:-1] + values[1:]) / 2])).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1_000_000)
    parser.add_argument("--timed-thresholds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rng = np.random.default_rng(args.seed)
    labels = (rng.random(args.trials) < 0.1).astype(np.int64)  # 10% targets, like Vox1 lists
    scores = rng.normal(size=args.trials) * 0.12 + labels * 0.35  # EER around 7%

    # --- vectorised
    run = measure(lambda: eer(scores, labels, return_threshold=True), 3, warmup=False)
    fast_seconds, (value, threshold) = run.seconds, run.result

    # --- loop: time a subset of thresholds, extrapolate
    scores_t = torch.from_numpy(scores)
    positive, negative = scores_t[labels == 1], scores_t[labels == 0]
    thresholds = all_thresholds(scores_t)
    pick = torch.linspace(0, thresholds.numel() - 1, args.timed_thresholds).long()
    start = time.perf_counter()
    loop_eer(positive, negative, thresholds[pick])
    subset_seconds = time.perf_counter() - start
    loop_seconds = subset_seconds / args.timed_thresholds * thresholds.numel()

    # --- same value: full loop on 20k trials; windowed loop around the optimum on all trials
    small = 20_000
    small_scores = torch.from_numpy(scores[:small])
    small_value = loop_eer(small_scores[labels[:small] == 1], small_scores[labels[:small] == 0],
                           all_thresholds(small_scores))
    centre = int(torch.searchsorted(thresholds, torch.tensor(threshold, dtype=thresholds.dtype)))
    window = thresholds[max(centre - 2000, 0): centre + 2000]
    window_value = loop_eer(positive, negative, window)

    print(f"trials: {args.trials:,} ({int(labels.sum()):,} target), thresholds in the loop: {thresholds.numel():,}")
    print(f"vectorised EER: {100 * value:.6f}% in {fast_seconds * 1000:.1f} ms")
    print(f"loop: {args.timed_thresholds} thresholds took {subset_seconds:.2f} s -> "
          f"{loop_seconds:.0f} s extrapolated to all {thresholds.numel():,} (linear; not run in full)")
    print(f"same value, full loop on the first {small:,} trials: loop {100 * small_value:.6f}% vs vectorised "
          f"{100 * eer(scores[:small], labels[:small]):.6f}% -> "
          f"{'equal' if small_value == eer(scores[:small], labels[:small]) else 'DIFFERENT'}")
    print(f"same value, loop over 4,000 thresholds around the optimum on all trials: {100 * window_value:.6f}% -> "
          f"{'equal' if window_value == value else 'DIFFERENT'}")
    print(f"speed-up (extrapolated loop / vectorised): {loop_seconds / fast_seconds:,.0f}x (goal >= 100x)")


if __name__ == "__main__":
    main()
