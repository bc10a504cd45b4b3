"""Sylber greedy segmentation and the stage-2 Thresholder (Berkeley-Speech-Group/sylber:sylber/utils/segment_utils.py).

Hand-made cases use 2-d frames of norm 2 at given angles, so every cosine is the cosine
of an angle difference and the expected segments can be worked out on paper.
"""
import math

import numpy as np
import pytest
import torch

import zoo.speech.sylber.segment as segment_module
from zoo.speech.sylber.segment import (
    SegmentInputError,
    Thresholder,
    ThresholdError,
    segment,
    segment_means,
    segment_reference,
    segments_to_seconds,
)

BOTH = pytest.mark.parametrize("segment_fn", [segment, segment_reference], ids=["fast", "reference"])


def at(degrees, norm=2.0):
    return [norm * math.cos(math.radians(degrees)), norm * math.sin(math.radians(degrees))]


def frames(*angles):
    return np.array([at(a) for a in angles])


@BOTH
def test_silence_splits_and_trailing_segment(segment_fn):
    # norms 2, 2, 0, 0, 3, 3.0017, 0 (threshold 1): speech runs [0,2) and [4,6)
    x = np.array([[2, 0], [2, 0], [0, 0], [0, 0], [3, 0], [3, 0.1], [0, 0]], dtype=np.float64)
    assert segment_fn(x, 1.0, 0.8).tolist() == [[0, 2], [4, 6]]
    # the same without the final silent frame: the last segment runs to L
    assert segment_fn(x[:6], 1.0, 0.8).tolist() == [[0, 2], [4, 6]]
    assert segment_fn(x[:5], 1.0, 0.8).tolist() == [[0, 2], [4, 5]]
    # nothing above the threshold
    assert segment_fn(x, 5.0, 0.8).shape == (0, 2)


@BOTH
def test_similarity_break_and_boundary_refinement_moves_boundary(segment_fn):
    # 5 frames at 0°, a transition frame T at 50°, 3 frames at 90°; merge threshold 0.5.
    # Greedy: T has cos 50° = 0.643 >= 0.5 with the running mean (0°) and joins the first
    # segment; the 90° frame breaks (cos 81.7° with the mean) -> [0,6), [6,9).
    # Refinement: mean A points at 50/6 = 8.3°, mean B at 90°; window [3, 7).
    # T: cos(41.7°) = 0.747 to A < cos(40°) = 0.766 to B, so the cut moves to 5.
    x = frames(0, 0, 0, 0, 0, 50, 90, 90, 90)
    assert segment_fn(x, 1.0, 0.5).tolist() == [[0, 5], [5, 9]]
    # with a single frame at 0° before T, T stays: mean A at 25°, cos 25° > cos 40°
    assert segment_fn(frames(0, 50, 90, 90, 90), 1.0, 0.5).tolist() == [[0, 2], [2, 5]]


@BOTH
def test_refinement_merges_segments_with_similar_means(segment_fn):
    # 0°, 0°, 40°, 20°: 40° breaks (cos 40° = 0.766 < 0.8), 20° joins it (cos 20°);
    # segment means 0° and 30° have cos 30° = 0.866 >= 0.8 -> merged into one segment.
    assert segment_fn(frames(0, 0, 40, 20), 1.0, 0.8).tolist() == [[0, 4]]
    # a silence after them, then an unrelated syllable
    x = np.vstack([frames(0, 0, 40, 20), [[0, 0]], frames(90, 90)])
    assert segment_fn(x, 1.0, 0.8).tolist() == [[0, 4], [5, 7]]


@BOTH
def test_count_is_not_reset_after_a_similarity_break(segment_fn):
    # 4 x 0°, then 90° (break), 120°, 135°, 3 x 160°; merge threshold 0.8 (36.87°).
    # Official quirk: after the break at 90° the count stays 5, so 120° gives the running
    # mean (5*90° + 120°)/6 at 94.9°; 135° is then 40.1° away (cos 0.765 < 0.8): break.
    # Refinement keeps 4 (window 0°,0°,90° vs means 0° / 105°) and 6 (C, D, E vs means
    # 105° / 153.8°: sweep 2.772, 2.907, 2.826 -> cut after C), and no means merge.
    # With the count reset to 1 the mean would be (90° + 120°)/2 = 105°, 135° would join
    # (cos 30°) and the break would come at 160° instead: [[0,4],[4,7],[7,10]].
    x = frames(0, 0, 0, 0, 90, 120, 135, 160, 160, 160)
    assert segment_fn(x, 1.0, 0.8).tolist() == [[0, 4], [4, 6], [6, 10]]


