"""Concept tokens: new text rows inserted before a vocabulary's image rows, trained alone.

UniCTokens (arXiv 2505.14671) personalises a unified model by adding ``<concept>`` and
``<token_i>`` rows at the end of the *text* part of the vocabulary; the image-code rows (and
Show-o's mask row after them) move up by the number of new rows, in the input embedding and in
the output head (weight and bias). Only the new rows learn.

The official scripts (arctanxarc/UniCTokens:train_w_3_stages/train_p_stage_1.py) make the whole
embedding and head trainable, step the optimiser over every row and then copy the saved
originals back into all other rows ("reset after step"): full-vocabulary gradients and, with
AdamW, two full-vocabulary moment buffers for a few dozen useful rows. Here the frozen matrices
stay frozen and the rows that train are separate small parameters spliced in:

* :class:`SplicedEmbedding` looks ids up in the frozen table and takes the trainable rows from
  ``row_weight``; the gradient reaches only ``row_weight``.
* :class:`SplicedLinear` computes the logits with the frozen weight (kept equal to the trainable
  rows: a global optimiser post-step hook copies them in after every step, and forward checks) and, in backward, gives ``row_weight``/``row_bias``
  the gradient of their logit columns only; no ``[V, D]`` gradient is ever formed.

Optimiser state then exists only for the trainable rows. Because Adam, AdamW and SGD update
each element from its own gradient, training the spliced rows gives the rows the official
method gives (to float rounding: the row gradients are summed in a different order; tested for
SGD with momentum and AdamW with weight decay).

Everything works on any transformers causal LM (``get_input_embeddings`` / ``get_output_embeddings``)
whose layout is given as numbers (:class:`VocabLayout`): Show-o's is text 50305 (50295 + ``[PAD]``
+ 9 markers) and 8193 shifting rows (8192 codes + the mask).

The per-concept files of the official code (``saves/<concept>/<task>/``) are
``epoch_{E}_embed.pt`` ``[N, D]``, ``epoch_{E}_lm_head_weight.pt`` ``[N, D]`` and
``epoch_{E}_lm_head_bias.pt`` ``[N]``: the rows of ``<concept>, <token_0> ... <token_{N-2}>``
(``torch.save``d float32 tensors); :func:`save_official_rows` / :func:`load_official_rows`.
"""
from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import CheckpointFormatError, ConfigError, OutputExistsError

OFFICIAL_PARTS = ("embed", "lm_head_weight", "lm_head_bias")


@dataclass(frozen=True)
class VocabLayout:
    """A vocabulary ``[text_size rows | image_rows rows]``; new tokens go between the two parts.

    text_size: rows before the insertion point (for Show-o: LLM text + ``[PAD]`` + 9 markers, plus
        concept tokens already inserted). image_rows: rows after it, which shift (Show-o: codes + mask).
    """

    text_size: int
    image_rows: int

    @property
    def size(self) -> int:
        return self.text_size + self.image_rows

    def grow(self, n: int) -> "VocabLayout":
        return VocabLayout(self.text_size + n, self.image_rows)


# ---------------------------------------------------------------------------- spliced modules

