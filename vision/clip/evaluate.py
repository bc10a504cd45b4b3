"""``zoo eval CLIP_MODEL --data manifest.jsonl``: image-text retrieval on captioned images.

Recall@1 both ways over the manifest's images and their captions, where a hit is any caption
(or image) with the same caption text: template captions repeat ("a red circle"), so exact
text equality, not the row index, decides. ``chance_*`` is the same recall for a random ranking.
"""
from __future__ import annotations

from pathlib import Path

import torch

from zoo.errors import ConfigError


def retrieval(model, manifest, *, caption_field: str = "caption", max_items: int | None = None,
              batch_size: int = 64) -> dict:
    """``{"image_to_text_r1", "text_to_image_r1", "chance_image_to_text", "chance_text_to_image",
    "images"}`` for the first ``max_items`` rows of ``manifest`` (fractions in [0, 1])."""
    from zoo.data import read_manifest

    rows = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    rows = rows[:max_items] if max_items else rows
    rows = [r for r in rows if isinstance(r.get(caption_field), str)]
    if not rows:
        raise ConfigError(f"{manifest} has no rows with a {caption_field!r} text to evaluate retrieval on.")
    captions = [r[caption_field] for r in rows]
    images = model.encode_image([r["path"] for r in rows], batch_size=batch_size)
    texts = model.encode_text(captions)
    similarity = images @ texts.T
    same = torch.tensor([[a == b for b in captions] for a in captions])
    i2t = same[torch.arange(len(rows)), similarity.argmax(1)].float().mean().item()
    t2i = same[similarity.argmax(0), torch.arange(len(rows))].float().mean().item()
    chance = same.float().mean(1).mean().item()  # symmetric: the same for both directions
    return {"image_to_text_r1": i2t, "text_to_image_r1": t2i, "chance_image_to_text": chance,
            "chance_text_to_image": chance, "images": len(rows)}


def evaluate(model, *, data, output=None, caption_field: str = "caption", max_items: int | None = None,
             batch_size: int = 64, **unknown) -> dict:
    """Retrieval metrics of ``model`` on ``data`` (a captioned JSONL manifest); JSON at ``output`` if given."""
    if unknown:
        raise ConfigError(f"Unknown clip eval options: {', '.join(sorted(unknown))}. Valid: caption_field, "
                          "max_items, batch_size.")
    report = retrieval(model, data, caption_field=caption_field, max_items=int(max_items) if max_items else None,
                       batch_size=int(batch_size))
    if output:
        from zoo.files import write_json

        write_json(output, report)
    return report
