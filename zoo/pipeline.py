"""Resumable pipelines of steps: label chains, reward generation, auto-labelling, data building.

A pipeline is an ordered list of :class:`Step` run in one **run folder**. Each step declares
its settings (a JSON-able dict), the files it reads (``inputs``) and the files or folders it
writes (``outputs``, names inside the run folder). After a step finishes, its settings and the
signatures of its inputs are recorded in the folder's steps file (``steps.json``). Running the
pipeline again:

* skips a step that is recorded with the same settings, whose outputs all exist and whose
  inputs are unchanged (a file's size and mtime, else its SHA-256);
* raises :class:`~zoo.errors.ConfigError` naming the changed keys (dotted for nested dicts,
  with old and new values) when a done step's settings differ, so results made with other
  settings are never silently mixed;
* redoes a step whose inputs changed, whose outputs are missing, or that never finished (an
  interrupted step has no record: its record is dropped before it starts and written after
  its outputs are in place), and then every later step;
* with ``force=True`` redoes everything; ``force="name"`` (or a list of names) redoes that step
  and every later one.

Every model or tool call a step makes through ``ctx.cached(tool)`` is cached in the run folder,
so a redone step does not call again what it already asked.

Outputs are written atomically: a step writes into ``ctx.output(name)`` (a staging path in the
run folder) and the pipeline moves each output into place only after the step returns, so an
interrupted step never leaves a half-written output under its real name.

Example::

    def sample(ctx):
        np.save(ctx.output("sample.npy"), draw(ctx.settings["n"]))

    def fit(ctx):
        data = np.load(ctx.path("sample.npy"))
        np.save(ctx.output("centroids.npy"), kmeans(data, ctx.settings["k"]))

    Pipeline("runs/labels", [
        Step("sample", sample, settings={"n": 1000}, outputs=["sample.npy"]),
        Step("fit", fit, settings={"k": 8}, inputs=["sample.npy"], outputs=["centroids.npy"]),
    ]).run()
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ConfigError, ZooError
from zoo.files import swap_in_folder, write_text

logger = logging.getLogger("zoo.pipeline")

STEPS_FILE = "steps.json"
STAGING = ".staging"
CALLS = ".calls"


def _canonical(value) -> Any:
    """Settings as JSON sees them (tuples -> lists, paths -> str), so records compare equal on reload."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def settings_signature(settings: Mapping) -> str:
    """A 16-hex-digit SHA-256 of the canonical JSON of ``settings`` (sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def changed_keys(old: Mapping, new: Mapping) -> list[str]:
    """Keys (dotted for nested dicts) whose values differ between two settings dicts, sorted."""
    flat_old, flat_new = _flatten(_canonical(dict(old))), _flatten(_canonical(dict(new)))
    return sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k, _MISSING) != flat_new.get(k, _MISSING))


class _Missing:
    def __repr__(self) -> str:
        return "<unset>"


_MISSING = _Missing()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat(path: Path) -> dict:
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def file_signature(path) -> dict:
    """``{"size", "mtime_ns", "sha256"}`` of a file; a folder maps each file inside (relative
    POSIX name) to its signature. Raises ConfigError if the path does not exist."""
    path = Path(path)
    if path.is_dir():
        return {p.relative_to(path).as_posix(): file_signature(p) for p in sorted(path.rglob("*")) if p.is_file()}
    if not path.is_file():
        raise ConfigError(f"{path} does not exist.")
    return {**_stat(path), "sha256": _sha256(path)}


def _same_file(path: Path, recorded: dict) -> bool:
    """True if ``path`` still has the recorded content: same size and mtime, else same SHA-256."""
    if path.is_dir():
        if not isinstance(recorded, dict) or "sha256" in recorded:
            return False
        files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
        return files.keys() == recorded.keys() and all(_same_file(p, recorded[k]) for k, p in files.items())
    if not path.is_file() or "sha256" not in recorded:
        return False
    stat = _stat(path)
    if stat["size"] != recorded["size"]:
        return False
    return stat["mtime_ns"] == recorded["mtime_ns"] or _sha256(path) == recorded["sha256"]


@dataclass(frozen=True)
class Step:
    """One step of a :class:`Pipeline`.

    name: unique within the pipeline (a key of the steps file).
    run: ``run(ctx: StepContext)``; writes each output to ``ctx.output(name)``. Its return value,
        if JSON-able and not None, is recorded as the step's ``result``.
    settings: everything that changes what the step writes (hyper-parameters, model ids, seeds,
        a signature of the corpus). JSON-able; compared key by key on a rerun.
    inputs: files or folders the step reads: names in the run folder (earlier steps' outputs)
        or absolute paths. Their signatures are recorded; a changed input makes the step stale.
    outputs: names of the files or folders (in the run folder) the step writes.
    """

    name: str
    run: Callable[["StepContext"], Any]
    settings: Mapping = field(default_factory=dict)
    inputs: Sequence[str | os.PathLike] = ()
    outputs: Sequence[str] = ()


@dataclass
class StepContext:
    """What a running step sees: its run folder, name and settings, and where to write."""

    folder: Path
    name: str
    settings: dict
    outputs: tuple[str, ...]
    staging: Path

    def path(self, name: str) -> Path:
        """The committed path of ``name`` in the run folder (an earlier step's output)."""
        return self.folder / name

    def cached(self, tool, tool_id: str | None = None):
        """``tool`` with its calls cached in the run folder (``.calls/``, shared by every step), so
        a step redone after an interruption repeats no model or endpoint call it already made.
        See ``zoo.tools.CallCache``."""
        from zoo.tools import CallCache

        return CallCache(self.folder / CALLS).wrap(tool, tool_id)

    def output(self, name: str) -> Path:
        """Where to write output ``name`` (a declared output): a staging path moved into place
        when the step returns. Its parent folder exists; a folder output is not created.

        Raises ZooError for a name that is not one of the step's declared outputs.
        """
        if name not in self.outputs:
            raise ZooError(f"step '{self.name}' writes {name!r}, which is not one of its declared outputs "
                           f"{list(self.outputs)}; add it to the Step's outputs.")
        target = self.staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


class Pipeline:
    """Resumable steps in one run folder (see the module docstring for the rules).

    folder: the run folder (created).
    steps: the steps, in order; names must be unique and outputs must not overlap.
    name: a label for log lines (``"<name>: running <step>"``).
    hint: the sentence that ends a changed-settings error (what the user can do); the default
        names ``force``.
    log: the logger for progress lines (default ``zoo.pipeline``).
    steps_file: the record's file name in the run folder.
    """

    def __init__(self, folder, steps: Sequence[Step], *, name: str = "pipeline", hint: str | None = None,
                 log: logging.Logger | None = None, steps_file: str = STEPS_FILE):
        self.folder = Path(folder)
        self.steps = list(steps)
        self.name = name
        self.hint = hint
        self.log = log or logger
        self.steps_file = self.folder / steps_file
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ConfigError(f"pipeline {name}: step names repeat: {names}.")
        seen: dict[str, str] = {}
        for step in self.steps:
            for output in step.outputs:
                if output in seen:
                    raise ConfigError(f"pipeline {name}: output {output!r} is written by both '{seen[output]}' "
                                      f"and '{step.name}'.")
                seen[output] = step.name

    # ------------------------------------------------------------------ the steps file
    def records(self) -> dict:
        """The steps file as a dict ``{step: record}`` (empty when absent).

        Raises ConfigError when the steps file is not readable JSON or not a steps record (delete it to redo
        every step).
        """
        if not self.steps_file.is_file():
            return {}
        try:
            records = json.loads(self.steps_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"{self.steps_file} is not readable JSON ({error}); delete it to redo every step.") from error
        if not isinstance(records, dict):
            raise ConfigError(f"{self.steps_file} is not a steps record; delete it to redo every step.")
        return records

    def _write_records(self, records: dict) -> None:
        write_text(self.steps_file, json.dumps(records, indent=1, sort_keys=True, default=str) + "\n")

    def _input_path(self, value) -> Path:
        path = Path(os.fspath(value)).expanduser()
        return path if path.is_absolute() else self.folder / path

    # ------------------------------------------------------------------ state
    def state(self, step: Step) -> str:
        """``"done"``, ``"todo"`` (never finished, or outputs missing) or ``"stale"`` (inputs changed).

        Raises ConfigError when the step is recorded done with other settings.
        """
        record = self.records().get(step.name)
        if record is None or not all((self.folder / name).exists() for name in step.outputs):
            return "todo"
        settings = _canonical(dict(step.settings))
        if record.get("signature") != settings_signature(settings):
            keys = changed_keys(record.get("settings", {}), settings)
            old, new = _flatten(_canonical(record.get("settings", {}))), _flatten(settings)
            details = ", ".join(f"{k} {old.get(k, _MISSING)!r} -> {new.get(k, _MISSING)!r}" for k in keys)
            hint = self.hint or (f"Use another run folder, or run with force='{step.name}' to make them again "
                                 "(this step's and every later step's outputs are replaced).")
            raise ConfigError(f"{self.folder} holds '{step.name}' outputs made with other settings "
                              f"(changed: {keys}; {details}). {hint}")
        recorded_inputs = record.get("inputs")
        if recorded_inputs is not None:
            for value in step.inputs:
                key = str(value)
                if key not in recorded_inputs or not _same_file(self._input_path(value), recorded_inputs[key]):
                    return "stale"
        return "done"

    def status(self) -> dict[str, str]:
        """Each step's state without running anything (a changed-settings step reads ``"changed"``);
        a step after one that will run reads ``"todo"``."""
        out, later = {}, False
        for step in self.steps:
            try:
                state = self.state(step)
            except ConfigError:
                state = "changed"
            if later and state == "done":
                state = "todo"
            later = later or state != "done"
            out[step.name] = state
        return out

    def _first_forced(self, force) -> int | None:
        if force is True:
            return 0
        if not force:
            return None
        names = [force] if isinstance(force, str) else list(force)
        known = [s.name for s in self.steps]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"pipeline {self.name}: force names unknown step(s) {unknown}; steps are {known}.")
        return min(known.index(n) for n in names)

    # ------------------------------------------------------------------ running
    def run(self, force: bool | str | Iterable[str] = False) -> dict[str, str]:
        """Run every step that is not done; returns ``{step: "ran" | "skipped"}`` in order."""
        self.folder.mkdir(parents=True, exist_ok=True)
        first_forced = self._first_forced(force)
        outcome: dict[str, str] = {}
        redo = False
        for index, step in enumerate(self.steps):
            redo = redo or (first_forced is not None and index >= first_forced)
            if not redo:
                state = self.state(step)
                if state == "done":
                    self.log.info("%s: %s already done in %s", self.name, step.name, self.folder)
                    outcome[step.name] = "skipped"
                    continue
                if state == "stale":
                    self.log.info("%s: the inputs of %s changed since it ran", self.name, step.name)
            redo = True  # a step that runs invalidates every later one
            self._run_step(index, step)
            outcome[step.name] = "ran"
        return outcome

    def _run_step(self, index: int, step: Step) -> None:
        records = self.records()
        stale = [s.name for s in self.steps[index:] if s.name in records]
        if stale:  # drop this step's and the later records first: an interrupted run redoes them
            for name in stale:
                del records[name]
            self._write_records(records)
        missing = [str(v) for v in step.inputs if not self._input_path(v).exists()]
        if missing:
            raise ConfigError(f"pipeline {self.name}: step '{step.name}' reads {missing}, which do not exist in "
                              f"{self.folder} (inputs are names in the run folder or absolute paths).")
        staging = self.folder / STAGING / step.name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        settings = _canonical(dict(step.settings))
        ctx = StepContext(self.folder, step.name, settings, tuple(step.outputs), staging)
        self.log.info("%s: running %s", self.name, step.name)
        result = step.run(ctx)
        absent = [name for name in step.outputs if not (staging / name).exists()]
        if absent:
            raise ZooError(f"pipeline {self.name}: step '{step.name}' finished without writing {absent}; it must "
                           "write every declared output to ctx.output(name).")
        for name in step.outputs:
            source, target = staging / name, self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                swap_in_folder(source, target)
            else:
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(source, target)
        shutil.rmtree(staging, ignore_errors=True)
        record = {"signature": settings_signature(settings), "settings": settings,
                  "inputs": {str(v): file_signature(self._input_path(v)) for v in step.inputs},
                  "outputs": list(step.outputs)}
        if result is not None:
            try:
                record["result"] = _canonical(result)
            except (TypeError, ValueError):
                pass
        records = self.records()
        records[step.name] = record
        self._write_records(records)
        try:
            (self.folder / STAGING).rmdir()
        except OSError:
            pass

    def result(self, name: str):
        """The recorded return value of a finished step (None when it returned nothing)."""
        return self.records().get(name, {}).get("result")


__all__ = ["Pipeline", "Step", "StepContext", "changed_keys", "file_signature", "settings_signature"]
