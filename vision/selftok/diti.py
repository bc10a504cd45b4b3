"""DiTi: diffusion time -> number of visible tokens (Selftok paper §3; the release's ``DiTi_cont``).

The diffusion time ``t`` in [0, 1000] (1000 = pure noise) is split into stages
``[0, s_1), [s_1, s_2), ...``; stage i owns ``k_i`` tokens. Inside a stage the last visible
token index grows linearly:

    index(t) = sum(k_j for stages j before i) + trunc(k_i * (t - s_{i-1}) / (s_i - s_{i-1}))

clamped to [0, K - 1]; tokens ``0 .. index(t)`` are visible (``index + 1`` of them). At t = 0
only token 0 is visible, at t = 1000 all K. The arithmetic reproduces the release bit for bit
(selftok-team/SelftokTokenizer:mimogpt/models/selftok/diti_utils.py ``Segment.process``): the
slope ``k_i / (s_i - s_{i-1})`` is a Python float multiplied with the time tensor in its own
precision (float32 for float times; float32 arithmetic for integer times), truncated toward zero.
"""
from __future__ import annotations

from typing import Sequence

import torch

from zoo.errors import ConfigError

__all__ = ["DiTi", "diti_indices", "token_position"]


def _as_ints(values, name: str) -> list[int]:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"selftok {name} must be a list of integers (or 'a,b,c'), got {values!r}") from err
    if not out:
        raise ConfigError(f"selftok {name} is empty")
    return out


def token_position(k):
    """The position Selftok gives token k in its position embeddings: ``1000 + 8 k`` (past every diffusion time)."""
    return 1000 + k * 8


class DiTi:
    """The stage schedule: ``stages`` (increasing end times, the last one 1000) and ``k_per_stage``.

    ``DiTi([200, 400, 600, 800, 1000], [192, 184, 72, 48, 16])`` is the released 512-token schedule.
    ``num_tokens`` defaults to ``sum(k_per_stage)`` and must equal it when given.
    """

    def __init__(self, stages: Sequence[int] | str, k_per_stage: Sequence[int] | str, num_tokens: int | None = None):
        self.stages = _as_ints(stages, "stages")
        self.k_per_stage = _as_ints(k_per_stage, "k_per_stage")
        if len(self.stages) != len(self.k_per_stage):
            raise ConfigError(f"selftok stages {self.stages} and k_per_stage {self.k_per_stage} differ in length")
        bounds = [0] + self.stages
        if any(hi <= lo for lo, hi in zip(bounds[:-1], bounds[1:])):
            raise ConfigError(f"selftok stages must increase from above 0, got {self.stages}")
        if any(k < 0 for k in self.k_per_stage):
            raise ConfigError(f"selftok k_per_stage must be >= 0, got {self.k_per_stage}")
        self.K = int(sum(self.k_per_stage)) if num_tokens is None else int(num_tokens)
        if self.K != sum(self.k_per_stage):
            raise ConfigError(f"selftok k_per_stage {self.k_per_stage} sums to {sum(self.k_per_stage)}, "
                              f"not num_tokens={self.K}")
        self.segments = []  # (start time, slope, tokens before the stage)
        acc = 0
        for lo, hi, k in zip(bounds[:-1], bounds[1:], self.k_per_stage):
            self.segments.append((lo, float(k) / (hi - lo), acc))
            acc += k

    def __repr__(self) -> str:
        return f"DiTi(stages={self.stages}, k_per_stage={self.k_per_stage})"

    def to_indices(self, t: torch.Tensor) -> torch.Tensor:
        """Last visible token index for diffusion times ``t`` (any shape; float or integer, in [0, 1000]) -> int64."""
        t = torch.as_tensor(t)
        index = torch.zeros_like(t)
        for low, slope, base in self.segments:
            offset = t - low
            inside = offset >= 0
            index[inside] = (slope * offset).to(index.dtype)[inside] + base
        return index.to(torch.long).clamp(0, self.K - 1)

    def visible_count(self, t: torch.Tensor) -> torch.Tensor:
        """How many tokens are visible at times ``t``: ``to_indices(t) + 1``."""
        return self.to_indices(t) + 1

    def mask(self, indices: torch.Tensor) -> torch.Tensor:
        """Visibility mask [B, K] (True = visible) from last-visible indices [B] (``Encoder.get_encoder_mask``)."""
        indices = torch.as_tensor(indices)
        return torch.arange(self.K, device=indices.device)[None, :] <= indices.reshape(-1, 1)

    def visible_mask(self, t: torch.Tensor) -> torch.Tensor:
        """Visibility mask [B, K] for diffusion times ``t`` [B] in [0, 1000]."""
        return self.mask(self.to_indices(t))


def diti_indices(t, stages: Sequence[int] | str = (200, 400, 600, 800, 1000),
                 k_per_stage: Sequence[int] | str = (192, 184, 72, 48, 16)) -> torch.Tensor:
    """Plain-function form of :meth:`DiTi.to_indices` (default: the released 512-token schedule).

    ``t`` in [0, 1000]; returns the last visible token index (int64, same shape).
    """
    return DiTi(stages, k_per_stage).to_indices(torch.as_tensor(t))
