"""WeSpeaker checkpoints -> CA-DINO model: layouts, folders, architecture from tensors, strict errors.

The fixtures spell WeSpeaker's key names out by hand, module by module, as
``wenet-e2e/wespeaker:wespeaker/models/ecapa_tdnn.py`` (``ECAPA_TDNN``, ``Conv1dReluBn``,
``Res2Conv1dReluBn``, ``SE_Connect``), ``wespeaker/models/pooling_layers.py`` (``ASTP``) and
``wespeaker/ssl/models/dino_wrapper.py`` (``DINOHead``) name them; they are never made from
zoo's own ``state_dict``, so a naming drift in zoo fails here.
"""
import json

import pytest
import torch
import yaml

from zoo.errors import CheckpointFormatError, CheckpointKeysError
from zoo.speech.ca_dino.builder import build, make_config
from zoo.speech.ca_dino.loader import architecture_from_state_dict, load


def _bn(prefix, n, g):
    return {f"{prefix}.weight": torch.rand(n, generator=g) + 0.5, f"{prefix}.bias": torch.randn(n, generator=g),
            f"{prefix}.running_mean": torch.randn(n, generator=g),
            f"{prefix}.running_var": torch.rand(n, generator=g) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _conv(prefix, out_ch, in_ch, k, g):
    return {f"{prefix}.weight": torch.randn(out_ch, in_ch, k, generator=g) * 0.1,
            f"{prefix}.bias": torch.randn(out_ch, generator=g) * 0.1}


def _linear(prefix, out_f, in_f, g, bias=True):
    out = {f"{prefix}.weight": torch.randn(out_f, in_f, generator=g) * 0.1}
    if bias:
        out[f"{prefix}.bias"] = torch.randn(out_f, generator=g) * 0.1
    return out


def wespeaker_state(channels=32, feat_dim=80, embed_dim=192, cat_out=96, pool_bottleneck=32, se_bottleneck=16,
                    scale=8, emb_bn=True, head=(256, 64, 512), classes=0, seed=0):
    """A WeSpeaker ECAPA_TDNN_GLOB state dict with its real key names (random values).

    head = (hidden_dim, bottleneck_dim, out_dim) of a 3-layer DINOHead with BN, or None.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    state.update(_conv("layer1.conv", channels, feat_dim, 5, g))
    state.update(_bn("layer1.bn", channels, g))
    width = channels // scale
    for layer in (2, 3, 4):
        block = f"layer{layer}.se_res2block"
        state.update(_conv(f"{block}.0.conv", channels, channels, 1, g))
        state.update(_bn(f"{block}.0.bn", channels, g))
        for i in range(scale - 1):
            state.update(_conv(f"{block}.1.convs.{i}", width, width, 3, g))
            state.update(_bn(f"{block}.1.bns.{i}", width, g))
        state.update(_conv(f"{block}.2.conv", channels, channels, 1, g))
        state.update(_bn(f"{block}.2.bn", channels, g))
        state.update(_linear(f"{block}.3.linear1", se_bottleneck, channels, g))
        state.update(_linear(f"{block}.3.linear2", channels, se_bottleneck, g))
    state.update(_conv("conv", cat_out, 3 * channels, 1, g))
    state.update(_conv("pool.linear1", pool_bottleneck, 3 * cat_out, 1, g))  # global context: x, mean, std
    state.update(_conv("pool.linear2", cat_out, pool_bottleneck, 1, g))
    state.update(_bn("bn", 2 * cat_out, g))
    state.update(_linear("linear", embed_dim, 2 * cat_out, g))
    if emb_bn:
        state.update(_bn("bn2", embed_dim, g))
    if head is not None:
        hidden, bottleneck, out_dim = head
        state.update(_linear("projection_head.mlp.0", hidden, embed_dim, g))
        state.update(_bn("projection_head.mlp.1", hidden, g))
        state.update(_linear("projection_head.mlp.3", hidden, hidden, g))
        state.update(_bn("projection_head.mlp.4", hidden, g))
        state.update(_linear("projection_head.mlp.6", bottleneck, hidden, g))
        state["projection_head.last_layer.weight_g"] = torch.ones(out_dim, 1)
        state["projection_head.last_layer.weight_v"] = torch.randn(out_dim, bottleneck, generator=g)
    if classes:
        state["projection.weight"] = torch.randn(classes, embed_dim, generator=g)
    return state


def test_utterance_mean_is_read_from_the_tensors(tmp_path):
    # a zoo-trained model with utterance_mean: bn / linear are feat_dim (80) wider than 2 * cat_out
    torch.manual_seed(0)
    trained = build(make_config("tiny", utterance_mean=True)).eval()
    state = trained.state_dict()
    assert state["linear.weight"].shape == (192, 2 * 96 + 80) and state["bn.weight"].shape == (2 * 96 + 80,)
    assert architecture_from_state_dict(state)["utterance_mean"] is True
    torch.save(state, tmp_path / "model.pt")
    model = load(str(tmp_path / "model.pt"), make_config("tiny"))  # the config says False; the tensors win
    assert model.utterance_mean and model.config["utterance_mean"] is True
    _same(model, state)


def _same(model, state):
    got = model.state_dict()
    assert set(got) == set(state), (sorted(set(got) ^ set(state)))[:10]
    for key, value in state.items():
        assert torch.equal(got[key], value), key


def test_architecture_is_read_from_the_tensors():
    arch = architecture_from_state_dict(wespeaker_state(channels=48, scale=4, cat_out=144, pool_bottleneck=24,
                                                        se_bottleneck=8, embed_dim=128, head=(300, 40, 1000)))
    assert arch["encoder"] == {"channels": 48, "feat_dim": 80, "embed_dim": 128, "global_context_att": True,
                               "emb_bn": True, "scale": 4, "se_bottleneck": 8, "pool_bottleneck": 24,
                               "cat_out_channels": 144}
    assert arch["head"] == {"enabled": True, "out_dim": 1000, "bottleneck_dim": 40, "nlayers": 3, "use_bn": True,
                            "norm_last_layer": True, "hidden_dim": 300}
    supervised = architecture_from_state_dict(wespeaker_state(emb_bn=False, head=None, classes=30))
    assert supervised["encoder"]["emb_bn"] is False and supervised["head"] == {"enabled": False}
    assert supervised["num_classes"] == 30
    assert arch["utterance_mean"] is False and supervised["utterance_mean"] is False
    assert architecture_from_state_dict({"front.conv1.weight": torch.zeros(1)}) is None


def test_avg_model_converts_without_size_or_overrides(tmp_path, caplog):
    state = wespeaker_state(channels=48, scale=4, cat_out=144, pool_bottleneck=24, se_bottleneck=8)
    torch.save(state, tmp_path / "avg_model.pt")
    with caplog.at_level("INFO", logger="zoo.ca_dino"):
        model = load(str(tmp_path / "avg_model.pt"), make_config("ecapa512"))  # the CLI's default size
    _same(model, state)
    assert model.config["encoder"]["channels"] == 48 and not model.training
    assert "encoder.channels=48 (config: 512)" in caplog.text
    assert model.embed(torch.randn(8000) * 0.1, 16000).shape == (1, 192)


def test_wespeaker_folder_with_config_yaml(tmp_path):
    folder = tmp_path / "voxceleb_ecapa_dino"
    folder.mkdir()
    state = wespeaker_state()
    torch.save(state, folder / "avg_model.pt")
    torch.save({}, folder / "model_149.pt")  # other epochs beside the average are ignored
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"model": "ECAPA_TDNN_GLOB_c32", "model_args": {"feat_dim": 80, "embed_dim": 192}}))
    _same(load(str(folder), make_config("ecapa1024")), state)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "ECAPA_TDNN_GLOB_c512"}))
    with pytest.raises(CheckpointFormatError, match="channels: config 512, tensors 32"):
        load(str(folder), make_config("ecapa512"))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "ResNet34"}))
    with pytest.raises(CheckpointFormatError, match="ECAPA-TDNN models"):
        load(str(folder), make_config("ecapa512"))


def test_hub_snapshot_of_a_supervised_model_drops_the_classifier(tmp_path, caplog):
    folder = tmp_path / "wespeaker-voxceleb-ecapa-tdnn512"
    folder.mkdir()
    state = wespeaker_state(emb_bn=False, head=None, classes=30)
    torch.save(state, folder / "avg_model.pt")
    with caplog.at_level("INFO", logger="zoo.ca_dino"):
        model = load(str(folder), make_config("ecapa512"))
    assert model.projection_head is None and model.projection is None
    _same(model, {k: v for k, v in state.items() if k != "projection.weight"})
    assert "dropped the speaker classifier ['projection.weight'] (30, 192)" in caplog.text
    kept = load(str(folder), make_config("ecapa512", num_classes=5))  # asked for a classifier: kept, 30 rows
    assert torch.equal(kept.projection.weight, state["projection.weight"])


def test_head_dropped_on_request(tmp_path, caplog):
    state = wespeaker_state()
    torch.save(state, tmp_path / "avg_model.pt")
    with caplog.at_level("INFO", logger="zoo.ca_dino"):
        model = load(str(tmp_path / "avg_model.pt"), make_config("tiny", head={"enabled": False}))
    assert model.projection_head is None
    _same(model, {k: v for k, v in state.items() if not k.startswith("projection_head.")})
    assert "dropped the DINO head" in caplog.text


def test_zoo_folder_takes_its_config_json(tmp_path):
    model = load(str(_saved(tmp_path)), make_config("ecapa512"))
    assert model.config["encoder"]["channels"] == 32


def _saved(tmp_path):
    state = wespeaker_state()
    torch.save(state, tmp_path / "avg_model.pt")
    out = tmp_path / "zoo"
    load(str(tmp_path / "avg_model.pt"), make_config("tiny")).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["family"] == "ca-dino"
    return out


def test_folder_with_several_checkpoints_or_none(tmp_path):
    torch.save({}, tmp_path / "model_1.pt")
    torch.save({}, tmp_path / "model_2.pt")
    with pytest.raises(CheckpointFormatError, match="several checkpoints \\(model_1.pt, model_2.pt\\)"):
        load(str(tmp_path), make_config("tiny"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointFormatError, match="holds no checkpoint"):
        load(str(empty), make_config("tiny"))


def test_training_checkpoint_takes_the_teacher(tmp_path):
    teacher = wespeaker_state(seed=1)
    student = wespeaker_state(seed=2)
    dino = {**{f"s_model.{k}": v for k, v in student.items()}, **{f"t_model.{k}": v for k, v in teacher.items()},
            "dino_loss_calculator.center": torch.zeros(1, 512)}
    torch.save({"model": dino, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "model_150.pt")
    _same(load(str(tmp_path / "model_150.pt"), make_config("tiny")), teacher)


def test_parametrizations_spelling_is_accepted(tmp_path):
    state = wespeaker_state()
    renamed = {k.replace("last_layer.weight_g", "last_layer.parametrizations.weight.original0")
                .replace("last_layer.weight_v", "last_layer.parametrizations.weight.original1"): v
               for k, v in state.items()}
    torch.save(renamed, tmp_path / "new.pt")
    _same(load(str(tmp_path / "new.pt"), make_config("tiny")), state)


def test_wrong_checkpoints_fail_with_key_lists(tmp_path):
    state = wespeaker_state()
    truncated = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    torch.save(truncated, tmp_path / "truncated.pt")
    with pytest.raises(CheckpointKeysError) as info:
        load(str(tmp_path / "truncated.pt"), make_config("tiny"))
    assert "layer4.se_res2block.0.conv.weight" in info.value.missing and info.value.unexpected == []
    resnet = {"front.conv1.weight": torch.zeros(32, 1, 3, 3), "front.bn1.weight": torch.zeros(32)}
    torch.save(resnet, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointKeysError) as info:
        load(str(tmp_path / "resnet.pt"), make_config("tiny"))
    message = str(info.value)
    assert info.value.unexpected == ["front.bn1.weight", "front.conv1.weight"]
    assert "layer1.conv.weight" in info.value.missing and "ResNet" in message
    stray = {**state, "extra.weight": torch.zeros(1)}
    torch.save(stray, tmp_path / "stray.pt")
    with pytest.raises(CheckpointKeysError) as info:
        load(str(tmp_path / "stray.pt"), make_config("tiny"))
    assert info.value.unexpected == ["extra.weight"] and info.value.missing == []


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": object()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointFormatError, match="tensor-only"):
        load(str(tmp_path / "evil.pt"), make_config("tiny"))


def test_zoo_convert_needs_no_size(tmp_path, capsys):
    import zoo
    from zoo.cli import main

    state = wespeaker_state(channels=48, scale=4, cat_out=144, pool_bottleneck=24, se_bottleneck=8, emb_bn=False,
                            head=None, classes=7)
    torch.save(state, tmp_path / "avg_model.pt")
    assert main(["convert", "ca-dino", str(tmp_path / "avg_model.pt"), str(tmp_path / "out")]) == 0
    model = zoo.load(str(tmp_path / "out"))
    _same(model, {k: v for k, v in state.items() if k != "projection.weight"})


def test_zoo_convert_takes_a_hub_snapshot_folder(tmp_path):
    import zoo
    from zoo.cli import main

    folder = tmp_path / "wespeaker-voxceleb-ecapa-tdnn512"
    folder.mkdir()
    state = wespeaker_state(emb_bn=False, head=None, classes=30)
    torch.save(state, folder / "avg_model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "ECAPA_TDNN_GLOB_c32",
                                                        "model_args": {"feat_dim": 80, "embed_dim": 192}}))
    assert main(["convert", "ca-dino", str(folder), str(tmp_path / "out")]) == 0
    _same(zoo.load(str(tmp_path / "out")), {k: v for k, v in state.items() if k != "projection.weight"})


def test_global_cmvn_is_read_from_the_tensors(tmp_path):
    torch.manual_seed(0)
    trained = build(make_config("tiny", fbank={"global_cmvn": True})).eval()
    trained.global_cmvn.mean.copy_(torch.linspace(10, 18, 80))
    trained.global_cmvn.istd.fill_(0.25)
    state = trained.state_dict()
    assert architecture_from_state_dict(state)["global_cmvn"] is True
    torch.save(state, tmp_path / "model.pt")
    model = load(str(tmp_path / "model.pt"), make_config("tiny"))  # the config says False; the buffers win
    assert model.config["fbank"]["global_cmvn"] is True
    _same(model, state)
    assert architecture_from_state_dict(wespeaker_state())["global_cmvn"] is False
