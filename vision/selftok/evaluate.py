"""``zoo eval selftok-... --data FOLDER``: reconstruction quality of the diffusion decoder and the renderer.

For every image (resized and centre-cropped to the model's size): the VAE round trip alone
(the ceiling any tokenizer on this VAE can reach), the diffusion decoder's reconstruction
(``steps`` Euler steps, seeded noise) and the renderer's (when the model is a renderer, or a
renderer is given with ``renderer=NAME_OR_FOLDER``), scored with PSNR and SSIM, and LPIPS / FID when
their packages and weights are installed (else ``"unavailable"`` says what is missing; ``lpips=true`` /
``fid=true`` make them required, ``=false`` skips them), next to a
mean-image baseline (the data set's mean image as every reconstruction). ``keep=1,4,16``
also scores reconstructions from only the first k tokens in AR order (the coarsest k), which
must improve with k. ``plot=grid.png`` writes original | VAE | decode | render rows.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from zoo.errors import ConfigError
from zoo.model import inference

logger = logging.getLogger("zoo.selftok")

OPTIONS = ("renderer", "steps", "cfg", "batch_size", "max_items", "plot", "plot_items", "keep", "seed", "lpips", "fid")


def _keep_list(keep, num_tokens: int) -> list[int]:
    if keep in (None, "", False):
        return []
    values = keep if isinstance(keep, (list, tuple)) else str(keep).replace(" ", "").split(",")
    try:
        out = sorted({int(v) for v in values})
    except ValueError as err:
        raise ConfigError(f"keep must be token counts like 1,4,16, got {keep!r}") from err
    bad = [v for v in out if not 1 <= v <= num_tokens]
    if bad:
        raise ConfigError(f"keep values must lie in 1..{num_tokens}, got {bad}")
    return out


def _psnr_ssim(pred: torch.Tensor, target: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-image PSNR (dB) and SSIM of [B, 3, H, W] images in [0, 1] (zoo.metrics)."""
    from zoo import metrics

    psnr = [float(metrics.psnr(pred[i:i + 1], target[i:i + 1])) for i in range(pred.shape[0])]
    ssim = [float(metrics.ssim(pred[i:i + 1], target[i:i + 1])) for i in range(pred.shape[0])]
    return psnr, ssim


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


