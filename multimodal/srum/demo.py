"""The SRUM real check on the shapes world, on a CPU (tens of minutes).

1. ``vae``: a tiny 16-channel ``AutoencoderKL`` (4x down, see ``DEMO_OVERRIDES``) trained on 64-px shapes scenes.
2. ``base``: a tiny BAGEL-style MoT pretrained on shapes-world text-to-image (flow matching on the VAE
   latents, prompts from ``zoo.data.shapes.sample_prompt``) and on understanding: captions, and SRUM's
   own judge prompts (the hybrid region prompt and the global layout prompt) answered by
   :class:`ShapesRewardJudge`, so the model can judge its own images in SRUM's format.
3. ``self`` rewards: the SRUM pipeline with the base model as generator and judge, the shapes world's
   mask proposer for the regions, on training prompts of the categories colour, numeracy and spatial.
   ``oracle`` rewards: the same images judged by :class:`ShapesRewardJudge` (the ceiling of better rewards).
4. Three fine-tunings from the base with ``zoo train srum`` on the same self-generated images: SRUM with
   its own rewards, SRUM with the oracle's rewards, and plain SFT (``srum.use_rewards: false``, r = 1).
5. Evaluation: each model draws held-out prompts (same seeds for all) and the shapes judge scores every
   image per category (``zoo.data.shapes.judge.check``): the base's scores are the baseline.

    python -m zoo.multimodal.srum.demo --out runs/srum-demo [--quick]

Every stage is a resumable ``zoo.pipeline`` step of ``<out>``; ``report.json`` holds the figures.
Deviations from the release, for a CPU: a tiny model, 64-px images, no thinking (the tiny judge answers
directly), 25 sampling grid points, two judge attempts, and a learning rate for a tiny model.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError

logger = logging.getLogger("zoo.srum")

CATEGORIES = ("color", "numeracy", "spatial")

QUICK = {"vae_steps": 150, "base_steps": 300, "train_prompts": 60, "eval_prompts": 12, "finetune_steps": 30}
FULL = {"vae_steps": 500, "base_steps": 2000, "train_prompts": 240, "eval_prompts": 40, "finetune_steps": 150}
# The demo's VAE downsamples 4x (16 x 16 latents at 64 px, 64 latent tokens): at 8x (the tiny size's 8 x 8
# latents) a VAE trained for minutes on a CPU keeps colours but blurs stars and diamonds into discs, and
# the shapes judge, which reads shapes, then fails even on reconstructions.
DEMO_OVERRIDES = {"vae.block_out_channels": [16, 32, 32], "vae.down_block_types": ["DownEncoderBlock2D"] * 3,
                  "vae.up_block_types": ["UpDecoderBlock2D"] * 3}


def demo_config() -> dict:
    from zoo.multimodal.srum.builder import make_config

    return make_config("tiny", **DEMO_OVERRIDES)


# ----------------------------------------------------------------------------- shapes data

def shapes_examples(n: int, seed: int, categories=CATEGORIES) -> list[dict]:
    """``n`` prompts (round-robin over ``categories``) with their specs, rendered at 64 px."""
    from zoo.data.shapes import render, sample_prompt

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        category = categories[i % len(categories)]
        text, spec = sample_prompt(category, rng)
        image, _ = render(spec, 64)
        out.append({"id": f"{category}-{i}", "prompt": text, "spec": spec, "category": category, "image": image})
    return out


def to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


# ----------------------------------------------------------------------------- the oracle judge

_PROMPT = re.compile(r'\*\*Original Prompt:\*\* "(.*)"')
_REGION = re.compile(r"Region ID: (\d+)\nBounding Box: \[(-?\d+), (-?\d+), (-?\d+), (-?\d+)\]")


def region_verdicts(image, prompt: str, boxes: list[tuple[int, list[int]]]) -> list[tuple[int, str, float]]:
    """``(region_id, identified object, score)``: the detected object with the largest overlap with the box,
    described; score 1.0 if the prompt asks for an object of that colour and shape, else -1.0."""
    from zoo.data.shapes import describe, parse_caption
    from zoo.data.shapes.judge import detect

    wants = parse_caption(prompt)["objects"]
    found = detect(image)
    out = []
    for region_id, (x0, y0, x1, y1) in boxes:
        best, overlap = None, 0
        for d in found:
            ix = max(0, min(x1, d.bbox[2]) - max(x0, d.bbox[0]))
            iy = max(0, min(y1, d.bbox[3]) - max(y0, d.bbox[1]))
            if ix * iy > overlap:
                best, overlap = d, ix * iy
        if best is None:
            out.append((region_id, "background", -1.0))
            continue
        asked = any(w.get("color") in (None, best.color) and w.get("shape") in (None, best.shape) for w in wants)
        out.append((region_id, describe({"shape": best.shape, "color": best.color}), 1.0 if asked else -1.0))
    return out


def global_verdict(image, prompt: str) -> float:
    """``2 * overall - 1`` of the shapes judge's ``check``, one decimal (in [-1, 1])."""
    from zoo.data.shapes.judge import check

    return round(2.0 * float(check(image, prompt)["overall"]) - 1.0, 1)


