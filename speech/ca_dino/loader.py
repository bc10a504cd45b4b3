"""WeSpeaker checkpoints -> CA-DINO zoo model, strict and safe.

Accepted sources (``load(path, config)``, also ``zoo convert ca-dino SRC DST``):

* a checkpoint file, read with ``torch.load(weights_only=True)`` (no code runs):

  - ``avg_model.pt`` of WeSpeaker's DINO recipe: a plain teacher state dict with the ECAPA
    keys plus ``projection_head.*`` (``last_layer.weight_g`` / ``weight_v``), as written by
    ``wenet-e2e/wespeaker:wespeaker/ssl/bin/average_dino_model.py``;
  - a DINO training checkpoint ``{'model': DINO.state_dict(), 'optimizer': ...}``: the keys under
    ``t_model.`` (the teacher, which evaluation uses) are taken; ``s_model.*`` (student) and
    ``dino_loss_calculator.center`` are training state and are left out, with a log note;
  - a supervised WeSpeaker ECAPA (Hub ``Wespeaker/wespeaker-voxceleb-ecapa-tdnn512`` /
    ``...1024``, ``avg_model.pt``): no DINO head, no ``bn2`` (``emb_bn=False``), and an AAM
    classifier ``projection.weight`` [speakers, 192] that embeddings do not use; it is dropped
    with a note unless the config asks for ``num_classes``;

* a folder: a WeSpeaker experiment or Hub snapshot (``avg_model.pt``, or the one ``*.pt`` /
  ``*.pth`` file, plus an optional WeSpeaker ``config.yaml`` whose ``model`` / ``model_args``
  are checked against the tensors), or a zoo-format folder (``config.json`` +
  ``model.safetensors``), whose ``config.json`` gives the architecture.

The architecture of a WeSpeaker checkpoint is read from its tensor shapes
(:func:`architecture_from_state_dict`): channels, Res2Net scale, SE / attention bottlenecks,
global-context pooling, embedding size, ``bn2``, and the DINO head's widths, so no size or
override is needed. Where the given config says otherwise, the checkpoint wins and a log
line names each changed field; a config with ``head.enabled=false`` drops a checkpoint's
DINO head (with a note). Either weight-norm spelling of the head's last layer is accepted
(legacy ``weight_g`` / ``weight_v`` and ``parametrizations.weight.original0/1``). Every
other missing, unexpected or mis-shaped key is a CheckpointKeysError that lists them.
"""
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import torch

from zoo.errors import CheckpointFormatError

logger = logging.getLogger("zoo.ca_dino")

TEACHER_PREFIX = "t_model."
STUDENT_PREFIX = "s_model."
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
_WESPEAKER_MODEL = re.compile(r"^ECAPA_TDNN(_GLOB)?_c(\d+)$")


def read_checkpoint(path: str | Path):
    """``torch.load(path, weights_only=True)`` on CPU; CheckpointFormatError when that refuses or fails."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # pickle errors, truncated zip, non-tensor objects refused by weights_only
        raise CheckpointFormatError(
            f"{path} could not be read as a tensor-only torch checkpoint ({type(err).__name__}: {err}). "
            "It must be a WeSpeaker avg_model.pt / model_N.pt; zoo never unpickles arbitrary objects.") from None


def official_state_dict(obj, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The teacher/encoder state dict inside any accepted layout, plus notes on what was left out.

    Raises CheckpointFormatError for a non-dict, non-tensor entries, or a student without a teacher.
    """
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
    from zoo.hub import normalize_weight_norm_keys

    return normalize_weight_norm_keys(tensors, prefer="legacy"), notes


# ----------------------------------------------------------------------------- architecture from tensors

