"""Official Selftok checkpoints -> zoo model, strictly.

``tokenizer_512_ckpt.pth`` / ``renderer_512_ckpt.pth`` (HF ``selftok-team/SelftokTokenizer``) are
``torch.save``d flat state dicts of the release's ``ImageTokenizer``, optionally with an
``'ema_state_dict'`` entry (the decoder's EMA weights). The release loads them with
``strict=False`` (SelftokPipeline.py), which hides every mismatch - a missing ``initted`` would
even re-run k-means on the first batch. Here the 998 keys of the 512 model are all expected
(``SelftokModel`` has the release's module names, including the schedule buffers
``diffusion.*``, the quantizer counters and the unused ``final_layer_norm``/``final_layer_norm2``
and ``model.y_embedder``), and any missing, unexpected or mis-shaped key raises
:class:`~zoo.errors.CheckpointKeysError` with the lists. Files are read with
``torch.load(weights_only=True)`` (or zoo's restricted unpickler): no code is unpickled.

The VAE is not in these files; see ``zoo.vision.selftok.vae``.
"""
from __future__ import annotations

import copy
import logging
import re

import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError

logger = logging.getLogger("zoo.selftok")

__all__ = ["load", "load_into", "official_state_dict", "config_from_state_dict", "EMA_KEY", "TOP_LEVEL"]

EMA_KEY = "ema_state_dict"
TOP_LEVEL = ("encoder.", "model.", "diffusion.")
_WRAPPERS = ("state_dict", "model", "module")


def _strip_module(state: dict) -> dict:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _ema_entries(ema: dict, source: str) -> dict:
    """EMA weights under the model's names: the release's EMA copies the decoder (keys without ``model.``)."""
    ema = _strip_module(ema)
    out = {}
    for key, value in ema.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointFormatError(f"{source}: '{EMA_KEY}' entry {key!r} is not a tensor")
        out[key if key.startswith(TOP_LEVEL) else f"model.{key}"] = value
    return out


def official_state_dict(checkpoint: dict, source: str, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The ``ImageTokenizer`` tensors of a release or training checkpoint, EMA decoder weights applied when asked.

    Accepts the flat release layout, a training checkpoint's ``{'state_dict': ...}`` (or
    ``model``/``module``), ``module.``-prefixed (DDP) keys, and an ``'ema_state_dict'`` entry.
    Other non-tensor entries (optimizer state, step counters) are dropped with a log line.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(f"{source} holds a {type(checkpoint).__name__}, not a state dict")
    state = checkpoint
    for wrapper in _WRAPPERS:
        inner = checkpoint.get(wrapper)
        if isinstance(inner, dict) and inner and any(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    ema = checkpoint.get(EMA_KEY, state.get(EMA_KEY))
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    dropped = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor) and k != EMA_KEY)
    if dropped:
        logger.info("%s: ignoring non-tensor entries %s", source, ", ".join(dropped))
    if not tensors:
        raise CheckpointFormatError(f"{source} holds no tensors; top-level entries: {sorted(map(str, checkpoint))[:20]}")
    tensors = _strip_module(tensors)
    if isinstance(ema, dict) and ema:
        entries = _ema_entries(ema, source)
        if use_ema:
            unknown = sorted(set(entries) - set(tensors))
            if unknown:
                raise CheckpointKeysError(f"{source} ('{EMA_KEY}')", unexpected=unknown, hint=(
                    "  these EMA keys have no counterpart among the checkpoint's own keys; pass use_ema=False "
                    "to load the raw weights."))
            tensors.update(entries)
            logger.info("%s: using the EMA weights for %d keys (use_ema=True)", source, len(entries))
        else:
            logger.info("%s: ignoring '%s' (use_ema=False)", source, EMA_KEY)
    return tensors


def _count(prefix_pattern: str, keys) -> int:
    regex = re.compile(prefix_pattern)
    found = {int(m.group(1)) for k in keys for m in [regex.match(k)] if m}
    return max(found) + 1 if found else 0


