"""Reading official checkpoints safely, and key maps.

* ``read_checkpoint``: safetensors, or ``torch.load(weights_only=True)``. Official fairseq and
  Lightning checkpoints also pickle their training config (``argparse.Namespace``, omegaconf
  ``DictConfig``, Lightning's ``AttributeDict``) next to the weights, which ``weights_only`` refuses.
  For those, ``torch.load`` runs with a restricted ``pickle_module``: torch still parses the file
  and rebuilds the tensors, and every other class the pickle names becomes an inert
  ``ForeignObject`` that only records its state. No foreign module is ever imported.
* strict loading is ``zoo.hub.load_state_dict_strict`` (one implementation for every loader).
* ``remap_keys``: torchtune-style key templates with ``{}`` for layer indices.
* ``fairseq_hubert_to_hf``: fairseq HuBERT -> transformers' ``HubertModel`` names
  (facebookresearch/fairseq:fairseq/models/hubert/hubert.py ->
  huggingface/transformers:src/transformers/models/hubert/convert_hubert_original_pytorch_checkpoint_to_pytorch.py).
"""
from __future__ import annotations

import functools
import pickle
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError
from zoo.hub import normalize_weight_norm_keys  # noqa: F401  (re-exported for the family loaders)
from zoo.weights import is_safetensors

# --------------------------------------------------------------------------- restricted unpickling


class ForeignObject:
    """Stand-in for a class a checkpoint names but zoo does not import (e.g. ``argparse.Namespace``).

    ``module``/``name`` say what it stood for; ``args``, ``state``, ``items`` and ``list``
    hold what the pickle gave it. Attribute access falls back to ``state`` when it is a dict.
    """

    module = "?"
    name = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "state", kwargs or None)
        object.__setattr__(obj, "items", {})
        object.__setattr__(obj, "list", [])
        return obj

    def __init__(self, *args, **kwargs):  # state arrives through __new__/__setstate__
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "state", state)

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        """Record an item a pickle appends (list subclasses)."""
        self.list.append(value)

    def extend(self, values):
        """Record items a pickle appends in bulk (list subclasses)."""
        self.list.extend(values)

    def __getattr__(self, key):
        state = object.__getattribute__(self, "state")
        if isinstance(state, dict) and key in state:
            return state[key]
        if isinstance(state, tuple) and state and isinstance(state[0], dict) and key in state[0]:
            return state[0][key]
        raise AttributeError(key)

    def __call__(self, *args, **kwargs):  # a stand-in used as a function (REDUCE) makes another stand-in
        return type(self)(*args, **kwargs)

    def __repr__(self):
        return f"ForeignObject({self.module}.{self.name})"


_FOREIGN_CLASSES: dict[tuple[str, str], type] = {}


