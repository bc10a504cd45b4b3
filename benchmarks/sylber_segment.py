"""Sylber segmentation speed: fast `segment` vs the per-frame reference (speech.md §1.5).

One hour of synthetic 50 Hz, 768-d float32 features (180,000 frames, the dtype the official
Segmenter passes): syllable-like runs of near-constant vectors (norm 3-8) with per-frame
noise and drift, neighbouring syllables partly correlated, and silent gaps (norm < 2)
between words. Prints the timings, the speed ratio and whether the boundaries agree.

If the official ``sylber/utils/segment_utils.py`` is available (set SYLBER_SEGMENT_UTILS to
its path, or have ``pip download sylber==0.1.4 --no-deps`` unpacked under
/tmp/sylber_official), it is loaded by path (never ``import sylber``) and timed too.

    python benchmarks/sylber_segment.py [--minutes 60] [--reference-minutes 60] [--dim 768]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np

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


def load_official_get_segment():
    candidates = [os.environ.get("SYLBER_SEGMENT_UTILS", ""),
                  "/tmp/sylber_official/sylber/utils/segment_utils.py"]
    for path in candidates:
        if path and Path(path).is_file():
            spec = importlib.util.spec_from_file_location("_sylber_official_segment_utils", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.get_segment, path
    return None, None


def timed(fn, *args, repeat: int = 1):
    """Best wall time over ``repeat`` runs (the CPU time of that run is kept in ``timed.cpu``)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn(*args)
        if time.perf_counter() - start < best:
            best, timed.cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="audio length segmented by `segment`")
    parser.add_argument("--reference-minutes", type=float, default=60.0,
                        help="prefix timed for the slow contestants (scaled linearly to the full length)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--norm-threshold", type=float, default=2.6)
    parser.add_argument("--merge-threshold", type=float, default=0.8)
    args = parser.parse_args()

    n_frames = int(args.minutes * 60 * FRAME_RATE)
    n_ref = min(n_frames, int(args.reference_minutes * 60 * FRAME_RATE))
    states = synthetic_features(n_frames, args.dim)
    thresholds = (args.norm_threshold, args.merge_threshold)
    print(f"features: {n_frames} frames ({args.minutes:g} min at 50 Hz) x {args.dim}, {states.dtype}")

    segment(states[:500], *thresholds)  # compile (or load the numba cache) outside the timing
    t_fast, fast = timed(segment, states, *thresholds, repeat=3)
    cpu_fast = timed.cpu
    print(f"segment (fast):       {t_fast:8.3f} s  -> {len(fast)} segments "
          f"({len(fast) / (n_frames / FRAME_RATE):.2f} per second)")

    scale = n_frames / n_ref
    note = "" if n_ref == n_frames else f"  (timed on the first {n_ref} frames, scaled x{scale:.2f})"
    prefix = states[:n_ref]
    t_ref, ref = timed(segment_reference, prefix, *thresholds, repeat=2)
    cpu_ref = timed.cpu
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
    t_off, off = timed(official, prefix, *thresholds, repeat=2)
    off = np.asarray(off, dtype=np.int64).reshape(-1, 2)
    print(f"official get_segment: {t_off * scale:8.3f} s{note}  [{path}]")
    print(f"  identical boundaries to segment: {np.array_equal(off, fast_prefix)}")
    print(f"  speed-up of segment over the official code: {t_off * scale / t_fast:.1f}x")


if __name__ == "__main__":
    main()
