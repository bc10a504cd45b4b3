"""The scene judge: reads shapes-world objects off the pixels and answers questions about them.

``detect`` segments an image by colour (each saturated pixel takes the named colour nearest
in hue; connected components of one colour are objects), names each component's shape by the
best-fitting template (intersection-over-union with every shape drawn in the component's box),
and reads texture and concept marks from the dark-shade pixels inside it. ``answer`` handles
yes/no, count, colour, shape, texture and relation questions; ``check`` scores an image
against a caption or spec per T2I-CompBench category. It is the offline stand-in for a VQA
model or an LLM judge; ``ShapesJudge`` and ``ShapesMaskProposer`` adapt it to the
``VQATool`` and ``MaskProposer`` protocols of :mod:`zoo.tools`.
"""
from __future__ import annotations

import colorsys
import functools
import re
from dataclasses import dataclass, field

import numpy as np

from zoo.errors import ConfigError

from .language import _RELATION_WORDS, _TEXTURE_WORDS, parse_caption, parse_phrase
from .world import (
    COLORS, CONCEPTS, EXTENTS, MARK_CENTERS, SHAPES, SIZE_RELATIONS, SPATIAL_RELATIONS, as_spec, caption_for,
    relation_between, shape_mask,
)

__all__ = ["Detection", "detect", "answer", "answer_from_objects", "caption", "check", "sample_questions",
           "ShapesJudge", "ShapesMaskProposer", "QUESTION_KINDS"]

QUESTION_KINDS = ("exist", "count", "color", "shape", "texture", "relation")
_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for name, rgb in COLORS.items()}
_COLOR_NAMES = list(COLORS)
_HUE_TABLE = np.array([_HUES[name] for name in _COLOR_NAMES])


@dataclass
class Detection:
    """One object found in an image.

    ``bbox``: (x0, y0, x1, y1) pixels, x1/y1 exclusive; ``mask``: bool (H, W); ``score``: the
    shape template's IoU with the mask, in [0, 1]; ``center``/``size``: box centre and the
    box's larger side as fractions of the image width/height (the units of
    :class:`zoo.data.shapes.ShapeObject`); ``concept``: the concept id whose look (shape,
    colour, texture, mark) this object has, if any.
    """

    shape: str
    color: str
    texture: str
    mark: str | None
    bbox: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False)
    score: float
    center: tuple[float, float]
    size: float
    area: int
    concept: str | None = None


# ----------------------------------------------------------------------------- detection

def _as_array(image) -> np.ndarray:
    from zoo.image import load_image

    return np.asarray(load_image(image), dtype=np.uint8)


