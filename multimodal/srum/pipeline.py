"""SRUM's self-reward data pipeline as resumable steps (``zoo.pipeline``): generate -> propose -> judge -> format.

1. ``generate`` (srum_data_infer/t2i.py): one image per prompt with the model's own T2I
   (``think``, CFG 4.0 in ``(0.4, 1.0]``, shift 3.0, ``num_timesteps`` grid points, global renorm, seed 42).
   Blank borders are cropped (``PIL.Image.getbbox``) as released, so an image may come out smaller than
   generated. Writes ``images/<id>.png`` and ``generated.jsonl`` (``image_file``, ``original_prompt``,
   ``detailed_prompt``, ``think_output``). Each image has its own seed (``seed`` + its index) so a
   resumed or re-batched run draws the same noise; the release seeds once and draws in order.
2. ``propose`` (vlm.py ``get_all_bboxes_with_sam``): a ``MaskProposer`` (SAM vit_h automatic masks in
   the release; the shapes world's masks offline) -> boxes of the ``max_regions`` largest masks.
3. ``judge`` (vlm.py, region mode + ``--global_layout_reward``): the hybrid region prompt and the global
   layout prompt to a ``VQATool`` (the model itself by default, thinking, greedy, at most 4095 / 1023
   new tokens), each up to ``max_retries`` times until it parses. Writes ``judged.jsonl``.
4. ``format`` (vlm_format_output.py): ``rewards.jsonl`` for training; the dropped records are counted.

The released multi-GPU script runs with ``max_regions=10, max_retries=5``; ``vlm.py``'s own defaults are
5 and 3. Every model and tool call goes through the run folder's cache (``ctx.cached``; generated images
in ``.calls/images``), so an interrupted run repeats nothing it already did.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

from zoo.errors import ConfigError
from zoo.files import write_text
from zoo.pipeline import Pipeline, Step
from zoo.multimodal.srum import rewards as R

logger = logging.getLogger("zoo.srum")

__all__ = ["GENERATE_DEFAULTS", "JUDGE_DEFAULTS", "read_prompts", "SelfRewardPipeline"]

GENERATE_DEFAULTS = {
    "think": True,
    "max_think_token_n": 1000,
    "cfg_text_scale": 4.0,
    "cfg_interval": [0.4, 1.0],
    "timestep_shift": 3.0,
    "num_timesteps": 50,
    "cfg_renorm_min": 0.0,
    "cfg_renorm_type": "global",
    "image_size": None,          # None: the model's default (1024 x 1024 for BAGEL)
    "seed": 42,
    "crop_blank_border": True,   # t2i.py:155-156
    "batch_size": 1,
}
JUDGE_DEFAULTS = {
    "max_regions": 10,           # vlm.sh runs vlm_multi_gpu.py (10); vlm.py's default is 5
    "max_retries": 5,            # vlm_multi_gpu.py (5); vlm.py's default is 3
    "global_layout_reward": True,
    "region_settings": {"think": True, "max_new_tokens": 4095},   # max_think_token_n=4096 counts the start token
    "global_settings": {"think": True, "max_new_tokens": 1023},
    "strict_parser": False,
}


def read_prompts(path: str | Path) -> list[dict]:
    """Prompts as ``[{"id", "prompt", ...}]`` from a JSON list (SRUM's ``train_comp.json``: ``Question``,
    ``Question_id``/``Category``), a JSONL (``prompt`` or ``text``), or a text file (one prompt a line).
    Raises ConfigError for an empty file, an empty or duplicate prompt id, or an empty prompt."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        rows = json.loads(text)
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    prompts, seen = [], set()
    for index, row in enumerate(rows):
        prompt = row.get("prompt") or row.get("Question") or row.get("text") or ""
        if not str(prompt).strip():
            raise ConfigError(f"{path}: prompt {index} is empty")
        pid = str(row.get("id", row.get("Question_id", index)))
        if pid in seen:
            raise ConfigError(f"{path}: prompt id {pid!r} appears twice")
        seen.add(pid)
        prompts.append({**row, "id": pid, "prompt": str(prompt), "index": index})
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts


