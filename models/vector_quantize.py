"""Cosine-similarity vector quantizer with an EMA codebook, k-means init and dead-code re-activation.

Behaviour and buffer names follow the modified lucidrains quantizer Selftok ships
(selftok-team/SelftokTokenizer:mimogpt/models/selftok/vector_quantize_pytorch.py,
``VectorQuantize`` + ``CosineSimCodebook``), so its checkpoints load as they are:

* ``project_in`` (Linear dim -> codebook_dim, or Identity), ``project_out`` (Identity when the
  codebook width equals ``output_dim``); inputs are l2-normalised, codes are l2-normalised
  rows of ``_codebook.embed`` [1, C, d], and the nearest code is the one of largest cosine.
* ``_codebook`` buffers: ``initted`` (k-means done), ``cluster_size`` / ``cluster_size_wo_react``
  (EMA code counts), ``embed_avg`` (EMA code sums), ``embed``; with smart re-activation also
  ``timestep_p_over_c`` [1, K, C] (EMA of code usage per token position) and ``tpc_initted``.
* ``continuous``, ``steps`` and ``count`` [1, C] on the quantizer. As released, every forward
  (training or not) adds 1 to ``steps`` and the batch's code counts to ``count``, and the first
  forward with ``initted == 0`` runs k-means on the batch (in eval mode too).

Training (``module.train()``), per forward: EMA update of counts and sums (decay 0.99) and
``embed = l2norm(embed_avg / laplace-smoothed counts)``; codes whose EMA count falls below the
dead-code threshold are replaced by batch vectors, sampled (with smart re-activation) with
probability ``softmax_k(10 * (1/perplexity_k) / max)`` per token position k, so positions whose
code usage collapsed get more new codes. Losses: commitment ``mean((sg[q] - x)^2)`` and the
diversity term ``-w * cw * entropy`` (``diversity_loss``). The release's training path raises a
TypeError (``calc_entropy(..., min_ref=...)``); this is the behaviour it describes.
Under ``torch.distributed`` the counts and sums are all-reduced and k-means / new codes come
from rank 0, so every rank keeps the same codebook.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["CosineSimCodebook", "VectorQuantize", "kmeans", "l2norm", "entropy_terms", "diversity_weight"]


def l2norm(t: torch.Tensor) -> torch.Tensor:
    """``t`` scaled to unit L2 norm along the last dimension (same shape and dtype)."""
    return F.normalize(t, p=2, dim=-1)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> None:
    if _distributed():
        dist.broadcast(t, src=0)


def sample_vectors(samples: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` rows of ``samples`` [N, d]: a random permutation's first rows, or with replacement when N < num."""
    count = samples.shape[0]
    if count >= num:
        indices = torch.randperm(count, device=samples.device)[:num]
    else:
        indices = torch.randint(0, count, (num,), device=samples.device)
    return samples[indices]


