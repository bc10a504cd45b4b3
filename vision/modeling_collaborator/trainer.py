"""``zoo train collaborator --config RECIPE concept=CONCEPT.yaml pool=DIR``.

Runs (or resumes) the pipeline of ``pipeline.py`` in ``<train.output_dir>/pipeline`` and then
trains the final head on its labels with the engine; ``<train.output_dir>/final`` is the
classifier (head + backbone reference or bundled backbone + the concept's final version), and
``<train.output_dir>/report.json`` sums up every step. ``force=STEP`` (or ``force=true``) redoes
a step and the later ones; changed settings of a done step are an error naming them.

The review works in two runs: the first writes ``pipeline/review/sheet.csv`` and trains on the
auto-labels; fill a copy of the sheet and run again with ``review.answers=COPY --overwrite``:
the disagreements edit the concept, the images are labelled again with the new version, the
reviewed labels are kept as ground truth, and the decision threshold is the best-F1 one on them.
``review.size=0`` skips the review.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from zoo.errors import ConfigError

from .distill import HeadTrainer
from .toolbox import TOOL_DEFAULTS

__all__ = ["CollaboratorTrainer"]

logger = logging.getLogger("zoo.collaborator")


class CollaboratorTrainer(HeadTrainer):
    """The Modeling Collaborator loop and the final head (see the module docstring)."""

    config_defaults = {
        "concept": None,              # the concept YAML (name, description, ...)
        "pool": None,                 # unlabelled images: a folder or a JSONL manifest
        "force": None,                # true, or a step name: redo it and every later step
        "model": {"size": "vit-b-32", "init": None, "overrides": {},
                  "backbone": None},  # a clip-family model (card, hf-hub:..., folder) to bundle as the backbone
        "tools": TOOL_DEFAULTS,
        "prompts": {"dir": None},     # a folder of prompt templates overriding the bundled ones, file by file
        "embed": {"batch_size": 64, "shard_size": 8192, "cache_dir": None, "progress": False},
        "decompose": {"max_questions": 12},
        "queries": {"positive": 8, "negative": 4},
        "retrieve": {"per_query": 50, "per_negative_query": 25, "max_images": 500},
        "annotate": {"retries": 2, "progress": False},
        "active": {"rounds": 2, "per_round": 100, "strategy": "margin", "seed": 0},
        "review": {"size": 100, "select": "random", "seed": 0, "answers": None, "description": None},
        "head_data": {"train": None},
        # a labelled set smaller than a batch is one short batch, not an error
        "train": {"drop_last": False},
    }
    path_keys = ("concept", "pool", "review.answers")

    def build_model(self):
        model = super().build_model()
        source = self.config["model"].get("backbone")
        if source:
            import zoo

            clip = zoo.load(str(source))
            if clip.family != "clip":
                raise ConfigError(f"model.backbone={source!r} is a {clip.family} model; give a clip-family model "
                                  "(e.g. a folder trained with `zoo train clip`).")
            if model.config["backbone"]["source"] != "bundled":
                raise ConfigError("model.backbone bundles a clip model into the classifier: use it with "
                                  "model.overrides.backbone.source=bundled (e.g. model.size=tiny).")
            if clip.embed_dim != int(model.config["embed_dim"]):
                raise ConfigError(f"model.backbone embeds in {clip.embed_dim} dimensions but the classifier's "
                                  f"embed_dim is {model.config['embed_dim']}; set model.overrides.embed_dim="
                                  f"{clip.embed_dim}.")
            from zoo.registry import get_family

            model.config["backbone"]["clip"] = json.loads(json.dumps(clip.config))
            model.backbone = get_family("clip").build(model.config["backbone"]["clip"]).eval()
            model.backbone.load_state_dict(clip.state_dict())
            model.backbone.requires_grad_(False)
            model.to(self.device)
        return model

    def _concept(self):
        from .concept import load_concept

        if not self.config.get("concept"):
            raise ConfigError("concept is not set: give the concept file, e.g. `zoo train collaborator --config "
                              "RECIPE concept=my_concept.yaml pool=DIR` (see vision/modeling_collaborator/concepts/).")
        if not self.config.get("pool"):
            raise ConfigError("pool is not set: give a folder (or JSONL manifest) of unlabelled images, pool=DIR.")
        return load_concept(self.config["concept"])

    def head_arrays(self) -> dict:
        from .pipeline import CollaboratorPipeline
        from .toolbox import build_llm, build_vqa

        concept = self._concept()
        tools = self.config["tools"]
        self.pipeline = CollaboratorPipeline(Path(self.output_dir) / "pipeline", self.config, self.model_ref,
                                             build_llm(tools["llm"]), build_vqa(tools["vqa"]), concept)
        force = self.config.get("force")
        if isinstance(force, str) and force.lower() in ("true", "false"):
            force = force.lower() == "true"
        outcome = self.pipeline.run(force=force or False)
        records = outcome["records"]
        x, y = self.pipeline.training_arrays(records)
        human = [r for r in records if r["id"] in outcome["human_ids"] and r.get("label") in (0, 1)]
        tx, ty = x, y
        if human and len({r["label"] for r in human}) == 2:
            tx, ty = self.pipeline.training_arrays(human)
        final = outcome["concept"]
        self.model_ref.config["concept"] = {"name": final.name, "description": final.description,
                                            "positive": list(final.positive), "negative": list(final.negative),
                                            "version": final.version}
        self.outcome = {"reviewed": outcome["reviewed"], "human_labels": len(outcome["human_ids"]),
                        "threshold_from": "human-reviewed labels" if tx is not x else "training labels",
                        "training_images": int(len(y)), "training_positives": int(y.sum())}
        return {"x": x, "y": y, "tx": tx, "ty": ty}

    def on_train_end(self, model) -> None:
        super().on_train_end(model)
        from zoo.files import write_json

        records = self.pipeline.pipeline().records()
        report = {"concept": model.config["concept"], "threshold": model.config["threshold"], **self.outcome,
                  "steps": {name: record.get("result") for name, record in records.items()}}
        write_json(Path(self.output_dir) / "report.json", report)
        logger.info("collaborator: %d training images (%d positive), %d human labels, concept v%d, threshold %.3f "
                    "(%s); report in %s", report["training_images"], report["training_positives"],
                    report["human_labels"], report["concept"]["version"], report["threshold"],
                    report["threshold_from"], Path(self.output_dir) / "report.json")
