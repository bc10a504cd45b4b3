"""The offline LLM of the demo and tests: a deterministic template tool for shapes-world concepts.

:class:`TemplateLLM` is an ``LLMTool`` that answers the family's own prompts (it recognises them by
their ``Task:`` line) with rules over a small vocabulary: object counts, the eight shapes-world
colours (and "cool"/"warm" colours), textures ("patterns"), and shapes. It reads the concept
description in the prompt, never the images or their metadata, and answers the way the prompts
ask (numbered lists, "positive:"/"negative:" prefixes, reasoning ending in "Final answer: Yes/No",
"Description: ..."). It stands in for a real LLM where none can run (no network, CPU only).

Its limits, stated plainly:

* It understands only that vocabulary; any other part of a description is listed as "not
  understood" in its reasoning and otherwise ignored. "Few objects" means at most three.
* A later statement about the same thing wins ("at most two objects" after "few objects").
* Rewriting a description (the review step) appends the user's comments that it understands,
  instead of rewriting the whole text as a real LLM would.
* Its reasoning is a fixed template, one line per criterion; it never hedges or errs on its own,
  so every mistake of the Annotator in the demo comes from the description or the VQA tool.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from zoo.data.shapes import COLORS, SHAPES, describe

__all__ = ["TemplateLLM", "Criteria", "read_description", "COOL", "WARM", "PATTERNS", "FEW"]

COOL = ("green", "cyan", "blue", "purple")
WARM = ("red", "orange", "yellow", "pink")
PATTERNS = ("striped", "dotted", "checkered")
FEW = 3  # what "few objects" means to this tool
_NUMBERS = {"one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_TEXTURE_WORDS = {"striped": "striped", "stripes": "striped", "stripy": "striped", "dotted": "dotted",
                  "dots": "dotted", "spotted": "dotted", "checkered": "checkered", "chequered": "checkered",
                  "checked": "checkered", "checks": "checkered"}
_NEGATION = re.compile(r"\b(no|not|nothing|none|without|never|avoid|isn't|aren't|don't|too many|too busy)\b")
_PLURAL_SHAPES = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}


def _number(word: str) -> int | None:
    word = word.lower()
    return int(word) if word.isdigit() else _NUMBERS.get(word)


@dataclass
class Criteria:
    """What a description asks for. ``allowed_colors``: None (any) or the colours every object must
    have; ``forbidden_*``: what must not appear; ``ignored``: clauses the tool did not understand."""

    max_objects: int | None = None
    min_objects: int | None = None
    allowed_colors: set | None = None
    forbidden_colors: set = field(default_factory=set)
    forbidden_textures: set = field(default_factory=set)
    required_shapes: set = field(default_factory=set)
    forbidden_shapes: set = field(default_factory=set)
    ignored: list = field(default_factory=list)

    def empty(self) -> bool:
        return (self.max_objects is None and self.min_objects is None and self.allowed_colors is None
                and not (self.forbidden_colors or self.forbidden_textures or self.required_shapes
                         or self.forbidden_shapes))

    def bad_colors(self) -> list[str]:
        """Colours whose presence breaks the criteria, in COLORS order."""
        bad = set(self.forbidden_colors)
        if self.allowed_colors is not None:
            bad |= set(COLORS) - set(self.allowed_colors)
        return [c for c in COLORS if c in bad]

    def good_colors(self) -> list[str]:
        return [c for c in COLORS if c not in self.bad_colors()]


def _clauses(text: str) -> list[str]:
    vocabulary = set(COLORS) | set(_TEXTURE_WORDS) | {"or", "and"} | set(SHAPES) | set(_PLURAL_SHAPES)
    clauses = []
    for sentence in re.split(r"[.;:!?]+", text.lower()):
        parts = sentence.split(",")
        current = parts[0]
        for part in parts[1:]:
            first = part.strip().split(" ", 1)[0] if part.strip() else ""
            if first in vocabulary:
                current += "," + part
            else:
                clauses.append(current)
                current = part
        clauses.append(current)
    return [c.strip() for c in clauses if c.strip()]


def read_description(text: str) -> Criteria:
    """The :class:`Criteria` of a description (see the module docstring for what is understood)."""
    criteria = Criteria()
    for clause in _clauses(text):
        words = re.findall(r"[a-z0-9']+", clause)
        negated = bool(_NEGATION.search(clause))
        understood = False
        # ---- counts
        if re.search(r"\bobjects?\b|\bthings?\b|\bshapes\b", clause):
            more = re.search(r"\b(\w+)\s+or\s+more\b", clause)
            span = re.search(r"\b(\w+)\s+or\s+(\w+)\s+(?:objects?|things?|shapes)\b", clause)
            most = re.search(r"\b(?:at most|no more than|up to)\s+(\w+)", clause)
            if most and _number(most.group(1)):
                criteria.max_objects, understood = _number(most.group(1)), True
            elif more and _number(more.group(1)):
                n = _number(more.group(1))
                if negated:
                    criteria.max_objects = n - 1
                else:
                    criteria.min_objects = n
                understood = True
            elif span and _number(span.group(1)) and _number(span.group(2)):
                criteria.max_objects, understood = max(_number(span.group(1)), _number(span.group(2))), True
            elif re.search(r"\bfew\b", clause):
                criteria.max_objects, understood = FEW, True
            elif re.search(r"\b(a single|one|single)\s+(object|thing|shape)\b", clause):
                criteria.max_objects, understood = 1, True
            elif re.search(r"\b(many|busy|crowded|lots of)\b", clause) and not negated:
                criteria.min_objects, understood = FEW + 1, True
        # ---- colours
        colors = [c for c in COLORS if c in words]
        if "cool" in words or "cold" in words:
            colors += [c for c in COOL if c not in colors]
        if "warm" in words:
            colors += [c for c in WARM if c not in colors]
        if colors:
            understood = True
            if negated:
                criteria.forbidden_colors |= set(colors)
                if criteria.allowed_colors is not None:
                    criteria.allowed_colors -= set(colors)
            elif re.search(r"\b(fine|ok|okay|allowed|also)\b", clause):
                criteria.forbidden_colors -= set(colors)
                if criteria.allowed_colors is not None:
                    criteria.allowed_colors |= set(colors)
            else:
                criteria.allowed_colors = set(colors) - criteria.forbidden_colors
        # ---- textures
        textures = {_TEXTURE_WORDS[w] for w in words if w in _TEXTURE_WORDS}
        if re.search(r"\bpattern(s|ed)?\b", clause) and not textures:
            textures |= set(PATTERNS)
        if "plain" in words and not negated:
            textures, negated = set(PATTERNS), True  # "only plain objects" rules every pattern out
        if textures:
            understood = True
            if negated:
                criteria.forbidden_textures |= textures
            else:
                criteria.forbidden_textures -= textures
        # ---- shapes
        shapes = {s for s in SHAPES if s in words} | {_PLURAL_SHAPES[w] for w in words if w in _PLURAL_SHAPES}
        if shapes:
            understood = True
            if negated:
                criteria.forbidden_shapes |= shapes
            else:
                criteria.required_shapes |= shapes
        if not understood:
            criteria.ignored.append(clause)
    return criteria


def _questions(criteria: Criteria) -> list[str]:
    questions = []
    if criteria.max_objects is not None or criteria.min_objects is not None:
        questions.append("How many objects are there?")
    questions += [f"Is there {'an' if c[0] in 'aeiou' else 'a'} {c} object?" for c in criteria.bad_colors()]
    questions += [f"Is there a {t} object?" for t in PATTERNS if t in criteria.forbidden_textures]
    for shape in SHAPES:
        if shape in criteria.required_shapes or shape in criteria.forbidden_shapes:
            questions.append(f"Is there {'an' if shape[0] in 'aeiou' else 'a'} {shape}?")
    return questions


def _field(prompt: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(.*)$", prompt, re.MULTILINE)
    return match.group(1).strip() if match else ""


class TemplateLLM:
    """A deterministic ``LLMTool`` for the family's prompts about shapes-world concepts (see the
    module docstring). ``tool_id`` names it for ``zoo.tools.CallCache``."""

    tool_id = "offline-template-llm:v1"

    def generate(self, prompt, **settings) -> str:
        if not isinstance(prompt, str):
            prompt = "\n".join(str(m.get("content", "")) for m in prompt)
        task = _field(prompt, "Task").lower()
        handler = {"concept attributes": self._attributes, "yes/no questions": self._questions,
                   "search queries": self._queries, "annotate image": self._annotate,
                   "refine concept": self._refine, "describe class": self._describe}.get(task)
        if handler is None:
            return "I can only answer the Modeling Collaborator prompts (their first line says 'Task: ...')."
        return handler(prompt)

    def generate_batch(self, prompts, **settings) -> list[str]:
        return [self.generate(p, **settings) for p in prompts]

    # ------------------------------------------------------------------ tasks
    def _attributes(self, prompt: str) -> str:
        c = read_description(_field(prompt, "Description"))
        items = []
        if c.max_objects is not None:
            items.append(f"positive: at most {c.max_objects} objects")
        if c.min_objects is not None:
            items.append(f"positive: at least {c.min_objects} objects")
        if c.allowed_colors is not None:
            items.append("positive: every object is " + " or ".join(c.good_colors()))
        items += [f"negative: a {color} object" for color in COLORS if color in c.forbidden_colors]
        items += [f"negative: a {t} object" for t in PATTERNS if t in c.forbidden_textures]
        items += [f"positive: a {s}" for s in SHAPES if s in c.required_shapes]
        items += [f"negative: a {s}" for s in SHAPES if s in c.forbidden_shapes]
        if not items:
            items = ["positive: the image matches the description"]
        return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))

    def _questions(self, prompt: str) -> str:
        questions = _questions(read_description(_field(prompt, "Description"))) or ["Describe the image."]
        limit = re.search(r"one question per line, at most (\d+)", prompt)
        if limit:
            questions = questions[:int(limit.group(1))]
        return "\n".join(f"{i}. {q}" for i, q in enumerate(questions, 1))

    def _positive_objects(self, c: Criteria, k: int) -> list[list[dict]]:
        colors = c.good_colors() or list(COLORS)
        textures = [t for t in ("plain", *PATTERNS) if t not in c.forbidden_textures]
        shapes = [s for s in SHAPES if s not in c.forbidden_shapes]
        most = max(1, min(c.max_objects or 2, 2))
        least = max(1, c.min_objects or 1)
        scenes = []
        for i in range(k):
            count = least + (i % max(1, most - least + 1)) if most >= least else least
            objects = [{"shape": shapes[(i + 3 * j) % len(shapes)], "color": colors[(i + j) % len(colors)],
                        "texture": textures[(i // 2 + j) % len(textures)] if i % 3 == 2 else "plain"}
                       for j in range(count)]
            scenes.append(objects)
        return scenes

    def _negative_objects(self, c: Criteria, k: int) -> list[list[dict]]:
        colors = c.good_colors() or list(COLORS)
        bad_colors = c.bad_colors()
        scenes = []
        for i in range(k):
            shape = SHAPES[(2 * i) % len(SHAPES)]
            kind = ("color", "count", "texture", "shape")[i % 4]
            if kind == "color" and bad_colors:
                scenes.append([{"shape": shape, "color": bad_colors[(i // 4) % len(bad_colors)], "texture": "plain"}])
            elif kind == "count" and c.max_objects is not None:
                scenes.append([{"shape": shape, "color": colors[i % len(colors)], "texture": "plain"}]
                              * (c.max_objects + 1))
            elif kind == "texture" and c.forbidden_textures:
                texture = [t for t in PATTERNS if t in c.forbidden_textures][(i // 4) % len(c.forbidden_textures)]
                scenes.append([{"shape": shape, "color": colors[i % len(colors)], "texture": texture}])
            elif kind == "shape" and c.forbidden_shapes:
                scenes.append([{"shape": sorted(c.forbidden_shapes)[0], "color": colors[i % len(colors)],
                                "texture": "plain"}])
            elif bad_colors:
                scenes.append([{"shape": shape, "color": bad_colors[i % len(bad_colors)], "texture": "plain"}])
        return scenes

    @staticmethod
    def _phrase(objects: list[dict]) -> str:
        groups: dict[tuple, int] = {}
        for o in objects:
            key = (o["shape"], o["color"], o["texture"])
            groups[key] = groups.get(key, 0) + 1
        parts = [describe({"shape": s, "color": col, "texture": t}, count=n) for (s, col, t), n in groups.items()]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def _queries(self, prompt: str) -> str:
        c = read_description(_field(prompt, "Description"))
        numbers = re.search(r"Write (\d+) short.*?and (\d+) queries", prompt, re.DOTALL)
        positives, negatives = (int(numbers.group(1)), int(numbers.group(2))) if numbers else (8, 4)
        lines = [f"positive: {self._phrase(o)}" for o in self._positive_objects(c, positives)]
        lines += [f"negative: {self._phrase(o)}" for o in self._negative_objects(c, negatives)]
        return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1))

    def _describe(self, prompt: str) -> str:
        label = re.search(r'picture of "([^"]*)"', prompt)
        label = label.group(1) if label else ""
        count = re.search(r"Write (\d+) different", prompt)
        count = int(count.group(1)) if count else 5
        c = read_description(_field(prompt, "Context"))
        negative = bool(re.match(r"\s*(not|anything that is not|no)\b", label.lower()))
        scenes = self._negative_objects(c, count) if negative else self._positive_objects(c, count)
        return "\n".join(f"{i}. A picture of {self._phrase(o)}." for i, o in enumerate(scenes, 1))

    def _annotate(self, prompt: str) -> str:
        c = read_description(_field(prompt, "Description"))
        answers = {}
        for q, a in re.findall(r"^- Q: (.*?) A: (.*)$", prompt, re.MULTILINE):
            answers[q.strip().lower()] = a.strip().lower()
        lines, verdict = [], True
        if c.max_objects is not None or c.min_objects is not None:
            count = answers.get("how many objects are there?", "")
            if count.isdigit():
                n = int(count)
                fits = (c.max_objects is None or n <= c.max_objects) and (c.min_objects is None or n >= c.min_objects)
                bound = f"at most {c.max_objects}" if c.max_objects is not None else f"at least {c.min_objects}"
                lines.append(f"The image has {n} objects and the description allows {bound}: "
                             f"{'this fits' if fits else 'this does not fit'}.")
                verdict &= fits
            else:
                lines.append("The number of objects is not known; I cannot check it.")
        for color in c.bad_colors():
            article = "an" if color[0] in "aeiou" else "a"
            if answers.get(f"is there {article} {color} object?") == "yes":
                lines.append(f"There is {article} {color} object, which the description rules out.")
                verdict = False
        if c.bad_colors() and verdict:
            lines.append("No object has a colour the description rules out.")
        for texture in PATTERNS:
            if texture in c.forbidden_textures and answers.get(f"is there a {texture} object?") == "yes":
                lines.append(f"There is a {texture} object, which the description rules out.")
                verdict = False
        for shape in SHAPES:
            article = "an" if shape[0] in "aeiou" else "a"
            present = answers.get(f"is there {article} {shape}?") == "yes"
            if shape in c.forbidden_shapes and present:
                lines.append(f"There is {article} {shape}, which the description rules out.")
                verdict = False
            if shape in c.required_shapes and not present:
                lines.append(f"There is no {shape}, which the description asks for.")
                verdict = False
        if c.ignored:
            lines.append("Parts of the description I could not check: " + "; ".join(c.ignored) + ".")
        if not lines:
            lines.append("Nothing in the description can be checked against the answers.")
        lines.append(f"Final answer: {'Yes' if verdict else 'No'}")
        return "\n".join(lines)

    def _refine(self, prompt: str) -> str:
        description = _field(prompt, "Current description")
        comments = re.findall(r"User comment: (.*)$", prompt, re.MULTILINE)
        added = []
        for comment in comments:
            for sentence in re.split(r"(?<=[.!?])\s+", comment.strip()):
                if sentence and not sentence.endswith((".", "!", "?")):
                    sentence += "."
                if sentence and sentence not in added and sentence not in description \
                        and not read_description(sentence).empty():
                    added.append(sentence)
        text = " ".join([description.rstrip(), *added]) if added else description
        return f"Description: {text}"
