"""A two-layer toy family for testing the registry, cards, Hub I/O and the CLI without a real model.

It registers under the test modality (``zoo.registry.TEST_MODALITY``), never under a real one, so
``zoo list --modality vision`` stays truthful while tests run.
"""
from __future__ import annotations

from pathlib import Path

import torch

from zoo.model import ZooModel
from zoo.registry import TEST_MODALITY, Family, get_family, register_family

DEFAULT_CONFIG = {"dim": 8, "hidden": 16, "num_classes": 3}
OFFICIAL_FILENAME = "toy.pt"


class ToyModel(ZooModel):
    """``classifier(tanh(encoder(x)))``: ``x`` [B, dim] float -> logits [B, num_classes].

    Holds a ``codebook`` buffer [2, hidden] so that buffers travel through every save/load path.
    ``classifier.`` is a head: overriding ``num_classes`` re-initialises it when loading weights.
    """

    family = "toy"
    head_keys = ("classifier.",)

    def __init__(self, config: dict):
        super().__init__(config)
        self.encoder = torch.nn.Linear(config["dim"], config["hidden"])
        self.classifier = torch.nn.Linear(config["hidden"], config["num_classes"])
        self.register_buffer("codebook", torch.zeros(2, config["hidden"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, dim] float -> logits [B, num_classes]."""
        return self.classifier(torch.tanh(self.encoder(x)))


def build(config: dict) -> ToyModel:
    """A random-init ToyModel from a complete config."""
    return ToyModel(config)


def load_official(path: str, config: dict) -> ToyModel:
    """The toy 'official' format: a torch.save'd dict whose keys carry a ``net.`` prefix.

    ``path`` is the file, or a folder holding ``toy.pt`` (as a Hub snapshot would).
    """
    from zoo.hub import load_state_dict_strict

    file = Path(path) / OFFICIAL_FILENAME if Path(path).is_dir() else Path(path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    model = ToyModel(config)
    load_state_dict_strict(model, {k.removeprefix("net."): v for k, v in state.items()}, str(path))
    return model


def evaluate(model, *, data, output=None, **options) -> dict:
    """The toy family's ``zoo eval``: reports what it was given (``data`` as a string, the ``options``)."""
    return {"data": str(data), "options": options, "output": output}


def register() -> Family:
    """Register the toy family (once; later calls return the registered one)."""
    try:
        family = get_family("toy")
        if family.build is build:
            return family
    except KeyError:
        pass
    return register_family(Family(
        name="toy", modality=TEST_MODALITY, build=build, load=load_official,
        evaluate="zoo.testing.toy_family:evaluate",
        sizes={"tiny": dict(DEFAULT_CONFIG), "small": {**DEFAULT_CONFIG, "hidden": 32}},
        description="A toy family used by zoo's own tests.",
    ))
