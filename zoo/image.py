"""Image input: read files as RGB PIL images and list image folders (the layout of torchvision's ImageFolder)."""
from __future__ import annotations

import os
from pathlib import Path

from zoo.errors import ConfigError, ImageInputError

__all__ = ["load_image", "image_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image(path):
    """Read an image file as an RGB ``PIL.Image.Image`` (fully decoded, file closed).

    Raises :class:`ImageInputError` naming the file when it is missing or not a readable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ImageInputError(f"Image file {str(path)!r} {where}; check the path (manifest paths are relative "
                              "to the manifest's folder).")
    try:
        with Image.open(path) as image:
            image.load()  # decode now so truncated files fail here, not later inside a model
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageInputError(f"Cannot read image file {str(path)!r}: {error}. Give a PNG, JPEG, BMP, GIF, "
                              "WebP or TIFF file that Pillow can open.") from error


def image_folder(folder) -> list[dict]:
    """Rows ``{"path", "id"[, "label"]}`` for every image under ``folder``, sorted by path.

    Like torchvision's ImageFolder: an image inside a sub-folder gets that sub-folder's name
    (relative to ``folder``, with "/" for deeper nesting) as its ``label``; images lying
    directly in ``folder`` get no label. ``id`` is the relative path without its extension.
    """
    root = Path(os.fspath(folder)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"Image folder {str(root)!r} does not exist or is not a folder; give a folder of "
                          "images (optionally one sub-folder per label) or a JSONL manifest.")
    rows = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        relative = path.relative_to(root)
        row = {"path": str(path.resolve()), "id": relative.with_suffix("").as_posix()}
        if len(relative.parts) > 1:
            row["label"] = relative.parent.as_posix()
        rows.append(row)
    return rows
