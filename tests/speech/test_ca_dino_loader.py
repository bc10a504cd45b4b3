"""WeSpeaker checkpoint layouts -> CA-DINO model, strict (speech.md §3.2)."""
import pytest
import torch

from zoo.errors import CheckpointKeysError
from zoo.speech.ca_dino.builder import build, make_config
from zoo.speech.ca_dino.loader import load


def _random_state(config):
    torch.manual_seed(1)
    return {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in build(config).state_dict().items()}


def _same(model, state):
    got = model.state_dict()
    return set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


def test_avg_model_plain_teacher_with_projection_head(tmp_path):
    config = make_config("tiny")
    state = _random_state(config)
    assert "projection_head.last_layer.weight_g" in state and "projection_head.mlp.6.weight" in state
    torch.save(state, tmp_path / "avg_model.pt")
    model = load(str(tmp_path / "avg_model.pt"), config)
    assert _same(model, state)


def test_training_checkpoint_takes_the_teacher(tmp_path):
    config = make_config("tiny")
    teacher = _random_state(config)
    student = {k: torch.zeros_like(v) for k, v in teacher.items()}
    dino = {**{f"s_model.{k}": v for k, v in student.items()}, **{f"t_model.{k}": v for k, v in teacher.items()},
            "dino_loss_calculator.center": torch.zeros(1, 512)}
    torch.save({"model": dino, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "model_150.pt")
    model = load(str(tmp_path / "model_150.pt"), config)
    assert _same(model, teacher)


def test_parametrizations_spelling_is_accepted(tmp_path):
    config = make_config("tiny")
    state = _random_state(config)
    renamed = {k.replace("last_layer.weight_g", "last_layer.parametrizations.weight.original0")
                .replace("last_layer.weight_v", "last_layer.parametrizations.weight.original1"): v
               for k, v in state.items()}
    torch.save(renamed, tmp_path / "new.pt")
    assert _same(load(str(tmp_path / "new.pt"), config), state)


def test_supervised_wespeaker_drops_classifier(tmp_path, caplog):
    config = make_config("tiny", encoder={"emb_bn": False}, head={"enabled": False})
    state = _random_state(config)
    assert not any(k.startswith(("bn2.", "projection_head.")) for k in state)
    with_classifier = {**state, "projection.weight": torch.randn(30, 192)}
    torch.save(with_classifier, tmp_path / "avg_model.pt")
    with caplog.at_level("INFO", logger="zoo.ca_dino"):
        model = load(str(tmp_path / "avg_model.pt"), config)
    assert _same(model, state)
    assert "projection.weight" in caplog.text


def test_wrong_layouts_fail_with_key_lists(tmp_path):
    config = make_config("tiny")
    state = _random_state(config)
    # a supervised model into a DINO config: head and bn2 missing
    bad = {k: v for k, v in state.items() if not k.startswith(("projection_head.", "bn2."))}
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeysError) as info:
        load(str(tmp_path / "bad.pt"), config)
    message = str(info.value)
    assert "projection_head.mlp.0.weight" in info.value.missing and "bn2.running_mean" in info.value.missing
    assert "bn2.*: 5 keys" in message and "projection_head.mlp.{0,3,6}.*: 2 keys each" in message
    assert info.value.unexpected == ["extra.weight"] and "head.enabled=false" in message
    # wrong size: ecapa shapes differ
    other = _random_state(make_config("tiny", encoder={"channels": 64}))
    torch.save(other, tmp_path / "wide.pt")
    with pytest.raises(CheckpointKeysError, match=r"model \(32, 80, 5\), checkpoint \(64, 80, 5\): 1 key, "
                                                  r"e.g. layer1.conv.weight"):
        load(str(tmp_path / "wide.pt"), config)


def test_pickled_objects_are_refused(tmp_path):
    from zoo.errors import CheckpointFormatError

    torch.save({"model": object()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointFormatError, match="tensor-only"):
        load(str(tmp_path / "evil.pt"), make_config("tiny"))
