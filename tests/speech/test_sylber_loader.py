"""Official sylber.ckpt loading: both weight-norm spellings, strict keys, other official layouts, folders, convert."""
from __future__ import annotations

import pickle

import pytest
import torch
import transformers

import zoo
from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError, ZooError
from zoo.speech.sylber.builder import make_config
from zoo.speech.sylber.loader import load
from zoo.speech.sylber.model import znorm

POS_G = "encoder.pos_conv_embed.conv.weight_g"
POS_V = "encoder.pos_conv_embed.conv.weight_v"
POS_0 = "encoder.pos_conv_embed.conv.parametrizations.weight.original0"
POS_1 = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"


def official_model(size: str = "tiny", seed: int = 0) -> transformers.HubertModel:
    """A transformers HubertModel with the size's hard-coded config, as the official code builds it."""
    torch.manual_seed(seed)
    model = transformers.HubertModel(transformers.HubertConfig(**make_config(size)["encoder"]))
    with torch.no_grad():  # make every parameter matter (random, not the init constants)
        for name, param in model.named_parameters():
            if "layer_norm" in name or name.endswith("masked_spec_embed"):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def legacy_spelling(state: dict) -> dict:
    """The same weights with the pre-parametrization weight_norm names (weight_g / weight_v)."""
    state = dict(state)
    state[POS_G] = state.pop(POS_0)
    state[POS_V] = state.pop(POS_1)
    return state


