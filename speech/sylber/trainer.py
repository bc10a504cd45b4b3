"""``zoo train sylber``: self-segmentation distillation (Cho et al., *Sylber*, arXiv 2410.07168).

The objective of ``Sylber.forward`` in ``Berkeley-Speech-Group/sylber:sylber/model/sylber.py``,
with the hyper-parameters of ``sylber_configs/sylber_base.yaml`` and ``sylber_base_stage2.yaml``.
The released training path crashes (it reads attributes that are never set); this is a clean
reimplementation of the objective it describes:

* teacher = a copy of the student taken when training starts, updated by EMA with
  ``sylber.ema_decay`` (1.0 as released, i.e. frozen at its initialisation);
* stage 1: segments per utterance come from files (a manifest field pointing at an
  ``.npy`` array [N, 2] of 50 Hz frame indices, e.g. SD-HuBERT + mincut output);
  stage 2: segments come from the greedy algorithm run online on the teacher's
  features, with the merge threshold drawn from U(0.8, 0.9) per batch and the norm
  threshold from the adaptive Thresholder;
* target = each frame replaced by its segment's mean teacher feature, zero outside
  segments; the student sees a noise-augmented input (NoiseMixer);
* loss = squared error summed over the feature dimension, averaged over all frames
  of the padded batch, padding included (:meth:`SylberTrainer.distillation_loss`).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from zoo.audio import num_frames
from zoo.errors import ConfigError
from zoo.speech.sylber.noise import NoiseMixer
from zoo.speech.sylber.segment import segment_means
from zoo.train import Trainer

logger = logging.getLogger("zoo.sylber")

# HuBERT frames at 16 kHz: a 400-sample window (the conv stack's receptive field) every 320 samples (50 Hz).
WINDOW, HOP = 400, 320
# Crops are padded with 160 zeros per side so the 320-sample frames line up with segment indices, as the
# official dataset does (Berkeley-Speech-Group/sylber:sylber/dataset/collective_audio_segment.py).
BUFFER = 160


def demo_clip() -> Path:
    """The bundled clip the demo report segments (an English sentence of the demo corpus)."""
    from zoo.data import demo_corpus, read_manifest

    rows = read_manifest(demo_corpus())
    return Path(rows[0]["path"])


def _resolve_manifest(value) -> Path:
    from zoo.data import demo_corpus

    if value == "demo":
        return Path(demo_corpus())
    if value in (None, ""):
        raise ConfigError("data.train is not set: give a JSONL manifest or an audio folder "
                          "(data.train=PATH), or 'demo' for the bundled corpus.")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"data manifest {str(value)!r} does not exist; give a JSONL manifest, an audio folder, "
                          "or 'demo' for the bundled corpus.")
    return path


def _read_rows(value) -> tuple[list[dict], Path]:
    from zoo.data import audio_folder, read_manifest

    path = _resolve_manifest(value)
    rows = audio_folder(path) if path.is_dir() else read_manifest(path)
    if not rows:
        raise ConfigError(f"{path} lists no audio.")
    return rows, (path if path.is_dir() else path.parent)


def energy_syllables(wave: torch.Tensor, *, floor_db: float = 30.0, silence_dbfs: float = -45.0,
                     min_depth_db: float = 3.0, smooth_frames: int = 5, min_frames: int = 3) -> np.ndarray:
    """A classic energy-valley syllable segmenter on the HuBERT frame grid of a padded crop.

    Only for bootstrapping the demo's stage 1, where the paper uses SD-HuBERT segments
    (unavailable offline). ``wave`` ``[T]`` is the crop as read (values in [-1, 1], before
    z-scoring); frame i covers samples ``[320 i, 320 i + 400)``. A frame is silence when its
    mean energy is more than ``floor_db`` dB below the loudest frame of the crop or below
    ``silence_dbfs`` dB full scale (so a crop of background noise alone has no syllable);
    speech runs are split at valleys of the ``smooth_frames``-frame smoothed log energy at
    least ``min_depth_db`` dB below the peaks on both sides, into pieces of at least
    ``min_frames`` frames. Returns int64 ``[N, 2]`` ``[start, end)`` frame indices.
    """
    wave = wave.to(torch.float64)
    count = num_frames(wave.shape[0], WINDOW, HOP)
    if count == 0:
        return np.zeros((0, 2), dtype=np.int64)
    frames = wave.unfold(0, WINDOW, HOP)[:count]
    energy = 10 * torch.log10(frames.pow(2).mean(-1) + 1e-10)
    if smooth_frames > 1:
        # Edges repeat the end frames: zero padding would be 0 dB (full scale) and turn edge silence into speech.
        kernel = torch.ones(1, 1, smooth_frames, dtype=energy.dtype) / smooth_frames
        side = smooth_frames // 2
        padded = torch.nn.functional.pad(energy[None, None], (side, side), mode="replicate")
        energy = torch.nn.functional.conv1d(padded, kernel)[0, 0, :count]
    energy = energy.numpy()
    speech = (energy > energy.max() - floor_db) & (energy > silence_dbfs)
    segments = []
    index = 0
    while index < count:
        if not speech[index]:
            index += 1
            continue
        end = index
        while end < count and speech[end]:
            end += 1
        cuts = [index]
        run = energy[index:end]
        for t in range(1, len(run) - 1):
            if run[t] <= run[t - 1] and run[t] < run[t + 1]:
                left_peak, right_peak = run[cuts[-1] - index:t + 1].max(), run[t:].max()
                if min(left_peak, right_peak) - run[t] >= min_depth_db and t + index - cuts[-1] >= min_frames:
                    cuts.append(t + index)
        cuts.append(end)
        for start, stop in zip(cuts[:-1], cuts[1:]):
            if stop - start >= min_frames or not segments:
                segments.append([start, stop])
            elif segments[-1][1] == start:  # too short: join the previous piece of the same run
                segments[-1][1] = stop
        index = end
    return np.asarray(segments, dtype=np.int64).reshape(-1, 2)


def znorm_processor(wave: torch.Tensor) -> torch.Tensor:
    """Wav2Vec2FeatureExtractor-style normalisation used in training: (x - mean) / sqrt(var + 1e-7)."""
    wave = wave.to(torch.float32)
    return (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)


class SylberCropDataset(torch.utils.data.Dataset):
    """Random ``max_len`` crops of manifest utterances, frame aligned and padded with 160 zeros per side.

    Items: ``{"wav": [T] float32 as read, "segments": [N, 2] int64 frames of the crop or None,
    "noise": [T] or None}``. ``pad_silence`` (seconds, 0 = off) adds up to that much silence
    at each end of an utterance before cropping, with a background-noise floor at a random
    level in [-80, -50] dBFS (digital silence in a quarter of the cases); ``silence_only`` is
    the probability that an item is that silence alone (no segments). Both teach a model
    trained on trimmed clips (such as the bundled corpus) that silence is not a syllable.
    Randomness uses torch's global generator (seeded per worker and restored by the engine).
    """

    def __init__(self, rows: list[dict], root: Path, *, max_len: int = 80000, segments_field: str | None = None,
                 noise_dir: str | None = None, sample_rate: int = 16000, cache_audio: bool = False,
                 energy_segments: bool = False, pad_silence: float = 0.0, silence_only: float = 0.0):
        if pad_silence < 0 or not 0.0 <= silence_only <= 1.0:
            raise ConfigError(f"data.pad_silence must be >= 0 seconds and data.silence_only a probability in [0, 1]; "
                              f"got {pad_silence} and {silence_only}")
        if silence_only and not pad_silence:
            raise ConfigError("data.silence_only needs data.pad_silence > 0 (the silence it is made of).")
        self.pad_frames = int(round(pad_silence * sample_rate / HOP))
        self.silence_only = float(silence_only)
        self.rows = rows
        self.root = Path(root)
        self.max_len = int(max_len)
        self.max_frames = self.max_len // HOP
        if self.max_frames < 2:
            raise ConfigError(f"data.max_len={max_len} is shorter than two 320-sample frames")
        self.segments_field = segments_field
        self.energy_segments = energy_segments
        self.sample_rate = sample_rate
        self.cache = {} if cache_audio else None
        self.noise_files = []
        if noise_dir:
            from zoo.data import audio_folder

            self.noise_files = [row["path"] for row in audio_folder(noise_dir)]
            if not self.noise_files:
                raise ConfigError(f"data.noise_dir {noise_dir!r} holds no wav/flac/ogg files")
        if segments_field:
            missing = [i for i, row in enumerate(rows) if segments_field not in row]
            if missing:
                raise ConfigError(f"stage 1 needs the manifest field {segments_field!r} (an .npy of [N, 2] frame "
                                  f"segments) on every row; row {missing[0]} has none.")

    def __len__(self) -> int:
        return len(self.rows)

    def _audio(self, path) -> torch.Tensor:
        from zoo.audio import load_audio

        if self.cache is not None and path in self.cache:
            return self.cache[path]
        wave = load_audio(path, self.sample_rate, min_samples=2 * HOP)
        if self.cache is not None:
            self.cache[path] = wave
        return wave

    def _segments(self, row) -> np.ndarray:
        path = Path(row[self.segments_field])
        if not path.is_absolute():
            path = self.root / path
        segments = np.load(path, allow_pickle=False)
        return np.asarray(segments, dtype=np.int64).reshape(-1, 2)

    def _with_silence(self, wave: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """Whole frames of silence before and after ``wave``: (new wave, frames added before, silence alone)."""
        left, right = (int(torch.randint(self.pad_frames + 1, ()).item()) for _ in range(2))
        wave = torch.nn.functional.pad(wave, (left * HOP, right * HOP))
        level = 0.0 if float(torch.rand(())) < 0.25 else 10 ** ((-80.0 + 30.0 * float(torch.rand(()))) / 20)
        floor = level * torch.randn(wave.shape[0])
        if float(torch.rand(())) < self.silence_only:
            return floor, left, True
        return wave + floor, left, False

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        wave = self._audio(row["path"])
        shift, silent = 0, False
        if self.pad_frames:
            wave, shift, silent = self._with_silence(wave)
        frames = wave.shape[0] // HOP
        wave = wave[: frames * HOP]
        if frames > self.max_frames:
            offset = int(torch.randint(frames - self.max_frames, ()).item())
            wave = wave[offset * HOP: offset * HOP + self.max_len]
        else:
            offset = 0
        start, end = offset, offset + self.max_frames
        wave = torch.nn.functional.pad(wave, (BUFFER, BUFFER))
        item = {"wav": wave, "segments": None, "noise": None}
        if self.segments_field:
            segments = self._segments(row) + shift if not silent else np.zeros((0, 2), dtype=np.int64)
            overlap = np.minimum(segments[:, 1], end) - np.maximum(segments[:, 0], start) > 0
            item["segments"] = np.clip(segments[overlap] - start, 0, self.max_frames)
        elif self.energy_segments:
            item["segments"] = energy_syllables(wave)
        if self.noise_files:
            choice = self.noise_files[int(torch.randint(len(self.noise_files), ()).item())]
            noise = self._audio(choice)
            if noise.shape[0] > wave.shape[0]:
                at = int(torch.randint(noise.shape[0] - wave.shape[0] + 1, ()).item())
                noise = noise[at: at + wave.shape[0]]
            placed = torch.zeros_like(wave)
            at = int(torch.randint(wave.shape[0] - noise.shape[0] + 1, ()).item())
            placed[at: at + noise.shape[0]] = noise
            item["noise"] = placed
        return item


def collate_crops(items: list[dict]) -> dict:
    """z-score each crop (and its noise), zero-pad to the longest, keep true lengths."""
    waves = [znorm_processor(item["wav"]) for item in items]
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.long)
    batch = {
        "input_values": torch.nn.utils.rnn.pad_sequence(waves, batch_first=True),
        "lengths": lengths,
        "segments": None if items[0]["segments"] is None else [item["segments"] for item in items],
        "noise": None,
    }
    if items[0]["noise"] is not None:
        batch["noise"] = torch.nn.utils.rnn.pad_sequence([znorm_processor(i["noise"]) for i in items],
                                                         batch_first=True)
    return batch


class SylberTrainer(Trainer):
    """``zoo train sylber``: stage 1 (segments from files, or the energy stand-in) or stage 2 (online
    segmentation of the teacher's features with the adaptive Thresholder).

    Recipe sections: ``model``, ``data``, ``sylber``, ``noise``, ``tokenizer`` and ``report``
    (see ``config_defaults``). Logged per step: ``loss`` (:meth:`distillation_loss`),
    ``segments_per_second`` of the crops, and in stage 2 ``norm_threshold`` and ``merge_threshold``.
    Raises :class:`~zoo.errors.ConfigError` for settings out of range.
    """

    config_defaults = {
        "model": {"size": "tiny", "init": None, "overrides": {}},
        "data": {
            "train": "demo",          # JSONL manifest, audio folder, or 'demo' (bundled corpus)
            "eval": None,
            "max_len": 80000,         # crop length in samples (5 s, the official max_len)
            "segments_field": "segments",  # stage 1: manifest field -> .npy [N, 2] frame segments
            "noise_dir": None,        # folder of noise audio for additive noise (DNS in the paper)
            "cache_audio": False,     # keep decoded audio in memory (small corpora)
            "pad_silence": 0.0,       # seconds of silence (with a noise floor) added at most at each end; 0 = off
            "silence_only": 0.0,      # probability that an item is that silence alone
            "eval_items": 64,
        },
        "sylber": {
            "stage": 2,
            # stage 1 segments: "files" (manifest field data.segments_field -> .npy) or "energy"
            # (energy-valley segmenter; a stand-in for SD-HuBERT used by the offline demo)
            "stage1_segments": "files",
            "ema_decay": 1.0,                      # as released: the teacher stays at its init
            "merge_threshold_range": [0.8, 0.9],   # stage 2, drawn per batch
            "norm_threshold": None,                # stage 2: null = adaptive Thresholder; a number = fixed
            "thresholder": {"signal_mean": 6.10, "signal_var": 0.87, "noise_mean": 0.34, "noise_var": 0.34,
                            "decay": 0.9999},
            "use_train_thrupdate": True,           # noise stats from the student's norms (stage-2 setting)
        },
        "noise": {
            "enabled": True,
            "augment_prob": 0.2,
            "utterance_mix_ratio": 0.25,
            "shift_range": [0.0, 0.7],
            "magnitude_range": [0.05, 0.7],
            "utterance_magnitude_max_scale": 0.2,
        },
        "tokenizer": {"num_tokens": 0, "max_items": None, "batch_size": 8, "seed": 0},
        # After training (rank 0): segments/s of data.eval against its text's syllables/s, a silence check,
        # and `zoo segment` of one clip with its PNG. clip: a path, or "demo" (a bundled clip); null = off.
        "report": {"clip": None, "items": None, "silence_seconds": 0.5},
    }

    def __init__(self, config: dict):
        super().__init__(config)
        sylber = self.config["sylber"]
        if int(sylber["stage"]) not in (1, 2):
            raise ConfigError(f"sylber.stage must be 1 or 2, got {sylber['stage']!r}")
        self.stage = int(sylber["stage"])
        if sylber["stage1_segments"] not in ("files", "energy"):
            raise ConfigError(f"sylber.stage1_segments must be 'files' or 'energy', got {sylber['stage1_segments']!r}")
        self.energy_segments = self.stage == 1 and sylber["stage1_segments"] == "energy"
        low, high = (float(v) for v in sylber["merge_threshold_range"])
        if not low <= high:
            raise ConfigError(f"sylber.merge_threshold_range must be [low, high], got {sylber['merge_threshold_range']}")
        self.merge_range = (low, high)
        if not 0.0 <= float(sylber["ema_decay"]) <= 1.0:
            raise ConfigError(f"sylber.ema_decay must lie in [0, 1], got {sylber['ema_decay']}")
        self.ema_decay = float(sylber["ema_decay"])
        self.fixed_norm_threshold = None if sylber["norm_threshold"] is None else float(sylber["norm_threshold"])
        noise = self.config["noise"]
        self.noise_mixer = None if not noise["enabled"] else NoiseMixer(
            augment_prob=noise["augment_prob"], utterance_mix_ratio=noise["utterance_mix_ratio"],
            shift_range=noise["shift_range"], magnitude_range=noise["magnitude_range"],
            utterance_magnitude_max_scale=noise["utterance_magnitude_max_scale"])
        self.teacher = None
        self.thresholder = None
        if self.stage == 2:
            from zoo.speech.sylber.segment import Thresholder

            self.thresholder = Thresholder(**sylber["thresholder"])
        seed = int(self.config.get("train", {}).get("seed", 0) or 0)
        self.generator = torch.Generator().manual_seed(seed + 7919)  # merge thresholds and noise mixing
        self._seed = seed

    # ------------------------------------------------------------------ model and data
    def build_datasets(self):
        """:class:`SylberCropDataset` over ``data.train`` (no separate eval set: ``evaluate`` reads ``data.eval``)."""
        data = self.config["data"]
        rows, root = _read_rows(data["train"])
        from_files = self.stage == 1 and not self.energy_segments
        train = SylberCropDataset(rows, root, max_len=data["max_len"],
                                  segments_field=data["segments_field"] if from_files else None,
                                  noise_dir=data["noise_dir"], cache_audio=bool(data["cache_audio"]),
                                  energy_segments=self.energy_segments, pad_silence=float(data["pad_silence"]),
                                  silence_only=float(data["silence_only"]))
        return train, None

    def collate(self, items: list):
        """:func:`collate_crops`."""
        return collate_crops(items)

    # ------------------------------------------------------------------ teacher
    def _ensure_teacher(self, model) -> None:
        if self.teacher is None:
            # The teacher starts as a copy of the student at the start of the stage (official EMAModule).
            self.teacher = copy.deepcopy(model.hubert).eval().requires_grad_(False)

    def on_train_start(self, model) -> None:
        """Make the teacher (a frozen copy of the student's encoder) and move the Thresholder to the model's device."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Different noise mixing per rank (resume restores the state saved with the checkpoint).
            self.generator.manual_seed(self._seed + 7919 + torch.distributed.get_rank())
        self._ensure_teacher(model)
        self._has_mask_embed = hasattr(model.hubert, "masked_spec_embed")
        if self.thresholder is not None:
            self.thresholder.to(model.device)

    def on_step_end(self, model, step: int) -> None:
        """EMA update of the teacher when ``sylber.ema_decay`` < 1 (the released 1.0 keeps it frozen)."""
        if self.ema_decay < 1.0 and self.teacher is not None:
            with torch.no_grad():
                for ema, live in zip(self.teacher.parameters(), model.hubert.parameters()):
                    ema.lerp_(live.detach().to(ema.dtype), 1.0 - self.ema_decay)

    # ------------------------------------------------------------------ step
    def _norm_threshold(self) -> float:
        if self.fixed_norm_threshold is not None:
            return self.fixed_norm_threshold
        return float(self.thresholder.threshold())

    def _online_segments(self, teacher_states, frame_lengths):
        from zoo.speech.sylber.segment import segment as greedy_segment

        threshold = self._norm_threshold()
        low, high = self.merge_range
        merge = low + (high - low) * float(torch.rand((), generator=self.generator))
        segments = [np.asarray(greedy_segment(teacher_states[b, :n].float().cpu().numpy(), threshold, merge),
                               dtype=np.int64).reshape(-1, 2)
                    for b, n in enumerate(frame_lengths.tolist())]
        return segments, threshold, merge

    @staticmethod
    def targets(teacher_states: torch.Tensor, segments) -> torch.Tensor:
        """Distillation targets ``[B, L, D]``: each frame of a segment gets its segment's mean teacher
        feature (:func:`~zoo.speech.sylber.segment.segment_means`); frames in no segment stay zero.

        ``teacher_states`` ``[B, L, D]``; ``segments``: one int ``[N_b, 2]`` ``[start, end)`` frame array per row.
        """
        targets = torch.zeros_like(teacher_states)
        for b, frames in enumerate(segments):
            if len(frames) == 0:
                continue
            frames = torch.as_tensor(frames, dtype=torch.long).reshape(-1, 2)
            means = segment_means(teacher_states[b], frames)
            index = torch.cat([torch.arange(s, e) for s, e in frames.tolist()]).to(targets.device)
            repeats = (frames[:, 1] - frames[:, 0]).to(targets.device)
            targets[b, index] = means.repeat_interleave(repeats, dim=0)
        return targets

    def training_step(self, model, batch) -> dict:
        """Teacher features -> segments (files, energy, or online) -> targets -> student on the noisy input -> loss."""
        device = next(iter(self.teacher.parameters())).device if self.teacher is not None else None
        if self.teacher is None:
            raise ConfigError("SylberTrainer.on_train_start was not called before training_step")
        x = batch["input_values"].to(device)
        lengths = batch["lengths"].to(device)
        with torch.no_grad():
            teacher_out = self.teacher(x, lengths)
            teacher_states = teacher_out.last_hidden_state.float()
            frame_lengths = teacher_out.frame_lengths.to(device)
        valid = torch.arange(teacher_states.shape[1], device=device)[None, :] < frame_lengths[:, None]
        metrics = {}
        if batch["segments"] is not None:  # stage 1
            segments = batch["segments"]
            below = None
        else:  # stage 2
            segments, threshold, merge = self._online_segments(teacher_states, frame_lengths)
            norms = (teacher_states.pow(2).sum(-1) + 1e-8).sqrt()
            below = valid & (norms < threshold)
            if self.fixed_norm_threshold is None:
                signal = norms[valid & (norms >= threshold)]
                noise = None if self.config["sylber"]["use_train_thrupdate"] else norms[below]
                self.thresholder.update(signal, noise)
            metrics.update(norm_threshold=threshold, merge_threshold=merge)
        targets = self.targets(teacher_states, segments)

        student_in = x
        if self.noise_mixer is not None:
            noise = batch["noise"].to(device) if batch["noise"] is not None else None
            student_in = self.noise_mixer(x, noise, lengths, generator=self.generator)
        # mask_prob is 0.0 in both released configs: an explicit all-False mask, which also stops the
        # encoder's own SpecAugment (transformers applies it when no mask is given).
        no_mask = None
        if getattr(self, "_has_mask_embed", False):
            no_mask = torch.zeros(teacher_states.shape[:2], dtype=torch.bool, device=device)
        out = model(input_values=student_in, lengths=lengths, mask_time_indices=no_mask)
        states = out.last_hidden_state
        loss = self.distillation_loss(states, targets)

        if below is not None and self.fixed_norm_threshold is None and self.config["sylber"]["use_train_thrupdate"]:
            with torch.no_grad():
                student_norms = (states.detach().float().pow(2).sum(-1) + 1e-8).sqrt()
                self.thresholder.update(None, student_norms[below])
        seconds = float(lengths.sum() - 2 * BUFFER * lengths.numel()) / 16000
        metrics["segments_per_second"] = sum(len(s) for s in segments) / max(seconds, 1e-6)
        return {"loss": loss, **metrics}

    @staticmethod
    def distillation_loss(states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The official ``((H - target) ** 2).sum(-1).mean()``: squared error summed over the ``D``
        features, averaged over all ``B x L`` frames of the padded batch, padding frames included.

        ``states``, ``targets``: ``[B, L, D]``; computed in float32; returns a scalar tensor.
        """
        return (states.float() - targets.float()).pow(2).sum(-1).mean()

    # ------------------------------------------------------------------ evaluation and tokenizer
    def evaluate(self, model) -> dict:
        data = self.config["data"]
        if not data["eval"]:
            return {}
        from zoo.speech.sylber.evaluate import evaluate as evaluate_segments

        metrics = evaluate_segments(model, data=str(_resolve_manifest(data["eval"])), max_items=data["eval_items"])
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

    def on_train_end(self, model) -> None:
        """Fit the codebook (``tokenizer.num_tokens`` > 0) and print the report (``report.clip`` set, rank 0)."""
        if self.config["tokenizer"]["num_tokens"]:
            self.fit_tokenizer(model)
        if self.config["report"]["clip"] and getattr(self, "rank", 0) == 0:
            self.report(model)

    def report(self, model) -> dict:
        """Print what the demo is for: the model's segment rate against the text's syllable rate on
        ``data.eval``, how many segments fall in added silence, and ``zoo segment`` of one clip with
        its PNG, then where the model, the picture and the logs are. Returns the figures."""
        from zoo.speech.sylber.cli import segment_files
        from zoo.speech.sylber.evaluate import evaluate as evaluate_segments

        section, data = self.config["report"], self.config["data"]
        output = Path(self.output_dir or ".")
        figures: dict = {}
        lines = ["", f"Sylber result ({output}):"]
        if data["eval"]:
            rows, _ = _read_rows(data["eval"])
            rows = rows[: section["items"]] if section["items"] else rows
            metrics = evaluate_segments(model, data=rows, silence_seconds=float(section["silence_seconds"]))
            figures.update(metrics)
            if "syllables_per_second_text" in metrics:
                lines.append(f"  {metrics['segments_per_second_model']:.2f} segments per second against "
                             f"{metrics['syllables_per_second_text']:.2f} syllables per second in the text "
                             f"({len(rows)} clips, {metrics['seconds']:.0f} s; a syllable count error of "
                             f"{metrics['syllable_count_mae']:.2f} per clip)")
            else:
                lines.append(f"  {metrics['segments_per_second']:.2f} segments per second ({len(rows)} clips)")
            lines.append(f"  {metrics['segments_in_silence']} segments in the {metrics['silence_seconds']:g} s of "
                         f"silence added before and after each of those clips (noise floor "
                         f"{metrics['silence_noise_dbfs']:g} dBFS)")
        clip = str(demo_clip() if section["clip"] == "demo" else section["clip"])
        lines.append(f"  zoo segment {clip} --model {output / 'final'} --plot {output / 'segments.png'}:")
        print("\n".join(lines), flush=True)
        segment_files(model, [clip], plot=output / "segments.png", indent="    ")
        print(f"  model:    {output / 'final'}  (zoo.load(\"{output / 'final'}\"), written next)\n"
              f"  picture:  {output / 'segments.png'}\n"
              f"  logs:     {output / 'log.jsonl'} (TensorBoard: tensorboard --logdir {output})", flush=True)
        return figures

    def fit_tokenizer(self, model) -> dict:
        """Fit the k-means syllable codebook on the training data (final step when tokenizer.num_tokens > 0)."""
        from zoo.speech.sylber.tokenizer import fit_tokenizer

        tokenizer = self.config["tokenizer"]
        rows, _ = _read_rows(self.config["data"]["train"])
        report = fit_tokenizer(model, rows, int(tokenizer["num_tokens"]), batch_size=int(tokenizer["batch_size"]),
                               max_items=tokenizer["max_items"], seed=int(tokenizer["seed"]))
        logger.info("fitted a %d-token syllable codebook: %.2f tokens/s", report["num_tokens"],
                    report["tokens_per_second"])
        self.tokenizer_report = report
        return report

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Exact-resume state: the generator, the teacher's weights and the Thresholder's statistics."""
        state = {"generator": self.generator.get_state()}
        if self.teacher is not None:
            state["teacher"] = {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}
        if self.thresholder is not None:
            state["thresholder"] = {k: v.detach().cpu() for k, v in self.thresholder.state_dict().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (after ``on_train_start`` made the teacher)."""
        self.generator.set_state(state["generator"])
        if "teacher" in state:
            if self.teacher is None:
                raise ConfigError("resume: the teacher must exist (on_train_start) before load_state_dict")
            self.teacher.load_state_dict(state["teacher"], strict=True)
        if "thresholder" in state and self.thresholder is not None:
            self.thresholder.load_state_dict(state["thresholder"], strict=True)
