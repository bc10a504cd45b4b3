"""A lean HuBERT encoder with transformers' ``HubertModel`` parameter names.

A ``transformers.HubertModel`` state dict loads into ``HubertModel`` here with
``strict=True`` and no renaming (the keys of huggingface/transformers:src/transformers/models/hubert/modeling_hubert.py), and the outputs
match it (eval mode) to float32 rounding. What differs is how batches run:

* Variable-length batches are padding-free. The conv front end runs on all
  utterances laid end to end in one stream, each starting at a multiple of the
  total conv stride, so every kept frame sees only its own utterance; the
  GroupNorm of conv 0 takes its statistics over each utterance's own valid frames.
  Each utterance therefore gets exactly what it gets alone (transformers' padded
  batch instead normalises over the padding too).
* The transformer runs on the packed frames ``[sum(L), D]``; attention goes through
  ``zoo.nn.attention(..., seqlens=...)`` and never crosses utterances. The
  positional conv sees zeros around each utterance, as it would alone.
* ``output_layer=k`` stops after layer k (Sylber needs 9 layers, HuBERT iteration-2
  labels layer 6).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.audio import num_frames
from zoo.errors import AudioInputError, ConfigError
from zoo.models.configs import HUBERT_BASE_ENCODER  # noqa: F401  (torch-free; re-exported)


@dataclass
class HubertConfig:
    """transformers' ``HubertConfig`` field names; defaults are ``facebook/hubert-base-ls960`` (its config.json on the Hub).

    Raises :class:`~zoo.errors.ConfigError` for inconsistent conv lists or an unknown ``feat_extract_norm``.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_layer_norm: bool = True
    feat_proj_dropout: float = 0.1
    layerdrop: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: list = field(default_factory=lambda: [512] * 7)
    conv_stride: list = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    conv_kernel: list = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False
    do_stable_layer_norm: bool = False
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0

    def __post_init__(self):
        self.conv_dim, self.conv_stride, self.conv_kernel = (
            [int(v) for v in self.conv_dim], [int(v) for v in self.conv_stride], [int(v) for v in self.conv_kernel])
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)) or not self.conv_dim:
            raise ConfigError(
                f"HubertConfig: conv_dim, conv_stride and conv_kernel must have the same non-zero length, got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)}, {len(self.conv_kernel)}.")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ConfigError(f"HubertConfig: feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"HubertConfig: hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}.")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ConfigError(f"HubertConfig: hidden_size {self.hidden_size} is not divisible by "
                              f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}.")
        if self.conv_pos_batch_norm:
            raise ConfigError("HubertConfig: conv_pos_batch_norm=True (a HuBERT variant with a BatchNorm positional "
                              "conv) is not supported; HuBERT base/large use weight norm (False).")
        for name in ("hidden_act", "feat_extract_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ConfigError(f"HubertConfig: {name}={getattr(self, name)!r} is not one of {sorted(ACTIVATIONS)}.")

    @property
    def num_feat_extract_layers(self) -> int:
        """Number of conv layers in the feature encoder (``len(conv_dim)``)."""
        return len(self.conv_dim)

    @property
    def total_stride(self) -> int:
        """Samples per output frame: the product of ``conv_stride`` (320 for HuBERT-base, 50 Hz at 16 kHz)."""
        return math.prod(self.conv_stride)

    @property
    def receptive_field(self) -> int:
        """Samples that one output frame sees (400 for HuBERT-base, 25 ms at 16 kHz)."""
        field_, jump = 1, 1
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            field_ += (kernel - 1) * jump
            jump *= stride
        return field_

    def to_dict(self) -> dict:
        """The config as a plain dict of transformers' field names (JSON-able; ``HubertConfig(**d)`` rebuilds it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict, *, strict: bool = True, source: str | None = None) -> "HubertConfig":
        """Build from a dict; ``strict=False`` ignores keys HubertConfig does not have (e.g. a transformers config.json).

        With ``strict``, an unknown key raises :class:`~zoo.errors.ConfigError` listing the known fields and
        naming ``source`` (where the dict came from, e.g. ``"Sylber config 'encoder'"``) when given.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown and strict:
            where = (f"{source} has argument(s) {unknown} HubertConfig does not take" if source
                     else f"HubertConfig has no field(s) {unknown}")
            raise ConfigError(f"{where}; known fields: {sorted(known)}.")
        return cls(**{k: v for k, v in config.items() if k in known})




ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "swish": F.silu}


