"""Text side of the language and vision-language families: tiny offline tokenizers, chat
templates and conversation encoding with answer-only labels.

* :func:`build_tokenizer` trains a small word-level or byte-level BPE tokenizer with the
  ``tokenizers`` library from a list of texts (e.g. shapes-world captions) and wraps it as a
  transformers ``PreTrainedTokenizerFast`` (``save_pretrained`` / ``AutoTokenizer.from_pretrained``
  round-trip). Real tokenizers load from their upstream repos at run time; these are for tests
  and demos, which never download.
* :data:`TEMPLATES`: ``vicuna_v1`` as LLaVA-1.5 trains and prompts (haotian-liu/LLaVA:
  llava/conversation.py ``conv_vicuna_v1``, llava/train/train.py ``preprocess_v1``) and ``showo``,
  the Phi-1.5 MMU format of Show-o and UniCTokens (arctanxarc/UniCTokens:
  llava/llava/conversation.py ``conv_phi_v0``, pdata.py ``preprocess_v0``, eval/eval_p_mmu.py).
* :func:`encode_conversation` renders a conversation with a template, tokenizes the whole prompt
  and returns ``input_ids`` and ``labels`` that are -100 everywhere except the assistant's answer
  tokens and the end-of-turn token that follows each answer.

Label masking, LLaVA-style: the official code finds answer positions by token-count arithmetic
on separately tokenized pieces (``len(tokenizer(round))``, ``len(tokenizer(instruction)) - 2``
for the BOS and the trailing-space token, ``- 1`` per later round for non-legacy Llama
tokenizers with tokenizers>=0.14; UniCTokens: ``- 1`` and ``+ 1`` with Phi's BOS-less tokenizer)
and masks the whole sample when the count disagrees with the real length. The tokens it means
are the answer tokens (the space after ``"ASSISTANT:"`` belongs to the first answer token) and the
``</s>`` / ``<|endoftext|>`` that closes the turn. Here they are found from the tokenizer's
character offsets on the one tokenization of the full prompt, so no piece is counted twice and
no sample is dropped; on tokenizers where the official arithmetic holds the labels are equal
(tested).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from zoo.errors import ConfigError

logger = logging.getLogger("zoo.text")

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"


# ---------------------------------------------------------------------------- tokenizers

def build_tokenizer(texts: Iterable[str], special_tokens: Sequence[str] = (), *, kind: str = "wordlevel",
                    vocab_size: int = 1000, min_frequency: int = 1, pad_token: str = "<pad>",
                    bos_token: str = "<s>", eos_token: str = "</s>", unk_token: str = "<unk>",
                    add_bos: bool = False, model_max_length: int = 2048):
    """A tiny deterministic tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast``.

    texts: the training texts (e.g. captions and the chat-template words you will encode).
    special_tokens: extra special tokens kept whole and never split (``"<image>"``,
        ``"<|soi|>"``, ...); ids follow pad, bos, eos, unk (ids 0-3, in that order, duplicates
        merged: ``bos_token == eos_token`` as in Phi's ``<|endoftext|>`` is fine).
    kind: ``"wordlevel"`` (words and punctuation, whitespace dropped; the most frequent
        ``vocab_size`` entries, ties by text) or ``"bpe"`` (byte-level BPE as GPT-2 / Phi / Qwen2
        use: every string round-trips, spaces are part of the following token).
    vocab_size: the total size including special tokens (an upper bound for wordlevel).
    min_frequency: words (wordlevel) or merges (bpe) seen fewer times are left out.
    add_bos: prepend ``bos_token`` when encoding (Llama / Vicuna tokenizers do, Phi's does not).
    Returns a ``transformers.PreTrainedTokenizerFast`` with pad/bos/eos/unk set.
    Raises ConfigError for an unknown kind, no texts or a vocabulary too small for the specials.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [str(t) for t in texts]
    if not texts:
        raise ConfigError("build_tokenizer needs at least one training text.")
    specials = list(dict.fromkeys([pad_token, bos_token, eos_token, unk_token, *special_tokens]))
    if vocab_size <= len(specials):
        raise ConfigError(f"build_tokenizer: vocab_size={vocab_size} leaves no room beyond the {len(specials)} "
                          "special tokens.")
    if kind == "wordlevel":
        pre = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+, whitespace dropped
        counts = Counter(word for text in texts for word, _ in pre.pre_tokenize_str(text))
        words = sorted((w for w, c in counts.items() if c >= min_frequency and w not in specials),
                       key=lambda w: (-counts[w], w))
        vocab = {token: index for index, token in enumerate(specials + words[:vocab_size - len(specials)])}
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
        tokenizer.pre_tokenizer = pre
        tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer=trainer)
    else:
        raise ConfigError(f"build_tokenizer: kind must be 'wordlevel' or 'bpe', got {kind!r}.")
    tokenizer.add_special_tokens(specials)
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B", special_tokens=[(bos_token, tokenizer.token_to_id(bos_token))])
    extra = [t for t in specials if t not in (pad_token, bos_token, eos_token, unk_token)]
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad_token, bos_token=bos_token,
                                   eos_token=eos_token, unk_token=unk_token, extra_special_tokens=extra,
                                   model_max_length=model_max_length)


