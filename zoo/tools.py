"""Tools that self-reward, auto-labelling and data-building pipelines call: LLMs, VQA models,
mask proposers; adapters for real models and endpoints; a disk cache; tolerant answer parsers.

Protocols (duck-typed, ``typing.Protocol``):

* :class:`LLMTool` - ``generate(prompt, **settings) -> str`` and ``generate_batch(prompts) -> list[str]``;
  a prompt is a string or chat messages ``[{"role": ..., "content": ...}]``.
* :class:`VQATool` - ``answer(image, question) -> str`` and ``caption(image) -> str``.
* :class:`MaskProposer` - ``propose(image) -> list[ProposedMask]`` (boolean ``H x W`` masks with a score).

Adapters: :class:`TransformersLLM` (any transformers causal LM and its tokenizer, its chat
template if it has one, or a ``zoo.text`` template), :class:`VLMTool` (any model with
``generate(image, prompt)``, e.g. a zoo VLM), :class:`OpenAIChatTool` (an OpenAI-compatible
``/v1/chat/completions`` endpoint, LLM and VQA), :class:`SamMaskProposer` (segment-anything's
``SamAutomaticMaskGenerator``; optional extra ``segment-anything``). Offline, the shapes-world
judge and masks of ``zoo.data.shapes.judge`` are the default VQA tool and mask proposer
(:func:`default_vqa`, :func:`default_mask_proposer`).

:class:`CallCache` wraps any tool so that a rerun repeats no call: the key hashes the tool id,
the method, the prompt, the image's pixels and the call settings.

Parsers (:func:`strip_think`, :func:`parse_yes_no`, :func:`parse_score`,
:func:`parse_final_answer`, :func:`parse_numbered_list`) read what models really write
(markdown emphasis, reasoning blocks, brackets, fractions) and return ``default`` (None)
rather than guess when the text holds no answer. Parsers that must reproduce one official
script's exact regex belong to that family.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import socket
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from zoo.errors import ConfigError, ToolError
from zoo.files import write_bytes, write_text

logger = logging.getLogger("zoo.tools")

# ---------------------------------------------------------------------------- protocols

@dataclass
class ProposedMask:
    """One region proposal.

    mask: ``np.ndarray[bool]`` of shape ``[H, W]`` (the image's size).
    score: the proposer's confidence (SAM: predicted IoU in [0, 1]; shapes world: 1.0).
    area: pixels in the mask (computed when not given).
    bbox: ``(x0, y0, x1, y1)`` pixel edges, ``x1``/``y1`` exclusive (computed from the mask when
        not given); an empty mask has ``(0, 0, 0, 0)``.
    extra: anything else the proposer reports (e.g. SAM's ``stability_score``).
    """

    mask: np.ndarray
    score: float = 1.0
    area: int | None = None
    bbox: tuple[int, int, int, int] | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.ndim != 2:
            raise ToolError(f"ProposedMask.mask must be a 2-D boolean array [H, W], got shape {self.mask.shape}.")
        self.score = float(self.score)
        if self.area is None:
            self.area = int(self.mask.sum())
        if self.bbox is None:
            self.bbox = mask_bbox(self.mask)
        self.bbox = tuple(int(v) for v in self.bbox)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a boolean mask's pixels, ``x1``/``y1`` exclusive; ``(0, 0, 0, 0)`` if empty."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@runtime_checkable
class LLMTool(Protocol):
    """Text in, text out."""

    def generate(self, prompt, **settings) -> str:
        """The model's reply to ``prompt``: a string, or chat messages ``[{"role", "content"}, ...]``.
        ``settings`` are per-call generation settings (``max_new_tokens``, ``temperature``, ...). Raises
        :class:`ToolError` when the call fails."""
        ...

    def generate_batch(self, prompts, **settings) -> list[str]:
        """Replies to ``prompts``, in order (one per prompt); settings and errors as :meth:`generate`."""
        ...


@runtime_checkable
class VQATool(Protocol):
    """Image + question in, text out; ``caption`` describes the image."""

    def answer(self, image, question: str, **settings) -> str:
        """The answer to ``question`` about ``image`` (a path, PIL image, array or tensor, as
        :func:`zoo.image.load_image` takes). Raises :class:`ToolError` when the call fails."""
        ...

    def caption(self, image, **settings) -> str:
        """A description of ``image``; errors as :meth:`answer`."""
        ...


@runtime_checkable
class MaskProposer(Protocol):
    """Image in, region proposals out."""

    def propose(self, image) -> list[ProposedMask]:
        """Regions of ``image``: one :class:`ProposedMask` (bool (H, W) mask of the image's size, ``score``,
        ``bbox``) per region; an empty list when there is none."""
        ...


def default_vqa():
    """The offline VQA tool: the shapes-world judge (``zoo.data.shapes.judge.ShapesJudge``).

    Raises ToolError if the shapes judge cannot be imported.
    """
    try:
        from zoo.data.shapes.judge import ShapesJudge
    except ImportError as error:
        raise ToolError(f"the shapes-world judge is not available ({error}); pass a VQA tool explicitly.") from error
    return ShapesJudge()


def default_mask_proposer():
    """The offline mask proposer: shapes-world object masks (``zoo.data.shapes.judge.ShapesMaskProposer``).

    Raises ToolError if the shapes mask proposer cannot be imported.
    """
    try:
        from zoo.data.shapes.judge import ShapesMaskProposer
    except ImportError as error:
        raise ToolError(f"the shapes-world mask proposer is not available ({error}); pass a MaskProposer "
                        "explicitly.") from error
    return ShapesMaskProposer()


def as_vqa_tool(obj=None):
    """A :class:`VQATool` from ``obj``: None -> :func:`default_vqa`; a VQA tool as it is; a model with
    ``generate(image, prompt)`` wrapped in :class:`VLMTool`.

    Raises ToolError for an object with neither answer/caption nor generate(image, prompt).
    """
    if obj is None:
        return default_vqa()
    if isinstance(obj, VQATool):
        return obj
    if callable(getattr(obj, "generate", None)):
        return VLMTool(obj)
    raise ToolError(f"{type(obj).__name__} is not a VQA tool: give an object with answer(image, question) and "
                    "caption(image), or a model with generate(image, prompt).")


# ---------------------------------------------------------------------------- images

def _as_pil(image):
    """An RGB ``PIL.Image`` from a PIL image, or anything ``zoo.image.load_image`` reads."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    from zoo.image import load_image

    return load_image(image)


def image_digest(image) -> str:
    """SHA-256 of an image's RGB pixels and size (the same picture as a path, PIL image or array
    hashes the same)."""
    pil = _as_pil(image)
    digest = hashlib.sha256(f"RGB {pil.size[0]}x{pil.size[1]}\n".encode())
    digest.update(pil.tobytes())
    return digest.hexdigest()


def _png_data_url(image) -> str:
    buffer = io.BytesIO()
    _as_pil(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _messages(prompt, system: str | None = None) -> list[dict]:
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise ToolError("a prompt is a string or a list of chat messages {'role': ..., 'content': ...}; got "
                        f"{type(prompt).__name__}.")
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _identity(kind: str, **settings) -> str:
    return kind + ":" + json.dumps(settings, sort_keys=True, default=str)


# ---------------------------------------------------------------------------- transformers LLM

class TransformersLLM:
    """An :class:`LLMTool` on a transformers causal LM (greedy by default).

    model: a ``PreTrainedModel`` with ``generate``; tokenizer: its tokenizer.
    template: a ``zoo.text`` template name or object used to render prompts; None uses the
        tokenizer's own chat template when it has one, else a string prompt is fed as it is.
    system: a system message added to every prompt (chat messages, or the zoo template's system).
    max_new_tokens, do_sample, temperature, top_p: ``generate`` settings (overridable per call).
    batch_size: prompts per ``generate`` call in :meth:`generate_batch` (left padded).
    name: the model's name in :attr:`tool_id` (default: ``config._name_or_path`` or the class).
    Returns decoded new tokens only, special tokens skipped, stripped.
    """

    def __init__(self, model, tokenizer, *, template=None, system: str | None = None, max_new_tokens: int = 128,
                 do_sample: bool = False, temperature: float | None = None, top_p: float | None = None,
                 batch_size: int = 8, name: str | None = None):
        if not callable(getattr(model, "generate", None)):
            raise ToolError(f"{type(model).__name__} has no generate(); give a transformers causal LM.")
        self.model, self.tokenizer = model, tokenizer
        self.template = None
        if template is not None:
            from zoo.text import get_template

            self.template = get_template(template)
        self.system = system
        self.settings = {"max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample)}
        if temperature is not None:
            self.settings["temperature"] = float(temperature)
        if top_p is not None:
            self.settings["top_p"] = float(top_p)
        self.batch_size = int(batch_size)
        config = getattr(model, "config", None)
        self.name = name or getattr(config, "_name_or_path", "") or type(model).__name__

    @property
    def tool_id(self) -> str:
        """Identity for :class:`CallCache` keys: the model name, chat template, system prompt and generation settings."""
        return _identity("transformers", model=self.name, template=getattr(self.template, "name", None),
                         system=self.system, **self.settings)

    def _render(self, prompt) -> tuple[str, bool]:
        """(prompt text, whether the tokenizer should add its special tokens)."""
        if self.template is not None:
            turns = [m for m in _messages(prompt) if m["role"] != "system"]
            return self.template.render(turns, add_generation_prompt=True), True
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(_messages(prompt, self.system), tokenize=False,
                                                      add_generation_prompt=True)
            return text, False  # the template already holds BOS and friends
        if isinstance(prompt, str):
            return (f"{self.system}\n\n{prompt}" if self.system else prompt), True
        raise ToolError(f"{self.name}'s tokenizer has no chat template, so chat messages cannot be rendered; pass "
                        "a string prompt or template='vicuna_v1' (or another zoo.text template).")

    def generate(self, prompt, **settings) -> str:
        """The model's completion of one ``prompt`` (a string or chat messages), special tokens removed and stripped.

        ``settings`` override the generation settings for this call (``max_new_tokens``, ``do_sample``, ...).
        Raises :class:`ToolError` for chat messages when neither ``template`` nor the tokenizer's chat template
        can render them.
        """
        return self.generate_batch([prompt], **settings)[0]

    def generate_batch(self, prompts, **settings) -> list[str]:
        """Completions of ``prompts`` in order, ``batch_size`` prompts per ``generate`` call (left padded, so every
        prompt ends at the same column), under ``torch.no_grad`` in eval mode (every module's train/eval flag is
        restored).

        Raises :class:`ToolError` as :meth:`generate`.
        """
        rendered = [self._render(p) for p in prompts]
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        return _generate_left_padded(self.model, self.tokenizer, rendered, pad_id, self.batch_size,
                                     {**self.settings, **settings})


def _generate_left_padded(model, tokenizer, rendered, pad_id: int, batch_size: int, options: dict) -> list[str]:
    """``TransformersLLM.generate_batch``'s loop, run through ``zoo.model.inference`` (eval mode, no grad, every
    submodule's train/eval flag restored afterwards)."""
    import torch

    from zoo.model import inference

    @inference
    def run(model):
        device = next(model.parameters()).device
        outputs: list[str] = []
        for start in range(0, len(rendered), batch_size):
            chunk = rendered[start:start + batch_size]
            encoded = [tokenizer(text, add_special_tokens=special)["input_ids"] for text, special in chunk]
            width = max(map(len, encoded))
            ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for row, tokens in enumerate(encoded):  # left padding: every prompt ends at the same column
                ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
                mask[row, width - len(tokens):] = 1
            result = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), pad_token_id=pad_id,
                                    **options)
            outputs.extend(t.strip() for t in tokenizer.batch_decode(result[:, width:], skip_special_tokens=True))
        return outputs

    return run(model)


# ---------------------------------------------------------------------------- zoo VLMs

class VLMTool:
    """A :class:`VQATool` on any model with ``generate(image, prompt, **kw)`` returning text (or a
    list holding one text), e.g. a zoo vision-language model.

    question_format: how a question becomes the prompt (``{question}`` is replaced).
    caption_prompt: the prompt :meth:`caption` sends.
    generate_kwargs: passed to every ``generate`` call (overridable per call).
    """

    def __init__(self, model, *, question_format: str = "{question}",
                 caption_prompt: str = "Describe the image in one sentence.", name: str | None = None,
                 **generate_kwargs):
        if not callable(getattr(model, "generate", None)):
            raise ToolError(f"{type(model).__name__} has no generate(image, prompt); VLMTool needs one.")
        self.model = model
        self.question_format = question_format
        self.caption_prompt = caption_prompt
        self.generate_kwargs = generate_kwargs
        self.name = name or type(model).__name__

    @property
    def tool_id(self) -> str:
        """Identity for :class:`CallCache` keys: the model name, prompt formats and generation settings."""
        return _identity("vlm", model=self.name, question_format=self.question_format,
                         caption_prompt=self.caption_prompt, **self.generate_kwargs)

    def _run(self, image, prompt: str, settings: dict) -> str:
        out = self.model.generate(image, prompt, **{**self.generate_kwargs, **settings})
        if isinstance(out, (list, tuple)):
            if len(out) != 1:
                raise ToolError(f"{self.name}.generate returned {len(out)} texts for one image and prompt.")
            out = out[0]
        if not isinstance(out, str):
            raise ToolError(f"{self.name}.generate returned a {type(out).__name__}, not text.")
        return out.strip()

    def answer(self, image, question: str, **settings) -> str:
        """The model's answer to ``question`` about ``image`` (prompt: ``question_format``), stripped.

        Raises :class:`ToolError` when the model's ``generate`` returns something other than one text.
        """
        return self._run(image, self.question_format.format(question=question), settings)

    def caption(self, image, **settings) -> str:
        """The model's description of ``image`` (prompt: ``caption_prompt``), stripped; errors as :meth:`answer`."""
        return self._run(image, self.caption_prompt, settings)


# ---------------------------------------------------------------------------- OpenAI-compatible endpoint

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class OpenAIChatTool:
    """An :class:`LLMTool` and :class:`VQATool` on an OpenAI-compatible chat endpoint.

    base_url: up to and including the API version, as the OpenAI client takes it
        (``https://api.openai.com/v1``, ``http://localhost:8000/v1`` for vLLM); requests go to
        ``{base_url}/chat/completions``. Default: ``$OPENAI_BASE_URL``.
    model: the ``model`` field of each request.
    api_key: the key itself; else read from the environment variable ``api_key_env`` (default
        ``OPENAI_API_KEY``; None = send no key, for local servers). The key is never logged.
    timeout: seconds per HTTP attempt. max_retries: extra attempts after a timeout, a refused
        connection or HTTP 408/409/429/5xx, waiting ``backoff * 2**attempt`` seconds (or the
        server's ``Retry-After``, at most ``max_backoff``).
    system: a system message added to every prompt. temperature, max_tokens and ``extra``
        (any other request fields) are the request settings; per-call keyword arguments override.
    caption_prompt: the question :meth:`caption` asks.
    Raises ToolError with the status and the server's message when a call fails for good.
    """

    def __init__(self, base_url: str | None = None, model: str = "gpt-4o", *, api_key: str | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 60.0, max_retries: int = 3,
                 backoff: float = 1.0, max_backoff: float = 30.0, system: str | None = None,
                 temperature: float | None = 0.0, max_tokens: int | None = None, extra: dict | None = None,
                 caption_prompt: str = "Describe the image in one sentence."):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ToolError("OpenAIChatTool needs base_url (e.g. http://localhost:8000/v1) or $OPENAI_BASE_URL.")
        if not re.match(r"^https?://", base_url):
            raise ToolError(f"base_url {base_url!r} must start with http:// or https://.")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self._api_key, self.api_key_env = api_key, api_key_env
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.system = system
        self.settings = {k: v for k, v in {"temperature": temperature, "max_tokens": max_tokens}.items()
                         if v is not None}
        self.settings.update(extra or {})
        self.caption_prompt = caption_prompt
        host = urllib.request.urlparse(self.url).hostname or ""
        # loopback servers are reached directly even when an HTTP proxy is configured
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatTool({self.base_url!r}, model={self.model!r})"

    @property
    def tool_id(self) -> str:
        """Identity for :class:`CallCache` keys: the endpoint, model, system prompt and sampling settings (never the key)."""
        return _identity("openai-chat", base_url=self.base_url, model=self.model, system=self.system, **self.settings)

    def _key(self) -> str | None:
        if self._api_key is not None:
            return self._api_key
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ToolError(f"${self.api_key_env} is not set: export the API key for {self.base_url} in it, pass "
                            "api_key=..., or api_key_env=None for a server that needs no key.")
        return key

    def chat(self, messages: list[dict], **settings) -> str:
        """POST one chat request; returns the first choice's message text.

        Raises ToolError when the API key is missing or refused, when the server answers another HTTP error or a
        body that is not a chat completion, and when every retry failed (naming the URL and the last error).
        """
        body = {"model": self.model, "messages": messages, **self.settings, **settings}
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = self.backoff * (2 ** attempt)
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                detail = _error_message(error.read())
                last = f"HTTP {error.code}: {detail}"
                if error.code in (401, 403):
                    where = f"${self.api_key_env}" if self._api_key is None and self.api_key_env else "api_key"
                    raise ToolError(f"{self.url} refused the API key ({last}); check {where}.") from None
                if error.code not in _RETRY_STATUS:
                    raise ToolError(f"{self.url} answered {last} (model {self.model!r}).") from None
                retry_after = error.headers.get("Retry-After") if error.headers else None
                if retry_after:
                    try:
                        wait = float(retry_after)
                    except ValueError:
                        pass
            except (TimeoutError, socket.timeout):
                last = f"no answer within {self.timeout:g} s"
            except urllib.error.URLError as error:
                if isinstance(error.reason, (TimeoutError, socket.timeout)):
                    last = f"no answer within {self.timeout:g} s"
                else:
                    last = f"cannot connect ({error.reason})"
            except (ConnectionError, OSError) as error:
                last = f"connection failed ({error})"
            else:
                return _choice_text(raw, self.url)
            if attempt < self.max_retries:
                logger.warning("%s: %s; retrying in %.1f s (%d of %d)", self.url, last, min(wait, self.max_backoff),
                               attempt + 1, self.max_retries)
                time.sleep(min(wait, self.max_backoff))
        raise ToolError(f"{self.url} failed {self.max_retries + 1} times; last: {last}. Check that the server runs "
                        "and raise timeout/max_retries if it is only slow.")

    def generate(self, prompt, **settings) -> str:
        """The endpoint's reply to one ``prompt`` (a string or chat messages), with ``system`` first when set.

        Raises :class:`ToolError` as :meth:`chat` does (no API key, a refused or failing request after retries).
        """
        return self.chat(_messages(prompt, self.system), **settings)

    def generate_batch(self, prompts, **settings) -> list[str]:
        """:meth:`generate` for each prompt, one request at a time, in order."""
        return [self.generate(p, **settings) for p in prompts]

    def answer(self, image, question: str, **settings) -> str:
        """The endpoint's answer to ``question`` about ``image``, sent as a PNG data URL (``image_url`` content part,
        the OpenAI vision message format). Raises :class:`ToolError` as :meth:`chat`, ``ImageInputError`` for a bad
        image.
        """
        content = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": _png_data_url(image)}}]
        return self.chat(_messages([{"role": "user", "content": content}], self.system), **settings)

    def caption(self, image, **settings) -> str:
        """:meth:`answer` with ``caption_prompt`` as the question."""
        return self.answer(image, self.caption_prompt, **settings)


def _error_message(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
        message = payload.get("error", {}).get("message") if isinstance(payload.get("error"), dict) \
            else payload.get("error") or payload.get("message")
        if message:
            return str(message)
    except (ValueError, AttributeError):
        pass
    return raw[:200].decode("utf-8", "replace")


def _choice_text(raw: bytes, url: str) -> str:
    try:
        payload = json.loads(raw)
        content = payload["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ToolError(f"{url} sent a reply that is not an OpenAI chat completion: "
                        f"{raw[:200].decode('utf-8', 'replace')!r}") from None
    if isinstance(content, list):  # some servers send content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


# ---------------------------------------------------------------------------- segment-anything

class SamMaskProposer:
    """A :class:`MaskProposer` on segment-anything's ``SamAutomaticMaskGenerator`` (optional extra
    ``segment-anything``; weights from Meta's release, e.g. ``sam_vit_h_4b8939.pth``).

    checkpoint: path of the SAM state dict (loaded with ``torch.load(weights_only=True)``, strict).
    model_type: a key of ``segment_anything.sam_model_registry`` (``vit_h``, ``vit_l``, ``vit_b``).
    device: where SAM runs (default: CUDA if available, else CPU).
    generator_kwargs: ``SamAutomaticMaskGenerator`` settings (``points_per_side``,
        ``pred_iou_thresh``, ``stability_score_thresh``, ``min_mask_region_area`` ...).
    Proposals come in the generator's order, ``score`` = SAM's predicted IoU, ``bbox`` from the
    mask (SAM's own XYWH box is in ``extra["sam_bbox_xywh"]``).
    Raises ToolError when the package or the checkpoint is missing.
    """

    def __init__(self, checkpoint, model_type: str = "vit_h", *, device=None, **generator_kwargs):
        try:
            import segment_anything
        except ImportError:
            raise ToolError("SamMaskProposer needs the segment-anything package: pip install 'zoo[sam]' (or "
                            "pip install segment-anything); offline, use zoo.tools.default_mask_proposer().") from None
        import torch

        path = Path(os.fspath(checkpoint)).expanduser()
        if not path.is_file():
            raise ToolError(f"SAM checkpoint {str(path)!r} does not exist; download it from the segment-anything "
                            "release (e.g. sam_vit_h_4b8939.pth) and give its path.")
        registry = segment_anything.sam_model_registry
        if model_type not in registry:
            raise ToolError(f"unknown SAM model_type {model_type!r}; known: {sorted(registry)}.")
        sam = registry[model_type](checkpoint=None)  # built empty: segment-anything's own loader unpickles
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ToolError(f"cannot read SAM checkpoint {path} ({type(error).__name__}: {error}).") from error
        from zoo.hub import load_state_dict_strict

        load_state_dict_strict(sam, state, str(path))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = sam.to(device).eval()
        self.generator = segment_anything.SamAutomaticMaskGenerator(self.model, **generator_kwargs)
        self.checkpoint, self.model_type, self.generator_kwargs = str(path), model_type, generator_kwargs

    @property
    def tool_id(self) -> str:
        """Identity for :class:`CallCache` keys: the checkpoint's file name, model type and generator settings."""
        return _identity("sam", checkpoint=Path(self.checkpoint).name, model_type=self.model_type,
                         **self.generator_kwargs)

    def propose(self, image) -> list[ProposedMask]:
        """segment-anything's automatic masks of ``image``: one :class:`ProposedMask` per region (bool (H, W) mask,
        ``score`` SAM's predicted IoU, ``extra`` its stability score and xywh box), in SAM's order.
        """
        import torch

        pixels = np.asarray(_as_pil(image), dtype=np.uint8)
        with torch.no_grad():
            records = self.generator.generate(pixels)
        return [ProposedMask(r["segmentation"], score=r.get("predicted_iou", 1.0),
                             extra={"stability_score": float(r.get("stability_score", 0.0)),
                                    "sam_bbox_xywh": [float(v) for v in r.get("bbox", [])]})
                for r in records]


# ---------------------------------------------------------------------------- cache

def _canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


class CallCache:
    """Answers of tool calls on disk, one JSON file per call (``<folder>/<ab>/<key>.json``).

    The key is the SHA-256 of the tool id, the method, the prompt, the image's pixel digest and
    the call settings, so a rerun of a pipeline repeats no call, and a changed prompt, image,
    tool or setting is a new call. Writes are atomic. ``hits`` and ``misses`` count lookups.
    Sampled answers are cached too: put a seed in the settings to keep several.
    """

    def __init__(self, folder):
        self.folder = Path(os.fspath(folder)).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def key(self, tool_id: str, method: str, *, prompt=None, image=None, settings: dict | None = None,
            image_sha256: str | None = None) -> str:
        """The cache key of one call (hex SHA-256); ``image_sha256`` saves hashing the image again."""
        if image is not None and image_sha256 is None:
            image_sha256 = image_digest(image)
        payload = {"tool": tool_id, "method": method, "prompt": prompt, "image": image_sha256,
                   "settings": settings or {}}
        return hashlib.sha256(_canonical_json(payload).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str):
        """``(True, answer)`` when ``key`` is stored, else ``(False, None)``; counts a hit or a miss."""
        path = self._path(key)
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                logger.warning("zoo.tools cache: %s is unreadable; calling the tool again", path)
            else:
                self.hits += 1
                return True, _decode(record["answer"], path)
        self.misses += 1
        return False, None

    def put(self, key: str, answer, **meta) -> None:
        """Store ``answer`` under ``key`` atomically (``<folder>/<ab>/<key>.json``; proposed masks go to a packed
        ``.npz`` beside it). ``meta`` (tool, method, prompt, ...) is recorded for people reading the cache.
        """
        record = {"key": key, **meta, "answer": _encode(answer, self._path(key))}
        write_text(self._path(key), _canonical_json(record) + "\n")

    def call(self, tool_id: str, method: str, fn: Callable[[], Any], *, prompt=None, image=None,
             settings: dict | None = None):
        """The stored answer of this call, or ``fn()`` stored under its key."""
        digest = None if image is None else image_digest(image)
        key = self.key(tool_id, method, prompt=prompt, image_sha256=digest, settings=settings)
        found, answer = self.get(key)
        if found:
            return answer
        answer = fn()
        self.put(key, answer, tool=tool_id, method=method, prompt=prompt, image_sha256=digest, settings=settings or {})
        return answer

    def wrap(self, tool, tool_id: str | None = None) -> "CachedTool":
        """``tool`` with every generate/answer/caption/propose call going through this cache."""
        return CachedTool(tool, self, tool_id)

    def stats(self) -> dict:
        """``{"hits": int, "misses": int}``: lookups answered from disk and lookups that called the tool."""
        return {"hits": self.hits, "misses": self.misses}


def _encode(answer, path: Path):
    if isinstance(answer, list) and answer and all(isinstance(a, ProposedMask) for a in answer):
        masks = np.stack([a.mask for a in answer])
        buffer = io.BytesIO()
        np.savez_compressed(buffer, masks=np.packbits(masks, axis=-1), shape=np.array(masks.shape))
        write_bytes(path.with_suffix(".npz"), buffer.getvalue())
        return {"masks": path.with_suffix(".npz").name,
                "items": [{"score": a.score, "area": a.area, "bbox": list(a.bbox), "extra": a.extra} for a in answer]}
    return answer


def _decode(answer, path: Path):
    if isinstance(answer, dict) and "masks" in answer and "items" in answer:
        with np.load(path.with_name(answer["masks"]), allow_pickle=False) as data:
            shape = tuple(int(v) for v in data["shape"])
            masks = np.unpackbits(data["masks"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
        return [ProposedMask(m, score=i["score"], area=i["area"], bbox=tuple(i["bbox"]), extra=i["extra"])
                for m, i in zip(masks, answer["items"])]
    return answer


class CachedTool:
    """A tool whose calls go through a :class:`CallCache` (see :meth:`CallCache.wrap`)."""

    def __init__(self, tool, cache: CallCache, tool_id: str | None = None):
        tool_id = tool_id or getattr(tool, "tool_id", None)
        if not tool_id:
            raise ToolError(f"{type(tool).__name__} has no tool_id; pass tool_id='...' naming the model and its "
                            "settings, so cached answers never mix between tools.")
        self.tool, self.cache, self.tool_id = tool, cache, str(tool_id)

    def _method(self, name: str):
        method = getattr(self.tool, name, None)
        if method is None:
            raise ToolError(f"{type(self.tool).__name__} has no {name}().")
        return method

    def generate(self, prompt, **settings) -> str:
        """The wrapped tool's ``generate(prompt, **settings)``, answered from the cache when this exact call is stored."""
        method = self._method("generate")
        return self.cache.call(self.tool_id, "generate", lambda: method(prompt, **settings), prompt=prompt,
                               settings=settings)

    def generate_batch(self, prompts, **settings) -> list[str]:
        """Answers of ``prompts`` in order: cached ones from disk, the others in one call of the wrapped tool's
        ``generate_batch`` (or ``generate`` per prompt when it has none), each then stored.
        """
        keys = [self.cache.key(self.tool_id, "generate", prompt=p, settings=settings) for p in prompts]
        answers: list = [None] * len(prompts)
        todo = []
        for index, key in enumerate(keys):
            found, answer = self.cache.get(key)
            if found:
                answers[index] = answer
            else:
                todo.append(index)
        if todo:
            batch = getattr(self.tool, "generate_batch", None)
            pending = [prompts[i] for i in todo]
            fresh = batch(pending, **settings) if batch else [self._method("generate")(p, **settings) for p in pending]
            for index, answer in zip(todo, fresh):
                self.cache.put(keys[index], answer, tool=self.tool_id, method="generate", prompt=prompts[index],
                               settings=settings)
                answers[index] = answer
        return answers

    def answer(self, image, question: str, **settings) -> str:
        """The wrapped tool's ``answer(image, question, **settings)``, cached by the image's pixel digest and question."""
        method = self._method("answer")
        return self.cache.call(self.tool_id, "answer", lambda: method(image, question, **settings), prompt=question,
                               image=image, settings=settings)

    def caption(self, image, **settings) -> str:
        """The wrapped tool's ``caption(image, **settings)``, cached by the image's pixel digest."""
        method = self._method("caption")
        return self.cache.call(self.tool_id, "caption", lambda: method(image, **settings), image=image,
                               settings=settings)

    def propose(self, image) -> list[ProposedMask]:
        """The wrapped tool's ``propose(image)``, cached by the image's pixel digest (masks stored packed)."""
        method = self._method("propose")
        return self.cache.call(self.tool_id, "propose", lambda: method(image), image=image)


# ---------------------------------------------------------------------------- parsers

def strip_think(text: str, unclosed: str = "keep") -> str:
    """The text after the last ``</think>`` (reasoning models put their draft before it), stripped.

    unclosed: what to do with a ``<think>`` that is never closed: ``"keep"`` the text (the tag
    removed) or ``"drop"`` everything from the tag on (the draft is not the answer).

    Raises ConfigError for another value of ``unclosed``.
    """
    if unclosed not in ("keep", "drop"):
        raise ConfigError(f"strip_think: unclosed must be 'keep' or 'drop', got {unclosed!r}.")
    text = text or ""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1].strip()
    if "<think>" in text:
        before, after = text.split("<think>", 1)
        return (before + after).strip() if unclosed == "keep" else before.strip()
    return text.strip()


_EMPHASIS = re.compile(r"\*+|`+|^#+[ \t]*|__", re.MULTILINE)


def _plain(text: str) -> str:
    """Markdown emphasis, code marks and headings removed; compatibility forms folded (NFKC: a full-width
    colon or digit, a no-break space) and the Unicode minus sign written ``-``, as models emit them."""
    return _EMPHASIS.sub("", unicodedata.normalize("NFKC", text).replace("\u2212", "-"))


def parse_yes_no(text: str, default: bool | None = None) -> bool | None:
    """True for yes, False for no, ``default`` when the text does not say.

    Reads, in order: the last "(final) answer: yes/no"; a leading yes/no (``"Yes."``, ``"**No**,
    because ..."``); a yes or no opening any sentence, if only one of them does. true/false count
    as yes/no. Reasoning before ``</think>`` is ignored.
    """
    plain = _plain(strip_think(text)).lower()
    word = r"(yes|no|true|false)\b"
    answers = re.findall(r"\b(?:final\s+)?answer\s*(?:is)?\s*[:=\-]?\s*[\"'(\[]?\s*" + word, plain)
    if answers:
        return answers[-1] in ("yes", "true")
    hedge = r"(?!\s*(?:and|or|/)\s*(?:yes|no|true|false)\b)"  # "yes and no", "yes/no" say nothing
    lead = re.match(r"^[\s\"'(\[]*" + word + hedge, plain)
    if lead:
        return lead.group(1) in ("yes", "true")
    openers = set(re.findall(r"(?:^|[.!?\n:]\s*)" + word + hedge, plain))
    if openers and openers <= {"yes", "true"}:
        return True
    if openers and openers <= {"no", "false"}:
        return False
    return default


# a decimal point or comma ("0,8" is 0.8, not 0) and an exponent ("1e-1" is 0.1, not 1)
_NUMBER = r"([+-]?(?:\d+(?:[.,]\d+|\.)?|\.\d+)(?:[eE][+-]?\d+)?)"
_SCORE_STRICT = re.compile(r"Score:\s*(-?\d+\.?\d*)", re.IGNORECASE)
# separators between "score" and the number; a dash only when a space follows ("Score: -0.5" is negative)
_SCORE = re.compile(r"\bscore\b(?:\s*(?:\bis\b|\bof\b|=|:|[-–](?=\s)))*\s*[\[(\"']?\s*" + _NUMBER
                    + r"(?:\s*/\s*(\d+(?:\.\d*)?))?", re.IGNORECASE)


def parse_score(text: str, *, low: float = -1.0, high: float = 1.0, strict: bool = False, which: str = "first",
                clip: bool = False, default: float | None = None) -> float | None:
    """The number after "Score:" in ``[low, high]``, or ``default``.

    strict: only ``Score: <number>`` as judges are told to write it (case-insensitive, no sign
        ``+``, no leading ``.``); otherwise also ``**Score:** 0.8``, ``score = +.5``,
        ``Score: [0.7]``, ``Score is 0.6``, a decimal comma (``0,8``), an exponent (``1e-1``), a
        Unicode minus or full-width colon, and fractions of the maximum (``0.8/1.0`` and
        ``8/10`` read 0.8 when ``high`` is 1).
    which: ``"first"`` or ``"last"`` match. clip: clamp an out-of-range value instead of
        rejecting it (returning ``default``). Reasoning before ``</think>`` is ignored.

    Raises ConfigError for another value of ``which``; text without a readable score is not an error
    (``default``).
    """
    if which not in ("first", "last"):
        raise ConfigError(f"parse_score: which must be 'first' or 'last', got {which!r}.")
    body = strip_think(text)
    if strict:
        matches = [(m.group(1), None) for m in _SCORE_STRICT.finditer(body)]
    else:
        matches = [(m.group(1), m.group(2)) for m in _SCORE.finditer(_plain(body))]
    if not matches:
        return default
    number, denominator = matches[0] if which == "first" else matches[-1]
    try:
        value = float(number.replace(",", "."))
        if denominator is not None:
            scale = float(denominator)
            if scale <= 0 or abs(value) > scale:
                return default
            value = value / scale * high
    except ValueError:
        return default
    if not low <= value <= high:
        if not clip:
            return default
        value = min(max(value, low), high)
    return value


def parse_final_answer(text: str, choices: Sequence[str] | None = ("Yes", "No"),
                       default: str | None = None) -> str | None:
    """The answer after the last "Final answer:" (any case, markdown, ``:``/``-``/``=``/``is``).

    choices: the allowed answers; the one the answer starts with is returned in its given
        spelling (``"final answer: **yes**."`` -> ``"Yes"``). None returns the rest of that line,
        stripped of quotes and end punctuation. ``default`` when there is no such line or choice.
    """
    plain = _plain(strip_think(text))
    found = []
    for match in re.finditer(r"final\s+answer\s*(?:is)?\s*[:=\-–]?[ \t]*([^\n]*)", plain, re.IGNORECASE):
        value = match.group(1).strip()
        if not value:  # "Final answer:" with the answer on the next line
            following = [line.strip() for line in plain[match.end():].split("\n") if line.strip()]
            value = following[0] if following else ""
        if value:
            found.append(value)
    if not found:
        return default
    value = found[-1]
    if choices is None:
        return value.strip("\"'“”[]() .") or default
    for choice in sorted(choices, key=len, reverse=True):  # "No" must not win over "Not sure"
        if re.match(r"[\s\"'“(\[]*" + re.escape(choice) + r"(?![\w-])", value, re.IGNORECASE):
            return choice
    return default


# an item marker, optionally in markdown emphasis ("**1.** a", "**1. a**")
_ITEM = re.compile(r"(?:(?<=\n)|^|(?<=\s))[ \t]*(?:\*\*|__)?\(?(\d{1,3})[.)](?:\*\*|__)?(?=\s)")
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n(?=\S)")  # a blank line, then text at the margin: the list is over
_EDGE_EMPHASIS = re.compile(r"^(?:\*\*|__)|(?:\*\*|__)$")


def parse_numbered_list(text: str, with_numbers: bool = False) -> list:
    """Items of a numbered list, in order: ``"1. a\\n2. b"``, ``"1) a"``, and inline lists
    (``"1. a red ball 2. a box"``, as GPT-4V writes SoM listings).

    A marker at a line start counts when its number exceeds the previous item's (models skip
    numbers, e.g. unlisted tags); an inline marker only when it is the next number, so "2. " inside
    a sentence or "3.5" never splits an item. Markers may be in bold (``**1.** a``). Text before the
    first item is dropped, and so is text after a blank line that returns to the margin (a closing
    remark); indented continuation lines stay in their item.
    with_numbers: return ``(number, text)`` pairs instead of texts.
    """
    body = strip_think(text)
    kept: list[tuple[int, int, int]] = []  # (number, marker start, text start)
    for match in _ITEM.finditer(body):
        number = int(match.group(1))
        line_start = match.start() == 0 or body[match.start() - 1] == "\n" or \
            body[:match.start()].rsplit("\n", 1)[-1].strip() == ""
        previous = kept[-1][0] if kept else None
        if previous is None:
            ok = line_start or number == 1
        else:
            ok = number > previous if line_start else number == previous + 1
        if ok:
            kept.append((number, match.start(), match.end()))
    items = []
    for index, (number, _, start) in enumerate(kept):
        end = kept[index + 1][1] if index + 1 < len(kept) else len(body)
        text = body[start:end]
        after = _PARAGRAPH_END.search(text)
        if after:  # "...\n2. box\n\nThat's all.": the closing remark is not part of item 2
            text = text[:after.start()]
        item = _EDGE_EMPHASIS.sub("", text.strip()).strip()
        items.append((number, item) if with_numbers else item)
    return items


__all__ = ["CachedTool", "CallCache", "LLMTool", "MaskProposer", "OpenAIChatTool", "ProposedMask", "SamMaskProposer",
           "TransformersLLM", "VLMTool", "VQATool", "as_vqa_tool", "default_mask_proposer", "default_vqa",
           "image_digest", "mask_bbox", "parse_final_answer", "parse_numbered_list", "parse_score", "parse_yes_no",
           "strip_think"]
