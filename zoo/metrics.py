"""Image metrics: PSNR and SSIM always; LPIPS, FID and CLIP score when their packages and
weights are already on this machine (nothing is downloaded inside a metric).

Every function takes predictions and references as float tensors ``[B, 3, H, W]`` (or one
``[3, H, W]`` image), or as lists of anything :func:`zoo.image.load_image` reads (paths, PIL
images, arrays), which become ``[B, 3, H, W]`` in [0, 1]. ``data_range`` /
``value_range`` say what range tensors are in ([0, 1] by default; pass ``data_range=2.0``
or ``value_range=(-1, 1)`` for [-1, 1] images). Scores are averaged over the batch and
returned as 0-d float tensors. The computations are torchmetrics'.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import torch

from zoo.errors import ImageInputError, MissingDependencyError, WeightsNotAvailableError

__all__ = ["psnr", "ssim", "lpips", "fid", "clip_score", "LPIPS_BACKBONE_FILES", "INCEPTION_WEIGHTS_FILE"]

#: torchvision checkpoints LPIPS's backbones load (in ``torch.hub.get_dir()/checkpoints``); the
#: LPIPS linear heads ship inside torchmetrics.
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                        "squeeze": "squeezenet1_1-b8a52dc0.pth"}
#: torch-fidelity's FID Inception-v3 weights (the TensorFlow FID network, ported).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
_INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
_EXTRA = "pip install 'zoo[image-metrics]'"


def _batch(images, name: str) -> torch.Tensor:
    if torch.is_tensor(images):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ImageInputError(f"{name}: expected a [B, 3, H, W] or [3, H, W] tensor, got shape "
                                  f"{tuple(images.shape)}.")
        return images.float()
    from zoo.image import prepare_images

    return prepare_images(images)


def _pair(preds, target) -> tuple[torch.Tensor, torch.Tensor]:
    preds, target = _batch(preds, "preds"), _batch(target, "target")
    if preds.shape != target.shape:
        raise ImageInputError(f"preds and target must have the same shape, got {tuple(preds.shape)} and "
                              f"{tuple(target.shape)}.")
    return preds, target.to(preds.device)


def psnr(preds, target, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image ``10 log10(data_range**2 / MSE)``, averaged.

    Identical images give ``inf``. ``data_range`` is the span of the values (1 for [0, 1],
    2 for [-1, 1], 255 for 0-255).
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    preds, target = _pair(preds, target)
    return peak_signal_noise_ratio(preds, target, data_range=data_range, dim=(1, 2, 3),
                                   reduction="elementwise_mean")


def ssim(preds, target, data_range: float = 1.0, kernel_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), averaged.

    In [-1, 1]; 1 for identical images. Images must be at least ``kernel_size`` pixels on each side.

    Raises ImageInputError when the images are smaller than the kernel_size window, and for mismatched or
    malformed batches.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    preds, target = _pair(preds, target)
    if min(preds.shape[-2:]) < kernel_size:
        raise ImageInputError(f"ssim: images of {tuple(preds.shape[-2:])} pixels are smaller than the "
                              f"{kernel_size}x{kernel_size} window; pass a smaller kernel_size.")
    return structural_similarity_index_measure(preds, target, data_range=data_range, kernel_size=kernel_size,
                                               sigma=sigma, reduction="elementwise_mean")


def _require(module: str, package: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"{what} needs the {package!r} package, which is not installed: {_EXTRA} "
                                     f"(or pip install {package}).")


def _hub_checkpoint(filename: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _to_symmetric(x: torch.Tensor, value_range) -> torch.Tensor:
    low, high = value_range
    return (x - low) / (high - low) * 2 - 1


@functools.lru_cache(maxsize=3)
def _lpips_module(net: str):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    return LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="mean").eval()


def lpips(preds, target, net: str = "alex", value_range=(0.0, 1.0)) -> torch.Tensor:
    """LPIPS distance (Zhang et al. 2018), averaged; 0 for identical images, lower is closer.

    ``net`` is the backbone: "alex" (the usual choice), "vgg" or "squeeze". Needs torchvision
    (``zoo[image-metrics]``) and the backbone's ImageNet checkpoint already in torch's hub cache
    (:data:`LPIPS_BACKBONE_FILES`); raises ``MissingDependencyError`` / ``WeightsNotAvailableError``
    saying which otherwise.
    """
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"lpips: net must be one of {', '.join(LPIPS_BACKBONE_FILES)}, got {net!r}.")
    _require("torchvision", "torchvision", "LPIPS")
    checkpoint = _hub_checkpoint(LPIPS_BACKBONE_FILES[net])
    if not checkpoint.is_file():
        raise WeightsNotAvailableError(
            f"LPIPS ({net}) needs torchvision's ImageNet backbone at {checkpoint}, which is not there. zoo does "
            f"not download inside a metric: fetch https://download.pytorch.org/models/{checkpoint.name} into that "
            "folder (or set TORCH_HOME to a folder that has it).")
    preds, target = _pair(preds, target)
    module = _lpips_module(net).to(preds.device)
    with torch.no_grad():
        return module(_to_symmetric(preds, value_range).clamp(-1, 1),
                      _to_symmetric(target, value_range).clamp(-1, 1)).detach()


def _chunks(images, batch_size: int):
    if torch.is_tensor(images) or not isinstance(images, (list, tuple)) or \
            (images and not torch.is_tensor(images[0])):
        batch = _batch(images, "fid")
        yield from batch.split(batch_size)
    else:  # a list of tensors or of [B, 3, H, W] batches
        for item in images:
            yield from _batch(item, "fid").split(batch_size)


def fid(real, fake, feature=2048, weights_path: str | os.PathLike | None = None, value_range=(0.0, 1.0),
        batch_size: int = 64) -> torch.Tensor:
    """Fréchet Inception distance (Heusel et al. 2017) between two image sets; lower is closer.

    ``real``/``fake``: tensors ``[N, 3, H, W]``, lists of such batches, or lists of image files.
    ``feature``: the Inception-v3 layer width (64, 192, 768 or 2048, torch-fidelity's FID
    network; needs ``torch-fidelity`` from ``zoo[image-metrics]`` and its weights, from
    ``weights_path`` or torch's hub cache :data:`INCEPTION_WEIGHTS_FILE`), or any
    ``torch.nn.Module`` mapping [0, 1] images to ``[B, D]`` features (then nothing else is
    needed). Needs at least two images per set.

    Raises ImageInputError with fewer than 2 real or 2 generated images, WeightsNotAvailableError when the
    Inception weights are not on disk, MissingDependencyError without torch-fidelity, and ValueError for a
    ``feature`` that is neither an Inception width nor a module.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    kwargs = {}
    if isinstance(feature, int):
        _require("torch_fidelity", "torch-fidelity", "FID with the Inception network")
        weights = Path(os.fspath(weights_path)) if weights_path is not None else _hub_checkpoint(INCEPTION_WEIGHTS_FILE)
        if not weights.is_file():
            raise WeightsNotAvailableError(
                f"FID needs the Inception-v3 weights at {weights}, which are not there. zoo does not download inside "
                f"a metric: fetch {_INCEPTION_URL} and pass weights_path=..., or put it in {weights.parent}.")
        kwargs["feature_extractor_weights_path"] = str(weights)
    elif not isinstance(feature, torch.nn.Module):
        raise ValueError(f"fid: feature must be an Inception layer width or a torch.nn.Module, got {feature!r}.")
    metric = FrechetInceptionDistance(feature=feature, normalize=True, **kwargs)
    counts = {}
    for images, is_real in ((real, True), (fake, False)):
        counts[is_real] = 0
        for chunk in _chunks(images, batch_size):
            chunk = ((chunk - value_range[0]) / (value_range[1] - value_range[0])).clamp(0, 1)
            metric = metric.to(chunk.device)
            metric.update(chunk, real=is_real)
            counts[is_real] += chunk.shape[0]
    if min(counts.values()) < 2:
        raise ImageInputError(f"fid: needs at least 2 real and 2 generated images, got {counts[True]} and "
                              f"{counts[False]}.")
    return metric.compute().detach().float()


def _load_clip(name: str):
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
    except OSError as error:
        raise WeightsNotAvailableError(
            f"CLIP score needs the CLIP model {name!r} in the local Hugging Face cache (or a local folder); it is "
            f"not there ({error}). zoo does not download inside a metric: run `hf download {name}` once, or pass a "
            "(model, processor) pair.") from None
    return model.eval(), processor


class _FeatureTensors(torch.nn.Module):
    """transformers 5's ``get_image_features``/``get_text_features`` return model outputs whose
    ``pooler_output`` is the projected embedding; torchmetrics (1.9) expects the tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return out if torch.is_tensor(out) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return out if torch.is_tensor(out) else out.pooler_output


def clip_score(images, texts, model="openai/clip-vit-base-patch16", value_range=(0.0, 1.0)) -> torch.Tensor:
    """CLIP score (Hessel et al. 2021): ``100 * cos(image, text)`` averaged over pairs, floored at 0.

    ``images``: ``[B, 3, H, W]`` or a list of image files; ``texts``: ``B`` strings. ``model``: a
    transformers CLIP repo id or folder already on this machine (loaded with
    ``local_files_only=True``; ``WeightsNotAvailableError`` otherwise), or a
    ``(CLIPModel, CLIPProcessor)`` pair.
    """
    from torchmetrics.functional.multimodal import clip_score as _clip_score

    batch = _batch(images, "clip_score")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if len(texts) != batch.shape[0]:
        raise ImageInputError(f"clip_score: {batch.shape[0]} images but {len(texts)} texts; give one text per image.")
    clip, processor = _load_clip(model) if isinstance(model, (str, os.PathLike)) else tuple(model)
    pair = (_FeatureTensors(clip), processor)
    unit = ((batch - value_range[0]) / (value_range[1] - value_range[0])).clamp(0, 1)
    pixels = (unit * 255).round().to(torch.uint8)  # the CLIP processor rescales 0-255 values itself
    with torch.no_grad():
        return _clip_score(list(pixels), texts, model_name_or_path=lambda: pair).detach().float()
