"""``zoo train ca-dino``: DINO, cluster-aware DINO and DLG-LC pseudo-label training.

``ca_dino.stage`` picks the objective:

* ``dino`` (Stage I, WeSpeaker v3): per utterance 2 global crops (300 frames = 3 s) and
  4 local crops (200 frames = 2 s); the student sees all 6, the teacher (EMA of the
  student, momentum 0.996 -> 1 on a cosine over training) the 2 global ones; DINO loss
  with centring and teacher temperature 0.04 -> 0.07 over the first 20% of epochs,
  student temperature 0.1; gradients clipped to norm 3.0 *per parameter*; the head's
  last layer gets no gradient during the first epoch (``freeze_last_layer``).
  With ``cluster.positives_from: cluster`` (CA-DINO), the crops of an anchor after the
  first are drawn from other utterances of its k-means cluster; clusters come from the
  current teacher's embeddings at the start and every ``cluster.every_epochs`` epochs.
* ``stage2`` (iterative pseudo-label training): k-means pseudo-labels from the current
  model (``model.init`` = the Stage I result) -> ECAPA + AAM-softmax on 2 s crops with
  DLG-LC (loss_gate.py); re-clustering every ``cluster.every_epochs`` epochs (a round).

The model the engine optimises is the *student*; the teacher lives here (saved in the
trainer state for exact resume) and is copied into the model after the last step, so
the saved model is the teacher, which evaluation uses
(``wenet-e2e/wespeaker:wespeaker/ssl/bin/average_dino_model.py``). In stage2 the
trained network itself is the result. Features are computed on the model's device:
kaldi fbank with dither 1.0 and CMN (fbank.py), after optional noise/RIR augmentation.

Labels in the manifest are never used for training: ``data.exclude_speakers`` only holds
voices out of the training set, and ``data.eval_speakers`` picks the verification trials.
"""
from __future__ import annotations

import copy
import logging
import math
import random
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ConfigError
from zoo.speech.ca_dino.cluster import ClusterPositives, kmeans_labels
from zoo.speech.ca_dino.dino_loss import DINOLoss, cosine_value, teacher_temperature
from zoo.speech.ca_dino.fbank import (
    FBANK_STATISTICS, NoiseReverb, fbank_statistics, random_crop, samples_for_frames, speed_perturb,
)
from zoo.speech.ca_dino.loss_gate import LossGateError, dlg_lc_loss, gmm_threshold, margin_at
from zoo.train import Trainer

logger = logging.getLogger("zoo.ca_dino")


def _resolve(value) -> Path:
    if value == "demo":
        from zoo.data import demo_corpus

        return Path(demo_corpus())
    if value in (None, ""):
        raise ConfigError("data.train is not set: give a JSONL manifest or an audio folder (data.train=PATH), "
                          "or 'demo' for the bundled corpus.")
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"data path {str(value)!r} does not exist; give a JSONL manifest, an audio folder or 'demo'.")
    return path


def read_split(value, *, exclude=None, only=None) -> list[dict]:
    """Manifest rows, without the ``exclude`` voices / with only the ``only`` voices.

    ``value``: a manifest, an audio folder or ``demo``, or a list of them (their rows joined in order).
    """
    from zoo.speech.ca_dino.evaluate import read_rows

    sources = list(value) if isinstance(value, (list, tuple)) else [value]
    if not sources:
        raise ConfigError("data.train is an empty list: give at least one manifest, audio folder or 'demo'.")
    rows = [row for source in sources for row in read_rows(_resolve(source))]
    exclude, only = set(map(str, exclude or [])), set(map(str, only or []))
    if exclude:
        rows = [r for r in rows if str(r.get("speaker")) not in exclude]
    if only:
        rows = [r for r in rows if str(r.get("speaker")) in only]
    if not rows:
        raise ConfigError(f"no utterances left in {value} (exclude={sorted(exclude)}, only={sorted(only)})")
    return rows


def _is_bias_or_norm(name: str, param: torch.Tensor) -> bool:
    return name.endswith(".bias") or param.dim() == 1


