"""Sylber's greedy linear-time syllable segmentation and its adaptive norm threshold.

Cho et al., *Sylber* (ICLR 2025, arXiv 2410.07168): the paper's greedy, linear-time
segmentation and the adaptive norm threshold of its second training stage. The official code
is ``get_segment`` and ``Thresholder`` in ``Berkeley-Speech-Group/sylber:sylber/utils/segment_utils.py``.

The algorithm, per utterance of L frames (features h_t at 50 Hz): a frame is speech when
``sqrt(|h_t|^2 + 1e-8) >= norm_threshold``; a greedy pass grows a segment while the cosine
between the frame and the segment's running mean is at least ``merge_threshold`` and opens a
new one otherwise (the running count is *not* reset at such a break: an official quirk kept
here); then each similarity-made boundary is revisited in order: two neighbours whose means
have cosine >= ``merge_threshold`` are merged, otherwise the boundary moves to the cut inside
a window around it that maximises the summed cosine of the frames to their side's mean.

Two implementations give the same segments on every input:

* :func:`segment_reference`: a plain per-frame loop that reads like the algorithm above,
  written with the same numpy expressions as the official ``get_segment``, so its floats
  (and therefore every threshold comparison and tie) are those of the official code;
* :func:`segment`: the fast version (one numba pass over the frames, 8-wide vector dot
  products; ``benchmarks/sylber_segment.py`` measures it against the official
  ``get_segment``); a list of utterances is segmented in parallel threads (the kernel
  releases the GIL). It reproduces numpy's summation order
  (pairwise sums over a row, whose 8 accumulators are the lanes of one vector;
  sequential sums down a column) and the scalar-vs-array ``** 0.5`` distinction, so its
  floats are the reference's floats bit for bit.

Precision follows the official code: it computes in the dtype of the features it is
given, and both the ``Segmenter`` and the trainer hand it ``float32`` numpy arrays
(``hidden_states.cpu().numpy()``). So float32 input is processed in float32 and float64
input in float64; pass ``dtype=np.float64`` to force double precision. Thresholds are
Python floats; under numpy>=2 (NEP 50) a float32 value is compared with
``float32(threshold)``, and so is it here.

Segments are ``[start, end)`` frame indices at 50 Hz, shape ``(N, 2)``, int64.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from zoo.errors import ZooError

try:  # numba comes with librosa; without it `segment` falls back to the reference loop.
    import numba
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only on installs without numba
    numba = None
    HAVE_NUMBA = False

__all__ = [
    "FRAME_RATE",
    "SegmentInputError",
    "ThresholdError",
    "Thresholder",
    "frame_norms",
    "segment",
    "segment_means",
    "segment_reference",
    "segments_to_seconds",
]

FRAME_RATE = 50  # HuBERT frames per second (hop 320 samples at 16 kHz)
_EPS = 1e-8  # added to squared norms before the square root, as the official cossim/norms


class SegmentInputError(ZooError, ValueError):
    """Features that cannot be segmented (wrong shape or dtype)."""


class ThresholdError(ZooError, ArithmeticError):
    """The signal and noise Gaussians have no intersection to use as a threshold."""


# --------------------------------------------------------------------------- inputs


def _prepare_states(states, dtype=None) -> np.ndarray:
    """(L, d) features as a C-contiguous float32/float64 numpy array.

    Torch tensors become numpy arrays of the same dtype, as the official callers do
    with ``.cpu().numpy()``; half and bfloat16 are widened to float32.
    """
    if isinstance(states, torch.Tensor):
        tensor = states.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        array = tensor.numpy()
    else:
        array = np.asarray(states)
    if array.ndim != 2:
        raise SegmentInputError(
            f"Expected features of shape (frames, dim), got shape {tuple(array.shape)}. "
            "Segment one utterance at a time: pass hidden_states[b] for a batch."
        )
    if dtype is None:
        if array.dtype in (np.float32, np.float64):
            dtype = array.dtype
        elif array.dtype == np.float16:
            dtype = np.float32
        elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
            dtype = np.float64
        else:
            raise SegmentInputError(
                f"Features of dtype {array.dtype} cannot be segmented; pass float32 or float64."
            )
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise SegmentInputError(f"dtype must be float32 or float64, got {dtype}.")
    if array.shape[1] == 0:
        raise SegmentInputError("Features have zero dimensions per frame; pass (frames, dim) with dim >= 1.")
    return np.ascontiguousarray(array, dtype=dtype)


def _speech_mask(norms, norm_threshold: float, length: int) -> np.ndarray:
    norms = norms.detach().cpu().numpy() if isinstance(norms, torch.Tensor) else np.asarray(norms)
    if norms.shape != (length,):
        raise SegmentInputError(
            f"norms must have one value per frame ({length}), got shape {tuple(norms.shape)}."
        )
    return norms >= norm_threshold


def _empty_segments() -> np.ndarray:
    return np.zeros((0, 2), dtype=np.int64)


# ------------------------------------------------------------------------ reference


def _cosine(a: np.ndarray, b: np.ndarray):
    """The official ``cossim`` (``Berkeley-Speech-Group/sylber:sylber/utils/segment_utils.py``), with its numpy semantics.

    For 1-D rows the norms are numpy scalars and ``** 0.5`` calls libm ``pow``; for a
    stack of rows ``** 0.5`` is numpy's array square root. The two differ in the last
    ulp now and then, and the fast kernels mirror each case.
    """
    dot = (a * b).sum(-1)
    return dot / ((a * a).sum(-1) + _EPS) ** 0.5 / ((b * b).sum(-1) + _EPS) ** 0.5


def segment_reference(
    states,
    norm_threshold: float = 2.6,
    merge_threshold: float = 0.8,
    *,
    norms=None,
    dtype=None,
) -> np.ndarray:
    """Greedy segmentation, one frame at a time (the official ``get_segment``, line by line).

    Readable reference for tests and benchmarks; use :func:`segment` for real work.
    ``norms`` (optional, one per frame) replaces the frame norms for the speech mask
    only, like the official ``get_segment(..., norms=...)``.
    """
    x = _prepare_states(states, dtype)
    norm_threshold, merge_threshold = float(norm_threshold), float(merge_threshold)
    length = x.shape[0]
    if norms is None:
        norms = ((x * x).sum(-1) + _EPS) ** 0.5
    is_speech = _speech_mask(norms, norm_threshold, length)

    segments: list[list[int]] = []
    similarity_breaks: list[tuple[int, int]] = []  # (boundary frame, index of the segment it closes)
    start, count, running_mean = -1, 0, None
    for i in range(length):
        if not is_speech[i]:
            if start > -1:
                segments.append([start, i])
            start, count = -1, 0
        elif count == 0:
            running_mean, count, start = x[i], 1, i
        elif _cosine(running_mean, x[i]) >= merge_threshold:
            running_mean = (running_mean * count + x[i]) / (count + 1)
            count += 1
        else:
            running_mean = x[i]
            count += 1  # the official seg_cnt is not reset to 1 here (quirk kept)
            segments.append([start, i])
            similarity_breaks.append((i, len(segments) - 1))
            start = i
    if start > -1:
        segments.append([start, length])

    merged = set()
    for boundary, k in similarity_breaks:
        if k >= len(segments) - 1:
            continue
        (a_start, a_end), (b_start, b_end) = segments[k], segments[k + 1]
        mean_a, mean_b = x[a_start:a_end].mean(0), x[b_start:b_end].mean(0)
        if _cosine(mean_a, mean_b) >= merge_threshold:
            segments[k + 1] = [a_start, b_end]  # later boundaries see the merged segment
            merged.add(k)
            continue
        lo = max(a_start, boundary - max(1, (a_end - a_start) // 2))
        hi = min(b_end, boundary + max(1, (b_end - b_start) // 2))
        sim_a = _cosine(x[lo:hi], mean_a[None, :])
        sim_b = _cosine(x[lo:hi], mean_b[None, :])
        sweep = [sim_a[:j].sum() + sim_b[j:].sum() for j in range(hi - lo)]
        cut = lo + int(np.argmax(sweep))
        segments[k] = [a_start, cut]
        segments[k + 1] = [cut, b_end]

    kept = [seg for k, seg in enumerate(segments) if k not in merged]
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


# ----------------------------------------------------------------------------- fast

if HAVE_NUMBA:
    _jit = numba.njit(cache=True, nogil=True)

    # numpy sums a contiguous run with 8 interleaved accumulators when it has at most 128
    # elements, and otherwise splits it in two (the first part a multiple of 8) and adds
    # the two sums. The kernels below replay that order exactly. The split is driven by an
    # explicit stack (`frames`, `values`: scratch buffers) because numba's on-disk cache
    # cannot hold recursive functions.
    _STACK = 128  # > depth of the split tree for any array that fits in memory

    @intrinsic
    def _lanes_dot(typingctx, a, b, lo, n_vectors):
        """sum(a[lo:lo+8*n_vectors] * b[...]) in numpy's 8-accumulator order, n_vectors >= 1.

        Accumulator k of numpy's unrolled loop sums the products at offsets k, k+8, ...,
        so the 8 accumulators are the lanes of one 8-wide vector: multiply, then add, lane
        by lane (no fused multiply-add), and finish with numpy's
        ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)). LLVM will not vectorise the scalar form
        itself without fast-math, hence the hand-written IR.
        """
        if not (isinstance(a, types.Array) and isinstance(b, types.Array) and a.ndim == b.ndim == 1
                and a.layout == "C" and b.layout == "C" and a.dtype == b.dtype
                and isinstance(a.dtype, types.Float)):
            return None
        signature = a.dtype(a, b, lo, n_vectors)

        def codegen(context, builder, sig, args):
            a_value, b_value, lo_value, count = args
            lane_type = ir.VectorType(context.get_value_type(sig.args[0].dtype), 8)
            a_ptr = builder.gep(context.make_array(sig.args[0])(context, builder, a_value).data, [lo_value])
            b_ptr = builder.gep(context.make_array(sig.args[1])(context, builder, b_value).data, [lo_value])
            a_ptr = builder.bitcast(a_ptr, lane_type.as_pointer())
            b_ptr = builder.bitcast(b_ptr, lane_type.as_pointer())

            def products(index):
                a_lanes = builder.load(builder.gep(a_ptr, [index]), align=1)
                b_lanes = builder.load(builder.gep(b_ptr, [index]), align=1)
                return builder.fmul(a_lanes, b_lanes)

            accumulator = cgutils.alloca_once(builder, lane_type)
            builder.store(products(ir.Constant(count.type, 0)), accumulator)
            step = ir.Constant(count.type, 1)
            with cgutils.for_range_slice(builder, step, count, step) as (index, _):
                builder.store(builder.fadd(builder.load(accumulator), products(index)), accumulator)
            lanes = builder.load(accumulator)
            r = [builder.extract_element(lanes, ir.Constant(ir.IntType(32), k)) for k in range(8)]
            return builder.fadd(
                builder.fadd(builder.fadd(r[0], r[1]), builder.fadd(r[2], r[3])),
                builder.fadd(builder.fadd(r[4], r[5]), builder.fadd(r[6], r[7])),
            )

        return signature, codegen

    @intrinsic
    def _eight_leaf_dot(typingctx, a, b, leaf_vectors):
        """sum(a * b) over 8 leaves of 8*leaf_vectors elements each (768-d: 8 x 96,
        1024-d: 8 x 128), in numpy's order: each leaf as in :func:`_lanes_dot`, leaf
        sums added ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)). The 8 leaves are walked side by
        side so their additions form independent chains instead of one latency chain."""
        if not (isinstance(a, types.Array) and isinstance(b, types.Array) and a.ndim == b.ndim == 1
                and a.layout == "C" and b.layout == "C" and a.dtype == b.dtype
                and isinstance(a.dtype, types.Float)):
            return None
        signature = a.dtype(a, b, leaf_vectors)

        def codegen(context, builder, sig, args):
            a_value, b_value, count = args
            lane_type = ir.VectorType(context.get_value_type(sig.args[0].dtype), 8)
            a_ptr = builder.bitcast(context.make_array(sig.args[0])(context, builder, a_value).data,
                                    lane_type.as_pointer())
            b_ptr = builder.bitcast(context.make_array(sig.args[1])(context, builder, b_value).data,
                                    lane_type.as_pointer())

            def products(index):
                a_lanes = builder.load(builder.gep(a_ptr, [index]), align=1)
                b_lanes = builder.load(builder.gep(b_ptr, [index]), align=1)
                return builder.fmul(a_lanes, b_lanes)

            accumulators = [cgutils.alloca_once(builder, lane_type) for _ in range(8)]
            for leaf, accumulator in enumerate(accumulators):
                builder.store(products(builder.mul(count, ir.Constant(count.type, leaf))), accumulator)
            step = ir.Constant(count.type, 1)
            with cgutils.for_range_slice(builder, step, count, step) as (index, _):
                for leaf, accumulator in enumerate(accumulators):
                    offset = builder.add(builder.mul(count, ir.Constant(count.type, leaf)), index)
                    builder.store(builder.fadd(builder.load(accumulator), products(offset)), accumulator)

            def pair_tree(r):
                return builder.fadd(builder.fadd(builder.fadd(r[0], r[1]), builder.fadd(r[2], r[3])),
                                    builder.fadd(builder.fadd(r[4], r[5]), builder.fadd(r[6], r[7])))

            sums = []
            for accumulator in accumulators:
                lanes = builder.load(accumulator)
                sums.append(pair_tree([builder.extract_element(lanes, ir.Constant(ir.IntType(32), k))
                                       for k in range(8)]))
            return pair_tree(sums)

        return signature, codegen

    @_jit
    def _block_dot(a, b, lo, n):
        """sum(a[lo:lo+n] * b[lo:lo+n]) for 1 <= n <= 128 (products rounded first, as in numpy)."""
        if n < 8:
            total = a[lo] * b[lo]
            for i in range(lo + 1, lo + n):
                total += a[i] * b[i]
            return total
        total = _lanes_dot(a, b, lo, n // 8)
        for i in range(lo + n - n % 8, lo + n):
            total += a[i] * b[i]
        return total

    @_jit
    def _block_sum(a, lo, n):
        """sum(a[lo:lo+n]) for 1 <= n <= 128, in numpy's order."""
        if n < 8:
            total = a[lo]
            for i in range(lo + 1, lo + n):
                total += a[i]
            return total
        r0 = a[lo]
        r1 = a[lo + 1]
        r2 = a[lo + 2]
        r3 = a[lo + 3]
        r4 = a[lo + 4]
        r5 = a[lo + 5]
        r6 = a[lo + 6]
        r7 = a[lo + 7]
        i = lo + 8
        stop = lo + n - n % 8
        while i < stop:
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
            i += 8
        total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < lo + n:
            total += a[i]
            i += 1
        return total

    @_jit
    def _pairwise(a, b, lo, n, with_b, frames, values):
        """numpy's pairwise sum of a[lo:lo+n] (times b[lo:lo+n] if with_b), n >= 1.

        Post-order walk of the split tree: frames[0/1/2, t] = start, length, stage.
        """
        if n <= 128:
            return _block_dot(a, b, lo, n) if with_b else _block_sum(a, lo, n)
        top = 0
        n_values = 0
        frames[0, 0] = lo
        frames[1, 0] = n
        frames[2, 0] = 0
        while top >= 0:
            start = frames[0, top]
            length = frames[1, top]
            if length <= 128:
                values[n_values] = _block_dot(a, b, start, length) if with_b else _block_sum(a, start, length)
                n_values += 1
                top -= 1
                continue
            first = length // 2
            first -= first % 8
            stage = frames[2, top]
            if stage == 2:
                values[n_values - 2] = values[n_values - 2] + values[n_values - 1]
                n_values -= 1
                top -= 1
                continue
            frames[2, top] = stage + 1
            top += 1
            frames[0, top] = start if stage == 0 else start + first
            frames[1, top] = first if stage == 0 else length - first
            frames[2, top] = 0
        return values[0]

    @_jit
    def _row_dot(a, b, dim, leaf, frames, values):
        """sum(a[:dim] * b[:dim]) in numpy's order; ``leaf`` > 0 when the split tree of
        ``dim`` is perfect (e.g. 768 -> 8 runs of 96): then the runs are summed and added
        pairwise level by level, which is the same tree without the stack walk."""
        if leaf == 0:
            return _pairwise(a, b, 0, dim, True, frames, values)
        n = dim // leaf
        if n == 8 and leaf % 8 == 0:  # 768-d (and 1024-d) HuBERT features
            return _eight_leaf_dot(a, b, leaf // 8)
        if n == 8:  # scalars keep the partial sums in registers
            s0 = _block_dot(a, b, 0, leaf)
            s1 = _block_dot(a, b, leaf, leaf)
            s2 = _block_dot(a, b, 2 * leaf, leaf)
            s3 = _block_dot(a, b, 3 * leaf, leaf)
            s4 = _block_dot(a, b, 4 * leaf, leaf)
            s5 = _block_dot(a, b, 5 * leaf, leaf)
            s6 = _block_dot(a, b, 6 * leaf, leaf)
            s7 = _block_dot(a, b, 7 * leaf, leaf)
            return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
        for j in range(n):
            values[j] = _block_dot(a, b, j * leaf, leaf)
        while n > 1:
            n //= 2
            for j in range(n):
                values[j] = values[2 * j] + values[2 * j + 1]
        return values[0]

    @_jit
    def _column_mean(x, start, stop, one, out):
        """x[start:stop].mean(0): numpy adds the rows in order, then divides by the count."""
        out[:] = x[start]
        count = one
        for r in range(start + 1, stop):
            row = x[r]
            for c in range(x.shape[1]):
                out[c] += row[c]
            count += one
        for c in range(x.shape[1]):
            out[c] /= count

    @_jit
    def _refine_break(x, squared, eps, half, one, merge_threshold, unit_roundoff,
                      segments, k, boundary, m, merged, merge_similarity,
                      mean_a, mean_b, sim_a, sim_b, score, leaf, frames, values):
        """Second pass of the official ``get_segment`` for one similarity-made boundary (break ``m``,
        closing segment ``k``): merge segments k and k+1 or move the boundary between them.

        The sweep argmax uses O(w) prefix/suffix sums in float64 to find candidates,
        then re-scores every candidate that could be (or tie with) the official
        maximum with numpy's pairwise sums in the compute dtype, so ties resolve as in
        numpy's first-maximum argmax.
        """
        dim = x.shape[1]
        a_start = segments[k, 0]
        a_end = segments[k, 1]
        b_start = segments[k + 1, 0]
        b_end = segments[k + 1, 1]
        _column_mean(x, a_start, a_end, one, mean_a)
        _column_mean(x, b_start, b_end, one, mean_b)
        sq_a = _row_dot(mean_a, mean_a, dim, leaf, frames, values)
        sq_b = _row_dot(mean_b, mean_b, dim, leaf, frames, values)
        sim = _row_dot(mean_a, mean_b, dim, leaf, frames, values) / (sq_a + eps) ** half / (sq_b + eps) ** half
        merge_similarity[m] = sim
        if sim >= merge_threshold:
            segments[k + 1, 0] = a_start
            merged[k] = True
            return
        lo = max(a_start, boundary - max(1, (a_end - a_start) // 2))
        hi = min(b_end, boundary + max(1, (b_end - b_start) // 2))
        width = hi - lo
        # centre norms come from a (1, d) array in the official code, and the frame
        # norms from an (L, d) one: array sqrt, not the scalar pow
        norm_a = np.sqrt(sq_a + eps)
        norm_b = np.sqrt(sq_b + eps)
        for j in range(width):
            row = x[lo + j]
            row_norm = np.sqrt(squared[lo + j] + eps)
            sim_a[j] = _row_dot(row, mean_a, dim, leaf, frames, values) / row_norm / norm_a
            sim_b[j] = _row_dot(row, mean_b, dim, leaf, frames, values) / row_norm / norm_b
        # score[j] = sum(sim_a[:j]) + sum(sim_b[j:]), via prefix and suffix sums
        suffix = 0.0
        for j in range(width - 1, -1, -1):
            suffix += sim_b[j]
            score[j] = suffix
        prefix = 0.0
        best = -np.inf
        for j in range(width):
            score[j] += prefix
            prefix += sim_a[j]
            if score[j] > best:
                best = score[j]
        cut = -1
        for j in range(width):  # numpy's argmax returns the first NaN, if any
            if score[j] != score[j]:
                cut = j
                break
        # both sums of a score are off by at most ~width^2 * u (|cos| <= 1)
        slack = 2.5 * width * width * unit_roundoff + 1e-300
        best_exact = one
        for j in range(width if cut < 0 else 0):
            if not score[j] >= best - 2.0 * slack:
                continue
            exact = _pairwise(sim_b, sim_b, j, width - j, False, frames, values)
            if j > 0:
                exact = _pairwise(sim_a, sim_a, 0, j, False, frames, values) + exact
            if cut < 0 or exact > best_exact:
                cut = j
                best_exact = exact
        segments[k, 1] = lo + cut
        segments[k + 1, 0] = lo + cut

    @_jit
    def _segment_kernel(x, is_speech, mask_from_norms, norm_threshold, merge_threshold,
                        eps, half, one, unit_roundoff, squared, segments, breaks,
                        similarity, merged, merge_similarity, leaf, frames, values):
        """The official ``get_segment`` in one pass over the frames; returns (n_segments, n_breaks).

        Each frame's squared norm (and, unless the caller gave norms, its speech flag) is
        computed when the greedy pass reaches it, while the row is in cache. A boundary's
        refinement only reads segments k and k+1 and the edits of earlier boundaries, so
        it runs as soon as segment k+1 is closed (in boundary order, as the official
        second loop), on rows still in cache. Results equal the two-pass original.

        ``eps``, ``half`` and ``one`` carry the compute dtype so that no literal promotes
        float32 arithmetic to float64; ``half`` is a run-time value so the compiler keeps
        libm ``pow`` (the official scalar ``** .5``) instead of substituting ``sqrt``.
        """
        length, dim = x.shape
        running = np.empty(dim, dtype=x.dtype)
        mean_a = np.empty(dim, dtype=x.dtype)
        mean_b = np.empty(dim, dtype=x.dtype)
        sim_a = np.empty(length, dtype=x.dtype)
        sim_b = np.empty(length, dtype=x.dtype)
        score = np.empty(length + 1, dtype=np.float64)
        running_sq = eps
        count = one  # numpy turns the int count into the compute dtype at each use
        n_seg = 0
        n_break = 0
        refined = 0  # breaks before this one have been refined
        start = -1
        open_segment = False
        for i in range(length + 1):
            closed = False
            if i == length:
                if start > -1:
                    segments[n_seg, 0] = start
                    segments[n_seg, 1] = length
                    n_seg += 1
                closed = True
            else:
                row = x[i]
                row_sq = _row_dot(row, row, dim, leaf, frames, values)
                squared[i] = row_sq
                if mask_from_norms:
                    is_speech[i] = np.sqrt(row_sq + eps) >= norm_threshold
                if not is_speech[i]:
                    if start > -1:
                        segments[n_seg, 0] = start
                        segments[n_seg, 1] = i
                        n_seg += 1
                        closed = True
                    start = -1
                    open_segment = False
                elif not open_segment:
                    running[:] = row
                    running_sq = row_sq
                    count = one
                    start = i
                    open_segment = True
                else:
                    dot = _row_dot(running, row, dim, leaf, frames, values)
                    sim = dot / (running_sq + eps) ** half / (row_sq + eps) ** half
                    similarity[i] = sim
                    if sim >= merge_threshold:
                        new_count = count + one
                        for c in range(dim):
                            running[c] = (running[c] * count + row[c]) / new_count
                        running_sq = _row_dot(running, running, dim, leaf, frames, values)
                        count = new_count
                    else:
                        running[:] = row
                        running_sq = row_sq
                        count = count + one  # official seg_cnt: not reset to 1 (quirk kept)
                        segments[n_seg, 0] = start
                        segments[n_seg, 1] = i
                        breaks[n_break, 0] = i
                        breaks[n_break, 1] = n_seg
                        n_seg += 1
                        n_break += 1
                        start = i
                        closed = True
            if not closed:
                continue
            # official second loop: `if k >= len(segments) - 1: continue`; a break's
            # segment k+1 always follows it, so each break is refined once k+1 is closed
            while refined < n_break and breaks[refined, 1] < n_seg - 1:
                _refine_break(x, squared, eps, half, one, merge_threshold, unit_roundoff,
                              segments, breaks[refined, 1], breaks[refined, 0], refined,
                              merged, merge_similarity, mean_a, mean_b, sim_a, sim_b, score,
                              leaf, frames, values)
                refined += 1
        return n_seg, n_break


def _perfect_leaf(dim: int) -> int:
    """Run length if numpy's pairwise split of ``dim`` is a perfect binary tree, else 0."""
    if dim <= 128:
        return 0
    length = dim
    while length > 128:
        first = length // 2 - (length // 2) % 8
        if 2 * first != length:
            return 0
        length = first
    return length


def _segment_fast(x: np.ndarray, norm_threshold: float, merge_threshold: float, norms, trace=None):
    ftype = x.dtype.type
    length = x.shape[0]
    squared = np.empty(length, dtype=x.dtype)
    if norms is None:  # official frame norms ((x*x).sum(-1) + eps) ** 0.5, computed in the kernel
        is_speech = np.empty(length, dtype=np.bool_)
    else:
        is_speech = _speech_mask(norms, norm_threshold, length)
    frames = np.empty((3, _STACK), dtype=np.int64)
    values = np.empty(_STACK, dtype=x.dtype)
    segments = np.empty((length + 1, 2), dtype=np.int64)
    breaks = np.empty((length + 1, 2), dtype=np.int64)
    similarity = np.full(length, np.nan, dtype=x.dtype)
    merged = np.zeros(length + 1, dtype=np.bool_)
    merge_similarity = np.full(length + 1, np.nan, dtype=x.dtype)
    n_seg, n_break = _segment_kernel(
        x, is_speech, norms is None, ftype(norm_threshold), ftype(merge_threshold),
        ftype(_EPS), ftype(0.5), ftype(1), float(np.finfo(x.dtype).eps), squared,
        segments, breaks, similarity, merged, merge_similarity,
        _perfect_leaf(x.shape[1]), frames, values,
    )
    if trace is not None:
        trace.update(similarity=similarity, merge_similarity=merge_similarity[:n_break],
                     breaks=breaks[:n_break].copy())
    return segments[:n_seg][~merged[:n_seg]].copy()


def segment(
    states,
    norm_threshold: float = 2.6,
    merge_threshold: float = 0.8,
    *,
    norms=None,
    dtype=None,
    workers: int | None = None,
):
    """Syllable segments of one utterance's features, or of every utterance of a corpus.

    Args:
        states: ``(L, d)`` frame features at 50 Hz (numpy array or torch tensor), or a list
            (or tuple) of such arrays, one per utterance. A list is always a corpus: to
            segment one utterance held as nested Python lists, pass ``np.asarray(...)``.
        norm_threshold: frames whose feature norm ``sqrt(|h|^2 + 1e-8)`` is below it are
            silence (2.6 at inference; the stage-2 trainer uses :meth:`Thresholder.threshold`).
        merge_threshold: cosine similarity (in [-1, 1]) a frame needs with the running mean
            to stay in the current segment (0.8).
        norms: optional per-frame norms for the speech mask (defaults to the feature norms);
            for a corpus, a list with one array (or None) per utterance.
        dtype: compute precision; default is the features' dtype, as in the official code.
        workers: threads for a corpus (default: every core this process may use). The
            kernel releases the GIL, so utterances run in parallel; the segments are those
            of segmenting each utterance alone.

    Returns:
        int64 array ``(N, 2)`` of ``[start, end)`` frame indices (``(0, 2)`` when no frame is
        speech), or a list of them in the corpus's order.

    Raises:
        SegmentInputError: features that are not ``(frames, dim)`` with dim >= 1, or a
            dtype that cannot be segmented; norms of the wrong length.
    """
    if isinstance(states, (list, tuple)):
        return _segment_corpus(list(states), norm_threshold, merge_threshold, norms, dtype, workers)
    x = _prepare_states(states, dtype)
    if not HAVE_NUMBA:  # pragma: no cover
        return segment_reference(x, norm_threshold, merge_threshold, norms=norms)
    if x.shape[0] == 0:
        return _empty_segments()
    return _segment_fast(x, float(norm_threshold), float(merge_threshold), norms)


def _workers(requested: int | None) -> int:
    if requested is not None:
        if int(requested) < 1:
            raise SegmentInputError(f"workers must be >= 1, got {requested}.")
        return int(requested)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _segment_corpus(corpus: list, norm_threshold, merge_threshold, norms, dtype, workers) -> list[np.ndarray]:
    if norms is None:
        norms = [None] * len(corpus)
    elif not isinstance(norms, (list, tuple)) or len(norms) != len(corpus):
        raise SegmentInputError(f"For a corpus of {len(corpus)} utterances, norms must be a list of "
                                f"{len(corpus)} arrays (or None).")
    for index, item in enumerate(corpus):
        if isinstance(item, (list, tuple)):
            raise SegmentInputError(f"Utterance {index} of the corpus is a {type(item).__name__}; give each "
                                    "utterance as a (frames, dim) numpy array or tensor.")

    def one(index: int) -> np.ndarray:
        return segment(corpus[index], norm_threshold, merge_threshold, norms=norms[index], dtype=dtype)

    count = min(_workers(workers), len(corpus))
    if count <= 1:
        return [one(index) for index in range(len(corpus))]
    from concurrent.futures import ThreadPoolExecutor

    # Longest first, so one long utterance does not finish alone at the end.
    order = sorted(range(len(corpus)), key=lambda i: -int(np.shape(corpus[i])[0]) if np.ndim(corpus[i]) else 0)
    results: list = [None] * len(corpus)
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="sylber-segment") as pool:
        for index, found in zip(order, pool.map(one, order)):
            results[index] = found
    return results


def segments_to_seconds(segments, frame_rate: float = FRAME_RATE) -> np.ndarray:
    """Frame-index segments ``(N, 2)`` -> seconds (float64), as the official ``in_second=True`` (index / 50)."""
    return np.asarray(segments, dtype=np.float64).reshape(-1, 2) / frame_rate


def segment_means(states, segments):
    """Mean feature of each segment, ``(N, d)``: the official ``segment_features``.

    The one segment-mean of the zoo (the model's results and the trainer's targets use it).
    ``states`` is ``(L, d)`` numpy or torch; the result has the same kind, device and
    floating dtype (float64 for integer input). Sums accumulate in float64 (float32 on
    devices without float64), so each mean is the float64 mean rounded to the output dtype.

    An empty segment ``[s, s)`` gives a NaN row, as the official
    ``states[s:e].mean(0)`` does: it has no frames, so no mean. The official refinement
    can produce one (a one-frame segment whose frame moves to the next segment); a zero
    row would look like a real feature (it is the training target of silence).

    Raises:
        SegmentInputError: states that are not 2-D, or segments outside ``0 <= s <= e <= L``.
    """
    as_numpy = not isinstance(states, torch.Tensor)
    x = torch.from_numpy(np.asarray(states)) if as_numpy else states
    if x.ndim != 2:
        raise SegmentInputError(f"Expected features of shape (frames, dim), got {tuple(x.shape)}.")
    frames = torch.as_tensor(np.asarray(segments.cpu() if isinstance(segments, torch.Tensor) else segments),
                             dtype=torch.long).reshape(-1, 2)
    if frames.numel() and (int(frames.min()) < 0 or int(frames.max()) > x.shape[0]
                           or bool((frames[:, 1] < frames[:, 0]).any())):
        raise SegmentInputError(f"Segments must satisfy 0 <= start <= end <= {x.shape[0]} (the number of frames).")
    out_dtype = x.dtype if x.dtype.is_floating_point else torch.float64
    if frames.shape[0] == 0:
        means = x.new_zeros((0, x.shape[1]), dtype=out_dtype)
    else:
        accumulate = torch.float32 if x.device.type == "mps" else torch.float64
        cumulative = torch.cat([x.new_zeros((1, x.shape[1]), dtype=accumulate), x.to(accumulate).cumsum(0)])
        starts, ends = frames[:, 0].to(x.device), frames[:, 1].to(x.device)
        counts = (ends - starts).to(accumulate)[:, None]
        means = ((cumulative[ends] - cumulative[starts]) / counts).to(out_dtype)  # 0 / 0 = NaN when empty
    return means.numpy() if as_numpy else means


def frame_norms(hidden_states: torch.Tensor) -> torch.Tensor:
    """Per-frame feature norm ``sqrt(sum(h^2) + 1e-8)`` as the official ``get_segment``: ``[..., D]`` -> ``[...]``.

    The quantity ``norm_threshold`` is compared with; same dtype as ``hidden_states``.
    """
    return ((hidden_states ** 2).sum(-1) + _EPS) ** 0.5


# ----------------------------------------------------------------------- thresholder


class Thresholder(torch.nn.Module):
    """Adaptive norm threshold for stage-2 training (the official ``Thresholder`` in
    ``Berkeley-Speech-Group/sylber:sylber/utils/segment_utils.py``).

    Keeps running Gaussians of the frame norms of "signal" (speech) and "noise"
    (silence) frames and places the threshold where the two densities cross, between
    the means. The statistics are buffers, so they travel in model.safetensors under the
    official names ``signal_mean``, ``signal_var``, ``noise_mean``, ``noise_var`` (shape (1,)).

    Official stage-2 use, each training step:

    * ``thr = thresholder.threshold()`` (before any update);
    * teacher norms ``n_t``: signal frames are ``n_t >= thr``; segment the teacher
      features with ``norm_threshold=thr``;
    * ``use_train_thrupdate: false``: ``update(n_t[n_t >= thr], n_t[n_t < thr])``;
    * ``use_train_thrupdate: true`` (the stage-2 config): ``update(n_t[n_t >= thr], None)``,
      then, after the student forward pass, ``update(None, n_s[n_t < thr])`` with the
      *student's* norms at the teacher's noise frames.

    :meth:`update_from_norms` does all of this in one call.
    """

    def __init__(
        self,
        signal_mean: float = 6.10,
        signal_var: float = 0.87,
        noise_mean: float = 0.34,
        noise_var: float = 0.34,
        decay: float = 0.9999,
        eta: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ThresholdError(f"decay must lie in [0, 1], got {decay}.")
        if eta <= 0:
            raise ThresholdError(f"eta (prior ratio) must be positive, got {eta}.")
        self.decay = float(decay)
        self.eta = float(eta)
        for name, value in (("signal_mean", signal_mean), ("signal_var", signal_var),
                            ("noise_mean", noise_mean), ("noise_var", noise_var)):
            self.register_buffer(name, torch.full((1,), float(value), dtype=torch.float32))

    def extra_repr(self) -> str:
        """``decay=..., eta=...`` in the module's repr."""
        return f"decay={self.decay}, eta={self.eta}"

    @torch.no_grad()
    def threshold(self) -> float:
        """Norm where the signal and noise Gaussians cross (η = 1 by default).

        Solves A t^2 + B t + C = 0 with the official coefficients, in the buffers'
        float32 like the official code; with equal variances the equation is linear and
        gives the midpoint of the means.
        """
        mu_s, mu_n = self.signal_mean, self.noise_mean
        sigma_s = (self.signal_var + 1e-8) ** 0.5
        sigma_n = (self.noise_var + 1e-8) ** 0.5
        var_s, var_n = sigma_s ** 2, sigma_n ** 2
        a = var_s - var_n
        b = -2 * var_s * mu_n + 2 * var_n * mu_s
        c = (var_s * mu_n ** 2 - var_n * mu_s ** 2
             - 2 * var_n * var_s * (math.log(self.eta) + torch.log(sigma_s / sigma_n)))
        if bool(a != 0):
            discriminant = b ** 2 - 4 * a * c
            if bool(discriminant > 0):
                # the official root: +sqrt when the signal mean is the larger one
                sign = (mu_s > mu_n).to(a.dtype)
                return float((-b + sign * torch.sqrt(discriminant)) / (2 * a))
            if bool(discriminant == 0):
                return float(-b / (2 * a))
        elif bool(b != 0):
            return float(-c / b)
        raise ThresholdError(
            "The signal and noise norm Gaussians do not cross "
            f"(signal {float(mu_s):.4g}±{float(sigma_s):.4g}, noise {float(mu_n):.4g}±{float(sigma_n):.4g}). "
            "Reset the Thresholder statistics (e.g. to the defaults) or segment with a fixed norm_threshold."
        )

    @torch.no_grad()
    def update(self, signal_norms=None, noise_norms=None) -> None:
        """One EMA step of the statistics (official ``update_stats``).

        mean <- d*mean + (1-d)*x.mean();  var <- d*var + (1-d)*((x - mean_new)^2).mean(),
        where the variance uses the *updated* mean. None skips that Gaussian. Empty inputs
        are skipped too (the official code would write NaN into the buffer).
        """
        for prefix, values in (("signal", signal_norms), ("noise", noise_norms)):
            if values is None:
                continue
            mean, var = getattr(self, f"{prefix}_mean"), getattr(self, f"{prefix}_var")
            values = torch.as_tensor(values).detach().to(device=mean.device, dtype=mean.dtype).reshape(-1)
            if values.numel() == 0:
                continue
            mean.mul_(self.decay).add_((1 - self.decay) * values.mean())
            var.mul_(self.decay).add_((1 - self.decay) * ((values - mean) ** 2).mean())

    @torch.no_grad()
    def update_from_norms(self, teacher_norms, student_norms=None) -> float:
        """Split frames by the current threshold and update the statistics.

        ``student_norms`` (same shape as ``teacher_norms``) selects the
        ``use_train_thrupdate`` behaviour: noise statistics then come from the student's
        norms at the frames the teacher calls noise. Returns the threshold used for the
        split, which is also the one to segment this step's teacher features with.
        """
        threshold = self.threshold()
        teacher_norms = torch.as_tensor(teacher_norms).detach()
        is_signal = teacher_norms >= threshold
        if student_norms is None:
            self.update(teacher_norms[is_signal], teacher_norms[~is_signal])
        else:
            student_norms = torch.as_tensor(student_norms).detach()
            if student_norms.shape != teacher_norms.shape:
                raise ThresholdError(
                    f"student_norms has shape {tuple(student_norms.shape)} but teacher_norms has "
                    f"{tuple(teacher_norms.shape)}; pass the norms of the same frames."
                )
            self.update(teacher_norms[is_signal], student_norms[~is_signal.to(student_norms.device)])
        return threshold
