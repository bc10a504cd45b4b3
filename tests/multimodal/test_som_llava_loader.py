"""SoM-LLaVA key converters: the three official layouts at tiny size give the source model's logits."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo.errors import CheckpointFormatError, CheckpointKeysError
from zoo.multimodal.som_llava import loader
from zoo.multimodal.som_llava.builder import make_config
from zoo.multimodal.som_llava.model import SomLlavaModel

VICUNA_ROWS = 120  # the "original" vocabulary; the zoo config adds <image> = 120 and <pad> = 121 (128 rows)


def tiny_config(**overrides):
    from zoo.config import merge

    base = make_config("tiny", text_config={"vocab_size": 128, "pad_token_id": 121}, image_token_id=120,
                       dtype="float32")
    return merge(base, overrides)


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = SomLlavaModel(tiny_config()).eval()
    with torch.no_grad():  # non-zero biases, so a dropped bias would show
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model


def batch():
    generator = torch.Generator().manual_seed(1)
    text = torch.randint(4, VICUNA_ROWS, (2, 7), generator=generator)
    image = torch.full((2, 16), 120)
    input_ids = torch.cat([text[:, :2], image, text[:, 2:]], 1)
    pixel_values = torch.randn(2, 3, 32, 32, generator=generator)
    return input_ids, pixel_values


def logits(model):
    input_ids, pixel_values = batch()
    with torch.no_grad():
        return model(input_ids=input_ids, pixel_values=pixel_values).logits


def llava_original_state(model, *, with_vision=True):
    """The state dict ``haotian-liu/LLaVA``'s LlavaLlamaForCausalLM saves, with its real key names."""
    out = {}
    for key, value in model.llava.state_dict().items():
        if key == "model.language_model.embed_tokens.weight":
            out["model.embed_tokens.weight"] = value[:VICUNA_ROWS].clone()
        elif key == "lm_head.weight":
            out["lm_head.weight"] = value[:VICUNA_ROWS].clone()
        elif key.startswith("model.language_model.layers."):
            out["model.layers." + key[len("model.language_model.layers."):]] = value
        elif key == "model.language_model.norm.weight":
            out["model.norm.weight"] = value
        elif key.startswith("model.multi_modal_projector.linear_1."):
            out["model.mm_projector.0." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("model.multi_modal_projector.linear_2."):
            out["model.mm_projector.2." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("model.vision_tower."):
            rest = key[len("model.vision_tower."):]  # recent transformers drop CLIP's vision_model level
            rest = rest[len("vision_model."):] if rest.startswith("vision_model.") else rest
            if with_vision:
                out["model.vision_tower.vision_tower.vision_model." + rest] = value
        else:
            raise AssertionError(f"unmapped key {key}")
    # transformers 4.31 (LLaVA-1.5's) still saved the rotary buffer
    out["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    return out


def save_sharded_bin(state, folder, shards=2):
    """Shards + pytorch_model.bin.index.json, as transformers 4.3x's save_pretrained writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for index in range(shards):
        name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].contiguous() for k in keys[index::shards]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder / "pytorch_model.bin.index.json"


def llava_config_json(folder):
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "mm_projector_type": "mlp2x_gelu",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_select_layer": -2}))


def test_original_llava_layout_with_vision_keys(source, tmp_path):
    index = save_sharded_bin(llava_original_state(source), tmp_path / "llava")
    model = loader.load(str(index), tiny_config(checkpoint_layout="llava"))
    want, got = logits(source), logits(model)
    torch.testing.assert_close(got[..., :VICUNA_ROWS], want[..., :VICUNA_ROWS], rtol=0, atol=0)
    embed = model.llava.model.language_model.embed_tokens.weight
    torch.testing.assert_close(embed[120:], embed[:120].mean(0).expand(8, -1))  # the new rows: the mean


def test_original_llava_layout_takes_the_vision_tower_from_clip(source, tmp_path, loopback_hub):
    # openai/clip-vit-large-patch14-336 is a whole CLIPModel: vision + text towers and projections.
    from transformers import CLIPConfig, CLIPModel

    vision = {k: v for k, v in tiny_config()["vision_config"].items()}
    clip = CLIPModel(CLIPConfig(vision_config=vision, text_config={"hidden_size": 16, "intermediate_size": 32,
                                                                   "num_hidden_layers": 1, "num_attention_heads": 2,
                                                                   "vocab_size": 50}, projection_dim=8))
    clip.vision_model.load_state_dict(source.vision_tower.state_dict())
    clip_state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    assert any(k.startswith("text_model.") for k in clip_state) and "logit_scale" in clip_state
    assert "vision_model.embeddings.class_embedding" in clip_state  # the names in the real file
    save_file(clip_state, tmp_path / "clip.safetensors")
    loopback_hub.add_file("openai/clip-vit-large-patch14-336", "model.safetensors",
                          (tmp_path / "clip.safetensors").read_bytes())
    folder = tmp_path / "llava-no-vision"
    save_sharded_bin(llava_original_state(source, with_vision=False), folder)
    llava_config_json(folder)
    model = loader.load(str(folder / "config.json"), tiny_config(checkpoint_layout="llava"))
    torch.testing.assert_close(logits(model)[..., :VICUNA_ROWS], logits(source)[..., :VICUNA_ROWS], rtol=0, atol=0)


def test_transformers_layout_as_save_pretrained_writes_it(source, tmp_path):
    # transformers' own writer: sharded safetensors with the pre-4.52 names (language_model.model.*, ...)
    source.llava.save_pretrained(tmp_path / "hf", max_shard_size="150KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())["weight_map"]
    assert "language_model.model.embed_tokens.weight" in index and "multi_modal_projector.linear_1.weight" in index
    assert any(k.startswith("vision_tower.") for k in index)
    assert len(set(index.values())) > 1
    assert loader.detect_layout(index) == "hf-legacy"
    model = loader.load(str(tmp_path / "hf" / "config.json"), tiny_config(checkpoint_layout="hf"))
    torch.testing.assert_close(logits(model), logits(source), rtol=0, atol=0)


def test_transformers_in_memory_names(source, tmp_path):
    state = {k: v.contiguous() for k, v in source.llava.state_dict().items()}
    assert "model.language_model.embed_tokens.weight" in state
    save_file(state, tmp_path / "model.safetensors")
    assert loader.detect_layout(state) == "hf"
    model = loader.load(str(tmp_path / "model.safetensors"), tiny_config())
    torch.testing.assert_close(logits(model), logits(source), rtol=0, atol=0)


def test_key_maps_are_pure_functions_of_a_key():
    assert loader.to_transformers_key("model.layers.31.self_attn.q_proj.weight", "llava") == \
        "model.language_model.layers.31.self_attn.q_proj.weight"
    assert loader.to_transformers_key("model.mm_projector.2.bias", "llava") == "model.multi_modal_projector.linear_2.bias"
    assert loader.to_transformers_key("model.vision_tower.vision_tower.vision_model.post_layernorm.weight", "llava") \
        == "model.vision_tower.vision_model.post_layernorm.weight"
    assert loader.to_transformers_key("language_model.lm_head.weight", "hf-legacy") == "lm_head.weight"
    assert loader.to_transformers_key("vision_tower.vision_model.pre_layrnorm.bias", "hf-legacy") == \
        "model.vision_tower.vision_model.pre_layrnorm.bias"
    assert loader.to_transformers_key("model.image_newline", "llava") is None
    assert loader.clip_to_transformers_key("vision_model.embeddings.class_embedding") == \
        "model.vision_tower.vision_model.embeddings.class_embedding"


def test_wrong_keys_are_listed(source, tmp_path):
    state = llava_original_state(source)
    del state["model.layers.1.mlp.down_proj.weight"]
    state["model.layers.1.mlp.gate.weight"] = torch.zeros(2)
    state["model.image_newline"] = torch.zeros(64)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointKeysError) as info:
        loader.load(str(tmp_path / "model.safetensors"), tiny_config())
    error = info.value
    assert error.missing == ["model.language_model.layers.1.mlp.down_proj.weight"]
    assert "model.image_newline" in error.unexpected and "model.language_model.layers.1.mlp.gate.weight" in error.unexpected


def test_another_size_is_a_shape_error(source, tmp_path):
    state = {k: v.contiguous() for k, v in source.llava.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    wider = tiny_config(text_config={"hidden_size": 96})
    with pytest.raises(CheckpointKeysError, match="another size") as info:
        loader.load(str(tmp_path / "model.safetensors"), wider)
    assert any(k == "model.language_model.embed_tokens.weight" for k, _, _ in info.value.mismatched)


def test_llava_checkpoint_where_the_hf_card_is_expected_names_the_right_card(source, tmp_path):
    folder = tmp_path / "som-llava-v1.5-13b"
    save_sharded_bin(llava_original_state(source), folder)
    llava_config_json(folder)
    config = tiny_config(checkpoint_layout="hf")
    config["size"] = "13b"  # as the som-llava-13b-hf card says
    for path in (folder / "config.json", folder / "pytorch_model.bin.index.json"):
        with pytest.raises(CheckpointFormatError, match="'som-llava-13b'.*") as info:
            loader.load(str(path), config)
        assert "original LLaVA layout" in str(info.value) and "issue #3" in str(info.value)
    source.llava.save_pretrained(tmp_path / "hf")
    config = tiny_config(checkpoint_layout="llava")
    config["size"] = "13b"
    with pytest.raises(CheckpointFormatError, match="'som-llava-13b-hf'"):
        loader.load(str(tmp_path / "hf" / "model.safetensors"), config)


def test_not_a_llava_checkpoint(tmp_path):
    save_file({"encoder.weight": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointFormatError, match="not a LLaVA checkpoint"):
        loader.load(str(tmp_path / "x.safetensors"), tiny_config())


def test_zoo_load_card_end_to_end_from_the_hub(source, tmp_path, loopback_hub, caplog):
    """`zoo.load("som-llava-13b-hf")` at tiny size: config.json first, then the shards of the same revision."""
    source.llava.save_pretrained(tmp_path / "hf", max_shard_size="150KB")
    for path in sorted((tmp_path / "hf").iterdir()):
        loopback_hub.add_file("zzxslp/som-llava-v1.5-13b-hf", path.name, path.read_bytes())
    tiny = tiny_config()
    overrides = {"vision_config": tiny["vision_config"], "text_config": tiny["text_config"],
                 "image_token_id": 120, "dtype": "float32"}
    with caplog.at_level("INFO", logger="zoo"):
        model = zoo.load("som-llava-13b-hf", **overrides)
    assert "loading normally" not in caplog.text  # filled the meta-device build, no second load
    assert model.card_name == "som-llava-13b-hf" and model.config["checkpoint_layout"] == "hf"
    torch.testing.assert_close(logits(model), logits(source), rtol=0, atol=0)


def test_llava_1_5_starting_point_from_its_components(source, tmp_path):
    """Vicuna (LlamaForCausalLM) + the pretraining stage's mm_projector.bin + a CLIP tower -> one model."""
    from transformers import CLIPVisionModel

    state = llava_original_state(source, with_vision=False)
    projector = {k: state.pop(k) for k in list(state) if k.startswith("model.mm_projector.")}
    assert sorted(projector) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                                 "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    (tmp_path / "vicuna").mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "vicuna" / "model.safetensors")
    torch.save(projector, tmp_path / "mm_projector.bin")
    tower = CLIPVisionModel(source.vision_tower.config)
    tower.load_state_dict(source.vision_tower.state_dict())
    tower.save_pretrained(tmp_path / "clip")  # a CLIPVisionModel file, as recent transformers write it
    config = tiny_config(tokenizer={"repo_id": "lmsys/vicuna-7b-v1.5"})
    model = loader.load_components(config, language_model=str(tmp_path / "vicuna"),
                                   projector=str(tmp_path / "mm_projector.bin"), vision_tower=str(tmp_path / "clip"))
    torch.testing.assert_close(logits(model)[..., :VICUNA_ROWS], logits(source)[..., :VICUNA_ROWS], rtol=0, atol=0)
    with pytest.raises(CheckpointKeysError, match="missing keys"):
        loader.load_components(config, language_model=str(tmp_path / "vicuna"),
                               projector=str(tmp_path / "vicuna" / "model.safetensors"),
                               vision_tower=str(tmp_path / "clip"))


def test_loads_into_a_model_built_on_the_meta_device(source, tmp_path):
    source.llava.save_pretrained(tmp_path / "hf")
    empty = SomLlavaModel(tiny_config())
    for module in empty.modules():  # parameters on meta, buffers real: what zoo's meta build gives
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty_like(param, device="meta"))
    assert all(p.is_meta for p in empty.parameters())
    model = loader.load_into(empty, str(tmp_path / "hf" / "config.json"))
    assert not any(p.is_meta for p in model.parameters())
    torch.testing.assert_close(logits(model), logits(source), rtol=0, atol=0)
