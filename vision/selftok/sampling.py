"""The release's sampling grid and the per-step token counts of diffusion decoding.

``SelftokPipeline.decoding`` integrates 50 Euler steps on ``RectifiedFlow(50, start=1.0,
val_schedule='uniform', shift=1.0)`` (selftok-team/SelftokTokenizer:mimogpt/models/selftok/sd3/
rectified_flow.py): the grid is a float32 ``linspace(1, 0, steps + 1)``; at step i the model sees
time ``t_i`` (embedded as ``1000 t_i``) and the tokens visible at ``long(1000 * t_i)`` - the
float32 product **truncated**, so 1000 x 0.46 = 459.99997 gives 459, not 460, and the steps at
t = 0.2 and 0.4 see 192 and 376 tokens rather than 193 and 377.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.errors import ConfigError

__all__ = ["FlowSchedule", "decode_token_indices"]


class FlowSchedule(nn.Module):
    """The release's ``RectifiedFlow`` buffers for ``num_steps`` uniform steps from ``start`` to 0.

    ``scheduled_t`` [n] (t_i), ``scheduled_t_prev`` [n] (t_{i+1}), ``timestep_map`` [n] (1000 t_i)
    and ``one_minus_scheduled_t`` [n], float32. Selftok checkpoints carry a 100-step copy as
    ``diffusion.*``; decoding builds its own.
    """

    def __init__(self, num_steps: int = 100, start: float = 1.0, shift: float = 1.0):
        super().__init__()
        if int(num_steps) < 1:
            raise ConfigError(f"the number of decoding steps must be >= 1, got {num_steps}")
        base = torch.linspace(float(start), 0, int(num_steps) + 1)
        grid = float(shift) * base / (1 + (float(shift) - 1) * base)
        self.register_buffer("timestep_map", grid[:-1] * 1000)
        self.register_buffer("scheduled_t", grid[:-1].clone())  # own storage: safetensors refuses shared views
        self.register_buffer("scheduled_t_prev", grid[1:].clone())
        self.register_buffer("one_minus_scheduled_t", 1 - grid[:-1])

    @property
    def num_steps(self) -> int:
        return int(self.scheduled_t.shape[0])

    def token_indices(self, diti) -> torch.Tensor:
        """Last visible token index at every step, int64 [n] (``diti.to_indices(long(timestep_map))``)."""
        return diti.to_indices(self.timestep_map.long())


def decode_token_indices(diti, steps: int = 50) -> torch.Tensor:
    """Last visible token index at each of the ``steps`` decoding steps (the release's truncated grid), int64."""
    return FlowSchedule(steps).token_indices(diti)
