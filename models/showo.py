"""Show-o pieces: the token layout, prompt sequences, omni-attention masks, MaskGIT training and sampling.

Show-o (Xie et al., "Show-o: One Single Transformer to Unify Multimodal Understanding and
Generation", arXiv 2408.12528) is a Phi-1.5 causal LM (transformers' ``PhiForCausalLM``; module
names as showlab/Show-o:models/phi.py) whose vocabulary is extended with image codes:

``[0, llm)`` text (Phi-1.5: 50295) | ``[PAD]`` + 9 task/marker tokens (10 "specials") | concept
tokens a personalisation inserts (UniCTokens; 0 in Show-o) | ``codebook_size`` image codes | one mask token.

So ``vocab.size = llm + 10 + concepts + 8192 + 1`` (58498 for Show-o) and ``mask_id = size - 1``.
The specials are added ``[PAD]`` first, then ``<|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|>
<|t2v|> <|v2v|> <|lvg|>`` (showlab/Show-o:training/prompting_utils.py ``UniversalPrompting``), so
``[PAD] = llm`` and ``<|soi|> = llm + 1``. ``<|sot|>`` and ``<|eot|>`` are the text tokenizer's BOS
and EOS (Phi's ``<|endoftext|>``).

Sequences (``L_t = max_text_len``, 128 in Show-o; ``N`` image tokens):

* text-to-image: ``[PAD]* <|t2i|> <|sot|> text <|eot|>`` left-padded to ``L_t + 1``, then
  ``<|soi|> codes <|eoi|>``. Text is causal; the image block (``<|soi|>`` .. ``<|eoi|>``) attends to
  everything but the padding (:func:`t2i_attention_mask`). Training masks a cosine-scheduled
  share of the codes with the mask token and predicts them in place (MaskGIT; Chang et al. 2022).
* understanding: ``<|mmu|> <|soi|> codes <|eoi|>`` then the text. Everything up to ``<|eoi|>``
  is bidirectional, the text causal (:func:`mmu_attention_mask`); next-token CE on the answer.

Every attention runs through ``zoo.nn.attention`` (the Phi model is built with
``attn_implementation="zoo"``); masks are boolean keep-masks ``[B, 1, L, L]`` (True = attend).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.errors import ConfigError
from zoo.models.configs import PHI_1_5 as _PHI

IGNORE_INDEX = -100

#: Added after ``[PAD]``, in this order (showlab/Show-o:training/prompting_utils.py).
SPECIAL_TOKENS: tuple[str, ...] = ("<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>",
                                   "<|v2v|>", "<|lvg|>")
PAD_TOKEN = "[PAD]"
NUM_SPECIAL = 1 + len(SPECIAL_TOKENS)

#: microsoft/phi-1_5's architecture (torch-free copy in zoo.models.configs).
PHI_1_5: dict = _PHI


@dataclass(frozen=True)
class ShowoVocab:
    """Token ids of a Show-o vocabulary (see the module docstring).

    llm_vocab_size: text tokens of the LLM's tokenizer before ``[PAD]`` (50295 for Phi-1.5).
    codebook_size: image codes (8192).
    num_concept_tokens: tokens inserted after the specials (UniCTokens' ``<concept>``, ``<token_i>``).
    num_special: ``[PAD]`` + the 9 markers (10).
    """

    llm_vocab_size: int
    codebook_size: int
    num_concept_tokens: int = 0
    num_special: int = NUM_SPECIAL

    def __post_init__(self):
        for name in ("llm_vocab_size", "codebook_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"ShowoVocab.{name} must be positive, got {getattr(self, name)!r}.")
        if self.num_concept_tokens < 0:
            raise ConfigError(f"ShowoVocab.num_concept_tokens must be >= 0, got {self.num_concept_tokens}.")

    @property
    def pad_id(self) -> int:
        """Id of ``[PAD]``: the first id after the language model's vocabulary."""
        return self.llm_vocab_size

    def special_id(self, token: str) -> int:
        """Id of ``[PAD]`` or one of :data:`SPECIAL_TOKENS`."""
        if token == PAD_TOKEN:
            return self.pad_id
        if token not in SPECIAL_TOKENS:
            raise ConfigError(f"{token!r} is not a Show-o special token; they are {PAD_TOKEN}, {', '.join(SPECIAL_TOKENS)}.")
        return self.llm_vocab_size + 1 + SPECIAL_TOKENS.index(token)

    @property
    def soi_id(self) -> int:
        """Id of ``<|soi|>`` (start of image)."""
        return self.special_id("<|soi|>")

    @property
    def eoi_id(self) -> int:
        """Id of ``<|eoi|>`` (end of image)."""
        return self.special_id("<|eoi|>")

    @property
    def t2i_id(self) -> int:
        """Id of ``<|t2i|>`` (the text-to-image task token)."""
        return self.special_id("<|t2i|>")

    @property
    def mmu_id(self) -> int:
        """Id of ``<|mmu|>`` (the understanding task token)."""
        return self.special_id("<|mmu|>")

    @property
    def concept_offset(self) -> int:
        """First concept-token id (the insertion point)."""
        return self.llm_vocab_size + self.num_special

    @property
    def image_offset(self) -> int:
        """Id of image code 0: every text, special and concept token comes before it."""
        return self.concept_offset + self.num_concept_tokens

    @property
    def size(self) -> int:
        """The total vocabulary: text, special, concept and image tokens plus the mask token."""
        return self.image_offset + self.codebook_size + 1

    @property
    def mask_id(self) -> int:
        """Id of the image mask token (the last id)."""
        return self.size - 1

    def with_concepts(self, n: int) -> "ShowoVocab":
        """The same vocabulary with ``n`` (>= 0) concept tokens inserted before the image codes (image ids shift by
        ``n``).

        Raises ConfigError for a negative ``n``.
        """
        return ShowoVocab(self.llm_vocab_size, self.codebook_size, n, self.num_special)


# ---------------------------------------------------------------------------- tokenizer

def add_showo_tokens(tokenizer) -> int:
    """Give a text tokenizer Show-o's specials in Show-o's order; returns ``llm_vocab_size``.

    ``[PAD]`` becomes the pad token (id ``len(tokenizer)``), then the nine markers follow, as
    ``UniversalPrompting`` does to Phi-1.5's tokenizer. Raises ConfigError if the tokenizer
    already has one of them at another id, or has no BOS/EOS (``<|sot|>``/``<|eot|>``).
    """
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ConfigError("Show-o needs a text tokenizer with BOS and EOS tokens (<|sot|> and <|eot|>; "
                          "Phi's <|endoftext|>).")
    llm = len(tokenizer)
    vocab = tokenizer.get_vocab()
    present = [t for t in (PAD_TOKEN, *SPECIAL_TOKENS) if t in vocab]
    if present:
        if [vocab[t] for t in (PAD_TOKEN, *SPECIAL_TOKENS)] == list(range(vocab[PAD_TOKEN], vocab[PAD_TOKEN] + NUM_SPECIAL)) \
                and len(tokenizer) == vocab[PAD_TOKEN] + NUM_SPECIAL:
            tokenizer.pad_token = PAD_TOKEN
            return vocab[PAD_TOKEN]
        raise ConfigError(f"the tokenizer already has {present} at other ids than Show-o's layout.")
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.add_tokens(list(SPECIAL_TOKENS))
    if len(tokenizer) != llm + NUM_SPECIAL:
        raise ConfigError("adding Show-o's special tokens did not give consecutive ids.")
    return llm


# ---------------------------------------------------------------------------- MaskGIT schedule and masking

def cosine_schedule(t: torch.Tensor) -> torch.Tensor:
    """Mask ratio ``cos(t * pi / 2)`` for progress ``t`` in [0, 1] (MaskGIT's cosine schedule)."""
    return torch.cos(t * math.pi * 0.5)


def linear_schedule(t: torch.Tensor) -> torch.Tensor:
    """Mask ratio ``1 - t`` clamped to [1e-6, 1]."""
    return (1 - t).clamp(min=1e-6, max=1.0)


MASK_SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"cosine": cosine_schedule,
                                                                      "linear": linear_schedule}