class ShapesRewardJudge:
    """SRUM's judge prompts answered from the pixels by the shapes world's judge, in SRUM's answer format
    (the oracle rewarder; also the teacher of the tiny model's judging). A ``zoo.tools.VQATool``."""

    tool_id = "shapes-srum-judge-v1"

    def answer(self, image, question: str, **settings) -> str:
        from zoo.models.bagel import to_pil

        image = to_pil(image)
        match = _PROMPT.search(question)
        if not match:
            raise ConfigError("ShapesRewardJudge answers SRUM's judge prompts only")
        prompt = match.group(1)
        if "Region ID" in question:
            boxes = [(int(m.group(1)), [int(v) for v in m.groups()[1:]]) for m in _REGION.finditer(question)]
            return region_answer(region_verdicts(image, prompt, boxes))
        return f"Score: {global_verdict(image, prompt)}"

    def caption(self, image, **settings) -> str:
        from zoo.data.shapes.judge import caption

        return caption(image)


def region_answer(verdicts) -> str:
    return "\n\n".join(f"Region ID: {i}\nIdentified Object: {obj}\nScore: {score}" for i, obj, score in verdicts)


# ----------------------------------------------------------------------------- stage 1: the VAE

def train_vae(config: dict, steps: int, *, batch: int = 16, seed: int = 0, lr: float = 2e-3):
    """A tiny ``AutoencoderKL`` fitted to shapes scenes: L1 + MSE reconstruction with object pixels (those
    away from the background colour) weighted 10x, so colours and outlines come first; KL weight 1e-6."""
    from zoo.models.flux_vae import build_vae

    torch.manual_seed(seed)
    vae = build_vae(config)
    optimizer = torch.optim.Adam(vae.parameters(), lr)
    rng_seed = seed
    for step in range(steps):
        images = torch.stack([to_tensor(e["image"]) for e in shapes_examples(batch, rng_seed + step, CATEGORIES + ("shape",))])
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        background = images.flatten(2).median(dim=2).values[:, :, None, None]
        weight = 1 + 9 * ((images - background).abs().amax(1, keepdim=True) > 0.1).float()
        error = recon - images
        loss = (weight * (error.abs() + error ** 2)).mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("vae step %d: loss %.4f", step, loss.item())
    return vae.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- stage 2: the base model

def judge_example(rng, example: dict, other: dict, proposer, oracle) -> list[tuple[str, str]]:
    """(question, answer) pairs teaching SRUM's judge format on one rendered image."""
    from zoo.multimodal.srum import rewards as R

    prompt = example["prompt"] if rng.random() < 0.5 else other["prompt"]
    image = example["image"]
    regions = R.boxes_from_masks(proposer.propose(image), 10)
    pairs = []
    if regions:
        question = R.hybrid_region_prompt(prompt, regions)
        pairs.append((question, oracle.answer(image, question)))
    question = R.global_layout_prompt(prompt)
    pairs.append((question, oracle.answer(image, question)))
    return pairs


