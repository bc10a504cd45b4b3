"""Sylber evaluation (boundaries, syllable rate) and the `zoo segment --plot` picture."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import zoo
from zoo.cli import main
from zoo.speech.sylber.evaluate import boundary_scores, evaluate


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = zoo.load("sylber-tiny", pretrained=False, norm_threshold=0.0)
    model.attach_codebook(torch.randn(7, 64))
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, saved_tiny):
    """Utterances whose reference boundaries are the model's own segment starts (so scores are 1)."""
    model, _ = saved_tiny
    folder = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(1)
    rows = []
    for index in range(4):
        t = np.arange(int(16000 * (0.7 + 0.3 * index))) / 16000
        wave = (0.2 * np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 2.5 * t) > 0)
                + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        sf.write(folder / f"u{index}.wav", wave, 16000, subtype="FLOAT")
        result = model.segment(torch.from_numpy(wave), 16000)
        rows.append({"path": f"u{index}.wav", "boundaries": result.segments[:, 0].tolist(),
                     "syllables": 2 * (index + 1), "text": "la " * 2 * (index + 1)})
    path = folder / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, rows


def test_boundary_scores_by_hand():
    predicted = [np.array([0.10, 0.32, 0.60]), np.array([0.50])]
    reference = [np.array([0.12, 0.40, 0.61, 0.90]), np.array([0.52])]
    scores = boundary_scores(predicted, reference, tolerance=0.05)
    # matched: 0.10~0.12, 0.60~0.61, 0.50~0.52 -> precision 3/4, recall 3/5
    assert scores["precision"] == pytest.approx(0.75)
    assert scores["recall"] == pytest.approx(0.6)
    assert scores["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert scores["os"] == pytest.approx(0.6 / 0.75 - 1)


def test_evaluate_against_own_boundaries(saved_tiny, manifest, tmp_path):
    model, _ = saved_tiny
    path, rows = manifest
    report = evaluate(model, data=str(path), output=str(tmp_path / "m.json"))
    assert report["utterances"] == 4
    assert report["boundary_precision"] == pytest.approx(1.0) and report["boundary_recall"] == pytest.approx(1.0)
    assert report["boundary_f1"] == pytest.approx(1.0) and report["boundary_r_value"] == pytest.approx(1.0)
    seconds = sum(0.7 + 0.3 * i for i in range(4))
    assert report["seconds"] == pytest.approx(seconds, abs=1e-3)
    assert report["syllables_per_second_text"] == pytest.approx(20 / seconds, rel=1e-4)
    total = sum(len(r["boundaries"]) for r in rows)
    assert report["segments_per_second_model"] == pytest.approx(total / seconds, rel=1e-4)
    assert report["syllable_count_ratio"] == pytest.approx(total / 20)
    assert report["tokens_per_second"] == report["segments_per_second"]
    assert json.loads((tmp_path / "m.json").read_text()) == pytest.approx(report)
    with pytest.raises(zoo.errors.ConfigError):
        evaluate(model, data=str(path), bogus=1)


def test_zoo_eval_cli(saved_tiny, manifest, tmp_path, capsys):
    _, folder = saved_tiny
    path, _ = manifest
    out = tmp_path / "metrics.json"
    assert main(["eval", str(folder), "tolerance=0.05", "--data", str(path), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["boundary_f1"] == pytest.approx(1.0)
    assert "boundary_f1" in capsys.readouterr().out


def test_zoo_segment_plot(saved_tiny, manifest, tmp_path, capsys):
    _, folder = saved_tiny
    path, _ = manifest
    audio = path.parent / "u2.wav"
    stereo = tmp_path / "stereo44k.wav"
    wave, _ = sf.read(audio, dtype="float32")
    import librosa

    resampled = librosa.resample(wave, orig_sr=16000, target_sr=44100)
    sf.write(stereo, np.stack([resampled, resampled], 1), 44100)
    png, js = tmp_path / "seg.png", tmp_path / "seg.json"
    assert main(["segment", str(audio), str(stereo), "--model", str(folder), "--plot", str(png), "--json", str(js)]) == 0
    pngs = sorted(tmp_path.glob("seg-*.png"))
    assert [p.name for p in pngs] == ["seg-0.png", "seg-1.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10000 for p in pngs)
    report = json.loads(js.read_text())
    assert len(report) == 2 and report[0]["tokens"] is not None and len(report[0]["tokens"]) == len(report[0]["segments"])
    assert "segments in" in capsys.readouterr().out
    # Bad input is a clean error (exit 2), not a traceback.
    silent = tmp_path / "empty.wav"
    sf.write(silent, np.zeros(0, dtype=np.float32), 16000)
    assert main(["segment", str(silent), "--model", str(folder)]) == 2


def test_zoo_segment_takes_folders_and_manifests_and_gives_no_rate_for_tiny_clips(saved_tiny, manifest, tmp_path,
                                                                                  capsys):
    """A folder or a manifest is a corpus; every file once; a 0.05 s clip has segments but no rate."""
    model, folder = saved_tiny
    path, rows = manifest
    audio_dir = path.parent
    js = tmp_path / "all.json"
    assert main(["segment", str(audio_dir), "--model", str(folder), "--json", str(js), "--workers", "2"]) == 0
    by_folder = json.loads(js.read_text())
    assert [r["path"].rsplit("/", 1)[-1] for r in by_folder] == ["u0.wav", "u1.wav", "u2.wav", "u3.wav"]
    out = capsys.readouterr().out
    assert "4 files, " in out and "segments (" in out
    assert main(["segment", str(path), "--model", str(folder), "--json", str(js), "--batch-size", "3"]) == 0
    by_manifest = json.loads(js.read_text())
    assert [r["segments"] for r in by_manifest] == [r["segments"] for r in by_folder]
    expected = [model.segment(str(audio_dir / f"u{i}.wav")) for i in range(4)]
    assert [r["segments"] for r in by_folder] == [e.segments.tolist() for e in expected]
    capsys.readouterr()
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, 0.001 * np.random.default_rng(0).standard_normal(800).astype(np.float32), 16000)
    assert main(["segment", str(tiny), "--model", str(folder)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.endswith("in 0.05 s (too short for a rate)"), line
    assert main(["segment", str(tmp_path / "nowhere"), "--model", str(folder)]) == 2
