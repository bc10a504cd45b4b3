"""The offline demo and real check: a subjective concept in words -> a classifier, on shapes-world scenes.

    python -m zoo.vision.modeling_collaborator.demo_check [--out runs/collaborator-demo] [--clip FOLDER]

1. A tiny CLIP (card ``shapes-clip-tiny``, open_clip's model code and ``ClipLoss``) is trained on
   shapes-world images and captions through the zoo engine (``vision/clip/recipes/shapes.yaml``),
   unless ``--clip`` gives a trained one.
2. An unlabelled pool and held-out scenes are generated (other seeds than the CLIP's corpus).
3. ``zoo train collaborator`` runs on the pool's image folder with the concept
   ``concepts/calm.yaml`` ("A calm scene: few objects, all in cool colours, nothing red."), the
   template LLM (offline.py) and the shapes-world judge (pixels) as VQA tool.
4. A simulated user fills the review sheet from the HIDDEN RULE below, with a comment where they
   disagree, and the run is repeated with ``review.answers``.
5. On the held-out scenes (ground truth from the hidden rule, which the pipeline never reads):
   auPR and F1 of CLIP zero-shot (name; description), CuPL, the Annotator alone (before and after
   the review), the distilled classifier after 0, 1, 2 active-learning rounds and after the review,
   and a reference head trained on the true labels of the same images.

The HIDDEN RULE (the user's real idea of calm, stricter than what they first wrote): at most two
objects, every object green, cyan, blue or purple, and no striped or checkered object.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COOL = ("green", "cyan", "blue", "purple")


def hidden_rule(scene) -> bool:
    """The user's idea of a calm scene, over scene metadata (never shown to the pipeline)."""
    return (len(scene.objects) <= 2 and all(o.color in COOL for o in scene.objects)
            and not any(o.texture in ("striped", "checkered") for o in scene.objects))


def user_comment(scene) -> str:
    """What the simulated user writes when they say No where the Annotator said Yes."""
    reasons = []
    if len(scene.objects) > 2:
        reasons.append("Three or more objects are too many: at most two objects.")
    if any(o.texture in ("striped", "checkered") for o in scene.objects):
        reasons.append("Striped or checkered patterns are not calm.")
    if any(o.color not in COOL for o in scene.objects):
        reasons.append("Warm colours are not calm.")
    return " ".join(reasons)


