"""Syllable tokenizer: k-means over segment features, saved as the model's codebook buffer."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import zoo
from zoo.errors import ConfigError
from zoo.speech.sylber.tokenizer import collect_segment_features, fit_tokenizer


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for index in range(6):
        t = np.arange(int(16000 * (0.8 + 0.2 * index))) / 16000
        wave = np.sin(2 * np.pi * (120 + 20 * index) * t) * (np.sin(2 * np.pi * 3 * t) > 0) + 0.01 * rng.standard_normal(t.size)
        sf.write(folder / f"u{index}.wav", (0.2 * wave).astype(np.float32), 16000)
    return folder


def test_fit_attaches_codebook_and_reports_rate(tmp_path, audio_folder):
    torch.manual_seed(0)
    model = zoo.load("sylber-tiny", pretrained=False, norm_threshold=0.0)
    features, seconds = collect_segment_features(model, audio_folder, batch_size=4)
    assert seconds == pytest.approx(sum(0.8 + 0.2 * i for i in range(6)), abs=1e-6)
    report = fit_tokenizer(model, str(audio_folder), 5, batch_size=4, n_init=1)
    assert report["num_segments"] == features.shape[0] > 5
    assert report["tokens_per_second"] == pytest.approx(features.shape[0] / seconds)
    assert 1 <= report["codes_used"] <= 5
    assert model.num_tokens == 5 and model.config["num_tokens"] == 5 and model.codebook.shape == (5, 64)
    # Tokens are the nearest centroid of each segment's mean feature.
    tokens = model.assign_tokens(torch.from_numpy(features))
    assert torch.equal(tokens, torch.cdist(torch.from_numpy(features), model.codebook).argmin(-1))

    model.save_pretrained(tmp_path / "with-codebook")
    again = zoo.load(str(tmp_path / "with-codebook"))
    assert torch.equal(again.codebook, model.codebook)
    wave = torch.from_numpy(sf.read(audio_folder / "u3.wav", dtype="float32")[0])
    assert torch.equal(again.segment(wave, 16000).tokens, model.segment(wave, 16000).tokens)


def test_too_few_segments_is_a_clear_error(audio_folder):
    model = zoo.load("sylber-tiny", pretrained=False)
    with pytest.raises(ConfigError, match="num_tokens"):
        fit_tokenizer(model, str(audio_folder), 10, norm_threshold=1e9)
    with pytest.raises(ConfigError):
        fit_tokenizer(model, str(audio_folder), 0)
