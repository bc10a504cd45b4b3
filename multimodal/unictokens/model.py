"""The UniCTokens model: a Show-o base with (optionally) one concept's unified tokens.

State-dict layout:

* a base (no concept, or a concept on a base built in code): Show-o's keys exactly,
  ``showo.model.embed_tokens.weight``, ``showo.model.layers.{i}.self_attn.{q_proj,k_proj,v_proj,dense}.*``,
  ``showo.model.layers.{i}.mlp.{fc1,fc2}.*``, ``showo.model.layers.{i}.input_layernorm.*``,
  ``showo.model.final_layernorm.*``, ``showo.lm_head.{weight,bias}`` (with a concept, the embedding and
  head have the concept rows inserted before the image rows, as the official scripts leave them),
  plus the MAGVIT-v2 tokenizer under ``vq_model.``;
* an adapter (``config["base"]`` names the base): only ``concept.embed [N, D]``,
  ``concept.lm_head_weight [N, D]``, ``concept.lm_head_bias [N]`` (the rows of ``<name>, <token_0>
  ...``, as the official per-concept files hold them) and LoRA weights if any. ``zoo.load`` of an
  adapter loads its base and applies the rows.
"""
from __future__ import annotations

import copy
import logging
import re
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F

from zoo.errors import CheckpointKeysError, ConfigError, ImageInputError
from zoo.model import ZooModel, inference
from zoo.models.magvitv2 import MAGVITv2
from zoo.models.showo import (
    IGNORE_INDEX, ShowoVocab, add_showo_tokens, build_phi, maskgit_generate, mmu_attention_mask, mmu_prefix,
    t2i_attention_mask, t2i_sequences, top_k_logits,
)
from zoo.multimodal.unictokens.concept_tokens import (
    VocabLayout, insert_rows, read_rows, set_trainable_rows, write_rows,
)

logger = logging.getLogger("zoo.unictokens")

ADAPTER_KEYS = ("concept.embed", "concept.lm_head_weight", "concept.lm_head_bias")
_STRUCTURE_KEYS = ("llm", "llm_vocab_size", "codebook_size", "num_vq_tokens", "image_size", "max_text_len", "vq",
                   "tokenizer")


def concept_token_strings(name: str, num_tokens: int) -> list[str]:
    """``["<name>", "<token_0>", ..., "<token_{num_tokens-1}>"]`` in row order."""
    return [f"<{name}>"] + [f"<token_{i}>" for i in range(num_tokens)]


def build_text_tokenizer(spec: dict):
    """The LLM's text tokenizer before Show-o's specials: from a Hub repo (``repo_id``) or, for the
    word-level shapes vocabularies, from ``words`` (built offline with :func:`zoo.text.build_tokenizer`)."""
    words = list(spec.get("words") or [])
    if words:
        from zoo.text import build_tokenizer

        return build_tokenizer(words, kind="wordlevel", vocab_size=len(words) + 2, pad_token="<|endoftext|>",
                               bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>",
                               model_max_length=4096)
    repo = spec.get("repo_id")
    if not repo:
        raise ConfigError("tokenizer: set tokenizer.repo_id (e.g. microsoft/phi-1_5) or tokenizer.words.")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(repo, revision=spec.get("revision"), padding_side="left")
    except OSError as err:
        from zoo.errors import WeightsNotAvailableError

        raise WeightsNotAvailableError(f"Cannot load the text tokenizer {repo!r} ({err}); it is downloaded on first use "
                                       "(network or a filled HF cache needed).") from err


