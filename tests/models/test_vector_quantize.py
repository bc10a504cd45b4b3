import math

import pytest
import torch

from zoo.models.vector_quantize import VectorQuantize, diversity_weight, entropy_terms, kmeans, l2norm


def two_code_vq(**kwargs):
    vq = VectorQuantize(dim=2, codebook_size=2, decay=0.5, kmeans_init=False, **kwargs)
    cb = vq._codebook
    cb.embed.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    cb.embed_avg.copy_(cb.embed)
    cb.cluster_size.fill_(1.0)
    cb.cluster_size_wo_react.fill_(1.0)
    return vq


def test_eval_picks_the_largest_cosine_and_returns_codebook_rows():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=6, codebook_size=5, codebook_dim=3, output_dim=3, kmeans_init=False).eval()
    x = torch.randn(2, 4, 6)
    out, ids, loss, logs = vq(x)
    projected = l2norm(vq.project_in(x))
    assert torch.equal(ids, (projected @ vq.codebook.t()).argmax(-1))
    assert torch.equal(out, vq.codebook[ids])
    assert torch.allclose(vq.codebook.norm(dim=-1), torch.ones(5))
    assert float(loss) == 0.0 and isinstance(vq.project_out, torch.nn.Identity)
    # the release's side effects in eval mode: one step, the codes counted
    assert float(vq.steps) == 1.0 and float(vq.count.sum()) == 8.0
    vq(x)
    assert float(vq.steps) == 2.0 and torch.equal(vq.count[0], 2 * torch.bincount(ids.flatten(), minlength=5).float())
    assert torch.equal(vq.get_output_from_indices(ids), out)


def test_first_forward_fits_the_codebook_by_kmeans_even_in_eval():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=3, codebook_size=4, kmeans_init=True, kmeans_iters=5).eval()
    assert float(vq._codebook.initted) == 0.0 and float(vq.codebook.abs().sum()) == 0.0
    x = torch.randn(3, 10, 3)
    torch.manual_seed(1)
    vq(x)
    cb = vq._codebook
    assert float(cb.initted) == 1.0
    assert torch.allclose(vq.codebook.norm(dim=-1), torch.ones(4))
    assert float(cb.cluster_size.sum()) == 30.0
    torch.manual_seed(1)
    means, counts = kmeans(l2norm(x).reshape(1, 30, 3), 4, 5)
    assert torch.allclose(cb.embed, means) and torch.equal(cb.cluster_size, counts.float())
    assert torch.allclose(cb.embed_avg, means * counts[..., None])


def test_ema_update_by_hand():
    vq = two_code_vq().train()
    x = torch.tensor([[[0.6, 0.8]]])          # closest to code 1 (cos 0.8 > 0.6)
    out, ids, loss, _ = vq(x)
    assert ids.tolist() == [[1]]
    cb = vq._codebook
    assert torch.allclose(cb.cluster_size, torch.tensor([[0.5, 1.0]]))
    assert torch.allclose(cb.embed_avg, torch.tensor([[[0.5, 0.0], [0.3, 0.9]]]))
    expected_code1 = torch.tensor([0.3, 0.9]) / math.hypot(0.3, 0.9)
    assert torch.allclose(cb.embed[0, 1], expected_code1, atol=1e-4) and torch.allclose(cb.embed[0, 0], torch.tensor([1.0, 0.0]))
    # straight-through output equals the code it picked (the old code: the update comes after the lookup)
    assert torch.allclose(out, torch.tensor([[[0.0, 1.0]]]))
    assert float(loss) == pytest.approx(((0.6 - 0.0) ** 2 + (0.8 - 1.0) ** 2) / 2)  # commitment mse, weight 1


def test_dead_codes_are_replaced_by_batch_vectors():
    # thresholds are relative to B*K/C = 0.5: 1.2 -> 0.6, reset 0.2 -> 0.1
    vq = two_code_vq(threshold_ema_dead_code=1.2, reset_cluster_size=0.2).train()
    x = torch.tensor([[[0.6, 0.8]]])
    _, _, _, logs = vq(x)
    cb = vq._codebook
    assert cb.threshold_ema_dead_code == pytest.approx(0.6) and cb.reset_cluster_size == pytest.approx(0.1)
    assert logs["n_reactive"] == 1  # code 0's count fell to 0.5 < 0.6
    assert torch.allclose(cb.embed[0, 0], torch.tensor([0.6, 0.8]))
    assert torch.allclose(cb.embed_avg[0, 0], torch.tensor([0.06, 0.08]))
    assert torch.allclose(cb.cluster_size[0], torch.tensor([0.1, 1.0]))
    assert torch.allclose(cb.cluster_size_wo_react[0], torch.tensor([0.5, 1.0]))  # the re-activation is not counted