def pretrain_base(model, steps: int, *, seed: int = 0, lr: float = 2e-3, t2i_batch: int = 16, judge_batch: int = 1,
                  ce_weight: float = 1.0):
    """Joint pretraining: flow matching on shapes T2I (text dropout 0.1) + CE on captions and judge answers."""
    from zoo.data.shapes.judge import ShapesMaskProposer
    from zoo.models.bagel import patchify

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    proposer, oracle = ShapesMaskProposer(), ShapesRewardJudge()
    params = [p for n, p in model.named_parameters() if not n.startswith(("vae.", "latent_pos_embed.", "vit_pos_embed."))]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        examples = shapes_examples(t2i_batch + judge_batch, seed * 100003 + step, CATEGORIES + ("shape",))
        packer = model.packer()
        images = []
        for e in examples[:t2i_batch]:
            if rng.random() >= 0.1:
                packer.add_text(model.encode_text(e["prompt"]))
            packer.add_vae(model.latent_grid(64, 64), noise=True)
            packer.end_sample()
            images.append(to_tensor(e["image"]))
        patches = []
        for i, e in enumerate(examples[t2i_batch:]):
            pairs = judge_example(rng, e, examples[i], proposer, oracle)
            pairs.append((model.config["caption_prompt"], e["prompt"]))
            for question, answer in pairs:
                tensor = model.prepare_understanding_image(e["image"])
                packer.add_vit(tuple(tensor.shape[1:]))
                packer.add_text(model.encode_text(question))
                packer.add_text(model.encode_text(answer), loss=True)
                packer.end_sample()
                patches.append(patchify(tensor, model.vit_patch_size))
        packed = packer.build()
        with torch.no_grad():
            x0 = torch.cat(model.encode_images(images))
        out = model.flow_forward(packed, x0, torch.randn(len(images)), vit_patches=torch.cat(patches))
        mse = ((out["velocity"] - (out["noise"] - x0)) ** 2).mean()
        ce = torch.nn.functional.cross_entropy(out["ce_logits"].float(), packed.ce_labels)
        loss = mse + ce_weight * ce
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            logger.info("base step %d: mse %.4f ce %.4f (%.1f s)", step, mse.item(), ce.item(), time.perf_counter() - start)
    return model.eval()


# ----------------------------------------------------------------------------- evaluation

def evaluate(model, examples: list[dict], *, seed: int = 1234, num_timesteps: int = 25, batch: int = 16) -> dict:
    """Generate every held-out prompt (per-prompt seeds) and score with the shapes judge: per category the
    mean of that category's score, and the share of images that pass every check."""
    from zoo.data.shapes.judge import check

    scores: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    passed: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        for i, e in enumerate(chunk):
            gen = torch.Generator().manual_seed(seed + start + i)
            image = model.generate_image(e["prompt"], generator=gen, num_timesteps=num_timesteps)
            result = check(image, e["spec"])
            scores[e["category"]].append(float(result.get(e["category"], 0.0)))
            passed[e["category"]].append(float(result["passed"]))
    report = {c: {"score": float(np.mean(scores[c])), "passed": float(np.mean(passed[c])), "n": len(scores[c])}
              for c in CATEGORIES if scores[c]}
    report["mean"] = {"score": float(np.mean([report[c]["score"] for c in CATEGORIES if c in report])),
                      "passed": float(np.mean([report[c]["passed"] for c in CATEGORIES if c in report]))}
    return report


# ----------------------------------------------------------------------------- the whole check

