"""The official-checkpoint loader on tiny release folders written with BAGEL's real key names."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import zoo
from zoo.cards import add_card, remove_card
from zoo.errors import CheckpointKeysError
from zoo.models.flux_vae import bfl_to_diffusers_key
from zoo.multimodal.srum.builder import build, make_config
from zoo.multimodal.srum.loader import load, load_folder


def bfl_names(levels: int, blocks: int, channels) -> list[str]:
    """The BFL autoencoder's parameter names (black-forest-labs/flux autoencoder.py module layout)."""
    names = []
    res = lambda p, cin, cout: [f"{p}.{m}.{t}" for m in ("norm1", "conv1", "norm2", "conv2") for t in ("weight", "bias")] + \
        ([f"{p}.nin_shortcut.weight", f"{p}.nin_shortcut.bias"] if cin != cout else [])   # noqa: E731
    mid = lambda p: res(f"{p}.mid.block_1", 1, 1) + res(f"{p}.mid.block_2", 1, 1) + [   # noqa: E731
        f"{p}.mid.attn_1.{m}.{t}" for m in ("norm", "q", "k", "v", "proj_out") for t in ("weight", "bias")]
    names += ["encoder.conv_in.weight", "encoder.conv_in.bias"]
    cin = channels[0]
    for i in range(levels):
        for j in range(blocks):
            names += res(f"encoder.down.{i}.block.{j}", cin, channels[i])
            cin = channels[i]
        if i != levels - 1:
            names += [f"encoder.down.{i}.downsample.conv.weight", f"encoder.down.{i}.downsample.conv.bias"]
    names += mid("encoder") + ["encoder.norm_out.weight", "encoder.norm_out.bias", "encoder.conv_out.weight",
                               "encoder.conv_out.bias", "decoder.conv_in.weight", "decoder.conv_in.bias"] + mid("decoder")
    cin = channels[-1]
    for i in reversed(range(levels)):
        for j in range(blocks + 1):
            names += res(f"decoder.up.{i}.block.{j}", cin, channels[i])
            cin = channels[i]
        if i != 0:
            names += [f"decoder.up.{i}.upsample.conv.weight", f"decoder.up.{i}.upsample.conv.bias"]
    return names + ["decoder.norm_out.weight", "decoder.norm_out.bias", "decoder.conv_out.weight", "decoder.conv_out.bias"]


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    m = build(make_config("tiny"))
    with torch.no_grad():
        m.llm2vae.weight.normal_(0, 0.05)
    return m.eval()


def write_release(model, folder, *, drop=(), extra=None, pos_embed=True):
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("vae.")}
    if not pos_embed:
        state = {k: v for k, v in state.items() if "pos_embed" not in k}
    for key in drop:
        state.pop(key)
    state.update(extra or {})
    save_file(state, str(folder / "ema.safetensors"))
    vae = model.vae.state_dict()
    cfg = model.config["vae"]
    ae = {}
    for name in bfl_names(len(cfg["block_out_channels"]), cfg["layers_per_block"], cfg["block_out_channels"]):
        value = vae[bfl_to_diffusers_key(name)]
        ae[name] = value[:, :, None, None].clone() if re.search(r"attn_1\.(q|k|v|proj_out)\.weight", name) else value.clone()
    assert len(ae) == len(vae)           # every diffusers VAE weight has its BFL name
    save_file(ae, str(folder / "ae.safetensors"))
    llm = {**model.config["llm"], "layer_module": "Qwen2MoTDecoderLayer", "architectures": ["Qwen2ForCausalLM"]}
    (folder / "llm_config.json").write_text(json.dumps(llm))
    vit = {**model.config["vit"], "num_hidden_layers": model.config["vit"]["num_hidden_layers"] + 1,
           "model_type": "siglip_vision_model"}
    (folder / "vit_config.json").write_text(json.dumps(vit))
    model.tokenizer.save_pretrained(str(folder))
    return folder


