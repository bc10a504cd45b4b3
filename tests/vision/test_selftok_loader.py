"""Official Selftok checkpoints: the release's key set, flat and EMA layouts, strictness, safe loading."""
import logging
import pytest
import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError
from zoo.vision.selftok.builder import build, make_config
from zoo.vision.selftok.loader import config_from_state_dict, load, official_state_dict

ENCODER_BLOCK = [f"attn.{n}.{p}" for n in ("qkv", "to_query_kv", "query_linear", "proj", "query_proj")
                 for p in ("weight", "bias")] + \
    [f"{m}.fc{i}.{p}" for m in ("mlp", "q_mlp") for i in (1, 2) for p in ("weight", "bias")] + \
    [f"adaLN_modulation.1.{p}" for p in ("weight", "bias")] + \
    [f"t_embedder.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
STREAM = [f"attn.{n}.{p}" for n in ("qkv", "proj") for p in ("weight", "bias")] + \
    [f"mlp.fc{i}.{p}" for i in (1, 2) for p in ("weight", "bias")] + \
    [f"adaLN_modulation.1.{p}" for p in ("weight", "bias")]
T_EMBEDDER = [f"t_embedder.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]


def official_keys(encoder_depth: int, decoder_depth: int, renderer: bool = False) -> set[str]:
    """The release's ImageTokenizer state-dict names (image_tokenizer.py, models_ours.py, modules.py, mmdit.py,
    vector_quantize_pytorch.py, rectified_flow.py), written out independently of zoo's modules."""
    keys = {f"diffusion.{n}" for n in ("timestep_map", "scheduled_t", "scheduled_t_prev", "one_minus_scheduled_t")}
    keys |= {"encoder.pos_embed", "encoder.query_tokens", "encoder.x_embedder.proj.weight", "encoder.x_embedder.proj.bias"}
    keys |= {f"encoder.final_layer_norm{s}.{p}" for s in ("", "2", "3") for p in ("weight", "bias")}
    keys |= {f"encoder.quantizer.{n}" for n in ("continuous", "steps", "count", "project_in.weight", "project_in.bias")}
    keys |= {f"encoder.quantizer._codebook.{n}" for n in ("initted", "cluster_size", "cluster_size_wo_react",
                                                          "embed_avg", "timestep_p_over_c", "tpc_initted", "embed")}
    keys |= {f"encoder.blocks.{i}.{k}" for i in range(encoder_depth) for k in ENCODER_BLOCK}
    keys |= {"model.pos_embed", "model.context_pos_embed", "model.context_embedder.weight", "model.context_embedder.bias"}
    keys |= {f"model.{m}.mlp.{i}.{p}" for m in ("t_embedder", "y_embedder") for i in (0, 2) for p in ("weight", "bias")}
    keys |= {f"model.final_layer.{n}.{p}" for n in ("linear", "adaLN_modulation.1") for p in ("weight", "bias")}
    keys |= ({"model.positional_embedding", "model.mask_token"} if renderer
             else {"model.x_embedder.proj.weight", "model.x_embedder.proj.bias"})
    for i in range(decoder_depth):
        prefix = f"model.joint_blocks.{i}"
        keys |= {f"{prefix}.x_block.{k}" for k in STREAM}
        keys |= {f"{prefix}.context_block.{k}" for k in T_EMBEDDER}
        if i < decoder_depth - 1:
            keys |= {f"{prefix}.context_block.{k}" for k in STREAM}
        else:  # pre_only: only the q/k/v projection and a 2-way adaLN
            keys |= {f"{prefix}.context_block.{n}.{p}" for n in ("attn.qkv", "adaLN_modulation.1") for p in ("weight", "bias")}
    return keys


def own_keys(model):
    return {k for k in model.state_dict() if not k.startswith("vae.")}


@pytest.mark.parametrize("size,renderer", [("512", False), ("512-renderer", True)])
def test_released_512_key_set_and_shapes(size, renderer):
    with torch.device("meta"):
        model = build(make_config(size))
    state = model.state_dict()
    expected = official_keys(16, 24, renderer)
    assert len(expected) == 998
    assert own_keys(model) == expected
    shapes = {
        "encoder.pos_embed": (1, 4096, 64), "encoder.query_tokens": (1, 512, 512),
        "encoder.x_embedder.proj.weight": (64, 16, 2, 2), "encoder.blocks.0.attn.to_query_kv.weight": (1024, 64),
        "encoder.blocks.0.attn.query_linear.weight": (1536, 512), "encoder.blocks.0.adaLN_modulation.1.weight": (3072, 512),
        "encoder.final_layer_norm.weight": (512,), "encoder.final_layer_norm2.weight": (16,),
        "encoder.quantizer.count": (1, 32768), "encoder.quantizer.project_in.weight": (16, 512),
        "encoder.quantizer._codebook.embed": (1, 32768, 16),
        "encoder.quantizer._codebook.timestep_p_over_c": (1, 512, 32768), "diffusion.timestep_map": (100,),
        "model.pos_embed": (1, 36864, 1536), "model.context_pos_embed": (1, 512, 1536),
        "model.y_embedder.mlp.0.weight": (1536, 16), "model.context_embedder.weight": (1536, 16),
        "model.joint_blocks.0.context_block.adaLN_modulation.1.weight": (9216, 1536),
        "model.joint_blocks.23.context_block.adaLN_modulation.1.weight": (3072, 1536),
        "model.joint_blocks.23.context_block.t_embedder.mlp.0.weight": (1536, 256),
        "model.final_layer.linear.weight": (64, 1536),
    }
    if renderer:
        shapes.update({"model.positional_embedding": (256, 1536), "model.mask_token": (1, 1, 1536)})
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key


def tiny_official_checkpoint(size="tiny", seed=0):
    torch.manual_seed(seed)
    model = build(make_config(size))
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("vae.")}
    state["encoder.quantizer._codebook.embed"] = torch.nn.functional.normalize(torch.randn(1, 64, 8), dim=-1)
    state["encoder.quantizer._codebook.initted"] = torch.tensor([1.0])
    for key in list(state):
        if "adaLN_modulation" in key or key.startswith("model.final_layer"):
            state[key] = 0.05 * torch.randn_like(state[key])
    assert set(state) == official_keys(2, 2, renderer=size.endswith("renderer"))
    return state


def test_flat_checkpoint_loads_strictly_and_encodes(tmp_path):
    state = tiny_official_checkpoint()
    path = tmp_path / "tokenizer.pth"
    torch.save(state, path)
    model = load(str(path), make_config("tiny"))
    assert not model.training
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    ids = model.encode_latents(torch.randn(2, 16, 8, 8))
    assert ids.shape == (2, 16) and int(ids.max()) < 64


def test_ema_weights_are_preferred_unless_disabled(tmp_path, caplog):
    state = tiny_official_checkpoint()
    ema = {k[len("model."):]: v + 1.0 for k, v in state.items() if k.startswith("model.") and v.is_floating_point()}
    torch.save({**state, "ema_state_dict": ema, "step": 150000}, tmp_path / "ckpt.pth")
    with caplog.at_level(logging.INFO, logger="zoo.selftok"):
        model = load(str(tmp_path / "ckpt.pth"), make_config("tiny"))
    weight = "model.joint_blocks.0.x_block.attn.qkv.weight"
    assert torch.equal(model.state_dict()[weight], state[weight] + 1.0)
    assert torch.equal(model.state_dict()["encoder.query_tokens"], state["encoder.query_tokens"])
    assert "EMA weights" in caplog.text and "step" in caplog.text
    raw = load(str(tmp_path / "ckpt.pth"), make_config("tiny", use_ema=False))
    assert torch.equal(raw.state_dict()[weight], state[weight])


def test_training_checkpoint_layouts(tmp_path):
    state = tiny_official_checkpoint()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "opt": {"lr": 1e-4}}, tmp_path / "t.pth")
    model = load(str(tmp_path / "t.pth"), make_config("tiny"))
    assert torch.equal(model.state_dict()["encoder.query_tokens"], state["encoder.query_tokens"])


