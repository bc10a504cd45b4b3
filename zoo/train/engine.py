"""The training engine: one loop for every family (``zoo train``, ``zoo.train.run``).

``run(config)`` seeds everything, builds the trainer's model and data, trains with gradient
accumulation, clipping, bf16 autocast on CUDA, logs (JSONL, TensorBoard, tqdm), evaluates,
checkpoints atomically and resumes exactly (model, optimizer, scheduler, trainer state, RNG
states and data position), under torchrun with DDP or FSDP, and saves the final model in zoo
format to ``output_dir/final``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from zoo.config import check_paths
from zoo.errors import ConfigError, OutputExistsError, ZooError
from zoo.files import LOCK_PID_FILE, FolderLock, write_json, write_text
from zoo.train import distributed as D
from zoo.train import lora as LORA
from zoo.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from zoo.train.logs import LOG_FILE, TENSORBOARD_DIR, RunLogger, truncate_log
from zoo.train.recipe import complete_config
from zoo.train.sampler import ResumableBatchSampler
from zoo.train.schedule import build_optimizer, build_scheduler

logger = logging.getLogger("zoo.train")

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
FINAL_DIR = "final"
ENGINE_OUTPUTS = ("checkpoints", FINAL_DIR, TENSORBOARD_DIR, LOG_FILE, RUN_FILE, CONFIG_FILE)
# keys that may differ between a finished run and a request to resume it
_RUN_ONLY_KEYS = ("resume", "overwrite", "progress", "device", "num_workers")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch's CPU/CUDA generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(choice: str, info: D.DistInfo) -> torch.device:
    """``train.device`` (auto, cpu, cuda, cuda:N) -> a ``torch.device``; under torchrun ``cuda`` is this rank's GPU.

    Raises :class:`~zoo.errors.ConfigError` when CUDA is asked for and none is visible.
    """
    from zoo.api import parse_device

    choice = str(choice or "auto").lower()
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(choice, name="train.device")
    if choice == "cuda":
        return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` (auto, bf16, fp32) on ``device``: ``torch.bfloat16`` on a CUDA
    GPU that supports it, else None (fp32). Raises ``ConfigError`` for bf16 without such a GPU.
    """
    precision = str(precision or "auto").lower()
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "bf16":
            raise ConfigError("train.precision=bf16 needs a CUDA device (bf16 autocast is CUDA-only here); "
                              "use train.precision=auto or fp32 on CPU.")
        return None
    if not torch.cuda.is_bf16_supported():
        if precision == "bf16":
            raise ConfigError("This GPU does not support bf16; use train.precision=fp32.")
        return None
    return torch.bfloat16


