"""A tiny regression trainer for the engine's own tests (no family needed).

``ToyRegressor`` is an MLP with dropout on a synthetic linear problem; the dataset adds random
input noise in ``__getitem__`` from the global torch RNG and the trainer keeps its own generator,
so exact resume is only bit-identical when RNG states, data position and trainer state are all
restored. Recipe: ``trainer: zoo.train.toy:ToyTrainer``.
"""
from __future__ import annotations


import torch

from zoo.model import ZooModel
from zoo.registry import TEST_MODALITY, Family, register_family
from zoo.train.trainer import Trainer


class ToyRegressor(ZooModel):
    """MLP ``in_dim -> hidden (tanh, dropout) -> 1``: ``x`` [B, in_dim] -> predictions [B]."""
    family = "toy-regression"

    def __init__(self, config: dict):
        super().__init__(config)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(config["in_dim"], config["hidden"]), torch.nn.Tanh(),
            torch.nn.Dropout(config["dropout"]), torch.nn.Linear(config["hidden"], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, in_dim] float -> [B]."""
        return self.net(x).squeeze(-1)


class ToyDataset(torch.utils.data.Dataset):
    """Items ``{"x": [in_dim], "y": scalar, "index": int}``; ``augment`` adds Gaussian noise to ``x`` from the
    global torch RNG (so exact resume must restore it).
    """
    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: float = 0.0):
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        x = self.x[index]
        if self.augment:
            x = x + self.augment * torch.randn(x.shape)  # global RNG: restored by exact resume
        return {"x": x, "y": self.y[index], "index": index}


def synthetic(n: int, in_dim: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` inputs [n, in_dim] ~ N(0, 1) and targets ``x @ linspace(-1, 1) + noise * N(0, 1)``, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.linspace(-1.0, 1.0, in_dim)
    x = torch.randn(n, in_dim, generator=generator)
    return x, x @ weight + noise * torch.randn(n, generator=generator)


class ToyTrainer(Trainer):
    """The engine's test trainer: mean-squared error on :func:`synthetic` data (or rows of ``data.file``), a
    trainer RNG (``toy.jitter``) and counters in its state, and ``toy.step_seconds`` to slow steps down.
    """
    config_defaults = {
        "model": {"in_dim": 4, "hidden": 16, "dropout": 0.1},
        "data": {"file": None, "train_size": 64, "eval_size": 16, "noise": 0.01, "augment": 0.05, "seed": 1234},
        # jitter: scale of trainer-RNG noise on the loss (exercises trainer state_dict);
        # step_seconds: sleep per step, so that tests can stop or lock a run while it trains.
        "toy": {"jitter": 0.0, "step_seconds": 0.0},
    }
    path_keys = ("data.file",)

    def __init__(self, config: dict):
        super().__init__(config)
        self.generator = torch.Generator().manual_seed(int(config["train"]["seed"] or 0) + 17)
        self.steps_seen = 0
        self.epochs_started: list[int] = []

    def build_model(self) -> ToyRegressor:
        """A :class:`ToyRegressor` from ``config["model"]``."""
        return ToyRegressor(dict(self.config["model"]))

    def build_datasets(self):
        """(training set, evaluation set): synthetic, or the JSONL rows of ``data.file`` for training."""
        data, in_dim = self.config["data"], self.config["model"]["in_dim"]
        if data["file"]:
            from zoo.data import read_jsonl

            rows = read_jsonl(data["file"], what="data.file")
            x = torch.tensor([row["x"] for row in rows], dtype=torch.float32)
            y = torch.tensor([row["y"] for row in rows], dtype=torch.float32)
        else:
            x, y = synthetic(data["train_size"], in_dim, data["noise"], data["seed"])
        ex, ey = synthetic(data["eval_size"], in_dim, data["noise"], data["seed"] + 1)
        self.eval_set = ToyDataset(ex, ey)
        return ToyDataset(x, y, augment=float(data["augment"])), self.eval_set

    def training_step(self, model, batch) -> dict:
        """``{"loss": MSE (times 1 + jitter * u), "mae": mean absolute error}`` of one batch."""
        if self.config["toy"]["step_seconds"]:
            import time

            time.sleep(float(self.config["toy"]["step_seconds"]))
        prediction = model(batch["x"])
        loss = torch.nn.functional.mse_loss(prediction, batch["y"])
        jitter = float(self.config["toy"]["jitter"])
        if jitter:
            loss = loss * (1 + jitter * torch.rand((), generator=self.generator))
        return {"loss": loss, "mae": (prediction - batch["y"]).abs().mean().detach()}

    def on_epoch_start(self, model, epoch: int) -> None:
        """Record the epoch (tests check that resume does not call it twice)."""
        self.epochs_started.append(epoch)

    def on_step_end(self, model, step: int) -> None:
        """Count the optimizer steps (restored on resume through :meth:`state_dict`)."""
        self.steps_seen += 1

    def evaluate(self, model) -> dict:
        """``{"mse": ...}`` on the evaluation set."""
        prediction = model(self.eval_set.x.to(model.device))
        return {"mse": torch.nn.functional.mse_loss(prediction, self.eval_set.y.to(model.device)).item()}

    def state_dict(self) -> dict:
        """The trainer RNG state and the counters."""
        return {"generator": self.generator.get_state(), "steps_seen": self.steps_seen,
                "epochs_started": list(self.epochs_started)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s values."""
        self.generator.set_state(state["generator"])
        self.steps_seen = int(state["steps_seen"])
        self.epochs_started = list(state["epochs_started"])


# Registered so that save_pretrained / zoo.load / `zoo train toy-regression` work once this module is imported.
FAMILY = register_family(Family(
    name="toy-regression", modality=TEST_MODALITY, build=ToyRegressor,
    sizes={"tiny": dict(ToyTrainer.config_defaults["model"])}, trainer="zoo.train.toy:ToyTrainer",
    description="A tiny MLP regressor used by the training engine's own tests."))
