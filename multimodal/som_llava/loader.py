"""Official SoM-LLaVA checkpoints -> zoo model: three key layouts, loaded strictly.

* ``llava`` - the original LLaVA layout (``zzxslp/som-llava-v1.5-7b``, ``-13b``; written by
  ``haotian-liu/LLaVA``'s ``LlavaLlamaForCausalLM``): ``model.embed_tokens.weight``,
  ``model.layers.{i}.self_attn.q_proj.weight``, ``model.norm.weight``, ``lm_head.weight``,
  ``model.mm_projector.{0,2}.{weight,bias}`` and, when the trainer saved it,
  ``model.vision_tower.vision_tower.vision_model.*``. The vision tower is frozen during LLaVA
  training and the official loader always takes it from ``openai/clip-vit-large-patch14-336``;
  when the checkpoint has no vision keys, so does this loader (``vision_tower_weights`` in the
  config). Vicuna's 32000-row embedding and head are widened to the config's vocabulary (32064)
  for ``<image>`` and ``<pad>``; the new rows are the mean of the old ones (transformers'
  conversion script adds noise to that mean; the mean keeps the conversion deterministic). Those
  two tokens are never generated (``SomLlavaModel.generate`` suppresses them), so the logits of
  the 32000 original tokens, and the generated text, are the original model's.
* ``hf-legacy`` - transformers < 4.52 ``LlavaForConditionalGeneration`` (``zzxslp/som-llava-v1.5-13b-hf``;
  the names of ``KEYS_TO_MODIFY_MAPPING`` in transformers' ``convert_llava_weights_to_hf.py``):
  ``language_model.model.*``, ``language_model.lm_head.weight``, ``vision_tower.vision_model.*``,
  ``multi_modal_projector.linear_{1,2}.*``.
* ``hf`` - transformers >= 4.52 / 5.x (``LlavaForConditionalGeneration._checkpoint_conversion_mapping``):
  ``model.language_model.*``, ``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``lm_head.weight``.

The key maps are pure functions of a key (:func:`to_transformers_key`), so a streaming loader can
apply them shard by shard. Buffers that old checkpoints persisted and current transformers
recomputes from the config (``rotary_emb.inv_freq``, CLIP's ``embeddings.position_ids``) are dropped;
any other unknown, missing or mis-shaped key is a ``CheckpointKeysError`` that lists them.
Files: safetensors, or ``.bin`` read with ``torch.load(weights_only=True)``; one file, a folder, or a
``*.index.json`` with its shards (shards missing from a Hub cache snapshot are downloaded from the
same revision).
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Iterator

import torch

from zoo.errors import CheckpointFormatError, CheckpointKeysError, ConfigError

logger = logging.getLogger("zoo.som_llava")

LAYOUTS = ("llava", "hf-legacy", "hf")

# Targets are transformers >= 4.52 names with the CLIP tower's ``vision_model.`` level; recent
# transformers releases drop that level from CLIPVisionModel (``model.vision_tower.embeddings.*``),
# which :func:`installed_key` adapts to. Sources accept both spellings of the tower.
LLAVA_RULES = [
    ("model.embed_tokens.*", "model.language_model.embed_tokens.*"),
    ("model.layers.{}.*", "model.language_model.layers.{}.*"),
    ("model.norm.*", "model.language_model.norm.*"),
    ("model.mm_projector.0.*", "model.multi_modal_projector.linear_1.*"),
    ("model.mm_projector.2.*", "model.multi_modal_projector.linear_2.*"),
    ("model.vision_tower.vision_tower.vision_model.*", "model.vision_tower.vision_model.*"),
    ("lm_head.*", "lm_head.*"),
]
HF_LEGACY_RULES = [
    ("language_model.model.*", "model.language_model.*"),
    ("language_model.lm_head.*", "lm_head.*"),
    ("vision_tower.vision_model.*", "model.vision_tower.vision_model.*"),
    ("vision_tower.*", "model.vision_tower.vision_model.*"),
    ("multi_modal_projector.*", "model.multi_modal_projector.*"),
]
HF_RULES = [
    ("model.language_model.*", "model.language_model.*"),
    ("model.vision_tower.vision_model.*", "model.vision_tower.vision_model.*"),
    ("model.vision_tower.*", "model.vision_tower.vision_model.*"),
    ("model.multi_modal_projector.*", "model.multi_modal_projector.*"),
    ("lm_head.*", "lm_head.*"),
]
RULES = {"llava": LLAVA_RULES, "hf-legacy": HF_LEGACY_RULES, "hf": HF_RULES}

# openai/clip-vit-large-patch14-336 is a whole CLIPModel; LLaVA uses its vision half. A
# CLIPVisionModel file (written by a recent transformers) has the tower's keys without a prefix.
CLIP_RULES = [("vision_model.*", "model.vision_tower.vision_model.*")] + [
    (f"{part}.*", f"model.vision_tower.vision_model.{part}.*")
    for part in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm")]
CLIP_UNUSED = re.compile(r"^(text_model\.|visual_projection\.|text_projection\.|logit_scale$)")
# Buffers older transformers versions saved; current ones rebuild them from the config.
RECOMPUTED_BUFFERS = re.compile(r"(\.rotary_emb\.inv_freq|\.embeddings\.position_ids)$")

VISION_PREFIX = "model.vision_tower."
EMBED_KEY = "model.language_model.embed_tokens.weight"
HEAD_KEY = "lm_head.weight"


def _rename(key: str, rules) -> str | None:
    from zoo.models.checkpoints import rename_key

    return rename_key(key, rules)


def to_transformers_key(key: str, layout: str) -> str | None:
    """The ``LlavaForConditionalGeneration`` (transformers >= 4.52) name of an official ``key``.

    Returns None for a key that matches no rule of ``layout``. Raises ConfigError for an unknown layout.
    """
    if layout not in RULES:
        raise ConfigError(f"checkpoint layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return _rename(key, RULES[layout])


def clip_to_transformers_key(key: str) -> str | None:
    """``vision_model.*`` of a CLIPModel / CLIPVisionModel checkpoint -> the Llava vision tower name."""
    return _rename(key, CLIP_RULES)


def installed_key(key: str, own_keys) -> str:
    """``key`` as the installed transformers names it: drops the CLIP tower's ``vision_model.``
    level when this version's CLIPVisionModel has none."""
    prefix = "model.vision_tower.vision_model."
    if key not in own_keys and key.startswith(prefix):
        flat = "model.vision_tower." + key[len(prefix):]
        if flat in own_keys:
            return flat
    return key


