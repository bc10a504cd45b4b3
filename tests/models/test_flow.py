import pytest
import torch

from zoo.errors import ConfigError
from zoo.models.flow import (
    cfg_renorm, euler_sample, euler_step, guided_velocity, interpolate, predicted_x0, sample_logit_normal_t,
    sample_uniform_t, shift_timesteps, timestep_grid, velocity_target,
)


def test_interpolation_and_target_by_hand():
    x0 = torch.tensor([[2.0, -1.0]])
    noise = torch.tensor([[4.0, 3.0]])
    assert torch.equal(interpolate(x0, noise, 0.25), torch.tensor([[2.5, 0.0]]))  # 0.25*4 + 0.75*2, 0.25*3 - 0.75
    assert torch.equal(interpolate(x0, noise, 0.0), x0)
    assert torch.equal(interpolate(x0, noise, 1.0), noise)  # t = 1 is pure noise
    assert torch.equal(velocity_target(x0, noise), torch.tensor([[2.0, 4.0]]))
    # per-sample t
    batch = torch.stack([x0[0], x0[0]])
    out = interpolate(batch, torch.stack([noise[0], noise[0]]), torch.tensor([0.0, 0.5]))
    assert torch.equal(out, torch.tensor([[2.0, -1.0], [3.0, 1.0]]))
    x_t = interpolate(x0, noise, 0.25)
    assert torch.allclose(predicted_x0(x_t, velocity_target(x0, noise), 0.25), x0)


def test_shift_by_hand():
    assert shift_timesteps(0.5, 3.0) == pytest.approx(0.75)        # 1.5 / (1 + 2 * 0.5)
    assert shift_timesteps(0.25, 3.0) == pytest.approx(0.5)        # 0.75 / 1.5
    assert shift_timesteps(0.0, 3.0) == 0.0 and shift_timesteps(1.0, 3.0) == 1.0
    assert shift_timesteps(0.3, 1.0) == pytest.approx(0.3)
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shift_timesteps(t, 1.878), torch.tensor([0.0, 0.939 / 1.439, 1.0]))
    with pytest.raises(ConfigError):
        shift_timesteps(0.5, 0.0)


def test_timestep_grid():
    assert torch.allclose(timestep_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(timestep_grid(4, shift=3.0), torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))
    with pytest.raises(ConfigError):
        timestep_grid(0)


def test_samplers():
    g = torch.Generator().manual_seed(3)
    t = sample_uniform_t(1000, generator=g)
    assert t.shape == (1000,) and float(t.min()) >= 0 and float(t.max()) < 1
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = sample_logit_normal_t(8, mean=0.5, std=2.0, generator=g1)
    assert torch.allclose(got, torch.sigmoid(0.5 + 2.0 * torch.randn(8, generator=g2)))
    with pytest.raises(ConfigError):
        sample_logit_normal_t(2, std=0.0)


def test_euler_is_exact_on_a_straight_path():
    x0 = torch.tensor([[1.0, -2.0, 0.5]])
    noise = torch.tensor([[0.3, 0.7, -1.1]])
    seen = []
    out = euler_sample(lambda x, t: velocity_target(x0, noise), noise, timestep_grid(7, shift=2.0),
                       callback=lambda i, x, v: seen.append(i))
    assert torch.allclose(out, x0, atol=1e-6)
    assert seen == list(range(7))
    assert torch.equal(euler_step(torch.tensor([1.0]), torch.tensor([2.0]), 0.75, 0.5), torch.tensor([0.5]))


def test_global_renorm_by_hand():
    v_cond, v_uncond = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)   # |v_cond| = 5
    guided = guided_velocity(v_cond, v_uncond, 2.0)                      # [6, 8], norm 10
    assert torch.equal(guided, torch.tensor([[6.0, 8.0]]))
    assert torch.allclose(guided_velocity(v_cond, v_uncond, 2.0, renorm_type="global"), torch.tensor([[3.0, 4.0]]))
    # the scale is clamped to [renorm_min, 1]: 0.5 -> 0.8
    assert torch.allclose(guided_velocity(v_cond, v_uncond, 2.0, renorm_type="global", renorm_min=0.8),
                          torch.tensor([[4.8, 6.4]]))
    # renorm_min = 1 disables it; a guided norm below the conditional one is never scaled up
    assert torch.allclose(cfg_renorm(v_cond, guided, "global", 1.0), guided)
    assert torch.allclose(cfg_renorm(v_cond, 0.5 * v_cond, "global"), 0.5 * v_cond)


