"""Step 3: mining the unlabelled pool by text-image similarity (open_clip embeddings).

Each search query's text embedding ranks the pool by cosine similarity; the top ``per_query``
images of every positive query and the top ``per_negative_query`` of every hard-negative query
become candidates for the Annotator (Modeling Collaborator, arXiv 2403.02626: retrieval with
LLM-written queries replaces browsing the corpus by hand).
"""
from __future__ import annotations

import numpy as np

__all__ = ["top_k", "mine"]


def top_k(pool: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 65536):
    """Indices and scores of the ``k`` pool rows most similar to each query.

    pool: float ``[N, D]``, queries: float ``[Q, D]`` (L2-normalised for cosine similarity).
    Returns ``(indices int64 [Q, k'], scores float32 [Q, k'])`` with ``k' = min(k, N)``, best
    first. The pool is scored ``chunk`` rows at a time, keeping a running top-k, so memory stays
    ``O(chunk * Q)`` however large the pool.
    """
    pool = np.asarray(pool, dtype=np.float32)
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n, q = pool.shape[0], queries.shape[0]
    k = int(min(k, n))
    if k <= 0:
        return np.zeros((q, 0), dtype=np.int64), np.zeros((q, 0), dtype=np.float32)
    best_scores = np.full((q, 0), -np.inf, dtype=np.float32)
    best_index = np.zeros((q, 0), dtype=np.int64)
    for start in range(0, n, chunk):
        scores = queries @ pool[start:start + chunk].T  # [Q, c]
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
        merged_index = np.concatenate([best_index, part + start], axis=1)
        keep = np.argpartition(-merged_scores, min(k, merged_scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, 1)
        best_index = np.take_along_axis(merged_index, keep, 1)
    order = np.lexsort((best_index, -best_scores), axis=1) if q else np.zeros((0, 0), dtype=np.int64)
    return np.take_along_axis(best_index, order, 1), np.take_along_axis(best_scores, order, 1)


def mine(pool: np.ndarray, query_embeddings: np.ndarray, kinds: list[str], *, per_query: int = 50,
         per_negative_query: int = 25, max_images: int | None = None) -> list[dict]:
    """Candidate pool rows from the queries: ``[{"index", "queries": [query numbers], "kind",
    "score"}]``, ordered by best rank then score; ``kind`` is "positive" when a positive query found
    the image, else "negative". ``max_images`` keeps the best-ranked ones."""
    found: dict[int, dict] = {}
    for number, (vector, kind) in enumerate(zip(query_embeddings, kinds)):
        k = per_query if kind == "positive" else per_negative_query
        indices, scores = top_k(pool, vector[None], k)
        for rank, (index, score) in enumerate(zip(indices[0], scores[0])):
            entry = found.setdefault(int(index), {"index": int(index), "queries": [], "kind": "negative",
                                                  "rank": rank, "score": float(score)})
            entry["queries"].append(number)
            if kind == "positive":
                entry["kind"] = "positive"
            if rank < entry["rank"] or (rank == entry["rank"] and score > entry["score"]):
                entry["rank"], entry["score"] = rank, float(score)
    ordered = sorted(found.values(), key=lambda e: (e["rank"], -e["score"], e["index"]))
    return ordered[:max_images] if max_images else ordered
