"""Sylber model: builder sizes, inference API (features, batching, input handling), segmentation results."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from zoo.errors import AudioInputError, ConfigError
from zoo.speech.sylber.builder import SIZES, make_config
from zoo.audio import num_frames
from zoo.speech.sylber.model import SylberModel
from zoo.speech.sylber.segment import segment_means


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
    # 94.37M (12-layer HuBERT-base) minus 3 transformer layers of 7.088M each = ~73.1M.
    model = zoo.get_family("sylber").build(make_config("base"))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 73.1e6) < 0.1e6, count


def test_frames_are_50hz(tiny):
    with torch.no_grad():
        features = tiny(_wave(1.0), 16000)
    assert features.shape == (49, 64)
    assert num_frames(16000, 400, 320) == 49 and num_frames(400, 400, 320) == 1 and num_frames(399, 400, 320) == 0
    assert num_frames(torch.tensor([16000, 400, 320]), 400, 320).tolist() == [49, 1, 0]
    assert tiny.hubert.frame_lengths(16000) == 49


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
    at_8k = tiny(wave, 8000)
    stereo = tiny(torch.stack([wave, wave]), 8000, channel_axis=0)
    stereo_t = tiny(torch.stack([wave, wave]).T.numpy(), 8000, channel_axis=1)
    assert at_8k.shape == (49, 64)
    assert torch.equal(stereo, at_8k) and torch.equal(stereo_t, at_8k)
    # without channel_axis: the shorter axis; [1, T] (torchaudio's mono layout) is one channel
    assert torch.equal(tiny(torch.stack([wave, wave]), 8000), at_8k)
    assert torch.equal(tiny(wave[None], 8000), at_8k)
    with pytest.raises(AudioInputError, match="give the sample rate"):
        tiny(wave)


def test_a_path_and_its_samples_give_identical_results(tiny, tmp_path):
    """The README's first example: segment a file by its path; same result as its samples with their rate."""
    import soundfile as sf

    stereo = np.stack([_wave(1.3, 8, rate=22050).numpy(), _wave(1.3, 9, rate=22050).numpy()], axis=1)
    sf.write(tmp_path / "speech.wav", stereo, 22050, subtype="PCM_16")
    by_path = tiny.segment(str(tmp_path / "speech.wav"), norm_threshold=0.0)
    from_file, rate = sf.read(tmp_path / "speech.wav")  # float64 [T, 2]
    by_samples = tiny.segment(from_file, rate, channel_axis=1, norm_threshold=0.0)
    pcm, _ = sf.read(tmp_path / "speech.wav", dtype="int16")
    by_pcm = tiny.segment(torch.from_numpy(pcm.T.copy()), rate, channel_axis=0, norm_threshold=0.0)
    by_pathlib = tiny.segment(tmp_path / "speech.wav", norm_threshold=0.0)
    for other in (by_samples, by_pcm, by_pathlib):
        assert torch.equal(other.hidden_states, by_path.hidden_states)
        assert torch.equal(other.frames, by_path.frames)
    assert by_path.duration == pytest.approx(1.3, abs=1e-3) and by_path.hidden_states.shape[0] == 64
    # a list of paths is a batch; a file's rate is read from its header and a different one is refused
    batch = tiny.segment([tmp_path / "speech.wav", str(tmp_path / "speech.wav")], norm_threshold=0.0)
    for result in batch:  # batched matmuls round differently: equal to float32 rounding
        torch.testing.assert_close(result.hidden_states, by_path.hidden_states, atol=1e-5, rtol=1e-5)
    with pytest.raises(AudioInputError, match="22050 Hz file but sample_rate=16000"):
        tiny.segment(str(tmp_path / "speech.wav"), 16000)
    with pytest.raises(AudioInputError, match="does not exist"):
        tiny.segment(str(tmp_path / "missing.wav"))


def test_inference_apis_ignore_train_mode_and_restore_it(tiny):
    """After model.train() (e.g. fine-tuning in the same process) two calls agree and the flag comes back."""
    wave = _wave(1.0, 10)
    expected = tiny.segment(wave, 16000, norm_threshold=0.0)
    tiny.train()
    tiny.hubert.encoder.layers[0].eval()  # a submodule's own flag is restored too
    try:
        first = tiny.segment(wave, 16000, norm_threshold=0.0)
        second = tiny.segment(wave, 16000, norm_threshold=0.0)
        features = tiny(wave, 16000)
        assert tiny.training and tiny.hubert.training and not tiny.hubert.encoder.layers[0].training
    finally:
        tiny.eval()
    assert torch.equal(first.hidden_states, second.hidden_states) and torch.equal(first.frames, second.frames)
    assert torch.equal(first.hidden_states, expected.hidden_states) and torch.equal(features, expected.hidden_states)
    assert not features.requires_grad
    from zoo.model import inference

    assert all(getattr(getattr(SylberModel, name), "__zoo_inference__", False)
               for name in ("segment", "extract_features", "assign_tokens"))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        inference(lambda model: model)("not a module")


