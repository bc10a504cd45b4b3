"""Modeling Collaborator retrieval: top-k over 100k cached image embeddings (goal: under 1 s).

Writes --pool random unit vectors of --dim (512, ViT-B-32's embedding size) into an
``EmbeddingCache`` in shards, as the embed step does, then times (1) looking the whole pool up
again from the cache and (2) ``top_k`` for --queries text queries, against the reference of a
full ``argsort`` of every score in the same run, and checks that both pick the same images.
Set OMP_NUM_THREADS to choose the thread count (printed).

    python benchmarks/collaborator_retrieval.py [--pool 100000] [--dim 512] [--queries 12] [--k 50]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

import numpy as np

from zoo.vision.modeling_collaborator.embeddings import EmbeddingCache
from zoo.vision.modeling_collaborator.retrieve import top_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=12)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--shard-size", type=int, default=8192)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pool = rng.standard_normal((args.pool, args.dim)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(args.pool)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(tmp, "benchmark")
        for start in range(0, args.pool, args.shard_size):
            cache.add(hashes[start:start + args.shard_size], pool[start:start + args.shard_size])
        start = time.perf_counter()
        matrix, _ = cache.gather(hashes)
        lookup_seconds = time.perf_counter() - start
    assert np.array_equal(matrix, pool)
    start = time.perf_counter()
    indices, _ = top_k(matrix, queries, args.k)
    topk_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reference = np.argsort(-(queries @ matrix.T), axis=1)[:, :args.k]
    sort_seconds = time.perf_counter() - start
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"pool {args.pool} x {args.dim} float32, {args.queries} queries, k={args.k}, OMP_NUM_THREADS={threads}")
    print(f"  cache lookup of the whole pool: {lookup_seconds:.3f} s")
    print(f"  top_k:                          {topk_seconds:.3f} s  (goal < 1 s: {'met' if topk_seconds < 1 else 'NOT met'})")
    print(f"  full argsort reference:         {sort_seconds:.3f} s  ({sort_seconds / topk_seconds:.1f}x slower)")
    print(f"  same images as the reference: {bool(np.array_equal(indices, reference))}")


if __name__ == "__main__":
    main()
