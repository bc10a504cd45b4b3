"""Errors raised by zoo. Every message says what went wrong and what to do next."""
from __future__ import annotations


class ZooError(Exception):
    """Base class of every error zoo raises on purpose."""


class UnknownModelError(ZooError, KeyError):
    """A model name that is no card (``zoo list`` shows them all); ``candidates`` holds the closest names."""
    def __init__(self, name: str, candidates: list[str] | None = None):
        self.name = name
        self.candidates = list(candidates or [])
        hint = f" Closest names: {', '.join(self.candidates)}." if self.candidates else ""
        super().__init__(
            f"Unknown model name {name!r}.{hint} Run `zoo list` to see every name; "
            "use 'hf-hub:org/name' for a Hub repo or a path for a local folder."
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class UnknownFamilyError(ZooError, KeyError):
    """A family name that is not registered; the message lists the known families."""
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"Unknown model family {name!r}. Known families: {', '.join(sorted(known))}.")

    def __str__(self) -> str:
        return self.args[0]


class WeightsNotAvailableError(ZooError):
    """Weights are not in the local cache and cannot be downloaded (offline, no access, no release).

    ``reason`` says what is missing; ``python_hint`` is the Python API's way around it (for example
    ``pretrained=False``). The command line prints ``reason`` with its own flags instead
    (:meth:`with_hint`), so a CLI user is never told about a Python argument.
    """

    def __init__(self, reason: str, *, python_hint: str = ""):
        self.reason = reason
        self.python_hint = python_hint
        super().__init__(self.with_hint(python_hint))

    def with_hint(self, hint: str) -> str:
        """The message with ``hint`` (a sentence) as the way around it."""
        return f"{self.reason} {hint}".strip()


class CheckpointFormatError(ZooError):
    """A checkpoint file is unreadable, truncated, or not in the expected layout."""


class CheckpointKeysError(CheckpointFormatError):
    """A state dict does not match the model: missing, unexpected or mis-shaped keys.

    ``missing``, ``unexpected`` (sorted lists) and ``mismatched`` (``(key, model_shape,
    checkpoint_shape)`` tuples) hold every key. The message summarises them in about ten lines:
    keys are grouped by pattern (``encoder.layers.{4..11}.*: 16 keys each``), followed by the likely
    cause (another size, another layout, a prefix) and ``hint``, the family's option that fixes it.
    """

    MAX_GROUP_LINES = 8

    def __init__(self, source: str, missing=(), unexpected=(), mismatched=(), hint: str = ""):
        self.source = source
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = [(key, tuple(want), tuple(got)) for key, want, got in mismatched]
        self.hint = hint
        super().__init__(self._summary())

    def _summary(self) -> str:
        counts = f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped"
        lines = [f"State dict from {self.source} does not match the model ({counts} keys)."]
        budget = self.MAX_GROUP_LINES
        sections = [("missing keys", "in the model, not in the checkpoint", "missing", group_keys(self.missing)),
                    ("unexpected keys", "in the checkpoint, not in the model", "unexpected",
                     group_keys(self.unexpected)),
                    ("shape mismatches", "model vs checkpoint", "mismatched", group_shapes(self.mismatched))]
        for title, meaning, attribute, groups in sections:
            total = len(getattr(self, attribute))
            if not groups:
                continue
            if len(groups) == 1:
                lines.append(f"  {title} ({total}): {groups[0]}")
                budget -= 1
                continue
            lines.append(f"  {title} ({total}, {meaning}):")
            shown = groups[:max(budget, 1)]
            lines += [f"    {group}" for group in shown]
            if len(groups) > len(shown):
                lines.append(f"    ... and {len(groups) - len(shown)} more groups (all keys: the error's "
                             f"`{attribute}` attribute)")
            budget -= len(shown)
        cause = likely_cause(self.missing, self.unexpected, self.mismatched)
        if cause:
            lines.append(f"  Likely cause: {cause}")
        lines.append(self.hint if self.hint else
                     "  Check that the checkpoint belongs to this model family and size "
                     "(`zoo info NAME` lists a card's size; `zoo convert FAMILY SRC DST --size SIZE`).")
        return "\n".join(lines)


def _split_index(key: str) -> tuple[str, int, str] | None:
    """``"encoder.layers.4.fc1.weight"`` -> ``("encoder.layers", 4, "fc1.weight")``; None without an index."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i]), int(part), ".".join(parts[i + 1:])
    return None


def _ranges(indices) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0..2,5,7..8"``."""
    indices = sorted(set(indices))
    pieces, start = [], indices[0]
    for previous, current in zip(indices, indices[1:] + [None]):
        if current != previous + 1:
            pieces.append(str(start) if start == previous else f"{start}..{previous}")
            start = current
    return ",".join(pieces)


def _join(head: str, rest: str) -> str:
    return f"{head}.{rest}" if head else rest


