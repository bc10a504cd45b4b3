"""SRUM training data: formatted reward records -> token-budget packs of (image, reward map, prompt).

A record (one JSONL line, the output of the format step) is
``{"bad_image_file", "good_image_file", "prompt", "vlm_rewards": [{"object", "bbox", "score"}, ...]}``
(WayneJin0918/SRUM:data/regional_reward_dataset.py). For each record the dataset gives the "bad" image
(the noisy input is made from it), the "good" image (the constraint target; the same file as released),
the dense reward map at the transformed image size and the prompt's token ids.

Packing: samples are grouped into packs of about ``expected_num_tokens`` tokens and never more than
``max_num_tokens`` (``text + 2`` plus ``h * w + 2`` per sample), as BAGEL's ``PackedDataset`` yields one
packed sequence per step (``expected_num_tokens 8192``, ``max_num_tokens 9216`` in the SRUM scripts).
Ours packs a seeded permutation in order once, so packs are fixed and the engine's resumable sampler
shuffles them per epoch (exact resume); BAGEL's streaming packer also keeps an overflow buffer that
reorders samples. A sample longer than ``max_num_tokens_per_sample`` is skipped and counted in the log.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from zoo.errors import ConfigError
from zoo.models.bagel import ImageTransform, resize_size, to_pil
from zoo.multimodal.srum.rewards import GLOBAL_OBJECT, global_score_of, reward_map, scale_boxes

logger = logging.getLogger("zoo.srum")

__all__ = ["read_records", "RewardSample", "RewardDataset", "make_packs"]


def read_records(path: str | Path) -> list[dict]:
    """The records of a formatted rewards JSONL; ConfigError naming the line for a bad one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"rewards file {str(path)!r} does not exist; run the self-reward pipeline "
                          "(zoo.multimodal.srum.pipeline) or point data.train at its rewards.jsonl")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{number} is not JSON ({err})") from err
            missing = [k for k in ("bad_image_file", "good_image_file", "prompt", "vlm_rewards") if k not in record]
            if missing:
                raise ConfigError(f"{path}:{number} lacks {missing}; expected the format step's records")
            records.append(record)
    if not records:
        raise ConfigError(f"{path} holds no records")
    return records


@dataclass
class RewardSample:
    """One training sample: images ``[3, H, W]`` in [-1, 1], the reward map ``[H, W]``, prompt token ids."""

    bad: torch.Tensor
    good: torch.Tensor
    reward_map: torch.Tensor
    text_ids: list[int]
    same_image: bool


class RewardDataset(torch.utils.data.Dataset):
    """Packs of :class:`RewardSample` (one item = one pack = one optimizer micro-step)."""

    def __init__(self, records: Sequence[dict], image_dir: str | Path, good_image_dir: str | Path | None, tokenizer,
                 transform: ImageTransform, *, latent_downsample: int, expected_num_tokens: int, max_num_tokens: int,
                 max_num_tokens_per_sample: int, rescale_boxes: bool = False, seed: int = 42):
        self.records = list(records)
        self.image_dir = Path(image_dir)
        self.good_dir = Path(good_image_dir) if good_image_dir else self.image_dir
        self.transform = transform
        self.rescale_boxes = rescale_boxes
        self.tokenizer = tokenizer
        missing = [str(self.image_dir / r["bad_image_file"]) for r in self.records
                   if not (self.image_dir / r["bad_image_file"]).is_file()]
        missing += [str(self.good_dir / r["good_image_file"]) for r in self.records
                    if not (self.good_dir / r["good_image_file"]).is_file()]
        if missing:
            raise ConfigError(f"{len(missing)} images of the rewards file are missing, e.g. {missing[:3]}; point "
                              "data.image_dir at the generated images or rerun the pipeline's generate step")
        self.text_ids = [list(tokenizer.encode(r["prompt"], add_special_tokens=False)) for r in self.records]
        self.sizes = [self._size(r) for r in self.records]
        lengths = []
        for ids, (w, h) in zip(self.text_ids, self.sizes):
            lengths.append(len(ids) + 2 + (h // latent_downsample) * (w // latent_downsample) + 2)
        self.lengths = lengths
        self.packs, skipped = make_packs(lengths, expected_num_tokens, max_num_tokens, max_num_tokens_per_sample,
                                         seed=seed)
        if skipped:
            logger.warning("skipped %d of %d samples longer than max_num_tokens_per_sample=%d", len(skipped),
                           len(lengths), max_num_tokens_per_sample)
        if not self.packs:
            raise ConfigError("no sample fits max_num_tokens_per_sample / max_num_tokens; raise them")
        logger.info("%d samples in %d packs (%.1f samples, %.0f tokens per pack)", sum(map(len, self.packs)),
                    len(self.packs), sum(map(len, self.packs)) / len(self.packs),
                    sum(lengths[i] for p in self.packs for i in p) / len(self.packs))

    def _size(self, record: dict) -> tuple[int, int]:
        from PIL import Image

        with Image.open(self.image_dir / record["bad_image_file"]) as image:
            width, height = image.size
        t = self.transform
        return resize_size(width, height, t.max_size, t.min_size, t.stride, t.max_pixels)

    def __len__(self) -> int:
        return len(self.packs)

    def sample(self, index: int) -> RewardSample:
        record = self.records[index]
        bad_path = self.image_dir / record["bad_image_file"]
        good_path = self.good_dir / record["good_image_file"]
        bad_pil = to_pil(bad_path)
        bad = self.transform(bad_pil)
        good = bad if good_path == bad_path else self.transform(to_pil(good_path))
        height, width = bad.shape[1:]
        rewards = [r for r in record["vlm_rewards"] if r.get("object") != GLOBAL_OBJECT]
        if self.rescale_boxes:
            rewards = scale_boxes(rewards, bad_pil.size, (width, height))
        grid = reward_map((width, height), rewards, global_score_of(record["vlm_rewards"]))
        return RewardSample(bad, good, grid, self.text_ids[index], good_path == bad_path)

    def __getitem__(self, index: int) -> list[RewardSample]:
        return [self.sample(i) for i in self.packs[index]]


def make_packs(lengths: Sequence[int], expected_num_tokens: int, max_num_tokens: int, max_num_tokens_per_sample: int,
               *, seed: int = 42) -> tuple[list[list[int]], list[int]]:
    """Group sample indexes into packs: a seeded permutation, filled in order; a pack closes when it reaches
    ``expected_num_tokens`` or the next sample would pass ``max_num_tokens``. Returns (packs, skipped)."""
    if expected_num_tokens > max_num_tokens:
        raise ConfigError(f"expected_num_tokens ({expected_num_tokens}) must not exceed max_num_tokens "
                          f"({max_num_tokens})")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    packs, current, total, skipped = [], [], 0, []
    for i in order:
        n = int(lengths[i])
        if n > max_num_tokens_per_sample or n > max_num_tokens:
            skipped.append(i)
            continue
        if current and total + n > max_num_tokens:
            packs.append(current)
            current, total = [], 0
        current.append(i)
        total += n
        if total >= expected_num_tokens:
            packs.append(current)
            current, total = [], 0
    if current:
        packs.append(current)
    return packs, skipped
