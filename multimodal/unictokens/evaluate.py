"""UnifyBench-style evaluation, offline parts (arctanxarc/UniCTokens:eval/eval_p_mmu.py, eval/clip_eval.py).

Understanding:

* recognition ("rec"): the model answers "Is <c> in the image?"; as ``calculate_score`` does, a
  ground truth "No." counts as right when the answer contains "no", otherwise when it contains
  "yes". ``recall`` over images with the concept, ``no_recall`` over images without, ``accuracy``
  over all.
* recognition probability: ``P(yes)`` from :meth:`UniCTokensModel.recognize` (the first answer token,
  "Yes" against "No") for every rec item; ``rec_auc`` is the ROC AUC of it over the rec items
  and ``rec_p_yes_present`` / ``rec_p_yes_absent`` its means. The answer rule above only sees
  whether the greedy answer flips, so learning that raises ``P(yes)`` on images with the concept
  without crossing 0.5 shows here and not in the accuracy.
* VQA: exact match of the normalised answer (lower case, no punctuation) against the ground truth
  (the paper's BLEU + DeepSeek judge need an API; the shapes world has exact answers).

Generation: for each test prompt, images generated with the concept's tokens are read by the
shapes judge (``zoo.data.shapes.judge``): ``concept_present`` (the concept's look is detected)
and ``faithfulness`` (``judge.check`` of the prompt with ``<c>`` as the concept's look:
"overall" score). CLIP-I / CLIP-T are added when a local CLIP model is given (``clip_model``).

The class-word baseline asks the same questions of the base model with ``<c>`` replaced by the
class word ("Is there a star in the image?", "What color is the star?", "a photo of a star").
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger("zoo.unictokens")

__all__ = ["evaluate", "evaluate_concept", "evaluate_base", "evaluate_vq", "class_word_question", "rec_correct", "normalise",
           "roc_auc"]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", str(text).lower()).split())


def rec_correct(ground_truth: str, prediction: str) -> bool:
    """The official rec rule: "No." wants "no" in the answer, anything else wants "yes"."""
    if ground_truth.strip() == "No.":
        return "no" in prediction.lower()
    return "yes" in prediction.lower()


def class_word_question(question: str, name: str, class_word: str) -> str:
    """``<c>`` -> the class word, grammatically for the question forms the concept data uses."""
    tag = f"<{name}>"
    if question.startswith(f"Is {tag} in the image"):
        return question.replace(f"Is {tag} in the image", f"Is there a {class_word} in the image")
    return question.replace(tag, f"the {class_word}")


def _question(item: dict) -> tuple[str, str]:
    turns = item["conversations"]
    return turns[0]["value"].replace("<image>", "").strip(), turns[1]["value"]


def roc_auc(labels, scores) -> float | None:
    """ROC AUC of ``scores`` for binary ``labels`` (ties count half); None unless both classes occur."""
    labels = [bool(x) for x in labels]
    if all(labels) or not any(labels):
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, [float(x) for x in scores]))


def _understanding(model, items, concept: str | None, rewrite=None) -> dict:
    rec = {"recall": [], "no_recall": [], "accuracy": []}
    present, p_yes = [], []
    vqa = []
    for item in items:
        question, truth = _question(item)
        if rewrite is not None:
            question = rewrite(question)
        prediction = model.answer(item["image"], question, concept=concept, max_new_tokens=16)
        if item.get("type") == "rec":
            right = rec_correct(truth, prediction)
            rec["accuracy"].append(right)
            rec["no_recall" if truth.strip() == "No." else "recall"].append(right)
            if hasattr(model, "recognize"):
                present.append(truth.strip() != "No.")
                p_yes.append(model.recognize(item["image"], concept, question=question)["probability"])
        elif item.get("type") == "vqa":
            vqa.append(normalise(prediction) == normalise(truth))
    out = {f"rec_{k}": float(np.mean(v)) for k, v in rec.items() if v}
    if p_yes:
        auc = roc_auc(present, p_yes)
        if auc is not None:
            out["rec_auc"] = auc
        for key, flag in (("rec_p_yes_present", True), ("rec_p_yes_absent", False)):
            chosen = [p for p, y in zip(p_yes, present) if y == flag]
            if chosen:
                out[key] = float(np.mean(chosen))
    if vqa:
        out["vqa_accuracy"] = float(np.mean(vqa))
    return out


def _generation(model, prompts, concept: str | None, look_name: str, *, num_images: int, steps: int, guidance: float,
                seed: int = 0, rewrite=None, clip_model=None) -> dict:
    from zoo.data.shapes.judge import check, detect

    present, faithful, clip_t = [], [], []
    for index, entry in enumerate(prompts):
        prompt = entry["prompt"] if isinstance(entry, dict) else str(entry)
        judged = entry.get("judge", prompt) if isinstance(entry, dict) else prompt  # <c> reads as the concept's look
        shown = rewrite(prompt) if rewrite is not None else prompt
        images = model.generate_image(shown, concept=concept, steps=steps, guidance=guidance, num_images=num_images,
                                      seed=seed + index)
        for image in images:
            present.append(any(d.concept == look_name for d in detect(image)))
            try:
                faithful.append(check(image, judged)["overall"])
            except Exception as err:  # a prompt the judge cannot parse
                logger.warning("judge cannot score %r: %s", judged, err)
        if clip_model is not None:
            from zoo.metrics import clip_score

            pixels = __import__("torch").stack([__import__("torch").from_numpy(np.asarray(i)).permute(2, 0, 1).float() / 255
                                                for i in images])
            clip_t.append(float(clip_score(pixels, [shown] * len(images), model=clip_model)))
    out = {"concept_present": float(np.mean(present)) if present else None,
           "faithfulness": float(np.mean(faithful)) if faithful else None}
    if clip_t:
        out["clip_t"] = float(np.mean(clip_t))
    return out


def evaluate_concept(model, concept, *, num_images: int = 2, steps: int = 16, guidance: float = 2.0,
                     clip_model=None, baseline: bool = False) -> dict:
    """Metrics of a concept model on a concept folder's ``test.json`` (``concept``: a ``ConceptData``).

    ``baseline=True`` evaluates ``model`` as a base with the class word instead of the concept.
    """
    name = concept.name
    rewrite = (lambda q: class_word_question(q, name, concept.class_word)) if baseline else None
    use = None if baseline else name
    report = {"concept": name, "model": "base + class word" if baseline else f"stage tokens {model.concept.get('tokens')}"}
    report.update(_understanding(model, concept.test, use, rewrite))
    if concept.t2i_tests:
        prompt_rewrite = (lambda p: p.replace(f"A photo of <{name}>", f"A photo of a {concept.class_word}")
                          .replace(f"<{name}>", f"a {concept.class_word}")) if baseline else None
        report.update(_generation(model, concept.t2i_tests, use, name, num_images=num_images, steps=steps,
                                  guidance=guidance, rewrite=prompt_rewrite, clip_model=clip_model))
    return report


def evaluate_base(model, manifest="heldout", *, max_items: int = 32, num_images: int = 2, steps: int = 16,
                  guidance: float = 2.0, seed: int = 0) -> dict:
    """A pretrained base on shapes scenes: VQA accuracy on one random judge question per held-out scene
    (against always giving the most common answer), and the judge's faithfulness of images generated
    from held-out captions."""
    from zoo.data.shapes import read_manifest
    from zoo.data.shapes.judge import check

    from zoo.multimodal.unictokens.pretrain import _manifest, scene_questions

    scenes = read_manifest(_manifest("heldout" if manifest in ("demo", None) else manifest))[:max_items]
    rng = np.random.default_rng(seed)
    right, truths = [], []
    for scene in scenes:
        pairs = scene_questions(scene, rng)
        question, truth = pairs[int(rng.integers(len(pairs)))]
        truths.append(normalise(truth))
        right.append(normalise(model.answer(scene.image, question, max_new_tokens=12)) == truths[-1])
    majority = max(truths.count(t) for t in set(truths)) / len(truths)
    scores = []
    for index, scene in enumerate(scenes[:8]):
        for image in model.generate_image(scene.caption, steps=steps, guidance=guidance, num_images=num_images,
                                          seed=seed + index):
            scores.append(check(image, scene.caption)["overall"])
    return {"vqa_accuracy": float(np.mean(right)), "vqa_majority_baseline": float(majority),
            "t2i_faithfulness": float(np.mean(scores)), "scenes": len(scenes)}


def evaluate_vq(model, manifest="heldout", max_items: int = 64) -> dict:
    """The image tokenizer on held-out shapes scenes: reconstruction PSNR (dB) against a flat baseline
    (each image replaced by its mean colour), and how many codes the images use."""
    import torch

    from zoo.data.shapes import read_manifest
    from zoo.metrics import psnr
    from zoo.multimodal.unictokens.pretrain import _manifest

    scenes = read_manifest(_manifest("heldout" if manifest in ("demo", None) else manifest))[:max_items]
    pixels = model.prepare_images([s.image for s in scenes])
    with torch.no_grad():
        codes = model.vq_model.get_code(pixels)
        recon = model.vq_model.decode_code(codes).clamp(-1, 1)
    flat = pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels)
    return {"psnr_db": float(psnr(recon, pixels, data_range=2.0)),
            "psnr_flat_baseline_db": float(psnr(flat, pixels, data_range=2.0)),
            "codes_used": int(codes.unique().numel()), "codebook_size": model.vocab.codebook_size,
            "images": len(scenes)}


def evaluate(model, data, output=None, **options) -> dict:
    """``zoo eval NAME --data CONCEPT_FOLDER [baseline=true] [num_images=2] [steps=16]``: :func:`evaluate_concept`."""
    from zoo.files import write_json
    from zoo.multimodal.unictokens.data import read_concept_folder

    concept = read_concept_folder(data)
    report = evaluate_concept(model, concept, num_images=int(options.get("num_images", 2)),
                              steps=int(options.get("steps", 16)), guidance=float(options.get("guidance", 2.0)),
                              baseline=bool(options.get("baseline", False)) or not model.num_concept_rows)
    if output:
        write_json(Path(output), report)
    return report
