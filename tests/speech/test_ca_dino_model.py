"""CA-DINO model API: embed / score, variable-length batches, bad input, zoo format round trip."""
import pytest
import torch

import zoo
from zoo.errors import AudioInputError, WeightsNotAvailableError
from zoo.speech.ca_dino.builder import build, make_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build(make_config("tiny"))
    for module in m.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return m.eval()


def test_registry_and_cards():
    from zoo.registry import get_family

    family = get_family("ca-dino")
    assert set(family.sizes) == {"ecapa512", "ecapa1024", "tiny"}
    assert family.trainer == "zoo.speech.ca_dino.trainer:CADinoTrainer"
    m = zoo.load("ca-dino-tiny", pretrained=False)
    assert m.family == "ca-dino" and m.projection_head is not None
    with pytest.raises(WeightsNotAvailableError):
        zoo.load("ca-dino-ecapa512")  # WeSpeaker's DINO zip is not on the Hub (card notes)
    supervised = zoo.load("wespeaker-ecapa-tdnn512", pretrained=False)
    assert supervised.projection_head is None and not any(k.startswith("bn2.") for k in supervised.state_dict())


def test_embed_shapes_and_batch_invariance(model):
    torch.manual_seed(1)
    clips = [torch.randn(16000) * 0.1, torch.randn(11000) * 0.1, torch.randn(9000) * 0.1]
    batched = model.embed(clips, 16000)
    assert batched.shape == (3, 192)
    for i, clip in enumerate(clips):
        assert torch.allclose(model.embed(clip, 16000)[0], batched[i], atol=1e-4)
    # a padded [B, T] batch with its lengths: the same embeddings as the clips one by one
    padded = torch.zeros(3, 16000)
    for i, clip in enumerate(clips):
        padded[i, :clip.numel()] = clip
    assert torch.allclose(model.embed(padded, 16000, lengths=[16000, 11000, 9000]), batched, atol=1e-4)
    # without lengths a 2-D array is one multi-channel clip, mixed down (never guessed to be a batch)
    stereo = torch.stack([clips[0], clips[0] * 0.5])
    assert torch.allclose(model.embed(stereo, 16000), model.embed(clips[0] * 0.75, 16000), atol=1e-5)
    # int16 PCM and numpy input: scaled by 1 / 32768
    pcm = (clips[1] * 32768).round().clamp(-32768, 32767).to(torch.int16)
    assert torch.allclose(model.embed(pcm.numpy(), 16000), model.embed(pcm.float() / 32768, 16000), atol=1e-6)


def test_resampling_and_short_clips_are_repeat_padded(model):
    clip = torch.randn(800) * 0.1  # 50 ms: shorter than min_embed_seconds, tiled, not an error
    tiled = clip.repeat(11)[:8000]
    assert torch.allclose(model.embed(clip, 16000), model.embed(tiled, 16000), atol=1e-5)
    assert model.embed(torch.randn(8000) * 0.1, 8000).shape == (1, 192)


def test_empty_audio_is_an_error(model):
    with pytest.raises(AudioInputError):
        model.embed(torch.zeros(0), 16000)
    with pytest.raises(AudioInputError):
        model.embed([], 16000)


def test_score_is_cosine(model):
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert model.score(a, b).tolist() == pytest.approx([2 ** -0.5, 0.0])
    clip = torch.randn(16000) * 0.1
    assert model.score(clip, clip, sample_rate=16000).item() == pytest.approx(1.0, abs=1e-5)


def test_forward_multi_crop_and_classifier():
    m = build(make_config("tiny", num_classes=7)).train()
    out = m([torch.randn(4, 300, 80), torch.randn(8, 200, 80)])
    assert out["embedding"].shape == (12, 192)
    assert out["head"].shape == (12, 512)
    assert out["cosine"].shape == (12, 7) and out["cosine"].abs().max() <= 1 + 1e-5
    assert "projection.weight" in m.state_dict()