@dataclass
class HubertOutput:
    """Output of ``HubertModel.forward``: padded ``last_hidden_state`` [B, L, D] (zeros past each utterance), optional
    ``hidden_states`` (embeddings, then each layer run), and ``frame_lengths`` [B] int64.
    """
    last_hidden_state: torch.Tensor                 # [B, L, D], zeros after each utterance's frames
    hidden_states: tuple[torch.Tensor, ...] | None  # embeddings, then each layer run ([B, L, D] each)
    frame_lengths: torch.Tensor                     # [B] int64 valid frames per utterance


def compute_span_mask(frame_lengths, mask_prob: float, mask_length: int, min_masks: int = 0, *,
                      max_length: int | None = None, generator: torch.Generator | None = None,
                      require_same_masks: bool = False, shared_rounding: bool = False,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Random span mask ``[B, max_length]`` (True = masked) over each utterance's valid frames.

    Per utterance of L frames: ``int(mask_prob * L / mask_length + u)`` spans (u ~ U[0, 1),
    drawn once per batch with ``shared_rounding`` as transformers does, else per utterance as
    fairseq does), at least ``min_masks``; span starts are distinct, spans may overlap and
    never reach past L. ``require_same_masks`` (fairseq's default in HuBERT pretraining)
    then subsamples every row to the smallest count of masked frames in the batch.

    Raises ConfigError for a mask_length below 1.
    """
    lengths = [int(n) for n in torch.as_tensor(frame_lengths).tolist()]
    width = max(lengths, default=0) if max_length is None else int(max_length)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    if mask_length < 1:
        raise ConfigError(f"mask_length must be >= 1, got {mask_length}")
    shared = float(torch.rand((), generator=generator)) if shared_rounding else None
    rows = []
    for length in lengths:
        u = shared if shared is not None else float(torch.rand((), generator=generator))
        num_spans = max(int(min_masks), int(mask_prob * length / mask_length + u))
        span = min(mask_length, length)
        num_starts = length - span + 1  # starts so that the span fits in the utterance
        num_spans = min(num_spans, max(num_starts, 0))
        if num_spans <= 0 or length <= 0:
            rows.append(torch.zeros(0, dtype=torch.long))
            continue
        starts = torch.randperm(num_starts, generator=generator)[:num_spans]
        frames = (starts[:, None] + torch.arange(span)[None]).reshape(-1).unique()
        rows.append(frames)
    if require_same_masks and rows:
        smallest = min(len(r) for r in rows)
        rows = [r[torch.randperm(len(r), generator=generator)[:smallest]] if len(r) > smallest else r for r in rows]
    for index, frames in enumerate(rows):
        mask[index, frames] = True
    return mask if device is None else mask.to(device)


# --------------------------------------------------------------------------- front end
class ConvLayer(nn.Module):
    """One conv of the feature extractor: ``conv`` and, where the config puts one, ``layer_norm``."""

    def __init__(self, config: HubertConfig, index: int):
        super().__init__()
        in_dim = config.conv_dim[index - 1] if index > 0 else 1
        out_dim = config.conv_dim[index]
        self.stride = config.conv_stride[index]
        self.conv = nn.Conv1d(in_dim, out_dim, config.conv_kernel[index], stride=self.stride, bias=config.conv_bias)
        self.norm_kind = None
        if config.feat_extract_norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim)  # transformers: default eps here
            self.norm_kind = "layer"
        elif index == 0:
            self.layer_norm = nn.GroupNorm(out_dim, out_dim)  # one group per channel: norm over time
            self.norm_kind = "group"
        self.activation = ACTIVATIONS[config.feat_extract_activation]


class FeatureEncoder(nn.Module):
    """The 7-layer conv front end (``feature_extractor.conv_layers.N``); waveform samples -> 512-d frames."""
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList(ConvLayer(config, i) for i in range(config.num_feat_extract_layers))

    def forward(self, stream: torch.Tensor, starts: list[int], valid: list[int]) -> torch.Tensor:
        """``stream`` [1, 1, S] (utterances at ``starts``, multiples of the total stride) -> [1, C, S']."""
        x = stream
        jump = 1
        for layer in self.conv_layers:
            x = layer.conv(x)
            jump *= layer.stride
            if layer.norm_kind == "group":
                x = _segment_group_norm(x, [s // jump for s in starts], layer, valid)
            elif layer.norm_kind == "layer":
                x = layer.layer_norm(x.transpose(1, 2)).transpose(1, 2)
            x = layer.activation(x)
        return x


def _segment_group_norm(x: torch.Tensor, starts: list[int], layer: ConvLayer, valid_samples: list[int]) -> torch.Tensor:
    """GroupNorm (one group per channel) with each utterance's statistics over its own valid frames only.

    Utterance i owns frames [starts[i], starts[i+1]) of the stream; the first ``n_i`` of them are
    the frames it has alone (n_i from its sample count), the rest only feed frames that are dropped.
    The stream is cut with one ``split`` (cheap backward: one concatenation), not slices.
    """
    norm: nn.GroupNorm = layer.layer_norm
    kernel, stride = layer.conv.kernel_size[0], layer.conv.stride[0]
    ends = starts[1:] + [x.shape[-1]]
    sizes, owners = [], []
    for index, (start, end, samples) in enumerate(zip(starts, ends, valid_samples)):
        count = min(max(1, num_frames(samples, kernel, stride)), end - start)
        sizes += [count, end - start - count]
        owners += [index, index]
    pieces = x.split(sizes, dim=-1)
    out = []
    for index in range(len(starts)):
        valid, rest = pieces[2 * index], pieces[2 * index + 1]
        var, mean = torch.var_mean(valid.float(), dim=-1, unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + norm.eps) * norm.weight.float()[:, None]
        shift = (norm.bias.float()[:, None] - mean * scale).to(x.dtype)
        scale = scale.to(x.dtype)
        out.append(torch.addcmul(shift, valid, scale))
        if rest.shape[-1]:
            out.append(torch.addcmul(shift, rest, scale))
    return torch.cat(out, dim=-1) if len(out) > 1 else out[0]


class FeatureProjection(nn.Module):
    """LayerNorm (``feat_proj_layer_norm``) and Linear from the conv width to ``hidden_size``, then dropout."""
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.feat_proj_layer_norm = config.feat_proj_layer_norm
        if self.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Conv features [..., conv_dim[-1]] -> [..., hidden_size]."""
        if self.feat_proj_layer_norm:
            features = self.layer_norm(features)
        return self.dropout(self.projection(features))


# --------------------------------------------------------------------------- transformer
class _GroupedConvCPU(torch.autograd.Function):
    """Grouped conv1d (batch 1) whose backward runs as two grouped forward convs.

    On CPU the stock backward of the 128-tap, 16-group positional conv costs ~10x its
    forward; grad_input is the conv of the output gradient with the flipped, transposed
    kernel, and grad_weight a conv of the input with the output gradient as the kernel.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, groups: int):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.groups, ctx.has_bias = padding, groups, bias is not None
        return F.conv1d(x, weight, bias, padding=padding, groups=groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        out_channels, group_in, kernel = weight.shape
        groups, padding = ctx.groups, ctx.padding
        group_out = out_channels // groups
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = weight.view(groups, group_out, group_in, kernel).transpose(1, 2).flip(-1)
            grad_x = F.conv1d(grad, flipped.reshape(groups * group_in, group_out, kernel),
                              padding=kernel - 1 - padding, groups=groups)
        if ctx.needs_input_grad[1]:
            # batch = input channel of a group, channels = groups, kernel = the output gradient
            inputs = F.pad(x, (padding, padding))[0].view(groups, group_in, -1).transpose(0, 1)
            grad_w = F.conv1d(inputs, grad[0].reshape(out_channels, 1, -1), groups=groups).transpose(0, 1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2))
        return grad_x, grad_w, grad_b, None, None


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time with weight norm over dim 2 (keys ``conv.parametrizations.weight.original0/1``)."""

    def __init__(self, config: HubertConfig):
        super().__init__()
        kernel, groups, dim = config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups, config.hidden_size
        conv = nn.Conv1d(dim, dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(4.0 / (kernel * dim // groups)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0  # "same" length for an even kernel: drop the last output
        self.gap = kernel // 2
        self.activation = ACTIVATIONS[config.feat_extract_activation]

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.device.type == "cpu" and torch.is_grad_enabled():
            return _GroupedConvCPU.apply(x, conv.weight, conv.bias, conv.padding[0], conv.groups)
        return conv(x)

    def forward(self, packed: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """``packed`` [N, D] -> [N, D]; each utterance sees only zeros beyond its ends."""
        if len(lengths) == 1:
            out = self._conv(packed.t()[None])
        else:
            # Utterances separated by `gap` zeros: a kernel window never reaches a neighbour.
            positions = _gapped_positions(lengths, self.gap, packed.device)
            total = int(sum(lengths) + self.gap * (len(lengths) - 1))
            spread = packed.new_zeros(total, packed.shape[1]).index_copy(0, positions, packed)
            out = self._conv(spread.t()[None])
        if self.trim:
            out = out[..., :-self.trim]
        out = self.activation(out)[0].t()
        return out if len(lengths) == 1 else out.index_select(0, positions)


def _gapped_positions(lengths: list[int], gap: int, device) -> torch.Tensor:
    offsets = []
    position = 0
    for n in lengths:
        offsets.append(position)
        position += n + gap
    return torch.cat([torch.arange(o, o + n, device=device) for o, n in zip(offsets, lengths)])


class Attention(nn.Module):
    """Multi-head self-attention with transformers' ``q_proj``/``k_proj``/``v_proj``/``out_proj`` names; runs through
    ``zoo.nn.attention`` on packed variable-length sequences.
    """
    def __init__(self, config: HubertConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.dropout = config.attention_dropout
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Packed ``x`` [N, D] (utterances of ``lengths`` frames, laid end to end) -> [N, D]; no token
        attends across utterances.
        """
        from zoo.nn import attention

        # One matmul for q, k and v.
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        qkv = F.linear(x, weight, bias)
        n = x.shape[0]
        if len(lengths) > 1 and all(length == lengths[0] for length in lengths):
            qkv = qkv.view(len(lengths), lengths[0], 3, self.num_heads, self.head_dim)  # plain batch
            seqlens = None
        else:
            qkv = qkv.view(1, n, 3, self.num_heads, self.head_dim)
            seqlens = lengths if len(lengths) > 1 else None
        q, k, v = qkv.unbind(2)
        out = attention(q, k, v, seqlens=seqlens, dropout=self.dropout if self.training else 0.0)
        return self.out_proj(out.reshape(n, -1))


class FeedForward(nn.Module):
    """``intermediate_dense`` -> activation -> ``output_dense`` with transformers' dropouts."""
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., hidden_size] -> [..., hidden_size]."""
        x = self.intermediate_dropout(self.activation(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """One transformer block: post-LN (HuBERT-base) or pre-LN (``do_stable_layer_norm``, HuBERT-large)."""
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.pre_norm = config.do_stable_layer_norm
        self.attention = Attention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Packed ``x`` [N, D] with utterance ``lengths`` (frames) -> [N, D]."""
        if self.pre_norm:  # do_stable_layer_norm (large variants)
            x = x + self.dropout(self.attention(self.layer_norm(x), lengths))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, lengths)))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """Positional conv embedding, LayerNorm and the transformer stack, with layer drop in training."""
    def __init__(self, config: HubertConfig):
        super().__init__()
        self.stable_layer_norm = config.do_stable_layer_norm
        self.layerdrop = config.layerdrop
        self.pos_conv_embed = PositionalConvEmbedding(config)
        # Post-LN base: this LayerNorm comes before the stack; stable (pre-LN): after it.
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, lengths: list[int], *, output_hidden_states: bool = False,
                output_layer: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Packed ``x`` [N, D] -> (last [N, D], [embeddings, layer 1, ...] or None)."""
        x = x + self.pos_conv_embed(x, lengths)
        if not self.stable_layer_norm:
            x = self.layer_norm(x)
        x = self.dropout(x)
        states = [x] if output_hidden_states else None
        stop = len(self.layers) if output_layer is None else output_layer
        for layer in self.layers[:stop]:
            # LayerDrop: one draw per layer for the whole batch, as transformers does.
            if self.training and self.layerdrop > 0.0 and float(torch.rand([])) < self.layerdrop:
                if states is not None:
                    states.append(x)
                continue
            x = layer(x, lengths)
            if states is not None:
                states.append(x)
        # transformers 5.x: hidden_states[-1] is the raw last layer; only last_hidden_state gets the final LN.
        if self.stable_layer_norm and stop == len(self.layers):
            x = self.layer_norm(x)
        return x, states


# --------------------------------------------------------------------------- model
class HubertModel(nn.Module):
    """HuBERT encoder (Hsu et al., arXiv 2106.07447); ``state_dict()`` keys equal ``transformers.HubertModel``'s.

    Input: 16 kHz mono waveforms [B, T] float32 (the caller normalises them as its checkpoint expects),
    zero-padded, with true sample ``lengths`` [B]. Output: 50 Hz frames (``config.total_stride`` = 320
    samples, receptive field 400) of ``hidden_size`` features, zeros past each utterance's frames.
    ``config`` is a :class:`HubertConfig` or a dict of its fields (unknown keys: ``ConfigError``).
    """

    def __init__(self, config: HubertConfig | dict | None = None):
        super().__init__()
        if config is None:
            config = HubertConfig()
        elif isinstance(config, dict):
            config = HubertConfig.from_dict(config)
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        # transformers' HubertModel has it only when some masking is configured (modeling_hubert.py).
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
            self.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        self.encoder = Encoder(config)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, self.config.initializer_range)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in self.feature_extractor.conv_layers:
            nn.init.kaiming_normal_(layer.conv.weight)
            if layer.conv.bias is not None:
                nn.init.zeros_(layer.conv.bias)

    # ------------------------------------------------------------------ lengths
    def frame_lengths(self, sample_lengths):
        """Frames the conv stack makes from ``sample_lengths`` samples (int, or int64 tensor): 0 below one window.

        :func:`zoo.audio.num_frames` with the receptive field (400) and total stride (320).
        """
        return num_frames(sample_lengths, self.config.receptive_field, self.config.total_stride)

    def _lengths(self, input_values: torch.Tensor, lengths) -> list[int]:
        if input_values.ndim == 1:
            raise AudioInputError("HubertModel expects a batch [B, T]; use wav[None] for one waveform.")
        batch, width = input_values.shape
        if lengths is None:
            return [width] * batch
        sample_lengths = [int(n) for n in torch.as_tensor(lengths).tolist()]
        if len(sample_lengths) != batch or any(n > width or n < 0 for n in sample_lengths):
            raise AudioInputError(f"lengths {sample_lengths} do not fit a batch of shape {tuple(input_values.shape)}.")
        return sample_lengths

    # ------------------------------------------------------------------ stages (packed)
    def extract_features(self, input_values: torch.Tensor, lengths=None) -> tuple[torch.Tensor, list[int]]:
        """Conv features of every valid frame, packed: ([sum(L), C], frame lengths L).

        Raises AudioInputError when an input is shorter than the convolutional receptive field (400 samples for
        HuBERT-base).
        """
        sample_lengths = self._lengths(input_values, lengths)
        frames = [self.frame_lengths(n) for n in sample_lengths]
        if min(frames, default=0) <= 0:
            raise AudioInputError(
                f"An input of {min(sample_lengths)} samples is shorter than HuBERT's receptive field "
                f"({self.config.receptive_field} samples at 16 kHz); pad or drop it.")
        stride = self.config.total_stride
        batch, width = input_values.shape
        if batch == 1 or (all(n == width for n in sample_lengths) and width % stride == 0):
            stream = input_values.reshape(1, 1, -1)
            starts = [i * width for i in range(batch)]
        else:
            # Each utterance starts on the total-stride grid: its frames are exactly its own.
            padded = [-(-n // stride) * stride for n in sample_lengths]
            starts = [sum(padded[:i]) for i in range(batch)]
            stream = input_values.new_zeros(1, 1, sum(padded))
            for i, n in enumerate(sample_lengths):
                stream[0, 0, starts[i]:starts[i] + n] = input_values[i, :n]
        out = self.feature_extractor(stream, starts, sample_lengths)  # [1, C, S']
        index = torch.cat([torch.arange(s // stride, s // stride + n) for s, n in zip(starts, frames)])
        features = out[0].t().index_select(0, index.to(out.device))
        return features, frames

    def mask_features(self, hidden: torch.Tensor, frames: list[int], mask_time_indices=None) -> torch.Tensor:
        """Put ``masked_spec_embed`` at masked frames (given, or SpecAugment in training as transformers does).

        Raises ConfigError when masking is asked for but the model has no masked_spec_embed (mask_time_prob and
        mask_feature_prob both 0).
        """
        if not self.config.apply_spec_augment:
            return hidden
        if mask_time_indices is None and self.training and self.config.mask_time_prob > 0:
            mask_time_indices = compute_span_mask(
                frames, self.config.mask_time_prob, self.config.mask_time_length, self.config.mask_time_min_masks,
                shared_rounding=True)
        if mask_time_indices is not None:
            if not hasattr(self, "masked_spec_embed"):
                raise ConfigError("mask_time_indices needs masked_spec_embed, which exists only when "
                                  "mask_time_prob > 0 or mask_feature_prob > 0 in the HubertConfig.")
            packed_mask = pack(mask_time_indices.to(hidden.device)[..., None], frames)[:, 0]
            hidden = torch.where(packed_mask[:, None], self.masked_spec_embed.to(hidden.dtype), hidden)
        if self.training and self.config.mask_feature_prob > 0:
            channel_mask = compute_span_mask(
                [hidden.shape[-1]] * len(frames), self.config.mask_feature_prob, self.config.mask_feature_length,
                self.config.mask_feature_min_masks, shared_rounding=True).to(hidden.device)
            rows = torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(frames)).to(hidden.device)
            hidden = hidden.masked_fill(channel_mask[rows], 0.0)
        return hidden

    def encode(self, hidden: torch.Tensor, frames: list[int], *, output_hidden_states: bool = False,
               output_layer: int | None = None):
        """Projected (and masked) packed frames -> (packed last state, packed hidden states or None).

        Raises ConfigError for an output_layer outside 0..num_hidden_layers.
        """
        if output_layer is not None and not 0 <= output_layer <= len(self.encoder.layers):
            raise ConfigError(f"output_layer must be in 0..{len(self.encoder.layers)}, got {output_layer}.")
        return self.encoder(hidden, frames, output_hidden_states=output_hidden_states, output_layer=output_layer)

    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None, *,
                mask_time_indices: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_layer: int | None = None) -> HubertOutput:
        """``input_values`` [B, T] float (zero-padded) with sample ``lengths`` [B] -> :class:`HubertOutput`.

        ``last_hidden_state`` is [B, L, hidden_size] with L = frames of T samples; frames past an utterance's
        ``frame_lengths`` are zero. ``mask_time_indices`` [B, L] bool replaces those frames by the mask
        embedding (training); ``output_layer`` stops after that layer; ``output_hidden_states`` also returns the
        embeddings and every layer run. Raises :class:`~zoo.errors.AudioInputError` for a 1-D input or
        lengths that do not fit the batch.
        """
        features, frames = self.extract_features(input_values, lengths)
        hidden = self.feature_projection(features)
        hidden = self.mask_features(hidden, frames, mask_time_indices)
        last, states = self.encode(hidden, frames, output_hidden_states=output_hidden_states,
                                   output_layer=output_layer)
        width = self.frame_lengths(input_values.shape[-1])
        return HubertOutput(
            last_hidden_state=unpack(last, frames, width),
            hidden_states=None if states is None else tuple(unpack(s, frames, width) for s in states),
            frame_lengths=torch.tensor(frames, dtype=torch.long, device=input_values.device),
        )


def _flat_positions(frames: list[int], width: int, device) -> torch.Tensor:
    return torch.cat([torch.arange(i * width, i * width + n, device=device) for i, n in enumerate(frames)])


def pack(padded: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
    """[B, L, ...] -> [sum(frames), ...]: the first ``frames[i]`` rows of each utterance, concatenated."""
    frames = [int(n) for n in frames]
    batch, width = padded.shape[:2]
    if all(n == width for n in frames):
        return padded.reshape(batch * width, *padded.shape[2:])
    flat = padded.reshape(batch * width, *padded.shape[2:])
    return flat.index_select(0, _flat_positions(frames, width, padded.device))


def unpack(packed: torch.Tensor, frames: Sequence[int], width: int | None = None) -> torch.Tensor:
    """[sum(frames), ...] -> [B, width, ...] with zeros after each utterance's frames."""
    frames = [int(n) for n in frames]
    width = max(frames) if width is None else int(width)
    if all(n == width for n in frames):
        return packed.reshape(len(frames), width, *packed.shape[1:])
    out = packed.new_zeros(len(frames) * width, *packed.shape[1:])
    out = out.index_copy(0, _flat_positions(frames, width, packed.device), packed)
    return out.reshape(len(frames), width, *packed.shape[1:])


__all__ = ["HUBERT_BASE_ENCODER", "HubertConfig", "HubertModel", "HubertOutput", "compute_span_mask", "pack", "unpack"]
