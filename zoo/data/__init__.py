"""Datasets as folders or JSONL manifests, and the bundled demo corpus.

A manifest is a JSONL file, one object per line, each with at least a ``"path"``; other fields
(``"speaker"``, ``"text"``, ``"label"``, ...) pass through untouched. Relative paths are
relative to the manifest's own folder, so a corpus folder can be moved as a whole.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from zoo.errors import ConfigError
from zoo.files import write_text

__all__ = ["read_manifest", "write_manifest", "resolve_path", "audio_folder", "demo_corpus", "demo_images", "DEMO_ROOT"]

DEMO_ROOT = Path(__file__).resolve().parent / "demo"


def read_manifest(path) -> list[dict]:
    """Rows of a JSONL manifest, with each relative ``"path"`` made absolute against its folder.

    Blank lines are skipped. A line that is not a JSON object, or has no ``"path"`` string,
    raises :class:`ConfigError` naming the file and the line number.
    """
    manifest = Path(os.fspath(path)).expanduser()
    if not manifest.is_file():
        raise ConfigError(f"Manifest {str(manifest)!r} does not exist or is not a file; give a JSONL file "
                          'with one {"path": ...} object per line, or an audio/image folder.')
    base = manifest.resolve().parent
    rows = []
    with open(manifest, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{manifest}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); "
                                  'each line must be one JSON object such as {"path": "a.wav"}.') from None
            if not isinstance(row, dict):
                raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}; "
                                  'each line must look like {"path": "a.wav", ...}.')
            if not isinstance(row.get("path"), str) or not row["path"]:
                raise ConfigError(f'{where}: missing "path" field (a non-empty string); every row must say '
                                  "which file it describes.")
            row["path"] = resolve_path(row["path"], base)
            rows.append(row)
    return rows


def resolve_path(path, base) -> str:
    """``path`` made absolute against the folder ``base`` (``~`` expanded, ``..`` normalised)."""
    file_path = Path(os.fspath(path)).expanduser()
    if not file_path.is_absolute():
        file_path = Path(os.fspath(base)) / file_path
    return os.path.normpath(file_path)


def write_manifest(rows: Iterable[dict], path) -> Path:
    """Write rows as JSONL atomically (``zoo.files.write_text``: temp file, then ``os.replace``).

    Paths are written as given; pass paths relative to the manifest's folder to keep the
    corpus relocatable. Every row must be JSON-serialisable and have a ``"path"``.
    """
    manifest = Path(os.fspath(path)).expanduser()
    manifest.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or "path" not in row:
            raise ConfigError(f'write_manifest: row {index} has no "path" field; every row must name its file.')
        try:
            lines.append(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        except (TypeError, ValueError) as error:
            raise ConfigError(f"write_manifest: row {index} is not JSON-serialisable ({error}).") from error
    write_text(manifest, "".join(lines))
    return manifest


def audio_folder(folder) -> list[dict]:
    """Rows ``{"path", "id"}`` for every wav/flac/ogg file under ``folder`` (recursive, sorted).

    ``id`` is the path relative to ``folder`` without its extension, e.g. ``"spk1/utt3"``.
    """
    from zoo.audio import AUDIO_EXTENSIONS

    root = Path(os.fspath(folder)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"Audio folder {str(root)!r} does not exist or is not a folder; give a folder of "
                          "wav/flac/ogg files or a JSONL manifest.")
    rows = []
    for file_path in sorted(root.rglob("*")):
        if file_path.suffix.lower() in AUDIO_EXTENSIONS and file_path.is_file():
            relative = file_path.relative_to(root)
            rows.append({"path": str(file_path.resolve()), "id": relative.with_suffix("").as_posix()})
    return rows


def demo_corpus() -> Path:
    """The bundled speech manifest: synthetic voices reading short English sentences (16 kHz mono)."""
    return DEMO_ROOT / "speech" / "manifest.jsonl"


def demo_images() -> Path:
    """The bundled image folder: small procedural PNGs, one sub-folder per label, plus manifest.jsonl."""
    return DEMO_ROOT / "images"


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
