"""`zoo train collaborator` end to end on a small shapes-world pool: the resumable steps, the classifier
it produces (call, predict, save/push/load), the human review edit, and `zoo eval`."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

import zoo
from zoo.data import read_manifest
from zoo.data.shapes import demo_manifest
from zoo.errors import ConfigError
from zoo.train import load_recipe, run

RECIPE = Path(zoo.__file__).resolve().parents[1] / "vision" / "modeling_collaborator" / "recipes" / "demo.yaml"
CONCEPT = RECIPE.parents[1] / "concepts" / "calm.yaml"
SMALL = {"embed_dim": 16, "backbone.clip.model_cfg.embed_dim": 16, "backbone.clip.model_cfg.vision_cfg.width": 32,
         "backbone.clip.model_cfg.vision_cfg.layers": 1, "backbone.clip.model_cfg.vision_cfg.head_width": 16,
         "backbone.clip.model_cfg.text_cfg.width": 32, "backbone.clip.model_cfg.text_cfg.heads": 2,
         "backbone.clip.model_cfg.text_cfg.layers": 1, "head.hidden": 16}


def _overrides(folder: Path, pool: Path, **extra) -> list[str]:
    items = {"concept": CONCEPT, "pool": pool, "train.output_dir": folder, "embed.cache_dir": folder.parent / "cache",
             "retrieve.per_query": 4, "retrieve.per_negative_query": 2, "retrieve.max_images": 12,
             "active.rounds": 1, "active.per_round": 6, "review.size": 8, "train.max_steps": 20,
             "train.progress": "false", "train.log_every": 10, **{f"model.overrides.{k}": v for k, v in SMALL.items()},
             **extra}
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("collab")
    # 18 scenes calm by the concept's first description (at most 3 objects, cool colours) and 12 others, so
    # that retrieval with a random-init backbone still finds both classes
    from zoo.data.shapes import read_manifest as read_scenes

    scenes = read_scenes(demo_manifest("train"))
    calm = [s for s in scenes if len(s.objects) <= 3 and all(o.color in ("green", "cyan", "blue", "purple")
                                                                 for o in s.objects)]
    rows = [{"path": s.image, "id": s.id} for s in calm[:18] + [s for s in scenes if s not in calm][:12]]
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    lines = [json.dumps({"path": r["path"], "id": r["id"]}) for r in rows] + [json.dumps({"path": str(broken),
                                                                                         "id": "broken"})]
    (root / "pool.jsonl").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    final = run(load_recipe(str(RECIPE), _overrides(root / "run", root / "pool.jsonl")))
    return root, Path(final)


def _copy(first_run, tmp_path) -> Path:
    root, _ = first_run
    shutil.copytree(root / "run", tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def _calls(folder: Path) -> int:
    return sum(1 for _ in (folder / "pipeline" / ".calls").rglob("*.json"))


def test_the_pipeline_makes_a_classifier(first_run):
    root, final = first_run
    pipeline = root / "run" / "pipeline"
    steps = json.loads((pipeline / "steps.json").read_text())
    assert set(steps) == {"base", "decompose", "queries", "embed", "retrieve", "annotate0", "distill0", "annotate1",
                          "distill1", "review_sheet"}
    assert steps["embed"]["result"] == {"images": 30, "skipped": 1}
    assert json.loads((pipeline / "pool" / "skipped.jsonl").read_text())["id"] == "broken"
    assert steps["annotate1"]["result"]["images"] == 6 and steps["retrieve"]["result"]["candidates"] == 12
    with open(pipeline / "review" / "sheet.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 8
    report = json.loads((root / "run" / "report.json").read_text())
    assert report["training_images"] == 18 and report["human_labels"] == 0 and not report["reviewed"]
    clf = zoo.load(str(final))
    assert clf.family == "collaborator" and clf.concept["version"] == 1 and clf.concept["name"] == "calm scene"
    assert 0 < clf.threshold < 1
    images = [r["path"] for r in read_manifest(demo_manifest("heldout"))[:3]]
    probabilities = clf(images)
    assert probabilities.shape == (3,) and bool(((probabilities >= 0) & (probabilities <= 1)).all())
    rows = clf.predict(images + [str(root / "broken.png")])
    assert [r["probability"] is None for r in rows] == [False, False, False, True] and "broken.png" in rows[3]["error"]
    torch.testing.assert_close(torch.tensor([r["probability"] for r in rows[:3]]), clf.predict_proba(images))


def test_rerun_skips_every_step_and_calls_no_tool(first_run, tmp_path):
    folder = _copy(first_run, tmp_path)
    calls = _calls(folder)
    records = json.loads((folder / "pipeline" / "steps.json").read_text())
    run(load_recipe(str(RECIPE), _overrides(folder, first_run[0] / "pool.jsonl", **{"train.overwrite": "true"})))
    assert _calls(folder) == calls
    assert json.loads((folder / "pipeline" / "steps.json").read_text()) == records


def test_a_changed_setting_is_an_error_naming_it_until_forced(first_run, tmp_path):
    folder = _copy(first_run, tmp_path)
    changed = _overrides(folder, first_run[0] / "pool.jsonl", **{"retrieve.per_query": 5, "train.overwrite": "true"})
    with pytest.raises(ConfigError, match=r"'retrieve'.*per_query 4 -> 5.*force"):
        run(load_recipe(str(RECIPE), changed))
    run(load_recipe(str(RECIPE), changed + ["force=retrieve"]))
    steps = json.loads((folder / "pipeline" / "steps.json").read_text())
    assert steps["retrieve"]["settings"]["per_query"] == 5


def test_the_review_edits_the_concept_and_its_labels_win(first_run, tmp_path, loopback_hub):
    folder = _copy(first_run, tmp_path)
    with open(folder / "pipeline" / "review" / "sheet.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for index, row in enumerate(rows):
        row["human_label"] = "no" if row["annotator_label"] == "yes" or index % 2 else "yes"
        row["comment"] = "Striped or checkered patterns are not calm." if row["annotator_label"] == "yes" else ""
    answers = tmp_path / "answers.csv"
    with open(answers, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    final = run(load_recipe(str(RECIPE), _overrides(folder, first_run[0] / "pool.jsonl", **{
        "review.answers": answers, "train.overwrite": "true"})))
    result = json.loads((folder / "pipeline" / "review" / "result.json").read_text())
    assert result["human_labels"] == 8 and result["reviewed"] == 8
    labels = [json.loads(line) for line in (folder / "pipeline" / "labels" / "final.jsonl").read_text().splitlines()]
    human = {r["id"]: r["label"] for r in labels if r["source"] == "human"}
    assert human == {row["id"]: int(row["human_label"] == "yes") for row in rows}
    clf = zoo.load(str(final))
    assert any(row["annotator_label"] == "yes" for row in rows)  # so there are comments to edit the concept with
    assert clf.concept["version"] == 2 and clf.concept["description"].endswith(
        "Striped or checkered patterns are not calm.")
    decomposition = json.loads((folder / "pipeline" / "decompose" / "final.json").read_text())
    assert "Is there a striped object?" in decomposition["questions"]
    report = json.loads((folder / "report.json").read_text())
    assert report["human_labels"] == 8 and report["reviewed"]
    clf.push_to_hub("alice/calm")
    again = zoo.load("hf-hub:alice/calm")
    images = [r["path"] for r in read_manifest(demo_manifest("heldout"))[:4]]
    assert torch.equal(clf.predict_proba(images), again.predict_proba(images))
    assert again.concept == clf.concept and again.threshold == clf.threshold


def test_zoo_eval_reports_aupr_f1_and_draws_the_curve(first_run, tmp_path):
    from zoo.cli import main

    _, final = first_run
    rows = read_manifest(demo_manifest("heldout"))[:6]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"path": r["path"], "label": "yes" if i % 2 else "no"}) + "\n"
                            for i, r in enumerate(rows)))
    assert main(["eval", str(final), "--data", str(data), "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["images"] == 6 and metrics["positives"] == 3 and 0 < metrics["auPR"] <= 1
    assert (tmp_path / "m_pr.png").stat().st_size > 1000 and metrics["pr_curve"] == str(tmp_path / "m_pr.png")
    data.write_text(json.dumps({"path": rows[0]["path"], "label": "perhaps"}) + "\n")
    assert main(["eval", str(final), "--data", str(data)]) == 2


def test_missing_inputs_are_clear_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("name: calm\n")
    (tmp_path / "pool").mkdir()
    with pytest.raises(ConfigError, match="no description"):
        run(load_recipe(str(RECIPE), _overrides(tmp_path / "a", tmp_path / "pool", concept=tmp_path / "c.yaml")))
    with pytest.raises(ConfigError, match="pool is empty"):
        run(load_recipe(str(RECIPE), _overrides(tmp_path / "b", tmp_path / "pool")))
    with pytest.raises(ConfigError, match="review.answers"):
        run(load_recipe(str(RECIPE), _overrides(tmp_path / "c", tmp_path / "pool",
                                                **{"review.answers": tmp_path / "nope.csv"})))