def outputs(model):
    image = Image.new("RGB", (64, 64), (220, 40, 40))
    return (model.understand(image, "What is it?", max_new_tokens=5),
            np.asarray(model.generate_image("a red circle", seed=4, num_timesteps=3)))


def test_release_folder_loads_strictly_with_identical_outputs(source, tmp_path):
    folder = write_release(source, tmp_path / "rel")
    config = make_config("tiny", **{"llm.hidden_size": 999})   # llm_config.json wins over the card's widths
    loaded = load_folder(folder, {**config, "tokenizer": {"repo_id": None, "revision": None, "json": None}})
    assert loaded.llm_config.hidden_size == 64
    assert loaded.config["vit"]["num_hidden_layers"] == 2       # vit_config.json's 3 minus the dropped layer
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    text, image = outputs(source)
    text2, image2 = outputs(loaded)
    assert text == text2 and np.array_equal(image, image2)


def test_missing_unexpected_and_misshaped_keys_are_listed(source, tmp_path):
    config = make_config("tiny")
    folder = write_release(source, tmp_path / "missing", drop=["language_model.model.layers.0.mlp_moe_gen.up_proj.weight"])
    with pytest.raises(CheckpointKeysError) as err:
        load(str(folder / "ema.safetensors"), config)
    assert "language_model.model.layers.0.mlp_moe_gen.up_proj.weight" in err.value.missing
    folder = write_release(source, tmp_path / "extra", extra={"language_model.model.layers.0.self_attn.q_bias": torch.zeros(3)})
    with pytest.raises(CheckpointKeysError) as err:
        load(str(folder / "ema.safetensors"), config)
    assert "language_model.model.layers.0.self_attn.q_bias" in err.value.unexpected
    bad = {"vit_model.vision_model.embeddings.patch_embedding.weight": torch.zeros(32, 3, 8, 8)}   # a conv, not BAGEL's linear
    folder = write_release(source, tmp_path / "conv", extra=bad)
    with pytest.raises(CheckpointKeysError, match="patch_embedding"):
        load(str(folder / "ema.safetensors"), config)


def test_absent_pos_embed_tables_are_computed(source, tmp_path):
    folder = write_release(source, tmp_path / "nopos", pos_embed=False)
    loaded = load(str(folder / "ema.safetensors"), make_config("tiny"))
    assert torch.equal(loaded.latent_pos_embed.pos_embed, source.latent_pos_embed.pos_embed)
    assert torch.equal(loaded.vit_pos_embed.pos_embed, source.vit_pos_embed.pos_embed)


def test_patch_embedding_linear_is_the_conv_in_pqc_order():
    """BAGEL's convert_conv2d_to_linear: W_lin = W_conv.permute(0, 2, 3, 1).reshape(D, p*p*c) over (p, q, c) patches."""
    from zoo.models.bagel import patchify

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4)
    linear = torch.nn.Linear(48, 5)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(5, 48))
        linear.bias.copy_(conv.bias)
    image = torch.randn(3, 8, 12)
    expected = conv(image[None])[0].flatten(1).T          # [(8/4)*(12/4), 5], row-major patches
    assert torch.allclose(linear(patchify(image, 4)), expected, atol=1e-6)


def test_a_card_loads_from_the_hub(source, tmp_path, loopback_hub):
    folder = write_release(source, tmp_path / "hubrel")
    repo = "someone/bagel-tiny-release"
    loopback_hub.create_repo(repo)
    for path in folder.iterdir():
        loopback_hub.add_file(repo, path.name, path.read_bytes())
    add_card({"name": "bagel-tiny-test", "family": "srum", "size": "tiny", "description": "test",
              "config": {"source": {"repo_id": repo}},
              "weights": {"repo_id": repo, "filename": "ema.safetensors", "format": "official"}})
    try:
        model = zoo.load("bagel-tiny-test")
    finally:
        remove_card("bagel-tiny-test")
    assert model.encode_text("two blue squares") == source.encode_text("two blue squares")
    assert outputs(model)[0] == outputs(source)[0]
