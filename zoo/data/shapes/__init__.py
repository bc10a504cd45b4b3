"""The shapes world: a procedural image corpus with ground truth, and a pixel-based judge.

Scenes of 1-4 coloured shapes on plain or textured backgrounds, each with per-object masks,
a template caption, T2I-CompBench-style compositional tags and, in some scenes, a recurring
"personal" concept object. ``render`` draws any spec, ``sample_prompt`` writes compositional
text-to-image prompts with their specs, and :mod:`zoo.data.shapes.judge` answers questions
about an image from its pixels. ``python -m zoo.data.shapes --n N --size S OUT`` writes a corpus.
"""
from .corpus import FORMAT_VERSION, demo_manifest, generate, load_masks, read_manifest, sample_scene
from .language import CATEGORIES, parse_caption, sample_prompt
from .world import (
    BACKGROUND_TEXTURES, BACKGROUNDS, COLORS, CONCEPTS, MARKS, RELATIONS, SHAPES, TEXTURES, UNUSED_LOOKS,
    Concept, Scene, ShapeObject, as_spec, caption_for, dark_shade, describe, layout, relation_between, render,
    shape_mask, tags_for,
)

__all__ = [
    "COLORS", "SHAPES", "TEXTURES", "MARKS", "UNUSED_LOOKS", "BACKGROUNDS", "BACKGROUND_TEXTURES", "CONCEPTS",
    "RELATIONS", "CATEGORIES", "Concept", "ShapeObject", "Scene", "render", "generate", "read_manifest",
    "demo_manifest", "load_masks", "sample_scene", "sample_prompt", "parse_caption", "describe", "caption_for",
    "tags_for", "relation_between", "layout", "as_spec", "shape_mask", "dark_shade", "FORMAT_VERSION",
]
