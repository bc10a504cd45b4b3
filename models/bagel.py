"""BAGEL: a unified understanding + generation model on a Mixture-of-Transformers decoder.

Deng et al., "Emerging Properties in Unified Multimodal Pretraining" (arXiv 2505.14683);
official code ByteDance-Seed/Bagel (``modeling/bagel/{bagel,qwen2_navit,siglip_navit,modeling_utils}.py``,
``data/data_utils.py``, ``inferencer.py``), forked by SRUM (WayneJin0918/SRUM).

Pieces (state-dict names are the official ones):

* ``language_model``: :class:`zoo.models.mot.MoTForCausalLM` (Qwen2 MoT, understanding + ``*_moe_gen``).
* understanding: ``vit_model.vision_model`` (transformers' SigLIP vision tower in NaViT use: patches of
  any image size, a linear ``patch_embedding`` over ``(p, q, c)``-ordered patch pixels, the position
  embedding indexed by ``row * 70 + col``, the last layer dropped), ``connector`` (``fc1``, ``fc2``) and
  the frozen sin-cos ``vit_pos_embed``.
* generation: the FLUX VAE (``vae``, diffusers ``AutoencoderKL``), latent patches of 2x2 (``p * p * 16``
  numbers per token), ``vae2llm`` / ``llm2vae``, ``time_embedder`` and the frozen ``latent_pos_embed``
  (index ``row * max_latent_size + col``).

Sequences are packed without padding (:class:`SequencePacker`): a text block is ``<|im_start|>`` + tokens
+ ``<|im_end|>`` at consecutive RoPE positions (causal); an image block is ``<|vision_start|>`` +
patches + ``<|vision_end|>``, all at one RoPE position (full attention within it). A noised VAE image
(the flow-matching target) is seen by nothing outside it. Inference keeps a per-sample KV cache
(:class:`Context`) and adds blocks to it, as BAGEL's ``InterleaveInferencer`` does.

:class:`BagelMixin` holds the methods; a host ``nn.Module`` calls ``init_bagel(config)`` (the SRUM family's
``SrumModel`` is one). ``config`` keys are documented in ``zoo.multimodal.srum.builder``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from zoo.errors import ConfigError, ImageInputError, ZooError
from zoo.model import inference
from zoo.models.embeddings import TimestepEmbedder  # BAGEL's time_embedder: DiT's, keys mlp.0 / mlp.2
from zoo.models.mot import AttnBlock, MoTForCausalLM, Routing, packed_attention, qwen2_config, split_blocks

__all__ = [
    "PositionEmbedding", "TimestepEmbedder", "MLPconnector", "SiglipNaViT", "patchify", "unpatchify_latent",
    "flattened_position_ids", "resize_size", "ImageTransform", "SequencePacker", "PackedInputs", "Context",
    "BagelMixin", "Bagel",
]


# ----------------------------------------------------------------------------- small modules

class PositionEmbedding(nn.Module):
    """A frozen 2-D sin-cos table ``pos_embed`` ``[side * side, hidden]`` (MAE/DiT layout), indexed by
    ``row * side + col``. A parameter with ``requires_grad=False``, as in BAGEL (so it is in the state dict)."""

    def __init__(self, max_num_patch_per_side: int, hidden_size: int):
        super().__init__()
        self.max_num_patch_per_side = int(max_num_patch_per_side)
        self.pos_embed = nn.Parameter(torch.zeros(self.max_num_patch_per_side ** 2, hidden_size), requires_grad=False)
        self.reset_parameters()

    def sincos_table(self) -> torch.Tensor:
        """The ``[side * side, hidden]`` float32 table (diffusers' ``get_2d_sincos_pos_embed``, MAE's layout)."""
        from diffusers.models.embeddings import get_2d_sincos_pos_embed

        side = self.max_num_patch_per_side
        return get_2d_sincos_pos_embed(self.pos_embed.shape[1], side, base_size=side, interpolation_scale=1.0,
                                       output_type="pt").float()

    def reset_parameters(self) -> None:
        """Fill the frozen table with :meth:`sincos_table` (skipped while the parameter is on the meta device)."""
        if not self.pos_embed.is_meta:
            with torch.no_grad():
                self.pos_embed.copy_(self.sincos_table())

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the table for ``position_ids`` (int64, any shape, each in [0, side * side)): ``[..., hidden]``
        float32.
        """
        return self.pos_embed[position_ids]


class MLPconnector(nn.Module):
    """ViT features -> LLM width: ``fc2(act(fc1(x)))``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_act: str):
        super().__init__()
        from transformers.activations import ACT2FN

        self.activation_fn = ACT2FN[hidden_act]
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., in_dim]`` -> ``[..., out_dim]`` in the layers' dtype."""
        return self.fc2(self.activation_fn(self.fc1(x)))