def test_rate_only_for_clips_long_enough_to_have_one(tiny):
    short = tiny.segment(_wave(0.05, 11), 16000, norm_threshold=0.0)
    assert short.duration == 0.05 and short.rate is None and short.to_dict()["segments_per_second"] is None
    long = tiny.segment(_wave(1.0, 11), 16000, norm_threshold=0.0)
    assert long.rate == len(long) / 1.0


@pytest.mark.parametrize("bad", [torch.zeros(0), torch.full((8000,), float("nan")),
                                 torch.tensor([0.0, float("inf")] * 4000), torch.zeros(100)])
def test_bad_audio_raises(tiny, bad):
    with pytest.raises(AudioInputError):
        tiny(bad, 16000)
    with pytest.raises(AudioInputError):
        tiny.segment([_wave(0.5), bad], 16000)


def test_silence_has_no_segments(tiny):
    result = tiny.segment(torch.zeros(16000), 16000)
    assert result.rate == 0.0 and len(result) == 0 and result.segments.shape == (0, 2) and result.features.shape == (0, 64)
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
    assert torch.equal(result.hidden_states, tiny(wave, 16000))
    # The official greedy algorithm on the same features gives the same frames.
    from zoo.speech.sylber.segment import segment as greedy

    np.testing.assert_array_equal(np.asarray(greedy(result.hidden_states.numpy(), 0.0, 0.9)).reshape(-1, 2),
                                  frames.numpy())
    # An impossible norm threshold: every frame is "silence".
    assert len(tiny.segment(wave, 16000, norm_threshold=1e9)) == 0


def test_segment_means_by_hand_and_empty_segments_are_nan():
    states = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0]])
    means = segment_means(states, np.array([[0, 2], [2, 3], [3, 3], [3, 4]]))
    assert means.dtype == torch.float32
    assert means[[0, 1, 3]].tolist() == [[2.0, 1.0], [5.0, 4.0], [7.0, 6.0]]
    assert torch.isnan(means[2]).all()  # [3, 3) has no frames: no mean, as numpy's mean of nothing
    assert segment_means(states, np.zeros((0, 2))).shape == (0, 2)
    # numpy in, numpy out, same values
    as_numpy = segment_means(states.numpy(), [[0, 2], [3, 3]])
    assert isinstance(as_numpy, np.ndarray) and as_numpy[0].tolist() == [2.0, 1.0] and np.isnan(as_numpy[1]).all()
    from zoo.speech.sylber.segment import SegmentInputError

    with pytest.raises(SegmentInputError, match="start <= end"):
        segment_means(states, [[2, 1]])


def test_empty_segment_gets_no_token():
    model = zoo.load("sylber-tiny", pretrained=False)
    model.attach_codebook(torch.eye(64)[:3])
    features = torch.stack([torch.eye(64)[1], torch.full((64,), float("nan")), torch.eye(64)[2]])
    assert model.assign_tokens(features).tolist() == [1, -1, 2]


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


DEMO_MODEL = __import__("pathlib").Path(__file__).parent / "data" / "sylber-demo"


def test_the_demo_model_gives_no_segment_in_silence_around_a_real_clip():
    """tests/speech/data/sylber-demo is what `zoo train sylber --config speech/sylber/recipes/demo.yaml`
    writes to runs/sylber-demo/final (config.json and model.safetensors). With its stored thresholds, half
    a second of silence (digital, or a -60 dBFS noise floor) before and after a bundled clip gets no segment,
    the clip gets about its syllables, and a 50 ms near-silent clip gets none (and no rate)."""
    from zoo.audio import load_audio
    from zoo.data import demo_corpus, read_manifest

    model = zoo.load(str(DEMO_MODEL))
    assert (model.config["norm_threshold"], model.config["merge_threshold"]) == (1.5, 0.9)
    rows = read_manifest(demo_corpus())
    generator = torch.Generator().manual_seed(0)
    segments = syllables = 0
    for row in rows[::37]:  # 8 clips, 8 voices
        clip = load_audio(row["path"])
        for level in (0.0, 1e-3):
            wave = torch.nn.functional.pad(clip, (8000, 8000))
            wave = wave + level * torch.randn(wave.shape, generator=generator)
            result = model.segment(wave, 16000)
            starts, ends = result.segments[:, 0], result.segments[:, 1]
            tail = (wave.shape[0] - 8000) / 16000
            assert len(result) >= 1, row["path"]
            assert not ((ends <= 0.5) | (starts >= tail)).any(), (row["path"], level, result.segments.tolist())
            segments, syllables = segments + len(result), syllables + row["syllables"]
    assert 0.6 < segments / syllables < 1.4, (segments, syllables)  # 82 segments for 98 syllables when written
    near_silent = model.segment(1e-3 * torch.randn(800, generator=generator), 16000)
    assert len(near_silent) == 0 and near_silent.rate is None
