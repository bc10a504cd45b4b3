"""CA-DINO configs and sizes (``wenet-e2e/wespeaker:examples/voxceleb/v3/dino/conf/ecapa_tdnn.yaml``).

``encoder`` holds the arguments of ``zoo.models.ecapa_tdnn.ECAPATDNN`` (WeSpeaker's
``ECAPA_TDNN_GLOB_c512`` with ``emb_bn=True`` by default), ``head`` the DINO projection
head (``enabled: false`` drops it, as in supervised WeSpeaker models), ``fbank`` the
front end, and ``num_classes`` an optional AAM-softmax classifier (``projection.weight``,
WeSpeaker's name) used by the Stage II pseudo-label trainer.
"""
from __future__ import annotations

from zoo.config import merge, sized_config

from zoo.models.configs import ECAPA_DEFAULTS, ECAPA_SIZES

DEFAULT_CONFIG = {
    "encoder": dict(ECAPA_DEFAULTS),
    # WeSpeaker's DINOHead: 192 -> 2048 -> 2048 -> 256 with BN + GELU, weight-normed 256 -> 65536.
    "head": {
        "enabled": True,
        "out_dim": 65536,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "nlayers": 3,
        "use_bn": True,
        "norm_last_layer": True,
    },
    # WeSpeaker's front end: 80-bin kaldi fbank, 25/10 ms, hamming, dither 1.0 in training, CMN.
    "fbank": {
        "num_mel_bins": 80,
        "frame_length_ms": 25.0,
        "frame_shift_ms": 10.0,
        "dither": 1.0,
        # per-utterance mean normalisation (WeSpeaker). Off, the long-term spectrum stays in the input.
        "cmn": True,
        # mel power floor before the log (Kaldi / WeSpeaker: float32 eps). Digital silence (exact zeros) gives
        # log(eps) = -15.9 at evaluation but about -2.5 .. 8.5 under training dither; ~1000 removes that gap.
        "mel_floor": 1.1920928955078125e-07,
        # zoo option (WeSpeaker: none): per-bin mean / variance normalisation with statistics of the whole training
        # set (buffers global_cmvn.mean / .istd, fitted by the trainer). With cmn=false it keeps each voice's envelope.
        "global_cmvn": False,
    },
    # Not in the paper or WeSpeaker (False there): concatenate each utterance's mean log-mel vector less its
    # level, the long-term spectral envelope that CMN removes, to the pooled statistics (CADinoModel.encode).
    "utterance_mean": False,
    "sample_rate": 16000,
    # embed(): clips shorter than this are tiled (WeSpeaker's repetition padding) rather than rejected.
    "min_embed_seconds": 0.5,
    # > 0 adds an AAM-softmax classifier (Stage II pseudo-labels).
    "num_classes": 0,
}

SIZES = {
    # First = the default of `zoo convert ca-dino` (the released DINO model is ECAPA_TDNN_GLOB_c512).
    "ecapa512": {"encoder": dict(ECAPA_SIZES["ecapa512"])},
    "ecapa1024": {"encoder": dict(ECAPA_SIZES["ecapa1024"])},
    # CPU-sized: 32 channels, small head; trains in seconds.
    "tiny": {
        "encoder": dict(ECAPA_SIZES["tiny"]),
        "head": {"out_dim": 512, "hidden_dim": 256, "bottleneck_dim": 64},
    },
}


def make_config(size: str = "ecapa512", **overrides) -> dict:
    """The full config of ``size`` with nested ``overrides`` merged in."""
    return sized_config("CA-DINO", DEFAULT_CONFIG, SIZES, size, overrides)


def build(config: dict):
    """Full config -> random-init CADinoModel."""
    from zoo.speech.ca_dino.model import CADinoModel

    return CADinoModel(merge(DEFAULT_CONFIG, config))
