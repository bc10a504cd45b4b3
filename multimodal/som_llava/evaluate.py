"""SoM-LLaVA evaluation on held-out shapes-world scenes: tag listing and POPE-style yes/no questions.

* Tag listing (the paper's probing task, on ground truth we know exactly): the model gets the
  tagged scene and a listing instruction; the answer is parsed as a numbered list
  (``zoo.tools.parse_numbered_list``). A tag counts as correct when its item names the object's
  colour and shape; a list is an exact match when every tag is correct and nothing extra is listed.
  Baseline: the per-tag accuracy of always naming the most frequent colour-shape pair.
* POPE-style questions ("Is there a red circle in the image?", half yes / half no with random
  negatives, as POPE's "random" split) asked with LLaVA-1.5's short-answer prompt, on the tagged
  and on the plain image. Answers are read with ``zoo.tools.parse_yes_no``; an answer that says
  neither counts as "yes", as POPE's scorer does (``haotian-liu/LLaVA:llava/eval/eval_pope.py``
  calls everything without "no"/"not" a yes). Accuracy, precision, recall, F1 and the yes ratio;
  baseline: always "yes" (accuracy 0.5 on the balanced questions).
"""
from __future__ import annotations

import random
from collections import Counter

from zoo.errors import ConfigError

SHORT_ANSWER = "Answer the question using a single word or phrase."


def _batched(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?()") for w in text.lower().replace("-", " ").split()]


def _names_color(text: str, obj: dict) -> bool:
    return obj["color"] in _words(text)


def _names_shape(text: str, obj: dict) -> bool:
    words = _words(text)
    return obj["shape"] in words or obj["shape"] + "s" in words


def _names(text: str, obj: dict) -> bool:
    return _names_color(text, obj) and _names_shape(text, obj)


def listing_accuracy(model, scenes, *, instruction: str | None = None, min_area: int = 12, font_size: float = 9,
                     batch_size: int = 16, max_new_tokens: int = 96) -> dict:
    """Per-tag and whole-list accuracy of the model's listing of tagged scenes (see module docstring)."""
    from zoo.multimodal.som_llava.data import instruction_pool, tag_scene
    from zoo.tools import parse_numbered_list

    instruction = instruction or instruction_pool()[0]
    tagged = [(scene, tag_scene(scene, min_area=min_area, font_size=font_size)) for scene in scenes]
    tagged = [(scene, t) for scene, t in tagged if t.tags]
    correct = total = exact = colors = shapes = 0
    examples = []
    for chunk in _batched(tagged, batch_size):
        answers = model.generate([t.image for _, t in chunk], [instruction] * len(chunk),
                                 max_new_tokens=max_new_tokens)
        for (scene, t), answer in zip(chunk, answers):
            listed = dict((str(n), text) for n, text in parse_numbered_list(answer, with_numbers=True))
            hits = [tag.label in listed and _names(listed[tag.label], scene.objects[tag.mask_index]) for tag in t.tags]
            colors += sum(tag.label in listed and _names_color(listed[tag.label], scene.objects[tag.mask_index])
                          for tag in t.tags)
            shapes += sum(tag.label in listed and _names_shape(listed[tag.label], scene.objects[tag.mask_index])
                          for tag in t.tags)
            correct += sum(hits)
            total += len(hits)
            exact += int(all(hits) and len(listed) == len(t.tags))
            if len(examples) < 3:
                examples.append({"scene": scene.id, "answer": answer})
    objects = [scene.objects[tag.mask_index] for scene, t in tagged for tag in t.tags]
    pairs = Counter((o["color"], o["shape"]) for o in objects)
    top = {name: (Counter(o[name] for o in objects).most_common(1)[0][1] / total) if total else 0.0
           for name in ("color", "shape")}
    return {"tag_accuracy": correct / max(total, 1), "list_exact_match": exact / max(len(tagged), 1),
            "color_accuracy": colors / max(total, 1), "shape_accuracy": shapes / max(total, 1),
            "tags": total, "images": len(tagged),
            "baseline_most_frequent_pair": (pairs.most_common(1)[0][1] / total) if total else 0.0,
            "baseline_most_frequent_color": top["color"], "baseline_most_frequent_shape": top["shape"],
            "examples": examples}


def pope_accuracy(model, scenes, *, tagged: bool, questions_per_scene: int = 2, seed: int = 0, min_area: int = 12,
                  font_size: float = 9, batch_size: int = 16) -> dict:
    """POPE-style yes/no accuracy on the scenes (tagged or plain images), with precision/recall/F1."""
    from zoo.multimodal.som_llava.data import tag_scene, yes_no_questions
    from zoo.tools import parse_yes_no

    rng = random.Random(seed)
    items = []
    for scene in scenes:
        image = tag_scene(scene, min_area=min_area, font_size=font_size).image if tagged else scene.image
        for question, answer in yes_no_questions(scene, rng, count=questions_per_scene):
            items.append((image, question, answer == "Yes"))
    tp = fp = tn = fn = 0
    for chunk in _batched(items, batch_size):
        answers = model.generate([i for i, _, _ in chunk], [f"{q}\n{SHORT_ANSWER}" for _, q, _ in chunk],
                                 max_new_tokens=8)
        for (_, _, truth), text in zip(chunk, answers):
            said_yes = parse_yes_no(text, default=True)
            tp += said_yes and truth
            fp += said_yes and not truth
            tn += (not said_yes) and not truth
            fn += (not said_yes) and truth
    n = max(tp + fp + tn + fn, 1)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12), "yes_ratio": (tp + fp) / n,
            "questions": tp + fp + tn + fn, "baseline_always_yes": (tp + fn) / n}


