"""Speaker-verification evaluation: ``zoo eval <ca-dino model> --data manifest.jsonl [--trials trials.txt]``.

Embeddings come from the model as loaded (after DINO training, the teacher, which WeSpeaker
averages for evaluation: ``wenet-e2e/wespeaker:wespeaker/ssl/bin/average_dino_model.py``);
scores are cosine, optionally after subtracting a
mean embedding (``mean=cohort|eval``) and with AS-norm (``as_norm=true``, ``top_n``);
metrics are the EER (as a percentage, key ``eer_percent``) and minDCF (p_target 0.01 and
0.05) from :mod:`zoo.speech.ca_dino.scoring`, and a DET curve PNG is written next to
``output``.

Trials: a file with lines ``label utt1 utt2`` or ``utt1 utt2 label`` (label 1/0 or
target/nontarget), utterances named by the manifest's ``id`` (or the audio file stem).
Without a trials file, every pair of utterances from the selected ``speakers`` is a
trial (sub-sampled to ``max_trials``), labelled by the manifest's ``speaker`` field.

No-learning baselines: ``features=mean_fbank`` scores the mean 80-bin log-mel vector of
each utterance instead of the model's embedding, ``features=mean_std_fbank`` its mean and
standard deviation; ``baselines=true`` scores the model *and* both baselines on the same
trials with the same scoring, and reports ``mean_fbank_eer_percent`` and
``mean_std_fbank_eer_percent`` next to ``eer_percent``.
"""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError, ZooError
from zoo.speech.ca_dino.fbank import FBANK_STATISTICS, fbank_statistics
from zoo.speech.ca_dino import scoring
from zoo.speech.ca_dino.scoring import cosine_scores, eer, min_dcf, plot_det

_TRUE = {"1", "target", "tgt", "true", "same"}
_FALSE = {"0", "nontarget", "non-target", "imp", "impostor", "false", "diff"}
FEATURES = ("model", *FBANK_STATISTICS)


def read_rows(data) -> list[dict]:
    """Rows of a JSONL manifest, an audio folder, or ``"demo"`` (the bundled speech corpus).

    Paths come back absolute; every row gets an ``id`` (the manifest's, else the file name
    without extension). Raises ConfigError when ``data`` is none of these.
    """
    from zoo.data import audio_folder, demo_corpus, read_manifest

    if str(data) == "demo":
        data = demo_corpus()
    path = Path(str(data)).expanduser()
    if path.is_dir():
        rows = audio_folder(path)
    elif path.is_file():
        rows = read_manifest(path)
    else:
        raise ConfigError(f"data {str(data)!r} is neither a JSONL manifest nor a folder of audio files "
                          "(or 'demo' for the bundled corpus)")
    out = []
    for row in rows:
        row = dict(row)
        row.setdefault("id", Path(row["path"]).stem)
        out.append(row)
    return out


def read_trials(path) -> list[tuple[str, str, int]]:
    """Trials ``(utt1, utt2, label)`` from a text file of ``label utt1 utt2`` / ``utt1 utt2 label`` lines.

    Labels: 1/0, target/nontarget (and a few synonyms). Blank lines are skipped. Raises
    ConfigError naming the file and line for a malformed line, and for an empty file.
    """
    trials = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise ConfigError(f"{path}:{number}: expected 'label utt1 utt2' or 'utt1 utt2 label', got {line!r}")
        first, last = parts[0].lower(), parts[2].lower()
        if first in _TRUE | _FALSE:
            label, a, b = first, parts[1], parts[2]
        elif last in _TRUE | _FALSE:
            a, b, label = parts[0], parts[1], last
        else:
            raise ConfigError(f"{path}:{number}: no 0/1 or target/nontarget label in {line!r}")
        trials.append((a, b, 1 if label in _TRUE else 0))
    if not trials:
        raise ConfigError(f"trials file {path} is empty")
    return trials


def make_trials(rows: list[dict], *, max_trials: int = 20000, seed: int = 0) -> list[tuple[str, str, int]]:
    """All pairs of distinct utterances ``(id1, id2, same speaker)``, a random ``max_trials`` of them if more.

    Raises ConfigError when a row has no ``speaker`` field.
    """
    if any("speaker" not in row for row in rows):
        raise ConfigError("building trials needs a 'speaker' field in every manifest row; or pass trials=FILE")
    pairs = list(itertools.combinations(range(len(rows)), 2))
    rng = random.Random(seed)
    if len(pairs) > max_trials:
        pairs = rng.sample(pairs, max_trials)
    return [(rows[i]["id"], rows[j]["id"], int(rows[i]["speaker"] == rows[j]["speaker"])) for i, j in pairs]


def _split(value) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value]


def _flag(value) -> bool:
    return str(value).lower() in {"1", "true", "yes", "on"}


def embed_rows(model, rows, *, features: str = "model", batch_size: int = 32) -> torch.Tensor:
    """Vectors [N, D] for manifest rows: the model's embeddings (D = 192), or fbank statistics.

    ``features``: ``model``, ``mean_fbank`` (D = 80) or ``mean_std_fbank`` (D = 160); the last
    two need no model (``model`` may be None). Audio is read with ``zoo.audio.load_audio``
    (AudioInputError names a bad file). Raises ConfigError for another ``features``.
    """
    from zoo.audio import load_audio

    if features not in FEATURES:
        raise ConfigError(f"features must be one of {', '.join(FEATURES)}; got {features!r}")
    if features == "model" and model is None:
        raise ConfigError("features=model needs a model")
    sample_rate = model.config["sample_rate"] if model is not None else 16000
    waves = [load_audio(row["path"], sample_rate) for row in rows]
    if features == "model":
        return model.embed(waves, sample_rate, batch_size=batch_size).cpu()
    return fbank_statistics(waves, features)


