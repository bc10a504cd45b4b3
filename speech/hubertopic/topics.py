"""Topic labels from units (HuBERTopic, arXiv 2310.03975): bag-of-units documents, LDA, one hard topic per utterance.

The paper does not say how a document is made from units; three choices are offered:
``frames`` counts every frame's unit, ``dedup`` counts runs of a repeated unit once,
``ngram`` counts n-grams of the de-duplicated sequence. The LDA model is saved as
arrays and JSON (no pickle) and rebuilt exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError

DOCUMENT_MODES = ("frames", "dedup", "ngram")
# Fitted attributes sklearn's LatentDirichletAllocation.transform reads.
_FITTED = ("components_", "exp_dirichlet_component_", "doc_topic_prior_", "topic_word_prior_", "n_batch_iter_",
           "n_iter_", "bound_", "n_features_in_")


def _dedup(units: np.ndarray) -> np.ndarray:
    units = np.asarray(units).reshape(-1)
    if units.size == 0:
        return units
    keep = np.ones(units.size, dtype=bool)
    keep[1:] = units[1:] != units[:-1]
    return units[keep]


def _tokens(units: np.ndarray, mode: str, ngram: int) -> list[tuple[int, ...]]:
    if mode == "frames":
        return [(int(u),) for u in np.asarray(units).reshape(-1)]
    runs = _dedup(units)
    if mode == "dedup":
        return [(int(u),) for u in runs]
    return [tuple(int(u) for u in runs[i:i + ngram]) for i in range(len(runs) - ngram + 1)]


def _name(token: tuple[int, ...]) -> str:
    return "_".join(str(u) for u in token)


def unit_documents(labels: list, mode: str = "dedup", ngram: int = 2, vocabulary: dict | None = None):
    """Count matrix [utterances, vocabulary] of bag-of-units documents, and the vocabulary {token: column}."""
    from scipy.sparse import csr_matrix

    if mode not in DOCUMENT_MODES:
        raise ConfigError(f"lda.documents must be one of {DOCUMENT_MODES}, got {mode!r}")
    if mode == "ngram" and int(ngram) < 1:
        raise ConfigError(f"lda.ngram must be >= 1, got {ngram}")
    documents = [_tokens(units, mode, int(ngram)) for units in labels]
    if vocabulary is None:
        seen = sorted({token for document in documents for token in document}, key=lambda t: (len(t), t))
        vocabulary = {_name(token): column for column, token in enumerate(seen)}
    rows, columns = [], []
    for row, document in enumerate(documents):
        for token in document:
            column = vocabulary.get(_name(token))
            if column is not None:
                rows.append(row)
                columns.append(column)
    data = np.ones(len(rows), dtype=np.float64)
    counts = csr_matrix((data, (rows, columns)), shape=(len(documents), len(vocabulary)))
    counts.sum_duplicates()
    return counts, dict(vocabulary)


class TopicModel:
    """scikit-learn LDA plus its vocabulary; saved without pickle."""

    def __init__(self, lda, vocabulary: dict, settings: dict):
        self.lda, self.vocabulary, self.settings = lda, dict(vocabulary), dict(settings)

    @classmethod
    def fit(cls, counts, num_topics: int, *, doc_topic_prior=None, topic_word_prior=None, max_iter: int = 10,
            learning_method: str = "batch", batch_size: int = 128, seed: int = 0, vocabulary: dict) -> "TopicModel":
        """Fit scikit-learn's ``LatentDirichletAllocation`` with ``num_topics`` topics on ``counts`` ``[U, V]``.

        Priors of None mean 1 / num_topics (scikit-learn's default). Raises ConfigError for empty
        counts or an unknown ``learning_method``.
        """
        from sklearn.decomposition import LatentDirichletAllocation

        if counts.shape[0] == 0 or counts.sum() == 0:
            raise ConfigError("The LDA got no units to count; check that the unit labels are not empty.")
        if learning_method not in ("batch", "online"):
            raise ConfigError(f"lda.learning_method must be 'batch' or 'online', got {learning_method!r}")
        settings = dict(n_components=int(num_topics), doc_topic_prior=doc_topic_prior,
                        topic_word_prior=topic_word_prior, max_iter=int(max_iter), learning_method=learning_method,
                        batch_size=int(batch_size), random_state=int(seed))
        lda = LatentDirichletAllocation(**settings).fit(counts)
        return cls(lda, vocabulary, settings)

    @property
    def num_topics(self) -> int:
        """T, the number of topics."""
        return int(self.lda.n_components)

    def transform(self, counts) -> np.ndarray:
        """Topic distribution of each document [U, T] (rows sum to 1)."""
        return self.lda.transform(counts)

    def hard_topics(self, counts) -> np.ndarray:
        """The most likely topic of each document, int64 ``[U]`` in ``0..T-1``."""
        return self.transform(counts).argmax(1).astype(np.int64)

    def save(self, folder) -> None:
        """Write ``lda.npz`` (fitted arrays), ``vocabulary.json`` and ``lda.json`` (settings) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.asarray(getattr(self.lda, name)) for name in _FITTED if hasattr(self.lda, name)}
        from zoo.files import atomic_open, write_json

        with atomic_open(folder / "lda.npz", "wb") as handle:
            np.savez(handle, **arrays)
        write_json(folder / "vocabulary.json", self.vocabulary, indent=None, sort_keys=False)
        write_json(folder / "lda.json", self.settings, indent=1, sort_keys=False)

    @classmethod
    def load(cls, folder) -> "TopicModel":
        """Rebuild a model saved by :meth:`save` exactly (no pickle); ConfigError when ``folder`` holds none."""
        from sklearn.decomposition import LatentDirichletAllocation

        folder = Path(folder)
        if not (folder / "lda.npz").is_file():
            raise ConfigError(f"{folder} holds no saved LDA (lda.npz); run the lda step again (labels.force=true).")
        settings = json.loads((folder / "lda.json").read_text(encoding="utf-8"))
        lda = LatentDirichletAllocation(**settings)
        with np.load(folder / "lda.npz", allow_pickle=False) as arrays:
            for name in arrays.files:
                value = arrays[name]
                setattr(lda, name, value.item() if value.ndim == 0 else value)
        vocabulary = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
        return cls(lda, vocabulary, settings)


def write_topics(path, ids: list[str], topics) -> None:
    """One hard topic per utterance: ``id<TAB>topic``."""
    from zoo.speech.hubertopic.kmeans import write_id_file

    write_id_file(path, ids, [str(int(t)) for t in np.asarray(topics).reshape(-1)])


def read_topics(path) -> dict[str, int]:
    """``{utterance id: topic}`` from an ``id<TAB>topic`` file; ConfigError naming the line when malformed."""
    from zoo.speech.hubertopic.kmeans import read_id_file

    return read_id_file(path, int, "id<TAB>topic")


def normalized_mutual_info(a, b) -> float:
    """NMI (arithmetic normalisation) between two labelings; labels may be strings."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score([str(x) for x in a], [str(x) for x in b]))


__all__ = ["DOCUMENT_MODES", "TopicModel", "normalized_mutual_info", "read_topics", "unit_documents", "write_topics"]
