"""k-means pseudo-labels (``facebookresearch/fairseq:examples/hubert/simple_kmeans/learn_kmeans.py``): fairseq's sampling and MiniBatchKMeans settings, label files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError

# facebookresearch/fairseq:examples/hubert/simple_kmeans/learn_kmeans.py.
KMEANS_DEFAULTS = dict(init="k-means++", max_iter=100, batch_size=10000, tol=0.0, max_no_improvement=100,
                       n_init=20, reassignment_ratio=0.0)


def sample_utterances(num_utterances: int, percent: float, seed: int) -> np.ndarray:
    """Indices of the utterances the k-means is fitted on: ceil(n * percent) of them, drawn without replacement."""
    if percent >= 1:
        return np.arange(num_utterances)
    count = int(math.ceil(num_utterances * percent))
    chosen = np.random.RandomState(seed).choice(num_utterances, count, replace=False)
    return np.sort(chosen)


def fit_kmeans(features: np.ndarray, n_clusters: int, *, seed: int = 0, **overrides) -> np.ndarray:
    """Fit MiniBatchKMeans with the spec's settings (``overrides`` change them); returns [K, D] float32 centroids."""
    from sklearn.cluster import MiniBatchKMeans

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ConfigError(f"k-means features must be [frames, dims], got shape {features.shape}")
    if features.shape[0] < n_clusters:
        raise ConfigError(f"k-means with {n_clusters} clusters needs at least as many frames, got "
                          f"{features.shape[0]}; lower labels.num_clusters or raise labels.percent.")
    unknown = sorted(set(overrides) - set(KMEANS_DEFAULTS))
    if unknown:
        raise ConfigError(f"Unknown k-means settings {unknown}; valid: {sorted(KMEANS_DEFAULTS)}")
    settings = {**KMEANS_DEFAULTS, **overrides}
    kmeans = MiniBatchKMeans(n_clusters=int(n_clusters), compute_labels=False, init_size=None, random_state=seed,
                             **settings)
    kmeans.fit(features)
    return kmeans.cluster_centers_.astype(np.float32)


def assign(features, centroids) -> np.ndarray:
    """Nearest centroid of each row, by squared distance x^2 - 2 x.C + C^2 in float32 (fairseq's ApplyKmeans)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    c = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    distances = x.pow(2).sum(1, keepdim=True) - 2 * x @ c.t() + c.pow(2).sum(1)[None]
    return distances.argmin(1).numpy().astype(np.int64)


def save_centroids(path, centroids) -> None:
    """Write k-means centroids ``[K, D]`` as float32 ``.npy`` (no pickle), atomically."""
    from zoo.files import atomic_open

    with atomic_open(Path(path), "wb") as handle:
        np.save(handle, np.asarray(centroids, dtype=np.float32), allow_pickle=False)


def load_centroids(path) -> np.ndarray:
    """Read centroids ``[K, D]`` written by :func:`save_centroids` (pickles refused)."""
    return np.load(Path(path), allow_pickle=False)


def write_id_file(path, ids: list[str], values: list[str]) -> None:
    """One line per utterance, ``id<TAB>value``; written atomically (``zoo.files``)."""
    path = Path(path)
    if len(ids) != len(values):
        raise ConfigError(f"{path.name}: got {len(ids)} ids for {len(values)} values")
    from zoo.files import atomic_open

    with atomic_open(path, "w") as handle:
        handle.writelines(f"{key}\t{value}\n" for key, value in zip(ids, values))


def read_id_file(path, parse, expected: str) -> dict:
    """``{id: parse(value)}`` in file order; a malformed line is an error naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; run the label steps (`zoo train hubertopic`).")
    out = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            key, tab, value = line.partition("\t")
            try:
                if not tab or not key:
                    raise ValueError("no id")
                out[key] = parse(value)
            except ValueError:
                raise ConfigError(f"{path}, line {number}: expected '{expected}', got {line[:60]!r}") from None
    return out


def write_labels(path, ids: list[str], labels: list) -> None:
    """Unit labels: ``id<TAB>unit unit ...`` per utterance."""
    write_id_file(path, ids, [" ".join(str(int(u)) for u in np.asarray(units).reshape(-1)) for units in labels])


def read_labels(path) -> dict[str, np.ndarray]:
    """``{id: int64 units}`` in file order."""
    return read_id_file(path, lambda value: np.array(value.split(), dtype=np.int64), "id<TAB>unit unit ...")


__all__ = ["KMEANS_DEFAULTS", "assign", "fit_kmeans", "load_centroids", "read_id_file", "read_labels",
           "sample_utterances", "save_centroids", "write_id_file", "write_labels"]
