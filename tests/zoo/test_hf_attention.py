"""attn_implementation="zoo" equals "sdpa" and "eager" for the transformers bases families build on.

Tiny random Llama, Qwen2, Phi, Llava (Llama + CLIP vision), CLIP vision and SigLIP vision models:
training-mode logits, loss and every gradient (right and left padding), greedy cached generation
with left padding (identical ids), 4-D custom masks (omni-attention, packed block-diagonal), and
no dense mask when nothing is masked. zoo runs on its SDPA backend and on its math reference.
"""
import copy

import pytest
import torch
from transformers import (CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration, PhiConfig, PhiForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          SiglipVisionConfig, SiglipVisionModel)

import zoo.nn.hf_attention as hf_attention
from zoo.errors import ConfigError
from zoo.nn.hf_attention import from_config, register, zoo_attention_forward

ATOL = 1e-5
VOCAB = 101
IMAGE_TOKEN = 100
IMAGE_TOKENS = 16  # (32 / 8) ** 2 patches; the CLS feature is dropped ("default" strategy)
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def llama_config():
    return LlamaConfig(**COMMON, num_key_value_heads=2)


def qwen2_config():
    return Qwen2Config(**COMMON, num_key_value_heads=2)


def phi_config():
    return PhiConfig(**COMMON, partial_rotary_factor=0.5, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)


def clip_vision_config():
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=32, patch_size=8, attention_dropout=0.0)


def siglip_vision_config():
    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, attention_dropout=0.0)


def llava_config():
    return LlavaConfig(vision_config=clip_vision_config().to_dict(), text_config=llama_config().to_dict(),
                       image_token_id=IMAGE_TOKEN, projector_hidden_act="gelu", vision_feature_layer=-2,
                       image_seq_length=IMAGE_TOKENS)


LMS = {"llama": (LlamaForCausalLM, llama_config), "qwen2": (Qwen2ForCausalLM, qwen2_config),
       "phi": (PhiForCausalLM, phi_config), "llava": (LlavaForConditionalGeneration, llava_config)}
ENCODERS = {"clip_vision": (CLIPVisionModel, clip_vision_config),
            "siglip_vision": (SiglipVisionModel, siglip_vision_config)}
ZOO_BACKENDS = ["sdpa", "math"]


def trio(model_class, make_config):
    """The same random weights under zoo, sdpa and eager attention."""
    torch.manual_seed(0)
    models = {"zoo": from_config(model_class, make_config())}
    state = models["zoo"].state_dict()
    for impl in ("sdpa", "eager"):
        models[impl] = model_class._from_config(make_config(), attn_implementation=impl)
        models[impl].load_state_dict(state)
    for impl, model in models.items():
        assert model.config._attn_implementation == impl
    return models


def lm_inputs(name, padding):
    """[3, T] ids and padding mask for rows of 12, 8 and 5 text tokens (llava: + 16 image tokens after the
    first text token, and three images)."""
    g = torch.Generator().manual_seed(1)
    image = [IMAGE_TOKEN] * IMAGE_TOKENS if name == "llava" else []
    rows = []
    for n in (12, 8, 5):
        text = torch.randint(3, IMAGE_TOKEN, (n,), generator=g).tolist()
        rows.append(text[:1] + image + text[1:])
    width = max(map(len, rows))
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding == "right" else slice(width - len(row), width)
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    extra = {"pixel_values": torch.randn(3, 3, 32, 32, generator=g)} if name == "llava" else {}
    return ids, mask, extra


def run_training(model, ids, mask, extra):
    labels = ids.masked_fill(mask == 0, -100).masked_fill(ids == IMAGE_TOKEN, -100)
    first = mask.argmax(dim=1)  # a left-padded row's first token is predicted from padding: not scored
    labels[torch.arange(len(ids)), first] = -100
    model.train()
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, **extra)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def assert_same(got, want, mask, what):
    keep = mask.bool()
    torch.testing.assert_close(got[0][keep], want[0][keep], atol=ATOL, rtol=0, msg=f"{what}: logits")
    torch.testing.assert_close(got[1], want[1], atol=ATOL, rtol=0, msg=f"{what}: loss")
    assert got[2].keys() == want[2].keys() and len(got[2]) > 0
    for key in want[2]:
        torch.testing.assert_close(got[2][key], want[2][key], atol=ATOL, rtol=0, msg=f"{what}: grad of {key}")