def test_zoo_format_round_trip(tmp_path, model):
    model.save_pretrained(tmp_path / "out")
    again = zoo.load(str(tmp_path / "out"))
    clip = torch.randn(12000) * 0.1
    assert torch.equal(again.embed(clip, 16000), model.embed(clip, 16000))
    assert not again.projection_head.last_layer.weight_g.requires_grad


def test_embed_in_eval_mode_restores_the_flag():
    torch.manual_seed(2)
    m = build(make_config("tiny"))
    for module in m.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_var.uniform_(0.5, 2.0)
    clip = torch.randn(12000) * 0.1
    m.train()
    m.projection_head.eval()  # a frozen part inside a training model keeps its own flag
    first = m.embed(clip, 16000)
    assert m.training and not m.projection_head.training  # the caller's flags are back
    assert any(mod.training for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm1d))
    assert torch.equal(first, m.embed(clip, 16000))  # BatchNorm used its running statistics both times
    m.eval()
    assert torch.equal(first, m.embed(clip, 16000)) and not m.training


def test_utterance_mean_joins_the_envelope_to_the_pooled_statistics(monkeypatch):
    m = build(make_config("tiny", utterance_mean=True)).eval()
    assert m.bn.weight.shape == (2 * 96 + 80,) and m.linear.weight.shape == (192, 2 * 96 + 80)
    seen = {}

    def capture(feats, lengths=None, extra=None):
        seen.update(feats=feats.clone(), extra=extra.clone())
        return None, torch.zeros(feats.shape[0], 192)

    monkeypatch.setattr(m, "ecapa_forward", capture)
    t = torch.arange(4.0).view(1, 4, 1)
    f = torch.arange(80.0).view(1, 1, 80)
    feats = (t + 0.5 * f).repeat(2, 1, 1)       # frame t, bin f: t + f / 2
    feats[1, 3] = 100.0                          # a padded frame of row 1 (3 valid frames)
    m.encode(feats, torch.tensor([4, 3]))
    # utterance means 1.5 + f/2 and 1 + f/2; less their average over the 80 bins: f/2 - 19.75 for both
    assert torch.equal(seen["extra"], (0.5 * torch.arange(80.0) - 19.75).repeat(2, 1))
    # CMN for the trunk: row 0 frames t - 1.5, row 1 frames t - 1 with its padded frame zeroed
    expected = torch.stack([(torch.arange(4.0) - 1.5), torch.tensor([-1.0, 0.0, 1.0, 0.0])]).unsqueeze(-1)
    assert torch.equal(seen["feats"], expected.expand(2, 4, 80))


def test_utterance_mean_front_end_and_gain_invariance():
    from zoo.speech.ca_dino.fbank import kaldi_fbank

    torch.manual_seed(3)
    m = build(make_config("tiny", utterance_mean=True))
    for module in m.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_var.uniform_(0.5, 2.0)
    clip = torch.randn(12000) * 0.1
    feats, counts = m.fbank(clip.view(1, -1))
    assert torch.equal(feats, kaldi_fbank(clip.view(1, -1), cmn=False)[0])  # encode() does the CMN
    # a gain is the same constant in every log-mel bin: removed from the frames (CMN) and the envelope (level)
    assert torch.allclose(m.embed(clip, 16000), m.embed(clip * 4, 16000), atol=1e-5)
    with pytest.raises(ValueError, match="extra_pool_dim=80"):
        m.ecapa_forward(feats)  # the widened layers need the envelope


