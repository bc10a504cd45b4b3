"""Set-of-Mark (SoM) tags: numbers or letters drawn on object masks, as SoM-LLaVA tags its images.

SoM-LLaVA (Yan et al., "List Items One by One", COLM 2024, arXiv 2404.16375) trains on COCO
images whose objects carry numeric tags. This module reproduces the official tagging
(``zzxslp/SoM-LLaVA:SoM/task_adapter/semantic_sam/tasks/inference_semsam_m2m_auto.py`` for the
mask order and overlap rule, ``zzxslp/SoM-LLaVA:SoM/task_adapter/utils/visualizer.py``
``draw_binary_mask_with_number`` / ``_draw_number_in_mask`` / ``draw_text`` for the drawing) on
masks from any source:

1. The image is resized so its shortest side is 640 px (bicubic); the long side becomes
   ``int(640 * long / short)``, rounded down, as ``torchvision.transforms.Resize(640)`` does.
2. Masks are sorted by area, smallest first (a stable sort: equal areas keep their input order).
3. Each mask loses every pixel of the masks before it, so kept regions are disjoint and a small
   object is never swallowed by a larger one. Every earlier mask counts, including masks that were
   themselves too small to be tagged (the official accumulator starts with the first mask and grows
   with every mask it visits).
4. A kept region with fewer than 110 pixels gets no tag (``area < 110``, strictly).
5. The tag goes to the maximum of the region's Euclidean distance transform (distance to the
   nearest pixel outside the region, with the image border counting as outside). When several
   pixels share the maximum, the official code takes element ``len // 2`` of the maxima listed in
   row-major order (``numpy.where``): on a flat ridge that is the left end of the middle row, not
   the centre. The text is then placed at that pixel plus ``(+2, -6)``, centred horizontally and
   top-aligned.
6. Labels count 1, 2, 3, ... over the tagged regions only; letter mode writes a, b, ..., z, aa,
   ab, ... (``number_to_string`` in the official visualizer: 27 -> "aa", 703 -> "aaa").
7. Drawing (``Mark`` mode): no mask fill and no box, white text at font size 18 (points at
   100 dpi, i.e. 25 px; matplotlib's default sans-serif, DejaVu Sans) on a black box with alpha
   0.8 and padding 0.7, through the same matplotlib figure set-up as the official visualizer, so
   the pixels match it for the same matplotlib version.

Two implementations place the tags and agree exactly: :func:`place_tags` (each mask is processed
inside its bounding box plus a one-pixel border, which gives the same distances as the whole
padded image, with an exact squared-distance transform compiled by numba when it is installed)
and :func:`place_tags_reference` (a plain loop over whole images with scipy's transform).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from zoo.errors import ZooError

try:  # numba comes with librosa; without it the distance transform falls back to scipy.
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only on installs without numba
    numba = None
    HAVE_NUMBA = False

__all__ = [
    "FONT_SIZE", "MIN_AREA", "RESIZE", "TEXT_OFFSET",
    "MaskInputError", "Tag", "TaggedImage",
    "draw_tags", "number_to_letters", "place_tags", "place_tags_reference", "prepare_masks",
    "resize_shortest_side", "tag_image",
]

RESIZE = 640          # shortest side of the tagged image (inference_semsam_m2m_auto.py: text_size)
MIN_AREA = 110        # regions with fewer pixels are not tagged
TEXT_OFFSET = (2, -6)  # (dx, dy) from the distance-transform maximum to the text position
FONT_SIZE = 18        # points; visualizer.py sets _default_font_size = 18
DPI = 100             # matplotlib's default figure dpi, which the official figure uses
BOX_STYLE = {"facecolor": "black", "alpha": 0.8, "pad": 0.7, "edgecolor": "none"}


class MaskInputError(ZooError, ValueError):
    """Masks that cannot be used for tagging: wrong shape, wrong size for the image, not 2-D."""


# --------------------------------------------------------------------------- data


@dataclass
class Tag:
    """One drawn tag.

    Coordinates are pixels of the resized (tagged) image, ``x`` to the right, ``y`` down.

    * ``label``: the drawn text ("3" or "c").
    * ``number``: its 1-based position in the tag order (also the number a listing answer uses).
    * ``anchor``: ``(x, y)`` where the text is placed: ``peak`` plus ``(+2, -6)``; the text is
      centred horizontally on x and its box hangs down from y.
    * ``peak``: ``(x, y)`` of the chosen distance-transform maximum (a pixel of the region).
    * ``distance``: the distance of ``peak`` to the nearest pixel outside the region (pixels).
    * ``mask_index``: index of the source mask in the list given to :func:`place_tags`.
    * ``area``: pixels of the kept region (after the overlap removal).
    * ``bbox``: ``(x0, y0, x1, y1)`` of the kept region, end-exclusive.
    * ``mask``: the kept region as a bool array of the tagged image's size (built on access).
    """

    label: str
    number: int
    anchor: tuple[int, int]
    peak: tuple[int, int]
    distance: float
    mask_index: int
    area: int
    bbox: tuple[int, int, int, int]
    image_size: tuple[int, int]  # (width, height) of the tagged image
    _crop: np.ndarray = field(repr=False, default=None)

    @property
    def mask(self) -> np.ndarray:
        width, height = self.image_size
        full = np.zeros((height, width), dtype=bool)
        x0, y0, x1, y1 = self.bbox
        full[y0:y1, x0:x1] = self._crop
        return full

    def contains(self, x: int, y: int) -> bool:
        """Whether pixel ``(x, y)`` of the tagged image belongs to this tag's region."""
        x0, y0, x1, y1 = self.bbox
        return x0 <= x < x1 and y0 <= y < y1 and bool(self._crop[y - y0, x - x0])

    def to_dict(self) -> dict:
        """JSON-able fields (the mask is left out; ``TaggedImage.save_masks`` writes the masks)."""
        return {"label": self.label, "number": self.number, "anchor": list(self.anchor), "peak": list(self.peak),
                "distance": self.distance, "mask_index": self.mask_index, "area": self.area,
                "bbox": list(self.bbox)}


