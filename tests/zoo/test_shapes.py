"""zoo.data.shapes: rendering, captions, tags, prompts, the generator, its CLI and the bundled set."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.data.shapes import (
    CATEGORIES, COLORS, CONCEPTS, SHAPES, caption_for, dark_shade, demo_manifest, generate, load_masks,
    parse_caption, read_manifest, render, sample_prompt, sample_scene, tags_for,
)
from zoo.errors import ConfigError, OutputExistsError


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_square_covers_exactly_the_pixels_whose_centres_are_inside():
    spec = {"background": {"color": "white"},
            "objects": [{"shape": "square", "color": "red", "size": 0.5, "center": [0.5, 0.5]}]}
    image, (mask,) = render(spec, 16)
    pixels = np.asarray(image)
    # pixel i covers centre (i + 0.5) / 16; inside when |(i + 0.5) / 16 - 0.5| < 0.25, i.e. i = 4..11
    expected = np.zeros((16, 16), bool)
    expected[4:12, 4:12] = True
    assert (mask == expected).all()
    assert (pixels[mask] == COLORS["red"]).all() and (pixels[~mask] == (245, 245, 245)).all()


def test_shapes_textures_and_marks_draw_what_they_say():
    def one(**obj):
        spec = {"objects": [{"size": 0.8, "center": [0.5, 0.5], "color": "blue", **obj}]}
        image, (mask,) = render(spec, 40)
        return np.asarray(image), mask

    _, ring = one(shape="ring")
    assert not ring[20, 20] and ring[20, 4]  # a hole in the middle, the band at radius ~0.4
    _, circle = one(shape="circle")
    assert circle[20, 20] and circle.sum() > ring.sum()
    _, triangle = one(shape="triangle")
    assert triangle[35, 6] and not triangle[6, 6] and triangle[6, 20]  # apex up
    _, star = one(shape="star")
    _, cross = one(shape="cross")
    assert cross[20, 5] and not cross[5, 5]
    assert star.sum() < circle.sum() and 0 < star[5:10].sum() < star[20:25].sum()
    pixels, mask = one(shape="square", texture="striped")
    dark = (pixels == dark_shade("blue")).all(-1)
    rows = dark[mask.any(1)]
    assert all(row[mask[mask.any(1)][i]].all() or not row[mask[mask.any(1)][i]].any() for i, row in enumerate(rows))
    assert 0.3 < dark[mask].mean() < 0.7  # horizontal stripes, half dark
    pixels, mask = one(shape="square", mark="dot")
    assert (pixels[20, 20] == dark_shade("blue")).all() and (pixels[8, 8] == COLORS["blue"]).all()
    pixels, mask = one(shape="square", mark="outline")
    assert (pixels[20, 4] == dark_shade("blue")).all() and (pixels[20, 20] == COLORS["blue"]).all()


def test_a_later_object_hides_what_it_covers():
    spec = {"objects": [{"shape": "square", "color": "red", "size": 0.6, "center": [0.4, 0.5]},
                        {"shape": "square", "color": "green", "size": 0.6, "center": [0.6, 0.5]}]}
    _, (first, second) = render(spec, 20)
    assert not (first & second).any() and second.sum() > first.sum()


def test_captions_and_tags_follow_the_objects():
    red = {"shape": "circle", "color": "red", "texture": "plain", "size": 0.3, "center": [0.2, 0.5]}
    blue = {"shape": "square", "color": "blue", "texture": "plain", "size": 0.3, "center": [0.7, 0.55]}
    caption, relation = caption_for([red, blue])
    assert caption == "a red circle to the left of a blue square" and relation == "left of"
    assert tags_for([red, blue], relation) == ["color", "shape", "spatial"]
    assert caption_for([blue, red])[0] == "a blue square to the right of a red circle"
    above = dict(blue, center=[0.25, 0.9])
    assert caption_for([red, above])[0] == "a red circle above a blue square"
    small = dict(blue, size=0.15)
    caption, relation = caption_for([red, small])
    assert caption == "a red circle bigger than a blue square" and tags_for([red, small], relation) == \
        ["color", "non-spatial", "shape"]
    striped = dict(red, texture="striped", center=[0.5, 0.2])
    objects = [red, dict(red, center=[0.8, 0.8]), striped, dict(blue, shape="cross")]
    caption, relation = caption_for(objects)
    assert caption == "two red circles, a striped red circle and a blue cross" and relation is None
    assert tags_for(objects, relation) == ["color", "numeracy", "shape", "texture"]
    look = CONCEPTS["bo"]
    concept = {"shape": look.shape, "color": look.color, "texture": look.texture, "mark": look.mark,
               "size": 0.3, "center": [0.2, 0.2]}
    assert caption_for([concept])[0] == "a striped purple star with a dot"
    assert caption_for([concept, blue], {0: "<bo>"})[0] == "<bo> to the left of a blue square"


def test_parse_caption_reads_back_what_captions_and_prompts_say():
    spec = parse_caption("Two striped red circles, a blue square and an orange star.")
    assert [(o["shape"], o["color"], o["texture"]) for o in spec["objects"]] == [
        ("circle", "red", "striped"), ("circle", "red", "striped"), ("square", "blue", "plain"),
        ("star", "orange", "plain")]
    spec = parse_caption("a green ring on top of a cross")
    assert spec["relations"] == [{"subject": 0, "relation": "above", "object": 1}]
    assert spec["objects"][1] == {"shape": "cross", "color": None, "texture": None, "mark": None}
    spec = parse_caption("<kiki> larger than a red triangle")
    assert spec["objects"][0]["concept"] == "kiki" and spec["relations"][0]["relation"] == "bigger than"
    for bad, needle in [("a red elephant", "'elephant' is not a shape"), ("a grey circle", "never grey"),
                        ("two circles left of a square", "two single objects"), ("<nobody>", "Unknown concept")]:
        with pytest.raises(ConfigError, match=needle):
            parse_caption(bad)


@pytest.mark.parametrize("category", CATEGORIES)
def test_sample_prompt_gives_text_and_spec_that_agree(category):
    text, spec = sample_prompt(category, 7)
    assert (text, spec) == sample_prompt(category, 7)  # an integer seed is a fixed prompt
    assert spec["category"] == category
    parsed = parse_caption(text)
    keys = ("shape", "color", "texture")
    assert sorted(tuple(o[k] for k in keys) for o in parsed["objects"]) == \
        sorted(tuple(o[k] for k in keys) for o in spec["objects"])
    assert parsed["relations"] == spec["relations"]
    kinds = {"spatial": {"left of", "right of", "above", "below"}, "non-spatial": {"bigger than", "smaller than"}}
    if category in kinds:
        assert spec["relations"][0]["relation"] in kinds[category]
    if category == "numeracy":
        assert 2 <= len(spec["objects"]) <= 4
    image, masks = render(spec, 64)
    assert image.size == (64, 64) and len(masks) == len(spec["objects"]) and all(m.any() for m in masks)
    with pytest.raises(ConfigError, match="category"):
        sample_prompt("3d-spatial", 0)


def test_bad_specs_name_the_field():
    with pytest.raises(ConfigError, match="spec object 0: shape 'blob'"):
        render({"objects": [{"shape": "blob", "color": "red", "size": 0.3, "center": [0.5, 0.5]}]}, 32)
    with pytest.raises(ConfigError, match="spec object 1: color 'teal'"):
        render({"objects": [{"shape": "circle", "color": "red"}, {"shape": "circle", "color": "teal"}]}, 32)
    with pytest.raises(ConfigError, match="relation 0: subject"):
        render({"objects": [{"shape": "circle"}], "relations": [{"subject": 3, "relation": "above", "object": 0}]})
    with pytest.raises(ConfigError, match="Could not place 9 objects"):
        render({"objects": [{"shape": "circle", "size": 0.45}] * 9}, 32)


def test_generate_is_deterministic_and_rerenders_exactly(tmp_path):
    first = generate(tmp_path / "a", 12, size=48, seed=5, concept_images=2)
    generate(tmp_path / "b", 12, size=48, seed=5, concept_images=2)
    assert first == tmp_path / "a" / "manifest.jsonl"
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # same seed, identical bytes
    generate(tmp_path / "c", 12, size=48, seed=6, concept_images=2)
    assert _files(tmp_path / "c") != _files(tmp_path / "a")
    scenes = read_manifest(first)
    assert len(scenes) == 12 and json.loads((tmp_path / "a" / "info.json").read_text())["seed"] == 5
    # min(concept_images=2, 12 // (2 * 5 concepts)) = 1 scene per concept
    assert sorted(s.concept for s in scenes if s.concept) == sorted(CONCEPTS)
    for scene in scenes:
        image, masks = render(scene)
        assert (np.asarray(image) == np.asarray(Image.open(scene.image))).all()
        stored = load_masks(scene)
        for obj, mask, saved in zip(scene.objects, masks, stored):
            assert (mask == saved).all()
            ys, xs = np.nonzero(saved)
            assert obj.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 1 <= len(scene.objects) <= 4 and scene.caption
        if scene.concept:
            assert scene.objects[0].concept == scene.concept and f"<{scene.concept}>" in scene.concept_caption


def test_crowded_scenes_shrink_until_they_fit():
    # seed 0, scene 512 draws four objects too large to place at their first sizes
    spec = sample_scene(np.random.default_rng([0, 512]))
    objects = spec["objects"]
    assert len(objects) == 4 and max(o["size"] for o in objects) < 0.3
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            reach = (a["size"] + b["size"]) / 2 + 0.05
            assert abs(a["center"][0] - b["center"][0]) >= reach or abs(a["center"][1] - b["center"][1]) >= reach


def test_generate_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="overwrite"):
        generate(out, 3)
    assert (out / "mine.txt").read_text() == "keep me"
    generate(out, 3, overwrite=True)
    assert not (out / "mine.txt").exists() and len(read_manifest(out / "manifest.jsonl")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    with pytest.raises(ConfigError, match="n must be"):
        generate(tmp_path / "x", 0)
    with pytest.raises(ConfigError, match="unknown concept 'zz'"):
        generate(tmp_path / "x", 3, concepts=["zz"])


def test_cli_writes_a_corpus_and_refuses_to_overwrite(tmp_path, capsys):
    from zoo.data.shapes.__main__ import main

    out = tmp_path / "corpus"
    command = [sys.executable, "-m", "zoo.data.shapes", "--n", "4", "--size", "32", "--seed", "3", str(out)]
    done = subprocess.run(command, capture_output=True, text=True)  # the real module entry point
    assert done.returncode == 0, done.stderr
    assert "wrote 4 scenes (32 px)" in done.stdout and len(read_manifest(out / "manifest.jsonl")) == 4
    assert main(command[3:]) == 2
    error = capsys.readouterr().err
    assert "not empty" in error and "--overwrite" in error
    assert main(command[3:] + ["--overwrite"]) == 0


def test_sizes_past_the_limit_are_refused_before_any_memory_is_asked_for(tmp_path, capsys):
    """`--size 100000` used to reach numpy and die with a 75 GiB _ArrayMemoryError traceback."""
    from zoo.data.shapes.__main__ import main

    assert main(["--n", "2", "--size", "100000", str(tmp_path / "big")]) == 2
    assert "size must be an integer from 16 to 4096 pixels, got 100000" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
    scene = read_manifest(demo_manifest("train"))[0]
    with pytest.raises(ConfigError, match="from 8 to 4096 pixels, got 100000"):
        render(scene, 100000)
    assert render(scene, 8)[0].size == (8, 8)


def test_read_manifest_names_the_scene_and_field(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "s1", "path": "a.png", "objects": []}) + "\n")
    with pytest.raises(ConfigError, match=r"scene 1 \(s1\): missing field 'caption'"):
        read_manifest(manifest)


def test_bundled_set():
    train, heldout = read_manifest(demo_manifest("train")), read_manifest(demo_manifest("heldout"))
    assert len(train) == 300 and len(heldout) == 100
    for scenes, per_concept in ((train, 10), (heldout, 4)):
        counts = {c: sum(s.concept == c for s in scenes) for c in CONCEPTS}
        assert counts == {c: per_concept for c in CONCEPTS}
        assert all(s.size == 64 and set(s.tags) <= set(CATEGORIES) for s in scenes)
    assert {o.shape for s in train for o in s.objects} == set(SHAPES)
    assert {o.color for s in train for o in s.objects} == set(COLORS)
    assert {t for s in train for t in s.tags} == set(CATEGORIES)
    assert Path(train[0].image).is_file() and Image.open(train[0].image).size == (64, 64)
    train_pixels = {Image.open(s.image).tobytes() for s in train}
    assert not any(Image.open(s.image).tobytes() in train_pixels for s in heldout)
    root = demo_manifest("train").parents[1]
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 1_000_000
    with pytest.raises(ConfigError, match="split"):
        demo_manifest("test")
