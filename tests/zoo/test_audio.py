"""zoo.audio: scaling, mix-down, resampling, padding and input checks; zoo.image loading."""
import numpy as np
import pytest
import soundfile as sf
import torch

from zoo.audio import load_audio, num_frames, pad_batch, prepare_waveform, prepare_waveforms
from zoo.errors import AudioInputError, ImageInputError


def test_int_pcm_is_scaled_to_unit_range():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    wave = prepare_waveform(pcm, 16000)
    assert wave.dtype == torch.float32
    assert wave.tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    assert prepare_waveform(np.array([-2**31, 2**30], dtype=np.int32), 16000).tolist() == [-1.0, 0.5]
    assert prepare_waveform(np.array([0, 128, 192], dtype=np.uint8), 16000).tolist() == [-1.0, 0.0, 0.5]
    assert prepare_waveform(torch.tensor([-16384], dtype=torch.int16), 16000).tolist() == [-0.5]


def test_stereo_mixdown_is_the_channel_mean_in_either_layout():
    rng = np.random.default_rng(0)
    channels_first = rng.uniform(-1, 1, size=(3, 1000)).astype(np.float32)
    expected = (channels_first[0] + channels_first[1] + channels_first[2]) / 3
    assert prepare_waveform(channels_first, 16000, channel_axis=0).numpy().tolist() == expected.tolist()
    assert prepare_waveform(channels_first.T, 16000, channel_axis=1).numpy().tolist() == expected.tolist()
    assert prepare_waveform(torch.from_numpy(channels_first), 16000, channel_axis=0).numpy().tolist() == \
        expected.tolist()
    # without channel_axis the channels are on the shorter axis (a recording has fewer channels than samples)
    assert prepare_waveform(channels_first, 16000).numpy().tolist() == expected.tolist()
    assert prepare_waveform(channels_first.T, 16000).numpy().tolist() == expected.tolist()
    with pytest.raises(AudioInputError, match="as many rows as columns.*channel_axis"):
        prepare_waveform(np.zeros((3, 3), np.float32), 16000)
    # a 2-D array is a batch only with lengths
    batch = prepare_waveforms(channels_first, 16000, lengths=[1000, 1000, 500])
    assert batch.batched and [w.shape[0] for w in batch.waves] == [1000, 1000, 500]
    with pytest.raises(AudioInputError, match="1-D"):
        prepare_waveform(channels_first[0], 16000, channel_axis=0)
    # [1, T] and [T, 1] hold one channel: no question to ask
    assert prepare_waveform(channels_first[:1], 16000).numpy().tolist() == channels_first[0].tolist()
    assert prepare_waveform(channels_first[:1].T, 16000).numpy().tolist() == channels_first[0].tolist()


def test_num_frames_is_the_sliding_window_count():
    # HuBERT: 400-sample receptive field, 320-sample hop; kaldi fbank/MFCC: 400 / 160
    assert [num_frames(n, 400, 320) for n in (0, 399, 400, 719, 720, 16000)] == [0, 0, 1, 1, 2, 49]
    assert num_frames(16000, 400, 160) == 98
    assert num_frames(torch.tensor([[399, 400], [720, 16000]]), 400, 320).tolist() == [[0, 1], [2, 49]]
    with pytest.raises(ValueError):
        num_frames(100, 0, 10)


def test_resampling_8k_to_16k_doubles_the_length_and_keeps_a_tone():
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    wave = prepare_waveform(tone, 8000, 16000)
    assert wave.shape == (16000,)
    reference = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    np.testing.assert_allclose(wave[1000:-1000].numpy(), reference[1000:-1000], atol=2e-3)
    assert prepare_waveform(tone, 8000, 8000).shape == (8000,)
    assert prepare_waveform(np.zeros(44100, np.float32), 44100, 16000).shape == (16000,)


def test_silence_is_valid():
    assert prepare_waveform(np.zeros(400, np.float32), 16000).abs().sum() == 0