def test_global_cmvn_statistics_on_hand_made_frames():
    from zoo.errors import ConfigError
    from zoo.speech.ca_dino.fbank import GlobalCMVN

    cmvn = GlobalCMVN(2)
    feats = torch.tensor([[[1.0, 10.0], [3.0, 10.0], [5.0, 30.0]],
                          [[7.0, 20.0], [9.0, 30.0], [100.0, 100.0]]])  # row 1: its third frame is padding
    counts = torch.tensor([3, 2])
    assert torch.equal(cmvn(feats, counts)[0], feats[0])  # unfitted: identity
    cmvn.fit([(feats[:1], counts[:1]), (feats[1:], counts[1:])])  # batches are summed; padding ignored
    # bin 0: 1, 3, 5, 7, 9 -> mean 5, variance 8; bin 1: 10, 10, 30, 20, 30 -> mean 20, variance 80
    assert torch.equal(cmvn.mean, torch.tensor([5.0, 20.0]))
    assert torch.allclose(cmvn.istd, torch.tensor([8.0, 80.0]).rsqrt())
    out = cmvn(feats, counts)
    assert torch.allclose(out[0, 0], torch.tensor([-4 / 8 ** 0.5, -10 / 80 ** 0.5]))
    assert torch.equal(out[1, 2], torch.zeros(2))  # padded frames stay zero
    constant = GlobalCMVN(2).fit([(torch.ones(1, 3, 2), torch.tensor([3]))])
    assert torch.equal(constant.istd, torch.full((2,), 1e5))  # std floored at 1e-5, no division by zero
    with pytest.raises(ConfigError, match="at least one frame"):
        GlobalCMVN(2).fit([])


def test_global_cmvn_option_in_the_model(tmp_path):
    from zoo.errors import ConfigError
    from zoo.speech.ca_dino.fbank import kaldi_fbank

    assert build(make_config("tiny")).global_cmvn is None  # default: WeSpeaker's front end, no buffers
    torch.manual_seed(4)
    m = build(make_config("tiny", fbank={"global_cmvn": True, "cmn": False}))
    assert {"global_cmvn.mean", "global_cmvn.istd"} <= set(m.state_dict())
    clips = [torch.randn(12000) * 0.1, torch.randn(9000) * 0.02]
    m.fit_global_cmvn(clips)
    raw = [kaldi_fbank(c.view(1, -1), cmn=False)[0][0] for c in clips]
    frames = torch.cat(raw).double()
    assert torch.allclose(m.global_cmvn.mean, frames.mean(0).float(), atol=1e-5)
    assert torch.allclose(m.global_cmvn.istd, frames.std(0, unbiased=False).float().reciprocal(), rtol=1e-5)
    feats, counts = m.fbank(clips[1].view(1, -1))
    assert torch.allclose(feats[0], (raw[1] - m.global_cmvn.mean) * m.global_cmvn.istd)
    # without CMN the louder clip stays louder in every bin after normalisation (the envelope is kept)
    loud, quiet = (m.fbank(c.view(1, -1))[0][0].mean(0) for c in clips)
    assert bool((loud > quiet).all())
    m.save_pretrained(tmp_path / "out")
    again = zoo.load(str(tmp_path / "out"))
    assert torch.equal(again.global_cmvn.istd, m.global_cmvn.istd)
    assert torch.equal(again.embed(clips[0], 16000), m.embed(clips[0], 16000))
    with pytest.raises(ConfigError, match="global_cmvn=true"):
        build(make_config("tiny")).fit_global_cmvn(clips)


def test_embed_asks_for_the_rate_of_arrays_and_reads_it_from_files(model, tmp_path):
    """Arrays carry no rate: embed used to assume 16 kHz; a file path carries its own."""
    import numpy as np
    import soundfile as sf

    torch.manual_seed(7)
    clip = (torch.randn(12000) * 0.1).clamp(-1, 1)
    with pytest.raises(AudioInputError, match="sample rate"):
        model.embed(clip)
    sf.write(tmp_path / "clip.wav", (clip.numpy() * 32767).astype(np.int16), 8000, subtype="PCM_16")
    from_file = model.embed(str(tmp_path / "clip.wav"))
    samples, rate = sf.read(tmp_path / "clip.wav", dtype="float32")
    assert rate == 8000
    assert torch.equal(from_file, model.embed(samples, 8000))
    assert torch.allclose(model.score(str(tmp_path / "clip.wav"), tmp_path / "clip.wav"), torch.ones(1), atol=1e-6)
