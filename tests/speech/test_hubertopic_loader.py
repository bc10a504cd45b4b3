"""Upstream HuBERT checkpoints (transformers and fairseq layouts) load strictly and give the same outputs."""
from __future__ import annotations

import argparse
import io

import pytest
import torch
import transformers
from safetensors.torch import save_file

import zoo
from zoo.errors import CheckpointFormatError, CheckpointKeysError
from zoo.models.checkpoints import hf_to_fairseq_hubert
from zoo.speech.hubertopic import loader
from zoo.speech.hubertopic.builder import make_config


def _tiny_config(**overrides) -> dict:
    return make_config("tiny", num_classes=[], topic={"num_topics": 0}, **overrides)


def _transformers_model(config: dict) -> transformers.HubertModel:
    torch.manual_seed(0)
    return transformers.HubertModel(transformers.HubertConfig(**config["encoder"])).eval()


def _wave(seconds: float = 1.0, seed: int = 1) -> torch.Tensor:
    return 0.1 * torch.randn(int(16000 * seconds), generator=torch.Generator().manual_seed(seed))


def _same_features(model, reference: transformers.HubertModel) -> None:
    wave = _wave()
    with torch.no_grad():
        ours, _ = model.extract_features(wave, 16000)
        theirs = reference(wave[None], output_hidden_states=True).hidden_states
    for layer, expected in enumerate(theirs):
        torch.testing.assert_close(ours[layer], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("suffix", ["bin", "safetensors"])
def test_transformers_layout_loads_strictly_and_matches(tmp_path, suffix):
    config = _tiny_config()
    reference = _transformers_model(config)
    path = tmp_path / f"model.{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    torch.save(state, path) if suffix == "bin" else save_file(state, str(path))
    model = loader.load(str(path), config).eval()
    _same_features(model, reference)


def test_task_model_prefix_is_stripped_and_a_foreign_head_is_listed(tmp_path):
    config = _tiny_config()
    reference = _transformers_model(config)
    prefixed = {f"hubert.{k}": v for k, v in reference.state_dict().items()}
    torch.save(prefixed, tmp_path / "prefixed.bin")
    _same_features(loader.load(str(tmp_path / "prefixed.bin"), config).eval(), reference)
    prefixed["lm_head.weight"] = torch.zeros(32, 64)
    torch.save(prefixed, tmp_path / "ctc.bin")
    with pytest.raises(CheckpointKeysError, match="lm_head.weight"):
        loader.load(str(tmp_path / "ctc.bin"), config)


def test_fairseq_layout_with_pickled_config_loads_without_importing_code(tmp_path):
    # fairseq's hubert_base_ls960.pt: weights under "model" with fairseq names, a 504-row label
    # embedding (500 units + 4 dictionary symbols), and the training args as a pickled object.
    config = _tiny_config()
    reference = _transformers_model(config)
    heads = {"label_embs_concat": torch.randn(504, 32), "final_proj.weight": torch.randn(32, 64),
             "final_proj.bias": torch.randn(32)}
    weights = hf_to_fairseq_hubert(reference.state_dict(), heads)
    assert "post_extract_proj.weight" in weights and "encoder.pos_conv.0.weight_g" in weights
    checkpoint = {"model": weights, "args": argparse.Namespace(label_rate=50, final_dim=32), "optimizer_history": []}
    torch.save(checkpoint, tmp_path / "hubert_base_ls960.pt")
    with pytest.raises(Exception):  # weights_only refuses the Namespace; the loader must not need it
        torch.load(tmp_path / "hubert_base_ls960.pt", weights_only=True)
    model = loader.load(str(tmp_path / "hubert_base_ls960.pt"), make_config("tiny")).eval()
    assert model.config["num_classes"] == [504] and model.topic_head is None
    assert torch.equal(model.label_embs_concat, heads["label_embs_concat"])
    assert torch.equal(model.final_proj.weight, heads["final_proj.weight"])
    _same_features(model, reference)


def test_a_wrong_checkpoint_lists_the_bad_keys(tmp_path):
    config = _tiny_config()
    state = dict(_transformers_model(config).state_dict())
    state["encoder.layers.0.attention.q_proj.weight_renamed"] = state.pop("encoder.layers.0.attention.q_proj.weight")
    torch.save(state, tmp_path / "bad.bin")
    with pytest.raises(CheckpointKeysError) as info:
        loader.load(str(tmp_path / "bad.bin"), config)
    message = str(info.value)
    assert "encoder.layers.0.attention.q_proj.weight" in message and "weight_renamed" in message
    # A checkpoint of another width is a mismatch listed by key, not a crash.
    wide = make_config("tiny", num_classes=[], topic={"num_topics": 0}, encoder={"hidden_size": 32})
    torch.save(_transformers_model(wide).state_dict(), tmp_path / "wide.bin")
    with pytest.raises(CheckpointKeysError, match="feature_projection.projection.weight"):
        loader.load(str(tmp_path / "wide.bin"), config)
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointFormatError, match="neither a transformers HubertModel"):
        loader.load(str(tmp_path / "other.bin"), config)


def test_load_encoder_keeps_the_pretraining_heads(tmp_path):
    reference = _transformers_model(_tiny_config())
    torch.save(reference.state_dict(), tmp_path / "hubert.bin")
    torch.manual_seed(3)
    model = zoo.load("hubertopic-tiny", pretrained=False)
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("hubert.")}
    assert loader.load_encoder(model, tmp_path / "hubert.bin") == "transformers"
    for key, value in heads.items():
        assert torch.equal(model.state_dict()[key], value)
    _same_features(model.eval(), reference)


def test_hubert_base_card_loads_the_upstream_transformers_weights(loopback_hub):
    config = make_config("base", num_classes=[], topic={"num_topics": 0})
    reference = _transformers_model(config)
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    loopback_hub.add_file("facebook/hubert-base-ls960", "pytorch_model.bin", buffer.getvalue())
    del buffer
    model = zoo.load("hubert-base")
    assert model.card_name == "hubert-base" and model.config["num_classes"] == []
    wave = _wave(0.6, 2)
    with torch.no_grad():
        ours, lengths = model.extract_features(wave, 16000, layer=6)
        theirs = reference(wave[None], output_hidden_states=True).hidden_states[6]
    assert lengths.tolist() == [29]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