def evaluate_shapes(model, *, scenes: int = 60, size: int = 128, seed: int = 1, start: int = 100_000,
                    overlap_prob: float = 0.25, min_area: int = 12, font_size: float = 9) -> dict:
    """Listing and POPE (with and without tags) on ``scenes`` held-out scenes (indices from ``start``,
    disjoint from the training scenes of the same seed)."""
    from zoo.multimodal.som_llava.data import shapes_scenes

    held_out = shapes_scenes(int(scenes), size=int(size), seed=int(seed), overlap_prob=overlap_prob, start=int(start))
    options = dict(min_area=min_area, font_size=font_size)
    return {"listing": listing_accuracy(model, held_out, **options),
            "pope_with_tags": pope_accuracy(model, held_out, tagged=True, seed=seed, **options),
            "pope_without_tags": pope_accuracy(model, held_out, tagged=False, seed=seed, **options),
            "scenes": len(held_out)}


def print_report(report: dict, title: str = "SoM-LLaVA on held-out shapes-world scenes") -> None:
    listing, tags, plain = report["listing"], report["pope_with_tags"], report["pope_without_tags"]
    print(f"{title} ({report['scenes']} scenes)")
    print(f"  tag listing: {listing['tag_accuracy']:.1%} of {listing['tags']} tags named right, "
          f"{listing['list_exact_match']:.1%} of {listing['images']} lists exact "
          f"(always the most frequent colour+shape: {listing['baseline_most_frequent_pair']:.1%} per tag); "
          f"colour right {listing['color_accuracy']:.1%} (most frequent colour: "
          f"{listing['baseline_most_frequent_color']:.1%}), shape right {listing['shape_accuracy']:.1%} "
          f"(most frequent shape: {listing['baseline_most_frequent_shape']:.1%})")
    print(f"  POPE-style yes/no, tagged images: accuracy {tags['accuracy']:.1%}, F1 {tags['f1']:.3f}, "
          f"yes ratio {tags['yes_ratio']:.2f}; plain images: accuracy {plain['accuracy']:.1%}, F1 {plain['f1']:.3f} "
          f"(always 'yes': {tags['baseline_always_yes']:.1%})")
    for example in listing["examples"][:1]:
        print(f"  e.g. scene {example['scene']}: {example['answer']!r}")


def evaluate(model, data: str = "shapes", output: str | None = None, **options) -> dict:
    """``zoo eval MODEL --data demo|MANIFEST [scenes=N size=S seed=K]``.

    ``demo`` (or ``shapes``): :func:`evaluate_shapes` on freshly generated held-out scenes; a
    ``zoo.data.shapes`` manifest: the same measures on its scenes. Optionally written as JSON.
    """
    from pathlib import Path

    from zoo.data import demo_corpus

    known = {"scenes", "size", "seed", "start", "overlap_prob", "min_area", "font_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown som-llava evaluation options {unknown}; known: {sorted(known)}")
    # `zoo eval --data demo` hands over the bundled speech corpus' path: it means "the demo data" here too
    if data in ("shapes", "demo") or Path(str(data)) == Path(demo_corpus()):
        report = evaluate_shapes(model, **options)
    else:
        from zoo.multimodal.som_llava.data import scenes_from_manifest

        path = Path(str(data))
        manifest = path / "manifest.jsonl" if path.is_dir() else path
        if not manifest.is_file():
            raise ConfigError(f"--data {data!r}: give 'demo' or a zoo.data.shapes manifest (manifest.jsonl).")
        scenes = scenes_from_manifest(manifest, size=int(options.get("size", 128)), limit=options.get("scenes"))
        extra = {k: options[k] for k in ("min_area", "font_size") if k in options}
        report = {"listing": listing_accuracy(model, scenes, **extra),
                  "pope_with_tags": pope_accuracy(model, scenes, tagged=True, **extra),
                  "pope_without_tags": pope_accuracy(model, scenes, tagged=False, **extra), "scenes": len(scenes)}
    print_report(report)
    if output:
        from zoo.files import write_json

        write_json(output, report)
    return report
