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


def atomic_write(path, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically: a temp file in the same folder, fsync,
    then ``os.replace``; a reader sees the old file or the new one, never half of it.

    Creates the parent folder. Returns the path.
    """
    import tempfile

    path = Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(payload)
            temp.flush()
            os.fsync(temp.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return path