def detect_layout(keys: Iterable[str]) -> str:
    """Which of :data:`LAYOUTS` a set of checkpoint keys is in; CheckpointFormatError when none."""
    keys = list(keys)
    found = set()
    for key in keys:
        if key.startswith(("model.mm_projector.", "model.layers.", "model.embed_tokens.", "model.norm.")) \
                or key.startswith("model.vision_tower.vision_tower."):
            found.add("llava")
        elif key.startswith(("language_model.", "vision_tower.", "multi_modal_projector.")):
            found.add("hf-legacy")
        elif key.startswith(("model.language_model.", "model.multi_modal_projector.", "model.vision_tower.")):
            found.add("hf")
    if len(found) == 1:
        return found.pop()
    sample = ", ".join(sorted(keys)[:6])
    if not found:
        raise CheckpointFormatError(
            f"These weights are not a LLaVA checkpoint in any known layout (keys such as {sample}). Expected the "
            "original LLaVA layout (model.mm_projector.*) or transformers' LlavaForConditionalGeneration.")
    raise CheckpointFormatError(f"The checkpoint mixes key layouts {sorted(found)} (keys such as {sample}).")


def _card_for(layout: str, config: dict) -> str:
    size = config.get("size")
    if size not in ("7b", "13b"):
        size = "13b" if int(config["text_config"]["hidden_size"]) == 5120 else "7b"
    if layout == "llava":
        return f"som-llava-{size}"
    return "som-llava-13b-hf" if size == "13b" else "som-llava-7b (with checkpoint_layout=hf)"


def check_layout(found: str, config: dict, source: str) -> None:
    """Raise a CheckpointFormatError naming the right card when ``found`` is not the layout the config expects."""
    expected = config.get("checkpoint_layout") or "auto"
    if expected == "auto":
        return
    groups = {"llava": {"llava"}, "hf": {"hf", "hf-legacy"}, "hf-legacy": {"hf", "hf-legacy"}}
    if expected not in groups:
        raise ConfigError(f"checkpoint_layout must be auto, llava or hf, got {expected!r}")
    if found in groups[expected]:
        return
    if found == "llava":
        what = ("is in the original LLaVA layout (model.mm_projector.*, model.layers.*), which "
                "transformers' LlavaForConditionalGeneration cannot load (zzxslp/SoM-LLaVA issue #3)")
    else:
        what = "is in transformers' LlavaForConditionalGeneration layout, not the original LLaVA one"
    raise CheckpointFormatError(
        f"{source} {what}. Load it with the card {_card_for(found, config)!r} "
        f"(or pass checkpoint_layout=auto / `zoo convert som-llava SRC DST checkpoint_layout=auto`).")


