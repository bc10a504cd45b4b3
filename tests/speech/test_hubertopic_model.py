"""HubertopicModel: the topic loss by hand, pooling layer, inference API, errors, zoo-format round trip."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.errors import AudioInputError, ConfigError
from zoo.models.hubert import pack
from zoo.speech.hubertopic.builder import make_config
from zoo.speech.hubertopic.model import HubertopicModel


def _tiny(**overrides) -> HubertopicModel:
    torch.manual_seed(0)
    config = make_config("tiny", **overrides)
    config["encoder"].update(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
    return HubertopicModel(config)


def _wave(seconds: float, seed: int) -> torch.Tensor:
    return 0.1 * torch.randn(int(16000 * seconds), generator=torch.Generator().manual_seed(seed))


def _batch():
    waves = [_wave(1.0, 1), _wave(0.7, 2)]
    lengths = torch.tensor([16000, 11200])
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    labels = torch.randint(0, 100, (2, 98), generator=torch.Generator().manual_seed(3))
    return padded, lengths, labels, torch.tensor([98, 68])


def test_loss_is_hubert_loss_plus_lambda_times_topic_cross_entropy():
    model = _tiny(topic={"weight": 0.5}).eval()
    padded, lengths, labels, label_lengths = _batch()
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, 5:20] = mask[1, 3:18] = True
    topics = torch.tensor([7, 2])
    out = model(padded, lengths, labels, label_lengths, topics=topics, mask_indices=mask)
    # By hand: the encoder under the same mask, mean over each utterance's frames, the linear head, CE.
    plain = model.hubert
    features, frames = plain.extract_features(padded, lengths)
    hidden = plain.encode(plain.mask_features(plain.feature_projection(features), frames, mask), frames)[0]
    pooled = torch.stack([piece.mean(0) for piece in hidden.split(frames)])
    expected_topic = F.cross_entropy(model.topic_head(pooled), topics)
    assert frames == [49, 34]
    torch.testing.assert_close(out["loss_topic"], expected_topic, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out["loss"], out["loss_hubert"] + 0.5 * expected_topic, atol=1e-6, rtol=1e-6)
    assert out["loss_masked"] > 0 and out["num_masked"] == 30
    assert out["accuracy_topic"] in (0.0, 0.5, 1.0)


def test_topic_head_can_read_an_intermediate_layer_with_max_pooling():
    model = _tiny(topic={"layer": 1, "pooling": "max"}).eval()
    padded, lengths, labels, label_lengths = _batch()
    mask = torch.zeros(2, 49, dtype=torch.bool)
    out = model(padded, lengths, labels, label_lengths, topics=torch.tensor([0, 1]), mask_indices=mask)
    states = model.hubert(padded, lengths, output_hidden_states=True, mask_time_indices=mask)
    first = pack(states.hidden_states[1], [49, 34])
    pooled = torch.stack([piece.max(0).values for piece in first.split([49, 34])])
    torch.testing.assert_close(out["topic_logits"], model.topic_head(pooled), atol=1e-5, rtol=1e-5)


def test_both_losses_fall_when_fitting_one_batch():
    model = _tiny().train()
    padded, lengths, labels, label_lengths = _batch()
    topics = torch.tensor([4, 9])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(25):
        generator = torch.Generator().manual_seed(step)
        out = model(padded, lengths, labels, label_lengths, topics=topics, generator=generator)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append((out["loss_masked"].item(), out["loss_topic"].item()))
    assert all(torch.isfinite(torch.tensor(h)).all() for h in history)
    assert history[-1][0] < 0.8 * history[0][0]
    assert history[-1][1] < 0.3 * history[0][1]


def test_extract_features_all_layers_one_layer_and_batching():
    model = _tiny().eval()
    waves = [_wave(1.0, 5), _wave(0.5, 6)]
    every, lengths = model.extract_features(waves, 16000)
    assert every.shape == (3, 2, 49, 64) and lengths.tolist() == [49, 24]
    alone, alone_lengths = model.extract_features(waves[1], 16000)
    assert alone.shape == (3, 1, 24, 64) and alone_lengths.tolist() == [24]
    torch.testing.assert_close(every[:, 1, :24], alone[:, 0], atol=1e-5, rtol=1e-5)
    assert torch.all(every[:, 1, 24:] == 0)
    one, _ = model.extract_features(waves, 16000, layer=1)
    torch.testing.assert_close(one, every[1], atol=1e-6, rtol=1e-6)
    inputs, _ = model.extract_features(waves, 16000, layer=0)
    torch.testing.assert_close(inputs, every[0], atol=1e-6, rtol=1e-6)
    # 8 kHz input is resampled to 16 kHz first.
    resampled, resampled_lengths = model.extract_features(waves[0][::2].contiguous(), 8000, layer=2)
    assert resampled_lengths.tolist() == [49]
    with pytest.raises(ConfigError, match="layer must be in 0..2"):
        model.extract_features(waves[0], 16000, layer=3)


def test_predict_topic_is_a_distribution_and_batch_independent():
    model = _tiny().eval()
    waves = [_wave(1.0, 7), _wave(0.6, 8)]
    batched = model.predict_topic(waves, 16000)
    assert batched.shape == (2, 10)
    torch.testing.assert_close(batched.sum(-1), torch.ones(2))
    torch.testing.assert_close(model.predict_topic(waves[1], 16000), batched[1], atol=1e-5, rtol=1e-5)


def test_normalize_true_is_fairseqs_waveform_layer_norm():
    model = _tiny(normalize=True).eval()
    wave = 3.0 + _wave(0.5, 9)
    normalized = model.normalize_waveform(wave)
    by_hand = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(normalized, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.extract_features(wave, 16000, layer=1)[0],
                               _tiny(normalize=False).eval().extract_features(normalized, 16000, layer=1)[0])


def test_bad_inputs_and_configs_raise_clear_errors():
    model = _tiny().eval()
    padded, lengths, labels, label_lengths = _batch()
    with pytest.raises(ConfigError, match=r"Topic labels must lie in 0..9"):
        model(padded, lengths, labels, label_lengths, topics=torch.tensor([0, 10]))
    with pytest.raises(AudioInputError, match="too short: 240 samples"):
        model.extract_features(_wave(0.015, 1), 16000)
    with pytest.raises(ConfigError, match="pooling"):
        _tiny(topic={"pooling": "cls"})
    with pytest.raises(ConfigError, match="topic.layer"):
        _tiny(topic={"layer": 5})
    headless = _tiny(topic={"num_topics": 0}, num_classes=[])
    assert not [k for k in headless.state_dict() if not k.startswith("hubert.")]
    with pytest.raises(ConfigError, match="no topic head"):
        headless.predict_topic(_wave(0.5, 1), 16000)
    with pytest.raises(ConfigError, match="no prediction head"):
        headless(padded, lengths, labels, label_lengths)


def test_zoo_format_round_trip_is_bit_identical(tmp_path):
    model = zoo.load("hubertopic-tiny", pretrained=False)
    folder = model.save_pretrained(tmp_path / "tiny")
    loaded = zoo.load(str(folder))
    assert isinstance(loaded, HubertopicModel) and loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    wave = _wave(0.8, 11)
    assert torch.equal(model.predict_topic(wave, 16000), loaded.predict_topic(wave, 16000))


def test_inference_apis_ignore_train_mode_and_restore_it(tmp_path):
    """Dropout (0.1) runs in train mode; extract_features and predict_topic switch it off and restore the flag."""
    import soundfile as sf

    model = zoo.load("hubertopic-tiny", pretrained=False, encoder={"hidden_dropout": 0.3})
    wave = _wave(1.0, 12)
    expected, _ = model.extract_features(wave, 16000)
    topics = model.predict_topic(wave, 16000)
    model.train()
    first, _ = model.extract_features(wave, 16000)
    second, _ = model.extract_features(wave, 16000)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(first, second) and torch.equal(first, expected) and not first.requires_grad
    assert torch.equal(model.predict_topic(wave, 16000), topics) and model.training
    # a path gives what its samples give
    sf.write(tmp_path / "x.wav", wave.numpy(), 16000, subtype="FLOAT")
    assert torch.equal(model.extract_features(str(tmp_path / "x.wav"))[0], expected)
    assert torch.equal(model.predict_topic([tmp_path / "x.wav"])[0], topics)