# ---------------------------------------------------------------------------- templates

@dataclass(frozen=True)
class ChatTemplate:
    """A two-role conversation format (LLaVA's ``SeparatorStyle.TWO``).

    Rendered as ``system + sep + (role + ": " + message + (sep after user, eos after assistant))*``;
    a generation prompt ends with ``assistant_role + ":"``.

    system: the system prompt ("" for none).
    roles: (user role, assistant role) names as they appear in the text.
    sep: what follows the system prompt and each user message.
    eos: what closes each assistant message (the end-of-turn text; learned as a label). Must be
        one token of the tokenizer.
    strip: strip the rendered text (Show-o's ``get_prompt().strip()``).
    image: ``"front"`` puts one ``<image>`` + newline at the start of the message that holds it
        (LLaVA's ``preprocess_multimodal``); ``"remove"`` drops it (Show-o: the image tokens go in
        a block before the text).
    """

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    eos: str
    strip: bool = False
    image: str = "front"
    source: str = ""

    def render(self, conversation, add_generation_prompt: bool = False) -> str:
        """The prompt text; see :meth:`segments` for the accepted conversation formats."""
        return "".join(text for text, _ in self.segments(conversation, add_generation_prompt))

    def segments(self, conversation, add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        """The rendered prompt as ``(text, is_target)`` pieces; targets are answers + their eos.

        conversation: a list of turns, each ``{"from": "human"|"gpt", "value": str}`` (LLaVA data)
            or ``{"role": "user"|"assistant", "content": str}``. A first turn that is not the
            user's is skipped (as LLaVA does); turns must then alternate user/assistant.

        Raises ConfigError when ``add_generation_prompt`` is set but the conversation does not end with a user
        turn.
        """
        turns = _turns(conversation)
        pieces: list[tuple[str, bool]] = [(self.system + self.sep, False)]
        user, assistant = self.roles
        for index, (role, text) in enumerate(turns):
            text = self._place_image(text)
            if role == "user":
                pieces.append((f"{user}: {text}{self.sep}", False))
            else:
                pieces.append((f"{assistant}:", False))
                pieces.append((f" {text}{self.eos}", True))
        if add_generation_prompt:
            if turns and turns[-1][0] == "user":
                pieces.append((f"{assistant}:", False))
            else:
                raise ConfigError("add_generation_prompt needs a conversation that ends with a user turn.")
        if self.strip:
            pieces = _strip_pieces(pieces)
        return [p for p in pieces if p[0]]

    def _place_image(self, text: str) -> str:
        if IMAGE_PLACEHOLDER not in text:
            return text
        rest = text.replace(IMAGE_PLACEHOLDER, "").strip()
        return f"{IMAGE_PLACEHOLDER}\n{rest}" if self.image == "front" else rest


def _strip_pieces(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    pieces = list(pieces)
    while pieces and not pieces[0][0].strip():
        pieces.pop(0)
    while pieces and not pieces[-1][0].strip():
        pieces.pop()
    if pieces:
        pieces[0] = (pieces[0][0].lstrip(), pieces[0][1])
        pieces[-1] = (pieces[-1][0].rstrip(), pieces[-1][1])
    return pieces


_USER = {"human": "user", "user": "user"}
_ASSISTANT = {"gpt": "assistant", "assistant": "assistant"}


def _turns(conversation) -> list[tuple[str, str]]:
    if isinstance(conversation, Mapping) and "conversations" in conversation:
        conversation = conversation["conversations"]  # a whole LLaVA record
    turns = []
    for index, turn in enumerate(conversation):
        if not isinstance(turn, Mapping):
            raise ConfigError(f"conversation turn {index} is a {type(turn).__name__}; each turn is a dict with "
                              "'from'/'value' (LLaVA) or 'role'/'content'.")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        role = _USER.get(speaker) or _ASSISTANT.get(speaker)
        if role is None or not isinstance(text, str):
            raise ConfigError(f"conversation turn {index} has from/role {speaker!r} and value/content of type "
                              f"{type(text).__name__}; use human/gpt or user/assistant and a string.")
        turns.append((role, text))
    if turns and turns[0][0] != "user":
        turns = turns[1:]  # LLaVA skips a first turn that is not the human's
    for index, (role, _) in enumerate(turns):
        want = "user" if index % 2 == 0 else "assistant"
        if role != want:
            raise ConfigError(f"conversation turn {index} is from the {role}, expected the {want}: turns must "
                              "alternate user, assistant, user, ...")
    return turns


VICUNA_V1 = ChatTemplate(
    name="vicuna_v1",
    system="A chat between a curious user and an artificial intelligence assistant. "
           "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"), sep=" ", eos="</s>", image="front",
    source="haotian-liu/LLaVA:llava/conversation.py conv_vicuna_v1 (LLaVA-1.5, Vicuna v1.5)")
# Show-o MMU: the model input is [<|mmu|>] [<|soi|>] image codes [<|eoi|>] + these text tokens, the
# image block's labels all -100 (UniCTokens train_p_stage_1.py); UniCTokens' eval prompts add <|sot|>
# (Phi's BOS) before the text, training does not. The family builds that block around encode_conversation.
SHOWO = ChatTemplate(
    name="showo", system="", roles=("USER", "ASSISTANT"), sep=" ", eos="<|endoftext|>", strip=True, image="remove",
    source="arctanxarc/UniCTokens:llava/llava/conversation.py conv_phi_v0 (Show-o's Phi-1.5 MMU format)")
TEMPLATES: dict[str, ChatTemplate] = {"vicuna_v1": VICUNA_V1, "llava_v1": VICUNA_V1, "showo": SHOWO,
                                      "phi1.5": SHOWO}


def get_template(template) -> ChatTemplate:
    """A :class:`ChatTemplate` by name (``vicuna_v1``/``llava_v1``, ``showo``/``phi1.5``) or as given.

    Raises ConfigError for an unknown template name (listing the known ones).
    """
    if isinstance(template, ChatTemplate):
        return template
    if template not in TEMPLATES:
        raise ConfigError(f"unknown chat template {template!r}; known: {sorted(TEMPLATES)}.")
    return TEMPLATES[template]


# ---------------------------------------------------------------------------- encoding

def _single_token(tokenizer, text: str, what: str) -> int:
    ids = tokenizer.convert_tokens_to_ids(text)
    if ids is None or ids == tokenizer.unk_token_id or text not in tokenizer.get_vocab():
        raise ConfigError(f"the tokenizer has no token {text!r} ({what}); add it as a special token "
                          f"(build_tokenizer(..., special_tokens=[{text!r}]) or tokenizer.add_special_tokens).")
    return ids


def encode_conversation(tokenizer, conversation, template="vicuna_v1", max_length: int | None = None, *,
                        image_tokens: int = 1, add_generation_prompt: bool = False) -> dict:
    """Tokenize a conversation with ``template``; labels only on the assistant's answers.

    tokenizer: a fast (``tokenizers``-backed) transformers tokenizer; the template's end-of-turn
        text (``</s>`` for vicuna_v1, ``<|endoftext|>`` for showo) and, if the conversation has an
        image, ``<image>`` must each be one token of it.
    conversation: turns as :meth:`ChatTemplate.segments` accepts (LLaVA records too).
    template: a name in :data:`TEMPLATES` or a :class:`ChatTemplate`.
    max_length: keep the first ``max_length`` tokens (None: no limit). Cutting is never silent:
        it logs a warning with the counts and returns them.
    image_tokens: copies of the ``<image>`` id to put in its place (e.g. 576 for LLaVA-1.5 in
        transformers' ``LlavaForConditionalGeneration``); their labels are -100.
    add_generation_prompt: end with the assistant's role and ``:`` (an inference prompt).
    Returns ``{"input_ids": LongTensor[T], "labels": LongTensor[T], "truncated": int}`` with
        ``truncated`` the number of tokens cut. ``labels[i]`` is ``input_ids[i]`` for answer and
        end-of-turn tokens and -100 elsewhere (shifting is the model's job, as in transformers).
    Raises ConfigError for a slow tokenizer, missing special tokens, or a malformed conversation.
    """
    template = get_template(template)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("encode_conversation needs a fast tokenizer (PreTrainedTokenizerFast) for character "
                          "offsets; load it with use_fast=True.")
    eos_id = _single_token(tokenizer, template.eos, f"the end of an assistant turn in {template.name}")
    segments = template.segments(conversation, add_generation_prompt)
    text = "".join(piece for piece, _ in segments)
    image_id = _single_token(tokenizer, IMAGE_PLACEHOLDER, "the image placeholder") if IMAGE_PLACEHOLDER in text \
        else None
    spans, start = [], 0
    for piece, target in segments:
        if target:
            spans.append((start, start + len(piece)))
        start += len(piece)
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    input_ids, labels = [], []
    for token, (begin, end) in zip(ids, offsets):
        is_target = end > begin and any(a <= begin < b for a, b in spans)
        if image_id is not None and token == image_id and image_tokens != 1:
            input_ids.extend([image_id] * image_tokens)
            labels.extend([IGNORE_INDEX] * image_tokens)
            continue
        input_ids.append(token)
        labels.append(token if is_target else IGNORE_INDEX)
    if spans and eos_id not in [t for t, l in zip(input_ids, labels) if l != IGNORE_INDEX]:
        raise ConfigError(f"the {template.name} end-of-turn {template.eos!r} did not come out as its own token; "
                          "make it a special token of the tokenizer.")
    truncated = 0
    if max_length is not None and len(input_ids) > max_length:
        truncated = len(input_ids) - max_length
        lost = sum(1 for label in labels[max_length:] if label != IGNORE_INDEX)
        logger.warning("encode_conversation: cut %d of %d tokens to max_length=%d (%d answer tokens lost)",
                       truncated, len(input_ids), max_length, lost)
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": torch.tensor(input_ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long),
            "truncated": truncated}


