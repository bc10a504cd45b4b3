"""ClipModel: open_clip's ``CLIP`` module as a zoo model, its attention routed through ``zoo.nn.attention``.

The weights live in ``self.clip`` (an ``open_clip.model.CLIP``), so the state dict is open_clip's
with a ``clip.`` prefix. Every ``torch.nn.MultiheadAttention`` inside (the ViT and text
towers' ``ResidualAttentionBlock.attn``) is swapped for :class:`ZooMultiheadAttention`, which
keeps the same parameter names and calls ``zoo.nn.attention``.

Embedder protocol (what other families rely on): ``image_transform`` (a ``zoo.image.ImageTransform``),
``encode_image(images | pixel_values=...) -> FloatTensor[B, D]``, ``encode_text(texts) ->
FloatTensor[B, D]`` (both L2-normalised by default), ``embed_dim``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.model import ZooModel, inference


class ZooMultiheadAttention(torch.nn.Module):
    """``torch.nn.MultiheadAttention`` (packed ``in_proj_weight [3E, E]``, ``in_proj_bias [3E]``,
    ``out_proj``) computed with ``zoo.nn.attention``; same parameter names, so state dicts match.

    ``forward(query, key, value, need_weights=False, attn_mask=None, key_padding_mask=None)``
    returns ``(output, None)``; inputs are ``[B, L, E]`` when ``batch_first`` else ``[L, B, E]``.
    Masks follow torch's convention: a boolean ``True`` means "do not attend"; a float mask is
    added to the logits; ``attn_mask`` is ``[L, S]`` or ``[B * heads, L, S]``, ``key_padding_mask``
    ``[B, S]``. Attention weights are never returned (``need_weights=True`` raises ``ConfigError``).
    """

    def __init__(self, embed_dim: int, num_heads: int, *, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}.")
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.in_proj_weight = torch.nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = torch.nn.Parameter(torch.zeros(3 * embed_dim)) if bias else None
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim, bias=bias)
        torch.nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def from_torch(cls, module: torch.nn.MultiheadAttention) -> "ZooMultiheadAttention":
        """The same attention (sharing ``module``'s parameters); raises ``ConfigError`` for layouts it
        does not have (separate q/k/v dimensions, ``add_bias_kv``, ``add_zero_attn``)."""
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise ConfigError("ZooMultiheadAttention supports packed q/k/v projections without bias_k/bias_v or "
                              "add_zero_attn.")
        new = cls(module.embed_dim, module.num_heads, bias=module.in_proj_bias is not None,
                  dropout=module.dropout, batch_first=module.batch_first)
        new.in_proj_weight = module.in_proj_weight
        new.in_proj_bias = module.in_proj_bias
        new.out_proj = module.out_proj
        return new

    def forward(self, query, key, value, need_weights: bool = False, attn_mask=None, key_padding_mask=None,
                **unused):
        from zoo.nn import attention

        if need_weights:
            raise ConfigError("ZooMultiheadAttention does not return attention weights; call it with "
                              "need_weights=False.")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, dim = query.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if key is query and value is query:
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            w_q, w_k, w_v = weight.chunk(3)
            b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
            q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        source = k.shape[1]
        q = q.reshape(batch, length, heads, head_dim)
        k = k.reshape(batch, source, heads, head_dim)
        v = v.reshape(batch, source, heads, head_dim)
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, q.dtype)
            mask = mask.view(batch, heads, length, source) if mask.dim() == 3 else mask.view(1, 1, length, source)
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, q.dtype).view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        out = attention(q, k, v, bias=mask, dropout=self.dropout if self.training else 0.0)
        out = self.out_proj(out.reshape(batch, length, dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """torch's mask convention (bool True = blocked, float = added) as an additive float mask."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def route_attention(module: torch.nn.Module) -> int:
    """Replace every ``torch.nn.MultiheadAttention`` under ``module`` by :class:`ZooMultiheadAttention`
    (same parameters, in place); returns how many were replaced."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.MultiheadAttention:
                setattr(parent, name, ZooMultiheadAttention.from_torch(child))
                count += 1
    return count


class ClipModel(ZooModel):
    """A CLIP model (open_clip's ``CLIP``) built from ``config`` (see ``zoo.vision.clip.builder``).

    ``model(pixel_values, tokens)`` returns ``{"image_features": [B, D], "text_features": [B, D],
    "logit_scale": scalar}`` with L2-normalised features and ``logit_scale`` already exponentiated
    (what ``open_clip.loss.ClipLoss`` takes). ``module``: an existing open_clip ``CLIP`` to wrap
    instead of building one (its config must be ``config["model_cfg"]``).
    """

    family = "clip"

    def __init__(self, config: dict, module=None):
        super().__init__(config)
        if module is None:
            from open_clip.model import CLIP

            cfg = config["model_cfg"]
            module = CLIP(embed_dim=int(cfg["embed_dim"]), vision_cfg=dict(cfg["vision_cfg"]),
                          text_cfg=dict(cfg["text_cfg"]), quick_gelu=bool(cfg.get("quick_gelu", False)))
        route_attention(module)
        self.clip = module
        self._transform = None

    @classmethod
    def from_open_clip(cls, model_name: str, pretrained: str | None = None, *, cache_dir=None) -> "ClipModel":
        """An open_clip built-in model (``ViT-B-32``, ...) with ``pretrained`` weights (an open_clip tag
        such as ``laion2b_s34b_b79k``, downloaded by open_clip, or a checkpoint file), as a ClipModel.
        Raises ``ConfigError`` for a name open_clip does not know."""
        import open_clip

        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise ConfigError(f"open_clip has no built-in model {model_name!r}; known: "
                              f"{', '.join(open_clip.list_models()[:20])}, ... (open_clip.list_models()).")
        module = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir)
        preprocess = dict(getattr(module.visual, "preprocess_cfg", {}) or {})
        preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preprocess.items()
                      if k in ("size", "mean", "std", "interpolation", "resize_mode")}
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess,
                  "open_clip": {"model_name": model_name, "pretrained": pretrained}}
        return cls(config, module=module)

    # ------------------------------------------------------------------ protocol
    @property
    def embed_dim(self) -> int:
        """Dimension of the joint embedding space."""
        return int(self.config["model_cfg"]["embed_dim"])

    @property
    def context_length(self) -> int:
        """Tokens per text (longer texts are cut, keeping the end-of-text token)."""
        return int(self.config["model_cfg"]["text_cfg"]["context_length"])

    @property
    def image_transform(self):
        """The preprocessing of ``preprocess_cfg`` as a ``zoo.image.ImageTransform``: resize the
        shorter side to ``size`` and centre-crop (``resize_mode: shortest``, open_clip's default),
        or resize both sides (``squash``); then normalise with ``mean``/``std``."""
        if self._transform is None:
            from zoo.image import ImageTransform

            pp = self.config["preprocess_cfg"]
            size, mode = pp.get("size", 224), pp.get("resize_mode", "shortest")
            if isinstance(size, (list, tuple)):
                size = tuple(int(s) for s in size)
            if mode == "shortest":
                self._transform = ImageTransform(resize=size, crop=size, interpolation=pp.get("interpolation",
                                                 "bicubic"), mean=pp["mean"], std=pp["std"])
            elif mode == "squash":
                pair = size if isinstance(size, tuple) else (size, size)
                self._transform = ImageTransform(resize=pair, interpolation=pp.get("interpolation", "bicubic"),
                                                 mean=pp["mean"], std=pp["std"])
            else:
                raise ConfigError(f"preprocess_cfg.resize_mode {mode!r} is not supported; use shortest or squash.")
        return self._transform

    def tokenize(self, texts) -> torch.Tensor:
        """``LongTensor[B, context_length]`` of open_clip's BPE tokens (start/end tokens, zero padded)."""
        import open_clip

        if isinstance(texts, str):
            texts = [texts]
        return open_clip.tokenize(list(texts), context_length=self.context_length)

    def forward(self, pixel_values: torch.Tensor, tokens: torch.Tensor) -> dict:
        image = F.normalize(self.clip.encode_image(pixel_values), dim=-1)
        text = F.normalize(self.clip.encode_text(tokens), dim=-1)
        return {"image_features": image, "text_features": text, "logit_scale": self.clip.logit_scale.exp()}

    @inference
    def encode_image(self, images=None, *, pixel_values: torch.Tensor | None = None, normalize: bool = True,
                     batch_size: int = 64) -> torch.Tensor:
        """Image embeddings ``FloatTensor[B, D]`` (CPU).

        images: one image or a list (paths, PIL images, arrays: anything ``zoo.image.load_image``
            reads), preprocessed with :attr:`image_transform` ``batch_size`` at a time; or
        pixel_values: an already preprocessed ``FloatTensor[B, 3, H, W]``.
        Raises ``ImageInputError`` naming an input that cannot be read.
        """
        from zoo.image import prepare_images

        if (images is None) == (pixel_values is None):
            raise ConfigError("encode_image takes images or pixel_values (one of them).")
        if pixel_values is not None:
            chunks = [pixel_values]
        else:
            items = images if isinstance(images, (list, tuple)) else [images]
            chunks = (prepare_images(list(items[i:i + batch_size]), self.image_transform)
                      for i in range(0, len(items), batch_size))
        out = []
        for chunk in chunks:
            features = self.clip.encode_image(chunk.to(self.device))
            out.append((F.normalize(features, dim=-1) if normalize else features).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @inference
    def encode_text(self, texts, *, normalize: bool = True) -> torch.Tensor:
        """Text embeddings ``FloatTensor[B, D]`` (CPU) of a string or a list of strings."""
        tokens = self.tokenize(texts).to(self.device)
        features = self.clip.encode_text(tokens)
        return (F.normalize(features, dim=-1) if normalize else features).float().cpu()

    def weights_digest(self) -> str:
        """SHA-256 (hex, 16 digits) of the weights: names, shapes and bytes (identifies this model in caches)."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            tensor = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()[:16]