class Spy:
    """Records how hf_attention calls zoo.nn.attention: (query length, causal, bias shape or None)."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = hf_attention.attention

        def spy(q, k, v, **kw):
            bias = kw.get("bias")
            self.calls.append((q.shape[1], kw["causal"], None if bias is None else tuple(bias.shape)))
            return original(q, k, v, **kw)

        monkeypatch.setattr(hf_attention, "attention", spy)


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch):
    monkeypatch.delenv("ZOO_ATTENTION", raising=False)


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("name", list(LMS))
def test_training_zoo_equals_sdpa_and_eager(monkeypatch, name, padding):
    models = trio(*LMS[name])
    ids, mask, extra = lm_inputs(name, padding)
    want = {impl: run_training(models[impl], ids, mask, extra) for impl in ("sdpa", "eager")}
    spy = Spy(monkeypatch)
    for backend in ZOO_BACKENDS:
        monkeypatch.setenv("ZOO_ATTENTION", backend)
        got = run_training(models["zoo"], ids, mask, extra)
        assert torch.isfinite(got[0]).all()  # fully masked (left-pad) rows give zeros, not NaN
        for impl in ("sdpa", "eager"):
            assert_same(got, want[impl], mask, f"{name} {padding}-padded, zoo[{backend}] vs {impl}")
    # every attention went through zoo.nn.attention: layers x backends calls (+ 2 vision layers for llava)
    layers = 2 + (2 if name == "llava" else 0)
    assert len(spy.calls) == layers * len(ZOO_BACKENDS)


@pytest.mark.parametrize("name", list(LMS))
def test_cached_generate_left_padding_identical_ids(monkeypatch, name):
    models = trio(*LMS[name])
    ids, mask, extra = lm_inputs(name, "left")
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None, output_scores=True,
                    return_dict_in_generate=True)
    want = {impl: models[impl].eval().generate(input_ids=ids, attention_mask=mask, **extra, **settings)
            for impl in ("sdpa", "eager")}
    assert torch.equal(want["sdpa"].sequences, want["eager"].sequences)
    for backend in ZOO_BACKENDS:
        monkeypatch.setenv("ZOO_ATTENTION", backend)
        got = models["zoo"].eval().generate(input_ids=ids, attention_mask=mask, **extra, **settings)
        assert got.sequences.shape == (3, ids.shape[1] + 8)
        for impl in ("sdpa", "eager"):
            assert torch.equal(got.sequences, want[impl].sequences), f"{name} zoo[{backend}] vs {impl}"
            for step, (a, b) in enumerate(zip(got.scores, want[impl].scores)):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"{name} step {step} vs {impl}")


def test_generate_with_static_cache_matches_dynamic():
    models = trio(*LMS["llama"])
    ids, mask, _ = lm_inputs("llama", "left")
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    want = models["sdpa"].eval().generate(input_ids=ids, attention_mask=mask, **settings)
    got = models["zoo"].eval().generate(input_ids=ids, attention_mask=mask, cache_implementation="static", **settings)
    assert torch.equal(got, want)
    # no padding: the static-cache prefill runs causal with no mask (unused cache slots dropped)
    full = torch.ones(1, 7, dtype=torch.long)
    want = models["sdpa"].generate(input_ids=ids[:1, :7], attention_mask=full, **settings)
    got = models["zoo"].generate(input_ids=ids[:1, :7], attention_mask=full, cache_implementation="static", **settings)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_vision_encoders_zoo_equals_sdpa_and_eager(monkeypatch, name):
    models = trio(*ENCODERS[name])
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def run(model):
        model.train()
        model.zero_grad()
        out = model(pixel_values=pixels)
        (out.last_hidden_state.square().mean() + out.pooler_output.sum()).backward()
        return out.last_hidden_state.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                if p.grad is not None}

    want = {impl: run(models[impl]) for impl in ("sdpa", "eager")}
    spy = Spy(monkeypatch)
    for backend in ZOO_BACKENDS:
        monkeypatch.setenv("ZOO_ATTENTION", backend)
        hidden, grads = run(models["zoo"])
        for impl in ("sdpa", "eager"):
            torch.testing.assert_close(hidden, want[impl][0], atol=ATOL, rtol=0)
            assert grads.keys() == want[impl][1].keys()
            for key, grad in grads.items():
                torch.testing.assert_close(grad, want[impl][1][key], atol=ATOL, rtol=0, msg=f"{name} grad {key}")
    # bidirectional and unpadded: no mask at all reaches the attention
    assert spy.calls and all(causal is False and bias is None for _, causal, bias in spy.calls)


def test_no_dense_mask_when_nothing_is_masked(monkeypatch):
    models = trio(*LMS["llama"])
    model = models["zoo"]
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    spy = Spy(monkeypatch)
    model.train()
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    assert spy.calls == [(9, True, None)] * 2  # causal flag, no mask
    spy.calls.clear()
    model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    # prefill: causal with no mask; each decode step: one query over the cache, no mask
    assert spy.calls == [(9, True, None)] * 2 + [(1, False, None)] * 4
    # padding: now a boolean keep-mask is needed, and only then
    spy.calls.clear()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0,
                   eos_token_id=None)
    assert [c[1:] for c in spy.calls] == [(False, (2, 1, 9, 9))] * 2 + [(False, (2, 1, 1, 10))] * 2


def omni_mask(batch, length, prefix):
    """Show-o style MMU mask: the first ``prefix`` tokens attend to each other fully, the rest causally."""
    keep = torch.ones(length, length, dtype=torch.bool).tril()
    keep[:prefix, :prefix] = True
    return keep[None, None].expand(batch, 1, length, length).clone()


def packed_mask(lengths):
    """BAGEL style packing: causal within each sequence, nothing across sequences; [1, 1, T, T]."""
    total = sum(lengths)
    keep = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for n in lengths:
        keep[start:start + n, start:start + n] = torch.ones(n, n, dtype=torch.bool).tril()
        start += n
    return keep[None, None]


def additive(keep):
    return torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("name", ["llama", "qwen2", "phi"])
def test_custom_4d_masks(monkeypatch, name):
    models = trio(*LMS[name])
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(4))
    keep = omni_mask(2, 10, prefix=4)
    keep[1, ..., :2] = False  # row 1 also pads two keys away

    def run(model, mask, input_ids=ids, **kw):
        model.train()
        model.zero_grad()
        hidden = model.model(input_ids=input_ids, attention_mask=mask, **kw).last_hidden_state
        hidden.square().mean().backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want = run(models["eager"], additive(keep))  # eager adds the mask to the logits: float only
    spy = Spy(monkeypatch)
    for backend in ZOO_BACKENDS:
        monkeypatch.setenv("ZOO_ATTENTION", backend)
        for mask in (keep, additive(keep)):
            for impl in ("zoo", "sdpa"):
                hidden, grads = run(models[impl], mask)
                torch.testing.assert_close(hidden, want[0], atol=ATOL, rtol=0, msg=f"{impl} {mask.dtype}")
                for key in want[1]:
                    torch.testing.assert_close(grads[key], want[1][key], atol=ATOL, rtol=0)
    assert {bias for _, _, bias in spy.calls} == {(2, 1, 10, 10)}  # the mask reached attention unchanged
    # the prefix really is bidirectional: token 0 sees token 3, and changing token 3 moves token 0's output
    changed = ids.clone()
    changed[:, 3] = (changed[:, 3] + 1) % VOCAB
    hidden_changed, _ = run(models["zoo"], keep, input_ids=changed)
    assert (hidden_changed[0, 0] - want[0][0, 0]).abs().max() > 1e-3
    assert torch.equal(hidden_changed[0, 0], run(models["zoo"], keep, input_ids=changed)[0][0, 0])
    # packed sequences (positions restart per sequence) equal each sequence run alone
    lengths = [4, 3, 3]
    packed = ids[:1]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    for backend in ZOO_BACKENDS:
        monkeypatch.setenv("ZOO_ATTENTION", backend)
        hidden, _ = run(models["zoo"], packed_mask(lengths), input_ids=packed, position_ids=positions)
        start = 0
        for n in lengths:
            alone, _ = run(models["sdpa"], None, input_ids=packed[:, start:start + n])
            torch.testing.assert_close(hidden[:, start:start + n], alone, atol=ATOL, rtol=0)
            start += n


def test_position_bias_and_unsupported_features():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    bias = torch.randn(1, 4, 6, 6, generator=g)
    module = torch.nn.Module()
    module.is_causal = True
    for mask in (None, torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()):
        got, weights = zoo_attention_forward(module, q, k, v, mask, position_bias=bias)
        want, _ = sdpa_attention_forward(module, q, k, v, mask, position_bias=bias)
        assert weights is None
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match="soft-capping.*eager"):
        zoo_attention_forward(module, q, k, v, None, softcap=30.0)
    with pytest.raises(ConfigError, match="4-D attention mask"):
        zoo_attention_forward(module, q, k, v, torch.ones(2, 6, dtype=torch.bool))


def test_from_config_copies_the_config_and_reaches_sub_models():
    config = llava_config()
    model = from_config(LlavaForConditionalGeneration, config)
    assert config.text_config._attn_implementation != "zoo"  # the caller's config is untouched
    assert model.config.text_config._attn_implementation == "zoo"
    assert model.config.vision_config._attn_implementation == "zoo"
    assert model.model.vision_tower.config._attn_implementation == "zoo"
    assert register() == "zoo"
    reloaded = LlamaForCausalLM._from_config(copy.deepcopy(llama_config()), attn_implementation="zoo")
    assert reloaded.config._attn_implementation == "zoo"
    from transformers import AutoModelForCausalLM

    auto = from_config(AutoModelForCausalLM, qwen2_config())
    assert type(auto).__name__ == "Qwen2ForCausalLM" and auto.config._attn_implementation == "zoo"
