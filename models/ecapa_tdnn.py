"""ECAPA-TDNN (Desplanques et al., arXiv 2005.07143) with WeSpeaker's module and parameter names.

The names mirror ``wenet-e2e/wespeaker:wespeaker/models/ecapa_tdnn.py`` and
``pooling_layers.py`` exactly (``layer1.conv``, ``layer2.se_res2block.1.convs.0``,
``pool.linear1``, ``bn2``, ...), so WeSpeaker state dicts load strictly with no key map.

Numerics follow WeSpeaker (Conv -> ReLU -> BN order, ASTP with tanh attention,
global context with an unbiased variance). On top, every block accepts an optional
frame mask so a padded, variable-length batch gives the same embeddings as one
utterance at a time: padded frames are zeroed before every convolution (which is
what the convolution's own zero padding sees at a sequence end), and the SE means,
global context and attention softmax only run over valid frames.

Sizes (``ECAPA_TDNN_GLOB_c512`` = 6.19M parameters, ``..._c1024`` = 14.65M) are in
``ECAPA_SIZES``; ``tiny`` is a CPU-test width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.models.configs import ECAPA_DEFAULTS, ECAPA_SIZES  # torch-free; re-exported


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


class Conv1dReluBn(nn.Module):
    """``conv`` then ReLU then ``bn`` (WeSpeaker's order)."""

    def __init__(self, in_channels, out_channels, kernel_size=1, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, 1, padding, dilation, bias=True)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x, mask=None):
        """[B, C_in, T] (+ frame mask [B, 1, T]) -> [B, C_out, T]; padded frames are zero afterwards."""
        return _masked(self.bn(F.relu(self.conv(x))), mask)


class Res2Conv1dReluBn(nn.Module):
    """Res2Net split: ``scale - 1`` chained convs (``convs.N``, ``bns.N``); the last split passes through."""

    def __init__(self, channels, kernel_size, padding, dilation, scale):
        super().__init__()
        if channels % scale:
            raise ValueError(f"ECAPA channels ({channels}) must be divisible by scale ({scale})")
        self.scale = scale
        self.width = channels // scale
        self.nums = scale if scale == 1 else scale - 1
        self.convs = nn.ModuleList(
            nn.Conv1d(self.width, self.width, kernel_size, 1, padding, dilation, bias=True) for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(self.nums))

    def forward(self, x, mask=None):
        """[B, C, T] -> [B, C, T]: ``scale`` channel groups, each conv fed the previous group's output."""
        splits = torch.split(x, self.width, dim=1)
        outputs = []
        running = splits[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            if i >= 1:
                running = running + splits[i]
            running = _masked(bn(F.relu(conv(running))), mask)
            outputs.append(running)
        if self.scale != 1:
            outputs.append(splits[self.nums])
        return torch.cat(outputs, dim=1)


class SEConnect(nn.Module):
    """Squeeze-excitation over channels with ``linear1``/``linear2`` (nn.Linear, as in WeSpeaker)."""

    def __init__(self, channels, bottleneck):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x, mask=None):
        """[B, C, T] -> [B, C, T] scaled per channel by a gate from the mean over valid frames."""
        if mask is None:
            squeezed = x.mean(dim=2)
        else:
            squeezed = (x * mask).sum(dim=2) / mask.sum(dim=2)
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(squeezed))))
        return x * gate.unsqueeze(2)


class SERes2Block(nn.Module):
    """``se_res2block`` = Sequential(1x1 Conv1dReluBn, Res2Conv1dReluBn, 1x1 Conv1dReluBn, SE) with a residual."""

    def __init__(self, channels, kernel_size, padding, dilation, scale, se_bottleneck):
        super().__init__()
        self.se_res2block = nn.Sequential(
            Conv1dReluBn(channels, channels, kernel_size=1),
            Res2Conv1dReluBn(channels, kernel_size, padding, dilation, scale),
            Conv1dReluBn(channels, channels, kernel_size=1),
            SEConnect(channels, se_bottleneck),
        )

    def forward(self, x, mask=None):
        """[B, C, T] -> [B, C, T]: 1x1 conv, Res2 conv, 1x1 conv, squeeze-excitation, plus the input."""
        out = x
        for block in self.se_res2block:
            out = block(out, mask)
        return x + out


