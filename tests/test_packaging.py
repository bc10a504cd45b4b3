"""The wheel installs everything under the one namespace `zoo`, cards and demo data included."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"zoo": "zoo", "models": "zoo.models", "speech": "zoo.speech", "vision": "zoo.vision",
          "multimodal": "zoo.multimodal", "hub_cards": "zoo.hub_cards"}


def _source_packages() -> set[str]:
    found = set()
    for folder, namespace in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([namespace, *relative.parts]))
    return found


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {v: k for k, v in MAPPED.items()}
    assert set(config["packages"]) == _source_packages()


@pytest.mark.slow
def test_wheel_contains_namespace_cards_and_demo_data(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("zoo-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not any(n.startswith(("models/", "speech/", "vision/", "multimodal/", "hub_cards/")) for n in names)
    for package in _source_packages():
        assert package.replace(".", "/") + "/__init__.py" in names, package
    cards = [n for n in names if n.startswith("zoo/hub_cards/") and n.endswith(".yaml")]
    assert len(cards) == len(list((ROOT / "hub_cards").glob("*.yaml")))
    assert "zoo/data/demo/speech/manifest.jsonl" in names
    recipes = {n for n in names if "/recipes/" in n and n.endswith(".yaml")}
    assert len(recipes) == len(list(ROOT.glob("*/*/recipes/*.yaml")))
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "zoo = zoo.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
