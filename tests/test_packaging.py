"""Packaging: one `zoo` namespace, cards, recipes and demo data in the wheel; dependencies = imports.

The wheel is built the way a user's `pip install` builds it: `python -m build` in an isolated
environment with the build requirements from pyproject.toml (this needs PyPI, which CI has).
"""
import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"zoo": "zoo", "models": "zoo.models", "speech": "zoo.speech", "vision": "zoo.vision",
          "multimodal": "zoo.multimodal", "hub_cards": "zoo.hub_cards"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# import name -> distribution name (PyPI), for every third-party module the code imports.
DISTRIBUTION = {
    "torch": "torch", "torchaudio": "torchaudio", "transformers": "transformers",
    "huggingface_hub": "huggingface_hub", "safetensors": "safetensors", "soundfile": "soundfile",
    "librosa": "librosa", "xformers": "xformers", "sklearn": "scikit-learn", "scipy": "scipy", "numba": "numba",
    "llvmlite": "llvmlite", "numpy": "numpy", "PIL": "pillow", "yaml": "PyYAML", "tqdm": "tqdm",
    "matplotlib": "matplotlib", "tokenizers": "tokenizers", "peft": "peft", "torchmetrics": "torchmetrics",
    "open_clip": "open_clip_torch", "diffusers": "diffusers", "timm": "timm",
    # optional extras: imported inside the function that needs them, declared under [project.optional-dependencies]
    "segment_anything": "segment-anything", "insightface": "insightface",
    # `from torch.utils.tensorboard import SummaryWriter` needs the tensorboard distribution.
    "torch.utils.tensorboard": "tensorboard",
}
# Imported only by the pytest fixtures zoo.testing ships (installed with the `dev` extra).
DEV_ONLY = {"pytest"}


def _source_packages() -> set[str]:
    found = set()
    for folder, namespace in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([namespace, *relative.parts]))
    return found


def _requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


def _imported_modules() -> set[str]:
    """Top-level third-party modules imported anywhere in the installed source (plus torch.utils.tensorboard)."""
    found = set()
    for folder in MAPPED:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    if name.startswith("torch.utils.tensorboard"):
                        found.add("torch.utils.tensorboard")
                    top = name.split(".")[0]
                    if top != "zoo" and top not in sys.stdlib_module_names and top != "__future__":
                        found.add(top)
    return found


def test_every_package_is_listed_in_pyproject():
    config = PYPROJECT["tool"]["setuptools"]
    assert config["package-dir"] == {v: k for k, v in MAPPED.items()}
    assert set(config["packages"]) == _source_packages()


def test_dependencies_are_exactly_what_the_code_imports():
    imported = _imported_modules() - DEV_ONLY
    unknown = imported - set(DISTRIBUTION)
    assert not unknown, f"imported but not mapped to a distribution (add to pyproject and DISTRIBUTION): {unknown}"
    needed = {DISTRIBUTION[name].lower().replace("_", "-") for name in imported}
    declared = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    optional = {_requirement_name(r) for name, rs in extras.items() if name != "dev" for r in rs}
    assert needed - declared - optional == set(), "imported but not declared in [project] dependencies or an extra"
    assert declared - needed == set(), "declared in [project] dependencies but never imported"
    assert {_requirement_name(r) for r in extras["dev"]} >= DEV_ONLY
    assert {"segment-anything"} <= {_requirement_name(r) for r in extras["sam"]}
    assert {"insightface"} <= {_requirement_name(r) for r in extras["face"]}
    assert {"torchvision", "torch-fidelity"} <= {_requirement_name(r) for r in extras["image-metrics"]}


def test_license_is_declared_and_shipped():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License\n")
    # SPDX license strings need setuptools >= 77 (PEP 639); older ones reject the build.
    (requirement,) = PYPROJECT["build-system"]["requires"]
    assert requirement == "setuptools>=77"


@pytest.mark.slow
def test_isolated_wheel_build_has_namespace_cards_recipes_and_demo_data(tmp_path):
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "Package would be ignored" not in log and "is absent from the `packages` configuration" not in log
    wheel = next(tmp_path.glob("zoo-*.whl"))
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    # one namespace: nothing outside zoo/ except the dist-info
    assert {n.split("/")[0] for n in names} == {"zoo", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for package in _source_packages():
        assert package.replace(".", "/") + "/__init__.py" in names, package
    cards = [n for n in names if n.startswith("zoo/hub_cards/") and n.endswith(".yaml")]
    assert len(cards) == len(list((ROOT / "hub_cards").glob("*.yaml")))
    recipes = {n for n in names if "/recipes/" in n and n.endswith(".yaml")}
    expected = {"zoo/" + str(p.relative_to(ROOT)) for p in ROOT.glob("*/*/recipes/*.yaml")}
    assert recipes == expected
    demo = {n for n in names if n.startswith("zoo/data/demo/")}
    shipped = {"zoo/" + str(p.relative_to(ROOT / "zoo")) for p in (ROOT / "zoo" / "data" / "demo").rglob("*")
               if p.is_file()}
    assert demo == shipped and "zoo/data/demo/speech/manifest.jsonl" in demo
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Provides-Extra: sam" in metadata and "Provides-Extra: image-metrics" in metadata
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "zoo = zoo.cli:main" in entry_points
