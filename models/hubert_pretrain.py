"""HuBERT masked-prediction pretraining on top of ``zoo.models.hubert.HubertModel``.

The objective of Hsu et al., "HuBERT" (arXiv 2106.07447, §II-B and §IV-C) as fairseq implements it
(facebookresearch/fairseq:fairseq/models/hubert/hubert.py, examples/hubert/config/pretrain/hubert_base_librispeech.yaml).

fairseq's recipe, written anew: span masking (mask_prob 0.8, span 10), the mask
embedding at masked frames, conv features whose gradient is scaled by
``feature_grad_mult`` (0.1) and penalised by their mean square (weight 10), layer
drop 0.05, and logits = cosine(final_proj(h_t), label embedding) / 0.1 over every
class of each label set, with cross-entropy on masked frames (weight 1) and,
optionally, unmasked ones (weight 0 by default). Labels may come at another rate than
the 50 Hz frames (100 Hz MFCC k-means labels in iteration 1): frame t takes label
``floor(t * label_rate / frame_rate)``, as fairseq's ``forward_targets`` does.

The HuBERTopic family adds its utterance-level topic head on ``out["encoder"]``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError, ZooError
from zoo.models.hubert import HubertConfig, HubertModel, HubertOutput, pack, unpack
from zoo.models.hubert import compute_span_mask as _span_mask


class LabelLengthError(ZooError, ValueError):
    """Frame labels whose count does not fit the audio (wrong label rate, or labels of another file)."""


def compute_span_mask(frame_lengths, mask_prob: float = 0.8, mask_length: int = 10, min_masks: int = 2,
                      generator: torch.Generator | None = None, *, require_same_masks: bool = True,
                      max_length: int | None = None, device=None) -> torch.Tensor:
    """fairseq HuBERT span mask ``[B, max(frame_lengths)]`` over each utterance's valid frames.

    Per utterance: ``int(mask_prob * L / mask_length + u)`` spans (u ~ U[0, 1) per utterance),
    at least ``min_masks``, distinct starts, overlapping allowed. ``require_same_masks`` (fairseq's
    default) subsamples every row to the batch's smallest count of masked frames.
    """
    return _span_mask(frame_lengths, mask_prob, mask_length, min_masks, generator=generator,
                      require_same_masks=require_same_masks, max_length=max_length, device=device)


class GradMultiply(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``scale`` (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        """Identity on ``x``; remembers ``scale`` for the backward pass."""
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        """The incoming gradient times ``scale`` (fairseq's ``GradMultiply``, used for ``feature_grad_mult``)."""
        return grad * ctx.scale, None


def align_labels(labels: torch.Tensor, label_lengths: Sequence[int], frame_lengths: Sequence[int], ratio: float,
                 *, tolerance: int) -> tuple[torch.Tensor, list[int]]:
    """Labels for each frame: frame t of utterance i takes ``labels[i, int(t * ratio)]``.

    ``ratio`` = labels per frame (2 for 100 Hz labels on 50 Hz frames). When an utterance has
    fewer labels than its frames need, its last frames get none (fairseq trims them); more than
    ``tolerance`` frames short, or more than ``tolerance`` frames' worth of labels too many, is a
    ``LabelLengthError``. Returns (packed labels of the labelled frames, labelled frames per utterance).
    """
    packed, kept = [], []
    for i, (num_labels, num_frames) in enumerate(zip(label_lengths, frame_lengths)):
        num_labels, num_frames = int(num_labels), int(num_frames)
        usable = min(num_frames, int(num_labels / ratio))
        surplus = num_labels / ratio - num_frames
        if num_frames - usable > tolerance or surplus > tolerance:
            raise LabelLengthError(
                f"Utterance {i} has {num_frames} frames but {num_labels} labels (expected about "
                f"{num_frames * ratio:.0f} at {ratio:g} labels per frame). Check the label rate (label_rate) and "
                "that the label file lists the same utterances in the same order as the audio.")
        index = (torch.arange(usable, dtype=torch.float64) * ratio).long().to(labels.device)
        packed.append(labels[i].index_select(0, index))
        kept.append(usable)
    return torch.cat(packed), kept


class HubertPretrainModel(nn.Module):
    """``hubert`` (a ``HubertModel``) + ``final_proj`` + ``label_embs_concat``, with fairseq's HuBERT objective."""

    def __init__(self, encoder: HubertConfig | dict | None = None, num_classes: int | Sequence[int] = 500, *,
                 final_dim: int = 256, untie_final_proj: bool = True, logit_temp: float = 0.1,
                 mask_prob: float = 0.8, mask_length: int = 10, min_masks: int = 2, require_same_masks: bool = True,
                 feature_grad_mult: float = 0.1, feature_penalty_weight: float = 10.0,
                 pred_masked_weight: float = 1.0, pred_nomask_weight: float = 0.0, layerdrop: float | None = 0.05,
                 label_rate: float = 50.0, sample_rate: int = 16000, label_tolerance_frames: int = 2):
        nn.Module.__init__(self)  # not super(): a subclass may also derive from ZooModel, whose __init__ takes a config
        config = HubertConfig() if encoder is None else (
            HubertConfig.from_dict(encoder) if isinstance(encoder, dict) else encoder)
        if layerdrop is not None:
            config = HubertConfig.from_dict({**config.to_dict(), "layerdrop": float(layerdrop)})
        if config.mask_time_prob <= 0 and config.mask_feature_prob <= 0:
            raise ConfigError("HubertPretrainModel needs the encoder's masked_spec_embed: set the encoder's "
                              "mask_time_prob > 0 (transformers creates the embedding only then).")
        self.num_classes = [int(num_classes)] if isinstance(num_classes, int) else [int(c) for c in num_classes]
        if self.num_classes and min(self.num_classes) < 1:
            raise ConfigError(f"num_classes must be positive, got {num_classes}")
        self.hubert = HubertModel(config)
        self.final_dim = int(final_dim)
        self.untie_final_proj = bool(untie_final_proj) and len(self.num_classes) > 1
        sets = len(self.num_classes) if self.untie_final_proj else 1
        if self.num_classes:
            # fairseq: one projection per label set when untied (final_dim * sets outputs), else one shared.
            self.final_proj = nn.Linear(config.hidden_size, self.final_dim * sets)
            self.label_embs_concat = nn.Parameter(torch.empty(sum(self.num_classes), self.final_dim).uniform_())
        else:  # num_classes=[]: the encoder alone (feature extraction, fine-tuning); no prediction head
            self.final_proj = None
            self.register_parameter("label_embs_concat", None)
        self.logit_temp = float(logit_temp)
        self.mask_prob, self.mask_length, self.min_masks = float(mask_prob), int(mask_length), int(min_masks)
        self.require_same_masks = bool(require_same_masks)
        self.feature_grad_mult = float(feature_grad_mult)
        self.feature_penalty_weight = float(feature_penalty_weight)
        self.pred_masked_weight, self.pred_nomask_weight = float(pred_masked_weight), float(pred_nomask_weight)
        self.label_rate, self.sample_rate = float(label_rate), int(sample_rate)
        self.label_tolerance_frames = int(label_tolerance_frames)

    @property
    def labels_per_frame(self) -> float:
        """fairseq's feat2tar_ratio: label_rate * total conv stride / sample_rate (2 for 100 Hz, 1 for 50 Hz)."""
        return self.label_rate * self.hubert.config.total_stride / self.sample_rate

    # ------------------------------------------------------------------ pieces
    def conv_features(self, input_values, lengths=None) -> tuple[torch.Tensor, list[int]]:
        """Packed conv features with fairseq's gradient scaling (0 = frozen front end)."""
        if self.feature_grad_mult > 0:
            features, frames = self.hubert.extract_features(input_values, lengths)
            if self.feature_grad_mult != 1.0:
                features = GradMultiply.apply(features, self.feature_grad_mult)
        else:
            with torch.no_grad():
                features, frames = self.hubert.extract_features(input_values, lengths)
        return features, frames

    def logits(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """Packed encoder output [N, D] -> one [N, classes] logit matrix per label set."""
        projected = self.final_proj(hidden).float()
        chunks = projected.chunk(len(self.num_classes), dim=-1) if self.untie_final_proj else \
            [projected] * len(self.num_classes)
        embeddings = F.normalize(self.label_embs_concat.float(), dim=-1, eps=1e-8).split(self.num_classes)
        return [F.normalize(x, dim=-1, eps=1e-8) @ e.t() / self.logit_temp for x, e in zip(chunks, embeddings)]

    # ------------------------------------------------------------------ forward
    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None,
                labels: torch.Tensor | Sequence[torch.Tensor] | None = None, label_lengths=None, *,
                mask: bool = True, mask_indices: torch.Tensor | None = None,
                generator: torch.Generator | None = None, output_layer: int | None = None,
                output_hidden_states: bool = False) -> dict:
        """Masked prediction on a padded batch ``input_values`` [B, T] with sample ``lengths``.

        labels: [B, N] (or a list, one per label set) frame labels at ``label_rate``, padded;
        label_lengths: [B] valid labels per utterance (default N). Without labels only the encoder
        output and the feature penalty are returned.
        Returns loss, loss_masked, loss_unmasked, feature_penalty, accuracy_masked, accuracy_unmasked,
        logits_masked / targets_masked (lists over label sets), mask_indices [B, L], frame_lengths,
        and ``encoder`` (a HubertOutput with the padded last hidden state). With
        ``output_hidden_states`` also ``packed_hidden_states`` ([sum(L), D] per layer, embeddings first).

        Raises ConfigError when the model has no prediction head or the number of label sets does not match
        num_classes, and LabelLengthError for labels outside 0..K-1 or of the wrong length.
        """
        features, frames = self.conv_features(input_values, lengths)
        feature_penalty = features.float().pow(2).mean()
        width = self.hubert.frame_lengths(input_values.shape[-1])
        if mask_indices is None:
            mask_indices = compute_span_mask(
                frames, self.mask_prob, self.mask_length, self.min_masks, generator,
                require_same_masks=self.require_same_masks, max_length=width) if mask else \
                torch.zeros(len(frames), width, dtype=torch.bool)
        mask_indices = mask_indices.to(features.device, torch.bool)
        hidden = self.hubert.feature_projection(features)
        hidden = self.hubert.mask_features(hidden, frames, mask_indices)
        last, states = self.hubert.encode(hidden, frames, output_layer=output_layer,
                                          output_hidden_states=output_hidden_states)
        encoder = HubertOutput(last_hidden_state=unpack(last, frames, width), hidden_states=None,
                               frame_lengths=torch.tensor(frames, dtype=torch.long, device=input_values.device))
        out = {"feature_penalty": feature_penalty, "mask_indices": mask_indices, "frame_lengths": encoder.frame_lengths,
               "encoder": encoder, "packed_last_hidden_state": last}
        if states is not None:
            out["packed_hidden_states"] = states
        if labels is None:
            out["loss"] = self.feature_penalty_weight * feature_penalty
            return out

        if not self.num_classes:
            raise ConfigError("This model has no prediction head (num_classes=[]); build it with num_classes=[K] "
                              "to train on K-class pseudo-labels.")
        label_sets = [labels] if isinstance(labels, torch.Tensor) else list(labels)
        if len(label_sets) != len(self.num_classes):
            raise ConfigError(f"Got {len(label_sets)} label sets for a model with {len(self.num_classes)} "
                              f"(num_classes={self.num_classes}).")
        label_lengths = [label_sets[0].shape[1]] * len(frames) if label_lengths is None else \
            [int(n) for n in torch.as_tensor(label_lengths).tolist()]
        targets, labelled = [], None
        for label_set, classes in zip(label_sets, self.num_classes):
            packed_labels, labelled = align_labels(label_set, label_lengths, frames, self.labels_per_frame,
                                                   tolerance=self.label_tolerance_frames)
            if packed_labels.numel() and (packed_labels.min() < 0 or packed_labels.max() >= classes):
                raise LabelLengthError(f"Labels must lie in 0..{classes - 1}; got {int(packed_labels.min())}.."
                                       f"{int(packed_labels.max())}. Check num_classes against the k-means model.")
            targets.append(packed_labels.to(last.device))
        # Frames with a label, in packed order, and which of them are masked.
        keep = pack(_prefix_mask(labelled, frames, width, last.device)[..., None], frames)[:, 0]
        masked = pack(mask_indices[..., None], frames)[:, 0][keep]
        hidden_labelled = last[keep]

        zero = last.new_zeros((), dtype=torch.float32)
        loss_masked, loss_unmasked = zero, zero
        out["logits_masked"], out["targets_masked"] = [], []
        correct_m = count_m = correct_u = count_u = 0
        if self.pred_masked_weight > 0 and masked.any():
            logits = self.logits(hidden_labelled[masked])
            for logit, target in zip(logits, targets):
                target = target[masked]
                loss_masked = loss_masked + F.cross_entropy(logit, target)
                correct_m += int((logit.argmax(-1) == target).sum())
                count_m += target.numel()
                out["logits_masked"].append(logit)
                out["targets_masked"].append(target)
        if self.pred_nomask_weight > 0 and (~masked).any():
            logits = self.logits(hidden_labelled[~masked])
            out["logits_unmasked"], out["targets_unmasked"] = [], []
            for logit, target in zip(logits, targets):
                target = target[~masked]
                loss_unmasked = loss_unmasked + F.cross_entropy(logit, target)
                correct_u += int((logit.argmax(-1) == target).sum())
                count_u += target.numel()
                out["logits_unmasked"].append(logit)
                out["targets_unmasked"].append(target)
        out.update(
            loss=self.pred_masked_weight * loss_masked + self.pred_nomask_weight * loss_unmasked
            + self.feature_penalty_weight * feature_penalty,
            loss_masked=loss_masked, loss_unmasked=loss_unmasked,
            accuracy_masked=correct_m / count_m if count_m else float("nan"),
            accuracy_unmasked=correct_u / count_u if count_u else float("nan"),
            num_masked=int(masked.sum()), num_unmasked=int((~masked).sum()),
        )
        return out

    # ------------------------------------------------------------------ checkpoints
    def load_fairseq_state_dict(self, checkpoint: dict, source: str = "fairseq HuBERT checkpoint") -> "HubertPretrainModel":
        """Strictly load fairseq HuBERT pretraining weights (``ckpt["model"]`` or the whole checkpoint)."""
        from zoo.hub import load_state_dict_strict
        from zoo.models.checkpoints import fairseq_hubert_to_hf

        encoder, extras = fairseq_hubert_to_hf(checkpoint, source=source)
        state = {f"hubert.{k}": v for k, v in encoder.items()}
        state.update(extras)
        return load_state_dict_strict(self, state, source)


def _prefix_mask(counts: Sequence[int], frames: Sequence[int], width: int, device) -> torch.Tensor:
    """[B, width] True for the first counts[i] frames of row i."""
    return torch.arange(width, device=device)[None] < torch.tensor(list(counts), device=device)[:, None]


__all__ = ["GradMultiply", "HubertPretrainModel", "LabelLengthError", "align_labels", "compute_span_mask"]
