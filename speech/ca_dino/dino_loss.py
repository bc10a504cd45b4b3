"""DINO objective and schedules of WeSpeaker's Stage I (``wenet-e2e/wespeaker:wespeaker/ssl/models/dino_wrapper.py``,
``wespeaker/ssl/utils/dino_executor.py``; Caron et al., DINO, arXiv 2104.14294).

Teacher probabilities are centred and sharpened, ``softmax((T - center) / tau_t)``;
the loss is the mean cross-entropy over every (teacher view, student view) pair with
different views; the centre is an EMA (0.9) of the batch mean of teacher outputs,
all-reduced across processes. Schedules are per-iteration values.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    """DINO self-distillation loss with teacher centring (Caron et al. 2021, Eq. 1; WeSpeaker's ``DINOLoss``).

    ``out_dim``: head output size; ``center`` [1, out_dim] is a buffer (saved, all-reduced).
    Forward returns a scalar float32 loss in nats (>= 0) and updates the centre.
    """
    def __init__(self, out_dim: int, *, n_student_crops: int = 6, n_teacher_crops: int = 2,
                 student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.n_student_crops = n_student_crops
        self.n_teacher_crops = n_teacher_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, teacher_temp: float,
                update_center: bool = True) -> torch.Tensor:
        """student_out [n_student_crops * B, D], teacher_out [n_teacher_crops * B, D], both crop-major."""
        student_logp = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(self.n_student_crops)
        teacher_p = F.softmax((teacher_out.float().detach() - self.center) / teacher_temp, dim=-1)
        teacher_p = teacher_p.chunk(self.n_teacher_crops)
        total, terms = 0.0, 0
        for t_index, target in enumerate(teacher_p):
            for s_index, logp in enumerate(student_logp):
                if s_index == t_index:  # the same global crop seen by both: skipped
                    continue
                total = total + (-(target * logp).sum(dim=-1)).mean()
                terms += 1
        if update_center:
            self.update_center(teacher_out)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean over the batch (and processes) of ``teacher_out`` [N, out_dim]."""
        batch_sum = teacher_out.float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)


def teacher_temperature(epoch: int, total_epochs: int, *, warmup_temp: float = 0.04, final_temp: float = 0.07,
                        warmup_ratio: float = 0.2) -> float:
    """Linear 0.04 -> 0.07 over the first 20% of epochs (np.linspace endpoints included), then 0.07."""
    warmup_epochs = int(total_epochs * warmup_ratio)
    if epoch >= warmup_epochs:
        return final_temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (final_temp - warmup_temp) * epoch / (warmup_epochs - 1)


def cosine_value(step: int, total_steps: int, base: float, final: float, *, warmup_steps: int = 0,
                 warmup_start: float = 0.0) -> float:
    """WeSpeaker/DINO ``cosine_scheduler`` at one iteration: linear warmup, then half a cosine to ``final``."""
    step = min(max(step, 0), max(total_steps - 1, 0))
    if step < warmup_steps:
        if warmup_steps == 1:
            return warmup_start
        return warmup_start + (base - warmup_start) * step / (warmup_steps - 1)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = (step - warmup_steps) / decay_steps
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))
