"""Speaker-verification evaluation for `zoo eval ca-dino-... --data manifest.jsonl [--trials trials.txt]`.

Embeddings come from the model as loaded (the DINO teacher, speech.md §3.2); scores are
cosine, optionally after subtracting a mean embedding (``mean=cohort|eval``) and with
AS-norm (``as_norm=true``, ``top_n``); metrics are EER and minDCF (p_target 0.01 and
0.05) from the vectorised scorer, and a DET curve PNG is written next to ``output``.

Trials: a file with lines ``label utt1 utt2`` or ``utt1 utt2 label`` (label 1/0 or
target/nontarget), utterances named by the manifest's ``id`` (or the audio file stem).
Without a trials file, every pair of utterances from the selected ``speakers`` is a
trial (sub-sampled to ``max_trials``), labelled by the manifest's ``speaker`` field.

``features=mean_fbank`` scores the mean 80-bin log-mel vector of each utterance instead
of the model's embedding (a no-learning baseline).
"""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError, ZooError
from zoo.speech.ca_dino.scoring import as_norm, cosine_scores, eer, min_dcf, plot_det

_TRUE = {"1", "target", "tgt", "true", "same"}
_FALSE = {"0", "nontarget", "non-target", "imp", "impostor", "false", "diff"}


def read_rows(data) -> list[dict]:
    """Manifest rows with absolute paths and an ``id`` for each (JSONL file or audio folder)."""
    path = Path(data)
    if path.is_dir():
        try:
            from zoo.data import audio_folder
            rows = audio_folder(path)
        except ImportError:
            rows = [{"path": str(p)} for p in sorted(path.rglob("*")) if p.suffix.lower() in {".wav", ".flac", ".ogg"}]
    elif path.is_file():
        try:
            from zoo.data import read_manifest
            rows = read_manifest(path)
        except ImportError:
            rows = []
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    row["path"] = str((path.parent / row["path"]).resolve()) if not Path(row["path"]).is_absolute() \
                        else row["path"]
                    rows.append(row)
    else:
        raise ConfigError(f"data {str(data)!r} is neither a JSONL manifest nor a folder of audio files")
    out = []
    for row in rows:
        row = dict(row)
        row.setdefault("id", Path(row["path"]).stem)
        out.append(row)
    return out


def read_trials(path) -> list[tuple[str, str, int]]:
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
    """All pairs of distinct utterances (sub-sampled, both classes kept), labelled by speaker."""
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


def load_wave(path, sample_rate: int = 16000) -> torch.Tensor:
    """zoo.audio.load_audio (mono, resampled, checked); a soundfile stand-in until it exists."""
    try:
        from zoo.audio import load_audio
    except ImportError:
        load_audio = None
    if load_audio is not None:
        return load_audio(path, sample_rate)
    import soundfile

    from zoo.errors import AudioInputError

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.mean(axis=1))
    if wave.numel() == 0:
        raise AudioInputError(f"{path} is empty (0 samples)")
    if rate != sample_rate:
        import torchaudio.functional as AF

        wave = AF.resample(wave, rate, sample_rate)
    return wave


def _load_waves(rows, sample_rate):
    return [load_wave(row["path"], sample_rate) for row in rows]


@torch.no_grad()
def embed_rows(model, rows, *, features: str = "model", batch_size: int = 32) -> torch.Tensor:
    """Embeddings [N, D] for manifest rows: the model's, or the mean fbank vector (``features=mean_fbank``)."""
    sample_rate = model.config["sample_rate"] if model is not None else 16000
    waves = _load_waves(rows, sample_rate)
    if features == "model":
        return model.embed(waves, sample_rate, batch_size=batch_size).cpu()
    if features == "mean_fbank":
        from zoo.speech.ca_dino.fbank import kaldi_fbank

        out = []
        for wave in waves:
            feats, counts = kaldi_fbank(wave[None], cmn=False)
            out.append(feats[0, :counts[0]].mean(0))
        return torch.stack(out)
    raise ConfigError(f"features must be 'model' or 'mean_fbank', got {features!r}")


def evaluate(model, *, data, trials=None, output=None, speakers=None, features: str = "model", mean="none",
             cohort=None, as_norm_scores=False, top_n: int = 300, max_trials: int = 20000, seed: int = 0,
             batch_size: int = 32, det: bool = True, **options) -> dict:
    """EER (%) and minDCF of ``model`` on ``data`` (JSONL manifest or folder); see the module docstring.

    Options (also as ``key=value`` on the command line): ``speakers`` (comma list to keep),
    ``features`` (model | mean_fbank), ``mean`` (none | eval | cohort), ``cohort`` (manifest
    for the mean / AS-norm cohort), ``as_norm`` (bool), ``top_n``, ``max_trials``, ``seed``.
    """
    if "as_norm" in options:
        as_norm_scores = options.pop("as_norm")
    if options:
        raise ConfigError(f"unknown evaluation options {sorted(options)}; valid: speakers, features, mean, cohort, "
                          "as_norm, top_n, max_trials, seed, batch_size, det")
    as_norm_scores = str(as_norm_scores).lower() in {"1", "true", "yes"}
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
    embeddings = embed_rows(model, used_rows, features=features, batch_size=int(batch_size))
    index = {row["id"]: i for i, row in enumerate(used_rows)}
    enroll = embeddings[[index[a] for a, _, _ in trial_list]]
    test = embeddings[[index[b] for _, b, _ in trial_list]]
    labels = np.array([label for _, _, label in trial_list])

    cohort_embeddings = None
    if cohort is not None:
        cohort_embeddings = embed_rows(model, read_rows(cohort), features=features, batch_size=int(batch_size))
    if mean == "cohort":
        if cohort_embeddings is None:
            raise ConfigError("mean=cohort needs cohort=MANIFEST (e.g. the training utterances)")
        mean_vector = cohort_embeddings.mean(0)
    elif mean == "eval":
        mean_vector = embeddings.mean(0)
    elif mean in (None, "none", False):
        mean_vector = None
    else:
        raise ConfigError(f"mean must be none, eval or cohort; got {mean!r}")
    scores = cosine_scores(enroll, test, mean=mean_vector)
    if as_norm_scores:
        if cohort_embeddings is None:
            raise ConfigError("as_norm=true needs cohort=MANIFEST")
        scores = as_norm(scores, enroll, test, cohort_embeddings, top_n=int(top_n), mean=mean_vector)
    scores_np = scores.numpy()
    metrics = {
        "eer": 100 * eer(scores_np, labels),
        "min_dcf_p0.01": min_dcf(scores_np, labels, p_target=0.01),
        "min_dcf_p0.05": min_dcf(scores_np, labels, p_target=0.05),
        "num_trials": int(labels.size),
        "num_target": int(labels.sum()),
        "num_utterances": len(used_rows),
        "features": features,
    }
    if output:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        if det:
            det_path = out.with_suffix(".det.png")
            plot_det(scores_np, labels, det_path)
            metrics["det_curve"] = str(det_path)
        from zoo.files import write_json

        write_json(out, metrics)
    return metrics
