"""DINO projection head with WeSpeaker's parameter names (Caron et al., "DINO", arXiv 2104.14294, §3.1;
wenet-e2e/wespeaker:wespeaker/ssl/models/dino_wrapper.py ``DINOHead``).

``mlp`` is Sequential(Linear, BN, GELU, Linear, BN, GELU, Linear) for 3 layers with
``use_bn`` (keys ``mlp.0``, ``mlp.1``, ``mlp.3``, ``mlp.4``, ``mlp.6``), then L2
normalisation and a weight-normalised ``last_layer`` without bias.

``last_layer`` keeps the legacy ``torch.nn.utils.weight_norm`` parameter names
``weight_g`` [out, 1] and ``weight_v`` [out, in] that WeSpeaker checkpoints carry;
it is written here (w = g * v / ||v|| per output row) rather than through the
deprecated helper, whose newer replacement spells the keys
``parametrizations.weight.original0/1``. With ``norm_last_layer`` (the default),
``weight_g`` is fixed at 1 and not trained.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Linear layer without bias, weight = weight_g * weight_v / ||weight_v|| (norm over inputs per row)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        reference = nn.Linear(in_features, out_features, bias=False)  # torch's default init for v
        self.weight_v = nn.Parameter(reference.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.in_features = in_features
        self.out_features = out_features

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight [out, in]: each row of ``weight_v`` scaled to norm ``weight_g``."""
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x):
        """``x`` [..., in] -> [..., out] (no bias)."""
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO projection head: MLP ``in_dim -> hidden_dim (x nlayers-1) -> bottleneck_dim``, L2 normalisation, then
    a weight-normalised ``last_layer`` to ``out_dim`` prototypes (65536 in WeSpeaker's recipe).

    ``norm_last_layer`` fixes ``weight_g`` at 1 (not trained). Raises ``ValueError`` for ``nlayers < 1``.
    """
    def __init__(self, in_dim: int = 192, out_dim: int = 65536, *, use_bn: bool = True, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        if nlayers < 1:
            raise ValueError("DINOHead needs nlayers >= 1")
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            width = in_dim
            for _ in range(nlayers - 1):
                layers.append(nn.Linear(width, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
                width = hidden_dim
            layers.append(nn.Linear(width, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def forward(self, x, return_mlp: bool = False):
        """Embeddings [B, in_dim] -> prototype logits [B, out_dim] (before the DINO temperature), or the MLP
        output [B, bottleneck_dim] with ``return_mlp=True``.
        """
        x = self.mlp(x)
        if return_mlp:
            return x
        return self.last_layer(F.normalize(x, dim=-1, p=2))
