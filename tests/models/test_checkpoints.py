import argparse
import collections
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from zoo.errors import CheckpointFormatError, CheckpointKeysError
from zoo.models.checkpoints import (
    ForeignObject, fairseq_hubert_to_hf, find_state_dict, hf_to_fairseq_hubert, normalize_weight_norm_keys,
    read_checkpoint, remap_keys,
)
from zoo.hub import load_state_dict_strict as strict_load
from zoo.models.hubert import HubertConfig, HubertModel

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=[16] * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)

# Real fairseq HuBERT key names for a 2-layer model (facebookresearch/fairseq:fairseq/models/hubert/hubert.py).
FAIRSEQ_KEYS = {
    "feature_extractor.conv_layers.0.0.weight", "feature_extractor.conv_layers.0.2.weight",
    "feature_extractor.conv_layers.0.2.bias", "layer_norm.weight", "layer_norm.bias", "post_extract_proj.weight",
    "post_extract_proj.bias", "mask_emb", "encoder.pos_conv.0.bias", "encoder.pos_conv.0.weight_g",
    "encoder.pos_conv.0.weight_v", "encoder.layer_norm.weight", "encoder.layer_norm.bias",
    *{f"feature_extractor.conv_layers.{i}.0.weight" for i in range(1, 7)},
    *{f"encoder.layers.{n}.{part}.{p}" for n in range(2) for p in ("weight", "bias")
      for part in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj",
                   "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")},
}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return HubertModel(HubertConfig(**TINY)).eval()


def fairseq_state(model):
    extras = {"label_embs_concat": torch.randn(10, 8), "final_proj.weight": torch.randn(8, 32),
              "final_proj.bias": torch.zeros(8)}
    return hf_to_fairseq_hubert(model.state_dict(), extras)