class UniCTokensModel(ZooModel):
    """Show-o (Phi LLM ``showo`` + MAGVIT-v2 ``vq_model`` + text tokenizer) with an optional concept.

    Build with :meth:`from_config` (``zoo.load`` does). Public API: :meth:`generate_image`,
    :meth:`answer`, :meth:`recognize`, :meth:`encode_images`, :meth:`decode_codes`, the
    :attr:`tokenizer`, :attr:`vocab` and concept helpers (:meth:`insert_concept`,
    :meth:`concept_rows`, :meth:`set_concept_rows`).
    """

    family = "unictokens"

    def __init__(self, config: dict, *, showo=None, vq_model=None):
        super().__init__(config)
        config = self.config
        self.base_vocab = ShowoVocab(int(config["llm_vocab_size"]), int(config["codebook_size"]))
        if 2 ** int(config["vq"]["codebook_dim"]) != self.base_vocab.codebook_size:
            raise ConfigError(f"codebook_size={config['codebook_size']} but the image tokenizer has "
                              f"2**{config['vq']['codebook_dim']} codes.")
        self.showo = showo if showo is not None else build_phi(config["llm"], self.base_vocab.size)
        self.vq_model = vq_model if vq_model is not None else MAGVITv2(config["vq"])
        self._tokenizer = None
        self._lora = False
        concept = config.get("concept") or {}
        self._num_rows = 0
        if concept.get("name"):
            self._install_concept(concept)
        if int((config.get("lora") or {}).get("r") or 0) > 0:
            self._install_lora(config["lora"])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: dict) -> "UniCTokensModel":
        """Random-init model, or (``config["base"]`` set) the named base with the concept applied."""
        base_name = config.get("base")
        if not base_name:
            return cls(config)
        from zoo.api import load

        base = load(base_name)
        if not isinstance(base, UniCTokensModel):
            raise ConfigError(f"base {base_name!r} is a {getattr(base, 'family', type(base).__name__)} model, not a "
                              "UniCTokens/Show-o base.")
        if base.num_concept_rows:
            raise ConfigError(f"base {base_name!r} already carries the concept {base.concept_name!r}; use a plain "
                              "Show-o base.")
        differ = [k for k in _STRUCTURE_KEYS if json_equal(base.config.get(k), config.get(k)) is False]
        if differ:
            raise ConfigError(f"the concept was made for a base whose {', '.join(differ)} differ from {base_name!r}'s; "
                              "load it on the base it was trained on.")
        merged = copy.deepcopy(config)
        for key in _STRUCTURE_KEYS:
            merged[key] = copy.deepcopy(base.config[key])
        return cls(merged, showo=base.showo, vq_model=base.vq_model)

    def _install_concept(self, concept: dict) -> None:
        tokens = [int(n) for n in concept.get("tokens") or []]
        if any(n < 0 for n in tokens):
            raise ConfigError(f"concept.tokens must be non-negative counts, got {tokens}.")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(concept["name"])):
            raise ConfigError(f"concept.name {concept['name']!r} must be letters, digits, '_' or '-' (it becomes <name>).")
        n = 1 + sum(tokens)
        layout = VocabLayout(self.base_vocab.image_offset, self.base_vocab.codebook_size + 1)
        insert_rows(self.showo, layout, n)
        self._num_rows = n
        self.set_trainable(concept.get("trainable"))

    def _install_lora(self, lora: dict) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=int(lora["r"]), lora_alpha=int(lora.get("alpha", 16)), lora_dropout=float(lora.get("dropout", 0.0)),
                         target_modules=list(lora.get("target_modules") or []))
        inject_adapter_in_model(cfg, self.showo)
        self._lora = True

    # ------------------------------------------------------------------ properties
    @property
    def is_adapter(self) -> bool:
        return bool(self.config.get("base")) and self._num_rows > 0

    @property
    def num_concept_rows(self) -> int:
        return self._num_rows

    @property
    def concept_name(self) -> str:
        return str((self.config.get("concept") or {}).get("name") or "")

    @property
    def concept(self) -> dict:
        return dict(self.config.get("concept") or {})

    @property
    def vocab(self) -> ShowoVocab:
        return self.base_vocab.with_concepts(self._num_rows)

    @property
    def concept_ids(self) -> list[int]:
        start = self.base_vocab.concept_offset
        return list(range(start, start + self._num_rows))

    @property
    def num_vq_tokens(self) -> int:
        return int(self.config["num_vq_tokens"])

    @property
    def max_text_len(self) -> int:
        return int(self.config["max_text_len"])

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def tokenizer(self):
        """The text tokenizer with Show-o's specials and this model's concept tokens (built on first use)."""
        if self._tokenizer is None:
            tokenizer = build_text_tokenizer(self.config["tokenizer"])
            llm = add_showo_tokens(tokenizer)
            if llm != self.base_vocab.llm_vocab_size:
                raise ConfigError(f"the text tokenizer has {llm} tokens but llm_vocab_size is "
                                  f"{self.base_vocab.llm_vocab_size}.")
            if self._num_rows:
                names = concept_token_strings(self.concept_name, self._num_rows - 1)
                tokenizer.add_tokens(names)
                ids = tokenizer.convert_tokens_to_ids(names)
                if ids != self.concept_ids:
                    raise ConfigError(f"concept tokens got ids {ids[:3]}..., expected {self.concept_ids[:3]}... "
                                      "(the tokenizer already had some of them).")
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def bos_id(self) -> int:
        return int(self.tokenizer.bos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def image_transform(self):
        """Resize the short side to ``image_size`` (bicubic), centre crop, to [-1, 1] (pdata.py ``image_transform``
        without the random flip)."""
        from zoo.image import ImageTransform

        return ImageTransform.minus_one_one(resize=self.image_size, crop=self.image_size, interpolation="bicubic")

    # ------------------------------------------------------------------ concept rows
    def insert_concept(self, name: str, class_word: str = "", tokens=(16,), *, kind: str = "object",
                       trainable=None) -> list[int]:
        """Insert ``<name>`` + ``sum(tokens)`` ``<token_i>`` rows into a model without a concept; returns
        their vocabulary ids. The rows start as the first image codes' rows (the official layout)."""
        if self._num_rows:
            raise ConfigError(f"this model already carries the concept {self.concept_name!r}.")
        concept = {"name": name, "class_word": class_word, "tokens": [int(t) for t in tokens],
                   "trainable": trainable, "kind": kind}
        self._install_concept(concept)
        self.config["concept"] = concept
        self._tokenizer = None
        return self.concept_ids

    def set_trainable(self, rows=None) -> None:
        """Concept rows that train (indices: 0 = ``<name>``, i + 1 = ``<token_i>``; None = all, [] = none)."""
        if not self._num_rows:
            raise ConfigError("the model has no concept rows; insert a concept first.")
        rows = list(range(self._num_rows)) if rows is None else [int(r) for r in rows]
        bad = [r for r in rows if not 0 <= r < self._num_rows]
        if bad:
            raise ConfigError(f"trainable concept rows {bad} are outside 0..{self._num_rows - 1}.")
        set_trainable_rows(self.showo, [self.concept_ids[r] for r in rows])
        if isinstance(self.config.get("concept"), dict):
            self.config["concept"]["trainable"] = None if len(rows) == self._num_rows else rows
        for name, param in self.showo.named_parameters():
            param.requires_grad_("row_" in name.rsplit(".", 1)[-1] or (self._lora and "lora_" in name))
        for param in self.vq_model.parameters():
            param.requires_grad_(False)

    def concept_rows(self) -> dict[str, torch.Tensor]:
        """The concept rows (official layout): ``embed [N, D]``, ``lm_head_weight [N, D]``, ``lm_head_bias [N]``."""
        return read_rows(self.showo, self.concept_ids)

    def set_concept_rows(self, rows: dict[str, torch.Tensor | None], indices=None) -> None:
        """Write (some of) the concept rows; ``indices`` selects rows (default all), values are ``[k, D]``/``[k]``."""
        indices = list(range(self._num_rows)) if indices is None else [int(i) for i in indices]
        ids = [self.concept_ids[i] for i in indices]
        write_rows(self.showo, ids, embed=rows.get("embed"), lm_head_weight=rows.get("lm_head_weight"),
                   lm_head_bias=rows.get("lm_head_bias"))

    # ------------------------------------------------------------------ state dict (adapter layout)
    def _lora_state(self) -> dict[str, torch.Tensor]:
        return {f"showo.{k}": v for k, v in self.showo.state_dict().items() if "lora_" in k}

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        if not self.is_adapter:
            return super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        out = OrderedDict() if destination is None else destination
        rows = self.concept_rows()
        for key, part in zip(ADAPTER_KEYS, ("embed", "lm_head_weight", "lm_head_bias")):
            out[prefix + key] = rows[part]
        for key, value in self._lora_state().items():
            out[prefix + key] = value if keep_vars else value.detach()
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not self.is_adapter:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = [(k, tuple(own[k].shape), tuple(state_dict[k].shape)) for k in own
                      if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
        if strict and (missing or unexpected or mismatched):
            raise CheckpointKeysError("concept adapter", missing, unexpected, mismatched)
        rows = {part: state_dict[key] for key, part in zip(ADAPTER_KEYS, ("embed", "lm_head_weight", "lm_head_bias"))
                if key in state_dict}
        self.set_concept_rows(rows)
        lora = dict(self.showo.named_parameters())
        with torch.no_grad():
            for key, value in state_dict.items():
                if key.startswith("showo.") and "lora_" in key:
                    lora[key[len("showo."):]].copy_(value)
        return torch.nn.modules.module._IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ images
    def prepare_images(self, images) -> torch.Tensor:
        """Paths / PIL / arrays / tensors -> ``[B, 3, S, S]`` in [-1, 1] on the model's device."""
        from zoo.image import prepare_images

        if isinstance(images, torch.Tensor) and images.dim() == 4:
            if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
                raise ImageInputError(f"image tensors must be [B, 3, {self.image_size}, {self.image_size}] in [-1, 1], "
                                      f"got {tuple(images.shape)}; pass PIL images or paths to resize them.")
            return images.to(self.device, torch.float32)
        return prepare_images(images, self.image_transform()).to(self.device)

    @inference
    def encode_images(self, images) -> torch.Tensor:
        """Images -> MAGVIT-v2 codes ``LongTensor[B, num_vq_tokens]`` in ``[0, codebook_size)``."""
        codes = self.vq_model.get_code(self.prepare_images(images))
        if codes.shape[1] != self.num_vq_tokens:
            raise ConfigError(f"the image tokenizer gave {codes.shape[1]} codes per image, the config says "
                              f"num_vq_tokens={self.num_vq_tokens}.")
        return codes

    @inference
    def decode_codes(self, codes: torch.Tensor) -> list:
        """Codes ``[B, N]`` -> PIL RGB images (``(x + 1) / 2`` clamped, times 255, truncated to uint8)."""
        from PIL import Image

        codes = codes.clamp(0, self.base_vocab.codebook_size - 1)
        pixels = self.vq_model.decode_code(codes.to(self.device))
        array = (torch.clamp((pixels + 1.0) / 2.0, 0.0, 1.0) * 255.0).permute(0, 2, 3, 1).cpu().numpy().astype("uint8")
        return [Image.fromarray(a) for a in array]

    # ------------------------------------------------------------------ forward pieces
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, vq: bool = False,
                quantize: bool = True):
        """Logits ``[B, L, V]`` of ids ``[B, L]`` under a keep-mask ``[B, 1, L, L]`` (None = causal); with
        ``vq=True``, the image tokenizer's reconstruction pass on pixels (training the tokenizer)."""
        if vq:
            return self.vq_model(input_ids, quantize=quantize)
        return self.logits(input_ids, attention_mask)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``[B, L]`` ids and a keep-mask ``[B, 1, L, L]`` (or None = causal) -> logits ``[B, L, V]``."""
        return self.showo(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def text_ids(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def concept_prompt(self, prompt: str, concept: str | None = None) -> str:
        """Replace ``<sks>`` / ``<name>`` in a prompt by the concept's generation tokens + ``<name>``
        (``<token_0>..<token_{k-1}> <name>``, k = the first two stages' tokens), as the official eval
        scripts' ``--inverse_prompt`` does."""
        if concept is None:
            return prompt
        self._check_concept(concept)
        tokens = self.concept["tokens"]
        k = sum(tokens[:2])
        phrase = "".join(f"<token_{i}>" for i in range(k)) + (" " if k else "") + f"<{concept}>"
        return prompt.replace("<sks>", phrase) if "<sks>" in prompt else prompt.replace(f"<{concept}>", phrase)

    def system_prefix(self, end: str = ".") -> str:
        """``"<name> is <token_0>...<token_15>."`` (stage 3 adds the stage-3 tokens), the MMU system prefix
        (pdata.py ``system_personalized_prompt``; evaluation ends it with ``".\\n"``)."""
        tokens = list(self.concept["tokens"]) + [0, 0, 0]
        first, second, third = tokens[0], tokens[1], tokens[2]
        indices = list(range(first)) + list(range(first + second, first + second + third))
        return f"<{self.concept_name}> is " + "".join(f"<token_{i}>" for i in indices) + (end if indices else "")

    def _check_concept(self, concept: str) -> None:
        if concept != self.concept_name:
            have = f"the concept <{self.concept_name}>" if self.concept_name else "no concept"
            raise ConfigError(f"the model carries {have}, not <{concept}>.")

    # ------------------------------------------------------------------ inference API
    @inference
    def generate_image(self, prompt: str | list[str], concept: str | None = None, steps: int = 50,
                       guidance: float = 5.0, temperature: float = 1.0, num_images: int = 1, seed: int | None = None,
                       generator: torch.Generator | None = None, return_steps=(), return_codes: bool = False):
        """Text-to-image by MaskGIT decoding (Show-o's ``t2i_generate``).

        prompt: text, or a list (one image each); ``<sks>`` or ``<name>`` becomes the concept's
        tokens when ``concept`` is given. steps: decoding steps (official eval: 50). guidance: CFG
        scale g, logits ``(1 + g) cond - g uncond`` (0 = off). seed/generator: sampling randomness.
        return_steps: steps whose full predictions to return as codes ``{step: LongTensor[B, N]}``
        (the last step is always included). Returns a list of PIL images (or the codes).
        Raises ConfigError for no prompts, ``steps < 1`` or ``num_images < 1``.
        """
        if int(steps) < 1:
            raise ConfigError(f"generate_image: steps must be >= 1 (MaskGIT decoding steps), got {steps}")
        if isinstance(prompt, str) and int(num_images) < 1:
            raise ConfigError(f"generate_image: num_images must be >= 1, got {num_images}")
        prompts = [prompt] * num_images if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ConfigError("generate_image: no prompts given; pass a string or a non-empty list")
        texts = [self.concept_prompt(p, concept) for p in prompts]
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        batch, n = len(texts), self.num_vq_tokens
        vocab = self.vocab
        masked = torch.full((batch, n), vocab.mask_id, dtype=torch.long, device=self.device)
        input_ids = t2i_sequences(self.text_ids(texts), masked, vocab, self.max_text_len, self.bos_id, self.eos_id)
        uncond = None
        if guidance > 0:
            uncond = t2i_sequences([[] for _ in texts], masked, vocab, self.max_text_len, self.bos_id, self.eos_id)
            mask = t2i_attention_mask(torch.cat([input_ids, uncond]), vocab)
        else:
            mask = t2i_attention_mask(input_ids, vocab)
        out = maskgit_generate(self.logits, input_ids, mask, vocab, n, self.max_text_len, uncond_input_ids=uncond,
                               guidance_scale=guidance, timesteps=steps, temperature=temperature, generator=generator,
                               return_steps=return_steps)
        if return_steps or return_codes:
            return out
        return self.decode_codes(out)

    def mmu_input(self, image_codes: torch.Tensor, question: str, concept: str | None = None) -> torch.Tensor:
        """``<|mmu|> <|soi|> codes <|eoi|> <|sot|> USER: {prefix}{question} ASSISTANT:`` (eval_p_mmu.py)."""
        if concept is not None:
            self._check_concept(concept)
            question = self.system_prefix(".\n") + question
        text = self.text_ids([f"USER: {question.replace('<image>', '').strip()} ASSISTANT:"])[0]
        vocab = self.vocab
        prefix = mmu_prefix(image_codes + vocab.image_offset, vocab)
        tail = torch.tensor([[self.bos_id] + text] * prefix.shape[0], dtype=torch.long, device=prefix.device)
        return torch.cat([prefix, tail], dim=1)

    @inference
    def answer(self, image, question: str, concept: str | None = None, max_new_tokens: int = 100,
               top_k: int | None = 1, temperature: float = 1.0, generator: torch.Generator | None = None) -> str:
        """Answer a question about one image (Show-o's ``mmu_generate``, greedy as the official eval's top_k=1).

        With ``concept``, the concept's system prefix (``"<name> is <token_0>...<token_15>.\\n"``) goes
        before the question. Decoding uses the KV cache: the prefix under the MMU mask, then one token
        at a time (each sees everything before it), until ``<|eot|>`` or ``max_new_tokens``.
        """
        codes = self.encode_images(_one_image(image))
        input_ids = self.mmu_input(codes, question, concept)
        tokens = self._decode(input_ids, max_new_tokens, top_k, temperature, generator)
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def _decode(self, input_ids, max_new_tokens, top_k, temperature, generator) -> list[int]:
        mask = mmu_attention_mask(input_ids, self.vocab)
        out = self.showo(input_ids=input_ids, attention_mask=mask, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
        result = []
        for _ in range(max_new_tokens):
            logits = top_k_logits(logits / temperature, top_k)
            token = torch.multinomial(F.softmax(logits.float(), dim=-1), 1, generator=generator)
            result.append(int(token))
            if int(token) == self.eos_id:
                break
            out = self.showo(input_ids=token, cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1]
        return result

    @inference
    def recognize(self, image, concept: str | None, question: str | None = None) -> dict:
        """Is the concept in the image? ``{"answer": "yes"|"no", "probability": P(yes)}``.

        Asks ``question`` (default ``"Is <name> in the image?"``; with the concept's system prefix)
        and compares the next-token probabilities of the answer's first token: "Yes"/"yes" against
        "No"/"no" (each side summed over the spellings the tokenizer has), so ``P(yes)`` is in
        [0, 1]. ``concept=None`` asks a base model ``question`` without a prefix (e.g. with the
        class word); raises ConfigError when neither is given or the concept is not the model's.
        """
        if concept is None and not question:
            raise ConfigError("recognize without a concept needs the question to ask (e.g. 'Is there a dog in the image?').")
        if concept is not None:
            self._check_concept(concept)
        codes = self.encode_images(_one_image(image))
        input_ids = self.mmu_input(codes, question or f"Is <{concept}> in the image?", concept)
        logits = self.logits(input_ids, mmu_attention_mask(input_ids, self.vocab))[0, -1].float()
        probs = logits.softmax(-1)
        p_yes = sum(float(probs[i]) for i in self._word_ids(("Yes", "yes")))
        p_no = sum(float(probs[i]) for i in self._word_ids(("No", "no")))
        total = p_yes + p_no
        p = p_yes / total if total > 0 else 0.5
        return {"answer": "yes" if p >= 0.5 else "no", "probability": p}

    def _word_ids(self, words) -> list[int]:
        ids = set()
        for word in words:
            for text in (word, " " + word):
                pieces = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                if pieces and pieces[0] != self.tokenizer.unk_token_id:
                    ids.add(int(pieces[0]))
        return sorted(ids)


class ConceptAdapter(ZooModel):
    """A concept's rows and the name of the base they apply to, without the base (what
    ``zoo convert unictokens saves/<concept>/<task> OUT --base NAME`` writes). ``zoo.load`` of the
    saved folder gives the full :class:`UniCTokensModel`. Buffers ``concept.embed [N, D]``,
    ``concept.lm_head_weight [N, D]``, ``concept.lm_head_bias [N]``."""

    family = "unictokens"

    def __init__(self, config: dict, rows: dict[str, torch.Tensor]):
        super().__init__(config)
        self.concept = torch.nn.Module()
        for part in ("embed", "lm_head_weight", "lm_head_bias"):
            self.concept.register_buffer(part, rows[part].detach().to(torch.float32).clone())


def _one_image(image):
    """One image as the batch ``encode_images`` takes (a ``[1, 3, S, S]`` tensor passes as it is)."""
    if isinstance(image, torch.Tensor) and image.dim() == 4:
        if image.shape[0] != 1:
            raise ImageInputError(f"one image expected, got a batch of {image.shape[0]}.")
        return image
    if isinstance(image, (list, tuple)):
        raise ImageInputError("one image expected, got a list; call once per image.")
    return [image]


def json_equal(a: Any, b: Any) -> bool | None:
    """True/False when both are set and (JSON-)equal or not; None when either is missing."""
    if a is None or b is None:
        return None
    import json

    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


__all__ = ["UniCTokensModel", "ConceptAdapter", "build_text_tokenizer", "concept_token_strings", "ADAPTER_KEYS", "IGNORE_INDEX"]
