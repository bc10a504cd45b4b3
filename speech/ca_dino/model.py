"""The CA-DINO zoo model: WeSpeaker ECAPA-TDNN (+ optional DINO head) with an embedding API.

The module's state dict uses WeSpeaker's names at the top level (``layer1.conv.weight``,
``pool.linear1.weight``, ``bn2.*``, ``projection_head.mlp.0.weight``,
``projection_head.last_layer.weight_g``, ``projection.weight``), so WeSpeaker's
``avg_model.pt`` loads strictly without a key map (speech.md §3.7).

A loaded / trained model is the DINO *teacher* (speech.md §3.2: evaluation uses the
teacher). ``embed`` runs the front end (no dither) and the encoder on a padded
variable-length batch with frame masks, so batching never changes an embedding.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import AudioInputError
from zoo.model import ZooModel
from zoo.models.dino_head import DINOHead
from zoo.models.ecapa_tdnn import ECAPALayers
from zoo.speech.ca_dino.fbank import kaldi_fbank, repeat_pad


class CADinoModel(ECAPALayers, ZooModel):
    family = "ca-dino"
    head_keys = ("projection.",)

    def __init__(self, config: dict):
        super().__init__(config)
        self.build_ecapa(**config["encoder"])
        head = config.get("head") or {}
        if head.get("enabled", True):
            self.projection_head = DINOHead(
                self.embed_dim, head["out_dim"], use_bn=head["use_bn"], norm_last_layer=head["norm_last_layer"],
                nlayers=head["nlayers"], hidden_dim=head["hidden_dim"], bottleneck_dim=head["bottleneck_dim"])
        else:
            self.projection_head = None
        num_classes = int(config.get("num_classes") or 0)
        if num_classes > 0:
            # WeSpeaker's ArcMarginProduct keeps its class centres as `projection.weight` [classes, embed].
            self.projection = _CosineClassifier(self.embed_dim, num_classes)
        else:
            self.projection = None

    # ----------------------------------------------------------------- structure changes between stages
    def drop_projection_head(self) -> None:
        """Remove the DINO head (Stage II trains the encoder with a classifier instead)."""
        self.projection_head = None
        self.config["head"] = {**self.config.get("head", {}), "enabled": False}

    def set_classifier(self, num_classes: int) -> None:
        """Attach a fresh AAM classifier with ``num_classes`` centres (``projection.weight``)."""
        self.projection = _CosineClassifier(self.embed_dim, num_classes).to(self.device) if num_classes else None
        self.config["num_classes"] = int(num_classes)

    # ----------------------------------------------------------------- training path
    def forward(self, feats, lengths=None, *, head: bool = True) -> dict:
        """feats [B, T, F] or a list of such tensors (crops of different lengths, e.g. DINO global + local).

        Each tensor goes through the encoder on its own (BatchNorm statistics per crop size, as
        WeSpeaker's DINO does); embeddings are concatenated, then the projection head and the
        classifier (if any) run once on the concatenation. Returns ``{"embedding", "head"?, "cosine"?}``.
        """
        groups = feats if isinstance(feats, (list, tuple)) else [feats]
        group_lengths = lengths if isinstance(lengths, (list, tuple)) else [lengths] * len(groups)
        embedding = torch.cat([self.ecapa_forward(x, n)[1] for x, n in zip(groups, group_lengths)], dim=0)
        out = {"embedding": embedding}
        if head and self.projection_head is not None:
            out["head"] = self.projection_head(embedding)
        if self.projection is not None:
            out["cosine"] = self.projection(embedding)
        return out

    # ----------------------------------------------------------------- inference API
    def features(self, waves: Sequence[torch.Tensor], *, dither: float = 0.0):
        """Repeat-pad, batch and fbank a list of 1-D 16 kHz waveforms -> (feats [B, T, F], frame counts)."""
        fbank = self.config["fbank"]
        min_samples = max(int(self.config.get("min_embed_seconds", 0.5) * self.config["sample_rate"]), 400)
        waves = [repeat_pad(w.float().reshape(-1), min_samples) for w in waves]
        lengths = torch.tensor([w.numel() for w in waves], device=self.device)
        padded = torch.zeros(len(waves), int(lengths.max()), device=self.device)
        for i, w in enumerate(waves):
            padded[i, :w.numel()] = w.to(self.device)
        return kaldi_fbank(padded, lengths, num_mel_bins=fbank["num_mel_bins"],
                           frame_length_ms=fbank["frame_length_ms"], frame_shift_ms=fbank["frame_shift_ms"],
                           dither=dither, sample_rate=self.config["sample_rate"])

    def _prepare(self, wav, sample_rate) -> list[torch.Tensor]:
        """One clip, a list of clips (each [T], or [C, T] to mix down) or a 2-D [B, T] batch -> mono 1-D clips."""
        if isinstance(wav, (list, tuple)):
            items = list(wav)
        elif getattr(wav, "ndim", 1) == 2:
            items = [row for row in wav]  # a [B, T] batch of mono clips
        else:
            items = [wav]
        if not items:
            raise AudioInputError("embed() got an empty list of clips; pass at least one waveform.")
        return [_prepare_waveform(item, sample_rate, self.config["sample_rate"], name=f"clip {i}")
                for i, item in enumerate(items)]

    @torch.no_grad()
    def embed(self, wav, sample_rate: int = 16000, *, batch_size: int = 32) -> torch.Tensor:
        """Speaker embeddings [B, embed_dim] (192) of one clip, a list of clips or a [B, T] batch.

        Clips may have different lengths; ones shorter than ``min_embed_seconds`` are tiled
        (WeSpeaker's repetition padding). Empty clips raise AudioInputError.
        """
        waves = self._prepare(wav, sample_rate)
        was_training = self.training
        self.eval()
        try:
            outputs = []
            for start in range(0, len(waves), batch_size):
                feats, counts = self.features(waves[start:start + batch_size])
                outputs.append(self.ecapa_forward(feats, counts)[1])
        finally:
            self.train(was_training)
        return torch.cat(outputs).float()

    @torch.no_grad()
    def score(self, a, b, sample_rate: int | None = None) -> torch.Tensor:
        """Cosine similarity of embeddings ([D] or [N, D]); with ``sample_rate``, a and b are audio."""
        if sample_rate is not None:
            a, b = self.embed(a, sample_rate), self.embed(b, sample_rate)
        a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
        return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


class _CosineClassifier(nn.Module):
    """Class centres for AAM-softmax; forward gives cos(embedding, centre) [B, classes]."""

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embedding):
        return F.linear(F.normalize(embedding), F.normalize(self.weight))


def _prepare_waveform(wav, sample_rate, target_rate, *, name):
    """zoo.audio.prepare_waveform (mono, float, resampled, checked); a minimal stand-in until it exists."""
    try:
        from zoo.audio import prepare_waveform
    except ImportError:
        prepare_waveform = None
    if prepare_waveform is not None:
        return prepare_waveform(wav, sample_rate, target_rate, name=name)
    import numpy as np

    tensor = torch.as_tensor(np.asarray(wav) if not isinstance(wav, torch.Tensor) else wav)
    if tensor.dtype == torch.int16:
        tensor = tensor.float() / 32768.0
    tensor = tensor.float()
    if tensor.dim() == 2:
        tensor = tensor.mean(dim=0 if tensor.shape[0] <= tensor.shape[1] else 1)
    if tensor.numel() == 0:
        raise AudioInputError(f"{name} is empty (0 samples); give a non-empty 16 kHz clip.")
    if not torch.isfinite(tensor).all():
        raise AudioInputError(f"{name} contains NaN or infinite samples.")
    if sample_rate != target_rate:
        import torchaudio.functional as AF

        tensor = AF.resample(tensor, sample_rate, target_rate)
    return tensor
