"""Syllable tokenizer: k-means over segment features (speech.md §1.6).

The centroids become the model's ``codebook`` buffer, so they are saved in
``model.safetensors`` and pushed with the model; ``model.segment`` then returns
token ids (nearest centroid). The paper's token rate is about 4.27 tokens/s.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from zoo.errors import ConfigError

logger = logging.getLogger("zoo.sylber")


def iter_waveforms(data, *, sample_rate: int = 16000, max_items: int | None = None) -> Iterable[torch.Tensor]:
    """Waveforms from a manifest path, an audio folder, a list of manifest rows or a list of tensors."""
    from zoo.audio import load_audio

    if isinstance(data, (str, Path)):
        from zoo.data import audio_folder, read_manifest

        path = Path(data)
        rows = audio_folder(path) if path.is_dir() else read_manifest(path)
    else:
        rows = list(data)
    for index, row in enumerate(rows):
        if max_items is not None and index >= max_items:
            break
        if isinstance(row, dict):
            yield load_audio(row["path"], sample_rate)
        else:
            yield torch.as_tensor(row)


@torch.no_grad()
def collect_segment_features(model, data, *, batch_size: int = 8, max_items: int | None = None,
                             norm_threshold: float | None = None, merge_threshold: float | None = None):
    """Segment every utterance; returns (features [N, D] float32 numpy, seconds of audio)."""
    features, seconds, batch = [], 0.0, []

    def flush():
        nonlocal seconds
        for result in model.segment(batch, model.sample_rate, norm_threshold=norm_threshold,
                                    merge_threshold=merge_threshold, batch_size=batch_size):
            features.append(result.features.float().numpy())
            seconds += result.duration
        batch.clear()

    for wave in iter_waveforms(data, sample_rate=model.sample_rate, max_items=max_items):
        batch.append(wave)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    dim = model.hidden_size
    stacked = np.concatenate(features, 0) if features else np.zeros((0, dim), np.float32)
    return stacked, seconds


def fit_tokenizer(model, data, num_tokens: int, *, batch_size: int = 8, max_items: int | None = None,
                  seed: int = 0, kmeans_batch_size: int = 10000, n_init: int = 5, max_iter: int = 100,
                  norm_threshold: float | None = None, merge_threshold: float | None = None) -> dict:
    """Fit MiniBatchKMeans(num_tokens) on segment features and attach it as ``model.codebook``.

    Returns a report: number of segments, seconds of audio, tokens per second, codes used.
    The SD-HuBERT recipe uses k-means++ with batch 10000, n_init 5, max_iter 100 (speech.md §1.6).
    """
    from sklearn.cluster import MiniBatchKMeans

    num_tokens = int(num_tokens)
    if num_tokens <= 0:
        raise ConfigError(f"tokenizer.num_tokens must be positive, got {num_tokens}")
    was_training = model.training
    model.eval()
    features, seconds = collect_segment_features(model, data, batch_size=batch_size, max_items=max_items,
                                                 norm_threshold=norm_threshold, merge_threshold=merge_threshold)
    model.train(was_training)
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
