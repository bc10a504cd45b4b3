"""Frame features the k-means pseudo-labels are made from (speech.md §2.3).

* Iteration 1: 39-d MFCC at 100 Hz: kaldi-compatible 13 coefficients without energy,
  then deltas and delta-deltas, from the waveform as read (values in [-1, 1]).
* Iteration 2: the output of one transformer layer of the previous model, at 50 Hz.
"""
from __future__ import annotations

import torch

from zoo.errors import AudioInputError

# Labels per second for each feature source.
FEATURE_RATES = {"mfcc": 100, "layer": 50}

MFCC_WINDOW = 400   # 25 ms at 16 kHz
MFCC_SHIFT = 160    # 10 ms


def mfcc_frame_count(num_samples: int) -> int:
    """Frames kaldi's MFCC makes from ``num_samples`` (snip_edges): 1 + (T - 400) // 160, 0 below 400."""
    return 0 if num_samples < MFCC_WINDOW else 1 + (int(num_samples) - MFCC_WINDOW) // MFCC_SHIFT


def mfcc_features(wav: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """[T] waveform -> [N, 39] float32: 13 MFCC (``use_energy=False``), their deltas and delta-deltas."""
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


@torch.no_grad()
def layer_features(model, wav: torch.Tensor, layer: int, sample_rate: int = 16000) -> torch.Tensor:
    """[T] waveform -> [N, D]: output of transformer layer ``layer`` (1-based) of a ``HubertModel``, unmasked.

    ``sample_rate`` is checked, not converted: give 16 kHz audio (``zoo.audio.load_audio`` resamples).
    """
    if sample_rate != 16000:
        raise AudioInputError(f"layer features need 16 kHz audio, got {sample_rate} Hz; resample it first.")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = model(torch.as_tensor(wav, dtype=torch.float32).reshape(1, -1).to(device), output_layer=int(layer))
    finally:
        model.train(was_training)
    return out.last_hidden_state[0].float()


__all__ = ["FEATURE_RATES", "layer_features", "mfcc_features", "mfcc_frame_count"]
