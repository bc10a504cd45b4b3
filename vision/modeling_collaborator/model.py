"""CollaboratorClassifier: a light head on frozen open_clip image embeddings, with its concept.

``clf(images) -> FloatTensor[B]`` probabilities that each image shows the concept;
``clf.predict(folder)`` labels every image of a folder or manifest at ``config["threshold"]``.
The concept (name, description, version) is part of the config, so a saved or pushed classifier
says what it was trained to recognise.
"""
from __future__ import annotations

import os

import torch

from zoo.errors import ConfigError
from zoo.model import ZooModel, inference

__all__ = ["Head", "CollaboratorClassifier"]

HEAD_TYPES = ("linear", "mlp")


class Head(torch.nn.Module):
    """Embedding ``[B, D]`` -> logit ``[B]``: inputs are standardised with the ``mean`` / ``scale``
    buffers (set from the training embeddings), then a linear layer, or an MLP
    ``Linear(D, hidden) -> GELU -> Dropout -> Linear(hidden, 1)``."""

    def __init__(self, dim: int, kind: str = "mlp", hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        if kind not in HEAD_TYPES:
            raise ConfigError(f"head.type must be one of {', '.join(HEAD_TYPES)}, got {kind!r}.")
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        if kind == "linear":
            self.net = torch.nn.Linear(dim, 1)
        else:
            self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                           torch.nn.Linear(hidden, 1))

    def set_statistics(self, embeddings: torch.Tensor) -> None:
        """Standardise inputs with the mean and 1/std (floored at 1e-6) of ``embeddings [N, D]``."""
        embeddings = embeddings.float()
        self.mean.copy_(embeddings.mean(0))
        self.scale.copy_(1.0 / embeddings.std(0, unbiased=False).clamp_min(1e-6))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net((embeddings - self.mean) * self.scale).squeeze(-1)