def _foreign_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _FOREIGN_CLASSES:
        _FOREIGN_CLASSES[key] = type(f"Foreign_{name}", (ForeignObject,), {"module": module, "name": name})
    return _FOREIGN_CLASSES[key]


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch's tensor-subclass rebuild, limited to plain tensors and parameters."""
    tensor = func(*args)
    if new_type is torch.nn.Parameter and not isinstance(tensor, torch.nn.Parameter):
        tensor = torch.nn.Parameter(tensor, requires_grad=tensor.requires_grad)
    return tensor


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The real objects a checkpoint may name: torch's tensor/storage rebuilders and a few builtins."""
    import _codecs
    import collections

    from torch import _utils

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex,
        ("builtins", "bytearray"): bytearray, ("builtins", "slice"): slice,
        ("_codecs", "encode"): _codecs.encode,  # bytes in protocol-2 pickles
        ("torch", "Size"): torch.Size, ("torch", "device"): torch.device, ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state"):
        allowed[("torch._utils", name)] = getattr(_utils, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Real objects only for torch's tensor rebuild functions and a few builtins; inert stand-ins for the rest.

    Every way a pickle can reach code (``GLOBAL``/``STACK_GLOBAL``/``INST``/``OBJ`` and the copyreg
    extension codes) goes through ``find_class``, so no module a checkpoint names is ever imported.
    ``torch.load`` subclasses it (``pickle_module``) and adds its own storage handling.
    """

    def __init__(self, file, *args, **kwargs):
        super().__init__(file, *args, **kwargs)
        self._allowed = _allowed_globals()
        self.foreign: set[str] = set()

    def find_class(self, module: str, name: str):
        """The allowed real object for ``module.name``, a torch dtype, or an inert ``ForeignObject`` subclass
        (recorded in ``self.foreign``). Never imports ``module``.
        """
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        self.foreign.add(f"{module}.{name}")
        return _foreign_class(module, name)


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load`` (legacy format headers)."""

    __name__ = "zoo.models.checkpoints.restricted_pickle"
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()


def restricted_load(path: str | Path):
    """Read a torch checkpoint without importing any class it names.

    torch parses the file (zip or legacy format, storages, byte order) exactly as ``torch.load`` always
    does; only the unpickler is ours: tensors are rebuilt by torch's own functions and every other class
    becomes an inert :class:`ForeignObject`. Raises :class:`CheckpointFormatError` for an unreadable file.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as err:  # any failure to parse means the file is not a readable checkpoint
        raise CheckpointFormatError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}). It may be truncated or "
            "corrupt: download it again.") from err


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a checkpoint file (a plain state dict -> ``dict[str, Tensor]``).

    safetensors via ``safetensors.torch.load_file``; .pt/.ckpt/.pth/.bin via
    ``torch.load(map_location="cpu", weights_only=True)``, falling back to the restricted
    unpickler when the pickle also holds foreign objects (fairseq's ``args``/``cfg``).

    Raises CheckpointFormatError when the file is missing, unreadable (truncated, corrupt, not a checkpoint) or
    holds something other than a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"Checkpoint {path} does not exist or is not a file; check the path.")
    if is_safetensors(path):
        from zoo.hub import read_safetensors

        return read_safetensors(path, str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        obj = restricted_load(path)  # weights_only refused a class: parse without importing it
    except Exception as err:
        raise CheckpointFormatError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}). It may be truncated or "
            "corrupt: download it again.") from err
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a dict of tensors.")
    return dict(obj)


def find_state_dict(checkpoint: Mapping[str, Any], source: str,
                    keys: Iterable[str] = ("model", "state_dict", "module", "ema")) -> dict[str, torch.Tensor]:
    """The tensor dict of a checkpoint: itself, or the first of ``keys`` that holds one (fairseq: ``model``).

    Raises CheckpointFormatError when no entry holds tensors, listing the top-level keys.
    """
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    for key in keys:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    raise CheckpointFormatError(
        f"{source} holds no state dict: top-level keys are {sorted(map(str, checkpoint))[:20]}; expected tensors, "
        f"or a dict of tensors under one of {list(keys)}.")


# --------------------------------------------------------------------------- key handling
def _template_regex(pattern: str) -> re.Pattern:
    parts = re.split(r"(\{\}|\*)", pattern)
    regex = "".join(r"(\d+)" if p == "{}" else "(.+)" if p == "*" else re.escape(p) for p in parts)
    return re.compile(regex + r"\Z")


def _fill(target: str, groups: tuple[str, ...]) -> str:
    pieces = re.split(r"(\{\}|\*)", target)
    values = iter(groups)
    return "".join(next(values) if p in ("{}", "*") else p for p in pieces)


def rename_key(key: str, rules: list[tuple[str, str]]) -> str | None:
    """The new name of one ``key`` under ``remap_keys``-style ``rules`` (first match wins), or None.

    A pure function of the key, so streaming loaders can apply a key map shard by shard.
    """
    for pattern, target in rules:
        match = _compiled_rule(pattern).match(key)
        if match:
            return _fill(target, match.groups())
    return None


@functools.lru_cache(maxsize=4096)
def _compiled_rule(pattern: str) -> re.Pattern:
    return _template_regex(pattern)


def remap_keys(state_dict: Mapping[str, Any], rules: list[tuple[str, str]], *, strict: bool = True,
               source: str = "state dict") -> dict[str, Any]:
    """Rename keys by templates: ``{}`` matches a layer index, a ``*`` the rest of the key.

    ``("encoder.layers.{}.fc1.*", "encoder.layers.{}.feed_forward.intermediate_dense.*")``.
    The first matching rule wins. Unmatched keys are an error listing them (``strict``) or kept.
    """
    compiled = []
    for pattern, target in rules:
        if re.findall(r"\{\}|\*", pattern) != re.findall(r"\{\}|\*", target):
            raise ValueError(f"remap rule {pattern!r} -> {target!r}: placeholders must appear in the same order")
        compiled.append((_template_regex(pattern), target))
    out: dict[str, Any] = {}
    unmatched = []
    for key, value in state_dict.items():
        for regex, target in compiled:
            match = regex.match(key)
            if match:
                new = _fill(target, match.groups())
                break
        else:
            if strict:
                unmatched.append(key)
                continue
            new = key
        if new in out:
            raise CheckpointKeysError(source, hint=f"  two keys map to {new!r}.")
        out[new] = value
    if unmatched:
        raise CheckpointKeysError(source, unexpected=unmatched, hint="  these keys match no rule of the key map.")
    return out


# --------------------------------------------------------------------------- fairseq HuBERT
# fairseq -> transformers names, as transformers' converter maps them
# (huggingface/transformers:src/transformers/models/hubert/convert_hubert_original_pytorch_checkpoint_to_pytorch.py).
FAIRSEQ_HUBERT_RULES = [
    ("feature_extractor.conv_layers.{}.0.*", "feature_extractor.conv_layers.{}.conv.*"),
    ("feature_extractor.conv_layers.{}.2.1.*", "feature_extractor.conv_layers.{}.layer_norm.*"),  # "layer" mode
    ("feature_extractor.conv_layers.{}.2.*", "feature_extractor.conv_layers.{}.layer_norm.*"),    # GroupNorm on 0
    ("layer_norm.*", "feature_projection.layer_norm.*"),
    ("post_extract_proj.*", "feature_projection.projection.*"),
    ("mask_emb", "masked_spec_embed"),
    ("encoder.pos_conv.0.*", "encoder.pos_conv_embed.conv.*"),
    ("encoder.layer_norm.*", "encoder.layer_norm.*"),
    ("encoder.layers.{}.self_attn.k_proj.*", "encoder.layers.{}.attention.k_proj.*"),
    ("encoder.layers.{}.self_attn.v_proj.*", "encoder.layers.{}.attention.v_proj.*"),
    ("encoder.layers.{}.self_attn.q_proj.*", "encoder.layers.{}.attention.q_proj.*"),
    ("encoder.layers.{}.self_attn.out_proj.*", "encoder.layers.{}.attention.out_proj.*"),
    ("encoder.layers.{}.self_attn_layer_norm.*", "encoder.layers.{}.layer_norm.*"),
    ("encoder.layers.{}.fc1.*", "encoder.layers.{}.feed_forward.intermediate_dense.*"),
    ("encoder.layers.{}.fc2.*", "encoder.layers.{}.feed_forward.output_dense.*"),
    ("encoder.layers.{}.final_layer_norm.*", "encoder.layers.{}.final_layer_norm.*"),
]
FAIRSEQ_PRETRAIN_KEYS = ("label_embs_concat", "final_proj.weight", "final_proj.bias")
_FINETUNED_PREFIX = "w2v_encoder.w2v_model."


def fairseq_hubert_to_hf(state_dict: Mapping[str, Any], *, prefer: str = "parametrizations",
                         source: str = "fairseq HuBERT checkpoint") -> tuple[dict, dict]:
    """fairseq HuBERT weights -> (``HubertModel`` state dict, pretraining extras).

    Accepts the whole checkpoint (weights under ``model``) or the weights themselves.
    Extras are ``label_embs_concat`` and ``final_proj.*``; any other key no rule maps is
    a ``CheckpointKeysError`` listing it.
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    weights = {(k[len(_FINETUNED_PREFIX):] if k.startswith(_FINETUNED_PREFIX) else k): v
               for k, v in state_dict.items()}
    extras = {k: weights.pop(k) for k in FAIRSEQ_PRETRAIN_KEYS if k in weights}
    encoder = remap_keys(weights, FAIRSEQ_HUBERT_RULES, source=source)
    return normalize_weight_norm_keys(encoder, prefer=prefer), extras


def hf_to_fairseq_hubert(state_dict: Mapping[str, Any], extras: Mapping[str, Any] | None = None) -> dict:
    """The inverse map (legacy weight-norm spelling, as fairseq saves): for writing test fixtures and exports."""
    inverse = []
    for pattern, target in FAIRSEQ_HUBERT_RULES:
        if pattern == "feature_extractor.conv_layers.{}.2.1.*":
            continue  # "layer"-mode models; the GroupNorm spelling is the common one
        inverse.append((target, pattern))
    out = remap_keys(normalize_weight_norm_keys(state_dict, prefer="legacy"), inverse, source="HubertModel state dict")
    out.update(extras or {})
    return out


__all__ = [
    "FAIRSEQ_HUBERT_RULES", "ForeignObject", "RestrictedUnpickler", "fairseq_hubert_to_hf", "find_state_dict",
    "hf_to_fairseq_hubert", "normalize_weight_norm_keys", "read_checkpoint", "remap_keys", "restricted_load",
]
