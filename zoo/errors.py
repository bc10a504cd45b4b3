"""Errors raised by zoo. Every message says what went wrong and what to do next."""
from __future__ import annotations


class ZooError(Exception):
    """Base class of every error zoo raises on purpose."""


class UnknownModelError(ZooError, KeyError):
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
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"Unknown model family {name!r}. Known families: {', '.join(sorted(known))}.")

    def __str__(self) -> str:
        return self.args[0]


class WeightsNotAvailableError(ZooError):
    """Weights are not in the local cache and cannot be downloaded (offline, no access)."""


class CheckpointFormatError(ZooError):
    """A checkpoint file is unreadable, truncated, or not in the expected layout."""


class CheckpointKeysError(CheckpointFormatError):
    """A state dict does not match the model: lists every missing, unexpected or mis-shaped key."""

    def __init__(self, source: str, missing=(), unexpected=(), mismatched=(), hint: str = ""):
        self.source = source
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = list(mismatched)  # (key, expected_shape, found_shape)
        lines = [f"State dict from {source} does not match the model."]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        for key, want, got in self.mismatched:
            lines.append(f"  shape mismatch for {key}: model has {tuple(want)}, checkpoint has {tuple(got)}")
        lines.append(hint or "  Check that the checkpoint belongs to this model family and size.")
        super().__init__("\n".join(lines))


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


class ToolError(ZooError):
    """A tool (LLM, VQA model, mask proposer, HTTP endpoint) is missing, misconfigured or failed."""


class OutputExistsError(ZooError, FileExistsError):
    """An output folder already holds files; pass overwrite=True / --overwrite to replace them."""
