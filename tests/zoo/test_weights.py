"""zoo.weights: meta-device builds, streaming strict loads (safetensors / .bin, single / sharded), sharded saves."""
import contextlib
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo import weights
from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError, OutputExistsError
from zoo.registry import list_families
from zoo.testing.toy_family import ToyModel, register
from zoo.train.toy_lm import TINY, ToyCausalLM, from_transformers_key


def _lm(seed=0, **overrides) -> ToyCausalLM:
    torch.manual_seed(seed)
    return ToyCausalLM({**TINY, **overrides}).eval()


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key, value in sa.items():
        assert value.dtype == sb[key].dtype and torch.equal(value, sb[key]), key
    # non-persistent buffers too (rotary inv_freq): computed by the constructor, never saved
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert list(ba) == list(bb)
    for key, value in ba.items():
        assert torch.equal(value, bb[key]), key


def test_init_empty_puts_parameters_on_meta_and_computes_buffers():
    reference = _lm()
    with weights.init_empty():
        empty = ToyCausalLM(dict(TINY))
    assert all(p.is_meta for p in empty.parameters())
    inv_freq = dict(empty.named_buffers())["lm.model.rotary_emb.inv_freq"]
    assert not inv_freq.is_meta and torch.equal(inv_freq, reference.lm.model.rotary_emb.inv_freq)
    assert weights.meta_tensors(empty)[0] == "lm.model.embed_tokens.weight"
    # outside the block nothing is patched
    assert not torch.nn.Linear(2, 2).weight.is_meta


def test_sharded_save_writes_index_and_round_trips_bit_identically(tmp_path):
    model = _lm()
    folder = model.save_pretrained(tmp_path / "out", max_shard_size=20_000)
    names = sorted(p.name for p in folder.iterdir())
    shards = [n for n in names if n.startswith("model-")]
    assert len(shards) > 2 and "model.safetensors.index.json" in names and "model.safetensors" not in names
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict()) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in model.state_dict().values())
    for shard in shards:  # each shard within the limit (no single tensor of this model is larger)
        assert sum(v.numel() * 4 for v in load_file(folder / shard).values()) <= 20_000
    loaded = zoo.load(str(folder))
    _same_state(model, loaded)
    ids = torch.randint(0, 64, (2, 9))
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_small_model_keeps_one_file_and_loads_without_random_init(tmp_path, monkeypatch):
    model = _lm()
    folder = model.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    state = torch.get_rng_state()
    loaded = zoo.load(str(folder))
    assert torch.equal(torch.get_rng_state(), state)  # nothing was randomly initialised
    _same_state(model, loaded)
    # copied out of the file into fresh allocations: a memory-mapped view would sit at the file's
    # alignment, where CPU kernels round differently (outputs would then not be bit-identical)
    assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters())


def test_written_files_are_plain_safetensors_with_aligned_tensors(tmp_path):
    from safetensors import safe_open

    tensors = {"a.odd": torch.arange(3, dtype=torch.float32), "b.big": torch.randn(16, 8),
               "c.bf16": torch.randn(32, dtype=torch.bfloat16), "d.ids": torch.arange(5),
               "e.mask": torch.tensor([True, False, True]), "f.scalar": torch.tensor(2.5),
               "g.empty": torch.zeros(0, 4), "h.half": torch.randn(64, dtype=torch.float16)}
    path = weights.write_safetensors(tmp_path / "t.safetensors", tensors, metadata={"format": "pt"})
    loaded = load_file(path)  # the safetensors library reads it
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        # every tensor whose size is a multiple of 64 bytes is mapped at a 64-byte aligned address
        for key in ("b.big", "c.bf16", "h.half"):
            assert handle.get_tensor(key).data_ptr() % 64 == 0, key


