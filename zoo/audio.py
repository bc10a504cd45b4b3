"""Audio input: read, mix down, scale, resample and check waveforms.

Every model in the zoo takes mono float waveforms at its own sample rate. These helpers turn
whatever the user has (a file, a numpy array, an int16 buffer, a stereo recording) into that,
and fail with an :class:`~zoo.errors.AudioInputError` that names the input and says what is
wrong instead of letting a model crash deep inside a convolution.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from zoo.errors import AudioInputError

__all__ = ["load_audio", "prepare_waveform", "prepare_waveforms", "pad_batch", "AUDIO_EXTENSIONS"]

# Files load_audio reads: libsndfile (soundfile) formats, mp3 (libsndfile >= 1.1, else librosa) and m4a
# (librosa through audioread and ffmpeg); zoo.data.audio_folder lists exactly these.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a")

# Integer PCM -> float in [-1, 1]: divide by the magnitude of the most negative value.
_INT_SCALE = {torch.int16: 32768.0, torch.int32: 2147483648.0, torch.int8: 128.0}


def load_audio(path, sample_rate: int = 16000, *, min_samples: int = 1) -> torch.Tensor:
    """Read an audio file (wav/flac/ogg) as a mono float32 tensor ``[T]`` at ``sample_rate``.

    Multi-channel files are mixed down (mean of the channels); the file's own rate is resampled
    to ``sample_rate``. Raises :class:`AudioInputError` naming the file when it is missing,
    unreadable, empty, non-finite, or shorter than ``min_samples`` after resampling.
    """
    import soundfile

    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise AudioInputError(f"Audio file {str(path)!r} {where}; check the path (manifest paths are relative "
                              "to the manifest's folder).")
    try:
        # always_2d: [T, C] even for mono, so the channel axis is known (never guessed) for files.
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile raises LibsndfileError/RuntimeError/TypeError by format
        data, file_rate = _read_with_librosa(path, error)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return prepare_waveform(mono, int(file_rate), sample_rate, name=str(path), min_samples=min_samples)


def _read_with_librosa(path: Path, soundfile_error: Exception):
    """Formats libsndfile cannot open (m4a/aac, some mp3): librosa decodes them through audioread,
    which uses ffmpeg or GStreamer when one is installed. Returns ``(float32 [T, C], rate)``."""
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's FutureWarning about its audioread fallback
            data, file_rate = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
    except Exception as error:
        raise AudioInputError(
            f"Cannot read audio file {str(path)!r}: {soundfile_error}; librosa/audioread could not decode it "
            f"either ({type(error).__name__}: {error}). Give a wav, flac, ogg or mp3 file, or install ffmpeg "
            "so that m4a/aac files can be decoded.") from error
    data = np.asarray(data, dtype=np.float32)
    return (data[:, None] if data.ndim == 1 else data.T), int(file_rate)


def prepare_waveform(wav, sample_rate: int, target_rate: int = 16000, *, name: str = "input",
                     min_samples: int = 1) -> torch.Tensor:
    """Any waveform -> mono float32 tensor ``[T]`` at ``target_rate``, checked.

    ``wav`` may be a numpy array, a tensor or a list; ``[T]``, or 2-D ``[C, T]`` / ``[T, C]``
    (the shorter axis is taken as channels, and the channels are averaged). Integer samples are
    scaled to [-1, 1] (int16 / 32768, int32 / 2**31, uint8 as (x - 128) / 128). ``min_samples`` is
    checked after resampling. Silence is valid input. ``name`` appears in every error message.
    """
    sample_rate = _rate(sample_rate, "sample_rate", name)
    target_rate = _rate(target_rate, "target_rate", name)

    wave = _as_float_tensor(wav, name)
    if wave.numel() == 0:  # before the mix-down: the mean over a zero-length axis would invent NaNs
        raise AudioInputError(f"{name} is empty (0 samples); give a recording with some audio in it.")
    if wave.dim() == 2:
        channel_axis = 0 if wave.shape[0] <= wave.shape[1] else 1
        wave = wave.mean(dim=channel_axis)
    elif wave.dim() != 1:
        raise AudioInputError(f"{name}: expected a waveform [T] or [C, T] / [T, C], got shape {tuple(wave.shape)}; "
                              "pass one recording at a time (use a list for a batch).")
    if not torch.isfinite(wave).all():
        bad = int((~torch.isfinite(wave)).sum())
        raise AudioInputError(f"{name} contains {bad} NaN or infinite sample(s); clean or re-export the audio.")

    if sample_rate != target_rate:
        import torchaudio.functional

        # resample reduces the rates by their gcd itself; float64 input keeps float64 precision.
        wave = torchaudio.functional.resample(wave, sample_rate, target_rate)
    if wave.numel() < min_samples:
        have, need = wave.numel(), int(min_samples)
        raise AudioInputError(
            f"{name} is too short: {have} samples ({have / target_rate:.3f} s) at {target_rate} Hz, "
            f"but at least {need} samples ({need / target_rate:.3f} s) are needed; give a longer recording "
            "or pad it with silence.")
    return wave.to(torch.float32).contiguous()


def prepare_waveforms(wav, sample_rate: int, target_rate: int = 16000, lengths=None, *,
                      min_samples: int = 1) -> tuple[list[torch.Tensor], bool]:
    """Model input in any accepted form -> (list of mono ``target_rate`` tensors, whether it was a batch).

    Accepted: one waveform (1-D, or multi-channel [C, T] / [T, C], mixed down); a list of
    waveforms; a padded batch [B, T] together with ``lengths``.

    Raises AudioInputError for an empty list, a padded batch whose shape does not match its lengths, and
    whatever load_audio / prepare_waveform refuse (missing, unreadable, empty or too short audio), naming the
    file.
    """
    if isinstance(wav, (list, tuple)):
        if len(wav) == 0:
            raise AudioInputError("Got an empty list of waveforms; pass at least one.")
        items, batched = list(wav), True
    elif lengths is not None:
        batch = wav if isinstance(wav, torch.Tensor) else torch.as_tensor(np.asarray(wav))
        lengths = torch.as_tensor(lengths).tolist()
        if batch.ndim != 2 or len(lengths) != batch.shape[0]:
            raise AudioInputError(f"A padded batch must be [B, T] with B lengths; got {tuple(batch.shape)} "
                                  f"and {len(lengths)} lengths.")
        items, batched = [batch[i, :int(n)] for i, n in enumerate(lengths)], True
    else:
        items, batched = [wav], False
    waves = [prepare_waveform(item, sample_rate, target_rate, name=f"waveform {i}" if batched else "waveform",
                              min_samples=min_samples) for i, item in enumerate(items)]
    return waves, batched


def pad_batch(waves: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D waveforms with zeros: ``(padded [B, Tmax], lengths LongTensor [B])``.

    The true lengths travel with the batch so models never treat padding as audio.

    Raises AudioInputError for an empty list or a waveform that is not 1-D [T].
    """
    if len(waves) == 0:
        raise AudioInputError("pad_batch got no waveforms; pass a non-empty list of 1-D tensors.")
    tensors = [w if isinstance(w, torch.Tensor) else torch.as_tensor(np.asarray(w)) for w in waves]
    for index, tensor in enumerate(tensors):
        if tensor.dim() != 1:
            raise AudioInputError(f"pad_batch: waveform {index} has shape {tuple(tensor.shape)}, expected [T]; "
                                  "run prepare_waveform on it first.")
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    first = tensors[0]
    padded = first.new_zeros((len(tensors), int(lengths.max())))
    for row, tensor in enumerate(tensors):
        padded[row, : tensor.shape[0]] = tensor.to(device=padded.device, dtype=padded.dtype)
    return padded, lengths


