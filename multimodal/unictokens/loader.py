"""Official checkpoints -> UniCTokens models (strict).

* Show-o (``showlab/show-o-512x512``): ``pytorch_model.bin`` (or ``.safetensors``, or a sharded
  ``*.index.json`` set) of the ``Showo`` module: keys ``showo.model.*`` and ``showo.lm_head.{weight,bias}``
  (showlab/Show-o:models/modeling_showo.py wraps transformers-style ``PhiForCausalLM`` as ``showo``).
  The image tokenizer comes from ``showlab/magvitv2`` (``encoder.*``, ``decoder.*``,
  ``quantize.{embedding,power_vals}``), downloaded with it unless ``vq_weights.path`` names a file.
* A concept (``saves/<concept>/<task>/``): the three per-epoch files of the official scripts,
  applied on top of a named base (``zoo convert unictokens saves/bo/task OUT --base show-o-512``);
  the result is a zoo adapter (rows only, the base named in its config).

Files load with ``torch.load(weights_only=True)`` / safetensors; every missing, unexpected or
mis-shaped key is an error that lists them.
"""
from __future__ import annotations

from pathlib import Path

from zoo.errors import CheckpointFormatError, ConfigError

SHOWO_FILES = ("pytorch_model.safetensors",)  # the layouts zoo.weights does not look for by itself


def _checkpoint(path) -> Path:
    """A weights file, shard index or folder, as ``zoo.weights.read_index`` takes it (Show-o's own
    ``ModelMixin`` names a safetensors file ``pytorch_model.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        for name in SHOWO_FILES:
            if (path / name).is_file() and not any((path / n).exists() for n in (
                    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")):
                return path / name
    return path


def showo_infos(path, source: str, *, cached: bool = False) -> dict:
    """The tensors of a Show-o checkpoint (file, shard index or folder) under the zoo model's names
    (``zoo.models.showo.showo_key``), without reading weights. The CLIP projector of the
    ``w_clip_vit`` variants is refused: it has no place in this model."""
    from zoo import weights
    from zoo.models.showo import showo_key

    infos = weights.read_index(_checkpoint(path), cached=cached)
    projector = sorted(k for k in infos if showo_key(k) is None)
    if projector:
        raise CheckpointFormatError(f"{source} is a Show-o variant with a CLIP-ViT projector ({projector[0]}, ...); "
                                    "only the MAGVIT-token models (show-o-512x512, show-o) load here.")
    return weights.map_keys(infos, showo_key, source)


def vq_infos(path, source: str, *, cached: bool = False) -> dict:
    """The tensors of a ``showlab/magvitv2`` checkpoint under ``vq_model.`` (the names are otherwise the same)."""
    from zoo import weights
    from zoo.models.magvitv2 import magvitv2_key

    return weights.map_keys(weights.read_index(_checkpoint(path), cached=cached),
                            lambda key: "vq_model." + magvitv2_key(key), source)


def _vq_path(config: dict) -> tuple[str, bool]:
    spec = config.get("vq_weights") or {}
    if spec.get("path"):
        return str(spec["path"]), False
    from zoo.hub import download_file

    return download_file(spec.get("repo_id", "showlab/magvitv2"), spec.get("filename", "pytorch_model.bin"),
                         revision=spec.get("revision")), True


def load_showo(model, showo_path, vq_path=None, source: str | None = None, *, cached: bool = False,
               vq_cached: bool = False):
    """Stream an official Show-o checkpoint (and a MAGVIT-v2 one) into ``model`` strictly (``zoo.weights``:
    keys checked before any weight is read; a model built on the meta device is filled, not re-initialised)."""
    from zoo import weights

    source = source or str(showo_path)
    infos = showo_infos(showo_path, source, cached=cached)
    if vq_path is not None:
        infos.update(vq_infos(vq_path, str(vq_path), cached=vq_cached))
    hint = "" if vq_path is not None else \
        "  the image tokenizer's keys (vq_model.*) come from showlab/magvitv2; give its checkpoint too."
    weights.load_into(model, infos, source=source, cached=cached, hint=hint)
    return model


def load_concept(base_name: str, folder, config: dict, epoch: int | None = None):
    """The official per-concept files in ``folder`` as a zoo adapter model on the base ``base_name``.

    The concept name defaults to the folder's parent (``saves/<concept>/<task>``); token counts
    default to the official layout for the row count (17: [16], 25: [16, 8], 33: [16, 8, 8]).
    The base is not loaded: the result only carries the rows and the base's name.
    """
    from zoo.multimodal.unictokens.concept_tokens import load_official_rows
    from zoo.multimodal.unictokens.model import ConceptAdapter

    from zoo.cards import get_card
    from zoo.registry import get_family

    concept = dict(config.get("concept") or {})
    folder = Path(folder)
    base_config = config
    if base_name and not base_name.startswith("hf-hub:") and "/" not in base_name and not Path(base_name).exists():
        card = get_card(base_name)
        base_config = get_family(card.family).make_config(card.size, card.config, source=card.source)
    hidden = int(base_config["llm"]["hidden_size"])
    tokens = [int(t) for t in concept.get("tokens") or []]
    rows = load_official_rows(folder, epoch, num_rows=1 + sum(tokens) if tokens else None, hidden_size=hidden)
    n = rows["embed"].shape[0]
    if not tokens:
        tokens = {17: [16], 25: [16, 8], 33: [16, 8, 8]}.get(n, [n - 1])
    concept["tokens"] = tokens
    concept["name"] = concept.get("name") or folder.resolve().parent.name
    concept.setdefault("class_word", "")
    concept.setdefault("kind", "object")
    concept["trainable"] = None
    full = dict(base_config)
    full["concept"] = concept
    full["base"] = base_name
    return ConceptAdapter(full, rows)


def load(path: str, config: dict):
    """Registry loader: an official file/folder + the full config -> model.

    A folder of ``epoch_*_embed.pt`` files is a concept (needs ``config["base"]``, the CLI's
    ``--base``); anything else is a Show-o checkpoint (file, folder or shard index).
    """
    from zoo.multimodal.unictokens.concept_tokens import official_epochs
    from zoo.multimodal.unictokens.model import UniCTokensModel

    path = Path(path)
    if path.is_dir() and official_epochs(path):
        if not config.get("base"):
            raise ConfigError(f"{path} holds concept rows; name the base they apply to (`--base show-o-512`, or "
                              "base=<card|hf-hub:org/name|folder>).")
        return load_concept(config["base"], path, config)
    if config.get("base"):
        raise ConfigError(f"base={config['base']!r} is only for concept folders (epoch_<E>_embed.pt ...); {path} "
                          "is not one.")
    vq_path, vq_cached = _vq_path(config)
    model = UniCTokensModel(config)  # on the meta device under zoo.load: filled below, never initialised
    return load_showo(model, path, vq_path, source=str(path), cached="models--" in str(path),  # a Hub cache file: a corrupt copy is evicted
                      vq_cached=vq_cached)


__all__ = ["showo_infos", "vq_infos", "load_showo", "load_concept", "load"]
