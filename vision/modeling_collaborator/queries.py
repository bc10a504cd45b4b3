"""Step 2: search queries for mining the unlabelled pool, positives and hard negatives
(Modeling Collaborator, arXiv 2403.02626: the LLM writes queries that find likely positives and
look-alike negatives, so the auto-labelled set has both). Prompt: ``prompts/queries.txt``.
"""
from __future__ import annotations

from zoo.errors import ToolError
from zoo.tools import parse_numbered_list

from .decompose import split_polarity
from .prompts import render

__all__ = ["search_queries"]


def search_queries(llm, concept, *, positives: int = 8, negatives: int = 4, prompts_dir=None) -> list[dict]:
    """``[{"text", "kind": "positive" | "negative"}]`` (deduplicated; an unmarked line is positive).

    Raises ``ToolError`` (quoting the answer) when it holds no numbered list.
    """
    answer = llm.generate(render("queries", prompts_dir, name=concept.name, description=concept.text(),
                                 positives=positives, negatives=negatives))
    out, seen = [], set()
    for item in parse_numbered_list(answer):
        polarity, text = split_polarity(item)
        text = " ".join(text.split()).strip("\"'")
        if text and text.lower() not in seen:
            seen.add(text.lower())
            out.append({"text": text, "kind": polarity or "positive"})
    if not out:
        raise ToolError(f"the LLM's search-query answer holds no numbered list: {answer[:300]!r}")
    return out
