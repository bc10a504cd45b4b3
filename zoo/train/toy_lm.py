"""A tiny transformers causal LM as a zoo family, for the engine's FSDP and LoRA tests and the
big-model loading benchmark (no family needed).

``ToyCausalLM`` wraps ``transformers.LlamaForCausalLM`` (attention through ``zoo.nn.attention``,
``attn_implementation="zoo"``) under ``lm.``; its config is ``LlamaConfig``'s fields. The data
are arithmetic sequences ``(start + i * step) mod vocab_size`` with a seeded start and step per
sequence, which a 2-layer model learns in a few dozen steps, so a falling loss is a real check.
Recipe: ``trainer: zoo.train.toy_lm:ToyLMTrainer``; the family is ``toy-causal-lm``.
"""
from __future__ import annotations

import torch

from zoo.model import ZooModel
from zoo.registry import TEST_MODALITY, Family, register_family
from zoo.train.trainer import Trainer

TINY = {
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
    "rms_norm_eps": 1.0e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
}


def llama_config(config: dict):
    """``transformers.LlamaConfig`` of ``config`` (``LlamaConfig`` field names)."""
    from transformers import LlamaConfig

    return LlamaConfig(**config)


class ToyCausalLM(ZooModel):
    """``transformers.LlamaForCausalLM`` as a zoo model; state-dict keys are transformers' under ``lm.``."""

    family = "toy-causal-lm"

    def __init__(self, config: dict):
        super().__init__(config)
        from transformers import LlamaForCausalLM

        from zoo.nn.hf_attention import from_config

        self.lm = from_config(LlamaForCausalLM, llama_config(self.config))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None):
        """``input_ids`` [B, T] int64 -> transformers ``CausalLMOutputWithPast`` (logits [B, T, vocab_size];
        ``loss``, next-token cross-entropy, when ``labels`` [B, T] are given, -100 ignored)."""
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def from_transformers_key(key: str) -> str:
    """Key map for a ``LlamaForCausalLM`` checkpoint saved by transformers: ``k -> "lm." + k``."""
    return "lm." + key


class ArithmeticSequences(torch.utils.data.Dataset):
    """``n`` sequences of ``length`` tokens ``(start + i * step) mod vocab`` (start, step seeded per item)."""

    def __init__(self, n: int, length: int, vocab: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.start = torch.randint(0, vocab, (n,), generator=generator)
        self.step = torch.randint(1, 4, (n,), generator=generator)
        self.length, self.vocab = length, vocab

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, index: int) -> dict:
        ids = (self.start[index] + self.step[index] * torch.arange(self.length)) % self.vocab
        return {"input_ids": ids, "index": index}


class ToyLMTrainer(Trainer):
    """The engine's trainer for :class:`ToyCausalLM`: next-token cross-entropy on :class:`ArithmeticSequences`.

    Config sections: ``model`` (the Llama sizes of :data:`TINY`) and ``data`` (``train_size`` sequences of
    ``length`` tokens, ``seed``). No evaluation set. Used by the FSDP and LoRA tests and benchmarks.
    """
    config_defaults = {
        "model": dict(TINY),
        "data": {"train_size": 64, "length": 16, "seed": 1234},
    }

    def build_model(self) -> ToyCausalLM:
        """A :class:`ToyCausalLM` of ``config["model"]``."""
        return ToyCausalLM(dict(self.config["model"]))

    def build_datasets(self):
        """(:class:`ArithmeticSequences` of ``data.train_size`` x ``data.length`` tokens, None)."""
        data = self.config["data"]
        return ArithmeticSequences(data["train_size"], data["length"], self.config["model"]["vocab_size"],
                                   data["seed"]), None

    def training_step(self, model, batch) -> dict:
        """``{"loss": mean next-token cross-entropy}`` of ``batch["input_ids"]`` [B, T] (its own labels)."""
        out = model(batch["input_ids"], labels=batch["input_ids"])
        return {"loss": out.loss}


FAMILY = register_family(Family(
    name="toy-causal-lm", modality=TEST_MODALITY, build=ToyCausalLM, sizes={"tiny": dict(TINY)},
    trainer="zoo.train.toy_lm:ToyLMTrainer",
    description="A tiny transformers Llama causal LM used by the engine's FSDP/LoRA tests and benchmarks."))
