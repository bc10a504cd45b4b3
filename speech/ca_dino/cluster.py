"""k-means pseudo-labels and cluster-aware positive sampling (CA-DINO, Han et al., arXiv 2304.05754).

The authors cluster with faiss; scikit-learn's KMeans (MiniBatchKMeans for large sets)
is used here on L2-normalised embeddings, i.e. spherical-ish k-means on cosine geometry.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from zoo.errors import ConfigError


def kmeans_labels(embeddings, num_clusters: int, *, seed: int = 0, normalize: bool = True,
                  minibatch_above: int = 20000, n_init: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``embeddings`` [N, D] into ``num_clusters``; returns (labels [N] int64, centroids [K, D])."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    data = embeddings.detach().cpu().double().numpy() if isinstance(embeddings, torch.Tensor) \
        else np.asarray(embeddings, dtype=np.float64)
    if num_clusters < 2 or num_clusters > data.shape[0]:
        raise ConfigError(f"cluster count {num_clusters} must be between 2 and the number of utterances "
                          f"({data.shape[0]}); set cluster.num_clusters.")
    if normalize:
        data = data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    if data.shape[0] > minibatch_above:
        algorithm = MiniBatchKMeans(num_clusters, random_state=seed, n_init=n_init, batch_size=4096)
    else:
        algorithm = KMeans(num_clusters, random_state=seed, n_init=n_init)
    labels = algorithm.fit_predict(data).astype(np.int64)
    return labels, algorithm.cluster_centers_.astype(np.float32)


class ClusterPositives:
    """For an anchor utterance, other utterances of its cluster (``positives_from: cluster``).

    Singletons fall back to the anchor itself, so every anchor still gets its crops.
    """

    def __init__(self, labels):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.members: dict[int, np.ndarray] = {}
        for cluster in np.unique(self.labels):
            self.members[int(cluster)] = np.flatnonzero(self.labels == cluster)

    def sample(self, anchor: int, count: int, rng: random.Random) -> list[int]:
        """``count`` utterance indices from the anchor's cluster, excluding the anchor when possible."""
        members = self.members[int(self.labels[anchor])]
        others = [int(i) for i in members if i != anchor]
        if not others:
            return [anchor] * count
        return [others[rng.randrange(len(others))] for _ in range(count)]