@dataclass
class TaggedImage:
    """The result of :func:`tag_image`: the tagged picture and its tags as data.

    ``image`` is the resized image with the tags drawn (``None`` when drawing was turned off),
    ``resized`` the same image without tags, ``tags`` the tags in label order,
    ``original_size`` the ``(width, height)`` of the input image. ``tags`` is empty when no mask
    kept at least 110 pixels; the official pipeline skips such images.
    """

    image: Any
    resized: Any
    tags: list[Tag]
    original_size: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of the tagged image."""
        return self.resized.size

    def __len__(self) -> int:
        return len(self.tags)

    def __getitem__(self, label: str | int) -> Tag:
        """The tag with this label ("3", "c") or number (3)."""
        for tag in self.tags:
            if tag.label == str(label) or (isinstance(label, int) and tag.number == label):
                return tag
        raise KeyError(f"no tag {label!r}; labels: {', '.join(t.label for t in self.tags) or '(none)'}")

    def tag_at(self, x: int, y: int) -> Tag | None:
        """The tag whose region holds pixel ``(x, y)`` of the tagged image, or None."""
        for tag in self.tags:
            if tag.contains(x, y):
                return tag
        return None

    def to_dict(self) -> dict:
        return {"size": list(self.size), "original_size": list(self.original_size),
                "tags": [tag.to_dict() for tag in self.tags]}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False, quality: int = 95) -> Path:
        """Write the tagged picture (format from the extension; JPEG as the official ``som_train2017``),
        atomically; an existing file is an ``OutputExistsError`` unless ``overwrite``."""
        import io

        from zoo.files import write_bytes

        if self.image is None:
            raise ZooError("This TaggedImage was made with draw=False; call tag_image(..., draw=True).")
        target = Path(os.fspath(path))
        buffer = io.BytesIO()
        fmt = _image_format(target)
        options = {"quality": quality} if fmt == "JPEG" else {}
        self.image.save(buffer, format=fmt, **options)
        refuse_existing(target, overwrite)
        return write_bytes(target, buffer.getvalue())

    def save_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write :meth:`to_dict` as JSON, atomically (``OutputExistsError`` unless ``overwrite``)."""
        from zoo.files import write_text

        refuse_existing(path, overwrite)
        return write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def refuse_existing(path: str | os.PathLike, overwrite: bool) -> None:
    """``OutputExistsError`` when ``path`` exists and ``overwrite`` is False (nothing a user wrote is replaced)."""
    from zoo.errors import OutputExistsError

    target = Path(os.fspath(path)).expanduser()
    if target.is_dir():
        raise OutputExistsError(f"{target} is a folder; give a file path.")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass overwrite=True (CLI: --overwrite) to replace it.")


