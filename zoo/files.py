"""Atomic file-system helpers shared by the zoo format and training checkpoints."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_in_folder(staging: Path, target: Path) -> None:
    """Move a fully written ``staging`` folder to ``target``; an existing target is swapped out
    with renames, so a reader never sees a half-written or missing folder."""
    if target.exists():
        stale = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(target, stale)
        os.replace(staging, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(staging, target)
