"""Official Sylber checkpoints -> zoo model, strictly and without running pickled code.

``sylber.ckpt`` on ``cheoljun95/sylber`` is a plain ``torch.save``d state dict of transformers'
9-layer ``HubertModel`` (``Berkeley-Speech-Group/sylber:sylber/model/sylber.py`` loads it with
``strict=False``; here every missing, unexpected or mis-shaped key is a
:class:`~zoo.errors.CheckpointKeysError`). Also accepted: a Lightning training checkpoint
(``state_dict`` with keys under ``net.speech_model.``), the separately saved teacher
(``{'ema': state_dict}``, ``ema_dict.ckpt``), a transformers ``save_pretrained`` folder or Hub
snapshot (``config.json`` + weights; in a folder ``sylber.ckpt`` is picked first), and a
fairseq HuBERT encoder. The architecture comes from ``config.json`` when there is one, else
from the tensor shapes (:mod:`zoo.models.hubert_checkpoints`). Files are read with
``torch.load(weights_only=True)`` or zoo's restricted reader: no code is unpickled.
"""
from __future__ import annotations

import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError

LIGHTNING_PREFIX = "net.speech_model."


def official_state_dict(obj, source: str) -> dict[str, torch.Tensor]:
    """The ``HubertModel`` state dict inside any of the official layouts (plain, Lightning, ``{'ema': ...}``).

    Raises :class:`~zoo.errors.CheckpointFormatError` naming ``source`` for anything else.
    """
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


def load(path: str, config: dict):
    """Registry loader: (official checkpoint file or folder, full config) -> SylberModel, strict.

    The encoder's architecture is the checkpoint's (``config.json``, else tensor shapes); the
    rest of ``config`` (sample rate, thresholds) is kept. Raises
    :class:`~zoo.errors.ConfigError` when ``config`` asks for a codebook (the official file has
    none), :class:`~zoo.errors.CheckpointKeysError` listing every key that does not fit, and
    :class:`~zoo.errors.CheckpointFormatError` for files that are not Sylber/HuBERT checkpoints.
    """
    from zoo.hub import load_state_dict_strict
    from zoo.models.hubert_checkpoints import encoder_config, read_hubert_checkpoint
    from zoo.speech.sylber.builder import build

    if int(config.get("num_tokens", 0) or 0):
        raise ConfigError(
            "The official sylber.ckpt holds no syllable codebook, so num_tokens must be 0 when loading it; "
            "fit a codebook afterwards with zoo.speech.sylber.tokenizer.fit_tokenizer or `zoo train sylber`.")
    found = read_hubert_checkpoint(path, preferred=("sylber.ckpt",), state_dict_of=official_state_dict)
    source = str(found.file)
    if found.heads:
        raise CheckpointKeysError(source, unexpected=sorted(found.heads), hint=(
            "  This is a HuBERT pretraining checkpoint: Sylber has no prediction head. Convert it with "
            "`zoo convert hubertopic`, or pass a checkpoint of the encoder alone."))
    model = build({**config, "encoder": encoder_config(found, config["encoder"], source)})
    load_state_dict_strict(model.hubert, found.encoder, source)
    return model