class AttentiveStatsPool(nn.Module):
    """WeSpeaker ``ASTP``: attentive mean and std; ``linear1``/``linear2`` are 1x1 Conv1d."""

    def __init__(self, in_dim, bottleneck_dim=128, global_context_att=True):
        super().__init__()
        self.in_dim = in_dim
        self.global_context_att = global_context_att
        self.linear1 = nn.Conv1d(in_dim * 3 if global_context_att else in_dim, bottleneck_dim, kernel_size=1)
        self.linear2 = nn.Conv1d(bottleneck_dim, in_dim, kernel_size=1)

    @property
    def out_dim(self) -> int:
        """Output width: attentive mean and standard deviation, ``2 * in_dim``."""
        return 2 * self.in_dim

    def forward(self, x, mask=None):
        """Frame features [B, C, T] -> [B, 2C] (attentive mean ‖ std over the valid frames)."""
        if self.global_context_att:
            if mask is None:
                context_mean = x.mean(dim=-1, keepdim=True)
                context_var = x.var(dim=-1, keepdim=True)  # unbiased, as torch.var in WeSpeaker
            else:
                count = mask.sum(dim=-1, keepdim=True)
                context_mean = (x * mask).sum(dim=-1, keepdim=True) / count
                context_var = (((x - context_mean) * mask) ** 2).sum(dim=-1, keepdim=True) / (count - 1)
            context_std = torch.sqrt(context_var + 1e-7)
            x_in = torch.cat((x, context_mean.expand_as(x), context_std.expand_as(x)), dim=1)
        else:
            x_in = x
        logits = self.linear2(torch.tanh(self.linear1(x_in)))
        if mask is not None:
            logits = logits.masked_fill(mask == 0, float("-inf"))
        alpha = torch.softmax(logits, dim=2)
        mean = torch.sum(alpha * x, dim=2)
        var = torch.sum(alpha * x * x, dim=2) - mean ** 2
        std = torch.sqrt(var.clamp(min=1e-7))
        return torch.cat([mean, std], dim=1)


