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

__all__ = ["read_jsonl", "read_manifest", "write_manifest", "resolve_path", "folder_rows", "audio_folder", "audio_rows", "DEMO", "demo_corpus", "demo_images", "DEMO_ROOT"]

DEMO_ROOT = Path(__file__).resolve().parent / "demo"
DEMO = "demo"  # what a recipe or `zoo eval --data` writes for the bundled data


def read_jsonl(path, *, what: str = "JSONL file") -> list[dict]:
    """The objects of a JSONL file, one per non-blank line, in order (UTF-8).

    The one JSONL reader: manifests, label files and any other rows a user gives. ``what`` names the
    file's role in messages. Raises :class:`ConfigError` naming the file (and the line number) when the
    file is missing or a folder, or a line is not valid JSON or not a JSON object.
    """
    return [row for _, row in _numbered_rows(path, what)]


def _numbered_rows(path, what: str):
    file = Path(os.fspath(path)).expanduser()
    if not file.is_file():
        raise ConfigError(f"{what[0].upper() + what[1:]} {str(file)!r} does not exist or is not a file; give a JSONL "
                          'file with one {"path": ...} object per line, or an audio/image folder.')
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{file}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); "
                                  'each line must be one JSON object such as {"path": "a.wav"}.') from None
            if not isinstance(row, dict):
                raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}; "
                                  'each line must look like {"path": "a.wav", ...}.')
            yield number, row


def read_manifest(path) -> list[dict]:
    """Rows of a JSONL manifest (read as :func:`read_jsonl` does), with each relative ``"path"`` made absolute
    against the manifest's folder.

    Blank lines are skipped. A missing file, a line that is not a JSON object, or a row without a
    ``"path"`` string raises :class:`ConfigError` naming the file and the line number.
    """
    manifest = Path(os.fspath(path)).expanduser()
    base = manifest.resolve().parent
    rows = []
    for number, row in _numbered_rows(manifest, "manifest"):
        if not isinstance(row.get("path"), str) or not row["path"]:
            raise ConfigError(f'{manifest}, line {number}: missing "path" field (a non-empty string); every row '
                              "must say which file it describes.")
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

    Raises ConfigError for a row without ``path`` or one that is not JSON-serialisable (nothing is written
    then).
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


def folder_rows(folder, extensions, *, what: str = "folder", labels: bool = False) -> list[dict]:
    """Rows ``{"path", "id"[, "label"]}`` for every file under ``folder`` (recursive) whose suffix is in
    ``extensions`` (lower-case, with the dot), sorted by path; the one folder walker of audio and image data.

    ``path`` is absolute; ``id`` is the path relative to ``folder`` without its extension (``"spk1/utt3"``).
    With ``labels``, a file inside a sub-folder gets that sub-folder's relative path as its ``label``
    (torchvision's ``ImageFolder`` convention); files lying directly in ``folder`` get none. Raises
    :class:`ConfigError` naming ``what`` when ``folder`` does not exist or is not a folder.
    """
    root = Path(os.fspath(folder)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{what[0].upper() + what[1:]} {str(root)!r} does not exist or is not a folder; give a "
                          f"folder of {'/'.join(e.lstrip('.') for e in extensions)} files or a JSONL manifest.")
    rows = []
    for file_path in sorted(root.rglob("*")):
        if file_path.suffix.lower() not in extensions or not file_path.is_file():
            continue
        relative = file_path.relative_to(root)
        row = {"path": str(file_path.resolve()), "id": relative.with_suffix("").as_posix()}
        if labels and len(relative.parts) > 1:
            row["label"] = relative.parent.as_posix()
        rows.append(row)
    return rows


def audio_folder(folder) -> list[dict]:
    """Rows ``{"path", "id"}`` for every wav/flac/ogg/... file under ``folder`` (recursive, sorted), as
    :func:`folder_rows` lists them; ``id`` is e.g. ``"spk1/utt3"``. Raises :class:`ConfigError` for a
    missing folder."""
    from zoo.audio import AUDIO_EXTENSIONS

    return folder_rows(folder, AUDIO_EXTENSIONS, what="audio folder")


def audio_rows(value, *, key: str = "data.train", check_files: bool = True) -> list[dict]:
    """Rows of an audio data setting such as ``data.train``: ``"demo"`` (the bundled speech corpus), a
    folder of audio files (:func:`audio_folder`) or a JSONL manifest (:func:`read_manifest`).

    The one resolver of ``data.*`` values for speech trainers and evaluations. Paths come back absolute and
    every row has an ``id`` (the manifest's own, else the path relative to the folder or the file name
    without its extension). ``check_files``: every manifest row's file must exist (one ``stat`` each), so a
    run fails before its first step rather than when a batch reaches the missing file. Raises
    :class:`ConfigError` naming ``key`` when ``value`` is unset, names nothing that exists, lists no audio,
    or (``check_files``) lists files that are not there (the count and the first few).
    """
    if value in (None, ""):
        raise ConfigError(f"{key} is not set: give a JSONL manifest or an audio folder ({key}=PATH), or "
                          f"'{DEMO}' for the bundled corpus.")
    path = demo_corpus() if value == DEMO else Path(os.fspath(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}: {str(value)!r} does not exist; give a JSONL manifest, an audio folder, or "
                          f"'{DEMO}' for the bundled corpus.")
    rows = audio_folder(path) if path.is_dir() else read_manifest(path)
    if not rows:
        raise ConfigError(f"{key}: {path} lists no audio ({', '.join(_audio_extensions())} files).")
    if check_files and not path.is_dir():
        absent = [row["path"] for row in rows if not os.path.isfile(row["path"])]
        if absent:
            raise ConfigError(f"{key}: {len(absent)} of {len(rows)} files in {path} do not exist, e.g. "
                              f"{', '.join(repr(a) for a in absent[:3])}; paths in a manifest are relative to "
                              "its folder.")
    for row in rows:
        row.setdefault("id", Path(row["path"]).stem)
    return rows


def _audio_extensions() -> tuple[str, ...]:
    from zoo.audio import AUDIO_EXTENSIONS

    return AUDIO_EXTENSIONS


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