def test_channel_renorm_is_per_token_and_global_per_sample():
    v_cond = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])        # token norms 5 and 1
    guided = torch.tensor([[[6.0, 8.0], [0.5, 0.0]]])        # token norms 10 and 0.5
    out = cfg_renorm(v_cond, guided, "channel")
    assert torch.allclose(out, torch.tensor([[[3.0, 4.0], [0.5, 0.0]]]))
    # global: one scale for the whole sample, sqrt(26) / sqrt(100.25)
    scale = (26 ** 0.5) / (100.25 ** 0.5)
    assert torch.allclose(cfg_renorm(v_cond, guided, "global"), guided * scale)
    # two samples with different norms get their own scale unless per_sample=False (BAGEL's packed batch of one)
    batch_cond = torch.tensor([[3.0, 4.0], [0.6, 0.8]])
    batch_guided = torch.tensor([[6.0, 8.0], [0.6, 0.8]])
    assert torch.allclose(cfg_renorm(batch_cond, batch_guided, "global"), torch.tensor([[3.0, 4.0], [0.6, 0.8]]))
    whole = float(batch_cond.norm() / batch_guided.norm())
    assert torch.allclose(cfg_renorm(batch_cond, batch_guided, "global", per_sample=False), batch_guided * whole)
    with pytest.raises(ConfigError):
        cfg_renorm(v_cond, guided, "local")


def test_text_and_image_guidance_order():
    v = torch.tensor([[2.0, 0.0]])
    v_text_uncond = torch.tensor([[1.0, 0.0]])
    v_img_uncond = torch.tensor([[0.0, 0.0]])
    # text: 1 + 3 * (2 - 1) = 4; image: 0 + 2 * (4 - 0) = 8; global renorm against |v| = 2 -> 2
    out = guided_velocity(v, v_text_uncond, 3.0, v_img_uncond=v_img_uncond, img_scale=2.0)
    assert torch.equal(out, torch.tensor([[8.0, 0.0]]))
    out = guided_velocity(v, v_text_uncond, 3.0, v_img_uncond=v_img_uncond, img_scale=2.0, renorm_type="global")
    assert torch.allclose(out, torch.tensor([[2.0, 0.0]]))
    # text_channel: the text-guided 4 is renormalised to 2 first, then the image guidance doubles it
    out = guided_velocity(v, v_text_uncond, 3.0, v_img_uncond=v_img_uncond, img_scale=2.0, renorm_type="text_channel")
    assert torch.allclose(out, torch.tensor([[4.0, 0.0]]))
    # scale 1: no guidance at all, image guidance included (as BAGEL)
    assert torch.equal(guided_velocity(v, v_text_uncond, 1.0, v_img_uncond=v_img_uncond, img_scale=2.0), v)


def test_cfg_interval_selects_steps():
    calls = []

    def uncond(x, t):
        calls.append(round(float(t[0]), 4))
        return torch.zeros_like(x)

    grid = timestep_grid(4)                                  # 1, .75, .5, .25 -> 0
    euler_sample(lambda x, t: torch.ones_like(x), torch.zeros(2, 3), grid, uncond_fn=uncond, cfg_scale=3.0,
                 cfg_interval=(0.4, 0.8))
    assert calls == [0.75, 0.5]                              # lo < t <= hi
    calls.clear()
    out = euler_sample(lambda x, t: torch.ones_like(x), torch.zeros(1, 1), grid, uncond_fn=uncond, cfg_scale=1.0)
    assert calls == [] and torch.allclose(out, torch.full((1, 1), -1.0))
    # guided velocity 3 (uncond 0) on the two middle steps of 0.25: 0 - .25 - .75 - .75 - .25
    out = euler_sample(lambda x, t: torch.ones_like(x), torch.zeros(1, 1), grid, uncond_fn=uncond, cfg_scale=3.0,
                       cfg_interval=(0.4, 0.8))
    assert torch.allclose(out, torch.full((1, 1), -2.0))
    with pytest.raises(ConfigError):
        euler_sample(lambda x, t: x, torch.zeros(1), grid, renorm_type="local")
