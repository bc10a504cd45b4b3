"""Shapes-world text: compositional prompts with their specs, and the caption parser."""
from __future__ import annotations

import re

import numpy as np

from zoo.errors import ConfigError

from .world import COLORS, CONCEPTS, SHAPES, SIZE_RELATIONS, SPATIAL_RELATIONS, TEXTURES, UNUSED_LOOKS, describe

__all__ = ["CATEGORIES", "sample_prompt", "parse_caption", "parse_phrase"]

#: T2I-CompBench's categories as the shapes world has them ("non-spatial" is a size relation).
CATEGORIES: tuple[str, ...] = ("color", "shape", "texture", "spatial", "numeracy", "non-spatial")

_NUMBERS = {"a": 1, "an": 1, "one": 1, "the": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_TEXTURE_WORDS = {"striped": "striped", "stripy": "striped", "dotted": "dotted", "spotted": "dotted",
                  "checkered": "checkered", "chequered": "checkered", "checked": "checkered", "plain": "plain"}
_PLURALS = {("crosses" if s == "cross" else s + "s"): s for s in SHAPES}
_GENERIC = {"object", "objects", "shape", "shapes", "thing", "things"}
# Longest first, so "to the left of" wins over "left of".
_RELATION_WORDS = [
    ("to the left of", "left of"), ("on the left of", "left of"), ("left of", "left of"),
    ("to the right of", "right of"), ("on the right of", "right of"), ("right of", "right of"),
    ("on top of", "above"), ("above", "above"), ("below", "below"), ("under", "below"), ("beneath", "below"),
    ("bigger than", "bigger than"), ("larger than", "bigger than"), ("smaller than", "smaller than"),
]


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise ConfigError(f"rng must be a numpy Generator or an integer seed, got {type(rng).__name__}.")


def _pick(rng, values, exclude=()):
    pool = [v for v in values if v not in exclude]
    return str(pool[int(rng.integers(len(pool)))])


def sample_prompt(category: str, rng=None) -> tuple[str, dict]:
    """A T2I-CompBench-style prompt of ``category`` and the spec it asks for.

    Categories (:data:`CATEGORIES`): "color" ("a red circle and a blue square": two shapes in
    two colours), "shape" ("a green star and a green ring": two shapes, one colour), "texture"
    ("a striped red circle and a dotted blue square"), "spatial" ("a red circle to the left of
    a blue square"; left of / right of / above / below), "numeracy" ("three red circles",
    "two blue stars and one green square"; 2-4 objects), "non-spatial" ("a red circle bigger
    than a blue square"). The spec (``{"category", "objects", "relations", "seed"}``) has no
    positions: :func:`zoo.data.shapes.render` lays it out, and
    :func:`zoo.data.shapes.judge.check` scores an image against it. ``rng`` is a numpy
    Generator or an integer seed.

    Raises ConfigError for a category outside CATEGORIES.
    """
    rng = _as_rng(rng)
    if category not in CATEGORIES:
        raise ConfigError(f"Unknown prompt category {category!r}; use one of {', '.join(CATEGORIES)}.")
    colors, relations = list(COLORS), []
    first_shape = _pick(rng, SHAPES)
    second_shape = _pick(rng, SHAPES, exclude=(first_shape,))
    first_color = _pick(rng, colors)
    second_color = _pick(rng, colors, exclude=(first_color,))
    a = {"shape": first_shape, "color": first_color, "texture": None}  # None: any (drawn plain)
    b = {"shape": second_shape, "color": second_color, "texture": None}
    if category == "shape":
        b["color"] = a["color"]
    elif category == "texture":
        unused = {shape: [t for s, t in UNUSED_LOOKS if s == shape] for shape in (a["shape"], b["shape"])}
        a["texture"] = _pick(rng, TEXTURES[1:], exclude=unused[a["shape"]])
        b["texture"] = _pick(rng, TEXTURES[1:], exclude=[a["texture"], *unused[b["shape"]]])
    if category == "numeracy":
        counts = [(2,), (3,), (4,), (2, 1), (1, 2), (2, 2), (3, 1), (1, 3)][int(rng.integers(8))]
        groups = [a, b][:len(counts)]
        objects = [dict(g) for g, c in zip(groups, counts) for _ in range(c)]
        article = "one" if len(counts) > 1 else "a"
        text = " and ".join(describe(g, count=c, article=article) for g, c in zip(groups, counts))
    else:
        objects = [a, b]
        if category in ("spatial", "non-spatial"):
            pool = SPATIAL_RELATIONS if category == "spatial" else SIZE_RELATIONS
            relation = pool[int(rng.integers(len(pool)))]
            relations = [{"subject": 0, "relation": relation, "object": 1}]
            word = {"left of": "to the left of", "right of": "to the right of"}.get(relation, relation)
            text = f"{describe(a)} {word} {describe(b)}"
        else:
            text = f"{describe(a)} and {describe(b)}"
    spec = {"category": category, "objects": objects, "relations": relations, "seed": int(rng.integers(2 ** 31))}
    return text, spec


def parse_phrase(phrase: str) -> tuple[int, dict]:
    """``"two striped red circles"`` -> ``(2, {"shape": "circle", "color": "red", "texture": "striped",
    "mark": None})``. Unstated attributes are ``None`` (any); "<bo>" gives the concept's look with
    ``"concept": "bo"``. Raises ``ConfigError`` on words it does not know.
    """
    words = phrase.strip().lower().replace(",", " ").split()
    if not words:
        raise ConfigError("Empty object phrase; expected something like 'a red circle'.")
    if len(words) == 1 or (len(words) == 2 and words[0] in ("the", "a")):
        token = words[-1]
        match = re.fullmatch(r"<([a-z0-9_-]+)>", token)
        if match:
            if match.group(1) not in CONCEPTS:
                raise ConfigError(f"Unknown concept {token}; the concepts are "
                                  f"{', '.join('<' + c + '>' for c in CONCEPTS)}.")
            look = CONCEPTS[match.group(1)]
            return 1, {"shape": look.shape, "color": look.color, "texture": look.texture, "mark": look.mark,
                       "concept": look.id}
    count, obj = 1, {"shape": None, "color": None, "texture": None, "mark": None}
    if words[0] in _NUMBERS:
        count = _NUMBERS[words.pop(0)]
    elif words[0].isdigit():
        count = int(words.pop(0))
    if len(words) >= 3 and words[-3:-1] in (["with", "a"], ["with", "an"]):
        mark = {"dot": "dot", "outline": "outline"}.get(words[-1])
        if mark is None:
            raise ConfigError(f"Cannot read {phrase!r}: the marks are 'with a dot' and 'with an outline'.")
        obj["mark"], words = mark, words[:-3]
    if not words:
        raise ConfigError(f"Cannot read {phrase!r}: no shape named.")
    noun = words.pop()
    if noun in SHAPES or noun in _PLURALS:
        obj["shape"] = _PLURALS.get(noun, noun)
    elif noun not in _GENERIC:
        raise ConfigError(f"Cannot read {phrase!r}: {noun!r} is not a shape ({', '.join(SHAPES)}) or 'object'.")
    for word in words:
        if word in COLORS:
            obj["color"] = word
        elif word in ("grey",):
            raise ConfigError(f"Cannot read {phrase!r}: objects are never grey; the colours are {', '.join(COLORS)}.")
        elif word in _TEXTURE_WORDS:
            obj["texture"] = _TEXTURE_WORDS[word]
        else:
            raise ConfigError(f"Cannot read {phrase!r}: unknown word {word!r} (colours: {', '.join(COLORS)}; "
                              f"textures: {', '.join(TEXTURES)}).")
    return count, obj


def _split_relation(text: str):
    for words, relation in _RELATION_WORDS:
        marker = f" {words} "
        if marker in text:
            left, right = text.split(marker, 1)
            return left, relation, right
    return None


def parse_caption(text: str) -> dict:
    """Read a shapes-world caption or prompt back into a spec (objects without positions).

    Understands what :func:`zoo.data.shapes.caption_for` and :func:`sample_prompt` write: one
    relation between two single objects ("a red circle to the left of a blue square"; also
    "on top of", "under", "larger than"), or a list of counted phrases joined by commas and
    "and" ("two red circles, a blue square and a green star"). Concept tokens ("<bo>") stand
    for the concept's look. Unstated attributes are ``None`` (any), except that where one phrase
    names a texture the others are plain. Raises ``ConfigError`` naming the caption when it
    cannot be read.
    """
    clean = " ".join(str(text).lower().strip().rstrip(".").split())
    try:
        split = _split_relation(clean)
        if split is not None:
            left, relation, right = split
            (n_left, a), (n_right, b) = parse_phrase(left), parse_phrase(right)
            if n_left != 1 or n_right != 1:
                raise ConfigError("a relation must join two single objects")
            spec = {"objects": [a, b], "relations": [{"subject": 0, "relation": relation, "object": 1}]}
        else:
            objects = []
            for part in re.split(r",\s*(?:and\s+)?|\s+and\s+", clean):
                count, obj = parse_phrase(part)
                objects.extend(dict(obj) for _ in range(count))
            spec = {"objects": objects, "relations": []}
    except ConfigError as error:
        raise ConfigError(f"Cannot parse caption {text!r}: {error}") from None
    # Where one phrase names a texture, a phrase without one means plain ("two striped red
    # circles and a red circle").
    if any(o["texture"] is not None for o in spec["objects"]):
        for obj in spec["objects"]:
            if obj["texture"] is None and obj.get("concept") is None:
                obj["texture"] = "plain"
    return spec
