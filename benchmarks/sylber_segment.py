"""Sylber segmentation speed: fast `segment` vs the official `get_segment` and the per-frame reference.

Two cases, on synthetic 50 Hz, 768-d float32 features (the dtype the official Segmenter passes):
syllable-like runs of near-constant vectors (norm 3-8) with per-frame noise and drift,
neighbouring syllables partly correlated, and silent gaps (norm < 2) between words.

* one long sequence (``--minutes``, default one hour = 180,000 frames): ``segment`` against
  ``segment_reference`` and the official ``get_segment``;
* a corpus (``--corpus-minutes``, default one hour) of 5-15 s utterances: ``segment`` on the
  list (parallel threads, ``--workers``, default every core) against the official
  ``get_segment`` called on each utterance in turn, as a user of the official code would.

Prints the timings, the speed ratios measured in this run, whether every boundary agrees,
and the machine's load average (the machine may be shared: the ratios are of one run).

The official code is ``Berkeley-Speech-Group/sylber:sylber/utils/segment_utils.py`` from the
installed ``sylber`` wheel (``pip install --no-deps sylber==0.1.4``), loaded by its path
(``import sylber`` would pull in the package's heavy dependencies), or from SYLBER_SEGMENT_UTILS.

    python benchmarks/sylber_segment.py [--minutes 60] [--corpus-minutes 60] [--reference-minutes 60]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np

from _timing import measure
from zoo.speech.sylber.segment import segment, segment_reference

FRAME_RATE = 50


def synthetic_features(n_frames: int, dim: int = 768, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Syllable runs (mean length ~12 frames) in words of 1-5 syllables, silences between words."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_frames, dim), dtype=dtype)
    direction = rng.standard_normal(dim)
    t = 0
    while t < n_frames:
        gap = int(rng.integers(3, 30))  # silence: small random vectors, norm ~0.3-1.6
        stop = min(n_frames, t + gap)
        noise = rng.standard_normal((stop - t, dim))
        out[t:stop] = noise / np.sqrt(dim) * rng.uniform(0.3, 1.6, size=(stop - t, 1))
        t = stop
        for _ in range(int(rng.integers(1, 6))):
            if t >= n_frames:
                break
            length = int(rng.geometric(1 / 12)) + 2
            stop = min(n_frames, t + length)
            # neighbouring syllables share part of their direction (cosine ~0.3-0.8)
            direction = rng.uniform(0.3, 0.9) * direction / np.linalg.norm(direction) + rng.standard_normal(dim) / np.sqrt(dim)
            unit = direction / np.linalg.norm(direction)
            drift = rng.standard_normal(dim) / np.sqrt(dim) * 0.3
            steps = np.linspace(-0.5, 0.5, stop - t)[:, None]
            frames = unit + steps * drift + rng.standard_normal((stop - t, dim)) / np.sqrt(dim) * rng.uniform(0.2, 0.5)
            frames *= rng.uniform(3.0, 8.0) / np.linalg.norm(frames, axis=1, keepdims=True)
            out[t:stop] = frames
            t = stop
    return out


def official_segment_utils() -> str:
    """Path of the installed official segment_utils.py (found without importing the package), or ''."""
    if os.environ.get("SYLBER_SEGMENT_UTILS"):
        return os.environ["SYLBER_SEGMENT_UTILS"]
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        return str(distribution("sylber").locate_file("sylber/utils/segment_utils.py"))
    except PackageNotFoundError:
        return ""


def load_official_get_segment():
    for path in (official_segment_utils(),):
        if path and Path(path).is_file():
            spec = importlib.util.spec_from_file_location("_sylber_official_segment_utils", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.get_segment, path
    return None, None


def corpus_lengths(total_seconds: float, seed: int = 1) -> list[int]:
    """Utterance lengths in frames, uniform in 5-15 s, adding up to ``total_seconds`` (the last one cut)."""
    rng = np.random.default_rng(seed)
    lengths, left = [], int(total_seconds * FRAME_RATE)
    while left > 0:
        n = min(left, int(rng.uniform(5, 15) * FRAME_RATE))
        lengths.append(n)
        left -= n
    return lengths


def corpus_case(minutes: float, dim: int, thresholds, workers) -> None:
    official, path = load_official_get_segment()
    lengths = corpus_lengths(minutes * 60)
    corpus = [synthetic_features(n, dim, seed=100 + i) for i, n in enumerate(lengths)]
    print(f"\ncorpus: {len(corpus)} utterances of 5-15 s ({sum(lengths) / FRAME_RATE / 60:g} min at 50 Hz) x {dim}")
    segment(corpus[:2], *thresholds)  # threads and the compiled kernel ready outside the timing
    run = measure(lambda: segment(corpus, *thresholds), 3, warmup=False)
    t_fast, fast, cpu_fast = run.seconds, run.result, run.cpu_seconds
    count = sum(len(s) for s in fast)
    print(f"segment(list), {workers or 'all'} threads: {t_fast:8.3f} s  -> {count} segments "
          f"({count / (sum(lengths) / FRAME_RATE):.2f} per second; CPU {cpu_fast:.2f} s)")
    run = measure(lambda: [segment(x, *thresholds) for x in corpus], 3, warmup=False)
    t_one, one, cpu_one = run.seconds, run.result, run.cpu_seconds
    print(f"segment per utterance, 1 thread: {t_one:8.3f} s  (CPU {cpu_one:.2f} s; identical: "
          f"{all(np.array_equal(a, b) for a, b in zip(one, fast))})")
    if official is None:
        print("official get_segment: not installed (pip install --no-deps sylber==0.1.4); corpus ratio skipped")
        return
    run = measure(lambda: [official(x, *thresholds) for x in corpus], 1, warmup=False)
    t_off, off, cpu_off = run.seconds, run.result, run.cpu_seconds
    same = all(np.array_equal(np.asarray(o, dtype=np.int64).reshape(-1, 2), f) for o, f in zip(off, fast))
    print(f"official get_segment per utterance: {t_off:8.3f} s  (CPU {cpu_off:.2f} s)  [{path}]")
    print(f"  identical boundaries on every utterance: {same}")
    print(f"  speed-up of segment(list) over the official code: {t_off / t_fast:.1f}x wall time "
          f"(CPU time: {cpu_off / cpu_fast:.1f}x; over segment one at a time: {t_one / t_fast:.2f}x wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="one sequence of this length (0 = skip)")
    parser.add_argument("--corpus-minutes", type=float, default=60.0, help="a corpus of 5-15 s utterances (0 = skip)")
    parser.add_argument("--workers", type=int, default=None, help="threads for the corpus (default: every core)")
    parser.add_argument("--reference-minutes", type=float, default=60.0,
                        help="prefix timed for the slow contestants (scaled linearly to the full length)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--norm-threshold", type=float, default=2.6)
    parser.add_argument("--merge-threshold", type=float, default=0.8)
    args = parser.parse_args()

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    thresholds = (args.norm_threshold, args.merge_threshold)
    if args.corpus_minutes > 0:
        corpus_case(args.corpus_minutes, args.dim, thresholds, args.workers)
    if args.minutes > 0:
        sequence_case(args)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def sequence_case(args) -> None:
    n_frames = int(args.minutes * 60 * FRAME_RATE)
    n_ref = min(n_frames, int(args.reference_minutes * 60 * FRAME_RATE))
    states = synthetic_features(n_frames, args.dim)
    thresholds = (args.norm_threshold, args.merge_threshold)
    print(f"\none sequence: {n_frames} frames ({args.minutes:g} min at 50 Hz) x {args.dim}, {states.dtype}")

    segment(states[:500], *thresholds)  # compile (or load the numba cache) outside the timing
    run = measure(lambda: segment(states, *thresholds), 3, warmup=False)
    t_fast, fast, cpu_fast = run.seconds, run.result, run.cpu_seconds
    print(f"segment (fast):       {t_fast:8.3f} s  -> {len(fast)} segments "
          f"({len(fast) / (n_frames / FRAME_RATE):.2f} per second)")

    scale = n_frames / n_ref
    note = "" if n_ref == n_frames else f"  (timed on the first {n_ref} frames, scaled x{scale:.2f})"
    prefix = states[:n_ref]
    run = measure(lambda: segment_reference(prefix, *thresholds), 2, warmup=False)
    t_ref, ref, cpu_ref = run.seconds, run.result, run.cpu_seconds
    fast_prefix = fast if n_ref == n_frames else segment(prefix, *thresholds)
    same = np.array_equal(ref, fast_prefix)
    print(f"segment_reference:    {t_ref * scale:8.3f} s{note}")
    print(f"  identical boundaries to segment: {same}")
    print(f"  speed-up of segment over the reference: {t_ref * scale / t_fast:.1f}x "
          f"(CPU time: {cpu_ref * scale / cpu_fast:.1f}x; wall time varies on a shared machine)")

    official, path = load_official_get_segment()
    if official is None:
        print("official get_segment: not available (set SYLBER_SEGMENT_UTILS); skipped")
        return
    run = measure(lambda: official(prefix, *thresholds), 2, warmup=False)
    t_off, off = run.seconds, run.result
    off = np.asarray(off, dtype=np.int64).reshape(-1, 2)
    print(f"official get_segment: {t_off * scale:8.3f} s{note}  [{path}]")
    print(f"  identical boundaries to segment: {np.array_equal(off, fast_prefix)}")
    print(f"  speed-up of segment over the official code: {t_off * scale / t_fast:.1f}x")


if __name__ == "__main__":
    main()
