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
    # A width no released HuBERT has, without a config.json: the head count is asked for, not guessed.
    wide = make_config("tiny", num_classes=[], topic={"num_topics": 0}, encoder={"hidden_size": 32})
    torch.save(_transformers_model(wide).state_dict(), tmp_path / "wide.bin")
    with pytest.raises(CheckpointFormatError, match="width of 32.*config.json"):
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


# ----------------------------------------------------------------------------- hubert-large layouts
# facebook/hubert-large-ll60k's config.json (transformers field names) and fairseq's
# hubert_large_ll60k.pt cfg (examples/hubert/config/pretrain/hubert_large_librivox.yaml).
LARGE_CONFIG_JSON = {
    "model_type": "hubert", "architectures": ["HubertModel"], "hidden_size": 1024, "num_hidden_layers": 24,
    "num_attention_heads": 16, "intermediate_size": 4096, "hidden_act": "gelu", "feat_extract_norm": "layer",
    "conv_bias": True, "do_stable_layer_norm": True, "conv_dim": [512] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2], "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16,
    "feat_proj_layer_norm": True, "layer_norm_eps": 1e-5, "mask_time_prob": 0.05, "vocab_size": 32,
}
SMALL_LARGE_LAYOUT = {  # the same layout (layer-norm convs with bias, pre-LN) at a test width
    **LARGE_CONFIG_JSON, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
    "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
}


def _large_layout_model() -> transformers.HubertModel:
    torch.manual_seed(4)
    model = transformers.HubertModel(transformers.HubertConfig(**SMALL_LARGE_LAYOUT)).eval()
    with torch.no_grad():  # make the layer norms and biases matter
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


