"""The three UniCTokens stages: token layouts, initialisations and the stage 2 -> 3 diff masks.

As the official scripts do it (arctanxarc/UniCTokens:train_w_3_stages/, checked at 9f7a80c):

* stage 1 (``train_p_stage_1.py --need_new_tokens --init_by_images --need_init``): insert
  ``<name>`` + 16 ``<token_i>``; ``<name>``'s embedding = the mean embedding of the class word's
  tokens; the ``<token_i>`` embeddings = KMeans(16, random_state=0) centres of the input
  embeddings of the MAGVIT codes of every training image (each image through the training
  transform, randomly flipped). Head rows stay the copies of image codes 0..16 the insertion
  leaves. All 17 rows train. Understanding data only.
* stage 2 (``train_p_stage_2.py``): a fresh insertion of 1 + 16 + 8 rows; rows 0..16 = the stage-1
  rows (epoch 15); the 8 new embedding rows = the ArcFace embedding (people, when insightface finds a
  face) or stay the copies of image codes 17..24; the 8 new head rows always stay those copies. All
  25 rows train on text-to-image + understanding (0.8 / 0.2).
* stage 2 -> 3 (``stage_2_to_3_v1.py``): generate 20 images with the stage-2 tokens (50 steps,
  CFG 5); white marks the tokens whose prediction at step index 34 differs from the final step's,
  painted over the decoded step-34 image (the step-9 comparison is computed there and never used).
* stage 3 (``train_p_stage_3.py``): insertion of 1 + 16 + 8 + 8 rows; rows 0..24 = the stage-2 rows
  (epoch 20); the 8 new embedding rows = KMeans(8) centres of the base embeddings of the diff-mask
  images' codes (computed before the insertion); their head rows stay the copies of image codes
  25..32. Only ``<name>`` and the stage-3 rows train; the understanding prefix lists
  ``<token_0..15>`` and ``<token_24..31>``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zoo.errors import ConfigError

logger = logging.getLogger("zoo.unictokens")

#: ``<token_i>`` rows each stage adds (official defaults).
STAGE_TOKENS = (16, 8, 8)
#: Official epoch of the previous stage a stage starts from (stage 2 <- stage 1 epoch 15, stage 3 <- stage 2 epoch 20).
FROM_EPOCH = {2: 15, 3: 20}


def stage_tokens(stage: int, tokens: Sequence[int] = STAGE_TOKENS) -> list[int]:
    """The concept's ``tokens`` list after ``stage`` (``[16]``, ``[16, 8]``, ``[16, 8, 8]``)."""
    if stage not in (1, 2, 3):
        raise ConfigError(f"stage must be 1, 2 or 3, got {stage!r}.")
    if len(tokens) < stage:
        raise ConfigError(f"stage {stage} needs {stage} token counts, got {list(tokens)}.")
    return [int(t) for t in tokens[:stage]]


def trainable_rows(stage: int, tokens: Sequence[int]) -> list[int] | None:
    """Concept rows that train in ``stage`` (None = all): stage 3 trains ``<name>`` + its own rows."""
    if stage < 3:
        return None
    first, second, third = (int(t) for t in tokens[:3])
    return [0] + list(range(1 + first + second, 1 + first + second + third))


def t2i_condition(name: str, num_tokens: int, class_word: str | None = None) -> str:
    """``"A photo of <token_0>...<token_{k-1}> <name>."`` (pdata.py, ``inited``), or with the class word."""
    tokens = "".join(f"<token_{i}>" for i in range(num_tokens))
    return f"A photo of {tokens} <{name}> {class_word}." if class_word else f"A photo of {tokens} <{name}>."


def diff_mask_prompt(name: str, num_tokens: int, kind: str = "object") -> str:
    tokens = "".join(f"<token_{i}>" for i in range(num_tokens))
    if kind == "human":
        return f"A photo of {tokens} <{name}>'s face in detail."
    return f"A photo of {tokens} <{name}> in the middle of the photo."


# ---------------------------------------------------------------------------- initialisations

def class_word_embedding(model, word: str) -> torch.Tensor:
    """Mean of the base input-embedding rows of ``word``'s tokens (no special tokens) -> ``[D]``."""
    ids = model.tokenizer(word, add_special_tokens=False)["input_ids"]
    unk = model.tokenizer.unk_token_id
    if not word or not ids or (unk is not None and unk in ids):
        raise ConfigError(f"the class word {word!r} has no (known) tokens in the text vocabulary; set info.json "
                          "'class' to a word the tokenizer knows.")
    weight = model.showo.get_input_embeddings().weight
    return weight[torch.tensor(ids, device=weight.device)].detach().float().mean(dim=0)


