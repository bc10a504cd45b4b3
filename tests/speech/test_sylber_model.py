"""Sylber model: builder sizes, inference API (features, batching, input handling), segmentation results."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from zoo.errors import AudioInputError, ConfigError
from zoo.speech.sylber.builder import SIZES, make_config
from zoo.speech.sylber.model import SylberModel, num_frames, segment_mean_features


def _wave(seconds: float, seed: int = 0, rate: int = 16000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    # A few "syllables": bursts of harmonic sound separated by pauses.
    envelope = (torch.sin(2 * torch.pi * 3.0 * t) > -0.2).float()
    voiced = torch.sin(2 * torch.pi * 140 * t) + 0.5 * torch.sin(2 * torch.pi * 280 * t)
    return 0.1 * envelope * voiced + 0.01 * torch.randn(t.shape, generator=generator)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return zoo.load("sylber-tiny", pretrained=False)


def test_sizes_and_registration():
    family = zoo.get_family("sylber")
    assert family.modality == "speech" and set(family.sizes) == {"base", "tiny"}
    assert list(SIZES)[0] == "base"  # the default size of `zoo convert sylber`
    base = family.make_config("base")
    assert base["encoder"]["num_hidden_layers"] == 9 and base["encoder"]["hidden_size"] == 768
    assert base["encoder"]["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2]
    assert base["encoder"]["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]
    assert base["encoder"]["num_conv_pos_embeddings"] == 128 and base["encoder"]["num_conv_pos_embedding_groups"] == 16
    assert base["num_tokens"] == 0 and base["norm_threshold"] == 2.6 and base["merge_threshold"] == 0.8
    assert make_config("tiny")["encoder"]["hidden_size"] == 64


def test_base_parameter_count():
    # speech.md §1.2: 94.37M (12-layer HuBERT-base) minus 3 transformer layers of 7.088M each = ~73.1M.
    model = zoo.get_family("sylber").build(make_config("base"))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 73.1e6) < 0.1e6, count


def test_frames_are_50hz(tiny):
    with torch.no_grad():
        features = tiny(_wave(1.0), 16000)
    assert features.shape == (49, 64)
    assert num_frames(16000) == 49 and num_frames(400) == 1 and num_frames(399) == 0
    assert num_frames(torch.tensor([16000, 400, 320])).tolist() == [49, 1, 0]


def test_list_and_padded_batch_keep_true_lengths(tiny):
    waves = [_wave(1.0, 1), _wave(0.55, 2), _wave(0.8, 3)]
    with torch.no_grad():
        singles = [tiny(w, 16000) for w in waves]
        listed = tiny(waves, 16000)
        padded, lengths = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), [len(w) for w in waves]
        batched = tiny(padded, 16000, lengths=lengths)
    assert [f.shape[0] for f in listed] == [49, 27, 39]
    assert batched.shape == (3, 49, 64)
    for index, single in enumerate(singles):
        torch.testing.assert_close(listed[index], single, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[index, : single.shape[0]], single, atol=1e-5, rtol=1e-5)
        assert batched[index, single.shape[0]:].abs().sum().item() == 0.0


def test_per_utterance_znorm_makes_features_gain_and_offset_invariant(tiny):
    wave = _wave(0.7, 4)
    with torch.no_grad():
        reference = tiny(wave, 16000)
        scaled = tiny(3.0 * wave + 0.25, 16000)
    torch.testing.assert_close(scaled, reference, atol=1e-4, rtol=1e-4)


def test_resampling_and_stereo_mixdown(tiny):
    wave = _wave(1.0, 5, rate=8000)
    with torch.no_grad():
        at_8k = tiny(wave, 8000)
        stereo = tiny(torch.stack([wave, wave]), 8000)
        stereo_t = tiny(torch.stack([wave, wave]).T.numpy(), 8000)
    assert at_8k.shape == (49, 64)
    torch.testing.assert_close(stereo, at_8k, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stereo_t, at_8k, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [torch.zeros(0), torch.full((8000,), float("nan")),
                                 torch.tensor([0.0, float("inf")] * 4000), torch.zeros(100)])
def test_bad_audio_raises(tiny, bad):
    with pytest.raises(AudioInputError):
        tiny(bad, 16000)
    with pytest.raises(AudioInputError):
        tiny.segment([_wave(0.5), bad], 16000)


def test_silence_has_no_segments(tiny):
    result = tiny.segment(torch.zeros(16000), 16000)
    assert len(result) == 0 and result.segments.shape == (0, 2) and result.features.shape == (0, 64)
    assert result.hidden_states.shape == (49, 64)


def test_segment_result_is_consistent(tiny):
    wave = _wave(1.2, 6)
    result = tiny.segment(wave, 16000, norm_threshold=0.0, merge_threshold=0.9)
    frames = result.frames
    assert len(result) > 0 and frames.dtype == torch.int64
    assert (frames[:, 1] > frames[:, 0]).all() and (frames[1:, 0] >= frames[:-1, 1]).all()
    torch.testing.assert_close(result.segments, frames.double() / 50)
    for (start, end), mean in zip(frames.tolist(), result.features):
        torch.testing.assert_close(mean, result.hidden_states[start:end].mean(0), atol=1e-5, rtol=1e-5)
    assert result.tokens is None
    with torch.no_grad():
        torch.testing.assert_close(result.hidden_states, tiny(wave, 16000), atol=1e-6, rtol=1e-6)
    # The official greedy algorithm on the same features gives the same frames.
    from zoo.speech.sylber.segment import segment as greedy

    np.testing.assert_array_equal(np.asarray(greedy(result.hidden_states.numpy(), 0.0, 0.9)).reshape(-1, 2),
                                  frames.numpy())
    # An impossible norm threshold: every frame is "silence".
    assert len(tiny.segment(wave, 16000, norm_threshold=1e9)) == 0


def test_segment_mean_features_by_hand():
    states = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0]])
    means = segment_mean_features(states, np.array([[0, 2], [2, 3], [3, 4]]))
    torch.testing.assert_close(means, torch.tensor([[2.0, 1.0], [5.0, 4.0], [7.0, 6.0]]))
    assert segment_mean_features(states, np.zeros((0, 2))).shape == (0, 2)


def test_codebook_tokens_and_round_trip(tmp_path):
    torch.manual_seed(1)
    model = zoo.load("sylber-tiny", pretrained=False)
    assert model.codebook is None and "codebook" not in model.state_dict()
    with pytest.raises(ConfigError):
        model.assign_tokens(torch.zeros(2, 64))
    centroids = torch.randn(6, 64)
    model.attach_codebook(centroids)
    assert model.config["num_tokens"] == 6 and "codebook" in model.state_dict()
    features = torch.randn(10, 64)
    brute = torch.cdist(features, centroids).argmin(-1)
    assert torch.equal(model.assign_tokens(features), brute)
    with pytest.raises(ConfigError):
        model.attach_codebook(torch.zeros(3, 5))

    wave = _wave(1.0, 7)
    result = model.segment(wave, 16000, norm_threshold=0.0)
    assert result.tokens is not None and torch.equal(result.tokens, torch.cdist(result.features, centroids).argmin(-1))
    model.save_pretrained(tmp_path / "tiny")
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "tiny" / "model.safetensors"))["codebook"], centroids)
    again = zoo.load(str(tmp_path / "tiny"))
    assert isinstance(again, SylberModel) and again.num_tokens == 6
    again_result = again.segment(wave, 16000, norm_threshold=0.0)
    assert torch.equal(again_result.tokens, result.tokens)
    assert torch.equal(again_result.hidden_states, result.hidden_states)


def test_cpu_by_default_and_config_errors():
    model = zoo.load("sylber-tiny", pretrained=False)
    assert model.device.type == "cpu" and not model.training
    with pytest.raises(ConfigError):
        zoo.load("sylber-tiny", pretrained=False, num_tokens=-1)
    with pytest.raises(zoo.errors.WeightsNotAvailableError):
        zoo.load("sylber-tiny")
