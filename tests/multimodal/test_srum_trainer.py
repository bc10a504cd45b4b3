"""The self-reward pipeline and ``zoo train srum`` on a tiny model: steps, caching, counts, falling loss, exact resume."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from zoo.errors import ConfigError
from zoo.multimodal.srum.builder import build, make_config
from zoo.multimodal.srum.data import make_packs
from zoo.multimodal.srum.pipeline import SelfRewardPipeline, read_prompts
from zoo.tools import ProposedMask
from zoo.train import run
from zoo.train.recipe import load_recipe


class Boxes:
    tool_id = "two-boxes"

    def propose(self, image):
        w, h = image.size
        a = np.zeros((h, w), bool)
        a[0:20, 0:30] = True
        b = np.zeros((h, w), bool)
        b[30:60, 10:50] = True
        return [ProposedMask(a), ProposedMask(b)]


class Judge:
    """A scripted judge: region answers in the release's format, global scores by prompt."""
    tool_id = "scripted-judge"

    def __init__(self):
        self.calls = 0

    def answer(self, image, question, **settings):
        self.calls += 1
        if "Region ID" in question:
            return ("<think>looking</think>Region ID: 1\nIdentified Object: a red circle\nScore: 0.9\n\n"
                    "Region ID: 2\nIdentified Object: grass\nScore: -0.5\n\nRegion ID: 7\nScore: 1")
        if "blue" in question:
            return "The layout is fine."          # no score: retried, then 0.0 -> dropped by the format step
        return "Score: 0.6\nReason: ok"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build(make_config("tiny"))


