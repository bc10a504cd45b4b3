"""The CA-DINO zoo model: WeSpeaker ECAPA-TDNN (+ optional DINO head) with an embedding API.

The module's state dict uses WeSpeaker's names at the top level (``layer1.conv.weight``,
``pool.linear1.weight``, ``bn2.*``, ``projection_head.mlp.0.weight``,
``projection_head.last_layer.weight_g``, ``projection.weight``), so WeSpeaker's
``avg_model.pt`` loads strictly without a key map (``wenet-e2e/wespeaker:wespeaker/models/ecapa_tdnn.py``).

A loaded / trained model is the DINO *teacher*, which WeSpeaker evaluates
(``wenet-e2e/wespeaker:wespeaker/ssl/bin/average_dino_model.py`` averages the teacher).
``embed`` runs the front end (no dither) and the encoder on a padded
variable-length batch with frame masks, so batching never changes an embedding.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model import ZooModel, inference
from zoo.models.dino_head import DINOHead
from zoo.models.ecapa_tdnn import ECAPALayers
from zoo.speech.ca_dino.fbank import MEL_FLOOR, GlobalCMVN, kaldi_fbank, repeat_pad


class CADinoModel(ECAPALayers, ZooModel):
    """WeSpeaker ECAPA-TDNN speaker encoder with an optional DINO head and an optional AAM classifier.

    Built from a full config (``builder.make_config``). Inference: :meth:`embed` (audio ->
    [B, 192] float32 embeddings, eval mode, flag restored) and :meth:`score` (cosine in [-1, 1]).
    Training: ``forward`` on fbank features. Input audio is 16 kHz mono (other rates are resampled).
    """
    family = "ca-dino"
    head_keys = ("projection.",)

    def __init__(self, config: dict):
        super().__init__(config)
        self.utterance_mean = bool(config.get("utterance_mean", False))
        extra = int(config["encoder"].get("feat_dim", 80)) if self.utterance_mean else 0
        self.build_ecapa(**config["encoder"], extra_pool_dim=extra)
        # fbank.global_cmvn (zoo option; WeSpeaker has none): dataset-level input normalisation, fitted by the trainer
        feat_dim = int(config["encoder"].get("feat_dim", 80))
        self.global_cmvn = GlobalCMVN(feat_dim) if config["fbank"].get("global_cmvn", False) else None
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
        """Training forward: ``feats`` [B, T, F] float fbank frames, or a list of such tensors (crops of
        different lengths, e.g. DINO global + local).

        Each tensor goes through the encoder on its own (BatchNorm statistics per crop size, as
        WeSpeaker's DINO does); embeddings are concatenated, then the projection head and the
        classifier (if any) run once on the concatenation. ``lengths``: valid frames per row (or a list
        per tensor). Returns ``{"embedding": [N, 192], "head": [N, out_dim] (with a head), "cosine": [N, classes]
        in [-1, 1] (with a classifier)}``.
        """
        groups = feats if isinstance(feats, (list, tuple)) else [feats]
        group_lengths = lengths if isinstance(lengths, (list, tuple)) else [lengths] * len(groups)
        embedding = torch.cat([self.encode(x, n) for x, n in zip(groups, group_lengths)], dim=0)
        out = {"embedding": embedding}
        if head and self.projection_head is not None:
            out["head"] = self.projection_head(embedding)
        if self.projection is not None:
            out["cosine"] = self.projection(embedding)
        return out

    # ----------------------------------------------------------------- inference API
    def fbank(self, waves: torch.Tensor, lengths: torch.Tensor | None = None, *, dither: float = 0.0,
              normalize: bool = True):
        """The model's front end on a padded batch: ``waves`` [B, T] float at 16 kHz in [-1, 1],
        ``lengths`` [B] valid samples -> (feats [B, frames, num_mel_bins], frame counts [B]).

        Kaldi fbank as configured in ``config["fbank"]`` (mel powers floored at ``fbank.mel_floor``), then per-utterance mean normalisation
        when ``fbank.cmn`` is true (WeSpeaker's front end). With ``utterance_mean`` the features come
        back without CMN: :meth:`encode` subtracts the mean itself, because it also feeds that mean
        to the pooling layer. With ``fbank.global_cmvn`` (and ``normalize``) every bin is then moved
        to the training set's zero mean and unit variance (:class:`GlobalCMVN`, buffers
        ``global_cmvn.mean`` / ``global_cmvn.istd``). ``dither`` is in 16-bit units.
        """
        fbank = self.config["fbank"]
        cmn = bool(fbank.get("cmn", True)) and not self.utterance_mean
        feats, counts = kaldi_fbank(waves.to(self.device), lengths, num_mel_bins=fbank["num_mel_bins"],
                                    frame_length_ms=fbank["frame_length_ms"], frame_shift_ms=fbank["frame_shift_ms"],
                                    dither=dither, sample_rate=self.config["sample_rate"], cmn=cmn,
                                    mel_floor=float(fbank.get("mel_floor", MEL_FLOOR)))
        if normalize and self.global_cmvn is not None:
            feats = self.global_cmvn(feats, counts)
        return feats, counts

    @torch.no_grad()
    def fit_global_cmvn(self, waves: Sequence[torch.Tensor], *, batch_size: int = 32) -> None:
        """Set the ``fbank.global_cmvn`` statistics from 1-D 16 kHz float waveforms (the training clips):
        per-bin mean and 1 / std over all their frames, front end without dither. Raises ConfigError
        when the model was built without ``fbank.global_cmvn``."""
        if self.global_cmvn is None:
            raise ConfigError("this model has no global CMVN; build it with fbank.global_cmvn=true")
        self.global_cmvn.fit(self.features(waves[start:start + batch_size], normalize=False)
                             for start in range(0, len(waves), batch_size))

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`fbank` features [B, T, F] (+ valid frame counts [B]) -> embeddings [B, embed_dim].

        With ``utterance_mean: true`` (an option of this zoo; WeSpeaker and the paper have none) the
        mean log-mel vector of each utterance over its valid frames, which CMN removes from the
        frames, is concatenated to the pooled statistics before ``bn`` and ``linear``, less its own
        average over the bins, so a change of gain (a constant in every log-mel bin) changes nothing;
        the frames go on with the mean subtracted when ``fbank.cmn`` is true, exactly as the default
        front end gives them. So the long-term spectral envelope of a voice reaches the embedding.
        """
        if not self.utterance_mean:
            return self.ecapa_forward(feats, lengths)[1]
        frames = feats.shape[1]
        if lengths is None:
            valid = torch.ones(feats.shape[0], frames, 1, device=feats.device, dtype=feats.dtype)
        else:
            steps = torch.arange(frames, device=feats.device)
            valid = (steps[None, :] < torch.as_tensor(lengths, device=feats.device)[:, None]).unsqueeze(-1)
            valid = valid.to(feats.dtype)
        mean = (feats * valid).sum(dim=1) / valid.sum(dim=1)
        if bool(self.config["fbank"].get("cmn", True)):
            feats = (feats - mean.unsqueeze(1)) * valid
        envelope = mean - mean.mean(dim=1, keepdim=True)  # level removed: gain-invariant
        return self.ecapa_forward(feats, lengths, extra=envelope)[1]

    def features(self, waves: Sequence[torch.Tensor], *, dither: float = 0.0, normalize: bool = True):
        """Repeat-pad, batch and fbank a list of 1-D 16 kHz waveforms -> (feats [B, T, F], frame counts [B])."""
        min_samples = max(int(self.config.get("min_embed_seconds", 0.5) * self.config["sample_rate"]), 400)
        waves = [repeat_pad(w.float().reshape(-1), min_samples) for w in waves]
        lengths = torch.tensor([w.numel() for w in waves], device=self.device)
        padded = torch.zeros(len(waves), int(lengths.max()), device=self.device)
        for i, w in enumerate(waves):
            padded[i, :w.numel()] = w.to(self.device)
        return self.fbank(padded, lengths, dither=dither, normalize=normalize)

    @inference
    def embed(self, wav, sample_rate: int | None = None, *, lengths=None, batch_size: int = 32) -> torch.Tensor:
        """Speaker embeddings, float32 ``[B, embed_dim]`` (192), in eval mode (the caller's mode is restored).

        ``wav``: anything ``zoo.audio.prepare_waveforms`` accepts: an audio file path (its own rate),
        a list of paths, one clip (1-D, or multi-channel, mixed down), a list of clips, or a padded
        ``[B, T]`` batch with ``lengths``; numpy or torch, float in [-1, 1] or integer PCM, at
        ``sample_rate`` Hz (required for arrays, as in every zoo audio API; resampled to 16 kHz).
        One clip gives ``[1, embed_dim]``. Clips may have different lengths and are batched with
        frame masks, so batching never changes an embedding; clips shorter than
        ``min_embed_seconds`` (0.5 s) are tiled (WeSpeaker's repetition padding). Raises
        AudioInputError for empty, non-finite or malformed input and for arrays without a
        ``sample_rate``.
        """
        from zoo.audio import prepare_waveforms

        waves, _ = prepare_waveforms(wav, sample_rate, self.config["sample_rate"], lengths)
        outputs = []
        for start in range(0, len(waves), batch_size):
            feats, counts = self.features(waves[start:start + batch_size])
            outputs.append(self.encode(feats, counts))
        return torch.cat(outputs).float()

    @inference
    def score(self, a, b, sample_rate: int | None = None) -> torch.Tensor:
        """Cosine similarity in [-1, 1] of embeddings ([D] or [N, D]); with ``sample_rate``, ``a`` and ``b`` are
        audio arrays, and file paths (str or os.PathLike) are always audio (their rate is in the header)."""
        import os

        def is_path(x):
            return isinstance(x, (str, os.PathLike)) or (isinstance(x, (list, tuple)) and x
                                                          and all(isinstance(i, (str, os.PathLike)) for i in x))

        if sample_rate is not None or is_path(a) or is_path(b):
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
