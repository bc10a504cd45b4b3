"""`zoo eval` for CA-DINO: trials files, built trials, bad input, baselines, DET output."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from zoo.errors import ConfigError, ZooError
from zoo.speech.ca_dino.builder import build, make_config
from zoo.speech.ca_dino.evaluate import evaluate, read_trials


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


def test_trials_file_both_layouts(tmp_path):
    (tmp_path / "t.txt").write_text("1 a b\n0 a c\n\nb c target\nc a nontarget\n")
    assert read_trials(tmp_path / "t.txt") == [("a", "b", 1), ("a", "c", 0), ("b", "c", 1), ("c", "a", 0)]
    (tmp_path / "bad.txt").write_text("a b maybe\n")
    with pytest.raises(ConfigError, match="label"):
        read_trials(tmp_path / "bad.txt")


def test_evaluate_with_trials_and_det(corpus, model, tmp_path):
    (tmp_path / "trials.txt").write_text("1 v0_0 v0_1\n0 v0_0 v1_0\n1 v1_1 v1_2\n0 v2_0 v1_2\n1 v2_0 v2_3\n")
    metrics = evaluate(model, data=str(corpus / "manifest.jsonl"), trials=str(tmp_path / "trials.txt"),
                       output=str(tmp_path / "out" / "metrics.json"))
    assert metrics["num_trials"] == 5 and metrics["num_target"] == 3
    assert 0.0 <= metrics["eer"] <= 100.0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["eer"] == metrics["eer"]
    assert (tmp_path / "out" / "metrics.det.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_utterances_are_listed(corpus, model, tmp_path):
    (tmp_path / "trials.txt").write_text("1 v0_0 nobody_1\n0 ghost v1_0\n")
    with pytest.raises(ZooError, match="2 utterance\\(s\\) not in .*ghost, nobody_1"):
        evaluate(model, data=str(corpus / "manifest.jsonl"), trials=str(tmp_path / "trials.txt"))


def test_built_trials_and_mean_fbank_baseline(corpus, model):
    metrics = evaluate(model, data=str(corpus / "manifest.jsonl"), speakers="voice0,voice1")
    assert metrics["num_utterances"] == 8 and metrics["num_trials"] == 28 and metrics["num_target"] == 12
    # pitch/timbre differ strongly between the synthetic voices: mean log-mel separates them perfectly
    baseline = evaluate(None, data=str(corpus / "manifest.jsonl"), features="mean_fbank", mean="eval")
    assert baseline["eer"] == 0.0 and baseline["num_trials"] == 66
    with pytest.raises(ConfigError, match="unknown evaluation options"):
        evaluate(model, data=str(corpus / "manifest.jsonl"), bogus=1)
    with pytest.raises(ConfigError, match="as_norm=true needs cohort"):
        evaluate(model, data=str(corpus / "manifest.jsonl"), as_norm="true")
    normed = evaluate(model, data=str(corpus / "manifest.jsonl"), cohort=str(corpus / "manifest.jsonl"),
                      mean="cohort", as_norm="true", top_n=5)
    assert 0.0 <= normed["eer"] <= 100.0
