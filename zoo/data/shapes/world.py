"""The shapes world: named colours, shapes, textures and concepts; scene records; the renderer.

Coordinates are fractions of the image side: ``x`` to the right, ``y`` down, both in [0, 1].
An object's ``size`` is the side of the square box its shape spans (as a fraction of the image
side) and ``center`` the centre of that box, so one spec renders at any resolution. Pixels
are hard-edged (no anti-aliasing): every object pixel is exactly its colour or the colour's
dark shade, which keeps colour segmentation exact on renders.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from zoo.errors import ConfigError

__all__ = [
    "COLORS", "SHAPES", "TEXTURES", "MARKS", "BACKGROUNDS", "BACKGROUND_TEXTURES", "CONCEPTS",
    "RELATIONS", "UNUSED_LOOKS", "Concept", "ShapeObject", "Scene", "render", "shape_mask", "describe", "caption_for",
    "tags_for", "relation_between", "as_spec", "layout", "dark_shade",
]

#: Object colours: name -> RGB. Hues are at least 20 degrees apart and saturation >= 0.5, so a
#: pixel's hue names its colour; backgrounds are all below saturation 0.2.
MIN_RENDER_SIZE = 8
# Rendering works in float64 planes of size x size (a 100000 px side asked numpy for 75 GiB); 4096 px
# scenes take about 130 MB per plane, well past any use of a synthetic corpus.
MAX_SIZE = 4096

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 210, 40),
    "green": (40, 160, 60),
    "cyan": (30, 190, 200),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (240, 110, 180),
}
#: Shape names; each spans its ``size`` x ``size`` box (the star is as wide as its box and
#: 0.951 of it high, centred). No rotation: triangles and stars point up.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "ring", "cross")
#: Object textures, drawn in the colour's dark shade (the same hue, 0.55 of the brightness):
#: horizontal stripes, a grid of dots, a checkerboard.
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
#: Shape-texture pairs the generator and the prompts never use: dots do not fit a ring's
#: thin band at 64 px, so the judge could not read them back.
UNUSED_LOOKS: frozenset = frozenset({("ring", "dotted")})
#: Marks that only concept objects carry, also in the dark shade: a disc at the shape's centre,
#: or a dark border.
MARKS: tuple[str, ...] = ("dot", "outline")
#: Background colours (low saturation) and textures (small brightness changes).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (205, 205, 205),
    "beige": (232, 222, 200),
    "charcoal": (70, 70, 70),
}
BACKGROUND_TEXTURES: tuple[str, ...] = ("plain", "gradient", "grid", "stripes", "checker")
#: Relations a caption or prompt can state: spatial ones compare box centres along the dominant
#: axis; "bigger than"/"smaller than" compare sizes (the shapes world's non-spatial relation).
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "bigger than", "smaller than")
SPATIAL_RELATIONS = RELATIONS[:4]
SIZE_RELATIONS = RELATIONS[4:]
#: Size ratio at which "bigger than" holds; scene captions use it for pairs whose sizes differ
#: by at least this much.
SIZE_RATIO = 1.5
DARK_FACTOR = 0.55

_STAR_OUTER = 0.5 / math.sin(math.radians(72))  # outer radius that makes the star 1 box wide
_STAR_HALF_HEIGHT = _STAR_OUTER * (1 + math.cos(math.radians(36))) / 2
_STAR_CENTER_Y = -_STAR_HALF_HEIGHT + _STAR_OUTER  # centre of the star's circle, box-centred
_RING_INNER = 0.55  # inner radius / outer radius
_CROSS_ARM = 0.38  # arm width / box side
_DOT_RADIUS = 0.2  # concept dot mark, box units
_OUTLINE_WIDTH = 0.08  # concept outline, box units (at least one pixel)


@dataclass(frozen=True)
class Concept:
    """A recurring "personal" object: one fixed look that reappears across scenes.

    ``class_word`` is the generic noun a personalised model pairs with the concept's
    identifier ("<bo> is a star").
    """

    id: str
    shape: str
    color: str
    texture: str
    mark: str
    class_word: str

    def phrase(self) -> str:
        """The object phrase a caption uses for this look, e.g. "a striped purple star with a dot"."""
        return describe({"shape": self.shape, "color": self.color, "texture": self.texture, "mark": self.mark})


#: The bundled concepts. Their marks make them unique: ordinary objects never carry a mark.
CONCEPTS: dict[str, Concept] = {c.id: c for c in (
    Concept("bo", "star", "purple", "striped", "dot", "star"),
    Concept("kiki", "circle", "orange", "dotted", "outline", "circle"),
    Concept("mel", "square", "green", "checkered", "outline", "square"),
    Concept("tuk", "triangle", "blue", "plain", "outline", "triangle"),
    Concept("zed", "diamond", "cyan", "striped", "outline", "diamond"),
)}


@dataclass
class ShapeObject:
    """One object of a scene.

    ``size``: box side as a fraction of the image side; ``center``: (x, y) box centre as
    fractions; ``bbox``: (x0, y0, x1, y1) in pixels of the rendered image, x1/y1 exclusive (as
    ``PIL.Image.crop``), ``None`` until rendered; ``mask``: path of the object's mask PNG (or
    ``None``); ``concept``: the id of the concept this object is, if any.
    """

    shape: str
    color: str
    size: float
    center: tuple[float, float]
    texture: str = "plain"
    mark: str | None = None
    concept: str | None = None
    bbox: tuple[int, int, int, int] | None = None
    mask: str | None = None

    def to_dict(self) -> dict:
        """The object as manifest JSON: every field, ``center`` and ``bbox`` as lists (``bbox`` None until rendered)."""
        out = asdict(self)
        out["center"] = list(self.center)
        out["bbox"] = None if self.bbox is None else list(self.bbox)
        return out


@dataclass
class Scene:
    """A shapes-world scene as the manifest stores it.

    ``image``: path of the PNG; ``objects``: list of :class:`ShapeObject`; ``caption``: template
    caption; ``tags``: T2I-CompBench categories the caption exercises; ``concept``: id of the
    concept shown, if any, with ``concept_caption`` naming it "<id>"; ``size``: image side in
    pixels; ``background``: ``{"color", "texture"}``.
    """

    id: str
    image: str | None
    objects: list[ShapeObject]
    caption: str
    tags: list[str]
    concept: str | None = None
    concept_caption: str | None = None
    size: int = 64
    background: dict = field(default_factory=lambda: {"color": "white", "texture": "plain"})

    def to_spec(self) -> dict:
        """The scene as a render spec (what :func:`render` accepts)."""
        return {"background": dict(self.background), "objects": [o.to_dict() for o in self.objects]}


def dark_shade(color) -> tuple[int, int, int]:
    """The dark shade textures and marks use: each channel times 0.55, rounded."""
    rgb = COLORS[color] if isinstance(color, str) else color
    return tuple(int(round(c * DARK_FACTOR)) for c in rgb)


# ----------------------------------------------------------------------------- geometry

def _polygon(points):
    return np.asarray(points, dtype=np.float64)


def _star_polygon():
    points = []
    for k in range(10):
        radius = _STAR_OUTER if k % 2 == 0 else _STAR_OUTER * 0.45
        angle = math.radians(-90 + 36 * k)
        points.append((radius * math.cos(angle), _STAR_CENTER_Y + radius * math.sin(angle)))
    return _polygon(points)


_POLYGONS = {
    "triangle": _polygon([(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)]),
    "diamond": _polygon([(0.0, -0.5), (0.5, 0.0), (0.0, 0.5), (-0.5, 0.0)]),
    "star": _star_polygon(),
    "cross": _polygon([(-_CROSS_ARM / 2, -0.5), (_CROSS_ARM / 2, -0.5), (_CROSS_ARM / 2, -_CROSS_ARM / 2),
                       (0.5, -_CROSS_ARM / 2), (0.5, _CROSS_ARM / 2), (_CROSS_ARM / 2, _CROSS_ARM / 2),
                       (_CROSS_ARM / 2, 0.5), (-_CROSS_ARM / 2, 0.5), (-_CROSS_ARM / 2, _CROSS_ARM / 2),
                       (-0.5, _CROSS_ARM / 2), (-0.5, -_CROSS_ARM / 2), (-_CROSS_ARM / 2, -_CROSS_ARM / 2)]),
}
#: Where a concept's dot sits, in box units (inside every shape that carries one).
MARK_CENTERS = {"triangle": (0.0, 0.19), "star": (0.0, _STAR_CENTER_Y)}
#: Half-extent of each shape in box units (x, y); the judge fits templates with it.
EXTENTS = {name: (0.5, _STAR_HALF_HEIGHT if name == "star" else 0.5) for name in SHAPES}


def _inside_polygon(poly: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Even-odd rule: ray to +x crosses an odd number of edges."""
    inside = np.zeros(np.broadcast(a, b).shape, dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for xa, ya, xb, yb in zip(x0, y0, x1, y1):
        if ya == yb:
            continue
        straddles = (ya > b) != (yb > b)
        x_cross = xa + (b - ya) * (xb - xa) / (yb - ya)
        inside ^= straddles & (a < x_cross)
    return inside


def shape_mask(shape: str, a, b) -> np.ndarray:
    """Membership of points (a, b) in ``shape``; a, b in box units (box spans [-0.5, 0.5]).

    Arrays broadcast; returns a bool array. Raises ``ConfigError`` for an unknown shape.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if shape == "circle":
        return a * a + b * b < 0.25
    if shape == "ring":
        r2 = a * a + b * b
        return (r2 < 0.25) & (r2 >= 0.25 * _RING_INNER ** 2)
    if shape == "square":
        return (np.abs(a) < 0.5) & (np.abs(b) < 0.5)
    if shape in _POLYGONS:
        return _inside_polygon(_POLYGONS[shape], a, b)
    raise ConfigError(f"Unknown shape {shape!r}; the shapes world has {', '.join(SHAPES)}.")


def _texture_dark(texture: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if texture == "plain":
        return np.zeros(np.broadcast(a, b).shape, dtype=bool)
    if texture == "striped":  # 4 periods of horizontal stripes across the box
        return np.broadcast_to(np.floor((b + 0.5) * 8) % 2 == 1, np.broadcast(a, b).shape)
    if texture == "checkered":  # 5 x 5 cells
        return (np.floor((a + 0.5) * 5) + np.floor((b + 0.5) * 5)) % 2 == 1
    if texture == "dotted":  # 3 x 3 dots on a grid offset from the centre
        da = (a + 0.5) * 3 - np.floor((a + 0.5) * 3) - 0.5
        db = (b + 0.5) * 3 - np.floor((b + 0.5) * 3) - 0.5
        return da * da + db * db < 0.36 ** 2
    raise ConfigError(f"Unknown texture {texture!r}; object textures are {', '.join(TEXTURES)}.")


# ----------------------------------------------------------------------------- specs

def _check_object(obj: dict, where: str) -> dict:
    for key, allowed in (("shape", SHAPES), ("color", tuple(COLORS)), ("texture", TEXTURES)):
        value = obj.get(key)
        if value is not None and value not in allowed:  # None: any (filled in by layout)
            raise ConfigError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}.")
    if obj.get("mark") not in (None, *MARKS):
        raise ConfigError(f"{where}: mark {obj['mark']!r} is not one of {', '.join(MARKS)} (or null).")
    return obj


def as_spec(scene_or_spec) -> dict:
    """Normalise a :class:`Scene`, a :class:`ShapeObject` list or a spec dict to a spec dict.

    A spec is ``{"background": {"color", "texture"}, "objects": [{"shape", "color", "texture",
    "mark", "size", "center", ...}], "relations": [{"subject", "relation", "object"}], "seed"}``;
    objects without ``size``/``center`` are placed by :func:`layout`. Missing textures are
    "plain". Raises ``ConfigError`` naming the bad field.
    """
    if isinstance(scene_or_spec, Scene):
        spec = scene_or_spec.to_spec()
    elif isinstance(scene_or_spec, dict):
        spec = dict(scene_or_spec)
    elif isinstance(scene_or_spec, (list, tuple)):
        spec = {"objects": list(scene_or_spec)}
    else:
        raise ConfigError(f"render: expected a Scene or a spec dict, got {type(scene_or_spec).__name__}.")
    objects = []
    for index, obj in enumerate(spec.get("objects") or []):
        obj = obj.to_dict() if isinstance(obj, ShapeObject) else dict(obj)
        obj.setdefault("texture", "plain")
        obj.setdefault("mark", None)
        objects.append(_check_object(obj, f"spec object {index}"))
    background = dict(spec.get("background") or {})
    background.setdefault("color", "white")
    background.setdefault("texture", "plain")
    if background["color"] not in BACKGROUNDS and not (isinstance(background["color"], (list, tuple))
                                                      and len(background["color"]) == 3):
        raise ConfigError(f"spec background color {background['color']!r} is not one of "
                          f"{', '.join(BACKGROUNDS)} or an [r, g, b] list.")
    if background["texture"] not in BACKGROUND_TEXTURES:
        raise ConfigError(f"spec background texture {background['texture']!r} is not one of "
                          f"{', '.join(BACKGROUND_TEXTURES)}.")
    relations = []
    for index, rel in enumerate(spec.get("relations") or []):
        if rel.get("relation") not in RELATIONS:
            raise ConfigError(f"spec relation {index}: {rel.get('relation')!r} is not one of {', '.join(RELATIONS)}.")
        for key in ("subject", "object"):
            if not isinstance(rel.get(key), int) or not 0 <= rel[key] < len(objects):
                raise ConfigError(f"spec relation {index}: {key} must be an object index in 0..{len(objects) - 1}.")
        relations.append(dict(rel))
    spec.update(objects=objects, background=background, relations=relations)
    return spec


def relation_between(a, b, relation: str) -> bool:
    """Whether ``relation`` holds from object ``a`` to object ``b``.

    Objects are anything with ``center`` and ``size`` (dicts or objects). Spatial relations
    compare centres along the dominant axis: "left of" holds when a's centre is left of b's
    and the horizontal gap is at least the vertical one (T2I-CompBench's 2-D spatial rule).
    "bigger than" holds when a's size is at least ``SIZE_RATIO`` times b's.

    Raises ConfigError for a relation outside RELATIONS.
    """
    (ax, ay), (bx, by) = _get(a, "center"), _get(b, "center")
    dx, dy = bx - ax, by - ay
    if relation == "left of":
        return dx > 0 and abs(dx) >= abs(dy)
    if relation == "right of":
        return dx < 0 and abs(dx) >= abs(dy)
    if relation == "above":
        return dy > 0 and abs(dy) >= abs(dx)
    if relation == "below":
        return dy < 0 and abs(dy) >= abs(dx)
    if relation == "bigger than":
        return _get(a, "size") >= SIZE_RATIO * _get(b, "size")
    if relation == "smaller than":
        return SIZE_RATIO * _get(a, "size") <= _get(b, "size")
    raise ConfigError(f"Unknown relation {relation!r}; use one of {', '.join(RELATIONS)}.")


def _get(obj, key):
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def layout(spec: dict, rng: np.random.Generator, margin: float = 0.03, gap: float = 0.05,
           size_range: tuple[float, float] = (0.25, 0.36), tries: int = 400) -> dict:
    """Give every object without ``center`` a size and position: inside the image, boxes at
    least ``gap`` apart, every relation of the spec holding (with a clear dominant axis).
    Unstated shapes and colours are drawn at random; an unstated texture is "plain".

    Sizes of objects in a size relation are drawn so that the relation holds with margin.
    Returns a new spec; raises ``ConfigError`` when no layout is found (too many or too large
    objects, or contradictory relations).
    """
    spec = as_spec(spec)
    objects = [dict(o) for o in spec["objects"]]
    for obj in objects:  # attributes a prompt left open
        if obj.get("shape") is None:
            obj["shape"] = str(SHAPES[int(rng.integers(len(SHAPES)))])
        if obj.get("color") is None:
            obj["color"] = str(list(COLORS)[int(rng.integers(len(COLORS)))])
        if obj.get("texture") is None:
            obj["texture"] = "plain"
        if obj.get("center") is not None and obj.get("size") is None:
            obj["size"] = 0.3
    free = [i for i, o in enumerate(objects) if o.get("center") is None]
    if not free:
        spec["objects"] = objects
        return spec
    given = spec["objects"]
    for attempt in range(tries):
        shrink = 0.93 ** (attempt // 50)  # smaller objects after every 50 failed tries
        for i in free:
            if given[i].get("size") is None:
                objects[i]["size"] = round(float(rng.uniform(*size_range)) * shrink, 4)
        for rel in spec["relations"]:
            if rel["relation"] in SIZE_RELATIONS:
                big, small = (rel["subject"], rel["object"])
                if rel["relation"] == "smaller than":
                    big, small = small, big
                if given[big].get("size") is None:
                    objects[big]["size"] = round(float(rng.uniform(0.38, 0.44)) * shrink, 4)
                if given[small].get("size") is None:  # at least 0.2: smaller shapes are hard to read at 64 px
                    objects[small]["size"] = round(objects[big]["size"] / float(rng.uniform(1.7, 1.9)), 4)
        for i in free:
            s = objects[i]["size"]
            objects[i]["center"] = [round(float(rng.uniform(margin + s / 2, 1 - margin - s / 2)), 4)
                                    for _ in range(2)]
        if _layout_ok(objects, spec["relations"], gap):
            spec["objects"] = objects
            return spec
    raise ConfigError(f"Could not place {len(objects)} objects without overlap and with the relations "
                      f"{spec['relations']}; use fewer or smaller objects.")


def _layout_ok(objects, relations, gap) -> bool:
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            (xi, yi), (xj, yj) = objects[i]["center"], objects[j]["center"]
            reach = (objects[i]["size"] + objects[j]["size"]) / 2 + gap
            if abs(xi - xj) < reach and abs(yi - yj) < reach:
                return False
    for rel in relations:
        a, b = objects[rel["subject"]], objects[rel["object"]]
        if not relation_between(a, b, rel["relation"]):
            return False
        if rel["relation"] in SPATIAL_RELATIONS:  # a clear dominant axis
            dx, dy = abs(a["center"][0] - b["center"][0]), abs(a["center"][1] - b["center"][1])
            if min(dx, dy) > 0.6 * max(dx, dy):
                return False
    return True


# ----------------------------------------------------------------------------- rendering

def _background(background: dict, size: int) -> np.ndarray:
    color = background["color"]
    rgb = np.array(BACKGROUNDS[color] if isinstance(color, str) else color, dtype=np.float64)
    u = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(u, u)
    texture = background["texture"]
    sign = -1.0 if rgb.mean() > 128 else 1.0  # darken light backgrounds, lighten dark ones
    if texture == "plain":
        delta = np.zeros_like(x)
    elif texture == "gradient":
        delta = 30.0 * y - 15.0
    elif texture == "grid":
        delta = sign * 28.0 * (((x * 8) % 1 < 0.13) | ((y * 8) % 1 < 0.13))
    elif texture == "stripes":
        delta = sign * 14.0 * (((x + y) * 5) % 1 < 0.5)
    else:  # checker
        delta = sign * 14.0 * ((np.floor(x * 4) + np.floor(y * 4)) % 2 == 1)
    image = np.clip(np.rint(rgb[None, None, :] + delta[..., None]), 0, 255)
    return image.astype(np.uint8)


def _object_pixels(obj: dict, size: int):
    """(mask, dark) over the whole image for one object: where it is and where it is dark."""
    side = obj["size"]
    cx, cy = obj["center"]
    lo_x, hi_x = max(0, int(math.floor((cx - side / 2) * size))), min(size, int(math.ceil((cx + side / 2) * size)) + 1)
    lo_y, hi_y = max(0, int(math.floor((cy - side / 2) * size))), min(size, int(math.ceil((cy + side / 2) * size)) + 1)
    mask = np.zeros((size, size), dtype=bool)
    dark = np.zeros((size, size), dtype=bool)
    if hi_x <= lo_x or hi_y <= lo_y:
        return mask, dark
    a = ((np.arange(lo_x, hi_x) + 0.5) / size - cx) / side
    b = ((np.arange(lo_y, hi_y) + 0.5) / size - cy) / side
    a, b = np.meshgrid(a, b)
    inside = shape_mask(obj["shape"], a, b)
    shade = _texture_dark(obj.get("texture", "plain"), a, b) & inside
    mark = obj.get("mark")
    if mark == "dot":
        mx, my = MARK_CENTERS.get(obj["shape"], (0.0, 0.0))
        shade |= ((a - mx) ** 2 + (b - my) ** 2 < _DOT_RADIUS ** 2) & inside
    elif mark == "outline":
        from scipy.ndimage import binary_erosion

        width = max(1, int(round(_OUTLINE_WIDTH * side * size)))
        padded = np.pad(inside, width)
        core = binary_erosion(padded, iterations=width)[width:-width, width:-width]
        shade |= inside & ~core
    mask[lo_y:hi_y, lo_x:hi_x] = inside
    dark[lo_y:hi_y, lo_x:hi_x] = shade
    return mask, dark


def render(scene_or_spec, size: int | None = None):
    """Render a scene or spec as ``(PIL.Image RGB size x size, [bool mask (size, size)] per object)``.

    ``size`` defaults to the scene's own size (64 for specs). Objects are drawn in order; a
    later object hides what it covers, and each mask holds the object's visible pixels.
    Objects without positions are laid out first (see :func:`layout`, seeded by the spec's
    ``seed``, default 0). Deterministic: the same spec and size give identical pixels.

    Raises ConfigError for a size outside 8-4096 pixels and for a spec with an unknown shape, colour, texture or
    field (naming the object and field).
    """
    from PIL import Image

    if size is None:
        size = scene_or_spec.size if isinstance(scene_or_spec, Scene) else int((scene_or_spec or {}).get("size", 64)) \
            if isinstance(scene_or_spec, dict) else 64
    if not isinstance(size, (int, np.integer)) or not MIN_RENDER_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"render: size must be an integer from {MIN_RENDER_SIZE} to {MAX_SIZE} pixels, "
                          f"got {size!r}.")
    spec = as_spec(scene_or_spec)
    spec = layout(spec, np.random.default_rng(int(spec.get("seed", 0))))
    image = _background(spec["background"], int(size))
    masks = []
    for obj in spec["objects"]:
        mask, dark = _object_pixels(obj, int(size))
        image[mask & ~dark] = COLORS[obj["color"]]
        image[dark] = dark_shade(obj["color"])
        masks = [m & ~mask for m in masks]
        masks.append(mask)
    return Image.fromarray(image, "RGB"), masks


# ----------------------------------------------------------------------------- language

_COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def _plural(shape: str) -> str:
    return shape + "es" if shape.endswith("s") else shape + "s"


def describe(obj, count: int = 1, article: str = "a") -> str:
    """The noun phrase for an object (dict or object with shape/color/texture/mark).

    ``describe(red striped circle)`` -> "a striped red circle"; with ``count=2`` -> "two striped
    red circles"; a concept mark adds "with a dot" / "with an outline". ``article`` is "a"
    (or "one" for numeracy prompts) when ``count`` is 1; "" gives the bare phrase.
    """
    shape, color = _get(obj, "shape"), _get(obj, "color")
    texture = _get(obj, "texture") if _has(obj, "texture") else "plain"
    mark = _get(obj, "mark") if _has(obj, "mark") else None
    words = [] if texture in (None, "plain") else [texture]
    if color:
        words.append(color)
    words.append(shape if count == 1 else _plural(shape))
    if mark:
        words.append("with a dot" if mark == "dot" else "with an outline")
    phrase = " ".join(words)
    if count == 1:
        if not article:
            return phrase
        if article == "a" and phrase[0] in "aeiou":
            article = "an"
        return f"{article} {phrase}"
    return f"{_COUNT_WORDS.get(count, str(count))} {phrase}"


def _has(obj, key) -> bool:
    return key in obj if isinstance(obj, dict) else hasattr(obj, key)


def _descriptor(obj) -> tuple:
    return (_get(obj, "shape"), _get(obj, "color"), _get(obj, "texture") if _has(obj, "texture") else "plain",
            _get(obj, "mark") if _has(obj, "mark") else None)


def _relation_phrase(relation: str) -> str:
    return {"left of": "to the left of", "right of": "to the right of"}.get(relation, relation)


def caption_for(objects, concept_names: dict[int, str] | None = None) -> tuple[str, str | None]:
    """The template caption of a list of objects, in the objects' order.

    One object: "a red circle". Two different objects: a relation between the first and the
    second: "bigger than"/"smaller than" when their sizes differ by ``SIZE_RATIO`` or more,
    else the spatial relation of the dominant axis ("a red circle to the left of a blue
    square"). Otherwise a list with counts ("two red circles, a blue square and a green
    star"). Returns ``(caption, relation or None)``. ``concept_names`` maps an object index to
    a name used instead of its phrase (e.g. ``{0: "<bo>"}``).
    """
    names = concept_names or {}
    if len(objects) == 2 and _descriptor(objects[0]) != _descriptor(objects[1]):
        a, b = objects
        relation = None
        for candidate in ("bigger than", "smaller than", "left of", "right of", "above", "below"):
            if relation_between(a, b, candidate):
                relation = candidate
                break
        if relation is not None:
            left, right = names.get(0, describe(a)), names.get(1, describe(b))
            return f"{left} {_relation_phrase(relation)} {right}", relation
    groups: dict[tuple, list[int]] = {}
    for index, obj in enumerate(objects):
        groups.setdefault(_descriptor(obj), []).append(index)
    phrases = []
    for indices in groups.values():
        if len(indices) == 1 and indices[0] in names:
            phrases.append(names[indices[0]])
        else:
            phrases.append(describe(objects[indices[0]], count=len(indices)))
    if not phrases:
        return "an empty picture", None
    if len(phrases) == 1:
        return phrases[0], None
    return ", ".join(phrases[:-1]) + " and " + phrases[-1], None


def tags_for(objects, relation: str | None) -> list[str]:
    """T2I-CompBench categories a caption of these objects exercises (sorted, may be empty).

    color: two or more colours named; shape: two or more shapes; texture: a textured object;
    spatial / non-spatial: a spatial / size relation; numeracy: a count of two or more.
    """
    tags = set()
    if len({_get(o, "color") for o in objects}) >= 2:
        tags.add("color")
    if len({_get(o, "shape") for o in objects}) >= 2:
        tags.add("shape")
    if any((_get(o, "texture") if _has(o, "texture") else "plain") != "plain" for o in objects):
        tags.add("texture")
    if relation in SPATIAL_RELATIONS:
        tags.add("spatial")
    if relation in SIZE_RELATIONS:
        tags.add("non-spatial")
    counts: dict[tuple, int] = {}
    for obj in objects:
        counts[_descriptor(obj)] = counts.get(_descriptor(obj), 0) + 1
    if relation is None and any(c >= 2 for c in counts.values()):
        tags.add("numeracy")
    return sorted(tags)


def to_plain(value: Any):
    """JSON-ready copy (tuples to lists)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
