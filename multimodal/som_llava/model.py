"""The SoM-LLaVA model: transformers' ``LlavaForConditionalGeneration`` behind the zoo API.

``model.llava`` is a plain ``LlavaForConditionalGeneration`` (CLIP vision tower, ``mlp2x_gelu``
projector, Llama/Vicuna language model) whose attention runs through ``zoo.nn.attention``
(``attn_implementation="zoo"``). Its state-dict keys are transformers' (>= 4.52) names under
``llava.``; ``loader.py`` converts the original LLaVA and older transformers layouts to them.
"""
from __future__ import annotations

import logging

import torch

from zoo.errors import ConfigError
from zoo.model import ZooModel, inference

logger = logging.getLogger("zoo.som_llava")


def llava_config(config: dict):
    """transformers ``LlavaConfig`` of a SoM-LLaVA config (raises ConfigError on a bad argument)."""
    from transformers import LlavaConfig

    from zoo.multimodal.som_llava.builder import num_image_tokens

    if config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConfigError(f"mm_projector_type {config['mm_projector_type']!r} is not supported; SoM-LLaVA "
                          "(LLaVA-1.5) uses 'mlp2x_gelu'.")
    vision = {**config["vision_config"], "model_type": "clip_vision_model"}
    text = {**config["text_config"], "model_type": "llama"}
    if int(config["image_token_id"]) >= int(text["vocab_size"]):
        raise ConfigError(f"image_token_id {config['image_token_id']} is outside the vocabulary "
                          f"(text_config.vocab_size={text['vocab_size']}).")
    try:
        llava = LlavaConfig(
            vision_config=vision, text_config=text, image_token_index=int(config["image_token_id"]),
            image_seq_length=num_image_tokens(config), projector_hidden_act=config["projector_hidden_act"],
            vision_feature_layer=int(config["vision_feature_layer"]),
            vision_feature_select_strategy=config["vision_feature_select_strategy"],
            multimodal_projector_bias=True, tie_word_embeddings=bool(text.get("tie_word_embeddings", False)),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"SoM-LLaVA config is not a valid LlavaConfig: {err}") from err
    implementation = config.get("attn_implementation") or "zoo"
    if implementation == "zoo":
        from zoo.nn import register_transformers_attention

        register_transformers_attention()
    llava._attn_implementation = implementation
    return llava


