"""The Modeling Collaborator loop as resumable ``zoo.pipeline`` steps in one run folder.

Steps (outputs in the run folder)::

    base          base/                    the untrained classifier (backbone + head init) every head starts from
    decompose     decompose/v1.json        attributes and questions (LLM)
    queries       queries.json             search queries, positive and hard negative (LLM)
    embed         pool/                    pool embeddings (cached on disk), index, skipped images
    retrieve      candidates.jsonl         pool images the queries found
    annotate0     labels/round0.jsonl      Annotator labels of the candidates
    distill0      heads/round0/            head trained on them (engine run; run/final is a classifier)
    annotate<r>   labels/round<r>.jsonl    r = 1..active.rounds: the most uncertain pool images, annotated
    distill<r>    heads/round<r>/          head trained on every label so far
    review_sheet  review/sheet.csv         review.size images for the user to label
    review        review/result.json, concept/v<k>.yaml, decompose/final.json, labels/final.jsonl
                  (only once review.answers names the filled sheet)

A done step is skipped, changed settings are an error naming them, ``force`` redoes a step and
every later one (``zoo.pipeline``). Every LLM/VQA call goes through the run folder's call cache,
so a rerun or a resumed run asks nothing twice; a failing tool stops the step with its error and
the next run resumes from the cache.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError
from zoo.pipeline import Pipeline, Step, StepContext, settings_signature

from . import prompts as prompt_files
from .annotator import Annotation, Annotator
from .concept import Concept, save_concept
from .toolbox import tool_id

__all__ = ["CollaboratorPipeline", "read_annotations"]

logger = logging.getLogger("zoo.collaborator")


def _write_jsonl(path: Path, rows) -> None:
    from zoo.files import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_annotations(path) -> list[Annotation]:
    """The annotations of a ``labels/*.jsonl`` file."""
    return [Annotation.from_dict(row) for row in _read_jsonl(path)]


def _counts(annotations) -> dict:
    return {"images": len(annotations), "positive": sum(a.label == 1 for a in annotations),
            "negative": sum(a.label == 0 for a in annotations),
            "unknown": sum(a.status == "unknown" for a in annotations),
            "unreadable": sum(a.status == "unreadable" for a in annotations)}


class CollaboratorPipeline:
    """The steps for one concept and pool (see the module docstring).

    folder: the run folder. config: the trainer's recipe (sections concept, pool, tools, prompts,
    embed, decompose, queries, retrieve, annotate, active, review, optim, schedule, train).
    model: the CollaboratorClassifier to start from (its backbone embeds the pool). llm / vqa:
    the tools. concept: the user's concept (version 1).
    """

    def __init__(self, folder, config: dict, model, llm, vqa, concept: Concept):
        self.folder = Path(folder)
        self.config, self.model, self.llm, self.vqa, self.concept = config, model, llm, vqa, concept
        self.prompts_dir = (config.get("prompts") or {}).get("dir")
        self.pool = Path(str(config["pool"])).expanduser().resolve()
        self.rounds = int(config["active"]["rounds"])
        if self.rounds < 0:
            raise ConfigError(f"active.rounds must be >= 0, got {self.rounds}.")
        self.answers = config["review"].get("answers")

    # ------------------------------------------------------------------ settings
    def _tools(self, *names) -> dict:
        out = {}
        if "llm" in names:
            out["llm"] = tool_id(self.llm)
        if "vqa" in names:
            out["vqa"] = tool_id(self.vqa)
        return out

    def _prompts(self, *names) -> str:
        return prompt_files.digest(names, self.prompts_dir)

    def _head_settings(self) -> dict:
        train = self.config["train"]
        return {"optim": self.config["optim"], "schedule": self.config["schedule"],
                "train": {k: train.get(k) for k in ("max_steps", "batch_size", "seed", "grad_accum", "clip_grad_norm")}}

    def _pool_listing(self):
        from .embeddings import list_images

        rows = list_images(self.pool)
        lines = []
        for row in rows:
            try:
                stat = os.stat(row["path"])
                lines.append(f"{row['id']}\t{row['path']}\t{stat.st_size}\t{stat.st_mtime_ns}")
            except OSError:
                lines.append(f"{row['id']}\t{row['path']}\t-\t-")
        return rows, settings_signature(lines)

    def steps(self) -> list[Step]:
        concept = {"concept": self.concept.digest()}
        self.pool_rows, pool_digest = self._pool_listing()
        model_config = {k: v for k, v in self.model.config.items() if k not in ("concept", "threshold")}
        annotate = {**concept, **self._tools("llm", "vqa"), "prompts": self._prompts("annotate", "retry"),
                    "retries": int(self.config["annotate"]["retries"])}
        steps = [
            Step("base", self._base, {"model": model_config, "embedder": self.model.embedder_id()},
                 outputs=["base"]),
            Step("decompose", self._decompose, {**concept, **self._tools("llm"),
                                                "prompts": self._prompts("attributes", "questions"),
                                                "max_questions": int(self.config["decompose"]["max_questions"])},
                 outputs=["decompose/v1.json"]),
            Step("queries", self._queries, {**concept, **self._tools("llm"), "prompts": self._prompts("queries"),
                                            **{k: int(v) for k, v in self.config["queries"].items()}},
                 outputs=["queries.json"]),
            Step("embed", self._embed, {"embedder": self.model.embedder_id(), "pool": str(self.pool),
                                        "pool_files": len(self.pool_rows), "pool_digest": pool_digest},
                 outputs=["pool"]),
            Step("retrieve", self._retrieve, dict(self.config["retrieve"]), inputs=["queries.json", "pool"],
                 outputs=["candidates.jsonl"]),
            Step("annotate0", self._annotate0, annotate, inputs=["candidates.jsonl", "decompose/v1.json"],
                 outputs=["labels/round0.jsonl"]),
            Step("distill0", lambda ctx: self._distill(ctx, 0), self._head_settings(),
                 inputs=["base", "pool", "labels/round0.jsonl"], outputs=["heads/round0"]),
        ]
        for r in range(1, self.rounds + 1):
            labels = [f"labels/round{i}.jsonl" for i in range(r)]
            steps.append(Step(f"annotate{r}", lambda ctx, r=r: self._active_round(ctx, r),
                              {**annotate, "active": dict(self.config["active"])},
                              inputs=["pool", "decompose/v1.json", f"heads/round{r - 1}", *labels],
                              outputs=[f"labels/round{r}.jsonl"]))
            steps.append(Step(f"distill{r}", lambda ctx, r=r: self._distill(ctx, r), self._head_settings(),
                              inputs=["base", "pool", *labels, f"labels/round{r}.jsonl"],
                              outputs=[f"heads/round{r}"]))
        all_labels = [f"labels/round{i}.jsonl" for i in range(self.rounds + 1)]
        review = self.config["review"]
        if int(review["size"]) > 0:
            steps.append(Step("review_sheet", self._review_sheet,
                              {"size": int(review["size"]), "select": review["select"], "seed": int(review["seed"])},
                              inputs=[*all_labels, f"heads/round{self.rounds}"], outputs=["review/sheet.csv"]))
            if self.answers:
                answers = str(Path(str(self.answers)).expanduser().resolve())
                steps.append(Step("review", self._review,
                                  {**annotate, "description": review.get("description"),
                                   "refine": self._prompts("refine", "attributes", "questions"),
                                   "max_questions": int(self.config["decompose"]["max_questions"])},
                                  inputs=["review/sheet.csv", answers, "decompose/v1.json", *all_labels],
                                  outputs=["review/result.json", "concept/final.yaml", "decompose/final.json",
                                           "labels/final.jsonl"]))
        return steps

    def pipeline(self) -> Pipeline:
        return Pipeline(self.folder, self.steps(), name="collaborator", log=logger,
                        hint="Use another train.output_dir, or run with force=STEP to redo that step and the later "
                             "ones (force=true redoes every step; cached tool answers are reused).")

    # ------------------------------------------------------------------ steps
    def _base(self, ctx: StepContext):
        self.model.save_pretrained(ctx.output("base"))

    def _decompose(self, ctx: StepContext):
        from .decompose import decompose

        result = decompose(ctx.cached(self.llm), self.concept,
                           max_questions=int(self.config["decompose"]["max_questions"]), prompts_dir=self.prompts_dir)
        from zoo.files import write_json

        write_json(ctx.output("decompose/v1.json"), {"concept": self.concept.to_dict(), **result.to_dict()})
        return {"questions": len(result.questions)}

    def _queries(self, ctx: StepContext):
        from zoo.files import write_json

        from .queries import search_queries

        queries = search_queries(ctx.cached(self.llm), self.concept, positives=int(self.config["queries"]["positive"]),
                                 negatives=int(self.config["queries"]["negative"]), prompts_dir=self.prompts_dir)
        write_json(ctx.output("queries.json"), queries)
        return {"positive": sum(q["kind"] == "positive" for q in queries),
                "negative": sum(q["kind"] == "negative" for q in queries)}

    def _embed(self, ctx: StepContext):
        from .embeddings import EmbeddingCache, default_cache_dir

        embed = self.config["embed"]
        cache = EmbeddingCache(embed.get("cache_dir") or default_cache_dir(), self.model.embedder_id())
        matrix, kept, skipped = cache.embed(self.pool_rows, self.model.embedder,
                                            batch_size=int(embed["batch_size"]), shard_size=int(embed["shard_size"]),
                                            progress=bool(embed.get("progress", False)))
        if not kept:
            raise ConfigError(f"none of the {len(self.pool_rows)} images of the pool {self.pool} could be read; "
                              f"e.g. {skipped[0]['path']}: {skipped[0]['error']}")
        folder = ctx.output("pool")
        folder.mkdir(parents=True)
        np.save(folder / "embeddings.npy", matrix, allow_pickle=False)
        _write_jsonl(folder / "index.jsonl", [{"id": r["id"], "path": r["path"]} for r in kept])
        _write_jsonl(folder / "skipped.jsonl", [{"id": r["id"], "path": r["path"], "error": r["error"]}
                                                for r in skipped])
        return {"images": len(kept), "skipped": len(skipped)}

    def _pool(self):
        embeddings = np.load(self.folder / "pool" / "embeddings.npy", mmap_mode="r")
        return embeddings, _read_jsonl(self.folder / "pool" / "index.jsonl")

    def _retrieve(self, ctx: StepContext):
        from .retrieve import mine

        embeddings, index = self._pool()
        queries = json.loads((self.folder / "queries.json").read_text(encoding="utf-8"))
        vectors = self.model.embedder.encode_text([q["text"] for q in queries]).numpy()
        settings = self.config["retrieve"]
        found = mine(np.asarray(embeddings), vectors, [q["kind"] for q in queries],
                     per_query=int(settings["per_query"]), per_negative_query=int(settings["per_negative_query"]),
                     max_images=settings.get("max_images"))
        rows = [{"pool_index": f["index"], "id": index[f["index"]]["id"], "path": index[f["index"]]["path"],
                 "kind": f["kind"], "queries": [queries[q]["text"] for q in f["queries"]], "score": f["score"]}
                for f in found]
        _write_jsonl(ctx.output("candidates.jsonl"), rows)
        return {"candidates": len(rows), "by_positive_queries": sum(r["kind"] == "positive" for r in rows)}

    def _questions(self, name: str = "decompose/v1.json") -> list[str]:
        return json.loads((self.folder / name).read_text(encoding="utf-8"))["questions"]

    def _annotator(self, ctx: StepContext, concept: Concept, questions) -> Annotator:
        return Annotator(ctx.cached(self.llm), ctx.cached(self.vqa), concept, questions,
                         retries=int(self.config["annotate"]["retries"]), prompts_dir=self.prompts_dir)

    def _annotate_rows(self, ctx, rows, output: str, concept: Concept, questions) -> dict:
        annotator = self._annotator(ctx, concept, questions)
        annotations = annotator.annotate_rows(rows, progress=bool(self.config["annotate"].get("progress", False)))
        records = [{**a.to_dict(), "pool_index": r["pool_index"]} for a, r in zip(annotations, rows)]
        _write_jsonl(ctx.output(output), records)
        counts = _counts(annotations)
        if counts["unknown"]:
            logger.warning("%d of %d images got no parsable final answer from the LLM; labelled unknown (see %s)",
                           counts["unknown"], counts["images"], output)
        return counts

    def _annotate0(self, ctx: StepContext):
        rows = _read_jsonl(self.folder / "candidates.jsonl")
        return self._annotate_rows(ctx, rows, "labels/round0.jsonl", self.concept, self._questions())

    def labelled(self, upto: int, final: bool = False) -> list[dict]:
        """Annotation records (with ``pool_index``) of rounds 0..upto, or of ``labels/final.jsonl``."""
        if final:
            return _read_jsonl(self.folder / "labels" / "final.jsonl")
        records = []
        for r in range(upto + 1):
            records += _read_jsonl(self.folder / "labels" / f"round{r}.jsonl")
        return records

    def _active_round(self, ctx: StepContext, r: int):
        import torch

        import zoo

        from .active import select

        embeddings, index = self._pool()
        head = zoo.load(str(self.folder / "heads" / f"round{r - 1}" / "run" / "final"))
        with torch.no_grad():
            probabilities = head(embeddings=torch.as_tensor(np.array(embeddings))).numpy()
        taken = {rec["pool_index"] for rec in self.labelled(r - 1)}
        settings = self.config["active"]
        chosen = select(probabilities, taken, int(settings["per_round"]), strategy=settings["strategy"],
                        seed=int(settings["seed"]) + r)
        rows = [{"pool_index": i, "id": index[i]["id"], "path": index[i]["path"]} for i in chosen]
        counts = self._annotate_rows(ctx, rows, f"labels/round{r}.jsonl", self.concept, self._questions())
        counts["mean_probability_of_chosen"] = float(np.mean(probabilities[chosen])) if chosen else None
        return counts

    def training_arrays(self, records: list[dict]):
        """``(embeddings [N, D], labels [N])`` of the records with a label (unknowns left out)."""
        embeddings, _ = self._pool()
        usable = [r for r in records if r.get("label") in (0, 1)]
        if not usable:
            raise ConfigError("no image has a yes/no label (all unknown or unreadable); check the LLM's answers in "
                              f"{self.folder / 'labels'}.")
        x = np.asarray(embeddings[[r["pool_index"] for r in usable]], dtype=np.float32)
        return x, np.array([r["label"] for r in usable], dtype=np.float32)

    def _distill(self, ctx: StepContext, r: int):
        from .distill import fit_head

        x, y = self.training_arrays(self.labelled(r))
        final = fit_head(self.config, ctx.output(f"heads/round{r}"), self.folder / "base", x, y)
        return {"images": int(len(y)), "positive": int(y.sum()), "classifier": f"heads/round{r}/{final.parent.name}/final"}

    def _review_sheet(self, ctx: StepContext):
        import torch

        import zoo

        from .review import choose_for_review, write_sheet

        records = self.labelled(self.rounds)
        annotations = [Annotation.from_dict(r) for r in records]
        settings = self.config["review"]
        probabilities = None
        if settings["select"] == "uncertain":
            embeddings, _ = self._pool()
            head = zoo.load(str(self.folder / "heads" / f"round{self.rounds}" / "run" / "final"))
            vectors = np.asarray(embeddings[[r["pool_index"] for r in records]], dtype=np.float32)
            with torch.no_grad():
                probabilities = head(embeddings=torch.as_tensor(vectors)).numpy()
        chosen = choose_for_review(annotations, int(settings["size"]), strategy=settings["select"],
                                   probabilities=probabilities, seed=int(settings["seed"]))
        write_sheet(ctx.output("review/sheet.csv"), chosen)
        return {"images": len(chosen)}

    def _review(self, ctx: StepContext):
        from zoo.files import write_json

        from .decompose import decompose
        from .review import disagreements, read_sheet, refine_description

        records = self.labelled(self.rounds)
        by_id = {r["id"]: r for r in records}
        sheet_ids = [row["id"] for row in _csv_rows(self.folder / "review" / "sheet.csv")]
        answers = read_sheet(self.answers, known_ids=set(sheet_ids))
        annotations = [Annotation.from_dict(by_id[i]) for i in sheet_ids if i in by_id]
        disagreed = disagreements(annotations, answers)
        settings = self.config["review"]
        concept = self.concept
        if settings.get("description"):
            new_description = " ".join(str(settings["description"]).split())
        elif disagreed:
            new_description = refine_description(ctx.cached(self.llm), concept, disagreed,
                                                 prompts_dir=self.prompts_dir)
        else:
            new_description = concept.description
        if new_description != concept.description:
            concept = concept.edit(description=new_description,
                                   reason=f"human review: {len(disagreed)} of {len(answers)} reviewed images disagreed")
            decomposition = decompose(ctx.cached(self.llm), concept,
                                      max_questions=int(self.config["decompose"]["max_questions"]),
                                      prompts_dir=self.prompts_dir)
            questions = decomposition.questions
            write_json(ctx.output("decompose/final.json"), {"concept": concept.to_dict(), **decomposition.to_dict()})
            annotator = self._annotator(ctx, concept, questions)
            relabelled = []
            for record in records:
                fresh = annotator.annotate(record["path"], record["id"])
                relabelled.append({**fresh.to_dict(), "pool_index": record["pool_index"]})
        else:
            relabelled = [dict(r) for r in records]
            write_json(ctx.output("decompose/final.json"),
                       json.loads((self.folder / "decompose" / "v1.json").read_text(encoding="utf-8")))
        changed = sum(a.get("label") != b.get("label") for a, b in zip(records, relabelled))
        for record in relabelled:  # the user's labels are ground truth
            answer = answers.get(record["id"])
            if answer is not None:
                record.update(label=answer["human_label"], status="ok", source="human")
        _write_jsonl(ctx.output("labels/final.jsonl"), relabelled)
        save_concept(concept, ctx.output("concept/final.yaml"), overwrite=True)
        result = {"reviewed": len(answers), "disagreements": len(disagreed),
                  "agreement": 1 - len(disagreed) / max(1, len(answers)), "concept_version": concept.version,
                  "description": concept.description, "relabelled_changed": changed,
                  "human_labels": len(answers), **_counts([Annotation.from_dict(r) for r in relabelled])}
        write_json(ctx.output("review/result.json"), result)
        return result

    # ------------------------------------------------------------------ run
    def run(self, force=False) -> dict:
        """Run (or resume) every step; returns what the final head trains on::

            {"records": label records, "concept": Concept, "reviewed": bool, "human_ids": set}
        """
        self.pipeline().run(force=force)
        if self.answers and int(self.config["review"]["size"]) > 0:
            from .concept import load_concept

            concept = load_concept(self.folder / "concept" / "final.yaml")
            records = self.labelled(0, final=True)
            human = {r["id"] for r in records if r.get("source") == "human"}
            return {"records": records, "concept": concept, "reviewed": True, "human_ids": human}
        if int(self.config["review"]["size"]) > 0:
            logger.warning("review pending: copy %s, fill its human_label column (yes/no; a comment where you "
                           "disagree) and run again with review.answers=YOUR_COPY --overwrite; until then the model "
                           "uses the auto-labels only.", self.folder / "review" / "sheet.csv")
        return {"records": self.labelled(self.rounds), "concept": self.concept, "reviewed": False,
                "human_ids": set()}


def _csv_rows(path) -> list[dict]:
    import csv

    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))
