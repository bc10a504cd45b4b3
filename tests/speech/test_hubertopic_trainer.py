"""HuBERTopic training: the resumable label chain, label/audio checks, crops, and the demo chain end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from zoo.data import demo_corpus, read_manifest
from zoo.errors import AudioInputError, ConfigError
from zoo.models.hubert_pretrain import LabelLengthError
from zoo.speech.hubertopic.kmeans import read_labels, write_labels
from zoo.speech.hubertopic.pipeline import LabelChain, Labels
from zoo.speech.hubertopic.trainer import crop_batch
from zoo.train import load_recipe, run

RECIPES = Path(__file__).resolve().parents[2] / "speech" / "hubertopic" / "recipes"


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """24 clips of the bundled corpus, 8 of each of 3 voices, as a manifest with absolute paths."""
    rows = read_manifest(demo_corpus())
    picked = []
    for voice in sorted({r["speaker"] for r in rows})[:3]:
        picked += [r for r in rows if r["speaker"] == voice][:8]
    folder = tmp_path_factory.mktemp("subset")
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked), encoding="utf-8")
    return path


def _chain(rows, folder, **labels) -> LabelChain:
    settings = {"num_clusters": 12, "percent": 0.5, "kmeans": {"n_init": 2}, **labels}
    return LabelChain(rows, folder, labels=settings, lda={"num_topics": 3, "max_iter": 5}, corpus="subset")


def test_label_chain_writes_every_step_once_and_refuses_other_settings(subset, tmp_path, caplog):
    rows = read_manifest(subset)
    manifest = _chain(rows, tmp_path / "labels").run()
    assert manifest["label_rate"] == 100 and manifest["num_clusters"] == 12 and manifest["num_topics"] == 3
    labels = Labels.read(tmp_path / "labels")
    assert list(labels.units) == [r["id"] for r in rows]
    for row in rows:  # 100 Hz MFCC frames: 1 + (samples - 400) // 160
        samples = sf.info(row["path"]).frames
        assert len(labels.units[row["id"]]) == 1 + (samples - 400) // 160
        assert 0 <= labels.units[row["id"]].min() and labels.units[row["id"]].max() < 12
    assert set(labels.topics.values()) <= {0, 1, 2}
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "labels").iterdir() if p.is_file()}
    caplog.set_level("INFO", logger="zoo.hubertopic")
    _chain(rows, tmp_path / "labels").run()
    assert "lda already done" in caplog.text
    for name in ("kmeans_sample.npy", "centroids.npy", "units.km", "topics.txt"):
        assert (tmp_path / "labels" / name).stat().st_mtime_ns == stamps[name], name
    with pytest.raises(ConfigError, match=r"changed: \['num_clusters'\].*labels.force=true"):
        _chain(rows, tmp_path / "labels", num_clusters=16).run()
    _chain(rows, tmp_path / "labels", num_clusters=16, force=True).run()
    assert max(int(u.max()) for u in read_labels(tmp_path / "labels" / "units.km").values()) < 16
    assert json.loads((tmp_path / "labels" / "labels.json").read_text())["num_clusters"] == 16


def test_unreadable_audio_is_named(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioInputError, match="broken.wav"):
        _chain([{"path": str(bad), "id": "x"}], tmp_path / "labels", percent=1.0).run()


def test_crop_keeps_audio_and_labels_aligned():
    torch.manual_seed(0)
    hop = 160
    items = [{"wav": torch.arange(n * hop, dtype=torch.float32), "units": torch.arange(n), "topic": t}
             for n, t in ((300, 1), (200, 2), (250, 0))]
    batch = crop_batch(items, 250000, 16000, 100)
    assert batch["input_values"].shape == (3, 200 * hop) and batch["lengths"].tolist() == [32000] * 3
    for row in range(3):
        start = int(batch["input_values"][row, 0]) // hop
        assert batch["input_values"][row, 0] == start * hop  # crops start on the label grid
        assert batch["labels"][row, :batch["label_lengths"][row]].tolist() == list(range(start, start + 200))
    assert batch["topics"].tolist() == [1, 2, 0]
    capped = crop_batch(items, 100 * hop + 37, 16000, 100)
    assert capped["input_values"].shape == (3, 100 * hop) and capped["label_lengths"].tolist() == [100] * 3


def _demo_config(subset: Path, output: Path, **overrides):
    values = {"data.train": str(subset), "data.eval": str(subset), "data.eval_items": 24,
              "data.min_sample_size": 8000, "labels.num_clusters": 20, "labels.kmeans": {"n_init": 2},
              "lda.num_topics": 3, "train.max_steps": 40, "train.batch_size": 4, "train.log_every": 5,
              "train.ckpt_every": 20, "train.eval_every": 40, "train.output_dir": str(output),
              "train.progress": False, "train.tensorboard": False, "schedule.warmup_steps": 5, **overrides}
    return load_recipe(RECIPES / "demo.yaml", [f"{k}={json.dumps(v)}" for k, v in values.items()])


def test_demo_chain_trains_with_falling_loss_and_both_losses(subset, tmp_path):
    final = run(_demo_config(subset, tmp_path / "run"))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss_topic" in r]
    assert len(steps) >= 6
    for record in steps:
        assert math.isfinite(record["loss"]) and math.isfinite(record["loss_masked"])
        assert math.isfinite(record["loss_topic"]) and record["loss_topic"] > 0
    assert steps[-1]["loss"] < 0.8 * steps[0]["loss"], [r["loss"] for r in steps]
    # The NMI values are those of the labels the run wrote and of the final model's own predictions,
    # recomputed here with scikit-learn directly (arithmetic normalisation).
    from sklearn.metrics import normalized_mutual_info_score as nmi

    import zoo
    from zoo.speech.hubertopic.topics import read_topics

    rows = read_manifest(subset)
    speakers = [r["speaker"] for r in rows]
    lda = read_topics(tmp_path / "run" / "labels" / "topics.txt")
    lda_nmi = nmi(speakers, [lda[r["id"]] for r in rows])
    evaluation = [r["eval"] for r in log if "eval" in r]
    assert evaluation and evaluation[-1]["nmi_lda_topic_speaker"] == pytest.approx(lda_nmi, abs=1e-12), log[-1]
    model = zoo.load(str(final))
    assert model.config["num_classes"] == [20] and model.num_topics == 3 and model.labels_per_frame == 2
    from zoo.speech.hubertopic.evaluate import evaluate

    report = evaluate(model, data=str(subset), labels=str(tmp_path / "run" / "labels"), output=tmp_path / "e.json")
    assert report["utterances"] == 24 and report["speakers"] == 3
    predicted = model.predict_topic([r["path"] for r in rows]).argmax(-1).tolist()
    assert report["nmi_lda_topic_speaker"] == pytest.approx(lda_nmi, abs=1e-12)
    assert report["nmi_predicted_topic_speaker"] == pytest.approx(nmi(speakers, predicted), abs=1e-12)
    assert report["topic_accuracy"] == np.mean(np.array(predicted) == np.array([lda[r["id"]] for r in rows]))
    assert report["accuracy_masked"] > 1 / 20  # better than chance on 20 units
    assert json.loads((tmp_path / "e.json").read_text()) == json.loads(json.dumps(report))


def test_normalized_mutual_info_by_hand():
    from zoo.speech.hubertopic.topics import normalized_mutual_info

    assert normalized_mutual_info([0, 0, 1, 1], ["x", "x", "y", "y"]) == pytest.approx(1.0)  # a relabelling
    assert normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-15)  # independent
    # joint (0,0): 1/2, (0,1): 1/4, (1,1): 1/4 -> MI / mean(H(a), H(b)), in nats
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_a, h_b = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), math.log(2)
    assert normalized_mutual_info([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(mi / ((h_a + h_b) / 2), abs=1e-12)
    assert normalized_mutual_info([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(0.34371, abs=1e-5)


def test_evaluate_topic_nmi_on_hand_made_labels(subset, tmp_path):
    """A labels folder whose topic is the voice gives NMI 1 with the voice; one that splits every voice in
    half the same way gives NMI 0."""
    import zoo
    from zoo.speech.hubertopic.evaluate import evaluate
    from zoo.speech.hubertopic.topics import write_topics

    rows = read_manifest(subset)
    _chain(rows, tmp_path / "labels").run()
    voices = sorted({r["speaker"] for r in rows})
    model = zoo.load("hubertopic-tiny", pretrained=False, num_classes=[12])
    write_topics(tmp_path / "labels" / "topics.txt", [r["id"] for r in rows], [voices.index(r["speaker"]) for r in rows])
    report = evaluate(model, data=str(subset), labels=str(tmp_path / "labels"))
    assert report["nmi_lda_topic_speaker"] == pytest.approx(1.0) and report["lda_topics_used"] == 3
    halves = [index % 2 for index in range(len(rows))]  # 8 clips per voice: 4 in each topic
    write_topics(tmp_path / "labels" / "topics.txt", [r["id"] for r in rows], halves)
    report = evaluate(model, data=str(subset), labels=str(tmp_path / "labels"))
    assert report["nmi_lda_topic_speaker"] == pytest.approx(0.0, abs=1e-12) and report["lda_topics_used"] == 2


def test_labels_that_do_not_fit_the_audio_are_an_error_naming_the_file(subset, tmp_path):
    rows = read_manifest(subset)
    _chain(rows, tmp_path / "labels").run()
    units_file = tmp_path / "labels" / "units.km"
    units = read_labels(units_file)
    first = rows[0]["id"]
    units[first] = units[first][: len(units[first]) // 2]  # labels of a shorter clip
    write_labels(units_file, list(units), list(units.values()))
    from zoo.speech.hubertopic.trainer import HubertopicDataset

    dataset = HubertopicDataset(rows, [r["id"] for r in rows], Labels.read(tmp_path / "labels"), normalize=False,
                                sample_rate=16000, receptive_field=400)
    assert dataset[1]["units"].numel() > 0
    with pytest.raises(LabelLengthError, match=rf"units.km: utterance '{first}'"):
        dataset[0]
    del units[rows[2]["id"]]
    write_labels(units_file, list(units), list(units.values()))
    with pytest.raises(ConfigError, match="has no labels for 1 utterance"):
        HubertopicDataset(rows, [r["id"] for r in rows], Labels.read(tmp_path / "labels"), normalize=False,
                          sample_rate=16000, receptive_field=400)
    assert np.all(read_labels(units_file)[rows[1]["id"]] >= 0)


def test_a_run_stopped_while_making_labels_starts_again_and_reuses_them(subset, tmp_path, monkeypatch, caplog):
    from zoo.speech.hubertopic import trainer as trainer_module

    def stop(self):
        raise KeyboardInterrupt("stopped after the label steps")

    monkeypatch.setattr(trainer_module.HubertopicDataset, "__len__", stop)
    config = _demo_config(subset, tmp_path / "run", **{"train.max_steps": 4, "data.eval": None})
    with pytest.raises(KeyboardInterrupt):
        run(config)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "preparing"
    assert (tmp_path / "run" / "labels" / "topics.txt").is_file()
    monkeypatch.undo()
    caplog.set_level("INFO", logger="zoo.hubertopic")
    final = run(config)
    assert final.is_dir() and "lda already done" in caplog.text


def test_base_recipe_is_paper_scale_iteration_two():
    from zoo.speech.hubertopic.trainer import HubertopicTrainer

    config = load_recipe(RECIPES / "base.yaml", ["data.train=ls960.jsonl", "labels.teacher=hubert-base"])
    assert config["optim"] == {**config["optim"], "name": "adamw", "lr": 5.0e-4, "betas": [0.9, 0.98], "eps": 1.0e-6,
                               "weight_decay": 0.01}
    assert config["schedule"]["name"] == "polynomial" and config["schedule"]["warmup_steps"] == 32000
    assert config["train"]["max_steps"] == 400000
    model_config = HubertopicTrainer(config).model_config()
    assert model_config["num_classes"] == [500] and model_config["label_rate"] == 50
    assert model_config["encoder"]["num_hidden_layers"] == 12 and model_config["topic"]["num_topics"] == 100
    assert model_config["pretrain"]["mask_prob"] == 0.8 and model_config["pretrain"]["feature_grad_mult"] == 0.1
    with pytest.raises(ConfigError, match="labels.teacher"):
        LabelChain([], "unused", labels={"source": "layer"})


def test_iteration_two_labels_come_from_a_teacher_layer_at_50_hz(subset, tmp_path):
    import zoo

    torch.manual_seed(0)
    teacher = zoo.load("hubertopic-tiny", pretrained=False)
    folder = teacher.save_pretrained(tmp_path / "teacher")
    rows = read_manifest(subset)[:6]
    chain = LabelChain(rows, tmp_path / "labels", labels={"source": "layer", "teacher": str(folder), "layer": 1,
                                                          "num_clusters": 8, "percent": 1.0, "kmeans": {"n_init": 2}},
                       lda={"num_topics": 2, "max_iter": 5}, corpus="subset")
    assert chain.run()["label_rate"] == 50
    units = Labels.read(tmp_path / "labels").units
    for row in rows:
        samples = sf.info(row["path"]).frames
        assert len(units[row["id"]]) == (samples - 400) // 320 + 1
    # The first utterance's units are the nearest centroids of the teacher's layer-1 features.
    from zoo.audio import load_audio
    from zoo.speech.hubertopic.features import layer_features
    from zoo.speech.hubertopic.kmeans import assign, load_centroids

    features = layer_features(zoo.load(str(folder)).hubert, load_audio(rows[0]["path"]), 1, 16000)
    assert np.array_equal(assign(features, load_centroids(tmp_path / "labels" / "centroids.npy")), units[rows[0]["id"]])
