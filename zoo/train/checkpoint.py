"""Atomic training checkpoints with keep-last-K, and the RNG states exact resume needs.

Layout (under the run's output_dir)::

    checkpoints/step-00000010/state.pt    model, optimizer, scheduler, trainer state, RNG states,
                                          data position (epoch, batches done), step
    checkpoints/step-00000010/meta.json   step, epoch, batches_done, world_size, time (for people)

A checkpoint is written into a staging folder next to it and moved into place with a rename
(``zoo.files.staging_folder``), so a crash never leaves a half-written ``step-*`` folder.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from zoo.errors import CheckpointFormatError
from zoo.files import atomic_open, staging_folder, write_json

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    """Python, numpy, torch and CUDA generator states as tensors / plain types (weights_only-loadable)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the Python, numpy, torch (and CUDA, when present) generators from :func:`rng_state`'s dict."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / STATE_FILE).is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/step-*`` folder of a run, or None when it has none."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_checkpoint(output_dir: str | Path, step: int, payload: dict, *, keep_last: int | None = None,
                    meta: dict | None = None, include: Path | None = None) -> Path:
    """Write ``checkpoints/step-XXXXXXXX`` atomically, then drop all but the newest ``keep_last``.

    ``include``: a finished folder (e.g. the FSDP shards every rank wrote) moved into the checkpoint
    under its own name before the checkpoint appears."""
    root = Path(output_dir) / CHECKPOINTS
    target = root / f"step-{step:08d}"
    # the same step saved again (a resumed run) is swapped, never gapped
    with staging_folder(target) as staging:
        with atomic_open(staging / STATE_FILE, "wb") as handle:
            torch.save(payload, handle)
        info = {"step": step, "time": time.time(), **(meta or {})}
        write_json(staging / META_FILE, info)
        if include is not None:
            os.replace(include, staging / Path(include).name)
    if keep_last and keep_last > 0:
        for _, old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: str | Path) -> dict:
    """The payload of a checkpoint folder (or its state.pt), loaded with ``weights_only=True``.

    Raises CheckpointFormatError when the folder has no state file or the file cannot be read.
    """
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointFormatError(f"No training checkpoint at {path} (expected {STATE_FILE}); "
                                    "point train.resume at a checkpoints/step-* folder.")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise CheckpointFormatError(f"Cannot read training checkpoint {file}: {err}. Delete it to resume from "
                                    "the previous one, or start again with --overwrite.") from err
