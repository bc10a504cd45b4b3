"""SoM-LLaVA model API at tiny size: tokenizer, LLaVA preprocessing, batched generation, listing, VQA tool."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.errors import ConfigError
from zoo.multimodal.som_llava.builder import CLIP_MEAN, CLIP_STD, make_config
from zoo.multimodal.som_llava.model import SomLlavaModel

TEXTS = ["A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
         "detailed, and polite answers to the user's questions. USER: ASSISTANT:",
         "What color is the object tagged 2? Red. Is there a blue square in the image? Yes No",
         "1. A red circle.\n2. A striped blue square.\n3. Not sure: possibly a green star, mostly hidden."]


@pytest.fixture(scope="module")
def model():
    from zoo.config import merge
    from zoo.text import build_tokenizer

    tokenizer = build_tokenizer(TEXTS * 3, special_tokens=["<image>"], kind="bpe", vocab_size=300, add_bos=True)
    config = merge(make_config("tiny"), {
        "text_config": {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        "image_token_id": tokenizer.convert_tokens_to_ids("<image>")})
    torch.manual_seed(0)
    built = SomLlavaModel(config).eval()
    built.set_tokenizer(tokenizer)
    return built


def scene(seed, size=(48, 40), mode="RGB"):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    return image.convert(mode)


def test_prompt_without_image_placeholder_gets_one_in_front(model):
    a = model.encode_prompts(["What is tagged 2?"])
    b = model.encode_prompts(["<image>\nWhat is tagged 2?"])
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert int((a["input_ids"] == model.image_token_id).sum()) == model.num_image_tokens == 16
    text = model.tokenizer.decode(a["input_ids"][0][a["input_ids"][0] != model.image_token_id])
    assert text.startswith("<s>A chat between") and text.rstrip().endswith("ASSISTANT:")
    with pytest.raises(ConfigError, match="2 <image>"):
        model.encode_prompts(["<image> and <image>"])


def test_llava_pad_preprocessing(model):
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    pixels = model.preprocess_images([wide])
    assert pixels.shape == (1, 3, 32, 32)
    fill = [(int(m * 255) / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]  # (122, 116, 104) normalised
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor(fill), atol=1e-5, rtol=0)
    red = [(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], (0 - CLIP_MEAN[1]) / CLIP_STD[1], (0 - CLIP_MEAN[2]) / CLIP_STD[2]]
    torch.testing.assert_close(pixels[0, :, 16, 16], torch.tensor(red), atol=1e-5, rtol=0)
    modes = model.preprocess_images([scene(1, mode="L"), scene(2, mode="RGBA"), np.asarray(scene(3))])
    assert modes.shape == (3, 3, 32, 32) and torch.isfinite(modes).all()


def test_batched_generation_equals_one_at_a_time(model):
    images = [scene(1), scene(2, (30, 60))]
    prompts = ["What color is the object tagged 2?", "Is there a blue square in the image? Answer yes or no."]
    batched, tokens = model.generate(images, prompts, max_new_tokens=6, return_tokens=True)
    assert isinstance(batched, list) and len(batched) == 2 and tokens.shape[0] == 2
    for image, prompt, text, row in zip(images, prompts, batched, tokens):
        single, single_tokens = model.generate(image, prompt, max_new_tokens=6, return_tokens=True)
        assert single == text
        assert torch.equal(single_tokens[0], row[: single_tokens.shape[1]])
    assert not (tokens == model.image_token_id).any()  # suppressed
    with pytest.raises(ConfigError, match="one image per prompt"):
        model.generate([scene(1)], ["a", "b"])


def test_generate_runs_in_eval_mode_and_restores_every_flag(model):
    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, args: seen.append(m.training))
    model.train()
    model.vision_tower.eval()  # a frozen tower inside a training model keeps its own flag
    try:
        first = model.generate(scene(3), "What color is the object tagged 2?", max_new_tokens=4)
        assert seen and not any(seen)
        assert model.training and not model.vision_tower.training and torch.is_grad_enabled()
        assert model.generate(scene(3), "What color is the object tagged 2?", max_new_tokens=4) == first
    finally:
        hook.remove()
        model.eval()


def test_zoo_format_round_trip_keeps_the_tokenizer(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "tiny")
    loaded = zoo.load(str(folder))
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert loaded.generate(scene(4), "What is tagged 1?", max_new_tokens=5) == \
        model.generate(scene(4), "What is tagged 1?", max_new_tokens=5)


def test_tokenizer_that_disagrees_with_the_config_is_an_error(model):
    from zoo.text import build_tokenizer

    other = build_tokenizer(TEXTS, special_tokens=["<x>", "<image>"], kind="bpe", vocab_size=300)
    with pytest.raises(ConfigError, match="image_token_id"):
        model.set_tokenizer(other)
    bare = SomLlavaModel(make_config("tiny"))
    with pytest.raises(ConfigError, match="no tokenizer"):
        bare.tokenizer


def test_list_items_tags_the_image_and_parses_the_numbered_answer(model, monkeypatch):
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    masks = [np.zeros((64, 64), bool), np.zeros((64, 64), bool)]
    masks[0][5:20, 5:20] = True
    masks[1][30:60, 30:60] = True
    seen = {}

    def fake_generate(images, prompts, **kwargs):
        seen["image"], seen["prompt"] = images, prompts
        return "Here they are:\n1. A red circle.\n2. Not sure: possibly a blue square."

    monkeypatch.setattr(model, "generate", fake_generate)
    items, tagged = model.list_items(image, masks, resize=None, min_area=50, font_size=6, return_tagged=True)
    assert items == [("1", "A red circle."), ("2", "Not sure: possibly a blue square.")]
    assert [t.mask_index for t in tagged.tags] == [0, 1] and seen["image"] is tagged.image
    assert seen["prompt"].startswith("I have labeled a bright numeric ID")


def test_vqa_tool_adds_the_short_answer_instruction(model, monkeypatch):
    prompts = []
    monkeypatch.setattr(model, "generate", lambda image, prompt, **kw: prompts.append(prompt) or "Yes")
    tool = model.as_vqa_tool()
    assert tool.answer(scene(1), "Is there a red circle?") == "Yes"
    assert prompts[-1] == "Is there a red circle?\nAnswer the question using a single word or phrase."
    assert tool.caption(scene(1)) == "Yes"