def architecture_from_state_dict(state: dict[str, torch.Tensor]) -> dict | None:
    """The ECAPA / DINO-head config a WeSpeaker state dict was built with, read from tensor shapes.

    Returns ``{"encoder": {...}, "head": {...}, "num_classes": int, "utterance_mean": bool, "global_cmvn": bool}`` in the keys of
    ``zoo.speech.ca_dino.builder.DEFAULT_CONFIG`` (``num_classes`` = rows of ``projection.weight``,
    0 without a classifier), or None when the dict lacks the ECAPA anchor keys
    (``layer1.conv.weight``, ``conv.weight``, ``pool.linear1.weight``, ``linear.weight``), in which
    case strict loading reports the keys.
    """
    anchors = ("layer1.conv.weight", "conv.weight", "pool.linear1.weight", "linear.weight",
               "layer2.se_res2block.1.convs.0.weight", "layer2.se_res2block.3.linear1.weight")
    if not all(key in state for key in anchors):
        return None
    channels, feat_dim, _ = state["layer1.conv.weight"].shape
    cat_out = state["conv.weight"].shape[0]
    pool_bottleneck, pool_in = state["pool.linear1.weight"].shape[:2]
    width = state["layer2.se_res2block.1.convs.0.weight"].shape[0]
    encoder = {
        "channels": int(channels),
        "feat_dim": int(feat_dim),
        "embed_dim": int(state["linear.weight"].shape[0]),
        "global_context_att": bool(pool_in == 3 * cat_out),
        "emb_bn": "bn2.weight" in state,
        "scale": int(channels // width),
        "se_bottleneck": int(state["layer2.se_res2block.3.linear1.weight"].shape[0]),
        "pool_bottleneck": int(pool_bottleneck),
        "cat_out_channels": int(cat_out),
    }
    # zoo's utterance_mean option widens bn/linear by feat_dim inputs (the utterance mean log-mel vector)
    utterance_mean = int(state["linear.weight"].shape[1]) == 2 * int(cat_out) + int(feat_dim)
    architecture = {"encoder": encoder, "head": {"enabled": False}, "num_classes": 0, "utterance_mean": utterance_mean,
                    "global_cmvn": "global_cmvn.mean" in state}  # zoo's fbank.global_cmvn buffers
    if "projection.weight" in state:
        architecture["num_classes"] = int(state["projection.weight"].shape[0])
    if "projection_head.last_layer.weight_v" in state:
        out_dim, bottleneck = state["projection_head.last_layer.weight_v"].shape
        linears = sorted(int(m.group(1)) for key in state
                         if (m := re.fullmatch(r"projection_head\.mlp\.(\d+)\.weight", key)) and state[key].dim() == 2)
        head = {"enabled": True, "out_dim": int(out_dim), "bottleneck_dim": int(bottleneck),
                "nlayers": max(len(linears), 1),
                "use_bn": "projection_head.mlp.1.running_mean" in state,
                # WeSpeaker's norm_last_layer fixes weight_g at 1; a trained g means it was learnable
                "norm_last_layer": bool(torch.all(state["projection_head.last_layer.weight_g"] == 1))}
        if linears:
            head["hidden_dim"] = int(state[f"projection_head.mlp.{linears[0]}.weight"].shape[0])
        architecture["head"] = head
    return architecture


def _adopt(config: dict, architecture: dict, source: str) -> dict:
    """``config`` with the checkpoint's architecture; logs each field that changes."""
    config = copy.deepcopy(config)
    changed = []
    for key, value in architecture["encoder"].items():
        if config["encoder"].get(key) != value:
            changed.append(f"encoder.{key}={value} (config: {config['encoder'].get(key)})")
            config["encoder"][key] = value
    head = config.setdefault("head", {})
    if architecture["head"]["enabled"] and head.get("enabled", True) is False:
        pass  # the config drops the checkpoint's DINO head (see load_into)
    else:
        for key, value in architecture["head"].items():
            if head.get(key) != value:
                changed.append(f"head.{key}={value} (config: {head.get(key)})")
                head[key] = value
    if bool(config.get("utterance_mean", False)) != architecture["utterance_mean"]:
        changed.append(f"utterance_mean={architecture['utterance_mean']} (config: {config.get('utterance_mean')})")
        config["utterance_mean"] = architecture["utterance_mean"]
    fbank = config.setdefault("fbank", {})
    if bool(fbank.get("global_cmvn", False)) != architecture["global_cmvn"]:
        changed.append(f"fbank.global_cmvn={architecture['global_cmvn']} (config: {fbank.get('global_cmvn')})")
        fbank["global_cmvn"] = architecture["global_cmvn"]
    if int(config.get("num_classes") or 0) > 0 and config["num_classes"] != architecture["num_classes"]:
        changed.append(f"num_classes={architecture['num_classes']} (config: {config['num_classes']})")
        config["num_classes"] = architecture["num_classes"]
    if changed:
        logger.info("%s: architecture read from the checkpoint's tensors: %s", source, ", ".join(changed))
    return config


def _check_wespeaker_config(folder_config: dict, architecture: dict | None, source: str) -> None:
    """A WeSpeaker ``config.yaml`` (``model``, ``model_args``) must agree with the tensors."""
    name = str(folder_config.get("model", ""))
    match = _WESPEAKER_MODEL.match(name)
    if name and not match:
        raise CheckpointFormatError(f"{source}: config says model {name!r}; CA-DINO loads WeSpeaker ECAPA-TDNN "
                                    "models (ECAPA_TDNN_GLOB_c512 / _c1024) only.")
    if architecture is None:
        return
    expected = {}
    if match:
        expected["channels"] = int(match.group(2))
        expected["global_context_att"] = bool(match.group(1))
    args = folder_config.get("model_args") or {}
    for key in ("feat_dim", "embed_dim", "emb_bn"):
        if key in args:
            expected[key] = args[key]
    wrong = {k: (v, architecture["encoder"][k]) for k, v in expected.items() if architecture["encoder"][k] != v}
    if wrong:
        details = ", ".join(f"{k}: config {a}, tensors {b}" for k, (a, b) in wrong.items())
        raise CheckpointFormatError(f"{source}: the folder's config and its checkpoint disagree ({details}); "
                                    "the folder mixes files of two models.")


def _read_folder_config(folder: Path) -> tuple[str | None, dict]:
    for name in ("config.yaml", "config.yml", "config.json"):
        path = folder / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            try:
                if name.endswith(".json"):
                    data = json.loads(text)
                else:
                    import yaml

                    data = yaml.safe_load(text)
            except Exception as err:  # yaml/json syntax errors
                raise CheckpointFormatError(f"{path} is not valid {name.rsplit('.', 1)[-1]}: {err}") from None
            return name, data if isinstance(data, dict) else {}
    return None, {}


def find_checkpoint(folder: str | Path) -> Path:
    """The weights file of a WeSpeaker folder: ``avg_model.pt`` if present, else its only ``*.pt``/``*.pth``/``*.ckpt``.

    Raises CheckpointFormatError naming the candidates when there are none or several.
    """
    folder = Path(folder)
    for name in ("avg_model.pt", "avg_model.pth", "avg_model"):
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _CHECKPOINT_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
        raise CheckpointFormatError(f"{folder} holds no checkpoint (avg_model.pt, *.pt, *.pth; found {found}). "
                                    "Give the checkpoint file, or a folder that has one.")
    names = ", ".join(p.name for p in candidates[:10])
    raise CheckpointFormatError(f"{folder} holds several checkpoints ({names}); give the one to convert as a file "
                                "(WeSpeaker's average of the last epochs is avg_model.pt).")


# ----------------------------------------------------------------------------- loading

def strict_load(model: torch.nn.Module, state: dict, source: str) -> None:
    """``zoo.hub.load_state_dict_strict`` with WeSpeaker's hints (which layout a mismatch points to)."""
    from zoo.hub import load_state_dict_strict

    load_state_dict_strict(model, state, source, hint=_hint)


def _hint(missing, unexpected) -> str:
    lines = []
    if any(k.startswith(("s_model.", "t_model.")) for k in unexpected):
        lines.append("  Student/teacher prefixes outside a {'model': ...} entry: unexpected layout.")
    if any(k.startswith(("front.", "layer1.0.", "blocks.", "mfa.", "asp.")) for k in unexpected):
        lines.append("  These keys belong to another network (a ResNet or SpeechBrain's ECAPA), "
                     "not WeSpeaker's ECAPA-TDNN.")
    return "\n".join(lines) or ("  Check that the checkpoint is a WeSpeaker ECAPA-TDNN (ECAPA_TDNN_GLOB_c512 / "
                                "_c1024, DINO avg_model.pt or a supervised avg_model.pt), not truncated.")


def load_into(model, path: str | Path, source: str | None = None):
    """Load a WeSpeaker checkpoint file into a built CADinoModel (strict); returns the model.

    The model's structure must already match (``load`` builds it from the tensors); the
    supervised classifier and, when the model has none, the DINO head are dropped with a note.
    """
    source = source or str(path)
    state, notes = official_state_dict(read_checkpoint(path), source)
    return _load_state(model, state, notes, source)


def _load_state(model, state: dict, notes: list[str], source: str):
    state = _drop_unused(model, state, notes)
    strict_load(model, state, source)
    for note in notes:
        logger.info("%s: %s", source, note)
    return model


def _drop_unused(model, state: dict, notes: list[str]) -> dict:
    if model.projection is None:
        dropped = sorted(k for k in state if k.startswith("projection.") and not k.startswith("projection_head."))
        if dropped:
            # supervised WeSpeaker models keep their AAM classifier (ArcMarginProduct) in avg_model.pt
            rows = tuple(state[dropped[0]].shape)
            notes.append(f"dropped the speaker classifier {dropped} {rows} (not used for embeddings)")
            state = {k: v for k, v in state.items() if k not in dropped}
    if model.projection_head is None:
        head = sorted(k for k in state if k.startswith("projection_head."))
        if head:
            notes.append(f"dropped the DINO head ({len(head)} tensors; the config has head.enabled=false)")
            state = {k: v for k, v in state.items() if k not in head}
    return state


def load(path: str, config: dict):
    """Registry loader: (WeSpeaker checkpoint file or folder, full config) -> CADinoModel in eval mode.

    See the module docstring for the accepted sources. The architecture comes from the
    checkpoint's tensors (or a zoo folder's ``config.json``); ``config`` supplies everything
    else (front end, ``min_embed_seconds``) and may drop the head (``head.enabled=false``) or
    the classifier (``num_classes=0``, the default). Raises CheckpointFormatError for an
    unreadable or ambiguous source, CheckpointKeysError for mismatched keys.
    """
    from zoo.speech.ca_dino.builder import build

    source = Path(path)
    if source.is_dir():
        name, folder_config = _read_folder_config(source)
        if name == "config.json" and "family" in folder_config:  # a zoo-format folder
            from zoo.hub import build_from_zoo_folder

            if folder_config["family"] != "ca-dino":
                raise CheckpointFormatError(f"{source} is a zoo folder of family {folder_config['family']!r}, "
                                            "not ca-dino.")
            model = build_from_zoo_folder(source, str(source))
            model.eval()
            return model
        checkpoint = find_checkpoint(source)
    else:
        name, folder_config, checkpoint = None, {}, source
    label = str(checkpoint)
    state, notes = official_state_dict(read_checkpoint(checkpoint), label)
    architecture = architecture_from_state_dict(state)
    if name is not None:
        _check_wespeaker_config(folder_config, architecture, f"{source / name}")
    if architecture is not None:
        config = _adopt(config, architecture, label)
    model = build(config)
    _load_state(model, state, notes, label)
    model.eval()
    return model
