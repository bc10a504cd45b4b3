"""HuBERTopic label pieces: MFCC and layer features, k-means and label files, documents and LDA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchaudio

from zoo.errors import AudioInputError, ConfigError
from zoo.models.hubert import HubertConfig, HubertModel
from zoo.speech.hubertopic.features import layer_features, mfcc_features, mfcc_frame_count
from zoo.speech.hubertopic.kmeans import (KMEANS_DEFAULTS, assign, fit_kmeans, read_labels, sample_utterances,
                                          write_labels)
from zoo.speech.hubertopic.topics import TopicModel, normalized_mutual_info, read_topics, unit_documents, write_topics


def test_mfcc_is_kaldi_mfcc_with_deltas_at_100_hz():
    t = torch.arange(16000) / 16000
    wave = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.01 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    features = mfcc_features(wave, 16000)
    assert features.shape == (98, 39) and mfcc_frame_count(16000) == 98
    mfcc = torchaudio.compliance.kaldi.mfcc(wave[None], sample_frequency=16000, use_energy=False).t()
    deltas = torchaudio.functional.compute_deltas(mfcc)
    assert torch.equal(features[:, :13], mfcc.t())
    assert torch.equal(features[:, 13:26], deltas.t())
    assert torch.equal(features[:, 26:], torchaudio.functional.compute_deltas(deltas).t())
    assert mfcc_frame_count(399) == 0 and mfcc_frame_count(400) == 1 and mfcc_frame_count(560) == 2
    with pytest.raises(AudioInputError, match="shorter than one 25 ms MFCC frame"):
        mfcc_features(torch.zeros(399), 16000)


def test_layer_features_are_the_hidden_state_of_that_layer():
    torch.manual_seed(0)
    model = HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4))
    model.train()
    wave = 0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(1))
    features = layer_features(model, wave, 1, 16000)
    assert model.training  # left as it was
    with torch.no_grad():
        expected = model.eval()(wave[None], output_hidden_states=True).hidden_states[1][0]
    assert features.shape == (24, 32)
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=1e-6)


def test_kmeans_recovers_separated_blobs_and_assign_is_nearest_centroid():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 10], [-10, 10]], dtype=np.float32)
    truth = np.repeat(np.arange(3), 200)
    points = centres[truth] + rng.normal(0, 0.5, (600, 2)).astype(np.float32)
    centroids = fit_kmeans(points, 3, seed=0, n_init=3)
    assert centroids.shape == (3, 2) and centroids.dtype == np.float32
    found = assign(points, centroids)
    assert normalized_mutual_info(found, truth) == pytest.approx(1.0)
    brute = ((points[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(found, brute)
    assert KMEANS_DEFAULTS == dict(init="k-means++", max_iter=100, batch_size=10000, tol=0.0,
                                   max_no_improvement=100, n_init=20, reassignment_ratio=0.0)
    with pytest.raises(ConfigError, match="needs at least as many frames, got 2"):
        fit_kmeans(points[:2], 3)
    with pytest.raises(ConfigError, match="Unknown k-means settings"):
        fit_kmeans(points, 3, n_inits=2)


def test_utterance_sample_is_fairseqs_percent_draw():
    chosen = sample_utterances(100, 0.1, 0)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10 and np.all(np.diff(chosen) > 0)
    assert np.array_equal(chosen, sample_utterances(100, 0.1, 0))
    assert not np.array_equal(chosen, sample_utterances(100, 0.1, 1))
    assert len(sample_utterances(25, 0.1, 0)) == 3  # ceil
    assert np.array_equal(sample_utterances(5, 1.0, 0), np.arange(5))


def test_label_files_round_trip_and_bad_lines_are_named(tmp_path):
    units = [np.array([3, 3, 7]), np.array([], dtype=np.int64), np.array([499])]
    write_labels(tmp_path / "units.km", ["a", "b c", "d"], units)
    back = read_labels(tmp_path / "units.km")
    assert list(back) == ["a", "b c", "d"]
    for expected, got in zip(units, back.values()):
        assert got.dtype == np.int64 and np.array_equal(expected, got)
    (tmp_path / "bad.km").write_text("a\t1 2\nb 1 2\n")
    with pytest.raises(ConfigError, match=r"bad.km, line 2"):
        read_labels(tmp_path / "bad.km")
    write_topics(tmp_path / "topics.txt", ["a", "d"], np.array([4, 0]))
    assert read_topics(tmp_path / "topics.txt") == {"a": 4, "d": 0}


def test_documents_by_frames_runs_and_ngrams():
    sequence = [np.array([1, 1, 2, 2, 2, 1])]

    def as_dict(mode):
        counts, vocabulary = unit_documents(sequence, mode)
        return {token: int(counts[0, column]) for token, column in vocabulary.items()}

    assert as_dict("frames") == {"1": 3, "2": 3}
    assert as_dict("dedup") == {"1": 2, "2": 1}
    assert as_dict("ngram") == {"1_2": 1, "2_1": 1}
    counts, _ = unit_documents([np.array([5, 9, 1])], "dedup", vocabulary={"1": 0, "5": 1})
    assert counts.toarray().tolist() == [[1.0, 1.0]]  # unit 9 is not in the vocabulary
    with pytest.raises(ConfigError, match="frames"):
        unit_documents(sequence, "words")


def test_lda_separates_disjoint_vocabularies_and_saves_without_pickle(tmp_path):
    rng = np.random.default_rng(1)
    group = np.repeat([0, 1], 20)
    documents = [rng.integers(0, 5, 60) if g == 0 else rng.integers(5, 10, 60) for g in group]
    counts, vocabulary = unit_documents(documents, "frames")
    model = TopicModel.fit(counts, 2, max_iter=20, seed=0, vocabulary=vocabulary)
    topics = model.hard_topics(counts)
    assert normalized_mutual_info(topics, group) == pytest.approx(1.0)
    distributions = model.transform(counts)
    np.testing.assert_allclose(distributions.sum(1), 1.0, rtol=1e-6)
    model.save(tmp_path / "lda")
    assert not list((tmp_path / "lda").glob("*.pkl"))
    loaded = TopicModel.load(tmp_path / "lda")
    assert loaded.vocabulary == vocabulary and loaded.num_topics == 2
    assert np.array_equal(loaded.transform(counts), distributions)
    with pytest.raises(ConfigError, match="no units"):
        TopicModel.fit(counts[:0], 2, vocabulary=vocabulary)
