"""zoo.tools: parsers on real-format answers, the transformers / VLM / OpenAI-endpoint / SAM adapters,
and the disk cache that makes a rerun call nothing."""
import base64
import io
import json
import socket
import sys
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.errors import CheckpointKeysError, ToolError
from zoo.testing.chat_server import LoopbackChat, last_user_text
from zoo.tools import (CallCache, LLMTool, MaskProposer, OpenAIChatTool, ProposedMask, SamMaskProposer,
                       TransformersLLM, VLMTool, VQATool, as_vqa_tool, image_digest, mask_bbox, parse_final_answer,
                       parse_numbered_list, parse_score, parse_yes_no, strip_think)


# ---------------------------------------------------------------------------- parsers

SRUM_GLOBAL = """<think>
The prompt asks for a red cube left of a blue sphere. Draft: Score: 0.2 maybe.
</think>
**Layout assessment:** the cube is on the left as requested.
Score: 0.8"""

SRUM_REGION = """Region 1:
Identified Object: red cube
Score: -0.4

Region 2:
Identified Object: blue sphere
**Score:** 0.6"""

COLLABORATOR = """The caption says "a plate of seared tuna with sesame". The VQA answers confirm sesame crust (yes)
and a garnish (no). Gourmet tuna needs careful plating, which is present.
Final answer: Yes"""

SOM_LISTING = ("1. The branch of a tree with green leaves. 2. The lower body of a giraffe, partly occluded. "
               "3. A wooden fence 2.5 m tall.")


def test_strip_think():
    assert strip_think(SRUM_GLOBAL).startswith("**Layout assessment:**")
    assert strip_think("<think>a</think>b<think>c</think> final ") == "final"
    assert strip_think("<think>unfinished draft Score: 0.3") == "unfinished draft Score: 0.3"
    assert strip_think("<think>unfinished draft Score: 0.3", unclosed="drop") == ""
    assert strip_think("  plain  ") == "plain"


def test_parse_score_tolerant_and_strict():
    assert parse_score(SRUM_GLOBAL) == 0.8  # the draft inside <think> is ignored
    assert parse_score(SRUM_REGION) == -0.4 and parse_score(SRUM_REGION, which="last") == 0.6
    cases = {"Score: -0.5": -0.5, "**Score:** 0.8": 0.8, "Score - 0.7": 0.7, "score = +.5": 0.5, "Score: [0.7]": 0.7,
             "Score is 0.6": 0.6, "Score: 0.8/1.0": 0.8, "Final score: 8/10.": 0.8, "SCORE:1": 1.0}
    for text, want in cases.items():
        assert parse_score(text) == pytest.approx(want), text
    # the judges' literal format only: markdown, a + sign and a bare leading dot are refused
    assert parse_score("Score: -0.5", strict=True) == -0.5
    for text in ("**Score:** 0.8", "Score: +0.6", "Score: .5"):
        assert parse_score(text, strict=True) is None, text
    assert parse_score("Score: 0.8/1.0", strict=True) == 0.8
    # out of range, absent, other ranges
    assert parse_score("Score: 1.5") is None and parse_score("Score: 1.5", clip=True) == 1.0
    assert parse_score("Score: 1.5", default=0.0) == 0.0
    assert parse_score("The scores are unclear.") is None and parse_score("Scores: 0.5") is None
    assert parse_score("Score: 7", low=0, high=10) == 7.0
    assert parse_score("score: 0.85", low=0, high=1) == 0.85  # a DeepSeek-style [0, 1] judge


def test_parse_score_reads_whole_numbers_not_their_first_digits():
    """"0,8" used to read 0.0 and "1e-1" 1.0: a wrong score, silently, instead of the number written."""
    cases = {"Score: 0,8": 0.8, "Score: -0,25.": -0.25, "Score: 1e-1": 0.1, "Score: 5E-1/1": 0.5,
             "Score: \u22120.5": -0.5, "Score\uff1a0.5": 0.5, "Score:\u00a00.3": 0.3, "Score: 0.7.": 0.7,
             "Score: 0, the image is unrelated.": 0.0}
    for text, want in cases.items():
        assert parse_score(text) == pytest.approx(want), text
    assert parse_yes_no("Answer\uff1a yes") is True and parse_final_answer("Final answer\uff1aNo") == "No"


