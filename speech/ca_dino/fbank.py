"""Batched Kaldi fbank front end on the model's device (``wenet-e2e/wespeaker:wespeaker/ssl/dataset/processor.py``).

WeSpeaker computes, per waveform: ``torchaudio.compliance.kaldi.fbank(wav * 2**15,
num_mel_bins=80, frame_length=25, frame_shift=10, dither=1.0 (training only),
window_type='hamming', use_energy=False)`` and then subtracts the per-utterance mean
(CMN, no variance normalisation). ``kaldi_fbank`` reproduces those steps for a
padded batch in one pass (framing with snip_edges, dither, DC removal,
pre-emphasis 0.97 with a replicated first sample, Hamming window, 512-point power
spectrum, torchaudio's own Kaldi mel banks, log floored at float eps); tests check
it against torchaudio frame by frame. Padded frames are masked out of the CMN mean.

Optional augmentation (``NoiseReverb``): MUSAN-style additive noise at a random SNR
and RIR reverberation from user folders, one of the two per crop with ``aug_prob``,
then peak normalisation, as WeSpeaker's ``add_reverb_noise``.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from zoo.errors import AudioInputError, ConfigError

FBANK_DEFAULTS = {
    "num_mel_bins": 80,
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "dither": 1.0,          # used only when training (WeSpeaker compute_fbank)
    "sample_rate": 16000,
    "low_freq": 20.0,
    "preemphasis": 0.97,
}

_EPS = torch.finfo(torch.float32).eps
MEL_FLOOR = float(_EPS)  # Kaldi's log floor (torchaudio.compliance.kaldi: EPSILON = float32 eps)


def frame_geometry(sample_rate: int = 16000, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0):
    """(window_size, window_shift, fft_size) in samples, as Kaldi rounds them."""
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    fft_size = 1 << (window_size - 1).bit_length()
    return window_size, window_shift, fft_size


def num_frames(num_samples, sample_rate: int = 16000, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0):
    """Kaldi frame count with snip_edges: 1 + (n - window) // shift (0 when shorter than a window)."""
    window_size, window_shift, _ = frame_geometry(sample_rate, frame_length_ms, frame_shift_ms)
    if isinstance(num_samples, torch.Tensor):
        return torch.where(num_samples >= window_size, 1 + (num_samples - window_size) // window_shift,
                           torch.zeros_like(num_samples))
    return 0 if num_samples < window_size else 1 + (num_samples - window_size) // window_shift


def samples_for_frames(frames: int, sample_rate: int = 16000, frame_length_ms: float = 25.0,
                       frame_shift_ms: float = 10.0) -> int:
    """Samples that give exactly ``frames`` frames (WeSpeaker's chunk_len conversion)."""
    window_size, window_shift, _ = frame_geometry(sample_rate, frame_length_ms, frame_shift_ms)
    return (frames - 1) * window_shift + window_size


@lru_cache(maxsize=8)
def _mel_matrix(num_mel_bins: int, fft_size: int, sample_rate: int, low_freq: float) -> torch.Tensor:
    from torchaudio.compliance.kaldi import get_mel_banks

    banks, _ = get_mel_banks(num_mel_bins, fft_size, float(sample_rate), low_freq, 0.0, 100.0, -500.0, 1.0)
    return F.pad(banks, (0, 1)).T.contiguous().float()  # [fft_size // 2 + 1, num_mel_bins]


