"""The offline label chain as resumable steps: features -> k-means -> unit labels -> LDA topics.

The steps run on ``zoo.pipeline``: every step writes into one labels folder and records the
settings it ran with in ``steps.json``. Running the chain again skips a step whose outputs
exist with the same settings; different settings are an error (so labels are never silently
mixed) unless ``force=True``, which redoes every step. The folder's ``labels.json`` is the
manifest of label files the trainer reads:

    labels.json        {"units": "units.km", "topics": "topics.txt", "label_rate": 100, ...}
    kmeans_sample.npy  features of the k-means sample (fairseq: --percent 0.1 of the utterances)
    centroids.npy      [K, D] k-means centroids
    units.km           "<id>\\t<unit> <unit> ..." one line per utterance
    lda/               the LDA model (npz + json, no pickle)
    topics.txt         "<id>\\t<topic>" one line per utterance

Iteration 1 (HuBERT, arXiv 2106.07447) uses 39-d MFCC at 100 Hz with K=100; iteration 2 the
features of layer 6 of the previous model at 50 Hz with K=500 (``source: layer`` and
``teacher``: a card name, a zoo folder, or an upstream HuBERT checkpoint).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError
from zoo.pipeline import Pipeline, Step, StepContext, settings_signature

logger = logging.getLogger("zoo.hubertopic")

STEPS = ("features", "kmeans", "labels", "lda")
LABELS_FILE = "labels.json"
STEPS_FILE = "steps.json"

# Defaults of the `labels` and `lda` sections (trainer recipe); HuBERT's / fairseq's values where they exist.
LABEL_DEFAULTS = {
    "dir": None,             # null = <train.output_dir>/labels
    "source": "mfcc",        # mfcc (iteration 1) | layer (iteration 2)
    "teacher": None,         # source=layer: card name, zoo folder or upstream checkpoint of the previous model
    "layer": 6,              # source=layer: transformer layer (1-based), HuBERT paper's iteration-2 choice
    "num_clusters": 100,     # 100 for MFCC, 500 for layer features (HuBERT paper)
    "percent": 0.1,          # fraction of utterances the k-means is fitted on (fairseq --percent 0.1)
    "kmeans": {},            # overrides of zoo.speech.hubertopic.kmeans.KMEANS_DEFAULTS
    "seed": 0,
    "force": False,          # redo every step even when its outputs exist
}
LDA_DEFAULTS = {
    "num_topics": None,      # null = the model's topic.num_topics
    "documents": "dedup",    # ours: frames | dedup | ngram (the paper does not say)
    "ngram": 2,
    "doc_topic_prior": None,  # null = 1 / num_topics (sklearn)
    "topic_word_prior": None,
    "max_iter": 10,
    "learning_method": "batch",
    "batch_size": 128,
    "seed": 0,
}


def utterance_id(row: dict, index: int) -> str:
    """A manifest row's id: its ``id`` field, else its path (ids must not contain tabs or newlines)."""
    value = str(row.get("id") or row.get("path") or index)
    if "\t" in value or "\n" in value:
        raise ConfigError(f"utterance id {value!r} contains a tab or newline; give the manifest an 'id' field.")
    return value


