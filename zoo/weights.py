"""Big-model weights: build without initialising, stream checkpoints in, save in shards.

Loading a checkpoint the naive way builds the model (random initialisation of every
weight), reads the whole file into a second copy, then copies it over: twice the memory
and most of the time spent on an initialisation that is thrown away. Here:

* ``init_empty()`` builds a model whose **parameters** live on the meta device (no memory,
  no initialisation) while **buffers** are built for real, so values a constructor computes
  (rotary ``inv_freq``, sin-cos tables, masks, non-persistent buffers) are exactly what a
  normal build gives.
* ``read_index(path)`` says what a checkpoint holds (name, shape, dtype, file) from the
  safetensors headers, a ``*.index.json`` weight map, or a memory-mapped torch pickle,
  without reading any weight.
* ``load_into(model, path)`` checks the keys strictly (``CheckpointKeysError`` with the
  full lists) before reading anything, then streams one tensor at a time straight into
  the target dtype and device. A safetensors tensor that needs no conversion and sits at a
  64-byte aligned address stays memory-mapped (copy-on-write, shared with the page cache,
  read on first use, as transformers does); any other is copied or converted out of the
  mapping into its own allocation, one at a time. A ``.bin`` shard is memory-mapped and
  released shard by shard. The process never holds the model plus more than one tensor
  (safetensors) or one shard (``.bin``).
* ``save_weights(model, folder, max_shard_size=...)`` writes ``model.safetensors`` or
  ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json`` (the layout
  transformers and ``huggingface_hub`` write), one shard in memory at a time, with every
  tensor whose size allows it at a 64-byte aligned offset (``write_safetensors``). Why 64:
  CPU kernels (oneDNN, MKL) take other code paths on data that is not 64-byte aligned, as
  fresh allocations are, and round differently; a mapped tensor at the file's alignment would
  make a loaded model's outputs differ in the last bits from the saved one's.
* ``load_pretrained(build, config, path)`` is the one call a family loader makes:
  meta build, key map (``official_key -> zoo_key or None``), strict streaming load.

Checkpoint layouts read: a single ``*.safetensors`` file (any name, e.g. BAGEL's
``ema.safetensors``), a sharded ``model.safetensors.index.json``, ``pytorch_model.bin``
and its sharded ``pytorch_model.bin.index.json`` (``torch.load(weights_only=True,
mmap=True)``), or a folder holding one of those.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError, OutputExistsError
from zoo.files import atomic_open, write_text

logger = logging.getLogger("zoo")

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
BIN_WEIGHTS_NAME = "pytorch_model.bin"
BIN_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# what a folder may hold, in the order they are looked for
FOLDER_LAYOUTS = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, BIN_WEIGHTS_NAME, BIN_WEIGHTS_INDEX_NAME)
DEFAULT_MAX_SHARD_SIZE = "5GB"  # huggingface_hub's default: models below it keep one model.safetensors
ALIGN = 64  # bytes: the alignment of torch's CPU allocations, kept for tensors in files zoo writes

KeyMap = Callable[[str], "str | None"]

# safetensors dtype names (https://github.com/huggingface/safetensors, "Format")
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "C64": torch.complex64,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                     ("U32", "uint32"), ("U64", "uint64")):
    if hasattr(torch, _attr):
        _SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)


# ----------------------------------------------------------------------------- building without init

_local = threading.local()  # per thread: init_empty nesting depth, and whether a load is assigning tensors
_install_lock = threading.Lock()
_installed = {"count": 0, "original": None}


def _register_parameter(module, name, param):
    _installed["original"](module, name, param)
    if getattr(_local, "depth", 0) and not getattr(_local, "loading", 0) and param is not None \
            and param.device.type != "meta":
        cls = type(param) if isinstance(param, torch.nn.Parameter) else torch.nn.Parameter
        module._parameters[name] = cls(param.detach().to("meta"), requires_grad=param.requires_grad)


# In-place ops that only change values: on a meta tensor they are no-ops, skipped without the meta kernels'
# Python decompositions (which cost ~1 ms per call, most of a fast build).
_VALUE_INPLACE = frozenset(
    getattr(torch.Tensor, name) for name in (
        "normal_", "uniform_", "fill_", "zero_", "copy_", "bernoulli_", "exponential_", "random_", "cauchy_",
        "log_normal_", "geometric_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_", "clamp_min_",
        "clamp_max_", "exp_", "log_", "sqrt_", "abs_", "neg_", "masked_fill_", "index_fill_")
    if hasattr(torch.Tensor, name)) | frozenset(  # torch.nn.init dispatches its functions as a whole
    getattr(torch.nn.init, name) for name in dir(torch.nn.init)
    if name.endswith("_") and not name.startswith("_") and callable(getattr(torch.nn.init, name)))


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _VALUE_INPLACE and not getattr(_local, "loading", 0):
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def init_empty():
    """Build modules with every parameter on the meta device; buffers are built normally.

    Inside the block, ``nn.Module.register_parameter`` moves each new parameter to ``meta``
    right after it is registered, so the initialisation that constructors run afterwards
    (``reset_parameters``, ``_init_weights``) touches no memory. Buffers stay real, so
    whatever a constructor computes into them is correct. Parameters must then be loaded
    (``load_into``, ``load_state_dict``: they assign real tensors even inside the block);
    anything still on ``meta`` is listed by ``meta_tensors``. Only the calling thread is
    affected (as accelerate's ``init_empty_weights``, the method is patched while any block runs).
    """
    with _install_lock:
        if _installed["count"] == 0:
            _installed["original"] = torch.nn.Module.register_parameter
            torch.nn.Module.register_parameter = _register_parameter
        _installed["count"] += 1
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        with _SkipMetaInit():
            yield
    finally:
        _local.depth -= 1
        with _install_lock:
            _installed["count"] -= 1
            if _installed["count"] == 0:
                torch.nn.Module.register_parameter = _installed["original"]


@contextlib.contextmanager
def _assigning():
    """Parameters registered in this block are loaded weights: ``init_empty`` must leave them alone."""
    _local.loading = getattr(_local, "loading", 0) + 1
    try:
        yield
    finally:
        _local.loading -= 1


def meta_tensors(model: torch.nn.Module) -> list[str]:
    """Names of parameters and buffers (persistent or not) that are still on the meta device."""
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    names += [n for n, b in model.named_buffers(remove_duplicate=False) if b is not None and b.is_meta]
    return names


def has_meta(model: torch.nn.Module) -> bool:
    """True when any parameter or buffer of ``model`` is still on the meta device (see :func:`meta_tensors`)."""
    return any(p.is_meta for p in model.parameters()) or any(b.is_meta for b in model.buffers())


# ----------------------------------------------------------------------------- what a checkpoint holds

@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint, without its data: ``name`` (after a key map), ``file``, ``shape``,
    ``dtype``, ``format`` (``"safetensors"`` or ``"torch"``); ``stored``: its name in the file when a
    key map renamed it."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype
    format: str = "safetensors"
    stored: str = ""

    @property
    def key_in_file(self) -> str:
        """The tensor's name inside its file: ``stored`` when a key map renamed it, else ``name``."""
        return self.stored or self.name

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes: the product of ``shape`` times the element size of ``dtype``."""
        n = 1
        for dim in self.shape:
            n *= dim
        return n * torch.empty((), dtype=self.dtype).element_size()


def _format_error(file: Path, reason: str, cached: bool) -> CheckpointFormatError:
    if cached:
        from zoo.hub import evict_cached_file

        evict_cached_file(file)
        hint = "The bad copy was removed from the cache; loading again downloads it afresh."
    else:
        hint = "Re-save or re-download the file."
    return CheckpointFormatError(f"{file.name} is corrupt or truncated ({reason}). {hint} (file: {file})")


def is_safetensors(path: str | Path) -> bool:
    """True for a ``.safetensors`` name, or a file that starts like one (8-byte header size, then ``{``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < (1 << 28)


@contextlib.contextmanager
def _open_safetensors(file: Path, cached: bool):
    """``safetensors.safe_open``; it checks the header and that the data section covers the file exactly."""
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise CheckpointFormatError(f"Checkpoint file {file} does not exist.")
    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise _format_error(file, str(err), cached) from err
    with handle:
        yield handle


def read_safetensors_header(file: str | Path, *, cached: bool = False) -> tuple[dict[str, TensorInfo], dict]:
    """``({name: TensorInfo}, metadata)`` of a safetensors file, read from its header only.

    Raises CheckpointFormatError for a missing, truncated or corrupt file and for a dtype this torch cannot
    hold; with ``cached=True`` a bad cached copy is evicted first.
    """
    file = Path(file)
    out: dict[str, TensorInfo] = {}
    with _open_safetensors(file, cached) as handle:
        metadata = handle.metadata() or {}
        for name in handle.keys():
            piece = handle.get_slice(name)
            code = piece.get_dtype()
            if code not in _SAFETENSORS_DTYPES:
                raise CheckpointFormatError(f"{file}: tensor {name!r} has dtype {code}, which this torch cannot hold.")
            out[name] = TensorInfo(name, file, tuple(int(d) for d in piece.get_shape()), _SAFETENSORS_DTYPES[code])
    return out, metadata


def _torch_load(file: Path, *, mmap: bool):
    """``torch.load(weights_only=True)`` of a flat tensor dict; memory-mapped when the file allows it."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as err:
        if mmap and "mmap" in str(err).lower():  # the pre-1.6 (non-zip) format cannot be mapped
            return _torch_load(file, mmap=False)
        raise CheckpointFormatError(f"{file} is not a readable PyTorch checkpoint ({err}); it may be truncated: "
                                    "download it again.") from err
    except Exception as err:  # weights_only refusal, truncated zip, ...
        raise CheckpointFormatError(
            f"{file} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}). Only plain state dicts "
            "load with weights_only=True; it may also be truncated: download it again.") from err
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        top = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else []
        raise CheckpointFormatError(f"{file} holds a {kind} that is not a flat dict of tensors (top-level keys "
                                    f"{top}); read it with zoo.models.checkpoints.read_checkpoint and pick the "
                                    "state dict first.")
    return obj


def _checkpoint_files(path: Path) -> tuple[list[Path], dict[str, str] | None, Path]:
    """(files, weight map or None, the path that named them) for a file, an index or a folder."""
    if path.is_dir():
        for name in FOLDER_LAYOUTS:
            if (path / name).is_file():
                return _checkpoint_files(path / name)
        raise CheckpointFormatError(f"{path} holds no weights: expected one of {', '.join(FOLDER_LAYOUTS)}.")
    if not path.is_file():
        raise CheckpointFormatError(f"Checkpoint {path} does not exist; check the path.")
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            weight_map = dict(index["weight_map"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CheckpointFormatError(f"{path} is not a shard index (a JSON object with 'weight_map'): {err}") from err
        files = sorted({path.parent / str(f) for f in weight_map.values()})
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointFormatError(f"{path.name} names shards that are not in {path.parent}: {', '.join(absent)}. "
                                        "Download the whole repository (every shard).")
        return files, weight_map, path
    return [path], None, path


def read_index(path: str | Path, *, cached: bool = False) -> dict[str, TensorInfo]:
    """Every tensor a checkpoint holds, ``{name: TensorInfo}``, without reading weights.

    ``path`` is a weights file, a ``*.index.json`` shard index, or a folder holding
    ``model.safetensors``, ``model.safetensors.index.json``, ``pytorch_model.bin`` or
    ``pytorch_model.bin.index.json``. A shard index must agree with its shards.
    Raises ``CheckpointFormatError`` for a corrupt, truncated or inconsistent checkpoint;
    with ``cached=True`` (a Hub cache file) a corrupt file is removed from the cache.
    """
    files, weight_map, named = _checkpoint_files(Path(path))
    out: dict[str, TensorInfo] = {}
    for file in files:
        if is_safetensors(file):
            infos, _ = read_safetensors_header(file, cached=cached)
        else:
            tensors = _torch_load(file, mmap=True)
            infos = {k: TensorInfo(k, file, tuple(v.shape), v.dtype, "torch") for k, v in tensors.items()}
            del tensors  # unmaps the file
        for name, info in infos.items():
            if name in out:
                raise CheckpointFormatError(f"{named}: tensor {name!r} is in both {out[name].file.name} and {file.name}.")
            out[name] = info
    if weight_map is not None:
        wrong = sorted(k for k, f in weight_map.items() if k not in out or out[k].file.name != Path(f).name)
        extra = sorted(k for k in out if k not in weight_map)
        if wrong or extra:
            raise CheckpointFormatError(
                f"{named} does not match its shards: {len(wrong)} indexed tensors are not in the shard it names "
                f"({', '.join(wrong[:10])}{' ...' if len(wrong) > 10 else ''}); {len(extra)} tensors are in a shard "
                f"but not in the index ({', '.join(extra[:10])}{' ...' if len(extra) > 10 else ''}). Re-download "
                "or re-save the checkpoint.")
    return out


def stream_tensors(infos: Iterable[TensorInfo], *, dtype: Callable[[TensorInfo], torch.dtype] | torch.dtype | None = None,
                   device: torch.device | str | None = None, cached: bool = False,
                   mmap: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one at a time, file by file, in ``dtype`` (only floating tensors are cast; a
    callable gives the dtype per tensor) on ``device``.

    A safetensors tensor that needs no conversion, on the CPU, at a 64-byte aligned address (files
    written by ``save_weights``) is yielded memory-mapped (copy-on-write: shared with the page cache,
    read on first use, writes never reach the file). Any other, or every one with ``mmap=False``, is
    copied or converted out of its mapping into a fresh allocation, one at a time: an unaligned
    mapped tensor would make CPU kernels round differently than on a fresh allocation. A ``.bin`` shard is
    mapped with ``torch.load(mmap=True)`` and every tensor copied out of it, so that no weight stays
    backed by a pickle file; the mapping is released after the shard.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    by_file: dict[Path, list[TensorInfo]] = {}
    for info in infos:
        by_file.setdefault(info.file, []).append(info)
    for file, group in by_file.items():
        if group[0].format == "safetensors":
            with _open_safetensors(file, cached) as handle:
                for info in group:
                    value = handle.get_tensor(info.key_in_file)
                    target = _target_dtype(value.dtype, dtype(info) if callable(dtype) else dtype)
                    if target != value.dtype or device.type != "cpu" or not mmap or value.data_ptr() % ALIGN:
                        value = value.to(device=device, dtype=target, copy=True)
                    yield info.name, value
                    del value
        else:
            tensors = _torch_load(file, mmap=True)
            try:
                for info in group:
                    value = tensors.pop(info.key_in_file)
                    target = _target_dtype(value.dtype, dtype(info) if callable(dtype) else dtype)
                    yield info.name, value.to(device=device, dtype=target, copy=True)
                    del value
            finally:
                del tensors


def _target_dtype(found: torch.dtype, wanted: torch.dtype | None) -> torch.dtype:
    if wanted is None or not (found.is_floating_point or found.is_complex):
        return found
    return wanted


# ----------------------------------------------------------------------------- keys

def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """State-dict names that share one parameter or buffer object (tied weights), groups of two or more."""
    names = set(model.state_dict(keep_vars=True))
    groups: dict[int, list[str]] = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        if name in names and tensor is not None:
            groups.setdefault(id(tensor), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def map_keys(infos: Mapping[str, TensorInfo], key_map: KeyMap | None, source: str) -> dict[str, TensorInfo]:
    """Rename checkpoint keys with ``key_map`` (``official_key -> zoo_key``, ``None`` drops the key on purpose).
    Two keys mapped to one name are a ``CheckpointKeysError``."""
    if key_map is None:
        return dict(infos)
    out: dict[str, TensorInfo] = {}
    clashes = []
    for name, info in infos.items():
        new = key_map(name)
        if new is None:
            continue
        if new in out:
            clashes.append(f"{out[new].name} and {name} -> {new}")
            continue
        out[new] = TensorInfo(new, info.file, info.shape, info.dtype, info.format, info.key_in_file)
    if clashes:
        raise CheckpointKeysError(source, hint="  the key map sends two checkpoint keys to one name: "
                                  + "; ".join(clashes))
    return out


# ----------------------------------------------------------------------------- loading

def load_state_dict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True):
    """``module.load_state_dict(state_dict, strict=strict)``, also for a module built under ``init_empty``.

    On a module with meta tensors the given tensors replace them (``assign=True``), cast to the dtype
    each tensor of the module has (as a copy would); tied parameters stay tied, and a tied name
    absent from ``state_dict`` takes its partner's tensor. Key checking with a full report is the
    caller's (``check_keys``); returns torch's ``(missing_keys, unexpected_keys)``.
    """
    if not has_meta(module):
        return module.load_state_dict(state_dict, strict=strict)
    groups = tied_groups(module)
    own = module.state_dict(keep_vars=True)
    cast = {}
    for key, value in state_dict.items():
        mine = own.get(key)
        if mine is not None and value.dtype != mine.dtype and mine.is_floating_point():
            value = value.to(mine.dtype)
        cast[key] = value
    for group in groups:
        present = [n for n in group if n in cast]
        if present:
            for name in group:
                cast.setdefault(name, cast[present[0]])
    with _assigning():
        result = module.load_state_dict(cast, strict=strict, assign=True)
    _retie(module, groups)
    return result


def _owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _retie(model: torch.nn.Module, groups: list[list[str]]) -> None:
    """After ``assign=True`` loads, make every name of a tied group point at one loaded tensor again."""
    for group in groups:
        slots = []
        for name in group:
            owner, attr = _owner(model, name)
            slots.append(owner._parameters if attr in owner._parameters else owner._buffers)
        loaded = [slot[name.rpartition(".")[2]] for slot, name in zip(slots, group)]
        source = next((t for t in loaded if not t.is_meta), loaded[0])
        for slot, name in zip(slots, group):
            slot[name.rpartition(".")[2]] = source


def load_into(model: torch.nn.Module, checkpoint: str | Path | Mapping[str, TensorInfo], *,
              key_map: KeyMap | None = None, dtype: torch.dtype | None = None, device=None, source: str | None = None,
              cached: bool = False, mmap: bool = True, hint="", normalize_weight_norm: bool = True) -> list[str]:
    """Stream a checkpoint into ``model`` strictly; returns the head keys kept at their init.

    ``checkpoint``: a path ``read_index`` accepts, or its result. ``key_map`` renames checkpoint keys
    (``official_key -> zoo_key``, ``None`` = drop on purpose); weight-norm keys are then respelled as the
    model spells them (``zoo.hub.respell_weight_norm``). The keys are checked by the one strict check,
    ``zoo.hub.check_keys`` (``CheckpointKeysError`` with the full lists, ``hint`` as there), before any
    weight is read. Parameters on the meta device (``init_empty``) are replaced by the loaded tensors
    in ``dtype`` (floating tensors only; default: the dtype the model was built with) on ``device``
    (default CPU); real ones are copied into. Keys under ``model.head_keys`` whose shape a config
    override changed are returned and left as they are (the caller must have built them for real).
    """
    from zoo import hub

    source = source or str(checkpoint)
    infos = checkpoint if isinstance(checkpoint, Mapping) else read_index(checkpoint, cached=cached)
    infos = map_keys(infos, key_map, source)
    if normalize_weight_norm:
        respelled = hub.respell_weight_norm(model, infos)
        infos = {name: _renamed(info, name) for name, info in respelled.items()}
    own = model.state_dict(keep_vars=True)
    groups = tied_groups(model)
    reinit = hub.check_keys(model, {k: i.shape for k, i in infos.items()}, source, hint=hint, tied=groups)
    skipped = set(reinit)
    device = torch.device(device) if device is not None else None
    meta = any(t.is_meta for t in own.values())

    def target(info: TensorInfo) -> torch.dtype:
        return dtype if dtype is not None else own[info.name].dtype

    by_file: dict[Path, list[TensorInfo]] = {}
    for name, info in infos.items():
        if name not in skipped:
            by_file.setdefault(info.file, []).append(info)
    for group in by_file.values():
        chunk = dict(stream_tensors(group, dtype=target, device=device if meta else "cpu", cached=cached, mmap=mmap))
        if meta:
            with _assigning():
                result = model.load_state_dict(chunk, strict=False, assign=True)
        else:
            result = model.load_state_dict(chunk, strict=False)
        if result.unexpected_keys:  # cannot happen after check_keys; guard the invariant
            raise CheckpointKeysError(source, unexpected=result.unexpected_keys)
        del chunk
    if meta:
        _retie(model, groups)
    return reinit


def _renamed(info: TensorInfo, name: str) -> TensorInfo:
    return info if info.name == name else TensorInfo(name, info.file, info.shape, info.dtype, info.format,
                                                      info.key_in_file)


def load_pretrained(build: Callable[[dict], torch.nn.Module], config: dict, checkpoint: str | Path, *,
                    key_map: KeyMap | None = None, dtype: torch.dtype | None = None, device=None,
                    source: str | None = None, cached: bool = False, hint="") -> torch.nn.Module:
    """Build ``build(config)`` without initialising it and stream ``checkpoint`` in: what a family loader calls.

    Returns the model in ``dtype``/``device`` (buffers included), in the mode ``build`` left it. Strict
    as ``load_into``. Falls back to a normal build (logged) when the model cannot be built on the meta
    device, when it keeps a meta tensor the checkpoint does not fill (e.g. a non-persistent buffer
    computed from a parameter), and when a config override changed a head's shape (the head gets its
    fresh initialisation, like timm's ``num_classes``).
    """
    from zoo import hub

    source = source or str(checkpoint)
    infos = read_index(checkpoint, cached=cached)
    model = build_empty(build, config)
    if model is not None:
        mapped = map_keys(infos, key_map, source)
        shapes = {k: i.shape for k, i in hub.respell_weight_norm(model, mapped).items()}
        if hub.check_keys(model, shapes, source, hint=hint, tied=tied_groups(model)):
            model = None  # a head changed shape: it needs its real initialisation
        else:
            load_into(model, mapped, dtype=dtype, device=device, source=source, cached=cached, hint=hint)
            left = meta_tensors(model)
            if left:
                logger.warning("%s: %s stayed on the meta device after loading; building %s normally instead "
                               "(slower). Compute such tensors from buffers, not parameters, in the constructor.",
                               source, ", ".join(left[:5]), type(model).__name__)
                model = None
    if model is None:
        model = build(config)
        reinit = load_into(model, infos, key_map=key_map, source=source, cached=cached, hint=hint)
        if reinit:
            logger.warning("%s: re-initialised %s (shape changed by a config override)", source, ", ".join(reinit))
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    return model


def build_empty(build: Callable[[dict], torch.nn.Module], config: dict):
    """``build(config)`` under ``init_empty``; ``None`` when the constructor cannot run on meta parameters."""
    try:
        with init_empty():
            return build(config)
    except (NotImplementedError, RuntimeError) as err:
        logger.info("cannot build on the meta device (%s: %s); building normally", type(err).__name__, err)
        return None


# ----------------------------------------------------------------------------- saving

def plain_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors as safetensors wants them: detached, contiguous, on the CPU, no two names sharing memory."""
    seen, out = set(), {}
    for key, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        pointer = (value.untyped_storage().data_ptr(), value.storage_offset())
        out[key] = value.clone() if pointer in seen and value.numel() else value
        seen.add(pointer)
    return out


def plan_shards(state_dict: Mapping[str, torch.Tensor], max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, *,
                filename_pattern: str = "model{suffix}.safetensors"):
    """``huggingface_hub.split_torch_state_dict_into_shards`` with a ``ConfigError`` for a bad size."""
    from huggingface_hub import split_torch_state_dict_into_shards

    try:
        size = max_shard_size
        if isinstance(size, str):
            from huggingface_hub.serialization._base import parse_size_to_int

            size = parse_size_to_int(size)
        if int(size) <= 0:
            raise ValueError("must be positive")
        return split_torch_state_dict_into_shards(dict(state_dict), filename_pattern=filename_pattern,
                                                  max_shard_size=int(size))
    except (ValueError, TypeError) as err:
        raise ConfigError(f"max_shard_size={max_shard_size!r} is not a size: give bytes (int) or a string such as "
                          f"'500MB' or '5GB' ({err}).") from None


def save_weights(tensors: Mapping[str, torch.Tensor] | torch.nn.Module, folder: str | Path, *,
                 max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, metadata: dict[str, str] | None = None,
                 filename_pattern: str = "model{suffix}.safetensors", overwrite: bool = False) -> list[str]:
    """Write a state dict (or a module's) as safetensors shards into an existing ``folder``; returns the names.

    At most ``max_shard_size`` per file (a larger tensor gets a file of its own); one file is
    ``model.safetensors``, several are ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` (``{"metadata": {"total_size"}, "weight_map"}``). Only one
    shard is copied to the CPU at a time. Names that share a tensor are each written in full. Each file
    is written atomically (``zoo.files``); stage the whole folder (``zoo.files.staging_folder``, as
    ``save_pretrained`` does) when a reader must never see some shards new and others old.
    Weight files of ``filename_pattern`` already in ``folder`` (a single file, shards, an index) are
    replaced only with ``overwrite=True``, and then the ones this save does not write are deleted: a
    stale ``model.safetensors`` next to a new index would otherwise be what loading reads.

    Raises :class:`~zoo.errors.OutputExistsError` (naming the files) when ``folder`` already holds such
    weight files and ``overwrite`` is False, :class:`~zoo.errors.ConfigError` for a ``max_shard_size``
    that is not a positive size and :class:`~zoo.errors.CheckpointFormatError` for a dtype safetensors
    cannot store.
    """
    folder = Path(folder)
    before, _, after = filename_pattern.partition("{suffix}")
    ours = re.compile(re.escape(before) + r"(-\d+-of-\d+)?" + re.escape(after) + r"(\.index\.json)?")
    existing = sorted(p.name for p in folder.iterdir() if ours.fullmatch(p.name)) if folder.is_dir() else []
    if existing and not overwrite:
        raise OutputExistsError(f"{folder} already holds weights ({', '.join(existing)}); pass overwrite=True to "
                                "replace them, or choose another folder.")
    state = tensors.state_dict() if isinstance(tensors, torch.nn.Module) else dict(tensors)
    split = plan_shards(state, max_shard_size, filename_pattern=filename_pattern)
    written = []
    for filename, keys in split.filename_to_tensors.items():
        shard = plain_tensors({k: state[k] for k in keys})
        write_safetensors(folder / filename, shard, metadata=metadata)
        written.append(filename)
        del shard
    if split.is_sharded:
        index_name = filename_pattern.format(suffix="") + ".index.json"
        index = {"metadata": {**split.metadata, **(metadata or {})}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        write_text(folder / index_name, json.dumps(index, indent=2) + "\n")
        written.append(index_name)
    for name in existing:
        if name not in written:
            (folder / name).unlink(missing_ok=True)
    return written


_DTYPE_CODES = {dtype: code for code, dtype in _SAFETENSORS_DTYPES.items()}


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], *,
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (CPU, contiguous) as a safetensors file whose tensors start at 64-byte aligned offsets.

    The safetensors format (https://github.com/huggingface/safetensors, "Format": an 8-byte
    little-endian header size, a JSON header, then the tensors' bytes with no gaps) leaves the
    order of the tensors and trailing spaces in the header free; ``safetensors.torch.save_file``
    aligns the data to 8 bytes only. Here the header is padded so the data starts at a multiple of
    64, and tensors whose byte size is a multiple of 64 come first, in the given order, so each of
    them starts aligned; the others follow. Any safetensors reader reads the file.

    Raises CheckpointFormatError for a dtype safetensors cannot store (before anything is written); the file is
    written atomically.
    """
    path = Path(path)
    items = sorted(tensors.items(), key=lambda kv: (kv[1].numel() * kv[1].element_size()) % ALIGN != 0)
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for name, value in items:
        if value.dtype not in _DTYPE_CODES:
            raise CheckpointFormatError(f"{name}: dtype {value.dtype} cannot be stored in safetensors.")
        size = value.numel() * value.element_size()
        header[name] = {"dtype": _DTYPE_CODES[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-(8 + len(raw))) % ALIGN)
    with atomic_open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for _, value in items:
            if value.numel():
                handle.write(memoryview(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return path


def weight_files(folder: str | Path) -> list[str]:
    """The weight files of a zoo folder: ``model.safetensors``, or the index and every shard it names.

    Raises CheckpointFormatError when the folder has neither layout, or its index names shards that are not
    there.
    """
    folder = Path(folder)
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return [SAFE_WEIGHTS_NAME]
    if (folder / SAFE_WEIGHTS_INDEX_NAME).is_file():
        files, _, _ = _checkpoint_files(folder / SAFE_WEIGHTS_INDEX_NAME)
        return [SAFE_WEIGHTS_INDEX_NAME] + [f.name for f in files]
    raise CheckpointFormatError(f"{folder} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}; save the model "
                                "with save_pretrained first.")


def shard_names(index_file: str | Path) -> list[str]:
    """The shard file names a ``*.index.json`` names (sorted, unique).

    Raises CheckpointFormatError when the file is missing or is not a JSON object with ``weight_map``.
    """
    try:
        weight_map = json.loads(Path(index_file).read_text(encoding="utf-8"))["weight_map"]
        return sorted({str(f) for f in weight_map.values()})
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointFormatError(f"{index_file} is not a shard index (a JSON object with 'weight_map'): {err}") from err


def total_bytes(infos: Mapping[str, TensorInfo]) -> int:
    """Bytes of all tensors of a ``read_index`` result."""
    return sum(i.nbytes for i in infos.values())


__all__ = [
    "TensorInfo", "init_empty", "meta_tensors", "has_meta", "read_index", "read_safetensors_header", "stream_tensors",
    "tied_groups", "map_keys", "load_state_dict", "load_into", "load_pretrained", "build_empty",
    "plain_tensors", "plan_shards", "save_weights", "write_safetensors", "weight_files", "shard_names", "is_safetensors",
    "SAFE_WEIGHTS_NAME", "SAFE_WEIGHTS_INDEX_NAME", "BIN_WEIGHTS_NAME", "BIN_WEIGHTS_INDEX_NAME",
]
