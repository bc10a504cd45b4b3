"""The Sylber model: a 9-layer HuBERT encoder whose frame features segment into syllables.

``model(wav, sample_rate)`` returns 50 Hz frame features (the last of the 9 layers,
speech.md §1.2); ``model.segment(wav, sample_rate)`` runs the greedy segmentation
(speech.md §1.5) and returns segments, their mean features and, when a syllable
codebook is attached, token ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from zoo.errors import AudioInputError, ConfigError
from zoo.model import ZooModel

# A frame needs 400 samples (receptive field); hop 320 (speech.md §1.2).
RECEPTIVE_FIELD = 400
HOP = 320


@dataclass
class SegmentResult:
    """Segmentation of one utterance (all tensors on the CPU)."""

    segments: torch.Tensor          # [N, 2] float64, [start, end) in seconds
    frames: torch.Tensor            # [N, 2] int64, [start, end) frame indices at 50 Hz
    features: torch.Tensor          # [N, D] mean frame feature of each segment
    hidden_states: torch.Tensor     # [L, D] frame features
    tokens: torch.Tensor | None = None   # [N] int64 syllable ids, when the model has a codebook
    norm_threshold: float = 2.6
    merge_threshold: float = 0.8
    duration: float = 0.0           # seconds of audio at 16 kHz
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def norms(self) -> torch.Tensor:
        """Per-frame feature norm (the quantity the norm threshold is applied to)."""
        return (self.hidden_states.double().pow(2).sum(-1) + 1e-8).sqrt()

    def to_dict(self) -> dict:
        return {
            "segments": self.segments.tolist(),
            "frames": self.frames.tolist(),
            "tokens": None if self.tokens is None else self.tokens.tolist(),
            "duration": self.duration,
            "norm_threshold": self.norm_threshold,
            "merge_threshold": self.merge_threshold,
        }


def num_frames(num_samples: int | torch.Tensor):
    """Frames the HuBERT conv stack makes from ``num_samples`` samples (0 below 400)."""
    if isinstance(num_samples, torch.Tensor):
        return torch.div(num_samples - RECEPTIVE_FIELD, HOP, rounding_mode="floor").clamp_min(-1) + 1
    return max(0, (int(num_samples) - RECEPTIVE_FIELD) // HOP + 1)


def znorm(wav: torch.Tensor) -> torch.Tensor:
    """Per-utterance z-score as the official Segmenter does (unbiased std, speech.md §1.2).

    A constant signal (digital silence) has std 0; it is centred and left at zero
    instead of becoming NaN.
    """
    wav = wav.to(torch.float32)
    centred = wav - wav.mean()
    std = wav.std() if wav.numel() > 1 else torch.zeros((), dtype=wav.dtype)
    return centred / std if float(std) > 0 else centred


def segment_mean_features(states: torch.Tensor, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mean of ``states[s:e]`` for each frame segment, via a cumulative sum (one pass)."""
    frames = torch.as_tensor(np.asarray(frames), dtype=torch.long).reshape(-1, 2)
    if frames.shape[0] == 0:
        return states.new_zeros(0, states.shape[-1])
    cumulative = torch.cat([states.new_zeros(1, states.shape[-1]), states.double().cumsum(0).to(states.dtype)])
    starts, ends = frames[:, 0].to(states.device), frames[:, 1].to(states.device)
    sums = cumulative[ends] - cumulative[starts]
    return sums / (ends - starts).clamp_min(1).to(states.dtype)[:, None]