class _Audio:
    """Decoded audio of manifest rows (``zoo.audio.load_audio``), optionally speed-perturbed, with an
    optional in-memory cache keyed by (row, speed)."""

    def __init__(self, rows: list[dict], sample_rate: int, cache: bool):
        self.rows, self.sample_rate, self.cache = rows, sample_rate, cache
        self._store: dict[tuple[int, float], torch.Tensor] = {}

    def __call__(self, index: int, speed: float = 1.0) -> torch.Tensor:
        key = (index, float(speed))
        if key in self._store:
            return self._store[key]
        if speed != 1.0:
            wave = speed_perturb(self(index), speed)
        else:
            from zoo.audio import load_audio

            wave = load_audio(self.rows[index]["path"], self.sample_rate)
        if self.cache:
            self._store[key] = wave
        return wave


class MultiCropDataset(torch.utils.data.Dataset):
    """DINO crops per anchor utterance: {"global": [n_g, Lg], "local": [n_l, Ll], "index"}.

    Crop positions come from a per-(seed, epoch, index) RNG, so a resumed run sees the same crops.
    """

    def __init__(self, rows, *, sample_rate, global_samples, local_samples, n_global, n_local, cache, augment,
                 seed, speeds=()):
        self.audio = _Audio(rows, sample_rate, cache)
        self.speeds = tuple(float(s) for s in speeds)
        self.global_samples, self.local_samples = global_samples, local_samples
        self.n_global, self.n_local = n_global, n_local
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.positives: ClusterPositives | None = None

    def __len__(self) -> int:
        return len(self.audio.rows)

    def set_epoch(self, epoch: int) -> None:
        """Crops (and speeds) are drawn from a per-(seed, epoch, index) RNG."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        count = self.n_global + self.n_local
        if self.positives is None:
            sources = [index] * count
        else:  # CA-DINO: crops after the first come from other utterances of the anchor's cluster
            sources = [index] + self.positives.sample(index, count - 1, rng)
        # one speed for all crops of an anchor: a perturbed voice is a new voice (WeSpeaker's speed perturbation)
        speed = self.speeds[rng.randrange(len(self.speeds))] if self.speeds else 1.0
        crops = []
        for k, source in enumerate(sources):
            length = self.global_samples if k < self.n_global else self.local_samples
            crop = random_crop(self.audio(source, speed), length, rng)
            crops.append(self.augment(crop) if self.augment is not None else crop)
        return {"global": torch.stack(crops[:self.n_global]), "local": torch.stack(crops[self.n_global:]),
                "index": index}


class PseudoLabelDataset(torch.utils.data.Dataset):
    """Stage II items: one crop, its augmented copy and the utterance's pseudo-label."""

    def __init__(self, rows, *, sample_rate, crop_samples, cache, augment, seed):
        self.audio = _Audio(rows, sample_rate, cache)
        self.crop_samples, self.augment, self.seed = crop_samples, augment, seed
        self.epoch = 0
        self.labels = np.zeros(len(rows), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.audio.rows)

    def set_epoch(self, epoch: int) -> None:
        """Crops (and speeds) are drawn from a per-(seed, epoch, index) RNG."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        rng = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        clean = random_crop(self.audio(index), self.crop_samples, rng)
        augmented = self.augment(clean.clone()) if self.augment is not None else clean.clone()
        return {"clean": clean, "augmented": augmented, "label": int(self.labels[index]), "index": index}


def collate(items: list[dict]) -> dict:
    """Stack a list of dataset items: tensors along a new batch axis, numbers into a tensor."""
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return out


class CADinoTrainer(Trainer):
    """The ``zoo train ca-dino`` trainer: Stage I DINO (optionally cluster-aware) or Stage II DLG-LC (module docstring).

    Recipe sections and defaults are in ``config_defaults``; every key can be overridden on the
    command line (``cluster.positives_from=cluster``). The engine optimises the student; the
    EMA teacher, DINO centre, cluster labels and loss-gate state live here and are saved in
    the trainer state for exact resume.
    """
    config_defaults = {
        "model": {"size": "tiny", "init": None, "overrides": {}},
        "data": {
            "train": None,                # JSONL manifest, audio folder or 'demo', or a list of them (None: 'demo')
            "exclude_speakers": [],       # voices kept out of training (held out for verification)
            "eval": None,                 # manifest for EER during training (None = no evaluation)
            "eval_speakers": [],          # restrict evaluation to these voices
            "eval_max_trials": 20000,
            "eval_options": {},           # more evaluate() options, e.g. {mean: eval, baselines: true}
            "cache_audio": False,
            "noise_dir": None,            # MUSAN-style noise folder, optional
            "rir_dir": None,              # room impulse responses folder, optional
            "aug_prob": 1.0,              # WeSpeaker SSL recipe: 1.0 (v2 supervised: 0.6)
            "steps_per_epoch": None,      # default: len(train) // (batch_size * world_size)
            "speed_perturb": [],          # e.g. [0.9, 1.0, 1.1]: one speed per anchor, as a new voice (Stage I)
        },
        "ca_dino": {
            "stage": "dino",              # dino | stage2
            "global_frames": 300, "global_crops": 2,
            "local_frames": 200, "local_crops": 4,
            "student_temp": 0.1, "teacher_temp": 0.07, "warmup_teacher_temp": 0.04,
            "warmup_teacher_temp_epochs_ratio": 0.2,
            "center_momentum": 0.9,
            "momentum_teacher": 0.996,
            "clip_grad": 3.0,             # per-parameter gradient norm (WeSpeaker clip_gradients)
            "freeze_last_layer": 1,       # epochs without last-layer gradients
            "dither": 1.0,
        },
        "cluster": {
            "positives_from": "utterance",  # utterance | cluster (CA-DINO)
            "num_clusters": 8,
            "every_epochs": 0,            # 0 = cluster once at the start
            "init_features": "model",     # first clustering: model (its embeddings) | mean_fbank
            "seed": 0,
        },
        "stage2": {
            "crop_frames": 200,
            "margin": 0.2, "scale": 32.0,  # WeSpeaker v2 (wavlm_ssl_sv uses scale 30)
            "margin_increase_start": 20, "margin_fix_start": 40,  # 1-based epochs, WeSpeaker v2
            "gate_start_epoch": 5,         # DLG from this (0-based) epoch on
            "correction_start_epoch": 9,   # LC for epochs > 8
            "sharpen_temperature": 0.1,
            "confidence": 0.5,
        },
    }

    def __init__(self, config: dict):
        super().__init__(config)
        cfg = self.config["ca_dino"]
        if cfg["stage"] not in ("dino", "stage2"):
            raise ConfigError(f"ca_dino.stage must be 'dino' or 'stage2', got {cfg['stage']!r}")
        if self.config["cluster"]["positives_from"] not in ("utterance", "cluster"):
            raise ConfigError("cluster.positives_from must be 'utterance' or 'cluster'")
        if self.config["cluster"]["init_features"] not in ("model", *FBANK_STATISTICS):
            raise ConfigError(f"cluster.init_features must be 'model' or one of {', '.join(FBANK_STATISTICS)}")
        self.stage = cfg["stage"]
        self.teacher = None
        self.dino_loss = None
        self.epoch = 0
        self.gate_threshold: float | None = None
        self.epoch_losses: dict[int, float] = {}
        self.train_dataset = None
        self._pending_state = None
        self._hooks = []
        self._clustered = False  # True once labels exist (computed, or restored on resume)
        self._last_step = 0

    # ------------------------------------------------------------------ setup
    def _train_section(self) -> dict:
        return self.config.get("train", {}) or {}

    def build_model(self):
        """The student: ``model.init`` (a zoo name/folder) or a random ``model.size`` with ``model.overrides``.

        Stage II swaps the DINO head for a ``cluster.num_clusters``-way classifier.
        """
        import zoo
        from zoo.registry import get_family

        section = self.config["model"]
        overrides = dict(section.get("overrides") or {})
        if section.get("init"):
            # structural overrides (head / classifier) are applied after loading, so strict loading holds
            structural = {k: overrides.pop(k) for k in ("head", "num_classes") if k in overrides}
            model = zoo.load(section["init"], **overrides)
            if structural.get("head", {}).get("enabled") is False and model.projection_head is not None:
                model.drop_projection_head()
            if "num_classes" in structural:
                model.set_classifier(int(structural["num_classes"]))
        else:
            family = get_family("ca-dino")
            model = family.build(family.make_config(section.get("size") or "tiny", overrides, source="model.overrides"))
            if model.global_cmvn is not None:
                self._fit_global_cmvn(model)
        if self.stage == "stage2":
            if model.projection_head is not None:
                model.drop_projection_head()  # unused in Stage II (and unused parameters upset DDP)
            clusters = int(self.config["cluster"]["num_clusters"])
            if model.projection is None or model.projection.weight.shape[0] != clusters:
                model.set_classifier(clusters)
        if self.stage == "dino" and model.projection_head is None:
            raise ConfigError("DINO training needs the projection head: set model.overrides.head.enabled=true "
                              "or start from a model that has one")
        model.train()
        return model

    def _fit_global_cmvn(self, model) -> None:
        """Fit a fresh model's ``fbank.global_cmvn`` on the training clips (``data.train`` less
        ``data.exclude_speakers``, no speed perturbation); a model from ``model.init`` keeps its own."""
        from zoo.audio import load_audio

        data = self.config["data"]
        rows = read_split("demo" if data["train"] is None else data["train"], exclude=data["exclude_speakers"])
        model.fit_global_cmvn([load_audio(row["path"], 16000) for row in rows])
        logger.info("global CMVN fitted on %d training clips (mean log-mel %.2f .. %.2f, std %.2f .. %.2f)",
                    len(rows), float(model.global_cmvn.mean.min()), float(model.global_cmvn.mean.max()),
                    float(1 / model.global_cmvn.istd.max()), float(1 / model.global_cmvn.istd.min()))

    def _augment(self):
        data = self.config["data"]
        if not (data["noise_dir"] or data["rir_dir"]):
            return None
        return NoiseReverb(data["noise_dir"], data["rir_dir"], aug_prob=float(data["aug_prob"]),
                           seed=int(self._train_section().get("seed", 0) or 0))

    def build_datasets(self):
        """(MultiCropDataset or PseudoLabelDataset over ``data.train`` minus ``data.exclude_speakers``, None)."""
        data, cfg = self.config["data"], self.config["ca_dino"]
        rows = read_split("demo" if data["train"] is None else data["train"], exclude=data["exclude_speakers"])
        seed = int(self._train_section().get("seed", 0) or 0)
        if self.stage == "dino":
            self.train_dataset = MultiCropDataset(
                rows, sample_rate=16000, global_samples=samples_for_frames(cfg["global_frames"]),
                local_samples=samples_for_frames(cfg["local_frames"]), n_global=cfg["global_crops"],
                n_local=cfg["local_crops"], cache=bool(data["cache_audio"]), augment=self._augment(), seed=seed,
                speeds=data["speed_perturb"] or ())
        else:
            self.train_dataset = PseudoLabelDataset(
                rows, sample_rate=16000, crop_samples=samples_for_frames(self.config["stage2"]["crop_frames"]),
                cache=bool(data["cache_audio"]), augment=self._augment(), seed=seed)
        return self.train_dataset, None

    def collate(self, items: list):
        """Stack crops: global [B, n_global, samples] and local [B, n_local, samples] (Stage I),
        or clean / augmented [B, samples] (Stage II)."""
        return collate(items)

    def param_groups(self, model) -> list[dict]:
        """Two groups: weights with ``optim.weight_decay``; biases and 1-D parameters without
        (WeSpeaker ``get_params_groups``)."""
        # WeSpeaker get_params_groups: no weight decay on biases and 1-D (norm) parameters.
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if _is_bias_or_norm(name, param) else decay).append(param)
        weight_decay = float((self.config.get("optim") or {}).get("weight_decay", 0.0) or 0.0)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------ schedule bookkeeping
    def _world_size(self) -> int:
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def steps_per_epoch(self) -> int:
        """``data.steps_per_epoch``, else training utterances // (batch size x accumulation x processes), at least 1."""
        explicit = self.config["data"].get("steps_per_epoch")
        if explicit:
            return int(explicit)
        batch = int(self._train_section().get("batch_size", 1) or 1)
        accum = int(self._train_section().get("grad_accum", 1) or 1)
        size = len(self.train_dataset) if self.train_dataset is not None else batch
        return max(size // (batch * accum * self._world_size()), 1)

    def total_steps(self) -> int:
        """``train.max_steps`` (at least 1)."""
        return max(int(self._train_section().get("max_steps", 1) or 1), 1)

    def total_epochs(self) -> int:
        """Epochs the run spans (for the teacher-temperature warm-up); at least 1."""
        return max(math.ceil(self.total_steps() / self.steps_per_epoch()), 1)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, model) -> None:
        """Create the teacher and DINO loss (Stage I), install the gradient hooks, restore a pending
        resume state, and cluster."""
        cfg = self.config["ca_dino"]
        if self.stage == "dino":
            if self.teacher is None:
                # WeSpeaker dino_wrapper: teacher = deepcopy(student), head included; never back-propagated.
                self.teacher = copy.deepcopy(model).requires_grad_(False)
                self.dino_loss = DINOLoss(model.projection_head.last_layer.out_features,
                                          n_student_crops=cfg["global_crops"] + cfg["local_crops"],
                                          n_teacher_crops=cfg["global_crops"], student_temp=cfg["student_temp"],
                                          center_momentum=cfg["center_momentum"]).to(model.device)
            self._install_grad_hooks(model)
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None
        self._cluster_if_due(model, self.epoch, force=self._needs_initial_clusters() and not self._clustered)

    def _install_grad_hooks(self, model) -> None:
        """Per-parameter clipping (norm 3.0) and the first-epoch last-layer freeze, as tensor hooks.

        The engine clips the global norm; WeSpeaker clips each parameter's gradient separately, so
        the recipe sets train.clip_grad_norm: null and this does it. Hooks act on each process's
        local gradient before DDP averages them.
        """
        if self._hooks:
            return
        clip = float(self.config["ca_dino"]["clip_grad"] or 0)
        freeze_epochs = int(self.config["ca_dino"]["freeze_last_layer"] or 0)

        def make_hook(name):
            def hook(grad):
                if "last_layer" in name and self.epoch < freeze_epochs:
                    return torch.zeros_like(grad)
                if clip > 0:
                    norm = grad.norm(2)
                    coef = clip / (norm + 1e-6)
                    if coef < 1:
                        return grad * coef
                return grad
            return hook

        for name, param in model.named_parameters():
            if param.requires_grad:
                self._hooks.append(param.register_hook(make_hook(name)))

    def on_epoch_start(self, model, epoch: int) -> None:
        """Set the epoch for crops and schedules; Stage II refits the loss gate; re-cluster when due."""
        self.epoch = epoch
        if self.train_dataset is not None:
            self.train_dataset.set_epoch(epoch)
        if self.stage == "stage2":
            self._update_gate()
            self.epoch_losses = {}
        self._cluster_if_due(model, epoch)

    def on_step_end(self, model, step: int) -> None:
        """EMA update of the teacher (momentum on a cosine 0.996 -> 1); after the last step the model
        takes the teacher's weights."""
        self._last_step = step
        if self.stage == "dino" and self.teacher is not None:
            momentum = cosine_value(step - 1, self.total_steps(), float(self.config["ca_dino"]["momentum_teacher"]),
                                    1.0)
            with torch.no_grad():
                for ema, live in zip(self.teacher.parameters(), model.parameters()):
                    ema.mul_(momentum).add_(live.detach(), alpha=1 - momentum)
            if step >= self.total_steps():
                # The result of DINO training is the teacher: hand it to the engine to save.
                model.load_state_dict(self.teacher.state_dict())

    # ------------------------------------------------------------------ clustering
    def _needs_initial_clusters(self) -> bool:
        return self.stage == "stage2" or self.config["cluster"]["positives_from"] == "cluster"

    def _cluster_if_due(self, model, epoch: int, force: bool = False) -> None:
        if not self._needs_initial_clusters():
            return
        every = int(self.config["cluster"]["every_epochs"] or 0)
        due = force or (every > 0 and epoch > 0 and epoch % every == 0)
        if not due or self.train_dataset is None:
            return
        labels, centroids = self.cluster(model)
        self._clustered = True
        if self.stage == "dino":
            self.train_dataset.positives = ClusterPositives(labels)
        else:
            self.train_dataset.labels = labels
            if centroids.shape[1] == model.projection.weight.shape[1]:  # not for fbank-statistics clusters
                with torch.no_grad():  # a new round: class centres start at the cluster centroids
                    weight = torch.nn.functional.normalize(torch.from_numpy(centroids), dim=-1)
                    model.projection.weight.copy_(weight.to(model.projection.weight))

    @torch.no_grad()
    def cluster(self, model) -> tuple[np.ndarray, np.ndarray]:
        """k-means on the current embeddings (teacher in Stage I) of every training utterance.

        The first clustering of a run uses ``cluster.init_features``: the model's embeddings, or
        the mean log-mel vector of each utterance (``mean_fbank``), which already groups the
        utterances of one voice far better than an untrained network does.
        """
        cluster = self.config["cluster"]
        encoder = self.teacher if self.teacher is not None else model
        audio = self.train_dataset.audio
        waves = [audio(i) for i in range(len(self.train_dataset))]
        if not self._clustered and cluster["init_features"] != "model":
            embeddings = fbank_statistics(waves, cluster["init_features"])
        else:
            embeddings = encoder.embed(waves, 16000)
        labels, centroids = kmeans_labels(embeddings, int(cluster["num_clusters"]), seed=int(cluster["seed"]))
        counts = np.bincount(labels, minlength=int(cluster["num_clusters"]))
        logger.info("k-means: %d clusters over %d utterances (sizes %d..%d)", len(counts), len(labels),
                    counts.min(), counts.max())
        encoder.train()
        return labels, centroids

    # ------------------------------------------------------------------ DLG-LC bookkeeping
    def _update_gate(self) -> None:
        losses = self._gather_losses()
        gate_start = int(self.config["stage2"]["gate_start_epoch"])
        if self.epoch < gate_start or len(losses) < 4:
            return
        try:
            self.gate_threshold = gmm_threshold(np.asarray(losses))
            logger.info("epoch %d: loss gate log-threshold %.4f", self.epoch, self.gate_threshold)
        except LossGateError as err:  # keep the previous threshold (or none) rather than stop training
            logger.warning("epoch %d: %s", self.epoch, err)

    def _gather_losses(self) -> list[float]:
        values = list(self.epoch_losses.values())
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = [v for part in gathered for v in part]
        return values

    # ------------------------------------------------------------------ steps
    def _fbank(self, model, waves: torch.Tensor, device) -> torch.Tensor:
        unwrapped = getattr(model, "module", model)
        feats, _ = unwrapped.fbank(waves.to(device, non_blocking=True), dither=float(self.config["ca_dino"]["dither"]))
        return feats

    def training_step(self, model, batch) -> dict:
        """``{"loss": scalar, ...}`` of a DINO step (multi-crop) or a Stage II step (gated AAM-softmax)."""
        unwrapped = getattr(model, "module", model)
        device = unwrapped.device
        if self.stage == "dino":
            return self._dino_step(model, batch, device)
        return self._stage2_step(model, batch, device)

    def _dino_step(self, model, batch, device) -> dict:
        cfg = self.config["ca_dino"]
        g, lo = batch["global"], batch["local"]
        # crop-major order (crop, batch) as WeSpeaker's executor: chunk(n_crops) yields one view per chunk
        global_feats = self._fbank(model, g.transpose(0, 1).reshape(-1, g.shape[-1]), device)
        local_feats = self._fbank(model, lo.transpose(0, 1).reshape(-1, lo.shape[-1]), device)
        student = model([global_feats, local_feats])["head"]
        with torch.no_grad():
            self.teacher.train()  # WeSpeaker's teacher runs in train mode (its BN statistics update)
            teacher = self.teacher(global_feats)["head"]
        temperature = teacher_temperature(self.epoch, self.total_epochs(), warmup_temp=cfg["warmup_teacher_temp"],
                                          final_temp=cfg["teacher_temp"],
                                          warmup_ratio=cfg["warmup_teacher_temp_epochs_ratio"])
        loss = self.dino_loss(student, teacher, temperature)
        return {"loss": loss, "teacher_temp": temperature}

    def _stage2_step(self, model, batch, device) -> dict:
        cfg = self.config["stage2"]
        augmented = self._fbank(model, batch["augmented"], device)
        clean = self._fbank(model, batch["clean"], device)
        cosine = model([augmented, clean], head=False)["cosine"]
        cosine_aug, cosine_clean = cosine.chunk(2)
        labels = batch["label"].to(device)
        margin = margin_at(self.epoch + 1, final_margin=float(cfg["margin"]),
                           increase_start=cfg["margin_increase_start"],
                           fix_start=cfg["margin_fix_start"])
        loss, per_sample, stats = dlg_lc_loss(
            cosine_aug, labels, cosine_clean, threshold=self.gate_threshold,
            correct=self.epoch >= int(cfg["correction_start_epoch"]), margin=margin, scale=float(cfg["scale"]),
            temperature=float(cfg["sharpen_temperature"]), confidence=float(cfg["confidence"]))
        for index, value in zip(batch["index"].tolist(), per_sample.tolist()):
            self.epoch_losses[int(index)] = float(value)
        return {"loss": loss, "margin": margin, **stats}

    # ------------------------------------------------------------------ evaluation
    def eval_options(self) -> dict:
        """The options of ``zoo.speech.ca_dino.evaluate.evaluate`` this run evaluates with (and ``zoo eval`` takes)."""
        data = self.config["data"]
        options = {"speakers": ",".join(map(str, data["eval_speakers"])) or None,
                   "max_trials": int(data["eval_max_trials"])}
        options.update(data.get("eval_options") or {})
        return options

    def evaluate(self, model) -> dict:
        """Verification metrics on ``data.eval`` with the teacher (Stage I) or the model (Stage II).

        The same call as ``zoo eval <final> --data <data.eval> key=value ...`` with
        :meth:`eval_options`, so the figures the log prints at the last step are the ones that
        command prints for the saved model. Returns the numeric metrics (``eer_percent``, ...).
        """
        data = self.config["data"]
        if not data["eval"]:
            return {}
        from zoo.speech.ca_dino.evaluate import evaluate as evaluate_verification

        encoder = self.teacher if self.teacher is not None else getattr(model, "module", model)
        was_training = encoder.training
        options = self.eval_options()
        try:
            metrics = evaluate_verification(encoder, data=str(_resolve(data["eval"])), det=False, **options)
        finally:
            encoder.train(was_training)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._last_step >= self.total_steps() and self.rank == 0:
            self._report(numbers, options)
        return numbers

    def _report(self, metrics: dict, options: dict) -> None:
        """The last evaluation in words, with the command that prints the same figures for the saved model."""
        text = (f"held-out evaluation ({metrics['num_utterances']} utterances, {metrics['num_trials']} trials, "
                f"{metrics['num_target']} target): EER {metrics['eer_percent']:.2f}% (trained model)")
        for kind, label in (("mean_fbank", "mean log-mel vector"), ("mean_std_fbank", "mean+std log-mel vector")):
            if f"{kind}_eer_percent" in metrics:
                text += f", {metrics[f'{kind}_eer_percent']:.2f}% ({label}, no model)"
        final = Path(str(self.output_dir)) / "final" if self.output_dir is not None else "<output_dir>/final"
        args = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()
                        if v is not None)
        logger.info("%s\n  the same figures for the saved model: zoo eval %s --data %s %s", text, final,
                    self.config["data"]["eval"], args)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Everything exact resume needs besides the model: epoch, teacher, centre, cluster labels, loss-gate state."""
        state = {"epoch": self.epoch, "gate_threshold": self.gate_threshold,
                 "epoch_losses": dict(self.epoch_losses)}
        if self.teacher is not None:
            state["teacher"] = {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}
            state["center"] = self.dino_loss.center.detach().cpu()
        if self.train_dataset is not None:
            if isinstance(self.train_dataset, PseudoLabelDataset):
                state["labels"] = torch.from_numpy(self.train_dataset.labels.copy())
            elif self.train_dataset.positives is not None:
                state["cluster_labels"] = torch.from_numpy(self.train_dataset.positives.labels.copy())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (Stage I: deferred until ``on_train_start`` has built the teacher)."""
        if self.stage == "dino" and self.teacher is None:
            self._pending_state = state  # restored in on_train_start, once the teacher exists
            return
        self._restore(state)

    def _restore(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.gate_threshold = state.get("gate_threshold")
        self.epoch_losses = dict(state.get("epoch_losses", {}))
        if "teacher" in state and self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"], strict=True)
            self.dino_loss.center.copy_(state["center"])
        if "labels" in state and self.train_dataset is not None:
            self.train_dataset.labels = state["labels"].numpy().copy()
            self._clustered = True
        if "cluster_labels" in state and self.train_dataset is not None:
            self.train_dataset.positives = ClusterPositives(state["cluster_labels"].numpy())
            self._clustered = True
