"""Audio input: read, mix down, scale, resample and check waveforms.

Every speech model in the zoo takes mono float32 waveforms at its own sample rate.
:func:`prepare_waveforms` is the one function that turns what a user has into that: a
file path, a list of paths, a numpy array or tensor (float or integer PCM) with its sample
rate, a list of those, or a padded batch with its lengths. The rules are fixed, not guessed per
input: a 2-D array is a padded batch only with ``lengths``, else one multi-channel recording
(channels on ``channel_axis``, or on the shorter axis), and an array without its sample rate is
an error. Problems raise
:class:`~zoo.errors.AudioInputError` naming the input and saying what to do, instead of a
crash deep inside a convolution.

Files are read with soundfile (libsndfile: wav, flac, ogg/opus and, from libsndfile 1.1,
mp3); other formats (m4a/aac, ...) are decoded by ``librosa.load`` through audioread (which needs
ffmpeg or GStreamer on the machine). Resampling is ``librosa.resample`` with soxr's "HQ" filter
(``res_type="soxr_hq"``). All arithmetic is float32, so a path and the same file's samples
passed with their rate give bit-identical waveforms.
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from zoo.errors import AudioInputError

__all__ = ["AUDIO_EXTENSIONS", "AudioBatch", "load_audio", "num_frames", "pad_batch", "prepare_waveform",
           "prepare_waveforms", "read_audio"]

# Files that zoo.data.audio_folder lists. wav/flac/ogg/opus/mp3 go through soundfile, the rest through audioread.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a")

# Integer PCM -> float in [-1, 1]: divide by the magnitude of the most negative value.
_INT_SCALE = {torch.int16: 32768.0, torch.int32: 2147483648.0, torch.int8: 128.0}


class AudioBatch(NamedTuple):
    """What :func:`prepare_waveforms` returns.

    ``waves``: mono float32 tensors ``[T_i]`` at the target rate, each at its true length
    (no padding). ``batched``: whether the input was a batch (a list, or a padded batch
    with lengths), so an API can answer one input with one result and a batch with a list.
    Unpacks as ``waves, batched = prepare_waveforms(...)``.
    """

    waves: list
    batched: bool

    @property
    def lengths(self) -> torch.Tensor:
        """True lengths in samples, int64 ``[B]``."""
        return torch.tensor([int(w.shape[0]) for w in self.waves], dtype=torch.long)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(padded [B, T_max] float32 zero-padded on the right, lengths [B] int64)``."""
        return pad_batch(self.waves)


def num_frames(num_samples, window: int, hop: int):
    """Frames of a window of ``window`` samples moved by ``hop`` samples over ``num_samples``, no padding.

    ``(T - window) // hop + 1``, and 0 when ``T < window``. The zoo's one frame-count formula:
    a HuBERT conv stack is ``window`` = its receptive field (400 at 16 kHz) and ``hop`` = its
    total stride (320), so 50 frames per second (a stack of unpadded convs composes into one
    such window, the floors nesting exactly); kaldi MFCC/fbank frames (``snip_edges``) are
    ``window`` 400, ``hop`` 160. ``num_samples``: int -> int, or an integer tensor -> int64
    tensor of the same shape. Raises ValueError for a window or hop below 1.
    """
    window, hop = int(window), int(hop)
    if window < 1 or hop < 1:
        raise ValueError(f"num_frames: window and hop must be >= 1, got {window} and {hop}.")
    if isinstance(num_samples, torch.Tensor):
        samples = num_samples.to(torch.long)
        return torch.where(samples >= window, torch.div(samples - window, hop, rounding_mode="floor") + 1,
                           torch.zeros_like(samples))
    samples = int(num_samples)
    return (samples - window) // hop + 1 if samples >= window else 0