class SylberModel(ZooModel):
    """HuBERT (transformers parameter names, under ``hubert.``) + an optional ``codebook`` buffer."""

    family = "sylber"

    def __init__(self, config: dict):
        super().__init__(config)
        from zoo.models.hubert import HubertConfig, HubertModel

        encoder = dict(config["encoder"])
        try:
            hubert_config = HubertConfig(**encoder)
        except TypeError as err:
            raise ConfigError(f"Sylber config 'encoder' has an argument HubertConfig does not take: {err}") from err
        self.hubert = HubertModel(hubert_config)
        self.hidden_size = int(encoder["hidden_size"])
        self.sample_rate = int(config.get("sample_rate", 16000))
        self.frame_rate = int(config.get("frame_rate", 50))
        num_tokens = int(config.get("num_tokens", 0) or 0)
        if num_tokens < 0:
            raise ConfigError(f"Sylber config 'num_tokens' must be >= 0, got {num_tokens}")
        # A None buffer is absent from the state dict; attach_codebook fills it.
        self.register_buffer("codebook", torch.zeros(num_tokens, self.hidden_size) if num_tokens else None)

    # ------------------------------------------------------------------ codebook
    @property
    def num_tokens(self) -> int:
        return 0 if self.codebook is None else int(self.codebook.shape[0])

    def attach_codebook(self, centroids: torch.Tensor | np.ndarray) -> None:
        """Store k-means centroids [K, D] as the ``codebook`` buffer (saved in model.safetensors)."""
        centroids = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
        if centroids.ndim != 2 or centroids.shape[1] != self.hidden_size or centroids.shape[0] == 0:
            raise ConfigError(f"codebook must have shape [K, {self.hidden_size}] with K > 0, got {tuple(centroids.shape)}")
        self.codebook = centroids.to(self.device)  # assigns the registered buffer
        self.config["num_tokens"] = int(centroids.shape[0])

    def assign_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (squared Euclidean) for each row of ``features`` [N, D] -> [N] int64."""
        if self.codebook is None:
            raise ConfigError("This Sylber model has no syllable codebook; fit one with "
                              "`zoo train sylber ... tokenizer.num_tokens=K` or zoo.speech.sylber.tokenizer.fit_tokenizer.")
        codebook = self.codebook.to(features.device, torch.float32)
        features = features.to(torch.float32)
        if features.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=features.device)
        distances = features.pow(2).sum(-1, keepdim=True) - 2 * features @ codebook.T + codebook.pow(2).sum(-1)[None]
        return distances.argmin(-1)

    # ------------------------------------------------------------------ input
    def prepare_inputs(self, wav, sample_rate: int | None = None, lengths=None) -> tuple[list[torch.Tensor], bool]:
        """Waveform(s) -> list of z-scored 16 kHz mono tensors, and whether the input was a batch.

        Accepted: a 1-D waveform; a [C, T] / [T, C] multi-channel recording (mixed down);
        a list of waveforms; a padded batch [B, T] together with ``lengths``.
        """
        from zoo.audio import prepare_waveforms

        waves, batched = prepare_waveforms(wav, int(sample_rate or self.sample_rate), self.sample_rate, lengths,
                                           min_samples=RECEPTIVE_FIELD)
        waves = [znorm(wave) for wave in waves]
        return waves, batched

    # ------------------------------------------------------------------ encoder
    def encode(self, waves: Sequence[torch.Tensor], *, batch_size: int | None = None) -> list[torch.Tensor]:
        """Prepared waveforms -> frame features [L_i, D] each (true lengths, no padding frames)."""
        from zoo.audio import pad_batch

        outputs: list[torch.Tensor | None] = [None] * len(waves)
        order = sorted(range(len(waves)), key=lambda i: -waves[i].shape[-1])  # similar lengths together
        step = batch_size or len(waves)
        dtype = next(self.hubert.parameters()).dtype
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            padded, lengths = pad_batch([waves[i] for i in chunk])
            out = self.hubert(padded.to(self.device, dtype), lengths.to(self.device))
            frame_lengths = out.frame_lengths if out.frame_lengths is not None else num_frames(lengths)
            for row, index in enumerate(chunk):
                outputs[index] = out.last_hidden_state[row, : int(frame_lengths[row])]
        return outputs  # type: ignore[return-value]

    def forward(self, wav=None, sample_rate: int | None = None, lengths=None, *, batch_size: int | None = None,
                input_values: torch.Tensor | None = None, mask_time_indices: torch.Tensor | None = None):
        """Frame features at 50 Hz (the last encoder layer).

        1-D input -> [L, D]; a list -> a list of [L_i, D]; a padded batch with
        ``lengths`` -> [B, L_max, D] with zeros after each utterance's frames.
        Wrap in ``torch.no_grad()`` for inference.

        Training path: ``input_values`` (an already z-scored 16 kHz batch [B, T]) with
        ``lengths`` returns the encoder's output (``last_hidden_state``, ``frame_lengths``);
        trainers call the model this way so a DDP wrapper sees the forward.
        """
        if input_values is not None:
            lengths = None if lengths is None else torch.as_tensor(lengths, device=input_values.device)
            return self.hubert(input_values, lengths, mask_time_indices=mask_time_indices)
        if wav is None:
            raise AudioInputError("Pass a waveform (or a list of waveforms) and its sample rate.")
        waves, batched = self.prepare_inputs(wav, sample_rate, lengths)
        features = self.encode(waves, batch_size=batch_size)
        if not batched:
            return features[0]
        if isinstance(wav, (list, tuple)):
            return features
        return torch.nn.utils.rnn.pad_sequence(features, batch_first=True)

    # ------------------------------------------------------------------ segmentation
    @torch.no_grad()
    def segment(self, wav, sample_rate: int | None = None, lengths=None, *, norm_threshold: float | None = None,
                merge_threshold: float | None = None, batch_size: int | None = None):
        """Syllable segments of each utterance: one SegmentResult, or a list for batched input.

        Thresholds default to the config (2.6 and 0.8 as the official Segmenter).
        Silence gives a result with no segments.
        """
        from zoo.speech.sylber.segment import segment as greedy_segment

        norm_threshold = float(self.config.get("norm_threshold", 2.6) if norm_threshold is None else norm_threshold)
        merge_threshold = float(self.config.get("merge_threshold", 0.8) if merge_threshold is None else merge_threshold)
        waves, batched = self.prepare_inputs(wav, sample_rate, lengths)
        features = self.encode(waves, batch_size=batch_size)
        results = []
        for wave, states in zip(waves, features):
            states = states.float().cpu()
            if float(wave.abs().max()) == 0.0:  # digital silence: no speech, no segments
                frames = np.zeros((0, 2), dtype=np.int64)
            else:
                frames = np.asarray(greedy_segment(states.numpy(), norm_threshold, merge_threshold),
                                    dtype=np.int64).reshape(-1, 2)
            results.append(self._result(states, frames, wave.shape[-1], norm_threshold, merge_threshold))
        return results if batched else results[0]

    def _result(self, states, frames, num_samples, norm_threshold, merge_threshold) -> SegmentResult:
        frames_t = torch.as_tensor(frames, dtype=torch.long).reshape(-1, 2)
        means = segment_mean_features(states, frames_t)
        tokens = self.assign_tokens(means.to(self.device)).cpu() if self.codebook is not None else None
        return SegmentResult(
            segments=frames_t.double() / self.frame_rate, frames=frames_t, features=means, hidden_states=states,
            tokens=tokens, norm_threshold=norm_threshold, merge_threshold=merge_threshold,
            duration=num_samples / self.sample_rate,
        )