def test_position_usage_and_reactivation_weights():
    vq = VectorQuantize(dim=2, codebook_size=2, smart_re_K=2, decay=0.99, kmeans_init=False).train()
    cb = vq._codebook
    assert torch.allclose(cb.timestep_p_over_c, torch.full((1, 2, 2), 0.5))
    cb.update_position_usage(torch.tensor([[0, 1], [0, 1]]))       # first batch: decay 0.3
    assert torch.allclose(cb.timestep_p_over_c[0], torch.tensor([[0.15 + 0.7, 0.15], [0.15, 0.15 + 0.7]]))
    assert float(cb.tpc_initted) == 1.0
    cb.update_position_usage(torch.tensor([[1, 1], [1, 1]]))       # then 0.99
    assert torch.allclose(cb.timestep_p_over_c[0, 0], torch.tensor([0.99 * 0.85, 0.99 * 0.15 + 0.01]))
    # uniform usage at position 0 (perplexity 2), one code at position 1 (perplexity 1)
    cb.timestep_p_over_c.copy_(torch.tensor([[[0.5, 0.5], [1.0, 0.0]]]))
    assert torch.allclose(cb.position_perplexity(), torch.tensor([2.0, 1.0]), atol=1e-5)
    weights = cb.position_weights()                               # softmax([5, 10])
    assert torch.allclose(weights, torch.softmax(torch.tensor([5.0, 10.0]), 0), atol=1e-5)


def test_entropy_terms_and_diversity_schedule():
    logits = torch.zeros(2, 4, 8)
    usage = torch.full((4, 8), 1 / 8)
    per_position, per_group = entropy_terms(logits, usage, groups=64)  # K < groups: the empty groups are left out
    assert float(per_position) == pytest.approx(math.log(8)) and float(per_group) == pytest.approx(math.log(8))
    one_hot = torch.zeros(4, 8)
    one_hot[torch.arange(4), torch.tensor([0, 1, 2, 3])] = 1.0
    # usage weight 1: each position has entropy 0, the group of all four positions spreads over 4 codes
    per_position, per_group = entropy_terms(logits, one_hot.clamp_min(1e-12), usage_weight=1.0, groups=1)
    assert float(per_position) == pytest.approx(0.0, abs=1e-6) and float(per_group) == pytest.approx(math.log(4))
    assert diversity_weight(0.05, (0.1, 0.3)) == 0.5
    assert diversity_weight(0.2, (0.1, 0.3)) == pytest.approx(0.25)
    assert diversity_weight(0.3, (0.1, 0.3)) == pytest.approx(0.0)
    assert diversity_weight(0.9, (0.1, 0.3)) == 0.0


def test_training_forward_sends_gradients_to_the_projection():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=6, codebook_size=8, codebook_dim=3, smart_re_K=4, diversity_weight=1.0,
                        threshold_ema_dead_code=0.2, reset_cluster_size=0.2, reg=(0.1, 0.3)).train()
    x = torch.randn(5, 4, 6, requires_grad=True)
    out, ids, loss, logs = vq(x)
    (out.sum() + loss).backward()
    assert vq.project_in.weight.grad is not None and float(vq.project_in.weight.grad.abs().sum()) > 0
    assert x.grad is not None
    assert {"commit_loss", "diversity_entropy", "group_entropy", "diversity_cw", "n_reactive"} <= set(logs)
    entropy = 0.5 * (logs["diversity_entropy"] + logs["group_entropy"])
    assert float(loss.detach()) == pytest.approx(logs["commit_loss"] - logs["diversity_cw"] * entropy, rel=1e-5)
    vq_out = VectorQuantize(dim=6, codebook_size=8, codebook_dim=3, output_dim=5)
    assert isinstance(vq_out.project_out, torch.nn.Linear) and vq_out(x)[0].shape == (5, 4, 5)