def test_fairseq_layout_has_the_real_key_names():
    state = fairseq_state(tiny_model())
    assert set(state) == FAIRSEQ_KEYS | {"label_embs_concat", "final_proj.weight", "final_proj.bias"}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_fairseq_checkpoint_with_foreign_objects_loads_without_importing_them(tmp_path, monkeypatch, zip_format):
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    marker = tmp_path / "executed"
    (module_dir / "throwaway_cfg.py").write_text(textwrap.dedent(f"""
        class TrainingConfig:
            def __init__(self):
                self.lr = 5e-4
                self.label_rate = 50
        class Payload:
            def __reduce__(self):
                return (open, ({str(marker)!r}, "w"))
    """))
    monkeypatch.syspath_prepend(str(module_dir))
    import throwaway_cfg

    model = tiny_model()
    checkpoint = {
        "args": argparse.Namespace(arch="hubert", label_rate=50),
        "cfg": throwaway_cfg.TrainingConfig(),
        "payload": throwaway_cfg.Payload(),
        "model": fairseq_state(model),
        "optimizer_history": [collections.OrderedDict(lr=1.0)],
    }
    path = tmp_path / "hubert_base_ls960.pt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    # The module is gone before loading: nothing may import it.
    del sys.modules["throwaway_cfg"]
    (module_dir / "throwaway_cfg.py").unlink()
    with pytest.raises(Exception):
        torch.load(path, map_location="cpu", weights_only=True)

    loaded = read_checkpoint(path)
    assert "throwaway_cfg" not in sys.modules and not marker.exists()
    assert isinstance(loaded["cfg"], ForeignObject) and loaded["cfg"].lr == 5e-4
    assert isinstance(loaded["args"], ForeignObject) and loaded["args"].label_rate == 50
    assert isinstance(loaded["payload"], ForeignObject)
    encoder, extras = fairseq_hubert_to_hf(loaded)
    assert set(extras) == {"label_embs_concat", "final_proj.weight", "final_proj.bias"}
    assert torch.equal(extras["label_embs_concat"], checkpoint["model"]["label_embs_concat"])
    fresh = HubertModel(HubertConfig(**TINY)).eval()
    strict_load(fresh, encoder, str(path))
    wav = torch.randn(1, 2000)
    with torch.no_grad():
        assert torch.equal(fresh(wav).last_hidden_state, model(wav).last_hidden_state)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_lightning_checkpoint_reads_tensors_bit_identical_without_importing(tmp_path, monkeypatch, zip_format):
    """Lightning's layout: ``state_dict`` with a ``net.`` prefix next to ``hyper_parameters`` (an
    ``AttributeDict``, a dict subclass filled by SETITEMS), callbacks and optimizer states."""
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    (module_dir / "throwaway_lightning.py").write_text(textwrap.dedent("""
        class AttributeDict(dict):
            def __getattr__(self, key):
                return self[key]
    """))
    monkeypatch.syspath_prepend(str(module_dir))
    import throwaway_lightning

    torch.manual_seed(0)
    base = torch.randn(6, 8)
    weights = collections.OrderedDict([
        ("net.w", torch.randn(4, 3)), ("net.view", base[1:4, ::2]), ("net.base", base),
        ("net.bf16", torch.randn(5).to(torch.bfloat16)), ("net.steps", torch.arange(7)),
        ("net.param", torch.nn.Parameter(torch.randn(3))), ("net.empty", torch.zeros(0, 4))])
    checkpoint = {"state_dict": weights, "epoch": 4, "global_step": 1000, "pytorch-lightning_version": "2.0.1",
                  "hyper_parameters": throwaway_lightning.AttributeDict(lr=1e-4, sizes=[1, 2]),
                  "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(4, 3)}}}]}
    path = tmp_path / "synthesis_sylber.ckpt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    del sys.modules["throwaway_lightning"]
    (module_dir / "throwaway_lightning.py").unlink()

    loaded = read_checkpoint(path)
    assert "throwaway_lightning" not in sys.modules
    assert isinstance(loaded["hyper_parameters"], ForeignObject)
    assert loaded["hyper_parameters"].items == {"lr": 1e-4, "sizes": [1, 2]}
    state = find_state_dict(loaded, str(path))
    assert list(state) == list(weights)
    for key, value in weights.items():
        assert state[key].dtype == value.dtype and state[key].stride() == value.stride()
        assert torch.equal(state[key], value), key
    # views keep sharing their storage, as torch.load gives them
    assert state["net.view"].untyped_storage().data_ptr() == state["net.base"].untyped_storage().data_ptr()
    assert torch.equal(loaded["optimizer_states"][0]["state"][0]["exp_avg"],
                       checkpoint["optimizer_states"][0]["state"][0]["exp_avg"])


def test_wrong_fairseq_key_is_listed():
    state = fairseq_state(tiny_model())
    state["encoder.layers.0.self_attn.qkv_proj.weight"] = state.pop("encoder.layers.0.self_attn.q_proj.weight")
    with pytest.raises(CheckpointKeysError) as info:
        fairseq_hubert_to_hf(state)
    assert info.value.unexpected == ["encoder.layers.0.self_attn.qkv_proj.weight"]
    assert "qkv_proj" in str(info.value)


def test_strict_load_lists_missing_unexpected_and_mismatched():
    model = tiny_model()
    state = dict(model.state_dict())
    state.pop("encoder.layers.1.final_layer_norm.bias")
    state["encoder.layers.9.fc1.weight"] = torch.zeros(1)
    state["feature_projection.projection.weight"] = torch.zeros(32, 17)
    with pytest.raises(CheckpointKeysError) as info:
        strict_load(tiny_model(1), state, "my.ckpt")
    err = info.value
    assert err.missing == ["encoder.layers.1.final_layer_norm.bias"]
    assert err.unexpected == ["encoder.layers.9.fc1.weight"]
    assert err.mismatched == [("feature_projection.projection.weight", (32, 16), (32, 17))]
    assert "my.ckpt" in str(err)


def test_weight_norm_spellings():
    model = tiny_model()
    state = model.state_dict()
    legacy = normalize_weight_norm_keys(state, prefer="legacy")
    assert "encoder.pos_conv_embed.conv.weight_g" in legacy and "encoder.pos_conv_embed.conv.weight_v" in legacy
    assert not any("parametrizations" in k for k in legacy)
    assert normalize_weight_norm_keys(legacy).keys() == state.keys()
    fresh = tiny_model(3)
    strict_load(fresh, legacy, "legacy spelling")  # accepted: normalised to the module's spelling
    assert torch.equal(fresh.encoder.pos_conv_embed.conv.weight, model.encoder.pos_conv_embed.conv.weight)


def test_remap_keys_templates():
    state = {"layers.3.fc1.weight": 1, "layers.12.fc1.bias": 2, "emb": 3}
    rules = [("layers.{}.fc1.*", "blocks.{}.mlp.in.*"), ("emb", "embedding")]
    assert remap_keys(state, rules) == {"blocks.3.mlp.in.weight": 1, "blocks.12.mlp.in.bias": 2, "embedding": 3}
    with pytest.raises(CheckpointKeysError) as info:
        remap_keys({"other.key": 0, "emb": 1}, rules)
    assert info.value.unexpected == ["other.key"]
    assert remap_keys({"other.key": 0}, rules, strict=False) == {"other.key": 0}
    with pytest.raises(ValueError):
        remap_keys(state, [("layers.{}.x", "y")])


def test_plain_and_safetensors_files(tmp_path):
    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    torch.save(state, tmp_path / "plain.pth")
    save_file(state, str(tmp_path / "model.safetensors"))
    save_file(state, str(tmp_path / "model.bin"))  # sniffed by content, not suffix
    for name in ("plain.pth", "model.safetensors", "model.bin"):
        loaded = read_checkpoint(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    nested = {"state_dict": state, "epoch": 3}
    assert find_state_dict(nested, "x").keys() == state.keys()
    with pytest.raises(CheckpointFormatError):
        find_state_dict({"epoch": 3}, "x")


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors", "foreign"])
def test_truncated_files_raise_format_error(tmp_path, kind):
    state = {"w": torch.randn(64, 64)}
    path = tmp_path / ("model.safetensors" if kind == "safetensors" else "model.pt")
    if kind == "safetensors":
        save_file(state, str(path))
    else:
        payload = {"model": state, "args": argparse.Namespace(a=1)} if kind == "foreign" else state
        torch.save(payload, path, _use_new_zipfile_serialization=kind != "legacy")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointFormatError):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointFormatError):
        read_checkpoint(tmp_path / "list.pt")