# --------------------------------------------------------------------------- files


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def read_audio(path) -> tuple[np.ndarray, int]:
    """Decode an audio file: ``(samples [T, C] float32 in [-1, 1], the file's sample rate in Hz)``.

    soundfile first; when libsndfile cannot read the format, ``librosa.load`` (audioread: ffmpeg,
    GStreamer or Core Audio underneath). Raises :class:`AudioInputError` naming the file when it is
    missing, a folder, or unreadable by both.
    """
    import soundfile

    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise AudioInputError(f"Audio file {str(path)!r} {where}; check the path (manifest paths are relative "
                              "to the manifest's folder).")
    try:
        # always_2d: [T, C] even for mono, so the channel axis is known, never guessed.
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return data, int(rate)
    except Exception as soundfile_error:  # libsndfile raises LibsndfileError/RuntimeError/TypeError by format
        return _read_with_librosa(path, soundfile_error)


def _read_with_librosa(path: Path, soundfile_error: Exception) -> tuple[np.ndarray, int]:
    """Formats libsndfile cannot open (m4a/aac, some mp3): librosa decodes them through audioread, which
    uses ffmpeg or GStreamer when one is installed. Returns ``(float32 [T, C], the file's rate)``."""
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


def load_audio(path, sample_rate: int = 16000, *, min_samples: int = 1) -> torch.Tensor:
    """Read an audio file as a mono float32 tensor ``[T]`` at ``sample_rate`` Hz.

    The channels are averaged and the file's own rate is resampled to ``sample_rate``
    (``librosa.resample``, soxr HQ). Raises :class:`AudioInputError` naming the file when it is missing,
    unreadable, empty, non-finite, or shorter than ``min_samples`` after resampling.
    Same result as ``prepare_waveforms(path, target_rate=sample_rate).waves[0]``.
    """
    data, file_rate = read_audio(path)
    return _prepare(data, file_rate, sample_rate, name=str(Path(os.fspath(path)).expanduser()), channel_axis=1,
                    min_samples=min_samples)


# ------------------------------------------------------------------------ waveforms


def prepare_waveform(wav, sample_rate: int | None, target_rate: int = 16000, *, name: str = "input",
                     min_samples: int = 1, channel_axis: int | None = None) -> torch.Tensor:
    """One recording -> mono float32 tensor ``[T]`` at ``target_rate`` Hz, checked.

    ``wav``: a path (``str``/``os.PathLike``; its own rate is used, and ``sample_rate``, when
    given, must equal it), or samples (numpy array, tensor or nested list) at ``sample_rate``
    Hz: ``[T]``, or one multi-channel recording ``[C, T]``/``[T, C]`` whose channels are averaged;
    ``channel_axis`` (0 or 1) says which axis holds them, else it is the shorter axis. Integer samples are scaled to
    [-1, 1] (int16 / 32768, int32 / 2**31, int8 / 128, uint8 as (x - 128) / 128); float
    samples are used as they are (no clipping). Silence is valid input.

    Raises :class:`AudioInputError` (with ``name`` in the message) for a missing sample rate,
    a square 2-D array without ``channel_axis``, a non-audio dtype, empty or non-finite samples, and fewer than
    ``min_samples`` samples after resampling.
    """
    target_rate = _rate(target_rate, "target_rate", name)
    if _is_path(wav):
        data, file_rate = read_audio(wav)
        if sample_rate is not None and _rate(sample_rate, "sample_rate", name) != file_rate:
            raise AudioInputError(
                f"{os.fspath(wav)!r} is a {file_rate} Hz file but sample_rate={sample_rate} was given; a file's rate "
                "comes from its header, so leave sample_rate out for files (it describes arrays).")
        return _prepare(data, file_rate, target_rate, name=str(Path(os.fspath(wav)).expanduser()), channel_axis=1,
                        min_samples=min_samples)
    if sample_rate is None:
        raise AudioInputError(f"{name}: give the sample rate of the samples as the argument after them (e.g. "
                              "model.segment(wav, 16000) or model.embed(wav, 16000)); it is only read from the "
                              "header when you pass a file path.")
    return _prepare(wav, _rate(sample_rate, "sample_rate", name), target_rate, name=name, channel_axis=channel_axis,
                    min_samples=min_samples)


