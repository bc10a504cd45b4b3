import math

import pytest
import torch

from zoo.models.embeddings import crop_pos_embed, sincos_1d, sincos_2d, timestep_embedding
from zoo.models.mmdit import MMDiT, MMDiTRenderer, joint_attention, token_positions


def tiny_mmdit(**kwargs):
    torch.manual_seed(0)
    model = MMDiT(num_tokens=6, context_dim=4, in_channels=3, depth=2, pos_embed_max_size=6, **kwargs)
    with torch.no_grad():  # leave the zero init (it would hide the streams' interactions)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def dense_reference(cq, ck, cv, xq, xk, xv, key_mask, context_sees_x):
    """The release's construction: one [B, 1, L, L] boolean mask, rows = [context; image]."""
    batch, k_len, n_len = cq.shape[0], cq.shape[1], xq.shape[1]
    x_visible = torch.ones(batch, n_len, dtype=torch.bool)
    context_rows = torch.cat([key_mask, x_visible if context_sees_x else ~x_visible], 1)[:, None, None].expand(
        -1, 1, k_len, -1)
    image_rows = torch.cat([key_mask, x_visible], 1)[:, None, None].expand(-1, 1, n_len, -1)
    mask = torch.cat([context_rows, image_rows], dim=2)
    q, k, v = (torch.cat(p, 1).transpose(1, 2) for p in ((cq, xq), (ck, xk), (cv, xv)))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    return out[:, :k_len], out[:, k_len:]


@pytest.mark.parametrize("context_sees_x", [True, False])
def test_joint_attention_equals_the_dense_masked_reference(context_sees_x):
    torch.manual_seed(1)
    cq, ck, cv = (torch.randn(3, 5, 2, 8) for _ in range(3))
    xq, xk, xv = (torch.randn(3, 7, 2, 8) for _ in range(3))
    key_mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True, False, True, False, False]])
    ours = joint_attention((cq, ck, cv), (xq, xk, xv), key_mask, context_sees_x=context_sees_x)
    ref = dense_reference(cq, ck, cv, xq, xk, xv, key_mask, context_sees_x)
    assert torch.allclose(ours[0], ref[0], atol=1e-6) and torch.allclose(ours[1], ref[1], atol=1e-6)
    context, image = joint_attention((cq, ck, cv), (xq, xk, xv), key_mask, context_sees_x=context_sees_x,
                                     need_context=False)
    assert context is None and torch.allclose(image, ref[1], atol=1e-6)


@pytest.mark.parametrize("context_sees_x", [True, False])
def test_hidden_tokens_cannot_reach_the_output(context_sees_x):
    model = tiny_mmdit()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.9])
    context = torch.randn(2, 6, 4)
    key_mask = torch.tensor([[True, True, True, False, False, False], [True] * 6])
    out = model(x, t, context, key_mask, context_sees_x=context_sees_x)
    changed = context.clone()
    changed[0, 3:] = 100.0 * torch.randn(3, 4)
    assert torch.allclose(model(x, t, changed, key_mask, context_sees_x=context_sees_x), out, atol=1e-6)
    changed[0, 2] += 1.0  # a visible token does matter
    assert not torch.allclose(model(x, t, changed, key_mask, context_sees_x=context_sees_x)[0], out[0], atol=1e-4)
    # a sample never sees another sample's tokens
    changed = context.clone()
    changed[1] += 1.0
    assert torch.allclose(model(x, t, changed, key_mask, context_sees_x=context_sees_x)[0], out[0], atol=1e-6)


def test_position_modulation_is_independent_of_the_input_and_cacheable():
    model = tiny_mmdit()
    mods = model.context_modulations()
    assert mods[-1] is None  # the pre_only last context block is time-modulated
    assert all(m.shape == (1, 6, model.hidden_size) for m in mods[0])
    x, t, context = torch.randn(2, 3, 8, 8), torch.tensor([0.1, 0.7]), torch.randn(2, 6, 4)
    assert torch.equal(model(x, t, context, context_mods=mods), model(x, t, context))
    last = model.joint_blocks[-1].context_block
    assert last.pre_only and not hasattr(last.attn, "proj") and not hasattr(last, "mlp")
    assert last.adaLN_modulation[1].out_features == 2 * model.hidden_size
    assert not any(p.requires_grad for p in last.t_embedder.parameters())  # present in checkpoints, unused
    assert model.hidden_size == 128 and model.num_heads == 2  # 64 * depth, depth heads


def test_unconditional_branch_and_class_dropout():
    model = tiny_mmdit(class_dropout_prob=1.0)
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([0.4567, 1.0])
    context = torch.randn(2, 6, 4)
    hidden = torch.zeros(2, 6, dtype=torch.bool)
    # no visible token: the output is the image stream alone, whatever the context
    uncond = model.forward_unconditional(x, t)
    t_floor = torch.floor(t * 1000).clamp(0, 999) / 1000
    assert torch.allclose(uncond, model(x, t_floor, context, hidden), atol=1e-5)
    # training-time dropout hides every token of a dropped sample (never at t = 1)
    model.train()
    torch.manual_seed(0)
    dropped = model(x, t, context)
    model.eval()
    assert torch.allclose(dropped[0], model(x, t, torch.zeros_like(context), hidden)[0], atol=1e-6)
    assert torch.allclose(dropped[1], model(x, t, context)[1], atol=1e-6)


def test_renderer_shapes_and_visibility():
    torch.manual_seed(0)
    model = MMDiTRenderer(input_size=8, num_tokens=6, context_dim=4, in_channels=3, depth=2, pos_embed_max_size=6,
                          class_dropout_prob=0.0).eval()
    assert not hasattr(model, "x_embedder") and model.mask_token.shape == (1, 1, 128)
    assert model.positional_embedding.shape == (16, 128)
    context = torch.randn(2, 6, 4)
    out = model(context)
    assert out.shape == (2, 3, 8, 8)
    key_mask = torch.tensor([[True] * 3 + [False] * 3] * 2)
    changed = context.clone()
    changed[:, 3:] = 5.0
    assert torch.allclose(model(context, key_mask), model(changed, key_mask), atol=1e-6)


def test_sincos_tables_and_timestep_embedding():
    # [sin, cos] tables, float64 products: position p, frequency i -> sin(p * 10000^(-i / (D/2)))
    table = sincos_1d(4, torch.tensor([0.0, 1.0, 1000.0]))
    assert torch.allclose(table[1], torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]))
    assert torch.allclose(table[2, 0], torch.tensor(math.sin(1000.0)))
    grid = sincos_2d(8, 3)  # row i, column j -> i * 3 + j; first half encodes the column
    assert torch.allclose(grid[5, :4], sincos_1d(4, torch.tensor([2.0]))[0])   # column 2
    assert torch.allclose(grid[5, 4:], sincos_1d(4, torch.tensor([1.0]))[0])   # row 1
    # timestep features are [cos, sin]
    emb = timestep_embedding(torch.tensor([2.0]), 4)
    assert torch.allclose(emb[0], torch.tensor([math.cos(2), math.cos(0.02), math.sin(2), math.sin(0.02)]))
    assert token_positions(3).tolist() == [1000, 1008, 1016]
    big = torch.arange(36.0).reshape(1, 36, 1)
    assert crop_pos_embed(big, 6, 2, 2).flatten().tolist() == [14.0, 15.0, 20.0, 21.0]  # centre 2x2 of 6x6
    with pytest.raises(ValueError):
        crop_pos_embed(big, 6, 7, 2)