# --------------------------------------------------------------------------- files


def _hub_snapshot(path: Path) -> tuple[str, str, Path] | None:
    """(repo_id, revision, cache_dir) when ``path`` lies in a huggingface_hub cache snapshot."""
    parts = path.parts
    if "snapshots" not in parts:
        return None
    index = len(parts) - 1 - parts[::-1].index("snapshots")
    if index < 1 or index + 1 >= len(parts) or not parts[index - 1].startswith("models--"):
        return None
    repo_id = parts[index - 1][len("models--"):].replace("--", "/", 1)
    return repo_id, parts[index + 1], Path(*parts[: index - 1])


WEIGHT_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json", "model.safetensors",
                "pytorch_model.bin")


def config_layout(path: str | Path) -> str | None:
    """The layout a repo's ``config.json`` announces: "llava" (LLaVA's ``mm_*`` fields), "hf"
    (transformers' ``text_config``), or None when it says neither."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointFormatError(f"{path} is not a readable config.json ({err}).") from err
    if not isinstance(data, dict):
        return None
    if "mm_projector_type" in data or "mm_vision_tower" in data or data.get("model_type") == "llava_llama":
        return "llava"
    if "text_config" in data and "vision_config" in data:
        return "hf"
    return None


def _weights_next_to(config_path: Path) -> Path:
    """The weight file (or index) in the folder of a repo's config.json, downloading it from the same
    Hub snapshot when the folder is a huggingface_hub cache snapshot."""
    folder = config_path.parent
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    snapshot = _hub_snapshot(config_path)
    if snapshot is None:
        raise CheckpointFormatError(f"{folder} holds a config.json but none of {', '.join(WEIGHT_NAMES)}.")
    from zoo.errors import WeightsNotAvailableError
    from zoo.hub import download_file

    repo_id, revision, cache_dir = snapshot
    tried = []
    for name in WEIGHT_NAMES:
        try:
            return Path(download_file(repo_id, name, revision=revision, cache_dir=cache_dir))
        except WeightsNotAvailableError as err:
            tried.append(f"{name}: {err}")
    raise WeightsNotAvailableError(f"{repo_id}@{revision}: no weights found. " + " | ".join(tried))


def checkpoint_files(path: str | Path) -> tuple[list[Path], list[str] | None]:
    """The weight files of a checkpoint (and its keys when an index lists them).

    ``path``: one ``.safetensors`` / ``.bin`` / ``.pt`` file, a ``*.index.json`` (shards next to it,
    or fetched from the same Hub snapshot), a repo's ``config.json`` (its weights are found next to
    it or fetched from the same snapshot), or a folder holding any of them.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for name in WEIGHT_NAMES:
            if (path / name).is_file():
                return checkpoint_files(path / name)
        raise CheckpointFormatError(f"{path} holds none of {', '.join(WEIGHT_NAMES)}.")
    if path.name == "config.json" and path.is_file():
        return checkpoint_files(_weights_next_to(path))
    if not path.is_file():
        raise CheckpointFormatError(f"Checkpoint {path} does not exist; check the path.")
    if not path.name.endswith(".index.json"):
        return [path], None
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointFormatError(f"{path} is not a checkpoint index (no 'weight_map'): {err}") from err
    shards = []
    snapshot = _hub_snapshot(path)
    for name in sorted(set(weight_map.values())):
        shard = path.parent / name
        if not shard.is_file():
            if snapshot is None:
                raise CheckpointFormatError(f"{path} names the shard {name}, which is not next to it.")
            from zoo.hub import download_file

            repo_id, revision, cache_dir = snapshot
            shard = Path(download_file(repo_id, name, revision=revision, cache_dir=cache_dir))
        shards.append(shard)
    return shards, list(weight_map)


def _file_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        except Exception as err:
            raise CheckpointFormatError(f"{path} is not a readable safetensors file ({err}).") from err
    return list(_read(path))


def _read(path: Path) -> dict[str, torch.Tensor]:
    from zoo.models.checkpoints import read_checkpoint

    state = read_checkpoint(path)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise CheckpointFormatError(f"{path}: entries {others[:8]} are not tensors; expected a state dict.")
    return state


# --------------------------------------------------------------------------- loading