class SomLlavaModel(ZooModel):
    """LLaVA-1.5 as SoM-LLaVA trains it; ``forward`` is ``LlavaForConditionalGeneration.forward``.

    Inputs: ``input_ids`` [B, L] int64 with ``num_image_tokens`` copies of ``image_token_id`` per
    image, ``pixel_values`` [B_images, 3, S, S] float (CLIP-normalised, ``S`` = vision image size),
    ``attention_mask`` [B, L] (1 = real token), optional ``labels`` [B, L] (-100 = no loss).
    Returns transformers' output (``logits`` [B, L, V], ``loss`` when labels are given).
    """

    family = "som-llava"

    def __init__(self, config: dict):
        super().__init__(config)
        from transformers import LlavaForConditionalGeneration

        self.llava = LlavaForConditionalGeneration(llava_config(self.config))
        self._tokenizer = None

    # ------------------------------------------------------------------ facts
    @property
    def image_size(self) -> int:
        return int(self.config["vision_config"]["image_size"])

    @property
    def num_image_tokens(self) -> int:
        from zoo.multimodal.som_llava.builder import num_image_tokens

        return num_image_tokens(self.config)

    @property
    def image_token_id(self) -> int:
        return int(self.config["image_token_id"])

    @property
    def pad_token_id(self) -> int:
        return int(self.config["text_config"]["pad_token_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["text_config"]["vocab_size"])

    # ------------------------------------------------------------------ parts
    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.llava.model.vision_tower

    @property
    def projector(self) -> torch.nn.Module:
        return self.llava.model.multi_modal_projector

    @property
    def language_model(self) -> torch.nn.Module:
        return self.llava.model.language_model

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, labels=None, **kwargs):
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.vision_tower.dtype)
        return self.llava(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                          labels=labels, **kwargs)

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self):
        """The model's tokenizer (a fast transformers tokenizer), loaded on first use.

        From ``config["tokenizer"]``: ``json`` (a ``tokenizers`` JSON string, e.g. a tiny tokenizer
        saved with the model) or ``repo_id``/``revision`` (downloaded with ``AutoTokenizer``; an
        original LLaVA repo's tokenizer gets ``<image>`` and ``<pad>`` added, as transformers' LLaVA
        conversion does). Raises ConfigError when the tokenizer's special ids disagree with the config.
        """
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def set_tokenizer(self, tokenizer, *, embed: bool = True) -> None:
        """Attach ``tokenizer``; with ``embed`` its JSON goes into the config (saved with the model)."""
        self._check_tokenizer(tokenizer)
        self._tokenizer = tokenizer
        if embed:
            specials = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
                        if getattr(tokenizer, name, None) is not None}
            extra = [t for t in tokenizer.all_special_tokens if t not in specials.values()]
            self.config["tokenizer"] = {"repo_id": None, "revision": None,
                                        "json": tokenizer.backend_tokenizer.to_str(),
                                        "special_tokens": {**specials, "extra_special_tokens": extra}}

    def _load_tokenizer(self):
        spec = self.config.get("tokenizer") or {}
        if spec.get("json"):
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            specials = dict(spec.get("special_tokens") or {})
            tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec["json"]), **specials,
                                                model_max_length=int(self.config.get("model_max_length", 2048)))
        elif spec.get("repo_id"):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(spec["repo_id"], revision=spec.get("revision"), use_fast=True)
            added = {}
            if "<image>" not in tokenizer.get_vocab():
                added["additional_special_tokens"] = ["<image>"]
            if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.unk_token:
                added["pad_token"] = "<pad>"
            if added:
                tokenizer.add_special_tokens(added)
        else:
            raise ConfigError("This SoM-LLaVA model has no tokenizer: set tokenizer.repo_id (a Hub repo with the "
                              "tokenizer files) or attach one with model.set_tokenizer(tok).")
        self._check_tokenizer(tokenizer)
        return tokenizer

    def _check_tokenizer(self, tokenizer) -> None:
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        problems = []
        if image_id != self.image_token_id:
            problems.append(f"<image> is id {image_id}, the config says image_token_id={self.image_token_id}")
        if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != self.pad_token_id:
            problems.append(f"the pad token is id {tokenizer.pad_token_id}, the config says "
                            f"text_config.pad_token_id={self.pad_token_id}")
        if len(tokenizer) > self.vocab_size:
            problems.append(f"it has {len(tokenizer)} tokens, the model's vocabulary {self.vocab_size}")
        if problems:
            raise ConfigError("Tokenizer and model disagree: " + "; ".join(problems) + ".")

    # ------------------------------------------------------------------ inputs
    @property
    def image_transform(self):
        """LLaVA-1.5's preprocessing: pad to a square with the mean colour (``image_aspect_ratio: pad``),
        resize to the tower's size (bicubic), centre crop, CLIP normalisation."""
        from zoo.image import ImageTransform

        size = self.image_size
        return ImageTransform(resize=size, crop=size, interpolation="bicubic",
                              pad_to_square=self.config.get("image_aspect_ratio") == "pad", fill="mean",
                              mean=tuple(self.config["image_mean"]), std=tuple(self.config["image_std"]))

    def preprocess_images(self, images) -> torch.Tensor:
        """Images (paths, PIL images of any mode, arrays) -> ``pixel_values`` [B, 3, S, S] float32."""
        from zoo.image import prepare_images

        return prepare_images(images, self.image_transform)

    def encode_prompts(self, prompts: list[str]) -> dict:
        """User prompts -> left-padded ``input_ids`` / ``attention_mask`` ending in ``ASSISTANT:``.

        A prompt without ``<image>`` gets ``<image>\\n`` in front (LLaVA's evaluation scripts do the
        same); a prompt with more than one raises ConfigError (one image per prompt).
        """
        from zoo.text import IMAGE_PLACEHOLDER, collate_conversations, encode_conversation

        items = []
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ConfigError(f"prompt {index} is a {type(prompt).__name__}, not text.")
            count = prompt.count(IMAGE_PLACEHOLDER)
            if count == 0:
                prompt = f"{IMAGE_PLACEHOLDER}\n{prompt}"
            elif count > 1:
                raise ConfigError(f"prompt {index} has {count} {IMAGE_PLACEHOLDER} placeholders; SoM-LLaVA takes one "
                                  "image per prompt.")
            items.append(encode_conversation(self.tokenizer, [{"from": "human", "value": prompt}],
                                             self.config["template"], image_tokens=self.num_image_tokens,
                                             add_generation_prompt=True))
        return collate_conversations(items, self.pad_token_id, padding_side="left")

    # ------------------------------------------------------------------ inference
    @inference
    def generate(self, images, prompts, *, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float | None = None, num_beams: int = 1, return_tokens: bool = False):
        """Answer ``prompts`` about ``images``: one image and prompt, or equal-length lists (batched).

        Greedy by default (``temperature=0``, as LLaVA's evaluations); ``temperature > 0`` samples.
        Returns the answer text (a list for list input); with ``return_tokens`` also the generated
        token ids (``LongTensor[B, T]``, padded with the pad id after the end of each answer).
        """
        single = not isinstance(prompts, (list, tuple))
        prompts = [prompts] if single else list(prompts)
        images = [images] if single or not isinstance(images, (list, tuple)) else list(images)
        if len(images) != len(prompts):
            raise ConfigError(f"generate got {len(images)} images and {len(prompts)} prompts; give one image per prompt.")
        if not prompts:
            return [] if not return_tokens else ([], torch.zeros(0, 0, dtype=torch.long))
        batch = self.encode_prompts(prompts)
        pixel_values = self.preprocess_images(images).to(self.device, self.vision_tower.dtype)
        tokens = self._generate_ids(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                                    pixel_values, max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p, num_beams=num_beams)
        texts = [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        out = texts[0] if single else texts
        return (out, tokens) if return_tokens else out

    def _generate_ids(self, input_ids, attention_mask, pixel_values, *, max_new_tokens: int, temperature: float = 0.0,
                      top_p: float | None = None, num_beams: int = 1) -> torch.Tensor:
        """The new token ids of ``llava.generate`` (KV cache on), ``<image>`` and ``<pad>`` never produced."""
        from transformers import GenerationConfig

        eos = self.config["text_config"].get("eos_token_id")
        settings = dict(max_new_tokens=int(max_new_tokens), num_beams=int(num_beams), do_sample=temperature > 0,
                        eos_token_id=eos, pad_token_id=self.pad_token_id, use_cache=True,
                        suppress_tokens=[self.image_token_id, self.pad_token_id])
        if temperature > 0:
            settings.update(temperature=float(temperature), top_p=top_p)
        output = self.llava.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                     generation_config=GenerationConfig(**settings))
        return output[:, input_ids.shape[1]:]

    def list_items(self, image, masks=None, *, proposer=None, instruction: str | None = None,
                   max_new_tokens: int = 256, return_tagged: bool = False, **tag_options):
        """Tag ``image`` (Set-of-Mark) and ask the model to list the tagged items one by one.

        ``masks`` (or a ``proposer``, e.g. ``zoo.tools.SamMaskProposer`` or the shapes world's
        ``ShapesMaskProposer``) give the regions; ``tag_options`` go to ``tags.tag_image``
        (``resize``, ``min_area``, ``font_size``). ``instruction`` defaults to the first of the
        release's 42 listing instructions. Returns ``[(tag label, text), ...]`` in the order the
        model listed them (labels the model invented are kept; look them up in the tagged image);
        with ``return_tagged`` also the :class:`~zoo.multimodal.som_llava.tags.TaggedImage`.
        """
        from zoo.multimodal.som_llava.data import instruction_pool
        from zoo.multimodal.som_llava.tags import tag_image
        from zoo.tools import parse_numbered_list

        tagged = tag_image(image, masks, proposer=proposer, **tag_options)
        answer = self.generate(tagged.image, instruction or instruction_pool()[0], max_new_tokens=max_new_tokens)
        items = [(str(number), text) for number, text in parse_numbered_list(answer, with_numbers=True)]
        return (items, tagged) if return_tagged else items

    def as_vqa_tool(self, *, short_answers: bool = True, **generate_kwargs):
        """A ``zoo.tools`` VQATool (``answer(image, question)``, ``caption(image)``) on this model.

        ``short_answers`` appends LLaVA-1.5's short-answer instruction ("Answer the question using
        a single word or phrase.", haotian-liu/LLaVA:docs/Evaluation.md), as its VQA and POPE
        evaluations do.
        """
        from zoo.tools import VLMTool

        question_format = "{question}\nAnswer the question using a single word or phrase." if short_answers \
            else "{question}"
        return VLMTool(self, question_format=question_format, name=self.card_name or "som-llava", **generate_kwargs)