class SiglipNaViT(nn.Module):
    """transformers' ``SiglipVisionModel`` (as ``vision_model``) run on packed patches of images of any size.

    The convolutional patch embedding is a ``Linear(3 * p * p, hidden)`` over patches flattened in
    ``(p, q, c)`` order (BAGEL's ``convert_conv2d_to_linear``); the learned position embedding is indexed
    by ``row * max_num_patch_per_side + col``. Images of one patch count run as one batch through the
    encoder (no mask, no padding); ``post_layernorm`` is applied, no pooling head.
    """

    def __init__(self, config: dict):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        from zoo.nn.hf_attention import from_config

        cfg = SiglipVisionConfig(**{**config, "vision_use_head": False})
        self.vision_model = from_config(SiglipVisionModel, cfg)
        patch, channels = cfg.patch_size, cfg.num_channels
        self.vision_model.embeddings.patch_embedding = nn.Linear(channels * patch * patch, cfg.hidden_size)
        self.patch_size = patch

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, seqlens: Sequence[int]) -> torch.Tensor:
        """patches: ``[N, 3 * p * p]`` of all images; position_ids: ``[N]``; seqlens: patches per image.
        Returns ``[N, hidden]``."""
        emb = self.vision_model.embeddings
        x = emb.patch_embedding(patches.to(emb.patch_embedding.weight.dtype)) + emb.position_embedding(position_ids)
        out = torch.empty_like(x)
        starts = np.concatenate([[0], np.cumsum(seqlens)[:-1]]).tolist()
        by_len: dict[int, list[int]] = {}
        for i, n in enumerate(seqlens):
            by_len.setdefault(int(n), []).append(i)
        for n, members in by_len.items():
            batch = torch.stack([x[starts[i]:starts[i] + n] for i in members])
            hidden = self.vision_model.encoder(inputs_embeds=batch).last_hidden_state
            hidden = self.vision_model.post_layernorm(hidden)
            for row, i in enumerate(members):
                out[starts[i]:starts[i] + n] = hidden[row]
        return out


# ----------------------------------------------------------------------------- image helpers

def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[C, H, W]`` -> ``[(H/p) * (W/p), p * p * C]``, patches in row-major order, pixels ``(p, q, c)``."""
    c, h, w = image.shape
    p = patch_size
    if h % p or w % p:
        raise ImageInputError(f"an image of {h}x{w} pixels does not split into {p}x{p} patches")
    x = image.reshape(c, h // p, p, w // p, p)
    return torch.einsum("chpwq->hwpqc", x).reshape(-1, p * p * c)


def unpatchify_latent(tokens: torch.Tensor, h: int, w: int, patch: int, channels: int) -> torch.Tensor:
    """``[h * w, p * p * C]`` latent tokens -> ``[C, h * p, w * p]`` (inverse of :func:`patchify`)."""
    x = tokens.reshape(h, w, patch, patch, channels)
    return torch.einsum("hwpqc->chpwq", x).reshape(channels, h * patch, w * patch)


def flattened_position_ids(height: int, width: int, patch_size: int, max_num_patches_per_side: int,
                           interpolate: bool = False) -> torch.Tensor:
    """Position-table index of each patch, row-major: ``row * side + col`` (BAGEL's "extrapolate"), or with
    ``interpolate`` the rows/cols bucketed onto the ``side`` grid (BAGEL's ``interpolate_pos``)."""
    rows, cols = height // patch_size, width // patch_size
    side = max_num_patches_per_side
    if not interpolate:
        if rows > side or cols > side:
            raise ImageInputError(f"an image of {rows}x{cols} patches exceeds the {side}x{side} position table; "
                                  "use a smaller image")
        return (torch.arange(rows)[:, None] * side + torch.arange(cols)).flatten()
    bounds = torch.arange(1 / side, 1.0, 1 / side)
    r = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / rows), bounds, right=True)
    c = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / cols), bounds, right=True)
    return (r[:, None] * side + c).flatten()


def resize_size(width: int, height: int, max_size: int, min_size: int, stride: int,
                max_pixels: int = 14 * 14 * 9 * 1024) -> tuple[int, int]:
    """BAGEL's ``MaxLongEdgeMinShortEdgeResize`` target ``(width, height)``: long side <= max_size, short side
    >= min_size (the short side wins), both multiples of ``stride``, at most ``max_pixels`` pixels."""

    def divisible(value):
        return max(stride, int(round(value / stride) * stride))

    def scaled(w, h, s):
        return divisible(round(w * s)), divisible(round(h * s))

    scale = min(max_size / max(width, height), 1.0)
    scale = max(scale, min_size / min(width, height))
    w, h = scaled(width, height, scale)
    if w * h > max_pixels:
        w, h = scaled(w, h, max_pixels / (w * h))
    if max(w, h) > max_size:
        w, h = scaled(w, h, max_size / max(w, h))
    return w, h


class ImageTransform:
    """BAGEL's ``ImageTransform``: bicubic resize by :func:`resize_size`, then ``[-1, 1]`` (mean = std = 0.5).

    ``__call__(image)``: a PIL image -> ``[3, H, W]`` float tensor; ``resize(image)`` only resizes.
    """

    def __init__(self, max_size: int, min_size: int, stride: int, max_pixels: int = 14 * 14 * 9 * 1024):
        self.max_size, self.min_size, self.stride, self.max_pixels = int(max_size), int(min_size), int(stride), int(max_pixels)

    def resize(self, image):
        """``image`` (PIL) resized with bicubic filtering to :func:`resize_size`'s size (sides multiples of
        ``stride``, within ``min_size``/``max_size``/``max_pixels``); returned unchanged when it already has that
        size.
        """
        from PIL import Image

        w, h = resize_size(image.width, image.height, self.max_size, self.min_size, self.stride, self.max_pixels)
        return image if (w, h) == image.size else image.resize((w, h), Image.BICUBIC)

    def __call__(self, image) -> torch.Tensor:
        image = self.resize(image)
        array = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy()) / 255.0
        return (array.permute(2, 0, 1) - 0.5) / 0.5

    def to_dict(self) -> dict:
        """The constructor arguments as a plain dict (what a config stores: ``ImageTransform(**d)`` rebuilds it)."""
        return {"max_size": self.max_size, "min_size": self.min_size, "stride": self.stride,
                "max_pixels": self.max_pixels}