def convert_state_dict(state: dict[str, torch.Tensor], layout: str, *, source: str = "checkpoint"
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename one (shard of a) state dict to transformers' Llava names.

    Returns ``(converted, unexpected)``; recomputed buffers are dropped silently.
    """
    out, unexpected = {}, []
    for key, value in state.items():
        if RECOMPUTED_BUFFERS.search(key):
            continue
        new = to_transformers_key(key, layout)
        if new is None:
            unexpected.append(key)
            continue
        if new in out:
            raise CheckpointKeysError(source, hint=f"  two keys map to {new!r}.")
        out[new] = value
    return out, unexpected


def _widen_vocab(value: torch.Tensor, rows: int, key: str, source: str) -> torch.Tensor:
    if value.shape[0] == rows:
        return value
    if value.shape[0] > rows:
        raise CheckpointKeysError(source, mismatched=[(key, (rows, value.shape[1]), tuple(value.shape))], hint=(
            "  The checkpoint's vocabulary is larger than the config's text_config.vocab_size."))
    extra = value.float().mean(0, keepdim=True).to(value.dtype).expand(rows - value.shape[0], -1)
    return torch.cat([value, extra], 0)


def clip_vision_state(path: str | Path, source: str) -> dict[str, torch.Tensor]:
    """The vision-tower weights (Llava names) of a CLIPModel or CLIPVisionModel checkpoint file."""
    out, unexpected = {}, []
    for key, value in _read(Path(path)).items():
        if RECOMPUTED_BUFFERS.search(key) or CLIP_UNUSED.match(key):
            continue
        new = clip_to_transformers_key(key)
        if new is None:
            unexpected.append(key)
        else:
            out[new] = value
    if unexpected:
        raise CheckpointKeysError(source, unexpected=unexpected, hint="  Expected a CLIP checkpoint (vision_model.*).")
    return out


def _fetch_vision_tower(config: dict) -> tuple[str, str]:
    """Download the CLIP vision tower the original layout leaves out; returns (path, source)."""
    from zoo.errors import WeightsNotAvailableError
    from zoo.hub import download_file

    spec = config.get("vision_tower_weights") or {}
    repo_id, revision = spec.get("repo_id"), spec.get("revision")
    if not repo_id:
        raise ConfigError("The checkpoint has no vision-tower weights and vision_tower_weights.repo_id is unset; "
                          "set it to openai/clip-vit-large-patch14-336 (the tower LLaVA-1.5 was trained with).")
    errors = []
    for filename in spec.get("filenames") or ["model.safetensors"]:
        try:
            return download_file(repo_id, filename, revision=revision), f"{repo_id}/{filename}"
        except WeightsNotAvailableError as err:
            errors.append(str(err))
    raise WeightsNotAvailableError("Could not get the vision tower: " + " | ".join(errors))


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_dtype(config: dict) -> torch.dtype:
    """``dtype`` of a config: "auto" -> bfloat16 when a CUDA GPU is visible, else float32."""
    name = str(config.get("dtype") or "auto")
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {name!r}")
    return dtype


def _shards(files: list[Path]) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    for path in files:
        yield path, _read(path)


class _Filler:
    """Fills a model's LlavaForConditionalGeneration from pieces of state dicts; strict at ``finish``."""

    def __init__(self, model):
        self.model = model
        self.target = model.llava
        self.own = self.target.state_dict()
        self.loaded: set[str] = set()
        self.unexpected: list[str] = []
        self.mismatched: list[tuple] = []

    def take(self, state: dict[str, torch.Tensor], layout: str | None, where: str) -> None:
        """Load ``state`` (official names of ``layout``, or already converted when None)."""
        if layout is not None:
            state, extra = convert_state_dict(state, layout, source=where)
            self.unexpected.extend(extra)
        usable = {}
        for key, value in state.items():
            key = installed_key(key, self.own)
            if key not in self.own:
                self.unexpected.append(key)
                continue
            if layout == "llava" and key in (EMBED_KEY, HEAD_KEY):
                value = _widen_vocab(value, self.own[key].shape[0], key, where)
            if tuple(value.shape) != tuple(self.own[key].shape):
                self.mismatched.append((key, tuple(self.own[key].shape), tuple(value.shape)))
                continue
            usable[key] = value.to(self.own[key].dtype) if value.is_floating_point() else value
        if usable:
            # zoo.weights.load_state_dict also fills a model built on the meta device (zoo.load builds
            # official cards that way): the tensors replace the meta ones instead of being copied
            from zoo.weights import load_state_dict

            load_state_dict(self.target, usable, strict=False)
            self.loaded.update(usable)

    def has_vision(self) -> bool:
        return any(k.startswith(VISION_PREFIX) for k in self.loaded)

    def finish(self, source: str):
        config = self.model.config
        missing = [k for k in self.own if k not in self.loaded]
        if missing or self.unexpected or self.mismatched:
            hint = ""
            if self.mismatched:
                hint = (f"  The shapes do not fit this config (size {config.get('size', '?')}, language model width "
                        f"{config['text_config']['hidden_size']}): the checkpoint may be another size (7b is 4096 "
                        "wide, 13b 5120); load it with the matching card.")
            raise CheckpointKeysError(source, missing, self.unexpected, self.mismatched, hint=hint)
        if config["text_config"].get("tie_word_embeddings"):
            self.target.tie_weights()
        return self.model


def load_into(model, path: str | Path, *, source: str | None = None):
    """Load official weights at ``path`` into ``model`` (a SomLlavaModel), shard by shard, strictly."""
    source = source or str(path)
    config = model.config
    if Path(path).name == "config.json":  # a repo's config says its layout before any weight is fetched
        announced = config_layout(path)
        if announced is not None:
            check_layout(announced, config, source)
    files, index_keys = checkpoint_files(path)
    keys = index_keys if index_keys is not None else [k for f in files for k in _file_keys(f)]
    layout = detect_layout(keys)
    check_layout(layout, config, source)
    logger.info("%s: %s layout, %d file(s)", source, layout, len(files))
    filler = _Filler(model)
    for file, state in _shards(files):
        filler.take(state, layout, str(file))
        del state
    if layout == "llava" and not filler.has_vision():
        clip_path, clip_source = _fetch_vision_tower(config)
        filler.take(clip_vision_state(clip_path, clip_source), None, clip_source)
    return filler.finish(source)


def _resolve(spec: str, default_filename: str) -> Path:
    """A local file/folder, or ``org/name`` (``default_filename`` in it) / ``org/name/file`` on the Hub."""
    path = Path(str(spec)).expanduser()
    if path.exists():
        return path
    parts = str(spec).split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ConfigError(f"{spec!r} is neither an existing path nor a Hub repo id (org/name[/file]).")
    from zoo.hub import download_file

    return Path(download_file("/".join(parts[:2]), "/".join(parts[2:]) or default_filename))


def load_components(config: dict, *, language_model=None, projector=None, vision_tower=None):
    """LLaVA-1.5's starting point for visual instruction tuning, assembled strictly from its parts.

    ``language_model``: a Vicuna/Llama ``LlamaForCausalLM`` checkpoint (``model.*``, ``lm_head.weight``;
    e.g. ``lmsys/vicuna-7b-v1.5``); ``projector``: the pretraining stage's ``mm_projector.bin``
    (``model.mm_projector.{0,2}.*``; e.g. ``liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5``);
    ``vision_tower``: a CLIP checkpoint (default: ``vision_tower_weights``, openai's ViT-L/14-336).
    Each is a path or a Hub repo id. The tokenizer comes from ``tokenizer.repo_id`` or the language model's repo.
    """
    from transformers.initialization import no_init_weights

    from zoo.config import merge
    from zoo.multimodal.som_llava.model import SomLlavaModel

    if not language_model or not projector:
        raise ConfigError("model.components needs language_model and projector (and optionally vision_tower).")
    if not (config.get("tokenizer") or {}).get("repo_id") and not Path(str(language_model)).exists():
        config = merge(config, {"tokenizer": {"repo_id": str(language_model)}})
    with _default_dtype(load_dtype(config)), no_init_weights():
        model = SomLlavaModel(config)
    filler = _Filler(model)
    for spec, default in ((language_model, "config.json"), (projector, "mm_projector.bin")):
        files, _ = checkpoint_files(_resolve(spec, default))
        for file, state in _shards(files):
            filler.take(state, "llava", str(file))
    if vision_tower:
        clip_path, clip_source = _resolve(vision_tower, "model.safetensors"), str(vision_tower)
    else:
        clip_path, clip_source = _fetch_vision_tower(config)
    filler.take(clip_vision_state(checkpoint_files(clip_path)[0][0], clip_source), None, clip_source)
    return filler.finish(f"components {language_model}, {projector}, {vision_tower or clip_source}")


def load(path: str, config: dict):
    """Registry loader: (official checkpoint path, full config) -> SomLlavaModel, strict."""
    from transformers.initialization import no_init_weights

    from zoo.multimodal.som_llava.model import SomLlavaModel

    with _default_dtype(load_dtype(config)), no_init_weights():
        model = SomLlavaModel(config)
    return load_into(model, path)
