"""Metrics of a binary concept classifier, and ``zoo eval CLASSIFIER --data labelled.jsonl``.

auPR is average precision (scikit-learn's ``average_precision_score``: the precision/recall
curve's step-wise area); F1 is measured at the classifier's own threshold (``config["threshold"]``,
chosen when it was trained) unless one is given. The precision/recall curve is drawn to a PNG.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError, OutputExistsError

__all__ = ["binary_metrics", "best_threshold", "pr_curve_png", "read_labelled", "evaluate", "parse_label"]

_TRUE = {"1", "yes", "y", "true", "t", "positive", "pos"}
_FALSE = {"0", "no", "n", "false", "f", "negative", "neg"}


def parse_label(value, where: str = "label") -> int | None:
    """1/0 from yes/no, true/false, 1/0, positive/negative (any case); None for an empty value.
    Raises ``ConfigError`` naming ``where`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    text = str(value).strip().lower()
    if not text:
        return None
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise ConfigError(f"{where}: {value!r} is not a label; write yes or no (or 1/0, true/false).")


def binary_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """``{"auPR", "F1", "precision", "recall", "threshold", "positives", "images"}`` for binary
    ``labels`` (0/1) and ``scores`` (higher = more positive); F1 and its parts at ``scores >= threshold``.
    Raises ``ConfigError`` when the labels hold no positive."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if not y.sum():
        raise ConfigError("the labels hold no positive image, so precision and recall are undefined.")
    predicted = (s >= threshold).astype(int)
    return {"auPR": float(average_precision_score(y, s)), "F1": float(f1_score(y, predicted, zero_division=0)),
            "precision": float(precision_score(y, predicted, zero_division=0)),
            "recall": float(recall_score(y, predicted, zero_division=0)), "threshold": float(threshold),
            "positives": int(y.sum()), "images": int(len(y))}


def best_threshold(labels, scores) -> float:
    """The score threshold with the highest F1 on ``labels`` (midway to the next lower score, so a
    small shift does not flip the decision); 0.5 when there is no positive."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if not y.sum() or y.sum() == len(y):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = float(thresholds[int(np.argmax(f1))])
    lower = s[s < best]
    return float((best + lower.max()) / 2) if len(lower) else best


def pr_curve_png(curves: dict, path, *, title: str = "", overwrite: bool = False) -> Path:
    """Draw precision/recall curves ``{label: (labels, scores)}`` to a PNG at ``path`` (atomic).
    Raises ``OutputExistsError`` when the file exists and ``overwrite`` is false."""
    from matplotlib.figure import Figure  # no pyplot: the user's backend and figure state are left alone
    from sklearn.metrics import average_precision_score, precision_recall_curve

    from zoo.files import atomic_open

    target = Path(os.fspath(path))
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass overwrite=true to replace it, or another plot path.")
    figure = Figure(figsize=(5, 4), dpi=100)
    axis = figure.subplots()
    for name, (labels, scores) in curves.items():
        precision, recall, _ = precision_recall_curve(np.asarray(labels).astype(int), np.asarray(scores))
        ap = average_precision_score(np.asarray(labels).astype(int), np.asarray(scores))
        axis.step(recall, precision, where="post", label=f"{name} (auPR {ap:.3f})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    with atomic_open(target, "wb", encoding=None) as handle:
        figure.savefig(handle, format="png")
    return target


def read_labelled(path, label_field: str = "label") -> list[dict]:
    """Rows ``{"path", "id", "label": 0/1}`` of a JSONL manifest with a yes/no label per image.
    Raises ``ConfigError`` naming the line of a missing or unreadable label."""
    from zoo.data import read_manifest

    rows = read_manifest(path)
    if not rows:
        raise ConfigError(f"{path} lists no images.")
    out = []
    for number, row in enumerate(rows, 1):
        label = parse_label(row.get(label_field), f"{path}, row {number} ({label_field})")
        if label is None:
            raise ConfigError(f"{path}, row {number}: no {label_field!r}; every image needs yes or no.")
        out.append({**row, "id": str(row.get("id") or Path(row["path"]).stem), "label": label})
    return out


def evaluate(model, *, data, output=None, threshold: float | None = None, label_field: str = "label",
             plot: str | None = None, batch_size: int = 64, overwrite: bool = False, **unknown) -> dict:
    """auPR and F1 of a collaborator classifier on a labelled JSONL manifest (``{"path", "label"}``).

    The precision/recall curve goes to ``plot`` (default: next to ``output`` as ``<stem>_pr.png``, else
    ``pr_curve.png`` in the current folder). Unreadable images are skipped and listed under
    ``"skipped"``. Returns the metrics (also written as JSON to ``output``).
    """
    if unknown:
        raise ConfigError(f"Unknown collaborator eval options: {', '.join(sorted(unknown))}. Valid: threshold, "
                          "label_field, plot, batch_size, overwrite.")
    rows = read_labelled(data, label_field)
    predictions = model.predict([r["path"] for r in rows], batch_size=int(batch_size), threshold=threshold)
    kept = [(r, p) for r, p in zip(rows, predictions) if p["probability"] is not None]
    skipped = [{"path": p["path"], "error": p.get("error")} for p in predictions if p["probability"] is None]
    if not kept:
        raise ConfigError(f"none of the images of {data} could be read.")
    labels = [r["label"] for r, _ in kept]
    scores = [p["probability"] for _, p in kept]
    cut = model.threshold if threshold is None else float(threshold)
    report = binary_metrics(labels, scores, cut)
    report["skipped"] = skipped
    report["concept"] = model.concept.get("name")
    report["concept_version"] = model.concept.get("version")
    if plot is None:
        plot = str(Path(output).with_name(Path(output).stem + "_pr.png")) if output else "pr_curve.png"
    report["pr_curve"] = str(pr_curve_png({"classifier": (labels, scores)}, plot,
                                          title=f"{model.concept.get('name')} (v{model.concept.get('version')})",
                                          overwrite=bool(overwrite)))
    if output:
        from zoo.files import write_json

        write_json(output, report)
    return report