@inference
def evaluate(model, *, data, output=None, renderer=None, steps: int = 50, cfg: float = 1.0, batch_size: int = 16,
             max_items: int | None = None, plot=None, plot_items: int = 8, keep=None, seed: int = 0,
             lpips: bool | None = None, fid: bool | None = None, **unknown) -> dict:
    """Score reconstructions of the images in ``data`` (folder, JSONL manifest, ``shapes`` or ``shapes-heldout``).

    Returns (and writes to ``output`` as JSON) ``{"images", "vae": {...}, "decoder": {...}?, "renderer": {...}?,
    "mean_image": {...}, "keep": {...}?}`` with ``psnr`` / ``ssim`` means (and ``lpips`` / ``fid``).
    """
    if unknown:
        raise ConfigError(f"Unknown selftok eval options: {', '.join(sorted(unknown))}. Valid: {', '.join(OPTIONS)}.")
    from zoo.vision.selftok.trainer import _data_source, image_dataset

    dataset = image_dataset(_data_source(data, "eval"), model.image_size)
    count = len(dataset) if not max_items else min(len(dataset), int(max_items))
    render_model = model if model.is_renderer else None
    if renderer is not None:
        import zoo

        render_model = renderer if not isinstance(renderer, (str, Path)) else zoo.load(str(renderer))
        if not getattr(render_model, "is_renderer", False):
            raise ConfigError(f"renderer={renderer!r} is not a Selftok renderer model")
        if render_model.image_size != model.image_size:
            raise ConfigError("the renderer and the tokenizer work at different image sizes")
    decode_model = None if model.is_renderer else model
    keeps = _keep_list(keep, model.num_tokens)
    device = model.device
    if render_model is not None and render_model is not model:
        render_model.to(device)

    scores: dict[str, dict[str, list]] = {}
    originals, shown = [], {"vae": [], "decode": [], "render": []}
    generator = torch.Generator().manual_seed(int(seed))
    total = None

    def add(name, pred, target):
        psnr, ssim = _psnr_ssim(pred, target)
        entry = scores.setdefault(name, {"psnr": [], "ssim": [], "pred": []})
        entry["psnr"] += psnr
        entry["ssim"] += ssim
        if lpips is not False or fid is not False:
            entry["pred"].append(pred.cpu())

    targets = []
    with torch.no_grad():
        for start in range(0, count, int(batch_size)):
            pixels = torch.stack([dataset[i]["image"] for i in range(start, min(count, start + int(batch_size)))])
            pixels = pixels.to(device)
            target = (pixels.clamp(-1, 1) + 1) / 2
            targets.append(target.cpu())
            total = target.sum(0) if total is None else total + target.sum(0)
            latents = model.images_to_latents(pixels)
            vae = model.latents_to_images(latents)
            add("vae", vae, target)
            if decode_model is not None:
                ids = decode_model.encode_latents(latents)
                # one noise draw per image, shared by every variant: the keep sweep compares like with like
                noise = torch.randn(latents.shape, generator=generator).to(device)
                decoded = decode_model.decode(ids, steps=int(steps), cfg=float(cfg), noise=noise)
                add("decoder", decoded, target)
                for k in keeps:
                    add(f"decoder_keep_{k}", decode_model.decode(ids, steps=int(steps), cfg=float(cfg), keep=k,
                                                                 noise=noise), target)
                shown["decode"].append(decoded.cpu())
            if render_model is not None:
                render_latents = render_model.images_to_latents(pixels) if render_model is not model else latents
                rids = render_model.encode_latents(render_latents)
                rendered = render_model.render(rids)
                add("renderer", rendered, target)
                if decode_model is None:
                    for k in keeps:
                        add(f"renderer_keep_{k}", render_model.render(rids, keep=k), target)
                shown["render"].append(rendered.cpu())
            shown["vae"].append(vae.cpu())
            originals.append(target.cpu())
    target_all = torch.cat(targets)
    mean_image = (total / count).cpu()
    add("mean_image", mean_image.expand_as(target_all).contiguous(), target_all)

    report: dict = {"images": count, "image_size": model.image_size, "num_tokens": model.num_tokens,
                    "decode_steps": int(steps) if decode_model is not None else None, "cfg": float(cfg)}
    for name, entry in scores.items():
        if name.startswith(("decoder_keep_", "renderer_keep_")):
            continue
        report[name] = {"psnr": _mean(entry["psnr"]), "ssim": _mean(entry["ssim"])}
    sweep = {}
    for name, entry in scores.items():
        if name.startswith(("decoder_keep_", "renderer_keep_")):
            k = int(name.rsplit("_", 1)[1])
            sweep[k] = {"psnr": _mean(entry["psnr"]), "ssim": _mean(entry["ssim"])}
    if sweep:
        sweep[model.num_tokens] = report["renderer" if decode_model is None else "decoder"]
        report["keep"] = {str(k): sweep[k] for k in sorted(sweep)}
        values = [sweep[k]["psnr"] for k in sorted(sweep)]
        report["keep_psnr_rises"] = all(b >= a for a, b in zip(values[:-1], values[1:]))
    if lpips is not False or fid is not False:
        from zoo import metrics
        from zoo.errors import MissingDependencyError, WeightsNotAvailableError

        unavailable = {}
        for metric, wanted in (("lpips", lpips), ("fid", fid)):
            if wanted is False:
                continue
            for name, entry in scores.items():
                if name not in report or not entry["pred"] or metric in unavailable:
                    continue
                pred = torch.cat(entry["pred"]) if name != "mean_image" else entry["pred"][0]
                try:
                    value = metrics.lpips(pred, target_all) if metric == "lpips" else metrics.fid(target_all, pred)
                except (MissingDependencyError, WeightsNotAvailableError) as err:
                    if wanted:  # asked for explicitly: say what is missing
                        raise
                    unavailable[metric] = str(err).split(". ")[0]
                    continue
                report[name][metric] = float(value)
        if unavailable:
            report["unavailable"] = unavailable
    if plot:
        _plot(plot, originals, shown, int(plot_items))
        report["plot"] = str(plot)
    if output:
        from zoo.files import write_json

        write_json(Path(output), report)
    return report


def _plot(path, originals, shown, items: int) -> None:
    from zoo.plot import save_image_grid

    columns = [("original", torch.cat(originals))]
    for name in ("vae", "decode", "render"):
        if shown[name]:
            columns.append((name, torch.cat(shown[name])))
    count = min(items, columns[0][1].shape[0])
    rows = [[column[i] for _, column in columns] for i in range(count)]
    save_image_grid(rows, path, titles=[name for name, _ in columns])