def config_from_state_dict(state: dict[str, torch.Tensor], config: dict) -> dict:
    """``config`` with the sizes a checkpoint's shapes fix: K, codebook, widths, depths, decoder type.

    For a renderer (all tokens always visible) a new K also sets ``stages=[1000]``,
    ``k_per_stage=[K]``. A diffusion decoder whose K differs from the config's DiTi schedule is an
    error: the stage split cannot be read from the weights.
    """
    config = copy.deepcopy(config)
    derived = {}
    try:
        queries = state["encoder.query_tokens"]
        embed = state["encoder.quantizer._codebook.embed"]
        derived["num_tokens"] = int(queries.shape[1])
        derived["quantizer.codebook_size"] = int(embed.shape[1])
        derived["quantizer.code_dim"] = int(embed.shape[2])
        derived["token_dim"] = int(state["encoder.final_layer_norm3.weight"].shape[0])
        derived["encoder.query_dim"] = int(queries.shape[2])
        derived["encoder.hidden_size"] = int(state["encoder.x_embedder.proj.weight"].shape[0])
        derived["encoder.patch_size"] = int(state["encoder.x_embedder.proj.weight"].shape[-1])
        derived["encoder.depth"] = _count(r"encoder\.blocks\.(\d+)\.", state)
        derived["decoder.depth"] = _count(r"model\.joint_blocks\.(\d+)\.", state)
        hidden = int(state["model.context_embedder.weight"].shape[0])
        derived["decoder.type"] = "renderer" if "model.mask_token" in state else "diffusion"
        derived["decoder.pos_embed_max_size"] = int(round(state["model.pos_embed"].shape[1] ** 0.5))
    except KeyError as err:
        raise CheckpointKeysError("the checkpoint", missing=[err.args[0]], hint=(
            "  this key fixes the model's size; the file is not a Selftok ImageTokenizer state dict.")) from None
    dec = config["decoder"]
    if hidden != 64 * derived["decoder.depth"] or dec.get("hidden_size") not in (None, hidden):
        derived["decoder.hidden_size"] = hidden
    if derived["decoder.type"] == "renderer":
        derived["decoder.repeat_mask_token"] = int(state["model.mask_token"].shape[1]) == 1
    changed = []
    for dotted, value in derived.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        if node.get(leaf) != value:
            changed.append(f"{dotted}={value} (config: {node.get(leaf)})")
            node[leaf] = value
    if any(item.startswith("decoder.type=") for item in changed):  # the other decoder's release settings
        renderer = derived["decoder.type"] == "renderer"
        config["decoder"]["class_dropout_prob"] = 0.0 if renderer else 0.1
        config["decoder"]["context_see_xt"] = not renderer
    if sum(int(k) for k in config["k_per_stage"]) != config["num_tokens"]:
        if derived["decoder.type"] == "renderer":
            config["stages"], config["k_per_stage"] = [1000], [config["num_tokens"]]
        else:
            raise ConfigError(
                f"The checkpoint has {config['num_tokens']} tokens but the DiTi schedule k_per_stage="
                f"{config['k_per_stage']} sums to {sum(config['k_per_stage'])}. The stage split of a diffusion "
                "decoder is not stored in its weights; pass stages=[...] and k_per_stage=[...] (summing to the "
                "token count) as overrides.")
    if changed:
        logger.info("sizes read from the checkpoint: %s", "; ".join(changed))
    return config


def load_into(model, state: dict[str, torch.Tensor], source: str):
    """Strictly load official ``ImageTokenizer`` tensors into a ``SelftokModel`` (its own VAE, if any, untouched)."""
    from zoo.hub import load_state_dict_strict

    def hint(missing, unexpected):
        if "encoder.quantizer._codebook.initted" in missing:
            return ("  without 'encoder.quantizer._codebook.initted' the release would silently re-fit the codebook "
                    "by k-means on the first batch; this checkpoint is incomplete.")
        return ""

    own_vae = {k: v for k, v in model.state_dict().items() if k.startswith("vae.")}
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    state = {k: (v.to(dtypes[k]) if k in dtypes and isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    load_state_dict_strict(model, {**state, **own_vae}, source, hint=hint)
    if not bool(model.encoder.quantizer._codebook.initted.item()):
        logger.warning("%s: the codebook is not initialised (initted=0); the first encode fits it by k-means", source)
    return model


def load(path: str, config: dict):
    """Registry loader: (official checkpoint path, full config) -> ``SelftokModel`` in eval mode."""
    from zoo.models.checkpoints import read_checkpoint
    from zoo.vision.selftok.builder import build

    source = str(path)
    state = official_state_dict(read_checkpoint(path), source, use_ema=bool(config.get("use_ema", True)))
    config = config_from_state_dict(state, config)
    model = build(config)
    load_into(model, state, source)
    return model.eval()