def to_pil(image):
    """A PIL RGB image from a PIL image, a path, an ``[H, W, 3]`` uint8 array or a ``[3, H, W]`` tensor in
    [-1, 1] / [0, 1]; RGBA is composed on white as BAGEL's ``pil_img2rgb``."""
    from PIL import Image

    if isinstance(image, Image.Image):
        pil = image
    elif isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        try:
            from zoo.image import load_image
            return load_image(image)
        except ImageInputError:
            raise
        except Exception as err:
            raise ImageInputError(f"cannot read the image {image!r}: {err}") from err
    elif isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.dim() != 3 or x.shape[0] != 3:
            raise ImageInputError(f"an image tensor must be [3, H, W], got {tuple(x.shape)}")
        if x.min() < 0:
            x = (x + 1) / 2
        pil = Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    elif isinstance(image, np.ndarray):
        pil = Image.fromarray(image)
    else:
        raise ImageInputError(f"expected a PIL image, a path, an array or a tensor, got {type(image).__name__}")
    if pil.mode == "RGBA" or pil.info.get("transparency") is not None:
        rgba = pil.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.split()[3])
        return white
    return pil.convert("RGB")


# ----------------------------------------------------------------------------- packing

@dataclass
class PackedInputs:
    """One packed, padding-free sequence (all samples one after another), as index tensors.

    text_ids / text_index: token ids and their rows (text and image markers); vit_index: ViT patch rows;
    vae_index: VAE latent rows; position_ids: RoPE position of every row; blocks: the attention plan;
    latent_position_ids: ``latent_pos_embed`` index per latent row; latent_shapes: ``(h, w)`` latent-token
    grid per VAE image; vit_position_ids / vit_seqlens: per ViT patch / per ViT image;
    sample_lens, split_lens, attn_modes: BAGEL's description of the same plan.
    """

    num_rows: int
    text_ids: torch.Tensor
    text_index: torch.Tensor
    position_ids: torch.Tensor
    blocks: list[AttnBlock]
    sample_lens: list[int]
    split_lens: list[int]
    attn_modes: list[str]
    vae_index: torch.Tensor
    latent_position_ids: torch.Tensor
    latent_shapes: list[tuple[int, int]]
    vit_index: torch.Tensor
    vit_position_ids: torch.Tensor
    vit_seqlens: list[int]
    ce_index: torch.Tensor | None = None
    ce_labels: torch.Tensor | None = None

    def routing(self) -> Routing:
        """The :class:`Routing` of the packed rows: text and ViT rows are understanding rows, VAE rows are generation
        rows.
        """
        und = torch.cat([self.text_index, self.vit_index]) if self.vit_index.numel() else self.text_index
        return Routing(self.num_rows, und, self.vae_index)

    def to(self, device) -> "PackedInputs":
        """A copy with every tensor field moved to ``device`` (lists and ints are shared)."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return PackedInputs(**moved)


class SequencePacker:
    """Builds :class:`PackedInputs` sample by sample with BAGEL's rules (data/dataset_base.py ``pack_sequence``).

    ``add_text(ids, loss=False)``: ``bos + ids + eos``, causal, RoPE positions ``r .. r + n + 1``, then
    ``r += n + 2``; with ``loss`` the rows of ``bos + ids`` are trained to predict ``ids + eos``.
    ``add_vit(patches_hw)``: ``soi + patches + eoi`` at one position, full; then ``r += 1``.
    ``add_vae((h, w), noise=True)``: ``soi + h*w latents + eoi`` at one position; full, or ``noise`` (seen by
    nothing outside it); ``r += 1`` only for a clean image (a noised target does not advance RoPE, as in BAGEL).
    ``end_sample()`` closes the sample (the RoPE position restarts at 0).
    """

    def __init__(self, special: dict, *, max_latent_size: int, vit_max_patches_per_side: int, vit_patch_size: int,
                 interpolate_pos: bool = False):
        self.special = special
        self.max_latent_size, self.vit_side, self.vit_patch = max_latent_size, vit_max_patches_per_side, vit_patch_size
        self.interpolate_pos = interpolate_pos
        self.rows = 0
        self.rope = 0
        self.text_ids: list[int] = []
        self.text_index: list[int] = []
        self.positions: list[int] = []
        self.vae_index: list[int] = []
        self.vit_index: list[int] = []
        self.latent_pos: list[torch.Tensor] = []
        self.vit_pos: list[torch.Tensor] = []
        self.latent_shapes: list[tuple[int, int]] = []
        self.vit_seqlens: list[int] = []
        self.sample_lens: list[int] = []
        self.split_lens: list[int] = []
        self.attn_modes: list[str] = []
        self.ce_index: list[int] = []
        self.ce_labels: list[int] = []
        self._sample_start = 0

    def _marker(self, token: int) -> None:
        self.text_ids.append(int(token))
        self.text_index.append(self.rows)
        self.rows += 1

    def add_text(self, ids: Sequence[int], *, loss: bool = False) -> None:
        """Append ``ids`` (token ids) wrapped in bos/eos as a causal split; with ``loss`` the rows of bos + ids
        predict ids + eos (cross-entropy targets).
        """
        tokens = [self.special["bos"], *[int(i) for i in ids], self.special["eos"]]
        if loss:  # rows of bos + ids predict ids + eos (BAGEL's ce_loss_indexes / packed_label_ids)
            self.ce_index.extend(range(self.rows, self.rows + len(tokens) - 1))
            self.ce_labels.extend(tokens[1:])
        self.text_ids.extend(tokens)
        self.text_index.extend(range(self.rows, self.rows + len(tokens)))
        self.positions.extend(range(self.rope, self.rope + len(tokens)))
        self.rows += len(tokens)
        self.rope += len(tokens)
        self.split_lens.append(len(tokens))
        self.attn_modes.append("causal")

    def add_vae(self, latent_hw: tuple[int, int], *, noise: bool = True) -> None:
        """Append a ``(h, w)`` grid of latent tokens between start/end-of-image markers; ``noise`` True makes it a
        noised generation target (attention mode ``noise``), False a clean conditioning image (``full``, and the
        RoPE position advances).
        """
        h, w = int(latent_hw[0]), int(latent_hw[1])
        self._marker(self.special["start_of_image"])
        self.vae_index.extend(range(self.rows, self.rows + h * w))
        self.rows += h * w
        self._marker(self.special["end_of_image"])
        self.positions.extend([self.rope] * (h * w + 2))
        self.latent_pos.append(flattened_position_ids(h, w, 1, self.max_latent_size, self.interpolate_pos))
        self.latent_shapes.append((h, w))
        self.split_lens.append(h * w + 2)
        self.attn_modes.append("noise" if noise else "full")
        if not noise:
            self.rope += 1

    def add_vit(self, image_hw: tuple[int, int]) -> None:
        """Append the ViT patches of an image of ``(height, width)`` pixels (multiples of the patch size) between
        start/end-of-image markers, attention mode ``full``.
        """
        height, width = int(image_hw[0]), int(image_hw[1])
        n = (height // self.vit_patch) * (width // self.vit_patch)
        self._marker(self.special["start_of_image"])
        self.vit_index.extend(range(self.rows, self.rows + n))
        self.rows += n
        self._marker(self.special["end_of_image"])
        self.positions.extend([self.rope] * (n + 2))
        self.vit_pos.append(flattened_position_ids(height, width, self.vit_patch, self.vit_side, self.interpolate_pos))
        self.vit_seqlens.append(n)
        self.split_lens.append(n + 2)
        self.attn_modes.append("full")
        self.rope += 1

    def end_sample(self) -> None:
        """Close the current sample (the next split starts a new one at RoPE position 0).

        Raises ZooError when nothing was added since the last sample.
        """
        if self.rows == self._sample_start:
            raise ZooError("SequencePacker.end_sample: the sample is empty")
        self.sample_lens.append(self.rows - self._sample_start)
        self._sample_start = self.rows
        self.rope = 0

    def build(self) -> PackedInputs:
        """The packed batch as :class:`PackedInputs` (int64 tensors); an open sample is closed first."""
        if self.rows != self._sample_start:
            self.end_sample()
        long = dict(dtype=torch.long)
        return PackedInputs(
            num_rows=self.rows, text_ids=torch.tensor(self.text_ids, **long),
            text_index=torch.tensor(self.text_index, **long), position_ids=torch.tensor(self.positions, **long),
            blocks=split_blocks(self.sample_lens, self.split_lens, self.attn_modes),
            sample_lens=list(self.sample_lens), split_lens=list(self.split_lens), attn_modes=list(self.attn_modes),
            vae_index=torch.tensor(self.vae_index, **long),
            latent_position_ids=torch.cat(self.latent_pos) if self.latent_pos else torch.zeros(0, **long),
            latent_shapes=list(self.latent_shapes), vit_index=torch.tensor(self.vit_index, **long),
            vit_position_ids=torch.cat(self.vit_pos) if self.vit_pos else torch.zeros(0, **long),
            vit_seqlens=list(self.vit_seqlens), ce_index=torch.tensor(self.ce_index, **long),
            ce_labels=torch.tensor(self.ce_labels, **long))


# ----------------------------------------------------------------------------- inference context

@dataclass
class Context:
    """Per-sample KV cache of a batch: ``keys[layer][sample]`` ``[L_i, Hkv, D]`` and the next RoPE position."""

    keys: list[list[torch.Tensor]]
    values: list[list[torch.Tensor]]
    lengths: list[int]
    ropes: list[int]
    history: list[list[str]] = field(default_factory=list)

    @classmethod
    def empty(cls, batch: int, num_layers: int, kv_heads: int, head_dim: int, *, device, dtype) -> "Context":
        """A cache of ``batch`` empty samples: ``num_layers`` lists of ``[0, kv_heads, head_dim]`` tensors on
        ``device`` in ``dtype``.
        """
        blank = torch.zeros(0, kv_heads, head_dim, device=device, dtype=dtype)
        return cls([[blank] * batch for _ in range(num_layers)], [[blank] * batch for _ in range(num_layers)],
                   [0] * batch, [0] * batch, [[] for _ in range(batch)])

    @property
    def batch(self) -> int:
        """The number of samples."""
        return len(self.lengths)

    def copy(self) -> "Context":
        """A shallow copy whose lists can be extended independently (the tensors are shared, not cloned)."""
        return Context([list(k) for k in self.keys], [list(v) for v in self.values], list(self.lengths),
                       list(self.ropes), [list(h) for h in self.history])

    def select(self, indexes: Sequence[int]) -> "Context":
        """The samples at ``indexes`` (in that order, repeats allowed) as a new context."""
        return Context([[k[i] for i in indexes] for k in self.keys], [[v[i] for i in indexes] for v in self.values],
                       [self.lengths[i] for i in indexes], [self.ropes[i] for i in indexes],
                       [list(self.history[i]) for i in indexes])

    @staticmethod
    def concat(contexts: Sequence["Context"]) -> "Context":
        """The samples of ``contexts`` one after another as one context (all must have the same number of layers)."""
        layers = len(contexts[0].keys)
        return Context([[t for c in contexts for t in c.keys[layer]] for layer in range(layers)],
                       [[t for c in contexts for t in c.values[layer]] for layer in range(layers)],
                       [n for c in contexts for n in c.lengths], [r for c in contexts for r in c.ropes],
                       [list(h) for c in contexts for h in c.history])


# ----------------------------------------------------------------------------- the model

VLM_THINK_SYSTEM_PROMPT_FILE = "vlm_think_system.txt"
GEN_THINK_SYSTEM_PROMPT_FILE = "gen_think_system.txt"


class BagelMixin:
    """BAGEL's modules and methods, mixed into an ``nn.Module`` that calls :meth:`init_bagel`.

    config: ``llm`` (Qwen2 config values, ``qk_norm``), ``vit`` (SigLIP vision config values, layers after
    dropping the last), ``vae`` (``AutoencoderKL`` arguments), ``latent_patch_size``, ``max_latent_size``,
    ``vit_max_num_patch_per_side``, ``connector_act``, ``interpolate_pos``, ``timestep_shift`` (training),
    ``vae_transform`` / ``vit_transform`` (``ImageTransform`` sizes), ``image_size`` (default generation
    size ``[H, W]``), ``understand_resize_by_vae_transform``.
    """

    # ------------------------------------------------------------------ construction
    def init_bagel(self, config: dict) -> None:
        """Build BAGEL's modules from ``config``: the MoT Qwen2 language model, the SigLIP NaViT, connector, position
        tables, the frozen FLUX VAE, the time embedder and the latent projections (``llm2vae`` starts at zero as in
        BAGEL's ``_init_weights``).

        Raises KeyError for a missing config key.
        """
        from zoo.models.flux_vae import build_vae

        llm_config = qwen2_config(**config["llm"])
        d = llm_config.hidden_size
        self.llm_config = llm_config
        self.language_model = MoTForCausalLM(llm_config)
        self.vit_model = SiglipNaViT(config["vit"])
        vit_hidden = self.vit_model.vision_model.config.hidden_size
        self.connector = MLPconnector(vit_hidden, d, config.get("connector_act", "gelu_pytorch_tanh"))
        self.vit_pos_embed = PositionEmbedding(int(config["vit_max_num_patch_per_side"]), d)
        self.vae = build_vae(config["vae"])
        self.vae.requires_grad_(False)
        self.latent_patch_size = int(config["latent_patch_size"])
        self.latent_channel = int(self.vae.config.latent_channels)
        self.vae_downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_downsample = self.vae_downsample * self.latent_patch_size
        self.patch_latent_dim = self.latent_patch_size ** 2 * self.latent_channel
        self.max_latent_size = int(config["max_latent_size"])
        self.time_embedder = TimestepEmbedder(d)
        self.vae2llm = nn.Linear(self.patch_latent_dim, d)
        self.llm2vae = nn.Linear(d, self.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(self.max_latent_size, d)
        self._init_language_model(llm_config)
        nn.init.zeros_(self.llm2vae.weight)  # BAGEL's _init_weights
        nn.init.zeros_(self.llm2vae.bias)
        self._tokenizer = None

    def _init_language_model(self, cfg) -> None:
        std = float(getattr(cfg, "initializer_range", 0.02))
        for module in self.language_model.modules():
            if isinstance(module, nn.Linear):
                if module.weight.is_meta:
                    continue
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding) and not module.weight.is_meta:
                nn.init.normal_(module.weight, std=std)

    # ------------------------------------------------------------------ small properties
    @property
    def hidden_size(self) -> int:
        """The language model's width."""
        return self.llm_config.hidden_size

    @property
    def num_layers(self) -> int:
        """The language model's number of decoder layers."""
        return self.llm_config.num_hidden_layers

    @property
    def head_dim(self) -> int:
        """Width of one attention head of the language model."""
        return getattr(self.llm_config, "head_dim", None) or self.hidden_size // self.llm_config.num_attention_heads

    @property
    def vit_patch_size(self) -> int:
        """The ViT's patch side in pixels."""
        return self.vit_model.patch_size

    def vae_transform(self) -> ImageTransform:
        """The :class:`ImageTransform` of images given to the VAE (``config['vae_transform']``)."""
        return ImageTransform(**self.config["vae_transform"])

    def vit_transform(self) -> ImageTransform:
        """The :class:`ImageTransform` of images given to the ViT (``config['vit_transform']``)."""
        return ImageTransform(**self.config["vit_transform"])

    def packer(self) -> SequencePacker:
        """A new :class:`SequencePacker` with this model's special ids, latent grid limit and ViT patch layout."""
        return SequencePacker(self.special_ids, max_latent_size=self.max_latent_size,
                              vit_max_patches_per_side=int(self.config["vit_max_num_patch_per_side"]),
                              vit_patch_size=self.vit_patch_size, interpolate_pos=bool(self.config.get("interpolate_pos")))

    # tokenizer and special ids are supplied by the host (``tokenizer`` property, ``special_ids`` dict)

    # ------------------------------------------------------------------ embeddings
    def _embed_dtype(self) -> torch.dtype:
        return self.language_model.model.embed_tokens.weight.dtype

    def embed_latents(self, x_t: torch.Tensor, t: torch.Tensor, latent_position_ids: torch.Tensor) -> torch.Tensor:
        """``vae2llm(x_t) + time_embedder(t) + latent_pos_embed(pos)``; x_t ``[M, p*p*C]``, t ``[M]``."""
        return self.vae2llm(x_t.to(self.vae2llm.weight.dtype)) + self.time_embedder(t) + \
            self.latent_pos_embed(latent_position_ids).to(self.vae2llm.weight.dtype)

    def embed_vit(self, patches: torch.Tensor, position_ids: torch.Tensor, seqlens: Sequence[int]) -> torch.Tensor:
        """ViT patches ``[N, 3*p*p]`` -> LLM inputs ``[N, hidden]``: connector(ViT) + vit_pos_embed."""
        features = self.connector(self.vit_model(patches, position_ids, seqlens))
        return features + self.vit_pos_embed(position_ids).to(features.dtype)

    # ------------------------------------------------------------------ latents
    def latents_to_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """``[C, h * p, w * p]`` VAE latents -> ``[h * w, p * p * C]`` tokens."""
        return patchify(latents, self.latent_patch_size)

    def tokens_to_latents(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """``[h * w, p * p * C]`` tokens -> ``[C, h * p, w * p]`` VAE latents (the inverse of
        :meth:`latents_to_tokens`); ``hw`` is ``(h, w)``.
        """
        return unpatchify_latent(tokens, hw[0], hw[1], self.latent_patch_size, self.latent_channel)

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Latent-token grid ``(h, w)`` of an image of ``height x width`` pixels (multiples of 16 for BAGEL)."""
        ds = self.latent_downsample
        if height % ds or width % ds:
            raise ImageInputError(f"image sizes must be multiples of {ds} pixels, got {height}x{width}")
        h, w = height // ds, width // ds
        if h > self.max_latent_size or w > self.max_latent_size:
            raise ImageInputError(f"{height}x{width} pixels exceed the largest image of this model "
                                  f"({self.max_latent_size * ds} pixels a side)")
        return h, w

    @inference
    def encode_images(self, images: Sequence[torch.Tensor], *, mode: bool = False,
                      generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """``[3, H, W]`` images in [-1, 1] -> their latent tokens ``[h * w, p * p * C]`` (posterior samples)."""
        from zoo.models.flux_vae import encode

        out: list[torch.Tensor | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(i)
        for members in by_shape.values():
            batch = torch.stack([images[i] for i in members]).to(self.vae.device)
            latents = encode(self.vae, batch, mode=mode, generator=generator)
            for row, i in enumerate(members):
                h, w = self.latent_grid(batch.shape[-2], batch.shape[-1])
                p = self.latent_patch_size
                out[i] = self.latents_to_tokens(latents[row, :, :h * p, :w * p].float())
        return out

    @inference
    def decode_tokens(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Latent tokens ``[B, h * w, p * p * C]`` -> images ``[B, 3, H, W]`` in [0, 1]."""
        from zoo.models.flux_vae import decode

        latents = torch.stack([self.tokens_to_latents(t, hw) for t in tokens])
        images = decode(self.vae, latents.to(self.vae.device))
        return (images.float() * 0.5 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------ training forward
    def flow_forward(self, packed: PackedInputs, x0: torch.Tensor | None = None, timesteps: torch.Tensor | None = None,
                     *, noise: torch.Tensor | None = None, timestep_shift: float | None = None,
                     vit_patches: torch.Tensor | None = None) -> dict:
        """One training forward on a packed batch (BAGEL's training ``forward``).

        x0: ``[M, p*p*C]`` clean latent tokens of every noised image (rows of ``packed.vae_index``), the
            image the noisy input is made from (SRUM's "bad" image); None when the batch has no VAE image.
        timesteps: ``[num_images]`` logit-normal draws (``randn``); ``t = shift(sigmoid(draw))``.
        noise: ``[M, p*p*C]`` (default ``randn_like``). vit_patches: packed ViT patches if the batch has any.
        Returns ``{"velocity": [M, p*p*C], "noise", "t": [M] per token, "x_t"}`` for the VAE rows (the
        velocity target toward a clean image ``x`` is ``noise - x``; t = 1 is noise) and ``"ce_logits"``
        ``[K, vocab]`` at the rows ``packed.ce_index`` when the batch has text with a loss.
        """
        from zoo.models.flow import interpolate, shift_timesteps

        parts, out = {}, {}
        if packed.vae_index.numel():
            if x0 is None or timesteps is None:
                raise ZooError("flow_forward: the batch has VAE images; give x0 and timesteps")
            shift = float(self.config.get("timestep_shift", 1.0) if timestep_shift is None else timestep_shift)
            counts = torch.tensor([h * w for h, w in packed.latent_shapes], device=x0.device)
            t_image = torch.sigmoid(timesteps.to(x0.device).float())
            t_image = shift_timesteps(t_image, shift) if shift != 1.0 else t_image
            t = torch.repeat_interleave(t_image, counts)
            noise = torch.randn_like(x0) if noise is None else noise
            x_t = interpolate(x0, noise, t)
            parts["vae"] = self.embed_latents(x_t, t, packed.latent_position_ids)
            out.update(noise=noise, t=t, x_t=x_t)
        if packed.vit_index.numel():
            parts["vit"] = self.embed_vit(vit_patches, packed.vit_position_ids, packed.vit_seqlens)
        inputs = [(packed.vae_index, parts["vae"])] if "vae" in parts else []
        if "vit" in parts:
            inputs.append((packed.vit_index, parts["vit"]))
        hidden, logits = self.language_model(
            packed.text_ids, packed.text_index, packed.position_ids, packed.routing(),
            lambda layer, q, k, v: packed_attention(q, k, v, packed.blocks), num_rows=packed.num_rows,
            inputs=inputs, lm_rows=packed.ce_index)
        if packed.vae_index.numel():
            out["velocity"] = self.llm2vae(hidden.index_select(0, packed.vae_index))
        if logits is not None:
            out["ce_logits"] = logits
        return out

    # ------------------------------------------------------------------ inference: contexts
    def new_context(self, batch: int) -> Context:
        """An empty :class:`Context` for ``batch`` samples on the language model's device and dtype."""
        param = self.language_model.model.embed_tokens.weight
        return Context.empty(batch, self.num_layers, self.llm_config.num_key_value_heads, self.head_dim,
                             device=param.device, dtype=param.dtype)

    def _run_query(self, context: Context, seq: torch.Tensor, position_ids: torch.Tensor, routing: Routing,
                   q_lens: Sequence[int], causal: bool, *, update: bool) -> torch.Tensor:
        """Run packed query rows (``q_lens`` per sample of ``context``) over the cache; returns hidden states.

        With ``update`` the queries' keys/values join each sample's cache.
        """
        starts = np.concatenate([[0], np.cumsum(q_lens)[:-1]]).astype(int).tolist()
        blocks, kv_start = [], 0
        for i, n in enumerate(q_lens):
            total = context.lengths[i] + int(n)
            blocks.append(AttnBlock(starts[i], int(n), ((kv_start, total),), causal=causal))
            kv_start += total

        def attend(layer: int, q, k, v):
            keys, values = [], []
            for i, n in enumerate(q_lens):
                new_k, new_v = k[starts[i]:starts[i] + n], v[starts[i]:starts[i] + n]
                keys.append(torch.cat([context.keys[layer][i], new_k.to(context.keys[layer][i].dtype)]))
                values.append(torch.cat([context.values[layer][i], new_v.to(context.values[layer][i].dtype)]))
            if update:
                context.keys[layer] = keys
                context.values[layer] = values
            return packed_attention(q, torch.cat(keys).to(q.dtype), torch.cat(values).to(q.dtype), blocks)

        hidden = self.language_model.model(seq, position_ids, routing, attend)
        if update:
            for i, n in enumerate(q_lens):
                context.lengths[i] += int(n)
        return hidden

    @inference
    def add_text(self, context: Context, texts: Sequence[str | Sequence[int]]) -> Context:
        """Append one text block per sample (``bos + tokens + eos``, causal) to ``context`` (in place)."""
        ids = [self.encode_text(t) if isinstance(t, str) else list(t) for t in texts]
        if len(ids) != context.batch:
            raise ZooError(f"add_text: {len(ids)} texts for a context of {context.batch} samples")
        rows, positions, lens = [], [], []
        for i, tokens in enumerate(ids):
            block = [self.special_ids["bos"], *tokens, self.special_ids["eos"]]
            rows.extend(block)
            positions.extend(range(context.ropes[i], context.ropes[i] + len(block)))
            lens.append(len(block))
        device = self.language_model.model.embed_tokens.weight.device
        seq = self.language_model.model.embed_tokens(torch.tensor(rows, device=device))
        self._run_query(context, seq, torch.tensor(positions, device=device), Routing.all_und(len(rows)), lens,
                        causal=True, update=True)
        for i, n in enumerate(lens):
            context.ropes[i] += n
            context.history[i].append("text")
        return context

    @inference
    def add_vit_images(self, context: Context, images: Sequence[torch.Tensor]) -> Context:
        """Append one ViT image block per sample (``[3, H, W]`` in [-1, 1], sides multiples of the ViT patch)."""
        if len(images) != context.batch:
            raise ZooError(f"add_vit_images: {len(images)} images for a context of {context.batch} samples")
        device = self.language_model.model.embed_tokens.weight.device
        special = self.special_ids
        patches, pos, seqlens, text_rows, vit_rows, ids, positions, lens = [], [], [], [], [], [], [], []
        row = 0
        side = int(self.config["vit_max_num_patch_per_side"])
        for i, image in enumerate(images):
            tokens = patchify(image, self.vit_patch_size)
            n = tokens.shape[0]
            patches.append(tokens)
            pos.append(flattened_position_ids(image.shape[1], image.shape[2], self.vit_patch_size, side,
                                              bool(self.config.get("interpolate_pos"))))
            seqlens.append(n)
            ids += [special["start_of_image"], special["end_of_image"]]
            text_rows += [row, row + n + 1]
            vit_rows.extend(range(row + 1, row + 1 + n))
            positions.extend([context.ropes[i]] * (n + 2))
            lens.append(n + 2)
            row += n + 2
        text = self.language_model.model.embed_tokens(torch.tensor(ids, device=device))
        vit = self.embed_vit(torch.cat(patches).to(device, text.dtype), torch.cat(pos).to(device), seqlens)
        seq = text.new_zeros(row, self.hidden_size)
        seq.index_copy_(0, torch.tensor(text_rows, device=device), text)
        seq.index_copy_(0, torch.tensor(vit_rows, device=device), vit.to(seq.dtype))
        self._run_query(context, seq, torch.tensor(positions, device=device), Routing.all_und(row), lens,
                        causal=False, update=True)
        for i in range(context.batch):
            context.ropes[i] += 1
            context.history[i].append("vit")
        return context

    # ------------------------------------------------------------------ inference: text
    @inference
    def generate_text(self, context: Context, max_new_tokens: int, *, do_sample: bool = False,
                      temperature: float = 1.0, generator: torch.Generator | None = None) -> list[list[int]]:
        """Decode from ``bos`` after each sample's context (BAGEL's ``generate_text``), greedily by default.

        Returns the new token ids per sample, without the start token and without ``eos``. The context is
        not changed (a copy is extended). Samples stop independently at ``eos`` or ``max_new_tokens``.
        """
        context = context.copy()
        device = self.language_model.model.embed_tokens.weight.device
        special = self.special_ids
        active = list(range(context.batch))
        outputs: list[list[int]] = [[] for _ in range(context.batch)]
        current = [special["bos"]] * context.batch
        ctx = context
        for _ in range(int(max_new_tokens)):
            seq = self.language_model.model.embed_tokens(torch.tensor(current, device=device))
            positions = torch.tensor(ctx.ropes, device=device)
            hidden = self._run_query(ctx, seq, positions, Routing.all_und(len(current)), [1] * len(current),
                                     causal=True, update=True)
            logits = self.language_model.lm_head(hidden).float()
            if do_sample:
                probs = torch.softmax(logits / max(float(temperature), 1e-6), dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()
            else:
                chosen = logits.argmax(dim=-1).tolist()
            for j in range(len(ctx.ropes)):
                ctx.ropes[j] += 1
            keep = []
            for j, token in enumerate(chosen):
                if token == special["eos"]:
                    continue
                outputs[active[j]].append(int(token))
                keep.append(j)
            if not keep:
                break
            if len(keep) < len(chosen):
                ctx = ctx.select(keep)
                active = [active[j] for j in keep]
            current = [chosen[j] for j in keep]
        return outputs

    # ------------------------------------------------------------------ inference: images
    def _latent_query(self, contexts: Context, hw: tuple[int, int]):
        """Packed rows of one ``soi + latents + eoi`` block per sample: (text ids, text rows, latent rows,
        positions, q_lens, latent position ids)."""
        h, w = hw
        n = h * w
        special = self.special_ids
        ids, text_rows, vae_rows, positions, lens = [], [], [], [], []
        row = 0
        for i in range(contexts.batch):
            ids += [special["start_of_image"], special["end_of_image"]]
            text_rows += [row, row + n + 1]
            vae_rows.extend(range(row + 1, row + 1 + n))
            positions.extend([contexts.ropes[i]] * (n + 2))
            lens.append(n + 2)
            row += n + 2
        pos = flattened_position_ids(h, w, 1, self.max_latent_size, bool(self.config.get("interpolate_pos")))
        return ids, text_rows, vae_rows, positions, lens, pos

    def _velocity(self, contexts: Context, x_t: torch.Tensor, t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The predicted velocity ``[B, h*w, p*p*C]`` of latent tokens ``x_t`` at times ``t`` ``[B]``."""
        device = self.language_model.model.embed_tokens.weight.device
        ids, text_rows, vae_rows, positions, lens, pos = self._latent_query(contexts, hw)
        batch, n = x_t.shape[0], x_t.shape[1]
        text_index = torch.tensor(text_rows, device=device)
        vae_index = torch.tensor(vae_rows, device=device)
        text = self.language_model.model.embed_tokens(torch.tensor(ids, device=device))
        latents = self.embed_latents(x_t.reshape(batch * n, -1), t.repeat_interleave(n),
                                     pos.to(device).repeat(batch))
        seq = text.new_zeros(sum(lens), self.hidden_size)
        seq.index_copy_(0, text_index, text)
        seq.index_copy_(0, vae_index, latents.to(seq.dtype))
        routing = Routing(seq.shape[0], text_index, vae_index)
        hidden = self._run_query(contexts, seq, torch.tensor(positions, device=device), routing, lens,
                                 causal=False, update=False)
        return self.llm2vae(hidden.index_select(0, vae_index)).float().reshape(batch, n, -1)

    @inference
    def generate_latents(self, context: Context, hw: tuple[int, int], *, cfg_text_context: Context | None = None,
                         cfg_text_scale: float = 4.0, cfg_interval: tuple[float, float] = (0.4, 1.0),
                         timestep_shift: float = 3.0, num_timesteps: int = 50, cfg_renorm_min: float = 0.0,
                         cfg_renorm_type: str = "global", noise: torch.Tensor | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Euler sampling of one image per sample after ``context`` (BAGEL's ``generate_image``).

        hw: the latent-token grid. ``num_timesteps`` grid points from 1 to 0 (shifted), so
        ``num_timesteps - 1`` steps; text CFG against ``cfg_text_context`` inside ``cfg_interval``
        (``lo < t <= hi``) with CFG renorm (``"global"``: one norm per image, as BAGEL's batch of one).
        Returns latent tokens ``[B, h*w, p*p*C]`` (float32).
        """
        from zoo.models.flow import euler_sample, timestep_grid

        if int(num_timesteps) < 2:
            raise ConfigError(f"num_timesteps must be >= 2 (grid points from 1 to 0), got {num_timesteps}")
        batch, n = context.batch, hw[0] * hw[1]
        device = self.language_model.model.embed_tokens.weight.device
        if noise is None:
            noise = torch.stack([torch.randn(n, self.patch_latent_dim, generator=generator,
                                             device=generator.device if generator is not None else "cpu")
                                 for _ in range(batch)])
        noise = noise.to(device=device, dtype=torch.float32)
        use_cfg = cfg_text_context is not None and float(cfg_text_scale) != 1.0
        both = Context.concat([context, cfg_text_context]) if use_cfg else None

        def velocity(x, t):
            return self._velocity(context, x, t, hw)

        def velocity_pair(x, t):  # conditional and unconditional in one packed forward
            v = self._velocity(both, torch.cat([x, x]), torch.cat([t, t]), hw)
            return v[:batch], v[batch:]

        cache: dict = {}

        def cond_fn(x, t):
            lo, hi = cfg_interval
            if use_cfg and lo < float(t[0]) <= hi:
                cache["pair"] = velocity_pair(x, t)
                return cache["pair"][0]
            cache.pop("pair", None)
            return velocity(x, t)

        def uncond_fn(x, t):
            pair = cache.pop("pair", None)
            return pair[1] if pair is not None else velocity_pair(x, t)[1]

        grid = timestep_grid(int(num_timesteps) - 1, float(timestep_shift))
        return euler_sample(cond_fn, noise, grid, uncond_fn=uncond_fn if use_cfg else None,
                            cfg_scale=float(cfg_text_scale), cfg_interval=tuple(cfg_interval),
                            renorm_type=cfg_renorm_type, renorm_min=float(cfg_renorm_min), channel_dim=-1,
                            per_sample=True)


class Bagel(BagelMixin, nn.Module):
    """A bare BAGEL model from a config dict (no tokenizer; for tests and benchmarks)."""

    def __init__(self, config: dict):
        nn.Module.__init__(self)
        self.config = dict(config)
        self.init_bagel(self.config)
        self.special_ids = dict(config.get("special_ids") or {"bos": 1, "eos": 2, "start_of_image": 3,
                                                                 "end_of_image": 4})

