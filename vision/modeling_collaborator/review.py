"""Step 7: the human review. About 100 auto-labelled images go to the user in a sheet (CSV, or
JSONL); the user fills ``human_label`` (yes/no) and, where they disagree, may say why in
``comment``. Disagreements become an edited concept description (the LLM rewrites it from the
comments, ``prompts/refine.txt``, or the user gives the new text), and the labelled images are
annotated again with the new version (Modeling Collaborator, arXiv 2403.02626: ~100 reviewed
images plus natural-language feedback replace ~2,000 hand labels). The reviewed labels
themselves are kept as ground truth.

Sheet columns: ``id, path, annotator_label, caption, annotator_rationale, human_label, comment``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError, ToolError
from zoo.tools import strip_think

from .evaluate import parse_label
from .prompts import render

__all__ = ["SHEET_FIELDS", "choose_for_review", "write_sheet", "read_sheet", "disagreements", "refine_description",
           "parse_description"]

SHEET_FIELDS = ("id", "path", "annotator_label", "caption", "annotator_rationale", "human_label", "comment")
_WORD = {1: "yes", 0: "no", None: "unknown"}


def choose_for_review(annotations, k: int, *, strategy: str = "random", probabilities=None, seed: int = 0) -> list:
    """``k`` annotations (readable ones only) for the user: ``random`` (an unbiased sample: the
    disagreement rate estimates the Annotator's error rate) or ``uncertain`` (closest to 0.5
    under the current head, given ``probabilities`` aligned with ``annotations``)."""
    usable = [i for i, a in enumerate(annotations) if a.status != "unreadable"]
    if strategy == "random":
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(usable, size=min(k, len(usable)), replace=False).tolist()) if usable else []
    elif strategy == "uncertain":
        if probabilities is None:
            raise ConfigError("review.select=uncertain needs the head's probabilities.")
        p = np.asarray(probabilities, dtype=np.float64)
        chosen = sorted(usable, key=lambda i: (abs(p[i] - 0.5), i))[:k]
    else:
        raise ConfigError(f"review.select must be random or uncertain, got {strategy!r}.")
    return [annotations[i] for i in chosen]


def write_sheet(path, annotations) -> Path:
    """The review sheet as CSV (UTF-8, atomic); ``human_label`` and ``comment`` are left empty."""
    from zoo.files import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SHEET_FIELDS, lineterminator="\n")
    writer.writeheader()
    for a in annotations:
        writer.writerow({"id": a.id, "path": a.path, "annotator_label": _WORD[a.label], "caption": a.caption,
                         "annotator_rationale": " ".join(a.rationale.split()), "human_label": "", "comment": ""})
    return write_text(path, buffer.getvalue())


def read_sheet(path, known_ids=None) -> dict[str, dict]:
    """``{id: {"human_label": 0/1, "comment": str}}`` of the filled rows of a review sheet (CSV with
    the columns above, or JSONL with ``id``, ``human_label`` and optional ``comment``). Rows with an
    empty ``human_label`` are not reviewed. Raises ``ConfigError`` naming the row for a bad label or
    an id that was not in the sheet, and when no row is filled."""
    file = Path(os.fspath(path)).expanduser()
    if not file.is_file():
        raise ConfigError(f"review answers {str(file)!r} do not exist; fill in the sheet the run wrote "
                          "(review/sheet.csv) and pass its path as review.answers.")
    text = file.read_text(encoding="utf-8-sig")
    if file.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as error:
                    raise ConfigError(f"{file}, line {number}: not JSON ({error}).") from None
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
        if rows and "human_label" not in rows[0]:
            raise ConfigError(f"{file} has no human_label column; fill in the sheet the run wrote.")
    answers = {}
    for number, row in enumerate(rows, 2 if file.suffix.lower() not in (".jsonl", ".json") else 1):
        image_id = str(row.get("id", "")).strip()
        label = parse_label(row.get("human_label"), f"{file}, row {number} ({image_id}) human_label")
        if label is None:
            continue
        if known_ids is not None and image_id not in known_ids:
            raise ConfigError(f"{file}, row {number}: id {image_id!r} was not in the review sheet.")
        answers[image_id] = {"human_label": label, "comment": str(row.get("comment") or "").strip()}
    if not answers:
        raise ConfigError(f"{file} has no filled human_label; write yes or no for each image you reviewed.")
    return answers


def disagreements(annotations, answers: dict) -> list[dict]:
    """Reviewed images whose auto-label differs from the user's (unknown counts as different):
    ``[{"id", "annotator_label", "human_label", "caption", "rationale", "comment"}]``."""
    out = []
    for a in annotations:
        answer = answers.get(a.id)
        if answer is not None and a.label != answer["human_label"]:
            out.append({"id": a.id, "annotator_label": a.label, "human_label": answer["human_label"],
                        "caption": a.caption, "rationale": a.rationale, "comment": answer["comment"]})
    return out


def parse_description(text: str) -> str | None:
    """The text after the last ``Description:`` (up to a blank line), or None."""
    body = strip_think(text)
    matches = list(re.finditer(r"description\s*:\s*", body, re.IGNORECASE))
    if not matches:
        return None
    rest = body[matches[-1].end():].strip().split("\n\n")[0]
    value = " ".join(rest.split()).strip("\"'“” ")
    return value or None


def refine_description(llm, concept, items: list[dict], *, prompts_dir=None, max_items: int = 40) -> str:
    """The LLM's rewrite of ``concept``'s description from the disagreements ``items``.
    Raises ``ToolError`` (quoting the answer) when the answer has no ``Description:`` line."""
    lines = []
    for item in items[:max_items]:
        line = (f"- image {item['id']}: labelled {_WORD[item['annotator_label']].title()}, the user says "
                f"{_WORD[item['human_label']].title()}. Seen: {item['caption']}.")
        if item.get("comment"):
            line += f" User comment: {item['comment']}"
        lines.append(line)
    answer = llm.generate(render("refine", prompts_dir, name=concept.name, description=concept.description,
                                 disagreements="\n".join(lines)))
    description = parse_description(answer)
    if description is None:
        raise ToolError(f"the LLM's rewrite of the concept has no 'Description:' line: {answer[:300]!r}; set "
                        "review.description to give the new description yourself.")
    return description
