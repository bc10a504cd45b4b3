"""``zoo eval sylber-... --data manifest.jsonl``: syllable boundaries and syllable rate.

Manifest rows may carry
* ``boundaries``: reference syllable boundaries in seconds -> precision, recall, F1,
  over-segmentation (OS) and R-value with a 50 ms tolerance (the protocol of the authors'
  ``cheoljun95/sdhubert:evaluate_boundary.py``; the predicted boundaries are the segment starts);
* ``syllables``: the syllable count of the text -> syllables per second of the
  reference vs segments per second found by the model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError
from zoo.model import inference

logger = logging.getLogger("zoo.sylber")


def _rows(data, max_items: int | None) -> list[dict]:
    from zoo.data import read_manifest

    rows = read_manifest(data) if isinstance(data, (str, Path)) else list(data)
    if not rows:
        raise ConfigError(f"{data} lists no utterances")
    return rows[:max_items] if max_items else rows


@inference
def segment_rows(model, rows: list[dict], *, batch_size: int = 8, norm_threshold=None, merge_threshold=None):
    """Segment the audio file of every manifest row (``row["path"]``), ``batch_size`` files per encoder batch.

    Returns one :class:`~zoo.speech.sylber.model.SegmentResult` per row, in row order; runs in eval
    mode without gradients. Unreadable files raise :class:`~zoo.errors.AudioInputError` naming the file.
    """
    results = []
    for start in range(0, len(rows), batch_size):
        paths = [row["path"] for row in rows[start:start + batch_size]]
        results.extend(model.segment(paths, norm_threshold=norm_threshold, merge_threshold=merge_threshold))
    return results


@inference
def silence_check(model, rows: list[dict], *, seconds: float = 0.5, noise_dbfs: float = -60.0, seed: int = 0,
                  norm_threshold: float | None = None, merge_threshold: float | None = None) -> dict:
    """Add ``seconds`` of silence before and after each row's clip and count the segments that fall in it.

    The silence carries Gaussian background noise at ``noise_dbfs`` dB full scale (RMS; -inf for
    digital silence), drawn with ``seed``. A segment "falls in the silence" when all its frames
    are inside the added stretch. Silence should give no segments (the norm threshold is there
    for it). Returns ``{"clips", "segments_in_silence", "segments", "noise_dbfs", "seconds"}``.
    """
    from zoo.audio import load_audio

    generator = torch.Generator().manual_seed(int(seed))
    level = 0.0 if noise_dbfs == float("-inf") else 10 ** (float(noise_dbfs) / 20)
    pad = int(round(seconds * model.sample_rate))
    waves = []
    for row in rows:
        clip = load_audio(row["path"], model.sample_rate)
        wave = torch.nn.functional.pad(clip, (pad, pad))
        waves.append(wave + level * torch.randn(wave.shape, generator=generator))
    in_silence = total = 0
    lead = pad / model.sample_rate  # seconds of added silence before the clip
    found = model.segment(waves, model.sample_rate, norm_threshold=norm_threshold, merge_threshold=merge_threshold)
    for wave, result in zip(waves, found):
        tail = (wave.shape[0] - pad) / model.sample_rate  # where the added silence after the clip starts
        for start, end in result.segments.tolist():
            total += 1
            in_silence += int(end <= lead or start >= tail)
    return {"clips": len(rows), "segments_in_silence": in_silence, "segments": total,
            "noise_dbfs": float(noise_dbfs), "seconds": float(seconds)}


def boundary_scores(predicted: list[np.ndarray], reference: list[np.ndarray], *, tolerance: float = 0.05,
                    shift: float | None = 0.0) -> dict:
    """Precision, recall, F1, over-segmentation and R-value (fractions) over a corpus.

    ``predicted``/``reference``: boundary times in seconds, one array per utterance;
    ``tolerance`` in seconds; ``shift=None`` tunes a global shift in [-50, 50) ms on these
    utterances (the SD-HuBERT protocol, :func:`zoo.speech.sylber.metrics.tune_shift`).
    """
    from zoo.speech.sylber import metrics

    if shift is None:
        shift, _ = metrics.tune_shift(predicted, reference, tolerance=tolerance)
    return dict(metrics.boundary_scores(predicted, reference, tolerance, float(shift)))


@inference
def evaluate(model, *, data, output=None, norm_threshold: float | None = None, merge_threshold: float | None = None,
             tolerance: float = 0.05, shift: float | None = 0.0, tune_shift: bool = False, batch_size: int = 8,
             max_items: int | None = None, silence_seconds: float | None = None, noise_dbfs: float = -60.0,
             **unknown) -> dict:
    """Segment every utterance of ``data`` (a JSONL manifest path or a list of rows) and score it.

    Always: utterances, seconds, segments, ``segments_per_second`` (over the whole corpus), the
    thresholds; with a codebook, ``tokens_per_second`` and ``codes_used``. Rows with
    ``syllables`` add ``syllables_per_second_text``, ``segments_per_second_model``,
    ``syllable_count_ratio`` and ``syllable_count_mae`` (segments per clip); rows with
    ``boundaries`` (seconds) add ``boundary_precision`` ... ``boundary_r_value`` (fractions).
    ``silence_seconds``: also run :func:`silence_check` (that much silence with a ``noise_dbfs``
    floor added before and after each clip) and report ``segments_in_silence``.
    Runs in eval mode without gradients; prints nothing; writes the dict as JSON to ``output``.
    Raises :class:`~zoo.errors.ConfigError` for unknown options or an empty manifest.
    """
    if unknown:
        raise ConfigError(f"Unknown sylber eval options: {', '.join(sorted(unknown))}. Valid: norm_threshold, "
                          "merge_threshold, tolerance, shift, tune_shift, batch_size, max_items, silence_seconds, "
                          "noise_dbfs.")
    rows = _rows(data, max_items)
    results = segment_rows(model, rows, batch_size=int(batch_size), norm_threshold=norm_threshold,
                           merge_threshold=merge_threshold)
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
        report["codes_used"] = int(used[used >= 0].unique().numel())
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
    if silence_seconds:
        silence = silence_check(model, rows, seconds=float(silence_seconds), noise_dbfs=float(noise_dbfs),
                                norm_threshold=norm_threshold, merge_threshold=merge_threshold)
        report.update(segments_in_silence=silence["segments_in_silence"], silence_seconds=silence["seconds"],
                      silence_noise_dbfs=silence["noise_dbfs"])
    if output:
        from zoo.files import write_json

        write_json(output, report)
    return report