@pytest.fixture
def pipeline_run(model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green star to the left of a ring\n")
    judge = Judge()
    pipe = SelfRewardPipeline(tmp_path / "run", prompts, model, judge=judge, proposer=Boxes(),
                              generate={"num_timesteps": 3, "think": False}, judging={"max_retries": 2})
    return pipe, judge, tmp_path


def test_pipeline_steps_records_counts_and_cache(pipeline_run):
    pipe, judge, tmp = pipeline_run
    assert pipe.run() == {"generate": "ran", "propose": "ran", "judge": "ran", "format": "ran"}
    rows = [json.loads(line) for line in (tmp / "run" / "rewards.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red circle", "a green star to the left of a ring"]
    first = rows[0]
    assert first["bad_image_file"] == first["good_image_file"] == "0.png"
    assert first["vlm_rewards"][0] == {"object": "global_layout_reward", "bbox": [0, 0, 64, 64], "score": 0.6,
                                       "reason": "ok"}
    # regions sorted by mask area: id 1 is the 40 x 30 box; id 7 has no box and is ignored
    assert [(r["object"], r["bbox"], r["score"]) for r in first["vlm_rewards"][1:]] == [
        ("a red circle", [10, 30, 50, 60], 0.9), ("grass", [0, 0, 30, 20], -0.5)]
    assert pipe.pipeline().result("format") == {"kept": 2, "no_prompt": 0, "global_zero": 1, "no_rewards": 0,
                                                 "regions_incomplete": 0}
    assert pipe.pipeline().result("judge")["retries"] == 1 and pipe.pipeline().result("judge")["global_parse_failed"] == 1
    assert judge.calls == 3 + 3 + 1                     # regional x3, global x3, one retry
    assert pipe.run() == {k: "skipped" for k in ("generate", "propose", "judge", "format")}
    assert pipe.run(force="judge")["judge"] == "ran" and judge.calls == 7   # answers come from the cache
    changed = SelfRewardPipeline(tmp / "run", tmp / "prompts.txt", pipe.model, judge=judge, proposer=Boxes(),
                                 generate={"num_timesteps": 4, "think": False}, judging={"max_retries": 2})
    with pytest.raises(ConfigError, match="num_timesteps"):
        changed.run()


def test_pipeline_settings_and_prompt_errors(model, tmp_path):
    with pytest.raises(ConfigError, match="unknown pipeline settings"):
        SelfRewardPipeline(tmp_path, tmp_path / "p.txt", model, judge=Judge(), proposer=Boxes(), judging={"regions": 3})
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": ""}\n')
    with pytest.raises(ConfigError, match="empty"):
        read_prompts(bad)
    comp = tmp_path / "train_comp.json"
    comp.write_text(json.dumps([{"Question": "a red apple", "Question_id": "q7", "Category": "color"}]))
    assert read_prompts(comp)[0] == {"Question": "a red apple", "Question_id": "q7", "Category": "color", "id": "q7",
                                     "prompt": "a red apple", "index": 0}


def test_packs_respect_the_token_budget():
    packs, skipped = make_packs([30, 30, 30, 50, 200, 10], expected_num_tokens=60, max_num_tokens=80,
                                max_num_tokens_per_sample=100, seed=0)
    assert skipped == [4]
    assert sorted(i for p in packs for i in p) == [0, 1, 2, 3, 5]
    lengths = [30, 30, 30, 50, 200, 10]
    assert all(sum(lengths[i] for i in p) <= 80 for p in packs)
    with pytest.raises(ConfigError):
        make_packs([1], expected_num_tokens=90, max_num_tokens=80, max_num_tokens_per_sample=100)


def recipe(data, out, *extra):
    return load_recipe(None, [f"data.train={data}", "data.transform.max_size=64", "data.transform.min_size=64",
                              "data.transform.stride=16", "data.expected_num_tokens=40", "data.max_num_tokens=80",
                              "data.max_num_tokens_per_sample=80", f"train.output_dir={out}", "train.overwrite=true",
                              "optim.lr=2e-3", "schedule.warmup_steps=0", "train.tensorboard=false",
                              "train.log_every=1", *extra], family="srum")


def test_tiny_run_loss_falls_and_resume_is_exact(pipeline_run, tmp_path):
    pipe, _, tmp = pipeline_run
    pipe.run()
    data = tmp / "run" / "rewards.jsonl"
    final = run(recipe(data, tmp_path / "a", "train.max_steps=40", "train.ckpt_every=0", "data.text_dropout=0.0"))
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert all(0 < r["mean_reward"] < 1 for r in log)
    # the same loss on the same draws (seeded noise and times) before and after training
    import zoo
    from zoo.multimodal.srum.trainer import SrumTrainer

    def fixed_loss(model):
        trainer = SrumTrainer(recipe(data, tmp_path / "probe", "train.max_steps=1"))
        trainer._model = model
        dataset, _ = trainer.build_datasets()
        torch.manual_seed(0)
        batch = trainer.collate([dataset[0]])
        torch.manual_seed(1)
        with torch.no_grad():
            return trainer.training_step(model.train(), batch)["loss"].item()

    before = fixed_loss(pipe.model)
    after = fixed_loss(zoo.load(str(final)))
    assert after < 0.8 * before
    # 4 steps straight == 2 steps, a crash, then resuming from the step-2 checkpoint
    straight = run(recipe(data, tmp_path / "b", "train.max_steps=4", "train.ckpt_every=2"))

    class Crash(SrumTrainer):
        def on_step_end(self, model, step):
            if step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(recipe(data, tmp_path / "c", "train.max_steps=4", "train.ckpt_every=2"), Crash)
    resumed = run(recipe(data, tmp_path / "c", "train.max_steps=4", "train.ckpt_every=2", "train.overwrite=false"))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert final.is_dir()


def test_sft_baseline_uses_unit_rewards_and_missing_images_are_an_error(pipeline_run, tmp_path):
    pipe, _, tmp = pipeline_run
    pipe.run()
    data = tmp / "run" / "rewards.jsonl"
    run(recipe(data, tmp_path / "sft", "train.max_steps=2", "srum.use_rewards=false", "train.ckpt_every=0"))
    log = [json.loads(line) for line in (tmp_path / "sft" / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert all(r["mean_reward"] == 1.0 for r in log)
    (tmp / "run" / "images" / "0.png").unlink()
    with pytest.raises(ConfigError, match="missing"):
        run(recipe(data, tmp_path / "gone", "train.max_steps=1"))


@pytest.mark.parametrize("name, steps", [("comp", 309), ("wise_cul", 398), ("wise_ns", 297), ("wise_st", 296)])
def test_release_recipes_hold_the_scripts_settings(name, steps):
    from pathlib import Path

    import zoo.multimodal.srum as srum

    config = load_recipe(Path(srum.__file__).with_name("recipes") / f"{name}.yaml", family="srum")
    assert config["train"]["max_steps"] == steps
    assert config["optim"] == {"name": "adamw", "lr": 2e-5, "betas": [0.9, 0.95], "eps": 1e-15, "weight_decay": 0.0,
                               "momentum": 0.0, "nesterov": False}
    assert config["schedule"]["warmup_steps"] == 100 and config["schedule"]["name"] == "constant"
    assert (config["data"]["expected_num_tokens"], config["data"]["max_num_tokens"]) == (8192, 9216)
    assert config["srum"]["lambda_constraint"] == 0.5 and config["data"]["text_dropout"] == 0.1
    assert config["train"]["distributed"] == "fsdp" and config["train"]["clip_grad_norm"] == 1.0
    assert config["model"]["init"] == "bagel-7b-mot"


@pytest.mark.slow
def test_two_process_fsdp_run_shards_the_language_model_and_the_vae(pipeline_run, tmp_path):
    """``zoo train srum --nproc-per-node 2 train.distributed=fsdp`` on CPU (gloo): the language model and the VAE
    are separate FSDP units, so the packed forward and the VAE encoding must gather their shards."""
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    pipe, _, tmp = pipeline_run
    pipe.run()
    out = tmp_path / "fsdp"
    command = [sys.executable, "-m", "zoo.cli", "train", "srum", "--nproc-per-node", "2",
               f"data.train={tmp / 'run' / 'rewards.jsonl'}", "data.transform.max_size=64", "data.transform.min_size=64",
               "data.transform.stride=16", "data.expected_num_tokens=40", "data.max_num_tokens=80",
               "data.max_num_tokens_per_sample=80", "train.max_steps=2", f"train.output_dir={out}",
               "train.distributed=fsdp", "train.ckpt_every=0", "train.tensorboard=false", "schedule.warmup_steps=0",
               'model.overrides={"llm.hidden_size": 256, "llm.intermediate_size": 512, '
               '"vae.block_out_channels": [64, 128, 128, 128]}']
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(log) == 2 and all(np.isfinite(r["loss"]) for r in log)
    assert (out / "final" / "model.safetensors").is_file()