def test_the_hubert_large_architecture_is_read_off_its_tensor_shapes():
    """A 24-layer, 1024-wide, stable-layer-norm HuBERT (hubert-large) without any config: built on the meta device."""
    from zoo.models.hubert_checkpoints import architecture_from_state_dict

    with torch.device("meta"):
        large = transformers.HubertModel(transformers.HubertConfig(**LARGE_CONFIG_JSON))
    found = architecture_from_state_dict(large.state_dict(), "hubert_large.bin", make_config("base")["encoder"])
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
                "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "do_stable_layer_norm",
                "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "feat_proj_layer_norm"):
        assert found[key] == LARGE_CONFIG_JSON[key], key
    with torch.device("meta"):
        ours = zoo.get_family("hubertopic").build(make_config("base", encoder=found, num_classes=[],
                                                              topic={"num_topics": 0}))
    theirs = {f"hubert.{k}": tuple(v.shape) for k, v in large.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs


def test_a_hubert_large_layout_folder_converts_with_no_override(tmp_path):
    """`zoo convert hubertopic ./folder out`: transformers' save_pretrained output of the large layout."""
    from zoo.cli import main

    reference = _large_layout_model()
    reference.save_pretrained(tmp_path / "hubert-large")
    assert main(["convert", "hubertopic", str(tmp_path / "hubert-large"), str(tmp_path / "out")]) == 0
    model = zoo.load(str(tmp_path / "out"))
    encoder = model.config["encoder"]
    assert encoder["do_stable_layer_norm"] is True and encoder["feat_extract_norm"] == "layer" and encoder["conv_bias"]
    assert model.config["num_classes"] == [] and model.topic_head is None
    _same_features(model, reference)


def _fake_omegaconf(monkeypatch):
    """Classes that pickle under omegaconf's names with omegaconf's state layout (containers keep their
    items in ``_content``, value nodes their value in ``_val``), so a test can write the ``cfg`` of a
    fairseq checkpoint without omegaconf installed."""
    import sys
    import types

    made, modules = {}, {"omegaconf": types.ModuleType("omegaconf")}
    for module, name in (("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
                         ("omegaconf.nodes", "AnyNode"), ("omegaconf.base", "ContainerMetadata"),
                         ("omegaconf.base", "Metadata")):
        fake = modules.setdefault(module, types.ModuleType(module))
        made[name] = type(name, (), {"__module__": module, "__qualname__": name})
        setattr(fake, name, made[name])
    for module, fake in modules.items():
        monkeypatch.setitem(sys.modules, module, fake)

    def node(value, parent):
        if isinstance(value, dict):
            container = made["DictConfig"]()
            container.__dict__.update(_metadata=made["ContainerMetadata"](), _parent=parent, _content={})
            container._content.update({k: node(v, container) for k, v in value.items()})
            return container
        if isinstance(value, list):
            container = made["ListConfig"]()
            container.__dict__.update(_metadata=made["ContainerMetadata"](), _parent=parent, _content=[])
            container._content.extend(node(v, container) for v in value)
            return container
        leaf = made["AnyNode"]()
        leaf.__dict__.update(_val=value, _metadata=made["Metadata"](), _parent=parent)
        return leaf

    return lambda value: node(value, None)


def test_a_fairseq_hubert_large_checkpoint_converts_from_its_cfg(tmp_path, monkeypatch):
    """hubert_large_ll60k.pt's layout: fairseq names (layer-norm convs at conv_layers.N.2.1, conv biases),
    the pretraining head, and the training config as an omegaconf cfg; converted with no override."""
    from zoo.cli import main

    reference = _large_layout_model()
    heads = {"label_embs_concat": torch.randn(504, 48), "final_proj.weight": torch.randn(48, 64),
             "final_proj.bias": torch.randn(48)}
    weights = hf_to_fairseq_hubert(reference.state_dict(), heads)
    weights = {k.replace(".2.weight", ".2.1.weight").replace(".2.bias", ".2.1.bias")
               if k.startswith("feature_extractor.conv_layers.") else k: v for k, v in weights.items()}
    assert "feature_extractor.conv_layers.6.2.1.weight" in weights and "feature_extractor.conv_layers.3.0.bias" in weights
    model_cfg = {"_name": "hubert", "label_rate": 50, "extractor_mode": "layer_norm", "encoder_layers": 2,
                 "encoder_embed_dim": 64, "encoder_ffn_embed_dim": 128, "encoder_attention_heads": 4,
                 "activation_fn": "gelu", "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
                 "encoder_layerdrop": 0.0, "dropout_input": 0.0, "final_dim": 48, "untie_final_proj": True,
                 "layer_norm_first": True, "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
                 "conv_bias": True, "logit_temp": 0.1, "conv_pos": 16, "conv_pos_groups": 4}
    task_cfg = {"_name": "hubert_pretraining", "normalize": True, "sample_rate": 16000, "label_rate": 50,
                "labels": ["km"]}
    cfg = _fake_omegaconf(monkeypatch)({"common": {"seed": 1337}, "model": model_cfg, "task": task_cfg})
    torch.save({"cfg": cfg, "model": weights, "optimizer_history": []}, tmp_path / "hubert_large_ll60k.pt")
    assert main(["convert", "hubertopic", str(tmp_path / "hubert_large_ll60k.pt"), str(tmp_path / "out")]) == 0
    model = zoo.load(str(tmp_path / "out"))
    assert model.config["encoder"]["do_stable_layer_norm"] is True and model.config["normalize"] is True
    assert model.config["num_classes"] == [504] and model.config["pretrain"]["final_dim"] == 48
    assert torch.equal(model.label_embs_concat, heads["label_embs_concat"])
    # normalize=True (fairseq's task setting for large): features of the layer-normed waveform
    wave = _wave()
    ours, _ = model.extract_features(wave, 16000)
    normed = torch.nn.functional.layer_norm(wave, wave.shape)
    with torch.no_grad():
        theirs = reference(normed[None], output_hidden_states=True).hidden_states
    for layer, expected in enumerate(theirs):
        torch.testing.assert_close(ours[layer], expected, atol=1e-5, rtol=1e-5)


def test_fairseq_conv_layer_spec_is_parsed_without_eval():
    from zoo.models.hubert_checkpoints import parse_conv_layers

    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises(CheckpointFormatError, match="conv_feature_layers"):
        parse_conv_layers("__import__('os').system('true')")