def test_parse_yes_no():
    for text, want in [("Yes.", True), ("**No**, the circle is blue.", False), ("The answer is no.", False),
                       ("I see a red circle. Yes, it is on the left.", True), ("Answer: TRUE", True),
                       ("<think>no wait</think>\nyes", True), ('"No"', False)]:
        assert parse_yes_no(text) is want, text
    for text in ("There is no red circle here, but maybe", "maybe", "Yes and no.", ""):
        assert parse_yes_no(text) is None, text
    assert parse_yes_no("unclear", default=False) is False


def test_parse_final_answer():
    assert parse_final_answer(COLLABORATOR) == "Yes"
    for text, want in [("**Final Answer:** no.", "No"), ('final answer - "Yes"', "Yes"), ("Final answer:\nNo", "No"),
                       ("Final answer is yes", "Yes"), ("The final answer: maybe.\nFinal answer: No", "No")]:
        assert parse_final_answer(text) == want, text
    assert parse_final_answer("Final answer: Not sure") is None
    assert parse_final_answer("Final answer: Not sure", choices=("Yes", "No", "Not sure")) == "Not sure"
    assert parse_final_answer("Final answer: yes-ish") is None
    assert parse_final_answer("Final answer: a red circle.", choices=None) == "a red circle"
    assert parse_final_answer("I think yes", default="No") == "No"


def test_parse_numbered_list():
    assert parse_numbered_list(SOM_LISTING) == ["The branch of a tree with green leaves.",
                                                "The lower body of a giraffe, partly occluded.",
                                                "A wooden fence 2.5 m tall."]
    text = "Here are the tagged items:\n1. a red ball\n2) a box of 3.5 cm\n4. a ring (tag 3 is unclear)\n"
    assert parse_numbered_list(text, with_numbers=True) == [(1, "a red ball"), (2, "a box of 3.5 cm"),
                                                            (4, "a ring (tag 3 is unclear)")]
    assert parse_numbered_list("(1) a\n(2) b") == ["a", "b"]
    assert parse_numbered_list("<think>1. draft</think>1. final") == ["final"]
    assert parse_numbered_list("no list at all, just 2. words") == []


def test_parse_numbered_list_bold_markers_and_closing_remarks():
    """Bold markers used to give no items at all; a closing paragraph used to be glued to the last item."""
    assert parse_numbered_list("**1.** a red ball\n**2.** a box") == ["a red ball", "a box"]
    assert parse_numbered_list("**1. a red ball**\n**2. a box**") == ["a red ball", "a box"]
    assert parse_numbered_list("Here:\n1. red ball\n2. box\n\nThat's all I can see.") == ["red ball", "box"]
    assert parse_numbered_list("1. red ball\n\n2. box\n   with a lid\n\n   (closed)") == \
        ["red ball", "box\n   with a lid\n\n   (closed)"]  # blank lines between items, indented continuation


# ---------------------------------------------------------------------------- masks

def test_proposed_mask_area_and_bbox():
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:7] = True
    proposal = ProposedMask(mask, score=0.9)
    assert proposal.area == 15 and proposal.bbox == (2, 1, 7, 4) and proposal.score == 0.9
    assert mask_bbox(np.zeros((3, 3), bool)) == (0, 0, 0, 0)
    with pytest.raises(ToolError, match="2-D boolean"):
        ProposedMask(np.zeros((2, 2, 2)))


# ---------------------------------------------------------------------------- transformers and VLM adapters

@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    from zoo.nn.hf_attention import from_config
    from zoo.text import build_tokenizer

    tokenizer = build_tokenizer(["a red circle is left of a blue square", "USER: ASSISTANT: what shape ?"],
                                special_tokens=["<image>"], kind="wordlevel", vocab_size=60, add_bos=True)
    torch.manual_seed(0)
    model = from_config(LlamaForCausalLM, LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=None))
    return model, tokenizer


def _greedy(model, ids, steps):
    ids = torch.tensor([ids])
    for _ in range(steps):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, -steps:].tolist()


