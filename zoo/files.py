"""Atomic writes for every file a user gets (results, labels, plots, manifests, checkpoints, models).

A file is written to a temporary name in the destination's own folder, flushed to disk, and
then renamed over the destination with ``os.replace``. A reader (or a crash, or Ctrl-C) never
sees a half-written file: the old content stays until the new one is complete. Folders are
staged the same way and swapped in with two renames (:func:`swap_in_folder`).

Every writer of a user-visible file goes through :func:`atomic_open` (or the small wrappers
:func:`write_text`, :func:`write_bytes`, :func:`write_json`, :func:`copy_file`), so there is one
implementation of "write safely".
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "write_text", "write_bytes", "write_json", "copy_file", "staging_folder",
           "swap_in_folder", "FolderLock", "LOCK_PID_FILE"]

# Who holds a folder's lock (its pid), for the error a second process prints. The lock itself is an
# flock on the folder, so a stale pid file (left by a killed process) never blocks anyone.
LOCK_PID_FILE = ".zoo-lock.pid"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path`` atomically.

    ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"`` (binary). The parent folder is created.
    If the block raises (including ``KeyboardInterrupt``), the temporary file is removed and
    ``path`` is left as it was. The new file gets the usual permissions (``0o666`` minus the
    umask), not ``mkstemp``'s ``0o600``. Use it for writers that take a file object::

        with atomic_open(out, "wb") as handle:
            figure.savefig(handle, format="png")

    Raises ``ValueError`` for any other mode; ``OSError`` from the file system passes through.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    target = Path(os.fspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if mode == "wb":
            handle = os.fdopen(descriptor, "wb")
        else:
            handle = os.fdopen(descriptor, "w", encoding=encoding, newline=newline)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path`` as a ``Path``."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(os.fspath(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a ``Path``."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(os.fspath(path))


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2, sort_keys: bool = True,
               default=None) -> Path:
    """``json.dumps(value)`` plus a final newline, written atomically; returns ``path``.

    Raises ``TypeError``/``ValueError`` (before anything is written) when ``value`` is not JSON-able.
    """
    text = json.dumps(value, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    return write_text(path, text)


def copy_file(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy the bytes of ``source`` to ``destination`` atomically (no metadata); returns ``destination``."""
    with open(source, "rb") as reader, atomic_open(destination, "wb") as writer:
        shutil.copyfileobj(reader, writer, length=1 << 20)
    return Path(os.fspath(destination))


@contextlib.contextmanager
def staging_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary folder next to ``target``; on a clean exit it becomes ``target``.

    Write every file of a folder (a model, a checkpoint, a pulled repo) into the yielded path;
    the folder is then swapped in with :func:`swap_in_folder`. On an error the staging folder
    is deleted and ``target`` is untouched.
    """
    target = Path(os.fspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        swap_in_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_in_folder(staging: Path, target: Path) -> None:
    """Move a fully written ``staging`` folder to ``target``; an existing target is swapped out
    with renames, so a reader never sees a half-written or missing folder. Both must be on the
    same file system (stage next to the target)."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        stale = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(target, stale)
        os.replace(staging, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(staging, target)


class FolderLock:
    """An exclusive OS lock (``flock``) on a folder, held while a process writes into it.

    The kernel releases the lock when the process ends in any way (exit, crash, SIGKILL), so a killed
    run never blocks the next one. The holder's pid is written to ``LOCK_PID_FILE`` in the folder so
    that a second process can name it. On platforms without ``fcntl`` (Windows) it does nothing.

    Use as a context manager or with :meth:`acquire` / :meth:`release`. ``acquire`` creates the folder
    and raises :class:`~zoo.errors.OutputInUseError` (one line, naming the holder's pid) when another
    process holds the lock; it never waits.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder = Path(os.fspath(folder))
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        """Take the lock (creating the folder) and record this pid; returns ``self``.

        Raises :class:`~zoo.errors.OutputInUseError` at once when another process holds it.
        """
        try:
            import fcntl
        except ImportError:  # no flock here: nothing to hold
            return self
        from zoo.errors import OutputInUseError

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            raise OutputInUseError(
                f"{self.what} {self.folder} is in use by another process (pid {holder or 'unknown'}); wait for "
                "it to finish, stop it, or choose another folder.") from None
        self._fd = fd
        write_text(self.folder / LOCK_PID_FILE, f"{os.getpid()}\n")
        return self

    def holder(self) -> int | None:
        """The pid written by the process that holds (or last held) the lock, if readable."""
        try:
            return int((self.folder / LOCK_PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Drop the lock and remove the pid file (no-op when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.folder / LOCK_PID_FILE)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