def _image_format(path: Path) -> str:
    from PIL import Image

    Image.init()
    fmt = Image.EXTENSION.get(path.suffix.lower())
    if fmt is None:
        raise ZooError(f"Cannot tell the image format of {str(path)!r} from its extension; use .png or .jpg.")
    return fmt


# --------------------------------------------------------------------------- labels and images


def number_to_letters(number: int) -> str:
    """1 -> "a", 26 -> "z", 27 -> "aa", 703 -> "aaa" (bijective base 26, as the official letters)."""
    number = int(number)
    if number < 1:
        raise ValueError(f"tag numbers start at 1, got {number}")
    letters = []
    while number:
        number, remainder = divmod(number - 1, 26)
        letters.append(chr(ord("a") + remainder))
    return "".join(reversed(letters))


def resize_shortest_side(image, size: int = RESIZE):
    """Resize a PIL image so its shortest side is ``size`` (bicubic, long side rounded down).

    Same output size as ``torchvision.transforms.Resize(size, interpolation=BICUBIC)`` on a PIL
    image (which calls PIL's bicubic resize); an image whose shortest side already is ``size`` is
    returned unchanged (a copy).
    """
    from PIL import Image

    width, height = image.size
    if min(width, height) == size:
        return image.copy()
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    return image.resize(new_size, Image.BICUBIC)


def _as_rgb(image):
    """Any image input as an RGB PIL image (``zoo.image.load_image``: paths, PIL of any mode, arrays, tensors)."""
    from zoo.image import load_image

    return load_image(image)


# --------------------------------------------------------------------------- masks


def _mask_array(item: Any, index: int) -> np.ndarray:
    if isinstance(item, dict):
        if "segmentation" not in item:
            raise MaskInputError(f"mask {index} is a dict without 'segmentation' (segment-anything's key).")
        item = item["segmentation"]
    elif hasattr(item, "mask") and not isinstance(item, np.ndarray):  # zoo.tools ProposedMask
        item = item.mask
    if hasattr(item, "detach"):  # torch tensor
        item = item.detach().cpu().numpy()
    if hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
        item = np.asarray(item.convert("L")) if item.mode not in ("1", "L") else np.asarray(item)
    array = np.asarray(item)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise MaskInputError(f"mask {index} has shape {tuple(array.shape)}; each mask must be 2-D (H, W).")
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array > 0.5
    return array != 0