def prepare_waveforms(inputs, sample_rate: int | None = None, target_rate: int = 16000, lengths=None, *,
                      min_samples: int = 1, channel_axis: int | None = None) -> AudioBatch:
    """Any accepted model input -> :class:`AudioBatch` (mono float32 ``target_rate`` waveforms at true lengths).

    Accepted ``inputs``:

    * a path (``str`` or ``os.PathLike``): one recording, read with :func:`read_audio` at
      the file's own rate;
    * one waveform (numpy array or tensor, float or integer PCM) at ``sample_rate`` Hz:
      ``[T]``, or a multi-channel recording ``[C, T]``/``[T, C]`` (mixed down; never a batch:
      a batch is a list, or a padded array with ``lengths``);
    * a list or tuple of paths and/or waveforms: a batch (each item as above);
    * a padded batch ``[B, T]`` with ``lengths`` ``[B]`` (samples per row): a batch of the
      rows' first ``lengths[i]`` samples.

    ``sample_rate`` describes arrays; it is required for them and, when given with a path,
    must equal the file's rate. Every waveform is resampled to ``target_rate`` (soxr HQ) and
    checked (non-empty, finite, at least ``min_samples`` samples after resampling).

    Raises :class:`AudioInputError` naming the offending item ("waveform 2", or the file).
    """
    if lengths is not None:
        if isinstance(inputs, (list, tuple)) or _is_path(inputs):
            raise AudioInputError("lengths go with a padded batch [B, T]; a list of waveforms or paths already "
                                  "carries each one's length, so leave lengths out.")
        batch = _as_tensor(inputs, "padded batch")
        sizes = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
        if batch.ndim != 2 or len(sizes) != batch.shape[0]:
            raise AudioInputError(f"A padded batch must be [B, T] with B lengths; got shape {tuple(batch.shape)} "
                                  f"and {len(sizes)} lengths.")
        bad = [n for n in sizes if not 0 < n <= batch.shape[1]]
        if bad:
            raise AudioInputError(f"lengths must lie in 1..{batch.shape[1]} (the padded width), got {bad[:3]}.")
        items, batched = [batch[i, :n] for i, n in enumerate(sizes)], True
    elif isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            raise AudioInputError("Got an empty list of waveforms; pass at least one.")
        if all(isinstance(item, numbers.Number) for item in inputs):
            raise AudioInputError("Got a list of numbers: pass one waveform as an array (np.asarray(samples)), "
                                  "or a list of waveforms for a batch.")
        items, batched = list(inputs), True
    else:
        items, batched = [inputs], False
    waves = []
    for index, item in enumerate(items):
        name = (os.fspath(item) if _is_path(item) else f"waveform {index}" if batched else "waveform")
        waves.append(prepare_waveform(item, sample_rate, target_rate, name=name, min_samples=min_samples,
                                      channel_axis=channel_axis))
    return AudioBatch(waves, batched)