def test_load_in_target_dtype(tmp_path):
    model = _lm()
    folder = model.save_pretrained(tmp_path / "out", max_shard_size=30_000)
    loaded = zoo.load(str(folder), dtype=torch.bfloat16)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(torch.bfloat16)), key
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert loaded.lm.model.rotary_emb.inv_freq.dtype == torch.bfloat16  # as model.to(bfloat16) does
    with pytest.raises(ConfigError, match="not a torch dtype"):
        zoo.load(str(folder), dtype="bf17")


def test_strict_keys_are_reported_before_any_weight_is_read(tmp_path, monkeypatch):
    model = _lm()
    folder = model.save_pretrained(tmp_path / "out", max_shard_size=30_000)
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    # rename one tensor inside its shard (and in the index), drop nothing else
    shard = folder / index["weight_map"]["lm.model.norm.weight"]
    tensors = load_file(shard)
    tensors["lm.model.final_norm.weight"] = tensors.pop("lm.model.norm.weight")
    save_file(tensors, shard)
    index["weight_map"]["lm.model.final_norm.weight"] = index["weight_map"].pop("lm.model.norm.weight")
    index_file.write_text(json.dumps(index))

    def no_read(*args, **kwargs):
        raise AssertionError("a weight was read before the keys were checked")

    monkeypatch.setattr(weights, "stream_tensors", no_read)
    with pytest.raises(CheckpointKeysError) as err:
        zoo.load(str(folder))
    assert err.value.missing == ["lm.model.norm.weight"] and err.value.unexpected == ["lm.model.final_norm.weight"]


def test_shape_mismatch_lists_every_key(tmp_path):
    folder = _lm().save_pretrained(tmp_path / "out")
    with pytest.raises(CheckpointKeysError) as err:
        zoo.load(str(folder), intermediate_size=48)
    assert len(err.value.mismatched) == 2 * 3  # gate/up/down of both layers
    assert ("lm.model.layers.0.mlp.gate_proj.weight", (48, 32), (64, 32)) in err.value.mismatched


def test_index_that_disagrees_with_its_shards_is_an_error(tmp_path):
    folder = _lm().save_pretrained(tmp_path / "out", max_shard_size=30_000)
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["lm.extra.weight"] = next(iter(index["weight_map"].values()))
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointFormatError, match=r"does not match its shards.*lm\.extra\.weight"):
        zoo.load(str(folder))
    del index["weight_map"]["lm.extra.weight"]
    shard = sorted(set(index["weight_map"].values()))[-1]
    index_file.write_text(json.dumps(index))
    (folder / shard).unlink()
    with pytest.raises(CheckpointFormatError, match=f"names shards that are not in .*{shard}"):
        zoo.load(str(folder))


def test_truncated_shard_is_one_clear_error(tmp_path):
    folder = _lm().save_pretrained(tmp_path / "out", max_shard_size=40_000)
    shard = folder / "model-00002-of-00003.safetensors"
    assert shard.exists()
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointFormatError, match="model-00002-of-00003.safetensors is corrupt or truncated"):
        zoo.load(str(folder))


