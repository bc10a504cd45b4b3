"""Neural-network building blocks shared by every family: the one attention function (``zoo.nn.attention``)."""
from zoo.nn.attention import BACKENDS, attention, attention_backend

HF_ATTENTION_NAME = "zoo"


def register_transformers_attention() -> str:
    """Register ``attention`` with transformers as ``attn_implementation="zoo"`` (idempotent).

    Call it before building a transformers model with ``attn_implementation="zoo"``;
    returns the name. Kept out of ``import zoo.nn`` because importing transformers is slow.
    """
    from zoo.nn.hf_attention import register

    return register()


__all__ = ["BACKENDS", "HF_ATTENTION_NAME", "attention", "attention_backend", "register_transformers_attention"]
