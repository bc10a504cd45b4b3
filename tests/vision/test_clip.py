"""The clip family: open_clip's CLIP with attention through zoo.nn.attention, the open_clip loader,
ClipLoss training through the engine, retrieval metrics, zoo-format round trip."""
from __future__ import annotations

import pytest
import torch
from open_clip.model import CLIP

import zoo
from zoo.errors import CheckpointKeysError
from zoo.registry import get_family
from zoo.vision.clip.evaluate import retrieval
from zoo.vision.clip.model import ZooMultiheadAttention

SMALL = {"model_cfg.embed_dim": 16, "model_cfg.vision_cfg.width": 32, "model_cfg.vision_cfg.layers": 1,
         "model_cfg.vision_cfg.head_width": 16, "model_cfg.vision_cfg.image_size": 32,
         "model_cfg.text_cfg.width": 32, "model_cfg.text_cfg.heads": 2, "model_cfg.text_cfg.layers": 1,
         "model_cfg.text_cfg.context_length": 16, "preprocess_cfg.size": 32}


def _small(seed=0):
    family = get_family("clip")
    torch.manual_seed(seed)
    return family.build(family.make_config("tiny", SMALL)).eval()


def _plain_open_clip(model):
    cfg = model.config["model_cfg"]
    plain = CLIP(embed_dim=cfg["embed_dim"], vision_cfg=dict(cfg["vision_cfg"]), text_cfg=dict(cfg["text_cfg"]))
    return plain


def test_routed_attention_equals_open_clip():
    model = _small()
    plain = _plain_open_clip(model)
    plain.load_state_dict({k[len("clip."):]: v for k, v in model.state_dict().items()})
    plain.eval()
    assert not any(type(m) is torch.nn.MultiheadAttention for m in model.modules())
    assert sum(isinstance(m, ZooMultiheadAttention) for m in model.modules()) == 2
    pixels = torch.randn(3, 3, 32, 32)
    tokens = model.tokenize(["a red circle", "two blue squares and a green star", ""])
    with torch.no_grad():
        torch.testing.assert_close(model.clip.encode_image(pixels), plain.encode_image(pixels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.clip.encode_text(tokens), plain.encode_text(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
def test_zoo_multihead_attention_masks_match_torch(batch_first):
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    ours = ZooMultiheadAttention.from_torch(reference).eval()
    x = torch.randn(2, 5, 8) if batch_first else torch.randn(5, 2, 8)
    y = torch.randn(2, 7, 8) if batch_first else torch.randn(7, 2, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # torch: True = blocked
    float_mask = torch.zeros(5, 5).masked_fill(causal, float("-inf"))
    padding = torch.tensor([[False] * 6 + [True], [False] * 7])
    cases = [dict(query=x, key=x, value=x, attn_mask=causal), dict(query=x, key=x, value=x, attn_mask=float_mask),
             dict(query=x, key=y, value=y, key_padding_mask=padding)]
    for case in cases:
        expected = reference(**case, need_weights=False)[0]
        torch.testing.assert_close(ours(**case)[0], expected, atol=1e-5, rtol=1e-5)


def test_loader_reads_open_clip_state_dict_and_rejects_a_bad_key(tmp_path):
    from safetensors.torch import save_file

    from zoo.vision.clip.loader import load

    reference = _small(seed=3)
    plain = _plain_open_clip(reference)
    plain.load_state_dict({k[len("clip."):]: v for k, v in reference.state_dict().items()})
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.state_dict().items()}}, path)
    model = load(path, get_family("clip").make_config("tiny", SMALL))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    bad = dict(plain.state_dict())
    bad["visual.proj_typo"] = bad.pop("visual.proj")
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointKeysError) as error:
        load(tmp_path / "bad.safetensors", get_family("clip").make_config("tiny", SMALL))
    assert "clip.visual.proj" in error.value.missing and "clip.visual.proj_typo" in error.value.unexpected


class _Fixed:
    """A stand-in embedder: image i and caption i get hand-made vectors."""

    def __init__(self, images, texts):
        self.images, self.texts = torch.tensor(images, dtype=torch.float), torch.tensor(texts, dtype=torch.float)

    def encode_image(self, paths, batch_size=64):
        return self.images[: len(paths)]

    def encode_text(self, captions):
        return self.texts[: len(captions)]


def test_retrieval_counts_equal_captions_as_hits():
    rows = [{"path": "a", "caption": "a red circle"}, {"path": "b", "caption": "a red circle"},
            {"path": "c", "caption": "a blue square"}]
    # image 0 -> caption 1 (same text: a hit); image 1 -> caption 2 (miss); image 2 -> caption 2 (hit)
    model = _Fixed([[0, 1, 0], [0, 0, 1], [0, 0, 1]], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    report = retrieval(model, rows)
    assert report["image_to_text_r1"] == pytest.approx(2 / 3)
    # caption 0 -> image 0 (hit, argmax tie resolved to the first), 1 -> image 0 (hit), 2 -> image 1 (miss)
    assert report["text_to_image_r1"] == pytest.approx(2 / 3)
    assert report["chance_image_to_text"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)


def test_clip_loss_falls_through_the_engine_and_round_trips(tmp_path, loopback_hub):
    from zoo.data.shapes import demo_manifest
    from zoo.train import load_recipe, run

    overrides = [f"model.overrides.{k}={v}" for k, v in SMALL.items()] + [
        "data.train=demo", "data.eval=null", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=25",
        "train.batch_size=16", "train.log_every=1", "train.ckpt_every=0", "train.tensorboard=false",
        "train.progress=false", "optim.lr=3e-3"]
    config = load_recipe(None, overrides, family="clip")
    final = run(config)
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    from zoo.data import read_manifest

    model = zoo.load(str(final))
    images = [r["path"] for r in read_manifest(demo_manifest())[:4]]
    model.push_to_hub("alice/shapes-clip")
    again = zoo.load("hf-hub:alice/shapes-clip")
    assert torch.equal(model.encode_image(images), again.encode_image(images))
    assert torch.equal(model.encode_text(["a red circle"]), again.encode_text(["a red circle"]))
    assert model.encode_image(images).shape == (4, 16)
    torch.testing.assert_close(model.encode_text(["a red circle"]).norm(dim=-1), torch.ones(1))
