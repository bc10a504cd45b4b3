"""SoM-LLaVA trainer: grouped order, answer-only labels, truncation, falling loss, exact resume, LoRA, shapes data."""
from __future__ import annotations

import json
import random

import pytest
import torch


import zoo  # noqa: E402
from zoo.errors import ConfigError  # noqa: E402
from zoo.multimodal.som_llava import data as som_data  # noqa: E402
from zoo.multimodal.som_llava.trainer import grouped_order, record_length  # noqa: E402


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """12 tagged shapes scenes (64 px) -> captions, listing and QA records, plus one text-only record."""
    folder = tmp_path_factory.mktemp("shapes")
    scenes = som_data.shapes_scenes(12, size=64, seed=3, overlap_prob=0.8)
    path = som_data.build_shapes_dataset(scenes, folder, kind="som", seed=3, min_area=8, font_size=6)
    records = som_data.read_conversations(path)
    records.append(som_data.record("text-only", None, [("Name a colour.", "Red.")]))
    som_data.write_conversations(records, path, overwrite=True)
    return path, scenes


def test_shapes_records_follow_the_ground_truth(shapes_data):
    path, scenes = shapes_data
    records = {r["id"]: r for r in json.loads(path.read_text())}
    for scene in scenes:
        tagged = som_data.tag_scene(scene, min_area=8, font_size=6)
        listing = records[f"{scene.id}-listing"]["conversations"]
        assert listing[0]["value"].split("\n", 1)[1] in som_data.instruction_pool()
        lines = listing[1]["value"].split("\n")
        assert len(lines) == len(tagged.tags)
        for line, tag in zip(lines, tagged.tags):  # tag order = smallest region first
            obj = scene.objects[tag.mask_index]
            assert line.startswith(f"{tag.label}. ") and obj["color"] in line and obj["shape"] in line
            hidden = tag.area / scene.full_masks[tag.mask_index].sum() < som_data.SURE_FRACTION
            assert line.startswith(f"{tag.label}. Not sure: possibly") == hidden
        assert records[f"{scene.id}-caption"]["conversations"][1]["value"][:-1].lower() == scene.caption.lower()
    assert any("Not sure" in r["conversations"][1]["value"] for r in records.values())  # overlap_prob=0.8


