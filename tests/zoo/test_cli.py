import json
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.cards import add_card, remove_card
from zoo.cli import main
from zoo.testing.toy_family import ToyModel, register


@pytest.fixture()
def toy_card():
    register()
    card = add_card({"name": "toy-tiny", "family": "toy", "size": "tiny", "description": "toy"})
    yield card
    remove_card(card.name)


def test_list_and_markdown(toy_card, capsys):
    assert main(["list", "toy*"]) == 0
    out = capsys.readouterr().out
    assert "toy-tiny" in out and "test" in out
    assert main(["list", "toy*", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| name | family | modality | weights | source |"
    assert lines[2] == "| `toy-tiny` | toy | test | no | - |"
    assert main(["list", "toy*", "--modality", "vision"]) == 0
    assert "toy-tiny" not in capsys.readouterr().out  # test families never pose as a real modality


def test_info_prints_card_and_config(toy_card, capsys):
    assert main(["info", "toy-tiny"]) == 0
    out = capsys.readouterr().out
    assert "family: toy" in out and "num_classes: 3" in out


def test_user_error_is_one_line_and_nonzero(capsys):
    assert main(["info", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown model name 'no-such-model'") and "Traceback" not in err


def test_convert_official_checkpoint(toy_card, tmp_path, capsys):
    torch.manual_seed(0)
    model = ToyModel({"dim": 8, "hidden": 16, "num_classes": 3})
    torch.save({f"net.{k}": v for k, v in model.state_dict().items()}, tmp_path / "official.pt")
    assert main(["convert", "toy", str(tmp_path / "official.pt"), str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["family"] == "toy" and meta["config"]["hidden"] == 16
    # a second conversion into the same folder needs --overwrite
    assert main(["convert", "toy", str(tmp_path / "official.pt"), str(tmp_path / "out")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_convert_takes_overrides_anywhere_and_folders(toy_card, tmp_path, capsys):
    torch.manual_seed(0)
    model = ToyModel({"dim": 8, "hidden": 32, "num_classes": 3})
    (tmp_path / "snapshot").mkdir()
    torch.save({f"net.{k}": v for k, v in model.state_dict().items()}, tmp_path / "snapshot" / "toy.pt")
    source = str(tmp_path / "snapshot" / "toy.pt")
    for index, argv in enumerate([
            [source, "out", "--size", "small", "num_classes=3", "--overwrite"],
            ["num_classes=3", source, "out", "--size", "small"],
            [source, "--size", "tiny", "hidden=32", "out"],
            [source, "out", "--overwrite", "hidden=32"],
            [str(tmp_path / "snapshot"), "out", "--size", "small"]]):  # a folder goes to the family loader
        out = tmp_path / f"out{index}"
        argv = [str(out) if word == "out" else word for word in argv]
        assert main(["convert", "toy", *argv]) == 0, capsys.readouterr().err
        meta = json.loads((out / "config.json").read_text())
        assert meta["config"]["hidden"] == 32 and meta["config"]["num_classes"] == 3
        assert torch.equal(zoo.load(str(out)).encoder.weight, model.encoder.weight)
    assert main(["convert", "toy", source, str(tmp_path / "bad"), "hiden=32"]) == 2
    assert "Unknown config key 'hiden' in command-line overrides" in capsys.readouterr().err
    assert main(["convert", "toy", str(tmp_path / "nowhere.pt"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_split_overrides_keeps_paths_and_option_values(tmp_path):
    from zoo.cli import split_overrides

    odd = tmp_path / "a=b.pt"
    odd.write_bytes(b"")
    words = ["--size", "tiny", str(odd), "head.enabled=false", "--data", "x=y.jsonl", "optim.lr=3e-4"]
    assert split_overrides(words) == (["--size", "tiny", str(odd), "--data", "x=y.jsonl"],
                                      ["head.enabled=false", "optim.lr=3e-4"])
    assert split_overrides(["--overwrite", "a.b=1", "--data", "c=d"], {"--overwrite"}) == (
        ["--overwrite", "--data", "c=d"], ["a.b=1"])


def test_convert_reports_bad_keys(toy_card, tmp_path, capsys):
    model = ToyModel({"dim": 8, "hidden": 16, "num_classes": 3})
    state = {f"net.{k}": v for k, v in model.state_dict().items() if k != "codebook"}
    torch.save(state, tmp_path / "official.pt")
    assert main(["convert", "toy", str(tmp_path / "official.pt"), str(tmp_path / "out")]) == 2
    assert "missing keys (1): codebook" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for verb in ("list", "info", "train", "eval", "push", "pull", "convert", "zoo segment"):
        assert verb in result.stdout


def test_a_closed_output_pipe_ends_quietly():
    """`zoo list | head -3` used to end in a BrokenPipeError traceback."""
    process = subprocess.Popen([sys.executable, "-m", "zoo.cli", "list"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # the reader is gone before zoo writes its first line
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141, err
    assert err == ""


@pytest.mark.parametrize("argv", [["list"], ["list", "--markdown"], ["info", "sylber-tiny"], ["--help"],
                                  ["convert", "--help"], ["train", "--help"]])
def test_list_info_and_help_do_not_import_torch(argv):
    """These read only cards and the registry; importing torch would cost seconds on every call."""
    code = ("import sys\nfrom zoo.cli import main\n"
            f"try:\n    code = main({argv!r})\nexcept SystemExit as exit:\n    code = exit.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'numpy', 'safetensors', 'huggingface_hub') "
            "if m in sys.modules)\n"
            "print('HEAVY', heavy)\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("HEAVY []"), result.stdout[-500:]


def test_eval_demo_is_the_familys_own_demo_data(toy_card, capsys):
    """`zoo eval` used to replace --data demo by the speech corpus for every model, vision ones included."""
    assert main(["eval", "toy-tiny", "--random-init", "--data", "demo", "threshold=0.5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"data": "demo", "options": {"threshold": 0.5}, "output": None}
    assert main(["eval", "toy-tiny", "--random-init", "--data", "absent.jsonl"]) == 2
    assert "--data 'absent.jsonl' does not exist" in capsys.readouterr().err


def test_info_of_a_folder_shows_its_config(toy_card, tmp_path, capsys):
    """`zoo info FOLDER` used to say "Unknown model name ... use a path for a local folder" for a path."""
    import yaml

    register()
    folder = zoo.load("toy-tiny", pretrained=False, hidden=4).save_pretrained(tmp_path / "mine")
    assert main(["info", str(folder)]) == 0
    info = yaml.safe_load(capsys.readouterr().out)
    assert info["family"] == "toy" and info["card"] == "toy-tiny" and info["modality"] == "test"
    assert info["config"] == {"dim": 8, "hidden": 4, "num_classes": 3, "size": "tiny"}
    assert main(["info", str(tmp_path / "absent")]) == 2
    assert "No folder at" in capsys.readouterr().err


@pytest.mark.parametrize("verb, named", [("convert", "family, src, dst"), ("eval", "name, --data"),
                                         ("train", "FAMILY|NAME")])
def test_missing_arguments_do_not_ask_for_the_optional_key_values(verb, named, capsys):
    """argparse used to list the key=value options among the required arguments ("... dst, options")."""
    with pytest.raises(SystemExit) as info:
        main([verb])
    assert info.value.code == 2
    assert capsys.readouterr().err.rstrip().endswith(f"the following arguments are required: {named}")
