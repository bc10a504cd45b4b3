"""HuBERT checkpoints as users have them -> (architecture, transformers-named state dict).

Shared by every family whose encoder is :class:`zoo.models.hubert.HubertModel` (Sylber,
HuBERTopic). A checkpoint may be

* a file: a transformers ``HubertModel`` state dict (``pytorch_model.bin``,
  ``model.safetensors``; keys optionally under ``hubert.``), a fairseq HuBERT checkpoint
  (``hubert_base_ls960.pt``: weights under ``model`` with fairseq names and the training
  config as ``cfg`` or ``args``), or a family's own layout handled by its loader;
* a folder: a transformers ``save_pretrained`` folder or a Hub snapshot (``config.json``
  plus weights), or a folder holding one checkpoint file.

The architecture (:class:`zoo.models.hubert.HubertConfig` fields) comes from, in order:
the folder's ``config.json`` (transformers' field names: ``facebook/hubert-large-ll60k``'s
``config.json`` works as is), the fairseq ``cfg.model``/``args`` (names of
``facebookresearch/fairseq:fairseq/models/hubert/hubert.py``), or the tensor shapes. Shapes
give every size; two things they cannot show are taken from the convention of every released
HuBERT/wav2vec 2.0 checkpoint: conv strides (5, 2, 2, 2, 2, 2, 2) for kernels
(10, 3, 3, 3, 3, 2, 2), and pre-LN ("stable layer norm") exactly when every conv layer has a
LayerNorm (the ``large``/``xlarge`` layout); attention heads are 12 for width 768 and 16 for
1024 and 1280 unless the caller's config already fits. Anything else needs a ``config.json``.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from zoo.errors import CheckpointFormatError

log = logging.getLogger("zoo.models.hubert")

# Weight files of a transformers folder, best first.
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# The conv front end of every released HuBERT and wav2vec 2.0 (kernel -> stride by position).
STANDARD_KERNELS = [10, 3, 3, 3, 3, 2, 2]
STANDARD_STRIDES = [5, 2, 2, 2, 2, 2, 2]
# Attention heads of the released widths (base, large, xlarge).
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16}
# fairseq HubertConfig field -> transformers HubertConfig field (the same value).
_FAIRSEQ_FIELDS = {
    "encoder_layers": "num_hidden_layers", "encoder_embed_dim": "hidden_size",
    "encoder_ffn_embed_dim": "intermediate_size", "encoder_attention_heads": "num_attention_heads",
    "activation_fn": "hidden_act", "conv_bias": "conv_bias", "conv_pos": "num_conv_pos_embeddings",
    "conv_pos_groups": "num_conv_pos_embedding_groups", "layer_norm_first": "do_stable_layer_norm",
    "dropout": "hidden_dropout", "attention_dropout": "attention_dropout",
    "activation_dropout": "activation_dropout", "encoder_layerdrop": "layerdrop", "dropout_input": "feat_proj_dropout",
}


@dataclass
class HubertCheckpoint:
    """What :func:`read_hubert_checkpoint` found.

    ``encoder``: the ``HubertModel`` state dict in transformers' names; ``heads``: fairseq
    pretraining tensors (``label_embs_concat``, ``final_proj.*``), else empty; ``architecture``:
    HubertConfig fields from ``config.json`` or fairseq's config (empty when the file has
    none: see :func:`architecture_from_state_dict`); ``extras``: other settings of fairseq's
    config (``normalize``, ``final_dim``, ``untie_final_proj``, ``logit_temp``, ``label_rate``);
    ``layout``: "transformers" or "fairseq"; ``file``: the weights file read; ``complete``:
    whether ``architecture`` is a whole config (``config.json``) rather than some fields.
    """

    encoder: dict
    heads: dict = field(default_factory=dict)
    architecture: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    layout: str = "transformers"
    file: Path | None = None
    complete: bool = False


def resolve_checkpoint(path: str | Path, preferred: tuple[str, ...] = ()) -> tuple[Path, dict | None]:
    """A checkpoint file or folder -> (weights file, the folder's ``config.json`` as a dict or None).

    A folder is searched for ``preferred`` names, then transformers' weight files, then a single
    file with a checkpoint suffix. Raises :class:`~zoo.errors.CheckpointFormatError` for a missing
    path, a sharded folder (``*.index.json``), or a folder whose weights file is not clear.
    """
    path = Path(path).expanduser()
    if path.is_file():
        config = path.parent / "config.json"
        return path, _read_json(config) if path.name in TRANSFORMERS_WEIGHTS and config.is_file() else None
    if not path.is_dir():
        raise CheckpointFormatError(f"Checkpoint {str(path)!r} does not exist; give a checkpoint file or a folder "
                                    "with config.json and model.safetensors / pytorch_model.bin.")
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else None
    for name in tuple(preferred) + TRANSFORMERS_WEIGHTS:
        if (path / name).is_file():
            return path / name, config
    shards = sorted(p.name for p in path.glob("*.index.json"))
    if shards:
        raise CheckpointFormatError(f"{path} holds a sharded checkpoint ({shards[0]}); zoo reads single-file HuBERT "
                                    "checkpoints: save it with save_pretrained(..., max_shard_size='10GB').")
    candidates = sorted(p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    if len(candidates) == 1:
        return path / candidates[0], config
    what = f"several checkpoint files ({', '.join(candidates)})" if candidates else "no checkpoint file"
    raise CheckpointFormatError(f"{path} holds {what}; give the file itself, or a folder with config.json and "
                                f"{' or '.join(TRANSFORMERS_WEIGHTS)}.")


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointFormatError(f"{path} is not readable JSON ({err}).") from err
    if not isinstance(value, dict):
        raise CheckpointFormatError(f"{path} holds a {type(value).__name__}, not a JSON object.")
    return value


# --------------------------------------------------------------------------- configs


def plain(value, _depth: int = 0):
    """A pickled training config -> plain dicts, lists and scalars.

    Takes what :func:`zoo.models.checkpoints.read_checkpoint` gives for fairseq's ``args``
    (``argparse.Namespace``) and ``cfg`` (omegaconf ``DictConfig``/``ListConfig`` with value
    nodes): inert stand-ins recording their pickled state, or real objects. omegaconf keeps a
    container's items under ``_content`` and a value node's value under ``_val``.

    Raises CheckpointFormatError for a config nested more than 50 levels deep.
    """
    if _depth > 50:
        raise CheckpointFormatError("The checkpoint's config is nested too deeply to read.")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, _depth + 1) for v in value]
    state = _state(value)
    if isinstance(state, Mapping):
        if "_content" in state:
            return plain(state["_content"], _depth + 1)
        if "_val" in state:
            return plain(state["_val"], _depth + 1)
        return {str(k): plain(v, _depth + 1) for k, v in state.items() if not str(k).startswith("_")}
    return None


def _state(value):
    try:
        state = object.__getattribute__(value, "state")  # zoo.models.checkpoints.ForeignObject
    except AttributeError:
        state = getattr(value, "__dict__", None)  # a real argparse.Namespace or similar
    if isinstance(state, tuple) and state and isinstance(state[0], Mapping):
        state = state[0]
    return state


def architecture_from_transformers(config: Mapping[str, Any], source: str) -> dict:
    """HubertConfig fields from a transformers ``config.json`` (unknown fields dropped).

    Raises :class:`~zoo.errors.CheckpointFormatError` when ``model_type`` is not ``hubert``.
    """
    from zoo.models.hubert import HubertConfig

    model_type = config.get("model_type", "hubert")
    if model_type != "hubert":
        raise CheckpointFormatError(f"{source}: config.json is for a {model_type!r} model, not a HuBERT model.")
    known = {f.name for f in fields(HubertConfig)}
    return {k: v for k, v in config.items() if k in known}


def architecture_from_fairseq(cfg: Mapping[str, Any], source: str) -> tuple[dict, dict]:
    """(HubertConfig fields, other settings) from fairseq's ``cfg`` (``model``/``task``) or flat ``args``.

    Raises CheckpointFormatError naming ``source`` for an unknown fairseq ``extractor_mode``.
    """
    model = cfg.get("model") if isinstance(cfg.get("model"), Mapping) else cfg
    task = cfg.get("task") if isinstance(cfg.get("task"), Mapping) else cfg
    model = dict(model or {})
    if isinstance(model.get("w2v_args"), Mapping):  # a fine-tuned checkpoint keeps the pretraining config here
        inner = model["w2v_args"]
        return architecture_from_fairseq(inner, source)
    architecture = {ours: model[theirs] for theirs, ours in _FAIRSEQ_FIELDS.items() if model.get(theirs) is not None}
    if "layer_norm_first" in architecture or "do_stable_layer_norm" in architecture:
        architecture["do_stable_layer_norm"] = bool(architecture.get("do_stable_layer_norm"))
    mode = model.get("extractor_mode")
    if mode is not None:
        if mode not in ("default", "layer_norm"):
            raise CheckpointFormatError(f"{source}: unknown fairseq extractor_mode {mode!r}.")
        architecture["feat_extract_norm"] = "group" if mode == "default" else "layer"
    if model.get("conv_feature_layers"):
        layers = parse_conv_layers(str(model["conv_feature_layers"]), source)
        architecture.update(conv_dim=[d for d, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
                            conv_stride=[s for _, _, s in layers])
    architecture["feat_proj_layer_norm"] = True  # fairseq HuBERT always layer-norms the conv features
    extras = {key: model[key] for key in ("final_dim", "untie_final_proj", "logit_temp", "label_rate")
              if model.get(key) is not None}
    if task.get("normalize") is not None:
        extras["normalize"] = bool(task["normalize"])
    return architecture, extras


_CONV_TERM = re.compile(r"\s*\[\s*((?:\(\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\)\s*,?\s*)+)\]\s*(?:\*\s*(\d+))?\s*")


def parse_conv_layers(spec: str, source: str = "checkpoint") -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string -> ``[(dim, kernel, stride), ...]``, without ``eval``.

    The grammar fairseq's configs use: ``[(d,k,s), ...] * n`` terms joined by ``+``. Raises
    :class:`~zoo.errors.CheckpointFormatError` for anything else.
    """
    layers: list[tuple[int, int, int]] = []
    for term in spec.split("+"):
        match = _CONV_TERM.fullmatch(term)
        if not match:
            raise CheckpointFormatError(f"{source}: cannot read conv_feature_layers {spec!r}; give a config.json.")
        group = [tuple(int(v) for v in t) for t in re.findall(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)", match[1])]
        layers.extend(group * int(match[2] or 1))
    return layers  # type: ignore[return-value]


def architecture_from_state_dict(state: Mapping[str, torch.Tensor], source: str, fallback: Mapping[str, Any],
                                 known: Mapping[str, Any] | None = None) -> dict:
    """HubertConfig fields read off the tensor shapes of a transformers-named ``HubertModel`` state dict.

    ``known`` (fields the checkpoint's own config gave, e.g. fairseq's heads and strides) is
    used where shapes are silent; otherwise the conventions of the module docstring apply, and
    ``fallback`` (the caller's encoder config) gives ``num_attention_heads`` when it fits the
    width. Raises :class:`~zoo.errors.CheckpointFormatError` when the state dict lacks the
    tensors that show the sizes, when its conv kernels are not the standard ones (strides
    unknown), or when the head count is unknown.
    """
    known = dict(known or {})
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointFormatError(f"{source} has no {key!r}, so its HuBERT size cannot be read; give a "
                                        "config.json next to it or check that it is a HuBERT checkpoint.")
        return tuple(state[key].shape)

    layer_ids = {int(m[1]) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    num_layers = 0
    while num_layers in layer_ids:  # consecutive from 0; a stray higher index is reported as unexpected
        num_layers += 1
    conv_ids = sorted({int(m[1]) for k in state if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k))})
    hidden = shape("feature_projection.projection.weight")[0]
    kernels = [shape(f"feature_extractor.conv_layers.{i}.conv.weight")[2] for i in conv_ids]
    strides = list(known.get("conv_stride") or (STANDARD_STRIDES if kernels == STANDARD_KERNELS else []))
    if len(strides) != len(kernels):
        raise CheckpointFormatError(f"{source}: conv kernels {kernels} are not HuBERT's {STANDARD_KERNELS}, so the "
                                    "strides cannot be read off the weights; give a config.json next to it.")
    positional = next((k for k in ("encoder.pos_conv_embed.conv.parametrizations.weight.original1",
                                   "encoder.pos_conv_embed.conv.weight_v", "encoder.pos_conv_embed.conv.weight")
                       if k in state), None)
    if positional is None:
        shape("encoder.pos_conv_embed.conv.weight_v")  # raises, naming the key
    _, per_group, pos_kernel = shape(positional)
    layer_norm_convs = "feature_extractor.conv_layers.1.layer_norm.weight" in state
    heads = int(known.get("num_attention_heads") or fallback.get("num_attention_heads") or 0)
    if not known.get("num_attention_heads") and (not heads or hidden % heads
                                                 or int(fallback.get("hidden_size") or 0) != hidden):
        if hidden not in HEADS_BY_WIDTH:
            raise CheckpointFormatError(f"{source}: a width of {hidden} is not a released HuBERT size, so the number "
                                        "of attention heads is unknown; give a config.json next to it.")
        heads = HEADS_BY_WIDTH[hidden]
    return {
        "hidden_size": hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "intermediate_size": shape("encoder.layers.0.feed_forward.intermediate_dense.weight")[0],
        "conv_dim": [shape(f"feature_extractor.conv_layers.{i}.conv.weight")[0] for i in conv_ids],
        "conv_kernel": kernels,
        "conv_stride": strides,
        "conv_bias": "feature_extractor.conv_layers.0.conv.bias" in state,
        "feat_extract_norm": "layer" if layer_norm_convs else "group",
        "do_stable_layer_norm": layer_norm_convs,
        "feat_proj_layer_norm": "feature_projection.layer_norm.weight" in state,
        "num_conv_pos_embeddings": pos_kernel,
        "num_conv_pos_embedding_groups": hidden // per_group,
    }


# --------------------------------------------------------------------------- reading


def is_fairseq(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint uses fairseq's HuBERT names (``post_extract_proj``, ``encoder.pos_conv.0``, ``mask_emb``)."""
    weights = checkpoint.get("model") if isinstance(checkpoint.get("model"), Mapping) else checkpoint
    return any(str(k).startswith(("post_extract_proj.", "encoder.pos_conv.0.", "w2v_encoder.")) or k == "mask_emb"
               for k in weights)


def read_hubert_checkpoint(path: str | Path, *, prefer: str = "parametrizations", preferred: tuple[str, ...] = (),
                           state_dict_of=None) -> HubertCheckpoint:
    """Read a HuBERT checkpoint file or folder (see the module docstring), without running pickled code.

    ``prefer``: the weight-norm spelling of the returned keys ("parametrizations" or
    "legacy"). ``preferred``: file names to pick first in a folder. ``state_dict_of``: a
    family's function ``(checkpoint, source) -> state dict`` for its own non-fairseq layouts
    (default: a plain state dict, or one under ``model``/``state_dict``; a ``hubert.`` prefix
    is dropped). Raises :class:`~zoo.errors.CheckpointFormatError` (or ``CheckpointKeysError``)
    naming the file when it is not a HuBERT checkpoint.
    """
    from zoo.models.checkpoints import fairseq_hubert_to_hf, find_state_dict, normalize_weight_norm_keys, read_checkpoint

    file, config_json = resolve_checkpoint(path, preferred)
    source = str(file)
    checkpoint = read_checkpoint(file)
    if is_fairseq(checkpoint):
        encoder, heads = fairseq_hubert_to_hf(checkpoint, prefer=prefer, source=source)
        architecture, extras = {}, {}
        for name in ("cfg", "args"):  # fairseq >= 0.10 saves an omegaconf cfg; older ones argparse args
            cfg = plain(checkpoint.get(name)) if checkpoint.get(name) is not None else None
            if isinstance(cfg, Mapping) and cfg:
                architecture, extras = architecture_from_fairseq(cfg, source)
                break
        if config_json is not None:
            architecture = architecture_from_transformers(config_json, source)
        return HubertCheckpoint(encoder, heads, architecture, extras, "fairseq", file, config_json is not None)
    state = state_dict_of(checkpoint, source) if state_dict_of is not None else find_state_dict(checkpoint, source)
    if any(k.startswith("hubert.") for k in state):
        from zoo.errors import CheckpointKeysError

        outside = sorted(k for k in state if not k.startswith("hubert."))
        if outside:
            raise CheckpointKeysError(source, unexpected=outside, hint=(
                "  This looks like a transformers task model (e.g. HubertForCTC) whose head zoo does not load; "
                "load a HubertModel checkpoint such as facebook/hubert-base-ls960."))
        state = {k[len("hubert."):]: v for k, v in state.items()}
    if not any(k.startswith("feature_extractor.") for k in state):
        raise CheckpointFormatError(f"{source} is neither a transformers HubertModel state dict nor a fairseq HuBERT "
                                    f"checkpoint (first keys: {sorted(state)[:8]}).")
    architecture = architecture_from_transformers(config_json, source) if config_json is not None else {}
    return HubertCheckpoint(normalize_weight_norm_keys(state, prefer=prefer), {}, architecture, {}, "transformers",
                            file, config_json is not None)


def encoder_config(found: HubertCheckpoint, requested: Mapping[str, Any], source: str) -> dict:
    """The encoder config to build for ``found``: ``requested`` with the checkpoint's architecture on top.

    From ``config.json`` when there is one, else from the tensor shapes
    (:func:`architecture_from_state_dict`) with fairseq's config on top; ``mask_time_prob`` follows whether the
    weights hold ``masked_spec_embed``. Logs the sizes when they differ from ``requested``.
    """
    if found.complete:
        architecture = dict(found.architecture)
    else:  # shapes, with what the checkpoint's own config says on top
        architecture = architecture_from_state_dict(found.encoder, source, requested, found.architecture)
        architecture.update(found.architecture)
    # transformers' HubertModel has masked_spec_embed exactly when some masking is configured: follow the weights.
    masking = float(architecture.get("mask_time_prob", requested.get("mask_time_prob")) or 0.0)
    if "masked_spec_embed" in found.encoder:
        architecture["mask_time_prob"] = masking or 0.05
    else:
        architecture.update(mask_time_prob=0.0, mask_feature_prob=0.0)
    merged = {**dict(requested), **architecture}
    sizes = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "do_stable_layer_norm")
    if any(merged.get(k) != requested.get(k) for k in sizes):
        log.info("%s: architecture from the checkpoint: %d layers x %d wide, %d heads, FFN %d%s", source,
                 merged["num_hidden_layers"], merged["hidden_size"], merged["num_attention_heads"],
                 merged["intermediate_size"], ", pre-LN (stable layer norm)" if merged.get("do_stable_layer_norm") else "")
    return merged


__all__ = ["HubertCheckpoint", "architecture_from_fairseq", "architecture_from_state_dict",
           "architecture_from_transformers", "encoder_config", "is_fairseq", "parse_conv_layers", "plain",
           "read_hubert_checkpoint", "resolve_checkpoint"]
