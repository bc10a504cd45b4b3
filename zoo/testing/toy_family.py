"""A two-layer toy family for testing the registry, cards and Hub I/O without a real model."""
from __future__ import annotations

import torch

from zoo.model import ZooModel
from zoo.registry import Family, register_family

DEFAULT_CONFIG = {"dim": 8, "hidden": 16, "num_classes": 3}


class ToyModel(ZooModel):
    family = "toy"
    head_keys = ("classifier.",)

    def __init__(self, config: dict):
        super().__init__(config)
        self.encoder = torch.nn.Linear(config["dim"], config["hidden"])
        self.classifier = torch.nn.Linear(config["hidden"], config["num_classes"])
        self.register_buffer("codebook", torch.zeros(2, config["hidden"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.encoder(x)))


def build(config: dict) -> ToyModel:
    return ToyModel(config)


def load_official(path: str, config: dict) -> ToyModel:
    """An 'official' format for tests: a torch.save'd dict whose keys carry a 'net.' prefix."""
    from zoo.hub import load_state_dict_strict

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = ToyModel(config)
    load_state_dict_strict(model, {k.removeprefix("net."): v for k, v in state.items()}, path)
    return model


def register() -> Family:
    return register_family(Family(
        name="toy", modality="vision", build=build, load=load_official,
        sizes={"tiny": dict(DEFAULT_CONFIG), "small": {**DEFAULT_CONFIG, "hidden": 32}},
        description="A toy family used by zoo's own tests.",
    ))
