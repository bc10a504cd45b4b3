import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError, OutputExistsError
from zoo.testing.toy_family import ToyModel, register


@pytest.fixture()
def toy():
    register()
    torch.manual_seed(0)
    model = ToyModel({"dim": 8, "hidden": 16, "num_classes": 3})
    model.codebook.normal_()
    return model


def test_round_trip_is_bit_identical(toy, tmp_path):
    folder = toy.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["family"] == "toy" and meta["zoo_version"] == zoo.__version__
    loaded = zoo.load(str(folder))
    for key, value in toy.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.randn(4, 8)
    assert torch.equal(toy.eval()(x), loaded(x))
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: zoo\n") and "tags:" in readme


def test_refuses_to_overwrite_without_flag(toy, tmp_path):
    folder = toy.save_pretrained(tmp_path / "out")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite"):
        toy.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "mine"
    toy.save_pretrained(folder, overwrite=True)
    assert not (folder / "notes.txt").exists()


def test_missing_and_unexpected_keys_are_listed(toy, tmp_path):
    folder = toy.save_pretrained(tmp_path / "out")
    state = load_file(folder / "model.safetensors")
    state["extra.weight"] = state.pop("encoder.bias")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointKeysError) as err:
        zoo.load(str(folder))
    assert err.value.missing == ["encoder.bias"] and err.value.unexpected == ["extra.weight"]
    assert "encoder.bias" in str(err.value) and "extra.weight" in str(err.value)


def test_shape_mismatch_outside_head_is_an_error(toy, tmp_path):
    folder = toy.save_pretrained(tmp_path / "out")
    with pytest.raises(CheckpointKeysError) as err:
        zoo.load(str(folder), hidden=4)
    assert err.value.mismatched == [("codebook", (2, 4), (2, 16)), ("encoder.bias", (4,), (16,)),
                                    ("encoder.weight", (4, 8), (16, 8))]
    assert "encoder.weight: model (4, 8), checkpoint (16, 8)" in str(err.value)
    assert "probably another size" in str(err.value)


def test_head_override_reinitialises_only_the_head(toy, tmp_path):
    folder = toy.save_pretrained(tmp_path / "out")
    model = zoo.load(str(folder), num_classes=10)
    assert model.classifier.out_features == 10
    assert torch.equal(model.encoder.weight, toy.encoder.weight)
    assert model.config["num_classes"] == 10


def test_truncated_safetensors_is_one_clear_error(toy, tmp_path):
    folder = toy.save_pretrained(tmp_path / "out")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="corrupt or truncated"):
        zoo.load(str(folder))


def test_folder_without_zoo_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["HubertModel"]}))
    with pytest.raises(CheckpointFormatError, match="zoo convert"):
        zoo.load(str(tmp_path))


def test_names_with_slash_or_colon_never_hit_the_registry(tmp_path):
    with pytest.raises(zoo.errors.WeightsNotAvailableError, match="hf-hub:org/name"):
        zoo.load("org/name")
    with pytest.raises(ConfigError, match="not a Hub name"):
        zoo.load("hf-hub:not a repo")


def test_dtype_and_device(toy, tmp_path):
    folder = toy.save_pretrained(tmp_path / "out")
    model = zoo.load(str(folder), dtype="float64", device="cpu")
    assert model.encoder.weight.dtype == torch.float64


def test_load_refuses_bad_names_and_devices_with_zoo_errors(toy, tmp_path):
    folder = toy.save_pretrained(tmp_path / "out")
    with pytest.raises(ConfigError, match="empty name"):
        zoo.load("")  # used to read the current folder: "'.' has no config.json"
    with pytest.raises(ConfigError, match="'gpu' is not a torch device"):
        zoo.load(str(folder), device="gpu")  # used to be torch's RuntimeError
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            zoo.load(str(folder), device="cuda")  # used to fail inside Module.to with a driver message
    with pytest.raises(zoo.errors.WeightsNotAvailableError, match="is a file; zoo.load takes the zoo-format folder"):
        zoo.load(str(folder / "model.safetensors"))
    with pytest.raises(zoo.errors.WeightsNotAvailableError) as info:
        zoo.load(str(tmp_path / "absent"))
    assert "hf-hub:" not in str(info.value)  # an absolute path is no Hub name; only org/name gets that hint


def test_list_models_rejects_an_unknown_modality():
    assert zoo.list_models(modality="vision") == [n for n in zoo.list_models() if
                                                  zoo.model_info(n)["modality"] == "vision"]
    with pytest.raises(ConfigError, match="Unknown modality 'visoin'; use one of speech, vision, multimodal"):
        zoo.list_models(modality="visoin")  # used to return [] as if the zoo had no such models


def test_stored_config_is_checked_and_completed(toy, tmp_path, caplog):
    """An unknown key in config.json used to be dropped without a word; a wrong type failed inside the build."""
    folder = toy.save_pretrained(tmp_path / "out")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["hiden"] = 4
    (folder / "config.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="zoo"):
        loaded = zoo.load(str(folder))
    assert "'hiden' not in the toy family's config" in caplog.text and str(folder) in caplog.text
    assert loaded.config["hiden"] == 4 and loaded.config["hidden"] == 16  # kept as saved, as before
    meta["config"].pop("hiden")
    meta["config"]["hidden"] = "sixteen"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="'hidden' .* must be int"):
        zoo.load(str(folder))
    meta["config"] = {"dim": 8, "hidden": 16}  # written before num_classes existed: takes the family default
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = zoo.load(str(folder))
    assert loaded.config == {"dim": 8, "hidden": 16, "num_classes": 3}
    assert torch.equal(loaded.encoder.weight, toy.encoder.weight)


def test_every_family_saves_a_config_its_loader_accepts():
    """What a family's model stores as ``model.config`` must pass ``zoo.hub.stored_config`` unchanged for every
    size, or its saved folders would not load (or would load as another model)."""
    import copy

    from zoo.hub import stored_config
    from zoo.registry import list_families

    for family in list_families():
        for size in family.sizes:
            reference = family.make_config(size)
            with torch.device("meta"):
                model = family.build(copy.deepcopy(reference))
            saved = json.loads(json.dumps(model.config))
            assert stored_config(family, saved, f"{family.name}-{size}") == saved, (family.name, size)
