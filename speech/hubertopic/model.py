"""The HuBERTopic model: HuBERT masked prediction plus an utterance-level topic head.

Maekaku et al., *HuBERTopic* (arXiv 2310.03975): an auxiliary utterance-level topic
classification task, whose labels come from a topic model over each utterance's HuBERT
pseudo-labels, is added to HuBERT's masked prediction. No official code exists.
State-dict keys: ``hubert.*`` (transformers' ``HubertModel`` names), ``final_proj.*`` and
``label_embs_concat`` (fairseq's pretraining head, ``facebookresearch/fairseq:fairseq/models/hubert/hubert.py``)
and ``topic_head.*`` (ours). ``forward`` is the training path; ``extract_features`` and
``predict_topic`` are the inference API (eval mode, no gradients), and take anything
:func:`zoo.audio.prepare_waveforms` accepts (paths, waveforms with their rate, lists, padded batches).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.model import ZooModel, inference
from zoo.models.hubert import HubertConfig, pack
from zoo.models.hubert_pretrain import HubertPretrainModel
from zoo.speech.hubertopic.builder import POOLINGS


class HubertopicModel(HubertPretrainModel, ZooModel):
    """``HubertPretrainModel`` with an optional ``topic_head`` (``Linear(D, T)``) on pooled frames of one layer.

    Built from a config dict (``zoo.speech.hubertopic.builder``): ``encoder`` (HubertConfig
    fields), ``pretrain`` (the fairseq HuBERT objective), ``num_classes`` (units per label
    set), ``label_rate`` (labels per second), ``normalize`` (layer-norm the waveform) and
    ``topic`` (``num_topics`` T, ``layer``, ``pooling``, ``dropout``, ``weight`` lambda).
    Raises :class:`~zoo.errors.ConfigError` for an unknown key or a value out of range.
    """

    family = "hubertopic"
    head_keys = ("topic_head.", "final_proj.", "label_embs_concat")

    def __init__(self, config: dict):
        encoder = dict(config["encoder"])
        hubert_config = HubertConfig.from_dict(encoder, source="HuBERTopic config 'encoder'")
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
        """Packed frames ``[sum(L), D]`` -> one vector per utterance ``[B, D]`` (mean or max over its ``L_i`` frames)."""
        pieces = packed.split([int(n) for n in frames])
        if self.topic_pooling == "max":
            return torch.stack([p.max(0).values for p in pieces])
        return torch.stack([p.mean(0) for p in pieces])

    def topic_logits(self, packed: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        """Topic logits ``[B, T]`` float32 of packed frames ``[sum(L), D]``; ConfigError without a topic head."""
        if self.topic_head is None:
            raise ConfigError("This model has no topic head (topic.num_topics=0); build it with "
                              "topic.num_topics=T to predict topics.")
        return self.topic_head(self.topic_dropout(self.pool(packed, frames))).float()

    # ------------------------------------------------------------------ training path
    def forward(self, input_values: torch.Tensor, lengths: torch.Tensor | None = None, labels=None,
                label_lengths=None, topics: torch.Tensor | None = None, *, mask: bool = True,
                mask_indices: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict:
        """Masked prediction plus topic classification on a padded batch ``[B, T]`` (already normalised).

        ``topics`` ``[B]`` are the utterances' hard topic labels in ``0..T-1``. Adds ``loss_topic``,
        ``accuracy_topic`` (a fraction) and ``topic_logits`` ``[B, T]`` to
        ``HubertPretrainModel.forward``'s output; ``loss`` = HuBERT loss + topic.weight x topic
        cross-entropy (the paper's auxiliary task). Runs in the module's current mode with
        gradients. Raises :class:`~zoo.errors.ConfigError` for topic labels out of range or
        without a topic head.
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
        """fairseq's ``normalize: true`` (layer norm over the whole waveform, biased std, eps 1e-5), else as is.

        ``[T]`` float -> ``[T]`` float32.
        """
        wave = wave.to(torch.float32)
        return F.layer_norm(wave, wave.shape) if self.normalize else wave

    def prepare_inputs(self, audio, sample_rate: int | None = None, lengths=None, *,
                       channel_axis: int | None = None) -> tuple[list[torch.Tensor], bool]:
        """Audio -> (list of 16 kHz mono float32 tensors, normalised as configured; whether it was a batch).

        ``audio`` is anything :func:`zoo.audio.prepare_waveforms` accepts; each waveform must
        cover one frame (the encoder's receptive field, 400 samples at 16 kHz). Raises
        :class:`~zoo.errors.AudioInputError` for unusable audio.
        """
        from zoo.audio import prepare_waveforms

        waves, batched = prepare_waveforms(audio, sample_rate, self.sample_rate, lengths,
                                           min_samples=self.hubert.config.receptive_field, channel_axis=channel_axis)
        return [self.normalize_waveform(wave) for wave in waves], batched

    def _run_encoder(self, waves: list[torch.Tensor], layer: int | None, all_layers: bool):
        from zoo.audio import pad_batch

        padded, sample_lengths = pad_batch(waves)
        dtype = next(self.hubert.parameters()).dtype
        return self.hubert(padded.to(self.device, dtype), sample_lengths.to(self.device),
                           output_hidden_states=all_layers, output_layer=layer)

    @inference
    def extract_features(self, audio, sample_rate: int | None = None, layer: int | None = None, lengths=None, *,
                         channel_axis: int | None = None):
        """Frame features at 50 Hz, in eval mode without gradients: ``(features, frame_lengths [B] int64)``.

        ``layer=None`` gives every layer, ``features`` ``[num_layers + 1, B, L, D]`` (index 0 is
        the transformer input, index k the output of layer k, as transformers'
        ``hidden_states``); ``layer=k`` gives ``[B, L, D]``. The batch dimension is always
        present (B = 1 for one input). Frames after an utterance's length are zeros. Raises
        :class:`~zoo.errors.ConfigError` for a layer outside ``0..num_layers`` and
        :class:`~zoo.errors.AudioInputError` for unusable audio.
        """
        layers = self.hubert.config.num_hidden_layers
        if layer is not None and not 0 <= int(layer) <= layers:
            raise ConfigError(f"layer must be in 0..{layers} (0 = the transformer input), got {layer}")
        waves, _ = self.prepare_inputs(audio, sample_rate, lengths, channel_axis=channel_axis)
        out = self._run_encoder(waves, None if layer is None else int(layer), all_layers=layer is None)
        if layer is None:
            return torch.stack(out.hidden_states), out.frame_lengths
        if int(layer) == 0:
            out = self._run_encoder(waves, 1, all_layers=True)
            return out.hidden_states[0], out.frame_lengths
        return out.last_hidden_state, out.frame_lengths

    @inference
    def predict_topic(self, audio, sample_rate: int | None = None, lengths=None, *,
                      channel_axis: int | None = None) -> torch.Tensor:
        """Topic distribution (softmax, rows sum to 1) in eval mode: ``[T]`` for one input, ``[B, T]`` for a batch.

        Raises :class:`~zoo.errors.ConfigError` when the model has no topic head and
        :class:`~zoo.errors.AudioInputError` for unusable audio.
        """
        if self.topic_head is None:
            raise ConfigError("This model has no topic head (topic.num_topics=0); there is nothing to predict.")
        waves, batched = self.prepare_inputs(audio, sample_rate, lengths, channel_axis=channel_axis)
        out = self._run_encoder(waves, self.topic_layer, all_layers=False)
        frames = out.frame_lengths.tolist()
        packed = pack(out.last_hidden_state, frames)
        probabilities = self.topic_logits(packed, frames).softmax(-1)
        return probabilities if batched else probabilities[0]


__all__ = ["HubertopicModel"]
