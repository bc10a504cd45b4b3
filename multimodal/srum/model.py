"""SrumModel: BAGEL-MoT as a zoo model, with batched text-to-image and image-understanding APIs.

``generate_image(prompts)`` runs BAGEL's ``InterleaveInferencer`` text-to-image path
(ByteDance-Seed/Bagel:inferencer.py): a text block with the prompt, then Euler sampling of a latent
image block with text CFG against the context without the prompt; with ``think=True`` the model first
writes a plan after the generation think system prompt, greedily, and the image follows the plan.
``understand(images, prompts)`` builds ``[think system prompt] + ViT image + prompt`` and decodes greedily
from ``<|im_start|>``. Both take lists (one output per input) and run on any device.

The model is also a ``zoo.tools.VQATool`` (``answer``, ``caption``), so SRUM's self-judge is the model itself.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Sequence

import torch

from zoo.errors import ConfigError
from zoo.model import ZooModel, inference
from zoo.models.bagel import BagelMixin, to_pil

logger = logging.getLogger("zoo.srum")

TEMPLATES = Path(__file__).with_name("templates")

__all__ = ["SrumModel", "read_template", "tiny_tokenizer", "TINY_TOKENIZER_TEXTS"]


@functools.lru_cache(maxsize=None)
def read_template(name: str) -> str:
    """A prompt template of this family (``templates/<name>``), exactly as stored (no newline added)."""
    path = TEMPLATES / name
    if not path.is_file():
        raise ConfigError(f"no SRUM template {name!r} in {TEMPLATES}")
    return path.read_text(encoding="utf-8")


# Texts the tiny byte-level tokenizer is trained on: the templates and shapes-world words, so prompts,
# judge answers and numbers encode in few tokens. Any string still encodes (byte-level BPE).
TINY_TOKENIZER_TEXTS = (
    "a red circle and a blue square. two green triangles. a yellow star on the left of a purple ring. "
    "an orange square above a cyan circle. three pink stars. a striped red circle. a dotted blue square. "
    "white black gray brown left right above below on top of next to one two three four five objects "
    "Score: 0.95 Score: -0.7 Score: 0.2 Score: 1.0 Score: 0.5 Score: -1.0 Score: 0.0 Identified Object: "
    "Region ID: 1 Region ID: 2 Region ID: 3 Bounding Box: [0, 0, 64, 64] Reason: "
    "<think> </think> yes no The image shows",
)


def tiny_tokenizer(special_tokens: dict, vocab_size: int = 1024):
    """The deterministic byte-level BPE tokenizer of the ``tiny`` size (``zoo.text.build_tokenizer``)."""
    from zoo.text import build_tokenizer

    texts = list(TINY_TOKENIZER_TEXTS) + [read_template(n) for n in (
        "hybrid_region.txt", "global_layout.txt", "vlm_think_system.txt", "gen_think_system.txt")]
    return build_tokenizer(texts, special_tokens=list(special_tokens.values()), kind="bpe", vocab_size=vocab_size)


class SrumModel(ZooModel, BagelMixin):
    """BAGEL-7B-MoT (or a smaller size) with SRUM's inference settings; config keys in ``builder.py``."""

    family = "srum"

    def __init__(self, config: dict):
        ZooModel.__init__(self, config)
        self.init_bagel(self.config)

    def forward(self, packed, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor | None = None) -> dict:
        """The training forward (``BagelMixin.flow_forward``): velocities at the latent tokens of ``packed``."""
        return self.flow_forward(packed, x0, timesteps, noise=noise)

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer(self):
        """The text tokenizer: from ``config.tokenizer.json`` (saved with the model), a Hub repo, or the tiny
        default (built once and then stored in the config so it travels with the weights)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
            self._check_tokenizer(self._tokenizer)
        return self._tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        """Use ``tokenizer`` and store its JSON in the config (saved with ``save_pretrained``)."""
        self._check_tokenizer(tokenizer)
        self._tokenizer = tokenizer
        self.config["tokenizer"] = {"repo_id": None, "revision": None, "json": tokenizer.backend_tokenizer.to_str()}
        self.__dict__.pop("_special_ids", None)

    def _load_tokenizer(self):
        spec = self.config.get("tokenizer") or {}
        if spec.get("json"):
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spec["json"]))
        if spec.get("repo_id") or spec.get("path"):
            from zoo.multimodal.srum.loader import load_tokenizer

            return load_tokenizer(spec)
        if self.config.get("size") == "tiny" or int(self.llm_config.vocab_size) <= 4096:
            tokenizer = tiny_tokenizer(self.config["special_tokens"], int(self.llm_config.vocab_size))
            self.config["tokenizer"] = {"repo_id": None, "revision": None, "json": tokenizer.backend_tokenizer.to_str()}
            return tokenizer
        raise ConfigError("This SRUM model has no tokenizer: set tokenizer.repo_id (a Hub repo with BAGEL's "
                          "tokenizer files, e.g. ByteDance-Seed/BAGEL-7B-MoT) or load it with zoo.load(card).")

    def _check_tokenizer(self, tokenizer) -> None:
        missing = [t for t in self.config["special_tokens"].values() if tokenizer.convert_tokens_to_ids(t) is None
                   or tokenizer.convert_tokens_to_ids(t) == tokenizer.unk_token_id]
        if missing:
            raise ConfigError(f"the tokenizer lacks BAGEL's special tokens {missing}")
        if len(tokenizer) > int(self.llm_config.vocab_size):
            raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary "
                              f"({self.llm_config.vocab_size})")

    @functools.cached_property
    def _special_ids(self) -> dict:
        tok = self.tokenizer
        return {k: int(tok.convert_tokens_to_ids(v)) for k, v in self.config["special_tokens"].items()}

    @property
    def special_ids(self) -> dict:
        """Ids of ``bos`` (``<|im_start|>``), ``eos`` (``<|im_end|>``), ``start_of_image``, ``end_of_image``."""
        return self._special_ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added (BAGEL's ``tokenizer.encode``)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode_text(self, ids: Sequence[int]) -> str:
        """Text of generated ids, cut at the first ``<|im_end|>`` (as BAGEL's ``chat``/``gen_text``)."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        return text.split(self.config["special_tokens"]["eos"])[0]

    # ------------------------------------------------------------------ checks
    def _check_prompts(self, prompts: Sequence[str], what: str = "prompt") -> None:
        limit = int(self.llm_config.max_position_embeddings)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ConfigError(f"{what} {i} is a {type(prompt).__name__}, not a string")
            if not prompt.strip():
                raise ConfigError(f"{what} {i} is empty; give the text to condition on")
            n = len(self.encode_text(prompt))
            if n + 2 > limit:
                raise ConfigError(f"{what} {i} has {n} tokens; this model takes at most {limit - 2} "
                                  f"(max_position_embeddings {limit}); shorten it")

    def _image_hw(self, image_size) -> tuple[int, int]:
        size = image_size if image_size is not None else self.config["image_size"]
        if isinstance(size, int):
            size = (size, size)
        height, width = int(size[0]), int(size[1])
        self.latent_grid(height, width)  # raises ImageInputError on a bad size
        return height, width

    # ------------------------------------------------------------------ text -> image
    @inference
    def generate_image(self, prompt: str | Sequence[str], *, think: bool = False, cfg_text_scale: float = 4.0,
                       cfg_img_scale: float = 1.0, cfg_interval: tuple[float, float] = (0.4, 1.0),
                       timestep_shift: float = 3.0, num_timesteps: int = 50, cfg_renorm_min: float = 0.0,
                       cfg_renorm_type: str = "global", image_size=None, max_think_token_n: int = 1000,
                       seed: int | None = None, generator: torch.Generator | None = None,
                       return_think: bool = False):
        """Images for ``prompt`` (a string, or a list for a batch) with BAGEL's T2I settings.

        Defaults are SRUM's self-generation settings (WayneJin0918/SRUM:srum_data_infer/t2i.py: CFG 4.0 in
        ``(0.4, 1.0]``, shift 3.0, 50 grid points, global renorm). ``cfg_img_scale`` is accepted for BAGEL
        parity and has no effect without an input image. ``image_size``: ``(H, W)`` pixels (default the
        config's), multiples of 16. ``think``: plan first (greedy, at most ``max_think_token_n`` tokens
        counting the start token, as BAGEL). ``seed`` or ``generator`` fix the initial noise (per image,
        in prompt order). Returns a PIL image (a list for a list), and the plans when ``return_think``.
        Raises ConfigError for empty or too long prompts, ImageInputError for a bad size.
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise ConfigError("generate_image: no prompts given")
        self._check_prompts(prompts)
        if float(cfg_img_scale) != 1.0:
            logger.info("generate_image: cfg_img_scale=%s has no effect without an input image", cfg_img_scale)
        height, width = self._image_hw(image_size)
        hw = self.latent_grid(height, width)
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        batch = len(prompts)
        context = self.new_context(batch)
        thoughts = None
        if think:
            system = read_template("gen_think_system.txt")
            self.add_text(context, [system] * batch)
        uncond = context.copy()
        self.add_text(context, prompts)
        if think:
            ids = self.generate_text(context, max(int(max_think_token_n) - 1, 0))
            thoughts = [self.decode_text(t) for t in ids]
            self.add_text(context, [list(t) for t in ids])
        tokens = self.generate_latents(
            context, hw, cfg_text_context=uncond, cfg_text_scale=cfg_text_scale, cfg_interval=cfg_interval,
            timestep_shift=timestep_shift, num_timesteps=num_timesteps, cfg_renorm_min=cfg_renorm_min,
            cfg_renorm_type=cfg_renorm_type, generator=generator)
        images = self.decode_tokens(tokens, hw)
        pils = [_to_uint8_pil(img) for img in images]
        out = pils[0] if single else pils
        if return_think:
            return out, (thoughts[0] if single and thoughts else thoughts)
        return out

    # ------------------------------------------------------------------ image -> text
    def prepare_understanding_image(self, image) -> torch.Tensor:
        """An input image as the ViT sees it: ``[3, H, W]`` in [-1, 1] (BAGEL: VAE-transform resize first)."""
        pil = to_pil(image)
        if self.config.get("understand_resize_by_vae_transform", True):
            pil = self.vae_transform().resize(pil)
        return self.vit_transform()(pil)

    @inference
    def understand(self, image, prompt: str | Sequence[str], *, think: bool = False, max_new_tokens: int = 512,
                   do_sample: bool = False, temperature: float = 1.0, generator: torch.Generator | None = None):
        """Answer ``prompt`` about ``image`` (or lists of both, one answer each).

        Context: [VLM think system prompt if ``think``] + the image (ViT) + the prompt; then decoding from
        ``<|im_start|>`` (greedy unless ``do_sample``) until ``<|im_end|>`` or ``max_new_tokens``. Returns the
        text (a list for lists), think part included; BAGEL's ``max_think_token_n`` equals
        ``max_new_tokens + 1`` (it counts the start token).
        """
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        images = [image] if single else list(image)
        if len(images) != len(prompts):
            raise ConfigError(f"understand: {len(images)} images for {len(prompts)} prompts")
        if not prompts:
            raise ConfigError("understand: no prompts given")
        self._check_prompts(prompts)
        tensors = [self.prepare_understanding_image(im) for im in images]
        context = self.new_context(len(prompts))
        if think:
            self.add_text(context, [read_template("vlm_think_system.txt")] * len(prompts))
        self.add_vit_images(context, tensors)
        self.add_text(context, prompts)
        ids = self.generate_text(context, max_new_tokens, do_sample=do_sample, temperature=temperature,
                                 generator=generator)
        texts = [self.decode_text(t) for t in ids]
        return texts[0] if single else texts

    # ------------------------------------------------------------------ VQATool protocol
    @property
    def tool_id(self) -> str:
        """A stable id of these weights for ``zoo.tools.CallCache`` (card/path, else a weight digest)."""
        name = getattr(self, "name_or_path", None) or self.card_name
        if name:
            return f"srum:{name}"
        digest = hashlib.sha256()
        for key, value in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().numpy().tobytes())
        return f"srum:{digest.hexdigest()[:16]}"

    def answer(self, image, question: str, **settings) -> str:
        """``understand(image, question, **settings)`` (``zoo.tools.VQATool``)."""
        return self.understand(image, question, **settings)

    def caption(self, image, **settings) -> str:
        return self.understand(image, self.config.get("caption_prompt") or "Describe this image.", **settings)


def _to_uint8_pil(image: torch.Tensor):
    """``[3, H, W]`` in [0, 1] -> PIL, truncating ``x * 255`` to uint8 as BAGEL's ``decode_image``."""
    from PIL import Image

    array = (image * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)

