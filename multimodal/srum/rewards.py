"""SRUM's rewards as plain functions: judge prompts, answer parsers, the format step, the reward map, the loss.

Everything here follows the released code (WayneJin0918/SRUM @ a53ba18) line for line, quirks included;
each quirk is named where it happens and, where it matters, a stricter variant is an explicit option.

* Prompts (:func:`hybrid_region_prompt`, :func:`global_layout_prompt`, :func:`sample_level_prompt`):
  the official strings of ``srum_data_infer/vlm.py`` (``create_hybrid_evaluation_prompt`` and friends),
  stored verbatim in ``templates/*.txt`` (they are the behaviour being reproduced). Boxes are written as
  Python lists, ``[x0, y0, x1, y1]`` in the generated image's pixels.
* Parsers (:func:`parse_region_answer`, :func:`parse_global_answer`, :func:`parse_sample_answer`):
  ``vlm.py`` ``parse_vlm_evaluation_output`` / ``parse_global_layout_output`` / ``parse_sample_level_output``.
* The format step (:func:`format_record`): ``srum_data_infer/vlm_format_output.py``.
* The dense reward map (:func:`reward_map`): ``data/regional_reward_dataset.py``
  ``_parse_vlm_output_to_reward_map``.
* The loss (:func:`srum_loss`, :func:`token_rewards`): ``modeling/bagel/bagel.py`` ``forward``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError, ZooError
from zoo.multimodal.srum.model import read_template
from zoo.tools import strip_think

logger = logging.getLogger("zoo.srum")

__all__ = [
    "SCORE_PATTERN", "STRICT_SCORE_PATTERN", "GLOBAL_OBJECT", "Region", "boxes_from_masks", "hybrid_region_prompt",
    "global_layout_prompt", "sample_level_prompt", "after_think", "parse_region_answer", "parse_global_answer",
    "parse_sample_answer", "judge_with_retries", "regions_to_rewards", "format_record", "FormatStats",
    "reward_map", "scale_boxes", "token_rewards", "srum_loss", "extract_detailed_prompt",
]

# vlm.py's score regex: an optional minus, digits, an optional dot and digits; case-insensitive.
# It rejects "+0.6", ".5" and "**0.8**" and reads "0.8/1.0" as 0.8 (first match wins).
SCORE_PATTERN = r"Score:\s*(-?\d+\.?\d*)"
# strict=True: also "+0.6", ".5" and markdown emphasis around the number, and nothing but the number after it.
STRICT_SCORE_PATTERN = r"Score:\s*\**\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*\**\s*(?:$|\n)"
GLOBAL_OBJECT = "global_layout_reward"  # the "object" name of the global reward in formatted records


# ----------------------------------------------------------------------------- regions

@dataclass
class Region:
    """A proposed region: ``bbox`` ``[x0, y0, x1, y1]`` ints (exclusive ends, SAM's ``x + w``), mask ``area``."""

    bbox: list[int]
    area: int
    region_id: int | None = None
    extra: dict = field(default_factory=dict)


def boxes_from_masks(proposals: Iterable, max_regions: int) -> list[Region]:
    """The ``max_regions`` largest proposals by **mask** area as :class:`Region` (ids 1, 2, ...).

    proposals: ``zoo.tools.ProposedMask`` objects (``bbox`` xyxy, ``area``) or SAM-style dicts with
    ``bbox`` in xywh and ``area``. Sorting is stable by descending area (vlm.py:288-296); ids follow
    the sorted order as ``create_hybrid_evaluation_prompt`` numbers them.
    """
    regions = []
    for item in proposals:
        if isinstance(item, Mapping):
            x, y, w, h = item["bbox"]
            box, area = [int(x), int(y), int(x + w), int(y + h)], int(item["area"])
        else:
            box, area = [int(v) for v in item.bbox], int(item.area)
        regions.append(Region(box, area))
    regions.sort(key=lambda r: r.area, reverse=True)
    chosen = regions[:max(int(max_regions), 0)]
    for i, region in enumerate(chosen):
        region.region_id = i + 1
    return chosen


# ----------------------------------------------------------------------------- prompts

def _fill(template: str, **values) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def hybrid_region_prompt(prompt: str, regions: Sequence[Region]) -> str:
    """The per-region judge prompt for ``prompt`` and its regions (ids 1.. in order, boxes as lists)."""
    item = read_template("hybrid_region_item.txt")
    text = "".join(_fill(item, region_id=str(i + 1), bbox=str(list(r.bbox))) for i, r in enumerate(regions))
    return _fill(read_template("hybrid_region.txt"), original_prompt=prompt, regions_text=text)


def global_layout_prompt(prompt: str) -> str:
    """The global layout/composition judge prompt (``--global_layout_reward``)."""
    return _fill(read_template("global_layout.txt"), original_prompt=prompt)


def sample_level_prompt(prompt: str) -> str:
    """The whole-image judge prompt (``--sample_level_only``, not used by the released pipeline)."""
    return _fill(read_template("sample_level.txt"), original_prompt=prompt)


# ----------------------------------------------------------------------------- parsers

def after_think(text: str) -> str:
    """The answer part as SRUM cuts it: everything after the last ``</think>``, stripped.

    Quirk kept: without a ``</think>`` the whole text stays, an unclosed ``<think>`` tag and its draft
    included (so draft scores count). Same as ``zoo.tools.strip_think`` when the tag is closed.
    """
    text = text or ""
    return strip_think(text) if "</think>" in text else text.strip()


def _score(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text, re.IGNORECASE)
    return float(match.group(1)) if match else None


def parse_region_answer(text: str, *, strict: bool = False) -> dict[int, dict]:
    """Per-region judgements ``{region_id: {"identified_object", "score", "reason"}}`` (keys as found).

    As released: the answer after :func:`after_think` is split into blocks on ``"\\n\\n"``; a block counts
    when it has ``Region ID: <n>``; its ``Identified Object:`` line, first score and ``Reason:`` text are
    read. Quirks kept: only blank lines separate regions (the prompt's own ``---`` example without blank
    lines leaves one block, so only its first region survives; ``\\r\\n\\r\\n`` is no separator); a
    repeated Region ID keeps the later block, even one without a score; an id the prompt did not ask
    about is returned (the caller ignores it). ``strict=True`` changes two things only: the score regex
    is :data:`STRICT_SCORE_PATTERN` and blocks are also split on ``---`` lines and CRLF blank lines.
    """
    content = after_think(text)
    blocks = re.split(r"\r?\n\s*\r?\n|\n-{3,}\s*\n", content) if strict else content.split("\n\n")
    pattern = STRICT_SCORE_PATTERN if strict else SCORE_PATTERN
    out: dict[int, dict] = {}
    for block in blocks:
        block = block.strip()
        if not block:
            continue
        id_match = re.search(r"Region ID:\s*(\d+)", block, re.IGNORECASE)
        if not id_match:
            continue
        entry: dict = {}
        obj = re.search(r"Identified Object:\s*(.*)", block, re.IGNORECASE)
        score = _score(pattern, block)
        reason = re.search(r"Reason:\s*(.*)", block, re.IGNORECASE | re.DOTALL)
        if obj:
            entry["identified_object"] = obj.group(1).strip()
        if score is not None:
            entry["score"] = score
        if reason:
            entry["reason"] = reason.group(1).strip()
        out[int(id_match.group(1))] = entry
    return out


def parse_global_answer(text: str, *, strict: bool = False) -> dict:
    """``{"global_layout_score", "reason"[, "layout_analysis"]}``, or ``{}`` when there is no score.

    As released: the first ``Score:`` match after :func:`after_think`; the reason is the text after the
    score with a leading ``Reason:`` removed (else all of it).
    """
    content = after_think(text)
    match = re.search(STRICT_SCORE_PATTERN if strict else SCORE_PATTERN, content, re.IGNORECASE | re.DOTALL)
    if not match:
        return {}
    out: dict = {}
    layout = re.search(r"Composition Analysis:\s*(.*)", content, re.IGNORECASE | re.DOTALL)
    if layout:
        out["layout_analysis"] = layout.group(1).strip()
    out["global_layout_score"] = float(match.group(1))
    rest = content[match.end():].strip()
    out["reason"] = rest[len("reason:"):].strip() if rest.lower().startswith("reason:") else rest
    return out


def parse_sample_answer(text: str, *, strict: bool = False) -> dict:
    """``{"identified_object" (the overall impression), "score", "reason"}`` as found (sample-level mode)."""
    content = after_think(text)
    out: dict = {}
    impression = re.search(r"Overall Impression:\s*(.*)", content, re.IGNORECASE)
    score = _score(STRICT_SCORE_PATTERN if strict else SCORE_PATTERN, content)
    reason = re.search(r"Reason:\s*(.*)", content, re.IGNORECASE | re.DOTALL)
    if impression:
        out["identified_object"] = impression.group(1).strip()
    if score is not None:
        out["score"] = score
    if reason:
        out["reason"] = reason.group(1).strip()
    return out


def judge_with_retries(ask, parse, done, max_retries: int) -> tuple[object, str, int]:
    """Call ``ask(attempt)`` (attempt 1, 2, ...) up to ``max_retries`` times until ``done(parse(answer))``.

    Returns ``(parsed, last raw answer, attempts)``. With greedy decoding a retry returns the same text
    (the released scripts retry anyway); a sampling judge may differ.
    """
    parsed, raw = parse(""), ""
    for attempt in range(1, max(int(max_retries), 1) + 1):
        raw = ask(attempt)
        parsed = parse(raw)
        if done(parsed):
            return parsed, raw, attempt
    return parsed, raw, max(int(max_retries), 1)


def regions_to_rewards(regions: Sequence[Region], parsed: Mapping[int, dict]) -> list[dict]:
    """vlm.py's ``final_rewards``: for each asked region whose id has a parsed score, the parsed fields plus
    ``bbox`` and ``area`` (regions without a score, and ids nobody asked about, are left out)."""
    rewards = []
    for region in regions:
        entry = parsed.get(region.region_id)
        if entry is not None and "score" in entry:
            rewards.append({**entry, "bbox": list(region.bbox), "area": int(region.area)})
    return rewards


def extract_detailed_prompt(think_output: str) -> str:
    """t2i.py's ``extract_detailed_prompt``: the text after ``detailed prompt:`` up to a blank line."""
    match = re.search(r"detailed prompt:(.*?)(?=(\n\n|\Z))", think_output or "", re.DOTALL)
    return match.group(1).strip() if match else "Failed to extract detailed prompt."


# ----------------------------------------------------------------------------- format step

@dataclass
class FormatStats:
    """What :func:`format_record` dropped, counted (logged by the pipeline)."""

    kept: int = 0
    no_prompt: int = 0
    global_zero: int = 0
    no_rewards: int = 0
    regions_incomplete: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def format_record(record: Mapping, prompt_map: Mapping[str, str], stats: FormatStats | None = None) -> dict | None:
    """One training record from a judged image, or None when the released format step drops it.

    record: ``{"image_file", "prompt", "vlm_rewards": [...], "global_layout_reward": {...} | None}``.
    prompt_map: ``image_file -> original prompt`` from the generation step (``--original_jsonl``).
    Drops (vlm_format_output.py): an image whose prompt is not in ``prompt_map`` (or empty); a global
    score **equal to 0** (a failed parse after the retries is 0.0, but so is a genuine ``Score: 0``); a
    record left with no rewards. Regions missing ``identified_object``, ``bbox`` or ``score`` are skipped.
    A missing global reward keeps the record (the dataset then uses 0.0: a factor of 0.5).
    Returns ``{"bad_image_file", "good_image_file" (the same file, as released), "prompt", "vlm_rewards"}``
    with the global reward first as ``{"object": "global_layout_reward", "bbox", "score", "reason"}``.
    """
    stats = stats if stats is not None else FormatStats()
    image_file = record["image_file"]
    prompt = prompt_map.get(image_file)
    if not prompt:
        stats.no_prompt += 1
        return None
    glob = record.get("global_layout_reward")
    rewards = []
    if glob and "global_layout_score" in glob:
        if glob["global_layout_score"] == 0:
            stats.global_zero += 1
            return None
        rewards.append({"object": GLOBAL_OBJECT, "bbox": glob.get("bbox", [0, 0, 0, 0]),
                        "score": glob["global_layout_score"], "reason": glob.get("reason", "")})
    for item in record.get("vlm_rewards") or []:
        if not all(k in item for k in ("identified_object", "bbox", "score")):
            stats.regions_incomplete += 1
            continue
        rewards.append({"object": item["identified_object"], "bbox": item["bbox"], "score": item["score"]})
    if not rewards:
        stats.no_rewards += 1
        return None
    stats.kept += 1
    return {"bad_image_file": image_file, "good_image_file": image_file, "prompt": prompt, "vlm_rewards": rewards}


# ----------------------------------------------------------------------------- reward map

def scale_boxes(rewards: Sequence[Mapping], from_size: tuple[int, int], to_size: tuple[int, int]) -> list[dict]:
    """Region boxes rescaled from ``from_size`` ``(W, H)`` pixels to ``to_size`` (the option the release lacks:
    its boxes stay in the generated image's pixels while the map is built at the transformed size)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    out = []
    for item in rewards:
        item = dict(item)
        box = item.get("bbox")
        if isinstance(box, (list, tuple)) and len(box) == 4:
            try:
                x0, y0, x1, y1 = (float(v) for v in box)
                item["bbox"] = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
            except (TypeError, ValueError):
                pass
        out.append(item)
    return out


def reward_map(size: tuple[int, int], rewards: Sequence[Mapping], global_score: float | None = None) -> torch.Tensor:
    """SRUM's dense reward map ``[H, W]`` (float32) for an image of ``size = (W, H)`` pixels.

    rewards: region entries ``{"bbox": [x0, y0, x1, y1], "score": s, ...}``; an entry whose ``object`` is
    ``"global_layout_reward"`` is skipped here. global_score: ``g`` in [-1, 1]; None -> 0.0 (neutral).
    The map starts at 0.5; each region sets ``R = max(R, (s + 1) / 2)`` inside its box; then
    ``R *= (g + 1) / 2``. Quirks kept: scores are not clamped (1.5 gives 1.25, -3 gives -1 which the
    max then ignores), so **negative scores change nothing**; coordinates go through ``int()`` (a string
    "12" works, 12.9 becomes 12) and are clamped to the image; a box with ``x0 >= x1`` or ``y0 >= y1``,
    not of length 4 or not numeric is skipped; a missing score is 0.0.
    """
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise ConfigError(f"reward_map: image size must be positive, got {size}")
    g = 0.0 if global_score is None else float(global_score)
    grid = np.full((height, width), 0.5, dtype=np.float32)
    skipped = 0
    for item in rewards or []:
        if item.get("object") == GLOBAL_OBJECT:
            continue
        box = item.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            skipped += 1
            continue
        try:
            x0, y0, x1, y1 = (int(v) for v in box)
        except (TypeError, ValueError):
            skipped += 1
            continue
        if x0 >= x1 or y0 >= y1:
            skipped += 1
            continue
        weight = (float(item.get("score", 0.0)) + 1.0) / 2.0
        x0, x1 = max(0, x0), min(width, x1)
        y0, y1 = max(0, y0), min(height, y1)
        if x0 < x1 and y0 < y1:
            region = grid[y0:y1, x0:x1]
            np.maximum(region, weight, out=region)
    if skipped:
        logger.debug("reward_map: skipped %d malformed boxes", skipped)
    return torch.from_numpy(grid * np.float32((g + 1.0) / 2.0))


def global_score_of(rewards: Sequence[Mapping]) -> float:
    """The first ``global_layout_reward`` entry's score; 0.0 when absent or None (the dataset's default)."""
    for item in rewards or []:
        if item.get("object") == GLOBAL_OBJECT:
            score = item.get("score")
            return 0.0 if score is None else float(score)
    return 0.0


# ----------------------------------------------------------------------------- loss

def token_rewards(maps: Sequence[torch.Tensor], latent_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Per-latent-token rewards ``[sum h*w]``: each ``[H, W]`` map resized to its ``(h, w)`` token grid by
    ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialias), flattened row-major."""
    if len(maps) != len(latent_shapes):
        raise ZooError(f"token_rewards: {len(maps)} reward maps for {len(latent_shapes)} images")
    values = []
    for grid, (h, w) in zip(maps, latent_shapes):
        small = F.interpolate(grid.float()[None, None], size=(int(h), int(w)), mode="bilinear", align_corners=False)
        values.append(small.reshape(-1))
    return torch.cat(values)