def group_keys(keys) -> list[str]:
    """One line per pattern: ``encoder.layers.{4..11}.*: 16 keys each``, ``bn2.{bias,weight}``, ``mask_emb``."""
    keys = sorted(keys)
    indexed: dict[str, dict[int, set[str]]] = {}
    plain: dict[str, list[str]] = {}
    for key in keys:
        split = _split_index(key)
        if split is None:
            parent, _, leaf = key.rpartition(".")
            plain.setdefault(parent, []).append(leaf)
        else:
            head, index, tail = split
            indexed.setdefault(head, {}).setdefault(index, set()).add(tail)
    lines = []
    for parent, leaves in plain.items():
        if len(leaves) == 1:
            lines.append(_join(parent, leaves[0]))
        elif len(leaves) <= 4:
            lines.append(_join(parent, "{" + ",".join(leaves) + "}"))
        else:
            lines.append(f"{_join(parent, '*')}: {len(leaves)} keys")
    for head, by_index in indexed.items():
        by_tails: dict[frozenset, list[int]] = {}
        for index, tails in by_index.items():
            by_tails.setdefault(frozenset(tails), []).append(index)
        for tails, indices in sorted(by_tails.items(), key=lambda item: min(item[1])):
            where = _join(head, "{" + _ranges(indices) + "}" if len(indices) > 1 else str(indices[0]))
            if len(tails) == 1:
                lines.append(_join(where, next(iter(tails))) if next(iter(tails)) else where)
            else:
                each = " each" if len(indices) > 1 else ""
                lines.append(f"{where}.*: {len(tails)} keys{each}")
    return lines


def group_shapes(mismatched) -> list[str]:
    """Shape mismatches grouped by key pattern and shape pair: ``layers.{0..11}.fc1.weight: (3072, 768) vs (4096, 1024)``."""
    groups: dict[tuple, list[int]] = {}
    singles = []
    for key, want, got in mismatched:
        split = _split_index(key)
        if split is None:
            singles.append(f"{key}: model {tuple(want)}, checkpoint {tuple(got)}")
        else:
            head, index, tail = split
            groups.setdefault((head, tail, tuple(want), tuple(got)), []).append(index)
    lines = singles
    for (head, tail, want, got), indices in groups.items():
        where = _join(head, "{" + _ranges(indices) + "}" if len(indices) > 1 else str(indices[0]))
        lines.append(f"{_join(where, tail) if tail else where}: model {want}, checkpoint {got}")
    if len(lines) <= 4:
        return lines
    # Many patterns (a wider model differs almost everywhere): one line per pair of shapes.
    by_pair: dict[tuple, list[str]] = {}
    for key, want, got in mismatched:
        by_pair.setdefault((tuple(want), tuple(got)), []).append(key)
    ordered = sorted(by_pair.items(), key=lambda item: -len(item[1]))
    return [f"model {want}, checkpoint {got}: {len(keys)} key{'s' if len(keys) > 1 else ''}, e.g. {keys[0]}"
            for (want, got), keys in ordered]


def likely_cause(missing, unexpected, mismatched) -> str:
    """A one-line guess at why keys differ: another depth, another width, a prefix, or another layout."""
    def blocks(keys):
        found: dict[str, set[int]] = {}
        for key in keys:
            split = _split_index(key)
            if split is not None:
                found.setdefault(split[0], set()).add(split[1])
        return found

    if missing and unexpected:
        for prefix in ("module.", "model.", "state_dict.", "net."):
            if all(k.startswith(prefix) for k in unexpected) and \
                    {k[len(prefix):] for k in unexpected} & set(missing):
                return (f"every checkpoint key starts with {prefix!r} (a wrapper's prefix); strip it, or point the "
                        "loader at the inner state dict.")
    lost, extra = blocks(missing), blocks(unexpected)
    if missing and not unexpected and len(lost) == 1 and not _has_plain(missing) and min(*lost.values()) > 0:
        head, indices = next(iter(lost.items()))
        return (f"the checkpoint has fewer {head} blocks than the model (it stops before block {min(indices)}): "
                "it is probably a smaller size; choose that size or set the layer count.")
    if unexpected and not missing and len(extra) == 1 and not _has_plain(unexpected) and min(*extra.values()) > 0:
        head, indices = next(iter(extra.items()))
        return (f"the checkpoint has more {head} blocks than the model ({max(indices) + 1}): it is probably a "
                "larger size; choose that size or set the layer count.")
    if mismatched and not missing and not unexpected:
        return "same layout, other widths: the checkpoint is probably another size; choose the matching size."
    if missing or unexpected:
        return "another layout (another variant of the architecture, or another family's checkpoint)."
    return ""


def _has_plain(keys) -> bool:
    return any(_split_index(key) is None for key in keys)


class AudioInputError(ZooError, ValueError):
    """Audio that cannot be used: unreadable, empty, non-finite or too short."""


class ImageInputError(ZooError, ValueError):
    """An image that cannot be read or has an unusable shape."""


class ConfigError(ZooError, ValueError):
    """A recipe, card or model config with an unknown key, a wrong type or a missing path."""


class CardError(ConfigError):
    """An invalid model card (hub_cards/*.yaml): names the file and the field."""


class HubError(ZooError):
    """A Hub operation failed (push, pull, repo not found, no permission)."""


class OutputInUseError(ZooError):
    """Another live process is training into the same output folder (it holds the folder's lock)."""


class ToolError(ZooError):
    """A tool (LLM, VQA model, mask proposer, HTTP endpoint) is missing, misconfigured or failed."""


class OutputExistsError(ZooError, FileExistsError):
    """An output folder already holds files; pass overwrite=True / --overwrite to replace them."""


class MissingDependencyError(ZooError, ImportError):
    """An optional package is not installed; the message names it and the extra that installs it."""