def evaluate(model, *, data, trials=None, output=None, speakers=None, features: str = "model", mean="none",
             cohort=None, as_norm=False, top_n: int = 300, max_trials: int = 20000, seed: int = 0,
             batch_size: int = 32, det: bool = True, baselines=False, **options) -> dict:
    """Verification metrics of ``model`` on ``data`` (JSONL manifest, audio folder or ``"demo"``).

    Options (also ``key=value`` on the ``zoo eval`` command line): ``trials`` (file; default:
    all pairs of the selected utterances), ``speakers`` (comma list to keep), ``features``
    (model | mean_fbank | mean_std_fbank), ``mean`` (none | eval | cohort: the mean embedding
    subtracted before cosine), ``cohort`` (manifest for the mean / AS-norm), ``as_norm`` (bool),
    ``top_n``, ``max_trials``, ``seed``, ``baselines`` (bool: also score both fbank baselines).

    Returns ``{"eer_percent": EER in [0, 100], "min_dcf_p0.01", "min_dcf_p0.05": normalised
    costs, "num_trials", "num_target", "num_utterances", "features"}``, plus
    ``mean_fbank_eer_percent`` / ``mean_std_fbank_eer_percent`` (and their ``min_dcf_p0.01``)
    with ``baselines``, and ``det_curve`` (PNG path) when ``output`` is given and ``det``.
    ``output`` receives the metrics as JSON. Raises ConfigError for unknown options or an
    inconsistent combination, ZooError when the trials name utterances not in ``data``.
    """
    if options:
        raise ConfigError(f"unknown evaluation options {sorted(options)}; valid: trials, speakers, features, mean, "
                          "cohort, as_norm, top_n, max_trials, seed, batch_size, det, baselines")
    as_norm_scores, baselines = _flag(as_norm), _flag(baselines)
    if mean not in (None, False, "none", "eval", "cohort"):
        raise ConfigError(f"mean must be none, eval or cohort; got {mean!r}")
    if mean == "cohort" and cohort is None:
        raise ConfigError("mean=cohort needs cohort=MANIFEST (e.g. the training utterances)")
    if as_norm_scores and cohort is None:
        raise ConfigError("as_norm=true needs cohort=MANIFEST")
    rows = read_rows(data)
    keep = _split(speakers)
    if keep:
        rows = [row for row in rows if str(row.get("speaker")) in set(keep)]
        if not rows:
            raise ConfigError(f"no utterance in {data} has a speaker in {keep}")
    by_id = {row["id"]: i for i, row in enumerate(rows)}
    if trials:
        trial_list = read_trials(trials)
        unknown = sorted({u for a, b, _ in trial_list for u in (a, b) if u not in by_id})
        if unknown:
            raise ZooError(f"trials file {trials} names {len(unknown)} utterance(s) not in {data}: "
                           f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}. Utterances are matched by "
                           "the manifest's 'id' field (or the audio file name without extension).")
        used = sorted({by_id[u] for a, b, _ in trial_list for u in (a, b)})
    else:
        trial_list = make_trials(rows, max_trials=int(max_trials), seed=int(seed))
        used = list(range(len(rows)))
    used_rows = [rows[i] for i in used]
    index = {row["id"]: i for i, row in enumerate(used_rows)}
    enroll_index = [index[a] for a, _, _ in trial_list]
    test_index = [index[b] for _, b, _ in trial_list]
    labels = np.array([label for _, _, label in trial_list])
    cohort_rows = read_rows(cohort) if cohort is not None else None

    def score(kind: str) -> np.ndarray:
        embeddings = embed_rows(model, used_rows, features=kind, batch_size=int(batch_size))
        cohort_embeddings = None
        if cohort_rows is not None:
            cohort_embeddings = embed_rows(model, cohort_rows, features=kind, batch_size=int(batch_size))
        mean_vector = {"cohort": cohort_embeddings.mean(0) if cohort_embeddings is not None else None,
                       "eval": embeddings.mean(0)}.get(mean)
        enroll, test = embeddings[enroll_index], embeddings[test_index]
        scores = cosine_scores(enroll, test, mean=mean_vector)
        if as_norm_scores:
            scores = scoring.as_norm(scores, enroll, test, cohort_embeddings, top_n=int(top_n), mean=mean_vector)
        return scores.numpy()

    scores = score(features)
    metrics = {
        "eer_percent": 100 * eer(scores, labels),
        "min_dcf_p0.01": min_dcf(scores, labels, p_target=0.01),
        "min_dcf_p0.05": min_dcf(scores, labels, p_target=0.05),
        "num_trials": int(labels.size),
        "num_target": int(labels.sum()),
        "num_utterances": len(used_rows),
        "features": features,
    }
    if baselines:
        for kind in FBANK_STATISTICS:
            baseline_scores = score(kind)
            metrics[f"{kind}_eer_percent"] = 100 * eer(baseline_scores, labels)
            metrics[f"{kind}_min_dcf_p0.01"] = min_dcf(baseline_scores, labels, p_target=0.01)
    if output:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        if det:
            det_path = out.with_suffix(".det.png")
            plot_det(scores, labels, det_path)
            metrics["det_curve"] = str(det_path)
        from zoo.files import write_json

        write_json(out, metrics)
    return metrics
