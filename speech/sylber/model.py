"""The Sylber model: a 9-layer HuBERT encoder whose frame features segment into syllables.

Cho et al., *Sylber: Syllabic Embedding Representation of Speech from Raw Audio* (ICLR 2025,
arXiv 2410.07168); official inference code ``Berkeley-Speech-Group/sylber:sylber/model/sylber.py``
(``Segmenter``). ``model.extract_features(audio)`` (also ``model(audio, rate)``) returns the
50 Hz frame features (the output of the last of the 9 layers); ``model.segment(audio)`` runs the
greedy segmentation of :mod:`zoo.speech.sylber.segment` and returns segments, their mean
features and, when a syllable codebook is attached, token ids. Audio is anything
:func:`zoo.audio.prepare_waveforms` accepts: a path, a list of paths, a waveform with its
sample rate, a list of waveforms, or a padded batch with lengths.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from zoo.errors import AudioInputError, ConfigError
from zoo.model import ZooModel, inference

# Clips shorter than this have no meaningful syllable rate (a 50 ms clip with one segment is not
# "20 syllables per second"); SegmentResult.rate is None for them.
RATE_MIN_SECONDS = 1.0


@dataclass
class SegmentResult:
    """Segmentation of one utterance (all tensors on the CPU).

    Attributes:
        segments: ``[N, 2]`` float64, ``[start, end)`` in seconds (frame index / 50).
        frames: ``[N, 2]`` int64, ``[start, end)`` frame indices at 50 Hz.
        features: ``[N, D]`` float32 mean frame feature of each segment (NaN row for an empty
            segment, see :func:`zoo.speech.sylber.segment.segment_means`).
        hidden_states: ``[L, D]`` float32 frame features of the whole utterance.
        tokens: ``[N]`` int64 syllable ids when the model has a codebook (-1 for an empty
            segment), else None.
        norm_threshold, merge_threshold: the thresholds used.
        duration: seconds of audio at the model's sample rate.
    """

    segments: torch.Tensor
    frames: torch.Tensor
    features: torch.Tensor
    hidden_states: torch.Tensor
    tokens: torch.Tensor | None = None
    norm_threshold: float = 2.6
    merge_threshold: float = 0.8
    duration: float = 0.0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def norms(self) -> torch.Tensor:
        """``[L]`` float64 per-frame feature norm ``sqrt(sum(h^2) + 1e-8)``: what the norm threshold applies to."""
        from zoo.speech.sylber.segment import frame_norms

        return frame_norms(self.hidden_states.double())

    @property
    def rate(self) -> float | None:
        """Segments per second, or None when the clip is shorter than ``RATE_MIN_SECONDS`` (1 s)."""
        return len(self) / self.duration if self.duration >= RATE_MIN_SECONDS else None

    def to_dict(self) -> dict:
        """JSON-able summary: segments (s), frames, tokens, duration (s), rate (segments/s or None), thresholds."""
        return {
            "segments": self.segments.tolist(),
            "frames": self.frames.tolist(),
            "tokens": None if self.tokens is None else self.tokens.tolist(),
            "duration": self.duration,
            "segments_per_second": self.rate,
            "norm_threshold": self.norm_threshold,
            "merge_threshold": self.merge_threshold,
        }


def znorm(wav: torch.Tensor) -> torch.Tensor:
    """Per-utterance z-score ``(x - mean) / std`` (unbiased std) as the official ``Segmenter`` does.

    ``Berkeley-Speech-Group/sylber:sylber/model/sylber.py``. A constant signal (digital silence)
    has std 0: it is centred and left at zero instead of becoming NaN. ``[T]`` float -> ``[T]`` float32.
    """
    wav = wav.to(torch.float32)
    centred = wav - wav.mean()
    std = wav.std() if wav.numel() > 1 else torch.zeros((), dtype=wav.dtype)
    return centred / std if float(std) > 0 else centred


class SylberModel(ZooModel):
    """HuBERT (transformers parameter names, under ``hubert.``) plus an optional ``codebook`` buffer ``[K, D]``.

    Built from a config dict (``zoo.speech.sylber.builder``): ``encoder`` (HubertConfig
    fields), ``sample_rate`` (16000), ``frame_rate`` (50), ``norm_threshold`` (2.6) and
    ``merge_threshold`` (0.8) for :meth:`segment`, ``num_tokens`` (codebook rows, 0 = none).
    Raises :class:`~zoo.errors.ConfigError` for an encoder argument HubertConfig does not
    take or a negative ``num_tokens``.
    """

    family = "sylber"

    def __init__(self, config: dict):
        super().__init__(config)
        from zoo.models.hubert import HubertConfig, HubertModel

        encoder = dict(config["encoder"])
        hubert_config = HubertConfig.from_dict(encoder, source="Sylber config 'encoder'")
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
        """Rows of the syllable codebook (0 when none is attached)."""
        return 0 if self.codebook is None else int(self.codebook.shape[0])

    def attach_codebook(self, centroids: torch.Tensor | np.ndarray) -> None:
        """Store k-means centroids ``[K, D]`` as the ``codebook`` buffer (saved in model.safetensors).

        Raises :class:`~zoo.errors.ConfigError` unless the shape is ``[K, hidden_size]`` with K > 0.
        """
        centroids = torch.as_tensor(np.asarray(centroids), dtype=torch.float32)
        if centroids.ndim != 2 or centroids.shape[1] != self.hidden_size or centroids.shape[0] == 0:
            raise ConfigError(f"codebook must have shape [K, {self.hidden_size}] with K > 0, got {tuple(centroids.shape)}")
        self.codebook = centroids.to(self.device)  # assigns the registered buffer
        self.config["num_tokens"] = int(centroids.shape[0])

    @inference
    def assign_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (squared Euclidean) for each row of ``features`` ``[N, D]`` -> ``[N]`` int64.

        A row that is not finite (the NaN mean of an empty segment) gets -1. Raises
        :class:`~zoo.errors.ConfigError` when no codebook is attached.
        """
        if self.codebook is None:
            raise ConfigError("This Sylber model has no syllable codebook; fit one with "
                              "`zoo train sylber ... tokenizer.num_tokens=K` or zoo.speech.sylber.tokenizer.fit_tokenizer.")
        codebook = self.codebook.to(features.device, torch.float32)
        features = features.to(torch.float32)
        if features.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=features.device)
        finite = torch.isfinite(features).all(-1)
        clean = torch.where(finite[:, None], features, torch.zeros_like(features))
        distances = clean.pow(2).sum(-1, keepdim=True) - 2 * clean @ codebook.T + codebook.pow(2).sum(-1)[None]
        return torch.where(finite, distances.argmin(-1), torch.full_like(finite, -1, dtype=torch.long))

    # ------------------------------------------------------------------ input
    def prepare_inputs(self, audio, sample_rate: int | None = None, lengths=None, *,
                       channel_axis: int | None = None) -> tuple[list[torch.Tensor], bool]:
        """Audio -> (list of z-scored 16 kHz mono float32 tensors, whether the input was a batch).

        ``audio`` is anything :func:`zoo.audio.prepare_waveforms` accepts (path, list of paths,
        waveform with ``sample_rate``, list, padded batch with ``lengths``; ``channel_axis``
        for one multi-channel array). Each waveform must cover at least one frame (400
        samples at 16 kHz, the encoder's receptive field); raises
        :class:`~zoo.errors.AudioInputError` otherwise.
        """
        from zoo.audio import prepare_waveforms

        waves, batched = prepare_waveforms(audio, sample_rate, self.sample_rate, lengths,
                                           min_samples=self.hubert.config.receptive_field, channel_axis=channel_axis)
        return [znorm(wave) for wave in waves], batched

    # ------------------------------------------------------------------ encoder
    def _encode(self, waves: Sequence[torch.Tensor], batch_size: int | None = None) -> list[torch.Tensor]:
        """Prepared waveforms -> frame features ``[L_i, D]`` each (true lengths, no padding frames)."""
        from zoo.audio import pad_batch

        outputs: list[torch.Tensor | None] = [None] * len(waves)
        order = sorted(range(len(waves)), key=lambda i: -waves[i].shape[-1])  # similar lengths together
        step = batch_size or len(waves)
        dtype = next(self.hubert.parameters()).dtype
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            padded, lengths = pad_batch([waves[i] for i in chunk])
            out = self.hubert(padded.to(self.device, dtype), lengths.to(self.device))
            for row, index in enumerate(chunk):
                outputs[index] = out.last_hidden_state[row, : int(out.frame_lengths[row])]
        return outputs  # type: ignore[return-value]

    @inference
    def extract_features(self, audio, sample_rate: int | None = None, lengths=None, *,
                         channel_axis: int | None = None, batch_size: int | None = None):
        """Frame features at 50 Hz (the last encoder layer), in eval mode without gradients.

        One input -> ``[L, D]``; a list -> a list of ``[L_i, D]``; a padded batch with
        ``lengths`` -> ``[B, L_max, D]`` with zeros after each utterance's frames. ``L`` is
        :func:`zoo.audio.num_frames` of the 16 kHz length (window 400, hop 320).
        ``batch_size`` caps how many utterances run through the encoder together.
        Raises :class:`~zoo.errors.AudioInputError` for unusable audio.
        """
        waves, batched = self.prepare_inputs(audio, sample_rate, lengths, channel_axis=channel_axis)
        features = self._encode(waves, batch_size)
        if not batched:
            return features[0]
        if lengths is None:
            return features
        return torch.nn.utils.rnn.pad_sequence(features, batch_first=True)

    def forward(self, audio=None, sample_rate: int | None = None, lengths=None, *, channel_axis: int | None = None,
                batch_size: int | None = None, input_values: torch.Tensor | None = None,
                mask_time_indices: torch.Tensor | None = None):
        """``model(audio, sample_rate)`` = :meth:`extract_features` (eval mode, no gradients).

        Training path: ``input_values`` (an already z-scored 16 kHz batch ``[B, T]``) with
        ``lengths`` ``[B]`` returns the encoder's ``HubertOutput`` (``last_hidden_state``
        ``[B, L, D]``, ``frame_lengths`` ``[B]``) in the module's current mode, with gradients;
        trainers call the model this way so a DDP wrapper sees the forward.
        """
        if input_values is not None:
            lengths = None if lengths is None else torch.as_tensor(lengths, device=input_values.device)
            return self.hubert(input_values, lengths, mask_time_indices=mask_time_indices)
        if audio is None:
            raise AudioInputError("Pass audio (a path, a waveform with its sample rate, or a list of them).")
        return self.extract_features(audio, sample_rate, lengths, channel_axis=channel_axis, batch_size=batch_size)

    # ------------------------------------------------------------------ segmentation
    @inference
    def segment(self, audio, sample_rate: int | None = None, lengths=None, *, norm_threshold: float | None = None,
                merge_threshold: float | None = None, channel_axis: int | None = None,
                batch_size: int | None = None, workers: int | None = None):
        """Syllable segments: one :class:`SegmentResult`, or a list of them for batched input.

        Runs in eval mode without gradients (the official ``Segmenter`` calls ``.eval()`` too).
        Thresholds default to the model's config (2.6 and 0.8 as the official ``Segmenter``):
        frames whose feature norm is below ``norm_threshold`` are silence, and
        ``merge_threshold`` (a cosine in [-1, 1]) decides whether a frame joins the current
        segment. Digital silence (all-zero samples) gives a result with no segments. A batch
        is segmented in parallel over ``workers`` threads (default: all cores), with the
        same segments as one at a time. Raises :class:`~zoo.errors.AudioInputError` for
        unusable audio.
        """
        from zoo.speech.sylber.segment import segment as greedy_segment

        norm_threshold = float(self.config.get("norm_threshold", 2.6) if norm_threshold is None else norm_threshold)
        merge_threshold = float(self.config.get("merge_threshold", 0.8) if merge_threshold is None else merge_threshold)
        waves, batched = self.prepare_inputs(audio, sample_rate, lengths, channel_axis=channel_axis)
        features = [states.float().cpu() for states in self._encode(waves, batch_size)]
        speech = [index for index, wave in enumerate(waves) if float(wave.abs().max()) > 0.0]
        found = greedy_segment([features[i].numpy() for i in speech], norm_threshold, merge_threshold,
                               workers=workers) if speech else []
        frames = [np.zeros((0, 2), dtype=np.int64)] * len(waves)  # digital silence: no speech, no segments
        for index, segments in zip(speech, found):
            frames[index] = segments
        results = [self._result(states, segments, wave.shape[-1], norm_threshold, merge_threshold)
                   for wave, states, segments in zip(waves, features, frames)]
        return results if batched else results[0]

    def _result(self, states, frames, num_samples, norm_threshold, merge_threshold) -> SegmentResult:
        from zoo.speech.sylber.segment import segment_means

        frames_t = torch.as_tensor(frames, dtype=torch.long).reshape(-1, 2)
        means = segment_means(states, frames_t)
        tokens = self.assign_tokens(means.to(self.device)).cpu() if self.codebook is not None else None
        return SegmentResult(
            segments=frames_t.double() / self.frame_rate, frames=frames_t, features=means, hidden_states=states,
            tokens=tokens, norm_threshold=norm_threshold, merge_threshold=merge_threshold,
            duration=num_samples / self.sample_rate,
        )