def _ask(cached, image, question: str, settings: dict, attempt: int) -> str:
    """One judge call through the run's cache; a retry is cached apart from the first try (a sampling judge
    may answer differently; a greedy one repeats itself, as the release's retries do)."""
    if attempt == 1:
        return cached.answer(image, question, **settings)
    return cached.cache.call(cached.tool_id, "answer", lambda: cached.tool.answer(image, question, **settings),
                             prompt=question, image=image, settings={**settings, "attempt": attempt})


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class SelfRewardPipeline:
    """The four steps in ``folder`` for ``prompts_file``.

    model: the SrumModel that generates (and judges, unless ``judge`` is given).
    judge: any ``zoo.tools.VQATool`` (``answer(image, question, **settings)``); default ``model``.
    proposer: any ``zoo.tools.MaskProposer``; default ``zoo.tools.default_mask_proposer()``.
    generate / judging: settings over :data:`GENERATE_DEFAULTS` / :data:`JUDGE_DEFAULTS`.
    judge_id / proposer_id: cache identities of the tools (default their ``tool_id``).
    Output: ``rewards.jsonl`` and ``images/`` in ``folder`` (``data.train`` / ``data.image_dir`` of the trainer).
    """

    def __init__(self, folder, prompts_file, model, *, judge=None, proposer=None, generate: dict | None = None,
                 judging: dict | None = None, judge_id: str | None = None, proposer_id: str | None = None,
                 on_generated: Callable | None = None):
        self.folder = Path(folder)
        self.prompts_file = Path(prompts_file).resolve()
        self.model = model
        self.judge = judge if judge is not None else model
        if proposer is None:
            from zoo.tools import default_mask_proposer

            proposer = default_mask_proposer()
        self.proposer = proposer
        unknown = set(generate or {}) - set(GENERATE_DEFAULTS)
        unknown |= set(judging or {}) - set(JUDGE_DEFAULTS)
        if unknown:
            raise ConfigError(f"unknown pipeline settings {sorted(unknown)}; valid: "
                              f"{sorted(GENERATE_DEFAULTS)} and {sorted(JUDGE_DEFAULTS)}")
        self.gen = {**GENERATE_DEFAULTS, **(generate or {})}
        self.jud = {**JUDGE_DEFAULTS, **(judging or {})}
        self.judge_id = judge_id or getattr(self.judge, "tool_id", None)
        self.proposer_id = proposer_id or getattr(self.proposer, "tool_id", None)
        if not self.judge_id or not self.proposer_id:
            raise ConfigError("the judge and the mask proposer need a tool_id (an identity for the call cache); "
                              "pass judge_id= / proposer_id=")
        self.model_id = getattr(model, "tool_id", None) or "model"

    # ------------------------------------------------------------------ steps
    def pipeline(self) -> Pipeline:
        gen_settings = {**self.gen, "model": self.model_id}
        jud_settings = {**{k: v for k, v in self.jud.items() if k not in ("max_regions", "strict_parser")},
                        "judge": self.judge_id, "strict_parser": self.jud["strict_parser"]}
        return Pipeline(self.folder, [
            Step("generate", self._generate, settings=gen_settings, inputs=[str(self.prompts_file)],
                 outputs=["images", "generated.jsonl"]),
            Step("propose", self._propose, settings={"proposer": self.proposer_id, "max_regions": self.jud["max_regions"]},
                 inputs=["generated.jsonl"], outputs=["regions.jsonl"]),
            Step("judge", self._judge, settings=jud_settings, inputs=["regions.jsonl"], outputs=["judged.jsonl"]),
            Step("format", self._format, settings={}, inputs=["judged.jsonl", "generated.jsonl"],
                 outputs=["rewards.jsonl"]),
        ], name="srum-rewards", log=logger)

    def run(self, force=False) -> dict:
        """Run the steps not yet done; returns ``{step: "ran" | "skipped"}``."""
        return self.pipeline().run(force)

    def _image_cache(self, prompt: dict) -> Path:
        key = json.dumps([self.model_id, prompt["prompt"], prompt["index"], self.gen], sort_keys=True)
        return self.folder / ".calls" / "images" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".png")

    def _generate(self, ctx) -> dict:
        from PIL import Image

        prompts = read_prompts(self.prompts_file)
        out_dir = ctx.output("images")
        out_dir.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in self.gen.items() if k not in ("seed", "crop_blank_border", "batch_size")}
        records, cropped = [], 0
        todo = [p for p in prompts if not self._image_cache(p).is_file()]
        batch = max(int(self.gen["batch_size"]), 1)
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            # one generator per image: the same noise however the prompts are batched
            images, thoughts = [], []
            for p in chunk:
                import torch

                gen = torch.Generator().manual_seed(int(self.gen["seed"]) + int(p["index"]))
                image, thought = self.model.generate_image(p["prompt"], generator=gen, return_think=True, **settings)
                images.append(image)
                thoughts.append(thought)
            for p, image, thought in zip(chunk, images, thoughts):
                cache = self._image_cache(p)
                cache.parent.mkdir(parents=True, exist_ok=True)
                image.save(cache)
                (cache.with_suffix(".think.txt")).write_text(thought or "", encoding="utf-8")
            logger.info("generated %d / %d images", min(start + batch, len(todo)), len(todo))
        for p in prompts:
            cache = self._image_cache(p)
            image = Image.open(cache).convert("RGB")
            if self.gen["crop_blank_border"]:
                box = image.getbbox()
                if box and box != (0, 0, image.width, image.height):
                    image = image.crop(box)
                    cropped += 1
            name = f"{p['id']}.png"
            image.save(out_dir / name)
            think = cache.with_suffix(".think.txt").read_text(encoding="utf-8") if self.gen["think"] else ""
            records.append({"original_index": p["index"], "prompt_id": p["id"], "image_file": name,
                            "original_prompt": p["prompt"], "category": p.get("Category", p.get("category")),
                            "detailed_prompt": R.extract_detailed_prompt(think) if self.gen["think"] else None,
                            "think_output": think if self.gen["think"] else None})
        write_text(ctx.output("generated.jsonl"), _jsonl(records))
        if cropped:
            logger.info("cropped blank borders off %d images (as t2i.py does)", cropped)
        return {"images": len(records), "cropped": cropped}

    def _propose(self, ctx) -> dict:
        from zoo.models.bagel import to_pil

        proposer = ctx.cached(self.proposer, self.proposer_id)
        rows, empty = [], 0
        for record in _read_jsonl(ctx.path("generated.jsonl")):
            image = to_pil(ctx.path("images") / record["image_file"])
            regions = R.boxes_from_masks(proposer.propose(image), int(self.jud["max_regions"]))
            empty += not regions
            rows.append({"image_file": record["image_file"], "size": list(image.size),
                         "regions": [{"bbox": r.bbox, "area": r.area, "region_id": r.region_id} for r in regions]})
        write_text(ctx.output("regions.jsonl"), _jsonl(rows))
        if empty:
            logger.warning("the mask proposer found no region in %d of %d images (they get no regional reward)",
                           empty, len(rows))
        return {"images": len(rows), "no_regions": empty}

    def _judge(self, ctx) -> dict:
        from zoo.models.bagel import to_pil

        judge = ctx.cached(self.judge, self.judge_id)
        strict = bool(self.jud["strict_parser"])
        generated = {r["image_file"]: r for r in _read_jsonl(ctx.path("generated.jsonl"))}
        rows, counts = [], {"regions_asked": 0, "regions_scored": 0, "region_parse_failed": 0,
                            "global_parse_failed": 0, "retries": 0}
        for item in _read_jsonl(ctx.path("regions.jsonl")):
            record = generated[item["image_file"]]
            prompt = record["original_prompt"]
            image = to_pil(ctx.path("images") / item["image_file"])
            width, height = image.size
            regions = [R.Region(r["bbox"], r["area"], r["region_id"]) for r in item["regions"]]
            rewards, raw = [], ""
            if regions:
                question = R.hybrid_region_prompt(prompt, regions)
                parsed, raw, attempts = R.judge_with_retries(
                    lambda k: _ask(judge, image, question, self.jud["region_settings"], k),
                    lambda text: R.parse_region_answer(text, strict=strict), bool, self.jud["max_retries"])
                counts["retries"] += attempts - 1
                counts["regions_asked"] += len(regions)
                if not parsed:
                    counts["region_parse_failed"] += 1
                rewards = R.regions_to_rewards(regions, parsed)
                counts["regions_scored"] += len(rewards)
            glob = None
            if self.jud["global_layout_reward"]:
                question = R.global_layout_prompt(prompt)
                parsed, _, attempts = R.judge_with_retries(
                    lambda k: _ask(judge, image, question, self.jud["global_settings"], k),
                    lambda text: R.parse_global_answer(text, strict=strict),
                    lambda p: "global_layout_score" in p, self.jud["max_retries"])
                counts["retries"] += attempts - 1
                if "global_layout_score" in parsed:
                    glob = {**parsed, "bbox": [0, 0, width, height], "area": width * height}
                else:
                    counts["global_parse_failed"] += 1
                    glob = {"bbox": [0, 0, width, height], "area": width * height, "global_layout_score": 0.0,
                            "reason": f"VLM failed to produce a parsable output after {self.jud['max_retries']} attempts."}
            rows.append({"image_file": item["image_file"], "prompt": prompt, "vlm_rewards": rewards,
                         "global_layout_reward": glob, "vlm_raw_output": raw})
        write_text(ctx.output("judged.jsonl"), _jsonl(rows))
        logger.info("judge: %s", counts)
        return counts

    def _format(self, ctx) -> dict:
        prompt_map = {r["image_file"]: r["original_prompt"] for r in _read_jsonl(ctx.path("generated.jsonl"))
                      if r.get("image_file") and r.get("original_prompt")}
        stats = R.FormatStats()
        rows = [rec for rec in (R.format_record(r, prompt_map, stats) for r in _read_jsonl(ctx.path("judged.jsonl")))
                if rec is not None]
        write_text(ctx.output("rewards.jsonl"), _jsonl(rows))
        dropped = {k: v for k, v in stats.as_dict().items() if k != "kept" and v}
        logger.info("format: kept %d records%s", stats.kept,
                    f"; dropped/skipped {dropped}" if dropped else "")
        return stats.as_dict()
