"""Image embeddings of an unlabelled pool, computed once and cached on disk.

The cache is keyed by the embedder (its id: open_clip model name and pretrained tag, or a digest
of bundled weights) and by each file's SHA-256, so a renamed or copied image is not embedded
again and a changed one is. Files are hashed once per (path, size, mtime). Images are read and
embedded ``batch_size`` at a time and written in shards of ``shard_size`` rows, so a pool of
100k images never holds more than one batch of pixels, and an interrupted run keeps every
finished shard. Layout::

    <cache>/<embedder digest>/info.json          {"embedder": id, "dim": D}
    <cache>/<embedder digest>/shard-*.npy        float32 [n, D]
    <cache>/<embedder digest>/shard-*.sha        n lines: the SHA-256 of each row's file
    <cache>/hashes/*.jsonl                       {"path", "size", "mtime_ns", "sha256"}

Unreadable images are skipped and listed (path and reason), never silently dropped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np

from zoo.errors import ConfigError, ImageInputError
from zoo.files import atomic_open, write_text

__all__ = ["list_images", "file_sha256", "embed_files", "EmbeddingCache", "default_cache_dir"]

logger = logging.getLogger("zoo.collaborator")


def default_cache_dir() -> Path:
    """``$ZOO_CACHE/collaborator`` or ``~/.cache/zoo/collaborator``."""
    root = os.environ.get("ZOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zoo")
    return Path(root) / "collaborator"


def list_images(source) -> list[dict]:
    """Rows ``{"path", "id", ...}`` of an image folder (recursive, sorted) or a JSONL manifest.

    Raises ``ConfigError`` when the source does not exist or lists no image, or when ids repeat.
    """
    from zoo.data import read_manifest
    from zoo.image import image_folder

    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        rows = image_folder(path)
    elif path.is_file():
        rows = read_manifest(path)
        for row in rows:
            row.setdefault("id", row.get("id") or Path(row["path"]).stem)
            row["id"] = str(row["id"])
    else:
        raise ConfigError(f"image source {str(path)!r} does not exist; give a folder of images or a JSONL manifest "
                          "with one {\"path\": ...} per line.")
    if not rows:
        raise ConfigError(f"{path} holds no images (png, jpg, jpeg, bmp, gif, webp, tif); the pool is empty.")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        seen, repeated = set(), []
        for value in ids:
            if value in seen:
                repeated.append(value)
            seen.add(value)
        raise ConfigError(f"{path}: image ids repeat ({repeated[:3]}); give each manifest row a unique 'id'.")
    return rows


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def embed_files(embedder, paths, *, batch_size: int = 64, progress=None):
    """Embed images ``batch_size`` at a time: ``(embeddings FloatTensor[n_ok, D], ok indices, errors)``.

    embedder: has ``image_transform`` and ``encode_image(pixel_values=...)`` (a zoo CLIP model).
    errors: ``[{"index", "path", "error"}]`` for files that cannot be read (skipped, the rest go on).
    progress: called with the number of files done after each batch.
    """
    import torch

    from zoo.image import load_image

    transform = embedder.image_transform
    chunks, kept, errors = [], [], []
    pending, pending_index = [], []

    def flush():
        if pending:
            chunks.append(embedder.encode_image(pixel_values=torch.stack(pending)))
            kept.extend(pending_index)
            pending.clear()
            pending_index.clear()

    for index, path in enumerate(paths):
        try:
            pending.append(transform(load_image(path)))
            pending_index.append(index)
        except ImageInputError as error:
            errors.append({"index": index, "path": str(path), "error": str(error)})
        if len(pending) >= batch_size:
            flush()
            if progress:
                progress(index + 1)
    flush()
    if progress:
        progress(len(paths))
    dim = getattr(embedder, "embed_dim", 0)
    return (torch.cat(chunks) if chunks else torch.zeros(0, dim)), kept, errors


class EmbeddingCache:
    """Image embeddings on disk for one embedder (see the module docstring).

    folder: the cache root (shared by every run and embedder). embedder_id: a string that changes
    whenever the embeddings would (model name, pretrained tag or weights digest, preprocessing).
    """

    def __init__(self, folder, embedder_id: str):
        self.folder = Path(os.fspath(folder)).expanduser()
        self.embedder_id = str(embedder_id)
        self.root = self.folder / hashlib.sha256(self.embedder_id.encode()).hexdigest()[:16]
        self.root.mkdir(parents=True, exist_ok=True)
        (self.folder / "hashes").mkdir(parents=True, exist_ok=True)
        info = self.root / "info.json"
        if not info.is_file():
            write_text(info, json.dumps({"embedder": self.embedder_id}) + "\n")

    # ------------------------------------------------------------------ file hashes
    def _hash_records(self) -> dict:
        known = {}
        for file in sorted((self.folder / "hashes").glob("*.jsonl")):
            for line in file.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    known[(record["path"], record["size"], record["mtime_ns"])] = record["sha256"]
                except (ValueError, KeyError):
                    continue
        return known

    def file_hashes(self, paths) -> list[str | None]:
        """SHA-256 of each file (None when it cannot be read); hashed once per (path, size, mtime)."""
        known = self._hash_records()
        out, fresh = [], []
        for path in paths:
            path = os.path.abspath(os.fspath(path))
            try:
                stat = os.stat(path)
                key = (path, stat.st_size, stat.st_mtime_ns)
                sha = known.get(key)
                if sha is None:
                    sha = file_sha256(path)
                    fresh.append({"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha})
            except OSError:
                sha = None
            out.append(sha)
        if fresh:
            text = "".join(json.dumps(r) + "\n" for r in fresh)
            write_text(self.folder / "hashes" / f"{uuid.uuid4().hex}.jsonl", text)
        return out

    # ------------------------------------------------------------------ shards
    def _shards(self):
        for sha_file in sorted(self.root.glob("shard-*.sha")):
            array_file = sha_file.with_suffix(".npy")
            if array_file.is_file():
                yield sha_file, array_file

    def gather(self, shas) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings float32 [n, D], found bool [n])`` for a list of hashes (None allowed); rows
        the cache does not hold are zero. One vectorised read per shard."""
        targets: dict[str, list[int]] = {}
        for index, sha in enumerate(shas):
            if sha:
                targets.setdefault(sha, []).append(index)
        found = np.zeros(len(shas), dtype=bool)
        matrix = None
        for sha_file, array_file in self._shards():
            names = sha_file.read_text(encoding="ascii").split()
            source, destination = [], []
            for row, name in enumerate(names):
                for index in targets.pop(name, ()):
                    source.append(row)
                    destination.append(index)
            if source:
                array = np.load(array_file, mmap_mode="r")
                if matrix is None:
                    matrix = np.zeros((len(shas), array.shape[1]), dtype=np.float32)
                matrix[destination] = array[np.asarray(source)]
                found[destination] = True
            if not targets:
                break
        return (matrix if matrix is not None else np.zeros((len(shas), 0), dtype=np.float32)), found

    def lookup(self, shas) -> dict[str, np.ndarray]:
        """``{sha: embedding float32[D]}`` for the hashes the cache holds."""
        shas = list(dict.fromkeys(h for h in shas if h))
        matrix, found = self.gather(shas)
        return {sha: matrix[i] for i, sha in enumerate(shas) if found[i]}

    def add(self, shas, embeddings) -> None:
        """Store one shard: ``embeddings`` float32 ``[n, D]`` for files with hashes ``shas``."""
        array = np.asarray(embeddings, dtype=np.float32)
        if len(shas) != len(array):
            raise ValueError(f"{len(shas)} hashes for {len(array)} embeddings")
        if not len(shas):
            return
        name = f"shard-{uuid.uuid4().hex}"
        with atomic_open(self.root / f"{name}.npy", "wb", encoding=None) as handle:
            np.save(handle, array, allow_pickle=False)
        write_text(self.root / f"{name}.sha", "\n".join(shas) + "\n")  # written last: marks the shard complete

    def embed(self, rows, embedder, *, batch_size: int = 64, shard_size: int = 8192, progress: bool = False):
        """Embeddings of every readable image of ``rows`` (``{"path", ...}``), from the cache or
        computed (and cached): ``(float32 [n_ok, D], kept rows, skipped rows with "error")``."""
        paths = [r["path"] for r in rows]
        hashes = self.file_hashes(paths)
        skipped = [dict(r, error="cannot open the file") for r, h in zip(rows, hashes) if h is None]
        _, present = self.gather(hashes)
        todo = [i for i, h in enumerate(hashes) if h and not present[i]]
        if todo:
            logger.info("embedding %d of %d images (%d cached)", len(todo), len(rows), len(rows) - len(todo))
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="embed", unit="img")
        unreadable = set()
        for start in range(0, len(todo), shard_size):
            part = todo[start:start + shard_size]
            done = [0]

            def tick(n, done=done):
                if bar is not None:
                    bar.update(n - done[0])
                done[0] = n

            vectors, kept, errors = embed_files(embedder, [paths[i] for i in part], batch_size=batch_size,
                                                progress=tick)
            for error in errors:
                index = part[error["index"]]
                unreadable.add(index)
                skipped.append(dict(rows[index], error=error["error"]))
            self.add([hashes[part[k]] for k in kept], vectors.numpy())
        if bar is not None:
            bar.close()
        gathered, present = self.gather(hashes)
        order = [i for i, h in enumerate(hashes) if h and i not in unreadable and present[i]]
        kept_rows = [rows[i] for i in order]
        dim = getattr(embedder, "embed_dim", 0)
        matrix = gathered[order] if order else np.zeros((0, dim), dtype=np.float32)
        for row in skipped:
            logger.warning("skipped %s: %s", row["path"], row["error"])
        return matrix.astype(np.float32, copy=False), kept_rows, skipped
