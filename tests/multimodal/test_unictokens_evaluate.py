"""UniCTokens evaluation: the official rec rule and the recognition probability (AUC) next to it."""
from pathlib import Path

import pytest

from zoo.multimodal.unictokens.data import ConceptData
from zoo.multimodal.unictokens.evaluate import evaluate_concept, rec_correct, roc_auc


def _rec(image: str, truth: str) -> dict:
    return {"image": image, "type": "rec", "conversations": [
        {"from": "human", "value": "<image>\nIs <bo> in the image?"}, {"from": "gpt", "value": truth}]}


class AlwaysNo:
    """Answers "No." to everything; P(yes) is higher on images with the concept but below 0.5."""

    concept = {"tokens": [16]}
    p_yes = {"a": 0.40, "b": 0.38, "c": 0.30, "d": 0.31}

    def __init__(self):
        self.asked = []

    def answer(self, image, question, concept=None, max_new_tokens=16):
        return "No."

    def recognize(self, image, concept, question=None):
        self.asked.append((image, concept, question))
        p = self.p_yes[image]
        return {"answer": "yes" if p >= 0.5 else "no", "probability": p}


def _concept(items) -> ConceptData:
    return ConceptData(folder=Path("."), name="bo", class_word="star", info="", kind="object", images=[], cropped=[],
                       conversations=[], conversations_stage_3=[], test=items)


def test_recognition_probability_shows_what_the_answer_rule_hides():
    model = AlwaysNo()
    items = [_rec("a", "Yes."), _rec("b", "Yes."), _rec("c", "No."), _rec("d", "No.")]
    report = evaluate_concept(model, _concept(items))
    assert report["rec_recall"] == 0.0 and report["rec_no_recall"] == 1.0 and report["rec_accuracy"] == 0.5
    assert report["rec_auc"] == 1.0
    assert report["rec_p_yes_present"] == pytest.approx(0.39) and report["rec_p_yes_absent"] == pytest.approx(0.305)
    assert model.asked[0] == ("a", "bo", "Is <bo> in the image?")
    # the class-word baseline asks the base the rewritten question, without a concept
    model.asked.clear()
    base = evaluate_concept(model, _concept(items), baseline=True)
    assert model.asked[0] == ("a", None, "Is there a star in the image?") and base["rec_auc"] == 1.0


def test_roc_auc_and_the_official_rule():
    assert roc_auc([1, 0, 1, 0], [0.4, 0.3, 0.3, 0.1]) == pytest.approx(0.875)  # ties count half
    assert roc_auc([1, 1], [0.2, 0.3]) is None
    assert rec_correct("No.", "No.") and rec_correct("Yes.", "Yes, it is.") and not rec_correct("Yes.", "No.")
    assert rec_correct("No.", "none")  # the official substring rule, kept


def test_recognize_without_a_concept_asks_the_given_question():
    import torch

    from zoo.errors import ConfigError
    from zoo.registry import get_family

    family = get_family("unictokens")
    torch.manual_seed(0)
    model = family.build(family.make_config("tiny", {}))
    image = torch.zeros(1, 3, model.image_size, model.image_size)
    verdict = model.recognize(image, None, question="Is there a star in the image?")
    assert 0.0 <= verdict["probability"] <= 1.0 and verdict["answer"] in ("yes", "no")
    with pytest.raises(ConfigError, match="needs the question"):
        model.recognize(image, None)
