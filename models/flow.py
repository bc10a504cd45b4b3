"""Rectified-flow (flow-matching) utilities shared by the diffusion-decoder families.

Convention (SD3, Selftok, BAGEL): time ``t`` runs from 0 (data) to 1 (pure noise),

* ``x_t = t * noise + (1 - t) * x0``                    (:func:`interpolate`)
* the network predicts the velocity ``v = noise - x0``   (:func:`velocity_target`)
* sampling integrates ``dx/dt = v`` from t = 1 down to 0 with Euler steps
  ``x <- x - (t_i - t_{i+1}) * v``                       (:func:`euler_sample`)
* resolution-dependent timestep shift ``s * t / (1 + (s - 1) * t)`` (:func:`shift_timesteps`;
  the "resolution-dependent shifting" of the SD3 paper, Esser et al. 2024, arXiv 2403.03206).

Classifier-free guidance follows BAGEL (ByteDance-Seed/Bagel:modeling/bagel/bagel.py
``generate_image`` / ``_forward_flow``): guidance only inside ``cfg_interval`` (``lo < t <= hi``),
optional second (image) guidance, and "CFG renorm": the guided velocity is rescaled so that its
norm does not exceed the conditional velocity's norm (scale clamped to ``[renorm_min, 1]``).
Family-specific schedule quirks (e.g. Selftok's float32 step grid) live in the families.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from zoo.errors import ConfigError

__all__ = [
    "interpolate", "velocity_target", "predicted_x0", "shift_timesteps", "sample_uniform_t", "sample_logit_normal_t",
    "timestep_grid", "cfg_renorm", "guided_velocity", "euler_step", "euler_sample", "RENORM_TYPES",
]

RENORM_TYPES = ("global", "channel", "text_channel")


def _expand(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``t`` as a tensor broadcastable to ``like``: a scalar, or [B] -> [B, 1, ..., 1]."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t
    if t.dim() != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or hold one value per sample ({like.shape[0]}), got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``x_t = t * noise + (1 - t) * x0``; ``t`` a scalar or [B] in [0, 1] (1 = pure noise)."""
    t = _expand(t, x0)
    return t * noise + (1 - t) * x0


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``noise - x0`` (= d x_t / d t)."""
    return noise - x0


def predicted_x0(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """The clean sample implied by a velocity: ``x_t - t * v``."""
    return x_t - _expand(t, x_t) * velocity


def shift_timesteps(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """SD3's resolution shift ``shift * t / (1 + (shift - 1) * t)``; maps [0, 1] onto itself, identity at shift 1."""
    shift = float(shift)
    if shift <= 0:
        raise ConfigError(f"timestep shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def sample_uniform_t(n: int, *, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` times from U[0, 1) (float32 [n])."""
    return torch.rand(n, device=device, generator=generator)


def sample_logit_normal_t(n: int, mean: float = 0.0, std: float = 1.0, *, device=None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` times ``sigmoid(N(mean, std))`` (SD3's logit-normal sampling; BAGEL: mean 0, std 1), float32 [n]."""
    if std <= 0:
        raise ConfigError(f"logit-normal std must be positive, got {std}")
    return torch.sigmoid(mean + std * torch.randn(n, device=device, generator=generator))


def timestep_grid(num_steps: int, shift: float = 1.0, *, start: float = 1.0, device=None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``num_steps + 1`` times from ``start`` down to 0 (``linspace``), shifted; Euler step i goes t[i] -> t[i+1].

    BAGEL's ``num_timesteps=N`` corresponds to ``timestep_grid(N - 1, shift)`` (its grid has N points).
    """
    if int(num_steps) < 1:
        raise ConfigError(f"the number of sampling steps must be >= 1, got {num_steps}")
    grid = torch.linspace(start, 0.0, int(num_steps) + 1, device=device, dtype=dtype)
    return shift_timesteps(grid, shift) if float(shift) != 1.0 else grid


def _norm(v: torch.Tensor, channel_dim: int | None, per_sample: bool) -> torch.Tensor:
    if channel_dim is not None:
        return torch.linalg.vector_norm(v, dim=channel_dim, keepdim=True)
    if per_sample and v.dim() > 1:
        return torch.linalg.vector_norm(v.flatten(1), dim=1).reshape(-1, *([1] * (v.dim() - 1)))
    return torch.linalg.vector_norm(v)


def cfg_renorm(v_cond: torch.Tensor, v_guided: torch.Tensor, renorm_type: str = "global", renorm_min: float = 0.0, *,
               channel_dim: int = -1, per_sample: bool = True) -> torch.Tensor:
    """Rescale ``v_guided`` by ``clamp(||v_cond|| / (||v_guided|| + 1e-8), renorm_min, 1)``.

    ``"global"``: norms over everything of one sample (``per_sample=False``: over the whole tensor,
    BAGEL's packed batch of one image); ``"channel"``: norms along ``channel_dim`` (the latent
    channels of each token / pixel). ``renorm_min = 1`` disables the rescaling.
    """
    if renorm_type == "global":
        reference, current = _norm(v_cond, None, per_sample), _norm(v_guided, None, per_sample)
    elif renorm_type in ("channel", "text_channel"):
        reference, current = _norm(v_cond, channel_dim, False), _norm(v_guided, channel_dim, False)
    else:
        raise ConfigError(f"cfg renorm type must be one of {', '.join(RENORM_TYPES)}, got {renorm_type!r}")
    scale = (reference / (current + 1e-8)).clamp(min=float(renorm_min), max=1.0)
    return v_guided * scale


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor | None = None, scale: float = 1.0, *,
                    v_img_uncond: torch.Tensor | None = None, img_scale: float = 1.0,
                    renorm_type: str | None = None, renorm_min: float = 0.0, channel_dim: int = -1,
                    per_sample: bool = True) -> torch.Tensor:
    """Classifier-free guidance on velocities, BAGEL's order of operations.

    ``v = v_uncond + scale * (v_cond - v_uncond)``; then, when ``img_scale != 1`` and
    ``v_img_uncond`` is given, ``v = v_img_uncond + img_scale * (v - v_img_uncond)``. With
    ``renorm_type``: ``"global"``/``"channel"`` renormalise the final ``v`` against ``v_cond``;
    ``"text_channel"`` renormalises the text-guided velocity per channel before the image
    guidance. As in BAGEL, nothing happens (``v_cond`` is returned) when ``scale == 1`` or
    ``v_uncond`` is None, image guidance included.
    """
    if v_uncond is None or float(scale) == 1.0:
        return v_cond
    use_img = v_img_uncond is not None and float(img_scale) != 1.0
    v_text = v_uncond + scale * (v_cond - v_uncond)
    if renorm_type == "text_channel":
        v_text = cfg_renorm(v_cond, v_text, "channel", renorm_min, channel_dim=channel_dim)
        return v_img_uncond + img_scale * (v_text - v_img_uncond) if use_img else v_text
    guided = v_img_uncond + img_scale * (v_text - v_img_uncond) if use_img else v_text
    if renorm_type is None:
        return guided
    return cfg_renorm(v_cond, guided, renorm_type, renorm_min, channel_dim=channel_dim, per_sample=per_sample)


def euler_step(x_t: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor | float,
               t_next: torch.Tensor | float) -> torch.Tensor:
    """One Euler step of ``dx/dt = v`` from ``t`` to ``t_next`` (< t): ``x - (t - t_next) * v``."""
    return x_t - (_expand(t, x_t) - _expand(t_next, x_t)) * velocity


def euler_sample(velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                 timesteps: torch.Tensor | Sequence[float], *,
                 uncond_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 cfg_scale: float = 1.0, cfg_interval: tuple[float, float] = (0.0, 1.0),
                 img_uncond_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 cfg_img_scale: float = 1.0, renorm_type: str | None = None, renorm_min: float = 0.0,
                 channel_dim: int = -1, per_sample: bool = True,
                 callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate from ``noise`` at ``timesteps[0]`` to ``timesteps[-1]`` (usually 1 -> 0) with Euler steps.

    ``velocity_fn(x_t, t)`` returns the conditional velocity, ``t`` a float tensor [B]. Guidance
    (``uncond_fn``, and ``img_uncond_fn`` for a second condition) is applied at steps with
    ``cfg_interval[0] < t <= cfg_interval[1]`` and a scale other than 1, combined by
    :func:`guided_velocity`. ``callback(i, x_t, v)`` sees each step. Returns the final ``x``.
    """
    if renorm_type is not None and renorm_type not in RENORM_TYPES:
        raise ConfigError(f"renorm_type must be one of {', '.join(RENORM_TYPES)} or None, got {renorm_type!r}")
    grid = torch.as_tensor(timesteps, dtype=torch.float32)
    if grid.dim() != 1 or grid.numel() < 2:
        raise ConfigError("timesteps must be a 1-D sequence of at least two times (start ... end)")
    x = noise
    batch = x.shape[0]
    values = grid.tolist()
    for i in range(len(values) - 1):
        t = grid[i].to(x.device).expand(batch)
        v = velocity_fn(x, t)
        lo, hi = cfg_interval
        if lo < values[i] <= hi:
            v_uncond = uncond_fn(x, t) if uncond_fn is not None and float(cfg_scale) != 1.0 else None
            v_img = img_uncond_fn(x, t) if img_uncond_fn is not None and float(cfg_img_scale) != 1.0 else None
            v = guided_velocity(v, v_uncond, cfg_scale, v_img_uncond=v_img, img_scale=cfg_img_scale,
                                renorm_type=renorm_type, renorm_min=renorm_min, channel_dim=channel_dim,
                                per_sample=per_sample)
        if callback is not None:
            callback(i, x, v)
        x = euler_step(x, v, grid[i].to(x.device), grid[i + 1].to(x.device))
    return x
