"""``Trainer.build_model``: the one way a trainer builds or loads its family's model from ``model.*``."""
import pytest
import torch

from zoo import registry
from zoo.errors import ConfigError
from zoo.registry import TEST_MODALITY, Family
from zoo.testing.toy_family import ToyModel, build, register
from zoo.train.trainer import Trainer


class ToyFamilyTrainer(Trainer):
    family_name = "toy"
    config_defaults = {"model": {"size": "small", "init": None, "overrides": {}}}


class Unnamed(Trainer):
    """No family_name and registered by no family."""


def _equal_states(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fresh_model_is_the_family_build_of_size_and_overrides():
    family = register()
    config = {"model": {"size": "tiny", "init": None, "overrides": {"num_classes": 5}}}
    torch.manual_seed(3)
    model = ToyFamilyTrainer(config).build_model()
    torch.manual_seed(3)
    reference = family.build(family.make_config("tiny", {"num_classes": 5}, source="model.overrides"))
    assert isinstance(model, ToyModel) and model.training
    assert model.config == {"dim": 8, "hidden": 16, "num_classes": 5, "size": "tiny"}
    assert _equal_states(model, reference)


def test_empty_size_is_the_trainers_default_size():
    register()
    model = ToyFamilyTrainer({"model": {"size": None, "init": None, "overrides": {}}}).build_model()
    assert model.config["size"] == "small" and model.config["hidden"] == 32


def test_unknown_override_names_the_section():
    register()
    with pytest.raises(ConfigError, match="num_clases.*model.overrides|model.overrides.*num_clases"):
        ToyFamilyTrainer({"model": {"size": "tiny", "overrides": {"num_clases": 2}}}).build_model()


def test_init_loads_the_folder_with_overrides(tmp_path):
    family = register()
    saved = family.build(family.make_config("tiny"))
    saved.save_pretrained(tmp_path / "toy")
    model = ToyFamilyTrainer({"model": {"init": str(tmp_path / "toy"), "overrides": {}}}).build_model()
    assert model.training and _equal_states(model, saved)
    # an override that changes the head's shape re-initialises only the head (zoo.load's rule)
    wider = ToyFamilyTrainer({"model": {"init": str(tmp_path / "toy"), "overrides": {"num_classes": 4}}}).build_model()
    assert wider.classifier.weight.shape == (4, 16)
    assert torch.equal(wider.encoder.weight, saved.encoder.weight)


def test_init_of_another_family_is_an_error(tmp_path, monkeypatch):
    family = register()
    family.build(family.make_config("tiny")).save_pretrained(tmp_path / "toy")
    other = Family(name="toy-other", modality=TEST_MODALITY, build=build, sizes={"tiny": {"dim": 8}})
    monkeypatch.setitem(registry._FAMILIES, "toy-other", other)

    class OtherTrainer(Trainer):
        family_name = "toy-other"

    with pytest.raises(ConfigError, match=r"model.init=.* is a toy model, not a toy-other model: give a toy-other"):
        OtherTrainer({"model": {"init": str(tmp_path / "toy")}}).build_model()


def test_family_comes_from_class_then_registry_then_recipe(monkeypatch):
    family = register()
    assert ToyFamilyTrainer({}).family() is family
    assert Unnamed({"family": "toy"}).family() is family
    with pytest.raises(ConfigError, match="Unnamed does not say which model family it trains: set `family: NAME`"):
        Unnamed({}).family()

    class Registered(Trainer):
        pass

    class Child(Registered):
        pass

    reference = f"{Registered.__module__}:{Registered.__qualname__}"
    other = Family(name="toy-trained", modality=TEST_MODALITY, build=build, sizes={"tiny": {"dim": 8}},
                   trainer=reference)
    monkeypatch.setitem(registry._FAMILIES, "toy-trained", other)
    # the registry's trainer reference wins over the recipe's family:, and a subclass inherits it
    assert Registered({"family": "toy"}).family() is other
    assert Child({}).family() is other
