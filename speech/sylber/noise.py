"""Noise augmentation of the student's input (``NoiseMixer`` of ``Berkeley-Speech-Group/sylber:sylber/utils/noise_utils.py``).

Only the student sees the corrupted waveform; the teacher gets the clean one.
Each utterance is augmented with probability ``augment_prob``. Of the augmented
ones, a share ``utterance_mix_ratio`` gets another utterance of the batch mixed
in: the interferer covers only the leading or trailing part of the crop (a
random fraction in ``shift_range`` is cut away) and its gain is drawn from
U(magnitude_range[0], utterance_magnitude_max_scale). The others get additive
noise (read from a folder by the dataset) with gain U(*magnitude_range). Both
signals are z-scored, so gains are relative to the speech's unit variance.
"""
from __future__ import annotations

import torch


class NoiseMixer:
    """The student's input corruption (module docstring). Probabilities in [0, 1], gains relative to unit variance.

    Raises :class:`~zoo.errors.ConfigError` for a probability outside [0, 1].
    """

    def __init__(self, augment_prob: float = 0.2, utterance_mix_ratio: float = 0.25,
                 shift_range: tuple[float, float] = (0.0, 0.7), magnitude_range: tuple[float, float] = (0.05, 0.7),
                 utterance_magnitude_max_scale: float = 0.2):
        if not 0.0 <= augment_prob <= 1.0 or not 0.0 <= utterance_mix_ratio <= 1.0:
            from zoo.errors import ConfigError

            raise ConfigError("noise.augment_prob and noise.utterance_mix_ratio must lie in [0, 1]")
        self.augment_prob = float(augment_prob)
        self.utterance_mix_ratio = float(utterance_mix_ratio)
        self.shift_range = (float(shift_range[0]), float(shift_range[1]))
        self.magnitude_range = (float(magnitude_range[0]), float(magnitude_range[1]))
        self.utterance_magnitude_max_scale = float(utterance_magnitude_max_scale)

    @staticmethod
    def _uniform(low: float, high: float, n: int, generator, device) -> torch.Tensor:
        # Drawn on the CPU (one generator for every device, so resume is exact), then moved.
        return (low + (high - low) * torch.rand(n, generator=generator)).to(device)

    def __call__(self, wav: torch.Tensor, noise: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                 *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``wav``: [B, T] z-scored padded batch; ``noise``: [B, T] or None; returns the mixed batch.

        Without a noise folder (``noise`` is None) the utterances picked for additive
        noise stay clean; utterance mixing still happens.
        """
        batch, length = wav.shape
        device = wav.device
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long, device=device)
        augmented = self._uniform(0.0, 1.0, batch, generator, device) < self.augment_prob
        mix_utterance = self._uniform(0.0, 1.0, batch, generator, device) < self.utterance_mix_ratio
        partner = torch.randperm(batch, generator=generator).to(device)
        cut = self._uniform(*self.shift_range, batch, generator, device)
        from_start = self._uniform(0.0, 1.0, batch, generator, device) < 0.5
        noise_gain = self._uniform(*self.magnitude_range, batch, generator, device)
        utterance_gain = self._uniform(self.magnitude_range[0], self.utterance_magnitude_max_scale, batch,
                                       generator, device)

        # Position of each sample as a fraction of its own utterance's true length.
        position = torch.arange(length, device=device)[None, :] / lengths.clamp_min(1)[:, None].to(wav.dtype)
        keep = torch.where(from_start[:, None], position > cut[:, None], (1.0 - position) > cut[:, None])
        valid = torch.arange(length, device=device)[None, :] < lengths[:, None]
        interferer = wav[partner] * keep * valid
        additive = noise * valid if noise is not None else torch.zeros_like(wav)

        corruption = torch.where(mix_utterance[:, None], interferer, additive)
        gain = torch.where(mix_utterance, utterance_gain, noise_gain) * augmented
        return wav + gain[:, None].to(wav.dtype) * corruption