def to_device(batch, device: torch.device):
    """Move the tensors of a batch (tensor, dict, list or tuple, nested) to ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _scalar(value):
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item()) if value.numel() == 1 else None
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.floating, np.integer)):
        return float(value)
    return None


def _comparable(config: dict) -> dict:
    out = json.loads(json.dumps(config, default=str))
    for key in _RUN_ONLY_KEYS:
        out.get("train", {}).pop(key, None)
    return out


# ---------------------------------------------------------------------------- output folder

def _prepare_output(output_dir: Path, config: dict) -> dict:
    """Decide fresh / resume / done for this output folder (rank 0). Returns a plan dict."""
    train = config["train"]
    resume, overwrite = train["resume"], bool(train["overwrite"])
    if isinstance(resume, str) and resume.lower() in ("true", "false", "auto"):
        resume = {"true": True, "false": False, "auto": "auto"}[resume.lower()]
    if isinstance(resume, str) and resume != "auto":
        path = Path(resume).expanduser()
        if not path.exists():
            raise ConfigError(f"train.resume={resume!r} does not exist; point it at a checkpoints/step-* folder.")
        output_dir.mkdir(parents=True, exist_ok=True)
        return {"action": "resume", "checkpoint": str(path)}
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"train.output_dir={output_dir} is a file; choose a folder.")
    if overwrite and output_dir.is_dir():
        for name in ENGINE_OUTPUTS:
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return {"action": "fresh"}
    if not output_dir.is_dir() or not any(p.name != LOCK_PID_FILE for p in output_dir.iterdir()):
        if resume is True:
            raise ConfigError(f"--resume: {output_dir} holds no checkpoint to resume from.")
        return {"action": "fresh"}
    run_file = output_dir / RUN_FILE
    if not run_file.is_file():
        raise OutputExistsError(f"{output_dir} is not empty and holds no zoo training run; choose another "
                                "train.output_dir or pass --overwrite (train.overwrite=true).")
    previous = json.loads(run_file.read_text(encoding="utf-8"))
    same = _comparable(previous.get("config", {})) == _comparable(config)
    if previous.get("status") == "finished" and (output_dir / FINAL_DIR).is_dir():
        if not same:
            raise OutputExistsError(f"{output_dir} holds a different finished run; choose another train.output_dir, "
                                    "or pass --overwrite (train.overwrite=true) to replace it.")
        if resume is False:
            raise OutputExistsError(f"{output_dir} holds this finished run already; pass --overwrite to train again.")
        return {"action": "done"}
    checkpoint = latest_checkpoint(output_dir)
    if resume is False:
        raise OutputExistsError(f"{output_dir} holds an unfinished run; resume it (train.resume=auto, --resume), "
                                "or pass --overwrite to start again.")
    if checkpoint is None:
        if resume is True:
            raise ConfigError(f"--resume: {output_dir} holds no checkpoint yet; start again with --overwrite.")
        return {"action": "fresh"}
    if not same:
        logger.warning("resuming %s with a config that differs from the one it started with", output_dir)
    return {"action": "resume", "checkpoint": str(checkpoint)}


def _remove_unused_folder(output_dir: Path) -> None:
    """Remove the output folder a fresh run created when a user error stops it before it wrote anything but
    its claim (``run.json``, the lock's pid file): fixing the recipe and rerunning then meets no leftover."""
    if output_dir.is_dir() and all(p.name in (RUN_FILE, LOCK_PID_FILE) for p in output_dir.iterdir()):
        shutil.rmtree(output_dir, ignore_errors=True)


def _write_run_file(output_dir: Path, config: dict, status: str, step: int) -> None:
    record = {"status": status, "step": step, "final": FINAL_DIR, "config": json.loads(json.dumps(config, default=str))}
    write_json(output_dir / RUN_FILE, record)


# ---------------------------------------------------------------------------- data stream

class _BatchStream:
    """Batches across epochs from the resumable sampler, calling the epoch hooks; knows its position."""

    def __init__(self, dataset, sampler: ResumableBatchSampler, trainer, model, *, num_workers: int, seed: int,
                 pin_memory: bool, epoch: int, batches_done: int):
        self.dataset, self.sampler, self.trainer, self.model = dataset, sampler, trainer, model
        self.num_workers, self.seed, self.pin_memory = num_workers, seed, pin_memory
        self.epoch, self.batches_done = epoch, batches_done
        self._iterator = None
        self._resumed_mid_epoch = batches_done > 0

    def _start_epoch(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        if not self._resumed_mid_epoch:  # the hook ran before the checkpoint; its effects are in trainer state
            self.trainer.on_epoch_start(self.model, self.epoch)
        self._resumed_mid_epoch = False
        self.sampler.set_position(self.epoch, self.batches_done)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=self.trainer.collate, num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # a private generator: worker seeds per epoch, and the global torch RNG is left alone
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        self._iterator = iter(loader)

    def next(self):
        if self.batches_done >= self.sampler.batches_per_epoch:
            self.epoch += 1
            self.batches_done = 0
            self._iterator = None
        if self._iterator is None:
            self._start_epoch()
        batch = next(self._iterator)
        self.batches_done += 1
        return batch


# ---------------------------------------------------------------------------- run

def run(config: dict, trainer_cls=None) -> Path:
    """Train as the recipe says; returns ``output_dir/final`` (a zoo-format folder).

    ``config`` is a recipe dict (``zoo.train.load_recipe``); missing sections take the engine's and the
    trainer's defaults. The run holds an OS lock on ``train.output_dir`` while it trains, resumes from the
    folder's latest checkpoint (``train.resume=auto``), and on Ctrl-C saves a checkpoint of the last finished
    step before raising ``KeyboardInterrupt``. Under torchrun (RANK / WORLD_SIZE set) every process calls
    ``run``; rank 0 writes.

    Raises :class:`~zoo.errors.ConfigError` (bad settings, missing data paths),
    :class:`~zoo.errors.OutputExistsError` (a folder holding something else), :class:`~zoo.errors.OutputInUseError`
    (another live run holds the folder), :class:`~zoo.errors.ZooError` (a non-finite loss).
    """
    config, trainer_cls = complete_config(config, trainer_cls)
    train = config["train"]
    use_cuda = str(train["device"]).startswith("cuda") or (train["device"] == "auto" and torch.cuda.is_available())
    info = D.init_distributed(use_cuda)
    try:
        return _run(config, trainer_cls, info)
    finally:
        D.cleanup(info)


def _check_train_section(train: dict) -> None:
    for key in ("max_steps", "batch_size", "grad_accum", "log_every"):
        if train[key] is None or int(train[key]) < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {train[key]!r}")
    for key in ("ckpt_every", "eval_every", "keep_last", "num_workers"):
        if train[key] is not None and int(train[key]) < 0:
            raise ConfigError(f"train.{key} must be >= 0, got {train[key]!r}")
    _progress_flag(train["progress"])


def _run(config: dict, trainer_cls, info: D.DistInfo) -> Path:
    with contextlib.ExitStack() as held:  # the output folder's lock, released however the run ends
        return _train(config, trainer_cls, info, held)


def _train(config: dict, trainer_cls, info: D.DistInfo, held: contextlib.ExitStack) -> Path:
    train = config["train"]
    _check_train_section(train)
    device = pick_device(train["device"], info)
    amp_dtype = autocast_dtype(train["precision"], device)
    output_dir = Path(str(train["output_dir"])).expanduser()
    final_dir = output_dir / FINAL_DIR

    plan: dict | str | None = None
    failure: ZooError | None = None
    existed = output_dir.exists()
    if info.is_main:
        try:
            check_paths(config, getattr(trainer_cls, "path_keys", ()) or ())
            if output_dir.exists() and not output_dir.is_dir():
                raise OutputExistsError(f"train.output_dir={output_dir} is a file; choose a folder.")
            # One run per folder: a second `zoo train` into it fails here, naming the first one's pid.
            held.enter_context(FolderLock(output_dir, what="train.output_dir"))
            plan = _prepare_output(output_dir, config)
        except ZooError as err:
            failure, plan = err, f"{type(err).__name__}\0{err}"
    plan = D.broadcast_object(plan, info)
    if isinstance(plan, str):  # every rank raises rank 0's error (no rank is left waiting)
        if failure is not None:
            raise failure
        import zoo.errors as errors

        name, _, message = plan.partition("\0")
        try:
            raise getattr(errors, name, ZooError)(message)
        except TypeError:
            raise ZooError(message) from None
    if plan["action"] == "done":
        logger.info("%s already holds this finished run; nothing to do", output_dir)
        return final_dir
    if info.is_main and plan["action"] == "fresh":
        # Claim the folder before the trainer writes into it (e.g. pseudo-labels made in build_datasets),
        # so a run stopped during that preparation starts again instead of finding a "foreign" folder.
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_run_file(output_dir, config, "preparing", 0)

    max_steps = int(train["max_steps"])
    seed = int(train["seed"] or 0)
    seed_everything(seed)
    trainer = trainer_cls(config)
    trainer.device, trainer.rank, trainer.world_size, trainer.output_dir = device, info.rank, info.world_size, output_dir
    try:
        model = trainer.build_model()
        if LORA.enabled(train["lora"]):  # peft LoRA layers; only they train (zoo.train.lora)
            LORA.apply(model, train["lora"])
        model.to(device)
        train_set, _eval_set = trainer.build_datasets()
        if train_set is None:
            raise ConfigError(f"{trainer_cls.__name__}.build_datasets returned no training dataset.")
    except ZooError:
        if info.is_main and plan["action"] == "fresh" and not existed:
            _remove_unused_folder(output_dir)
        raise

    state = None
    if plan["action"] == "resume":
        state = load_checkpoint(plan["checkpoint"])
        if "model" in state and (train["distributed"] != "fsdp" or not info.enabled):
            from zoo.hub import load_state_dict_strict

            load_state_dict_strict(model, state["model"], plan["checkpoint"])
        logger.info("resuming from %s (step %d)", plan["checkpoint"], state["step"])
    trainer.on_train_start(model)
    if state is not None:
        trainer.load_state_dict(state.get("trainer") or {})

    wrapped = D.wrap_model(model, info, device, train["distributed"], bool(train["find_unused_parameters"]),
                           fsdp_options=train["fsdp"], trainer=trainer)
    optimizer = build_optimizer(trainer.param_groups(model), config["optim"])
    scheduler = build_scheduler(optimizer, config["schedule"], max_steps, trainer.lr_factors(optimizer))
    sampler = ResumableBatchSampler(len(train_set), int(train["batch_size"]), seed=seed,
                                    shuffle=bool(train["shuffle"]), drop_last=bool(train["drop_last"]),
                                    rank=info.rank, world_size=info.world_size)
    step, epoch, batches_done = 0, 0, 0
    if state is not None:
        if (train["distributed"] == "fsdp" and info.enabled) or "model" not in state:
            _fsdp_load(wrapped, optimizer, state, plan["checkpoint"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, batches_done = int(state["step"]), int(state["epoch"]), int(state["batches_done"])
        rngs = state["rng"]
        set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
        del state
    else:
        seed_everything(seed + info.rank)  # ranks draw different augmentations; weights came from one seed

    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if plan["action"] == "resume":
            truncate_log(output_dir / LOG_FILE, step)
        else:
            (output_dir / LOG_FILE).unlink(missing_ok=True)
        write_text(output_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
        _write_run_file(output_dir, config, "running", step)
    from zoo.nn import attention_backend

    logger.info("training %s on %s (%d process%s), attention backend %s, precision %s", trainer_cls.__name__,
                device, info.world_size, "es" if info.world_size > 1 else "", attention_backend(device),
                "bf16 autocast" if amp_dtype else "fp32")
    run_log = RunLogger(output_dir, enabled=info.is_main, tensorboard=bool(train["tensorboard"]),
                        progress=_progress_flag(train["progress"]), total_steps=max_steps, start_step=step,
                        batch_size=int(train["batch_size"]) * int(train["grad_accum"]) * info.world_size)
    stream = _BatchStream(train_set, sampler, trainer, model, num_workers=int(train["num_workers"]), seed=seed,
                          pin_memory=device.type == "cuda", epoch=epoch, batches_done=batches_done)
    try:
        with StopRequest() as stop:
            _loop(trainer, model, wrapped, optimizer, scheduler, stream, run_log, info, device, amp_dtype, config,
                  step, output_dir, stop)
    finally:
        run_log.close()

    trainer.on_train_end(model)
    D.barrier(info)
    if train["distributed"] == "fsdp" and info.enabled:
        _fsdp_save_final(trainer, wrapped, final_dir, info)
    elif info.is_main:
        LORA.final_model(model, train["lora"]).save_pretrained(final_dir, overwrite=True)
    if info.is_main:
        _write_run_file(output_dir, config, "finished", max_steps)
    D.barrier(info)
    return final_dir


def _progress_flag(value):
    """``train.progress``: auto (a bar on a terminal, plain lines otherwise) | bar | lines | false."""
    if isinstance(value, bool):
        return "bar" if value else "off"
    choice = {"true": "bar", "false": "off"}.get(str(value).lower(), str(value).lower())
    if choice not in ("auto", "bar", "lines", "off"):
        raise ConfigError(f"train.progress must be auto, bar, lines or false, got {value!r}")
    return choice


class StopRequest:
    """Ctrl-C (SIGINT) during training: finish the current step, save a checkpoint of it, then stop.

    The first SIGINT only sets ``requested`` (the loop checks it after each optimizer step); a second
    one restores Python's handler and interrupts at once. Installed only in the main thread.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True
        print("\nzoo train: Ctrl-C: stopping after this step and saving a checkpoint of it "
              "(press Ctrl-C again to quit at once, without one)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _loop(trainer, model, wrapped, optimizer, scheduler, stream, run_log, info, device, amp_dtype, config,
          step, output_dir, stop: StopRequest | None = None):
    train = config["train"]
    max_steps, accum = int(train["max_steps"]), int(train["grad_accum"])
    log_every, eval_every, ckpt_every = int(train["log_every"]), int(train["eval_every"] or 0), int(train["ckpt_every"] or 0)
    clip = train["clip_grad_norm"]
    batch_size = int(train["batch_size"])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    window: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    model.train()
    while step < max_steps:
        step_sums: dict[str, float] = {}
        for micro in range(accum):
            batch = to_device(stream.next(), device)
            sync = contextlib.nullcontext()
            if micro < accum - 1 and hasattr(wrapped, "no_sync"):
                sync = wrapped.no_sync()  # DDP: all-reduce once per optimizer step
            autocast = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
            with sync:
                with autocast:
                    out = trainer.training_step(wrapped, batch)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise ZooError(f"The loss is {loss.item()} at step {step + 1}; lower optim.lr, set "
                                   "train.clip_grad_norm, or check the data. Resume from the last checkpoint.")
                (loss / accum).backward()
            for key, value in out.items():
                number = _scalar(value)
                if number is not None:
                    step_sums[key] = step_sums.get(key, 0.0) + number / accum
        if clip is not None and float(clip) > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float(clip))
            step_sums["grad_norm"] = float(grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        trainer.on_step_end(model, step)
        for key, value in step_sums.items():
            window[key] = window.get(key, 0.0) + value
        window_steps += 1
        run_log.step(step_sums.get("loss"))

        if step % log_every == 0 or step == max_steps:
            keys = sorted(window)
            means = D.mean_across_ranks([window[k] / window_steps for k in keys], info, device)
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            record = {"step": step, "epoch": stream.epoch, "lr": lr, **dict(zip(keys, means)),
                      "samples_per_s": window_steps * accum * batch_size * info.world_size / elapsed,
                      "time": time.time()}
            run_log.log(record)
            run_log.progress_line(record)
            window, window_steps, window_start = {}, 0, time.perf_counter()

        if eval_every and step % eval_every == 0:
            model.eval()
            with torch.no_grad():
                metrics = trainer.evaluate(model) or {}
            model.train()
            numbers = {k: _scalar(v) for k, v in metrics.items() if _scalar(v) is not None}
            if numbers:
                logger.info("step %d eval: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
                run_log.log({"step": step, "eval": numbers})

        saved = ckpt_every and step % ckpt_every == 0 and step < max_steps
        if saved:
            _checkpoint(trainer, model, wrapped, optimizer, scheduler, stream, info, config, step, output_dir)
        if stop is not None and step < max_steps and D.any_across_ranks(stop.requested, info, device):
            if not saved:
                _checkpoint(trainer, model, wrapped, optimizer, scheduler, stream, info, config, step, output_dir)
            if info.is_main:
                print(f"zoo train: stopped at step {step}/{max_steps}; checkpoint in {output_dir / 'checkpoints'}. "
                      "Run the same command again to resume.", file=sys.stderr, flush=True)
            raise KeyboardInterrupt


def _checkpoint(trainer, model, wrapped, optimizer, scheduler, stream, info, config, step, output_dir):
    rngs = D.gather_objects(rng_state(), info)
    fsdp = config["train"]["distributed"] == "fsdp" and info.enabled
    shards = None
    if fsdp:  # every rank writes its own shard of model and optimizer (torch.distributed.checkpoint)
        from zoo.train import fsdp as FSDP

        shards = output_dir / "checkpoints" / f".shards-step-{step:08d}"
        if info.is_main:
            shutil.rmtree(shards, ignore_errors=True)
        D.barrier(info)
        shards = FSDP.save_sharded(wrapped, optimizer, shards)
        D.barrier(info)
    if info.is_main:
        payload = {
            "step": step, "epoch": stream.epoch, "batches_done": stream.batches_done,
            **({"sharded": "dcp"} if fsdp else {"model": model.state_dict(), "optimizer": optimizer.state_dict()}),
            "scheduler": scheduler.state_dict(),
            "trainer": trainer.state_dict(),
            "rng": rngs, "world_size": info.world_size,
        }
        path = save_checkpoint(output_dir, step, payload, keep_last=int(config["train"]["keep_last"] or 0),
                               meta={"epoch": stream.epoch, "batches_done": stream.batches_done,
                                     "world_size": info.world_size}, include=shards)
        if shards is not None:
            shutil.rmtree(shards.parent, ignore_errors=True)
        _write_run_file(output_dir, config, "running", step)
        logger.info("saved checkpoint %s", path)
    D.barrier(info)


def _fsdp_load(wrapped, optimizer, state, checkpoint) -> None:
    """Model and optimizer state of an FSDP checkpoint: sharded (DCP) or, from older checkpoints, full."""
    from zoo.train import fsdp as FSDP

    if state.get("sharded") == "dcp":
        FSDP.load_sharded(wrapped, optimizer, Path(checkpoint))
    else:
        FSDP.load_full(wrapped, optimizer, state)


def _fsdp_save_final(trainer, wrapped, final_dir: Path, info: D.DistInfo) -> None:
    """Gather the full weights to rank 0 and save them through an unsharded copy of the model."""
    from zoo.train import fsdp as FSDP

    FSDP.save_final(trainer, wrapped, final_dir, info.is_main)