class ECAPALayers:
    """Mixin that builds ECAPA's layers directly on the module (so the state dict has
    WeSpeaker's top-level names) and runs them. Used by ``ECAPATDNN`` and by zoo models
    that must share WeSpeaker's key layout."""

    def build_ecapa(self, *, channels=512, feat_dim=80, embed_dim=192, global_context_att=True, emb_bn=True,
                    scale=8, se_bottleneck=128, pool_bottleneck=128, cat_out_channels=1536,
                    extra_pool_dim=0) -> None:
        """Create the layers (``layer1``..``layer4``, ``conv``, ``pool``, ``bn``, ``linear``, ``bn2``) on ``self``.

        Sizes are WeSpeaker's arguments: ``channels`` C of the TDNN blocks, ``feat_dim`` input fbank bins,
        ``embed_dim`` output size, ``scale`` Res2 groups, bottlenecks of SE and pooling, ``cat_out_channels``.
        ``extra_pool_dim`` > 0 widens ``bn`` and ``linear`` by that many inputs for utterance-level features
        that ``ecapa_forward(..., extra=...)`` concatenates to the pooled statistics (not in ECAPA or
        WeSpeaker, whose value is 0).
        """
        self.feat_dim = feat_dim
        self.embed_dim = embed_dim
        self.layer1 = Conv1dReluBn(feat_dim, channels, kernel_size=5, padding=2)
        self.layer2 = SERes2Block(channels, 3, padding=2, dilation=2, scale=scale, se_bottleneck=se_bottleneck)
        self.layer3 = SERes2Block(channels, 3, padding=3, dilation=3, scale=scale, se_bottleneck=se_bottleneck)
        self.layer4 = SERes2Block(channels, 3, padding=4, dilation=4, scale=scale, se_bottleneck=se_bottleneck)
        self.conv = nn.Conv1d(channels * 3, cat_out_channels, kernel_size=1)
        self.pool = AttentiveStatsPool(cat_out_channels, pool_bottleneck, global_context_att)
        self.extra_pool_dim = int(extra_pool_dim)
        self.bn = nn.BatchNorm1d(self.pool.out_dim + self.extra_pool_dim)
        self.linear = nn.Linear(self.pool.out_dim + self.extra_pool_dim, embed_dim)
        self.emb_bn = emb_bn
        self.bn2 = nn.BatchNorm1d(embed_dim) if emb_bn else nn.Identity()

    @staticmethod
    def frame_mask(lengths: torch.Tensor | None, num_frames: int, device) -> torch.Tensor | None:
        """[B, 1, T] float mask of valid frames, or None when every sequence is full length."""
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths, device=device)
        if bool((lengths >= num_frames).all()):
            return None
        steps = torch.arange(num_frames, device=device)
        return (steps[None, :] < lengths[:, None]).unsqueeze(1).float()

    def ecapa_forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None,
                      extra: torch.Tensor | None = None):
        """feats [B, T, F] (+ valid frame counts) -> (layer4 output [B, C, T], embedding [B, E]).

        ``extra`` [B, extra_pool_dim]: utterance-level features joined to the pooled statistics (required
        exactly when the layers were built with ``extra_pool_dim`` > 0; ValueError otherwise).
        """
        if (extra is None) != (self.extra_pool_dim == 0) or (
                extra is not None and tuple(extra.shape) != (feats.shape[0], self.extra_pool_dim)):
            raise ValueError(f"ECAPA built with extra_pool_dim={self.extra_pool_dim} got extra of shape "
                             f"{None if extra is None else tuple(extra.shape)} for a batch of {feats.shape[0]}")
        x = feats.transpose(1, 2)
        mask = self.frame_mask(lengths, x.shape[-1], x.device)
        x = _masked(x, mask)
        out1 = self.layer1(x, mask)
        out2 = self.layer2(out1, mask)
        out3 = self.layer3(out2, mask)
        out4 = self.layer4(out3, mask)
        out = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
        pooled = self.pool(out, mask)
        if extra is not None:
            pooled = torch.cat([pooled, extra.to(pooled.dtype)], dim=1)
        out = self.bn(pooled)
        embedding = self.bn2(self.linear(out))
        return out4, embedding


class ECAPATDNN(ECAPALayers, nn.Module):
    """Standalone ECAPA-TDNN; ``forward(feats [B,T,F], lengths=None) -> (out4, embedding)`` like WeSpeaker."""

    def __init__(self, **config):
        nn.Module.__init__(self)
        self.build_ecapa(**{**ECAPA_DEFAULTS, **config})

    def forward(self, feats, lengths=None):
        """Fbank ``feats`` [B, T, feat_dim] (+ valid frame counts [B]) -> (layer4 output [B, C, T], embedding [B, embed_dim]).
        """
        return self.ecapa_forward(feats, lengths)


def ecapa_config(size: str = "ecapa512", **overrides) -> dict:
    """``ECAPA_DEFAULTS`` with the named size (``ecapa512``, ``ecapa1024``, ``tiny``) and ``overrides``; ``ValueError``
    for an unknown size.
    """
    if size not in ECAPA_SIZES:
        raise ValueError(f"unknown ECAPA size {size!r}; sizes: {', '.join(ECAPA_SIZES)}")
    return {**ECAPA_DEFAULTS, **ECAPA_SIZES[size], **overrides}
