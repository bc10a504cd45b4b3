"""SRUM's reward functions on hand-made inputs: prompts, parsers (quirks included), format step, reward map, loss."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.errors import ZooError
from zoo.multimodal.srum import rewards as R
from zoo.tools import ProposedMask


# ----------------------------------------------------------------------------- reward map

def test_reward_map_background_max_overlay_and_global_factor():
    items = [
        {"object": "global_layout_reward", "bbox": [0, 0, 8, 6], "score": -1.0},   # skipped here
        {"object": "a", "bbox": [0, 0, 4, 3], "score": 0.6},          # weight 0.8
        {"object": "b", "bbox": [2, 1, 6, 4], "score": 0.0},          # weight 0.5: below the 0.8 where they overlap
        {"object": "c", "bbox": [5, 4, 8, 6], "score": -0.8},         # weight 0.1: the max keeps 0.5
    ]
    grid = R.reward_map((8, 6), items, global_score=0.5)               # factor 0.75
    expected = np.full((6, 8), 0.5, dtype=np.float32)
    expected[0:3, 0:4] = 0.8
    assert torch.allclose(grid, torch.from_numpy(expected * 0.75))
    assert grid.shape == (6, 8) and grid.dtype == torch.float32


def test_reward_map_quirks_unclamped_int_cut_clamped_and_skipped_boxes():
    items = [
        {"bbox": [1.9, 0, 3.2, 1], "score": 1.5},            # int(): x 1..3, weight 1.25 (not clamped)
        {"bbox": ["4", "0", "6", "2"], "score": 0.0},        # strings go through int()
        {"bbox": [-5, 3, 100, 100]},                         # no score -> 0.0 -> 0.5; clamped to the image
        {"bbox": [3, 3, 3, 5], "score": 1.0},                # x0 >= x1: skipped
        {"bbox": [0, 0, 1], "score": 1.0},                   # not 4 numbers: skipped
        {"bbox": ["a", 0, 1, 1], "score": 1.0},              # not numeric: skipped
        {"bbox": None, "score": 1.0},
    ]
    grid = R.reward_map((6, 4), items, None)                  # no global score -> factor 0.5
    expected = np.full((4, 6), 0.5, dtype=np.float32)
    expected[0:1, 1:3] = 1.25
    assert torch.allclose(grid, torch.from_numpy(expected * 0.5))


def test_reward_map_without_regions_is_the_scaled_background_and_rescaling_is_an_option():
    assert torch.allclose(R.reward_map((4, 4), [], -0.6), torch.full((4, 4), 0.5 * 0.2))
    scaled = R.scale_boxes([{"bbox": [10, 20, 30, 40], "score": 1.0}], (100, 100), (50, 25))
    assert scaled[0]["bbox"] == [5.0, 5.0, 15.0, 10.0]


def test_token_rewards_resize_bilinearly_to_each_latent_grid():
    a = torch.arange(64.0).reshape(8, 8)
    b = torch.ones(4, 8)
    values = R.token_rewards([a, b], [(2, 2), (1, 2)])
    assert values.shape == (6,)
    assert torch.allclose(values[:4], F.interpolate(a[None, None], size=(2, 2), mode="bilinear",
                                                    align_corners=False).flatten())
    assert torch.allclose(values[4:], torch.ones(2))
    with pytest.raises(ZooError):
        R.token_rewards([a], [(2, 2), (1, 1)])


# ----------------------------------------------------------------------------- loss

def test_loss_is_reward_plus_lambda_weighted_mse_when_the_latents_are_equal():
    torch.manual_seed(0)
    v, noise, x = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    r = torch.tensor([0.1, 0.5, 0.9, 1.25, 0.0, 0.3])
    out = R.srum_loss(v, noise, x, x, r, lambda_constraint=0.5)
    mse = (v - (noise - x)) ** 2
    assert torch.allclose(out["loss"], ((r[:, None] + 0.5) * mse).mean())
    assert torch.allclose(out["reward_term"], (r[:, None] * mse).mean())
    assert torch.allclose(out["constraint_term"], mse.mean())


def test_loss_by_hand_and_bad_shapes():
    v = torch.tensor([[1.0, 0.0]])
    noise = torch.tensor([[0.0, 0.0]])
    bad, good = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    # mse(bad) = ((1-0)^2 + (0+1)^2) / 2 = 1 per element mean, mse(good) = (4 + 1) / 2 = 2.5
    out = R.srum_loss(v, noise, bad, good, torch.tensor([2.0]), lambda_constraint=0.1)
    assert out["reward_term"].item() == pytest.approx(2.0)
    assert out["constraint_term"].item() == pytest.approx(2.5)
    assert out["loss"].item() == pytest.approx(2.25)
    with pytest.raises(ZooError, match="rewards"):
        R.srum_loss(v, noise, bad, good, torch.ones(3))


# ----------------------------------------------------------------------------- regions and prompts

def test_regions_are_the_largest_masks_not_the_largest_boxes():
    diagonal = np.eye(20, dtype=bool)                   # box 20 x 20, mask area 20
    block = np.zeros((20, 20), bool)
    block[0:6, 0:6] = True                              # box 6 x 6, mask area 36
    dot = np.zeros((20, 20), bool)
    dot[10, 10] = True
    regions = R.boxes_from_masks([ProposedMask(diagonal), ProposedMask(dot), ProposedMask(block)], max_regions=2)
    assert [(r.region_id, r.bbox, r.area) for r in regions] == [(1, [0, 0, 6, 6], 36), (2, [0, 0, 20, 20], 20)]
    sam_style = R.boxes_from_masks([{"bbox": [1, 2, 3, 4], "area": 5}], 5)   # xywh -> xyxy
    assert sam_style[0].bbox == [1, 2, 4, 6]


def test_hybrid_prompt_lists_regions_as_the_release_writes_them():
    text = R.hybrid_region_prompt("a red circle", [R.Region([0, 0, 10, 20], 9), R.Region([5, 6, 7, 8], 1)])
    assert '**Original Prompt:** "a red circle"' in text
    assert "**UNLABELED REGIONS FOR YOUR ANALYSIS:**\nRegion ID: 1\nBounding Box: [0, 0, 10, 20]\n---\n" \
           "Region ID: 2\nBounding Box: [5, 6, 7, 8]\n---\n\n---\n" in text
    assert text.startswith("# TASK: Integrated Region Analysis and Scoring\n")
    assert text.endswith("Begin your analysis now.\n")
    assert R.global_layout_prompt("p").count('"p"') == 1


# ----------------------------------------------------------------------------- parsers

ANSWER = ("<think>Region ID: 1\nScore: 0.1</think>\n**Region ID: 1**\nIdentified Object: a red circle\nScore: 0.8/1.0\n"
          "Reason: fine\n\nRegion ID: 2\nIdentified Object: a tree\nScore: -0.5\n\nRegion ID: 9\nScore: 0.3")


def test_region_parser_reads_after_think_first_score_and_keeps_unasked_ids():
    parsed = R.parse_region_answer(ANSWER)
    assert parsed == {1: {"identified_object": "a red circle", "score": 0.8, "reason": "fine"},
                      2: {"identified_object": "a tree", "score": -0.5}, 9: {"score": 0.3}}
    rewards = R.regions_to_rewards([R.Region([0, 0, 4, 4], 16, 1), R.Region([4, 4, 8, 8], 9, 2)], parsed)
    assert [r["bbox"] for r in rewards] == [[0, 0, 4, 4], [4, 4, 8, 8]]   # id 9 has no box: ignored


def test_region_parser_quirks_and_the_strict_option():
    dashes = "Region ID: 1\nIdentified Object: a\nScore: 0.5\n---\nRegion ID: 2\nIdentified Object: b\nScore: 0.9"
    assert R.parse_region_answer(dashes) == {1: {"identified_object": "a", "score": 0.5}}   # one block only
    assert R.parse_region_answer(dashes, strict=True)[2] == {"identified_object": "b", "score": 0.9}
    crlf = "Region ID: 1\r\nScore: 0.5\r\n\r\nRegion ID: 2\r\nScore: 0.7"
    assert list(R.parse_region_answer(crlf)) == [1] and R.parse_region_answer(crlf)[1]["score"] == 0.5
    assert R.parse_region_answer(crlf, strict=True) == {1: {"score": 0.5}, 2: {"score": 0.7}}
    assert R.parse_region_answer("Region ID: 1\nScore: +0.6") == {1: {}}          # '+' rejected
    assert R.parse_region_answer("Region ID: 1\nScore: .5") == {1: {}}
    assert R.parse_region_answer("Region ID: 1\nScore: **0.8**") == {1: {}}
    assert R.parse_region_answer("Region ID: 1\nScore: **0.8**", strict=True) == {1: {"score": 0.8}}
    later = "Region ID: 1\nIdentified Object: x\nScore: 0.5\n\nRegion ID: 1\nIdentified Object: y"
    assert R.parse_region_answer(later) == {1: {"identified_object": "y"}}     # the later block wins, unscored
    draft = "<think>Region ID: 3\nScore: 0.4"                                   # unclosed think: draft counts
    assert R.parse_region_answer(draft) == {3: {"score": 0.4}}


def test_global_parser_and_retries_default_to_zero_then_the_format_step_drops_it():
    assert R.parse_global_answer("<think>Score: 0.9</think>Score: -0.7 Reason: wrong side") == \
        {"global_layout_score": -0.7, "reason": "wrong side"}
    assert R.parse_global_answer("I like it") == {}
    calls = []
    parsed, raw, attempts = R.judge_with_retries(lambda attempt: calls.append(attempt) or "no score", R.parse_global_answer,
                                                 lambda p: "global_layout_score" in p, 3)
    assert (parsed, raw, attempts, calls) == ({}, "no score", 3, [1, 2, 3])
    record = {"image_file": "x.png", "vlm_rewards": [{"identified_object": "o", "bbox": [0, 0, 1, 1], "score": 0.5}],
              "global_layout_reward": {"global_layout_score": 0.0, "bbox": [0, 0, 4, 4]}}
    stats = R.FormatStats()
    assert R.format_record(record, {"x.png": "p"}, stats) is None and stats.global_zero == 1


def test_format_step_drops_and_keeps_as_released():
    prompts = {"a.png": "A", "b.png": "B", "c.png": "C"}
    stats = R.FormatStats()
    kept = R.format_record({"image_file": "a.png", "global_layout_reward": {"global_layout_score": -0.5, "reason": "r",
                                                                               "bbox": [0, 0, 8, 8]},
                            "vlm_rewards": [{"bbox": [0, 0, 1, 1], "score": 0.5},
                                            {"identified_object": "o", "bbox": [1, 1, 3, 3], "score": 0.9}]},
                           prompts, stats)
    assert kept == {"bad_image_file": "a.png", "good_image_file": "a.png", "prompt": "A", "vlm_rewards": [
        {"object": "global_layout_reward", "bbox": [0, 0, 8, 8], "score": -0.5, "reason": "r"},
        {"object": "o", "bbox": [1, 1, 3, 3], "score": 0.9}]}
    no_global = R.format_record({"image_file": "b.png", "global_layout_reward": None,
                                 "vlm_rewards": [{"identified_object": "o", "bbox": [1, 1, 3, 3], "score": -0.9}]},
                                prompts, stats)
    assert no_global["vlm_rewards"] == [{"object": "o", "bbox": [1, 1, 3, 3], "score": -0.9}]
    assert R.global_score_of(no_global["vlm_rewards"]) == 0.0
    assert R.format_record({"image_file": "c.png", "vlm_rewards": []}, prompts, stats) is None
    assert R.format_record({"image_file": "zz.png", "vlm_rewards": []}, prompts, stats) is None
    assert stats.as_dict() == {"kept": 2, "no_prompt": 1, "global_zero": 0, "no_rewards": 1, "regions_incomplete": 1}


def test_detailed_prompt_extraction():
    assert R.extract_detailed_prompt("plan\nHere's the finished detailed prompt: a big red circle\n\nmore") == \
        "a big red circle"
    assert R.extract_detailed_prompt("nothing") == "Failed to extract detailed prompt."
