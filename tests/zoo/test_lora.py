"""train.lora: peft LoRA as an engine option; adapter folders that zoo.load applies on top of their base."""
import json

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.errors import CheckpointKeysError, ConfigError
from zoo.train import load_recipe, run
from zoo.train import lora
from zoo.train.toy_lm import TINY, ToyCausalLM

OPTIONS = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _base(tmp_path, seed=0):
    """A toy LM saved as a zoo folder and loaded back: a base that zoo.load can rebuild by name."""
    torch.manual_seed(seed)
    folder = ToyCausalLM(dict(TINY)).save_pretrained(tmp_path / "base")
    return zoo.load(str(folder)), folder


def _train_adapter(model, steps=5):
    """A few SGD steps on the LoRA matrices (B starts at zero, so the adapter must move to matter)."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(0, TINY["vocab_size"], (4, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_only_lora_parameters_train_and_the_adapter_round_trips(tmp_path):
    model, base_folder = _base(tmp_path)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    lora.apply(model, OPTIONS)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # (A, B) x (q_proj, v_proj) x 2 layers
    _train_adapter(model)
    for key, value in lora.base_state_dict(model).items():
        assert torch.equal(value, frozen[key]), key  # the base did not move
    assert any(v.abs().sum() > 0 for k, v in lora.adapter_state_dict(model).items() if "lora_B" in k)

    folder = model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "config.json"]  # no base weights
    meta = json.loads((folder / "config.json").read_text())
    assert meta["adapter"] == {"type": "lora", "base": str(base_folder.resolve())}
    peft_config = json.loads((folder / "adapter_config.json").read_text())
    assert (peft_config["r"], peft_config["lora_alpha"], peft_config["target_modules"]) == (4, 8, ["q_proj", "v_proj"])
    assert peft_config["base_model_name_or_path"] == str(base_folder.resolve())
    saved = load_file(folder / "adapter_model.safetensors")
    assert set(saved) == set(lora.adapter_state_dict(model))
    assert all(".lora_" in k for k in saved)

    loaded = zoo.load(str(folder))
    for key, value in lora.adapter_state_dict(model).items():
        assert torch.equal(lora.adapter_state_dict(loaded)[key], value), key
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    base = zoo.load(str(base_folder))
    assert not torch.equal(base(ids).logits, loaded(ids).logits)  # the adapter is applied


def test_a_base_built_in_code_is_saved_with_its_adapter(tmp_path):
    torch.manual_seed(1)
    model = lora.apply(ToyCausalLM(dict(TINY)), OPTIONS)
    _train_adapter(model)
    folder = model.save_pretrained(tmp_path / "adapter")
    assert (folder / "model.safetensors").exists()
    assert json.loads((folder / "config.json").read_text())["adapter"]["base"] is None
    assert set(load_file(folder / "model.safetensors")) == set(ToyCausalLM(dict(TINY)).state_dict())
    loaded = zoo.load(str(folder))
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_merge_folds_the_adapter_into_the_base(tmp_path):
    model, _ = _base(tmp_path)
    _train_adapter(lora.apply(model, OPTIONS))
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
    merged = lora.merge(model)
    assert not lora.has_adapter(merged) and set(merged.state_dict()) == set(ToyCausalLM(dict(TINY)).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)
    folder = merged.save_pretrained(tmp_path / "merged")
    assert (folder / "model.safetensors").exists() and not (folder / "adapter_config.json").exists()


def test_adapter_with_wrong_keys_is_refused(tmp_path):
    model, _ = _base(tmp_path)
    folder = lora.apply(model, OPTIONS).save_pretrained(tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "k_proj", "v_proj"]  # the file has no k_proj matrices
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointKeysError, match="target modules") as err:
        zoo.load(str(folder))
    assert err.value.missing == [f"lm.model.layers.{i}.self_attn.k_proj.lora_{m}.weight" for i in (0, 1)
                                 for m in "AB"] and err.value.unexpected == []


def test_target_modules_that_match_nothing_is_a_config_error():
    with pytest.raises(ConfigError, match="Its linear layers are named: .*q_proj"):
        lora.apply(ToyCausalLM(dict(TINY)), {**OPTIONS, "target_modules": ["qkv"]})
    with pytest.raises(ConfigError, match="positive rank"):
        lora.lora_config({"r": -1})


def test_engine_trains_lora_and_saves_an_adapter(tmp_path):
    out = tmp_path / "run"
    config = load_recipe(None, [
        "trainer=zoo.train.toy_lm:ToyLMTrainer", f"train.output_dir={out}", "train.max_steps=12",
        "train.batch_size=8", "train.log_every=1", "train.ckpt_every=6", "train.tensorboard=false",
        "train.progress=false", "optim.lr=0.02", "train.lora.r=4", "train.lora.alpha=8",
        "train.lora.target_modules=[q_proj,v_proj,gate_proj]"])
    final = run(config)
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    assert (final / "adapter_model.safetensors").exists() and (final / "model.safetensors").exists()
    model = zoo.load(str(final))
    assert lora.has_adapter(model) and not model.training
    assert sorted(json.loads((final / "adapter_config.json").read_text())["target_modules"]) == \
        ["gate_proj", "q_proj", "v_proj"]
    # the adapter moved, the base is the seed-0 initial model the trainer built
    from zoo.train.toy_lm import ToyLMTrainer

    torch.manual_seed(0)
    initial = ToyLMTrainer(config).build_model()
    for key, value in initial.state_dict().items():
        assert torch.equal(lora.base_state_dict(model)[key], value), key
    merged = load_recipe(None, [f"train.output_dir={tmp_path / 'merged'}", "train.lora.merge=true",
                                "trainer=zoo.train.toy_lm:ToyLMTrainer", "train.max_steps=2", "train.batch_size=8",
                                "train.tensorboard=false", "train.progress=false", "train.lora.r=2"])
    final = run(merged)
    assert (final / "model.safetensors").exists() and not (final / "adapter_config.json").exists()


def test_adapter_through_the_loopback_hub(loopback_hub, tmp_path):
    model, _ = _base(tmp_path)
    model.push_to_hub("alice/base")
    base = zoo.load("hf-hub:alice/base")
    assert base.name_or_path == "hf-hub:alice/base"
    _train_adapter(lora.apply(base, OPTIONS))
    base.push_to_hub("alice/adapter")
    files = sorted(f for f in loopback_hub.list_files("alice/adapter") if f != ".gitattributes")
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.json"]
    loaded = zoo.load("hf-hub:alice/adapter")
    ids = torch.randint(0, TINY["vocab_size"], (2, 9))
    assert torch.equal(loaded(ids).logits, base(ids).logits)