def _transformers_checkpoint(model: ToyCausalLM, folder, *, fmt: str, shard_bytes: int | None = None,
                             legacy: bool = False):
    """The LlamaForCausalLM state dict as transformers names it, saved as .bin or safetensors (sharded or not)."""
    folder.mkdir()
    state = {k.removeprefix("lm."): v.clone() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        weights.save_weights(state, folder, max_shard_size=shard_bytes or "5GB")
        return folder
    split = weights.plan_shards(state, shard_bytes or "5GB", filename_pattern="pytorch_model{suffix}.bin")
    for filename, keys in split.filename_to_tensors.items():
        torch.save({k: state[k] for k in keys}, folder / filename, _use_new_zipfile_serialization=not legacy)
    if split.is_sharded:
        (folder / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": split.metadata, "weight_map": split.tensor_to_filename}))
    return folder


@pytest.mark.parametrize("fmt,shard_bytes,legacy", [
    ("safetensors", None, False), ("safetensors", 25_000, False), ("bin", None, False), ("bin", 25_000, False),
    ("bin", 25_000, True)])
def test_family_loader_streams_official_layouts_through_a_key_map(tmp_path, fmt, shard_bytes, legacy):
    model = _lm(1)
    folder = _transformers_checkpoint(model, tmp_path / "official", fmt=fmt, shard_bytes=shard_bytes, legacy=legacy)
    if shard_bytes:
        assert len(list(folder.glob("*-of-*"))) > 1
    loaded = weights.load_pretrained(ToyCausalLM, dict(TINY), folder, key_map=from_transformers_key)
    _same_state(model, loaded.eval())
    half = weights.load_pretrained(ToyCausalLM, dict(TINY), folder, key_map=from_transformers_key,
                                   dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    assert torch.equal(half.lm.lm_head.weight, model.lm.lm_head.weight.half())


def test_key_map_drops_on_purpose_and_rejects_clashes(tmp_path):
    model = _lm()
    folder = _transformers_checkpoint(model, tmp_path / "official", fmt="safetensors")
    state = load_file(folder / "model.safetensors")
    state["model.rotary_emb.inv_freq"] = torch.ones(4)  # old Llama checkpoints saved it
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointKeysError, match="unexpected keys"):
        weights.load_pretrained(ToyCausalLM, dict(TINY), folder, key_map=from_transformers_key)

    def drop_rotary(key):
        return None if key.endswith("rotary_emb.inv_freq") else "lm." + key

    loaded = weights.load_pretrained(ToyCausalLM, dict(TINY), folder, key_map=drop_rotary)
    _same_state(model, loaded.eval())
    with pytest.raises(CheckpointKeysError, match="two checkpoint keys to one name"):
        weights.load_pretrained(ToyCausalLM, dict(TINY), folder, key_map=lambda k: "lm.model.norm.weight")


def test_tied_embeddings_load_from_a_checkpoint_without_the_tied_copy(tmp_path):
    model = _lm(2, tie_word_embeddings=True)
    assert model.lm.lm_head.weight is model.lm.model.embed_tokens.weight
    folder = _transformers_checkpoint(model, tmp_path / "official", fmt="safetensors")
    state = load_file(folder / "model.safetensors")
    del state["lm_head.weight"]  # transformers does not save the tied copy
    save_file(state, folder / "model.safetensors")
    config = {**TINY, "tie_word_embeddings": True}
    loaded = weights.load_pretrained(ToyCausalLM, config, folder, key_map=from_transformers_key)
    assert loaded.lm.lm_head.weight is loaded.lm.model.embed_tokens.weight
    _same_state(model, loaded.eval())
    # the zoo format saves both names; loading keeps them tied
    again = zoo.load(str(loaded.save_pretrained(tmp_path / "zoo")))
    assert again.lm.lm_head.weight is again.lm.model.embed_tokens.weight


class DerivedBuffer(ToyModel):
    """A (bad) constructor that derives a non-persistent buffer from a parameter: it cannot be built on meta."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("scale", self.encoder.weight.detach().abs().mean().reshape(1), persistent=False)


def test_meta_leftovers_fall_back_to_a_normal_build(tmp_path, caplog):
    register()
    torch.manual_seed(0)
    model = DerivedBuffer({"dim": 8, "hidden": 16, "num_classes": 3})
    weights.save_weights(model, tmp_path)
    with caplog.at_level(logging.WARNING, logger="zoo"):
        loaded = weights.load_pretrained(DerivedBuffer, dict(model.config), tmp_path / "model.safetensors")
    assert "scale stayed on the meta device" in caplog.text
    assert not weights.meta_tensors(loaded)
    assert torch.equal(loaded.encoder.weight, model.encoder.weight)


def test_head_override_reinitialises_the_head_after_a_streamed_load(tmp_path):
    register()
    model = ToyModel({"dim": 8, "hidden": 16, "num_classes": 3})
    folder = model.save_pretrained(tmp_path / "out", max_shard_size=200)
    assert (folder / "model.safetensors.index.json").exists()
    loaded = zoo.load(str(folder), num_classes=5)
    assert loaded.classifier.weight.shape == (5, 16) and not loaded.classifier.weight.is_meta
    assert torch.equal(loaded.encoder.weight, model.encoder.weight)


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    """write_safetensors used to open the target itself: a failure after the header left a truncated file."""
    path = tmp_path / "model.safetensors"
    old = {"w": torch.arange(16.0)}
    weights.write_safetensors(path, old)
    before = path.read_bytes()

    def fail(*args):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the tensors are written

    monkeypatch.setattr(weights, "memoryview", fail, raising=False)
    with pytest.raises(KeyboardInterrupt):
        weights.write_safetensors(path, {"w": torch.ones(16)})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    monkeypatch.undo()
    assert torch.equal(load_file(str(path))["w"], old["w"])


def test_bad_max_shard_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="max_shard_size='lots'"):
        _lm().save_pretrained(tmp_path / "out", max_shard_size="lots")
    assert not (tmp_path / "out").exists()


def test_official_card_loader_builds_on_meta_and_non_meta_aware_loaders_still_work(tmp_path, monkeypatch):
    """The card path runs family.load under init_empty; a loader that copies into the model (meta: a no-op)
    is detected and run again on a normal build."""
    from zoo import api
    from zoo.registry import Family

    register()
    torch.manual_seed(4)
    source = ToyModel({"dim": 8, "hidden": 16, "num_classes": 3})
    torch.save(source.state_dict(), tmp_path / "toy.pt")
    builds = []

    def copying_loader(path, config):
        model = ToyModel(config)
        builds.append(model.encoder.weight.is_meta)
        model.load_state_dict(torch.load(path, weights_only=True))  # copy semantics
        return model

    def strict_loader(path, config):
        from zoo.hub import load_state_dict_strict

        model = ToyModel(config)
        builds.append(model.encoder.weight.is_meta)
        return load_state_dict_strict(model, torch.load(path, weights_only=True), str(path))

    for loader, expected in ((strict_loader, [True]), (copying_loader, [True, False])):
        builds.clear()
        family = Family(name="toy", modality="vision", build=ToyModel, sizes={"tiny": {}}, load=loader)
        with pytest.warns(UserWarning) if loader is copying_loader else contextlib.nullcontext():
            model = api._load_official(family, str(tmp_path / "toy.pt"), dict(source.config))
        assert builds == expected
        _same_state(source, model)


def test_every_family_loads_exactly_what_it_saved(tmp_path):
    """The meta build + streamed load gives the same parameters and buffers (non-persistent included) as the
    normal build, for every registered family's smallest size."""
    import zoo.train.toy  # noqa: F401  (registers toy-regression)

    register()
    checked = []
    for family in list_families():
        size = "tiny" if "tiny" in family.sizes else next(iter(family.sizes))
        config = family.make_config(size)
        torch.manual_seed(0)
        model = family.build(config)
        folder = model.save_pretrained(tmp_path / family.name)
        loaded = zoo.load(str(folder))
        assert not weights.meta_tensors(loaded), family.name
        _same_state(model.eval(), loaded)
        checked.append(family.name)
    assert {"sylber", "hubertopic", "ca-dino", "toy-causal-lm"} <= set(checked)


def test_sharded_repo_through_the_loopback_hub(loopback_hub, tmp_path, hub_offline_factory):
    model = _lm(5)
    model.push_to_hub("alice/lm", max_shard_size=40_000)
    files = sorted(f for f in loopback_hub.list_files("alice/lm") if f != ".gitattributes")
    assert files == ["README.md", "config.json", "model-00001-of-00003.safetensors",
                     "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
                     "model.safetensors.index.json"]
    loaded = zoo.load("hf-hub:alice/lm")
    _same_state(model, loaded)
    with hub_offline_factory():  # every shard is in the cache
        _same_state(model, zoo.load("hf-hub:alice/lm"))
    pulled = zoo.hub.pull("alice/lm", to=tmp_path / "pulled")
    names = sorted(p.name for p in pulled.iterdir())
    assert "model.safetensors.index.json" in names and len([n for n in names if n.startswith("model-")]) == 3
    _same_state(model, zoo.load(str(pulled)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_bf16_straight_onto_cuda(tmp_path):
    model = _lm()
    folder = model.save_pretrained(tmp_path / "out", max_shard_size=30_000)
    loaded = zoo.load(str(folder), dtype=torch.bfloat16, device="cuda")
    assert {p.device.type for p in loaded.parameters()} == {"cuda"}
    assert {b.device.type for b in loaded.buffers()} == {"cuda"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key].cpu(), value.to(torch.bfloat16)), key


def test_save_weights_into_a_folder_with_weights_needs_overwrite_and_leaves_no_stale_file(tmp_path):
    """A sharded save over an earlier single-file save used to keep the old model.safetensors, which
    weight_files (and so loading) then picked instead of the new index."""
    old = {"a": torch.zeros(64), "b": torch.zeros(64)}
    new = {"a": torch.arange(64.0), "b": torch.ones(64)}
    assert weights.save_weights(old, tmp_path) == ["model.safetensors"]
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"already holds weights \(model.safetensors\); pass overwrite=True"):
        weights.save_weights(new, tmp_path, max_shard_size=256)
    written = weights.save_weights(new, tmp_path, max_shard_size=256, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written + ["notes.txt"])
    assert weights.weight_files(tmp_path)[0] == "model.safetensors.index.json"
    loaded = dict(weights.stream_tensors(weights.read_index(tmp_path).values()))
    assert torch.equal(loaded["a"], new["a"]) and torch.equal(loaded["b"], new["b"])
    assert weights.save_weights(old, tmp_path, overwrite=True) == ["model.safetensors"]  # and back: no shards left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "notes.txt"]


def test_official_loader_that_takes_dtype_and_device_gets_them(tmp_path):
    """A loader with ``dtype``/``device`` keywords streams straight into them (no float32 copy first);
    one without them is called as before and the model is cast afterwards."""
    from zoo import api
    from zoo.registry import Family

    register()
    torch.manual_seed(5)
    source = ToyModel({"dim": 8, "hidden": 16, "num_classes": 3})
    torch.save(source.state_dict(), tmp_path / "toy.pt")
    calls = []

    def typed_loader(path, config, *, dtype=None, device=None):
        from zoo.hub import load_state_dict_strict

        calls.append((dtype, device))
        model = ToyModel(config).to(dtype=dtype or torch.float32)
        state = {k: v.to(dtype or v.dtype) for k, v in torch.load(path, weights_only=True).items()}
        return load_state_dict_strict(model, state, str(path))

    def plain_loader(path, config):
        from zoo.hub import load_state_dict_strict

        calls.append("plain")
        return load_state_dict_strict(ToyModel(config), torch.load(path, weights_only=True), str(path))

    family = Family(name="toy", modality="vision", build=ToyModel, sizes={"tiny": {}}, load=typed_loader)
    model = api._load_official(family, str(tmp_path / "toy.pt"), dict(source.config), dtype=torch.bfloat16,
                               device="cpu")
    assert calls == [(torch.bfloat16, "cpu")]
    assert model.encoder.weight.dtype == torch.bfloat16
    assert torch.equal(model.encoder.weight, source.encoder.weight.to(torch.bfloat16))
    calls.clear()
    api._load_official(family, str(tmp_path / "toy.pt"), dict(source.config))
    assert calls == [(None, None)]  # nothing asked: keywords not passed, loader defaults
    calls.clear()
    family = Family(name="toy", modality="vision", build=ToyModel, sizes={"tiny": {}}, load=plain_loader)
    model = api._load_official(family, str(tmp_path / "toy.pt"), dict(source.config), dtype=torch.bfloat16)
    assert calls == ["plain"] and model.encoder.weight.dtype == torch.float32  # zoo.load casts afterwards
