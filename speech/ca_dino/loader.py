"""WeSpeaker checkpoints -> CA-DINO zoo model, strict and safe (speech.md §3.2).

Accepted layouts (files read with ``torch.load(weights_only=True)``, so no code runs):

* ``avg_model.pt`` of the DINO recipe: a plain teacher state dict with WeSpeaker's ECAPA
  keys plus ``projection_head.*`` (``last_layer.weight_g`` / ``weight_v``).
* a DINO training checkpoint ``{'model': DINO.state_dict(), 'optimizer': ...}``: keys under
  ``t_model.`` (the teacher, which evaluation uses) are taken; ``s_model.*`` (student) and
  ``dino_loss_calculator.center`` are training state and are left out, with a log note.
* a supervised WeSpeaker ECAPA (``Wespeaker/wespeaker-voxceleb-ecapa-tdnn512`` /
  ``...1024`` ``avg_model.pt``): no DINO head, no ``bn2`` (``emb_bn=False``), and an
  AAM classifier ``projection.weight`` [speakers, 192] that embeddings do not use; it is
  dropped with a note unless the config asks for ``num_classes``.

Either weight-norm spelling of the head's last layer is accepted (legacy ``weight_g`` /
``weight_v`` and ``parametrizations.weight.original0/1``). Every other missing, unexpected
or mis-shaped key is a CheckpointKeysError that lists them.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from zoo.errors import CheckpointFormatError

logger = logging.getLogger("zoo.ca_dino")

TEACHER_PREFIX = "t_model."
STUDENT_PREFIX = "s_model."
_PARAMETRIZED = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def read_checkpoint(path: str | Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # pickle errors, truncated zip, non-tensor objects refused by weights_only
        raise CheckpointFormatError(
            f"{path} could not be read as a tensor-only torch checkpoint ({type(err).__name__}: {err}). "
            "It must be a WeSpeaker avg_model.pt / model_N.pt; zoo never unpickles arbitrary objects.") from None


def official_state_dict(obj, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The teacher/encoder state dict inside any accepted layout, plus notes on what was left out."""
    notes: list[str] = []
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{source} holds a {type(obj).__name__}, not a state dict.")
    if isinstance(obj.get("model"), dict):  # training checkpoint {'model': ..., 'optimizer': ...}
        inner = obj["model"]
        teacher = {k[len(TEACHER_PREFIX):]: v for k, v in inner.items() if k.startswith(TEACHER_PREFIX)}
        if teacher:
            others = sorted({k.split(".")[0] for k in inner if not k.startswith(TEACHER_PREFIX)})
            notes.append(f"took the teacher ('{TEACHER_PREFIX}*', {len(teacher)} tensors); left out {others}")
            obj = teacher
        elif any(k.startswith(STUDENT_PREFIX) for k in inner):
            raise CheckpointFormatError(f"{source} has '{STUDENT_PREFIX}*' keys but no '{TEACHER_PREFIX}*' teacher.")
        else:  # a supervised training checkpoint: {'model': speaker model}
            obj = inner
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        others = sorted(k for k in obj if k not in tensors)[:10]
        raise CheckpointFormatError(
            f"{source}: entries {others} are not tensors; expected a WeSpeaker state dict "
            "(avg_model.pt, or a training checkpoint with a 'model' entry).")
    if any(k.startswith("module.") for k in tensors):  # saved from a DDP wrapper
        tensors = {k[len("module."):] if k.startswith("module.") else k: v for k, v in tensors.items()}
    return normalize_weight_norm(tensors), notes


def normalize_weight_norm(state: dict) -> dict:
    """``...last_layer.parametrizations.weight.original0/1`` -> ``...last_layer.weight_g / weight_v``."""
    out = {}
    for key, value in state.items():
        for new_suffix, legacy in _PARAMETRIZED.items():
            if key.endswith(new_suffix):
                key = key[: -len(new_suffix)] + legacy
                break
        out[key] = value
    return out


def strict_load(model: torch.nn.Module, state: dict, source: str, hint: str = "") -> None:
    """``zoo.hub.load_state_dict_strict`` with WeSpeaker's hints (which option fixes a mismatch)."""
    from zoo.hub import load_state_dict_strict

    load_state_dict_strict(model, state, source, hint=hint or _hint)


def _hint(missing, unexpected) -> str:
    lines = []
    if any(k.startswith("projection_head.") for k in missing):
        lines.append("  The checkpoint has no DINO head (a supervised WeSpeaker model?): load it with "
                     "head.enabled=false, e.g. the card wespeaker-ecapa-tdnn512.")
    if any(k.startswith("projection_head.") for k in unexpected):
        lines.append("  The checkpoint has a DINO head but the config disables it: set head.enabled=true.")
    if any(k.startswith("bn2.") for k in missing):
        lines.append("  bn2.* is missing: the model was trained with emb_bn=False (WeSpeaker's supervised "
                     "recipe); set encoder.emb_bn=false.")
    if any(k.startswith("bn2.") for k in unexpected):
        lines.append("  bn2.* is present: the model was trained with emb_bn=True; set encoder.emb_bn=true.")
    if any(k.startswith(("s_model.", "t_model.")) for k in unexpected):
        lines.append("  Student/teacher prefixes outside a {'model': ...} entry: unexpected layout.")
    return "\n".join(lines) or "  Check that the checkpoint is a WeSpeaker ECAPA-TDNN of this size (ecapa512 / ecapa1024)."


def load_into(model, path: str | Path, source: str | None = None):
    """Load a WeSpeaker checkpoint file into a CADinoModel (strict)."""
    source = source or str(path)
    state, notes = official_state_dict(read_checkpoint(path), source)
    if model.projection is None:
        dropped = sorted(k for k in state if k.startswith("projection.") and not k.startswith("projection_head."))
        if dropped:
            # speech.md §3.2: supervised WeSpeaker models keep their AAM classifier in avg_model.pt.
            rows = tuple(state[dropped[0]].shape)
            notes.append(f"dropped the speaker classifier {dropped} {rows} (not used for embeddings)")
            state = {k: v for k, v in state.items() if k not in dropped}
    strict_load(model, state, source)
    for note in notes:
        logger.info("%s: %s", source, note)
    return model


def load(path: str, config: dict):
    """Registry loader: (WeSpeaker checkpoint path, full config) -> CADinoModel, strict."""
    from zoo.speech.ca_dino.builder import build

    model = build(config)
    load_into(model, path)
    model.eval()
    return model
