import pytest
import yaml

import zoo
from zoo.cards import add_card, parse_card, remove_card
from zoo.errors import CardError, ConfigError, UnknownFamilyError, UnknownModelError
from zoo.testing.toy_family import register

TOY_CARD = {"name": "toy-tiny", "family": "toy", "size": "tiny", "description": "toy", "license": "mit"}


@pytest.fixture()
def toy_card():
    register()
    card = add_card(dict(TOY_CARD))
    yield card
    remove_card(card.name)


def test_family_config_merges_size_and_dotted_overrides():
    family = register()
    assert family.make_config("small") == {"dim": 8, "hidden": 32, "num_classes": 3, "size": "small"}
    assert family.make_config("tiny", {"num_classes": 7})["num_classes"] == 7
    with pytest.raises(ConfigError, match="Unknown config key 'nclasses'.*num_classes"):
        family.make_config("tiny", {"nclasses": 7})
    with pytest.raises(ConfigError, match="no size 'huge'.*tiny, small"):
        family.make_config("huge")


def test_make_config_and_load_reject_an_unknown_key_the_same_way(toy_card):
    family = register()
    assert family.make_config("tiny", num_classes=7) == {"dim": 8, "hidden": 16, "num_classes": 7, "size": "tiny"}
    assert family.make_config("tiny", {"hidden": 4}, num_classes=2)["hidden"] == 4
    with pytest.raises(ConfigError) as by_family:
        family.make_config("tiny", num_clases=7)
    with pytest.raises(ConfigError) as by_load:
        zoo.load("toy-tiny", pretrained=False, num_clases=7)
    expected = ("Unknown config key 'num_clases' in {}: the top level has keys dim, hidden, num_classes, size. "
                "Did you mean 'num_classes'? Fix the spelling or remove it.")
    assert str(by_family.value) == expected.format("overrides for Family 'toy' size 'tiny'")
    assert str(by_load.value) == expected.format("overrides for 'toy-tiny'")
    with pytest.raises(ConfigError, match="'hidden' in .* must be int, got str 'wide'"):
        family.make_config("tiny", hidden="wide")
    with pytest.raises(ConfigError, match="'hidden' in .* must be int, got str 'wide'"):
        zoo.load("toy-tiny", pretrained=False, hidden="wide")


def test_family_builders_use_the_same_strict_path():
    from zoo.speech.sylber.builder import make_config

    assert make_config("tiny", norm_threshold=9)["norm_threshold"] == 9.0
    assert make_config("tiny", encoder={"num_hidden_layers": 3})["encoder"]["num_hidden_layers"] == 3
    for bad in ({"norm_treshold": 9.0}, {"encoder": {"num_hidden_layer": 3}}):
        with pytest.raises(ConfigError, match="Unknown config key '(norm_treshold|encoder.num_hidden_layer)'"):
            make_config("tiny", **bad)
    with pytest.raises(ConfigError, match="Unknown config key 'norm_treshold'.*Did you mean 'norm_threshold'"):
        zoo.get_family("sylber").make_config("tiny", norm_treshold=9.0)


def test_unknown_family_lists_known():
    register()
    with pytest.raises(UnknownFamilyError, match="toy"):
        zoo.get_family("toyy")


def test_unknown_model_lists_closest(toy_card):
    with pytest.raises(UnknownModelError) as err:
        zoo.load("toy-tinny")
    assert err.value.candidates[0] == "toy-tiny"
    assert "toy-tiny" in str(err.value)


def test_list_models_filters(toy_card):
    assert "toy-tiny" in zoo.list_models("toy-*")
    assert "toy-tiny" in zoo.list_models("*tiny", modality="test")
    assert "toy-tiny" not in zoo.list_models("*tiny", modality="vision")  # test families pose as no real modality
    assert "toy-tiny" not in zoo.list_models("*", modality="speech")
    assert "toy-tiny" not in zoo.list_models(pretrained=True)
    assert "toy-tiny" in zoo.list_models(pretrained=False)
    # a modality given as the pattern used to return [] as if the zoo had no speech models
    with pytest.raises(ConfigError, match=r"list_models\(modality='speech'\)"):
        zoo.list_models("speech")
    assert zoo.list_models("test*") == []  # other patterns that match nothing are just empty


def test_model_info_has_full_config(toy_card):
    info = zoo.model_info("toy-tiny")
    assert info["config"] == {"dim": 8, "hidden": 16, "num_classes": 3, "size": "tiny"}
    assert info["modality"] == "test" and info["pretrained"] is False


@pytest.mark.parametrize("patch, message", [
    ({"name": "Toy_Tiny"}, "field 'name'"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"weights": {"repo_id": "a/b"}}, "weights.filename"),
    ({"weights": {"repo_id": "a/b", "filename": "x", "format": "onnx"}}, "weights.format"),
    ({"sample_rate": "16k"}, "'sample_rate' must be a int"),
    ({"metrics": [{"name": "f1"}]}, "metrics\\[0\\]"),
])
def test_invalid_card_names_field(patch, message):
    with pytest.raises(CardError, match=message):
        parse_card({**TOY_CARD, **patch}, "hub_cards/toy-tiny.yaml")


def test_card_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "family": "toy"}))
    with pytest.raises(CardError, match=f"{bad}.*description"):
        add_card(bad)


def test_bundled_cards_are_valid():
    cards = zoo.cards.all_cards()
    for name, card in cards.items():
        family = zoo.get_family(card.family)  # every card names a registered family
        config = family.make_config(card.size, card.config, source=card.source)
        assert config, name


def test_pretrained_without_weights_says_what_to_do(toy_card):
    with pytest.raises(zoo.errors.WeightsNotAvailableError, match="pretrained=False"):
        zoo.load("toy-tiny")


def test_pretrained_false_builds_card_config(toy_card):
    model = zoo.load("toy-tiny", pretrained=False, num_classes=5)
    assert model.classifier.out_features == 5
    assert model.card_name == "toy-tiny" and not model.training


def test_lazy_exports_import_on_first_use_and_name_the_module(tmp_path, monkeypatch):
    """zoo.train, zoo.models and every family package expose their heavy names through lazy_exports."""
    import sys

    from zoo.registry import lazy_exports

    (tmp_path / "lazy_target_mod.py").write_text("VALUE = 41 + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    getter = lazy_exports("pkg.here", {"VALUE": "lazy_target_mod"})
    assert "lazy_target_mod" not in sys.modules
    assert getter("VALUE") == 42 and "lazy_target_mod" in sys.modules
    with pytest.raises(AttributeError, match=r"module 'pkg.here' has no attribute 'nope'"):
        getter("nope")
    import zoo.models
    import zoo.train

    assert zoo.train.load_recipe.__module__ == "zoo.train.recipe"
    assert zoo.models.remap_keys.__module__ == "zoo.models.checkpoints"
    assert not hasattr(zoo.train, "nope") and not hasattr(zoo.models, "nope")
    monkeypatch.delitem(sys.modules, "lazy_target_mod")