def test_norms_argument_replaces_the_speech_mask():
    x = frames(0, 0, 90, 90)
    assert segment(x, 1.0, 0.8).tolist() == [[0, 2], [2, 4]]
    custom = np.array([5.0, 0.0, 5.0, 5.0])
    for fn in (segment, segment_reference):
        assert fn(x, 1.0, 0.8, norms=custom).tolist() == [[0, 1], [2, 4]]


def _random_features(rng, length, dim, dtype):
    """Runs of noisy near-constant vectors with silent gaps (norm < 1)."""
    out = np.empty((length, dim))
    t = 0
    direction = rng.standard_normal(dim)
    while t < length:
        run = int(rng.integers(1, 15))
        if rng.random() < 0.25:
            out[t:t + run] = rng.standard_normal((min(run, length - t), dim)) * 0.1 / math.sqrt(dim)
        else:
            direction = rng.uniform(0, 1) * direction + rng.standard_normal(dim)
            block = direction + rng.standard_normal((min(run, length - t), dim)) * rng.uniform(0.05, 1.0)
            out[t:t + run] = block / np.linalg.norm(block, axis=1, keepdims=True) * rng.uniform(1.5, 6)
        t += run
    return out.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_equals_reference_on_random_inputs(dtype):
    rng = np.random.default_rng(1234)
    for case in range(40):
        dim = int(rng.choice([1, 2, 3, 8, 17, 64, 130, 256, 768]))
        x = _random_features(rng, int(rng.integers(1, 200)), dim, dtype)
        norm_threshold, merge_threshold = float(rng.uniform(0.5, 3)), float(rng.uniform(0.2, 0.97))
        fast = segment(x, norm_threshold, merge_threshold)
        ref = segment_reference(x, norm_threshold, merge_threshold)
        assert fast.dtype == np.int64 and fast.shape[1:] == (2,)
        np.testing.assert_array_equal(fast, ref, err_msg=f"case {case}, dim {dim}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_cosines_are_bit_identical_to_the_reference(dtype, monkeypatch):
    """Every scalar cosine the reference compares with the merge threshold (greedy, then
    the merge checks) equals the fast kernels' value exactly, not just the boundaries."""
    rng = np.random.default_rng(99)
    for _ in range(6):
        x = _random_features(rng, 150, int(rng.choice([16, 200, 768])), dtype)
        recorded = []
        original = segment_module._cosine

        def recording(a, b):
            value = original(a, b)
            if np.ndim(value) == 0:
                recorded.append(value)
            return value

        monkeypatch.setattr(segment_module, "_cosine", recording)
        segment_reference(x, 1.0, 0.7)
        monkeypatch.setattr(segment_module, "_cosine", original)
        trace = {}
        segment_module._segment_fast(np.ascontiguousarray(x), 1.0, 0.7, None, trace)
        fast = np.concatenate([trace["similarity"][~np.isnan(trace["similarity"])],
                               trace["merge_similarity"][~np.isnan(trace["merge_similarity"])]])
        np.testing.assert_array_equal(fast, np.array(recorded, dtype=dtype))
        assert fast.dtype == dtype


@BOTH
def test_one_frame_segment_survives_refinement(segment_fn):
    # 0°, 0°, 45°, 90°, 90° at threshold 0.9: 45° and 90° each break (cos 45° = 0.707).
    # Break at 2: window [1, 3) = (0°, 45°) vs means 0° / 45°: scores 1.707, 2.0 -> cut 2.
    # Break at 3: window [2, 4) = (45°, 90°) vs means 45° / 90°: scores 1.707, 2.0 -> cut 3.
    assert segment_fn(frames(0, 0, 45, 90, 90), 1.0, 0.9).tolist() == [[0, 2], [2, 3], [3, 5]]


def test_dtype_and_torch_inputs():
    x = _random_features(np.random.default_rng(5), 120, 32, np.float32)
    expected = segment_reference(x, 1.0, 0.8)
    np.testing.assert_array_equal(segment(torch.from_numpy(x), 1.0, 0.8), expected)
    np.testing.assert_array_equal(segment(torch.from_numpy(x).to(torch.bfloat16).float(), 1.0, 0.8),
                                  segment_reference(torch.from_numpy(x).to(torch.bfloat16), 1.0, 0.8))
    np.testing.assert_array_equal(segment(x, 1.0, 0.8, dtype=np.float64),
                                  segment_reference(x.astype(np.float64), 1.0, 0.8))
    assert segment(np.zeros((0, 4)), 1.0, 0.8).shape == (0, 2)
    with pytest.raises(SegmentInputError, match="hidden_states\\[b\\]"):
        segment(np.zeros((2, 5, 4)))
    with pytest.raises(SegmentInputError, match="float32 or float64"):
        segment(x, dtype=np.float16)


def test_seconds_and_segment_means():
    segs = np.array([[0, 2], [2, 5]])
    np.testing.assert_allclose(segments_to_seconds(segs), [[0.0, 0.04], [0.04, 0.1]])
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(segment_means(x, segs), [[1, 2], [6, 7]])
    means = segment_means(torch.from_numpy(x), segs)
    assert isinstance(means, torch.Tensor) and means.tolist() == [[1, 2], [6, 7]]
    assert segment_means(x, np.zeros((0, 2))).shape == (0, 2)


def official_segment_utils_path() -> str | None:
    """The released segment_utils.py of the installed official wheel (`pip install --no-deps sylber==0.1.4`),
    found through the package's metadata without importing it (`import sylber` needs its heavy dependencies)."""
    import os
    from importlib.metadata import PackageNotFoundError, distribution

    if os.environ.get("SYLBER_SEGMENT_UTILS"):
        return os.environ["SYLBER_SEGMENT_UTILS"]
    try:
        return str(distribution("sylber").locate_file("sylber/utils/segment_utils.py"))
    except PackageNotFoundError:
        return None


def test_matches_the_official_segment_utils():
    """Parity with the official get_segment on random inputs, float32 and float64, one by one and as a corpus.

    CI installs the wheel (.ci/run); elsewhere the test skips unless ZOO_REQUIRE_OFFICIAL_SYLBER is set,
    which CI sets, so a broken install fails instead of skipping."""
    import importlib.util
    import os

    path = official_segment_utils_path()
    if not path or not os.path.isfile(path):
        if os.environ.get("ZOO_REQUIRE_OFFICIAL_SYLBER"):
            pytest.fail("the official sylber wheel is not installed: pip install --no-deps sylber==0.1.4")
        pytest.skip("the official sylber wheel is not installed (pip install --no-deps sylber==0.1.4)")
    spec = importlib.util.spec_from_file_location("_official_segment_utils", path)
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        corpus = [_random_features(rng, int(rng.integers(20, 300)), int(rng.choice([16, 64, 768])), dtype)
                  for _ in range(12)]
        for norm_threshold, merge_threshold in ((1.0, 0.75), (2.6, 0.8), (0.5, 0.95)):
            expected = [np.asarray(official.get_segment(x, norm_threshold, merge_threshold), dtype=np.int64)
                        .reshape(-1, 2) for x in corpus]
            assert sum(len(e) for e in expected) > 0
            for x, want in zip(corpus, expected):
                np.testing.assert_array_equal(segment(x, norm_threshold, merge_threshold), want)
            for got, want in zip(segment(corpus, norm_threshold, merge_threshold, workers=3), expected):
                np.testing.assert_array_equal(got, want)


def test_a_corpus_is_segmented_in_parallel_with_the_same_segments():
    rng = np.random.default_rng(21)
    corpus = [_random_features(rng, int(rng.integers(1, 250)), 32, np.float32) for _ in range(40)]
    corpus.append(np.zeros((0, 32), np.float32))
    alone = [segment(x, 1.0, 0.8) for x in corpus]
    for workers in (1, 2, 4, None):
        together = segment(corpus, 1.0, 0.8, workers=workers)
        assert isinstance(together, list) and len(together) == len(corpus)
        for got, want in zip(together, alone):
            np.testing.assert_array_equal(got, want)
    # tensors and tuples too; norms per utterance
    norms = [np.full(len(x), 5.0) for x in corpus[:3]]
    assert [a.tolist() for a in segment(tuple(torch.from_numpy(x) for x in corpus[:3]), 1.0, 0.8, norms=norms)] == \
        [segment(x, 1.0, 0.8, norms=n).tolist() for x, n in zip(corpus[:3], norms)]
    with pytest.raises(SegmentInputError, match="norms must be a list of 3"):
        segment(corpus[:3], 1.0, 0.8, norms=norms[0])
    with pytest.raises(SegmentInputError, match="Utterance 1 of the corpus is a list"):
        segment([corpus[0], corpus[1].tolist()], 1.0, 0.8)
    with pytest.raises(SegmentInputError, match="workers"):
        segment(corpus, workers=0)


# ------------------------------------------------------------------------ Thresholder


def test_thresholder_buffers_and_defaults():
    thresholder = Thresholder()
    state = thresholder.state_dict()
    assert sorted(state) == ["noise_mean", "noise_var", "signal_mean", "signal_var"]
    assert all(v.shape == (1,) and v.dtype == torch.float32 for v in state.values())
    assert [round(float(state[k]), 4) for k in ("signal_mean", "signal_var", "noise_mean", "noise_var")] \
        == [6.10, 0.87, 0.34, 0.34]
    # the initial statistics put the threshold at the inference default, 2.6
    assert thresholder.threshold() == pytest.approx(2.6, abs=1e-3)


def test_threshold_is_the_intersection_of_two_gaussians():
    # N(4, 2^2) vs N(0, 1): (x-4)^2/8 + ln 2 = x^2/2  ->  3x^2 + 8x - 16 - 8 ln 2 = 0
    expected = (-8 + math.sqrt(64 + 12 * (16 + 8 * math.log(2)))) / 6  # 1.6599
    thresholder = Thresholder(signal_mean=4.0, signal_var=4.0, noise_mean=0.0, noise_var=1.0)
    assert thresholder.threshold() == pytest.approx(expected, abs=1e-5)
    assert 0.0 < thresholder.threshold() < 4.0
    # equal variances: the midpoint of the means
    assert Thresholder(signal_mean=5, signal_var=1, noise_mean=1, noise_var=1).threshold() == pytest.approx(3.0)
    with pytest.raises(ThresholdError, match="do not cross"):
        Thresholder(signal_mean=1, signal_var=1, noise_mean=1, noise_var=1).threshold()


def test_thresholder_update_follows_the_ema_formula():
    thresholder = Thresholder(decay=0.9)
    signal = torch.tensor([5.0, 7.0, 9.0])
    noise = torch.tensor([0.5, 1.5])
    thresholder.update(signal, noise)
    signal_mean = 0.9 * 6.10 + 0.1 * 7.0  # 6.19
    signal_var = 0.9 * 0.87 + 0.1 * np.mean((signal.numpy() - signal_mean) ** 2)  # uses the new mean
    noise_mean = 0.9 * 0.34 + 0.1 * 1.0
    noise_var = 0.9 * 0.34 + 0.1 * np.mean((noise.numpy() - noise_mean) ** 2)
    assert float(thresholder.signal_mean) == pytest.approx(signal_mean, rel=1e-6)
    assert float(thresholder.signal_var) == pytest.approx(signal_var, rel=1e-6)
    assert float(thresholder.noise_mean) == pytest.approx(noise_mean, rel=1e-6)
    assert float(thresholder.noise_var) == pytest.approx(noise_var, rel=1e-6)
    # None and empty inputs leave a Gaussian untouched
    before = {k: v.clone() for k, v in thresholder.state_dict().items()}
    thresholder.update(None, torch.tensor([]))
    assert all(torch.equal(before[k], v) for k, v in thresholder.state_dict().items())


def test_update_from_norms_train_thrupdate_uses_student_noise():
    teacher = torch.tensor([[7.0, 0.2, 6.0], [0.4, 8.0, 0.3]])
    student = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    plain, with_student = Thresholder(decay=0.5), Thresholder(decay=0.5)
    threshold = plain.update_from_norms(teacher)
    assert threshold == pytest.approx(2.6, abs=1e-3)
    assert float(plain.signal_mean) == pytest.approx(0.5 * 6.1 + 0.5 * 7.0)
    assert float(plain.noise_mean) == pytest.approx(0.5 * 0.34 + 0.5 * 0.3)
    with_student.update_from_norms(teacher, student_norms=student)
    assert float(with_student.signal_mean) == pytest.approx(0.5 * 6.1 + 0.5 * 7.0)
    # student norms at the teacher's noise frames (0.2, 0.4, 0.3 -> 2, 4, 6): mean 4
    assert float(with_student.noise_mean) == pytest.approx(0.5 * 0.34 + 0.5 * 4.0)
    with pytest.raises(ThresholdError, match="same frames"):
        with_student.update_from_norms(teacher, student_norms=student[:1])


@pytest.mark.parametrize("dim", [768, 1024, 776])
def test_fast_equals_reference_on_wide_features(dim):
    """768 and 1024 take the 8-leaf vector dot, 776 the stack walk with a ragged tail."""
    rng = np.random.default_rng(dim)
    x = _random_features(rng, 400, dim, np.float32)
    for merge_threshold in (0.5, 0.8, 0.95):
        np.testing.assert_array_equal(segment(x, 1.0, merge_threshold), segment_reference(x, 1.0, merge_threshold))


def test_speech_mask_compares_float32_norms_with_float32_threshold():
    # the frame norm is float32(2.6) exactly, just below the float64 2.6: still speech
    x = np.zeros((3, 4), dtype=np.float32)
    x[:, 0] = np.float32(2.6)
    x[1, 0] = np.nextafter(np.float32(2.6), np.float32(0))
    for fn in (segment, segment_reference):
        assert fn(x, 2.6, 0.8).tolist() == [[0, 1], [2, 3]]