def test_a_wrong_key_fails_with_the_lists(tmp_path):
    state = tiny_official_checkpoint()
    state["encoder.blocks.0.attn.qkv_weight"] = state.pop("encoder.blocks.0.attn.qkv.weight")
    del state["encoder.quantizer._codebook.initted"]
    state["model.final_layer.linear.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointKeysError) as info:
        load(str(tmp_path / "bad.pth"), make_config("tiny"))
    err = info.value
    assert err.missing == ["encoder.blocks.0.attn.qkv.weight", "encoder.quantizer._codebook.initted"]
    assert err.unexpected == ["encoder.blocks.0.attn.qkv_weight"]
    assert [m[0] for m in err.mismatched] == ["model.final_layer.linear.bias"]
    assert "k-means" in str(err)


def test_renderer_sizes_come_from_the_checkpoint(tmp_path):
    state = tiny_official_checkpoint("tiny-renderer")
    torch.save(state, tmp_path / "renderer.pth")
    # loading a renderer with the diffusion card's config: the decoder type and its release settings follow the file
    model = load(str(tmp_path / "renderer.pth"), make_config("tiny"))
    assert model.is_renderer and not model.context_sees_x
    # a renderer with more tokens than the config: K (and the one-stage schedule) come from the shapes
    torch.manual_seed(0)
    bigger = build(make_config("tiny-renderer", num_tokens=24, k_per_stage=[24]))
    torch.save({k: v for k, v in bigger.state_dict().items() if not k.startswith("vae.")}, tmp_path / "r24.pth")
    model = load(str(tmp_path / "r24.pth"), make_config("tiny-renderer"))
    assert model.num_tokens == 24 and model.diti.k_per_stage == [24]
    assert model.render_latents(torch.zeros(1, 24, dtype=torch.long)).shape == (1, 16, 8, 8)


def test_diffusion_decoder_with_another_token_count_needs_a_schedule():
    torch.manual_seed(0)
    other = build(make_config("tiny", num_tokens=24, k_per_stage=[16, 8]))
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("vae.")}
    with pytest.raises(ConfigError, match="stage split"):
        config_from_state_dict(state, make_config("tiny"))
    config = config_from_state_dict(state, make_config("tiny", k_per_stage=[16, 8]))
    assert config["num_tokens"] == 24


