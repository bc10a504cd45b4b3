"""The families whose trainers use ``zoo.train.Trainer.build_model`` get exactly the model their own copy built."""
import copy

import pytest
import torch

import zoo
from zoo.registry import get_family

CASES = [  # (trainer reference, family, overrides of the tiny size)
    ("zoo.speech.sylber.trainer:SylberTrainer", "sylber", {}),
    ("zoo.vision.clip.trainer:ClipTrainer", "clip", {}),
    ("zoo.vision.modeling_collaborator.distill:HeadTrainer", "collaborator", {}),
    ("zoo.vision.modeling_collaborator.trainer:CollaboratorTrainer", "collaborator", {}),
]


def _trainer(reference: str, model: dict):
    from zoo.registry import import_object

    cls = import_object(reference)
    config = copy.deepcopy(cls.config_defaults)
    config["model"] = {**config.get("model", {}), **model}
    return cls(config)


def _states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("reference,name,overrides", CASES)
def test_fresh_and_init_models_are_what_the_family_copy_built(reference, name, overrides, tmp_path):
    family = get_family(name)
    trainer = _trainer(reference, {"size": "tiny", "init": None, "overrides": overrides})
    assert trainer.family() is family
    torch.manual_seed(0)
    model = trainer.build_model()
    torch.manual_seed(0)  # what each trainer's own build_model did before
    expected = family.build(family.make_config("tiny", dict(overrides), source="model.overrides"))
    assert type(model) is type(expected) and model.training
    assert model.config == expected.config and _states_equal(model, expected)

    expected.save_pretrained(tmp_path / "init")
    loaded = _trainer(reference, {"size": "tiny", "init": str(tmp_path / "init"), "overrides": {}}).build_model()
    reference_load = zoo.load(str(tmp_path / "init"))
    assert loaded.training and _states_equal(loaded, reference_load) and _states_equal(loaded, expected)
