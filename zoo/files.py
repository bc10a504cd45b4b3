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


def write_atomic(path: str | os.PathLike, data: bytes | str, *, overwrite: bool = True) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` through a temp file in the same folder
    and ``os.replace``, so a reader never sees a half-written file. Returns the path.

    Raises ``zoo.errors.OutputExistsError`` when the file exists and ``overwrite`` is False.
    """
    import tempfile

    from zoo.errors import OutputExistsError

    target = Path(os.fspath(path)).expanduser()
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it, "
                                "or choose another path.")
    if target.is_dir():
        raise OutputExistsError(f"{target} is a folder; give a file path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(payload)
            temp.flush()
            os.fsync(temp.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temp_name, 0o666 & ~mask)  # mkstemp makes 0600; give the usual permissions
        os.replace(temp_name, target)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return target
