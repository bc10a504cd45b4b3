"""Step 1: concept decomposition. The LLM lists the concept's objective attributes, then writes the
questions a VQA model answers about each image (Modeling Collaborator, arXiv 2403.02626: a
subjective concept is broken into objective, visually checkable parts).

Prompts: ``prompts/attributes.txt`` and ``prompts/questions.txt``.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from zoo.errors import ToolError
from zoo.tools import parse_numbered_list

from .prompts import render

__all__ = ["Decomposition", "decompose", "split_polarity"]

_POLARITY = re.compile(r"^\s*\(?(positive|negative|pos|neg|\+|-)\)?\s*[:\-–]\s*", re.IGNORECASE)


def split_polarity(item: str) -> tuple[str | None, str]:
    """``"negative: a red object"`` -> ``("negative", "a red object")``; no prefix -> ``(None, item)``."""
    match = _POLARITY.match(item)
    if not match:
        return None, item.strip()
    word = match.group(1).lower()
    return ("positive" if word in ("positive", "pos", "+") else "negative"), item[match.end():].strip()


@dataclass
class Decomposition:
    """attributes: ``[{"polarity": "positive" | "negative" | None, "text"}]``; questions: strings
    (deduplicated, at most ``max_questions``); raw: the LLM's two answers."""

    attributes: list[dict]
    questions: list[str]
    raw: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Decomposition":
        return cls(list(data["attributes"]), list(data["questions"]), dict(data.get("raw") or {}))


def decompose(llm, concept, *, max_questions: int = 12, prompts_dir=None) -> Decomposition:
    """Ask ``llm`` (an ``LLMTool``) for the attributes and the questions of ``concept``.

    Raises ``ToolError`` (quoting the answer) when an answer holds no numbered list.
    """
    answer = llm.generate(render("attributes", prompts_dir, name=concept.name, description=concept.text()))
    items = parse_numbered_list(answer)
    if not items:
        raise ToolError(f"the LLM's attribute answer holds no numbered list: {answer[:300]!r}")
    attributes = [dict(zip(("polarity", "text"), split_polarity(item))) for item in items]
    listed = "\n".join(f"{i}. {(a['polarity'] + ': ') if a['polarity'] else ''}{a['text']}"
                       for i, a in enumerate(attributes, 1))
    reply = llm.generate(render("questions", prompts_dir, name=concept.name, description=concept.text(),
                                attributes=listed, max_questions=max_questions))
    questions = []
    for item in parse_numbered_list(reply):
        question = " ".join(item.split())
        if question and question.lower() not in (q.lower() for q in questions):
            questions.append(question)
    if not questions:
        raise ToolError(f"the LLM's question answer holds no numbered list: {reply[:300]!r}")
    return Decomposition(attributes, questions[:max_questions], {"attributes": answer, "questions": reply})