class CollaboratorClassifier(ZooModel):
    """The distilled concept classifier (see ``zoo.vision.modeling_collaborator.builder`` for the config).

    ``backbone``: the frozen image-text embedder (a ``clip`` family model): a submodule whose
    weights are saved when ``backbone.source`` is ``bundled``; built by open_clip on first use
    (weights fetched at run time, never saved) when it is ``open_clip``.
    """

    family = "collaborator"

    def __init__(self, config: dict):
        super().__init__(config)
        head = config["head"]
        self.head = Head(int(config["embed_dim"]), head.get("type", "mlp"), int(head.get("hidden", 256)),
                         float(head.get("dropout", 0.0)))
        source = config["backbone"].get("source")
        if source not in ("open_clip", "bundled"):
            raise ConfigError(f"backbone.source must be open_clip or bundled, got {source!r}.")
        from zoo.registry import get_family

        backbone = self.config["backbone"]
        settings = dict(backbone.get("clip") or {})
        size = settings.pop("size", None) or backbone.get("size")
        if source == "open_clip":
            if not backbone.get("open_clip_model"):
                raise ConfigError("backbone.source=open_clip needs backbone.open_clip_model (e.g. ViT-B-32) and "
                                  "backbone.open_clip_pretrained (e.g. laion2b_s34b_b79k).")
            settings["open_clip"] = {"model_name": backbone["open_clip_model"],
                                     "pretrained": backbone.get("open_clip_pretrained")}
        # the whole clip config is saved with the classifier, so it never depends on later defaults
        backbone["clip"] = get_family("clip").make_config(size, settings, source="backbone.clip")
        self._lazy_backbone = None
        if source == "bundled":
            self.backbone = self._build_backbone()
            self.backbone.requires_grad_(False)

    def _build_backbone(self):
        from zoo.registry import get_family

        model = get_family("clip").build(self.config["backbone"]["clip"])
        dim = getattr(model, "embed_dim", None)
        if dim is not None and int(dim) != int(self.config["embed_dim"]):
            raise ConfigError(f"embed_dim is {self.config['embed_dim']} but the backbone embeds in {dim} dimensions; "
                              f"set embed_dim={dim}.")
        return model.eval()

    @property
    def embedder(self):
        """The frozen backbone (built on first use for ``backbone.source: open_clip``)."""
        if self.config["backbone"]["source"] == "bundled":
            return self.backbone
        if self._lazy_backbone is None:
            self._lazy_backbone = self._build_backbone().to(self.device)
        return self._lazy_backbone

    def embedder_id(self) -> str:
        """What the embeddings depend on: the open_clip name and tag, or a digest of the bundled
        weights, plus the preprocessing (the embedding cache's key)."""
        import json

        clip = self.config["backbone"].get("clip") or {}
        preprocess = json.dumps(clip.get("preprocess_cfg", {}), sort_keys=True)
        if self.config["backbone"]["source"] == "open_clip":
            backbone = self.config["backbone"]
            return f"open_clip:{backbone['open_clip_model']}:{backbone.get('open_clip_pretrained')}:{preprocess}"
        return f"bundled-clip:{self.backbone.weights_digest()}:{preprocess}"

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    @property
    def concept(self) -> dict:
        """``{"name", "description", "positive", "negative", "version"}`` of the concept it recognises."""
        return dict(self.config["concept"])

    # ------------------------------------------------------------------ forward
    def embed(self, images, batch_size: int = 64) -> torch.Tensor:
        """Backbone embeddings ``FloatTensor[B, D]`` of images (paths, PIL images, arrays)."""
        return self.embedder.encode_image(images, batch_size=batch_size)

    def forward(self, images=None, *, embeddings: torch.Tensor | None = None, return_logits: bool = False):
        """Probabilities ``FloatTensor[B]`` in [0, 1] that each image shows the concept.

        images: one image or a list (anything ``zoo.image.load_image`` reads); or embeddings:
        precomputed backbone embeddings ``[B, D]``. return_logits: the head's logits instead.
        """
        if (images is None) == (embeddings is None):
            raise ConfigError("call the classifier with images or embeddings= (one of them).")
        if embeddings is None:
            embeddings = self.embed(images)
        logits = self.head(embeddings.to(self.head.mean.device, torch.float32))
        return logits if return_logits else torch.sigmoid(logits)

    @inference
    def predict_proba(self, images, batch_size: int = 64) -> torch.Tensor:
        """Probabilities ``FloatTensor[B]`` (no gradients, eval mode)."""
        return torch.sigmoid(self.head(self.embed(images, batch_size=batch_size).to(self.head.mean.device)))

    @inference
    def predict(self, source, *, batch_size: int = 64, threshold: float | None = None) -> list[dict]:
        """Label every image of ``source`` (a folder, a JSONL manifest, or a list of paths).

        Returns one row per image, in order: ``{"path", "id", "probability", "label"}`` with
        ``label`` True at ``probability >= threshold`` (default ``config["threshold"]``); an image
        that cannot be read keeps its row with ``probability``/``label`` None and an ``error``.
        """
        from zoo.vision.modeling_collaborator.embeddings import embed_files, list_images

        if isinstance(source, (str, os.PathLike)):
            rows = list_images(source)
        else:
            rows = [{"path": str(p), "id": os.path.splitext(os.path.basename(str(p)))[0]} for p in source]
        cut = self.threshold if threshold is None else float(threshold)
        vectors, kept, errors = embed_files(self.embedder, [r["path"] for r in rows], batch_size=batch_size)
        out = [{"path": r["path"], "id": r["id"], "probability": None, "label": None} for r in rows]
        if len(kept):
            probabilities = torch.sigmoid(self.head(vectors.to(self.head.mean.device))).cpu().tolist()
            for index, probability in zip(kept, probabilities):
                out[index].update(probability=float(probability), label=bool(probability >= cut))
        for error in errors:
            out[error["index"]]["error"] = error["error"]
        return out