def test_grouped_order_is_a_permutation_grouped_by_length_and_modality():
    rng = random.Random(0)
    lengths = [rng.randint(130, 400) for _ in range(37)] + [-rng.randint(5, 300) for _ in range(21)]
    order = grouped_order(lengths, batch_size=4, world_size=2, generator=torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(len(lengths)))
    full = order[: (len(order) // 8) * 8]
    for start in range(0, len(full) - 8, 8):  # full megabatches: one modality, longest first
        mega = [lengths[i] for i in order[start:start + 8]]
        if start + 8 <= len(order) - 8:
            signs = {n > 0 for n in mega}
            if len(signs) == 1:
                assert [abs(n) for n in mega] == sorted((abs(n) for n in mega), reverse=True)
    again = grouped_order(lengths, 4, 2, torch.Generator().manual_seed(1))
    assert again == order and grouped_order(lengths, 4, 2, torch.Generator().manual_seed(2)) != order
    assert record_length({"image": "a.png", "conversations": [{"value": "a b"}, {"value": "c"}]}) == 131
    assert record_length({"conversations": [{"value": "a b"}, {"value": "c"}]}) == -3


def _config(path, out, steps, **extra):
    from zoo.train import load_recipe

    overrides = [f"data.train={path}", f"train.output_dir={out}", f"train.max_steps={steps}", "train.batch_size=2",
                 "train.shuffle=false", "train.log_every=1", "train.ckpt_every=3", "train.tensorboard=false",
                 "train.progress=false", "optim.lr=3e-3", "som_llava.tokenizer.vocab_size=400",
                 "model.overrides.model_max_length=160"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_recipe(None, overrides, family="som-llava")


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def test_training_lowers_the_loss_and_resumes_exactly(shapes_data, tmp_path):
    from zoo.train import run

    path, _ = shapes_data
    straight = run(_config(path, tmp_path / "a", 6, **{"optim.lr": "1e-2"}))
    losses = _losses(tmp_path / "a")
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < losses[0] - 0.5
    checkpoint = tmp_path / "a" / "checkpoints" / "step-00000003"
    assert checkpoint.is_dir()
    resumed = run(_config(path, tmp_path / "b", 6, **{"optim.lr": "1e-2", "train.resume": str(checkpoint)}))
    a, b = zoo.load(str(straight)), zoo.load(str(resumed))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert a.config["tokenizer"]["json"] == b.config["tokenizer"]["json"]


def test_vision_tower_frozen_and_only_answers_carry_loss(shapes_data, tmp_path):
    from zoo.multimodal.som_llava.trainer import SomLlavaTrainer

    path, _ = shapes_data
    config = _config(path, tmp_path / "c", 1)
    trainer = SomLlavaTrainer(config)
    trainer.output_dir = tmp_path / "c"
    model = trainer.build_model()
    dataset, _ = trainer.build_datasets()
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.projector.parameters())
    trained = {id(p) for group in trainer.param_groups(model) for p in group["params"]}
    assert not any(id(p) in trained for p in model.vision_tower.parameters())
    index = next(i for i in range(len(dataset)) if dataset.records[dataset.order[i]]["id"].endswith("-qa"))
    item = dataset[index]
    record = dataset.records[dataset.order[index]]
    answers = [t["value"] for t in record["conversations"][1::2]]
    labelled = model.tokenizer.decode(item["labels"][item["labels"] != -100])
    assert labelled == "".join(f" {a}</s>" for a in answers)
    assert int((item["input_ids"] == model.image_token_id).sum()) == model.num_image_tokens
    assert item["pixel_values"].shape == (3, 32, 32)
    batch = trainer.collate([dataset[i] for i in range(4)])  # (collate is independent of train.batch_size)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    images = sum("image" in dataset.records[dataset.order[i]] for i in range(4))
    assert (0 if batch["pixel_values"] is None else batch["pixel_values"].shape[0]) == images


def test_cutting_into_the_image_tokens_is_an_error_and_long_answers_warn(shapes_data, tmp_path, caplog):
    from zoo.multimodal.som_llava.trainer import SomLlavaTrainer

    path, _ = shapes_data
    trainer = SomLlavaTrainer(_config(path, tmp_path / "d", 1, **{"model.overrides.model_max_length": 20}))
    trainer.output_dir = tmp_path / "d"
    trainer.build_model()
    dataset, _ = trainer.build_datasets()
    index = next(i for i in range(len(dataset)) if "image" in dataset.records[dataset.order[i]])
    with pytest.raises(ConfigError, match="cuts into the 16 image tokens"):
        dataset[index]
    trainer = SomLlavaTrainer(_config(path, tmp_path / "e", 1, **{"model.overrides.model_max_length": 62}))
    trainer.output_dir = tmp_path / "e"
    trainer.build_model()
    dataset, _ = trainer.build_datasets()
    index = next(i for i in range(len(dataset)) if dataset.records[dataset.order[i]]["id"].endswith("-listing"))
    with caplog.at_level("WARNING"):
        item = dataset[index]
    assert len(item["input_ids"]) == 62 and "answer tokens lost" in caplog.text


def test_shuffle_and_grouping_conflict_is_explained(shapes_data, tmp_path):
    from zoo.multimodal.som_llava.trainer import SomLlavaTrainer

    path, _ = shapes_data
    with pytest.raises(ConfigError, match="train.shuffle=false"):
        SomLlavaTrainer(_config(path, tmp_path / "f", 1, **{"train.shuffle": "true"}))


def test_lora_trains_adapters_and_merges_them(shapes_data, tmp_path):
    from zoo.train import run

    path, _ = shapes_data
    final = run(_config(path, tmp_path / "g", 2, **{"som_llava.lora.enabled": "true", "som_llava.lora.r": 4,
                                                     "som_llava.lora.alpha": 8, "train.ckpt_every": 0}))
    model = zoo.load(str(final))
    assert not any("lora" in key for key in model.state_dict())  # merged into plain weights
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in {
        k[len("llava."):] for k in model.state_dict()}


def test_recipes_parse():
    from pathlib import Path

    from zoo.train import load_recipe

    root = Path(som_data.__file__).parent / "recipes"
    for name in ("demo.yaml", "finetune-7b.yaml", "finetune-13b.yaml", "finetune-13b-lora.yaml"):
        config = load_recipe(root / name)
        assert config["family"] == "som-llava"
    paper = load_recipe(root / "finetune-13b.yaml")
    assert paper["optim"]["lr"] == 2e-5 and paper["optim"]["weight_decay"] == 0.0
    assert paper["schedule"]["name"] == "cosine" and paper["train"]["distributed"] == "fsdp"
    assert paper["som_llava"]["freeze_vision_tower"] and paper["som_llava"]["gradient_checkpointing"]
    assert paper["train"]["batch_size"] == 16 and paper["train"]["precision"] == "bf16"


def test_a_batch_without_answer_tokens_adds_zero_loss_not_nan(shapes_data, tmp_path, caplog):
    from zoo.multimodal.som_llava.trainer import SomLlavaTrainer

    path, _ = shapes_data
    trainer = SomLlavaTrainer(_config(path, tmp_path / "h", 1))
    trainer.output_dir = tmp_path / "h"
    model = trainer.build_model()
    dataset, _ = trainer.build_datasets()
    batch = trainer.collate([dataset[0], dataset[1]])
    batch["labels"][:] = -100
    with caplog.at_level("WARNING"):
        out = trainer.training_step(model, batch)
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad and "no answer tokens" in caplog.text