def kaldi_fbank(waves: torch.Tensor, lengths: torch.Tensor | None = None, *, num_mel_bins: int = 80,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, dither: float = 0.0,
                sample_rate: int = 16000, low_freq: float = 20.0, preemphasis: float = 0.97,
                cmn: bool = True, generator: torch.Generator | None = None, mel_floor: float = MEL_FLOOR):
    """Batched fbank of 16 kHz waveforms in [-1, 1].

    waves: [B, T] float (padded), lengths: valid samples per row (default: all T).
    Returns (feats [B, frames, num_mel_bins], frame_counts LongTensor[B]); frames past a
    row's count are zero. ``dither`` is in 16-bit units (WeSpeaker: 1.0 in training).
    ``mel_floor``: the smallest mel power before the log, in the units of the waveform x 2^15
    (Kaldi and WeSpeaker: float32 eps, so digital silence gives log(eps) = -15.9 in every bin,
    while dither in training lifts silence to about -2.5 .. 8.5; a floor near the dither's power,
    such as 1000, makes silence look the same with and without dither).
    """
    if waves.dim() == 1:
        waves = waves.unsqueeze(0)
    device = waves.device
    batch, total = waves.shape
    if lengths is None:
        lengths = torch.full((batch,), total, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device).long()
    window_size, window_shift, fft_size = frame_geometry(sample_rate, frame_length_ms, frame_shift_ms)
    counts = num_frames(lengths, sample_rate, frame_length_ms, frame_shift_ms)
    if bool((counts <= 0).any()):
        short = [int(n) for n in lengths[counts <= 0][:5]]
        raise AudioInputError(f"audio of {short} samples is shorter than one {frame_length_ms} ms window "
                              f"({window_size} samples); pad it (repetition) or drop it.")
    max_frames = int(counts.max())
    x = waves.float() * 32768.0  # WeSpeaker: waveform * 2^15 before fbank
    needed = samples_for_frames(max_frames, sample_rate, frame_length_ms, frame_shift_ms)
    if x.shape[1] < needed:
        x = F.pad(x, (0, needed - x.shape[1]))
    frames = x.unfold(1, window_size, window_shift)[:, :max_frames]  # [B, M, W]
    if dither:
        noise = torch.randn(frames.shape, device=device, dtype=frames.dtype, generator=generator)
        frames = frames + dither * noise
    frames = frames - frames.mean(dim=2, keepdim=True)
    if preemphasis:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
        frames = frames - preemphasis * previous
    window = torch.hamming_window(window_size, periodic=False, alpha=0.54, beta=0.46, device=device)
    frames = F.pad(frames * window, (0, fft_size - window_size))
    power = torch.fft.rfft(frames).abs().pow(2)
    mel = power @ _mel_matrix(num_mel_bins, fft_size, sample_rate, low_freq).to(device)
    feats = mel.clamp_min(float(mel_floor)).log()
    valid = (torch.arange(max_frames, device=device)[None, :] < counts[:, None]).unsqueeze(-1).float()
    if cmn:  # mean normalisation over each row's valid frames (WeSpeaker apply_cmvn: mean only)
        mean = (feats * valid).sum(dim=1, keepdim=True) / counts.view(-1, 1, 1)
        feats = feats - mean
    return feats * valid, counts


