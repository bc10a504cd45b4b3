"""`zoo eval` for CA-DINO: trials files, built trials, exact EERs on hand-made embeddings, baselines, DET output."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import zoo.speech.ca_dino.evaluate as evaluation
from zoo.errors import ConfigError, ZooError
from zoo.speech.ca_dino.builder import build, make_config
from zoo.speech.ca_dino.evaluate import evaluate, read_trials
from zoo.speech.ca_dino.scoring import as_norm, cosine_scores, eer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three synthetic 'voices' (different pitch and timbre), 4 clips each, written as 16 kHz wavs."""
    root = tmp_path_factory.mktemp("voices")
    rng = np.random.default_rng(0)
    rows = []
    for v, f0 in enumerate([110, 170, 240]):
        for u in range(4):
            t = np.arange(int(16000 * (0.8 + 0.4 * rng.random()))) / 16000
            wave = sum(np.sin(2 * np.pi * k * f0 * t) * (0.6 + 0.4 * np.cos(v * k)) / k for k in range(1, 6))
            wave = (0.1 * wave / np.abs(wave).max() + 0.002 * rng.normal(size=t.size)).astype(np.float32)
            sf.write(root / f"v{v}_{u}.wav", wave, 16000)
            rows.append({"path": f"v{v}_{u}.wav", "speaker": f"voice{v}", "id": f"v{v}_{u}"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build(make_config("tiny")).eval()


# utterance -> angle in degrees of a 2-D embedding [cos, sin]: cosine scores are cos(angle difference)
ANGLES = {"v0_0": 0, "v0_1": 20, "v1_0": 50, "v1_1": 100, "v1_2": 170, "v2_0": 120, "v2_3": 190}
TRIALS = "1 v0_0 v0_1\n0 v0_0 v1_0\n1 v1_1 v1_2\n0 v2_0 v1_2\n1 v2_0 v2_3\n"


@pytest.fixture
def hand_made_embeddings(monkeypatch):
    """Replace the model's embeddings by the 2-D unit vectors of ANGLES (fbank baselines: their negatives)."""
    def embed_rows(model, rows, *, features="model", batch_size=32):
        sign = 1.0 if features == "model" else -1.0
        return torch.tensor([[sign * math.cos(math.radians(ANGLES[r["id"]])),
                              sign * math.sin(math.radians(ANGLES[r["id"]]))] for r in rows])

    monkeypatch.setattr(evaluation, "embed_rows", embed_rows)


def test_trials_file_both_layouts(tmp_path):
    (tmp_path / "t.txt").write_text("1 a b\n0 a c\n\nb c target\nc a nontarget\n")
    assert read_trials(tmp_path / "t.txt") == [("a", "b", 1), ("a", "c", 0), ("b", "c", 1), ("c", "a", 0)]
    (tmp_path / "bad.txt").write_text("a b maybe\n")
    with pytest.raises(ConfigError, match="label"):
        read_trials(tmp_path / "bad.txt")


def test_exact_eer_of_hand_made_embeddings(corpus, tmp_path, hand_made_embeddings):
    (tmp_path / "trials.txt").write_text(TRIALS)
    metrics = evaluate(None, data=str(corpus / "manifest.jsonl"), trials=str(tmp_path / "trials.txt"),
                       output=str(tmp_path / "out" / "metrics.json"), baselines=True)
    # target scores cos 20, cos 70, cos 70; non-target cos 50, cos 50. Rejecting <= cos 70: FRR 2/3, FAR 1
    # (|diff| 1/3, the smallest, first) -> (2/3 + 1) / 2.
    assert metrics["eer_percent"] == 100 * (5 / 6)
    assert metrics["num_trials"] == 5 and metrics["num_target"] == 3 and metrics["num_utterances"] == 7
    # a negated embedding has the same cosines: the baselines score identically on the same trials
    assert metrics["mean_fbank_eer_percent"] == metrics["mean_std_fbank_eer_percent"] == 100 * (5 / 6)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["eer_percent"] == metrics["eer_percent"]
    assert (tmp_path / "out" / "metrics.det.png").read_bytes()[:4] == b"\x89PNG"


def test_mean_subtraction(corpus, tmp_path, hand_made_embeddings):
    (tmp_path / "trials.txt").write_text(TRIALS)
    vectors = evaluation.embed_rows(None, [{"id": k} for k in ANGLES])
    index = {k: i for i, k in enumerate(ANGLES)}
    pairs = [line.split() for line in TRIALS.splitlines()]
    labels = [int(p[0]) for p in pairs]
    enroll = vectors[[index[p[1]] for p in pairs]]
    test = vectors[[index[p[2]] for p in pairs]]
    # mean=eval subtracts the mean embedding of the 7 evaluated utterances
    mean = vectors.mean(0)
    got = evaluate(None, data=str(corpus / "manifest.jsonl"), trials=str(tmp_path / "trials.txt"), mean="eval")
    assert got["eer_percent"] == 100 * eer(cosine_scores(enroll, test, mean=mean).numpy(), labels)
    assert got["eer_percent"] != metrics_without_mean(corpus, tmp_path)


def metrics_without_mean(corpus, tmp_path):
    return evaluate(None, data=str(corpus / "manifest.jsonl"), trials=str(tmp_path / "trials.txt"))["eer_percent"]


def test_unknown_utterances_are_listed(corpus, model, tmp_path):
    (tmp_path / "trials.txt").write_text("1 v0_0 nobody_1\n0 ghost v1_0\n")
    with pytest.raises(ZooError, match="2 utterance\\(s\\) not in .*ghost, nobody_1"):
        evaluate(model, data=str(corpus / "manifest.jsonl"), trials=str(tmp_path / "trials.txt"))


def test_built_trials_baselines_and_bad_options(corpus, model):
    metrics = evaluate(model, data=str(corpus / "manifest.jsonl"), speakers="voice0,voice1", baselines=True)
    assert metrics["num_utterances"] == 8 and metrics["num_trials"] == 28 and metrics["num_target"] == 12
    # pitch/timbre differ strongly between the synthetic voices: the log-mel statistics separate them perfectly
    assert metrics["mean_fbank_eer_percent"] == 0.0 and metrics["mean_std_fbank_eer_percent"] == 0.0
    baseline = evaluate(None, data=str(corpus / "manifest.jsonl"), features="mean_fbank", mean="eval")
    assert baseline["eer_percent"] == 0.0 and baseline["num_trials"] == 66
    with pytest.raises(ConfigError, match="unknown evaluation options"):
        evaluate(model, data=str(corpus / "manifest.jsonl"), bogus=1)
    with pytest.raises(ConfigError, match="as_norm=true needs cohort"):
        evaluate(model, data=str(corpus / "manifest.jsonl"), as_norm="true")
    with pytest.raises(ConfigError, match="features must be one of"):
        evaluate(model, data=str(corpus / "manifest.jsonl"), features="mfcc")
    with pytest.raises(ConfigError, match="mean must be"):
        evaluate(model, data=str(corpus / "manifest.jsonl"), mean="global")


def test_as_norm_matches_the_formula(corpus, model):
    rows = evaluation.read_rows(corpus / "manifest.jsonl")
    normed = evaluate(model, data=str(corpus / "manifest.jsonl"), cohort=str(corpus / "manifest.jsonl"),
                      mean="cohort", as_norm="true", top_n=5)
    embeddings = evaluation.embed_rows(model, rows)
    trials = evaluation.make_trials(rows)
    index = {r["id"]: i for i, r in enumerate(rows)}
    enroll = embeddings[[index[a] for a, _, _ in trials]]
    test = embeddings[[index[b] for _, b, _ in trials]]
    mean = embeddings.mean(0)
    scores = as_norm(cosine_scores(enroll, test, mean=mean), enroll, test, embeddings, top_n=5, mean=mean)
    assert normed["eer_percent"] == 100 * eer(scores.numpy(), [label for _, _, label in trials])