@dataclass
class TruncationCount:
    """Counts cut conversations over a dataset: ``add(encoded)`` per sample, then read it."""

    samples: int = 0
    truncated_samples: int = 0
    truncated_tokens: int = 0
    examples: list = field(default_factory=list)

    def add(self, encoded: dict, key=None) -> dict:
        """Count one encoded conversation (the dict :func:`encode_conversation` returns; its ``"truncated"`` is the
        number of tokens cut); ``key`` (e.g. the sample id) is kept as an example, up to 5. Returns ``encoded``.
        """
        self.samples += 1
        if encoded.get("truncated"):
            self.truncated_samples += 1
            self.truncated_tokens += int(encoded["truncated"])
            if key is not None and len(self.examples) < 5:
                self.examples.append(key)
        return encoded

    def __str__(self) -> str:
        return (f"{self.truncated_samples} of {self.samples} conversations cut ({self.truncated_tokens} tokens)"
                + (f", e.g. {self.examples}" if self.examples else ""))


def collate_conversations(items: Sequence[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad encoded conversations to one batch: ``input_ids`` (pad id), ``labels`` (-100) and
    ``attention_mask`` (1 = token), each ``LongTensor[B, T]``; left padding for generation.

    Raises ConfigError for a padding_side other than right or left.
    """
    if padding_side not in ("right", "left"):
        raise ConfigError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
    width = max(len(item["input_ids"]) for item in items)
    out = {name: torch.full((len(items), width), fill, dtype=torch.long)
           for name, fill in (("input_ids", pad_token_id), ("labels", IGNORE_INDEX), ("attention_mask", 0))}
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        out["input_ids"][row, span] = item["input_ids"]
        out["labels"][row, span] = item["labels"] if "labels" in item else IGNORE_INDEX
        out["attention_mask"][row, span] = 1
    return out


__all__ = ["IGNORE_INDEX", "IMAGE_PLACEHOLDER", "SHOWO", "TEMPLATES", "VICUNA_V1", "ChatTemplate", "TruncationCount",
           "build_tokenizer", "collate_conversations", "encode_conversation", "get_template"]
