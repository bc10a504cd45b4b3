"""Step 5: distillation. The auto-labels train a light head on frozen embeddings, class-balanced
(Modeling Collaborator, arXiv 2403.02626: the expensive LLM/VQA annotator is distilled into a
classifier that is cheap to run on every image).

Every head is trained by the zoo engine with :class:`HeadTrainer`: the active-learning rounds'
heads by :func:`fit_head` (a nested ``zoo.train.run`` into the step's folder), the final one by
``zoo train collaborator`` itself (its trainer subclasses HeadTrainer), so all of them share one
objective: binary cross-entropy on the logits, each example weighted ``N / (2 N_class)`` so both
classes weigh the same however rare positives are (ours; the paper's loss is not public).
After training, the decision threshold is the one with the best F1 on ``threshold_data`` (the
human-reviewed labels when there are any, else the training labels).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError
from zoo.train import Trainer

__all__ = ["class_weights", "EmbeddingSet", "HeadTrainer", "fit_head", "write_head_data", "read_head_data"]

logger = logging.getLogger("zoo.collaborator")


def class_weights(labels) -> np.ndarray:
    """Per-example weights ``N / (2 N_c)`` for binary labels (a class that is absent gets none)."""
    labels = np.asarray(labels).astype(int)
    n = len(labels)
    weights = np.zeros(n, dtype=np.float32)
    for value in (0, 1):
        count = int((labels == value).sum())
        if count:
            weights[labels == value] = n / (2.0 * count)
    return weights


def write_head_data(path, embeddings, labels, *, threshold_embeddings=None, threshold_labels=None) -> Path:
    """Save a head's training set as ``.npz`` (``x`` float32 [N, D], ``y`` float32 [N], and the
    threshold set ``tx``/``ty``, which defaults to the training set)."""
    from zoo.files import atomic_open

    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels, dtype=np.float32)
    tx = x if threshold_embeddings is None else np.asarray(threshold_embeddings, dtype=np.float32)
    ty = y if threshold_labels is None else np.asarray(threshold_labels, dtype=np.float32)
    with atomic_open(path, "wb", encoding=None) as handle:
        np.savez(handle, x=x, y=y, tx=tx, ty=ty)
    return Path(path)


def read_head_data(path) -> dict:
    """The arrays :func:`write_head_data` saved."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in ("x", "y", "tx", "ty")}


class EmbeddingSet(torch.utils.data.Dataset):
    """Items ``{"x": FloatTensor[D], "y": float, "w": class weight}``."""

    def __init__(self, embeddings, labels):
        labels = np.asarray(labels)
        if len(labels) == 0:
            raise ConfigError("no labelled images to train the head on; check the Annotator's report (every label "
                              "unknown?) and the pool.")
        if len(set(labels.astype(int).tolist())) < 2:
            raise ConfigError(f"every training label is {int(labels[0])}: the head needs positives and negatives. "
                              "Mine more images (retrieve.per_query, active.per_round) or check the concept.")
        self.x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        self.y = torch.as_tensor(labels.astype(np.float32))
        self.w = torch.as_tensor(class_weights(labels))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict:
        return {"x": self.x[index], "y": self.y[index], "w": self.w[index]}


class HeadTrainer(Trainer):
    """Trains a CollaboratorClassifier's head on embeddings (``head_data.train``, an ``.npz`` from
    :func:`write_head_data`); the backbone is frozen and never runs."""

    family_name = "collaborator"  # no family registers this class itself (CollaboratorTrainer extends it)
    config_defaults = {
        "model": {"size": "tiny", "init": None, "overrides": {}},
        "head_data": {"train": None},
    }

    def build_model(self):
        """The classifier (``model.init`` or ``model.size``, see ``Trainer.build_model``) with only ``head.`` trainable."""
        model = super().build_model()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("head."))
        self.model_ref = model
        return model

    def head_arrays(self) -> dict:
        """The training arrays (``x``, ``y``, ``tx``, ``ty``); subclasses make them."""
        path = self.config["head_data"]["train"]
        if not path:
            raise ConfigError("head_data.train is not set: give the .npz of embeddings and labels.")
        return read_head_data(path)

    def build_datasets(self):
        arrays = self.head_arrays()
        self.threshold_data = (arrays["tx"], arrays["ty"])
        train = EmbeddingSet(arrays["x"], arrays["y"])
        self.model_ref.head.set_statistics(train.x)
        return train, None

    def training_step(self, model, batch) -> dict:
        logits = model(embeddings=batch["x"], return_logits=True)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["y"], reduction="none")
        loss = (losses * batch["w"]).sum() / batch["w"].sum().clamp_min(1e-8)
        accuracy = ((logits > 0).float() == batch["y"]).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}

    def on_train_end(self, model) -> None:
        from zoo.vision.modeling_collaborator.evaluate import best_threshold

        x, y = self.threshold_data
        with torch.no_grad():
            model.eval()
            probabilities = model(embeddings=torch.as_tensor(x).to(model.device)).cpu().numpy()
            model.train()
        if len(set(np.asarray(y).astype(int).tolist())) == 2:
            model.config["threshold"] = float(best_threshold(y, probabilities))
        logger.info("decision threshold %.3f (best F1 on %d labels)", model.config["threshold"], len(y))


def head_run_config(base: dict, output_dir, init, data_path) -> dict:
    """A nested engine recipe for one head: the outer recipe's optim/schedule/train settings,
    ``model.init`` = ``init`` (a classifier folder), ``head_data.train`` = ``data_path``."""
    train = dict(base.get("train") or {})
    keep = {k: train[k] for k in ("max_steps", "batch_size", "seed", "device", "grad_accum", "clip_grad_norm")
            if k in train}
    keep.update(output_dir=str(output_dir), log_every=max(1, int(keep.get("max_steps", 100)) // 5), ckpt_every=0,
                eval_every=0, tensorboard=False, progress=False, overwrite=True, resume=False, drop_last=False)
    return {"trainer": "zoo.vision.modeling_collaborator.distill:HeadTrainer",
            "model": {"init": str(init), "overrides": {}}, "head_data": {"train": str(data_path)},
            "optim": dict(base.get("optim") or {}), "schedule": dict(base.get("schedule") or {}), "train": keep}


def fit_head(base: dict, output_dir, init, embeddings, labels, *, threshold_embeddings=None,
             threshold_labels=None) -> Path:
    """Train a head with the engine into ``output_dir``; returns the classifier folder
    (``output_dir/final``). ``base`` is the outer recipe (optim, schedule, train)."""
    from zoo.train import run

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data_path = write_head_data(output_dir / "head_data.npz", embeddings, labels,
                                threshold_embeddings=threshold_embeddings, threshold_labels=threshold_labels)
    config = head_run_config(base, output_dir / "run", init, data_path)
    config["train"]["batch_size"] = int(min(int(config["train"].get("batch_size") or 64), len(labels)))
    return Path(run(config))
