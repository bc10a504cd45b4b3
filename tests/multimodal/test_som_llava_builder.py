"""SoM-LLaVA configs: the 7b/13b shapes (built on the meta device, nothing downloaded), tiny, errors."""
from __future__ import annotations

import pytest
import torch

from zoo.errors import ConfigError
from zoo.multimodal.som_llava.builder import make_config
from zoo.multimodal.som_llava.model import SomLlavaModel
from zoo.registry import get_family


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size,total,projector", [("7b", 7_063_427_072, 20_979_712),
                                                  ("13b", 13_351_494_656, 31_467_520)])
def test_paper_sizes_have_llava_1_5_shapes(size, total, projector):
    with torch.device("meta"):
        model = SomLlavaModel(make_config(size))
    # CLIP ViT-L/14-336 vision tower 303,507,456; projector 1024->d->d with biases; Llama-2 with 32064 rows.
    # 7,063,427,072 is llava-hf/llava-1.5-7b-hf's parameter count.
    assert _count(model.vision_tower) == 303_507_456
    assert _count(model.projector) == projector
    assert _count(model) == total
    assert model.num_image_tokens == 576 and model.image_token_id == 32000 and model.pad_token_id == 32001
    assert model.llava.config.vision_feature_layer == -2
    assert model.llava.config.text_config._attn_implementation == "zoo"
    assert model.llava.config.vision_config._attn_implementation == "zoo"


def test_tiny_builds_and_runs_on_cpu():
    family = get_family("som-llava")
    model = family.build(family.make_config("tiny"))
    ids = torch.tensor([[1, 5] + [3] * 16 + [7, 8]])
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32), labels=ids)
    assert out.logits.shape == (1, 20, 128) and torch.isfinite(out.loss)


def test_bad_configs_are_explained():
    with pytest.raises(ConfigError, match="mlp2x_gelu"):
        SomLlavaModel(make_config("tiny", mm_projector_type="linear"))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        SomLlavaModel(make_config("tiny", image_token_id=500))
    with pytest.raises(ConfigError, match="Unknown config key"):
        make_config("tiny", vision_tower="clip")
