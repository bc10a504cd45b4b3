"""The real check on the bundled corpus (issue item 8): trained vs untrained vs mean-fbank EER.

    python -m zoo.speech.ca_dino.demo_check [--config speech/ca_dino/recipes/demo.yaml] [key=value ...]

Trains the tiny model self-supervised (DINO; no voice labels) on the corpus minus the
voices in ``data.exclude_speakers``, then scores all pairs of utterances of those held-out
voices with (1) the trained teacher, (2) the same architecture untrained, (3) the mean
80-bin log-mel vector of each utterance. All three use cosine after subtracting the
evaluation set's mean vector. Training runs through ``zoo.train.run`` (the same path as
``zoo train``); ``--in-process`` uses the trainer's hooks in a plain loop instead.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

RECIPE = Path(__file__).parent / "recipes" / "demo.yaml"


def _parse(values):
    import yaml

    out = {}
    for item in values:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def train_in_process(config: dict):
    """The engine's call order in a plain loop (SGD, the recipe's lr, constant after a linear warm-up)."""
    from zoo.speech.ca_dino.trainer import CADinoTrainer

    trainer = CADinoTrainer(config)
    train = config["train"]
    torch.manual_seed(int(train.get("seed", 0)))
    model = trainer.build_model()
    dataset, _ = trainer.build_datasets()
    trainer.on_train_start(model)
    optim = config.get("optim", {})
    optimizer = torch.optim.SGD(trainer.param_groups(model), lr=float(optim.get("lr", 0.05)),
                                momentum=float(optim.get("momentum", 0.9)))
    warmup = int((config.get("schedule") or {}).get("warmup_steps", 0) or 0)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(train["batch_size"]), shuffle=True, drop_last=True,
                                         collate_fn=trainer.collate)
    step, epoch, max_steps = 0, 0, int(train["max_steps"])
    while step < max_steps:
        trainer.on_epoch_start(model, epoch)
        for batch in loader:
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * min(1.0, (step + 1) / warmup) if warmup else base
            out = trainer.training_step(model, batch)
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            step += 1
            trainer.on_step_end(model, step)
            if step % 20 == 0 or step == max_steps:
                print(f"step {step}: loss {out['loss'].item():.4f}", flush=True)
            if step >= max_steps:
                break
        epoch += 1
    return model.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(RECIPE))
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    args = parser.parse_args(argv)

    import zoo
    from zoo.speech.ca_dino.evaluate import evaluate
    from zoo.speech.ca_dino.trainer import _resolve

    start = time.time()
    if args.in_process:
        import yaml

        from zoo.config import apply_overrides
        from zoo.speech.ca_dino.trainer import CADinoTrainer

        config = copy.deepcopy(CADinoTrainer.config_defaults)
        recipe = yaml.safe_load(Path(args.config).read_text())
        for section, values in recipe.items():
            if isinstance(values, dict) and isinstance(config.get(section), dict):
                config[section].update(values)
            else:
                config[section] = values
        apply_overrides(config, _parse(args.overrides), source="command line")
        trained = train_in_process(config)
    else:
        from zoo.train import load_recipe, run

        config = load_recipe(args.config, args.overrides)
        folder = run(config)
        trained = zoo.load(str(folder))
    train_seconds = time.time() - start
    data = config["data"]
    held_out = list(data["exclude_speakers"])
    manifest = str(_resolve(data["train"]))
    torch.manual_seed(int(config["train"].get("seed", 0)))
    untrained = zoo.load(f"ca-dino-{config['model'].get('size') or 'tiny'}", pretrained=False)
    common = {"data": manifest, "speakers": held_out, "mean": "eval"}
    results = {
        "trained (DINO teacher)": evaluate(trained, **common),
        "untrained (random init)": evaluate(untrained, **common),
        "mean fbank (no model)": evaluate(None, features="mean_fbank", **common),
    }
    first = next(iter(results.values()))
    print(f"held-out voices {held_out}: {first['num_utterances']} utterances, {first['num_trials']} trials "
          f"({first['num_target']} target); training took {train_seconds:.0f} s")
    for name, metrics in results.items():
        print(f"  {name:26s} EER {metrics['eer']:6.2f}%   minDCF(0.01) {metrics['min_dcf_p0.01']:.3f}")
    print(json.dumps({k: round(v["eer"], 3) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
