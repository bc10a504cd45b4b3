"""SrumModel (tiny): batched T2I and understanding, packing, input errors, zoo-format round trip."""
import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.errors import ConfigError, ImageInputError
from zoo.models.bagel import ImageTransform, patchify, resize_size, unpatchify_latent
from zoo.multimodal.srum.builder import build, make_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build(make_config("tiny"))
    with torch.no_grad():   # llm2vae starts at zero (BAGEL's init); give the generator something to say
        m.llm2vae.weight.normal_(0, 0.05)
    return m.eval()


def test_config_keys_and_sizes(model):
    keys = set(model.state_dict())
    assert "language_model.model.layers.1.mlp_moe_gen.gate_proj.weight" in keys
    assert "language_model.model.norm_moe_gen.weight" in keys
    assert model.state_dict()["vit_model.vision_model.embeddings.patch_embedding.weight"].shape == (32, 3 * 8 * 8)
    assert model.state_dict()["latent_pos_embed.pos_embed"].shape == (64, 64)
    assert model.latent_grid(64, 64) == (4, 4) and model.patch_latent_dim == 64
    assert not model.latent_pos_embed.pos_embed.requires_grad


def test_generate_image_is_batch_invariant_and_seeded(model):
    prompts = ["a red circle", "two blue squares"]
    kwargs = dict(num_timesteps=5, cfg_text_scale=4.0)
    batch = model.generate_image(prompts, generator=torch.Generator().manual_seed(5), **kwargs)
    gen = torch.Generator().manual_seed(5)
    one = [model.generate_image(p, generator=gen, **kwargs) for p in prompts]
    assert all(a.size == (64, 64) for a in batch)
    for a, b in zip(batch, one):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    again = model.generate_image(prompts[0], seed=11, **kwargs)
    assert np.array_equal(np.asarray(again), np.asarray(model.generate_image(prompts[0], seed=11, **kwargs)))


def test_cfg_changes_the_latents_only_inside_the_interval(model):
    ctx = model.new_context(1)
    uncond = ctx.copy()
    model.add_text(ctx, [model.encode_text("a red circle")])
    noise = torch.randn(1, 16, 64)
    common = dict(cfg_text_context=uncond, timestep_shift=3.0, num_timesteps=4, noise=noise)
    plain = model.generate_latents(ctx, (4, 4), cfg_text_scale=1.0, **common)
    outside = model.generate_latents(ctx, (4, 4), cfg_text_scale=4.0, cfg_interval=(0.0, 0.5), **common)   # step times 1, 0.86, 0.6
    inside = model.generate_latents(ctx, (4, 4), cfg_text_scale=4.0, cfg_interval=(0.0, 1.0), **common)
    assert torch.allclose(plain, outside) and not torch.allclose(plain, inside)


def test_understand_is_batch_invariant_and_looks_at_the_image(model):
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (48, 80), (30, 30, 200))]
    prompts = ["What is this?", "Describe it"]
    batch = model.understand(images, prompts, max_new_tokens=6)
    one = [model.understand(i, p, max_new_tokens=6) for i, p in zip(images, prompts)]
    assert batch == one
    ctx_a, ctx_b = model.new_context(1), model.new_context(1)
    model.add_vit_images(ctx_a, [model.prepare_understanding_image(images[0])])
    model.add_vit_images(ctx_b, [model.prepare_understanding_image(images[1])])
    assert not torch.equal(ctx_a.keys[0][0][1:3], ctx_b.keys[0][0][1:3])
    assert isinstance(model.understand(images[0], "Score?", think=True, max_new_tokens=3), str)


def test_input_errors(model):
    with pytest.raises(ConfigError, match="empty"):
        model.generate_image("  ")
    with pytest.raises(ConfigError, match="tokens"):
        model.generate_image("circle " * 3000)
    with pytest.raises(ImageInputError, match="multiples"):
        model.generate_image("a red circle", image_size=(60, 64))
    with pytest.raises(ImageInputError, match="largest"):
        model.generate_image("a red circle", image_size=(256, 256))
    with pytest.raises(ConfigError, match="images for"):
        model.understand([Image.new("RGB", (64, 64))], ["a", "b"])
    with pytest.raises(ImageInputError):
        model.understand(42, "what?")
    with pytest.raises(ConfigError, match="num_timesteps"):
        model.generate_image("a red circle", num_timesteps=1)


def test_packing_follows_bagels_rules(model):
    packer = model.packer()
    packer.add_text([10, 11], loss=True)
    packer.add_vae((2, 2), noise=True)
    packer.end_sample()
    packer.add_vit((16, 8))               # 2 x 1 ViT patches
    packer.add_text([12])
    packed = packer.build()
    special = model.special_ids
    assert packed.position_ids.tolist() == [0, 1, 2, 3] + [4] * 6 + [0] * 4 + [1, 2, 3]
    assert packed.text_ids[:4].tolist() == [special["bos"], 10, 11, special["eos"]]
    assert packed.vae_index.tolist() == [5, 6, 7, 8]
    assert packed.vit_index.tolist() == [11, 12]
    assert packed.ce_index.tolist() == [0, 1, 2] and packed.ce_labels.tolist() == [10, 11, special["eos"]]
    assert packed.attn_modes == ["causal", "noise", "full", "causal"] and packed.sample_lens == [10, 7]


def test_patchify_order_and_transform_sizes():
    image = torch.arange(3 * 4 * 4, dtype=torch.float32).reshape(3, 4, 4)
    patches = patchify(image, 2)
    assert patches.shape == (4, 12)
    assert patches[1, :6].tolist() == [image[0, 0, 2], image[1, 0, 2], image[2, 0, 2],
                                       image[0, 0, 3], image[1, 0, 3], image[2, 0, 3]]   # (p, q, c) order
    assert torch.equal(unpatchify_latent(patches, 2, 2, 2, 3), image)
    assert resize_size(1000, 500, 1024, 512, 256) == (1024, 512)
    assert resize_size(300, 300, 1024, 512, 16) == (512, 512)
    assert ImageTransform(64, 64, 16)(Image.new("RGB", (100, 50), (255, 0, 0))).shape == (3, 32, 64)  # long side wins


def test_zoo_format_round_trip_keeps_tokenizer_and_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    again = zoo.load(str(tmp_path / "m"))
    assert again.encode_text("a red circle") == model.encode_text("a red circle")
    image = Image.new("RGB", (64, 64), (10, 200, 10))
    assert again.understand(image, "What?", max_new_tokens=4) == model.understand(image, "What?", max_new_tokens=4)
    a = model.generate_image("a red circle", seed=3, num_timesteps=3)
    b = again.generate_image("a red circle", seed=3, num_timesteps=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_inference_runs_in_eval_mode_and_restores_the_callers_flags(model):
    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, args: seen.append(m.training))
    model.train()
    model.vae.eval()   # a frozen part inside a training model keeps its own flag
    try:
        model.understand(Image.new("RGB", (64, 64), (200, 30, 30)), "What is this?", max_new_tokens=2)
        model.generate_image("a red circle", num_timesteps=2, seed=0)
        assert seen and not any(seen)
        assert model.training and model.language_model.training and not model.vae.training
        assert torch.is_grad_enabled()
    finally:
        hook.remove()
        model.eval()
