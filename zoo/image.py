"""Image input: load anything image-like as RGB, preprocessing as data, batches, and datasets.

``load_image`` turns a path, PIL image, numpy array or tensor into an RGB ``PIL.Image``;
``ImageTransform`` is a model's preprocessing written as data (pad to square, resize, centre
crop, normalise); ``prepare_images`` makes a ``[B, 3, H, W]`` float batch from any mix of
inputs; ``ImageDataset`` reads a folder or a JSONL manifest with captions and masks.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np

from zoo.errors import ConfigError, ImageInputError

__all__ = [
    "load_image", "load_mask", "image_folder", "IMAGE_EXTENSIONS", "ImageTransform", "prepare_images", "ImageDataset",
    "collate_images", "to_uint8", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD",
    "INTERPOLATIONS",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Normalisation constants of OpenAI CLIP (also LLaVA's and open_clip's "openai" tags) and of
#: torchvision's ImageNet models.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


# ----------------------------------------------------------------------------- loading

def load_image(image, *, background: tuple[int, int, int] | None = None,
               max_pixels: int | None = -1, name: str | None = None):
    """Return ``image`` as an RGB ``PIL.Image.Image`` (a new, fully decoded image).

    Accepts a path (``str``/``os.PathLike``), a ``PIL.Image``, a numpy array (H, W),
    (H, W, 1|3|4) of uint8, uint16, bool or float in [0, 1], or a tensor (H, W) or
    (1|3|4, H, W) (uint8, or float in [0, 1]). Greyscale, palette, 16-bit and CMYK images are
    converted. An alpha channel is dropped, as ``PIL.Image.convert("RGB")`` does (and so as the
    CLIP and LLaVA preprocessors see such files); give ``background=(r, g, b)`` to composite
    over that colour instead. ``max_pixels`` guards against decompression bombs
    (default -1: Pillow's ``Image.MAX_IMAGE_PIXELS``; ``None``: no limit of ours; Pillow itself
    still refuses images over twice ``Image.MAX_IMAGE_PIXELS``).

    Raises :class:`ImageInputError` naming the file (or ``name``) when it is missing, empty,
    not an image, truncated, larger than ``max_pixels``, or an array of the wrong shape,
    dtype or range.
    """
    from PIL import Image

    if isinstance(image, str) and "://" in image:
        raise ImageInputError(f"Image {image!r} is a URL; zoo does not download inputs. Download the file and "
                              "give its path.")
    if isinstance(image, (str, os.PathLike)):
        return _load_file(Path(os.fspath(image)).expanduser(), background, max_pixels)
    label = name or "image"
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ImageInputError(f"{label} is empty ({image.width}x{image.height} pixels).")
        return _to_rgb(image, background, label)
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # torch.Tensor
        tensor = image.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
        elif tensor.ndim != 2:
            raise ImageInputError(f"{label}: a tensor image must be (H, W) or (C, H, W) with C in 1, 3, 4; "
                                  f"got shape {tuple(image.shape)}.")
        image = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    if isinstance(image, np.ndarray):
        return _to_rgb(_array_to_pil(image, label), background, label)
    raise ImageInputError(f"{label}: expected a path, a PIL image, a numpy array or a tensor, "
                          f"got {type(image).__name__}.")


def _load_file(path: Path, background, max_pixels):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ImageInputError(f"Image file {str(path)!r} {where}; check the path (manifest paths are relative "
                              "to the manifest's folder).")
    if path.stat().st_size == 0:
        raise ImageInputError(f"Image file {str(path)!r} is empty (0 bytes); re-export or re-download it.")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels == -1 else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            with Image.open(path) as image:
                if limit is not None and image.width * image.height > limit:
                    raise ImageInputError(
                        f"Image file {str(path)!r} is {image.width}x{image.height} pixels, more than the limit of "
                        f"{limit} (a possible decompression bomb); pass max_pixels=None to load_image if you "
                        "trust it.")
                if image.width == 0 or image.height == 0:
                    raise ImageInputError(f"Image file {str(path)!r} has no pixels ({image.width}x{image.height}).")
                image.load()  # decode now so truncated files fail here, not later inside a model
                return _to_rgb(image, background, repr(str(path)))
    except ImageInputError:
        raise
    except Image.DecompressionBombError as error:  # Pillow refuses images over twice its own limit
        raise ImageInputError(f"Image file {str(path)!r} is too large for Pillow ({error}); a possible "
                              "decompression bomb. Raise PIL.Image.MAX_IMAGE_PIXELS if you trust it.") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageInputError(f"Cannot read image file {str(path)!r}: {error}. Give a PNG, JPEG, BMP, GIF, "
                              "WebP or TIFF file that Pillow can open.") from error


def _array_to_pil(array: np.ndarray, label: str):
    from PIL import Image

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageInputError(f"{label}: an array image must be (H, W) or (H, W, 1|3|4); got shape {array.shape}.")
    if array.size == 0:
        raise ImageInputError(f"{label} is empty (shape {array.shape}).")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = (array.astype(np.uint32) * 255 + 32767) // 65535
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageInputError(f"{label}: the float image holds NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageInputError(f"{label}: float images must lie in [0, 1]; got values in [{low:.3g}, {high:.3g}] "
                                  "(map [-1, 1] images with (x + 1) / 2 first).")
        array = np.rint(array * 255.0)
    elif array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise ImageInputError(f"{label}: integer images must be uint8 (0-255) or uint16; got {array.dtype} "
                                  f"with values in [{array.min()}, {array.max()}].")
    array = np.ascontiguousarray(array.astype(np.uint8))
    mode = "L" if array.ndim == 2 else ("RGB" if array.shape[-1] == 3 else "RGBA")
    return Image.fromarray(array, mode)


def _to_rgb(image, background, label: str):
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "F" and not np.isfinite(values).all():
            raise ImageInputError(f"{label}: the float image holds NaN or infinite values.")
        peak = float(values.max()) if values.size else 0.0
        if mode == "F" and float(values.min()) >= 0.0 and peak <= 1.0:
            scale = 1.0  # a float image in [0, 1] (as float arrays are read): 1.0 is white, not 1/255
        else:
            scale = 65535.0 if mode.startswith("I;16") or peak > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(values * 255.0 / scale), 0, 255).astype(np.uint8), "L")
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha and background is not None:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageInputError(f"{label}: cannot convert mode {mode!r} to RGB ({error}).") from error


def load_mask(path, *, of: str | None = None) -> np.ndarray:
    """A binary mask file (PNG of mode "1", "L", "P" or RGB) as bool ``(H, W)``: a pixel is inside when its grey
    level (Pillow's ``convert("L")``, 0-255) is above 127, the threshold :meth:`ImageTransform.apply_mask` uses.

    ``of`` names the image the mask belongs to, for messages. Raises :class:`ImageInputError` naming the mask
    file (and ``of``) when it is missing, empty, truncated or not an image.
    """
    from PIL import Image

    where = f"mask {str(path)!r}" + (f" of {str(of)!r}" if of else "")
    file = Path(os.fspath(path)).expanduser()
    if not file.is_file() or file.stat().st_size == 0:
        why = "is empty" if file.is_file() else "does not exist"
        raise ImageInputError(f"The {where} {why}; check the manifest's mask paths (relative to the manifest).")
    try:
        with Image.open(file) as image:
            return np.array(image.convert("L"), dtype=np.uint8) > 127
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageInputError(f"Cannot read the {where}: {error}.") from error


def to_uint8(image) -> np.ndarray:
    """An image as a (H, W, 3) uint8 array; tensors (3, H, W) or (B=1, ...) float in [0, 1].

    Raises ImageInputError for a batch of more than one image and for anything load_image refuses.
    """
    if hasattr(image, "ndim") and image.ndim == 4:
        if image.shape[0] != 1:
            raise ImageInputError(f"to_uint8: expected one image, got a batch of {image.shape[0]}.")
        image = image[0]
    return np.asarray(load_image(image), dtype=np.uint8)


# ----------------------------------------------------------------------------- transforms

def _pair(value, name):
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and value > 0:
        return int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) and v > 0
                                                                    for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"ImageTransform.{name} must be a positive int or a (height, width) pair, got {value!r}.")


def _triple(value, name):
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    raise ConfigError(f"ImageTransform.{name} must be three numbers (one per RGB channel), got {value!r}.")


@dataclass(frozen=True)
class ImageTransform:
    """A model's image preprocessing as data; calling it maps an image to ``Tensor[3, H, W]`` float32.

    Steps, in order (each skipped when its field is ``None``/``False``):

    1. ``pad_to_square``: paste the image centred (offset rounded down) on a square canvas of
       its longer side filled with ``fill``; ``fill="mean"`` is ``int(m * 255)`` of ``mean``
       per channel, as LLaVA-1.5's ``image_aspect_ratio: pad`` (``expand2square`` in
       haotian-liu/LLaVA:llava/mm_utils.py).
    2. ``resize``: an int sets the shorter side (the longer one ``int(size * long / short)``,
       as torchvision's ``Resize``); a ``(height, width)`` pair sets both. ``interpolation`` is
       one of :data:`INTERPOLATIONS` (Pillow's filters).
    3. ``crop``: centre crop to an int (square) or ``(height, width)``. ``crop_offset="round"``
       places it at ``round((H - h) / 2)`` as torchvision's ``CenterCrop`` (open_clip, timm);
       ``"floor"`` at ``(H - h) // 2`` as transformers' image processors (LLaVA's CLIP
       processor). A crop larger than the image pads it with ``fill`` first.
    4. To float in [0, 1], then ``(x - mean) / std`` when ``mean`` is set
       (:meth:`minus_one_one` gives mean = std = 0.5, i.e. values in [-1, 1]).

    ``apply_mask`` applies the same geometry to a mask (nearest neighbour, padding 0);
    ``unnormalize`` maps model-space tensors back to [0, 1]. ``to_dict``/``from_dict`` round-trip.
    """

    resize: Any = None
    interpolation: str = "bicubic"
    crop: Any = None
    pad_to_square: bool = False
    fill: Any = "mean"
    mean: Any = None
    std: Any = None
    crop_offset: str = "round"

    def __post_init__(self):
        object.__setattr__(self, "resize", _pair(self.resize, "resize"))
        object.__setattr__(self, "crop", _pair(self.crop, "crop"))
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"ImageTransform.interpolation {self.interpolation!r} is not one of "
                              f"{', '.join(INTERPOLATIONS)}.")
        if self.crop_offset not in ("round", "floor"):
            raise ConfigError(f"ImageTransform.crop_offset must be 'round' or 'floor', got {self.crop_offset!r}.")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("ImageTransform: give both mean and std, or neither.")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"ImageTransform.std must be positive, got {self.std}.")
        if self.fill != "mean":
            fill = self.fill
            if isinstance(fill, (int, np.integer)):
                fill = (int(fill),) * 3
            if not (isinstance(fill, (list, tuple)) and len(fill) == 3 and all(0 <= int(v) <= 255 for v in fill)):
                raise ConfigError(f"ImageTransform.fill must be 'mean' or an (r, g, b) colour in 0-255, got {fill!r}.")
            object.__setattr__(self, "fill", tuple(int(v) for v in fill))

    @classmethod
    def minus_one_one(cls, resize=None, crop=None, **kwargs) -> "ImageTransform":
        """A transform whose output lies in [-1, 1] (mean = std = 0.5), as VAE/diffusion models expect."""
        return cls(resize=resize, crop=crop, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), **kwargs)

    @classmethod
    def from_dict(cls, config: dict) -> "ImageTransform":
        """Build from a dict (a recipe's ``transform:`` block); unknown keys raise ``ConfigError``."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"ImageTransform.from_dict expects a mapping of settings, got {type(config).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"ImageTransform: unknown key(s) {', '.join(unknown)}; known keys are "
                              f"{', '.join(sorted(known))}.")
        return cls(**config)

    def to_dict(self) -> dict:
        """The transform's fields as a JSON-able dict (tuples as lists); :meth:`from_dict` rebuilds an equal transform."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def fill_color(self) -> tuple[int, int, int]:
        """The padding colour: ``fill``, or ``int(m * 255)`` of ``mean`` (black without a mean)."""
        if self.fill != "mean":
            return self.fill
        return tuple(int(m * 255) for m in self.mean) if self.mean is not None else (0, 0, 0)

    def geometry(self, image, *, is_mask: bool = False):
        """Pad, resize and crop a PIL image (masks: nearest neighbour and zero padding)."""
        from PIL import Image

        fill = 0 if is_mask else self.fill_color()
        if self.pad_to_square and image.width != image.height:
            side = max(image.width, image.height)
            canvas = Image.new(image.mode, (side, side), fill)
            canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = canvas
        resample = Image.Resampling.NEAREST if is_mask else getattr(Image.Resampling, self.interpolation.upper())
        if self.resize is not None:
            if isinstance(self.resize, int):
                width, height = image.size
                if width <= height:
                    new_size = (self.resize, int(self.resize * height / width))
                else:
                    new_size = (int(self.resize * width / height), self.resize)
            else:
                new_size = (self.resize[1], self.resize[0])
            if new_size != image.size:
                image = image.resize(new_size, resample)
        if self.crop is not None:
            crop_h, crop_w = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
            if crop_w > image.width or crop_h > image.height:
                canvas = Image.new(image.mode, (max(crop_w, image.width), max(crop_h, image.height)), fill)
                canvas.paste(image, ((canvas.width - image.width) // 2, (canvas.height - image.height) // 2))
                image = canvas
            if self.crop_offset == "floor":
                top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
            else:
                top, left = int(round((image.height - crop_h) / 2.0)), int(round((image.width - crop_w) / 2.0))
            image = image.crop((left, top, left + crop_w, top + crop_h))
        return image

    def __call__(self, image):
        import torch

        pil = self.geometry(load_image(image))
        tensor = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
            tensor = (tensor - mean) / std
        return tensor

    def apply_mask(self, mask):
        """A bool mask (H, W) (array, tensor or mode-"1"/"L" PIL image) through the same geometry.

        Raises ImageInputError for a mask that is not 2-D.
        """
        import torch
        from PIL import Image

        if isinstance(mask, Image.Image):
            array = np.asarray(mask.convert("L")) > 127
        else:
            array = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask).astype(bool)
        if array.ndim != 2:
            raise ImageInputError(f"apply_mask: a mask must be (H, W), got shape {array.shape}.")
        out = self.geometry(Image.fromarray(array.astype(np.uint8) * 255, "L"), is_mask=True)
        return torch.from_numpy(np.asarray(out) > 127)

    def unnormalize(self, tensor):
        """Model-space tensor (..., 3, H, W) back to [0, 1] (clamped)."""
        if self.mean is None:
            return tensor.clamp(0, 1)
        mean = tensor.new_tensor(self.mean).view(3, 1, 1)
        std = tensor.new_tensor(self.std).view(3, 1, 1)
        return (tensor * std + mean).clamp(0, 1)


def _as_list(inputs) -> list:
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    if hasattr(inputs, "ndim") and inputs.ndim == 4:  # a batch array/tensor
        return [inputs[i] for i in range(inputs.shape[0])]
    return [inputs]


def prepare_images(inputs, transform: ImageTransform | None = None):
    """A float32 batch ``Tensor[B, 3, H, W]`` from one image or a list of images.

    Each input is anything :func:`load_image` accepts; a 4-D array/tensor is a batch
    (B, C, H, W) for tensors, (B, H, W, C) for numpy. ``transform`` defaults to
    ``ImageTransform()`` (values in [0, 1], no resizing). Raises :class:`ImageInputError`
    naming the input when one cannot be read or the transformed sizes differ (set
    ``resize``/``crop`` to make them equal).
    """
    import torch

    transform = transform or ImageTransform()
    items = _as_list(inputs)
    if not items:
        raise ImageInputError("prepare_images: no images given.")
    tensors = []
    for index, item in enumerate(items):
        try:
            tensors.append(transform(load_image(item, name=f"input {index}")))
        except ImageInputError as error:
            raise ImageInputError(f"prepare_images: input {index}: {error}") from None
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        listed = ", ".join(f"{i}: {tuple(t.shape[1:])}" for i, t in enumerate(tensors[:8]))
        raise ImageInputError(f"prepare_images: images have different sizes after the transform ({listed}); "
                              "set ImageTransform(resize=..., crop=...) so every image comes out the same size.")
    return torch.stack(tensors)


# ----------------------------------------------------------------------------- folders and datasets

def image_folder(folder) -> list[dict]:
    """Rows ``{"path", "id"[, "label"]}`` for every image under ``folder``, sorted by path
    (``zoo.data.folder_rows`` with labels).

    Like torchvision's ImageFolder: an image inside a sub-folder gets that sub-folder's name
    (relative to ``folder``, with "/" for deeper nesting) as its ``label``; images lying
    directly in ``folder`` get no label. ``id`` is the relative path without its extension.
    Raises ``ConfigError`` for a missing folder.
    """
    from zoo.data import folder_rows

    return folder_rows(folder, IMAGE_EXTENSIONS, what="image folder", labels=True)


class ImageDataset:
    """A map-style dataset of images from a folder, a JSONL manifest, or a list of rows.

    Manifest rows need ``"path"``; ``"caption"`` (or ``"text"``), ``"label"`` and ``"id"`` pass
    through; masks come from ``"masks"`` (list of paths), ``"mask"`` (one path) or, in
    shapes-world manifests, ``"objects"[i]["mask"]``; relative paths are relative to the
    manifest. An item is ``{"image": Tensor[3, H, W] (or the PIL image when transform is None
    and ``as_pil``), "path", "id", "caption"?, "label"?, "masks"?: BoolTensor[N, H, W]}``;
    masks go through the same geometry as the image. Bad rows raise ``ConfigError``/
    ``ImageInputError`` naming the file; a source that lists no image raises ``ImageInputError``
    (as ``prepare_images([])`` does), when the dataset is made rather than at the first batch.
    """

    def __init__(self, source, transform: ImageTransform | None = None, *, masks: bool = False,
                 as_pil: bool = False):
        from zoo.data import read_manifest, resolve_path

        self.transform = transform
        self.load_masks = masks
        self.as_pil = as_pil
        if isinstance(source, (list, tuple)):
            rows, base = [dict(r) for r in source], Path.cwd()
        else:
            path = Path(os.fspath(source)).expanduser()
            if path.is_dir():
                rows, base = image_folder(path), path.resolve()
            else:
                rows, base = read_manifest(path), path.resolve().parent
        if not rows:
            raise ImageInputError(f"ImageDataset: {source!r} lists no images (looked for "
                              f"{', '.join(sorted(IMAGE_EXTENSIONS))} files, or rows of a JSONL manifest).")
        for row in rows:
            if "path" not in row:
                raise ConfigError(f"ImageDataset: row {row!r} has no 'path'.")
            row["path"] = resolve_path(row["path"], base)
            mask_paths = row.get("masks")
            if mask_paths is None and "mask" in row:
                mask_paths = [row["mask"]]
            if mask_paths is None and isinstance(row.get("objects"), list):
                mask_paths = [o["mask"] for o in row["objects"] if isinstance(o, dict) and o.get("mask")]
            if mask_paths is not None:
                row["_masks"] = [resolve_path(p, base) for p in mask_paths]
            row.setdefault("id", Path(row["path"]).stem)
        if masks:
            missing = [r["path"] for r in rows if "_masks" not in r]
            if missing:
                raise ConfigError(f"ImageDataset(masks=True): {len(missing)} row(s) name no masks, e.g. "
                                  f"{missing[0]!r}; give 'masks', 'mask' or objects[].mask in the manifest.")
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        import torch
        from PIL import Image

        row = self.rows[index]
        image = load_image(row["path"])
        item = {"path": row["path"], "id": row["id"]}
        for key in ("label",):
            if key in row:
                item[key] = row[key]
        if "caption" in row or "text" in row:
            item["caption"] = row.get("caption", row.get("text"))
        transform = self.transform or ImageTransform()
        item["image"] = image if (self.as_pil and self.transform is None) else transform(image)
        if self.load_masks:
            masks = [transform.apply_mask(load_mask(mask_path, of=row["path"])) for mask_path in row["_masks"]]
            height, width = (item["image"].shape[-2:] if not isinstance(item["image"], Image.Image)
                             else (image.height, image.width))
            item["masks"] = torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.bool)
        return item


def collate_images(items: list[dict]) -> dict:
    """Collate :class:`ImageDataset` items: ``image`` stacked to ``[B, 3, H, W]``; every other key
    (masks with their varying counts, captions, paths) as a list."""
    import torch

    batch = {key: [item.get(key) for item in items] for key in items[0]}
    batch["image"] = torch.stack(batch["image"])
    return batch
