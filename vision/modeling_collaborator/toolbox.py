"""The LLM and VQA tools a recipe names (``tools.llm`` / ``tools.vqa``), built on ``zoo.tools``.

``type``:

* ``offline`` (LLM): the demo's deterministic template tool (``offline.TemplateLLM``).
* ``shapes`` (VQA): the shapes-world judge, which reads the pixels (``zoo.data.shapes.judge.ShapesJudge``);
  questions it cannot read are answered "unknown".
* ``openai``: an OpenAI-compatible chat endpoint (``zoo.tools.OpenAIChatTool``: ``base_url``,
  ``model``, ``api_key_env``, ``timeout``, ``max_retries``, ``temperature``, ``max_tokens``); the
  same endpoint serves as VQA tool when the model takes images.
* ``transformers`` (LLM): a causal LM from the Hub or a folder (``model``), greedy
  (``zoo.tools.TransformersLLM``; ``max_tokens`` new tokens).
* ``class``: ``class: package.module:Factory`` called with ``kwargs`` (any object with the
  protocol's methods and a ``tool_id``).
"""
from __future__ import annotations

from zoo.errors import ConfigError

__all__ = ["TOOL_DEFAULTS", "build_llm", "build_vqa", "tool_id"]

_COMMON = {"base_url": None, "model": None, "api_key_env": "OPENAI_API_KEY", "timeout": 60.0, "max_retries": 3,
           "temperature": 0.0, "max_tokens": None, "class": None, "kwargs": {}}
TOOL_DEFAULTS = {"llm": {"type": "offline", **_COMMON}, "vqa": {"type": "shapes", **_COMMON}}


def tool_id(tool) -> str:
    """The tool's ``tool_id`` (what the call cache and the step settings record)."""
    value = getattr(tool, "tool_id", None)
    if not value:
        raise ConfigError(f"{type(tool).__name__} has no tool_id; give the tool a tool_id naming its model and "
                          "settings, so cached answers never mix between tools.")
    return str(value)


def _openai(cfg: dict):
    from zoo.tools import OpenAIChatTool

    if not cfg.get("model"):
        raise ConfigError("tools.*.type=openai needs model (the endpoint's model name) and base_url.")
    return OpenAIChatTool(cfg.get("base_url"), cfg["model"], api_key_env=cfg.get("api_key_env"),
                          timeout=float(cfg["timeout"]), max_retries=int(cfg["max_retries"]),
                          temperature=cfg.get("temperature"), max_tokens=cfg.get("max_tokens"))


def _custom(cfg: dict, where: str):
    from zoo.train.recipe import import_object

    if not cfg.get("class"):
        raise ConfigError(f"{where}.type=class needs class: package.module:Factory.")
    return import_object(cfg["class"], key=f"{where}.class")(**dict(cfg.get("kwargs") or {}))


def build_llm(cfg: dict):
    """The ``LLMTool`` of a ``tools.llm`` section."""
    kind = cfg.get("type")
    if kind == "offline":
        from .offline import TemplateLLM

        return TemplateLLM()
    if kind == "openai":
        return _openai(cfg)
    if kind == "transformers":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from zoo.tools import TransformersLLM

        if not cfg.get("model"):
            raise ConfigError("tools.llm.type=transformers needs model (a Hub id or a folder).")
        tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
        model = AutoModelForCausalLM.from_pretrained(cfg["model"])
        return TransformersLLM(model, tokenizer, max_new_tokens=int(cfg.get("max_tokens") or 512), name=cfg["model"])
    if kind == "class":
        return _custom(cfg, "tools.llm")
    raise ConfigError(f"tools.llm.type must be offline, openai, transformers or class, got {kind!r}.")


def build_vqa(cfg: dict):
    """The ``VQATool`` of a ``tools.vqa`` section."""
    kind = cfg.get("type")
    if kind == "shapes":
        from zoo.data.shapes.judge import ShapesJudge

        return ShapesJudge(unknown="unknown")
    if kind == "openai":
        return _openai(cfg)
    if kind == "class":
        return _custom(cfg, "tools.vqa")
    raise ConfigError(f"tools.vqa.type must be shapes, openai or class, got {kind!r}.")
