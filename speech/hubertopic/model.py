"""The HuBERTopic model: HuBERT masked prediction + an utterance-level topic head (speech.md §2.2).

State-dict keys: ``hubert.*`` (transformers' ``HubertModel`` names), ``final_proj.*`` and
``label_embs_concat`` (fairseq's pretraining head, §2.3) and ``topic_head.*`` (ours).
``forward`` is the training path; ``extract_features`` and ``predict_topic`` are the
inference API.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model import ZooModel
from zoo.models.hubert import HubertConfig, pack
from zoo.models.hubert_pretrain import HubertPretrainModel
from zoo.speech.hubertopic.builder import POOLINGS


class HubertopicModel(HubertPretrainModel, ZooModel):
    """``HubertPretrainModel`` with an optional ``topic_head`` on pooled frames of one encoder layer."""

    family = "hubertopic"
    head_keys = ("topic_head.", "final_proj.", "label_embs_concat")

    def __init__(self, config: dict):
        encoder = dict(config["encoder"])
        try:
            hubert_config = HubertConfig(**encoder)
        except TypeError as err:
            raise ConfigError(f"HuBERTopic config 'encoder' has an argument HubertConfig does not take: {err}") from err
        pretrain = dict(config.get("pretrain") or {})
        try:
            HubertPretrainModel.__init__(
                self, hubert_config, list(config.get("num_classes") or []), layerdrop=None,
                label_rate=float(config.get("label_rate", 50)), sample_rate=int(config.get("sample_rate", 16000)),
                **pretrain)
        except TypeError as err:
            raise ConfigError(f"HuBERTopic config 'pretrain' has a key the objective does not take: {err}") from err
        self.config = copy.deepcopy(dict(config))
        self.card_name = None
        self.normalize = bool(config.get("normalize", False))
        topic = dict(config.get("topic") or {})
        self.num_topics = int(topic.get("num_topics", 0) or 0)
        self.topic_weight = float(topic.get("weight", 1.0))
        self.topic_pooling = topic.get("pooling", "mean")
        if self.topic_pooling not in POOLINGS:
            raise ConfigError(f"topic.pooling must be one of {POOLINGS}, got {self.topic_pooling!r}")
        layers = hubert_config.num_hidden_layers
        self.topic_layer = layers if topic.get("layer") is None else int(topic["layer"])
        if not 1 <= self.topic_layer <= layers:
            raise ConfigError(f"topic.layer must be in 1..{layers} (or null for the last layer), got {topic['layer']}")
        if self.num_topics < 0:
            raise ConfigError(f"topic.num_topics must be >= 0, got {self.num_topics}")
        self.topic_dropout = nn.Dropout(float(topic.get("dropout", 0.0)))
        self.topic_head = nn.Linear(hubert_config.hidden_size, self.num_topics) if self.num_topics else None
        if self.topic_head is not None:
            nn.init.normal_(self.topic_head.weight, 0.0, hubert_config.initializer_range)
            nn.init.zeros_(self.topic_head.bias)

    # ------------------------------------------------------------------ pooling / topic logits
    def pool(self, packed: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """Packed frames [sum(L), D] -> one vector per utterance [B, D] (mean or max over its frames)."""
        pieces = packed.split([int(n) for n in frames])
        if self.topic_pooling == "max":
            return torch.stack([p.max(0).values for p in pieces])
        return torch.stack([p.mean(0) for p in pieces])

    def topic_logits(self, packed: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        if self.topic_head is None:
            raise ConfigError("This model has no topic head (topic.num_topics=0); build it with "
                              "topic.num_topics=T to predict topics.")
        return self.topic_head(self.topic_dropout(self.pool(packed, frames))).float()

    # ------------------------------------------------------------------ training path
    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None, labels=None,
                label_lengths=None, topics: torch.Tensor | None = None, *, mask: bool = True,
                mask_indices: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict:
        """Masked prediction plus topic classification on a padded batch [B, T] (already normalised).

        ``topics`` [B] are the utterances' hard topic labels. Adds ``loss_topic``,
        ``accuracy_topic`` and ``topic_logits`` to ``HubertPretrainModel.forward``'s output;
        ``loss`` = HuBERT loss + topic.weight * topic CE (speech.md §2.2).
        """
        use_topics = topics is not None and self.topic_head is not None and self.topic_weight > 0
        intermediate = use_topics and self.topic_layer < self.hubert.config.num_hidden_layers
        out = HubertPretrainModel.forward(
            self, input_values, lengths, labels, label_lengths, mask=mask, mask_indices=mask_indices,
            generator=generator, output_hidden_states=intermediate)
        if topics is not None and self.topic_head is None:
            raise ConfigError("Got topic labels but the model has no topic head (topic.num_topics=0).")
        if use_topics:
            frames = out["frame_lengths"].tolist()
            packed = out["packed_hidden_states"][self.topic_layer] if intermediate else out["packed_last_hidden_state"]
            logits = self.topic_logits(packed, frames)
            topics = torch.as_tensor(topics, device=logits.device, dtype=torch.long)
            if int(topics.min()) < 0 or int(topics.max()) >= self.num_topics:
                raise ConfigError(f"Topic labels must lie in 0..{self.num_topics - 1}, got {int(topics.min())}.."
                                  f"{int(topics.max())}; set topic.num_topics to the LDA's number of topics.")
            loss_topic = F.cross_entropy(logits, topics)
            out["topic_logits"] = logits
            out["loss_topic"] = loss_topic
            out["accuracy_topic"] = float((logits.argmax(-1) == topics).float().mean())
            out["loss_hubert"] = out["loss"]
            out["loss"] = out["loss"] + self.topic_weight * loss_topic
        return out

    # ------------------------------------------------------------------ inference
    def normalize_waveform(self, wave: torch.Tensor) -> torch.Tensor:
        """fairseq's ``normalize: true``: layer norm over the whole waveform (biased std, eps 1e-5)."""
        wave = wave.to(torch.float32)
        return F.layer_norm(wave, wave.shape) if self.normalize else wave

    def prepare_inputs(self, wav, sample_rate: int | None = None, lengths=None) -> tuple[list[torch.Tensor], bool]:
        """One waveform, a list, or a padded batch with ``lengths`` -> list of 16 kHz mono tensors."""
        from zoo.audio import prepare_waveforms

        waves, batched = prepare_waveforms(wav, int(sample_rate or self.sample_rate), self.sample_rate, lengths,
                                           min_samples=self.hubert.config.receptive_field)
        waves = [self.normalize_waveform(wave) for wave in waves]
        return waves, batched

    def _run_encoder(self, waves: list[torch.Tensor], layer: int | None, all_layers: bool):
        from zoo.audio import pad_batch

        padded, sample_lengths = pad_batch(waves)
        dtype = next(self.hubert.parameters()).dtype
        out = self.hubert(padded.to(self.device, dtype), sample_lengths.to(self.device),
                          output_hidden_states=all_layers, output_layer=layer)
        return out

    @torch.no_grad()
    def extract_features(self, wav, sample_rate: int | None = None, layer: int | None = None, lengths=None):
        """Frame features at 50 Hz: ``(features, frame_lengths)``.

        ``layer=None`` gives every layer, ``features`` [num_layers + 1, B, L, D] (index 0 is
        the transformer input, index k the output of layer k, as transformers'
        ``hidden_states``); ``layer=k`` gives [B, L, D]. Input: one waveform, a list, or a
        padded batch with ``lengths``; the batch dimension is always present.
        Frames after an utterance's length are zeros.
        """
        layers = self.hubert.config.num_hidden_layers
        if layer is not None and not 0 <= int(layer) <= layers:
            raise ConfigError(f"layer must be in 0..{layers} (0 = the transformer input), got {layer}")
        waves, _ = self.prepare_inputs(wav, sample_rate, lengths)
        out = self._run_encoder(waves, None if layer is None else int(layer), all_layers=layer is None)
        if layer is None:
            return torch.stack(out.hidden_states), out.frame_lengths
        if int(layer) == 0:
            out = self._run_encoder(waves, 1, all_layers=True)
            return out.hidden_states[0], out.frame_lengths
        return out.last_hidden_state, out.frame_lengths

    @torch.no_grad()
    def predict_topic(self, wav, sample_rate: int | None = None, lengths=None) -> torch.Tensor:
        """Topic distribution per utterance: [T] for one waveform, [B, T] for a list or padded batch."""
        if self.topic_head is None:
            raise ConfigError("This model has no topic head (topic.num_topics=0); there is nothing to predict.")
        waves, batched = self.prepare_inputs(wav, sample_rate, lengths)
        out = self._run_encoder(waves, self.topic_layer, all_layers=False)
        frames = out.frame_lengths.tolist()
        packed = pack(out.last_hidden_state, frames)
        probabilities = self.topic_logits(packed, frames).softmax(-1)
        return probabilities if batched else probabilities[0]


__all__ = ["HubertopicModel"]
