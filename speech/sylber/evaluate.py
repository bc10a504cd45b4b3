"""``zoo eval sylber-... --data manifest.jsonl``: syllable boundaries and syllable rate.

Manifest rows may carry
* ``boundaries``: reference syllable boundaries in seconds -> precision, recall, F1,
  over-segmentation (OS) and R-value with a 50 ms tolerance (speech.md §1.7; the
  predicted boundaries are the segment starts);
* ``syllables``: the syllable count of the text -> syllables per second of the
  reference vs segments per second found by the model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError

logger = logging.getLogger("zoo.sylber")


def _rows(data, max_items: int | None) -> list[dict]:
    from zoo.data import read_manifest

    rows = read_manifest(data) if isinstance(data, (str, Path)) else list(data)
    if not rows:
        raise ConfigError(f"{data} lists no utterances")
    return rows[:max_items] if max_items else rows


@torch.no_grad()
def segment_rows(model, rows: list[dict], *, batch_size: int = 8, norm_threshold=None, merge_threshold=None):
    """Segment the audio of every manifest row (in batches); returns SegmentResults in row order."""
    from zoo.audio import load_audio

    results = []
    for start in range(0, len(rows), batch_size):
        waves = [load_audio(row["path"], model.sample_rate, min_samples=400) for row in rows[start:start + batch_size]]
        results.extend(model.segment(waves, model.sample_rate, norm_threshold=norm_threshold,
                                     merge_threshold=merge_threshold))
    return results


def boundary_scores(predicted: list[np.ndarray], reference: list[np.ndarray], *, tolerance: float = 0.05,
                    shift: float | None = 0.0) -> dict:
    """P/R/F1/OS/R over a corpus; ``shift=None`` tunes a global shift in [-50, 50) ms (speech.md §1.7)."""
    from zoo.speech.sylber import metrics

    if shift is None:
        shift, _ = metrics.tune_shift(predicted, reference, tolerance=tolerance)
    return dict(metrics.boundary_scores(predicted, reference, tolerance, float(shift)))


def evaluate(model, *, data, output=None, norm_threshold: float | None = None, merge_threshold: float | None = None,
             tolerance: float = 0.05, shift: float | None = 0.0, tune_shift: bool = False, batch_size: int = 8,
             max_items: int | None = None, **unknown) -> dict:
    """Segment every utterance of ``data`` and score it; prints nothing, returns a dict (JSON at ``output``)."""
    if unknown:
        raise ConfigError(f"Unknown sylber eval options: {', '.join(sorted(unknown))}. Valid: norm_threshold, "
                          "merge_threshold, tolerance, shift, tune_shift, batch_size, max_items.")
    rows = _rows(data, max_items)
    was_training = model.training
    model.eval()
    try:
        results = segment_rows(model, rows, batch_size=int(batch_size), norm_threshold=norm_threshold,
                               merge_threshold=merge_threshold)
    finally:
        model.train(was_training)
    seconds = sum(r.duration for r in results)
    num_segments = sum(len(r) for r in results)
    report: dict = {
        "utterances": len(rows),
        "seconds": round(seconds, 3),
        "segments": num_segments,
        "segments_per_second": num_segments / seconds if seconds else 0.0,
        "norm_threshold": results[0].norm_threshold,
        "merge_threshold": results[0].merge_threshold,
    }
    if model.num_tokens:
        report["tokens_per_second"] = report["segments_per_second"]
        used = torch.cat([r.tokens for r in results]) if num_segments else torch.zeros(0, dtype=torch.long)
        report["codes_used"] = int(used.unique().numel())
    with_counts = [(row, r) for row, r in zip(rows, results) if row.get("syllables") is not None]
    if with_counts:
        ref_count = sum(float(row["syllables"]) for row, _ in with_counts)
        hyp_count = sum(len(r) for _, r in with_counts)
        span = sum(r.duration for _, r in with_counts)
        report["syllables_per_second_text"] = ref_count / span if span else 0.0
        report["segments_per_second_model"] = hyp_count / span if span else 0.0
        report["syllable_count_ratio"] = hyp_count / ref_count if ref_count else float("nan")
        report["syllable_count_mae"] = float(np.mean([abs(len(r) - float(row["syllables"])) for row, r in with_counts]))
    with_bounds = [(row, r) for row, r in zip(rows, results) if row.get("boundaries") is not None]
    if with_bounds:
        predicted = [r.segments[:, 0].numpy() if len(r) else np.zeros(0) for _, r in with_bounds]
        reference = [np.asarray(row["boundaries"], dtype=np.float64) for row, _ in with_bounds]
        scores = boundary_scores(predicted, reference, tolerance=float(tolerance),
                                 shift=None if tune_shift else float(shift or 0.0))
        report.update({f"boundary_{k}": v for k, v in scores.items()})
    if output:
        from zoo.files import write_json

        write_json(output, report)
    return report