def get_mask_schedule(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The mask-ratio schedule called ``name`` (``cosine`` or ``linear``): maps t in [0, 1] to the masked fraction.

    Raises ConfigError for another name.
    """
    if name not in MASK_SCHEDULES:
        raise ConfigError(f"unknown mask schedule {name!r}; known: {', '.join(MASK_SCHEDULES)}.")
    return MASK_SCHEDULES[name]


def mask_or_random_replace_tokens(image_tokens: torch.Tensor, mask_id: int, *, schedule=cosine_schedule,
                                  min_masking_rate: float = 0.0, generator: torch.Generator | None = None):
    """Mask a scheduled share of each row's image tokens for MaskGIT training.

    Per row: ``t ~ U[0, 1)``, ratio ``r = max(schedule(t), min_masking_rate)``, ``max(round(N r), 1)``
    tokens (a random subset) become ``mask_id``; their labels are the original tokens, every other
    label is -100 (showlab/Show-o:training/utils.py ``mask_or_random_replace_tokens`` with the
    default ``noise_type: mask``). Random draws come from ``generator`` (default: torch's global
    generator) in the official order: the timesteps, then a ``[B, N]`` uniform matrix whose argsort
    ranks positions.

    image_tokens: ``LongTensor[B, N]`` (vocabulary ids). Returns ``(input_ids [B, N], labels [B, N],
    mask_prob [B])``.
    """
    batch, length = image_tokens.shape
    timesteps = torch.rand(batch, device=image_tokens.device, generator=generator)
    mask_prob = schedule(timesteps).clip(min_masking_rate)
    num_masked = (length * mask_prob).round().clamp(min=1)
    ranks = torch.rand(batch, length, device=image_tokens.device, generator=generator).argsort(dim=-1)
    mask = ranks < num_masked.unsqueeze(-1)
    input_ids = torch.where(mask, mask_id, image_tokens)
    labels = torch.where(mask, image_tokens, IGNORE_INDEX)
    return input_ids, labels, mask_prob


# ---------------------------------------------------------------------------- sequences

def _with_bos(ids: Sequence[int], bos_id: int) -> list[int]:
    ids = [int(i) for i in ids]
    if not ids:
        return [bos_id]
    return ids if ids[0] == bos_id else [bos_id] + ids


def t2i_text_block(text_ids: Sequence[int], vocab: ShowoVocab, max_text_len: int, bos_id: int, eos_id: int,
                   drop_condition: bool = False) -> list[int]:
    """``[PAD]* <|t2i|> <|sot|> text <|eot|>``, ``max_text_len + 1`` ids (left-padded; long text cut, ``<|eot|>`` kept).

    ``drop_condition`` gives the unconditional block ``<|t2i|> <|sot|> <|eot|>`` (CFG dropout).
    """
    width = max_text_len + 1
    block = [vocab.t2i_id] + _with_bos(text_ids, bos_id) + [eos_id]
    if drop_condition:
        block = [vocab.t2i_id, bos_id, eos_id]
    if len(block) <= width:
        return [vocab.pad_id] * (width - len(block)) + block
    return block[:width - 1] + [eos_id]


def t2i_sequences(text_ids: Sequence[Sequence[int]], image_ids: torch.Tensor, vocab: ShowoVocab, max_text_len: int,
                  bos_id: int, eos_id: int, labels: torch.Tensor | None = None, cond_dropout_prob: float = 0.0,
                  generator: torch.Generator | None = None):
    """Text-to-image sequences ``[B, max_text_len + 1 + N + 2]`` (and labels when ``labels`` is given).

    image_ids: ``[B, N]`` vocabulary ids (masked or not). labels: ``[B, N]`` targets of the image
    positions; the returned labels hold the text ids (``[PAD]`` -> -100), ``<|soi|>``, ``labels``,
    ``<|eoi|>`` as in the official prompting (the T2I loss reads positions ``max_text_len + 1`` on,
    so ``<|soi|>`` and ``<|eoi|>`` are targets too). Each row's condition is dropped with
    ``cond_dropout_prob``; with labels, one uniform number per row is drawn first (from
    ``generator``), as the official ``t2i_prompt`` does.
    """
    batch = image_ids.shape[0]
    if len(text_ids) != batch:
        raise ConfigError(f"t2i_sequences: {len(text_ids)} texts for {batch} images.")
    device = image_ids.device
    drop = torch.rand(batch, generator=generator) < cond_dropout_prob if labels is not None else torch.zeros(batch, dtype=torch.bool)
    soi = torch.full((batch, 1), vocab.soi_id, dtype=torch.long, device=device)
    eoi = torch.full((batch, 1), vocab.eoi_id, dtype=torch.long, device=device)
    text = torch.tensor([t2i_text_block(ids, vocab, max_text_len, bos_id, eos_id, bool(d))
                         for ids, d in zip(text_ids, drop.tolist())], dtype=torch.long, device=device)
    input_ids = torch.cat([text, soi, image_ids.long(), eoi], dim=1)
    if labels is None:
        return input_ids
    text_labels = torch.where(text == vocab.pad_id, IGNORE_INDEX, text)
    return input_ids, torch.cat([text_labels, soi, labels.long(), eoi], dim=1)


def mmu_prefix(image_ids: torch.Tensor, vocab: ShowoVocab) -> torch.Tensor:
    """``<|mmu|> <|soi|> codes <|eoi|>`` for image ids ``[B, N]`` -> ``LongTensor[B, N + 3]``."""
    batch = image_ids.shape[0]
    mark = lambda token_id: torch.full((batch, 1), token_id, dtype=torch.long, device=image_ids.device)  # noqa: E731
    return torch.cat([mark(vocab.mmu_id), mark(vocab.soi_id), image_ids.long(), mark(vocab.eoi_id)], dim=1)


# ---------------------------------------------------------------------------- omni-attention masks

def t2i_attention_mask(input_ids: torch.Tensor, vocab: ShowoVocab) -> torch.Tensor:
    """Omni-attention keep-mask ``BoolTensor[B, 1, L, L]`` for text-to-image sequences.

    Text rows are causal and never see the left padding; rows of the image block
    (``<|soi|>`` .. ``<|eoi|>``, inclusive) see every non-padding position (text and the whole
    image). Padding rows are causal over the padding (keeps softmax finite). Equal to
    showlab/Show-o:training/prompting_utils.py ``create_attention_mask_predict_next(...,
    rm_pad_in_image=True)`` for left-padded rows with one image block (tested).
    """
    batch, length = input_ids.shape
    device = input_ids.device
    is_pad = input_ids == vocab.pad_id
    starts = (input_ids == vocab.soi_id).long()
    ends = (input_ids == vocab.eoi_id).long()
    in_image = (starts.cumsum(1) > ends.cumsum(1)) | starts.bool() | ends.bool()
    positions = torch.arange(length, device=device)
    causal = positions[None, :, None] >= positions[None, None, :]  # [1, L, L]
    # the last padding position of each row (-1 without padding)
    last_pad = torch.where(is_pad, positions, torch.full_like(positions, -1)).max(dim=1).values
    after_pad = positions[None, :] > last_pad[:, None]  # [B, L]
    key_before_pad_end = positions[None, :] <= last_pad[:, None]  # [B, L] over keys
    text_rows = causal & ~(after_pad[:, :, None] & key_before_pad_end[:, None, :])
    image_rows = ~is_pad[:, None, :].expand(batch, length, length)
    keep = torch.where(in_image[:, :, None], image_rows, text_rows)
    return keep[:, None]


def mmu_attention_mask(input_ids: torch.Tensor, vocab: ShowoVocab) -> torch.Tensor:
    """Keep-mask ``BoolTensor[B, 1, L, L]`` for understanding: causal, plus every row sees every
    position up to the first row's ``<|eoi|>`` (so the image prefix is bidirectional).

    Equal to showlab/Show-o:training/prompting_utils.py ``create_attention_mask_for_mmu``. Raises
    ConfigError when the first row has no ``<|eoi|>``.
    """
    batch, length = input_ids.shape
    hits = torch.nonzero(input_ids[0] == vocab.eoi_id)
    if hits.numel() == 0:
        raise ConfigError("mmu_attention_mask: the sequence has no <|eoi|>; build it with mmu_prefix.")
    eoi = int(hits[0])
    positions = torch.arange(length, device=input_ids.device)
    keep = (positions[:, None] >= positions[None, :]) | (positions[None, :] <= eoi)
    return keep[None, None].expand(batch, 1, length, length)


# ---------------------------------------------------------------------------- losses

def t2i_loss(logits: torch.Tensor, labels: torch.Tensor, max_text_len: int) -> torch.Tensor:
    """MaskGIT CE over positions ``max_text_len + 1`` on (``<|soi|>``, image, ``<|eoi|>``), in place
    (no shift), mean over non-ignored labels (showlab/Show-o:models/modeling_showo.py ``loss_t2i``)."""
    start = max_text_len + 1
    return F.cross_entropy(logits[:, start:].reshape(-1, logits.shape[-1]).float(), labels[:, start:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


def mmu_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE: position ``i`` predicts label ``i + 1`` (``loss_mmu``)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------- sampling

def _gumbel(shape_like: torch.Tensor, generator) -> torch.Tensor:
    noise = torch.zeros_like(shape_like).uniform_(0, 1, generator=generator)
    return -torch.log((-torch.log(noise.clamp(min=1e-20))).clamp(min=1e-20))


def mask_by_random_topk(mask_len: torch.Tensor, probs: torch.Tensor, temperature: float = 1.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """True for the ``mask_len`` least confident positions per row, confidence ``log p + T * gumbel``."""
    confidence = torch.log(probs.clamp(min=1e-20)) + temperature * _gumbel(probs, generator)
    cut_off = torch.gather(torch.sort(confidence, dim=-1).values, 1, mask_len.long())
    return confidence < cut_off


@torch.no_grad()
def maskgit_generate(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, vocab: ShowoVocab, num_vq_tokens: int, max_text_len: int, *,
                     uncond_input_ids: torch.Tensor | None = None, guidance_scale: float = 0.0,
                     timesteps: int = 18, temperature: float = 1.0, schedule=cosine_schedule,
                     generator: torch.Generator | None = None, return_steps: Sequence[int] = ()):
    """MaskGIT decoding of the image block of Show-o text-to-image sequences.

    forward: ``(input_ids [B', L], attention_mask) -> logits [B', L, V]``.
    input_ids: ``[B, L]`` from :func:`t2i_sequences` with every image id set to ``vocab.mask_id``
        (positions ``-(N + 1):-1``); it is updated in place, as in the official code.
    attention_mask: the keep-mask of ``input_ids`` (stacked over ``[input_ids; uncond_input_ids]``
        when guiding).
    uncond_input_ids: the same with the unconditional text block; with ``guidance_scale > 0`` the
        logits are ``(1 + g) * cond - g * uncond`` (showlab/Show-o:models/modeling_showo.py).

    Per step ``s`` of ``timesteps``: sample every position from softmax over the image-code logits
    (``torch.multinomial``), keep the already fixed tokens, then re-mask the
    ``floor(N * schedule((s + 1) / timesteps))`` (at least 1, at most unknown - 1) least confident
    new ones, confidence = ``log p + T_s * gumbel``. The temperature decays *cumulatively*:
    ``T_s = T_{s-1} * (1 - (s + 1) / timesteps)`` (the official loop reassigns ``temperature``).
    Random draws come from ``generator`` in the official order.

    Returns the sampled codes ``LongTensor[B, N]`` of the last step (in ``[0, codebook_size)``), or,
    with ``return_steps``, a dict ``{step: codes}`` for those steps and the last one
    (``t2i_generate_return_multi_steps_result``).
    """
    n = num_vq_tokens
    mask_id, offset, codebook = vocab.mask_id, vocab.image_offset, vocab.codebook_size
    image = slice(input_ids.shape[1] - (n + 1), input_ids.shape[1] - 1)
    known = input_ids[:, image].clone()
    known = torch.where(known == mask_id, mask_id, known - offset)
    guided = uncond_input_ids is not None and guidance_scale > 0
    if guided:
        uncond_prefix = uncond_input_ids[:, :max_text_len + 1]
    wanted = set(int(s) for s in return_steps)
    if wanted:
        wanted.add(timesteps - 1)
    results = {}
    sampled = None
    for step in range(timesteps):
        if guided:
            uncond = torch.cat([uncond_prefix, input_ids[:, max_text_len + 1:]], dim=1)
            cond_logits, uncond_logits = forward(torch.cat([input_ids, uncond]), attention_mask).chunk(2)
            logits = (1 + guidance_scale) * cond_logits - guidance_scale * uncond_logits
        else:
            logits = forward(input_ids, attention_mask)
        logits = logits[:, image, offset:offset + codebook]
        probs = logits.softmax(dim=-1)
        sampled = torch.multinomial(probs.reshape(-1, codebook), 1, generator=generator)[:, 0].view(*logits.shape[:-1])
        unknown = known == mask_id
        sampled = torch.where(unknown, sampled, known)
        if step in wanted:
            results[step] = sampled.clone()
        ratio = 1.0 * (step + 1) / timesteps
        mask_ratio = schedule(torch.tensor(ratio))
        chosen = torch.gather(probs, -1, sampled.long()[..., None]).squeeze(-1)
        chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)
        mask_len = (n * mask_ratio).floor().unsqueeze(0).to(logits.device)
        mask_len = torch.max(torch.tensor([1], device=logits.device),
                             torch.min(unknown.sum(dim=-1, keepdim=True) - 1, mask_len))
        temperature = temperature * (1.0 - ratio)
        masking = mask_by_random_topk(mask_len, chosen, temperature, generator=generator)
        input_ids[:, image] = torch.where(masking, mask_id, sampled + offset)
        known = torch.where(masking, mask_id, sampled)
    return results if wanted else sampled


def top_k_logits(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Logits below the ``top_k``-th largest set to -inf (ties kept); ``None`` keeps all."""
    if top_k is None:
        return logits
    values, _ = torch.topk(logits, min(int(top_k), logits.size(-1)))
    return logits.masked_fill(logits < values[:, [-1]], float("-inf"))


# ---------------------------------------------------------------------------- the LLM

def phi_config(llm: dict, vocab_size: int):
    """A transformers ``PhiConfig`` from a plain dict of Phi fields (``rope_theta`` and
    ``partial_rotary_factor`` go into ``rope_parameters``) and the Show-o vocabulary size."""
    from transformers import PhiConfig

    fields = dict(llm)
    rope = {"rope_type": "default", "rope_theta": float(fields.pop("rope_theta", 10000.0)),
            "partial_rotary_factor": float(fields.pop("partial_rotary_factor", 0.5))}
    return PhiConfig(vocab_size=int(vocab_size), rope_parameters=rope, **fields)


def build_phi(llm: dict, vocab_size: int):
    """``PhiForCausalLM`` (random init) on ``zoo.nn.attention``; keys ``model.*`` and ``lm_head.{weight,bias}``."""
    from transformers import PhiForCausalLM

    from zoo.nn.hf_attention import from_config

    return from_config(PhiForCausalLM, phi_config(llm, vocab_size))


def showo_key(official_key: str) -> str | None:
    """Key of a Show-o checkpoint (``showlab/show-o-512x512``) -> key of the zoo model.

    The Show-o module keeps its Phi under ``showo.``, as the zoo model does, so keys are unchanged;
    the CLIP-ViT projector of the ``w_clip_vit`` variants (``mm_projector.*``) has no place here (None).
    """
    if official_key.startswith("mm_projector."):
        return None
    return official_key


__all__ = [
    "IGNORE_INDEX", "SPECIAL_TOKENS", "PAD_TOKEN", "NUM_SPECIAL", "PHI_1_5", "ShowoVocab", "add_showo_tokens",
    "cosine_schedule", "linear_schedule", "get_mask_schedule", "mask_or_random_replace_tokens", "t2i_text_block",
    "t2i_sequences", "mmu_prefix", "t2i_attention_mask", "mmu_attention_mask", "t2i_loss", "mmu_loss",
    "mask_by_random_topk", "maskgit_generate", "top_k_logits", "phi_config", "build_phi", "showo_key",
]