def _as_float_tensor(wav, name: str) -> torch.Tensor:
    """numpy / tensor / list -> floating tensor, integer PCM scaled to [-1, 1]."""
    if isinstance(wav, torch.Tensor):
        tensor = wav.detach()
    else:
        try:
            array = np.asarray(wav)
        except Exception as error:  # ragged lists and other non-arrays
            raise AudioInputError(f"{name}: cannot turn {type(wav).__name__} into a waveform ({error}).") from error
        if array.dtype == np.uint16 or array.dtype == np.uint32 or array.dtype == np.uint64:
            raise AudioInputError(f"{name}: unsigned {array.dtype} samples are ambiguous; give int16/int32 or float.")
        if array.dtype.kind not in "biuf":
            raise AudioInputError(f"{name}: samples of dtype {array.dtype} are not audio; give float or int16 PCM.")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise AudioInputError(f"{name}: samples of dtype {tensor.dtype} are not audio; give float or int16 PCM.")
    if tensor.dtype == torch.uint8:  # 8-bit wav is unsigned with 128 as zero
        return (tensor.to(torch.float32) - 128.0) / 128.0
    if tensor.dtype in _INT_SCALE:
        return tensor.to(torch.float32) / _INT_SCALE[tensor.dtype]
    if tensor.dtype == torch.int64:
        raise AudioInputError(f"{name}: int64 samples have no standard scale; convert to int16/int32 or float.")
    if tensor.dtype == torch.float64:
        return tensor
    return tensor.to(torch.float32)


def _rate(value, what: str, name: str) -> int:
    """A sample rate given as int (or an integral float) -> int; anything else is an error."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if isinstance(value, bool) or not rate > 0 or not rate.is_integer():
        raise AudioInputError(f"{name}: {what} must be a positive whole number of Hz, got {value!r}.")
    return int(rate)