def test_transformers_llm_batches_equal_single_greedy_runs(tiny_lm):
    model, tokenizer = tiny_lm
    tool = TransformersLLM(model, tokenizer, max_new_tokens=4, batch_size=3)
    assert isinstance(tool, LLMTool)
    prompts = ["a red circle", "what shape is left of a blue square ?", "blue"]
    batch = tool.generate_batch(prompts)
    model.train()  # the tool runs in eval mode and gives every module's mode back
    model.model.embed_tokens.eval()  # a frozen part inside a training model keeps its own flag
    singles = [tool.generate(p) for p in prompts]
    assert model.training and model.model.layers[0].training and not model.model.embed_tokens.training
    assert batch == singles
    for prompt, text in zip(prompts, batch):
        with torch.no_grad():
            want = _greedy(model.eval(), tokenizer(prompt)["input_ids"], 4)
        assert text == tokenizer.decode(want, skip_special_tokens=True).strip()
    # a zoo.text template renders chat messages (vicuna_v1, as LLaVA prompts)
    templated = TransformersLLM(model, tokenizer, template="vicuna_v1", max_new_tokens=2)
    from zoo.text import VICUNA_V1

    prompt = VICUNA_V1.render([{"from": "human", "value": "what shape ?"}], add_generation_prompt=True)
    with torch.no_grad():
        want = _greedy(model, tokenizer(prompt)["input_ids"], 2)
    assert templated.generate([{"role": "user", "content": "what shape ?"}]) == tokenizer.decode(
        want, skip_special_tokens=True).strip()
    assert "vicuna_v1" in templated.tool_id and templated.tool_id != tool.tool_id
    with pytest.raises(ToolError, match="no chat template"):
        tool.generate([{"role": "user", "content": "hi"}])