_LIVE = weakref.WeakSet()
_HOOKED = False


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    """Global optimiser post-step hook: copy freshly stepped rows into their frozen tables at once, so
    ``weight`` is current when read directly (forward would otherwise do it lazily)."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in list(_LIVE):
        if any(id(p) in stepped for p in (getattr(module, "row_weight", None), getattr(module, "row_bias", None))
               if p is not None):
            module.sync_()


class _RowSplice(nn.Module):
    """Shared bookkeeping: which vocabulary rows train (``row_ids``) and a lookup id -> slot."""

    def _init_rows(self, vocab_size: int) -> None:
        global _HOOKED
        self.register_buffer("row_ids", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("row_slot", torch.full((vocab_size,), -1, dtype=torch.long), persistent=False)
        self._synced = None
        _LIVE.add(self)
        if not _HOOKED:
            from torch.optim.optimizer import register_optimizer_step_post_hook

            register_optimizer_step_post_hook(_after_optimizer_step)
            _HOOKED = True

    @property
    def num_rows(self) -> int:
        return int(self.row_ids.numel())

    def _set_ids(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids.cpu(), dtype=torch.long).flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.weight.shape[0]):
            raise ConfigError(f"trainable rows {ids.tolist()} fall outside the {self.weight.shape[0]}-row vocabulary.")
        if ids.unique().numel() != ids.numel():
            raise ConfigError(f"trainable rows repeat an id: {ids.tolist()}.")
        device = self.row_slot.device
        ids = ids.to(device)
        self.row_ids = ids
        slot = torch.full((self.weight.shape[0],), -1, dtype=torch.long, device=device)
        slot[ids] = torch.arange(ids.numel(), device=device)
        self.row_slot = slot
        self._synced = None
        return ids

    def _version(self):
        params = [p for p in (getattr(self, "row_weight", None), getattr(self, "row_bias", None)) if p is not None]
        return tuple((p.data_ptr(), p._version) for p in params)

    @torch.no_grad()
    def sync_(self, force: bool = False) -> None:
        """Copy the trainable rows into the frozen table (after an optimiser step changed them)."""
        if self.num_rows == 0:
            return
        version = self._version()
        if not force and version == self._synced:
            return
        self.weight[self.row_ids] = self.row_weight.detach().to(self.weight.dtype)
        if getattr(self, "row_bias", None) is not None:
            self.bias[self.row_ids] = self.row_bias.detach().to(self.bias.dtype)
        self._synced = version

    def _state_sync_hook(self, *args, **kwargs):
        self.sync_()

    # The state dict holds the full tables only (the official layout); the trainable copies are
    # refreshed from them on load, in place, so an optimiser keeps pointing at the same tensors.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.sync_()
        for name in ("weight", "bias"):
            param = getattr(self, name, None)
            if param is not None:
                destination[prefix + name] = param if keep_vars else param.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in ("weight", "bias"):
            param = getattr(self, name, None)
            if param is None:
                continue
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if tuple(value.shape) != tuple(param.shape):
                error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, "
                                  f"the current shape is {tuple(param.shape)}.")
                continue
            with torch.no_grad():
                param.copy_(value)
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key[len(prefix):] not in ("weight", "bias") and "." not in key[len(prefix):]:
                    unexpected_keys.append(key)
        with torch.no_grad():
            if self.num_rows:
                self.row_weight.copy_(self.weight[self.row_ids])
                if getattr(self, "row_bias", None) is not None:
                    self.row_bias.copy_(self.bias[self.row_ids])
        self._synced = self._version()


class SplicedEmbedding(_RowSplice):
    """``nn.Embedding`` with a frozen ``weight [V, D]`` whose rows ``row_ids`` train as ``row_weight [K, D]``.

    Built from an existing embedding (:meth:`from_embedding`); keys ``weight`` (+ ``row_weight`` when
    rows train). ``forward(ids LongTensor[...]) -> [..., D]``.
    """

    def __init__(self, weight: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.padding_idx = padding_idx
        self.register_parameter("row_weight", None)
        self._init_rows(weight.shape[0])
        self.register_state_dict_pre_hook(self._state_sync_hook)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def set_trainable_rows(self, ids) -> None:
        """Rows ``ids`` (vocabulary ids) train from their current values; ``[]`` freezes all."""
        self.sync_()
        ids = self._set_ids(ids)
        self.row_weight = nn.Parameter(self.weight[ids].detach().clone()) if ids.numel() else None
        self.sync_(force=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.sync_()
        out = F.embedding(input_ids, self.weight, self.padding_idx)
        if self.num_rows == 0:
            return out
        slot = self.row_slot[input_ids]
        rows = F.embedding(slot.clamp(min=0), self.row_weight)
        return torch.where((slot >= 0).unsqueeze(-1), rows.to(out.dtype), out)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, trainable rows={self.num_rows}"


class _RowLinear(torch.autograd.Function):
    """``F.linear(x, W, b)`` whose backward gives ``x`` its gradient and the rows ``ids`` of ``W``/``b``
    theirs (as separate tensors), never a ``[V, D]`` gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, row_weight, row_bias, ids):
        ctx.save_for_backward(x, weight, ids)
        ctx.has_row_bias = row_bias is not None
        ctx.row_dtypes = (row_weight.dtype, None if row_bias is None else row_bias.dtype)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, ids = ctx.saved_tensors
        grad_x = grad.matmul(weight.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        columns = grad.index_select(-1, ids).reshape(-1, ids.numel())
        grad_rows = columns.t().matmul(x.reshape(-1, x.shape[-1]).to(columns.dtype)).to(ctx.row_dtypes[0])
        grad_bias = columns.sum(0).to(ctx.row_dtypes[1]) if ctx.has_row_bias else None
        return grad_x, None, None, grad_rows, grad_bias, None


class SplicedLinear(_RowSplice):
    """An output head ``x @ W.T + b`` with frozen ``weight [V, D]`` / ``bias [V]`` whose rows ``row_ids``
    train as ``row_weight [K, D]`` / ``row_bias [K]``. ``forward(x [..., D]) -> [..., V]``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_parameter("row_weight", None)
        self.register_parameter("row_bias", None)
        self._init_rows(weight.shape[0])
        self.register_state_dict_pre_hook(self._state_sync_hook)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def set_trainable_rows(self, ids) -> None:
        self.sync_()
        ids = self._set_ids(ids)
        self.row_weight = nn.Parameter(self.weight[ids].detach().clone()) if ids.numel() else None
        self.row_bias = nn.Parameter(self.bias[ids].detach().clone()) if ids.numel() and self.bias is not None else None
        self.sync_(force=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sync_()
        trains = self.num_rows > 0 and torch.is_grad_enabled() and self.row_weight.requires_grad
        if not trains:
            return F.linear(x, self.weight, self.bias)
        return _RowLinear.apply(x, self.weight, self.bias, self.row_weight, self.row_bias, self.row_ids)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, trainable rows={self.num_rows}"


# ---------------------------------------------------------------------------- insertion

def _head(lm) -> nn.Module:
    head = lm.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ConfigError(f"{type(lm).__name__} has no output head (get_output_embeddings); concept tokens need one.")
    return head


def _check_layout(lm, layout: VocabLayout) -> None:
    embed, head = lm.get_input_embeddings(), _head(lm)
    rows = embed.weight.shape[0]
    if rows != layout.size or head.weight.shape[0] != layout.size:
        raise ConfigError(f"the model has {rows} embedding rows and {head.weight.shape[0]} head rows, but the layout "
                          f"says text {layout.text_size} + image {layout.image_rows} = {layout.size}.")


@torch.no_grad()
def insert_rows(lm, layout: VocabLayout, num_new: int) -> VocabLayout:
    """Insert ``num_new`` rows at ``layout.text_size`` in the embedding and the head of ``lm``.

    The ``image_rows`` rows after the insertion point move up by ``num_new`` (embedding, head
    weight and head bias). The new rows start as copies of the old rows ``text_size ..
    text_size + num_new - 1`` (the first image codes): what the official resize-then-shift leaves
    there before any initialisation (train_p_stage_1.py: the head rows of new tokens keep it). The modules
    become :class:`SplicedEmbedding` / :class:`SplicedLinear` with no trainable rows; call
    :func:`set_trainable_rows`. ``lm.config.vocab_size`` is updated. Returns the new layout.
    Raises ConfigError if the model's row counts disagree with ``layout``.
    """
    if num_new < 0:
        raise ConfigError(f"insert_rows: num_new must be >= 0, got {num_new}.")
    _check_layout(lm, layout)
    embed, head = lm.get_input_embeddings(), _head(lm)
    if isinstance(embed, SplicedEmbedding):
        embed.sync_()
    if isinstance(head, SplicedLinear):
        head.sync_()
    t, n = layout.text_size, num_new
    if n > layout.image_rows:
        raise ConfigError(f"insert_rows: {n} new rows exceed the {layout.image_rows} image rows they are copied from.")

    def spliced(matrix: torch.Tensor) -> torch.Tensor:
        return torch.cat([matrix[:t], matrix[t:t + n], matrix[t:]], dim=0).clone()

    new_embed = SplicedEmbedding(spliced(embed.weight.detach()), getattr(embed, "padding_idx", None))
    bias = getattr(head, "bias", None)
    new_head = SplicedLinear(spliced(head.weight.detach()), None if bias is None else spliced(bias.detach()))
    lm.set_input_embeddings(new_embed)
    lm.set_output_embeddings(new_head)
    if getattr(lm, "config", None) is not None:
        lm.config.vocab_size = layout.size + n
    return layout.grow(n)


def set_trainable_rows(lm, ids) -> None:
    """Make vocabulary rows ``ids`` (embedding, head weight, head bias) the only ones that train
    (after :func:`insert_rows`); every other row stays frozen. ``[]`` freezes them all."""
    embed, head = lm.get_input_embeddings(), _head(lm)
    if not isinstance(embed, SplicedEmbedding) or not isinstance(head, SplicedLinear):
        raise ConfigError("set_trainable_rows needs the modules insert_rows installs; call insert_rows first.")
    embed.set_trainable_rows(ids)
    head.set_trainable_rows(ids)


def trainable_row_ids(lm) -> list[int]:
    embed = lm.get_input_embeddings()
    return embed.row_ids.tolist() if isinstance(embed, SplicedEmbedding) else []


@torch.no_grad()
def read_rows(lm, ids) -> dict[str, torch.Tensor]:
    """The current values of rows ``ids``: ``{"embed": [k, D], "lm_head_weight": [k, D], "lm_head_bias": [k]}``
    (bias absent when the head has none), as detached copies."""
    embed, head = lm.get_input_embeddings(), _head(lm)
    for module in (embed, head):
        if isinstance(module, _RowSplice):
            module.sync_()
    ids = torch.as_tensor(list(ids), dtype=torch.long, device=embed.weight.device)
    out = {"embed": embed.weight[ids].detach().clone(), "lm_head_weight": head.weight[ids].detach().clone()}
    if getattr(head, "bias", None) is not None:
        out["lm_head_bias"] = head.bias[ids].detach().clone()
    return out


@torch.no_grad()
def write_rows(lm, ids, *, embed: torch.Tensor | None = None, lm_head_weight: torch.Tensor | None = None,
               lm_head_bias: torch.Tensor | None = None) -> None:
    """Set rows ``ids`` of the embedding and/or the head (trainable copies included). Shapes must be
    ``[len(ids), D]`` (``[len(ids)]`` for the bias); raises ConfigError otherwise."""
    ids = [int(i) for i in ids]
    for name, module, value in (("embed", lm.get_input_embeddings(), embed), ("lm_head_weight", _head(lm), lm_head_weight)):
        if value is None:
            continue
        want = (len(ids), module.weight.shape[1])
        if tuple(value.shape) != want:
            raise ConfigError(f"write_rows: {name} has shape {tuple(value.shape)}, expected {want}.")
        _write(module, "weight", "row_weight", ids, value)
    if lm_head_bias is not None:
        head = _head(lm)
        if getattr(head, "bias", None) is None:
            raise ConfigError("write_rows: the head has no bias.")
        if tuple(lm_head_bias.shape) != (len(ids),):
            raise ConfigError(f"write_rows: lm_head_bias has shape {tuple(lm_head_bias.shape)}, expected ({len(ids)},).")
        _write(head, "bias", "row_bias", ids, lm_head_bias)


def _write(module, full_name: str, row_name: str, ids: list[int], value: torch.Tensor) -> None:
    if isinstance(module, _RowSplice):
        module.sync_()
    full = getattr(module, full_name)
    index = torch.tensor(ids, dtype=torch.long, device=full.device)
    full[index] = value.to(device=full.device, dtype=full.dtype)
    rows = getattr(module, row_name, None)
    if isinstance(module, _RowSplice) and rows is not None:
        slots = module.row_slot[index]
        hit = slots >= 0
        if bool(hit.any()):
            rows[slots[hit]] = value.to(device=rows.device, dtype=rows.dtype)[hit]
        module._synced = module._version()


# ---------------------------------------------------------------------------- the official method (reference)

class ResetAfterStep:
    """The official way to train only some rows, kept as the reference the tests and the benchmark
    compare against: the embedding and head are fully trainable (plain ``nn.Embedding`` /
    ``nn.Linear``), and after each optimiser step every row except ``trainable_ids`` gets its saved
    value back (arctanxarc/UniCTokens:train_w_3_stages/train_p_stage_1.py, ``index_no_updates``).

    Usage: ``ref = ResetAfterStep(lm, ids)``; ``optimizer = AdamW(ref.parameters(), ...)``; per
    step ``loss.backward(); optimizer.step(); ref.restore()``.
    """

    def __init__(self, lm, trainable_ids):
        embed, head = lm.get_input_embeddings(), _head(lm)
        for module in (embed, head):
            if isinstance(module, _RowSplice):
                raise ConfigError("ResetAfterStep works on plain embedding/linear modules, not spliced ones.")
        self.embed, self.head = embed, head
        keep = torch.ones(embed.weight.shape[0], dtype=torch.bool)
        keep[torch.as_tensor(list(trainable_ids), dtype=torch.long)] = False
        self.index_no_updates = keep
        self.saved = {"embed": embed.weight.detach().clone(), "weight": head.weight.detach().clone(),
                      "bias": None if head.bias is None else head.bias.detach().clone()}

    def parameters(self) -> list[nn.Parameter]:
        params = [self.embed.weight, self.head.weight] + ([self.head.bias] if self.head.bias is not None else [])
        for p in params:
            p.requires_grad_(True)
        return params

    @torch.no_grad()
    def restore(self) -> None:
        keep = self.index_no_updates.to(self.embed.weight.device)
        self.embed.weight[keep] = self.saved["embed"][keep]
        self.head.weight[keep] = self.saved["weight"][keep]
        if self.head.bias is not None:
            self.head.bias[keep] = self.saved["bias"][keep]


# ---------------------------------------------------------------------------- the official three files

def official_paths(folder: str | os.PathLike, epoch: int) -> dict[str, Path]:
    folder = Path(folder)
    return {part: folder / f"epoch_{int(epoch)}_{part}.pt" for part in OFFICIAL_PARTS}


def official_epochs(folder: str | os.PathLike) -> list[int]:
    """Epochs that have all three files in ``folder`` (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = {}
    for path in folder.iterdir():
        match = re.fullmatch(r"epoch_(\d+)_(embed|lm_head_weight|lm_head_bias)\.pt", path.name)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return sorted(e for e, parts in found.items() if parts == set(OFFICIAL_PARTS))


def save_official_rows(folder: str | os.PathLike, epoch: int, rows: dict[str, torch.Tensor], *,
                       overwrite: bool = False) -> dict[str, Path]:
    """Write ``epoch_{E}_embed.pt``, ``_lm_head_weight.pt``, ``_lm_head_bias.pt`` (float32 CPU tensors,
    ``torch.save``, atomically). ``rows``: :func:`read_rows`' dict. Existing files raise
    ``OutputExistsError`` unless ``overwrite``."""
    from zoo.files import atomic_open

    paths = official_paths(folder, epoch)
    if not overwrite:
        taken = [str(p) for p in paths.values() if p.exists()]
        if taken:
            raise OutputExistsError(f"{taken} exist; pass overwrite=True (CLI: --overwrite) to replace them.")
    n = rows["embed"].shape[0]
    for part in OFFICIAL_PARTS:
        if part not in rows:
            raise ConfigError(f"save_official_rows: missing {part!r} (the official layout needs a head bias).")
        if rows[part].shape[0] != n:
            raise ConfigError(f"save_official_rows: {part} has {rows[part].shape[0]} rows, embed has {n}.")
    Path(folder).mkdir(parents=True, exist_ok=True)
    for part, path in paths.items():
        with atomic_open(path, "wb", encoding=None) as handle:
            torch.save(rows[part].detach().to("cpu", torch.float32).contiguous().clone(), handle)
    return paths


def load_official_rows(folder: str | os.PathLike, epoch: int | None = None, *, num_rows: int | None = None,
                       hidden_size: int | None = None) -> dict[str, torch.Tensor]:
    """Read the three official files of ``epoch`` (default: the latest complete one) from ``folder``.

    Checks that the three agree (``[N, D]``, ``[N, D]``, ``[N]``) and, when given, that ``N == num_rows``
    and ``D == hidden_size``. Files load with ``torch.load(weights_only=True)``. Raises
    ``CheckpointFormatError`` naming the file for a missing, unreadable or mis-shaped file.
    """
    folder = Path(folder)
    if epoch is None:
        epochs = official_epochs(folder)
        if not epochs:
            raise CheckpointFormatError(f"{folder} holds no epoch_<E>_embed.pt / _lm_head_weight.pt / _lm_head_bias.pt "
                                        "triple (the UniCTokens per-concept layout).")
        epoch = epochs[-1]
    rows = {}
    for part, path in official_paths(folder, epoch).items():
        if not path.is_file():
            raise CheckpointFormatError(f"{path} is missing; a concept checkpoint needs all of "
                                        f"{', '.join(p.name for p in official_paths(folder, epoch).values())}.")
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle/zip errors of a broken or foreign file
            raise CheckpointFormatError(f"{path} is not a readable tensor file ({err}).") from err
        if not isinstance(value, torch.Tensor):
            raise CheckpointFormatError(f"{path} holds a {type(value).__name__}, not a tensor.")
        rows[part] = value.float()
    n, d = rows["embed"].shape if rows["embed"].dim() == 2 else (None, None)
    shapes = {part: tuple(t.shape) for part, t in rows.items()}
    if n is None or shapes["lm_head_weight"] != (n, d) or shapes["lm_head_bias"] != (n,):
        raise CheckpointFormatError(f"{folder} epoch {epoch}: shapes {shapes} do not fit together; expected "
                                    "embed [N, D], lm_head_weight [N, D], lm_head_bias [N].")
    if num_rows is not None and n != num_rows:
        raise CheckpointFormatError(
            f"{official_paths(folder, epoch)['embed']} has {n} rows but {num_rows} concept tokens were asked for "
            f"(<concept> + <token_0..{num_rows - 2}>); set the stage token counts to match the checkpoint "
            f"({n - 1} <token_i> rows).")
    if hidden_size is not None and d != hidden_size:
        raise CheckpointFormatError(f"{official_paths(folder, epoch)['embed']} rows are {d}-wide but the base model's "
                                    f"hidden size is {hidden_size}; it belongs to another base.")
    rows["epoch"] = torch.tensor(int(epoch))
    return rows


__all__ = [
    "VocabLayout", "SplicedEmbedding", "SplicedLinear", "insert_rows", "set_trainable_rows", "trainable_row_ids",
    "read_rows", "write_rows", "ResetAfterStep", "official_paths", "official_epochs", "save_official_rows",
    "load_official_rows", "OFFICIAL_PARTS",
]