def fill_review(sheet: Path, answers: Path, scenes: dict) -> dict:
    """The simulated user: a copy of ``sheet`` with human_label from the hidden rule (and comments)."""
    with open(sheet, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    disagree = 0
    for row in rows:
        scene = scenes[row["id"]]
        truth = hidden_rule(scene)
        row["human_label"] = "yes" if truth else "no"
        if (row["annotator_label"] == "yes") != truth:
            disagree += 1
            row["comment"] = "" if truth else user_comment(scene)
    from zoo.files import atomic_open

    with atomic_open(answers, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return {"reviewed": len(rows), "disagreements": disagree}


def _recipe(path, overrides):
    from zoo.train import load_recipe

    return load_recipe(str(path), [f"{k}={v}" for k, v in overrides.items()])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/collaborator-demo")
    parser.add_argument("--clip", help="a trained clip-family model folder (skips step 1)")
    parser.add_argument("--clip-steps", type=int, default=800)
    parser.add_argument("--pool-size", type=int, default=2000)
    parser.add_argument("--heldout-size", type=int, default=600)
    parser.add_argument("overrides", nargs="*", help="collaborator recipe overrides key=value")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    import torch

    import zoo
    from zoo.data.shapes import demo_manifest, generate, read_manifest
    from zoo.registry import get_family
    from zoo.train import run
    from zoo.tools import CallCache

    from .annotator import Annotator
    from .baselines import annotator_scores, clip_zero_shot, cupl
    from .concept import load_concept
    from .distill import fit_head
    from .embeddings import embed_files
    from .evaluate import binary_metrics, pr_curve_png
    from .offline import TemplateLLM
    from .pipeline import read_annotations
    from .toolbox import build_vqa

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings, start = {}, time.time()

    # 1. the backbone
    clip_folder = Path(args.clip) if args.clip else out / "clip" / "final"
    if not args.clip and not (out / "clip" / "final").is_dir():
        config = _recipe(HERE.parent / "clip" / "recipes" / "shapes.yaml",
                         {"train.output_dir": out / "clip", "train.max_steps": args.clip_steps,
                          "train.progress": "lines"})
        clip_folder = Path(run(config))
    timings["clip"] = time.time() - start
    clip = zoo.load(str(clip_folder))
    clip_family = get_family("clip")  # through the registry: a family never imports another
    clip_eval = clip_family.resolve(clip_family.evaluate)(clip, data=demo_manifest("heldout"))

    # 2. pool and held-out scenes
    pool_manifest, heldout_manifest = out / "pool" / "manifest.jsonl", out / "heldout" / "manifest.jsonl"
    if not pool_manifest.is_file():
        generate(out / "pool", args.pool_size, seed=21, overwrite=True)
    if not heldout_manifest.is_file():
        generate(out / "heldout", args.heldout_size, seed=22, overwrite=True)
    pool_scenes = {s.id: s for s in read_manifest(pool_manifest)}
    heldout = read_manifest(heldout_manifest)
    truth = np.array([hidden_rule(s) for s in heldout], dtype=int)

    # 3. the collaborator, before the review
    concept_file = HERE / "concepts" / "calm.yaml"
    common = {"concept": concept_file, "pool": out / "pool" / "images", "model.backbone": clip_folder,
              "train.output_dir": out / "collaborator", "embed.cache_dir": out / "embedding-cache",
              "train.progress": "lines", **dict(item.split("=", 1) for item in args.overrides)}
    t0 = time.time()
    run(_recipe(HERE / "recipes" / "demo.yaml", common))
    heads = [out / "collaborator" / "pipeline" / "heads" / f"round{r}" / "run" / "final" for r in range(3)]

    # 4. the simulated user reviews; the run is repeated with the answers
    answers = out / "review_answers.csv"
    review = fill_review(out / "collaborator" / "pipeline" / "review" / "sheet.csv", answers, pool_scenes)
    final_folder = Path(run(_recipe(HERE / "recipes" / "demo.yaml",
                                    {**common, "review.answers": answers, "train.overwrite": "true"})))
    timings["collaborator"] = time.time() - t0
    final = zoo.load(str(final_folder))
    result = json.loads((out / "collaborator" / "pipeline" / "review" / "result.json").read_text())

    # 5. held-out evaluation
    t0 = time.time()
    vectors, kept, errors = embed_files(clip, [s.image for s in heldout])
    assert not errors and len(kept) == len(heldout)
    x = vectors.numpy()
    concept_v1 = load_concept(concept_file)
    concept_v2 = load_concept(out / "collaborator" / "pipeline" / "concept" / "final.yaml")
    llm = CallCache(out / "baseline-calls").wrap(TemplateLLM())
    vqa = CallCache(out / "baseline-calls").wrap(build_vqa({"type": "shapes"}))
    scores, thresholds = {}, {}
    scores["CLIP zero-shot (name)"], _ = clip_zero_shot(clip, x, concept_v1, mode="name")
    scores["CLIP zero-shot (description)"], _ = clip_zero_shot(clip, x, concept_v1, mode="description")
    scores["CuPL"], cupl_texts = cupl(llm, clip, x, concept_v1)
    for name, concept, decomposition in (("Annotator alone (v1)", concept_v1, "v1.json"),
                                         (f"Annotator alone (v{concept_v2.version}, after review)", concept_v2,
                                          "final.json")):
        questions = json.loads((out / "collaborator" / "pipeline" / "decompose" / decomposition).read_text())["questions"]
        annotator = Annotator(llm, vqa, concept, questions)
        scores[name] = annotator_scores(annotator.annotate_rows([{"path": s.image, "id": s.id} for s in heldout]))
    for r, folder in enumerate(heads):
        model = zoo.load(str(folder))
        scores[f"distilled, {r} AL rounds"] = model(embeddings=torch.as_tensor(x)).detach().numpy()
        thresholds[f"distilled, {r} AL rounds"] = model.threshold
    scores["distilled, after review"] = final(embeddings=torch.as_tensor(x)).detach().numpy()
    thresholds["distilled, after review"] = final.threshold
    # reference: the same head on the TRUE labels of the same training images (not available to the method)
    records = [json.loads(line) for line in (out / "collaborator" / "pipeline" / "labels" / "final.jsonl")
               .read_text().splitlines()]
    pool_x = np.load(out / "collaborator" / "pipeline" / "pool" / "embeddings.npy")
    true_y = np.array([hidden_rule(pool_scenes[r["id"]]) for r in records], dtype=np.float32)
    reference_folder = fit_head(_recipe(HERE / "recipes" / "demo.yaml", common), out / "reference-head",
                                out / "collaborator" / "pipeline" / "base",
                                pool_x[[r["pool_index"] for r in records]], true_y)
    reference = zoo.load(str(reference_folder))
    scores["reference: same images, true labels"] = reference(embeddings=torch.as_tensor(x)).detach().numpy()
    thresholds["reference: same images, true labels"] = reference.threshold
    timings["evaluation"] = time.time() - t0

    table = {name: binary_metrics(truth, s, thresholds.get(name, 0.5)) for name, s in scores.items()}
    plot = pr_curve_png({name: (truth, s) for name, s in scores.items()}, out / "pr_curves.png",
                        title=f"'{concept_v1.name}' on {len(heldout)} held-out scenes", overwrite=True)
    annotated = read_annotations(out / "collaborator" / "pipeline" / "labels" / "final.jsonl")
    before = []
    for r in range(3):
        before += read_annotations(out / "collaborator" / "pipeline" / "labels" / f"round{r}.jsonl")
    label_accuracy = {  # auto-labels against the hidden rule, on the pool images they were made for
        "before review (v1 Annotator)": float(np.mean([a.label == int(hidden_rule(pool_scenes[a.id])) for a in before])),
        "after review (v2 Annotator + human labels)": float(np.mean(
            [a.label == int(hidden_rule(pool_scenes[a.id])) for a in annotated]))}
    report = {
        "heldout": {"scenes": len(heldout), "positives": int(truth.sum())},
        "pool": len(pool_scenes), "clip_retrieval_heldout": clip_eval,
        "human_labels": result["human_labels"], "review": {**review, **result},
        "auto_labels": len(annotated), "label_accuracy": label_accuracy, "concept_v1": concept_v1.description, "concept_final": concept_v2.description,
        "cupl_prompts": cupl_texts, "metrics": table, "pr_curves": str(plot),
        "seconds": {k: round(v, 1) for k, v in timings.items()}, "torch_threads": torch.get_num_threads(),
    }
    from zoo.files import write_json

    write_json(out / "report.json", report)
    print(f"\nconcept v1: {concept_v1.description}\nconcept v{concept_v2.version} (after review): "
          f"{concept_v2.description}")
    print(f"held-out: {len(heldout)} scenes, {int(truth.sum())} calm by the hidden rule (auPR of a random "
          f"ranking = {truth.mean():.3f}); human labels used: {result['human_labels']} "
          f"({review['disagreements']} disagreements); auto-labels: {len(annotated)}, agreeing with the hidden "
          f"rule {label_accuracy['before review (v1 Annotator)']:.3f} before the review and "
          f"{label_accuracy['after review (v2 Annotator + human labels)']:.3f} after")
    print(f"{'classifier':48s} {'auPR':>6s} {'F1':>6s} {'P':>6s} {'R':>6s} {'threshold':>9s}")
    for name, m in table.items():
        print(f"{name:48s} {m['auPR']:6.3f} {m['F1']:6.3f} {m['precision']:6.3f} {m['recall']:6.3f} "
              f"{m['threshold']:9.3f}")
    print(f"PR curves: {plot}\nreport: {out / 'report.json'}\nclassifier: {final_folder} (before the review: "
          f"{heads[-1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
