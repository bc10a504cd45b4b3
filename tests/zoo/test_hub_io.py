"""Push, pull, revisions, offline mode and corrupt downloads, through the loopback Hub."""
import io
import json
import os
from pathlib import Path

import pytest
import torch

import zoo
from zoo.cards import add_card, remove_card
from zoo.cli import main
from zoo.data import read_manifest
from zoo.errors import CheckpointFormatError, HubError, WeightsNotAvailableError
from zoo.testing.toy_family import ToyModel, register


def _toy(seed: int) -> ToyModel:
    register()
    torch.manual_seed(seed)
    return ToyModel({"dim": 8, "hidden": 16, "num_classes": 3}).eval()


def _same(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_push_then_load_is_identical(loopback_hub):
    model = _toy(0)
    model.push_to_hub("alice/toy")
    loaded = zoo.load("hf-hub:alice/toy")
    assert _same(model, loaded)
    x = torch.randn(2, 8)
    assert torch.equal(model(x), loaded(x))
    readme = Path(zoo.hub.download_file("alice/toy", "README.md")).read_text()
    assert "library_name: zoo" in readme


def test_revisions_pin(loopback_hub):
    first, second = _toy(0), _toy(1)
    commit_v1 = first.push_to_hub("alice/toy")
    second.push_to_hub("alice/toy", revision="dev")
    third = _toy(2)
    third.push_to_hub("alice/toy")
    assert _same(zoo.load(f"hf-hub:alice/toy@{commit_v1}"), first)
    assert _same(zoo.load("hf-hub:alice/toy@dev"), second)
    assert _same(zoo.load("hf-hub:alice/toy", revision="dev"), second)
    assert _same(zoo.load("hf-hub:alice/toy"), third)
    with pytest.raises(WeightsNotAvailableError, match="Revision 'nope' not found"):
        zoo.load("hf-hub:alice/toy@nope")


def test_offline_warm_cache_and_cold_cache(loopback_hub, hub_offline_factory):
    model = _toy(0)
    model.push_to_hub("alice/toy")
    zoo.load("hf-hub:alice/toy")  # warms the cache
    with hub_offline_factory():
        before = loopback_hub.request_count
        assert _same(zoo.load("hf-hub:alice/toy"), model)
        assert loopback_hub.request_count == before
        with pytest.raises(WeightsNotAvailableError, match="pretrained=False"):
            zoo.load("hf-hub:alice/never-downloaded")


def test_local_files_only_cold_cache(loopback_hub):
    _toy(0).push_to_hub("alice/toy")
    with pytest.raises(WeightsNotAvailableError, match="not in the local cache"):
        zoo.load("hf-hub:alice/toy", local_files_only=True)


def test_corrupt_download_is_reported_then_fetched_again(loopback_hub):
    model = _toy(0)
    model.push_to_hub("alice/toy")
    path = Path(zoo.hub.download_file("alice/toy", "model.safetensors"))
    blob = path.resolve()
    blob.write_bytes(blob.read_bytes()[:40])  # an interrupted download left half a file
    with pytest.raises(CheckpointFormatError, match="corrupt or truncated.*downloads it afresh"):
        zoo.load("hf-hub:alice/toy")
    assert _same(zoo.load("hf-hub:alice/toy"), model)


def test_card_with_official_weights_loads_from_upstream_repo(loopback_hub, tmp_path):
    model = _toy(3)
    buffer = io.BytesIO()
    torch.save({f"net.{k}": v for k, v in model.state_dict().items()}, buffer)
    loopback_hub.add_file("upstream/toy-weights", "toy.pt", buffer.getvalue())
    add_card({"name": "toy-official", "family": "toy", "size": "tiny", "description": "toy",
              "weights": {"repo_id": "upstream/toy-weights", "filename": "toy.pt", "format": "official"}})
    try:
        loaded = zoo.load("toy-official")
        assert _same(loaded, model) and loaded.card_name == "toy-official"
        folder = loaded.save_pretrained(tmp_path / "converted")
        readme = (folder / "README.md").read_text()
        assert "base_model: upstream/toy-weights" in readme and json.loads(
            (folder / "config.json").read_text())["card"] == "toy-official"
    finally:
        remove_card("toy-official")


def test_push_without_token_is_refused(loopback_hub, monkeypatch):
    model = _toy(0)
    with pytest.raises(HubError, match="Not allowed to write"):
        model.push_to_hub("alice/toy", token="wrong-token")


def test_cli_push_and_pull(loopback_hub, tmp_path, capsys):
    model = _toy(0)
    folder = model.save_pretrained(tmp_path / "final")
    assert main(["push", str(folder), "alice/cli-toy"]) == 0
    assert main(["pull", "alice/cli-toy", "--to", str(tmp_path / "pulled")]) == 0
    assert _same(zoo.load(str(tmp_path / "pulled")), model)
    assert main(["pull", "alice/cli-toy", "--to", str(tmp_path / "pulled")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["pull", "alice/missing"]) == 2


def test_unreachable_hub_fails_at_once_without_retries(hf_sandbox, caplog, tmp_path):
    """hf_sandbox points the client at a closed port: a cold cache must fail after one request, not
    after huggingface_hub's five retries ("Retrying in 1s ... 8s")."""
    register()
    add_card({"name": "toy-upstream", "family": "toy", "size": "tiny", "description": "toy",
              "weights": {"repo_id": "upstream/toy-weights", "filename": "toy.pt", "format": "official"}})
    try:
        with caplog.at_level("INFO"):
            with pytest.raises(WeightsNotAvailableError) as info:
                zoo.load("toy-upstream")
            assert "no connection to http://127.0.0.1:9" in str(info.value)
            assert "pretrained=False" in str(info.value)  # the Python API names its own argument
            with pytest.raises(WeightsNotAvailableError, match="no connection"):
                zoo.load("hf-hub:alice/toy")
        assert "Retrying" not in caplog.text
    finally:
        remove_card("toy-upstream")


def test_cli_hint_names_the_verbs_flags_not_python_arguments(tmp_path):
    """A fresh `zoo segment` process (nothing of huggingface_hub imported beforehand) with no connection."""
    import subprocess
    import sys

    from zoo.data import demo_corpus

    clip = read_manifest(demo_corpus())[0]["path"]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "segment", clip, "--model", "sylber-base"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert err.startswith("error: cheoljun95/sylber/sylber.ckpt is not in the local cache") and err.count("\n") == 1
    assert "no connection to http://127.0.0.1:9" in err
    assert "--model DIR" in err and "--random-init" in err and "pretrained=False" not in err
    assert "Retrying" not in err


def test_cli_push_and_pull_reject_invalid_repo_ids_in_one_line(loopback_hub, tmp_path, capsys):
    """huggingface_hub raises its own HFValidationError (not a zoo error): it used to escape as a traceback."""
    folder = _toy(0).save_pretrained(tmp_path / "final")
    assert main(["push", str(folder), "bad repo id"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'bad repo id' is not a Hub repo id") and err.count("\n") == 1
    assert main(["pull", "bad id", "--to", str(tmp_path / "pulled")]) == 2
    assert capsys.readouterr().err.startswith("error: 'bad id' is not a Hub repo id")
    assert not (tmp_path / "pulled").exists()


def test_push_without_a_connection_is_one_hub_error(hf_sandbox, tmp_path, capsys):
    """hf_sandbox points the client at a closed port: `zoo push` used to die with httpx's ConnectError."""
    folder = _toy(0).save_pretrained(tmp_path / "final")
    assert main(["push", str(folder), "alice/toy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Push to 'alice/toy' failed: no connection to http://127.0.0.1:9")
    assert err.count("\n") == 1
    with pytest.raises(WeightsNotAvailableError, match="no connection") as info:
        zoo.hub.pull("alice/toy", to=tmp_path / "pulled")
    assert "Run `zoo pull` again" in str(info.value)
    assert not (tmp_path / "pulled").exists()


def test_model_info_of_a_hub_repo_reads_only_its_config(loopback_hub):
    _toy(0).push_to_hub("alice/info-toy")
    info = zoo.model_info("hf-hub:alice/info-toy")
    assert (info["family"], info["config"]["hidden"], info["pretrained"]) == ("toy", 16, True)
    assert [r.path for r in loopback_hub.requests if "/resolve/" in r.path and r.method == "GET"] == \
        ["/alice/info-toy/resolve/main/config.json"]  # no weights downloaded