def srum_loss(velocity: torch.Tensor, noise: torch.Tensor, x_bad: torch.Tensor, x_good: torch.Tensor,
              rewards: torch.Tensor, lambda_constraint: float = 0.5) -> dict:
    """SRUM's reward-weighted flow loss (bagel.py ``forward``), all tensors per latent token.

    velocity, noise, x_bad, x_good: ``[M, C]``; rewards: ``[M]``. With ``mse(x) = (velocity - (noise - x))^2``:
    ``reward = mean(rewards[:, None] * mse(x_bad))``, ``constraint = mean(mse(x_good))`` (both means over
    all ``M * C`` elements), ``loss = reward + lambda * constraint``. The noisy input was made from
    ``x_bad``; with ``x_good == x_bad`` this is ``mean((r + lambda) * mse)``. Returns
    ``{"loss", "reward_term", "constraint_term"}``.
    """
    if not (velocity.shape == noise.shape == x_bad.shape == x_good.shape):
        raise ZooError(f"srum_loss: shapes differ: velocity {tuple(velocity.shape)}, noise {tuple(noise.shape)}, "
                       f"x_bad {tuple(x_bad.shape)}, x_good {tuple(x_good.shape)}")
    if rewards.shape != velocity.shape[:1]:
        raise ZooError(f"srum_loss: {tuple(rewards.shape)} rewards for {velocity.shape[0]} tokens")
    velocity = velocity.float()
    reward_term = (rewards.float()[:, None] * (velocity - (noise - x_bad).float()) ** 2).mean()
    constraint_term = ((velocity - (noise - x_good).float()) ** 2).mean()
    return {"loss": reward_term + float(lambda_constraint) * constraint_term, "reward_term": reward_term,
            "constraint_term": constraint_term}

