"""Image grids (reconstructions, generations, masks) as one PNG, drawn with Pillow.

No matplotlib state is touched, so grids can be written from any thread or training loop.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from zoo.errors import ImageInputError, OutputExistsError

__all__ = ["make_image_grid", "save_image_grid"]

_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


def _cell(image, value_range, where: str):
    """Any image-like to an RGB PIL image; float tensors/arrays are mapped from ``value_range``."""
    from PIL import Image

    from zoo.image import load_image

    if isinstance(image, (str, os.PathLike, Image.Image)):
        return load_image(image, name=where)
    if hasattr(image, "detach"):
        image = image.detach().cpu()
        image = image.float().numpy() if image.is_floating_point() else image.numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)
    array = np.asarray(image)
    if np.issubdtype(array.dtype, np.floating):
        low, high = value_range
        array = np.clip((array.astype(np.float64) - low) / (high - low), 0.0, 1.0)
    return load_image(array, name=where)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int = 3) -> list[str]:
    lines, current = [], ""
    for word in str(text).split():
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip() + "..."
    for index, line in enumerate(lines):  # a single word wider than the cell: cut it
        while draw.textlength(line, font=font) > width and len(line) > 1:
            line = line[:-2] + "."
        lines[index] = line
    return lines


def make_image_grid(rows, titles=None, *, value_range=(0.0, 1.0), scale: int | None = None, pad: int = 4,
                    font_size: int = 11):
    """Arrange ``rows`` of images into one RGB ``PIL.Image``.

    ``rows``: a list of rows, each a list of images or a ``[N, C, H, W]`` tensor; an image is a
    path, a PIL image, an array (H, W[, C]) or a tensor ((C,) H, W). Float values are mapped
    from ``value_range`` (default [0, 1]; ``(-1, 1)`` for model outputs) and clipped; bool
    masks show white on black. ``titles``: ``None``, one string per column (a header above the
    first row), or a list of lists with one caption per cell (drawn under it; ``None`` skips).
    Cells are as large as the largest image; smaller ones are centred. ``scale``: integer
    nearest-neighbour enlargement (default: the smallest that makes cells at least 128 px).
    Raises :class:`ImageInputError` naming the row and column of an unreadable image.
    """
    from PIL import Image, ImageDraw

    if hasattr(rows, "ndim") and rows.ndim == 4:
        rows = [rows]
    grid = []
    for r, row in enumerate(rows):
        items = [row[i] for i in range(row.shape[0])] if hasattr(row, "ndim") and row.ndim == 4 else list(row)
        cells = []
        for c, item in enumerate(items):
            try:
                cells.append(None if item is None else _cell(item, value_range, f"grid row {r}, column {c}"))
            except ImageInputError as error:
                raise ImageInputError(f"grid row {r}, column {c}: {error}") from None
        grid.append(cells)
    filled = [cell for row in grid for cell in row if cell is not None]
    if not filled:
        raise ImageInputError("make_image_grid: no images given.")
    cell_w, cell_h = max(c.width for c in filled), max(c.height for c in filled)
    if scale is None:
        scale = max(1, math.ceil(128 / max(1, min(cell_w, cell_h))))
    cell_w, cell_h = cell_w * scale, cell_h * scale
    columns = max(len(row) for row in grid)
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(math.ceil(font_size * 1.3))
    header: list[list[str]] = []
    captions: list[list[list[str]]] = [[[] for _ in row] for row in grid]
    if titles is not None:
        titles = list(titles)
        if titles and all(isinstance(t, (str, type(None))) for t in titles):
            header = [_wrap(measure, t or "", font, cell_w) for t in titles[:columns]]
        else:
            for r, row_titles in enumerate(titles[:len(grid)]):
                for c, text in enumerate(list(row_titles or [])[:len(grid[r])]):
                    if text:
                        captions[r][c] = _wrap(measure, text, font, cell_w)
    header_h = max((len(lines) for lines in header), default=0) * line_h + (pad if header else 0)
    caption_h = [max((len(lines) for lines in row), default=0) * line_h for row in captions]
    width = columns * cell_w + (columns + 1) * pad
    height = header_h + sum(cell_h + h + pad for h in caption_h) + pad
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(header):
        for k, line in enumerate(lines):
            draw.text((pad + c * (cell_w + pad), pad + k * line_h), line, fill=_TEXT, font=font)
    top = header_h + pad
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            left = pad + c * (cell_w + pad)
            if cell is not None:
                image = cell.resize((cell.width * scale, cell.height * scale), Image.Resampling.NEAREST)
                canvas.paste(image, (left + (cell_w - image.width) // 2, top + (cell_h - image.height) // 2))
            for k, line in enumerate(captions[r][c]):
                draw.text((left, top + cell_h + k * line_h), line, fill=_TEXT, font=font)
        top += cell_h + caption_h[r] + pad
    return canvas


def save_image_grid(rows, path, titles=None, *, overwrite: bool = False, **kwargs) -> Path:
    """Write :func:`make_image_grid` of ``rows`` to ``path`` (PNG, or JPEG by suffix) atomically.

    An existing file raises :class:`OutputExistsError` unless ``overwrite=True``. Returns the path.
    """
    from zoo.files import atomic_open

    target = Path(os.fspath(path)).expanduser()
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass overwrite=True to replace it, or choose another path.")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(target.suffix.lower(), "PNG")
    image = make_image_grid(rows, titles, **kwargs)
    with atomic_open(target, "wb") as handle:
        image.save(handle, format=fmt)
    return target
