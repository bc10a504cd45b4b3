"""Frame features the k-means pseudo-labels are made from (HuBERT, Hsu et al., arXiv 2106.07447).

As fairseq's ``facebookresearch/fairseq:examples/hubert/simple_kmeans/dump_mfcc_feature.py``
and ``dump_hubert_feature.py``:

* Iteration 1: 39-d MFCC at 100 Hz: kaldi-compatible 13 coefficients without energy,
  then deltas and delta-deltas, from the waveform as read (values in [-1, 1]).
* Iteration 2: the output of one transformer layer of the previous model, at 50 Hz.
"""
from __future__ import annotations

import torch

from zoo.audio import num_frames
from zoo.errors import AudioInputError
from zoo.model import inference

# Labels per second for each feature source.
FEATURE_RATES = {"mfcc": 100, "layer": 50}

MFCC_WINDOW = 400   # 25 ms at 16 kHz
MFCC_SHIFT = 160    # 10 ms


def mfcc_frame_count(num_samples: int) -> int:
    """Frames kaldi's MFCC makes from ``num_samples`` at 16 kHz (snip_edges): 1 + (T - 400) // 160, 0 below 400."""
    return num_frames(num_samples, MFCC_WINDOW, MFCC_SHIFT)


def mfcc_features(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """``[T]`` waveform (values in [-1, 1]) at ``sample_rate`` Hz -> ``[N, 39]`` float32: 13 MFCC
    (``use_energy=False``), deltas, delta-deltas.

    ``N`` = :func:`mfcc_frame_count` at 16 kHz (25 ms window, 10 ms shift). Raises
    :class:`~zoo.errors.AudioInputError` for a waveform shorter than one window.
    """
    import torchaudio

    wav = torch.as_tensor(wav).to(torch.float32).reshape(-1)
    window = int(round(0.025 * sample_rate))
    if wav.numel() < window:
        raise AudioInputError(f"A waveform of {wav.numel()} samples is shorter than one 25 ms MFCC frame "
                              f"({window} samples at {sample_rate} Hz); pad or drop it.")
    mfcc = torchaudio.compliance.kaldi.mfcc(waveform=wav[None], sample_frequency=sample_rate, use_energy=False)
    coefficients = mfcc.t()                                            # [13, N]
    deltas = torchaudio.functional.compute_deltas(coefficients)
    delta_deltas = torchaudio.functional.compute_deltas(deltas)
    return torch.cat([coefficients, deltas, delta_deltas], dim=0).t().contiguous()


@inference
def layer_features(model, wav: torch.Tensor, layer: int, sample_rate: int) -> torch.Tensor:
    """``[T]`` waveform -> ``[N, D]`` float32: output of layer ``layer`` (1-based) of a ``HubertModel``, unmasked.

    Runs in eval mode without gradients; ``N`` frames at 50 Hz. ``sample_rate`` is checked, not
    converted: give 16 kHz audio (:func:`zoo.audio.load_audio` resamples); raises
    :class:`~zoo.errors.AudioInputError` otherwise.
    """
    if sample_rate != 16000:
        raise AudioInputError(f"layer features need 16 kHz audio, got {sample_rate} Hz; resample it first.")
    device = next(model.parameters()).device
    out = model(torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1).to(device), output_layer=int(layer))
    return out.last_hidden_state[0].float()


def unit_features(source: str, wave: torch.Tensor, sample_rate: int, *, teacher=None, layer: int | None = None):
    """The features one utterance's unit labels are made from: ``[N, 39]`` MFCC at 100 Hz (``source="mfcc"``)
    or ``[N, D]`` output of ``layer`` of ``teacher`` at 50 Hz (``source="layer"``; the teacher's own
    waveform normalisation applied first), float32 on the CPU.

    The one definition for the label chain and for labelling utterances a labels folder lacks.
    Raises :class:`~zoo.errors.ConfigError` for layer features without a teacher.
    """
    from zoo.errors import ConfigError

    if source == "mfcc":
        return mfcc_features(wave, sample_rate)
    if teacher is None or layer is None:
        raise ConfigError("These labels come from layer features: give the teacher model that made them "
                          "(and its layer) to label other utterances.")
    if getattr(teacher, "normalize", False):
        wave = teacher.normalize_waveform(wave)
    return layer_features(teacher.hubert, wave.to(teacher.device), int(layer), sample_rate).cpu()


__all__ = ["FEATURE_RATES", "layer_features", "mfcc_features", "mfcc_frame_count", "unit_features"]
