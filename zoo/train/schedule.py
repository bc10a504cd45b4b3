"""Optimizers (adamw, adam, sgd) and learning-rate schedules with warmup, from the recipe."""
from __future__ import annotations

import math

import torch

from zoo.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "linear", "cosine", "polynomial")


def build_optimizer(param_groups, optim: dict) -> torch.optim.Optimizer:
    """The optimizer the ``optim`` section names (adamw, adam or sgd) over ``param_groups``, with its ``lr``,
    ``betas``/``eps``, ``momentum``/``nesterov`` and ``weight_decay`` (a group's own ``weight_decay`` wins).

    Raises :class:`~zoo.errors.ConfigError` for another name or malformed betas.
    """
    name = str(optim.get("name") or "adamw").lower()
    lr = float(optim["lr"])
    weight_decay = float(optim.get("weight_decay") or 0.0)
    if name in ("adamw", "adam"):
        betas = tuple(float(b) for b in optim.get("betas") or (0.9, 0.999))
        if len(betas) != 2:
            raise ConfigError(f"optim.betas must hold two numbers, got {optim.get('betas')!r}")
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(param_groups, lr=lr, betas=betas, eps=float(optim.get("eps") or 1e-8), weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=float(optim.get("momentum") or 0.0),
                               nesterov=bool(optim.get("nesterov")), weight_decay=weight_decay)
    raise ConfigError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def lr_factor(step: int, *, name: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
              power: float = 1.0) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Raises ConfigError for a schedule name outside SCHEDULES.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    if name == "linear":
        shape = 1.0 - progress
    elif name == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif name == "polynomial":
        shape = (1.0 - progress) ** power
    else:
        raise ConfigError(f"schedule.name must be one of {', '.join(SCHEDULES)}, got {name!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def build_scheduler(optimizer, schedule: dict, max_steps: int,
                    group_factors: list | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor` for the ``schedule`` section (warmup then constant,
    linear, cosine or polynomial decay over ``total_steps``, default ``max_steps``). ``ConfigError`` for another
    name. ``group_factors`` (one ``f(step) -> float`` or None per parameter group, from
    ``Trainer.lr_factors``) multiply the schedule group by group.
    """
    name = str(schedule.get("name") or "constant").lower()
    if name not in SCHEDULES:
        raise ConfigError(f"schedule.name must be one of {', '.join(SCHEDULES)}, got {name!r}")
    options = dict(name=name, warmup_steps=int(schedule.get("warmup_steps") or 0),
                   total_steps=int(schedule.get("total_steps") or max_steps),
                   min_lr_ratio=float(schedule.get("min_lr_ratio") or 0.0),
                   power=float(schedule.get("power") if schedule.get("power") is not None else 1.0))
    if group_factors is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, **options))
    if len(group_factors) != len(optimizer.param_groups):
        raise ConfigError(f"{len(group_factors)} learning-rate factors for {len(optimizer.param_groups)} parameter groups")

    def combined(factor):
        return lambda step: lr_factor(step, **options) * (1.0 if factor is None else float(factor(step)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [combined(f) for f in group_factors])