def test_transformers_llm_uses_the_tokenizers_chat_template(tiny_lm):
    model, tokenizer = tiny_lm
    import copy

    chatty = copy.deepcopy(tokenizer)
    chatty.chat_template = ("{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }} {% endfor %}"
                            "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    tool = TransformersLLM(model, chatty, system="be brief", max_new_tokens=2)
    assert tool._render("what shape ?") == ("SYSTEM: be brief USER: what shape ? ASSISTANT:", False)
    with torch.no_grad():
        want = _greedy(model, chatty("SYSTEM: be brief USER: what shape ? ASSISTANT:",
                                     add_special_tokens=False)["input_ids"], 2)
    assert tool.generate("what shape ?") == chatty.decode(want, skip_special_tokens=True).strip()


class EchoVLM:
    """A duck-typed VLM: generate(image, prompt) -> text mentioning the image size."""

    def __init__(self):
        self.calls = []

    def generate(self, image, prompt, **kw):
        self.calls.append((image.size, prompt, kw))
        return [f" {image.size[0]}px: {prompt} "]


def test_vlm_tool_wraps_any_generate_image_prompt_model():
    vlm = EchoVLM()
    tool = VLMTool(vlm, question_format="Q: {question} A:", caption_prompt="Caption:", max_new_tokens=5)
    assert isinstance(tool, VQATool) and as_vqa_tool(vlm).model is vlm and as_vqa_tool(tool) is tool
    image = Image.new("RGB", (12, 8), "red")
    assert tool.answer(image, "what colour?") == "12px: Q: what colour? A:"
    assert tool.caption(image, max_new_tokens=9) == "12px: Caption:"
    assert vlm.calls[-1][2] == {"max_new_tokens": 9}
    with pytest.raises(ToolError, match="generate"):
        VLMTool(object())
    with pytest.raises(ToolError, match="not a VQA tool"):
        as_vqa_tool(42)


# ---------------------------------------------------------------------------- OpenAI-compatible endpoint

@pytest.fixture
def server():
    with LoopbackChat(respond=lambda body: f"echo: {last_user_text(body)}", api_key="sk-test") as chat:
        yield chat


def test_openai_chat_tool_sends_the_openai_request(server, monkeypatch):
    monkeypatch.setenv("ZOO_TEST_KEY", "sk-test")
    tool = OpenAIChatTool(server.base_url, model="judge-1", api_key_env="ZOO_TEST_KEY", system="You judge.",
                          max_tokens=32, extra={"seed": 7})
    assert isinstance(tool, LLMTool) and isinstance(tool, VQATool)
    assert tool.generate("Is it red?") == "echo: Is it red?"
    body = server.requests[-1]
    assert body == {"model": "judge-1", "temperature": 0.0, "max_tokens": 32, "seed": 7,
                    "messages": [{"role": "system", "content": "You judge."},
                                 {"role": "user", "content": "Is it red?"}]}
    assert server.headers[-1]["Authorization"] == "Bearer sk-test"
    assert tool.generate_batch(["a", "b"], temperature=0.5) == ["echo: a", "echo: b"]
    assert server.requests[-1]["temperature"] == 0.5
    image = Image.new("RGB", (5, 4), (10, 200, 30))
    assert tool.answer(image, "What colour?") == "echo: What colour?"
    part = server.requests[-1]["messages"][-1]["content"][1]
    png = base64.b64decode(part["image_url"]["url"].removeprefix("data:image/png;base64,"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(image))
    assert "sk-test" not in repr(tool) and "sk-test" not in tool.tool_id


def test_openai_chat_tool_errors_are_clear(server, monkeypatch):
    monkeypatch.delenv("ZOO_TEST_KEY", raising=False)
    with pytest.raises(ToolError, match=r"\$ZOO_TEST_KEY is not set"):
        OpenAIChatTool(server.base_url, model="m", api_key_env="ZOO_TEST_KEY").generate("x")
    with pytest.raises(ToolError, match=r"refused the API key \(HTTP 401: Incorrect API key provided.\)"):
        OpenAIChatTool(server.base_url, model="m", api_key="wrong", max_retries=0).generate("x")
    tool = OpenAIChatTool(server.base_url, model="m", api_key="sk-test", max_retries=2, backoff=0.01)
    server.fail_next(400, message="context too long")
    with pytest.raises(ToolError, match="HTTP 400: context too long"):
        tool.generate("x")
    server.garble_next()
    with pytest.raises(ToolError, match="not an OpenAI chat completion"):
        tool.generate("x")
    with pytest.raises(ToolError, match="must start with http"):
        OpenAIChatTool("localhost:1/v1")


def test_openai_chat_tool_retries_then_succeeds_or_gives_up(server, caplog):
    tool = OpenAIChatTool(server.base_url, model="m", api_key="sk-test", max_retries=2, backoff=0.01, timeout=2)
    before = len(server.requests)
    server.fail_next(503, times=1)
    server.fail_next(429, times=1, retry_after=0)
    assert tool.generate("hello") == "echo: hello"
    assert len(server.requests) - before == 3
    assert "HTTP 503" in caplog.text and "retrying" in caplog.text
    server.fail_next(500, times=3)
    with pytest.raises(ToolError, match="failed 3 times; last: HTTP 500: scripted failure"):
        tool.generate("hello")
    slow = OpenAIChatTool(server.base_url, model="m", api_key="sk-test", max_retries=1, backoff=0.01, timeout=0.3)
    server.delay_next(1.0, times=2)
    with pytest.raises(ToolError, match=r"failed 2 times; last: no answer within 0.3 s"):
        slow.generate("hello")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = OpenAIChatTool(f"http://127.0.0.1:{port}/v1", model="m", api_key_env=None, max_retries=1, backoff=0.01)
    with pytest.raises(ToolError, match="cannot connect"):
        closed.generate("hello")


# ---------------------------------------------------------------------------- segment-anything

def _tiny_sam(checkpoint=None):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    return Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2,
                                      out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      use_rel_pos=True, window_size=0, global_attn_indexes=()),
        prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=32, iou_head_depth=1, iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def test_sam_adapter_errors_without_package_or_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ToolError, match="needs the segment-anything package"):
        SamMaskProposer(tmp_path / "sam.pth")
    monkeypatch.undo()
    pytest.importorskip("segment_anything")
    with pytest.raises(ToolError, match="sam_missing.pth' does not exist"):
        SamMaskProposer(tmp_path / "sam_missing.pth")