def prepare_masks(masks: Any, size: tuple[int, int], original_size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Masks as a list of C-contiguous bool arrays ``[H, W]`` of the tagged image's ``size`` (w, h).

    Accepted: a list of 2-D arrays / tensors / PIL images (bool, 0/1, 0/255; float masks are
    thresholded at 0.5), an array ``[N, H, W]``, segment-anything dicts (``"segmentation"``) or
    objects with a ``.mask`` (``zoo.tools.ProposedMask``). Masks of ``original_size`` (the image
    before resizing) are resized to ``size`` with nearest-neighbour sampling. Any other size raises
    :class:`MaskInputError`.
    """
    from PIL import Image

    if masks is None:
        raise MaskInputError("No masks given; pass masks or a mask proposer.")
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    width, height = size
    out = []
    for index, item in enumerate(masks):
        array = _mask_array(item, index)
        if array.shape == (height, width):
            out.append(np.ascontiguousarray(array))
            continue
        if original_size is not None and array.shape == (original_size[1], original_size[0]):
            resized = Image.fromarray(array.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
            out.append(np.asarray(resized) > 127)
            continue
        sizes = f"{width}x{height}"
        if original_size is not None and tuple(original_size) != tuple(size):
            sizes += f" (tagged image) or {original_size[0]}x{original_size[1]} (input image)"
        raise MaskInputError(f"mask {index} is {array.shape[1]}x{array.shape[0]} (WxH) but the image is {sizes}; "
                             "masks must cover the image they tag.")
    return out


# --------------------------------------------------------------------------- distance-transform peak


def _peak_scipy(region: np.ndarray) -> tuple[int, int, int]:
    """``(x, y, squared distance)`` of the official choice among the maxima (scipy's exact EDT)."""
    from scipy import ndimage

    squared = ndimage.distance_transform_edt(np.pad(region, 1), return_distances=True)[1:-1, 1:-1]
    squared = np.rint(squared * squared).astype(np.int64)
    best = int(squared.max())
    ys, xs = np.nonzero(squared == best)
    middle = len(xs) // 2
    return int(xs[middle]), int(ys[middle]), best


if HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True)
    def _peak_numba(region):  # pragma: no cover - compiled; tested through place_tags
        """Exact squared Euclidean distance transform of ``region`` (zeros assumed all around it),
        Felzenszwalb & Huttenlocher's two passes, then the ``len // 2``-th maximum in row-major order."""
        height, width = region.shape
        vertical = np.empty((height, width), np.int64)
        for x in range(width):
            run = 0
            for y in range(height):
                run = run + 1 if region[y, x] else 0
                vertical[y, x] = run
            run = 0
            for y in range(height - 1, -1, -1):
                run = run + 1 if region[y, x] else 0
                if run < vertical[y, x]:
                    vertical[y, x] = run
        squared = np.zeros((height, width), np.int64)
        sites = np.empty(width + 2, np.int64)
        bounds = np.empty(width + 3, np.float64)
        values = np.empty(width + 2, np.int64)
        for y in range(height):
            # parabolas at x' = -1 .. width, with height 0 on the two border columns
            k = 0
            sites[0] = -1
            values[0] = 0
            bounds[0] = -1e300
            bounds[1] = 1e300
            for q in range(0, width + 1):
                f = 0 if q == width else vertical[y, q] * vertical[y, q]
                while True:
                    p = sites[k]
                    s = ((f + q * q) - (values[k] + p * p)) / (2.0 * (q - p))
                    if s <= bounds[k]:
                        k -= 1
                    else:
                        break
                k += 1
                sites[k] = q
                values[k] = f
                bounds[k] = s
                bounds[k + 1] = 1e300
            k = 0
            for x in range(width):
                while bounds[k + 1] < x:
                    k += 1
                if region[y, x]:
                    d = x - sites[k]
                    squared[y, x] = d * d + values[k]
        best = 0
        count = 0
        for y in range(height):
            for x in range(width):
                value = squared[y, x]
                if value > best:
                    best = value
                    count = 1
                elif value == best:
                    count += 1
        target = count // 2
        seen = 0
        for y in range(height):
            for x in range(width):
                if squared[y, x] == best:
                    if seen == target:
                        return x, y, best
                    seen += 1
        return 0, 0, best


def _peak(region: np.ndarray) -> tuple[int, int, int]:
    if HAVE_NUMBA:
        x, y, best = _peak_numba(region)
        return int(x), int(y), int(best)
    return _peak_scipy(region)


# --------------------------------------------------------------------------- placing tags


def _label(number: int, labels: str) -> str:
    if labels in ("numbers", "number", "1"):
        return str(number)
    if labels in ("letters", "letter", "a", "alphabet"):
        return number_to_letters(number)
    raise ZooError(f"labels must be 'numbers' or 'letters', got {labels!r}")


def _area_order(masks: Sequence[np.ndarray]) -> np.ndarray:
    areas = np.fromiter((np.count_nonzero(m) for m in masks), dtype=np.int64, count=len(masks))
    return np.argsort(areas, kind="stable")  # smallest first; ties keep input order (Python's sorted)


def _check_same_shape(masks: Sequence[np.ndarray]) -> tuple[int, int]:
    if not masks:
        return 0, 0
    shape = masks[0].shape
    for index, mask in enumerate(masks):
        if mask.ndim != 2 or mask.shape != shape:
            raise MaskInputError(f"mask {index} has shape {tuple(mask.shape)}, mask 0 has {tuple(shape)}; "
                                 "all masks must be 2-D and of one size.")
    return shape


def place_tags(masks: Sequence[np.ndarray], *, min_area: int = MIN_AREA, labels: str = "numbers") -> list[Tag]:
    """Tags for ``masks`` (bool arrays ``[H, W]`` of one size, e.g. from :func:`prepare_masks`).

    Implements steps 2-6 of the module docstring. Each mask is handled inside its bounding box plus
    a one-pixel border: that border lies outside the mask, and for any pixel of the box the
    nearest outside pixel is never farther than the nearest border pixel, so the distances (and the
    row-major order of the maxima) are those of the whole padded image. Returns the tags in label
    order; raises :class:`MaskInputError` for masks that are not 2-D or differ in size.
    """
    masks = [np.asarray(m, dtype=bool) for m in masks]
    height, width = _check_same_shape(masks)
    accumulated = np.zeros((height, width), dtype=bool)
    tags: list[Tag] = []
    for index in _area_order(masks):
        mask = masks[index]
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        window = mask[y0:y1, x0:x1]
        taken = accumulated[y0:y1, x0:x1]  # a view: updating it updates the accumulator
        kept = window & ~taken
        taken |= window
        area = int(np.count_nonzero(kept))
        if area < min_area:
            continue
        x, y, squared = _peak(kept)
        number = len(tags) + 1
        tags.append(_make_tag(number, labels, x + x0, y + y0, squared, int(index), area, kept, (x0, y0),
                              (width, height)))
    return tags


def _make_tag(number, labels, x, y, squared, index, area, kept, offset, size) -> Tag:
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    bx0, by0 = int(cols[0]), int(rows[0])
    bx1, by1 = int(cols[-1]) + 1, int(rows[-1]) + 1
    crop = np.ascontiguousarray(kept[by0:by1, bx0:bx1])
    ox, oy = offset
    return Tag(label=_label(number, labels), number=number, anchor=(x + TEXT_OFFSET[0], y + TEXT_OFFSET[1]),
               peak=(x, y), distance=float(np.sqrt(squared)), mask_index=index, area=area,
               bbox=(bx0 + ox, by0 + oy, bx1 + ox, by1 + oy), image_size=size, _crop=crop)


def place_tags_reference(masks: Sequence[np.ndarray], *, min_area: int = MIN_AREA,
                         labels: str = "numbers") -> list[Tag]:
    """The same tags as :func:`place_tags`, computed the straightforward way: whole-image
    operations per mask and scipy's distance transform of the whole padded image (no cv2)."""
    from scipy import ndimage

    masks = [np.asarray(m, dtype=bool) for m in masks]
    height, width = _check_same_shape(masks)
    order = sorted(range(len(masks)), key=lambda i: int(masks[i].sum()))
    accumulated = np.zeros((height, width), dtype=bool)
    tags: list[Tag] = []
    for index in order:
        kept = masks[index] & ~accumulated
        accumulated = accumulated | kept
        area = int(kept.sum())
        if area < min_area:
            continue
        distance = ndimage.distance_transform_edt(np.pad(kept, 1))[1:-1, 1:-1]
        ys, xs = np.where(distance == distance.max())
        x, y = int(xs[len(xs) // 2]), int(ys[len(ys) // 2])
        squared = int(round(float(distance[y, x]) ** 2))
        tags.append(_make_tag(len(tags) + 1, labels, x, y, squared, index, area, kept, (0, 0), (width, height)))
    return tags


# --------------------------------------------------------------------------- drawing


def draw_tags(image, tags: Iterable[Tag], *, font_size: float = FONT_SIZE):
    """Draw ``tags`` on a PIL image as the official visualizer does (``Mark`` mode); returns a new RGB image.

    The picture is rendered by matplotlib's Agg backend with the official figure set-up: a
    frameless figure of ``(W + 0.01) / dpi`` by ``(H + 0.01) / dpi`` inches at 100 dpi, one axes
    over the whole figure, the image shown with ``extent=(0, W, H, 0)`` and nearest
    interpolation, and each label as ``Axes.text`` at its anchor (centred, top-aligned, white,
    black box alpha 0.8, pad 0.7, z-order 10). Matplotlib's default style is used whatever the
    user's matplotlibrc says.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    array = np.asarray(_as_rgb(image))
    height, width = array.shape[:2]
    with matplotlib.style.context("default"):
        figure = Figure(frameon=False, dpi=DPI)
        figure.set_size_inches((width + 1e-2) / DPI, (height + 1e-2) / DPI)
        canvas = FigureCanvasAgg(figure)
        axes = figure.add_axes([0.0, 0.0, 1.0, 1.0])
        axes.axis("off")
        axes.imshow(array, extent=(0, width, height, 0), interpolation="nearest")
        for tag in tags:
            axes.text(tag.anchor[0], tag.anchor[1], tag.label, size=font_size, family="sans-serif",
                      color=(1.0, 1.0, 1.0), bbox=dict(BOX_STYLE), verticalalignment="top",
                      horizontalalignment="center", zorder=10, rotation=0)
        buffer, (out_width, out_height) = canvas.print_to_buffer()
    rgba = np.frombuffer(buffer, dtype=np.uint8).reshape(out_height, out_width, 4)
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]), mode="RGB")


# --------------------------------------------------------------------------- one call


def tag_image(image, masks=None, *, proposer=None, resize: int | None = RESIZE, labels: str = "numbers",
              min_area: int = MIN_AREA, draw: bool = True, font_size: float = FONT_SIZE) -> TaggedImage:
    """Tag an image as SoM-LLaVA's data was tagged; returns a :class:`TaggedImage`.

    ``image``: a path, PIL image or uint8 array (any mode; converted to RGB). ``masks``: see
    :func:`prepare_masks`; masks may have the size of the input image or of the resized one.
    Without masks, ``proposer`` (a ``zoo.tools.MaskProposer``: ``propose(image) -> [ProposedMask]``)
    is run on the resized image, as the official pipeline runs its segmenter after resizing.
    ``resize=None`` keeps the input size. ``labels``: "numbers" or "letters".
    """
    rgb = _as_rgb(image)
    resized = resize_shortest_side(rgb, int(resize)) if resize else rgb.copy()
    if masks is None:
        if proposer is None:
            raise MaskInputError("tag_image needs masks or a proposer (a zoo.tools MaskProposer, e.g. the "
                                 "segment-anything adapter or the shapes world's ShapesMaskProposer).")
        masks = proposer.propose(resized)
    prepared = prepare_masks(masks, resized.size, rgb.size)
    tags = place_tags(prepared, min_area=min_area, labels=labels)
    picture = draw_tags(resized, tags, font_size=font_size) if draw else None
    return TaggedImage(image=picture, resized=resized, tags=tags, original_size=rgb.size)
