"""SelftokModel API at the tiny size: token ids, AR order, decoding and rendering, errors, zoo format, the Hub VAE."""
import json

import pytest
import torch

import zoo
from zoo.errors import ConfigError, WeightsNotAvailableError
from zoo.vision.selftok.builder import TINY_VAE_CONFIG, build, make_config
from zoo.vision.selftok.model import TokenIdError


def tiny(size="tiny", seed=0):
    torch.manual_seed(seed)
    model = build(make_config(size))
    with torch.no_grad():  # a trained-looking model: non-zero modulation and output layers, an initialised codebook
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or name.startswith("model.final_layer"):
                p.copy_(0.05 * torch.randn_like(p))
        cb = model.encoder.quantizer._codebook
        cb.embed.copy_(torch.nn.functional.normalize(torch.randn_like(cb.embed), dim=-1))
        cb.initted.fill_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return tiny()


@pytest.fixture(scope="module")
def renderer():
    return tiny("tiny-renderer")


def test_encode_latents_gives_ids_and_is_batch_independent(tokenizer):
    torch.manual_seed(1)
    latents = torch.randn(3, 16, 8, 8)
    ids = tokenizer.encode_latents(latents)
    assert ids.shape == (3, 16) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 64
    assert torch.equal(tokenizer.encode_latents(latents[1:2]), ids[1:2])
    assert len(set(map(tuple, ids.tolist()))) > 1  # different latents, different tokens
    assert not tokenizer.training


def test_ar_order_round_trip(tokenizer):
    ids = torch.arange(16).repeat(2, 1)
    sequence = tokenizer.ar_order(ids)
    assert sequence[0, 0] == 15 and sequence[0, -1] == 0  # the coarsest token first
    assert torch.equal(tokenizer.from_ar_order(sequence), ids)


def test_decode_is_deterministic_batched_and_respects_hidden_tokens(tokenizer):
    ids = tokenizer.encode_latents(torch.randn(2, 16, 8, 8))
    noise = torch.randn(2, 16, 8, 8)
    out = tokenizer.decode_latents(ids, steps=6, noise=noise)
    assert out.shape == (2, 16, 8, 8)
    assert torch.allclose(tokenizer.decode_latents(ids[1:], steps=6, noise=noise[1:]), out[1:], atol=1e-5)
    generator = torch.Generator().manual_seed(3)
    again = tokenizer.decode_latents(ids, steps=6, generator=generator)
    assert torch.equal(again, tokenizer.decode_latents(ids, steps=6, generator=torch.Generator().manual_seed(3)))
    # keep=k (the first k tokens in AR order): the other tokens cannot change the result
    kept = tokenizer.decode_latents(ids, steps=6, noise=noise, keep=4)
    changed = ids.clone()
    changed[:, :12] = (changed[:, :12] + 1) % 64
    assert torch.allclose(tokenizer.decode_latents(changed, steps=6, noise=noise, keep=4), kept, atol=1e-6)
    assert not torch.allclose(tokenizer.decode_latents(changed, steps=6, noise=noise), out, atol=1e-4)
    guided = tokenizer.decode_latents(ids, steps=6, noise=noise, cfg=2.0)
    assert guided.shape == out.shape and not torch.allclose(guided, out)
    images = tokenizer.decode(ids, steps=2, noise=noise)
    assert images.shape == (2, 3, 64, 64) and float(images.min()) >= 0 and float(images.max()) <= 1


def test_render_is_one_forward(renderer):
    ids = renderer.encode_latents(torch.randn(2, 16, 8, 8))
    latents = renderer.render_latents(ids)
    assert latents.shape == (2, 16, 8, 8)
    assert torch.equal(renderer.render_latents(ids), latents)
    assert renderer.render(ids).shape == (2, 3, 64, 64)
    with pytest.raises(ConfigError, match="render"):
        renderer.decode_latents(ids)


