"""SRUM / MoT on a GPU: block attention on every available backend, bf16 training forward, generation."""
import math

import pytest
import torch

from zoo.models.mot import dense_mask, packed_attention, split_blocks

pytestmark = pytest.mark.cuda
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)


def reference(q, k, v, mask):
    heads = q.shape[1]
    k = k.repeat_interleave(heads // k.shape[1], dim=1).float()
    v = v.repeat_interleave(heads // v.shape[1], dim=1).float()
    logits = torch.einsum("qhd,khd->hqk", q.float(), k) / math.sqrt(q.shape[-1])
    return torch.einsum("hqk,khd->qhd", logits.masked_fill(~mask[None], float("-inf")).softmax(-1), v)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "xformers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_attention_on_cuda(backend, dtype, monkeypatch):
    from zoo.nn.attention import _xformers_ops

    if backend == "xformers" and _xformers_ops() is None:
        pytest.skip("xformers has no CUDA kernels in this environment")
    if backend != "auto":
        monkeypatch.setenv("ZOO_ATTENTION", backend)
    torch.manual_seed(0)
    sample_lens, split_lens, modes = [40, 70], [8, 32, 6, 64], ["causal", "noise", "causal", "noise"]
    blocks = split_blocks(sample_lens, split_lens, modes) + []
    n = sum(split_lens)
    q, k, v = (torch.randn(n, h, 64, device="cuda", dtype=dtype) for h in (8, 2, 2))
    out = packed_attention(q, k, v, blocks)
    ref = reference(q, k, v, dense_mask(blocks, n, n, device="cuda"))
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-4
    assert (out.float() - ref).abs().max().item() < tol


def test_tiny_model_trains_and_generates_on_cuda_under_bf16_autocast():
    from zoo.multimodal.srum.builder import build, make_config
    from zoo.multimodal.srum.rewards import srum_loss

    torch.manual_seed(0)
    model = build(make_config("tiny")).cuda()
    with torch.no_grad():
        model.llm2vae.weight.normal_(0, 0.05)
    cpu = build(make_config("tiny"))
    cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    packer = model.packer()
    packer.add_text(model.encode_text("a red circle"))
    packer.add_vae((4, 4), noise=True)
    packed = packer.build()
    x0, noise, t = torch.randn(16, 64), torch.randn(16, 64), torch.randn(1)
    ref = cpu.flow_forward(packed, x0, t, noise=noise)["velocity"]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.flow_forward(packed.to("cuda"), x0.cuda(), t.cuda(), noise=noise.cuda())
        loss = srum_loss(out["velocity"], out["noise"], x0.cuda(), x0.cuda(), torch.ones(16, device="cuda"))["loss"]
    loss.backward()
    assert (out["velocity"].float().cpu() - ref).abs().max().item() < 5e-2
    assert model.language_model.model.layers[0].mlp_moe_gen.up_proj.weight.grad is not None
    image = model.generate_image(["a red circle", "two blue squares"], seed=0, num_timesteps=4)
    assert len(image) == 2 and image[0].size == (64, 64)
    assert isinstance(model.understand(image[0], "What is it?", max_new_tokens=4), str)