def test_no_code_is_unpickled(tmp_path, caplog):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    state = tiny_official_checkpoint()
    torch.save({**state, "payload": Payload()}, tmp_path / "evil.pth")
    with caplog.at_level(logging.INFO, logger="zoo.selftok"):
        model = load(str(tmp_path / "evil.pth"), make_config("tiny"))  # the payload is an inert stand-in
    assert not marker.exists()
    assert "payload" in caplog.text
    assert torch.equal(model.state_dict()["encoder.query_tokens"], state["encoder.query_tokens"])


def test_official_state_dict_rejects_non_checkpoints():
    with pytest.raises(CheckpointFormatError):
        official_state_dict([1, 2], "x")
    with pytest.raises(CheckpointFormatError, match="no tensors"):
        official_state_dict({"step": 3}, "x")


def test_card_loads_an_official_file_from_the_hub(loopback_hub, tmp_path):
    """zoo.load(card) end to end: the loopback Hub serves an official-format .pth under the release's repo name."""
    import io

    import zoo
    from zoo.cards import add_card, remove_card

    state = tiny_official_checkpoint()
    buffer = io.BytesIO()
    torch.save({**state, "ema_state_dict": {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}},
               buffer)
    loopback_hub.create_repo("selftok-team/SelftokTokenizer")
    loopback_hub.add_file("selftok-team/SelftokTokenizer", "tokenizer_tiny_ckpt.pth", buffer.getvalue())
    add_card({"name": "selftok-tiny-test", "family": "selftok", "size": "tiny", "description": "test card",
              "weights": {"repo_id": "selftok-team/SelftokTokenizer", "filename": "tokenizer_tiny_ckpt.pth",
                          "format": "official"}})
    try:
        model = zoo.load("selftok-tiny-test")
        assert model.card_name == "selftok-tiny-test" and not model.training
        for key, value in state.items():
            assert torch.equal(model.state_dict()[key], value), key
        folder = model.save_pretrained(tmp_path / "converted")  # official -> zoo format
        again = zoo.load(str(folder))
        latents = torch.randn(1, 16, 8, 8)
        assert torch.equal(again.encode_latents(latents), model.encode_latents(latents))
    finally:
        remove_card("selftok-tiny-test")