def pad_batch(waves: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D waveforms with zeros: ``(padded [B, T_max], lengths int64 [B])``.

    The true lengths travel with the batch so models never treat padding as audio. Raises
    :class:`AudioInputError` for an empty list or a waveform that is not 1-D.
    """
    if len(waves) == 0:
        raise AudioInputError("pad_batch got no waveforms; pass a non-empty list of 1-D tensors.")
    tensors = [w if isinstance(w, torch.Tensor) else torch.as_tensor(np.asarray(w)) for w in waves]
    for index, tensor in enumerate(tensors):
        if tensor.dim() != 1:
            raise AudioInputError(f"pad_batch: waveform {index} has shape {tuple(tensor.shape)}, expected [T]; "
                                  "run prepare_waveforms on it first.")
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    first = tensors[0]
    padded = first.new_zeros((len(tensors), int(lengths.max())))
    for row, tensor in enumerate(tensors):
        padded[row, : tensor.shape[0]] = tensor.to(device=padded.device, dtype=padded.dtype)
    return padded, lengths


# --------------------------------------------------------------------------- steps


def _prepare(wav, sample_rate: int, target_rate: int, *, name: str, channel_axis: int | None,
             min_samples: int) -> torch.Tensor:
    wave = _as_float32(wav, name)
    if wave.numel() == 0:  # before the mix-down: a mean over a zero-length axis would invent NaNs
        raise AudioInputError(f"{name} is empty (0 samples); give a recording with some audio in it.")
    wave = _mono(wave, name, channel_axis)
    if not torch.isfinite(wave).all():
        bad = int((~torch.isfinite(wave)).sum())
        raise AudioInputError(f"{name} contains {bad} NaN or infinite sample(s); clean or re-export the audio.")
    if sample_rate != target_rate:
        import librosa

        wave = torch.from_numpy(np.ascontiguousarray(
            librosa.resample(wave.numpy(), orig_sr=sample_rate, target_sr=target_rate, res_type="soxr_hq")))
    if wave.numel() < min_samples:
        have, need = wave.numel(), int(min_samples)
        raise AudioInputError(
            f"{name} is too short: {have} samples ({have / target_rate:.3f} s) at {target_rate} Hz, "
            f"but at least {need} samples ({need / target_rate:.3f} s) are needed; give a longer recording "
            "or pad it with silence.")
    return wave.contiguous()


def _mono(wave: torch.Tensor, name: str, channel_axis: int | None) -> torch.Tensor:
    """[T] stays; [C, T] / [T, C] are one recording whose channels are averaged.

    The channel axis is ``channel_axis`` when given, else the shorter axis (a recording has fewer
    channels than samples); a square array is ambiguous and raises.
    """
    if wave.dim() == 1:
        if channel_axis is not None:
            raise AudioInputError(f"{name}: channel_axis={channel_axis} was given but the samples are 1-D (mono).")
        return wave
    if wave.dim() != 2:
        raise AudioInputError(f"{name}: expected a waveform [T] or a recording [C, T] / [T, C], got shape "
                              f"{tuple(wave.shape)}; pass one recording at a time (use a list for a batch).")
    if channel_axis is None:
        if wave.shape[0] == wave.shape[1]:
            raise AudioInputError(
                f"{name}: a 2-D array of shape {tuple(wave.shape)} has as many rows as columns, so its channel axis "
                "is unknown; pass channel_axis=0 ([channels, time]) or channel_axis=1 ([time, channels]).")
        channel_axis = 0 if wave.shape[0] < wave.shape[1] else 1
    if channel_axis not in (0, 1, -1, -2):
        raise AudioInputError(f"{name}: channel_axis must be 0 or 1 for 2-D samples, got {channel_axis}.")
    channels = wave if channel_axis in (0, -2) else wave.t()
    # A fixed left-to-right sum, so [C, T] and [T, C] layouts of the same samples mix to the same floats.
    total = channels[0].clone()
    for row in channels[1:]:
        total += row
    return total / channels.shape[0] if channels.shape[0] > 1 else total


def _as_tensor(wav, name: str) -> torch.Tensor:
    """numpy / tensor / nested list -> tensor on the CPU, dtype checked (no scaling yet)."""
    if isinstance(wav, torch.Tensor):
        return wav.detach().cpu()
    try:
        array = np.asarray(wav)
    except Exception as error:  # ragged lists and other non-arrays
        raise AudioInputError(f"{name}: cannot turn {type(wav).__name__} into a waveform ({error}).") from error
    if array.dtype in (np.uint16, np.uint32, np.uint64):
        raise AudioInputError(f"{name}: unsigned {array.dtype} samples are ambiguous; give int16/int32 or float.")
    if array.dtype.kind not in "biuf":
        what = "text (a path must be a str or Path, not inside an array)" if array.dtype.kind in "SU" else \
            f"dtype {array.dtype}"
        raise AudioInputError(f"{name}: samples of {what} are not audio; give float or int16 PCM samples, or a path.")
    return torch.from_numpy(np.ascontiguousarray(array))


def _as_float32(wav, name: str) -> torch.Tensor:
    """Samples -> float32 tensor; integer PCM scaled to [-1, 1]."""
    tensor = _as_tensor(wav, name)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise AudioInputError(f"{name}: samples of dtype {tensor.dtype} are not audio; give float or int16 PCM.")
    if tensor.dtype == torch.uint8:  # 8-bit wav is unsigned with 128 as zero
        return (tensor.to(torch.float32) - 128.0) / 128.0
    if tensor.dtype in _INT_SCALE:
        return tensor.to(torch.float32) / _INT_SCALE[tensor.dtype]
    if tensor.dtype == torch.int64:
        raise AudioInputError(f"{name}: int64 samples have no standard scale; convert to int16/int32 or float.")
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