def code_embeddings(model, codes: torch.Tensor) -> torch.Tensor:
    """Input-embedding rows of image codes ``[B, N]`` (codes, not ids) -> ``[B * N, D]`` float32."""
    weight = model.showo.get_input_embeddings().weight
    ids = codes.reshape(-1).to(weight.device) + model.vocab.image_offset
    return weight[ids].detach().float()


def kmeans_centres(points: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """scikit-learn ``KMeans(n_clusters=k, random_state=seed)`` centres of ``points [M, D]`` -> ``[k, D]``."""
    from sklearn.cluster import KMeans

    if points.shape[0] < k:
        raise ConfigError(f"k-means needs at least {k} points, got {points.shape[0]}; add images or use fewer tokens.")
    kmeans = KMeans(n_clusters=k, random_state=seed)
    kmeans.fit(points.cpu().numpy())
    return torch.tensor(kmeans.cluster_centers_, dtype=torch.float32)


def face_rows(images, num_rows: int, hidden_size: int) -> torch.Tensor | None:
    """ArcFace rows for people (train_p_stage_2.py ``face_embed_init``): the mean 512-d embedding of the
    largest face per image (insightface ``antelopev2``), viewed ``[num_rows, 512 / num_rows]`` and
    linearly interpolated to ``[num_rows, hidden_size]``. Returns None (and logs why) when
    insightface is not installed, its models cannot be loaded, or no image has a face."""
    try:
        from insightface.app import FaceAnalysis
    except ImportError:
        logger.warning("stage 2: insightface is not installed (pip install 'zoo[face]'); the new rows keep the "
                       "image-code initialisation instead of ArcFace.")
        return None
    try:
        app = FaceAnalysis(name="antelopev2", providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=0, det_size=(640, 640))
    except Exception as err:  # model download / onnxruntime problems
        logger.warning("stage 2: insightface could not load antelopev2 (%s); keeping the image-code initialisation.", err)
        return None
    embeddings = []
    for image in images:
        rgb = np.asarray(_large(image))
        faces = app.get(rgb[:, :, ::-1].copy())
        if not faces:
            logger.info("stage 2: no face found in one training image; skipped for ArcFace.")
            continue
        largest = max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
        embeddings.append(torch.from_numpy(np.asarray(largest["embedding"], dtype=np.float32)))
    if not embeddings:
        logger.warning("stage 2: no face found in any training image; keeping the image-code initialisation.")
        return None
    return arcface_to_rows(torch.stack(embeddings).mean(0), num_rows, hidden_size)


def arcface_to_rows(embedding: torch.Tensor, num_rows: int, hidden_size: int) -> torch.Tensor:
    """``[512]`` -> view ``[num_rows, 512 / num_rows]`` -> linear interpolation to ``[num_rows, hidden_size]``."""
    if embedding.numel() % num_rows:
        raise ConfigError(f"a {embedding.numel()}-d face embedding does not split into {num_rows} rows.")
    rows = embedding.float().view(num_rows, -1)
    return F.interpolate(rows.unsqueeze(0), size=(hidden_size,), mode="linear").squeeze(0)


def _large(image, max_side: int = 1280, min_side: int = 1024):
    """pdata.py ``resize_img``: short side to ``min_side``, then the long side to ``max_side``, sides
    rounded down to multiples of 64 (bilinear)."""
    from PIL import Image

    from zoo.image import load_image

    image = load_image(image)
    w, h = image.size
    ratio = min_side / min(h, w)
    w, h = round(ratio * w), round(ratio * h)
    ratio = max_side / max(h, w)
    image = image.resize([round(ratio * w), round(ratio * h)], Image.BILINEAR)
    size = ((round(ratio * w) // 64) * 64, (round(ratio * h) // 64) * 64)
    return image.resize(size, Image.BILINEAR)


def init_stage1(model, class_word: str, image_codes: torch.Tensor, num_tokens: int = 16, seed: int = 0) -> None:
    """Stage-1 initialisation of a model whose concept rows were just inserted (:meth:`insert_concept`):
    ``<name>`` = class-word mean, ``<token_i>`` = KMeans(num_tokens) of the training images' code embeddings.
    ``image_codes``: ``[B, N]`` codes of every training image."""
    centres = kmeans_centres(code_embeddings(model, image_codes), num_tokens, seed) if num_tokens else None
    rows = [class_word_embedding(model, class_word)]
    embed = torch.stack(rows + ([] if centres is None else list(centres)))
    model.set_concept_rows({"embed": embed}, indices=list(range(1 + num_tokens)))


def init_from_previous(model, previous: dict[str, torch.Tensor]) -> None:
    """Copy a previous stage's rows (all three parts) into the first rows of the concept."""
    n = previous["embed"].shape[0]
    if n > model.num_concept_rows:
        raise ConfigError(f"the previous stage saved {n} rows but this stage has {model.num_concept_rows}.")
    model.set_concept_rows({k: previous[k] for k in ("embed", "lm_head_weight", "lm_head_bias")}, indices=list(range(n)))


def init_stage2(model, stage1_rows: dict, kind: str = "object", face_images=None) -> bool:
    """Stage-2 initialisation (after inserting ``1 + 16 + 8`` rows): stage-1 rows first; for people the 8
    new embedding rows from ArcFace. Returns True when ArcFace was used."""
    init_from_previous(model, stage1_rows)
    if kind != "human":
        return False
    n_old = stage1_rows["embed"].shape[0]
    n_new = model.num_concept_rows - n_old
    rows = face_rows(face_images or [], n_new, model.showo.get_input_embeddings().weight.shape[1]) if n_new else None
    if rows is None:
        return False
    model.set_concept_rows({"embed": rows}, indices=list(range(n_old, n_old + n_new)))
    return True


def stage3_centres(base_model, mask_codes: torch.Tensor, num_tokens: int = 8, seed: int = 0) -> torch.Tensor:
    """KMeans(num_tokens) centres of the base's embeddings of the diff-mask images' codes ``[B, N]``."""
    return kmeans_centres(code_embeddings(base_model, mask_codes), num_tokens, seed)


def init_stage3(model, stage2_rows: dict, centres: torch.Tensor) -> None:
    """Stage-3 initialisation (after inserting ``1 + 16 + 8 + 8`` rows): stage-2 rows first, then the
    k-means centres as the new embedding rows (their head rows stay image-code copies)."""
    init_from_previous(model, stage2_rows)
    n_old = stage2_rows["embed"].shape[0]
    model.set_concept_rows({"embed": centres}, indices=list(range(n_old, n_old + centres.shape[0])))


# ---------------------------------------------------------------------------- stage 2 -> 3

def diff_mask_image(model, codes_at_step: torch.Tensor, final_codes: torch.Tensor):
    """One diff-mask picture: the image decoded from ``codes_at_step`` (``[1, N]``), white where those
    codes differ from ``final_codes`` (nearest upsampling of the token grid); uint8 by truncation."""
    from PIL import Image

    codebook = model.vocab.codebook_size
    now = codes_at_step.clamp(0, codebook - 1)
    final = final_codes.clamp(0, codebook - 1)
    with torch.no_grad():
        pixels = model.vq_model.decode_code(now.to(model.device))
    side = math.isqrt(now.shape[1])
    diff = (now != final).float().reshape(1, 1, side, side).to(pixels.device)
    diff = F.interpolate(diff, size=pixels.shape[2:], mode="nearest").expand(-1, 3, -1, -1)
    painted = torch.where(diff == 1.0, torch.ones_like(pixels), pixels)
    array = (torch.clamp((painted + 1.0) / 2.0, 0.0, 1.0) * 255.0).permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)[0]
    return Image.fromarray(array), diff[0, 0].bool().cpu()


def diff_masks(model, concept: str, num_images: int = 20, *, steps: int = 50, guidance: float = 5.0,
               step_index: int = 34, seed: int = 0, kind: str = "object"):
    """The stage 2 -> 3 "generation as perception" pictures: ``num_images`` generations of the stage-2
    concept prompt, each as :func:`diff_mask_image` of step ``step_index`` vs the last step.

    One generator (seeded) serves the images in turn, as the official loop draws from one global
    generator. Returns ``[(PIL image, BoolTensor[H, W] white region), ...]``.
    """
    if not 0 <= step_index < steps - 1:
        raise ConfigError(f"step_index must be in [0, {steps - 2}] for {steps} steps, got {step_index}.")
    tokens = model.concept["tokens"]
    prompt = diff_mask_prompt(concept, sum(tokens[:2]), kind)
    generator = torch.Generator(device=model.device).manual_seed(int(seed))
    out = []
    for _ in range(num_images):
        results = model.generate_image(prompt, steps=steps, guidance=guidance, generator=generator,
                                       return_steps=[step_index])
        out.append(diff_mask_image(model, results[step_index], results[steps - 1]))
    return out


__all__ = [
    "STAGE_TOKENS", "FROM_EPOCH", "stage_tokens", "trainable_rows", "t2i_condition", "diff_mask_prompt",
    "class_word_embedding", "code_embeddings", "kmeans_centres", "face_rows", "arcface_to_rows", "init_stage1",
    "init_from_previous", "init_stage2", "stage3_centres", "init_stage3", "diff_mask_image", "diff_masks",
]