def test_sam_adapter_runs_the_real_generator_on_a_tiny_sam(tmp_path, monkeypatch):
    segment_anything = pytest.importorskip("segment_anything")
    monkeypatch.setitem(segment_anything.sam_model_registry, "zoo_tiny", _tiny_sam)
    torch.manual_seed(0)
    weights = _tiny_sam().state_dict()
    torch.save(weights, tmp_path / "tiny_sam.pth")
    proposer = SamMaskProposer(tmp_path / "tiny_sam.pth", model_type="zoo_tiny", device="cpu", points_per_side=2,
                               pred_iou_thresh=-10.0, stability_score_thresh=-10.0, box_nms_thresh=1.0)
    assert isinstance(proposer, MaskProposer)
    assert torch.equal(proposer.model.mask_decoder.iou_prediction_head.layers[0].weight,
                       weights["mask_decoder.iou_prediction_head.layers.0.weight"])
    image = Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8))
    proposals = proposer.propose(image)
    assert len(proposals) == 12  # 2 x 2 points x 3 multimask outputs, nothing filtered
    for p in proposals:
        assert p.mask.shape == (48, 64) and p.mask.dtype == bool
        assert p.area == int(p.mask.sum()) and p.bbox == mask_bbox(p.mask)
        assert "stability_score" in p.extra and len(p.extra["sam_bbox_xywh"]) == 4
    broken = dict(weights)
    broken.pop("mask_decoder.iou_token.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointKeysError, match="mask_decoder.iou_token.weight"):
        SamMaskProposer(tmp_path / "broken.pth", model_type="zoo_tiny", device="cpu")
    with pytest.raises(ToolError, match="unknown SAM model_type 'vit_x'"):
        SamMaskProposer(tmp_path / "tiny_sam.pth", model_type="vit_x")


# ---------------------------------------------------------------------------- cache

class CountingTool:
    """An LLM, VQA tool and mask proposer that counts its calls."""

    tool_id = "counting:v1"

    def __init__(self):
        self.calls = 0

    def generate(self, prompt, **kw):
        self.calls += 1
        return f"out({prompt},{kw.get('temperature', 0)})"

    def generate_batch(self, prompts, **kw):
        return [self.generate(p, **kw) for p in prompts]

    def answer(self, image, question, **kw):
        self.calls += 1
        return f"{image_digest(image)[:6]}:{question}"

    def caption(self, image, **kw):
        self.calls += 1
        return "a caption"

    def propose(self, image):
        self.calls += 1
        mask = np.zeros((5, 7), dtype=bool)
        mask[1:3, 2:6] = True
        return [ProposedMask(mask, score=0.75, extra={"k": 1}), ProposedMask(~mask, score=0.5)]


def _pipeline_of_calls(tool, image):
    return [tool.generate("q1"), tool.generate("q1", temperature=0.7), *tool.generate_batch(["q2", "q3"]),
            tool.answer(image, "colour?"), tool.caption(image), tool.propose(image)]


def test_call_cache_makes_a_rerun_call_nothing(tmp_path):
    image = Image.new("RGB", (7, 5), "blue")
    first_tool = CountingTool()
    cache = CallCache(tmp_path / "cache")
    first = _pipeline_of_calls(cache.wrap(first_tool), image)
    assert first_tool.calls == 7 and cache.stats() == {"hits": 0, "misses": 7}
    again_tool = CountingTool()
    rerun = CallCache(tmp_path / "cache")
    second = _pipeline_of_calls(rerun.wrap(again_tool), image)
    assert again_tool.calls == 0 and rerun.stats() == {"hits": 7, "misses": 0}
    assert second[:6] == first[:6]
    for a, b in zip(first[6], second[6]):  # mask proposals round-trip exactly
        assert np.array_equal(a.mask, b.mask) and (a.score, a.area, a.bbox, a.extra) == (b.score, b.area, b.bbox,
                                                                                          b.extra)
    # the same picture given as a file hashes the same; a different picture or prompt is a new call
    image.save(tmp_path / "blue.png")
    wrapped = rerun.wrap(again_tool)
    assert wrapped.answer(tmp_path / "blue.png", "colour?") == first[4] and again_tool.calls == 0
    wrapped.answer(Image.new("RGB", (7, 5), "red"), "colour?")
    wrapped.generate_batch(["q2", "q4", "q3"])
    assert again_tool.calls == 2
    # a different tool id never shares answers
    other = CallCache(tmp_path / "cache").wrap(CountingTool(), tool_id="counting:v2")
    other.generate("q1")
    assert other.tool.calls == 1
    record = json.loads(next((tmp_path / "cache").rglob("*.json")).read_text())
    assert {"key", "tool", "method", "prompt", "settings", "answer"} <= set(record)


def test_call_cache_needs_a_tool_id_and_survives_a_broken_entry(tmp_path):
    cache = CallCache(tmp_path)

    class Anonymous:
        def generate(self, prompt):
            return prompt

    with pytest.raises(ToolError, match="has no tool_id"):
        cache.wrap(Anonymous())
    tool = CountingTool()
    wrapped = cache.wrap(tool)
    wrapped.generate("q")
    entry = next(tmp_path.rglob("*.json"))
    entry.write_text("{half")
    assert wrapped.generate("q") == "out(q,0)" and tool.calls == 2
    with pytest.raises(ToolError, match="has no propose"):
        cache.wrap(Anonymous(), tool_id="anon").propose(Image.new("RGB", (2, 2)))
