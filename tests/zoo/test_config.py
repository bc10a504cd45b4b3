"""zoo.config and zoo.train.load_recipe: YAML + dotted overrides, unknown keys and wrong types, path checks."""
import pytest

from zoo.config import apply_overrides, build_config, check_paths, load_yaml, parse_overrides
from zoo.errors import ConfigError
from zoo.train import ENGINE_DEFAULTS, load_recipe
from zoo.train.toy import ToyTrainer

DEFAULTS = {"a": {"b": 1, "c": 0.5, "flag": False, "names": ["x"], "open": {}}, "free": None}


def test_parse_overrides_yaml_values():
    assert parse_overrides(["a.b=3", "a.c=1e-3", "x=null", "l=[1, 2]", "s=hello", "t=true", "e="]) == {
        "a.b": 3, "a.c": "1e-3", "x": None, "l": [1, 2], "s": "hello", "t": True, "e": ""}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["--lr"])


def test_build_config_merges_converts_and_checks():
    config = build_config(DEFAULTS, {"a": {"b": 2}}, ["a.c=1e-3", "a.open.anything=7", "free=[1]", "a.b=4.0"])
    assert config == {"a": {"b": 4, "c": 0.001, "flag": False, "names": ["x"], "open": {"anything": 7}},
                      "free": [1]}
    assert isinstance(config["a"]["c"], float) and isinstance(config["a"]["b"], int)
    assert build_config(DEFAULTS, {"a": {"b": None}})["a"]["b"] is None  # null = unset, always allowed


def test_unknown_key_names_key_and_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("a:\n  bb: 1\n")
    with pytest.raises(ConfigError, match=r"'a\.bb' in .*r\.yaml.*a has keys b, c, flag, names, open"):
        build_config(DEFAULTS, load_yaml(recipe), source=str(recipe))
    with pytest.raises(ConfigError, match=r"'a\.q' in command-line"):
        build_config(DEFAULTS, {}, ["a.q=1"])
    with pytest.raises(ConfigError, match="'zz' in"):
        build_config(DEFAULTS, {"zz": 1})


@pytest.mark.parametrize("override,expected", [("a.b=1.5", "int"), ("a.flag=3", "bool"), ("a.c=fast", "float"),
                                               ("a.names=3", "list"), ("a=3", "mapping")])
def test_wrong_type_names_expected_type(override, expected):
    with pytest.raises(ConfigError, match=f"must be {expected}"):
        build_config(DEFAULTS, {}, [override])


def test_apply_overrides_and_missing_yaml(tmp_path):
    config = {"a": {"b": 1}}
    apply_overrides(config, {"a.b": 2, "n.m": 3})
    assert config == {"a": {"b": 2}, "n": {"m": 3}}
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(config, {"a.b.c": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_check_paths(tmp_path):
    (tmp_path / "here.jsonl").write_text("")
    check_paths({"data": {"train": str(tmp_path / "here.jsonl"), "eval": None}}, ["data.train", "data.eval"])
    with pytest.raises(ConfigError, match=r"data\.train: .*missing.jsonl' does not exist"):
        check_paths({"data": {"train": str(tmp_path / "missing.jsonl")}}, ["data.train"])
    # "demo" names the bundled data, so speech trainers can declare data.train as a path key
    check_paths({"data": {"train": "demo"}}, ["data.train"])


def test_load_recipe_fills_engine_and_trainer_defaults(tmp_path):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("trainer: zoo.train.toy:ToyTrainer\noptim:\n  lr: 1e-2\ntrain:\n  max_steps: 7\n"
                      "model:\n  hidden: 8\n")
    config = load_recipe(recipe, ["schedule.name=cosine", "data.train_size=32"])
    assert config["optim"] == {**ENGINE_DEFAULTS["optim"], "lr": 0.01}
    assert config["train"]["max_steps"] == 7 and config["train"]["batch_size"] == ENGINE_DEFAULTS["train"]["batch_size"]
    assert config["schedule"]["name"] == "cosine"
    assert config["model"] == {**ToyTrainer.config_defaults["model"], "hidden": 8}
    assert config["data"]["train_size"] == 32
    with pytest.raises(ConfigError, match=r"'model\.hiden' in .*toy\.yaml|'model\.hiden' in command"):
        load_recipe(recipe, ["model.hiden=3"])
    with pytest.raises(ConfigError, match="must be int"):
        load_recipe(recipe, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="names no trainer"):
        load_recipe(None, [])
    # the family argument may be a trainer class path, and must agree with the recipe
    assert load_recipe(None, [], family="zoo.train.toy:ToyTrainer")["trainer"] == "zoo.train.toy:ToyTrainer"
    assert load_recipe(None, [], family="toy-regression")["family"] == "toy-regression"
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: sylber\n")
    with pytest.raises(ConfigError, match="declares family: sylber"):
        load_recipe(bad, [], family="toy-regression")