@dataclass
class LabelChain:
    """Runs (or reuses) the label steps for ``rows`` (manifest rows with absolute ``path``)."""

    rows: list[dict]
    folder: Path
    labels: dict = field(default_factory=lambda: dict(LABEL_DEFAULTS))
    lda: dict = field(default_factory=lambda: dict(LDA_DEFAULTS))
    num_topics: int = 10
    sample_rate: int = 16000
    corpus: str = ""

    def __post_init__(self):
        self.folder = Path(self.folder)
        self.labels = {**LABEL_DEFAULTS, **self.labels}
        self.lda = {**LDA_DEFAULTS, **self.lda}
        if self.labels["source"] not in ("mfcc", "layer"):
            raise ConfigError(f"labels.source must be 'mfcc' or 'layer', got {self.labels['source']!r}")
        if self.labels["source"] == "layer" and not self.labels["teacher"]:
            raise ConfigError("labels.source=layer needs labels.teacher: the previous iteration's model (a card name "
                              "such as hubert-base, a zoo folder such as runs/x/final, or a HuBERT checkpoint).")
        if not 0 < float(self.labels["percent"]) <= 1:
            raise ConfigError(f"labels.percent must be in (0, 1], got {self.labels['percent']}")
        self.num_topics = int(self.lda["num_topics"] or self.num_topics)
        if self.num_topics < 1:
            raise ConfigError("The LDA needs num_topics >= 1 (lda.num_topics or the model's topic.num_topics).")
        self.ids = [utterance_id(row, i) for i, row in enumerate(self.rows)]
        if len(set(self.ids)) != len(self.ids):
            from collections import Counter

            duplicates = [value for value, count in Counter(self.ids).items() if count > 1]
            raise ConfigError(f"The manifest repeats utterance ids {sorted(set(duplicates))[:5]}; ids must be unique.")
        self._teacher = None

    # ------------------------------------------------------------------ settings per step
    @property
    def label_rate(self) -> int:
        """Labels per second of the configured source: 100 for MFCC, 50 for layer features."""
        from zoo.speech.hubertopic.features import FEATURE_RATES

        return FEATURE_RATES[self.labels["source"]]

    def _settings(self, step: str) -> dict:
        base = {"corpus": self.corpus, "utterances": len(self.ids), "ids": settings_signature(self.ids),
                "source": self.labels["source"], "sample_rate": self.sample_rate}
        if self.labels["source"] == "layer":
            base.update(teacher=str(self.labels["teacher"]), layer=int(self.labels["layer"]))
        if step == "features":
            return {**base, "percent": float(self.labels["percent"]), "seed": int(self.labels["seed"])}
        kmeans = {**self._settings("features"), "num_clusters": int(self.labels["num_clusters"]),
                  "kmeans": dict(self.labels["kmeans"])}
        if step in ("kmeans", "labels"):
            return kmeans
        return {**kmeans, **{k: v for k, v in self.lda.items()}, "num_topics": self.num_topics}

    def pipeline(self) -> Pipeline:
        """The four steps as a ``zoo.pipeline.Pipeline`` on the labels folder."""
        return Pipeline(self.folder, [
            Step("features", self._step_features, self._settings("features"), outputs=["kmeans_sample.npy"]),
            Step("kmeans", self._step_kmeans, self._settings("kmeans"), inputs=["kmeans_sample.npy"],
                 outputs=["centroids.npy"]),
            Step("labels", self._step_labels, self._settings("labels"), inputs=["centroids.npy"],
                 outputs=["units.km"]),
            Step("lda", self._step_lda, self._settings("lda"), inputs=["units.km"], outputs=["topics.txt", "lda"]),
        ], name="labels", log=logger, steps_file=STEPS_FILE,
            hint="Use another labels.dir, or labels.force=true to make them again (the old labels are replaced).")

    # ------------------------------------------------------------------ features
    def teacher(self):
        """The iteration-2 teacher model (loaded once, on first use) from ``labels.teacher``."""
        if self._teacher is None:
            self._teacher = load_teacher(self.labels["teacher"])
        return self._teacher

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Features of one raw waveform at the label rate: [N, 39] MFCC or [N, D] layer output."""
        from zoo.speech.hubertopic.features import unit_features

        source = self.labels["source"]
        return unit_features(source, wave, self.sample_rate, teacher=self.teacher() if source == "layer" else None,
                             layer=int(self.labels["layer"]))

    def _audio(self, index: int) -> torch.Tensor:
        from zoo.audio import load_audio

        return load_audio(self.rows[index]["path"], self.sample_rate, min_samples=400)

    # ------------------------------------------------------------------ steps
    def run(self, force: bool | None = None) -> dict:
        """Run every step that is not done yet; returns the labels manifest (``labels.json``)."""
        force = bool(self.labels["force"]) if force is None else force
        self.pipeline().run(force=force)
        manifest = {
            "units": "units.km", "topics": "topics.txt", "centroids": "centroids.npy", "lda": "lda",
            "label_rate": self.label_rate, "num_clusters": int(self.labels["num_clusters"]),
            "num_topics": self.num_topics, "source": self.labels["source"], "utterances": len(self.ids),
            "corpus": self.corpus,
        }
        _write_json(self.folder / LABELS_FILE, manifest)
        return manifest

    def _step_features(self, ctx: StepContext) -> None:
        from zoo.speech.hubertopic.kmeans import sample_utterances

        chosen = sample_utterances(len(self.ids), float(self.labels["percent"]), int(self.labels["seed"]))
        features = [self.features(self._audio(int(i))).numpy().astype(np.float32) for i in chosen]
        np.save(ctx.output("kmeans_sample.npy"), np.concatenate(features), allow_pickle=False)

    def _step_kmeans(self, ctx: StepContext) -> None:
        from zoo.speech.hubertopic.kmeans import fit_kmeans, save_centroids

        features = np.load(ctx.path("kmeans_sample.npy"), allow_pickle=False)
        centroids = fit_kmeans(features, int(self.labels["num_clusters"]), seed=int(self.labels["seed"]),
                               **dict(self.labels["kmeans"]))
        save_centroids(ctx.output("centroids.npy"), centroids)

    def _step_labels(self, ctx: StepContext) -> None:
        from zoo.speech.hubertopic.kmeans import assign, load_centroids, write_labels

        centroids = load_centroids(ctx.path("centroids.npy"))
        units = [assign(self.features(self._audio(i)), centroids) for i in range(len(self.ids))]
        write_labels(ctx.output("units.km"), self.ids, units)

    def _step_lda(self, ctx: StepContext) -> None:
        from zoo.speech.hubertopic.kmeans import read_labels
        from zoo.speech.hubertopic.topics import TopicModel, unit_documents, write_topics

        units = read_labels(ctx.path("units.km"))
        missing = [i for i in self.ids if i not in units]
        if missing:
            raise ConfigError(f"{self.folder / 'units.km'} has no labels for {missing[:5]}; redo the labels step "
                              "(labels.force=true).")
        counts, vocabulary = unit_documents([units[i] for i in self.ids], self.lda["documents"],
                                            int(self.lda["ngram"]))
        model = TopicModel.fit(counts, self.num_topics, doc_topic_prior=self.lda["doc_topic_prior"],
                               topic_word_prior=self.lda["topic_word_prior"], max_iter=int(self.lda["max_iter"]),
                               learning_method=self.lda["learning_method"], batch_size=int(self.lda["batch_size"]),
                               seed=int(self.lda["seed"]), vocabulary=vocabulary)
        model.save(ctx.output("lda"))
        write_topics(ctx.output("topics.txt"), self.ids, model.hard_topics(counts))


@dataclass
class Labels:
    """A finished labels folder: unit labels and topics by utterance id."""

    folder: Path
    manifest: dict
    units: dict
    topics: dict

    @classmethod
    def read(cls, folder) -> "Labels":
        """Read a finished labels folder (``labels.json`` and the files it names); ConfigError if it is none."""
        from zoo.speech.hubertopic.kmeans import read_labels
        from zoo.speech.hubertopic.topics import read_topics

        folder = Path(folder)
        path = folder / LABELS_FILE
        if not path.is_file():
            raise ConfigError(f"{folder} is not a labels folder (no {LABELS_FILE}); make one with `zoo train "
                              "hubertopic` (its labels step) or give the right labels.dir.")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        topics_file = folder / manifest["topics"]
        return cls(folder, manifest, read_labels(folder / manifest["units"]),
                   read_topics(topics_file) if topics_file.is_file() else {})

    @property
    def units_file(self) -> Path:
        """Path of the unit-label file (``units.km``)."""
        return self.folder / self.manifest["units"]

    def check_covers(self, ids: list[str]) -> None:
        """Raise ConfigError naming the first utterance ids that have no unit labels here."""
        missing = [i for i in ids if i not in self.units]
        if missing:
            raise ConfigError(f"{self.units_file} has no labels for {len(missing)} utterance(s) of the manifest, e.g. "
                              f"{missing[:3]}; make labels for this manifest (labels.force=true or another labels.dir).")


def load_teacher(source):
    """The previous iteration's model for layer features (eval mode): a card name, a zoo folder, or an
    upstream HuBERT checkpoint file or folder. Raises :class:`~zoo.errors.ConfigError` for a model
    without a HuBERT encoder."""
    import zoo

    from zoo.speech.hubertopic import builder, loader

    path = Path(str(source)).expanduser()
    if loader.is_upstream_checkpoint(path):
        model = loader.load(str(path), builder.make_config("base"))
    else:
        model = zoo.load(str(source))
    if not hasattr(model, "hubert"):
        raise ConfigError(f"labels.teacher={source!r} is a {type(model).__name__} without a HuBERT encoder.")
    return model.eval()


def _write_json(path: Path, value) -> None:
    from zoo.files import write_json

    write_json(path, value, indent=1, default=str)


__all__ = ["LABEL_DEFAULTS", "LDA_DEFAULTS", "LabelChain", "Labels", "load_teacher", "utterance_id"]
