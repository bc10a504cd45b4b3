"""`zoo.load('sylber-base')` end to end from a loopback Hub holding the official layout; push/pull round trip."""
from __future__ import annotations

import io

import pytest
import torch
import transformers

import zoo
from zoo.speech.sylber.builder import make_config
from zoo.speech.sylber.model import znorm


def _wave(seconds: float, seed: int) -> torch.Tensor:
    return 0.1 * torch.randn(int(16000 * seconds), generator=torch.Generator().manual_seed(seed))


def test_load_sylber_base_from_the_official_repo(loopback_hub):
    # A random-init 9-layer transformers HubertModel with the hard-coded base config, saved as the
    # official sylber.ckpt (a plain state dict) at cheoljun95/sylber.
    torch.manual_seed(0)
    official = transformers.HubertModel(transformers.HubertConfig(**make_config("base")["encoder"])).eval()
    buffer = io.BytesIO()
    torch.save(official.state_dict(), buffer)
    loopback_hub.add_file("cheoljun95/sylber", "sylber.ckpt", buffer.getvalue())
    del buffer

    model = zoo.load("sylber-base")
    assert model.family == "sylber" and model.card_name == "sylber-base" and not model.training
    assert model.device.type == "cpu"
    wave = _wave(1.0, 1)
    with torch.no_grad():
        ours = model(wave, 16000)
        reference = official(znorm(wave)[None]).last_hidden_state[0]
    assert ours.shape == (49, 768)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    result = model.segment(wave, 16000)
    assert result.hidden_states.shape == (49, 768) and result.tokens is None


def test_push_and_load_round_trip_with_codebook(loopback_hub, tmp_path):
    torch.manual_seed(2)
    model = zoo.load("sylber-tiny", pretrained=False, norm_threshold=0.0)
    model.attach_codebook(torch.randn(9, 64))
    commit = model.push_to_hub("alice/sylber-tiny-demo")
    assert commit
    pulled = zoo.load("hf-hub:alice/sylber-tiny-demo")
    assert pulled.num_tokens == 9 and torch.equal(pulled.codebook, model.codebook)
    waves = [_wave(0.9, 3), _wave(0.5, 4)]
    for ours, theirs in zip(model.segment(waves, 16000), pulled.segment(waves, 16000)):
        assert torch.equal(ours.hidden_states, theirs.hidden_states)
        assert torch.equal(ours.frames, theirs.frames) and torch.equal(ours.tokens, theirs.tokens)


def test_offline_without_cache_is_a_clear_error(hub_offline):
    with pytest.raises(zoo.errors.WeightsNotAvailableError):
        zoo.load("sylber-base")
