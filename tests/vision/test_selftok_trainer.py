"""zoo train selftok at the tiny size: falling losses, exact resume, the renderer stage, LR groups, SD3 init."""
import json
import math

import numpy as np
import pytest
import torch


from zoo.errors import ConfigError
from zoo.vision.selftok.trainer import SelftokTrainer, encoder_lr_factor, sd3_decoder_state


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """24 images of one coloured square on a grey background (positions and colours vary)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(16):
        array = np.full((64, 64, 3), 128, dtype=np.uint8)
        x, y = rng.integers(0, 40, size=2)
        array[y:y + 24, x:x + 24] = rng.integers(0, 256, size=3)
        Image.fromarray(array).save(folder / f"{i:02d}.png")
    return folder


def overrides(folder, out, steps, extra=()):
    return [f"data.train={folder}", f"train.output_dir={out}", f"train.max_steps={steps}", "train.batch_size=8",
            "train.log_every=1", "train.ckpt_every=3", "train.eval_every=0", "train.progress=false",
            "train.tensorboard=false", "lr.encoder_lr=1e-3", "lr.dit_lr=1e-3", "lr.token_lr=1e-3", *extra]


def losses(out):
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_training_loss_falls_on_a_fixed_batch():
    """The training objective itself (flow loss + commitment + diversity) with AdamW, no engine."""
    from zoo.vision.selftok.builder import build, make_config

    torch.manual_seed(0)
    model = build(make_config("tiny")).train()
    latents = torch.randn(8, 16, 8, 8) * 0.7
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, betas=(0.9, 0.99))
    mse = []
    for _ in range(60):
        out = model(latents)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        mse.append(float(out["mse"]))
        assert math.isfinite(float(out["loss"].detach()))
    assert np.mean(mse[-10:]) < 0.85 * np.mean(mse[:10]), mse
    assert float(model.encoder.quantizer._codebook.initted) == 1.0  # k-means ran on the first batch


def test_engine_run_and_exact_resume(image_folder, tmp_path):
    import zoo
    from zoo.train import load_recipe, run

    recipe = "vision/selftok/recipes/demo.yaml"
    extra = ("selftok.vae_steps=0", "data.eval=null")
    straight = run(load_recipe(recipe, overrides(image_folder, tmp_path / "a", 8, extra)))
    values = losses(tmp_path / "a")
    assert len(values) == 8 and all(math.isfinite(v) for v in values)
    checkpoint = tmp_path / "a" / "checkpoints" / "step-00000006"
    assert checkpoint.is_dir()
    resumed = run(load_recipe(recipe, overrides(image_folder, tmp_path / "b", 8,
                                                (*extra, f"train.resume={checkpoint}"))))
    a, b = zoo.load(str(straight)), zoo.load(str(resumed))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert losses(tmp_path / "b")[-2:] == values[-2:]
    latents = torch.randn(2, 16, 8, 8)
    assert torch.equal(a.encode_latents(latents), b.encode_latents(latents))


def test_vae_phase_then_renderer_stage(image_folder, tmp_path):
    import zoo
    from zoo.train import load_recipe, run

    tokenizer = run(load_recipe("vision/selftok/recipes/demo.yaml",
                                overrides(image_folder, tmp_path / "tok", 8, ("selftok.vae_steps=4", "data.eval=null"))))
    rows = [json.loads(line) for line in (tmp_path / "tok" / "log.jsonl").read_text().splitlines()]
    assert "vae_mse" in rows[0] and "mse" not in rows[0] and "mse" in rows[-1]
    before = zoo.load("selftok-tiny", pretrained=False)
    trained = zoo.load(str(tokenizer))
    assert not torch.equal(trained.vae.decoder.conv_out.weight, before.vae.decoder.conv_out.weight)
    renderer = run(load_recipe("vision/selftok/recipes/demo-renderer.yaml",
                               [*overrides(image_folder, tmp_path / "ren", 6), f"model.init={tokenizer}",
                                "data.eval=null"]))
    rendered = zoo.load(str(renderer))
    assert rendered.is_renderer
    counters = ("encoder.quantizer.steps", "encoder.quantizer.count")  # counted on every forward, as released
    for key, value in trained.state_dict().items():
        if key.startswith(("encoder.", "vae.")) and key not in counters:  # the encoder and VAE were frozen
            assert torch.equal(rendered.state_dict()[key], value), key
    assert float(rendered.encoder.quantizer.steps) > float(trained.encoder.quantizer.steps)
    assert not torch.equal(rendered.state_dict()["model.joint_blocks.0.x_block.attn.qkv.weight"],
                           trained.state_dict()["model.joint_blocks.0.x_block.attn.qkv.weight"])
    values = losses(tmp_path / "ren")
    assert values[-1] < values[0]


def test_param_groups_and_encoder_schedule():
    from zoo.train.recipe import complete_config

    config, _ = complete_config({"family": "selftok", "model": {"size": "tiny"}})
    trainer = SelftokTrainer(config)
    model = trainer.build_model()
    groups = {g["name"]: g for g in trainer.param_groups(model)}
    assert set(groups) == {"encoder", "decoder", "token"}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("x_block" in names[id(p)] or "x_embedder" in names[id(p)] for p in groups["decoder"]["params"])
    assert any("context_block" in names[id(p)] for p in groups["token"]["params"])
    assert not any("y_embedder" in names[id(p)] or "final_layer_norm." in names[id(p)]
                   for g in groups.values() for p in g["params"])  # unused in the release: frozen
    options = dict(base=1e-4, init_step1=10, init_step2=20, max_step=30, min_lr1=5e-5, min_lr2=1e-5)
    assert encoder_lr_factor(5, **options) == 1.0
    assert encoder_lr_factor(15, **options) == pytest.approx((5e-5 + 5e-5 * 5 / 10) / 1e-4)
    assert encoder_lr_factor(20, **options) == pytest.approx(0.5)
    assert encoder_lr_factor(25, **options) == pytest.approx((4e-5 * 0.5 + 1e-5) / 1e-4)
    assert encoder_lr_factor(99, **options) == pytest.approx(0.1)  # held at min_lr2 after max_step
    optimizer = torch.optim.AdamW(trainer.param_groups(model))
    factors = trainer.lr_factors(optimizer)
    assert factors[1] is None and factors[2] is None and factors[0](0) == 1.0


def test_sd3_initialisation_skips_the_token_stream(tmp_path):
    from safetensors.torch import save_file

    from zoo.train.recipe import complete_config
    from zoo.vision.selftok.builder import build, make_config

    torch.manual_seed(1)
    donor = build(make_config("tiny")).model
    state = {f"model.diffusion_model.{k}": v + 1.0 for k, v in donor.state_dict().items()}
    state["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "sd3.safetensors")
    config, _ = complete_config({"family": "selftok", "model": {"size": "tiny"},
                                 "selftok": {"sd3_init": str(tmp_path / "sd3.safetensors")}})
    model = SelftokTrainer(config).build_model()
    own = model.model.state_dict()
    assert torch.equal(own["joint_blocks.0.x_block.attn.qkv.weight"],
                       donor.state_dict()["joint_blocks.0.x_block.attn.qkv.weight"] + 1.0)
    assert not torch.equal(own["joint_blocks.0.context_block.attn.qkv.weight"],
                           donor.state_dict()["joint_blocks.0.context_block.attn.qkv.weight"] + 1.0)
    assert not torch.equal(own["context_embedder.weight"], donor.state_dict()["context_embedder.weight"] + 1.0)
    with pytest.raises(ConfigError, match="model.diffusion_model"):
        sd3_decoder_state({"x": torch.zeros(1)}, "bad.safetensors")


def test_bad_recipes():
    from zoo.train.recipe import complete_config

    config, _ = complete_config({"family": "selftok", "model": {"size": "tiny"}, "selftok": {"stage": "renderer"}})
    with pytest.raises(ConfigError, match="renderer size"):
        SelftokTrainer(config).build_model()
    config, _ = complete_config({"family": "selftok", "selftok": {"stage": "vae"}})
    with pytest.raises(ConfigError, match="stage"):
        SelftokTrainer(config)
    config, _ = complete_config({"family": "selftok", "data": {"train": "/no/such/folder"}})
    with pytest.raises(ConfigError, match="does not exist"):
        SelftokTrainer(config).build_datasets()


def test_evaluation_hook_reports_the_baselines(image_folder):
    from zoo.train.recipe import complete_config

    config, _ = complete_config({"family": "selftok", "model": {"size": "tiny"},
                                 "data": {"train": str(image_folder), "eval": str(image_folder), "eval_items": 4,
                                          "eval_steps": 2}})
    trainer = SelftokTrainer(config)
    model = trainer.build_model().eval()
    trainer.build_datasets()
    with torch.no_grad():
        metrics = trainer.evaluate(model)
    assert set(metrics) == {"eval_psnr", "eval_vae_psnr", "eval_mean_image_psnr", "eval_latent_mse"}
    assert all(math.isfinite(v) for v in metrics.values())