class GlobalCMVN(torch.nn.Module):
    """Dataset-level mean and variance normalisation of fbank frames, per mel bin: ``(x - mean) * istd``.

    Buffers ``mean`` and ``istd`` (1 / standard deviation), float32 ``[num_mel_bins]``, named as
    ``wenet-e2e/wenet:wenet/transformer/cmvn.py``; they start at 0 and 1 (identity) and are set
    by :meth:`fit` on the training set, so a saved model normalises its input by itself. Unlike
    per-utterance CMN, it keeps each utterance's long-term spectrum (the envelope of a voice) and
    only moves every bin to zero mean and unit variance over the whole training set.
    """

    def __init__(self, num_mel_bins: int = 80):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_mel_bins))
        self.register_buffer("istd", torch.ones(num_mel_bins))

    def forward(self, feats: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """``feats`` [B, T, F] -> normalised [B, T, F]; frames at or past ``counts`` [B] stay zero."""
        out = (feats - self.mean) * self.istd
        if counts is not None:
            steps = torch.arange(feats.shape[1], device=feats.device)
            out = out * (steps[None, :] < counts.to(feats.device)[:, None]).unsqueeze(-1).to(out.dtype)
        return out

    @torch.no_grad()
    def fit(self, batches, *, min_std: float = 1e-5) -> "GlobalCMVN":
        """Set ``mean`` / ``istd`` from ``batches``: an iterable of (feats [B, T, F], frame counts [B]);
        only valid frames count. Sums are float64, the standard deviation is the population one
        floored at ``min_std``. Raises ConfigError when no frame was given."""
        total, first, second = 0, 0.0, 0.0
        for feats, counts in batches:
            steps = torch.arange(feats.shape[1], device=feats.device)
            valid = (steps[None, :] < counts.to(feats.device)[:, None]).unsqueeze(-1)
            frames = feats.double() * valid
            total += int(counts.sum())
            first = first + frames.sum(dim=(0, 1))
            second = second + frames.pow(2).sum(dim=(0, 1))
        if total == 0:
            raise ConfigError("global CMVN needs at least one frame of training audio; the training set is empty")
        mean = first / total
        std = (second / total - mean.pow(2)).clamp_min(0).sqrt().clamp_min(min_std)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.istd.copy_((1.0 / std).to(self.istd.dtype))
        return self


FBANK_STATISTICS = ("mean_fbank", "mean_std_fbank")


def fbank_statistics(waves, kind: str = "mean_fbank") -> torch.Tensor:
    """No-learning utterance vectors: statistics of the 80-bin log-mel frames (no CMN, no dither).

    ``waves``: list of 1-D 16 kHz float waveforms (each at least one 25 ms window long).
    ``kind``: ``mean_fbank`` -> the mean log-mel vector [N, 80]; ``mean_std_fbank`` -> the
    mean and the standard deviation over frames, concatenated [N, 160]. These are the
    cosine-scored baselines a speaker model has to beat, and the features of the first
    clustering when ``cluster.init_features: mean_fbank``. Raises ConfigError for another
    ``kind`` and AudioInputError for a clip shorter than one window.
    """
    if kind not in FBANK_STATISTICS:
        raise ConfigError(f"fbank statistics must be one of {', '.join(FBANK_STATISTICS)}; got {kind!r}")
    out = []
    for wave in waves:
        feats, counts = kaldi_fbank(torch.as_tensor(wave).float().reshape(1, -1), cmn=False)
        frames = feats[0, :counts[0]]
        if kind == "mean_fbank":
            out.append(frames.mean(0))
        else:
            out.append(torch.cat([frames.mean(0), frames.std(0, unbiased=False)]))
    return torch.stack(out)


def speed_perturb(wave: torch.Tensor, speed: float) -> torch.Tensor:
    """Play ``wave`` [T] ``speed`` times faster: resampled to ``T / speed`` samples, so pitch and formants
    scale by ``speed`` (sox's ``speed`` effect, WeSpeaker's speed perturbation). ``speed`` is taken as a
    fraction with a denominator of at most 100 (0.9 = 9/10). Returns float32 [~T / speed]."""
    from fractions import Fraction

    import torchaudio.functional

    if speed <= 0:
        raise ConfigError(f"speed perturbation factors must be positive; got {speed}")
    ratio = Fraction(speed).limit_denominator(100)
    if ratio == 1:
        return wave
    return torchaudio.functional.resample(wave, ratio.numerator, ratio.denominator).to(torch.float32)


def repeat_pad(wave: torch.Tensor, min_samples: int) -> torch.Tensor:
    """WeSpeaker's short-clip rule: tile the clip until it is ``min_samples`` long."""
    if wave.numel() == 0:
        raise AudioInputError("empty audio (0 samples); give at least one non-empty clip.")
    if wave.shape[-1] >= min_samples:
        return wave
    repeats = min_samples // wave.shape[-1] + 1
    return wave.repeat(repeats)[:min_samples]


def random_crop(wave: torch.Tensor, num_samples: int, rng: random.Random) -> torch.Tensor:
    """A random ``num_samples`` window; shorter clips are repeat-padded (WeSpeaker get_random_chunk)."""
    if wave.shape[-1] >= num_samples:
        start = rng.randint(0, wave.shape[-1] - num_samples)
        return wave[start:start + num_samples].clone()
    return repeat_pad(wave, num_samples)


class NoiseReverb:
    """Noise / RIR augmentation from folders of audio files.

    As ``add_reverb_noise`` in ``wenet-e2e/wespeaker:wespeaker/dataset/processor.py``.

    ``noise_dir``: files whose path contains 'speech' use SNR 10-30 dB, 'music' 5-15, others 0-15
    (MUSAN's folders). ``rir_dir``: impulse responses, energy-normalised before convolution.
    """

    def __init__(self, noise_dir: str | None = None, rir_dir: str | None = None, aug_prob: float = 0.6,
                 sample_rate: int = 16000, seed: int = 0):
        from zoo.data import audio_folder

        self.noise_files = [row["path"] for row in audio_folder(noise_dir)] if noise_dir else []
        self.rir_files = [row["path"] for row in audio_folder(rir_dir)] if rir_dir else []
        for folder, files in ((noise_dir, self.noise_files), (rir_dir, self.rir_files)):
            if folder and not files:
                raise ConfigError(f"augmentation folder {folder!r} holds no audio files (wav/flac/ogg)")
        self.aug_prob = aug_prob
        self.sample_rate = sample_rate
        self.rng = random.Random(seed)
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def enabled(self) -> bool:
        """True when a noise or an RIR folder was given."""
        return bool(self.noise_files or self.rir_files)

    def _load(self, path: str) -> torch.Tensor:
        if path not in self._cache:
            from zoo.audio import load_audio

            self._cache[path] = load_audio(path, self.sample_rate)
        return self._cache[path]

    @staticmethod
    def _snr_range(path: str) -> tuple[float, float]:
        lowered = str(Path(path)).lower()
        if "speech" in lowered:
            return 10.0, 30.0
        if "music" in lowered:
            return 5.0, 15.0
        return 0.0, 15.0

    def add_noise(self, wave: torch.Tensor, path: str) -> torch.Tensor:
        """``wave`` [T] plus a random crop of the noise file at a random SNR (dB range from the file's MUSAN folder)."""
        noise = random_crop(self._load(path), wave.shape[-1], self.rng)
        snr = self.rng.uniform(*self._snr_range(path))
        wave_db = 10 * math.log10(float(wave.pow(2).mean()) + 1e-4)
        noise_db = 10 * math.log10(float(noise.pow(2).mean()) + 1e-4)
        return wave + math.sqrt(10 ** ((wave_db - noise_db - snr) / 10)) * noise

    def add_reverb(self, wave: torch.Tensor, path: str) -> torch.Tensor:
        """``wave`` [T] convolved with the energy-normalised impulse response in ``path`` (same length as ``wave``)."""
        rir = self._load(path)
        rir = rir / rir.pow(2).sum().sqrt().clamp_min(1e-8)
        kernel = rir.flip(0).view(1, 1, -1)
        out = F.conv1d(F.pad(wave.view(1, 1, -1), (rir.numel() - 1, 0)), kernel).view(-1)
        return out[:wave.shape[-1]]

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.rng.random() >= self.aug_prob:
            return wave
        kinds = [k for k, files in (("reverb", self.rir_files), ("noise", self.noise_files)) if files]
        kind = self.rng.choice(kinds)
        if kind == "reverb":
            out = self.add_reverb(wave, self.rng.choice(self.rir_files))
        else:
            out = self.add_noise(wave, self.rng.choice(self.noise_files))
        return out / (out.abs().max() + 1e-4)  # WeSpeaker normalises into [-1, 1]
