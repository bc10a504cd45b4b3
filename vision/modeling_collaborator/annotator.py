"""Step 4: the Annotator. Per image: a caption and the answers to the concept's questions (VQA
tool), then the LLM reasons over them step by step and ends with "Final answer: Yes/No"
(Modeling Collaborator, arXiv 2403.02626: the VQA model sees the image, the LLM decides, and the
rationale is kept). Prompts: ``prompts/annotate.txt`` (and ``prompts/retry.txt`` when the answer
has no final line).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from zoo.errors import ImageInputError
from zoo.tools import parse_final_answer, strip_think

from .prompts import render

__all__ = ["Annotation", "Annotator", "LABELS"]

logger = logging.getLogger("zoo.collaborator")

#: label values: 1 positive, 0 negative, None unknown (the LLM never gave a final answer) or unreadable
LABELS = {"Yes": 1, "No": 0}


@dataclass
class Annotation:
    """One image's auto-label.

    label: 1, 0, or None. status: "ok", "unknown" (no parsable final answer after the retries)
    or "unreadable" (the image could not be opened; ``error`` says why). rationale: the LLM's
    reasoning (the text before its final answer). caption / answers: what the VQA tool said,
    ``answers`` as ``[{"question", "answer"}]``. attempts: LLM calls made for the verdict.
    """

    id: str
    path: str
    label: int | None
    status: str
    rationale: str = ""
    caption: str = ""
    answers: list = field(default_factory=list)
    attempts: int = 0
    concept_version: int = 1
    error: str | None = None
    source: str = "annotator"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Annotation":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _rationale(text: str) -> str:
    body = strip_think(text)
    lines = [line for line in body.splitlines() if "final answer" not in line.lower()]
    return "\n".join(lines).strip()


class Annotator:
    """Labels images for ``concept`` with ``questions``.

    llm: an ``LLMTool``; vqa: a ``VQATool`` (wrap both in a ``zoo.tools.CallCache`` so no call
    is ever repeated). retries: extra LLM calls, with ``prompts/retry.txt`` appended, when an
    answer has no "Final answer: Yes/No"; after them the image is labelled unknown.
    A failing tool (``ToolError``, e.g. an HTTP endpoint that is down) propagates: rerun the step
    and the cache answers everything already asked.
    """

    def __init__(self, llm, vqa, concept, questions, *, retries: int = 2, prompts_dir=None):
        self.llm, self.vqa, self.concept = llm, vqa, concept
        self.questions = list(questions)
        self.retries = int(retries)
        self.prompts_dir = prompts_dir

    def prompt(self, caption: str, answers: list[dict]) -> str:
        """The annotate prompt for one image's caption and answers."""
        listed = "\n".join(f"- Q: {a['question']} A: {a['answer']}" for a in answers) or "- (no questions)"
        return render("annotate", self.prompts_dir, name=self.concept.name, description=self.concept.text(),
                      caption=caption, answers=listed)

    def annotate(self, path, image_id: str | None = None) -> Annotation:
        """The :class:`Annotation` of the image at ``path`` (an unreadable file gives status "unreadable")."""
        from zoo.image import load_image

        image_id = str(image_id if image_id is not None else path)
        try:
            image = load_image(path)
        except ImageInputError as error:
            return Annotation(image_id, str(path), None, "unreadable", concept_version=self.concept.version,
                              error=str(error))
        caption = str(self.vqa.caption(image)).strip()
        answers = [{"question": q, "answer": str(self.vqa.answer(image, q)).strip()} for q in self.questions]
        prompt = self.prompt(caption, answers)
        text, verdict, attempts = "", None, 0
        for attempt in range(self.retries + 1):
            attempts += 1
            asked = prompt if attempt == 0 else render("retry", self.prompts_dir, prompt=prompt)
            text = self.llm.generate(asked)
            verdict = parse_final_answer(text, ("Yes", "No"))
            if verdict is not None:
                break
        if verdict is None:
            logger.warning("%s: no 'Final answer: Yes/No' after %d attempt(s); labelled unknown", image_id, attempts)
            return Annotation(image_id, str(path), None, "unknown", _rationale(text), caption, answers, attempts,
                              self.concept.version)
        return Annotation(image_id, str(path), LABELS[verdict], "ok", _rationale(text), caption, answers, attempts,
                          self.concept.version)

    def annotate_rows(self, rows, *, progress: bool = False) -> list[Annotation]:
        """Annotations of manifest rows (``{"path", "id"}``) in order."""
        iterator = rows
        if progress:
            from tqdm import tqdm

            iterator = tqdm(rows, desc="annotate", unit="img")
        return [self.annotate(r["path"], r.get("id")) for r in iterator]
