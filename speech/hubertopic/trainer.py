"""``zoo train hubertopic``: the label chain, then HuBERT pretraining with the topic task.

build_datasets runs (or reuses) the resumable label steps of pipeline.py on rank 0
(features -> k-means -> unit labels -> LDA topics), then every rank reads the labels
folder. Batches follow fairseq's HuBERT data path (``fairseq/data/audio/hubert_dataset.py``): utterances
shorter than ``data.min_sample_size`` are dropped, every utterance of a batch is
randomly cropped to the batch's shortest (at most ``data.max_sample_size``; fairseq's
``pad_audio: false``), and the labels are cut to the same span. Crops start on the
label grid (ours) so labels and audio stay aligned exactly.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.models.hubert_pretrain import LabelLengthError
from zoo.speech.hubertopic.pipeline import LABEL_DEFAULTS, LDA_DEFAULTS, LabelChain, Labels, utterance_id
from zoo.train import Trainer

logger = logging.getLogger("zoo.hubertopic")


def resolve_rows(value) -> tuple[list[dict], str]:
    """Manifest rows (absolute paths) and the corpus name for ``data.train``: a JSONL file, a folder or 'demo'."""
    from zoo.data import audio_folder, demo_corpus, read_manifest

    if value in (None, ""):
        raise ConfigError("data.train is not set: give a JSONL manifest or an audio folder (data.train=PATH), "
                          "or 'demo' for the bundled corpus.")
    path = Path(demo_corpus()) if value == "demo" else Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"data manifest {str(value)!r} does not exist; give a JSONL manifest, an audio folder, "
                          "or 'demo' for the bundled corpus.")
    rows = audio_folder(path) if path.is_dir() else read_manifest(path)
    if not rows:
        raise ConfigError(f"{path} lists no audio.")
    return rows, str(path.resolve())


def expected_labels(num_samples: int, label_rate: int, receptive_field: int, sample_rate: int = 16000) -> int:
    """Labels an utterance of ``num_samples`` samples gets: kaldi MFCC frames at 100 Hz, conv frames at 50 Hz.

    Both are :func:`zoo.audio.num_frames` (a window of 400 samples moved by 160 or by
    ``receptive_field`` / ``sample_rate // label_rate``).
    """
    from zoo.audio import num_frames
    from zoo.speech.hubertopic.features import mfcc_frame_count

    if label_rate == 100:
        return mfcc_frame_count(num_samples)
    return num_frames(num_samples, receptive_field, sample_rate // label_rate)


class HubertopicDataset(torch.utils.data.Dataset):
    """Whole utterances with their unit labels and topic; cropping happens in ``collate``."""

    def __init__(self, rows: list[dict], ids: list[str], labels: Labels, *, normalize: bool, sample_rate: int,
                 receptive_field: int, cache_audio: bool = False):
        self.rows, self.ids, self.labels = rows, ids, labels
        self.normalize, self.sample_rate = normalize, sample_rate
        self.receptive_field = receptive_field
        self.label_rate = int(labels.manifest["label_rate"])
        self.cache = {} if cache_audio else None
        labels.check_covers(ids)
        missing = [i for i in ids if i not in labels.topics]
        if missing:
            raise ConfigError(f"{labels.folder / labels.manifest['topics']} has no topic for {missing[:3]}; "
                              "redo the lda step (labels.force=true).")

    def __len__(self) -> int:
        return len(self.rows)

    def _audio(self, index: int) -> torch.Tensor:
        from zoo.audio import load_audio

        if self.cache is not None and index in self.cache:
            return self.cache[index]
        wave = load_audio(self.rows[index]["path"], self.sample_rate, min_samples=self.receptive_field)
        if self.cache is not None:
            self.cache[index] = wave
        return wave

    def __getitem__(self, index: int) -> dict:
        wave = self._audio(index)
        units = torch.as_tensor(self.labels.units[self.ids[index]], dtype=torch.long)
        expected = expected_labels(wave.shape[0], self.label_rate, self.receptive_field, self.sample_rate)
        if abs(units.numel() - expected) > 2:
            raise LabelLengthError(
                f"{self.labels.units_file}: utterance {self.ids[index]!r} ({self.rows[index]['path']}) has "
                f"{units.numel()} labels but its audio gives {expected} at {self.label_rate} Hz. The labels belong "
                "to other audio or another label rate; make them again (labels.force=true).")
        if self.normalize:  # fairseq normalises the whole utterance before cropping
            wave = torch.nn.functional.layer_norm(wave, wave.shape)
        return {"wav": wave, "units": units, "topic": int(self.labels.topics[self.ids[index]])}


def crop_batch(items: list[dict], max_sample_size: int, sample_rate: int, label_rate: int) -> dict:
    """Crop every utterance to the batch's shortest (at most ``max_sample_size``), labels alike."""
    hop = sample_rate // label_rate
    size = min(min(item["wav"].shape[0] for item in items), int(max_sample_size))
    size -= size % hop
    waves, labels, label_lengths = [], [], []
    for item in items:
        wave, units = item["wav"], item["units"]
        slots = (wave.shape[0] - size) // hop
        start = int(torch.randint(slots + 1, ()).item()) if slots > 0 else 0
        waves.append(wave[start * hop:start * hop + size])
        piece = units[start:start + size // hop]
        labels.append(piece)
        label_lengths.append(piece.numel())
    width = max(label_lengths)
    padded_labels = torch.stack([torch.nn.functional.pad(p, (0, width - p.numel())) for p in labels])
    return {"input_values": torch.stack(waves), "lengths": torch.full((len(items),), size, dtype=torch.long),
            "labels": padded_labels, "label_lengths": torch.tensor(label_lengths, dtype=torch.long),
            "topics": torch.tensor([item["topic"] for item in items], dtype=torch.long)}


def _duration(row: dict) -> float:
    """Seconds of a manifest row: its ``duration`` field, else the audio file's header."""
    if row.get("duration") is not None:
        return float(row["duration"])
    import soundfile

    try:
        return float(soundfile.info(row["path"]).duration)
    except Exception as err:
        from zoo.errors import AudioInputError

        raise AudioInputError(f"{row['path']}: cannot read the audio ({err}).") from err


class HubertopicTrainer(Trainer):
    """``zoo train hubertopic``: the label chain (rank 0), then masked prediction plus the topic task.

    Recipe sections: ``model`` (size, init, overrides), ``data``, ``labels`` and ``lda`` (the
    label chain, :data:`~zoo.speech.hubertopic.pipeline.LABEL_DEFAULTS` /
    :data:`~zoo.speech.hubertopic.pipeline.LDA_DEFAULTS`). Logged per step: loss, loss_masked,
    feature_penalty, accuracy_masked and, with topics, loss_topic and accuracy_topic (fractions).
    """

    config_defaults = {
        "model": {"size": "tiny", "init": None, "overrides": {}},
        "data": {
            "train": "demo",              # JSONL manifest, audio folder, or 'demo' (bundled corpus)
            "eval": None,                 # manifest for the evaluation hook (masked accuracy, topic NMI)
            "min_sample_size": 32000,     # fairseq's min_sample_size: shorter utterances are dropped
            "max_sample_size": 250000,    # fairseq's max_sample_size: crop length cap (15.6 s)
            "cache_audio": False,
            "eval_items": 64,
        },
        "labels": dict(LABEL_DEFAULTS),
        "lda": dict(LDA_DEFAULTS),
    }

    def __init__(self, config: dict):
        super().__init__(config)
        self.chain = None

    # ------------------------------------------------------------------ model
    def model_config(self) -> dict:
        """The model config: size + overrides, with heads sized by the label settings."""
        from zoo.registry import get_family
        from zoo.speech.hubertopic.features import FEATURE_RATES

        section = self.config["model"]
        labels = self.config["labels"]
        family = get_family("hubertopic")
        config = family.make_config(section.get("size") or "tiny", dict(section.get("overrides") or {}),
                                    source="model.overrides")
        config["num_classes"] = [int(labels["num_clusters"])]
        if labels["source"] not in FEATURE_RATES:
            raise ConfigError(f"labels.source must be one of {sorted(FEATURE_RATES)}, got {labels['source']!r}")
        config["label_rate"] = FEATURE_RATES[labels["source"]]
        if self.config["lda"]["num_topics"]:
            config["topic"]["num_topics"] = int(self.config["lda"]["num_topics"])
        if not int(config["topic"]["num_topics"]):
            raise ConfigError("HuBERTopic training needs topics: set lda.num_topics (or model topic.num_topics) > 0.")
        return config

    def build_model(self):
        """A fresh HubertopicModel sized by the label settings; its encoder from ``model.init`` when set."""
        from zoo.registry import get_family

        model = get_family("hubertopic").build(self.model_config())
        init = self.config["model"].get("init")
        if init:
            self._load_init(model, init)
        model.train()
        return model

    @staticmethod
    def _load_init(model, init) -> None:
        """Start from another model's encoder (e.g. hubert-base); the heads stay freshly initialised."""
        import zoo
        from zoo.hub import load_state_dict_strict
        from zoo.speech.hubertopic.loader import is_upstream_checkpoint, load_encoder

        path = Path(str(init)).expanduser()
        if is_upstream_checkpoint(path):
            layout = load_encoder(model, path)
            logger.info("encoder initialised from %s (%s layout)", path, layout)
            return
        source = zoo.load(str(init))
        if not hasattr(source, "hubert"):
            raise ConfigError(f"model.init={init!r} is a {type(source).__name__} without a HuBERT encoder.")
        load_state_dict_strict(model.hubert, source.hubert.state_dict(), f"model.init={init}")
        logger.info("encoder initialised from %s", init)

    # ------------------------------------------------------------------ data
    def labels_folder(self) -> Path:
        """``labels.dir``, or ``<train.output_dir>/labels``."""
        folder = self.config["labels"]["dir"]
        return Path(str(folder)).expanduser() if folder else Path(self.output_dir) / "labels"

    def build_datasets(self):
        """Run (or reuse) the label chain on rank 0, then the training set of utterances long enough to keep."""
        data = self.config["data"]
        rows, corpus = resolve_rows(data["train"])
        model_config = self.model_config()
        self.sample_rate = int(model_config["sample_rate"])
        ids = [utterance_id(row, index) for index, row in enumerate(rows)]
        kept = [index for index, row in enumerate(rows)
                if _duration(row) * self.sample_rate >= int(data["min_sample_size"])]
        if not kept:
            raise ConfigError(f"Every utterance of {corpus} is shorter than data.min_sample_size="
                              f"{data['min_sample_size']} samples; lower it.")
        if len(kept) < len(rows):
            logger.info("dropped %d of %d utterances shorter than %d samples", len(rows) - len(kept), len(rows),
                        data["min_sample_size"])
        folder = self.labels_folder()
        self.chain = LabelChain(rows, folder, labels=self.config["labels"], lda=self.config["lda"],
                                num_topics=model_config["topic"]["num_topics"],
                                sample_rate=model_config["sample_rate"], corpus=corpus)
        if getattr(self, "rank", 0) == 0:
            self.chain.run()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        labels = Labels.read(folder)
        from zoo.models.hubert import HubertConfig

        encoder = HubertConfig.from_dict(model_config["encoder"], source="HuBERTopic config 'encoder'")
        train = HubertopicDataset([rows[i] for i in kept], [ids[i] for i in kept], labels,
                                  normalize=bool(model_config.get("normalize")), sample_rate=self.sample_rate,
                                  receptive_field=encoder.receptive_field,
                                  cache_audio=bool(data["cache_audio"]))
        self.label_rate = int(labels.manifest["label_rate"])
        return train, None

    def collate(self, items: list):
        """:func:`crop_batch` with ``data.max_sample_size``."""
        return crop_batch(items, int(self.config["data"]["max_sample_size"]), self.sample_rate, self.label_rate)

    # ------------------------------------------------------------------ step
    def training_step(self, model, batch) -> dict:
        """HuBERT masked prediction + topic.weight x topic cross-entropy on one cropped batch."""
        out = model(batch["input_values"], batch["lengths"], batch["labels"], batch["label_lengths"],
                    topics=batch["topics"])
        metrics = {"loss": out["loss"], "loss_masked": out["loss_masked"].item(),
                   "feature_penalty": out["feature_penalty"].item(), "accuracy_masked": out["accuracy_masked"]}
        if "loss_topic" in out:
            metrics.update(loss_topic=out["loss_topic"].item(), accuracy_topic=out["accuracy_topic"])
        return metrics

    def evaluate(self, model) -> dict:
        """:func:`zoo.speech.hubertopic.evaluate.evaluate` on ``data.eval`` with this run's labels (numbers only)."""
        data = self.config["data"]
        if not data["eval"]:
            return {}
        from zoo.speech.hubertopic.evaluate import evaluate as evaluate_model

        metrics = evaluate_model(model, data=data["eval"], labels=str(self.labels_folder()),
                                 max_items=data["eval_items"])
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