def _color_map(rgb: np.ndarray, min_saturation: float, min_value: float, max_hue_distance: float,
               min_chroma: float) -> np.ndarray:
    """Per pixel: index into COLORS, or -1 for background (unsaturated, dark, or no close hue)."""
    x = rgb.astype(np.float64) / 255.0
    high, low = x.max(axis=-1), x.min(axis=-1)
    chroma = high - low
    # Chroma as a fraction of the brightest channel; a floor on chroma itself keeps dark, barely
    # tinted pixels (compression noise on a dark background) out.
    saturation = np.where(chroma >= min_chroma, chroma / np.maximum(high, 1e-12), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(chroma, 1e-12)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    distance = np.abs(hue[..., None] - _HUE_TABLE)
    distance = np.minimum(distance, 360 - distance)
    nearest = distance.argmin(axis=-1)
    ok = (saturation >= min_saturation) & (high >= min_value) & (distance.min(axis=-1) <= max_hue_distance)
    return np.where(ok, nearest, -1)


_FITS = [(grow, (dx, dy)) for grow in (0.0, 0.5, 1.0) for dx in (-0.25, 0.0, 0.25) for dy in (-0.25, 0.0, 0.25)]


@functools.lru_cache(maxsize=512)
def _templates(shape: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``shape`` drawn over a ``height`` x ``width`` box in every fit of ``_FITS`` (the box grown by ``grow``
    pixels and shifted by ``(dx, dy)`` pixels: the pixel box of a rendered object is up to a pixel smaller
    than the object, so the judge tries a few fits). Returns the bool stack ``[len(_FITS), height, width]``
    and the pixel count of each template; all fits are drawn in one vectorised call."""
    ex, ey = EXTENTS[shape]
    grow = np.array([g for g, _ in _FITS])[:, None, None]
    dx = np.array([s[0] for _, s in _FITS])[:, None, None]
    dy = np.array([s[1] for _, s in _FITS])[:, None, None]
    a = ((np.arange(width)[None, None, :] + 0.5 - dx - width / 2) / (width + grow)) * 2 * ex
    b = ((np.arange(height)[None, :, None] + 0.5 - dy - height / 2) / (height + grow)) * 2 * ey
    stack = np.ascontiguousarray(shape_mask(shape, a, b))
    sums = np.count_nonzero(stack, axis=(1, 2))
    stack.flags.writeable = False  # cached: shared between calls
    sums.flags.writeable = False
    return stack, sums


def _classify_shape(crop: np.ndarray) -> tuple[str, float]:
    best, best_iou = SHAPES[0], -1.0
    total = int(crop.sum())
    for shape in SHAPES:
        stack, sums = _templates(shape, *crop.shape)
        overlap = np.count_nonzero(stack & crop, axis=(1, 2))
        union = total + sums - overlap
        iou = np.divide(overlap, union, out=np.zeros(len(_FITS)), where=union > 0)
        k = int(iou.argmax())  # the first best fit, as a loop with a strict ">" keeps
        if iou[k] > best_iou:
            best, best_iou = shape, float(iou[k])
    return best, best_iou


def _texture_and_mark(crop_mask: np.ndarray, crop_value: np.ndarray, shape: str) -> tuple[str, str | None]:
    from scipy.ndimage import binary_erosion, label

    values = crop_value[crop_mask]
    if values.size < 6:
        return "plain", None
    light_level = np.percentile(values, 90)
    dark = (crop_value < 0.78 * light_level) & crop_mask
    height, width = crop_mask.shape
    side = max(height, width)
    mark = None
    # The renderer's outline is round(0.08 * side) pixels wide; the box side seen here may be a
    # pixel off, so take the surely-drawn width (floor) for the test and one more to strip it.
    sure_width = max(1, int(0.08 * side))
    inner = binary_erosion(np.pad(crop_mask, 1))[1:-1, 1:-1]
    border, second = crop_mask & ~inner, inner & ~binary_erosion(np.pad(inner, 1))[1:-1, 1:-1]
    # The border alone darkens when an image is blurred or compressed: an outline of two or
    # more pixels must darken the second layer too.
    outline = border.sum() >= 8 and dark[border].mean() >= 0.8 and \
        (sure_width < 2 or (second.sum() > 0 and dark[second].mean() >= 0.8))
    usable = crop_mask.copy()
    if outline:
        mark = "outline"
        strip = int(round(0.08 * side)) + 1
        usable = binary_erosion(np.pad(crop_mask, strip), iterations=strip)[strip:-strip, strip:-strip]
    else:
        ex, ey = EXTENTS[shape]
        mx, my = MARK_CENTERS.get(shape, (0.0, 0.0))
        px = (mx / (2 * ex) + 0.5) * width
        py = (my / (2 * ey) + 0.5) * height
        yy, xx = np.mgrid[0:height, 0:width] + 0.5
        distance2 = ((xx - px) / width) ** 2 + ((yy - py) / height) ** 2
        disc = (distance2 < 0.16 ** 2) & crop_mask  # wider than a texture dot or a checker cell
        if disc.sum() >= 3 and dark[disc].mean() >= 0.85:
            mark = "dot"
            usable = crop_mask & (distance2 >= 0.26 ** 2)
    if usable.sum() < 6:
        return "plain", mark
    fraction = dark[usable].mean()
    if fraction < 0.06:
        return "plain", mark
    rows = [dark[y][usable[y]] for y in range(height) if usable[y].sum() >= 2]
    weights = np.array([len(r) for r in rows], dtype=np.float64)
    mixed = np.array([min(r.mean(), 1 - r.mean()) for r in rows])
    if weights.sum() and (mixed * weights).sum() / weights.sum() < 0.12:
        return "striped", mark
    # Dots leave the light pixels one connected region (or a few regions much larger than the
    # dots); checker cells, light and dark alike, touch only at corners.
    light_parts, n_light = label(usable & ~dark)
    dark_parts, n_dark = label(dark & usable)
    if not n_light or not n_dark:
        return "plain", mark
    light_sizes = np.bincount(light_parts.ravel())[1:]
    dotted = light_sizes.max() >= 0.5 * light_sizes.sum() or light_sizes.mean() >= 2.5 * (dark & usable).sum() / n_dark
    return ("dotted" if dotted else "checkered"), mark


def _concept_of(shape, color, texture, mark) -> str | None:
    for concept in CONCEPTS.values():
        if (concept.shape, concept.color, concept.texture, concept.mark) == (shape, color, texture, mark):
            return concept.id
    return None


def detect(image, *, min_area: int | None = None, min_saturation: float = 0.35, min_chroma: float = 0.12,
           min_value: float = 0.15, max_hue_distance: float = 30.0) -> list[Detection]:
    """Objects in ``image`` (anything :func:`zoo.image.load_image` reads), left to right.

    A pixel with HSV saturation >= ``min_saturation``, chroma (max - min channel, in [0, 1])
    >= ``min_chroma`` and value >= ``min_value`` takes the colour of :data:`COLORS` nearest in
    hue (within ``max_hue_distance`` degrees); other pixels are background. Each 8-connected component of one colour with at least
    ``min_area`` pixels (default 0.4% of the image, at least 12) is an object: its shape is the
    template with the best IoU in the component's box (the IoU is the ``score``), its texture
    and mark come from pixels darker than 0.78 of its bright level.
    """
    from scipy.ndimage import find_objects, label

    rgb = _as_array(image)
    height, width = rgb.shape[:2]
    if min_area is None:
        min_area = max(12, int(0.004 * height * width))
    colors = _color_map(rgb, min_saturation, min_value, max_hue_distance, min_chroma)
    value = rgb.max(axis=-1).astype(np.float64)
    found = []
    eight = np.ones((3, 3), dtype=bool)
    for index, name in enumerate(_COLOR_NAMES):
        labels, count = label(colors == index, structure=eight)
        for number, box in enumerate(find_objects(labels), 1):
            if box is None:
                continue
            crop_mask = labels[box] == number
            area = int(crop_mask.sum())
            if area < min_area:
                continue
            y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
            shape, score = _classify_shape(crop_mask)
            texture, mark = _texture_and_mark(crop_mask, value[box], shape)
            mask = np.zeros((height, width), dtype=bool)
            mask[box] = crop_mask
            found.append(Detection(shape=shape, color=name, texture=texture, mark=mark, bbox=(x0, y0, x1, y1),
                                   mask=mask, score=round(score, 4),
                                   center=((x0 + x1) / 2 / width, (y0 + y1) / 2 / height),
                                   size=max((x1 - x0) / width, (y1 - y0) / height), area=area,
                                   concept=_concept_of(shape, name, texture, mark)))
    found.sort(key=lambda d: (d.center[0], d.center[1]))
    return found


# ----------------------------------------------------------------------------- questions

def _value(obj, key):
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _matches(obj, want: dict) -> bool:
    if want.get("concept") is not None:
        return _value(obj, "concept") == want["concept"]
    for key in ("shape", "color", "texture", "mark"):
        if want.get(key) is not None and (_value(obj, key) or ("plain" if key == "texture" else None)) != want[key]:
            return False
    return True


def _find(objects, phrase: str):
    count, want = parse_phrase(phrase)
    return count, want, [o for o in objects if _matches(o, want)]


def _list(values) -> str:
    unique = list(dict.fromkeys(values))
    return " and ".join(unique) if unique else "none"


def _normalise(question: str) -> str:
    text = " ".join(str(question).lower().replace("colour", "color").split())
    return text.rstrip("?.! ").strip()


_WHERE = r"(?: in (?:the|this) (?:image|picture|photo|scene))?"
_RELATION_RE = "|".join(re.escape(words) for words, _ in _RELATION_WORDS)
_ATTRIBUTES = {**{c: ("color", c) for c in COLORS}, **{w: ("texture", t) for w, t in _TEXTURE_WORDS.items()},
               **{s: ("shape", s) for s in SHAPES}}
_PATTERNS = [
    ("count", re.compile(rf"^how many (?P<np>.+?)(?: are there| is there| do you see| can you see| are visible)?"
                         rf"{_WHERE}$")),
    ("exist", re.compile(rf"^(?:is|are) there (?:any )?(?P<np>.+?){_WHERE}$")),
    ("exist", re.compile(rf"^(?:is|are) (?P<np><[a-z0-9_-]+>){_WHERE}$")),
    ("color", re.compile(rf"^what (?:is the )?color (?:is|are) (?:the )?(?P<np>.+?){_WHERE}$")),
    ("shape", re.compile(rf"^what (?:is the )?shape (?:is|are) (?:the )?(?P<np>.+?){_WHERE}$")),
    ("texture", re.compile(rf"^what (?:is the )?(?:texture|pattern) (?:is|are|does|do) (?:the )?(?P<np>.+?)"
                           rf"(?: have)?{_WHERE}$")),
    ("relation", re.compile(rf"^(?:is|are) (?:the )?(?P<a>.+?) (?P<rel>{_RELATION_RE}) (?:the )?(?P<b>.+?){_WHERE}$")),
    ("attribute", re.compile(rf"^(?:is|are) (?:the )?(?P<np>.+?) (?P<attr>{'|'.join(_ATTRIBUTES)}){_WHERE}$")),
    ("caption", re.compile(r"^(?:describe|caption)\b.*|^what (?:is|do you see|can you see|objects are|shapes are)"
                           r"(?: there)?(?: in)? (?:the|this) (?:image|picture|photo|scene)$")),
]

QUESTION_FORMS = ("Is there a red circle? / Are there two squares? / Is <bo> in the image?",
                  "How many squares are there? / How many red objects?",
                  "What color is the star? / What shape is the red object? / What texture does the circle have?",
                  "Is the red circle to the left of the blue square? (left of, right of, above, below, "
                  "bigger than, smaller than)",
                  "Is the circle striped? / Is the star red?", "Describe the image.")


def answer_from_objects(objects, question: str) -> str:
    """Answer ``question`` about a list of objects (detections, ``ShapeObject`` s or dicts).

    Yes/no questions answer "yes"/"no"; counts are digits ("2"); colour, shape and texture
    questions give the names of every matching object, left to right, joined by " and "
    ("red and blue"), or "none". A relation question is "yes" when some pair of matching
    objects has the relation (:func:`zoo.data.shapes.relation_between`). A count word in an
    existence question asks for exactly that many ("Are there two squares?"). Raises
    ``ConfigError`` for a question outside :data:`QUESTION_FORMS`.
    """
    text = _normalise(question)
    ordered = sorted(objects, key=lambda o: tuple(_value(o, "center")))
    for kind, pattern in _PATTERNS:
        match = pattern.match(text)
        if match is None:
            continue
        try:
            if kind == "count":
                return str(len(_find(ordered, match["np"])[2]))
            if kind == "exist":
                count, _, found = _find(ordered, match["np"])
                explicit = match["np"].split()[0] not in ("a", "an", "any", "one") and count > 1
                return "yes" if (len(found) == count if explicit else len(found) >= 1) else "no"
            if kind in ("color", "shape", "texture"):
                found = _find(ordered, match["np"])[2]
                return _list(_value(o, kind) or "plain" for o in found)
            if kind == "relation":
                relation = dict(_RELATION_WORDS)[match["rel"]]
                firsts, seconds = _find(ordered, match["a"])[2], _find(ordered, match["b"])[2]
                ok = any(a is not b and relation_between(a, b, relation) for a in firsts for b in seconds)
                return "yes" if ok else "no"
            if kind == "attribute":
                key, value = _ATTRIBUTES[match["attr"]]
                found = _find(ordered, match["np"])[2]
                return "yes" if any((_value(o, key) or "plain") == value for o in found) else "no"
            return caption_for(ordered)[0]
        except ConfigError:
            continue  # the phrase did not parse: try the next form
    raise ConfigError(f"The shapes judge cannot read the question {question!r}. It understands: "
                      + " | ".join(QUESTION_FORMS))


def answer(image, question: str) -> str:
    """Answer a question about an image from its pixels (:func:`detect` + :func:`answer_from_objects`)."""
    return answer_from_objects(detect(image), question)


def caption(image) -> str:
    """The template caption of the objects detected in ``image``, left to right."""
    return caption_for(detect(image))[0]


# ----------------------------------------------------------------------------- scoring

_COST = {"shape": 1.0, "color": 1.0, "texture": 0.5, "mark": 0.5}


def _mismatch(want: dict, obj) -> float:
    if want.get("concept") is not None and _value(obj, "concept") != want["concept"]:
        return 3.0
    cost = 0.0
    for key, weight in _COST.items():
        if want.get(key) is not None and (_value(obj, key) or ("plain" if key == "texture" else None)) != want[key]:
            cost += weight
    return cost


def check(image, caption_or_spec) -> dict:
    """Score ``image`` against a caption, a spec or a :class:`Scene`, per T2I-CompBench category.

    Spec objects are matched one-to-one to detections (Hungarian assignment on attribute
    mismatches). Scores in [0, 1], present only when the spec states that category: "color"
    (objects whose colour and shape are right), "shape", "texture" (when a non-plain texture is
    asked for), "numeracy" (groups of identical objects counted exactly, each detection in the
    most specific group it fits; present for counts of two or more or a numeracy prompt),
    "spatial" / "non-spatial" (relations that hold between some matching pair). "objects":
    objects matched in every stated attribute. "overall": the mean of the category scores and
    "objects"; "passed": every score is 1 and no extra object was detected beyond the spec's.
    """
    from scipy.optimize import linear_sum_assignment

    spec = parse_caption(caption_or_spec) if isinstance(caption_or_spec, str) else as_spec(caption_or_spec)
    wants = spec["objects"]
    found = detect(image)
    assigned: list = [None] * len(wants)
    if wants and found:
        cost = np.array([[_mismatch(w, d) for d in found] for w in wants])
        for i, j in zip(*linear_sum_assignment(cost)):
            assigned[i] = found[j]

    def share(flags):
        flags = list(flags)
        return float(np.mean(flags)) if flags else None

    scores = {}
    colored = [(w, d) for w, d in zip(wants, assigned) if w.get("color") is not None]
    if colored:
        scores["color"] = share(d is not None and d.color == w["color"] and w.get("shape") in (None, d.shape)
                                for w, d in colored)
    shaped = [(w, d) for w, d in zip(wants, assigned) if w.get("shape") is not None]
    if shaped:
        scores["shape"] = share(d is not None and d.shape == w["shape"] for w, d in shaped)
    if any(w.get("texture") not in (None, "plain") for w in wants):
        scores["texture"] = share(d is not None and d.texture == w["texture"]
                                  for w, d in zip(wants, assigned) if w.get("texture") is not None)
    groups: dict[tuple, int] = {}
    for want in wants:
        key = tuple(want.get(k) for k in ("shape", "color", "texture", "mark", "concept"))
        groups[key] = groups.get(key, 0) + 1
    if any(n >= 2 for n in groups.values()) or spec.get("category") == "numeracy":
        # Each detection counts once, for the most specific group it fits: in "a blue triangle
        # with an outline and three blue triangles" the outlined one is not a fourth triangle.
        keys = ("shape", "color", "texture", "mark", "concept")
        order = sorted(groups, key=lambda key: -sum(v is not None for v in key))
        counted = dict.fromkeys(groups, 0)
        for d in found:
            for key in order:
                if _matches(d, dict(zip(keys, key))):
                    counted[key] += 1
                    break
        scores["numeracy"] = share(counted[key] == n for key, n in groups.items())
    for name, kinds in (("spatial", SPATIAL_RELATIONS), ("non-spatial", SIZE_RELATIONS)):
        relations = [r for r in spec.get("relations", []) if r["relation"] in kinds]
        if relations:
            scores[name] = share(
                any(a is not b and relation_between(a, b, r["relation"])
                    for a in found if _matches(a, wants[r["subject"]])
                    for b in found if _matches(b, wants[r["object"]]))
                for r in relations)
    scores["objects"] = share(d is not None and _mismatch(w, d) == 0 for w, d in zip(wants, assigned)) \
        if wants else 1.0
    scores["overall"] = float(np.mean(list(scores.values())))
    scores["passed"] = all(v == 1.0 for k, v in scores.items() if k != "overall") and len(found) <= len(wants)
    return scores


# ----------------------------------------------------------------------------- question sets

def sample_questions(scene, rng=None, kinds=QUESTION_KINDS, negatives: bool = True) -> list[tuple[str, str, str]]:
    """Questions about a scene with ground-truth answers: ``[(question, answer, kind), ...]``.

    ``scene`` is a :class:`zoo.data.shapes.Scene` (or a list of objects). Per kind at most a
    few questions: "exist" asks POPE-style about an object that is there and (with
    ``negatives``) one that is not (a random colour-shape pair absent from the scene); "count"
    about a shape; "color"/"texture" about a shape that occurs once; "shape" about a colour
    that occurs once; "relation" about a pair whose relation is unambiguous (dominant axis at
    least 1.5x the other, or sizes at least 1.8x apart / at most 1.2x apart). Answers come from
    :func:`answer_from_objects` on the scene's own objects.
    """
    from .language import _as_rng

    rng = _as_rng(rng)
    objects = list(getattr(scene, "objects", scene))
    questions = []

    def ask(question, kind):
        questions.append((question, answer_from_objects(objects, question), kind))

    shapes = [o.shape for o in objects]
    colors = [o.color for o in objects]
    if "exist" in kinds and objects:
        o = objects[int(rng.integers(len(objects)))]
        ask(f"Is there a {o.color} {o.shape}?", "exist")
        if negatives:
            present = {(x.color, x.shape) for x in objects}
            absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
            c, s = absent[int(rng.integers(len(absent)))]
            ask(f"Is there a {c} {s}?", "exist")
    if "count" in kinds:
        shape = str(SHAPES[int(rng.integers(len(SHAPES)))]) if rng.random() < 0.3 or not objects \
            else shapes[int(rng.integers(len(shapes)))]
        plural = "crosses" if shape == "cross" else shape + "s"
        ask(f"How many {plural} are there?", "count")
    unique_shapes = [s for s in dict.fromkeys(shapes) if shapes.count(s) == 1]
    unique_colors = [c for c in dict.fromkeys(colors) if colors.count(c) == 1]
    if "color" in kinds and unique_shapes:
        ask(f"What color is the {unique_shapes[int(rng.integers(len(unique_shapes)))]}?", "color")
    if "texture" in kinds and unique_shapes:
        ask(f"What texture does the {unique_shapes[int(rng.integers(len(unique_shapes)))]} have?", "texture")
    if "shape" in kinds and unique_colors:
        ask(f"What shape is the {unique_colors[int(rng.integers(len(unique_colors)))]} object?", "shape")
    if "relation" in kinds and len(objects) >= 2:
        pairs = [(a, b) for a in objects for b in objects if a is not b
                 and [(x.color, x.shape) for x in objects].count((a.color, a.shape)) == 1
                 and [(x.color, x.shape) for x in objects].count((b.color, b.shape)) == 1]
        clear = []
        for a, b in pairs:
            dx, dy = abs(a.center[0] - b.center[0]), abs(a.center[1] - b.center[1])
            ratio = max(a.size, b.size) / min(a.size, b.size)
            if max(dx, dy) >= 1.5 * min(dx, dy):
                clear.append((a, b, SPATIAL_RELATIONS))
            if ratio >= 1.8 or ratio <= 1.2:
                clear.append((a, b, SIZE_RELATIONS))
        if clear:
            a, b, pool = clear[int(rng.integers(len(clear)))]
            relation = pool[int(rng.integers(len(pool)))]
            words = {"left of": "to the left of", "right of": "to the right of"}.get(relation, relation)
            ask(f"Is the {a.color} {a.shape} {words} the {b.color} {b.shape}?", "relation")
    return questions


# ----------------------------------------------------------------------------- tool adapters

class ShapesJudge:
    """The shapes judge as a :class:`zoo.tools.VQATool`: ``answer(image, question) -> str``,
    ``caption(image) -> str``; ``check`` is :func:`check`.

    ``unknown``: what ``answer`` returns for a question it cannot read; ``None`` (default)
    raises ``ConfigError`` instead. Call settings (``max_new_tokens``, ...) are accepted and
    ignored: the judge is deterministic.
    """

    def __init__(self, unknown: str | None = None):
        self.unknown = unknown

    @property
    def tool_id(self) -> str:
        """Identity of this judge for :class:`zoo.tools.CallCache` keys: ``"shapes-judge:unknown=..."``."""
        return f"shapes-judge:unknown={self.unknown!r}"

    def answer(self, image, question: str, **settings) -> str:
        """:func:`answer` on ``image`` (anything :func:`zoo.image.load_image` takes): ``"yes"``/``"no"``, a count
        (``"0"``, ``"2"``), a colour, shape or texture name, or ``"none"``.

        Raises ``ConfigError`` for a question the judge cannot read, unless ``unknown`` was set (then returns
        it); ``ImageInputError`` for an unreadable image. ``settings`` are ignored.
        """
        try:
            return answer(image, question)
        except ConfigError:
            if self.unknown is None:
                raise
            return self.unknown

    def caption(self, image, **settings) -> str:
        """:func:`caption` of ``image``: a template caption of the detected objects (``"a red circle and a blue
        square"``), or ``"an empty picture"``. ``settings`` are ignored.
        """
        return caption(image)

    def check(self, image, caption_or_spec) -> dict:
        """:func:`check`: per-category scores in [0, 1] of ``image`` against a caption or spec, with ``"overall"``
        and ``"passed"``. Raises ``ConfigError`` for a caption the judge cannot parse.
        """
        return check(image, caption_or_spec)


class ShapesMaskProposer:
    """Colour-segmentation masks as a :class:`zoo.tools.MaskProposer`.

    ``propose(image)`` returns one :class:`zoo.tools.ProposedMask` per detected object, largest
    area first (as SRUM sorts SAM's regions): ``mask`` bool (H, W), ``score`` the shape
    template's IoU in [0, 1], ``bbox`` (x0, y0, x1, y1), and ``extra`` with the object's
    ``shape``, ``color``, ``texture``, ``mark`` and ``concept``. ``min_area`` in pixels
    (default: see :func:`detect`).
    """

    def __init__(self, min_area: int | None = None):
        self.min_area = min_area

    @property
    def tool_id(self) -> str:
        """Identity of this proposer for :class:`zoo.tools.CallCache` keys: ``"shapes-masks:min_area=..."``."""
        return f"shapes-masks:min_area={self.min_area}"

    def propose(self, image) -> list:
        """One :class:`zoo.tools.ProposedMask` per object :func:`detect` finds in ``image``, largest area first
        (an empty list for a picture with no coloured object). Raises ``ImageInputError`` for an unreadable image.
        """
        from zoo.tools import ProposedMask

        found = sorted(detect(image, min_area=self.min_area), key=lambda d: -d.area)
        return [ProposedMask(d.mask, score=d.score, area=d.area, bbox=d.bbox,
                             extra={"shape": d.shape, "color": d.color, "texture": d.texture, "mark": d.mark,
                                    "concept": d.concept})
                for d in found]