def reference_features(hf_model, wave: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(znorm(wave)[None]).last_hidden_state[0]


@pytest.fixture(scope="module")
def official():
    model = official_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert POS_0 in state and "masked_spec_embed" in state  # transformers 5 writes the parametrization form
    return model, state


@pytest.fixture()
def wave():
    return torch.randn(12000, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("spelling", ["parametrizations", "weight_g"])
def test_both_weight_norm_spellings_load_and_match_transformers(tmp_path, official, wave, spelling):
    hf_model, state = official
    if spelling == "weight_g":
        state = legacy_spelling(state)
    path = tmp_path / "sylber.ckpt"
    torch.save(state, path)
    model = load(str(path), make_config("tiny")).eval()
    with torch.no_grad():
        ours = model(wave, 16000)
    torch.testing.assert_close(ours, reference_features(hf_model, wave), atol=1e-5, rtol=1e-5)


def test_missing_and_unexpected_keys_are_listed(tmp_path, official):
    _, state = official
    broken = dict(state)
    del broken["encoder.layers.1.attention.k_proj.weight"]
    broken["encoder.layers.7.attention.k_proj.weight"] = torch.zeros(3)
    path = tmp_path / "broken.ckpt"
    torch.save(broken, path)
    with pytest.raises(CheckpointKeysError) as info:
        load(str(path), make_config("tiny"))
    assert info.value.missing == ["encoder.layers.1.attention.k_proj.weight"]
    assert info.value.unexpected == ["encoder.layers.7.attention.k_proj.weight"]
    assert "encoder.layers.1.attention.k_proj.weight" in str(info.value)


def test_the_architecture_comes_from_the_checkpoint(tmp_path, official):
    """The file decides the size: a 3-layer checkpoint converts as 3 layers whatever size was asked."""
    three = transformers.HubertModel(transformers.HubertConfig(**make_config("tiny", encoder={
        "num_hidden_layers": 3, "intermediate_size": 96})["encoder"])).eval()
    torch.save(three.state_dict(), tmp_path / "three.ckpt")
    model = load(str(tmp_path / "three.ckpt"), make_config("tiny"))
    encoder = model.config["encoder"]
    assert encoder["num_hidden_layers"] == 3 and encoder["intermediate_size"] == 96
    wave = torch.randn(8000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(wave, 16000), reference_features(three, wave), atol=1e-5, rtol=1e-5)
    # a stray layer index is not a size: it is reported with the key
    _, state = official
    torch.save({**state, "encoder.layers.5.final_layer_norm.bias": torch.zeros(64)}, tmp_path / "stray.ckpt")
    with pytest.raises(CheckpointKeysError) as info:
        load(str(tmp_path / "stray.ckpt"), make_config("tiny"))
    assert info.value.unexpected == ["encoder.layers.5.final_layer_norm.bias"] and not info.value.missing


def test_without_masked_spec_embed_the_model_has_none(tmp_path, official):
    # transformers' HubertModel has masked_spec_embed exactly when mask_time_prob > 0: follow the weights.
    _, state = official
    path = tmp_path / "nomask.ckpt"
    torch.save({k: v for k, v in state.items() if k != "masked_spec_embed"}, path)
    model = load(str(path), make_config("tiny"))
    assert "hubert.masked_spec_embed" not in model.state_dict() and model.config["encoder"]["mask_time_prob"] == 0.0


def test_a_transformers_folder_converts_with_its_config_json(tmp_path, official, wave):
    """What `save_pretrained` writes (config.json + model.safetensors), or a Hub snapshot of it."""
    from zoo.cli import main

    hf_model, _ = official
    hf_model.save_pretrained(tmp_path / "snapshot")
    assert {p.name for p in (tmp_path / "snapshot").iterdir()} == {"config.json", "model.safetensors"}
    # the default size (base, 9 x 768) is not the folder's: no override is needed
    assert main(["convert", "sylber", str(tmp_path / "snapshot"), str(tmp_path / "out")]) == 0
    model = zoo.load(str(tmp_path / "out"))
    assert model.config["encoder"]["hidden_size"] == 64 and model.config["encoder"]["num_hidden_layers"] == 2
    torch.testing.assert_close(model(wave, 16000), reference_features(hf_model, wave), atol=1e-5, rtol=1e-5)
    # a folder holding the official file name
    (tmp_path / "hub").mkdir()
    torch.save(hf_model.state_dict(), tmp_path / "hub" / "sylber.ckpt")
    torch.save({"other": torch.zeros(1)}, tmp_path / "hub" / "synthesis_sylber.ckpt")
    assert load(str(tmp_path / "hub"), make_config("tiny")).config["encoder"]["num_hidden_layers"] == 2
    # without a config.json, a width that no released HuBERT has leaves the head count unknown: asked, not guessed
    with pytest.raises(CheckpointFormatError, match="width of 64.*attention heads.*config.json"):
        load(str(tmp_path / "hub"), make_config("base"))
    (tmp_path / "hub" / "sylber.ckpt").unlink()
    torch.save({"other": torch.zeros(1)}, tmp_path / "hub" / "more.ckpt")
    with pytest.raises(CheckpointFormatError, match="several checkpoint files"):
        load(str(tmp_path / "hub"), make_config("tiny"))


def test_lightning_and_ema_layouts(tmp_path, official, wave):
    hf_model, state = official
    expected = reference_features(hf_model, wave)
    lightning = {"state_dict": {**{f"net.speech_model.{k}": v for k, v in state.items()},
                                "net.thresholder.signal_mean": torch.ones(1)}, "epoch": 3}
    torch.save(lightning, tmp_path / "last.ckpt")
    torch.save({"ema": state}, tmp_path / "ema_dict.ckpt")
    for name in ("last.ckpt", "ema_dict.ckpt"):
        model = load(str(tmp_path / name), make_config("tiny")).eval()
        torch.testing.assert_close(model(wave, 16000), expected, atol=1e-5, rtol=1e-5)
    torch.save({"state_dict": {"net.other.weight": torch.ones(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointFormatError):
        load(str(tmp_path / "other.ckpt"), make_config("tiny"))


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_never_unpickles_code(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        pickle.dump({"encoder.layer_norm.weight": _Payload()}, handle)
    with pytest.raises(ZooError):
        load(str(path), make_config("tiny"))
    assert "code ran" not in capsys.readouterr().out


def test_codebook_config_rejected_for_official(tmp_path, official):
    _, state = official
    torch.save(state, tmp_path / "s.ckpt")
    with pytest.raises(ConfigError, match="num_tokens"):
        load(str(tmp_path / "s.ckpt"), make_config("tiny", num_tokens=8))


def test_zoo_convert_writes_zoo_format(tmp_path, official, wave):
    from zoo.cli import main

    hf_model, state = official
    torch.save(legacy_spelling(state), tmp_path / "sylber.ckpt")
    out = tmp_path / "converted"
    assert main(["convert", "sylber", str(tmp_path / "sylber.ckpt"), str(out), "--size", "tiny"]) == 0
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    model = zoo.load(str(out))
    with torch.no_grad():
        torch.testing.assert_close(model(wave, 16000), reference_features(hf_model, wave), atol=1e-5, rtol=1e-5)
    # A file that is no Sylber/HuBERT checkpoint is reported in one line (exit status 2).
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.ckpt")
    assert main(["convert", "sylber", str(tmp_path / "other.ckpt"), str(tmp_path / "bad")]) == 2
    assert main(["convert", "sylber", str(tmp_path / "missing.ckpt"), str(tmp_path / "bad")]) == 2
