"""Syllable tokenizer: k-means over segment features (Cho et al., *Sylber*, arXiv 2410.07168).

The paper tokenizes by k-means over segment features (Sylber-5K/10K/20K; about 4.27 tokens per
second on average). Here the centroids become the model's ``codebook`` buffer, so they are saved
in ``model.safetensors`` and pushed with the model; ``model.segment`` then returns token ids
(nearest centroid). The k-means settings follow the same authors' SD-HuBERT recipe
(``cheoljun95/sdhubert:train_km.py``: k-means++, batch 10000, n_init 5, max_iter 100).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError
from zoo.model import inference

logger = logging.getLogger("zoo.sylber")


def _inputs(data, max_items: int | None) -> list:
    """Audio inputs of ``data``: a manifest path or audio folder -> file paths; a list -> its items
    (manifest rows become their ``path``; paths and waveforms stay)."""
    if isinstance(data, (str, Path)):
        from zoo.data import audio_folder, read_manifest

        path = Path(data)
        rows = audio_folder(path) if path.is_dir() else read_manifest(path)
    else:
        rows = list(data)
    rows = rows[:max_items] if max_items is not None else rows
    return [row["path"] if isinstance(row, dict) else row for row in rows]


@inference
def collect_segment_features(model, data, *, batch_size: int = 8, max_items: int | None = None,
                             sample_rate: int | None = None, norm_threshold: float | None = None,
                             merge_threshold: float | None = None):
    """Segment every utterance of ``data``: ``(features [N, D] float32 numpy, seconds of audio)``.

    ``data``: a JSONL manifest, an audio folder, or a list of manifest rows, paths or waveforms
    (waveforms at ``sample_rate`` Hz). Empty segments (NaN means) are left out. Runs in eval
    mode without gradients.
    """
    inputs = _inputs(data, max_items)
    features, seconds = [], 0.0
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        for result in model.segment(chunk, sample_rate, norm_threshold=norm_threshold,
                                    merge_threshold=merge_threshold, batch_size=batch_size):
            means = result.features.float().numpy()
            features.append(means[np.isfinite(means).all(axis=1)])
            seconds += result.duration
    dim = model.hidden_size
    stacked = np.concatenate(features, 0) if features else np.zeros((0, dim), np.float32)
    return stacked, seconds


def fit_tokenizer(model, data, num_tokens: int, *, batch_size: int = 8, max_items: int | None = None,
                  seed: int = 0, kmeans_batch_size: int = 10000, n_init: int = 5, max_iter: int = 100,
                  norm_threshold: float | None = None, merge_threshold: float | None = None,
                  sample_rate: int | None = None) -> dict:
    """Fit MiniBatchKMeans(num_tokens) on segment features and attach it as ``model.codebook`` ``[K, D]``.

    ``data`` as :func:`collect_segment_features`. Returns a report: ``num_tokens``,
    ``num_segments``, ``seconds`` of audio, ``tokens_per_second``, ``codes_used`` (distinct
    tokens over the data), ``inertia``. Raises :class:`~zoo.errors.ConfigError` when
    ``num_tokens`` is not positive or the data has fewer segments than ``num_tokens``.
    """
    from sklearn.cluster import MiniBatchKMeans

    num_tokens = int(num_tokens)
    if num_tokens <= 0:
        raise ConfigError(f"tokenizer.num_tokens must be positive, got {num_tokens}")
    features, seconds = collect_segment_features(model, data, batch_size=batch_size, max_items=max_items,
                                                 sample_rate=sample_rate, norm_threshold=norm_threshold,
                                                 merge_threshold=merge_threshold)
    if features.shape[0] < num_tokens:
        raise ConfigError(
            f"Only {features.shape[0]} syllable segments were found but tokenizer.num_tokens={num_tokens}; "
            "use fewer tokens or more data (or lower norm_threshold if the model finds no speech).")
    kmeans = MiniBatchKMeans(n_clusters=num_tokens, init="k-means++", batch_size=kmeans_batch_size,
                             n_init=n_init, max_iter=max_iter, random_state=seed)
    kmeans.fit(features.astype(np.float64))
    model.attach_codebook(kmeans.cluster_centers_.astype(np.float32))
    tokens = model.assign_tokens(torch.from_numpy(features).to(model.device)).cpu().numpy()
    report = {
        "num_tokens": num_tokens,
        "num_segments": int(features.shape[0]),
        "seconds": float(seconds),
        "tokens_per_second": float(features.shape[0] / seconds) if seconds > 0 else 0.0,
        "codes_used": int(np.unique(tokens).size),
        "inertia": float(kmeans.inertia_),
    }
    logger.info("tokenizer: %d tokens over %.1f s of audio = %.2f tokens/s, %d/%d codes used",
                report["num_segments"], report["seconds"], report["tokens_per_second"],
                report["codes_used"], num_tokens)
    return report
