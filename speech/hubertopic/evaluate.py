"""``zoo eval hubertopic-... --data manifest.jsonl [labels=FOLDER]``: masked prediction and topics.

* masked-prediction accuracy (and unmasked accuracy) against the unit labels of a labels
  folder (made by the trainer), with a fixed-seed span mask so runs are comparable;
* the model's predicted topic per utterance (``predict_topic``, argmax), its agreement
  with the LDA topics, and normalised mutual information (NMI) between topics and the
  manifest's ``speaker`` (and ``gender`` where rows have it), for the predicted and the
  LDA topics (the paper finds topics encode speaker and gender; arXiv 2310.03975).

Utterances the labels folder does not cover are labelled on the fly with its k-means
centroids (MFCC labels) and its LDA model.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import torch

from zoo.errors import ConfigError
from zoo.model import inference

logger = logging.getLogger("zoo.hubertopic")

OPTIONS = ("labels", "max_items", "seed", "teacher")


class _OnTheFlyLabels:
    """Units and topics for utterances a labels folder lacks, from its centroids and LDA."""

    def __init__(self, labels, teacher=None):
        from zoo.speech.hubertopic.kmeans import load_centroids
        from zoo.speech.hubertopic.topics import TopicModel

        self.labels = labels
        self.centroids = load_centroids(labels.folder / labels.manifest["centroids"])
        self.topic_model = TopicModel.load(labels.folder / labels.manifest["lda"])
        self.source = labels.manifest["source"]
        self.teacher = teacher
        settings = json.loads((labels.folder / "steps.json").read_text(encoding="utf-8"))["lda"]["settings"]
        self.documents, self.ngram = settings["documents"], int(settings["ngram"])
        self.layer = settings.get("layer")

    def units(self, wave: torch.Tensor, sample_rate: int) -> np.ndarray:
        from zoo.speech.hubertopic.features import unit_features
        from zoo.speech.hubertopic.kmeans import assign

        if self.source == "layer" and self.teacher is None:
            raise ConfigError("These labels come from layer features; pass teacher=<the model that made them> to label "
                              "utterances the labels folder does not cover.")
        features = unit_features(self.source, wave, sample_rate, teacher=self.teacher, layer=self.layer)
        return assign(features, self.centroids)

    def topic(self, units: np.ndarray) -> int:
        from zoo.speech.hubertopic.topics import unit_documents

        counts, _ = unit_documents([units], self.documents, self.ngram, vocabulary=self.topic_model.vocabulary)
        return int(self.topic_model.hard_topics(counts)[0])


def _unit_accuracy(model, wave, units, generator, name) -> tuple[int, int, int, int]:
    """(correct, count) over masked frames, then over unmasked frames, of one utterance under a random span mask."""
    from zoo.models.hubert_pretrain import LabelLengthError, align_labels

    x = model.normalize_waveform(wave)[None].to(model.device)
    units_t = torch.as_tensor(np.asarray(units), dtype=torch.long)[None]
    out = model(x, generator=generator)  # no labels: the encoder output under a span mask
    frames = out["frame_lengths"].tolist()
    try:
        targets, kept = align_labels(units_t, [units_t.shape[1]], frames, model.labels_per_frame,
                                     tolerance=model.label_tolerance_frames)
    except LabelLengthError as err:
        raise LabelLengthError(f"{name}: {err}") from None
    predictions = model.logits(out["packed_last_hidden_state"][:kept[0]])[0].argmax(-1).cpu()
    right = predictions == targets
    masked = out["mask_indices"][0, :kept[0]].cpu()
    return int(right[masked].sum()), int(masked.sum()), int(right[~masked].sum()), int((~masked).sum())


def _nmi(a: list, b: list) -> float:
    from zoo.speech.hubertopic.topics import normalized_mutual_info

    return float(normalized_mutual_info(a, b))


@inference
def evaluate(model, *, data, output=None, labels=None, max_items: int | None = None, seed: int = 0, teacher=None,
             **unknown) -> dict:
    """Score ``model`` on the utterances of ``data`` (a JSONL manifest, an audio folder, or ``demo``).

    Runs in eval mode without gradients. Returns a dict (also written as JSON to ``output``):
    ``utterances``; with ``labels`` (a labels folder) ``accuracy_masked`` and
    ``accuracy_unmasked`` (fractions, under a span mask drawn with ``seed``) and
    ``masked_frames``; ``predicted_topics_used``/``lda_topics_used``; with ``speaker``
    (``gender``) fields, ``nmi_{predicted,lda}_topic_{speaker,gender}`` in [0, 1] and
    ``speakers``; ``topic_accuracy`` (predicted topic = LDA topic, a fraction). Raises
    :class:`~zoo.errors.ConfigError` for unknown options.
    """
    from zoo.audio import load_audio
    from zoo.speech.hubertopic.pipeline import Labels, load_teacher, utterance_id
    from zoo.speech.hubertopic.trainer import resolve_rows

    if unknown:
        raise ConfigError(f"Unknown hubertopic eval options: {', '.join(sorted(unknown))}. Valid: {', '.join(OPTIONS)}.")
    rows, corpus = resolve_rows(str(data))
    rows = rows[:int(max_items)] if max_items else rows
    label_set = Labels.read(labels) if labels else None
    fallback = None
    generator = torch.Generator().manual_seed(int(seed))
    correct = counted = 0
    correct_u = counted_u = 0
    predicted, lda_topics, speakers, genders = [], [], [], []
    for index, row in enumerate(rows):
        wave = load_audio(row["path"], model.sample_rate, min_samples=model.hubert.config.receptive_field)
        key = utterance_id(row, index)
        units = topic = None
        if label_set is not None:
            if key in label_set.units:
                units, topic = label_set.units[key], label_set.topics.get(key)
            else:
                if fallback is None:
                    fallback = _OnTheFlyLabels(label_set, load_teacher(teacher) if teacher else None)
                units = fallback.units(wave, model.sample_rate)
                topic = fallback.topic(units)
        if model.topic_head is not None:
            predicted.append(int(model.predict_topic(wave, model.sample_rate).argmax()))
        if units is not None and model.num_classes:
            hits, total, hits_u, total_u = _unit_accuracy(model, wave, units, generator, row["path"])
            correct, counted, correct_u, counted_u = correct + hits, counted + total, correct_u + hits_u, \
                counted_u + total_u
        if topic is not None:
            lda_topics.append(int(topic))
        speakers.append(row.get("speaker"))
        genders.append(row.get("gender"))

    report: dict = {"utterances": len(rows), "corpus": corpus}
    if counted:
        report["accuracy_masked"] = correct / counted
        report["accuracy_unmasked"] = correct_u / counted_u if counted_u else float("nan")
        report["masked_frames"] = int(counted)
    have_speakers = all(s is not None for s in speakers)
    have_genders = all(g is not None for g in genders)
    for name, topics in (("predicted", predicted), ("lda", lda_topics)):
        if len(topics) != len(rows):
            continue
        report[f"{name}_topics_used"] = len(set(topics))
        if have_speakers:
            report[f"nmi_{name}_topic_speaker"] = _nmi(topics, speakers)
        if have_genders:
            report[f"nmi_{name}_topic_gender"] = _nmi(topics, genders)
    if predicted and len(lda_topics) == len(predicted):
        report["topic_accuracy"] = float(np.mean(np.asarray(predicted) == np.asarray(lda_topics)))
    if have_speakers:
        report["speakers"] = len(set(speakers))
    if output:
        from zoo.files import write_json

        write_json(output, report)
    logger.info("hubertopic eval: %s", report)
    return report