def kmeans(samples: torch.Tensor, num_clusters: int, num_iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means on [h, N, d] l2-normalised samples -> (means [h, C, d], counts [h, C] int64).

    Means start as randomly drawn samples; each iteration assigns by largest dot product,
    averages, re-normalises, and keeps the old mean of an empty cluster.
    """
    heads, _, dim = samples.shape
    means = torch.stack([sample_vectors(s, num_clusters) for s in samples.unbind(0)])
    bins = None
    for _ in range(num_iters):
        buckets = torch.argmax(samples @ means.transpose(1, 2), dim=-1)
        bins = torch.zeros(heads, num_clusters, dtype=buckets.dtype, device=buckets.device)
        bins.scatter_add_(-1, buckets, torch.ones_like(buckets))
        zero_mask = bins == 0
        new_means = buckets.new_zeros(heads, num_clusters, dim, dtype=samples.dtype)
        new_means.scatter_add_(1, buckets[..., None].expand(-1, -1, dim), samples)
        new_means = l2norm(new_means / bins.masked_fill(zero_mask, 1)[..., None])
        means = torch.where(zero_mask[..., None], means, new_means)
    return means, bins


def entropy_terms(logits: torch.Tensor, position_usage: torch.Tensor, *, usage_weight: float = 0.8,
                  groups: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The two entropies of Selftok's diversity loss (``calc_ema_entropy``).

    ``logits`` [B, K, C] (10 x cosine), ``position_usage`` [K, C] (the EMA code usage per
    position). ``p = usage_weight * position_usage + (1 - usage_weight) * mean_b softmax(logits)``;
    returns (mean over positions of H(p_k), mean over position groups of H(mean of p_k in the
    group)), positions split into ``groups`` consecutive groups (``tensor_split``; empty groups,
    when K < groups, are left out).
    """
    p = logits.softmax(dim=-1).mean(dim=0)
    mixed = position_usage * usage_weight + p * (1 - usage_weight)
    per_position = -(mixed * torch.log(mixed)).sum(dim=-1).mean()
    # group means over tensor_split's groups, via index_add (slicing 64 views would cost 64 zero-filled
    # [K, C] gradients in the backward pass)
    positions = mixed.shape[0]
    sizes = [g.shape[0] for g in torch.arange(positions).tensor_split(groups) if g.shape[0]]
    group_of = torch.repeat_interleave(torch.arange(len(sizes), device=mixed.device),
                                       torch.tensor(sizes, device=mixed.device))
    sums = mixed.new_zeros(len(sizes), mixed.shape[1]).index_add(0, group_of, mixed)
    grouped = sums / torch.tensor(sizes, device=mixed.device, dtype=mixed.dtype)[:, None]
    per_group = -(grouped * torch.log(grouped)).sum(dim=-1).mean()
    return per_position, per_group


def diversity_weight(usage_fraction: float, reg: tuple[float, float]) -> float:
    """``cw``: 0.5 while the mean per-position perplexity / C is below ``reg[0]``, falling linearly to 0 at ``reg[1]``."""
    low, high = float(reg[0]), float(reg[1])
    if usage_fraction < low:
        return 0.5
    return max(0.5 - 0.5 / (high - low) * (usage_fraction - low), 0.0)


class CosineSimCodebook(nn.Module):
    """The codebook state (buffers) and its EMA / k-means / re-activation updates."""

    def __init__(self, dim: int, codebook_size: int, *, kmeans_init: bool = True, kmeans_iters: int = 10,
                 decay: float = 0.99, eps: float = 1e-5, threshold_ema_dead_code: float = 0.0,
                 reset_cluster_size: float | None = None, smart_re_K: int = 0):
        super().__init__()
        self.dim, self.codebook_size = int(dim), int(codebook_size)
        self.kmeans_iters, self.decay, self.eps = int(kmeans_iters), float(decay), float(eps)
        # relative to B*N*world/C until the first training batch fixes them (as the release does)
        self.threshold_ema_dead_code = float(threshold_ema_dead_code)
        self.reset_cluster_size = float(reset_cluster_size if reset_cluster_size is not None
                                        else threshold_ema_dead_code)
        self.dead_code_threshold_updated = False
        self.smart_react_K = int(smart_re_K)
        if kmeans_init:
            embed = torch.zeros(1, self.codebook_size, self.dim)
        else:
            embed = l2norm(nn.init.kaiming_uniform_(torch.empty(1, self.codebook_size, self.dim)))
        self.register_buffer("initted", torch.tensor([float(not kmeans_init)]))
        self.register_buffer("cluster_size", torch.zeros(1, self.codebook_size))
        self.register_buffer("cluster_size_wo_react", torch.zeros(1, self.codebook_size))
        self.register_buffer("embed_avg", embed.clone())
        if self.smart_react_K > 0:
            self.register_buffer("timestep_p_over_c",
                                 torch.ones(1, self.smart_react_K, self.codebook_size) / self.codebook_size)
            self.register_buffer("tpc_initted", torch.tensor([0.0]))
        self.register_buffer("embed", embed)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_embed_(self, flat: torch.Tensor) -> None:
        """k-means on [1, N, d] samples (rank 0's, broadcast) unless already initialised."""
        if bool(self.initted.item()):
            return
        embed, counts = kmeans(flat, self.codebook_size, self.kmeans_iters)
        counts = counts.to(self.cluster_size.dtype)
        self.embed.copy_(embed)
        self.embed_avg.copy_(embed * counts[..., None])
        self.cluster_size.copy_(counts)
        self.cluster_size_wo_react.copy_(counts)
        for buffer in (self.embed, self.embed_avg, self.cluster_size, self.cluster_size_wo_react):
            _broadcast(buffer)
        self.initted.fill_(1.0)

    # ------------------------------------------------------------------ usage statistics
    def position_perplexity(self) -> torch.Tensor:
        """exp(entropy) of the EMA code usage at each token position, [K]."""
        usage = self.timestep_p_over_c[0]
        return torch.exp(-torch.sum(usage * torch.log(usage + 1e-10), dim=-1))

    def position_weights(self) -> torch.Tensor:
        """Re-activation weight of each token position, [K]: ``softmax(10 * (1/perplexity) / max(1/perplexity))``."""
        weight = 1.0 / self.position_perplexity()
        return (weight / weight.max() * 10.0).softmax(dim=-1)

    # ------------------------------------------------------------------ training updates
    @torch.no_grad()
    def update_position_usage(self, indices: torch.Tensor) -> None:
        """EMA (decay 0.99; 0.3 for the first batch) of the batch's code histogram per position; indices [B, K]."""
        batch, positions = indices.shape
        flat = (torch.arange(positions, device=indices.device) * self.codebook_size)[None] + indices
        usage = torch.zeros(positions * self.codebook_size, device=indices.device)
        usage.index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), device=indices.device))
        usage = _all_reduce(usage.view(1, positions, self.codebook_size) / batch) / _world_size()
        decay = self.decay if bool(self.tpc_initted.item()) else 0.3
        self.timestep_p_over_c.lerp_(usage.to(self.timestep_p_over_c.dtype), 1 - decay)
        self.tpc_initted.fill_(1.0)

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA of counts and sums from [N, d] inputs and their [N] codes; re-normalised codebook."""
        bins = _all_reduce(torch.bincount(indices, minlength=self.codebook_size).to(flat.dtype)[None])
        self.cluster_size.lerp_(bins, 1 - self.decay)
        self.cluster_size_wo_react.lerp_(bins, 1 - self.decay)
        sums = torch.zeros(self.codebook_size, self.dim, dtype=flat.dtype, device=flat.device)
        sums.index_add_(0, indices, flat)
        self.embed_avg.lerp_(_all_reduce(sums[None]), 1 - self.decay)
        total = self.cluster_size.sum(dim=-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        self.embed.copy_(l2norm(l2norm(self.embed_avg / smoothed[..., None])))

    @torch.no_grad()
    def expire_codes_(self, flat: torch.Tensor) -> int:
        """Replace codes whose EMA count is below the threshold by batch vectors; returns how many.

        ``flat`` [B*K, d] in (batch, position) order. With smart re-activation each vector is
        drawn with its position's weight (``position_weights() / B``), with replacement.
        """
        if self.threshold_ema_dead_code == 0:
            return 0
        expired = self.cluster_size[0] < self.threshold_ema_dead_code
        count = int(expired.sum().item())
        if count == 0:
            return 0
        samples = l2norm(flat)
        if self.smart_react_K > 0:
            positions = self.smart_react_K
            batch = samples.shape[0] // positions
            probs = (self.position_weights() / batch).repeat(batch)
            picked = samples[torch.multinomial(probs, count, replacement=True)]
        else:
            picked = sample_vectors(samples, count)
        _broadcast(picked)
        self.embed[0, expired] = picked
        self.embed_avg[0, expired] = picked * self.reset_cluster_size
        self.cluster_size[0, expired] = self.reset_cluster_size
        return count

    def set_dead_code_scale(self, batch_vectors: int) -> None:
        """Turn the relative thresholds into absolute counts once: x ``batch_vectors * world / C``."""
        if self.dead_code_threshold_updated:
            return
        ratio = batch_vectors * _world_size() / self.codebook_size
        self.threshold_ema_dead_code *= ratio
        self.reset_cluster_size *= ratio
        self.dead_code_threshold_updated = True


class VectorQuantize(nn.Module):
    """Cosine-similarity VQ. ``forward(x [B, K, dim]) -> (quantized [B, K, output_dim], indices [B, K],
    loss scalar, logs dict)``.

    Args:
        dim: input width; ``codebook_dim``: code width (``project_in`` maps between them);
        output_dim: width of the returned vectors (``project_out``, Identity when equal to the code width).
        codebook_size: C. ``decay``: EMA decay. ``kmeans_init`` / ``kmeans_iters``: initial codebook.
        threshold_ema_dead_code, reset_cluster_size: dead-code threshold and the count a new code
            starts with, both relative to ``B * K * world / C`` (fixed at the first training batch).
        commitment_weight, diversity_weight: loss weights.
        smart_re_K: K, the number of token positions, for per-position usage and re-activation (0: off).
        reg: the (low, high) usage fractions of the diversity weight schedule.
        ema_entropy_ratio: weight of the EMA usage in the mixed distribution of the entropy.
        entropy_groups: position groups of the second entropy (64 as released).
        continuous: start in continuous mode (no quantization) for the first 2000 forwards.
    """

    def __init__(self, dim: int, codebook_size: int, *, codebook_dim: int | None = None, output_dim: int | None = None,
                 decay: float = 0.99, eps: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 10,
                 threshold_ema_dead_code: float = 0.0, reset_cluster_size: float | None = None,
                 commitment_weight: float = 1.0, diversity_weight: float = 0.0, smart_re_K: int = 0,
                 reg: tuple[float, float] = (0.25, 0.5), ema_entropy_ratio: float = 0.7, entropy_groups: int = 64,
                 continuous: bool = False):
        super().__init__()
        codebook_dim = int(codebook_dim or dim)
        output_dim = int(output_dim or dim)
        self.dim, self.codebook_dim, self.output_dim = int(dim), codebook_dim, output_dim
        self.codebook_size = int(codebook_size)
        self.project_in = nn.Linear(dim, codebook_dim) if codebook_dim != dim else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, output_dim) if codebook_dim != output_dim else nn.Identity()
        self.commitment_weight, self.diversity_weight = float(commitment_weight), float(diversity_weight)
        self.reg = (float(reg[0]), float(reg[1]))
        self.ema_entropy_ratio = float(ema_entropy_ratio)
        self.entropy_groups = int(entropy_groups)
        self._codebook = CosineSimCodebook(codebook_dim, codebook_size, kmeans_init=kmeans_init,
                                           kmeans_iters=kmeans_iters, decay=decay, eps=eps,
                                           threshold_ema_dead_code=threshold_ema_dead_code,
                                           reset_cluster_size=reset_cluster_size, smart_re_K=smart_re_K)
        self.register_buffer("continuous", torch.tensor([float(continuous)]))
        self.register_buffer("steps", torch.tensor([0.0]))
        self.register_buffer("count", torch.zeros(1, self.codebook_size))

    @property
    def codebook(self) -> torch.Tensor:
        """The l2-normalised codes, [C, codebook_dim]."""
        return self._codebook.embed[0]

    def get_output_from_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of ``indices`` (any shape of int64 in [0, C)) through ``project_out``: [..., output_dim]."""
        return self.project_out(self.codebook[indices])

    def forward(self, x: torch.Tensor):
        """``x`` [B, K, dim] -> ``(quantized [B, K, output_dim], indices [B, K] int64, loss scalar, logs dict)``; runs
        in float32 with autocast off (nearest codes need the precision). In training mode it also updates the
        codebook (EMA, dead-code re-activation).
        """
        with torch.autocast(x.device.type, enabled=False):
            return self._forward(x)

    def _forward(self, x: torch.Tensor):
        batch, positions, _ = x.shape
        # in float32 even when the module was cast to bf16: nearest codes need the precision
        if isinstance(self.project_in, nn.Linear):
            weight, bias = self.project_in.weight, self.project_in.bias
            x = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        x = l2norm(x.float())
        codebook = self._codebook
        self.steps += 1
        if bool(self.continuous.item()) and self.steps.item() > 2000:
            self.continuous.fill_(0.0)
        logs: dict = {"n_reactive": 0}
        if bool(self.continuous.item()):
            quantize, indices, logits = x, torch.randint(0, self.codebook_size, (batch, positions), device=x.device), None
        else:
            if self.training:
                codebook.set_dead_code_scale(batch * positions)
            flat = x.reshape(1, batch * positions, self.codebook_dim)
            codebook.init_embed_(flat.detach())
            embed = codebook.embed[0].detach().float().clone()  # the EMA update below writes embed in place
            logits = x @ embed.t()                                  # cosine similarities [B, K, C]
            indices = logits.argmax(dim=-1)
            quantize = F.embedding(indices, embed)
            if self.training:
                if codebook.smart_react_K > 0:
                    codebook.update_position_usage(indices)
                codebook.ema_update(flat[0].detach(), indices.reshape(-1))
                logs["n_reactive"] = codebook.expire_codes_(flat[0].detach())
        with torch.no_grad():
            self.count += torch.bincount(indices.reshape(-1), minlength=self.codebook_size).to(self.count.dtype)[None]
            usage = self.count / self.count.sum()
            logs["perplexity"] = float(torch.exp(-(usage * torch.log(usage + 1e-10)).sum()))
        loss = x.new_zeros(())
        if self.training:
            commit_target = quantize.detach()
            quantize = x + (commit_target - x).detach()  # straight-through
            if not bool(self.continuous.item()):
                commit = F.mse_loss(commit_target, x)
                loss = loss + self.commitment_weight * commit
                logs["commit_loss"] = float(commit.detach())
                if codebook.smart_react_K > 0 and self.diversity_weight:
                    per_position, per_group = entropy_terms(
                        logits * 10.0, codebook.timestep_p_over_c[0], usage_weight=self.ema_entropy_ratio,
                        groups=self.entropy_groups)
                    entropy = 0.5 * (per_position + per_group)
                    fraction = float(codebook.position_perplexity().mean()) / self.codebook_size
                    weight = diversity_weight(fraction, self.reg)
                    loss = loss - self.diversity_weight * weight * entropy
                    logs.update(diversity_entropy=float(per_position.detach()), group_entropy=float(per_group.detach()),
                                position_perplexity=fraction * self.codebook_size, diversity_cw=weight)
                elif self.diversity_weight:
                    p = (logits * 10.0).softmax(dim=-1).reshape(-1, self.codebook_size).mean(dim=0)
                    entropy = -(p * torch.log(p)).sum()
                    loss = loss - self.diversity_weight * entropy
                    logs["diversity_entropy"] = float(entropy.detach())
        return self.project_out(quantize), indices, loss, logs
