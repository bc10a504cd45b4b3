"""zoo.data: manifests, folders, and the bundled demo corpus."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from zoo.audio import load_audio
from zoo.data import audio_folder, audio_rows, demo_corpus, demo_images, read_jsonl, read_manifest, write_manifest
from zoo.data.make_demo_corpus import count_syllables, count_word_syllables
from zoo.errors import ConfigError


def test_manifest_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    (corpus / "wav").mkdir(parents=True)
    absolute = str(tmp_path / "elsewhere.wav")
    lines = [json.dumps({"path": "wav/a.wav", "speaker": "s1"}), "",
             json.dumps({"path": "./wav/../b.flac", "speaker": "s2", "text": "hi"}),
             json.dumps({"path": absolute})]
    (corpus / "train.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)  # a relative manifest path, read from another working folder
    rows = read_manifest("corpus/train.jsonl")
    assert [r["path"] for r in rows] == [str(corpus / "wav" / "a.wav"), str(corpus / "b.flac"), absolute]
    assert rows[0]["speaker"] == "s1" and rows[1]["text"] == "hi" and len(rows) == 3


@pytest.mark.parametrize("bad_line, needle", [
    ('{"path": "a.wav", oops}', "line 3: not valid JSON"),
    ('["a.wav"]', "line 3: expected a JSON object"),
    ('{"speaker": "s1"}', 'line 3: missing "path"'),
    ('{"path": ""}', 'line 3: missing "path"'),
])
def test_bad_manifest_line_names_file_and_line(tmp_path, bad_line, needle):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a.wav"}\n\n' + bad_line + "\n")
    with pytest.raises(ConfigError) as info:
        read_manifest(manifest)
    assert str(manifest) in str(info.value) and needle in str(info.value)


def test_read_jsonl_reads_rows_without_paths_and_names_bad_lines(tmp_path):
    rows = tmp_path / "labels.jsonl"
    rows.write_text('{"x": [1, 2], "y": 3}\n\n{"x": [0, 0], "y": -1}\n')
    assert read_jsonl(rows) == [{"x": [1, 2], "y": 3}, {"x": [0, 0], "y": -1}]
    rows.write_text('{"x": 1}\n{"x": 2\n')
    with pytest.raises(ConfigError, match=r"labels.jsonl, line 2: not valid JSON"):
        read_jsonl(rows)
    with pytest.raises(ConfigError, match="Data.file '.*absent.jsonl' does not exist"):
        read_jsonl(tmp_path / "absent.jsonl", what="data.file")


def test_missing_manifest_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.jsonl.*does not exist"):
        read_manifest(tmp_path / "nope.jsonl")


def test_write_manifest_round_trips_atomically(tmp_path):
    rows = [{"path": "a.wav", "speaker": "s1", "duration": np.float32(1.5)}, {"path": "sub/b.wav", "text": "é"}]
    target = write_manifest(rows, tmp_path / "out" / "m.jsonl")
    assert target == tmp_path / "out" / "m.jsonl" and os.listdir(tmp_path / "out") == ["m.jsonl"]
    back = read_manifest(target)
    assert back == [{"path": str(tmp_path / "out" / "a.wav"), "speaker": "s1", "duration": 1.5},
                    {"path": str(tmp_path / "out" / "sub" / "b.wav"), "text": "é"}]
    before = target.read_bytes()
    with pytest.raises(ConfigError, match="row 1"):  # a failing write leaves the old file and no temp file
        write_manifest([{"path": "x.wav"}, {"path": "y.wav", "bad": object()}], target)
    assert target.read_bytes() == before and os.listdir(tmp_path / "out") == ["m.jsonl"]
    with pytest.raises(ConfigError, match='row 0 has no "path"'):
        write_manifest([{"speaker": "s"}], target)


def test_audio_folder_lists_audio_recursively(tmp_path):
    (tmp_path / "spk1").mkdir()
    for name in ["spk1/u2.flac", "spk1/u1.wav", "b.OGG", "notes.txt", "spk1/u1.npy", "c.mp3", "d.m4a"]:
        (tmp_path / name).write_bytes(b"")
    rows = audio_folder(tmp_path)
    # mp3 and m4a load (load_audio decodes them) and so are listed: a folder of mp3s used to "list no audio"
    assert [r["id"] for r in rows] == ["b", "c", "d", "spk1/u1", "spk1/u2"]
    assert rows[3]["path"] == str((tmp_path / "spk1" / "u1.wav").resolve())
    with pytest.raises(ConfigError, match="does not exist"):
        audio_folder(tmp_path / "missing")


def test_audio_rows_resolves_demo_folders_and_manifests_naming_the_key(tmp_path):
    demo = audio_rows("demo")
    assert demo == [dict(r, id=r.get("id", Path(r["path"]).stem)) for r in read_manifest(demo_corpus())]
    assert all(Path(r["path"]).is_file() for r in demo[:3])
    (tmp_path / "spk").mkdir()
    (tmp_path / "spk" / "a.wav").write_bytes(b"")
    assert audio_rows(tmp_path) == [{"path": str((tmp_path / "spk" / "a.wav").resolve()), "id": "spk/a"}]
    (tmp_path / "m.jsonl").write_text('{"path": "spk/a.wav", "speaker": "s1"}\n')
    assert audio_rows(tmp_path / "m.jsonl", key="data.eval")[0]["id"] == "a"
    with pytest.raises(ConfigError, match="data.eval is not set"):
        audio_rows(None, key="data.eval")
    with pytest.raises(ConfigError, match="data.train: '.*nope' does not exist"):
        audio_rows(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="data.train: .*empty lists no audio"):
        audio_rows(tmp_path / "empty")
    (tmp_path / "m.jsonl").write_text('{"path": "spk/a.wav"}\n{"path": "spk/gone.wav"}\n')
    with pytest.raises(ConfigError, match=r"data.train: 1 of 2 files in .*m.jsonl do not exist, e.g. '.*gone.wav'"):
        audio_rows(tmp_path / "m.jsonl")
    assert len(audio_rows(tmp_path / "m.jsonl", check_files=False)) == 2


def test_syllable_rule_on_hand_counted_words():
    expected = {"cat": 1, "make": 1, "table": 2, "apples": 2, "tree": 1, "jumped": 1, "wanted": 2,
                "makes": 1, "boxes": 2, "yellow": 2, "station": 2, "eyes": 1, "played": 1, "the": 1}
    assert {word: count_word_syllables(word) for word in expected} == expected
    assert count_syllables("The cat sat on the mat.") == 6
    assert count_syllables("Our garden has yellow flowers.") == 8
    assert count_syllables("Turn off the light, please.") == 5


# ------------------------------------------------------------------ bundled demo corpus
@pytest.fixture(scope="module")
def demo_rows():
    return read_manifest(demo_corpus())


def test_demo_corpus_shape(demo_rows):
    assert demo_corpus() == Path(__file__).resolve().parents[2] / "zoo" / "data" / "demo" / "speech" / "manifest.jsonl"
    assert len(demo_rows) >= 200
    speakers = {row["speaker"] for row in demo_rows}
    assert len(speakers) >= 8
    assert min(sum(row["speaker"] == s for row in demo_rows) for s in speakers) >= 25
    assert len({row["id"] for row in demo_rows}) == len(demo_rows)
    for row in demo_rows:
        assert set(row) == {"id", "path", "speaker", "gender", "text", "duration", "syllables"}
        assert row["gender"] == ("female" if row["speaker"].split("+")[1].startswith("f") else "male")
        assert 0.5 <= row["duration"] <= 3.5
        assert row["syllables"] == count_syllables(row["text"]) > 0
    raw = [json.loads(line) for line in demo_corpus().read_text().splitlines()]
    assert all(not Path(row["path"]).is_absolute() for row in raw)  # relocatable corpus


def test_every_demo_file_is_16k_mono_with_the_listed_duration(demo_rows):
    for row in demo_rows:
        info = sf.info(row["path"])
        assert info.samplerate == 16000 and info.channels == 1, row["path"]
        wave = load_audio(row["path"], 16000)
        assert abs(wave.shape[0] / 16000 - row["duration"]) <= 0.010, row["path"]
        assert 0.1 < wave.abs().max() <= 1.0


def test_demo_data_fits_in_five_megabytes():
    root = demo_corpus().parents[1]
    total = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    assert total <= 5 * 1024 * 1024


def test_demo_images():
    from zoo.image import image_folder, load_image

    folder = demo_images()
    rows = read_manifest(folder / "manifest.jsonl")
    assert 6 <= len(rows) <= 10 and len({row["label"] for row in rows}) >= 3
    by_folder = {row["path"]: row["label"] for row in image_folder(folder)}
    assert by_folder == {row["path"]: row["label"] for row in rows}
    for row in rows:
        image = load_image(row["path"])
        assert image.mode == "RGB" and image.size == (64, 64)