@pytest.mark.parametrize("wav, sample_rate, needle", [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.zeros((2, 0), np.float32), 16000, "empty"),
    (np.array([0.0, np.nan, 0.1], np.float32), 16000, "NaN or infinite"),
    (np.array([0.0, np.inf], np.float32), 16000, "NaN or infinite"),
    (np.zeros((2, 3, 4), np.float32), 16000, "expected a waveform"),
    (np.zeros(10, np.float32), 0, "sample_rate"),
])
def test_bad_waveforms_raise_naming_the_input(wav, sample_rate, needle):
    with pytest.raises(AudioInputError) as info:
        prepare_waveform(wav, sample_rate, name="clip-7")
    assert needle in str(info.value) and "clip-7" in str(info.value)


def test_too_short_says_how_much_is_needed():
    with pytest.raises(AudioInputError) as info:
        prepare_waveform(np.zeros(200, np.float32), 8000, 16000, name="tiny", min_samples=800)
    message = str(info.value)
    assert "tiny" in message and "400 samples (0.025 s)" in message and "800 samples (0.050 s)" in message
    assert prepare_waveform(np.zeros(400, np.float32), 8000, 16000, min_samples=800).shape == (800,)


def test_load_audio_reads_mixes_and_resamples(tmp_path):
    left = np.linspace(-0.5, 0.5, 4000, dtype=np.float32)
    right = np.full(4000, 0.25, dtype=np.float32)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    wave = load_audio(tmp_path / "stereo.wav", 8000)
    np.testing.assert_allclose(wave.numpy(), (left + right) / 2, atol=1 / 32768)
    assert load_audio(str(tmp_path / "stereo.wav")).shape == (8000,)

    pcm = np.array([0, 16384, -32768, 1000], dtype=np.int16)
    sf.write(tmp_path / "pcm.flac", pcm, 16000, subtype="PCM_16")
    assert load_audio(tmp_path / "pcm.flac").tolist() == (pcm / 32768).astype(np.float32).tolist()


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioInputError, match="missing.wav.*does not exist"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioInputError, match="Cannot read audio file.*garbage.wav"):
        load_audio(tmp_path / "garbage.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioInputError, match="empty.wav is empty"):
        load_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "nan.wav", np.array([0.0, np.nan, 0.0], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioInputError, match="nan.wav contains 1 NaN"):
        load_audio(tmp_path / "nan.wav")
    sf.write(tmp_path / "short.wav", np.zeros(100, np.float32), 16000)
    with pytest.raises(AudioInputError, match="short.wav is too short: 100 samples.*at least 400 samples"):
        load_audio(tmp_path / "short.wav", min_samples=400)


def test_every_input_form_gives_the_same_waveforms(tmp_path):
    """A path, a list of paths, samples with their rate (float or int PCM, either layout), a list, a padded batch."""
    rng = np.random.default_rng(3)
    pcm = (rng.uniform(-0.5, 0.5, size=(22050, 2)) * 32767).astype(np.int16)
    sf.write(tmp_path / "a.wav", pcm, 22050, subtype="PCM_16")
    sf.write(tmp_path / "b.flac", pcm[:11025, 0], 22050, subtype="PCM_16")
    one = prepare_waveforms(tmp_path / "a.wav")
    assert not one.batched and len(one.waves) == 1 and one.waves[0].shape == (16000,)
    assert one.waves[0].dtype == torch.float32
    floats, rate = sf.read(tmp_path / "a.wav")  # float64 [T, C], as users read files
    for same in (prepare_waveforms(str(tmp_path / "a.wav")), prepare_waveforms(floats, rate, channel_axis=1),
                 prepare_waveforms(pcm, 22050, channel_axis=1), prepare_waveforms(torch.from_numpy(pcm.T.copy()),
                                                                                   22050, channel_axis=0)):
        assert torch.equal(same.waves[0], one.waves[0])
    mixed = prepare_waveforms([tmp_path / "b.flac", pcm[:11025, 0]], 22050)
    assert mixed.batched and torch.equal(mixed.waves[0], mixed.waves[1]) and mixed.lengths.tolist() == [8000, 8000]
    padded = np.zeros((2, 22050), np.int16)
    padded[0, :11025], padded[1] = pcm[:11025, 0], pcm[:, 0]
    batch = prepare_waveforms(padded, 22050, lengths=[11025, 22050])
    assert batch.batched and torch.equal(batch.waves[0], mixed.waves[0]) and batch.waves[1].shape == (16000,)
    padded_tensor, lengths = batch.padded()
    assert padded_tensor.shape == (2, 16000) and lengths.tolist() == [8000, 16000]


@pytest.mark.parametrize("inputs, kwargs, needle", [
    ([0.1, 0.2, 0.3], {"sample_rate": 16000}, "list of numbers"),
    ([], {"sample_rate": 16000}, "empty list"),
    (np.zeros(800, np.float32), {}, "give the sample rate"),
    (np.zeros((2, 800), np.float32), {"sample_rate": 16000, "lengths": [800, 900]}, "lengths must lie in 1..800"),
    (np.zeros((2, 800), np.float32), {"sample_rate": 16000, "lengths": [800]}, "B lengths"),
    ([np.zeros(800, np.float32)], {"sample_rate": 16000, "lengths": [800]}, "leave lengths out"),
    (np.array(["speech.wav"]), {"sample_rate": 16000}, "a path must be a str or Path"),
])
def test_input_mistakes_are_named(inputs, kwargs, needle):
    with pytest.raises(AudioInputError, match=needle):
        prepare_waveforms(inputs, **kwargs)


def test_mp3_is_read_by_soundfile_where_libsndfile_has_it(tmp_path):
    import soundfile

    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no MP3 support (libsndfile < 1.1)")
    pcm = (np.sin(np.arange(8000) / 5) * 12000).astype(np.int16)
    sf.write(tmp_path / "x.mp3", pcm, 8000, format="MP3")
    wave = load_audio(tmp_path / "x.mp3")
    assert wave.shape[0] >= 16000 and float(wave.abs().max()) > 0.2


def test_files_soundfile_cannot_open_are_decoded_by_librosa(tmp_path, monkeypatch):
    """The fallback for m4a/aac (libsndfile has no decoder): same samples as soundfile would give."""
    pcm = (np.sin(np.arange(1600) / 7.0) * 12000).astype(np.int16)
    sf.write(tmp_path / "clip.wav", np.stack([pcm, pcm // 2], axis=1), 8000, subtype="PCM_16")
    reference = load_audio(tmp_path / "clip.wav", 16000)

    def refuse(*args, **kwargs):
        raise RuntimeError("Format not recognised.")

    monkeypatch.setattr(sf, "read", refuse)
    assert torch.equal(load_audio(tmp_path / "clip.wav", 16000), reference)
    (tmp_path / "garbage.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A not really")
    with pytest.raises(AudioInputError, match="garbage.m4a.*Format not recognised.*install ffmpeg"):
        load_audio(tmp_path / "garbage.m4a")


def test_pad_batch_keeps_true_lengths():
    waves = [torch.ones(3), torch.full((5,), 2.0), np.array([3.0], np.float32)]
    padded, lengths = pad_batch(waves)
    assert lengths.dtype == torch.long and lengths.tolist() == [3, 5, 1]
    assert padded.tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2], [3, 0, 0, 0, 0]]
    with pytest.raises(AudioInputError):
        pad_batch([])
    with pytest.raises(AudioInputError, match="waveform 1"):
        pad_batch([torch.ones(3), torch.ones(2, 3)])


def test_load_image_converts_to_rgb_and_rejects_garbage(tmp_path):
    from PIL import Image

    from zoo.image import image_folder, load_image

    (tmp_path / "cats").mkdir()
    Image.fromarray(np.full((4, 6), 200, np.uint8), "L").save(tmp_path / "cats" / "grey.png")
    Image.new("RGBA", (3, 2), (10, 20, 30, 40)).save(tmp_path / "top.png")
    (tmp_path / "notes.txt").write_text("not an image")
    image = load_image(tmp_path / "cats" / "grey.png")
    assert image.mode == "RGB" and image.size == (6, 4) and image.getpixel((0, 0)) == (200, 200, 200)
    assert load_image(tmp_path / "top.png").getpixel((1, 1)) == (10, 20, 30)

    rows = image_folder(tmp_path)
    assert [(r["id"], r.get("label")) for r in rows] == [("cats/grey", "cats"), ("top", None)]

    (tmp_path / "bad.png").write_bytes(b"\x89PNG but broken")
    with pytest.raises(ImageInputError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ImageInputError, match="nope.jpg.*does not exist"):
        load_image(tmp_path / "nope.jpg")