def test_bad_token_ids(tokenizer, renderer):
    with pytest.raises(TokenIdError, match=r"\[0, 64\)"):
        tokenizer.decode_latents(torch.full((1, 16), 64))
    with pytest.raises(TokenIdError, match="shape"):
        tokenizer.decode_latents(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(TokenIdError, match="integers"):
        tokenizer.tokens(torch.zeros(1, 16))
    with pytest.raises(TokenIdError):
        renderer.render_latents(torch.full((2, 16), -1))
    with pytest.raises(ConfigError, match="renderer"):
        tokenizer.render_latents(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ConfigError, match="latents"):
        tokenizer.encode_latents(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ConfigError, match="keep"):
        tokenizer.decode_latents(torch.zeros(1, 16, dtype=torch.long), keep=0)
    ids = tokenizer.check_ids([[1] * 16])  # lists and arrays are accepted
    assert ids.shape == (1, 16)


def test_visible_tokens_follow_diti(tokenizer):
    assert tokenizer.visible_tokens(torch.tensor([0.0, 0.5, 1.0])).tolist() == [1, 13, 16]


def test_zoo_format_round_trip(tmp_path, tokenizer):
    folder = tokenizer.save_pretrained(tmp_path / "tok")
    config = json.loads((folder / "config.json").read_text())
    assert config["family"] == "selftok" and config["config"]["vae"]["config"]["latent_channels"] == 16
    loaded = zoo.load(str(folder))
    latents = torch.randn(2, 16, 8, 8)
    assert torch.equal(loaded.encode_latents(latents), tokenizer.encode_latents(latents))
    noise = torch.randn(2, 16, 8, 8)
    ids = tokenizer.encode_latents(latents)
    assert torch.equal(loaded.decode_latents(ids, steps=3, noise=noise), tokenizer.decode_latents(ids, steps=3, noise=noise))
    assert torch.equal(loaded.latents_to_images(latents), tokenizer.latents_to_images(latents))


def test_hub_vae_loads_lazily_and_refusal_says_what_to_do(loopback_hub, monkeypatch):
    from safetensors.torch import save as save_bytes

    from zoo.vision.selftok.vae import build_vae

    torch.manual_seed(0)
    vae = build_vae(TINY_VAE_CONFIG)
    repo = "stabilityai/stable-diffusion-3-medium-diffusers"
    loopback_hub.create_repo(repo, private=True)
    loopback_hub.add_file(repo, "vae/config.json", json.dumps({"_class_name": "AutoencoderKL", **TINY_VAE_CONFIG}).encode())
    loopback_hub.add_file(repo, "vae/diffusion_pytorch_model.safetensors",
                          save_bytes({k: v.contiguous() for k, v in vae.state_dict().items()}))
    model = build(make_config("tiny", vae={"repo_id": repo, "subfolder": "vae", "config": None}))
    assert "vae" not in model._modules and not any(k.startswith("vae.") for k in model.state_dict())
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
    with pytest.raises(WeightsNotAvailableError, match="licence"):
        model.latents_to_images(torch.zeros(1, 16, 8, 8))
    loaded = model.load_vae(token=loopback_hub.token)
    latents = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.latents_to_images(latents), (vae.decode(latents / 1.5305 + 0.0609).sample.clamp(-1, 1) + 1) / 2)
    assert loaded is model.get_vae()


def test_images_in_any_form_give_the_same_tokens(tokenizer, tmp_path):
    import numpy as np
    from PIL import Image

    from zoo.errors import ImageInputError

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(80, 96, 3), dtype=np.uint8)     # not square: resized, centre-cropped
    Image.fromarray(array).save(tmp_path / "a.png")
    pil = Image.fromarray(array)
    ids = tokenizer.encode(pil)
    assert ids.shape == (1, 16)
    assert torch.equal(tokenizer.encode(str(tmp_path / "a.png")), ids)
    assert torch.equal(tokenizer.encode(tmp_path / "a.png"), ids)
    assert torch.equal(tokenizer.encode(torch.from_numpy(array).permute(2, 0, 1).float() / 255), ids)
    batch = tokenizer.encode([pil, pil.convert("L"), pil.convert("RGBA")])     # greyscale / RGBA are converted
    assert batch.shape == (3, 16) and torch.equal(batch[0], ids[0]) and torch.equal(batch[2], ids[0])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageInputError, match="broken.png"):
        tokenizer.encode(tmp_path / "broken.png")
    pixels = tokenizer.prepare_images(pil)
    assert pixels.shape == (1, 3, 64, 64) and float(pixels.min()) >= -1 and float(pixels.max()) <= 1


def test_bfloat16_weights_run(tokenizer, renderer):
    import copy

    latents = torch.randn(2, 16, 8, 8)
    half = copy.deepcopy(tokenizer).to(torch.bfloat16)
    ids = half.encode_latents(latents)
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    out = half.decode_latents(ids, steps=2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert half.decode_latents(ids, steps=2, cfg=2.0).shape == out.shape
    rendered = copy.deepcopy(renderer).to(torch.bfloat16).render_latents(ids)
    assert torch.isfinite(rendered.float()).all()


def test_inference_methods_run_in_eval_and_restore_the_mode():
    model = tiny().train()
    before = model.encoder.quantizer._codebook.cluster_size.clone()
    ids = model.encode_latents(torch.randn(2, 16, 8, 8))
    out = model.decode_latents(ids, steps=2)
    assert model.training and model.encoder.quantizer.training  # the caller's mode is back
    assert not out.requires_grad
    assert torch.equal(model.encoder.quantizer._codebook.cluster_size, before)  # no EMA update: it ran in eval