def prepare(out: str | Path, sizes: dict, seed: int = 0) -> tuple[Path, Path]:
    """Stages 1-2 and the training prompts in ``out`` (resumable): returns (base model folder, prompts file)."""
    from safetensors.torch import load_file, save_file

    from zoo.files import write_text
    from zoo.hub import load_state_dict_strict
    from zoo.multimodal.srum.builder import build
    from zoo.pipeline import Pipeline, Step

    out = Path(out)
    config = demo_config()

    def vae_step(ctx):
        save_file(train_vae(config["vae"], sizes["vae_steps"], seed=seed).state_dict(),
                  str(ctx.output("vae.safetensors")))

    def base_step(ctx):
        torch.manual_seed(seed)
        model = build(config)
        load_state_dict_strict(model.vae, load_file(str(ctx.path("vae.safetensors"))), "demo vae")
        pretrain_base(model, sizes["base_steps"], seed=seed)
        model.save_pretrained(ctx.output("base"), overwrite=True)

    def prompts_step(ctx):
        rows = [{"id": e["id"], "prompt": e["prompt"], "Category": e["category"]}
                for e in shapes_examples(sizes["train_prompts"], seed + 7)]
        write_text(ctx.output("train_prompts.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))

    Pipeline(out, [
        Step("vae", vae_step, settings={"steps": sizes["vae_steps"], "seed": seed, "vae": config["vae"], "loss": "fg10"},
             outputs=["vae.safetensors"]),
        Step("base", base_step, settings={"steps": sizes["base_steps"], "seed": seed}, inputs=["vae.safetensors"],
             outputs=["base"]),
        Step("prompts", prompts_step, settings={"n": sizes["train_prompts"], "seed": seed + 7},
             outputs=["train_prompts.jsonl"]),
    ], name="srum-demo", log=logger).run()
    return out / "base", out / "train_prompts.jsonl"


GENERATE = {"think": False, "num_timesteps": 25, "batch_size": 8}
JUDGING = {"max_retries": 2, "region_settings": {"think": False, "max_new_tokens": 96},
           "global_settings": {"think": False, "max_new_tokens": 12}}


def make_rewards(out: str | Path, base, prompts: Path, judge_name: str = "self") -> Path:
    """The SRUM pipeline on the training prompts with the base as generator; judge ``"self"`` (the base) or
    ``"oracle"`` (:class:`ShapesRewardJudge`). Returns the run folder (``rewards.jsonl``, ``images/``)."""
    from zoo.data.shapes.judge import ShapesMaskProposer
    from zoo.multimodal.srum.pipeline import SelfRewardPipeline

    judge = base if judge_name == "self" else ShapesRewardJudge()
    folder = Path(out) / f"rewards-{judge_name}"
    stats = SelfRewardPipeline(folder, prompts, base, judge=judge, proposer=ShapesMaskProposer(), generate=GENERATE,
                               judging=JUDGING, judge_id=f"{judge_name}:{getattr(judge, 'tool_id', judge_name)}").run()
    logger.info("rewards %s: %s", judge_name, stats)
    return folder


def finetune_overrides(base: Path, rewards: Path, out: Path, steps: int, *, use_rewards: bool, lr: float,
                       seed: int) -> list[str]:
    return [f"model.init={base}", f"data.train={rewards / 'rewards.jsonl'}", f"data.image_dir={rewards / 'images'}",
            "data.transform.max_size=64", "data.transform.min_size=64", "data.transform.stride=16",
            "data.expected_num_tokens=256", "data.max_num_tokens=320", "data.max_num_tokens_per_sample=320",
            f"srum.use_rewards={str(use_rewards).lower()}", f"optim.lr={lr}", "schedule.warmup_steps=10",
            f"train.max_steps={steps}", f"train.output_dir={out}", "train.ckpt_every=0", "train.tensorboard=false",
            f"train.seed={seed}", "train.log_every=10"]


def run_demo(out: str | Path, quick: bool = False, *, lr: float = 1e-4, seed: int = 0) -> dict:
    """All stages in ``out`` (resumable); returns and writes ``report.json``."""
    import zoo
    from zoo.files import write_json
    from zoo.train import run
    from zoo.train.recipe import load_recipe

    sizes = QUICK if quick else FULL
    out = Path(out)
    base_path, prompts = prepare(out, sizes, seed)
    base = zoo.load(str(base_path))
    timing = {}
    folders = {}
    for name in ("self", "oracle"):
        start = time.perf_counter()
        folders[name] = make_rewards(out, base, prompts, name)
        timing[f"rewards-{name}"] = round(time.perf_counter() - start, 1)
    runs = {"sft": ("self", False), "srum-self": ("self", True), "srum-oracle": ("oracle", True)}
    models = {"base": base}
    for name, (judge, use_rewards) in runs.items():
        start = time.perf_counter()
        recipe = load_recipe(None, finetune_overrides(base_path, folders[judge], out / name, sizes["finetune_steps"],
                                                      use_rewards=use_rewards, lr=lr, seed=seed), family="srum")
        models[name] = zoo.load(str(run(recipe)))
        timing[name] = round(time.perf_counter() - start, 1)
    held_out = shapes_examples(sizes["eval_prompts"] * len(CATEGORIES), seed + 99)
    report = {"sizes": sizes, "lr": lr, "timing_s": timing,
              "rewards": {n: json.loads((folders[n] / "steps.json").read_text())["format"]["result"] for n in folders},
              "judge": {n: json.loads((folders[n] / "steps.json").read_text())["judge"]["result"] for n in folders},
              "judge_agreement": judge_agreement(out)}
    for name, model in models.items():
        start = time.perf_counter()
        report[name] = evaluate(model, held_out)
        timing[f"eval-{name}"] = round(time.perf_counter() - start, 1)
    write_json(out / "report.json", report)
    print_report(report)
    return report


def judge_agreement(out: Path) -> dict:
    """How often the tiny self-judge agrees with the oracle on the same images (region sign, global sign)."""
    def load(name):
        path = out / f"rewards-{name}" / "judged.jsonl"
        return {r["image_file"]: r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())}

    mine, oracle = load("self"), load("oracle")
    region, glob = [], []
    for key, a in mine.items():
        b = oracle.get(key)
        if b is None:
            continue
        by_box = {tuple(r["bbox"]): r["score"] for r in b["vlm_rewards"]}
        for r in a["vlm_rewards"]:
            if tuple(r["bbox"]) in by_box:
                region.append(float(np.sign(r["score"]) == np.sign(by_box[tuple(r["bbox"])])))
        ga = (a.get("global_layout_reward") or {}).get("global_layout_score")
        gb = (b.get("global_layout_reward") or {}).get("global_layout_score")
        if ga is not None and gb is not None:
            glob.append(float(np.sign(ga) == np.sign(gb)))
    return {"region_sign_agreement": float(np.mean(region)) if region else None, "regions_compared": len(region),
            "global_sign_agreement": float(np.mean(glob)) if glob else None, "images_compared": len(glob)}


def print_report(report: dict) -> None:
    names = [n for n in ("base", "sft", "srum-self", "srum-oracle") if n in report]
    header = f"{'held-out prompts':<18}" + "".join(f"{n:>14}" for n in names)
    print("\nShapes-world T2I, the shapes judge's category score (share of images passing every check)")
    print(header)
    for category in (*CATEGORIES, "mean"):
        cells = []
        for n in names:
            cell = report[n].get(category)
            cells.append(f"{cell['score']:.3f} ({cell['passed']:.2f})" if cell else "-")
        print(f"{category:<18}" + "".join(f"{c:>14}" for c in cells))
    agreement = report.get("judge_agreement") or {}
    print(f"self-judge vs oracle: region score sign agrees {agreement.get('region_sign_agreement')} "
          f"({agreement.get('regions_compared')} regions), global sign {agreement.get('global_sign_agreement')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="SRUM on the shapes world: base vs SFT vs SRUM (self / oracle rewards).")
    parser.add_argument("--out", default="runs/srum-demo")
    parser.add_argument("--quick", action="store_true", help="a smaller run (minutes) with noisier figures")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_demo(args.out, args.quick, lr=args.lr, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
