"""Official Sylber checkpoints -> zoo model (speech.md §1.3).

``sylber.ckpt`` on ``cheoljun95/sylber`` is a plain ``torch.save``d state dict of
transformers' 9-layer ``HubertModel``. The official code loads it with
``strict=False``; here every missing or unexpected key is an error that lists them.
Also accepted: a Lightning training checkpoint (``state_dict`` with keys under
``net.speech_model.``) and the separately saved teacher (``{'ema': state_dict}``).
Files are read with ``torch.load(weights_only=True)``: no code is unpickled.
"""
from __future__ import annotations

import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError

LIGHTNING_PREFIX = "net.speech_model."


def official_state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    """The HubertModel state dict inside any of the official layouts."""
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{source} holds a {type(obj).__name__}, not a state dict.")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):  # Lightning training checkpoint
        inner = obj["state_dict"]
        picked = {k[len(LIGHTNING_PREFIX):]: v for k, v in inner.items() if k.startswith(LIGHTNING_PREFIX)}
        if not picked:
            raise CheckpointFormatError(
                f"{source} is a Lightning checkpoint without '{LIGHTNING_PREFIX}*' keys; it is not a Sylber "
                "training checkpoint.")
        return picked
    if set(obj) == {"ema"} and isinstance(obj["ema"], dict):  # ema_dict.ckpt: the teacher
        return dict(obj["ema"])
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        others = sorted(k for k in obj if k not in tensors)[:10]
        raise CheckpointFormatError(f"{source}: entries {others} are not tensors; expected a HubertModel state dict.")
    return tensors


def _weight_norm_spelling(keys) -> str:
    return "parametrizations" if any(".parametrizations.weight.original" in k for k in keys) else "weight_g"


def load_into(model, path: str, source: str | None = None):
    """Load an official checkpoint file into ``model.hubert`` (strict)."""
    from zoo.hub import load_state_dict_strict, normalize_weight_norm_keys
    from zoo.models.checkpoints import read_checkpoint

    source = source or str(path)
    state = official_state_dict(read_checkpoint(path), source)
    prefer = _weight_norm_spelling(model.hubert.state_dict())
    state = normalize_weight_norm_keys(state, prefer=prefer)
    has_mask_embed = "masked_spec_embed" in dict(model.hubert.named_parameters())
    if "masked_spec_embed" in state and not has_mask_embed:
        raise CheckpointKeysError(source, unexpected=["masked_spec_embed"], hint=(
            "  The checkpoint was trained with time masking (mask_time_prob > 0, speech.md §1.3) but the "
            "config sets encoder.mask_time_prob=0; keep the default 0.05."))
    try:
        load_state_dict_strict(model.hubert, state, source)
    except CheckpointKeysError as err:
        if "masked_spec_embed" in err.missing:
            # speech.md §1.3: HubertModel has masked_spec_embed whenever mask_time_prob > 0.
            raise CheckpointKeysError(source, err.missing, err.unexpected, err.mismatched, hint=(
                "  masked_spec_embed is missing: the checkpoint was saved with mask_time_prob=0. Load it with "
                "the override encoder.mask_time_prob=0.0, or check that it is a Sylber/HuBERT checkpoint.")) from None
        raise
    return model


def load(path: str, config: dict):
    """Registry loader: (official checkpoint path, full config) -> SylberModel, strict."""
    from zoo.speech.sylber.builder import build

    if int(config.get("num_tokens", 0) or 0):
        raise ConfigError(
            "The official sylber.ckpt holds no syllable codebook, so num_tokens must be 0 when loading it; "
            "fit a codebook afterwards with zoo.speech.sylber.tokenizer.fit_tokenizer or `zoo train sylber`.")
    model = build(config)
    load_into(model, path)
    return model
